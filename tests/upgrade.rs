//! Upgrades, end to end: the real binary opens `tests/fixtures/db-0.1.0/earlywarn.db`, a database
//! that earlywarn 0.1.0 wrote (see the README there), copied into a temporary state folder.
//!
//! - `status` and then the daemon, against a real SMTP server on loopback, find every open
//!   deadline, window, first-seen value, review and pending delivery the old database held;
//! - a database written by a newer earlywarn is refused by `status`, `alerts` and `run`, with a
//!   clear message, and left byte for byte as it was;
//! - a fresh state folder is made at the latest schema version directly.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use earlywarn::store::SCHEMA_VERSION;
use rusqlite::Connection;
use support::*;

const INCIDENT_HEADER: &str = "record_id,incident_ref,incident_type,occurred_at,reported_at,district,location,weapon_type,injury,outcome,status,subject_key,notes\n";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db-0.1.0")
}

/// The fixture's config and rules in `dir`, with `[mail]` pointed at `smtp_port`, and the
/// 0.1.0 database in `dir/state` when `with_database`. Returns the config's path.
fn setup(dir: &Path, smtp_port: u16, with_database: bool) -> PathBuf {
    let config = fs::read_to_string(fixture().join("earlywarn.toml")).unwrap();
    assert!(
        config.contains("\nport = 1\n"),
        "the fixture config changed"
    );
    let config = config.replace("\nport = 1\n", &format!("\nport = {smtp_port}\n"));
    let path = dir.join("earlywarn.toml");
    fs::write(&path, config).unwrap();
    fs::create_dir_all(dir.join("rules")).unwrap();
    fs::copy(
        fixture().join("rules/rules.toml"),
        dir.join("rules/rules.toml"),
    )
    .unwrap();
    fs::create_dir_all(dir.join("in/incidents")).unwrap();
    fs::create_dir_all(dir.join("in/drug")).unwrap();
    if with_database {
        fs::create_dir_all(dir.join("state")).unwrap();
        fs::copy(
            fixture().join("earlywarn.db"),
            dir.join("state/earlywarn.db"),
        )
        .unwrap();
    }
    path
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("state/earlywarn.db")).unwrap()
}

