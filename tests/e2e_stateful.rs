//! Rules with memory, end to end: the real binary, a real SMTP server on loopback.
//!
//! - a 24-hour-support deadline (shortened to seconds) across a SIGKILL and restart:
//!   the discharge with a support record is never escalated, the one without is;
//! - review: the draft reaches only the reviewers; after `alerts approve` the partners get it, once.

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const INCIDENT_HEADER: &str = "record_id,incident_ref,incident_type,occurred_at,reported_at,district,location,weapon_type,injury,outcome,status,subject_key,notes\n";

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

fn write_config(dir: &Path, smtp: &SmtpServer, rules: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/rules.toml"), rules).unwrap();
    let config = format!(
        r#"
[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
settle = "1s"

[mail]
from = "GM Early Warning <earlywarn@example.org>"
{mail}
retry_initial = "1s"
retry_max = "2s"
timeout = "5s"

[[feed]]
name = "incidents"
dir = "in/incidents"
id_field = "record_id"
time_field = "occurred_at"
sensitive = ["location", "notes"]

[[feed]]
name = "drug_testing"
dir = "in/drug"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";" }}
sensitive = ["notes"]

[[partner]]
id = "viable"
name = "Operation Viable support"
emails = ["viable@example.org"]
isa = true

[[partner]]
id = "panel"
name = "Drug Alert Panel"
emails = ["panel@example.org"]
isa = true

[[partner]]
id = "bolton"
name = "Bolton lead"
emails = ["bolton@example.org"]
isa = true
districts = ["Bolton"]

[[partner]]
id = "charity"
name = "Street charity"
emails = ["charity@example.org"]
districts = ["Bolton", "Wigan"]
"#,
        mail = smtp.mail_config(dir)
    );
    let path = dir.join("earlywarn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn rule_of(m: &Received) -> String {
    m.header("X-Earlywarn-Rule").unwrap_or_default()
}

