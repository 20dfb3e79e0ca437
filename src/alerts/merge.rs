//! Merge groups (rule key `merge`): one batch's alerts of rules in the same
//! group about the same records become one alert that names every reason, so
//! a sample that is both a nitazene and never seen before is one draft.
//!
//! Pure, and only over what the engine emitted: cooldowns and rule state stay
//! per rule. Alerts merge only when both are findings (match, threshold,
//! first seen, rate; never deadline notices, silence or summaries), carry
//! every record they stand for, and those records are the same set of
//! `(feed, record id)`; an alert with a record lacking an id never merges.
//! The primary is the highest severity (ties: the first rule in load order);
//! the others become its [`Reason`]s in that same order.

use crate::alerts::{Alert, Found, Reason, Trigger};
use crate::config::Config;
use crate::rules::{Rule, RuleSet};
use std::collections::{BTreeSet, HashMap};

/// What makes two alerts "about the same records": the group and the records.
type MergeKey = (String, BTreeSet<(String, String)>);

/// Merges `alerts` (one batch's, in the order raised); alerts that merge
/// nothing keep their place, a merged one takes its first member's place.
pub fn merge(alerts: Vec<Alert>, rules: &RuleSet, config: &Config) -> Vec<Alert> {
    if alerts.len() < 2 {
        return alerts;
    }
    // Load order decides ties, so each alert's rule position is looked up once.
    let position = |id: &str| rules.rules.iter().position(|r| r.id == id);
    let mut slots: Vec<Vec<Alert>> = Vec::with_capacity(alerts.len());
    // A file can raise thousands of alerts: each finds its slot by hash.
    let mut slot_of: HashMap<MergeKey, usize> = HashMap::new();
    for alert in alerts {
        let key = rules.get(&alert.rule_id).and_then(|r| merge_key(&alert, r));
        match key {
            Some(key) => match slot_of.get(&key) {
                Some(&slot) => slots[slot].push(alert),
                None => {
                    slot_of.insert(key, slots.len());
                    slots.push(vec![alert]);
                }
            },
            None => slots.push(vec![alert]),
        }
    }
    slots
        .into_iter()
        .map(|mut members| {
            if members.len() == 1 {
                return members.remove(0);
            }
            members.sort_by_key(|a| {
                (
                    std::cmp::Reverse(a.severity),
                    position(&a.rule_id).unwrap_or(usize::MAX),
                )
            });
            let mut members = members.into_iter();
            // A slot holds at least one alert: it was made with one.
            let mut primary = members.next().unwrap_or_else(|| unreachable!());
            for other in members {
                let Some(rule) = rules.get(&other.rule_id) else {
                    continue;
                };
                primary.reasons.push(reason(&other, rule, config));
            }
            primary
        })
        .collect()
}

/// The group and record set `alert` merges by, if it may merge at all.
fn merge_key(alert: &Alert, rule: &Rule) -> Option<MergeKey> {
    let group = rule.merge.as_ref()?;
    let finding = matches!(
        alert.trigger,
        Trigger::Match
            | Trigger::Threshold { .. }
            | Trigger::FirstSeen { .. }
            | Trigger::Rate { .. }
    );
    // Records left out of the alert (beyond its limit) cannot be compared.
    if !finding || alert.events.is_empty() || alert.event_count != alert.events.len() as u64 {
        return None;
    }
    let records = alert
        .events
        .iter()
        .map(|e| Some((e.feed.to_string(), e.record_id.clone()?)))
        .collect::<Option<BTreeSet<_>>>()?;
    Some((group.clone(), records))
}

