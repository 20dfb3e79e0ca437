//! Golden files: the text and HTML of one email of each kind, rendered
//! through the real path (`route`, then `render_in_thread` with the shipped
//! rules' templates; `ops::build` for a self-alert) with the shipped
//! `config.example.toml` and rules, a fixed clock and fixed records.
//!
//! `tests/golden/NAME.txt` is the subject, a blank line and the text part;
//! `NAME.html` the HTML part. A change in wording fails here with a diff;
//! `UPDATE_GOLDEN=1 cargo test --test golden` writes the files anew, to be
//! read (and the HTML looked at in a browser) before committing them.
//!
//! The cases are a table. The lifecycle's notices (update, withdrawn, the
//! reminders and the notes to ops) go the daemon's whole way: the alert and
//! its first emails are written to a real database as the pipeline writes
//! them, `lifecycle::update` / `withdraw` / `send_reminders` queue their
//! emails, and the case reads the queued message back (`Store::due`) and
//! parses it, so what is compared is what would be sent. Acknowledgement
//! links carry a token signed under the database's own (random) key: it is
//! written `TOKEN` in the files.

use earlywarn::alerts::render::{Purpose, RenderedEmail, render_in_thread};
use earlywarn::alerts::{
    Alert, AlertStatus, Approver, Assessment, Audience, Delivery, Trigger, route,
};
use earlywarn::config::{Config, Severity};
use earlywarn::event::{Event, Fields, Value};
use earlywarn::ops::{OpsNotifier, ProblemKind};
use earlywarn::rules::RuleSet;
use earlywarn::store::Store;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The clock every case is rendered at.
const NOW: &str = "2025-11-04T12:00:00Z";

struct World {
    config: Config,
    rules: RuleSet,
}

fn world() -> World {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("config.example.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    // A console, so a draft carries its link (SPEC §5.4).
    text.push_str(
        "\n[web]\nlisten = \"127.0.0.1:8080\"\npublic_url = \"https://earlywarn.example.org\"\n",
    );
    let config = Config::parse(&path, &text).unwrap();
    let rules = RuleSet::load(&config).unwrap();
    World { config, rules }
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn text(v: &str) -> Value {
    Value::Text(v.into())
}

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|i| (*i).into()).collect())
}

/// A drug-testing result as the lab's CSV gives it.
fn sample(id: &str, district: &str, tested: &str, extra: &[(&str, Value)]) -> Event {
    let mut fields: Fields = [
        ("sample_id", text(id)),
        ("tested_at", text(tested)),
        ("received_at", text("2025-11-03T16:05:00Z")),
        ("lab", text("GM Drug Checking Lab")),
        ("source", text("drug_service")),
        ("district", text(district)),
        ("postcode_district", text("BL1")),
    ]
    .into_iter()
    .collect();
    for (k, v) in extra {
        fields.insert(*k, v.clone());
    }
    Event {
        feed: "drug_testing".into(),
        record_id: Some(id.into()),
        time: at(tested),
        fields,
    }
}

/// An incident record as the police export gives it.
fn incident(id: &str, kind: &str, district: &str, occurred: &str, extra: &[(&str, &str)]) -> Event {
    let mut fields: Fields = [
        ("record_id", text(id)),
        ("incident_type", text(kind)),
        ("district", text(district)),
        ("occurred_at", text(occurred)),
        ("reported_at", text(occurred)),
    ]
    .into_iter()
    .collect();
    for (k, v) in extra {
        fields.insert(*k, text(v));
    }
    Event {
        feed: "incidents".into(),
        record_id: Some(id.into()),
        time: at(occurred),
        fields,
    }
}

fn nitazene_sample() -> Event {
    sample(
        "LAB-25-1187",
        "Bolton",
        "2025-11-04T09:40:00Z",
        &[
            ("purchased_as", text("oxycodone 80mg")),
            ("form", text("tablet")),
            ("colour", text("green")),
            ("marking", text("80")),
            ("substances_major", list(&["protonitazene"])),
            ("substances_minor", list(&["paracetamol", "caffeine"])),
            ("linked_harm", text("hospital_admission")),
            (
                "notes",
                text("Handed in at the Bolton service after an overdose"),
            ),
        ],
    )
}

