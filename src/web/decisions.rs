//! The decision form on a draft's page and its two POSTs (SPEC §5.4, §9):
//! approve with edits (headline, advice, severity, partners left out) or
//! dismiss with a reason. Both go through `review::decide`, the one code
//! path the CLI uses too, as `Actor::web(account, display, client IP)` with
//! the account's authority; this module only reads the form and says what
//! happened.

use super::auth::{Session, check_post};
use super::pages::Choice;
use super::{WebError, WebState};
use crate::alerts::Alert;
use crate::audit::Actor;
use crate::config::{Config, Severity};
use crate::review::{self, Authority, Decided, Decision, Edits, ReviewError};
use crate::rules::{Rule, RuleSet};
use crate::store::decisions::DecisionRow;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// One `notify` partner on the form: ticked means it receives the alert.
#[derive(Debug, Serialize)]
pub struct PartnerChoice {
    pub id: String,
    pub name: String,
    pub ticked: bool,
    pub isa: bool,
    /// What approving as the form stands would do for it, in words.
    pub outcome: String,
    /// Fields redaction withholds from it ("" when none).
    pub withheld: String,
}

#[derive(Debug, Serialize)]
pub struct DecisionForm {
    pub approve_action: String,
    pub dismiss_action: String,
    pub csrf: String,
    pub headline: String,
    pub advice: String,
    pub severities: Vec<Choice>,
    pub partners: Vec<PartnerChoice>,
    /// `approvals` of the rule, when more than one is needed.
    pub need: u32,
    pub have: u32,
    /// Those who approved already, with their edits.
    pub approved_by: Vec<String>,
}

