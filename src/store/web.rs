//! The console's queries (SPEC §9): the review queue, the history with its
//! filters, one alert's deliveries, the audit log by action.
//!
//! Every query is bounded (`LIMIT`) and walks an index, so a page costs the
//! same with 100,000 alerts on record as with ten: the history pages by
//! keyset (`created_at`, `id`), never by `OFFSET`, and counts nothing.
//! A query for a partner's account (`partner`) only ever sees alerts that
//! partner has an outbox row for, and searches only what it received (the
//! subjects of its emails, in `alert_text` under its id), never the stored alert.

use super::{Result, Store, from_ms, ms};
use crate::alerts::Alert;
use crate::audit::AuditEntry;
use jiff::Timestamp;
use rusqlite::types::Value as SqlValue;

/// The history's filters, as the `/alerts` form gives them (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    pub rule: Option<String>,
    pub district: Option<String>,
    pub severity: Option<String>,
    pub status: Option<String>,
    /// Raised at or after this time.
    pub from: Option<Timestamp>,
    /// Raised before this time.
    pub to: Option<Timestamp>,
    /// Words to search for (see [`text_query`]): in the alert as stored and
    /// its emails' subjects, or for a partner's account only in the subjects
    /// of the emails that partner got.
    pub text: Option<String>,
    /// Only alerts this partner has an outbox row for.
    pub partner: Option<String>,
}

/// A place in the history: the newest-first order is (`created_at`, `id`) descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor<'a> {
    pub created_at: Timestamp,
    pub id: &'a str,
}

/// Which page of the history, relative to a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page<'a> {
    /// The newest alerts.
    First,
    /// The alerts just older than this one.
    Before(Cursor<'a>),
    /// The alerts just newer than this one (a "previous" link).
    After(Cursor<'a>),
}

/// One alert as the console lists it, with the stored alert for the page to
/// redact (a partner's account sees only its routed view of it).
#[derive(Debug, Clone)]
pub struct ListedAlert {
    pub id: String,
    pub rule_id: String,
    pub district: Option<String>,
    pub severity: String,
    pub status: String,
    pub created_at: Timestamp,
    pub event_count: i64,
    /// The stored alert as JSON: read ([`ListedAlert::alert`]) only where a
    /// page needs more than the columns (a partner's redacted view).
    pub summary: String,
}

impl ListedAlert {
    /// The stored alert, when the current code can read it.
    pub fn alert(&self) -> Option<Alert> {
        serde_json::from_str(&self.summary).ok()
    }
}

/// One outbox row of an alert as its page shows it: who received what, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub partner_id: String,
    pub audience: String,
    /// `alert`, `draft`, `update-N`, `reminder-N` or `withdrawn`.
    pub purpose: String,
    pub status: String,
    pub subject: String,
    pub created_at: Timestamp,
    pub sent_at: Option<Timestamp>,
}

const LISTED_COLUMNS: &str =
    "id, rule_id, district, severity, status, created_at, event_count, summary";

fn listed(r: &rusqlite::Row<'_>) -> rusqlite::Result<ListedAlert> {
    Ok(ListedAlert {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        district: r.get(2)?,
        severity: r.get(3)?,
        status: r.get(4)?,
        created_at: from_ms(r.get(5)?),
        event_count: r.get(6)?,
        summary: r.get(7)?,
    })
}

/// Typed text as a full-text query: each word must appear (as a word or the
/// start of one), whatever its case and accents. Every word is quoted, so
/// nothing typed is read as query syntax; `None` when no word is left.
pub fn text_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

