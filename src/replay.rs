//! `earlywarn replay`: the pipeline offline, on files, with a simulated clock.
//!
//! Streams each file through the same parser, engine, routing and rendering
//! as the daemon, but keeps state in memory, sends nothing and writes nothing.
//! The clock follows the event times: each file is a batch of the batch step
//! ([`crate::pipeline`], with a [`MemoryLedger`]), its events tick the clock
//! as their times pass, and it finishes at the latest event time seen so far
//! (the tick rule). Memory stays bounded by the rule state and the
//! alerts, not by the file size.

use crate::alerts::{Audience, first_audience};
use crate::config::FeedFormat;
use crate::config::{Config, FeedConfig};
use crate::event::{Event, Value};
use crate::feeds::columns::{Cells, CsvColumns, CsvSink};
use crate::feeds::decode::{TextEncoding, decoding_reader, detect_file};
use crate::feeds::intake::format_for;
use crate::feeds::parse::{RecordShape, Row, RowError, parse, parse_csv_records};
use crate::feeds::record_fingerprint;
use crate::pipeline::{MemoryLedger, Pipeline, Raised, SeenRecords, infallible};
use crate::rules::RuleSet;
use crate::rules::condition::EvalScratch;
use crate::rules::engine::{Engine, EngineState};
use crate::rules::record::{Record, SlotValues};
use jiff::Timestamp;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An alert as replay reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayedAlert {
    pub id: String,
    pub rule: String,
    pub severity: String,
    pub district: Option<String>,
    pub group: std::collections::BTreeMap<String, String>,
    /// Partner ids the alert would go to (reviewers for a reviewed rule).
    pub recipients: Vec<String>,
    pub review: bool,
    pub subject: String,
    pub count: u64,
    pub events: Vec<serde_json::Value>,
    pub file: String,
    /// The other rules of its merge group that found the same records.
    pub reasons: Vec<ReplayedReason>,
}

/// A merged alert's other reason, as replay reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayedReason {
    pub rule: String,
    pub name: String,
    pub severity: String,
    /// The values that made its `when` true (a first-seen rule's value).
    pub found: Vec<String>,
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplaySummary {
    pub files: u64,
    pub rows: u64,
    pub events: u64,
    pub duplicates: u64,
    pub rejected_rows: u64,
    pub rejected_files: u64,
    pub alerts: u64,
    /// Deadlines still open when the replay ended: (rule id, key, due).
    pub open_deadlines: Vec<(String, String, Timestamp)>,
    /// The simulated clock at the end: the latest event time seen.
    pub clock: Option<Timestamp>,
}

/// Rows handed from the reading thread to the rules at a time.
const CHUNK: usize = 1024;

/// Chunks the reading thread may run ahead of the rules by: enough to ride out
/// a slow row on either side, few enough that memory stays a few tens of
/// megabytes however long the rows (each chunk holds at most [`CHUNK_TEXT`]).
/// More than a handful, so that a chunk is refilled long after the rules
/// thread read it, when its memory is no longer in that core's cache.
const CHUNKS_AHEAD: usize = 32;

