//! The audit table's queries: append, and read back by time.
//!
//! `append` takes a plain connection so that a decision and its audit row
//! commit in one transaction (`rusqlite::Transaction` derefs to it).

use super::{Result, Store, from_ms, ms};
use crate::audit::{Action, Actor, AuditEntry};
use jiff::Timestamp;
use rusqlite::{Connection, params};

/// Appends one row. Inside the caller's transaction when given one.
pub fn append(
    conn: &Connection,
    at: Timestamp,
    actor: &Actor,
    action: Action,
    alert_id: Option<&str>,
    detail: &serde_json::Value,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, source, action, alert_id, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        ms(at),
        actor.id,
        actor.source,
        action.as_str(),
        alert_id,
        detail.to_string()
    ])?;
    Ok(())
}

impl Store {
    /// Appends one audit row in its own transaction.
    pub fn append_audit(
        &self,
        at: Timestamp,
        actor: &Actor,
        action: Action,
        alert_id: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        append(&self.conn, at, actor, action, alert_id, detail)
    }

    /// Audit rows at or after `since` (all when `None`), oldest first, at most
    /// `limit` of the newest.
    pub fn audit_since(&self, since: Option<Timestamp>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at, actor, source, action, alert_id, detail FROM (
                 SELECT * FROM audit WHERE at >= ?1 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id",
        )?;
        let rows = stmt.query_map(
            params![since.map(ms).unwrap_or(i64::MIN), limit as i64],
            entry,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Audit rows about one alert, oldest first.
    pub fn audit_of_alert(&self, alert_id: &str) -> Result<Vec<AuditEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at, actor, source, action, alert_id, detail FROM audit WHERE alert_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([alert_id], entry)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let actor = Actor::web("jsmith", "J Smith", "192.0.2.7".parse().unwrap());
        store
            .append_audit(at, &actor, Action::Login, None, &serde_json::json!({}))
            .unwrap();
        store
            .append_audit(
                at,
                &actor,
                Action::Dismiss,
                Some("EW-1"),
                &serde_json::json!({"reason": "duplicate"}),
            )
            .unwrap();
        let rows = store.audit_since(None, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].action, "dismiss");
        assert_eq!(rows[1].source, "192.0.2.7");
        assert_eq!(rows[1].detail["reason"], "duplicate");
        assert_eq!(store.audit_of_alert("EW-1").unwrap().len(), 1);
        for sql in ["UPDATE audit SET actor = 'web:other'", "DELETE FROM audit"] {
            let err = store.conn.execute(sql, []).unwrap_err().to_string();
            assert!(err.contains("append-only"), "{sql}: {err}");
        }
        assert_eq!(store.audit_since(None, 10).unwrap(), rows);
        let later = at + jiff::SignedDuration::from_secs(1);
        assert!(store.audit_since(Some(later), 10).unwrap().is_empty());
    }
}
