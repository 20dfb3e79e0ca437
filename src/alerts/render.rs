//! Rendering one partner's view of an alert as an email (plain text + HTML).
//!
//! Pure: takes the alert, the partner's [`Delivery`] and the config, returns the
//! finished RFC 5322 bytes. Subjects and leads come from minijinja templates
//! (the rule's own, or defaults), parsed once when the rule set loads
//! ([`Templates`]); the fixed parts that SPEC §5.3 promises
//! (marking, severity, evidence, advice, reference, why this partner got it,
//! withheld-fields notice) are always present. HTML escapes every value; header
//! values are single-line and encoded by lettre, so data cannot add headers.
//!
//! Headers (SPEC §7): a `Message-ID` per alert, partner and [`Purpose`], so a
//! draft and the approved alert never share one; `In-Reply-To`/`References`
//! to the first email the partner got in the alert's [`thread_key`] (looked up
//! by the caller, which owns the outbox); `Auto-Submitted`; `Reply-To` when
//! configured. `Date` is only a placeholder here: delivery replaces it with
//! the time of the first hand-off to the transport ([`with_date`]).

use super::{Alert, Audience, Delivery, Trigger, wording};
use crate::config::{Config, FeedConfig};
use crate::event::{Event, Value as FieldValue};
use crate::rules::Rule;
use jiff::Timestamp;
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use minijinja::{Environment, Template, UndefinedBehavior, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A rendered email, ready for the outbox.
#[derive(Debug, Clone)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
    pub message_id: String,
    /// The conversation this email belongs to (see [`thread_key`]): stored
    /// with the outbox row so later emails can find the partner's first one.
    pub thread: String,
    pub from: String,
    pub to: Vec<String>,
    /// The whole message as stored; `Date` is set again at hand-off ([`with_date`]).
    pub bytes: Vec<u8>,
}

/// Why an email about an alert is sent. Each purpose has its own `Message-ID`
/// (SPEC §7), so mail stores that drop duplicate ids keep every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The alert itself (to `notify`, a deadline notice, an ops notice).
    Alert,
    /// The draft for assessment sent to `review`.
    Draft,
    /// Update number N of an alert (SPEC §10).
    Update(u32),
    /// Reminder number N to a partner that has not acknowledged (SPEC §10).
    Reminder(u32),
    /// The withdrawal of an alert (SPEC §10).
    Withdrawn,
}

impl Purpose {
    /// The purpose of an email to `audience`.
    pub fn of(audience: Audience) -> Purpose {
        match audience {
            Audience::Notify => Purpose::Alert,
            Audience::Review => Purpose::Draft,
        }
    }

    /// What follows `ALERT.PARTNER` in the Message-ID's left part.
    fn suffix(self) -> String {
        match self {
            Purpose::Alert => String::new(),
            Purpose::Draft => ".draft".into(),
            Purpose::Update(n) => format!(".update-{n}"),
            Purpose::Reminder(n) => format!(".reminder-{n}"),
            Purpose::Withdrawn => ".withdrawn".into(),
        }
    }
}

/// The `Message-ID` of one email: `<ALERT.PARTNER[.PURPOSE]@DOMAIN>`, a pure
/// function of what it is about, so every retry of a row carries the same one.
/// The parts are reduced to characters that are safe in a msg-id, so no
/// partner id or domain can break the header.
pub fn message_id(alert_id: &str, partner_id: &str, purpose: Purpose, domain: &str) -> String {
    format!(
        "<{}.{}{}@{}>",
        sanitize_id(alert_id),
        sanitize_id(partner_id),
        purpose.suffix(),
        sanitize_domain(domain)
    )
}

/// The conversation an alert's emails belong to. A deadline's opening notice,
/// escalation and closed notice are three alerts; they share the deadline
/// (rule, key, due time), so each partner's later notices thread under the
/// first one it got. Any other alert is its own conversation: its draft and
/// its approved copy (and later updates, reminders, a withdrawal) share it.
pub fn thread_key(alert: &Alert) -> String {
    match &alert.trigger {
        Trigger::DeadlineOpened { key, due, .. }
        | Trigger::DeadlineOverdue { key, due }
        | Trigger::DeadlineClosed { key, due, .. } => format!(
            "deadline\u{1f}{}\u{1f}{}\u{1f}{}",
            alert.rule_id,
            // The engine keys deadlines case-folded: so must the thread.
            key.to_lowercase(),
            due.as_millisecond()
        ),
        _ => format!("alert\u{1f}{}", alert.id),
    }
}

/// Whether `id` is a msg-id as [`message_id`] makes them: `<left@right>` of
/// safe characters only. Anything else is never put in a header.
fn is_safe_message_id(id: &str) -> bool {
    let Some(inner) = id.strip_prefix('<').and_then(|s| s.strip_suffix('>')) else {
        return false;
    };
    let Some((left, right)) = inner.split_once('@') else {
        return false;
    };
    let safe = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.len() <= 200
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c))
    };
    safe(left, &[]) && safe(right, &['[', ']', ':'])
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error in rule `{rule}`: {message}")]
    Template { rule: String, message: String },
    #[error("cannot build the email: {0}")]
    Build(String),
}

/// A template syntax error at a byte offset of the template text.
#[derive(Debug)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

/// Checks a rule's template for syntax errors (at load time, so `check` reports them).
pub fn check_template(source: &str) -> Result<(), TemplateError> {
    let env = environment();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| TemplateError {
            offset: e.range().map(|r| r.start).unwrap_or(0),
            message: e.detail().unwrap_or("bad template").to_string(),
        })
}

/// A name in a template that may be a field: an identifier or a string literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReference {
    /// Byte offset of the name in the template source.
    pub offset: usize,
    /// The name as written (a string literal without its quotes).
    pub name: String,
}

/// Every name in a template's tags (`{{ }}`, `{% %}`) that could read a record's
/// field: `event.notes`, `event["Notes"]`, `events[0].notes`, `e.notes` in a loop,
/// `group.notes`, `map(attribute="notes")`. Names that cannot be fields are left
/// out: attributes of `rule`, `partner` and `loop`, filter and test names, keywords.
///
/// A scan of the source, not minijinja's syntax tree (which it keeps private), so it
/// errs towards reporting: `check` refuses a sensitive field named anywhere in a
/// subject, and a false alarm costs a rule writer a rename, a miss costs a leak.
pub fn field_references(source: &str) -> Vec<FieldReference> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "elif",
        "endif",
        "for",
        "endfor",
        "set",
        "endset",
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
        "with",
        "endwith",
        "macro",
        "endmacro",
        "call",
        "endcall",
        "filter",
        "endfilter",
        "raw",
        "endraw",
        "recursive",
        "include",
        "import",
        "from",
        "as",
        "block",
        "endblock",
        "extends",
        "autoescape",
        "endautoescape",
        "continue",
        "break",
        "do",
    ];
    /// Roots whose attributes are the template's own, never a record's fields.
    const OWN_ROOTS: &[&str] = &["rule", "partner", "loop"];
    /// The context's own variables (SPEC §5), named bare: never a field themselves.
    /// Those that carry a field's value (`district`, `key`, `group`, a first-seen
    /// value in `trigger`) are refused where the rule chooses that field.
    const CONTEXT: &[&str] = &[
        "rule", "alert_id", "group", "district", "events", "event", "count", "partner", "marking",
        "draft", "due", "key", "headline", "summary", "trigger", "loop", "found", "when",
    ];
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        let open = &bytes[i..i + 2];
        if open == b"{#" {
            i = source[i + 2..]
                .find("#}")
                .map_or(bytes.len(), |e| i + 2 + e + 2);
            continue;
        }
        let close: &[u8] = match open {
            b"{{" => b"}}",
            b"{%" => b"%}",
            _ => {
                i += 1;
                continue;
            }
        };
        i += 2;
        // The last two significant tokens, to tell `rule.name` and `x|title` from fields.
        let mut prev: (String, String) = (String::new(), String::new());
        let push = |tok: String, prev: &mut (String, String)| {
            prev.0 = std::mem::take(&mut prev.1);
            prev.1 = tok;
        };
        while i < bytes.len() && !bytes[i..].starts_with(close) {
            let c = bytes[i];
            if c == b'"' || c == b'\'' {
                let start = i + 1;
                let mut j = start;
                let mut text = String::new();
                while j < bytes.len() && bytes[j] != c {
                    if bytes[j] == b'\\' && j + 1 < bytes.len() {
                        j += 1;
                    }
                    // Whole characters, so a name with accents stays whole.
                    let ch = source[j..].chars().next().unwrap_or(' ');
                    text.push(ch);
                    j += ch.len_utf8();
                }
                found.push(FieldReference {
                    offset: start,
                    name: text,
                });
                push("\"".into(), &mut prev);
                i = j + 1;
            } else if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let name = &source[start..i];
                let own_attribute = prev.1 == "." && OWN_ROOTS.contains(&prev.0.as_str());
                let attribute = prev.1 == ".";
                let filter_or_test =
                    prev.1 == "|" || prev.1 == "is" || (prev.1 == "not" && prev.0 == "is");
                let keyword = !attribute && (KEYWORDS.contains(&name) || CONTEXT.contains(&name));
                if !own_attribute && !filter_or_test && !keyword {
                    found.push(FieldReference {
                        offset: start,
                        name: name.to_string(),
                    });
                }
                push(name.to_string(), &mut prev);
            } else {
                if !c.is_ascii_whitespace() {
                    push((c as char).to_string(), &mut prev);
                }
                // Step over a whole character: the source may hold any text.
                i += source[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        i += close.len();
    }
    found
}

/// The subject and lead templates of a rule set, parsed once when it loads
/// (`RuleSet::templates`), beside the defaults: rendering an email looks a
/// template up, it never parses one.
#[derive(Debug, Clone)]
pub struct Templates {
    /// Owns every source; a rule's are named by [`template_name`].
    env: Environment<'static>,
}

/// Which of a rule's two templates.
#[derive(Debug, Clone, Copy)]
enum Part {
    Subject,
    Lead,
}

/// A rule's template's name in [`Templates`]. Rule ids are unique, and a
/// `rule/` name never equals a `default/` one.
fn template_name(rule_id: &str, part: Part) -> String {
    match part {
        Part::Subject => format!("rule/{rule_id}/subject"),
        Part::Lead => format!("rule/{rule_id}/lead"),
    }
}

fn default_name(part: Part) -> &'static str {
    match part {
        Part::Subject => "default/subject",
        Part::Lead => "default/lead",
    }
}

impl Templates {
    /// Parses every rule's own templates. One that does not parse is left out,
    /// so its rule renders with the default (as when a template fails at run
    /// time); `RuleSet::from_sources` refuses such a rule before it gets here.
    pub fn compile(rules: &[Rule]) -> Templates {
        let mut env = environment();
        for (part, source) in [(Part::Subject, DEFAULT_SUBJECT), (Part::Lead, DEFAULT_LEAD)] {
            // Constants, rendered by every test: they parse.
            let _ = env.add_template(default_name(part), source);
        }
        for rule in rules {
            for (part, own) in [(Part::Subject, &rule.subject), (Part::Lead, &rule.body)] {
                if let Some(source) = own {
                    let _ = env.add_template_owned(template_name(&rule.id, part), source.clone());
                }
            }
        }
        Templates { env }
    }

