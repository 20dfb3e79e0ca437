//! Public parser test suites that nobody here wrote, run through earlywarn's own
//! reading path (`decode::detect` + `decoding_reader` + `parse::parse`, as `replay`
//! and the daemon read a file):
//!
//! - **csv-spectrum** (npm `csv-spectrum` 2.0.0, BSD-2-Clause): CSV files with the
//!   header-keyed JSON they must give, compared field by field.
//! - **papaparse's fixtures** (npm `papaparse` 5.7.1 ships `tests/test-cases.js`, MIT):
//!   `CORE_PARSER_TESTS` and `PARSE_TESTS` as data, each expected row and error.
//! - **JSONTestSuite** (nst/JSONTestSuite, MIT): every `y_` document read, every `n_`
//!   refused, every `i_` either (listed), as a JSON array feed and as JSON lines.
//!
//! All are vendored under `tests/corpus/` (small, with their licences and where they
//! came from), so the test needs no network and CI cannot break on a registry.
//!
//! earlywarn's documented choices (SPEC §4) are applied to what the suites expect: an
//! empty cell is an absent field, values are trimmed, a blank line is not a record.
//! The cases where a choice changed the expectation are listed by name below, and so
//! is every case where earlywarn departs from the suite on purpose, with the reason.
//! Every case runs on its own thread with a time bound: no panic, no hang.

use earlywarn::config::{Config, FeedConfig};
use earlywarn::feeds::decode::{decoding_reader, detect};
use earlywarn::feeds::parse::{RecordShape, Row, parse};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Longer than any case needs by a thousandfold: a case past it hangs.
const CASE_TIME: Duration = Duration::from_secs(20);

fn corpus(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(suite)
}

/// A feed with no id or time field: every column is just a field.
fn feed(format: &str, delimiter: Option<char>) -> FeedConfig {
    let delimiter = match delimiter {
        None => String::new(),
        Some('\t') => "delimiter = \"tab\"\n".to_string(),
        Some(d) => format!("delimiter = {}\n", Json::String(d.to_string())),
    };
    let text = format!(
        "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"suite\"\ndir = \"in\"\nformat = \"{format}\"\n{delimiter}"
    );
    Config::parse(Path::new("/suite/c.toml"), &text)
        .unwrap_or_else(|e| panic!("test feed config: {e:?}"))
        .feeds
        .remove(0)
}

/// What earlywarn made of one record.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    /// Read: its fields as text (absent fields are not there).
    Event(BTreeMap<String, String>),
    /// A bad row: its record number and reason.
    Bad(u64, String),
}

/// What earlywarn made of one file: its records, or why the whole file was refused.
type Outcome = Result<Vec<Item>, String>;

/// Reads `bytes` as the daemon would, on a thread, within [`CASE_TIME`]. `Err` is
/// a panic or a hang, never a refusal (that is `Ok(Err(reason))`).
fn read(bytes: Vec<u8>, feed: FeedConfig) -> Result<Outcome, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut cursor = std::io::Cursor::new(bytes);
        let encoding = detect(&mut cursor).expect("reading from memory");
        let tz = TimeZone::UTC;
        let shape = RecordShape {
            feed: &feed,
            timezone: &tz,
            default_time: Timestamp::UNIX_EPOCH,
            wall_clock: None,
        };
        let mut items = Vec::new();
        let result = parse(decoding_reader(cursor, encoding), &shape, |row| {
            items.push(match row {
                Row::Event(e) => Item::Event(
                    e.fields
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                Row::Error(e) => Item::Bad(e.row, e.reason),
            })
        });
        let _ = tx.send(result.map(|()| items).map_err(|e| e.0));
    });
    match rx.recv_timeout(CASE_TIME) {
        Ok(outcome) => Ok(outcome),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no answer within {CASE_TIME:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the parser panicked".to_string()),
    }
}

