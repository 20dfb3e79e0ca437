//! The rule engine: events in, alerts and state changes out.
//!
//! Pure: no I/O, no clock. The caller passes `now` and persists the state
//! changes it returns in the same transaction as the alerts (SPEC §7).
//!
//! - One file is one [`Batch`]: [`Engine::observe`] each event, then
//!   [`Engine::finish`] turns the file's matches into alerts (one per rule and
//!   group), applying cooldowns.
//! - [`Engine::tick`] handles what depends on the wall clock alone: deadlines
//!   that have passed and feeds that have gone quiet.
//!
//! Windows (`threshold`, `rate`) use event time; deadlines and silence compare
//! with `now`. State changes as events are observed; every touched key is
//! returned as a [`StateChange`] by `finish` or `tick`. If the caller cannot
//! commit them it must call [`Engine::restore`] with the stored state.

use super::record::Record;
use super::{Rule, RuleKind, RuleSet};
use crate::alerts::{Alert, AlertStatus, FoldedOf, Trigger};
use crate::event::{Event, Value};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How many matching events an alert carries in full; the rest are counted.
/// Bounds memory and email size when a whole file matches.
pub const MAX_EVENTS_PER_ALERT: usize = 50;

/// Identifies the state of one rule for one group (or deadline key, or value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRef {
    pub rule_id: String,
    pub group_key: String,
}

impl GroupRef {
    fn new(rule_id: &str, group_key: &str) -> GroupRef {
        GroupRef {
            rule_id: rule_id.to_string(),
            group_key: group_key.to_string(),
        }
    }
}

/// Cooldown state of a rule and group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cooldown {
    /// When the last alert was raised.
    pub last_alert_at: Timestamp,
    /// Matches counted since then without an email; reported in the next alert.
    pub suppressed: u64,
}

/// Matching events within a window of event time, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Window {
    /// (event time in ms, hash of the record id or 0): every event counted.
    entries: VecDeque<(i64, u64)>,
    /// The most recent events in full, for the email (at most MAX_EVENTS_PER_ALERT).
    events: VecDeque<Event>,
    /// The non-zero id hashes in `entries`, so that a record counted already is
    /// found without scanning a window of a million entries. Derived from
    /// `entries`: not stored, rebuilt on first use after loading.
    #[serde(skip)]
    ids: Option<rustc_hash::FxHashSet<u64>>,
}

impl PartialEq for Window {
    fn eq(&self, other: &Window) -> bool {
        self.entries == other.entries && self.events == other.events
    }
}

impl Window {
    fn ids(&mut self) -> &mut rustc_hash::FxHashSet<u64> {
        let entries = &self.entries;
        self.ids.get_or_insert_with(|| {
            entries
                .iter()
                .map(|&(_, id)| id)
                .filter(|&id| id != 0)
                .collect()
        })
    }

    /// Adds an event in time order; false if the same record is already counted.
    fn insert(&mut self, event: &Event) -> bool {
        let t = event.time.as_millisecond();
        let id = event.record_id.as_deref().map(hash_id).unwrap_or(0);
        if id != 0 && !self.ids().insert(id) {
            return false;
        }
        // Events mostly arrive in time order: appending is the common case.
        if self.entries.back().is_none_or(|&(last, _)| last <= t) {
            self.entries.push_back((t, id));
        } else {
            let at = self.entries.partition_point(|&(other, _)| other <= t);
            self.entries.insert(at, (t, id));
        }
        let at = self.events.partition_point(|e| e.time <= event.time);
        self.events.insert(at, event.clone());
        if self.events.len() > MAX_EVENTS_PER_ALERT {
            self.events.pop_front();
        }
        true
    }

    /// Drops entries older than `cutoff_ms`; true if any went.
    fn prune_before(&mut self, cutoff_ms: i64) -> bool {
        let before = self.entries.len();
        while let Some(&(t, id)) = self.entries.front()
            && t < cutoff_ms
        {
            self.entries.pop_front();
            if id != 0
                && let Some(ids) = &mut self.ids
            {
                ids.remove(&id);
            }
        }
        while self
            .events
            .front()
            .is_some_and(|e| e.time.as_millisecond() < cutoff_ms)
        {
            self.events.pop_front();
        }
        self.entries.len() != before
    }

    fn latest_ms(&self) -> Option<i64> {
        self.entries.back().map(|&(t, _)| t)
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Entries with time in (from, to].
    fn count_between(&self, from_ms: i64, to_ms: i64) -> u64 {
        let lo = self.entries.partition_point(|&(t, _)| t <= from_ms);
        let hi = self.entries.partition_point(|&(t, _)| t <= to_ms);
        (hi - lo) as u64
    }

    /// Entries with time in [from, to]: both ends count, as a window of
    /// `within` includes an event exactly `within` before the newest.
    fn count_from_to(&self, from_ms: i64, to_ms: i64) -> u64 {
        self.count_between(from_ms.saturating_sub(1), to_ms)
    }
}

fn hash_id(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b).max(1)
}

/// An open deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenDeadline {
    pub key: String,
    pub opened_at: Timestamp,
    pub due: Timestamp,
    pub event: Event,
    /// Set once the escalation has been raised; kept so a late close can be reported.
    pub escalated: bool,
}

/// A value a first_seen rule has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenValue {
    pub as_written: String,
    pub first_seen: Timestamp,
}

/// A silence rule's memory: which quiet period it has already alerted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilenceState {
    pub alerted_for: Timestamp,
}

/// The kinds of state rows; the string is stored in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    Cooldown,
    Window,
    Deadline,
    EarlyClose,
    Seen,
    Activity,
    Silence,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Cooldown => "cooldown",
            StateKind::Window => "window",
            StateKind::Deadline => "deadline",
            StateKind::EarlyClose => "early_close",
            StateKind::Seen => "seen",
            StateKind::Activity => "activity",
            StateKind::Silence => "silence",
        }
    }
    pub fn parse(s: &str) -> Option<StateKind> {
        Some(match s {
            "cooldown" => StateKind::Cooldown,
            "window" => StateKind::Window,
            "deadline" => StateKind::Deadline,
            "early_close" => StateKind::EarlyClose,
            "seen" => StateKind::Seen,
            "activity" => StateKind::Activity,
            "silence" => StateKind::Silence,
            _ => return None,
        })
    }
}

