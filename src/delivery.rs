//! Mail out: sending outbox rows over SMTP (or to `.eml` files), with retries.
//!
//! An exchange ([`smtp`]) ends in one of these, and the outbox treats each its own way (SPEC §7):
//! - per address: a 5xx to one `RCPT TO` fails that address only (recorded on
//!   the row, logged at ERROR); a 4xx leaves it owed, retried later without
//!   sending again to the addresses that accepted;
//! - [`SendError::Permanent`] (a 5xx to `DATA`): the email fails;
//! - [`SendError::Config`] (AUTH refused, TLS failure, no STARTTLS, a 5xx to
//!   EHLO or MAIL FROM): a configuration fault, never a verdict on the email:
//!   retried, logged at ERROR when it starts or changes, kept in the database
//!   for `status` and `/metrics`, cleared by the next exchange that works;
//! - [`SendError::Unavailable`] / [`SendError::Transient`]: retried with capped
//!   exponential backoff.
//!
//! While the server is known to be unavailable (or to refuse the session), a
//! probe (connect, EHLO, STARTTLS, AUTH, QUIT) runs every [`PROBE_EVERY`] and
//! whenever rows come due: it stands in for their exchanges (a failed probe is
//! recorded as a failed attempt of each, so their backoff goes on as usual),
//! and when it succeeds every waiting row is due at once, so the backlog
//! drains critical first within seconds of the server's return. Every
//! exchange is bounded by `[mail] timeout`.

mod clock;
mod pool;
mod smtp;

pub use clock::Clock;

pub use smtp::{Step, Verdict, What, classify};

use crate::config::{MailConfig, SmtpConfig, TlsMode, Transport};
use crate::store::{DeliveryFault, FailedAddress, OutboxItem, OutboxOutcome, OutboxStatus, Store};
use jiff::Timestamp;
use lettre::Address;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: this email could not go now (4xx to MAIL or DATA, a
    /// connection lost mid-exchange).
    #[error("{0}")]
    Transient(String),
    /// Worth retrying once the server answers again: it is down, tarpitting,
    /// or not taking sessions (4xx before MAIL). The probe watches for it.
    #[error("{0}")]
    Unavailable(String),
    /// Our session or settings are wrong: not the email's fault. `probe_sees`:
    /// the probe goes through the step that failed, so it can see it fixed.
    #[error("{reason}")]
    Config { reason: String, probe_sees: bool },
    /// Retrying will not help: the server refused the email (5xx to DATA).
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    fn from_failure(f: smtp::Failure) -> SendError {
        match f.verdict {
            Verdict::Config => SendError::Config {
                reason: f.reason,
                probe_sees: f.step.probe_sees(),
            },
            Verdict::Unavailable => SendError::Unavailable(f.reason),
            Verdict::EmailRefused => SendError::Permanent(f.reason),
            // Per-address verdicts never end an exchange; anything else is for later.
            Verdict::Transient | Verdict::AddressRefused | Verdict::AddressDeferred => {
                SendError::Transient(f.reason)
            }
        }
    }
}

/// What an exchange that ran to its end did, address by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Addresses that accepted the email.
    pub accepted: Vec<String>,
    /// Refused for good (5xx to RCPT, or not an address at all).
    pub refused: Vec<FailedAddress>,
    /// `(address, reason)`: refused for now (4xx to RCPT); still owed.
    pub deferred: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("cannot read the SMTP password from {path}: {source}")]
    Password {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the SMTP password file {path} is readable by {who} (mode {mode:04o}); make it readable by earlywarn's user only: chmod 600 {path}"
    )]
    PasswordFileOpen {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error(
        "[mail] username = \"{username}\" but no password is available: name a file with `password_file`, or pass the systemd credential `smtp-password` (LoadCredential); earlywarn never sends AUTH with an empty password"
    )]
    NoPassword { username: String },
    #[error("the SMTP password file {path} is empty")]
    PasswordEmpty { path: PathBuf },
    #[error("cannot read the CA certificate {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
}

/// Sends finished messages.
// One per daemon, behind an `Arc`: the size of the SMTP variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Mailer {
    Smtp {
        settings: smtp::Settings,
        /// `[mail] helo_name`, if set.
        configured_helo: Option<String>,
        /// The EHLO name, worked out once (see [`Mailer::helo`]).
        helo: OnceCell<ClientId>,
        /// Sessions kept open between emails.
        pool: pool::Pool,
    },
    File {
        dir: PathBuf,
    },
}

impl Mailer {
    pub fn new(mail: &MailConfig) -> Result<Mailer, MailerError> {
        match &mail.transport {
            Transport::File { dir } => Ok(Mailer::File { dir: dir.clone() }),
            Transport::Smtp(smtp) => Ok(Mailer::Smtp {
                settings: smtp_settings(smtp, mail.timeout)?,
                configured_helo: mail.helo_name.clone(),
                helo: OnceCell::new(),
                pool: pool::Pool::new(mail.max_connections),
            }),
        }
    }

