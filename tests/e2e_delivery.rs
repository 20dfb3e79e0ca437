//! End to end: files dropped into a feed folder become emails at a real SMTP server
//! (tests/support/smtp_server.py), routed, redacted and delivered as SPEC §5.3 and §7 promise.
//!
//! Run with `cargo test --test e2e_delivery`. Needs python3 with aiosmtpd.

mod e2e_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;

use e2e_support::*;
use support::{
    Received, SmtpMode, SmtpOptions, SmtpServer, SmtpTls, earlywarn, wait_until, write_atomically,
};

const USER: &str = "earlywarn";
const PASSWORD: &str = "correct horse battery staple";

/// Notes of the matching rows: sensitive, so never in an email to a partner without the ISA.
/// The Salford one carries HTML so that escaping shows too.
const NOTE_BOLTON: &str = "NOTE-BOLTON handed in after an overdose near the Octagon";
const NOTE_SALFORD: &str = "NOTE-SALFORD <b>Chapel Street</b> & a strong vinegar smell";
const NOTE_WIGAN: &str = "NOTE-WIGAN slow-healing wound away from injection sites";

fn headline_rules() -> String {
    let mut rules = nitazene_rule(&[
        "panel",
        "lead-bolton",
        "lead-salford",
        "charity",
        "wigan-critical",
    ]);
    rules += r#"
[[rule]]
id = "xylazine-detected"
name = "Xylazine detected in a tested sample"
feed = "drug_testing"
when = 'substances_major in ["xylazine"] or substances_minor in ["xylazine"]'
severity = "warning"
notify = ["panel", "lead-bolton", "lead-salford", "charity", "wigan-critical"]
group_by = ["district"]
"#;
    rules
}

fn headline_partners() -> String {
    [
        partner(
            "panel",
            &["panel@example.org", "panel.duty@example.org"],
            true,
            &["*"],
            None,
        ),
        partner(
            "lead-bolton",
            &["bolton.lead@example.org"],
            true,
            &["Bolton"],
            None,
        ),
        partner(
            "lead-salford",
            &["salford.lead@example.org"],
            true,
            &["Salford"],
            None,
        ),
        partner(
            "charity",
            &["alerts@harbour.example.org"],
            false,
            &["Salford", "Wigan"],
            None,
        ),
        partner(
            "wigan-critical",
            &["wigan@example.org"],
            true,
            &["Wigan"],
            Some("critical"),
        ),
    ]
    .concat()
}

fn headline_csv() -> String {
    csv(&[
        row(
            "S-001",
            "Bolton",
            "protonitazene",
            "paracetamol",
            NOTE_BOLTON,
        ),
        row(
            "S-002",
            "Bolton",
            "cocaine",
            "levamisole",
            "NOTE-S002 expected result",
        ),
        row(
            "S-003",
            "Salford",
            "heroin;N-Desethylisotonitazene",
            "caffeine",
            NOTE_SALFORD,
        ),
        row(
            "S-004",
            "Salford",
            "heroin",
            "caffeine;paracetamol",
            "NOTE-S004 expected result",
        ),
        row("S-005", "Wigan", "heroin;xylazine", "caffeine", NOTE_WIGAN),
        row("S-006", "Manchester", "ketamine", "", "NOTE-S006"),
        row("S-007", "Wigan", "cocaine", "", "NOTE-S007"),
    ])
}

/// Alert ids by (rule, district), from the `Alert raised` log lines.
fn alert_ids(d: &support::Daemon) -> BTreeMap<(String, String), String> {
    log_lines(d, &["Alert raised"])
        .iter()
        .map(|l| {
            (
                (field(l, "rule").unwrap(), field(l, "district").unwrap()),
                field(l, "alert").unwrap(),
            )
        })
        .collect()
}

fn everything_of(m: &Received) -> String {
    let mut all = m.data.clone();
    all += &m.subject().unwrap_or_default();
    all += &m.text_body().unwrap_or_default();
    all += &m.html_body().unwrap_or_default();
    for name in m.header_names() {
        all += &m.header(&name).unwrap_or_default();
    }
    all
}

