//! Who is asking (SPEC §9): the session cookie, the login and logout pages,
//! and the checks every state change passes.
//!
//! - The cookie `ew_session` holds a random token (only its SHA-256 is
//!   stored, see `accounts`): `HttpOnly; SameSite=Strict; Path=/`, and
//!   `Secure` when the console is served over HTTPS. A new one at each login.
//! - A page without a live session answers `303` to `/login?next=PATH`;
//!   `next` is kept only when it is a local path (no `//host`, no scheme).
//! - Every POST needs the session's CSRF token in the field `csrf` (compared
//!   in constant time) and an `Origin` equal to `public_url`'s origin (when a
//!   browser sends no Origin, a `Referer` under `public_url`); otherwise
//!   `403` and nothing changes. The login form, which has no session yet,
//!   passes the origin check.
//! - Logins are slowed per client address in memory as well as locked per
//!   account in the database: a burst of failures from one address waits
//!   longer and longer before its next try is even looked at.

use super::pages::Viewer;
use super::{WebError, WebState};
use crate::accounts::{self, Account, LoginError, Role};
use crate::review::Authority;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "ew_session";

/// The one message for every refused login: which of name, password, lock or
/// disabled account it was stays in the audit log.
pub const REFUSED: &str = "Wrong name or password, or the account is locked.";

/// A logged-in request: the account, its session's tokens, where from.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: Account,
    /// The session's form token.
    pub csrf: String,
    /// The cookie's value (to end the session at logout).
    pub token: String,
    pub ip: IpAddr,
}

impl Session {
    /// What this account may see: admins and accounts without a partner see
    /// everything; any other account only its partner's alerts, redacted.
    pub fn viewer(&self) -> Viewer {
        let admin = self.account.role == Role::Admin;
        Viewer {
            name: self.account.name.clone(),
            display: self.account.display.clone(),
            partner: if admin {
                None
            } else {
                self.account.partner.clone()
            },
            admin,
            csrf: self.csrf.clone(),
        }
    }

    /// Who this account may decide as: admins as `Admin`, reviewers for their
    /// partner; viewers not at all.
    pub fn authority(&self) -> Option<Authority> {
        match self.account.role {
            Role::Admin => Some(Authority::Admin),
            Role::Reviewer => Some(Authority::Reviewer {
                partner: self.account.partner.clone(),
            }),
            Role::Viewer => None,
        }
    }
}

/// The client's address, from the connection (`0.0.0.0` if the listener did
/// not say: the router is served `into_make_service_with_connect_info`).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ClientIp, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `next` if it is a path on this site (`/alerts?x`), else `/`: a login link
/// cannot send anyone elsewhere.
pub fn local_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\');
    if ok { next } else { "/" }
}

/// Where a page without a session sends the browser.
fn to_login(parts: &Parts) -> Response {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let next = local_next(path);
    let location = if next == "/" {
        "/login".to_string()
    } else {
        format!(
            "/login?{}",
            serde_urlencoded::to_string([("next", next)]).unwrap_or_default()
        )
    };
    Redirect::to(&location).into_response()
}

impl FromRequestParts<Arc<WebState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Session, Response> {
        let Some(token) = cookie(&parts.headers, COOKIE).map(str::to_string) else {
            return Err(to_login(parts));
        };
        let idle = state
            .config
            .web
            .as_ref()
            .map(|w| w.session_idle)
            .unwrap_or(crate::config::DEFAULT_SESSION_IDLE);
        let now = (state.clock)();
        let lookup = token.clone();
        let found = state
            .db
            .with(move |store| Ok(accounts::session(store, &lookup, idle, now)?))
            .await
            .map_err(IntoResponse::into_response)?;
        match found {
            Some(s) => Ok(Session {
                account: s.account,
                csrf: s.csrf,
                token,
                ip: client_ip(parts),
            }),
            None => Err(to_login(parts)),
        }
    }
}

impl FromRequestParts<Arc<WebState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Viewer, Response> {
        Ok(Session::from_request_parts(parts, state).await?.viewer())
    }
}