    /// The name sent in EHLO: `[mail] helo_name`; else the machine's fully
    /// qualified name (its host name, or the canonical name the resolver gives
    /// for it, if that has a dot); else the address literal of the local side
    /// of a connection to the server (RFC 5321 allows it; a bare short name is
    /// what relays refuse). Worked out once, off the async workers (the
    /// resolver may block), and logged; `None` for the file transport.
    pub async fn helo(&self) -> Option<&ClientId> {
        let Mailer::Smtp {
            settings,
            configured_helo,
            helo,
            ..
        } = self
        else {
            return None;
        };
        Some(
            helo.get_or_init(|| async {
                if let Some(name) = configured_helo {
                    tracing::info!(helo_name = %crate::display::escape_controls(name), "EHLO name from [mail] helo_name");
                    return smtp::client_id(name);
                }
                let found = tokio::time::timeout(
                    RESOLVER_TIME_LIMIT,
                    tokio::task::spawn_blocking(machine_fqdn),
                )
                .await;
                if let Ok(Ok(Some(name))) = found {
                    tracing::info!(helo_name = %name, "EHLO name: the machine's fully qualified name");
                    return ClientId::Domain(name);
                }
                let local = local_address_towards(&settings.host, settings.port)
                    .await
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                let literal = smtp::address_literal(local);
                tracing::info!(helo_name = %literal,
                    "EHLO name: the address of this side of the connection (the machine has no fully qualified name; set [mail] helo_name to choose one)");
                literal
            })
            .await,
        )
    }

    /// Sends one message to `recipients`, each address on its own: see [`Delivered`].
    pub async fn send(
        &self,
        from: &str,
        recipients: &[String],
        message: &[u8],
        name_hint: &str,
    ) -> Result<Delivered, SendError> {
        match self {
            Mailer::File { dir } => {
                // Off the async worker: a backlog of fsynced writes would otherwise
                // never yield, and shutdown and the other tasks would wait on it.
                let (dir, name, message) = (dir.clone(), name_hint.to_string(), message.to_vec());
                let shown = dir.display().to_string();
                tokio::task::spawn_blocking(move || write_eml(&dir, &name, &message))
                    .await
                    .map_err(|e| SendError::Transient(format!("cannot write to {shown}: {e}")))?
                    .map_err(|e| SendError::Transient(format!("cannot write to {shown}: {e}")))?;
                Ok(Delivered {
                    accepted: recipients.to_vec(),
                    ..Delivered::default()
                })
            }
            Mailer::Smtp { settings, pool, .. } => {
                let from: Address = from.parse().map_err(|e| SendError::Config {
                    reason: format!("bad sender address `{from}`: {e}"),
                    probe_sees: false,
                })?;
                let mut delivered = Delivered::default();
                let mut to = Vec::new();
                for r in recipients {
                    match r.parse::<Address>() {
                        Ok(a) => to.push(a),
                        Err(e) => delivered.refused.push(FailedAddress {
                            address: r.clone(),
                            error: format!("not an email address: {e}"),
                        }),
                    }
                }
                if to.is_empty() {
                    return Ok(delivered);
                }
                let helo = self.helo().await.cloned().unwrap_or_default();
                // This bounds the whole exchange, including a server that
                // stalls after DATA; the session in use is dropped with it.
                let outcome = match tokio::time::timeout(
                    settings.timeout,
                    pool.send(settings, &helo, &from, &to, message),
                )
                .await
                {
                    Err(_) => {
                        return Err(SendError::Transient(format!(
                            "no answer within {}s",
                            settings.timeout.as_secs()
                        )));
                    }
                    Ok((Err(failure), _)) => return Err(SendError::from_failure(failure)),
                    Ok((Ok(outcome), reuse)) => {
                        tracing::trace!(
                            reused = reuse.reused,
                            stale = reuse.stale,
                            "SMTP exchange"
                        );
                        outcome
                    }
                };
                delivered.accepted = outcome.accepted;
                delivered.refused.extend(
                    outcome
                        .refused
                        .into_iter()
                        .map(|(address, error)| FailedAddress { address, error }),
                );
                delivered.deferred = outcome.deferred;
                Ok(delivered)
            }
        }
    }

    /// Closes the sessions kept open (QUIT): at shutdown.
    pub async fn close(&self) {
        if let Mailer::Smtp { pool, settings, .. } = self {
            let _ = tokio::time::timeout(settings.timeout, pool.close_all()).await;
        }
    }

