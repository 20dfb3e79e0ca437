//! What the fuzz targets share: feed configs built through the real config parser, the
//! decode + parse pipeline of `feeds::intake` with the invariants the daemon relies on, and
//! fixed events for evaluating conditions and rules.
//!
//! Every function here panics on a broken invariant, so libFuzzer records it as a crash and
//! `tests/fuzz_regressions.rs` can replay the same input through the same code.

use earlywarn::alerts::{Alert, first_audience, route};
use earlywarn::config::{Config, FeedConfig};
use earlywarn::event::Event;
use earlywarn::event::Value;
use earlywarn::feeds::columns::{CsvColumns, CsvSink};
use earlywarn::feeds::decode::{TextEncoding, decode_bytes, decoding_reader, detect};
use earlywarn::feeds::parse::{RecordShape, Row, event_from_json, parse, parse_csv_records};
use earlywarn::feeds::record_fingerprint;
use earlywarn::pipeline::render_deliveries;
use earlywarn::rules::RuleSet;
use earlywarn::rules::condition::{Condition, EvalScratch, field_offset};
use earlywarn::rules::engine::{Batch, Engine, EngineState, StateChange};
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// `[mail]` and the `drug_testing` feed of SPEC §3.1, with `{format}` and `{extra}` holes.
const FEED_CONFIG: &str = r#"
[daemon]
timezone = "Europe/London"
[mail]
transport = "file"
[[feed]]
name = "drug_testing"
dir = "in/drug-testing"
format = "{format}"
{extra}
"#;

/// The variants of the feed a fuzz input can pick with its first byte: the shipped shape,
/// then the settings that change how rows are read.
const FEED_VARIANTS: &[&str] = &[
    // SPEC §3.1 as shipped: id, RFC 3339 times, lists, sniffed delimiter.
    r#"id_field = "sample_id"
time_field = "tested_at"
list_fields = { substances_major = ";", substances_minor = ";" }
sensitive = ["notes"]"#,
    // A lab export with local times and a fixed semicolon delimiter.
    r#"id_field = "sample_id"
time_field = "tested_at"
time_format = "%d/%m/%Y %H:%M"
delimiter = ";"
list_fields = { substances_major = "|", substances_minor = "," }"#,
    // No identity and no time column: every record is new and timed by the file.
    r#"delimiter = "tab""#,
    // Times with an offset in the format, and a multi-character list separator.
    r#"id_field = "sample_id"
time_field = "tested_at"
time_format = "%Y-%m-%dT%H:%M:%S%z"
list_fields = { substances_major = " + " }"#,
];

/// The feed configs for `format` (`csv`, `jsonl`, `json`), parsed once by `Config::parse`.
pub fn feeds(format: &str) -> &'static [(Config, FeedConfig)] {
    static CSV: OnceLock<Vec<(Config, FeedConfig)>> = OnceLock::new();
    static JSONL: OnceLock<Vec<(Config, FeedConfig)>> = OnceLock::new();
    static JSON: OnceLock<Vec<(Config, FeedConfig)>> = OnceLock::new();
    let cell = match format {
        "csv" => &CSV,
        "jsonl" => &JSONL,
        "json" => &JSON,
        other => panic!("no feed format {other}"),
    };
    cell.get_or_init(|| {
        FEED_VARIANTS
            .iter()
            .map(|extra| {
                let text = FEED_CONFIG
                    .replace("{format}", format)
                    .replace("{extra}", extra);
                let config = Config::parse(Path::new("/fuzz/earlywarn.toml"), &text)
                    .unwrap_or_else(|e| panic!("the fuzz feed config is refused: {e}\n{text}"));
                let feed = config.feeds[0].clone();
                (config, feed)
            })
            .collect()
    })
}

/// What one run of [`parse_file`] saw.
#[derive(Debug, Default)]
pub struct ParseSummary {
    pub events: Vec<Event>,
    pub errors: Vec<String>,
    /// Row, line, reason and span of each rejected row.
    pub row_errors: Vec<(u64, u64, String, Option<std::ops::Range<u64>>)>,
    pub file_error: Option<String>,
}