fn user_version(conn: &Connection) -> u32 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn status_json(config: &Path) -> serde_json::Value {
    let out = earlywarn(&[
        "status",
        "--format",
        "json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn open_deadline_keys(report: &serde_json::Value) -> BTreeSet<String> {
    report["open_deadlines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap().to_string())
        .collect()
}

/// The time `make.sh` put in place of `@NOW@` in the fixture's input files.
fn fixture_event_time() -> String {
    let made = fs::read_to_string(fixture().join("made.txt")).unwrap();
    made.lines()
        .find_map(|l| l.strip_prefix("events timed: "))
        .expect("made.txt names the events' time")
        .to_string()
}

fn copies_beside(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".before-v"))
        .collect();
    names.sort();
    names
}

fn alert_and_recipient(m: &Received) -> (String, String) {
    (
        m.header("X-Earlywarn-Alert").unwrap_or_default(),
        m.rcpt_tos.join(","),
    )
}

#[test]
fn a_0_1_0_database_keeps_every_deadline_window_review_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = setup(dir.path(), smtp.port(), true);
    let cfg = config.to_str().unwrap();

    // What 0.1.0 left pending, read from the old database before anything opens it.
    let (pending, review_id): (BTreeSet<(String, String)>, String) = {
        let old = db(dir.path());
        assert_eq!(user_version(&old), 0, "0.1.0 wrote no version");
        let mut stmt = old
            .prepare("SELECT alert_id, recipients FROM outbox WHERE status = 'pending'")
            .unwrap();
        let pending = stmt
            .query_map([], |r| {
                let recipients: String = r.get(1)?;
                let recipients: Vec<String> = serde_json::from_str(&recipients).unwrap();
                Ok((r.get::<_, String>(0)?, recipients.join(",")))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let review_id = old
            .query_row(
                "SELECT id FROM alerts WHERE status = 'in_review'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (pending, review_id)
    };
    assert_eq!(pending.len(), 3, "{pending:?}");

    // `status` is the first to open it: it upgrades, keeping a copy.
    let report = status_json(&config);
    assert_eq!(
        open_deadline_keys(&report),
        BTreeSet::from(["GMP-LONG".to_string(), "GMP-SHORT".to_string()]),
        "{report}"
    );
    assert_eq!(report["in_review"], 1, "{report}");
    assert_eq!(report["outbox_pending"], 3, "{report}");
    let rejected: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(rejected.contains(&"no-id-column.csv"), "{report}");
    assert!(
        rejected.contains(&"incidents-1.csv"),
        "its bad row: {report}"
    );
    assert_eq!(user_version(&db(dir.path())), SCHEMA_VERSION);
    let state = dir.path().join("state");
    let copy_name = format!("earlywarn.db.before-v{SCHEMA_VERSION}");
    assert_eq!(copies_beside(&state), std::slice::from_ref(&copy_name));
    let copy = Connection::open(state.join(&copy_name)).unwrap();
    assert_eq!(user_version(&copy), 0, "the copy is the 0.1.0 database");
    assert_eq!(count(&copy, "SELECT COUNT(*) FROM outbox"), 3);
    drop(copy);
    let short_due: jiff::Timestamp = report["open_deadlines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"] == "GMP-SHORT")
        .unwrap()["due"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The daemon on the upgraded database, with the SMTP server up.
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", Duration::from_secs(30));
    // A second opener while the daemon runs: it finds the current version and does nothing.
    let again = status_json(&config);
    assert_eq!(again["in_review"], 1, "{again}");
    assert_eq!(
        copies_beside(&state),
        std::slice::from_ref(&copy_name),
        "no second copy"
    );

    // Every delivery 0.1.0 left pending goes out, and the short deadline escalates: at
    // once if it is overdue (the fixture is older than two minutes), else when it falls due.
    let until_due = short_due
        .duration_since(jiff::Timestamp::now())
        .unsigned_abs();
    let mails = smtp.wait_for(4, until_due + Duration::from_secs(30));
    let delivered: BTreeSet<(String, String)> = mails.iter().map(alert_and_recipient).collect();
    for p in &pending {
        assert!(
            delivered.contains(p),
            "pending delivery {p:?} not delivered; got {delivered:?}"
        );
    }
    let draft = mails
        .iter()
        .find(|m| m.header("X-Earlywarn-Alert").as_deref() == Some(review_id.as_str()))
        .unwrap();
    assert_eq!(draft.to(), ["panel@example.org"]);
    assert!(
        draft.subject().unwrap().contains("DRAFT"),
        "{:?}",
        draft.subject()
    );
    let escalation = mails
        .iter()
        .find(|m| m.subject().unwrap_or_default().contains("OVERDUE"))
        .expect("the overdue deadline escalates");
    assert!(
        escalation.subject().unwrap().contains("GMP-SHORT"),
        "{:?}",
        escalation.subject()
    );
    assert_eq!(escalation.to(), ["viable@example.org"]);

    // The review draft can be approved, and its alert reaches Bolton.
    let approve = earlywarn(&[
        "alerts",
        "approve",
        &review_id,
        "--by",
        "Dr Reviewer",
        "--config",
        cfg,
    ]);
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );

    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string();
    let incidents = dir.path().join("in/incidents");
    // Support for the ten-year deadline closes it; a third Wigan overdose tips the window that
    // holds the two from 0.1.0.
    write_atomically(
        &incidents,
        "after-upgrade.csv",
        format!(
            "{INCIDENT_HEADER}R10,GMP-LONG,support_provided,{now},{now},Salford,,,,support given,closed,,\n\
             R11,GMP-OD3,suspected_overdose,{now},{now},Wigan,Standishgate,,hospital,,open,P-20,\n"
        ),
    );
    // Xylazine was seen under 0.1.0: only the new substance is new.
    write_atomically(
        &dir.path().join("in/drug"),
        "after-upgrade.csv",
        format!(
            "sample_id,tested_at,district,substances_major,notes\n\
             S3,{now},Bolton,xylazine,\nS4,{now},Bolton,bromazolam,\n"
        ),
    );
    // The very file 0.1.0 processed, again: a duplicate, because its record survived.
    let original = fs::read_to_string(fixture().join("input/drug-1.csv"))
        .unwrap()
        .replace("@NOW@", &fixture_event_time());
    write_atomically(&dir.path().join("in/drug"), "drug-1-again.csv", original);

    // Draft, 3 pending, escalation + approved alert, closed notice, threshold, first seen.
    let mails = smtp.wait_for(8, Duration::from_secs(60));
    let approved: Vec<&Received> = mails
        .iter()
        .filter(|m| {
            m.header("X-Earlywarn-Alert").as_deref() == Some(review_id.as_str())
                && m.to() == ["bolton@example.org"]
        })
        .collect();
    assert_eq!(approved.len(), 1);
    assert!(!approved[0].subject().unwrap().contains("DRAFT"));
    let rule_of = |m: &Received| m.header("X-Earlywarn-Rule").unwrap_or_default();
    let threshold: Vec<&Received> = mails
        .iter()
        .filter(|m| rule_of(m) == "overdose-cluster")
        .collect();
    assert_eq!(threshold.len(), 1, "one new event tipped the old window");
    assert_eq!(threshold[0].to(), ["wigan@example.org"]);
    let first_seen: Vec<&Received> = mails
        .iter()
        .filter(|m| rule_of(m) == "new-substance")
        .collect();
    // The xylazine one is the delivery 0.1.0 left pending: xylazine again raised nothing.
    assert_eq!(first_seen.len(), 2, "xylazine (from 0.1.0) and bromazolam");
    assert!(
        first_seen
            .iter()
            .any(|m| m.text_body().unwrap_or_default().contains("bromazolam")),
        "the new substance alerts"
    );

    assert!(
        wait_until(Duration::from_secs(30), || count(
            &db(dir.path()),
            "SELECT COUNT(*) FROM files WHERE outcome = 'duplicate'"
        ) == 1),
        "the file 0.1.0 processed is a duplicate; log:\n{}",
        daemon.log()
    );
    let report = status_json(&config);
    assert!(
        open_deadline_keys(&report).is_empty(),
        "GMP-LONG closed, GMP-SHORT escalated: {report}"
    );
    assert_eq!(report["in_review"], 0, "{report}");
    let conn = db(dir.path());
    assert_eq!(
        count(
            &conn,
            "SELECT event_count FROM alerts WHERE rule_id = 'overdose-cluster'"
        ),
        3,
        "two events from 0.1.0 and one after"
    );
    assert_eq!(user_version(&conn), SCHEMA_VERSION);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);

    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(30)).unwrap().success());
    // Nothing was sent twice.
    let all: Vec<(String, String, String)> = smtp
        .messages()
        .iter()
        .map(|m| {
            let (alert, to) = alert_and_recipient(m);
            (alert, to, m.subject().unwrap_or_default())
        })
        .collect();
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), distinct.len(), "{all:?}");
    assert_eq!(all.len(), 8, "{all:?}");
}

