//! What the command line prints: status, the review queue, replay and rule-test
//! results, `check`'s verdict.
//!
//! Pure: each function formats values it is given (the clock's `now` included)
//! into a writer or a string, so `main.rs` only fetches, calls and exits, and the
//! wording is tested here. Every value that came from a file or a mail server is
//! escaped ([`crate::display::escape_controls`]) before a terminal sees it; JSON
//! output is escaped by serde.

pub mod alerts;
pub mod audit;
pub mod check;
pub mod outbox;
pub mod replay;
pub mod status;
pub mod users;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::io::{self, Write};

/// `--format`: for a person, or for a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `value` as indented JSON and a newline.
pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// A time in the config's time zone, as `pattern` (strftime) writes it.
fn local(t: Timestamp, tz: &TimeZone, pattern: &str) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime(pattern)
        .to_string()
}
