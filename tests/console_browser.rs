//! The console in a real browser (headless Chromium over WebDriver, see
//! `tests/support/browser.rs`): what a panel member sees and does.
//!
//! The first test proves the harness itself on a page served by the console's
//! own listener.

#[path = "support/browser.rs"]
mod browser;
mod support;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use browser::Browser;
use tokio_util::sync::CancellationToken;

/// Serves `page` at `/` and `wide` at `/wide` on a loopback port with the console's listener.
async fn serve_pages() -> (String, CancellationToken) {
    const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>harness</title></head>
<body><h1 id="heading">Review queue</h1>
<form><label for="advice">Advice</label><textarea id="advice" name="advice"></textarea></form>
<p id="echo"></p></body></html>"#;
    const WIDE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>wide</title></head>
<body><table style="width: 700px"><tr><td>a table too wide for a phone</td></tr></table></body></html>"#;
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/wide", get(|| async { Html(WIDE) }));
    let listener = earlywarn::web::listener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        earlywarn::web::listener::serve(listener, None, 8, app, token)
            .await
            .unwrap()
    });
    (url, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_opens_a_page_reads_it_types_and_measures_its_width() {
    let (url, shutdown) = serve_pages().await;
    let browser = Browser::start(400).await;
    browser.goto(&url).await;
    assert_eq!(browser.text("#heading").await, "Review queue");
    browser.fill("advice", "Test before use").await;
    let typed = browser
        .find("#advice")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(typed, "Test before use");
    assert!(
        browser.has_no_horizontal_scroll().await,
        "{:?}",
        browser.widths().await
    );

    // The check sees a page that is too wide for a phone, and the same page fits a desk.
    browser.goto(&format!("{url}/wide")).await;
    let (page, window) = browser.widths().await;
    assert!(
        page > window,
        "a 700 px table fits 400 px? {page} <= {window}"
    );
    browser.set_width(1000).await;
    assert!(
        browser.has_no_horizontal_scroll().await,
        "{:?}",
        browser.widths().await
    );

    let shot = tempfile::tempdir().unwrap();
    let path = shot.path().join("page.png");
    browser.screenshot(&path).await;
    assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    browser.close().await;
    shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// The real daemon with [web] (issue 13): a panel member in a real browser
// ---------------------------------------------------------------------------------------------

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Daemon, SmtpOptions, SmtpServer, write_atomically};

const WAIT: Duration = Duration::from_secs(30);
const REVIEWER_PASSWORD: &str = "correct horse battery staple";
const VIEWER_PASSWORD: &str = "viewer's own long password";

/// A value from a feed built to break a page: markup, and a word far wider than a phone.
fn hostile_value() -> String {
    format!(
        "\"><img src=x onerror=alert(1)><script>alert(2)</script>{}",
        "X".repeat(300)
    )
}

/// The daemon with a console, a mail server, two accounts and one draft in review.
struct Console {
    dir: tempfile::TempDir,
    config: PathBuf,
    smtp: SmtpServer,
    daemon: Option<Daemon>,
    /// `http://127.0.0.1:PORT`, the console's `public_url`.
    url: String,
    /// The draft's alert id, from the panel's email.
    id: String,
}

impl Console {
    fn start() -> Console {
        let dir = tempfile::tempdir().unwrap();
        let smtp = SmtpServer::start(SmtpOptions::new());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let config = write_config(dir.path(), &smtp, port);
        users_add(
            &config,
            &[
                "ana",
                "--role",
                "reviewer",
                "--partner",
                "panel",
                "--display",
                "Dr Ana Reviewer",
            ],
            REVIEWER_PASSWORD,
        );
        users_add(
            &config,
            // Not tied to a partner, so it sees the draft (a partner's viewer sees only what it got).
            &["vic", "--role", "viewer", "--display", "Vic Viewer"],
            VIEWER_PASSWORD,
        );
        let mut daemon = Daemon::start(&config);
        daemon.wait_for_log("Ready", WAIT);
        let t = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
        write_atomically(
            &dir.path().join("in/drug"),
            "results.csv",
            format!(
                "sample_id,tested_at,district,substances_major,sold_as,notes\n\
                 S1,{t},Bolton,heroin;protonitazene,\"{}\",seized near the park\n",
                hostile_value().replace('"', "\"\"")
            ),
        );
        let drafts = smtp.wait_for(1, WAIT);
        support::wait_outbox_drained(&config);
        assert_eq!(drafts[0].to(), ["panel@example.org"]);
        let id = drafts[0].header("X-Earlywarn-Alert").unwrap();
        Console {
            dir,
            config,
            smtp,
            daemon: Some(daemon),
            url,
            id,
        }
    }

    fn alert_status(&self) -> String {
        let db = rusqlite::Connection::open(self.dir.path().join("state/earlywarn.db")).unwrap();
        db.query_row("SELECT status FROM alerts WHERE id = ?1", [&self.id], |r| {
            r.get(0)
        })
        .unwrap()
    }

    /// Logs in through the form, as a person does, and waits for the page after it.
    async fn log_in(&self, browser: &Browser, name: &str, password: &str) {
        browser.goto(&format!("{}/login", self.url)).await;
        browser.fill("username", name).await;
        browser.fill("password", password).await;
        browser.click("#login").await;
        // The queue (or the page asked for) has the logout button; the login page has none.
        browser.find("#logout").await;
    }

    /// The HTTP status of the page the browser shows now.
    async fn page_status(browser: &Browser) -> u64 {
        browser
            .client()
            .execute(
                "return performance.getEntriesByType('navigation')[0].responseStatus",
                vec![],
            )
            .await
            .unwrap()
            .as_u64()
            .unwrap()
    }

    fn stop(mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.sigterm();
            assert!(daemon.wait_exit(WAIT).unwrap().success());
        }
    }
}