/// `other` as a reason of the alert it merges into.
fn reason(other: &Alert, rule: &Rule, config: &Config) -> Reason {
    let feed = config.feed(&rule.feed);
    let mut found = Vec::new();
    for event in &other.events {
        let Some(record_id) = &event.record_id else {
            continue;
        };
        for (field, _) in event.fields.iter() {
            let field: &str = field;
            // As for a first line: a sensitive value is never named, whoever reads it.
            if feed.is_some_and(|f| f.is_sensitive(field)) {
                continue;
            }
            let only_this = |name: &str| name != field;
            for value in crate::alerts::wording::found_values(
                &rule.when,
                std::slice::from_ref(event),
                &only_this,
            ) {
                found.push(Found {
                    record_id: record_id.clone(),
                    field: field.to_string(),
                    value,
                });
            }
        }
    }
    Reason {
        rule_id: other.rule_id.clone(),
        rule_name: rule.name.clone(),
        severity: other.severity,
        group: other.group.clone(),
        trigger: other.trigger.clone(),
        found,
        notify: rule.notify.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Audience, first_audience, route};
    use crate::event::{Event, Fields, Value};
    use crate::rules::engine::{Batch, Engine, EngineState};
    use jiff::Timestamp;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    const SECRET: &str = "Flat 3, 12 Gold Street";

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            r#"
[mail]
transport = "file"
from = "earlywarn@example.org"
[[feed]]
name = "drug_testing"
dir = "in"
id_field = "sample_id"
time_field = "tested_at"
sensitive = ["notes"]
[[partner]]
id = "panel"
emails = ["p@example.org"]
isa = true
[[partner]]
id = "bolton"
emails = ["b@example.org"]
districts = ["Bolton"]
[[partner]]
id = "salford"
emails = ["s@example.org"]
districts = ["Salford"]
"#,
        )
        .unwrap()
    }

    /// Rules in load order; `extra` is appended to each `[[rule]]` by id.
    fn rules(config: &Config, text: &str) -> RuleSet {
        RuleSet::from_sources(config, &[(PathBuf::from("r.toml"), text.to_string())]).unwrap()
    }

    fn sample(id: &str, district: &str, major: &str, minor: &str) -> Event {
        let mut fields = Fields::default();
        fields.insert("sample_id", Value::Text(id.into()));
        fields.insert("district", Value::Text(district.into()));
        fields.insert("substances_major", Value::Text(major.into()));
        fields.insert("substances_minor", Value::Text(minor.into()));
        fields.insert("notes", Value::Text(SECRET.into()));
        Event {
            feed: "drug_testing".into(),
            record_id: Some(id.into()),
            time: "2025-11-04T09:00:00Z".parse().unwrap(),
            fields,
        }
    }

    /// One batch through the engine, then the merge: what the pipeline does.
    fn raise(config: &Config, set: RuleSet, events: &[Event]) -> (Arc<RuleSet>, Vec<Alert>) {
        let set = Arc::new(set);
        let mut engine = Engine::new(set.clone(), EngineState::default());
        let mut batch = Batch::default();
        for e in events {
            engine.observe(&mut batch, e);
        }
        let now: Timestamp = "2025-11-04T12:00:00Z".parse().unwrap();
        let alerts = engine.finish(batch, now, "d", "f.csv").alerts;
        let merged = merge(alerts, &set, config);
        (set, merged)
    }

    const DRUG_RULES: &str = r#"
[[rule]]
id = "first-seen"
name = "Never seen before"
feed = "drug_testing"
kind = "first_seen"
field = "substances_major"
severity = "warning"
review = ["panel"]
notify = ["salford"]
merge = "sample"

[[rule]]
id = "nitazene"
name = "Nitazene"
feed = "drug_testing"
when = 'substances_major in ["protonitazene", "isotonitazene"]'
severity = "critical"
review = ["panel"]
notify = ["bolton"]
merge = "sample"