/// Replays `files` as if dropped into `feed`, calling `on_alert` for each alert
/// and `on_problem` for each file or row that could not be read.
///
/// `wall_clock` is the real time now, not the simulated clock: a feed's
/// `max_future` is measured from it, so a historical file replays whole and a
/// record dated 2099 is a bad row here as it is in the daemon.
pub fn replay(
    config: &Config,
    rules: Arc<RuleSet>,
    feed: &FeedConfig,
    files: &[PathBuf],
    wall_clock: Timestamp,
    mut on_alert: impl FnMut(ReplayedAlert),
    mut on_problem: impl FnMut(&Path, Option<&RowError>, &str),
) -> Result<ReplaySummary, ReplayError> {
    // The fields the rules read, by slot: what a CSV row gives them (CellRow).
    let slots = rules.field_slots.clone();
    let mut engine = Engine::new(rules, EngineState::default());
    // Records are deduplicated on the rules thread: the reading thread is the
    // busier one, and the set's random lookups are costly wherever they run.
    let mut seen = SeenRecords::with_capacity(1 << 16);
    let mut ledger = MemoryLedger::default();
    let mut clock = Timestamp::UNIX_EPOCH;
    // Only this feed is replayed: the others are not silent, just not in this replay.
    let other_feeds: Vec<String> = config
        .feeds
        .iter()
        .filter(|f| f.name != feed.name)
        .map(|f| f.name.clone())
        .collect();
    let pipeline = Pipeline::new(config)
        .keeping_awake(other_feeds)
        .rendering_subjects_only();
    let mut summary = ReplaySummary::default();
    for path in files {
        summary.files += 1;
        let io = |source| ReplayError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let encoding = detect_file(&mut file).map_err(io)?;
        if encoding == TextEncoding::Windows1252 && !format_for(path, feed).is_sheet() {
            tracing::info!(file = %path.display(), "Not valid UTF-8; decoded as Windows-1252");
        }
        // A progress bar on stderr for long files; indicatif draws nothing when
        // stderr is not a terminal, so scripts and logs stay clean.
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = if size >= 4 * 1024 * 1024 {
            indicatif::ProgressBar::new(size)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let mut shaped = feed.clone();
        shaped.format = format_for(path, feed);
        // Rows are rarely shorter than this: the estimate errs towards more room.
        const SHORT_ROW_BYTES: u64 = 128;
        if !shaped.format.is_sheet() {
            seen.reserve(usize::try_from(size / SHORT_ROW_BYTES).unwrap_or(0));
        }
        // A workbook is binary: its bytes go to the parser as they are.
        let reader: Box<dyn std::io::Read + Send> = if shaped.format.is_sheet() {
            Box::new(bar.wrap_read(file))
        } else {
            decoding_reader(bar.wrap_read(file), encoding)
        };
        let file_time = clock;
        let mut latest = clock;
        // Its arrival is not known before its events are read: they move the clock.
        let mut step = infallible(pipeline.begin(&mut engine, &mut ledger, &feed.name, None));
        let shape = RecordShape {
            feed: &shaped,
            timezone: &config.daemon.timezone,
            default_time: file_time,
            wall_clock: Some(wall_clock),
        };
        // Two stages on two cores: this thread's helper reads, decodes and parses
        // rows, checks them and fingerprints them; this thread drops repeats and
        // runs the rules. A CSV row crosses as its cells, not as an event: the
        // rules read only the fields they test, and the row becomes an event only
        // if a rule keeps it (most rows match no rule). The rules hand each chunk
        // back once its rows are evaluated, and the reading thread refills it: the
        // buffers are reused, and whatever a chunk owns is freed by the thread
        // that made it, which for the allocator is the cheap case. Chunks come back
        // at most as fast as they go out, so no more than CHUNKS_AHEAD + 2 exist.
        let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_AHEAD);
        let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Chunk>();
        let parsed = std::thread::scope(|scope| {
            let shape = &shape;
            let reader_thread = scope.spawn(move || {
                let mut filler = ChunkFiller {
                    chunk: Chunk::default(),
                    full: chunks_tx,
                    spent: spent_rx,
                };
                let result = if shaped.format == FeedFormat::Csv {
                    parse_csv_records(reader, shape, &mut filler)
                } else {
                    parse(reader, shape, |row| filler.push_row(row))
                };
                filler.flush();
                result
            });
            let mut values = SlotValues::new(&slots);
            let mut slot_columns = SlotColumns::default();
            // Whether a record was seen before (counted), by its fingerprint.
            let mut repeat = |fingerprint: &Option<[u8; 16]>, summary: &mut ReplaySummary| {
                let repeat = fingerprint.is_some_and(|f| !seen.first_time(&f));
                summary.duplicates += u64::from(repeat);
                repeat
            };
            for chunk in chunks_rx {
                let mut cell_rows = 0usize;
                for entry in &chunk.entries {
                    summary.rows += 1;
                    match entry {
                        Entry::Error(e) => {
                            summary.rejected_rows += 1;
                            on_problem(path, Some(e), &e.reason);
                        }
                        Entry::Event { event, fingerprint } => {
                            if repeat(fingerprint, &mut summary) {
                                continue;
                            }
                            summary.events += 1;
                            latest = latest.max(event.time);
                            infallible(step.observe_new(&**event));
                        }
                        Entry::Cells { time, fingerprint } => {
                            let row = cell_rows;
                            cell_rows += 1;
                            if repeat(fingerprint, &mut summary) {
                                continue;
                            }
                            // A chunk with cells has their columns (ChunkFiller::record).
                            let Some(columns) = &chunk.columns else {
                                continue;
                            };
                            let cells = chunk.cells(columns, row);
                            slot_columns.fill(columns, &cells, &mut values);
                            summary.events += 1;
                            latest = latest.max(*time);
                            let row = CellRow {
                                columns,
                                cells,
                                time: *time,
                                values: &values,
                                shape,
                                whole: std::cell::OnceCell::new(),
                            };
                            infallible(step.observe_new(&row));
                        }
                    }
                }
                // Once the reading thread is done it no longer takes chunks back:
                // the last few are dropped here.
                let _ = spent_tx.send(chunk);
            }
            reader_thread.join().unwrap_or_else(|_| {
                Err(crate::feeds::parse::FileError(
                    "the reading thread failed".into(),
                ))
            })
        });
        bar.finish_and_clear();
        if let Err(e) = parsed {
            summary.rejected_files += 1;
            on_problem(path, None, &e.0);
            continue;
        }
        clock = latest;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let outcome = infallible(step.finish(clock, &path.to_string_lossy(), &name));
        for raised in outcome.raised {
            summary.alerts += 1;
            on_alert(describe(raised, &name));
        }
    }
    summary.clock = (clock != Timestamp::UNIX_EPOCH).then_some(clock);
    summary.open_deadlines = engine
        .state()
        .open_deadlines()
        .into_iter()
        .map(|(k, d)| (k.rule_id.clone(), d.key.clone(), d.due))
        .collect();
    Ok(summary)
}