fn write_config(dir: &Path, smtp: &SmtpServer, web_port: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("rules/rules.toml"),
        r#"
[lists]
nitazenes = ["protonitazene"]

[[rule]]
id = "nitazene-detected"
name = "Nitazene detected"
feed = "drug_testing"
when = 'substances_major in nitazenes'
severity = "warning"
review = ["panel"]
notify = ["bolton", "charity"]
advice = "Carry naloxone."
"#,
    )
    .unwrap();
    let config = format!(
        r#"
[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
settle = "1s"
timezone = "Europe/London"

[web]
listen = "127.0.0.1:{web_port}"
public_url = "http://127.0.0.1:{web_port}"

[mail]
from = "GM Early Warning <earlywarn@example.org>"
{mail}
retry_initial = "1s"
retry_max = "2s"
timeout = "5s"

[[feed]]
name = "drug_testing"
dir = "in/drug"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";" }}
sensitive = ["notes"]

[[partner]]
id = "panel"
name = "Drug Alert Panel"
emails = ["panel@example.org"]
isa = true

[[partner]]
id = "bolton"
name = "Bolton lead"
emails = ["bolton@example.org"]
isa = true
districts = ["Bolton"]

[[partner]]
id = "charity"
name = "Street charity"
emails = ["charity@example.org"]
"#,
        mail = smtp.mail_config(dir)
    );
    let path = dir.join("earlywarn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `earlywarn users add ARGS --password-stdin --config CONFIG`, the password on stdin.
fn users_add(config: &Path, args: &[&str], password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_earlywarn"))
        .args(["users", "add"])
        .args(args)
        .arg("--password-stdin")
        .arg("--config")
        .arg(config)
        .env_remove("EARLYWARN_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "users add {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_edits_the_advice_leaves_a_partner_out_and_approves() {
    let console = Console::start();
    let browser = Browser::start(1000).await;
    console.log_in(&browser, "ana", REVIEWER_PASSWORD).await;
    // From the queue to the draft, by its link.
    browser
        .click(&format!("a[href$=\"/alerts/{}\"]", console.id))
        .await;
    browser
        .fill("advice", "Test before use.\nNever use alone.")
        .await;
    let charity = "input[name=partner][value=charity]";
    assert!(
        browser.find(charity).await.is_selected().await.unwrap(),
        "every notify partner starts ticked"
    );
    browser.click(charity).await;
    browser.click("#approve").await;
    let flash = browser.text("#flash").await;
    assert!(flash.to_lowercase().contains("approved"), "{flash}");
    assert_eq!(console.alert_status(), "approved");

    console.smtp.wait_for(2, WAIT);
    support::wait_outbox_drained(&console.config);
    let mails = console.smtp.messages();
    assert_eq!(
        mails.len(),
        2,
        "the draft, then bolton only: charity was left out"
    );
    let approved = &mails[1];
    assert_eq!(approved.to(), ["bolton@example.org"]);
    let text = approved.text_body().unwrap().replace("\r\n", "\n");
    assert!(
        text.contains("Assessed and approved by Dr Ana Reviewer (Drug Alert Panel) on "),
        "{text}"
    );
    assert!(
        text.contains("Test before use.\nNever use alone."),
        "{text}"
    );
    assert!(!text.contains("Carry naloxone."), "{text}");
    let html = approved.html_body().unwrap();
    assert!(
        html.contains("Assessed and approved by Dr Ana Reviewer (Drug Alert Panel) on "),
        "{html}"
    );
    assert!(
        !mails
            .iter()
            .any(|m| m.to().contains(&"charity@example.org".to_string()))
    );
    browser.close().await;
    console.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dismissing_needs_a_reason_and_with_one_closes_the_draft() {
    let console = Console::start();
    let browser = Browser::start(1000).await;
    console.log_in(&browser, "ana", REVIEWER_PASSWORD).await;
    let page = format!("{}/alerts/{}", console.url, console.id);
    browser.goto(&page).await;

    // No reason: the browser's `required` keeps the form from going; nothing changes.
    browser.click("#dismiss").await;
    assert_eq!(browser.current_url().await, page);
    assert_eq!(console.alert_status(), "in_review");
    // The server refuses it too, without the browser's help.
    browser
        .client()
        .execute(
            "for (const f of document.querySelectorAll('#reason')) { f.removeAttribute('required'); f.removeAttribute('minlength'); }",
            vec![],
        )
        .await
        .unwrap();
    browser.click("#dismiss").await;
    browser.wait_for_url(&format!("{page}/dismiss")).await;
    let status = Console::page_status(&browser).await;
    assert!((400..500).contains(&status), "refused with {status}");
    let said = browser.text("main").await;
    assert!(said.contains("reason"), "the refusal says why: {said}");
    assert_eq!(console.alert_status(), "in_review");

    browser.goto(&page).await;
    browser.fill("reason", "Lab result not confirmed").await;
    browser.click("#dismiss").await;
    let flash = browser.text("#flash").await;
    assert!(flash.to_lowercase().contains("dismissed"), "{flash}");
    assert_eq!(console.alert_status(), "dismissed");
    support::wait_outbox_drained(&console.config);
    assert_eq!(
        console.smtp.messages().len(),
        1,
        "a dismissal sends nothing"
    );
    browser.close().await;
    console.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_gets_no_decision_form_and_a_forged_approval_is_refused() {
    let console = Console::start();
    let browser = Browser::start(1000).await;
    console.log_in(&browser, "vic", VIEWER_PASSWORD).await;
    let page = format!("{}/alerts/{}", console.url, console.id);
    browser.goto(&page).await;
    let heading = browser.text("h1").await;
    assert!(
        heading.contains(&console.id),
        "the viewer sees the alert: {heading}"
    );
    for control in ["#approve", "#dismiss", "#advice", "#reason"] {
        assert!(
            !browser.exists(control).await,
            "a viewer is offered {control}"
        );
    }

    // A form the page does not offer, posted from the viewer's own session with every
    // hidden field it holds (its CSRF token among them), same origin.
    let forge = format!(
        "const f = document.createElement('form');
         f.method = 'post'; f.action = '/alerts/{}/approve';
         for (const i of document.querySelectorAll('input[type=hidden]')) f.appendChild(i.cloneNode());
         document.body.appendChild(f); f.submit();",
        console.id
    );
    browser.client().execute(&forge, vec![]).await.unwrap();
    browser.wait_for_url(&format!("{page}/approve")).await;
    assert_eq!(Console::page_status(&browser).await, 403);
    assert_eq!(console.alert_status(), "in_review");
    support::wait_outbox_drained(&console.config);
    assert_eq!(console.smtp.messages().len(), 1, "only the draft went out");
    browser.close().await;
    console.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_fits_a_phone_with_a_hostile_feed_value_on_it() {
    let console = Console::start();
    let browser = Browser::start(400).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let check = |name: &'static str| {
        let browser = &browser;
        let shots = &shots;
        async move {
            browser
                .screenshot(&shots.join(format!("{name}-400.png")))
                .await;
            let (page, window) = browser.widths().await;
            assert!(
                page <= window,
                "{name} scrolls sideways at 400 px: {page} > {window}"
            );
            // The hostile value is text on the page, never markup.
            assert!(
                !browser.exists("img[onerror]").await,
                "{name}: an injected <img>"
            );
            assert!(
                !browser.exists("main script").await,
                "{name}: an injected <script>"
            );
        }
    };
    browser.goto(&format!("{}/login", console.url)).await;
    check("login").await;
    console.log_in(&browser, "ana", REVIEWER_PASSWORD).await;
    for (name, path) in [
        ("queue", "/".to_string()),
        ("history", "/alerts".to_string()),
        ("alert", format!("/alerts/{}", console.id)),
        ("status", "/status".to_string()),
    ] {
        browser.goto(&format!("{}{path}", console.url)).await;
        browser.find("main").await;
        check(name).await;
    }
    // The alert page shows the hostile value itself (escaped), so it was really measured.
    browser
        .goto(&format!("{}/alerts/{}", console.url, console.id))
        .await;
    let main = browser.text("main").await;
    assert!(main.contains("<img src=x onerror=alert(1)>"), "{main}");
    browser.close().await;
    console.stop();
}
