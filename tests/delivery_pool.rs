//! The outbox worker (`delivery::run_outbox`) with several emails in flight over kept SMTP
//! sessions, against the real SMTP test server (aiosmtpd, STARTTLS and AUTH) on loopback:
//! one alert to 8 partners goes over at most `[mail] max_connections` sessions, each email
//! once; a session the server closed while it sat idle costs neither a failed attempt nor an
//! email; and a critical alert's emails are all answered before a lesser one starts.
//! Sessions are counted from the server's own log of TCP connections, attempts from its log
//! of `MAIL FROM`s.

mod e2e_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_support::{Cfg, smtp_mail_lines, tempdir};
use earlywarn::alerts::render::RenderedEmail;
use earlywarn::alerts::{Alert, AlertStatus};
use earlywarn::config::Severity;
use earlywarn::delivery::{Clock, Mailer, OutboxContext, run_outbox};
use earlywarn::store::{OutboxRow, Store};
use support::{SmtpOptions, SmtpServer, SmtpTls, wait_until};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A secure server as a relay would be: STARTTLS, then AUTH.
fn secure_server(opts: SmtpOptions) -> SmtpServer {
    SmtpServer::start(opts.tls(SmtpTls::Starttls).auth("earlywarn", "s3cret"))
}

/// The worker on its own database connection, as the daemon runs it, on the system clock.
struct Worker {
    store: Arc<Mutex<Store>>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// `alerts` are queued (each to its partners) before the worker starts.
    async fn start(
        server: &SmtpServer,
        max_connections: usize,
        alerts: &[(Alert, Vec<String>)],
    ) -> Worker {
        let dir = tempdir();
        let config_path = Cfg {
            mail: smtp_mail_lines(server, dir.path())
                + &format!("max_connections = {max_connections}\n"),
            mail_timeout: "10s".into(),
            ..Cfg::default()
        }
        .write(dir.path());
        let config = earlywarn::config::Config::load(&config_path).unwrap();
        assert_eq!(config.mail.max_connections, max_connections);
        let mut store = Store::open(&config.daemon.state_dir).unwrap();
        // Queued before the worker starts, so its first look sees them all.
        for (alert, partners) in alerts {
            store
                .store_alert(alert, &emails(&alert.id, partners), jiff::Timestamp::now())
                .unwrap();
        }
        let store = Arc::new(Mutex::new(store));
        let wake = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        Worker {
            store: store.clone(),
            wake: wake.clone(),
            stop: stop.clone(),
            task: tokio::spawn(run_outbox(OutboxContext {
                store,
                mailer: Arc::new(Mailer::new(&config.mail).unwrap()),
                mail: config.mail.clone(),
                wake,
                shutdown: stop,
                metrics: Default::default(),
                ops: Default::default(),
                clock: Clock::system(),
            })),
            _dir: dir,
        }
    }

    /// Commits `alert` with one email per partner and wakes the worker, as a file commit does.
    fn queue(&self, alert: &Alert, partners: &[String]) {
        self.store
            .lock()
            .unwrap()
            .store_alert(alert, &emails(&alert.id, partners), jiff::Timestamp::now())
            .unwrap();
        self.wake.notify_one();
    }

    fn rows(&self, alert: &str) -> Vec<OutboxRow> {
        self.store
            .lock()
            .unwrap()
            .outbox_rows_of_alert(alert)
            .unwrap()
    }

    /// Waits until every row of `alert` is sent; returns them.
    fn wait_sent(&self, alert: &str) -> Vec<OutboxRow> {
        assert!(
            wait_until(WAIT, || self.rows(alert).iter().all(|r| r.status == "sent")),
            "not all sent: {:#?}",
            self.rows(alert)
        );
        self.rows(alert)
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the worker stops when told to")
            .unwrap();
    }
}

fn alert(id: &str, severity: Severity) -> Alert {
    Alert {
        id: id.into(),
        rule_id: format!("rule-{severity:?}").to_lowercase(),
        group: Default::default(),
        district: Some("Bolton".into()),
        severity,
        created_at: jiff::Timestamp::now(),
        event_count: 1,
        suppressed_before: 0,
        events: Vec::new(),
        status: AlertStatus::Sent,
        trigger: Default::default(),
        assessment: None,
        reasons: Vec::new(),
    }
}

fn email(alert: &str, partner: &str) -> RenderedEmail {
    let to = format!("{partner}@example.org");
    RenderedEmail {
        subject: format!("{alert} for {partner}"),
        text: "Carry naloxone.".into(),
        html: String::new(),
        message_id: format!("<{alert}.{partner}@example.org>"),
        thread: format!("alert\u{1f}{alert}"),
        from: "earlywarn@example.org".into(),
        to: vec![to.clone()],
        bytes: format!(
            "From: earlywarn@example.org\r\nTo: {to}\r\nSubject: {alert} for {partner}\r\n\
             Message-ID: <{alert}.{partner}@example.org>\r\n\r\nCarry naloxone.\r\n"
        )
        .into_bytes(),
    }
}

fn emails(alert: &str, partners: &[String]) -> Vec<(String, RenderedEmail)> {
    partners
        .iter()
        .map(|p| (p.clone(), email(alert, p)))
        .collect()
}

