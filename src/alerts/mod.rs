//! Alerts: what a rule raised, who may receive it, and what each recipient may see.
//!
//! Routing and redaction are decided here, purely (SPEC §5.3): a partner gets
//! an alert when its severity floor allows it and it covers the district of at
//! least one of the alert's records; it then sees only the records of its
//! districts, and, without the Information Sharing Agreement, none of the
//! feed's sensitive fields (SPEC §5.3: matched whatever their case, spacing, `_`
//! or `-`), nor any value taken from one: a group value, the district, a
//! first-seen value or a deadline key. Columns a feed does not list in `fields`
//! reach nobody. [`render`] turns one such delivery into an email and reads
//! only the delivery, never the alert's own values.

pub mod merge;
pub mod notice;
pub mod render;
pub mod wording;

use crate::config::{Config, FeedConfig, Partner, Severity};
use crate::event::Event;
use crate::rules::Rule;
use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// An alert raised by a rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// Stable reference shown to people (`EW-…`), also the `X-Earlywarn-Alert` header.
    pub id: String,
    pub rule_id: String,
    /// The `group_by` values by field name.
    pub group: BTreeMap<String, String>,
    /// The district all records share, if they share one.
    pub district: Option<String>,
    pub severity: Severity,
    pub created_at: Timestamp,
    /// Matching records in this alert (events may hold fewer: see MAX_EVENTS_PER_ALERT).
    pub event_count: u64,
    /// Matches held back by the cooldown since the previous alert of this rule and group.
    pub suppressed_before: u64,
    pub events: Vec<Event>,
    pub status: AlertStatus,
    /// What made the rule fire.
    #[serde(default)]
    pub trigger: Trigger,
    /// The panel's assessment, once approved (SPEC §5.4): what went out and who approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Assessment>,
    /// The other rules of its merge group that raised an alert about the
    /// same records in the same batch (see `merge`), highest severity first.
    #[serde(default)]
    pub reasons: Vec<Reason>,
}

/// Another rule's finding, merged into an alert about the same records.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reason {
    pub rule_id: String,
    pub rule_name: String,
    pub severity: Severity,
    /// That rule's `group_by` values (a first-seen rule's value): what rule
    /// tests compare. Emails do not show it: `trigger` and `found` say the same.
    #[serde(default)]
    pub group: BTreeMap<String, String>,
    /// What made that rule fire; redacted per partner like the alert's own.
    pub trigger: Trigger,
    /// The values that made that rule's `when` true, by record and field.
    /// An email names only those its partner's view still holds, so what a
    /// reason says is built from the delivery, as the alert's own first line is.
    #[serde(default)]
    pub found: Vec<Found>,
    /// That rule's `notify` when raised: the merged alert goes to the union.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// One value that made a rule's `when` true.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Found {
    pub record_id: String,
    pub field: String,
    pub value: String,
}

/// What a review panel decided an approved alert says, and who approved it.
/// The renderer reads it so the partners' emails carry the panel's wording.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// Replaces the rule's headline (the subject's and the email's first line).
    pub headline: Option<String>,
    /// Replaces the rule's advice.
    pub advice: Option<String>,
    /// Replaces the rule's severity (also applied to the alert, for routing).
    pub severity: Option<Severity>,
    /// `notify` partners the panel chose not to tell.
    #[serde(default)]
    pub left_out: BTreeSet<String>,
    /// Who approved it, in order.
    pub approvers: Vec<Approver>,
    /// When the last approval made it go out.
    pub approved_at: Timestamp,
}

/// One approver as the email names them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Approver {
    pub name: String,
    /// The name of the partner they decided for, if any.
    pub partner: Option<String>,
}

