//! End to end: earlywarn as a service (SPEC §8) with the real binary — readiness and the
//! watchdog on `NOTIFY_SOCKET`, reloads (SIGHUP and a changed rule file), SIGTERM in the middle
//! of a stream of files, the Prometheus endpoint, self-alerts to ops, and JSON logs.
//!
//! `NOTIFY_SOCKET` is a `UnixDatagram` bound in the test's tempdir; a thread records every
//! datagram the daemon sends (see [`NotifySocket`]).
//!
//! Run with `cargo test --test e2e_service`.

mod e2e_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use e2e_support::*;
use support::{Daemon, Received, SmtpOptions, SmtpServer, wait_until, write_atomically};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Something that runs the moment a datagram arrives, so a test can see the world as it was
/// when the daemon spoke (e.g. what is in `processed/` when READY=1 comes).
type Probe = Box<dyn Fn() -> String + Send>;

/// One datagram received on the notify socket.
#[derive(Clone, Debug)]
struct Note {
    at: Instant,
    text: String,
    /// What the probe returned when the datagram arrived (empty without a probe).
    probe: String,
}

impl Note {
    /// The `KEY=VALUE` assignments of the datagram (one per line).
    fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|l| l == assignment)
    }
    fn value(&self, key: &str) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }
}

/// A stand-in for systemd's notify socket: binds `dir/notify.sock` and records every datagram.
struct NotifySocket {
    path: PathBuf,
    notes: Arc<Mutex<Vec<Note>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        NotifySocket::bind_with_probe(dir, Box::new(String::new))
    }

    fn bind_with_probe(dir: &Path, probe: Probe) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let notes = notes.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(n) => {
                            let at = Instant::now();
                            let probe = probe();
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            notes.lock().unwrap().push(Note { at, text, probe });
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => panic!("notify socket: {e}"),
                    }
                }
            })
        };
        NotifySocket {
            path,
            notes,
            stop,
            thread: Some(thread),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.notes.lock().unwrap().len()
    }

    /// Waits for a datagram (at index `from` or later) holding `assignment`, e.g. `READY=1`;
    /// returns its index and the datagram.
    fn wait_for(&self, assignment: &str, from: usize, timeout: Duration) -> Option<(usize, Note)> {
        let mut found = None;
        let _ = wait_until(timeout, || {
            found = self
                .notes()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, n)| n.has(assignment));
            found.is_some()
        });
        found
    }

    fn dump(&self) -> String {
        self.notes()
            .iter()
            .map(|n| format!("  {:?}\n", n.text))
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `cfg` under `dir`, then adds `daemon_extra` lines to `[daemon]` and appends `tail`
/// (e.g. a `[metrics]` table) to the config file.
fn write_config(dir: &Path, cfg: &Cfg, daemon_extra: &str, tail: &str) -> PathBuf {
    let path = cfg.write(dir);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("[daemon]\n"), "{text}");
    let text = text.replacen("[daemon]\n", &format!("[daemon]\n{daemon_extra}"), 1) + tail;
    fs::write(&path, text).unwrap();
    path
}

fn mail_dir(dir: &Path) -> PathBuf {
    dir.join("mail")
}

fn processed_dir(dir: &Path) -> PathBuf {
    feed_dir(dir).join("processed")
}

fn processed_count(dir: &Path) -> usize {
    names_in(&processed_dir(dir)).len()
}

/// Regular file names waiting in the feed folder (not `processed/`, `rejected/` or dot-files).
fn waiting_files(dir: &Path) -> Vec<String> {
    names_in(&feed_dir(dir))
        .into_iter()
        .filter(|n| !n.starts_with('.') && feed_dir(dir).join(n).is_file())
        .collect()
}

/// A nitazene rule plus a xylazine rule (both `match`, no cooldown), for a good reload.
fn xylazine_rule(notify: &str) -> String {
    format!(
        r#"[[rule]]
id = "xylazine-detected"
name = "Xylazine detected in a tested sample"
feed = "drug_testing"
when = 'substances_major in ["xylazine"] or substances_minor in ["xylazine"]'
severity = "warning"
notify = ["{notify}"]
group_by = ["district"]
"#
    )
}

/// A rule file whose `when` names an unknown list, and where (1-based line and column of the
/// list name) the error must point.
fn broken_rule() -> (String, usize, usize) {
    let text = r#"# A new rule with a typo in the list name.
[[rule]]
id = "xylazine-detected"
name = "Xylazine detected in a tested sample"
feed = "drug_testing"
when = 'substances_major in xylazines'
severity = "warning"
notify = ["panel"]
"#
    .to_string();
    let (line0, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("when"))
        .unwrap();
    let col = l[..l.find("xylazines").unwrap()].chars().count() + 1;
    (text, line0 + 1, col)
}

/// The `X-Earlywarn-Rule` of each message.
/// `earlywarn status` as a person reads it.
fn status_text(config: &Path) -> String {
    let out = support::earlywarn(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn rules_of(msgs: &[Received]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.header("X-Earlywarn-Rule").unwrap_or_default())
        .collect()
}

/// `file:line:col` places in `text` for a file named `file_name`, as `(line, col)`.
fn places(text: &str, file_name: &str) -> Vec<(usize, usize)> {
    let re = regex::Regex::new(&format!(r"{}:(\d+):(\d+)", regex::escape(file_name))).unwrap();
    re.captures_iter(text)
        .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap()))
        .collect()
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.1 on a raw socket; the status code and the body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: e2e\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the response to GET {path}: {e}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_string())
}

/// The value of one series (`name{labels}` exactly as exposed) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "GET /metrics:\n{body}");
    body
}

