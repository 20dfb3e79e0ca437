//! Helpers for the fault-injection tests (`tests/faults.rs`): a seeded RNG, figures from the
//! environment, the test SMTP server's maildir counted cheaply, times read from the daemon's
//! text log, the SQLite file checked from outside, and a small mounted filesystem for the
//! full-disk test.
//!
//! Include after `mod support; mod e2e_support;` with `mod faults_support;`.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------------
// Randomness and figures
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, seeded, good enough to pick kill moments repeatably.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A whole number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// A number from the environment (`NAME=123`), else `default`. Panics on garbage, so a typo in
/// a long run is not silently the short run.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// How many messages the test SMTP server has stored in `maildir` (`NNNNNN.json`), without
/// reading them.
pub fn stored_count(maildir: &Path) -> usize {
    fs::read_dir(maildir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.len() == 11
                        && name.ends_with(".json")
                        && name[..6].bytes().all(|b| b.is_ascii_digit())
                })
                .count()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The daemon's text log
// ---------------------------------------------------------------------------------------------

/// The time stamp that starts a text log line (`2025-11-04T09:12:00.123456Z  WARN ...`), as
/// seconds since the epoch (the same clock as the SMTP server's `connections.log`).
pub fn line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let t: jiff::Timestamp = stamp.parse().ok()?;
    Some(t.as_microsecond() as f64 / 1e6)
}

/// The level of a text log line (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`).
pub fn line_level(line: &str) -> Option<&str> {
    line.split_whitespace()
        .nth(1)
        .filter(|l| ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(l))
}

/// The `error=` field of a text log line: unquoted and with spaces, it runs to the next
/// ` key=` (the daemon logs `retry_in_secs` after it).
pub fn error_field(line: &str) -> Option<String> {
    let start = line.find(" error=")? + " error=".len();
    let rest = &line[start..];
    let end = rest.find(" retry_in_secs=").unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

// ---------------------------------------------------------------------------------------------
// The database, from outside
// ---------------------------------------------------------------------------------------------

/// `PRAGMA integrity_check` on the database as the daemon left it, opened read-only.
pub fn integrity_read_only(db: &Path) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    all_rows_of_integrity_check(&conn)
}

/// `PRAGMA integrity_check` on a copy of the database and its WAL (not the shared-memory
/// index) in `scratch`: opening the copy runs the crash recovery a restarted daemon would,
/// without touching the original. Use while the daemon is dead (just after a SIGKILL).
pub fn integrity_of_copy(db: &Path, scratch: &Path) -> String {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).unwrap();
    let copy = scratch.join("copy.db");
    if !db.exists() {
        return "ok (no database yet)".into();
    }
    fs::copy(db, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", db.display()));
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if wal.exists() {
        fs::copy(&wal, scratch.join("copy.db-wal")).unwrap();
    }
    let conn = rusqlite::Connection::open(&copy).unwrap();
    all_rows_of_integrity_check(&conn)
}

fn all_rows_of_integrity_check(conn: &rusqlite::Connection) -> String {
    let mut stmt = conn.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| vec![format!("integrity_check failed to run: {e}")]);
    rows.join("\n")
}

/// One number from the database, opened read-only (e.g. `SELECT COUNT(*) FROM alerts`).
pub fn query_count(db: &Path, sql: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// A small filesystem for the full-disk test
// ---------------------------------------------------------------------------------------------

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A small filesystem mounted at a folder; unmounted on drop (lazily if still busy).
pub struct SmallFs {
    mountpoint: PathBuf,
    image: Option<PathBuf>,
    pub kind: &'static str,
}

impl SmallFs {
    /// Mounts a `size_mb` MiB tmpfs at `mountpoint`, or, if tmpfs may not be mounted, a loop
    /// ext4 image of that size kept in `image_dir`. `Err` says why neither worked.
    pub fn mount(mountpoint: &Path, image_dir: &Path, size_mb: u64) -> Result<SmallFs, String> {
        fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        let tmpfs = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m"),
                "tmpfs",
                mountpoint.to_str().unwrap(),
            ],
        );
        let tmpfs_error = match tmpfs {
            Ok(()) => {
                return Ok(SmallFs {
                    mountpoint: mountpoint.to_path_buf(),
                    image: None,
                    kind: "tmpfs",
                });
            }
            Err(e) => e,
        };
        let image = image_dir.join("small-ext4.img");
        let image_s = image.to_str().unwrap();
        let loop_result = run("truncate", &["-s", &format!("{size_mb}M"), image_s])
            .and_then(|()| run("mkfs.ext4", &["-q", "-F", image_s]))
            .and_then(|()| {
                run(
                    "mount",
                    &["-o", "loop", image_s, mountpoint.to_str().unwrap()],
                )
            });
        match loop_result {
            Ok(()) => Ok(SmallFs {
                mountpoint: mountpoint.to_path_buf(),
                image: Some(image),
                kind: "loop ext4",
            }),
            Err(loop_error) => {
                let _ = fs::remove_file(&image);
                Err(format!(
                    "mount tmpfs: {tmpfs_error}; loop-mounted ext4: {loop_error}"
                ))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let mp = self.mountpoint.to_str().unwrap().to_string();
        if run("umount", &[&mp]).is_err() {
            let _ = run("umount", &["-l", &mp]);
        }
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fills the filesystem holding `path` with the file `path` until the disk is full (ENOSPC).
/// Returns the bytes written.
pub fn fill_disk(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let block = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // The last partial block: byte by byte in small writes.
    let small = [0xA5u8; 512];
    while let Ok(n) = f.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}