/// A value as earlywarn keeps it: trimmed, and gone when empty.
fn documented(value: &str) -> Option<String> {
    let t = value.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// An expected record with the documented choices applied, and whether they changed it.
fn expected_record<'a>(fields: impl Iterator<Item = (String, &'a str)>) -> (Item, bool) {
    let mut changed = false;
    let mut map = BTreeMap::new();
    for (key, value) in fields {
        let kept = documented(value);
        changed |= kept.as_deref() != Some(value);
        if let Some(v) = kept {
            map.insert(key.trim().to_string(), v);
        }
    }
    (Item::Event(map), changed)
}

// ---------------------------------------------------------------------------
// csv-spectrum

/// csv-spectrum cases whose expected JSON the documented choices change.
const SPECTRUM_CHOICES: &[(&str, &str)] = &[
    ("empty", "`\"\"` cells are absent fields"),
    ("empty_crlf", "`\"\"` cells are absent fields"),
];

/// Where csv-spectrum 2.0.0's expected JSON contradicts its own CSV: (case, field,
/// the JSON's value, the CSV's value). The CSV is the input, so it wins. (Its
/// `location_coordinates.json` is also one object, not an array of one.)
const SPECTRUM_ERRATA: &[(&str, &str, &str, &str)] = &[(
    "location_coordinates",
    "Contact Phone Number",
    "1234567890",
    "2095257564",
)];

#[test]
fn csv_spectrum_every_case_as_the_suite_expects() {
    let dir = corpus("csv-spectrum");
    let mut names: Vec<String> = std::fs::read_dir(dir.join("csvs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().replace(".csv", ""))
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        12,
        "csv-spectrum 2.0.0 has 12 cases: {names:?}"
    );
    let mut failures = Vec::new();
    let mut choices = Vec::new();
    for name in &names {
        let csv = std::fs::read(dir.join(format!("csvs/{name}.csv"))).unwrap();
        let mut json: Json =
            serde_json::from_slice(&std::fs::read(dir.join(format!("json/{name}.json"))).unwrap())
                .unwrap();
        if json.is_object() {
            json = Json::Array(vec![json]);
        }
        for (case, field, theirs, file) in SPECTRUM_ERRATA {
            if case == name {
                let value = &mut json[0][field];
                assert_eq!(value, theirs, "erratum {case} no longer applies");
                *value = Json::String(file.to_string());
            }
        }
        let mut changed = false;
        let expected: Vec<Item> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let (item, c) = expected_record(
                    row.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap())),
                );
                changed |= c;
                item
            })
            .collect();
        if changed {
            choices.push(name.clone());
        }
        match read(csv, feed("csv", None)) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(got) if got != Ok(expected.clone()) => {
                failures.push(format!("{name}: expected {expected:?}, got {got:?}"))
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "csv-spectrum:\n{}",
        failures.join("\n")
    );
    let listed: Vec<&str> = SPECTRUM_CHOICES.iter().map(|(n, _)| *n).collect();
    assert_eq!(choices, listed, "cases the documented choices change");
}

// ---------------------------------------------------------------------------
// JSONTestSuite

/// What a JSON document that earlywarn read gave, in a word for the `i_` list.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Err(reason) => format!("file refused: {reason}"),
        Ok(items) => {
            let events = items.iter().filter(|i| matches!(i, Item::Event(_))).count();
            let bad: Vec<&str> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Bad(_, reason) => Some(reason.as_str()),
                    Item::Event(_) => None,
                })
                .collect();
            format!("{events} records, {} bad rows {bad:?}", bad.len())
        }
    }
}

/// Whether a refusal says the text is not JSON: a `y_` document must never get one.
fn says_invalid(outcome: &Outcome) -> bool {
    let invalid = |r: &str| r.contains("invalid JSON") || r.contains("not valid UTF-8");
    match outcome {
        Err(reason) => invalid(reason),
        Ok(items) => items
            .iter()
            .any(|i| matches!(i, Item::Bad(_, r) if invalid(r))),
    }
}

/// Records accepted from a document, were it used (a refused file uses none).
fn accepted(outcome: &Outcome) -> usize {
    match outcome {
        Err(_) => 0,
        Ok(items) => items.iter().filter(|i| matches!(i, Item::Event(_))).count(),
    }
}

