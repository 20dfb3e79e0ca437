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

    /// Writes the element's normalised form (see [`normalise_term`]) into `out`.
    pub fn normalise_into(self, out: &mut String) {
        match self {
            Scalar::Text(s) => normalise_into(s, out),
            Scalar::Number(n) => normalise_into(&n.to_string(), out),
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

/// The names of the fields a record can have, sorted and unique: a file's
/// columns, shared (one `Arc`) by all of its rows.
pub type Schema = std::sync::Arc<[FieldName]>;

/// The fields of a record, in name order (so rendering and hashing are
/// deterministic).
///
/// A row holds its values by index into a [`Schema`] shared by all the rows of
/// a file: building or dropping a row touches one shared reference count,
/// not one per field (which, with rows parsed on one thread and dropped on
/// another, cost more than parsing them).
#[derive(Debug, Clone, Default)]
pub struct Fields {
    names: Schema,
    /// (index into `names`, value), in ascending index order.
    values: Vec<(u32, Value)>,
}

impl Fields {
    /// Fields from pairs already sorted by name, without duplicates (the caller's promise).
    pub fn from_sorted(pairs: Vec<(FieldName, Value)>) -> Fields {
        debug_assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "fields must be sorted and unique"
        );
        let mut names = Vec::with_capacity(pairs.len());
        let mut values = Vec::with_capacity(pairs.len());
        for (index, (name, value)) in (0u32..).zip(pairs) {
            names.push(name);
            values.push((index, value));
        }
        Fields {
            names: names.into(),
            values,
        }
    }

    /// Fields given by index into `names` (sorted and unique), with the indices
    /// ascending (the caller's promise).
    pub fn from_schema(names: Schema, values: Vec<(u32, Value)>) -> Fields {
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]), "schema not sorted");
        debug_assert!(
            values.windows(2).all(|w| w[0].0 < w[1].0)
                && values.last().is_none_or(|v| (v.0 as usize) < names.len()),
            "indices must ascend within the schema"
        );
        Fields { names, values }
    }

    /// The shared names these fields index into.
    pub fn schema(&self) -> &Schema {
        &self.names
    }

    /// The index into [`Fields::schema`] of each value, in order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.values.iter().map(|(i, _)| *i as usize)
    }

    fn name_at(&self, index: u32) -> &FieldName {
        &self.names[index as usize]
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.values
            .binary_search_by(|(i, _)| (**self.name_at(*i)).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name).ok().map(|i| &self.values[i].1)
    }

    /// Where a field is in this record, for looking it up again by position.
    pub fn position_of(&self, name: &str) -> Option<usize> {
        self.position(name).ok()
    }

    /// The value at a position given by [`Fields::position_of`] on these same fields.
    pub fn value_at(&self, position: usize) -> &Value {
        &self.values[position].1
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets a field, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<FieldName>, value: Value) -> Option<Value> {
        let name = name.into();
        let at = match self.position(&name) {
            Ok(i) => return Some(std::mem::replace(&mut self.values[i].1, value)),
            Err(at) => at,
        };
        let index = match self.names.binary_search(&name) {
            Ok(index) => index,
            Err(index) => {
                // A name the schema lacks: this record gets its own schema.
                let mut names = self.names.to_vec();
                names.insert(index, name);
                self.names = names.into();
                for (i, _) in &mut self.values {
                    if *i as usize >= index {
                        *i += 1;
                    }
                }
                index
            }
        };
        self.values.insert(at, (to_index(index), value));
        None
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.position(name).ok().map(|i| self.values.remove(i).1)
    }

    pub fn iter(&self) -> FieldsIter<'_> {
        FieldsIter {
            names: &self.names,
            values: self.values.iter(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A schema index. Schemas are a file's columns or an object's keys, far
/// fewer than four billion; a bigger one is a broken invariant.
fn to_index(index: usize) -> u32 {
    u32::try_from(index).expect("a record has fewer than 2^32 fields")
}

/// The (name, value) pairs of [`Fields`], in name order.
pub struct FieldsIter<'a> {
    names: &'a [FieldName],
    values: std::slice::Iter<'a, (u32, Value)>,
}

impl<'a> Iterator for FieldsIter<'a> {
    type Item = (&'a FieldName, &'a Value);
    fn next(&mut self) -> Option<Self::Item> {
        self.values
            .next()
            .map(|(i, v)| (&self.names[*i as usize], v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.values.size_hint()
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
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
    type IntoIter = FieldsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Into<FieldName>> FromIterator<(K, Value)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Fields {
        let mut pairs: Vec<(FieldName, Value)> =
            iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        // Later values win, as with repeated inserts.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|b, a| a.0 == b.0);
        Fields::from_sorted(pairs)
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
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self {
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
    normalise_into(s, &mut out);
    out
}

/// Writes the normalised form of `value` (see [`normalise_term`]) into `out`,
/// reusing its allocation: this runs for every list element of every row.
pub fn normalise_into(value: &str, out: &mut String) {
    out.clear();
    if value.is_ascii() {
        // The common case, without Unicode case tables.
        out.extend(
            value
                .bytes()
                .filter(u8::is_ascii_alphanumeric)
                .map(|b| b.to_ascii_lowercase() as char),
        );
    } else {
        for c in value.chars().filter(|c| c.is_alphanumeric()) {
            out.extend(c.to_lowercase());
        }
    }
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
