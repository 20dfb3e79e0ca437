//! The `decisions` table's queries and the one transaction a review decision is.
//!
//! A decision (SPEC §5.4) commits whole or not at all: its `decisions` row, its
//! audit row and, when it closes the alert, the alert's new status and stored
//! assessment and the outbox rows to `notify`. [`Store::decide`] runs the
//! caller's decision inside one `BEGIN IMMEDIATE` transaction, so two reviewers
//! deciding at once are serialised: the second reads the first's row.
//! No policy lives here (who may decide, how many approvals): that is `review`.

use super::{FileTx, Result, Store, StoreError, StoredAlert, from_ms, ms};
use crate::alerts::render::{Purpose, RenderedEmail};
use crate::alerts::{Alert, AlertStatus, Audience};
use crate::audit::{Action, Actor};
use crate::review::Edits;
use jiff::Timestamp;
use rusqlite::{Connection, TransactionBehavior, params};

/// One decision on an alert, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DecisionRow {
    /// `approve` or `dismiss`.
    pub kind: String,
    /// `web:NAME` or `unix:NAME`: who, from a credential.
    pub actor: String,
    /// The person's name as emails show it.
    pub display: String,
    /// The partner id they decided for, if any (an admin decides for none).
    pub partner: Option<String>,
    pub at: Timestamp,
    /// An approval's edits.
    pub edits: Option<Edits>,
    /// A dismissal's reason.
    pub reason: Option<String>,
}

/// What a decision adds: one `decisions` row.
#[derive(Debug, Clone)]
pub struct NewDecision<'a> {
    pub alert_id: &'a str,
    pub actor: &'a Actor,
    pub partner: Option<&'a str>,
    pub at: Timestamp,
    pub kind: Kind<'a>,
}

/// An approval with its edits, or a dismissal with its reason.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    Approve(&'a Edits),
    Dismiss(&'a str),
}

