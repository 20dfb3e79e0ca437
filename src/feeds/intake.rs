//! Taking one file from a feed folder through the pipeline (the shell around the core).
//!
//! Order of effects, so that nothing is lost and nothing is done twice:
//! 1. open the feed's folders as descriptors and check them ([`FeedFolders`]);
//!    open the file without following links, and check it (a regular file with
//!    one name, not too big);
//! 2. read it once, streaming, for its content hash and encoding; if that
//!    content was processed before, it is a duplicate: record, move, done;
//! 3. note the attempt durably: a file whose processing was interrupted
//!    [`MAX_INTERRUPTED_TRIES`] times (a crash, a kill) is set aside instead;
//! 4. read it again, streaming, and hand its records to the batch step
//!    ([`crate::pipeline`]: deduplicate, evaluate, route, render, into the
//!    file's transaction as its `Ledger`); bad rows go to a [`Quarantine`] as
//!    they are found; check the content is what was hashed;
//! 5. publish the quarantine;
//! 6. commit the checkpoint, records, rule state, alerts, outbox rows and the
//!    end of the attempt in ONE transaction;
//! 7. only then move (or delete) the file.
//!
//! A crash before 6 leaves the file in place and the database as it was (but
//! for the attempt count); a crash between 6 and 7 leaves a file whose content
//! is already recorded, so the next scan moves it without alerting again.
//! Memory does not grow with the file: nothing holds the whole file.

use crate::audit::{Action, Actor};
use crate::config::{Config, FeedConfig, FeedFormat, OnDone};
use crate::display::Escaped;
use crate::event::{FieldName, Schema};
use crate::feeds::decode::{EncodingSniffer, TextEncoding, decoding_reader};
use crate::feeds::folder::{FeedFolders, FolderProblem, safe_base_name, with_suffix};
use crate::feeds::parse::{RecordShape, Row, parse};
use crate::feeds::quarantine::Quarantine;
use crate::pipeline::Pipeline;
use crate::rules::engine::Engine;
use crate::store::{FileRecord, Store, StoreError};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Interrupted tries after which a file is set aside in `rejected/` (SPEC §4).
pub const MAX_INTERRUPTED_TRIES: u32 = 3;

/// How much of a file's decoded start is kept for the header of its rejected rows.
const HEAD_BYTES: usize = 1 << 20;

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
    /// The feed's folders cannot be trusted: nothing was done, the feed is paused.
    #[error(transparent)]
    Folder(#[from] FolderProblem),
    /// Abandoned on request (shutdown): rolled back, the file stays and is read again.
    #[error("stopped before the file was finished; it stays and is read again")]
    Interrupted,
    /// The file's content changed between the two reads: a writer is still at it.
    #[error("the file changed while it was being read; it is read again once it settles")]
    Changed,
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> IntakeError + 'p {
    move |source| IntakeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What the caller lets a file's processing do while it runs.
pub struct FileControl<'a> {
    /// Asked between reads of the file (every few hundred kilobytes): `true`
    /// abandons the file. The daemon also uses it as a sign of life for the
    /// systemd watchdog.
    pub interrupted: &'a (dyn Fn() -> bool + Sync),
}

impl FileControl<'_> {
    /// Never interrupted.
    pub fn uninterrupted() -> FileControl<'static> {
        FileControl {
            interrupted: &|| false,
        }
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
        Some("xlsx") => FeedFormat::Xlsx,
        Some("ods") => FeedFormat::Ods,
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
    control: &FileControl<'_>,
) -> Result<Disposition, IntakeError> {
    let Some(file_name) = path.file_name() else {
        return Ok(Disposition::Skipped);
    };
    if is_ignored_name(&file_name.to_string_lossy()) {
        return Ok(Disposition::Skipped);
    }
    let entry = Entry {
        on_disk: file_name,
        file_name,
        path,
        pushed_by: None,
    };
    process_entry(config, engine, store, feed, &entry, now, control)
}