/// Rows on their way from the reading thread to the rules.
#[derive(Default)]
struct Chunk {
    /// The columns of the CSV rows held as cells.
    columns: Option<Arc<CsvColumns>>,
    /// The cells of those rows, one after another.
    text: String,
    /// Where each cell ends in `text`: the columns' number per row.
    ends: Vec<u32>,
    entries: Vec<Entry>,
}

/// One row of a [`Chunk`], in file order.
enum Entry {
    /// A CSV row held as its cells (the next row of the chunk's `ends`), with
    /// its time, already checked, and for a feed with ids its fingerprint,
    /// which the rules thread looks up among the records seen.
    Cells {
        time: Timestamp,
        fingerprint: Option<[u8; 16]>,
    },
    /// A row read as an event (JSON, a workbook, or a CSV feed whose id or
    /// time is a list field), with its fingerprint for a feed with ids.
    Event {
        event: Box<Event>,
        fingerprint: Option<[u8; 16]>,
    },
    /// Boxed: bad rows are rare, and a small entry keeps the chunk small.
    Error(Box<RowError>),
}

impl Chunk {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.entries.clear();
    }

    fn is_full(&self) -> bool {
        // About a megabyte at most, however long the rows.
        self.entries.len() >= CHUNK || self.text.len() >= CHUNK_TEXT
    }

    /// The cells of the `row`th CSV row of the chunk.
    fn cells<'c>(&'c self, columns: &CsvColumns, row: usize) -> StoredCells<'c> {
        let n = columns.len();
        let start = match (row * n).checked_sub(1) {
            Some(last_of_previous) => self.ends[last_of_previous] as usize,
            None => 0,
        };
        StoredCells {
            text: &self.text,
            start,
            ends: &self.ends[row * n..(row + 1) * n],
        }
    }
}

