//! The SQLite database: file checkpoints, seen records, rule state, alerts and the outbox.
//!
//! Invariants:
//! - One file = one transaction ([`FileTx`]): the file's checkpoint, the
//!   records it delivered, the rule state it changed, its alerts and their
//!   outbox rows commit together or not at all. The file is moved only after.
//! - WAL with `synchronous = FULL`: a commit that acknowledges a file is on
//!   disk before the file leaves the incoming folder, even across power loss.
//!   Two bookkeeping writes, the attempt count and the first hand-off time,
//!   commit with `NORMAL` ([`RelaxedSync`]): they survive a process kill, and
//!   a power cut can only cost a file one more try or a retry a later `Date`.
//! - An outbox row is `pending` until the mail server accepted it (`sent`) or
//!   refused it for good (`failed`). Nothing deletes a pending row.
//! - The schema is versioned in `PRAGMA user_version` and changes only through
//!   [`MIGRATIONS`]: every pending step runs at open in one `BEGIN IMMEDIATE`
//!   transaction that also sets the version, after a copy of the old database
//!   is kept beside it. A database newer than this binary is refused untouched.
//!
//! Times are stored as UTC milliseconds since the Unix epoch.

use crate::alerts::render::{Purpose, RenderedEmail};
use crate::alerts::{Alert, AlertStatus, Audience};
use crate::rules::engine::{EngineState, OpenDeadline, StateChange};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod accounts;
pub mod audit;
pub mod decisions;
pub mod lifecycle;
pub mod web;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database holds unreadable data: {0}")]
    Corrupt(String),
    /// Written by a newer earlywarn: this binary does not know its schema, so
    /// it must neither read nor change it.
    #[error(
        "the database at {path} was written by a newer earlywarn (schema version {found}; this earlywarn knows up to {known}). Install the newer earlywarn, or restore a backup."
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    /// Another process held the write lock for the whole busy timeout while
    /// this one wanted to upgrade the schema.
    #[error(
        "the database at {path} (schema version {found}) needs upgrading to version {known}, but another process kept it locked; try again once the daemon has started (it upgrades the database at start)"
    )]
    UpgradeBusy {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "cannot keep a copy of the database before upgrading it, at {path}: {reason}; the database was not changed"
    )]
    Backup { path: PathBuf, reason: String },
    #[error(
        "cannot upgrade the database at {path} to schema version {to} ({what}): {source}; it was left unchanged, at version {from}"
    )]
    Migration {
        path: PathBuf,
        from: u32,
        to: u32,
        what: &'static str,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// Whether the operator has to fix this (exit 1), rather than a fault inside
    /// earlywarn (exit 2): the wrong binary for this database.
    pub fn is_user_error(&self) -> bool {
        matches!(self, StoreError::TooNew { .. })
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The schema of release 0.1.0, the last without a version: schema version 1.
/// **Frozen**: databases exist with exactly this; change the schema by adding
/// a step to [`MIGRATIONS`], never by editing this text (the unit test
/// `version_1_is_the_schema_of_release_0_1_0` compares it with a database
/// 0.1.0 made). `IF NOT EXISTS` lets the same text adopt a 0.1.0 database.
const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS files (
    id            INTEGER PRIMARY KEY,
    feed          TEXT NOT NULL,
    name          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    encoding      TEXT,
    outcome       TEXT NOT NULL,      -- processed | duplicate | rejected
    reason        TEXT,
    rows          INTEGER NOT NULL DEFAULT 0,
    events        INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
    rejected_rows INTEGER NOT NULL DEFAULT 0,
    alerts        INTEGER NOT NULL DEFAULT 0,
    processed_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_content ON files(feed, sha256);
CREATE INDEX IF NOT EXISTS files_by_time ON files(processed_at);
-- `status` and every scrape: the last file of each feed, found by walking the
-- distinct feeds and taking each one's largest id, in O(feeds * log n).
CREATE INDEX IF NOT EXISTS files_by_feed ON files(feed, id);
-- `status`: recent rejected files without reading every accepted one.
CREATE INDEX IF NOT EXISTS files_with_problems ON files(id)
    WHERE outcome = 'rejected' OR rejected_rows > 0;

CREATE TABLE IF NOT EXISTS seen_records (
    feed        TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    PRIMARY KEY (feed, record_id, fingerprint)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rule_state (
    rule_id   TEXT NOT NULL,
    group_key TEXT NOT NULL,
    kind      TEXT NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (rule_id, group_key, kind)
) WITHOUT ROWID;
-- `status` lists open deadlines without reading every first-seen value and window.
CREATE INDEX IF NOT EXISTS rule_state_by_kind ON rule_state(kind);

CREATE TABLE IF NOT EXISTS alerts (
    id          TEXT PRIMARY KEY,
    rule_id     TEXT NOT NULL,
    district    TEXT,
    severity    TEXT NOT NULL,
    status      TEXT NOT NULL,      -- sent | in_review | approved | dismissed
    created_at  INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    summary     TEXT NOT NULL,
    reviewed_by TEXT,
    reviewed_at INTEGER
);
CREATE INDEX IF NOT EXISTS rule_state_by_kind ON rule_state(kind);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts(created_at);
-- The review queue and its count, however many alerts a flood raised.
CREATE INDEX IF NOT EXISTS alerts_by_status ON alerts(status, created_at);

CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    partner_id      TEXT NOT NULL,
    audience        TEXT NOT NULL,   -- notify | review
    message_id      TEXT NOT NULL,
    mail_from       TEXT NOT NULL,
    recipients      TEXT NOT NULL,   -- JSON array
    subject         TEXT NOT NULL,
    message         BLOB NOT NULL,
    status          TEXT NOT NULL,   -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    priority        INTEGER NOT NULL DEFAULT 1,  -- 0 critical, 1 warning, 2 info: sent in that order
    UNIQUE (alert_id, partner_id, audience)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
-- Counts and the oldest pending email, without reading sent ones.
CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox(status, created_at);
-- `status`: delivery problems, newest first, without reading sent emails.
CREATE INDEX IF NOT EXISTS outbox_problems ON outbox(id)
    WHERE status = 'failed' OR (status = 'pending' AND attempts > 0);

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// Files whose processing has started and not yet ended: a file that was
/// interrupted (the daemon crashed or was killed) this many times is set
/// aside instead of being tried again forever.
/// Part of version 1 (frozen like [`SCHEMA_V1`]).
const SCHEMA_V1_ATTEMPTS: &str = r#"
CREATE TABLE IF NOT EXISTS file_attempts (
    feed     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    tries    INTEGER NOT NULL,
    PRIMARY KEY (feed, sha256)
);
"#;

/// The database holds every incident location and note: only the daemon's
/// user may read it (and its WAL, which SQLite creates with the database's
/// mode), whatever the umask. Best effort: a folder or file we do not own
/// (a shared test folder) is left as it is.
fn restrict_to_owner(state_dir: &Path, db: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = rustix::process::geteuid().as_raw();
    for (path, mode) in [(state_dir, 0o700), (db, 0o600)] {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.uid() == me
            && meta.mode() & 0o077 != 0
            && !meta.file_type().is_symlink()
        {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// SQL for an outbox row's send priority from its alert's severity (lower goes
/// first; 1 if the alert row is missing), given the SQL naming the alert id.
/// One expression, so that `enqueue` and the migration cannot disagree.
macro_rules! priority_of_alert {
    ($alert_id:literal) => {
        concat!(
            "COALESCE((SELECT CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END FROM alerts a WHERE a.id = ",
            $alert_id,
            "), 1)"
        )
    };
}

/// The send priorities, in sending order (see `outbox.priority`).
const PRIORITIES: [i64; 3] = [0, 1, 2];

/// One schema change. Step `i` of [`MIGRATIONS`] takes a database from
/// version `i` to `i + 1`; it runs inside the upgrade's transaction, so it
/// must not `BEGIN` or `COMMIT` itself.
pub(crate) struct Migration {
    /// What it changes, for the log and errors ("outbox: per-address outcomes").
    what: &'static str,
    up: Up,
}

pub(crate) enum Up {
    /// Plain SQL (one or more statements): most migrations.
    Sql(&'static str),
    /// Code, for a step that must look before it changes anything.
    Code(fn(&Connection) -> rusqlite::Result<()>),
}

/// Every schema version, oldest first; the schema version of a database this
/// binary writes is `MIGRATIONS.len()`. To change the schema, append one line,
/// e.g. `Migration { what: "outbox: when the email was handed off", up: Up::Sql("ALTER TABLE outbox ADD COLUMN handed_off_at INTEGER;") },`
/// and never edit or reorder a step that has shipped.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        what: "the schema of release 0.1.0",
        up: Up::Code(adopt_release_0_1_0),
    },
    Migration {
        what: "outbox: threads and the first hand-off time",
        up: Up::Code(add_threads_and_hand_off),
    },
    // Per-address outcomes (SPEC §7): `remaining_recipients`, a JSON array of
    // the addresses still owed the email (NULL: all of `recipients`), and
    // `failed_recipients`, a JSON array of {address, error} refused with a 5xx
    // at RCPT. NULL in both is what every older row means.
    Migration {
        what: "outbox: per-address outcomes",
        up: Up::Sql(
            "ALTER TABLE outbox ADD COLUMN remaining_recipients TEXT;
             ALTER TABLE outbox ADD COLUMN failed_recipients TEXT;",
        ),
    },
    Migration {
        what: "the console: accounts, sessions, review decisions and the audit log",
        up: Up::Sql(SCHEMA_V4_CONSOLE),
    },
    Migration {
        what: "outbox: a purpose per row (updates, reminders, withdrawals); acknowledgements; reminders sent",
        up: Up::Sql(SCHEMA_V5_LIFECYCLE),
    },
    Migration {
        what: "the console: history indexes and its text search",
        up: Up::Sql(SCHEMA_V6_CONSOLE_SEARCH),
    },
];

/// Version 4: what the console (SPEC §9) and review decisions (SPEC §5.4) keep.
///
/// - `accounts`: console users. `name` is the login, stored lower-case; the
///   password only as an Argon2id PHC string. Failed logins and the lockout
///   are counted here, so a restart does not reset them.
/// - `sessions`: server-side sessions. Only a SHA-256 of the cookie's token is
///   kept, so a copy of the database does not let anyone in.
/// - `decisions`: every approval and dismissal, one row each (`approvals = 2`
///   needs two rows from two different `actor`s before the alert goes out).
/// - `audit`: who did what, when, from where. Append-only: triggers refuse
///   every UPDATE and DELETE, so no code path (and no `sqlite3` shell session
///   that forgets) can rewrite history.
const SCHEMA_V4_CONSOLE: &str = r#"
CREATE TABLE accounts (
    name          TEXT PRIMARY KEY,          -- the login, lower-case
    display       TEXT NOT NULL,             -- shown in emails: "Dr A Chair"
    role          TEXT NOT NULL,             -- viewer | reviewer | admin
    partner       TEXT,                      -- partner id, or NULL
    password_hash TEXT NOT NULL,             -- Argon2id, PHC string
    disabled      INTEGER NOT NULL DEFAULT 0,
    failed_logins INTEGER NOT NULL DEFAULT 0, -- in a row, since the last success
    locked_until  INTEGER,                   -- ms; NULL: not locked
    created_at    INTEGER NOT NULL,
    password_set_at INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,            -- SHA-256 of the cookie's token
    account     TEXT NOT NULL,
    csrf        TEXT NOT NULL,               -- the form token of this session
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    ip          TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_account ON sessions(account);

CREATE TABLE decisions (
    id        INTEGER PRIMARY KEY,
    alert_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,                 -- approve | dismiss
    actor     TEXT NOT NULL,                 -- web:NAME | unix:NAME: who, from a credential
    display   TEXT NOT NULL,                 -- the person's name as the email shows it
    partner   TEXT,                          -- the partner they decided for, if any
    at        INTEGER NOT NULL,
    edits     TEXT,                          -- JSON: headline, advice, severity, left_out
    reason    TEXT                           -- a dismissal's reason
);
CREATE INDEX decisions_by_alert ON decisions(alert_id, id);

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,                 -- web:NAME | unix:NAME | daemon | anonymous
    source    TEXT NOT NULL,                 -- IP address, or unix:NAME
    action    TEXT NOT NULL,                 -- login | login_failed | logout | approve | dismiss | ...
    alert_id  TEXT,
    detail    TEXT NOT NULL DEFAULT '{}'     -- JSON
);
CREATE INDEX audit_by_time ON audit(at);
CREATE INDEX audit_by_alert ON audit(alert_id) WHERE alert_id IS NOT NULL;
CREATE TRIGGER audit_rows_are_never_changed BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows are never changed'); END;
CREATE TRIGGER audit_rows_are_never_removed BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows are never removed'); END;
"#;

/// Version 5: the alert's lifecycle (SPEC §10).
///
/// - `outbox` is rebuilt (SQLite cannot change a UNIQUE constraint in place)
///   with a `purpose` (`alert` | `draft` | `update-N` | `reminder-N` |
///   `withdrawn`, render::Purpose): one alert sends a partner several emails
///   now, so a row is unique per alert, partner and purpose. Older rows get
///   the purpose their audience meant. Every column, row and index is kept.
/// - `acks`: who confirmed receipt of which alert for which partner; one row
///   per alert and partner, so a second press changes nothing.
/// - `reminders`: the `review_within` and `ack_within` reminders already
///   sent, one per alert and kind, so a restart never sends one twice.
const SCHEMA_V5_LIFECYCLE: &str = r#"
CREATE TABLE outbox_v5 (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    partner_id      TEXT NOT NULL,
    audience        TEXT NOT NULL,   -- notify | review
    purpose         TEXT NOT NULL,   -- alert | draft | update-N | reminder-N | withdrawn
    message_id      TEXT NOT NULL,
    mail_from       TEXT NOT NULL,
    recipients      TEXT NOT NULL,   -- JSON array
    subject         TEXT NOT NULL,
    message         BLOB NOT NULL,
    status          TEXT NOT NULL,   -- pending | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    priority        INTEGER NOT NULL DEFAULT 1,
    thread          TEXT,
    handed_off_at   INTEGER,
    remaining_recipients TEXT,
    failed_recipients    TEXT,
    UNIQUE (alert_id, partner_id, purpose)
);
INSERT INTO outbox_v5 (id, alert_id, partner_id, audience, purpose, message_id, mail_from, recipients,
    subject, message, status, attempts, next_attempt_at, last_error, created_at, sent_at, priority,
    thread, handed_off_at, remaining_recipients, failed_recipients)
SELECT id, alert_id, partner_id, audience, CASE audience WHEN 'review' THEN 'draft' ELSE 'alert' END,
    message_id, mail_from, recipients, subject, message, status, attempts, next_attempt_at, last_error,
    created_at, sent_at, priority, thread, handed_off_at, remaining_recipients, failed_recipients
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v5 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox(status, next_attempt_at);
CREATE INDEX outbox_by_status ON outbox(status, created_at);
CREATE INDEX outbox_problems ON outbox(id)
    WHERE status = 'failed' OR (status = 'pending' AND attempts > 0);
CREATE INDEX outbox_by_priority ON outbox(status, priority, next_attempt_at, id);
CREATE INDEX outbox_by_thread ON outbox(thread, partner_id, id);

CREATE TABLE acks (
    alert_id   TEXT NOT NULL,
    partner_id TEXT NOT NULL,
    name       TEXT,                 -- typed by the person, optional
    at         INTEGER NOT NULL,
    ip         TEXT NOT NULL,
    PRIMARY KEY (alert_id, partner_id)
) WITHOUT ROWID;

CREATE TABLE reminders (
    alert_id   TEXT NOT NULL,
    kind       TEXT NOT NULL,        -- review | ack
    at         INTEGER NOT NULL,
    PRIMARY KEY (alert_id, kind)
) WITHOUT ROWID;
"#;

/// Version 6: what the console's history (`store::web`) reads fast with
/// 100,000 alerts: each filter an index range walked newest first, a
/// partner's alerts found from its outbox rows, and `alert_text`, a full-text
/// index of what each reader may search. Rows with `partner = ''` hold the
/// alert's id, rule and every text value of the stored alert (for accounts
/// that see everything); one row per email holds its subject under the
/// partner it went to (all a partner's account may search). Kept by
/// triggers, so no writer of alerts or emails has to remember it; the
/// `CASE` keeps an unreadable summary from failing the insert of its alert.
const SCHEMA_V6_CONSOLE_SEARCH: &str = r#"
-- Newest first with the id in the index: a partner's history checks each
-- alert's outbox row without reading the alert itself.
CREATE INDEX alerts_by_time_and_id ON alerts(created_at, id);
CREATE INDEX alerts_by_rule ON alerts(rule_id, created_at);
CREATE INDEX alerts_by_district ON alerts(district COLLATE NOCASE, created_at);
CREATE INDEX alerts_by_severity ON alerts(severity, created_at);
CREATE INDEX outbox_by_partner ON outbox(partner_id, alert_id);

CREATE VIRTUAL TABLE alert_text USING fts5(
    alert_id UNINDEXED, partner UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO alert_text (alert_id, partner, body)
    SELECT id, '', id || ' ' || rule_id || ' ' || CASE WHEN json_valid(summary)
        THEN COALESCE((SELECT group_concat(value, ' ') FROM json_tree(summary) WHERE type = 'text'), '')
        ELSE '' END
    FROM alerts;
INSERT INTO alert_text (alert_id, partner, body) SELECT alert_id, partner_id, subject FROM outbox;
CREATE TRIGGER alert_text_of_a_new_alert AFTER INSERT ON alerts BEGIN
    INSERT INTO alert_text (alert_id, partner, body) VALUES (new.id, '',
        new.id || ' ' || new.rule_id || ' ' || CASE WHEN json_valid(new.summary)
            THEN COALESCE((SELECT group_concat(value, ' ') FROM json_tree(new.summary) WHERE type = 'text'), '')
            ELSE '' END);
END;
CREATE TRIGGER alert_text_of_a_new_email AFTER INSERT ON outbox BEGIN
    INSERT INTO alert_text (alert_id, partner, body) VALUES (new.alert_id, new.partner_id, new.subject);
END;
"#;

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Version 1, from nothing or from a 0.1.0 database (which has no version):
/// creates what is missing, then the `priority` column that databases from
/// before it lack. Looks before it changes anything, so it suits both.
fn adopt_release_0_1_0(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA_V1)?;
    conn.execute_batch(SCHEMA_V1_ATTEMPTS)?;
    let has_priority: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'priority'",
        [],
        |r| r.get(0),
    )?;
    if !has_priority {
        conn.execute_batch(concat!(
            "ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
             UPDATE outbox SET priority = ",
            priority_of_alert!("outbox.alert_id"),
            ";"
        ))?;
    }
    // After the column exists: `due` reads one priority at a time, oldest first.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS outbox_by_priority ON outbox(status, priority, next_attempt_at, id);",
    )
}

/// Version 2: each outbox row's conversation (`thread`, render::thread_key:
/// later emails reply to the partner's first) and when it was first handed to
/// the transport (`handed_off_at`: the email's Date, the same on every retry).
/// Rows made earlier get the thread their alert has, so a draft still awaiting
/// review is found by its approval, and an escalation of a deadline opened
/// before the upgrade replies to its opening notice.
fn add_threads_and_hand_off(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "ALTER TABLE outbox ADD COLUMN thread TEXT;
         ALTER TABLE outbox ADD COLUMN handed_off_at INTEGER;
         UPDATE outbox SET thread = 'alert' || char(31) || alert_id;",
    )?;
    let deadline_alerts: Vec<(String, String)> = conn
        .prepare(
            "SELECT id, summary FROM alerts WHERE json_valid(summary)
               AND json_extract(summary, '$.trigger.type') IN ('deadline_opened', 'deadline_overdue', 'deadline_closed')
               AND id IN (SELECT alert_id FROM outbox)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, summary) in deadline_alerts {
        // An alert the current code cannot read keeps its own thread.
        if let Ok(alert) = serde_json::from_str::<Alert>(&summary) {
            conn.execute(
                "UPDATE outbox SET thread = ?2 WHERE alert_id = ?1",
                params![id, crate::alerts::render::thread_key(&alert)],
            )?;
        }
    }
    conn.execute_batch("CREATE INDEX outbox_by_thread ON outbox(thread, partner_id, id);")
}

/// How many copies of older databases (`earlywarn.db.before-vN`) are kept.
const BACKUPS_KEPT: usize = 2;

/// The schema version in a database file's header (bytes 60..64 of the
/// SQLite header), read without opening it with SQLite: a database too new
/// for this binary is then refused without a byte of it, or a `-wal` beside
/// it, being written. `None` if there is no file or it is not SQLite.
fn version_in_header(db: &Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0u8; 64];
    std::fs::File::open(db).ok()?.read_exact(&mut header).ok()?;
    if &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    Some(u32::from_be_bytes([
        header[60], header[61], header[62], header[63],
    ]))
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// Brings the database at `path` to version `migrations.len()`: nothing if it
/// is there already; otherwise, holding the write lock, keeps a copy of an
/// existing database, then runs every pending step and sets `user_version`, in
/// one transaction, so a failure or a crash half way leaves the old version.
fn bring_up_to_date(conn: &mut Connection, path: &Path, migrations: &[Migration]) -> Result<()> {
    let known = migrations.len() as u32;
    let too_new = |found| StoreError::TooNew {
        path: path.to_path_buf(),
        found,
        known,
    };
    let found = user_version(conn)?;
    if found > known {
        return Err(too_new(found));
    }
    if found == known {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| {
            if is_busy(&e) {
                StoreError::UpgradeBusy {
                    path: path.to_path_buf(),
                    found,
                    known,
                }
            } else {
                e.into()
            }
        })?;
    // Read again under the lock: another process may have upgraded it (or a
    // newer earlywarn written it) between the first read and the lock.
    let found = user_version(&tx)?;
    if found > known {
        return Err(too_new(found));
    }
    if found == known {
        return Ok(());
    }
    let existing = found > 0 || holds_tables(&tx)?;
    let backup = if existing {
        let backup = keep_copy(path, known)?;
        tracing::info!(
            database = %path.display(),
            from = found,
            to = known,
            copy = %backup.display(),
            "Upgrading the database schema; the database as it was is kept in the copy"
        );
        Some(backup)
    } else {
        None
    };
    for (step, migration) in migrations.iter().enumerate().skip(found as usize) {
        let applied = match migration.up {
            Up::Sql(sql) => tx.execute_batch(sql),
            Up::Code(up) => up(&tx),
        };
        applied.map_err(|source| StoreError::Migration {
            path: path.to_path_buf(),
            from: found,
            to: step as u32 + 1,
            what: migration.what,
            source,
        })?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    if let Some(backup) = backup {
        tracing::info!(database = %path.display(), version = known, copy = %backup.display(), "Database upgraded");
        prune_copies(path);
    }
    Ok(())
}

/// Whether the database already holds tables (a 0.1.0 database has
/// `user_version` 0 like an empty one).
fn holds_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )
}

/// `earlywarn.db.before-vN` beside the database, for a database about to be
/// upgraded to version `to`. Called with the write lock held, so the copy is
/// exactly what the upgrade starts from, and no other process makes one at
/// the same time. Written under a temporary name, owner-only (it holds the
/// same data as the database), synced, then renamed into place.
fn keep_copy(db: &Path, to: u32) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "earlywarn.db".into());
    let backup = db.with_file_name(format!("{name}.before-v{to}"));
    let partial = db.with_file_name(format!("{name}.before-v{to}.partial"));
    let fail = |reason: String| StoreError::Backup {
        path: backup.clone(),
        reason,
    };
    // A leftover of a copy interrupted by a crash: ours to replace.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    // VACUUM INTO accepts an empty file, so the copy gets our mode, not the umask's.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| fail(e.to_string()))?;
    // A second connection reads the last commit, which our lock keeps as it is.
    let reader = Connection::open(db).map_err(|e| fail(e.to_string()))?;
    reader
        .execute("VACUUM INTO ?1", [partial.to_string_lossy()])
        .map_err(|e| fail(e.to_string()))?;
    drop(reader);
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&partial, &backup))
        .map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = db.parent() {
        // The rename is durable once the folder is synced; a failure here
        // loses at most the copy's name after a power cut, not the database.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(backup)
}