fn alert(rule: &str, district: Option<&str>, events: Vec<Event>, trigger: Trigger) -> Alert {
    Alert {
        id: "EW-7Q3K9D2M1A".into(),
        rule_id: rule.into(),
        group: district
            .map(|d| BTreeMap::from([("district".to_string(), d.to_string())]))
            .unwrap_or_default(),
        district: district.map(String::from),
        severity: Severity::Critical,
        created_at: at(NOW),
        event_count: events.len() as u64,
        suppressed_before: 0,
        events,
        status: AlertStatus::Sent,
        trigger,
        assessment: None,
        reasons: Vec::new(),
    }
}

/// The email `partner` gets of `alert` in `audience`, through `route` and the rule set's templates.
fn email(w: &World, alert: &Alert, audience: Audience, partner: &str) -> RenderedEmail {
    let rule = w
        .rules
        .rules
        .iter()
        .find(|r| r.id == alert.rule_id)
        .unwrap_or_else(|| panic!("no shipped rule {}", alert.rule_id));
    let mut alert = alert.clone();
    alert.severity = rule.severity;
    let deliveries: Vec<Delivery<'_>> = route(&alert, rule, &w.config, audience);
    let delivery = deliveries
        .iter()
        .find(|d| d.partner.id == partner)
        .unwrap_or_else(|| panic!("{partner} does not get {}", alert.rule_id));
    render_in_thread(&alert, rule, &w.rules.templates, delivery, &w.config, None).unwrap()
}

fn deadline_events() -> Vec<Event> {
    vec![incident(
        "GMP-R-88121",
        "firearm_discharge",
        "Bolton",
        "2025-11-03T11:30:00Z",
        &[
            ("incident_ref", "GMP-25-110401"),
            ("weapon_type", "handgun"),
            ("injury", "none"),
            ("location", "ZZLOCATION rear of 14 Example Street"),
        ],
    )]
}

fn match_firearm(w: &World) -> RenderedEmail {
    let mut events = deadline_events();
    events[0].time = at("2025-11-04T10:15:00Z");
    events[0]
        .fields
        .insert("occurred_at", text("2025-11-04T10:15:00Z"));
    let mut a = alert("firearm-discharge", Some("Bolton"), events, Trigger::Match);
    a.group
        .insert("incident_ref".into(), "GMP-25-110401".into());
    email(w, &a, Audience::Notify, "lead-bolton")
}

fn threshold(w: &World) -> RenderedEmail {
    let events = [
        "2025-10-30T22:10:00Z",
        "2025-11-02T01:45:00Z",
        "2025-11-04T08:20:00Z",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| {
        incident(
            &format!("GMP-R-8800{i}"),
            "suspected_overdose",
            "Salford",
            t,
            &[
                ("outcome", "taken_to_hospital"),
                ("location", "ZZLOCATION Salford precinct"),
            ],
        )
    })
    .collect();
    let a = alert(
        "overdose-cluster",
        Some("Salford"),
        events,
        Trigger::Threshold {
            count: 3,
            within_secs: 7 * 86_400,
        },
    );
    email(w, &a, Audience::Notify, "drug-service")
}

fn deadline_open(w: &World) -> RenderedEmail {
    let mut a = alert(
        "firearm-discharge-support-due",
        Some("Bolton"),
        deadline_events(),
        Trigger::DeadlineOpened {
            key: "GMP-25-110401".into(),
            due: at("2025-11-04T11:30:00Z"),
            closed: false,
        },
    );
    // Opened when the discharge arrived, the day before.
    a.created_at = at("2025-11-03T11:42:00Z");
    email(w, &a, Audience::Notify, "viable-support")
}

fn deadline_open_already_overdue(w: &World) -> RenderedEmail {
    // The same discharge, arriving only now (an old export): already past due.
    let a = alert(
        "firearm-discharge-support-due",
        Some("Bolton"),
        deadline_events(),
        Trigger::DeadlineOpened {
            key: "GMP-25-110401".into(),
            due: at("2025-11-04T11:30:00Z"),
            closed: false,
        },
    );
    email(w, &a, Audience::Notify, "viable-support")
}

fn deadline_escalate(w: &World) -> RenderedEmail {
    let mut a = alert(
        "firearm-discharge-support-due",
        Some("Bolton"),
        deadline_events(),
        Trigger::DeadlineOverdue {
            key: "GMP-25-110401".into(),
            due: at("2025-11-04T11:30:00Z"),
        },
    );
    a.created_at = at("2025-11-04T11:30:02Z");
    email(w, &a, Audience::Notify, "lead-bolton")
}

