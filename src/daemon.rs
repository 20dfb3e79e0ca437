//! The daemon: watches the feed folders, runs each ready file through the
//! pipeline, and drains the outbox, until told to stop.
//!
//! [`run`] installs no signal handler: it is told to stop by a
//! [`CancellationToken`] and to reload by a channel, which `main.rs` wires to
//! SIGTERM/SIGINT and SIGHUP, and a test drives directly (the daemon then runs
//! in the test's own process).
//!
//! Tasks:
//! - the intake loop (this module): hints from the folder watcher, periodic
//!   rescans, settle timers, the clock tick (deadlines, silence), reloads
//!   (asked for, or a changed rule file), self-alerts and shutdown, all in one
//!   `select!`; files are processed one at a time, so rule state has a single
//!   writer;
//! - the outbox worker ([`crate::delivery::run_outbox`]), with its own
//!   database connection, woken when new outbox rows are committed;
//! - the metrics endpoint, when configured.
//!
//! Start-up and reload share [`load_config_and_rules`]: a reload is a start-up
//! that keeps the process. READY=1 is sent to systemd only after the rules are
//! loaded, the database is open and the first rescan is done.

use crate::config::{Config, FeedConfig, OnDone};
use crate::delivery::{Mailer, OutboxContext, run_outbox};
use crate::diagnostic::Diagnostics;
use crate::display::Escaped;
use crate::feeds::folder::FeedFolders;
use crate::feeds::intake::{Disposition, FileControl, IntakeError, process_file};
use crate::feeds::watch::{FolderWatcher, Hint, Observed, Settler, scan};
use crate::metrics::Metrics;
use crate::ops::{OpsNotifier, ProblemKind};
use crate::rules::RuleSet;
use crate::rules::engine::Engine;
use crate::store::Store;
use jiff::Timestamp;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sd_notify::NotifyState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Rules(Diagnostics),
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
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the console on {addr}: {source}")]
    Web {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the console over HTTPS: {0}")]
    WebTls(#[from] crate::web::listener::TlsError),
}

/// Loads and validates the rule set named by the config.
pub fn load_rules(config: &Config) -> Result<Arc<RuleSet>, DaemonError> {
    RuleSet::load(config)
        .map(Arc::new)
        .map_err(DaemonError::Rules)
}

/// Reads the config file and its rules: the one path for start-up and reload.
pub fn load_config_and_rules(path: &Path) -> Result<(Config, Arc<RuleSet>), Diagnostics> {
    let config = Config::load(path)?;
    let rules = RuleSet::load(&config)?;
    Ok((config, Arc::new(rules)))
}

/// Tells systemd (when run under it) how we are; a no-op otherwise.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Makes each feed folder if it is missing (its `processed/` and `rejected/`
/// are made, and checked, by [`FeedFolders::open`] at the first rescan), and
/// warns about a folder that lets producers disturb each other.
fn create_feed_dirs(config: &Config) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    for feed in &config.feeds {
        std::fs::create_dir_all(&feed.dir).map_err(|source| DaemonError::FeedDir {
            path: feed.dir.clone(),
            source,
        })?;
        if let Ok(meta) = std::fs::metadata(&feed.dir) {
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                tracing::warn!(feed = %feed.name, dir = %feed.dir.display(), mode = format!("{:o}", mode & 0o7777),
                    "Feed folder is writable by a group or others without the sticky bit: a producer could rename or remove other producers' files; make it 3770 (see README, Install on a server)");
            }
        }
        if let Ok(folders) = FeedFolders::open(&feed.dir, feed.on_done == OnDone::Move) {
            crate::feeds::folder::remove_stale_temporaries(&folders);
        }
    }
    Ok(())
}

/// Signs of life from the intake loop, for the systemd watchdog: the loop beats
/// at every turn and, while a large file is read, between reads. A separate
/// task tells systemd only while the beats are recent, so a loop that really
/// hangs is still restarted, and one busy with a big file is not.
#[derive(Debug)]
struct Liveness {
    start: Instant,
    last_beat_ms: AtomicU64,
}