/// Feed activity is not a rule's state; it is stored under this pseudo rule id.
const ACTIVITY: &str = "_feed";

/// All rule state, keyed by rule and group.
#[derive(Debug, Clone, Default)]
pub struct EngineState {
    pub cooldowns: HashMap<GroupRef, Cooldown>,
    pub windows: HashMap<GroupRef, Window>,
    pub deadlines: HashMap<GroupRef, OpenDeadline>,
    /// Closing records that arrived before their opening record: key → when.
    pub early_closes: HashMap<GroupRef, Timestamp>,
    pub seen: HashMap<GroupRef, SeenValue>,
    /// Feed name → when it last delivered a file (wall clock).
    pub activity: HashMap<String, Timestamp>,
    pub silences: HashMap<String, SilenceState>,
}

impl EngineState {
    /// Loads one stored row (see [`StateChange`]).
    pub fn load_row(
        &mut self,
        kind: &str,
        rule_id: String,
        group_key: String,
        data: &str,
    ) -> Result<(), String> {
        let kind = StateKind::parse(kind).ok_or_else(|| format!("unknown state kind `{kind}`"))?;
        let key = GroupRef { rule_id, group_key };
        let err = |e: serde_json::Error| {
            format!("{} {}/{}: {e}", kind.as_str(), key.rule_id, key.group_key)
        };
        match kind {
            StateKind::Cooldown => {
                self.cooldowns
                    .insert(key.clone(), serde_json::from_str(data).map_err(err)?);
            }
            StateKind::Window => {
                self.windows
                    .insert(key.clone(), serde_json::from_str(data).map_err(err)?);
            }
            StateKind::Deadline => {
                self.deadlines
                    .insert(key.clone(), serde_json::from_str(data).map_err(err)?);
            }
            StateKind::EarlyClose => {
                self.early_closes
                    .insert(key.clone(), serde_json::from_str(data).map_err(err)?);
            }
            StateKind::Seen => {
                self.seen
                    .insert(key.clone(), serde_json::from_str(data).map_err(err)?);
            }
            StateKind::Activity => {
                self.activity.insert(
                    key.group_key.clone(),
                    serde_json::from_str(data).map_err(err)?,
                );
            }
            StateKind::Silence => {
                self.silences.insert(
                    key.rule_id.clone(),
                    serde_json::from_str(data).map_err(err)?,
                );
            }
        }
        Ok(())
    }

    /// The serialised value of one key, or None when it no longer exists.
    fn serialise(&self, kind: StateKind, key: &GroupRef) -> Option<String> {
        let json = match kind {
            StateKind::Cooldown => self.cooldowns.get(key).map(serde_json::to_string),
            StateKind::Window => self.windows.get(key).map(serde_json::to_string),
            StateKind::Deadline => self.deadlines.get(key).map(serde_json::to_string),
            StateKind::EarlyClose => self.early_closes.get(key).map(serde_json::to_string),
            StateKind::Seen => self.seen.get(key).map(serde_json::to_string),
            StateKind::Activity => self.activity.get(&key.group_key).map(serde_json::to_string),
            StateKind::Silence => self.silences.get(&key.rule_id).map(serde_json::to_string),
        };
        // Serialising these plain structs cannot fail.
        json.and_then(Result::ok)
    }

    /// Open deadlines, soonest due first (for `status` and `replay`).
    pub fn open_deadlines(&self) -> Vec<(&GroupRef, &OpenDeadline)> {
        let mut v: Vec<_> = self
            .deadlines
            .iter()
            .filter(|(_, d)| !d.escalated)
            .collect();
        v.sort_by_key(|(k, d)| (d.due, (*k).clone()));
        v
    }
}

/// A change to persist: the new serialised value of one key, or its removal.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    pub kind: StateKind,
    pub key: GroupRef,
    /// JSON, or None to delete.
    pub data: Option<String>,
}

/// What a file or a tick produced.
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
    /// Shared: a row many rules match is copied once, not once per rule.
    events: Vec<Arc<Event>>,
    count: u64,
    trigger: Option<Trigger>,
}

impl Pending {
    /// Counts a match of `event`, keeping it if there is room; `shared` is
    /// the event's one copy for this row, made on its first use.
    fn push<R: Record + ?Sized>(&mut self, event: &R, shared: &mut Option<Arc<Event>>) {
        self.count += 1;
        if self.events.len() < MAX_EVENTS_PER_ALERT {
            let copy = shared.get_or_insert_with(|| Arc::new(event.to_event()));
            self.events.push(Arc::clone(copy));
        }
    }
}

/// The matches collected from one file, not yet turned into alerts.
#[derive(Debug, Default)]
pub struct Batch {
    /// By rule index, then group key; BTreeMaps so alert order is stable
    /// (and a group's key is looked up by `&str`: no key is made per match).
    pending: BTreeMap<usize, BTreeMap<String, Pending>>,
    /// The current event's group key, reused between matches.
    key: String,
    /// The current event's one shared copy, once a rule keeps it.
    shared: Option<Arc<Event>>,
    /// Threshold and rate groups touched by this file.
    windows_touched: BTreeSet<(usize, String)>,
    scratch: crate::rules::condition::EvalScratch,
    /// The rule index's working memory and its answer for the current event.
    index_scratch: crate::rules::index::IndexScratch,
    candidates: Vec<usize>,
    events_seen: u64,
    /// Normalised values each first_seen rule (by index) met for the first time in this file.
    first_seen_in_file: HashMap<usize, HashSet<String>>,
}

impl Batch {
    /// The current row as an event, made once per row however many rules
    /// keep it, and only when one does.
    fn event_of<R: Record + ?Sized>(&mut self, record: &R) -> Arc<Event> {
        self.shared
            .get_or_insert_with(|| Arc::new(record.to_event()))
            .clone()
    }

    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }
}

