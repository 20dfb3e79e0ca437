//! `earlywarn outbox list`: deliveries, newest first, with what went wrong.

use super::local;
use crate::display::escape_controls as esc;
use crate::store::OutboxRow;
use jiff::tz::TimeZone;
use std::io::{self, Write};

/// The rows as text: one line per delivery, then its last error and each
/// address that refused it, indented. `failed` says which list this is when
/// there is nothing to show.
pub fn write_list(
    out: &mut impl Write,
    rows: &[OutboxRow],
    failed: bool,
    tz: &TimeZone,
) -> io::Result<()> {
    if rows.is_empty() {
        let none = if failed {
            "no failed deliveries"
        } else {
            "no deliveries yet"
        };
        writeln!(out, "{none}")?;
    }
    for r in rows {
        let next = match r.next_attempt_at {
            Some(t) => format!("  next {}", local(t, tz, "%Y-%m-%d %H:%M:%S %Z")),
            None => String::new(),
        };
        writeln!(
            out,
            "{:>6}  {}  {:<20} {:<6} {:<7} attempts={}{next}",
            r.id,
            esc(&r.alert_id),
            esc(&r.partner_id),
            esc(&r.audience),
            esc(&r.status),
            r.attempts
        )?;
        if let Some(e) = r.last_error.as_deref().filter(|e| !e.is_empty()) {
            writeln!(out, "        last error: {}", esc(e))?;
        }
        for f in &r.failed_addresses {
            writeln!(
                out,
                "        failed address {}: {}",
                esc(&f.address),
                esc(&f.error)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FailedAddress;
    use jiff::Timestamp;

    #[test]
    fn a_row_shows_its_errors_and_refused_addresses_escaped() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let row = OutboxRow {
            id: 7,
            alert_id: "EW-A".into(),
            partner_id: "panel\u{1b}[2J".into(),
            audience: "notify".into(),
            status: "failed".into(),
            attempts: 2,
            next_attempt_at: Some(at("2026-03-01T12:00:00Z")),
            last_error: Some("550 no\nsuch user".into()),
            recipients: vec!["a@x".into(), "b@x".into()],
            owed: vec![],
            failed_addresses: vec![FailedAddress {
                address: "b@x".into(),
                error: "550 5.1.1 unknown".into(),
            }],
            created_at: at("2026-03-01T11:00:00Z"),
            sent_at: None,
        };
        let mut out = Vec::new();
        write_list(&mut out, &[row], true, &TimeZone::UTC).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "     7  EW-A  panel\\x1b[2J         notify failed  attempts=2  next 2026-03-01 12:00:00 UTC\n        last error: 550 no\\nsuch user\n        failed address b@x: 550 5.1.1 unknown\n"
        );
        let mut out = Vec::new();
        write_list(&mut out, &[], true, &TimeZone::UTC).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no failed deliveries\n");
    }
}
