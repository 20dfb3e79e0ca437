//! Records from decoded feed text: CSV, JSON lines, or a JSON array of objects.
//!
//! Pure: reads from any `Read` of UTF-8 text and calls back once per record
//! with an [`Event`] or a [`RowError`], so a file of a million rows streams
//! through in constant memory. A problem with one row never stops the others;
//! a problem with the file as a whole (no header, not JSON at all) is a
//! [`FileError`] and nothing of the file is used. [`parse_csv_records`] runs the
//! same CSV loop but hands each good record over as its cells
//! ([`crate::feeds::columns`]), for a caller that needs only some as events.

use crate::config::{FeedConfig, FeedFormat};
use crate::event::{Event, FeedName, FieldName, Fields, Schema, Text, Value, trim};
use crate::feeds::columns::{CsvColumns, CsvSink};
use crate::feeds::json_array::ArrayElements;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::sync::Arc;

/// How much of a file is looked at to sniff its delimiter and spot binary data.
const HEAD: usize = 8192;

/// Why a whole file could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

/// Why one row could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based record number (data rows for CSV, lines for JSON lines, elements for JSON).
    pub row: u64,
    /// 1-based line where the record starts (0 if not known).
    pub line: u64,
    pub reason: String,
    /// Byte range of the record in the decoded text.
    pub span: Option<Range<u64>>,
    /// The record as written (decoded text), so the caller can quarantine it
    /// verbatim as it is found, without keeping the file.
    pub verbatim: Vec<u8>,
}

/// One record read from a file.
pub enum Row {
    Event(Box<Event>),
    Error(RowError),
}

/// The CSV sink of [`parse`]: each record becomes an event, at once.
struct EventRows<'f, F: FnMut(Row)>(&'f mut F);

impl<F: FnMut(Row)> CsvSink for EventRows<'_, F> {
    fn record(
        &mut self,
        columns: &Arc<CsvColumns>,
        record: &csv::StringRecord,
        shape: &RecordShape<'_>,
    ) -> Result<(), String> {
        let event = columns.event(record, None, shape)?;
        (self.0)(Row::Event(Box::new(event)));
        Ok(())
    }

    fn bad_row(&mut self, error: RowError) {
        (self.0)(Row::Error(error));
    }
}

/// What the feed's settings mean for turning fields into an event.
pub struct RecordShape<'a> {
    pub feed: &'a FeedConfig,
    pub timezone: &'a TimeZone,
    /// Event time for feeds without a `time_field`: when the file was picked up.
    pub default_time: Timestamp,
    /// The wall clock that the feed's `max_future` is measured from: a record
    /// timed further ahead is a bad row. `None` only where there is no clock
    /// to compare with (a rule test input without an arrival time).
    pub wall_clock: Option<Timestamp>,
}

/// Reads records from `text` in the feed's format, calling `on_row` for each.
/// For `xlsx` and `ods`, `text` is the file's raw bytes (not decoded): the
/// workbook is read whole by [`crate::feeds::sheet`].
pub fn parse<R: Read>(
    text: R,
    shape: &RecordShape<'_>,
    mut on_row: impl FnMut(Row),
) -> Result<(), FileError> {
    if shape.feed.format.is_sheet() {
        let sheet = crate::feeds::sheet::read(text, shape)?;
        return sheet.rows(shape, on_row);
    }
    let reader = open_text(text)?;
    // One shared name for all the events of the file.
    let feed_name = FeedName::from(shape.feed.name.as_str());
    match shape.feed.format {
        FeedFormat::Csv => parse_csv(reader, shape, &feed_name, &mut EventRows(&mut on_row)),
        FeedFormat::Jsonl => parse_jsonl(reader, shape, &feed_name, &mut on_row),
        FeedFormat::Json => parse_json(reader, shape, &feed_name, &mut on_row),
        // Handled above: a workbook is not text.
        FeedFormat::Xlsx | FeedFormat::Ods => Ok(()),
    }
}

/// Reads CSV text as [`parse`] does, but hands each well-formed record to
/// `sink` as its cells, not as an event: a caller that needs events for only
/// some rows (replay) builds just those, through [`CsvColumns`].
pub fn parse_csv_records<R: Read>(
    text: R,
    shape: &RecordShape<'_>,
    sink: &mut impl CsvSink,
) -> Result<(), FileError> {
    let reader = open_text(text)?;
    let feed_name = FeedName::from(shape.feed.name.as_str());
    parse_csv(reader, shape, &feed_name, sink)
}

/// A file's text after its head was read: the head, then the rest, buffered.
type OpenText<R> = BufReader<std::io::Chain<std::io::Cursor<Vec<u8>>, R>>;

/// The file's text behind a large buffer, once it is known not to be empty
/// or binary.
fn open_text<R: Read>(mut text: R) -> Result<OpenText<R>, FileError> {
    // Read a full head first: a decoding reader's first read may be only a few
    // bytes, and the delimiter sniff and binary check must see the same head
    // whether the file is read whole (daemon) or streamed (replay).
    let mut first = Vec::with_capacity(HEAD);
    (&mut text)
        .take(HEAD as u64)
        .read_to_end(&mut first)
        .map_err(|e| FileError(format!("cannot read the file: {e}")))?;
    let mut reader = BufReader::with_capacity(256 * 1024, std::io::Cursor::new(first).chain(text));
    let head = reader
        .fill_buf()
        .map_err(|e| FileError(format!("cannot read the file: {e}")))?;
    if head.is_empty() {
        return Err(FileError("the file is empty".into()));
    }
    if looks_binary(head) {
        return Err(FileError(
            "this looks like a binary file, not text (it contains NUL bytes); feeds read CSV or JSON text".into(),
        ));
    }
    Ok(reader)
}

fn looks_binary(head: &[u8]) -> bool {
    head.iter().take(HEAD).any(|&b| b == 0)
}

/// Picks the delimiter that splits the header line into the most fields.
fn sniff_delimiter(head: &[u8]) -> u8 {
    let line_end = head
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(head.len());
    let line = &head[..line_end];
    let count = |d: u8| {
        let mut in_quotes = false;
        line.iter()
            .filter(|&&b| {
                if b == b'"' {
                    in_quotes = !in_quotes;
                }
                !in_quotes && b == d
            })
            .count()
    };
    [b',', b';', b'\t', b'|']
        .into_iter()
        .max_by_key(|&d| (count(d), d == b','))
        .unwrap_or(b',')
}