/// Decodes and parses `data` as the daemon does for one file of `format`: the first byte
/// picks a feed variant, the rest is the file. Checks the invariants the intake relies on
/// (rejected rows are quarantined verbatim from these spans; events carry the feed's id and
/// time) and evaluates the nitazene condition on every event. Reads it a second time the
/// way `earlywarn replay` does (streaming) and checks that both agree.
pub fn parse_file(format: &str, data: &[u8]) -> ParseSummary {
    let Some((&variant, bytes)) = data.split_first() else {
        return ParseSummary::default();
    };
    let variants = feeds(format);
    let (config, feed) = &variants[variant as usize % variants.len()];
    let shape = RecordShape {
        feed,
        timezone: &config.daemon.timezone,
        default_time: Timestamp::UNIX_EPOCH,
        wall_clock: None,
    };
    // The whole file decoded in memory (UTF-8 is passed on as it is, invalid bytes
    // included: the parsers set those rows aside).
    let (text, encoding) = decode_bytes(bytes);
    let summary = parse_text(&text[..], &text, &shape);

    // `earlywarn replay`'s way (`replay.rs`): detected, then decoded as a stream. Replay is
    // how a rule writer tries a rule before it goes live, so it must read a file the same.
    let mut cursor = std::io::Cursor::new(bytes.to_vec());
    let detected = detect(&mut cursor).expect("detecting in memory cannot fail");
    assert_eq!(
        detected, encoding,
        "replay and the daemon detect different encodings"
    );
    // Read in large chunks, as replay's 256 KiB buffer does. (encoding_rs_io loses the end of
    // a final U+FFFD when read with a buffer under 3 bytes, as `read_to_string` may do.)
    let mut decoded = Vec::new();
    let mut reader = decoding_reader(cursor, detected);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .expect("decoding in memory cannot fail");
        if n == 0 {
            break;
        }
        decoded.extend_from_slice(&chunk[..n]);
    }
    assert!(
        matches!(encoding, TextEncoding::Utf8 | TextEncoding::Utf8Bom)
            || std::str::from_utf8(&decoded).is_ok(),
        "the decoder yields UTF-8 from a {encoding} file"
    );
    assert!(
        decoded == text,
        "replay and the daemon decode this {encoding} file differently"
    );
    if format == "csv" {
        check_cells(&text, &shape, &summary);
    }
    let streamed = parse_text(
        decoding_reader(std::io::Cursor::new(bytes.to_vec()), detected),
        &text,
        &shape,
    );
    assert_eq!(
        streamed.file_error, summary.file_error,
        "replay and the daemon disagree on the file"
    );
    assert_eq!(
        streamed.row_errors, summary.row_errors,
        "replay and the daemon reject different rows"
    );
    assert!(
        streamed.events == summary.events,
        "replay and the daemon read different records"
    );
    summary
}

