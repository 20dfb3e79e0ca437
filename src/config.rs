//! The config file: parsed once into validated types the rest of the code trusts.
//!
//! Parse, don't validate: [`Config::load`] reads the TOML, resolves relative
//! paths against the config file's folder, checks every cross-reference
//! (ops partners exist, TLS settings are safe) and returns a [`Config`] or
//! diagnostics with `file:line:col`. Nothing here touches the network or the
//! feed folders.

use crate::diagnostic::{Diagnostic, Diagnostics, choice, choice_ignoring_case, suggest};
use jiff::tz::TimeZone;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Default cap on a feed file's size (SPEC §4).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Default `max_future` of a feed (SPEC §3): a day covers clocks in another
/// time zone and a lab that dates a sample by its expected result.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself, for messages.
    pub path: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The console (SPEC §9), if `[web]` is set.
    pub web: Option<WebConfig>,
    pub daemon: DaemonConfig,
    pub mail: MailConfig,
    pub feeds: Vec<FeedConfig>,
    pub partners: Vec<Partner>,
}

/// `[web]`: the console's listener (SPEC §9).
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    pub listen: std::net::SocketAddr,
    /// The base of every link in emails, without a trailing `/`.
    pub public_url: String,
    /// PEM certificate chain and key: served over HTTPS when both are set.
    pub tls: Option<WebTls>,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl WebConfig {
    /// Whether the console is served over HTTPS, directly or (by the
    /// `public_url`) behind the organisation's proxy: cookies are then `Secure`.
    pub fn is_https(&self) -> bool {
        self.tls.is_some() || self.public_url.starts_with("https://")
    }

    /// The console page of an alert, for links in emails.
    pub fn alert_url(&self, alert_id: &str) -> String {
        format!("{}/alerts/{alert_id}", self.public_url)
    }
}

/// `[web] listen` when not set.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8080";
/// `[web] session_idle` when not set.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// `[web] max_connections` when not set.
pub const DEFAULT_WEB_MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// Glob patterns, already made absolute.
    pub rules: Vec<String>,
    pub timezone: TimeZone,
    pub timezone_name: String,
    pub ops: Vec<String>,
    /// How often every feed folder is rescanned even without filesystem events.
    pub rescan_interval: Duration,
    /// How long a file written in place must stay unchanged before it is read.
    pub settle: Duration,
    /// How long shutdown waits for the file and SMTP exchange in progress.
    pub shutdown_timeout: Duration,
    /// At most one self-alert email to `ops` per this interval.
    pub ops_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub from: String,
    /// `Reply-To` of every email, where partners' replies should go (a mailbox like `from`).
    pub reply_to: Option<String>,
    /// Who to contact about an alert, in words: the last line of every alert email.
    pub contact: Option<String>,
    pub marking: String,
    pub transport: Transport,
    /// Bound on every SMTP exchange (connect, each command, the whole send).
    pub timeout: Duration,
    /// First retry delay after a temporary failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// The name sent in EHLO, as configured (checked by [`valid_helo_name`]);
    /// `None`: the machine's fully qualified name, found at start.
    pub helo_name: Option<String>,
    /// At most this many SMTP connections to the server at once, and so at
    /// most this many emails in flight (`[mail] max_connections`, 1..=32).
    pub max_connections: usize,
}

/// `[mail] max_connections` when not set: enough for one alert to a handful of
/// partners to go out in one round, few enough not to look like a flood to a relay.
pub const DEFAULT_MAIL_MAX_CONNECTIONS: usize = 4;

#[derive(Debug, Clone)]
pub enum Transport {
    Smtp(SmtpConfig),
    File { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    /// Where the password is read from at send time; never inline.
    pub password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust, for a private mail relay.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    Csv,
    Jsonl,
    Json,
    /// An Excel workbook (Office Open XML), read with calamine (`feeds::sheet`).
    Xlsx,
    /// An OpenDocument spreadsheet, read with calamine (`feeds::sheet`).
    Ods,
}

impl FeedFormat {
    /// Whether files of this format are workbooks (binary, read whole) rather than text.
    pub fn is_sheet(self) -> bool {
        matches!(self, FeedFormat::Xlsx | FeedFormat::Ods)
    }
}

impl fmt::Display for FeedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedFormat::Csv => "csv",
            FeedFormat::Jsonl => "jsonl",
            FeedFormat::Json => "json",
            FeedFormat::Xlsx => "xlsx",
            FeedFormat::Ods => "ods",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDone {
    Move,
    Delete,
}

#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub name: String,
    pub dir: PathBuf,
    pub format: FeedFormat,
    pub id_field: Option<String>,
    pub time_field: Option<String>,
    /// strftime format; `None` means RFC 3339.
    pub time_format: Option<String>,
    /// Field name → separator.
    pub list_fields: BTreeMap<String, String>,
    /// Sensitive field names as written in the config (what "Withheld:" names).
    pub sensitive: Vec<String>,
    /// `sensitive` as [`field_key`]s, in the same order: what redaction compares,
    /// so `Notes` or `"notes "` in a file is the `notes` of the config.
    pub sensitive_keys: Vec<String>,
    pub district_field: String,
    /// Declared columns, if any: rules naming other fields are refused.
    pub fields: Option<Vec<String>>,
    /// `fields` as [`field_key`]s: a column whose key is not here is never put in an email.
    pub field_keys: Option<HashSet<String>>,
    pub on_done: OnDone,
    pub max_file_bytes: u64,
    /// CSV field delimiter; `None` means sniff `,` `;` or tab from the header.
    pub delimiter: Option<u8>,
    /// How far ahead of the wall clock a record's time may be before the
    /// record is a bad row: one mistyped year must not steer the windows.
    pub max_future: Duration,
    /// xlsx/ods: the sheet to read; `None` means the first.
    pub sheet: Option<String>,
    /// Field name → the label emails show for it (`linked_harm` → "Linked harm").
    pub labels: BTreeMap<String, String>,
    /// `push_token_file`: the feed also takes files over HTTP (SPEC §11), from
    /// whoever holds this token. Read when the config is loaded.
    pub push_token: Option<PushToken>,
}

/// A feed's push token (SPEC §11), kept only as its SHA-256: comparing two
/// digests of equal length in constant time says nothing about the token's
/// length or its first differing byte, and the token itself is not kept in
/// memory to turn up in a log or a core dump's obvious places.
#[derive(Clone, PartialEq, Eq)]
pub struct PushToken {
    digest: [u8; 32],
}