fn parse_csv<R: Read, S: CsvSink + ?Sized>(
    mut reader: BufReader<R>,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    sink: &mut S,
) -> Result<(), FileError> {
    let delimiter = match shape.feed.delimiter {
        Some(d) => d,
        None => sniff_delimiter(reader.fill_buf().unwrap_or(&[])),
    };
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(true)
        .from_reader(Tape::new(reader));
    let headers = match csv.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return Err(FileError(format!(
                "cannot read the header line: {}",
                csv_error_reason(&e)
            )));
        }
    };
    let header_end = csv.position().byte();
    if csv.get_ref().ends_file(header_end)
        && let Some((quote_line, _)) = csv.get_mut().unclosed_quote(header_end, delimiter)
    {
        return Err(FileError(format!(
            "the header has an unclosed quote starting on line {quote_line}: its field runs to the end of the file, so the file has no rows; close the quote"
        )));
    }
    let header: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
    check_header(&header, shape.feed, delimiter)?;
    let columns = Arc::new(CsvColumns::new(feed_name, &header, shape.feed));
    let names = &columns.names;

    let mut record = csv::StringRecord::new();
    let mut row = 0u64;
    // A bad row's end is known only when the next row is read: the csv reader
    // leaves the LF of a CRLF to it.
    let mut open_error: Option<RowError> = None;
    loop {
        let result = csv.read_record(&mut record);
        let end = csv.position().byte();
        // Where the csv reader began this record: just past the previous one.
        let after_previous = record.position().map_or(end, |p| p.byte());
        let tape = csv.get_mut();
        if let Some(mut err) = open_error.take() {
            if let Some(span) = &mut err.span {
                span.end = tape.with_line_end(after_previous).max(span.start);
                err.verbatim = tape.text(span.clone()).to_vec();
            }
            sink.bad_row(err);
        }
        let start = tape.skip_line_ends(after_previous, end);
        tape.release(start);
        match result {
            Ok(false) => break,
            Ok(true) => {
                row += 1;
                if record.iter().all(|f| trim(f).is_empty()) {
                    continue; // blank lines between rows are not records
                }
                let unclosed = if tape.ends_file(end) {
                    tape.unclosed_quote(end, delimiter)
                } else {
                    None
                };
                let outcome = if let Some((quote_line, last_line)) = unclosed {
                    let line = tape.line_at_base();
                    // The csv reader takes everything from an unclosed quote to the
                    // end of the file as one field: the rows after it would vanish.
                    let lines = if last_line > line {
                        format!("lines {line} to {last_line} were")
                    } else {
                        format!("line {line} was")
                    };
                    let fields = if record.len() == names.len() {
                        String::new()
                    } else {
                        format!(
                            ", which has {} fields but the header has {}",
                            record.len(),
                            names.len()
                        )
                    };
                    Err(format!(
                        "unclosed quote starting on line {quote_line}: its field runs to the end of the file, so {lines} read as one row{fields}; close the quote and drop these rows again"
                    ))
                } else if let Some(field) = tape
                    .has_quote(start, end)
                    .then(|| text_after_closing_quote(tape.text(start..end), delimiter))
                    .flatten()
                {
                    let column = names
                        .get(field)
                        .filter(|n| !n.is_empty())
                        .map_or(String::new(), |n| format!(" (`{n}`)"));
                    Err(format!(
                        "field {}{column} has text after its closing quote, as in `\"b\"c`; it would be read as one value joined together, so the row is not read: a quote inside a quoted field is written twice (`\"\"`)",
                        field + 1
                    ))
                } else if record.len() != names.len() {
                    Err(format!(
                        "this row has {} fields but the header has {}; check for a missing or extra {}",
                        record.len(),
                        names.len(),
                        if delimiter == b'\t' {
                            "tab".to_string()
                        } else {
                            format!("`{}` or an unclosed quote", delimiter as char)
                        }
                    ))
                } else {
                    sink.record(&columns, &record, shape)
                };
                match outcome {
                    Ok(()) => {}
                    Err(reason) => {
                        open_error = Some(RowError {
                            row,
                            line: tape.line_at_base(),
                            reason,
                            span: Some(start..start),
                            verbatim: Vec::new(),
                        });
                    }
                }
            }
            Err(e) => {
                row += 1;
                // The csv reader reports invalid UTF-8 per record and carries on.
                open_error = Some(RowError {
                    row,
                    line: tape.line_at_base(),
                    reason: csv_error_reason(&e),
                    span: Some(start..start),
                    verbatim: Vec::new(),
                });
            }
        }
    }
    Ok(())
}

/// Once this much released text has piled up in a [`Tape`] (and outweighs what is
/// kept), it is dropped: each byte is moved at most about once.
const TAPE_COMPACT: usize = 64 * 1024;

/// The reader under the csv parser: it passes the text through unchanged and keeps
/// what the parser has not yet returned as a record, so a record's true start and
/// line, and whether it ends inside a quoted field, can be read from its raw text.
/// The csv reader's own positions will not do: a record's start includes the line
/// ends the reader skipped before it (the LF of a CRLF, blank lines), and its line
/// count sees only LF, not a lone CR. Nor does it say when the file ends inside
/// quotes: it takes the rest of the file as the last field.
struct Tape<R> {
    inner: R,
    /// The text from offset `base` on, after `dead` bytes already released.
    buf: Vec<u8>,
    dead: usize,
    base: u64,
    /// The line `counted` is on (1-based). Lines are counted only when a line
    /// number is asked for, or before released text is dropped: one memchr over
    /// many rows rather than one per row (only bad rows need their line).
    line: u64,
    /// How far (an offset, at most `base`) `line` has counted; never before
    /// the start of `buf`.
    counted: u64,
    /// The byte before `counted`, so a CRLF split by a count counts once.
    before: u8,
    /// No quote byte in `quote_free.0..quote_free.1` (offsets): a record inside
    /// that range cannot have text after a closing quote, so it is not scanned.
    /// Found with one memchr over the kept text, not one per row.
    quote_free: (u64, u64),
    /// The inner reader is exhausted: the text ends at [`Tape::end`].
    eof: bool,
}

impl<R: Read> Read for Tape<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.eof |= n == 0 && !out.is_empty();
        self.buf.extend_from_slice(&out[..n]);
        Ok(n)
    }
}

impl<R> Tape<R> {
    fn new(inner: R) -> Self {
        Tape {
            inner,
            buf: Vec::new(),
            dead: 0,
            base: 0,
            line: 1,
            counted: 0,
            before: 0,
            quote_free: (0, 0),
            eof: false,
        }
    }

    /// The offset just past the text read so far.
    fn end(&self) -> u64 {
        self.base + (self.buf.len() - self.dead) as u64
    }

    /// Whether a record the csv reader ended at `end` ends the file: only such a
    /// record can end inside a quoted field.
    fn ends_file(&self, end: u64) -> bool {
        self.eof && end == self.end()
    }

    /// If the record from the start of the kept text to `end` ends inside a quoted
    /// field: the line the quote opens on and the last line with text, for a reason
    /// a person can act on.
    fn unclosed_quote(&mut self, end: u64, delimiter: u8) -> Option<(u64, u64)> {
        let line = self.line_at_base();
        let raw = self.text(self.base..end);
        let quote = unclosed_quote(raw, delimiter)?;
        let quote_line = line + count_line_ends(&raw[..quote], self.before);
        let text_end = raw.len()
            - raw
                .iter()
                .rev()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
        let last_line = line + count_line_ends(&raw[..text_end], self.before);
        Some((quote_line, last_line))
    }

    /// The line the kept text starts on (1-based): the line ends released so
    /// far, counted now.
    fn line_at_base(&mut self) -> u64 {
        let from = (self.counted - (self.base - self.dead as u64)) as usize;
        let uncounted = &self.buf[from..self.dead];
        if let Some(&last) = uncounted.last() {
            self.line += count_line_ends(uncounted, self.before);
            self.before = last;
        }
        self.counted = self.base;
        self.line
    }

    /// Whether the kept text from `start` to `end` has a quote byte.
    fn has_quote(&mut self, start: u64, end: u64) -> bool {
        let (free_from, free_to) = self.quote_free;
        if free_from <= start && end <= free_to {
            return false;
        }
        // Scan on from where the last scan ended (or from `start`), to the end
        // of the kept text, so each byte is scanned about once.
        let from = if free_from <= start && start <= free_to {
            free_to
        } else {
            start
        };
        let to = self.end();
        let found = memchr::memchr(b'"', self.text(from..to)).map(|i| from + i as u64);
        let free_end = found.unwrap_or(to);
        self.quote_free = if from == free_to && free_from <= start {
            (free_from, free_end)
        } else {
            (from, free_end)
        };
        free_end < end
    }

    /// The kept text between two offsets (clipped to what is kept).
    fn text(&self, range: Range<u64>) -> &[u8] {
        let kept = &self.buf[self.dead..];
        let at = |offset: u64| (offset.saturating_sub(self.base) as usize).min(kept.len());
        &kept[at(range.start)..at(range.end).max(at(range.start))]
    }

