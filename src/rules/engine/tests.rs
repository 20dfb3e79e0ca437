//! Engine tests with an injected clock: every rule kind, and the edges.

use super::*;
use crate::config::Config;
use crate::config::Severity;
use crate::event::Value;
use std::path::{Path, PathBuf};

fn rules(text: &str) -> Arc<RuleSet> {
    let config = Config::parse(
        Path::new("/x/c.toml"),
        r#"
[mail]
transport = "file"
[[feed]]
name = "drug_testing"
dir = "in"
[[feed]]
name = "incidents"
dir = "in2"
[[partner]]
id = "panel"
emails = ["p@example.org"]
[[partner]]
id = "viable"
emails = ["v@example.org"]
"#,
    )
    .unwrap();
    Arc::new(RuleSet::from_sources(&config, &[(PathBuf::from("r.toml"), text.into())]).unwrap())
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

const H: i64 = 3600;
const D: i64 = 86_400;

fn event(feed: &str, at: i64, fields: &[(&str, &str)]) -> Event {
    let mut map = crate::event::Fields::default();
    for (k, v) in fields {
        let value = if *k == "substances_major" {
            Value::List(v.split(';').map(|s| s.trim().into()).collect())
        } else {
            Value::Text((*v).into())
        };
        map.insert(*k, value);
    }
    Event {
        feed: feed.into(),
        record_id: fields
            .iter()
            .find(|(k, _)| *k == "id")
            .map(|(_, v)| v.to_string()),
        time: t(at),
        fields: map,
    }
}

fn drug(district: &str, substance: &str, at: i64) -> Event {
    event(
        "drug_testing",
        at,
        &[("district", district), ("substances_major", substance)],
    )
}

/// Runs one "file" of events through the engine at `now`.
fn file(engine: &mut Engine, events: &[Event], now: i64) -> Outcome {
    let mut batch = Batch::default();
    for e in events {
        engine.observe(&mut batch, e);
    }
    engine.finish(batch, t(now), "file", "file.csv")
}

fn engine(text: &str) -> Engine {
    Engine::new(rules(text), EngineState::default())
}

// ------------------------------------------------------------------ match

const NITAZENE: &str = r#"
[[rule]]
id = "nitazene"
feed = "drug_testing"
when = 'substances_major in ["protonitazene", "isotonitazene"]'
notify = ["panel"]
group_by = ["district"]
cooldown = "6h"
"#;

#[test]
fn match_gives_one_alert_per_rule_and_group_per_file() {
    let mut e = engine(NITAZENE);
    let out = file(
        &mut e,
        &[
            drug("Bolton", "Protonitazene", 0),
            drug("Salford", "cocaine", 0),
            drug("bolton", "isotonitazene", 0),
            drug("Salford", "isotonitazene", 0),
            event(
                "incidents",
                0,
                &[
                    ("district", "Salford"),
                    ("substances_major", "isotonitazene"),
                ],
            ),
        ],
        100,
    );
    assert_eq!(out.alerts.len(), 2);
    assert_eq!(out.alerts[0].group["district"], "Bolton");
    assert_eq!(out.alerts[0].event_count, 2);
    assert_eq!(out.alerts[0].district.as_deref(), Some("Bolton"));
    assert_eq!(out.alerts[1].group["district"], "Salford");
    assert_ne!(out.alerts[0].id, out.alerts[1].id);
    assert!(out.alerts[0].id.starts_with("EW-") && out.alerts[0].id.len() == 13);
}

#[test]
fn cooldown_counts_later_matches_and_reports_them() {
    let mut e = engine(NITAZENE);
    let hit = [drug("Bolton", "protonitazene", 0)];
    assert_eq!(file(&mut e, &hit, 0).alerts.len(), 1);
    let out = file(&mut e, &[hit[0].clone(), hit[0].clone()], H);
    assert!(out.alerts.is_empty());
    assert_eq!(out.suppressed["nitazene"], 2);
    // Exactly at the end of the cooldown the next match alerts, reporting the two it held back.
    let out = file(&mut e, &hit, 6 * H);
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].suppressed_before, 2);
    // Another group is not held back by Bolton's cooldown.
    let out = file(&mut e, &[drug("Wigan", "protonitazene", 0)], 6 * H + 1);
    assert_eq!(out.alerts.len(), 1);
}