/// Every decision on `alert_id` (exact id), oldest first.
pub fn decisions_of(conn: &Connection, alert_id: &str) -> Result<Vec<DecisionRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, actor, display, partner, at, edits, reason FROM decisions
         WHERE alert_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([alert_id], |r| {
        Ok((
            DecisionRow {
                kind: r.get(0)?,
                actor: r.get(1)?,
                display: r.get(2)?,
                partner: r.get(3)?,
                at: from_ms(r.get(4)?),
                edits: None,
                reason: r.get(6)?,
            },
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    rows.map(|row| {
        let (mut row, edits) = row?;
        row.edits = edits
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("decision on alert {alert_id}: {e}")))?;
        Ok(row)
    })
    .collect()
}

impl Store {
    /// Every decision on an alert, oldest first (for `alerts show` and the
    /// console). Ids are case-insensitive on input.
    pub fn decisions_of(&self, alert_id: &str) -> Result<Vec<DecisionRow>> {
        decisions_of(&self.conn, &crate::review::normalise_id(alert_id))
    }

    /// Runs `decide` in one immediate transaction and commits what it wrote
    /// when it returns `Ok`; an `Err` rolls everything back.
    pub fn decide<T, E: From<StoreError>>(
        &mut self,
        decide: impl FnOnce(&DecisionTx<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let decision_tx = DecisionTx {
            file_tx: FileTx { tx },
        };
        let out = decide(&decision_tx)?;
        decision_tx.file_tx.commit()?;
        Ok(out)
    }
}

/// The write side of one decision (see [`Store::decide`]).
pub struct DecisionTx<'a> {
    file_tx: FileTx<'a>,
}

impl DecisionTx<'_> {
    fn conn(&self) -> &Connection {
        &self.file_tx.tx
    }

    /// The alert, as this transaction sees it (exact id).
    pub fn alert(&self, id: &str) -> Result<Option<StoredAlert>> {
        super::stored_alert(self.conn(), id)
    }

    pub fn decisions_of(&self, alert_id: &str) -> Result<Vec<DecisionRow>> {
        decisions_of(self.conn(), alert_id)
    }

    /// The Message-ID of the first email `partner_id` got in `thread`.
    pub fn first_in_thread(&self, thread: &str, partner_id: &str) -> Result<Option<String>> {
        self.file_tx.first_in_thread(thread, partner_id)
    }

    /// The acknowledgement signing key (SPEC §10) for the approved alert's links.
    pub fn ack_key(&self) -> Result<[u8; 32]> {
        self.file_tx.ack_key()
    }

    /// Adds the decision's row and its audit row (`approve` with the edits as
    /// detail, `dismiss` with the reason).
    pub fn record(&self, d: &NewDecision<'_>) -> Result<()> {
        let (kind, action, edits, reason, detail) = match d.kind {
            Kind::Approve(edits) => {
                let json = serde_json::to_value(edits)
                    .map_err(|e| StoreError::Corrupt(format!("edits: {e}")))?;
                (
                    "approve",
                    Action::Approve,
                    Some(json.to_string()),
                    None,
                    serde_json::json!({ "edits": json, "partner": d.partner }),
                )
            }
            Kind::Dismiss(reason) => (
                "dismiss",
                Action::Dismiss,
                None,
                Some(reason),
                serde_json::json!({ "reason": reason, "partner": d.partner }),
            ),
        };
        self.conn()
            .prepare_cached(
                "INSERT INTO decisions (alert_id, kind, actor, display, partner, at, edits, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                d.alert_id,
                kind,
                d.actor.id,
                d.actor.display,
                d.partner,
                ms(d.at),
                edits,
                reason
            ])?;
        super::audit::append(
            self.conn(),
            d.at,
            d.actor,
            action,
            Some(d.alert_id),
            &detail,
        )
    }

    /// Closes an alert awaiting review: its status, who decided, and for an
    /// approval the assessed alert (stored as its summary, its severity in the
    /// column) and the emails to `notify`. False (and nothing written) when the
    /// alert is not awaiting review.
    pub fn close(
        &self,
        id: &str,
        status: AlertStatus,
        by: &str,
        approved: Option<(&Alert, &[(String, RenderedEmail)])>,
        now: Timestamp,
    ) -> Result<bool> {
        let changed = match approved {
            Some((alert, _)) => {
                let summary = serde_json::to_string(alert)
                    .map_err(|e| StoreError::Corrupt(format!("alert {id}: {e}")))?;
                self.conn().execute(
                    "UPDATE alerts SET status = ?2, reviewed_by = ?3, reviewed_at = ?4, summary = ?5, severity = ?6
                     WHERE id = ?1 AND status = 'in_review'",
                    params![id, status.as_str(), by, ms(now), summary, alert.severity.as_str()],
                )?
            }
            None => self.conn().execute(
                "UPDATE alerts SET status = ?2, reviewed_by = ?3, reviewed_at = ?4
                 WHERE id = ?1 AND status = 'in_review'",
                params![id, status.as_str(), by, ms(now)],
            )?,
        };
        if changed == 0 {
            return Ok(false);
        }
        for (partner, email) in approved.map(|(_, emails)| emails).unwrap_or_default() {
            self.file_tx
                .enqueue(id, partner, Audience::Notify, Purpose::Alert, email, now)?;
        }
        Ok(true)
    }
}

/// The order of `alerts list` and the console's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueOrder {
    /// Oldest first: the draft waiting longest comes first.
    #[default]
    Age,
    /// Critical first, then warning, then info; oldest first within each.
    Severity,
}

impl Store {
    /// Alerts awaiting review in `order`, at most `limit`: the whole queue is
    /// ordered in SQL, so the oldest draft is never lost behind newer ones.
    pub fn review_queue(&self, order: QueueOrder, limit: usize) -> Result<Vec<super::AlertRow>> {
        let sql = match order {
            QueueOrder::Age => {
                "SELECT id, rule_id, COALESCE(district, ''), severity, status, created_at, event_count
                 FROM alerts INDEXED BY alerts_by_status WHERE status = 'in_review'
                 ORDER BY created_at, id LIMIT ?1"
            }
            QueueOrder::Severity => {
                "SELECT id, rule_id, COALESCE(district, ''), severity, status, created_at, event_count
                 FROM alerts INDEXED BY alerts_by_status WHERE status = 'in_review'
                 ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, created_at, id
                 LIMIT ?1"
            }
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(super::AlertRow {
                id: r.get(0)?,
                rule_id: r.get(1)?,
                district: r.get(2)?,
                severity: r.get(3)?,
                status: r.get(4)?,
                created_at: from_ms(r.get(5)?),
                event_count: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
