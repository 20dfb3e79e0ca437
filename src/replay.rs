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
use crate::config::{Config, FeedConfig};
use crate::feeds::decode::{TextEncoding, decoding_reader, detect};
use crate::feeds::intake::format_for;
use crate::feeds::parse::{RecordShape, Row, RowError, parse};
use crate::feeds::record_fingerprint;
use crate::pipeline::{MemoryLedger, Pipeline, Raised, SeenRecords, infallible};
use crate::rules::RuleSet;
use crate::rules::engine::{Engine, EngineState};
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
/// a slow row on either side, few enough that memory stays a few megabytes.
const CHUNKS_AHEAD: usize = 8;

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
    let mut engine = Engine::new(rules, EngineState::default());
    // Records are deduplicated on the reading thread, so the rules thread does less.
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
        let encoding = detect(&mut file).map_err(io)?;
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
        // Two stages on two cores: this thread's helper reads, decodes, parses and
        // deduplicates rows; this thread runs the rules. Chunks keep the channel cheap.
        // The rules hand each chunk back once its rows are evaluated, and the reading
        // thread drops the rows and refills the chunk: the rules thread (the slower
        // stage) frees nothing, and every allocation is freed by the thread that made
        // it, which for the allocator is the cheap case. Chunks come back at most as
        // fast as they go out, so no more than CHUNKS_AHEAD + 2 of them ever exist.
        let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel::<Vec<Row>>(CHUNKS_AHEAD);
        let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<Row>>();
        let parsed = std::thread::scope(|scope| {
            let shaped = &shaped;
            let seen = &mut seen;
            let reader_thread = scope.spawn(move || {
                let shape = RecordShape {
                    feed: shaped,
                    timezone: &config.daemon.timezone,
                    default_time: file_time,
                    wall_clock: Some(wall_clock),
                };
                let next_chunk = || match spent_rx.try_recv() {
                    Ok(mut spent) => {
                        spent.clear();
                        spent
                    }
                    Err(_) => Vec::with_capacity(CHUNK),
                };
                let mut chunk = Vec::with_capacity(CHUNK);
                let mut duplicates = 0u64;
                let result = parse(reader, &shape, |row| {
                    if let Row::Event(event) = &row
                        && event.record_id.is_some()
                        && !seen.first_time(&record_fingerprint(event))
                    {
                        duplicates += 1;
                        return;
                    }
                    chunk.push(row);
                    if chunk.len() == CHUNK {
                        // The receiver only goes away if the engine side panicked.
                        let _ = chunks_tx.send(std::mem::replace(&mut chunk, next_chunk()));
                    }
                });
                if !chunk.is_empty() {
                    let _ = chunks_tx.send(chunk);
                }
                (result, duplicates)
            });
            for chunk in chunks_rx {
                for row in &chunk {
                    summary.rows += 1;
                    match row {
                        Row::Error(e) => {
                            summary.rejected_rows += 1;
                            on_problem(path, Some(e), &e.reason);
                        }
                        Row::Event(event) => {
                            summary.events += 1;
                            latest = latest.max(event.time);
                            infallible(step.observe_new(event));
                        }
                    }
                }
                // Once the reading thread is done it no longer takes chunks back:
                // the last few are dropped here.
                let _ = spent_tx.send(chunk);
            }
            match reader_thread.join() {
                Ok((result, duplicates)) => {
                    summary.rows += duplicates;
                    summary.duplicates += duplicates;
                    result
                }
                Err(_) => Err(crate::feeds::parse::FileError(
                    "the reading thread failed".into(),
                )),
            }
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