impl Liveness {
    fn new() -> Liveness {
        Liveness {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        self.last_beat_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn beat_within(&self, window: Duration) -> bool {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) <= window
    }
}

/// Why a reload was asked for, as the log says it (`"SIGHUP"`).
pub type ReloadReason = &'static str;

/// How the daemon is driven from outside: `main.rs` wires signals to these,
/// an in-process test holds the other ends.
pub struct Controls {
    /// Cancelled to stop: no new file is started, the one being read gets
    /// half of `shutdown_timeout`, the outbox finishes its exchange.
    pub shutdown: CancellationToken,
    /// Each message reloads the config and rules, as SIGHUP does.
    pub reload: mpsc::UnboundedReceiver<ReloadReason>,
    /// Cancelled by the daemon when it is ready (when READY=1 goes to systemd):
    /// files already waiting have been read and the first clock tick has run.
    pub ready: CancellationToken,
}

impl Controls {
    /// Fresh controls and the sender of their reload channel; clone the
    /// tokens before handing the controls to [`run`] to keep the other ends.
    pub fn new() -> (Controls, mpsc::UnboundedSender<ReloadReason>) {
        let (reload_tx, reload) = mpsc::unbounded_channel();
        let controls = Controls {
            shutdown: CancellationToken::new(),
            reload,
            ready: CancellationToken::new(),
        };
        (controls, reload_tx)
    }
}

/// Runs the daemon until `controls.shutdown` is cancelled. Returns when
/// everything in progress has finished.
pub async fn run(config: Config, controls: Controls) -> Result<(), DaemonError> {
    let Controls {
        shutdown,
        mut reload,
        ready,
    } = controls;
    let config = Arc::new(config);
    let rules = load_rules(&config)?;
    create_feed_dirs(&config)?;
    let mut store = Store::open(&config.daemon.state_dir)?;
    let state = store.load_engine_state()?;
    let mut engine = Engine::new(rules.clone(), state);
    record_reload(&store, Some(&*rules), None);
    tracing::info!(rules = rules.rules.len(), files = rules.files.len(), feeds = config.feeds.len(), database = %store.path().display(), "Starting");

    let metrics = Arc::new(Metrics::default());
    let ops = Arc::new(OpsNotifier::default());
    let mailer = Arc::new(Mailer::new(&config.mail)?);
    let wake_outbox = Arc::new(Notify::new());
    let stop_tasks = CancellationToken::new();
    let outbox = tokio::spawn(run_outbox(OutboxContext {
        store: Arc::new(Mutex::new(Store::open(&config.daemon.state_dir)?)),
        mailer,
        mail: config.mail.clone(),
        wake: wake_outbox.clone(),
        shutdown: stop_tasks.clone(),
        metrics: metrics.clone(),
        ops: ops.clone(),
        clock: crate::delivery::Clock::system(),
    }));
    if let Some(addr) = config.metrics_listen {
        let listener = crate::metrics::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tracing::info!(%addr, "Serving metrics at /metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            config.daemon.state_dir.clone(),
            stop_tasks.clone(),
        ));
    }

    // The console reads the rules in force from this channel: each reload sends its set.
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(rules.clone());
    // Files pushed over HTTP come to the intake loop here, so they are processed
    // one at a time with the dropped files (one writer of rule state).
    let (push_tx, mut pushes) = mpsc::channel(crate::web::push::PUSH_QUEUE);
    // The push route reads the feeds in force (their tokens) from this one.
    let (config_tx, config_rx) = tokio::sync::watch::channel(config.clone());
    let web = match &config.web {
        Some(web) => {
            // A certificate or key that does not load stops the start, before
            // READY=1, rather than leaving the daemon running without its console.
            if let Some(tls) = &web.tls {
                crate::web::listener::tls_acceptor(tls)?;
            }
            let addr = web.listen;
            let listener = crate::web::bind(addr)
                .await
                .map_err(|source| DaemonError::Web { addr, source })?;
            tracing::info!(%addr, url = %web.public_url, "Serving the console");
            Some(tokio::spawn(crate::web::run(
                listener,
                config.clone(),
                rules_rx,
                crate::web::push::Pushes {
                    jobs: push_tx,
                    config: config_rx,
                },
                stop_tasks.clone(),
            )))
        }
        None => None,
    };

