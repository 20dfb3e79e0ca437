//! Attacks from a producer account (SPEC §4): the daemon and a producer as two
//! different Unix users, set up the way the README's "Install on a server" says
//! (feed folder 3770, owner the daemon, group the feed's producer group), and a
//! producer that tries to plant links, rename the daemon's folders, read the
//! database, the config and other feeds, and pass off hard links. Then files
//! whose names and contents try to stop the daemon (no root needed).
//!
//! Tests that need root (to run two users) print why and pass when not root.
//!
//! Run with `cargo test --test attack_producer`.

mod e2e_support;
mod support;

use e2e_support::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{Daemon, earlywarn, wait_until};

/// Made-up ids, unlikely to exist here: the daemon's user and group, and one
/// producer group per feed with one producer in each.
const DAEMON_UID: u32 = 64_101;
const DAEMON_GID: u32 = 64_104;
const PRODUCER_UID: u32 = 64_102;
const DRUG_TESTING_GID: u32 = 64_103;
const INCIDENTS_GID: u32 = 64_105;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs a shell command as the producer of `drug_testing` (its own uid, its
/// feed's group only) in `dir`; returns whether it succeeded, and its stderr.
fn as_producer(dir: &Path, script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .uid(PRODUCER_UID)
        .gid(DRUG_TESTING_GID)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn incidents_feed() -> String {
    r#"
[[feed]]
name = "incidents"
dir = "in/incidents"
format = "csv"
id_field = "record_id"
time_field = "occurred_at"
sensitive = ["location", "notes"]
"#
    .to_string()
}

/// A test installation under a folder of its own, with the owners and modes of
/// the README's server install. Returns the config's path.
fn install(base: &Path) -> std::path::PathBuf {
    chmod(base, 0o755);
    let cfg = Cfg {
        rescan_interval: "1s".into(),
        feed_extra: incidents_feed(),
        ..Cfg::default()
    };
    let config = cfg.write(base);
    // The config and rules: root's, readable by the daemon's group only.
    chown(&config, 0, DAEMON_GID);
    chmod(&config, 0o640);
    chown(&base.join("rules"), 0, DAEMON_GID);
    chmod(&base.join("rules"), 0o750);
    for dir in ["state", "mail"] {
        let d = base.join(dir);
        fs::create_dir_all(&d).unwrap();
        chown(&d, DAEMON_UID, DAEMON_GID);
        chmod(&d, 0o700);
    }
    fs::create_dir_all(base.join("in")).unwrap();
    chmod(&base.join("in"), 0o755);
    for (feed, gid) in [
        ("in/drug-testing", DRUG_TESTING_GID),
        ("in/incidents", INCIDENTS_GID),
    ] {
        let d = base.join(feed);
        fs::create_dir_all(&d).unwrap();
        chown(&d, DAEMON_UID, gid);
        chmod(&d, 0o3770);
    }
    config
}

fn nitazene_file(id: &str) -> String {
    csv(&[row(
        id,
        "Bolton",
        "isotonitazene",
        "",
        "seen at the back door",
    )])
}

/// Drops a file as the producer should: write a temporary name, then rename.
fn drop_as_producer(feed: &Path, name: &str, content: &str) {
    let tmp = feed.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).unwrap();
    chown(&tmp, PRODUCER_UID, DRUG_TESTING_GID);
    let (ok, err) = as_producer(feed, &format!("mv '.{name}.tmp' '{name}'"));
    assert!(ok, "the producer drops {name}: {err}");
}

#[test]
fn a_producer_cannot_plant_links_rename_the_daemons_folders_or_read_what_is_not_its_own() {
    if !is_root() {
        println!(
            "skipped: running the daemon and a producer as two Unix users needs root (this test runs as uid {})",
            rustix::process::geteuid().as_raw()
        );
        return;
    }
    let tmp = tempdir();
    let base = tmp.path();
    let config = install(base);
    let feed = feed_dir(base);
    let state = base.join("state");

    // Before the daemon ever ran: the producer plants `rejected` as a link to
    // the state folder, and a `processed` of its own.
    let (ok, err) = as_producer(&feed, "ln -s ../../state rejected && mkdir processed");
    assert!(ok, "{err}");

    let mut daemon = Daemon::start_as(&config, DAEMON_UID, DAEMON_GID);
    wait_log(&mut daemon, &["Ready"], Duration::from_secs(20));
    let paused = wait_log(&mut daemon, &["Feed paused", "drug_testing"], WAIT);
    assert!(paused.contains("ERROR"), "{paused}");
    assert!(paused.contains("symbolic link"), "{paused}");

    // A file that would be rejected whole (its errors.txt written through the
    // link into the state folder) and one named like SQLite's rollback journal.
    drop_as_producer(&feed, "earlywarn.db-journal", "\0\0binary\0");
    drop_as_producer(&feed, "good.csv", &nitazene_file("P1"));
    // The sign that the daemon has been past them: a file dropped after them in the other
    // (healthy) feed has been taken (hints are handled in order).
    let incidents = base.join("in/incidents");
    let after = support::write_atomically(
        &incidents,
        "after.csv",
        "record_id,occurred_at\nI-1,2025-11-04T09:00:00Z\n",
    );
    chmod(&after, 0o644);
    assert!(
        wait_until(WAIT, || incidents.join("processed/after.csv").exists()
            || incidents.join("rejected/after.csv").exists()),
        "a file in the healthy feed was not taken:\n{}",
        log(&daemon)
    );
    let mut in_state = names_in(&state);
    in_state.retain(|n| !n.starts_with("earlywarn.db"));
    assert!(
        in_state.is_empty(),
        "nothing written in the state folder: {in_state:?}"
    );
    assert!(
        !state.join("earlywarn.db-journal").exists(),
        "no journal planted next to the database"
    );
    assert!(
        feed.join("good.csv").exists(),
        "a paused feed reads nothing"
    );
    assert!(names_in(&base.join("mail")).is_empty());
    let status = status_json(&config);
    assert!(
        status.to_string().contains("symbolic link"),
        "status says why the feed is paused: {status:#}"
    );

    // The operator moves the impostors away: the daemon makes its own folders
    // at the next rescan, and the waiting files go through.
    fs::remove_file(feed.join("rejected")).unwrap();
    fs::remove_dir(feed.join("processed")).unwrap();
    wait_log(&mut daemon, &["Feed resumed", "drug_testing"], WAIT);
    let mail = wait_eml(&base.join("mail"), 1, WAIT);
    assert!(
        mail[0].subject().unwrap().contains("Isotonitazene, Bolton"),
        "{mail:?}"
    );
    assert!(wait_until(WAIT, || feed
        .join("rejected/earlywarn.db-journal")
        .exists()));
    for sub in ["processed", "rejected"] {
        let meta = fs::symlink_metadata(feed.join(sub)).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.uid(), DAEMON_UID, "{sub} is the daemon's");
        assert_eq!(
            meta.gid(),
            DRUG_TESTING_GID,
            "{sub} has the feed's group (setgid)"
        );
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{sub} is writable only by the daemon"
        );
    }

    // What the producer may do: read what became of its files.
    let (ok, err) = as_producer(&feed, "cat rejected/earlywarn.db-journal.errors.txt");
    assert!(ok, "the producer reads why its file was rejected: {err}");

    // What it may not.
    for (what, script) in [
        ("rename rejected/", "mv rejected r2"),
        ("remove processed/", "rm -rf processed"),
        (
            "replace rejected/ with a link",
            "rm -f rejected; ln -s ../../state rejected",
        ),
        ("write into rejected/", "touch rejected/x"),
        ("read the database", "cat ../../state/earlywarn.db"),
        ("list the state folder", "ls ../../state"),
        ("read the config", "cat ../../earlywarn.toml"),
        ("read the rules", "ls ../../rules"),
        ("read another feed", "ls ../incidents"),
        ("write into another feed", "touch ../incidents/forged.csv"),
    ] {
        let (ok, _) = as_producer(&feed, script);
        assert!(!ok, "the producer must not be able to {what} ({script})");
    }
    assert!(feed.join("rejected").is_dir() && !feed.join("rejected").is_symlink());

    // A hard link is rejected, not read: the same file under a second name.
    let (ok, err) = as_producer(
        &feed,
        &format!(
            "printf '%s' '{}' > .own.tmp && ln .own.tmp linked.csv",
            nitazene_file("P2").replace('\'', "")
        ),
    );
    assert!(ok, "{err}");
    assert!(wait_until(WAIT, || feed
        .join("rejected/linked.csv.errors.txt")
        .exists()));
    let why = fs::read_to_string(feed.join("rejected/linked.csv.errors.txt")).unwrap();
    assert!(why.contains("hard link"), "{why}");
    // Rejected whole, before anything of it could be committed; and what was committed is sent.
    support::wait_outbox_drained(&config);
    assert_eq!(
        names_in(&base.join("mail")).len(),
        1,
        "the linked file raised nothing"
    );

    // The database is the daemon's alone, and survives a restart intact.
    let db = fs::metadata(state.join("earlywarn.db")).unwrap();
    assert_eq!(db.uid(), DAEMON_UID);
    assert_eq!(
        db.mode() & 0o077,
        0,
        "the database is private: {:o}",
        db.mode()
    );
    stop_daemon(daemon);
    let status = status_json(&config);
    assert!(
        status.to_string().contains("nitazene-detected"),
        "the database is intact and holds the alert: {status:#}"
    );
}

