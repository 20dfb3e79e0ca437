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