    let (hint_tx, mut hints) = mpsc::unbounded_channel();
    let (reload_tx, mut reload_requests) = mpsc::unbounded_channel();
    let watchers = Watchers::new(&config, hint_tx.clone(), reload_tx.clone())?;

    // Watched by its own task so that the moment is known even while the loop
    // below is busy with a file (which then gets half of `shutdown_timeout`).
    let stopping = shutdown;
    let stop_requested: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    {
        let stopping = stopping.clone();
        let stop_requested = stop_requested.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            let _ = stop_requested.set(Instant::now());
        });
    }
    let liveness = Arc::new(Liveness::new());
    liveness.beat();
    let watchdog = sd_notify::watchdog_enabled()
        .map(|d| d / 3)
        .unwrap_or(Duration::from_secs(10));
    {
        let liveness = liveness.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(watchdog);
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = timer.tick() => {
                        if liveness.beat_within(watchdog * 3 / 2) {
                            notify_systemd(&[NotifyState::Watchdog]);
                        }
                    }
                }
            }
        });
    }

    let mut intake = Intake {
        config: config.clone(),
        engine: &mut engine,
        store: &mut store,
        settler: Settler::new(config.daemon.settle),
        wake_outbox: wake_outbox.clone(),
        metrics: metrics.clone(),
        ops: ops.clone(),
        watchers,
        hint_tx,
        reload_tx,
        rules_tx,
        config_tx,
        stopping: stopping.clone(),
        stop_requested: stop_requested.clone(),
        liveness: liveness.clone(),
        paused: HashMap::new(),
        ticked: false,
    };
    // The first rescan happens before READY=1, so a file already waiting is
    // ingested first (a support record that arrived while we were down closes
    // its deadline before the tick below could escalate it).
    intake.rescan();
    // Files written just before the start are read once they settle, still before READY=1.
    let settle_limit = Instant::now() + config.daemon.settle * 3;
    while let Some(next) = intake.settler.next_deadline() {
        if Instant::now() >= settle_limit || stopping.is_cancelled() {
            break;
        }
        tokio::time::sleep(
            next.saturating_duration_since(Instant::now())
                .min(settle_limit.saturating_duration_since(Instant::now())),
        )
        .await;
        intake.process_ready();
    }
    intake.tick();
    notify_systemd(&[
        NotifyState::Ready,
        NotifyState::Status("watching feed folders"),
    ]);
    tracing::info!("Ready");
    ready.cancel();

    let mut rescan_timer = tokio::time::interval(config.daemon.rescan_interval);
    rescan_timer.tick().await; // the first tick is immediate; the rescan just happened
    // The loop beats at least this often when idle, for the watchdog task.
    let mut heartbeat_timer = tokio::time::interval(watchdog.min(Duration::from_secs(1)));
    // Deadlines and silence are checked against the wall clock every second.
    let mut clock_timer = tokio::time::interval(Duration::from_secs(1));
    clock_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ops_timer = tokio::time::interval(Duration::from_secs(2));

    loop {
        let settle_wait = intake
            .settler
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = stopping.cancelled() => break,
            Some(why) = reload.recv() => intake.reload(why),
            Some(()) = reload_requests.recv() => {
                // Editors write a file in several steps: let them finish, then reload once.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while reload_requests.try_recv().is_ok() {}
                intake.reload("a rule file changed");
            }
            Some(job) = pushes.recv() => intake.push(job),
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
            _ = clock_timer.tick() => {
                intake.tick();
                intake.remind();
            }
            _ = ops_timer.tick() => intake.flush_ops(),
            _ = heartbeat_timer.tick() => {}
        }
        liveness.beat();
    }

    notify_systemd(&[NotifyState::Stopping]);
    drop(intake);
    stop_tasks.cancel();
    // The outbox finishes the SMTP exchange in progress (bounded by the mail timeout).
    if tokio::time::timeout(config.daemon.shutdown_timeout, outbox)
        .await
        .is_err()
    {
        tracing::warn!(
            "Outbox still busy at shutdown; pending mail stays queued for the next start"
        );
    }
    if let Some(web) = web {
        // Pages in progress finish (each is bounded by the request timeout).
        match tokio::time::timeout(config.daemon.shutdown_timeout, web).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "The console stopped with an error"),
            Err(_) => tracing::warn!("Console requests still running at shutdown"),
            _ => {}
        }
    }
    tracing::info!("Stopped");
    Ok(())
}