    /// Whether the server takes a session now (connect, EHLO, STARTTLS, AUTH,
    /// QUIT), bounded by the timeout. Always `Ok` for the file transport.
    pub async fn probe(&self) -> Result<(), SendError> {
        let Mailer::Smtp { settings, .. } = self else {
            return Ok(());
        };
        let helo = self.helo().await.cloned().unwrap_or_default();
        match tokio::time::timeout(settings.timeout, smtp::probe(settings, &helo)).await {
            Err(_) => Err(SendError::Unavailable(format!(
                "no answer within {}s",
                settings.timeout.as_secs()
            ))),
            Ok(Err(failure)) => Err(SendError::from_failure(failure)),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// The longest the resolver may take to give the machine's canonical name.
const RESOLVER_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The machine's fully qualified name, if it has one: its host name if that
/// has a dot, else the canonical name `getaddrinfo` gives for it. Blocking.
fn machine_fqdn() -> Option<String> {
    let short = host_name()?;
    let qualified = |n: &str| crate::config::valid_helo_name(n).is_ok();
    if qualified(&short) {
        return Some(short);
    }
    canonical_name(&short).filter(|n| qualified(n))
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which we pass;
    // gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let name = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    name.to_str().ok().map(str::to_string)
}

/// The canonical name of `host` (`getaddrinfo` with `AI_CANONNAME`). Blocking.
fn canonical_name(host: &str) -> Option<String> {
    let c_host = std::ffi::CString::new(host).ok()?;
    // SAFETY: addrinfo is plain data; all-zero is its documented empty hints value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `res` is freed below, once.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: `res` is the non-null list getaddrinfo returned; ai_canonname
    // (set on the first entry with AI_CANONNAME) is NUL-terminated or null.
    let name = unsafe {
        let c = (*res).ai_canonname;
        (!c.is_null())
            .then(|| {
                std::ffi::CStr::from_ptr(c)
                    .to_str()
                    .ok()
                    .map(str::to_string)
            })
            .flatten()
    };
    // SAFETY: `res` came from getaddrinfo and is freed exactly once.
    unsafe { libc::freeaddrinfo(res) };
    name
}

/// The local address the system would use to reach `host:port`: a UDP socket
/// "connected" there picks its route and source address and sends nothing.
async fn local_address_towards(host: &str, port: u16) -> Option<std::net::IpAddr> {
    let target = tokio::net::lookup_host((host, port)).await.ok()?.next()?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(target).await.ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

fn smtp_settings(smtp: &SmtpConfig, timeout: Duration) -> Result<smtp::Settings, MailerError> {
    let tls_params = if smtp.tls != TlsMode::None {
        let mut params = TlsParameters::builder(smtp.host.clone());
        if let Some(ca) = &smtp.ca_file {
            let pem = std::fs::read(ca).map_err(|e| MailerError::CaFile {
                path: ca.clone(),
                message: e.to_string(),
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| MailerError::CaFile {
                path: ca.clone(),
                message: e.to_string(),
            })?;
            params = params.add_root_certificate(cert);
        }
        Some(
            params
                .build_rustls()
                .map_err(|e| MailerError::Tls(e.to_string()))?,
        )
    } else {
        None
    };
    let credentials = match &smtp.username {
        Some(user) => {
            let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
            let password = read_password(
                user,
                smtp.password_file.as_deref(),
                credentials_dir.as_deref(),
            )?;
            Some(Credentials::new(user.clone(), password))
        }
        None => None,
    };
    Ok(smtp::Settings {
        host: smtp.host.clone(),
        port: smtp.port,
        tls: smtp.tls,
        tls_params,
        credentials,
        timeout,
    })
}
/// Where systemd puts service credentials. It alone controls who may read
/// them (the unit's user, sometimes through an ACL that shows as group bits),
/// so their mode bits say nothing about exposure.
const SYSTEMD_CREDENTIALS: &str = "/run/credentials/";

/// The SMTP password for `username`: from `password_file`, else from systemd's
/// credential `smtp-password` (LoadCredential) in `credentials_dir`. Refused when
/// there is none, when it is empty, or when a password file is readable by
/// group or others (SPEC §7): a password others can read is already leaked.
fn read_password(
    username: &str,
    path: Option<&Path>,
    credentials_dir: Option<&Path>,
) -> Result<String, MailerError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let path = match (path, credentials_dir) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(dir)) => dir.join("smtp-password"),
        (None, None) => {
            return Err(MailerError::NoPassword {
                username: username.to_string(),
            });
        }
    };
    let read_error = |source| MailerError::Password {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::File::open(&path).map_err(read_error)?;
    // The mode of what was opened, not of whatever the name points to later.
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
    let systemd_managed = path.starts_with(SYSTEMD_CREDENTIALS)
        || credentials_dir.is_some_and(|dir| path.starts_with(dir));
    if !systemd_managed && mode & 0o077 != 0 {
        return Err(MailerError::PasswordFileOpen {
            path,
            mode,
            who: match (mode & 0o070 != 0, mode & 0o007 != 0) {
                (true, true) => "its group and others",
                (true, false) => "its group",
                _ => "others",
            },
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(MailerError::PasswordEmpty { path });
    }
    Ok(password.to_string())
}

/// Writes a message atomically as `dir/NAME.eml`, never over an existing
/// file: the temporary file is created exclusively and moved into place with
/// `RENAME_NOREPLACE`. A `NAME.eml` already there is this same email, written
/// by an attempt whose outcome was not recorded (names are unique per outbox
/// row), so it counts as delivered.
fn write_eml(dir: &Path, name: &str, message: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    let target = dir.join(format!("{name}.eml"));
    if target.exists() {
        return Ok(());
    }
    // Left by an attempt interrupted mid-write: only this row uses the name.
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(message)?;
        f.sync_all()?;
    }
    match renameat_with(CWD, &tmp, CWD, &target, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => std::fs::remove_file(&tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e.into())
        }
    }
}

/// The delay before retry number `attempt` (1 = the first retry): doubling from `initial`, capped at `max`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    initial.saturating_mul(factor).min(max)
}

/// What happened to one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Every address still owed the email accepted it.
    Sent,
    /// Tried again after `after`. `fault`: how the exchange failed, if it did.
    Retry {
        after: Duration,
        fault: Option<SendError>,
    },
    /// Failed for good: refused by DATA, or by some address (the others got it).
    Failed { error: String },
}

/// How an attempt turned out, as the row must record it. Pure.
pub fn outcome_of(
    item: &OutboxItem,
    result: &Result<Delivered, SendError>,
    now: Timestamp,
    retry_in: Duration,
) -> (Attempt, OutboxOutcome) {
    let next = now.checked_add(retry_in).unwrap_or(now);
    let retry = |error: String, fault: Option<SendError>| {
        (
            Attempt::Retry {
                after: retry_in,
                fault,
            },
            OutboxOutcome {
                status: OutboxStatus::Pending,
                delivered_at: None,
                remaining: None,
                newly_failed: Vec::new(),
                next_attempt_at: Some(next),
                last_error: Some(error),
            },
        )
    };
    match result {
        Err(SendError::Permanent(e)) => (
            Attempt::Failed { error: e.clone() },
            OutboxOutcome {
                status: OutboxStatus::Failed,
                delivered_at: None,
                // Still owed to every address it was owed to: `outbox retry` sends to them.
                remaining: None,
                newly_failed: Vec::new(),
                next_attempt_at: None,
                last_error: Some(e.clone()),
            },
        ),
        Err(e @ SendError::Config { reason, .. }) => {
            retry(format!("configuration fault: {reason}"), Some(e.clone()))
        }
        Err(e @ (SendError::Transient(r) | SendError::Unavailable(r))) => {
            retry(r.clone(), Some(e.clone()))
        }
        Ok(d) => {
            let remaining: Vec<String> = d.deferred.iter().map(|(a, _)| a.clone()).collect();
            let refused: Vec<String> = d
                .refused
                .iter()
                .map(|f| format!("{}: {}", f.address, f.error))
                .collect();
            let delivered_at = (!d.accepted.is_empty()).then_some(now);
            let any_failed = item.has_failed_addresses || !d.refused.is_empty();
            if !remaining.is_empty() {
                let deferred: Vec<String> = d
                    .deferred
                    .iter()
                    .map(|(a, e)| format!("{a}: {e}"))
                    .collect();
                let (attempt, mut outcome) =
                    retry(format!("deferred by {}", deferred.join("; ")), None);
                outcome.delivered_at = delivered_at;
                outcome.remaining = Some(remaining);
                outcome.newly_failed = d.refused.clone();
                return (attempt, outcome);
            }
            let (attempt, status, last_error) = if any_failed {
                let error = if refused.is_empty() {
                    "an address refused it earlier (see failed addresses)".to_string()
                } else {
                    format!("refused by {}", refused.join("; "))
                };
                (
                    Attempt::Failed {
                        error: error.clone(),
                    },
                    OutboxStatus::Failed,
                    Some(error),
                )
            } else {
                (Attempt::Sent, OutboxStatus::Sent, None)
            };
            (
                attempt,
                OutboxOutcome {
                    status,
                    delivered_at,
                    remaining: Some(Vec::new()),
                    newly_failed: d.refused.clone(),
                    next_attempt_at: None,
                    last_error,
                },
            )
        }
    }
}

/// Records (and logs) the outcome of an attempt at `item`: an exchange's
/// result, or the failure of the probe that stood in for one. If the database
/// cannot take the record (a full disk), the write is returned to be retried:
/// the row must not look due again, or the partner would get the email again
/// and again.
fn settle(
    store: &Mutex<Store>,
    mail: &MailConfig,
    clock: &Clock,
    item: &OutboxItem,
    result: Result<Delivered, SendError>,
) -> (Attempt, Option<OutcomeWrite>) {
    let now = clock.now();
    let attempts = item.attempts + 1;
    let retry_in = backoff(attempts, mail.retry_initial, mail.retry_max);
    let (outcome, write) = outcome_of(item, &result, now, retry_in);
    let write = OutcomeWrite { id: item.id, write };
    let unrecorded = match write.apply(store) {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(alert = %item.alert_id, error = %e, "Cannot record the delivery outcome; holding it until the database takes it");
            Some(write)
        }
    };
    // Logged once recorded: whoever reads a log line and then asks `status`
    // finds the outcome there.
    if let Ok(d) = &result {
        for f in &d.refused {
            tracing::error!(alert = %item.alert_id, partner = %item.partner_id, address = %crate::display::escape_controls(&f.address),
                error = %crate::display::escape_controls(&f.error),
                "An address of this partner refused the email; it did not reach that address (earlywarn outbox list --failed)");
        }
        for (address, error) in &d.deferred {
            tracing::warn!(alert = %item.alert_id, partner = %item.partner_id, address = %crate::display::escape_controls(address),
                error = %crate::display::escape_controls(error), retry_in_secs = retry_in.as_secs(),
                "An address deferred the email; will retry it");
        }
        if !d.accepted.is_empty() {
            tracing::info!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts,
                addresses = d.accepted.len(), "Delivered");
        } else if d.deferred.is_empty() && !item.has_failed_addresses {
            tracing::error!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts,
                error = %crate::display::escape_controls(&d.refused.iter().map(|f| f.error.as_str()).collect::<Vec<_>>().join("; ")),
                "Delivery failed permanently; the alert did not reach this partner (every address refused it)");
        }
    }
    match &result {
        Err(SendError::Permanent(e)) => {
            tracing::error!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, error = %crate::display::escape_controls(e),
                "Delivery failed permanently; the alert did not reach this partner");
        }
        Err(SendError::Transient(e) | SendError::Unavailable(e)) => {
            tracing::warn!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, error = %crate::display::escape_controls(e),
                retry_in_secs = retry_in.as_secs(), "Delivery failed; will retry");
        }
        // Logged by the worker, at ERROR when it starts or changes, not once per row.
        Err(SendError::Config { reason, .. }) => {
            tracing::debug!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, error = %crate::display::escape_controls(reason),
                retry_in_secs = retry_in.as_secs(), "Delivery held back by a configuration fault");
        }
        Ok(_) => {}
    }
    (outcome, unrecorded)
}

