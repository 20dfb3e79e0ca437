//! Console accounts (SPEC §9): who may log in, with which role, and their sessions.
//!
//! The policy is pure and takes `now`: name and password rules, the lockout
//! ([`LoginPolicy`]), when a session has ended. The functions that act
//! ([`add`], [`login`], [`session`], [`logout`], [`set_password`],
//! [`set_disabled`]) read and write through [`Store`], each change in one
//! transaction with its audit row.
//!
//! Must not: keep or log a password, or a session token as given. A password
//! lives only as an Argon2id PHC string; a token only as its SHA-256, so a copy
//! of the database lets nobody in. An unknown name costs the same Argon2
//! verification as a known one, so timing does not tell names apart.

use crate::audit::{Action, Actor};
use crate::store::accounts as db;
use crate::store::{Store, StoreError};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jiff::{SignedDuration, Timestamp};
use sha2::Digest;
use std::net::IpAddr;
use std::time::Duration;

/// Argon2id cost: memory in KiB, iterations, lanes. OWASP's first choice for
/// Argon2id; a login costs tens of milliseconds of one core.
pub const ARGON2_PARAMS: (u32, u32, u32) = (19456, 2, 1);

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest password accepted, in bytes: Argon2 hashes any length, but a
/// megabyte typed into the login form must not cost a megabyte of hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The longest account name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// The longest display name, in characters.
pub const MAX_DISPLAY_CHARS: usize = 100;
/// A session ends this long after login however busy it is, so a stolen
/// cookie that is kept in use still stops working.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// `last_seen` is written at most this often: a page view must not be a write.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What an account may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees alerts (those of its partner, redacted as its emails were).
    Viewer,
    /// Decides drafts of the rules whose `review` names its partner.
    Reviewer,
    /// Everything, the audit log included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Reviewer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    /// `viewer`, `reviewer` or `admin`, in any case.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account as the console and the CLI see it (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    /// The login, lower-case.
    pub name: String,
    /// How emails and pages name the person ("Dr A Chair").
    pub display: String,
    pub role: Role,
    /// The partner the person works for, if any: a viewer sees what it received;
    /// a reviewer decides for it.
    pub partner: Option<String>,
    pub disabled: bool,
    /// Locked after too many failed logins, until then.
    pub locked_until: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// When repeated failures lock an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures in a row that lock the account.
    pub max_failures: u32,
    /// How long it stays locked.
    pub lock_for: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            max_failures: 5,
            lock_for: Duration::from_secs(15 * 60),
        }
    }
}

/// A successful login: the cookie's value and the session's form token.
#[derive(Debug)]
pub struct LoggedIn {
    pub account: Account,
    /// The cookie's value. Only its SHA-256 is stored.
    pub token: String,
    /// The CSRF token of this session, for every form.
    pub csrf: String,
}

/// Why a login was refused. The console shows one message for all of them,
/// so a guesser learns nothing; the audit log keeps which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error("wrong name or password")]
    BadCredentials,
    #[error("the account is locked until {until}")]
    Locked { until: Timestamp },
    #[error("the account is disabled")]
    Disabled,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Refused(#[from] LoginRefused),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The account behind a live session, and the session's form token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAccount {
    pub account: Account,
    pub csrf: String,
}

/// Why an account change was refused (all but `Store` and `Internal` are the
/// user's to fix).
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account name `{name}`: {why}")]
    BadName { name: String, why: String },
    #[error("password: {0}")]
    BadPassword(String),
    #[error("display name: {0}")]
    BadDisplay(String),
    #[error("there is already an account `{0}`; `earlywarn users list` shows them")]
    Exists(String),
    #[error("no account `{0}`; `earlywarn users list` shows them")]
    NotFound(String),
    #[error("cannot hash the password: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AccountError {
    /// Whether the person at the command line has to fix this (exit 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, AccountError::Internal(_) | AccountError::Store(_))
    }
}

