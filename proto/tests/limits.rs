//! Hostile-input limits of the manifest loader and the validator: documents per apply, YAML
//! alias expansion and nesting, name length and form, label keys and values. Each limit
//! returns a clear error and no objects at all.

#![allow(clippy::unwrap_used)]

use berth_proto::manifest::{load_paths, parse_manifest, MAX_DOCUMENTS};
use berth_proto::validate::validate;
use berth_proto::DynObject;

fn pod_doc(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n    - name: c\n      image: nginx\n"
    )
}

fn docs(n: usize, prefix: &str) -> String {
    (0..n)
        .map(|i| pod_doc(&format!("{prefix}{i}")))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn errors_of(text: &str) -> Vec<String> {
    match parse_manifest("app.yaml", text) {
        Ok(objs) => panic!("expected errors, got {} objects", objs.len()),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_file_with_exactly_the_document_limit_loads() {
    let objs = parse_manifest("app.yaml", &docs(MAX_DOCUMENTS, "cm")).unwrap();
    assert_eq!(objs.len(), MAX_DOCUMENTS);
}

#[test]
fn a_file_with_more_documents_than_the_limit_is_refused_whole() {
    let errs = errors_of(&docs(MAX_DOCUMENTS + 1, "cm"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("more than 500 documents") && errs[0].contains("splitting the manifests"),
        "{}",
        errs[0]
    );
}

#[test]
fn empty_documents_do_not_count_towards_the_document_limit() {
    let mut text = "---\n# nothing\n".repeat(2 * MAX_DOCUMENTS);
    text.push_str("---\n");
    text.push_str(&pod_doc("only"));
    assert_eq!(parse_manifest("app.yaml", &text).unwrap().len(), 1);
}

#[test]
fn the_document_limit_counts_all_files_of_one_apply() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, docs(300, "a")).unwrap();
    std::fs::write(&b, docs(300, "b")).unwrap();
    // Each file alone is fine.
    assert_eq!(load_paths(std::slice::from_ref(&a)).unwrap().len(), 300);
    let err = load_paths(&[a, b]).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("600 documents in total; at most 500"),
        "{text}"
    );
}

#[test]
fn one_invalid_document_means_no_object_is_returned() {
    let text = format!(
        "{}---\n{}---\n{}",
        pod_doc("good-one"),
        pod_doc("Bad_Name"),
        pod_doc("good-two")
    );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("metadata.name"), "{}", errs[0]);
}

#[test]
fn alias_bomb_in_a_later_document_refuses_the_whole_file() {
    let mut bomb = String::from(
        "kind: Pod\napiVersion: v1\nmetadata: {name: x}\nx0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..8 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!(
            "x{i}: &a{i} [{}]\n",
            std::iter::repeat_n(prev.as_str(), 10)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let text = format!("{}---\n{bomb}", pod_doc("fine"));
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("once YAML aliases are expanded"),
        "{}",
        errs[0]
    );
}

#[test]
fn deep_nesting_inside_an_object_is_refused() {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: deep\n  annotations: {}{}\nspec:\n  containers: [{{name: c, image: nginx}}]\n",
        "{a: ".repeat(100),
        "}".repeat(100)
    );
    let errs = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("nested more than 64 levels"),
        "{}",
        errs[0]
    );
}

fn messages(json: serde_json::Value) -> Vec<String> {
    let obj = DynObject::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    validate(&obj).iter().map(|e| e.to_string()).collect()
}

fn pod_with(name: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    })
}

/// A DNS-1123 subdomain of exactly `len` characters (labels of at most 63).
fn long_subdomain(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        if !s.is_empty() {
            s.push('.');
        }
        let n = (len - s.len()).min(63);
        s.push_str(&"a".repeat(n));
    }
    assert_eq!(s.len(), len);
    s
}

#[test]
fn names_longer_than_253_characters_are_refused() {
    let ok = long_subdomain(253);
    assert!(messages(pod_with(&ok, serde_json::json!({}))).is_empty());
    let long = long_subdomain(254);
    let errs = messages(pod_with(&long, serde_json::json!({})));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("metadata.name")
            && errs[0].contains("no more than 253 characters (has 254)"),
        "{}",
        errs[0]
    );
}

#[test]
fn service_names_must_be_dns_labels_of_at_most_63_characters() {
    let svc = |name: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]},
        })
    };
    assert!(messages(svc(&"s".repeat(63))).is_empty());
    let errs = messages(svc(&"s".repeat(64)));
    assert!(
        errs.iter()
            .any(|e| e.contains("no more than 63 characters")),
        "{errs:?}"
    );
    let errs = messages(svc("a.b"));
    assert!(!errs.is_empty(), "a dotted name is not a DNS label");
}

#[test]
fn names_not_in_dns1123_form_are_refused() {
    for bad in [
        "UPPER",
        "-lead",
        "trail-",
        "under_score",
        "dots..twice",
        "sp ace",
        "é",
    ] {
        let errs = messages(pod_with(bad, serde_json::json!({})));
        assert!(
            errs.iter().any(|e| e.contains("metadata.name")),
            "{bad:?} accepted: {errs:?}"
        );
    }
}

#[test]
fn label_keys_and_values_have_length_and_form_limits() {
    let ok = serde_json::json!({
        format!("{}/{}", long_subdomain(253), "k".repeat(63)): "v".repeat(63),
    });
    assert!(messages(pod_with("x", ok)).is_empty());
    let cases = [
        (
            serde_json::json!({"k".repeat(64): "v"}),
            "no more than 63 characters",
        ),
        (
            serde_json::json!({format!("{}/k", long_subdomain(254)): "v"}),
            "253",
        ),
        (
            serde_json::json!({"k": "v".repeat(64)}),
            "no more than 63 characters",
        ),
        (serde_json::json!({"k": "bad value"}), "alphanumeric"),
        (serde_json::json!({"-k": "v"}), "alphanumeric"),
        (serde_json::json!({"": "v"}), "empty"),
    ];
    for (labels, want) in cases {
        let errs = messages(pod_with("x", labels.clone()));
        assert!(
            errs.iter()
                .any(|e| e.contains("metadata.labels") && e.contains(want)),
            "{labels} -> {errs:?} (wanted {want:?})"
        );
    }
}
