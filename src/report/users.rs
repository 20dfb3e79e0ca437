//! `earlywarn users ...`: the account list and what each change did.

use super::local;
use crate::accounts::Account;
use crate::display::escape_controls as esc;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::io::{self, Write};

/// One line per account: name, role, partner, state, display name, created.
pub fn write_list(
    out: &mut impl Write,
    accounts: &[Account],
    tz: &TimeZone,
    now: Timestamp,
) -> io::Result<()> {
    if accounts.is_empty() {
        return writeln!(
            out,
            "no accounts yet; add one with `earlywarn users add NAME --role viewer|reviewer|admin`"
        );
    }
    writeln!(
        out,
        "{:<24} {:<8} {:<16} {:<26} {:<24} CREATED",
        "NAME", "ROLE", "PARTNER", "STATE", "DISPLAY"
    )?;
    for a in accounts {
        writeln!(
            out,
            "{:<24} {:<8} {:<16} {:<26} {:<24} {}",
            esc(&a.name),
            a.role,
            esc(a.partner.as_deref().unwrap_or("-")),
            state(a, tz, now),
            esc(&a.display),
            local(a.created_at, tz, "%Y-%m-%d %H:%M %Z"),
        )?;
    }
    Ok(())
}

/// `active`, `disabled`, or `locked until 10:15`.
fn state(a: &Account, tz: &TimeZone, now: Timestamp) -> String {
    if a.disabled {
        "disabled".into()
    } else if let Some(until) = a
        .locked_until
        .filter(|_| crate::accounts::is_locked(a.locked_until, now))
    {
        format!("locked until {}", local(until, tz, "%Y-%m-%d %H:%M"))
    } else {
        "active".into()
    }
}

/// After `users add`.
pub fn added(a: &Account) -> String {
    let partner = match &a.partner {
        Some(p) => format!(" for partner {}", esc(p)),
        None => String::new(),
    };
    format!(
        "added {} `{}` ({}){partner}",
        a.role,
        esc(&a.name),
        esc(&a.display)
    )
}

/// After `users passwd`, `disable` or `enable`.
pub fn changed(a: &Account, what: &str) -> String {
    format!("{what} `{}`", esc(&a.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Role;

    #[test]
    fn the_list_shows_state_and_escapes_display_names() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let base = Account {
            name: "jsmith".into(),
            display: "J\u{1b}[31m Smith".into(),
            role: Role::Reviewer,
            partner: Some("panel".into()),
            disabled: false,
            locked_until: None,
            created_at: now,
        };
        let locked = Account {
            name: "locked".into(),
            locked_until: Some("2026-12-01T10:15:00Z".parse().unwrap()),
            partner: None,
            ..base.clone()
        };
        let expired = Account {
            name: "lockended".into(),
            locked_until: Some("2026-12-01T09:00:00Z".parse().unwrap()),
            ..base.clone()
        };
        let off = Account {
            name: "off".into(),
            disabled: true,
            ..base.clone()
        };
        let mut out = Vec::new();
        write_list(&mut out, &[base, locked, expired, off], &TimeZone::UTC, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(
            lines[1].contains("reviewer")
                && lines[1].contains("panel")
                && lines[1].contains("active")
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(lines[2].contains("locked until 2026-12-01 10:15"), "{text}");
        assert!(lines[3].contains("active"), "{text}");
        assert!(lines[4].contains("disabled"), "{text}");
    }
}
