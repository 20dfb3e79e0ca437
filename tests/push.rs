//! Files over HTTP (SPEC §11) against the real daemon process: a real HTTP
//! client on loopback, a real SQLite file, a real SMTP server. What a lab
//! system and the ops team would check: the right token gets a 200 answer
//! (after the commit) and the email goes out; the same body again raises
//! nothing new; a wrong, missing or other feed's token is refused and nothing
//! of the body is kept; too big is 413, unreadable is 422 with the reasons, a
//! bad row is counted and quarantined; a hostile `X-Filename` names nothing
//! outside the feed's folders; a daemon killed between the commit and the
//! answer raises nothing new on the client's retry.

mod e2e_support;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_support::*;
use support::{Daemon, SmtpOptions, SmtpServer, owner_only, poll_until, wait_outbox_drained};

const TOKEN_A: &str = "a-token-for-the-drug-testing-feed-0123456789abcdef";
const TOKEN_B: &str = "b-token-for-the-json-lab-feed-0123456789abcdef000";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config whose `drug_testing` feed (CSV) takes pushes with [`TOKEN_A`], and a
/// second feed `json_lab` (a JSON array) with [`TOKEN_B`]; returns it and the base URL.
fn push_config(dir: &Path, mail: String, feed_extra: &str) -> (PathBuf, String) {
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    for (name, token) in [("a.token", TOKEN_A), ("b.token", TOKEN_B)] {
        // A trailing newline, as `echo TOKEN > file` leaves it: trimmed.
        fs::write(secrets.join(name), format!("{token}\n")).unwrap();
        owner_only(&secrets.join(name));
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let partners = partner("panel", &["panel@example.org"], true, &["*"], None)
        + r#"
[[feed]]
name = "json_lab"
dir = "in/json-lab"
format = "json"
id_field = "sample_id"
time_field = "tested_at"
push_token_file = "secrets/b.token"
"# + &format!("\n[web]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = Cfg {
        mail,
        partners,
        feed_extra: format!("push_token_file = \"secrets/a.token\"\n{feed_extra}"),
        ..Cfg::default()
    }
    .write(dir);
    (config, base)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: serde_json::Value,
}

fn push_to(
    base: &str,
    feed: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::blocking::Body>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut request = client()
        .post(format!("{base}/api/feeds/{feed}"))
        .header("Content-Type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the answer ({status}) is not JSON ({e}): {text}"));
    Answer {
        status,
        headers,
        json,
    }
}

fn push_csv(base: &str, token: &str, body: &str) -> Answer {
    push_to(
        base,
        "drug_testing",
        Some(token),
        "text/csv",
        body.to_string(),
        &[],
    )
}

fn nitazene_file(id: &str) -> String {
    csv(&[
        row(id, "Bolton", "isotonitazene", "", "seen at the bus station"),
        row(&format!("{id}-2"), "Bolton", "heroin", "", ""),
    ])
}

/// The names in a feed's `processed/`.
fn processed(dir: &Path) -> Vec<String> {
    names_in(&feed_dir(dir).join("processed"))
}

fn audit_rows(dir: &Path) -> Vec<earlywarn::audit::AuditEntry> {
    let store = earlywarn::store::Store::open(&dir.join("state")).unwrap();
    store.audit_since(None, 1000).unwrap()
}

/// A generated name: `TIME-LABEL-HASH.csv`.
fn assert_generated(name: &str, label: &str) {
    let parts: Vec<&str> = name.splitn(2, '-').collect();
    assert_eq!(parts[0].len(), 16, "{name}");
    assert!(parts[0].ends_with('Z'), "{name}");
    let rest = parts[1].strip_suffix(".csv").expect(name);
    let (got_label, hash) = rest.rsplit_once('-').expect(name);
    assert_eq!(got_label, label, "{name}");
    assert_eq!(hash.len(), 8, "{name}");
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
}