#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    /// Deadline rule indices by the feed of their closing records.
    /// Shared slices, so that observing an event can hold them while it changes state.
    /// (Which rules an event is tested against is the rule set's `index`.)
    /// FxHash: looked up once per row by feed names from the config, not from files.
    closers_by_feed: rustc_hash::FxHashMap<String, Arc<[usize]>>,
    state: EngineState,
    /// Keys changed since the last `finish` or `tick`.
    dirty: BTreeSet<(StateKind, GroupRef)>,
    /// `next_wakeup`'s answer until deadlines, feed activity or silences change:
    /// replay asks before every event, and working it out scans every rule.
    wakeup: std::cell::Cell<Option<Option<Timestamp>>>,
    /// A reused key for looking up first-seen values (see `observe_match`).
    seen_probe: GroupRef,
    /// The latest `now` the caller has given (`finish`, `tick`,
    /// `advance_clock`): no later than the real wall clock, so windows
    /// trimmed against it while a file is observed never lose a real event.
    /// `None` until then: observing trims nothing.
    clock: Option<Timestamp>,
    /// When some window or cooldown may next have outlived its rule's need.
    sweep_at: Option<Timestamp>,
    /// When quiet state was last swept (sweeps are at least `SWEEP_GAP` apart).
    last_sweep: Option<Timestamp>,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>, state: EngineState) -> Engine {
        debug_assert_eq!(
            rules.index().rule_count(),
            rules.rules.len(),
            "the rule index was built for another rule list"
        );
        let mut closers_by_feed: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            if let RuleKind::Deadline { until_feed, .. } = &rule.kind {
                closers_by_feed
                    .entry(until_feed.clone())
                    .or_default()
                    .push(i);
            }
        }
        let closers_by_feed = closers_by_feed
            .into_iter()
            .map(|(feed, indices)| (feed, Arc::from(indices)))
            .collect();
        Engine {
            rules,
            closers_by_feed,
            state,
            dirty: BTreeSet::new(),
            wakeup: std::cell::Cell::new(None),
            seen_probe: GroupRef::new("", ""),
            clock: None,
            sweep_at: None,
            last_sweep: None,
        }
        .with_sweep_planned()
    }

    /// Loaded state may hold windows and cooldowns of groups gone quiet while
    /// the daemon was down: the first `finish` or `tick` sweeps them.
    fn with_sweep_planned(mut self) -> Engine {
        let has_state = !self.state.windows.is_empty() || !self.state.cooldowns.is_empty();
        self.sweep_at = has_state.then_some(Timestamp::MIN);
        self.last_sweep = None;
        self.wakeup.set(None);
        self
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
        self.dirty.clear();
        let has_state = !self.state.windows.is_empty() || !self.state.cooldowns.is_empty();
        self.sweep_at = has_state.then_some(Timestamp::MIN);
        self.last_sweep = None;
        self.wakeup.set(None);
    }

    /// Swaps in a new rule set, keeping the state of rules that still exist
    /// (a threshold window does not restart because another rule changed).
    pub fn replace_rules(&mut self, rules: Arc<RuleSet>) {
        let state = std::mem::take(&mut self.state);
        let mut next = Engine::new(rules, state);
        next.clock = self.clock;
        let keep = |id: &str| next.rules.get(id).is_some();
        let s = &mut next.state;
        s.cooldowns.retain(|k, _| keep(&k.rule_id));
        s.windows.retain(|k, _| keep(&k.rule_id));
        s.deadlines.retain(|k, _| keep(&k.rule_id));
        s.early_closes.retain(|k, _| keep(&k.rule_id));
        s.seen.retain(|k, _| keep(&k.rule_id));
        s.silences.retain(|k, _| keep(k));
        *self = next;
    }

    fn touch(&mut self, kind: StateKind, key: &GroupRef) {
        if matches!(
            kind,
            StateKind::Deadline | StateKind::Activity | StateKind::Silence
        ) {
            self.wakeup.set(None);
        }
        self.dirty.insert((kind, key.clone()));
    }

    /// Records that `feed` delivered a file at `now` (for silence rules).
    pub fn note_activity(&mut self, feed: &str, now: Timestamp) {
        self.state.activity.insert(feed.to_string(), now);
        self.touch(StateKind::Activity, &GroupRef::new(ACTIVITY, feed));
    }

    /// Tests one event against the rules of its feed.
    pub fn observe<R: Record + ?Sized>(&mut self, batch: &mut Batch, record: &R) {
        batch.events_seen += 1;
        batch.shared = None;
        record.bind(&mut batch.scratch, &self.rules.field_slots);
        let rules = self.rules.clone();
        if let Some(index) = rules.index().feed(record.feed()) {
            // Only the rules the index cannot rule out, in rule order; the
            // full condition still decides (rules::index: never fewer matches).
            let mut candidates = std::mem::take(&mut batch.candidates);
            index.candidates(
                record,
                &batch.scratch,
                &mut batch.index_scratch,
                &mut candidates,
            );
            for &i in &candidates {
                let rule = &rules.rules[i];
                if !rule.when.matches(record, &mut batch.scratch) {
                    continue;
                }
                match rule.kind {
                    // The common cases, without an event unless one is kept.
                    RuleKind::Match => {
                        observe_plain_match(batch, i, rule, record);
                        continue;
                    }
                    RuleKind::FirstSeen { .. } => {
                        self.observe_first_seen(batch, i, rule, record);
                        continue;
                    }
                    _ => {}
                }
                let event = batch.event_of(record);
                self.observe_match(batch, i, rule, &event);
            }
            batch.candidates = candidates;
        }
        if let Some(indices) = self.closers_by_feed.get(record.feed()).cloned() {
            for &i in indices.iter() {
                let rule = &rules.rules[i];
                if let RuleKind::Deadline {
                    key, until_when, ..
                } = &rule.kind
                    && until_when.matches(record, &mut batch.scratch)
                {
                    let event = batch.event_of(record);
                    self.close_deadline(batch, i, rule, key, &event);
                }
            }
        }
    }

    /// A match of a first-seen rule: each new value raises, an event is made
    /// only then.
    fn observe_first_seen<R: Record + ?Sized>(
        &mut self,
        batch: &mut Batch,
        index: usize,
        rule: &Rule,
        event: &R,
    ) {
        let RuleKind::FirstSeen { field, known } = &rule.kind else {
            return;
        };
        let Some(value) = event.get(field) else {
            return;
        };
        for element in value.elements() {
            // Nearly every value has been seen before: find that out
            // without allocating, through a reused key.
            let probe = &mut self.seen_probe;
            probe.rule_id.clear();
            probe.rule_id.push_str(&rule.id);
            element.normalise_into(&mut probe.group_key);
            let norm = probe.group_key.as_str();
            if norm.is_empty() || known.contains(norm) {
                continue;
            }
            let new_in_this_file = batch
                .first_seen_in_file
                .get(&index)
                .is_some_and(|values| values.contains(norm));
            if self.state.seen.contains_key(probe) && !new_in_this_file {
                continue;
            }
            let gref = probe.clone();
            let norm = gref.group_key.clone();
            let written = element.to_string();
            if !new_in_this_file {
                self.state.seen.insert(
                    gref.clone(),
                    SeenValue {
                        as_written: written.trim().to_string(),
                        first_seen: event.time(),
                    },
                );
                self.touch(StateKind::Seen, &gref);
                batch
                    .first_seen_in_file
                    .entry(index)
                    .or_default()
                    .insert(norm.clone());
            }
            batch
                .pending
                .entry(index)
                .or_default()
                .entry(norm)
                .or_insert_with(|| Pending {
                    group: BTreeMap::from([(field.clone(), written.trim().to_string())]),
                    events: Vec::new(),
                    count: 0,
                    trigger: Some(Trigger::FirstSeen {
                        field: field.clone(),
                        value: written.trim().to_string(),
                    }),
                })
                .push(event, &mut batch.shared);
        }
    }

    /// A matched row, made into an event (`observe` takes plain matches and
    /// first-seen rules without one where it can).
    fn observe_match(&mut self, batch: &mut Batch, index: usize, rule: &Rule, event: &Event) {
        match &rule.kind {
            RuleKind::Match => observe_plain_match(batch, index, rule, event),
            RuleKind::Threshold { within, .. } | RuleKind::Rate { within, .. } => {
                let span = match &rule.kind {
                    RuleKind::Rate { baseline, .. } => *within + *baseline,
                    _ => *within,
                };
                let key = group_key(rule, event);
                let gref = GroupRef::new(&rule.id, &key);
                let clock = self.clock;
                let window = self.state.windows.entry(gref.clone()).or_default();
                if window.insert(event) {
                    // Keeps a long file's window bounded. Trimmed against the
                    // newest event only up to the known clock: a record timed
                    // in the future must not push real ones out (`finish`
                    // trims against the wall clock in any case).
                    if let (Some(latest), Some(clock)) = (window.latest_ms(), clock) {
                        let reference = latest.min(clock.as_millisecond());
                        window.prune_before(reference - span.as_millis() as i64);
                    }
                    self.touch(StateKind::Window, &gref);
                    batch
                        .pending
                        .entry(index)
                        .or_default()
                        .entry(key.clone())
                        .or_insert_with(|| pending_for(rule, event, None))
                        .push(event, &mut batch.shared);
                    batch.windows_touched.insert((index, key));
                }
            }
            RuleKind::FirstSeen { .. } => self.observe_first_seen(batch, index, rule, event),
            RuleKind::Deadline {
                key,
                within,
                notify_on_open,
                ..
            } => {
                let key_value = event.text(key).trim().to_string();
                if key_value.is_empty() {
                    return;
                }
                let gref = GroupRef::new(&rule.id, &key_value.to_lowercase());
                if self.state.deadlines.contains_key(&gref) {
                    return; // already open: an update of the same incident
                }
                let due = add(event.time, *within);
                if self.state.early_closes.remove(&gref).is_some() {
                    // Closed before it was opened (files out of order): nothing to escalate.
                    self.touch(StateKind::EarlyClose, &gref);
                    if !notify_on_open.is_empty() {
                        let mut p = pending_for(
                            rule,
                            event,
                            Some(Trigger::DeadlineOpened {
                                key: key_value.clone(),
                                due,
                                closed: true,
                            }),
                        );
                        p.push(event, &mut batch.shared);
                        batch
                            .pending
                            .entry(index)
                            .or_default()
                            .insert(format!("\u{1}open\u{1f}{}", gref.group_key), p);
                    }
                    return;
                }
                self.state.deadlines.insert(
                    gref.clone(),
                    OpenDeadline {
                        key: key_value.clone(),
                        opened_at: event.time,
                        due,
                        event: event.clone(),
                        escalated: false,
                    },
                );
                self.touch(StateKind::Deadline, &gref);
                if !notify_on_open.is_empty() {
                    let mut p = pending_for(
                        rule,
                        event,
                        Some(Trigger::DeadlineOpened {
                            key: key_value,
                            due,
                            closed: false,
                        }),
                    );
                    p.push(event, &mut batch.shared);
                    batch
                        .pending
                        .entry(index)
                        .or_default()
                        .insert(format!("\u{1}open\u{1f}{}", gref.group_key), p);
                }
            }
            RuleKind::Silence { .. } => {}
        }
    }

    fn close_deadline(
        &mut self,
        batch: &mut Batch,
        index: usize,
        rule: &Rule,
        key: &str,
        event: &Event,
    ) {
        let key_value = event.text(key).trim().to_string();
        if key_value.is_empty() {
            return;
        }
        let gref = GroupRef::new(&rule.id, &key_value.to_lowercase());
        let Some(open) = self.state.deadlines.remove(&gref) else {
            // Not open (yet): remember the close, in case the opening record comes late.
            self.state.early_closes.insert(gref.clone(), event.time);
            self.touch(StateKind::EarlyClose, &gref);
            return;
        };
        self.touch(StateKind::Deadline, &gref);
        if let RuleKind::Deadline {
            notify_on_close, ..
        } = &rule.kind
            && !notify_on_close.is_empty()
        {
            let late = open.escalated || event.time > open.due;
            let mut p = pending_for(
                rule,
                &open.event,
                Some(Trigger::DeadlineClosed {
                    key: open.key.clone(),
                    due: open.due,
                    late,
                }),
            );
            p.push(&open.event, &mut None);
            p.push(event, &mut batch.shared);
            batch
                .pending
                .entry(index)
                .or_default()
                .insert(format!("\u{2}close\u{1f}{}", gref.group_key), p);
        }
    }

    /// Turns a file's matches into alerts at `now` (the wall clock).
    /// `discriminator` (the file's content hash) keeps alert ids unique;
    /// `file` (its name) is named by a summary of folded alerts.
    ///
    /// Each rule raises at most its `max_alerts` alerts for the file,
    /// counting the summary: see [`Engine::emit`].
    pub fn finish(
        &mut self,
        batch: Batch,
        now: Timestamp,
        discriminator: &str,
        file: &str,
    ) -> Outcome {
        self.advance_clock(now);
        let mut outcome = Outcome::default();
        let rules = self.rules.clone();
        let source = Source {
            now,
            discriminator,
            file,
        };
        // Pending matches are ordered by rule index, so one rule's alerts are
        // decided together and then capped together.
        for (index, groups) in batch.pending {
            let rule = &rules.rules[index];
            let mut raised: Vec<Raised> = Vec::new();
            for (key, pending) in groups {
                let touched = batch.windows_touched.contains(&(index, key.clone()));
                if let Some(r) = self.decide(&mut outcome, rule, key, pending, now, touched) {
                    raised.push(r);
                }
            }
            if !raised.is_empty() {
                emit(rule, raised, &source, &mut outcome);
            }
        }
        self.sweep_if_due(now);
        outcome.changes = self.drain_changes();
        outcome
    }

    /// Whether one rule and group's matches in this file make an alert
    /// (cooldowns applied), and with what.
    fn decide(
        &mut self,
        outcome: &mut Outcome,
        rule: &Rule,
        key: String,
        pending: Pending,
        now: Timestamp,
        window_touched: bool,
    ) -> Option<Raised> {
        let now_ms = now.as_millisecond();
        match &rule.kind {
            RuleKind::Match | RuleKind::FirstSeen { .. } => {
                self.through_cooldown(outcome, rule, key, pending, now, rule.cooldown)
            }
            RuleKind::Threshold { count, within } => {
                if !window_touched {
                    return None;
                }
                let gref = GroupRef::new(&rule.id, &key);
                let w_ms = within.as_millis() as i64;
                let (counted, from, to) = {
                    let window = self.state.windows.get_mut(&gref)?;
                    // The wall clock trims too: an event timed ahead of now
                    // must not keep old events in, nor push real ones out.
                    let trimmed = window.prune_before(now_ms - w_ms);
                    let Some(latest) = window.latest_ms() else {
                        self.drop_window(&gref);
                        return None;
                    };
                    if trimmed {
                        self.touch(StateKind::Window, &gref);
                    }
                    let window = &self.state.windows[&gref];
                    // The window ending now and, if a record is timed ahead of
                    // now (within the feed's max_future), the one ending at it.
                    let mut best = (window.count_from_to(now_ms - w_ms, now_ms), now_ms);
                    if latest > now_ms {
                        let ahead = window.count_from_to(latest - w_ms, latest);
                        if ahead > best.0 {
                            best = (ahead, latest);
                        }
                    }
                    (best.0, best.1 - w_ms, best.1)
                };
                self.note_expiry(rule, &gref, now);
                if counted < *count {
                    return None;
                }
                let window = &self.state.windows[&gref];
                let alert_pending = Pending {
                    group: pending.group,
                    events: window
                        .events
                        .iter()
                        .filter(|e| (from..=to).contains(&e.time.as_millisecond()))
                        .map(|e| Arc::new(e.clone()))
                        .collect(),
                    count: counted,
                    trigger: Some(Trigger::Threshold {
                        count: *count,
                        within_secs: within.as_secs(),
                    }),
                };
                let raised =
                    self.through_cooldown(outcome, rule, key, alert_pending, now, rule.cooldown);
                if raised.is_some() {
                    // The events that made this alert do not count towards the next.
                    self.drop_window(&gref);
                }
                raised
            }
            RuleKind::Rate {
                within,
                factor,
                baseline,
                min_count,
            } => {
                if !window_touched {
                    return None;
                }
                let gref = GroupRef::new(&rule.id, &key);
                let w_ms = within.as_millis() as i64;
                let b_ms = baseline.as_millis() as i64;
                let window = self.state.windows.get_mut(&gref)?;
                let trimmed = window.prune_before(now_ms - w_ms - b_ms);
                let Some(latest) = window.latest_ms() else {
                    self.drop_window(&gref);
                    return None;
                };
                if trimmed {
                    self.touch(StateKind::Window, &gref);
                }
                self.note_expiry(rule, &gref, now);
                let window = &self.state.windows[&gref];
                // Measured at the newest record not ahead of now, and at a
                // record timed ahead of now (within max_future) if there is one.
                let anchors = [
                    Some(latest.min(now_ms)),
                    (latest > now_ms).then_some(latest),
                ];
                let rise = anchors.into_iter().flatten().find_map(|at| {
                    let current = window.count_between(at - w_ms, at);
                    let base = window.count_between(at - w_ms - b_ms, at - w_ms);
                    let average = base as f64 * within.as_secs_f64() / baseline.as_secs_f64();
                    (current >= *min_count && (current as f64) >= factor * average)
                        .then_some((at, current, average))
                });
                let (at, current, average) = rise?;
                let events: Vec<Arc<Event>> = window
                    .events
                    .iter()
                    .filter(|e| ((at - w_ms + 1)..=at).contains(&e.time.as_millisecond()))
                    .map(|e| Arc::new(e.clone()))
                    .collect();
                let alert_pending = Pending {
                    group: pending.group,
                    events,
                    count: current,
                    trigger: Some(Trigger::Rate {
                        current,
                        baseline_average: (average * 10.0).round() / 10.0,
                        within_secs: within.as_secs(),
                    }),
                };
                // A rise stays a rise for a while: without a cooldown, one alert per window.
                let cooldown = rule.cooldown.or(Some(*within));
                self.through_cooldown(outcome, rule, key, alert_pending, now, cooldown)
            }
            // Open and close notices: not subject to cooldown.
            RuleKind::Deadline { .. } => Some(Raised {
                key,
                pending,
                suppressed_before: 0,
            }),
            RuleKind::Silence { .. } => None,
        }
    }

    /// The alert, unless the rule and group are in cooldown (then its matches are counted).
    fn through_cooldown(
        &mut self,
        outcome: &mut Outcome,
        rule: &Rule,
        key: String,
        pending: Pending,
        now: Timestamp,
        cooldown: Option<Duration>,
    ) -> Option<Raised> {
        let gref = GroupRef::new(&rule.id, &key);
        let previous = self.state.cooldowns.get(&gref).cloned();
        if let (Some(cd), Some(prev)) = (cooldown, &previous)
            && now < add(prev.last_alert_at, cd)
        {
            let mut next = prev.clone();
            next.suppressed += pending.count;
            *outcome.suppressed.entry(rule.id.clone()).or_default() += pending.count;
            self.state.cooldowns.insert(gref.clone(), next);
            self.touch(StateKind::Cooldown, &gref);
            self.note_expiry(rule, &gref, now);
            return None;
        }
        let suppressed_before = previous.map(|p| p.suppressed).unwrap_or(0);
        if cooldown.is_some() {
            self.state.cooldowns.insert(
                gref.clone(),
                Cooldown {
                    last_alert_at: now,
                    suppressed: 0,
                },
            );
            self.touch(StateKind::Cooldown, &gref);
            self.note_expiry(rule, &gref, now);
        } else if self.state.cooldowns.remove(&gref).is_some() {
            // Left from before the rule lost its cooldown: reported now, so forgotten.
            self.touch(StateKind::Cooldown, &gref);
        }
        Some(Raised {
            key,
            pending,
            suppressed_before,
        })
    }

    fn drop_window(&mut self, gref: &GroupRef) {
        if self.state.windows.remove(gref).is_some() {
            self.touch(StateKind::Window, gref);
        }
    }

    /// Brings the next sweep forward to when `gref`'s window or cooldown can
    /// go, but never to sooner than [`SWEEP_GAP`] after the last sweep.
    fn note_expiry(&mut self, rule: &Rule, gref: &GroupRef, now: Timestamp) {
        let expiry = [
            self.state.windows.get(gref).map(|w| window_expiry(rule, w)),
            self.state
                .cooldowns
                .get(gref)
                .map(|c| cooldown_expiry(rule, c)),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(expiry) = expiry else { return };
        let earliest = self.last_sweep.map_or(now, |last| add(last, SWEEP_GAP));
        let at = expiry.max(earliest);
        if self.sweep_at.is_none_or(|known| at < known) {
            self.sweep_at = Some(at);
            self.wakeup.set(None);
        }
    }

    /// The caller's clock has reached `now` (replay's simulated clock follows
    /// the events): windows may be trimmed against it while a file is observed.
    pub fn advance_clock(&mut self, now: Timestamp) {
        if self.clock.is_none_or(|known| now > known) {
            self.clock = Some(now);
        }
    }

    /// Deletes the windows and cooldowns that have had no event for longer
    /// than their rule needs, if such a time has come (SPEC §5.2: bounded state).
    fn sweep_if_due(&mut self, now: Timestamp) {
        if self.sweep_at.is_none_or(|at| at > now) {
            return;
        }
        let rules = self.rules.clone();
        let now_ms = now.as_millisecond();
        let mut touched = Vec::new();
        let mut earliest: Option<Timestamp> = None;
        self.state.windows.retain(|gref, window| {
            let span = rules.get(&gref.rule_id).and_then(window_span);
            let Some(span) = span else {
                touched.push((StateKind::Window, gref.clone()));
                return false;
            };
            if window.prune_before(now_ms - span.as_millis() as i64) {
                touched.push((StateKind::Window, gref.clone()));
            }
            if window.latest_ms().is_none() {
                return false;
            }
            if let Some(rule) = rules.get(&gref.rule_id) {
                let expiry = window_expiry(rule, window);
                earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
            }
            true
        });
        self.state.cooldowns.retain(|gref, cooldown| {
            let expiry = match rules.get(&gref.rule_id) {
                Some(rule) => cooldown_expiry(rule, cooldown),
                None => Timestamp::MIN,
            };
            if expiry <= now {
                touched.push((StateKind::Cooldown, gref.clone()));
                return false;
            }
            earliest = Some(earliest.map_or(expiry, |e| e.min(expiry)));
            true
        });
        for (kind, gref) in touched {
            self.dirty.insert((kind, gref));
        }
        self.last_sweep = Some(now);
        self.sweep_at = earliest.map(|e| e.max(add(now, SWEEP_GAP)));
        self.wakeup.set(None);
    }

    /// Raises what the wall clock alone decides: overdue deadlines and silent feeds.
    pub fn tick(&mut self, now: Timestamp) -> Outcome {
        self.advance_clock(now);
        let mut outcome = Outcome::default();
        let rules = self.rules.clone();
        // Deadlines, soonest first so alert order is stable.
        let mut overdue: Vec<GroupRef> = self
            .state
            .deadlines
            .iter()
            .filter(|(_, d)| !d.escalated && d.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        overdue.sort();
        for gref in overdue {
            let Some(rule) = rules.get(&gref.rule_id) else {
                continue;
            };
            let Some(deadline) = self.state.deadlines.get_mut(&gref) else {
                continue;
            };
            deadline.escalated = true;
            let deadline = deadline.clone();
            self.touch(StateKind::Deadline, &gref);
            let mut p = pending_for(
                rule,
                &deadline.event,
                Some(Trigger::DeadlineOverdue {
                    key: deadline.key.clone(),
                    due: deadline.due,
                }),
            );
            p.push(&deadline.event, &mut None);
            outcome.alerts.push(make_alert(
                rule,
                &format!("overdue\u{1f}{}", gref.group_key),
                p,
                now,
                "tick",
                0,
            ));
        }
        // Forget escalated deadlines and early closes once nothing more can happen to them.
        let mut expired = Vec::new();
        for (gref, d) in &self.state.deadlines {
            let within = rules
                .get(&gref.rule_id)
                .and_then(deadline_within)
                .unwrap_or(Duration::from_secs(86_400));
            if d.escalated && now > add(d.due, within * 7) {
                expired.push((StateKind::Deadline, gref.clone()));
            }
        }
        for (gref, at) in &self.state.early_closes {
            let within = rules
                .get(&gref.rule_id)
                .and_then(deadline_within)
                .unwrap_or(Duration::from_secs(86_400));
            if now > add(*at, within * 2) {
                expired.push((StateKind::EarlyClose, gref.clone()));
            }
        }
        for (kind, gref) in expired {
            if kind == StateKind::Deadline {
                self.state.deadlines.remove(&gref);
            } else {
                self.state.early_closes.remove(&gref);
            }
            self.touch(kind, &gref);
        }
        // Silence.
        for rule in &rules.rules {
            let RuleKind::Silence { silent_for } = &rule.kind else {
                continue;
            };
            let last = match self.state.activity.get(&rule.feed) {
                Some(t) => *t,
                None => {
                    // Never delivered: count the quiet from the first time we looked.
                    self.note_activity(&rule.feed, now);
                    continue;
                }
            };
            if now < add(last, *silent_for) {
                continue;
            }
            if self
                .state
                .silences
                .get(&rule.id)
                .is_some_and(|s| s.alerted_for == last)
            {
                continue;
            }
            self.state
                .silences
                .insert(rule.id.clone(), SilenceState { alerted_for: last });
            self.touch(StateKind::Silence, &GroupRef::new(&rule.id, ""));
            let quiet = now.duration_since(last);
            let p = Pending {
                group: BTreeMap::from([("feed".to_string(), rule.feed.clone())]),
                events: Vec::new(),
                count: 0,
                trigger: Some(Trigger::Silence {
                    feed: rule.feed.clone(),
                    last,
                    silent_secs: quiet.as_secs().max(0) as u64,
                }),
            };
            outcome
                .alerts
                .push(make_alert(rule, &rule.feed, p, now, &last.to_string(), 0));
        }
        self.sweep_if_due(now);
        outcome.changes = self.drain_changes();
        outcome
    }

    /// Whether any rule depends on the clock (deadlines, silence).
    pub fn has_clock_rules(&self) -> bool {
        self.rules
            .rules
            .iter()
            .any(|r| matches!(r.kind, RuleKind::Deadline { .. } | RuleKind::Silence { .. }))
    }

    /// The earliest time `tick` could raise something or delete quiet state,
    /// if any (so the daemon can sleep until then).
    pub fn next_wakeup(&self) -> Option<Timestamp> {
        if let Some(known) = self.wakeup.get() {
            return known;
        }
        let wakeup = self.work_out_next_wakeup();
        self.wakeup.set(Some(wakeup));
        wakeup
    }

    fn work_out_next_wakeup(&self) -> Option<Timestamp> {
        let deadline = self
            .state
            .deadlines
            .values()
            .filter(|d| !d.escalated)
            .map(|d| d.due)
            .min();
        let silence = self
            .rules
            .rules
            .iter()
            .filter_map(|r| match &r.kind {
                RuleKind::Silence { silent_for } => {
                    let last = self.state.activity.get(&r.feed)?;
                    // Already told about this quiet spell: nothing until the feed delivers again.
                    let told = self
                        .state
                        .silences
                        .get(&r.id)
                        .is_some_and(|s| s.alerted_for == *last);
                    (!told).then(|| add(*last, *silent_for))
                }
                _ => None,
            })
            .min();
        deadline
            .into_iter()
            .chain(silence)
            .chain(self.sweep_at)
            .min()
    }

    /// The state changes since the last `finish` or `tick` (e.g. after `note_activity` alone).
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        self.drain_changes()
    }

    fn drain_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(kind, key)| StateChange {
                data: self.state.serialise(kind, &key),
                kind,
                key,
            })
            .collect()
    }
}

