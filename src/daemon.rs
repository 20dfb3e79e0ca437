//! The daemon: watches the feed folders, runs each ready file through the
//! pipeline, and drains the outbox, until SIGTERM or SIGINT.
//!
//! Tasks:
//! - the intake loop (this module): hints from the folder watcher, periodic
//!   rescans, settle timers, SIGHUP reloads and shutdown, all in one
//!   `select!`; files are processed one at a time, so rule state has a single
//!   writer;
//! - the outbox worker ([`crate::delivery::run_outbox`]), with its own
//!   database connection, woken when a file commits new outbox rows.
//!
//! Start-up and reload share [`load_rules`]. READY=1 is sent to systemd only
//! after the rules are loaded, the database is open and the first rescan is
//! done.

use crate::config::{Config, FeedConfig};
use crate::delivery::{Mailer, run_outbox};
use crate::feeds::intake::{Disposition, IntakeError, enqueue_alert, process_file};
use crate::feeds::watch::{FolderWatcher, Hint, Observed, Settler, scan};
use crate::rules::RuleSet;
use crate::rules::engine::Engine;
use crate::store::Store;
use jiff::Timestamp;
use sd_notify::NotifyState;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Rules(crate::diagnostic::Diagnostics),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Mailer(#[from] crate::delivery::MailerError),
    #[error("cannot create feed folder {path}: {source}")]
    FeedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the feed folders: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Loads and validates the rule set named by the config (start-up and reload).
pub fn load_rules(config: &Config) -> Result<Arc<RuleSet>, DaemonError> {
    RuleSet::load(config)
        .map(Arc::new)
        .map_err(DaemonError::Rules)
}

/// Tells systemd (when run under it) how we are; a no-op otherwise.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Runs the daemon until a shutdown signal. Returns when everything in progress has finished.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let rules = load_rules(&config)?;
    for feed in &config.feeds {
        for dir in [feed.dir.clone(), feed.processed_dir(), feed.rejected_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| DaemonError::FeedDir {
                path: dir.clone(),
                source,
            })?;
        }
    }
    let mut store = Store::open(&config.daemon.state_dir)?;
    let state = store.load_engine_state()?;
    let mut engine = Engine::new(rules.clone(), state);
    tracing::info!(rules = rules.rules.len(), files = rules.files.len(), feeds = config.feeds.len(), database = %store.path().display(), "Starting");

    let mailer = Arc::new(Mailer::new(&config.mail)?);
    let outbox_store = Arc::new(Mutex::new(Store::open(&config.daemon.state_dir)?));
    let wake_outbox = Arc::new(Notify::new());
    let stop_outbox = CancellationToken::new();
    let outbox = tokio::spawn(run_outbox(
        outbox_store,
        mailer,
        config.mail.clone(),
        wake_outbox.clone(),
        stop_outbox.clone(),
    ));

    let (hint_tx, mut hints) = mpsc::unbounded_channel();
    let dirs: Vec<PathBuf> = config.feeds.iter().map(|f| f.dir.clone()).collect();
    let _watcher = FolderWatcher::new(&dirs, hint_tx)?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let mut intake = Intake {
        config: config.clone(),
        engine: &mut engine,
        store: &mut store,
        settler: Settler::new(config.daemon.settle),
        wake_outbox: wake_outbox.clone(),
        stopping: false,
        ticked: false,
    };
    // The first rescan happens before READY=1, so a file already waiting is
    // ingested first (a support record that arrived while we were down closes
    // its deadline before the tick below could escalate it).
    intake.rescan();
    intake.tick();
    notify_systemd(&[
        NotifyState::Ready,
        NotifyState::Status("watching feed folders"),
    ]);
    tracing::info!("Ready");

    let mut rescan_timer = tokio::time::interval(config.daemon.rescan_interval);
    rescan_timer.tick().await; // the first tick is immediate; the rescan just happened
    let watchdog = sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(10));
    let mut watchdog_timer = tokio::time::interval(watchdog);
    // Deadlines and silence are checked against the wall clock every second.
    let mut clock_timer = tokio::time::interval(Duration::from_secs(1));
    clock_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let settle_wait = intake
            .settler
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "Shutting down"); break; }
            _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "Shutting down"); break; }
            _ = sighup.recv() => {
                notify_systemd(&[NotifyState::Reloading]);
                match load_rules(&config) {
                    Ok(rules) => {
                        tracing::info!(rules = rules.rules.len(), "Rules reloaded");
                        intake.engine.replace_rules(rules);
                    }
                    Err(e) => tracing::error!(error = %e, "New rules refused; the previous rules stay in force"),
                }
                notify_systemd(&[NotifyState::Ready]);
            }
            Some(hint) = hints.recv() => {
                intake.hint(hint);
                // Take every hint already queued before processing, so a burst is one pass.
                while let Ok(h) = hints.try_recv() {
                    intake.hint(h);
                }
                intake.process_ready();
            }
            _ = tokio::time::sleep(settle_wait) => intake.process_ready(),
            _ = rescan_timer.tick() => intake.rescan(),
            _ = clock_timer.tick() => intake.tick(),
            _ = watchdog_timer.tick() => notify_systemd(&[NotifyState::Watchdog]),
        }
    }

    notify_systemd(&[NotifyState::Stopping]);
    intake.stopping = true;
    drop(intake);
    stop_outbox.cancel();
    // The outbox finishes the SMTP exchange in progress (bounded by the mail timeout).
    match tokio::time::timeout(config.daemon.shutdown_timeout, outbox).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            "Outbox still busy at shutdown; pending mail stays queued for the next start"
        ),
    }
    tracing::info!("Stopped");
    Ok(())
}