#[test]
fn a_database_from_a_newer_earlywarn_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: nothing may be sent anyway.
    let config = setup(dir.path(), 1, true);
    let cfg = config.to_str().unwrap();
    let newer = SCHEMA_VERSION + 6;
    {
        let conn = db(dir.path());
        conn.pragma_update(None, "user_version", newer).unwrap();
        // Closing the last connection folds the WAL into the file.
    }
    let state = dir.path().join("state");
    let db_path = state.join("earlywarn.db");
    assert!(!state.join("earlywarn.db-wal").exists());
    let bytes = fs::read(&db_path).unwrap();
    let expected = format!(
        "the database at {} was written by a newer earlywarn (schema version {newer}; this earlywarn knows up to {SCHEMA_VERSION}). Install the newer earlywarn, or restore a backup.",
        db_path.display()
    );

    for args in [
        vec!["status", "--config", cfg],
        vec!["status", "--format", "json", "--config", cfg],
        vec!["alerts", "list", "--config", cfg],
        vec!["run", "--config", cfg],
    ] {
        let out = earlywarn(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`earlywarn {}`: a user error; stderr:\n{stderr}",
            args.join(" ")
        );
        assert!(
            stderr.contains(&expected),
            "`earlywarn {}` says:\n{stderr}",
            args.join(" ")
        );
        assert!(out.stdout.is_empty(), "nothing read from it is shown");
        assert_eq!(
            fs::read(&db_path).unwrap(),
            bytes,
            "`earlywarn {}` changed the database",
            args.join(" ")
        );
        let beside: Vec<String> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(beside, ["earlywarn.db"], "no WAL, no copy, nothing else");
    }
}

#[test]
fn a_fresh_state_folder_is_made_at_the_latest_version() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), 1, false);
    let report = status_json(&config);
    assert!(open_deadline_keys(&report).is_empty(), "{report}");
    assert_eq!(report["outbox_pending"], 0, "{report}");
    let state = dir.path().join("state");
    assert_eq!(user_version(&db(dir.path())), SCHEMA_VERSION);
    assert!(
        copies_beside(&state).is_empty(),
        "nothing to keep a copy of"
    );
}