/// Reads CSV text as `earlywarn replay` does, each record as its cells
/// (`parse_csv_records`), and checks that a record's cells give what its event holds:
/// the same time and reasons, the same fingerprint, the same value in every column; and
/// that the rows, good and bad, are those `parse` gave.
fn check_cells(text: &[u8], shape: &RecordShape<'_>, summary: &ParseSummary) {
    struct Cells {
        events: Vec<Event>,
        row_errors: Vec<(u64, u64, String, Option<std::ops::Range<u64>>)>,
    }
    impl CsvSink for Cells {
        fn record(
            &mut self,
            columns: &Arc<CsvColumns>,
            record: &csv::StringRecord,
            shape: &RecordShape<'_>,
        ) -> Result<(), String> {
            let event = columns.event(record, None, shape);
            if columns.reads_id_and_time_directly() {
                let time = columns.time(record, shape);
                assert_eq!(
                    time.as_ref().copied().map_err(|e| e.as_str()),
                    event.as_ref().map(|e| e.time).map_err(|e| e.as_str()),
                    "cells and the event disagree on the time or its reason"
                );
                if let Ok(time) = time {
                    assert!(
                        columns.event(record, Some(time), shape).as_ref() == event.as_ref(),
                        "an event made with its time known differs"
                    );
                }
            }
            let event = event?;
            assert_eq!(
                columns.fingerprint(record),
                record_fingerprint(&event),
                "cells and the event have different fingerprints"
            );
            for column in 0..columns.len() {
                let name = columns.name(column);
                if name.is_empty() {
                    continue;
                }
                for start in [
                    Value::Text("stale".into()),
                    Value::List(vec!["stale".into()]),
                ] {
                    let mut value = start;
                    columns.value_into(column, record, &mut value);
                    assert!(
                        Some(&value).filter(|v| !v.is_empty()) == event.get(name),
                        "column `{name}`: cells give {value:?}, the event {:?}",
                        event.get(name)
                    );
                }
            }
            self.events.push(event);
            Ok(())
        }

        fn bad_row(&mut self, error: earlywarn::feeds::parse::RowError) {
            self.row_errors
                .push((error.row, error.line, error.reason, error.span));
        }
    }
    let mut cells = Cells {
        events: Vec::new(),
        row_errors: Vec::new(),
    };
    let result = parse_csv_records(text, shape, &mut cells);
    assert_eq!(
        result.err().map(|e| e.0),
        summary.file_error,
        "read as cells, the file is taken differently"
    );
    assert_eq!(
        cells.row_errors, summary.row_errors,
        "read as cells, different rows are rejected"
    );
    assert!(
        cells.events == summary.events,
        "read as cells, different records are read"
    );
}

/// Parses decoded text from `reader` (`text` is the same text, for checking spans).
fn parse_text(reader: impl Read, text: &[u8], shape: &RecordShape<'_>) -> ParseSummary {
    // Spans are checked against characters only where the text is valid UTF-8.
    let valid = std::str::from_utf8(text).ok();
    let feed = shape.feed;
    let mut summary = ParseSummary::default();
    let condition = nitazene_condition();
    let mut last_row = 0u64;
    let result = parse(reader, shape, |row| match row {
        Row::Event(event) => {
            assert_eq!(&*event.feed, feed.name.as_str());
            if let Some(id_field) = &feed.id_field {
                let id = event
                    .record_id
                    .as_deref()
                    .expect("an id for a feed with id_field");
                assert!(!id.trim().is_empty(), "empty record id accepted");
                assert!(event.get(id_field).is_some(), "record id without its field");
            }
            let _ = record_fingerprint(&event);
            let _ = matches(condition, &event);
            summary.events.push(*event);
        }
        Row::Error(error) => {
            assert!(
                !error.reason.trim().is_empty(),
                "a row error without a reason"
            );
            assert!(error.row >= 1, "row numbers count from 1: {error:?}");
            assert!(
                error.row > last_row,
                "row numbers go up: {error:?} after {last_row}"
            );
            last_row = error.row;
            if let Some(span) = &error.span {
                let (start, end) = (span.start as usize, span.end as usize);
                assert!(
                    start <= end && end <= text.len(),
                    "span {span:?} outside the text of {} bytes: {error:?}",
                    text.len()
                );
                assert!(
                    valid.is_none_or(|t| t.is_char_boundary(start) && t.is_char_boundary(end)),
                    "span {span:?} cuts a character, so the row cannot be quarantined verbatim: {error:?}"
                );
                assert!(
                    start < end,
                    "an empty span: the bad row would be quarantined as nothing: {error:?}"
                );
            }
            summary.errors.push(error.reason.clone());
            summary
                .row_errors
                .push((error.row, error.line, error.reason, error.span));
        }
    });
    if let Err(e) = result {
        assert!(!e.0.trim().is_empty(), "a file error without a reason");
        summary.file_error = Some(e.0);
    }
    summary
}

