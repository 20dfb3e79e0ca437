//! Feeds: files in. Decoding, parsing records, and (in the shell) watching folders.
//!
//! [`decode`] and [`parse`] are pure and stream; [`intake`] is the shell that
//! claims a file in a feed folder, runs it through the pipeline in one
//! transaction and only then moves it; [`watch`] turns filesystem events and
//! periodic rescans into "this file may be ready" hints.

pub mod decode;
pub mod intake;
pub mod parse;
pub mod watch;

use crate::event::Event;
use sha2::{Digest, Sha256};

/// A fingerprint of a record's content: the same record delivered again has
/// the same fingerprint, an update to it does not.
pub fn record_fingerprint(event: &Event) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(event.feed.as_bytes());
    h.update([0]);
    for (k, v) in &event.fields {
        h.update(k.as_bytes());
        h.update([0x1f]);
        h.update(v.to_string().as_bytes());
        h.update([0x1e]);
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}
