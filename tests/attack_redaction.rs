//! Redaction is complete (SPEC §5.3), tried as an attack against the real binary.
//!
//! Files planted with sensitive values under other spellings (`Notes`, `"notes "`,
//! `Location`), columns the feed does not list, and a headerless file whose first
//! record becomes a rejection reason for ops; mail goes to `.eml` files (file
//! transport), each parsed with mail-parser, and every header and both bodies of
//! every email to a partner without the ISA are searched for the planted values.
//! Then the configurations that would leak by design: `check` exits 1 with
//! `file:line:col`, the daemon refuses to start with them, and a reload to one
//! keeps the old rules.
//!
//! Run with `cargo test --test attack_redaction`.

mod e2e_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_support::*;
use support::{Received, write_atomically};

/// Planted in sensitive fields: must reach the ISA panel, never the charity.
const CSV_NOTE: &str = "ZZCSVNOTE sold behind the Crown pub";
const JSON_NOTE: &str = "ZZJSONNOTE witness lives at no. 4";
const JSON_LOCATION: &str = "ZZJSONLOCATION 12 Market Street";
/// Planted in columns no feed lists: must reach nobody.
const UNLISTED: &str = "ZZUNLISTED handler DC Smith";
/// The first record of a file without a header line, sensitive value first.
const HEADERLESS_NOTE: &str = "ZZHEADERLESS found at 7 Mill Lane";

const WITHHELD_FROM_CHARITY: [&str; 4] = [CSV_NOTE, JSON_NOTE, JSON_LOCATION, HEADERLESS_NOTE];

const DRUG_FIELDS: &str = r#"["sample_id", "received_at", "tested_at", "lab", "source", "district",
  "postcode_district", "purchased_as", "form", "colour", "marking",
  "substances_major", "substances_minor", "amount_mg_per_unit", "linked_harm", "notes"]"#;

const INCIDENT_FIELDS: &str = r#"["record_id", "incident_ref", "incident_type", "occurred_at", "reported_at",
  "district", "location", "weapon_type", "injury", "outcome", "status", "subject_key", "notes"]"#;

/// The config: two feeds as SPEC §3.1 ships them, an ISA panel, a charity
/// without the ISA, and ops partners with and without it. `incidents_extra` goes
/// into the incidents feed's table (to try a sensitive `district_field`).
fn config_text(incidents_extra: &str) -> String {
    format!(
        r#"[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
timezone = "Europe/London"
settle = "1s"
shutdown_timeout = "5s"
ops = ["it-ops", "panel"]
ops_interval = "1s"

[mail]
from = "GM Early Warning <earlywarn@example.org>"
{FILE_MAIL}
[[feed]]
name = "drug_testing"
dir = "in/drug-testing"
format = "csv"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";", substances_minor = ";" }}
sensitive = ["notes"]
fields = {DRUG_FIELDS}

[[feed]]
name = "incidents"
dir = "in/incidents"
format = "jsonl"
id_field = "record_id"
time_field = "occurred_at"
sensitive = ["location", "notes"]
fields = {INCIDENT_FIELDS}
{incidents_extra}

[[partner]]
id = "panel"
name = "Drug Alert Panel"
emails = ["panel@example.org"]
isa = true

[[partner]]
id = "charity"
name = "Street Charity"
emails = ["charity@example.org"]
isa = false

[[partner]]
id = "it-ops"
name = "IT Operations"
emails = ["it-ops@example.org"]
isa = false
"#
    )
}

/// Rules that pass `check` yet dump all they can reach into subject and body:
/// the renderer alone must keep the values out.
const GOOD_RULES: &str = r#"
[[rule]]
id = "nitazene"
name = "Nitazene detected"
feed = "drug_testing"
when = 'substances_major ~ "(?i)nitazene"'
severity = "critical"
notify = ["panel", "charity"]
group_by = ["district"]
subject = "{{ rule.name }} in {{ district }}: {{ event | tojson }}"
body = "{{ summary }} {{ events | tojson }} {{ event['Notes'] }} {{ event.notes }} {{ event.handler_name }}"

