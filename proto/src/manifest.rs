//! Manifests: users' multi-document YAML (or JSON) files turned into checked objects, or into
//! a list of errors that each name the file, the line, the field and what to do.
//!
//! ```text
//! app.yaml:14: spec.template.spec.containers[0].ports[0].containerPort: expected integer
//! app.yaml:9: spec.template.spec.contaniers: unknown field "contaniers": did you mean "containers"?
//! ```
//!
//! How a file flows through here:
//! 1. `saphyr-parser` emits YAML events with source spans. A small builder turns each document
//!    into a `serde_json::Value` (YAML 1.2 core-schema scalars) and records the line of every
//!    node in a `FieldPath -> line` map. The builder refuses alias bombs (a node budget that
//!    counts alias expansions) and nesting deeper than [`MAX_DEPTH`].
//! 2. `apiVersion` and `kind` are checked, then the value is decoded into the typed struct
//!    with `serde_path_to_error`, which names the failing field. Unknown fields are removed
//!    and decoding is retried, so one pass reports every typo, with a "did you mean" taken
//!    from the fields serde expected.
//! 3. [`crate::validate`] checks the decoded object; each error's path is mapped to a line (the
//!    nearest existing ancestor when the field itself is absent).
//!
//! [`parse_manifest`] returns `Err` if *any* document has *any* error, so a half-valid file
//! never reaches the server. [`load_paths`] is `berth apply -f FILE|DIR|-` in one call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use saphyr_parser::{Event as YamlEvent, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

use crate::object::{DynObject, Kind, Resource};
use crate::types::*;
use crate::validate::{FieldError, FieldPath, PathSeg, Validate};

/// Deepest nesting accepted in a document.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may have, counting every node an alias expands to.
pub const MAX_NODES: usize = 100_000;
/// Most non-empty documents one apply may carry (all files together).
pub const MAX_DOCUMENTS: usize = 500;
/// Most schema errors reported per document before giving up on it.
const MAX_SCHEMA_ERRORS: usize = 50;

/// One problem in a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    /// 1-based; 0 when the problem is not at a line (e.g. the file cannot be read).
    pub line: usize,
    /// Empty for problems with the whole document or file.
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Every problem found in one or more manifest files, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl ManifestErrors {
    pub fn errors(&self) -> &[ManifestError] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

/// A checked object and where it came from (so later errors, e.g. from the server, can point
/// back at the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub file: String,
    /// Line where the document's content starts.
    pub line: usize,
    pub object: DynObject,
}

/// Parse and check every document of a multi-document YAML text. Empty documents are
/// skipped. Returns every error of every document, and no objects if there is any error.
pub fn parse_manifest(file: &str, text: &str) -> Result<Vec<DynObject>, ManifestErrors> {
    parse_documents(file, text).map(|docs| docs.into_iter().map(|d| d.object).collect())
}

/// [`parse_manifest`], keeping each object's source line.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, ManifestErrors> {
    let mut errors = Vec::new();
    let docs = parse_into(file, text, &mut Seen::new(), &mut errors);
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Load manifests for `apply -f`: files, directories (their `*.yaml`, `*.yml` and `*.json`
/// files, sorted by name, not recursive) and `-` for standard input. All errors of all files
/// are reported; nothing is returned if there is any.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<DynObject>, ManifestErrors> {
    load_documents(paths).map(|docs| docs.into_iter().map(|d| d.object).collect())
}

