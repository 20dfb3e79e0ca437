//! Helpers shared by the end-to-end tests (`e2e_delivery`, `e2e_files`, `cli`): config files in a
//! tempdir, drug-testing CSV rows (SPEC §3.1 columns), reading the daemon's log without its
//! colour codes, `.eml` files of the file transport, and `earlywarn status --format json`.
//!
//! Include with `mod support; mod e2e_support;` (this module uses `crate::support`).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{self, Daemon, Received, SmtpServer};

/// The `drug_testing` columns of SPEC §3.1, in order.
pub const HEADER: &str = "sample_id,received_at,tested_at,lab,source,district,postcode_district,purchased_as,form,colour,marking,substances_major,substances_minor,amount_mg_per_unit,linked_harm,notes";

/// How long a test waits for something the daemon should do within a second or two.
pub const WAIT: Duration = Duration::from_secs(10);

/// A CSV field, quoted when it needs to be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One drug-testing row (no line end). `major`/`minor` are `;`-separated lists.
pub fn row(id: &str, district: &str, major: &str, minor: &str, notes: &str) -> String {
    row_at(
        id,
        "2025-11-04T09:12:00Z",
        district,
        "heroin",
        major,
        minor,
        notes,
    )
}

/// [`row`] with the event time and `purchased_as` given.
pub fn row_at(
    id: &str,
    tested_at: &str,
    district: &str,
    purchased_as: &str,
    major: &str,
    minor: &str,
    notes: &str,
) -> String {
    [
        id,
        "2025-11-03T16:05:00Z",
        tested_at,
        "MANDRAKE",
        "drug_service",
        district,
        "BL1",
        purchased_as,
        "powder",
        "brown",
        "",
        major,
        minor,
        "",
        "none",
        notes,
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

/// A whole CSV file: the header and `rows`, each line ended by `\n`.
pub fn csv(rows: &[String]) -> String {
    let mut s = String::from(HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(r);
        s.push('\n');
    }
    s
}

/// The nitazene list of the tests: the SPEC example's list.
pub const NITAZENE_LISTS: &str = r#"[lists]
nitazenes = ["isotonitazene", "protonitazene", "metonitazene", "N-desethyl isotonitazene"]
"#;

/// A nitazene `match` rule, grouped by district, notifying `notify`, with no review and no
/// cooldown (so every file's matches raise an alert).
pub fn nitazene_rule(notify: &[&str]) -> String {
    format!(
        r#"{NITAZENE_LISTS}
[[rule]]
id = "nitazene-detected"
name = "Nitazene detected in a tested sample"
feed = "drug_testing"
kind = "match"
when = 'substances_major in nitazenes or substances_minor in nitazenes'
severity = "critical"
notify = [{}]
group_by = ["district"]
advice = "Carry naloxone; more than one dose may be needed."
"#,
        notify
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One `[[partner]]` table.
pub fn partner(
    id: &str,
    emails: &[&str],
    isa: bool,
    districts: &[&str],
    min_severity: Option<&str>,
) -> String {
    let list = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "[[partner]]\nid = \"{id}\"\nname = \"Partner {id}\"\nemails = [{}]\nisa = {isa}\ndistricts = [{}]\n",
        list(emails),
        list(districts)
    );
    if let Some(m) = min_severity {
        s += &format!("min_severity = \"{m}\"\n");
    }
    s + "\n"
}

/// The `[mail]` lines (without the header, `from`, `marking` and the timing keys) for a test
/// SMTP server, with relative paths: the password goes to `dir/secrets/smtp-password` and the
/// test CA is copied to `dir/secrets/ca.pem`.
pub fn smtp_mail_lines(server: &SmtpServer, dir: &Path) -> String {
    let opts = server.options();
    let mut s = format!(
        "transport = \"smtp\"\nhost = \"{}\"\nport = {}\ntls = \"{}\"\n",
        server.host(),
        server.port(),
        opts.tls.config_value()
    );
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    if opts.tls != support::SmtpTls::None {
        fs::copy(support::ca_pem_path(), secrets.join("ca.pem")).unwrap();
        s += "ca_file = \"secrets/ca.pem\"\n";
    }
    if let Some((user, password)) = &opts.auth {
        // A trailing newline, as `echo pw > file` leaves it: the daemon must not send it.
        fs::write(secrets.join("smtp-password"), format!("{password}\n")).unwrap();
        // earlywarn refuses a password file its group or others can read.
        support::owner_only(&secrets.join("smtp-password"));
        s += &format!("username = \"{user}\"\npassword_file = \"secrets/smtp-password\"\n");
    }
    s
}

/// `[mail]` lines for the file transport, writing `.eml` files to `dir/mail`.
pub const FILE_MAIL: &str = "transport = \"file\"\nfile_dir = \"mail\"\n";

/// A test configuration, written to `dir/earlywarn.toml` with relative paths only:
/// state in `state/`, rules in `rules/*.toml`, the feed in `in/drug-testing/`.
#[derive(Clone, Debug)]
pub struct Cfg {
    pub settle: String,
    pub rescan_interval: String,
    pub marking: String,
    /// `[mail]` transport lines: [`FILE_MAIL`] or [`smtp_mail_lines`].
    pub mail: String,
    pub mail_timeout: String,
    pub retry_initial: String,
    pub retry_max: String,
    /// Extra lines in the `[[feed]]` table (e.g. `max_file_bytes = 1000`).
    pub feed_extra: String,
    /// `[[partner]]` tables; default: one `panel` (ISA, every district).
    pub partners: String,
    /// The rule file `rules/rules.toml`; default: [`nitazene_rule`] for `panel`.
    pub rules: String,
    /// `[daemon] ops`, if any.
    pub ops: Option<String>,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            settle: "1s".into(),
            rescan_interval: "30s".into(),
            marking: "OFFICIAL-SENSITIVE".into(),
            mail: FILE_MAIL.into(),
            mail_timeout: "3s".into(),
            retry_initial: "1s".into(),
            retry_max: "2s".into(),
            feed_extra: String::new(),
            partners: partner("panel", &["panel@example.org"], true, &["*"], None),
            rules: nitazene_rule(&["panel"]),
            ops: None,
        }
    }
}

impl Cfg {
    /// Writes the config and the rule file under `dir`; returns the config's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let ops = match &self.ops {
            Some(o) => format!("ops = [\"{o}\"]\n"),
            None => String::new(),
        };
        let text = format!(
            r#"[daemon]
state_dir = "state"
rules = ["rules/*.toml"]
timezone = "Europe/London"
settle = "{settle}"
rescan_interval = "{rescan}"
shutdown_timeout = "5s"
{ops}
[mail]
from = "GM Early Warning <earlywarn@example.org>"
marking = "{marking}"
timeout = "{timeout}"
retry_initial = "{retry_initial}"
retry_max = "{retry_max}"
{mail}
[[feed]]
name = "drug_testing"
dir = "in/drug-testing"
format = "csv"
id_field = "sample_id"
time_field = "tested_at"
list_fields = {{ substances_major = ";", substances_minor = ";" }}
sensitive = ["notes"]
district_field = "district"
fields = [
  "sample_id", "received_at", "tested_at", "lab", "source", "district",
  "postcode_district", "purchased_as", "form", "colour", "marking",
  "substances_major", "substances_minor", "amount_mg_per_unit", "linked_harm", "notes",
]
{feed_extra}

{partners}"#,
            settle = self.settle,
            rescan = self.rescan_interval,
            marking = self.marking,
            timeout = self.mail_timeout,
            retry_initial = self.retry_initial,
            retry_max = self.retry_max,
            mail = self.mail,
            feed_extra = self.feed_extra,
            partners = self.partners,
        );
        fs::create_dir_all(dir.join("rules")).unwrap();
        fs::write(dir.join("rules/rules.toml"), &self.rules).unwrap();
        let path = dir.join("earlywarn.toml");
        fs::write(&path, text).unwrap();
        path
    }
}