/// Records the rules in force and the last reload's outcome, for `status`.
fn record_reload(store: &Store, loaded: Option<&RuleSet>, error: Option<&str>) {
    let now = Timestamp::now().to_string();
    let mut result = store.set_meta("last_reload_at", &now);
    if let Some(rules) = loaded {
        let in_force: Vec<_> = rules
            .rules
            .iter()
            .map(|r| crate::store::RuleInForce {
                id: r.id.clone(),
                kind: r.kind.name().to_string(),
                severity: r.severity.as_str().to_string(),
            })
            .collect();
        let in_force = serde_json::to_string(&in_force).unwrap_or_default();
        result = result
            .and_then(|()| store.set_meta("rules_loaded", &rules.rules.len().to_string()))
            .and_then(|()| store.set_meta("rules_in_force", &in_force));
    }
    result = result.and_then(|()| store.set_meta("last_reload_error", error.unwrap_or("")));
    // Kept after a later reload succeeds, so `status` can still say what was refused.
    if let Some(error) = error {
        result = result
            .and_then(|()| store.set_meta("last_refused_at", &now))
            .and_then(|()| store.set_meta("last_refused_error", error));
    }
    if let Err(e) = result {
        tracing::warn!(error = %e, "Cannot record the reload in the database");
    }
}

/// The folder watchers: feed folders (file hints) and rule folders (reloads).
struct Watchers {
    _feeds: FolderWatcher,
    _rules: RecommendedWatcher,
    feed_dirs: Vec<PathBuf>,
    rule_patterns: Vec<String>,
}

impl Watchers {
    fn new(
        config: &Config,
        hints: mpsc::UnboundedSender<Hint>,
        reload: mpsc::UnboundedSender<()>,
    ) -> Result<Watchers, DaemonError> {
        let feed_dirs: Vec<PathBuf> = config.feeds.iter().map(|f| f.dir.clone()).collect();
        let feeds = FolderWatcher::new(&feed_dirs, hints)?;
        let patterns: Vec<glob::Pattern> = config
            .daemon
            .rules
            .iter()
            .filter_map(|p| glob::Pattern::new(p).ok())
            .collect();
        let config_path = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
        let watched_config = config_path.clone();
        let mut rules =
            notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
                let Ok(event) = result else { return };
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let relevant = event.paths.iter().any(|p| {
                    *p == watched_config
                        || (p.extension().is_some_and(|e| e == "toml")
                            && patterns.iter().any(|pat| pat.matches_path(p)))
                });
                if relevant {
                    let _ = reload.send(());
                }
            })?;
        let mut dirs: Vec<PathBuf> = config.daemon.rules.iter().map(|p| glob_base(p)).collect();
        if let Some(parent) = config_path.parent() {
            dirs.push(parent.to_path_buf());
        }
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            // A rules folder that does not exist yet is not watched; SIGHUP still reloads.
            if dir.is_dir()
                && let Err(e) = rules.watch(dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "Cannot watch the rules folder; reload with SIGHUP");
            }
        }
        Ok(Watchers {
            _feeds: feeds,
            _rules: rules,
            feed_dirs,
            rule_patterns: config.daemon.rules.clone(),
        })
    }

    fn matches(&self, config: &Config) -> bool {
        let dirs: Vec<PathBuf> = config.feeds.iter().map(|f| f.dir.clone()).collect();
        dirs == self.feed_dirs && config.daemon.rules == self.rule_patterns
    }
}

