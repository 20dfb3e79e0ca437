//! `earlywarn status` as text: the rules in force and the last refused
//! reload, feeds, open deadlines, the review queue, the outbox, rejected
//! files and recent alerts.

use super::local;
use crate::config::FeedConfig;
use crate::display::escape_controls as esc;
use crate::store::StatusReport;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::io::{self, Write};

/// Writes `report` for a person. `feeds` are the config's, in its order (a feed
/// with no file yet is listed too); `now` decides which deadlines are overdue.
pub fn write_text(
    out: &mut impl Write,
    report: &StatusReport,
    feeds: &[FeedConfig],
    tz: &TimeZone,
    now: Timestamp,
) -> io::Result<()> {
    let show = |t: Timestamp| local(t, tz, "%Y-%m-%d %H:%M:%S %Z");
    write_rules(out, report, &show)?;
    writeln!(out, "Feeds")?;
    for paused in &report.paused_feeds {
        writeln!(
            out,
            "  {:<16} PAUSED: {}",
            esc(&paused.feed),
            esc(&paused.reason)
        )?;
    }
    for feed in feeds {
        match report.feeds.iter().find(|f| f.feed == feed.name) {
            Some(f) => writeln!(
                out,
                "  {:<16} last file {} at {} ({})",
                feed.name,
                esc(&f.last_file),
                show(f.last_at),
                esc(&f.last_outcome)
            )?,
            None => writeln!(out, "  {:<16} no file yet", feed.name)?,
        }
    }
    writeln!(out, "Open deadlines")?;
    if report.open_deadlines.is_empty() {
        writeln!(out, "  none")?;
    }
    for d in &report.open_deadlines {
        let overdue = if d.due <= now { "  OVERDUE" } else { "" };
        writeln!(
            out,
            "  {:<28} {:<20} due {}{overdue}",
            esc(&d.rule_id),
            esc(&d.key),
            show(d.due)
        )?;
    }
    writeln!(out, "Review queue")?;
    writeln!(
        out,
        "  {} alert(s) awaiting review (earlywarn alerts list)",
        report.in_review
    )?;
    write_outbox(out, report, &show)?;
    write_rejected(out, report, &show)?;
    writeln!(out, "Recent alerts")?;
    if report.recent_alerts.is_empty() {
        writeln!(out, "  none")?;
    }
    for a in &report.recent_alerts {
        writeln!(
            out,
            "  {} {} {:<8} {} {} ({} records, {})",
            esc(&a.id),
            show(a.created_at),
            esc(&a.severity),
            esc(&a.rule_id),
            esc(&a.district),
            a.event_count,
            esc(&a.status)
        )?;
    }
    Ok(())
}

/// How many rules in force the text names: a screenful, however many are loaded.
const SHOWN_RULES: usize = 50;

/// The rules in force and, if a reload was ever refused, the last refusal
/// with its errors (the daemon keeps the rules it had: SPEC §8).
fn write_rules(
    out: &mut impl Write,
    report: &StatusReport,
    show: &impl Fn(Timestamp) -> String,
) -> io::Result<()> {
    let rules = &report.rules;
    // Stored by the daemon as RFC 3339; anything else is shown as it is.
    let shown = |t: &str| {
        t.parse::<Timestamp>()
            .map(show)
            .unwrap_or_else(|_| esc(t).into_owned())
    };
    writeln!(out, "Rules")?;
    match (rules.loaded, &rules.last_reload_at) {
        (Some(n), Some(at)) => writeln!(out, "  {n} rule(s) in force; last reload {}", shown(at))?,
        (Some(n), None) => writeln!(out, "  {n} rule(s) in force")?,
        (None, _) => writeln!(out, "  not known: the daemon has not run on this database")?,
    }
    for rule in rules.in_force.iter().take(SHOWN_RULES) {
        writeln!(
            out,
            "    {:<34} {:<10} {}",
            esc(&rule.id),
            esc(&rule.kind),
            esc(&rule.severity)
        )?;
    }
    if rules.in_force.len() > SHOWN_RULES {
        writeln!(
            out,
            "    and {} more (earlywarn status --format json lists them all)",
            rules.in_force.len() - SHOWN_RULES
        )?;
    }
    if let (Some(at), Some(errors)) = (&rules.last_refused_at, &rules.last_refused_error) {
        let state = if rules.last_reload_error.is_some() {
            "the previous rules stay in force"
        } else {
            "fixed since: the rules above are in force"
        };
        writeln!(out, "  last refused reload {} ({state}):", shown(at))?;
        for line in errors.lines() {
            writeln!(out, "    {}", esc(line))?;
        }
    }
    Ok(())
}