/// The shortest push token accepted: 32 characters of a random token (as
/// `openssl rand -hex 32` makes 64) are beyond guessing, even unthrottled.
pub const MIN_PUSH_TOKEN_CHARS: usize = 32;

impl PushToken {
    fn digest(token: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token).into()
    }

    /// The token as a push token file holds it (trimmed), or why it cannot be one.
    pub fn from_file_text(text: &str) -> Result<PushToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "holds {:?}, which an `Authorization: Bearer` header cannot carry: a token is letters, digits and punctuation only",
                c
            ));
        }
        if token.len() < MIN_PUSH_TOKEN_CHARS {
            return Err(format!(
                "holds a token of {} characters; at least {MIN_PUSH_TOKEN_CHARS} are needed (make one with `openssl rand -hex 32`)",
                token.len()
            ));
        }
        Ok(PushToken {
            digest: PushToken::digest(token.as_bytes()),
        })
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(PushToken::digest(given).ct_eq(&self.digest))
    }
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PushToken(..)")
    }
}

/// Reads a push token file: it must exist, be a regular file readable by its
/// owner only (like `password_file`: a token others can read is already
/// leaked), and hold a usable token.
fn read_push_token(path: &Path) -> Result<PushToken, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by {} (mode {mode:o}); make it owner-only: chmod 600",
            if mode & 0o070 != 0 {
                "its group"
            } else {
                "others"
            }
        ));
    }
    let mut text = String::new();
    // A token file is a line; a large file here is a mistake (the wrong path).
    (&mut file)
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it as text: {e}"))?;
    PushToken::from_file_text(&text)
}

impl FeedConfig {
    pub fn processed_dir(&self) -> PathBuf {
        self.dir.join("processed")
    }
    pub fn rejected_dir(&self) -> PathBuf {
        self.dir.join("rejected")
    }
    /// Whether a column (or a rule's field name) is one of the feed's sensitive fields,
    /// whatever its case, spacing, `_` or `-`.
    pub fn is_sensitive(&self, field: &str) -> bool {
        self.sensitive_name(field).is_some()
    }

    /// The sensitive field, as the config names it, that `field` is a spelling of.
    pub fn sensitive_name(&self, field: &str) -> Option<&str> {
        let key = field_key(field);
        self.sensitive_keys
            .iter()
            .position(|k| *k == key)
            .map(|i| self.sensitive[i].as_str())
    }

    /// Whether a column may appear in an email: always, unless the feed lists its
    /// `fields` and this column is not among them (SPEC §3).
    pub fn is_listed(&self, field: &str) -> bool {
        self.field_keys
            .as_ref()
            .is_none_or(|keys| keys.contains(&field_key(field)))
    }

    /// The label emails show for `field`: the feed's `labels` (matched like
    /// redaction matches names), else `None` and the caller words the name.
    pub fn label(&self, field: &str) -> Option<&str> {
        let key = field_key(field);
        self.labels
            .iter()
            .find(|(name, _)| field_key(name) == key)
            .map(|(_, label)| label.as_str())
    }
}

/// A field name as redaction compares it: lowercase, ignoring whitespace, `_`, `-`
/// and invisible characters, so `Post_Code`, ` post code ` and `POSTCODE` are one name.
///
/// Invisible characters count as nothing because a name with a zero-width space
/// looks like the sensitive name to the person who reads the file.
pub fn field_key(name: &str) -> String {
    name.chars()
        .filter(|c| {
            !(c.is_whitespace()
                || c.is_control()
                || matches!(
                    c,
                    '_' | '-' | '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
                ))
        })
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    const CHOICES: &[(&str, Severity)] = &[
        ("info", Severity::Info),
        ("warning", Severity::Warning),
        ("critical", Severity::Critical),
    ];

    /// A severity as a config or rule writes it, in any case.
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::choose(s).ok()
    }

    /// [`Severity::parse`], or the message for a severity that is none of them.
    pub fn choose(s: &str) -> Result<Severity, String> {
        choice_ignoring_case(s, Severity::CHOICES, "severity")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub emails: Vec<String>,
    pub isa: bool,
    /// `None` means every district (`"*"`).
    pub districts: Option<Vec<String>>,
    pub min_severity: Severity,
}

impl Partner {
    /// Whether the partner covers `district` (case-insensitive). An alert with
    /// no district reaches only partners that cover every district.
    pub fn covers(&self, district: Option<&str>) -> bool {
        match (&self.districts, district) {
            (None, _) => true,
            (Some(list), Some(d)) => list.iter().any(|x| x.trim().eq_ignore_ascii_case(d.trim())),
            (Some(_), None) => false,
        }
    }
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::file(path, format!("cannot read the config file: {e}")))?;
        Config::parse(path, &text)
    }

    /// Parses config text; `path` locates relative paths and names the file in errors.
    ///
    /// Each section is read by its own method of [`Sections`], which returns its
    /// part and notes every problem, so one run reports them all.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Diagnostics> {
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| Diagnostic::from_toml(path, text, &e))?;
        let mut sections = Sections::new(path, text);
        // `ops` names partners, so it is checked once they are read.
        let raw_ops = raw.daemon.ops.take().unwrap_or_default();
        let mut daemon = sections.daemon(raw.daemon);
        let mail = sections.mail(raw.mail);
        let partners = sections.partners(raw.partner);
        daemon.ops = sections.ops(raw_ops, &partners);
        let feeds = sections.feeds(raw.feed);
        let metrics_listen = sections.metrics(&raw.metrics);
        let web = raw.web.map(|w| sections.web(w));
        if web.is_none() {
            for (name, span) in std::mem::take(&mut sections.push_feeds) {
                sections.error(span, format!(
                    "feed `{name}` has push_token_file, but there is no [web] section: files are pushed to the console's listener (add [web], or remove push_token_file)"
                ));
            }
        }
        if !sections.errors.is_empty() {
            return Err(Diagnostics(sections.errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            metrics_listen,
            web,
            daemon,
            mail,
            feeds,
            partners,
        })
    }

    pub fn feed(&self, name: &str) -> Option<&FeedConfig> {
        self.feeds.iter().find(|f| f.name == name)
    }

    pub fn partner(&self, id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.id == id)
    }

    pub fn database_path(&self) -> PathBuf {
        self.daemon.state_dir.join("earlywarn.db")
    }
}

