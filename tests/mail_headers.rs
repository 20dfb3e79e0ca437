//! Email headers end to end (SPEC §7, issue 11 items 4 and 7): the real binary, its
//! file transport and a real SMTP server on loopback with STARTTLS and AUTH.
//!
//! - the draft to the panel and the approved alert have their own Message-IDs, both
//!   arrive (two `.eml` files), and the approved copy replies to the draft;
//! - `Date` is when the email was first handed to the transport: an approval made
//!   later is dated at or after it, and a retry keeps the first hand-off's date;
//! - the escalation and the closed notice of one deadline reply to the first email
//!   each partner got about it;
//! - `Auto-Submitted` and `Reply-To` on every email;
//! - `send-test-email` is a proper MIME message saying who sent it.

mod e2e_support;
mod support;

use e2e_support::{csv, row, smtp_mail_lines, start_daemon, stop_daemon, wait_eml};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Received, SmtpMode, SmtpOptions, SmtpServer, SmtpTls, earlywarn, write_atomically};

const WAIT: Duration = Duration::from_secs(20);
const REPLY_TO: &str = "GM Drug Alert Panel <panel-replies@example.org>";
const INCIDENT_HEADER: &str = "record_id,incident_ref,incident_type,occurred_at,reported_at,district,location,weapon_type,injury,outcome,status,subject_key,notes\n";

/// A config under `dir` with both example feeds, partners `panel` (reviewer, ISA),
/// `bolton`, `viable` and `duty`, the `[mail]` lines given, and `rules` as the rule file.
fn write_config(dir: &Path, mail: &str, rules: &str) -> PathBuf {
    fs::create_dir_all(dir.join("rules")).unwrap();
    fs::write(dir.join("rules/rules.toml"), rules).unwrap();
    let config = format!(
        r#"[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
timezone = "Europe/London"
settle = "1s"
shutdown_timeout = "5s"

[mail]
from = "GM Early Warning <earlywarn@example.org>"
marking = "OFFICIAL-SENSITIVE"
timeout = "5s"
retry_initial = "1s"
retry_max = "2s"
{mail}
[[feed]]
name = "drug_testing"
dir = "in/drug-testing"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";", substances_minor = ";" }}
sensitive = ["notes"]

[[feed]]
name = "incidents"
dir = "in/incidents"
id_field = "record_id"
time_field = "occurred_at"
sensitive = ["location", "notes"]

[[partner]]
id = "panel"
name = "GM Drug Alert Panel"
emails = ["panel@example.org"]
isa = true

[[partner]]
id = "bolton"
name = "Bolton lead"
emails = ["bolton@example.org"]
isa = true
districts = ["Bolton"]

[[partner]]
id = "viable"
name = "Operation Viable support"
emails = ["viable@example.org"]
isa = true

[[partner]]
id = "duty"
name = "Duty inspector"
emails = ["duty@example.org"]
isa = true
"#
    );
    let path = dir.join("earlywarn.toml");
    fs::write(&path, config).unwrap();
    path
}

const FILE_MAIL: &str = "transport = \"file\"\nfile_dir = \"mail\"\n";

fn reviewed_nitazene_rule() -> String {
    format!(
        r#"{}
[[rule]]
id = "nitazene-detected"
name = "Nitazene detected in a tested sample"
feed = "drug_testing"
when = 'substances_major in nitazenes or substances_minor in nitazenes'
severity = "critical"
review = ["panel"]
notify = ["panel", "bolton"]
group_by = ["district"]
"#,
        e2e_support::NITAZENE_LISTS
    )
}

const DEADLINE_RULE: &str = r#"
[[rule]]
id = "discharge-support"
name = "Firearms discharge needs specialist support"
feed = "incidents"
kind = "deadline"
when = 'incident_type == "firearm_discharge"'
key = "incident_ref"
until = { feed = "incidents", when = 'incident_type == "support_provided"' }
within = "3s"
notify_on_open = ["viable"]
notify = ["viable", "duty"]
notify_on_close = ["viable", "duty"]
severity = "critical"
"#;