#[test]
fn json_test_suite_y_read_n_refused_i_listed() {
    let dir = corpus("JSONTestSuite/test_parsing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        318,
        "JSONTestSuite's test_parsing has 318 files"
    );
    let mut failures = Vec::new();
    let mut implementation_defined = Vec::new();
    let (mut y, mut n) = (0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        // What the document is, by serde_json (strict RFC 8259, UTF-8 only).
        let value: Option<Json> = serde_json::from_slice(&bytes).ok();
        let objects = value
            .as_ref()
            .and_then(Json::as_array)
            .filter(|a| a.iter().all(Json::is_object))
            .map(Vec::len);
        // A JSON array feed, and JSON lines where the document is one line.
        let one_line = !bytes.contains(&b'\n') && !bytes.contains(&b'\r');
        let mut runs = vec![("json", read(bytes.clone(), feed("json", None)))];
        runs.push(("jsonl", read(bytes, feed("jsonl", None))));
        for (format, run) in runs {
            let outcome = match run {
                Err(e) => {
                    failures.push(format!("{name} as {format}: {e}"));
                    continue;
                }
                Ok(outcome) => outcome,
            };
            let checked = format == "json" || one_line;
            match name.as_bytes()[0] {
                b'y' if checked => {
                    // Read: every object a record; anything else refused for its shape,
                    // never as broken JSON.
                    let want = match format {
                        "json" => objects,
                        _ => value.as_ref().filter(|v| v.is_object()).map(|_| 1),
                    };
                    if let Some(want) = want
                        && (accepted(&outcome) != want || outcome.is_err())
                    {
                        failures.push(format!(
                            "{name} as {format}: {want} objects, but {}",
                            summary(&outcome)
                        ));
                    }
                    if says_invalid(&outcome) {
                        failures.push(format!(
                            "{name} as {format}: valid JSON called invalid: {}",
                            summary(&outcome)
                        ));
                    }
                }
                b'n' if checked && accepted(&outcome) > 0 => failures.push(format!(
                    "{name} as {format}: invalid JSON accepted: {}",
                    summary(&outcome)
                )),
                b'i' if format == "json" => {
                    implementation_defined.push(format!("{name}: {}", summary(&outcome)))
                }
                _ => {}
            }
        }
        match name.as_bytes()[0] {
            b'y' => y += 1,
            b'n' => n += 1,
            _ => {}
        }
    }
    println!(
        "JSONTestSuite: {y} y_, {n} n_, {} i_ documents; the i_ outcomes as a JSON array feed:",
        implementation_defined.len()
    );
    for line in &implementation_defined {
        println!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "JSONTestSuite:\n{}",
        failures.join("\n")
    );
    assert_eq!((y, n, implementation_defined.len()), (95, 188, 35));
}

// ---------------------------------------------------------------------------
// papaparse

/// papaparse options a case may use and still say what earlywarn must do: a
/// one-character `delimiter` is a feed's `delimiter`; `header: true` is how
/// earlywarn always reads; `skipEmptyLines` is what it always does. A case with any
/// other option (comments, dynamic typing, preview, transforms, quote and escape
/// characters, a chosen newline) tests a papaparse feature earlywarn does not have.
const PAPA_OPTIONS: &[&str] = &["delimiter", "header", "skipEmptyLines"];

/// papaparse cases whose expected rows the documented choices change (a value
/// trimmed, an empty value absent, a blank row no record). One name is in both
/// of papaparse's arrays, so it is here twice.
const PAPA_CHOICES: &[&str] = &[
    "Whitespace at edges of unquoted field",
    "Quoted field with extra whitespace on edges",
    "Quoted field with whitespace around quotes",
    "Line starts with unquoted empty field",
    "Empty quoted field at EOF is empty",
    "Multiple consecutive empty fields",
    "Input is just the delimiter (2 empty fields)",
    "Input is just empty fields",
    "Input without comments with line starting with whitespace",
    "One column input with empty fields",
    "Mixed slash n and slash r should choose first as precident",
    "Row with enough fields but blank field in the begining",
    "Row with enough fields but blank field in the begining using headers",
    "Row with enough fields but blank field at end",
    "Blank lines at end",
    "Blank line in middle with whitespace",
    "First field of a line is empty",
    "Last field of a line is empty",
    "Other fields are empty",
    "Input is just the delimiter (2 empty fields)",
    "Empty lines",
    "Skip empty lines, with first line only whitespace",
    "Parsing with skipEmptyLines set to 'greedy' with quotes and delimiters as content",
    "Quoted fields with spaces between closing quote and newline and contains newline",
];