    fn byte(&self, offset: u64) -> Option<u8> {
        self.text(offset..offset.saturating_add(1)).first().copied()
    }

    /// Where a record the csv reader began at `from` really starts: past the line
    /// ends it skipped first (only line ends: it skips nothing else).
    fn skip_line_ends(&self, from: u64, to: u64) -> u64 {
        let skipped = self
            .text(from..to)
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        from + skipped as u64
    }

    /// The end of a record the csv reader ended at `end`, with its whole line end:
    /// the reader stops after the CR of a CRLF and takes the LF with the next record.
    fn with_line_end(&self, end: u64) -> u64 {
        let crlf = end
            .checked_sub(1)
            .is_some_and(|cr| self.byte(cr) == Some(b'\r'))
            && self.byte(end) == Some(b'\n');
        end + u64::from(crlf)
    }

    /// Forgets the text before `to` (its lines are counted later, by [`Tape::line_at_base`]).
    fn release(&mut self, to: u64) {
        let n = (to.saturating_sub(self.base) as usize).min(self.buf.len() - self.dead);
        let released = &self.buf[self.dead..self.dead + n];
        if released.is_empty() {
            return;
        }
        self.dead += n;
        self.base += n as u64;
        if self.dead >= TAPE_COMPACT && self.dead >= self.buf.len() - self.dead {
            // The dropped text's lines are counted before it goes.
            self.line_at_base();
            self.buf.drain(..self.dead);
            self.dead = 0;
        }
    }
}

/// Where a quoted field opens in `raw` (one record, read to the end of the file) and
/// is never closed, by the csv reader's rules: a quote opens a field only at its
/// start, and `""` inside one is a quote.
fn unclosed_quote(raw: &[u8], delimiter: u8) -> Option<usize> {
    let mut open = None;
    let mut field_start = true;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if open.is_some() {
            if b == b'"' {
                if raw.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    open = None;
                    field_start = false;
                }
            }
        } else {
            if b == b'"' && field_start {
                open = Some(i);
            }
            field_start = b == delimiter || b == b'\r' || b == b'\n';
        }
        i += 1;
    }
    open
}

/// The field (0-based) of `raw` (one record) that has text after its closing
/// quote, like `"b"c`: the csv reader would silently join it to the quoted text
/// (`bc`), so such a row is a bad row instead. Rules as [`unclosed_quote`]'s.
fn text_after_closing_quote(raw: &[u8], delimiter: u8) -> Option<usize> {
    // Almost every record has no quote at all: one memchr, no byte loop.
    memchr::memchr(b'"', raw)?;
    let mut field = 0;
    let mut field_start = true;
    let mut in_quotes = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_quotes {
            if b == b'"' {
                if raw.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    in_quotes = false;
                    // Spaces before the delimiter are fine: values are trimmed, so
                    // `"B" ,` is `B`, as other readers take it. Anything else is not.
                    let mut j = i + 1;
                    while raw
                        .get(j)
                        .is_some_and(|&c| (c == b' ' || c == b'\t') && c != delimiter)
                    {
                        j += 1;
                    }
                    match raw.get(j) {
                        None => return None,
                        Some(&next) if next == delimiter || next == b'\r' || next == b'\n' => {}
                        Some(_) => return Some(field),
                    }
                }
            }
        } else {
            if b == b'"' && field_start {
                in_quotes = true;
            }
            if b == delimiter {
                field += 1;
            }
            field_start = b == delimiter || b == b'\r' || b == b'\n';
        }
        i += 1;
    }
    None
}

/// Line ends in `text` as the csv reader ends records: LF, CRLF (once), and CR
/// alone (old Mac exports). `before` is the byte before `text`.
fn count_line_ends(text: &[u8], before: u8) -> u64 {
    let Some(&first) = text.first() else {
        return 0;
    };
    // Every CR and LF, less the LF of each CRLF. Run once per row on the hot
    // path: memchr finds the few line ends a row has without a byte loop.
    let lfs = memchr::memchr_iter(b'\n', text).count();
    let crs = memchr::memchr_iter(b'\r', text).count();
    let crlfs = if crs == 0 {
        0
    } else {
        memchr::memmem::find_iter(text, b"\r\n").count()
    } + usize::from(before == b'\r' && first == b'\n');
    (lfs + crs - crlfs) as u64
}

fn csv_error_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid text", err.field() + 1),
        csv::ErrorKind::Io(e) => format!("read error: {e}"),
        _ => e.to_string(),
    }
}

fn check_header(names: &[String], feed: &FeedConfig, delimiter: u8) -> Result<(), FileError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if n.is_empty() {
            continue;
        }
        if !seen.insert(n.as_str()) {
            return Err(FileError(format!(
                "the header names the column `{n}` twice"
            )));
        }
    }
    for (label, field) in [
        ("id_field", &feed.id_field),
        ("time_field", &feed.time_field),
    ] {
        if let Some(field) = field
            && !names.iter().any(|n| n == field)
        {
            // Name a few columns, each cut short: a file without line ends is one huge "header".
            let shown: Vec<String> = names
                .iter()
                .take(8)
                .map(|n| {
                    if n.chars().count() > 40 {
                        format!("{}…", n.chars().take(40).collect::<String>())
                    } else {
                        n.clone()
                    }
                })
                .collect();
            return Err(FileError(format!(
                "the header has no `{field}` column (the feed's {label}); the header read with delimiter `{}` is: {}",
                if delimiter == b'\t' {
                    "tab".to_string()
                } else {
                    (delimiter as char).to_string()
                },
                shown.join(" | ")
            )));
        }
    }
    Ok(())
}

fn parse_jsonl<R: Read>(
    reader: BufReader<R>,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), FileError> {
    let mut offset = 0u64;
    let mut line_no = 0u64;
    let mut row = 0u64;
    let mut last_schema = None;
    let mut reader = reader;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| FileError(format!("cannot read the file: {e}")))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let span = offset..offset + n as u64;
        offset += n as u64;
        let error = |row: u64, reason: String| {
            Row::Error(RowError {
                row,
                line: line_no,
                reason,
                span: Some(span.clone()),
                verbatim: buf.clone(),
            })
        };
        let line = match std::str::from_utf8(&buf) {
            Ok(line) => line,
            Err(e) => {
                // Never replaced with U+FFFD: the row is set aside as it was written.
                row += 1;
                on_row(error(row, not_utf8(e.valid_up_to())));
                continue;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        row += 1;
        let error = |reason: String| error(row, reason);
        if let Ok(outcome) = event_from_json_text(trimmed, shape, feed_name, &mut last_schema) {
            match outcome {
                Ok(e) => on_row(Row::Event(Box::new(e))),
                Err(reason) => on_row(error(reason)),
            }
            continue;
        }
        // Not an object: parsed again only to say what it is.
        match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(serde_json::Value::Object(_)) => on_row(error(
                "a JSON object earlywarn cannot read as a record".to_string(),
            )),
            Ok(other) => on_row(error(format!(
                "expected a JSON object {{...}}, found {}",
                json_kind(&other)
            ))),
            Err(e) => on_row(error(format!(
                "invalid JSON at column {}: {}",
                e.column(),
                json_reason(&e)
            ))),
        }
    }
    Ok(())
}