#[test]
fn names_that_try_to_break_the_daemon_are_shortened_or_escaped_and_their_alerts_still_go_out() {
    let tmp = tempdir();
    let base = tmp.path();
    let config = Cfg::default().write(base);
    let feed = feed_dir(base);
    let mut daemon = start_daemon(&config);

    // 245 characters and a bad row: the quarantine's names would be too long.
    let long = format!("{}.csv", "x".repeat(241));
    let mut content = nitazene_file("L1");
    content.push_str("only,three,fields\n");
    support::write_atomically(&feed, &long, &content);
    // A newline and escape sequences that would forge a log line and drive a terminal.
    let forged = "a.csv\n2026-12-01T00:00:00Z  INFO earlywarn: forged line \x1b]8;;https:evil.example\x07x\x1b[31m";
    support::write_atomically(&feed, forged, nitazene_file("F1"));

    let mail = wait_eml(&base.join("mail"), 2, WAIT);
    assert_eq!(mail.len(), 2, "both files' nitazene alerts go out");
    assert!(
        wait_until(WAIT, || names_in(&feed.join("processed"))
            .iter()
            .any(|n| n.starts_with("xxxxxxxx") && n.len() < 200)),
        "filed under a shortened name: {:?}",
        names_in(&feed.join("processed"))
    );
    let rejected = names_in(&feed.join("rejected"));
    let report = rejected
        .iter()
        .find(|n| n.ends_with(".errors.txt"))
        .unwrap_or_else(|| panic!("the bad row's report: {rejected:?}"));
    assert!(report.len() < 200, "shortened: {report}");
    assert!(report.starts_with("xxxx"), "{report}");
    let rows = fs::read_to_string(feed.join("rejected").join(report)).unwrap();
    assert!(rows.contains("row 2"), "{rows}");

    let log = log(&daemon);
    let plain = strip_ansi(&log);
    assert!(
        !plain.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "no forged log line:\n{plain}"
    );
    assert!(!log.contains("\x1b]8;;"), "no raw OSC-8 link in the log");
    assert!(
        plain.contains(
            "a.csv\\n2026-12-01T00:00:00Z  INFO earlywarn: forged line \\x1b]8;;https:evil.example\\x07x"
        ),
        "the name is shown escaped:\n{plain}"
    );

    let out = earlywarn(&["status", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("\x1b]8;;"),
        "status prints no raw escape:\n{text}"
    );
    assert!(
        !text.contains("\n2026-12-01T00:00:00Z  INFO"),
        "status prints no forged line"
    );
    wait_log(&mut daemon, &["File processed"], WAIT);
    stop_daemon(daemon);
}

#[test]
fn a_file_of_many_bad_rows_keeps_every_row_and_lists_the_first_thousand() {
    let tmp = tempdir();
    let base = tmp.path();
    let config = Cfg::default().write(base);
    let feed = feed_dir(base);
    let mut daemon = start_daemon(&config);

    let mut content = nitazene_file("G1");
    for i in 0..5_000 {
        content.push_str(&format!("bad-{i}\n"));
    }
    support::write_atomically(&feed, "many.csv", &content);
    wait_eml(&base.join("mail"), 1, WAIT);
    assert!(wait_until(WAIT, || feed
        .join("rejected/many.csv.errors.txt")
        .exists()));
    let report = fs::read_to_string(feed.join("rejected/many.csv.errors.txt")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 1_001, "1,000 problems, then a count");
    assert!(lines[0].starts_with("row 2 (line 3): "), "{}", lines[0]);
    assert!(lines[1_000].contains("4000 more"), "{}", lines[1_000]);
    let rows = fs::read_to_string(feed.join("rejected/many.csv.rows.csv")).unwrap();
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 5_001, "the header and every bad row");
    assert_eq!(rows[0], HEADER);
    assert_eq!(rows[5_000], "bad-4999");
    wait_log(&mut daemon, &["File processed"], WAIT);
    stop_daemon(daemon);
}

