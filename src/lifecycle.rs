//! An alert's life after it went out (SPEC §10): updates and withdrawals
//! (here), acknowledgements (`ack`), and the reminders the clock decides.
//!
//! [`update`] and [`withdraw`] are the one code path for the CLI and the
//! console: each runs in one transaction with its audit row and its outbox
//! rows, one notice per partner that received the alert (its `alert` email
//! sent or still pending), threaded under that partner's first email and
//! carrying only what that email carried (its subject, as the partner got it),
//! so a notice is redacted as the original was.
//!
//! Reviewers of a draft get no notices: an alert still in review can be
//! neither updated nor withdrawn (it is decided instead: approved or
//! dismissed), and once approved, the reviewers' draft is not the alert.
//!
//! The caller establishes the [`Actor`] from a credential and passes `now`.

use crate::ack::{AckClaim, AckError};
use crate::alerts::AlertStatus;
use crate::alerts::notice::{self, Notice, NoticeKind};
use crate::alerts::render::{Purpose, RenderError};
use crate::audit::{Action, Actor};
use crate::config::Config;
use crate::store::lifecycle::{AckOutcome, AckRow, LifecycleTx};
use crate::store::{Store, StoreError};
use jiff::Timestamp;

/// The longest update text or withdrawal reason.
pub const MAX_NOTICE_CHARS: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no alert `{0}`; `earlywarn alerts list --all` shows recent alerts")]
    NotFound(String),
    #[error("alert {0} was withdrawn: it cannot be updated or withdrawn again")]
    Withdrawn(String),
    #[error(
        "alert {0} is still awaiting review: approve it (`earlywarn alerts approve`) or dismiss it (`earlywarn alerts dismiss`) instead"
    )]
    InReview(String),
    #[error("alert {0} was dismissed: it never went to its partners, so there is nobody to tell")]
    Dismissed(String),
    #[error("{what} is empty: say what partners should know ({flag} TEXT)")]
    Empty {
        what: &'static str,
        flag: &'static str,
    },
    #[error("{what} is longer than {MAX_NOTICE_CHARS} characters")]
    TooLong { what: &'static str },
    #[error("{what} holds control characters (an escape sequence); give plain text")]
    Controls { what: &'static str },
    #[error(transparent)]
    Ack(#[from] AckError),
    #[error("cannot render the notice: {0}")]
    Render(#[from] RenderError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LifecycleError {
    /// Whether the person asking must change something (exit 1), rather
    /// than a fault inside earlywarn (exit 2).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, LifecycleError::Render(_) | LifecycleError::Store(_))
    }
}

/// What an update or a withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notified {
    pub alert_id: String,
    /// The update's number (`UPDATE N:`); none for a withdrawal.
    pub update: Option<u32>,
    /// The partners a notice was queued for.
    pub partners: Vec<String>,
}

/// Sends `UPDATE N: <subject>` with `text` to every partner that received alert `id`.
pub fn update(
    config: &Config,
    store: &mut Store,
    id: &str,
    text: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<Notified, LifecycleError> {
    let id = crate::review::normalise_id(id);
    let text = valid_text(text, "the update", "--text")?;
    store.lifecycle(|tx| {
        may_follow(tx, &id)?;
        let n = tx.updates_so_far(&id)? + 1;
        let partners = notify_all(config, tx, &id, NoticeKind::Update { n, text: &text }, now)?;
        tx.audit(
            now,
            actor,
            Action::Update,
            &id,
            &serde_json::json!({ "n": n, "text": text, "partners": partners }),
        )?;
        Ok(Notified {
            alert_id: id.clone(),
            update: Some(n),
            partners,
        })
    })
}

/// Sends `WITHDRAWN: <subject>` with `reason` to every partner that received
/// alert `id`, and closes it: it is not updated or reminded about again.
pub fn withdraw(
    config: &Config,
    store: &mut Store,
    id: &str,
    reason: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<Notified, LifecycleError> {
    let id = crate::review::normalise_id(id);
    let reason = valid_text(reason, "the reason", "--reason")?;
    store.lifecycle(|tx| {
        may_follow(tx, &id)?;
        let partners = notify_all(
            config,
            tx,
            &id,
            NoticeKind::Withdrawn { reason: &reason },
            now,
        )?;
        tx.set_status(&id, AlertStatus::Withdrawn)?;
        tx.audit(
            now,
            actor,
            Action::Withdraw,
            &id,
            &serde_json::json!({ "reason": reason, "partners": partners }),
        )?;
        Ok(Notified {
            alert_id: id.clone(),
            update: None,
            partners,
        })
    })
}

/// What a valid acknowledgement link names, as the page shows it.
#[derive(Debug, Clone)]
pub struct AckTarget {
    pub claim: AckClaim,
    pub alert: crate::store::StoredAlert,
    /// The partner's confirmation, if it already gave one.
    pub confirmed: Option<AckRow>,
    /// The form token the page's button sends back ([`acknowledge`]).
    pub form_token: String,
}

/// What an acknowledgement link names (the GET of its page): verified under
/// the database's key; records nothing.
pub fn ack_target(store: &Store, token: &str, now: Timestamp) -> Result<AckTarget, LifecycleError> {
    // Reads only, and the token is checked before anything else is read: a
    // flood of forged links costs a MAC each and never takes the write lock
    // (once the key exists: the first call ever makes it).
    let key = store.ack_key()?;
    let claim = crate::ack::verify(&key, token, now)?;
    let alert = store
        .alert(&claim.alert_id)?
        .ok_or(LifecycleError::Ack(AckError::Invalid))?;
    let confirmed = store.ack_of(&claim.alert_id, &claim.partner_id)?;
    Ok(AckTarget {
        claim,
        alert,
        confirmed,
        form_token: crate::ack::form_token(&key, token, now),
    })
}

/// The alert as the link's partner may see it (the acknowledgement page):
/// routed and redacted exactly as its email was (`alerts::route`). `None`
/// when the rule is no longer loaded or no longer routes to that partner:
/// the page then shows only the reference, never an unredacted alert.
pub fn partner_view<'a>(
    config: &'a Config,
    rules: &crate::rules::RuleSet,
    target: &AckTarget,
) -> Option<crate::alerts::Delivery<'a>> {
    let rule = rules.get(&target.alert.alert.rule_id)?;
    crate::alerts::route(
        &target.alert.alert,
        rule,
        config,
        crate::alerts::Audience::Notify,
    )
    .into_iter()
    .find(|d| d.partner.id == target.claim.partner_id)
}

/// Records that the partner named by `token` confirmed receipt (the POST of
/// its page, carrying the page's `form` token from [`ack_target`]), with the
/// optional `name` the person typed and where from (`source`: the client's
/// IP address), in one transaction with its audit row. Pressing again
/// changes nothing: [`AckOutcome::AlreadyConfirmed`].
pub fn acknowledge(
    store: &mut Store,
    token: &str,
    form: &str,
    name: Option<&str>,
    source: &str,
    now: Timestamp,
) -> Result<(AckClaim, AckOutcome), LifecycleError> {
    let name = crate::ack::valid_name(name)?;
    // Checked before the write lock is taken (see `ack_target`).
    let key = store.ack_key()?;
    let claim = crate::ack::verify(&key, token, now)?;
    if !crate::ack::verify_form_token(&key, token, form, now) {
        return Err(AckError::StaleForm.into());
    }
    store.lifecycle(|tx| {
        // A signed token names an alert this database sent; one missing now
        // (a restored older copy) is refused like any unknown link.
        if tx.alert(&claim.alert_id)?.is_none() {
            return Err(LifecycleError::Ack(AckError::Invalid));
        }
        // Nobody is logged in on this page: the partner is the actor, from where it pressed.
        let actor = Actor {
            id: "anonymous".into(),
            display: name.clone().unwrap_or_else(|| claim.partner_id.clone()),
            source: source.to_string(),
        };
        let outcome = tx.record_ack(
            &claim.alert_id,
            &claim.partner_id,
            name.as_deref(),
            &actor,
            now,
        )?;
        Ok((claim, outcome))
    })
}

/// Refuses an alert that cannot be followed up: missing, withdrawn, in review, dismissed.
fn may_follow(tx: &LifecycleTx<'_>, id: &str) -> Result<(), LifecycleError> {
    let stored = tx
        .alert(id)?
        .ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
    match stored.status {
        AlertStatus::Sent | AlertStatus::Approved => Ok(()),
        AlertStatus::Withdrawn => Err(LifecycleError::Withdrawn(id.to_string())),
        AlertStatus::InReview => Err(LifecycleError::InReview(id.to_string())),
        AlertStatus::Dismissed => Err(LifecycleError::Dismissed(id.to_string())),
    }
}

/// One notice of `kind` to each partner whose `alert` email was sent or is
/// still pending (a failed one never reached it); returns those partners.
fn notify_all(
    config: &Config,
    tx: &LifecycleTx<'_>,
    id: &str,
    kind: NoticeKind<'_>,
    now: Timestamp,
) -> Result<Vec<String>, LifecycleError> {
    let stored = tx
        .alert(id)?
        .ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
    let purpose = kind.purpose();
    let mut partners = Vec::new();
    for first in tx.emails_of(id, Purpose::Alert)? {
        if first.status == "failed" {
            continue;
        }
        let parent = tx
            .first_in_thread(&first.thread, &first.partner_id)?
            .unwrap_or_else(|| first.message_id.clone());
        let email = notice::render(
            &Notice {
                alert_id: id,
                rule_id: &stored.alert.rule_id,
                partner_id: &first.partner_id,
                original_subject: &first.subject,
                to: &first.recipients,
                in_reply_to: Some(&parent),
                thread: &first.thread,
                ack_link: None,
                kind: kind.clone(),
            },
            config,
        )?;
        tx.enqueue(id, &first.partner_id, purpose, &email, now)?;
        partners.push(first.partner_id);
    }
    Ok(partners)
}

/// Text typed by a person for partners to read: trimmed, not empty, bounded,
/// no control characters but line breaks and tabs.
fn valid_text(
    text: &str,
    what: &'static str,
    flag: &'static str,
) -> Result<String, LifecycleError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(LifecycleError::Empty { what, flag });
    }
    if text.chars().count() > MAX_NOTICE_CHARS {
        return Err(LifecycleError::TooLong { what });
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(LifecycleError::Controls { what });
    }
    Ok(text.to_string())
}