fn parse_json<R: Read>(
    reader: BufReader<R>,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), FileError> {
    let mut last_schema = None;
    let mut elements = ArrayElements::new(reader);
    let mut row = 0u64;
    loop {
        let element = match elements.next_element() {
            Ok(Some(element)) => element,
            Ok(None) => return Ok(()),
            // Valid JSON of another shape (`{"a": 1}`, `3`) is not invalid JSON:
            // saying so would send its producer hunting for a syntax error.
            Err(e) if e.not_an_array => {
                return Err(FileError(format!(
                    "not a JSON array (line {} column {}): {}; a `json` feed is one array of records, and one object per line is `format = \"jsonl\"`",
                    e.line, e.column, e.message
                )));
            }
            Err(e) => {
                return Err(FileError(format!(
                    "invalid JSON at line {} column {}: {}",
                    e.line, e.column, e.message
                )));
            }
        };
        row += 1;
        let outcome = match std::str::from_utf8(&element.text) {
            Err(e) => Err(format!(
                "element {row} of the array: {}",
                not_utf8(e.valid_up_to())
            )),
            Ok(text) => match event_from_json_text(text, shape, feed_name, &mut last_schema) {
                Ok(outcome) => outcome,
                // Not an object: parsed again only to say what it is.
                Err(_) => match serde_json::from_slice(&element.text) {
                    Ok(serde_json::Value::Object(_)) => Err(format!(
                        "element {row} of the array is a JSON object earlywarn cannot read as a record"
                    )),
                    Ok(other) => Err(format!(
                        "element {row} of the array is {}, not an object",
                        json_kind(&other)
                    )),
                    Err(e) => {
                        // Well-formed JSON that is not a value serde_json can hold (a number
                        // out of range) is one bad element; anything else is a broken file.
                        if serde_json::from_slice::<&serde_json::value::RawValue>(&element.text)
                            .is_err()
                        {
                            let line = element.line + e.line().saturating_sub(1) as u64;
                            let column = if e.line() <= 1 {
                                element.column + (e.column() as u64).saturating_sub(1)
                            } else {
                                e.column() as u64
                            };
                            return Err(FileError(format!(
                                "invalid JSON at line {line} column {column}: {}",
                                json_reason(&e)
                            )));
                        }
                        Err(format!("element {row} of the array: {}", json_reason(&e)))
                    }
                },
            },
        };
        match outcome {
            Ok(e) => on_row(Row::Event(Box::new(e))),
            Err(reason) => {
                let span = element.start..element.start + element.text.len() as u64;
                on_row(Row::Error(RowError {
                    row,
                    line: element.line,
                    reason,
                    span: Some(span),
                    verbatim: element.text,
                }));
            }
        }
    }
}

/// Why a line or element with invalid UTF-8 is a bad row.
fn not_utf8(valid_up_to: usize) -> String {
    format!(
        "not valid UTF-8 (byte {} is not part of a character); the rest of the file is UTF-8, so only this row is set aside, as it was written",
        valid_up_to + 1
    )
}

fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    // serde_json appends " at line L column C"; the caller says where already.
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "true/false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Builds an event from a JSON object, applying the feed's settings (also used by rule tests).
pub fn event_from_json(
    map: &serde_json::Map<String, serde_json::Value>,
    shape: &RecordShape<'_>,
) -> Result<Event, String> {
    let feed_name = FeedName::from(shape.feed.name.as_str());
    event_from_json_in(map, shape, &feed_name, &mut None)
}

/// Builds an event from a JSON object. `last_schema` is the schema of the file's
/// previous object: objects with the same keys (the usual case) share it, as the
/// rows of a CSV file do, so the rules bind their fields once per file.
fn event_from_json_in(
    map: &serde_json::Map<String, serde_json::Value>,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    last_schema: &mut Option<Schema>,
) -> Result<Event, String> {
    let pairs = map
        .iter()
        .map(|(k, v)| {
            let raw = match v {
                // In the schema, like a CSV file's empty cell: an absent field.
                serde_json::Value::Null => RawValue::Text(""),
                serde_json::Value::String(s) => RawValue::Text(s),
                serde_json::Value::Number(n) => RawValue::Number(n.as_f64().unwrap_or(f64::NAN)),
                serde_json::Value::Bool(b) => RawValue::Owned(b.to_string()),
                serde_json::Value::Array(items) => RawValue::List(
                    items
                        .iter()
                        .filter_map(|i| match i {
                            serde_json::Value::String(s) => Some(Text::from(s.trim())),
                            serde_json::Value::Null => None,
                            other => Some(Text::from(other.to_string())),
                        })
                        .filter(|s| !s.is_empty())
                        .collect(),
                ),
                obj @ serde_json::Value::Object(_) => RawValue::Owned(obj.to_string()),
            };
            (k.as_str(), raw)
        })
        .collect();
    event_from_pairs(pairs, shape, feed_name, last_schema)
}

/// One JSON object of a file (a JSON-lines line, an array element) as an
/// event. Each value is read from the text as written, so a number keeps its
/// digits (`-123123123123123123123123123123`, an id like `0100`'s neighbour
/// `100000000000000000001`) instead of becoming the nearest 64-bit float, and
/// is compared as a number when a rule asks, as CSV numbers are. `Err` when
/// the text is not a JSON object: the caller says what it is instead.
fn event_from_json_text(
    text: &str,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    last_schema: &mut Option<Schema>,
) -> Result<Result<Event, String>, serde_json::Error> {
    use serde_json::value::RawValue as Json;
    let map: BTreeMap<String, &Json> = serde_json::from_str(text)?;
    let mut pairs = Vec::with_capacity(map.len());
    for (k, v) in &map {
        let written = v.get().trim();
        let raw = match written.as_bytes().first() {
            // null: in the schema, like a CSV file's empty cell; an absent field.
            None | Some(b'n') => RawValue::Text(""),
            Some(b'"') => match serde_json::from_str::<String>(written) {
                Ok(s) => RawValue::Owned(s.trim().to_string()),
                Err(e) => return Ok(Err(format!("field `{k}`: {}", json_reason(&e)))),
            },
            Some(b'[') => match serde_json::from_str::<Vec<&Json>>(written) {
                Ok(items) => RawValue::List(
                    items
                        .iter()
                        .filter_map(|i| {
                            let written = i.get().trim();
                            match written.as_bytes().first() {
                                Some(b'"') => serde_json::from_str::<String>(written)
                                    .ok()
                                    .map(|s| Text::from(s.trim())),
                                None | Some(b'n') => None,
                                Some(b'{' | b'[') => Some(Text::from(compact(written))),
                                Some(_) => Some(Text::from(written)),
                            }
                        })
                        .filter(|s| !s.is_empty())
                        .collect(),
                ),
                Err(e) => return Ok(Err(format!("field `{k}`: {}", json_reason(&e)))),
            },
            Some(b'{') => RawValue::Owned(compact(written)),
            // A number or true/false: the text as written.
            Some(_) => RawValue::Text(written),
        };
        pairs.push((k.as_str(), raw));
    }
    Ok(event_from_pairs(pairs, shape, feed_name, last_schema))
}

/// A nested JSON value as one line of compact JSON, as an email shows it.
fn compact(written: &str) -> String {
    serde_json::from_str::<serde_json::Value>(written)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| written.to_string())
}

