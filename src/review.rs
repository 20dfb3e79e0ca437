//! Review (SPEC §5.4): deciding an alert that went to reviewers as a draft.
//!
//! [`decide`] is the one code path for every decision, from the CLI and the
//! console alike. An approval applies the panel's [`Edits`] to the alert
//! (headline, advice, severity), routes it to the rule's `notify` partners
//! with the pipeline's own `route` and `render_deliveries` (minus the partners
//! left out) and puts the emails in the outbox, in the same transaction that
//! records the decision and its audit row, so a decision is never half done
//! and never sends twice. The running daemon's outbox picks the rows up.
//! With `approvals = N` the first N-1 approvals are only recorded; the Nth, by
//! a different person, sends with its own edits. A dismissal closes at once.
//!
//! Who may decide is the caller's [`Authority`], established from a
//! credential; this module never reads one itself (beyond the CLI's uid).

use crate::alerts::{Alert, AlertStatus, Approver, Assessment, Audience, route};
use crate::audit::Actor;
use crate::config::{Config, Severity};
use crate::rules::{Rule, RuleSet};
use crate::store::decisions::{DecisionRow, DecisionTx, Kind, NewDecision};
use crate::store::{Store, StoreError};
use jiff::Timestamp;
use std::collections::BTreeSet;

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
    #[error("--by {0}; give a plain name, up to {max} characters", max = MAX_DISPLAY_NAME_CHARS)]
    BadDisplayName(String),
    #[error(
        "you may not decide alert {0}: only reviewers of a partner in its rule's `review` list, or admins, may"
    )]
    NotAllowed(String),
    #[error("a dismissal needs a reason: say why the alert goes no further (--reason TEXT)")]
    ReasonRequired,
    #[error("you have already approved alert {0}; it needs another reviewer's approval")]
    AlreadyApproved(String),
    #[error("{0}")]
    BadEdit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a reviewer changes before an alert goes out. `None`: the rule's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Edits {
    pub headline: Option<String>,
    pub advice: Option<String>,
    pub severity: Option<Severity>,
    /// Partner ids of the rule's `notify` list that are not to be told.
    #[serde(default)]
    pub left_out: BTreeSet<String>,
}

/// A reviewer's decision on a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve(Edits),
    Dismiss { reason: String },
}

/// Who may decide (the caller establishes it from a credential): the CLI and
/// admin accounts are `Admin`; a reviewer account is `Reviewer { partner }`
/// and may decide only alerts whose rule's `review` lists that partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    Admin,
    Reviewer { partner: Option<String> },
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Sent: queued for these `notify` partners.
    Approved {
        partners: Vec<String>,
    },
    /// Recorded; the rule needs `need` approvals and has `have`.
    ApprovalRecorded {
        have: u32,
        need: u32,
    },
    Dismissed,
}

/// The longest headline an approval may give (it is a subject line).
pub const MAX_HEADLINE_CHARS: usize = 200;
/// The longest advice an approval may give.
pub const MAX_ADVICE_CHARS: usize = 4000;
/// The longest dismissal reason.
pub const MAX_REASON_CHARS: usize = 4000;

/// Alert ids are case-insensitive on input (SPEC §2): ids are Crockford
/// base 32 in capitals (`EW-…`), so `ew-abc` means `EW-ABC`.
pub fn normalise_id(id: &str) -> String {
    id.trim().to_ascii_uppercase()
}

/// Whether `authority` may decide alerts of `rule`.
pub fn may_decide(rule: &Rule, authority: &Authority) -> bool {
    match authority {
        Authority::Admin => true,
        Authority::Reviewer {
            partner: Some(partner),
        } => rule.review.iter().any(|r| r == partner),
        Authority::Reviewer { partner: None } => false,
    }
}