/// The intake side of the daemon: readiness, processing, and the outbox wake-up.
struct Intake<'a> {
    config: Arc<Config>,
    engine: &'a mut Engine,
    store: &'a mut Store,
    settler: Settler,
    wake_outbox: Arc<Notify>,
    stopping: bool,
    /// Whether the first clock tick (after start) has run.
    ticked: bool,
}

/// Runs the engine's clock tick at `now` and commits its alerts and state in one
/// transaction; on failure the engine's state is put back. Returns the number of alerts.
pub fn commit_tick(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    now: Timestamp,
) -> Result<usize, IntakeError> {
    let outcome = engine.tick(now);
    if outcome.alerts.is_empty() && outcome.changes.is_empty() {
        return Ok(0);
    }
    let result = (|| -> Result<(), IntakeError> {
        let tx = store.begin()?;
        for alert in &outcome.alerts {
            enqueue_alert(config, engine, &tx, alert, now)?;
        }
        tx.apply(&outcome.changes)?;
        tx.commit()?;
        Ok(())
    })();
    if let Err(e) = result {
        if let Ok(state) = store.load_engine_state() {
            engine.restore(state);
        }
        return Err(e);
    }
    for alert in &outcome.alerts {
        tracing::info!(alert = %alert.id, rule = %alert.rule_id, district = alert.district.as_deref().unwrap_or("-"),
            severity = %alert.severity, trigger = ?alert.trigger, "Alert raised");
    }
    Ok(outcome.alerts.len())
}

impl Intake<'_> {
    fn feed_of(&self, path: &Path) -> Option<FeedConfig> {
        let parent = path.parent()?;
        self.config.feeds.iter().find(|f| f.dir == parent).cloned()
    }

    fn hint(&mut self, hint: Hint) {
        match hint {
            Hint::Rescan => self.rescan(),
            Hint::Arrived(path) => {
                if self.feed_of(&path).is_some() {
                    self.settler.forget(&path);
                    self.process(&path);
                }
            }
            Hint::Changed(path) => {
                if self.feed_of(&path).is_some() {
                    let seen = Observed::of(&path);
                    self.settler.changed(path, seen, Instant::now());
                }
            }
        }
    }

    fn rescan(&mut self) {
        let feeds = self.config.feeds.clone();
        for feed in &feeds {
            let files = match scan(&feed.dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(feed = %feed.name, dir = %feed.dir.display(), error = %e, "Cannot read the feed folder");
                    continue;
                }
            };
            for path in files {
                let seen = Observed::of(&path);
                if self
                    .settler
                    .found(path.clone(), seen, Instant::now(), SystemTime::now())
                {
                    self.process(&path);
                }
            }
        }
    }

    /// Raises what is due by the wall clock (overdue deadlines, silent feeds) and commits it.
    fn tick(&mut self) {
        if self.stopping {
            return;
        }
        let now = Timestamp::now();
        if self.ticked && self.engine.next_wakeup().is_none_or(|t| t > now) {
            return;
        }
        self.ticked = true;
        let result =
            tokio::task::block_in_place(|| commit_tick(&self.config, self.engine, self.store, now));
        match result {
            Ok(0) => {}
            Ok(_) => self.wake_outbox.notify_one(),
            Err(e) => {
                tracing::error!(error = %e, "Cannot record overdue deadlines or silent feeds; will retry")
            }
        }
    }

    fn process_ready(&mut self) {
        for path in self.settler.ready(Instant::now(), Observed::of) {
            self.process(&path);
        }
    }

    fn process(&mut self, path: &Path) {
        if self.stopping {
            return;
        }
        let Some(feed) = self.feed_of(path) else {
            return;
        };
        let started = Instant::now();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // SQLite and file moves block; keep the runtime's other workers (the outbox) running.
        let result = tokio::task::block_in_place(|| {
            process_file(
                &self.config,
                self.engine,
                self.store,
                &feed,
                path,
                Timestamp::now(),
            )
        });
        match result {
            Ok(Disposition::Processed(summary)) => {
                tracing::info!(feed = %feed.name, file = %file, rows = summary.rows, events = summary.events,
                    duplicates = summary.duplicates, rejected = summary.rejected_rows, alerts = summary.alerts.len(),
                    encoding = summary.encoding.as_deref().unwrap_or(""), ms = started.elapsed().as_millis() as u64, "File processed");
                if !summary.alerts.is_empty() {
                    self.wake_outbox.notify_one();
                }
            }
            Ok(Disposition::Duplicate) => {
                tracing::info!(feed = %feed.name, file = %file, "Same content as a file already processed; moved without alerting");
            }
            Ok(Disposition::Rejected(_)) | Ok(Disposition::Skipped) => {}
            Err(e) => {
                let level_error = matches!(e, IntakeError::Store(_));
                if level_error {
                    tracing::error!(feed = %feed.name, file = %file, error = %e, "Cannot record the file; it stays in the folder and will be retried");
                } else {
                    tracing::warn!(feed = %feed.name, file = %file, error = %e, "Cannot process the file; it will be retried");
                }
                // Retry after a settle interval rather than spinning on it.
                self.settler
                    .changed(path.to_path_buf(), None, Instant::now());
            }
        }
    }
}
