//! Taking one file from a feed folder through the pipeline (the shell around the core).
//!
//! Order of effects, so that nothing is lost and nothing is done twice:
//! 1. check the file (regular, not a link, not too big) and read it once, whole;
//! 2. if its content was processed before, it is a duplicate: record, move, done;
//! 3. parse, deduplicate records, evaluate rules, route and render alerts;
//! 4. write the rejected rows beside it (idempotent: same names each time);
//! 5. commit the checkpoint, records, rule state, alerts and outbox rows in ONE transaction;
//! 6. only then move (or delete) the file.
//!
//! A crash before 5 leaves the file in place and the database untouched; a
//! crash between 5 and 6 leaves a file whose content is already recorded, so
//! the next scan moves it without alerting again.

use crate::alerts::render::{RenderedEmail, render};
use crate::alerts::{Alert, first_audience, route};
use crate::config::{Config, FeedConfig, FeedFormat, OnDone};
use crate::feeds::decode::{TextEncoding, decode_bytes};
use crate::feeds::parse::{RecordShape, Row, RowError, parse};
use crate::feeds::record_fingerprint;
use crate::rules::Rule;
use crate::rules::engine::{Batch, Engine};
use crate::store::{FileRecord, Store, StoreError};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The database could not record the file: it stays where it is and is retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> IntakeError + 'p {
    move |source| IntakeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What became of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    Processed(FileSummary),
    /// Same content as a file already processed: moved without alerting.
    Duplicate,
    /// Refused whole and moved to `rejected/`.
    Rejected(String),
    /// Not for us (gone, a folder, a temporary name): left alone.
    Skipped,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSummary {
    pub rows: u64,
    pub events: u64,
    pub duplicates: u64,
    pub rejected_rows: u64,
    /// Ids of the alerts raised.
    pub alerts: Vec<String>,
    /// The rule of each alert raised (for metrics).
    pub alert_rules: Vec<String>,
    /// The name its rejected rows were set aside under in `rejected/`, if any.
    pub rejected_as: Option<String>,
    /// Alerts that no partner receives (nobody on the rule's list covers them).
    pub unrouted: Vec<String>,
    pub encoding: Option<String>,
}

/// Whether a name in a feed folder is a file in the making, ignored until renamed (SPEC §4).
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(".tmp")
        || name.ends_with(".part")
        || name.ends_with(".partial")
        || name.ends_with('~')
}

/// The format of a file: its extension when it names one, else the feed's.
pub fn format_for(path: &Path, feed: &FeedConfig) -> FeedFormat {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("csv") | Some("tsv") => FeedFormat::Csv,
        Some("jsonl") | Some("ndjson") => FeedFormat::Jsonl,
        Some("json") => FeedFormat::Json,
        _ => feed.format,
    }
}