/// Decides alert `id` (case-insensitive) as `actor` with `authority`, now.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    config: &Config,
    rules: &RuleSet,
    store: &mut Store,
    id: &str,
    actor: &Actor,
    authority: &Authority,
    decision: Decision,
    now: Timestamp,
) -> Result<Decided, ReviewError> {
    let id = normalise_id(id);
    let partner = match authority {
        Authority::Admin => None,
        Authority::Reviewer { partner } => partner.as_deref(),
    };
    store.decide(|tx| {
        let stored = awaiting_review(tx, &id)?;
        let rule = rules.get(&stored.alert.rule_id);
        let allowed = match rule {
            Some(rule) => may_decide(rule, authority),
            // Nobody can say whose review a vanished rule was: only an admin may close it.
            None => *authority == Authority::Admin,
        };
        if !allowed {
            return Err(ReviewError::NotAllowed(id.clone()));
        }
        match decision {
            Decision::Dismiss { reason } => {
                let reason = valid_reason(&reason)?;
                tx.record(&NewDecision {
                    alert_id: &id,
                    actor,
                    partner,
                    at: now,
                    kind: Kind::Dismiss(&reason),
                })?;
                close(tx, &id, AlertStatus::Dismissed, &recorded(actor), None, now)?;
                Ok(Decided::Dismissed)
            }
            Decision::Approve(edits) => {
                let rule = rule.ok_or_else(|| ReviewError::RuleGone {
                    id: id.clone(),
                    rule: stored.alert.rule_id.clone(),
                })?;
                let edits = validated(edits, rule)?;
                let earlier: Vec<DecisionRow> = tx
                    .decisions_of(&id)?
                    .into_iter()
                    .filter(|d| d.kind == "approve")
                    .collect();
                if earlier.iter().any(|d| d.actor == actor.id) {
                    return Err(ReviewError::AlreadyApproved(id.clone()));
                }
                tx.record(&NewDecision {
                    alert_id: &id,
                    actor,
                    partner,
                    at: now,
                    kind: Kind::Approve(&edits),
                })?;
                let have = earlier.len() as u32 + 1;
                let need = rule.approvals.max(1);
                if have < need {
                    return Ok(Decided::ApprovalRecorded { have, need });
                }
                let partner_name = |p: Option<&str>| {
                    p.map(|p| config.partner(p).map_or(p, |c| c.name.as_str()).to_string())
                };
                let mut approvers: Vec<Approver> = earlier
                    .iter()
                    .map(|d| Approver {
                        name: d.display.clone(),
                        partner: partner_name(d.partner.as_deref()),
                    })
                    .collect();
                approvers.push(Approver {
                    name: actor.display.clone(),
                    partner: partner_name(partner),
                });
                let mut by: Vec<String> = earlier
                    .iter()
                    .map(|d| recorded_as(&d.display, &d.actor))
                    .collect();
                by.push(recorded(actor));
                let alert = assessed(stored.alert, &edits, approvers, now);
                let emails = render_approved(config, rules, rule, &alert, &edits, |t, p| {
                    tx.first_in_thread(t, p)
                })?;
                close(
                    tx,
                    &id,
                    AlertStatus::Approved,
                    &by.join(" and "),
                    Some((&alert, &emails)),
                    now,
                )?;
                Ok(Decided::Approved {
                    partners: emails.into_iter().map(|(p, _)| p).collect(),
                })
            }
        }
    })
}

/// The alert as it goes out: the panel's wording and severity applied.
fn assessed(mut alert: Alert, edits: &Edits, approvers: Vec<Approver>, now: Timestamp) -> Alert {
    if let Some(severity) = edits.severity {
        alert.severity = severity;
    }
    alert.status = AlertStatus::Approved;
    alert.assessment = Some(Assessment {
        headline: edits.headline.clone(),
        advice: edits.advice.clone(),
        severity: edits.severity,
        left_out: edits.left_out.clone(),
        approvers,
        approved_at: now,
    });
    alert
}

/// The approved alert's emails to `notify`, without the partners left out,
/// through the pipeline's own routing and rendering.
fn render_approved(
    config: &Config,
    rules: &RuleSet,
    rule: &Rule,
    alert: &Alert,
    edits: &Edits,
    first_in_thread: impl FnMut(&str, &str) -> Result<Option<String>, StoreError>,
) -> Result<Vec<(String, crate::alerts::render::RenderedEmail)>, ReviewError> {
    let deliveries: Vec<_> = route(alert, rule, config, Audience::Notify)
        .into_iter()
        .filter(|d| !edits.left_out.contains(&d.partner.id))
        .collect();
    // A reviewer who is also on `notify` gets the approved alert as a reply
    // to its draft: one conversation, draft then decision.
    Ok(crate::pipeline::render_deliveries(
        config,
        alert,
        rule,
        &rules.templates,
        &deliveries,
        first_in_thread,
    )?
    .into_iter()
    .map(|o| (o.partner_id, o.email))
    .collect())
}

fn close(
    tx: &DecisionTx<'_>,
    id: &str,
    status: AlertStatus,
    by: &str,
    approved: Option<(&Alert, &[(String, crate::alerts::render::RenderedEmail)])>,
    now: Timestamp,
) -> Result<(), ReviewError> {
    if tx.close(id, status, by, approved, now)? {
        Ok(())
    } else {
        // Unreachable while the transaction holds the write lock; said plainly if not.
        Err(awaiting_review(tx, id)
            .err()
            .unwrap_or_else(|| ReviewError::NotFound(id.to_string())))
    }
}