// ---------------------------------------------------------------------------------------------
// 1. READY=1 only after the first rescan
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_is_sent_only_after_the_first_rescan_has_ingested_waiting_files() {
    let dir = tempdir();
    let config = Cfg {
        // Long intervals: only the start-up rescan can pick the files up quickly.
        settle: "1s".into(),
        rescan_interval: "60s".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    // Files that arrived while the daemon was down (last modified ten minutes ago, so no
    // settle interval applies to them)...
    let names: Vec<String> = (1..=3).map(|i| format!("waiting-{i}.csv")).collect();
    for (i, name) in names.iter().enumerate() {
        let path = write_atomically(
            &feed_dir(dir.path()),
            name,
            csv(&[row(
                &format!("WAIT-{i}"),
                "Bolton",
                "isotonitazene",
                "",
                "was waiting",
            )]),
        );
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(600))
            .unwrap();
    }
    // ...and one written just now, which may still be in the making: it may wait for its
    // settle interval, but it must not be forgotten.
    write_atomically(
        &feed_dir(dir.path()),
        "fresh.csv",
        csv(&[row("WAIT-3", "Bury", "metonitazene", "", "just now")]),
    );

    // Record what processed/ holds the moment each datagram arrives.
    let processed = processed_dir(dir.path());
    let notify =
        NotifySocket::bind_with_probe(dir.path(), Box::new(move || names_in(&processed).join(",")));
    let mut daemon = Daemon::start_with(&config, &[], &[("NOTIFY_SOCKET", notify.path())]);

    let (_, ready) = notify
        .wait_for("READY=1", 0, Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no READY=1 on NOTIFY_SOCKET; datagrams:\n{}log:\n{}",
                notify.dump(),
                log(&daemon)
            )
        });
    let at_ready: BTreeSet<&str> = ready.probe.split(',').filter(|s| !s.is_empty()).collect();
    for name in &names {
        assert!(
            at_ready.contains(name.as_str()),
            "{name} was not in processed/ when READY=1 arrived (processed/ held {at_ready:?}); log:\n{}",
            log(&daemon)
        );
    }
    if let Some(status) = ready.value("STATUS") {
        assert!(!status.trim().is_empty(), "empty STATUS= with READY=1");
    }
    // No READY=1 before that datagram, and nothing but READY-ish states before it.
    let notes = notify.notes();
    let first_ready = notes.iter().position(|n| n.has("READY=1")).unwrap();
    assert!(
        !notes[..first_ready]
            .iter()
            .any(|n| n.has("STOPPING=1") || n.has("RELOADING=1")),
        "{}",
        notify.dump()
    );

    // The log agrees: every file was processed (with its alert) before "Ready".
    wait_log(&mut daemon, &["Ready"], WAIT);
    let full = log(&daemon);
    let lines: Vec<&str> = full.lines().collect();
    let ready_at = lines
        .iter()
        .position(|l| l.trim_end().ends_with(" Ready"))
        .unwrap_or_else(|| panic!("no Ready line:\n{full}"));
    for name in &names {
        let pos = lines
            .iter()
            .position(|l| l.contains("File processed") && l.contains(name.as_str()))
            .unwrap_or_else(|| panic!("no File processed line for {name}:\n{full}"));
        assert!(
            pos < ready_at,
            "{name} was processed after Ready was logged:\n{full}"
        );
    }
    // The fresh file is processed too, once settled.
    wait_log(&mut daemon, &["File processed", "fresh.csv"], WAIT);
    let processed_lines = log_lines(&daemon, &["File processed"]);
    assert_eq!(processed_lines.len(), 4, "{}", log(&daemon));
    for l in &processed_lines {
        assert_eq!(field(l, "alerts").as_deref(), Some("1"), "{l}");
    }

    // Their alerts were committed with them: the emails go out.
    let mails = wait_eml(&mail_dir(dir.path()), 4, WAIT);
    let bodies: String = mails.iter().filter_map(|m| m.text_body()).collect();
    for i in 0..4 {
        assert!(bodies.contains(&format!("WAIT-{i}")), "WAIT-{i} emailed");
    }
    assert!(waiting_files(dir.path()).is_empty());
    stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// 2. The watchdog
// ---------------------------------------------------------------------------------------------