/// The row's bytes as handed to the transport: `Date` is the first hand-off
/// (SPEC §7), recorded on the row before the first send so that every retry
/// carries the same one. If the database cannot record it now, this attempt
/// says now and a later one records its own time: better than not sending.
fn hand_off(store: &Mutex<Store>, clock: &Clock, item: &OutboxItem) -> Vec<u8> {
    let now = clock.now();
    let at = {
        // Poisoned: see `OutcomeWrite::apply`.
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        store.hand_off_time(item.id, now)
    };
    let at = at.unwrap_or_else(|e| {
        tracing::warn!(alert = %item.alert_id, error = %e, "Cannot record the hand-off time; dating the email now");
        now
    });
    crate::alerts::render::with_date(&item.message, at)
}

/// The file transport's name for a row: one file per outbox row (the row id),
/// named by its Message-ID (alert, partner, purpose) so people can tell them apart.
fn eml_name(item: &OutboxItem) -> String {
    let left = item
        .message_id
        .trim_start_matches('<')
        .split('@')
        .next()
        .unwrap_or_default();
    let safe: String = left
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-{}", safe.trim_start_matches('.'), item.id)
}

/// The database write that records an attempt's outcome.
#[derive(Debug, Clone)]
pub struct OutcomeWrite {
    id: i64,
    write: OutboxOutcome,
}