#[test]
fn events_per_alert_are_capped_but_counted() {
    let mut e = engine(NITAZENE);
    let events: Vec<Event> = (0..200)
        .map(|i| drug("Bolton", "protonitazene", i))
        .collect();
    let out = file(&mut e, &events, 1000);
    assert_eq!(out.alerts[0].events.len(), MAX_EVENTS_PER_ALERT);
    assert_eq!(out.alerts[0].event_count, 200);
}

#[test]
fn reload_keeps_state_of_rules_that_remain() {
    let mut e = engine(NITAZENE);
    file(&mut e, &[drug("Bolton", "protonitazene", 0)], 0);
    e.replace_rules(rules(&format!(
        "{NITAZENE}\n[[rule]]\nid = \"other\"\nfeed = \"incidents\"\nnotify = [\"panel\"]\n"
    )));
    assert_eq!(e.state().cooldowns.len(), 1);
    e.replace_rules(rules(
        "[[rule]]\nid = \"other\"\nfeed = \"incidents\"\nnotify = [\"panel\"]\n",
    ));
    assert!(e.state().cooldowns.is_empty());
}

// ------------------------------------------------------------------ threshold

const OVERDOSES: &str = r#"
[[rule]]
id = "overdose-cluster"
feed = "incidents"
kind = "threshold"
when = 'incident_type == "suspected_overdose"'
count = 3
within = "7d"
group_by = ["district"]
notify = ["panel"]
"#;

fn overdose(id: &str, district: &str, at: i64) -> Event {
    event(
        "incidents",
        at,
        &[
            ("id", id),
            ("incident_type", "suspected_overdose"),
            ("district", district),
        ],
    )
}

#[test]
fn threshold_fires_once_when_the_count_is_reached_in_the_window() {
    let mut e = engine(OVERDOSES);
    assert!(
        file(
            &mut e,
            &[overdose("a", "Bolton", 0), overdose("b", "Bolton", D)],
            D
        )
        .alerts
        .is_empty()
    );
    assert!(
        file(&mut e, &[overdose("x", "Wigan", D)], D)
            .alerts
            .is_empty(),
        "other districts count apart"
    );
    let out = file(&mut e, &[overdose("c", "Bolton", 2 * D)], 2 * D);
    assert_eq!(out.alerts.len(), 1);
    let alert = &out.alerts[0];
    assert_eq!(alert.event_count, 3);
    assert_eq!(
        alert.events.len(),
        3,
        "the alert lists the events in the window"
    );
    assert_eq!(
        alert.trigger,
        Trigger::Threshold {
            count: 3,
            within_secs: 7 * D as u64
        }
    );
    // The events that made the alert do not make another one.
    assert!(
        file(&mut e, &[overdose("d", "Bolton", 3 * D)], 3 * D)
            .alerts
            .is_empty()
    );
}

#[test]
fn threshold_window_edge_is_inclusive() {
    let mut e = engine(OVERDOSES);
    let out = file(
        &mut e,
        &[
            overdose("a", "Bolton", 0),
            overdose("b", "Bolton", D),
            overdose("c", "Bolton", 7 * D),
        ],
        7 * D,
    );
    assert_eq!(out.alerts.len(), 1, "exactly 7 days apart is within 7 days");
    let mut e = engine(OVERDOSES);
    let out = file(
        &mut e,
        &[
            overdose("a", "Bolton", 0),
            overdose("b", "Bolton", D),
            overdose("c", "Bolton", 7 * D + 1),
        ],
        7 * D,
    );
    assert!(out.alerts.is_empty(), "one second more is outside");
}

#[test]
fn threshold_counts_out_of_order_events_and_the_same_event_once() {
    let mut e = engine(OVERDOSES);
    assert!(
        file(&mut e, &[overdose("c", "Bolton", 5 * D)], 5 * D)
            .alerts
            .is_empty()
    );
    assert!(
        file(&mut e, &[overdose("c", "Bolton", 5 * D)], 5 * D)
            .alerts
            .is_empty(),
        "same record twice counts once"
    );
    // Older events arriving later still count when inside the window of the newest.
    let out = file(
        &mut e,
        &[overdose("a", "Bolton", D), overdose("b", "Bolton", 2 * D)],
        6 * D,
    );
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(
        out.alerts[0].events[0].record_id.as_deref(),
        Some("a"),
        "events listed in time order"
    );
}