/// [`load_paths`], keeping each object's source file and line.
pub fn load_documents(paths: &[PathBuf]) -> Result<Vec<Document>, ManifestErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    let file_error = |file: &str, message: String| ManifestError {
        file: file.to_string(),
        line: 0,
        path: FieldPath::root(),
        message,
    };
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => docs.extend(parse_into("<stdin>", &text, &mut Seen::new(), &mut errors)),
                Err(e) => errors.push(file_error("<stdin>", format!("cannot read: {e}"))),
            }
            continue;
        }
        let name = p.display().to_string();
        if p.is_dir() {
            match manifest_files(p) {
                Ok(files) if files.is_empty() => errors.push(file_error(
                    &name,
                    "directory has no manifests (*.yaml, *.yml or *.json)".into(),
                )),
                Ok(files) => {
                    for f in files {
                        load_file(&f, &mut docs, &mut errors);
                    }
                }
                Err(e) => errors.push(file_error(&name, format!("cannot read directory: {e}"))),
            }
        } else {
            load_file(p, &mut docs, &mut errors);
        }
    }
    if docs.len() > MAX_DOCUMENTS {
        errors.push(ManifestError {
            file: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            line: 0,
            path: FieldPath::root(),
            message: format!(
                "{} documents in total; at most {MAX_DOCUMENTS} objects may be applied at a time: split the manifests into several applies",
                docs.len()
            ),
        });
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(ManifestErrors(errors))
    }
}

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(p: &Path, docs: &mut Vec<Document>, errors: &mut Vec<ManifestError>) {
    let name = p.display().to_string();
    match std::fs::read_to_string(p) {
        Ok(text) => docs.extend(parse_into(&name, &text, &mut Seen::new(), errors)),
        Err(e) => errors.push(ManifestError {
            file: name,
            line: 0,
            path: FieldPath::root(),
            message: format!("cannot read: {e}"),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// One file

/// Objects already loaded from this file (kind, namespace, name) -> where: one object defined
/// twice in a file is a mistake. Across files it is allowed (a directory may hold versions of
/// an app that are applied one after the other, as in kubectl).
type Seen = HashMap<(Kind, String, String), usize>;

fn parse_into(
    file: &str,
    text: &str,
    seen: &mut Seen,
    errors: &mut Vec<ManifestError>,
) -> Vec<Document> {
    let mut out = Vec::new();
    let (raw_docs, syntax_error) = read_yaml(text);
    for raw in raw_docs {
        if let Some((line, message)) = raw.error {
            errors.push(ManifestError {
                file: file.to_string(),
                line,
                path: FieldPath::root(),
                message,
            });
            continue;
        }
        if raw.value.is_null() {
            continue; // empty document (only comments, or a bare `---`)
        }
        let start = raw.line;
        let mut lines = raw.lines;
        let mut renames = Vec::new();
        let checked = check_document(raw.value, &mut renames);
        // Errors found after a typo was corrected name the corrected field; point them at
        // the line where the user wrote the misspelled one.
        for (from, to) in renames {
            let moved: Vec<(FieldPath, usize)> = lines
                .iter()
                .filter_map(|(p, l)| p.strip_prefix(&from).map(|rest| (to.join(&rest), *l)))
                .collect();
            lines.extend(moved);
        }
        let line_of = |path: &FieldPath| line_for(&lines, path, start);
        let mut doc_errors = Vec::new();
        let mut push = |path: FieldPath, message: String| {
            doc_errors.push(ManifestError {
                file: file.to_string(),
                line: line_of(&path),
                path,
                message,
            })
        };
        match checked {
            Ok(obj) => {
                let key = (
                    obj.kind,
                    obj.namespace().to_string(),
                    obj.name().to_string(),
                );
                if let Some(first_line) = seen.get(&key) {
                    push(
                        FieldPath::root().child("metadata").child("name"),
                        format!(
                            "duplicate {} {:?}: already defined by the document at line {first_line}",
                            obj.kind,
                            obj.name()
                        ),
                    );
                } else {
                    seen.insert(key, start);
                }
                out.push(Document {
                    file: file.to_string(),
                    line: start,
                    object: obj,
                });
            }
            Err(errs) => {
                for e in errs {
                    push(e.path, e.message);
                }
            }
        }
        // In file order; stable, so errors on one line keep the order they were found in.
        doc_errors.sort_by_key(|e| e.line);
        errors.extend(doc_errors);
    }
    if let Some((line, message)) = syntax_error {
        errors.push(ManifestError {
            file: file.to_string(),
            line,
            path: FieldPath::root(),
            message,
        });
    }
    out
}

/// The line of `path`, or of its nearest ancestor that exists in the document.
fn line_for(lines: &HashMap<FieldPath, usize>, path: &FieldPath, doc_start: usize) -> usize {
    let mut p = Some(path.clone());
    while let Some(cur) = p {
        if let Some(l) = lines.get(&cur) {
            return *l;
        }
        p = cur.parent();
    }
    doc_start
}

/// Check one document's value: kind, apiVersion, schema, semantics.
fn check_document(
    mut value: Value,
    renames: &mut Vec<(FieldPath, FieldPath)>,
) -> Result<DynObject, Vec<FieldError>> {
    let root = FieldPath::root();
    let Some(map) = value.as_object_mut() else {
        return Err(vec![FieldError::new(
            root,
            format!(
                "expected a mapping with apiVersion, kind, metadata and spec, found {}",
                describe(&value)
            ),
        )]);
    };
    let kind = match map.get("kind") {
        None => {
            return Err(vec![FieldError::new(
                root.child("kind"),
                format!("missing required field: set it to one of {}", kind_list()),
            )])
        }
        Some(Value::String(s)) => match Kind::ALL.iter().find(|k| k.as_str() == s) {
            Some(k) => *k,
            None => {
                let hint = suggest(s, Kind::ALL.iter().map(|k| k.as_str()))
                    .map(|k| format!(": did you mean {k}?"))
                    .unwrap_or_else(|| format!(": use one of {}", kind_list()));
                return Err(vec![FieldError::new(
                    root.child("kind"),
                    format!("unsupported kind {s:?}{hint}"),
                )]);
            }
        },
        Some(_) => return Err(vec![FieldError::new(root.child("kind"), "expected string")]),
    };
    match map.get("apiVersion") {
        None => {
            return Err(vec![FieldError::new(
                root.child("apiVersion"),
                format!("missing required field: use {}", kind.api_version()),
            )])
        }
        Some(Value::String(v)) if v == kind.api_version() => {}
        Some(Value::String(v)) => {
            return Err(vec![FieldError::new(
                root.child("apiVersion"),
                format!(
                    "apiVersion {v} is not supported for {kind}: use {}",
                    kind.api_version()
                ),
            )])
        }
        Some(_) => {
            return Err(vec![FieldError::new(
                root.child("apiVersion"),
                "expected string",
            )])
        }
    }
    match kind {
        Kind::Deployment => typed::<Deployment>(value, renames),
        Kind::ReplicaSet => typed::<ReplicaSet>(value, renames),
        Kind::Service => typed::<Service>(value, renames),
        Kind::Pod => typed::<Pod>(value, renames),
        Kind::Endpoints => typed::<Endpoints>(value, renames),
        Kind::Node => typed::<Node>(value, renames),
        Kind::Event => typed::<Event>(value, renames),
        Kind::ImageManifest => typed::<ImageManifest>(value, renames),
        Kind::ImageTag => typed::<ImageTag>(value, renames),
        Kind::ImageBlob => typed::<ImageBlob>(value, renames),
        Kind::RegistryServer => typed::<RegistryServer>(value, renames),
        // Image trust.
        Kind::TrustKey => typed::<TrustKey>(value, renames),
        Kind::ImageSignature => typed::<ImageSignature>(value, renames),
        Kind::ClusterImagePolicy => typed::<ClusterImagePolicy>(value, renames),
        Kind::ImagePolicy => typed::<ImagePolicy>(value, renames),
        Kind::ConfigMap => typed::<ConfigMap>(value, renames),
        Kind::Secret => typed::<Secret>(value, renames).map_err(redact_secret_errors),
        Kind::PersistentVolumeClaim => {
            typed::<crate::storage::PersistentVolumeClaim>(value, renames)
        }
        Kind::PersistentVolume => typed::<crate::storage::PersistentVolume>(value, renames),
        Kind::Namespace => typed::<Namespace>(value, renames),
    }
}

/// A Secret's schema errors name the field, never its value: serde's "invalid type: integer
/// `12345`" would print a secret.
fn redact_secret_errors(errs: Vec<FieldError>) -> Vec<FieldError> {
    errs.into_iter()
        .map(|e| {
            // serde quotes the offending value in backticks ("invalid type: integer `12345`").
            let quotes_value = e.message.contains('`')
                || e.message.starts_with("invalid type")
                || e.message.starts_with("invalid value");
            if quotes_value {
                FieldError::new(
                    e.path,
                    "must be a string (base64 under data, plain text under stringData); the value is not shown",
                )
            } else {
                e
            }
        })
        .collect()
}

fn kind_list() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decode into `T`, collecting schema errors (retrying past unknown fields and bad optional
/// fields), then add the semantic errors of whatever decoded.
fn typed<T: Resource + Validate>(
    mut value: Value,
    renames: &mut Vec<(FieldPath, FieldPath)>,
) -> Result<DynObject, Vec<FieldError>> {
    let mut errs: Vec<FieldError> = Vec::new();
    let mut removed: HashSet<FieldPath> = HashSet::new();
    let mut decoded = None;
    for _ in 0..MAX_SCHEMA_ERRORS {
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) => {
                decoded = Some(t);
                break;
            }
            Err(e) => {
                let path = convert_path(e.path());
                let schema = SchemaError::from_message(&e.inner().to_string());
                match schema {
                    SchemaError::UnknownField { field, expected } => {
                        // serde's path stops at the struct; name the field itself.
                        let at = if path.segments().last() == Some(&PathSeg::Field(field.clone())) {
                            path
                        } else {
                            path.child(&field)
                        };
                        let suggestion = suggest(&field, expected.iter().map(String::as_str));
                        let hint = suggestion
                            .map(|s| format!(": did you mean {s:?}?"))
                            .unwrap_or_else(|| {
                                if expected.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (known fields: {})", expected.join(", "))
                                }
                            });
                        errs.push(FieldError::new(
                            at.clone(),
                            format!("unknown field {field:?}{hint}"),
                        ));
                        // Decode on as if the user had written the suggested field, so the
                        // errors inside it are found too; otherwise drop the field.
                        let target = suggestion.map(|s| at.parent().unwrap_or_default().child(s));
                        match target {
                            Some(to) if rename_at(&mut value, &at, &to) => {
                                renames.push((at, to));
                            }
                            _ => {
                                if !replace_at(&mut value, &at, None) {
                                    break;
                                }
                                removed.insert(at);
                            }
                        }
                    }
                    SchemaError::MissingField(field) => {
                        let at = path.child(&field);
                        // A field we removed because its value was bad is not also "missing".
                        if !removed.contains(&at) {
                            errs.push(FieldError::new(at, "missing required field"));
                        }
                        break;
                    }
                    SchemaError::Other {
                        message,
                        placeholder,
                    } => {
                        errs.push(FieldError::new(path.clone(), message));
                        // Put a value of the right type in its place (or drop it) so decoding
                        // can go on and find the document's other errors.
                        let repaired = !path.is_root()
                            && match placeholder {
                                Some(v) => replace_at(&mut value, &path, Some(v)),
                                None => replace_at(&mut value, &path, None),
                            };
                        if !repaired {
                            break;
                        }
                        removed.insert(path);
                    }
                }
            }
        }
    }
    let Some(t) = decoded else {
        return Err(errs);
    };
    // Semantic checks on what decoded; skip fields already reported (a removed bad value
    // would otherwise also be "required").
    let semantic = t
        .validate()
        .into_iter()
        .filter(|fe| !removed.iter().any(|r| is_prefix(r, &fe.path)));
    errs.extend(semantic);
    if errs.is_empty() {
        Ok(DynObject::from_typed(&t))
    } else {
        Err(errs)
    }
}

fn is_prefix(prefix: &FieldPath, path: &FieldPath) -> bool {
    let (a, b) = (prefix.segments(), path.segments());
    a.len() <= b.len() && a == &b[..a.len()]
}

fn convert_path(p: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    let segs = p
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(PathSeg::Index(*index)),
            Segment::Map { key } => Some(PathSeg::Field(key.clone())),
            Segment::Enum { variant } => Some(PathSeg::Field(variant.clone())),
            Segment::Unknown => None,
        })
        .collect();
    FieldPath::from_segments(segs)
}

