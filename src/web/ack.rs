//! The acknowledgement page (SPEC §10): `GET /ack/TOKEN` and its button's
//! `POST /ack/TOKEN`, the one console page with no session.
//!
//! - The GET shows the alert as the link's partner may see it (its routed,
//!   redacted view: `lifecycle::partner_view`, the same `alerts::route` its
//!   email was rendered from), who it is for, and a form with an optional
//!   name and a "Confirm receipt" button. It records nothing, and nothing on
//!   it submits itself (the CSP allows no script): mail scanners that open
//!   links, or even POST to them, confirm nothing.
//! - The POST records the confirmation once (`lifecycle::acknowledge`), and
//!   only with the page's form token (`ack::form_token`): that token is its
//!   CSRF token, since there is no session. A foreign `Origin` (or, without
//!   one, a foreign `Referer`) is refused; none at all, or `null`, is
//!   accepted, because mail clients' browsers and this page's own
//!   `no-referrer` policy may send none, and the form token still has to be
//!   valid.
//! - A changed, expired or foreign link is answered 404 with one message,
//!   whatever was wrong with it.
//!
//! What it must not do: show anything the partner's email withheld, or say
//! more about an invalid link than that it is not valid.

use super::auth::ClientIp;
use super::pages::{EventView, event_view, local, trigger_words};
use super::{WebError, WebState};
use crate::ack::{AckError, MAX_ACK_NAME_CHARS};
use crate::lifecycle::{self, AckTarget, LifecycleError};
use crate::store::lifecycle::{AckOutcome, AckRow};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Default, Serialize)]
struct AckPageView {
    title: &'static str,
    /// Nobody is logged in here: the page shows no account and no navigation.
    viewer: Option<super::pages::Viewer>,
    /// The link was refused: the page says only that.
    invalid: bool,
    /// The POST was refused (no valid form token, another site): why, and nothing else.
    refused: Option<String>,
    /// What the POST did ("Confirmed, thank you" and the like).
    flash: Option<String>,
    /// A problem with what was typed.
    problem: Option<String>,
    id: String,
    partner_name: String,
    rule_name: String,
    severity: String,
    status: String,
    headline: String,
    raised: String,
    district: String,
    trigger: String,
    count: u64,
    evidence: Vec<EventView>,
    withheld: Vec<String>,
    /// Why no evidence is shown, when none is.
    no_evidence: Option<&'static str>,
    /// "already confirmed by NAME on TIME", once confirmed.
    confirmed: Option<String>,
    form: Option<AckForm>,
}

#[derive(Debug, Serialize)]
struct AckForm {
    action: String,
    token: String,
    max_name: usize,
}

/// The page's own address, from the token the request named.
fn action_of(token: &str) -> String {
    format!(
        "/ack/{}",
        serde_urlencoded::to_string([("", token)])
            .map(|q| q.trim_start_matches('=').to_string())
            .unwrap_or_default()
    )
}

fn confirmed_words(row: &AckRow, partner_name: &str, state: &WebState) -> String {
    let who = row.name.as_deref().unwrap_or(partner_name);
    format!(
        "This alert was already confirmed by {who} at {}.",
        local(row.at, &state.config.daemon.timezone)
    )
}

