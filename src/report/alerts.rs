//! `earlywarn alerts`: the review queue listed, one alert shown with its
//! decisions and history, and the verdicts of `approve` and `dismiss`.

use super::{OutputFormat, local};
use crate::audit::{Actor, AuditEntry};
use crate::display::escape_controls as esc;
use crate::review::Decided;
use crate::store::decisions::{DecisionRow, QueueOrder};
use crate::store::lifecycle::AckRow;
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

/// `rows` in `order` (`alerts list --all`): oldest first, or by severity.
pub fn sort_rows(rows: &mut [AlertRow], order: QueueOrder) {
    let rank = |s: &str| match s {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    };
    match order {
        QueueOrder::Age => rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id))),
        QueueOrder::Severity => rows.sort_by(|a, b| {
            (rank(&a.severity), a.created_at, &a.id).cmp(&(rank(&b.severity), b.created_at, &b.id))
        }),
    }
}

/// What happened to an alert after it was raised, for `alerts show`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct History {
    pub deliveries: Vec<DeliveryRow>,
    pub decisions: Vec<DecisionRow>,
    pub audit: Vec<AuditEntry>,
    /// Who confirmed receipt, for which partner.
    pub acks: Vec<AckRow>,
}

/// `alerts show ID --format json`.
pub fn shown_json(stored: &StoredAlert, history: &History) -> serde_json::Value {
    serde_json::json!({
        "alert": stored.alert,
        "status": stored.status.as_str(),
        "reviewed_by": stored.reviewed_by,
        "reviewed_at": stored.reviewed_at,
        "decisions": history.decisions,
        "audit": history.audit,
        "deliveries": history.deliveries,
        "acknowledgements": history.acks,
    })
}

/// `alerts show ID`: the alert, its records, its decisions and history, and
/// where its emails went.
pub fn write_alert(
    out: &mut impl Write,
    stored: &StoredAlert,
    history: &History,
    tz: &TimeZone,
) -> io::Result<()> {
    let a = &stored.alert;
    writeln!(out, "Alert     {}", esc(&a.id))?;
    writeln!(out, "Rule      {}", esc(&a.rule_id))?;
    if !a.reasons.is_empty() {
        // A merged alert: the other rules that found the same records.
        let also: Vec<String> = a
            .reasons
            .iter()
            .map(|r| format!("{} ({})", esc(&r.rule_id), r.severity))
            .collect();
        writeln!(out, "Also      {}", also.join(", "))?;
    }
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
    if let Some(assessment) = &a.assessment {
        if let Some(h) = &assessment.headline {
            writeln!(out, "Headline  {}", esc(h))?;
        }
        if let Some(advice) = &assessment.advice {
            writeln!(out, "Advice    {}", esc(advice))?;
        }
        if !assessment.left_out.is_empty() {
            let left: Vec<String> = assessment
                .left_out
                .iter()
                .map(|p| esc(p).into_owned())
                .collect();
            writeln!(out, "Left out  {}", left.join(", "))?;
        }
    }
    writeln!(out, "Decisions")?;
    if history.decisions.is_empty() {
        writeln!(out, "  none yet")?;
    }
    for d in &history.decisions {
        let partner = d
            .partner
            .as_deref()
            .map(|p| format!(" for {}", esc(p)))
            .unwrap_or_default();
        let what = match (&d.edits, &d.reason) {
            (_, Some(reason)) => format!(": {}", esc(reason)),
            (Some(edits), None) => edits_summary(edits),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "  {} {:<7} by {} ({}){partner}{what}",
            show(d.at, tz),
            esc(&d.kind),
            esc(&d.display),
            esc(&d.actor),
        )?;
    }
    writeln!(out, "History")?;
    writeln!(out, "  {} raised", show(a.created_at, tz))?;
    for e in &history.audit {
        writeln!(
            out,
            "  {} {:<12} {} from {}{}",
            show(e.at, tz),
            esc(&e.action),
            esc(&e.actor),
            esc(&e.source),
            audit_detail(e)
        )?;
    }
    writeln!(out, "Emails")?;
    for d in &history.deliveries {
        writeln!(
            out,
            "  {:<20} {:<10} {:<7} attempts={} {}",
            esc(&d.partner_id),
            esc(&d.purpose),
            d.status,
            d.attempts,
            esc(d.last_error.as_deref().unwrap_or_default())
        )?;
    }
    writeln!(out, "Acknowledged")?;
    if history.acks.is_empty() {
        writeln!(out, "  by nobody yet")?;
    }
    for ack in &history.acks {
        let name = ack
            .name
            .as_deref()
            .map(|n| format!(" by {}", esc(n)))
            .unwrap_or_default();
        writeln!(
            out,
            "  {} for {}{name} from {}",
            show(ack.at, tz),
            esc(&ack.partner_id),
            esc(&ack.ip)
        )?;
    }
    Ok(())
}