/// A new engine on `text`'s rules, with the state that `out`'s changes would have stored.
fn restart(text: &str, out: &Outcome) -> Engine {
    restart_from(text, &[out])
}

/// A new engine on `text`'s rules with the state that `outcomes`' changes,
/// applied in order as `Store::apply` does (a `None` deletes the row), leave.
fn restart_from(text: &str, outcomes: &[&Outcome]) -> Engine {
    let mut rows: BTreeMap<(StateKind, GroupRef), String> = BTreeMap::new();
    for c in outcomes.iter().flat_map(|o| &o.changes) {
        let row = (c.kind, c.key.clone());
        match &c.data {
            Some(data) => rows.insert(row, data.clone()),
            None => rows.remove(&row),
        };
    }
    let mut state = EngineState::default();
    for ((kind, key), data) in rows {
        state
            .load_row(kind.as_str(), key.rule_id, key.group_key, &data)
            .unwrap();
    }
    Engine::new(rules(text), state)
}

#[test]
fn threshold_state_survives_a_restart_through_its_changes() {
    let mut e = engine(OVERDOSES);
    let out = file(
        &mut e,
        &[overdose("a", "Bolton", 0), overdose("b", "Bolton", D)],
        D,
    );
    let mut restarted = restart(OVERDOSES, &out);
    assert_eq!(
        file(&mut restarted, &[overdose("c", "Bolton", 2 * D)], 2 * D)
            .alerts
            .len(),
        1
    );
}

#[test]
fn windows_are_pruned_to_the_window_length() {
    let mut e = engine(OVERDOSES);
    for i in 0..100 {
        file(
            &mut e,
            &[overdose(&format!("id{i}"), &format!("d{i}"), i * D)],
            i * D,
        );
    }
    file(&mut e, &[overdose("late", "d0", 100 * D)], 100 * D);
    let w = &e.state().windows[&GroupRef::new("overdose-cluster", "d0")];
    assert_eq!(w.len(), 1, "the old entry was pruned");
    // A pruned record is forgotten: delivered again inside a new window, it counts.
    file(&mut e, &[overdose("id0", "d0", 100 * D)], 100 * D);
    let w = &e.state().windows[&GroupRef::new("overdose-cluster", "d0")];
    assert_eq!(w.len(), 2);
}

#[test]
fn a_record_counted_before_a_restart_is_not_counted_again() {
    let mut e = engine(OVERDOSES);
    let out = file(&mut e, &[overdose("a", "Bolton", 0)], 0);
    let mut restarted = restart(OVERDOSES, &out);
    file(&mut restarted, &[overdose("a", "Bolton", 60)], 60);
    let w = &restarted.state().windows[&GroupRef::new("overdose-cluster", "bolton")];
    assert_eq!(
        w.len(),
        1,
        "the same record id counts once across a restart"
    );
}

// ------------------------------------------------------------------ deadline

const DISCHARGE: &str = r#"
[[rule]]
id = "discharge-support"
feed = "incidents"
kind = "deadline"
when = 'incident_type == "firearm_discharge"'
key = "incident_ref"
until = { feed = "incidents", when = 'incident_type == "support_provided"' }
within = "24h"
notify = ["panel"]
notify_on_open = ["viable"]
notify_on_close = true
severity = "critical"
"#;

fn discharge(at: i64, r: &str) -> Event {
    event(
        "incidents",
        at,
        &[
            ("incident_type", "firearm_discharge"),
            ("incident_ref", r),
            ("district", "Salford"),
        ],
    )
}

fn support(at: i64, r: &str) -> Event {
    event(
        "incidents",
        at,
        &[
            ("incident_type", "support_provided"),
            ("incident_ref", r),
            ("district", "Salford"),
        ],
    )
}