/// How `alerts show` names a decider: the display name beside the account
/// when they differ, `J Smith (unix:jsmith)`, else the account alone.
fn recorded(actor: &Actor) -> String {
    recorded_as(&actor.display, &actor.id)
}

fn recorded_as(display: &str, actor_id: &str) -> String {
    let account = actor_id.split_once(':').map_or(actor_id, |(_, name)| name);
    if display == account || display == actor_id {
        actor_id.to_string()
    } else {
        format!("{display} ({actor_id})")
    }
}

/// The edits checked against the rule (SPEC §5.4), trimmed; untrusted text
/// that would break a subject line or smuggle controls into a terminal is refused.
pub fn validated(edits: Edits, rule: &Rule) -> Result<Edits, ReviewError> {
    let headline = edits
        .headline
        .map(|h| {
            let h = h.trim().to_string();
            if h.is_empty() {
                return Err(ReviewError::BadEdit(
                    "the headline is empty; leave it out to keep the rule's".into(),
                ));
            }
            if h.chars().count() > MAX_HEADLINE_CHARS {
                return Err(ReviewError::BadEdit(format!(
                    "the headline is longer than {MAX_HEADLINE_CHARS} characters"
                )));
            }
            if crate::display::contains_controls(&h) {
                return Err(ReviewError::BadEdit(
                    "the headline must be one line, without control characters".into(),
                ));
            }
            Ok(h)
        })
        .transpose()?;
    let advice = edits
        .advice
        .map(|a| {
            let a = a.replace("\r\n", "\n").trim().to_string();
            if a.is_empty() {
                return Err(ReviewError::BadEdit(
                    "the advice is empty; leave it out to keep the rule's".into(),
                ));
            }
            if a.chars().count() > MAX_ADVICE_CHARS {
                return Err(ReviewError::BadEdit(format!(
                    "the advice is longer than {MAX_ADVICE_CHARS} characters"
                )));
            }
            if a.split('\n').any(crate::display::contains_controls) {
                return Err(ReviewError::BadEdit(
                    "the advice holds control characters (other than new lines)".into(),
                ));
            }
            Ok(a)
        })
        .transpose()?;
    for partner in &edits.left_out {
        if !rule.notify.iter().any(|n| n == partner) {
            let hint =
                match crate::diagnostic::suggest(partner, rule.notify.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("its notify partners are: {}", rule.notify.join(", ")),
                };
            return Err(ReviewError::BadEdit(format!(
                "cannot leave out `{}`: it is not a notify partner of rule `{}`; {hint}",
                crate::display::escape_controls(partner),
                rule.id
            )));
        }
    }
    Ok(Edits {
        headline,
        advice,
        severity: edits.severity,
        left_out: edits.left_out,
    })
}