/// How often at most quiet state is swept: deleting it up to this late is
/// harmless, and sweeping every state row is not free.
const SWEEP_GAP: Duration = Duration::from_secs(3600);

/// Records a summary of folded alerts carries in full, besides one per district.
const SUMMARY_SAMPLE: usize = 10;

/// The file an outcome comes from, for alert ids and summaries.
struct Source<'a> {
    now: Timestamp,
    discriminator: &'a str,
    file: &'a str,
}

/// An alert decided on but not yet made: the cap may fold it into a summary.
struct Raised {
    key: String,
    pending: Pending,
    suppressed_before: u64,
}

/// Makes one rule's alerts for a file, at most `max_alerts` of them.
///
/// Beyond the cap, the alerts with the most matching records (then by group
/// key: never by row order, so the daemon, replay and rule tests agree) go out
/// as they are, and the rest are folded into one summary per audience (see
/// [`FoldedOf`]), counted within the cap. A summary carries counts, the file's
/// name and a sample of records: one per district among the folded alerts, so
/// that routing reaches every partner covering one of them, topped up to
/// [`SUMMARY_SAMPLE`]. When the folded alerts span more districts than an alert
/// carries records, the summary carries none: `route` then sends it to every
/// partner of the rule rather than leave one out. The folded alerts' state
/// (cooldowns started, windows cleared) stands as if each had gone out: the
/// summary told their partners.
fn emit(rule: &Rule, mut raised: Vec<Raised>, source: &Source<'_>, outcome: &mut Outcome) {
    let max = usize::try_from(rule.max_alerts.max(1)).unwrap_or(usize::MAX);
    let make = |r: Raised| {
        make_alert(
            rule,
            &r.key,
            r.pending,
            source.now,
            source.discriminator,
            r.suppressed_before,
        )
    };
    if raised.len() <= max {
        outcome.alerts.extend(raised.into_iter().map(make));
        return;
    }
    raised.sort_by(|a, b| {
        b.pending
            .count
            .cmp(&a.pending.count)
            .then_with(|| a.key.cmp(&b.key))
    });
    let class = |r: &Raised| FoldedOf::of(r.pending.trigger.as_ref().unwrap_or(&Trigger::Match));
    let classes = |rest: &[Raised]| {
        let mut seen: Vec<FoldedOf> = Vec::new();
        for r in rest {
            let c = class(r);
            if !seen.contains(&c) {
                seen.push(c);
            }
        }
        seen
    };
    // One summary per audience among the folded alerts, all within the cap.
    let mut keep = max - 1;
    while keep > 0 && keep + classes(&raised[keep..]).len() > max {
        keep -= 1;
    }
    let folded = raised.split_off(keep);
    outcome.alerts.extend(raised.into_iter().map(make));
    let mut audiences = classes(&folded);
    if audiences.len() > max {
        // A cap of 1 on a deadline rule folding both openings and closes:
        // one summary, to the audience of the alert with the most records.
        audiences.truncate(1);
    }
    let mut groups: Vec<Vec<Raised>> = audiences.iter().map(|_| Vec::new()).collect();
    for r in folded {
        let at = audiences.iter().position(|&c| c == class(&r)).unwrap_or(0);
        groups[at].push(r);
    }
    for (of, group) in audiences.into_iter().zip(groups) {
        outcome.alerts.push(summary_alert(rule, of, group, source));
    }
}