/// What an update, a withdrawal or an acknowledgement said, for its history line.
fn audit_detail(e: &AuditEntry) -> String {
    let text = |key: &str| e.detail.get(key).and_then(|v| v.as_str());
    match e.action.as_str() {
        "update" => format!(
            ": update {}: {}",
            e.detail.get("n").and_then(|n| n.as_u64()).unwrap_or(0),
            esc(text("text").unwrap_or_default())
        ),
        "withdraw" => format!(": {}", esc(text("reason").unwrap_or_default())),
        "acknowledge" => format!(" for {}", esc(text("partner").unwrap_or_default())),
        _ => String::new(),
    }
}

/// What `alerts update` and `alerts withdraw` say: who was told.
pub fn write_notified(
    out: &mut impl Write,
    notified: &crate::lifecycle::Notified,
    format: OutputFormat,
) -> io::Result<()> {
    if format == OutputFormat::Json {
        return super::write_json(out, notified);
    }
    let what = match notified.update {
        Some(n) => format!("update {n} of {}", esc(&notified.alert_id)),
        None => format!("{} withdrawn", esc(&notified.alert_id)),
    };
    if notified.partners.is_empty() {
        return writeln!(
            out,
            "{what}: recorded; no partner had received it, so nobody is emailed"
        );
    }
    let partners: Vec<String> = notified
        .partners
        .iter()
        .map(|p| esc(p).into_owned())
        .collect();
    writeln!(out, "{what}: queued for {}", partners.join(", "))
}

/// The edits of an approval in one line: ": headline, severity critical, left out x".
fn edits_summary(edits: &crate::review::Edits) -> String {
    let mut parts = Vec::new();
    if edits.headline.is_some() {
        parts.push("headline".to_string());
    }
    if edits.advice.is_some() {
        parts.push("advice".to_string());
    }
    if let Some(s) = edits.severity {
        parts.push(format!("severity {s}"));
    }
    if !edits.left_out.is_empty() {
        let left: Vec<String> = edits.left_out.iter().map(|p| esc(p).into_owned()).collect();
        parts.push(format!("left out {}", left.join(", ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": edited {}", parts.join(", "))
    }
}

/// What `alerts approve` and `dismiss` say, as text or JSON.
pub fn write_decided(
    out: &mut impl Write,
    id: &str,
    actor: &Actor,
    decided: &Decided,
    format: OutputFormat,
) -> io::Result<()> {
    let by = if actor.id.ends_with(&format!(":{}", actor.display)) {
        actor.id.clone()
    } else {
        format!("{} ({})", actor.display, actor.id)
    };
    if format == OutputFormat::Json {
        let value = match decided {
            Decided::Approved { partners } => {
                serde_json::json!({ "id": id, "decided": "approved", "by": actor.id, "partners": partners })
            }
            Decided::ApprovalRecorded { have, need } => {
                serde_json::json!({ "id": id, "decided": "approval_recorded", "by": actor.id, "have": have, "need": need })
            }
            Decided::Dismissed => {
                serde_json::json!({ "id": id, "decided": "dismissed", "by": actor.id })
            }
        };
        return super::write_json(out, &value);
    }
    let line = match decided {
        Decided::Approved { partners } => approved(id, &by, partners),
        Decided::ApprovalRecorded { have, need } => format!(
            "approval {have} of {need} recorded for {} by {}: it goes out when another reviewer approves it",
            esc(id),
            esc(&by)
        ),
        Decided::Dismissed => dismissed(id, &by),
    };
    writeln!(out, "{line}")
}

/// What `alerts approve` says: who approved it and who it is queued for.
fn approved(id: &str, by: &str, partners: &[String]) -> String {
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
fn dismissed(id: &str, by: &str) -> String {
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

    fn row(id: &str, severity: &str, at: &str) -> AlertRow {
        AlertRow {
            id: id.into(),
            rule_id: "r".into(),
            district: String::new(),
            severity: severity.into(),
            status: "in_review".into(),
            created_at: at.parse().unwrap(),
            event_count: 1,
        }
    }

    #[test]
    fn rows_sort_oldest_first_or_by_severity() {
        let mut rows = vec![
            row("c", "info", "2026-03-01T08:00:00Z"),
            row("a", "critical", "2026-03-01T10:00:00Z"),
            row("b", "warning", "2026-03-01T09:00:00Z"),
            row("d", "critical", "2026-03-01T11:00:00Z"),
        ];
        sort_rows(&mut rows, QueueOrder::Age);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a", "d"]);
        sort_rows(&mut rows, QueueOrder::Severity);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "d", "b", "c"]);
    }

    #[test]
    fn a_recorded_approval_says_how_many_are_in() {
        let actor = Actor {
            id: "unix:ana".into(),
            display: "Dr Ana".into(),
            source: "unix:ana".into(),
        };
        let mut out = Vec::new();
        let decided = Decided::ApprovalRecorded { have: 1, need: 2 };
        write_decided(&mut out, "EW-A", &actor, &decided, OutputFormat::Text).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "approval 1 of 2 recorded for EW-A by Dr Ana (unix:ana): it goes out when another reviewer approves it\n"
        );
        let mut out = Vec::new();
        write_decided(&mut out, "EW-A", &actor, &decided, OutputFormat::Json).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["decided"], "approval_recorded");
        assert_eq!(json["need"], 2);
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
