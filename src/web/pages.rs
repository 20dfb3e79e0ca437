//! The console's pages (SPEC §9): each handler gathers what it shows from the
//! store on the blocking pool, turns it into a view (plain strings, times
//! already in the daemon's time zone) and renders a template.
//!
//! Redaction for an account tied to a partner is decided here, once per page,
//! from the same function the emails used ([`crate::alerts::route`]): such an
//! account sees an alert only if the outbox holds a row for its partner, and
//! every value on the page (district, group values, the trigger, the
//! evidence, the count) comes from that partner's routed view, never from the
//! stored alert. When the rule is no longer loaded there is no routed view, so
//! nothing from the alert's records is shown. Its searches match only the
//! subjects of the emails it got (see `store::web`).
//!
//! The view-building functions are pure (they take `now`); the handlers are
//! the shell.

use super::{WebError, WebState};
use crate::alerts::{Alert, Audience, Delivery, Trigger, WITHHELD, route};
use crate::config::{Config, Severity};
use crate::review::normalise_id;
use crate::rules::RuleSet;
use crate::store::web::{AlertFilter, Cursor, ListedAlert, Page, Receipt};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Alerts on one page of the history.
pub const HISTORY_PAGE: usize = 50;
/// Recent alerts under the review queue.
const RECENT: usize = 20;
/// Drafts listed in the queue at most (the page says how many more wait).
const QUEUE_MAX: usize = 500;
/// Audit rows on the audit page.
const AUDIT_MAX: usize = 200;

/// The templates, parsed once. HTML auto-escaping is on for every one of them.
pub struct Pages {
    env: Environment<'static>,
}

static PAGES: LazyLock<Pages> = LazyLock::new(Pages::new);

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("queue.html", include_str!("templates/queue.html")),
    ("history.html", include_str!("templates/history.html")),
    ("alert.html", include_str!("templates/alert.html")),
    ("status.html", include_str!("templates/status.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("error.html", include_str!("templates/error.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("login.html", include_str!("templates/login.html")),
    ("ack.html", include_str!("templates/ack.html")),
];

const STYLESHEET: &str = include_str!("static/style.css");

impl Pages {
    fn new() -> Pages {
        let mut env = Environment::new();
        // Every value is HTML-escaped, whatever the template: there is no page
        // where markup from a feed would be wanted.
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        for (name, source) in TEMPLATES {
            // The templates are part of the binary and rendered by the tests:
            // one that does not parse is a bug found before any release.
            if let Err(e) = env.add_template(name, source) {
                panic!("console template {name}: {e}");
            }
        }
        Pages { env }
    }

    /// The templates (parsed at first use).
    pub fn get() -> &'static Pages {
        &PAGES
    }

    /// Renders template `name` with `view`.
    pub fn render(&self, name: &str, view: &impl Serialize) -> Result<String, minijinja::Error> {
        self.env
            .get_template(name)?
            .render(minijinja::Value::from(minijinja::value::Serde(view)))
    }
}

/// Who is looking: what the page may show (from the session, see `auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Viewer {
    pub name: String,
    pub display: String,
    /// An account tied to a partner sees only that partner's alerts, redacted.
    pub partner: Option<String>,
    pub admin: bool,
    /// The session's form token, for the forms of the page (logout, decisions).
    pub csrf: String,
}

impl Viewer {
    /// Someone who may see everything: an admin.
    pub fn unrestricted(name: &str) -> Viewer {
        Viewer {
            name: name.to_string(),
            display: name.to_string(),
            partner: None,
            admin: true,
            csrf: String::new(),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            WebError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page, or no alert with that reference that you may see."
                    .to_string(),
            ),
            WebError::Forbidden => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your account may not see or do this.".to_string(),
            ),
            WebError::Refused(why) => (StatusCode::UNPROCESSABLE_ENTITY, "Not done", why),
            other => {
                tracing::error!(error = %other, "Console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The page could not be made; the error is in the daemon's log.".to_string(),
                )
            }
        };
        let view = ErrorView {
            title,
            message,
            viewer: None,
        };
        match PAGES.render("error.html", &view) {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, title).into_response(),
        }
    }
}

#[derive(Serialize)]
struct ErrorView {
    title: &'static str,
    message: String,
    viewer: Option<Viewer>,
}

fn html(state: &WebState, name: &str, view: &impl Serialize) -> Result<Response, WebError> {
    Ok(Html(state.pages.render(name, view)?).into_response())
}

// ------------------------------------------------------------ words and times

