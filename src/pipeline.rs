//! The batch step that every path calls: the daemon (a file, a clock tick),
//! `earlywarn replay` and `earlywarn test`.
//!
//! ```text
//! rows ──► engine ──► alerts ──► merge ──► route ──► render (defaults if the rule's templates fail) ──► Ledger
//! ```
//!
//! Pure: no I/O and no clock. What a batch writes goes through a [`Ledger`]:
//! `store::FileTx` for the daemon (one file = one transaction), a
//! [`MemoryLedger`] for replay and rule tests. The shell around it (reading,
//! hashing, moving files, committing) stays with each caller.
//!
//! # The tick rule
//!
//! Clock-driven rules (deadlines overdue, silence) are evaluated the same way
//! on every path, so one input gives the same alerts everywhere:
//!
//! 1. A batch that arrives at a known time (the daemon's wall clock, a rule
//!    test's `at`) first ticks to it: time passed up to its arrival.
//! 2. Within a batch, before each event, the engine ticks to the latest event
//!    time of the batch so far (never past the arrival), if some rule depends
//!    on the clock and anything falls due
//!    by then: a deadline whose closing record comes after its due time is
//!    overdue, wherever the close sits.
//! 3. After the batch's rows, the engine finishes at the batch's `now` (the
//!    daemon's wall clock; a rule test's `at` or latest event time; replay's
//!    latest event time) and, when some rule depends on the clock, ticks to it.
//! 4. Between batches only the daemon has time of its own: it ticks to the
//!    wall clock whenever something falls due ([`Pipeline::tick`]), so
//!    deadlines and silence fire while no file arrives. Replay's and rule
//!    tests' clocks move only with their input (and a rule test's `eval_at`).
//!
//! Every state change the engine returns goes to the ledger in the order it
//! was made, and every alert is recorded with its emails when it is raised,
//! so a deadline opened and closed by one batch finds its opening notice.

use crate::alerts::render::{Extras, RenderedEmail, Templates, render_with, thread_key};
use crate::alerts::{Alert, Audience, Delivery, first_audience, route};
use crate::config::Config;
use crate::event::Event;
use crate::feeds::record_fingerprint;
use crate::rules::engine::{Batch, Engine, Outcome, StateChange};
use crate::rules::record::Record;
use crate::rules::{Rule, RuleSet};
use crate::store::{FileTx, StoreError};
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};

/// The write side of one batch: what the step records, and the little it
/// must look up while recording.
pub trait Ledger {
    type Error;

    /// Notes a record; false when the same record (id and content) was seen before.
    fn record_is_new(
        &mut self,
        feed: &str,
        record_id: &str,
        fingerprint: &[u8; 16],
    ) -> Result<bool, Self::Error>;

    /// The `Message-ID` of the first email `partner_id` got in `thread`, if any.
    fn first_in_thread(
        &mut self,
        thread: &str,
        partner_id: &str,
    ) -> Result<Option<String>, Self::Error>;

    /// The key that signs acknowledgement links (SPEC §10), if this ledger
    /// keeps one: replay and rule tests send nothing, so need none.
    fn ack_key(&mut self) -> Result<Option<[u8; 32]>, Self::Error> {
        Ok(None)
    }

    /// An alert with its outbound emails (none when it reaches nobody).
    fn record_alert(
        &mut self,
        alert: &Alert,
        emails: &[Outbound],
        now: Timestamp,
    ) -> Result<(), Self::Error>;

    /// Rule state changes, in the order the engine returned them.
    fn apply(&mut self, changes: &[StateChange]) -> Result<(), Self::Error>;
}

/// One partner's email of an alert, rendered once.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub partner_id: String,
    pub audience: Audience,
    pub email: RenderedEmail,
}

/// An alert the step raised and recorded. Its emails went to the ledger and
/// are not kept: a replay of a large file raises many alerts, each email
/// holding up to 50 records in three forms.
#[derive(Debug)]
pub struct Raised {
    pub alert: Alert,
    /// The partners an email was recorded for, in routing order.
    pub recipients: Vec<String>,
    /// The first email's subject and plain text (what replay and rule tests show).
    pub first_email: Option<EmailGist>,
    /// Raised by the clock (a tick), not by the batch's rows.
    pub by_clock: bool,
}

