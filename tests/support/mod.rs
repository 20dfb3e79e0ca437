//! Shared helpers for earlywarn's integration tests: include with `mod support;`.
//!
//! * [`SmtpServer`]: a real SMTP server (aiosmtpd, `tests/support/smtp_server.py`) on loopback,
//!   with STARTTLS / implicit TLS / AUTH and failure modes, storing what it accepts as JSON.
//! * [`Received`]: one stored message, with mail-parser helpers to read it.
//! * [`Daemon`]: `earlywarn run` as a child process, logging to `daemon.log` beside its config.
//! * [`in_process::InProcess`]: `daemon::run` in the test's own process, driven by its controls.
//! * [`earlywarn`], [`write_atomically`], [`wait_until`]: small things every test needs.
//!
//! Everything panics with a message saying what went wrong instead of returning `Result`s:
//! in a test a clear panic is the most useful outcome.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod in_process;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(20);

/// Exit code of smtp_server.py when `import aiosmtpd` fails.
const EXIT_NO_AIOSMTPD: i32 = 3;

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// `tests/support/certs` in the source tree.
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/certs")
}

/// The test CA that signed the server certificate: the only root a TLS test client should trust.
pub fn ca_pem_path() -> PathBuf {
    certs_dir().join("ca.pem")
}

/// The leaf certificate (`localhost`, `127.0.0.1`) the test server presents.
pub fn server_cert_path() -> PathBuf {
    certs_dir().join("server.pem")
}

pub fn server_key_path() -> PathBuf {
    certs_dir().join("server.key")
}

fn smtp_script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py")
}

/// The Python to run the server with: `$EARLYWARN_TEST_PYTHON`, else `python3` from PATH
/// (the one `scripts/test` installed aiosmtpd into).
fn python() -> String {
    std::env::var("EARLYWARN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

// ---------------------------------------------------------------------------------------------
// SMTP server
// ---------------------------------------------------------------------------------------------

/// How the server speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text only.
    #[default]
    None,
    /// Offers STARTTLS; with `auth`, AUTH is refused until TLS is up.
    Starttls,
    /// TLS from the first byte (SMTPS). Config value `tls = "tls"` in earlywarn.
    Implicit,
}

impl SmtpTls {
    fn arg(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::Starttls => "starttls",
            SmtpTls::Implicit => "implicit",
        }
    }

    /// The value of `[mail] tls` in an earlywarn config (SPEC section 3).
    pub fn config_value(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::Starttls => "starttls",
            SmtpTls::Implicit => "tls",
        }
    }
}

/// How the server treats the mail it is offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpMode {
    /// Store every message.
    #[default]
    Accept,
    /// `550` to every RCPT TO: a permanent failure.
    Reject550,
    /// `451` at the end of DATA: a temporary failure; nothing stored.
    Temp451,
    /// Accept the TCP connection and never send the greeting.
    Tarpit,
    /// Normal until DATA; never answer after the final dot; nothing stored.
    StallAfterData,
}

impl SmtpMode {
    fn arg(self) -> &'static str {
        match self {
            SmtpMode::Accept => "accept",
            SmtpMode::Reject550 => "reject550",
            SmtpMode::Temp451 => "temp451",
            SmtpMode::Tarpit => "tarpit",
            SmtpMode::StallAfterData => "stall-after-data",
        }
    }
}

/// Options for [`SmtpServer::start`]. `SmtpOptions::default()` is a plain, open, accepting
/// server on a free port with its own temporary maildir.
#[derive(Clone, Debug, Default)]
pub struct SmtpOptions {
    pub tls: SmtpTls,
    /// `(user, password)`: AUTH PLAIN/LOGIN required before MAIL.
    pub auth: Option<(String, String)>,
    pub mode: SmtpMode,
    /// A fixed port, e.g. to bring a server back where the daemon expects it. `None`: any free one.
    pub port: Option<u16>,
    /// Where to store messages and logs. `None`: a temporary folder owned by the server.
    pub maildir: Option<PathBuf>,
    /// More `smtp_server.py` flags (e.g. `--idle-timeout 2`).
    pub extra_args: Vec<String>,
}