impl OutcomeWrite {
    fn id(&self) -> i64 {
        self.id
    }

    fn apply(&self, store: &Mutex<Store>) -> Result<(), crate::store::StoreError> {
        // A poisoned lock means another thread panicked mid-update; SQLite's own
        // transaction keeps the data consistent, so carrying on is safe.
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        store.record_outcome(self.id, &self.write)
    }
}

/// How often an idle outbox looks for rows written by other processes
/// (`earlywarn alerts approve`, `earlywarn outbox retry`): one indexed query a second costs nothing.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How often the server is probed while deliveries wait on it.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// A configuration fault that goes on is logged again at ERROR this often.
const FAULT_RELOG_EVERY: Duration = Duration::from_secs(300);

/// What the outbox worker needs.
pub struct OutboxContext {
    /// Its own connection: WAL lets it read while a file commits.
    pub store: Arc<Mutex<Store>>,
    pub mailer: Arc<Mailer>,
    pub mail: MailConfig,
    /// Notified when new rows are committed.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub ops: Arc<crate::ops::OpsNotifier>,
    /// Where stored times and waits come from: [`Clock::system`] but in tests.
    pub clock: Clock,
}

/// The configuration fault in force, as the worker tracks it for logging.
struct FaultLog {
    reason: String,
    last_logged: Instant,
    /// Tries that failed the same way since the last ERROR line.
    since_logged: u64,
}

/// The worker's view of the mail server.
#[derive(Default)]
struct ServerHealth {
    /// The server is unavailable (or refuses our session) in a way the probe
    /// can see: rows wait for a probe to succeed rather than trying one by one.
    waiting_for_probe: bool,
    last_probe: Option<Instant>,
    fault: Option<FaultLog>,
}

impl ServerHealth {
    /// Notes a configuration fault: ERROR when it starts or changes, then every
    /// [`FAULT_RELOG_EVERY`]; the database holds it for `status` and `/metrics`.
    fn config_fault(&mut self, store: &Mutex<Store>, clock: &Clock, reason: &str) {
        let now = clock.instant();
        let changed = self.fault.as_ref().is_none_or(|f| f.reason != reason);
        if changed {
            let waiting = {
                let s = store.lock().unwrap_or_else(|p| p.into_inner());
                let since = match s.delivery_fault() {
                    Ok(Some(f)) if f.reason == reason => f.since,
                    _ => clock.now(),
                };
                if let Err(e) = s.set_delivery_fault(Some(&DeliveryFault {
                    since,
                    reason: reason.to_string(),
                })) {
                    tracing::error!(error = %e, "Cannot record the delivery fault");
                }
                s.outbox_counts().map(|c| c.pending).unwrap_or(0)
            };
            tracing::error!(error = %crate::display::escape_controls(reason), waiting,
                "DELIVERY FAULT: the mail server refuses our session; fix the [mail] settings. Deliveries are kept and retried, none is marked failed");
            self.fault = Some(FaultLog {
                reason: reason.to_string(),
                last_logged: now,
                since_logged: 0,
            });
            return;
        }
        if let Some(f) = &mut self.fault {
            f.since_logged += 1;
            if now.duration_since(f.last_logged) >= FAULT_RELOG_EVERY {
                tracing::error!(error = %crate::display::escape_controls(reason), failed_tries = f.since_logged,
                    "DELIVERY FAULT goes on; fix the [mail] settings");
                f.last_logged = now;
                f.since_logged = 0;
            } else {
                tracing::debug!(error = %crate::display::escape_controls(reason), "Delivery fault goes on");
            }
        }
    }

    /// An exchange got through: any fault is over.
    fn works(&mut self, store: &Mutex<Store>) {
        self.waiting_for_probe = false;
        let s = store.lock().unwrap_or_else(|p| p.into_inner());
        let recorded = s.delivery_fault().ok().flatten().is_some();
        if self.fault.take().is_some() || recorded {
            tracing::info!("Delivery works again");
            if let Err(e) = s.set_delivery_fault(None) {
                tracing::error!(error = %e, "Cannot clear the delivery fault");
            }
        }
    }

    /// What a send or probe error says about the server.
    fn failed(&mut self, store: &Mutex<Store>, clock: &Clock, error: &SendError) {
        match error {
            SendError::Config { reason, probe_sees } => {
                self.config_fault(store, clock, reason);
                self.waiting_for_probe |= *probe_sees;
            }
            SendError::Unavailable(_) => self.waiting_for_probe = true,
            // The session worked; the email is the problem, or the moment.
            SendError::Transient(_) | SendError::Permanent(_) => self.works(store),
        }
    }

    fn probe_due(&self, now: Instant) -> bool {
        self.last_probe
            .is_none_or(|at| now.duration_since(at) >= PROBE_EVERY)
    }
}