fn deadline_close(w: &World) -> RenderedEmail {
    let mut events = deadline_events();
    events.push(incident(
        "GMP-R-88190",
        "support_provided",
        "Bolton",
        "2025-11-04T11:55:00Z",
        &[("incident_ref", "GMP-25-110401"), ("outcome", "visit_made")],
    ));
    let a = alert(
        "firearm-discharge-support-due",
        Some("Bolton"),
        events,
        Trigger::DeadlineClosed {
            key: "GMP-25-110401".into(),
            due: at("2025-11-04T11:30:00Z"),
            late: true,
        },
    );
    email(w, &a, Audience::Notify, "viable-support")
}

fn first_seen(w: &World) -> RenderedEmail {
    let event = sample(
        "LAB-25-1190",
        "Manchester",
        "2025-11-04T10:05:00Z",
        &[
            ("purchased_as", text("ketamine")),
            ("form", text("powder")),
            ("substances_major", list(&["2-fluorodeschloroketamine"])),
            ("linked_harm", text("none")),
        ],
    );
    let a = alert(
        "new-substance-major",
        Some("Manchester"),
        vec![event],
        Trigger::FirstSeen {
            field: "substances_major".into(),
            value: "2-fluorodeschloroketamine".into(),
        },
    );
    email(w, &a, Audience::Review, "dews-panel")
}

fn rate(w: &World) -> RenderedEmail {
    let events = (0..7)
        .map(|i| {
            let district = [
                "Bolton", "Wigan", "Oldham", "Bury", "Salford", "Bolton", "Trafford",
            ][i];
            incident(
                &format!("GMP-R-8900{i}"),
                "suspected_overdose",
                district,
                &format!("2025-11-0{}T0{}:00:00Z", 1 + i % 4, i),
                &[],
            )
        })
        .collect();
    let a = alert(
        "overdose-rise",
        None,
        events,
        Trigger::Rate {
            current: 7,
            baseline_average: 2.25,
            within_secs: 7 * 86_400,
        },
    );
    email(w, &a, Audience::Notify, "public-health")
}

fn silence(w: &World) -> RenderedEmail {
    let a = alert(
        "drug-testing-feed-silent",
        None,
        Vec::new(),
        Trigger::Silence {
            feed: "drug_testing".into(),
            last: at("2025-10-31T09:12:00Z"),
            silent_secs: 4 * 86_400,
        },
    );
    email(w, &a, Audience::Notify, "ops-team")
}

fn draft(w: &World) -> RenderedEmail {
    let mut a = alert(
        "nitazene-detected",
        Some("Bolton"),
        vec![nitazene_sample()],
        Trigger::Match,
    );
    a.status = AlertStatus::InReview;
    email(w, &a, Audience::Review, "dews-panel")
}

fn approved(w: &World) -> RenderedEmail {
    let mut a = alert(
        "nitazene-detected",
        Some("Bolton"),
        vec![nitazene_sample()],
        Trigger::Match,
    );
    a.status = AlertStatus::Approved;
    a.assessment = Some(Assessment {
        headline: None,
        advice: None,
        severity: None,
        left_out: Default::default(),
        approvers: vec![Approver {
            name: "Dr Asha Patel".into(),
            partner: Some("GM Drug Alert Panel (Drugs Early Warning System)".into()),
        }],
        approved_at: at("2025-11-04T11:48:00Z"),
    });
    email(w, &a, Audience::Notify, "lead-bolton")
}

fn ops(w: &World) -> RenderedEmail {
    let notifier = OpsNotifier::default();
    notifier.report_quoting(
        ProblemKind::FileRejected,
        "drug_testing/results-2025-11-04.csv",
        "the header has no `sample_id` column (it has: id, tested, district)",
        at("2025-11-04T11:02:00Z"),
    );
    notifier.report(
        ProblemKind::ReloadRefused,
        "rules/drug-alerts.toml:51:12: unknown list `nitazene`; did you mean `nitazenes`?",
        at("2025-11-04T11:20:00Z"),
    );
    notifier.cleared(
        ProblemKind::ReloadRefused,
        "26 rules in force (a rule file changed)",
        at("2025-11-04T11:31:00Z"),
    );
    let (problems, more) = notifier
        .take_due(std::time::Instant::now(), std::time::Duration::ZERO)
        .unwrap();
    let (_, emails) = earlywarn::ops::build(&w.config, &problems, more, at(NOW)).unwrap();
    emails
        .into_iter()
        .find(|(p, _)| p == "ops-team")
        .map(|(_, e)| e)
        .unwrap()
}