/// A duration as people say it: "1 h 20 min", "3 d 4 h", "less than a minute".
pub fn span_words(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    let (days, hours, mins) = (mins / 1440, mins / 60 % 24, mins % 60);
    match (days, hours, mins) {
        (0, 0, 0) => "less than a minute".to_string(),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// The time from `earlier` to `later` (nothing if it runs backwards).
fn between(earlier: Timestamp, later: Timestamp) -> Duration {
    Duration::from_millis(
        later
            .as_millisecond()
            .saturating_sub(earlier.as_millisecond())
            .max(0) as u64,
    )
}

/// A draft's review clock: "due in 1 h 20 min", or "overdue by 10 min" once
/// `review_within` of its creation has passed; the flag says overdue.
pub fn review_clock(
    created_at: Timestamp,
    review_within: Option<Duration>,
    now: Timestamp,
) -> Option<(String, bool)> {
    let within = review_within?;
    let due = created_at
        .checked_add(jiff::SignedDuration::try_from(within).ok()?)
        .ok()?;
    Some(if now < due {
        (format!("due in {}", span_words(between(now, due))), false)
    } else {
        (
            format!("overdue by {}", span_words(between(due, now))),
            true,
        )
    })
}

pub(super) fn local(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// The link of an alert's page.
pub(super) fn alert_href(id: &str) -> String {
    format!("/alerts/{}", urlencode(id))
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|q| q.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// The trigger in words, from the view the page may show.
pub(super) fn trigger_words(trigger: &Trigger, tz: &TimeZone) -> String {
    match trigger {
        Trigger::Match => "records matched the rule".into(),
        Trigger::Threshold { count, within_secs } => format!(
            "{count} matching records within {}",
            span_words(Duration::from_secs(*within_secs))
        ),
        Trigger::DeadlineOpened { key, due, closed } => format!(
            "deadline opened for {key}, due {}{}",
            local(*due, tz),
            if *closed { " (already closed)" } else { "" }
        ),
        Trigger::DeadlineOverdue { key, due } => {
            format!("deadline for {key} passed at {}", local(*due, tz))
        }
        Trigger::DeadlineClosed { key, due, late } => format!(
            "deadline for {key} closed{}, due {}",
            if *late { " late" } else { "" },
            local(*due, tz)
        ),
        Trigger::FirstSeen { field, value } => format!("first time seen: {field} = {value}"),
        Trigger::Rate {
            current,
            baseline_average,
            within_secs,
        } => format!(
            "{current} matching records within {} (usually {baseline_average:.1})",
            span_words(Duration::from_secs(*within_secs))
        ),
        Trigger::Silence { feed, last, .. } => {
            format!("feed {feed} silent since {}", local(*last, tz))
        }
        Trigger::Folded {
            alerts, matches, ..
        } => format!("{alerts} alerts ({matches} matching records) folded into one summary"),
    }
}

// ------------------------------------------------------------ redaction

/// What an account may see of one alert: everything, or one partner's routed view.
enum Sight<'c> {
    All,
    /// The partner's routed view (what its email was rendered from); `None`
    /// when it cannot be made now (the rule is gone, or no longer routes to it).
    Partner(Option<Box<Delivery<'c>>>),
}

/// The view `partner` was sent of `alert`: its notify delivery if it has one,
/// else its review (draft) delivery.
fn partner_delivery<'c>(
    config: &'c Config,
    rules: &RuleSet,
    alert: &Alert,
    partner: &str,
    audiences: &[Audience],
) -> Option<Delivery<'c>> {
    let rule = rules.get(&alert.rule_id)?;
    audiences.iter().find_map(|audience| {
        route(alert, rule, config, *audience)
            .into_iter()
            .find(|d| d.partner.id == partner)
    })
}

fn sight<'c>(
    viewer: &Viewer,
    config: &'c Config,
    rules: &RuleSet,
    alert: Option<&Alert>,
    audiences: &[Audience],
) -> Sight<'c> {
    match &viewer.partner {
        None => Sight::All,
        Some(p) => Sight::Partner(
            alert
                .and_then(|a| partner_delivery(config, rules, a, p, audiences))
                .map(Box::new),
        ),
    }
}

/// One alert in a list.
#[derive(Debug, Serialize)]
pub struct RowView {
    pub id: String,
    pub href: String,
    pub rule: String,
    pub rule_name: String,
    /// The district as this account may see it ("" when none or not shown).
    pub district: String,
    pub severity: String,
    pub status: String,
    pub created: String,
    pub age: String,
}

fn row_view(
    row: &ListedAlert,
    viewer: &Viewer,
    config: &Config,
    rules: &RuleSet,
    now: Timestamp,
) -> RowView {
    // Only a partner's view needs the stored alert (to route it).
    let parsed = viewer.partner.as_ref().and_then(|_| row.alert());
    let district = match sight(
        viewer,
        config,
        rules,
        parsed.as_ref(),
        &[Audience::Notify, Audience::Review],
    ) {
        Sight::All => row.district.clone().unwrap_or_default(),
        Sight::Partner(Some(d)) => d.district.clone().unwrap_or_default(),
        Sight::Partner(None) => String::new(),
    };
    RowView {
        id: row.id.clone(),
        href: alert_href(&row.id),
        rule: row.rule_id.clone(),
        rule_name: rules
            .get(&row.rule_id)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        district,
        severity: row.severity.clone(),
        status: row.status.replace('_', " "),
        created: local(row.created_at, &config.daemon.timezone),
        age: span_words(between(row.created_at, now)),
    }
}

// ------------------------------------------------------------ the review queue