// ------------------------------------------------------------------ reminders

/// Whether a reminder kept `within` after `since` is due at `now` (pure).
pub fn reminder_due(within: Option<std::time::Duration>, since: Timestamp, now: Timestamp) -> bool {
    let Some(within) = within else {
        return false;
    };
    let Ok(within) = jiff::SignedDuration::try_from(within) else {
        return false;
    };
    since.saturating_add(within).is_ok_and(|due| now >= due)
}

/// The partners of `received` with no acknowledgement in `confirmed`, in order (pure).
pub fn silent_partners(received: &[String], confirmed: &[String]) -> Vec<String> {
    received
        .iter()
        .filter(|p| !confirmed.contains(p))
        .cloned()
        .collect()
}

/// What one clock tick's reminders did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reminded {
    /// Drafts whose reviewers (and `ops`) were reminded.
    pub drafts: Vec<String>,
    /// Alerts whose silent partners were reminded, with those partners.
    pub silent: Vec<(String, Vec<String>)>,
}

impl Reminded {
    pub fn is_empty(&self) -> bool {
        self.drafts.is_empty() && self.silent.is_empty()
    }
}

/// How far back unacknowledged alerts are looked for: after this their
/// links have expired, so a reminder could not be acted on.
const ACK_LOOKBACK: jiff::SignedDuration = crate::ack::ACK_VALIDITY;