/// One sample that is both a nitazene and a substance never seen before:
/// the two rules' alerts merge (`merge = "drug-sample"`) into one draft
/// that names both reasons, through the real `alerts::merge::merge`.
fn merged(w: &World) -> RenderedEmail {
    let raised = |rule: &str, trigger: Trigger| {
        let mut a = alert(rule, Some("Bolton"), vec![nitazene_sample()], trigger);
        a.severity = w.rules.get(rule).unwrap().severity;
        a.status = AlertStatus::InReview;
        a
    };
    let alerts = vec![
        raised(
            "new-substance-major",
            Trigger::FirstSeen {
                field: "substances_major".into(),
                value: "protonitazene".into(),
            },
        ),
        raised("nitazene-detected", Trigger::Match),
    ];
    let merged = earlywarn::alerts::merge::merge(alerts, &w.rules, &w.config);
    assert_eq!(merged.len(), 1, "one draft, not two");
    assert_eq!(
        merged[0].rule_id, "nitazene-detected",
        "the most severe rule leads"
    );
    email(w, &merged[0], Audience::Review, "dews-panel")
}

/// The approved nitazene alert of [`approved`], as stored once it went out.
fn approved_alert() -> Alert {
    approved_alert_in("Bolton")
}

/// The same, the sample tested in `district`.
fn approved_alert_in(district: &str) -> Alert {
    let mut sample = nitazene_sample();
    sample.fields.insert("district", text(district));
    let mut a = alert(
        "nitazene-detected",
        Some(district),
        vec![sample],
        Trigger::Match,
    );
    a.status = AlertStatus::Approved;
    a
}

/// A real database in a fresh folder holding `alert` and its first emails
/// (drafts to `review`, or to `notify` with their acknowledgement links),
/// written as the pipeline writes them (`render_deliveries_with_acks`, then
/// the ledger's `insert_alert` and `enqueue` in one transaction).
fn store_with(w: &World, rules: &RuleSet, alert: &Alert) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let rule = rules.get(&alert.rule_id).unwrap();
    let deliveries = route(
        alert,
        rule,
        &w.config,
        earlywarn::alerts::first_audience(alert),
    );
    let key = store.ack_key().unwrap();
    let emails = earlywarn::pipeline::infallible(earlywarn::pipeline::render_deliveries_with_acks(
        &w.config,
        alert,
        rule,
        &rules.templates,
        &deliveries,
        |_, _| Ok(None),
        earlywarn::pipeline::ack_links(&w.config, Some(&key), &alert.id, alert.created_at),
    ));
    let tx = store.begin().unwrap();
    tx.insert_alert(alert, &serde_json::to_string(alert).unwrap())
        .unwrap();
    for o in &emails {
        tx.enqueue(
            &alert.id,
            &o.partner_id,
            o.audience,
            Purpose::of(o.audience),
            &o.email,
            alert.created_at,
        )
        .unwrap();
    }
    tx.commit().unwrap();
    (dir, store)
}