/// The node reached from `value` through `segs`, or None when one of them does not exist.
fn node_at_mut<'a>(value: &'a mut Value, segs: &[PathSeg]) -> Option<&'a mut Value> {
    let mut cur = value;
    for s in segs {
        cur = match (s, cur) {
            (PathSeg::Field(f), Value::Object(m)) => m.get_mut(f)?,
            (PathSeg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Replace the node at `path` with `with`, or remove it from its parent mapping when `with`
/// is None. Returns false when that is not possible.
fn replace_at(value: &mut Value, path: &FieldPath, with: Option<Value>) -> bool {
    let segs = path.segments();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let Some(cur) = node_at_mut(value, parents) else {
        return false;
    };
    match (last, cur, with) {
        (PathSeg::Field(f), Value::Object(m), None) => m.remove(f).is_some(),
        (PathSeg::Field(f), Value::Object(m), Some(v)) => match m.get_mut(f) {
            Some(slot) if *slot != v => {
                *slot = v;
                true
            }
            _ => false,
        },
        (PathSeg::Index(i), Value::Array(a), Some(v)) => match a.get_mut(*i) {
            Some(slot) if *slot != v => {
                *slot = v;
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Move a mapping entry to a new key of the same mapping, unless that key already exists.
fn rename_at(value: &mut Value, from: &FieldPath, to: &FieldPath) -> bool {
    let (Some(PathSeg::Field(old)), Some(PathSeg::Field(new))) =
        (from.segments().last(), to.segments().last())
    else {
        return false;
    };
    let Some((_, parents)) = from.segments().split_last() else {
        return false;
    };
    let Some(cur) = node_at_mut(value, parents) else {
        return false;
    };
    let Value::Object(m) = cur else {
        return false;
    };
    if m.contains_key(new) {
        return false;
    }
    match m.remove(old) {
        Some(v) => {
            m.insert(new.clone(), v);
            true
        }
        None => false,
    }
}

/// serde's error messages, sorted into what we can explain better.
enum SchemaError {
    UnknownField {
        field: String,
        expected: Vec<String>,
    },
    MissingField(String),
    Other {
        message: String,
        /// A value of the expected type to decode on with.
        placeholder: Option<Value>,
    },
}

impl SchemaError {
    fn other(message: impl Into<String>, placeholder: Option<Value>) -> SchemaError {
        SchemaError::Other {
            message: message.into(),
            placeholder,
        }
    }
}

fn placeholder(word: &str) -> Option<Value> {
    Some(match word {
        "integer" => Value::from(0),
        "number" => Value::from(0.0),
        "boolean" => Value::Bool(false),
        "string" => Value::from(""),
        "list" => Value::Array(Vec::new()),
        "mapping" => Value::Object(Map::new()),
        _ => return None,
    })
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

impl SchemaError {
    fn from_message(msg: &str) -> SchemaError {
        if let Some(rest) = msg.strip_prefix("unknown field ") {
            let names = backticked(rest);
            if let Some((field, expected)) = names.split_first() {
                return SchemaError::UnknownField {
                    field: field.clone(),
                    expected: expected.to_vec(),
                };
            }
        }
        if let Some(rest) = msg.strip_prefix("missing field ") {
            if let Some(field) = backticked(rest).into_iter().next() {
                return SchemaError::MissingField(field);
            }
        }
        if let Some(rest) = msg.strip_prefix("invalid type: ") {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let word = expected_word(expected);
                // `value: true` or `version: 1.10` in YAML are not strings; say how to fix it.
                let scalar = ["integer", "floating point", "boolean"]
                    .iter()
                    .any(|f| found.starts_with(f));
                if word == "string" && scalar {
                    return SchemaError::other(
                        "expected string (put the value in quotes)",
                        placeholder(word),
                    );
                }
                return SchemaError::other(format!("expected {word}"), placeholder(word));
            }
        }
        if let Some(rest) = msg.strip_prefix("invalid value: ") {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let word = expected_word(expected);
                if word == "integer" {
                    let n = backticked(found).into_iter().next().unwrap_or_default();
                    return SchemaError::other(
                        format!("integer {n} is out of range"),
                        placeholder(word),
                    );
                }
                return SchemaError::other(format!("expected {word}"), placeholder(word));
            }
        }
        if msg.starts_with("data did not match any variant of untagged enum") {
            if msg.ends_with("IntOrString") {
                return SchemaError::other("expected integer or string", Some(Value::from(0)));
            }
            return SchemaError::other(
                "expected a quantity: a string like \"500m\" or \"128Mi\", or a number",
                Some(Value::from("0")),
            );
        }
        if msg.contains("premature end of input")
            || msg.contains("input contains invalid characters")
            || msg.contains("input is out of range")
            || msg.contains("trailing input")
            || msg.contains("input is not enough")
        {
            return SchemaError::other(
                format!("invalid timestamp ({msg}): use RFC 3339, like 2024-01-02T15:04:05Z"),
                None,
            );
        }
        SchemaError::other(msg, None)
    }
}

/// serde's "expected ..." phrase, in the words of a manifest author.
fn expected_word(expected: &str) -> &'static str {
    let e = expected.trim();
    match e {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize"
        | "usize" | "an integer" => "integer",
        "f32" | "f64" | "a number" => "number",
        "a boolean" => "boolean",
        "a string" | "a borrowed string" | "a character" | "a char" => "string",
        "a sequence" => "list",
        _ if e.starts_with("struct ") || e == "a map" => "mapping",
        _ if e.starts_with("a sequence") || e.starts_with("tuple") => "list",
        _ if e.contains("RFC 3339") || e.contains("datetime") => "timestamp",
        _ => "a different type",
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The closest candidate to a misspelled name, if one is close enough to be a typo.
fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&w, &c.to_ascii_lowercase());
        let limit = (c.len().max(w.len()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

// ---------------------------------------------------------------------------------------------
// YAML events -> serde_json::Value plus a line for every node

struct RawDoc {
    /// Line of the document's first content.
    line: usize,
    value: Value,
    lines: HashMap<FieldPath, usize>,
    /// A problem that makes this document unusable (limits, complex keys), with its line.
    error: Option<(usize, String)>,
}

enum Frame {
    Seq {
        path: FieldPath,
        items: Vec<Value>,
        anchor: usize,
        nodes_at_start: usize,
    },
    Map {
        path: FieldPath,
        map: Map<String, Value>,
        key: Option<String>,
        /// Mappings merged in with `<<: *base`; explicit keys win over them.
        merges: Vec<Map<String, Value>>,
        anchor: usize,
        nodes_at_start: usize,
    },
}

#[derive(Default)]
struct DocBuilder {
    stack: Vec<Frame>,
    lines: HashMap<FieldPath, usize>,
    anchors: BTreeMap<usize, (Value, usize)>,
    nodes: usize,
    root: Option<Value>,
    start_line: usize,
    /// Line of the event being handled.
    line: usize,
    error: Option<(usize, String)>,
}

/// Read all documents. A syntax error ends reading (the parser cannot resume); the documents
/// before it are still returned and checked.
fn read_yaml(text: &str) -> (Vec<RawDoc>, Option<(usize, String)>) {
    let mut docs = Vec::new();
    let mut counted = 0usize;
    let mut parser = Parser::new_from_str(text);
    let mut b: Option<DocBuilder> = None;
    loop {
        let (ev, span) = match parser.next_event() {
            None => break,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                return (
                    docs,
                    Some((
                        e.marker().line().max(1),
                        format!("invalid YAML: {}", e.info()),
                    )),
                );
            }
        };
        match ev {
            YamlEvent::StreamEnd => break,
            YamlEvent::DocumentStart(_) => {
                b = Some(DocBuilder {
                    start_line: span.start.line().max(1),
                    ..Default::default()
                });
            }
            YamlEvent::DocumentEnd => {
                if let Some(d) = b.take() {
                    let line = d.start_line;
                    let doc = d.finish();
                    if !doc.value.is_null() || doc.error.is_some() {
                        counted += 1;
                        if counted > MAX_DOCUMENTS {
                            return (docs, Some((line, too_many_documents(counted))));
                        }
                    }
                    docs.push(doc);
                }
            }
            ev => {
                if let Some(d) = b.as_mut() {
                    if d.error.is_none() {
                        d.event(ev, span);
                    }
                }
            }
        }
    }
    if let Some(d) = b.take() {
        let line = d.start_line;
        let doc = d.finish();
        if (!doc.value.is_null() || doc.error.is_some()) && counted + 1 > MAX_DOCUMENTS {
            return (docs, Some((line, too_many_documents(counted + 1))));
        }
        docs.push(doc);
    }
    (docs, None)
}

fn too_many_documents(seen: usize) -> String {
    format!(
        "more than {MAX_DOCUMENTS} documents (reached {seen}); apply at most {MAX_DOCUMENTS} objects at a time by splitting the manifests into several files or applies"
    )
}

impl DocBuilder {
    fn finish(self) -> RawDoc {
        RawDoc {
            line: self
                .lines
                .get(&FieldPath::root())
                .copied()
                .unwrap_or(self.start_line),
            value: self.root.unwrap_or(Value::Null),
            lines: self.lines,
            error: self.error,
        }
    }

    fn fail(&mut self, line: usize, message: String) {
        if self.error.is_none() {
            self.error = Some((line, message));
        }
        self.stack.clear();
    }

    /// Count nodes against the budget; false (and the document fails) when it is exceeded.
    fn count(&mut self, n: usize, line: usize) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                line,
                format!("document has more than {MAX_NODES} nodes once YAML aliases are expanded; refusing to load it"),
            );
            return false;
        }
        true
    }

    /// The path the next node will have, or None when the next node is a mapping key.
    fn next_path(&self) -> Option<FieldPath> {
        match self.stack.last() {
            None => Some(FieldPath::root()),
            Some(Frame::Seq { path, items, .. }) => Some(path.index(items.len())),
            Some(Frame::Map { path, key, .. }) => key.as_ref().map(|k| path.child(k)),
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn event(&mut self, ev: YamlEvent<'_>, span: Span) {
        let line = span.start.line().max(1);
        self.line = line;
        match ev {
            YamlEvent::Scalar(text, style, anchor, tag) => {
                if !self.count(1, line) {
                    return;
                }
                if self.expecting_key() {
                    if anchor > 0 {
                        self.anchors
                            .insert(anchor, (Value::String(text.to_string()), 1));
                    }
                    self.key(text.into_owned(), line);
                    return;
                }
                let v = scalar(&text, style, tag.as_deref());
                self.record(line);
                if anchor > 0 {
                    self.anchors.insert(anchor, (v.clone(), 1));
                }
                self.push(v);
            }
            YamlEvent::Alias(id) => {
                let Some((v, n)) = self.anchors.get(&id).cloned() else {
                    self.fail(line, "YAML alias refers to an unknown anchor".into());
                    return;
                };
                if !self.count(n, line) {
                    return;
                }
                if self.expecting_key() {
                    match v {
                        Value::String(s) => self.key(s, line),
                        other => self.key(scalar_key(&other), line),
                    }
                    return;
                }
                self.record(line);
                self.push(v);
            }
            YamlEvent::SequenceStart(anchor, _) | YamlEvent::MappingStart(anchor, _) => {
                if !self.count(1, line) {
                    return;
                }
                if self.expecting_key() {
                    self.fail(
                        line,
                        "mapping keys must be plain values, not lists or mappings".into(),
                    );
                    return;
                }
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(
                        line,
                        format!("document is nested more than {MAX_DEPTH} levels deep"),
                    );
                    return;
                }
                let Some(path) = self.next_path() else {
                    return;
                };
                self.record(line);
                let nodes_at_start = self.nodes - 1;
                self.stack
                    .push(if matches!(ev, YamlEvent::SequenceStart(..)) {
                        Frame::Seq {
                            path,
                            items: Vec::new(),
                            anchor,
                            nodes_at_start,
                        }
                    } else {
                        Frame::Map {
                            path,
                            map: Map::new(),
                            key: None,
                            merges: Vec::new(),
                            anchor,
                            nodes_at_start,
                        }
                    });
            }
            YamlEvent::SequenceEnd | YamlEvent::MappingEnd => {
                let (v, anchor, start) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        nodes_at_start,
                        ..
                    }) => (Value::Array(items), anchor, nodes_at_start),
                    Some(Frame::Map {
                        mut map,
                        merges,
                        anchor,
                        nodes_at_start,
                        ..
                    }) => {
                        // YAML merge keys: earlier merged mappings win over later ones.
                        for m in merges {
                            for (k, v) in m {
                                map.entry(k).or_insert(v);
                            }
                        }
                        (Value::Object(map), anchor, nodes_at_start)
                    }
                    None => return,
                };
                if anchor > 0 {
                    let n = self.nodes.saturating_sub(start).max(1);
                    self.anchors.insert(anchor, (v.clone(), n));
                }
                self.push(v);
            }
            YamlEvent::Nothing
            | YamlEvent::StreamStart
            | YamlEvent::StreamEnd
            | YamlEvent::DocumentStart(_)
            | YamlEvent::DocumentEnd => {}
        }
    }

    fn key(&mut self, k: String, line: usize) {
        if k == "<<" {
            if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                *key = Some(k);
            }
            return;
        }
        let dup = matches!(self.stack.last(), Some(Frame::Map { map, .. }) if map.contains_key(&k));
        if dup {
            self.fail(line, format!("duplicate key {k:?} in the same mapping"));
            return;
        }
        if let Some(Frame::Map { path, key, .. }) = self.stack.last_mut() {
            self.lines.insert(path.child(&k), line);
            *key = Some(k);
        }
    }

    /// Remember the line of the node about to be pushed (map values use their key's line).
    fn record(&mut self, line: usize) {
        match self.stack.last() {
            None => {
                self.lines.insert(FieldPath::root(), line);
            }
            Some(Frame::Seq { path, items, .. }) => {
                self.lines.insert(path.index(items.len()), line);
            }
            Some(Frame::Map { .. }) => {}
        }
    }

    fn push(&mut self, v: Value) {
        let bad_merge = match self.stack.last_mut() {
            None => {
                self.root = Some(v);
                false
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(v);
                false
            }
            Some(Frame::Map {
                map, key, merges, ..
            }) => match key.take() {
                Some(k) if k == "<<" => match v {
                    Value::Object(m) => {
                        merges.push(m);
                        false
                    }
                    Value::Array(items) if items.iter().all(Value::is_object) => {
                        merges.extend(items.into_iter().filter_map(|i| match i {
                            Value::Object(m) => Some(m),
                            _ => None,
                        }));
                        false
                    }
                    _ => true,
                },
                Some(k) => {
                    map.insert(k, v);
                    false
                }
                None => false,
            },
        };
        if bad_merge {
            self.fail(
                self.line,
                "the merge key << needs a mapping or a list of mappings".into(),
            );
        }
    }
}

fn scalar_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Resolve a scalar by the YAML 1.2 core schema: quoted and block scalars are strings; plain
/// ones may be null, booleans or numbers.
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(t) = tag.filter(|t| t.is_yaml_core_schema()) {
        match t.suffix.as_str() {
            "str" => return Value::String(text.to_string()),
            "null" => return Value::Null,
            "bool" | "int" | "float" => {
                return plain(text).unwrap_or_else(|| Value::String(text.to_string()))
            }
            _ => {}
        }
    }
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    plain(text).unwrap_or_else(|| Value::String(text.to_string()))
}