/// Processes one file of `feed` at `now`. On `Err` the file is left where it is.
pub fn process_file(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    feed: &FeedConfig,
    path: &Path,
    now: Timestamp,
) -> Result<Disposition, IntakeError> {
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if is_ignored_name(&name) {
        return Ok(Disposition::Skipped);
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Disposition::Skipped),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    };
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return Ok(Disposition::Skipped);
    }
    if file_type.is_symlink() {
        return reject_whole(
            store,
            feed,
            path,
            &name,
            "it is a symbolic link; feeds read only regular files and never follow links",
            now,
        );
    }
    if !file_type.is_file() {
        return reject_whole(
            store,
            feed,
            path,
            &name,
            "it is not a regular file (a device, pipe or socket)",
            now,
        );
    }
    if meta.len() > feed.max_file_bytes {
        let reason = format!(
            "it is {} bytes, over the feed's limit of {} bytes (max_file_bytes); split it into smaller files",
            meta.len(),
            feed.max_file_bytes
        );
        return reject_whole(store, feed, path, &name, &reason, now);
    }

    let bytes = match read_regular_file(path, feed.max_file_bytes) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Disposition::Skipped),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return reject_whole(store, feed, path, &name, &e.to_string(), now);
        }
        Err(e) => return Err(io_err("cannot read", path)(e)),
    };
    let sha = hex::encode(Sha256::digest(&bytes));

    if store.file_seen(&feed.name, &sha)? {
        engine.note_activity(&feed.name, now);
        let tx = store.begin()?;
        tx.apply(&engine.take_changes())?;
        tx.record_file(&FileRecord {
            feed: feed.name.clone(),
            name: name.clone(),
            sha256: sha,
            bytes: bytes.len() as u64,
            encoding: None,
            outcome: "duplicate",
            reason: Some("same content as a file already processed".into()),
            rows: 0,
            events: 0,
            duplicates: 0,
            rejected_rows: 0,
            alerts: 0,
            processed_at: now,
        })?;
        tx.commit()?;
        finish_file(feed, path, &name)?;
        return Ok(Disposition::Duplicate);
    }

    let (text, encoding) = decode_bytes(&bytes);
    drop(bytes);
    if encoding == TextEncoding::Windows1252 {
        tracing::info!(feed = %feed.name, file = %name, "Not valid UTF-8; decoded as Windows-1252");
    }
    let mut shaped_feed;
    let feed_for_parse = {
        let format = format_for(path, feed);
        if format == feed.format {
            feed
        } else {
            shaped_feed = feed.clone();
            shaped_feed.format = format;
            &shaped_feed
        }
    };
    let shape = RecordShape {
        feed: feed_for_parse,
        timezone: &config.daemon.timezone,
        default_time: now,
        wall_clock: Some(now),
    };

    let tx = store.begin()?;
    let mut batch = Batch::default();
    let mut summary = FileSummary {
        encoding: Some(encoding.to_string()),
        ..FileSummary::default()
    };
    let mut row_errors: Vec<RowError> = Vec::new();
    let mut db_error: Option<StoreError> = None;
    let parsed = parse(text.as_bytes(), &shape, |row| {
        summary.rows += 1;
        match row {
            Row::Error(e) => row_errors.push(e),
            Row::Event(event) => {
                if db_error.is_some() {
                    return;
                }
                if let Some(id) = &event.record_id {
                    match tx.record_is_new(&feed.name, id, &record_fingerprint(&event)) {
                        Ok(true) => {}
                        Ok(false) => {
                            summary.duplicates += 1;
                            return;
                        }
                        Err(e) => {
                            db_error = Some(e);
                            return;
                        }
                    }
                }
                summary.events += 1;
                engine.observe(&mut batch, &event);
            }
        }
    });
    if let Some(e) = db_error {
        return Err(e.into());
    }
    if let Err(file_error) = parsed {
        drop(tx);
        return reject_whole(store, feed, path, &name, &file_error.0, now);
    }
    summary.rejected_rows = row_errors.len() as u64;

    engine.note_activity(&feed.name, now);
    let outcome = engine.finish(batch, now, &sha, &name);
    let mut rejected_as = None;
    let mut unrouted = Vec::new();
    // From here the engine's state is ahead of the database until commit; on
    // any failure put it back so the retried file sees the same state.
    let persisted = (|| -> Result<(), IntakeError> {
        for alert in &outcome.alerts {
            if enqueue_alert(config, engine, &tx, alert, now)? == 0 {
                unrouted.push(alert.id.clone());
            }
        }
        tx.apply(&outcome.changes)?;
        tx.record_file(&FileRecord {
            feed: feed.name.clone(),
            name: name.clone(),
            sha256: sha.clone(),
            bytes: text.len() as u64,
            encoding: Some(encoding.to_string()),
            outcome: "processed",
            reason: None,
            rows: summary.rows,
            events: summary.events,
            duplicates: summary.duplicates,
            rejected_rows: summary.rejected_rows,
            alerts: outcome.alerts.len() as u64,
            processed_at: now,
        })?;
        if !row_errors.is_empty() {
            rejected_as = Some(write_rejected_rows(
                feed,
                &name,
                &text,
                feed_for_parse.format,
                encoding,
                &row_errors,
            )?);
        }
        Ok(())
    })();
    let committed = persisted.and_then(|()| tx.commit().map_err(IntakeError::from));
    if let Err(e) = committed {
        match store.load_engine_state() {
            Ok(state) => engine.restore(state),
            Err(load) => {
                tracing::error!(error = %load, "Cannot reload rule state after a failed commit")
            }
        }
        return Err(e);
    }
    for (rule, n) in &outcome.suppressed {
        tracing::info!(feed = %feed.name, file = %name, rule = %rule, matches = n, "Matches held back by cooldown");
    }
    for alert in &outcome.alerts {
        tracing::info!(alert = %alert.id, rule = %alert.rule_id, district = alert.district.as_deref().unwrap_or("-"),
            severity = %alert.severity, events = alert.event_count, review = alert.status.is_review(), "Alert raised");
    }
    summary.alerts = outcome.alerts.iter().map(|a| a.id.clone()).collect();
    summary.alert_rules = outcome.alerts.iter().map(|a| a.rule_id.clone()).collect();
    summary.rejected_as = rejected_as;
    summary.unrouted = unrouted;
    finish_file(feed, path, &name)?;
    Ok(Disposition::Processed(summary))
}

