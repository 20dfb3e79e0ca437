//! SMTP failure semantics against the real binary and a real SMTP server on
//! loopback with STARTTLS and AUTH (SPEC §7, issue 11): a refused password is a
//! configuration fault (nothing fails, all delivered once when fixed); a 550 for
//! one of a partner's addresses costs only that address; `outbox retry`
//! requeues what failed; the EHLO name; critical first after an outage, drained
//! by the probe within seconds of the server's return.
//!
//! The server is `tests/support/smtp_server.py` with its fault options
//! (`--auth-fail-while-exists`, `--reject-rcpt-file`, `--reject-data-while-exists`,
//! `--helo-log`, `--reject-non-fqdn-helo`), started here by [`FaultServer`].

mod e2e_support;
mod support;

use e2e_support::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Received, earlywarn, wait_until, write_atomically};

const USER: &str = "earlywarn";
const PASSWORD: &str = "correct horse battery staple";

/// `smtp_server.py` with STARTTLS, AUTH and fault options, its maildir in the
/// test's folder. Killed on drop.
struct FaultServer {
    child: Option<Child>,
    port: u16,
    maildir: PathBuf,
    extra: Vec<String>,
}

impl FaultServer {
    fn start(maildir: &Path, extra: &[&str]) -> FaultServer {
        let mut s = FaultServer {
            child: None,
            port: 0,
            maildir: maildir.to_path_buf(),
            extra: extra.iter().map(|e| e.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        fs::create_dir_all(&self.maildir).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.maildir.join("server.log"))
            .unwrap();
        let python = std::env::var("EARLYWARN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--maildir")
            .arg(&self.maildir)
            .args(["--tls", "starttls", "--cert"])
            .arg(support::server_cert_path())
            .arg("--key")
            .arg(support::server_key_path())
            .arg("--auth")
            .arg(format!("{USER}:{PASSWORD}"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("run tests/support/smtp_server.py (python3 with aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the SMTP server did not start ({line:?}); log:\n{}",
                    fs::read_to_string(self.maildir.join("server.log")).unwrap_or_default()
                )
            });
        self.port = port;
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Back on the same port, same maildir (numbering goes on).
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn messages(&self) -> Vec<Received> {
        let mut names: Vec<String> = fs::read_dir(&self.maildir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.len() == 11 && n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut r: Received =
                    serde_json::from_str(&fs::read_to_string(self.maildir.join(n)).unwrap())
                        .unwrap();
                r.seq = i as u32 + 1;
                r
            })
            .collect()
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut got = Vec::new();
        let ok = wait_until(timeout, || {
            got = self.messages();
            got.len() >= n
        });
        assert!(
            ok,
            "expected {n} message(s) within {timeout:?}, got {}: {:?}",
            got.len(),
            got.iter().map(|m| &m.rcpt_tos).collect::<Vec<_>>()
        );
        got
    }

    /// `[mail]` lines pointing at this server (STARTTLS with the test CA, AUTH).
    fn mail_lines(&self, dir: &Path) -> String {
        let secrets = dir.join("secrets");
        fs::create_dir_all(&secrets).unwrap();
        fs::copy(support::ca_pem_path(), secrets.join("ca.pem")).unwrap();
        fs::write(secrets.join("smtp-password"), format!("{PASSWORD}\n")).unwrap();
        support::owner_only(&secrets.join("smtp-password"));
        format!(
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"secrets/ca.pem\"\nusername = \"{USER}\"\npassword_file = \"secrets/smtp-password\"\n",
            self.port
        )
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn cfg_path(config: &Path) -> &str {
    config.to_str().unwrap()
}

fn run_ok(args: &[&str]) -> String {
    let out = earlywarn(args);
    assert!(
        out.status.success(),
        "`earlywarn {}` failed ({:?}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_text(config: &Path) -> String {
    run_ok(&["status", "--config", cfg_path(config)])
}

fn outbox_json(config: &Path, failed: bool) -> Vec<serde_json::Value> {
    let mut args = vec![
        "outbox",
        "list",
        "--config",
        cfg_path(config),
        "--format",
        "json",
    ];
    if failed {
        args.push("--failed");
    }
    serde_json::from_str::<serde_json::Value>(&run_ok(&args))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Alert id of each message (`X-Earlywarn-Alert`).
fn alert_of(m: &Received) -> String {
    m.header("X-Earlywarn-Alert").unwrap_or_default()
}

/// One drug-testing file per district, each raising one nitazene alert.
fn drop_nitazene_files(dir: &Path, districts: &[&str]) {
    for (i, d) in districts.iter().enumerate() {
        write_atomically(
            &feed_dir(dir),
            &format!("n{i}.csv"),
            csv(&[row(&format!("N-{i}"), d, "protonitazene", "", "n")]),
        );
    }
}

#[test]
fn a_refused_password_holds_deliveries_back_until_it_is_fixed_then_all_go_once() {
    let dir = tempdir();
    let marker = dir.path().join("auth-fails");
    fs::write(&marker, "").unwrap();
    let server = FaultServer::start(
        &dir.path().join("smtp"),
        &["--auth-fail-while-exists", marker.to_str().unwrap()],
    );
    let config = Cfg {
        mail: server.mail_lines(dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    drop_nitazene_files(dir.path(), &["Bolton", "Bury", "Wigan"]);

    let fault = wait_log(&mut daemon, &["DELIVERY FAULT"], WAIT);
    assert!(fault.contains("ERROR"), "{fault}");
    assert!(fault.contains("535"), "{fault}");
    assert!(
        wait_until(WAIT, || status_json(&config)["outbox_pending"] == 3),
        "{:#}",
        status_json(&config)
    );
    // Several probes and retries later (three more sessions refused at AUTH): still nothing
    // failed, one ERROR only.
    let sessions = || {
        fs::read_to_string(dir.path().join("smtp/connections.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let seen = sessions();
    assert!(
        wait_until(Duration::from_secs(30), || sessions() >= seen + 3),
        "no three more sessions within 30 s: {} then {}",
        seen,
        sessions()
    );
    let status = status_json(&config);
    assert_eq!(status["outbox_failed"], 0, "{status:#}");
    assert_eq!(status["outbox_pending"], 3, "{status:#}");
    assert!(
        status["delivery_fault"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("535")),
        "{status:#}"
    );
    let text = status_text(&config);
    assert!(
        text.contains("DELIVERY FAULT since") && text.contains("3 deliveries are waiting"),
        "{text}"
    );
    assert_eq!(
        log_lines(&daemon, &["ERROR", "DELIVERY FAULT:"]).len(),
        1,
        "logged once when it started, not on every try:\n{}",
        log(&daemon)
    );
    assert!(server.messages().is_empty());

    // The password is fixed: every alert goes, exactly once.
    fs::remove_file(&marker).unwrap();
    let msgs = server.wait_for(3, Duration::from_secs(30));
    wait_log(&mut daemon, &["Delivery works again"], WAIT);
    assert!(
        wait_until(WAIT, || status_json(&config)["delivery_fault"].is_null()),
        "{:#}",
        status_json(&config)
    );
    assert!(!status_text(&config).contains("DELIVERY FAULT"));
    // Every row marked sent, and a sent row is never sent again: nothing extra can come.
    support::wait_outbox_drained(&config);
    let msgs_after = server.messages();
    assert_eq!(
        msgs_after.len(),
        3,
        "each alert once: {:?}",
        msgs.iter().map(alert_of).collect::<Vec<_>>()
    );
    let mut per_alert = BTreeMap::new();
    for m in &msgs_after {
        assert_eq!(m.auth_user.as_deref(), Some(USER));
        *per_alert.entry(alert_of(m)).or_insert(0) += 1;
    }
    assert_eq!(per_alert.len(), 3, "{per_alert:?}");
    let status = status_json(&config);
    assert_eq!(
        (
            status["outbox_pending"].as_i64(),
            status["outbox_failed"].as_i64()
        ),
        (Some(0), Some(0))
    );
    stop_daemon(daemon);
}

#[test]
fn a_dead_address_costs_only_itself_and_outbox_retry_requeues_only_it() {
    let dir = tempdir();
    let reject = dir.path().join("reject-rcpt");
    fs::write(&reject, "dead@example.org\n").unwrap();
    let server = FaultServer::start(
        &dir.path().join("smtp"),
        &["--reject-rcpt-file", reject.to_str().unwrap()],
    );
    let config = Cfg {
        mail: server.mail_lines(dir.path()),
        partners: partner(
            "duo",
            &["ok@example.org", "dead@example.org"],
            true,
            &["*"],
            None,
        ),
        rules: nitazene_rule(&["duo"]),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    drop_nitazene_files(dir.path(), &["Bolton", "Bury"]);

    // The valid address gets every email.
    let msgs = server.wait_for(2, WAIT);
    for m in &msgs {
        assert_eq!(m.rcpt_tos, ["ok@example.org"], "envelope of #{}", m.seq);
    }
    let errors = wait_log_lines(&mut daemon, &["ERROR", "dead@example.org", "duo"], 2, WAIT);
    assert!(errors[0].contains("550"), "{}", errors[0]);

    // Recorded on the rows, shown by status and `outbox list --failed`.
    assert!(wait_until(WAIT, || status_json(&config)["outbox_failed"] == 2));
    let status = status_json(&config);
    for p in status["delivery_problems"].as_array().unwrap() {
        assert_eq!(
            p["failed_addresses"],
            serde_json::json!(["dead@example.org"]),
            "{p:#}"
        );
    }
    let failed = outbox_json(&config, true);
    assert_eq!(failed.len(), 2, "{failed:#?}");
    for r in &failed {
        assert_eq!(
            r["failed_addresses"][0]["address"], "dead@example.org",
            "{r:#}"
        );
        assert!(
            r["failed_addresses"][0]["error"]
                .as_str()
                .unwrap()
                .contains("550")
        );
    }
    let text = run_ok(&["outbox", "list", "--failed", "--config", cfg_path(&config)]);
    assert!(text.contains("failed address dead@example.org"), "{text}");

    // An unknown id is a user error.
    let out = earlywarn(&[
        "outbox",
        "retry",
        "EW-NOSUCH",
        "--config",
        cfg_path(&config),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no delivery or alert"));

    // The address is fixed; requeue the first alert by its id, in lower case.
    fs::write(&reject, "").unwrap();
    let first_alert = failed[1]["alert_id"].as_str().unwrap().to_string();
    let out = run_ok(&[
        "outbox",
        "retry",
        &first_alert.to_lowercase(),
        "--config",
        cfg_path(&config),
    ]);
    assert!(
        out.contains("requeued") && out.contains("dead@example.org"),
        "{out}"
    );
    let msgs = server.wait_for(3, WAIT);
    assert_eq!(msgs[2].rcpt_tos, ["dead@example.org"]);
    assert_eq!(alert_of(&msgs[2]), first_alert);

    // And the second by its delivery id.
    let second = failed[0]["id"].as_i64().unwrap().to_string();
    run_ok(&["outbox", "retry", &second, "--config", cfg_path(&config)]);
    let msgs = server.wait_for(4, WAIT);
    assert_eq!(msgs[3].rcpt_tos, ["dead@example.org"]);
    // Every row marked sent, and a sent row is never sent again: nothing extra can come.
    support::wait_outbox_drained(&config);
    let all = server.messages();
    assert_eq!(
        all.len(),
        4,
        "no duplicate to the address that had accepted"
    );
    let to_ok = all
        .iter()
        .filter(|m| m.rcpt_tos.contains(&"ok@example.org".to_string()))
        .count();
    assert_eq!(to_ok, 2);
    assert!(wait_until(WAIT, || {
        let s = status_json(&config);
        s["outbox_failed"] == 0 && s["outbox_pending"] == 0
    }));
    // Who requeued is on record.
    stop_daemon(daemon);
}

#[test]
fn outbox_retry_all_failed_sends_emails_refused_at_data_once_the_server_takes_them() {
    let dir = tempdir();
    let marker = dir.path().join("reject-data");
    fs::write(&marker, "").unwrap();
    let server = FaultServer::start(
        &dir.path().join("smtp"),
        &["--reject-data-while-exists", marker.to_str().unwrap()],
    );
    let config = Cfg {
        mail: server.mail_lines(dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    drop_nitazene_files(dir.path(), &["Oldham", "Salford"]);
    let lines = wait_log_lines(&mut daemon, &["Delivery failed permanently"], 2, WAIT);
    assert!(lines[0].contains("554"), "{}", lines[0]);
    assert!(wait_until(WAIT, || status_json(&config)["outbox_failed"] == 2));
    assert!(server.messages().is_empty());

    let out = earlywarn(&["outbox", "retry", "999999", "--config", cfg_path(&config)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    fs::remove_file(&marker).unwrap();
    let out = run_ok(&[
        "outbox",
        "retry",
        "--all-failed",
        "--config",
        cfg_path(&config),
    ]);
    assert_eq!(out.matches("requeued delivery").count(), 2, "{out}");
    assert!(out.contains("by unix:"), "{out}");
    let msgs = server.wait_for(2, WAIT);
    assert_eq!(msgs[0].rcpt_tos, ["panel@example.org"]);
    assert!(wait_until(WAIT, || {
        let s = status_json(&config);
        s["outbox_failed"] == 0 && s["outbox_pending"] == 0
    }));
    // Nothing left to requeue.
    let out = run_ok(&[
        "outbox",
        "retry",
        "--all-failed",
        "--config",
        cfg_path(&config),
    ]);
    assert!(out.contains("no failed deliveries"), "{out}");
    stop_daemon(daemon);
}

#[test]
fn the_ehlo_name_is_helo_name_or_a_fully_qualified_name_never_a_bare_one() {
    let dir = tempdir();
    let helo_log = dir.path().join("helo.log");
    // Like Postfix with reject_non_fqdn_helo_hostname: a bare name gets 504.
    let server = FaultServer::start(
        &dir.path().join("smtp"),
        &[
            "--helo-log",
            helo_log.to_str().unwrap(),
            "--reject-non-fqdn-helo",
        ],
    );
    let send = |config: &Path| {
        run_ok(&[
            "send-test-email",
            "--config",
            cfg_path(config),
            "--to",
            "duty@example.org",
        ])
    };
    let names = || -> Vec<String> {
        fs::read_to_string(&helo_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };

    let configured = dir.path().join("configured");
    let config = Cfg {
        mail: server.mail_lines(&configured) + "helo_name = \"mail1.example.org\"\n",
        ..Cfg::default()
    }
    .write(&configured);
    send(&config);
    let seen = names();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|n| n == "mail1.example.org"), "{seen:?}");

    fs::remove_file(&helo_log).unwrap();
    let default = dir.path().join("default");
    let config = Cfg {
        mail: server.mail_lines(&default),
        ..Cfg::default()
    }
    .write(&default);
    send(&config);
    let seen = names();
    assert!(!seen.is_empty());
    for n in &seen {
        assert!(
            n.contains('.') || (n.starts_with('[') && n.ends_with(']')),
            "EHLO {n:?} is a bare name"
        );
    }
    assert_eq!(server.messages().len(), 2);

    // `check` refuses a bare name, pointing at the line.
    let bad = dir.path().join("bad");
    let config = Cfg {
        mail: server.mail_lines(&bad) + "helo_name = \"vm\"\n",
        ..Cfg::default()
    }
    .write(&bad);
    let out = earlywarn(&["check", "--config", cfg_path(&config)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("helo_name") && err.contains("earlywarn.toml:"),
        "{err}"
    );
}

/// Info, warning and critical rules on the drug-testing feed, all to `panel`.
fn severity_rules() -> String {
    let rule = |id: &str, substance: &str, severity: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\nname = \"{id}\"\nfeed = \"drug_testing\"\nwhen = 'substances_major in [\"{substance}\"]'\nseverity = \"{severity}\"\nnotify = [\"panel\"]\ngroup_by = [\"district\"]\n\n"
        )
    };
    rule("cocaine-info", "cocaine", "info")
        + &rule("ketamine-warning", "ketamine", "warning")
        + &rule("nitazene-critical", "protonitazene", "critical")
}

#[test]
fn after_an_outage_the_critical_alert_goes_first_and_the_backlog_drains_within_seconds() {
    let dir = tempdir();
    let mut server = FaultServer::start(&dir.path().join("smtp"), &[]);
    let config = Cfg {
        mail: server.mail_lines(dir.path()),
        // Long retry delays: what drains the backlog is the probe, not a retry coming due.
        retry_initial: "30s".into(),
        retry_max: "5m".into(),
        rules: severity_rules(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    server.stop();

    let lesser: Vec<String> = (0..6)
        .map(|i| {
            let (substance, district) = if i % 2 == 0 {
                ("cocaine", "Bolton")
            } else {
                ("ketamine", "Bury")
            };
            row(
                &format!("L-{i}"),
                &format!("{district}{i}"),
                substance,
                "",
                "n",
            )
        })
        .collect();
    write_atomically(&feed_dir(dir.path()), "lesser.csv", csv(&lesser));
    wait_log(&mut daemon, &["Delivery failed; will retry"], WAIT);
    write_atomically(
        &feed_dir(dir.path()),
        "critical.csv",
        csv(&[row("C-1", "Wigan", "protonitazene", "", "n")]),
    );
    assert!(
        wait_until(WAIT, || status_json(&config)["outbox_pending"] == 7),
        "{:#}",
        status_json(&config)
    );

    let back = Instant::now();
    server.restart();
    let msgs = server.wait_for(7, Duration::from_secs(45));
    let drained = back.elapsed();
    assert_eq!(
        msgs[0].header("X-Earlywarn-Rule").as_deref(),
        Some("nitazene-critical"),
        "first accepted: {:?}",
        msgs.iter()
            .map(|m| m.header("X-Earlywarn-Rule"))
            .collect::<Vec<_>>()
    );
    assert!(drained < Duration::from_secs(45), "drained in {drained:?}");
    wait_log(&mut daemon, &["The mail server answers again"], WAIT);
    stop_daemon(daemon);
}
