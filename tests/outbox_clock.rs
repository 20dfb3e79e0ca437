//! The outbox worker (`delivery::run_outbox`) on a manual clock, against the real SMTP test
//! server on loopback: backoff, the probe and a permanent failure are checked to the second
//! of the worker's own clock, with no real waiting and nothing that depends on machine load.
//! The clock stands still until the test advances it; [`Clock::sleeping`] is the sign that the
//! worker has finished its turn and waits (and for how long).

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
use jiff::Timestamp;
use support::{SmtpMode, SmtpOptions, SmtpServer};
use tokio_util::sync::CancellationToken;

const ALERT: &str = "EW-CLOCK1";

fn start() -> Timestamp {
    "2025-11-04T09:00:00Z".parse().unwrap()
}

/// The worker, on its own database connection, as the daemon runs it.
struct Worker {
    clock: Clock,
    store: Arc<Mutex<Store>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Queues one critical alert for `panel` at the clock's start, then starts the worker.
    async fn start(server: &SmtpServer, retry_initial: &str, retry_max: &str) -> Worker {
        let dir = tempdir();
        let config_path = Cfg {
            mail: smtp_mail_lines(server, dir.path()),
            mail_timeout: "2s".into(),
            retry_initial: retry_initial.into(),
            retry_max: retry_max.into(),
            ..Cfg::default()
        }
        .write(dir.path());
        let config = earlywarn::config::Config::load(&config_path).unwrap();
        let clock = Clock::manual(start());
        let mut store = Store::open(&config.daemon.state_dir).unwrap();
        store
            .store_alert(&alert(), &[("panel".into(), email())], clock.now())
            .unwrap();
        let store = Arc::new(Mutex::new(store));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_outbox(OutboxContext {
            store: store.clone(),
            mailer: Arc::new(Mailer::new(&config.mail).unwrap()),
            mail: config.mail.clone(),
            wake: Arc::new(tokio::sync::Notify::new()),
            shutdown: stop.clone(),
            metrics: Default::default(),
            ops: Default::default(),
            clock: clock.clone(),
        }));
        Worker {
            clock,
            store,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Waits (in real time, generously) until the worker sleeps on its clock; returns how long
    /// it means to sleep.
    async fn idle(&self) -> Duration {
        tokio::time::timeout(Duration::from_secs(30), self.clock.sleeping())
            .await
            .expect("the outbox worker did not settle down within 30 s")
    }

    /// Moves the clock on and waits for the worker's next turn to end.
    async fn advance(&self, by: Duration) -> Duration {
        self.clock.advance(by);
        self.idle().await
    }

    fn row(&self) -> OutboxRow {
        let store = self.store.lock().unwrap();
        let mut rows = store.outbox_rows_of_alert(ALERT).unwrap();
        assert_eq!(rows.len(), 1);
        rows.remove(0)
    }

    fn elapsed(&self) -> Duration {
        Duration::try_from(self.clock.now().duration_since(start())).unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the worker stops when told to")
            .unwrap();
    }
}

fn alert() -> Alert {
    Alert {
        id: ALERT.into(),
        rule_id: "nitazene-detected".into(),
        group: Default::default(),
        district: Some("Bolton".into()),
        severity: Severity::Critical,
        created_at: start(),
        event_count: 1,
        suppressed_before: 0,
        events: Vec::new(),
        status: AlertStatus::Sent,
        trigger: Default::default(),
        assessment: None,
        reasons: Vec::new(),
    }
}

fn email() -> RenderedEmail {
    RenderedEmail {
        subject: "Nitazene detected".into(),
        text: "Carry naloxone.".into(),
        html: String::new(),
        message_id: format!("<{ALERT}.panel@example.org>"),
        thread: format!("alert\u{1f}{ALERT}"),
        from: "earlywarn@example.org".into(),
        to: vec!["panel@example.org".into()],
        bytes: format!(
            "From: earlywarn@example.org\r\nTo: panel@example.org\r\nSubject: Nitazene detected\r\n\
             Message-ID: <{ALERT}.panel@example.org>\r\n\r\nCarry naloxone.\r\n"
        )
        .into_bytes(),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A server that refuses connections: attempts at 0, 1, 3, 7, 11 s of the worker's clock (delays
/// 1, 2, 4, 4, doubling and capped), each recorded with its next attempt exactly one delay later
/// and none sooner; back again, the waiting row is sent within one capped delay, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_backs_off_1_2_4_4_by_the_clock_and_drains_within_one_capped_delay() {
    let mut server = SmtpServer::start(SmtpOptions::new());
    server.stop();
    let worker = Worker::start(&server, "1s", "4s").await;

    let delays = [1, 2, 4, 4, 4];
    let mut attempted_at = Duration::ZERO;
    for (k, delay) in delays.into_iter().enumerate() {
        // Asleep until exactly the row's next attempt (the probe, every 5 s, is not sooner).
        let sleep = worker.idle().await;
        let row = worker.row();
        assert_eq!(row.status, "pending");
        assert_eq!(row.attempts, k as i64 + 1, "{row:?}");
        assert_eq!(
            row.next_attempt_at,
            Some(start() + attempted_at + secs(delay)),
            "attempt {} must be retried {delay}s later: {row:?}",
            k + 1
        );
        assert!(
            row.last_error
                .as_deref()
                .unwrap()
                .to_lowercase()
                .contains("refused"),
            "{row:?}"
        );
        assert_eq!(sleep, secs(delay), "after attempt {}", k + 1);
        // One second short of the delay: no attempt yet.
        worker.advance(sleep - secs(1)).await;
        assert_eq!(worker.row().attempts, k as i64 + 1, "retried too soon");
        worker.clock.advance(secs(1));
        attempted_at += secs(delay);
    }
    let due_again = worker.idle().await;
    assert_eq!(worker.row().attempts, 6);
    assert_eq!(worker.elapsed(), secs(1 + 2 + 4 + 4 + 4));
    assert!(server.messages().is_empty());

    // The server comes back: the worker's next look (a probe, then the send) is at most one
    // capped delay away.
    server.restart();
    assert!(due_again <= secs(4), "next look in {due_again:?}");
    worker.advance(due_again).await;
    let msgs = server.wait_for(1, secs(10));
    assert_eq!(msgs[0].rcpt_tos, ["panel@example.org"]);
    let row = worker.row();
    assert_eq!(row.status, "sent", "{row:?}");
    assert_eq!(row.attempts, 7, "{row:?}");
    assert_eq!(row.sent_at, Some(worker.clock.now()));
    // A minute of idle polls later, still once.
    for _ in 0..60 {
        worker.advance(secs(1)).await;
    }
    assert_eq!(server.messages().len(), 1, "delivered once");
    assert_eq!(server.attempt_times().len(), 1);
    worker.stop().await;
}

/// A 451 at the end of DATA: the session worked, so the row is retried by its own backoff
/// (no probe), and sent once the server takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_is_retried_after_its_delay_without_probing() {
    let mut server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Temp451));
    let worker = Worker::start(&server, "30s", "1h").await;
    let sleep = worker.idle().await;
    let row = worker.row();
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 1));
    assert_eq!(row.next_attempt_at, Some(start() + secs(30)));
    assert!(
        row.last_error.as_deref().unwrap().contains("451"),
        "{row:?}"
    );
    // The idle poll wakes it every second; nothing is tried until the 30 s are up.
    assert_eq!(sleep, secs(1));
    for _ in 0..29 {
        worker.advance(secs(1)).await;
    }
    assert_eq!(worker.row().attempts, 1, "retried before its delay");
    assert_eq!(server.attempt_times().len(), 1);
    assert_eq!(server.connection_times().len(), 1, "no probe after a 451");
    worker.advance(secs(1)).await;
    assert_eq!(worker.row().attempts, 2);
    assert_eq!(worker.row().next_attempt_at, Some(start() + secs(30 + 60)));
    server.restart_with(SmtpMode::Accept);
    worker.advance(secs(60)).await;
    server.wait_for(1, secs(10));
    let row = worker.row();
    assert_eq!((row.status.as_str(), row.attempts), ("sent", 3), "{row:?}");
    worker.stop().await;
}

/// A 550 to the only address fails the row after one attempt; it is never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_fails_after_one_attempt_and_is_never_retried() {
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Reject550));
    let worker = Worker::start(&server, "1s", "1s").await;
    worker.idle().await;
    let row = worker.row();
    assert_eq!(
        (row.status.as_str(), row.attempts),
        ("failed", 1),
        "{row:?}"
    );
    assert_eq!(row.next_attempt_at, None);
    // Far more than its retry interval later, by the worker's clock.
    for _ in 0..10 {
        worker.advance(secs(1)).await;
    }
    worker.advance(secs(3600)).await;
    assert_eq!(server.attempt_times().len(), 1, "a 550 was retried");
    assert_eq!(worker.row().attempts, 1);
    worker.stop().await;
}
