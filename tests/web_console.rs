//! The web console (SPEC §9), read-only pages: the real daemon in-process with
//! `[web]`, alerts raised by the real pipeline from feed files, a real SQLite
//! file, and a real HTTP client on loopback. What a user would check: every
//! page carries the security headers, a hostile value from a feed is shown as
//! text on every page, the history filters and pages, and an account tied to
//! a partner without the ISA never sees a value its emails withheld.

mod e2e_support;
mod support;

use std::path::Path;
use std::time::Duration;

use e2e_support::*;
use earlywarn::config::Config;
use earlywarn::rules::RuleSet;
use earlywarn::store::Store;
use earlywarn::store::web::{AlertFilter, Page};
use earlywarn::web::pages::{self, HistoryQuery, Pages, Viewer};
use support::in_process::InProcess;
use support::{wait_until, write_atomically};

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
const TEMPLATE: &str = "{{ 7*7 }}";
/// In the sensitive `notes` field: must never reach the police's account.
const MARKER: &str = "WITHHELD-MARKER-5531";

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn rules() -> String {
    format!(
        r#"{NITAZENE_LISTS}
[[rule]]
id = "nitazene-detected"
name = "Nitazene detected"
feed = "drug_testing"
kind = "match"
when = 'substances_major in nitazenes or substances_minor in nitazenes'
severity = "critical"
notify = ["panel", "police"]
group_by = ["district"]
max_alerts = 500
advice = "Carry naloxone."

[[rule]]
id = "xylazine-review"
name = "Xylazine, for the panel"
feed = "drug_testing"
kind = "match"
when = 'substances_major == "xylazine"'
severity = "warning"
review = ["panel"]
review_within = "4h"
notify = ["police"]
group_by = ["district"]
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config with the console on a free loopback port; returns it and the console's base URL.
fn console_config(dir: &Path) -> (std::path::PathBuf, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let partners = partner("panel", &["panel@example.org"], true, &["*"], None)
        + &partner("police", &["police@example.org"], false, &["Bolton"], None)
        + &format!("[web]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\n");
    let config = Cfg {
        partners,
        rules: rules(),
        ..Cfg::default()
    }
    .write(dir);
    (config, base)
}

/// One drug-testing row with hostile values in free-text columns and the marker in `notes`.
fn hostile_row(id: &str, district: &str, major: &str) -> String {
    row_at(
        id,
        "2025-11-04T09:12:00Z",
        district,
        &format!("{SCRIPT} {IMG} {TEMPLATE}"),
        major,
        "",
        &format!("{MARKER} {SCRIPT}"),
    )
}

fn wait_alerts(dir: &Path, n: usize) -> Vec<earlywarn::store::web::ListedAlert> {
    let mut got = Vec::new();
    let ok = wait_until(WAIT, || {
        let Ok(store) = Store::open(&dir.join("state")) else {
            return false;
        };
        got = store
            .alert_history(&AlertFilter::default(), Page::First, 1000)
            .unwrap();
        got.len() >= n
    });
    assert!(ok, "expected {n} alerts, got {}", got.len());
    got
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn get(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().get(format!("{base}{path}")).send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().unwrap())
}

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> &'h str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

/// No hostile value got through as markup; each is there as text.
fn assert_escaped(path: &str, body: &str) {
    for raw in [SCRIPT, "<img", "onerror=alert(1)>"] {
        assert!(
            !body.contains(raw),
            "{path} carries `{raw}` unescaped:\n{body}"
        );
    }
    assert!(!body.contains("<script"), "{path} has a script element");
    assert!(!body.contains(" style="), "{path} has an inline style");
}

#[test]
fn every_page_sends_the_security_headers_and_shows_hostile_values_as_text() {
    let dir = tempdir();
    let (config, base) = console_config(dir.path());
    let daemon = InProcess::start_ready(&config);
    write_atomically(
        &feed_dir(dir.path()),
        "hostile.csv",
        csv(&[
            hostile_row("S-1", "Bolton", "isotonitazene"),
            hostile_row("S-2", SCRIPT, "isotonitazene"),
            hostile_row("S-3", "Bolton", "xylazine"),
        ]),
    );
    let alerts = wait_alerts(dir.path(), 3);
    let draft = alerts
        .iter()
        .find(|a| a.status == "in_review")
        .expect("the xylazine alert waits for review");
    let hostile = alerts
        .iter()
        .find(|a| a.district.as_deref() == Some(SCRIPT))
        .expect("an alert whose district is hostile");

    let pages = [
        "/".to_string(),
        "/alerts".to_string(),
        format!("/alerts?q={}", "onerror"),
        format!("/alerts?district={}", urlencode(SCRIPT)),
        format!("/alerts/{}", draft.id),
        // Ids are case-insensitive (SPEC §2).
        format!("/alerts/{}", hostile.id.to_lowercase()),
        "/status".to_string(),
        "/audit".to_string(),
    ];
    for path in &pages {
        let (status, headers, body) = get(&base, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
        assert_eq!(header(&headers, "x-frame-options"), "DENY");
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        assert!(
            headers.get("strict-transport-security").is_none(),
            "no HSTS over plain HTTP on loopback"
        );
        assert!(header(&headers, "content-type").starts_with("text/html"));
        assert!(
            body.starts_with("<!doctype html>\n<html lang=\"en\">"),
            "{path}"
        );
        assert_escaped(path, &body);
    }

    // The hostile district is on the list pages and its alert's page, as text.
    let (_, _, listed) = get(&base, "/alerts");
    assert!(listed.contains(&escaped(SCRIPT)), "{listed}");
    let (_, _, filtered) = get(&base, &format!("/alerts?district={}", urlencode(SCRIPT)));
    assert!(
        filtered.contains(&hostile.id),
        "filter by the hostile district: {filtered}"
    );
    assert!(!filtered.contains(&draft.id));
    let (_, _, page) = get(&base, &format!("/alerts/{}", hostile.id.to_lowercase()));
    assert!(
        page.contains(&format!("<h1>Alert {}</h1>", hostile.id)),
        "{page}"
    );
    // A template in a value is text, never evaluated.
    assert!(page.contains(TEMPLATE), "{page}");
    assert!(page.contains(&escaped(IMG)), "{page}");
    // Who received it: both partners of the nitazene rule cover the hostile
    // district? Only the panel (every district); the police covers Bolton.
    assert!(page.contains("Partner panel"), "{page}");
    assert!(!page.contains("Partner police"), "{page}");
    let (_, _, queue) = get(&base, "/");
    assert!(
        queue.contains(&draft.id),
        "the draft is in the queue: {queue}"
    );

    // The rest: health, stylesheet, the 404 page, with the headers too.
    let (status, headers, body) = get(&base, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(header(&headers, "content-security-policy"), CSP);
    let (status, headers, css) = get(&base, "/static/style.css");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/css"));
    assert!(css.contains("prefers-contrast: more") && css.contains("prefers-color-scheme"));
    for missing in ["/nowhere", "/alerts/EW-NOSUCHALERT"] {
        let (status, headers, body) = get(&base, missing);
        assert_eq!(status, 404, "{missing}");
        assert_eq!(header(&headers, "content-security-policy"), CSP);
        assert!(body.contains("<h1>Not found</h1>"), "{body}");
    }
    daemon.stop().unwrap();
}

/// `s` as the pages escape it (minijinja's HTML escaping).
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every page a partner's account can open, rendered from the real store
/// with the real templates, for `viewer`.
fn every_page_for(
    viewer: &Viewer,
    dir: &Path,
    config: &Config,
    rules: &RuleSet,
) -> Vec<(String, String)> {
    let store = Store::open(&dir.join("state")).unwrap();
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    let partner = viewer.partner.clone();
    let drafts = store.console_queue(partner.as_deref(), 500).unwrap();
    let waiting = store.console_queue_len(partner.as_deref()).unwrap();
    let recent_filter = AlertFilter {
        partner: partner.clone(),
        ..AlertFilter::default()
    };
    let recent = store
        .alert_history(&recent_filter, Page::First, 20)
        .unwrap();
    let view = pages::queue_view(viewer, config, rules, &drafts, waiting, &recent, now);
    out.push((
        "/".to_string(),
        Pages::get().render("queue.html", &view).unwrap(),
    ));
    let tz = &config.daemon.timezone;
    for query in [
        HistoryQuery::default(),
        HistoryQuery {
            q: MARKER.to_string(),
            ..HistoryQuery::default()
        },
        HistoryQuery {
            district: "Bolton".to_string(),
            ..HistoryQuery::default()
        },
    ] {
        let filter = query.filter(viewer, tz).unwrap();
        let rows = store.alert_history(&filter, Page::First, 51).unwrap();
        let view = pages::history_view(viewer, config, rules, &query, None, rows, now);
        out.push((
            format!("/alerts?{query:?}"),
            Pages::get().render("history.html", &view).unwrap(),
        ));
    }
    for listed in store
        .alert_history(&AlertFilter::default(), Page::First, 1000)
        .unwrap()
    {
        let record = pages::AlertRecord::read(&store, &listed.id)
            .unwrap()
            .unwrap();
        if let Some(view) = pages::alert_view(viewer, config, rules, &record, now) {
            out.push((
                format!("/alerts/{}", record.listed.id),
                Pages::get().render("alert.html", &view).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn a_partner_without_the_isa_never_sees_a_withheld_value_on_any_page() {
    let dir = tempdir();
    let (config_path, _base) = console_config(dir.path());
    let daemon = InProcess::start_ready(&config_path);
    write_atomically(
        &feed_dir(dir.path()),
        "marked.csv",
        csv(&[
            hostile_row("S-1", "Bolton", "isotonitazene"),
            hostile_row("S-2", "Bury", "isotonitazene"),
            hostile_row("S-3", "Bolton", "xylazine"),
        ]),
    );
    let alerts = wait_alerts(dir.path(), 3);
    daemon.stop().unwrap();
    let config = Config::load(&config_path).unwrap();
    let rules = RuleSet::load(&config).unwrap();
    let bolton = alerts
        .iter()
        .find(|a| a.status == "sent" && a.district.as_deref() == Some("Bolton"))
        .unwrap();
    let bury = alerts
        .iter()
        .find(|a| a.district.as_deref() == Some("Bury"))
        .unwrap();

    // The panel (ISA) sees the marker: the test can see what it looks for.
    let panel = every_page_for(&Viewer::unrestricted("chair"), dir.path(), &config, &rules);
    assert!(
        panel.iter().any(|(_, html)| html.contains(MARKER)),
        "the unrestricted pages show the notes"
    );

    let police = Viewer {
        name: "analyst".into(),
        partner: Some("police".into()),
        admin: false,
    };
    let pages = every_page_for(&police, dir.path(), &config, &rules);
    for (path, html) in &pages {
        // The search form shows back what was typed: that is not from an alert.
        let html = html.replace(&format!("value=\"{MARKER}\""), "");
        assert!(
            !html.contains(MARKER),
            "{path} shows the police a withheld value:\n{html}"
        );
        assert_escaped(path, &html);
    }
    let paths: Vec<&str> = pages.iter().map(|(p, _)| p.as_str()).collect();
    // Its own alert, redacted as its email was; not the Bury one it never got,
    // nor the draft that went only to the panel.
    let own = pages
        .iter()
        .find(|(p, _)| *p == format!("/alerts/{}", bolton.id))
        .unwrap_or_else(|| panic!("the police's Bolton alert is missing: {paths:?}"));
    assert!(
        own.1.contains("Withheld from your organisation: notes."),
        "{}",
        own.1
    );
    assert!(
        own.1.contains("S-1"),
        "the record itself is shown: {}",
        own.1
    );
    assert!(
        !paths.contains(&format!("/alerts/{}", bury.id).as_str()),
        "{paths:?}"
    );
    let draft = alerts.iter().find(|a| a.status == "in_review").unwrap();
    assert!(
        !paths.contains(&format!("/alerts/{}", draft.id).as_str()),
        "{paths:?}"
    );
    for (path, html) in &pages {
        if path.starts_with("/alerts?") || path == "/" {
            assert!(
                !html.contains(&bury.id),
                "{path} lists an alert the police never got"
            );
            assert!(!html.contains(&draft.id), "{path} lists the panel's draft");
        }
    }
    // A search for the marker finds nothing for the police (it matches only
    // what the police was sent), but the alert for the unrestricted view.
    let search = pages.iter().find(|(p, _)| p.contains(MARKER)).unwrap();
    assert!(search.1.contains("No alert matches."), "{}", search.1);
    let panel_search = panel.iter().find(|(p, _)| p.contains(MARKER)).unwrap();
    assert!(panel_search.1.contains(&bolton.id), "{}", panel_search.1);
}

#[test]
fn the_history_filters_and_pages_through_every_alert() {
    let dir = tempdir();
    let (config, base) = console_config(dir.path());
    let daemon = InProcess::start_ready(&config);
    // One alert per district: 120 of them from one file (max_alerts = 500).
    let rows: Vec<String> = (0..120)
        .map(|i| {
            row(
                &format!("P-{i}"),
                &format!("District {i:03}"),
                "isotonitazene",
                "",
                "n",
            )
        })
        .collect();
    write_atomically(&feed_dir(dir.path()), "many.csv", csv(&rows));
    let alerts = wait_alerts(dir.path(), 120);

    let ids_on = |body: &str| -> Vec<String> {
        alerts
            .iter()
            .filter(|a| body.contains(&format!(">{}</a>", a.id)))
            .map(|a| a.id.clone())
            .collect()
    };
    let next_link = |body: &str, rel: &str| -> Option<String> {
        let start = body.find(&format!("<a rel=\"{rel}\" href=\""))? + rel.len() + 16;
        let end = start + body[start..].find('"')?;
        Some(
            body[start..end]
                .replace("&amp;", "&")
                .replace("&#x2f;", "/"),
        )
    };
    let (status, _, first) = get(&base, "/alerts");
    assert_eq!(status, 200);
    let page1 = ids_on(&first);
    assert_eq!(page1.len(), 50, "50 a page");
    assert!(
        next_link(&first, "prev").is_none(),
        "no newer page before the first"
    );
    let (_, _, second) = get(&base, &next_link(&first, "next").expect("a next page"));
    let page2 = ids_on(&second);
    assert_eq!(page2.len(), 50);
    let (_, _, third) = get(&base, &next_link(&second, "next").unwrap());
    let page3 = ids_on(&third);
    assert_eq!(page3.len(), 20);
    assert!(
        next_link(&third, "next").is_none(),
        "the last page has no next"
    );
    let mut all: Vec<String> = [page1.clone(), page2.clone(), page3].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120, "every alert once across the pages");
    // Previous from the second page is the first again.
    let (_, _, back) = get(&base, &next_link(&second, "prev").unwrap());
    assert_eq!(ids_on(&back), page1);

    // Filters: district (any case), severity, status, rule, text, dates.
    let (_, _, one) = get(&base, "/alerts?district=district+007");
    assert_eq!(ids_on(&one).len(), 1, "{one}");
    let (_, _, none) = get(&base, "/alerts?severity=info");
    assert!(ids_on(&none).is_empty() && none.contains("No alert matches."));
    let (_, _, crit) = get(
        &base,
        "/alerts?severity=critical&status=sent&rule=nitazene-detected",
    );
    assert_eq!(ids_on(&crit).len(), 50);
    let (_, _, text) = get(&base, "/alerts?q=District+042");
    assert_eq!(ids_on(&text).len(), 1, "{text}");
    let yesterday = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24))
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let (_, _, recent) = get(&base, &format!("/alerts?from={yesterday}"));
    assert_eq!(ids_on(&recent).len(), 50, "raised since yesterday");
    let (_, _, past) = get(&base, "/alerts?to=2020-01-01");
    assert!(ids_on(&past).is_empty());
    let (status, _, bad) = get(&base, "/alerts?from=yesterday");
    assert_eq!(status, 200);
    assert!(bad.contains("Give dates as YYYY-MM-DD."), "{bad}");

    daemon.stop().unwrap();
}

#[test]
fn a_console_port_already_taken_is_a_start_up_error() {
    let dir = tempdir();
    let (config, base) = console_config(dir.path());
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let daemon = InProcess::start(&config);
    let err = daemon.stop().expect_err("the console cannot bind");
    assert!(
        matches!(err, earlywarn::daemon::DaemonError::Web { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("console"), "{err}");
}

#[test]
fn the_queue_shows_the_review_clock_and_the_alert_page_a_decision_from_the_cli() {
    let dir = tempdir();
    let (config, base) = console_config(dir.path());
    let daemon = InProcess::start_ready(&config);
    write_atomically(
        &feed_dir(dir.path()),
        "xylazine.csv",
        csv(&[row("X-1", "Bolton", "xylazine", "", "n")]),
    );
    let draft = wait_alerts(dir.path(), 1).remove(0);
    assert_eq!(draft.status, "in_review");
    let (_, _, queue) = get(&base, "/");
    assert!(
        queue.contains("due in 3 h 59 min") || queue.contains("due in 4 h"),
        "review_within = 4h: {queue}"
    );

    let out = support::earlywarn(&[
        "alerts",
        "approve",
        &draft.id.to_lowercase(),
        "--config",
        config.to_str().unwrap(),
        "--headline",
        &format!("Xylazine {SCRIPT}"),
        "--by",
        "Dr Chair",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, _, page) = get(&base, &format!("/alerts/{}", draft.id));
    assert!(page.contains("<h2>As approved</h2>"), "{page}");
    assert!(
        page.contains(&format!("Xylazine {}", escaped(SCRIPT))),
        "{page}"
    );
    assert!(
        page.contains("<strong>approved</strong> by Dr Chair"),
        "{page}"
    );
    assert!(page.contains("<dd>approved</dd>"), "the status: {page}");
    assert_escaped("/alerts/ID", &page);
    let (_, _, queue) = get(&base, "/");
    assert!(queue.contains("No draft is waiting for review."), "{queue}");
    daemon.stop().unwrap();
}
