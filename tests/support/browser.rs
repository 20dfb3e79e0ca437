//! A real browser for the console's tests: headless Chromium (Debian's
//! `chromium`) driven over WebDriver by `chromedriver` (`chromium-driver`),
//! through the `fantoccini` crate. Include it beside `mod support;` with
//! `#[path = "support/browser.rs"] mod browser;`, so the test binaries that
//! need no browser do not build it.
//!
//! [`Browser::start`] starts chromedriver on a free loopback port, waits until
//! it says it is ready, and opens one session with a fresh profile in a
//! temporary folder. Dropping the `Browser` kills chromedriver and the
//! Chromium it started (they share a process group of their own).
//!
//! Like the rest of `tests/support`, failures panic with what went wrong.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long chromedriver and Chromium may take to start on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an element may take to appear after a navigation.
const FIND_TIMEOUT: Duration = Duration::from_secs(20);
/// The window's height: tall enough that a phone-sized page's form is in view.
const HEIGHT: u32 = 900;

/// `$CHROMEDRIVER` or Debian's `/usr/bin/chromedriver`.
fn chromedriver_path() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

pub struct Browser {
    client: Client,
    driver: Child,
    /// chromedriver's output, kept to explain a failure to start.
    driver_log: PathBuf,
    /// Chromium's profile (and chromedriver's log): fresh for each browser.
    profile: tempfile::TempDir,
}

impl Browser {
    /// A headless Chromium whose page area is `width` CSS pixels wide.
    pub async fn start(width: u32) -> Browser {
        let driver_path = chromedriver_path();
        assert!(
            driver_path.exists(),
            "{} not found: install Debian's chromium and chromium-driver (scripts/test does)",
            driver_path.display()
        );
        let profile = tempfile::tempdir().expect("a temporary folder for the browser profile");
        let driver_log = profile.path().join("chromedriver.log");
        let port = free_port();
        let log = std::fs::File::create(&driver_log).expect("create chromedriver.log");
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            // Its own process group, so drop can end chromedriver and every Chromium process at once.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver_path.display()));
        let mut browser_to_be = Starting {
            driver: Some(driver),
        };
        wait_ready(port, &driver_log, &mut browser_to_be);

        let user_data = profile.path().join("chromium");
        let mut args = vec![
            "--headless=new".to_string(),
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            // /dev/shm is small in containers; Chromium crashes on big pages without this.
            "--disable-dev-shm-usage".to_string(),
            format!("--user-data-dir={}", user_data.display()),
            format!("--window-size={width},{HEIGHT}"),
            "--no-first-run".to_string(),
            "--lang=en-GB".to_string(),
        ];
        args.sort();
        let mut chrome = serde_json::Map::new();
        chrome.insert("args".into(), serde_json::json!(args));
        if Path::new("/usr/bin/chromium").exists() {
            chrome.insert("binary".into(), "/usr/bin/chromium".into());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), chrome.into());
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "open a Chromium session: {e}\nchromedriver.log:\n{}",
                    std::fs::read_to_string(&driver_log).unwrap_or_default()
                )
            });
        let driver = browser_to_be.driver.take().expect("set above");
        let browser = Browser {
            client,
            driver,
            driver_log,
            profile,
        };
        browser.set_width(width).await;
        browser
    }

    /// Makes the page area `width` CSS pixels wide (400 for a phone, 1000 for a desk).
    pub async fn set_width(&self, width: u32) {
        self.client
            .set_window_size(width, HEIGHT)
            .await
            .expect("set the window size");
        // Headless Chromium's window has no frame, but ask the page to be sure.
        let inner = self.js_u64("return window.innerWidth").await;
        assert_eq!(
            inner,
            u64::from(width),
            "the page area is not {width} px wide"
        );
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the current URL")
            .to_string()
    }

    /// Waits until the browser shows `url` (after a form it submitted itself).
    pub async fn wait_for_url(&self, url: &str) {
        let deadline = Instant::now() + FIND_TIMEOUT;
        loop {
            let now = self.current_url().await;
            if now == url {
                return;
            }
            assert!(Instant::now() < deadline, "still on {now}, not {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clears the field with this id and types `text` into it.
    pub async fn fill(&self, id: &str, text: &str) {
        let field = self.find(&format!("#{id}")).await;
        field
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear #{id}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into #{id}: {e}"));
    }

    /// Clicks the element matching the CSS selector, as a person would (it must be visible).
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// The visible text of the element matching the CSS selector, waiting for it to appear.
    pub async fn text(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("read the text of {css}: {e}"))
    }

    /// Whether an element matches the CSS selector now (no waiting).
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("look for {css}: {e}"))
            .is_empty()
    }

    /// The element matching the CSS selector, waiting up to [`FIND_TIMEOUT`] for it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let page = self.current_url().await;
        self.client
            .wait()
            .at_most(FIND_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on {page}: {e}"))
    }

    /// The page's full width and the window's: no horizontal scroll when the first is not larger.
    pub async fn widths(&self) -> (u64, u64) {
        (
            self.js_u64("return document.documentElement.scrollWidth")
                .await,
            self.js_u64("return window.innerWidth").await,
        )
    }

    /// `document.documentElement.scrollWidth <= window.innerWidth`.
    pub async fn has_no_horizontal_scroll(&self) -> bool {
        let (page, window) = self.widths().await;
        page <= window
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("take a screenshot");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    async fn js_u64(&self, script: &str) -> u64 {
        let value = self
            .client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("run `{script}`: {e}"));
        value
            .as_u64()
            .unwrap_or_else(|| panic!("`{script}` gave {value}, not a whole number"))
    }

    /// Ends the session (Chromium quits), then chromedriver is killed on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// chromedriver before its session opens: killed if start-up panics.
struct Starting {
    driver: Option<Child>,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            kill_group(driver);
        }
    }
}

fn kill_group(driver: &mut Child) {
    // The group is chromedriver's own (process_group(0)): its id is chromedriver's pid.
    let _ = killpg(Pid::from_raw(driver.id() as i32), Signal::SIGKILL);
    let _ = driver.wait();
}

/// A loopback port nobody listens on now (the kernel's choice).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

/// Polls chromedriver's `GET /status` until it reports `"ready": true`.
fn wait_ready(port: u16, log: &Path, starting: &mut Starting) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = starting
            .driver
            .as_mut()
            .and_then(|d| d.try_wait().ok().flatten())
        {
            panic!(
                "chromedriver exited ({status}) before it was ready:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Some(body) = http_get(port, "/status")
            && body.replace(' ', "").contains("\"ready\":true")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver not ready after {START_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-shot GET on loopback: what came back within a few seconds, or None if nobody answers.
/// Read until the server closes or the JSON body ends: chromedriver may keep the connection open.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
        if response.ends_with(b"}}") || response.ends_with(b"}}\n") {
            break;
        }
    }
    Some(String::from_utf8_lossy(&response).into_owned())
}