/// Sends the reminders due at `now` (SPEC §5.4 `review_within`, §10
/// `ack_within`), each once: the database notes each alert's reminder in
/// the transaction that queues it, so a restart never sends one again.
///
/// - A draft still in review `review_within` after it was raised: each
///   reviewer gets its draft again marked `REMINDER`, and `ops` a note.
/// - An alert `ack_within` after it went out: each partner that has not
///   confirmed receipt gets its email again marked `REMINDER` (threaded,
///   with its link), and `ops` are told which partners; nothing is sent when
///   every partner confirmed.
pub fn send_reminders(
    config: &Config,
    rules: &crate::rules::RuleSet,
    store: &mut Store,
    now: Timestamp,
) -> Result<Reminded, LifecycleError> {
    let mut reminded = Reminded::default();
    let reviews_timed = rules.rules.iter().any(|r| r.review_within.is_some());
    let drafts = match reviews_timed {
        true => store.drafts_not_reminded()?,
        false => Vec::new(),
    };
    for draft in drafts {
        let Some(rule) = rules.get(&draft.rule_id) else {
            continue;
        };
        if !reminder_due(rule.review_within, draft.created_at, now) {
            continue;
        }
        if remind_reviewers(config, rules, rule, store, &draft.alert_id, now)? {
            reminded.drafts.push(draft.alert_id);
        }
    }
    let acked_rules: Vec<&str> = rules
        .rules
        .iter()
        .filter(|r| r.ack_within.is_some())
        .map(|r| r.id.as_str())
        .collect();
    if !acked_rules.is_empty() {
        let since = now.saturating_sub(ACK_LOOKBACK).unwrap_or(now);
        for alert in store.alerts_awaiting_acks(since, &acked_rules)? {
            let Some(rule) = rules.get(&alert.rule_id) else {
                continue;
            };
            if !reminder_due(rule.ack_within, alert.sent_at, now) {
                continue;
            }
            if let Some(silent) = remind_silent(config, rules, rule, store, &alert.alert_id, now)? {
                reminded.silent.push((alert.alert_id, silent));
            }
        }
    }
    Ok(reminded)
}