/// The reader of one config file's sections: where relative paths start, and
/// the problems found so far, each placed at its `file:line:col`.
struct Sections<'a> {
    path: &'a Path,
    text: &'a str,
    /// The config file's folder, absolute: what relative paths are relative to.
    base: PathBuf,
    errors: Vec<Diagnostic>,
    /// Where each feed with `push_token_file` names it: pushes need `[web]`.
    push_feeds: Vec<(String, std::ops::Range<usize>)>,
}

const TRANSPORTS: &[(&str, TransportKind)] =
    &[("smtp", TransportKind::Smtp), ("file", TransportKind::File)];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportKind {
    Smtp,
    File,
}

const TLS_MODES: &[(&str, TlsMode)] = &[
    ("starttls", TlsMode::Starttls),
    ("tls", TlsMode::Tls),
    ("none", TlsMode::None),
];

const FORMATS: &[(&str, FeedFormat)] = &[
    ("csv", FeedFormat::Csv),
    ("jsonl", FeedFormat::Jsonl),
    ("ndjson", FeedFormat::Jsonl),
    ("json", FeedFormat::Json),
    ("xlsx", FeedFormat::Xlsx),
    ("ods", FeedFormat::Ods),
];

const ON_DONE: &[(&str, OnDone)] = &[("move", OnDone::Move), ("delete", OnDone::Delete)];

