//! End to end: how files come into a feed folder (SPEC §4) — slow writers, atomic drops,
//! encodings, bad rows, duplicates, links, oversized, empty and binary files — with the real
//! daemon. Mail goes to `.eml` files (file transport) except where SMTP is the point.
//!
//! Run with `cargo test --test e2e_files`.

mod e2e_support;
mod support;

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use e2e_support::*;
use support::{SmtpOptions, SmtpServer, wait_until, write_atomically};

fn mail_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("mail")
}

/// Encodes text as Windows-1252 (ASCII plus the few characters the tests use).
fn windows_1252(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            'é' => 0xE9,
            'è' => 0xE8,
            '–' => 0x96,
            '£' => 0xA3,
            c if c.is_ascii() => c as u8,
            other => panic!("no Windows-1252 byte for {other:?} in this test"),
        })
        .collect()
}

#[test]
fn a_slow_in_place_writer_is_read_once_whole_after_it_settles() {
    let dir = tempdir();
    let config = Cfg {
        settle: "1s".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    let mut rows = Vec::new();
    for i in 1..=12 {
        let (major, notes) = match i {
            2 | 7 | 12 => ("protonitazene", format!("nitazene row {i}")),
            _ => ("cocaine", format!("ordinary row {i}")),
        };
        rows.push(row(&format!("SLOW-{i:02}"), "Bolton", major, "", &notes));
    }
    let content = csv(&rows);
    let bytes = content.as_bytes();

    // Eight chunks over ~2.5 s, cut mid-row, to the final name: no rename.
    let path = feed_dir(dir.path()).join("slow.csv");
    let mut f = File::create(&path).unwrap();
    let chunks = 8;
    let size = bytes.len().div_ceil(chunks);
    for (i, chunk) in bytes.chunks(size).enumerate() {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        f.sync_data().unwrap();
        if i + 1 < chunks {
            thread::sleep(Duration::from_millis(350));
        }
        assert!(
            log_lines(&daemon, &["File processed", "slow.csv"]).is_empty(),
            "slow.csv was processed while still being written (after chunk {}):\n{}",
            i + 1,
            log(&daemon)
        );
    }
    drop(f);

    let line = wait_log(&mut daemon, &["File processed", "slow.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("12"), "{line}");
    assert_eq!(field(&line, "rejected").as_deref(), Some("0"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let alerts = log_lines(&daemon, &["Alert raised"]);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        field(&alerts[0], "events").as_deref(),
        Some("3"),
        "{}",
        alerts[0]
    );

    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    assert_eq!(mails.len(), 1);
    let text = mails[0].text_body().unwrap();
    for id in ["SLOW-02", "SLOW-07", "SLOW-12"] {
        assert!(text.contains(id), "{id} in the alert:\n{text}");
    }
    assert!(feed_dir(dir.path()).join("processed/slow.csv").exists());
    assert_eq!(
        fs::read(feed_dir(dir.path()).join("processed/slow.csv")).unwrap(),
        bytes
    );
    assert!(names_in(&feed_dir(dir.path()).join("rejected")).is_empty());

    // Still exactly once: the file is in processed/ (not to be read again) and its email is
    // marked sent (not to be sent again).
    support::wait_outbox_drained(&config);
    assert_eq!(
        log_lines(&daemon, &["File processed"]).len(),
        1,
        "{}",
        log(&daemon)
    );
    assert_eq!(eml_messages(&mail_dir(dir.path())).len(), 1);
    stop_daemon(daemon);
}

#[test]
fn an_atomic_rename_is_processed_at_once_and_mailed_over_smtp() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    // A long settle interval: only the rename can make the file ready quickly.
    let config = Cfg {
        settle: "20s".into(),
        rescan_interval: "60s".into(),
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    let started = Instant::now();
    write_atomically(
        &feed_dir(dir.path()),
        "drop.csv",
        csv(&[
            row("R-1", "Salford", "isotonitazene", "", "renamed in"),
            row("R-2", "Salford", "cocaine", "", "x"),
        ]),
    );
    let msgs = server.wait_for(1, Duration::from_secs(5));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(msgs[0].text_body().unwrap().contains("R-1"));
    let line = wait_log(&mut daemon, &["File processed", "drop.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("2"), "{line}");
    assert!(feed_dir(dir.path()).join("processed/drop.csv").exists());
    assert!(!feed_dir(dir.path()).join(".drop.csv.tmp").exists());
    stop_daemon(daemon);
}

#[test]
fn utf8_bom_and_windows_1252_files_both_alert_with_the_right_text() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    // UTF-8 with a BOM and CRLF line ends, as Excel saves "CSV UTF-8".
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(
        csv(&[row_at(
            "BOM-1",
            "2025-11-04T09:00:00Z",
            "Bolton",
            "oxycodone",
            "protonitazene",
            "",
            "naïve user – café",
        )])
        .replace('\n', "\r\n")
        .into_bytes(),
    );
    write_atomically(&feed, "bom.csv", &bom);
    let line = wait_log(&mut daemon, &["File processed", "bom.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("1"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    assert_eq!(
        field(&line, "encoding").as_deref(),
        Some("UTF-8 with BOM"),
        "{line}"
    );

    // Windows-1252, as Excel saves plain "CSV" on a UK desktop.
    let text = csv(&[
        row_at(
            "WIN-1",
            "2025-11-04T10:00:00Z",
            "Salford",
            "heroin from the café",
            "metonitazene",
            "",
            "sold for £10 near the café – Market St",
        ),
        row_at(
            "WIN-2",
            "2025-11-04T10:05:00Z",
            "Salford",
            "café latte",
            "cocaine",
            "",
            "ordinary",
        ),
    ]);
    let bytes = windows_1252(&text);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the test file must not be valid UTF-8"
    );
    write_atomically(&feed, "win.csv", &bytes);
    let line = wait_log(&mut daemon, &["File processed", "win.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("2"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    assert_eq!(
        field(&line, "encoding").as_deref(),
        Some("Windows-1252"),
        "{line}"
    );
    assert!(
        !log_lines(&daemon, &["Windows-1252", "win.csv"]).is_empty()
            && log(&daemon).contains("decoded as Windows-1252"),
        "{}",
        log(&daemon)
    );

    let mails = wait_eml(&mail_dir(dir.path()), 2, WAIT);
    let bom_mail = mails
        .iter()
        .find(|m| m.text_body().unwrap().contains("BOM-1"))
        .expect("BOM alert");
    assert!(bom_mail.text_body().unwrap().contains("naïve user – café"));
    assert!(bom_mail.subject().unwrap().contains("Bolton"));
    let win_mail = mails
        .iter()
        .find(|m| m.text_body().unwrap().contains("WIN-1"))
        .expect("1252 alert");
    let text = win_mail.text_body().unwrap();
    assert!(text.contains("heroin from the café"), "{text}");
    assert!(
        text.contains("sold for £10 near the café – Market St"),
        "{text}"
    );
    assert!(
        win_mail.html_body().unwrap().contains("café"),
        "HTML decoded too"
    );
    assert!(
        !text.contains('\u{FFFD}'),
        "no replacement characters:\n{text}"
    );
    assert!(win_mail.subject().unwrap().contains("Salford"));
    stop_daemon(daemon);
}

#[test]
fn bad_rows_go_to_rejected_with_reasons_and_the_good_rows_still_alert() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    let good1 = row("B-1", "Bolton", "protonitazene", "", "good one");
    let bad_time = row_at(
        "B-2",
        "yesterday",
        "Bolton",
        "heroin",
        "isotonitazene",
        "",
        "bad time",
    );
    // One column short: no notes column at all.
    let short = row("B-3", "Bolton", "isotonitazene", "", "dropped")
        .rsplit_once(',')
        .unwrap()
        .0
        .to_string();
    let good4 = row("B-4", "Bolton", "metonitazene", "", "good four");
    let plain = row("B-5", "Bolton", "cocaine", "", "ordinary");
    let content = csv(&[good1, bad_time.clone(), short.clone(), good4, plain]);
    write_atomically(&feed, "mixed.csv", &content);

    let line = wait_log(&mut daemon, &["File processed", "mixed.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("5"), "{line}");
    assert_eq!(field(&line, "rejected").as_deref(), Some("2"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let alert = wait_log(&mut daemon, &["Alert raised"], WAIT);
    assert_eq!(field(&alert, "events").as_deref(), Some("2"), "{alert}");

    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    let text = mails[0].text_body().unwrap();
    assert!(text.contains("B-1") && text.contains("B-4"), "{text}");
    assert!(!text.contains("B-2") && !text.contains("B-3"), "{text}");

    let rejected = feed.join("rejected");
    let rows = fs::read_to_string(rejected.join("mixed.csv.rows.csv"))
        .expect("rejected/mixed.csv.rows.csv");
    assert_eq!(
        rows,
        format!("{HEADER}\n{bad_time}\n{short}\n"),
        "header and bad rows, verbatim"
    );
    let errors = fs::read_to_string(rejected.join("mixed.csv.errors.txt"))
        .expect("rejected/mixed.csv.errors.txt");
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 2, "one line per bad row:\n{errors}");
    assert!(
        lines[0].starts_with("row 2")
            && lines[0].contains("`tested_at` value `yesterday` is not a time"),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("row 3") && lines[1].contains("15 fields but the header has 16"),
        "{errors}"
    );
    assert_eq!(
        fs::read_to_string(feed.join("processed/mixed.csv")).unwrap(),
        content,
        "the file itself is processed"
    );
    assert!(!feed.join("mixed.csv").exists());

    let status = status_json(&config);
    let rejected = status["rejected"].as_array().unwrap();
    assert!(
        rejected.iter().any(|r| r["name"] == "mixed.csv"
            && r["rejected_rows"] == 2
            && r["whole_file"] == false),
        "{status:#}"
    );
    stop_daemon(daemon);
}

#[test]
fn duplicate_files_and_redelivered_records_never_alert_twice() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let mail = mail_dir(dir.path());

    let old = row("D-1", "Bolton", "protonitazene", "", "first delivery");
    let content = csv(&[old.clone(), row("D-2", "Bolton", "cocaine", "", "x")]);
    write_atomically(&feed, "monday.csv", &content);
    wait_log(&mut daemon, &["File processed", "monday.csv"], WAIT);
    wait_eml(&mail, 1, WAIT);

    // The same content under another name: moved, no alert.
    write_atomically(&feed, "monday-again.csv", &content);
    let dup = wait_log(
        &mut daemon,
        &[
            "Same content as a file already processed",
            "monday-again.csv",
        ],
        WAIT,
    );
    assert!(dup.contains("drug_testing"), "{dup}");
    assert!(wait_until(WAIT, || feed
        .join("processed/monday-again.csv")
        .exists()));
    assert_eq!(log_lines(&daemon, &["Alert raised"]).len(), 1);

    // A new file with the old record again (same id, same content) and a new nitazene record.
    let new = row("D-9", "Bolton", "isotonitazene", "", "second delivery");
    write_atomically(&feed, "tuesday.csv", csv(&[old, new]));
    let line = wait_log(&mut daemon, &["File processed", "tuesday.csv"], WAIT);
    assert_eq!(field(&line, "rows").as_deref(), Some("2"), "{line}");
    assert_eq!(field(&line, "duplicates").as_deref(), Some("1"), "{line}");
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let alerts = wait_log_lines(&mut daemon, &["Alert raised"], 2, WAIT);
    assert_eq!(
        field(&alerts[1], "events").as_deref(),
        Some("1"),
        "{}",
        alerts[1]
    );

    let mails = wait_eml(&mail, 2, WAIT);
    assert_eq!(mails.len(), 2, "two alerts in all");
    let second = mails
        .iter()
        .find(|m| m.text_body().unwrap().contains("D-9"))
        .expect("the new record's alert");
    assert!(
        !second.text_body().unwrap().contains("D-1"),
        "the old record is not in the new alert"
    );
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.text_body().unwrap().contains("D-1"))
            .count(),
        1
    );
    stop_daemon(daemon);
}

#[test]
fn a_symlink_is_rejected_as_a_link_and_its_target_is_never_read() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = outside.join("secret.csv");
    let content = csv(&[row(
        "L-1",
        "Bolton",
        "protonitazene",
        "",
        "must never be read",
    )]);
    fs::write(&target, &content).unwrap();
    std::os::unix::fs::symlink(&target, feed.join("link.csv")).unwrap();

    let line = wait_log(&mut daemon, &["Rejected file", "link.csv"], WAIT);
    assert!(line.contains("symbolic link"), "{line}");
    let moved = feed.join("rejected/link.csv");
    // The log line comes just before the move.
    assert!(
        wait_until(WAIT, || fs::symlink_metadata(&moved).is_ok()),
        "link.csv moved to rejected/: {:?}",
        names_in(&feed.join("rejected"))
    );
    let meta = fs::symlink_metadata(&moved).expect("rejected/link.csv");
    assert!(meta.file_type().is_symlink(), "moved as a link, not copied");
    assert_eq!(fs::read_link(&moved).unwrap(), target);
    let errors = fs::read_to_string(feed.join("rejected/link.csv.errors.txt"))
        .expect("errors.txt beside it");
    assert!(
        errors.contains("link.csv") && errors.contains("symbolic link"),
        "{errors}"
    );

    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        content,
        "target untouched"
    );
    assert_eq!(names_in(&outside), ["secret.csv"]);
    assert!(
        log_lines(&daemon, &["File processed"]).is_empty(),
        "{}",
        log(&daemon)
    );
    assert!(
        log_lines(&daemon, &["Alert raised"]).is_empty(),
        "{}",
        log(&daemon)
    );
    assert!(
        !feed.join("link.csv").exists() && fs::symlink_metadata(feed.join("link.csv")).is_err()
    );
    assert!(eml_messages(&mail_dir(dir.path())).is_empty());

    let status = status_json(&config);
    assert!(
        status["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "link.csv" && r["whole_file"] == true),
        "{status:#}"
    );
    stop_daemon(daemon);
}

#[test]
fn oversized_empty_and_binary_files_are_rejected_and_the_daemon_carries_on() {
    let dir = tempdir();
    let config = Cfg {
        feed_extra: "max_file_bytes = 2000\n".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    let big_rows: Vec<String> = (0..30)
        .map(|i| row(&format!("BIG-{i}"), "Bolton", "protonitazene", "", "big"))
        .collect();
    let big = csv(&big_rows);
    assert!(big.len() > 2000);
    write_atomically(&feed, "big.csv", &big);
    write_atomically(&feed, "empty.csv", "");
    let mut binary = b"PK\x03\x04\x14\x00\x00\x00\x08\x00".to_vec();
    binary.extend((0..600u32).map(|i| (i * 7 % 256) as u8));
    write_atomically(&feed, "binary.csv", &binary);

    for (name, reason) in [
        ("big.csv", "max_file_bytes"),
        ("empty.csv", "empty"),
        ("binary.csv", "binary"),
    ] {
        let line = wait_log(
            &mut daemon,
            &["Rejected file", &format!("file={name}")],
            WAIT,
        );
        assert!(line.contains(reason), "{line}");
        assert!(
            wait_until(WAIT, || feed.join("rejected").join(name).exists()),
            "{name} moved to rejected/"
        );
        let errors = fs::read_to_string(feed.join("rejected").join(format!("{name}.errors.txt")))
            .unwrap_or_else(|e| panic!("rejected/{name}.errors.txt: {e}"));
        assert!(errors.contains(reason), "{name}: {errors}");
        assert!(!feed.join(name).exists());
    }
    assert_eq!(
        fs::read(feed.join("rejected/binary.csv")).unwrap(),
        binary,
        "moved whole"
    );
    assert!(log_lines(&daemon, &["Alert raised"]).is_empty());
    assert!(daemon.is_running());

    // Still alive and alerting.
    write_atomically(
        &feed,
        "good.csv",
        csv(&[row("G-1", "Wigan", "isotonitazene", "", "after the junk")]),
    );
    wait_log(&mut daemon, &["File processed", "good.csv"], WAIT);
    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    assert!(mails[0].text_body().unwrap().contains("G-1"));

    let status = status_json(&config);
    let rejected: Vec<String> = status["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["whole_file"] == true)
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for name in ["big.csv", "empty.csv", "binary.csv"] {
        assert!(
            rejected.contains(&name.to_string()),
            "{name} in status: {status:#}"
        );
    }
    stop_daemon(daemon);
}

#[test]
fn a_file_waiting_before_the_daemon_starts_is_processed_at_start() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let feed = feed_dir(dir.path());
    write_atomically(
        &feed,
        "overnight.csv",
        csv(&[row("O-1", "Oldham", "protonitazene", "", "waited")]),
    );

    let mut daemon = support::Daemon::start(&config);
    let line = wait_log(&mut daemon, &["File processed", "overnight.csv"], WAIT);
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    assert!(mails[0].text_body().unwrap().contains("O-1"));
    assert!(feed.join("processed/overnight.csv").exists());
    stop_daemon(daemon);
}

/// SPEC §3: `ops` partners are "told about the daemon's own trouble (refused reload, failed
/// delivery, rejected files)".
#[test]

fn ops_are_told_about_a_rejected_file() {
    let dir = tempdir();
    let config = Cfg {
        partners: partner("panel", &["panel@example.org"], true, &["*"], None)
            + &partner("ops-team", &["ops@example.org"], true, &["*"], None),
        ops: Some("ops-team".into()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    write_atomically(&feed_dir(dir.path()), "junk.csv", b"\x00\x01\x02 not a csv");
    wait_log(&mut daemon, &["Rejected file", "junk.csv"], WAIT);
    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    assert_eq!(mails[0].to(), ["ops@example.org"]);
    // The subject names the problem; the body gives it and its reason, and
    // nothing of a drug alert's dress.
    assert_eq!(
        mails[0].subject().unwrap(),
        "OFFICIAL-SENSITIVE [WARNING] earlywarn: 1 file rejected in drug_testing"
    );
    let text = mails[0].text_body().unwrap().replace("\r\n", "\n");
    assert!(text.contains("1. File rejected, "), "{text}");
    assert!(
        text.contains("   Detail: drug_testing/junk.csv\n"),
        "{text}"
    );
    assert!(text.contains("   From the file: "), "the reason: {text}");
    for dress in ["District:", "matching record", "Records:", "not stated"] {
        assert!(!text.contains(dress), "{dress}: {text}");
    }
    stop_daemon(daemon);
}

#[test]
fn files_with_temporary_names_wait_until_renamed() {
    let dir = tempdir();
    let config = Cfg {
        rescan_interval: "1s".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let names = [
        "a.csv.tmp",
        "b.csv.part",
        "c.csv.partial",
        "d.csv~",
        ".e.csv",
    ];
    for (i, name) in names.iter().enumerate() {
        fs::write(
            feed.join(name),
            csv(&[row(&format!("T-{i}"), "Bolton", "protonitazene", "", "x")]),
        )
        .unwrap();
    }
    // A file written the same way after them, under a name that counts, settles and is taken:
    // the daemon has been past the others (and a settle interval, and rescans, have passed).
    fs::write(
        feed.join("control.csv"),
        csv(&[row("T-C", "Bolton", "cocaine", "", "x")]),
    )
    .unwrap();
    wait_log(&mut daemon, &["File processed", "file=control.csv "], WAIT);
    for name in names {
        assert!(feed.join(name).exists(), "{name} was moved");
    }
    let processed = log_lines(&daemon, &["File processed"]);
    assert!(
        processed.len() == 1 && processed[0].contains("file=control.csv "),
        "{}",
        log(&daemon)
    );
    assert!(
        log_lines(&daemon, &["Rejected file"]).is_empty(),
        "{}",
        log(&daemon)
    );

    fs::rename(feed.join("a.csv.tmp"), feed.join("a.csv")).unwrap();
    let line = wait_log(&mut daemon, &["File processed", "file=a.csv "], WAIT);
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let mails = wait_eml(&mail_dir(dir.path()), 1, WAIT);
    assert!(mails[0].text_body().unwrap().contains("T-0"));
    // The control file and a.csv, nothing else.
    assert_eq!(log_lines(&daemon, &["File processed"]).len(), 2);
    stop_daemon(daemon);
}

#[test]
fn a_named_pipe_is_rejected_without_blocking_the_daemon() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let status = std::process::Command::new("mkfifo")
        .arg(feed.join("pipe.csv"))
        .status()
        .unwrap();
    assert!(status.success());

    let line = wait_log(&mut daemon, &["Rejected file", "pipe.csv"], WAIT);
    assert!(line.contains("not a regular file"), "{line}");
    assert!(wait_until(WAIT, || fs::symlink_metadata(
        feed.join("rejected/pipe.csv")
    )
    .is_ok()));
    let errors = fs::read_to_string(feed.join("rejected/pipe.csv.errors.txt")).unwrap();
    assert!(errors.contains("not a regular file"), "{errors}");

    write_atomically(
        &feed,
        "after.csv",
        csv(&[row("F-1", "Bury", "protonitazene", "", "x")]),
    );
    wait_log(&mut daemon, &["File processed", "after.csv"], WAIT);
    wait_eml(&mail_dir(dir.path()), 1, WAIT);
    stop_daemon(daemon);
}

/// Exports often keep one name (`results.csv` every hour): the rows set aside from one file
/// must not be overwritten by the next file of the same name.
#[test]

fn rejected_rows_of_two_files_with_the_same_name_are_both_kept() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());

    let bad1 = row_at(
        "N-1",
        "first bad time",
        "Bolton",
        "heroin",
        "cocaine",
        "",
        "x",
    );
    write_atomically(
        &feed,
        "results.csv",
        csv(&[row("N-0", "Bolton", "cocaine", "", "x"), bad1.clone()]),
    );
    wait_log(&mut daemon, &["File processed", "results.csv"], WAIT);
    let bad2 = row_at(
        "N-2",
        "second bad time",
        "Bolton",
        "heroin",
        "cocaine",
        "",
        "y",
    );
    write_atomically(
        &feed,
        "results.csv",
        csv(&[row("N-3", "Bolton", "cocaine", "", "y"), bad2.clone()]),
    );
    wait_log_lines(&mut daemon, &["File processed", "results.csv"], 2, WAIT);
    assert!(feed.join("processed/results.csv").exists());
    assert_eq!(
        names_in(&feed.join("processed")).len(),
        2,
        "both files kept in processed/"
    );

    let rejected = feed.join("rejected");
    let mut rows = String::new();
    let mut errors = String::new();
    for name in names_in(&rejected) {
        let text = fs::read_to_string(rejected.join(&name)).unwrap();
        if name.contains("rows") {
            rows += &text;
        } else if name.contains("errors") {
            errors += &text;
        }
    }
    assert!(
        rows.contains(&bad1),
        "the first file's bad row is kept; rejected/: {:?}\n{rows}",
        names_in(&rejected)
    );
    assert!(
        rows.contains(&bad2),
        "the second file's bad row is kept; rejected/: {:?}\n{rows}",
        names_in(&rejected)
    );
    assert!(
        errors.contains("first bad time") && errors.contains("second bad time"),
        "{errors}"
    );
    stop_daemon(daemon);
}

/// SPEC §4: `rejected/NAME.rows.csv` holds "the original rows, verbatim"; for a Windows-1252
/// export that means its own bytes, so the producer can fix and resend them with the same tool.
#[test]

fn rejected_rows_of_a_windows_1252_file_keep_their_original_bytes() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let feed = feed_dir(dir.path());
    let bad = row_at(
        "W-2",
        "bad time",
        "Salford",
        "café crème",
        "cocaine",
        "",
        "x",
    );
    let text = csv(&[row("W-1", "Salford", "cocaine", "", "café"), bad.clone()]);
    write_atomically(&feed, "win.csv", windows_1252(&text));
    wait_log(&mut daemon, &["File processed", "win.csv"], WAIT);
    let rows = fs::read(feed.join("rejected/win.csv.rows.csv")).unwrap();
    let expected = windows_1252(&format!("{HEADER}\n{bad}\n"));
    assert!(
        rows == expected,
        "rows.csv is not the original bytes: got {:?} (re-encoded as UTF-8?)",
        String::from_utf8_lossy(&rows)
    );
    stop_daemon(daemon);
}