/// What made a rule fire; decides the audience and the wording of the email.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// Events matched a `match` rule.
    #[default]
    Match,
    /// `count` matching events within the window.
    Threshold { count: u64, within_secs: u64 },
    /// A deadline opened (`closed`: its closing record had already arrived).
    DeadlineOpened {
        key: String,
        due: Timestamp,
        closed: bool,
    },
    /// A deadline passed with no closing record: the escalation.
    DeadlineOverdue { key: String, due: Timestamp },
    /// A deadline was closed (`late`: after it was due).
    DeadlineClosed {
        key: String,
        due: Timestamp,
        late: bool,
    },
    /// A value never seen before.
    FirstSeen { field: String, value: String },
    /// Matching events at a multiple of the usual rate.
    Rate {
        current: u64,
        baseline_average: f64,
        within_secs: u64,
    },
    /// A feed delivered nothing since `last`.
    Silence {
        feed: String,
        last: Timestamp,
        silent_secs: u64,
    },
    /// One file's alerts of a rule beyond its `max_alerts`, folded into this
    /// one summary: counts and a small sample of records, never all of them.
    Folded {
        /// How many alerts (groups, values or deadline keys) were folded.
        alerts: u64,
        /// How many matching records those alerts stood for.
        matches: u64,
        /// The feed and name of the file they came from (untrusted text).
        feed: String,
        file: String,
        /// What the folded alerts were: decides the audience and the review.
        of: FoldedOf,
    },
}

/// What kind of alerts a summary folded (see [`Trigger::Folded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoldedOf {
    /// Matches, thresholds, first-seen values, rates: reviewed like them, to `notify`.
    Findings,
    /// Deadline openings: to `notify_on_open`.
    DeadlinesOpened,
    /// Deadline closes: to `notify_on_close`.
    DeadlinesClosed,
}

impl FoldedOf {
    /// What an alert with `trigger` counts as when folded.
    pub fn of(trigger: &Trigger) -> FoldedOf {
        match trigger {
            Trigger::DeadlineOpened { .. } => FoldedOf::DeadlinesOpened,
            Trigger::DeadlineClosed { .. } => FoldedOf::DeadlinesClosed,
            _ => FoldedOf::Findings,
        }
    }
}

impl Trigger {
    /// Whether a rule's `review` applies: what a panel must assess before it is
    /// shared. Deadline notices and silence are operational and go straight out.
    pub fn is_reviewable(&self) -> bool {
        matches!(
            self,
            Trigger::Match
                | Trigger::Threshold { .. }
                | Trigger::FirstSeen { .. }
                | Trigger::Rate { .. }
                | Trigger::Folded {
                    of: FoldedOf::Findings,
                    ..
                }
        )
    }

    /// Deadline due time and key, for templates.
    pub fn deadline(&self) -> Option<(&str, Timestamp)> {
        match self {
            Trigger::DeadlineOpened { key, due, .. }
            | Trigger::DeadlineOverdue { key, due }
            | Trigger::DeadlineClosed { key, due, .. } => Some((key, *due)),
            _ => None,
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Sent (or being sent) to `notify`.
    Sent,
    /// Sent as a draft to `review`; waits for approval.
    InReview,
    /// Approved after review and sent to `notify`.
    Approved,
    /// Closed by a reviewer without going to `notify`.
    Dismissed,
    /// Sent, then withdrawn (SPEC §10): partners were told to disregard it.
    Withdrawn,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Sent => "sent",
            AlertStatus::InReview => "in_review",
            AlertStatus::Approved => "approved",
            AlertStatus::Dismissed => "dismissed",
            AlertStatus::Withdrawn => "withdrawn",
        }
    }
    pub fn parse(s: &str) -> Option<AlertStatus> {
        Some(match s {
            "sent" => AlertStatus::Sent,
            "in_review" => AlertStatus::InReview,
            "approved" => AlertStatus::Approved,
            "dismissed" => AlertStatus::Dismissed,
            "withdrawn" => AlertStatus::Withdrawn,
            _ => return None,
        })
    }
}

/// Why a partner receives an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// In the rule's `notify` list.
    Notify,
    /// In the rule's `review` list: the email is a draft for assessment.
    Review,
}