#[test]
fn deadline_opens_notifies_and_escalates_when_it_passes() {
    let mut e = engine(DISCHARGE);
    let out = file(&mut e, &[discharge(0, "GMP-1")], 10);
    assert_eq!(out.alerts.len(), 1);
    assert!(
        matches!(&out.alerts[0].trigger, Trigger::DeadlineOpened { key, due, closed: false } if key == "GMP-1" && *due == t(24 * H))
    );
    assert_eq!(e.next_wakeup(), Some(t(24 * H)));
    assert!(e.tick(t(24 * H - 1)).alerts.is_empty());
    let out = e.tick(t(24 * H));
    assert_eq!(out.alerts.len(), 1, "escalated exactly when due");
    assert!(matches!(
        out.alerts[0].trigger,
        Trigger::DeadlineOverdue { .. }
    ));
    assert!(e.tick(t(25 * H)).alerts.is_empty(), "escalated once");
    // A late support record closes it and says it was late.
    let out = file(&mut e, &[support(26 * H, "GMP-1")], 26 * H);
    assert!(matches!(
        out.alerts[0].trigger,
        Trigger::DeadlineClosed { late: true, .. }
    ));
}

#[test]
fn deadline_closed_one_second_before_expiry_never_escalates() {
    let mut e = engine(DISCHARGE);
    file(&mut e, &[discharge(0, "GMP-2")], 0);
    let out = file(&mut e, &[support(24 * H - 1, "gmp-2")], 24 * H - 1);
    assert!(
        matches!(
            out.alerts[0].trigger,
            Trigger::DeadlineClosed { late: false, .. }
        ),
        "keys compare without case"
    );
    assert!(e.tick(t(48 * H)).alerts.is_empty());
    assert!(e.state().open_deadlines().is_empty());
}

#[test]
fn a_close_that_arrives_before_its_open_still_closes_it() {
    let mut e = engine(DISCHARGE);
    assert!(file(&mut e, &[support(H, "GMP-3")], H).alerts.is_empty());
    let out = file(&mut e, &[discharge(0, "GMP-3")], 2 * H);
    assert!(matches!(
        out.alerts[0].trigger,
        Trigger::DeadlineOpened { closed: true, .. }
    ));
    assert!(e.tick(t(30 * H)).alerts.is_empty());
}

#[test]
fn a_deadline_that_passed_while_down_fires_at_the_first_tick() {
    let mut e = engine(DISCHARGE);
    let out = file(&mut e, &[discharge(0, "GMP-4")], 0);
    let mut restarted = restart(DISCHARGE, &out);
    assert_eq!(restarted.tick(t(3 * D)).alerts.len(), 1);
}

#[test]
fn the_same_discharge_twice_opens_one_deadline() {
    let mut e = engine(DISCHARGE);
    assert_eq!(
        file(&mut e, &[discharge(0, "GMP-5"), discharge(60, "GMP-5")], 60)
            .alerts
            .len(),
        1
    );
    assert_eq!(e.tick(t(2 * D)).alerts.len(), 1);
}

// ------------------------------------------------------------------ first_seen

const NEW_SUBSTANCE: &str = r#"
[[rule]]
id = "new-substance"
feed = "drug_testing"
kind = "first_seen"
field = "substances_major"
known = ["cocaine", "heroin"]
notify = ["panel"]
"#;

#[test]
fn first_seen_alerts_once_per_new_value_as_written() {
    let mut e = engine(NEW_SUBSTANCE);
    let out = file(
        &mut e,
        &[
            drug("Bolton", "Cocaine; N-Pyrrolidino Etonitazene", 0),
            drug("Bury", "n-pyrrolidino-etonitazene", 0),
        ],
        0,
    );
    assert_eq!(
        out.alerts.len(),
        1,
        "known values and the same value in another spelling do not alert"
    );
    assert_eq!(
        out.alerts[0].trigger,
        Trigger::FirstSeen {
            field: "substances_major".into(),
            value: "N-Pyrrolidino Etonitazene".into()
        }
    );
    assert_eq!(out.alerts[0].event_count, 2);
    assert!(
        file(&mut e, &[drug("Wigan", "N-pyrrolidino etonitazene", D)], D)
            .alerts
            .is_empty()
    );
    assert_eq!(
        file(&mut e, &[drug("Wigan", "bromazolam", D)], D)
            .alerts
            .len(),
        1
    );
}

// ------------------------------------------------------------------ rate

const RISE: &str = r#"
[[rule]]
id = "overdose-rise"
feed = "incidents"
kind = "rate"
when = 'incident_type == "suspected_overdose"'
within = "1d"
baseline = "4d"
factor = 2.0
min_count = 3
notify = ["panel"]
"#;