/// Where earlywarn reads a papaparse case otherwise than papaparse, on purpose.
const PAPA_DEPARTURES: &[(&str, &str)] = &[
    (
        "Simple duplicated header names",
        "the header names a column twice: the whole file is refused with that reason, where papaparse renames the copies (`A_1`); a rule could not say which column it means",
    ),
    (
        "Duplicated header names existing column",
        "the header names a column twice: the whole file is refused with that reason, where papaparse renames the copies (`A_1`); a rule could not say which column it means",
    ),
    (
        "Duplicate header names with __proto__ field",
        "the header names a column twice: the whole file is refused with that reason, where papaparse renames the copies (`A_1`); a rule could not say which column it means",
    ),
    (
        "Mixed slash n and slash r should choose first as precident",
        "a lone CR ends a line wherever it is (old Mac exports); papaparse takes the first line end it meets as the only one and reads `f\\rg` as one value. The rows then have the wrong field count and are refused, not altered",
    ),
];

/// A papaparse case's expectation, with earlywarn's rules: the rows papaparse flags
/// (`errors[].row`) are bad rows, and so is a row without the header's field count.
fn papa_expected(case: &Json, header: bool, width: usize) -> (Vec<Item>, bool) {
    let flagged: Vec<u64> = case["expected"]["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["row"].as_u64())
        .collect();
    let mut changed = false;
    let mut items = Vec::new();
    let mut rows = case["expected"]["data"].as_array().unwrap().as_slice();
    // papaparse's core parser with `header` gives the (renamed) header as a row.
    let mut keys = None;
    if header && let Some((first, rest)) = rows.split_first().filter(|(f, _)| f.is_array()) {
        keys = first.as_array();
        rows = rest;
    }
    for (i, row) in (0u64..).zip(rows) {
        let fields: Vec<(String, &str)> = if let Some(keys) = keys {
            keys.iter()
                .zip(row.as_array().unwrap())
                .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap_or("")))
                .collect()
        } else if header {
            row.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("")))
                .collect()
        } else {
            (1..)
                .zip(row.as_array().unwrap())
                .map(|(j, v)| (format!("c{j}"), v.as_str().unwrap_or("")))
                .collect()
        };
        if flagged.contains(&i) {
            items.push(Item::Bad(0, String::new()));
        } else if fields.iter().all(|(_, v)| v.trim().is_empty()) {
            changed = true;
        } else if !header && fields.len() != width {
            items.push(Item::Bad(0, String::new()));
        } else {
            let (item, c) = expected_record(fields.into_iter());
            changed |= c;
            items.push(item);
        }
    }
    (items, changed)
}

/// The delimiter earlywarn sniffs from a file's first line (SPEC §4): of `,` `;`
/// tab and `|`, the one outside quotes most often, `,` on a tie.
fn sniffed(input: &str) -> char {
    let line = input.split(['\n', '\r']).next().unwrap_or("");
    let count = |d: char| {
        let mut quoted = false;
        line.chars()
            .filter(|&c| {
                quoted ^= c == '"';
                !quoted && c == d
            })
            .count()
    };
    [',', ';', '\t', '|']
        .into_iter()
        .max_by_key(|&d| (count(d), d == ','))
        .unwrap_or(',')
}