fn partners(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

/// Every row sent at its first attempt, with no error left on it.
fn assert_first_attempt(rows: &[OutboxRow]) {
    for r in rows {
        assert_eq!(
            (r.status.as_str(), r.attempts, r.last_error.as_deref()),
            ("sent", 1, None),
            "{r:?}"
        );
    }
}

/// One alert to 8 partners: every email accepted once, over at most `max_connections`
/// sessions (so sessions were reused: 8 emails, fewer connections), each row sent at its first
/// attempt. With `max_connections = 1`, exactly one session carries all 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_to_8_partners_goes_over_at_most_max_connections_sessions() {
    for max_connections in [1, 4] {
        let server = secure_server(SmtpOptions::new());
        let eight = partners("p", 8);
        let worker = Worker::start(
            &server,
            max_connections,
            &[(alert("EW-FAN", Severity::Critical), eight.clone())],
        )
        .await;
        let msgs = server.wait_for(8, WAIT);
        let rows = worker.wait_sent("EW-FAN");
        assert_first_attempt(&rows);
        let mut got: Vec<String> = msgs.iter().flat_map(|m| m.rcpt_tos.clone()).collect();
        got.sort();
        let mut want: Vec<String> = eight.iter().map(|p| format!("{p}@example.org")).collect();
        want.sort();
        assert_eq!(got, want, "each partner got the email once");
        assert!(
            msgs.iter()
                .all(|m| m.tls && m.auth_user.as_deref() == Some("earlywarn")),
            "every email under TLS and authenticated"
        );
        let sessions = server.connection_times().len();
        assert!(
            (1..=max_connections).contains(&sessions),
            "max_connections = {max_connections}: {sessions} sessions for 8 emails"
        );
        assert_eq!(server.attempt_times().len(), 8, "one MAIL FROM per email");
        worker.stop().await;
        eprintln!("max_connections = {max_connections}: 8 emails over {sessions} session(s)");
    }
}

/// Implicit TLS (`tls = "tls"`) over earlywarn's own socket: delivered, under TLS, with reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_sessions_are_kept_and_reused_too() {
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Implicit)
            .auth("earlywarn", "s3cret"),
    );
    let worker = Worker::start(
        &server,
        2,
        &[(alert("EW-TLS", Severity::Warning), partners("t", 5))],
    )
    .await;
    let msgs = server.wait_for(5, WAIT);
    assert_first_attempt(&worker.wait_sent("EW-TLS"));
    assert!(msgs.iter().all(|m| m.tls), "every email under TLS");
    assert!(server.connection_times().len() <= 2);
    worker.stop().await;
}

/// A kept session the server closes while it is idle (aiosmtpd's idle timeout; then a server
/// restart: the socket just gone) is not a delivery failure: the
/// next email goes at once on a fresh session, its row sent at its first attempt, delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_server_closed_while_idle_costs_no_failed_attempt_and_no_email() {
    let mut server = secure_server(SmtpOptions::new().arg("--idle-timeout").arg("2"));
    let worker = Worker::start(
        &server,
        4,
        &[(alert("EW-IDLE-1", Severity::Critical), vec!["panel".into()])],
    )
    .await;
    server.wait_for(1, WAIT);
    assert_first_attempt(&worker.wait_sent("EW-IDLE-1"));
    assert_eq!(server.connection_times().len(), 1);
    // The session is kept (earlywarn keeps one for 30 s); the server drops it after 2 s idle.
    let server_log = server.maildir().join("server.log");
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&server_log)
            .unwrap_or_default()
            .contains("connection timeout")),
        "the server did not close the idle session"
    );

    worker.queue(&alert("EW-IDLE-2", Severity::Critical), &["panel".into()]);
    server.wait_for(2, WAIT);
    assert_first_attempt(&worker.wait_sent("EW-IDLE-2"));
    assert_eq!(
        server.connection_times().len(),
        2,
        "the closed session, then one fresh one"
    );

    // Now the server restarts under the kept session.
    server.restart();
    worker.queue(&alert("EW-IDLE-3", Severity::Critical), &["panel".into()]);
    server.wait_for(3, WAIT);
    assert_first_attempt(&worker.wait_sent("EW-IDLE-3"));
    assert_eq!(
        server.attempt_times().len(),
        3,
        "one MAIL FROM per email: none was tried on a closed session"
    );
    assert_eq!(server.messages().len(), 3, "each delivered once");
    worker.stop().await;
}

/// Critical first, with several emails in flight: queued together (info first, then warning,
/// then critical), every critical email is accepted before any warning one, and every warning
/// one before any info one: no email starts while a more urgent one is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_emails_are_all_accepted_before_a_lesser_one_starts() {
    let server = secure_server(SmtpOptions::new());
    let worker = Worker::start(
        &server,
        4,
        &[
            (alert("EW-INFO", Severity::Info), partners("i", 3)),
            (alert("EW-WARN", Severity::Warning), partners("w", 2)),
            (alert("EW-CRIT", Severity::Critical), partners("c", 3)),
        ],
    )
    .await;
    let msgs = server.wait_for(8, WAIT);
    let order: Vec<char> = msgs
        .iter()
        .map(|m| m.rcpt_tos[0].chars().next().unwrap())
        .collect();
    assert_eq!(
        order,
        ['c', 'c', 'c', 'w', 'w', 'i', 'i', 'i'],
        "accepted in this order: {:?}",
        msgs.iter().map(|m| &m.rcpt_tos[0]).collect::<Vec<_>>()
    );
    // And the first lesser email started (MAIL FROM) after the last critical one was accepted.
    let last_critical = msgs[..3].iter().map(|m| m.received_at).fold(0.0, f64::max);
    let mut attempts = server.attempt_times();
    attempts.sort_by(f64::total_cmp);
    assert!(
        attempts[3] >= last_critical,
        "{attempts:?} vs {last_critical}"
    );
    for id in ["EW-CRIT", "EW-WARN", "EW-INFO"] {
        assert_first_attempt(&worker.wait_sent(id));
    }
    worker.stop().await;
}