#[test]
fn a_push_is_answered_after_its_commit_its_email_arrives_and_the_same_body_again_raises_nothing() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    let (config, base) = push_config(dir.path(), smtp_mail_lines(&server, dir.path()), "");
    let daemon = start_daemon(&config);

    let body = nitazene_file("S-1");
    let first = push_to(
        &base,
        "drug_testing",
        Some(TOKEN_A),
        "text/csv; charset=utf-8",
        body.clone(),
        &[("X-Filename", "results-monday.csv")],
    );
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["rows"], 2);
    assert_eq!(first.json["events"], 2);
    assert_eq!(first.json["rejected_rows"], 0);
    assert_eq!(first.json["alerts"], 1);
    assert_eq!(first.json["duplicate"], false);
    let name = first.json["file"].as_str().unwrap().to_string();
    assert_generated(&name, "results-monday");
    // Answered after the commit: the file is already in processed/, as a dropped one would be,
    // and its alert in the database.
    assert_eq!(processed(dir.path()), vec![name.clone()]);
    assert_eq!(
        fs::read_to_string(feed_dir(dir.path()).join("processed").join(&name)).unwrap(),
        body
    );
    let mail = server.wait_for(1, WAIT);
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to(), ["panel@example.org"]);

    let audit = audit_rows(dir.path());
    let pushed: Vec<_> = audit.iter().filter(|e| e.action == "file_pushed").collect();
    assert_eq!(pushed.len(), 1, "{audit:?}");
    assert_eq!(pushed[0].actor, "push:drug_testing");
    assert_eq!(pushed[0].source, "127.0.0.1");
    assert_eq!(pushed[0].detail["file"], name.as_str());
    assert_eq!(pushed[0].detail["outcome"], "processed");

    // A retry after a lost answer: the same body, another name.
    let again = push_csv(&base, TOKEN_A, &body);
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json["duplicate"], true);
    assert_eq!(again.json["alerts"], 0);
    assert_eq!(processed(dir.path()).len(), 2);
    wait_outbox_drained(&config);
    assert_eq!(server.messages().len(), 1, "the retry sent a second email");
    let pushed = audit_rows(dir.path())
        .into_iter()
        .filter(|e| e.action == "file_pushed")
        .map(|e| e.detail["outcome"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(pushed, ["processed", "duplicate"]);
    // No spool left behind in the feed folder.
    assert_eq!(names_in(&feed_dir(dir.path())), ["processed", "rejected"]);
    stop_daemon(daemon);
}

#[test]
fn wrong_missing_or_another_feeds_token_is_refused_before_the_body_is_read() {
    let dir = tempdir();
    let (config, base) = push_config(dir.path(), FILE_MAIL.to_string(), "");
    let daemon = start_daemon(&config);
    let body = nitazene_file("S-2");

    let refusals = [
        (
            "drug_testing",
            Some("not-the-token-at-all-0123456789abcdef0123"),
        ),
        ("drug_testing", None),
        // Feed B's token does not open feed A.
        ("drug_testing", Some(TOKEN_B)),
        // An unknown feed: the same answer, so feeds cannot be listed by trying.
        ("no_such_feed", Some(TOKEN_A)),
    ];
    for (feed, token) in refusals {
        let answer = push_to(&base, feed, token, "text/csv", body.clone(), &[]);
        assert_eq!(answer.status, 401, "{feed} {token:?}: {}", answer.json);
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    // Nothing of the body was kept, nothing raised.
    assert_eq!(names_in(&feed_dir(dir.path())), ["processed", "rejected"]);
    assert!(processed(dir.path()).is_empty());
    assert!(names_in(&dir.path().join("mail")).is_empty());
    let status = status_json(&config);
    assert_eq!(status["outbox_pending"], 0, "{status}");
    assert!(
        audit_rows(dir.path())
            .iter()
            .all(|e| e.action != "file_pushed"),
        "a refused push was audited as a push"
    );

    // The right token, but a body of another format than the feed's: 415, nothing kept.
    let answer = push_to(
        &base,
        "drug_testing",
        Some(TOKEN_A),
        "application/json",
        "[]",
        &[],
    );
    assert_eq!(answer.status, 415, "{}", answer.json);
    assert!(
        answer.json["reasons"][0]
            .as_str()
            .unwrap()
            .contains("text/csv"),
        "{}",
        answer.json
    );
    assert!(processed(dir.path()).is_empty());

    // Refusals from one address slow it down: after a few, even the right token waits.
    for _ in 0..5 {
        let answer = push_to(&base, "drug_testing", Some("x"), "text/csv", "a", &[]);
        assert!(matches!(answer.status, 401 | 429), "{}", answer.status);
    }
    let throttled = push_csv(&base, TOKEN_A, &body);
    assert_eq!(throttled.status, 429, "{}", throttled.json);
    assert!(throttled.headers.contains_key("retry-after"));
    assert!(processed(dir.path()).is_empty());
    stop_daemon(daemon);
}

#[test]
fn too_big_is_413_unreadable_is_422_with_reasons_and_a_bad_row_is_quarantined() {
    let dir = tempdir();
    let (config, base) = push_config(dir.path(), FILE_MAIL.to_string(), "max_file_bytes = 4000\n");
    let daemon = start_daemon(&config);

    // Declared too big: refused before reading.
    let big = format!("{HEADER}\n{}", "x".repeat(5000));
    let answer = push_csv(&base, TOKEN_A, &big);
    assert_eq!(answer.status, 413, "{}", answer.json);
    // Not declared (chunked): refused as soon as it passes the limit.
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(big.clone().into_bytes()));
    let answer = push_to(
        &base,
        "drug_testing",
        Some(TOKEN_A),
        "text/csv",
        chunked,
        &[],
    );
    assert_eq!(answer.status, 413, "{}", answer.json);
    assert_eq!(names_in(&feed_dir(dir.path())), ["processed", "rejected"]);

    // A JSON file that cannot be read at all: 422, with where it went wrong.
    let answer = push_to(
        &base,
        "json_lab",
        Some(TOKEN_B),
        "application/json",
        "[{\"sample_id\": \"J-1\",\n  \"tested_at\": }]",
        &[],
    );
    assert_eq!(answer.status, 422, "{}", answer.json);
    let reason = answer.json["reasons"][0].as_str().unwrap();
    assert!(reason.contains("line 2"), "{reason}");
    let rejected = names_in(&dir.path().join("in/json-lab/rejected"));
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected.iter().any(|n| n.ends_with(".errors.txt")),
        "{rejected:?}"
    );

    // Binary garbage for a CSV feed: 422 too.
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let answer = push_to(
        &base,
        "drug_testing",
        Some(TOKEN_A),
        "text/csv",
        garbage,
        &[],
    );
    assert_eq!(answer.status, 422, "{}", answer.json);
    assert!(!answer.json["reasons"][0].as_str().unwrap().is_empty());

    // One bad row among good ones: 200, counted, its row set aside.
    let body = csv(&[
        row("S-3", "Bolton", "heroin", "", ""),
        row_at("S-4", "not a time", "Bolton", "heroin", "heroin", "", ""),
    ]);
    let answer = push_to(
        &base,
        "drug_testing",
        Some(TOKEN_A),
        "text/csv",
        body,
        &[("X-Filename", "mixed.csv")],
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["rows"], 2);
    assert_eq!(answer.json["events"], 1);
    assert_eq!(answer.json["rejected_rows"], 1);
    let name = answer.json["file"].as_str().unwrap();
    let base_name = name.to_string();
    let rejected = names_in(&feed_dir(dir.path()).join("rejected"));
    let rows_file = format!("{base_name}.rows.csv");
    assert!(rejected.contains(&rows_file), "{rejected:?}");
    let kept = fs::read_to_string(feed_dir(dir.path()).join("rejected").join(&rows_file)).unwrap();
    assert!(kept.contains("S-4") && !kept.contains("S-3"), "{kept}");
    stop_daemon(daemon);
}

