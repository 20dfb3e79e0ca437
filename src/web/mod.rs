//! The web console (SPEC §9): server-rendered pages inside the daemon, for the
//! panel (the review queue), partners' staff (the history of what they got)
//! and ops (status, the audit log).
//!
//! The shell of the console: the router, the headers every response carries
//! (a CSP that allows no script at all, no framing, no sniffing, and no
//! referrer to other sites: `same-origin`, since under `no-referrer` a browser
//! sends `Origin: null` on form POSTs and the origin check could not pass),
//! the request limits, and [`Db`], a few [`Store`]s used on the blocking pool
//! (SQLite blocks). The pages themselves are in [`pages`], their HTML in
//! `templates/` with auto-escaping on, so a value from a feed is text, never markup.
//!
//! Every page but `/login`, `/healthz`, the stylesheet and `/ack/...` needs a
//! session ([`auth`]); every state change is a POST that passes
//! [`auth::check_post`], except an acknowledgement, whose page's form token
//! stands in for the session's ([`ack`]). `POST /api/feeds/NAME` ([`push`]) is
//! not a page: no cookie, a feed's bearer token, its own body and time limits.
//!
//! What it must not do: write to the database to show a page (beyond a
//! session's last use, at most once a minute), or show a partner's account
//! anything its emails withheld (see [`pages`]).

pub mod ack;
pub mod auth;
pub mod decisions;
pub mod lifecycle;
pub mod listener;
pub mod pages;
pub mod push;

use crate::config::Config;
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::routing::{get, post};
use jiff::Timestamp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

/// No script from anywhere, styles only from our own stylesheet (no inline
/// `style` attribute either), forms only back to us, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest request body accepted: the forms are a few fields of text.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request (headers, body and handler) that takes longer is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How many database connections pages use at once: SQLite readers do not
/// block each other (WAL), and two cores cannot use more.
const DB_CONNECTIONS: usize = 4;

/// What every handler shares.
pub struct WebState {
    pub config: Arc<Config>,
    /// The rules in force: the daemon sends each rule set it reloads, so a
    /// page reads a rule (its name, its routing) as the emails did.
    pub rules: watch::Receiver<Arc<RuleSet>>,
    pub db: Db,
    pub pages: &'static pages::Pages,
    /// The wall clock, read once per request by the handlers (the pages take
    /// `now`); a test may fix it.
    pub clock: fn() -> Timestamp,
    /// Failed logins per client address (the account lockout is in the database).
    pub throttle: auth::Throttle,
    pub login_policy: crate::accounts::LoginPolicy,
    /// Files over HTTP (SPEC §11): the way to the intake loop, the token throttle.
    pub push: push::PushState,
}

impl WebState {
    pub fn new(
        config: Arc<Config>,
        rules: watch::Receiver<Arc<RuleSet>>,
        pushes: Option<push::Pushes>,
    ) -> WebState {
        let db = Db::new(config.daemon.state_dir.clone(), DB_CONNECTIONS);
        WebState {
            config,
            rules,
            db,
            pages: pages::Pages::get(),
            clock: Timestamp::now,
            throttle: auth::Throttle::default(),
            login_policy: crate::accounts::LoginPolicy::default(),
            push: push::PushState {
                pushes,
                throttle: auth::Throttle::default(),
            },
        }
    }

    /// The rule set in force now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.borrow().clone()
    }
}

/// Why a page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden,
    /// A request the user can fix (a dismissal without a reason): said on the page.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("template: {0}")]
    Render(#[from] minijinja::Error),
    #[error("a database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A few database connections, each used by one blocking task at a time.
pub struct Db {
    state_dir: PathBuf,
    idle: Mutex<Vec<Store>>,
    /// At most this many connections in use: a burst of requests waits here
    /// rather than opening connection after connection.
    slots: Semaphore,
}

impl Db {
    pub fn new(state_dir: PathBuf, connections: usize) -> Db {
        Db {
            state_dir,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(connections),
        }
    }

    /// Runs `f` with a connection on the blocking pool. A connection whose
    /// task failed is dropped, not reused; the next one is opened afresh.
    pub async fn with<T, F>(&self, f: F) -> Result<T, WebError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, WebError> + Send + 'static,
    {
        // The semaphore is never closed, so acquiring fails only if it were.
        let _slot = self.slots.acquire().await.map_err(|_| {
            WebError::Store(StoreError::Corrupt("the connection pool is closed".into()))
        })?;
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let state_dir = self.state_dir.clone();
        let (store, result) = tokio::task::spawn_blocking(move || {
            let mut store = match pooled {
                Some(s) => s,
                None => match Store::open(&state_dir) {
                    Ok(s) => s,
                    Err(e) => return (None, Err(WebError::Store(e))),
                },
            };
            let result = f(&mut store);
            (Some(store), result)
        })
        .await?;
        if let Some(store) = store {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(store);
        }
        result
    }
}

/// Every route of the console, with its headers and limits.
pub fn router(state: Arc<WebState>) -> Router {
    let https = state.config.web.as_ref().is_some_and(|w| w.is_https());
    let static_header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    // Its own limits and no session, merged after the console's layers so
    // none of them (body size, timeout, the pages' headers) wraps it.
    let push_routes = push::routes(state.clone());
    let mut app = Router::new()
        .route("/", get(pages::queue))
        .route("/alerts", get(pages::history))
        .route("/alerts/{id}", get(pages::alert))
        .route("/alerts/{id}/approve", post(decisions::approve))
        .route("/alerts/{id}/dismiss", post(decisions::dismiss))
        .route("/alerts/{id}/update", post(lifecycle::update))
        .route("/alerts/{id}/withdraw", post(lifecycle::withdraw))
        .route("/ack/{token}", get(ack::page).post(ack::confirm))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/status", get(pages::status))
        .route("/audit", get(pages::audit))
        .route("/healthz", get(pages::healthz))
        .route("/static/style.css", get(pages::stylesheet))
        .fallback(pages::not_found)
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // The stylesheet sets its own caching; every page is never stored.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(static_header(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(static_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // Not `no-referrer`: under it browsers send `Origin: null` with every form
        // POST, which the same-origin check must refuse (the login too). `same-origin`
        // still gives other sites no referrer.
        .layer(static_header(header::REFERRER_POLICY, "same-origin"))
        .layer(static_header(header::X_FRAME_OPTIONS, "DENY"));
    if https {
        app = app.layer(static_header(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        ));
    }
    app.merge(push_routes)
}

/// Binds the console's listener: at start, so a port already taken is a
/// start-up error, as for `/metrics`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the console on `listener` until `shutdown`, then lets the requests
/// in progress finish.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    rules: watch::Receiver<Arc<RuleSet>>,
    pushes: push::Pushes,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Only called with [web] set; without it, nothing is served.
    let Some(web) = config.web.clone() else {
        return Ok(());
    };
    push::log_push_feeds(&config);
    let app = router(Arc::new(WebState::new(config, rules, Some(pushes))));
    listener::serve(
        listener,
        web.tls.as_ref(),
        web.max_connections,
        app,
        shutdown,
    )
    .await
}