/// Drains the outbox until `shutdown`: starts what is due, critical first, up
/// to `[mail] max_connections` emails at once, then sleeps until the next row
/// is due or `wake` says new rows were committed. While the server is
/// unavailable, probes it instead (see the module's header).
///
/// Every database write (the hand-off time, each outcome) is made by this
/// task, on its one connection: the exchanges run as tasks of their own and
/// send their results back here. No email starts while a more urgent one is
/// still in flight, so a critical alert's emails are all answered before any
/// lesser email goes, whatever the order the server finishes them in.
pub async fn run_outbox(ctx: OutboxContext) {
    // Worked out (and logged) at start, not at the first alert.
    let _ = ctx.mailer.helo().await;
    // Outcomes the database could not record yet (see `settle`).
    let mut unrecorded: Vec<OutcomeWrite> = Vec::new();
    let mut health = ServerHealth::default();
    let max_in_flight = ctx.mail.max_connections.max(1);
    // Exchanges under way: each ends with its row and result.
    let mut in_flight: tokio::task::JoinSet<(OutboxItem, Result<Delivered, SendError>)> =
        tokio::task::JoinSet::new();
    // The rows in `in_flight`, by task (their messages left out).
    let mut flying: Vec<(tokio::task::Id, OutboxItem)> = Vec::new();
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        if !unrecorded.is_empty() {
            unrecorded.retain(|w| w.apply(&ctx.store).is_err());
            if !unrecorded.is_empty() && in_flight.is_empty() {
                // The database is still refusing writes: do not spin on it.
                tokio::select! {
                    _ = ctx.clock.sleep(Duration::from_secs(1)) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
            }
        }
        if health.waiting_for_probe && in_flight.is_empty() {
            // Rows due now are not tried one by one against a server known to be
            // unavailable: one probe stands in for them. If it fails, each is
            // recorded as a failed attempt (its backoff goes on as usual); if it
            // succeeds, every waiting row is made due and the batch that follows
            // sends critical alerts first.
            let due = {
                let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
                s.due(ctx.clock.now(), 16).unwrap_or_default()
            };
            let due: Vec<OutboxItem> = due
                .into_iter()
                .filter(|item| !unrecorded.iter().any(|w| w.id() == item.id))
                .collect();
            let next_due = {
                let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
                s.next_due().ok().flatten()
            };
            if next_due.is_none() {
                // Nothing waits on the server: the next row will find out for itself.
                health.waiting_for_probe = false;
                continue;
            }
            if !due.is_empty() || health.probe_due(ctx.clock.instant()) {
                health.last_probe = Some(ctx.clock.instant());
                let probed = tokio::select! {
                    p = ctx.mailer.probe() => p,
                    _ = ctx.shutdown.cancelled() => break,
                };
                match probed {
                    Ok(()) => {
                        health.works(&ctx.store);
                        let made_due = {
                            let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
                            s.make_waiting_due(ctx.clock.now())
                        };
                        tracing::info!(
                            waiting = made_due.unwrap_or(0) + due.len(),
                            "The mail server answers again; sending every waiting delivery now, critical first"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %crate::display::escape_controls(&e.to_string()), "Probe: the mail server still fails");
                        health.failed(&ctx.store, &ctx.clock, &e);
                        for item in &due {
                            let (_, write) =
                                settle(&ctx.store, &ctx.mail, &ctx.clock, item, Err(e.clone()));
                            unrecorded.extend(write);
                            ctx.metrics.delivery("retry");
                        }
                        if !health.waiting_for_probe {
                            continue;
                        }
                    }
                }
            }
            let until_row = {
                let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
                s.next_due().ok().flatten()
            }
            .map(|t| {
                Duration::try_from(t.duration_since(ctx.clock.now())).unwrap_or(Duration::ZERO)
            })
            .unwrap_or(PROBE_EVERY);
            let until_probe = health
                .last_probe
                .map(|at| PROBE_EVERY.saturating_sub(ctx.clock.instant().duration_since(at)))
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = ctx.clock.sleep(until_row.min(until_probe).min(PROBE_EVERY)) => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            continue;
        }
        if !health.waiting_for_probe && flying.len() < max_in_flight {
            let wanted = max_in_flight + flying.len() + unrecorded.len();
            let due = {
                let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
                s.due(ctx.clock.now(), wanted)
            };
            match due {
                Ok(due) => {
                    for item in due {
                        if flying.len() >= max_in_flight {
                            break;
                        }
                        if flying.iter().any(|(_, f)| f.id == item.id)
                            || unrecorded.iter().any(|w| w.id() == item.id)
                        {
                            continue; // under way, or attempted with only its record missing
                        }
                        // `due` lists rows most urgent first: once one must wait for a
                        // more urgent email in flight, so must every row after it.
                        if flying.iter().any(|(_, f)| f.priority < item.priority) {
                            break;
                        }
                        // A partner reads an alert's emails in the order they were
                        // queued (the alert, then "Update 1", "Update 2", "Withdrawn"):
                        // the next one for the same alert and partner waits until the
                        // one in flight is recorded, while other partners' go ahead.
                        if flying.iter().any(|(_, f)| {
                            f.alert_id == item.alert_id && f.partner_id == item.partner_id
                        }) {
                            continue;
                        }
                        let message = hand_off(&ctx.store, &ctx.clock, &item);
                        let record = OutboxItem {
                            message: Vec::new(),
                            ..item.clone()
                        };
                        let mailer = ctx.mailer.clone();
                        let task = in_flight.spawn(async move {
                            let result = mailer
                                .send(
                                    &item.mail_from,
                                    &item.recipients,
                                    &message,
                                    &eml_name(&item),
                                )
                                .await;
                            (item, result)
                        });
                        flying.push((task.id(), record));
                    }
                }
                Err(e) if in_flight.is_empty() => {
                    tracing::error!(error = %e, "Cannot read the outbox; retrying in 5s");
                    tokio::select! {
                        _ = ctx.clock.sleep(Duration::from_secs(5)) => continue,
                        _ = ctx.shutdown.cancelled() => break,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the outbox; trying again when an email in flight is answered");
                }
            }
        }
        if !in_flight.is_empty() {
            let room = flying.len() < max_in_flight && !health.waiting_for_probe;
            tokio::select! {
                done = in_flight.join_next() => {
                    if let Some(done) = done {
                        finish(&ctx, &mut health, &mut unrecorded, &mut flying, done);
                    }
                }
                // New rows may start while others are in flight.
                _ = ctx.wake.notified(), if room => {}
                // An exchange in progress is finished even during shutdown (below).
                _ = ctx.shutdown.cancelled() => break,
            }
            continue;
        }
        if health.waiting_for_probe {
            continue;
        }
        let next = {
            let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
            s.next_due().ok().flatten()
        };
        let sleep_for = match next {
            Some(t) => {
                let wait = t.duration_since(ctx.clock.now());
                Duration::try_from(wait)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL)
            }
            None => IDLE_POLL,
        };
        if sleep_for.is_zero() {
            // Something is due that could not start (all recorded as in flight
            // or unrecorded): let the other tasks run, then look again.
            tokio::task::yield_now().await;
        }
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = ctx.clock.sleep(sleep_for) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    // Shutdown: no new email starts; those in flight are answered (each bounded
    // by the timeout) and recorded, so none is sent twice after a restart.
    while let Some(done) = in_flight.join_next().await {
        finish(&ctx, &mut health, &mut unrecorded, &mut flying, done);
    }
    unrecorded.retain(|w| w.apply(&ctx.store).is_err());
    ctx.mailer.close().await;
}

/// Records one finished exchange and what it says about the server.
fn finish(
    ctx: &OutboxContext,
    health: &mut ServerHealth,
    unrecorded: &mut Vec<OutcomeWrite>,
    flying: &mut Vec<(tokio::task::Id, OutboxItem)>,
    done: Result<(OutboxItem, Result<Delivered, SendError>), tokio::task::JoinError>,
) {
    let (item, result) = match done {
        Ok(done) => {
            flying.retain(|(_, f)| f.id != done.0.id);
            done
        }
        Err(e) => {
            // A panic in an exchange (a bug): recorded as a failed attempt, so the
            // row is retried after its backoff rather than at once, forever.
            let Some(at) = flying.iter().position(|(task, _)| *task == e.id()) else {
                return;
            };
            let (_, item) = flying.swap_remove(at);
            tracing::error!(alert = %item.alert_id, error = %e, "An SMTP exchange failed inside earlywarn; its email stays pending");
            let result = Err(SendError::Transient(format!("internal error: {e}")));
            (item, result)
        }
    };
    let (outcome, write) = settle(&ctx.store, &ctx.mail, &ctx.clock, &item, result);
    unrecorded.extend(write);
    match outcome {
        Attempt::Sent => {
            ctx.metrics.delivery("sent");
            health.works(&ctx.store);
        }
        Attempt::Retry { fault, .. } => {
            ctx.metrics.delivery("retry");
            match &fault {
                Some(e) => health.failed(&ctx.store, &ctx.clock, e),
                None => health.works(&ctx.store),
            }
        }
        Attempt::Failed { error } => {
            ctx.metrics.delivery("failed");
            health.works(&ctx.store);
            // A failed self-alert is not reported by another self-alert.
            if !item.alert_id.starts_with(crate::ops::OPS_ALERT_PREFIX) {
                ctx.ops.report(
                    crate::ops::ProblemKind::DeliveryFailed,
                    format!(
                        "alert {} to partner {}: {error}",
                        item.alert_id, item.partner_id
                    ),
                    ctx.clock.now(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("smtp-password");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_password_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = password_file(dir.path(), "s3cret\n", 0o600);
        assert_eq!(read_password("u", Some(&path), None).unwrap(), "s3cret");
        for (mode, who) in [
            (0o640, "its group"),
            (0o604, "others"),
            (0o644, "its group and others"),
        ] {
            let path = password_file(dir.path(), "s3cret\n", mode);
            let shown = read_password("u", Some(&path), None)
                .unwrap_err()
                .to_string();
            assert!(shown.contains(&format!("{}", path.display())), "{shown}");
            assert!(
                shown.contains(&format!("readable by {who} (mode 0{mode:o})")),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_username_needs_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let shown = read_password("earlywarn", None, None)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("no password is available"), "{shown}");
        let empty = password_file(dir.path(), "\n", 0o600);
        assert!(matches!(
            read_password("earlywarn", Some(&empty), None),
            Err(MailerError::PasswordEmpty { .. })
        ));
    }

    #[test]
    fn systemd_credentials_are_read_whatever_their_mode_bits() {
        // systemd may grant the unit's user access by ACL, which shows as group bits.
        let dir = tempfile::tempdir().unwrap();
        password_file(dir.path(), "from-systemd", 0o440);
        assert_eq!(
            read_password("u", None, Some(dir.path())).unwrap(),
            "from-systemd"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(30), s(3600)), s(30));
        assert_eq!(backoff(2, s(30), s(3600)), s(60));
        assert_eq!(backoff(5, s(30), s(3600)), s(480));
        assert_eq!(backoff(8, s(30), s(3600)), s(3600));
        assert_eq!(backoff(1000, s(30), s(3600)), s(3600));
    }

    fn item(recipients: &[&str], has_failed_addresses: bool) -> OutboxItem {
        OutboxItem {
            id: 7,
            alert_id: "EW-1".into(),
            partner_id: "p".into(),
            message_id: "<m>".into(),
            mail_from: "ew@example.org".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            message: b"x".to_vec(),
            attempts: 0,
            has_failed_addresses,
            priority: 0,
        }
    }

    fn refused(address: &str) -> FailedAddress {
        FailedAddress {
            address: address.into(),
            error: "RCPT TO: permanent error (550): no such user".into(),
        }
    }

    #[test]
    fn one_refused_address_fails_only_that_address() {
        let now = Timestamp::from_second(1_000).unwrap();
        let ok = Ok(Delivered {
            accepted: vec!["a@x.org".into()],
            refused: vec![refused("dead@x.org")],
            deferred: vec![],
        });
        let (attempt, out) = outcome_of(
            &item(&["a@x.org", "dead@x.org"], false),
            &ok,
            now,
            Duration::from_secs(30),
        );
        assert!(
            matches!(attempt, Attempt::Failed { ref error } if error.contains("dead@x.org")),
            "{attempt:?}"
        );
        assert_eq!(out.status, OutboxStatus::Failed);
        assert_eq!(out.delivered_at, Some(now), "the other address got it");
        assert_eq!(out.remaining, Some(vec![]));
        assert_eq!(out.newly_failed, vec![refused("dead@x.org")]);
    }

    #[test]
    fn a_deferred_address_stays_owed_and_those_that_accepted_are_not_owed_again() {
        let now = Timestamp::from_second(1_000).unwrap();
        let ok = Ok(Delivered {
            accepted: vec!["a@x.org".into()],
            refused: vec![],
            deferred: vec![(
                "later@x.org".into(),
                "RCPT TO: transient error (450)".into(),
            )],
        });
        let (attempt, out) = outcome_of(
            &item(&["a@x.org", "later@x.org"], false),
            &ok,
            now,
            Duration::from_secs(30),
        );
        assert_eq!(
            attempt,
            Attempt::Retry {
                after: Duration::from_secs(30),
                fault: None
            }
        );
        assert_eq!(out.status, OutboxStatus::Pending);
        assert_eq!(out.remaining, Some(vec!["later@x.org".to_string()]));
        assert_eq!(
            out.next_attempt_at,
            Some(Timestamp::from_second(1_030).unwrap())
        );
        assert_eq!(out.delivered_at, Some(now));
        // When the deferred one accepts later, the row is sent.
        let later = Ok(Delivered {
            accepted: vec!["later@x.org".into()],
            ..Delivered::default()
        });
        let (attempt, out) = outcome_of(
            &item(&["later@x.org"], false),
            &later,
            now,
            Duration::from_secs(60),
        );
        assert_eq!(attempt, Attempt::Sent);
        assert_eq!(out.status, OutboxStatus::Sent);
        // ...unless another address had refused it before.
        let (attempt, out) = outcome_of(
            &item(&["later@x.org"], true),
            &later,
            now,
            Duration::from_secs(60),
        );
        assert!(matches!(attempt, Attempt::Failed { .. }), "{attempt:?}");
        assert_eq!(out.status, OutboxStatus::Failed);
    }

    #[test]
    fn every_address_refused_fails_the_row_and_a_refused_data_fails_the_email() {
        let now = Timestamp::from_second(1_000).unwrap();
        let all = Ok(Delivered {
            refused: vec![refused("a@x.org"), refused("b@x.org")],
            ..Delivered::default()
        });
        let (_, out) = outcome_of(
            &item(&["a@x.org", "b@x.org"], false),
            &all,
            now,
            Duration::from_secs(30),
        );
        assert_eq!((out.status, out.delivered_at), (OutboxStatus::Failed, None));
        let data = Err(SendError::Permanent("DATA: permanent error (554)".into()));
        let (attempt, out) = outcome_of(
            &item(&["a@x.org"], false),
            &data,
            now,
            Duration::from_secs(30),
        );
        assert!(matches!(attempt, Attempt::Failed { .. }));
        assert_eq!(out.status, OutboxStatus::Failed);
        assert_eq!(
            out.remaining, None,
            "still owed to its addresses, for `outbox retry`"
        );
    }

    #[test]
    fn a_configuration_fault_never_fails_the_row() {
        let now = Timestamp::from_second(1_000).unwrap();
        let fault = SendError::Config {
            reason: "AUTH: permanent error (535)".into(),
            probe_sees: true,
        };
        let (attempt, out) = outcome_of(
            &item(&["a@x.org"], false),
            &Err(fault.clone()),
            now,
            Duration::from_secs(30),
        );
        assert_eq!(
            attempt,
            Attempt::Retry {
                after: Duration::from_secs(30),
                fault: Some(fault)
            }
        );
        assert_eq!(out.status, OutboxStatus::Pending);
        assert!(
            out.last_error
                .unwrap()
                .starts_with("configuration fault: AUTH")
        );
    }

    #[test]
    fn the_default_retry_cap_is_five_minutes() {
        let s = Duration::from_secs;
        // retry_initial 30s, retry_max 5m (the defaults): never more than 5 minutes.
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff(n, s(30), s(300)).as_secs())
            .collect();
        assert_eq!(delays, [30, 60, 120, 240, 300, 300, 300, 300]);
    }
}