/// What replay and rule tests show of an email.
#[derive(Debug, Clone)]
pub struct EmailGist {
    pub subject: String,
    pub text: String,
}

impl Raised {
    /// No partner on the rule's list covers it (or none could be rendered).
    pub fn reaches_nobody(&self) -> bool {
        self.recipients.is_empty()
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// In the order raised: ticks before and within the batch, its rows, the tick after it.
    pub raised: Vec<Raised>,
    /// Matches that fell inside a cooldown, by rule id (for logs).
    pub suppressed: BTreeMap<String, u64>,
    /// Records the rules saw.
    pub events: u64,
    /// Records dropped as seen before.
    pub duplicates: u64,
}

/// What the step needs that does not change from batch to batch.
pub struct Pipeline<'a> {
    config: &'a Config,
    /// Feeds counted as delivering whenever the clock ticks: replay's other
    /// feeds are not silent, just not in the replay.
    awake: Vec<String>,
    /// Render only each alert's first subject, not its emails: replay shows
    /// no more, and rendering every partner's email (text, HTML, MIME) for
    /// every alert of a large file would cost most of its time.
    subjects_only: bool,
}

impl<'a> Pipeline<'a> {
    pub fn new(config: &'a Config) -> Pipeline<'a> {
        Pipeline {
            config,
            awake: Vec::new(),
            subjects_only: false,
        }
    }

    /// Renders only the first subject of each alert (see
    /// [`Pipeline::subjects_only`]); the ledger is given no emails. For replay.
    pub fn rendering_subjects_only(mut self) -> Pipeline<'a> {
        self.subjects_only = true;
        self
    }

    /// Counts `feeds` as delivering at every tick (see [`Pipeline::awake`]).
    pub fn keeping_awake(mut self, feeds: Vec<String>) -> Pipeline<'a> {
        self.awake = feeds;
        self
    }

    /// Begins a batch of `feed`'s records; `arrival` is when it arrives, if
    /// known before its rows are read (rule 1 and the cap of rule 2 of the
    /// module's tick rule).
    pub fn begin<'s, L: Ledger>(
        &'s self,
        engine: &'s mut Engine,
        ledger: &'s mut L,
        feed: &'s str,
        arrival: Option<Timestamp>,
    ) -> Result<Step<'s, L>, L::Error> {
        let clock_rules = engine.has_clock_rules();
        let mut step = Step {
            pipeline: self,
            clock_rules,
            engine,
            ledger,
            feed,
            batch: Batch::default(),
            arrival,
            passing: None,
            outcome: BatchOutcome::default(),
        };
        if let Some(at) = arrival {
            step.tick_if_due(at)?;
        }
        Ok(step)
    }

    /// The clock alone (rule 4): raises what is due at `now` and records it.
    pub fn tick<L: Ledger>(
        &self,
        engine: &mut Engine,
        ledger: &mut L,
        now: Timestamp,
    ) -> Result<Vec<Raised>, L::Error> {
        let outcome = self.tick_engine(engine, now);
        self.record_tick(engine, ledger, outcome, now)
    }

    /// The engine's side of [`Pipeline::tick`], for a caller that opens its
    /// ledger only when there is something to record.
    pub fn tick_engine(&self, engine: &mut Engine, now: Timestamp) -> Outcome {
        for feed in &self.awake {
            engine.note_activity(feed, now);
        }
        engine.tick(now)
    }

    /// The ledger's side of [`Pipeline::tick`].
    pub fn record_tick<L: Ledger>(
        &self,
        engine: &Engine,
        ledger: &mut L,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Vec<Raised>, L::Error> {
        let raised = self.record(engine.rules(), ledger, outcome.alerts, true, now)?;
        ledger.apply(&outcome.changes)?;
        Ok(raised)
    }

    /// Merges (see [`crate::alerts::merge`]), then routes, renders and
    /// records each alert, in order.
    fn record<L: Ledger>(
        &self,
        rules: &RuleSet,
        ledger: &mut L,
        alerts: Vec<Alert>,
        by_clock: bool,
        now: Timestamp,
    ) -> Result<Vec<Raised>, L::Error> {
        let alerts = crate::alerts::merge::merge(alerts, rules, self.config);
        let mut raised = Vec::with_capacity(alerts.len());
        for alert in alerts {
            // The engine raises alerts only for its own rules.
            let Some(rule) = rules.get(&alert.rule_id) else {
                continue;
            };
            let deliveries = route(&alert, rule, self.config, first_audience(&alert));
            if self.subjects_only {
                let subject = deliveries
                    .first()
                    .map(|d| first_subject(self.config, &alert, rule, &rules.templates, d));
                ledger.record_alert(&alert, &[], now)?;
                raised.push(Raised {
                    recipients: deliveries.iter().map(|d| d.partner.id.clone()).collect(),
                    alert,
                    first_email: subject.map(|subject| EmailGist {
                        subject,
                        text: String::new(),
                    }),
                    by_clock,
                });
                continue;
            }
            let ack_key = match &self.config.web {
                Some(_) => ledger.ack_key()?,
                None => None,
            };
            let emails = render_deliveries_with_acks(
                self.config,
                &alert,
                rule,
                &rules.templates,
                &deliveries,
                |thread, partner| ledger.first_in_thread(thread, partner),
                ack_links(self.config, ack_key.as_ref(), &alert.id, now),
            )?;
            ledger.record_alert(&alert, &emails, now)?;
            let first_email = emails.first().map(|o| EmailGist {
                subject: o.email.subject.clone(),
                text: o.email.text.clone(),
            });
            raised.push(Raised {
                alert,
                recipients: emails.into_iter().map(|o| o.partner_id).collect(),
                first_email,
                by_clock,
            });
        }
        Ok(raised)
    }
}