fn plain(s: &str) -> Option<Value> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit()) {
        if let Ok(i) = s.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if let Ok(u) = s.parse::<u64>() {
            return Some(Value::Number(u.into()));
        }
    }
    if let Some(h) = s.strip_prefix("0x") {
        if !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return i64::from_str_radix(h, 16)
                .ok()
                .map(|i| Value::Number(i.into()));
        }
    }
    if let Some(o) = s.strip_prefix("0o") {
        if !o.is_empty() && o.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
            return i64::from_str_radix(o, 8)
                .ok()
                .map(|i| Value::Number(i.into()));
        }
    }
    if is_float(body) {
        return s
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number);
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (the sign is already stripped).
fn is_float(s: &str) -> bool {
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    let mant_ok = match mant.split_once('.') {
        Some(("", f)) => digits(f),
        Some((i, f)) => digits(i) && (f.is_empty() || digits(f)),
        None => digits(mant),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mant_ok && exp_ok
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn core_schema_scalars() {
        assert_eq!(plain("80"), Some(Value::from(80)));
        assert_eq!(plain("-3"), Some(Value::from(-3)));
        assert_eq!(plain("0.5"), Some(Value::from(0.5)));
        assert_eq!(plain("1e3"), Some(Value::from(1000.0)));
        assert_eq!(plain(".5"), Some(Value::from(0.5)));
        assert_eq!(plain("true"), Some(Value::Bool(true)));
        assert_eq!(plain("~"), Some(Value::Null));
        assert_eq!(plain("yes"), None);
        assert_eq!(plain("500m"), None);
        assert_eq!(plain("1.2.3"), None);
        assert_eq!(plain("0x1F"), Some(Value::from(31)));
        assert_eq!(plain("e3"), None);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let fields = ["containers", "nodeName", "tolerations"];
        assert_eq!(
            suggest("contaniers", fields.iter().copied()),
            Some("containers")
        );
        assert_eq!(
            suggest("NodeName", fields.iter().copied()),
            Some("nodeName")
        );
        assert_eq!(suggest("volumes", fields.iter().copied()), None);
    }
}
