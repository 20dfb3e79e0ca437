//! Merge groups against the real daemon and a real SMTP server: the example
//! drug-testing file with the shipped rules gives the panel one draft per
//! sample, each naming every reason; approving a merged draft reaches the
//! union of its rules' `notify` lists, each partner still by its districts.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The shipped example config, sending to `smtp`, with the drug rules only
/// (or `rules` instead of them) and a short settle time.
fn shipped_config(dir: &Path, smtp: &SmtpServer, rules: Option<&str>) -> PathBuf {
    let root = Path::new(ROOT);
    let example = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
    assert!(example.contains("transport = \"file\"\n"));
    let config = example
        .replacen("transport = \"file\"\n", &smtp.mail_config(dir), 1)
        .replacen("[daemon]\n", "[daemon]\nsettle = \"1s\"\n", 1);
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    match rules {
        None => {
            for file in ["lists.toml", "drug-alerts.toml", "drug-patterns.toml"] {
                std::fs::copy(root.join("rules").join(file), dir.join("rules").join(file)).unwrap();
            }
        }
        Some(text) => std::fs::write(dir.join("rules/rules.toml"), text).unwrap(),
    }
    let path = dir.join("earlywarn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn approve(config: &Path, alert_id: &str) {
    let out = earlywarn(&[
        "alerts",
        "approve",
        alert_id,
        "--by",
        "Dr Reviewer",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_file_gives_one_draft_per_sample_naming_every_reason() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = shipped_config(dir.path(), &smtp, None);
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", Duration::from_secs(20));
    let example =
        std::fs::read(Path::new(ROOT).join("examples/drug-testing-2025-11-04.csv")).unwrap();
    write_atomically(
        &dir.path().join("var/incoming/drug-testing"),
        "drug-testing-2025-11-04.csv",
        example,
    );
    smtp.wait_for(4, Duration::from_secs(30));
    wait_outbox_drained(&config);
    let drafts = smtp.messages();
    // Four samples with findings (two nitazenes, xylazine, a strong MDMA pill),
    // three of them also never seen before: four drafts, not seven.
    let mut subjects: Vec<String> = drafts.iter().map(|m| m.subject().unwrap()).collect();
    subjects.sort();
    assert_eq!(drafts.len(), 4, "{subjects:#?}");
    for m in &drafts {
        assert_eq!(m.to(), ["dews-panel@example.org"]);
    }
    let draft_of = |needle: &str| {
        drafts
            .iter()
            .find(|m| m.subject().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no draft about {needle}: {subjects:#?}"))
    };
    let bolton = draft_of("Protonitazene");
    assert_eq!(
        bolton.subject().unwrap(),
        "OFFICIAL-SENSITIVE [DRAFT FOR ASSESSMENT] [CRITICAL] Protonitazene in a tablet sold as oxycodone 80mg, Bolton, tested Tue 4 Nov and one more reason"
    );
    let text = bolton.text_body().unwrap().replace("\r\n", "\n");
    assert!(
        text.contains(
            "WHY THIS WAS RAISED\n\
             - Nitazene detected in a tested sample (critical): Protonitazene, Bolton, tested Tue 4 Nov\n\
             - Substance never detected before (warning): Never seen before: Protonitazene, Bolton, tested Tue 4 Nov\n"
        ),
        "{text}"
    );
    assert!(
        bolton
            .html_body()
            .unwrap()
            .contains("Why this was raised</h2>")
    );
    assert!(
        draft_of("N-Desethylisotonitazene")
            .subject()
            .unwrap()
            .ends_with("and one more reason")
    );
    let xylazine = draft_of("Xylazine");
    assert!(xylazine.subject().unwrap().contains("[WARNING]"));
    assert!(
        xylazine
            .text_body()
            .unwrap()
            .contains("Substance never detected before (warning): Never seen before: Xylazine"),
        "{}",
        xylazine.text_body().unwrap()
    );
    let mdma = draft_of("MDMA");
    assert!(
        !mdma.subject().unwrap().contains("reason"),
        "MDMA is known: one reason"
    );
    assert!(!mdma.text_body().unwrap().contains("WHY THIS WAS RAISED"));

    // Approved, the merged alert goes out once per partner on the rules'
    // lists covering Bolton; the charity (Salford and others) is not told.
    let alert_id = bolton.header("X-Earlywarn-Alert").unwrap();
    let show = earlywarn(&[
        "alerts",
        "show",
        &alert_id,
        "--config",
        config.to_str().unwrap(),
    ]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("Rule      nitazene-detected\nAlso      new-substance-major (warning)\n"),
        "{shown}"
    );
    approve(&config, &alert_id);
    smtp.wait_for(7, Duration::from_secs(30));
    wait_outbox_drained(&config);
    let mut to: Vec<String> = smtp.messages()[4..].iter().flat_map(|m| m.to()).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "bolton.lead@example.org",
            "dews-panel@example.org",
            "publichealth.alerts@example.org"
        ]
    );
    for m in &smtp.messages()[4..] {
        assert!(m.text_body().unwrap().contains("WHY THIS WAS RAISED"));
    }
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(20)).unwrap().success());
}

#[test]
fn an_approved_merged_alert_reaches_every_rules_notify_list_redacted_per_partner() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let rules = r#"
[[rule]]
id = "nitazene"
name = "Nitazene detected"
feed = "drug_testing"
when = 'substances_major ~ "(?i)nitazene"'
severity = "critical"
review = ["dews-panel"]
notify = ["lead-bolton"]
merge = "sample"

[[rule]]
id = "new-substance"
name = "Substance never detected before"
feed = "drug_testing"
kind = "first_seen"
field = "substances_major"
severity = "warning"
review = ["dews-panel"]
notify = ["drug-service"]
merge = "sample"
"#;
    let config = shipped_config(dir.path(), &smtp, Some(rules));
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", Duration::from_secs(20));
    let notes = "handed in at 14 Secret Lane";
    write_atomically(
        &dir.path().join("var/incoming/drug-testing"),
        "results.csv",
        format!(
            "sample_id,tested_at,district,substances_major,notes\nS1,2025-11-04T10:05:00Z,Salford,heroin;N-Desethylisotonitazene,{notes}\n"
        ),
    );
    let drafts = smtp.wait_for(1, Duration::from_secs(30));
    wait_outbox_drained(&config);
    assert_eq!(smtp.messages().len(), 1, "one draft for one sample");
    let draft = &drafts[0];
    assert_eq!(draft.to(), ["dews-panel@example.org"]);
    // heroin and the nitazene are both new: two more reasons.
    assert!(
        draft.subject().unwrap().ends_with("and two more reasons"),
        "{:?}",
        draft.subject()
    );
    approve(&config, &draft.header("X-Earlywarn-Alert").unwrap());
    // lead-bolton is on the nitazene's list but covers Bolton only; the
    // charity is on the first-seen rule's and covers Salford.
    let mails = smtp.wait_for(2, Duration::from_secs(30));
    wait_outbox_drained(&config);
    assert_eq!(smtp.messages().len(), 2);
    let charity = &mails[1];
    assert_eq!(charity.to(), ["alerts@harbour.example.org"]);
    let text = charity.text_body().unwrap();
    assert!(text.contains("WHY THIS WAS RAISED"), "{text}");
    assert!(
        text.contains("notify list of the rule \"Substance never detected before\""),
        "{text}"
    );
    assert!(
        !charity.data.contains("Secret Lane"),
        "no ISA, no notes: {}",
        charity.data
    );
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(20)).unwrap().success());
}

#[test]
fn replay_prints_each_merged_alerts_reasons() {
    let root = Path::new(ROOT);
    let out = earlywarn(&[
        "replay",
        "--config",
        root.join("config.example.toml").to_str().unwrap(),
        "--feed",
        "drug_testing",
        "--format",
        "json",
        root.join("examples/drug-testing-2025-11-04.csv")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 4, "one alert per sample with a finding");
    let bolton = alerts
        .iter()
        .find(|a| a["rule"] == "nitazene-detected" && a["district"] == "Bolton")
        .unwrap();
    assert_eq!(
        bolton["reasons"],
        serde_json::json!([{
            "rule": "new-substance-major",
            "name": "Substance never detected before",
            "severity": "warning",
            "found": ["protonitazene"]
        }])
    );
}
