//! The command line as a user meets it (SPEC §2): `check` with `file:line:col` errors,
//! `replay` in JSON and text, `status` after a daemon run.
//!
//! Run with `cargo test --test cli`.

mod e2e_support;
mod support;

use std::fs;
use std::path::Path;

use e2e_support::*;
use support::{earlywarn, earlywarn_with_env, write_atomically};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The 1-based line of `dir/earlywarn.toml` that starts with `prefix`.
fn line_of(path: &Path, prefix: &str) -> usize {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {}", path.display()))
        + 1
}

#[test]
fn check_accepts_the_shipped_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = earlywarn(&["check", "--config", example.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));

    // The same through $EARLYWARN_CONFIG.
    let out = earlywarn_with_env(
        &["check"],
        &[("EARLYWARN_CONFIG", example.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_points_at_each_mistake_in_a_rule_file() {
    let dir = tempdir();
    let rules = r#"[lists]
nitazenes = ["isotonitazene"]

[[rule]]
id = "bad-operator"
feed = "drug_testing"
when = 'district = "Bolton"'
notify = ["panel"]

[[rule]]
id = "bad-list"
feed = "drug_testing"
when = 'substances_major in nitazene'
notify = ["panel"]

[[rule]]
id = "bad-partner"
feed = "drug_testing"
when = 'district == "Bolton"'
notify = ["pannel"]
"#;
    let config = Cfg {
        rules: rules.into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let rule_file = dir.path().join("rules/rules.toml");
    let out = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{stderr}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("ok"), "{}", text(&out.stdout));

    let f = rule_file.display();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let expect = [
        // Line 7 `when = 'district = "Bolton"'`: column 18 is the lone `=`.
        (format!("{f}:7:18: "), "`==`"),
        // Line 13 `when = 'substances_major in nitazene'`: column 29 is `nitazene`.
        (format!("{f}:13:29: "), "unknown list `nitazene`"),
        // Line 20 `notify = ["pannel"]`: column 11 is the opening quote of "pannel".
        (
            format!("{f}:20:11: "),
            "unknown partner `pannel`; did you mean `panel`?",
        ),
    ];
    for (place, words) in &expect {
        let line = lines
            .iter()
            .find(|l| l.starts_with(place.as_str()))
            .unwrap_or_else(|| panic!("no error at {place}; stderr:\n{stderr}"));
        assert!(line.contains(words), "{line:?} should say {words:?}");
    }
    assert!(stderr.contains("did you mean `nitazenes`"), "{stderr}");
    assert_eq!(
        lines.len(),
        3,
        "all three problems, nothing else:\n{stderr}"
    );

    // The columns really point at the mistakes.
    let file = fs::read_to_string(&rule_file).unwrap();
    let at = |line: usize, col: usize| {
        file.lines()
            .nth(line - 1)
            .unwrap()
            .chars()
            .skip(col - 1)
            .collect::<String>()
    };
    assert!(at(7, 18).starts_with("= \"Bolton\""));
    assert!(at(13, 29).starts_with("nitazene'"));
    assert!(at(20, 11).starts_with("\"pannel\""));
}

#[test]
fn check_points_at_a_broken_config_key() {
    // An unknown key in a partner.
    let dir = tempdir();
    let config = Cfg {
        partners: partner("panel", &["panel@example.org"], true, &["*"], None)
            + "colour = \"red\"\n",
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = line_of(&config, "colour = ");
    let place = format!("{}:{line}:1: ", config.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&place) && l.contains("unknown key `colour`")),
        "expected {place}unknown key `colour` ...; stderr:\n{stderr}"
    );

    // A duration that is not one.
    let dir = tempdir();
    let config = Cfg {
        settle: "soon".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = line_of(&config, "settle = ");
    // `settle = "soon"`: column 10 is the opening quote of the value.
    let place = format!("{}:{line}:10: ", config.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&place) && l.contains("`soon` is not a duration")),
        "expected {place}`soon` is not a duration ...; stderr:\n{stderr}"
    );

    // Unencrypted mail to a host that is not this machine.
    let dir = tempdir();
    let config = Cfg {
        mail: "transport = \"smtp\"\nhost = \"smtp.example.org\"\ntls = \"none\"\n".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = line_of(&config, "tls = ");
    let place = format!("{}:{line}:7: ", config.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&place) && l.contains("refused")),
        "expected {place}tls = \"none\" is refused ...; stderr:\n{stderr}"
    );
}

fn replay_setup(dir: &Path) -> std::path::PathBuf {
    Cfg {
        partners: partner("panel", &["panel@example.org"], true, &["*"], None)
            + &partner(
                "lead-bolton",
                &["bolton@example.org"],
                true,
                &["Bolton"],
                None,
            ),
        rules: nitazene_rule(&["panel", "lead-bolton"]),
        ..Cfg::default()
    }
    .write(dir)
}