/// One summary alert standing for `folded` (see [`emit`]).
fn summary_alert(rule: &Rule, of: FoldedOf, folded: Vec<Raised>, source: &Source<'_>) -> Alert {
    let alerts = folded.len() as u64;
    let matches: u64 = folded.iter().map(|r| r.pending.count).sum();
    let suppressed_before = folded.iter().map(|r| r.suppressed_before).sum();
    let mut districts: HashSet<String> = HashSet::new();
    let mut sample: Vec<Arc<Event>> = Vec::new();
    let mut spare: Vec<Arc<Event>> = Vec::new();
    let mut too_many_districts = false;
    for event in folded.iter().flat_map(|r| r.pending.events.iter()) {
        let district = event
            .get(&rule.district_field)
            .map(|v| v.to_string().trim().to_lowercase())
            .unwrap_or_default();
        if districts.contains(&district) {
            if spare.len() < SUMMARY_SAMPLE {
                spare.push(event.clone());
            }
            continue;
        }
        if districts.len() == MAX_EVENTS_PER_ALERT {
            too_many_districts = true;
            break;
        }
        districts.insert(district);
        sample.push(event.clone());
    }
    if too_many_districts {
        sample.clear();
    } else {
        let room = SUMMARY_SAMPLE.saturating_sub(sample.len());
        sample.extend(spare.into_iter().take(room));
        sample.sort_by_key(|e| e.time);
    }
    let pending = Pending {
        group: BTreeMap::new(),
        events: sample,
        count: matches,
        trigger: Some(Trigger::Folded {
            alerts,
            matches,
            feed: rule.feed.clone(),
            file: source.file.to_string(),
            of,
        }),
    };
    let key = format!("\u{3}folded\u{1f}{of:?}");
    make_alert(
        rule,
        &key,
        pending,
        source.now,
        source.discriminator,
        suppressed_before,
    )
}