/// Deletes all but the newest [`BACKUPS_KEPT`] copies beside the database:
/// each holds every record, so they must not pile up.
fn prune_copies(db: &Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return;
    };
    let prefix = format!("{}.before-v", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut copies: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name();
            let version = file.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((version, e.path()))
        })
        .collect();
    copies.sort();
    let excess = copies.len().saturating_sub(BACKUPS_KEPT);
    for (_, old) in copies.into_iter().take(excess) {
        match std::fs::remove_file(&old) {
            Ok(()) => {
                tracing::info!(copy = %old.display(), "Deleted an older copy of the database")
            }
            Err(e) => {
                tracing::warn!(copy = %old.display(), error = %e, "Cannot delete an older copy of the database")
            }
        }
    }
}

/// The Message-ID of the first email `partner_id` got (or will get) in `thread`.
fn first_in_thread(
    conn: &Connection,
    thread: &str,
    partner_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT message_id FROM outbox WHERE thread = ?1 AND partner_id = ?2 ORDER BY id LIMIT 1",
    )?
    .query_row(params![thread, partner_id], |r| r.get(0))
    .optional()
}

/// An alert row by its exact id, inside the caller's transaction when given one.
pub(crate) fn stored_alert(conn: &Connection, id: &str) -> Result<Option<StoredAlert>> {
    conn.query_row(
        "SELECT summary, status, reviewed_by, reviewed_at FROM alerts WHERE id = ?1",
        [id],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        },
    )
    .optional()?
    .map(|(summary, status, reviewed_by, reviewed_at)| {
        let alert: Alert = serde_json::from_str(&summary)
            .map_err(|e| StoreError::Corrupt(format!("alert {id}: {e}")))?;
        Ok(StoredAlert {
            status: AlertStatus::parse(&status).unwrap_or(alert.status),
            alert,
            reviewed_by,
            reviewed_at: reviewed_at.map(from_ms),
        })
    })
    .transpose()
}