impl Store {
    /// The alerts awaiting review, oldest first, at most `limit`
    /// (`alerts_by_status`); for a partner's account only those it got.
    pub fn console_queue(&self, partner: Option<&str>, limit: usize) -> Result<Vec<ListedAlert>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {LISTED_COLUMNS} FROM alerts INDEXED BY alerts_by_status
             WHERE status = 'in_review'
               AND (?1 IS NULL OR EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = alerts.id AND o.partner_id = ?1))
             ORDER BY created_at, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(rusqlite::params![partner, limit as i64], listed)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many alerts await review (`alerts_by_status`), for a partner's
    /// account only those it got.
    pub fn console_queue_len(&self, partner: Option<&str>) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM alerts INDEXED BY alerts_by_status
             WHERE status = 'in_review'
               AND (?1 IS NULL OR EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = alerts.id AND o.partner_id = ?1))",
            [partner],
            |r| r.get(0),
        )?)
    }

    /// One page of the history, newest first, at most `limit` alerts.
    pub fn alert_history(
        &self,
        filter: &AlertFilter,
        page: Page<'_>,
        limit: usize,
    ) -> Result<Vec<ListedAlert>> {
        // Each clause is whole; `params` follow the `?`s in the order they are written.
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<SqlValue> = Vec::new();
        let text = |s: &str| SqlValue::Text(s.to_string());
        if let Some(rule) = &filter.rule {
            clauses.push("rule_id = ?".into());
            params.push(text(rule));
        }
        if let Some(district) = &filter.district {
            clauses.push("district = ? COLLATE NOCASE".into());
            params.push(text(district));
        }
        if let Some(severity) = &filter.severity {
            clauses.push("severity = ?".into());
            params.push(text(severity));
        }
        if let Some(status) = &filter.status {
            clauses.push("status = ?".into());
            params.push(text(status));
        }
        if let Some(from) = filter.from {
            clauses.push("created_at >= ?".into());
            params.push(SqlValue::Integer(ms(from)));
        }
        if let Some(to) = filter.to {
            clauses.push("created_at < ?".into());
            params.push(SqlValue::Integer(ms(to)));
        }
        let search = filter.text.as_deref().and_then(text_query);
        match (&filter.partner, search) {
            (Some(partner), search) => {
                clauses.push(
                    "EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = alerts.id AND o.partner_id = ?)"
                        .into(),
                );
                params.push(text(partner));
                if let Some(search) = search {
                    // Only what this partner was sent: the subjects of its emails.
                    clauses.push(
                        "id IN (SELECT alert_id FROM alert_text WHERE alert_text MATCH ? AND partner = ?)"
                            .into(),
                    );
                    params.push(SqlValue::Text(search));
                    params.push(text(partner));
                }
            }
            (None, Some(search)) => {
                clauses.push(
                    "id IN (SELECT alert_id FROM alert_text WHERE alert_text MATCH ?)".into(),
                );
                params.push(SqlValue::Text(search));
            }
            (None, None) => {}
        }
        // Words that are all punctuation search for nothing: no alert has them.
        if filter.text.is_some() && filter.text.as_deref().and_then(text_query).is_none() {
            clauses.push("0".into());
        }
        let order = match page {
            Page::First => "created_at DESC, id DESC",
            Page::Before(c) => {
                clauses.push("(created_at, id) < (?, ?)".into());
                params.push(SqlValue::Integer(ms(c.created_at)));
                params.push(text(c.id));
                "created_at DESC, id DESC"
            }
            Page::After(c) => {
                clauses.push("(created_at, id) > (?, ?)".into());
                params.push(SqlValue::Integer(ms(c.created_at)));
                params.push(text(c.id));
                "created_at ASC, id ASC"
            }
        };
        let mut sql = format!("SELECT {LISTED_COLUMNS} FROM alerts");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY {order} LIMIT ?"));
        params.push(SqlValue::Integer(limit as i64));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), listed)?;
        let mut out: Vec<ListedAlert> = rows.collect::<rusqlite::Result<_>>()?;
        if matches!(page, Page::After(_)) {
            out.reverse();
        }
        Ok(out)
    }

    /// One alert by its id (any case), as listed.
    pub fn listed_alert(&self, id: &str) -> Result<Option<ListedAlert>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {LISTED_COLUMNS} FROM alerts WHERE id = ?1"
            ))?
            .query_row([crate::review::normalise_id(id)], listed)
            .optional()?)
    }

    /// Every outbox row of an alert (partner, audience, status, subject, times),
    /// oldest first, through the outbox's `(alert_id, partner_id, audience)` key.
    pub fn receipts_of(&self, alert_id: &str) -> Result<Vec<Receipt>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partner_id, audience, status, subject, created_at, sent_at, purpose FROM outbox
             WHERE alert_id = ?1 ORDER BY id LIMIT 1000",
        )?;
        let rows = stmt.query_map([alert_id], |r| {
            Ok(Receipt {
                partner_id: r.get(0)?,
                audience: r.get(1)?,
                status: r.get(2)?,
                subject: r.get(3)?,
                created_at: from_ms(r.get(4)?),
                sent_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
                purpose: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Audit rows newest first, at most `limit`, only of `action` when given.
    pub fn audit_newest(&self, action: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at, actor, source, action, alert_id, detail FROM audit
             WHERE ?1 IS NULL OR action = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(rusqlite::params![action, limit as i64], |r| {
            let detail: String = r.get(6)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                at: from_ms(r.get(1)?),
                actor: r.get(2)?,
                source: r.get(3)?,
                action: r.get(4)?,
                alert_id: r.get(5)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_text_is_quoted_word_by_word() {
        assert_eq!(text_query("  "), None);
        assert_eq!(text_query("!!! --"), None);
        assert_eq!(
            text_query("ew-abc \"Bolton\" OR"),
            Some(r#""ew-abc"* """Bolton"""* "OR"*"#.to_string())
        );
    }

    #[test]
    fn searches_find_words_of_the_alert_or_of_a_partners_subjects_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .conn
            .execute_batch(
                r#"INSERT INTO alerts (id, rule_id, district, severity, status, created_at, event_count, summary)
                   VALUES ('EW-1', 'r', 'Bolton', 'critical', 'sent', 1, 1, '{"events":[{"notes":"Secret Ünïcode"}]}'),
                          ('EW-2', 'r', 'Bury', 'critical', 'sent', 2, 1, 'not json');
                   INSERT INTO outbox (alert_id, partner_id, audience, purpose, message_id, mail_from, recipients,
                                       subject, message, status, next_attempt_at, created_at)
                   VALUES ('EW-1', 'police', 'notify', 'alert', 'm1', 'f', '[]', 'Nitazene in Bolton', x'00', 'sent', 1, 1),
                          ('EW-2', 'police', 'notify', 'alert', 'm2', 'f', '[]', 'Nitazene in Bury', x'00', 'sent', 2, 2);"#,
            )
            .unwrap();
        let ids = |text: &str, partner: Option<&str>| -> Vec<String> {
            let filter = AlertFilter {
                text: Some(text.to_string()),
                partner: partner.map(str::to_string),
                ..AlertFilter::default()
            };
            store
                .alert_history(&filter, Page::First, 10)
                .unwrap()
                .into_iter()
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(
            ids("secret unicode", None),
            ["EW-1"],
            "values, any case and accent"
        );
        assert_eq!(
            ids("ew-2", None),
            ["EW-2"],
            "an unreadable summary is still found by id"
        );
        assert_eq!(
            ids("nitaz", None),
            ["EW-2", "EW-1"],
            "subjects too, newest first"
        );
        assert!(
            ids("secret", Some("police")).is_empty(),
            "a partner searches its subjects only"
        );
        assert_eq!(ids("bury nitazene", Some("police")), ["EW-2"]);
        assert!(
            ids("bolton", Some("health")).is_empty(),
            "nor another partner's"
        );
        assert!(ids("%%", None).is_empty());
    }
}