// ------------------------------------------------------------ state changes

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).map_or(url.len(), |j| i + 3 + j);
            &url[..end]
        }
        None => url,
    }
}

/// Whether a POST comes from the console's own pages: its `Origin` is
/// `public_url`'s, or, with no `Origin`, its `Referer` is under `public_url`.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let expected = origin_of(public_url);
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin
            .to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(expected));
    }
    headers
        .get(header::REFERER)
        .and_then(|r| r.to_str().ok())
        .is_some_and(|r| {
            r == public_url
                || r.strip_prefix(public_url)
                    .is_some_and(|rest| rest.starts_with(['/', '?']))
        })
}

/// Constant-time comparison of the form's token with the session's.
fn token_matches(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The checks of every POST made with a session: the origin and the form token.
pub fn check_post(
    state: &WebState,
    headers: &HeaderMap,
    session: &Session,
    form_csrf: &str,
) -> Result<(), WebError> {
    let public_url = state
        .config
        .web
        .as_ref()
        .map(|w| w.public_url.as_str())
        .unwrap_or("");
    if !same_origin(headers, public_url) {
        tracing::warn!(account = %session.account.name, ip = %session.ip, "Console POST refused: not from the console's origin");
        return Err(WebError::Forbidden);
    }
    if !token_matches(form_csrf, &session.csrf) {
        tracing::warn!(account = %session.account.name, ip = %session.ip, "Console POST refused: missing or wrong form token");
        return Err(WebError::Forbidden);
    }
    Ok(())
}

// ------------------------------------------------------------ throttling

/// Failed logins per client address, in memory: after a few, each further
/// try from that address waits (1 s, 2 s, 4 s … up to a minute) before it is
/// even checked. The account lockout (in the database) is the other half.
#[derive(Debug, Default)]
pub struct Throttle {
    by_ip: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failures from one address that are free of any wait.
const FREE_FAILURES: u32 = 5;
/// The longest wait between tries from one address.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// An address that has not failed for this long starts again from nothing.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; beyond, the stalest are forgotten.
const MAX_TRACKED: usize = 10_000;

impl Throttle {
    fn wait_for(f: &Failures) -> Duration {
        if f.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (f.count - FREE_FAILURES).min(6);
        Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
    }

    /// `Err(wait)` when `ip` must wait before trying again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = map.get(&ip) else {
            return Ok(());
        };
        let ready_at = f.last + Self::wait_for(f);
        if now < ready_at {
            Err(ready_at - now)
        } else {
            Ok(())
        }
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        let f = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.by_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

// ------------------------------------------------------------ pages

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct NextQuery {
    pub next: String,
}

#[derive(Debug, Serialize)]
struct LoginView<'a> {
    title: &'static str,
    viewer: Option<Viewer>,
    next: &'a str,
    username: &'a str,
    problem: Option<&'static str>,
    flash: Option<&'static str>,
}

fn login_page(
    state: &WebState,
    status: StatusCode,
    next: &str,
    username: &str,
    problem: Option<&'static str>,
    flash: Option<&'static str>,
) -> Result<Response, WebError> {
    let view = LoginView {
        title: "Log in",
        viewer: None,
        next: local_next(next),
        username,
        problem,
        flash,
    };
    Ok((status, Html(state.pages.render("login.html", &view)?)).into_response())
}

/// `GET /login`.
pub async fn login_form(
    State(state): State<Arc<WebState>>,
    Query(q): Query<NextQuery>,
) -> Result<Response, WebError> {
    login_page(&state, StatusCode::OK, &q.next, "", None, None)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    pub next: String,
}

fn session_cookie(state: &WebState, token: &str) -> String {
    let secure = state.config.web.as_ref().is_some_and(|w| w.is_https());
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `POST /login`: a new session, or one message for every refusal.
pub async fn login(
    State(state): State<Arc<WebState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let public_url = state
        .config
        .web
        .as_ref()
        .map(|w| w.public_url.clone())
        .unwrap_or_default();
    if !same_origin(&headers, &public_url) {
        return Err(WebError::Forbidden);
    }
    if state.throttle.check(ip, Instant::now()).is_err() {
        tracing::warn!(%ip, "Login refused unchecked: too many failures from this address");
        return login_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &form.next,
            &form.username,
            Some(REFUSED),
            None,
        );
    }
    let now = (state.clock)();
    let policy = state.login_policy.clone();
    let (name, password) = (form.username.clone(), form.password.clone());
    let result = state
        .db
        .with(move |store| Ok(accounts::login(store, &name, &password, ip, now, &policy)))
        .await?;
    match result {
        Ok(logged_in) => {
            state.throttle.succeeded(ip);
            let mut response = Redirect::to(local_next(&form.next)).into_response();
            let cookie = HeaderValue::from_str(&session_cookie(&state, &logged_in.token))
                .map_err(|_| WebError::Forbidden)?;
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(response)
        }
        Err(LoginError::Refused(_)) => {
            state.throttle.failed(ip, Instant::now());
            login_page(
                &state,
                StatusCode::UNAUTHORIZED,
                &form.next,
                &form.username,
                Some(REFUSED),
                None,
            )
        }
        Err(LoginError::Store(e)) => Err(WebError::Store(e)),
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `POST /logout`: ends the session (audited) and clears the cookie.
pub async fn logout(
    State(state): State<Arc<WebState>>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    check_post(&state, &headers, &session, &form.csrf)?;
    let now = (state.clock)();
    let (token, ip) = (session.token.clone(), session.ip);
    state
        .db
        .with(move |store| Ok(accounts::logout(store, &token, ip, now)?))
        .await?;
    let mut response = login_page(
        &state,
        StatusCode::OK,
        "/",
        "",
        None,
        Some("You are logged out."),
    )?;
    let clear = format!("{}; Max-Age=0", session_cookie(&state, ""));
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_path_is_kept_as_next() {
        assert_eq!(local_next("/alerts/EW-1?x=1"), "/alerts/EW-1?x=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "evil",
            "",
            "/a\r\nb",
        ] {
            assert_eq!(local_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn the_origin_must_be_the_consoles() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let url = "https://ew.example.org/console";
        assert!(same_origin(
            &h(&[("origin", "https://ew.example.org")]),
            url
        ));
        assert!(!same_origin(&h(&[("origin", "https://evil.example")]), url));
        assert!(!same_origin(&h(&[("origin", "null")]), url));
        assert!(same_origin(
            &h(&[("referer", "https://ew.example.org/console/alerts")]),
            url
        ));
        assert!(!same_origin(
            &h(&[("referer", "https://ew.example.org/consolex")]),
            url
        ));
        assert!(!same_origin(
            &h(&[("referer", "https://ew.example.org.evil/console")]),
            url
        ));
        assert!(!same_origin(&h(&[]), url), "neither header: refused");
        // An Origin decides even with a good Referer.
        assert!(!same_origin(
            &h(&[
                ("origin", "https://evil.example"),
                ("referer", "https://ew.example.org/console/")
            ]),
            url
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(
            !token_matches("", ""),
            "an empty session token matches nothing"
        );
    }

    #[test]
    fn failures_from_one_address_wait_longer_and_longer() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(t.check(ip, start).is_ok());
            t.failed(ip, start);
        }
        assert_eq!(t.check(ip, start), Err(Duration::from_secs(1)));
        assert!(
            t.check(other, start).is_ok(),
            "other addresses are not slowed"
        );
        t.failed(ip, start + Duration::from_secs(1));
        assert_eq!(
            t.check(ip, start + Duration::from_secs(1)),
            Err(Duration::from_secs(2))
        );
        assert!(t.check(ip, start + Duration::from_secs(3)).is_ok());
        t.succeeded(ip);
        assert!(t.check(ip, start + Duration::from_secs(1)).is_ok());
    }
}