pub(crate) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn from_ms(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database under `state_dir`, upgrading
    /// an older one to [`SCHEMA_VERSION`] and refusing a newer one.
    pub fn open(state_dir: &Path) -> Result<Store> {
        Store::open_with(state_dir, MIGRATIONS)
    }

    fn open_with(state_dir: &Path, migrations: &[Migration]) -> Result<Store> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("earlywarn.db");
        let known = migrations.len() as u32;
        if let Some(found) = version_in_header(&path)
            && found > known
        {
            return Err(StoreError::TooNew { path, found, known });
        }
        let mut conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // The header can lag behind a WAL not yet checkpointed: ask SQLite too,
        // before anything (even the journal mode) is written.
        let found = user_version(&conn)?;
        if found > known {
            return Err(StoreError::TooNew { path, found, known });
        }
        // WAL lets the delivery worker read while a file commits; FULL makes a
        // commit durable before we acknowledge the file by moving it.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        bring_up_to_date(&mut conn, &path, migrations)?;
        restrict_to_owner(state_dir, &path);
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads all rule state into memory (at start and after a failed commit).
    pub fn load_engine_state(&self) -> Result<EngineState> {
        let mut state = EngineState::default();
        let mut stmt = self
            .conn
            .prepare("SELECT rule_id, group_key, kind, data FROM rule_state")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(2)?;
            let data: String = row.get(3)?;
            state
                .load_row(&kind, row.get(0)?, row.get(1)?, &data)
                .map_err(StoreError::Corrupt)?;
        }
        Ok(state)
    }

    /// Whether a file with this content was already processed for the feed.
    pub fn file_seen(&self, feed: &str, sha256: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM files WHERE feed = ?1 AND sha256 = ?2 AND outcome IN ('processed', 'duplicate') LIMIT 1",
                params![feed, sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Starts the transaction of one file.
    pub fn begin(&mut self) -> Result<FileTx<'_>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        Ok(FileTx { tx })
    }

    /// Records a file that was refused whole, so `status` can show it.
    pub fn record_rejected_file(&mut self, file: &FileRecord) -> Result<()> {
        let tx = self.begin()?;
        tx.record_file(file)?;
        tx.commit()
    }

    /// Records a small fact about the daemon (last reload and its error) for `status`.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Stores an alert built outside a file (a self-alert) with its emails, in one transaction.
    pub fn store_alert(
        &mut self,
        alert: &Alert,
        emails: &[(String, RenderedEmail)],
        now: Timestamp,
    ) -> Result<()> {
        let tx = self.begin()?;
        tx.insert_alert(alert, &serde_json::to_string(alert).unwrap_or_default())?;
        for (partner, email) in emails {
            tx.enqueue(
                &alert.id,
                partner,
                Audience::Notify,
                Purpose::Alert,
                email,
                now,
            )?;
        }
        tx.commit()
    }

    // ------------------------------------------------------------ outbox

    /// Pending outbox rows due at `now`: critical first, then warning, then
    /// info (SPEC §7), each oldest first, so a flood of lesser alerts cannot
    /// hold a critical one back.
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxItem>> {
        // One indexed range per priority (status, priority, next_attempt_at):
        // a single ORDER BY priority would have to step over every row of a
        // higher priority that is waiting for its retry.
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, alert_id, partner_id, message_id, mail_from, COALESCE(remaining_recipients, recipients), message, attempts, failed_recipients IS NOT NULL
             FROM outbox WHERE status = 'pending' AND priority = ?1 AND next_attempt_at <= ?2
             ORDER BY next_attempt_at, id LIMIT ?3",
        )?;
        let mut out = Vec::new();
        for priority in PRIORITIES {
            if out.len() >= limit {
                break;
            }
            let wanted = (limit - out.len()) as i64;
            let rows = stmt.query_map(params![priority, ms(now), wanted], |r| {
                let recipients: String = r.get(5)?;
                Ok(OutboxItem {
                    id: r.get(0)?,
                    alert_id: r.get(1)?,
                    partner_id: r.get(2)?,
                    message_id: r.get(3)?,
                    mail_from: r.get(4)?,
                    recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                    message: r.get(6)?,
                    attempts: r.get::<_, i64>(7)? as u32,
                    has_failed_addresses: r.get(8)?,
                    priority,
                })
            })?;
            for row in rows {
                out.push(row?);
            }
        }
        Ok(out)
    }

    /// When the next pending row becomes due, if any.
    pub fn next_due(&self) -> Result<Option<Timestamp>> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(v.map(from_ms))
    }

    /// When row `id` was first handed to the transport: recorded as `now` on
    /// the first call, and that first time returned on every later one, so
    /// every retry of the email carries the same `Date` (SPEC §7).
    ///
    /// Written without waiting for an fsync ([`RelaxedSync`]): a process crash
    /// or kill keeps it (it is in the WAL, in the OS's page cache), the next
    /// `FULL` commit on any connection makes it durable, and a power cut
    /// before that only means a retry carries a later `Date`.
    pub fn hand_off_time(&self, id: i64, now: Timestamp) -> Result<Timestamp> {
        let relaxed = RelaxedSync::start(&self.conn)?;
        self.conn.execute(
            "UPDATE outbox SET handed_off_at = ?2 WHERE id = ?1 AND handed_off_at IS NULL",
            params![id, ms(now)],
        )?;
        relaxed.end()?;
        let at: Option<i64> = self
            .conn
            .query_row(
                "SELECT handed_off_at FROM outbox WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(at.map_or(now, from_ms))
    }

    /// The Message-ID of the first email `partner_id` got in `thread`, to reply to.
    pub fn first_in_thread(&self, thread: &str, partner_id: &str) -> Result<Option<String>> {
        Ok(first_in_thread(&self.conn, thread, partner_id)?)
    }

    pub fn mark_sent(&self, id: i64, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?2, last_error = NULL WHERE id = ?1",
            params![id, ms(now)],
        )?;
        Ok(())
    }

    pub fn mark_retry(&self, id: i64, next_attempt_at: Timestamp, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, ms(next_attempt_at), error],
        )?;
        Ok(())
    }

    pub fn mark_failed(&self, id: i64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    /// Records what one exchange did to a row: which addresses are still
    /// owed, which refused (added to those already refused), the row's new
    /// status, and when it was first delivered to anyone. One transaction.
    pub fn record_outcome(&self, id: i64, outcome: &OutboxOutcome) -> Result<()> {
        // IMMEDIATE: a read that later writes would fail at once (SQLITE_BUSY)
        // if another process wrote in between; taking the write lock first waits.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut failed: Vec<FailedAddress> = tx
            .query_row(
                "SELECT failed_recipients FROM outbox WHERE id = ?1",
                [id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .map(failed_of)
            .unwrap_or_default();
        for f in &outcome.newly_failed {
            failed.retain(|old| old.address != f.address);
            failed.push(f.clone());
        }
        let failed_json = if failed.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&failed).unwrap_or_default())
        };
        let remaining_json = outcome
            .remaining
            .as_ref()
            .map(|r| serde_json::to_string(r).unwrap_or_default());
        tx.execute(
            "UPDATE outbox SET status = ?2, attempts = attempts + 1,
                 next_attempt_at = COALESCE(?3, next_attempt_at),
                 last_error = ?4,
                 sent_at = COALESCE(sent_at, ?5),
                 remaining_recipients = COALESCE(?6, remaining_recipients),
                 failed_recipients = ?7
             WHERE id = ?1",
            params![
                id,
                outcome.status.as_str(),
                outcome.next_attempt_at.map(ms),
                outcome.last_error,
                outcome.delivered_at.map(ms),
                remaining_json,
                failed_json,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Makes every pending row that waits for a retry due at `now` (the mail
    /// server answers again). Returns how many.
    pub fn make_waiting_due(&self, now: Timestamp) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?1 WHERE status = 'pending' AND next_attempt_at > ?1",
            [ms(now)],
        )?)
    }

    /// The delivery configuration fault in force, if any (set by the outbox
    /// worker; read by `status` and `/metrics` from other processes).
    pub fn delivery_fault(&self) -> Result<Option<DeliveryFault>> {
        Ok(self
            .meta(DELIVERY_FAULT_KEY)?
            .filter(|v| !v.is_empty())
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    pub fn set_delivery_fault(&self, fault: Option<&DeliveryFault>) -> Result<()> {
        let value = fault
            .map(|f| serde_json::to_string(f).unwrap_or_default())
            .unwrap_or_default();
        self.set_meta(DELIVERY_FAULT_KEY, &value)
    }

    /// Outbox rows, newest first: all, or only failed ones (`failed`), at most `limit`.
    pub fn outbox_list(&self, failed_only: bool, limit: usize) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {OUTBOX_ROW_COLUMNS} FROM outbox {} ORDER BY id DESC LIMIT ?1",
            if failed_only {
                "WHERE status = 'failed'"
            } else {
                ""
            }
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([limit as i64], outbox_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// One outbox row by its id.
    pub fn outbox_row(&self, id: i64) -> Result<Option<OutboxRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {OUTBOX_ROW_COLUMNS} FROM outbox WHERE id = ?1"),
                [id],
                outbox_row,
            )
            .optional()?)
    }

    /// Every outbox row of an alert, its id compared without case (`ew-abc` finds `EW-ABC`).
    pub fn outbox_rows_of_alert(&self, alert_id: &str) -> Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {OUTBOX_ROW_COLUMNS} FROM outbox WHERE alert_id = ?1 COLLATE NOCASE ORDER BY id"
        ))?;
        let rows = stmt.query_map([alert_id], outbox_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Puts failed rows back in the queue, due at `now`, attempts reset: each
    /// owes the email again to the addresses that refused it and to those it
    /// was still owed, never to those that accepted it. Rows that are not
    /// failed are left alone. Returns the rows requeued, as they now are.
    pub fn requeue_failed(&self, ids: &[i64], now: Timestamp) -> Result<Vec<OutboxRow>> {
        // IMMEDIATE: a read that later writes would fail at once (SQLITE_BUSY)
        // if another process wrote in between; taking the write lock first waits.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut done = Vec::new();
        for &id in ids {
            let row = tx
                .query_row(
                    "SELECT status, COALESCE(remaining_recipients, recipients), failed_recipients FROM outbox WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()?;
            let Some((status, owed, failed)) = row else {
                continue;
            };
            if status != "failed" {
                continue;
            }
            let mut owed: Vec<String> = serde_json::from_str(&owed).unwrap_or_default();
            for f in failed_of(failed) {
                if !owed.contains(&f.address) {
                    owed.push(f.address);
                }
            }
            tx.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, last_error = NULL,
                     remaining_recipients = ?3, failed_recipients = NULL
                 WHERE id = ?1",
                params![id, ms(now), serde_json::to_string(&owed).unwrap_or_default()],
            )?;
            done.push(id);
        }
        tx.commit()?;
        let mut rows = Vec::new();
        for id in done {
            rows.extend(self.outbox_row(id)?);
        }
        Ok(rows)
    }

    /// Ids of every failed row, oldest first.
    pub fn failed_outbox_ids(&self) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM outbox INDEXED BY outbox_by_status WHERE status = 'failed' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    // ------------------------------------------------------------ status

    /// Everything `earlywarn status` shows. Every query here is an index range
    /// or lookup (see the indexes in `SCHEMA_V1`), so it stays fast with millions
    /// of file, alert and outbox rows: a producer can make those in minutes.
    pub fn status(&self, now: Timestamp) -> Result<StatusReport> {
        let c = &self.conn;
        let feeds = self.last_file_per_feed()?;
        let outbox = self.outbox_counts()?;
        let mut failures = Vec::new();
        {
            let mut stmt = c.prepare(
                "SELECT alert_id, partner_id, attempts, COALESCE(last_error, ''), status, failed_recipients FROM outbox INDEXED BY outbox_problems
                 WHERE status = 'failed' OR (status = 'pending' AND attempts > 0)
                 ORDER BY id DESC LIMIT 20",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(DeliveryProblem {
                    alert_id: r.get(0)?,
                    partner_id: r.get(1)?,
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    permanent: r.get::<_, String>(4)? == "failed",
                    failed_addresses: failed_of(r.get(5)?)
                        .into_iter()
                        .map(|f| f.address)
                        .collect(),
                })
            })?;
            for r in rows {
                failures.push(r?);
            }
        }
        let mut rejected = Vec::new();
        {
            let since = ms(now) - 7 * 86_400_000;
            // The id bound stops the walk down files_with_problems at the 7-day
            // line even when no problem is recent: it is the id of the first file
            // inside the window (files_by_time), ids and times rising together.
            let mut stmt = c.prepare(
                "SELECT feed, name, processed_at, outcome, COALESCE(reason, ''), rejected_rows FROM files
                 WHERE (outcome = 'rejected' OR rejected_rows > 0)
                   AND id >= COALESCE((SELECT id FROM files INDEXED BY files_by_time WHERE processed_at >= ?1
                                       ORDER BY processed_at LIMIT 1), 9223372036854775807)
                   AND processed_at >= ?1
                 ORDER BY id DESC LIMIT 20",
            )?;
            let rows = stmt.query_map([since], |r| {
                Ok(RejectedFile {
                    feed: r.get(0)?,
                    name: r.get(1)?,
                    at: from_ms(r.get(2)?),
                    whole_file: r.get::<_, String>(3)? == "rejected",
                    reason: r.get(4)?,
                    rejected_rows: r.get(5)?,
                })
            })?;
            for r in rows {
                rejected.push(r?);
            }
        }
        let recent_alerts = self.alerts_with_status(&[], 20)?;
        let mut open_deadlines = Vec::new();
        {
            let mut stmt =
                c.prepare("SELECT rule_id, data FROM rule_state INDEXED BY rule_state_by_kind WHERE kind = 'deadline'")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (rule_id, data) = row?;
                let d: OpenDeadline = serde_json::from_str(&data)
                    .map_err(|e| StoreError::Corrupt(format!("deadline of {rule_id}: {e}")))?;
                if !d.escalated {
                    open_deadlines.push(DeadlineRow {
                        rule_id,
                        key: d.key,
                        opened_at: d.opened_at,
                        due: d.due,
                    });
                }
            }
            open_deadlines.sort_by_key(|d| d.due);
        }
        let in_review: i64 = c.query_row(
            "SELECT COUNT(*) FROM alerts INDEXED BY alerts_by_status WHERE status = 'in_review'",
            [],
            |r| r.get(0),
        )?;
        let rules = RulesStatus {
            loaded: self.meta("rules_loaded")?.and_then(|v| v.parse().ok()),
            // Written only by the daemon, from its own serialisation; a
            // database from before it was recorded has none.
            in_force: self
                .meta("rules_in_force")?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default(),
            last_reload_at: self.meta("last_reload_at")?,
            last_reload_error: self.meta("last_reload_error")?.filter(|e| !e.is_empty()),
            last_refused_at: self.meta("last_refused_at")?,
            last_refused_error: self.meta("last_refused_error")?.filter(|e| !e.is_empty()),
        };
        let paused_feeds = {
            let mut stmt = c.prepare(
                "SELECT substr(key, 13), value FROM meta WHERE key LIKE 'feed_paused.%' AND value != '' ORDER BY key",
            )?;
            stmt.query_map([], |r| {
                Ok(PausedFeed {
                    feed: r.get(0)?,
                    reason: r.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        Ok(StatusReport {
            rules,
            paused_feeds,
            open_deadlines,
            in_review,
            feeds,
            outbox_pending: outbox.pending,
            outbox_failed: outbox.failed,
            oldest_pending: outbox.oldest_pending,
            delivery_problems: failures,
            delivery_fault: self.delivery_fault()?,
            rejected,
            recent_alerts,
        })
    }

    /// The newest file of each feed on record. The recursive walk visits each
    /// distinct feed through `files_by_feed` (a skip-scan by hand), so the cost
    /// grows with the number of feeds, not of files.
    pub fn last_file_per_feed(&self) -> Result<Vec<FeedStatus>> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE feeds(feed) AS (
                 SELECT MIN(feed) FROM files
                 UNION ALL
                 SELECT (SELECT MIN(feed) FROM files WHERE feed > feeds.feed) FROM feeds
                 WHERE feeds.feed IS NOT NULL
             )
             SELECT f.feed, f.name, f.processed_at, f.outcome
             FROM feeds JOIN files f ON f.id = (SELECT MAX(id) FROM files WHERE feed = feeds.feed)
             ORDER BY f.feed",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(FeedStatus {
                feed: r.get(0)?,
                last_file: r.get(1)?,
                last_at: from_ms(r.get(2)?),
                last_outcome: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Outbox depth and the oldest email still waiting, from `outbox_by_status`
    /// (sent emails, however many, are not read).
    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        let count = |status: &str| -> Result<i64> {
            Ok(self.conn.query_row(
                "SELECT COUNT(*) FROM outbox INDEXED BY outbox_by_status WHERE status = ?1",
                [status],
                |r| r.get(0),
            )?)
        };
        let oldest: Option<i64> = self.conn.query_row(
            "SELECT MIN(created_at) FROM outbox INDEXED BY outbox_by_status WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?;
        Ok(OutboxCounts {
            pending: count("pending")?,
            failed: count("failed")?,
            oldest_pending: oldest.map(from_ms),
        })
    }

    /// A stored alert with its review record. Ids are case-insensitive on
    /// input (SPEC §2): `ew-abc` finds `EW-ABC`.
    pub fn alert(&self, id: &str) -> Result<Option<StoredAlert>> {
        stored_alert(&self.conn, &crate::review::normalise_id(id))
    }

    /// Alerts by status (newest first), for `alerts list`.
    pub fn alerts_with_status(
        &self,
        statuses: &[AlertStatus],
        limit: usize,
    ) -> Result<Vec<AlertRow>> {
        // Filtered in SQL: filtering a fixed number of newest rows afterwards
        // would lose a draft behind a flood of newer alerts.
        let wanted: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let map = |r: &rusqlite::Row<'_>| {
            Ok(AlertRow {
                id: r.get(0)?,
                rule_id: r.get(1)?,
                district: r.get(2)?,
                severity: r.get(3)?,
                status: r.get(4)?,
                created_at: from_ms(r.get(5)?),
                event_count: r.get(6)?,
            })
        };
        let mut out = Vec::new();
        if wanted.is_empty() {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, rule_id, COALESCE(district, ''), severity, status, created_at, event_count FROM alerts
                 ORDER BY created_at DESC, id LIMIT ?1",
            )?;
            for row in stmt.query_map([limit as i64], map)? {
                out.push(row?);
            }
            return Ok(out);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, rule_id, COALESCE(district, ''), severity, status, created_at, event_count FROM alerts
             WHERE status = ?1 ORDER BY created_at DESC, id LIMIT ?2",
        )?;
        for status in wanted {
            for row in stmt.query_map(params![status, limit as i64], map)? {
                out.push(row?);
            }
        }
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        out.truncate(limit);
        Ok(out)
    }

    /// Outbox rows of one alert: partner, status, attempts, audience, last error.
    pub fn deliveries_of(&self, alert_id: &str) -> Result<Vec<DeliveryRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT partner_id, audience, status, attempts, last_error, sent_at, purpose FROM outbox WHERE alert_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([alert_id], |r| {
            Ok(DeliveryRow {
                partner_id: r.get(0)?,
                audience: r.get(1)?,
                purpose: r.get(6)?,
                status: r.get(2)?,
                attempts: r.get(3)?,
                last_error: r.get(4)?,
                sent_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// `PRAGMA integrity_check`, for tests and ops.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// One file's transaction.
pub struct FileTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl FileTx<'_> {
    /// Notes a record; false when the same record (id and content) was seen before.
    pub fn record_is_new(
        &self,
        feed: &str,
        record_id: &str,
        fingerprint: &[u8; 16],
    ) -> Result<bool> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO seen_records (feed, record_id, fingerprint) VALUES (?1, ?2, ?3)",
        )?;
        Ok(stmt.execute(params![feed, record_id, &fingerprint[..]])? == 1)
    }

    pub fn apply(&self, changes: &[StateChange]) -> Result<()> {
        let mut upsert = self.tx.prepare_cached(
            "INSERT INTO rule_state (rule_id, group_key, kind, data) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (rule_id, group_key, kind) DO UPDATE SET data = excluded.data",
        )?;
        let mut delete = self.tx.prepare_cached(
            "DELETE FROM rule_state WHERE rule_id = ?1 AND group_key = ?2 AND kind = ?3",
        )?;
        for change in changes {
            let kind = change.kind.as_str();
            match &change.data {
                Some(data) => upsert.execute(params![
                    change.key.rule_id,
                    change.key.group_key,
                    kind,
                    data
                ])?,
                None => delete.execute(params![change.key.rule_id, change.key.group_key, kind])?,
            };
        }
        Ok(())
    }

    pub fn insert_alert(&self, alert: &Alert, summary: &str) -> Result<()> {
        self.tx.execute(
            "INSERT INTO alerts (id, rule_id, district, severity, status, created_at, event_count, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                alert.id,
                alert.rule_id,
                alert.district,
                alert.severity.as_str(),
                alert.status.as_str(),
                ms(alert.created_at),
                alert.event_count as i64,
                summary
            ],
        )?;
        Ok(())
    }

    /// The Message-ID of the first email `partner_id` got in `thread`,
    /// including rows written earlier in this transaction.
    pub fn first_in_thread(&self, thread: &str, partner_id: &str) -> Result<Option<String>> {
        Ok(first_in_thread(&self.tx, thread, partner_id)?)
    }

    /// Puts one rendered email in the outbox, due now.
    pub fn enqueue(
        &self,
        alert_id: &str,
        partner_id: &str,
        audience: Audience,
        purpose: Purpose,
        email: &RenderedEmail,
        now: Timestamp,
    ) -> Result<()> {
        let recipients =
            serde_json::to_string(&email.to).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The priority comes from the alert's row, written earlier in this transaction.
        let mut insert = self.tx.prepare_cached(concat!(
            "INSERT INTO outbox (alert_id, partner_id, audience, message_id, mail_from, recipients, subject, message, status, next_attempt_at, created_at, thread, purpose, priority)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?9, ?10, ?11, ",
            priority_of_alert!("?1"),
            ")
             ON CONFLICT (alert_id, partner_id, purpose) DO NOTHING"
        ))?;
        insert.execute(params![
            alert_id,
            partner_id,
            match audience {
                Audience::Notify => "notify",
                Audience::Review => "review",
            },
            email.message_id,
            email.from,
            recipients,
            email.subject,
            email.bytes,
            ms(now),
            email.thread,
            purpose.key()
        ])?;
        Ok(())
    }

    pub fn record_file(&self, f: &FileRecord) -> Result<()> {
        self.tx.execute(
            "INSERT INTO files (feed, name, sha256, bytes, encoding, outcome, reason, rows, events, duplicates, rejected_rows, alerts, processed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                f.feed,
                f.name,
                f.sha256,
                f.bytes as i64,
                f.encoding,
                f.outcome,
                f.reason,
                f.rows as i64,
                f.events as i64,
                f.duplicates as i64,
                f.rejected_rows as i64,
                f.alerts as i64,
                ms(f.processed_at)
            ],
        )?;
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }

    /// An audit row committed with the file (a push's, SPEC §11).
    pub fn append_audit(
        &self,
        at: Timestamp,
        actor: &crate::audit::Actor,
        action: crate::audit::Action,
        detail: &serde_json::Value,
    ) -> Result<()> {
        audit::append(&self.tx, at, actor, action, None, detail)
    }

    /// Forgets a file's interrupted tries: its processing ended, in this transaction.
    pub fn end_attempt(&self, feed: &str, sha256: &str) -> Result<()> {
        self.tx.execute(
            "DELETE FROM file_attempts WHERE feed = ?1 AND sha256 = ?2",
            params![feed, sha256],
        )?;
        Ok(())
    }
}

impl Store {
    /// Records that processing of a file's content starts now, and returns
    /// how many earlier tries never ended (crashed or killed).
    ///
    /// Written without waiting for an fsync ([`RelaxedSync`]): the count must
    /// survive the process crashing or being killed while it reads the file,
    /// and it does (the commit is in the WAL, in the OS's page cache). Only a
    /// power cut before the next `FULL` commit (the file's own, which syncs
    /// the WAL and so everything before it) can lose one count, and then the
    /// file is merely tried once more before it is set aside.
    pub fn begin_attempt(&mut self, feed: &str, sha256: &str) -> Result<u32> {
        let relaxed = RelaxedSync::start(&self.conn)?;
        // One statement, so one implicit transaction: the count read is the one written.
        let tries: u32 = self.conn.query_row(
            "INSERT INTO file_attempts (feed, sha256, tries) VALUES (?1, ?2, 1)
             ON CONFLICT (feed, sha256) DO UPDATE SET tries = tries + 1
             RETURNING tries",
            params![feed, sha256],
            |r| r.get(0),
        )?;
        relaxed.end()?;
        Ok(tries.saturating_sub(1))
    }

    /// Forgets a file's tries when its processing ended without a commit of
    /// its own (a clean stop, a file that changed while read).
    pub fn end_attempt(&mut self, feed: &str, sha256: &str) -> Result<()> {
        let tx = self.begin()?;
        tx.end_attempt(feed, sha256)?;
        tx.commit()
    }
}

/// `PRAGMA synchronous = NORMAL` on one connection for one write that need
/// not wait for an fsync, `FULL` again when it ends or is dropped (an error,
/// a panic), so every other write, above all a file's transaction, stays
/// `FULL`. Made and ended outside any transaction: SQLite applies the setting
/// at commit.
///
/// Why NORMAL is enough for such a write (SQLite's `PRAGMA synchronous` and
/// WAL documentation): in WAL mode a NORMAL commit is written to the WAL but
/// not synced; "transactions are durable across application crashes
/// regardless of the synchronous setting", and only a power loss or OS crash
/// may roll it back. The WAL is one append-only file, so the fsync a later
/// `FULL` commit makes of it, on any connection, makes every earlier frame
/// durable too; a checkpoint syncs the WAL before copying it back.
#[must_use = "the connection is NORMAL until this is ended or dropped"]
pub(crate) struct RelaxedSync<'c> {
    conn: &'c Connection,
    restored: bool,
}

