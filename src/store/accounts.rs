//! The `accounts` and `sessions` tables' queries (schema v4).
//!
//! Free functions take a `&Connection` so that a change and its audit row
//! commit in one transaction (`crate::accounts` opens it). Nothing here
//! decides policy: lockout, expiry and password rules live in `accounts`.
//! A session is found only by the SHA-256 of its token; the token itself is
//! never written.

use super::{Result, Store, StoreError, from_ms, ms};
use crate::accounts::{Account, Role};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

/// An account with what only the login path reads.
pub(crate) struct AccountRow {
    pub account: Account,
    pub password_hash: String,
    pub failed_logins: u32,
}

/// A session with its account.
pub(crate) struct SessionRow {
    pub account: Account,
    pub csrf: String,
    pub created_at: Timestamp,
    pub last_seen: Timestamp,
}

const ACCOUNT_COLUMNS: &str =
    "a.name, a.display, a.role, a.partner, a.disabled, a.locked_until, a.created_at";

fn account(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    let role: String = r.get(2)?;
    Ok(Account {
        name: r.get(0)?,
        display: r.get(1)?,
        // Written only from `Role::as_str`; a hand-edited row is the least role.
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        partner: r.get(3)?,
        disabled: r.get(4)?,
        locked_until: r.get::<_, Option<i64>>(5)?.map(from_ms),
        created_at: from_ms(r.get(6)?),
    })
}

impl Store {
    /// A write transaction taken at once (`BEGIN IMMEDIATE`), so that a
    /// read-then-write (the failure count) cannot race another process.
    pub(crate) fn accounts_transaction(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    /// The connection, for reads outside a transaction.
    pub(crate) fn accounts_connection(&self) -> &Connection {
        &self.conn
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Result<Vec<Account>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts a ORDER BY a.name"
        ))?;
        let rows = stmt.query_map([], account)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One account by its stored (lower-case) name.
    pub fn account(&self, name: &str) -> Result<Option<Account>> {
        Ok(account_row(&self.conn, name)?.map(|r| r.account))
    }
}

/// Inserts a new account; `false` when the name is taken.
pub(crate) fn insert_account(conn: &Connection, a: &Account, password_hash: &str) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "INSERT INTO accounts (name, display, role, partner, password_hash, created_at, password_set_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (name) DO NOTHING",
        )?
        .execute(params![
            a.name,
            a.display,
            a.role.as_str(),
            a.partner,
            password_hash,
            ms(a.created_at)
        ])?;
    Ok(n == 1)
}

pub(crate) fn account_row(conn: &Connection, name: &str) -> Result<Option<AccountRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS}, a.password_hash, a.failed_logins FROM accounts a WHERE a.name = ?1"
    ))?;
    let row = stmt
        .query_row([name], |r| {
            Ok(AccountRow {
                account: account(r)?,
                password_hash: r.get(7)?,
                failed_logins: r.get(8)?,
            })
        })
        .optional()?;
    Ok(row)
}

pub(crate) fn record_failure(
    conn: &Connection,
    name: &str,
    failed_logins: u32,
    locked_until: Option<Timestamp>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE accounts SET failed_logins = ?2, locked_until = COALESCE(?3, locked_until) WHERE name = ?1",
    )?
    .execute(params![name, failed_logins, locked_until.map(ms)])?;
    Ok(())
}

pub(crate) fn record_success(conn: &Connection, name: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE accounts SET failed_logins = 0, locked_until = NULL WHERE name = ?1",
    )?
    .execute([name])?;
    Ok(())
}

/// A new password also lifts a lock. `false` when there is no such account.
pub(crate) fn set_password_hash(
    conn: &Connection,
    name: &str,
    password_hash: &str,
    now: Timestamp,
) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE accounts SET password_hash = ?2, password_set_at = ?3, failed_logins = 0, locked_until = NULL
             WHERE name = ?1",
        )?
        .execute(params![name, password_hash, ms(now)])?;
    Ok(n == 1)
}

/// `false` when there is no such account.
pub(crate) fn set_disabled(conn: &Connection, name: &str, disabled: bool) -> Result<bool> {
    let n = conn
        .prepare_cached("UPDATE accounts SET disabled = ?2 WHERE name = ?1")?
        .execute(params![name, disabled])?;
    Ok(n == 1)
}