/// One partner's view of an alert: everything its email is rendered from.
///
/// Redaction happens here, before rendering, so no template or fixed section can
/// reach a value the partner may not see: the renderer reads `events`, `group`,
/// `district` and `trigger` from this view, never from the [`Alert`].
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    pub partner: &'a Partner,
    pub audience: Audience,
    /// The records this partner may see, with withheld fields removed.
    pub events: Vec<Event>,
    /// How many matching records this partner's view stands for.
    pub count: u64,
    /// Names of the fields removed from this partner's view.
    pub withheld: BTreeSet<String>,
    /// The alert's group values, with withheld ones replaced by [`WITHHELD`].
    pub group: BTreeMap<String, String>,
    /// The alert's district, or [`WITHHELD`] when it comes from a withheld field.
    pub district: Option<String>,
    /// What made the rule fire, with a withheld key or value replaced by [`WITHHELD`].
    pub trigger: Trigger,
    /// The alert's merged reasons, their triggers redacted like `trigger`.
    pub reasons: Vec<Reason>,
}

/// The text that replaces a withheld value (e.g. a location in a subject).
pub const WITHHELD: &str = "[withheld]";

/// The audience an alert goes to first: reviewers for a reviewed alert, else its partners.
pub fn first_audience(alert: &Alert) -> Audience {
    if alert.status == AlertStatus::InReview {
        Audience::Review
    } else {
        Audience::Notify
    }
}

/// The partner ids of an audience: deadline notices have their own lists.
fn audience_ids<'r>(alert: &Alert, rule: &'r Rule, audience: Audience) -> &'r [String] {
    use crate::rules::RuleKind;
    if audience == Audience::Review {
        return &rule.review;
    }
    match (&alert.trigger, &rule.kind) {
        (Trigger::DeadlineOpened { .. }, RuleKind::Deadline { notify_on_open, .. })
        | (
            Trigger::Folded {
                of: FoldedOf::DeadlinesOpened,
                ..
            },
            RuleKind::Deadline { notify_on_open, .. },
        ) => notify_on_open,
        (
            Trigger::DeadlineClosed { .. }
            | Trigger::Folded {
                of: FoldedOf::DeadlinesClosed,
                ..
            },
            RuleKind::Deadline {
                notify_on_close, ..
            },
        ) => notify_on_close,
        _ => &rule.notify,
    }
}

/// The `notify` partner ids of `alert`: its rule's, then its reasons' (a
/// merged alert), each once. What a reviewer may leave out.
pub fn notify_ids(alert: &Alert, rule: &Rule) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in std::iter::once(&rule.notify)
        .chain(alert.reasons.iter().map(|r| &r.notify))
        .flatten()
    {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids
}

/// The partner ids `alert` goes to for `audience`: the rule's, and for a
/// merged alert's `notify` every reason's too (reviewers are shared: `check`
/// holds a merge group to one `review` list).
fn audience_of<'r>(alert: &'r Alert, rule: &'r Rule, audience: Audience) -> Vec<&'r String> {
    let mut ids: Vec<&String> = audience_ids(alert, rule, audience).iter().collect();
    if audience == Audience::Notify && alert.trigger.deadline().is_none() {
        ids.extend(alert.reasons.iter().flat_map(|r| &r.notify));
    }
    ids
}