impl<'c> RelaxedSync<'c> {
    pub(crate) fn start(conn: &'c Connection) -> Result<Self> {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(RelaxedSync {
            conn,
            restored: false,
        })
    }

    /// Back to `FULL`, saying whether that worked (a drop can only log it).
    pub(crate) fn end(mut self) -> Result<()> {
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        // On failure the drop tries once more, and logs it.
        self.restored = restored.is_ok();
        Ok(restored?)
    }
}

impl Drop for RelaxedSync<'_> {
    fn drop(&mut self) {
        if !self.restored
            && let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL")
        {
            tracing::error!(error = %e, "Cannot set the database connection back to synchronous = FULL");
        }
    }
}

/// What is recorded about each file.
#[derive(Debug, Clone)]
pub struct FileRecord {
    pub feed: String,
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub encoding: Option<String>,
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub rows: u64,
    pub events: u64,
    pub duplicates: u64,
    pub rejected_rows: u64,
    pub alerts: u64,
    pub processed_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub alert_id: String,
    pub partner_id: String,
    pub message_id: String,
    pub mail_from: String,
    /// The addresses still owed the email (all of them, until some accepted).
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    pub attempts: u32,
    /// Some address refused it in an earlier attempt: once the rest are
    /// served, the row is failed, not sent.
    pub has_failed_addresses: bool,
    /// `outbox.priority`: 0 critical, then warning, then info. The outbox
    /// starts no email while a more urgent one is in flight.
    pub priority: i64,
}