#[test]
fn a_file_that_keeps_interrupting_the_daemon_is_set_aside_after_three_tries() {
    let tmp = tempdir();
    let base = tmp.path();
    let config = Cfg {
        feed_extra: "max_file_bytes = 400000000\n".into(),
        ..Cfg::default()
    }
    .write(base);
    let feed = feed_dir(base);
    // Big enough that the daemon is still reading it when it is killed: the kill follows the
    // try's record within a poll (20 ms), the second read of 16 MiB takes seconds.
    let mut content = String::with_capacity(16 << 20);
    content.push_str(&nitazene_file("K0"));
    let mut i = 0;
    while content.len() < 16 << 20 {
        content.push_str(&row(&format!("K{i}"), "Bury", "cocaine", "", ""));
        content.push('\n');
        i += 1;
    }
    fs::create_dir_all(&feed).unwrap();
    support::write_atomically(&feed, "huge.csv", &content);
    let db = base.join("state/earlywarn.db");
    let tries = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COALESCE(MAX(tries), 0) FROM file_attempts",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    for attempt in 1..=3 {
        let mut daemon = Daemon::start(&config);
        assert!(
            wait_until(Duration::from_secs(60), || tries() >= attempt),
            "try {attempt} starts:\n{}",
            log(&daemon)
        );
        daemon.sigkill();
        daemon.wait_exit(Duration::from_secs(10));
        assert!(feed.join("huge.csv").exists(), "an interrupted file stays");
    }
    let mut daemon = start_daemon(&config);
    assert!(
        wait_until(WAIT, || feed.join("rejected/huge.csv").exists()),
        "{}",
        log(&daemon)
    );
    let why = fs::read_to_string(feed.join("rejected/huge.csv.errors.txt")).unwrap();
    assert!(why.contains("interrupted 3 times"), "{why}");
    wait_log(&mut daemon, &["Rejected file"], WAIT);
    // The daemon goes on: a new file is read as usual.
    support::write_atomically(&feed, "next.csv", nitazene_file("N1"));
    wait_eml(&base.join("mail"), 1, WAIT);
    stop_daemon(daemon);
}