/// The feed folder of a [`Cfg`] written under `dir`.
pub fn feed_dir(dir: &Path) -> PathBuf {
    dir.join("in/drug-testing")
}

/// A fresh temporary folder for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("earlywarn-e2e-")
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The daemon's log
// ---------------------------------------------------------------------------------------------

/// Removes ANSI escape sequences (the text log colours its field names).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The daemon's log so far, without colour codes.
pub fn log(d: &Daemon) -> String {
    strip_ansi(&d.log())
}

/// Lines of the log containing every one of `needles`.
pub fn log_lines(d: &Daemon, needles: &[&str]) -> Vec<String> {
    log(d)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Waits until `count` log lines contain every one of `needles`; returns those lines.
/// Panics with the log if the daemon exits or the time runs out.
pub fn wait_log_lines(
    d: &mut Daemon,
    needles: &[&str],
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = log_lines(d, needles);
        if lines.len() >= count {
            return lines;
        }
        if !d.is_running() {
            panic!(
                "earlywarn exited before logging {count} line(s) with {needles:?}; log:\n{}",
                log(d)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "earlywarn did not log {count} line(s) with {needles:?} within {timeout:?} (got {}); log:\n{}",
                lines.len(),
                log(d)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for one log line with every one of `needles`; returns the first.
pub fn wait_log(d: &mut Daemon, needles: &[&str], timeout: Duration) -> String {
    wait_log_lines(d, needles, 1, timeout).remove(0)
}

/// The value of `key=value` in a text log line (quotes removed), if present.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        Some(quoted[..end].to_string())
    } else {
        Some(rest.split_whitespace().next().unwrap_or("").to_string())
    }
}

/// Starts the daemon on `config` and waits until it logs `Ready`.
pub fn start_daemon(config: &Path) -> Daemon {
    let mut d = Daemon::start(config);
    wait_log(&mut d, &["Ready"], Duration::from_secs(20));
    d
}

/// SIGTERM and wait for a clean exit (0); panics otherwise, with the log.
pub fn stop_daemon(mut d: Daemon) {
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(15));
    match status {
        Some(s) if s.success() => {}
        other => panic!(
            "earlywarn did not exit 0 after SIGTERM: {other:?}; log:\n{}",
            log(&d)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Mail written by the file transport
// ---------------------------------------------------------------------------------------------

/// Every `.eml` file in `dir` (the file transport's `file_dir`), as [`Received`] messages with
/// the envelope taken from the headers (`tls` false, no auth user), in name order.
pub fn eml_messages(dir: &Path) -> Vec<Received> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.ends_with(".eml") && !name.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let data =
                fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            let mut r = Received {
                seq: i as u32 + 1,
                mail_from: String::new(),
                rcpt_tos: Vec::new(),
                received_at: 0.0,
                data,
                tls: false,
                auth_user: None,
            };
            r.rcpt_tos = r.to();
            r.mail_from = r.from().unwrap_or_default();
            r
        })
        .collect()
}

/// Waits until `dir` holds at least `n` `.eml` files; returns them.
pub fn wait_eml(dir: &Path, n: usize, timeout: Duration) -> Vec<Received> {
    let mut got = Vec::new();
    let ok = support::wait_until(timeout, || {
        got = eml_messages(dir);
        got.len() >= n
    });
    assert!(
        ok,
        "expected {n} .eml file(s) in {} within {timeout:?}, got {}: {:?}",
        dir.display(),
        got.len(),
        got.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    got
}

// ---------------------------------------------------------------------------------------------
// One-shot commands
// ---------------------------------------------------------------------------------------------

/// `earlywarn status --config CONFIG --format json`, parsed.
pub fn status_json(config: &Path) -> serde_json::Value {
    let out = support::earlywarn(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "status failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --format json is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Names of the entries of a folder (not following links), sorted; empty if it does not exist.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
