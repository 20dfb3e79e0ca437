//! `earlywarn audit`: the audit log, oldest first.

use super::local;
use crate::audit::AuditEntry;
use crate::display::escape_controls as esc;
use jiff::tz::TimeZone;
use std::io::{self, Write};

/// One line per entry: time, actor, where from, action, alert, details.
pub fn write_list(out: &mut impl Write, entries: &[AuditEntry], tz: &TimeZone) -> io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "nothing in the audit log for that time");
    }
    for e in entries {
        let alert = e.alert_id.as_deref().map(esc).unwrap_or("-".into());
        let detail = match &e.detail {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            other => format!("  {}", esc(&other.to_string())),
        };
        writeln!(
            out,
            "{}  {:<24} {:<18} {:<17} {alert}{detail}",
            local(e.at, tz, "%Y-%m-%d %H:%M:%S %Z"),
            esc(&e.actor),
            esc(&e.source),
            esc(&e.action),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_one_line_each_and_escaped() {
        let entry = AuditEntry {
            id: 1,
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
            actor: "anonymous".into(),
            source: "192.0.2.7".into(),
            action: "login_failed".into(),
            alert_id: None,
            detail: serde_json::json!({"name": "x\u{1b}[2J\ny", "reason": "unknown_name"}),
        };
        let mut out = Vec::new();
        write_list(&mut out, &[entry], &TimeZone::UTC).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.starts_with("2026-12-01 10:00:00 UTC  anonymous"),
            "{text}"
        );
        assert!(
            text.contains("login_failed") && text.contains("unknown_name"),
            "{text}"
        );
    }
}