/// A body pushed over HTTP (SPEC §11), spooled by the console to `spool` in
/// the feed's folder: processed exactly as a file dropped there as `name`
/// (the same checks, reads, transaction and move; `processed/NAME`,
/// `rejected/NAME`), with one more row in its transaction: the audit row of
/// the push by `actor`.
#[allow(clippy::too_many_arguments)] // process_file's, plus what a push adds
pub fn process_pushed(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    feed: &FeedConfig,
    spool: &OsStr,
    name: &OsStr,
    actor: &Actor,
    now: Timestamp,
    control: &FileControl<'_>,
) -> Result<Disposition, IntakeError> {
    let path = feed.dir.join(spool);
    let entry = Entry {
        on_disk: spool,
        file_name: name,
        path: &path,
        pushed_by: Some(actor),
    };
    process_entry(config, engine, store, feed, &entry, now, control)
}

/// What the intake is given to read: a name in the feed folder, and the name
/// it is known by (the same for a dropped file; a push's generated name).
struct Entry<'a> {
    on_disk: &'a OsStr,
    file_name: &'a OsStr,
    path: &'a Path,
    pushed_by: Option<&'a Actor>,
}

fn process_entry(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    feed: &FeedConfig,
    entry: &Entry<'_>,
    now: Timestamp,
    control: &FileControl<'_>,
) -> Result<Disposition, IntakeError> {
    let Entry {
        on_disk,
        file_name,
        path,
        pushed_by,
    } = *entry;
    // The name as text, for the database and messages (never for the filesystem).
    let name = file_name.to_string_lossy().into_owned();
    let folders = FeedFolders::open(&feed.dir, feed.on_done == OnDone::Move)?;
    let incoming = Incoming {
        feed,
        folders: &folders,
        on_disk,
        file_name,
        name: &name,
        path,
        format: format_for(Path::new(file_name), feed),
        pushed_by,
        now,
    };

    let stat = match folders.inspect(on_disk) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Disposition::Skipped),
        Err(e) => return Err(io_err("cannot inspect", path)(e)),
    };
    if let Some(refusal) = refuse_by_type(stat.st_mode, stat.st_nlink, stat.st_size as u64, feed) {
        return match refusal {
            Refusal::Skip => Ok(Disposition::Skipped),
            Refusal::Reject(reason) => incoming.reject_whole(store, &reason),
        };
    }
    let mut file = match folders.open_incoming(on_disk) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Disposition::Skipped),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return incoming.reject_whole(store, SYMLINK_REASON);
        }
        Err(e) => return Err(io_err("cannot open", path)(e)),
    };
    // Checked again on the open file: the name may have been swapped since.
    let meta = file.metadata().map_err(io_err("cannot inspect", path))?;
    {
        use std::os::unix::fs::MetadataExt;
        if let Some(refusal) = refuse_by_type(meta.mode(), meta.nlink(), meta.len(), feed) {
            return match refusal {
                Refusal::Skip => Ok(Disposition::Skipped),
                Refusal::Reject(reason) => incoming.reject_whole(store, &reason),
            };
        }
    }

    let content = match survey(&mut file, feed.max_file_bytes, control) {
        Ok(c) => c,
        Err(SurveyError::TooBig) => {
            let reason = format!(
                "it grew past the feed's limit of {} bytes (max_file_bytes) while it was read; split it into smaller files",
                feed.max_file_bytes
            );
            return incoming.reject_whole(store, &reason);
        }
        Err(SurveyError::Interrupted) => return Err(IntakeError::Interrupted),
        Err(SurveyError::Io(e)) => return Err(io_err("cannot read", path)(e)),
    };

    if store.file_seen(&feed.name, &content.sha256)? {
        engine.note_activity(&feed.name, now);
        let tx = store.begin()?;
        tx.apply(&engine.take_changes())?;
        tx.record_file(&FileRecord {
            feed: feed.name.clone(),
            name: name.clone(),
            sha256: content.sha256.clone(),
            bytes: content.bytes,
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
        incoming.audit(&tx, "duplicate", &FileSummary::default(), &content.sha256)?;
        tx.commit()?;
        incoming.finish()?;
        return Ok(Disposition::Duplicate);
    }

    let earlier_tries = store.begin_attempt(&feed.name, &content.sha256)?;
    if earlier_tries >= MAX_INTERRUPTED_TRIES {
        let reason = format!(
            "its processing was interrupted {earlier_tries} times (the daemon stopped, crashed or was killed while reading it), \
             so it is set aside rather than tried again; check it (size, rows, a row that is far too long), split it if it is large, and drop it again"
        );
        let disposition = incoming.reject_whole(store, &reason)?;
        store.end_attempt(&feed.name, &content.sha256)?;
        return Ok(disposition);
    }
    let result = read_and_commit(
        config, engine, store, &incoming, &mut file, &content, control,
    );
    if !matches!(result, Ok(Disposition::Processed(_))) {
        // Memory must not run ahead of the database: the file is read again.
        match store.load_engine_state() {
            Ok(state) => engine.restore(state),
            Err(load) => {
                tracing::error!(error = %load, "Cannot reload rule state after a failed commit")
            }
        }
    }
    if let Err(IntakeError::Interrupted | IntakeError::Changed) = &result {
        // Not a fault of the file: these tries do not count against it.
        if let Err(e) = store.end_attempt(&feed.name, &content.sha256) {
            tracing::warn!(error = %e, "Cannot forget an abandoned try of a file");
        }
    }
    result
}

/// One file in a feed folder, as the intake found it.
struct Incoming<'a> {
    feed: &'a FeedConfig,
    folders: &'a FeedFolders,
    /// Its name in the feed folder: what is opened and moved.
    on_disk: &'a OsStr,
    /// The name it is known by: in records, logs, `processed/` and `rejected/`.
    file_name: &'a OsStr,
    /// The name as text (lossy), for records and messages.
    name: &'a str,
    path: &'a Path,
    /// Its format: its name's extension when it names one, else the feed's.
    format: FeedFormat,
    /// Who pushed it over HTTP, if it was pushed: audited in its transaction.
    pushed_by: Option<&'a Actor>,
    now: Timestamp,
}

