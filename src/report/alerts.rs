//! `earlywarn alerts`: the review queue listed, one alert shown, and the
//! verdicts of `approve` and `dismiss`.

use super::local;
use crate::display::escape_controls as esc;
use crate::store::{AlertRow, DeliveryRow, StoredAlert};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::io::{self, Write};

fn show(t: Timestamp, tz: &TimeZone) -> String {
    local(t, tz, "%Y-%m-%d %H:%M %Z")
}

/// `alerts list` as text; `all` says whether `rows` are every alert or only
/// those awaiting review, for the line that says there are none.
pub fn write_list(
    out: &mut impl Write,
    rows: &[AlertRow],
    all: bool,
    tz: &TimeZone,
) -> io::Result<()> {
    if rows.is_empty() {
        let none = if all {
            "no alerts yet"
        } else {
            "no alerts awaiting review"
        };
        return writeln!(out, "{none}");
    }
    for a in rows {
        writeln!(
            out,
            "{}  {}  {:<8} {:<32} {:<12} {} record(s)  {}",
            esc(&a.id),
            show(a.created_at, tz),
            esc(&a.severity),
            esc(&a.rule_id),
            esc(&a.district),
            a.event_count,
            esc(&a.status.replace('_', " "))
        )?;
    }
    Ok(())
}

/// `alerts show ID`: the alert, its records and where its emails went.
pub fn write_alert(
    out: &mut impl Write,
    stored: &StoredAlert,
    deliveries: &[DeliveryRow],
    tz: &TimeZone,
) -> io::Result<()> {
    let a = &stored.alert;
    writeln!(out, "Alert     {}", esc(&a.id))?;
    writeln!(out, "Rule      {}", esc(&a.rule_id))?;
    writeln!(out, "Severity  {}", a.severity)?;
    writeln!(
        out,
        "District  {}",
        esc(a.district.as_deref().unwrap_or("several"))
    )?;
    writeln!(out, "Raised    {}", show(a.created_at, tz))?;
    writeln!(
        out,
        "Status    {}",
        stored.status.as_str().replace('_', " ")
    )?;
    if let (Some(by), Some(at)) = (&stored.reviewed_by, stored.reviewed_at) {
        // `unix:ACCOUNT` is the account that ran the command (from its uid);
        // a display name given with --by stands in front of it.
        writeln!(out, "Decided   by {} at {}", esc(by), show(at, tz))?;
    }
    writeln!(out, "Records   {}", a.event_count)?;
    for (i, e) in a.events.iter().enumerate() {
        let fields: Vec<String> = e
            .fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{}={}", esc(k), esc(&v.to_string())))
            .collect();
        writeln!(
            out,
            "  {}. {} {}",
            i + 1,
            show(e.time, tz),
            fields.join("  ")
        )?;
    }
    writeln!(out, "Emails")?;
    for d in deliveries {
        writeln!(
            out,
            "  {:<20} {:<6} {:<7} attempts={} {}",
            esc(&d.partner_id),
            d.audience,
            d.status,
            d.attempts,
            esc(d.last_error.as_deref().unwrap_or_default())
        )?;
    }
    Ok(())
}

/// What `alerts approve` says: who approved it and who it is queued for.
pub fn approved(id: &str, by: &str, partners: &[String]) -> String {
    format!(
        "approved {} by {}: queued for {}",
        esc(id),
        esc(by),
        if partners.is_empty() {
            "nobody (no notify partner covers it)".to_string()
        } else {
            partners.join(", ")
        }
    )
}

/// What `alerts dismiss` says.
pub fn dismissed(id: &str, by: &str) -> String {
    format!("dismissed {} by {}", esc(id), esc(by))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rows: &[AlertRow], all: bool) -> String {
        let mut out = Vec::new();
        write_list(&mut out, rows, all, &TimeZone::UTC).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_queue_lists_one_line_per_alert_escaped() {
        assert_eq!(list(&[], false), "no alerts awaiting review\n");
        assert_eq!(list(&[], true), "no alerts yet\n");
        let row = AlertRow {
            id: "a1".into(),
            rule_id: "nitazene".into(),
            district: "Bol\u{1b}ton".into(),
            severity: "critical".into(),
            status: "in_review".into(),
            created_at: "2026-03-01T10:00:00Z".parse().unwrap(),
            event_count: 2,
        };
        assert_eq!(
            list(&[row], false),
            "a1  2026-03-01 10:00 UTC  critical nitazene                         Bol\\x1bton   2 record(s)  in review\n"
        );
    }

    #[test]
    fn verdicts_say_who_and_to_whom() {
        assert_eq!(
            approved("a1", "unix:ana", &["panel".into(), "bolton".into()]),
            "approved a1 by unix:ana: queued for panel, bolton"
        );
        assert_eq!(
            approved("a1", "unix:ana", &[]),
            "approved a1 by unix:ana: queued for nobody (no notify partner covers it)"
        );
        assert_eq!(dismissed("a\n1", "unix:ana"), "dismissed a\\n1 by unix:ana");
    }
}
