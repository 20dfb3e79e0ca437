//! Review decisions end to end (SPEC §5.4): the real binary (or `review::decide`
//! against the running daemon's database), a real SMTP server on loopback.
//!
//! - an approval with edits: the partners' emails carry the panel's headline,
//!   advice and severity and the "Assessed and approved by" line; a partner
//!   left out gets nothing; a lower-case id works;
//! - a dismissal needs a reason (exit 1 without), and with one closes the alert;
//! - `approvals = 2`: nothing goes out until a second, different person approves.

mod support;

use earlywarn::audit::Actor;
use earlywarn::review::{Authority, Decided, Decision, Edits, decide};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn write_config(dir: &Path, smtp: &SmtpServer, rule_extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/rules.toml"),
        format!(
            r#"
[lists]
nitazenes = ["protonitazene"]

[[rule]]
id = "nitazene-detected"
name = "Nitazene detected"
feed = "drug_testing"
when = 'substances_major in nitazenes'
severity = "warning"
review = ["panel"]
notify = ["bolton", "charity", "nhs"]
advice = "Carry naloxone."
{rule_extra}
"#
        ),
    )
    .unwrap();
    let config = format!(
        r#"
[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
settle = "1s"
timezone = "Europe/London"

[mail]
from = "GM Early Warning <earlywarn@example.org>"
{mail}
retry_initial = "1s"
retry_max = "2s"
timeout = "5s"

[[feed]]
name = "drug_testing"
dir = "in/drug"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";" }}
sensitive = ["notes"]

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

[[partner]]
id = "nhs"
name = "NHS Trust"
emails = ["nhs@example.org"]
isa = true
min_severity = "critical"
"#,
        mail = smtp.mail_config(dir)
    );
    let path = dir.join("earlywarn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the daemon, drops one file with a nitazene, and returns the daemon
/// and the alert id of the draft the panel received.
fn drafted(dir: &Path, config: &Path, smtp: &SmtpServer) -> (Daemon, String) {
    let mut daemon = Daemon::start(config);
    daemon.wait_for_log("Ready", WAIT);
    let t = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    write_atomically(
        &dir.join("in/drug"),
        "results.csv",
        format!(
            "sample_id,tested_at,district,substances_major,notes\nS1,{t},Bolton,heroin;protonitazene,seized near the park\n"
        ),
    );
    let drafts = smtp.wait_for(1, WAIT);
    wait_outbox_drained(config);
    assert_eq!(drafts.len(), 1);
    assert_eq!(drafts[0].to(), ["panel@example.org"]);
    let id = drafts[0].header("X-Earlywarn-Alert").unwrap();
    (daemon, id)
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stop(mut daemon: Daemon) {
    daemon.sigterm();
    assert!(daemon.wait_exit(WAIT).unwrap().success());
}

#[test]
fn an_approval_with_edits_reaches_the_partners_with_them_and_leaves_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "");
    let cfg = config.to_str().unwrap();
    let (daemon, id) = drafted(dir.path(), &config, &smtp);
    let lower = id.to_lowercase();

    let approve = earlywarn(&[
        "alerts",
        "approve",
        &lower,
        "--headline",
        "Strong nitazene batch in <Bolton>",
        "--advice",
        "Test before use.\nNever use alone.",
        "--severity",
        "critical",
        "--leave-out",
        "charity",
        "--by",
        "Dr Ana Reviewer",
        "--config",
        cfg,
    ]);
    assert!(approve.status.success(), "{}", err(&approve));
    assert!(
        out(&approve).contains("queued for bolton, nhs"),
        "{}",
        out(&approve)
    );

    smtp.wait_for(3, WAIT);
    wait_outbox_drained(&config);
    let mails = smtp.messages();
    assert_eq!(mails.len(), 3, "the draft, then bolton and nhs");
    let mut to: Vec<String> = mails[1..].iter().flat_map(|m| m.to()).collect();
    to.sort();
    assert_eq!(
        to,
        ["bolton@example.org", "nhs@example.org"],
        "critical now reaches nhs; charity was left out"
    );
    for m in &mails[1..] {
        let subject = m.subject().unwrap();
        assert!(
            subject.contains("[CRITICAL] Strong nitazene batch in <Bolton>"),
            "{subject}"
        );
        assert!(!subject.contains("DRAFT"), "{subject}");
        let text = m.text_body().unwrap().replace("\r\n", "\n");
        let top: Vec<&str> = text.lines().take(5).collect();
        assert!(
            top.iter()
                .any(|l| l.starts_with("Assessed and approved by Dr Ana Reviewer on ")),
            "{text}"
        );
        assert!(
            text.contains("WHAT TO DO\nTest before use.\nNever use alone."),
            "{text}"
        );
        assert!(!text.contains("Carry naloxone."), "{text}");
        let html = m.html_body().unwrap();
        assert!(
            html.contains("Assessed and approved by Dr Ana Reviewer on "),
            "{html}"
        );
        assert!(
            html.contains("Strong nitazene batch in &lt;Bolton&gt;"),
            "{html}"
        );
        assert!(!html.contains("<Bolton>"), "{html}");
        assert_eq!(
            m.header("X-Earlywarn-Severity").as_deref(),
            Some("critical")
        );
    }

    let show = earlywarn(&["alerts", "show", &lower, "--config", cfg]);
    assert!(show.status.success(), "{}", err(&show));
    let shown = out(&show);
    assert!(shown.contains("Status    approved"), "{shown}");
    assert!(shown.contains("Decisions"), "{shown}");
    assert!(
        shown.contains("approve by Dr Ana Reviewer (unix:"),
        "{shown}"
    );
    assert!(
        shown.contains("edited headline, advice, severity critical, left out charity"),
        "{shown}"
    );
    assert!(shown.contains("History"), "{shown}");
    let json = earlywarn(&[
        "alerts", "show", &lower, "--format", "json", "--config", cfg,
    ]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["decisions"][0]["edits"]["severity"], "critical");
    assert_eq!(json["audit"][0]["action"], "approve");
    stop(daemon);
}