/// Routes, renders and enqueues one alert inside the file's transaction.
pub fn enqueue_alert(
    config: &Config,
    engine: &Engine,
    tx: &crate::store::FileTx<'_>,
    alert: &Alert,
    now: Timestamp,
) -> Result<usize, IntakeError> {
    let Some(rule) = engine.rules().get(&alert.rule_id) else {
        return Ok(0);
    };
    let summary = serde_json::to_string(alert).unwrap_or_default();
    tx.insert_alert(alert, &summary)?;
    let audience = first_audience(alert);
    let mut queued = 0;
    for delivery in route(alert, rule, config, audience) {
        let email = render_with_fallback(alert, rule, &delivery, config);
        match email {
            Some(email) => {
                tx.enqueue(&alert.id, &delivery.partner.id, audience, &email, now)?;
                queued += 1;
            }
            None => {
                tracing::error!(alert = %alert.id, partner = %delivery.partner.id, "Cannot render the email even with the default template")
            }
        }
    }
    if queued == 0 {
        // Stored (status shows it), but no partner in the rule's list covers it: someone must act.
        tracing::error!(alert = %alert.id, rule = %alert.rule_id, district = alert.district.as_deref().unwrap_or("-"),
            "Alert reaches nobody: no partner on the rule's list covers its district (or its severity is below their floor)");
    }
    Ok(queued)
}

/// Renders with the rule's templates, or, if they fail at run time, with the defaults:
/// a broken template must not stop an alert.
pub fn render_with_fallback(
    alert: &Alert,
    rule: &Rule,
    delivery: &crate::alerts::Delivery<'_>,
    config: &Config,
) -> Option<RenderedEmail> {
    match render(alert, rule, delivery, config) {
        Ok(email) => Some(email),
        Err(e) => {
            tracing::error!(alert = %alert.id, rule = %rule.id, error = %e, "Template failed; using the default template");
            let mut plain = rule.clone();
            plain.subject = None;
            plain.body = None;
            render(alert, &plain, delivery, config).ok()
        }
    }
}

/// Reads a file that must still be a regular file once opened (it may have
/// been swapped for a link or a pipe since it was inspected).
fn read_regular_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a symbolic link; feeds read only regular files and never follow links",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not a regular file",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it grew past the feed's limit of {max} bytes (max_file_bytes)"),
        ));
    }
    Ok(bytes)
}