impl<'a> Sections<'a> {
    fn new(path: &'a Path, text: &'a str) -> Sections<'a> {
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Sections {
            path,
            text,
            base,
            errors: Vec::new(),
            push_feeds: Vec::new(),
        }
    }

    fn error(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.path, self.text, span.start, message));
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// A duration key, or `default` when it is absent or wrong.
    fn duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(s) = value else { return default };
        match parse_duration(s.get_ref()) {
            // Zero would make a timer spin or a retry hammer the server.
            Ok(d) if d.is_zero() && default != Duration::ZERO => {
                self.error(
                    s.span(),
                    format!("`{}` must be longer than zero", s.get_ref()),
                );
                default
            }
            Ok(d) => d,
            Err(msg) => {
                self.error(s.span(), msg);
                default
            }
        }
    }

    /// A key that names one of `choices`: `default` when it is absent, `None`
    /// (and noted) when it names none of them.
    fn choice<T: Copy + PartialEq>(
        &mut self,
        value: &Option<Spanned<String>>,
        choices: &[(&str, T)],
        what: &str,
        default: T,
    ) -> Option<T> {
        let Some(v) = value else {
            return Some(default);
        };
        match choice(v.get_ref(), choices, what) {
            Ok(found) => Some(found),
            Err(msg) => {
                self.error(v.span(), msg);
                None
            }
        }
    }

    /// `[daemon]`, all but `ops` (see [`Sections::ops`]).
    fn daemon(&mut self, d: RawDaemon) -> DaemonConfig {
        let rescan_interval = self.duration(&d.rescan_interval, Duration::from_secs(30));
        let settle = self.duration(&d.settle, Duration::from_secs(2));
        let shutdown_timeout = self.duration(&d.shutdown_timeout, Duration::from_secs(20));
        let ops_interval = self.duration(&d.ops_interval, Duration::from_secs(600));
        let timezone_name = d
            .timezone
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_else(|| "Europe/London".to_string());
        let timezone = TimeZone::get(&timezone_name).unwrap_or_else(|e| {
            self.error(
                span_of(&d.timezone),
                format!("unknown time zone `{timezone_name}`: {e}"),
            );
            TimeZone::UTC
        });
        let rules = d
            .rules
            .unwrap_or_else(|| vec!["rules/*.toml".to_string()])
            .iter()
            .map(|g| self.resolve(g).to_string_lossy().into_owned())
            .collect();
        DaemonConfig {
            state_dir: self.resolve(d.state_dir.as_deref().unwrap_or("var/state")),
            rules,
            timezone,
            timezone_name,
            ops: Vec::new(),
            rescan_interval,
            settle,
            shutdown_timeout,
            ops_interval,
        }
    }

    /// `[daemon] ops`: the partners that get the self-alerts.
    fn ops(&mut self, ops: Vec<Spanned<String>>, partners: &[Partner]) -> Vec<String> {
        for o in &ops {
            if !partners.iter().any(|p| p.id == *o.get_ref()) {
                self.error(o.span(), unknown_partner_message(o.get_ref(), partners));
            }
        }
        ops.into_iter().map(Spanned::into_inner).collect()
    }

    /// `[mail]`.
    fn mail(&mut self, m: RawMail) -> MailConfig {
        let timeout = self.duration(&m.timeout, Duration::from_secs(30));
        let retry_initial = self.duration(&m.retry_initial, Duration::from_secs(30));
        // Five minutes, not an hour: after an outage a critical alert must not
        // wait for a long retry delay (SPEC §7); the probe does the rest.
        let retry_max = self.duration(&m.retry_max, Duration::from_secs(300));
        let helo_name = m.helo_name.as_ref().map(|h| {
            let name = h.get_ref().trim().to_string();
            if let Err(why) = valid_helo_name(&name) {
                self.error(
                    h.span(),
                    format!(
                        "[mail] helo_name = \"{}\": {why}",
                        crate::display::escape_controls(&name)
                    ),
                );
            }
            name
        });
        let max_connections = match &m.max_connections {
            Some(n) if !(1..=32).contains(n.get_ref()) => {
                self.error(
                    n.span(),
                    format!(
                        "[mail] max_connections = {}: must be between 1 and 32",
                        n.get_ref()
                    ),
                );
                DEFAULT_MAIL_MAX_CONNECTIONS
            }
            Some(n) => *n.get_ref(),
            None => DEFAULT_MAIL_MAX_CONNECTIONS,
        };
        let transport =
            match self.choice(&m.transport, TRANSPORTS, "transport", TransportKind::Smtp) {
                Some(TransportKind::Smtp) => Transport::Smtp(self.smtp(&m)),
                Some(TransportKind::File) => Transport::File {
                    dir: self.resolve(m.file_dir.as_deref().unwrap_or("var/mail")),
                },
                // Already reported, so the config is refused: any transport will do.
                None => Transport::File {
                    dir: self.resolve("var/mail"),
                },
            };
        let from = m
            .from
            .as_ref()
            .map(|f| f.get_ref().clone())
            .unwrap_or_else(|| "earlywarn <earlywarn@localhost>".into());
        if let Err(e) = from.parse::<lettre::message::Mailbox>() {
            self.error(span_of(&m.from), format!(
                "`{from}` is not a sender like \"GM Early Warning <earlywarn@example.org>\" ({e}); put a display name with punctuation in double quotes: \"\\\"GM Early Warning (test)\\\" <earlywarn@example.org>\""
            ));
        }
        if let Some(r) = &m.reply_to
            && let Err(e) = r.get_ref().parse::<lettre::message::Mailbox>()
        {
            self.error(r.span(), format!(
                "reply_to `{}` is not a mailbox like \"GM Drug Alert Panel <panel@example.org>\" ({e})",
                r.get_ref()
            ));
        }
        MailConfig {
            from,
            reply_to: m.reply_to.map(Spanned::into_inner),
            contact: m
                .contact
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty()),
            marking: m.marking.unwrap_or_else(|| "OFFICIAL-SENSITIVE".into()),
            transport,
            timeout,
            retry_initial,
            retry_max,
            helo_name,
            max_connections,
        }
    }

    /// `[mail]` with `transport = "smtp"`: encrypted unless the relay is on
    /// loopback, and the password never in the config itself.
    fn smtp(&mut self, m: &RawMail) -> SmtpConfig {
        let tls = self
            .choice(&m.tls, TLS_MODES, "tls", TlsMode::Starttls)
            .unwrap_or(TlsMode::Starttls);
        let host = match &m.host {
            Some(h) => h.get_ref().clone(),
            None => {
                self.error(0..0, "[mail] transport = \"smtp\" needs `host`");
                String::new()
            }
        };
        if tls == TlsMode::None && !host.is_empty() && !is_loopback_host(&host) {
            self.error(span_of(&m.tls), format!(
                "tls = \"none\" is refused for `{host}`: mail would cross the network unencrypted; it is allowed only for a loopback host (127.0.0.1, ::1, localhost)"
            ));
        }
        if let Some(password) = &m.password {
            self.error(password.span(), "the SMTP password is never written in the config: put it in a file and name it with `password_file` (or use systemd's LoadCredential)");
        }
        let port = m.port.unwrap_or(match tls {
            TlsMode::Tls => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        });
        SmtpConfig {
            host,
            port,
            tls,
            username: m.username.clone(),
            password_file: m.password_file.as_deref().map(|p| self.resolve(p)),
            ca_file: m.ca_file.as_deref().map(|p| self.resolve(p)),
        }
    }

    /// Every `[[partner]]`.
    fn partners(&mut self, raw: Vec<RawPartner>) -> Vec<Partner> {
        let mut ids = HashSet::new();
        let mut partners = Vec::new();
        for p in raw {
            if !ids.insert(p.id.get_ref().clone()) {
                self.error(
                    p.id.span(),
                    format!("partner `{}` is defined twice", p.id.get_ref()),
                );
            }
            partners.push(self.partner(p));
        }
        partners
    }

    /// One `[[partner]]`.
    fn partner(&mut self, p: RawPartner) -> Partner {
        let id = p.id.get_ref().clone();
        if p.emails.is_empty() {
            self.error(p.id.span(), format!("partner `{id}` has no `emails`"));
        }
        for e in &p.emails {
            if e.get_ref().parse::<lettre::Address>().is_err() {
                self.error(
                    e.span(),
                    format!("`{}` is not an email address", e.get_ref()),
                );
            }
        }
        let min_severity = match &p.min_severity {
            None => Severity::Info,
            Some(s) => Severity::choose(s.get_ref()).unwrap_or_else(|msg| {
                self.error(s.span(), msg);
                Severity::Info
            }),
        };
        let districts = match p.districts {
            Some(list) if !list.iter().any(|d| d.trim() == "*") => Some(list),
            _ => None,
        };
        Partner {
            name: p.name.unwrap_or_else(|| id.clone()),
            id,
            emails: p.emails.into_iter().map(Spanned::into_inner).collect(),
            isa: p.isa.unwrap_or(false),
            districts,
            min_severity,
        }
    }

    /// Every `[[feed]]`: at least one, each with its own name and folder.
    fn feeds(&mut self, raw: Vec<RawFeed>) -> Vec<FeedConfig> {
        let mut names = HashSet::new();
        let mut dirs = HashSet::new();
        let mut feeds = Vec::new();
        for f in raw {
            let name = f.name.get_ref();
            if !names.insert(name.clone()) {
                self.error(f.name.span(), format!("feed `{name}` is defined twice"));
            }
            let dir = self.resolve(&f.dir);
            if !dirs.insert(dir.clone()) {
                self.error(
                    f.name.span(),
                    format!("feed `{name}` shares its dir with another feed"),
                );
            }
            feeds.push(self.feed(f, dir));
        }
        if feeds.is_empty() {
            self.error(
                0..0,
                "the config has no [[feed]]: earlywarn needs at least one folder to watch",
            );
        }
        feeds
    }

    /// One `[[feed]]`, its folder already resolved.
    fn feed(&mut self, mut f: RawFeed, dir: PathBuf) -> FeedConfig {
        let name = f.name.get_ref().clone();
        let format = self
            .choice(&f.format, FORMATS, "format", FeedFormat::Csv)
            .unwrap_or(FeedFormat::Csv);
        let on_done = self
            .choice(&f.on_done, ON_DONE, "on_done", OnDone::Move)
            .unwrap_or(OnDone::Move);
        let delimiter = f.delimiter.as_ref().and_then(|d| self.delimiter(d));
        if let Some(tf) = &f.time_format
            && !tf.get_ref().contains('%')
        {
            self.error(
                tf.span(),
                "time_format is a strftime pattern like \"%d/%m/%Y %H:%M\"",
            );
        }
        for (label, field) in [("id_field", &f.id_field), ("time_field", &f.time_field)] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                self.error(
                    f.name.span(),
                    format!("feed `{name}`: {label} is empty; name a column, or leave the key out"),
                );
            }
        }
        let max_future = match &f.max_future {
            None => DEFAULT_MAX_FUTURE,
            Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|msg| {
                self.error(s.span(), format!("`max_future`: {msg}"));
                DEFAULT_MAX_FUTURE
            }),
        };
        let sensitive = f.sensitive.take().unwrap_or_default();
        let district_field = f
            .district_field
            .as_ref()
            .map(|d| d.get_ref().clone())
            .unwrap_or_else(|| "district".into());
        self.refuse_sensitive_district(&f, &sensitive, &district_field);
        self.check_declared_columns(&f);
        let fields = f.fields;
        let push_token = f.push_token_file.as_ref().and_then(|file| {
            let path = self.resolve(file.get_ref());
            self.push_feeds.push((name.clone(), file.span()));
            read_push_token(&path)
                .map_err(|why| {
                    self.error(
                        file.span(),
                        format!("feed `{name}`: push_token_file {}: {why}", path.display()),
                    )
                })
                .ok()
        });
        FeedConfig {
            name,
            dir,
            format,
            id_field: f.id_field,
            time_field: f.time_field,
            time_format: f.time_format.map(Spanned::into_inner),
            list_fields: f.list_fields.unwrap_or_default(),
            sensitive_keys: sensitive.iter().map(|s| field_key(s)).collect(),
            sensitive,
            district_field,
            field_keys: fields
                .as_ref()
                .map(|cols| cols.iter().map(|c| field_key(c)).collect()),
            fields,
            on_done,
            max_file_bytes: f.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
            delimiter,
            max_future,
            sheet: f.sheet,
            labels: f
                .labels
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.into_inner(), v))
                .collect(),
            push_token,
        }
    }

    /// A feed's `delimiter`: one character, or `tab` (also written `\t`).
    fn delimiter(&mut self, value: &Spanned<String>) -> Option<u8> {
        let v = value.get_ref();
        let byte = if v == "\\t" || v == "tab" {
            Some(b'\t')
        } else if v.len() == 1 {
            Some(v.as_bytes()[0])
        } else {
            None
        };
        if byte.is_none() {
            self.error(value.span(), "delimiter must be one character, or \"tab\"");
        }
        byte
    }

    /// The district is shown and routed on for every partner: it cannot be withheld.
    fn refuse_sensitive_district(
        &mut self,
        f: &RawFeed,
        sensitive: &[String],
        district_field: &str,
    ) {
        let Some(written) = sensitive
            .iter()
            .find(|s| field_key(s) == field_key(district_field))
        else {
            return;
        };
        let span = f
            .district_field
            .as_ref()
            .map(|d| d.span())
            .unwrap_or(f.name.span());
        let spelt = if written == district_field {
            String::new()
        } else {
            format!(" (as `{written}`)")
        };
        self.error(span, format!(
            "`{district_field}` is sensitive in feed `{}`{spelt}: the district goes into the subject and the email of every partner, including those without the ISA; route on a field that is not sensitive (a borough, not an address), or set `district_field` to one",
            f.name.get_ref()
        ));
    }

    /// A feed that lists its `fields` must list its id and time fields among them.
    fn check_declared_columns(&mut self, f: &RawFeed) {
        let Some(columns) = &f.fields else { return };
        for (label, field) in [("id_field", &f.id_field), ("time_field", &f.time_field)] {
            if let Some(v) = field
                && !columns.contains(v)
            {
                self.error(
                    f.name.span(),
                    format!(
                        "feed `{}`: {label} `{v}` is not among its `fields`",
                        f.name.get_ref()
                    ),
                );
            }
        }
        // A label for a column the feed does not have is a typo: it would
        // silently label nothing.
        for field in f.labels.iter().flat_map(|l| l.keys()) {
            let key = field_key(field.get_ref());
            if !columns.iter().any(|c| field_key(c) == key) {
                self.error(
                    field.span(),
                    format!(
                        "feed `{}`: labels names `{}`, which is not among its `fields`",
                        f.name.get_ref(),
                        field.get_ref()
                    ),
                );
            }
        }
    }

    /// `[web]`: a listener off loopback needs TLS (SPEC §9: the console
    /// carries passwords and alerts), and `public_url` must be a plain
    /// `http(s)://host[:port][/path]` that links in emails can use.
    fn web(&mut self, w: RawWeb) -> WebConfig {
        let listen = match &w.listen {
            None => parse_listen(DEFAULT_WEB_LISTEN),
            Some(l) => {
                let addr = parse_listen(l.get_ref());
                if addr.is_none() {
                    self.error(
                        l.span(),
                        format!(
                            "`{}` is not a port like \"8080\" (on loopback) or an address and port like \"127.0.0.1:8080\"",
                            l.get_ref()
                        ),
                    );
                }
                addr
            }
        }
        .unwrap_or_else(|| std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 8080)));
        let tls = match (&w.tls_cert, &w.tls_key) {
            (Some(cert), Some(key)) => Some(WebTls {
                cert: self.resolve(cert.get_ref()),
                key: self.resolve(key.get_ref()),
            }),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                self.error(
                    one.span(),
                    "[web] needs both `tls_cert` and `tls_key` to serve HTTPS, or neither",
                );
                None
            }
        };
        if tls.is_none() && !listen.ip().is_loopback() {
            self.error(
                span_of(&w.listen),
                format!(
                    "[web] listen = \"{listen}\" is not a loopback address: the console carries passwords and alerts, so serve it with `tls_cert` and `tls_key`, or listen on 127.0.0.1 behind the organisation's HTTPS proxy"
                ),
            );
        }
        let public_url = match &w.public_url {
            Some(url) => {
                let text = url.get_ref().trim().trim_end_matches('/').to_string();
                if let Err(why) = check_public_url(&text) {
                    self.error(
                        url.span(),
                        format!("[web] public_url `{}`: {why}", url.get_ref()),
                    );
                }
                text
            }
            None => format!(
                "{}://{listen}",
                if tls.is_some() { "https" } else { "http" }
            ),
        };
        let session_idle = self.duration(&w.session_idle, DEFAULT_SESSION_IDLE);
        let max_connections = match w.max_connections {
            Some(n) if n == 0 || n > 10_000 => {
                self.error(0..0, "[web] max_connections must be between 1 and 10000");
                DEFAULT_WEB_MAX_CONNECTIONS
            }
            Some(n) => n,
            None => DEFAULT_WEB_MAX_CONNECTIONS,
        };
        WebConfig {
            listen,
            public_url,
            tls,
            session_idle,
            max_connections,
        }
    }

    /// `[metrics] listen`.
    fn metrics(&mut self, m: &RawMetrics) -> Option<std::net::SocketAddr> {
        let listen = m.listen.as_ref()?;
        let addr = parse_listen(listen.get_ref());
        if addr.is_none() {
            self.error(
                listen.span(),
                format!(
                    "`{}` is not a port like \"9464\" (on loopback) or an address and port like \"127.0.0.1:9464\"",
                    listen.get_ref()
                ),
            );
        }
        addr
    }
}

