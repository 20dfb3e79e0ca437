//! The audit log (SPEC §9): who did what, when, and from where.
//!
//! Every login (and failed login), decision, edit, update, withdrawal,
//! acknowledgement, account change and outbox requeue appends one
//! [`AuditEntry`]. The actor always comes from a credential: a console
//! session (`web:NAME`), the Unix account of the process's uid
//! (`unix:NAME`) or a feed's push token (`push:FEED`), never from a name
//! someone typed, a request header or an environment variable.
//! Rows are never changed or removed: the table refuses it (store triggers).

use jiff::Timestamp;

/// Who acts, established from a credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    /// `web:NAME` (a console account) or `unix:NAME` (the CLI's uid).
    pub id: String,
    /// How the person is named in emails and pages: an account's display
    /// name, or for the CLI the `--by` name if given, else the Unix account.
    pub display: String,
    /// Where from: the client's IP address, or `unix:NAME` for the CLI.
    pub source: String,
}

impl Actor {
    /// The CLI's actor: the Unix account of this process's real uid.
    pub fn unix(display_name: Option<&str>) -> Result<Actor, crate::review::ReviewError> {
        let account = crate::review::unix_account();
        let display = crate::review::display_name(display_name)?;
        Ok(Actor {
            id: format!("unix:{account}"),
            display,
            source: format!("unix:{account}"),
        })
    }

    /// A console account acting from `ip`.
    pub fn web(account: &str, display: &str, ip: std::net::IpAddr) -> Actor {
        Actor {
            id: format!("web:{account}"),
            display: display.to_string(),
            source: ip.to_string(),
        }
    }

    /// Whoever holds a feed's push token (SPEC §11), pushing from `peer`: named
    /// by the token that opened the feed, never by anything the request says.
    pub fn push(feed: &str, peer: std::net::IpAddr) -> Actor {
        Actor {
            id: format!("push:{feed}"),
            display: format!("push to {feed}"),
            source: peer.to_string(),
        }
    }

    /// The daemon itself (reminders, expiry).
    pub fn daemon() -> Actor {
        Actor {
            id: "daemon".into(),
            display: "earlywarn".into(),
            source: "daemon".into(),
        }
    }
}

/// What was done. The string forms are what the log stores and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Login,
    LoginFailed,
    Logout,
    Approve,
    Dismiss,
    Update,
    Withdraw,
    Acknowledge,
    AccountAdded,
    AccountChanged,
    PasswordChanged,
    AccountDisabled,
    AccountEnabled,
    OutboxRequeued,
    /// A file pushed over HTTP (SPEC §11), by `push:FEED`.
    FilePushed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::LoginFailed => "login_failed",
            Action::Logout => "logout",
            Action::Approve => "approve",
            Action::Dismiss => "dismiss",
            Action::Update => "update",
            Action::Withdraw => "withdraw",
            Action::Acknowledge => "acknowledge",
            Action::AccountAdded => "account_added",
            Action::AccountChanged => "account_changed",
            Action::PasswordChanged => "password_changed",
            Action::AccountDisabled => "account_disabled",
            Action::AccountEnabled => "account_enabled",
            Action::OutboxRequeued => "outbox_requeued",
            Action::FilePushed => "file_pushed",
        }
    }
}

/// One row of the audit log, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub alert_id: Option<String>,
    /// Details as JSON (a dismissal's reason, the edits, the account changed).
    pub detail: serde_json::Value,
}