/// Moves a file the pipeline could not read at all to `rejected/`, with the reason beside it.
fn reject_whole(
    store: &mut Store,
    feed: &FeedConfig,
    path: &Path,
    name: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Disposition, IntakeError> {
    tracing::warn!(feed = %feed.name, file = %name, reason = %reason, "Rejected file");
    let dir = feed.rejected_dir();
    fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    let target_name = free_base_name(&dir, name);
    let target = dir.join(&target_name);
    write_atomically(
        &dir.join(format!("{target_name}.errors.txt")),
        format!("{name}: {reason}\n").as_bytes(),
    )?;
    fs::rename(path, &target).map_err(io_err("cannot move to rejected/", path))?;
    store.record_rejected_file(&FileRecord {
        feed: feed.name.clone(),
        name: name.to_string(),
        sha256: String::new(),
        bytes: 0,
        encoding: None,
        outcome: "rejected",
        reason: Some(reason.to_string()),
        rows: 0,
        events: 0,
        duplicates: 0,
        rejected_rows: 0,
        alerts: 0,
        processed_at: now,
    })?;
    Ok(Disposition::Rejected(reason.to_string()))
}

/// Writes `rejected/NAME.rows.csv` (the header and the bad rows, verbatim; for JSON lines the
/// bad lines; for a JSON array an array of the bad elements, each as written) and
/// `NAME.errors.txt`. The rows file keeps the name SPEC §4 gives it whatever the format, so
/// one name tells ops where bad rows are; its content is in the feed's own format, so once
/// fixed it can be dropped again.
fn write_rejected_rows(
    feed: &FeedConfig,
    name: &str,
    text: &str,
    format: FeedFormat,
    encoding: TextEncoding,
    errors: &[RowError],
) -> Result<String, IntakeError> {
    let dir = feed.rejected_dir();
    fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
    // The file's own line end (LF, CRLF, or CR alone from an old Mac), after its first line.
    let (first_line_end, line_end) = match text.find(['\r', '\n']) {
        Some(i) if text[i..].starts_with("\r\n") => (i + 2, "\r\n"),
        Some(i) => (i + 1, &text[i..i + 1]),
        None => (text.len(), "\n"),
    };
    let mut rows = String::new();
    match format {
        FeedFormat::Csv => rows.push_str(&text[..first_line_end]),
        // An array again, so that once fixed the file can be dropped as it is.
        FeedFormat::Json => {
            rows.push('[');
            rows.push_str(line_end);
        }
        FeedFormat::Jsonl => {}
    }
    let mut kept = 0;
    let mut report = String::new();
    for e in errors {
        if let Some(span) = &e.span {
            let slice = text
                .get(span.start as usize..span.end as usize)
                .unwrap_or("");
            if format == FeedFormat::Json {
                if kept > 0 {
                    rows.push(',');
                    rows.push_str(line_end);
                }
                rows.push_str(slice);
            } else {
                rows.push_str(slice);
                // The last row of a file may have no line end; the next row must not join it.
                if !slice.ends_with(['\r', '\n']) {
                    rows.push_str(line_end);
                }
            }
            kept += 1;
        }
        if e.line > 0 {
            report.push_str(&format!("row {} (line {}): {}\n", e.row, e.line, e.reason));
        } else {
            report.push_str(&format!("row {}: {}\n", e.row, e.reason));
        }
    }
    if format == FeedFormat::Json {
        rows.push_str(line_end);
        rows.push(']');
        rows.push_str(line_end);
    }
    // Verbatim means in the file's own encoding, so the rows can be fixed and
    // dropped again with the tool that made them (Excel writes Windows-1252).
    let row_bytes = match encoding {
        TextEncoding::Windows1252 => encoding_rs::WINDOWS_1252.encode(&rows).0.into_owned(),
        _ => rows.into_bytes(),
    };
    let base = free_base_name(&dir, name);
    if kept > 0 {
        write_atomically(&dir.join(format!("{base}.rows.csv")), &row_bytes)?;
    }
    write_atomically(&dir.join(format!("{base}.errors.txt")), report.as_bytes())?;
    tracing::warn!(feed = %feed.name, file = %name, rows = errors.len(), "Rows rejected; see rejected/{}.errors.txt", base);
    Ok(base)
}

/// A name for `rejected/` that none of an earlier file's quarantine uses
/// (`NAME`, `NAME.rows.csv`, `NAME.errors.txt`): `name`, else `name.1`, `name.2`…
fn free_base_name(dir: &Path, name: &str) -> String {
    let taken = |base: &str| {
        [
            base.to_string(),
            format!("{base}.rows.csv"),
            format!("{base}.errors.txt"),
        ]
        .iter()
        .any(|n| fs::symlink_metadata(dir.join(n)).is_ok())
    };
    if !taken(name) {
        return name.to_string();
    }
    (1..)
        .map(|n| format!("{name}.{n}"))
        .find(|b| !taken(b))
        .unwrap_or_else(|| name.to_string())
}

/// Moves a committed file to `processed/` (or deletes it, per `on_done`).
fn finish_file(feed: &FeedConfig, path: &Path, name: &str) -> Result<(), IntakeError> {
    match feed.on_done {
        OnDone::Delete => fs::remove_file(path).map_err(io_err("cannot delete", path)),
        OnDone::Move => {
            let dir = feed.processed_dir();
            fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
            let target = unique_path(&dir, name);
            fs::rename(path, &target).map_err(io_err("cannot move to processed/", path))
        }
    }
}

/// `dir/name`, or `dir/name.N` for the first free N when a file of that name is already there.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if fs::symlink_metadata(&candidate).is_err() {
        return candidate;
    }
    (1..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| fs::symlink_metadata(p).is_err())
        .unwrap_or(candidate)
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), IntakeError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(io_err("cannot write", path))
}