#[test]
fn a_discharge_without_support_escalates_across_a_restart_and_one_with_support_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(
        dir.path(),
        &smtp,
        r#"
[[rule]]
id = "discharge-support"
name = "Firearms discharge needs specialist support"
feed = "incidents"
kind = "deadline"
when = 'incident_type == "firearm_discharge"'
key = "incident_ref"
until = { feed = "incidents", when = 'incident_type == "support_provided"' }
within = "6s"
notify = ["viable"]
severity = "critical"
"#,
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", Duration::from_secs(20));
    let incidents = dir.path().join("in/incidents");
    let t = now_rfc3339();
    write_atomically(
        &incidents,
        "discharges.csv",
        format!(
            "{INCIDENT_HEADER}R1,GMP-A,firearm_discharge,{t},{t},Salford,Langworthy Rd,handgun,none,,open,,\n\
             R2,GMP-B,firearm_discharge,{t},{t},Bolton,Derby St,shotgun,none,,open,,\n"
        ),
    );
    daemon.wait_for_log("file=discharges.csv", Duration::from_secs(10));
    // Support for A arrives well inside its deadline.
    let s = now_rfc3339();
    write_atomically(
        &incidents,
        "support.csv",
        format!(
            "{INCIDENT_HEADER}R3,GMP-A,support_provided,{s},{s},Salford,,,,support given,closed,,\n"
        ),
    );
    daemon.wait_for_log("file=support.csv", Duration::from_secs(10));

    // Killed: nothing graceful. The deadline of B passes while it is down.
    daemon.sigkill();
    daemon
        .wait_exit(Duration::from_secs(10))
        .expect("daemon should die on SIGKILL");
    // B's deadline (6 s after its event time) passes while the daemon is down.
    let b_due = t.parse::<jiff::Timestamp>().unwrap() + Duration::from_secs(6);
    while jiff::Timestamp::now() <= b_due {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        smtp.messages().is_empty(),
        "no open notice was asked for, and nothing is due yet"
    );

    let mut restarted = Daemon::start(&config);
    let mails = smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1);
    let escalation = &mails[0];
    assert_eq!(rule_of(escalation), "discharge-support");
    let subject = escalation.subject().unwrap();
    assert!(
        subject.starts_with("OFFICIAL-SENSITIVE [CRITICAL] OVERDUE:"),
        "{subject}"
    );
    assert!(subject.contains("GMP-B"), "{subject}");
    assert_eq!(escalation.to(), ["viable@example.org"]);
    // A had its support record: nothing more comes. The escalation is sent and no deadline is
    // open (below), so nothing can.
    wait_outbox_drained(&config);
    let all = smtp.messages();
    assert_eq!(
        all.len(),
        1,
        "only B escalates: {:?}",
        all.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );

    let status = earlywarn(&[
        "status",
        "--format",
        "json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        report["open_deadlines"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    restarted.sigterm();
    assert!(
        restarted
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
}

#[test]
fn a_reviewed_alert_reaches_partners_only_after_approval_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(
        dir.path(),
        &smtp,
        r#"
[lists]
nitazenes = ["protonitazene", "N-desethyl isotonitazene"]

[[rule]]
id = "nitazene-detected"
name = "Nitazene detected"
feed = "drug_testing"
when = 'substances_major in nitazenes'
severity = "critical"
review = ["panel"]
notify = ["bolton", "charity"]
group_by = ["district"]
advice = "Carry naloxone."
"#,
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", Duration::from_secs(20));
    let t = now_rfc3339();
    write_atomically(
        &dir.path().join("in/drug"),
        "results.csv",
        format!(
            "sample_id,tested_at,district,substances_major,notes\nS1,{t},Bolton,heroin;N-Desethylisotonitazene,seized near the park\nS2,{t},Bolton,cocaine,\n"
        ),
    );
    let drafts = smtp.wait_for(1, Duration::from_secs(20));
    // The alert's rows were committed together: drained, the outbox has sent all there is.
    wait_outbox_drained(&config);
    assert_eq!(smtp.messages().len(), 1, "only the reviewers get the draft");
    let draft = &drafts[0];
    assert_eq!(draft.to(), ["panel@example.org"]);
    assert!(
        draft.subject().unwrap().contains("[DRAFT FOR ASSESSMENT]"),
        "{:?}",
        draft.subject()
    );
    let alert_id = draft.header("X-Earlywarn-Alert").unwrap();
    assert!(
        draft
            .text_body()
            .unwrap()
            .contains(&format!("earlywarn alerts approve {alert_id}"))
    );

    let cfg = config.to_str().unwrap();
    let list = earlywarn(&["alerts", "list", "--config", cfg]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&alert_id));

    let approve = earlywarn(&[
        "alerts",
        "approve",
        &alert_id,
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
    let mails = smtp.wait_for(3, Duration::from_secs(20));
    let mut partners: Vec<String> = mails[1..].iter().flat_map(|m| m.to()).collect();
    partners.sort();
    assert_eq!(partners, ["bolton@example.org", "charity@example.org"]);
    for m in &mails[1..] {
        assert_eq!(
            m.header("X-Earlywarn-Alert").as_deref(),
            Some(alert_id.as_str())
        );
        assert!(!m.subject().unwrap().contains("DRAFT"));
    }
    let charity = mails
        .iter()
        .find(|m| m.to() == ["charity@example.org"])
        .unwrap();
    assert!(
        !charity.data.contains("seized near the park"),
        "no ISA, no notes"
    );

    // A second approval is refused and sends nothing.
    let again = earlywarn(&["alerts", "approve", &alert_id, "--config", cfg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("approved (by Dr Reviewer"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    wait_outbox_drained(&config);
    assert_eq!(smtp.messages().len(), 3, "approved once, sent once");

    let show = earlywarn(&["alerts", "show", &alert_id, "--config", cfg]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("Decided   by Dr Reviewer"), "{shown}");
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(20)).unwrap().success());
}
