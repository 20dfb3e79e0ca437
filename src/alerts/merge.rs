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
use std::collections::BTreeSet;

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
    let mut keys: Vec<Option<MergeKey>> = Vec::with_capacity(alerts.len());
    for alert in alerts {
        let key = rules.get(&alert.rule_id).and_then(|r| merge_key(&alert, r));
        match key
            .as_ref()
            .and_then(|k| keys.iter().position(|other| other.as_ref() == Some(k)))
        {
            Some(slot) => slots[slot].push(alert),
            None => {
                slots.push(vec![alert]);
                keys.push(key);
            }
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
                primary.suppressed_before += other.suppressed_before;
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
        Trigger::Match | Trigger::Threshold { .. } | Trigger::FirstSeen { .. } | Trigger::Rate { .. }
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