/// Bytes of cell text a chunk holds before it is handed over.
const CHUNK_TEXT: usize = 1024 * 1024;

/// The reading thread's end of the hand-off: fills a chunk, sends it when
/// full, and takes spent ones back to refill.
struct ChunkFiller {
    chunk: Chunk,
    full: std::sync::mpsc::SyncSender<Chunk>,
    spent: std::sync::mpsc::Receiver<Chunk>,
}

impl ChunkFiller {
    fn push(&mut self, entry: Entry) {
        self.chunk.entries.push(entry);
        if self.chunk.is_full() {
            let next = match self.spent.try_recv() {
                Ok(mut spent) => {
                    spent.clear();
                    spent
                }
                Err(_) => Chunk {
                    text: String::with_capacity(CHUNK * 256),
                    ends: Vec::with_capacity(CHUNK * 16),
                    entries: Vec::with_capacity(CHUNK),
                    columns: None,
                },
            };
            // The receiver only goes away if the rules side panicked.
            let _ = self.full.send(std::mem::replace(&mut self.chunk, next));
        }
    }

    fn push_row(&mut self, row: Row) {
        let entry = match row {
            Row::Error(e) => Entry::Error(Box::new(e)),
            Row::Event(event) => {
                let fingerprint = event
                    .record_id
                    .is_some()
                    .then(|| record_fingerprint(&event));
                Entry::Event { event, fingerprint }
            }
        };
        self.push(entry);
    }

    /// Sends what is left.
    fn flush(self) {
        if !self.chunk.entries.is_empty() {
            let _ = self.full.send(self.chunk);
        }
    }
}

impl CsvSink for ChunkFiller {
    fn record(
        &mut self,
        columns: &Arc<CsvColumns>,
        record: &csv::StringRecord,
        shape: &RecordShape<'_>,
    ) -> Result<(), String> {
        if !columns.reads_id_and_time_directly() {
            let event = columns.event(record, None, shape)?;
            self.push_row(Row::Event(Box::new(event)));
            return Ok(());
        }
        let time = columns.time(record, shape)?;
        let fingerprint = columns.has_id().then(|| columns.fingerprint(record));
        let chunk = &mut self.chunk;
        if !chunk
            .columns
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, columns))
        {
            // A chunk holds the cells of one file's columns: a new file starts
            // a new chunk (one file's rows never share a chunk with another's).
            debug_assert!(chunk.columns.is_none());
            chunk.columns = Some(columns.clone());
        }
        let base = chunk.text.len();
        // A chunk is handed over at a megabyte of text, so its offsets fit
        // in 32 bits, which halves what crosses between the cores; a record of
        // gigabytes crosses as an event instead.
        let (Ok(base32), Ok(_)) = (
            u32::try_from(base),
            u32::try_from(base + record.as_slice().len()),
        ) else {
            let event = columns.event(record, Some(time), shape)?;
            self.push_row(Row::Event(Box::new(event)));
            return Ok(());
        };
        chunk.text.push_str(record.as_slice());
        let mut end = base32;
        for i in 0..columns.len() {
            // The CSV loop hands over only records with the header's number of
            // cells; each end is within the text just checked to fit.
            end = record
                .range(i)
                .map_or(end, |r| base32 + u32::try_from(r.end).unwrap_or(0));
            chunk.ends.push(end);
        }
        self.push(Entry::Cells { time, fingerprint });
        Ok(())
    }

    fn bad_row(&mut self, error: RowError) {
        self.push(Entry::Error(Box::new(error)));
    }
}

/// Which column holds each slot's field (the rule set's fields), worked out
/// once per file's columns, and the filling of a row's values from them.
#[derive(Default)]
struct SlotColumns {
    /// The columns worked out for, and the column of each slot.
    by_slot: Option<(Arc<CsvColumns>, Vec<Option<usize>>)>,
}

