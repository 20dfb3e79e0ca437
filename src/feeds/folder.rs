//! The feed folder model (SPEC §4): what the daemon trusts in a folder that
//! producers write to, and how it writes there without being tricked.
//!
//! A feed folder belongs to the daemon's user and the feed's producer group,
//! mode 3770: producers add files, and the sticky bit stops them renaming or
//! removing what they do not own. `processed/` and `rejected/` are made by the
//! daemon, owned by it, readable by the producer group, writable by nobody
//! else. Still, a producer may have been there first (a `rejected` of its own,
//! or a symbolic link to the state folder), so:
//!
//! - every folder is opened once per file as a descriptor, with `O_NOFOLLOW`,
//!   and checked (a folder, owned by us, not writable by others) before use; a
//!   bad one is a [`FolderProblem`] and the feed is paused, never "fixed";
//! - every write goes through those descriptors (`openat`, `renameat`): no path
//!   is resolved twice, so a folder swapped after the check is never written;
//! - files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` and moved with
//!   `RENAME_NOREPLACE`: nothing that is already there (a planted link, an
//!   earlier quarantine) is ever overwritten;
//! - a file's name is the producer's choice, so the names written beside it
//!   are made safe first ([`safe_base_name`]): never too long, no controls.
//!
//! This is the shell: it does I/O, but holds no policy about records.

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why a feed's folders cannot be trusted: the feed is paused until an
/// operator fixes it (the daemon looks again at every rescan).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FolderProblem(pub String);

/// The longest name the daemon writes in `rejected/` or `processed/`, in bytes:
/// room for suffixes (`.rows.csv`, `.errors.txt`, `.N`, a temporary prefix)
/// under the usual 255-byte limit of a name.
const MAX_BASE_NAME: usize = 160;

/// The mode of `processed/` and `rejected/`: the daemon writes, the producer
/// group (inherited from the setgid feed folder) reads.
const SUBFOLDER_MODE: u32 = 0o2750;

/// A feed's folders, opened and checked for one file's processing.
pub struct FeedFolders {
    dir: OwnedFd,
    rejected: OwnedFd,
    processed: Option<OwnedFd>,
}