/// What the metrics gauges and `status` say about the outbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxCounts {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending: Option<Timestamp>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadlineRow {
    pub rule_id: String,
    pub key: String,
    pub opened_at: Timestamp,
    pub due: Timestamp,
}

/// One rule in force, as the daemon recorded it at its last successful load
/// (the `meta` key `rules_in_force`, a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleInForce {
    pub id: String,
    /// The rule's kind (`match`, `threshold`, ...).
    pub kind: String,
    pub severity: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RulesStatus {
    /// How many rules the running daemon has in force.
    pub loaded: Option<u64>,
    /// Which: each rule in force, in load order (empty before the daemon ran).
    pub in_force: Vec<RuleInForce>,
    pub last_reload_at: Option<String>,
    /// The errors of the last refused reload, if the last reload was refused.
    pub last_reload_error: Option<String>,
    /// When a reload was last refused, even if a later one succeeded.
    pub last_refused_at: Option<String>,
    /// What that refused reload's errors were.
    pub last_refused_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub rules: RulesStatus,
    /// Feeds whose folders cannot be trusted (a link or someone else's
    /// `processed/` or `rejected/`): nothing of theirs is read until fixed.
    pub paused_feeds: Vec<PausedFeed>,
    pub open_deadlines: Vec<DeadlineRow>,
    /// Alerts waiting for a reviewer.
    pub in_review: i64,
    pub feeds: Vec<FeedStatus>,
    pub outbox_pending: i64,
    pub outbox_failed: i64,
    pub oldest_pending: Option<Timestamp>,
    pub delivery_problems: Vec<DeliveryProblem>,
    /// A configuration fault (AUTH refused, TLS failure, no STARTTLS) that
    /// holds every delivery back until the `[mail]` settings are fixed.
    pub delivery_fault: Option<DeliveryFault>,
    pub rejected: Vec<RejectedFile>,
    pub recent_alerts: Vec<AlertRow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PausedFeed {
    pub feed: String,
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedStatus {
    pub feed: String,
    pub last_file: String,
    pub last_at: Timestamp,
    pub last_outcome: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryProblem {
    pub alert_id: String,
    pub partner_id: String,
    pub attempts: i64,
    pub error: String,
    pub permanent: bool,
    /// Addresses of the partner that refused the email (5xx at RCPT).
    pub failed_addresses: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedFile {
    pub feed: String,
    pub name: String,
    pub at: Timestamp,
    pub whole_file: bool,
    pub reason: String,
    pub rejected_rows: i64,
}

/// An alert as stored, with who decided its review and when.
#[derive(Debug, Clone)]
pub struct StoredAlert {
    pub alert: Alert,
    pub status: AlertStatus,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    pub partner_id: String,
    pub audience: String,
    /// `alert`, `draft`, `update-N`, `reminder-N`, `withdrawn`.
    pub purpose: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<Timestamp>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertRow {
    pub id: String,
    pub rule_id: String,
    pub district: String,
    pub severity: String,
    pub status: String,
    pub created_at: Timestamp,
    pub event_count: i64,
}

/// The `meta` key of the delivery configuration fault (JSON [`DeliveryFault`]; empty: none).
const DELIVERY_FAULT_KEY: &str = "delivery_fault";

/// The columns [`outbox_row`] reads, in its order.
const OUTBOX_ROW_COLUMNS: &str = "id, alert_id, partner_id, audience, status, attempts, next_attempt_at, last_error, recipients, COALESCE(remaining_recipients, recipients), failed_recipients, created_at, sent_at";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
    let status: String = r.get(4)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        alert_id: r.get(1)?,
        partner_id: r.get(2)?,
        audience: r.get(3)?,
        next_attempt_at: (status == "pending").then(|| from_ms(r.get(6).unwrap_or(0))),
        status,
        attempts: r.get(5)?,
        last_error: r.get(7)?,
        recipients: list(r.get(8)?),
        owed: list(r.get(9)?),
        failed_addresses: failed_of(r.get(10)?),
        created_at: from_ms(r.get(11)?),
        sent_at: r.get::<_, Option<i64>>(12)?.map(from_ms),
    })
}

/// The refused addresses stored in `failed_recipients` (none for NULL or unreadable JSON).
fn failed_of(json: Option<String>) -> Vec<FailedAddress> {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

/// An address that refused an email for good (a 5xx answer to RCPT TO).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedAddress {
    pub address: String,
    pub error: String,
}

/// An outbox row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxStatus {
    Pending,
    Sent,
    Failed,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Failed => "failed",
        }
    }
}

