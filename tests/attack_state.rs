//! Attacks on the rule engine's bounds, against the real binary (issue 10):
//!
//! - one record dated 2099 used to silence a threshold rule (windows were
//!   trimmed against their newest event): the row is now rejected, with the
//!   time, the limit and `max_future` in the reason, and four real overdoses
//!   dropped afterwards raise the cluster alert;
//! - a file of 5,000 never-seen substances used to raise 5,000 alerts (and
//!   emails) and bury a real one behind them: it now raises at most
//!   `max_alerts`, the last a summary that counts the rest and names the file.

mod e2e_support;
mod support;

use e2e_support::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// A cluster of 4 non-fatal overdoses within 7 days, and new substances;
/// both tell the panel.
const RULES: &str = r#"
[[rule]]
id = "overdose-cluster"
name = "Overdose cluster"
feed = "drug_testing"
kind = "threshold"
when = 'linked_harm == "non_fatal_overdose"'
count = 4
within = "7d"
group_by = ["district"]
severity = "critical"
notify = ["panel"]

[[rule]]
id = "new-substance"
name = "Substance never seen before"
feed = "drug_testing"
kind = "first_seen"
field = "substances_major"
known = ["heroin", "cocaine", "diamorphine"]
severity = "warning"
notify = ["panel"]
"#;

/// How long a test waits for the daemon to take a file (a 5,000-row file included).
const TAKE: Duration = Duration::from_secs(60);

/// A drug-testing row at `tested_at` whose `linked_harm` is `harm`.
fn sample(id: &str, tested_at: &str, district: &str, major: &str, harm: &str) -> String {
    let row = row_at(id, tested_at, district, "heroin", major, "", "");
    let mut fields: Vec<&str> = row.split(',').collect();
    // linked_harm is the 15th column of SPEC §3.1.
    fields[14] = harm;
    fields.join(",")
}

/// An RFC 3339 time `hours` before now.
fn hours_ago(hours: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours))
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// Drops `name` into the feed and waits until the daemon logs it processed; returns that line.
fn drop_file(d: &mut support::Daemon, dir: &Path, name: &str, text: &str) -> String {
    support::write_atomically(&feed_dir(dir), name, text);
    wait_log(d, &["File processed", name], TAKE)
}

fn setup(dir: &Path) -> std::path::PathBuf {
    let cfg = Cfg {
        rules: RULES.into(),
        ..Cfg::default()
    };
    cfg.write(dir)
}

#[test]
fn a_record_dated_2099_is_a_bad_row_and_four_real_overdoses_still_raise_the_cluster() {
    let tmp = tempdir();
    let dir = tmp.path();
    let config = setup(dir);
    let mut d = start_daemon(&config);

    // The attack: one overdose record dated 2099 in Bolton, beside an honest row.
    let stray = sample(
        "S-2099",
        "2099-01-01T00:00:00Z",
        "Bolton",
        "heroin",
        "non_fatal_overdose",
    );
    let honest = sample("S-0", &hours_ago(30), "Wigan", "heroin", "none");
    let line = drop_file(&mut d, dir, "stray.csv", &csv(&[stray, honest]));
    assert_eq!(field(&line, "rejected").as_deref(), Some("1"), "{line}");
    assert_eq!(field(&line, "events").as_deref(), Some("1"), "{line}");
    let errors = fs::read_to_string(feed_dir(dir).join("rejected/stray.csv.errors.txt"))
        .unwrap_or_else(|e| {
            panic!(
                "no errors.txt ({e}); rejected/: {:?}",
                names_in(&feed_dir(dir).join("rejected"))
            )
        });
    assert!(
        errors.contains("`tested_at` value `2099-01-01T00:00:00Z` is ")
            && errors.contains("days ahead of the clock")
            && errors
                .contains("records more than 1 day ahead are refused (the feed's `max_future`)"),
        "the reason names the time, the limit and the key:\n{errors}"
    );

    // Four real overdoses in Bolton over the last day: the cluster alert goes out.
    let real: Vec<String> = (1..=4)
        .map(|i| {
            sample(
                &format!("S-{i}"),
                &hours_ago(5 * i),
                "Bolton",
                "heroin",
                "non_fatal_overdose",
            )
        })
        .collect();
    let line = drop_file(&mut d, dir, "overdoses.csv", &csv(&real));
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let raised = wait_log(&mut d, &["Alert raised", "overdose-cluster"], TAKE);
    assert_eq!(field(&raised, "events").as_deref(), Some("4"), "{raised}");
    let mail = wait_eml(&dir.join("mail"), 1, TAKE);
    let subject = mail[0].subject().unwrap_or_default();
    assert!(
        subject.contains("Non fatal overdose: 4 within 7 days, Bolton"),
        "{subject}"
    );
    assert!(
        !mail[0].data.contains("S-2099"),
        "the stray record is no part of the evidence"
    );
    stop_daemon(d);
}

#[test]
fn a_flood_of_5000_new_substances_raises_at_most_max_alerts_one_a_summary() {
    let tmp = tempdir();
    let dir = tmp.path();
    let config = setup(dir);
    let mut d = start_daemon(&config);

    let at = hours_ago(2);
    let flood: Vec<String> = (0..5000)
        .map(|i| {
            let district = ["Bolton", "Wigan", "Salford"][i % 3];
            sample(
                &format!("F-{i}"),
                &at,
                district,
                &format!("novel-compound-{i:04}"),
                "none",
            )
        })
        .collect();
    let line = drop_file(&mut d, dir, "flood.csv", &csv(&flood));
    assert_eq!(field(&line, "events").as_deref(), Some("5000"), "{line}");
    assert_eq!(
        field(&line, "alerts").as_deref(),
        Some("100"),
        "the default max_alerts, the summary among them: {line}"
    );
    let raised = log_lines(&d, &["Alert raised", "new-substance"]);
    assert_eq!(raised.len(), 100);

    // One email per alert for the panel; exactly one of them is the summary.
    let mail = wait_eml(&dir.join("mail"), 100, TAKE);
    assert_eq!(mail.len(), 100, "nothing beyond the cap was sent");
    let summaries: Vec<_> = mail
        .iter()
        .filter(|m| m.subject().unwrap_or_default().contains("SUMMARY"))
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "{:?}",
        mail.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let summary = summaries[0];
    let subject = summary.subject().unwrap_or_default();
    assert!(
        subject.contains("4901 more alerts from drug_testing file flood.csv"),
        "{subject}"
    );
    let body = summary.text_body().unwrap_or_default();
    assert!(
        body.contains("4901 further alerts (4901 matching records) are folded into this summary"),
        "{body}"
    );

    // A real alert dropped right after is not queued behind thousands of emails.
    let nitazene = sample("N-1", &hours_ago(1), "Bolton", "protonitazene", "none");
    let line = drop_file(&mut d, dir, "nitazene.csv", &csv(&[nitazene]));
    assert_eq!(field(&line, "alerts").as_deref(), Some("1"), "{line}");
    let mail = wait_eml(&dir.join("mail"), 101, TAKE);
    assert!(
        mail.iter().any(|m| m
            .subject()
            .unwrap_or_default()
            .contains("Never seen before: Protonitazene")),
        "the new substance's own alert went out"
    );
    stop_daemon(d);
}