/// The shipped nitazene condition, over the shipped list.
pub fn nitazene_condition() -> &'static Condition {
    static C: OnceLock<Condition> = OnceLock::new();
    C.get_or_init(|| {
        Condition::parse(
            "substances_major in nitazenes or substances_minor in nitazenes",
            lists(),
        )
        .expect("the shipped condition parses")
    })
}

/// Named lists for conditions: the shipped ones and some awkward ones.
pub fn lists() -> &'static BTreeMap<String, Vec<String>> {
    static L: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    L.get_or_init(|| {
        let mut m = BTreeMap::new();
        let list = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        m.insert(
            "nitazenes".into(),
            list(&[
                "isotonitazene",
                "protonitazene",
                "metonitazene",
                "N-desethyl isotonitazene",
            ]),
        );
        m.insert(
            "districts".into(),
            list(&[
                "Bolton",
                "Bury",
                "Manchester",
                "Oldham",
                "Rochdale",
                "Salford",
            ]),
        );
        m.insert("empty".into(), Vec::new());
        m.insert(
            "odd".into(),
            list(&["", " ", "-", "ǅ", "İ", "ß", "1e3", "NaN"]),
        );
        m
    })
}

/// Events to evaluate fuzzed conditions on: typical, list-valued, numeric, odd and empty.
/// Built from JSON through the feed's own `event_from_json`, as a JSON feed delivers them.
pub fn events() -> &'static [Event] {
    static E: OnceLock<Vec<Event>> = OnceLock::new();
    E.get_or_init(|| {
        let records = serde_json::json!([
            {
                "sample_id": "S1", "tested_at": "2025-11-04T09:12:00Z", "district": "Bolton",
                "source": "drug_service", "purchased_as": "heroin",
                "substances_major": ["heroin", "N-Desethylisotonitazene"],
                "substances_minor": ["caffeine"], "amount_mg_per_unit": "12.5",
                "linked_harm": "non_fatal_overdose", "notes": "naïve user – café; \"quoted\""
            },
            {
                "sample_id": "S2", "tested_at": "not a time", "district": "  salford  ",
                "substances_major": [], "amount_mg_per_unit": -0.0, "count": 1e300,
                "colour": "", "İstanbul": "ǅ", "flag": true, "nested": {"a": [1, null]}
            },
            {}
        ]);
        let (config, feed) = &feeds("json")[2];
        let shape = RecordShape {
            feed,
            timezone: &config.daemon.timezone,
            default_time: "2025-11-04T10:00:00Z".parse().unwrap(),
            wall_clock: None,
        };
        records
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                event_from_json(r.as_object().unwrap(), &shape)
                    .unwrap_or_else(|e| panic!("a fixed fuzz event is refused: {e}"))
            })
            .collect()
    })
}

/// Evaluates `condition` on `event` with fresh working memory, as the engine does per event.
pub fn matches(condition: &Condition, event: &Event) -> bool {
    let mut scratch = EvalScratch::default();
    scratch.next_event();
    condition.matches(event, &mut scratch)
}

/// Checks one `when` text: an error points inside the text; a condition evaluates on every
/// fixed event, names fields the loader can point at, and `not (…)` of it is its complement.
pub fn check_condition(source: &str) {
    match Condition::parse(source, lists()) {
        Err(e) => {
            assert!(
                e.offset <= source.len() && source.is_char_boundary(e.offset),
                "error offset {} is not a place in the {}-byte condition: {e:?}",
                e.offset,
                source.len()
            );
            assert!(!e.message.trim().is_empty(), "an error without a message");
        }
        Ok(condition) => {
            for field in condition.fields() {
                if let Some(at) = field_offset(source, field) {
                    assert!(at < source.len() && source.is_char_boundary(at));
                }
            }
            let negated = Condition::parse(&format!("not ({source})"), lists())
                .unwrap_or_else(|e| panic!("`not (…)` of a valid condition is refused: {e:?}"));
            for event in events() {
                let yes = matches(&condition, event);
                let no = matches(&negated, event);
                assert_ne!(yes, no, "`not (…)` is not the complement on {event:?}");
            }
        }
    }
}