/// A name as stored: lower-case, `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn normalise_name(name: &str) -> Result<String, AccountError> {
    let lower = name.trim().to_ascii_lowercase();
    let bad = |why: &str| AccountError::BadName {
        name: crate::display::escape_controls(&truncate(name, MAX_NAME_CHARS)).into_owned(),
        why: why.into(),
    };
    let mut chars = lower.chars();
    match chars.next() {
        None => return Err(bad("is empty")),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Err(bad("must start with a letter or a digit"));
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
        return Err(bad(
            "may hold only letters a-z, digits, `.`, `_` and `-` (like `jsmith` or `a.chair`)",
        ));
    }
    if lower.len() > MAX_NAME_CHARS {
        return Err(bad("is longer than 64 characters"));
    }
    Ok(lower)
}

/// At least [`MIN_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::BadPassword(format!(
            "too short: at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::BadPassword(format!(
            "too long: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_display(display: &str) -> Result<String, AccountError> {
    let display = display.trim();
    if display.is_empty() {
        return Err(AccountError::BadDisplay("is empty".into()));
    }
    if crate::display::contains_controls(display) {
        return Err(AccountError::BadDisplay(
            "holds control characters (a newline, an escape sequence)".into(),
        ));
    }
    if display.chars().count() > MAX_DISPLAY_CHARS {
        return Err(AccountError::BadDisplay(format!(
            "is longer than {MAX_DISPLAY_CHARS} characters"
        )));
    }
    Ok(display.to_string())
}

fn argon2() -> argon2::Argon2<'static> {
    let (m, t, p) = ARGON2_PARAMS;
    // The constants are within Argon2's bounds (checked by a unit test), so
    // this cannot fail; the default would be the same OWASP parameters.
    let params = argon2::Params::new(m, t, p, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// An Argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with a
/// fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AccountError::Internal(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Internal(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Internal(e.to_string()))
}

/// Whether `password` matches `phc`. An unreadable stored hash matches nothing.
fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// What an unknown name is verified against, so that it costs what a known one
/// does: a hash made with [`ARGON2_PARAMS`] (of a throwaway phrase; an unknown
/// name is refused whatever the result). A constant, not made at start, so the
/// first unknown name costs no more than the rest.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$gbpLqhkFGp/gDCRAioAtmA$YEik+Wf30lgkyiCkCUd9xOnYMsRcOPwbSYML1DYEX28";

/// Whether an account locked until `locked_until` is locked at `now`.
pub fn is_locked(locked_until: Option<Timestamp>, now: Timestamp) -> bool {
    locked_until.is_some_and(|until| now < until)
}

/// After one more failure on an account that had `failures` in a row: the new
/// count, and the lock if it reached `max_failures`. The count is kept through
/// the lock (only a success resets it), so once a lock ends each further
/// failure locks again at once.
pub fn after_failure(
    failures: u32,
    policy: &LoginPolicy,
    now: Timestamp,
) -> (u32, Option<Timestamp>) {
    let failures = failures.saturating_add(1);
    let lock = (failures >= policy.max_failures).then(|| now + signed(policy.lock_for));
    (failures, lock)
}

/// Whether a session created at `created_at` and last used at `last_seen` has
/// ended at `now`: unused for `idle`, or older than [`SESSION_MAX_AGE`].
pub fn session_ended(
    created_at: Timestamp,
    last_seen: Timestamp,
    idle: Duration,
    now: Timestamp,
) -> bool {
    now.duration_since(last_seen) >= signed(idle)
        || now.duration_since(created_at) >= signed(SESSION_MAX_AGE)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `text` cut to at most `max` characters.
fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// 32 random bytes, hex: a session token or a form token.
fn random_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Corrupt(format!("no randomness for a session token: {e}")))?;
    Ok(hex::encode(bytes))
}

/// What the `sessions` table keeps of a token.
pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// An account to create. Its `Debug` never shows the password.
pub struct NewAccount {
    pub name: String,
    /// Defaults to the name.
    pub display: Option<String>,
    pub role: Role,
    /// Must be a partner of the config: the caller checks (it has the config).
    pub partner: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("name", &self.name)
            .field("display", &self.display)
            .field("role", &self.role)
            .field("partner", &self.partner)
            .finish_non_exhaustive()
    }
}