/// One request over a raw socket, so the header can hold what a client library refuses to send.
fn raw_push(port: u16, x_filename: &[u8], body: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "POST /api/feeds/drug_testing HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN_A}\r\n\
         Content-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\nX-Filename: ",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(x_filename);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body.as_bytes());
    stream.write_all(&request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, json)
}

#[test]
fn a_hostile_x_filename_names_nothing_outside_the_feeds_folders() {
    let dir = tempdir();
    let (config, base) = push_config(dir.path(), FILE_MAIL.to_string(), "");
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let daemon = start_daemon(&config);

    let hostile: [(&[u8], &str); 3] = [
        (b"../../etc/passwd", "etc_passwd"),
        (b"a\tb\xff\xfe../\\x.csv", "a_b_.._x"),
        (&[b'y'; 10_000], &"y".repeat(64)),
    ];
    for (i, (header, label)) in hostile.iter().enumerate() {
        let body = csv(&[row(&format!("H-{i}"), "Bolton", "heroin", "", "")]);
        let (status, json) = raw_push(port, header, &body);
        assert_eq!(status, 200, "{json}");
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let name = json["file"].as_str().unwrap();
        assert_generated(name, label);
        assert!(processed(dir.path()).contains(&name.to_string()));
    }
    assert_eq!(processed(dir.path()).len(), 3);
    assert_eq!(names_in(&feed_dir(dir.path())), ["processed", "rejected"]);
    assert!(!dir.path().join("in/etc").exists() && !dir.path().join("etc").exists());
    stop_daemon(daemon);
}

