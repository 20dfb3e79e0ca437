//! Feeds: files in. Decoding, parsing records (text, and workbooks in [`sheet`]),
//! and (in the shell) watching folders.
//!
//! [`decode`] and [`parse`] are pure and stream; [`intake`] is the shell that
//! claims a file in a feed folder, runs it through the pipeline in one
//! transaction and only then moves it; [`watch`] turns filesystem events and
//! periodic rescans into "this file may be ready" hints.

pub mod columns;
pub mod decode;
pub mod folder;
pub mod intake;
pub mod json_array;
pub mod parse;
pub mod quarantine;
pub mod sheet;
pub mod watch;

use crate::event::Event;

/// A fingerprint of a record's content: the same record delivered again has
/// the same fingerprint, an update to it does not. XXH3-128 over the field
/// bytes: stable across versions (it is stored), and fast on the hot path.
pub fn record_fingerprint(event: &Event) -> [u8; 16] {
    use crate::event::Value;
    fingerprint_with(&event.feed, |out| {
        for (k, v) in &event.fields {
            match v {
                Value::Text(t) => out.text(k, t),
                Value::List(items) => out.list(k, items.iter().map(|i| i.as_str())),
                Value::Number(n) => out.field(k, &n.to_le_bytes()),
            }
        }
    })
}

/// The fingerprint of a record of `feed` whose fields `write` hands over, in
/// name order: the one framing of [`record_fingerprint`], whoever has the fields.
pub(crate) fn fingerprint_with(
    feed: &str,
    write: impl FnOnce(&mut FingerprintFields<'_>),
) -> [u8; 16] {
    // One pass of XXH3 over one buffer is several times cheaper than feeding
    // the streaming hasher a dozen small pieces; the buffer is reused per thread.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        buf.clear();
        buf.extend_from_slice(feed.as_bytes());
        buf.push(0);
        write(&mut FingerprintFields(&mut buf));
        xxhash_rust::xxh3::xxh3_128(&buf).to_le_bytes()
    })
}

/// The fields of a record as its fingerprint frames them.
pub(crate) struct FingerprintFields<'b>(&'b mut Vec<u8>);

impl FingerprintFields<'_> {
    /// A field with one text value.
    pub(crate) fn text(&mut self, name: &str, text: &str) {
        self.field(name, text.as_bytes());
    }

    /// A field whose value is `bytes` as they are.
    fn field(&mut self, name: &str, bytes: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0x1f);
        self.0.extend_from_slice(bytes);
        self.0.push(0x1e);
    }

    /// A list field, left out when it has no items, as an event leaves out
    /// an empty list cell.
    pub(crate) fn list_unless_empty<'i>(
        &mut self,
        name: &str,
        items: impl Iterator<Item = &'i str>,
    ) {
        let before = self.0.len();
        self.list(name, items);
        // Only the framing was written (the name and two separators): no item.
        if self.0.len() == before + name.len() + 2 {
            self.0.truncate(before);
        }
    }

    /// A list field.
    pub(crate) fn list<'i>(&mut self, name: &str, items: impl Iterator<Item = &'i str>) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(0x1f);
        for item in items {
            self.0.extend_from_slice(item.as_bytes());
            self.0.push(0x1d);
        }
        self.0.push(0x1e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Fields, Value};

    /// The fingerprint is stored in the daemon's database: a faster way of
    /// computing it must give these very bytes, or every record already seen
    /// would be taken for a new one.
    #[test]
    fn the_fingerprint_of_a_known_record_never_changes() {
        let event = Event {
            feed: "drug_testing".into(),
            record_id: Some("MDK-25-0000001".into()),
            time: "2025-01-01T00:00:17Z".parse().unwrap(),
            fields: Fields::from([
                ("amount", Value::Number(12.5)),
                ("district", Value::Text("Manchester".into())),
                (
                    "substances",
                    Value::List(vec!["caffeine".into(), "paracetamol".into()]),
                ),
            ]),
        };
        let hex: String = record_fingerprint(&event)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "0e89a37609adfbb94ecd4123ed9943e3");
    }
}
