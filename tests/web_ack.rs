//! The acknowledgement page and the lifecycle on the console (SPEC §10, §9),
//! against the real daemon in-process with `[web]`, a real SMTP server on
//! loopback (aiosmtpd), a real SQLite file and a real HTTP client.
//!
//! What a partner would check, with the link taken out of its real email:
//! opening the link records nothing (the database is byte for byte the same);
//! a POST without the page's form token, with another page's, from another
//! site, or to a link with one character changed records nothing; pressing
//! the button records once and pressing it again changes nothing; the page of
//! a partner without the ISA never shows the value its email withheld. What a
//! reviewer would check: an update and a withdrawal made on the alert's page
//! reach every partner, threaded under its first email, and a viewer may do
//! neither.

mod e2e_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_support::*;
use earlywarn::accounts::{self, NewAccount, Role};
use earlywarn::audit::Actor;
use earlywarn::store::Store;
use support::in_process::InProcess;
use support::{Received, SmtpOptions, SmtpServer, wait_outbox_drained, write_atomically};

const PASSWORD: &str = "correct horse battery staple";

/// In the sensitive `notes` field: never on the charity's page (no ISA).
const MARKER: &str = "WITHHELD-MARKER-7741";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

type Reply = (u16, reqwest::header::HeaderMap, String);

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn reply(resp: reqwest::blocking::Response) -> Reply {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().unwrap())
}

fn get(url: &str) -> Reply {
    reply(client().get(url).send().unwrap())
}

/// A POST of `fields` to `url`, with the headers given (none: as a mail
/// client's browser that sends no `Origin` does).
fn post(url: &str, headers: &[(&str, &str)], fields: &[(&str, &str)]) -> Reply {
    let mut req = client().post(url).form(fields);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    dir: tempfile::TempDir,
    smtp: SmtpServer,
    config: PathBuf,
    base: String,
    daemon: InProcess,
    /// The alert's id, and the first email each partner got (bolton, charity).
    id: String,
    bolton: Received,
    charity: Received,
}

/// The daemon with the console, one nitazene alert sent by SMTP to
/// `bolton` (ISA, Bolton) and `charity` (no ISA), both drained.
fn setup() -> Setup {
    let dir = tempdir();
    let smtp = SmtpServer::start(SmtpOptions::new());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let partners = partner("bolton", &["bolton@example.org"], true, &["Bolton"], None)
        + &partner("charity", &["charity@example.org"], false, &["*"], None)
        + &partner("panel", &["panel@example.org"], true, &["*"], None)
        + &format!("[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n");
    let config = Cfg {
        mail: smtp_mail_lines(&smtp, dir.path()),
        partners,
        rules: nitazene_rule(&["bolton", "charity"]),
        ..Cfg::default()
    }
    .write(dir.path());
    let daemon = InProcess::start_ready(&config);
    write_atomically(
        &feed_dir(dir.path()),
        "results.csv",
        csv(&[row("S-1", "Bolton", "isotonitazene", "", MARKER)]),
    );
    let mails = smtp.wait_for(2, WAIT);
    wait_outbox_drained(&config);
    let first_to = |address: &str| {
        mails
            .iter()
            .find(|m| m.rcpt_tos == [address])
            .unwrap_or_else(|| panic!("no email to {address}"))
            .clone()
    };
    let bolton = first_to("bolton@example.org");
    let charity = first_to("charity@example.org");
    let id = bolton.header("X-Earlywarn-Alert").unwrap();
    Setup {
        dir,
        smtp,
        config,
        base,
        daemon,
        id,
        bolton,
        charity,
    }
}

/// The acknowledgement link of an email's text part.
fn ack_link(mail: &Received) -> String {
    let text = mail.text_body().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Confirm you have received this: "))
        .unwrap_or_else(|| panic!("no acknowledgement line in:\n{text}"))
        .trim()
        .to_string()
}

/// The `name="form" value="…"` of an acknowledgement page.
fn page_form_token(page: &str) -> String {
    let pattern = "name=\"form\" value=\"";
    let start = page
        .find(pattern)
        .unwrap_or_else(|| panic!("no form on:\n{page}"))
        + pattern.len();
    let end = start + page[start..].find('"').unwrap();
    page[start..end].to_string()
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("state/earlywarn.db")
}

/// Every row of every table, as text: what "the database is unchanged" means.
fn snapshot(dir: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        db_path(dir),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = String::new();
    for table in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY rowid"))
            .or_else(|_| conn.prepare(&format!("SELECT * FROM \"{table}\"")))
            .unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect();
            out += &format!("{table}: {}\n", values.join(" | "));
        }
    }
    out
}