#[derive(Debug, Serialize)]
pub struct QueueItem {
    pub row: RowView,
    /// "due in 1 h 20 min" / "overdue by 10 min", when the rule has `review_within`.
    pub clock: Option<String>,
    pub overdue: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueView {
    pub title: &'static str,
    pub viewer: Viewer,
    pub queue: Vec<QueueItem>,
    /// Drafts waiting beyond those listed.
    pub more: i64,
    pub recent: Vec<RowView>,
}

/// The rule's `review_within` (none when the rule is no longer loaded).
fn review_within(rules: &RuleSet, rule_id: &str) -> Option<Duration> {
    rules.get(rule_id).and_then(|r| r.review_within)
}

pub fn queue_view(
    viewer: &Viewer,
    config: &Config,
    rules: &RuleSet,
    drafts: &[ListedAlert],
    waiting: i64,
    recent: &[ListedAlert],
    now: Timestamp,
) -> QueueView {
    let queue = drafts
        .iter()
        .map(|d| {
            let clock = review_clock(d.created_at, review_within(rules, &d.rule_id), now);
            QueueItem {
                row: row_view(d, viewer, config, rules, now),
                overdue: clock.as_ref().is_some_and(|c| c.1),
                clock: clock.map(|c| c.0),
            }
        })
        .collect::<Vec<_>>();
    QueueView {
        title: "Review queue",
        viewer: viewer.clone(),
        more: (waiting - queue.len() as i64).max(0),
        queue,
        recent: recent
            .iter()
            .map(|r| row_view(r, viewer, config, rules, now))
            .collect(),
    }
}

pub async fn queue(
    State(state): State<Arc<WebState>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    let partner = viewer.partner.clone();
    let (drafts, waiting, recent) = state
        .db
        .with(move |store| {
            let p = partner.as_deref();
            let filter = AlertFilter {
                partner: partner.clone(),
                ..AlertFilter::default()
            };
            Ok((
                store.console_queue(p, QUEUE_MAX)?,
                store.console_queue_len(p)?,
                store.alert_history(&filter, Page::First, RECENT)?,
            ))
        })
        .await?;
    let now = (state.clock)();
    let view = queue_view(
        &viewer,
        &state.config,
        &state.rules(),
        &drafts,
        waiting,
        &recent,
        now,
    );
    html(&state, "queue.html", &view)
}

// ------------------------------------------------------------ the history

/// The history form's fields, as the query string gives them ("" = not set).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct HistoryQuery {
    pub rule: String,
    pub district: String,
    pub severity: String,
    pub status: String,
    /// `YYYY-MM-DD`, in the daemon's time zone, inclusive.
    pub from: String,
    pub to: String,
    pub q: String,
    /// A page cursor, `MILLISECONDS.ID`: older than / newer than that alert.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub before: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub after: String,
}

