//! Which files in the feed folders are ready to read.
//!
//! Filesystem events are hints; the folder is the truth. [`FolderWatcher`]
//! forwards `notify` events (and a rescan request when the kernel queue
//! overflowed or the watcher failed). [`Settler`] decides readiness:
//! a file renamed into the folder is ready at once (an atomic drop); a file
//! written in place is ready once it has stayed unchanged for the settle
//! interval. The settler takes `now` as an argument, so it is tested without
//! sleeping.

use crate::feeds::intake::is_ignored_name;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// A hint from the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Renamed into a watched folder: complete, ready now.
    Arrived(PathBuf),
    /// Created, written or closed: ready once it settles.
    Changed(PathBuf),
    /// Events may have been lost: rescan everything.
    Rescan,
}

/// Watches the feed folders and sends [`Hint`]s.
pub struct FolderWatcher {
    _watcher: RecommendedWatcher,
}

impl FolderWatcher {
    pub fn new(
        dirs: &[PathBuf],
        hints: mpsc::UnboundedSender<Hint>,
    ) -> notify::Result<FolderWatcher> {
        let mut watcher = notify::recommended_watcher(move |result: notify::Result<Event>| {
            let hint_list = match result {
                Ok(event) => hints_for(&event),
                Err(e) => {
                    tracing::warn!(error = %e, "Folder watcher error; rescanning");
                    vec![Hint::Rescan]
                }
            };
            for h in hint_list {
                // The receiver is gone only during shutdown.
                let _ = hints.send(h);
            }
        })?;
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(FolderWatcher { _watcher: watcher })
    }
}

fn hints_for(event: &Event) -> Vec<Hint> {
    if event.need_rescan() {
        return vec![Hint::Rescan];
    }
    match &event.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            event.paths.iter().cloned().map(Hint::Arrived).collect()
        }
        // With both ends known, the second path is where the file now is.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event
            .paths
            .last()
            .cloned()
            .map(Hint::Arrived)
            .into_iter()
            .collect(),
        EventKind::Modify(ModifyKind::Name(_)) => {
            event.paths.iter().cloned().map(Hint::Changed).collect()
        }
        EventKind::Create(CreateKind::File)
        | EventKind::Create(CreateKind::Any)
        | EventKind::Modify(_) => event.paths.iter().cloned().map(Hint::Changed).collect(),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            event.paths.iter().cloned().map(Hint::Changed).collect()
        }
        _ => Vec::new(),
    }
}

/// What the settler last saw of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl Observed {
    pub fn of(path: &Path) -> Option<Observed> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(Observed {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

#[derive(Debug)]
struct Waiting {
    seen: Option<Observed>,
    since: Instant,
}

/// Decides when a file is ready to be read.
#[derive(Debug)]
pub struct Settler {
    settle: Duration,
    waiting: HashMap<PathBuf, Waiting>,
}

impl Settler {
    pub fn new(settle: Duration) -> Settler {
        Settler {
            settle,
            waiting: HashMap::new(),
        }
    }

    /// Notes that `path` changed at `now`; its settle interval starts again.
    pub fn changed(&mut self, path: PathBuf, seen: Option<Observed>, now: Instant) {
        self.waiting.insert(path, Waiting { seen, since: now });
    }

    /// Notes a file found by a rescan. A file last modified longer than the
    /// settle interval ago is ready at once; returns true then.
    pub fn found(
        &mut self,
        path: PathBuf,
        seen: Option<Observed>,
        now: Instant,
        wall_now: SystemTime,
    ) -> bool {
        if self.waiting.contains_key(&path) {
            return false;
        }
        let old_enough = seen
            .and_then(|s| s.modified)
            .and_then(|m| wall_now.duration_since(m).ok())
            .is_some_and(|age| age >= self.settle);
        if old_enough {
            return true;
        }
        self.waiting.insert(path, Waiting { seen, since: now });
        false
    }

    /// Forgets a path (it was processed, or it is gone).
    pub fn forget(&mut self, path: &Path) {
        self.waiting.remove(path);
    }

    /// Files whose settle interval has passed. `observe` re-reads a file's
    /// size and time; a file that changed meanwhile waits another interval.
    pub fn ready(
        &mut self,
        now: Instant,
        mut observe: impl FnMut(&Path) -> Option<Observed>,
    ) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        let settle = self.settle;
        self.waiting.retain(|path, w| {
            if now.duration_since(w.since) < settle {
                return true;
            }
            let current = observe(path);
            if current.is_none() {
                return false; // gone
            }
            if current == w.seen {
                ready.push(path.clone());
                false
            } else {
                w.seen = current;
                w.since = now;
                true
            }
        });
        ready.sort();
        ready
    }

    /// When the next waiting file may become ready.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.since + self.settle).min()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The candidate files directly in `dir`, in name order: not hidden, not
/// temporary, and not the `processed`/`rejected` folders.
pub fn scan(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            // Not UTF-8: still a file to process (or reject), by path.
            out.push(entry.path());
            continue;
        };
        if is_ignored_name(name) {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(len: u64) -> Option<Observed> {
        Some(Observed {
            len,
            modified: None,
        })
    }

    #[test]
    fn a_file_written_in_place_waits_until_it_stops_changing() {
        let t0 = Instant::now();
        let s = Duration::from_secs(2);
        let mut settler = Settler::new(s);
        let p = PathBuf::from("/in/a.csv");
        settler.changed(p.clone(), obs(10), t0);
        assert!(
            settler
                .ready(t0 + Duration::from_secs(1), |_| obs(10))
                .is_empty()
        );
        // Grew meanwhile: wait another interval.
        assert!(settler.ready(t0 + s, |_| obs(20)).is_empty());
        assert!(
            settler
                .ready(t0 + s + Duration::from_secs(1), |_| obs(20))
                .is_empty()
        );
        assert_eq!(settler.ready(t0 + s + s, |_| obs(20)), vec![p]);
        assert!(settler.is_empty());
    }

    #[test]
    fn rescans_take_old_files_at_once_and_new_ones_after_settling() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut settler = Settler::new(Duration::from_secs(2));
        let old = Some(Observed {
            len: 5,
            modified: Some(wall - Duration::from_secs(60)),
        });
        let fresh = Some(Observed {
            len: 5,
            modified: Some(wall),
        });
        assert!(settler.found("/in/old.csv".into(), old, t0, wall));
        assert!(!settler.found("/in/new.csv".into(), fresh, t0, wall));
        assert_eq!(settler.next_deadline(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(
            settler.ready(t0 + Duration::from_secs(2), |_| fresh),
            vec![PathBuf::from("/in/new.csv")]
        );
    }

    #[test]
    fn vanished_files_are_dropped() {
        let t0 = Instant::now();
        let mut settler = Settler::new(Duration::from_secs(1));
        settler.changed("/in/x".into(), obs(1), t0);
        assert!(
            settler
                .ready(t0 + Duration::from_secs(1), |_| None)
                .is_empty()
        );
        assert!(settler.is_empty());
    }
}
