//! The rule engine: events in, alerts and state changes out.
//!
//! Pure: no I/O, no clock. The caller passes `now` and persists the state
//! changes it returns in the same transaction as the alerts (SPEC §7).
//!
//! One file is one [`Batch`]: every event is observed, and at the end
//! [`Engine::finish`] turns the matches of each rule and group into at most
//! one alert, applying cooldowns. Observing does not change the engine's
//! state; only `finish` does, so a file that fails to commit can be retried
//! after [`Engine::restore`] puts back the state from the database.

use super::{Rule, RuleKind, RuleSet};
use crate::alerts::{Alert, AlertStatus};
use crate::event::Event;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How many matching events an alert carries in full; the rest are counted.
/// Bounds memory and email size when a whole file matches.
pub const MAX_EVENTS_PER_ALERT: usize = 50;

/// Identifies the state of one rule for one group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRef {
    pub rule_id: String,
    pub group_key: String,
}

/// Cooldown state of a rule and group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cooldown {
    /// When the last alert was raised.
    pub last_alert_at: Timestamp,
    /// Matches counted since then without an email; reported in the next alert.
    pub suppressed: u64,
}

/// All rule state, keyed by rule and group.
#[derive(Debug, Clone, Default)]
pub struct EngineState {
    pub cooldowns: HashMap<GroupRef, Cooldown>,
}

/// A change to persist: the new value of one group's state, or its removal.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    Cooldown(GroupRef, Option<Cooldown>),
}

/// What a file produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub alerts: Vec<Alert>,
    pub changes: Vec<StateChange>,
    /// Matches that fell inside a cooldown, by rule id (for logs).
    pub suppressed: BTreeMap<String, u64>,
}

/// Matches of one rule and group within one file.
#[derive(Debug)]
struct Pending {
    group: BTreeMap<String, String>,
    events: Vec<Event>,
    count: u64,
}

/// The matches collected from one file, not yet turned into alerts.
#[derive(Debug, Default)]
pub struct Batch {
    /// Keyed by rule index and group key; a BTreeMap so alert order is stable.
    pending: BTreeMap<(usize, String), Pending>,
    scratch: String,
    events_seen: u64,
}

impl Batch {
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }
}