/// The shipped example config (feeds, partners) that fuzzed rule files are checked against.
pub fn rule_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        Config::parse(
            Path::new("/fuzz/config.example.toml"),
            include_str!("../../config.example.toml"),
        )
        .unwrap_or_else(|e| panic!("config.example.toml is refused: {e}"))
    })
}

/// Checks rule-file text: `#---` lines split it into several files of one set. Errors must
/// point at a line and column of their file; a set that loads goes through the engine,
/// routing and rendering, as one file of events and then the wall clock would drive it.
pub fn check_rule_files(text: &str) {
    let sources: Vec<(PathBuf, String)> = text
        .split("\n#---\n")
        .enumerate()
        .map(|(i, s)| {
            (
                PathBuf::from(format!("/fuzz/rules/r{i}.toml")),
                s.to_string(),
            )
        })
        .collect();
    let config = rule_config();
    match RuleSet::from_sources(config, &sources) {
        Err(diagnostics) => {
            assert!(!diagnostics.0.is_empty(), "refused without a reason");
            for d in &diagnostics.0 {
                assert!(
                    !d.message.trim().is_empty(),
                    "a diagnostic without a message"
                );
                let (_, source) = sources
                    .iter()
                    .find(|(p, _)| *p == d.path)
                    .unwrap_or_else(|| panic!("a diagnostic for an unknown file: {d}"));
                let lines = source.split('\n').count();
                assert!(
                    d.line >= 1 && d.line <= lines && d.column >= 1,
                    "{d} is not a place in a file of {lines} lines"
                );
            }
        }
        Ok(set) => run_engine(config, Arc::new(set)),
    }
}

fn run_engine(config: &Config, set: Arc<RuleSet>) {
    let t0: Timestamp = "2025-11-04T10:00:00Z".parse().unwrap();
    let mut engine = Engine::new(set, EngineState::default());
    let mut stored = EngineState::default();

    let mut batch = Batch::default();
    for event in engine_events() {
        engine.observe(&mut batch, event);
    }
    engine.note_activity("drug_testing", t0);
    let outcome = engine.finish(batch, t0, "fuzz-file-1", "fuzz-file-1.csv");
    deliver(config, &engine, &outcome.alerts);
    persist(&mut stored, &outcome.changes);

    // The same events again, a day later (a second file), then the clock moving on.
    let mut batch = Batch::default();
    for event in engine_events() {
        engine.observe(&mut batch, event);
    }
    let outcome = engine.finish(
        batch,
        t0 + jiff::SignedDuration::from_hours(24),
        "fuzz-file-2",
        "fuzz-file-2.csv",
    );
    deliver(config, &engine, &outcome.alerts);
    persist(&mut stored, &outcome.changes);
    for hours in [1, 25, 24 * 8, 24 * 400, 24 * 365 * 100] {
        let now = t0 + jiff::SignedDuration::from_hours(hours);
        let outcome = engine.tick(now);
        deliver(config, &engine, &outcome.alerts);
        persist(&mut stored, &outcome.changes);
        let _ = engine.next_wakeup();
    }
    // What was persisted restores.
    engine.restore(stored);
}

/// Stores state changes the way the database does and loads them back.
fn persist(stored: &mut EngineState, changes: &[StateChange]) {
    for change in changes {
        if let Some(data) = &change.data {
            stored
                .load_row(
                    change.kind.as_str(),
                    change.key.rule_id.clone(),
                    change.key.group_key.clone(),
                    data,
                )
                .unwrap_or_else(|e| panic!("stored rule state does not load back: {e}"));
        }
    }
}