fn set(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Midnight starting `date` (`YYYY-MM-DD`) in `tz`; `next_day` for the end of an inclusive range.
fn day_start(date: &str, tz: &TimeZone, next_day: bool) -> Option<Timestamp> {
    let date: jiff::civil::Date = date.trim().parse().ok()?;
    let date = if next_day {
        date.tomorrow().ok()?
    } else {
        date
    };
    Some(date.to_zoned_datetime(tz.clone()).ok()?.timestamp())
}

fn parse_cursor(s: &str) -> Option<(Timestamp, String)> {
    let (ms, id) = s.split_once('.')?;
    Some((
        Timestamp::from_millisecond(ms.parse().ok()?).ok()?,
        normalise_id(id),
    ))
}

fn cursor_of(row: &ListedAlert) -> String {
    format!("{}.{}", row.created_at.as_millisecond(), row.id)
}

impl HistoryQuery {
    /// The store's filter for `viewer`; `None` when a date does not parse
    /// (the page then says so and lists nothing).
    pub fn filter(&self, viewer: &Viewer, tz: &TimeZone) -> Result<AlertFilter, &'static str> {
        let date = |s: &str, next: bool| match set(s) {
            None => Ok(None),
            Some(d) => day_start(&d, tz, next)
                .map(Some)
                .ok_or("Give dates as YYYY-MM-DD."),
        };
        Ok(AlertFilter {
            rule: set(&self.rule),
            district: set(&self.district),
            severity: set(&self.severity),
            status: set(&self.status).map(|s| s.replace(' ', "_")),
            from: date(&self.from, false)?,
            to: date(&self.to, true)?,
            text: set(&self.q),
            partner: viewer.partner.clone(),
        })
    }

    fn with_cursor(&self, before: Option<String>, after: Option<String>) -> String {
        let q = HistoryQuery {
            before: before.unwrap_or_default(),
            after: after.unwrap_or_default(),
            ..self.clone()
        };
        format!(
            "/alerts?{}",
            serde_urlencoded::to_string(&q).unwrap_or_default()
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub title: &'static str,
    pub viewer: Viewer,
    pub query: HistoryQuery,
    pub problem: Option<&'static str>,
    pub rules: Vec<Choice>,
    pub severities: Vec<Choice>,
    pub statuses: Vec<Choice>,
    pub rows: Vec<RowView>,
    pub next: Option<String>,
    pub previous: Option<String>,
}

fn choices(items: impl IntoIterator<Item = (String, String)>, current: &str) -> Vec<Choice> {
    items
        .into_iter()
        .map(|(value, label)| Choice {
            selected: value == current,
            value,
            label,
        })
        .collect()
}

/// The history page. `rows` holds up to one more than a page: the extra one
/// says there is a further page in the direction read.
#[allow(clippy::too_many_arguments)]
pub fn history_view(
    viewer: &Viewer,
    config: &Config,
    rules: &RuleSet,
    query: &HistoryQuery,
    problem: Option<&'static str>,
    mut rows: Vec<ListedAlert>,
    now: Timestamp,
) -> HistoryView {
    let backwards = !query.after.is_empty();
    let more = rows.len() > HISTORY_PAGE;
    if more {
        if backwards {
            rows.remove(0);
        } else {
            rows.truncate(HISTORY_PAGE);
        }
    }
    // A partner's account filtering by district: the district it was shown,
    // never the stored one (which may be withheld from it).
    let mut views: Vec<RowView> = rows
        .iter()
        .map(|r| row_view(r, viewer, config, rules, now))
        .collect();
    let paired: Vec<(ListedAlert, RowView)> =
        if viewer.partner.is_some() && !query.district.trim().is_empty() {
            rows.into_iter()
                .zip(views.drain(..))
                .filter(|(_, v)| v.district.eq_ignore_ascii_case(query.district.trim()))
                .collect()
        } else {
            rows.into_iter().zip(views.drain(..)).collect()
        };
    let (older_exists, newer_exists) = if backwards {
        (true, more)
    } else {
        (more, !query.before.is_empty())
    };
    let next = paired
        .last()
        .filter(|_| older_exists)
        .map(|(r, _)| query.with_cursor(Some(cursor_of(r)), None));
    let previous = paired
        .first()
        .filter(|_| newer_exists)
        .map(|(r, _)| query.with_cursor(None, Some(cursor_of(r))));
    let rule_choices = std::iter::once((String::new(), "any rule".to_string())).chain(
        rules
            .rules
            .iter()
            .map(|r| (r.id.clone(), format!("{} ({})", r.name, r.id))),
    );
    let severity_choices = std::iter::once((String::new(), "any severity".to_string())).chain(
        [Severity::Critical, Severity::Warning, Severity::Info]
            .iter()
            .map(|s| (s.as_str().to_string(), s.as_str().to_string())),
    );
    let status_choices = std::iter::once((String::new(), "any status".to_string())).chain(
        ["in_review", "sent", "approved", "dismissed"]
            .iter()
            .map(|s| (s.to_string(), s.replace('_', " "))),
    );
    HistoryView {
        title: "Alert history",
        viewer: viewer.clone(),
        query: query.clone(),
        problem,
        rules: choices(rule_choices, query.rule.trim()),
        severities: choices(severity_choices, query.severity.trim()),
        statuses: choices(status_choices, &query.status.trim().replace(' ', "_")),
        rows: paired.into_iter().map(|(_, v)| v).collect(),
        next,
        previous,
    }
}

pub async fn history(
    State(state): State<Arc<WebState>>,
    viewer: Viewer,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, WebError> {
    let tz = state.config.daemon.timezone.clone();
    let (filter, problem) = match query.filter(&viewer, &tz) {
        Ok(f) => (Some(f), None),
        Err(why) => (None, Some(why)),
    };
    let before = parse_cursor(&query.before);
    let after = parse_cursor(&query.after);
    let rows = match filter {
        None => Vec::new(),
        Some(filter) => {
            state
                .db
                .with(move |store| {
                    let page = match (&before, &after) {
                        (_, Some((at, id))) => Page::After(Cursor {
                            created_at: *at,
                            id,
                        }),
                        (Some((at, id)), None) => Page::Before(Cursor {
                            created_at: *at,
                            id,
                        }),
                        (None, None) => Page::First,
                    };
                    Ok(store.alert_history(&filter, page, HISTORY_PAGE + 1)?)
                })
                .await?
        }
    };
    let now = (state.clock)();
    let view = history_view(
        &viewer,
        &state.config,
        &state.rules(),
        &query,
        problem,
        rows,
        now,
    );
    html(&state, "history.html", &view)
}

// ------------------------------------------------------------ one alert

#[derive(Debug, Serialize)]
pub struct FieldView {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub record: String,
    pub time: String,
    pub fields: Vec<FieldView>,
}

#[derive(Debug, Serialize)]
pub struct ReceiptView {
    pub partner: String,
    pub partner_name: String,
    pub audience: String,
    pub status: String,
    pub subject: String,
    pub queued: String,
    pub sent: String,
    /// "by NAME, DATE" once the partner confirmed receipt ("" until then).
    pub acknowledged: String,
}

/// One partner that was sent the alert, and whether it confirmed receipt.
#[derive(Debug, Serialize)]
pub struct AckView {
    pub partner: String,
    pub partner_name: String,
    /// "by NAME, DATE" (or just the date when no name was typed); "" = not yet.
    pub confirmed: String,
}

#[derive(Debug, Serialize)]
pub struct AuditView {
    pub at: String,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub alert: Option<String>,
    pub alert_href: Option<String>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct AlertView {
    pub title: String,
    pub viewer: Viewer,
    pub id: String,
    pub rule: String,
    pub rule_name: String,
    pub severity: String,
    pub status: String,
    pub created: String,
    pub age: String,
    pub district: String,
    pub group: Vec<FieldView>,
    pub trigger: String,
    pub count: u64,
    pub evidence: Vec<EventView>,
    /// Fields kept from this account (a partner's), by name.
    pub withheld: Vec<String>,
    /// Why no evidence is shown, when none is.
    pub no_evidence: Option<&'static str>,
    pub receipts: Vec<ReceiptView>,
    /// Each partner sent the alert itself, with its confirmation, in the order sent.
    pub acks: Vec<AckView>,
    /// The update and withdraw forms, for an account that may follow it up.
    pub follow_up: Option<super::lifecycle::FollowUpForm>,
    /// The decision form, for an account that may decide this draft.
    pub decision: Option<super::decisions::DecisionForm>,
    /// What the last decision did, after its redirect.
    pub flash: Option<&'static str>,
    pub decisions: Vec<DecisionView>,
    pub assessment: Option<AssessmentView>,
    pub history: Vec<AuditView>,
}

/// Everything the alert page reads from the store.
pub struct AlertRecord {
    pub listed: ListedAlert,
    /// The stored alert, when the current code can read it.
    pub alert: Option<Alert>,
    pub receipts: Vec<Receipt>,
    pub decisions: Vec<crate::store::decisions::DecisionRow>,
    pub acks: Vec<crate::store::lifecycle::AckRow>,
    pub audit: Vec<crate::audit::AuditEntry>,
}

impl AlertRecord {
    /// Reads alert `id` (any case) and everything its page shows.
    pub fn read(store: &crate::store::Store, id: &str) -> Result<Option<AlertRecord>, WebError> {
        let Some(listed) = store.listed_alert(id)? else {
            return Ok(None);
        };
        Ok(Some(AlertRecord {
            alert: listed.alert(),
            receipts: store.receipts_of(&listed.id)?,
            decisions: store.decisions_of(&listed.id)?,
            acks: store.acks_of(&listed.id)?,
            audit: store.audit_of_alert(&listed.id)?,
            listed,
        }))
    }
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    pub kind: String,
    pub who: String,
    pub actor: String,
    pub partner: String,
    pub at: String,
    /// An approval's edits in words, a dismissal's reason ("" for a partner's account).
    pub detail: String,
}

/// What the panel approved: the wording that went out and who approved it.
#[derive(Debug, Serialize)]
pub struct AssessmentView {
    pub headline: String,
    pub advice: String,
    pub severity: String,
    pub left_out: Vec<String>,
    pub approvers: String,
    pub at: String,
}

pub(super) fn edits_words(e: &crate::review::Edits) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &e.headline {
        parts.push(format!("headline: {h}"));
    }
    if let Some(a) = &e.advice {
        parts.push(format!("advice: {a}"));
    }
    if let Some(s) = e.severity {
        parts.push(format!("severity: {}", s.as_str()));
    }
    if !e.left_out.is_empty() {
        parts.push(format!(
            "left out: {}",
            e.left_out.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if parts.is_empty() {
        "as drafted".to_string()
    } else {
        parts.join("; ")
    }
}

fn audit_view(e: &crate::audit::AuditEntry, tz: &TimeZone) -> AuditView {
    AuditView {
        at: local(e.at, tz),
        actor: e.actor.clone(),
        source: e.source.clone(),
        action: e.action.clone(),
        alert_href: e.alert_id.as_deref().map(alert_href),
        alert: e.alert_id.clone(),
        detail: match &e.detail {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            other => other.to_string(),
        },
    }
}

/// A record as its email's evidence shows it: labelled fields (`labels`, else
/// the name in words), values in words and times in the zone; the record's
/// id and time are its heading, not fields again.
pub(super) fn event_view(e: &crate::event::Event, config: &Config, tz: &TimeZone) -> EventView {
    use crate::alerts::wording;
    let feed = config.feed(&e.feed);
    let heading = |name: &str| {
        let key = crate::config::field_key(name);
        feed.is_some_and(|f| {
            [&f.id_field, &f.time_field]
                .iter()
                .any(|k| k.as_deref().map(crate::config::field_key) == Some(key.clone()))
        })
    };
    let show_time = |t: Timestamp| {
        t.to_zoned_datetime(tz.clone())
            .strftime("%a %-d %b %Y %H:%M %Z")
            .to_string()
    };
    EventView {
        record: e.record_id.clone().unwrap_or_default(),
        time: local(e.time, tz),
        fields: e
            .fields
            .iter()
            // A column the feed does not list reaches nobody, on a page as in an email.
            .filter(|(name, value)| {
                !value.is_empty() && feed.is_some_and(|f| f.is_listed(name)) && !heading(name)
            })
            .map(|(name, value)| FieldView {
                name: wording::label(feed, name),
                value: wording::show_value(value, &show_time),
            })
            .collect(),
    }
}

/// The alert page for `viewer`, or `None` when it may not see the alert (a
/// partner's account and no outbox row of its partner): answered as not found,
/// so a reference does not tell whether the alert exists.
pub fn alert_view(
    viewer: &Viewer,
    config: &Config,
    rules: &RuleSet,
    record: &AlertRecord,
    now: Timestamp,
) -> Option<AlertView> {
    let tz = &config.daemon.timezone;
    let listed = &record.listed;
    let mut receipts: Vec<&Receipt> = record.receipts.iter().collect();
    let mut audiences = Vec::new();
    if let Some(p) = &viewer.partner {
        receipts.retain(|r| &r.partner_id == p);
        if receipts.is_empty() {
            return None;
        }
        for (name, audience) in [("notify", Audience::Notify), ("review", Audience::Review)] {
            if receipts.iter().any(|r| r.audience == name) {
                audiences.push(audience);
            }
        }
    }
    let alert = record.alert.as_ref();
    let sight = sight(viewer, config, rules, alert, &audiences);
    // Reviewers' free text (a reason, edits, the audit's details) may quote
    // any value of the draft: shown to a partner's account only when its
    // partner has the ISA, so nothing is withheld from it.
    let free_text_ok = viewer
        .partner
        .as_deref()
        .is_none_or(|p| config.partner(p).is_some_and(|p| p.isa));
    let (district, group, trigger, count, evidence, withheld, no_evidence) = match (&sight, alert) {
        (Sight::All, Some(a)) => (
            a.district.clone().unwrap_or_default(),
            a.group
                .iter()
                .map(|(k, v)| FieldView {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            trigger_words(&a.trigger, tz),
            a.event_count,
            a.events.iter().map(|e| event_view(e, config, tz)).collect(),
            Vec::new(),
            None,
        ),
        (Sight::Partner(Some(d)), Some(_)) => (
            d.district.clone().unwrap_or_default(),
            d.group
                .iter()
                .map(|(k, v)| FieldView {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            trigger_words(&d.trigger, tz),
            d.count,
            d.events.iter().map(|e| event_view(e, config, tz)).collect(),
            d.withheld.iter().cloned().collect(),
            None,
        ),
        (Sight::Partner(_), _) | (Sight::All, None) => (
            if viewer.partner.is_some() {
                WITHHELD.to_string()
            } else {
                listed.district.clone().unwrap_or_default()
            },
            Vec::new(),
            String::new(),
            0,
            Vec::new(),
            Vec::new(),
            Some(
                "The rule that raised this alert is no longer loaded, so its records cannot be shown as they were sent.",
            ),
        ),
    };
    let partner_name = |id: &str| {
        config
            .partner(id)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    };
    let confirmed = |partner: &str| {
        record
            .acks
            .iter()
            .find(|a| a.partner_id == partner)
            .map(|a| match &a.name {
                Some(name) => format!("by {name}, {}", local(a.at, tz)),
                None => local(a.at, tz),
            })
            .unwrap_or_default()
    };
    // Only the alert email carries a link: drafts, updates and reminders are not confirmed.
    let mut acks: Vec<AckView> = Vec::new();
    for r in receipts.iter().filter(|r| r.purpose == "alert") {
        if !acks.iter().any(|a| a.partner == r.partner_id) {
            acks.push(AckView {
                partner: r.partner_id.clone(),
                partner_name: partner_name(&r.partner_id),
                confirmed: confirmed(&r.partner_id),
            });
        }
    }
    Some(AlertView {
        title: format!("Alert {}", listed.id),
        viewer: viewer.clone(),
        id: listed.id.clone(),
        rule: listed.rule_id.clone(),
        rule_name: rules
            .get(&listed.rule_id)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        severity: listed.severity.clone(),
        status: listed.status.replace('_', " "),
        created: local(listed.created_at, tz),
        age: span_words(between(listed.created_at, now)),
        district,
        group,
        trigger,
        count,
        evidence,
        withheld,
        no_evidence,
        receipts: receipts
            .iter()
            .map(|r| ReceiptView {
                partner: r.partner_id.clone(),
                partner_name: partner_name(&r.partner_id),
                audience: match r.purpose.as_str() {
                    "draft" => "draft for review".to_string(),
                    "alert" => "alert".to_string(),
                    "withdrawn" => "withdrawal".to_string(),
                    other => other.replace('-', " "),
                },
                acknowledged: if r.purpose == "alert" {
                    confirmed(&r.partner_id)
                } else {
                    String::new()
                },
                status: r.status.clone(),
                subject: r.subject.clone(),
                queued: local(r.created_at, tz),
                sent: r.sent_at.map(|t| local(t, tz)).unwrap_or_default(),
            })
            .collect(),
        acks,
        follow_up: None,
        decision: None,
        flash: None,
        decisions: record
            .decisions
            .iter()
            .map(|d| DecisionView {
                kind: d.kind.clone(),
                who: d.display.clone(),
                actor: d.actor.clone(),
                partner: d.partner.as_deref().map(partner_name).unwrap_or_default(),
                at: local(d.at, tz),
                detail: if !free_text_ok {
                    String::new()
                } else if let Some(reason) = &d.reason {
                    format!("reason: {reason}")
                } else {
                    d.edits.as_ref().map(edits_words).unwrap_or_default()
                },
            })
            .collect(),
        // The wording that went out, to whom it went: not to a partner's
        // account that got only the draft.
        assessment: alert
            .and_then(|a| a.assessment.as_ref())
            .filter(|_| viewer.partner.is_none() || audiences.contains(&Audience::Notify))
            .map(|a| AssessmentView {
                headline: a.headline.clone().unwrap_or_default(),
                advice: a.advice.clone().unwrap_or_default(),
                severity: a
                    .severity
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                left_out: if !free_text_ok {
                    Vec::new()
                } else {
                    a.left_out.iter().cloned().collect()
                },
                approvers: a
                    .approvers
                    .iter()
                    .map(|p| match &p.partner {
                        Some(partner) => format!("{} ({partner})", p.name),
                        None => p.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(" and "),
                at: local(a.approved_at, tz),
            }),
        // Who decided what and when, as its emails' "approved by" line says.
        history: record
            .audit
            .iter()
            .map(|e| {
                let mut v = audit_view(e, tz);
                if !free_text_ok {
                    v.detail.clear();
                }
                v
            })
            .collect(),
    })
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct DoneQuery {
    /// What the decision just made did: `approved`, `recorded`, `dismissed`.
    pub done: String,
}

/// The message after a decision (fixed texts: a link cannot put words on the page).
fn flash_of(done: &str) -> Option<&'static str> {
    Some(match done {
        "approved" => "Approved: the alert is on its way to the partners ticked.",
        "recorded" => {
            "Your approval is recorded. The alert needs another reviewer's approval before it goes out."
        }
        "dismissed" => "Dismissed: the alert goes no further.",
        "updated" => {
            "Update sent: every partner that received the alert gets it, under the same reference."
        }
        "withdrawn" => {
            "Withdrawn: every partner that received the alert is told, under the same reference."
        }
        _ => return None,
    })
}

pub async fn alert(
    State(state): State<Arc<WebState>>,
    session: super::auth::Session,
    Path(id): Path<String>,
    Query(done): Query<DoneQuery>,
) -> Result<Response, WebError> {
    let viewer = session.viewer();
    let record = state
        .db
        .with(move |store| AlertRecord::read(store, &id))
        .await?
        .ok_or(WebError::NotFound)?;
    let now = (state.clock)();
    let rules = state.rules();
    let mut view =
        alert_view(&viewer, &state.config, &rules, &record, now).ok_or(WebError::NotFound)?;
    if let Some(alert) = &record.alert {
        view.decision = super::decisions::form(
            &state.config,
            &rules,
            alert,
            &record.listed.status,
            &record.decisions,
            session.authority().as_ref(),
            &session.csrf,
        );
        view.follow_up = super::lifecycle::form(
            &rules,
            alert,
            &record.listed.status,
            session.authority().as_ref(),
            &session.csrf,
        );
    }
    view.flash = flash_of(&done.done);
    html(&state, "alert.html", &view)
}

// ------------------------------------------------------------ status, audit

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub title: &'static str,
    pub viewer: Viewer,
    pub report: serde_json::Value,
    pub feeds: Vec<serde_json::Value>,
    pub deadlines: Vec<serde_json::Value>,
    pub problems: Vec<serde_json::Value>,
    pub rejected: Vec<serde_json::Value>,
    pub recent: Vec<RowView>,
    pub oldest_pending: String,
    pub delivery_fault: Option<String>,
}

pub fn status_view(
    viewer: &Viewer,
    config: &Config,
    rules: &RuleSet,
    report: &crate::store::StatusReport,
    now: Timestamp,
) -> StatusView {
    let tz = &config.daemon.timezone;
    // The daemon stores these as RFC 3339 (`meta`); anything else is shown as it is.
    let stored_time = |t: &str| {
        t.parse::<Timestamp>()
            .map_or_else(|_| t.to_string(), |t| local(t, tz))
    };
    let feeds = config
        .feeds
        .iter()
        .map(|feed| match report.feeds.iter().find(|f| f.feed == feed.name) {
            Some(f) => serde_json::json!({
                "name": feed.name, "last_file": f.last_file,
                "last_at": local(f.last_at, tz), "outcome": f.last_outcome,
                "paused": report.paused_feeds.iter().find(|p| p.feed == feed.name).map(|p| p.reason.clone()),
            }),
            None => serde_json::json!({
                "name": feed.name, "last_file": "", "last_at": "no file yet", "outcome": "",
                "paused": report.paused_feeds.iter().find(|p| p.feed == feed.name).map(|p| p.reason.clone()),
            }),
        })
        .collect();
    let deadlines = report
        .open_deadlines
        .iter()
        .map(|d| {
            serde_json::json!({
                "rule": d.rule_id, "key": d.key, "opened": local(d.opened_at, tz),
                "due": local(d.due, tz), "overdue": d.due <= now,
            })
        })
        .collect();
    let problems = report
        .delivery_problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "alert": p.alert_id, "href": alert_href(&p.alert_id), "partner": p.partner_id,
                "attempts": p.attempts, "error": p.error,
                "state": if p.permanent { "failed" } else { "retrying" },
                "addresses": p.failed_addresses.join(", "),
            })
        })
        .collect();
    let rejected = report
        .rejected
        .iter()
        .map(|r| {
            serde_json::json!({
                "feed": r.feed, "name": r.name, "at": local(r.at, tz),
                "what": if r.whole_file { format!("rejected: {}", r.reason) } else { format!("{} bad rows", r.rejected_rows) },
            })
        })
        .collect();
    let recent = report
        .recent_alerts
        .iter()
        .map(|a| {
            let listed = ListedAlert {
                id: a.id.clone(),
                rule_id: a.rule_id.clone(),
                district: Some(a.district.clone()),
                severity: a.severity.clone(),
                status: a.status.clone(),
                created_at: a.created_at,
                event_count: a.event_count,
                summary: String::new(),
            };
            row_view(&listed, viewer, config, rules, now)
        })
        .collect();
    StatusView {
        title: "Status",
        viewer: viewer.clone(),
        report: serde_json::json!({
            "rules_loaded": report.rules.loaded,
            "rules_in_force": report.rules.in_force,
            "last_reload_at": report.rules.last_reload_at.as_deref().map(stored_time),
            "last_reload_error": report.rules.last_reload_error,
            "last_refused_at": report.rules.last_refused_at.as_deref().map(stored_time),
            "last_refused_error": report.rules.last_refused_error,
            "in_review": report.in_review,
            "outbox_pending": report.outbox_pending,
            "outbox_failed": report.outbox_failed,
        }),
        feeds,
        deadlines,
        problems,
        rejected,
        recent,
        oldest_pending: report
            .oldest_pending
            .map(|t| local(t, tz))
            .unwrap_or_default(),
        delivery_fault: report
            .delivery_fault
            .as_ref()
            .map(|f| format!("{} (since {})", f.reason, local(f.since, tz))),
    }
}

/// `/status`: what `earlywarn status` shows. Not for a partner's account: it
/// names every feed's files, districts and partners.
pub async fn status(
    State(state): State<Arc<WebState>>,
    viewer: Viewer,
) -> Result<Response, WebError> {
    if viewer.partner.is_some() {
        return Err(WebError::Forbidden);
    }
    let now = (state.clock)();
    let report = state.db.with(move |store| Ok(store.status(now)?)).await?;
    let view = status_view(&viewer, &state.config, &state.rules(), &report, now);
    html(&state, "status.html", &view)
}

#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct AuditQuery {
    pub action: String,
}

#[derive(Debug, Serialize)]
pub struct AuditPageView {
    pub title: &'static str,
    pub viewer: Viewer,
    pub actions: Vec<Choice>,
    pub entries: Vec<AuditView>,
}

/// The actions the audit log records, for its filter.
const ACTIONS: &[&str] = &[
    "login",
    "login_failed",
    "logout",
    "approve",
    "dismiss",
    "update",
    "withdraw",
    "acknowledge",
    "account_added",
    "account_changed",
    "password_changed",
    "account_disabled",
    "account_enabled",
    "outbox_requeued",
    "file_pushed",
];

/// `/audit`, newest first: admins only.
pub async fn audit(
    State(state): State<Arc<WebState>>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Response, WebError> {
    if !viewer.admin {
        return Err(WebError::Forbidden);
    }
    let action = set(&query.action).filter(|a| ACTIONS.contains(&a.as_str()));
    let wanted = action.clone();
    let entries = state
        .db
        .with(move |store| Ok(store.audit_newest(wanted.as_deref(), AUDIT_MAX)?))
        .await?;
    let tz = &state.config.daemon.timezone;
    let view = AuditPageView {
        title: "Audit log",
        viewer,
        actions: choices(
            std::iter::once((String::new(), "every action".to_string()))
                .chain(ACTIONS.iter().map(|a| (a.to_string(), a.replace('_', " ")))),
            action.as_deref().unwrap_or(""),
        ),
        entries: entries.iter().map(|e| audit_view(e, tz)).collect(),
    };
    html(&state, "audit.html", &view)
}

// ------------------------------------------------------------ the rest

/// `/healthz`: the process answers. No session, no database.
pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn stylesheet() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            ),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Any other path: not found, once logged in (without a session, the login page).
pub async fn not_found(_viewer: Viewer) -> WebError {
    WebError::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span_words(Duration::from_secs(30)), "less than a minute");
        assert_eq!(span_words(Duration::from_secs(600)), "10 min");
        assert_eq!(span_words(Duration::from_secs(4800)), "1 h 20 min");
        assert_eq!(span_words(Duration::from_secs(7200)), "2 h");
        assert_eq!(
            span_words(Duration::from_secs(3 * 86400 + 4 * 3600 + 60)),
            "3 d 4 h"
        );
    }

    #[test]
    fn the_review_clock_counts_down_then_up() {
        let created = at("2026-12-01T10:00:00Z");
        let four_hours = Some(Duration::from_secs(4 * 3600));
        assert_eq!(
            review_clock(created, four_hours, at("2026-12-01T12:40:00Z")),
            Some(("due in 1 h 20 min".to_string(), false))
        );
        assert_eq!(
            review_clock(created, four_hours, at("2026-12-01T14:10:00Z")),
            Some(("overdue by 10 min".to_string(), true))
        );
        assert_eq!(
            review_clock(created, None, at("2026-12-01T14:10:00Z")),
            None
        );
    }

    #[test]
    fn every_template_renders_hostile_text_as_text() {
        let view = ErrorView {
            title: "Not found",
            message: "<script>alert(1)</script>".to_string(),
            viewer: None,
        };
        let html = Pages::get().render("error.html", &view).unwrap();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn history_dates_are_days_in_the_daemon_time_zone() {
        let tz = TimeZone::get("Europe/London").unwrap();
        let q = HistoryQuery {
            from: "2026-07-01".into(),
            to: "2026-07-01".into(),
            ..HistoryQuery::default()
        };
        let f = q.filter(&Viewer::unrestricted("a"), &tz).unwrap();
        assert_eq!(f.from, Some(at("2026-06-30T23:00:00Z")));
        assert_eq!(f.to, Some(at("2026-07-01T23:00:00Z")));
        let bad = HistoryQuery {
            from: "1 July".into(),
            ..HistoryQuery::default()
        };
        assert!(bad.filter(&Viewer::unrestricted("a"), &tz).is_err());
    }
}
