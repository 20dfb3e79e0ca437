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
}

/// What an acknowledgement link names (the GET of its page): verified under
/// the database's key; records nothing.
pub fn ack_target(
    store: &mut Store,
    token: &str,
    now: Timestamp,
) -> Result<AckTarget, LifecycleError> {
    store.lifecycle(|tx| {
        let claim = crate::ack::verify(&tx.ack_key()?, token, now)?;
        let alert = tx
            .alert(&claim.alert_id)?
            .ok_or(LifecycleError::Ack(AckError::Invalid))?;
        let confirmed = tx.ack_of(&claim.alert_id, &claim.partner_id)?;
        Ok(AckTarget {
            claim,
            alert,
            confirmed,
        })
    })
}

/// Records that the partner named by `token` confirmed receipt (the POST of
/// its page), with the optional `name` the person typed and where from
/// (`source`: the client's IP address), in one transaction with its audit
/// row. Pressing again changes nothing: [`AckOutcome::AlreadyConfirmed`].
pub fn acknowledge(
    store: &mut Store,
    token: &str,
    name: Option<&str>,
    source: &str,
    now: Timestamp,
) -> Result<(AckClaim, AckOutcome), LifecycleError> {
    let name = crate::ack::valid_name(name)?;
    store.lifecycle(|tx| {
        let claim = crate::ack::verify(&tx.ack_key()?, token, now)?;
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
