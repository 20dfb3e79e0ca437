//! The `earlywarn` command line: parse arguments, set up logging, call the library.
//!
//! Exit codes (SPEC §2): 0 ok, 1 a user error (bad config, bad rules, failed
//! test, bad input), 2 an internal failure.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use earlywarn::config::Config;
use earlywarn::delivery::Mailer;
use earlywarn::diagnostic::Diagnostics;
// Every value that came from a file (names, fields, reasons) or a mail server
// goes through this before a terminal sees it: JSON output is escaped by serde.
use earlywarn::display::escape_controls as esc;
use earlywarn::report::{self, OutputFormat};
use earlywarn::rules::RuleSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc: a million rows are a few million small allocations, made on the
/// reading thread and freed on the rules thread; glibc's allocator spent a
/// third of replay's time on that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "earlywarn",
    version,
    about = "Rule-based early-warning alerting daemon"
)]
struct Cli {
    /// The config file [default: $EARLYWARN_CONFIG, then /etc/earlywarn/earlywarn.toml].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run,
    /// Validate the config, rules and templates; print file:line:col errors.
    Check,
    /// Run rule tests (*.test.toml): given records and times, expect alerts or none.
    Test {
        /// Only tests whose name contains this text.
        #[arg(long)]
        run: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Ingest files offline with a simulated clock; print alerts; send nothing.
    Replay {
        /// The feed the files belong to.
        #[arg(long)]
        feed: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show state: feeds, outbox, delivery problems, rejected files, recent alerts.
    Status {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// The review queue: list, show, approve or dismiss alerts held for review.
    Alerts {
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// Send a test email through the configured transport, now.
    SendTestEmail {
        #[arg(long)]
        to: String,
    },
    /// See deliveries and requeue failed ones.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Console accounts: add, list, set a password, disable, enable.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// The audit log: every login, decision and account change, who, when and from where.
    Audit {
        /// Only entries this recent: "1h", "7d", "1h30m".
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Add an account. The password is asked twice on the terminal, or read from standard input.
    Add {
        /// The login: letters a-z, digits, `.`, `_`, `-` (any case is taken as lower case).
        name: String,
        /// viewer (sees alerts), reviewer (decides drafts for its partner) or admin.
        #[arg(long)]
        role: String,
        /// The partner (a config `[[partner]]` id) the person works for.
        #[arg(long)]
        partner: Option<String>,
        /// The person's name as emails and pages show it [default: the login].
        #[arg(long)]
        display: Option<String>,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every account with its role, partner and state.
    List {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Set a new password (ends the account's sessions and lifts a lock).
    Passwd {
        name: String,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it cannot log in, and its sessions end now.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// Deliveries, newest first: id, alert, partner, status, attempts, next attempt, errors.
    List {
        /// Only failed deliveries (refused by the server, or by some of a partner's addresses).
        #[arg(long)]
        failed: bool,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Requeue failed deliveries: due now, attempts reset, owed again to the
    /// addresses that refused them (never to those that accepted).
    Retry {
        /// A delivery id (from `outbox list`), or an alert id: all its failed deliveries.
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<String>,
        /// Every failed delivery.
        #[arg(long)]
        all_failed: bool,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Alerts awaiting review, oldest first (with --all, recent alerts of every status).
    List {
        #[arg(long)]
        all: bool,
        /// `age`: oldest first; `severity`: critical first, oldest first within each.
        #[arg(long, value_enum, default_value_t = QueueSort::Age)]
        sort: QueueSort,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// One alert: its records, its decisions, its history and where its emails went.
    Show {
        id: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Approve a reviewed alert: it goes to its rule's `notify` partners (once
    /// the rule's `approvals` are in), with the wording you give.
    Approve {
        id: String,
        /// The first line of the email and its subject, instead of the rule's.
        #[arg(long)]
        headline: Option<String>,
        /// What partners should do, instead of the rule's advice.
        #[arg(long)]
        advice: Option<String>,
        /// info, warning or critical, instead of the rule's (also decides who gets it).
        #[arg(long)]
        severity: Option<String>,
        /// A `notify` partner not to tell (may be given more than once).
        #[arg(long = "leave-out", value_name = "PARTNER")]
        leave_out: Vec<String>,
        /// Your name as the email shows it; your Unix account (from your uid) is always recorded.
        #[arg(long)]
        by: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Close a reviewed alert without sending it further.
    Dismiss {
        id: String,
        /// Why it goes no further (required).
        #[arg(long)]
        reason: Option<String>,
        /// Your name as recorded beside your Unix account (which is always recorded, from your uid).
        #[arg(long)]
        by: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Send `UPDATE N:` with the alert's subject and your text to every partner that received it.
    Update {
        id: String,
        /// What partners should know now.
        #[arg(long)]
        text: String,
        /// Your name as recorded beside your Unix account (which is always recorded, from your uid).
        #[arg(long)]
        by: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Send `WITHDRAWN:` with the alert's subject and your reason to every partner that received it.
    Withdraw {
        id: String,
        /// Why partners should disregard it.
        #[arg(long)]
        reason: String,
        /// Your name as recorded beside your Unix account (which is always recorded, from your uid).
        #[arg(long)]
        by: Option<String>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `alerts list --sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QueueSort {
    Age,
    Severity,
}

/// A failure that is the user's to fix (exit 1), as opposed to an internal one (exit 2).
#[derive(Debug)]
struct UserError(String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// The hidden `earlywarn generate-docs DIR`: writes the man pages and the shell
/// completions the Debian package ships (`scripts/package`), from the very
/// definitions the parser uses, so they cannot drift from the real options. It is
/// added to the parser here rather than to `Command` so that it never appears in
/// `--help`, in the man pages or in the completions it writes.
const GENERATE_DOCS: &str = "generate-docs";

fn main() -> ExitCode {
    let matches = Cli::command()
        .subcommand(
            clap::Command::new(GENERATE_DOCS).hide(true).arg(
                clap::Arg::new("dir")
                    .required(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
        )
        .get_matches();
    if let Some((GENERATE_DOCS, sub)) = matches.subcommand() {
        // `required(true)` above: clap has refused the command line without it.
        let dir = sub.get_one::<PathBuf>("dir").cloned().unwrap_or_default();
        return match generate_docs(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("earlywarn: cannot write the docs: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    match dispatch(cli.config, cli.command) {
        Ok(code) => code,
        Err(e) => {
            if let Some(user) = e.downcast_ref::<UserError>() {
                eprintln!("{user}");
                ExitCode::from(1)
            } else if let Some(diags) = e.downcast_ref::<Diagnostics>() {
                eprintln!("{diags}");
                ExitCode::from(1)
            } else if let Some(store) = e
                .downcast_ref::<earlywarn::store::StoreError>()
                .filter(|s| s.is_user_error())
            {
                // A database newer than this binary: the operator's to fix.
                eprintln!("earlywarn: {store}");
                ExitCode::from(1)
            } else {
                eprintln!("earlywarn: internal error: {e:#}");
                ExitCode::from(2)
            }
        }
    }
}

/// `DIR/man/*.1` (one page per command and subcommand) and
/// `DIR/completions/{earlywarn.bash,_earlywarn,earlywarn.fish}`.
fn generate_docs(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for folder in [&man, &completions] {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", esc(&folder.display().to_string())))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("cannot write the man pages")?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "earlywarn", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal; journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("EARLYWARN_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/earlywarn/earlywarn.toml"))
}

fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = config_path(explicit);
    Ok(Config::load(&path)?)
}

fn load_rules(config: &Config) -> anyhow::Result<Arc<RuleSet>> {
    Ok(Arc::new(RuleSet::load(config)?))
}

fn dispatch(config: Option<PathBuf>, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            let config = load_config(config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime
                .block_on(async {
                    let controls = signal_controls()?;
                    earlywarn::daemon::run(config, controls).await
                })
                .map_err(|e| match e {
                    earlywarn::daemon::DaemonError::Rules(d) => anyhow::Error::new(d),
                    other => anyhow::Error::new(UserError(format!("earlywarn: {other}"))),
                })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(config),
        Command::Test { run, files } => rule_tests(config, run.as_deref(), &files),
        Command::Replay {
            feed,
            format,
            files,
        } => replay(config, &feed, format, &files),
        Command::Status { format } => status(config, format),
        Command::Alerts { action } => alerts(config, action),
        Command::SendTestEmail { to } => send_test_email(config, &to),
        Command::Outbox { action } => outbox(config, action),
        Command::Users { action } => users(config, action),
        Command::Audit { since, format } => audit(config, since.as_deref(), format),
    }
}

/// Wires the process's signals to the daemon's controls: SIGTERM and SIGINT
/// stop it, each SIGHUP reloads. Installed before the daemon starts, so a
/// signal during start-up is not lost.
fn signal_controls() -> Result<earlywarn::daemon::Controls, earlywarn::daemon::DaemonError> {
    use earlywarn::daemon::{Controls, DaemonError};
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let (controls, reload) = Controls::new();
    let shutdown = controls.shutdown.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "Shutting down");
        shutdown.cancel();
    });
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            if reload.send("SIGHUP").is_err() {
                break; // the daemon has stopped
            }
        }
    });
    Ok(controls)
}

fn check(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let rules = load_rules(&config)?;
    if let Err(e) = Mailer::new(&config.mail) {
        return Err(UserError(format!("{}: [mail]: {e}", config.path.display())).into());
    }
    for feed in &config.feeds {
        if !feed.dir.is_dir() {
            eprintln!("{}", report::check::missing_folder(feed));
        }
    }
    println!("{}", report::check::verdict(&config, &rules));
    println!("{}", report::check::index_coverage(&rules));
    Ok(ExitCode::SUCCESS)
}

fn rule_tests(
    config: Option<PathBuf>,
    filter: Option<&str>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let results = earlywarn::ruletest::run_files(&config, files, filter)?;
    report::check::write_test_results(&mut std::io::stdout().lock(), &results)?;
    Ok(
        if !results.is_empty() && results.iter().all(|r| r.passed()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

fn replay(
    config: Option<PathBuf>,
    feed_name: &str,
    format: OutputFormat,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let rules = load_rules(&config)?;
    let Some(feed) = config.feed(feed_name) else {
        let names: Vec<&str> = config.feeds.iter().map(|f| f.name.as_str()).collect();
        return Err(UserError(format!(
            "unknown feed `{feed_name}`; the feeds are: {}",
            names.join(", ")
        ))
        .into());
    };
    for f in files {
        if !f.is_file() {
            return Err(UserError(format!("{}: no such file", f.display())).into());
        }
    }
    let started = std::time::Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error = None;
    let summary = earlywarn::replay::replay(
        &config,
        rules,
        feed,
        files,
        jiff::Timestamp::now(),
        |alert| {
            use std::io::Write;
            if let Err(e) = writeln!(out, "{}", report::replay::alert(&alert, format)) {
                write_error.get_or_insert(e);
            }
        },
        |path, row, reason| eprintln!("{}", report::replay::problem(path, row, reason)),
    )?;
    drop(out);
    if let Some(e) = write_error
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    let secs = started.elapsed().as_secs_f64();
    report::replay::write_summary(&mut std::io::stderr().lock(), &summary, secs)?;
    Ok(if summary.rejected_rows > 0 || summary.rejected_files > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn status(config: Option<PathBuf>, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let store = earlywarn::store::Store::open(&config.daemon.state_dir)?;
    let now = jiff::Timestamp::now();
    let status = store.status(now)?;
    let out = &mut std::io::stdout().lock();
    match format {
        OutputFormat::Json => report::write_json(out, &status)?,
        OutputFormat::Text => {
            report::status::write_text(out, &status, &config.feeds, &config.daemon.timezone, now)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn alerts(config: Option<PathBuf>, action: AlertsAction) -> anyhow::Result<ExitCode> {
    use earlywarn::audit::Actor;
    use earlywarn::review::{Authority, Decision, Edits, ReviewError, decide, normalise_id};
    use earlywarn::store::decisions::QueueOrder;
    let config = load_config(config)?;
    let mut store = earlywarn::store::Store::open(&config.daemon.state_dir)?;
    let tz = &config.daemon.timezone;
    let user_error = |e: ReviewError| -> anyhow::Error {
        match e {
            ReviewError::Store(s) => s.into(),
            other => UserError(other.to_string()).into(),
        }
    };
    let out = &mut std::io::stdout().lock();
    match action {
        AlertsAction::List { all, sort, format } => {
            let order = match sort {
                QueueSort::Age => QueueOrder::Age,
                QueueSort::Severity => QueueOrder::Severity,
            };
            let rows = if all {
                let mut rows = store.alerts_with_status(&[], 100)?;
                report::alerts::sort_rows(&mut rows, order);
                rows
            } else {
                store.review_queue(order, 100)?
            };
            match format {
                OutputFormat::Json => report::write_json(out, &rows)?,
                OutputFormat::Text => report::alerts::write_list(out, &rows, all, tz)?,
            }
        }
        AlertsAction::Show { id, format } => {
            let id = normalise_id(&id);
            let Some(stored) = store.alert(&id)? else {
                return Err(user_error(ReviewError::NotFound(id)));
            };
            let history = report::alerts::History {
                deliveries: store.deliveries_of(&id)?,
                decisions: store.decisions_of(&id)?,
                audit: store.audit_of_alert(&id)?,
                acks: store.acks_of(&id)?,
            };
            match format {
                OutputFormat::Json => {
                    report::write_json(out, &report::alerts::shown_json(&stored, &history))?
                }
                OutputFormat::Text => report::alerts::write_alert(out, &stored, &history, tz)?,
            }
        }
        AlertsAction::Approve {
            id,
            headline,
            advice,
            severity,
            leave_out,
            by,
            format,
        } => {
            let actor = Actor::unix(by.as_deref()).map_err(user_error)?;
            let severity = severity
                .map(|s| earlywarn::config::Severity::choose(&s))
                .transpose()
                .map_err(|message| UserError(format!("--severity: {message}")))?;
            let edits = Edits {
                headline,
                advice,
                severity,
                left_out: leave_out.into_iter().collect(),
            };
            let rules = load_rules(&config)?;
            let decided = decide(
                &config,
                &rules,
                &mut store,
                &id,
                &actor,
                &Authority::Admin,
                Decision::Approve(edits),
                jiff::Timestamp::now(),
            )
            .map_err(user_error)?;
            report::alerts::write_decided(out, &normalise_id(&id), &actor, &decided, format)?;
        }
        AlertsAction::Dismiss {
            id,
            reason,
            by,
            format,
        } => {
            let actor = Actor::unix(by.as_deref()).map_err(user_error)?;
            let rules = load_rules(&config)?;
            let decided = decide(
                &config,
                &rules,
                &mut store,
                &id,
                &actor,
                &Authority::Admin,
                Decision::Dismiss {
                    reason: reason.unwrap_or_default(),
                },
                jiff::Timestamp::now(),
            )
            .map_err(user_error)?;
            report::alerts::write_decided(out, &normalise_id(&id), &actor, &decided, format)?;
        }
        AlertsAction::Update {
            id,
            text,
            by,
            format,
        } => {
            let actor = Actor::unix(by.as_deref()).map_err(user_error)?;
            let notified = earlywarn::lifecycle::update(
                &config,
                &mut store,
                &id,
                &text,
                &actor,
                jiff::Timestamp::now(),
            )
            .map_err(lifecycle_error)?;
            report::alerts::write_notified(out, &notified, format)?;
        }
        AlertsAction::Withdraw {
            id,
            reason,
            by,
            format,
        } => {
            let actor = Actor::unix(by.as_deref()).map_err(user_error)?;
            let notified = earlywarn::lifecycle::withdraw(
                &config,
                &mut store,
                &id,
                &reason,
                &actor,
                jiff::Timestamp::now(),
            )
            .map_err(lifecycle_error)?;
            report::alerts::write_notified(out, &notified, format)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A lifecycle error as the CLI reports it: the person's to fix (exit 1) or ours (exit 2).
fn lifecycle_error(e: earlywarn::lifecycle::LifecycleError) -> anyhow::Error {
    if e.is_user_error() {
        UserError(e.to_string()).into()
    } else {
        e.into()
    }
}

fn outbox(config: Option<PathBuf>, action: OutboxAction) -> anyhow::Result<ExitCode> {
    let config = load_config(config)?;
    let store = earlywarn::store::Store::open(&config.daemon.state_dir)?;
    match action {
        OutboxAction::List {
            failed,
            limit,
            format,
        } => {
            let rows = store.outbox_list(failed, limit)?;
            let out = &mut std::io::stdout().lock();
            match format {
                OutputFormat::Json => report::write_json(out, &rows)?,
                OutputFormat::Text => {
                    report::outbox::write_list(out, &rows, failed, &config.daemon.timezone)?
                }
            }
        }
        OutboxAction::Retry { id, all_failed } => {
            let ids = if all_failed {
                store.failed_outbox_ids()?
            } else {
                // clap requires one of the two.
                let id = id.unwrap_or_default();
                let rows = match id.trim().parse::<i64>() {
                    Ok(n) => store.outbox_row(n)?.into_iter().collect::<Vec<_>>(),
                    Err(_) => store.outbox_rows_of_alert(id.trim())?,
                };
                if rows.is_empty() {
                    return Err(UserError(format!(
                        "no delivery or alert `{}`; `earlywarn outbox list` shows the deliveries and their ids",
                        esc(&id)
                    ))
                    .into());
                }
                let failed: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.status == "failed")
                    .map(|r| r.id)
                    .collect();
                if failed.is_empty() {
                    let statuses: Vec<String> = rows
                        .iter()
                        .map(|r| format!("delivery {} is {}", r.id, r.status))
                        .collect();
                    return Err(UserError(format!(
                        "nothing to requeue for `{}`: only failed deliveries are requeued ({})",
                        esc(&id),
                        statuses.join(", ")
                    ))
                    .into());
                }
                failed
            };
            let by = format!("unix:{}", earlywarn::review::unix_account());
            let requeued = store.requeue_failed(&ids, jiff::Timestamp::now())?;
            if requeued.is_empty() {
                println!("no failed deliveries to requeue");
            }
            for r in &requeued {
                tracing::info!(delivery = r.id, alert = %esc(&r.alert_id), partner = %esc(&r.partner_id),
                    addresses = %esc(&r.owed.join(",")), by = %esc(&by), "Requeued a failed delivery");
                println!(
                    "requeued delivery {} (alert {} to {}) for {}",
                    r.id,
                    esc(&r.alert_id),
                    esc(&r.partner_id),
                    esc(&r.owed.join(", "))
                );
            }
            if !requeued.is_empty() {
                println!(
                    "{} delivery(ies) requeued by {}; a running daemon sends them within seconds",
                    requeued.len(),
                    esc(&by)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn users(config: Option<PathBuf>, action: UsersAction) -> anyhow::Result<ExitCode> {
    use earlywarn::accounts::{self, AccountError, NewAccount, Role};
    let account_error = |e: AccountError| -> anyhow::Error {
        if e.is_user_error() {
            UserError(e.to_string()).into()
        } else {
            e.into()
        }
    };
    let config = load_config(config)?;
    let store = earlywarn::store::Store::open(&config.daemon.state_dir)?;
    // The Unix account of this process's uid; with no display name this cannot fail.
    let actor = earlywarn::audit::Actor::unix(None)?;
    let now = jiff::Timestamp::now();
    let out = &mut std::io::stdout().lock();
    use std::io::Write;
    match action {
        UsersAction::Add {
            name,
            role,
            partner,
            display,
            password_stdin,
        } => {
            // Everything but the password is checked first: nobody types a
            // password twice to hear that the name was wrong.
            let name = accounts::normalise_name(&name).map_err(account_error)?;
            let role = Role::parse(&role).ok_or_else(|| {
                UserError(format!(
                    "unknown role `{}`; the roles are viewer, reviewer, admin",
                    esc(&role)
                ))
            })?;
            if let Some(p) = &partner
                && !config.partners.iter().any(|known| &known.id == p)
            {
                return Err(UserError(earlywarn::config::unknown_partner_message(
                    &esc(p),
                    &config.partners,
                ))
                .into());
            }
            if store.account(&name)?.is_some() {
                return Err(account_error(AccountError::Exists(name)));
            }
            let password = read_password(password_stdin)?;
            let new = NewAccount {
                name,
                display,
                role,
                partner,
                password,
            };
            let added = accounts::add(&store, &new, &actor, now).map_err(account_error)?;
            writeln!(out, "{}", report::users::added(&added))?;
        }
        UsersAction::List { format } => {
            let all = store.accounts()?;
            match format {
                OutputFormat::Json => report::write_json(out, &all)?,
                OutputFormat::Text => {
                    report::users::write_list(out, &all, &config.daemon.timezone, now)?
                }
            }
        }
        UsersAction::Passwd {
            name,
            password_stdin,
        } => {
            let name = accounts::normalise_name(&name).map_err(account_error)?;
            if store.account(&name)?.is_none() {
                return Err(account_error(AccountError::NotFound(name)));
            }
            let password = read_password(password_stdin)?;
            let changed = accounts::set_password(&store, &name, &password, &actor, now)
                .map_err(account_error)?;
            writeln!(
                out,
                "{}; its sessions have ended",
                report::users::changed(&changed, "set a new password for")
            )?;
        }
        UsersAction::Disable { name } => {
            let changed =
                accounts::set_disabled(&store, &name, true, &actor, now).map_err(account_error)?;
            writeln!(
                out,
                "{}; its sessions have ended",
                report::users::changed(&changed, "disabled")
            )?;
        }
        UsersAction::Enable { name } => {
            let changed =
                accounts::set_disabled(&store, &name, false, &actor, now).map_err(account_error)?;
            writeln!(out, "{}", report::users::changed(&changed, "enabled"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new password: the first line of standard input, or typed twice on the
/// terminal without echo. Never logged or printed.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    use earlywarn::accounts::{MAX_PASSWORD_BYTES, check_password};
    let password = if from_stdin {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        // Bounded: a longer line is refused as too long all the same.
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_BYTES as u64 + 2)
            .read_line(&mut line)
            .map_err(|e| UserError(format!("cannot read the password from standard input: {e}")))?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return Err(UserError(
                "no password on standard input (--password-stdin reads its first line)".into(),
            )
            .into());
        }
        line.to_string()
    } else {
        let no_terminal = |e: std::io::Error| {
            UserError(format!(
                "cannot ask for the password on the terminal ({e}); give it on standard input with --password-stdin"
            ))
        };
        let first = rpassword::prompt_password("New password: ").map_err(no_terminal)?;
        check_password(&first).map_err(|e| UserError(e.to_string()))?;
        let again = rpassword::prompt_password("The same again: ").map_err(no_terminal)?;
        if first != again {
            return Err(UserError("the two passwords differ; nothing was changed".into()).into());
        }
        first
    };
    check_password(&password).map_err(|e| UserError(e.to_string()))?;
    Ok(password)
}

fn audit(
    config: Option<PathBuf>,
    since: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    /// The newest this many are shown: more is for `--format json` and a script.
    const MAX_ENTRIES: usize = 100_000;
    let config = load_config(config)?;
    let now = jiff::Timestamp::now();
    let since = match since {
        None => None,
        Some(text) => {
            let d = earlywarn::config::parse_duration(text)
                .map_err(|e| UserError(format!("--since: {e}")))?;
            // A span reaching before the epoch means everything.
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_sub(d).ok())
        }
    };
    let store = earlywarn::store::Store::open(&config.daemon.state_dir)?;
    let entries = store.audit_since(since, MAX_ENTRIES)?;
    let out = &mut std::io::stdout().lock();
    match format {
        OutputFormat::Json => report::write_json(out, &entries)?,
        OutputFormat::Text => report::audit::write_list(out, &entries, &config.daemon.timezone)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn send_test_email(config: Option<PathBuf>, to: &str) -> anyhow::Result<ExitCode> {
    use lettre::message::SinglePart;
    use lettre::message::header::{HeaderName, HeaderValue};
    let config = load_config(config)?;
    let to_mailbox: lettre::message::Mailbox = to
        .parse()
        .map_err(|e| UserError(format!("`{to}` is not an email address: {e}")))?;
    let from: lettre::message::Mailbox = config
        .mail
        .from
        .parse()
        .map_err(|e| UserError(format!("[mail] from: {e}")))?;
    let reply_to = earlywarn::alerts::render::reply_to_mailbox(&config)
        .map_err(|e| UserError(e.to_string()))?;
    let now = jiff::Timestamp::now();
    // The machine's name as lettre would send it in EHLO: which host sent this.
    let host = lettre::transport::smtp::extension::ClientId::default().to_string();
    let sender = earlywarn::review::decider(None).unwrap_or_else(|_| "unknown".into());
    let shown_now = now
        .to_zoned_datetime(config.daemon.timezone.clone())
        .strftime("%a %-d %b %Y %H:%M:%S %Z")
        .to_string();
    let transport = transport_name(&config);
    let subject = format!(
        "{} [TEST] earlywarn test email from {host}",
        config.mail.marking
    );
    let mut body = format!(
        "{marking}\n\n\
         TEST EMAIL: no action is needed. This is not an alert.\n\n\
         It was sent with `earlywarn send-test-email` to check that alerts can reach this address.\n\n\
         Host:       {host}\n\
         earlywarn:  {version}\n\
         Config:     {config_path}\n\
         Transport:  {transport}\n\
         From:       {from}\n",
        marking = config.mail.marking,
        version = env!("CARGO_PKG_VERSION"),
        config_path = config.path.display(),
        from = from,
    );
    if let Some(r) = &reply_to {
        body.push_str(&format!("Reply-To:   {r}\n"));
    }
    body.push_str(&format!(
        "Sent by:    {sender}\nSent at:    {shown_now}\n\n{}\n",
        config.mail.marking
    ));
    // The process id as well as the time: two test emails in one millisecond
    // still get their own Message-ID (and their own .eml file).
    let local = format!("test.{}.{}", now.as_millisecond(), std::process::id());
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .to(to_mailbox.clone())
        .subject(subject)
        .message_id(Some(format!("<{local}@{}>", from.email.domain())))
        .date(std::time::SystemTime::try_from(now).unwrap_or_else(|_| std::time::SystemTime::now()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_string(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Earlywarn-Test"),
            "yes".to_string(),
        ));
    if let Some(r) = reply_to {
        builder = builder.reply_to(r);
    }
    let message = builder
        .singlepart(SinglePart::plain(body))
        .context("cannot build the test email")?;
    let mailer = Mailer::new(&config.mail).map_err(|e| UserError(format!("[mail]: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(mailer.send(
        from.email.as_ref(),
        &[to_mailbox.email.to_string()],
        &message.formatted(),
        &local,
    ));
    match result {
        Ok(delivered) if delivered.accepted.is_empty() => {
            let why: Vec<String> = delivered
                .refused
                .iter()
                .map(|f| f.error.clone())
                .chain(delivered.deferred.iter().map(|(_, e)| e.clone()))
                .collect();
            Err(UserError(format!(
                "could not send the test email to {to}: {}",
                esc(&why.join("; "))
            ))
            .into())
        }
        Ok(_) => {
            println!("sent a test email to {to} via {transport}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(UserError(format!("could not send the test email to {to}: {e}")).into()),
    }
}

fn transport_name(config: &Config) -> String {
    match &config.mail.transport {
        earlywarn::config::Transport::File { dir } => {
            format!("the file transport ({})", dir.display())
        }
        earlywarn::config::Transport::Smtp(s) => format!("{}:{}", s.host, s.port),
    }
}