impl SmtpOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn tls(mut self, tls: SmtpTls) -> Self {
        self.tls = tls;
        self
    }
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    pub fn mode(mut self, mode: SmtpMode) -> Self {
        self.mode = mode;
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    pub fn maildir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.maildir = Some(dir.into());
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// A running `tests/support/smtp_server.py`. Killed on drop.
///
/// Files in [`maildir`](Self::maildir): `NNNNNN.json` per accepted message, `connections.log`
/// (one epoch time per TCP connection), `attempts.log` (one per MAIL FROM) and `server.log`
/// (the server's own log: look there when a test fails).
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    maildir: PathBuf,
    opts: SmtpOptions,
    // Declared last so it is deleted after the child is killed (fields drop in order).
    _tempdir: Option<tempfile::TempDir>,
}

impl SmtpServer {
    /// Start the server and wait (up to 15 s) until it listens.
    pub fn start(opts: SmtpOptions) -> SmtpServer {
        let (maildir, tempdir) = match &opts.maildir {
            Some(dir) => (dir.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("earlywarn-smtp-")
                    .tempdir()
                    .expect("create a temporary maildir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut server = SmtpServer {
            child: None,
            port: 0,
            maildir,
            opts,
            _tempdir: tempdir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        fs::create_dir_all(&self.maildir).expect("create maildir");
        let log_path = self.maildir.join("server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open server.log");

        let port = self.opts.port.unwrap_or(0).to_string();
        let mut cmd = Command::new(python());
        cmd.arg(smtp_script_path())
            .args(["--host", "127.0.0.1", "--port", &port])
            .arg("--maildir")
            .arg(&self.maildir)
            .args(["--tls", self.opts.tls.arg(), "--mode", self.opts.mode.arg()]);
        if self.opts.tls != SmtpTls::None {
            cmd.arg("--cert")
                .arg(server_cert_path())
                .arg("--key")
                .arg(server_key_path());
        }
        if let Some((user, password)) = &self.opts.auth {
            cmd.arg("--auth").arg(format!("{user}:{password}"));
        }
        cmd.args(&self.opts.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));

        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "could not run `{}` for the test SMTP server: {e}. \
                 Python 3 with the aiosmtpd package is needed: run `scripts/test`.",
                python()
            )
        });

        // Read READY on a thread so a wedged interpreter cannot hang the test. The thread then
        // drains stdout until the child exits, so the child can never block on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });

        let first = rx.recv_timeout(Duration::from_secs(15));
        let port = match first {
            Ok(Some(Ok(ref line))) => line
                .strip_prefix("READY ")
                .and_then(|p| p.trim().parse::<u16>().ok()),
            _ => None,
        };
        match port {
            Some(port) => {
                self.port = port;
                self.child = Some(child);
            }
            None => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                if status.and_then(|s| s.code()) == Some(EXIT_NO_AIOSMTPD) {
                    panic!(
                        "the test SMTP server needs the Python package aiosmtpd: \
                         run `scripts/test` (or `pip install aiosmtpd`).\n{log}"
                    );
                }
                panic!(
                    "the test SMTP server did not start (first stdout line: {first:?}, \
                     exit: {status:?}); its log {}:\n{log}",
                    log_path.display()
                );
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    pub fn options(&self) -> &SmtpOptions {
        &self.opts
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every message stored so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        let mut names: Vec<(u32, PathBuf)> = fs::read_dir(&self.maildir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let seq = name.strip_suffix(".json")?;
                        // Only `NNNNNN.json`: the server's temp files start with a dot.
                        if seq.len() != 6 || !seq.bytes().all(|b| b.is_ascii_digit()) {
                            return None;
                        }
                        Some((seq.parse().ok()?, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .map(|(seq, path)| {
                let text = fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let mut r: Received = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
                r.seq = seq;
                r
            })
            .collect()
    }

    /// Wait until at least `n` messages are stored and return all of them. On timeout, panics
    /// listing what did arrive.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} message(s) at the test SMTP server within {timeout:?}, got {}:\n{}\
                     connections: {}, MAIL FROMs: {}; server log: {}",
                    msgs.len(),
                    summarize(&msgs),
                    self.connection_times().len(),
                    self.attempt_times().len(),
                    self.maildir.join("server.log").display(),
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Epoch seconds of every TCP connection accepted, oldest first (survives restarts when the
    /// maildir is kept).
    pub fn connection_times(&self) -> Vec<f64> {
        read_epoch_log(&self.maildir.join("connections.log"))
    }

    /// Epoch seconds of every MAIL FROM: delivery attempts, even over a pooled connection.
    pub fn attempt_times(&self) -> Vec<f64> {
        read_epoch_log(&self.maildir.join("attempts.log"))
    }

    /// `[mail]` keys (SPEC section 3) that point earlywarn at this server, one per line, without
    /// the `[mail]` header and without `from`/`marking`. With auth, writes the password to
    /// `dir/smtp-password` and names it in `password_file`.
    ///
    /// Trusting the test CA for TLS is not covered: the daemon needs its own way to be given
    /// [`ca_pem_path`].
    pub fn mail_config(&self, dir: &Path) -> String {
        let mut s = format!(
            "transport = \"smtp\"\nhost = \"{}\"\nport = {}\ntls = \"{}\"\n",
            self.host(),
            self.port,
            self.opts.tls.config_value()
        );
        if let Some((user, password)) = &self.opts.auth {
            let pw = write_atomically(dir, "smtp-password", password);
            // earlywarn refuses a password file its group or others can read.
            owner_only(&pw);
            s += &format!(
                "username = \"{user}\"\npassword_file = \"{}\"\n",
                pw.display()
            );
        }
        s
    }

    /// SIGTERM, then SIGKILL if it has not gone within 5 s. The port and maildir stay known,
    /// so [`restart`](Self::restart) can bring it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Stop (if running) and start again on the same port and maildir: the daemon sees the
    /// same server come back, and message numbering continues.
    pub fn restart(&mut self) {
        self.restart_with(self.opts.mode);
    }

    /// Like [`restart`](Self::restart), switching to another mode (e.g. `Temp451` then `Accept`).
    pub fn restart_with(&mut self, mode: SmtpMode) {
        self.stop();
        self.opts.port = Some(self.port);
        self.opts.mode = mode;
        self.spawn();
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_epoch_log(path: &Path) -> Vec<f64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn summarize(msgs: &[Received]) -> String {
    msgs.iter()
        .map(|m| {
            format!(
                "  #{} to {:?}: {:?}\n",
                m.seq,
                m.rcpt_tos,
                m.subject().unwrap_or_default()
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Received messages
// ---------------------------------------------------------------------------------------------

/// One message the test server accepted (`NNNNNN.json`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Received {
    /// The file's sequence number (1-based, arrival order).
    #[serde(skip)]
    pub seq: u32,
    /// Envelope sender (MAIL FROM).
    pub mail_from: String,
    /// Envelope recipients (RCPT TO), in order.
    pub rcpt_tos: Vec<String>,
    /// Epoch seconds at the end of DATA.
    pub received_at: f64,
    /// The raw message (headers and body, CRLF line ends) as sent.
    pub data: String,
    /// Whether the session was under TLS (STARTTLS or implicit).
    pub tls: bool,
    /// The AUTH user, if the client authenticated.
    pub auth_user: Option<String>,
}

impl Received {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .unwrap_or_else(|| panic!("message #{} does not parse:\n{}", self.seq, self.data))
    }

    /// A header's value, decoded (RFC 2047 words, address lists as `Name <addr>, ...`, dates as
    /// RFC 3339); the first one if repeated. Name is case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        use mail_parser::HeaderValue;
        let msg = self.parsed();
        let value = msg.header(name)?;
        Some(match value {
            HeaderValue::Text(t) => t.to_string(),
            HeaderValue::TextList(list) => list.join(", "),
            HeaderValue::Address(a) => a
                .iter()
                .map(|addr| match (addr.name(), addr.address()) {
                    (Some(n), Some(a)) => format!("{n} <{a}>"),
                    (None, Some(a)) => a.to_string(),
                    (Some(n), None) => n.to_string(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            HeaderValue::DateTime(d) => d.to_rfc3339(),
            HeaderValue::Empty => String::new(),
            // Content-Type and Received: the raw text, unfolded, is what a test wants to look at.
            _ => unfold(msg.header_raw(name).unwrap_or_default()),
        })
    }

    /// A header's value exactly as on the wire (still folded and encoded), e.g. to check that
    /// untrusted data could not inject a header.
    pub fn header_raw(&self, name: &str) -> Option<String> {
        self.parsed().header_raw(name).map(|s| s.to_string())
    }

    /// All header names in order, as written.
    pub fn header_names(&self) -> Vec<String> {
        self.parsed()
            .headers()
            .iter()
            .map(|h| h.name().to_string())
            .collect()
    }

    pub fn subject(&self) -> Option<String> {
        self.parsed().subject().map(str::to_string)
    }

    /// The `From` address (address only).
    pub fn from(&self) -> Option<String> {
        let msg = self.parsed();
        let from = msg.from()?;
        from.first()?.address().map(str::to_string)
    }

    /// `Message-ID` without angle brackets.
    pub fn message_id(&self) -> Option<String> {
        self.parsed().message_id().map(str::to_string)
    }

    /// The first text/plain body, decoded. `None` if there is none (an HTML-only message is
    /// not converted: tests should see what was really sent).
    pub fn text_body(&self) -> Option<String> {
        let msg = self.parsed();
        msg.text_bodies()
            .find(|p| p.is_text() && !p.is_text_html())
            .and_then(|p| p.text_contents())
            .map(str::to_string)
    }

    /// The first text/html body, decoded.
    pub fn html_body(&self) -> Option<String> {
        let msg = self.parsed();
        msg.html_bodies()
            .find(|p| p.is_text_html())
            .and_then(|p| p.text_contents())
            .map(str::to_string)
    }

    /// Addresses in the `To` header (addresses only, in order). Compare [`Self::rcpt_tos`] for
    /// the envelope.
    pub fn to(&self) -> Vec<String> {
        let msg = self.parsed();
        msg.to()
            .map(|a| {
                a.iter()
                    .filter_map(|addr| addr.address().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn unfold(raw: &str) -> String {
    raw.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// `earlywarn run --config PATH` as a child process. Killed on drop.
///
/// stdout and stderr are appended to `daemon.log` in the config's folder, so a restarted daemon
/// (same config) continues the same log, and a failing test leaves it behind to read.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
    config: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    pub fn start(config_path: &Path) -> Daemon {
        Daemon::start_with(config_path, &[], &[])
    }

    /// With extra arguments after `run --config PATH` (e.g. `--log-format json`) and extra
    /// environment (e.g. `NOTIFY_SOCKET`).
    pub fn start_with(config_path: &Path, extra_args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(config_path, extra_args, envs, None)
    }

    /// As another Unix user (uid, gid; no supplementary groups): needs root.
    #[allow(dead_code)]
    pub fn start_as(config_path: &Path, uid: u32, gid: u32) -> Daemon {
        Daemon::spawn(config_path, &[], &[], Some((uid, gid)))
    }

    fn spawn(
        config_path: &Path,
        extra_args: &[&str],
        envs: &[(&str, &str)],
        user: Option<(u32, u32)>,
    ) -> Daemon {
        let dir = config_path
            .parent()
            .expect("the config path has a folder")
            .to_path_buf();
        let log_path = dir.join("daemon.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open daemon.log");
        let log2 = log.try_clone().expect("clone daemon.log handle");

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_earlywarn"));
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .args(extra_args)
            // The cwd is left alone on purpose: relative paths in the config must resolve
            // against the config's folder (SPEC section 2), and a daemon started elsewhere
            // shows whether they do.
            .env("RUST_LOG", "earlywarn=debug")
            // Never inherit a systemd socket from whoever runs the tests.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("EARLYWARN_CONFIG")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            // Run by root, std also drops the supplementary groups.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_earlywarn")));
        Daemon {
            child,
            log_path,
            config: config_path.to_path_buf(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything written to `daemon.log` so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait until `daemon.log` contains `needle`; returns the log. Panics with the log on timeout
    /// or if the daemon exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if let Some(status) = self.try_status() {
                panic!("earlywarn exited ({status}) before logging {needle:?}; log:\n{log}");
            }
            if Instant::now() >= deadline {
                panic!("earlywarn did not log {needle:?} within {timeout:?}; log:\n{log}");
            }
            thread::sleep(POLL);
        }
    }

    fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            // ESRCH (already gone) is fine: wait_exit reports how it ended.
            let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
        }
    }

    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    pub fn sighup(&self) {
        self.signal(Signal::SIGHUP);
    }

    pub fn sigint(&self) {
        self.signal(Signal::SIGINT);
    }

    pub fn sigkill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The exit status once it has exited, or `None` if still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, timeout);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll a child until it exits or `timeout` passes.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot commands and small helpers
// ---------------------------------------------------------------------------------------------

/// Run `earlywarn ARGS...` to completion (at most 120 s, then it is killed and the test panics).
/// `EARLYWARN_CONFIG` and `RUST_LOG` are cleared so stderr holds only what a user would see.
pub fn earlywarn(args: &[&str]) -> Output {
    earlywarn_with_env(args, &[])
}

/// [`earlywarn`] with extra environment variables (e.g. `EARLYWARN_CONFIG`).
pub fn earlywarn_with_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_earlywarn"))
        .args(args)
        .env_remove("EARLYWARN_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", env!("CARGO_BIN_EXE_earlywarn")));

    // Drain both pipes on threads: a command that fills one pipe while we wait on the other
    // would otherwise deadlock.
    fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    }
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));

    let timeout = Duration::from_secs(120);
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "`earlywarn {}` did not finish within {timeout:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&stderr)
            );
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Write `dir/name` the way a well-behaved producer does (SPEC section 4): write `.name.tmp`,
/// then rename, so a watcher never sees a partial file. Returns the final path.
pub fn write_atomically(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    {
        use std::io::Write;
        let mut f = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        f.write_all(contents.as_ref())
            .and_then(|_| f.sync_all())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    }
    fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
    dest
}

/// Poll `cond` every 20 ms until it is true (returns `true`) or `timeout` passes (returns
/// `false`). Use as `assert!(wait_until(..), "what did not happen")`.
#[must_use]
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_until(timeout, POLL, cond)
}

/// Like [`wait_until`], polling every `every` (for conditions that are costly to check).
#[must_use]
pub fn poll_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Makes `path` readable and writable by its owner only (mode 0600), as a
/// secret must be: earlywarn refuses an SMTP password file others can read.
pub fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
}

/// Waits (up to 20 s) until the outbox of the daemon on `config` has nothing pending: every row
/// sent or failed for good. A sent row is never sent again, so what the mail server (or mail
/// folder) holds then is all there will be: the positive sign that replaces "wait a while, then
/// count". Panics with the status if it does not drain.
pub fn wait_outbox_drained(config: &Path) {
    let pending = || -> Option<i64> {
        let out = earlywarn(&["status", "--config", config.to_str()?, "--format", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["outbox_pending"].as_i64()
    };
    let drained = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
        pending() == Some(0)
    });
    assert!(drained, "the outbox did not drain: {:?} pending", pending());
}