/// Where a problem with an optional key is reported: the value, or the file's start.
fn span_of<T>(value: &Option<Spanned<T>>) -> std::ops::Range<usize> {
    value.as_ref().map(|v| v.span()).unwrap_or(0..0)
}

/// The message for a reference to a partner id that does not exist.
pub fn unknown_partner_message(id: &str, partners: &[Partner]) -> String {
    match suggest(id, partners.iter().map(|p| p.id.as_str())) {
        Some(s) => format!("unknown partner `{id}`; did you mean `{s}`?"),
        None => format!(
            "unknown partner `{id}`; the partners are: {}",
            partners
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Checks a `[mail] helo_name`: a fully qualified domain name (RFC 5321
/// `Domain`, with at least one dot, as relays that refuse non-FQDN names
/// want) or an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
pub fn valid_helo_name(name: &str) -> Result<(), String> {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ok = match inner.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err("not an address literal; write one like [192.0.2.1] or [IPv6:2001:db8::1]".into())
        };
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("not a fully qualified domain name (it has no dot), which relays may refuse; write the machine's full name, like mail1.example.org, or an address literal like [192.0.2.1]".into());
    }
    for label in labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("not a domain name: labels are letters, digits and inner hyphens, separated by single dots".into());
        }
    }
    Ok(())
}