/// What one delivery attempt changes on its row ([`Store::record_outcome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxOutcome {
    pub status: OutboxStatus,
    /// When some address accepted the email (kept if the row already has one).
    pub delivered_at: Option<Timestamp>,
    /// The addresses still owed the email; `None`: unchanged.
    pub remaining: Option<Vec<String>>,
    /// Addresses that refused it in this attempt.
    pub newly_failed: Vec<FailedAddress>,
    /// The next try, for a row still pending; `None`: unchanged.
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// A configuration fault of the mail settings, as `status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryFault {
    pub since: Timestamp,
    pub reason: String,
}

/// One outbox row as `earlywarn outbox list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRow {
    /// The delivery id (`earlywarn outbox retry ID`).
    pub id: i64,
    pub alert_id: String,
    pub partner_id: String,
    pub audience: String,
    pub status: String,
    pub attempts: i64,
    /// When it is tried next (pending rows only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// Every address of the partner's email.
    pub recipients: Vec<String>,
    /// The addresses still owed it.
    pub owed: Vec<String>,
    pub failed_addresses: Vec<FailedAddress>,
    pub created_at: Timestamp,
    pub sent_at: Option<Timestamp>,
}

impl AlertStatus {
    /// Helper so callers do not match on strings.
    pub fn is_review(self) -> bool {
        self == AlertStatus::InReview
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::engine::{Cooldown, GroupRef, StateKind};

    #[test]
    fn state_and_outbox_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            let tx = store.begin().unwrap();
            assert!(tx.record_is_new("f", "S1", &[1; 16]).unwrap());
            assert!(!tx.record_is_new("f", "S1", &[1; 16]).unwrap());
            assert!(
                tx.record_is_new("f", "S1", &[2; 16]).unwrap(),
                "an update to a record is new"
            );
            let key = GroupRef {
                rule_id: "r".into(),
                group_key: "bolton".into(),
            };
            let cd = Cooldown {
                last_alert_at: now,
                suppressed: 3,
            };
            let data = Some(serde_json::to_string(&cd).unwrap());
            tx.apply(&[StateChange {
                kind: StateKind::Cooldown,
                key,
                data,
            }])
            .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let state = store.load_engine_state().unwrap();
        assert_eq!(state.cooldowns.values().next().unwrap().suppressed, 3);
        assert_eq!(store.integrity_check().unwrap(), "ok");
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    fn test_alert(id: &str, severity: crate::config::Severity, now: Timestamp) -> Alert {
        Alert {
            id: id.into(),
            rule_id: "r".into(),
            group: Default::default(),
            district: Some("Bolton".into()),
            severity,
            created_at: now,
            event_count: 1,
            suppressed_before: 0,
            events: Vec::new(),
            status: AlertStatus::Sent,
            trigger: Default::default(),
            assessment: None,
            reasons: Vec::new(),
        }
    }

    fn test_email(id: &str) -> RenderedEmail {
        RenderedEmail {
            subject: format!("subject {id}"),
            text: String::new(),
            html: String::new(),
            message_id: format!("<{id}.p@example.org>"),
            thread: format!("alert\u{1f}{id}"),
            from: "e@example.org".into(),
            to: vec!["p@example.org".into()],
            bytes: b"message".to_vec(),
        }
    }

    #[test]
    fn version_5_gives_every_outbox_row_a_purpose_and_keeps_it_pending() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        {
            let mut v4 = Store::open_with(dir.path(), &MIGRATIONS[..4]).unwrap();
            let tx = v4.begin().unwrap();
            let alert = test_alert("EW-A", crate::config::Severity::Critical, now);
            tx.insert_alert(&alert, &serde_json::to_string(&alert).unwrap())
                .unwrap();
            // Version 4's enqueue had no purpose: write its rows as it did.
            for (partner, audience) in [("p", "notify"), ("p", "review"), ("q", "notify")] {
                tx.tx
                    .execute(
                        "INSERT INTO outbox (alert_id, partner_id, audience, message_id, mail_from, recipients, subject, message, status, next_attempt_at, created_at, thread, priority)
                         VALUES ('EW-A', ?1, ?2, ?1 || ?2, 'e@x', '[\"p@x\"]', 's', x'00', 'pending', 1, 1, 't', 0)",
                        params![partner, audience],
                    )
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        // Version 5 exactly: later steps add indexes of their own.
        let mut store = Store::open_with(dir.path(), &MIGRATIONS[..5]).unwrap();
        let rows: Vec<(i64, String, String, String, i64)> = store
            .conn
            .prepare("SELECT id, partner_id, audience, purpose, priority FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "p".into(), "notify".into(), "alert".into(), 0),
                (2, "p".into(), "review".into(), "draft".into(), 0),
                (3, "q".into(), "notify".into(), "alert".into(), 0),
            ]
        );
        assert_eq!(store.due(from_ms(1), 10).unwrap().len(), 3);
        let indexes: Vec<String> = store
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                "outbox_by_priority",
                "outbox_by_status",
                "outbox_by_thread",
                "outbox_due",
                "outbox_problems"
            ]
        );
        // An update to a partner that already has the alert is a row of its own now.
        let tx = store.begin().unwrap();
        let email = test_email("EW-A");
        tx.enqueue(
            "EW-A",
            "p",
            Audience::Notify,
            Purpose::Update(1),
            &email,
            now,
        )
        .unwrap();
        tx.enqueue(
            "EW-A",
            "p",
            Audience::Notify,
            Purpose::Update(1),
            &email,
            now,
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(store.outbox_rows_of_alert("EW-A").unwrap().len(), 4);
    }