/// Builds an event from a JSON object's fields (keys unique).
/// `last_schema` is the schema of the file's previous object: objects with
/// the same keys (the usual case) share it, as the rows of a CSV file do, so
/// the rules bind their fields once per file.
fn event_from_pairs(
    mut pairs: Vec<(&str, RawValue<'_>)>,
    shape: &RecordShape<'_>,
    feed_name: &FeedName,
    last_schema: &mut Option<Schema>,
) -> Result<Event, String> {
    // Sorted here rather than trusting the map's order (which a
    // `preserve_order` feature anywhere in the build would change).
    pairs.retain(|(k, _)| !k.is_empty());
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let schema = match last_schema {
        Some(known) if known.iter().map(|n| &**n).eq(pairs.iter().map(|(k, _)| *k)) => {
            known.clone()
        }
        _ => {
            let schema: Schema = pairs.iter().map(|(k, _)| FieldName::from(*k)).collect();
            *last_schema = Some(schema.clone());
            schema
        }
    };
    let raw = (0u32..).zip(pairs).map(|(index, (k, raw))| {
        let separator = shape.feed.list_fields.get(k).map(String::as_str);
        (index, raw, separator)
    });
    build_event(feed_name, &schema, raw, None, shape)
}

/// A field value before the feed's settings are applied.
pub(super) enum RawValue<'a> {
    Text(&'a str),
    Owned(String),
    Number(f64),
    List(Vec<Text>),
}

/// Applies the feed's settings (lists, id, time) to raw fields.
/// `raw` yields each field as its index in `schema` (ascending: the caller's
/// promise), its raw value and its list separator (if it is a list field).
/// `id_and_time`: the raw text of the id and time fields when the caller has
/// them at hand (a CSV row by column), which saves looking them up by name.
fn build_event<'a, 's>(
    feed_name: &FeedName,
    schema: &Schema,
    raw: impl Iterator<Item = (u32, RawValue<'a>, Option<&'s str>)>,
    id_and_time: Option<(Option<&str>, Option<&str>)>,
    shape: &RecordShape<'_>,
) -> Result<Event, String> {
    build_event_timed(feed_name, schema, raw, id_and_time, None, shape)
}

/// [`build_event`], with the event time already known when `known_time` is
/// given (a spreadsheet's date cell, checked by the caller): the time field
/// is then not parsed again.
pub(super) fn build_event_timed<'a, 's>(
    feed_name: &FeedName,
    schema: &Schema,
    raw: impl Iterator<Item = (u32, RawValue<'a>, Option<&'s str>)>,
    id_and_time: Option<(Option<&str>, Option<&str>)>,
    known_time: Option<Timestamp>,
    shape: &RecordShape<'_>,
) -> Result<Event, String> {
    let mut fields: Vec<(u32, Value)> = Vec::with_capacity(raw.size_hint().0);
    for (index, value, separator) in raw {
        let value = match (value, separator) {
            (RawValue::Text(s), separator) => match cell_value(s, separator) {
                Some(value) => value,
                None => continue,
            },
            (RawValue::Owned(s), Some(sep)) => Value::List(split_list(&s, sep)),
            (RawValue::Owned(s), None) => Value::Text(Text::from(s)),
            (RawValue::Number(n), _) if n.is_finite() => Value::Number(n),
            (RawValue::Number(_), _) => continue,
            (RawValue::List(items), _) => Value::List(items),
        };
        // An empty value is an absent field: `exists()` is false and nothing is shown.
        if value.is_empty() {
            continue;
        }
        fields.push((index, value));
    }
    let fields = Fields::from_schema(schema.clone(), fields);
    // The id and time as text: from the caller, or looked up (lists joined).
    let looked_up = |name: &str| {
        fields.get(name).filter(|v| !v.is_empty()).map(|v| match v {
            Value::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
            other => std::borrow::Cow::Owned(other.to_string()),
        })
    };
    let (given_id, given_time) = match id_and_time {
        Some((id, time)) => (id.map(Cow::Borrowed), time.map(Cow::Borrowed)),
        None => (
            shape.feed.id_field.as_deref().and_then(looked_up),
            shape.feed.time_field.as_deref().and_then(looked_up),
        ),
    };
    let (record_id, time) = record_id_and_time(given_id, given_time, known_time, shape)?;
    let record_id = record_id.map(Cow::into_owned);
    Ok(Event {
        feed: feed_name.clone(),
        record_id,
        time,
        fields,
    })
}

/// A cell's value under the feed's settings: a list when the column is a
/// list field, else its trimmed text; `None` for a cell that holds nothing
/// (an absent field).
pub(super) fn cell_value(cell: &str, separator: Option<&str>) -> Option<Value> {
    // An empty cell is an absent field: skip it before allocating anything.
    let trimmed = trim(cell);
    if trimmed.is_empty() {
        return None;
    }
    match separator {
        // Split as written: a separator may itself begin or end with a space.
        Some(sep) => Some(Value::List(split_list(cell, sep))).filter(|v| !v.is_empty()),
        None => Some(Value::Text(Text::from(trimmed))),
    }
}

/// The record id and the event time from the text of the record's id and
/// time fields (either may be absent or blank), checked as the feed's
/// settings say: an id and a time must be there when the feed names their
/// fields, and the time must read as one and not lie too far ahead.
/// `known_time` is a time already read and checked (a spreadsheet's date cell).
pub(super) fn record_id_and_time<'t>(
    given_id: Option<Cow<'t, str>>,
    given_time: Option<Cow<'t, str>>,
    known_time: Option<Timestamp>,
    shape: &RecordShape<'_>,
) -> Result<(Option<Cow<'t, str>>, Timestamp), String> {
    let feed = shape.feed;
    let trimmed = |text: Option<Cow<'t, str>>| {
        text.map(|t| match t {
            Cow::Borrowed(s) => Cow::Borrowed(trim(s)),
            Cow::Owned(s) => Cow::Owned(trim(&s).to_string()),
        })
        .filter(|t| !t.is_empty())
    };
    let record_id = match &feed.id_field {
        None => None,
        Some(f) => match trimmed(given_id) {
            Some(v) => Some(v),
            None => return Err(format!("`{f}` (the record id) is empty")),
        },
    };
    let time = match (&feed.time_field, known_time) {
        (_, Some(known)) => known,
        (None, None) => shape.default_time,
        (Some(f), None) => match trimmed(given_time) {
            None => return Err(format!("`{f}` (the event time) is empty")),
            Some(v) => {
                let time = parse_time(&v, feed.time_format.as_deref(), shape.timezone)
                    .map_err(|hint| format!("`{f}` value `{v}` is not a time; {hint}"))?;
                if let Some(reason) = too_far_ahead(time, shape.wall_clock, feed.max_future) {
                    return Err(format!("`{f}` value `{v}` {reason}"));
                }
                time
            }
        },
    };
    Ok((record_id, time))
}

fn split_list(s: &str, separator: &str) -> Vec<Text> {
    list_pieces(s, separator).map(Text::from).collect()
}

/// The elements of a list cell: split at `separator`, each trimmed, the empty
/// ones left out.
pub(super) fn list_pieces<'s>(s: &'s str, separator: &'s str) -> ListPieces<'s> {
    // A one-character separator (the usual `;`) splits faster as a char.
    let split = match separator.as_bytes() {
        // The usual case (`;`): found with memchr, faster than a char pattern.
        &[byte] if byte.is_ascii() => Split::ByByte {
            text: s,
            from: 0,
            ends: memchr::memchr_iter(byte, s.as_bytes()),
        },
        _ => Split::ByText(s.split(separator)),
    };
    ListPieces(split)
}

/// The iterator of [`list_pieces`].
pub(super) struct ListPieces<'s>(Split<'s>);

enum Split<'s> {
    /// At an ASCII byte, which is never inside a multi-byte character, so
    /// every piece starts and ends on a character boundary.
    ByByte {
        text: &'s str,
        /// Where the next piece starts; past the end once the last is given.
        from: usize,
        ends: memchr::Memchr<'s>,
    },
    ByText(std::str::Split<'s, &'s str>),
}

impl<'s> Iterator for ListPieces<'s> {
    type Item = &'s str;

    fn next(&mut self) -> Option<&'s str> {
        loop {
            let piece = match &mut self.0 {
                Split::ByByte { text, from, ends } => {
                    let start = *from;
                    if start > text.len() {
                        return None;
                    }
                    let end = ends.next().unwrap_or(text.len());
                    *from = end + 1;
                    text.get(start..end).unwrap_or("")
                }
                Split::ByText(split) => split.next()?,
            };
            let piece = trim(piece);
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    }
}

