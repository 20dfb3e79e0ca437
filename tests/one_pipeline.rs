//! One input, three paths, the same alerts: the daemon (the real binary, file
//! transport), `earlywarn replay --format json` and `earlywarn test` all run
//! the batch step of `earlywarn::pipeline` under one tick rule.
//!
//! The input has a match rule, a threshold, a deadline closed in its own file
//! (once in time, once late), one closed by the next file and one never
//! closed, a first_seen rule and a cooldown, and a merge group (a seizure of a
//! substance never seen before is one alert, to both rules' partners). Event times are in the past relative to the wall clock, so the
//! never-closed deadline is overdue in every path (its due time passes while
//! the first file's later events are read), and the one closed later is due
//! only after the wall clock, so the daemon cannot escalate it between files.

use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_earlywarn");

const HEADER: &str = "record_id,incident_ref,incident_type,occurred_at,district,substance\n";

/// (rule, group, recipients sorted, records): what must be the same everywhere.
type Seen = (String, BTreeMap<String, String>, Vec<String>, u64);

/// What a rule test's expectation names: (rule, group, recipients).
type Expectation = (String, BTreeMap<String, String>, Vec<String>);

const RULES: &str = r#"
[[rule]]
id = "discharge"
name = "Firearms discharge"
feed = "incidents"
kind = "match"
when = 'incident_type == "discharge"'
group_by = ["district"]
severity = "critical"
notify = ["bolton", "salford", "panel"]

[[rule]]
id = "support-deadline"
name = "Support within two hours of a discharge"
feed = "incidents"
kind = "deadline"
when = 'incident_type == "discharge"'
key = "incident_ref"
until = { feed = "incidents", when = 'incident_type == "support"' }
within = "2h"
notify_on_open = ["panel"]
notify_on_close = true
severity = "critical"
notify = ["bolton", "salford", "panel"]

[[rule]]
id = "overdose-cluster"
name = "Three overdoses in a district"
feed = "incidents"
kind = "threshold"
when = 'incident_type == "overdose"'
count = 3
within = "7d"
group_by = ["district"]
severity = "warning"
notify = ["bolton", "salford"]

[[rule]]
id = "new-substance"
name = "A substance not seen before"
feed = "incidents"
kind = "first_seen"
field = "substance"
known = ["heroin"]
severity = "info"
notify = ["panel"]
merge = "finding"

[[rule]]
id = "seizure"
name = "Seizure"
feed = "incidents"
kind = "match"
when = 'incident_type == "seizure"'
group_by = ["district"]
cooldown = "7d"
severity = "info"
notify = ["bolton", "salford"]
merge = "finding"
"#;