const SYMLINK_REASON: &str =
    "it is a symbolic link; feeds read only regular files and never follow links";

enum Refusal {
    Skip,
    Reject(String),
}

/// What the intake does with a folder entry of this type, link count and size,
/// if it does not read it.
fn refuse_by_type(mode: u32, links: u64, len: u64, feed: &FeedConfig) -> Option<Refusal> {
    let kind = mode & libc::S_IFMT;
    if kind == libc::S_IFDIR {
        return Some(Refusal::Skip);
    }
    if kind == libc::S_IFLNK {
        return Some(Refusal::Reject(SYMLINK_REASON.into()));
    }
    if kind != libc::S_IFREG {
        return Some(Refusal::Reject(
            "it is not a regular file (a device, pipe or socket)".into(),
        ));
    }
    if links > 1 {
        return Some(Refusal::Reject(format!(
            "it is a hard link (the same file has {links} names); feeds read only files written into the folder, not links to files elsewhere"
        )));
    }
    if len > feed.max_file_bytes {
        return Some(Refusal::Reject(format!(
            "it is {len} bytes, over the feed's limit of {} bytes (max_file_bytes); split it into smaller files",
            feed.max_file_bytes
        )));
    }
    None
}

/// What the first read of a file finds.
struct Content {
    sha256: String,
    bytes: u64,
    encoding: TextEncoding,
    /// Invalid UTF-8 sequences in a file read as UTF-8: their rows are bad rows.
    invalid_utf8: u64,
    /// The start of the decoded text, for the header of rejected rows.
    head: Vec<u8>,
}

enum SurveyError {
    TooBig,
    Interrupted,
    Io(io::Error),
}

/// Reads the file once: its content hash, size, encoding and first bytes.
fn survey(
    file: &mut std::fs::File,
    max: u64,
    control: &FileControl<'_>,
) -> Result<Content, SurveyError> {
    let mut reader = Metered::new(&mut *file, max, control);
    let mut sniffer = EncodingSniffer::default();
    let mut raw_head = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if reader.stopped => return Err(SurveyError::Interrupted),
            Err(_) if reader.too_big => return Err(SurveyError::TooBig),
            Err(e) => return Err(SurveyError::Io(e)),
        };
        sniffer.feed(&buf[..n]);
        if raw_head.len() < HEAD_BYTES {
            let take = n.min(HEAD_BYTES - raw_head.len());
            raw_head.extend_from_slice(&buf[..take]);
        }
    }
    let encoding = sniffer.finish();
    let mut head = Vec::new();
    // Decoding a cut-off start is fine: only its first line is used.
    let _ = decoding_reader(&raw_head[..], encoding).read_to_end(&mut head);
    let (sha256, bytes) = reader.digest();
    Ok(Content {
        sha256,
        bytes,
        encoding,
        invalid_utf8: if matches!(encoding, TextEncoding::Utf8 | TextEncoding::Utf8Bom) {
            sniffer.invalid_utf8()
        } else {
            0
        },
        head,
    })
}