    #[test]
    fn critical_alerts_leave_the_outbox_first_then_oldest_first() {
        use crate::config::Severity;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        // A flood of info and warning alerts, then a critical one, each a second later.
        let order = [
            ("EW-INFO1", Severity::Info),
            ("EW-WARN1", Severity::Warning),
            ("EW-INFO2", Severity::Info),
            ("EW-CRIT1", Severity::Critical),
            ("EW-WARN2", Severity::Warning),
            ("EW-CRIT2", Severity::Critical),
        ];
        for (i, (id, severity)) in order.iter().enumerate() {
            let at = t0
                .checked_add(jiff::SignedDuration::from_secs(i as i64))
                .unwrap();
            store
                .store_alert(
                    &test_alert(id, *severity, at),
                    &[("p".into(), test_email(id))],
                    at,
                )
                .unwrap();
        }
        let now = t0.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
        let ids =
            |items: Vec<OutboxItem>| items.into_iter().map(|i| i.alert_id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.due(now, 16).unwrap()),
            [
                "EW-CRIT1", "EW-CRIT2", "EW-WARN1", "EW-WARN2", "EW-INFO1", "EW-INFO2"
            ]
        );
        assert_eq!(
            ids(store.due(now, 3).unwrap()),
            ["EW-CRIT1", "EW-CRIT2", "EW-WARN1"]
        );
        // A critical email waiting for its retry does not hold back what is due.
        let first = store.due(now, 1).unwrap().remove(0);
        let later = now
            .checked_add(jiff::SignedDuration::from_secs(300))
            .unwrap();
        store.mark_retry(first.id, later, "451 try later").unwrap();
        let due = store.due(now, 2).unwrap();
        assert_eq!(ids(due.clone()), ["EW-CRIT2", "EW-WARN1"]);
        store.mark_sent(due[0].id, now).unwrap();
        assert_eq!(ids(store.due(later, 1).unwrap()), ["EW-CRIT1"]);
    }

    #[test]
    fn a_requeue_owes_the_email_only_to_the_addresses_that_refused_it() {
        use crate::config::Severity;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut email = test_email("EW-DUO");
        email.to = vec!["ok@example.org".into(), "dead@example.org".into()];
        store
            .store_alert(
                &test_alert("EW-DUO", Severity::Critical, now),
                &[("p".into(), email)],
                now,
            )
            .unwrap();
        let item = store.due(now, 1).unwrap().remove(0);
        assert_eq!(item.recipients, ["ok@example.org", "dead@example.org"]);
        let dead = FailedAddress {
            address: "dead@example.org".into(),
            error: "550 user unknown".into(),
        };
        store
            .record_outcome(
                item.id,
                &OutboxOutcome {
                    status: OutboxStatus::Failed,
                    delivered_at: Some(now),
                    remaining: Some(vec![]),
                    newly_failed: vec![dead.clone()],
                    next_attempt_at: None,
                    last_error: Some("refused by dead@example.org".into()),
                },
            )
            .unwrap();
        let failed = store.outbox_list(true, 10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].failed_addresses, [dead]);
        assert_eq!(store.outbox_counts().unwrap().failed, 1);
        // An alert id in any case finds its rows; a sent or pending row is never requeued.
        assert_eq!(store.outbox_rows_of_alert("ew-duo").unwrap().len(), 1);
        let later = now
            .checked_add(jiff::SignedDuration::from_secs(60))
            .unwrap();
        let requeued = store
            .requeue_failed(&store.failed_outbox_ids().unwrap(), later)
            .unwrap();
        assert_eq!(requeued.len(), 1);
        assert_eq!(requeued[0].owed, ["dead@example.org"]);
        assert!(requeued[0].failed_addresses.is_empty());
        let again = store.due(later, 1).unwrap().remove(0);
        assert_eq!(
            (
                again.recipients.as_slice(),
                again.attempts,
                again.has_failed_addresses
            ),
            (["dead@example.org".to_string()].as_slice(), 0, false)
        );
        assert!(
            store.requeue_failed(&[again.id], later).unwrap().is_empty(),
            "pending rows are left alone"
        );
        // A delivery fault is kept in the database for other processes to see.
        let fault = DeliveryFault {
            since: now,
            reason: "AUTH: 535".into(),
        };
        store.set_delivery_fault(Some(&fault)).unwrap();
        assert_eq!(
            Store::open(dir.path()).unwrap().delivery_fault().unwrap(),
            Some(fault)
        );
        store.set_delivery_fault(None).unwrap();
        assert_eq!(store.delivery_fault().unwrap(), None);
    }

    #[test]
    fn an_older_outbox_gains_priorities_from_its_alerts_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The outbox as earlier versions made it: no priority column.
            let conn = Connection::open(dir.path().join("earlywarn.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE alerts (id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, district TEXT, severity TEXT NOT NULL,
                    status TEXT NOT NULL, created_at INTEGER NOT NULL, event_count INTEGER NOT NULL, summary TEXT NOT NULL,
                    reviewed_by TEXT, reviewed_at INTEGER);
                 CREATE TABLE outbox (id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, partner_id TEXT NOT NULL,
                    audience TEXT NOT NULL, message_id TEXT NOT NULL, mail_from TEXT NOT NULL, recipients TEXT NOT NULL,
                    subject TEXT NOT NULL, message BLOB NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_at INTEGER NOT NULL, last_error TEXT, created_at INTEGER NOT NULL, sent_at INTEGER,
                    UNIQUE (alert_id, partner_id, audience));
                 INSERT INTO alerts VALUES ('EW-A', 'r', NULL, 'info', 'sent', 1, 1, '{}', NULL, NULL);
                 INSERT INTO alerts VALUES ('EW-B', 'r', NULL, 'critical', 'sent', 2, 1, '{}', NULL, NULL);
                 INSERT INTO outbox (alert_id, partner_id, audience, message_id, mail_from, recipients, subject, message,
                    status, next_attempt_at, created_at)
                    VALUES ('EW-A', 'p', 'notify', '<a>', 'e@x', '[\"p@x\"]', 's', x'00', 'pending', 1, 1),
                           ('EW-B', 'p', 'notify', '<b>', 'e@x', '[\"p@x\"]', 's', x'00', 'pending', 2, 2),
                           ('EW-GONE', 'p', 'notify', '<c>', 'e@x', '[\"p@x\"]', 's', x'00', 'pending', 3, 3);",
            )
            .unwrap();
            // A deadline's opening notice, already sent.
            let mut opened = test_alert("EW-OPEN", crate::config::Severity::Info, from_ms(4));
            opened.trigger = crate::alerts::Trigger::DeadlineOpened {
                key: "GMP-A".into(),
                due: from_ms(5),
                closed: false,
            };
            conn.execute(
                "INSERT INTO alerts VALUES ('EW-OPEN', 'r', NULL, 'info', 'sent', 4, 1, ?1, NULL, NULL)",
                [serde_json::to_string(&opened).unwrap()],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO outbox (alert_id, partner_id, audience, message_id, mail_from, recipients, subject, message,
                    status, next_attempt_at, created_at)
                    VALUES ('EW-OPEN', 'p', 'notify', '<open>', 'e@x', '[\"p@x\"]', 's', x'00', 'sent', 4, 4);",
            )
            .unwrap();
        }
        let mut overdue = test_alert("EW-LATE", crate::config::Severity::Info, from_ms(6));
        overdue.trigger = crate::alerts::Trigger::DeadlineOverdue {
            key: "gmp-a".into(),
            due: from_ms(5),
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        for _ in 0..2 {
            // Opened twice: the migration runs once and is a no-op the second time.
            let store = Store::open(dir.path()).unwrap();
            let ids: Vec<String> = store
                .due(now, 10)
                .unwrap()
                .into_iter()
                .map(|i| i.alert_id)
                .collect();
            assert_eq!(
                ids,
                ["EW-B", "EW-GONE", "EW-A"],
                "critical, then unknown (as warning), then info"
            );
            assert_eq!(store.outbox_counts().unwrap().pending, 3);
            // Each earlier row is its alert's own thread, with no hand-off recorded yet.
            assert_eq!(
                store
                    .first_in_thread("alert\u{1f}EW-B", "p")
                    .unwrap()
                    .as_deref(),
                Some("<b>")
            );
            let deadline = crate::alerts::render::thread_key(&overdue);
            assert_eq!(
                store.first_in_thread(&deadline, "p").unwrap().as_deref(),
                Some("<open>"),
                "a deadline opened before the upgrade is found by its escalation"
            );
        }
    }

    /// A step for the tests: version `n + 1` given SQL.
    const fn sql_step(sql: &'static str) -> Migration {
        Migration {
            what: "a test step",
            up: Up::Sql(sql),
        }
    }

    fn raw(dir: &Path) -> Connection {
        Connection::open(dir.join("earlywarn.db")).unwrap()
    }

    fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn copies_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".before-v"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn version_1_is_the_schema_of_release_0_1_0() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db-0.1.0/earlywarn.db");
        let old = tempfile::tempdir().unwrap();
        std::fs::copy(&fixture, old.path().join("earlywarn.db")).unwrap();
        let made_by_0_1_0 = schema_of(&raw(old.path()));
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open_with(fresh.path(), &MIGRATIONS[..1]).unwrap());
        assert_eq!(schema_of(&raw(fresh.path())), made_by_0_1_0);
    }

    #[test]
    fn a_fresh_database_is_made_at_the_latest_version_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(user_version(&raw(dir.path())).unwrap(), SCHEMA_VERSION);
        assert!(
            copies_in(dir.path()).is_empty(),
            "nothing to keep a copy of"
        );
    }

    #[test]
    fn a_version_2_step_runs_once_on_a_version_1_database_after_a_copy_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap();
            store.set_meta("kept", "yes").unwrap();
        }
        let v2 = [
            Migration {
                what: "the schema of release 0.1.0",
                up: Up::Code(adopt_release_0_1_0),
            },
            sql_step("ALTER TABLE outbox ADD COLUMN handed_off_at INTEGER;"),
        ];
        for _ in 0..2 {
            // The second open finds version 2: no step runs (the ALTER would fail).
            let store = Store::open_with(dir.path(), &v2).unwrap();
            assert_eq!(store.meta("kept").unwrap().as_deref(), Some("yes"));
        }
        let conn = raw(dir.path());
        assert_eq!(user_version(&conn).unwrap(), 2);
        let has_column: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'handed_off_at'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(has_column);
        assert_eq!(copies_in(dir.path()), ["earlywarn.db.before-v2"]);
        let copy = Connection::open(dir.path().join("earlywarn.db.before-v2")).unwrap();
        assert_eq!(
            user_version(&copy).unwrap(),
            1,
            "the copy is the old database"
        );
        let kept: String = copy
            .query_row("SELECT value FROM meta WHERE key = 'kept'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, "yes");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("earlywarn.db.before-v2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the copy holds the same data: owner only");
    }

    #[test]
    fn a_failing_step_leaves_the_database_at_its_old_version_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap());
        let before = schema_of(&raw(dir.path()));
        let broken = [
            Migration {
                what: "the schema of release 0.1.0",
                up: Up::Code(adopt_release_0_1_0),
            },
            sql_step("CREATE TABLE half_done (x INTEGER);"),
            // The third step fails after the second has changed the schema.
            sql_step(
                "ALTER TABLE outbox ADD COLUMN late INTEGER; INSERT INTO no_such_table VALUES (1);",
            ),
        ];
        let err = Store::open_with(dir.path(), &broken).err().unwrap();
        assert!(
            matches!(err, StoreError::Migration { from: 1, to: 3, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("left unchanged, at version 1"),
            "{err}"
        );
        let conn = raw(dir.path());
        assert_eq!(user_version(&conn).unwrap(), 1);
        assert_eq!(
            schema_of(&conn),
            before,
            "no step of the failed upgrade remains"
        );
        drop(conn);
        // And the version-1 binary still opens it.
        drop(Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap());
    }

    #[test]
    fn a_newer_database_is_refused_and_left_byte_for_byte_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        raw(dir.path())
            .pragma_update(None, "user_version", SCHEMA_VERSION + 6)
            .unwrap();
        let db = dir.path().join("earlywarn.db");
        let bytes = std::fs::read(&db).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            format!(
                "the database at {} was written by a newer earlywarn (schema version {}; this earlywarn knows up to {}). Install the newer earlywarn, or restore a backup.",
                db.display(),
                SCHEMA_VERSION + 6,
                SCHEMA_VERSION
            )
        );
        assert_eq!(std::fs::read(&db).unwrap(), bytes);
        assert!(!dir.path().join("earlywarn.db-wal").exists());
        assert!(copies_in(dir.path()).is_empty());
    }

    #[test]
    fn a_newer_version_still_in_the_wal_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        // A newer daemon still running: its version is in the WAL, not yet in the header.
        let newer = raw(dir.path());
        newer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        newer
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert_eq!(
            version_in_header(&dir.path().join("earlywarn.db")),
            Some(SCHEMA_VERSION)
        );
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }

    #[test]
    fn openers_at_the_same_time_upgrade_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap());
        static V2: [Migration; 2] = [
            Migration {
                what: "the schema of release 0.1.0",
                up: Up::Code(adopt_release_0_1_0),
            },
            // Fails if run twice: CREATE without IF NOT EXISTS.
            sql_step("CREATE TABLE upgraded (n INTEGER); INSERT INTO upgraded VALUES (1);"),
        ];
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        Store::open_with(dir.path(), &V2).map(drop)
                    })
                })
                .collect();
            for opener in openers {
                opener.join().unwrap().unwrap();
            }
        });
        let conn = raw(dir.path());
        assert_eq!(user_version(&conn).unwrap(), 2);
        let runs: i64 = conn
            .query_row("SELECT COUNT(*) FROM upgraded", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 1);
        assert_eq!(copies_in(dir.path()), ["earlywarn.db.before-v2"]);
    }

    #[test]
    fn an_upgrade_waits_for_a_writer_that_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap());
        static V2: [Migration; 2] = [
            Migration {
                what: "the schema of release 0.1.0",
                up: Up::Code(adopt_release_0_1_0),
            },
            sql_step("CREATE TABLE upgraded (n INTEGER);"),
        ];
        let mut writer = raw(dir.path());
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.execute("INSERT INTO meta (key, value) VALUES ('w', '1')", [])
            .unwrap();
        let path = dir.path().to_path_buf();
        let opener = std::thread::spawn(move || Store::open_with(&path, &V2).map(drop));
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
        opener.join().unwrap().unwrap();
        let conn = raw(dir.path());
        assert_eq!(user_version(&conn).unwrap(), 2);
        let w: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'w'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(w, "1", "the writer's commit is kept");
        let copy = Connection::open(dir.path().join("earlywarn.db.before-v2")).unwrap();
        let w: String = copy
            .query_row("SELECT value FROM meta WHERE key = 'w'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(w, "1", "the copy was taken after the writer let go");
    }

    #[test]
    fn only_the_newest_two_copies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with(dir.path(), &MIGRATIONS[..1]).unwrap());
        static STEPS: [Migration; 4] = [
            Migration {
                what: "the schema of release 0.1.0",
                up: Up::Code(adopt_release_0_1_0),
            },
            sql_step("CREATE TABLE v2 (n INTEGER);"),
            sql_step("CREATE TABLE v3 (n INTEGER);"),
            sql_step("CREATE TABLE v4 (n INTEGER);"),
        ];
        for n in 2..=4 {
            drop(Store::open_with(dir.path(), &STEPS[..n]).unwrap());
        }
        assert_eq!(
            copies_in(dir.path()),
            ["earlywarn.db.before-v3", "earlywarn.db.before-v4"]
        );
    }

    #[test]
    fn the_first_hand_off_is_kept_and_threads_find_the_partners_first_email() {
        use crate::config::Severity;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let mut opening = test_email("EW-OPEN");
        opening.thread = "deadline\u{1f}r\u{1f}k\u{1f}1".into();
        store
            .store_alert(
                &test_alert("EW-OPEN", Severity::Critical, t0),
                &[("p".into(), opening)],
                t0,
            )
            .unwrap();
        let thread = "deadline\u{1f}r\u{1f}k\u{1f}1";
        assert_eq!(
            store.first_in_thread(thread, "p").unwrap().as_deref(),
            Some("<EW-OPEN.p@example.org>")
        );
        assert_eq!(
            store.first_in_thread(thread, "q").unwrap(),
            None,
            "per partner"
        );
        let mut escalation = test_email("EW-LATE");
        escalation.thread = thread.into();
        store
            .store_alert(
                &test_alert("EW-LATE", Severity::Critical, t0),
                &[("p".into(), escalation)],
                t0,
            )
            .unwrap();
        assert_eq!(
            store.first_in_thread(thread, "p").unwrap().as_deref(),
            Some("<EW-OPEN.p@example.org>"),
            "the first, not the latest"
        );

        let id = store.due(t0, 1).unwrap()[0].id;
        let later = t0.checked_add(jiff::SignedDuration::from_secs(90)).unwrap();
        assert_eq!(store.hand_off_time(id, t0).unwrap(), t0);
        assert_eq!(
            store.hand_off_time(id, later).unwrap(),
            t0,
            "a retry keeps the first"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.hand_off_time(id, later).unwrap(),
            t0,
            "across a restart"
        );
    }

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    const FULL: i64 = 2;

    #[test]
    fn the_attempt_count_and_hand_off_leave_the_connection_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(synchronous(&store), FULL);
        assert_eq!(store.begin_attempt("f", "abc").unwrap(), 0);
        assert_eq!(store.begin_attempt("f", "abc").unwrap(), 1);
        assert_eq!(store.begin_attempt("g", "abc").unwrap(), 0, "per feed");
        assert_eq!(synchronous(&store), FULL);
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        store
            .store_alert(
                &test_alert("EW-1", crate::config::Severity::Critical, t0),
                &[("p".into(), test_email("EW-1"))],
                t0,
            )
            .unwrap();
        let id = store.due(t0, 1).unwrap()[0].id;
        assert_eq!(store.hand_off_time(id, t0).unwrap(), t0);
        assert_eq!(synchronous(&store), FULL);
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.begin_attempt("f", "abc").unwrap(), 2, "kept");
        store.end_attempt("f", "abc").unwrap();
        assert_eq!(store.begin_attempt("f", "abc").unwrap(), 0, "forgotten");
    }

    #[test]
    fn a_relaxed_write_that_fails_still_restores_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = (|| -> Result<()> {
            let _relaxed = RelaxedSync::start(&store.conn)?;
            assert_eq!(synchronous(&store), 1, "NORMAL inside");
            store.conn.execute("UPDATE no_such_table SET x = 1", [])?;
            Ok(())
        })();
        assert!(failed.is_err());
        assert_eq!(synchronous(&store), FULL);
    }

    #[test]
    fn an_uncommitted_file_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        {
            let tx = store.begin().unwrap();
            tx.record_is_new("f", "S1", &[1; 16]).unwrap();
            // dropped without commit: rolled back
        }
        let tx = store.begin().unwrap();
        assert!(tx.record_is_new("f", "S1", &[1; 16]).unwrap());
    }
}