/// The wall clock now, truncated to the second (a `Date` header's precision).
fn now_floor() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap()
}

/// Waits until the wall clock, truncated to the second, is past `at`.
fn wait_for_a_later_second(at: jiff::Timestamp) {
    while now_floor() <= at {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A message's `Date`, which every email must have.
fn date_of(m: &Received) -> jiff::Timestamp {
    let shown = m
        .header("Date")
        .unwrap_or_else(|| panic!("no Date:\n{}", m.data));
    shown
        .parse()
        .unwrap_or_else(|e| panic!("Date {shown:?}: {e}"))
}

fn id_of(m: &Received) -> String {
    m.message_id()
        .unwrap_or_else(|| panic!("no Message-ID:\n{}", m.data))
}

/// `In-Reply-To` and `References` without angle brackets (None if absent).
fn replies_to(m: &Received) -> (Option<String>, Option<String>) {
    let bare = |v: Option<String>| v.map(|v| v.trim_matches(['<', '>', ' ']).to_string());
    (bare(m.header("In-Reply-To")), bare(m.header("References")))
}

fn assert_auto_submitted(m: &Received) {
    assert_eq!(
        m.header("Auto-Submitted").as_deref(),
        Some("auto-generated"),
        "{}",
        m.data
    );
}

/// The one message to `address` whose subject contains `needle`.
fn one<'a>(mails: &'a [Received], address: &str, needle: &str) -> &'a Received {
    let found: Vec<&Received> = mails
        .iter()
        .filter(|m| m.to() == [address] && m.subject().unwrap_or_default().contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one email to {address} with {needle:?} in its subject; all: {:?}",
        mails
            .iter()
            .map(|m| (m.to(), m.subject()))
            .collect::<Vec<_>>()
    );
    found[0]
}