/// Parses durations like `500ms`, `30s`, `15m`, `6h`, `7d`, `2w`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a duration; write a number and a unit, like \"30s\", \"15m\", \"6h\", \"7d\" or \"1h30m\""
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
            "m" | "min" | "mins" | "minute" | "minutes" => {
                Duration::from_secs(n.saturating_mul(60))
            }
            "h" | "hour" | "hours" => Duration::from_secs(n.saturating_mul(3600)),
            "d" | "day" | "days" => Duration::from_secs(n.saturating_mul(86_400)),
            "w" | "week" | "weeks" => Duration::from_secs(n.saturating_mul(7 * 86_400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = rest[unit_len..].trim_start();
    }
    // Nothing an alerting rule means is longer; bigger values would only overflow time arithmetic.
    const LONGEST: Duration = Duration::from_secs(100 * 366 * 86_400);
    if total > LONGEST {
        return Err(format!(
            "`{s}` is longer than 100 years; no window, deadline or interval needs that"
        ));
    }
    Ok(total)
}

// ---------------------------------------------------------------- raw TOML shape

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    mail: RawMail,
    #[serde(default)]
    feed: Vec<RawFeed>,
    #[serde(default)]
    partner: Vec<RawPartner>,
    #[serde(default)]
    metrics: RawMetrics,
    web: Option<RawWeb>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    session_idle: Option<Spanned<String>>,
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    ops_interval: Option<Spanned<String>>,
    state_dir: Option<String>,
    rules: Option<Vec<String>>,
    timezone: Option<Spanned<String>>,
    ops: Option<Vec<Spanned<String>>>,
    rescan_interval: Option<Spanned<String>>,
    settle: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMail {
    from: Option<Spanned<String>>,
    reply_to: Option<Spanned<String>>,
    contact: Option<String>,
    transport: Option<Spanned<String>>,
    file_dir: Option<String>,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<Spanned<String>>,
    username: Option<String>,
    password_file: Option<String>,
    /// Refused with a clear message rather than as an unknown key.
    password: Option<Spanned<String>>,
    ca_file: Option<String>,
    marking: Option<String>,
    timeout: Option<Spanned<String>>,
    retry_initial: Option<Spanned<String>>,
    retry_max: Option<Spanned<String>>,
    helo_name: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: Spanned<String>,
    dir: String,
    format: Option<Spanned<String>>,
    id_field: Option<String>,
    time_field: Option<String>,
    time_format: Option<Spanned<String>>,
    list_fields: Option<BTreeMap<String, String>>,
    sensitive: Option<Vec<String>>,
    district_field: Option<Spanned<String>>,
    fields: Option<Vec<String>>,
    on_done: Option<Spanned<String>>,
    max_file_bytes: Option<u64>,
    delimiter: Option<Spanned<String>>,
    max_future: Option<Spanned<String>>,
    sheet: Option<String>,
    labels: Option<BTreeMap<Spanned<String>, String>>,
    push_token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: Spanned<String>,
    name: Option<String>,
    #[serde(default)]
    emails: Vec<Spanned<String>>,
    isa: Option<bool>,
    districts: Option<Vec<String>>,
    min_severity: Option<Spanned<String>>,
}

/// Whether `url` can be the base of links in emails: `http://` or `https://`,
/// a host, no query, fragment, user or password, and nothing a mail client or
/// an HTML attribute would read differently (spaces, quotes, angle brackets).
fn check_public_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http:// for a test)")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("names no host");
    }
    if rest.chars().any(|c| {
        c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`')
    }) {
        return Err("holds a space, a quote or an angle bracket");
    }
    if rest.contains(['?', '#', '@']) {
        return Err("must not hold a query (`?`), a fragment (`#`) or a user name (`@`)");
    }
    Ok(())
}

