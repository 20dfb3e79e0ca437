//! Review (SPEC §5.4): approving or dismissing an alert that went to reviewers as a draft.
//!
//! Approval routes the stored alert to the rule's `notify` partners, renders
//! their emails and puts them in the outbox in the same transaction that
//! records who approved it and when, so an approval is never half done and
//! never sends twice. The running daemon's outbox picks the rows up.

use crate::alerts::{AlertStatus, Audience, route};
use crate::config::Config;
use crate::feeds::intake::render_with_fallback;
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};
use jiff::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no alert `{0}`; `earlywarn alerts list` shows the alerts awaiting review")]
    NotFound(String),
    #[error("alert {id} is not awaiting review: it is {status}{decided}")]
    NotInReview {
        id: String,
        status: String,
        decided: String,
    },
    #[error(
        "alert {id} was raised by rule `{rule}`, which is no longer loaded; restore the rule to approve it, or dismiss it"
    )]
    RuleGone { id: String, rule: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an approval did.
#[derive(Debug)]
pub struct Approved {
    /// Partner ids the alert was queued for.
    pub partners: Vec<String>,
}

/// Approves alert `id`: queues it for the rule's `notify` partners.
pub fn approve(
    config: &Config,
    rules: &RuleSet,
    store: &mut Store,
    id: &str,
    by: &str,
    now: Timestamp,
) -> Result<Approved, ReviewError> {
    let stored = awaiting_review(store, id)?;
    let alert = stored.alert;
    let rule = rules
        .get(&alert.rule_id)
        .ok_or_else(|| ReviewError::RuleGone {
            id: id.to_string(),
            rule: alert.rule_id.clone(),
        })?;
    let mut emails = Vec::new();
    for delivery in route(&alert, rule, config, Audience::Notify) {
        if let Some(email) = render_with_fallback(&alert, rule, &delivery, config) {
            emails.push((delivery.partner.id.clone(), email));
        }
    }
    if !store.decide_review(id, AlertStatus::Approved, by, &emails, now)? {
        // Someone else decided between our read and our write.
        return Err(awaiting_review(store, id)
            .err()
            .unwrap_or_else(|| ReviewError::NotFound(id.to_string())));
    }
    Ok(Approved {
        partners: emails.into_iter().map(|(p, _)| p).collect(),
    })
}

/// Dismisses alert `id`: it goes no further.
pub fn dismiss(store: &mut Store, id: &str, by: &str, now: Timestamp) -> Result<(), ReviewError> {
    awaiting_review(store, id)?;
    if !store.decide_review(id, AlertStatus::Dismissed, by, &[], now)? {
        return Err(awaiting_review(store, id)
            .err()
            .unwrap_or_else(|| ReviewError::NotFound(id.to_string())));
    }
    Ok(())
}

fn awaiting_review(store: &Store, id: &str) -> Result<crate::store::StoredAlert, ReviewError> {
    let stored = store
        .alert(id)?
        .ok_or_else(|| ReviewError::NotFound(id.to_string()))?;
    if stored.status != AlertStatus::InReview {
        let decided = match (&stored.reviewed_by, stored.reviewed_at) {
            (Some(by), Some(at)) => format!(" (by {by} at {at})"),
            _ => String::new(),
        };
        return Err(ReviewError::NotInReview {
            id: id.to_string(),
            status: stored.status.as_str().replace('_', " "),
            decided,
        });
    }
    Ok(stored)
}

/// Who is deciding: `--by`, else the login name.
pub fn reviewer_name(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| {
            ["SUDO_USER", "USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok())
        })
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