fn approve(config: &Path, alert: &str) {
    let out = earlywarn(&[
        "alerts",
        "approve",
        alert,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "approve failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_draft_and_the_approved_alert_are_two_emails_with_their_own_ids_and_dates() {
    let dir = e2e_support::tempdir();
    let mail = format!(
        "{FILE_MAIL}reply_to = \"{}\"\n",
        REPLY_TO.replace('"', "\\\"")
    );
    let config = write_config(dir.path(), &mail, &reviewed_nitazene_rule());
    let daemon = start_daemon(&config);
    let mail_dir = dir.path().join("mail");
    write_atomically(
        &dir.path().join("in/drug-testing"),
        "results.csv",
        csv(&[row("S-1", "Bolton", "protonitazene", "", "")]),
    );
    let drafts = wait_eml(&mail_dir, 1, WAIT);
    assert_eq!(drafts.len(), 1, "only the draft before the approval");
    let draft = &drafts[0];
    assert!(
        draft.subject().unwrap().contains("[DRAFT FOR ASSESSMENT]"),
        "{:?}",
        draft.subject()
    );
    let alert = draft.header("X-Earlywarn-Alert").unwrap();

    // The panel takes its time: the approved alert must not carry the draft's date. Approved
    // in a later second than the draft's `Date` (a `Date` has whole seconds).
    let draft_date = date_of(draft);
    wait_for_a_later_second(draft_date);
    let approved_at = now_floor();
    approve(&config, &alert);
    let mails = wait_eml(&mail_dir, 3, WAIT);
    stop_daemon(daemon);
    assert_eq!(mails.len(), 3, "draft, and the alert to panel and bolton");

    let panel_draft = one(&mails, "panel@example.org", "[DRAFT FOR ASSESSMENT]");
    let panel_alert = mails
        .iter()
        .find(|m| m.to() == ["panel@example.org"] && id_of(m) != id_of(panel_draft))
        .expect("the approved alert to the panel");
    let bolton_alert = one(&mails, "bolton@example.org", "Protonitazene, Bolton");
    assert_eq!(
        id_of(panel_draft),
        format!("{alert}.panel.draft@example.org")
    );
    assert_eq!(id_of(panel_alert), format!("{alert}.panel@example.org"));
    assert_eq!(id_of(bolton_alert), format!("{alert}.bolton@example.org"));
    assert!(!panel_alert.subject().unwrap().contains("DRAFT"));

    // The panel sees its draft and the decision as one conversation; Bolton's first
    // email about the alert is the alert itself.
    let draft_id = Some(id_of(panel_draft));
    assert_eq!(replies_to(panel_alert), (draft_id.clone(), draft_id));
    assert_eq!(replies_to(panel_draft), (None, None));
    assert_eq!(replies_to(bolton_alert), (None, None));

    for approved in [panel_alert, bolton_alert] {
        let date = date_of(approved);
        assert!(
            date >= approved_at,
            "dated {date}, before the approval at {approved_at}"
        );
    }
    assert!(
        date_of(panel_draft) < approved_at,
        "the draft went out before the approval"
    );
    for m in &mails {
        assert_auto_submitted(m);
        assert_eq!(m.header("Reply-To").as_deref(), Some(REPLY_TO));
        assert_eq!(
            m.header("X-Earlywarn-Alert").as_deref(),
            Some(alert.as_str())
        );
        assert_eq!(
            m.header("X-Earlywarn-Rule").as_deref(),
            Some("nitazene-detected")
        );
    }
    // Three files: nothing overwrote the draft.
    let files = e2e_support::names_in(&mail_dir);
    let emls: Vec<&String> = files
        .iter()
        .filter(|n| n.ends_with(".eml") && !n.starts_with('.'))
        .collect();
    assert_eq!(emls.len(), 3, "{files:?}");
    assert!(
        emls.iter().any(|n| n.contains(".panel.draft-")),
        "the draft's file is named for it: {files:?}"
    );
}

#[test]
fn the_escalation_and_the_closed_notice_reply_to_each_partners_first_email() {
    let dir = e2e_support::tempdir();
    let config = write_config(dir.path(), FILE_MAIL, DEADLINE_RULE);
    let daemon = start_daemon(&config);
    let mail_dir = dir.path().join("mail");
    let incidents = dir.path().join("in/incidents");
    let t = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    write_atomically(
        &incidents,
        "discharge.csv",
        format!(
            "{INCIDENT_HEADER}R1,GMP-A,firearm_discharge,{t},{t},Salford,Langworthy Rd,handgun,none,,open,,\n"
        ),
    );
    // The opening notice (viable), then the escalation (viable, duty) once 3 s pass.
    let mails = wait_eml(&mail_dir, 3, WAIT);
    assert_eq!(mails.len(), 3, "the opening notice and two escalations");
    let s = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    write_atomically(
        &incidents,
        "support.csv",
        format!(
            "{INCIDENT_HEADER}R2,GMP-A,support_provided,{s},{s},Salford,,,,support given,closed,,\n"
        ),
    );
    let mails = wait_eml(&mail_dir, 5, WAIT);
    stop_daemon(daemon);
    assert_eq!(mails.len(), 5, "and a closed notice to each");

    let opening = one(&mails, "viable@example.org", "due by");
    let viable_overdue = one(&mails, "viable@example.org", "OVERDUE");
    let viable_closed = one(&mails, "viable@example.org", "Closed late");
    let duty_overdue = one(&mails, "duty@example.org", "OVERDUE");
    let duty_closed = one(&mails, "duty@example.org", "Closed late");

    let ids: std::collections::BTreeSet<String> = mails.iter().map(id_of).collect();
    assert_eq!(ids.len(), 5, "every email has its own Message-ID");
    let first_of_viable = Some(id_of(opening));
    assert_eq!(replies_to(opening), (None, None));
    for later in [viable_overdue, viable_closed] {
        assert_eq!(
            replies_to(later),
            (first_of_viable.clone(), first_of_viable.clone()),
            "{:?}",
            later.subject()
        );
    }
    // The duty inspector was not told of the opening: its first email is the escalation.
    let first_of_duty = Some(id_of(duty_overdue));
    assert_eq!(replies_to(duty_overdue), (None, None));
    assert_eq!(
        replies_to(duty_closed),
        (first_of_duty.clone(), first_of_duty)
    );
    for m in &mails {
        assert_auto_submitted(m);
        assert_eq!(
            m.header("X-Earlywarn-Rule").as_deref(),
            Some("discharge-support")
        );
        assert_eq!(m.header("Reply-To"), None, "no reply_to configured");
    }
}

#[test]
fn over_smtp_a_retried_email_keeps_the_date_of_its_first_hand_off() {
    let dir = e2e_support::tempdir();
    let mut smtp = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth("earlywarn", "s3cret-pw")
            .mode(SmtpMode::Temp451),
    );
    let mail = format!(
        "{}reply_to = \"{}\"\n",
        smtp_mail_lines(&smtp, dir.path()),
        REPLY_TO.replace('"', "\\\"")
    );
    let rules = format!(
        "{}\n[[rule]]\nid = \"nitazene-detected\"\nname = \"Nitazene detected in a tested sample\"\nfeed = \"drug_testing\"\nwhen = 'substances_major in nitazenes'\nseverity = \"critical\"\nnotify = [\"bolton\"]\n",
        e2e_support::NITAZENE_LISTS
    );
    let config = write_config(dir.path(), &mail, &rules);
    let daemon = start_daemon(&config);
    let started = now_floor();
    write_atomically(
        &dir.path().join("in/drug-testing"),
        "results.csv",
        csv(&[row("S-1", "Bolton", "protonitazene", "", "")]),
    );
    // The first hand-off is refused with 451 after DATA; then the server is fixed.
    assert!(
        support::wait_until(WAIT, || !smtp.attempt_times().is_empty()),
        "the daemon never tried to send"
    );
    // Fixed in a later second than the first hand-off (which came before its MAIL FROM).
    let first_try = smtp.attempt_times()[0];
    wait_for_a_later_second(jiff::Timestamp::from_second(first_try as i64).unwrap());
    let fixed_at = now_floor();
    smtp.restart_with(SmtpMode::Accept);
    let mails = smtp.wait_for(1, WAIT);
    stop_daemon(daemon);
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(m.tls, "delivered over STARTTLS");
    assert_eq!(m.auth_user.as_deref(), Some("earlywarn"));
    assert!(
        smtp.attempt_times().len() >= 2,
        "it was retried: {:?}",
        smtp.attempt_times()
    );
    let date = date_of(m);
    assert!(
        date >= started && date < fixed_at,
        "dated {date}: the first hand-off was between {started} and {fixed_at}"
    );
    let alert = m.header("X-Earlywarn-Alert").unwrap();
    assert_eq!(id_of(m), format!("{alert}.bolton@example.org"));
    assert_auto_submitted(m);
    assert_eq!(m.header("Reply-To").as_deref(), Some(REPLY_TO));
    assert_eq!(m.header("MIME-Version").as_deref(), Some("1.0"));
}

#[test]
fn an_email_handed_off_before_a_kill_keeps_its_first_date_after_the_restart() {
    let dir = e2e_support::tempdir();
    // The first exchange hangs after DATA: the daemon is killed while it waits
    // for the outcome, after the hand-off time was written (without an fsync).
    let mut smtp = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::StallAfterData));
    let rules = format!(
        "{}\n[[rule]]\nid = \"nitazene-detected\"\nname = \"Nitazene detected in a tested sample\"\nfeed = \"drug_testing\"\nwhen = 'substances_major in nitazenes'\nseverity = \"critical\"\nnotify = [\"bolton\"]\n",
        e2e_support::NITAZENE_LISTS
    );
    let config = write_config(dir.path(), &smtp_mail_lines(&smtp, dir.path()), &rules);
    let mut daemon = start_daemon(&config);
    let started = now_floor();
    write_atomically(
        &dir.path().join("in/drug-testing"),
        "results.csv",
        csv(&[row("S-1", "Bolton", "protonitazene", "", "")]),
    );
    let db = dir.path().join("state/earlywarn.db");
    let handed_off = || -> Option<i64> {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT MAX(handed_off_at) FROM outbox", [], |r| r.get(0)))
            .ok()
            .flatten()
    };
    assert!(
        support::wait_until(WAIT, || !smtp.attempt_times().is_empty()
            && handed_off().is_some()),
        "the daemon never handed the email off:\n{}",
        daemon.log()
    );
    daemon.sigkill();
    daemon.wait_exit(WAIT).expect("killed");
    let first = handed_off().expect("the hand-off time survives the kill");
    // Restarted in a later second, so a Date taken now would show.
    wait_for_a_later_second(jiff::Timestamp::from_millisecond(first).unwrap());
    let restarted = now_floor();
    smtp.restart_with(SmtpMode::Accept);
    let daemon = start_daemon(&config);
    let mails = smtp.wait_for(1, WAIT);
    stop_daemon(daemon);
    assert_eq!(mails.len(), 1);
    let date = date_of(&mails[0]);
    assert!(
        date >= started && date < restarted,
        "dated {date}: handed off first between {started} and {restarted}"
    );
    assert_eq!(
        date,
        jiff::Timestamp::from_second(first.div_euclid(1000)).unwrap(),
        "the stored first hand-off, to the second"
    );
}