/// The folder part of a glob pattern (before the first component with a wildcard).
fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for component in Path::new(pattern).components() {
        let text = component.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[']) {
            break;
        }
        base.push(component);
    }
    if base.as_os_str().is_empty() || base == Path::new(pattern) {
        // No wildcard: the pattern names a file; watch its folder.
        return Path::new(pattern)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
    }
    base
}

/// The intake side of the daemon: readiness, processing, the clock, reloads and self-alerts.
struct Intake<'a> {
    config: Arc<Config>,
    engine: &'a mut Engine,
    store: &'a mut Store,
    settler: Settler,
    wake_outbox: Arc<Notify>,
    metrics: Arc<Metrics>,
    ops: Arc<OpsNotifier>,
    watchers: Watchers,
    hint_tx: mpsc::UnboundedSender<Hint>,
    reload_tx: mpsc::UnboundedSender<()>,
    /// Each rule set in force, for the console.
    rules_tx: tokio::sync::watch::Sender<Arc<RuleSet>>,
    /// Each config in force, for the push route (a rotated token counts at once).
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    /// Cancelled on SIGTERM/SIGINT: no new file is started after that.
    stopping: CancellationToken,
    /// When SIGTERM/SIGINT came: the file being read then gets half of
    /// `shutdown_timeout` to finish, then it is abandoned (rolled back, read again at the next start).
    stop_requested: Arc<OnceLock<Instant>>,
    liveness: Arc<Liveness>,
    /// Feeds whose folders cannot be trusted, and why: nothing of theirs is read until fixed.
    paused: HashMap<String, String>,
    /// Whether the first clock tick (after start) has run.
    ticked: bool,
}