/// One batch under way: observe its events, then [`Step::finish`].
pub struct Step<'s, L: Ledger> {
    pipeline: &'s Pipeline<'s>,
    engine: &'s mut Engine,
    ledger: &'s mut L,
    feed: &'s str,
    batch: Batch,
    arrival: Option<Timestamp>,
    /// Whether any rule depends on the clock: without one a tick raises
    /// nothing, and the batch's rows need not stop for it.
    clock_rules: bool,
    /// The latest event time of this batch so far, capped at the arrival:
    /// the clock as the events pass (rule 2).
    passing: Option<Timestamp>,
    outcome: BatchOutcome,
}

impl<L: Ledger> Step<'_, L> {
    /// Observes one event, unless the ledger has seen the record before.
    /// Returns whether it was observed.
    pub fn observe(&mut self, event: &Event) -> Result<bool, L::Error> {
        if let Some(id) = &event.record_id
            && !self
                .ledger
                .record_is_new(self.feed, id, &record_fingerprint(event))?
        {
            self.outcome.duplicates += 1;
            return Ok(false);
        }
        self.observe_new(event)?;
        Ok(true)
    }

    /// Observes one event known to be new: replay's reading thread drops
    /// repeats before they reach the rules (see [`SeenRecords`]).
    pub fn observe_new<R: Record + ?Sized>(&mut self, event: &R) -> Result<(), L::Error> {
        let time = event.time();
        let mut passing = self.passing.map_or(time, |p| p.max(time));
        if let Some(arrival) = self.arrival {
            passing = passing.min(arrival);
        }
        self.passing = Some(passing);
        if self.clock_rules {
            self.tick_if_due(passing)?;
        }
        self.engine.advance_clock(passing);
        self.outcome.events += 1;
        self.engine.observe(&mut self.batch, event);
        Ok(())
    }

    /// Ends the batch at `now` (rule 3). `discriminator` keeps alert ids unique
    /// (a file's content hash); `name` is what a summary of folded alerts names.
    pub fn finish(
        mut self,
        now: Timestamp,
        discriminator: &str,
        name: &str,
    ) -> Result<BatchOutcome, L::Error> {
        self.engine.note_activity(self.feed, now);
        let batch = std::mem::take(&mut self.batch);
        let finished = self.engine.finish(batch, now, discriminator, name);
        let rules = self.engine.rules().clone();
        let raised = self
            .pipeline
            .record(&rules, self.ledger, finished.alerts, false, now)?;
        self.outcome.raised.extend(raised);
        self.ledger.apply(&finished.changes)?;
        self.outcome.suppressed = finished.suppressed;
        if self.clock_rules {
            self.tick(now)?;
        }
        Ok(self.outcome)
    }

    fn tick_if_due(&mut self, at: Timestamp) -> Result<(), L::Error> {
        if self.engine.next_wakeup().is_some_and(|due| due <= at) {
            self.tick(at)?;
        }
        Ok(())
    }

    fn tick(&mut self, at: Timestamp) -> Result<(), L::Error> {
        let raised = self.pipeline.tick(self.engine, self.ledger, at)?;
        self.outcome.raised.extend(raised);
        Ok(())
    }
}