#[test]
fn a_lab_file_reaches_exactly_the_right_partners_over_starttls_with_auth_and_redaction() {
    let dir = tempdir();
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth(USER, PASSWORD),
    );
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        marking: "OFFICIAL-SENSITIVE".into(),
        partners: headline_partners(),
        rules: headline_rules(),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    write_atomically(&feed_dir(dir.path()), "lab-2025-11-04.csv", headline_csv());

    // Bolton nitazene: panel + Bolton lead. Salford nitazene: panel + Salford lead + charity.
    // Wigan xylazine (warning): panel + charity; the Wigan partner wants critical only.
    let msgs = server.wait_for(7, Duration::from_secs(15));
    let processed = wait_log(&mut daemon, &["File processed", "lab-2025-11-04.csv"], WAIT);
    assert_eq!(
        field(&processed, "rows").as_deref(),
        Some("7"),
        "{processed}"
    );
    assert_eq!(
        field(&processed, "alerts").as_deref(),
        Some("3"),
        "{processed}"
    );

    let ids = alert_ids(&daemon);
    assert_eq!(ids.len(), 3, "three alerts: {ids:?}");
    let bolton = ids[&("nitazene-detected".into(), "Bolton".into())].clone();
    let salford = ids[&("nitazene-detected".into(), "Salford".into())].clone();
    let wigan = ids[&("xylazine-detected".into(), "Wigan".into())].clone();

    // Exactly who got what: one email per partner per alert, all its addresses in To.
    let panel = vec![
        "panel@example.org".to_string(),
        "panel.duty@example.org".to_string(),
    ];
    let one = |a: &str| vec![a.to_string()];
    let expected: BTreeSet<(String, Vec<String>)> = [
        (bolton.clone(), panel.clone()),
        (bolton.clone(), one("bolton.lead@example.org")),
        (salford.clone(), panel.clone()),
        (salford.clone(), one("salford.lead@example.org")),
        (salford.clone(), one("alerts@harbour.example.org")),
        (wigan.clone(), panel.clone()),
        (wigan.clone(), one("alerts@harbour.example.org")),
    ]
    .into_iter()
    .collect();
    let got: Vec<(String, Vec<String>)> = msgs
        .iter()
        .map(|m| {
            (
                m.header("X-Earlywarn-Alert").expect("X-Earlywarn-Alert"),
                m.to(),
            )
        })
        .collect();
    assert_eq!(got.len(), 7, "no extra emails: {got:?}");
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "who got what"
    );

    let mut message_ids = BTreeSet::new();
    for m in &msgs {
        let alert = m.header("X-Earlywarn-Alert").unwrap();
        // Envelope = To, under TLS, authenticated as the configured user.
        assert_eq!(
            m.rcpt_tos,
            m.to(),
            "envelope recipients are the To addresses"
        );
        assert!(m.tls, "delivered over STARTTLS");
        assert_eq!(
            m.auth_user.as_deref(),
            Some(USER),
            "authenticated with the password file (newline trimmed)"
        );
        assert_eq!(m.mail_from, "earlywarn@example.org");
        assert_eq!(m.from().as_deref(), Some("earlywarn@example.org"));
        let rule = m.header("X-Earlywarn-Rule").expect("X-Earlywarn-Rule");
        let expected_rule = if alert == wigan {
            "xylazine-detected"
        } else {
            "nitazene-detected"
        };
        assert_eq!(rule, expected_rule);
        let subject = m.subject().unwrap();
        assert!(
            subject.starts_with("OFFICIAL-SENSITIVE "),
            "marking first: {subject}"
        );
        let mid = m.message_id().expect("Message-ID");
        assert!(
            message_ids.insert(mid.clone()),
            "Message-ID {mid} used twice"
        );
        let text = m.text_body().expect("a text/plain part");
        let html = m.html_body().expect("a text/html part");
        assert!(
            text.contains(&alert),
            "the text names the alert id as reference"
        );
        assert!(
            html.contains(&alert),
            "the HTML names the alert id as reference"
        );
        assert!(
            text.starts_with("OFFICIAL-SENSITIVE"),
            "the body starts with the marking"
        );
    }

    let find = |alert: &str, to: &str| -> &Received {
        msgs.iter()
            .find(|m| {
                m.header("X-Earlywarn-Alert").as_deref() == Some(alert)
                    && m.to().contains(&to.to_string())
            })
            .unwrap_or_else(|| panic!("no email of {alert} to {to}"))
    };

    // The charity (no ISA) sees no trace of the notes anywhere, and is told fields were withheld.
    for (alert, note) in [(&salford, NOTE_SALFORD), (&wigan, NOTE_WIGAN)] {
        let m = find(alert, "alerts@harbour.example.org");
        let all = everything_of(m);
        for secret in [note, "NOTE-", "Chapel", "vinegar", "wound", "Octagon"] {
            assert!(
                !all.contains(secret),
                "charity email of {alert} leaks {secret:?}:\n{}",
                m.data
            );
        }
        let text = m.text_body().unwrap();
        let html = m.html_body().unwrap();
        assert!(
            text.contains("Withheld") && text.contains("notes"),
            "text says notes were withheld:\n{text}"
        );
        assert!(
            html.contains("Withheld") && html.contains("notes"),
            "HTML says notes were withheld:\n{html}"
        );
    }
    let charity_salford = find(&salford, "alerts@harbour.example.org");
    assert!(
        charity_salford.text_body().unwrap().contains("S-003"),
        "the charity still gets the evidence"
    );
    assert!(
        charity_salford
            .text_body()
            .unwrap()
            .contains("N-Desethylisotonitazene")
    );

    // Partners with the ISA see the notes; HTML escapes them.
    for (alert, to, note) in [
        (&bolton, "bolton.lead@example.org", NOTE_BOLTON),
        (&bolton, "panel@example.org", NOTE_BOLTON),
        (&salford, "salford.lead@example.org", NOTE_SALFORD),
        (&salford, "panel@example.org", NOTE_SALFORD),
        (&wigan, "panel@example.org", NOTE_WIGAN),
    ] {
        let m = find(alert, to);
        let text = m.text_body().unwrap();
        assert!(
            text.contains(note),
            "{to} sees the notes of {alert}:\n{text}"
        );
        assert!(
            !text.contains("Withheld"),
            "nothing withheld from {to}:\n{text}"
        );
        let html = m.html_body().unwrap();
        if note == NOTE_SALFORD {
            assert!(
                html.contains("&lt;b&gt;Chapel Street&lt;/b&gt;"),
                "notes escaped in HTML:\n{html}"
            );
            assert!(!html.contains("<b>Chapel"), "raw HTML from data:\n{html}");
        } else {
            assert!(
                html.contains(note),
                "{to} sees the notes of {alert} in HTML:\n{html}"
            );
        }
    }

    // Only the matching rows are evidence: one record per alert.
    let salford_text = find(&salford, "salford.lead@example.org")
        .text_body()
        .unwrap();
    assert!(
        salford_text.contains("S-003") && !salford_text.contains("S-004"),
        "{salford_text}"
    );
    assert!(
        find(&bolton, "bolton.lead@example.org")
            .subject()
            .unwrap()
            .contains("Bolton")
    );

    // Message-IDs differ per partner for one alert (checked globally above) and outbox is empty.
    let status = status_json(&config);
    assert_eq!(status["outbox_pending"], 0, "{status:#}");
    assert_eq!(status["outbox_failed"], 0, "{status:#}");
    stop_daemon(daemon);
}