#[test]
fn rate_fires_at_factor_times_the_baseline_average() {
    let mut e = engine(RISE);
    // Baseline: 2 per day for 4 days (average 2).
    let mut id = 0;
    let mut next = |at: i64| {
        id += 1;
        overdose(&format!("o{id}"), "Bolton", at)
    };
    let baseline: Vec<Event> = (0..4)
        .flat_map(|d| [next(d * D + H), next(d * D + 2 * H)])
        .collect();
    // Eight events, but each day's pair is below min_count on its own.
    assert!(file(&mut e, &baseline, 4 * D).alerts.is_empty());
    // The next day: 3 events (1.5 times the usual 2 a day): no alert. A 4th (2 times): alert.
    let day5: Vec<Event> = (0..3).map(|i| next(4 * D + 10 * H + i)).collect();
    assert!(file(&mut e, &day5, 5 * D).alerts.is_empty());
    let out = file(&mut e, &[next(4 * D + 11 * H)], 5 * D);
    assert_eq!(out.alerts.len(), 1);
    assert!(
        matches!(out.alerts[0].trigger, Trigger::Rate { current: 4, baseline_average, .. } if baseline_average == 2.0),
        "{:?}",
        out.alerts[0].trigger
    );
    // The rise is one alert, not one per event.
    assert!(
        file(&mut e, &[next(4 * D + 12 * H)], 5 * D)
            .alerts
            .is_empty()
    );
}

// ------------------------------------------------------------------ silence

const QUIET: &str = r#"
[[rule]]
id = "drug-feed-quiet"
feed = "drug_testing"
kind = "silence"
for = "6h"
notify = ["panel"]
"#;

#[test]
fn silence_fires_once_per_quiet_period() {
    let mut e = engine(QUIET);
    assert!(
        e.tick(t(0)).alerts.is_empty(),
        "the quiet is counted from the first look"
    );
    assert!(e.tick(t(6 * H - 1)).alerts.is_empty());
    let out = e.tick(t(6 * H));
    assert_eq!(out.alerts.len(), 1);
    assert!(
        matches!(&out.alerts[0].trigger, Trigger::Silence { feed, .. } if feed == "drug_testing")
    );
    assert!(
        e.tick(t(12 * H)).alerts.is_empty(),
        "one alert per quiet period"
    );
    e.note_activity("drug_testing", t(13 * H));
    assert!(e.tick(t(18 * H)).alerts.is_empty());
    assert_eq!(e.tick(t(19 * H)).alerts.len(), 1);
}

#[test]
fn next_wakeup_skips_a_quiet_spell_already_told() {
    let mut e = engine(QUIET);
    e.tick(t(0));
    assert_eq!(e.next_wakeup(), Some(t(6 * H)));
    assert_eq!(e.tick(t(6 * H)).alerts.len(), 1);
    assert_eq!(
        e.next_wakeup(),
        None,
        "nothing more can happen until the feed delivers again"
    );
    e.note_activity("drug_testing", t(7 * H));
    assert_eq!(e.next_wakeup(), Some(t(13 * H)));
}

// ------------------------------------------------------------------ max_alerts

fn flood_rule(extra: &str) -> String {
    format!(
        r#"
[[rule]]
id = "new-substance"
feed = "drug_testing"
kind = "first_seen"
field = "substances_major"
notify = ["panel"]
severity = "critical"
{extra}
"#
    )
}

/// `n` samples, each with a substance never seen before, spread over three districts.
fn flood(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let district = ["Bolton", "Wigan", "Salford"][i % 3];
            drug(district, &format!("novel-{i:05}"), i as i64)
        })
        .collect()
}

