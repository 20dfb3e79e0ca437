//! The follow-up forms on an alert's page (SPEC §10): "Update" (text) and
//! "Withdraw" (reason), and their POSTs. Both go through `lifecycle::update`
//! and `lifecycle::withdraw`, the one code path the CLI uses too, as
//! `Actor::web(account, display, client IP)`; this module only decides who
//! may, reads the form and says what happened.
//!
//! Who may: admins, and reviewers of a partner in the rule's `review` (the
//! same authority as for deciding a draft, `review::may_decide`); when the
//! rule is no longer loaded, admins only. Viewers never: 403, nothing sent.

use super::auth::{Session, check_post};
use super::{WebError, WebState};
use crate::alerts::Alert;
use crate::audit::Actor;
use crate::lifecycle::{self, LifecycleError};
use crate::review::{self, Authority};
use crate::rules::RuleSet;
use axum::extract::{Form, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;
use std::sync::Arc;

/// The two forms, for an account that may follow the alert up.
#[derive(Debug, Serialize)]
pub struct FollowUpForm {
    pub update_action: String,
    pub withdraw_action: String,
    pub csrf: String,
    /// The longest text either form takes (`lifecycle::MAX_NOTICE_CHARS`).
    pub max_chars: usize,
}

/// Whether an account with `authority` may update or withdraw an alert of `rule_id`.
fn may_follow(rules: &RuleSet, rule_id: &str, authority: &Authority) -> bool {
    match rules.get(rule_id) {
        Some(rule) => review::may_decide(rule, authority),
        None => *authority == Authority::Admin,
    }
}

/// The forms for an alert that went out (sent, or approved) and an account
/// that may follow it up; `None` otherwise.
pub fn form(
    rules: &RuleSet,
    alert: &Alert,
    status: &str,
    authority: Option<&Authority>,
    csrf: &str,
) -> Option<FollowUpForm> {
    if !matches!(status, "sent" | "approved") || !may_follow(rules, &alert.rule_id, authority?) {
        return None;
    }
    let href = super::pages::alert_href(&alert.id);
    Some(FollowUpForm {
        update_action: format!("{href}/update"),
        withdraw_action: format!("{href}/withdraw"),
        csrf: csrf.to_string(),
        max_chars: lifecycle::MAX_NOTICE_CHARS,
    })
}

fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// A refused follow-up in the console's words (the library's name CLI flags).
fn refusal(e: LifecycleError) -> WebError {
    match e {
        LifecycleError::NotFound(_) => WebError::NotFound,
        LifecycleError::Store(e) => WebError::Store(e),
        LifecycleError::Empty { what, .. } => {
            WebError::Refused(format!("{what} is empty: say what partners should know."))
        }
        LifecycleError::InReview(_) => WebError::Refused(
            "This alert is still awaiting review: approve or dismiss it instead.".into(),
        ),
        LifecycleError::Render(e) => {
            // A notice is a fixed layout around the stored subject: failing
            // to render one is a fault, said in the log, not the user's doing.
            tracing::error!(error = %e, "Console: the notice could not be rendered");
            WebError::Refused(
                "The notice could not be made; nothing was sent. The error is in the daemon's log."
                    .into(),
            )
        }
        other => WebError::Refused(other.to_string()),
    }
}

/// A textarea's text with `\n` line breaks: browsers send `\r\n`, and the
/// library refuses a carriage return as a control character.
fn one_kind_of_line_break(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

enum FollowUp {
    Update(String),
    Withdraw(String),
}

async fn follow_up(
    state: Arc<WebState>,
    session: Session,
    id: String,
    what: FollowUp,
) -> Result<Response, WebError> {
    let authority = session.authority().ok_or(WebError::Forbidden)?;
    let config = state.config.clone();
    let rules = state.rules();
    let actor = Actor::web(&session.account.name, &session.account.display, session.ip);
    let now = (state.clock)();
    let id = review::normalise_id(&id);
    let target = id.clone();
    let done = state
        .db
        .with(move |store| {
            let stored = store.alert(&target)?.ok_or(WebError::NotFound)?;
            // Checked before the text is looked at: a viewer learns nothing.
            if !may_follow(&rules, &stored.alert.rule_id, &authority) {
                return Err(WebError::Forbidden);
            }
            match what {
                FollowUp::Update(text) => {
                    lifecycle::update(&config, store, &target, &text, &actor, now)
                        .map(|_| "updated")
                }
                FollowUp::Withdraw(reason) => {
                    lifecycle::withdraw(&config, store, &target, &reason, &actor, now)
                        .map(|_| "withdrawn")
                }
            }
            .map_err(refusal)
        })
        .await?;
    Ok(Redirect::to(&format!(
        "{}?done={done}#flash",
        super::pages::alert_href(&id)
    ))
    .into_response())
}

/// `POST /alerts/ID/update` (`text` required).
pub async fn update(
    State(state): State<Arc<WebState>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_post(&state, &headers, &session, field(&fields, "csrf"))?;
    let text = one_kind_of_line_break(field(&fields, "text"));
    follow_up(state, session, id, FollowUp::Update(text)).await
}

/// `POST /alerts/ID/withdraw` (`reason` required).
pub async fn withdraw(
    State(state): State<Arc<WebState>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    check_post(&state, &headers, &session, field(&fields, "csrf"))?;
    let reason = one_kind_of_line_break(field(&fields, "reason"));
    follow_up(state, session, id, FollowUp::Withdraw(reason)).await
}