/// The draft again, marked `REMINDER`, to each reviewer that got it, and a
/// note to `ops`; false when it had been reminded already.
fn remind_reviewers(
    config: &Config,
    rules: &crate::rules::RuleSet,
    rule: &crate::rules::Rule,
    store: &mut Store,
    id: &str,
    now: Timestamp,
) -> Result<bool, LifecycleError> {
    use crate::store::lifecycle::ReminderKind;
    store.lifecycle(|tx| {
        let Some(stored) = tx.alert(id)? else {
            return Ok(false);
        };
        if stored.status != AlertStatus::InReview
            || !tx.note_reminder(id, ReminderKind::Review, now)?
        {
            return Ok(false);
        }
        let drafts = tx.emails_of(id, Purpose::Draft)?;
        let reviewers: Vec<String> = drafts.iter().map(|d| d.partner_id.clone()).collect();
        let purpose = Purpose::Reminder(1);
        resend(config, rules, rule, tx, &stored.alert, crate::alerts::Audience::Review, &reviewers, purpose, None, now)?;
        if let Some(first) = drafts.first() {
            tell_ops(config, tx, &stored.alert, first, NoticeKind::ReviewReminder, now)?;
        }
        tracing::info!(alert = %id, reviewers = reviewers.len(), "Reminded the reviewers of a draft still undecided");
        Ok(true)
    })
}

