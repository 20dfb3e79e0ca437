//! The alert's life after it went out (SPEC §10, §7 threading), end to end:
//! the real binary and daemon, a real SQLite file, a real SMTP server on loopback.
//!
//! - `alerts update` and `alerts withdraw` reach every partner that received
//!   the alert, each threaded under that partner's first email, with the
//!   subject as that partner got it and none of the evidence it withheld; a
//!   withdrawn alert cannot be updated or withdrawn again; `alerts show` tells
//!   the whole history.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A config with one nitazene rule; `rule_extra` adds keys to it, `web` a `[web]` section.
fn write_config(dir: &Path, smtp: &SmtpServer, rule_extra: &str, web: &str) -> PathBuf {
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
notify = ["bolton", "charity"]
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
ops = ["ops"]

[mail]
from = "GM Early Warning <earlywarn@example.org>"
{mail}
retry_initial = "1s"
retry_max = "2s"
timeout = "5s"

{web}

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
id = "ops"
name = "Ops"
emails = ["ops@example.org"]
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
emails = ["charity@example.org", "outreach@example.org"]
"#,
        mail = smtp.mail_config(dir)
    );
    let path = dir.join("earlywarn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Drops one file with a nitazene and a sensitive note.
fn drop_sample(dir: &Path, name: &str, sample: &str) {
    let t = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    write_atomically(
        &dir.join("in/drug"),
        name,
        format!(
            "sample_id,tested_at,district,substances_major,notes\n{sample},{t},Bolton,heroin;protonitazene,seized near the park\n"
        ),
    );
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

/// The message each partner's first address got, by `rcpt_tos[0]`.
fn to<'a>(mails: &'a [Received], address: &str) -> Vec<&'a Received> {
    mails
        .iter()
        .filter(|m| m.rcpt_tos.first().map(String::as_str) == Some(address))
        .collect()
}

