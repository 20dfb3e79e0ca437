//! Files over HTTP (SPEC §11): `POST /api/feeds/NAME` on the console's
//! listener, for systems that cannot write into a feed folder.
//!
//! A request is checked in this order, and each refusal is answered before a
//! byte of the body is read:
//! 1. the peer is not throttled for failed tokens (429 with `Retry-After`);
//! 2. `Authorization: Bearer TOKEN` is the feed's `push_token_file` token,
//!    compared as SHA-256 digests in constant time ([`PushToken::matches`]);
//!    a wrong or missing token, an unknown feed and a feed without a token
//!    all get the same 401 (`WWW-Authenticate: Bearer`), so the answer does
//!    not tell which feeds exist; each counts against the peer (the console's
//!    login [`Throttle`], a separate instance; a success does not clear it,
//!    so one feed's token gives no free tries at another's);
//! 3. the `Content-Type` names the feed's `format` (else 415);
//! 4. a declared `Content-Length` is within the feed's `max_file_bytes` (else 413).
//!
//! Then the body is spooled to a dot-named file in the feed's folder
//! ([`FeedFolders::create_spool`], never through a link, never visible to the
//! scans), counted as it comes (413 as soon as it passes `max_file_bytes`:
//! nothing more is read and the spool is removed), each read allowed
//! [`BODY_IDLE`] and the whole body [`BODY_TOTAL`]. The spool is then handed
//! to the daemon's intake loop over a channel ([`PushJob`]): the loop runs it
//! through `intake::process_pushed`, the very code a dropped file goes through
//! (limits, encodings, bad rows, de-duplication, one transaction with the
//! push's audit row, the move to `processed/` or `rejected/`), one file at a
//! time with the dropped ones. **The answer is sent only once that commit is
//! done**; a client that gives up meanwhile does not stop it, and its retry
//! of the same body is a duplicate (200, `"duplicate": true`, nothing raised).
//!
//! The file's name is made here, never taken from the request:
//! `TIME-LABEL-HASH.EXT` (`20261201T211820Z-results-3fa2c1d0.csv`), where LABEL is
//! `X-Filename` reduced to letters, digits, `.`, `_` and `-` (at most
//! [`MAX_LABEL`] characters), HASH the start of the body's SHA-256 and EXT the
//! feed's format. The console's CSRF and origin checks do not apply here:
//! no cookie is read, the bearer token is the credential.

use std::ffi::OsString;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper::body::Body as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tower_http::set_header::SetResponseHeaderLayer;

use super::WebState;
use super::auth::{ClientIp, Throttle};
use crate::audit::Actor;
use crate::config::{FeedConfig, FeedFormat, OnDone, PushToken};
use crate::feeds::folder::FeedFolders;
use crate::feeds::intake::{Disposition, IntakeError};

/// Pushes waiting for the intake loop at most; more wait in their handlers.
pub const PUSH_QUEUE: usize = 16;

/// The longest pause between two reads of a body: a stalled client lets go
/// of its connection slot.
pub const BODY_IDLE: Duration = Duration::from_secs(30);

/// The longest a whole body may take to arrive: 256 MiB (the default
/// `max_file_bytes`) at about 300 KB/s. The wait for the commit after it is not
/// limited: it is the intake's time, and cutting it would not undo the commit.
pub const BODY_TOTAL: Duration = Duration::from_secs(15 * 60);

/// The longest label kept from `X-Filename`.
pub const MAX_LABEL: usize = 64;

/// What the console shares for pushes.
#[derive(Default)]
pub struct PushState {
    /// The daemon's side; `None` when no intake loop takes pushes (a console
    /// served on its own).
    pub pushes: Option<Pushes>,
    /// Refused tokens per peer address.
    pub throttle: Throttle,
}

/// How pushes reach the daemon's intake loop.
pub struct Pushes {
    pub jobs: mpsc::Sender<PushJob>,
    /// The config in force: each reload sends its own, so a token changed or
    /// taken away counts from the reload on.
    pub config: tokio::sync::watch::Receiver<Arc<crate::config::Config>>,
}