/// The alert again, marked `REMINDER`, to each partner that has not
/// confirmed receipt, and `ops` told which; `None` when reminded already.
fn remind_silent(
    config: &Config,
    rules: &crate::rules::RuleSet,
    rule: &crate::rules::Rule,
    store: &mut Store,
    id: &str,
    now: Timestamp,
) -> Result<Option<Vec<String>>, LifecycleError> {
    use crate::store::lifecycle::ReminderKind;
    store.lifecycle(|tx| {
        let Some(stored) = tx.alert(id)? else {
            return Ok(None);
        };
        if !matches!(stored.status, AlertStatus::Sent | AlertStatus::Approved)
            || !tx.note_reminder(id, ReminderKind::Ack, now)?
        {
            return Ok(None);
        }
        let sent: Vec<_> = tx
            .emails_of(id, Purpose::Alert)?
            .into_iter()
            .filter(|e| e.status != "failed")
            .collect();
        let received: Vec<String> = sent.iter().map(|e| e.partner_id.clone()).collect();
        let mut confirmed = Vec::new();
        for partner in &received {
            if tx.ack_of(id, partner)?.is_some() {
                confirmed.push(partner.clone());
            }
        }
        let silent = silent_partners(&received, &confirmed);
        if silent.is_empty() {
            return Ok(Some(silent));
        }
        let key = tx.ack_key()?;
        resend(config, rules, rule, tx, &stored.alert, crate::alerts::Audience::Notify, &silent, Purpose::Reminder(2), Some(&key), now)?;
        let names: Vec<String> = silent
            .iter()
            .map(|p| config.partner(p).map_or_else(|| p.clone(), |c| format!("{} ({p})", c.name)))
            .collect();
        if let Some(first) = sent.first() {
            tell_ops(config, tx, &stored.alert, first, NoticeKind::SilentPartners { partners: &names }, now)?;
        }
        tracing::info!(alert = %id, partners = ?silent, "Reminded the partners that have not confirmed receipt");
        Ok(Some(silent))
    })
}

/// `alert` rendered again for the `partners` of `audience` (routed and
/// redacted as the first time), marked as reminder `purpose`, threaded.
#[allow(clippy::too_many_arguments)]
fn resend(
    config: &Config,
    rules: &crate::rules::RuleSet,
    rule: &crate::rules::Rule,
    tx: &LifecycleTx<'_>,
    alert: &crate::alerts::Alert,
    audience: crate::alerts::Audience,
    partners: &[String],
    purpose: Purpose,
    ack_key: Option<&[u8; 32]>,
    now: Timestamp,
) -> Result<(), LifecycleError> {
    use crate::alerts::render::{Extras, Templates, render_with, thread_key};
    let thread = thread_key(alert);
    for delivery in crate::alerts::route(alert, rule, config, audience)
        .into_iter()
        .filter(|d| partners.contains(&d.partner.id))
    {
        let parent = tx.first_in_thread(&thread, &delivery.partner.id)?;
        let link = match (ack_key, &config.web) {
            (Some(key), Some(web)) => Some(crate::ack::link(
                &web.public_url,
                &crate::ack::token(key, &alert.id, &delivery.partner.id, now),
            )),
            _ => None,
        };
        let extras = Extras {
            ack_link: link.as_deref(),
            reminder: Some(purpose),
        };
        let email = render_with(
            alert,
            rule,
            &rules.templates,
            &delivery,
            config,
            parent.as_deref(),
            extras,
        )
        .or_else(|_| {
            render_with(
                alert,
                rule,
                Templates::defaults(),
                &delivery,
                config,
                parent.as_deref(),
                extras,
            )
        })?;
        tx.enqueue(&alert.id, &delivery.partner.id, purpose, &email, now)?;
    }
    Ok(())
}

