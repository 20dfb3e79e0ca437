//! Mail out: sending outbox rows over SMTP (or to `.eml` files), with retries.
//!
//! Failures are of two kinds and the outbox treats them differently:
//! [`SendError::Permanent`] (a 5xx answer) marks the row failed after one
//! attempt; [`SendError::Transient`] (4xx, refused connection, timeout, TLS
//! trouble) schedules a retry with capped exponential backoff. Every exchange
//! is bounded by `[mail] timeout`, so a tarpit server cannot stall delivery.

use crate::config::{MailConfig, SmtpConfig, TlsMode, Transport};
use crate::store::{OutboxItem, Store};
use jiff::Timestamp;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: the server is down, busy, or answered 4xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: the server answered 5xx.
    #[error("{0}")]
    Permanent(String),
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
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        timeout: Duration,
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
                transport: smtp_transport(smtp, mail.timeout)?,
                timeout: mail.timeout,
            }),
        }
    }

    /// Sends one message to `recipients`.
    pub async fn send(
        &self,
        from: &str,
        recipients: &[String],
        message: &[u8],
        name_hint: &str,
    ) -> Result<(), SendError> {
        match self {
            Mailer::File { dir } => {
                // Off the async worker: a backlog of fsynced writes would otherwise
                // never yield, and shutdown and the other tasks would wait on it.
                let (dir, name, message) = (dir.clone(), name_hint.to_string(), message.to_vec());
                let shown = dir.display().to_string();
                tokio::task::spawn_blocking(move || write_eml(&dir, &name, &message))
                    .await
                    .map_err(|e| SendError::Transient(format!("cannot write to {shown}: {e}")))?
                    .map_err(|e| SendError::Transient(format!("cannot write to {shown}: {e}")))
            }
            Mailer::Smtp { transport, timeout } => {
                let from: Address = from.parse().map_err(|e| {
                    SendError::Permanent(format!("bad sender address `{from}`: {e}"))
                })?;
                let to: Vec<Address> = recipients
                    .iter()
                    .map(|r| {
                        r.parse()
                            .map_err(|e| SendError::Permanent(format!("bad recipient `{r}`: {e}")))
                    })
                    .collect::<Result<_, _>>()?;
                let envelope = Envelope::new(Some(from), to)
                    .map_err(|e| SendError::Permanent(e.to_string()))?;
                // lettre bounds each command; this bounds the whole exchange,
                // including a server that stalls after DATA.
                match tokio::time::timeout(*timeout, transport.send_raw(&envelope, message)).await {
                    Err(_) => Err(SendError::Transient(format!(
                        "no answer within {}s",
                        timeout.as_secs()
                    ))),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
                    Ok(Err(e)) => Err(SendError::Transient(e.to_string())),
                }
            }
        }
    }
}

fn smtp_transport(
    smtp: &SmtpConfig,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailerError> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(timeout));
    if smtp.tls != TlsMode::None {
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
        let params = params
            .build_rustls()
            .map_err(|e| MailerError::Tls(e.to_string()))?;
        builder = builder.tls(match smtp.tls {
            TlsMode::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let Some(user) = &smtp.username {
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let password = read_password(
            user,
            smtp.password_file.as_deref(),
            credentials_dir.as_deref(),
        )?;
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
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
    Sent,
    Retry { after: Duration },
    Failed { error: String },
}

/// Sends one due row and records the outcome. If the database cannot take the
/// record (a full disk), the write is returned to be retried: the row must not
/// look due again, or the partner would get the email again and again.
pub async fn attempt(
    store: &Mutex<Store>,
    mailer: &Mailer,
    mail: &MailConfig,
    item: &OutboxItem,
) -> (Attempt, Option<OutcomeWrite>) {
    let (name, message) = (eml_name(item), hand_off(store, item));
    let result = mailer
        .send(&item.mail_from, &item.recipients, &message, &name)
        .await;
    let now = Timestamp::now();
    let attempts = item.attempts + 1;
    let (outcome, write) = match &result {
        Ok(()) => {
            tracing::info!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, "Delivered");
            (
                Attempt::Sent,
                OutcomeWrite::Sent {
                    id: item.id,
                    at: now,
                },
            )
        }
        Err(SendError::Permanent(e)) => {
            tracing::error!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, error = %e,
                "Delivery failed permanently; the alert did not reach this partner");
            (
                Attempt::Failed { error: e.clone() },
                OutcomeWrite::Failed {
                    id: item.id,
                    error: e.clone(),
                },
            )
        }
        Err(SendError::Transient(e)) => {
            let after = backoff(attempts, mail.retry_initial, mail.retry_max);
            tracing::warn!(alert = %item.alert_id, partner = %item.partner_id, attempt = attempts, error = %e,
                retry_in_secs = after.as_secs(), "Delivery failed; will retry");
            let next = now.checked_add(after).unwrap_or(now);
            (
                Attempt::Retry { after },
                OutcomeWrite::Retry {
                    id: item.id,
                    next,
                    error: e.clone(),
                },
            )
        }
    };
    let unrecorded = match write.apply(store) {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(alert = %item.alert_id, error = %e, "Cannot record the delivery outcome; holding it until the database takes it");
            Some(write)
        }
    };
    (outcome, unrecorded)
}