impl FeedFolders {
    /// Opens the feed folder and its `rejected/` (and `processed/` when files
    /// are moved there), making the subfolders if they are missing.
    pub fn open(dir: &Path, with_processed: bool) -> Result<FeedFolders, FolderProblem> {
        let dir_fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            FolderProblem(format!(
                "cannot open the feed folder {}: {e}",
                dir.display()
            ))
        })?;
        let rejected = open_subfolder(&dir_fd, dir, "rejected")?;
        let processed = if with_processed {
            Some(open_subfolder(&dir_fd, dir, "processed")?)
        } else {
            None
        };
        Ok(FeedFolders {
            dir: dir_fd,
            rejected,
            processed,
        })
    }

    /// Opens a file in the feed folder for reading: never through a link,
    /// never blocking on a pipe, never taking a terminal.
    pub fn open_incoming(&self, name: &OsStr) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// What is in the feed folder under `name`, without following a link.
    pub fn inspect(&self, name: &OsStr) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.dir,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Moves `name` from the feed folder into `rejected/` as `target` (see
    /// [`FeedFolders::free_rejected_base`]), never replacing anything.
    pub fn move_to_rejected(&self, name: &OsStr, target: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            &self.dir,
            name,
            &self.rejected,
            target,
            RenameFlags::NOREPLACE,
        )?)
    }

    /// Moves `name` from the feed folder into `processed/` as `base`, or
    /// `base.N` for the first N free. Returns the name used.
    pub fn move_to_processed(&self, name: &OsStr, base: &OsStr) -> io::Result<OsString> {
        let Some(processed) = &self.processed else {
            return Err(io::Error::other("this feed does not keep processed files"));
        };
        for n in 0u32..=10_000 {
            let target = if n == 0 {
                base.to_os_string()
            } else {
                with_suffix(base, &format!(".{n}"))
            };
            match rustix::fs::renameat_with(
                &self.dir,
                name,
                processed,
                target.as_os_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Ok(target),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other(format!(
            "processed/ already holds {} and 10,000 more of that name",
            base.to_string_lossy()
        )))
    }

    /// A base name for `rejected/` that no earlier quarantine uses (`NAME`,
    /// `NAME.rows.csv`, `NAME.errors.txt`): `base`, else `base.1`, `base.2`…
    pub fn free_rejected_base(&self, base: &OsStr) -> OsString {
        let free = |b: &OsStr| {
            [
                b.to_os_string(),
                with_suffix(b, ".rows.csv"),
                with_suffix(b, ".errors.txt"),
            ]
            .iter()
            .all(|n| {
                matches!(
                    rustix::fs::statat(&self.rejected, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW),
                    Err(Errno::NOENT)
                )
            })
        };
        if free(base) {
            return base.to_os_string();
        }
        (1u32..)
            .map(|n| with_suffix(base, &format!(".{n}")))
            .find(|b| free(b))
            .unwrap_or_else(|| base.to_os_string())
    }

    /// Removes `name` from the feed folder (`on_done = "delete"`).
    pub fn remove_incoming(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.dir, name, AtFlags::empty())?)
    }

    /// A new file in the feed folder for a body pushed over HTTP (SPEC §11),
    /// under a dot-name the scans ignore (`.earlywarn-push-PID-N.tmp`), so only
    /// the intake that is handed its name reads it. Returns the name and the
    /// file, open for writing; [`FeedFolders::remove_incoming`] removes it.
    pub fn create_spool(&self) -> io::Result<(OsString, std::fs::File)> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let name = OsString::from(format!(
                "{PUSH_SPOOL_PREFIX}{}-{}.tmp",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            match rustix::fs::openat(
                &self.dir,
                name.as_os_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o640),
            ) {
                Ok(fd) => return Ok((name, std::fs::File::from(fd))),
                // A producer's file, or one an earlier process of this pid left.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new file in `rejected/` that only this process writes, published under
    /// its final name by [`PendingFile::publish`].
    pub fn create_in_rejected(&self) -> io::Result<PendingFile<'_>> {
        PendingFile::create(&self.rejected)
    }

    /// Publishes a whole small file in `rejected/` under `name` (never replacing).
    pub fn write_rejected(&self, name: &OsStr, contents: &[u8]) -> io::Result<()> {
        let mut file = self.create_in_rejected()?;
        file.write_all(contents)?;
        file.publish(name)
    }
}

/// Opens (making it if missing) `dir/name` and checks it is ours to write.
fn open_subfolder(dir_fd: &OwnedFd, dir: &Path, name: &str) -> Result<OwnedFd, FolderProblem> {
    let shown = dir.join(name);
    let open = || {
        rustix::fs::openat(
            dir_fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let fd = match open() {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            match rustix::fs::mkdirat(dir_fd, name, Mode::from_raw_mode(SUBFOLDER_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(FolderProblem(format!(
                        "cannot create {}: {e}",
                        shown.display()
                    )));
                }
            }
            open().map_err(|e| refused(dir_fd, &shown, name, e))?
        }
        Err(e) => return Err(refused(dir_fd, &shown, name, e)),
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| FolderProblem(format!("cannot inspect {}: {e}", shown.display())))?;
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me {
        return Err(FolderProblem(format!(
            "{} belongs to uid {}, not to the daemon (uid {me}): someone else made it, so the daemon will not write there; \
             move it away and the daemon makes its own",
            shown.display(),
            stat.st_uid
        )));
    }
    // Ours, so we may tighten it: only the daemon writes here, whatever a
    // past umask or an administrator's chmod left.
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & !0o022)).map_err(|e| {
            FolderProblem(format!(
                "{} is writable by others and cannot be made private: {e}",
                shown.display()
            ))
        })?;
    }
    Ok(fd)
}

fn refused(dir_fd: &OwnedFd, path: &Path, name: &str, e: Errno) -> FolderProblem {
    // `O_NOFOLLOW | O_DIRECTORY` on a link fails with ENOTDIR, like on a file.
    let is_link = rustix::fs::statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    let why = match e {
        _ if is_link => "it is a symbolic link".to_string(),
        Errno::LOOP => "it is a symbolic link".to_string(),
        Errno::NOTDIR => "it is not a folder".to_string(),
        e => e.to_string(),
    };
    FolderProblem(format!(
        "refusing {}: {why}; the daemon writes only into a real folder of its own (move it away and the daemon makes its own)",
        path.display()
    ))
}