impl SlotColumns {
    /// Puts the values of `cells` (a row of `columns`) into `values`.
    fn fill(
        &mut self,
        columns: &Arc<CsvColumns>,
        cells: &StoredCells<'_>,
        values: &mut SlotValues,
    ) {
        let by_slot = match &self.by_slot {
            Some((known, by_slot)) if Arc::ptr_eq(known, columns) => by_slot,
            _ => {
                let by_slot = values.slots().iter().map(|f| columns.column(f)).collect();
                &self.by_slot.insert((columns.clone(), by_slot)).1
            }
        };
        for (slot, column) in by_slot.iter().enumerate() {
            match column {
                Some(c) => columns.value_into(*c, cells, values.value_mut(slot)),
                None => values.clear(slot),
            }
        }
    }
}

/// The cells of one row of a [`Chunk`].
struct StoredCells<'c> {
    text: &'c str,
    start: usize,
    /// Where each of its cells ends in `text`.
    ends: &'c [u32],
}

impl Cells for StoredCells<'_> {
    fn cell(&self, column: usize) -> &str {
        let Some(&end) = self.ends.get(column) else {
            return "";
        };
        let start = match column.checked_sub(1) {
            Some(previous) => self.ends[previous] as usize,
            None => self.start,
        };
        let end = end as usize;
        self.text.get(start..end).unwrap_or("")
    }
}

/// A CSV row as the rules read it: its cells, and the values of the fields
/// the rule set reads (filled for this row).
struct CellRow<'r> {
    columns: &'r CsvColumns,
    cells: StoredCells<'r>,
    time: Timestamp,
    values: &'r SlotValues,
    shape: &'r RecordShape<'r>,
    /// The whole event, made if a field outside the slots is asked for (the
    /// rule set gives a slot to every field the engine reads, so none is).
    whole: std::cell::OnceCell<Event>,
}

impl Record for CellRow<'_> {
    fn feed(&self) -> &str {
        self.columns.feed()
    }

    fn time(&self) -> Timestamp {
        self.time
    }

    fn get(&self, name: &str) -> Option<&Value> {
        match self.values.slot_of(name) {
            Some(slot) => self.values.get(slot),
            None => self.whole.get_or_init(|| self.build_event()).get(name),
        }
    }

    fn slot_value<'s>(&'s self, slot: usize, _: &EvalScratch) -> Option<&'s Value> {
        self.values.get(slot)
    }

    fn bind(&self, scratch: &mut EvalScratch, slots: &Arc<[String]>) {
        // The values were filled for the engine's own rule set; any other set
        // numbers its fields differently and would read the wrong ones.
        assert!(
            Arc::ptr_eq(self.values.slots(), slots),
            "a row's values are for another rule set"
        );
        scratch.bind_slot_values();
    }

    fn to_event(&self) -> Event {
        match self.whole.get() {
            Some(event) => event.clone(),
            None => self.build_event(),
        }
    }
}

impl CellRow<'_> {
    fn build_event(&self) -> Event {
        // The id and time were checked on the reading thread (Entry::Cells),
        // and with the time given nothing else is checked.
        self.columns
            .event(&self.cells, Some(self.time), self.shape)
            .expect("a row whose id and time were checked makes an event")
    }
}