/// The row's bytes as handed to the transport: `Date` is the first hand-off
/// (SPEC §7), recorded on the row before the first send so that every retry
/// carries the same one. If the database cannot record it now, this attempt
/// says now and a later one records its own time: better than not sending.
fn hand_off(store: &Mutex<Store>, item: &OutboxItem) -> Vec<u8> {
    let now = Timestamp::now();
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
pub enum OutcomeWrite {
    Sent {
        id: i64,
        at: Timestamp,
    },
    Failed {
        id: i64,
        error: String,
    },
    Retry {
        id: i64,
        next: Timestamp,
        error: String,
    },
}

impl OutcomeWrite {
    fn id(&self) -> i64 {
        match self {
            OutcomeWrite::Sent { id, .. }
            | OutcomeWrite::Failed { id, .. }
            | OutcomeWrite::Retry { id, .. } => *id,
        }
    }

    fn apply(&self, store: &Mutex<Store>) -> Result<(), crate::store::StoreError> {
        // A poisoned lock means another thread panicked mid-update; SQLite's own
        // transaction keeps the data consistent, so carrying on is safe.
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        match self {
            OutcomeWrite::Sent { id, at } => store.mark_sent(*id, *at),
            OutcomeWrite::Failed { id, error } => store.mark_failed(*id, error),
            OutcomeWrite::Retry { id, next, error } => store.mark_retry(*id, *next, error),
        }
    }
}

/// How often an idle outbox looks for rows written by other processes
/// (`earlywarn alerts approve`): one indexed query a second costs nothing.
const IDLE_POLL: Duration = Duration::from_secs(1);

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
}

/// Drains the outbox until `shutdown`: sends what is due, then sleeps until
/// the next row is due or `wake` says new rows were committed.
pub async fn run_outbox(ctx: OutboxContext) {
    // Outcomes the database could not record yet (see `attempt`).
    let mut unrecorded: Vec<OutcomeWrite> = Vec::new();
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        if !unrecorded.is_empty() {
            unrecorded.retain(|w| w.apply(&ctx.store).is_err());
            if !unrecorded.is_empty() {
                // The database is still refusing writes: do not spin on it.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
        }
        let due = {
            let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
            s.due(Timestamp::now(), 16)
        };
        let due = match due {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the outbox; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
        };
        if !due.is_empty() {
            let mut sent_any = false;
            for item in due {
                // Between emails, never mid-exchange: a backlog of thousands must
                // not hold shutdown past `shutdown_timeout` (what is left stays pending).
                if ctx.shutdown.is_cancelled() {
                    return;
                }
                if unrecorded.iter().any(|w| w.id() == item.id) {
                    continue; // already attempted; only its record is missing
                }
                sent_any = true;
                // An exchange in progress is finished even during shutdown (it is bounded by the timeout).
                let (outcome, write) = attempt(&ctx.store, &ctx.mailer, &ctx.mail, &item).await;
                unrecorded.extend(write);
                match outcome {
                    Attempt::Sent => ctx.metrics.delivery("sent"),
                    Attempt::Retry { .. } => ctx.metrics.delivery("retry"),
                    Attempt::Failed { error } => {
                        ctx.metrics.delivery("failed");
                        // A failed self-alert is not reported by another self-alert.
                        if !item.alert_id.starts_with(crate::ops::OPS_ALERT_PREFIX) {
                            ctx.ops.report(
                                crate::ops::ProblemKind::DeliveryFailed,
                                format!(
                                    "alert {} to partner {}: {error}",
                                    item.alert_id, item.partner_id
                                ),
                                Timestamp::now(),
                            );
                        }
                    }
                }
            }
            if sent_any {
                // Let the signal, watcher and metrics tasks run between batches.
                tokio::task::yield_now().await;
                continue;
            }
        }
        let next = {
            let s = ctx.store.lock().unwrap_or_else(|p| p.into_inner());
            s.next_due().ok().flatten()
        };
        let sleep_for = match next {
            Some(t) => {
                let wait = t.duration_since(Timestamp::now());
                Duration::try_from(wait)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_POLL)
            }
            None => IDLE_POLL,
        };
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = ctx.shutdown.cancelled() => return,
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
}