    /// Only the defaults: for the fallback when a rule's template fails, and
    /// for self-alerts, whose rule has no templates.
    pub fn defaults() -> &'static Templates {
        static DEFAULTS: std::sync::LazyLock<Templates> =
            std::sync::LazyLock::new(|| Templates::compile(&[]));
        &DEFAULTS
    }

    /// The rule's own template, or the default. A summary of folded alerts always
    /// uses the default: a rule's template is written for one group's alert and
    /// would not say that this one stands for many.
    fn get(&self, alert: &Alert, rule: &Rule, part: Part) -> Result<Template<'_, '_>, RenderError> {
        let own = match alert.trigger {
            Trigger::Folded { .. } => None,
            _ => self.env.get_template(&template_name(&rule.id, part)).ok(),
        };
        match own {
            Some(template) => Ok(template),
            None => self
                .env
                .get_template(default_name(part))
                .map_err(|e| RenderError::Template {
                    rule: rule.id.clone(),
                    message: e.to_string(),
                }),
        }
    }
}

impl Default for Templates {
    fn default() -> Templates {
        Templates::compile(&[])
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A missing variable renders as nothing rather than failing a life-safety email.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // A template that loops without end must not stall the pipeline: out of fuel it
    // fails, and the default template is used instead.
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// Template instructions one rendering may spend (generous: a subject or lead
/// listing 50 records uses a few thousand).
const TEMPLATE_FUEL: u64 = 2_000_000;

const DEFAULT_SUBJECT: &str = "{{ headline }}";

const DEFAULT_LEAD: &str = "{{ summary }}";

/// Everything a template can see (SPEC §5).
#[derive(Serialize)]
struct TemplateContext<'a> {
    rule: RuleView<'a>,
    alert_id: &'a str,
    group: &'a BTreeMap<String, String>,
    district: Option<&'a str>,
    events: Vec<BTreeMap<String, serde_json::Value>>,
    event: Option<BTreeMap<String, serde_json::Value>>,
    count: u64,
    partner: PartnerView<'a>,
    marking: &'a str,
    draft: bool,
    due: Option<String>,
    key: Option<String>,
    /// What made the rule fire, in one line (the default subject).
    headline: String,
    /// What happened, in a sentence or two (the default lead).
    summary: String,
    /// What was found, in words: the values that made `when` true
    /// ("Protonitazene"), or the rule's name when there are none.
    found: String,
    /// When, as a headline says it: "tested Tue 4 Nov".
    when: String,
    trigger: &'a Trigger,
}

#[derive(Serialize)]
struct RuleView<'a> {
    id: &'a str,
    name: &'a str,
    severity: &'a str,
    advice: Option<&'a str>,
    description: Option<&'a str>,
}

#[derive(Serialize)]
struct PartnerView<'a> {
    id: &'a str,
    name: &'a str,
    isa: bool,
}

/// Renders the email for one delivery of an alert with `templates` (the rule
/// set's, or [`Templates::defaults`]). `first_in_thread` is the
/// `Message-ID` of the first email this partner got in the alert's
/// [`thread_key`], if any: the email then replies to it (`In-Reply-To`,
/// `References`), so the partner's mail client shows one conversation.
pub fn render_in_thread(
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
    config: &Config,
    first_in_thread: Option<&str>,
) -> Result<RenderedEmail, RenderError> {
    render_with(
        alert,
        rule,
        templates,
        delivery,
        config,
        first_in_thread,
        Extras::default(),
    )
}

/// What the alert's lifecycle (SPEC §10) adds to an email; the caller makes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The partner's acknowledgement link (`ack::link`), shown in text and HTML.
    pub ack_link: Option<&'a str>,
    /// The email sent again as a reminder: its own purpose (so its own
    /// Message-ID) and the subject marked `REMINDER: `.
    pub reminder: Option<Purpose>,
}

/// [`render_in_thread`] with the lifecycle's [`Extras`].
pub fn render_with(
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
    config: &Config,
    first_in_thread: Option<&str>,
    extras: Extras<'_>,
) -> Result<RenderedEmail, RenderError> {
    let feed = config.feed(&rule.feed);
    let show_time = time_shower(config);
    let (ctx, subject, headline) = subject_and_context(alert, rule, templates, delivery, config)?;
    let severity = assessed_severity(alert, rule);
    let lead = render_template(rule, &templates.get(alert, rule, Part::Lead)?, &ctx)?;
    let mut sections = Sections::build(alert, rule, delivery, feed, config, headline, &show_time);
    sections.ack_link = extras.ack_link.map(str::to_string);
    sections.reminder_note = extras.reminder.map(|_| reminder_note(delivery, config));
    let text = sections.text(&config.mail.marking, &lead);
    let html = sections.html(&config.mail.marking, &lead);
    let subject = match extras.reminder {
        Some(_) => format!("REMINDER: {subject}"),
        None => subject,
    };

    let from: Mailbox = config
        .mail
        .from
        .parse()
        .map_err(|e| RenderError::Build(format!("[mail] from: {e}")))?;
    let domain = from.email.domain().to_string();
    let mut message_id = message_id(
        &alert.id,
        &delivery.partner.id,
        extras
            .reminder
            .unwrap_or_else(|| Purpose::of(delivery.audience)),
        &domain,
    );
    let parent = first_in_thread.filter(|p| is_safe_message_id(p));
    if parent == Some(message_id.as_str()) {
        // A draft queued by a release that gave drafts no suffix has the
        // approved copy's id: the approval must not repeat it.
        message_id = message_id.replacen('@', ".approved@", 1);
    }
    let (to, bytes) = assemble(
        &Envelope {
            from: &from,
            subject: &subject,
            message_id: &message_id,
            // A placeholder: delivery writes the time of the first hand-off (SPEC §7).
            date: Some(alert.created_at),
            alert_id: &alert.id,
            rule_id: &rule.id,
            severity: Some(severity),
            parent,
            partner_id: &delivery.partner.id,
            addresses: &delivery.partner.emails,
        },
        config,
        &text,
        &html,
    )?;
    Ok(RenderedEmail {
        subject,
        text,
        html,
        message_id,
        thread: thread_key(alert),
        from: from.email.to_string(),
        to,
        bytes,
    })
}

/// The first line of an email sent again as a reminder: why it comes again.
fn reminder_note(delivery: &Delivery<'_>, config: &Config) -> String {
    match (delivery.audience, &config.web) {
        (Audience::Review, _) => {
            "REMINDER: this draft is still awaiting assessment. Nobody has approved or dismissed it within the time its rule allows.".into()
        }
        (Audience::Notify, Some(_)) => {
            "REMINDER: your organisation has not yet confirmed it received this alert. Please read it and confirm with the link after the advice.".into()
        }
        (Audience::Notify, None) => {
            "REMINDER: this alert was sent to you earlier; please make sure it has been read.".into()
        }
    }
}

/// What every email earlywarn sends has in its header, whatever its kind
/// (an alert, a draft, a notice about an alert): see [`assemble`].
pub(crate) struct Envelope<'a> {
    pub from: &'a Mailbox,
    pub subject: &'a str,
    pub message_id: &'a str,
    /// A `Date` placeholder (delivery sets the hand-off time either way).
    pub date: Option<Timestamp>,
    pub alert_id: &'a str,
    pub rule_id: &'a str,
    pub severity: Option<crate::config::Severity>,
    /// The `Message-ID` this email replies to; one that is not a plain
    /// `<...@...>` id is left out rather than written into a header.
    pub parent: Option<&'a str>,
    pub partner_id: &'a str,
    pub addresses: &'a [String],
}

/// The one place an email is put together: the headers of SPEC §7
/// (`Auto-Submitted`, `X-Earlywarn-*`, `Reply-To`, threading), one `To` per
/// address, and the text and HTML as `multipart/alternative`. Returns the
/// addresses (as sent in RCPT TO) and the message bytes.
pub(crate) fn assemble(
    envelope: &Envelope<'_>,
    config: &Config,
    text: &str,
    html: &str,
) -> Result<(Vec<String>, Vec<u8>), RenderError> {
    let mut builder = Message::builder()
        .from(envelope.from.clone())
        .subject(envelope.subject.to_string())
        .message_id(Some(envelope.message_id.to_string()));
    if let Some(date) = envelope.date {
        builder = builder.date(
            std::time::SystemTime::try_from(date).unwrap_or(std::time::SystemTime::UNIX_EPOCH),
        );
    }
    builder = builder
        .raw_header(HeaderValue::new(
            header_name("Auto-Submitted"),
            "auto-generated".to_string(),
        ))
        .raw_header(HeaderValue::new(
            header_name("X-Earlywarn-Alert"),
            one_line(envelope.alert_id),
        ))
        .raw_header(HeaderValue::new(
            header_name("X-Earlywarn-Rule"),
            one_line(envelope.rule_id),
        ));
    if let Some(severity) = envelope.severity {
        builder = builder.raw_header(HeaderValue::new(
            header_name("X-Earlywarn-Severity"),
            severity.as_str().to_string(),
        ));
    }
    if let Some(reply_to) = reply_to_mailbox(config)? {
        builder = builder.reply_to(reply_to);
    }
    if let Some(parent) = envelope.parent.filter(|p| is_safe_message_id(p)) {
        builder = builder
            .in_reply_to(parent.to_string())
            .references(parent.to_string());
    }
    let mut to = Vec::new();
    for address in envelope.addresses {
        let mailbox: Mailbox = address.parse().map_err(|e| {
            RenderError::Build(format!(
                "partner `{}` email `{address}`: {e}",
                envelope.partner_id
            ))
        })?;
        to.push(mailbox.email.to_string());
        builder = builder.to(mailbox);
    }
    let message = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text.to_string()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html.to_string()),
                ),
        )
        .map_err(|e| RenderError::Build(e.to_string()))?;
    Ok((to, message.formatted()))
}

/// `[mail] reply_to` as a mailbox (validated by `check`; parsed again here
/// because the config keeps it as written).
pub fn reply_to_mailbox(config: &Config) -> Result<Option<Mailbox>, RenderError> {
    config
        .mail
        .reply_to
        .as_deref()
        .map(|r| {
            r.parse::<Mailbox>()
                .map_err(|e| RenderError::Build(format!("[mail] reply_to: {e}")))
        })
        .transpose()
}