/// How long a threshold or rate window keeps an event (None for other kinds).
fn window_span(rule: &Rule) -> Option<Duration> {
    match &rule.kind {
        RuleKind::Threshold { within, .. } => Some(*within),
        RuleKind::Rate {
            within, baseline, ..
        } => Some(*within + *baseline),
        _ => None,
    }
}

/// When a window has had no event for longer than its rule needs: just after
/// its newest event leaves the span (an empty window is needed by nobody).
fn window_expiry(rule: &Rule, window: &Window) -> Timestamp {
    match (window_span(rule), window.latest_ms()) {
        (Some(span), Some(latest)) => {
            let latest = Timestamp::from_millisecond(latest).unwrap_or(Timestamp::MAX);
            add(add(latest, span), Duration::from_millis(1))
        }
        _ => Timestamp::MIN,
    }
}

/// When a cooldown is no longer needed: when it ends, or, if it held matches
/// back, one cooldown later, so that a group that matches again soon still
/// reports them (after that its next alert is news in its own right).
fn cooldown_expiry(rule: &Rule, cooldown: &Cooldown) -> Timestamp {
    let length = match (&rule.kind, rule.cooldown) {
        (_, Some(cd)) => cd,
        (RuleKind::Rate { within, .. }, None) => *within,
        _ => Duration::ZERO,
    };
    let kept = if cooldown.suppressed > 0 {
        length * 2
    } else {
        length
    };
    add(cooldown.last_alert_at, kept)
}