#[test]
fn a_dismissal_needs_a_reason_and_then_closes_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "");
    let cfg = config.to_str().unwrap();
    let (daemon, id) = drafted(dir.path(), &config, &smtp);

    let refused = earlywarn(&["alerts", "dismiss", &id, "--config", cfg]);
    assert_eq!(refused.status.code(), Some(1), "{}", err(&refused));
    assert!(
        err(&refused).contains("needs a reason"),
        "{}",
        err(&refused)
    );
    let listed = earlywarn(&["alerts", "list", "--config", cfg]);
    assert!(out(&listed).contains(&id), "still awaiting review");

    let dismissed = earlywarn(&[
        "alerts",
        "dismiss",
        &id.to_lowercase(),
        "--reason",
        "Lab result withdrawn",
        "--config",
        cfg,
    ]);
    assert!(dismissed.status.success(), "{}", err(&dismissed));
    let listed = earlywarn(&["alerts", "list", "--config", cfg]);
    assert_eq!(out(&listed), "no alerts awaiting review\n");
    let shown = out(&earlywarn(&["alerts", "show", &id, "--config", cfg]));
    assert!(shown.contains("Status    dismissed"), "{shown}");
    assert!(shown.contains(": Lab result withdrawn"), "{shown}");
    wait_outbox_drained(&config);
    assert_eq!(smtp.messages().len(), 1, "only the draft was ever sent");
    stop(daemon);
}

#[test]
fn two_approvals_send_only_after_the_second_approver() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config_path = write_config(dir.path(), &smtp, "approvals = 2");
    let (daemon, id) = drafted(dir.path(), &config_path, &smtp);
    let config = earlywarn::config::Config::load(&config_path).unwrap();
    let rules = earlywarn::rules::RuleSet::load(&config).unwrap();
    let mut store = earlywarn::store::Store::open(&config.daemon.state_dir).unwrap();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let panel = Authority::Reviewer {
        partner: Some("panel".into()),
    };
    let ana = Actor::web("ana", "Dr Ana", ip);
    let ben = Actor::web("ben", "Dr Ben", ip);
    let approve = |store: &mut earlywarn::store::Store, actor: &Actor, edits: Edits| {
        decide(
            &config,
            &rules,
            store,
            &id.to_lowercase(),
            actor,
            &panel,
            Decision::Approve(edits),
            jiff::Timestamp::now(),
        )
    };

    let first = approve(&mut store, &ana, Edits::default()).unwrap();
    assert_eq!(first, Decided::ApprovalRecorded { have: 1, need: 2 });
    assert!(matches!(
        approve(&mut store, &ana, Edits::default()),
        Err(earlywarn::review::ReviewError::AlreadyApproved(_))
    ));
    wait_outbox_drained(&config_path);
    assert_eq!(smtp.messages().len(), 1, "one approval sends nothing");
    let cfg = config_path.to_str().unwrap();
    let listed = out(&earlywarn(&["alerts", "list", "--config", cfg]));
    assert!(listed.contains(&id), "still awaiting review: {listed}");

    let edits = Edits {
        advice: Some("Second reviewer's advice.".into()),
        ..Edits::default()
    };
    let second = approve(&mut store, &ben, edits).unwrap();
    assert_eq!(
        second,
        Decided::Approved {
            partners: vec!["bolton".into(), "charity".into()]
        }
    );
    let mails = smtp.wait_for(3, WAIT);
    wait_outbox_drained(&config_path);
    assert_eq!(smtp.messages().len(), 3);
    for m in &mails[1..] {
        let text = m.text_body().unwrap().replace("\r\n", "\n");
        assert!(
            text.contains(
                "Assessed and approved by Dr Ana (Drug Alert Panel) and Dr Ben (Drug Alert Panel) on "
            ),
            "{text}"
        );
        assert!(text.contains("Second reviewer's advice."), "{text}");
    }
    let audit = store.audit_of_alert(&id).unwrap();
    let actors: Vec<&str> = audit.iter().map(|a| a.actor.as_str()).collect();
    assert_eq!(actors, ["web:ana", "web:ben"]);
    stop(daemon);
}
