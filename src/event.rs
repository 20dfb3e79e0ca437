//! Events: one record of a feed, with typed field values.
//!
//! A feed file becomes a stream of [`Event`]s. Field values keep the text as
//! written (so emails show what the producer sent) and are interpreted as a
//! number or a time only when a condition compares them with one. This module
//! does no I/O.

use jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt;

/// A field value as delivered by a feed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Text; numbers in CSV arrive as text too and are parsed on comparison.
    Text(String),
    /// A number from a JSON feed.
    Number(f64),
    /// A list: a field named in `list_fields`, or a JSON array.
    List(Vec<String>),
}

impl Value {
    /// The value as a number, if it reads as one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Text(s) => parse_number(s),
            Value::List(_) => None,
        }
    }

    /// The scalar elements of the value: one for a scalar, each element for a list.
    pub fn elements(&self) -> Elements<'_> {
        match self {
            Value::List(items) => Elements::List(items.iter()),
            other => Elements::One(Some(other)),
        }
    }

    /// Whether the value carries nothing (empty text or an empty list).
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Text(s) => s.trim().is_empty(),
            Value::Number(_) => false,
            Value::List(items) => items.is_empty(),
        }
    }
}

/// Borrowed scalar view of one element of a [`Value`].
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    Text(&'a str),
    Number(f64),
}

impl<'a> Scalar<'a> {
    pub fn as_number(self) -> Option<f64> {
        match self {
            Scalar::Number(n) => Some(n),
            Scalar::Text(s) => parse_number(s),
        }
    }
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Text(s) => f.write_str(s),
            Scalar::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Iterator over the scalar elements of a value.
pub enum Elements<'a> {
    One(Option<&'a Value>),
    List(std::slice::Iter<'a, String>),
}

impl<'a> Iterator for Elements<'a> {
    type Item = Scalar<'a>;
    fn next(&mut self) -> Option<Scalar<'a>> {
        match self {
            Elements::One(v) => match v.take()? {
                Value::Text(s) => Some(Scalar::Text(s)),
                Value::Number(n) => Some(Scalar::Number(*n)),
                Value::List(_) => None,
            },
            Elements::List(it) => it.next().map(|s| Scalar::Text(s)),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => f.write_str(s),
            Value::Number(n) => write!(f, "{n}"),
            Value::List(items) => f.write_str(&items.join("; ")),
        }
    }
}

/// Parses a number the way people write them in exports: surrounding spaces allowed.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    // Cheap rejection first: most text fields are not numbers, and f64 parsing
    // accepts words like "inf" and "nan" that must stay text here.
    let first = *t.as_bytes().first()?;
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// One record of a feed, ready for the rules.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The feed it came from.
    pub feed: String,
    /// The value of the feed's `id_field`, when the feed has one.
    pub record_id: Option<String>,
    /// The event time (the feed's `time_field`), in UTC.
    pub time: Timestamp,
    /// Every field of the record by its column name, in name order so that
    /// rendering and hashing are deterministic.
    pub fields: BTreeMap<String, Value>,
}

impl Event {
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_empty())
    }

    /// The value of a field as text (lists joined), or "" when absent.
    pub fn text(&self, field: &str) -> String {
        self.get(field).map(|v| v.to_string()).unwrap_or_default()
    }
}

/// Normalises a string for list membership and first-seen comparisons:
/// case, spaces, hyphens and other punctuation are ignored, so that
/// `N-Desethylisotonitazene` equals `N-desethyl isotonitazene`.
pub fn normalise_term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Like [`normalise_term`] but compares without allocating.
pub fn terms_equal(a: &str, b_normalised: &str) -> bool {
    let mut b = b_normalised.chars();
    for c in a.chars().filter(|c| c.is_alphanumeric()) {
        for lc in c.to_lowercase() {
            if b.next() != Some(lc) {
                return false;
            }
        }
    }
    b.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_ignore_case_spaces_and_hyphens() {
        let listed = normalise_term("N-desethyl isotonitazene");
        assert!(terms_equal("N-Desethylisotonitazene", &listed));
        assert!(terms_equal("n desethyl-ISOTONITAZENE", &listed));
        assert!(!terms_equal("isotonitazene", &listed));
        assert!(!terms_equal("N-desethyl isotonitazenes", &listed));
    }

    #[test]
    fn numbers_parse_only_when_numeric() {
        assert_eq!(parse_number(" 12.5 "), Some(12.5));
        assert_eq!(parse_number("-3"), Some(-3.0));
        assert_eq!(parse_number("nan"), None);
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("12 mg"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn list_elements_iterate_each_item() {
        let v = Value::List(vec!["a".into(), "b".into()]);
        let items: Vec<String> = v.elements().map(|s| s.to_string()).collect();
        assert_eq!(items, ["a", "b"]);
        let one = Value::Text("x".into());
        assert_eq!(one.elements().count(), 1);
    }
}