#[test]
fn replay_prints_one_json_object_per_alert_and_reports_bad_rows() {
    let dir = tempdir();
    let config = replay_setup(dir.path());
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let file = data.join("lab.csv");
    fs::write(
        &file,
        csv(&[
            row("P-1", "Bolton", "protonitazene", "", "first"),
            row("P-2", "Bolton", "cocaine", "", "ordinary"),
            row_at(
                "P-3",
                "not a time",
                "Salford",
                "heroin",
                "isotonitazene",
                "",
                "bad",
            ),
            row(
                "P-4",
                "Salford",
                "heroin;N-Desethylisotonitazene",
                "",
                "second",
            ),
            row("P-5", "Bolton", "metonitazene", "", "third"),
        ]),
    )
    .unwrap();

    let out = earlywarn(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--feed",
        "drug_testing",
        "--format",
        "json",
        file.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    // A row that cannot be read is bad input: exit 1, with the row on stderr.
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("lab.csv") && l.contains("row 3") && l.contains("not a time")),
        "{stderr}"
    );

    let alerts: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"))
        })
        .collect();
    assert_eq!(alerts.len(), 2, "{stdout}");
    for a in &alerts {
        for key in ["rule", "group", "recipients", "subject", "events"] {
            assert!(a.get(key).is_some(), "no `{key}` in {a}");
        }
        assert_eq!(a["rule"], "nitazene-detected");
        assert!(
            a["subject"]
                .as_str()
                .unwrap()
                .starts_with("OFFICIAL-SENSITIVE"),
            "{a}"
        );
    }
    let by_district = |d: &str| {
        alerts
            .iter()
            .find(|a| a["group"]["district"] == d)
            .unwrap_or_else(|| panic!("no alert for {d}: {stdout}"))
    };
    let bolton = by_district("Bolton");
    assert_eq!(
        bolton["recipients"],
        serde_json::json!(["panel", "lead-bolton"])
    );
    let ids: Vec<&str> = bolton["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sample_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["P-1", "P-5"]);
    assert!(bolton["subject"].as_str().unwrap().contains("Bolton"));
    let salford = by_district("Salford");
    assert_eq!(salford["recipients"], serde_json::json!(["panel"]));
    assert_eq!(salford["events"].as_array().unwrap().len(), 1);
    assert_eq!(salford["events"][0]["sample_id"], "P-4");

    // Replay sends nothing and writes nothing.
    assert!(!dir.path().join("mail").exists(), "replay wrote mail");
    assert!(!dir.path().join("state").exists(), "replay wrote state");
    assert!(file.exists());
}

#[test]
fn replay_text_format_lists_the_alerts() {
    let dir = tempdir();
    let config = replay_setup(dir.path());
    let file = dir.path().join("clean.csv");
    fs::write(
        &file,
        csv(&[
            row("T-1", "Bolton", "protonitazene", "", "x"),
            row("T-2", "Wigan", "cocaine", "", "y"),
        ]),
    )
    .unwrap();
    let out = earlywarn(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--feed",
        "drug_testing",
        file.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("nitazene-detected"), "{stdout}");
    assert!(stdout.contains("Bolton"), "{stdout}");
    assert!(
        stdout.contains("panel") && stdout.contains("lead-bolton"),
        "{stdout}"
    );
    assert!(
        stdout.contains("OFFICIAL-SENSITIVE"),
        "the subject: {stdout}"
    );
    assert!(!stdout.contains("Wigan"), "{stdout}");
    assert!(
        text(&out.stderr).contains("1 alert"),
        "summary on stderr: {}",
        text(&out.stderr)
    );

    // An unknown feed is a user error.
    let out = earlywarn(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--feed",
        "drug-testing",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("drug_testing"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn status_shows_the_last_file_of_each_feed_after_a_daemon_run() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    write_atomically(
        &feed_dir(dir.path()),
        "first.csv",
        csv(&[row("S-1", "Bolton", "cocaine", "", "x")]),
    );
    wait_log(&mut daemon, &["File processed", "first.csv"], WAIT);
    write_atomically(
        &feed_dir(dir.path()),
        "second.csv",
        csv(&[row("S-2", "Bolton", "protonitazene", "", "x")]),
    );
    wait_log(&mut daemon, &["File processed", "second.csv"], WAIT);
    wait_log(&mut daemon, &["Delivered"], WAIT);
    stop_daemon(daemon);

    let status = status_json(&config);
    let feeds = status["feeds"].as_array().unwrap();
    assert_eq!(feeds.len(), 1, "{status:#}");
    assert_eq!(feeds[0]["feed"], "drug_testing");
    assert_eq!(feeds[0]["last_file"], "second.csv");
    assert_eq!(feeds[0]["last_outcome"], "processed");
    assert!(feeds[0]["last_at"].is_string(), "{status:#}");
    assert_eq!(status["outbox_pending"], 0);
    let alerts = status["recent_alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{status:#}");
    assert_eq!(alerts[0]["rule_id"], "nitazene-detected");
    assert_eq!(alerts[0]["district"], "Bolton");

    let out = earlywarn(&["status", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let feed_line = stdout
        .lines()
        .find(|l| l.contains("drug_testing"))
        .unwrap_or_else(|| panic!("no drug_testing line:\n{stdout}"));
    assert!(
        feed_line.contains("second.csv") && feed_line.contains("processed"),
        "{feed_line}"
    );
    assert!(stdout.contains("nitazene-detected"), "{stdout}");
}

/// SPEC §8: logs go to stdout/stderr for journald, which is not a terminal: no colour codes.
#[test]
fn daemon_log_to_a_file_has_no_terminal_colour_codes() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let daemon = start_daemon(&config);
    let raw = daemon.log();
    stop_daemon(daemon);
    assert!(raw.contains("Ready"));
    assert!(
        !raw.contains('\u{1b}'),
        "ANSI escape codes in a non-terminal log:\n{raw:?}"
    );
}