[[rule]]
id = "discharge"
name = "Firearm discharge"
feed = "incidents"
kind = "deadline"
when = 'incident_type == "firearm_discharge"'
key = "incident_ref"
until = { feed = "incidents", when = 'incident_type == "support_provided"' }
within = "24h"
notify = ["panel", "charity"]
notify_on_open = true
subject = "{{ headline }} {{ trigger | tojson }}"
body = "{{ event | tojson }} {{ event['notes '] }} {{ event.Location }} {{ key }} {{ due }}"
"#;

/// The drug-testing header with `notes` spelt `Notes` and a column nobody listed.
fn drug_csv(rows: &[String]) -> String {
    let header = HEADER.replace(",notes", ",Notes") + ",handler_name";
    let mut s = header + "\n";
    for r in rows {
        s += r;
        s += &format!(",{}\n", csv_field(UNLISTED));
    }
    s
}

fn incidents_jsonl() -> String {
    serde_json::json!({
        "record_id": "R-1",
        "incident_ref": "INC-77",
        "incident_type": "firearm_discharge",
        "occurred_at": "2025-11-04T10:00:00Z",
        "reported_at": "2025-11-04T10:05:00Z",
        "district": "Bolton",
        "Location": JSON_LOCATION,
        "notes ": JSON_NOTE,
        "weapon_type": "handgun",
        "handler_name": UNLISTED,
    })
    .to_string()
        + "\n"
}

/// Writes the config and `rules` under `dir`; returns the config's path.
fn write_config(dir: &Path, incidents_extra: &str, rules: &str) -> PathBuf {
    fs::create_dir_all(dir.join("rules")).unwrap();
    fs::write(dir.join("rules/rules.toml"), rules).unwrap();
    let path = dir.join("earlywarn.toml");
    fs::write(&path, config_text(incidents_extra)).unwrap();
    path
}

/// Every place a value can be in a received email: each header, decoded and as on
/// the wire, the whole raw message, and both bodies decoded.
fn every_part(mail: &Received) -> Vec<(String, String)> {
    let mut parts = vec![("raw message".to_string(), mail.data.clone())];
    for name in mail.header_names() {
        parts.push((
            format!("header {name}"),
            mail.header(&name).unwrap_or_default(),
        ));
        parts.push((
            format!("raw header {name}"),
            mail.header_raw(&name).unwrap_or_default(),
        ));
    }
    parts.push((
        "text body".into(),
        mail.text_body().expect("a text/plain part"),
    ));
    parts.push((
        "html body".into(),
        mail.html_body().expect("a text/html part"),
    ));
    parts
}

fn to_partner<'a>(mails: &'a [Received], address: &str) -> Vec<&'a Received> {
    mails
        .iter()
        .filter(|m| m.to() == [address.to_string()])
        .collect()
}

fn contains_anywhere(mail: &Received, needle: &str) -> bool {
    every_part(mail)
        .iter()
        .any(|(_, text)| text.contains(needle))
}

/// Panics, naming the part, if any of `needles` is anywhere in `mail`.
fn assert_absent(mail: &Received, needles: &[&str], who: &str) {
    for (part, text) in every_part(mail) {
        for needle in needles {
            assert!(
                !text.contains(needle),
                "`{needle}` reached {who} in the {part} of {:?}:\n{text}",
                mail.subject()
            );
        }
    }
}

/// Waits until `mails` satisfies `done`; returns them all.
fn wait_mail(dir: &Path, what: &str, mut done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
    let mut got = Vec::new();
    let ok = support::wait_until(Duration::from_secs(20), || {
        got = eml_messages(dir);
        done(&got)
    });
    assert!(
        ok,
        "waited for {what}; got: {:?}",
        got.iter()
            .map(|m| (m.to(), m.subject()))
            .collect::<Vec<_>>()
    );
    got
}

fn has_rule(mails: &[Received], address: &str, rule: &str) -> bool {
    to_partner(mails, address)
        .iter()
        .any(|m| m.header("X-Earlywarn-Rule").as_deref() == Some(rule))
}