/// Runs the clock tick at `now` through the batch step (the tick rule's
/// rule 4, see `crate::pipeline`) and commits its alerts and state in one
/// transaction; on failure the engine's state is put back. Returns the rules that alerted.
pub fn commit_tick(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    now: Timestamp,
) -> Result<Vec<String>, IntakeError> {
    let pipeline = crate::pipeline::Pipeline::new(config);
    let outcome = pipeline.tick_engine(engine, now);
    if outcome.alerts.is_empty() && outcome.changes.is_empty() {
        return Ok(Vec::new());
    }
    let result = (|| -> Result<Vec<crate::pipeline::Raised>, IntakeError> {
        let mut tx = store.begin()?;
        let raised = pipeline.record_tick(engine, &mut tx, outcome, now)?;
        tx.commit()?;
        Ok(raised)
    })();
    let raised = match result {
        Ok(raised) => raised,
        Err(e) => {
            if let Ok(state) = store.load_engine_state() {
                engine.restore(state);
            }
            return Err(e);
        }
    };
    for alert in raised.iter().map(|r| &r.alert) {
        tracing::info!(alert = %alert.id, rule = %alert.rule_id, district = alert.district.as_deref().unwrap_or("-"),
            severity = %alert.severity, trigger = ?alert.trigger, "Alert raised");
    }
    Ok(raised.into_iter().map(|r| r.alert.rule_id).collect())
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

    /// Pauses a feed whose folders cannot be trusted (said once per reason),
    /// or resumes one that was paused.
    fn set_paused(&mut self, feed: &FeedConfig, problem: Option<&str>) {
        let key = format!("feed_paused.{}", feed.name);
        match problem {
            Some(reason) => {
                if self.paused.get(&feed.name).map(String::as_str) == Some(reason) {
                    return;
                }
                tracing::error!(feed = %feed.name, reason = %Escaped(reason), "Feed paused: its folders cannot be trusted; nothing of it is read until this is fixed");
                self.ops.report(
                    ProblemKind::FeedUnreadable,
                    format!("{} is paused: {reason}", feed.name),
                    Timestamp::now(),
                );
                self.paused.insert(feed.name.clone(), reason.to_string());
                if let Err(e) = self.store.set_meta(&key, reason) {
                    tracing::warn!(error = %e, "Cannot record the paused feed for status");
                }
            }
            None => {
                if self.paused.remove(&feed.name).is_some() {
                    tracing::info!(feed = %feed.name, "Feed resumed: its folders are in order again");
                    self.ops.cleared(
                        ProblemKind::FeedUnreadable,
                        format!("{} resumed: its folders are in order again", feed.name),
                        Timestamp::now(),
                    );
                    if let Err(e) = self.store.set_meta(&key, "") {
                        tracing::warn!(error = %e, "Cannot record the resumed feed for status");
                    }
                }
            }
        }
    }

    fn rescan(&mut self) {
        let feeds = self.config.feeds.clone();
        for feed in &feeds {
            match FeedFolders::open(&feed.dir, feed.on_done == OnDone::Move) {
                Ok(_) => self.set_paused(feed, None),
                Err(problem) => {
                    self.set_paused(feed, Some(&problem.0));
                    continue;
                }
            }
            let files = match scan(&feed.dir) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(feed = %feed.name, dir = %feed.dir.display(), error = %e, "Cannot read the feed folder");
                    self.ops.report(
                        ProblemKind::FeedUnreadable,
                        format!("{} ({}): {e}", feed.name, feed.dir.display()),
                        Timestamp::now(),
                    );
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

    /// Reloads config and rules through the start-up path; refuses a broken set whole.
    fn reload(&mut self, why: &str) {
        notify_systemd(&[NotifyState::Reloading]);
        match load_config_and_rules(&self.config.path) {
            Ok((config, rules)) => {
                let restart_needed = config.daemon.state_dir != self.config.daemon.state_dir
                    || format!("{:?}", config.mail) != format!("{:?}", self.config.mail)
                    || config.metrics_listen != self.config.metrics_listen
                    || config.web != self.config.web;
                if restart_needed {
                    tracing::warn!(
                        "state_dir, [mail], [metrics] or [web] changed: those take effect at the next restart"
                    );
                }
                if !self.watchers.matches(&config) {
                    let rebuilt = create_feed_dirs(&config).and_then(|()| {
                        Watchers::new(&config, self.hint_tx.clone(), self.reload_tx.clone())
                    });
                    match rebuilt {
                        Ok(w) => self.watchers = w,
                        Err(e) => {
                            self.refuse_reload(&e.to_string());
                            return;
                        }
                    }
                }
                tracing::info!(
                    reason = why,
                    rules = rules.rules.len(),
                    files = rules.files.len(),
                    "Rules reloaded"
                );
                self.settler = Settler::new(config.daemon.settle);
                self.engine.replace_rules(rules.clone());
                // No receiver (no console) is not an error: nobody needs the set.
                let _ = self.rules_tx.send(rules.clone());
                self.config = Arc::new(config);
                let _ = self.config_tx.send(self.config.clone());
                // Ops were told of the refusal: tell them it is over.
                if self
                    .store
                    .meta("last_reload_error")
                    .is_ok_and(|e| e.is_some_and(|e| !e.is_empty()))
                {
                    self.ops.cleared(
                        ProblemKind::ReloadRefused,
                        format!("{} rules in force ({why})", rules.rules.len()),
                        Timestamp::now(),
                    );
                }
                record_reload(self.store, Some(&*rules), None);
                self.metrics.reload(true);
                // Folders may have changed: look at them now.
                self.rescan();
            }
            Err(errors) => self.refuse_reload(&errors.to_string()),
        }
        notify_systemd(&[NotifyState::Ready]);
    }

    fn refuse_reload(&mut self, errors: &str) {
        for line in errors.lines() {
            tracing::error!(error = %line, "New config or rules refused; the previous rules stay in force");
        }
        record_reload(self.store, None, Some(errors));
        self.metrics.reload(false);
        self.ops.report(
            ProblemKind::ReloadRefused,
            errors.to_string(),
            Timestamp::now(),
        );
    }

    /// Raises what is due by the wall clock (overdue deadlines, silent feeds) and commits it.
    fn tick(&mut self) {
        if self.stopping.is_cancelled() {
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
            Ok(rules) if rules.is_empty() => {}
            Ok(rules) => {
                for rule in &rules {
                    self.metrics.alert(rule);
                }
                self.wake_outbox.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot record overdue deadlines or silent feeds; will retry")
            }
        }
    }

    /// Queues the `review_within` and `ack_within` reminders due now (`lifecycle`).
    fn remind(&mut self) {
        if self.stopping.is_cancelled() {
            return;
        }
        let now = Timestamp::now();
        let rules = self.engine.rules();
        match tokio::task::block_in_place(|| {
            crate::lifecycle::send_reminders(&self.config, rules, self.store, now)
        }) {
            Ok(reminded) if reminded.is_empty() => {}
            Ok(_) => self.wake_outbox.notify_one(),
            Err(e) => tracing::error!(error = %e, "Cannot send the reminders due; will retry"),
        }
    }

    /// Sends the collected self-alerts, at most once per `ops_interval`.
    fn flush_ops(&mut self) {
        let Some((problems, more)) = self
            .ops
            .take_due(Instant::now(), self.config.daemon.ops_interval)
        else {
            return;
        };
        let now = Timestamp::now();
        let Some((alert, emails)) = crate::ops::build(&self.config, &problems, more, now) else {
            return;
        };
        match tokio::task::block_in_place(|| self.store.store_alert(&alert, &emails, now)) {
            Ok(()) => {
                tracing::info!(alert = %alert.id, problems = problems.len() as u64 + more, "Told ops about problems");
                self.wake_outbox.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "Cannot queue the email to ops"),
        }
    }

    /// What a file's reading asks between rows: it feeds the watchdog, and
    /// says to stop once a shutdown has waited half its `shutdown_timeout`
    /// (the file then stays where it is, to be read whole at the next start).
    fn interruption(&self) -> impl Fn() -> bool + use<> {
        let (liveness, stop_requested) = (self.liveness.clone(), self.stop_requested.clone());
        let grace = self.config.daemon.shutdown_timeout / 2;
        move || {
            liveness.beat();
            stop_requested.get().is_some_and(|at| at.elapsed() >= grace)
        }
    }

    fn process_ready(&mut self) {
        for path in self.settler.ready(Instant::now(), Observed::of) {
            self.process(&path);
        }
    }

    fn process(&mut self, path: &Path) {
        if self.stopping.is_cancelled() {
            return;
        }
        let Some(feed) = self.feed_of(path) else {
            return;
        };
        if self.paused.contains_key(&feed.name) {
            return;
        }
        let started = Instant::now();
        let file = crate::display::escaped_name(path);
        let interrupted = self.interruption();
        let control = FileControl {
            interrupted: &interrupted,
        };
        // SQLite and file moves block; keep the runtime's other workers (the outbox) running.
        let result = tokio::task::block_in_place(|| {
            process_file(
                &self.config,
                self.engine,
                self.store,
                &feed,
                path,
                Timestamp::now(),
                &control,
            )
        });
        if self.account(&feed, &file, started, &result) {
            // Retry after a settle interval rather than spinning on it.
            self.settler
                .changed(path.to_path_buf(), None, Instant::now());
        }
    }

    /// A file pushed over HTTP (SPEC §11): through the intake as a dropped file
    /// is, here in the loop, so it never races one; answered once committed.
    fn push(&mut self, job: crate::web::push::PushJob) {
        use crate::web::push::PushReply;
        let crate::web::push::PushJob {
            feed,
            spool,
            name,
            actor,
            reply,
        } = job;
        let Some(feed) = self
            .config
            .feed(&feed)
            .filter(|f| f.push_token.is_some())
            .cloned()
        else {
            // Its push_token_file was taken away by a reload since the request came.
            let _ = reply.send(PushReply::NoSuchFeed);
            return;
        };
        let refused = if let Some(reason) = self.paused.get(&feed.name) {
            Some(IntakeError::Folder(crate::feeds::folder::FolderProblem(
                reason.clone(),
            )))
        } else if self.stopping.is_cancelled() {
            Some(IntakeError::Interrupted)
        } else {
            None
        };
        if let Some(e) = refused {
            let _ = reply.send(PushReply::Done(Err(e)));
            return;
        }
        let started = Instant::now();
        let file = crate::display::escaped_name(Path::new(&name));
        let interrupted = self.interruption();
        let control = FileControl {
            interrupted: &interrupted,
        };
        let result = tokio::task::block_in_place(|| {
            crate::feeds::intake::process_pushed(
                &self.config,
                self.engine,
                self.store,
                &feed,
                spool.name(),
                &name,
                &actor,
                Timestamp::now(),
                &control,
            )
        });
        self.account(&feed, &file, started, &result);
        // What the intake did not move (a failed try) is removed: the client retries.
        drop(spool);
        let _ = reply.send(PushReply::Done(result));
    }

    /// Logs, counts and reports what became of a file; true when it is to be
    /// tried again later (a fault that is not the file's).
    fn account(
        &mut self,
        feed: &FeedConfig,
        file: &str,
        started: Instant,
        result: &Result<Disposition, IntakeError>,
    ) -> bool {
        match result {
            Ok(Disposition::Processed(summary)) => {
                tracing::info!(feed = %feed.name, file = %file, rows = summary.rows, events = summary.events,
                    duplicates = summary.duplicates, rejected = summary.rejected_rows, alerts = summary.alerts.len(),
                    encoding = summary.encoding.as_deref().unwrap_or(""), ms = started.elapsed().as_millis() as u64, "File processed");
                self.metrics.file(
                    &feed.name,
                    "processed",
                    summary.events,
                    summary.rejected_rows,
                );
                for rule in &summary.alert_rules {
                    self.metrics.alert(rule);
                }
                if summary.rejected_rows > 0 {
                    self.ops.report(
                        ProblemKind::RowsRejected,
                        format!(
                            "{}/{}: {} row(s); see rejected/{}.errors.txt",
                            feed.name,
                            file,
                            summary.rejected_rows,
                            summary.rejected_as.as_deref().unwrap_or(file)
                        ),
                        Timestamp::now(),
                    );
                }
                for id in &summary.unrouted {
                    self.ops.report(
                        ProblemKind::AlertReachesNobody,
                        format!(
                            "alert {id} from {}/{file}: no partner on its rule's list covers it",
                            feed.name
                        ),
                        Timestamp::now(),
                    );
                }
                if !summary.alerts.is_empty() {
                    self.wake_outbox.notify_one();
                }
            }
            Ok(Disposition::Duplicate) => {
                tracing::info!(feed = %feed.name, file = %file, "Same content as a file already processed; moved without alerting");
                self.metrics.file(&feed.name, "duplicate", 0, 0);
            }
            Ok(Disposition::Rejected(reason)) => {
                self.metrics.file(&feed.name, "rejected", 0, 0);
                // The reason may quote the file (its "header"): withheld from ops without the ISA.
                self.ops.report_quoting(
                    ProblemKind::FileRejected,
                    format!("{}/{file}", feed.name),
                    reason.clone(),
                    Timestamp::now(),
                );
            }
            Ok(Disposition::Skipped) => {}
            Err(IntakeError::Folder(problem)) => self.set_paused(feed, Some(&problem.0)),
            Err(IntakeError::Interrupted) => {
                tracing::info!(feed = %feed.name, file = %file, "Stopped reading the file at shutdown; it stays in the folder and is read again at the next start");
            }
            Err(e) => {
                if matches!(e, IntakeError::Store(_)) {
                    tracing::error!(feed = %feed.name, file = %file, error = %e, "Cannot record the file; it stays in the folder and will be retried");
                } else {
                    tracing::warn!(feed = %feed.name, file = %file, error = %e, "Cannot process the file; it will be retried");
                }
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_bases() {
        assert_eq!(
            glob_base("/etc/ew/rules/*.toml"),
            Path::new("/etc/ew/rules")
        );
        assert_eq!(
            glob_base("/etc/ew/rules/**/*.toml"),
            Path::new("/etc/ew/rules")
        );
        assert_eq!(
            glob_base("/etc/ew/rules/main.toml"),
            Path::new("/etc/ew/rules")
        );
    }
}