fn valid_reason(reason: &str) -> Result<String, ReviewError> {
    let reason = reason.replace("\r\n", "\n").trim().to_string();
    if reason.is_empty() {
        return Err(ReviewError::ReasonRequired);
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ReviewError::BadEdit(format!(
            "the reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    if reason.split('\n').any(crate::display::contains_controls) {
        return Err(ReviewError::BadEdit(
            "the reason holds control characters (other than new lines)".into(),
        ));
    }
    Ok(reason)
}

/// What one `notify` partner would get if the alert were approved with some edits now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartnerPreview {
    pub partner_id: String,
    pub name: String,
    /// Whether the partner signed the Information Sharing Agreement.
    pub isa: bool,
    pub receives: bool,
    /// Why not, in words, when it does not receive it.
    pub why_not: Option<String>,
    /// Field names redaction withholds from it.
    pub withheld: Vec<String>,
}

/// What each `notify` partner would get if `alert` were approved with `edits`
/// now: receives or not (and why not: left out, below its `min_severity`,
/// covers none of the districts), and the fields redaction withholds from it.
pub fn preview(
    config: &Config,
    rules: &RuleSet,
    alert: &Alert,
    edits: &Edits,
) -> Result<Vec<PartnerPreview>, ReviewError> {
    let rule = rules
        .get(&alert.rule_id)
        .ok_or_else(|| ReviewError::RuleGone {
            id: alert.id.clone(),
            rule: alert.rule_id.clone(),
        })?;
    let edits = validated(edits.clone(), rule)?;
    let mut assessed = alert.clone();
    if let Some(severity) = edits.severity {
        assessed.severity = severity;
    }
    let deliveries = route(&assessed, rule, config, Audience::Notify);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in &rule.notify {
        let Some(partner) = config.partner(id) else {
            continue;
        };
        if !seen.insert(id.as_str()) {
            continue;
        }
        let delivery = deliveries.iter().find(|d| d.partner.id == *id);
        let why_not = if edits.left_out.contains(id) {
            Some("left out by the reviewer".to_string())
        } else if assessed.severity < partner.min_severity {
            Some(format!(
                "below its minimum severity ({})",
                partner.min_severity.as_str()
            ))
        } else if delivery.is_none() {
            Some("covers none of the alert's districts".to_string())
        } else {
            None
        };
        out.push(PartnerPreview {
            partner_id: partner.id.clone(),
            name: partner.name.clone(),
            isa: partner.isa,
            receives: why_not.is_none(),
            why_not,
            withheld: delivery
                .map(|d| d.withheld.iter().cloned().collect())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

fn awaiting_review(
    tx: &DecisionTx<'_>,
    id: &str,
) -> Result<crate::store::StoredAlert, ReviewError> {
    let stored = tx
        .alert(id)?
        .ok_or_else(|| ReviewError::NotFound(id.to_string()))?;
    if stored.status != AlertStatus::InReview {
        let decided = match (&stored.reviewed_by, stored.reviewed_at) {
            (Some(by), Some(at)) => {
                format!(" (by {} at {at})", crate::display::escape_controls(by))
            }
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

/// The longest `--by` display name accepted.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// Who is deciding, as recorded: the Unix account that runs the command (from
/// its uid, never from `SUDO_USER`, `USER` or `LOGNAME`, which anyone can
/// set), with the optional `--by` display name in front: `J Smith (unix:jsmith)`.
pub fn decider(display_name: Option<&str>) -> Result<String, ReviewError> {
    recorded_decider(display_name, &unix_account())
}

/// How the CLI's decider is named in emails: the `--by` name if given
/// (checked like [`decider`]), else the Unix account.
pub fn display_name(display_name: Option<&str>) -> Result<String, ReviewError> {
    let account = unix_account();
    recorded_decider(display_name, &account)?;
    Ok(display_name.map_or(account, |name| name.trim().to_string()))
}

/// [`decider`] for a given account name. Pure.
fn recorded_decider(display_name: Option<&str>, account: &str) -> Result<String, ReviewError> {
    let account = format!("unix:{account}");
    let Some(name) = display_name else {
        return Ok(account);
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(ReviewError::BadDisplayName("is empty".into()));
    }
    if crate::display::contains_controls(name) {
        return Err(ReviewError::BadDisplayName(format!(
            "`{}` holds control characters (a newline, an escape sequence)",
            crate::display::escape_controls(name)
        )));
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(ReviewError::BadDisplayName(format!(
            "is longer than {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    Ok(format!("{name} ({account})"))
}

/// The name of the account of this process's real uid, or the number when the
/// account database has no entry for it.
pub fn unix_account() -> String {
    // SAFETY: getuid cannot fail and has no preconditions.
    let uid = unsafe { libc::getuid() };
    account_name(uid).unwrap_or_else(|| uid.to_string())
}

fn account_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `passwd` is plain data that getpwuid_r fills; `buf` outlives
        // every pointer into it, and we pass its true length.
        let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut passwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || result.is_null() || passwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(passwd.pw_name) };
        let name = name.to_string_lossy().into_owned();
        return (!name.is_empty()).then_some(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_always_recorded_and_a_display_name_only_beside_it() {
        assert_eq!(recorded_decider(None, "jsmith").unwrap(), "unix:jsmith");
        assert_eq!(
            recorded_decider(Some(" J Smith "), "jsmith").unwrap(),
            "J Smith (unix:jsmith)"
        );
        for bad in [
            "",
            "  ",
            "Dr A. Chair\nDecided   by someone else",
            "\x1b]8;;http://evil\x07x",
            "a\u{202e}b",
        ] {
            assert!(
                matches!(
                    recorded_decider(Some(bad), "jsmith"),
                    Err(ReviewError::BadDisplayName(_))
                ),
                "accepted {bad:?}"
            );
        }
        let long = "x".repeat(MAX_DISPLAY_NAME_CHARS + 1);
        assert!(recorded_decider(Some(&long), "jsmith").is_err());
        assert!(recorded_decider(Some(&long[1..]), "jsmith").is_ok());
    }

    #[test]
    fn the_account_comes_from_the_uid() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let name = unix_account();
        assert!(!name.is_empty());
        if uid == 0 {
            assert_eq!(name, "root");
        }
        assert_eq!(account_name(uid).unwrap_or_else(|| uid.to_string()), name);
    }
}
