//! Attacks on the service's edges (issue 10), each done for real against the `earlywarn` binary:
//!
//! - a flood of idle connections to `/metrics` on a daemon with 256 descriptors: it keeps
//!   ingesting and delivering, its log does not spin, and `/metrics` answers once the flood ends;
//! - `SUDO_USER`, `USER` and `LOGNAME` set to a made-up chair do not change who is recorded as
//!   deciding a review; a `--by` holding an escape or a newline is refused;
//! - a file name and field values holding an OSC-8 link and a newline reach `status` and
//!   `alerts show` escaped: no raw ESC, no forged line;
//! - a password file others can read, or a `username` without a password, is refused;
//! - a backlog of thousands of emails neither holds SIGTERM up nor keeps a critical alert
//!   waiting behind it.

mod e2e_support;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use e2e_support::*;
use support::{Daemon, earlywarn, earlywarn_with_env};

/// The hostile text: an OSC-8 hyperlink to a made-up site, then a newline that would start a
/// forged line.
const OSC8: &str = "\u{1b}]8;;http://evil\u{07}";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One `GET /metrics`; `None` if there is no complete answer within 5 s.
fn scrape(port: u16) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

/// Lowers a running process's descriptor limit, as a small `LimitNOFILE` would.
fn limit_descriptors(pid: u32, limit: u64) {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit only reads `rlim`; a null old-limit pointer is allowed.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn open_descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn nitazene_file(id: &str) -> String {
    csv(&[row(id, "Bolton", "heroin;isotonitazene", "", "")])
}

#[test]
fn an_idle_connection_flood_on_metrics_starves_nothing() {
    let dir = tempdir();
    let port = free_port();
    let config = Cfg::default().write(dir.path());
    // A bare port: bound on loopback.
    let mut text = fs::read_to_string(&config).unwrap();
    text = format!("[metrics]\nlisten = \"{port}\"\n\n{text}");
    fs::write(&config, text).unwrap();
    let mut daemon = start_daemon(&config);
    assert!(
        wait_log(&mut daemon, &["Serving metrics"], WAIT).contains(&format!("127.0.0.1:{port}"))
    );
    limit_descriptors(daemon.pid(), 256);
    assert!(scrape(port).is_some(), "no metrics before the flood");

    // Up to 1,000 idle connections, far more than the daemon has descriptors for. A daemon
    // that accepts everything takes them all at once; a bounded one lets the kernel's accept
    // queue fill, and then new connections wait in SYN retries: stop trying once they do.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut flood = Vec::new();
    let mut refused_in_a_row = 0;
    for _ in 0..1000 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            Ok(s) => {
                flood.push(s);
                refused_in_a_row = 0;
            }
            Err(_) => {
                refused_in_a_row += 1;
                if refused_in_a_row == 20 {
                    break;
                }
            }
        }
    }
    assert!(
        flood.len() >= 100,
        "only {} connections opened",
        flood.len()
    );
    let log_before = daemon.log().len();

    // Meanwhile a real file arrives: it must be read, committed and delivered.
    write_atomically_in(&feed_dir(dir.path()), "nitazene.csv", &nitazene_file("S-1"));
    let mails = wait_eml(&dir.path().join("mail"), 1, Duration::from_secs(30));
    assert!(
        mails[0]
            .subject()
            .unwrap()
            .contains("Isotonitazene, Bolton")
    );
    let fds = open_descriptors(daemon.pid());
    assert!(
        fds < 128,
        "{fds} descriptors open during the flood: connections are not bounded"
    );
    // A few seconds of flood: idle ones time out and the queue is worked through, quietly.
    std::thread::sleep(Duration::from_secs(3));
    let grown = daemon.log().len() - log_before;
    assert!(
        grown < 64 * 1024,
        "the log grew by {grown} bytes during the flood:\n{}",
        &log(&daemon)[log_before..]
    );
    assert!(
        !log(&daemon).contains("Too many open files"),
        "{}",
        log(&daemon)
    );

    drop(flood);
    let mut answered = None;
    assert!(
        support::wait_until(Duration::from_secs(20), || {
            answered = scrape(port);
            answered.is_some()
        }),
        "/metrics does not answer after the flood; log:\n{}",
        log(&daemon)
    );
    assert!(
        answered
            .unwrap()
            .contains("earlywarn_files_total{feed=\"drug_testing\",outcome=\"processed\"} 1")
    );
    assert!(daemon.is_running());
    stop_daemon(daemon);
}