#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    /// Rule indices by feed name: each event is only tested against its feed's rules.
    by_feed: HashMap<String, Vec<usize>>,
    state: EngineState,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, state: EngineState) -> Engine {
        let mut by_feed: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            by_feed.entry(rule.feed.clone()).or_default().push(i);
        }
        Engine {
            rules,
            by_feed,
            state,
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// Replaces the state, e.g. with what the database holds after a failed commit.
    pub fn restore(&mut self, state: EngineState) {
        self.state = state;
    }

    /// Swaps in a new rule set, keeping the state of rules that still exist.
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let state = std::mem::take(&mut self.state);
        let mut next = Engine::new(rules, state);
        next.state
            .cooldowns
            .retain(|k, _| next.rules.get(&k.rule_id).is_some());
        *self = next;
    }

    /// Tests one event against the rules of its feed.
    pub fn observe(&self, batch: &mut Batch, event: &Event) {
        batch.events_seen += 1;
        let Some(indices) = self.by_feed.get(&event.feed) else {
            return;
        };
        for &i in indices {
            let rule = &self.rules.rules[i];
            if !rule.when.matches(event, &mut batch.scratch) {
                continue;
            }
            match rule.kind {
                RuleKind::Match => {
                    let key = group_key(rule, event);
                    let pending = batch.pending.entry((i, key)).or_insert_with(|| Pending {
                        group: group_values(rule, event),
                        events: Vec::new(),
                        count: 0,
                    });
                    pending.count += 1;
                    if pending.events.len() < MAX_EVENTS_PER_ALERT {
                        pending.events.push(event.clone());
                    }
                }
            }
        }
    }

    /// Turns a file's matches into alerts, applying cooldowns at `now`.
    /// `discriminator` (the file's content hash) keeps alert ids unique.
    pub fn finish(&mut self, batch: Batch, now: Timestamp, discriminator: &str) -> Outcome {
        let mut outcome = Outcome::default();
        for ((index, key), pending) in batch.pending {
            let rule = &self.rules.rules[index];
            let group_ref = GroupRef {
                rule_id: rule.id.clone(),
                group_key: key.clone(),
            };
            let previous = self.state.cooldowns.get(&group_ref);
            let in_cooldown = match (rule.cooldown, previous) {
                (Some(cd), Some(prev)) => {
                    let until = prev
                        .last_alert_at
                        .checked_add(cd)
                        .unwrap_or(prev.last_alert_at);
                    now < until
                }
                _ => false,
            };
            if in_cooldown {
                let mut next = previous
                    .cloned()
                    .expect("in_cooldown implies previous state");
                next.suppressed += pending.count;
                *outcome.suppressed.entry(rule.id.clone()).or_default() += pending.count;
                outcome
                    .changes
                    .push(StateChange::Cooldown(group_ref.clone(), Some(next.clone())));
                self.state.cooldowns.insert(group_ref, next);
                continue;
            }
            let suppressed_before = previous.map(|p| p.suppressed).unwrap_or(0);
            if rule.cooldown.is_some() {
                let next = Cooldown {
                    last_alert_at: now,
                    suppressed: 0,
                };
                outcome
                    .changes
                    .push(StateChange::Cooldown(group_ref.clone(), Some(next.clone())));
                self.state.cooldowns.insert(group_ref, next);
            }
            let status = if rule.review.is_empty() {
                AlertStatus::Sent
            } else {
                AlertStatus::InReview
            };
            outcome.alerts.push(Alert {
                id: alert_id(rule, &key, now, discriminator),
                rule_id: rule.id.clone(),
                group: pending.group,
                district: crate::alerts::common_district(&pending.events, &rule.district_field),
                severity: rule.severity,
                created_at: now,
                event_count: pending.count,
                suppressed_before,
                events: pending.events,
                status,
            });
        }
        outcome
    }
}

/// The group key: the `group_by` values, case-folded so "Bolton" and "BOLTON" group together.
fn group_key(rule: &Rule, event: &Event) -> String {
    let mut key = String::new();
    for (i, field) in rule.group_by.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        key.push_str(&event.text(field).trim().to_lowercase());
    }
    key
}

fn group_values(rule: &Rule, event: &Event) -> BTreeMap<String, String> {
    rule.group_by
        .iter()
        .map(|f| (f.clone(), event.text(f).trim().to_string()))
        .collect()
}