/// The message with its top-level `Date` header set to `at` (SPEC §7: when
/// the email was first handed to the transport). Only the header block is
/// touched: the first `Date` field there (with any folded continuation lines)
/// is replaced, or one is added at the top; every byte from the blank line
/// that ends the headers on is copied as it was.
pub fn with_date(message: &[u8], at: Timestamp) -> Vec<u8> {
    let date = jiff::fmt::rfc2822::to_string(&at.to_zoned_datetime(jiff::tz::TimeZone::UTC))
        // Only a year beyond 9999 cannot be printed; the wall clock never gets there.
        .unwrap_or_else(|_| "Thu, 1 Jan 1970 00:00:00 +0000".to_string());
    let line = format!("Date: {date}\r\n");
    // Through the CRLF of the last header line; the blank line and body follow.
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let headers = &message[..header_end];
    let mut line_starts = vec![0];
    line_starts.extend(
        memchr::memmem::find_iter(headers, b"\r\n")
            .map(|i| i + 2)
            .filter(|&i| i < header_end),
    );
    let is_date = |at: &usize| {
        headers[*at..]
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"date:"))
    };
    let mut out = Vec::with_capacity(message.len() + line.len());
    match line_starts.iter().position(is_date) {
        Some(i) => {
            let start = line_starts[i];
            // The field goes on over folded lines (starting with a space or tab).
            let end = line_starts[i + 1..]
                .iter()
                .copied()
                .find(|&s| !matches!(headers.get(s), Some(b' ' | b'\t')))
                .unwrap_or(header_end);
            out.extend_from_slice(&message[..start]);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(&message[end..]);
        }
        None => {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(message);
        }
    }
    out
}

/// How times are shown in emails: in the daemon's time zone, like "Tue 4 Nov 2025 11:30 GMT".
fn time_shower(config: &Config) -> impl Fn(Timestamp) -> String + '_ {
    let tz = &config.daemon.timezone;
    move |t: Timestamp| {
        t.to_zoned_datetime(tz.clone())
            .strftime("%a %-d %b %Y %H:%M %Z")
            .to_string()
    }
}

fn render_template(
    rule: &Rule,
    template: &Template<'_, '_>,
    ctx: &Value,
) -> Result<String, RenderError> {
    template.render(ctx).map_err(|e| RenderError::Template {
        rule: rule.id.clone(),
        message: e.to_string(),
    })
}

/// Only the subject of a delivery's email (what `replay` shows), without building the rest.
pub fn subject(
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
    config: &Config,
) -> Result<String, RenderError> {
    subject_and_context(alert, rule, templates, delivery, config).map(|(_, subject, _)| subject)
}

/// Only the headline of a delivery's email (its first line, in words), for a
/// page that shows the alert as that email did.
pub fn email_headline(
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
    config: &Config,
) -> Result<String, RenderError> {
    subject_and_context(alert, rule, templates, delivery, config).map(|(_, _, headline)| headline)
}

/// The template context (SPEC §5), the finished subject line and the
/// headline in it (the email's first line).
fn subject_and_context(
    alert: &Alert,
    rule: &Rule,
    templates: &Templates,
    delivery: &Delivery<'_>,
    config: &Config,
) -> Result<(Value, String, String), RenderError> {
    let show_time = time_shower(config);
    let feed = config.feed(&rule.feed);
    let facts = Facts::of(alert, rule, delivery, feed, config);
    let events: Vec<BTreeMap<String, serde_json::Value>> = delivery
        .events
        .iter()
        .map(|e| event_map(e, &show_time))
        .collect();
    let district = delivery.district.as_deref();
    let draft = delivery.audience == Audience::Review;
    let ctx = TemplateContext {
        rule: RuleView {
            id: &rule.id,
            name: &rule.name,
            severity: rule.severity.as_str(),
            advice: rule.advice.as_deref(),
            description: rule.description.as_deref(),
        },
        alert_id: &alert.id,
        group: &delivery.group,
        district,
        event: events.first().cloned(),
        events,
        count: delivery.count,
        partner: PartnerView {
            id: &delivery.partner.id,
            name: &delivery.partner.name,
            isa: delivery.partner.isa,
        },
        marking: &config.mail.marking,
        draft,
        due: delivery.trigger.deadline().map(|(_, due)| show_time(due)),
        key: delivery.trigger.deadline().map(|(key, _)| key.to_string()),
        // A self-alert's rule says it all: it is about the daemon, not records.
        headline: if alert.rule_id == crate::ops::OPS_RULE_ID {
            rule.name.clone()
        } else {
            headline(&delivery.trigger, rule, &facts, delivery.count)
        },
        summary: match (&rule.description, alert.rule_id == crate::ops::OPS_RULE_ID) {
            (Some(description), true) => description.clone(),
            _ => summary(
                &delivery.trigger,
                rule,
                &facts,
                feed,
                delivery.count,
                &show_time,
            ),
        },
        found: facts.what.clone(),
        when: facts.when.clone(),
        trigger: &delivery.trigger,
    };
    let ctx = Value::from(minijinja::value::Serde(&ctx));
    let headline = match alert
        .assessment
        .as_ref()
        .and_then(|a| a.headline.as_deref())
    {
        Some(assessed) => one_line(assessed),
        None => one_line(&render_template(
            rule,
            &templates.get(alert, rule, Part::Subject)?,
            &ctx,
        )?),
    };
    let severity_tag = assessed_severity(alert, rule).as_str().to_uppercase();
    let more = more_reasons(delivery.reasons.len());
    let subject = if draft {
        format!(
            "{} [DRAFT FOR ASSESSMENT] [{severity_tag}] {headline}{more}",
            config.mail.marking
        )
    } else {
        format!("{} [{severity_tag}] {headline}{more}", config.mail.marking)
    };
    Ok((ctx, subject, headline))
}

/// What a merged alert's subject adds: " and one more reason", " and 3 more reasons".
fn more_reasons(n: usize) -> String {
    const WORDS: [&str; 10] = [
        "", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let count = WORDS
        .get(n)
        .map_or_else(|| n.to_string(), |w| w.to_string());
    match n {
        0 => String::new(),
        1 => " and one more reason".to_string(),
        _ => format!(" and {count} more reasons"),
    }
}

/// A merged alert's "Why this was raised": each rule's name, severity and
/// what it found, the alert's own rule first. Built from the delivery, as the
/// first line is: a reason names only values this partner's view still
/// holds, never a sensitive one, and its trigger is redacted by `route`.
fn reason_lines(
    alert: &Alert,
    rule: &Rule,
    delivery: &Delivery<'_>,
    feed: Option<&FeedConfig>,
    config: &Config,
) -> Vec<String> {
    if delivery.reasons.is_empty() {
        return Vec::new();
    }
    let own = Facts::of(alert, rule, delivery, feed, config);
    let mut lines = vec![format!(
        "{} ({}): {}",
        rule.name,
        rule.severity.as_str(),
        headline(&delivery.trigger, rule, &own, delivery.count)
    )];
    for reason in &delivery.reasons {
        let mut facts = Facts::of(alert, rule, delivery, feed, config);
        let found: Vec<String> = match &reason.trigger {
            Trigger::FirstSeen { value, .. } => vec![value.clone()],
            _ => reason
                .found
                .iter()
                .filter(|f| !feed.is_some_and(|fc| fc.is_sensitive(&f.field)))
                .filter(|f| {
                    delivery.events.iter().any(|e| {
                        e.record_id.as_deref() == Some(f.record_id.as_str())
                            && e.get(&f.field).is_some()
                    })
                })
                .map(|f| f.value.clone())
                .collect(),
        };
        let mut unique: Vec<String> = Vec::new();
        for value in found {
            if !unique.iter().any(|u| u.eq_ignore_ascii_case(&value)) {
                unique.push(value);
            }
        }
        facts.what = wording::found_phrase(&unique).unwrap_or_else(|| reason.rule_name.clone());
        lines.push(format!(
            "{} ({}): {}",
            reason.rule_name,
            reason.severity.as_str(),
            headline(&reason.trigger, rule, &facts, delivery.count)
        ));
    }
    // Values from records: a line break in one must not start a line of its own.
    lines.iter().map(|l| one_line(l)).collect()
}

/// The severity an email states: the panel's, once assessed, else the rule's.
fn assessed_severity(alert: &Alert, rule: &Rule) -> crate::config::Severity {
    alert
        .assessment
        .as_ref()
        .and_then(|a| a.severity)
        .unwrap_or(rule.severity)
}

/// "Assessed and approved by A (P) and B on DATE" (SPEC §5.4).
fn approved_line(
    assessment: &crate::alerts::Assessment,
    show_time: &dyn Fn(Timestamp) -> String,
) -> String {
    let names: Vec<String> = assessment
        .approvers
        .iter()
        .map(|a| match &a.partner {
            Some(partner) => format!("{} ({partner})", one_line(&a.name)),
            None => one_line(&a.name),
        })
        .collect();
    let by = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "the review panel".to_string(),
    };
    format!(
        "Assessed and approved by {by} on {}.",
        show_time(assessment.approved_at)
    )
}

/// What an email's first line and facts say, worked out once per delivery
/// from what this partner may see (the delivery, never the alert).
struct Facts {
    /// What was found, in words ("Protonitazene"), or the rule's name.
    what: String,
    /// The district, if the alert has one.
    place: Option<String>,
    /// When, as a headline says it: "tested Tue 4 Nov".
    when: String,
    /// For a deadline: what closes it, as a phrase ("a support provided record").
    awaited: String,
    /// For a deadline: how long it gives.
    within: Option<Duration>,
    /// When the alert was raised: a deadline already due by then says so.
    raised: Timestamp,
    tz: jiff::tz::TimeZone,
}

/// A notice raised this long after its due time was late in coming (old
/// data, or the daemon was down): its first line says so.
const LATE_NOTICE: Duration = Duration::from_secs(5 * 60);

impl Facts {
    fn of(
        alert: &Alert,
        rule: &Rule,
        delivery: &Delivery<'_>,
        feed: Option<&FeedConfig>,
        config: &Config,
    ) -> Facts {
        use crate::rules::RuleKind;
        let tz = config.daemon.timezone.clone();
        // A sensitive field's value never goes into a first line, even for a
        // partner allowed to see it: subjects show in previews and notifications.
        let found = match &delivery.trigger {
            Trigger::FirstSeen { value, .. } => vec![value.clone()],
            _ => wording::found_values(&rule.when, &delivery.events, &|field| {
                feed.is_some_and(|f| f.is_sensitive(field))
            }),
        };
        let found = wording::found_phrase(&found);
        let verb = wording::time_verb(feed);
        let first = delivery.events.iter().map(|e| e.time).min();
        let last = delivery.events.iter().map(|e| e.time).max();
        let when = match (first, last) {
            (Some(a), Some(b)) if wording::short_date(a, &tz) != wording::short_date(b, &tz) => {
                format!(
                    "{verb} {} to {}",
                    wording::short_date(a, &tz),
                    wording::short_date(b, &tz)
                )
            }
            (Some(a), _) => format!("{verb} {}", wording::short_date(a, &tz)),
            _ => format!("raised {}", wording::short_date(alert.created_at, &tz)),
        };
        let when = when.trim().to_string();
        let (awaited, within) = match &rule.kind {
            RuleKind::Deadline {
                until_when, within, ..
            } => {
                let expected: Vec<String> = wording::expected_values(until_when)
                    .iter()
                    .map(|v| wording::as_words(v))
                    .collect();
                let awaited = match expected.as_slice() {
                    [] => "a closing record".to_string(),
                    [one] => format!("a {one} record"),
                    many => format!("a {} record", many.join(" or ")),
                };
                (awaited, Some(*within))
            }
            _ => ("a closing record".to_string(), None),
        };
        Facts {
            what: found.unwrap_or_else(|| rule.name.clone()),
            place: delivery.district.clone(),
            when,
            awaited,
            within,
            raised: alert.created_at,
            tz,
        }
    }

