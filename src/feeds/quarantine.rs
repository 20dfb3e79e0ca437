//! Bad rows set aside as they are found: `rejected/NAME.rows.csv` and
//! `rejected/NAME.errors.txt` (SPEC §4).
//!
//! Memory stays bounded whatever a file holds: each bad row is written out
//! verbatim the moment the parser reports it and then dropped, and the
//! error report lists at most [`MAX_LISTED`] problems, then a count. Both
//! files are written under temporary names and published only when the file's
//! processing is about to commit, so a crash or an abandoned file leaves no
//! half-written quarantine behind.
//!
//! The rows file keeps the name SPEC §4 gives it whatever the format, so one
//! name tells ops where bad rows are; its content is in the feed's own format
//! (the header and the bad rows for CSV, the bad lines for JSON lines, an array
//! of the bad elements for a JSON array) and in the file's own encoding when
//! that is Windows-1252, so once fixed it can be dropped again as it is.
//! A workbook's row (xlsx, ods) cannot be kept as written: its bad rows are
//! written as CSV (the header and the rows' cell values as read), and the
//! errors file says so on its first line.

use crate::config::FeedFormat;
use crate::feeds::decode::TextEncoding;
use crate::feeds::folder::{FeedFolders, PendingFile, with_suffix};
use crate::feeds::parse::RowError;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};

/// Problems listed one per line in `NAME.errors.txt`; the rest are counted.
pub const MAX_LISTED: u64 = 1_000;

/// The longest reason written for one row: a reason may quote a value, and a
/// value may be megabytes long.
const MAX_REASON_CHARS: usize = 500;

/// The quarantine of one file's bad rows, being written.
pub struct Quarantine<'f> {
    folders: &'f FeedFolders,
    format: FeedFormat,
    encoding: TextEncoding,
    /// The file's first line (decoded, with its line end), for CSV's header.
    header: Vec<u8>,
    line_end: &'static [u8],
    rows: Option<PendingFile<'f>>,
    report: Option<PendingFile<'f>>,
    problems: u64,
    kept: u64,
    /// The first write that failed; reported at [`Quarantine::publish`].
    failed: Option<io::Error>,
}