#[test]
fn papaparse_fixtures_as_papaparse_expects() {
    let cases: Vec<Json> =
        serde_json::from_slice(&std::fs::read(corpus("papaparse").join("cases.json")).unwrap())
            .unwrap();
    assert_eq!(
        cases.len(),
        161,
        "papaparse 5.7.1's CORE_PARSER_TESTS and PARSE_TESTS"
    );
    let (mut run, mut skipped) = (0, Vec::new());
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut choices = Vec::new();
    for case in &cases {
        let name = case["description"].as_str().unwrap().to_string();
        let config = case["config"].as_object().cloned().unwrap_or_default();
        let delimiter = config
            .get("delimiter")
            .or(case["expected"]["meta"].get("delimiter"))
            .and_then(Json::as_str);
        let one_char = |d: &str| d.chars().count() == 1 && d != "\n" && d != "\r" && d != "\"";
        if let Some(option) = config.keys().find(|k| !PAPA_OPTIONS.contains(&k.as_str())) {
            skipped.push(format!("{name} ({option})"));
            continue;
        }
        if delimiter.is_some_and(|d| !one_char(d)) {
            skipped.push(format!("{name} (delimiter {delimiter:?})"));
            continue;
        }
        run += 1;
        let header = config.get("header") == Some(&Json::Bool(true));
        let input = case["input"].as_str().unwrap();
        let delimiter = delimiter.map(|d| d.chars().next().unwrap());
        // Without papaparse's `header`, every row is data: a header line of column
        // names goes first, as wide as the widest row.
        let width = case["expected"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_array)
            .map(Vec::len)
            .max()
            .unwrap_or(1);
        let (text, delimiter) = if header {
            (input.to_string(), delimiter)
        } else {
            // The delimiter earlywarn would sniff from the input's own first line.
            let d = delimiter.unwrap_or_else(|| sniffed(input));
            let names: Vec<String> = (1..=width).map(|j| format!("c{j}")).collect();
            let names = names.join(&d.to_string());
            // A byte-order mark stays the first thing in the file.
            let text = match input.strip_prefix('\u{feff}') {
                Some(rest) => format!("\u{feff}{names}\n{rest}"),
                None => format!("{names}\n{input}"),
            };
            (text, Some(d))
        };
        let (expected, changed) = papa_expected(case, header, width);
        if changed {
            choices.push(name.clone());
        }
        let got = match read(text.into_bytes(), feed("csv", delimiter)) {
            Err(e) => {
                failures.push((name, e));
                continue;
            }
            Ok(got) => got,
        };
        // Bad rows are compared by place, not by number or reason, and a run of them
        // as one: papaparse reads a bad quote as swallowing the lines after it, where
        // earlywarn may end the bad field sooner and refuse the lines after it one by
        // one. Either way, none of that text is read.
        let got = got.map(|items| {
            let mut items: Vec<Item> = items
                .into_iter()
                .map(|i| match i {
                    Item::Bad(..) => Item::Bad(0, String::new()),
                    event => event,
                })
                .collect();
            items.dedup_by(|a, b| matches!((a, b), (Item::Bad(..), Item::Bad(..))));
            items
        });
        let mut expected = expected;
        expected.dedup_by(|a, b| matches!((a, b), (Item::Bad(..), Item::Bad(..))));
        if got != Ok(expected.clone()) {
            failures.push((name, format!("expected {expected:?}\n      got {got:?}")));
        }
    }
    println!("papaparse: {run} cases run, {} skipped:", skipped.len());
    assert_eq!((run, skipped.len()), (99, 62));
    for s in &skipped {
        println!("  skipped: {s}");
    }
    println!("documented choices applied in: {choices:?}");
    let departures: Vec<&str> = PAPA_DEPARTURES.iter().map(|(n, _)| *n).collect();
    let unexpected: Vec<String> = failures
        .iter()
        .filter(|(n, _)| !departures.contains(&n.as_str()))
        .map(|(n, why)| format!("{n}:\n      {why}"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "papaparse:\n{}",
        unexpected.join("\n")
    );
    let failed: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(failed, departures, "the listed departures, and only those");
    assert_eq!(choices, PAPA_CHOICES, "cases the documented choices change");
}