    fn short(&self, t: Timestamp) -> String {
        wording::short_time(t, &self.tz)
    }

    /// How late a notice about a deadline due at `due` was raised, if late.
    fn late_by(&self, due: Timestamp) -> Option<Duration> {
        let late = self.raised.duration_since(due);
        (late.is_positive() && late.unsigned_abs() >= LATE_NOTICE).then(|| late.unsigned_abs())
    }
}

/// One line saying what was found, where and when: the default subject and
/// the email's first line ("Protonitazene, Bolton, tested Tue 4 Nov").
fn headline(trigger: &Trigger, rule: &Rule, facts: &Facts, count: u64) -> String {
    let what = &facts.what;
    let place = facts.place.as_deref();
    // The parts that say something: a district that is also what was found is said once.
    let listed = |parts: &[Option<&str>]| -> String {
        let mut said: Vec<&str> = Vec::new();
        for part in parts.iter().flatten() {
            if !part.is_empty() && !said.iter().any(|s| s.eq_ignore_ascii_case(part)) {
                said.push(part);
            }
        }
        said.join(", ")
    };
    let when = Some(facts.when.as_str());
    let in_place = place.map(|d| format!(" in {d}")).unwrap_or_default();
    let awaited = &facts.awaited;
    let within = facts
        .within
        .map(|d| format!(" within {}", human_duration(d)))
        .unwrap_or_default();
    match trigger {
        Trigger::Match => listed(&[Some(what), place, when]),
        Trigger::Threshold { within_secs, .. } => format!(
            "{what}: {count} within {}, {}",
            human_duration(Duration::from_secs(*within_secs)),
            listed(&[place, when])
        ),
        Trigger::DeadlineOpened {
            key,
            due,
            closed: false,
        } if *due <= facts.raised => format!(
            "ALREADY OVERDUE: {what} {key}{in_place}: {awaited} was due by {}",
            facts.short(*due)
        ),
        Trigger::DeadlineOpened {
            key,
            due,
            closed: false,
        } => format!(
            "{what} {key}{in_place}: {awaited} is due by {}",
            facts.short(*due)
        ),
        Trigger::DeadlineOpened {
            key, closed: true, ..
        } => format!("{what} {key}{in_place}: already closed by {awaited}"),
        Trigger::DeadlineOverdue { key, due } => {
            let late = facts
                .late_by(*due)
                .map(|d| format!(", raised {} late", human_duration_rounded(d)))
                .unwrap_or_default();
            format!(
                "OVERDUE: {what} {key}{in_place}: no {}{within} (due {}{late})",
                awaited.trim_start_matches("a "),
                facts.short(*due)
            )
        }
        Trigger::DeadlineClosed { key, due, late } => format!(
            "{}: {what} {key}{in_place}: {awaited} arrived {} (due {})",
            if *late { "Closed late" } else { "Closed" },
            if *late {
                "after the due time"
            } else {
                "in time"
            },
            facts.short(*due)
        ),
        Trigger::FirstSeen { .. } => {
            format!("Never seen before: {}", listed(&[Some(what), place, when]))
        }
        Trigger::Rate {
            current,
            baseline_average,
            within_secs,
        } => format!(
            "{what}: {current} in {}, usually {}{}",
            human_duration(Duration::from_secs(*within_secs)),
            round_average(*baseline_average),
            place.map(|d| format!(", {d}")).unwrap_or_default()
        ),
        Trigger::Silence {
            feed,
            silent_secs,
            last,
        } => format!(
            "{}: nothing from {feed} for {} (last file {})",
            rule.name,
            human_duration(Duration::from_secs(*silent_secs)),
            facts.short(*last)
        ),
        Trigger::Folded {
            alerts, feed, file, ..
        } => format!(
            "SUMMARY: {}: {alerts} more alerts from {feed} file {}",
            rule.name,
            crate::display::escape_controls(file)
        ),
    }
}

/// A usual rate as people say it: 1.5, 2, 0.3.
fn round_average(average: f64) -> String {
    let rounded = (average * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{}", rounded as i64)
    } else {
        format!("{rounded:.1}")
    }
}

/// A lateness in the largest unit that fits: "3 days", "5 hours", "20 minutes".
fn human_duration_rounded(d: Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match s {
        s if s >= 86_400 => plural(s / 86_400, "day"),
        s if s >= 3600 => plural(s / 3600, "hour"),
        s => plural((s / 60).max(1), "minute"),
    }
}

/// A sentence or two saying what happened: the default lead of the email.
fn summary(
    trigger: &Trigger,
    rule: &Rule,
    facts: &Facts,
    feed: Option<&FeedConfig>,
    count: u64,
    show_time: &dyn Fn(Timestamp) -> String,
) -> String {
    let name = &rule.name;
    let records = if count == 1 {
        String::new()
    } else {
        format!(" {count} records are in this alert.")
    };
    let late = |due: Timestamp| {
        facts
            .late_by(due)
            .map(|_| {
                " The records arrived after this deadline had passed (old data, or the daemon was not running), so this notice comes late.".to_string()
            })
            .unwrap_or_default()
    };
    let awaited = wording::sentence_case(&facts.awaited);
    match trigger {
        // The headline and the facts already say it all for one record.
        Trigger::Match if count <= 1 => String::new(),
        Trigger::Match => format!("{name}.{records}"),
        Trigger::Threshold {
            count: needed,
            within_secs,
        } => format!(
            "{name}: {count} records within {} (the rule alerts at {needed}).",
            human_duration(Duration::from_secs(*within_secs))
        ),
        Trigger::DeadlineOpened {
            due, closed: false, ..
        } if *due <= facts.raised => format!(
            "{name}. {awaited} was due by {}, before these records arrived: the deadline had already passed, so the escalation follows at once.",
            show_time(*due)
        ),
        Trigger::DeadlineOpened {
            due, closed: false, ..
        } => format!(
            "{name}. {awaited} must arrive by {}; if none does, an escalation goes out.",
            show_time(*due)
        ),
        Trigger::DeadlineOpened { closed: true, .. } => {
            format!("{name}. Its closing record had already arrived, so no escalation will follow.")
        }
        Trigger::DeadlineOverdue { key, due } => format!(
            "ESCALATION. {name}: {key} was due to be closed by {} and no closing record has arrived.{}",
            show_time(*due),
            late(*due)
        ),
        Trigger::DeadlineClosed { key, due, late } => format!(
            "{name}: {key} was closed {} it was due ({}).",
            if *late { "after" } else { "before" },
            show_time(*due)
        ),
        Trigger::FirstSeen { field, value } => format!(
            "{name}: {value} ({}) has not been seen in this feed before.{records}",
            wording::label(feed, field)
        ),
        Trigger::Rate {
            current,
            baseline_average,
            within_secs,
        } => format!(
            "{name}: {current} records in the last {}, against a usual {} in the same time.",
            human_duration(Duration::from_secs(*within_secs)),
            round_average(*baseline_average)
        ),
        Trigger::Silence {
            feed,
            last,
            silent_secs,
        } => format!(
            "{name}: the {feed} feed has delivered no file for {} (last at {}). Check the producer and the folder.",
            human_duration(Duration::from_secs(*silent_secs)),
            show_time(*last)
        ),
        Trigger::Folded {
            alerts,
            matches,
            feed,
            file,
            ..
        } => format!(
            "{name}: the {feed} file {} raised more alerts than the rule's max_alerts allows. {alerts} further alerts ({matches} matching records) are folded into this summary; the records below are a sample. Replay the file (earlywarn replay) for every alert.",
            crate::display::escape_controls(file)
        ),
    }
}

fn header_name(name: &'static str) -> HeaderName {
    // These are constant, valid ASCII header names.
    HeaderName::new_from_ascii_str(name)
}

/// Header values must be one line: any CR, LF or other control character becomes a space.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    while out.contains("  ") {
        out = out.replace("  ", " ");
    }
    out.trim().to_string()
}

/// A msg-id's right part: the sender's domain, already checked as an
/// address by `check`; anything outside a domain's characters becomes `_`.
fn sanitize_domain(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.[]:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn sanitize_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn event_map(
    e: &Event,
    show_time: &dyn Fn(Timestamp) -> String,
) -> BTreeMap<String, serde_json::Value> {
    let mut map: BTreeMap<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                FieldValue::Text(s) => serde_json::Value::String(s.to_string()),
                // 200 reads as 200 in an email, not 200.0.
                FieldValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
                    serde_json::json!(*n as i64)
                }
                FieldValue::Number(n) => serde_json::json!(n),
                FieldValue::List(items) => serde_json::json!(items),
            };
            (k.to_string(), v)
        })
        .collect();
    map.insert(
        "_feed".into(),
        serde_json::Value::String(e.feed.to_string()),
    );
    map.insert("_time".into(), serde_json::Value::String(show_time(e.time)));
    map
}

