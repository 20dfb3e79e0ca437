//! Prometheus metrics: counters kept in memory, gauges read from the database
//! at scrape time, served as text on `[metrics] listen` (GET /metrics).
//!
//! Counters restart from zero with the process, as Prometheus expects; the
//! gauges (outbox depth, oldest undelivered alert, time since each feed last
//! delivered) come from SQLite, so they are right even just after a restart.

use crate::store::Store;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Counters, by label.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    events: BTreeMap<String, u64>,
    rows_rejected: BTreeMap<String, u64>,
    files: BTreeMap<(String, &'static str), u64>,
    alerts: BTreeMap<String, u64>,
    deliveries: BTreeMap<&'static str, u64>,
    reloads: u64,
    reload_failures: u64,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Counters)) {
        // A poisoned lock only means a panic elsewhere mid-increment; counts stay usable.
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// A file of `feed` ended as `outcome` (processed, duplicate, rejected).
    pub fn file(&self, feed: &str, outcome: &'static str, events: u64, rejected_rows: u64) {
        self.with(|c| {
            *c.files.entry((feed.to_string(), outcome)).or_default() += 1;
            *c.events.entry(feed.to_string()).or_default() += events;
            *c.rows_rejected.entry(feed.to_string()).or_default() += rejected_rows;
        });
    }

    pub fn alert(&self, rule: &str) {
        self.with(|c| *c.alerts.entry(rule.to_string()).or_default() += 1);
    }

    /// A delivery attempt ended as `outcome` (sent, retry, failed).
    pub fn delivery(&self, outcome: &'static str) {
        self.with(|c| *c.deliveries.entry(outcome).or_default() += 1);
    }

    pub fn reload(&self, ok: bool) {
        self.with(|c| {
            if ok {
                c.reloads += 1;
            } else {
                c.reload_failures += 1;
            }
        });
    }

    /// The Prometheus text exposition of the counters and the given gauges.
    pub fn render(&self, gauges: &Gauges) -> String {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        family(
            &mut out,
            "earlywarn_events_total",
            "counter",
            "Records read from feed files and passed to the rules.",
        );
        for (feed, n) in &c.events {
            let _ = writeln!(
                out,
                "earlywarn_events_total{{feed=\"{}\"}} {n}",
                escape(feed)
            );
        }
        family(
            &mut out,
            "earlywarn_rows_rejected_total",
            "counter",
            "Rows that could not be read, quarantined in rejected/.",
        );
        for (feed, n) in &c.rows_rejected {
            let _ = writeln!(
                out,
                "earlywarn_rows_rejected_total{{feed=\"{}\"}} {n}",
                escape(feed)
            );
        }
        family(
            &mut out,
            "earlywarn_files_total",
            "counter",
            "Feed files by outcome.",
        );
        for ((feed, outcome), n) in &c.files {
            let _ = writeln!(
                out,
                "earlywarn_files_total{{feed=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(feed)
            );
        }
        family(
            &mut out,
            "earlywarn_alerts_total",
            "counter",
            "Alerts raised, by rule.",
        );
        for (rule, n) in &c.alerts {
            let _ = writeln!(
                out,
                "earlywarn_alerts_total{{rule=\"{}\"}} {n}",
                escape(rule)
            );
        }
        family(
            &mut out,
            "earlywarn_deliveries_total",
            "counter",
            "Delivery attempts by outcome (sent, retry, failed).",
        );
        for outcome in ["sent", "retry", "failed"] {
            let n = c.deliveries.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "earlywarn_deliveries_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        family(
            &mut out,
            "earlywarn_rule_reloads_total",
            "counter",
            "Rule reloads that took effect.",
        );
        let _ = writeln!(out, "earlywarn_rule_reloads_total {}", c.reloads);
        family(
            &mut out,
            "earlywarn_rule_reload_failures_total",
            "counter",
            "Rule reloads refused because the new set had errors.",
        );
        let _ = writeln!(
            out,
            "earlywarn_rule_reload_failures_total {}",
            c.reload_failures
        );
        family(
            &mut out,
            "earlywarn_outbox_pending",
            "gauge",
            "Emails waiting to be delivered.",
        );
        let _ = writeln!(out, "earlywarn_outbox_pending {}", gauges.outbox_pending);
        family(
            &mut out,
            "earlywarn_outbox_failed",
            "gauge",
            "Emails refused permanently by the mail server.",
        );
        let _ = writeln!(out, "earlywarn_outbox_failed {}", gauges.outbox_failed);
        family(
            &mut out,
            "earlywarn_oldest_undelivered_seconds",
            "gauge",
            "Age of the oldest email still waiting (0 when none).",
        );
        let _ = writeln!(
            out,
            "earlywarn_oldest_undelivered_seconds {:.0}",
            gauges.oldest_pending_secs
        );
        family(
            &mut out,
            "earlywarn_delivery_config_fault",
            "gauge",
            "1 while the mail server refuses our session (AUTH, TLS, STARTTLS): fix the [mail] settings.",
        );
        let _ = writeln!(
            out,
            "earlywarn_delivery_config_fault {}",
            u8::from(gauges.delivery_fault.is_some())
        );
        family(
            &mut out,
            "earlywarn_delivery_config_fault_info",
            "gauge",
            "The configuration fault in force, as a label (absent when none).",
        );
        if let Some(reason) = &gauges.delivery_fault {
            let _ = writeln!(
                out,
                "earlywarn_delivery_config_fault_info{{reason=\"{}\"}} 1",
                escape(&crate::display::escape_controls(reason))
            );
        }
        family(
            &mut out,
            "earlywarn_feed_last_file_seconds",
            "gauge",
            "Seconds since each feed last delivered a file.",
        );
        for (feed, secs) in &gauges.feed_last_file_secs {
            let _ = writeln!(
                out,
                "earlywarn_feed_last_file_seconds{{feed=\"{}\"}} {secs:.0}",
                escape(feed)
            );
        }
        out
    }
}