/// Ends every session of an account; how many there were.
pub(crate) fn delete_sessions_of(conn: &Connection, name: &str) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM sessions WHERE account = ?1")?
        .execute([name])?)
}

pub(crate) fn insert_session(
    conn: &Connection,
    token_hash: &[u8],
    account: &str,
    csrf: &str,
    now: Timestamp,
    ip: &str,
) -> Result<()> {
    let n = conn
        .prepare_cached(
            "INSERT INTO sessions (token_hash, account, csrf, created_at, last_seen, ip)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5) ON CONFLICT (token_hash) DO NOTHING",
        )?
        .execute(params![token_hash, account, csrf, ms(now), ip])?;
    if n != 1 {
        // 256 random bits met an existing token: the randomness is broken.
        return Err(StoreError::Corrupt(
            "a new session token collided with an existing one".into(),
        ));
    }
    Ok(())
}

pub(crate) fn session_row(conn: &Connection, token_hash: &[u8]) -> Result<Option<SessionRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS}, s.csrf, s.created_at, s.last_seen
         FROM sessions s JOIN accounts a ON a.name = s.account WHERE s.token_hash = ?1"
    ))?;
    let row = stmt
        .query_row([token_hash], |r| {
            Ok(SessionRow {
                account: account(r)?,
                csrf: r.get(7)?,
                created_at: from_ms(r.get(8)?),
                last_seen: from_ms(r.get(9)?),
            })
        })
        .optional()?;
    Ok(row)
}

pub(crate) fn touch_session(conn: &Connection, token_hash: &[u8], now: Timestamp) -> Result<()> {
    conn.prepare_cached("UPDATE sessions SET last_seen = ?2 WHERE token_hash = ?1")?
        .execute(params![token_hash, ms(now)])?;
    Ok(())
}