/// `text` with every acknowledgement token written `TOKEN`: it is signed
/// under the database's random key, so it differs on every run.
fn tokenless(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/ack/") {
        out.push_str(&rest[..at + "/ack/".len()]);
        rest = &rest[at + "/ack/".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        if end > 0 {
            out.push_str("TOKEN");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The email queued for `partner` with `purpose` (`update-1`, `reminder-2`, ...),
/// read back from the outbox and parsed as a mail client would.
fn queued(store: &Store, partner: &str, purpose: &str) -> RenderedEmail {
    let everything = store.due(at("2100-01-01T00:00:00Z"), 10_000).unwrap();
    let suffix = format!(".{partner}.{purpose}@");
    let item = everything
        .iter()
        .find(|i| i.partner_id == partner && i.message_id.contains(&suffix))
        .unwrap_or_else(|| {
            let ids: Vec<_> = everything.iter().map(|i| &i.message_id).collect();
            panic!("no {purpose} queued for {partner}; queued: {ids:?}")
        });
    let message = mail_parser::MessageParser::default()
        .parse(&item.message)
        .unwrap();
    let part = |body: Option<std::borrow::Cow<'_, str>>| {
        tokenless(&body.unwrap_or_default().replace("\r\n", "\n"))
    };
    RenderedEmail {
        subject: message.subject().unwrap_or_default().to_string(),
        text: part(message.body_text(0)),
        html: part(message.body_html(0)),
        message_id: item.message_id.clone(),
        thread: String::new(),
        from: item.mail_from.clone(),
        to: item.recipients.clone(),
        bytes: item.message.clone(),
    }
}

/// Two hours after the alert was raised.
fn later() -> Timestamp {
    at("2025-11-04T14:00:00Z")
}

fn update(w: &World) -> RenderedEmail {
    let (_dir, mut store) = store_with(w, &w.rules, &approved_alert());
    earlywarn::lifecycle::update(
        &w.config,
        &mut store,
        "EW-7Q3K9D2M1A",
        "The lab has measured the tablets: about 10 mg of protonitazene each, a dose that can kill someone with no opioid tolerance.\nThe same tablets have now been handed in at the Wigan service too.",
        &earlywarn::audit::Actor::daemon(),
        later(),
    )
    .unwrap();
    queued(&store, "lead-bolton", "update-1")
}

fn withdrawn(w: &World) -> RenderedEmail {
    let (_dir, mut store) = store_with(w, &w.rules, &approved_alert());
    earlywarn::lifecycle::withdraw(
        &w.config,
        &mut store,
        "EW-7Q3K9D2M1A",
        "The lab confirmed the result was from a contaminated test run: no nitazene was in the sample.",
        &earlywarn::audit::Actor::daemon(),
        later(),
    )
    .unwrap();
    queued(&store, "lead-bolton", "withdrawn")
}

/// The shipped rules with the nitazene rule given `review_within = "4h"` and
/// `ack_within = "2h"` (the shipped rules set neither).
fn timed_rules(w: &World) -> RuleSet {
    let mut rules = RuleSet::load(&w.config).unwrap();
    let rule = rules
        .rules
        .iter_mut()
        .find(|r| r.id == "nitazene-detected")
        .unwrap();
    rule.review_within = Some(std::time::Duration::from_secs(4 * 3600));
    rule.ack_within = Some(std::time::Duration::from_secs(2 * 3600));
    rules
}

/// The drafts' reviewers reminded at `review_within`, and ops told.
fn review_reminder_store(w: &World) -> (tempfile::TempDir, Store) {
    let rules = timed_rules(w);
    let mut draft = approved_alert();
    draft.status = AlertStatus::InReview;
    let (dir, mut store) = store_with(w, &rules, &draft);
    let reminded = earlywarn::lifecycle::send_reminders(
        &w.config,
        &rules,
        &mut store,
        at("2025-11-04T16:00:00Z"),
    )
    .unwrap();
    assert_eq!(reminded.drafts, ["EW-7Q3K9D2M1A"]);
    (dir, store)
}

fn reminder_review(w: &World) -> RenderedEmail {
    let (_dir, store) = review_reminder_store(w);
    queued(&store, "dews-panel", "reminder-1")
}

fn reminder_review_ops(w: &World) -> RenderedEmail {
    let (_dir, store) = review_reminder_store(w);
    queued(&store, "ops-team", "reminder-1")
}

/// The approved alert's partners reminded at `ack_within`, one having
/// confirmed receipt; ops told which have not.
fn ack_reminder_store(w: &World) -> (tempfile::TempDir, Store) {
    let rules = timed_rules(w);
    let (dir, mut store) = store_with(w, &rules, &approved_alert());
    let key = store.ack_key().unwrap();
    let token = earlywarn::ack::token(&key, "EW-7Q3K9D2M1A", "lead-salford", at(NOW));
    let form = earlywarn::lifecycle::ack_target(&store, &token, at("2025-11-04T12:20:00Z"))
        .unwrap()
        .form_token;
    earlywarn::lifecycle::acknowledge(
        &mut store,
        &token,
        &form,
        Some("Sam Okafor"),
        "192.0.2.7",
        at("2025-11-04T12:21:00Z"),
    )
    .unwrap();
    let reminded =
        earlywarn::lifecycle::send_reminders(&w.config, &rules, &mut store, later()).unwrap();
    let (_, silent) = &reminded.silent[0];
    assert!(silent.contains(&"lead-bolton".to_string()), "{silent:?}");
    assert!(!silent.contains(&"lead-salford".to_string()), "{silent:?}");
    (dir, store)
}

fn reminder_ack(w: &World) -> RenderedEmail {
    let (_dir, store) = ack_reminder_store(w);
    queued(&store, "lead-bolton", "reminder-2")
}

fn reminder_ack_ops(w: &World) -> RenderedEmail {
    let (_dir, store) = ack_reminder_store(w);
    queued(&store, "ops-team", "reminder-3")
}

/// One email of the table: its file name and how it is made.
type Case = (&'static str, Build);

/// How one email of the table is made.
type Build = fn(&World) -> RenderedEmail;

const CASES: &[Case] = &[
    ("match", match_firearm),
    ("threshold", threshold),
    ("deadline_open", deadline_open),
    (
        "deadline_open_already_overdue",
        deadline_open_already_overdue,
    ),
    ("deadline_escalate", deadline_escalate),
    ("deadline_close", deadline_close),
    ("first_seen", first_seen),
    ("rate", rate),
    ("silence", silence),
    ("draft", draft),
    ("approved", approved),
    ("merged", merged),
    ("update", update),
    ("withdrawn", withdrawn),
    ("reminder_review", reminder_review),
    ("reminder_review_ops", reminder_review_ops),
    ("reminder_ack", reminder_ack),
    ("reminder_ack_ops", reminder_ack_ops),
    ("ops", ops),
];

/// The notices that follow an email, with the `Message-ID` each must reply to.
const THREADED: &[(&str, Build, &str)] = &[
    ("update", update, "<EW-7Q3K9D2M1A.lead-bolton@"),
    ("withdrawn", withdrawn, "<EW-7Q3K9D2M1A.lead-bolton@"),
    (
        "reminder_review",
        reminder_review,
        "<EW-7Q3K9D2M1A.dews-panel.draft@",
    ),
    ("reminder_ack", reminder_ack, "<EW-7Q3K9D2M1A.lead-bolton@"),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `expected` and `actual` as a unified diff (the system's `diff`), for the failure message.
fn diff(name: &str, expected: &Path, actual: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-actual");
    std::fs::create_dir_all(&dir).unwrap();
    let written = dir.join(name);
    std::fs::write(&written, actual).unwrap();
    match std::process::Command::new("diff")
        .arg("-u")
        .arg(expected)
        .arg(&written)
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(_) => format!("(no `diff` here) the new text is in {}", written.display()),
    }
}

#[test]
fn every_kind_of_email_reads_as_its_golden_file() {
    let w = world();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = golden_dir();
    let mut failures = Vec::new();
    for (name, build) in CASES {
        let mail = build(&w);
        for (file, body) in [
            (
                format!("{name}.txt"),
                format!("Subject: {}\n\n{}", mail.subject, mail.text),
            ),
            (format!("{name}.html"), mail.html.clone()),
        ] {
            let path = dir.join(&file);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &body).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if expected == body => {}
                Ok(_) => failures.push(format!("{file} differs:\n{}", diff(&file, &path, &body))),
                Err(e) => failures.push(format!(
                    "{file}: {e} (UPDATE_GOLDEN=1 cargo test --test golden writes it)"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is meant, rewrite them with UPDATE_GOLDEN=1 cargo test --test golden and read the diff.",
        failures.join("\n")
    );
}

/// What a reader checks first in every golden email, whatever its wording:
/// the marking, no machine names or ISO times leading, the contact line,
/// and nothing withheld reaching a partner without the ISA.
#[test]
fn every_email_leads_with_words_and_keeps_what_must_be_kept() {
    let w = world();
    let contact = w.config.mail.contact.clone().unwrap();
    for (name, build) in CASES {
        let mail = build(&w);
        // A notice's subject is the original's after what it is (SPEC §10).
        let original = ["UPDATE 1: ", "WITHDRAWN: ", "REMINDER: "]
            .iter()
            .find_map(|p| mail.subject.strip_prefix(p))
            .unwrap_or(&mail.subject);
        assert!(
            original.starts_with("OFFICIAL-SENSITIVE ["),
            "{name}: {}",
            mail.subject
        );
        // The headline: the subject after its marking and tags, and a line of
        // its own in the text (a notice's after what happened: "Withdrawn: ...").
        let first_line = mail.subject.rsplit("] ").next().unwrap_or_default();
        // A merged alert's subject counts its other reasons; the text lists them.
        let first_line = first_line
            .split(" and one more reason")
            .next()
            .unwrap_or_default();
        assert!(
            mail.text
                .lines()
                .any(|l| l == first_line || l.ends_with(&format!(": {first_line}"))),
            "{name}: the headline is not a line of the text:\n{}",
            mail.text
        );
        for machine in [
            "Records:",
            "_at",
            "T11:",
            "EW-7Q3K9D2M1A",
            "matching record",
        ] {
            assert!(!first_line.contains(machine), "{name}: {first_line}");
            assert!(!mail.subject.contains(machine), "{name}: {}", mail.subject);
        }
        assert!(mail.text.contains(&contact), "{name}: no contact line");
        assert!(mail.html.contains("name=\"viewport\""), "{name}");
        assert!(
            mail.text.contains("Quote EW-") || mail.text.contains("Quote OPS-"),
            "{name}"
        );
        if mail.to.iter().any(|t| t.contains("harbour")) {
            assert!(
                !mail.text.contains("ZZLOCATION") && !mail.html.contains("ZZLOCATION"),
                "{name}"
            );
            assert!(mail.text.contains("Withheld: location"), "{name}");
        }
    }
}

/// An update, a withdrawal and a reminder reply to the first email the
/// partner got about the alert, so a mail client shows them in its thread.
#[test]
fn every_notice_replies_to_the_partners_first_email() {
    let w = world();
    for (name, build, parent) in THREADED {
        let mail = build(&w);
        let message = mail_parser::MessageParser::default()
            .parse(&mail.bytes)
            .unwrap();
        let header = |h: &str| {
            String::from_utf8_lossy(
                message
                    .header_raw(h)
                    .unwrap_or_else(|| panic!("{name}: no {h}"))
                    .as_bytes(),
            )
            .trim()
            .to_string()
        };
        for h in ["In-Reply-To", "References"] {
            assert!(header(h).starts_with(parent), "{name}: {h}: {}", header(h));
        }
        assert_ne!(mail.message_id, header("In-Reply-To"), "{name}");
    }
}

/// The acknowledgement page (`GET /ack/TOKEN`) as a partner without the ISA
/// (the Harbour charity, for a sample tested in Salford) sees it, through the console's real router and handler, the database
/// holding the approved alert as the pipeline wrote it and the page's clock
/// fixed. `tests/golden/ack_page.html`; the link's token and the form's are
/// signed under the database's random key and written `TOKEN` and `FORM`.
#[test]
fn the_acknowledgement_page_reads_as_its_golden_file() {
    use tower::ServiceExt;
    let w = world();
    let (dir, store) = store_with(&w, &w.rules, &approved_alert_in("Salford"));
    let key = store.ack_key().unwrap();
    drop(store);
    let token = earlywarn::ack::token(&key, "EW-7Q3K9D2M1A", "drug-service", at(NOW));
    let mut config = w.config.clone();
    config.daemon.state_dir = dir.path().to_path_buf();
    let (_rules_tx, rules) =
        tokio::sync::watch::channel(std::sync::Arc::new(RuleSet::load(&config).unwrap()));
    let mut state = earlywarn::web::WebState::new(std::sync::Arc::new(config), rules, None);
    state.clock = || "2025-11-04T12:40:00Z".parse().unwrap();
    let app = earlywarn::web::router(std::sync::Arc::new(state));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, page) = runtime.block_on(async {
        let response = app
            .oneshot(
                axum::http::Request::get(format!("/ack/{token}"))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    });
    assert_eq!(status, 200, "{page}");
    let form = {
        let pattern = "name=\"form\" value=\"";
        let start = page.find(pattern).expect("a form") + pattern.len();
        page[start..start + page[start..].find('"').unwrap()].to_string()
    };
    let page = page.replace(&token, "TOKEN").replace(&form, "FORM");
    assert!(page.contains("protonitazene"), "the evidence: {page}");
    assert!(!page.contains("Handed in at"), "the withheld note: {page}");
    let path = golden_dir().join("ack_page.html");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &page).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == page,
        "ack_page.html differs:\n{}\nIf the change is meant, rewrite it with UPDATE_GOLDEN=1 cargo test --test golden and read the diff.",
        diff("ack_page.html", &path, &page)
    );
}