/// Creates an account, audited as `account_added` by `actor`.
pub fn add(
    store: &Store,
    new: &NewAccount,
    actor: &Actor,
    now: Timestamp,
) -> Result<Account, AccountError> {
    let name = normalise_name(&new.name)?;
    let display = check_display(new.display.as_deref().unwrap_or(&name))?;
    check_password(&new.password)?;
    let hash = hash_password(&new.password)?;
    let account = Account {
        name,
        display,
        role: new.role,
        partner: new.partner.clone(),
        disabled: false,
        locked_until: None,
        created_at: now,
    };
    let tx = store.accounts_transaction()?;
    if !db::insert_account(&tx, &account, &hash)? {
        return Err(AccountError::Exists(account.name));
    }
    crate::store::audit::append(
        &tx,
        now,
        actor,
        Action::AccountAdded,
        None,
        &serde_json::json!({
            "name": account.name, "display": account.display,
            "role": account.role, "partner": account.partner,
        }),
    )?;
    tx.commit().map_err(StoreError::from)?;
    Ok(account)
}

/// Sets a new password and ends the account's sessions (whoever knew the old
/// one is logged out); also lifts a lock. Audited as `password_changed`.
pub fn set_password(
    store: &Store,
    name: &str,
    password: &str,
    actor: &Actor,
    now: Timestamp,
) -> Result<Account, AccountError> {
    let name = normalise_name(name)?;
    check_password(password)?;
    let hash = hash_password(password)?;
    let tx = store.accounts_transaction()?;
    if !db::set_password_hash(&tx, &name, &hash, now)? {
        return Err(AccountError::NotFound(name));
    }
    let ended = db::delete_sessions_of(&tx, &name)?;
    crate::store::audit::append(
        &tx,
        now,
        actor,
        Action::PasswordChanged,
        None,
        &serde_json::json!({ "name": name, "sessions_ended": ended }),
    )?;
    let account = db::account_row(&tx, &name)?.ok_or_else(|| AccountError::NotFound(name))?;
    tx.commit().map_err(StoreError::from)?;
    Ok(account.account)
}

/// Disables (ending its sessions) or enables an account. Audited as
/// `account_disabled` / `account_enabled`, even when it already was.
pub fn set_disabled(
    store: &Store,
    name: &str,
    disabled: bool,
    actor: &Actor,
    now: Timestamp,
) -> Result<Account, AccountError> {
    let name = normalise_name(name)?;
    let tx = store.accounts_transaction()?;
    if !db::set_disabled(&tx, &name, disabled)? {
        return Err(AccountError::NotFound(name));
    }
    let ended = if disabled {
        db::delete_sessions_of(&tx, &name)?
    } else {
        0
    };
    let action = if disabled {
        Action::AccountDisabled
    } else {
        Action::AccountEnabled
    };
    crate::store::audit::append(
        &tx,
        now,
        actor,
        action,
        None,
        &serde_json::json!({ "name": name, "sessions_ended": ended }),
    )?;
    let account = db::account_row(&tx, &name)?.ok_or_else(|| AccountError::NotFound(name))?;
    tx.commit().map_err(StoreError::from)?;
    Ok(account.account)
}