#[test]
fn an_alert_left_in_the_outbox_by_a_crash_is_delivered_once_after_restart() {
    let dir = tempdir();
    let maildir = dir.path().join("smtp");
    // Reserve a port, then take the server away: the daemon starts with its mail server down.
    let mut server = SmtpServer::start(SmtpOptions::new().maildir(&maildir));
    server.stop();
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    write_atomically(
        &feed_dir(dir.path()),
        "lab.csv",
        csv(&[row("S-100", "Bolton", "isotonitazene", "", "n")]),
    );
    wait_log(&mut daemon, &["Delivery failed; will retry"], WAIT);
    assert!(
        feed_dir(dir.path()).join("processed/lab.csv").exists(),
        "the file was committed before delivery"
    );
    daemon.sigkill();
    assert!(daemon.wait_exit(Duration::from_secs(5)).is_some());
    drop(daemon);

    server.restart();
    let mut daemon = start_daemon(&config);
    let msgs = server.wait_for(1, Duration::from_secs(15));
    assert_eq!(msgs[0].to(), ["panel@example.org"]);
    assert!(msgs[0].text_body().unwrap().contains("S-100"));
    wait_log(&mut daemon, &["Delivered"], WAIT);
    assert!(
        wait_until(WAIT, || status_json(&config)["outbox_pending"] == 0),
        "outbox drained: {:#}",
        status_json(&config)
    );
    // Drained (above): the row is marked sent, and a sent row is never sent again.
    assert_eq!(server.messages().len(), 1, "delivered exactly once");
    assert_eq!(
        log_lines(&daemon, &["File processed"]).len(),
        1,
        "the file was not processed again"
    );
    assert_eq!(
        log_lines(&daemon, &["Alert raised"]).len(),
        1,
        "no second alert"
    );
    stop_daemon(daemon);
}