/// A file being written in a daemon-owned folder under a temporary name, made
/// visible under its final name only once complete. Dropped unpublished, it
/// is removed.
pub struct PendingFile<'d> {
    dir: &'d OwnedFd,
    temp_name: OsString,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl<'d> PendingFile<'d> {
    fn create(dir: &'d OwnedFd) -> io::Result<PendingFile<'d>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let temp_name = OsString::from(format!(
                ".earlywarn-{}-{}.tmp",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            match rustix::fs::openat(
                dir,
                temp_name.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o640),
            ) {
                Ok(fd) => {
                    return Ok(PendingFile {
                        dir,
                        temp_name,
                        file: Some(std::io::BufWriter::with_capacity(
                            64 * 1024,
                            std::fs::File::from(fd),
                        )),
                    });
                }
                // Left by an earlier process of the same pid: take another name.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes the file durable and visible as `name` (never replacing a file of that name).
    pub fn publish(mut self, name: &OsStr) -> io::Result<()> {
        let Some(writer) = self.file.take() else {
            return Err(io::Error::other("already published"));
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        rustix::fs::renameat_with(
            self.dir,
            self.temp_name.as_os_str(),
            self.dir,
            name,
            RenameFlags::NOREPLACE,
        )?;
        self.temp_name.clear();
        Ok(())
    }
}

impl Write for PendingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("already published")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for PendingFile<'_> {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = rustix::fs::unlinkat(self.dir, self.temp_name.as_os_str(), AtFlags::empty());
        }
    }
}

/// A name the daemon can use for what it writes about a file (`rejected/NAME`,
/// `NAME.errors.txt`, `processed/NAME`): the producer's name as it is (bytes
/// and all: a Latin-1 name from an old system stays as it was) when it is
/// short and free of controls; otherwise the printable part, cut short, with a
/// hash of the whole original name so two long names stay apart
/// (`long-na…~3fa2c1d0`).
pub fn safe_base_name(name: &OsStr) -> OsString {
    let bytes = name.as_bytes();
    let controls = match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().any(char::is_control),
        Err(_) => bytes.iter().any(|&b| b < 0x20 || b == 0x7f),
    };
    if !controls && bytes.len() <= MAX_BASE_NAME && !bytes.starts_with(b".") && !bytes.is_empty() {
        return name.to_os_string();
    }
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text
        .chars()
        .map(|c| if c.is_control() || c == '/' { '_' } else { c })
        .collect();
    while shown.starts_with('.') {
        shown.remove(0);
    }
    let keep = MAX_BASE_NAME - 12;
    if shown.len() > keep {
        let mut cut = keep;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
    }
    let digest = xxhash_rust::xxh3::xxh3_64(bytes);
    OsString::from(format!("{shown}~{:08x}", digest as u32))
}

/// `base` followed by `suffix`, as a name.
pub fn with_suffix(base: &OsStr, suffix: &str) -> OsString {
    let mut name = base.to_os_string();
    name.push(suffix);
    name
}

/// How the spool files of pushed bodies start ([`FeedFolders::create_spool`]).
const PUSH_SPOOL_PREFIX: &str = ".earlywarn-push-";

/// Removes temporary files a killed process left in a daemon-owned folder,
/// and the spools of pushes it left in the feed folder (its own files only:
/// a producer's file of the same name is not ours to remove).
pub fn remove_stale_temporaries(folders: &FeedFolders) {
    let own = format!(".earlywarn-{}-", std::process::id());
    remove_stale(&folders.rejected, b".earlywarn-", &own, |_| true);
    let own = format!("{PUSH_SPOOL_PREFIX}{}-", std::process::id());
    let me = rustix::process::geteuid().as_raw();
    // The feed folder is the producer's too: only a regular file this user owns is ours.
    remove_stale(&folders.dir, PUSH_SPOOL_PREFIX.as_bytes(), &own, |name| {
        rustix::fs::statat(&folders.dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_uid == me && st.st_mode & libc::S_IFMT == libc::S_IFREG)
    });
}