#[test]
fn the_test_email_is_a_proper_mime_message_that_says_who_sent_it() {
    let dir = e2e_support::tempdir();
    let smtp = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth("earlywarn", "s3cret-pw"),
    );
    let mail = format!(
        "{}reply_to = \"{}\"\n",
        smtp_mail_lines(&smtp, dir.path()),
        REPLY_TO.replace('"', "\\\"")
    );
    let config = write_config(dir.path(), &mail, DEADLINE_RULE);
    let before = now_floor();
    for _ in 0..2 {
        let out = earlywarn(&[
            "send-test-email",
            "--config",
            config.to_str().unwrap(),
            "--to",
            "ops@example.org",
        ]);
        assert!(
            out.status.success(),
            "send-test-email failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mails = smtp.wait_for(2, WAIT);
    assert_eq!(mails.len(), 2);
    assert_ne!(id_of(&mails[0]), id_of(&mails[1]), "each has its own id");
    for m in &mails {
        assert!(m.tls, "over STARTTLS");
        assert_eq!(m.rcpt_tos, ["ops@example.org"]);
        assert_eq!(
            m.header("MIME-Version").as_deref(),
            Some("1.0"),
            "{}",
            m.data
        );
        let content_type = m.header("Content-Type").unwrap_or_default().to_lowercase();
        assert!(
            content_type.starts_with("text/plain") && content_type.contains("charset=utf-8"),
            "{content_type}"
        );
        let subject = m.subject().unwrap();
        assert!(
            subject.starts_with("OFFICIAL-SENSITIVE [TEST]"),
            "{subject}"
        );
        assert_auto_submitted(m);
        assert_eq!(m.header("Reply-To").as_deref(), Some(REPLY_TO));
        assert!(id_of(m).ends_with("@example.org"), "{}", id_of(m));
        assert!(date_of(m) >= before);
        let body = m.text_body().unwrap();
        for needle in [
            "TEST EMAIL: no action is needed",
            "send-test-email",
            config.to_str().unwrap(),
            &format!("127.0.0.1:{}", smtp.port()),
            "unix:",
            "earlywarn:",
        ] {
            assert!(body.contains(needle), "the body lacks {needle:?}:\n{body}");
        }
    }

    // The file transport writes each test email to a file of its own.
    let file_dir = e2e_support::tempdir();
    let config = write_config(file_dir.path(), FILE_MAIL, DEADLINE_RULE);
    for _ in 0..2 {
        let out = earlywarn(&[
            "send-test-email",
            "--config",
            config.to_str().unwrap(),
            "--to",
            "ops@example.org",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = wait_eml(&file_dir.path().join("mail"), 2, WAIT);
    assert_eq!(files.len(), 2);
    for m in &files {
        assert_eq!(m.header("MIME-Version").as_deref(), Some("1.0"));
        assert_auto_submitted(m);
    }
}