/// Why a record timed `time` is refused, if it is further ahead of
/// `wall_clock` than `max_future`: a record dated 2099 would otherwise hold a
/// window open, or push the real records of a cluster out of it.
pub(super) fn too_far_ahead(
    time: Timestamp,
    wall_clock: Option<Timestamp>,
    max_future: std::time::Duration,
) -> Option<String> {
    let wall_clock = wall_clock?;
    let ahead = time.duration_since(wall_clock);
    let limit = jiff::SignedDuration::try_from(max_future).unwrap_or(jiff::SignedDuration::MAX);
    if ahead <= limit {
        return None;
    }
    Some(format!(
        "is {} ahead of the clock ({}); records more than {} ahead are refused (the feed's `max_future`)",
        roughly(ahead.as_secs().unsigned_abs()),
        wall_clock.round(jiff::Unit::Second).unwrap_or(wall_clock),
        exactly(max_future.as_secs()),
    ))
}

/// How far ahead a record is: whole days from two days on, else hours and
/// minutes, so that "24h 5m" is not mistaken for a limit of one day.
fn roughly(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => plural(s / 86_400, "day"),
        s if s >= 3600 && s % 3600 < 60 => plural(s / 3600, "hour"),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

/// A configured length exactly, in the largest unit that divides it.
fn exactly(secs: u64) -> String {
    match secs {
        s if s > 0 && s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s > 0 && s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s > 0 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

fn plural(n: u64, unit: &str) -> String {
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Parses an event time. Times without an offset are local to `tz`.
pub fn parse_time(s: &str, format: Option<&str>, tz: &TimeZone) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Some(format) = format {
        let parsed = jiff::fmt::strtime::parse(format, s)
            .map_err(|_| format!("expected the feed's time_format `{format}`"))?;
        if parsed.offset().is_some() {
            return parsed.to_timestamp().map_err(|e| e.to_string());
        }
        let civil = parsed.to_datetime().map_err(|_| {
            format!("expected the feed's time_format `{format}` with a date and a time")
        })?;
        return tz.to_timestamp(civil).map_err(|e| e.to_string());
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    // RFC 3339 without an offset, or with a space for the `T`: local time.
    if let Ok(civil) = s.parse::<jiff::civil::DateTime>() {
        return tz.to_timestamp(civil).map_err(|e| e.to_string());
    }
    Err("expected RFC 3339, like 2025-11-04T11:30:00Z (or set the feed's time_format)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn feed(format: &str, extra: &str) -> FeedConfig {
        Config::parse(
            Path::new("/x/c.toml"),
            &format!(
                "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"drug_testing\"\ndir = \"in\"\nformat = \"{format}\"\nid_field = \"sample_id\"\ntime_field = \"tested_at\"\nlist_fields = {{ substances = \";\" }}\n{extra}\n"
            ),
        )
        .unwrap()
        .feeds
        .remove(0)
    }

    /// JSON lines into the elements of an array.
    trait ReplaceLines {
        fn replace_lines(&self) -> Vec<u8>;
    }

    impl ReplaceLines for [u8] {
        fn replace_lines(&self) -> Vec<u8> {
            let lines: Vec<&[u8]> = self
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            lines.join(&b",\n"[..])
        }
    }

    fn read(text: &str, feed: &FeedConfig) -> Result<(Vec<Event>, Vec<RowError>), FileError> {
        read_bytes(text.as_bytes(), feed)
    }

    fn read_bytes(
        text: &[u8],
        feed: &FeedConfig,
    ) -> Result<(Vec<Event>, Vec<RowError>), FileError> {
        let tz = TimeZone::get("Europe/London").unwrap();
        let shape = RecordShape {
            feed,
            timezone: &tz,
            default_time: Timestamp::UNIX_EPOCH,
            wall_clock: None,
        };
        let mut events = Vec::new();
        let mut errors = Vec::new();
        parse(text, &shape, |row| match row {
            Row::Event(e) => events.push(*e),
            Row::Error(e) => errors.push(e),
        })?;
        Ok((events, errors))
    }

    #[test]
    fn list_pieces_are_the_trimmed_non_empty_pieces_of_a_split() {
        let texts = [
            "",
            ";",
            ";;",
            "a",
            "a;b",
            " a ; b ;",
            ";a;;b;",
            "naïve;é;;ü ",
            " ; ",
            "a + b + ",
            "x,, y ,z",
            "ǅ|İ||ß",
            "a\u{1f}b",
        ];
        for separator in [";", ",", "|", " + ", "\u{1f}", "é", "; "] {
            for text in texts {
                let want: Vec<&str> = text
                    .split(separator)
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect();
                let got: Vec<&str> = list_pieces(text, separator).collect();
                assert_eq!(got, want, "{text:?} split at {separator:?}");
            }
        }
    }

    #[test]
    fn csv_with_crlf_quoted_newlines_and_lists() {
        let feed = feed("csv", "");
        let text = "sample_id,tested_at,substances,notes\r\nS1,2025-11-04T11:30:00Z,\"Cocaine; Levamisole\",\"line one\r\nline two\"\r\nS2,2025-07-01 09:00,heroin,\r\n";
        let (events, errors) = read(text, &feed).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].record_id.as_deref(), Some("S1"));
        assert_eq!(
            events[0].fields["substances"],
            Value::List(vec!["Cocaine".into(), "Levamisole".into()])
        );
        assert_eq!(events[0].text("notes"), "line one\r\nline two");
        // Local summer time: 09:00 BST is 08:00 UTC.
        assert_eq!(events[1].time.to_string(), "2025-07-01T08:00:00Z");
    }

    #[test]
    fn bad_rows_are_reported_with_row_line_and_span_and_good_rows_kept() {
        let feed = feed("csv", "");
        let text = "sample_id,tested_at,substances\nS1,2025-11-04T11:30:00Z,x\nS2,yesterday,x\nS3,2025-11-04T11:30:00Z\n,2025-11-04T11:30:00Z,x\nS5,2025-11-04T11:30:00Z,x\n";
        let (events, errors) = read(text, &feed).unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| e.record_id.clone().unwrap())
                .collect::<Vec<_>>(),
            ["S1", "S5"]
        );
        assert_eq!(errors.len(), 3);
        assert_eq!((errors[0].row, errors[0].line), (2, 3));
        assert!(
            errors[0]
                .reason
                .contains("`tested_at` value `yesterday` is not a time"),
            "{}",
            errors[0].reason
        );
        let span = errors[0].span.clone().unwrap();
        assert_eq!(
            &text[span.start as usize..span.end as usize],
            "S2,yesterday,x\n"
        );
        assert!(
            errors[1].reason.contains("2 fields but the header has 3"),
            "{}",
            errors[1].reason
        );
        assert!(
            errors[2].reason.contains("record id) is empty"),
            "{}",
            errors[2].reason
        );
    }

    #[test]
    fn bad_rows_have_their_true_line_and_span_whatever_the_line_ends() {
        let feed = feed("csv", "");
        let good = "S1,2025-11-04T11:30:00Z,x";
        let bad = "S2,yesterday,x";
        // (text, the bad row's line, its span's text)
        let cases = [
            // CRLF (Excel): the csv reader leaves each LF to the next record.
            (
                format!(
                    "sample_id,tested_at,substances\r\n{good}\r\n{bad}\r\nS3,2025-11-04T11:30:00Z,y\r\n"
                ),
                3,
                format!("{bad}\r\n"),
            ),
            // CR alone (old Mac exports).
            (
                format!(
                    "sample_id,tested_at,substances\r{good}\r{bad}\rS3,2025-11-04T11:30:00Z,y\r"
                ),
                3,
                format!("{bad}\r"),
            ),
            // Blank lines before the bad row are neither its line nor in its span.
            (
                format!("sample_id,tested_at,substances\n\n{good}\n\r\n\n{bad}\n\n"),
                6,
                format!("{bad}\n"),
            ),
            // A quoted newline counts as a line; the last row needs no line end.
            (
                format!(
                    "sample_id,tested_at,substances\r\nS1,2025-11-04T11:30:00Z,\"a\r\nb\"\r\n{bad}"
                ),
                4,
                bad.to_string(),
            ),
        ];
        for (text, line, kept) in cases {
            let (events, errors) = read(&text, &feed).unwrap();
            assert_eq!(events.len(), text.matches("2025").count(), "{text:?}");
            assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
            assert_eq!((errors[0].row, errors[0].line), (2, line), "{text:?}");
            let span = errors[0].span.clone().unwrap();
            assert_eq!(
                &text[span.start as usize..span.end as usize],
                kept,
                "{text:?}"
            );
        }
    }

    #[test]
    fn rows_swallowed_by_an_unclosed_quote_are_one_bad_row_to_the_end() {
        let feed = feed("csv", "");
        let header = "sample_id,tested_at,substances,notes\n";
        let good = "S1,2025-11-04T11:30:00Z,x,\"a\nb\"\n";
        // In the last column every field count is right: only the quote tells.
        let swallowed = "S2,2025-11-04T11:30:00Z,x,\"strong, then\nS3,2025-11-04T11:30:00Z,y,\nS4,2025-11-04T11:30:00Z,z,\n";
        let text = format!("{header}{good}{swallowed}");
        let (events, errors) = read(&text, &feed).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].row, errors[0].line), (2, 4));
        assert!(
            errors[0]
                .reason
                .starts_with("unclosed quote starting on line 4: its field runs to the end of the file, so lines 4 to 6 were read as one row; close the quote"),
            "{}",
            errors[0].reason
        );
        let span = errors[0].span.clone().unwrap();
        assert_eq!(&text[span.start as usize..span.end as usize], swallowed);

        // Elsewhere, the field count is wrong too: both are said.
        let text =
            format!("{header}S2,2025-11-04T11:30:00Z,\"x,no end\r\nS3,2025-11-04T11:30:00Z,y,");
        let (events, errors) = read(&text, &feed).unwrap();
        assert!(events.is_empty());
        assert!(
            errors[0].reason.contains("line 2: its field")
                && errors[0].reason.contains(
                    "lines 2 to 3 were read as one row, which has 3 fields but the header has 4"
                ),
            "{}",
            errors[0].reason
        );

        // Closed quotes at the end of the file, and quotes that open nothing, are fine.
        for last in [
            "S2,2025-11-04T11:30:00Z,x,\"a\nb\"",
            "S2,2025-11-04T11:30:00Z,x,\"he said \"\"hi\"\"\"",
            "S2,2025-11-04T11:30:00Z,x,5\" tall",
        ] {
            let (events, errors) = read(&format!("{header}{last}"), &feed).unwrap();
            assert_eq!((events.len(), errors.len()), (1, 0), "{last}: {errors:?}");
        }
        // A quote closed before the field ends is not fine: the csv reader would
        // join `a` and `b"` into one value (issue 16).
        let (events, errors) = read(
            &format!("{header}S2,2025-11-04T11:30:00Z,x,\"a\"b\""),
            &feed,
        )
        .unwrap();
        assert!(events.is_empty());
        assert!(
            errors[0]
                .reason
                .contains("has text after its closing quote"),
            "{}",
            errors[0].reason
        );
        let (_, errors) = read(
            &format!("{header}S2,2025-11-04T11:30:00Z,x,\"he said \"\"hi\"\""),
            &feed,
        )
        .unwrap();
        assert!(
            errors[0].reason.contains("line 2 was read as one row"),
            "{errors:?}"
        );

        // In the header, nothing of the file is left.
        let err = read(
            "sample_id,tested_at,\"substances\nS1,2025-11-04T11:30:00Z,x\n",
            &feed,
        )
        .unwrap_err();
        assert!(
            err.0
                .starts_with("the header has an unclosed quote starting on line 1"),
            "{err}"
        );
    }

    #[test]
    fn semicolon_exports_are_sniffed() {
        let feed = feed("csv", "");
        let (events, errors) = read(
            "sample_id;tested_at;substances\nS1;2025-11-04T11:30:00Z;a\n",
            &feed,
        )
        .unwrap();
        assert!(errors.is_empty());
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn whole_file_problems() {
        let feed = feed("csv", "");
        assert!(read("", &feed).unwrap_err().0.contains("empty"));
        assert!(read("a\0b", &feed).unwrap_err().0.contains("binary"));
        assert!(
            read("id,when\n1,2\n", &feed)
                .unwrap_err()
                .0
                .contains("no `sample_id` column")
        );
        let json = self::feed("json", "");
        // Valid JSON that is not an array is refused for its shape, never called invalid.
        for text in ["{\"a\": 1}", "3", "\"x\"", "null"] {
            let reason = read(text, &json).unwrap_err().0;
            assert!(reason.contains("expected a JSON array"), "{reason}");
            assert!(
                reason.starts_with("not a JSON array (line 1 column 1)"),
                "{reason}"
            );
            assert!(!reason.contains("invalid JSON"), "{reason}");
        }
        assert!(read("[1, ", &json).unwrap_err().0.contains("invalid JSON"));
    }

    #[test]
    fn json_numbers_keep_the_digits_they_were_written_with() {
        let line = "{\"sample_id\": 100000000000000000001, \"tested_at\": \"2025-11-04T11:30:00Z\", \"amount\": -123123123123123123123123123123, \"ok\": true, \"ids\": [1e400, \" a \", null], \"more\": {\"b\": 1,  \"a\": [2]}}";
        for (format, text) in [("jsonl", line.to_string()), ("json", format!("[{line}]"))] {
            let (events, errors) = read(&text, &feed(format, "")).unwrap();
            assert!(errors.is_empty(), "{format}: {errors:?}");
            let e = &events[0];
            assert_eq!(
                e.record_id.as_deref(),
                Some("100000000000000000001"),
                "{format}"
            );
            assert_eq!(
                e.fields["amount"].to_string(),
                "-123123123123123123123123123123",
                "{format}"
            );
            assert!(e.fields["amount"].as_number().unwrap() < -1e29);
            assert_eq!(e.fields["ok"].to_string(), "true");
            assert_eq!(
                e.fields["ids"],
                Value::List(vec!["1e400".into(), "a".into()])
            );
            assert_eq!(e.fields["more"].to_string(), "{\"a\":[2],\"b\":1}");
        }
    }

    #[test]
    fn json_objects_with_the_same_keys_share_a_schema() {
        let feed = feed("jsonl", "");
        let text = concat!(
            "{\"sample_id\": \"S1\", \"tested_at\": \"2025-11-04T11:30:00Z\", \"notes\": \"x\"}\n",
            "{\"tested_at\": \"2025-11-04T11:31:00Z\", \"notes\": null, \"sample_id\": \"S2\"}\n",
            "{\"sample_id\": \"S3\", \"tested_at\": \"2025-11-04T11:32:00Z\"}\n",
        );
        let (events, errors) = read(text, &feed).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let schemas: Vec<_> = events.iter().map(|e| e.fields.schema().clone()).collect();
        assert!(
            std::sync::Arc::ptr_eq(&schemas[0], &schemas[1]),
            "same keys, any order"
        );
        assert!(
            !std::sync::Arc::ptr_eq(&schemas[1], &schemas[2]),
            "other keys"
        );
        assert!(events[1].fields.get("notes").is_none(), "null is absent");
        assert_eq!(events[1].record_id.as_deref(), Some("S2"));
        assert_eq!(events[2].fields.len(), 2);
    }

    #[test]
    fn text_after_a_closing_quote_is_a_bad_row_not_a_joined_value() {
        let feed = feed("csv", "");
        let text = "sample_id,tested_at,notes\nS1,2025-11-04T11:30:00Z,\"b\"c\nS2,2025-11-04T11:30:00Z,\"say \"\"hi\"\"\",\nS3,2025-11-04T11:30:00Z,a\"b\"\n";
        let (events, errors) = read(text, &feed).unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((errors[0].row, errors[0].line), (1, 2));
        assert!(
            errors[0]
                .reason
                .starts_with("field 3 (`notes`) has text after its closing quote"),
            "{}",
            errors[0].reason
        );
        // A doubled quote inside a quoted field is a quote; a quote inside an
        // unquoted field is kept as written.
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].fields["notes"], Value::Text("a\"b\"".into()));
        assert_eq!(errors[1].row, 2, "S2 has 4 fields: {errors:?}");
        assert_eq!(text_after_closing_quote(b"\"x\",\"y\"\r\n", b','), None);
        assert_eq!(text_after_closing_quote(b"a;\"x\" ;b", b';'), None);
        assert_eq!(text_after_closing_quote(b"a;\"x\" y;b", b';'), Some(1));
        assert_eq!(text_after_closing_quote(b"\"x\" \t\r\n", b','), None);
        assert_eq!(text_after_closing_quote(b"a,b", b','), None);
    }

    #[test]
    fn a_stray_byte_in_utf8_sets_aside_its_row_and_leaves_the_others_as_written() {
        let notes = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .map(|e| match &e.fields["notes"] {
                    Value::Text(t) => t.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        let csv = b"sample_id,tested_at,notes\nS1,2025-11-04T11:30:00Z,caf\xC3\xA9\nS2,2025-11-04T11:30:00Z,bad \xFF byte\nS3,2025-11-04T11:30:00Z,na\xC3\xAFve\n";
        let jsonl = b"{\"sample_id\": \"S1\", \"tested_at\": \"2025-11-04T11:30:00Z\", \"notes\": \"caf\xC3\xA9\"}\n{\"sample_id\": \"S2\", \"tested_at\": \"2025-11-04T11:30:00Z\", \"notes\": \"bad \xFF\"}\n{\"sample_id\": \"S3\", \"tested_at\": \"2025-11-04T11:30:00Z\", \"notes\": \"na\xC3\xAFve\"}\n";
        let json = [b"[".as_slice(), &jsonl[..].replace_lines(), b"]"].concat();
        for (format, text) in [
            ("csv", &csv[..]),
            ("jsonl", &jsonl[..]),
            ("json", &json[..]),
        ] {
            let (events, errors) = read_bytes(text, &feed(format, "")).unwrap();
            assert_eq!(notes(&events), ["café", "naïve"], "{format}");
            assert_eq!(errors.len(), 1, "{format}: {errors:?}");
            assert_eq!(errors[0].row, 2, "{format}");
            assert!(
                errors[0].verbatim.windows(1).any(|b| b == [0xFF]),
                "{format}: kept as written: {:?}",
                errors[0].verbatim
            );
        }
    }

    #[test]
    fn json_lines_and_arrays() {
        let feed = feed("jsonl", "");
        let text = "{\"sample_id\": \"S1\", \"tested_at\": \"2025-11-04T11:30:00Z\", \"substances\": [\"a\", \"b\"], \"amount\": 12.5}\nnot json\n\n[1]\n";
        let (events, errors) = read(text, &feed).unwrap();
        assert_eq!(events.len(), 1);
        // A JSON number keeps its text, and reads as a number in a rule.
        assert_eq!(events[0].fields["amount"], Value::Text("12.5".into()));
        assert_eq!(events[0].fields["amount"].as_number(), Some(12.5));
        assert_eq!(
            events[0].fields["substances"],
            Value::List(vec!["a".into(), "b".into()])
        );
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].row, errors[0].line), (2, 2));
        assert!(
            errors[0].reason.starts_with("invalid JSON at column "),
            "{}",
            errors[0].reason
        );
        assert_eq!(errors[1].line, 4);

        let feed = self::feed("json", "");
        let text = "[{\"sample_id\": \"S1\", \"tested_at\": \"2025-11-04T11:30:00Z\"}, 3,\r\n\n {\r\n  \"sample_id\": \"\"\r\n }\n, 1e400]";
        let (events, errors) = read(text, &feed).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(errors.len(), 3);
        assert!(errors[0].reason.contains("element 2"));
        // Bad elements are kept as written, with the line they start on.
        let kept = |e: &RowError| {
            let span = e.span.clone().unwrap();
            &text[span.start as usize..span.end as usize]
        };
        assert_eq!(
            (errors[0].row, errors[0].line, kept(&errors[0])),
            (2, 1, "3")
        );
        assert_eq!(
            (errors[1].row, errors[1].line, kept(&errors[1])),
            (3, 3, "{\r\n  \"sample_id\": \"\"\r\n }")
        );
        assert_eq!(
            (errors[2].row, errors[2].line, kept(&errors[2])),
            (4, 6, "1e400")
        );
        assert!(
            errors[2]
                .reason
                .starts_with("element 4 of the array: number out of range"),
            "{}",
            errors[2].reason
        );
    }

    #[test]
    fn custom_time_formats_are_local_unless_they_carry_an_offset() {
        let tz = TimeZone::get("Europe/London").unwrap();
        assert_eq!(
            parse_time("04/07/2025 10:00", Some("%d/%m/%Y %H:%M"), &tz)
                .unwrap()
                .to_string(),
            "2025-07-04T09:00:00Z"
        );
        assert!(parse_time("2025-07-04", Some("%d/%m/%Y %H:%M"), &tz).is_err());
        assert_eq!(
            parse_time("2025-11-04T11:30:00+01:00", None, &tz)
                .unwrap()
                .to_string(),
            "2025-11-04T10:30:00Z"
        );
    }

    #[test]
    fn a_record_timed_beyond_max_future_is_a_bad_row_with_the_time_the_limit_and_the_key() {
        let feed = feed("csv", "max_future = \"2h\"");
        let tz = TimeZone::get("Europe/London").unwrap();
        let shape = RecordShape {
            feed: &feed,
            timezone: &tz,
            default_time: Timestamp::UNIX_EPOCH,
            wall_clock: Some("2025-11-04T12:00:00Z".parse().unwrap()),
        };
        let text = "sample_id,tested_at\nS1,2099-01-01T00:00:00Z\nS2,2025-11-04T13:59:00Z\nS3,2025-11-04T14:00:01Z\nS4,2020-01-01T00:00:00Z\n";
        let mut events = Vec::new();
        let mut errors = Vec::new();
        parse(text.as_bytes(), &shape, |row| match row {
            Row::Event(e) => events.push(e.record_id.clone().unwrap()),
            Row::Error(e) => errors.push((e.row, e.reason)),
        })
        .unwrap();
        assert_eq!(
            events,
            ["S2", "S4"],
            "within the limit, and the past, are fine"
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].0, 1);
        assert_eq!(
            errors[0].1,
            "`tested_at` value `2099-01-01T00:00:00Z` is 26720 days ahead of the clock (2025-11-04T12:00:00Z); records more than 2 hours ahead are refused (the feed's `max_future`)"
        );
        assert!(errors[1].1.contains("is 2 hours ahead"), "{}", errors[1].1);
        // The default limit is a day.
        assert_eq!(self::feed("csv", "").max_future.as_secs(), 86_400);
    }
}
