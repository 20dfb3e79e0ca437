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
