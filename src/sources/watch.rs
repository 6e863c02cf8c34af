//! File-mode hot reload: watch the config directory (the directory, not the files, so
//! symlink-swapped ConfigMap volumes and editors that replace files are seen), debounce bursts
//! of events ([`DEBOUNCE`] of quiet, at most [`MAX_DELAY`]), re-read only the files the events
//! name ([`crate::sources::file_state`]) and send what they hold now through the source seam
//! ([`crate::sources::seam`]) as one patch; the seam's loop compiles incrementally and
//! publishes.
//!
//! Reload rule: when the directory has errors and a table is already live, the live table keeps
//! serving and the errors are reported (one log line per error naming file:line:column, object and
//! field; `meshroute_config_reload_errors_total`; `/status` on the admin server). At startup,
//! the valid objects are published and the errors reported the same way. A reload whose table
//! equals the live one (a resync, a file rewritten with the same content) publishes nothing;
//! one that differs logs which routes were added, removed or edited.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::sources::file_state::{DirState, Round, Scan};
use crate::sources::seam::{Feed, Item, SourceEvent};

/// Quiet time after the last event before reloading. Editors and kubelet finish a burst
/// (write, rename, chmod, symlink swap) within a millisecond or two; a file caught half
/// written is noticed and read again ([`SETTLE_RETRY`]).
pub const DEBOUNCE: Duration = Duration::from_millis(20);
/// A steady stream of events still reloads this often.
pub const MAX_DELAY: Duration = Duration::from_millis(400);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir}: {source}")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// What the last reload did, for the admin server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadState {
    /// Generation of the live table (0 before the first publish).
    pub generation: u64,
    /// True when the live table reflects the directory as it is now.
    pub config_ok: bool,
    /// Errors of the last reload (empty when it was clean).
    pub errors: Vec<String>,
    /// Routes whose status is not Accepted (or is PartiallyInvalid) in the live table.
    pub route_problems: Vec<String>,
    pub reloads: u64,
    /// Seconds since the Unix epoch of the last reload attempt.
    pub last_reload_unix: u64,
    /// Kubernetes mode (unless `--read-only`): the status writer's leader election.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_writer: Option<StatusWriterState>,
}

/// Whether this replica writes route status and Events, and if no replica can, why.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatusWriterState {
    /// The Lease, `namespace/name`.
    pub lease: String,
    pub identity: String,
    /// This replica holds the Lease and writes.
    pub leader: bool,
    /// Why the Lease cannot be read, taken or renewed (`None` while it can).
    pub error: Option<String>,
}

/// Shared reload status.
#[derive(Debug, Default)]
pub struct ReloadStatus(Mutex<ReloadState>);

impl ReloadStatus {
    pub fn snapshot(&self) -> ReloadState {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut ReloadState)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// How soon a directory with a file caught mid-write is read again.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// Read what `scan` names and send it to the seam (reload rule: once a table is live, a
/// directory with errors is refused as a whole and the live table keeps serving). Returns the
/// state back, and how soon to read again unprompted: soon when a file was caught mid-write,
/// else `resync`.
async fn send_round(
    mut state: DirState,
    scan: Scan,
    tx: &mpsc::UnboundedSender<SourceEvent>,
    resync: Duration,
) -> (DirState, Duration) {
    let feed = Feed::files();
    let first = !state.listed;
    let dir = state.dir().to_path_buf();
    let early_tx = tx.clone();
    let started = std::time::Instant::now();
    let joined = tokio::task::spawn_blocking(move || {
        let mut early = |objects: Vec<crate::model::Object>| {
            let items = objects.into_iter().map(Item::from_manifest).collect();
            let _ = early_tx.send(SourceEvent::Patch(Feed::files(), items, Vec::new()));
        };
        let outcome = state.round(scan, &mut early);
        (state, outcome)
    })
    .await;
    let (state, outcome) = match joined {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading the configuration directory failed");
            // The state went with the task; start over with a whole read.
            return (DirState::new(dir), resync);
        }
    };
    let next = if outcome.settling {
        SETTLE_RETRY
    } else {
        resync
    };
    tracing::debug!(
        files = outcome.read,
        elapsed_us = started.elapsed().as_micros() as u64,
        "configuration files read"
    );
    match outcome.round {
        Round::Refused(errors) => {
            for e in &errors {
                tracing::warn!(dir = %dir.display(), "configuration error: {e}");
            }
            let _ = tx.send(SourceEvent::Refused(feed, errors));
        }
        Round::Patch {
            apply,
            delete,
            problems,
        } => {
            for e in &problems {
                tracing::warn!(dir = %dir.display(), "configuration error: {e}");
            }
            let items = apply.into_iter().map(Item::from_manifest).collect();
            let _ = tx.send(SourceEvent::Patch(feed.clone(), items, delete));
            // At startup the valid objects are published and the errors reported with them.
            let _ = tx.send(SourceEvent::Problems(feed.clone(), problems));
            if first {
                let _ = tx.send(SourceEvent::Synced(feed));
            }
        }
    }
    (state, next)
}