fn deadline_within(rule: &Rule) -> Option<Duration> {
    match &rule.kind {
        RuleKind::Deadline { within, .. } => Some(*within),
        _ => None,
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A match of `rule` (a plain match rule) on `record`: counted in its group,
/// and kept whole while the group has room, so a row becomes an event only
/// if some rule keeps it.
fn observe_plain_match<R: Record + ?Sized>(
    batch: &mut Batch,
    index: usize,
    rule: &Rule,
    record: &R,
) {
    group_key_into(rule, record, &mut batch.key);
    let groups = batch.pending.entry(index).or_default();
    let pending = match groups.get_mut(batch.key.as_str()) {
        Some(pending) => pending,
        None => groups
            .entry(batch.key.clone())
            .or_insert_with(|| pending_for(rule, record, None)),
    };
    pending.push(record, &mut batch.shared);
}

fn pending_for<R: Record + ?Sized>(rule: &Rule, event: &R, trigger: Option<Trigger>) -> Pending {
    Pending {
        group: group_values(rule, event),
        events: Vec::new(),
        count: 0,
        trigger,
    }
}

fn make_alert(
    rule: &Rule,
    key: &str,
    pending: Pending,
    now: Timestamp,
    discriminator: &str,
    suppressed_before: u64,
) -> Alert {
    let trigger = pending.trigger.unwrap_or(Trigger::Match);
    // Deadline notices and silence go straight to their partners; review is for
    // what a panel must assess before it is shared (matches, thresholds, new substances, rates).
    let reviewed = !rule.review.is_empty() && trigger.is_reviewable();
    // The last holder of a shared event takes it; the others copy it.
    let events: Vec<Event> = pending
        .events
        .into_iter()
        .map(Arc::unwrap_or_clone)
        .collect();
    Alert {
        id: alert_id(rule, key, now, discriminator),
        rule_id: rule.id.clone(),
        district: crate::alerts::common_district(&events, &rule.district_field),
        group: pending.group,
        severity: rule.severity,
        created_at: now,
        event_count: pending.count,
        suppressed_before,
        events,
        status: if reviewed {
            AlertStatus::InReview
        } else {
            AlertStatus::Sent
        },
        trigger,
        assessment: None,
        reasons: Vec::new(),
    }
}

/// The group key: the `group_by` values, case-folded so "Bolton" and "BOLTON" group together.
fn group_key<R: Record + ?Sized>(rule: &Rule, event: &R) -> String {
    let mut key = String::new();
    group_key_into(rule, event, &mut key);
    key
}

/// [`group_key`] into `key`, reusing its allocation: a text value in ASCII
/// (nearly every district or lab) is folded in place, anything else as
/// `group_key` always did (`str::to_lowercase` knows a final sigma).
fn group_key_into<R: Record + ?Sized>(rule: &Rule, event: &R, key: &mut String) {
    key.clear();
    for (i, field) in rule.group_by.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        match event.get(field) {
            Some(Value::Text(text)) if text.is_ascii() => {
                let start = key.len();
                key.push_str(text.trim());
                key[start..].make_ascii_lowercase();
            }
            Some(value) => key.push_str(&value.to_string().trim().to_lowercase()),
            None => {}
        }
    }
}

fn group_values<R: Record + ?Sized>(rule: &Rule, event: &R) -> BTreeMap<String, String> {
    rule.group_by
        .iter()
        .map(|f| {
            let text = event.get(f).map(|v| v.to_string()).unwrap_or_default();
            (f.clone(), text.trim().to_string())
        })
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
mod tests;