/// A reader that hashes and counts what passes, refuses to go past the feed's
/// size limit, and asks the caller between reads whether to stop.
struct Metered<'c, R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    max: u64,
    control: &'c FileControl<'c>,
    stopped: bool,
    too_big: bool,
}

impl<'c, R: Read> Metered<'c, R> {
    fn new(inner: R, max: u64, control: &'c FileControl<'c>) -> Self {
        Metered {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            max,
            control,
            stopped: false,
            too_big: false,
        }
    }

    fn digest(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.control.interrupted)() {
            self.stopped = true;
            return Err(io::Error::other("stopped"));
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.max {
            self.too_big = true;
            return Err(io::Error::other("over max_file_bytes"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Steps 4 to 7: the second read, the rules, the one transaction, the move.
fn read_and_commit(
    config: &Config,
    engine: &mut Engine,
    store: &mut Store,
    incoming: &Incoming<'_>,
    file: &mut std::fs::File,
    content: &Content,
    control: &FileControl<'_>,
) -> Result<Disposition, IntakeError> {
    let (feed, name, now) = (incoming.feed, incoming.name, incoming.now);
    let encoding = content.encoding;
    let format = incoming.format;
    if format.is_sheet() {
        // A workbook is binary: its text encoding is the workbook's business.
    } else if encoding == TextEncoding::Windows1252 {
        tracing::info!(feed = %feed.name, file = %Escaped(name), "Not valid UTF-8; decoded as Windows-1252");
    } else if content.invalid_utf8 > 0 {
        tracing::warn!(feed = %feed.name, file = %Escaped(name), invalid = content.invalid_utf8,
            "UTF-8 with invalid bytes; the rows holding them are set aside, the others are read as they are");
    }
    let shaped_feed;
    let feed_for_parse = if format == feed.format {
        feed
    } else {
        let mut f = feed.clone();
        f.format = format;
        shaped_feed = f;
        &shaped_feed
    };
    let shape = RecordShape {
        feed: feed_for_parse,
        timezone: &config.daemon.timezone,
        default_time: now,
        wall_clock: Some(now),
    };
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("cannot read", incoming.path))?;
    let mut reader = Metered::new(&mut *file, feed.max_file_bytes, control);
    let mut quarantine = Quarantine::new(incoming.folders, format, encoding, &content.head);
    // A workbook is read whole (bounded, see feeds::sheet) through the same
    // metered reader, before the transaction: its header is the rows file's.
    let sheet = format.is_sheet().then(|| {
        let sheet = crate::feeds::sheet::read(&mut reader, &shape);
        if let Ok(sheet) = &sheet {
            quarantine.set_csv_header(sheet.header_csv());
        }
        sheet
    });

    let mut tx = store.begin()?;
    let pipeline = Pipeline::new(config);
    // A workbook has no text encoding of its own to record.
    let recorded_encoding = (!format.is_sheet()).then(|| encoding.to_string());
    let mut summary = FileSummary {
        encoding: recorded_encoding.clone(),
        ..FileSummary::default()
    };
    let mut step = pipeline.begin(engine, &mut tx, &feed.name, Some(now))?;
    let mut db_error: Option<StoreError> = None;
    let mut unlisted = UnlistedColumns::default();
    let on_row = |row| {
        summary.rows += 1;
        match row {
            Row::Error(e) => quarantine.add(&e),
            Row::Event(event) => {
                if db_error.is_some() {
                    return;
                }
                unlisted.note(feed, event.fields.schema());
                if let Err(e) = step.observe(&event) {
                    db_error = Some(e);
                }
            }
        }
    };
    let parsed = match sheet {
        Some(Ok(sheet)) => sheet.rows(&shape, on_row),
        Some(Err(e)) => Err(e),
        None => parse(decoding_reader(&mut reader, encoding), &shape, on_row),
    };
    if reader.stopped {
        return Err(IntakeError::Interrupted);
    }
    if let Some(e) = db_error {
        return Err(e.into());
    }
    if reader.too_big {
        drop(step);
        drop(tx);
        let reason = format!(
            "it grew past the feed's limit of {} bytes (max_file_bytes) while it was read; split it into smaller files",
            feed.max_file_bytes
        );
        return incoming.reject_whole(store, &reason);
    }
    let (sha, bytes) = reader.digest();
    if sha != content.sha256 {
        return Err(IntakeError::Changed);
    }
    if let Err(file_error) = parsed {
        drop(step);
        drop(tx);
        drop(quarantine);
        let disposition = incoming.reject_whole(store, &file_error.0)?;
        store.end_attempt(&feed.name, &sha)?;
        return Ok(disposition);
    }
    summary.rejected_rows = quarantine.problems();
    unlisted.log(feed, name);

    let outcome = step.finish(now, &sha, name)?;
    summary.events = outcome.events;
    summary.duplicates = outcome.duplicates;
    summary.alerts = outcome.raised.iter().map(|r| r.alert.id.clone()).collect();
    tx.record_file(&FileRecord {
        feed: feed.name.clone(),
        name: name.to_string(),
        sha256: sha.clone(),
        bytes,
        encoding: recorded_encoding,
        outcome: "processed",
        reason: None,
        rows: summary.rows,
        events: summary.events,
        duplicates: summary.duplicates,
        rejected_rows: summary.rejected_rows,
        // The file's own alerts; those the clock raised in its transaction are not its doing.
        alerts: outcome.raised.iter().filter(|r| !r.by_clock).count() as u64,
        processed_at: now,
    })?;
    tx.end_attempt(&feed.name, &sha)?;
    incoming.audit(&tx, "processed", &summary, &sha)?;
    // Published before the commit: a crash after it must not lose the bad rows.
    let rejected_as = quarantine
        .publish(&safe_base_name(incoming.file_name))
        .map_err(io_err("cannot write rejected rows beside", incoming.path))?
        .map(|base| base.to_string_lossy().into_owned());
    tx.commit()?;

    if let Some(base) = &rejected_as {
        tracing::warn!(feed = %feed.name, file = %Escaped(name), rows = summary.rejected_rows,
            "Rows rejected; see rejected/{}.errors.txt", Escaped(base));
    }
    for (rule, n) in &outcome.suppressed {
        tracing::info!(feed = %feed.name, file = %Escaped(name), rule = %rule, matches = n, "Matches held back by cooldown");
    }
    for raised in &outcome.raised {
        let alert = &raised.alert;
        tracing::info!(alert = %alert.id, rule = %alert.rule_id, district = %Escaped(alert.district.as_deref().unwrap_or("-")),
            severity = %alert.severity, events = alert.event_count, review = alert.status.is_review(), "Alert raised");
    }
    summary.alert_rules = outcome
        .raised
        .iter()
        .map(|r| r.alert.rule_id.clone())
        .collect();
    summary.rejected_as = rejected_as;
    summary.unrouted = outcome
        .raised
        .iter()
        .filter(|r| r.reaches_nobody())
        .map(|r| r.alert.id.clone())
        .collect();
    incoming.finish()?;
    Ok(Disposition::Processed(summary))
}

impl Incoming<'_> {
    /// Sets a file that cannot be read at all aside in `rejected/`, with the
    /// reason beside it: reason written, then recorded, then moved, so the
    /// file leaves the folder only once its fate is on record.
    fn reject_whole(&self, store: &mut Store, reason: &str) -> Result<Disposition, IntakeError> {
        let feed = self.feed;
        let base = self
            .folders
            .free_rejected_base(&safe_base_name(self.file_name));
        self.folders
            .write_rejected(
                &with_suffix(&base, ".errors.txt"),
                format!("{}: {reason}\n", crate::display::escape_controls(self.name)).as_bytes(),
            )
            .map_err(io_err("cannot write the reason beside", self.path))?;
        let tx = store.begin()?;
        tx.record_file(&FileRecord {
            feed: feed.name.clone(),
            name: self.name.to_string(),
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
            processed_at: self.now,
        })?;
        self.audit(&tx, "rejected", &FileSummary::default(), "")?;
        tx.commit()?;
        self.folders
            .move_to_rejected(self.on_disk, &base)
            .map_err(io_err("cannot move to rejected/", self.path))?;
        // Logged once it is done, so whoever reads the line finds the file in rejected/.
        tracing::warn!(feed = %feed.name, file = %Escaped(self.name), reason = %Escaped(reason), "Rejected file");
        Ok(Disposition::Rejected(reason.to_string()))
    }

    /// A pushed file's audit row (SPEC §11), in the transaction that records
    /// the file: who pushed it (from the token, never from the request), what
    /// it was called, what became of it. Nothing for a dropped file.
    fn audit(
        &self,
        tx: &crate::store::FileTx<'_>,
        outcome: &str,
        summary: &FileSummary,
        sha256: &str,
    ) -> Result<(), IntakeError> {
        let Some(actor) = self.pushed_by else {
            return Ok(());
        };
        let detail = serde_json::json!({
            "feed": self.feed.name,
            "file": self.name,
            "outcome": outcome,
            "sha256": sha256,
            "rows": summary.rows,
            "events": summary.events,
            "rejected_rows": summary.rejected_rows,
            "alerts": summary.alerts,
        });
        tx.append_audit(self.now, actor, Action::FilePushed, &detail)?;
        Ok(())
    }

    /// Moves a committed file to `processed/` (or deletes it, per `on_done`).
    fn finish(&self) -> Result<(), IntakeError> {
        match self.feed.on_done {
            OnDone::Delete => self
                .folders
                .remove_incoming(self.on_disk)
                .map_err(io_err("cannot delete", self.path)),
            OnDone::Move => self
                .folders
                .move_to_processed(self.on_disk, &safe_base_name(self.file_name))
                .map(|_| ())
                .map_err(io_err("cannot move to processed/", self.path)),
        }
    }
}

/// The columns of a file that its feed's `fields` does not list: they are kept out
/// of every email (SPEC §3), and said once per file so the lead can list them or
/// ask the producer why they are there.
#[derive(Default)]
struct UnlistedColumns {
    /// The last schema looked at: a CSV file's rows share one, so it is checked once.
    last: Option<Schema>,
    checked: HashSet<FieldName>,
    unlisted: BTreeSet<FieldName>,
    more: usize,
}

impl UnlistedColumns {
    /// How many names are shown; a JSON file can invent a new key on every row.
    const SHOWN: usize = 20;
    /// Past this many distinct names a file's keys are not remembered any more.
    const REMEMBERED: usize = 4096;

    fn note(&mut self, feed: &FeedConfig, schema: &Schema) {
        if feed.fields.is_none() || self.last.as_ref().is_some_and(|s| Arc::ptr_eq(s, schema)) {
            return;
        }
        self.last = Some(schema.clone());
        for name in schema.iter() {
            if self.checked.len() >= Self::REMEMBERED || !self.checked.insert(name.clone()) {
                continue;
            }
            if !feed.is_listed(name) {
                if self.unlisted.len() < Self::SHOWN {
                    self.unlisted.insert(name.clone());
                } else {
                    self.more += 1;
                }
            }
        }
    }

    /// The names, as logged: sorted, at most [`Self::SHOWN`], then how many more.
    fn shown(&self) -> Option<String> {
        if self.unlisted.is_empty() {
            return None;
        }
        let mut shown = self
            .unlisted
            .iter()
            .map(|n| n.as_ref())
            .collect::<Vec<_>>()
            .join(", ");
        if self.more > 0 {
            shown.push_str(&format!(" and {} more", self.more));
        }
        Some(shown)
    }

    fn log(&self, feed: &FeedConfig, file: &str) {
        if let Some(shown) = self.shown() {
            tracing::info!(feed = %feed.name, file = %Escaped(file), columns = %Escaped(&shown),
                "Columns not among the feed's `fields`; they are never put in any email");
        }
    }
}