/// A note of `kind` to each `ops` partner, about the email `first` (its subject).
fn tell_ops(
    config: &Config,
    tx: &LifecycleTx<'_>,
    alert: &crate::alerts::Alert,
    first: &crate::store::lifecycle::SentEmail,
    kind: NoticeKind<'_>,
    now: Timestamp,
) -> Result<(), LifecycleError> {
    for ops in &config.daemon.ops {
        let Some(partner) = config.partner(ops) else {
            continue;
        };
        let parent = tx.first_in_thread(&first.thread, ops)?;
        let email = notice::render(
            &Notice {
                alert_id: &alert.id,
                rule_id: &alert.rule_id,
                partner_id: ops,
                original_subject: &first.subject,
                to: &partner.emails,
                in_reply_to: parent.as_deref(),
                thread: &first.thread,
                ack_link: None,
                kind: kind.clone(),
            },
            config,
        )?;
        tx.enqueue(&alert.id, ops, kind.purpose(), &email, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Alert, Trigger, route};
    use crate::config::Severity;
    use crate::event::{Event, Fields, Value};
    use crate::rules::RuleSet;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            r#"
[mail]
transport = "file"
from = "earlywarn@example.org"
[daemon]
timezone = "Europe/London"
ops = ["ops"]
[web]
public_url = "https://ew.example.org"
[[feed]]
name = "drug_testing"
dir = "in"
sensitive = ["notes"]
[[partner]]
id = "panel"
name = "Drug Panel"
emails = ["p@example.org"]
isa = true
[[partner]]
id = "ops"
name = "Ops"
emails = ["o@example.org"]
isa = true
[[partner]]
id = "bolton"
name = "Bolton Council"
emails = ["b@example.org"]
isa = true
[[partner]]
id = "charity"
name = "Street Charity"
emails = ["c@example.org"]
"#,
        )
        .unwrap()
    }

    fn rules(config: &Config, extra: &str) -> RuleSet {
        RuleSet::from_sources(
            config,
            &[(
                PathBuf::from("r.toml"),
                format!("[[rule]]\nid = \"nitazene\"\nfeed = \"drug_testing\"\nnotify = [\"bolton\", \"charity\"]\n{extra}"),
            )],
        )
        .unwrap()
    }

    fn raised() -> Timestamp {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    fn alert(status: AlertStatus) -> Alert {
        let mut fields = Fields::default();
        fields.insert("district", Value::Text("Bolton".into()));
        fields.insert("notes", Value::Text("seized near the park".into()));
        Alert {
            id: "EW-ABC123".into(),
            rule_id: "nitazene".into(),
            group: BTreeMap::new(),
            district: Some("Bolton".into()),
            severity: Severity::Warning,
            created_at: raised(),
            event_count: 1,
            suppressed_before: 0,
            events: vec![Event {
                feed: "drug_testing".into(),
                record_id: Some("S1".into()),
                time: raised(),
                fields,
            }],
            status,
            trigger: Trigger::Match,
            assessment: None,
            reasons: Vec::new(),
        }
    }

    /// A real database holding `alert` and its first emails, as the pipeline writes them.
    fn store_with(dir: &Path, config: &Config, rules: &RuleSet, alert: &Alert) -> Store {
        let mut store = Store::open(dir).unwrap();
        let rule = rules.get(&alert.rule_id).unwrap();
        let deliveries = route(alert, rule, config, crate::alerts::first_audience(alert));
        let emails = crate::pipeline::infallible(crate::pipeline::render_deliveries(
            config,
            alert,
            rule,
            &rules.templates,
            &deliveries,
            |_, _| Ok(None),
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
                raised(),
            )
            .unwrap();
        }
        tx.commit().unwrap();
        store
    }

    fn purposes(store: &Store) -> Vec<(String, String)> {
        store
            .deliveries_of("EW-ABC123")
            .unwrap()
            .into_iter()
            .map(|d| (d.partner_id, d.purpose))
            .collect()
    }

    fn minutes(n: i64) -> jiff::SignedDuration {
        jiff::SignedDuration::from_mins(n)
    }

    #[test]
    fn a_reminder_is_due_once_its_time_has_come() {
        let four_hours = Some(Duration::from_secs(4 * 3600));
        assert!(!reminder_due(four_hours, raised(), raised() + minutes(239)));
        assert!(reminder_due(four_hours, raised(), raised() + minutes(240)));
        assert!(!reminder_due(None, raised(), raised() + minutes(100_000)));
        let silent = silent_partners(
            &["bolton".into(), "charity".into(), "nhs".into()],
            &["charity".into()],
        );
        assert_eq!(silent, ["bolton", "nhs"]);
    }

    #[test]
    fn review_within_reminds_reviewers_and_ops_once_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let config = config();
        let rules = rules(&config, "review = [\"panel\"]\nreview_within = \"4h\"\n");
        let mut store = store_with(dir.path(), &config, &rules, &alert(AlertStatus::InReview));
        let at = |m| raised() + minutes(m);
        assert!(
            send_reminders(&config, &rules, &mut store, at(239))
                .unwrap()
                .is_empty()
        );
        let reminded = send_reminders(&config, &rules, &mut store, at(240)).unwrap();
        assert_eq!(reminded.drafts, ["EW-ABC123"]);
        for later in [241, 600, 100_000] {
            assert!(
                send_reminders(&config, &rules, &mut store, at(later))
                    .unwrap()
                    .is_empty()
            );
        }
        // Reopened (a restart): still not again.
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        assert!(
            send_reminders(&config, &rules, &mut store, at(700))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            purposes(&store),
            [
                ("panel".to_string(), "draft".to_string()),
                ("panel".into(), "reminder-1".into()),
                ("ops".into(), "reminder-1".into()),
            ]
        );
    }

    #[test]
    fn ack_within_reminds_only_the_silent_partners_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = config();
        let rules = rules(&config, "ack_within = \"2h\"\n");
        let mut store = store_with(dir.path(), &config, &rules, &alert(AlertStatus::Sent));
        let at = |m| raised() + minutes(m);
        let key = store.ack_key().unwrap();
        let token = crate::ack::token(&key, "EW-ABC123", "bolton", raised());
        let form = ack_target(&store, &token, at(29)).unwrap().form_token;
        acknowledge(
            &mut store,
            &token,
            &form,
            Some("J Smith"),
            "192.0.2.7",
            at(30),
        )
        .unwrap();
        assert!(
            send_reminders(&config, &rules, &mut store, at(119))
                .unwrap()
                .is_empty()
        );
        let reminded = send_reminders(&config, &rules, &mut store, at(120)).unwrap();
        assert_eq!(
            reminded.silent,
            [("EW-ABC123".to_string(), vec!["charity".to_string()])]
        );
        assert!(
            send_reminders(&config, &rules, &mut store, at(500))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            purposes(&store),
            [
                ("bolton".to_string(), "alert".to_string()),
                ("charity".into(), "alert".into()),
                ("charity".into(), "reminder-2".into()),
                ("ops".into(), "reminder-3".into()),
            ]
        );
    }

    #[test]
    fn every_partner_confirmed_means_no_reminder_and_a_withdrawn_alert_none() {
        let dir = tempfile::tempdir().unwrap();
        let config = config();
        let rules = rules(&config, "ack_within = \"2h\"\n");
        let mut store = store_with(dir.path(), &config, &rules, &alert(AlertStatus::Sent));
        let key = store.ack_key().unwrap();
        for partner in ["bolton", "charity"] {
            let token = crate::ack::token(&key, "EW-ABC123", partner, raised());
            let form = crate::ack::form_token(&key, &token, raised());
            acknowledge(&mut store, &token, &form, None, "192.0.2.7", raised()).unwrap();
        }
        let reminded =
            send_reminders(&config, &rules, &mut store, raised() + minutes(120)).unwrap();
        assert_eq!(reminded.silent, [("EW-ABC123".to_string(), vec![])]);
        assert_eq!(purposes(&store).len(), 2, "nothing queued");

        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with(dir.path(), &config, &rules, &alert(AlertStatus::Sent));
        let actor = crate::audit::Actor::daemon();
        withdraw(
            &config,
            &mut store,
            "EW-ABC123",
            "wrong sample",
            &actor,
            raised(),
        )
        .unwrap();
        assert!(
            send_reminders(&config, &rules, &mut store, raised() + minutes(120))
                .unwrap()
                .is_empty()
        );
    }
}