#[test]
fn a_daemon_killed_between_the_commit_and_the_answer_raises_nothing_new_on_the_retry() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    let (config, base) = push_config(dir.path(), smtp_mail_lines(&server, dir.path()), "");
    let held = dir.path().join("committed");
    let mut daemon = Daemon::start_with(
        &config,
        &[],
        &[("EARLYWARN_TEST_PUSH_HOLD", held.to_str().unwrap())],
    );
    wait_log(&mut daemon, &["Ready"], Duration::from_secs(20));

    let body = nitazene_file("K-1");
    let first = {
        let (base, body) = (base.clone(), body.clone());
        std::thread::spawn(move || {
            client()
                .post(format!("{base}/api/feeds/drug_testing"))
                .bearer_auth(TOKEN_A)
                .header("Content-Type", "text/csv")
                .body(body)
                .send()
        })
    };
    // The daemon holds the answer once the file is committed: kill it exactly there.
    assert!(
        poll_until(WAIT, Duration::from_millis(20), || held.exists()),
        "the push was not committed; log:\n{}",
        log(&daemon)
    );
    // The alert committed before the answer: its email goes out meanwhile (and is
    // recorded as sent, so the restart does not send it again for the outbox's reasons).
    wait_outbox_drained(&config);
    assert_eq!(server.wait_for(1, WAIT).len(), 1);
    daemon.sigkill();
    daemon.wait_exit(Duration::from_secs(10));
    let lost = first.join().unwrap();
    assert!(lost.is_err() || !lost.unwrap().status().is_success());

    // The client retries the same body against the restarted daemon (its log
    // continues the first one's: wait for one more "Ready").
    let readies = log(&daemon).matches("Ready").count();
    let daemon = Daemon::start(&config);
    assert!(
        poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            log(&daemon).matches("Ready").count() > readies
        }),
        "the daemon did not start again; log:\n{}",
        log(&daemon)
    );
    let retry = push_csv(&base, TOKEN_A, &body);
    assert_eq!(retry.status, 200, "{}", retry.json);
    assert_eq!(retry.json["duplicate"], true);
    assert_eq!(retry.json["alerts"], 0);
    wait_outbox_drained(&config);
    assert_eq!(server.messages().len(), 1, "the alert went out once");
    stop_daemon(daemon);
}

#[test]
fn a_token_changed_on_disk_counts_from_the_reload_on() {
    let dir = tempdir();
    let (config, base) = push_config(dir.path(), FILE_MAIL.to_string(), "");
    let mut daemon = start_daemon(&config);
    let body = csv(&[row("R-1", "Bolton", "heroin", "", "")]);
    assert_eq!(push_csv(&base, TOKEN_A, &body).status, 200);

    let rotated = "a-rotated-token-after-a-leak-0123456789abcdef0123";
    let file = dir.path().join("secrets/a.token");
    fs::write(&file, rotated).unwrap();
    owner_only(&file);
    daemon.sighup();
    wait_log(&mut daemon, &["Rules reloaded"], WAIT);

    let body = csv(&[row("R-2", "Bolton", "heroin", "", "")]);
    assert_eq!(
        push_csv(&base, TOKEN_A, &body).status,
        401,
        "the old token still opens the feed"
    );
    let answer = push_csv(&base, rotated, &body);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["events"], 1);
    stop_daemon(daemon);
}