fn describe(raised: Raised, file: &str) -> ReplayedAlert {
    let alert = &raised.alert;
    let review = first_audience(alert) == Audience::Review;
    let subject = raised.first_email.map(|e| e.subject).unwrap_or_default();
    let recipients = raised.recipients;
    ReplayedAlert {
        id: alert.id.clone(),
        rule: alert.rule_id.clone(),
        severity: alert.severity.to_string(),
        district: alert.district.clone(),
        group: alert.group.clone(),
        recipients,
        review,
        subject,
        count: alert.event_count,
        events: alert
            .events
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(&e.fields).unwrap_or_default();
                if let serde_json::Value::Object(map) = &mut v {
                    map.insert("_feed".into(), e.feed.to_string().into());
                    map.insert("_time".into(), e.time.to_string().into());
                }
                v
            })
            .collect(),
        file: file.to_string(),
        reasons: alert
            .reasons
            .iter()
            .map(|r| ReplayedReason {
                rule: r.rule_id.clone(),
                name: r.rule_name.clone(),
                severity: r.severity.to_string(),
                found: match &r.trigger {
                    crate::alerts::Trigger::FirstSeen { value, .. } => vec![value.clone()],
                    _ => r.found.iter().map(|f| f.value.clone()).collect(),
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    /// The example config's rules over its example files, each replayed as it
    /// is (a CSV file: its rows cross as cells) and as the same records in
    /// JSON lines (rows built into events on the reading thread), with repeats
    /// and bad rows added: the alerts and the totals must be the same.
    #[test]
    fn csv_rows_read_as_cells_raise_what_the_same_records_as_events_raise() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = Config::load(&root.join("config.example.toml")).unwrap();
        let rules = Arc::new(RuleSet::load(&config).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let wall_clock: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for (feed, example) in [
            ("drug_testing", "drug-testing-2025-11-04.csv"),
            ("drug_testing", "drug-testing-2025-11-22.csv"),
            ("incidents", "incidents-2025-11-04.csv"),
        ] {
            let feed = config.feed(feed).unwrap();
            let text = std::fs::read_to_string(root.join("examples").join(example)).unwrap();
            let mut lines: Vec<&str> = text.lines().collect();
            let header = lines[0];
            // Every row again (repeats), and one row with its time replaced by words.
            let rows: Vec<&str> = lines[1..].to_vec();
            lines.extend(rows.iter().take(3));
            let time_column = header
                .split(',')
                .position(|c| Some(c) == feed.time_field.as_deref())
                .unwrap();
            let bad: String = rows[0]
                .split(',')
                .enumerate()
                .map(|(i, c)| if i == time_column { "not a time" } else { c })
                .collect::<Vec<_>>()
                .join(",");
            lines.push(&bad);
            let csv_path = dir.path().join(example);
            std::fs::write(&csv_path, lines.join("\n") + "\n").unwrap();
            let mut reader = csv::Reader::from_path(&csv_path).unwrap();
            let names = reader.headers().unwrap().clone();
            let mut jsonl = String::new();
            for record in reader.records() {
                let record = record.unwrap();
                let object: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(record.iter())
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                jsonl.push_str(&serde_json::Value::Object(object).to_string());
                jsonl.push('\n');
            }
            let jsonl_path = csv_path.with_extension("jsonl");
            std::fs::write(&jsonl_path, jsonl).unwrap();

            let run = |path: &Path| {
                let mut alerts = Vec::new();
                let mut problems = Vec::new();
                let summary = replay(
                    &config,
                    rules.clone(),
                    feed,
                    &[path.to_path_buf()],
                    wall_clock,
                    |a| {
                        let mut a = serde_json::to_value(a).unwrap();
                        // Named after the file, which differs.
                        a["id"] = "".into();
                        a["file"] = "".into();
                        alerts.push(a)
                    },
                    |_, row, reason| problems.push((row.map(|r| r.row), reason.to_string())),
                )
                .unwrap();
                (alerts, problems, serde_json::to_value(summary).unwrap())
            };
            let (csv_alerts, csv_problems, csv_summary) = run(&csv_path);
            let (json_alerts, json_problems, json_summary) = run(&jsonl_path);
            assert!(!csv_alerts.is_empty(), "{example} raises nothing");
            assert_eq!(csv_alerts, json_alerts, "{example}");
            assert_eq!(csv_problems, json_problems, "{example}");
            assert_eq!(csv_problems.len(), 1, "{example}: {csv_problems:?}");
            assert_eq!(csv_summary, json_summary, "{example}");
            assert_eq!(csv_summary["duplicates"], 3, "{example}");
        }
    }
}