/// A registered directory watch; events flow from the moment [`DirWatch::new`] returns, so
/// nothing written after startup can be missed.
///
/// The directory's parent is watched too, for the directory itself: `rm -rf dir && cp -r new
/// dir` (what many deploy scripts do) removes the watched inode, and the new directory is
/// watched again as soon as it appears.
pub struct DirWatch {
    dir: PathBuf,
    /// Paths of each event (empty: the event names no path).
    rx: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    watcher: notify::RecommendedWatcher,
    /// (device, inode) of the directory being watched, if it exists.
    watched: Option<(u64, u64)>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch").field("dir", &self.dir).finish()
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

impl DirWatch {
    /// Start watching `dir` (not recursively: the loader reads only its direct entries).
    pub fn new(dir: PathBuf) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel::<Vec<PathBuf>>();
        // Events of the parent matter only when they are about the directory itself. Event
        // paths are spelled like the watched path (relative for the directory, absolute for
        // the canonical parent), so both spellings are in scope.
        let scope = [
            dir.clone(),
            std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone()),
        ];
        let handler = move |res: notify::Result<notify::Event>| match res {
            // Our own reads show up as Access events; reacting to them would loop forever.
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
            Ok(ev) => {
                if ev.paths.is_empty()
                    || ev
                        .paths
                        .iter()
                        .any(|p| scope.iter().any(|d| p.starts_with(d)))
                {
                    let _ = tx.send(ev.paths);
                }
            }
            Err(e) => tracing::warn!(error = %e, "directory watch error"),
        };
        let watch_err = |source| WatchError::Watch {
            dir: dir.clone(),
            source,
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(watch_err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        if let Some(parent) = parent_of(&dir) {
            if let Err(e) = watcher.watch(&parent, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %parent.display(), error = %e, "cannot watch the configuration directory's parent; a replaced directory is noticed at the next resync");
            }
        }
        tracing::info!(dir = %dir.display(), "watching configuration directory");
        Ok(DirWatch {
            watched: identity(&dir),
            dir,
            rx,
            watcher,
        })
    }

    /// Watch the directory again, whichever inode it is now. Done before every reload: a
    /// replaced directory may even reuse the old inode number, so comparing identities is not
    /// enough, and re-adding a live watch costs two system calls. Anything written before the
    /// reload that follows is read by it, so the moment between unwatch and watch loses nothing.
    /// Returns whether the directory was replaced (or went, or came back).
    fn rearm(&mut self) -> bool {
        let now = identity(&self.dir);
        let _ = self.watcher.unwatch(&self.dir);
        if now.is_some() {
            if let Err(e) = self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the configuration directory");
            }
        }
        if now != self.watched {
            match now {
                Some(_) => {
                    tracing::info!(dir = %self.dir.display(), "configuration directory replaced; watching the new one")
                }
                None => {
                    tracing::warn!(dir = %self.dir.display(), "configuration directory is gone; watching for it to come back")
                }
            }
            self.watched = now;
            return true;
        }
        false
    }
}

/// The directory that holds `dir` (`.` for a relative name without one).
fn parent_of(dir: &Path) -> Option<PathBuf> {
    let abs = std::fs::canonicalize(dir).ok()?;
    abs.parent().map(Path::to_path_buf)
}

/// File mode's source: send the directory to the seam now and on every change seen by
/// `watch` (debounced) until `shutdown` resolves or the seam closes. Also re-reads once per
/// `resync` as a safety net for filesystems that drop events, and again shortly after a read
/// that caught a file mid-write.
pub async fn feed(
    mut watch: DirWatch,
    tx: mpsc::UnboundedSender<SourceEvent>,
    resync: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let resync = resync.unwrap_or(Duration::from_secs(24 * 3600));
    let (mut state, mut next_wait) =
        send_round(DirState::new(watch.dir.clone()), Scan::Stamps, &tx, resync).await;
    loop {
        // Which files: those the events name; every file's stamp when an event names none
        // (or the directory itself), and on the resync and settle timers.
        let mut paths: Option<Vec<PathBuf>> = Some(Vec::new());
        let add = |ev: Vec<PathBuf>, paths: &mut Option<Vec<PathBuf>>| match paths {
            Some(p) if !ev.is_empty() => p.extend(ev),
            _ => *paths = None,
        };
        tokio::select! {
            () = &mut shutdown => break,
            ev = watch.rx.recv() => match ev {
                None => break,
                Some(ev) => add(ev, &mut paths),
            },
            () = tokio::time::sleep(next_wait) => paths = None,
        }
        // Debounce: editors and kubelet produce bursts (write, rename, chmod, symlink swap).
        let first = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(DEBOUNCE.min(left), watch.rx.recv()).await {
                Ok(Some(ev)) => add(ev, &mut paths),
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(ev) = watch.rx.try_recv() {
            add(ev, &mut paths);
        }
        if watch.rearm() {
            paths = None;
        }
        if tx.is_closed() {
            break;
        }
        let scan = match paths {
            Some(p) => Scan::Paths(p),
            None => Scan::Stamps,
        };
        (state, next_wait) = send_round(state, scan, &tx, resync).await;
    }
}