/// One pushed body, spooled, for the intake loop to process.
pub struct PushJob {
    pub feed: String,
    /// The spooled body in the feed's folder; removed when dropped unless the
    /// intake moved it.
    pub spool: Spool,
    /// The name it is processed as (see the module header).
    pub name: OsString,
    /// `push:FEED` from the peer, as the audit row names it.
    pub actor: Actor,
    /// Sent once the file's transaction has committed (or failed).
    pub reply: oneshot::Sender<PushReply>,
}

/// What the intake loop says of a push.
pub enum PushReply {
    Done(Result<Disposition, IntakeError>),
    /// The feed no longer takes pushes (a reload took its token away).
    NoSuchFeed,
}

/// A spool file in a feed folder, removed on drop: once the intake has moved
/// it to `processed/` or `rejected/`, there is nothing left to remove.
pub struct Spool {
    folders: FeedFolders,
    name: OsString,
}

impl Spool {
    pub fn name(&self) -> &std::ffi::OsStr {
        &self.name
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        match self.folders.remove_incoming(&self.name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(spool = %self.name.to_string_lossy(), error = %e, "Cannot remove a push's spool file")
            }
        }
    }
}

/// The push route, with its own limits: not the console's 64 KiB body limit
/// nor its 30 s request timeout (see the module header), and no session.
pub fn routes(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/api/feeds/{name}", post(push))
        .with_state(state)
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

/// The 200 answer (SPEC §11).
#[derive(Debug, serde::Serialize)]
struct Accepted {
    file: String,
    rows: u64,
    events: u64,
    rejected_rows: u64,
    alerts: u64,
    duplicate: bool,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn refused(status: StatusCode, reason: impl Into<String>) -> Response {
    json(status, serde_json::json!({ "reasons": [reason.into()] }))
}

fn unauthorized(token_given: bool) -> Response {
    let challenge = if token_given {
        r#"Bearer realm="earlywarn", error="invalid_token""#
    } else {
        r#"Bearer realm="earlywarn""#
    };
    let mut response = refused(
        StatusCode::UNAUTHORIZED,
        "this feed does not take files with this token",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

fn unavailable(reason: impl Into<String>) -> Response {
    let mut response = refused(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// The token of `Authorization: Bearer TOKEN` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Compared against when the feed has no token, so an unknown feed costs
/// the same digest as a known one.
static NO_TOKEN: LazyLock<Option<PushToken>> =
    LazyLock::new(|| PushToken::from_file_text("never-a-token-of-any-feed-0000000000000000").ok());

/// Whether `given` opens `feed` for pushes.
fn token_opens(feed: Option<&FeedConfig>, given: Option<&[u8]>) -> bool {
    let token = feed.and_then(|f| f.push_token.as_ref());
    let compared = token.or(NO_TOKEN.as_ref());
    let matched = match (compared, given) {
        (Some(t), Some(given)) => t.matches(given),
        _ => false,
    };
    matched && token.is_some()
}

/// The format a `Content-Type` names (its parameters, like `charset`, are
/// ignored: the intake decides a file's encoding from its bytes).
pub fn format_of_content_type(value: &str) -> Option<FeedFormat> {
    let media = value.split(';').next().unwrap_or("").trim();
    let formats = [
        ("text/csv", FeedFormat::Csv),
        ("application/x-ndjson", FeedFormat::Jsonl),
        ("application/json", FeedFormat::Json),
        (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            FeedFormat::Xlsx,
        ),
        (
            "application/vnd.oasis.opendocument.spreadsheet",
            FeedFormat::Ods,
        ),
    ];
    formats
        .iter()
        .find(|(name, _)| media.eq_ignore_ascii_case(name))
        .map(|&(_, format)| format)
}

/// The `Content-Type` a feed's pushes must name.
pub fn content_type_of(format: FeedFormat) -> &'static str {
    match format {
        FeedFormat::Csv => "text/csv",
        FeedFormat::Jsonl => "application/x-ndjson",
        FeedFormat::Json => "application/json",
        FeedFormat::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        FeedFormat::Ods => "application/vnd.oasis.opendocument.spreadsheet",
    }
}

/// `X-Filename` as a label for the generated name: letters, digits, `.`,
/// `_` and `-` only (anything else, a `/` or a control among them, becomes
/// `_`), no leading dot, no extension of a feed format (the name gets the
/// feed's), at most [`MAX_LABEL`] characters; `push` when nothing is left.
pub fn label_of(x_filename: Option<&[u8]>) -> String {
    let text = String::from_utf8_lossy(x_filename.unwrap_or_default());
    let mut label = String::new();
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '_'
        };
        // Runs of replaced characters say nothing more than one.
        if !(c == '_' && label.ends_with('_')) {
            label.push(c);
        }
        if label.len() > 4 * MAX_LABEL {
            break;
        }
    }
    let mut label = label.trim_start_matches(['.', '_', '-']).to_string();
    for ext in [
        ".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".xlsx", ".ods",
    ] {
        if label.len() > ext.len() && label.to_ascii_lowercase().ends_with(ext) {
            label.truncate(label.len() - ext.len());
            break;
        }
    }
    label.truncate(MAX_LABEL);
    let label = label.trim_end_matches(['.', '_', '-']);
    if label.is_empty() {
        "push".into()
    } else {
        label.to_string()
    }
}

/// The name a pushed file is processed as: `TIME-LABEL-HASH.EXT`.
pub fn generated_name(
    now: jiff::Timestamp,
    label: &str,
    sha256: &[u8],
    format: FeedFormat,
) -> String {
    format!(
        "{}-{label}-{}.{format}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        hex::encode(&sha256[..4.min(sha256.len())])
    )
}

/// Why a body was not spooled.
enum BodyError {
    TooBig,
    Slow(&'static str),
    Client(String),
    Io(std::io::Error),
}

/// Reads the body into `file`, never more than `max` bytes; returns its SHA-256.
async fn spool_body(
    body: &mut Body,
    file: std::fs::File,
    max: u64,
) -> Result<(Vec<u8>, u64), BodyError> {
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    let deadline = tokio::time::Instant::now() + BODY_TOTAL;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        let frame = tokio::select! {
            frame = tokio::time::timeout(BODY_IDLE, next) => match frame {
                Ok(frame) => frame,
                Err(_) => return Err(BodyError::Slow("no data came for 30 s")),
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(BodyError::Slow("the body took longer than 15 minutes"));
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| BodyError::Client(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        bytes += data.len() as u64;
        if bytes > max {
            return Err(BodyError::TooBig);
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(BodyError::Io)?;
    }
    out.flush().await.map_err(BodyError::Io)?;
    // On disk before the intake reads it: `processed/` keeps what was committed.
    out.into_inner().sync_all().await.map_err(BodyError::Io)?;
    Ok((hasher.finalize().to_vec(), bytes))
}

/// `POST /api/feeds/NAME`.
pub async fn push(
    State(state): State<Arc<WebState>>,
    ClientIp(ip): ClientIp,
    Path(feed_name): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let (parts, mut body) = request.into_parts();
    let headers = &parts.headers;
    if let Err(wait) = state.push.throttle.check(ip, Instant::now()) {
        tracing::warn!(%ip, feed = %crate::display::Escaped(&feed_name), "Push refused unchecked: too many refused tokens from this address");
        let mut response = refused(
            StatusCode::TOO_MANY_REQUESTS,
            "too many refused tokens from this address; try again later",
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let Some(pushes) = &state.push.pushes else {
        return unavailable("this console does not take files");
    };
    let config = pushes.config.borrow().clone();
    let feed = config.feed(&feed_name);
    let given = bearer(headers);
    if !token_opens(feed, given) {
        state.push.throttle.failed(ip, Instant::now());
        tracing::warn!(%ip, feed = %crate::display::Escaped(&feed_name), token_given = given.is_some(),
            "Push refused: no such push feed, or the wrong token; nothing read");
        return unauthorized(given.is_some());
    }
    // token_opens is true only for a feed that exists.
    let Some(feed) = feed.cloned() else {
        return unauthorized(true);
    };
    let actor = Actor::push(&feed.name, ip);

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if format_of_content_type(content_type) != Some(feed.format) {
        let said = if content_type.is_empty() {
            "no Content-Type".to_string()
        } else {
            format!(
                "Content-Type {}",
                crate::display::escape_controls(content_type)
            )
        };
        return refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "feed `{}` takes {} files (Content-Type: {}); this request has {said}",
                feed.name,
                feed.format,
                content_type_of(feed.format)
            ),
        );
    }
    let too_big = || {
        refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "over the feed's limit of {} bytes (max_file_bytes); split it into smaller files",
                feed.max_file_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > feed.max_file_bytes)
        || body.size_hint().lower() > feed.max_file_bytes
    {
        return too_big();
    }
    let jobs = pushes.jobs.clone();
    let label = label_of(headers.get("x-filename").map(|v| v.as_bytes()));

    let (dir, keep) = (feed.dir.clone(), feed.on_done == OnDone::Move);
    let opened = tokio::task::spawn_blocking(move || {
        let folders = FeedFolders::open(&dir, keep).map_err(|p| p.0)?;
        let (name, file) = folders.create_spool().map_err(|e| e.to_string())?;
        Ok::<_, String>((Spool { folders, name }, file))
    })
    .await;
    let (spool, file) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            tracing::error!(feed = %feed.name, error = %why, "Cannot take a pushed file: its feed folder");
            return unavailable("the feed's folder cannot take files now");
        }
        Err(e) => {
            tracing::error!(feed = %feed.name, error = %e, "Cannot take a pushed file");
            return unavailable("the feed cannot take files now");
        }
    };
    let (sha256, bytes) = match spool_body(&mut body, file, feed.max_file_bytes).await {
        Ok(done) => done,
        Err(BodyError::TooBig) => return too_big(),
        Err(BodyError::Slow(why)) => return refused(StatusCode::REQUEST_TIMEOUT, why),
        Err(BodyError::Client(why)) => {
            tracing::info!(feed = %feed.name, %ip, error = %why, "Push body not received whole");
            return refused(StatusCode::BAD_REQUEST, "the body did not arrive whole");
        }
        Err(BodyError::Io(e)) => {
            tracing::error!(feed = %feed.name, error = %e, "Cannot spool a pushed file");
            return unavailable("the feed cannot take files now");
        }
    };
    let name = generated_name((state.clock)(), &label, &sha256, feed.format);
    let (reply, answer) = oneshot::channel();
    let job = PushJob {
        feed: feed.name.clone(),
        spool,
        name: OsString::from(&name),
        actor,
        reply,
    };
    if jobs.send(job).await.is_err() {
        return unavailable("the daemon is stopping");
    }
    let Ok(outcome) = answer.await else {
        return unavailable("the daemon stopped before the file was processed");
    };
    hold_before_answering().await;
    let response = answer_for(&feed, &name, outcome);
    tracing::info!(feed = %feed.name, file = %name, %ip, bytes, status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64, "Push answered");
    response
}

fn answer_for(feed: &FeedConfig, name: &str, outcome: PushReply) -> Response {
    let accepted = |a: Accepted| json(StatusCode::OK, serde_json::json!(a));
    match outcome {
        PushReply::Done(Ok(Disposition::Processed(summary))) => accepted(Accepted {
            file: name.to_string(),
            rows: summary.rows,
            events: summary.events,
            rejected_rows: summary.rejected_rows,
            alerts: summary.alerts.len() as u64,
            duplicate: false,
        }),
        PushReply::Done(Ok(Disposition::Duplicate)) => accepted(Accepted {
            file: name.to_string(),
            rows: 0,
            events: 0,
            rejected_rows: 0,
            alerts: 0,
            duplicate: true,
        }),
        PushReply::Done(Ok(Disposition::Rejected(reason))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "file": name, "reasons": [reason] }),
        ),
        // A spool's name is never one the intake skips; said rather than assumed.
        PushReply::Done(Ok(Disposition::Skipped)) => {
            tracing::error!(feed = %feed.name, file = %name, "A pushed file was skipped by the intake");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file was not processed",
            )
        }
        PushReply::Done(Err(IntakeError::Folder(_))) => unavailable(
            "the feed is paused: its folders cannot be trusted (see `earlywarn status`)",
        ),
        PushReply::Done(Err(IntakeError::Interrupted)) => unavailable("the daemon is stopping"),
        PushReply::Done(Err(IntakeError::Store(_))) => {
            unavailable("the file could not be recorded; nothing of it was kept")
        }
        PushReply::Done(Err(e)) => {
            tracing::error!(feed = %feed.name, file = %name, error = %e, "A pushed file could not be processed");
            refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file could not be processed; nothing of it was kept",
            )
        }
        PushReply::NoSuchFeed => unauthorized(true),
    }
}

/// Test builds only: with `EARLYWARN_TEST_PUSH_HOLD=PATH`, a push whose file
/// has been committed creates PATH and never answers, so a test can kill the
/// daemon in exactly the window between the commit and the answer.
async fn hold_before_answering() {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("EARLYWARN_TEST_PUSH_HOLD") {
        let _ = std::fs::write(&path, b"committed\n");
        std::future::pending::<()>().await;
    }
}

/// Who may push where, as the log shows it at start.
pub fn log_push_feeds(config: &crate::config::Config) {
    for feed in config.feeds.iter().filter(|f| f.push_token.is_some()) {
        tracing::info!(feed = %feed.name, path = %format!("/api/feeds/{}", feed.name), "Taking files over HTTP");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_filename_becomes_a_short_plain_label() {
        assert_eq!(label_of(Some(b"../../etc/passwd")), "etc_passwd");
        assert_eq!(label_of(Some(b"results 2026-12.csv")), "results_2026-12");
        assert_eq!(label_of(Some(b"a\r\nX-Evil: 1\x1b[31m")), "a_X-Evil_1_31m");
        assert_eq!(label_of(Some(b"...")), "push");
        assert_eq!(label_of(None), "push");
        assert_eq!(label_of(Some(".csv".as_bytes())), "csv");
        let long = label_of(Some("x".repeat(10_000).as_bytes()));
        assert_eq!(long.len(), MAX_LABEL);
        assert!(label_of(Some("café/naïve".as_bytes())).is_ascii());
    }

    #[test]
    fn the_generated_name_has_the_time_label_hash_and_the_feeds_extension() {
        let now: jiff::Timestamp = "2026-12-01T21:18:20Z".parse().unwrap();
        let name = generated_name(
            now,
            "results",
            &[0x3f, 0xa2, 0xc1, 0xd0, 0xff],
            FeedFormat::Csv,
        );
        assert_eq!(name, "20261201T211820Z-results-3fa2c1d0.csv");
    }

    #[test]
    fn content_types_name_formats_whatever_their_case_and_parameters() {
        assert_eq!(
            format_of_content_type("text/csv; charset=utf-8"),
            Some(FeedFormat::Csv)
        );
        assert_eq!(
            format_of_content_type("Application/X-NDJSON"),
            Some(FeedFormat::Jsonl)
        );
        assert_eq!(
            format_of_content_type("application/json"),
            Some(FeedFormat::Json)
        );
        assert_eq!(format_of_content_type("text/plain"), None);
        assert_eq!(format_of_content_type(""), None);
        for f in [
            FeedFormat::Csv,
            FeedFormat::Jsonl,
            FeedFormat::Json,
            FeedFormat::Xlsx,
            FeedFormat::Ods,
        ] {
            assert_eq!(format_of_content_type(content_type_of(f)), Some(f));
        }
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