#[test]
fn a_550_answer_fails_the_delivery_after_one_attempt_and_the_daemon_carries_on() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Reject550));
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    write_atomically(
        &feed_dir(dir.path()),
        "one.csv",
        csv(&[row("S-1", "Bolton", "protonitazene", "", "n")]),
    );
    let failed = wait_log(&mut daemon, &["Delivery failed permanently"], WAIT);
    let alert = field(&failed, "alert").unwrap();

    let problem_of = |status: &serde_json::Value| -> Option<serde_json::Value> {
        status["delivery_problems"]
            .as_array()?
            .iter()
            .find(|p| p["alert_id"] == alert.as_str())
            .cloned()
    };
    let status = status_json(&config);
    let problem = problem_of(&status)
        .unwrap_or_else(|| panic!("{alert} not under delivery problems: {status:#}"));
    assert_eq!(problem["permanent"], true, "{problem:#}");
    assert_eq!(problem["attempts"], 1, "{problem:#}");
    assert_eq!(problem["partner_id"], "panel", "{problem:#}");
    assert!(
        problem["error"].as_str().unwrap().contains("550"),
        "{problem:#}"
    );
    assert_eq!(status["outbox_failed"], 1, "{status:#}");
    assert_eq!(status["outbox_pending"], 0, "{status:#}");

    // Not retried: over two retry intervals later there is still one attempt.
    assert!(
        !wait_until(Duration::from_millis(2500), || problem_of(&status_json(
            &config
        ))
        .unwrap()["attempts"]
            != 1),
        "a permanent failure was retried"
    );
    assert_eq!(server.attempt_times().len(), 1, "one MAIL FROM only");

    // The daemon is still up and still works.
    assert!(daemon.is_running());
    write_atomically(
        &feed_dir(dir.path()),
        "two.csv",
        csv(&[row("S-2", "Salford", "metonitazene", "", "n")]),
    );
    wait_log_lines(&mut daemon, &["Delivery failed permanently"], 2, WAIT);
    assert!(daemon.is_running());
    assert!(status_json(&config)["outbox_failed"] == 2);
    // `status` in text form shows it too.
    let out = earlywarn(&["status", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("FAILED") && text.contains(&alert), "{text}");
    stop_daemon(daemon);
}

#[test]
fn a_451_answer_is_retried_until_the_server_accepts() {
    let dir = tempdir();
    let mut server = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Temp451));
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);

    write_atomically(
        &feed_dir(dir.path()),
        "one.csv",
        csv(&[row("S-1", "Bolton", "protonitazene", "", "n")]),
    );
    let retry = wait_log(&mut daemon, &["Delivery failed; will retry"], WAIT);
    assert!(retry.contains("451"), "{retry}");
    assert!(server.messages().is_empty());
    let status = status_json(&config);
    let problems = status["delivery_problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{status:#}");
    assert_eq!(problems[0]["permanent"], false, "{status:#}");
    assert_eq!(status["outbox_pending"], 1, "{status:#}");

    server.restart_with(SmtpMode::Accept);
    let msgs = server.wait_for(1, Duration::from_secs(15));
    assert_eq!(msgs[0].to(), ["panel@example.org"]);
    assert!(msgs[0].text_body().unwrap().contains("S-1"));
    assert!(
        wait_until(WAIT, || {
            let s = status_json(&config);
            s["outbox_pending"] == 0 && s["outbox_failed"] == 0
        }),
        "{:#}",
        status_json(&config)
    );
    assert!(
        server.attempt_times().len() >= 2,
        "at least one refused attempt and the accepted one"
    );
    // Drained (above): the row is marked sent, and a sent row is never sent again.
    assert_eq!(server.messages().len(), 1, "delivered once");
    stop_daemon(daemon);
}

