//! `earlywarn replay`'s output: one line (or JSON object) per alert on stdout;
//! bad rows, the totals and the deadlines left open on stderr.

use super::OutputFormat;
use crate::feeds::parse::RowError;
use crate::replay::{ReplaySummary, ReplayedAlert};
use std::io::{self, Write};
use std::path::Path;

/// One alert: a JSON object, or two lines of text (what, then the subject).
pub fn alert(alert: &ReplayedAlert, format: OutputFormat) -> String {
    match format {
        // A plain struct of strings and numbers: serialising it cannot fail.
        OutputFormat::Json => serde_json::to_string(alert).unwrap_or_default(),
        OutputFormat::Text => format!(
            "{}  {:<8} {}  {}  records={}  to={}{}{}\n    {}",
            alert.id,
            alert.severity,
            alert.rule,
            alert.district.as_deref().unwrap_or("(several districts)"),
            alert.count,
            alert.recipients.join(","),
            if alert.review {
                " (draft for review)"
            } else {
                ""
            },
            if alert.reasons.is_empty() {
                String::new()
            } else {
                let rules: Vec<&str> = alert.reasons.iter().map(|r| r.rule.as_str()).collect();
                format!("  also={}", rules.join(","))
            },
            alert.subject
        ),
    }
}

/// A file, or a row of it, that could not be read.
pub fn problem(path: &Path, row: Option<&RowError>, reason: &str) -> String {
    match row {
        Some(r) if r.line > 0 => format!(
            "{}: row {} (line {}): {reason}",
            path.display(),
            r.row,
            r.line
        ),
        Some(r) => format!("{}: row {}: {reason}", path.display(), r.row),
        None => format!("{}: {reason}", path.display()),
    }
}

/// The totals, how fast, and the deadlines still open at the end; `secs` is
/// the wall time the replay took.
pub fn write_summary(out: &mut impl Write, summary: &ReplaySummary, secs: f64) -> io::Result<()> {
    writeln!(
        out,
        "replayed {} file(s), {} rows ({} events, {} duplicate, {} rejected) in {:.2}s ({:.0} rows/s): {} alert(s)",
        summary.files,
        summary.rows,
        summary.events,
        summary.duplicates,
        summary.rejected_rows,
        secs,
        summary.rows as f64 / secs.max(1e-9),
        summary.alerts
    )?;
    if summary.open_deadlines.is_empty() {
        return Ok(());
    }
    let clock = summary.clock.map(|c| c.to_string()).unwrap_or_default();
    writeln!(
        out,
        "{} deadline(s) still open at the end of the replay (clock {clock}):",
        summary.open_deadlines.len()
    )?;
    for (rule, key, due) in &summary.open_deadlines {
        writeln!(out, "  {rule}  {key}  due {due}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_two_lines_of_text_or_one_json_object() {
        let alert = ReplayedAlert {
            id: "a1".into(),
            rule: "nitazene".into(),
            severity: "critical".into(),
            district: None,
            group: Default::default(),
            recipients: vec!["panel".into(), "bolton".into()],
            review: true,
            subject: "Nitazene found".into(),
            count: 2,
            events: Vec::new(),
            file: "in.csv".into(),
            reasons: Vec::new(),
        };
        assert_eq!(
            super::alert(&alert, OutputFormat::Text),
            "a1  critical nitazene  (several districts)  records=2  to=panel,bolton (draft for review)\n    Nitazene found"
        );
        let json: serde_json::Value =
            serde_json::from_str(&super::alert(&alert, OutputFormat::Json)).unwrap();
        assert_eq!(json["rule"], "nitazene");
    }

    #[test]
    fn problems_name_the_row_and_its_line_when_known() {
        let row = |line| RowError {
            row: 3,
            line,
            reason: String::new(),
            span: None,
            verbatim: Vec::new(),
        };
        let path = Path::new("in.csv");
        assert_eq!(
            problem(path, Some(&row(4)), "bad time"),
            "in.csv: row 3 (line 4): bad time"
        );
        assert_eq!(
            problem(path, Some(&row(0)), "bad time"),
            "in.csv: row 3: bad time"
        );
        assert_eq!(problem(path, None, "not UTF-8"), "in.csv: not UTF-8");
    }
}
