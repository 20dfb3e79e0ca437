//! Review (SPEC §5.4): approving or dismissing an alert that went to reviewers as a draft.
//!
//! Approval routes the stored alert to the rule's `notify` partners, renders
//! their emails and puts them in the outbox in the same transaction that
//! records who approved it and when, so an approval is never half done and
//! never sends twice. The running daemon's outbox picks the rows up.

use crate::alerts::{AlertStatus, Audience, route};
use crate::config::Config;
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
    #[error("--by {0}; give a plain name, up to {max} characters", max = MAX_DISPLAY_NAME_CHARS)]
    BadDisplayName(String),
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
    let deliveries = route(&alert, rule, config, Audience::Notify);
    // A reviewer who is also on `notify` gets the approved alert as a reply
    // to its draft: one conversation, draft then decision.
    let emails: Vec<_> = crate::pipeline::render_deliveries(
        config,
        &alert,
        rule,
        &rules.templates,
        &deliveries,
        |thread, partner| store.first_in_thread(thread, partner),
    )?
    .into_iter()
    .map(|o| (o.partner_id, o.email))
    .collect();
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