/// A workbook as a lab's system exports it (rust_xlsxwriter): a header row,
/// a nitazene sample with a real date cell, and a text id with a leading zero.
fn nitazene_workbook() -> Vec<u8> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut book = Workbook::new();
    let ws = book.add_worksheet();
    for (c, name) in ["sample_id", "tested_at", "district", "substances_major"]
        .iter()
        .enumerate()
    {
        ws.write_string(0, c as u16, *name).unwrap();
    }
    let date = Format::new().set_num_format("yyyy-mm-dd hh:mm");
    let tested = ExcelDateTime::from_ymd(2025, 7, 4)
        .unwrap()
        .and_hms(11, 30, 0)
        .unwrap();
    ws.write_string(1, 0, "0100").unwrap();
    ws.write_datetime_with_format(1, 1, tested, &date).unwrap();
    ws.write_string(1, 2, "Bolton").unwrap();
    ws.write_string(1, 3, "protonitazene").unwrap();
    book.save_to_buffer().unwrap()
}

#[test]
fn a_pushed_workbook_goes_through_the_sheet_reader_and_raises_its_alert() {
    let dir = tempdir();
    let server = SmtpServer::start(SmtpOptions::new());
    let secrets = dir.path().join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    fs::write(secrets.join("x.token"), format!("{TOKEN_B}\n")).unwrap();
    owner_only(&secrets.join("x.token"));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let rules = format!(
        r#"{NITAZENE_LISTS}
[[rule]]
id = "nitazene-in-workbook"
name = "Nitazene detected in a tested sample"
feed = "xlsx_lab"
kind = "match"
when = 'substances_major in nitazenes'
severity = "critical"
notify = ["panel"]
"#
    );
    let partners = partner("panel", &["panel@example.org"], true, &["*"], None)
        + r#"
[[feed]]
name = "xlsx_lab"
dir = "in/xlsx-lab"
format = "xlsx"
id_field = "sample_id"
time_field = "tested_at"
district_field = "district"
push_token_file = "secrets/x.token"
"# + &format!("\n[web]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = Cfg {
        mail: smtp_mail_lines(&server, dir.path()),
        partners,
        rules,
        ..Cfg::default()
    }
    .write(dir.path());
    let daemon = start_daemon(&config);

    const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
    // A CSV body on the workbook feed says what it is not.
    let wrong = push_to(&base, "xlsx_lab", Some(TOKEN_B), "text/csv", "a,b\n", &[]);
    assert_eq!(wrong.status, 415, "{}", wrong.json);

    // Made once: a workbook's bytes carry the time it was made, and a retry sends the same bytes.
    let workbook = nitazene_workbook();
    let answer = push_to(
        &base,
        "xlsx_lab",
        Some(TOKEN_B),
        XLSX,
        workbook.clone(),
        &[("X-Filename", "results.xlsx")],
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["rows"], 1);
    assert_eq!(answer.json["events"], 1);
    assert_eq!(answer.json["alerts"], 1);
    let name = answer.json["file"].as_str().unwrap();
    assert!(name.ends_with(".xlsx"), "{name}");
    assert!(
        dir.path()
            .join("in/xlsx-lab/processed")
            .join(name)
            .is_file(),
        "the workbook is kept in processed/ as {name}"
    );
    let mail = server.wait_for(1, WAIT);
    let text = mail[0].text_body().expect("a text part");
    // The text id kept its leading zero; the date cell is a local time.
    assert!(text.contains("0100"), "{text}");
    assert!(text.contains("Bolton"), "{text}");
    assert!(text.contains("11:30"), "{text}");

    // The same workbook again is a duplicate: nothing new.
    let again = push_to(
        &base,
        "xlsx_lab",
        Some(TOKEN_B),
        XLSX,
        nitazene_workbook(),
        &[],
    );
    assert_eq!(again.json["duplicate"], true, "{}", again.json);
    wait_outbox_drained(&config);
    assert_eq!(server.messages().len(), 1);
    stop_daemon(daemon);
}