/// Verifies name and password; counts failures and locks at
/// `policy.max_failures` for `policy.lock_for`; audits `login` or
/// `login_failed` (with why, never the password); on success creates a new
/// session and returns its tokens. Blocking: Argon2 takes tens of ms.
pub fn login(
    store: &Store,
    name: &str,
    password: &str,
    ip: IpAddr,
    now: Timestamp,
    policy: &LoginPolicy,
) -> Result<LoggedIn, LoginError> {
    let typed = crate::display::escape_controls(&truncate(name, MAX_NAME_CHARS)).into_owned();
    let row = match normalise_name(name) {
        Ok(n) => db::account_row(store.accounts_connection(), &n)?,
        Err(_) => None,
    };
    // Over-long input is refused after the same work as any other, and never
    // reaches Argon2 at its full length.
    let password = if password.len() > MAX_PASSWORD_BYTES {
        ""
    } else {
        password
    };
    let Some(row) = row else {
        verify_password(password, DUMMY_HASH);
        let actor = Actor {
            id: "anonymous".into(),
            display: typed.clone(),
            source: ip.to_string(),
        };
        audit_failure(
            store.accounts_connection(),
            now,
            &actor,
            &typed,
            "unknown_name",
        )?;
        return Err(LoginRefused::BadCredentials.into());
    };
    let matches = verify_password(password, &row.password_hash) && !password.is_empty();
    let account = row.account;
    let actor = Actor::web(&account.name, &account.display, ip);
    if let Some((why, reason)) = refusal(&account, now) {
        audit_failure(store.accounts_connection(), now, &actor, &typed, reason)?;
        return Err(why.into());
    }
    if !matches {
        let tx = store.accounts_transaction()?;
        // Counted from the row as it is under the write lock, so two failures
        // at once (two browsers, two processes) both count.
        let so_far =
            db::account_row(&tx, &account.name)?.map_or(row.failed_logins, |r| r.failed_logins);
        let (failures, lock) = after_failure(so_far, policy, now);
        db::record_failure(&tx, &account.name, failures, lock)?;
        audit_failure(&tx, now, &actor, &typed, "bad_password")?;
        tx.commit().map_err(StoreError::from)?;
        return Err(match lock {
            Some(until) => LoginRefused::Locked { until },
            None => LoginRefused::BadCredentials,
        }
        .into());
    }
    let token = random_token()?;
    let csrf = random_token()?;
    let tx = store.accounts_transaction()?;
    // Read again under the write lock: an account removed, disabled or locked
    // while Argon2 ran gets no session.
    let current = db::account_row(&tx, &account.name)?;
    let refusal = match &current {
        Some(r) => refusal(&r.account, now),
        None => Some((LoginRefused::BadCredentials, "unknown_name")),
    };
    if let Some((why, reason)) = refusal {
        drop(tx);
        audit_failure(store.accounts_connection(), now, &actor, &typed, reason)?;
        return Err(why.into());
    }
    db::record_success(&tx, &account.name)?;
    db::insert_session(
        &tx,
        &token_hash(&token),
        &account.name,
        &csrf,
        now,
        &ip.to_string(),
    )?;
    crate::store::audit::append(
        &tx,
        now,
        &actor,
        Action::Login,
        None,
        &serde_json::json!({}),
    )?;
    tx.commit().map_err(StoreError::from)?;
    Ok(LoggedIn {
        account: Account {
            locked_until: None,
            ..account
        },
        token,
        csrf,
    })
}

/// Why `account` may not log in at `now` whatever the password, and the
/// reason the audit log records.
fn refusal(account: &Account, now: Timestamp) -> Option<(LoginRefused, &'static str)> {
    if account.disabled {
        return Some((LoginRefused::Disabled, "disabled"));
    }
    match account.locked_until {
        Some(until) if is_locked(Some(until), now) => {
            Some((LoginRefused::Locked { until }, "locked"))
        }
        _ => None,
    }
}

fn audit_failure(
    conn: &rusqlite::Connection,
    now: Timestamp,
    actor: &Actor,
    typed: &str,
    reason: &str,
) -> Result<(), StoreError> {
    crate::store::audit::append(
        conn,
        now,
        actor,
        Action::LoginFailed,
        None,
        &serde_json::json!({ "name": typed, "reason": reason }),
    )
}

/// The session of a cookie token if it exists, its account is enabled, and it
/// was used within `idle` (and began within [`SESSION_MAX_AGE`]). Refreshes
/// `last_seen` at most once per [`TOUCH_EVERY`]. An ended one is deleted.
pub fn session(
    store: &Store,
    token: &str,
    idle: Duration,
    now: Timestamp,
) -> Result<Option<SessionAccount>, StoreError> {
    let hash = token_hash(token);
    let Some(row) = db::session_row(store.accounts_connection(), &hash)? else {
        return Ok(None);
    };
    if row.account.disabled || session_ended(row.created_at, row.last_seen, idle, now) {
        db::delete_session(store.accounts_connection(), &hash)?;
        return Ok(None);
    }
    if now.duration_since(row.last_seen) >= signed(TOUCH_EVERY) {
        db::touch_session(store.accounts_connection(), &hash, now)?;
    }
    Ok(Some(SessionAccount {
        account: row.account,
        csrf: row.csrf,
    }))
}

