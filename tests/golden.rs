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
//! The cases are a table: the lifecycle's update, withdrawn and reminder
//! emails add rows to it.

use earlywarn::alerts::render::{RenderedEmail, render_in_thread};
use earlywarn::alerts::{
    Alert, AlertStatus, Approver, Assessment, Audience, Delivery, Trigger, route,
};
use earlywarn::config::{Config, Severity};
use earlywarn::event::{Event, Fields, Value};
use earlywarn::ops::{OpsNotifier, ProblemKind};
use earlywarn::rules::RuleSet;
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

/// One email per kind. Update, withdrawn and reminder emails (the alert
/// lifecycle) belong here too.
/// One email of the table: its file name and how it is made.
type Case = (&'static str, fn(&World) -> RenderedEmail);

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
    ("ops", ops),
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
        assert!(
            mail.subject.starts_with("OFFICIAL-SENSITIVE ["),
            "{name}: {}",
            mail.subject
        );
        // The headline: the subject after its marking and tags, and a line of its own in the text.
        let first_line = mail.subject.rsplit("] ").next().unwrap_or_default();
        assert!(
            mail.text.lines().any(|l| l == first_line),
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