/// [`support::write_atomically`] for text.
fn write_atomically_in(dir: &Path, name: &str, text: &str) {
    support::write_atomically(dir, name, text);
}

/// A config whose nitazene rule drafts to `panel` for review before `bolton` gets it.
fn review_config(dir: &Path) -> std::path::PathBuf {
    let cfg = Cfg {
        partners: partner("panel", &["panel@example.org"], true, &["*"], None)
            + &partner("bolton", &["bolton@example.org"], false, &["Bolton"], None),
        rules: nitazene_rule(&["bolton"]).replace(
            "group_by = [\"district\"]",
            "group_by = [\"district\"]\nreview = [\"panel\"]",
        ),
        ..Cfg::default()
    };
    cfg.write(dir)
}

/// Ingests one nitazene file with a daemon and returns the id of the alert it drafted.
fn drafted_alert(dir: &Path, config: &Path) -> String {
    let daemon = start_daemon(config);
    write_atomically_in(&feed_dir(dir), "nitazene.csv", &nitazene_file("S-9"));
    let mails = wait_eml(&dir.join("mail"), 1, WAIT);
    stop_daemon(daemon);
    mails[0]
        .header("X-Earlywarn-Alert")
        .expect("the draft names its alert")
}

/// This process's Unix account, as the account database has it (the uid if it has none).
fn my_account() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !name.is_empty() {
        name
    } else {
        let out = std::process::Command::new("id").arg("-u").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn the_approver_is_the_uid_not_the_environment() {
    let dir = tempdir();
    let config = review_config(dir.path());
    let cfg = config.to_str().unwrap();
    let id = drafted_alert(dir.path(), &config);
    let forged = [
        ("SUDO_USER", "Dr A. Chair"),
        ("USER", "Dr A. Chair"),
        ("LOGNAME", "Dr A. Chair"),
    ];

    // A display name that would drive the terminal or forge a line of `alerts show`.
    for bad in [
        format!("Dr A. Chair{OSC8}"),
        "J Smith\nDecided   by Dr A. Chair".to_string(),
        "x".repeat(101),
    ] {
        let out = earlywarn(&["alerts", "dismiss", &id, "--by", &bad, "--config", cfg]);
        assert_eq!(out.status.code(), Some(1), "accepted --by {bad:?}");
        assert!(stderr(&out).contains("--by"), "{}", stderr(&out));
        assert!(!stderr(&out).contains('\u{1b}'), "{:?}", stderr(&out));
    }
    let listed = earlywarn(&["alerts", "list", "--config", cfg]);
    assert!(
        stdout(&listed).contains(&id),
        "a refused --by changed the alert"
    );

    let approve = earlywarn_with_env(&["alerts", "approve", &id, "--config", cfg], &forged);
    assert!(approve.status.success(), "{}", stderr(&approve));
    let show = earlywarn_with_env(&["alerts", "show", &id, "--config", cfg], &forged);
    let shown = stdout(&show);
    let account = my_account();
    assert!(
        shown.contains(&format!("Decided   by unix:{account} at")),
        "{shown}"
    );
    assert!(!shown.contains("Chair"), "{shown}");
    // The refusal of a second decision names the same account.
    let again = earlywarn_with_env(&["alerts", "dismiss", &id, "--config", cfg], &forged);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains(&format!("by unix:{account}")),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_display_name_is_recorded_beside_the_account() {
    let dir = tempdir();
    let config = review_config(dir.path());
    let cfg = config.to_str().unwrap();
    let id = drafted_alert(dir.path(), &config);
    let out = earlywarn_with_env(
        &[
            "alerts",
            "dismiss",
            &id,
            "--by",
            "J Smith",
            "--reason",
            "a duplicate",
            "--config",
            cfg,
        ],
        &[("SUDO_USER", "Dr A. Chair")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&earlywarn(&["alerts", "show", &id, "--config", cfg]));
    assert!(
        shown.contains(&format!("Decided   by J Smith (unix:{}) at", my_account())),
        "{shown}"
    );
}

#[test]
fn hostile_names_and_fields_reach_the_terminal_escaped() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let cfg = config.to_str().unwrap();
    let mut daemon = start_daemon(&config);
    // A file name and fields that try to open a link and start a forged line.
    // No `/` in a file name: the link points at a bare host.
    let name = "lab\u{1b}]8;;evil.example\u{07}\nFeeds forged.csv";
    let hostile = format!("{OSC8}click\nRecords   999");
    let mut good = row(
        "S-7",
        "Bolton",
        "heroin;isotonitazene",
        "",
        "seized near the park",
    );
    good = good.replace(",brown,", &format!(",{},", csv_field(&hostile)));
    let bad = "S-8,not enough columns".to_string();
    let text = format!("{}\n{good}\n{bad}\n", HEADER);
    write_atomically_in(&feed_dir(dir.path()), name, &text);
    let mails = wait_eml(&dir.path().join("mail"), 1, WAIT);
    let id = mails[0].header("X-Earlywarn-Alert").unwrap();
    let incoming = feed_dir(dir.path());
    assert!(
        support::wait_until(WAIT, || names_in(&incoming)
            .iter()
            .all(|n| n == "processed" || n == "rejected")),
        "the file stays in the incoming folder: {:?}",
        names_in(&incoming)
    );
    assert!(daemon.is_running());
    stop_daemon(daemon);

    let status = earlywarn(&["status", "--config", cfg]);
    assert!(status.status.success(), "{}", stderr(&status));
    let show = earlywarn(&["alerts", "show", &id, "--config", cfg]);
    assert!(show.status.success(), "{}", stderr(&show));
    let list = earlywarn(&["alerts", "list", "--all", "--config", cfg]);
    for (what, out) in [
        ("status", &status),
        ("alerts show", &show),
        ("alerts list", &list),
    ] {
        let text = stdout(out);
        assert!(
            !text.contains(['\u{1b}', '\u{07}']),
            "{what} printed a raw escape sequence:\n{text:?}"
        );
        for line in text.lines() {
            assert!(
                !line.starts_with("Feeds forged") && !line.starts_with("Records   999"),
                "{what} printed a forged line {line:?}:\n{text}"
            );
        }
    }
    let shown = stdout(&status);
    assert!(
        shown.lines().any(|l| l.contains("lab")
            && l.contains("evil.example")
            && l.contains("Feeds forged.csv")),
        "the name is shown, escaped, on one line:\n{shown}"
    );
    let shown = stdout(&show);
    assert!(
        shown.contains("\\x1b]8;;http://evil\\x07click\\nRecords   999"),
        "the field is shown, escaped:\n{shown}"
    );
    assert_eq!(shown.matches("\nRecords   ").count(), 1, "{shown}");
}

/// A config whose mail goes over SMTP with `username` and the given extra `[mail]` lines.
fn smtp_auth_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = Cfg {
        mail: format!(
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"earlywarn\"\n{extra}",
            free_port()
        ),
        ..Cfg::default()
    };
    cfg.write(dir)
}

#[test]
fn smtp_passwords_others_can_read_or_missing_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let secret = dir.path().join("smtp-password");
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    let config = smtp_auth_config(dir.path(), "password_file = \"smtp-password\"\n");
    let cfg = config.to_str().unwrap();

    let check = earlywarn(&["check", "--config", cfg]);
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    let said = stderr(&check);
    assert!(
        said.contains(&secret.display().to_string()) && said.contains("mode 0644"),
        "{said}"
    );
    // The daemon refuses to start with it, saying the same.
    let mut daemon = Daemon::start(&config);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", daemon.log());
    assert!(daemon.log().contains("mode 0644"), "{}", daemon.log());

    // Owner-only is accepted.
    support::owner_only(&secret);
    let check = earlywarn(&["check", "--config", cfg]);
    assert!(check.status.success(), "{}", stderr(&check));

    // A username and no password anywhere: refused, not an AUTH with an empty password.
    let dir = tempdir();
    let config = smtp_auth_config(dir.path(), "");
    let check = earlywarn(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check).contains("no password is available"),
        "{}",
        stderr(&check)
    );
    // systemd's credential (LoadCredential) still works, whatever ACL mode bits systemd shows.
    let creds = dir.path().join("credentials");
    fs::create_dir_all(&creds).unwrap();
    fs::write(creds.join("smtp-password"), "s3cret\n").unwrap();
    fs::set_permissions(
        creds.join("smtp-password"),
        fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    let check = earlywarn_with_env(
        &["check", "--config", config.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    assert!(check.status.success(), "{}", stderr(&check));
}

/// Puts `n` pending emails straight into the outbox (as a flood of earlier alerts would have),
/// the last `critical` of them for critical alerts.
fn fill_outbox(config: &Path, n: usize, critical: usize) {
    // The schema comes from the real binary.
    let out = earlywarn(&["status", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let db = config.parent().unwrap().join("state/earlywarn.db");
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    let now = jiff::Timestamp::now().as_millisecond() - 60_000;
    let body = "x".repeat(4000);
    for i in 0..n {
        let id = format!("EW-FLOOD{i:06}");
        let severity = if i >= n - critical {
            "critical"
        } else {
            "info"
        };
        tx.execute(
            "INSERT INTO alerts (id, rule_id, district, severity, status, created_at, event_count, summary)
             VALUES (?1, 'flood', 'Bolton', ?2, 'sent', ?3, 1, '{}')",
            rusqlite::params![id, severity, now + i as i64],
        )
        .unwrap();
        let message = format!("Subject: {id}\r\nMessage-ID: <{id}@example.org>\r\n\r\n{body}\r\n");
        tx.execute(
            "INSERT INTO outbox (alert_id, partner_id, audience, message_id, mail_from, recipients, subject, message,
                status, next_attempt_at, created_at, priority, purpose)
             VALUES (?1, 'panel', 'notify', ?2, 'earlywarn@example.org', '[\"panel@example.org\"]', ?1, ?3,
                'pending', ?4, ?4, ?5, 'alert')",
            rusqlite::params![
                id,
                format!("<{id}@example.org>"),
                message.as_bytes(),
                now + i as i64,
                if severity == "critical" { 0 } else { 2 }
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn outbox_count(config: &Path, status: &str) -> i64 {
    let db = config.parent().unwrap().join("state/earlywarn.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE status = ?1",
        [status],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_backlog_neither_holds_up_sigterm_nor_a_critical_alert() {
    let dir = tempdir();
    let config = Cfg::default().write(dir.path());
    let total = 30_000;
    fill_outbox(&config, total, 5);
    let mut daemon = Daemon::start(&config);
    wait_log(&mut daemon, &["Ready"], Duration::from_secs(20));
    let mail = dir.path().join("mail");
    let eml_count = || {
        names_in(&mail)
            .iter()
            .filter(|n| n.ends_with(".eml") && !n.starts_with('.'))
            .count() as i64
    };
    // Let part of the backlog go out.
    assert!(
        support::poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
            eml_count() >= 200
        }),
        "the backlog does not move; log:\n{}",
        log(&daemon)
    );
    // SIGTERM in the middle of the backlog: the daemon leaves within shutdown_timeout (5 s),
    // and what it did not send stays pending for the next start.
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "not out within 15 s of SIGTERM ({status:?}); log tail:\n{}",
        log(&daemon)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let sent = outbox_count(&config, "sent");
    let pending = outbox_count(&config, "pending");
    assert_eq!(sent + pending, total as i64);
    assert!(
        pending > 0,
        "the whole backlog went out before SIGTERM: a too small test"
    );
    assert_eq!(
        eml_count(),
        sent,
        "every email written is recorded as sent, and only those"
    );

    // The five critical emails, queued last, went out before any of the flood.
    let db = config.parent().unwrap().join("state/earlywarn.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let (critical_sent, last_critical): (i64, Option<i64>) = conn
        .query_row(
            "SELECT COUNT(*), MAX(sent_at) FROM outbox WHERE priority = 0 AND status = 'sent'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let first_info: Option<i64> = conn
        .query_row(
            "SELECT MIN(sent_at) FROM outbox WHERE priority = 2 AND status = 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        critical_sent, 5,
        "the critical emails waited behind the flood"
    );
    assert!(
        last_critical <= first_info,
        "an info email went out before a critical one"
    );
}