/// `[metrics] listen`: a bare port binds to loopback (SPEC §8: nothing is
/// exposed unless the operator names an address); `ADDRESS:PORT` as written.
fn parse_listen(text: &str) -> Option<std::net::SocketAddr> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Some(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            port,
        )));
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[daemon]
state_dir = "state"
[mail]
transport = "file"
[[feed]]
name = "drug_testing"
dir = "in/drug"
[[partner]]
id = "panel"
emails = ["panel@example.org"]
isa = true
districts = ["*"]
[[partner]]
id = "bolton"
emails = ["b@example.org"]
districts = ["Bolton"]
"#;

    /// MINIMAL with `push_token_file = "tok"` on its feed, in `dir`, with `[web]` or not.
    fn with_push_token(dir: &Path, token: &str, mode: u32, web: bool) -> Result<Config, String> {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.join("tok");
        std::fs::write(&file, token).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let text = MINIMAL.replace(
            "dir = \"in/drug\"\n",
            "dir = \"in/drug\"\npush_token_file = \"tok\"\n",
        ) + if web { "[web]\n" } else { "" };
        Config::parse(&dir.join("c.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_push_token_is_read_trimmed_and_compared_whole() {
        let dir = tempfile::tempdir().unwrap();
        let token = "0123456789abcdef0123456789abcdef-lab";
        let cfg = with_push_token(dir.path(), &format!("{token}\n"), 0o600, true).unwrap();
        let read = cfg.feeds[0].push_token.as_ref().unwrap();
        assert!(read.matches(token.as_bytes()));
        assert!(!read.matches(&token.as_bytes()[..token.len() - 1]));
        assert!(!read.matches(format!("{token}x").as_bytes()));
        assert!(!read.matches(b""));
        assert_eq!(format!("{read:?}"), "PushToken(..)");
        assert!(
            Config::parse(Path::new("/etc/ew/c.toml"), MINIMAL)
                .unwrap()
                .feeds[0]
                .push_token
                .is_none()
        );
    }

    #[test]
    fn a_push_token_file_others_can_read_a_short_token_or_no_web_listener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = "0123456789abcdef0123456789abcdef";
        let err = with_push_token(dir.path(), good, 0o640, true).unwrap_err();
        assert!(
            err.contains("readable by its group") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(err.contains("c.toml:"), "placed in the config: {err}");
        let err = with_push_token(dir.path(), "short", 0o600, true).unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        let err = with_push_token(dir.path(), "  \n", 0o600, true).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let err = with_push_token(dir.path(), "0123456789abcdef 0123456789abcdef", 0o600, true)
            .unwrap_err();
        assert!(err.contains("cannot carry"), "{err}");
        let err = with_push_token(dir.path(), good, 0o600, false).unwrap_err();
        assert!(err.contains("no [web] section"), "{err}");
        std::fs::remove_file(dir.path().join("tok")).unwrap();
        let text = MINIMAL.replace(
            "dir = \"in/drug\"\n",
            "dir = \"in/drug\"\npush_token_file = \"missing\"\n",
        ) + "[web]\n";
        let err = Config::parse(&dir.path().join("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot open it"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_config_folder() {
        let cfg = Config::parse(Path::new("/etc/ew/earlywarn.toml"), MINIMAL).unwrap();
        assert_eq!(cfg.daemon.state_dir, Path::new("/etc/ew/state"));
        assert_eq!(cfg.feeds[0].dir, Path::new("/etc/ew/in/drug"));
        assert_eq!(cfg.daemon.rules, ["/etc/ew/rules/*.toml"]);
        assert!(
            matches!(cfg.mail.transport, Transport::File { ref dir } if dir == Path::new("/etc/ew/var/mail"))
        );
        assert!(cfg.partner("panel").unwrap().covers(None));
        assert!(cfg.partner("bolton").unwrap().covers(Some("bolton")));
        assert!(!cfg.partner("bolton").unwrap().covers(Some("Bury")));
        assert!(!cfg.partner("bolton").unwrap().isa);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let text = MINIMAL.replace(
            "transport = \"file\"",
            "transport = \"smtp\"\nhost = \"mail.example.org\"\ntls = \"none\"",
        );
        let err = Config::parse(Path::new("c.toml"), &text).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("c.toml:7:7: tls = \"none\" is refused"),
            "{shown}"
        );

        let text = MINIMAL.replace("[daemon]", "[daemon]\nops = [\"panell\"]");
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("c.toml:3:8: unknown partner `panell`; did you mean `panel`?"),
            "{shown}"
        );

        let text = MINIMAL.replace("isa = true", "isa = true\ncolour = \"red\"");
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("unknown key `colour`"), "{shown}");
        assert!(shown.starts_with("c.toml:13:1:"), "{shown}");

        let text = MINIMAL.replace("dir = \"in/drug\"", "dir = \"in/drug\"\nid_field = \"\"");
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains("feed `drug_testing`: id_field is empty"),
            "{shown}"
        );
    }

    #[test]
    fn mail_max_connections_defaults_to_4_and_is_bounded() {
        let mail = |line: &str| {
            let text = MINIMAL.replace(
                "transport = \"file\"",
                &format!("transport = \"file\"\n{line}"),
            );
            Config::parse(Path::new("/etc/ew/c.toml"), &text).map(|c| c.mail.max_connections)
        };
        assert_eq!(mail("").unwrap(), DEFAULT_MAIL_MAX_CONNECTIONS);
        assert_eq!(mail("max_connections = 1").unwrap(), 1);
        assert_eq!(mail("max_connections = 32").unwrap(), 32);
        for bad in ["0", "33"] {
            let shown = mail(&format!("max_connections = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                shown.contains("c.toml:6:19") && shown.contains("between 1 and 32"),
                "{shown}"
            );
        }
    }

    #[test]
    fn the_console_is_off_loopback_only_with_tls() {
        let web = |section: &str| {
            let text = format!("[web]\n{section}\n{MINIMAL}");
            Config::parse(Path::new("/etc/ew/c.toml"), &text).map(|c| c.web.unwrap())
        };
        let w = web("").unwrap();
        assert_eq!(w.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(w.public_url, "http://127.0.0.1:8080");
        assert_eq!(w.session_idle, DEFAULT_SESSION_IDLE);
        assert!(!w.is_https());
        let shown = web("listen = \"0.0.0.0:8443\"").unwrap_err().to_string();
        assert!(
            shown.contains("c.toml:2:10") && shown.contains("tls_cert"),
            "{shown}"
        );
        let w = web("listen = \"0.0.0.0:8443\"\ntls_cert = \"tls/c.pem\"\ntls_key = \"tls/k.pem\"\npublic_url = \"https://ew.example.org/\"").unwrap();
        assert_eq!(w.tls.as_ref().unwrap().cert, Path::new("/etc/ew/tls/c.pem"));
        assert_eq!(w.public_url, "https://ew.example.org");
        assert_eq!(w.alert_url("EW-1"), "https://ew.example.org/alerts/EW-1");
        assert!(w.is_https());
        assert!(
            web("tls_cert = \"c.pem\"")
                .unwrap_err()
                .to_string()
                .contains("both")
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://a b",
            r#"https://x/"><script>"#,
            "https://u@x",
            "https://x/?q=1",
        ] {
            let err = web(&format!("public_url = {bad:?}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("public_url"), "{bad}: {err}");
        }
        assert!(web("max_connections = 0").is_err());
        assert!(web("nonsense = 1").is_err());
    }

    #[test]
    fn metrics_listen_defaults_to_loopback() {
        let listen = |value: &str| {
            let text = format!("[metrics]\nlisten = \"{value}\"\n{MINIMAL}");
            Config::parse(Path::new("c.toml"), &text).map(|c| c.metrics_listen)
        };
        assert_eq!(
            listen("9464").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            listen("0.0.0.0:9464").unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
        assert_eq!(
            listen("[::1]:9464").unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
        let shown = listen("metrics.example.org").unwrap_err().to_string();
        assert!(shown.contains("is not a port like \"9464\""), "{shown}");
    }

    #[test]
    fn loopback_may_skip_tls_and_passwords_stay_out() {
        let text = MINIMAL.replace(
            "transport = \"file\"",
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"",
        );
        let cfg = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert!(
            matches!(cfg.mail.transport, Transport::Smtp(ref s) if s.port == 2525 && s.tls == TlsMode::None)
        );
        let text = MINIMAL.replace(
            "transport = \"file\"",
            "transport = \"smtp\"\nhost = \"localhost\"\npassword = \"hunter2\"",
        );
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("never written in the config"), "{shown}");
    }

    #[test]
    fn field_names_compare_without_case_spacing_underscores_or_hyphens() {
        for spelling in [
            "Post_Code",
            " post code ",
            "POSTCODE",
            "post-code",
            "post\u{200b}code",
            "Post\tCode",
        ] {
            assert_eq!(field_key(spelling), "postcode", "{spelling:?}");
        }
        assert_ne!(field_key("post.code"), "postcode");
        let text = MINIMAL.replace(
            "dir = \"in/drug\"",
            "dir = \"in/drug\"\nsensitive = [\"Notes\", \"post code\"]\nfields = [\"Sample_ID\", \"district\"]",
        );
        let cfg = Config::parse(Path::new("c.toml"), &text).unwrap();
        let feed = &cfg.feeds[0];
        assert_eq!(feed.sensitive_name("notes "), Some("Notes"));
        assert_eq!(feed.sensitive_name("POST_CODE"), Some("post code"));
        assert!(!feed.is_sensitive("notes2"));
        assert!(feed.is_listed("sample id") && feed.is_listed("DISTRICT"));
        assert!(!feed.is_listed("notes"));
    }

    #[test]
    fn a_sensitive_district_field_is_refused() {
        let text = MINIMAL.replace(
            "dir = \"in/drug\"",
            "dir = \"in/drug\"\nsensitive = [\"location\"]\ndistrict_field = \"Location\"",
        );
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            shown,
            "c.toml:10:18: `Location` is sensitive in feed `drug_testing` (as `location`): the district goes into the subject and the email of every partner, including those without the ISA; route on a field that is not sensitive (a borough, not an address), or set `district_field` to one"
        );
        let text = MINIMAL.replace(
            "dir = \"in/drug\"",
            "dir = \"in/drug\"\nsensitive = [\"District\"]",
        );
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            shown.starts_with(
                "c.toml:7:8: `district` is sensitive in feed `drug_testing` (as `District`)"
            ),
            "the default district field counts too: {shown}"
        );
    }

    #[test]
    fn labels_name_declared_columns_and_a_contact_line_is_kept() {
        let text = MINIMAL
            .replace(
                "dir = \"in/drug\"",
                "dir = \"in/drug\"\nfields = [\"sample_id\", \"linked_harm\"]\nlabels = { linked_harm = \"Linked harm\", linked_harms = \"Typo\" }",
            )
            .replace(
                "transport = \"file\"",
                "transport = \"file\"\ncontact = \"  Call the panel on 0161 000 0000.  \"",
            );
        let shown = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            shown,
            "c.toml:11:41: feed `drug_testing`: labels names `linked_harms`, which is not among its `fields`"
        );
        let config = Config::parse(
            Path::new("c.toml"),
            &text.replace(", linked_harms = \"Typo\"", ""),
        )
        .unwrap();
        assert_eq!(config.feeds[0].label("Linked Harm"), Some("Linked harm"));
        assert_eq!(config.feeds[0].label("sample_id"), None);
        assert_eq!(
            config.mail.contact.as_deref(),
            Some("Call the panel on 0161 000 0000.")
        );
        // Without `fields`, any column may be labelled.
        let free = MINIMAL.replace(
            "dir = \"in/drug\"",
            "dir = \"in/drug\"\nlabels = { anything = \"Anything\" }",
        );
        assert!(Config::parse(Path::new("c.toml"), &free).is_ok());
    }

    #[test]
    fn unknown_choices_suggest_the_closest_or_list_them() {
        let shown = |from: &str, to: &str| {
            Config::parse(Path::new("c.toml"), &MINIMAL.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            shown("dir = \"in/drug\"", "dir = \"in/drug\"\nformat = \"jsnl\""),
            "c.toml:9:10: unknown format `jsnl`; did you mean `jsonl`?"
        );
        assert_eq!(
            shown("dir = \"in/drug\"", "dir = \"in/drug\"\nformat = \"xml\""),
            "c.toml:9:10: unknown format `xml`; use csv, jsonl, json, xlsx or ods"
        );
        assert_eq!(
            shown("dir = \"in/drug\"", "dir = \"in/drug\"\non_done = \"keep\""),
            "c.toml:9:11: unknown on_done `keep`; use move or delete"
        );
        assert_eq!(
            shown("transport = \"file\"", "transport = \"smtpp\""),
            "c.toml:5:13: unknown transport `smtpp`; did you mean `smtp`?"
        );
        assert_eq!(
            shown(
                "transport = \"file\"",
                "transport = \"smtp\"\nhost = \"localhost\"\ntls = \"starttsl\""
            ),
            "c.toml:7:7: unknown tls `starttsl`; did you mean `starttls`?"
        );
        assert!(
            shown("isa = true", "isa = true\nmin_severity = \"urgent\"")
                .ends_with("unknown severity `urgent`; use info, warning or critical")
        );
        let text = MINIMAL.replace("isa = true", "isa = true\nmin_severity = \"Critical\"");
        let cfg = Config::parse(Path::new("c.toml"), &text).unwrap();
        assert_eq!(cfg.partners[0].min_severity, Severity::Critical);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(
            parse_duration("2 weeks"),
            Ok(Duration::from_secs(1_209_600))
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("six hours").is_err());
        assert!(parse_duration("6").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn helo_names_are_fully_qualified_names_or_address_literals() {
        for ok in [
            "mail1.example.org",
            "vm.internal",
            "a-b.c1",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert_eq!(valid_helo_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "vm",
            "",
            "a..b",
            "-a.example.org",
            "a-.example.org",
            "under_score.example.org",
            "spa ce.example.org",
            "[192.0.2]",
            "[2001:db8::1]",
            "[IPv6:nonsense]",
            "example.org\nRCPT TO:<x@y>",
        ] {
            assert!(valid_helo_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