/// Values read from the database at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    pub outbox_pending: i64,
    pub outbox_failed: i64,
    pub oldest_pending_secs: f64,
    pub feed_last_file_secs: Vec<(String, f64)>,
    /// The reason of the delivery configuration fault in force, if any.
    pub delivery_fault: Option<String>,
}

impl Gauges {
    /// Reads only what the gauges need (not the whole `status`), each an index lookup.
    pub fn read(store: &Store, now: Timestamp) -> Gauges {
        let age = |t: Timestamp| now.duration_since(t).as_secs_f64().max(0.0);
        let outbox = store.outbox_counts().unwrap_or_default();
        Gauges {
            outbox_pending: outbox.pending,
            outbox_failed: outbox.failed,
            oldest_pending_secs: outbox.oldest_pending.map(age).unwrap_or(0.0),
            feed_last_file_secs: store
                .last_file_per_feed()
                .unwrap_or_default()
                .iter()
                .map(|f| (f.feed.clone(), age(f.last_at)))
                .collect(),
            delivery_fault: store.delivery_fault().ok().flatten().map(|f| f.reason),
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Connections served at once. A scraper needs one; the rest wait in the
/// kernel's accept queue, where they cost the daemon no descriptor, so a flood
/// of idle connections cannot take the descriptors that feeds and mail need.
pub const MAX_CONNECTIONS: usize = 32;

/// The longest one connection may take, request and answer together: an idle
/// or slow client gives its place up after this.
pub const CONNECTION_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The largest request read: a scrape is one short GET.
const MAX_REQUEST_BYTES: usize = 4096;

/// Serves GET /metrics on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<Metrics>,
    state_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::accept::AcceptBackoff::default();
    loop {
        // A slot first, then accept: while every slot is taken, new connections
        // stay queued in the kernel instead of holding a descriptor here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => return, // the semaphore is never closed
            },
            _ = shutdown.cancelled() => return,
        };
        let socket = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let socket = match socket {
            Ok((socket, _)) => {
                backoff.succeeded();
                socket
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: accept() fails again at once until
                // something closes, so wait instead of spinning, and say so
                // once in a while rather than once per try.
                let (pause, report) = backoff.failed(std::time::Instant::now());
                if let Some(failures) = report {
                    tracing::warn!(error = %e, failures, pause_ms = pause.as_millis() as u64,
                        "Metrics endpoint: accept failed; slowing down");
                }
                drop(slot);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let metrics = metrics.clone();
        let state_dir = state_dir.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // Dropping the future closes the socket: the slot is free again.
            let _ = tokio::time::timeout(CONNECTION_TIME_LIMIT, answer(socket, metrics, state_dir))
                .await;
        });
    }
}

/// Reads one request and answers it.
async fn answer(
    mut socket: tokio::net::TcpStream,
    metrics: std::sync::Arc<Metrics>,
    state_dir: PathBuf,
) {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match socket.read(&mut buf[len..]).await {
            Ok(0) => return, // gone before asking anything
            Ok(n) => len += n,
            Err(_) => return,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let first = request.lines().next().unwrap_or("");
    let response = if first.starts_with("GET /metrics ") || first == "GET /metrics" {
        let body = tokio::task::spawn_blocking(move || {
            let gauges = Store::open(&state_dir)
                .map(|s| Gauges::read(&s, Timestamp::now()))
                .unwrap_or_default();
            metrics.render(&gauges)
        })
        .await
        .unwrap_or_default();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "earlywarn serves metrics at /metrics\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.file("drug_testing", "processed", 15, 2);
        m.alert("nitazene-detected");
        m.delivery("sent");
        m.reload(false);
        let text = m.render(&Gauges {
            outbox_pending: 3,
            feed_last_file_secs: vec![("drug_testing".into(), 12.4)],
            ..Gauges::default()
        });
        for line in [
            "earlywarn_events_total{feed=\"drug_testing\"} 15",
            "earlywarn_rows_rejected_total{feed=\"drug_testing\"} 2",
            "earlywarn_files_total{feed=\"drug_testing\",outcome=\"processed\"} 1",
            "earlywarn_alerts_total{rule=\"nitazene-detected\"} 1",
            "earlywarn_deliveries_total{outcome=\"sent\"} 1",
            "earlywarn_deliveries_total{outcome=\"failed\"} 0",
            "earlywarn_rule_reload_failures_total 1",
            "earlywarn_outbox_pending 3",
            "earlywarn_feed_last_file_seconds{feed=\"drug_testing\"} 12",
            "earlywarn_delivery_config_fault 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    #[test]
    fn a_delivery_fault_is_a_gauge_and_an_escaped_label() {
        let text = Metrics::default().render(&Gauges {
            delivery_fault: Some("AUTH: permanent error (535): \"bad\"\nline".into()),
            ..Gauges::default()
        });
        assert!(
            text.lines()
                .any(|l| l == "earlywarn_delivery_config_fault 1"),
            "{text}"
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("earlywarn_delivery_config_fault_info{"))
            .unwrap_or_else(|| panic!("no info line:\n{text}"));
        assert!(
            info.ends_with("} 1") && info.contains("\\\"bad\\\""),
            "{info}"
        );
        assert!(!info.contains('\n'), "{info}");
    }
}