fn write_outbox(
    out: &mut impl Write,
    report: &StatusReport,
    show: &impl Fn(Timestamp) -> String,
) -> io::Result<()> {
    writeln!(out, "Outbox")?;
    if let Some(fault) = &report.delivery_fault {
        writeln!(
            out,
            "  DELIVERY FAULT since {}: {} — fix the [mail] settings; {} deliveries are waiting",
            show(fault.since),
            esc(&fault.reason),
            report.outbox_pending
        )?;
    }
    writeln!(
        out,
        "  pending {}, failed {}",
        report.outbox_pending, report.outbox_failed
    )?;
    if let Some(t) = report.oldest_pending {
        writeln!(out, "  oldest pending since {}", show(t))?;
    }
    for p in &report.delivery_problems {
        writeln!(
            out,
            "  {} {} to {} after {} attempt(s): {}",
            if p.permanent { "FAILED" } else { "retrying" },
            esc(&p.alert_id),
            esc(&p.partner_id),
            p.attempts,
            esc(&p.error)
        )?;
        if !p.failed_addresses.is_empty() {
            writeln!(
                out,
                "    refused by {} (earlywarn outbox retry requeues them)",
                esc(&p.failed_addresses.join(", "))
            )?;
        }
    }
    Ok(())
}

fn write_rejected(
    out: &mut impl Write,
    report: &StatusReport,
    show: &impl Fn(Timestamp) -> String,
) -> io::Result<()> {
    writeln!(out, "Rejected in the last 7 days")?;
    if report.rejected.is_empty() {
        writeln!(out, "  none")?;
    }
    for r in &report.rejected {
        let what = if r.whole_file {
            esc(&r.reason).into_owned()
        } else {
            format!("{} row(s) rejected", r.rejected_rows)
        };
        writeln!(
            out,
            "  {} {}/{}: {what}",
            show(r.at),
            esc(&r.feed),
            esc(&r.name)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        AlertRow, DeadlineRow, DeliveryFault, DeliveryProblem, FeedStatus, PausedFeed,
        RejectedFile, RuleInForce, RulesStatus,
    };

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn feeds() -> Vec<FeedConfig> {
        let config = crate::config::Config::parse(
            std::path::Path::new("/x/earlywarn.toml"),
            "[mail]\ntransport = \"file\"\n[[feed]]\nname = \"drug_testing\"\ndir = \"in\"\n[[feed]]\nname = \"incidents\"\ndir = \"inc\"\n",
        )
        .unwrap();
        config.feeds
    }

    fn empty() -> StatusReport {
        StatusReport {
            rules: RulesStatus {
                loaded: None,
                in_force: Vec::new(),
                last_reload_at: None,
                last_reload_error: None,
                last_refused_at: None,
                last_refused_error: None,
            },
            paused_feeds: Vec::new(),
            open_deadlines: Vec::new(),
            in_review: 0,
            feeds: Vec::new(),
            outbox_pending: 0,
            outbox_failed: 0,
            oldest_pending: None,
            delivery_fault: None,
            delivery_problems: Vec::new(),
            rejected: Vec::new(),
            recent_alerts: Vec::new(),
        }
    }

    fn text(report: &StatusReport, now: Timestamp) -> String {
        let mut out = Vec::new();
        write_text(&mut out, report, &feeds(), &TimeZone::UTC, now).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_new_install_says_none_everywhere() {
        assert_eq!(
            text(&empty(), at("2026-03-01T12:00:00Z")),
            "Rules\n  not known: the daemon has not run on this database\nFeeds\n  drug_testing     no file yet\n  incidents        no file yet\nOpen deadlines\n  none\nReview queue\n  0 alert(s) awaiting review (earlywarn alerts list)\nOutbox\n  pending 0, failed 0\nRejected in the last 7 days\n  none\nRecent alerts\n  none\n"
        );
    }

    #[test]
    fn names_from_files_and_servers_are_escaped_and_deadlines_past_now_overdue() {
        let hostile = "evil\n\u{1b}[2Jname";
        let shown = "evil\\n\\x1b[2Jname";
        let mut report = empty();
        report.paused_feeds.push(PausedFeed {
            feed: "incidents".into(),
            reason: format!("{hostile} is a link"),
        });
        report.feeds.push(FeedStatus {
            feed: "drug_testing".into(),
            last_file: hostile.into(),
            last_at: at("2026-03-01T09:00:00Z"),
            last_outcome: "processed".into(),
        });
        for (key, due) in [
            ("late", "2026-03-01T11:00:00Z"),
            ("soon", "2026-03-01T13:00:00Z"),
        ] {
            report.open_deadlines.push(DeadlineRow {
                rule_id: "handover".into(),
                key: key.into(),
                opened_at: at("2026-03-01T08:00:00Z"),
                due: at(due),
            });
        }
        report.delivery_problems.push(DeliveryProblem {
            alert_id: "a1".into(),
            partner_id: "panel".into(),
            attempts: 3,
            error: "550 no\rsuch user".into(),
            permanent: true,
            failed_addresses: vec![format!("{hostile}@example.org")],
        });
        report.delivery_fault = Some(DeliveryFault {
            since: at("2026-03-01T11:30:00Z"),
            reason: format!("535 {hostile}"),
        });
        report.rejected.push(RejectedFile {
            feed: "drug_testing".into(),
            name: hostile.into(),
            at: at("2026-03-01T10:00:00Z"),
            whole_file: false,
            reason: String::new(),
            rejected_rows: 2,
        });
        report.recent_alerts.push(AlertRow {
            id: "a1".into(),
            rule_id: "nitazene".into(),
            district: hostile.into(),
            severity: "critical".into(),
            status: "sent".into(),
            created_at: at("2026-03-01T10:00:00Z"),
            event_count: 4,
        });
        report.rules = RulesStatus {
            loaded: Some(24),
            in_force: Vec::new(),
            last_reload_at: Some("2026-03-01T11:40:00Z".into()),
            last_reload_error: Some("rules/x.toml:3:8: unknown feed\n\u{1b}[2Jx".into()),
            last_refused_at: Some("2026-03-01T11:40:00Z".into()),
            last_refused_error: Some("rules/x.toml:3:8: unknown feed\n\u{1b}[2Jx".into()),
        };
        let text = text(&report, at("2026-03-01T12:00:00Z"));
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        for line in [
            "  24 rule(s) in force; last reload 2026-03-01 11:40:00 UTC".into(),
            "  last refused reload 2026-03-01 11:40:00 UTC (the previous rules stay in force):".into(),
            "    rules/x.toml:3:8: unknown feed".into(),
            "    \\x1b[2Jx".into(),
            format!("  incidents        PAUSED: {shown} is a link"),
            format!("  drug_testing     last file {shown} at 2026-03-01 09:00:00 UTC (processed)"),
            "  handover                     late                 due 2026-03-01 11:00:00 UTC  OVERDUE".into(),
            "  handover                     soon                 due 2026-03-01 13:00:00 UTC".into(),
            "  FAILED a1 to panel after 3 attempt(s): 550 no\\rsuch user".into(),
            format!("    refused by {shown}@example.org (earlywarn outbox retry requeues them)"),
            format!("  DELIVERY FAULT since 2026-03-01 11:30:00 UTC: 535 {shown} — fix the [mail] settings; 0 deliveries are waiting"),
            format!("  2026-03-01 10:00:00 UTC drug_testing/{shown}: 2 row(s) rejected"),
            format!("  a1 2026-03-01 10:00:00 UTC critical nitazene {shown} (4 records, sent)"),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_refused_reload_stays_shown_once_fixed() {
        let mut report = empty();
        report.rules = RulesStatus {
            loaded: Some(25),
            in_force: Vec::new(),
            last_reload_at: Some("2026-03-01T11:50:00Z".into()),
            last_reload_error: None,
            last_refused_at: Some("2026-03-01T11:40:00Z".into()),
            last_refused_error: Some("rules/x.toml:3:8: unknown feed `drugs`".into()),
        };
        let text = text(&report, at("2026-03-01T12:00:00Z"));
        assert!(
            text.starts_with("Rules\n  25 rule(s) in force; last reload 2026-03-01 11:50:00 UTC\n  last refused reload 2026-03-01 11:40:00 UTC (fixed since: the rules above are in force):\n    rules/x.toml:3:8: unknown feed `drugs`\nFeeds\n"),
            "{text}"
        );
    }

    #[test]
    fn the_rules_in_force_are_named_a_screenful_at_most() {
        let mut report = empty();
        report.rules.loaded = Some(1000);
        report.rules.in_force = (0..1000)
            .map(|i| RuleInForce {
                id: format!("rule-{i:04}"),
                kind: "match".into(),
                severity: "warning".into(),
            })
            .collect();
        report.rules.in_force[0].id = "nitazene\n\u{1b}[2J".into();
        let text = text(&report, at("2026-03-01T12:00:00Z"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  1000 rule(s) in force");
        assert_eq!(
            lines[2],
            "    nitazene\\n\\x1b[2J                  match      warning"
        );
        assert_eq!(
            lines[3],
            "    rule-0001                          match      warning"
        );
        assert_eq!(
            lines[51],
            "    rule-0049                          match      warning"
        );
        assert_eq!(
            lines[52],
            "    and 950 more (earlywarn status --format json lists them all)"
        );
        assert_eq!(lines[53], "Feeds");
    }
}