/// The page for a valid link, as its partner may see the alert.
fn page_view(state: &WebState, target: &AckTarget, token: &str) -> AckPageView {
    let config = &state.config;
    let tz = &config.daemon.timezone;
    let rules = state.rules();
    let alert = &target.alert.alert;
    let partner_name = config
        .partner(&target.claim.partner_id)
        .map_or_else(|| target.claim.partner_id.clone(), |p| p.name.clone());
    let assessment = alert.assessment.as_ref();
    let mut view = AckPageView {
        title: "Confirm receipt",
        id: alert.id.clone(),
        rule_name: rules
            .get(&alert.rule_id)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        severity: assessment
            .and_then(|a| a.severity)
            .unwrap_or(alert.severity)
            .as_str()
            .to_string(),
        status: target.alert.status.as_str().replace('_', " "),
        headline: assessment
            .and_then(|a| a.headline.clone())
            .unwrap_or_default(),
        raised: local(alert.created_at, tz),
        confirmed: target
            .confirmed
            .as_ref()
            .map(|row| confirmed_words(row, &partner_name, state)),
        form: target.confirmed.is_none().then(|| AckForm {
            action: action_of(token),
            token: target.form_token.clone(),
            max_name: MAX_ACK_NAME_CHARS,
        }),
        partner_name,
        ..AckPageView::default()
    };
    // Only the partner's routed view reaches the page: with no view (the
    // rule gone, or no longer routing to it) nothing from the records does.
    match lifecycle::partner_view(config, &rules, target) {
        Some(d) => {
            // The email's first line (the panel's, if it assessed one), so the
            // page opens with what was found, as the email did.
            if let Some(rule) = rules.get(&alert.rule_id)
                && let Ok(headline) =
                    crate::alerts::render::email_headline(alert, rule, &rules.templates, &d, config)
            {
                view.headline = headline;
            }
            view.district = d.district.clone().unwrap_or_default();
            view.trigger = trigger_words(&d.trigger, tz);
            view.count = d.count;
            view.evidence = d.events.iter().map(|e| event_view(e, config, tz)).collect();
            view.withheld = d.withheld.iter().cloned().collect();
        }
        None => {
            view.no_evidence =
                Some("The records of this alert cannot be shown here now; your email has them.");
        }
    }
    view
}

fn render(state: &WebState, status: StatusCode, view: &AckPageView) -> Result<Response, WebError> {
    Ok((status, Html(state.pages.render("ack.html", view)?)).into_response())
}

/// The one answer for a link that is not valid (changed, expired, foreign, unknown).
fn invalid(state: &WebState) -> Result<Response, WebError> {
    let view = AckPageView {
        title: "Link not valid",
        invalid: true,
        ..AckPageView::default()
    };
    render(state, StatusCode::NOT_FOUND, &view)
}

/// A refused POST: why, and nothing of the alert.
fn refused(state: &WebState, status: StatusCode, why: String) -> Result<Response, WebError> {
    let view = AckPageView {
        title: "Not recorded",
        refused: Some(why),
        ..AckPageView::default()
    };
    render(state, status, &view)
}

/// `GET /ack/TOKEN`: records nothing.
pub async fn page(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
) -> Result<Response, WebError> {
    let now = (state.clock)();
    let lookup = token.clone();
    let target = state
        .db
        .with(move |store| Ok(lifecycle::ack_target(store, &lookup, now)))
        .await?;
    match target {
        Ok(target) => render(&state, StatusCode::OK, &page_view(&state, &target, &token)),
        Err(LifecycleError::Ack(AckError::Invalid | AckError::Expired)) => invalid(&state),
        Err(LifecycleError::Store(e)) => Err(WebError::Store(e)),
        Err(other) => Err(WebError::Refused(other.to_string())),
    }
}

