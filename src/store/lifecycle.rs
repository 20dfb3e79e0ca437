//! The queries of an alert's life after it was raised (SPEC §10): the emails
//! each partner got, updates and withdrawals, acknowledgements and reminders.
//!
//! [`Store::lifecycle`] runs the caller's change inside one `BEGIN IMMEDIATE`
//! transaction, so an update, its audit row and its outbox rows commit
//! together, and two people withdrawing at once are serialised (the second
//! sees the first's status). No policy lives here (who gets what, when a
//! reminder is due): that is `lifecycle`.

use super::{FileTx, Result, Store, StoredAlert, from_ms, ms};
use crate::alerts::render::{Purpose, RenderedEmail};
use crate::alerts::{AlertStatus, Audience};
use crate::audit::{Action, Actor};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// The `meta` key of the acknowledgement signing key (hex, 32 bytes).
const ACK_KEY: &str = "ack_key";

/// A partner's first email of an alert with the given purpose, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEmail {
    pub partner_id: String,
    pub message_id: String,
    /// The subject as this partner got it (already redacted for it).
    pub subject: String,
    /// The addresses it went to.
    pub recipients: Vec<String>,
    pub thread: String,
    pub status: String,
    pub created_at: Timestamp,
}

/// One acknowledgement, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AckRow {
    pub alert_id: String,
    pub partner_id: String,
    /// The name the person typed, if any.
    pub name: Option<String>,
    pub at: Timestamp,
    pub ip: String,
}

/// What [`LifecycleTx::record_ack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    Recorded,
    /// Confirmed before: nothing changed.
    AlreadyConfirmed(AckRow),
}

/// A draft still in review, for the `review_within` clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDraft {
    pub alert_id: String,
    pub rule_id: String,
    pub created_at: Timestamp,
}

/// An alert that went to partners and may still await acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingAcks {
    pub alert_id: String,
    pub rule_id: String,
    /// When it went to its partners: raised, or approved.
    pub sent_at: Timestamp,
}

/// What kind of reminder (`reminders.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReminderKind {
    /// `review_within`: a draft undecided.
    Review,
    /// `ack_within`: partners silent.
    Ack,
}

impl ReminderKind {
    fn as_str(self) -> &'static str {
        match self {
            ReminderKind::Review => "review",
            ReminderKind::Ack => "ack",
        }
    }
}