/// Renders each delivery's email, with the default templates when the rule's
/// fail: a broken template must not stop an alert. `first_in_thread` finds the
/// `Message-ID` each email replies to. A delivery that cannot be rendered even
/// so is logged and left out.
pub fn render_deliveries<E>(
    config: &Config,
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    deliveries: &[Delivery<'_>],
    first_in_thread: impl FnMut(&str, &str) -> Result<Option<String>, E>,
) -> Result<Vec<Outbound>, E> {
    render_deliveries_with_acks(
        config,
        alert,
        rule,
        templates,
        deliveries,
        first_in_thread,
        |_| None,
    )
}

/// The acknowledgement link of each `notify` delivery of alert `alert_id`
/// (SPEC §10), when `[web]` is set and the ledger keeps a key; signed at `now`.
pub fn ack_links<'k>(
    config: &'k Config,
    key: Option<&'k [u8; 32]>,
    alert_id: &'k str,
    now: Timestamp,
) -> impl FnMut(&Delivery<'_>) -> Option<String> + 'k {
    move |delivery| {
        let web = config.web.as_ref()?;
        let key = key?;
        (delivery.audience == Audience::Notify).then(|| {
            crate::ack::link(
                &web.public_url,
                &crate::ack::token(key, alert_id, &delivery.partner.id, now),
            )
        })
    }
}

/// [`render_deliveries`], each email carrying the link `ack_link` gives its delivery.
pub fn render_deliveries_with_acks<E>(
    config: &Config,
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    deliveries: &[Delivery<'_>],
    mut first_in_thread: impl FnMut(&str, &str) -> Result<Option<String>, E>,
    mut ack_link: impl FnMut(&Delivery<'_>) -> Option<String>,
) -> Result<Vec<Outbound>, E> {
    let thread = thread_key(alert);
    let mut emails = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let parent = first_in_thread(&thread, &delivery.partner.id)?;
        let parent = parent.as_deref();
        let link = ack_link(delivery);
        let link = link.as_deref();
        let extras = Extras {
            ack_link: link,
            reminder: None,
        };
        let rendered = render_with(alert, rule, templates, delivery, config, parent, extras)
            .or_else(|e| {
                tracing::error!(alert = %alert.id, rule = %rule.id, error = %e, "Template failed; using the default template");
                render_with(alert, rule, Templates::defaults(), delivery, config, parent, extras)
            });
        match rendered {
            Ok(email) => emails.push(Outbound {
                partner_id: delivery.partner.id.clone(),
                audience: delivery.audience,
                email,
            }),
            Err(e) => {
                tracing::error!(alert = %alert.id, partner = %delivery.partner.id, error = %e, "Cannot render the email even with the default template")
            }
        }
    }
    Ok(emails)
}

/// The subject of `delivery`'s email, with the default templates when the
/// rule's fail, as [`render_deliveries`] would write it.
fn first_subject(
    config: &Config,
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
) -> String {
    crate::alerts::render::subject(alert, rule, templates, delivery, config)
        .or_else(|_| {
            crate::alerts::render::subject(alert, rule, Templates::defaults(), delivery, config)
        })
        .unwrap_or_default()
}

/// Records seen, by a 64-bit digest of their fingerprint, so a million of
/// them stay small. The daemon keeps them in SQLite instead.
#[derive(Debug, Default)]
pub struct SeenRecords(rustc_hash::FxHashSet<u64>);

impl SeenRecords {
    pub fn with_capacity(n: usize) -> SeenRecords {
        let mut seen = SeenRecords::default();
        seen.0.reserve(n);
        seen
    }

    /// Room for `n` more records, so the set is not rehashed (and its new
    /// pages faulted in) while a file streams through.
    pub fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
    }

    /// Whether this is the first time the record with this fingerprint is
    /// seen (the fingerprint covers the feed and every field, the id among them).
    pub fn first_time(&mut self, fingerprint: &[u8; 16]) -> bool {
        let mut digest = [0u8; 8];
        digest.copy_from_slice(&fingerprint[..8]);
        self.0.insert(u64::from_le_bytes(digest))
    }
}

/// The ledger of replay and rule tests: nothing is stored but what the next
/// batch needs to behave as in the daemon (records seen, email threads).
#[derive(Debug, Default)]
pub struct MemoryLedger {
    seen: SeenRecords,
    /// The first `Message-ID` per (thread, partner).
    threads: HashMap<(String, String), String>,
}

impl Ledger for MemoryLedger {
    type Error = std::convert::Infallible;

    fn record_is_new(
        &mut self,
        _feed: &str,
        _record_id: &str,
        fingerprint: &[u8; 16],
    ) -> Result<bool, Self::Error> {
        Ok(self.seen.first_time(fingerprint))
    }

    fn first_in_thread(
        &mut self,
        thread: &str,
        partner_id: &str,
    ) -> Result<Option<String>, Self::Error> {
        Ok(self
            .threads
            .get(&(thread.to_string(), partner_id.to_string()))
            .cloned())
    }

    fn record_alert(
        &mut self,
        _alert: &Alert,
        emails: &[Outbound],
        _now: Timestamp,
    ) -> Result<(), Self::Error> {
        for o in emails {
            self.threads
                .entry((o.email.thread.clone(), o.partner_id.clone()))
                .or_insert_with(|| o.email.message_id.clone());
        }
        Ok(())
    }

    fn apply(&mut self, _changes: &[StateChange]) -> Result<(), Self::Error> {
        // The engine's memory is the only state.
        Ok(())
    }
}

/// The daemon's ledger: one file's (or one tick's) transaction.
impl Ledger for FileTx<'_> {
    type Error = StoreError;

    fn record_is_new(
        &mut self,
        feed: &str,
        record_id: &str,
        fingerprint: &[u8; 16],
    ) -> Result<bool, StoreError> {
        FileTx::record_is_new(self, feed, record_id, fingerprint)
    }

    fn first_in_thread(
        &mut self,
        thread: &str,
        partner_id: &str,
    ) -> Result<Option<String>, StoreError> {
        FileTx::first_in_thread(self, thread, partner_id)
    }

    fn ack_key(&mut self) -> Result<Option<[u8; 32]>, StoreError> {
        FileTx::ack_key(self).map(Some)
    }

    fn record_alert(
        &mut self,
        alert: &Alert,
        emails: &[Outbound],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let summary = serde_json::to_string(alert).unwrap_or_default();
        // Before the outbox rows: their priority comes from the alert's row.
        self.insert_alert(alert, &summary)?;
        for o in emails {
            let purpose = crate::alerts::render::Purpose::of(o.audience);
            self.enqueue(&alert.id, &o.partner_id, o.audience, purpose, &o.email, now)?;
        }
        if emails.is_empty() {
            // Stored (status shows it), but no partner in the rule's list covers it: someone must act.
            tracing::error!(alert = %alert.id, rule = %alert.rule_id, district = alert.district.as_deref().unwrap_or("-"),
                "Alert reaches nobody: no partner on the rule's list covers its district (or its severity is below their floor)");
        }
        Ok(())
    }

    fn apply(&mut self, changes: &[StateChange]) -> Result<(), StoreError> {
        FileTx::apply(self, changes)
    }
}

/// An infallible ledger's result, unwrapped.
pub fn infallible<T>(result: Result<T, std::convert::Infallible>) -> T {
    match result {
        Ok(t) => t,
        Err(never) => match never {},
    }
}