#[test]
fn a_flood_raises_at_most_max_alerts_per_file_the_last_a_summary_of_the_rest() {
    let mut e = engine(&flood_rule(""));
    let out = file(&mut e, &flood(1000), 2000);
    assert_eq!(out.alerts.len(), 100, "the default cap, summary included");
    let (summary, single): (Vec<&Alert>, Vec<&Alert>) = out
        .alerts
        .iter()
        .partition(|a| matches!(a.trigger, Trigger::Folded { .. }));
    assert_eq!(summary.len(), 1);
    assert_eq!(single.len(), 99);
    let summary = summary[0];
    assert_eq!(
        summary.trigger,
        Trigger::Folded {
            alerts: 901,
            matches: 901,
            feed: "drug_testing".into(),
            file: "file.csv".into(),
            of: FoldedOf::Findings,
        }
    );
    assert_eq!(summary.event_count, 901);
    assert_eq!(summary.severity, Severity::Critical, "the rule's severity");
    assert_eq!(summary.district, None, "the folded alerts span districts");
    // A sample, not the flood: one record of every folded district, so that
    // routing reaches each partner covering one, topped up to a few.
    assert!(summary.events.len() <= MAX_EVENTS_PER_ALERT);
    let districts: BTreeSet<String> = summary
        .events
        .iter()
        .map(|ev| ev.text("district").to_string())
        .collect();
    assert_eq!(
        districts,
        BTreeSet::from(["Bolton", "Salford", "Wigan"].map(String::from))
    );
    assert_eq!(summary.status, AlertStatus::Sent);
    // Every value is remembered, folded or not: the next file raises nothing for them.
    assert!(file(&mut e, &flood(1000), 3000).alerts.is_empty());
}

#[test]
fn which_alerts_are_folded_does_not_depend_on_row_order() {
    let ids = |events: Vec<Event>| {
        let mut e = engine(&flood_rule("max_alerts = 5"));
        let out = file(&mut e, &events, 2000);
        assert_eq!(out.alerts.len(), 5);
        out.alerts
            .iter()
            .map(|a| a.id.clone())
            .collect::<BTreeSet<_>>()
    };
    // A substance in two samples outranks the singletons.
    let mut events = flood(50);
    events.push(drug("Bury", "novel-00049", 60));
    let forward = ids(events.clone());
    events.reverse();
    assert_eq!(forward, ids(events));
    let mut e = engine(&flood_rule("max_alerts = 5"));
    let mut events = flood(50);
    events.push(drug("Bury", "novel-00049", 60));
    let out = file(&mut e, &events, 2000);
    assert!(
        out.alerts
            .iter()
            .any(|a| a.group.get("substances_major").map(String::as_str) == Some("novel-00049")),
        "the value with the most records goes out on its own"
    );
}

#[test]
fn exactly_max_alerts_needs_no_summary_and_one_more_makes_one() {
    let mut e = engine(&flood_rule("max_alerts = 3"));
    let out = file(&mut e, &flood(3), 100);
    assert_eq!(out.alerts.len(), 3);
    assert!(
        out.alerts
            .iter()
            .all(|a| !matches!(a.trigger, Trigger::Folded { .. }))
    );
    let mut e = engine(&flood_rule("max_alerts = 3"));
    let out = file(&mut e, &flood(4), 100);
    assert_eq!(out.alerts.len(), 3);
    assert!(matches!(
        out.alerts[2].trigger,
        Trigger::Folded {
            alerts: 2,
            matches: 2,
            ..
        }
    ));
    let mut e = engine(&flood_rule("max_alerts = 1"));
    let out = file(&mut e, &flood(4), 100);
    assert_eq!(out.alerts.len(), 1, "a cap of one is the summary alone");
    assert!(matches!(
        out.alerts[0].trigger,
        Trigger::Folded { alerts: 4, .. }
    ));
}

#[test]
fn a_reviewed_rules_summary_is_a_draft_like_its_alerts() {
    let mut e = engine(&flood_rule("review = [\"viable\"]\nmax_alerts = 2"));
    let out = file(&mut e, &flood(10), 100);
    assert_eq!(out.alerts.len(), 2);
    assert!(out.alerts.iter().all(|a| a.status == AlertStatus::InReview));
}

#[test]
fn a_summary_spanning_more_districts_than_an_alert_carries_carries_no_records() {
    let mut e = engine(&flood_rule("max_alerts = 2"));
    let events: Vec<Event> = (0..200)
        .map(|i| drug(&format!("district-{i}"), &format!("novel-{i}"), i))
        .collect();
    let out = file(&mut e, &events, 1000);
    let summary = &out.alerts[1];
    assert!(matches!(
        summary.trigger,
        Trigger::Folded { alerts: 199, .. }
    ));
    assert!(
        summary.events.is_empty(),
        "no sample that would leave some district's partners out: `route` sends a record-less alert to all"
    );
}

