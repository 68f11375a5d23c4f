//! Label selectors: the string form (`app=web,tier!=db,env in (prod,staging),canary,!legacy`)
//! used by List/Watch filters and the CLI's `-l`, and the structured [`LabelSelector`]
//! (matchLabels + matchExpressions) used in Deployment and ReplicaSet specs.
//!
//! Both become a [`Selector`]: a conjunction of [`Requirement`]s, kept sorted by key so that
//! equal selectors compare and print equal. [`Selector::matches`] follows Kubernetes:
//! `!=` and `notin` also match objects that lack the key; an empty selector matches
//! everything. Parse errors carry the byte position where the input stopped making sense.

use std::collections::BTreeSet;
use std::fmt;

use crate::types::{LabelSelector, LabelSelectorRequirement, Labels};
use crate::validate::{check_label_value, check_qualified_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key=value` or `key==value`
    Equals,
    /// `key!=value`
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    /// Build a checked requirement: the key must be a valid label key, the values valid label
    /// values; `=`/`!=` take exactly one value, `in`/`notin` at least one, and the existence
    /// operators none.
    pub fn new<I, S>(key: &str, op: Operator, values: I) -> Result<Requirement, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        check_qualified_name(key).map_err(|e| format!("invalid label key {key:?}: {e}"))?;
        let values: BTreeSet<String> = values.into_iter().map(Into::into).collect();
        for v in &values {
            check_label_value(v).map_err(|e| format!("invalid label value {v:?}: {e}"))?;
        }
        match op {
            Operator::Equals | Operator::NotEquals if values.len() != 1 => {
                return Err(format!("operator for key {key:?} needs exactly one value"));
            }
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(format!(
                    "'in' and 'notin' for key {key:?} need at least one value"
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(format!(
                    "existence operators for key {key:?} take no values"
                ));
            }
            _ => {}
        }
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.op
    }

    pub fn values(&self) -> &BTreeSet<String> {
        &self.values
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Operator::Equals | Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => !v.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Operator::Equals => write!(f, "{}={}", self.key, join(&self.values)),
            Operator::NotEquals => write!(f, "{}!={}", self.key, join(&self.values)),
            Operator::In => write!(f, "{} in ({})", self.key, join(&self.values)),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, join(&self.values)),
            Operator::Exists => f.write_str(&self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A conjunction of requirements. `Selector::default()` selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The string form could not be parsed; `pos` is a byte offset into the input.
    #[error("invalid selector {input:?} at position {pos}: {message}")]
    Parse {
        input: String,
        pos: usize,
        message: String,
    },
    /// A structured selector is malformed; `field` names the offending part.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl Selector {
    /// The selector that matches every object.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn from_requirements(mut reqs: Vec<Requirement>) -> Selector {
        reqs.sort();
        reqs.dedup();
        Selector { reqs }
    }

    /// Equality on every label: a Service's `selector`.
    pub fn from_labels(labels: &Labels) -> Selector {
        Selector {
            reqs: labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: BTreeSet::from([v.clone()]),
                })
                .collect(),
        }
    }

    /// Parse the string form. Whitespace around tokens is ignored; an empty string selects
    /// everything.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Parser {
            input,
            tokens: lex(input),
            next: 0,
        }
        .parse()
        .map(Selector::from_requirements)
    }

    /// Convert matchLabels + matchExpressions. An empty `LabelSelector` selects everything
    /// (callers that must not select everything, like Deployments, check `is_empty` first).
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in &sel.match_labels {
            let r = Requirement::new(k, Operator::Equals, [v.as_str()]).map_err(|message| {
                SelectorError::Invalid {
                    field: format!("matchLabels[{k}]"),
                    message,
                }
            })?;
            reqs.push(r);
        }
        for (i, e) in sel.match_expressions.iter().enumerate() {
            reqs.push(requirement_from_expression(e).map_err(|message| {
                SelectorError::Invalid {
                    field: format!("matchExpressions[{i}]"),
                    message,
                }
            })?);
        }
        Ok(Selector::from_requirements(reqs))
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Add a requirement (e.g. a controller narrowing a user's selector to one revision).
    pub fn and(mut self, r: Requirement) -> Selector {
        self.reqs.push(r);
        Selector::from_requirements(self.reqs)
    }
}

/// Does the equality selector `selector` (a Service's `spec.selector`, a pod's `nodeSelector`,
/// a LabelSelector's `matchLabels`) select `labels`: every key present with the same value?
/// The same answer as `Selector::from_labels(selector).matches(labels)`, without building the
/// selector. An empty map selects everything; callers for which an empty selector means "no
/// pods" (Services) check that first, as Kubernetes does.
pub fn matches_labels(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Turn one matchExpressions entry into a requirement (operators as Kubernetes spells them).
pub fn requirement_from_expression(e: &LabelSelectorRequirement) -> Result<Requirement, String> {
    let op = match e.operator.as_str() {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(format!(
                "unsupported operator {other:?}: use In, NotIn, Exists or DoesNotExist"
            ))
        }
    };
    Requirement::new(&e.key, op, e.values.iter().map(String::as_str))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl LabelSelector {
    /// Does this structured selector select `labels`? A malformed selector selects nothing
    /// (validation rejects those before they are stored).
    pub fn matches(&self, labels: &Labels) -> bool {
        Selector::from_label_selector(self).is_ok_and(|s| s.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// The string form

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    End,
}

impl Tok {
    /// The text of a word token. `in` and `notin` are operators after a key, but also valid
    /// label keys and values ("in in (a)" is key `in`, operator `in`), so where a key or
    /// value is expected they are read as words.
    fn word(&self) -> Option<String> {
        match self {
            Tok::Ident(s) => Some(s.clone()),
            Tok::In => Some("in".to_string()),
            Tok::NotIn => Some("notin".to_string()),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("{s:?}"),
            Tok::Eq => "'='".into(),
            Tok::DoubleEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Bang => "'!'".into(),
            Tok::In => "'in'".into(),
            Tok::NotIn => "'notin'".into(),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "end of input".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',') || c.is_whitespace()
}

fn lex(input: &str) -> Vec<(usize, Tok)> {
    let mut out = Vec::new();
    let mut it = input.char_indices().peekable();
    while let Some(&(pos, c)) = it.peek() {
        if c.is_whitespace() {
            it.next();
            continue;
        }
        let tok = match c {
            '=' => {
                it.next();
                if it.peek().is_some_and(|&(_, c)| c == '=') {
                    it.next();
                    Tok::DoubleEq
                } else {
                    Tok::Eq
                }
            }
            '!' => {
                it.next();
                if it.peek().is_some_and(|&(_, c)| c == '=') {
                    it.next();
                    Tok::NotEq
                } else {
                    Tok::Bang
                }
            }
            '(' => {
                it.next();
                Tok::Open
            }
            ')' => {
                it.next();
                Tok::Close
            }
            ',' => {
                it.next();
                Tok::Comma
            }
            _ => {
                let mut s = String::new();
                while let Some(&(_, c)) = it.peek() {
                    if is_special(c) {
                        break;
                    }
                    s.push(c);
                    it.next();
                }
                match s.as_str() {
                    "in" => Tok::In,
                    "notin" => Tok::NotIn,
                    _ => Tok::Ident(s),
                }
            }
        };
        out.push((pos, tok));
    }
    out.push((input.len(), Tok::End));
    out
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Tok)>,
    next: usize,
}

impl Parser<'_> {
    fn peek(&self) -> (usize, &Tok) {
        let i = self.next.min(self.tokens.len().saturating_sub(1));
        self.tokens
            .get(i)
            .map(|(p, t)| (*p, t))
            .unwrap_or((self.input.len(), &Tok::End))
    }

    fn bump(&mut self) -> (usize, Tok) {
        let (p, t) = self.peek();
        let r = (p, t.clone());
        self.next += 1;
        r
    }

    fn err(&self, pos: usize, message: impl Into<String>) -> SelectorError {
        SelectorError::Parse {
            input: self.input.to_string(),
            pos,
            message: message.into(),
        }
    }

    fn parse(mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        if *self.peek().1 == Tok::End {
            return Ok(reqs);
        }
        loop {
            reqs.push(self.requirement()?);
            let (pos, t) = self.bump();
            match t {
                Tok::End => return Ok(reqs),
                Tok::Comma => {}
                other => {
                    return Err(self.err(
                        pos,
                        format!("expected ',' or end of input, found {}", other.describe()),
                    ))
                }
            }
        }
    }

    fn ident(&mut self, what: &str) -> Result<(usize, String), SelectorError> {
        let (pos, t) = self.bump();
        match t.word() {
            Some(s) => Ok((pos, s)),
            None => Err(self.err(pos, format!("expected {what}, found {}", t.describe()))),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if *self.peek().1 == Tok::Bang {
            self.bump();
            let (pos, key) = self.ident("a label key after '!'")?;
            return Requirement::new(&key, Operator::DoesNotExist, Vec::<String>::new())
                .map_err(|m| self.err(pos, m));
        }
        let (kpos, key) = self.ident("a label key")?;
        let (opos, op) = self.peek();
        let op = op.clone();
        let (op, values) = match op {
            Tok::Comma | Tok::End => (Operator::Exists, Vec::new()),
            Tok::Eq | Tok::DoubleEq | Tok::NotEq => {
                self.bump();
                // An empty value is allowed: `tier=` selects objects whose tier label is "".
                let value = match self.peek().1.word() {
                    Some(s) => {
                        self.bump();
                        s
                    }
                    None => String::new(),
                };
                let op = if op == Tok::NotEq {
                    Operator::NotEquals
                } else {
                    Operator::Equals
                };
                (op, vec![value])
            }
            Tok::In | Tok::NotIn => {
                self.bump();
                let (ppos, p) = self.bump();
                if p != Tok::Open {
                    return Err(self.err(
                        ppos,
                        format!("expected '(' after {}, found {}", op.describe(), p.describe()),
                    ));
                }
                let mut values = Vec::new();
                loop {
                    let (vpos, v) = self.bump();
                    match v {
                        Tok::Ident(s) => values.push(s),
                        Tok::In | Tok::NotIn => values.push(v.word().unwrap_or_default()),
                        Tok::Close if values.is_empty() => {
                            return Err(self.err(vpos, "expected at least one value in '( )'"))
                        }
                        other => {
                            return Err(self.err(
                                vpos,
                                format!("expected a value, found {}", other.describe()),
                            ))
                        }
                    }
                    let (spos, sep) = self.bump();
                    match sep {
                        Tok::Comma => {}
                        Tok::Close => break,
                        other => {
                            return Err(self.err(
                                spos,
                                format!("expected ',' or ')', found {}", other.describe()),
                            ))
                        }
                    }
                }
                let op = if op == Tok::In {
                    Operator::In
                } else {
                    Operator::NotIn
                };
                (op, values)
            }
            other => {
                return Err(self.err(
                    opos,
                    format!(
                        "expected '=', '==', '!=', 'in', 'notin', ',' or end of input after key {key:?}, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        Requirement::new(&key, op, values).map_err(|m| self.err(kpos, m))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matches_labels_is_equality_on_every_key_like_the_selector_it_stands_for() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("app", "web")], true),
            (&[("app", "web"), ("tier", "front")], true),
            (&[("app", "api")], false),
            (&[("app", "web"), ("zone", "a")], false),
            (&[("App", "web")], false),
            (&[("app", "")], false),
        ];
        for (sel, want) in cases {
            let sel = labels(sel);
            assert_eq!(matches_labels(&sel, &pod), *want, "{sel:?}");
            assert_eq!(Selector::from_labels(&sel).matches(&pod), *want, "{sel:?}");
        }
    }

    #[test]
    fn parses_every_operator_and_prints_canonically() {
        let s = Selector::parse("a=b, c==d ,e!=f,g in (y, x),h notin (z),i,!j").unwrap();
        assert_eq!(s.to_string(), "a=b,c=d,e!=f,g in (x,y),h notin (z),i,!j");
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn not_equals_matches_missing_key() {
        let s = Selector::parse("tier!=db").unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("tier", "web")])));
        assert!(!s.matches(&labels(&[("tier", "db")])));
    }

    #[test]
    fn error_reports_position() {
        let e = Selector::parse("a=b,c in x").unwrap_err();
        assert!(matches!(e, SelectorError::Parse { pos: 9, .. }), "{e}");
    }
}
