//! Bad input, end to end (SPEC §4): the real daemon over the corpus of `tests/corpus/`
//! (drug-testing exports as real producers get them wrong; `tests/corpus/make.py` writes it),
//! dropped all at once and one by one, plus what is made at run time: a symbolic link, a file
//! over `max_file_bytes`, a name that is not UTF-8, a 10 MB line.
//!
//! Each test checks that the daemon never panics or exits, that every bad file or row is
//! quarantined in `rejected/` with a reason a person can act on, that the good rows of the
//! same file still alert, that no bad row ever alerts, and that memory stays bounded.
//!
//! Sample ids say what should happen to a row: `X-NZn` is a good row with a nitazene (it must
//! alert), `X-n` a good row without one, `X-BADn` a bad row (it must never alert).
//!
//! A bug found here is first pinned by a test marked `#[ignore = "BUG: ..."]` (run them with
//! `cargo test --test bad_input -- --ignored`), and the mark goes when it is fixed. None is
//! open now.

mod e2e_support;
mod support;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_support::*;
use support::{Daemon, Received, wait_until, write_atomically};

/// The committed corpus.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/drug_testing")
}

/// The `max_file_bytes` of these tests: small, so an oversized file is cheap to make.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Peak memory allowed to the daemon (VmHWM) after any of these tests.
const MAX_RSS_KB: u64 = 200 * 1024;

/// What must become of a file.
#[derive(Clone, Debug)]
enum Want {
    /// Processed and moved to `processed/`: `rows` records read, of which the rejected ones
    /// are listed by what their line in `errors.txt` must say (each line holds every one of
    /// its substrings). `alerts`: the nitazene samples that must reach the panel.
    Processed {
        rows: u64,
        rejected: &'static [&'static [&'static str]],
        alerts: &'static [&'static str],
        encoding: Option<&'static str>,
    },
    /// Moved whole to `rejected/`, its `errors.txt` saying every one of these.
    Rejected(&'static [&'static str]),
}

/// How a file arrives.
#[derive(Clone, Debug)]
enum Content {
    Bytes(Vec<u8>),
    /// A symbolic link to this file (outside the feed folder, written first).
    Symlink {
        target: PathBuf,
        target_content: Vec<u8>,
    },
}

/// One file dropped into the feed folder.
#[derive(Clone, Debug)]
struct Input {
    /// The name on disk.
    disk_name: OsString,
    /// The name the daemon logs (lossy UTF-8 of `disk_name`); it files the
    /// file under `disk_name` itself, bytes and all.
    shown: String,
    content: Content,
    want: Want,
}

/// The name the daemon files what it writes about `d` under: its own name and `suffix`.
fn filed_as(d: &Input, suffix: &str) -> OsString {
    let mut name = d.disk_name.clone();
    name.push(suffix);
    name
}

