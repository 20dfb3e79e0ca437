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
                let edits = validated_for(edits, rule, &stored.alert)?;
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
                let ack_key = match &config.web {
                    Some(_) => Some(tx.ack_key()?),
                    None => None,
                };
                let emails = render_approved(
                    config,
                    rules,
                    rule,
                    &alert,
                    &edits,
                    |t, p| tx.first_in_thread(t, p),
                    ack_key.as_ref(),
                    now,
                )?;
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
/// through the pipeline's own routing and rendering, with their
/// acknowledgement links when `ack_key` is given (signed at `now`).
#[allow(clippy::too_many_arguments)]
fn render_approved(
    config: &Config,
    rules: &RuleSet,
    rule: &Rule,
    alert: &Alert,
    edits: &Edits,
    first_in_thread: impl FnMut(&str, &str) -> Result<Option<String>, StoreError>,
    ack_key: Option<&[u8; 32]>,
    now: Timestamp,
) -> Result<Vec<(String, crate::alerts::render::RenderedEmail)>, ReviewError> {
    let deliveries: Vec<_> = route(alert, rule, config, Audience::Notify)
        .into_iter()
        .filter(|d| !edits.left_out.contains(&d.partner.id))
        .collect();
    // A reviewer who is also on `notify` gets the approved alert as a reply
    // to its draft: one conversation, draft then decision.
    Ok(crate::pipeline::render_deliveries_with_acks(
        config,
        alert,
        rule,
        &rules.templates,
        &deliveries,
        first_in_thread,
        crate::pipeline::ack_links(config, ack_key, &alert.id, now),
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
    validate(edits, rule, &rule.notify)
}

/// [`validated`] for `alert`: a merged alert's partners to leave out are
/// those of every rule it names (`alerts::notify_ids`).
pub fn validated_for(edits: Edits, rule: &Rule, alert: &Alert) -> Result<Edits, ReviewError> {
    validate(edits, rule, &crate::alerts::notify_ids(alert, rule))
}

fn validate(edits: Edits, rule: &Rule, notify: &[String]) -> Result<Edits, ReviewError> {
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
        if !notify.iter().any(|n| n == partner) {
            let hint = match crate::diagnostic::suggest(partner, notify.iter().map(String::as_str))
            {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("its notify partners are: {}", notify.join(", ")),
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
    let edits = validated_for(edits.clone(), rule, alert)?;
    let mut assessed = alert.clone();
    if let Some(severity) = edits.severity {
        assessed.severity = severity;
    }
    let deliveries = route(&assessed, rule, config, Audience::Notify);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for id in &crate::alerts::notify_ids(alert, rule) {
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
    use crate::alerts::Trigger;
    use crate::event::{Event, Fields, Value};
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::{Path, PathBuf};

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            r#"
[mail]
transport = "file"
from = "earlywarn@example.org"
[daemon]
timezone = "Europe/London"
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
id = "bolton"
name = "Bolton Council"
emails = ["b@example.org"]
isa = true
districts = ["Bolton"]
[[partner]]
id = "charity"
name = "Street Charity"
emails = ["c@example.org"]
[[partner]]
id = "nhs"
name = "NHS Trust"
emails = ["n@example.org"]
isa = true
min_severity = "critical"
"#,
        )
        .unwrap()
    }

    fn rules(config: &Config, extra: &str) -> RuleSet {
        RuleSet::from_sources(
            config,
            &[(
                PathBuf::from("r.toml"),
                format!("[[rule]]\nid = \"nitazene\"\nname = \"Nitazene\"\nfeed = \"drug_testing\"\nseverity = \"warning\"\nreview = [\"panel\"]\nnotify = [\"bolton\", \"charity\", \"nhs\"]\nadvice = \"Carry naloxone.\"\n{extra}"),
            )],
        )
        .unwrap()
    }

    fn alert(district: &str) -> Alert {
        let mut fields = Fields::default();
        fields.insert("district", Value::Text(district.into()));
        fields.insert("notes", Value::Text("seized near the park".into()));
        Alert {
            id: "EW-ABC123".into(),
            rule_id: "nitazene".into(),
            group: BTreeMap::new(),
            district: Some(district.into()),
            severity: Severity::Warning,
            created_at: "2026-03-01T10:00:00Z".parse().unwrap(),
            event_count: 1,
            suppressed_before: 0,
            events: vec![Event {
                feed: "drug_testing".into(),
                record_id: Some("S1".into()),
                time: "2026-03-01T09:00:00Z".parse().unwrap(),
                fields,
            }],
            status: AlertStatus::InReview,
            trigger: Trigger::Match,
            assessment: None,
            reasons: Vec::new(),
        }
    }

    /// A real database holding one draft.
    fn store_with_draft(dir: &Path) -> Store {
        let mut store = Store::open(dir).unwrap();
        let a = alert("Bolton");
        let tx = store.begin().unwrap();
        tx.insert_alert(&a, &serde_json::to_string(&a).unwrap())
            .unwrap();
        tx.commit().unwrap();
        store
    }

    fn web(name: &str) -> Actor {
        Actor::web(name, &format!("Dr {name}"), IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn panel() -> Authority {
        Authority::Reviewer {
            partner: Some("panel".into()),
        }
    }

    fn now() -> Timestamp {
        "2026-03-01T11:00:00Z".parse().unwrap()
    }

    #[test]
    fn edits_are_validated() {
        let config = config();
        let rules = rules(&config, "");
        let rule = rules.get("nitazene").unwrap();
        let check = |edits: Edits| validated(edits, rule);
        let headline = |h: &str| Edits {
            headline: Some(h.into()),
            ..Edits::default()
        };
        let advice = |a: &str| Edits {
            advice: Some(a.into()),
            ..Edits::default()
        };
        for bad in [
            headline(""),
            headline("  "),
            headline("two\nlines"),
            headline("x\r\nBcc: y"),
            headline("\u{1b}[31mred"),
            headline(&"x".repeat(201)),
            advice(&"x".repeat(4001)),
            advice("ring \u{7} now"),
            advice(""),
        ] {
            assert!(
                matches!(check(bad.clone()), Err(ReviewError::BadEdit(_))),
                "accepted {bad:?}"
            );
        }
        assert_eq!(
            check(headline(&format!(" {} ", "x".repeat(200))))
                .unwrap()
                .headline
                .unwrap()
                .len(),
            200
        );
        assert_eq!(
            check(advice("Carry naloxone.\r\nCall 999.\n"))
                .unwrap()
                .advice
                .as_deref(),
            Some("Carry naloxone.\nCall 999.")
        );
        let left_out = |p: &str| Edits {
            left_out: BTreeSet::from([p.to_string()]),
            ..Edits::default()
        };
        assert!(check(left_out("charity")).is_ok());
        let err = check(left_out("charty")).unwrap_err().to_string();
        assert!(err.contains("did you mean `charity`?"), "{err}");
        // A reviewer is not a notify partner: there is nothing to leave out.
        let err = check(left_out("panel")).unwrap_err().to_string();
        assert!(err.contains("not a notify partner"), "{err}");
        assert!(matches!(
            valid_reason(" \n "),
            Err(ReviewError::ReasonRequired)
        ));
        assert_eq!(valid_reason(" duplicate ").unwrap(), "duplicate");
    }

    #[test]
    fn who_may_decide() {
        let config = config();
        let rules = rules(&config, "");
        let rule = rules.get("nitazene").unwrap();
        assert!(may_decide(rule, &Authority::Admin));
        assert!(may_decide(rule, &panel()));
        let other = Authority::Reviewer {
            partner: Some("bolton".into()),
        };
        assert!(
            !may_decide(rule, &other),
            "bolton is not a reviewer of this rule"
        );
        let viewer_like = Authority::Reviewer { partner: None };
        assert!(!may_decide(rule, &viewer_like));

        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_draft(dir.path());
        for authority in [other, viewer_like] {
            for decision in [
                Decision::Approve(Edits::default()),
                Decision::Dismiss {
                    reason: "no".into(),
                },
            ] {
                let got = decide(
                    &config,
                    &rules,
                    &mut store,
                    "ew-abc123",
                    &web("x"),
                    &authority,
                    decision,
                    now(),
                );
                assert!(matches!(got, Err(ReviewError::NotAllowed(_))), "{got:?}");
            }
        }
        assert!(store.decisions_of("EW-ABC123").unwrap().is_empty());
        assert!(store.deliveries_of("EW-ABC123").unwrap().is_empty());
        assert_eq!(
            store.alert("ew-abc123").unwrap().unwrap().status,
            AlertStatus::InReview
        );
        // An admin decides, with a lower-case id.
        let got = decide(
            &config,
            &rules,
            &mut store,
            " ew-abc123 ",
            &web("root"),
            &Authority::Admin,
            Decision::Approve(Edits::default()),
            now(),
        )
        .unwrap();
        assert_eq!(
            got,
            Decided::Approved {
                partners: vec!["bolton".into(), "charity".into()]
            },
            "nhs takes only critical alerts"
        );
    }

    #[test]
    fn two_approvals_need_two_people_and_send_the_second_ones_edits() {
        let config = config();
        let rules = rules(&config, "approvals = 2\n");
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_draft(dir.path());
        let first = Edits {
            headline: Some("First wording".into()),
            ..Edits::default()
        };
        let got = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ana"),
            &panel(),
            Decision::Approve(first.clone()),
            now(),
        )
        .unwrap();
        assert_eq!(got, Decided::ApprovalRecorded { have: 1, need: 2 });
        assert!(
            store.deliveries_of("EW-ABC123").unwrap().is_empty(),
            "nothing sent yet"
        );
        let again = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ana"),
            &panel(),
            Decision::Approve(first),
            now(),
        );
        assert!(
            matches!(again, Err(ReviewError::AlreadyApproved(_))),
            "{again:?}"
        );

        let second = Edits {
            headline: Some("Strong nitazene in Bolton".into()),
            severity: Some(Severity::Critical),
            left_out: BTreeSet::from(["charity".to_string()]),
            ..Edits::default()
        };
        let got = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ben"),
            &Authority::Admin,
            Decision::Approve(second.clone()),
            now(),
        )
        .unwrap();
        assert_eq!(
            got,
            Decided::Approved {
                partners: vec!["bolton".into(), "nhs".into()]
            },
            "critical now reaches nhs; charity was left out"
        );
        let stored = store.alert("EW-ABC123").unwrap().unwrap();
        assert_eq!(stored.status, AlertStatus::Approved);
        assert_eq!(stored.alert.severity, Severity::Critical);
        assert_eq!(
            stored.reviewed_by.as_deref(),
            Some("Dr ana (web:ana) and Dr ben (web:ben)")
        );
        let assessment = stored.alert.assessment.unwrap();
        assert_eq!(
            assessment.headline.as_deref(),
            Some("Strong nitazene in Bolton")
        );
        assert_eq!(
            assessment.approvers,
            [
                Approver {
                    name: "Dr ana".into(),
                    partner: Some("Drug Panel".into())
                },
                Approver {
                    name: "Dr ben".into(),
                    partner: None
                },
            ]
        );
        let decisions = store.decisions_of("ew-abc123").unwrap();
        assert_eq!(decisions.len(), 2);
        assert_eq!(decisions[1].edits.as_ref(), Some(&second));
        assert_eq!(decisions[0].partner.as_deref(), Some("panel"));
        let audit = store.audit_of_alert("EW-ABC123").unwrap();
        let actions: Vec<(&str, &str)> = audit
            .iter()
            .map(|a| (a.action.as_str(), a.actor.as_str()))
            .collect();
        assert_eq!(actions, [("approve", "web:ana"), ("approve", "web:ben")]);
        let late = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("cat"),
            &panel(),
            Decision::Dismiss {
                reason: "late".into(),
            },
            now(),
        );
        assert!(
            matches!(late, Err(ReviewError::NotInReview { .. })),
            "{late:?}"
        );
    }

    #[test]
    fn a_dismissal_closes_at_once_and_needs_a_reason() {
        let config = config();
        let rules = rules(&config, "approvals = 2\n");
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_draft(dir.path());
        decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ana"),
            &panel(),
            Decision::Approve(Edits::default()),
            now(),
        )
        .unwrap();
        let got = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ben"),
            &panel(),
            Decision::Dismiss {
                reason: "  ".into(),
            },
            now(),
        );
        assert!(matches!(got, Err(ReviewError::ReasonRequired)), "{got:?}");
        let got = decide(
            &config,
            &rules,
            &mut store,
            "EW-ABC123",
            &web("ben"),
            &panel(),
            Decision::Dismiss {
                reason: "a duplicate of EW-X".into(),
            },
            now(),
        )
        .unwrap();
        assert_eq!(got, Decided::Dismissed);
        assert_eq!(
            store.alert("EW-ABC123").unwrap().unwrap().status,
            AlertStatus::Dismissed
        );
        assert!(store.deliveries_of("EW-ABC123").unwrap().is_empty());
        let decisions = store.decisions_of("EW-ABC123").unwrap();
        assert_eq!(decisions[1].reason.as_deref(), Some("a duplicate of EW-X"));
        let audit = store.audit_of_alert("EW-ABC123").unwrap();
        assert_eq!(audit[1].action, "dismiss");
        assert_eq!(audit[1].detail["reason"], "a duplicate of EW-X");
    }

    #[test]
    fn the_preview_says_who_receives_it_and_what_is_withheld() {
        let config = config();
        let rules = rules(&config, "");
        let draft = alert("Bolton");
        let got = preview(&config, &rules, &draft, &Edits::default()).unwrap();
        let by_id = |id: &str| got.iter().find(|p| p.partner_id == id).unwrap().clone();
        assert_eq!(got.len(), 3);
        let charity = by_id("charity");
        assert!(charity.receives && !charity.isa);
        assert_eq!(charity.withheld, ["notes"], "no ISA, no notes");
        assert!(by_id("bolton").receives);
        assert!(by_id("bolton").withheld.is_empty());
        assert_eq!(
            by_id("nhs").why_not.as_deref(),
            Some("below its minimum severity (critical)")
        );

        let edits = Edits {
            severity: Some(Severity::Critical),
            left_out: BTreeSet::from(["charity".to_string()]),
            ..Edits::default()
        };
        let got = preview(&config, &rules, &alert("Wigan"), &edits).unwrap();
        let by_id = |id: &str| got.iter().find(|p| p.partner_id == id).unwrap().clone();
        assert!(by_id("nhs").receives);
        assert_eq!(
            by_id("charity").why_not.as_deref(),
            Some("left out by the reviewer")
        );
        assert_eq!(
            by_id("charity").withheld,
            ["notes"],
            "still shown for a partner left out"
        );
        assert_eq!(
            by_id("bolton").why_not.as_deref(),
            Some("covers none of the alert's districts")
        );
        let bad = Edits {
            left_out: BTreeSet::from(["nobody".to_string()]),
            ..Edits::default()
        };
        assert!(matches!(
            preview(&config, &rules, &draft, &bad),
            Err(ReviewError::BadEdit(_))
        ));
    }

    #[test]
    fn the_approved_email_carries_the_edits_and_who_approved_it() {
        let config = config();
        let rules = rules(&config, "");
        let rule = rules.get("nitazene").unwrap();
        let edits = Edits {
            headline: Some("<b>Strong</b> batch".into()),
            advice: Some("Test your drugs.\nCarry <naloxone>.".into()),
            severity: Some(Severity::Critical),
            left_out: BTreeSet::from(["nhs".to_string()]),
        };
        let approvers = vec![Approver {
            name: "Dr A <Chair>".into(),
            partner: Some("Drug Panel".into()),
        }];
        let assessed = assessed(alert("Bolton"), &edits, approvers, now());
        let emails = render_approved(
            &config,
            &rules,
            rule,
            &assessed,
            &edits,
            |_, _| Ok(None),
            None,
            now(),
        )
        .unwrap();
        let partners: Vec<&str> = emails.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(partners, ["bolton", "charity"]);
        let email = &emails[0].1;
        assert!(
            email.subject.ends_with("[CRITICAL] <b>Strong</b> batch"),
            "{}",
            email.subject
        );
        let line =
            "Assessed and approved by Dr A <Chair> (Drug Panel) on Sun 1 Mar 2026 11:00 GMT.";
        let top: Vec<&str> = email.text.lines().take(5).collect();
        assert!(top.contains(&line), "{}", email.text);
        assert!(
            email.text.contains("<b>Strong</b> batch\n"),
            "{}",
            email.text
        );
        assert!(
            email
                .text
                .contains("WHAT TO DO\nTest your drugs.\nCarry <naloxone>."),
            "{}",
            email.text
        );
        assert!(
            !email.text.contains("Carry naloxone."),
            "the rule's advice is replaced"
        );
        assert!(
            email
                .html
                .contains("Assessed and approved by Dr A &lt;Chair&gt; (Drug Panel)"),
            "{}",
            email.html
        );
        assert!(
            email.html.contains("&lt;b&gt;Strong&lt;/b&gt; batch"),
            "{}",
            email.html
        );
        assert!(!email.html.contains("<b>Strong"), "{}", email.html);
        assert!(
            email.html.contains("Carry &lt;naloxone&gt;."),
            "{}",
            email.html
        );
        let raw = String::from_utf8_lossy(&email.bytes);
        assert!(raw.contains("X-Earlywarn-Severity: critical"), "{raw}");
    }

    #[test]
    fn the_draft_links_to_the_console_when_there_is_one() {
        let mut config = config();
        let rules = rules(&config, "");
        let rule = rules.get("nitazene").unwrap();
        let draft = alert("Bolton");
        let render = |config: &Config| {
            let deliveries = route(&draft, rule, config, Audience::Review);
            crate::pipeline::render_deliveries(
                config,
                &draft,
                rule,
                &rules.templates,
                &deliveries,
                |_, _| Ok::<_, StoreError>(None),
            )
            .unwrap()
            .remove(0)
            .email
            .text
        };
        let text = render(&config);
        assert!(
            text.contains("To send it: earlywarn alerts approve EW-ABC123"),
            "{text}"
        );
        config.web = Some(crate::config::WebConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: "https://ew.example.org".into(),
            tls: None,
            session_idle: crate::config::DEFAULT_SESSION_IDLE,
            max_connections: crate::config::DEFAULT_WEB_MAX_CONNECTIONS,
        });
        let text = render(&config);
        assert!(
            text.contains("Assess it at https://ew.example.org/alerts/EW-ABC123 (or on the server: earlywarn alerts approve EW-ABC123"),
            "{text}"
        );
    }

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