#[test]
fn updates_and_a_withdrawal_reach_every_partner_threaded_under_its_first_email() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "", "");
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "results.csv", "S1");
    let first = smtp.wait_for(2, WAIT);
    wait_outbox_drained(&config);
    let id = first[0].header("X-Earlywarn-Alert").unwrap();

    let o = earlywarn(&[
        "alerts",
        "update",
        &id.to_lowercase(),
        "--text",
        "Lab confirms: protonitazene, 10 mg per tablet.",
        "--by",
        "J Smith",
        "--config",
        cfg,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains(&format!("update 1 of {id}: queued for bolton, charity")),
        "{}",
        out(&o)
    );
    let o = earlywarn(&[
        "alerts",
        "update",
        &id,
        "--text",
        "Second batch seen in Farnworth.",
        "--config",
        cfg,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let o = earlywarn(&[
        "alerts",
        "withdraw",
        &id,
        "--reason",
        "The lab result was for another sample.",
        "--config",
        cfg,
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let mails = smtp.wait_for(8, WAIT);
    wait_outbox_drained(&config);
    assert_eq!(mails.len(), 8);

    for address in ["bolton@example.org", "charity@example.org"] {
        let got = to(&mails, address);
        assert_eq!(got.len(), 4, "{address}");
        let original = got[0];
        let parent = format!("<{}>", original.message_id().unwrap());
        let subject = original.subject().unwrap();
        let expected = [
            format!("UPDATE 1: {subject}"),
            format!("UPDATE 2: {subject}"),
            format!("WITHDRAWN: {subject}"),
        ];
        for (mail, want) in got[1..].iter().zip(&expected) {
            assert_eq!(mail.subject().unwrap(), *want, "{address}");
            assert_eq!(
                mail.header_raw("In-Reply-To").unwrap().trim(),
                parent,
                "{address}"
            );
            assert_eq!(
                mail.header_raw("References").unwrap().trim(),
                parent,
                "{address}"
            );
            assert_eq!(mail.header("X-Earlywarn-Alert").unwrap(), id);
            assert_eq!(mail.to(), original.to(), "every address of the partner");
            let text = mail.text_body().unwrap();
            let html = mail.html_body().unwrap();
            assert!(text.contains(&format!("Reference: {id}")), "{text}");
            // A notice carries nothing the partner's first email did not: never the sensitive note.
            assert!(!mail.data.contains("seized near the park"), "{}", mail.data);
            assert!(!html.contains("seized"), "{html}");
        }
        assert!(
            got[1]
                .text_body()
                .unwrap()
                .contains("Lab confirms: protonitazene, 10 mg per tablet.")
        );
        assert!(
            got[3]
                .text_body()
                .unwrap()
                .contains("The lab result was for another sample.")
        );
        let ids: std::collections::BTreeSet<_> =
            got.iter().map(|m| m.message_id().unwrap()).collect();
        assert_eq!(ids.len(), 4, "each email its own Message-ID");
    }

    let o = earlywarn(&["alerts", "update", &id, "--text", "More.", "--config", cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("withdrawn"), "{}", err(&o));
    let o = earlywarn(&[
        "alerts", "withdraw", &id, "--reason", "Again.", "--config", cfg,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(
        err(&o).contains("cannot be updated or withdrawn again"),
        "{}",
        err(&o)
    );
    let o = earlywarn(&["alerts", "update", &id, "--text", "  ", "--config", cfg]);
    assert_eq!(o.status.code(), Some(1));

    let shown = out(&earlywarn(&["alerts", "show", &id, "--config", cfg]));
    assert!(shown.contains("Status    withdrawn"), "{shown}");
    assert!(shown.contains("raised"), "{shown}");
    assert!(shown.contains("update 1: Lab confirms"), "{shown}");
    assert!(shown.contains("withdraw"), "{shown}");
    assert!(shown.contains("update-2"), "{shown}");
    let json: serde_json::Value = serde_json::from_slice(
        &earlywarn(&["alerts", "show", &id, "--config", cfg, "--format", "json"]).stdout,
    )
    .unwrap();
    let actions: Vec<&str> = json["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "update", "withdraw"]);
    let purposes: Vec<&str> = json["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes.iter().filter(|p| **p == "withdrawn").count(), 2);
    stop(daemon);
}

#[test]
fn a_draft_in_review_cannot_be_updated_or_withdrawn() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, r#"review = ["panel"]"#, "");
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "results.csv", "S1");
    let draft = smtp.wait_for(1, WAIT);
    wait_outbox_drained(&config);
    let id = draft[0].header("X-Earlywarn-Alert").unwrap();
    for args in [["update", "--text"], ["withdraw", "--reason"]] {
        let o = earlywarn(&[
            "alerts",
            args[0],
            &id,
            args[1],
            "Something.",
            "--config",
            cfg,
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", err(&o));
        assert!(err(&o).contains("still awaiting review"), "{}", err(&o));
    }
    let o = earlywarn(&[
        "alerts",
        "update",
        "EW-NOSUCH",
        "--text",
        "x",
        "--config",
        cfg,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("no alert"), "{}", err(&o));
    assert_eq!(smtp.messages().len(), 1, "nothing more was sent");
    stop(daemon);
}

// A port of its own (0: any free one): the daemon serves the console when `[web]` is set.
const WEB: &str = "[web]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://ew.example.org\"";

/// The link `Confirm you have received this: URL` in a text body, and its token.
fn ack_link(text: &str) -> (String, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with("Confirm you have received this: "))
        .unwrap_or_else(|| panic!("no acknowledgement line in:\n{text}"));
    let url = line
        .trim_start_matches("Confirm you have received this: ")
        .trim()
        .to_string();
    let token = url
        .strip_prefix("https://ew.example.org/ack/")
        .unwrap_or_else(|| panic!("{url}"))
        .to_string();
    (url, token)
}

/// What a person does: open the link (the GET shows the page and its form
/// token), then press the button (the POST sends the form token back).
fn confirm(
    store: &mut earlywarn::store::Store,
    token: &str,
    name: Option<&str>,
    ip: &str,
    now: jiff::Timestamp,
) -> Result<
    (
        earlywarn::ack::AckClaim,
        earlywarn::store::lifecycle::AckOutcome,
    ),
    earlywarn::lifecycle::LifecycleError,
> {
    let form = earlywarn::lifecycle::ack_target(store, token, now)
        .map(|page| page.form_token)
        .unwrap_or_default();
    earlywarn::lifecycle::acknowledge(store, token, &form, name, ip, now)
}

#[test]
fn each_partner_gets_its_own_ack_link_and_confirming_records_once() {
    use earlywarn::lifecycle::{LifecycleError, ack_target, acknowledge};
    use earlywarn::store::lifecycle::AckOutcome;
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "", WEB);
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "results.csv", "S1");
    let mails = smtp.wait_for(2, WAIT);
    wait_outbox_drained(&config);
    let id = mails[0].header("X-Earlywarn-Alert").unwrap();
    let bolton = to(&mails, "bolton@example.org")[0];
    let charity = to(&mails, "charity@example.org")[0];
    let (bolton_url, bolton_token) = ack_link(&bolton.text_body().unwrap());
    let (_, charity_token) = ack_link(&charity.text_body().unwrap());
    assert_ne!(bolton_token, charity_token);
    assert!(
        bolton
            .html_body()
            .unwrap()
            .contains(&format!("<a href=\"{bolton_url}\">")),
        "{}",
        bolton.html_body().unwrap()
    );

    let mut store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let now = jiff::Timestamp::now();
    // Opening the link (what a mail scanner does) shows the alert and records nothing.
    let target = ack_target(&store, &bolton_token, now).unwrap();
    assert_eq!(
        (
            target.claim.alert_id.as_str(),
            target.claim.partner_id.as_str()
        ),
        (id.as_str(), "bolton")
    );
    assert!(target.confirmed.is_none());
    // What the page may show charity: its own redacted view, without the sensitive note.
    let (loaded, rules) = earlywarn::daemon::load_config_and_rules(&config).unwrap();
    let charity_target = ack_target(&store, &charity_token, now).unwrap();
    let view = earlywarn::lifecycle::partner_view(&loaded, &rules, &charity_target).unwrap();
    assert_eq!(view.partner.id, "charity");
    assert!(view.withheld.contains("notes"), "{:?}", view.withheld);
    assert!(!format!("{:?}", view.events).contains("seized near the park"));
    assert!(out(&earlywarn(&["alerts", "show", &id, "--config", cfg])).contains("by nobody yet"));

    // A POST that did not come from the page (a scanner replaying the link) records nothing.
    for form in ["", "1.x", &charity_target.form_token] {
        assert!(matches!(
            acknowledge(&mut store, &bolton_token, form, None, "192.0.2.6", now),
            Err(LifecycleError::Ack(earlywarn::ack::AckError::StaleForm))
        ));
    }
    assert!(store.acks_of(&id).unwrap().is_empty());

    let (claim, outcome) =
        confirm(&mut store, &bolton_token, Some("J Smith"), "192.0.2.7", now).unwrap();
    assert_eq!(claim.partner_id, "bolton");
    assert_eq!(outcome, AckOutcome::Recorded);
    let (_, again) = confirm(
        &mut store,
        &bolton_token,
        Some("Someone else"),
        "192.0.2.8",
        now,
    )
    .unwrap();
    match again {
        AckOutcome::AlreadyConfirmed(first) => {
            assert_eq!(first.name.as_deref(), Some("J Smith"));
            assert_eq!(first.ip, "192.0.2.7");
        }
        other => panic!("{other:?}"),
    }
    // A token with its partner changed, or one character off, is refused and records nothing.
    let mut tampered = bolton_token.clone().into_bytes();
    tampered[3] = if tampered[3] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(matches!(
        confirm(&mut store, &tampered, None, "192.0.2.9", now),
        Err(LifecycleError::Ack(earlywarn::ack::AckError::Invalid))
    ));
    let later = now + jiff::SignedDuration::from_hours(31 * 24);
    assert!(matches!(
        confirm(&mut store, &charity_token, None, "192.0.2.9", later),
        Err(LifecycleError::Ack(earlywarn::ack::AckError::Expired))
    ));
    assert_eq!(store.acks_of(&id).unwrap().len(), 1);

    let shown = out(&earlywarn(&["alerts", "show", &id, "--config", cfg]));
    assert!(
        shown.contains("for bolton by J Smith from 192.0.2.7"),
        "{shown}"
    );
    assert!(
        shown.contains("acknowledge") && shown.contains("anonymous from 192.0.2.7"),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &earlywarn(&["alerts", "show", &id, "--config", cfg, "--format", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(json["acknowledgements"][0]["partner_id"], "bolton");
    let audit: Vec<&str> = json["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(audit, ["acknowledge"], "recorded once, audited once");
    stop(daemon);
}

#[test]
fn a_draft_left_undecided_past_review_within_reminds_its_reviewers_and_ops_once() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(
        dir.path(),
        &smtp,
        "review = [\"panel\"]\nreview_within = \"2s\"",
        "",
    );
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "first.csv", "S1");
    // The draft, then (2 s on) its reminder to the panel and the note to ops.
    let mails = smtp.wait_for(3, WAIT);
    let draft = &mails[0];
    let id = draft.header("X-Earlywarn-Alert").unwrap();
    let subject = draft.subject().unwrap();
    let reminders = to(&mails, "panel@example.org");
    assert_eq!(reminders.len(), 2);
    let reminder = reminders[1];
    assert_eq!(reminder.subject().unwrap(), format!("REMINDER: {subject}"));
    let parent = format!("<{}>", draft.message_id().unwrap());
    assert_eq!(reminder.header_raw("In-Reply-To").unwrap().trim(), parent);
    assert!(
        reminder.message_id().unwrap().contains(".reminder-1@"),
        "{:?}",
        reminder.message_id()
    );
    assert!(
        reminder
            .text_body()
            .unwrap()
            .contains("DRAFT FOR ASSESSMENT"),
        "the draft again"
    );
    let ops = to(&mails, "ops@example.org");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].subject().unwrap(), format!("REMINDER: {subject}"));
    assert!(
        ops[0]
            .text_body()
            .unwrap()
            .contains("still awaiting assessment")
    );
    assert!(
        !ops[0].data.contains("seized near the park"),
        "ops get no evidence"
    );
    wait_outbox_drained(&config);

    // After a restart, a second draft is reminded too (the clock ran), the first not again.
    daemon.sigterm();
    assert!(daemon.wait_exit(WAIT).unwrap().success());
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "second.csv", "S2");
    let mails = smtp.wait_for(6, WAIT);
    wait_outbox_drained(&config);
    assert_eq!(
        mails.len(),
        6,
        "{:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    let about_first = mails
        .iter()
        .filter(|m| m.header("X-Earlywarn-Alert").as_deref() == Some(id.as_str()))
        .count();
    assert_eq!(about_first, 3, "draft, one reminder, one note to ops");
    let json: serde_json::Value = serde_json::from_slice(
        &earlywarn(&["alerts", "show", &id, "--config", cfg, "--format", "json"]).stdout,
    )
    .unwrap();
    let purposes: Vec<&str> = json["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["draft", "reminder-1", "reminder-1"]);
    stop(daemon);
}

#[test]
fn ack_within_reminds_only_the_partner_that_has_not_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "ack_within = \"6s\"", WEB);
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "results.csv", "S1");
    let first = smtp.wait_for(2, WAIT);
    let id = first[0].header("X-Earlywarn-Alert").unwrap();
    let bolton = to(&first, "bolton@example.org")[0].clone();
    let charity = to(&first, "charity@example.org")[0].clone();
    let (_, token) = ack_link(&bolton.text_body().unwrap());
    let mut store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    confirm(
        &mut store,
        &token,
        None,
        "192.0.2.7",
        jiff::Timestamp::now(),
    )
    .unwrap();
    drop(store);

    // Charity's reminder and the note to ops.
    let mails = smtp.wait_for(4, WAIT);
    wait_outbox_drained(&config);
    assert_eq!(
        mails.len(),
        4,
        "{:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert_eq!(
        to(&mails, "bolton@example.org").len(),
        1,
        "bolton confirmed: no reminder"
    );
    let again = to(&mails, "charity@example.org");
    assert_eq!(again.len(), 2);
    let reminder = again[1];
    assert_eq!(
        reminder.subject().unwrap(),
        format!("REMINDER: {}", charity.subject().unwrap())
    );
    assert_eq!(
        reminder.header_raw("In-Reply-To").unwrap().trim(),
        format!("<{}>", charity.message_id().unwrap())
    );
    assert_eq!(
        reminder.to(),
        ["charity@example.org", "outreach@example.org"]
    );
    let text = reminder.text_body().unwrap();
    let (_, reminder_token) = ack_link(&text);
    assert!(
        !text.contains("seized near the park"),
        "redacted as the original: {text}"
    );
    let ops = to(&mails, "ops@example.org");
    assert_eq!(ops.len(), 1);
    let note = ops[0].text_body().unwrap();
    assert!(note.contains("Street charity (charity)"), "{note}");
    assert!(
        !note.contains("Bolton lead"),
        "only the silent partner: {note}"
    );

    // The reminder's link confirms for charity; the alert is not reminded again.
    let mut store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let (claim, _) = confirm(
        &mut store,
        &reminder_token,
        Some("Outreach desk"),
        "192.0.2.8",
        jiff::Timestamp::now(),
    )
    .unwrap();
    assert_eq!(claim.partner_id, "charity");
    let json: serde_json::Value = serde_json::from_slice(
        &earlywarn(&["alerts", "show", &id, "--config", cfg, "--format", "json"]).stdout,
    )
    .unwrap();
    let purposes: Vec<&str> = json["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["alert", "alert", "reminder-2", "reminder-3"]);
    assert_eq!(json["acknowledgements"].as_array().unwrap().len(), 2);
    stop(daemon);
}

#[test]
fn an_approved_alert_carries_ack_links_and_its_draft_none() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let config = write_config(dir.path(), &smtp, "review = [\"panel\"]", WEB);
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for_log("Ready", WAIT);
    drop_sample(dir.path(), "results.csv", "S1");
    let draft = smtp.wait_for(1, WAIT);
    let id = draft[0].header("X-Earlywarn-Alert").unwrap();
    assert!(
        !draft[0]
            .text_body()
            .unwrap()
            .contains("Confirm you have received this"),
        "a draft is not for confirming"
    );
    let o = earlywarn(&["alerts", "approve", &id, "--config", cfg]);
    assert!(o.status.success(), "{}", err(&o));
    let mails = smtp.wait_for(3, WAIT);
    wait_outbox_drained(&config);
    let (_, token) = ack_link(&to(&mails, "charity@example.org")[0].text_body().unwrap());
    let mut store = earlywarn::store::Store::open(&dir.path().join("state")).unwrap();
    let (claim, _) = confirm(
        &mut store,
        &token,
        None,
        "192.0.2.7",
        jiff::Timestamp::now(),
    )
    .unwrap();
    assert_eq!(
        (claim.alert_id.as_str(), claim.partner_id.as_str()),
        (id.as_str(), "charity")
    );
    stop(daemon);
}