impl<'f> Quarantine<'f> {
    /// `head` is the start of the decoded text (at least its first line, when
    /// the line is not absurdly long).
    pub fn new(
        folders: &'f FeedFolders,
        format: FeedFormat,
        encoding: TextEncoding,
        head: &[u8],
    ) -> Quarantine<'f> {
        let (first_line_end, line_end): (usize, &'static [u8]) =
            match head.iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(i) if head[i..].starts_with(b"\r\n") => (i + 2, b"\r\n"),
                Some(i) if head[i] == b'\r' => (i + 1, b"\r"),
                Some(i) => (i + 1, b"\n"),
                None => (head.len(), b"\n"),
            };
        Quarantine {
            folders,
            format,
            encoding,
            header: head[..first_line_end].to_vec(),
            line_end,
            rows: None,
            report: None,
            problems: 0,
            kept: 0,
            failed: None,
        }
    }

    /// A workbook's header, as a CSV line, for the rows file (which is CSV
    /// whatever the workbook's format).
    pub fn set_csv_header(&mut self, line: Vec<u8>) {
        self.header = line;
        self.line_end = b"\n";
    }

    /// How many problems were reported.
    pub fn problems(&self) -> u64 {
        self.problems
    }

    /// Sets one bad row aside.
    pub fn add(&mut self, error: &RowError) {
        self.problems += 1;
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.write(error) {
            self.failed = Some(e);
        }
    }

    fn write(&mut self, error: &RowError) -> io::Result<()> {
        if self.problems == 1 && self.format.is_sheet() {
            let note = format!(
                "(a {} row cannot be kept as written: the bad rows are in the .rows.csv file as CSV, their cell values as read; row numbers are the sheet's)\n",
                self.format
            );
            self.report_file()?.write_all(note.as_bytes())?;
        }
        if self.problems <= MAX_LISTED {
            let reason = shorten(&error.reason);
            let line = if error.line > 0 {
                format!("row {} (line {}): {reason}\n", error.row, error.line)
            } else {
                format!("row {}: {reason}\n", error.row)
            };
            self.report_file()?.write_all(line.as_bytes())?;
        }
        if error.verbatim.is_empty() {
            return Ok(());
        }
        let first = self.rows.is_none();
        if first {
            let mut rows = self.folders.create_in_rejected()?;
            match self.format {
                FeedFormat::Csv => write_in(&mut rows, self.encoding, &self.header)?,
                // Already UTF-8 CSV (set_csv_header).
                FeedFormat::Xlsx | FeedFormat::Ods => rows.write_all(&self.header)?,
                // An array again, so that once fixed the file can be dropped as it is.
                FeedFormat::Json => {
                    rows.write_all(b"[")?;
                    rows.write_all(self.line_end)?;
                }
                FeedFormat::Jsonl => {}
            }
            self.rows = Some(rows);
        }
        let (encoding, line_end, format) = (self.encoding, self.line_end, self.format);
        let Some(rows) = self.rows.as_mut() else {
            return Ok(());
        };
        if format == FeedFormat::Json && !first {
            rows.write_all(b",")?;
            rows.write_all(line_end)?;
        }
        if format.is_sheet() {
            rows.write_all(&error.verbatim)?;
        } else {
            write_in(rows, encoding, &error.verbatim)?;
        }
        // The last row of a file may have no line end; the next row must not join it.
        if format != FeedFormat::Json
            && !error.verbatim.ends_with(b"\n")
            && !error.verbatim.ends_with(b"\r")
        {
            rows.write_all(line_end)?;
        }
        self.kept += 1;
        Ok(())
    }

    fn report_file(&mut self) -> io::Result<&mut PendingFile<'f>> {
        if self.report.is_none() {
            self.report = Some(self.folders.create_in_rejected()?);
        }
        self.report
            .as_mut()
            .ok_or_else(|| io::Error::other("the error report could not be created"))
    }

    /// Publishes the rows and the report under a base name in `rejected/`
    /// that no earlier quarantine uses (`base`, else `base.1`, …). Returns the
    /// name used, or `None` when there was nothing to set aside.
    pub fn publish(mut self, base: &OsStr) -> io::Result<Option<OsString>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.problems == 0 {
            return Ok(None);
        }
        if self.problems > MAX_LISTED {
            let more = self.problems - MAX_LISTED;
            let note = format!(
                "... and {more} more problem(s), not listed: only the first {MAX_LISTED} are; every bad row is in the .rows.csv file\n"
            );
            self.report_file()?.write_all(note.as_bytes())?;
        }
        if let Some(rows) = self.rows.as_mut()
            && self.format == FeedFormat::Json
        {
            rows.write_all(self.line_end)?;
            rows.write_all(b"]")?;
            rows.write_all(self.line_end)?;
        }
        let base = self.folders.free_rejected_base(base);
        if let Some(rows) = self.rows.take() {
            rows.publish(&with_suffix(&base, ".rows.csv"))?;
        }
        if let Some(report) = self.report.take() {
            report.publish(&with_suffix(&base, ".errors.txt"))?;
        }
        Ok(Some(base))
    }
}

/// Writes decoded text in the file's own encoding where that matters to the
/// tool that made it (Excel writes Windows-1252); UTF-8 otherwise.
fn write_in(out: &mut impl Write, encoding: TextEncoding, text: &[u8]) -> io::Result<()> {
    match encoding {
        TextEncoding::Windows1252 => {
            let text = String::from_utf8_lossy(text);
            out.write_all(&encoding_rs::WINDOWS_1252.encode(&text).0)
        }
        _ => out.write_all(text),
    }
}

fn shorten(reason: &str) -> std::borrow::Cow<'_, str> {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}… (reason cut short)", &reason[..cut]).into(),
        None => reason.into(),
    }
}