fn acks(dir: &Path, id: &str) -> Vec<earlywarn::store::lifecycle::AckRow> {
    Store::open(&dir.join("state"))
        .unwrap()
        .acks_of(id)
        .unwrap()
}

fn audited(dir: &Path, id: &str, action: &str) -> usize {
    Store::open(&dir.join("state"))
        .unwrap()
        .audit_of_alert(id)
        .unwrap()
        .iter()
        .filter(|e| e.action == action)
        .count()
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

/// `token` with one character changed, in the middle.
fn tampered(url: &str) -> String {
    let mut bytes = url.to_string().into_bytes();
    let i = bytes.len() - 20;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_link_from_a_real_email_records_only_when_its_button_is_pressed_and_only_once() {
    let s = setup();
    let dir = s.dir.path();
    let bolton_url = ack_link(&s.bolton);
    let charity_url = ack_link(&s.charity);
    assert!(
        bolton_url.starts_with(&format!("{}/ack/", s.base)),
        "{bolton_url}"
    );
    assert_ne!(bolton_url, charity_url, "one link per partner");

    // Opening the link (a person, or a mail scanner) records nothing.
    let before = snapshot(dir);
    let (status, headers, page) = get(&bolton_url);
    assert_eq!(status, 200, "{page}");
    assert_eq!(header(&headers, "content-security-policy"), CSP);
    assert_eq!(header(&headers, "x-frame-options"), "DENY");
    assert!(page.contains("Confirm receipt"), "{page}");
    assert!(page.contains("id=\"ack-name\""), "{page}");
    assert!(page.contains("Partner bolton"), "who it is for: {page}");
    assert!(page.contains(&s.id), "{page}");
    assert!(page.contains("isotonitazene"), "the evidence: {page}");
    assert!(page.contains(MARKER), "bolton has the ISA: {page}");
    assert!(!page.contains("<script"), "no script: {page}");
    assert!(!page.contains("http-equiv=\"refresh\""), "no auto-submit");
    let bolton_form = page_form_token(&page);
    for _ in 0..3 {
        assert_eq!(get(&bolton_url).0, 200);
    }
    assert_eq!(snapshot(dir), before, "a GET changed the database");

    // The charity has no ISA: its page never shows the withheld note.
    let (status, _, charity_page) = get(&charity_url);
    assert_eq!(status, 200);
    assert!(!charity_page.contains(MARKER), "{charity_page}");
    assert!(
        charity_page.contains("Withheld from your organisation: notes"),
        "{charity_page}"
    );
    assert!(charity_page.contains("Partner charity"), "{charity_page}");
    let charity_form = page_form_token(&charity_page);

    // Refused, each recording nothing: no form token, another page's, a
    // foreign origin, a link with one character changed.
    let (status, _, body) = post(&bolton_url, &[], &[("name", "Scanner")]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("open the link again"), "{body}");
    let (status, _, _) = post(&bolton_url, &[], &[("form", &charity_form)]);
    assert_eq!(status, 422, "the charity page's token is not bolton's");
    let (status, _, _) = post(&bolton_url, &[], &[("form", "1764590000.AAAA")]);
    assert_eq!(status, 422, "a made-up token");
    let (status, headers, body) = post(
        &bolton_url,
        &[("origin", "https://evil.example")],
        &[("form", &bolton_form)],
    );
    assert_eq!(status, 403, "a foreign origin");
    assert_eq!(header(&headers, "content-security-policy"), CSP);
    assert!(body.contains("not recorded"), "{body}");
    let (status, _, _) = post(
        &bolton_url,
        &[("referer", "https://evil.example/page")],
        &[("form", &bolton_form)],
    );
    assert_eq!(status, 403, "a foreign referer");
    let forged = tampered(&bolton_url);
    let (status, headers, body) = get(&forged);
    assert_eq!(status, 404, "{body}");
    assert_eq!(header(&headers, "content-security-policy"), CSP);
    assert!(body.contains("This link is not valid"), "{body}");
    assert!(
        !body.contains(&s.id),
        "says nothing about the alert: {body}"
    );
    let (status, _, body) = post(&forged, &[], &[("form", &bolton_form)]);
    assert_eq!(status, 404, "{body}");
    // A name over 100 characters: the page again, nothing recorded.
    let long = "N".repeat(101);
    let (status, _, body) = post(&bolton_url, &[], &[("form", &bolton_form), ("name", &long)]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("longer than 100 characters"), "{body}");
    assert!(body.contains("Confirm receipt"), "the form again: {body}");
    assert_eq!(snapshot(dir), before, "a refused POST changed the database");

    // Pressed, from a browser that sends no Origin (a mail client's): recorded once.
    let (status, _, body) = post(
        &bolton_url,
        &[],
        &[("form", &bolton_form), ("name", "J Smith")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Confirmed, thank you"), "{body}");
    let recorded = acks(dir, &s.id);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].partner_id, "bolton");
    assert_eq!(recorded[0].name.as_deref(), Some("J Smith"));
    assert_eq!(audited(dir, &s.id, "acknowledge"), 1);
    let after_first = snapshot(dir);

    // Pressed again (and from the console's own origin): nothing changes.
    let (status, _, body) = post(
        &bolton_url,
        &[("origin", &s.base)],
        &[("form", &bolton_form), ("name", "Someone Else")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("already confirmed by J Smith at"), "{body}");
    assert_eq!(
        snapshot(dir),
        after_first,
        "a second press changed the database"
    );
    let (_, _, page) = get(&bolton_url);
    assert!(page.contains("already confirmed by J Smith at"), "{page}");
    assert!(
        !page.contains("id=\"confirm\""),
        "no button once confirmed: {page}"
    );

    // The alert's page shows who confirmed, when, and who has not yet.
    let store = Store::open(&dir.join("state")).unwrap();
    accounts::add(
        &store,
        &NewAccount {
            name: "chair".into(),
            display: Some("Dr Chair".into()),
            role: Role::Admin,
            partner: None,
            password: PASSWORD.into(),
        },
        &Actor::unix(None).unwrap(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    let chair = Console::login(&s.base, "chair");
    let (_, _, alert_page) = chair.get(&format!("/alerts/{}", s.id));
    let acks_list = section(&alert_page, "id=\"acks\"", "</ul>");
    assert!(
        acks_list.contains("Partner bolton") && acks_list.contains("confirmed receipt by J Smith"),
        "{acks_list}"
    );
    assert!(
        acks_list.contains("Partner charity")
            && acks_list.contains("(charity)</span>: <strong>not confirmed yet</strong>"),
        "{acks_list}"
    );
    s.daemon.stop().unwrap();
}

/// The text of `page` from `start` to the next `end`.
fn section<'p>(page: &'p str, start: &str, end: &str) -> &'p str {
    let from = page
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in:\n{page}"));
    let to = from + page[from..].find(end).unwrap();
    &page[from..to]
}

/// A logged-in browser, as far as HTTP goes.
struct Console {
    base: String,
    cookie: String,
    csrf: String,
}

impl Console {
    fn login(base: &str, name: &str) -> Console {
        let (status, headers, body) = post(
            &format!("{base}/login"),
            &[("origin", base)],
            &[("username", name), ("password", PASSWORD), ("next", "/")],
        );
        assert_eq!(status, 303, "login as {name}: {body}");
        let cookie = header(&headers, "set-cookie")
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut c = Console {
            base: base.to_string(),
            cookie,
            csrf: String::new(),
        };
        let (status, _, page) = c.get("/");
        assert_eq!(status, 200, "{page}");
        let pattern = "name=\"csrf\" value=\"";
        let start = page.find(pattern).unwrap() + pattern.len();
        c.csrf = page[start..start + page[start..].find('"').unwrap()].to_string();
        c
    }

    fn get(&self, path: &str) -> Reply {
        reply(
            client()
                .get(format!("{}{path}", self.base))
                .header("cookie", &self.cookie)
                .send()
                .unwrap(),
        )
    }

    /// A POST with the session's token, from the console's origin.
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        post(
            &format!("{}{path}", self.base),
            &[("origin", &self.base), ("cookie", &self.cookie)],
            &all,
        )
    }
}

fn add_account(dir: &Path, name: &str, role: Role, partner: Option<&str>) {
    let store = Store::open(&dir.join("state")).unwrap();
    let new = NewAccount {
        name: name.to_string(),
        display: Some(format!("Dr {name}")),
        role,
        partner: partner.map(str::to_string),
        password: PASSWORD.to_string(),
    };
    accounts::add(
        &store,
        &new,
        &Actor::unix(None).unwrap(),
        jiff::Timestamp::now(),
    )
    .unwrap();
}

#[test]
fn update_and_withdraw_on_the_console_reach_every_partner_threaded_and_a_viewer_may_not() {
    let s = setup();
    let dir = s.dir.path();
    add_account(dir, "chair", Role::Admin, None);
    add_account(dir, "watcher", Role::Viewer, Some("charity"));
    add_account(dir, "reviewer", Role::Reviewer, Some("panel"));
    let update_path = format!("/alerts/{}/update", s.id.to_lowercase());
    let withdraw_path = format!("/alerts/{}/withdraw", s.id);

    // A viewer, and a reviewer of a partner not in the rule's `review`: 403, nothing sent.
    for name in ["watcher", "reviewer"] {
        let who = Console::login(&s.base, name);
        let (_, _, page) = who.get(&format!("/alerts/{}", s.id));
        assert!(!page.contains("id=\"update\""), "{name}: {page}");
        let (status, _, body) = who.post(&update_path, &[("text", "Not mine to say.")]);
        assert_eq!(status, 403, "{name}: {body}");
        let (status, _, _) = who.post(&withdraw_path, &[("reason", "Not mine.")]);
        assert_eq!(status, 403, "{name}");
    }
    let chair = Console::login(&s.base, "chair");
    // Without the form token: refused.
    let (status, _, _) = post(
        &format!("{}{update_path}", s.base),
        &[("origin", &s.base), ("cookie", &chair.cookie)],
        &[("text", "No token.")],
    );
    assert_eq!(status, 403);
    assert_eq!(audited(dir, &s.id, "update"), 0);

    let (_, _, page) = chair.get(&format!("/alerts/{}", s.id));
    for id in [
        "id=\"update-text\"",
        "id=\"update\"",
        "id=\"withdraw-reason\"",
        "id=\"withdraw\"",
    ] {
        assert!(page.contains(id), "{id}: {page}");
    }
    // A textarea's line breaks arrive as CRLF.
    let (status, headers, body) = chair.post(
        &update_path,
        &[("text", "Lab confirms: isotonitazene.\r\nStrength: high.")],
    );
    assert_eq!(status, 303, "{body}");
    let back = header(&headers, "location").to_string();
    assert_eq!(back, format!("/alerts/{}?done=updated#flash", s.id));
    let (_, _, done) = chair.get(back.trim_end_matches("#flash"));
    assert!(done.contains("id=\"flash\""), "{done}");
    assert!(done.contains("Update sent"), "{done}");

    let (status, headers, body) = chair.post(
        &withdraw_path,
        &[("reason", "The result was for another sample.")],
    );
    assert_eq!(status, 303, "{body}");
    assert_eq!(
        header(&headers, "location"),
        format!("/alerts/{}?done=withdrawn#flash", s.id)
    );
    let (_, _, done) = chair.get(&format!("/alerts/{}?done=withdrawn", s.id));
    assert!(done.contains("Withdrawn: every partner"), "{done}");
    assert!(
        !done.contains("id=\"update\""),
        "withdrawn: no forms any more"
    );
    let (status, _, body) = chair.post(&update_path, &[("text", "More.")]);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("withdrawn"), "{body}");

    let mails = s.smtp.wait_for(6, WAIT);
    wait_outbox_drained(&s.config);
    assert_eq!(mails.len(), 6, "two alerts, two updates, two withdrawals");
    for first in [&s.bolton, &s.charity] {
        let address = &first.rcpt_tos[0];
        let parent = format!("<{}>", first.message_id().unwrap());
        let subject = first.subject().unwrap();
        let later: Vec<&Received> = mails
            .iter()
            .filter(|m| m.rcpt_tos == first.rcpt_tos && m.seq != first.seq)
            .collect();
        let subjects: Vec<String> = later.iter().map(|m| m.subject().unwrap()).collect();
        assert_eq!(
            subjects,
            [
                format!("UPDATE 1: {subject}"),
                format!("WITHDRAWN: {subject}")
            ],
            "{address}"
        );
        for mail in &later {
            assert_eq!(
                mail.header_raw("In-Reply-To").unwrap().trim(),
                parent,
                "{address}"
            );
            assert_eq!(
                mail.header_raw("References").unwrap().trim(),
                parent,
                "{address}"
            );
            assert_eq!(mail.header("X-Earlywarn-Alert").unwrap(), s.id);
            assert!(!mail.data.contains(MARKER), "{address}: {}", mail.data);
        }
        let text = later[0].text_body().unwrap();
        assert!(
            text.contains("Lab confirms: isotonitazene.") && text.contains("Strength: high."),
            "{text}"
        );
        assert!(
            later[1]
                .text_body()
                .unwrap()
                .contains("The result was for another sample.")
        );
    }
    let history = Store::open(&dir.join("state"))
        .unwrap()
        .audit_of_alert(&s.id)
        .unwrap();
    let by: Vec<(&str, &str)> = history
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert!(by.contains(&("update", "web:chair")), "{by:?}");
    assert!(by.contains(&("withdraw", "web:chair")), "{by:?}");
    s.daemon.stop().unwrap();
}