fn config_text() -> String {
    r#"
[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
settle = "1s"

[mail]
transport = "file"
file_dir = "mail"
from = "GM Early Warning <earlywarn@example.org>"

[[feed]]
name = "incidents"
dir = "in/incidents"
id_field = "record_id"
time_field = "occurred_at"

[[partner]]
id = "panel"
emails = ["panel@example.org"]
isa = true
districts = ["*"]

[[partner]]
id = "bolton"
emails = ["bolton@example.org"]
districts = ["Bolton"]

[[partner]]
id = "salford"
emails = ["salford@example.org"]
districts = ["Salford"]
"#
    .to_string()
}

/// The two files, as rows (record_id, incident_ref, type, hours before `wall`, district, substance).
fn files(wall: Timestamp) -> [Vec<[String; 6]>; 2] {
    let at = |hours: f64| {
        (wall - SignedDuration::from_secs_f64(hours * 3600.0))
            .round(jiff::Unit::Second)
            .unwrap()
            .to_string()
    };
    let row = |id: &str, r: &str, kind: &str, hours: f64, district: &str, substance: &str| {
        [
            id.to_string(),
            r.to_string(),
            kind.to_string(),
            at(hours),
            district.to_string(),
            substance.to_string(),
        ]
    };
    [
        vec![
            // Never closed: due 8 h ago, passed while this file's later rows are read.
            row("R1", "INC-C", "discharge", 10.0, "Bolton", ""),
            // Closed in this file, in time.
            row("R2", "INC-A", "discharge", 9.0, "Salford", ""),
            row("R3", "INC-A", "support", 8.5, "Salford", ""),
            // Closed in this file, but after its due time: overdue as the
            // events pass, then closed late (the tick rule's rule 2).
            row("R13", "INC-D", "discharge", 7.0, "Bolton", ""),
            row("R4", "", "overdose", 5.0, "Bolton", "heroin"),
            row("R14", "INC-D", "support", 4.5, "Bolton", ""),
            row("R5", "", "overdose", 4.0, "Bolton", "heroin"),
            row("R6", "", "overdose", 3.5, "Bolton", "fentanyl"),
            row("R7", "", "seizure", 3.0, "Bolton", "heroin"),
            // Closed by the next file; due an hour after the wall clock.
            row("R8", "INC-B", "discharge", 1.0, "Salford", ""),
        ],
        vec![
            row("R9", "INC-B", "support", 0.5, "Salford", ""),
            // Inside the cooldown of the first file's seizure alert.
            row("R10", "", "seizure", 0.4, "Bolton", "fentanyl"),
            // A new substance: merged with its first sighting.
            row("R11", "", "seizure", 0.3, "Salford", "carfentanil"),
            // Seen before: raised nothing new.
            row("R12", "", "overdose", 0.2, "Salford", "fentanyl"),
        ],
    ]
}

fn csv(rows: &[[String; 6]]) -> String {
    let mut s = HEADER.to_string();
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

/// A TOML rule-test file whose inputs are the two files and whose
/// expectations are `expected`: it passes only if `earlywarn test` raises
/// exactly these alerts (every alert raised must be expected).
fn rule_test(rows: &[Vec<[String; 6]>; 2], expected: &[Seen]) -> String {
    let mut s =
        String::from("rules = [\"../rules/rules.toml\"]\n\n[[test]]\nname = \"one pipeline\"\n");
    for file in rows {
        s.push_str("[[test.input]]\nfeed = \"incidents\"\nrows = [\n");
        for r in file {
            s.push_str(&format!(
                "  {{ record_id = \"{}\", incident_ref = \"{}\", incident_type = \"{}\", occurred_at = \"{}\", district = \"{}\", substance = \"{}\" }},\n",
                r[0], r[1], r[2], r[3], r[4], r[5]
            ));
        }
        s.push_str("]\n");
    }
    let mut counted: BTreeMap<Expectation, usize> = BTreeMap::new();
    for (rule, group, recipients, _) in expected {
        *counted
            .entry((rule.clone(), group.clone(), recipients.clone()))
            .or_default() += 1;
    }
    for ((rule, group, recipients), count) in counted {
        let group: Vec<String> = group
            .iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        let recipients: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
        s.push_str(&format!(
            "[[test.expect]]\nrule = \"{rule}\"\ngroup = {{ {} }}\nrecipients = [{}]\ncount = {count}\n",
            group.join(", "),
            recipients.join(", ")
        ));
    }
    s
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("in/incidents")).unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("rules/rules.toml"), RULES).unwrap();
    let config = dir.path().join("earlywarn.toml");
    std::fs::write(&config, config_text()).unwrap();
    (dir, config)
}

fn sorted(mut seen: Vec<Seen>) -> Vec<Seen> {
    for s in &mut seen {
        s.2.sort();
    }
    seen.sort();
    seen
}