/// Whether a POST to this page may come from where it says: a foreign
/// `Origin`, or without one a foreign `Referer`, is refused; neither (or the
/// `null` origin) is let through to the form token's check.
fn from_acceptable_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let origin = headers
        .get(header::ORIGIN)
        .filter(|o| o.as_bytes() != b"null");
    if origin.is_some() {
        return super::auth::same_origin(headers, public_url);
    }
    match headers.get(header::REFERER) {
        None => true,
        Some(referer) => {
            // Judged alone: an `Origin: null` beside it must not be what is compared.
            let mut only_referer = HeaderMap::new();
            only_referer.insert(header::REFERER, referer.clone());
            super::auth::same_origin(&only_referer, public_url)
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct AckFormFields {
    /// The page's form token.
    pub form: String,
    /// The name the person typed (optional).
    pub name: String,
}

/// `POST /ack/TOKEN`: records the confirmation once.
pub async fn confirm(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(fields): Form<AckFormFields>,
) -> Result<Response, WebError> {
    let public_url = state
        .config
        .web
        .as_ref()
        .map(|w| w.public_url.as_str())
        .unwrap_or("");
    if !from_acceptable_origin(&headers, public_url) {
        tracing::warn!(ip = %ip, "Acknowledgement refused: posted from another site");
        return refused(
            &state,
            StatusCode::FORBIDDEN,
            "This confirmation was sent from another website, so it was not recorded. Open the link from your email and press the button there.".into(),
        );
    }
    let now = (state.clock)();
    let link = token.clone();
    let result = state
        .db
        .with(move |store| {
            let name = Some(fields.name.as_str());
            let done =
                lifecycle::acknowledge(store, &link, &fields.form, name, &ip.to_string(), now);
            // A name refused: the page again, with a fresh form token.
            let again = match &done {
                Err(LifecycleError::Ack(AckError::BadName(_))) => {
                    lifecycle::ack_target(store, &link, now).ok()
                }
                _ => None,
            };
            Ok((done, again))
        })
        .await?;
    match result {
        (Ok((claim, outcome)), _) => {
            let partner_name = state
                .config
                .partner(&claim.partner_id)
                .map_or_else(|| claim.partner_id.clone(), |p| p.name.clone());
            let flash = match &outcome {
                AckOutcome::Recorded => {
                    tracing::info!(alert = %claim.alert_id, partner = %claim.partner_id, ip = %ip, "Receipt confirmed");
                    format!(
                        "Confirmed, thank you: alert {} is recorded as received by {partner_name}.",
                        claim.alert_id
                    )
                }
                AckOutcome::AlreadyConfirmed(row) => confirmed_words(row, &partner_name, &state),
            };
            let view = AckPageView {
                title: "Receipt confirmed",
                flash: Some(flash),
                id: claim.alert_id,
                partner_name,
                ..AckPageView::default()
            };
            render(&state, StatusCode::OK, &view)
        }
        (Err(LifecycleError::Ack(AckError::BadName(why))), Some(target)) => {
            let mut view = page_view(&state, &target, &token);
            view.problem = Some(format!("The name {why}: nothing was recorded."));
            render(&state, StatusCode::UNPROCESSABLE_ENTITY, &view)
        }
        (Err(LifecycleError::Ack(AckError::Invalid | AckError::Expired)), _) => invalid(&state),
        (Err(LifecycleError::Ack(AckError::StaleForm)), _) => {
            tracing::warn!(ip = %ip, "Acknowledgement refused: no valid form token");
            let why = AckError::StaleForm.to_string();
            refused(
                &state,
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Nothing was recorded: {why}."),
            )
        }
        (Err(LifecycleError::Store(e)), _) => Err(WebError::Store(e)),
        (Err(other), _) => Err(WebError::Refused(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_foreign_origin_or_referer_is_refused() {
        let url = "https://ew.example.org";
        let ok = |h: &HeaderMap| from_acceptable_origin(h, url);
        assert!(ok(&headers(&[])), "a mail client's browser sends none");
        assert!(ok(&headers(&[(header::ORIGIN, "null")])));
        assert!(ok(&headers(&[(header::ORIGIN, "https://ew.example.org")])));
        assert!(ok(&headers(&[(
            header::REFERER,
            "https://ew.example.org/ack/x"
        )])));
        assert!(!ok(&headers(&[(header::ORIGIN, "https://evil.example")])));
        assert!(!ok(&headers(&[(
            header::REFERER,
            "https://evil.example/x"
        )])));
        assert!(!ok(&headers(&[
            (header::ORIGIN, "null"),
            (header::REFERER, "https://evil.example/x"),
        ])));
        assert!(!ok(&headers(&[
            (header::ORIGIN, "https://evil.example"),
            (header::REFERER, "https://ew.example.org/ack/x"),
        ])));
    }
}