[[rule]]
id = "sedative"
name = "Sedative"
feed = "drug_testing"
when = 'substances_minor in ["xylazine", "medetomidine"] or notes ~ "Gold"'
severity = "warning"
review = ["panel"]
notify = ["panel"]
merge = "sample"
"#;

    #[test]
    fn alerts_about_the_same_records_become_one_under_the_most_severe_rule() {
        let config = config();
        let (_, alerts) = raise(
            &config,
            rules(&config, DRUG_RULES),
            &[sample("S1", "Bolton", "protonitazene", "xylazine")],
        );
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let alert = &alerts[0];
        assert_eq!(alert.rule_id, "nitazene");
        assert_eq!(alert.severity, crate::config::Severity::Critical);
        // Equal severities (warning): the first in load order comes first.
        let reasons: Vec<&str> = alert.reasons.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(reasons, ["first-seen", "sedative"]);
        assert_eq!(
            alert.reasons[0].trigger,
            Trigger::FirstSeen {
                field: "substances_major".into(),
                value: "protonitazene".into()
            }
        );
        let found: Vec<&str> = alert.reasons[1]
            .found
            .iter()
            .map(|f| f.value.as_str())
            .collect();
        assert_eq!(
            found,
            ["xylazine"],
            "a sensitive field's value is never a reason's finding"
        );
    }

    #[test]
    fn different_records_do_not_merge() {
        let config = config();
        let (_, alerts) = raise(
            &config,
            rules(&config, DRUG_RULES),
            &[
                sample("S1", "Bolton", "protonitazene", "caffeine"),
                sample("S2", "Bolton", "heroin", "xylazine"),
            ],
        );
        let mut raised: Vec<(&str, usize)> = alerts
            .iter()
            .map(|a| (a.rule_id.as_str(), a.reasons.len()))
            .collect();
        raised.sort();
        // S1: nitazene + its first sighting; S2: the sedative; heroin and
        // protonitazene first seen in two records: one alert each.
        assert_eq!(
            raised,
            [("first-seen", 0), ("nitazene", 1), ("sedative", 0)],
            "{alerts:#?}"
        );
    }

    #[test]
    fn different_groups_or_no_group_do_not_merge() {
        let config = config();
        for (nitazene_group, sedative_group) in
            [("merge = \"a\"", "merge = \"b\""), ("", "merge = \"b\"")]
        {
            let text = DRUG_RULES
                .replacen("merge = \"sample\"", "", 1)
                .replacen("merge = \"sample\"", nitazene_group, 1)
                .replacen("merge = \"sample\"", sedative_group, 1);
            let (_, alerts) = raise(
                &config,
                rules(&config, &text),
                &[sample("S1", "Bolton", "protonitazene", "xylazine")],
            );
            assert_eq!(
                alerts.len(),
                3,
                "{nitazene_group} / {sedative_group}: {alerts:#?}"
            );
            assert!(alerts.iter().all(|a| a.reasons.is_empty()));
        }
    }

    #[test]
    fn records_without_ids_never_merge() {
        let config = config();
        let mut a = sample("S1", "Bolton", "protonitazene", "xylazine");
        a.record_id = None;
        let (_, alerts) = raise(&config, rules(&config, DRUG_RULES), &[a]);
        assert_eq!(alerts.len(), 3);
    }

    #[test]
    fn a_merged_alert_goes_to_the_union_and_names_every_reason_without_withheld_values() {
        let config = config();
        let (set, alerts) = raise(
            &config,
            rules(
                &config,
                &DRUG_RULES.replace(
                    "kind = \"first_seen\"\nfield = \"substances_major\"",
                    "when = 'substances_major in [\"protonitazene\", \"isotonitazene\"]'",
                ),
            ),
            &[
                sample("S1", "Bolton", "protonitazene", "xylazine"),
                sample("S2", "Salford", "isotonitazene", "medetomidine"),
            ],
        );
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let mut alert = alerts[0].clone();
        let rule = set.get(&alert.rule_id).unwrap();
        // The draft goes to the shared reviewers only.
        assert_eq!(first_audience(&alert), Audience::Review);
        let drafts = route(&alert, rule, &config, Audience::Review);
        let ids: Vec<&str> = drafts.iter().map(|d| d.partner.id.as_str()).collect();
        assert_eq!(ids, ["panel"]);
        // Approved: every rule's notify list, each partner still by its districts.
        alert.status = crate::alerts::AlertStatus::Approved;
        let deliveries = route(&alert, rule, &config, Audience::Notify);
        let ids: Vec<&str> = deliveries.iter().map(|d| d.partner.id.as_str()).collect();
        assert_eq!(ids, ["bolton", "salford", "panel"]);
        let emails = crate::pipeline::infallible(crate::pipeline::render_deliveries(
            &config,
            &alert,
            rule,
            &set.templates,
            &deliveries,
            |_, _| Ok(None),
        ));
        let bolton = &emails[0].email;
        assert!(
            bolton.subject.ends_with("and two more reasons"),
            "{}",
            bolton.subject
        );
        assert!(bolton.text.contains("WHY THIS WAS RAISED\n- Nitazene (critical): Protonitazene, tested Tue 4 Nov\n- Never seen before (warning): Protonitazene, tested"), "{}", bolton.text);
        assert!(
            bolton
                .text
                .contains("- Sedative (warning): Xylazine, tested Tue 4 Nov"),
            "{}",
            bolton.text
        );
        assert!(
            bolton.html.contains(
                "<h2 style=\"font-size:18px;margin:24px 0 8px\">Why this was raised</h2>"
            )
        );
        assert!(
            bolton.text.contains("notify list of the rule \"Nitazene\""),
            "{}",
            bolton.text
        );
        // Bolton sees neither Salford's record nor the sensitive notes, in any part.
        let bytes = String::from_utf8_lossy(&bolton.bytes);
        for part in [
            &bolton.subject,
            &bolton.text,
            &bolton.html,
            &bytes.to_string(),
        ] {
            for hidden in [SECRET, "Gold", "edetomidine", "sotonitazene", "Salford"] {
                assert!(!part.contains(hidden), "`{hidden}` reached Bolton: {part}");
            }
        }
        // A reviewer may leave out a partner of any of its rules, and the
        // preview lists them all.
        let leave_out = |id: &str| crate::review::Edits {
            left_out: [id.to_string()].into(),
            ..Default::default()
        };
        assert!(crate::review::validated_for(leave_out("salford"), rule, &alert).is_ok());
        assert!(crate::review::validated_for(leave_out("nobody"), rule, &alert).is_err());
        let preview = crate::review::preview(&config, &set, &alert, &leave_out("salford")).unwrap();
        let shown: Vec<(&str, bool)> = preview
            .iter()
            .map(|p| (p.partner_id.as_str(), p.receives))
            .collect();
        assert_eq!(
            shown,
            [("bolton", true), ("salford", false), ("panel", true)]
        );
        // The panel has the ISA, yet a reason names no sensitive value either.
        let panel = &emails[2].email;
        assert!(
            panel.text.contains("Xylazine and medetomidine")
                || panel.text.contains("Xylazine, medetomidine"),
            "{}",
            panel.text
        );
        let why = panel
            .text
            .split("WHY THIS WAS RAISED")
            .nth(1)
            .unwrap()
            .split("EVIDENCE")
            .next()
            .unwrap();
        assert!(!why.contains("Gold"), "{why}");
    }

    #[test]
    fn check_names_a_group_that_disagrees() {
        let config = config();
        let load = |text: &str| {
            RuleSet::from_sources(&config, &[(PathBuf::from("r.toml"), text.to_string())])
                .err()
                .map(|e| e.to_string())
        };
        let two = "[[rule]]\nid = \"a\"\nfeed = \"drug_testing\"\nreview = [\"panel\"]\nnotify = [\"bolton\"]\nmerge = \"g\"\n\n[[rule]]\nid = \"b\"\nfeed = \"drug_testing\"\nreview = [\"bolton\"]\nnotify = [\"bolton\"]\nmerge = \"g\"\n";
        assert_eq!(
            load(two).unwrap(),
            "r.toml:13:10: merge group `g`: rule `a` has review = [\"panel\"], this rule [\"bolton\"]; the rules of a group must share the `review` list (their merged alert is one draft)"
        );
        assert_eq!(
            load("[[rule]]\nid = \"a\"\nfeed = \"drug_testing\"\nnotify = [\"bolton\"]\nmerge = \"two words\"\n").unwrap(),
            "r.toml:5:10: `merge` must name a group: letters, digits, `-` and `_`, starting with a letter (not `two words`)"
        );
        assert_eq!(
            load(&two.replace("review = [\"bolton\"]", "review = [\"panel\"]")),
            None
        );
    }
}