/// The decision form for a draft, for an account with `authority`; `None`
/// when it may not decide it (or the alert is not a draft, or its rule is gone).
pub fn form(
    config: &Config,
    rules: &RuleSet,
    alert: &Alert,
    status: &str,
    decisions: &[DecisionRow],
    authority: Option<&Authority>,
    csrf: &str,
) -> Option<DecisionForm> {
    let authority = authority?;
    if status != "in_review" {
        return None;
    }
    let rule = rules.get(&alert.rule_id)?;
    if !review::may_decide(rule, authority) {
        return None;
    }
    let approvals: Vec<&DecisionRow> = decisions.iter().filter(|d| d.kind == "approve").collect();
    // A second approver starts from what the first approved, and may change it.
    let pending = approvals
        .last()
        .and_then(|d| d.edits.clone())
        .unwrap_or_default();
    let previews = review::preview(config, rules, alert, &pending).ok()?;
    let severity = pending.severity.unwrap_or(alert.severity);
    let href = super::pages::alert_href(&alert.id);
    Some(DecisionForm {
        approve_action: format!("{href}/approve"),
        dismiss_action: format!("{href}/dismiss"),
        csrf: csrf.to_string(),
        headline: pending.headline.clone().unwrap_or_default(),
        advice: pending
            .advice
            .clone()
            .or_else(|| rule.advice.clone())
            .unwrap_or_default(),
        severities: [Severity::Critical, Severity::Warning, Severity::Info]
            .iter()
            .map(|s| Choice {
                value: s.as_str().to_string(),
                label: s.as_str().to_string(),
                selected: *s == severity,
            })
            .collect(),
        partners: previews
            .into_iter()
            .map(|p| PartnerChoice {
                ticked: !pending.left_out.contains(&p.partner_id),
                outcome: match (&p.why_not, p.receives) {
                    (_, true) => "receives it".to_string(),
                    (Some(why), false) => format!("does not receive it: {why}"),
                    (None, false) => "does not receive it".to_string(),
                },
                withheld: p.withheld.join(", "),
                id: p.partner_id,
                name: p.name,
                isa: p.isa,
            })
            .collect(),
        need: rule.approvals.max(1),
        have: approvals.len() as u32,
        approved_by: approvals
            .iter()
            .map(|d| {
                let edits = d
                    .edits
                    .as_ref()
                    .map(super::pages::edits_words)
                    .unwrap_or_default();
                format!("{} ({edits})", d.display)
            })
            .collect(),
    })
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The edits a submitted form asks for: only what differs from the draft.
/// Unticked `notify` partners are left out.
pub fn edits_from_form(
    fields: &[(String, String)],
    rule: &Rule,
    alert: &Alert,
) -> Result<Edits, String> {
    let headline = field(fields, "headline").trim();
    let advice = field(fields, "advice").trim();
    let severity = match field(fields, "severity").trim() {
        "" => None,
        s => {
            let s = Severity::parse(s).ok_or("Choose a severity from the list.")?;
            (s != alert.severity).then_some(s)
        }
    };
    let ticked: BTreeSet<&str> = fields
        .iter()
        .filter(|(k, _)| k == "partner")
        .map(|(_, v)| v.as_str())
        .collect();
    Ok(Edits {
        headline: (!headline.is_empty()).then(|| headline.to_string()),
        advice: (!advice.is_empty() && Some(advice) != rule.advice.as_deref().map(str::trim))
            .then(|| advice.to_string()),
        severity,
        left_out: rule
            .notify
            .iter()
            .filter(|p| !ticked.contains(p.as_str()))
            .cloned()
            .collect(),
    })
}

/// A refused decision in the console's words (the CLI's name its flags).
fn refusal(e: ReviewError) -> WebError {
    match e {
        ReviewError::NotAllowed(_) => WebError::Forbidden,
        ReviewError::NotFound(_) => WebError::NotFound,
        ReviewError::ReasonRequired => WebError::Refused(
            "A dismissal needs a reason: say why the alert goes no further.".into(),
        ),
        ReviewError::Store(e) => WebError::Store(e),
        other => WebError::Refused(other.to_string()),
    }
}

async fn decide(
    state: Arc<WebState>,
    session: Session,
    id: String,
    make: impl FnOnce(Option<&Rule>, &Alert) -> Result<Decision, String> + Send + 'static,
) -> Result<Response, WebError> {
    let authority = session.authority().ok_or(WebError::Forbidden)?;
    let config = state.config.clone();
    let rules = state.rules();
    let actor = Actor::web(&session.account.name, &session.account.display, session.ip);
    let now = (state.clock)();
    let id = review::normalise_id(&id);
    let target = id.clone();
    let decided = state
        .db
        .with(move |store| {
            let stored = store.alert(&target)?.ok_or(WebError::NotFound)?;
            // Checked before the form is read, so a viewer or a reviewer of
            // another partner learns nothing from a refused edit.
            if let Some(rule) = rules.get(&stored.alert.rule_id) {
                if !review::may_decide(rule, &authority) {
                    return Err(WebError::Forbidden);
                }
            } else if authority != Authority::Admin {
                return Err(WebError::Forbidden);
            }
            let decision =
                make(rules.get(&stored.alert.rule_id), &stored.alert).map_err(WebError::Refused)?;
            review::decide(
                &config, &rules, store, &target, &actor, &authority, decision, now,
            )
            .map_err(refusal)
        })
        .await?;
    let done = match decided {
        Decided::Approved { .. } => "approved",
        Decided::ApprovalRecorded { .. } => "recorded",
        Decided::Dismissed => "dismissed",
    };
    Ok(Redirect::to(&format!("{}?done={done}", super::pages::alert_href(&id))).into_response())
}

/// `POST /alerts/ID/approve`.
pub async fn approve(
    State(state): State<Arc<WebState>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_post(&state, &headers, &session, field(&fields, "csrf"))?;
    decide(state, session, id, move |rule, alert| {
        let rule = rule.ok_or(
            "The rule that raised this alert is no longer loaded: it can be dismissed, not approved.",
        )?;
        Ok(Decision::Approve(edits_from_form(&fields, rule, alert)?))
    })
    .await
}

/// `POST /alerts/ID/dismiss` (`reason` required).
pub async fn dismiss(
    State(state): State<Arc<WebState>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_post(&state, &headers, &session, field(&fields, "csrf"))?;
    decide(state, session, id, move |_, _| {
        Ok(Decision::Dismiss {
            reason: field(&fields, "reason").trim().to_string(),
        })
    })
    .await
}