#[test]
fn watchdog_pings_keep_coming_at_a_third_of_watchdog_usec() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let notify = NotifySocket::bind(dir.path());
    // No WATCHDOG_PID: the pid is not known before spawn, and sd_notify then accepts
    // WATCHDOG_USEC for this process (as systemd's sd_watchdog_enabled does).
    let daemon = Daemon::start_with(
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "1500000"),
        ],
    );
    let (ready_idx, ready) = notify
        .wait_for("READY=1", 0, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no READY=1; datagrams:\n{}", notify.dump()));

    // 1.5 s watchdog: a ping at least every 0.75 s (systemd advises half), so ≥ 3 in 3 s.
    thread::sleep(Duration::from_secs(3));
    let notes = notify.notes();
    let pings: Vec<&Note> = notes[ready_idx..]
        .iter()
        .filter(|n| n.has("WATCHDOG=1") && n.at <= ready.at + Duration::from_secs(3))
        .collect();
    assert!(
        pings.len() >= 3,
        "{} WATCHDOG=1 in the 3 s after READY=1 with WATCHDOG_USEC=1500000; datagrams:\n{}",
        pings.len(),
        notify.dump()
    );
    // No gap longer than the watchdog interval itself between pings.
    let mut times: Vec<Instant> = notes
        .iter()
        .filter(|n| n.has("WATCHDOG=1"))
        .map(|n| n.at)
        .collect();
    times.insert(0, ready.at);
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] < Duration::from_millis(1500),
            "a {:?} gap between watchdog pings (WATCHDOG_USEC=1500000)",
            w[1] - w[0]
        );
    }
    let last = *times.last().unwrap();
    assert!(
        last.elapsed() < Duration::from_millis(1500),
        "the pings stopped"
    );
    assert!(!notes.iter().any(|n| n.has("STOPPING=1")));
    stop_daemon(daemon);
    assert!(
        notify
            .wait_for("STOPPING=1", 0, Duration::from_secs(2))
            .is_some(),
        "STOPPING=1 at shutdown; datagrams:\n{}",
        notify.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Reloads
// ---------------------------------------------------------------------------------------------

/// A file of `rows` samples that no rule matches: every row is an event the
/// daemon has to read, check for duplicates and show to the rules.
fn big_quiet_file(tag: &str, rows: usize) -> String {
    let mut text = String::with_capacity(rows * 120 + HEADER.len() + 1);
    text.push_str(HEADER);
    text.push('\n');
    for i in 0..rows {
        text.push_str(&row(
            &format!("{tag}-{i:07}"),
            "Bolton",
            "caffeine",
            "",
            "routine",
        ));
        text.push('\n');
    }
    text
}

#[test]
fn a_big_file_neither_starves_the_watchdog_nor_holds_up_sigterm() {
    // About a second of work for a debug build on a fast machine.
    const ROWS: usize = 60_000;
    // The file SIGTERM interrupts: several times longer than shutdown_timeout
    // on a fast machine, so it is still being read when half of it is gone.
    const ROWS_INTERRUPTED: usize = 4 * ROWS;
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let text = fs::read_to_string(&config).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("shutdown_timeout") {
                "shutdown_timeout = \"2s\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("shutdown_timeout = \"2s\""), "{text}");
    fs::write(&config, text).unwrap();
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::start_with(
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    notify
        .wait_for("READY=1", 0, Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no READY=1; datagrams:\n{}\nlog:\n{}",
                notify.dump(),
                log(&daemon)
            )
        });

    // 1. A big file is read while the watchdog keeps being fed.
    let dropped = Instant::now();
    write_atomically(
        &feed_dir(dir.path()),
        "big-1.csv",
        big_quiet_file("A", ROWS),
    );
    assert!(
        wait_until(Duration::from_secs(180), || processed_count(dir.path())
            == 1),
        "big-1.csv not processed within 180 s; log:\n{}",
        log(&daemon)
    );
    let took = dropped.elapsed();
    let mut pings: Vec<Instant> = notify
        .notes()
        .iter()
        .filter(|n| n.has("WATCHDOG=1") && n.at >= dropped)
        .map(|n| n.at)
        .collect();
    pings.insert(0, dropped);
    pings.push(Instant::now());
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_millis(1000),
        "a {longest:?} gap between watchdog pings while a {ROWS}-row file took {took:?} (WATCHDOG_USEC=1000000)"
    );

    // 2. SIGTERM in the middle of another one: honoured within shutdown_timeout,
    //    and the file stays where it was, to be read whole at the next start.
    write_atomically(
        &feed_dir(dir.path()),
        "big-2.csv",
        big_quiet_file("B", ROWS_INTERRUPTED),
    );
    // Renamed in: the watcher picks it up at once, and it takes seconds to read.
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(10));
    let stopped_in = signalled.elapsed();
    assert!(
        matches!(status, Some(s) if s.success()),
        "exit after SIGTERM: {status:?}; log:\n{}",
        log(&daemon)
    );
    assert!(
        stopped_in < Duration::from_millis(2000 + 1500),
        "SIGTERM took {stopped_in:?} with shutdown_timeout = 2s; log:\n{}",
        log(&daemon)
    );
    let first_log = log(&daemon);
    assert!(
        first_log.contains(&format!(
            "file=big-1.csv rows={ROWS} events={ROWS} duplicates=0"
        )),
        "{first_log}"
    );
    assert!(
        first_log.contains("Stopped reading the file at shutdown")
            && first_log.contains("big-2.csv"),
        "big-2.csv was abandoned at shutdown, not finished; log:\n{first_log}"
    );
    assert_eq!(
        waiting_files(dir.path()),
        ["big-2.csv"],
        "an abandoned file stays in the feed folder"
    );
    assert_eq!(processed_count(dir.path()), 1);
    drop(daemon);

    let daemon = start_daemon(&config);
    assert!(
        wait_until(Duration::from_secs(180), || processed_count(dir.path())
            == 2),
        "big-2.csv not processed after the restart; log:\n{}",
        log(&daemon)
    );
    let whole =
        format!("file=big-2.csv rows={ROWS_INTERRUPTED} events={ROWS_INTERRUPTED} duplicates=0");
    assert_eq!(
        log_lines(&daemon, &["File processed", &whole]).len(),
        1,
        "big-2.csv read whole, once, after the restart; log:\n{}",
        log(&daemon)
    );
    stop_daemon(daemon);
}