/// Decides who receives `alert` and what each sees.
pub fn route<'a>(
    alert: &Alert,
    rule: &Rule,
    config: &'a Config,
    audience: Audience,
) -> Vec<Delivery<'a>> {
    let ids = audience_of(alert, rule, audience);
    let feed = config.feed(&rule.feed);
    let mut deliveries = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        let Some(partner) = config.partner(id) else {
            continue;
        };
        if !seen.insert(partner.id.as_str()) {
            continue;
        }
        // Reviewers assess the alert as a whole; the severity floor is for partners' inboxes.
        if audience == Audience::Notify && alert.severity < partner.min_severity {
            continue;
        }
        // Each record is routed by its own feed's district field: a deadline's
        // closing record may come from another feed.
        let visible: Vec<&Event> = alert
            .events
            .iter()
            .filter(|e| {
                let field = config
                    .feed(&e.feed)
                    .or(feed)
                    .map(|f| f.district_field.as_str())
                    .unwrap_or("district");
                partner.covers(e.get(field).map(|v| v.to_string()).as_deref())
            })
            .collect();
        // An alert about no record (a silent feed) goes to everyone listed;
        // one about records only to those who cover at least one of them.
        if visible.is_empty() && !alert.events.is_empty() {
            continue;
        }
        let count = if visible.len() == alert.events.len() {
            alert.event_count
        } else {
            visible.len() as u64
        };
        let mut withheld = BTreeSet::new();
        let events = visible
            .into_iter()
            .map(|e| redact_event(e, config, partner, &mut withheld))
            .collect();
        let mut hide = |field: &str| hidden(feed, field, partner, &mut withheld);
        let group = alert
            .group
            .iter()
            .map(|(k, v)| {
                let v = if hide(k) {
                    WITHHELD.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        let district = match (&alert.district, feed) {
            (Some(_), Some(f)) if hide(&f.district_field) => Some(WITHHELD.to_string()),
            (district, _) => district.clone(),
        };
        let trigger = redact_trigger(&alert.trigger, rule, config, partner, &mut withheld);
        // A merge group shares the feed, so each reason redacts as the rule does.
        let reasons = alert
            .reasons
            .iter()
            .map(|r| Reason {
                trigger: redact_trigger(&r.trigger, rule, config, partner, &mut withheld),
                ..r.clone()
            })
            .collect();
        deliveries.push(Delivery {
            partner,
            audience,
            events,
            count,
            withheld,
            group,
            district,
            trigger,
            reasons,
        });
    }
    deliveries
}

/// Whether `field` of `feed` is kept from `partner`: a sensitive field without the
/// ISA (recorded in `withheld`), or a column the feed does not list (kept from everyone).
/// A feed no longer in the config is unknown ground: withheld from a partner without the ISA.
fn hidden(
    feed: Option<&FeedConfig>,
    field: &str,
    partner: &Partner,
    withheld: &mut BTreeSet<String>,
) -> bool {
    let Some(feed) = feed else {
        if !partner.isa {
            withheld.insert(field.to_string());
        }
        return !partner.isa;
    };
    if !partner.isa
        && let Some(name) = feed.sensitive_name(field)
    {
        withheld.insert(name.to_string());
        return true;
    }
    !feed.is_listed(field)
}

/// One record as `partner` may see it: without its feed's sensitive fields (for a
/// partner without the ISA) and without columns the feed does not list.
fn redact_event(
    event: &Event,
    config: &Config,
    partner: &Partner,
    withheld: &mut BTreeSet<String>,
) -> Event {
    let feed = config.feed(&event.feed);
    let mut event = event.clone();
    let mut found = BTreeSet::new();
    let drop: Vec<String> = event
        .fields
        .iter()
        .filter(|(name, value)| {
            // Only a field that held something is reported as withheld.
            let sink = if value.is_empty() {
                &mut found
            } else {
                &mut *withheld
            };
            hidden(feed, name, partner, sink)
        })
        .map(|(name, _)| name.to_string())
        .collect();
    for name in drop {
        event.fields.remove(&name);
    }
    event
}

/// The trigger as `partner` may see it: a first-seen value or a deadline key that
/// comes from a withheld field is replaced by [`WITHHELD`].
fn redact_trigger(
    trigger: &Trigger,
    rule: &Rule,
    config: &Config,
    partner: &Partner,
    withheld: &mut BTreeSet<String>,
) -> Trigger {
    use crate::rules::RuleKind;
    let feed = config.feed(&rule.feed);
    let mut trigger = trigger.clone();
    match &mut trigger {
        Trigger::FirstSeen { field, value } => {
            if hidden(feed, field, partner, withheld) {
                *value = WITHHELD.to_string();
            }
        }
        Trigger::DeadlineOpened { key, .. }
        | Trigger::DeadlineOverdue { key, .. }
        | Trigger::DeadlineClosed { key, .. } => {
            // The key is one value in both feeds: hidden if either feed hides it.
            let hide = match &rule.kind {
                RuleKind::Deadline {
                    key: key_field,
                    until_feed,
                    ..
                } => {
                    let in_rule_feed = hidden(feed, key_field, partner, withheld);
                    hidden(config.feed(until_feed), key_field, partner, withheld) || in_rule_feed
                }
                // A deadline notice of a rule that is no longer a deadline: its key's field is unknown.
                _ => !partner.isa,
            };
            if hide {
                *key = WITHHELD.to_string();
            }
        }
        Trigger::Match
        | Trigger::Threshold { .. }
        | Trigger::Rate { .. }
        | Trigger::Silence { .. }
        // Counts and the file's name only: no record's values.
        | Trigger::Folded { .. } => {}
    }
    trigger
}

/// The district all events share (compared without case), if any.
pub fn common_district(events: &[Event], district_field: &str) -> Option<String> {
    let first = events.first()?.get(district_field)?.to_string();
    let first = first.trim().to_string();
    events
        .iter()
        .all(|e| {
            e.get(district_field)
                .is_some_and(|v| v.to_string().trim().eq_ignore_ascii_case(&first))
        })
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Value;
    use crate::rules::RuleSet;
    use std::path::{Path, PathBuf};

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            r#"
[mail]
transport = "file"
[[feed]]
name = "drug_testing"
dir = "in"
sensitive = ["notes", "location"]
[[partner]]
id = "panel"
emails = ["p@example.org"]
isa = true
[[partner]]
id = "bolton"
emails = ["b@example.org"]
districts = ["Bolton"]
[[partner]]
id = "nhs"
emails = ["n@example.org"]
isa = true
min_severity = "critical"
"#,
        )
        .unwrap()
    }

    fn event(district: &str) -> Event {
        let mut fields = crate::event::Fields::default();
        fields.insert("district", Value::Text(district.into()));
        fields.insert("notes", Value::Text("found near the bus station".into()));
        fields.insert("location", Value::Text("".into()));
        Event {
            feed: "drug_testing".into(),
            record_id: Some("S1".into()),
            time: Timestamp::UNIX_EPOCH,
            fields,
        }
    }

    fn alert(events: Vec<Event>, severity: Severity) -> Alert {
        Alert {
            id: "EW-1".into(),
            rule_id: "r".into(),
            group: BTreeMap::from([("location".to_string(), "Market St".to_string())]),
            district: common_district(&events, "district"),
            severity,
            created_at: Timestamp::UNIX_EPOCH,
            event_count: events.len() as u64,
            suppressed_before: 0,
            events,
            status: AlertStatus::Sent,
            trigger: Trigger::Match,
            assessment: None,
            reasons: Vec::new(),
        }
    }

    fn rule(config: &Config) -> Rule {
        RuleSet::from_sources(
            config,
            &[(
                PathBuf::from("r.toml"),
                "[[rule]]\nid = \"r\"\nfeed = \"drug_testing\"\nnotify = [\"panel\", \"bolton\", \"nhs\"]\n".into(),
            )],
        )
        .unwrap()
        .rules
        .remove(0)
    }

    #[test]
    fn partners_see_only_their_districts_and_what_the_isa_allows() {
        let config = config();
        let rule = rule(&config);
        let a = alert(vec![event("Bolton"), event("Salford")], Severity::Warning);
        assert_eq!(a.district, None);
        let d = route(&a, &rule, &config, Audience::Notify);
        let ids: Vec<&str> = d.iter().map(|d| d.partner.id.as_str()).collect();
        assert_eq!(ids, ["panel", "bolton"], "nhs is below its severity floor");
        assert_eq!(d[0].events.len(), 2);
        assert!(d[0].withheld.is_empty());
        assert_eq!(d[0].group["location"], "Market St");
        assert_eq!(d[1].events.len(), 1);
        assert_eq!(d[1].count, 1);
        assert!(!d[1].events[0].fields.contains_key("notes"));
        assert_eq!(
            d[1].withheld,
            BTreeSet::from(["location".to_string(), "notes".to_string()]),
            "the location is withheld from the group; its empty field is not what says so"
        );
        assert_eq!(d[1].group["location"], WITHHELD);
    }

    fn with_fields(pairs: &[(&str, &str)], feed: &str) -> Event {
        let mut fields = crate::event::Fields::default();
        for (k, v) in pairs {
            fields.insert(*k, Value::Text((*v).into()));
        }
        Event {
            feed: feed.into(),
            record_id: Some("S1".into()),
            time: Timestamp::UNIX_EPOCH,
            fields,
        }
    }

    fn field_names(e: &Event) -> Vec<String> {
        e.fields.iter().map(|(k, _)| k.to_string()).collect()
    }

    #[test]
    fn sensitive_names_match_columns_whatever_their_spelling() {
        let config = config();
        let rule = rule(&config);
        let e = with_fields(
            &[
                ("district", "Bolton"),
                ("Notes", "a"),
                ("notes ", "b"),
                (" NOTES", "c"),
                ("no-tes", "d"),
                ("LOCA_TION", "e"),
                ("no\u{200b}tes", "f"),
                ("notes2", "kept"),
            ],
            "drug_testing",
        );
        let d = route(
            &alert(vec![e], Severity::Warning),
            &rule,
            &config,
            Audience::Notify,
        );
        let bolton = d.iter().find(|d| d.partner.id == "bolton").unwrap();
        assert_eq!(field_names(&bolton.events[0]), ["district", "notes2"]);
        assert_eq!(
            bolton.withheld,
            BTreeSet::from(["location".to_string(), "notes".to_string()]),
            "named as the config names them"
        );
        let panel = d.iter().find(|d| d.partner.id == "panel").unwrap();
        assert_eq!(panel.events[0].fields.len(), 8, "the ISA sees every column");
        assert!(panel.withheld.is_empty());
    }

    #[test]
    fn columns_a_feed_does_not_list_reach_nobody() {
        let config = Config::parse(
            Path::new("/x/c.toml"),
            "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"drug_testing\"\ndir = \"in\"\nfields = [\"district\", \"Sample_ID\"]\n[[partner]]\nid = \"panel\"\nemails = [\"p@example.org\"]\nisa = true\n",
        )
        .unwrap();
        let rule = RuleSet::from_sources(
            &config,
            &[(
                PathBuf::from("r.toml"),
                "[[rule]]\nid = \"r\"\nfeed = \"drug_testing\"\nnotify = [\"panel\"]\n".into(),
            )],
        )
        .unwrap()
        .rules
        .remove(0);
        let e = with_fields(
            &[("district", "Bolton"), ("sample id", "S1"), ("extra", "ZZ")],
            "drug_testing",
        );
        let mut a = alert(vec![e], Severity::Warning);
        a.group = BTreeMap::from([("extra".to_string(), "ZZ".to_string())]);
        let d = route(&a, &rule, &config, Audience::Notify);
        assert_eq!(field_names(&d[0].events[0]), ["district", "sample id"]);
        assert_eq!(d[0].group["extra"], WITHHELD);
        assert!(
            d[0].withheld.is_empty(),
            "not withheld for the ISA: never sent at all"
        );
    }

    /// Values that come from a sensitive field outside the records themselves: the
    /// district, a first-seen value, a deadline key (of either feed of the deadline).
    #[test]
    fn values_taken_from_sensitive_fields_are_withheld_too() {
        let mut config = config();
        config.feeds[0].district_field = "location".into();
        let set = RuleSet::from_sources(
            &config,
            &[(
                PathBuf::from("r.toml"),
                "[[rule]]\nid = \"new\"\nfeed = \"drug_testing\"\nkind = \"first_seen\"\nfield = \"substance\"\nnotify = [\"panel\", \"bolton\"]\n\n[[rule]]\nid = \"due\"\nfeed = \"drug_testing\"\nkind = \"deadline\"\nkey = \"ref\"\nuntil = { feed = \"drug_testing\" }\nwithin = \"1h\"\nnotify = [\"panel\", \"bolton\"]\n".into(),
            )],
        )
        .unwrap();
        let (mut first_seen, mut deadline) = (set.rules[0].clone(), set.rules[1].clone());
        // As if `check` had been bypassed: a sensitive field as the watched field and the key.
        first_seen.kind = crate::rules::RuleKind::FirstSeen {
            field: "NOTES".into(),
            known: Default::default(),
        };
        if let crate::rules::RuleKind::Deadline { key, .. } = &mut deadline.kind {
            *key = "notes".into();
        }
        let e = with_fields(&[("location", "Bolton"), ("notes", "ZZ")], "drug_testing");
        let mut a = alert(vec![e], Severity::Warning);
        a.district = Some("Bolton".into());
        a.trigger = Trigger::FirstSeen {
            field: "NOTES".into(),
            value: "ZZ".into(),
        };
        let d = route(&a, &first_seen, &config, Audience::Notify);
        let (panel, bolton) = (&d[0], &d[1]);
        assert_eq!(panel.trigger, a.trigger);
        assert_eq!(panel.district.as_deref(), Some("Bolton"));
        assert_eq!(
            bolton.trigger,
            Trigger::FirstSeen {
                field: "NOTES".into(),
                value: WITHHELD.into()
            }
        );
        assert_eq!(bolton.district.as_deref(), Some(WITHHELD));
        assert!(bolton.withheld.contains("location") && bolton.withheld.contains("notes"));

        a.trigger = Trigger::DeadlineOverdue {
            key: "ZZ".into(),
            due: Timestamp::UNIX_EPOCH,
        };
        let d = route(&a, &deadline, &config, Audience::Notify);
        assert_eq!(d[0].trigger.deadline().unwrap().0, "ZZ");
        assert_eq!(d[1].trigger.deadline().unwrap().0, WITHHELD);
    }

    #[test]
    fn each_record_is_redacted_by_its_own_feed() {
        let config = Config::parse(
            Path::new("/x/c.toml"),
            "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"a\"\ndir = \"a\"\n[[feed]]\nname = \"b\"\ndir = \"b\"\nsensitive = [\"victim\"]\n[[partner]]\nid = \"charity\"\nemails = [\"c@example.org\"]\n",
        )
        .unwrap();
        let rule = RuleSet::from_sources(
            &config,
            &[(
                PathBuf::from("r.toml"),
                "[[rule]]\nid = \"r\"\nfeed = \"a\"\nnotify = [\"charity\"]\n".into(),
            )],
        )
        .unwrap()
        .rules
        .remove(0);
        let opening = with_fields(&[("victim", "shown: not sensitive in a")], "a");
        let closing = with_fields(&[("Victim", "ZZ")], "b");
        let gone = with_fields(&[("anything", "ZZ")], "removed-from-config");
        let d = route(
            &alert(vec![opening, closing, gone], Severity::Warning),
            &rule,
            &config,
            Audience::Notify,
        );
        let events = &d[0].events;
        assert_eq!(field_names(&events[0]), ["victim"]);
        assert!(events[1].fields.is_empty(), "{:?}", events[1]);
        assert!(
            events[2].fields.is_empty(),
            "a feed no longer configured: nothing is known safe"
        );
        assert_eq!(
            d[0].withheld,
            BTreeSet::from(["anything".to_string(), "victim".to_string()])
        );
    }

    #[test]
    fn nobody_gets_an_empty_email() {
        let config = config();
        let rule = rule(&config);
        let a = alert(vec![event("Wigan")], Severity::Critical);
        let ids: Vec<String> = route(&a, &rule, &config, Audience::Notify)
            .iter()
            .map(|d| d.partner.id.clone())
            .collect();
        assert_eq!(ids, ["panel", "nhs"]);
        assert_eq!(a.district.as_deref(), Some("Wigan"));
    }
}