/// The committed corpus, each file with what must become of it.
fn corpus() -> Vec<Input> {
    use Want::*;
    let cases: Vec<(&str, Want)> = vec![
        (
            "utf8-bom.csv",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["BOM-NZ1"],
                encoding: Some("UTF-8 with BOM"),
            },
        ),
        (
            "windows-1252.csv",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["W1252-NZ1"],
                encoding: Some("Windows-1252"),
            },
        ),
        (
            "excel-unicode-text.txt",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["U16-NZ1"],
                encoding: Some("UTF-16LE"),
            },
        ),
        (
            "cr-only.csv",
            Processed {
                rows: 3,
                rejected: &[&[
                    "row 2 (line 3)",
                    "`tested_at` value `04/11/2025 09:12` is not a time",
                ]],
                alerts: &["CR-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "quoted-newlines.csv",
            Processed {
                rows: 4,
                rejected: &[&["row 3", "`tested_at` value `yesterday` is not a time"]],
                alerts: &["QNL-NZ1", "QNL-NZ2"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "unterminated-quote.csv",
            Processed {
                rows: 2,
                rejected: &[&["row 2", "8 fields but the header has 16", "quote"]],
                alerts: &["UQ-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            // Every field count is right here: only the quote left open tells.
            "unterminated-quote-last-column.csv",
            Processed {
                rows: 2,
                rejected: &[&[
                    "row 2 (line 3)",
                    "unclosed quote starting on line 3",
                    "lines 3 to 5 were read as one row",
                ]],
                alerts: &["UQL-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "semicolon.csv",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["SEMI-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "semicolon-windows-1252.csv",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["SEMI1252-NZ1"],
                encoding: Some("Windows-1252"),
            },
        ),
        (
            "extra-and-missing-columns.csv",
            Processed {
                rows: 5,
                rejected: &[
                    &["row 2", "18 fields but the header has 16"],
                    &["row 4", "13 fields but the header has 16"],
                ],
                alerts: &["COL-NZ1", "COL-NZ2"],
                encoding: Some("UTF-8"),
            },
        ),
        ("empty.csv", Rejected(&["the file is empty"])),
        (
            "results.xlsx",
            Rejected(&["cannot read the file as an xlsx workbook"]),
        ),
        (
            "bad-lines.jsonl",
            Processed {
                rows: 8,
                rejected: &[
                    &["row 2 (line 2)", "invalid JSON"],
                    &["row 3 (line 3)", "invalid JSON"],
                    &["row 5 (line 6)", "invalid JSON", "trailing comma"],
                    &["row 6 (line 7)", "expected a JSON object", "array"],
                    &["row 7 (line 8)", "`sample_id` (the record id) is empty"],
                ],
                alerts: &["JL-NZ1", "JL-NZ2"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "wrapped-object.json",
            Rejected(&["expected a JSON array of objects", "found an object"]),
        ),
        (
            "mixed-array.json",
            Processed {
                rows: 5,
                rejected: &[
                    &["row 2 (line 20)", "element 2", "a string, not an object"],
                    &["row 3 (line 21)", "element 3", "null, not an object"],
                    &["row 4 (line 22)", "element 4", "an array, not an object"],
                ],
                alerts: &["JA-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "résultats 4 nov.csv",
            Processed {
                rows: 2,
                rejected: &[&["row 2", "`4 nov. 2025 09:12` is not a time", "RFC 3339"]],
                alerts: &["FR-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "renamed-columns.csv",
            Rejected(&["no `sample_id` column", "Sample ID"]),
        ),
        (
            "uk-dates.csv",
            Processed {
                rows: 2,
                rejected: &[&[
                    "row 1 (line 2)",
                    "`04/11/2025 09:12` is not a time",
                    "time_format",
                ]],
                alerts: &["UK-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
        // UTF-16 without a BOM cannot be told from binary by its bytes: refused, never misread.
        ("utf16-no-bom.csv", Rejected(&["NUL"])),
        (
            "header-only.csv",
            Processed {
                rows: 0,
                rejected: &[],
                alerts: &[],
                encoding: Some("UTF-8"),
            },
        ),
        (
            "blank-lines.csv",
            Processed {
                rows: 2,
                rejected: &[],
                alerts: &["WS-NZ1"],
                encoding: Some("UTF-8"),
            },
        ),
    ];
    let mut inputs: Vec<Input> = cases
        .into_iter()
        .map(|(name, want)| Input {
            disk_name: name.into(),
            shown: name.to_string(),
            content: Content::Bytes(fs::read(corpus_dir().join(name)).unwrap_or_else(|e| {
                panic!("tests/corpus/drug_testing/{name}: {e}; run tests/corpus/make.py")
            })),
            want,
        })
        .collect();
    let on_disk = names_in(&corpus_dir())
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .count();
    assert_eq!(
        on_disk,
        inputs.len(),
        "every file of tests/corpus/drug_testing/ has a case here (and no case lacks its file)"
    );
    inputs.extend(runtime_inputs());
    inputs
}

/// Inputs made at run time: too big to commit, links, and names git cannot carry.
fn runtime_inputs() -> Vec<Input> {
    let mut inputs = Vec::new();

    // A symbolic link to a good file outside the feed folder: never followed.
    inputs.push(Input {
        disk_name: "link.csv".into(),
        shown: "link.csv".into(),
        content: Content::Symlink {
            target: PathBuf::from("outside/secret.csv"),
            target_content: csv(&[row(
                "LINK-BAD1",
                "Bolton",
                "protonitazene",
                "",
                "behind a link",
            )])
            .into_bytes(),
        },
        want: Want::Rejected(&["symbolic link", "never follow"]),
    });

    // Over max_file_bytes, made of good nitazene rows: refused whole, none of them alerts.
    let mut rows = Vec::new();
    let mut n = 0;
    while rows.iter().map(|r: &String| r.len() + 1).sum::<usize>() <= MAX_FILE_BYTES as usize {
        n += 1;
        rows.push(row(
            &format!("BIG-BAD{n}"),
            "Bolton",
            "protonitazene",
            "",
            "oversized file",
        ));
    }
    inputs.push(Input {
        disk_name: "oversized.csv".into(),
        shown: "oversized.csv".into(),
        content: Content::Bytes(csv(&rows).into_bytes()),
        want: Want::Rejected(&["over the feed's limit", "max_file_bytes", "split it"]),
    });

    // A name in Latin-1 (from a Windows share), not UTF-8: read, logged under a lossy name, filed under its own.
    inputs.push(Input {
        disk_name: OsString::from_vec(b"r\xe9sultats.csv".to_vec()),
        shown: "r\u{FFFD}sultats.csv".into(),
        content: Content::Bytes(
            csv(&[row(
                "L1N-NZ1",
                "Bolton",
                "isotonitazene",
                "",
                "Latin-1 file name",
            )])
            .into_bytes(),
        ),
        want: Want::Processed {
            rows: 1,
            rejected: &[],
            alerts: &["L1N-NZ1"],
            encoding: Some("UTF-8"),
        },
    });
    inputs
}

/// A config for these tests under `dir`, with a small `max_file_bytes`.
fn config(dir: &Path, max_file_bytes: u64) -> PathBuf {
    Cfg {
        feed_extra: format!("max_file_bytes = {max_file_bytes}\n"),
        ..Cfg::default()
    }
    .write(dir)
}

/// Puts one file in the feed folder the way a producer does (write elsewhere, rename in).
fn drop_file(dir: &Path, d: &Input) {
    let feed = feed_dir(dir);
    match &d.content {
        Content::Bytes(bytes) => {
            let staged = dir.join("staging");
            fs::create_dir_all(&staged).unwrap();
            let tmp = staged.join(&d.disk_name);
            fs::write(&tmp, bytes).unwrap();
            fs::rename(&tmp, feed.join(&d.disk_name)).unwrap();
        }
        Content::Symlink {
            target,
            target_content,
        } => {
            let target = dir.join(target);
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::write(&target, target_content).unwrap();
            std::os::unix::fs::symlink(&target, feed.join(&d.disk_name)).unwrap();
        }
    }
}

/// The daemon's log line saying what became of a file, once it is there.
fn wait_outcome(daemon: &mut Daemon, d: &Input) -> String {
    let needle = format!("file={} ", d.shown);
    let what = match d.want {
        Want::Processed { .. } => "File processed",
        Want::Rejected(_) => "Rejected file",
    };
    wait_log(daemon, &[what, &needle], WAIT)
}

/// Checks everything about one file's outcome that does not need the emails.
fn check_outcome(dir: &Path, daemon: &mut Daemon, d: &Input) {
    let feed = feed_dir(dir);
    let line = wait_outcome(daemon, d);
    let rejected_dir = feed.join("rejected");
    let errors_path = rejected_dir.join(filed_as(d, ".errors.txt"));
    match &d.want {
        Want::Processed {
            rows,
            rejected,
            encoding,
            ..
        } => {
            assert_eq!(
                field(&line, "rows"),
                Some(rows.to_string()),
                "{}: {line}",
                d.shown
            );
            assert_eq!(
                field(&line, "rejected"),
                Some(rejected.len().to_string()),
                "{}: {line}",
                d.shown
            );
            if let Some(enc) = encoding {
                assert_eq!(
                    field(&line, "encoding").as_deref(),
                    Some(*enc),
                    "{}: {line}",
                    d.shown
                );
            }
            assert!(
                wait_until(WAIT, || feed.join("processed").join(&d.disk_name).exists()),
                "{} moved to processed/: {:?}",
                d.shown,
                names_in(&feed.join("processed"))
            );
            if rejected.is_empty() {
                assert!(
                    !errors_path.exists(),
                    "{}: no errors.txt for a file without bad rows",
                    d.shown
                );
            } else {
                let errors = fs::read_to_string(&errors_path)
                    .unwrap_or_else(|e| panic!("rejected/{}.errors.txt: {e}", d.shown));
                let lines: Vec<&str> = errors.lines().collect();
                assert_eq!(
                    lines.len(),
                    rejected.len(),
                    "{}: one line per bad row:\n{errors}",
                    d.shown
                );
                for (got, want) in lines.iter().zip(rejected.iter()) {
                    for w in *want {
                        assert!(
                            got.contains(w),
                            "{}: `{w}` in the errors.txt line `{got}`",
                            d.shown
                        );
                    }
                }
                // SPEC §4: `NAME.rows.csv` whatever the format (a JSON array's
                // bad elements are kept there as an array).
                assert!(
                    rejected_dir.join(filed_as(d, ".rows.csv")).exists(),
                    "{}: the bad rows are kept verbatim beside errors.txt",
                    d.shown
                );
            }
        }
        Want::Rejected(reasons) => {
            for r in *reasons {
                assert!(
                    line.contains(r),
                    "{}: `{r}` in the log line: {line}",
                    d.shown
                );
            }
            let moved = rejected_dir.join(&d.disk_name);
            assert!(
                wait_until(WAIT, || fs::symlink_metadata(&moved).is_ok()),
                "{} moved whole to rejected/: {:?}",
                d.shown,
                names_in(&rejected_dir)
            );
            let errors = fs::read_to_string(&errors_path)
                .unwrap_or_else(|e| panic!("rejected/{}.errors.txt: {e}", d.shown));
            assert!(
                errors.starts_with(&format!("{}: ", d.shown)),
                "{}: {errors}",
                d.shown
            );
            for r in *reasons {
                assert!(
                    errors.contains(r),
                    "{}: `{r}` in errors.txt: {errors}",
                    d.shown
                );
            }
            assert_eq!(errors.lines().count(), 1, "{}: {errors}", d.shown);
            if let Content::Bytes(bytes) = &d.content {
                assert_eq!(
                    &fs::read(&moved).unwrap(),
                    bytes,
                    "{}: moved whole, unchanged",
                    d.shown
                );
            } else {
                assert!(
                    fs::symlink_metadata(&moved)
                        .unwrap()
                        .file_type()
                        .is_symlink()
                );
            }
        }
    }
    assert!(
        fs::symlink_metadata(feed.join(&d.disk_name)).is_err(),
        "{} left the feed folder",
        d.shown
    );
}

/// The nitazene samples that must alert for these inputs.
fn expected_alert_ids(inputs: &[Input]) -> Vec<&'static str> {
    inputs
        .iter()
        .flat_map(|d| match &d.want {
            Want::Processed { alerts, .. } => alerts.to_vec(),
            Want::Rejected(_) => Vec::new(),
        })
        .collect()
}

/// Checks the emails: every expected sample alerted, no bad row ever did.
fn check_mails(mails: &[Received], expected: &[&str]) {
    let bodies: Vec<String> = mails
        .iter()
        .map(|m| m.text_body().unwrap_or_default())
        .collect();
    for id in expected {
        assert!(
            bodies.iter().any(|b| b.contains(id)),
            "{id} alerted; the alerts are:\n{}",
            bodies.join("\n----\n")
        );
    }
    for b in &bodies {
        assert!(!b.contains("-BAD"), "a bad row alerted:\n{b}");
    }
}

/// The daemon is alive and has not panicked.
fn check_alive(daemon: &mut Daemon) {
    assert!(
        daemon.is_running(),
        "earlywarn exited; log:\n{}",
        log(daemon)
    );
    assert!(
        !log(daemon).contains("panicked"),
        "earlywarn panicked; log:\n{}",
        log(daemon)
    );
}

/// Peak resident memory of the daemon in KiB (VmHWM).
fn peak_rss_kb(daemon: &Daemon) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn check_memory(daemon: &Daemon) -> u64 {
    let kb = peak_rss_kb(daemon);
    assert!(
        kb < MAX_RSS_KB,
        "the daemon peaked at {} MiB (VmHWM), over {} MiB",
        kb / 1024,
        MAX_RSS_KB / 1024
    );
    kb
}

/// Content checks that need a file's own knowledge (text decoded right, rows kept verbatim).
fn check_details(dir: &Path, mails: &[Received]) {
    let feed = feed_dir(dir);
    let body_with = |id: &str| {
        mails
            .iter()
            .map(|m| m.text_body().unwrap_or_default())
            .find(|b| b.contains(id))
            .unwrap_or_else(|| panic!("an alert with {id}"))
    };
    // Decoded, not mangled: Windows-1252 and UTF-16 text arrives as written.
    let w = body_with("W1252-NZ1");
    assert!(
        w.contains("sold for £10 near the café – “strong” batch"),
        "{w}"
    );
    let u = body_with("U16-NZ1");
    assert!(u.contains("Ünïcödé notes, with a comma"), "{u}");
    let b = body_with("BOM-NZ1");
    assert!(b.contains("naïve user – two naloxone doses"), "{b}");
    // A note over three lines stays one field of one record.
    let q = body_with("QNL-NZ1");
    assert!(q.contains("Two doses of naloxone."), "{q}");
    for body in [&w, &u, &b, &q] {
        assert!(
            !body.contains('\u{FFFD}'),
            "no replacement characters:\n{body}"
        );
    }

    let rejected = feed.join("rejected");
    let corpus_text = |name: &str| fs::read_to_string(corpus_dir().join(name)).unwrap();
    // Extra and missing columns: the header and exactly the two bad rows, verbatim.
    let text = corpus_text("extra-and-missing-columns.csv");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        fs::read_to_string(rejected.join("extra-and-missing-columns.csv.rows.csv")).unwrap(),
        format!("{}\n{}\n{}\n", lines[0], lines[2], lines[4])
    );
    // An unterminated quote: the row and every row it swallowed are kept, so nothing is lost.
    let text = corpus_text("unterminated-quote.csv");
    let kept = fs::read_to_string(rejected.join("unterminated-quote.csv.rows.csv")).unwrap();
    for l in text.lines().filter(|l| l.contains("-BAD")) {
        assert!(
            kept.contains(l),
            "`{l}` kept in rejected/unterminated-quote.csv.rows.csv:\n{kept}"
        );
    }
    // JSON lines: each bad line verbatim.
    let text = corpus_text("bad-lines.jsonl");
    let kept = fs::read_to_string(rejected.join("bad-lines.jsonl.rows.csv")).unwrap();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("\"JL-NZ") && !l.contains("\"JL-1\""))
        .collect();
    assert_eq!(bad.len(), 5);
    assert_eq!(
        kept,
        bad.iter().map(|l| format!("{l}\n")).collect::<String>()
    );
    // The name with spaces and accents is kept as it was.
    assert!(feed.join("processed/résultats 4 nov.csv").exists());
    assert!(rejected.join("résultats 4 nov.csv.rows.csv").exists());
}

/// Waits until every alert raised so far has been written as an email; returns the emails.
fn wait_all_mail(dir: &Path, daemon: &mut Daemon) -> Vec<Received> {
    let raised = log_lines(daemon, &["Alert raised"]).len();
    let mails = wait_eml(&dir.join("mail"), raised, WAIT);
    assert_eq!(mails.len(), raised, "one email per alert (one partner)");
    mails
}

#[test]
fn the_whole_corpus_dropped_at_once() {
    let dir = tempdir();
    let config = config(dir.path(), MAX_FILE_BYTES);
    let mut daemon = start_daemon(&config);
    let inputs = corpus();
    // A folder among the files, holding a good file: never descended into.
    let sub = feed_dir(dir.path()).join("subfolder");
    fs::create_dir_all(&sub).unwrap();
    fs::write(
        sub.join("inside.csv"),
        csv(&[row(
            "SUB-BAD1",
            "Bolton",
            "protonitazene",
            "",
            "in a folder",
        )]),
    )
    .unwrap();
    for d in &inputs {
        drop_file(dir.path(), d);
    }
    for d in &inputs {
        check_outcome(dir.path(), &mut daemon, d);
    }
    assert!(
        sub.join("inside.csv").exists(),
        "a folder's files are left alone"
    );
    check_alive(&mut daemon);
    let feed = feed_dir(dir.path());
    let left: Vec<String> = names_in(&feed)
        .into_iter()
        .filter(|n| n != "processed" && n != "rejected" && n != "subfolder")
        .collect();
    assert!(
        left.is_empty(),
        "nothing is left in the feed folder: {left:?}"
    );

    let mails = wait_all_mail(dir.path(), &mut daemon);
    check_mails(&mails, &expected_alert_ids(&inputs));
    check_details(dir.path(), &mails);
    // One alert per file with nitazenes (each file's samples share a district).
    let files_alerting = inputs
        .iter()
        .filter(|d| matches!(d.want, Want::Processed { alerts, .. } if !alerts.is_empty()))
        .count();
    assert_eq!(mails.len(), files_alerting);

    // Every file refused whole is listed by `status`.
    let status = status_json(&config);
    let listed: Vec<String> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["whole_file"] == true)
        .map(|r| r["name"].as_str().unwrap_or("").to_string())
        .collect();
    for d in inputs
        .iter()
        .filter(|d| matches!(d.want, Want::Rejected(_)))
    {
        assert!(
            listed.contains(&d.shown),
            "{} in status: {listed:?}",
            d.shown
        );
    }
    check_alive(&mut daemon);
    let kb = check_memory(&daemon);
    eprintln!(
        "whole corpus at once: {} files, {} alerts, peak RSS {} MiB",
        inputs.len(),
        mails.len(),
        kb / 1024
    );
    stop_daemon(daemon);
}

#[test]
fn the_corpus_dropped_one_by_one() {
    let dir = tempdir();
    let config = config(dir.path(), MAX_FILE_BYTES);
    let mut daemon = start_daemon(&config);
    let mail = dir.path().join("mail");
    let inputs = corpus();
    for d in &inputs {
        let seen: Vec<String> = eml_messages(&mail).into_iter().map(|m| m.data).collect();
        drop_file(dir.path(), d);
        check_outcome(dir.path(), &mut daemon, d);
        check_alive(&mut daemon);
        // This file's alerts, and only them.
        let alerts: Vec<&str> = match &d.want {
            Want::Processed { alerts, .. } => alerts.to_vec(),
            Want::Rejected(_) => Vec::new(),
        };
        let mails = if alerts.is_empty() {
            // Give a wrongly raised alert the time to show.
            std::thread::sleep(Duration::from_millis(200));
            eml_messages(&mail)
        } else {
            wait_eml(&mail, seen.len() + 1, WAIT)
        };
        // The file transport names emails by alert, not in order: new ones are those not seen.
        let new: Vec<Received> = mails
            .into_iter()
            .filter(|m| !seen.contains(&m.data))
            .collect();
        assert_eq!(
            new.len(),
            usize::from(!alerts.is_empty()),
            "{}: one alert or none",
            d.shown
        );
        check_mails(&new, &alerts);
    }
    let mails = wait_all_mail(dir.path(), &mut daemon);
    check_details(dir.path(), &mails);
    check_alive(&mut daemon);
    check_memory(&daemon);
    stop_daemon(daemon);
}

/// A 10 MB line, a 10 MB file without any line end, and a file over `max_file_bytes`:
/// refused or quarantined with short reasons, good rows still alert, memory stays bounded.
#[test]
fn ten_megabyte_lines_and_an_oversized_file_keep_memory_bounded() {
    const TEN_MB: usize = 10 * 1000 * 1000;
    let dir = tempdir();
    let config = config(dir.path(), 12 * 1000 * 1000);
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    // The rows of an export whose line ends were lost: one 10 MB line, then a good row.
    let glued_row = row("TEN-BAD1", "Wigan", "protonitazene", "", "glued");
    let mut glued = String::with_capacity(TEN_MB + glued_row.len());
    while glued.len() < TEN_MB {
        glued.push_str(&glued_row);
        glued.push(',');
    }
    let good = row(
        "TEN-NZ1",
        "Wigan",
        "isotonitazene",
        "",
        "after the long line",
    );
    let content = format!("{HEADER}\n{glued}\n{good}\n");
    write_atomically(&feed, "ten-mb-line.csv", &content);
    let line = wait_log(
        &mut daemon,
        &["File processed", "file=ten-mb-line.csv "],
        Duration::from_secs(20),
    );
    assert_eq!(field(&line, "rows").as_deref(), Some("2"), "{line}");
    assert_eq!(field(&line, "rejected").as_deref(), Some("1"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let errors = fs::read_to_string(feed.join("rejected/ten-mb-line.csv.errors.txt")).unwrap();
    assert!(
        errors.starts_with("row 1 (line 2): this row has "),
        "{}",
        &errors[..errors.len().min(300)]
    );
    assert!(
        errors.contains("fields but the header has 16"),
        "{}",
        &errors[..errors.len().min(300)]
    );
    assert!(
        errors.len() < 1000,
        "a short reason, not the row: {} bytes",
        errors.len()
    );
    let kept = fs::read(feed.join("rejected/ten-mb-line.csv.rows.csv")).unwrap();
    assert_eq!(
        kept,
        format!("{HEADER}\n{glued}\n").into_bytes(),
        "the long line kept verbatim"
    );
    check_alive(&mut daemon);

    // An oversized file (a day of exports concatenated): refused before it is read.
    let mut big = String::from(HEADER);
    big.push('\n');
    let mut n = 0;
    while big.len() <= 12 * 1000 * 1000 {
        n += 1;
        big.push_str(&row(
            &format!("OVR-BAD{n}"),
            "Wigan",
            "protonitazene",
            "",
            "too big",
        ));
        big.push('\n');
    }
    write_atomically(&feed, "oversized.csv", &big);
    let line = wait_log(&mut daemon, &["Rejected file", "file=oversized.csv "], WAIT);
    assert!(line.contains("max_file_bytes"), "{line}");
    assert!(wait_until(WAIT, || feed
        .join("rejected/oversized.csv")
        .exists()));
    check_alive(&mut daemon);

    let mails = wait_all_mail(dir.path(), &mut daemon);
    check_mails(&mails, &["TEN-NZ1"]);
    assert_eq!(mails.len(), 1);
    let kb = check_memory(&daemon);
    eprintln!("10 MB line and a 12 MB file: peak RSS {} MiB", kb / 1024);
    stop_daemon(daemon);
}

/// A 10 MB file with no delimiter and no line end (a dump of something else): its "header" is
/// one 10 MB column name. Refused whole, and the reason quoting the header stays short: it is
/// logged, stored, shown by `status` and emailed to ops.
#[test]
fn a_ten_megabyte_file_without_line_ends_is_refused_with_a_short_reason() {
    let dir = tempdir();
    let config = config(dir.path(), 12 * 1000 * 1000);
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let blob = "A".repeat(10 * 1000 * 1000);
    write_atomically(&feed, "no-line-end.csv", &blob);
    assert!(
        wait_until(Duration::from_secs(20), || {
            feed.join("rejected/no-line-end.csv.errors.txt").exists()
        }),
        "no-line-end.csv refused; log:\n{}",
        log(&daemon)
    );
    check_alive(&mut daemon);
    let errors = fs::read_to_string(feed.join("rejected/no-line-end.csv.errors.txt")).unwrap();
    assert!(
        errors.contains("no `sample_id` column"),
        "{}",
        &errors[..errors.len().min(300)]
    );
    assert!(
        errors.len() < 2000,
        "a short reason, not the header: {} bytes",
        errors.len()
    );
    let longest = log(&daemon).lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a log line of {longest} bytes");
    check_memory(&daemon);
    stop_daemon(daemon);
}

/// Runs one corpus file through a fresh daemon; returns the temp dir and the daemon.
fn one_file(name: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempdir();
    let config = config(dir.path(), MAX_FILE_BYTES);
    let mut daemon = start_daemon(&config);
    let bytes = fs::read(corpus_dir().join(name)).unwrap();
    write_atomically(&feed_dir(dir.path()), name, &bytes);
    wait_log(
        &mut daemon,
        &["File processed", &format!("file={name} ")],
        WAIT,
    );
    check_alive(&mut daemon);
    (dir, daemon)
}

/// An unterminated quote in the last column swallows every row after it into one note: those
/// samples (two nitazenes here) go to `rejected/` with a reason naming the quote. Found here:
/// the row's field count was right, so it was taken as good and the rows after it vanished.
#[test]
fn an_unterminated_quote_in_the_last_column_loses_no_row_silently() {
    let (dir, daemon) = one_file("unterminated-quote-last-column.csv");
    let feed = feed_dir(dir.path());
    let line = log_lines(
        &daemon,
        &["File processed", "file=unterminated-quote-last-column.csv "],
    )
    .remove(0);
    let errors =
        fs::read_to_string(feed.join("rejected/unterminated-quote-last-column.csv.errors.txt"))
            .unwrap_or_else(|_| {
                panic!("no errors.txt: the rows after the quote were swallowed silently; {line}")
            });
    assert!(
        errors.contains("quote"),
        "the reason names the quote: {errors}"
    );
    let kept =
        fs::read_to_string(feed.join("rejected/unterminated-quote-last-column.csv.rows.csv"))
            .unwrap();
    for id in ["UQL-BAD1", "UQL-BAD2", "UQL-BAD3"] {
        assert!(kept.contains(id), "{id} kept in rejected/:\n{kept}");
    }
    stop_daemon(daemon);
}

/// CRLF files (what Excel writes): errors.txt gives the bad row's true line and rows.csv keeps
/// it verbatim. Found here: the csv reader leaves each CRLF's LF to the next record, so lines
/// were one too small and the quarantined row started with the previous row's LF.
#[test]
fn crlf_files_report_true_line_numbers_and_keep_rows_verbatim() {
    let dir = tempdir();
    let config = config(dir.path(), MAX_FILE_BYTES);
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let bad = row_at(
        "CRLF-BAD1",
        "yesterday",
        "Bolton",
        "heroin",
        "protonitazene",
        "",
        "x",
    );
    let text = format!(
        "{HEADER}\r\n{}\r\n{bad}\r\n{}\r\n",
        row("CRLF-NZ1", "Bolton", "protonitazene", "", "good"),
        row("CRLF-1", "Bolton", "cocaine", "", "good")
    );
    write_atomically(&feed, "crlf.csv", &text);
    wait_log(&mut daemon, &["File processed", "file=crlf.csv "], WAIT);
    let errors = fs::read_to_string(feed.join("rejected/crlf.csv.errors.txt")).unwrap();
    assert!(
        errors.starts_with("row 2 (line 3): "),
        "the bad row is on line 3: {errors}"
    );
    let kept = fs::read_to_string(feed.join("rejected/crlf.csv.rows.csv")).unwrap();
    assert_eq!(
        kept,
        format!("{HEADER}\r\n{bad}\r\n"),
        "header and bad row, verbatim"
    );
    stop_daemon(daemon);
}

/// CR-only files (old Mac exports): rows.csv keeps the header and the bad row only, and
/// errors.txt gives its line. Found here: rows.csv held the whole file as its "header" (good
/// rows included), and every row was reported on line 1 (the csv reader counts only LF).
#[test]
fn cr_only_files_quarantine_only_the_bad_row_with_its_line() {
    let (dir, daemon) = one_file("cr-only.csv");
    let feed = feed_dir(dir.path());
    let text = fs::read_to_string(corpus_dir().join("cr-only.csv")).unwrap();
    let lines: Vec<&str> = text.split('\r').collect();
    let errors = fs::read_to_string(feed.join("rejected/cr-only.csv.errors.txt")).unwrap();
    assert!(errors.starts_with("row 2 (line 3): "), "{errors}");
    let kept = fs::read_to_string(feed.join("rejected/cr-only.csv.rows.csv")).unwrap();
    assert!(
        !kept.contains("CR-NZ1") && !kept.contains("CR-1,"),
        "good rows are not quarantined:\n{kept:?}"
    );
    assert!(
        kept.starts_with(lines[0]) && kept.contains(lines[2]),
        "{kept:?}"
    );
    stop_daemon(daemon);
}

/// A `when` nested 50,000 parentheses deep: `check` must refuse it with a message, not abort
/// on a stack overflow (the condition parser recurses once per level; the daemon would abort
/// the same way on reloading such a rule file, and again at every restart).
#[test]
fn a_deeply_nested_condition_is_refused_not_a_stack_overflow() {
    let dir = tempdir();
    let depth = 50_000;
    let when = format!(
        "{}district == \"Bolton\"{}",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    let rules = format!(
        "{NITAZENE_LISTS}\n[[rule]]\nid = \"deep\"\nname = \"Deep\"\nfeed = \"drug_testing\"\nwhen = '{when}'\nseverity = \"info\"\nnotify = [\"panel\"]\n"
    );
    let config = Cfg {
        rules,
        ..Cfg::default()
    }
    .write(dir.path());
    let out = support::earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check exits 1 with a message, not {:?}: {}",
        out.status,
        &stderr[..stderr.len().min(500)]
    );
    assert!(
        stderr.contains("rules.toml:"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
}

/// A `when` of 100,000 comparisons joined by `or` (a rule generated from a long list of
/// names, where a `[lists]` list was meant): `check` and `replay` may accept or refuse it, but
/// must not abort. Found here: the parser built `or` chains into a left-deep tree that was
/// walked recursively (fields, evaluation, drop) and overflowed the stack; conditions now join
/// at most 256 parts.
#[test]
fn a_very_long_or_chain_does_not_abort() {
    let dir = tempdir();
    let when = (0..100_000)
        .map(|i| format!("substances_major == \"x{i}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let rules = format!(
        "[[rule]]\nid = \"chain\"\nname = \"Chain\"\nfeed = \"drug_testing\"\nwhen = '{when}'\nseverity = \"info\"\nnotify = [\"panel\"]\n"
    );
    let config = Cfg {
        rules,
        ..Cfg::default()
    }
    .write(dir.path());
    let out = support::earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "check exits 0 or 1, not {:?}: {}",
        out.status,
        &stderr[..stderr.len().min(500)]
    );
    let file = corpus_dir().join("utf8-bom.csv");
    let out = support::earlywarn(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--feed",
        "drug_testing",
        file.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "replay exits 0 or 1, not {:?}: {}",
        out.status,
        &stderr[..stderr.len().min(500)]
    );
}

/// A JSON array with elements that are not records: errors.txt names them, and like CSV and
/// JSON lines `rejected/` keeps the bad elements themselves (SPEC §4: "the original rows,
/// verbatim"), as an array in `NAME.rows.csv` (the name SPEC §4 gives, whatever the format).
/// Found here: nothing kept them, so a person had
/// to dig them out of `processed/`.
#[test]
fn bad_elements_of_a_json_array_are_kept_in_rejected() {
    let (dir, daemon) = one_file("mixed-array.json");
    let rejected = feed_dir(dir.path()).join("rejected");
    let kept: String = names_in(&rejected)
        .iter()
        .filter(|n| !n.ends_with(".errors.txt"))
        .map(|n| fs::read_to_string(rejected.join(n)).unwrap_or_default())
        .collect();
    for bad in ["JA-BAD1 isotonitazene", "JA-BAD2"] {
        assert!(
            kept.contains(bad),
            "`{bad}` kept in rejected/ {:?}",
            names_in(&rejected)
        );
    }
    // Kept as an array of the bad elements only, so the file can be fixed and dropped again.
    let rows = fs::read_to_string(rejected.join("mixed-array.json.rows.csv")).unwrap();
    let array: serde_json::Value =
        serde_json::from_str(&rows).unwrap_or_else(|e| panic!("{e}: {rows}"));
    assert_eq!(
        array.as_array().map(Vec::len),
        Some(3),
        "the three bad elements: {rows}"
    );
    assert!(!rows.contains("JA-NZ1") && !rows.contains("JA-1"), "{rows}");
    stop_daemon(daemon);
}

/// `earlywarn replay` reads a file as the daemon does: a rule writer tries rules on real
/// exports with it. A European Excel export (semicolons, Windows-1252) once alerted in the
/// daemon but was refused by replay, which sniffed the delimiter in the decoder's first read
/// (3 bytes); found by the fuzzers' replay-versus-daemon check.
#[test]
fn replay_reads_a_windows_1252_semicolon_export_like_the_daemon() {
    let dir = tempdir();
    let config = config(dir.path(), MAX_FILE_BYTES);
    let file = corpus_dir().join("semicolon-windows-1252.csv");
    let out = support::earlywarn(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--feed",
        "drug_testing",
        "--format",
        "json",
        file.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stdout.contains("SEMI1252-NZ1"),
        "the nitazene sample alerts in replay as in the daemon:\n{stdout}\n{stderr}"
    );
}
