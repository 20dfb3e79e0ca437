//! `daemon::run` in the test's own process, driven through its controls rather than signals:
//! ready, a file in, the mail out, a reload asked for through the channel, a stop. Assertions
//! are on files, mail and the database (through `status`), never on a log. What is about the
//! process itself (signals, exit codes, systemd, SIGKILL) stays in the subprocess tests.

mod e2e_support;
mod support;

use std::fs;

use e2e_support::*;
use support::in_process::InProcess;
use support::{wait_until, write_atomically};

fn meta(config: &std::path::Path, key: &str) -> serde_json::Value {
    status_json(config)["rules"][key].clone()
}

#[test]
fn runs_in_process_reloads_through_its_channel_and_stops_when_told() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let daemon = InProcess::start_ready(&config);
    // Ready means the first rescan is done: the feed folder and its sub-folders exist.
    assert!(feed_dir(dir.path()).join("processed").is_dir());

    write_atomically(
        &feed_dir(dir.path()),
        "one.csv",
        csv(&[row("IP-1", "Bolton", "isotonitazene", "", "n")]),
    );
    let mail = wait_eml(&dir.path().join("mail"), 1, WAIT);
    assert_eq!(mail[0].to(), ["panel@example.org"]);
    assert!(mail[0].text_body().unwrap().contains("IP-1"));
    assert!(wait_until(WAIT, || feed_dir(dir.path())
        .join("processed/one.csv")
        .exists()));

    // A reload with nothing changed on disk (so no watcher is involved): only the channel.
    let before = meta(&config, "last_reload_at");
    assert!(before.is_string(), "{:#}", status_json(&config));
    daemon.reload();
    assert!(
        wait_until(WAIT, || meta(&config, "last_reload_at") != before),
        "the reload asked for was not done: {:#}",
        status_json(&config)
    );
    assert_eq!(meta(&config, "loaded"), 1);
    assert!(meta(&config, "last_reload_error").is_null());

    // A broken rule set, then a reload: refused whole, the old rules stay in force.
    fs::write(dir.path().join("rules/rules.toml"), "[[rule]]\nid = \n").unwrap();
    daemon.reload();
    assert!(
        wait_until(WAIT, || meta(&config, "last_reload_error").is_string()),
        "{:#}",
        status_json(&config)
    );
    write_atomically(
        &feed_dir(dir.path()),
        "two.csv",
        csv(&[row("IP-2", "Bury", "protonitazene", "", "n")]),
    );
    let mail = wait_eml(&dir.path().join("mail"), 2, WAIT);
    assert!(mail.iter().any(|m| m.text_body().unwrap().contains("IP-2")));

    daemon.stop().expect("run returns Ok after a shutdown");
    // Stopped: a file dropped now stays where it is.
    write_atomically(
        &feed_dir(dir.path()),
        "three.csv",
        csv(&[row("IP-3", "Bury", "protonitazene", "", "n")]),
    );
    let status = status_json(&config);
    assert_eq!(status["outbox_pending"], 0, "{status:#}");
    assert!(feed_dir(dir.path()).join("three.csv").exists());
}

#[test]
fn a_config_it_cannot_start_with_is_an_error_from_run() {
    let dir = tempdir();
    let config = Cfg {
        rules: "[[rule]]\nid = \n".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let daemon = InProcess::start(&config);
    let err = daemon.stop().expect_err("broken rules refuse the start");
    assert!(
        matches!(err, earlywarn::daemon::DaemonError::Rules(_)),
        "{err}"
    );
}