/// Unlinks the entries of `dir` named `PREFIX….tmp` that this process did not
/// make (`own` starts the names it makes) and that `ours` accepts.
fn remove_stale(dir: &OwnedFd, prefix: &[u8], own: &str, ours: impl Fn(&std::ffi::CStr) -> bool) {
    let Ok(listing) = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut entries) = rustix::fs::Dir::read_from(listing.as_fd()) else {
        return;
    };
    while let Some(Ok(entry)) = entries.next() {
        let name = entry.file_name().to_bytes();
        if name.starts_with(prefix)
            && name.ends_with(b".tmp")
            && !name.starts_with(own.as_bytes())
            && ours(entry.file_name())
        {
            let _ = rustix::fs::unlinkat(dir, entry.file_name(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_kept_bytes_and_all() {
        for name in ["results-2025-11-04.csv", "résultats nov.csv"] {
            assert_eq!(safe_base_name(OsStr::new(name)), name);
        }
        let latin1 = OsStr::from_bytes(b"r\xe9sultats.csv");
        assert_eq!(safe_base_name(latin1), latin1);
    }

    #[test]
    fn unusable_names_are_shortened_and_cleaned_but_stay_distinct() {
        let long_a = "a".repeat(245) + ".csv";
        let long_b = "a".repeat(244) + "b.csv";
        let a = safe_base_name(OsStr::new(&long_a));
        let b = safe_base_name(OsStr::new(&long_b));
        assert!(a.len() <= MAX_BASE_NAME, "{}", a.len());
        assert_ne!(a, b);
        let forged = safe_base_name(OsStr::new("x.csv\nINFO forged line\x1b[31m"));
        let forged = forged.to_str().unwrap();
        assert!(!forged.chars().any(char::is_control), "{forged}");
        assert!(
            forged.starts_with("x.csv_INFO forged line_[31m~"),
            "{forged}"
        );
        let hidden = safe_base_name(OsStr::from_bytes(b"..\xe9\x07"));
        let hidden = hidden.to_str().unwrap();
        assert!(hidden.starts_with("\u{fffd}_~"), "{hidden}");
    }

    #[test]
    fn a_planted_link_or_foreign_folder_is_refused_and_nothing_is_written_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("state");
        std::fs::create_dir(&target).unwrap();
        let feed = tmp.path().join("feed");
        std::fs::create_dir(&feed).unwrap();
        std::os::unix::fs::symlink(&target, feed.join("rejected")).unwrap();
        let err = FeedFolders::open(&feed, true)
            .err()
            .expect("a link is refused");
        assert!(err.0.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

        std::fs::remove_file(feed.join("rejected")).unwrap();
        std::fs::write(feed.join("rejected"), b"").unwrap();
        let err = FeedFolders::open(&feed, true)
            .err()
            .expect("a file is refused");
        assert!(err.0.contains("not a folder"), "{err}");
    }

    #[test]
    fn files_are_published_whole_and_never_replace_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = FeedFolders::open(tmp.path(), true).unwrap();
        let mode = std::fs::metadata(tmp.path().join("rejected")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o022,
            0
        );
        let report = OsStr::new("a.errors.txt");
        folders.write_rejected(report, b"one\n").unwrap();
        assert!(folders.write_rejected(report, b"two\n").is_err());
        assert_eq!(
            std::fs::read(tmp.path().join("rejected/a.errors.txt")).unwrap(),
            b"one\n"
        );
        // An unpublished file leaves nothing behind.
        drop(folders.create_in_rejected().unwrap());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("rejected"))
                .unwrap()
                .count(),
            1
        );

        std::fs::write(tmp.path().join("in.csv"), b"x").unwrap();
        std::fs::write(tmp.path().join("processed/in.csv"), b"old").unwrap();
        let used = folders
            .move_to_processed(OsStr::new("in.csv"), OsStr::new("in.csv"))
            .unwrap();
        assert_eq!(used, "in.csv.1");
        assert_eq!(
            std::fs::read(tmp.path().join("processed/in.csv")).unwrap(),
            b"old"
        );
    }
}