/// Ends the session of `token` (if it still exists), audited as `logout`.
pub fn logout(store: &Store, token: &str, ip: IpAddr, now: Timestamp) -> Result<(), StoreError> {
    let hash = token_hash(token);
    let tx = store.accounts_transaction()?;
    if let Some(row) = db::session_row(&tx, &hash)? {
        db::delete_session(&tx, &hash)?;
        let actor = Actor::web(&row.account.name, &row.account.display, ip);
        crate::store::audit::append(
            &tx,
            now,
            &actor,
            Action::Logout,
            None,
            &serde_json::json!({}),
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_lower_case_and_plain() {
        assert_eq!(normalise_name(" JSmith ").unwrap(), "jsmith");
        assert_eq!(normalise_name("a.chair_2-x").unwrap(), "a.chair_2-x");
        assert_eq!(normalise_name("0day").unwrap(), "0day");
        for bad in ["", ".x", "-x", "j smith", "jsmith\u{1b}[2J", "émile", "a/b"] {
            assert!(
                matches!(normalise_name(bad), Err(AccountError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert!(normalise_name(&"a".repeat(64)).is_ok());
        let err = normalise_name(&"a".repeat(65)).unwrap_err().to_string();
        assert!(err.contains("longer than 64"), "{err}");
        // The name in the message is escaped: no escape sequence reaches a terminal.
        let err = normalise_name("x\u{1b}[2J").unwrap_err().to_string();
        assert!(!err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn passwords_need_twelve_characters_and_at_most_1024_bytes() {
        assert!(matches!(
            check_password("elevenchars"),
            Err(AccountError::BadPassword(_))
        ));
        assert!(check_password("twelve chars").is_ok());
        // Characters, not bytes: twelve accented letters are enough.
        assert!(check_password(&"é".repeat(12)).is_ok());
        assert!(check_password(&"x".repeat(1024)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn roles_parse_in_any_case() {
        assert_eq!(Role::parse("Reviewer"), Some(Role::Reviewer));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::Viewer.to_string(), "viewer");
    }

    #[test]
    fn the_fifth_failure_in_a_row_locks_for_fifteen_minutes() {
        let policy = LoginPolicy::default();
        let now = t("2026-12-01T10:00:00Z");
        let mut failures = 0;
        for _ in 0..4 {
            let (n, lock) = after_failure(failures, &policy, now);
            assert_eq!(lock, None);
            failures = n;
        }
        let (n, lock) = after_failure(failures, &policy, now);
        assert_eq!(n, 5);
        assert_eq!(lock, Some(t("2026-12-01T10:15:00Z")));
        assert!(is_locked(lock, t("2026-12-01T10:14:59Z")));
        assert!(!is_locked(lock, t("2026-12-01T10:15:00Z")));
        // After the lock, the next failure locks again at once.
        let (_, again) = after_failure(n, &policy, t("2026-12-01T10:16:00Z"));
        assert_eq!(again, Some(t("2026-12-01T10:31:00Z")));
    }

    #[test]
    fn sessions_end_when_idle_or_a_week_old() {
        let created = t("2026-12-01T10:00:00Z");
        let idle = Duration::from_secs(30 * 60);
        assert!(!session_ended(
            created,
            created,
            idle,
            t("2026-12-01T10:29:59Z")
        ));
        assert!(session_ended(
            created,
            created,
            idle,
            t("2026-12-01T10:30:00Z")
        ));
        // Used a minute ago, but a week old: ended.
        let week = t("2026-12-08T10:00:00Z");
        let recent = t("2026-12-08T09:59:00Z");
        assert!(!session_ended(
            created,
            recent,
            idle,
            t("2026-12-08T09:59:59Z")
        ));
        assert!(session_ended(created, recent, idle, week));
    }

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters() {
        let (m, t, p) = ARGON2_PARAMS;
        assert!(argon2::Params::new(m, t, p, None).is_ok());
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a phc string"));
        // The dummy costs what a real hash does: same algorithm and parameters.
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        // A fresh salt each time.
        assert_ne!(hash, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn a_new_accounts_debug_hides_its_password() {
        let new = NewAccount {
            name: "jsmith".into(),
            display: None,
            role: Role::Viewer,
            partner: None,
            password: "hunter2hunter2".into(),
        };
        assert!(!format!("{new:?}").contains("hunter2"));
    }
}