/// A short, stable, unique alert reference: `EW-` and 10 base-32 characters.
fn alert_id(rule: &Rule, key: &str, now: Timestamp, discriminator: &str) -> String {
    let mut h = Sha256::new();
    h.update(rule.id.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update([0]);
    h.update(now.as_millisecond().to_le_bytes());
    h.update(discriminator.as_bytes());
    let digest = h.finalize();
    // Crockford's base 32: no I, L, O or U, so ids read out over a phone stay unambiguous.
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut bits: u64 = 0;
    for b in &digest[..8] {
        bits = (bits << 8) | u64::from(*b);
    }
    let mut id = String::from("EW-");
    for i in 0..10 {
        id.push(ALPHABET[((bits >> (59 - 5 * i)) & 31) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
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
"#,
        )
        .unwrap();
        Arc::new(RuleSet::from_sources(&config, &[(PathBuf::from("r.toml"), text.into())]).unwrap())
    }

    fn event(feed: &str, district: &str, substance: &str, at: i64) -> Event {
        let mut fields = BTreeMap::new();
        fields.insert("district".to_string(), Value::Text(district.into()));
        fields.insert(
            "substances_major".to_string(),
            Value::List(vec![substance.into()]),
        );
        Event {
            feed: feed.into(),
            record_id: None,
            time: Timestamp::from_second(at).unwrap(),
            fields,
        }
    }

    const NITAZENE: &str = r#"
[[rule]]
id = "nitazene"
feed = "drug_testing"
when = 'substances_major in ["protonitazene", "isotonitazene"]'
notify = ["panel"]
group_by = ["district"]
cooldown = "6h"
"#;

    fn run(engine: &mut Engine, events: &[Event], now: i64) -> Outcome {
        let mut batch = Batch::default();
        for e in events {
            engine.observe(&mut batch, e);
        }
        engine.finish(batch, Timestamp::from_second(now).unwrap(), "file")
    }

    #[test]
    fn one_alert_per_rule_and_group_per_file() {
        let mut engine = Engine::new(rules(NITAZENE), EngineState::default());
        let out = run(
            &mut engine,
            &[
                event("drug_testing", "Bolton", "Protonitazene", 0),
                event("drug_testing", "Salford", "cocaine", 0),
                event("drug_testing", "bolton", "isotonitazene", 0),
                event("drug_testing", "Salford", "isotonitazene", 0),
                event("incidents", "Salford", "isotonitazene", 0),
            ],
            100,
        );
        assert_eq!(out.alerts.len(), 2);
        assert_eq!(out.alerts[0].group["district"], "Bolton");
        assert_eq!(out.alerts[0].event_count, 2);
        assert_eq!(out.alerts[1].group["district"], "Salford");
        assert_eq!(out.alerts[1].event_count, 1);
        assert_ne!(out.alerts[0].id, out.alerts[1].id);
        assert!(out.alerts[0].id.starts_with("EW-") && out.alerts[0].id.len() == 13);
    }

    #[test]
    fn cooldown_counts_later_matches_and_reports_them() {
        let mut engine = Engine::new(rules(NITAZENE), EngineState::default());
        let hit = [event("drug_testing", "Bolton", "protonitazene", 0)];
        assert_eq!(run(&mut engine, &hit, 0).alerts.len(), 1);
        let out = run(&mut engine, &[hit[0].clone(), hit[0].clone()], 3600);
        assert!(out.alerts.is_empty());
        assert_eq!(out.suppressed["nitazene"], 2);
        // Exactly at the end of the cooldown the next match alerts, reporting the two it held back.
        let out = run(&mut engine, &hit, 6 * 3600);
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(out.alerts[0].suppressed_before, 2);
        // Another group is not held back by Bolton's cooldown.
        let out = run(
            &mut engine,
            &[event("drug_testing", "Wigan", "protonitazene", 0)],
            6 * 3600 + 1,
        );
        assert_eq!(out.alerts.len(), 1);
    }

    #[test]
    fn events_per_alert_are_capped_but_counted() {
        let mut engine = Engine::new(rules(NITAZENE), EngineState::default());
        let events: Vec<Event> = (0..200)
            .map(|i| event("drug_testing", "Bolton", "protonitazene", i))
            .collect();
        let out = run(&mut engine, &events, 1000);
        assert_eq!(out.alerts[0].events.len(), MAX_EVENTS_PER_ALERT);
        assert_eq!(out.alerts[0].event_count, 200);
    }

    #[test]
    fn reload_keeps_state_of_rules_that_remain() {
        let mut engine = Engine::new(rules(NITAZENE), EngineState::default());
        run(
            &mut engine,
            &[event("drug_testing", "Bolton", "protonitazene", 0)],
            0,
        );
        engine.replace_rules(rules(&format!(
            "{NITAZENE}\n[[rule]]\nid = \"other\"\nfeed = \"incidents\"\nnotify = [\"panel\"]\n"
        )));
        assert_eq!(engine.state().cooldowns.len(), 1);
        engine.replace_rules(rules(
            "[[rule]]\nid = \"other\"\nfeed = \"incidents\"\nnotify = [\"panel\"]\n",
        ));
        assert!(engine.state().cooldowns.is_empty());
    }
}
