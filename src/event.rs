//! Events: one record of a feed, with typed field values.
//!
//! A feed file becomes a stream of [`Event`]s. Field values keep the text as
//! written (so emails show what the producer sent) and are interpreted as a
//! number or a time only when a condition compares them with one. This module
//! does no I/O.

use jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt;

/// Text of a field value. Most values in feeds (ids, districts, substance
/// names, times) are short: a compact string keeps up to 24 bytes inline, so a
/// row does not allocate once per cell.
pub type Text = compact_str::CompactString;

/// A field value as delivered by a feed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Text; numbers in CSV arrive as text too and are parsed on comparison.
    Text(Text),
    /// A number from a JSON feed.
    Number(f64),
    /// A list: a field named in `list_fields`, or a JSON array.
    List(Vec<Text>),
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
            Value::Text(s) => trim(s).is_empty(),
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
    List(std::slice::Iter<'a, Text>),
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

/// `str::trim`, with a fast path for the common case of text that has no
/// space at either end (checking Unicode whitespace is most of trim's cost).
pub fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (None, _) => s,
        (Some(&a), Some(&b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

/// Parses a number the way people write them in exports: surrounding spaces allowed.
pub fn parse_number(s: &str) -> Option<f64> {
    let t = trim(s);
    // Cheap rejection first: most text fields are not numbers, and f64 parsing
    // accepts words like "inf" and "nan" that must stay text here.
    let first = *t.as_bytes().first()?;
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return None;
    }
    t.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A feed's name, shared between the events of a file.
pub type FeedName = std::sync::Arc<str>;

/// A field's name, shared between the rows of a file.
pub type FieldName = std::sync::Arc<str>;

/// The fields of a record, sorted by name (so rendering and hashing are
/// deterministic). A sorted vector, not a map: a file's rows are built in
/// column order already sorted once per file, without a tree per row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields(Vec<(FieldName, Value)>);

impl Fields {
    /// Fields from pairs already sorted by name, without duplicates (the caller's promise).
    pub fn from_sorted(pairs: Vec<(FieldName, Value)>) -> Fields {
        debug_assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "fields must be sorted and unique"
        );
        Fields(pairs)
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// Where a field is in this record, for looking it up again by position.
    pub fn position_of(&self, name: &str) -> Option<usize> {
        self.position(name).ok()
    }

    /// The value at a position given by [`Fields::position_of`] on these same fields.
    pub fn value_at(&self, position: usize) -> &Value {
        &self.0[position].1
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets a field, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<FieldName>, value: Value) -> Option<Value> {
        let name = name.into();
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name).ok().map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FieldName, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = Value;
    fn index(&self, name: &str) -> &Value {
        // Indexing is for tests and known-present fields, like a map's.
        self.get(name)
            .unwrap_or_else(|| panic!("no field `{name}`"))
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a FieldName, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (FieldName, Value)>,
        fn(&'a (FieldName, Value)) -> (&'a FieldName, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Into<FieldName>> FromIterator<(K, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Fields {
        let mut fields = Fields::default();
        for (k, v) in iter {
            fields.insert(k, v);
        }
        fields
    }
}

impl<K: Into<FieldName>, const N: usize> From<[(K, Value); N]> for Fields {
    fn from(pairs: [(K, Value); N]) -> Fields {
        pairs.into_iter().collect()
    }
}

impl serde::Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        let map = BTreeMap::<String, Value>::deserialize(deserializer)?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (FieldName::from(k), v))
            .collect())
    }
}

/// One record of a feed, ready for the rules.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The feed it came from (shared by all the events of a file).
    pub feed: FeedName,
    /// The value of the feed's `id_field`, when the feed has one.
    pub record_id: Option<String>,
    /// The event time (the feed's `time_field`), in UTC.
    pub time: Timestamp,
    /// Every field of the record by its column name, in name order so that
    /// rendering and hashing are deterministic. Names are shared (`Arc`) by all
    /// the rows of a file: a million rows do not allocate sixteen million names.
    pub fields: Fields,
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