fn emails_with_purpose(conn: &Connection, alert_id: &str, purpose: &str) -> Result<Vec<SentEmail>> {
    let mut stmt = conn.prepare_cached(
        "SELECT partner_id, message_id, subject, recipients, COALESCE(thread, ''), status, created_at
         FROM outbox WHERE alert_id = ?1 AND purpose = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![alert_id, purpose], |r| {
        let recipients: String = r.get(3)?;
        Ok(SentEmail {
            partner_id: r.get(0)?,
            message_id: r.get(1)?,
            subject: r.get(2)?,
            recipients: serde_json::from_str(&recipients).unwrap_or_default(),
            thread: r.get(4)?,
            status: r.get(5)?,
            created_at: from_ms(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn ack_of(conn: &Connection, alert_id: &str, partner_id: &str) -> Result<Option<AckRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT alert_id, partner_id, name, at, ip FROM acks WHERE alert_id = ?1 AND partner_id = ?2",
        )?
        .query_row(params![alert_id, partner_id], ack_row)
        .optional()?)
}

fn ack_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AckRow> {
    Ok(AckRow {
        alert_id: r.get(0)?,
        partner_id: r.get(1)?,
        name: r.get(2)?,
        at: from_ms(r.get(3)?),
        ip: r.get(4)?,
    })
}

/// The acknowledgement key, made at random the first time it is asked for.
pub(crate) fn ack_key(conn: &Connection) -> Result<[u8; 32]> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [ACK_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(key) = stored.as_deref().and_then(parse_key) {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| super::StoreError::Corrupt(format!("no randomness for the ack key: {e}")))?;
    // A key another process stored first wins: links it signed stay valid.
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        params![ACK_KEY, hex::encode(key)],
    )?;
    let stored: String =
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [ACK_KEY], |r| {
            r.get(0)
        })?;
    parse_key(&stored)
        .ok_or_else(|| super::StoreError::Corrupt("meta ack_key is not 32 bytes of hex".into()))
}

fn parse_key(hex_key: &str) -> Option<[u8; 32]> {
    hex::decode(hex_key).ok()?.try_into().ok()
}

impl Store {
    /// Runs `change` in one immediate transaction and commits what it wrote
    /// when it returns `Ok`; an `Err` rolls everything back.
    pub fn lifecycle<T, E: From<super::StoreError>>(
        &mut self,
        change: impl FnOnce(&LifecycleTx<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(super::StoreError::from)?;
        let ltx = LifecycleTx {
            file_tx: FileTx { tx },
        };
        let out = change(&ltx)?;
        ltx.file_tx.commit()?;
        Ok(out)
    }

    /// The acknowledgement signing key (made once, kept in `meta`).
    pub fn ack_key(&self) -> Result<[u8; 32]> {
        ack_key(&self.conn)
    }

    /// The partner's acknowledgement of an alert, if it gave one.
    pub fn ack_of(&self, alert_id: &str, partner_id: &str) -> Result<Option<AckRow>> {
        ack_of(&self.conn, alert_id, partner_id)
    }

    /// Every acknowledgement of an alert, oldest first.
    pub fn acks_of(&self, alert_id: &str) -> Result<Vec<AckRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT alert_id, partner_id, name, at, ip FROM acks WHERE alert_id = ?1 ORDER BY at, partner_id",
        )?;
        let rows = stmt.query_map([alert_id], ack_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The partners' emails of an alert with `purpose` (`alert`: the alert itself).
    pub fn emails_of(&self, alert_id: &str, purpose: Purpose) -> Result<Vec<SentEmail>> {
        emails_with_purpose(&self.conn, alert_id, &purpose.key())
    }

    /// Drafts in review, oldest first, without a review reminder yet.
    pub fn drafts_not_reminded(&self) -> Result<Vec<OpenDraft>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, rule_id, created_at FROM alerts INDEXED BY alerts_by_status
             WHERE status = 'in_review'
               AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.alert_id = alerts.id AND r.kind = 'review')
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(OpenDraft {
                alert_id: r.get(0)?,
                rule_id: r.get(1)?,
                created_at: from_ms(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Alerts of `rule_ids` raised no earlier than `since`, sent or
    /// approved, without an ack reminder yet, oldest first. `since` bounds
    /// the scan, so old history is not read on every tick.
    pub fn alerts_awaiting_acks(
        &self,
        since: Timestamp,
        rule_ids: &[&str],
    ) -> Result<Vec<AwaitingAcks>> {
        let rule_ids = serde_json::to_string(rule_ids)
            .map_err(|e| super::StoreError::Corrupt(e.to_string()))?;
        // Alerts of other rules are never reminded: leaving them out here
        // keeps them from being read on every tick.
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, rule_id, COALESCE(reviewed_at, created_at) FROM alerts
             WHERE status IN ('sent', 'approved') AND created_at >= ?1
               AND rule_id IN (SELECT value FROM json_each(?2))
               AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.alert_id = alerts.id AND r.kind = 'ack')
             ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map(params![ms(since), rule_ids], |r| {
            Ok(AwaitingAcks {
                alert_id: r.get(0)?,
                rule_id: r.get(1)?,
                sent_at: from_ms(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl FileTx<'_> {
    /// The acknowledgement signing key, inside this transaction.
    pub fn ack_key(&self) -> Result<[u8; 32]> {
        ack_key(&self.tx)
    }
}

/// The write side of one lifecycle change (see [`Store::lifecycle`]).
pub struct LifecycleTx<'a> {
    file_tx: FileTx<'a>,
}

impl LifecycleTx<'_> {
    fn conn(&self) -> &Connection {
        &self.file_tx.tx
    }

    /// The alert, as this transaction sees it (exact id).
    pub fn alert(&self, id: &str) -> Result<Option<StoredAlert>> {
        super::stored_alert(self.conn(), id)
    }

    /// The partners' emails of the alert with `purpose`, first first.
    pub fn emails_of(&self, alert_id: &str, purpose: Purpose) -> Result<Vec<SentEmail>> {
        emails_with_purpose(self.conn(), alert_id, &purpose.key())
    }

    /// The Message-ID of the first email `partner_id` got in `thread`.
    pub fn first_in_thread(&self, thread: &str, partner_id: &str) -> Result<Option<String>> {
        self.file_tx.first_in_thread(thread, partner_id)
    }

    /// How many updates the alert has had.
    pub fn updates_so_far(&self, alert_id: &str) -> Result<u32> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM audit WHERE alert_id = ?1 AND action = 'update'",
            [alert_id],
            |r| r.get(0),
        )?;
        Ok(n as u32)
    }

    /// Puts one notice in the outbox (its purpose is unique per alert and partner).
    pub fn enqueue(
        &self,
        alert_id: &str,
        partner_id: &str,
        purpose: Purpose,
        email: &RenderedEmail,
        now: Timestamp,
    ) -> Result<()> {
        self.file_tx
            .enqueue(alert_id, partner_id, Audience::Notify, purpose, email, now)
    }

    /// Sets the alert's status.
    pub fn set_status(&self, alert_id: &str, status: AlertStatus) -> Result<()> {
        self.conn().execute(
            "UPDATE alerts SET status = ?2 WHERE id = ?1",
            params![alert_id, status.as_str()],
        )?;
        Ok(())
    }

    pub fn audit(
        &self,
        at: Timestamp,
        actor: &Actor,
        action: Action,
        alert_id: &str,
        detail: &serde_json::Value,
    ) -> Result<()> {
        super::audit::append(self.conn(), at, actor, action, Some(alert_id), detail)
    }

    /// The acknowledgement signing key (made once, kept in `meta`).
    pub fn ack_key(&self) -> Result<[u8; 32]> {
        ack_key(self.conn())
    }

    pub fn ack_of(&self, alert_id: &str, partner_id: &str) -> Result<Option<AckRow>> {
        ack_of(self.conn(), alert_id, partner_id)
    }

    /// Records that `partner_id` confirmed receipt of `alert_id`, with its
    /// audit row, once: a second press changes nothing.
    pub fn record_ack(
        &self,
        alert_id: &str,
        partner_id: &str,
        name: Option<&str>,
        actor: &Actor,
        at: Timestamp,
    ) -> Result<AckOutcome> {
        if let Some(earlier) = ack_of(self.conn(), alert_id, partner_id)? {
            return Ok(AckOutcome::AlreadyConfirmed(earlier));
        }
        self.conn().execute(
            "INSERT INTO acks (alert_id, partner_id, name, at, ip) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![alert_id, partner_id, name, ms(at), actor.source],
        )?;
        self.audit(
            at,
            actor,
            Action::Acknowledge,
            alert_id,
            &serde_json::json!({ "partner": partner_id, "name": name }),
        )?;
        Ok(AckOutcome::Recorded)
    }

    /// Notes that the alert's reminder of `kind` went; false when it had already.
    pub fn note_reminder(&self, alert_id: &str, kind: ReminderKind, at: Timestamp) -> Result<bool> {
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO reminders (alert_id, kind, at) VALUES (?1, ?2, ?3)",
            params![alert_id, kind.as_str(), ms(at)],
        )? == 1)
    }
}