/// Routes and renders every alert for every partner, as the batch step does.
fn deliver(config: &Config, engine: &Engine, alerts: &[Alert]) {
    for alert in alerts {
        let rule = engine
            .rules()
            .get(&alert.rule_id)
            .unwrap_or_else(|| panic!("an alert of an unknown rule {}", alert.rule_id));
        let _ = serde_json::to_string(alert);
        let deliveries = route(alert, rule, config, first_audience(alert));
        let templates = &engine.rules().templates;
        let emails = render_deliveries(config, alert, rule, templates, &deliveries, |_, _| {
            Ok::<_, std::convert::Infallible>(None)
        });
        assert_eq!(
            emails.map(|e| e.len()).unwrap_or_default(),
            deliveries.len(),
            "alert {} of rule {} cannot be rendered even with the default template",
            alert.id,
            rule.id
        );
    }
}

/// Drug-testing and incident records (SPEC §3.1) for the engine: nitazenes in several
/// districts, a firearms discharge and its support record, overdoses.
pub fn engine_events() -> &'static [Event] {
    static E: OnceLock<Vec<Event>> = OnceLock::new();
    E.get_or_init(|| {
        let drug = "sample_id,received_at,tested_at,lab,source,district,postcode_district,purchased_as,form,colour,marking,substances_major,substances_minor,amount_mg_per_unit,linked_harm,notes
D1,2025-11-03T16:05:00Z,2025-11-04T09:12:00Z,MANDRAKE,drug_service,Bolton,BL1,heroin,powder,brown,,heroin;protonitazene,caffeine,12.5,non_fatal_overdose,found near the café
D2,2025-11-03T16:05:00Z,2025-11-04T09:20:00Z,MANDRAKE,police_seizure,Salford,M6,oxycodone,tablet,blue,M30,N-Desethylisotonitazene,,0.4,none,
D3,2025-11-03T16:05:00Z,2025-11-04T09:30:00Z,MANDRAKE,amnesty_bin,Bolton,BL2,ketamine,crystal,white,,ketamine;xylazine;medetomidine,novelide,,hospital_admission,notes
D4,2025-11-03T16:05:00Z,2025-11-01T09:30:00Z,MANDRAKE,event,Wigan,WN1,cocaine,powder,white,,cocaine;levamisole,,,fatal_overdose,
";
        let incidents = "record_id,incident_ref,incident_type,occurred_at,reported_at,district,location,weapon_type,injury,outcome,status,subject_key,notes
I1,GMP-1,firearm_discharge,2025-11-04T08:00:00Z,2025-11-04T08:10:00Z,Salford,Langworthy Rd,handgun,none,,open,P-1,shots heard
I2,GMP-2,firearm_discharge,2025-11-04T08:30:00Z,2025-11-04T08:40:00Z,Bolton,Deane Rd,shotgun,injury,,open,P-2,
I3,GMP-1,support_provided,2025-11-04T09:00:00Z,2025-11-04T09:05:00Z,Salford,,,,,closed,P-1,
I4,OD-1,suspected_overdose,2025-11-04T07:00:00Z,2025-11-04T07:10:00Z,Bolton,,,,,open,P-3,
I5,OD-2,suspected_overdose,2025-11-04T07:30:00Z,2025-11-04T07:40:00Z,Bolton,,,,,open,P-4,
I6,OD-3,suspected_overdose,2025-11-04T07:45:00Z,2025-11-04T07:50:00Z,Bolton,,,,,open,P-5,
I7,GMP-9,support_provided,2025-11-04T09:30:00Z,2025-11-04T09:35:00Z,Wigan,,,,,closed,P-6,support before its discharge
";
        let config = rule_config();
        let mut out = Vec::new();
        for (feed, text) in [("drug_testing", drug), ("incidents", incidents)] {
            let Some(feed) = config.feed(feed) else { continue };
            let shape = RecordShape {
                feed,
                timezone: &config.daemon.timezone,
                default_time: "2025-11-04T10:00:00Z".parse().unwrap(),
                wall_clock: None,
            };
            parse(text.as_bytes(), &shape, |row| {
                if let Row::Event(e) = row {
                    out.push(*e);
                }
            })
            .unwrap_or_else(|e| panic!("the fuzz events do not parse: {e}"));
        }
        assert!(out.len() >= 8, "the fuzz events parse: {}", out.len());
        out
    })
}