#[test]
fn sighup_refuses_a_broken_rule_set_whole_then_applies_a_good_one() {
    let dir = tempdir();
    // Rules also from `late/`, a folder that does not exist at start (so it is not watched):
    // only SIGHUP can make the daemon look at what appears there.
    let path = Cfg::default().write(dir.path());
    let text = fs::read_to_string(&path).unwrap().replacen(
        "rules = [\"rules/*.toml\"]",
        "rules = [\"rules/*.toml\", \"late/*.toml\"]",
        1,
    );
    assert!(text.contains("late/*.toml"));
    fs::write(&path, text).unwrap();
    let config = path;
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::start_with(&config, &[], &[("NOTIFY_SOCKET", notify.path())]);
    notify
        .wait_for("READY=1", 0, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", log(&daemon)));
    wait_log(&mut daemon, &["Ready"], WAIT);
    let mail = mail_dir(dir.path());

    write_atomically(
        &feed_dir(dir.path()),
        "a.csv",
        csv(&[row("A-1", "Bolton", "isotonitazene", "", "")]),
    );
    wait_eml(&mail, 1, WAIT);

    // A broken rule file, then SIGHUP: refused whole, with the place of the mistake.
    let late = dir.path().join("late");
    fs::create_dir_all(&late).unwrap();
    let (broken, line, col) = broken_rule();
    write_atomically(&late, "extra.toml", &broken);
    let before = notify.len();
    daemon.sighup();
    let error = wait_log(&mut daemon, &["ERROR", "extra.toml:"], WAIT);
    assert!(
        places(&error, "late/extra.toml").contains(&(line, col)),
        "the ERROR should point at late/extra.toml:{line}:{col} (the unknown list):\n{error}"
    );
    assert!(error.contains("xylazines"), "{error}");
    assert!(
        log_lines(&daemon, &["Rules reloaded"]).is_empty(),
        "{}",
        log(&daemon)
    );
    let (reloading_idx, _) = notify
        .wait_for("RELOADING=1", before, WAIT)
        .unwrap_or_else(|| panic!("no RELOADING=1 after SIGHUP; datagrams:\n{}", notify.dump()));
    assert!(
        notify
            .wait_for("READY=1", reloading_idx + 1, WAIT)
            .is_some(),
        "no READY=1 after RELOADING=1; datagrams:\n{}",
        notify.dump()
    );

    let status = status_json(&config);
    let err = status["rules"]["last_reload_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no rules.last_reload_error in status: {status:#}"));
    assert!(
        places(err, "late/extra.toml").contains(&(line, col)),
        "rules.last_reload_error should name late/extra.toml:{line}:{col}: {err}"
    );
    assert_eq!(status["rules"]["loaded"], 1, "{status:#}");
    // And in words: the rules in force, and the refusal with its place.
    let text = status_text(&config);
    assert!(
        text.starts_with("Rules\n  1 rule(s) in force; last reload "),
        "{text}"
    );
    assert!(
        text.contains("(the previous rules stay in force):\n    ")
            && places(&text, "late/extra.toml").contains(&(line, col)),
        "{text}"
    );
    // Named, not only counted: the old rule, not the refused one.
    assert!(
        text.contains("\n    nitazene-detected ") && !text.contains("xylazine-detected"),
        "{text}"
    );

    // The old rules still work; the refused rule does not.
    write_atomically(
        &feed_dir(dir.path()),
        "b.csv",
        csv(&[
            row("B-1", "Salford", "protonitazene", "", ""),
            row("B-2", "Wigan", "xylazine", "", ""),
        ]),
    );
    let line_b = wait_log(&mut daemon, &["File processed", "b.csv"], WAIT);
    assert_eq!(field(&line_b, "alerts").as_deref(), Some("1"), "{line_b}");
    let msgs = wait_eml(&mail, 2, WAIT);
    assert_eq!(
        rules_of(&msgs),
        ["nitazene-detected", "nitazene-detected"],
        "the old rule still alerts after a refused reload"
    );

    // A good change, then SIGHUP: it takes effect.
    write_atomically(&late, "extra.toml", xylazine_rule("panel"));
    let before = notify.len();
    daemon.sighup();
    let reloaded = wait_log(&mut daemon, &["Rules reloaded", "SIGHUP"], WAIT);
    assert_eq!(
        field(&reloaded, "rules").as_deref(),
        Some("2"),
        "{reloaded}"
    );
    let (reloading_idx, _) = notify
        .wait_for("RELOADING=1", before, WAIT)
        .unwrap_or_else(|| panic!("no RELOADING=1; datagrams:\n{}", notify.dump()));
    assert!(
        notify
            .wait_for("READY=1", reloading_idx + 1, WAIT)
            .is_some(),
        "no READY=1 after the good reload; datagrams:\n{}",
        notify.dump()
    );
    let status = status_json(&config);
    assert!(
        status["rules"]["last_reload_error"].is_null(),
        "a good reload clears the error: {status:#}"
    );
    assert_eq!(status["rules"]["loaded"], 2, "{status:#}");
    let text = status_text(&config);
    assert!(
        text.starts_with("Rules\n  2 rule(s) in force; last reload "),
        "{text}"
    );
    assert!(
        text.contains("(fixed since: the rules above are in force):"),
        "the refusal is still shown, as fixed: {text}"
    );
    for rule in ["nitazene-detected", "xylazine-detected"] {
        assert!(text.contains(&format!("\n    {rule} ")), "{rule}: {text}");
    }
    let mut in_force: Vec<&str> = status["rules"]["in_force"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules.in_force: {status:#}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default())
        .collect();
    // In load order, which follows the files' paths, not the patterns' order.
    in_force.sort_unstable();
    assert_eq!(
        in_force,
        ["nitazene-detected", "xylazine-detected"],
        "{status:#}"
    );

    write_atomically(
        &feed_dir(dir.path()),
        "c.csv",
        csv(&[row("C-1", "Wigan", "xylazine", "", "")]),
    );
    let msgs = wait_eml(&mail, 3, WAIT);
    let rules = rules_of(&msgs);
    assert_eq!(
        rules.iter().filter(|r| *r == "xylazine-detected").count(),
        1,
        "{rules:?}"
    );
    assert!(msgs.iter().any(|m| {
        m.header("X-Earlywarn-Rule").as_deref() == Some("xylazine-detected")
            && m.text_body().unwrap_or_default().contains("C-1")
    }));
    stop_daemon(daemon);
}

#[test]
fn editing_a_rule_file_reloads_by_itself_and_a_broken_edit_is_refused() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = start_daemon(&config);
    let mail = mail_dir(dir.path());
    let rule_file = dir.path().join("rules/rules.toml");

    // Edit in place (as an editor without atomic save does): add a xylazine rule.
    let good = format!("{}\n{}", nitazene_rule(&["panel"]), xylazine_rule("panel"));
    fs::write(&rule_file, &good).unwrap();
    let reloaded = wait_log(&mut daemon, &["Rules reloaded"], WAIT);
    assert!(
        reloaded.contains("a rule file changed"),
        "the reason should be the changed file: {reloaded}"
    );
    assert_eq!(
        field(&reloaded, "rules").as_deref(),
        Some("2"),
        "{reloaded}"
    );
    write_atomically(
        &feed_dir(dir.path()),
        "x.csv",
        csv(&[row("X-1", "Bury", "xylazine", "", "")]),
    );
    let msgs = wait_eml(&mail, 1, WAIT);
    assert_eq!(rules_of(&msgs), ["xylazine-detected"]);

    // A broken edit, saved atomically (temp file + rename): refused, the previous set stays.
    let (broken, line, col) = broken_rule();
    let broken = format!("{}\n{}", nitazene_rule(&["panel"]), broken);
    let offset = nitazene_rule(&["panel"]).lines().count() + 1;
    let tmp = dir.path().join("rules/.rules.toml.swp");
    fs::write(&tmp, &broken).unwrap();
    fs::rename(&tmp, &rule_file).unwrap();
    let error = wait_log(&mut daemon, &["ERROR", "rules.toml:"], WAIT);
    assert!(
        places(&error, "rules/rules.toml").contains(&(line + offset, col)),
        "the ERROR should point at rules/rules.toml:{}:{col}:\n{error}",
        line + offset
    );
    write_atomically(
        &feed_dir(dir.path()),
        "y.csv",
        csv(&[
            row("Y-1", "Bury", "xylazine", "", ""),
            row("Y-2", "Oldham", "metonitazene", "", ""),
        ]),
    );
    let line_y = wait_log(&mut daemon, &["File processed", "y.csv"], WAIT);
    assert_eq!(field(&line_y, "alerts").as_deref(), Some("2"), "{line_y}");
    let msgs = wait_eml(&mail, 3, WAIT);
    let mut rules = rules_of(&msgs);
    rules.sort();
    assert_eq!(
        rules,
        [
            "nitazene-detected",
            "xylazine-detected",
            "xylazine-detected"
        ],
        "both rules of the set in force still alert"
    );
    assert_eq!(log_lines(&daemon, &["Rules reloaded"]).len(), 1);
    stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// 4. SIGTERM in the middle of a stream of files
// ---------------------------------------------------------------------------------------------

const DISTRICTS: [&str; 10] = [
    "Bolton",
    "Bury",
    "Manchester",
    "Oldham",
    "Rochdale",
    "Salford",
    "Stockport",
    "Tameside",
    "Trafford",
    "Wigan",
];

/// The name of the `i`th file of a stream.
fn stream_name(i: usize) -> String {
    format!("stream-{i:04}.csv")
}

/// Drops the `i`th file of a stream: one nitazene row (sample `TERM-NNNN`, one alert) and one
/// row that matches nothing.
fn drop_stream_file(feed: &Path, i: usize) {
    write_atomically(
        feed,
        &stream_name(i),
        csv(&[
            row(
                &format!("TERM-{i:04}"),
                DISTRICTS[i % DISTRICTS.len()],
                "isotonitazene",
                "",
                "stream",
            ),
            row(&format!("PLAIN-{i:04}"), "Bolton", "cocaine", "", ""),
        ]),
    );
}

/// Sample ids (`TERM-NNNN`) named in a message's text body.
fn term_ids(m: &Received) -> BTreeSet<String> {
    let re = regex::Regex::new(r"TERM-\d{4}").unwrap();
    let body = m.text_body().unwrap_or_default();
    re.find_iter(&body)
        .map(|x| x.as_str().to_string())
        .collect()
}

/// After a SIGTERM: each of the `n` stream files is either in `processed/` or still waiting in
/// the feed folder (never both, never lost, never rejected, no temporary leftovers), and the
/// daemon's log says "File processed" once for each file in `processed/`. Returns
/// (processed, waiting).
fn check_nothing_half_done(
    dir: &Path,
    n: usize,
    d: &Daemon,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let feed = feed_dir(dir);
    let processed: BTreeSet<String> = names_in(&processed_dir(dir)).into_iter().collect();
    let waiting: BTreeSet<String> = waiting_files(dir).into_iter().collect();
    for i in 0..n {
        let name = stream_name(i);
        assert!(
            processed.contains(&name) ^ waiting.contains(&name),
            "{name}: in processed/ {}, waiting {}",
            processed.contains(&name),
            waiting.contains(&name)
        );
    }
    assert_eq!(
        processed.len() + waiting.len(),
        n,
        "{processed:?} {waiting:?}"
    );
    assert!(names_in(&feed.join("rejected")).is_empty());
    let leftovers: Vec<String> = names_in(&feed)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // What moved to processed/ is what the log says was processed, each with its alert.
    let lines = log_lines(d, &["File processed"]);
    let logged: BTreeSet<String> = lines.iter().filter_map(|l| field(l, "file")).collect();
    assert_eq!(logged, processed, "{}", log(d));
    assert_eq!(lines.len(), processed.len(), "{}", log(d));
    for l in &lines {
        assert_eq!(field(l, "alerts").as_deref(), Some("1"), "{l}");
    }
    (processed, waiting)
}

/// Every one of the `n` stream samples was emailed exactly once, as its own alert.
fn check_each_emailed_once(msgs: &[Received], n: usize) {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for m in msgs {
        let ids = term_ids(m);
        assert_eq!(ids.len(), 1, "one sample per alert email: {ids:?}");
        for id in ids {
            *by_id.entry(id).or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    let mut twice = Vec::new();
    for i in 0..n {
        match by_id.get(&format!("TERM-{i:04}")).copied().unwrap_or(0) {
            0 => missing.push(i),
            1 => {}
            _ => twice.push(i),
        }
    }
    assert!(
        missing.is_empty() && twice.is_empty(),
        "alerts never emailed for files {missing:?}; emailed more than once for {twice:?} \
         ({} emails)",
        msgs.len()
    );
    let alert_ids: BTreeSet<String> = msgs
        .iter()
        .map(|m| m.header("X-Earlywarn-Alert").unwrap_or_default())
        .collect();
    assert_eq!(alert_ids.len(), n, "one alert per file");
}

#[test]
fn sigterm_during_a_stream_of_files_loses_nothing_and_duplicates_nothing() {
    const FILES: usize = 200;
    // The last few are dropped after the daemon has gone, so some files surely wait.
    const WHILE_RUNNING: usize = 190;
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    let config = Cfg {
        settle: "1s".into(),
        rescan_interval: "60s".into(),
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = Daemon::start_with(&config, &[], &[("NOTIFY_SOCKET", notify.path())]);
    wait_log(&mut daemon, &["Ready"], Duration::from_secs(20));

    // A producer drops a file every few milliseconds, and goes on after the SIGTERM.
    let feed = feed_dir(dir.path());
    let writer = {
        let feed = feed.clone();
        thread::spawn(move || {
            for i in 0..WHILE_RUNNING {
                drop_stream_file(&feed, i);
                thread::sleep(Duration::from_millis(3));
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || processed_count(dir.path())
            >= 20),
        "20 files not processed within 15 s; log:\n{}",
        log(&daemon)
    );
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        matches!(status, Some(s) if s.success()),
        "exit after SIGTERM: {status:?}; log:\n{}",
        log(&daemon)
    );
    writer.join().unwrap();
    for i in WHILE_RUNNING..FILES {
        drop_stream_file(&feed, i);
    }
    assert!(
        notify
            .wait_for("STOPPING=1", 0, Duration::from_secs(2))
            .is_some(),
        "no STOPPING=1 on NOTIFY_SOCKET; datagrams:\n{}",
        notify.dump()
    );
    let (processed, waiting) = check_nothing_half_done(dir.path(), FILES, &daemon);
    eprintln!(
        "SIGTERM left {} processed, {} waiting; {} emails sent before the restart",
        processed.len(),
        waiting.len(),
        server.messages().len()
    );
    drop(daemon);

    // Restart: the outbox drains and the waiting files are processed.
    let mut daemon = Daemon::start(&config);
    wait_log(&mut daemon, &["Ready"], Duration::from_secs(20));
    assert!(
        wait_until(Duration::from_secs(30), || waiting_files(dir.path())
            .is_empty()),
        "files still waiting after the restart: {:?}",
        waiting_files(dir.path())
    );
    server.wait_for(FILES, Duration::from_secs(30));
    // Every row marked sent, and a sent row is never sent again: nothing extra can come.
    support::wait_outbox_drained(&config);
    check_each_emailed_once(&server.messages(), FILES);
    assert_eq!(names_in(&processed_dir(dir.path())).len(), FILES);
    stop_daemon(daemon);
}

#[test]
fn sigterm_stops_taking_files_after_the_current_one_even_with_a_backlog() {
    const FILES: usize = 200;
    let dir = tempdir();
    let config = Cfg {
        settle: "1s".into(),
        rescan_interval: "60s".into(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    // A producer dumps a backlog as fast as it can: the daemon is soon behind.
    let feed = feed_dir(dir.path());
    let writer = {
        let feed = feed.clone();
        thread::spawn(move || {
            for i in 0..FILES {
                drop_stream_file(&feed, i);
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || processed_count(dir.path())
            >= 20),
        "20 files not processed within 15 s; log:\n{}",
        log(&daemon)
    );
    let before = log_lines(&daemon, &["File processed"]).len();
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        matches!(status, Some(s) if s.success()),
        "exit after SIGTERM: {status:?}; log:\n{}",
        log(&daemon)
    );
    writer.join().unwrap();
    let (processed, waiting) = check_nothing_half_done(dir.path(), FILES, &daemon);
    let after = processed.len();
    // The file in progress when the signal came (and one whose log line we just missed).
    assert!(
        after <= before + 2,
        "{before} files were processed when SIGTERM was sent, {after} when the daemon exited \
         ({} left waiting): it went on taking files after SIGTERM",
        waiting.len()
    );
    drop(daemon);

    let daemon = start_daemon(&config);
    assert!(
        wait_until(Duration::from_secs(30), || waiting_files(dir.path())
            .is_empty()),
        "files still waiting after the restart: {:?}",
        waiting_files(dir.path())
    );
    let msgs = wait_eml(&mail_dir(dir.path()), FILES, Duration::from_secs(30));
    // Every row marked sent, and a sent row is never sent again: nothing extra can come.
    support::wait_outbox_drained(&config);
    assert_eq!(eml_messages(&mail_dir(dir.path())).len(), msgs.len());
    check_each_emailed_once(&msgs, FILES);
    stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// 5. Metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_endpoint_counts_files_alerts_deliveries_and_refused_reloads() {
    let dir = tempdir();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &Cfg::default(),
        "",
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut daemon = start_daemon(&config);
    let mail = mail_dir(dir.path());

    let body = scrape(port);
    for family in [
        "earlywarn_events_total",
        "earlywarn_files_total",
        "earlywarn_alerts_total",
        "earlywarn_deliveries_total",
        "earlywarn_outbox_pending",
        "earlywarn_feed_last_file_seconds",
        "earlywarn_rule_reload_failures_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "no {family} family:\n{body}"
        );
    }
    assert_eq!(
        metric(&body, "earlywarn_deliveries_total{outcome=\"sent\"}"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "earlywarn_outbox_pending"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "earlywarn_rule_reload_failures_total"),
        Some(0.0),
        "{body}"
    );

    write_atomically(
        &feed_dir(dir.path()),
        "m1.csv",
        csv(&[
            row("M-1", "Bolton", "isotonitazene", "", ""),
            row("M-2", "Bolton", "cocaine", "", ""),
        ]),
    );
    wait_eml(&mail, 1, WAIT);
    let events = "earlywarn_events_total{feed=\"drug_testing\"}";
    let files = "earlywarn_files_total{feed=\"drug_testing\",outcome=\"processed\"}";
    let alerts = "earlywarn_alerts_total{rule=\"nitazene-detected\"}";
    let sent = "earlywarn_deliveries_total{outcome=\"sent\"}";
    let last = "earlywarn_feed_last_file_seconds{feed=\"drug_testing\"}";
    let mut body = String::new();
    assert!(
        wait_until(WAIT, || {
            body = scrape(port);
            metric(&body, sent) == Some(1.0)
        }),
        "{sent} after one email:\n{body}"
    );
    assert_eq!(metric(&body, events), Some(2.0), "{body}");
    assert_eq!(metric(&body, files), Some(1.0), "{body}");
    assert_eq!(metric(&body, alerts), Some(1.0), "{body}");
    assert_eq!(
        metric(&body, "earlywarn_outbox_pending"),
        Some(0.0),
        "{body}"
    );
    let age = metric(&body, last).unwrap_or_else(|| panic!("no {last}:\n{body}"));
    assert!((0.0..30.0).contains(&age), "{last} = {age}");

    // A second file: the counters move.
    write_atomically(
        &feed_dir(dir.path()),
        "m2.csv",
        csv(&[
            row("M-3", "Wigan", "protonitazene", "", ""),
            row("M-4", "Wigan", "cocaine", "", ""),
            row("M-5", "Wigan", "cocaine", "", ""),
        ]),
    );
    wait_eml(&mail, 2, WAIT);
    assert!(
        wait_until(WAIT, || {
            body = scrape(port);
            metric(&body, sent) == Some(2.0)
        }),
        "{sent} after two emails:\n{body}"
    );
    assert_eq!(metric(&body, events), Some(5.0), "{body}");
    assert_eq!(metric(&body, files), Some(2.0), "{body}");
    assert_eq!(metric(&body, alerts), Some(2.0), "{body}");

    // A refused reload moves the failure counter.
    let (broken, _, _) = broken_rule();
    write_atomically(&dir.path().join("rules"), "zz-broken.toml", broken);
    wait_log(&mut daemon, &["ERROR", "zz-broken.toml:"], WAIT);
    assert!(
        wait_until(WAIT, || {
            body = scrape(port);
            metric(&body, "earlywarn_rule_reload_failures_total").unwrap_or(0.0) >= 1.0
        }),
        "earlywarn_rule_reload_failures_total after a refused reload:\n{body}"
    );

    // Anything but /metrics is 404.
    for path in ["/", "/metricsx", "/favicon.ico", "/metrics/extra"] {
        let (status, body) = http_get(port, path);
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    // Still serving after those.
    assert!(scrape(port).contains("earlywarn_events_total"));
    stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// 6. Self-alerts to ops
// ---------------------------------------------------------------------------------------------

fn ops_emails(mail: &Path) -> Vec<Received> {
    eml_messages(mail)
        .into_iter()
        .filter(|m| m.header("X-Earlywarn-Rule").as_deref() == Some("earlywarn-ops"))
        .collect()
}

#[test]
fn a_burst_of_rejected_files_is_one_ops_email_per_interval_and_a_refused_reload_tells_ops() {
    let dir = tempdir();
    let partners = format!(
        "{}{}",
        partner("panel", &["panel@example.org"], true, &["*"], None),
        partner("ops", &["ops@example.org"], false, &["Bolton"], None)
    );
    let config = write_config(
        dir.path(),
        &Cfg {
            partners,
            ops: Some("ops".into()),
            ..Cfg::default()
        },
        "ops_interval = \"3s\"\n",
        "",
    );
    let mut daemon = start_daemon(&config);
    let mail = mail_dir(dir.path());

    const BAD: usize = 20;
    for i in 0..BAD {
        write_atomically(&feed_dir(dir.path()), &format!("empty-{i:02}.csv"), "");
    }
    wait_log_lines(&mut daemon, &["Rejected file"], BAD, WAIT);
    // Each moved whole to rejected/ with its .errors.txt (logged just before the move).
    let rejected = feed_dir(dir.path()).join("rejected");
    assert!(
        wait_until(WAIT, || names_in(&rejected).len() == 2 * BAD),
        "{:?}",
        names_in(&rejected)
    );

    // The first email goes at once...
    let mut ops = Vec::new();
    assert!(
        wait_until(WAIT, || {
            ops = ops_emails(&mail);
            !ops.is_empty()
        }),
        "no email to ops about {BAD} rejected files; log:\n{}",
        log(&daemon)
    );
    let first_seen = Instant::now();
    assert_eq!(ops[0].to(), ["ops@example.org"]);
    // ...and nothing more within the interval (3 s; checked at 2 s after we saw the first).
    thread::sleep(Duration::from_secs(2).saturating_sub(first_seen.elapsed()));
    assert_eq!(
        ops_emails(&mail).len(),
        1,
        "a second ops email within ops_interval"
    );
    // Every file is listed, in the first email or in at most one more after the interval.
    let listed = |msgs: &[Received]| -> usize {
        let text: String = msgs.iter().filter_map(|m| m.text_body()).collect();
        (0..BAD)
            .filter(|i| text.contains(&format!("empty-{i:02}.csv")))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(6), || {
            ops = ops_emails(&mail);
            listed(&ops) == BAD
        }),
        "{} of {BAD} rejected files listed in {} ops email(s):\n{}",
        listed(&ops),
        ops.len(),
        ops.iter()
            .filter_map(|m| m.text_body())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    );
    assert!(ops.len() <= 2, "{} ops emails for one burst", ops.len());
    let after_burst = ops.len();
    assert!(
        eml_messages(&mail).len() == after_burst,
        "only ops were mailed"
    );

    // A refused reload is an ops email too, naming the place of the mistake.
    let (broken, line, col) = broken_rule();
    write_atomically(&dir.path().join("rules"), "zz-broken.toml", broken);
    wait_log(&mut daemon, &["ERROR", "zz-broken.toml:"], WAIT);
    let mut reload_mail = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            // (.eml names are not in time order: look at them all.)
            reload_mail = ops_emails(&mail)
                .into_iter()
                .find(|m| m.text_body().unwrap_or_default().contains("zz-broken.toml"));
            reload_mail.is_some()
        }),
        "no ops email about the refused reload; ops emails:\n{:?}",
        ops_emails(&mail)
            .iter()
            .map(|m| m.text_body())
            .collect::<Vec<_>>()
    );
    let reload_mail = reload_mail.unwrap();
    let text = reload_mail.text_body().unwrap();
    assert!(
        places(&text, "rules/zz-broken.toml").contains(&(line, col)),
        "the ops email should say rules/zz-broken.toml:{line}:{col}:\n{text}"
    );
    assert_eq!(
        reload_mail.subject().unwrap(),
        "OFFICIAL-SENSITIVE [WARNING] earlywarn: new rules refused"
    );

    // The fix: ops hear that it has cleared, in the next email.
    fs::remove_file(dir.path().join("rules/zz-broken.toml")).unwrap();
    wait_log(&mut daemon, &["Rules reloaded"], WAIT);
    let mut cleared = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            cleared = ops_emails(&mail).into_iter().find(|m| {
                m.subject()
                    .is_some_and(|s| s.contains("earlywarn: cleared: rules reloaded"))
            });
            cleared.is_some()
        }),
        "no ops email saying the refusal cleared; subjects: {:?}",
        ops_emails(&mail)
            .iter()
            .map(|m| m.subject())
            .collect::<Vec<_>>()
    );
    stop_daemon(daemon);
}

// ---------------------------------------------------------------------------------------------
// 7. JSON logs
// ---------------------------------------------------------------------------------------------

#[test]
fn log_format_json_writes_one_json_object_per_line_with_the_file_fields() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let mut daemon = Daemon::start_with(&config, &["--log-format", "json"], &[]);
    daemon.wait_for_log("Ready", Duration::from_secs(20));
    write_atomically(
        &feed_dir(dir.path()),
        "j.csv",
        csv(&[
            row("J-1", "Trafford", "isotonitazene", "", ""),
            row("J-2", "Trafford", "cocaine", "", ""),
            row("J-3", "Trafford", "heroin", "", ""),
        ]),
    );
    daemon.wait_for_log("File processed", WAIT);
    wait_eml(&mail_dir(dir.path()), 1, WAIT);
    let status = {
        daemon.sigterm();
        daemon.wait_exit(Duration::from_secs(15))
    };
    assert!(matches!(status, Some(s) if s.success()), "{status:?}");

    let text = daemon.log();
    let mut objects = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line {} is not JSON ({e}): {line:?}", i + 1));
        assert!(v.is_object(), "log line {} is not an object: {line}", i + 1);
        assert!(v.get("level").is_some(), "no level: {line}");
        assert!(v.get("timestamp").is_some(), "no timestamp: {line}");
        objects.push(v);
    }
    let message = |v: &serde_json::Value| {
        v.get("message")
            .or_else(|| v.pointer("/fields/message"))
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string()
    };
    // A field at the top level (flattened) or under "fields".
    let get = |v: &serde_json::Value, k: &str| -> serde_json::Value {
        v.get(k)
            .or_else(|| v.get("fields").and_then(|f| f.get(k)))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let processed: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|v| message(v) == "File processed")
        .collect();
    assert_eq!(processed.len(), 1, "{text}");
    let p = processed[0];
    assert_eq!(get(p, "feed"), "drug_testing", "{p}");
    assert_eq!(get(p, "file"), "j.csv", "{p}");
    assert_eq!(get(p, "rows").as_u64(), Some(3), "{p}");
    assert_eq!(get(p, "alerts").as_u64(), Some(1), "{p}");
    assert_eq!(get(p, "level"), "INFO", "{p}");
    for m in [
        "Starting",
        "Ready",
        "Alert raised",
        "Shutting down",
        "Stopped",
    ] {
        assert!(
            objects.iter().any(|v| message(v) == m),
            "no {m:?} object in the JSON log:\n{text}"
        );
    }
}