#[test]
fn planted_values_under_other_spellings_never_reach_partners_without_the_isa() {
    let dir = tempdir();
    let config = write_config(dir.path(), "", GOOD_RULES);
    let check = support::earlywarn(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "the good config passes check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let daemon = start_daemon(&config);
    let mail_dir = dir.path().join("mail");

    write_atomically(
        &dir.path().join("in/drug-testing"),
        "results.csv",
        drug_csv(&[row("S-1", "Bolton", "isotonitazene", "", CSV_NOTE)]),
    );
    write_atomically(
        &dir.path().join("in/incidents"),
        "incidents.jsonl",
        incidents_jsonl(),
    );
    // A file without its header line, sensitive column first: its first record is
    // read as the header, and the rejection reason quotes it to ops.
    write_atomically(
        &dir.path().join("in/drug-testing"),
        "headerless.csv",
        format!(
            "{},S-9,2025-11-04T09:00:00Z,MANDRAKE,event,Bolton\n",
            csv_field(HEADERLESS_NOTE)
        ),
    );

    let mails = wait_mail(
        &mail_dir,
        "both rules' emails to both partners and ops's",
        |m| {
            ["panel@example.org", "charity@example.org"]
                .iter()
                .all(|a| has_rule(m, a, "nitazene") && has_rule(m, a, "discharge"))
                && has_rule(m, "it-ops@example.org", "earlywarn-ops")
                && has_rule(m, "panel@example.org", "earlywarn-ops")
        },
    );
    let daemon_log = log(&daemon);
    stop_daemon(daemon);
    // The lead learns which columns were kept out, once per file, by name.
    let unlisted_lines: Vec<&str> = daemon_log
        .lines()
        .filter(|l| l.contains("Columns not among the feed's `fields`"))
        .collect();
    assert_eq!(
        unlisted_lines.len(),
        2,
        "one line per file with an unlisted column (results.csv, incidents.jsonl):\n{daemon_log}"
    );
    assert!(
        unlisted_lines.iter().all(|l| l.contains("handler_name")),
        "{unlisted_lines:?}"
    );

    let charity = to_partner(&mails, "charity@example.org");
    let it_ops = to_partner(&mails, "it-ops@example.org");
    for mail in charity.iter().chain(&it_ops) {
        assert_absent(mail, &WITHHELD_FROM_CHARITY, "a partner without the ISA");
    }
    for mail in &mails {
        assert_absent(mail, &[UNLISTED], "a partner (a column no feed lists)");
    }
    for mail in &charity {
        let text = mail.text_body().unwrap();
        assert!(
            text.contains("Withheld:"),
            "the email says what was withheld:\n{text}"
        );
    }
    let charity_discharge = charity
        .iter()
        .find(|m| m.header("X-Earlywarn-Rule").as_deref() == Some("discharge"))
        .unwrap();
    let text = charity_discharge.text_body().unwrap();
    assert!(
        text.contains("INC-77"),
        "a key that is not sensitive still shows:\n{text}"
    );
    assert!(text.contains("Withheld: location, notes"), "{text}");
    assert!(
        it_ops
            .iter()
            .any(|m| m.text_body().unwrap().contains("headerless.csv")),
        "ops without the ISA still learn which file was rejected"
    );

    // The redaction is not vacuous: the ISA partner got every sensitive value.
    let panel = to_partner(&mails, "panel@example.org");
    for value in WITHHELD_FROM_CHARITY {
        assert!(
            panel.iter().any(|m| contains_anywhere(m, value)),
            "the ISA panel should see `{value}`"
        );
    }
}

/// A rule file (or config) that puts a sensitive value where every partner sees it.
struct Refused {
    what: &'static str,
    incidents_extra: &'static str,
    rules: String,
    /// `LINE:COL: message start`, in the file named by `in_config`.
    expect: &'static str,
    in_config: bool,
}

fn refused_cases() -> Vec<Refused> {
    let rule = |body: &str| {
        format!("[[rule]]\nid = \"leak\"\nnotify = [\"panel\", \"charity\"]\n{body}\n")
    };
    vec![
        Refused {
            what: "a first_seen rule on a sensitive field",
            incidents_extra: "",
            rules: rule("feed = \"drug_testing\"\nkind = \"first_seen\"\nfield = \"notes\""),
            expect: "6:9: `notes` is sensitive in feed `drug_testing`: a first_seen rule puts each new value in the subject",
            in_config: false,
        },
        Refused {
            what: "a deadline key on a sensitive field",
            incidents_extra: "",
            rules: rule(
                "feed = \"incidents\"\nkind = \"deadline\"\nkey = \"location\"\nuntil = { feed = \"incidents\" }\nwithin = \"24h\"",
            ),
            expect: "6:7: `location` is sensitive in feed `incidents`: a deadline's key is shown in the subject and the Due line",
            in_config: false,
        },
        Refused {
            what: "group_by a sensitive field",
            incidents_extra: "",
            rules: rule("feed = \"incidents\"\ngroup_by = [\"notes\"]"),
            expect: "5:13: `notes` is sensitive in feed `incidents`: a `group_by` value",
            in_config: false,
        },
        Refused {
            what: "a sensitive field in the subject, spelt otherwise",
            incidents_extra: "",
            rules: rule(
                "feed = \"drug_testing\"\nsubject = \"{{ rule.name }} {{ events[0]['Notes '] }}\"",
            ),
            expect: "5:42: `Notes ` is sensitive in feed `drug_testing`: a value in the subject reaches every partner",
            in_config: false,
        },
        Refused {
            what: "a sensitive district_field",
            incidents_extra: "district_field = \"Location\"",
            rules: rule("feed = \"incidents\""),
            expect: "36:18: `Location` is sensitive in feed `incidents` (as `location`): the district goes into the subject",
            in_config: true,
        },
    ]
}

#[test]
fn check_and_start_refuse_each_configuration_that_would_leak() {
    for case in refused_cases() {
        let dir = tempdir();
        let config = write_config(dir.path(), case.incidents_extra, &case.rules);
        let file = if case.in_config {
            config.clone()
        } else {
            dir.path().join("rules/rules.toml")
        };
        let wanted = format!("{}:{}", file.display(), case.expect);

        let check = support::earlywarn(&["check", "--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert_eq!(
            check.status.code(),
            Some(1),
            "{}: check: {stderr}",
            case.what
        );
        assert!(
            stderr.trim().starts_with(&wanted) && stderr.trim().lines().count() == 1,
            "{}: check should say\n  {wanted}\ngot\n  {stderr}",
            case.what
        );

        let mut daemon = support::Daemon::start(&config);
        let status = daemon
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{}: the daemon started:\n{}", case.what, log(&daemon)));
        assert_eq!(status.code(), Some(1), "{}:\n{}", case.what, log(&daemon));
        let log = log(&daemon);
        assert!(
            log.contains(&wanted),
            "{}: the daemon says why:\n{log}",
            case.what
        );
        assert!(!log.contains("Ready"), "{}:\n{log}", case.what);
    }
}

#[test]
fn a_reload_to_a_leaking_rule_set_keeps_the_old_rules() {
    let dir = tempdir();
    let config = write_config(dir.path(), "", GOOD_RULES);
    let mut daemon = start_daemon(&config);
    let mail_dir = dir.path().join("mail");

    let leaking = GOOD_RULES.replace(
        "subject = \"{{ rule.name }} in {{ district }}: {{ event | tojson }}\"",
        "subject = \"{{ rule.name }}: {{ event.Notes }}\"",
    );
    assert_ne!(leaking, GOOD_RULES);
    fs::write(dir.path().join("rules/rules.toml"), &leaking).unwrap();
    daemon.sighup();
    let refused = wait_log(&mut daemon, &["refused"], WAIT);
    assert!(
        refused.contains("is sensitive in feed `drug_testing`"),
        "{refused}"
    );

    write_atomically(
        &dir.path().join("in/drug-testing"),
        "results.csv",
        drug_csv(&[row("S-2", "Bolton", "isotonitazene", "", CSV_NOTE)]),
    );
    let mails = wait_mail(&mail_dir, "the nitazene alert to the charity", |m| {
        has_rule(m, "charity@example.org", "nitazene")
    });
    assert!(
        daemon.is_running(),
        "a refused reload does not stop the daemon"
    );
    stop_daemon(daemon);
    for mail in to_partner(&mails, "charity@example.org") {
        assert_absent(mail, &[CSV_NOTE], "the charity");
        let subject = mail.subject().unwrap();
        assert!(
            subject.contains("Nitazene detected in Bolton:"),
            "the old rule's subject is still the one in force: {subject}"
        );
    }
}