fn replay(config: &Path, paths: &[PathBuf]) -> Vec<Seen> {
    let out = Command::new(BIN)
        .args(["replay", "--config"])
        .arg(config)
        .args(["--feed", "incidents", "--format", "json"])
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["rule"].as_str().unwrap().to_string(),
                serde_json::from_value(v["group"].clone()).unwrap(),
                serde_json::from_value(v["recipients"].clone()).unwrap(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    sorted(seen)
}

/// The daemon's alerts and the partners each was queued for, from its database.
fn daemon_alerts(db: &Path) -> Vec<Seen> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut alerts = conn
        .prepare("SELECT id, summary FROM alerts ORDER BY created_at, id")
        .unwrap();
    let rows: Vec<(String, String)> = alerts
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut partners = conn
        .prepare("SELECT partner_id FROM outbox WHERE alert_id = ?1")
        .unwrap();
    let seen = rows
        .into_iter()
        .map(|(id, summary)| {
            let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
            let recipients: Vec<String> = partners
                .query_map([&id], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            (
                v["rule_id"].as_str().unwrap().to_string(),
                serde_json::from_value(v["group"].clone()).unwrap(),
                recipients,
                v["event_count"].as_u64().unwrap(),
            )
        })
        .collect();
    sorted(seen)
}

fn processed_files(db: &Path) -> usize {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM files WHERE outcome = 'processed'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
    .unwrap_or(0)
}

/// Runs the daemon, drops the files one at a time (each only once the one
/// before is committed), and stops it.
fn run_daemon(dir: &Path, config: &Path, contents: &[String]) -> Vec<Seen> {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "earlywarn=debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("EARLYWARN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let db = dir.join("state/earlywarn.db");
    let incoming = dir.join("in/incidents");
    for (n, content) in contents.iter().enumerate() {
        // Written aside and renamed in, as a producer should.
        let part = incoming.join(format!(".incidents-{n}.csv.part"));
        std::fs::write(&part, content).unwrap();
        std::fs::rename(&part, incoming.join(format!("incidents-{n}.csv"))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while processed_files(&db) < n + 1 {
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!(
                    "the daemon did not process file {n}:\n{}",
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // SAFETY: kill(2) on the child we spawned; it cannot be reaped before we wait.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    daemon_alerts(&db)
}

fn earlywarn_test(dir: &Path, config: &Path, text: &str) -> (bool, String) {
    let path = dir.join("tests/one.test.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["test", "--config"])
        .arg(config)
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_daemon_replay_and_rule_tests_raise_the_same_alerts() {
    let (dir, config) = setup();
    let wall = Timestamp::now();
    let rows = files(wall);
    let contents: Vec<String> = rows.iter().map(|f| csv(f)).collect();
    let paths: Vec<PathBuf> = contents
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let p = dir.path().join(format!("replay-{n}.csv"));
            std::fs::write(&p, c).unwrap();
            p
        })
        .collect();

    let replayed = replay(&config, &paths);
    let group = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // What the rules say this input raises, so the three agreeing on nothing cannot pass.
    let expected = sorted(vec![
        (
            "discharge".into(),
            group(&[("district", "Bolton")]),
            names(&["bolton", "panel"]),
            2,
        ),
        (
            "discharge".into(),
            group(&[("district", "Salford")]),
            names(&["salford", "panel"]),
            2,
        ),
        (
            "overdose-cluster".into(),
            group(&[("district", "Bolton")]),
            names(&["bolton"]),
            3,
        ),
        (
            "seizure".into(),
            group(&[("district", "Bolton")]),
            names(&["bolton"]),
            1,
        ),
        // The seizure and its first sighting: one alert (equal severity, so
        // the rule loaded first leads), to both rules' partners.
        (
            "new-substance".into(),
            group(&[("substance", "carfentanil")]),
            names(&["panel", "salford"]),
            1,
        ),
    ]);
    let kinds: BTreeMap<&str, usize> = replayed.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.0.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        kinds.get("new-substance"),
        Some(&2),
        "fentanyl is new once, carfentanil once: {replayed:#?}"
    );
    for e in &expected {
        assert!(
            replayed.contains(e),
            "replay did not raise {e:?}: {replayed:#?}"
        );
    }
    // The deadline: four opening notices; closes in time in the file and in
    // the next, one late close; the never-closed and the late one overdue.
    let salford_seizure =
        |s: &Seen| s.0 == "seizure" && s.1.get("district").map(String::as_str) == Some("Salford");
    assert!(
        !replayed.iter().any(salford_seizure),
        "the Salford seizure merged into its first sighting: {replayed:#?}"
    );
    assert_eq!(
        kinds.get("support-deadline"),
        Some(&9),
        "deadline notices: {replayed:#?}"
    );

    let daemon = run_daemon(dir.path(), &config, &contents);
    assert_eq!(
        daemon, replayed,
        "the daemon and replay raised different alerts"
    );

    let (passed, output) = earlywarn_test(dir.path(), &config, &rule_test(&rows, &replayed));
    assert!(
        passed,
        "`earlywarn test` did not raise exactly replay's alerts:\n{output}"
    );
}
