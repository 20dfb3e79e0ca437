//! Feeds: files in. Decoding, parsing records (text, and workbooks in [`sheet`]),
//! and (in the shell) watching folders.
//!
//! [`decode`] and [`parse`] are pure and stream; [`intake`] is the shell that
//! claims a file in a feed folder, runs it through the pipeline in one
//! transaction and only then moves it; [`watch`] turns filesystem events and
//! periodic rescans into "this file may be ready" hints.

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
    // One pass of XXH3 over one buffer is several times cheaper than feeding
    // the streaming hasher a dozen small pieces; the buffer is reused per thread.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let mut buf = buffer.borrow_mut();
        buf.clear();
        buf.extend_from_slice(event.feed.as_bytes());
        buf.push(0);
        for (k, v) in &event.fields {
            buf.extend_from_slice(k.as_bytes());
            buf.push(0x1f);
            match v {
                Value::Text(t) => buf.extend_from_slice(t.as_bytes()),
                Value::List(items) => {
                    for item in items {
                        buf.extend_from_slice(item.as_bytes());
                        buf.push(0x1d);
                    }
                }
                Value::Number(n) => buf.extend_from_slice(&n.to_le_bytes()),
            }
            buf.push(0x1e);
        }
        xxhash_rust::xxh3::xxh3_128(&buf).to_le_bytes()
    })
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