pub(crate) fn delete_session(conn: &Connection, token_hash: &[u8]) -> Result<()> {
    conn.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
        .execute([token_hash])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{
        self, LoginError, LoginPolicy, LoginRefused, NewAccount, session, set_disabled,
        set_password,
    };
    use crate::audit::Actor;
    use std::net::IpAddr;
    use std::time::Duration;

    const PASSWORD: &str = "correct horse battery";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    fn store_with_jsmith(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).unwrap();
        let new = NewAccount {
            name: "JSmith".into(),
            display: Some("J Smith".into()),
            role: accounts::Role::Reviewer,
            partner: Some("panel".into()),
            password: PASSWORD.into(),
        };
        let admin = Actor {
            id: "unix:root".into(),
            display: "unix:root".into(),
            source: "unix:root".into(),
        };
        accounts::add(&store, &new, &admin, t("2026-12-01T09:00:00Z")).unwrap();
        store
    }

    fn refused(r: std::result::Result<accounts::LoggedIn, LoginError>) -> LoginRefused {
        match r {
            Err(LoginError::Refused(why)) => why,
            Err(LoginError::Store(e)) => panic!("store error: {e}"),
            Ok(_) => panic!("the login was accepted"),
        }
    }

    fn audit_actions(store: &Store) -> Vec<(String, String, String)> {
        store
            .audit_since(None, 100)
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.actor,
                    e.action,
                    e.detail["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_login_makes_a_session_that_only_its_hash_identifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jsmith(dir.path());
        let now = t("2026-12-01T10:00:00Z");
        let policy = LoginPolicy::default();
        let a = accounts::login(&store, "jsmith", PASSWORD, ip(), now, &policy).unwrap();
        assert_eq!(a.account.name, "jsmith");
        assert_eq!(a.account.display, "J Smith");
        assert_eq!(a.token.len(), 64);
        assert_ne!(a.token, a.csrf);
        // A second login is a new session with new tokens.
        let b = accounts::login(&store, "JSMITH", PASSWORD, ip(), now, &policy).unwrap();
        assert_ne!(a.token, b.token);
        assert_ne!(a.csrf, b.csrf);

        let found = session(&store, &a.token, Duration::from_secs(1800), now)
            .unwrap()
            .unwrap();
        assert_eq!(found.account.name, "jsmith");
        assert_eq!(found.csrf, a.csrf);
        assert!(
            session(&store, "not a token", Duration::from_secs(1800), now)
                .unwrap()
                .is_none()
        );

        // The raw token is nowhere in the sessions table, in any column, as text or bytes.
        let mut stmt = store
            .conn
            .prepare("SELECT token_hash, account, csrf, created_at, last_seen, ip FROM sessions")
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut seen = 0;
        while let Some(r) = rows.next().unwrap() {
            seen += 1;
            let hash: Vec<u8> = r.get(0).unwrap();
            assert_eq!(hash.len(), 32);
            for col in 0..6 {
                let v = r.get_ref(col).unwrap();
                let bytes = match v {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => b,
                    _ => continue,
                };
                for token in [&a.token, &b.token] {
                    assert!(
                        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                        "column {col} holds the token"
                    );
                    assert_ne!(bytes, hex::decode(token).unwrap().as_slice());
                }
            }
        }
        assert_eq!(seen, 2);
        // Nor is the password in the database file's accounts table.
        let hash: String = store
            .conn
            .query_row("SELECT password_hash FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert!(hash.starts_with("$argon2id$") && !hash.contains(PASSWORD));
        assert!(audit_actions(&store).contains(&("web:jsmith".into(), "login".into(), "".into())));
    }

    #[test]
    fn five_failures_lock_the_account_until_the_lock_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jsmith(dir.path());
        let policy = LoginPolicy::default();
        let start = t("2026-12-01T10:00:00Z");
        for i in 0..4 {
            let at = start + jiff::SignedDuration::from_secs(i);
            let why = refused(accounts::login(
                &store,
                "jsmith",
                "wrong password!",
                ip(),
                at,
                &policy,
            ));
            assert_eq!(why, LoginRefused::BadCredentials);
        }
        let fifth = start + jiff::SignedDuration::from_secs(4);
        let until = fifth + jiff::SignedDuration::from_mins(15);
        let why = refused(accounts::login(
            &store,
            "jsmith",
            "wrong password!",
            ip(),
            fifth,
            &policy,
        ));
        assert_eq!(why, LoginRefused::Locked { until });
        assert_eq!(
            store.account("jsmith").unwrap().unwrap().locked_until,
            Some(until)
        );

        // The right password while locked is refused too, and resets nothing.
        let during = until - jiff::SignedDuration::from_secs(1);
        let why = refused(accounts::login(
            &store,
            "jsmith",
            PASSWORD,
            ip(),
            during,
            &policy,
        ));
        assert_eq!(why, LoginRefused::Locked { until });
        assert_eq!(
            account_row(&store.conn, "jsmith")
                .unwrap()
                .unwrap()
                .failed_logins,
            5
        );

        // Once the lock ends the right password works and the count starts again.
        let a = accounts::login(&store, "jsmith", PASSWORD, ip(), until, &policy).unwrap();
        assert_eq!(a.account.locked_until, None);
        let row = account_row(&store.conn, "jsmith").unwrap().unwrap();
        assert_eq!((row.failed_logins, row.account.locked_until), (0, None));
        let why = refused(accounts::login(
            &store,
            "jsmith",
            "wrong password!",
            ip(),
            until,
            &policy,
        ));
        assert_eq!(why, LoginRefused::BadCredentials);

        let actions = audit_actions(&store);
        let failed: Vec<_> = actions.iter().filter(|a| a.1 == "login_failed").collect();
        assert_eq!(failed.len(), 7);
        assert!(failed.iter().all(|a| a.0 == "web:jsmith"));
        assert_eq!(failed[5].2, "locked");
        // No password appears anywhere in the audit log.
        for e in store.audit_since(None, 100).unwrap() {
            let text = e.detail.to_string();
            assert!(
                !text.contains("wrong password") && !text.contains(PASSWORD),
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_names_and_disabled_accounts_are_refused_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jsmith(dir.path());
        let policy = LoginPolicy::default();
        let now = t("2026-12-01T10:00:00Z");
        let hostile = format!("nobody\u{1b}[2J{}", "x".repeat(100));
        let why = refused(accounts::login(
            &store,
            &hostile,
            PASSWORD,
            ip(),
            now,
            &policy,
        ));
        assert_eq!(why, LoginRefused::BadCredentials);
        let entry = store.audit_since(None, 100).unwrap().pop().unwrap();
        assert_eq!(
            (entry.actor.as_str(), entry.source.as_str()),
            ("anonymous", "192.0.2.7")
        );
        assert_eq!(entry.action, "login_failed");
        let typed = entry.detail["name"].as_str().unwrap();
        assert!(
            typed.starts_with("nobody\\x1b[2J") && !typed.contains('\u{1b}'),
            "{typed}"
        );
        assert!(typed.chars().count() <= 64 + 8, "{typed}");

        let a = accounts::login(&store, "jsmith", PASSWORD, ip(), now, &policy).unwrap();
        let root = Actor::daemon();
        set_disabled(&store, "jsmith", true, &root, now).unwrap();
        // Disabling ended the session, and the right password is refused.
        assert!(
            session(&store, &a.token, Duration::from_secs(1800), now)
                .unwrap()
                .is_none()
        );
        let why = refused(accounts::login(
            &store,
            "jsmith",
            PASSWORD,
            ip(),
            now,
            &policy,
        ));
        assert_eq!(why, LoginRefused::Disabled);
        set_disabled(&store, "jsmith", false, &root, now).unwrap();
        let b = accounts::login(&store, "jsmith", PASSWORD, ip(), now, &policy).unwrap();
        // A new password ends the sessions too, and the old password stops working.
        set_password(&store, "jsmith", "a brand new passphrase", &root, now).unwrap();
        assert!(
            session(&store, &b.token, Duration::from_secs(1800), now)
                .unwrap()
                .is_none()
        );
        let why = refused(accounts::login(
            &store,
            "jsmith",
            PASSWORD,
            ip(),
            now,
            &policy,
        ));
        assert_eq!(why, LoginRefused::BadCredentials);
        accounts::login(
            &store,
            "jsmith",
            "a brand new passphrase",
            ip(),
            now,
            &policy,
        )
        .unwrap();
    }

    #[test]
    fn sessions_end_after_idle_time_a_week_and_logout() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jsmith(dir.path());
        let policy = LoginPolicy::default();
        let idle = Duration::from_secs(30 * 60);
        let start = t("2026-12-01T10:00:00Z");
        let a = accounts::login(&store, "jsmith", PASSWORD, ip(), start, &policy).unwrap();
        let last_seen = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT last_seen FROM sessions", [], |r| r.get(0))
                .unwrap()
        };
        // Used within a minute: not written again.
        let soon = start + jiff::SignedDuration::from_secs(30);
        assert!(session(&store, &a.token, idle, soon).unwrap().is_some());
        assert_eq!(last_seen(&store), ms(start));
        // Used 29 minutes later: kept, and refreshed.
        let later = start + jiff::SignedDuration::from_mins(29);
        assert!(session(&store, &a.token, idle, later).unwrap().is_some());
        assert_eq!(last_seen(&store), ms(later));
        // 30 idle minutes after that: ended and deleted.
        let idle_end = later + jiff::SignedDuration::from_mins(30);
        assert!(session(&store, &a.token, idle, idle_end).unwrap().is_none());
        let count = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&store), 0);

        // Used every 20 minutes for a week: ended at seven days all the same.
        let b = accounts::login(&store, "jsmith", PASSWORD, ip(), start, &policy).unwrap();
        let mut at = start;
        let week = start + jiff::SignedDuration::from_hours(7 * 24);
        while at + jiff::SignedDuration::from_mins(20) < week {
            at += jiff::SignedDuration::from_mins(20);
            assert!(
                session(&store, &b.token, idle, at).unwrap().is_some(),
                "{at}"
            );
        }
        assert!(session(&store, &b.token, idle, week).unwrap().is_none());

        let c = accounts::login(&store, "jsmith", PASSWORD, ip(), start, &policy).unwrap();
        accounts::logout(&store, &c.token, ip(), start).unwrap();
        assert!(session(&store, &c.token, idle, start).unwrap().is_none());
        let entry = store.audit_since(None, 100).unwrap().pop().unwrap();
        assert_eq!(
            (entry.actor.as_str(), entry.action.as_str()),
            ("web:jsmith", "logout")
        );
        // Logging out twice is harmless.
        accounts::logout(&store, &c.token, ip(), start).unwrap();
    }

    #[test]
    fn a_taken_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_jsmith(dir.path());
        let new = NewAccount {
            name: "jsmith".into(),
            display: None,
            role: accounts::Role::Viewer,
            partner: None,
            password: PASSWORD.into(),
        };
        let err =
            accounts::add(&store, &new, &Actor::daemon(), t("2026-12-01T10:00:00Z")).unwrap_err();
        assert!(
            matches!(err, accounts::AccountError::Exists(ref n) if n == "jsmith"),
            "{err}"
        );
        assert_eq!(store.accounts().unwrap().len(), 1);
    }
}