#[test]
fn deadline_openings_beyond_the_cap_fold_into_a_summary_for_notify_on_open() {
    let mut e = engine(&DISCHARGE.replace("severity", "max_alerts = 3\nseverity"));
    let events: Vec<Event> = (0..20).map(|i| discharge(i, &format!("GMP-{i}"))).collect();
    let out = file(&mut e, &events, 100);
    assert_eq!(out.alerts.len(), 3);
    assert!(matches!(
        out.alerts[2].trigger,
        Trigger::Folded {
            alerts: 18,
            of: FoldedOf::DeadlinesOpened,
            ..
        }
    ));
    assert_eq!(
        out.alerts[2].status,
        AlertStatus::Sent,
        "notices are never drafts"
    );
    assert_eq!(
        e.state().open_deadlines().len(),
        20,
        "every deadline is still open"
    );
}

#[test]
/// The daemon-scale figure (250,000 values) is measured with `replay`; this keeps the unit test quick.
fn a_flood_of_50_000_new_values_folds_into_one_summary() {
    let mut e = engine(&flood_rule(""));
    let events: Vec<Event> = (0..50_000)
        .map(|i| drug("Bolton", &format!("novel-{i:06}"), 0))
        .collect();
    let mut batch = Batch::default();
    for ev in &events {
        e.observe(&mut batch, ev);
    }
    let out = e.finish(batch, t(10), "hash", "flood.csv");
    assert_eq!(out.alerts.len(), 100);
    assert!(matches!(
        out.alerts[99].trigger,
        Trigger::Folded {
            alerts: 49_901,
            matches: 49_901,
            ..
        }
    ));
}

// ------------------------------------------------------------------ wall clock

#[test]
fn a_record_dated_2099_does_not_silence_a_threshold_rule() {
    let mut e = engine(OVERDOSES);
    let far = Timestamp::from_second(4_070_908_800).unwrap(); // 2099-01-01
    let mut stray = overdose("stray", "Bolton", 0);
    stray.time = far;
    assert!(file(&mut e, &[stray], 0).alerts.is_empty());
    // Four real overdoses over the next days: the third makes the cluster.
    assert!(
        file(&mut e, &[overdose("r1", "Bolton", D)], D)
            .alerts
            .is_empty()
    );
    assert!(
        file(&mut e, &[overdose("r2", "Bolton", 2 * D)], 2 * D)
            .alerts
            .is_empty()
    );
    let out = file(
        &mut e,
        &[
            overdose("r3", "Bolton", 3 * D),
            overdose("r4", "Bolton", 3 * D + 1),
        ],
        3 * D + 1,
    );
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].event_count, 4);
    let ids: Vec<_> = out.alerts[0]
        .events
        .iter()
        .map(|e| e.record_id.as_deref().unwrap())
        .collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4"], "the stray is not evidence");
}

#[test]
fn a_record_a_little_ahead_neither_pushes_real_ones_out_nor_keeps_old_ones_in() {
    let now = 10 * D;
    let mut e = engine(OVERDOSES);
    let first = [
        overdose("a1", "Bolton", now - 6 * D - 12 * H),
        overdose("a2", "Bolton", now - 6 * D - 12 * H),
    ];
    assert!(file(&mut e, &first, now - 6 * D).alerts.is_empty());
    // Trimmed against a record 20 hours ahead, a1 and a2 would be gone.
    let second = [
        overdose("old", "Bolton", now - 8 * D),
        overdose("ahead", "Bolton", now + 20 * H),
        overdose("c", "Bolton", now),
    ];
    let out = file(&mut e, &second, now);
    assert_eq!(out.alerts.len(), 1, "a1, a2 and c are within 7 days of now");
    let ids: Vec<_> = out.alerts[0]
        .events
        .iter()
        .map(|e| e.record_id.as_deref().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["a1", "a2", "c"],
        "8 days before now is out of the window, and the one ahead is not among the three"
    );
    // Old events alone do not linger because a later record is ahead of them.
    let mut e = engine(OVERDOSES);
    file(
        &mut e,
        &[overdose("x", "Wigan", 0), overdose("y", "Wigan", D)],
        D,
    );
    let out = file(&mut e, &[overdose("z", "Wigan", 30 * D)], 30 * D);
    assert!(
        out.alerts.is_empty(),
        "x and y are weeks old by the wall clock"
    );
    let w = &e.state().windows[&GroupRef::new("overdose-cluster", "wigan")];
    assert_eq!(w.len(), 1);
}