/// The fixed parts of every alert email, computed once and written as text
/// and HTML in the same order: the marking, a draft's note, the headline,
/// who approved it, the lead, the facts, what to do, the evidence, what was
/// withheld, why this partner got it, the technical details, the contact.
struct Sections {
    /// The first line: what was found, where and when (or the panel's headline).
    headline: String,
    /// The partner's acknowledgement link (SPEC §10): right after what to do,
    /// where a reader looks for what is asked of them.
    ack_link: Option<String>,
    severity: crate::config::Severity,
    /// Severity, alert, district, when, due: labelled lines under the lead.
    facts: Vec<(&'static str, String)>,
    advice: Option<String>,
    /// Per record: a title and its fields, labelled and in words, key fields first.
    evidence: Vec<(String, Vec<(String, String)>)>,
    more_records: u64,
    withheld: Option<String>,
    /// A merged alert's "Why this was raised": one line per rule.
    reasons: Vec<String>,
    why: String,
    /// The rule id, record count, feed and reference: for whoever follows it up.
    details: Vec<(&'static str, String)>,
    /// What the evidence is called: the records, or a self-alert's problems.
    evidence_title: &'static str,
    reference: String,
    /// Why the email comes again (a reminder), above everything else it says.
    reminder_note: Option<String>,
    draft_note: Option<String>,
    /// The draft's console page, made a link in the HTML.
    console_url: Option<String>,
    /// Who assessed and approved it, for an approved alert.
    approved: Option<String>,
    contact: Option<String>,
}

impl Sections {
    #[allow(clippy::too_many_arguments)]
    fn build(
        alert: &Alert,
        rule: &Rule,
        delivery: &Delivery<'_>,
        feed: Option<&FeedConfig>,
        config: &Config,
        headline: String,
        show_time: &dyn Fn(Timestamp) -> String,
    ) -> Sections {
        let ops = alert.rule_id == crate::ops::OPS_RULE_ID;
        let district_field = feed
            .map(|f| f.district_field.as_str())
            .unwrap_or("district");
        let severity = assessed_severity(alert, rule);
        let mut facts = vec![("Severity", severity.as_str().to_uppercase())];
        if !ops {
            facts.push(("Alert", rule.name.clone()));
            let district = delivery.district.clone().or_else(|| {
                let mut ds: Vec<String> = delivery
                    .events
                    .iter()
                    .map(|e| e.text(district_field))
                    .filter(|d| !d.is_empty())
                    .collect();
                ds.sort();
                ds.dedup();
                match (ds.is_empty(), delivery.events.is_empty()) {
                    // An alert about no record (a silent feed) has no district to state.
                    (true, true) => None,
                    (true, false) => Some("not stated".into()),
                    (false, _) => Some(ds.join(", ")),
                }
            });
            if let Some(district) = district {
                facts.push(("District", district));
            }
            let verb = wording::sentence_case(&wording::time_verb(feed));
            let first = delivery.events.iter().map(|e| e.time).min();
            let last = delivery.events.iter().map(|e| e.time).max();
            let when = match (first, last) {
                (Some(a), Some(b)) if a != b => {
                    format!("{verb} {} to {}", show_time(a), show_time(b))
                }
                (Some(a), _) => format!("{verb} {}", show_time(a)),
                _ => format!("Raised {}", show_time(alert.created_at)),
            };
            facts.push(("When", when.trim().to_string()));
            if let Some((key, due)) = delivery.trigger.deadline() {
                facts.push(("Due", format!("{} ({key})", show_time(due))));
            }
        }
        let mut records = format!("{}", delivery.count);
        if alert.suppressed_before > 0 {
            let cd = rule
                .cooldown
                .map(|d| format!(" ({} cooldown)", human_duration(d)))
                .unwrap_or_default();
            records.push_str(&format!(
                ", plus {} earlier match{} not emailed during the cooldown{cd}",
                alert.suppressed_before,
                if alert.suppressed_before == 1 {
                    ""
                } else {
                    "es"
                }
            ));
        }
        // Key fields first: the district, then what the rule looked at. The
        // record's id and time are in its title.
        let mut key_fields: Vec<String> = vec![district_field.to_string()];
        match &rule.kind {
            crate::rules::RuleKind::FirstSeen { field, .. } => key_fields.push(field.clone()),
            crate::rules::RuleKind::Deadline { key, .. } => key_fields.push(key.clone()),
            _ => {}
        }
        key_fields.extend(rule.when.fields().into_iter().map(String::from));
        key_fields.extend(rule.group_by.iter().cloned());
        if ops {
            key_fields = vec!["detail".into(), "from the file".into()];
        }
        let mut seen = std::collections::HashSet::new();
        key_fields.retain(|f| seen.insert(crate::config::field_key(f)));
        let evidence = delivery
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let record_feed = config.feed(&e.feed).or(feed);
                let in_title = |name: &str| {
                    let key = crate::config::field_key(name);
                    record_feed.is_some_and(|f| {
                        [&f.id_field, &f.time_field].iter().any(|k| {
                            k.as_deref().map(crate::config::field_key) == Some(key.clone())
                        })
                    })
                };
                let verb = wording::time_verb(record_feed);
                let from = if *e.feed != *rule.feed && !ops {
                    format!(" ({} feed)", e.feed)
                } else {
                    String::new()
                };
                let title = match (&e.record_id, ops) {
                    (_, true) => format!(
                        "{}. {}, {}",
                        i + 1,
                        wording::sentence_case(&e.text("problem")),
                        show_time(e.time)
                    ),
                    (Some(id), _) => format!(
                        "{}. {}, {}{from}",
                        i + 1,
                        id,
                        format!("{verb} {}", show_time(e.time)).trim()
                    ),
                    (None, _) => format!(
                        "{}. {}{from}",
                        i + 1,
                        format!("{verb} {}", show_time(e.time)).trim()
                    ),
                };
                let mut rows: Vec<(String, String)> = Vec::new();
                let mut push = |name: &str, value: &FieldValue| {
                    if ops && name == "problem" {
                        return;
                    }
                    let shown = wording::show_value(value, show_time).replace(['\r', '\n'], " ");
                    if !shown.is_empty() {
                        rows.push((wording::label(record_feed, name), shown));
                    }
                };
                for f in &key_fields {
                    if let Some(v) = e.get(f)
                        && !in_title(f)
                    {
                        push(f, v);
                    }
                }
                for (k, v) in &e.fields {
                    let key = crate::config::field_key(k);
                    if !key_fields
                        .iter()
                        .any(|f| crate::config::field_key(f) == key)
                        && !in_title(k)
                    {
                        push(k, v);
                    }
                }
                (title, rows)
            })
            .collect();
        let more_records = delivery.count.saturating_sub(delivery.events.len() as u64);
        let withheld = (!delivery.withheld.is_empty()).then(|| {
            format!(
                "Withheld: {} — {} has not signed the Information Sharing Agreement, so these fields are not included.",
                delivery.withheld.iter().cloned().collect::<Vec<_>>().join(", "),
                delivery.partner.name
            )
        });
        let coverage = match &delivery.partner.districts {
            None => "all districts".to_string(),
            Some(ds) => ds.join(", "),
        };
        let why = match (delivery.audience, ops) {
            (_, true) => format!(
                "{} is on the ops list ([daemon] ops): it is told about earlywarn's own problems.",
                delivery.partner.name
            ),
            (Audience::Notify, _) if !delivery.reasons.is_empty() => {
                let id = &delivery.partner.id;
                let mut names: Vec<String> = Vec::new();
                if rule.notify.contains(id) {
                    names.push(format!("\"{}\"", rule.name));
                }
                for r in delivery.reasons.iter().filter(|r| r.notify.contains(id)) {
                    let name = format!("\"{}\"", r.rule_name);
                    // A rule that found two new values is one rule here.
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                let names = match names.split_last() {
                    Some((last, [])) => format!("the rule {last}"),
                    Some((last, rest)) => format!("the rules {} and {last}", rest.join(", ")),
                    None => "the rules of this alert".to_string(),
                };
                format!(
                    "{} is on the notify list of {names} and covers {coverage}.",
                    delivery.partner.name
                )
            }
            (Audience::Notify, _) => format!(
                "{} is on the notify list of the rule \"{}\" and covers {}.",
                delivery.partner.name, rule.name, coverage
            ),
            (Audience::Review, _) => format!(
                "{} reviews alerts of the rule \"{}\" before they go to partners.",
                delivery.partner.name, rule.name
            ),
        };
        let draft_note = (delivery.audience == Audience::Review).then(|| {
            let cli = format!(
                "earlywarn alerts approve {id}; to close it: earlywarn alerts dismiss {id} --reason TEXT",
                id = alert.id
            );
            match &config.web {
                Some(web) => format!(
                    "DRAFT FOR ASSESSMENT: this alert has not been sent to partners. Assess it at {} (or on the server: {cli}).",
                    web.alert_url(&alert.id)
                ),
                None => format!(
                    "DRAFT FOR ASSESSMENT: this alert has not been sent to partners. To send it: {cli}."
                ),
            }
        });
        let approved = match (&alert.assessment, delivery.audience) {
            (Some(assessment), Audience::Notify) => Some(approved_line(assessment, show_time)),
            _ => None,
        };
        let advice = match alert.assessment.as_ref().and_then(|a| a.advice.clone()) {
            Some(assessed) => Some(assessed),
            None => rule.advice.clone(),
        };
        let mut details = vec![("Reference", alert.id.clone())];
        if ops {
            details.push(("Problems", records));
        } else {
            details.push(("Rule", rule.id.clone()));
            if !alert.reasons.is_empty() {
                let ids: Vec<&str> = alert.reasons.iter().map(|r| r.rule_id.as_str()).collect();
                details.push(("Also", ids.join(", ")));
            }
            details.push(("Records", records));
            if !rule.feed.is_empty() {
                details.push(("Feed", rule.feed.clone()));
            }
        }
        Sections {
            ack_link: None,
            reasons: reason_lines(alert, rule, delivery, feed, config),
            headline,
            severity,
            facts,
            advice,
            evidence,
            more_records,
            withheld,
            why,
            details,
            evidence_title: if ops { "What happened" } else { "Evidence" },
            reference: alert.id.clone(),
            reminder_note: None,
            draft_note,
            console_url: match (&config.web, delivery.audience) {
                (Some(web), Audience::Review) => Some(web.alert_url(&alert.id)),
                _ => None,
            },
            approved,
            contact: config.mail.contact.clone(),
        }
    }

    fn text(&self, marking: &str, lead: &str) -> String {
        let mut t = String::new();
        t.push_str(&format!("{marking}\n\n"));
        if let Some(note) = &self.reminder_note {
            t.push_str(&format!("{note}\n\n"));
        }
        if let Some(note) = &self.draft_note {
            t.push_str(&format!("{note}\n\n"));
        }
        t.push_str(&format!("{}\n", self.headline));
        if let Some(approved) = &self.approved {
            t.push_str(&format!("{approved}\n"));
        }
        t.push('\n');
        if !lead.trim().is_empty() {
            t.push_str(lead.trim());
            t.push_str("\n\n");
        }
        for (k, v) in &self.facts {
            t.push_str(&format!("{:<10} {v}\n", format!("{k}:")));
        }
        t.push('\n');
        if !self.reasons.is_empty() {
            t.push_str("WHY THIS WAS RAISED\n");
            for line in &self.reasons {
                t.push_str(&format!("- {line}\n"));
            }
            t.push('\n');
        }
        if let Some(advice) = &self.advice {
            t.push_str("WHAT TO DO\n");
            t.push_str(advice.trim());
            t.push_str("\n\n");
        }
        if let Some(link) = &self.ack_link {
            t.push_str(&super::notice::ack_line_text(link));
            t.push_str("\n\n");
        }
        if !self.evidence.is_empty() {
            t.push_str(&format!("{}\n", self.evidence_title.to_uppercase()));
        }
        for (title, rows) in &self.evidence {
            t.push_str(&format!("{title}\n"));
            for (k, v) in rows {
                t.push_str(&format!("   {k}: {v}\n"));
            }
        }
        if self.more_records > 0 {
            t.push_str(&format!(
                "... and {} more records (earlywarn alerts show {}).\n",
                self.more_records, self.reference
            ));
        }
        if let Some(w) = &self.withheld {
            t.push_str(&format!("\n{w}\n"));
        }
        t.push_str(&format!("\nWHY YOU RECEIVED THIS\n{}\n", self.why));
        t.push_str("\nDETAILS\n");
        for (k, v) in &self.details {
            t.push_str(&format!("{:<10} {v}\n", format!("{k}:")));
        }
        t.push_str(&format!("Quote {} in any reply.\n", self.reference));
        if let Some(contact) = &self.contact {
            t.push_str(&format!("\n{contact}\n"));
        }
        t.push_str(&format!("\n{marking}\n"));
        t
    }

    fn html(&self, marking: &str, lead: &str) -> String {
        let e = html_escape;
        let (badge_bg, badge_fg) = match self.severity {
            crate::config::Severity::Critical => ("#b00020", "#ffffff"),
            crate::config::Severity::Warning => ("#f2b705", "#1a1a1a"),
            crate::config::Severity::Info => ("#1f5fa8", "#ffffff"),
        };
        let th = "text-align:left;vertical-align:top;padding:2px 12px 2px 0;font-weight:bold;white-space:nowrap";
        let td = "vertical-align:top;padding:2px 0";
        let h2 = "font-size:18px;margin:24px 0 8px";
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n</head>\n");
        h.push_str("<body style=\"margin:0;padding:0;background:#f3f3f3\">\n<div style=\"max-width:680px;margin:0 auto;padding:16px;background:#ffffff;font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5;color:#1a1a1a;overflow-wrap:anywhere\">\n");
        h.push_str(&format!(
            "<p style=\"margin:0 0 12px;font-weight:bold;letter-spacing:0.05em\">{}</p>\n",
            e(marking)
        ));
        if let Some(note) = &self.reminder_note {
            h.push_str(&format!(
                "<p style=\"background:#fff3cd;border-left:4px solid #9a6700;padding:8px 12px\"><strong>{}</strong></p>\n",
                e(note)
            ));
        }
        if let Some(note) = &self.draft_note {
            // The console address as a link: it is the reviewer's next step.
            let note = match &self.console_url {
                Some(url) => e(note).replacen(
                    &e(url),
                    &format!(
                        "<a href=\"{}\" style=\"color:#0b4f9c\">{}</a>",
                        e(url),
                        e(url)
                    ),
                    1,
                ),
                None => e(note),
            };
            h.push_str(&format!(
                "<p style=\"background:#fff3cd;border-left:4px solid #9a6700;padding:8px 12px\"><strong>{note}</strong></p>\n"
            ));
        }
        h.push_str(&format!(
            "<p style=\"margin:0 0 8px\"><span style=\"display:inline-block;padding:2px 10px;border-radius:3px;background:{badge_bg};color:{badge_fg};font-weight:bold\">{}</span></p>\n",
            e(&self.severity.as_str().to_uppercase())
        ));
        h.push_str(&format!(
            "<h1 style=\"font-size:22px;line-height:1.3;margin:0 0 12px\">{}</h1>\n",
            e(&self.headline)
        ));
        if let Some(approved) = &self.approved {
            h.push_str(&format!(
                "<p style=\"background:#e8f5e9;border-left:4px solid #1b5e20;padding:8px 12px\"><strong>{}</strong></p>\n",
                e(approved)
            ));
        }
        push_blocks(&mut h, lead);
        h.push_str("<table role=\"presentation\" style=\"border-collapse:collapse\">\n");
        for (k, v) in &self.facts {
            h.push_str(&format!(
                "<tr><th style=\"{th}\">{}</th><td style=\"{td}\">{}</td></tr>\n",
                e(k),
                e(v)
            ));
        }
        h.push_str("</table>\n");
        if !self.reasons.is_empty() {
            h.push_str(&format!(
                "<h2 style=\"{h2}\">Why this was raised</h2>\n<ul>\n"
            ));
            for line in &self.reasons {
                h.push_str(&format!("<li>{}</li>\n", e(line)));
            }
            h.push_str("</ul>\n");
        }
        if let Some(advice) = &self.advice {
            h.push_str(&format!("<h2 style=\"{h2}\">What to do</h2>\n"));
            push_blocks(&mut h, advice);
        }
        if let Some(link) = &self.ack_link {
            h.push_str(&super::notice::ack_line_html(link));
            h.push('\n');
        }
        if !self.evidence.is_empty() {
            h.push_str(&format!(
                "<h2 style=\"{h2}\">{}</h2>\n",
                e(self.evidence_title)
            ));
        }
        for (title, rows) in &self.evidence {
            h.push_str(&format!(
                "<h3 style=\"font-size:16px;margin:16px 0 4px\">{}</h3>\n<table role=\"presentation\" style=\"border-collapse:collapse\">\n",
                e(title)
            ));
            for (k, v) in rows {
                h.push_str(&format!(
                    "<tr><th style=\"{th}\">{}</th><td style=\"{td}\">{}</td></tr>\n",
                    e(k),
                    e(v)
                ));
            }
            h.push_str("</table>\n");
        }
        if self.more_records > 0 {
            h.push_str(&format!(
                "<p>… and {} more records (earlywarn alerts show {}).</p>\n",
                self.more_records,
                e(&self.reference)
            ));
        }
        if let Some(w) = &self.withheld {
            h.push_str(&format!("<p><em>{}</em></p>\n", e(w)));
        }
        h.push_str(&format!(
            "<h2 style=\"{h2}\">Why you received this</h2>\n<p>{}</p>\n",
            e(&self.why)
        ));
        h.push_str(&format!(
            "<h2 style=\"{h2};color:#555555\">Details</h2>\n<table role=\"presentation\" style=\"border-collapse:collapse;font-size:14px;color:#555555\">\n"
        ));
        for (k, v) in &self.details {
            h.push_str(&format!(
                "<tr><th style=\"{th}\">{}</th><td style=\"{td}\">{}</td></tr>\n",
                e(k),
                e(v)
            ));
        }
        h.push_str(&format!(
            "</table>\n<p style=\"font-size:14px;color:#555555\">Quote {} in any reply.</p>\n",
            e(&self.reference)
        ));
        if let Some(contact) = &self.contact {
            h.push_str(&format!(
                "<p style=\"border-top:1px solid #cccccc;padding-top:8px\">{}</p>\n",
                e(contact)
            ));
        }
        h.push_str(&format!(
            "<p style=\"font-weight:bold;letter-spacing:0.05em\">{}</p>\n</div>\n</body></html>\n",
            e(marking)
        ));
        h
    }
}

/// Text written in a rule file as HTML paragraphs and lists (see [`wording::blocks`]), escaped.
fn push_blocks(h: &mut String, text: &str) {
    for block in wording::blocks(text) {
        match block {
            wording::Block::Paragraph(p) => {
                h.push_str(&format!("<p>{}</p>\n", html_escape(&p)));
            }
            wording::Block::List(items) => {
                h.push_str("<ul style=\"padding-left:24px\">\n");
                for item in items {
                    h.push_str(&format!(
                        "<li style=\"margin-bottom:4px\">{}</li>\n",
                        html_escape(&item)
                    ));
                }
                h.push_str("</ul>\n");
            }
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A duration as people say it: "7 days", "24 hours", "90 minutes", "3h 20m".
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match s {
        0 => "0 seconds".into(),
        // "24 hours", as a deadline is spoken of; "2 days" and more in days.
        s if s % 86_400 == 0 && s > 86_400 => plural(s / 86_400, "day"),
        s if s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s % 60 == 0 && s < 3600 => plural(s / 60, "minute"),
        s if s < 60 => plural(s, "second"),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertStatus, route};
    use crate::config::Severity;
    use crate::rules::RuleSet;
    use std::path::{Path, PathBuf};

    fn config() -> Config {
        Config::parse(
            Path::new("/x/c.toml"),
            r#"
[mail]
transport = "file"
from = "GM Early Warning <earlywarn@example.org>"
[[feed]]
name = "drug_testing"
dir = "in"
id_field = "sample_id"
sensitive = ["notes"]
[[partner]]
id = "panel"
name = "Drug Alert Panel"
emails = ["p@example.org", "q@example.org"]
isa = true
[[partner]]
id = "charity"
name = "Street Charity"
emails = ["c@example.org"]
"#,
        )
        .unwrap()
    }

    /// A rule with `extra` keys; keys that `check` refuses (a sensitive field in the
    /// subject or `group_by`) are set after loading, as if the check had been
    /// bypassed: the renderer must hold on its own.
    fn rule(config: &Config, extra: &str) -> Rule {
        let table: toml::Table = toml::from_str(extra).unwrap();
        let checked: String = extra
            .lines()
            .filter(|l| {
                !["subject", "body", "group_by"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut rule = checked_rule(config, &checked);
        let text = |k: &str| table.get(k).and_then(|v| v.as_str()).map(String::from);
        rule.subject = text("subject").or(rule.subject);
        rule.body = text("body").or(rule.body);
        if let Some(list) = table.get("group_by").and_then(|v| v.as_array()) {
            rule.group_by = list
                .iter()
                .filter_map(|v| v.as_str())
                .map(String::from)
                .collect();
        }
        rule
    }

    fn checked_rule(config: &Config, extra: &str) -> Rule {
        RuleSet::from_sources(
            config,
            &[(
                PathBuf::from("r.toml"),
                format!("[[rule]]\nid = \"nitazene\"\nname = \"Nitazene detected\"\nfeed = \"drug_testing\"\nseverity = \"critical\"\nnotify = [\"panel\", \"charity\"]\nadvice = \"Carry naloxone.\"\n{extra}"),
            )],
        )
        .unwrap()
        .rules
        .remove(0)
    }

    fn alert(notes: &str, district: &str) -> Alert {
        let mut fields = crate::event::Fields::default();
        fields.insert("sample_id", FieldValue::Text("S-1".into()));
        fields.insert("district", FieldValue::Text(district.into()));
        fields.insert("notes", FieldValue::Text(notes.into()));
        Alert {
            id: "EW-0123456789".into(),
            rule_id: "nitazene".into(),
            group: BTreeMap::new(),
            district: Some(district.into()),
            severity: Severity::Critical,
            created_at: "2025-11-04T11:30:00Z".parse().unwrap(),
            event_count: 1,
            suppressed_before: 0,
            events: vec![Event {
                feed: "drug_testing".into(),
                record_id: Some("S-1".into()),
                time: "2025-11-04T11:30:00Z".parse().unwrap(),
                fields,
            }],
            status: AlertStatus::Sent,
            trigger: crate::alerts::Trigger::Match,
            assessment: None,
            reasons: Vec::new(),
        }
    }

    /// Renders with the rule's templates compiled as its rule set would
    /// (the tests change rules after loading).
    fn render_in_thread(
        alert: &Alert,
        rule: &Rule,
        delivery: &Delivery<'_>,
        config: &Config,
        first_in_thread: Option<&str>,
    ) -> Result<RenderedEmail, RenderError> {
        let templates = Templates::compile(std::slice::from_ref(rule));
        super::render_in_thread(alert, rule, &templates, delivery, config, first_in_thread)
    }

    fn render(
        alert: &Alert,
        rule: &Rule,
        delivery: &Delivery<'_>,
        config: &Config,
    ) -> Result<RenderedEmail, RenderError> {
        render_in_thread(alert, rule, delivery, config, None)
    }

    fn emails(config: &Config, rule: &Rule, alert: &Alert) -> Vec<RenderedEmail> {
        route(alert, rule, config, Audience::Notify)
            .iter()
            .map(|d| render(alert, rule, d, config).unwrap())
            .collect()
    }

    #[test]
    fn the_email_carries_what_the_spec_promises() {
        let config = config();
        let rule = rule(&config, "");
        let mails = emails(&config, &rule, &alert("sold at the park", "Bolton"));
        let panel = &mails[0];
        assert_eq!(
            panel.subject,
            "OFFICIAL-SENSITIVE [CRITICAL] Nitazene detected, Bolton, Tue 4 Nov"
        );
        assert_eq!(panel.to, ["p@example.org", "q@example.org"]);
        assert_eq!(panel.message_id, "<EW-0123456789.panel@example.org>");
        for needle in [
            "OFFICIAL-SENSITIVE",
            "CRITICAL",
            "Nitazene detected",
            "Bolton",
            "Tue 4 Nov 2025 11:30 GMT",
            "Carry naloxone.",
            "EW-0123456789",
            "sold at the park",
            "notify list",
        ] {
            assert!(
                panel.text.contains(needle),
                "text lacks {needle}:\n{}",
                panel.text
            );
            assert!(
                panel.html.contains(needle),
                "html lacks {needle}:\n{}",
                panel.html
            );
        }
        let raw = String::from_utf8_lossy(&panel.bytes);
        assert!(raw.contains("X-Earlywarn-Alert: EW-0123456789"), "{raw}");
        assert!(raw.contains("X-Earlywarn-Rule: nitazene"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
    }

    #[test]
    fn sensitive_fields_never_reach_a_partner_without_the_isa() {
        let config = config();
        let rule = rule(&config, "subject = \"{{ rule.name }}: {{ event.notes }}\"");
        let mails = emails(&config, &rule, &alert("SECRET-NOTE", "Bolton"));
        let charity = &mails[1];
        assert!(!String::from_utf8_lossy(&charity.bytes).contains("SECRET"));
        assert!(
            !charity.text.contains("SECRET")
                && !charity.html.contains("SECRET")
                && !charity.subject.contains("SECRET")
        );
        assert!(charity.text.contains("Withheld: notes"), "{}", charity.text);
        assert!(mails[0].subject.contains("SECRET-NOTE"));
    }

    /// Every way a template can reach a field, with hostile values in every field:
    /// no header injection, no unescaped HTML, and no sensitive value anywhere in a
    /// non-ISA partner's email (subject, text, HTML, headers, raw bytes).
    #[test]
    fn hostile_values_in_every_field_and_every_template_position() {
        let config = config();
        let hostile = [
            "X\r\nBcc: evil@example.com",
            "<img src=x onerror=alert(1)>",
            "\"'><script>alert(1)</script>",
            "line\rinjected: header",
            "=?utf-8?q?=0D=0ABcc:_evil@example.com?=",
            "SECRET\u{2028}Bcc: evil@example.com",
        ];
        let templates = [
            "subject = \"{{ event.notes }} {{ event.district }}\"",
            "subject = \"{% for e in events %}{{ e.notes }}{% endfor %}\"\nbody = \"{{ events[0].notes }} {{ group.notes }}\"",
            "group_by = [\"notes\"]\nsubject = \"{{ group.notes }} {{ group | tojson }}\"",
            "body = \"{{ event | tojson }}\"",
        ];
        for template in templates {
            let rule = rule(&config, template);
            for value in hostile {
                let secret = format!("ZZWITHHELDZZ-{value}");
                let mut a = alert(&secret, value);
                a.group = BTreeMap::from([("notes".to_string(), secret.clone())]);
                for mail in emails(&config, &rule, &a) {
                    let raw = String::from_utf8_lossy(&mail.bytes).to_string();
                    let headers = raw.split("\r\n\r\n").next().unwrap();
                    for line in headers.split("\r\n") {
                        assert!(
                            !line.to_ascii_lowercase().starts_with("bcc:"),
                            "{template}: injected header in:\n{headers}"
                        );
                        assert!(
                            !line.starts_with("injected:"),
                            "{template}: injected header in:\n{headers}"
                        );
                    }
                    assert!(!mail.subject.contains(['\r', '\n']));
                    assert!(
                        !mail.html.contains("<script>") && !mail.html.contains("<img"),
                        "{template}: unescaped HTML:\n{}",
                        mail.html
                    );
                    if mail.to == ["c@example.org"] {
                        for (part, text) in [
                            ("subject", &mail.subject),
                            ("text", &mail.text),
                            ("html", &mail.html),
                            ("raw", &raw),
                        ] {
                            assert!(
                                !text.contains("ZZWITHHELDZZ"),
                                "{template}: {value:?}: sensitive value in the {part} of a non-ISA email:\n{text}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Asserts `secret` is nowhere in a rendered email: subject, Message-ID, both
    /// bodies and the raw bytes (every header, encoded or not).
    fn assert_nowhere(mail: &RenderedEmail, secret: &str, case: &str) {
        let raw = String::from_utf8_lossy(&mail.bytes).to_string();
        for (part, text) in [
            ("subject", &mail.subject),
            ("message id", &mail.message_id),
            ("text", &mail.text),
            ("html", &mail.html),
            ("raw", &raw),
        ] {
            assert!(
                !text.contains(secret),
                "{case}: the withheld value is in the {part}:\n{text}"
            );
        }
    }

    /// Each way a sensitive value can leave its field (SPEC §5.3), rendered for
    /// the ISA panel (who sees it) and the charity (who must not, anywhere), with
    /// templates that print everything they can reach.
    #[test]
    fn no_path_carries_a_withheld_value() {
        const SECRET: &str = "ZZSECRET-12 Market St";
        let dump = "subject = \"{{ headline }} {{ district }} {{ key }} {{ group | tojson }} {{ trigger | tojson }} {{ event | tojson }}\"\nbody = \"{{ summary }} {{ district }} {{ key }} {{ due }} {{ trigger | tojson }} {{ events | tojson }} {{ group | tojson }}\"";
        let secret_event = |alert: &mut Alert| {
            alert.events[0]
                .fields
                .insert("notes", FieldValue::Text(SECRET.into()));
        };
        let mut cases: Vec<(&str, Config, Rule, Alert)> = Vec::new();

        let config = config();
        let mut r = rule(&config, dump);
        r.kind = crate::rules::RuleKind::FirstSeen {
            field: "notes".into(),
            known: Default::default(),
        };
        let mut a = alert("x", "Bolton");
        secret_event(&mut a);
        a.trigger = Trigger::FirstSeen {
            field: "notes".into(),
            value: SECRET.into(),
        };
        cases.push(("first_seen on a sensitive field", config.clone(), r, a));

        let r = rule(&config, "");
        for (label, closed) in [("deadline key", false), ("deadline key, closed", true)] {
            let mut r = r.clone();
            r.kind = crate::rules::RuleKind::Deadline {
                key: "Notes".into(),
                until_feed: "drug_testing".into(),
                until_when: crate::rules::condition::Condition::Always,
                within: Duration::from_secs(3600),
                notify_on_open: r.notify.clone(),
                notify_on_close: r.notify.clone(),
            };
            r.subject = None;
            let mut a = alert("x", "Bolton");
            secret_event(&mut a);
            let due = "2025-11-04T12:30:00Z".parse().unwrap();
            a.trigger = if closed {
                Trigger::DeadlineClosed {
                    key: SECRET.into(),
                    due,
                    late: true,
                }
            } else {
                Trigger::DeadlineOpened {
                    key: SECRET.into(),
                    due,
                    closed: false,
                }
            };
            cases.push((label, config.clone(), r.clone(), a.clone()));
            let mut dumped = rule(&config, dump);
            dumped.kind = r.kind.clone();
            cases.push((label, config.clone(), dumped, a));
        }

        let mut district_config = config.clone();
        district_config.feeds[0].district_field = "notes".into();
        let mut a = alert(SECRET, SECRET);
        a.district = Some(SECRET.into());
        a.events[0].fields.remove("district");
        cases.push((
            "a sensitive district_field",
            district_config.clone(),
            rule(&district_config, dump),
            a.clone(),
        ));
        cases.push((
            "a sensitive district_field, default templates",
            district_config.clone(),
            rule(&district_config, ""),
            a,
        ));

        let mut a = alert("x", "Bolton");
        secret_event(&mut a);
        a.group = BTreeMap::from([("NOTES".to_string(), SECRET.to_string())]);
        cases.push((
            "group_by a sensitive field",
            config.clone(),
            rule(&config, &format!("group_by = [\"NOTES\"]\n{dump}")),
            a,
        ));

        let mut a = alert("x", "Bolton");
        for column in ["Notes ", "NO-TES", " notes"] {
            a.events[0]
                .fields
                .insert(column, FieldValue::Text(SECRET.into()));
        }
        cases.push((
            "columns spelled otherwise",
            config.clone(),
            rule(
                &config,
                "subject = \"{{ event['Notes '] }} {{ event['NO-TES'] }} {{ event | tojson }}\"",
            ),
            a,
        ));

        for (case, config, rule, alert) in cases {
            let mails = emails(&config, &rule, &alert);
            assert_eq!(mails.len(), 2, "{case}");
            let (panel, charity) = (&mails[0], &mails[1]);
            assert_eq!(charity.to, ["c@example.org"]);
            assert!(
                panel.text.contains(SECRET) || panel.subject.contains(SECRET),
                "{case}: the ISA partner sees it:\n{}",
                panel.text
            );
            assert_nowhere(charity, SECRET, case);
            assert!(
                charity.text.contains("Withheld: notes"),
                "{case}: the email says what was withheld:\n{}",
                charity.text
            );
            assert!(charity.html.contains("Withheld: notes"), "{case}");
        }
    }

    #[test]
    fn template_field_references_are_found_where_fields_can_be_read() {
        let names =
            |t: &str| -> Vec<String> { field_references(t).into_iter().map(|r| r.name).collect() };
        assert_eq!(
            names("{{ rule.name }} in {{ group.district }}"),
            ["district"]
        );
        assert_eq!(
            names("{{ event[\"Notes\"] }} {{ events[0].notes }} {{ event.get('post code') }}"),
            ["Notes", "notes", "get", "post code"]
        );
        assert_eq!(
            names("{% for e in events %}{{ e.notes | upper }}{% endfor %}"),
            ["e", "e", "notes"]
        );
        assert_eq!(
            names("{{ events | map(attribute=\"location\") | join(\", \") }}"),
            ["attribute", "location", ", "]
        );
        assert_eq!(
            names("notes outside tags {# {{ event.notes }} #} {{ x is defined }}"),
            ["x"],
            "text and comments are not read; test names are not fields"
        );
        assert_eq!(
            names("{{ partner.notes }} {{ loop.index }}"),
            Vec::<String>::new()
        );
        let t = "ab {{ event.Notes }}";
        let r = field_references(t);
        assert_eq!(&t[r[0].offset..r[0].offset + 5], "Notes");
        assert_eq!(names("{{ 'caf\u{e9} \\' x' }}"), ["caf\u{e9} ' x"]);
    }

    #[test]
    fn hostile_data_cannot_add_headers_or_markup() {
        let config = config();
        let rule = rule(&config, "subject = \"{{ event.district }}\"");
        let mails = emails(
            &config,
            &rule,
            &alert(
                "<script>alert(1)</script>",
                "Bolton\r\nBcc: evil@example.com",
            ),
        );
        let panel = &mails[0];
        let raw = String::from_utf8_lossy(&panel.bytes);
        let header_block = raw.split("\r\n\r\n").next().unwrap();
        assert!(
            !header_block.lines().any(|l| l.starts_with("Bcc:")),
            "{raw}"
        );
        assert!(
            header_block.contains(
                "Subject: OFFICIAL-SENSITIVE [CRITICAL] Bolton Bcc: evil@example.com\r\n"
            ),
            "{raw}"
        );
        assert!(!panel.subject.contains('\n'));
        assert!(!panel.html.contains("<script>"));
        assert!(panel.html.contains("&lt;script&gt;"));
    }

    /// The header block of a rendered message, unfolded lines.
    fn header_lines(bytes: &[u8]) -> Vec<String> {
        let raw = String::from_utf8_lossy(bytes).to_string();
        let block = raw.split("\r\n\r\n").next().unwrap().to_string();
        block.split("\r\n").map(str::to_string).collect()
    }

    fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
        let prefix = format!("{}: ", name.to_ascii_lowercase());
        lines
            .iter()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| &l[prefix.len()..])
    }

    #[test]
    fn each_purpose_has_its_own_stable_message_id() {
        let ids: Vec<String> = [
            Purpose::Alert,
            Purpose::Draft,
            Purpose::Update(1),
            Purpose::Update(2),
            Purpose::Reminder(1),
            Purpose::Withdrawn,
        ]
        .into_iter()
        .map(|p| message_id("EW-0123456789", "dews-panel", p, "example.org"))
        .collect();
        assert_eq!(
            ids,
            [
                "<EW-0123456789.dews-panel@example.org>",
                "<EW-0123456789.dews-panel.draft@example.org>",
                "<EW-0123456789.dews-panel.update-1@example.org>",
                "<EW-0123456789.dews-panel.update-2@example.org>",
                "<EW-0123456789.dews-panel.reminder-1@example.org>",
                "<EW-0123456789.dews-panel.withdrawn@example.org>",
            ]
        );
        assert_eq!(
            message_id("EW-1", "a>b\r\nBcc: x", Purpose::Alert, "ex ample.org>"),
            "<EW-1.a_b__Bcc__x@ex_ample.org_>"
        );
        assert!(ids.iter().all(|id| is_safe_message_id(id)));
    }

    #[test]
    fn the_draft_and_the_approved_copy_differ_and_the_approval_replies_to_the_draft() {
        let config = config();
        let rule = rule(&config, "");
        let a = alert("x", "Bolton");
        let draft_delivery = &route(&a, &rule, &config, Audience::Review);
        // The test rule has no `review`: make the panel its reviewer.
        let mut reviewed = rule.clone();
        reviewed.review = vec!["panel".into()];
        let review = route(&a, &reviewed, &config, Audience::Review);
        assert!(draft_delivery.is_empty() && !review.is_empty());
        let draft = render(&a, &reviewed, &review[0], &config).unwrap();
        let notify = route(&a, &reviewed, &config, Audience::Notify);
        let approved =
            render_in_thread(&a, &reviewed, &notify[0], &config, Some(&draft.message_id)).unwrap();
        assert_eq!(draft.message_id, "<EW-0123456789.panel.draft@example.org>");
        assert_eq!(approved.message_id, "<EW-0123456789.panel@example.org>");
        assert_eq!(draft.thread, approved.thread);
        let lines = header_lines(&approved.bytes);
        assert_eq!(
            header(&lines, "In-Reply-To"),
            Some(draft.message_id.as_str())
        );
        assert_eq!(
            header(&lines, "References"),
            Some(draft.message_id.as_str())
        );
        assert_eq!(header(&header_lines(&draft.bytes), "In-Reply-To"), None);
        // A draft queued before drafts had their own suffix shares the plain id:
        // the approval then takes another rather than repeat it.
        let legacy = render_in_thread(
            &a,
            &reviewed,
            &notify[0],
            &config,
            Some("<EW-0123456789.panel@example.org>"),
        )
        .unwrap();
        assert_eq!(
            legacy.message_id,
            "<EW-0123456789.panel.approved@example.org>"
        );
    }

    #[test]
    fn every_email_is_auto_submitted_and_keeps_its_earlywarn_headers() {
        let config = config();
        let rule = rule(&config, "");
        for mail in emails(&config, &rule, &alert("x", "Bolton")) {
            let lines = header_lines(&mail.bytes);
            assert_eq!(header(&lines, "Auto-Submitted"), Some("auto-generated"));
            assert_eq!(header(&lines, "X-Earlywarn-Alert"), Some("EW-0123456789"));
            assert_eq!(header(&lines, "X-Earlywarn-Rule"), Some("nitazene"));
            assert_eq!(header(&lines, "Reply-To"), None, "not configured");
        }
    }

    #[test]
    fn reply_to_is_set_when_configured_and_cannot_carry_a_header() {
        let mut config = config();
        config.mail.reply_to = Some("GM Drug Alert Panel <panel-replies@example.org>".into());
        let rule = rule(&config, "");
        for mail in emails(&config, &rule, &alert("x", "Bolton")) {
            let lines = header_lines(&mail.bytes);
            let reply_to = header(&lines, "Reply-To").unwrap();
            assert!(
                reply_to.contains("<panel-replies@example.org>"),
                "{reply_to}"
            );
        }
        // `check` refuses a reply_to that is not one mailbox.
        for bad in [
            "x@example.org\r\nBcc: evil@example.com",
            "not an address",
            "a@b, c@d",
        ] {
            let text = format!(
                "[mail]\ntransport = \"file\"\nreply_to = {}\n[[feed]]\nname = \"f\"\ndir = \"in\"\n",
                toml::Value::String(bad.into())
            );
            let e = Config::parse(Path::new("/x/c.toml"), &text).unwrap_err();
            assert!(e.to_string().contains("reply_to"), "{bad:?}: {e}");
        }
        // And one that slipped past `check` still cannot add a header.
        config.mail.reply_to = Some("x@example.org\r\nBcc: evil@example.com".into());
        let delivery = &route(&alert("x", "Bolton"), &rule, &config, Audience::Notify)[0];
        if let Ok(mail) = render(&alert("x", "Bolton"), &rule, delivery, &config) {
            assert!(
                !header_lines(&mail.bytes)
                    .iter()
                    .any(|l| l.starts_with("Bcc:"))
            );
        }
    }

    #[test]
    fn a_thread_parent_that_is_not_a_message_id_is_left_out() {
        let config = config();
        let rule = rule(&config, "");
        let a = alert("x", "Bolton");
        let delivery = &route(&a, &rule, &config, Audience::Notify)[0];
        for hostile in [
            "<a@b>\r\nBcc: evil@example.com",
            "<a@b> <c@d>",
            "a@b",
            "<a b@c>",
            "<@b>",
            "<a@b>\n",
        ] {
            let mail = render_in_thread(&a, &rule, delivery, &config, Some(hostile)).unwrap();
            let lines = header_lines(&mail.bytes);
            assert_eq!(header(&lines, "In-Reply-To"), None, "{hostile:?}");
            assert_eq!(header(&lines, "References"), None, "{hostile:?}");
            assert!(!lines.iter().any(|l| l.starts_with("Bcc:")), "{hostile:?}");
        }
    }

    #[test]
    fn the_notices_of_one_deadline_share_a_thread() {
        let due: Timestamp = "2025-11-04T12:30:00Z".parse().unwrap();
        let with = |trigger: Trigger, id: &str| {
            let mut a = alert("x", "Bolton");
            a.id = id.into();
            a.trigger = trigger;
            thread_key(&a)
        };
        let opened = with(
            Trigger::DeadlineOpened {
                key: "GMP-A".into(),
                due,
                closed: false,
            },
            "EW-1",
        );
        let overdue = with(
            Trigger::DeadlineOverdue {
                key: "gmp-a".into(),
                due,
            },
            "EW-2",
        );
        let closed = with(
            Trigger::DeadlineClosed {
                key: "GMP-A".into(),
                due,
                late: true,
            },
            "EW-3",
        );
        assert_eq!(opened, overdue);
        assert_eq!(opened, closed);
        let reopened = with(
            Trigger::DeadlineOpened {
                key: "GMP-A".into(),
                due: "2025-11-05T12:30:00Z".parse().unwrap(),
                closed: false,
            },
            "EW-4",
        );
        assert_ne!(
            opened, reopened,
            "a later deadline of the same key is another thread"
        );
        assert_ne!(with(Trigger::Match, "EW-5"), with(Trigger::Match, "EW-6"));
    }

    #[test]
    fn the_date_is_set_at_hand_off_and_the_body_is_untouched() {
        let config = config();
        let rule = rule(&config, "body = \"Date: not a header {{ rule.name }}\"");
        let mail = &emails(&config, &rule, &alert("x", "Bolton"))[0];
        let split = |m: &[u8]| {
            let at = memchr::memmem::find(m, b"\r\n\r\n").unwrap();
            (m[..at].to_vec(), m[at..].to_vec())
        };
        let at: Timestamp = "2025-11-05T08:09:10.750Z".parse().unwrap();
        let dated = with_date(&mail.bytes, at);
        let (head, body) = split(&dated);
        assert_eq!(
            body,
            split(&mail.bytes).1,
            "the body is byte for byte the same"
        );
        let lines = header_lines(&head);
        let dates: Vec<&String> = lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("date:"))
            .collect();
        assert_eq!(dates, ["Date: Wed, 5 Nov 2025 08:09:10 +0000"]);
        // Every other header line is kept, in order.
        let others = |ls: &[String]| -> Vec<String> {
            ls.iter()
                .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                .cloned()
                .collect()
        };
        assert_eq!(others(&lines), others(&header_lines(&mail.bytes)));
        assert_eq!(
            with_date(&dated, at),
            dated,
            "the same time gives the same bytes"
        );
        let later = with_date(&dated, "2025-11-06T00:00:00Z".parse().unwrap());
        assert!(
            String::from_utf8_lossy(&later).contains("Date: Thu, 6 Nov 2025 00:00:00 +0000\r\n")
        );
        assert_eq!(split(&later).1, body);

        // A folded Date is replaced whole; a message without one gains one.
        let folded = b"Subject: x\r\nDate: Tue, 4 Nov 2025\r\n 11:30:00 +0000\r\nTo: a@b\r\n\r\nDate: body\r\n";
        assert_eq!(
            with_date(folded, at),
            b"Subject: x\r\nDate: Wed, 5 Nov 2025 08:09:10 +0000\r\nTo: a@b\r\n\r\nDate: body\r\n"
        );
        assert_eq!(
            with_date(b"Subject: x\r\n\r\nDate: body\r\n", at),
            b"Date: Wed, 5 Nov 2025 08:09:10 +0000\r\nSubject: x\r\n\r\nDate: body\r\n"
        );
    }

    #[test]
    fn the_first_line_says_what_was_found_but_never_from_a_sensitive_field() {
        let config = config();
        let rule = checked_rule(
            &config,
            "when = 'notes ~ \"(?i)park\" or district == \"bolton\"'",
        );
        let mails = emails(&config, &rule, &alert("sold at the PARK", "Bolton"));
        // The panel may read the notes, but a subject shows in previews and
        // notifications: only the district was found there.
        assert_eq!(
            mails[0].subject,
            "OFFICIAL-SENSITIVE [CRITICAL] Bolton, Tue 4 Nov"
        );
        assert!(mails[0].text.contains("Notes: sold at the PARK"));
        for mail in &mails {
            assert!(!mail.subject.contains("PARK"), "{}", mail.subject);
        }
    }

    #[test]
    fn template_errors_have_offsets() {
        let e = check_template("Hello {{ rule.name ").unwrap_err();
        assert!(e.offset > 0, "{}", e.message);
        assert!(check_template("{{ rule.name }} in {{ group.district }}").is_ok());
    }
}