#[test]
fn send_test_email_arrives_over_starttls_and_a_bad_address_exits_1() {
    let dir = tempdir();
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth(USER, PASSWORD),
    );
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let cfg = config.to_str().unwrap();

    let out = earlywarn(&[
        "send-test-email",
        "--config",
        cfg,
        "--to",
        "duty@example.org",
    ]);
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = server.wait_for(1, WAIT);
    assert_eq!(msgs[0].rcpt_tos, ["duty@example.org"]);
    assert_eq!(msgs[0].to(), ["duty@example.org"]);
    assert!(msgs[0].tls);
    assert_eq!(msgs[0].auth_user.as_deref(), Some(USER));
    let subject = msgs[0].subject().unwrap();
    assert!(subject.starts_with("OFFICIAL-SENSITIVE"), "{subject}");
    assert!(subject.contains("TEST"), "{subject}");

    // Not an address at all.
    let out = earlywarn(&["send-test-email", "--config", cfg, "--to", "not an address"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an email address"));
    assert_eq!(server.messages().len(), 1);

    // An address the server refuses (550).
    let dir2 = tempdir();
    let rejecting = SmtpServer::start(SmtpOptions::new().mode(SmtpMode::Reject550));
    let config2 = Cfg {
        mail: smtp_mail_lines(&rejecting, dir2.path()),
        ..Cfg::default()
    }
    .write(dir2.path());
    let out = earlywarn(&[
        "send-test-email",
        "--config",
        config2.to_str().unwrap(),
        "--to",
        "nobody@example.org",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nobody@example.org"), "{stderr}");
    assert!(rejecting.messages().is_empty());
    let _ = fs::remove_dir_all(dir2.path());
}

#[test]
fn implicit_tls_works_and_tls_is_never_given_up() {
    // Implicit TLS (`tls = "tls"`) with the test CA: delivered, under TLS, authenticated.
    let dir = tempdir();
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Implicit)
            .auth(USER, PASSWORD),
    );
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&[
        "send-test-email",
        "--config",
        config.to_str().unwrap(),
        "--to",
        "duty@example.org",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = server.wait_for(1, WAIT);
    assert!(msgs[0].tls);
    assert_eq!(msgs[0].auth_user.as_deref(), Some(USER));

    // Without the test CA the server's certificate is not trusted: nothing is sent.
    let dir = tempdir();
    let server = SmtpServer::start(
        SmtpOptions::new()
            .tls(SmtpTls::Starttls)
            .auth(USER, PASSWORD),
    );
    let lines = smtp_mail_lines(&server, dir.path()).replace("ca_file = \"secrets/ca.pem\"\n", "");
    let config = Cfg {
        mail: lines,
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&[
        "send-test-email",
        "--config",
        config.to_str().unwrap(),
        "--to",
        "duty@example.org",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.messages().is_empty(), "sent to an untrusted server");

    // A server that does not offer STARTTLS: no fallback to plain text (and no password in clear).
    let dir = tempdir();
    let plain = SmtpServer::start(SmtpOptions::new());
    let secrets = dir.path().join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    fs::copy(support::ca_pem_path(), secrets.join("ca.pem")).unwrap();
    fs::write(secrets.join("smtp-password"), PASSWORD).unwrap();
    support::owner_only(&secrets.join("smtp-password"));
    let lines = format!(
        "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"secrets/ca.pem\"\nusername = \"{USER}\"\npassword_file = \"secrets/smtp-password\"\n",
        plain.port()
    );
    let config = Cfg {
        mail: lines,
        ..Cfg::default()
    }
    .write(dir.path());
    let out = earlywarn(&[
        "send-test-email",
        "--config",
        config.to_str().unwrap(),
        "--to",
        "duty@example.org",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plain.messages().is_empty(),
        "sent in plain text although starttls was configured"
    );
}

#[test]
fn data_cannot_add_headers_or_recipients() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        rules: nitazene_rule(&["panel"]).replace(
            "advice =",
            "subject = \"{{ rule.name }} in {{ group.district }} ({{ event.purchased_as }})\"\nadvice =",
        ),
        ..Cfg::default()
    }
    .write(dir.path());
    let mut daemon = start_daemon(&config);
    let evil = "Bolton\r\nBcc: attacker@evil.example\r\nX-Injected: yes";
    write_atomically(
        &feed_dir(dir.path()),
        "evil.csv",
        csv(&[row_at(
            "E-1",
            "2025-11-04T09:12:00Z",
            evil,
            "oxy\nBcc: second@evil.example",
            "protonitazene",
            "",
            "<script>alert(1)</script>",
        )]),
    );
    let msgs = server.wait_for(1, Duration::from_secs(15));
    wait_log(&mut daemon, &["Delivered"], WAIT);
    let m = &msgs[0];
    assert_eq!(m.rcpt_tos, ["panel@example.org"], "envelope");
    assert_eq!(m.to(), ["panel@example.org"]);
    let names: Vec<String> = m
        .header_names()
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    assert!(
        !names.contains(&"bcc".to_string()) && !names.contains(&"x-injected".to_string()),
        "{names:?}\n{}",
        m.data
    );
    let subject = m.subject().unwrap();
    assert!(
        !subject.contains('\n') && !subject.contains('\r'),
        "{subject:?}"
    );
    assert!(subject.contains("Bolton"), "{subject}");
    let html = m.html_body().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
    support::wait_outbox_drained(&config);
    assert_eq!(server.messages().len(), 1);
    stop_daemon(daemon);
}