// ------------------------------------------------------------------ bounded state

#[test]
fn a_quiet_window_is_deleted_after_its_rules_need_and_not_before() {
    let mut e = engine(OVERDOSES);
    file(&mut e, &[overdose("a", "Bolton", 0)], 0);
    let gref = GroupRef::new("overdose-cluster", "bolton");
    assert_eq!(
        e.next_wakeup(),
        Some(t(7 * D) + SignedDuration::from_millis(1)),
        "the daemon wakes when the window can go"
    );
    let out = e.tick(t(7 * D));
    assert!(out.changes.is_empty());
    assert!(e.state().windows.contains_key(&gref), "still within 7 days");
    let out = e.tick(t(7 * D + 1));
    assert!(!e.state().windows.contains_key(&gref));
    assert_eq!(
        out.changes,
        [StateChange {
            kind: StateKind::Window,
            key: gref,
            data: None
        }],
        "the deletion is returned for the store"
    );
    assert_eq!(e.next_wakeup(), None, "nothing left to sweep");
}

#[test]
fn a_quiet_rate_history_is_kept_for_within_and_baseline() {
    let mut e = engine(RISE);
    file(&mut e, &[overdose("a", "Bolton", 0)], 0);
    e.tick(t(5 * D));
    assert_eq!(e.state().windows.len(), 1, "1 day plus 4 days of baseline");
    e.tick(t(5 * D + 1));
    assert!(e.state().windows.is_empty());
}

#[test]
fn a_cooldown_is_deleted_when_it_ends_or_one_cooldown_later_if_it_held_matches_back() {
    let mut e = engine(NITAZENE);
    let hit = |district: &str| [drug(district, "protonitazene", 0)];
    file(&mut e, &hit("Bolton"), 0);
    file(&mut e, &hit("Wigan"), 0);
    file(&mut e, &hit("Wigan"), H); // held back
    assert_eq!(e.state().cooldowns.len(), 2);
    e.tick(t(6 * H - 1));
    assert_eq!(e.state().cooldowns.len(), 2, "both still running");
    let out = e.tick(t(6 * H));
    assert_eq!(
        e.state().cooldowns.len(),
        1,
        "Bolton's ended with nothing held back"
    );
    assert!(
        out.changes
            .iter()
            .any(|c| c.key.group_key == "bolton" && c.data.is_none())
    );
    // Sweeps are at least an hour apart; Wigan's goes at 12h.
    e.tick(t(12 * H - 1));
    assert_eq!(e.state().cooldowns.len(), 1);
    e.tick(t(12 * H));
    assert!(e.state().cooldowns.is_empty());
    // Within that time a new match would still have reported the one held back.
    let mut e = engine(NITAZENE);
    file(&mut e, &hit("Wigan"), 0);
    file(&mut e, &hit("Wigan"), H);
    e.tick(t(7 * H));
    assert_eq!(
        file(&mut e, &hit("Wigan"), 8 * H).alerts[0].suppressed_before,
        1
    );
}

#[test]
fn state_deleted_before_a_restart_stays_deleted_and_stale_state_is_swept_at_start() {
    let mut e = engine(OVERDOSES);
    let first = file(
        &mut e,
        &[overdose("a", "Bolton", 0), overdose("w", "Wigan", 5 * D)],
        5 * D,
    );
    let swept = e.tick(t(7 * D + 1));
    assert!(swept.changes.iter().any(|c| c.data.is_none()));
    let mut restarted = restart_from(OVERDOSES, &[&first, &swept]);
    assert_eq!(
        restarted.state().windows.len(),
        1,
        "only Wigan's was stored"
    );
    // Bolton starts again from nothing: two more are not a cluster of three.
    let out = file(
        &mut restarted,
        &[
            overdose("b", "Bolton", 8 * D),
            overdose("c", "Bolton", 8 * D),
        ],
        8 * D,
    );
    assert!(out.alerts.is_empty());
    // State stored before a long stop goes at the first tick after the start.
    let mut stale = restart_from(OVERDOSES, &[&first]);
    assert_eq!(stale.next_wakeup(), Some(Timestamp::MIN));
    let out = stale.tick(t(30 * D));
    assert_eq!(out.changes.len(), 2);
    assert!(out.changes.iter().all(|c| c.data.is_none()));
    assert!(stale.state().windows.is_empty());
}
