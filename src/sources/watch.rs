//! File-mode hot reload: watch the config directory (the directory, not the files, so
//! symlink-swapped ConfigMap volumes and editors that replace files are seen), debounce bursts
//! of events, reload, compile against the live table and publish.
//!
//! Reload rule: when the directory has errors and a table is already live, the live table keeps
//! serving and the errors are reported (one log line per error naming file:line:column, object and
//! field; `meshroute_config_reload_errors_total`; `/status` on the admin server). At startup,
//! the valid objects are published and the errors reported the same way. A reload whose table
//! equals the live one (a resync, a file rewritten with the same content) publishes nothing;
//! one that differs logs which routes were added, removed or edited.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::compile::{compile, CompileOptions};
use crate::proxy::Proxy;
use crate::sources::file::load_dir;
use crate::table::diff::TableDigest;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A steady stream of events still reloads this often.
const MAX_DELAY: Duration = Duration::from_millis(400);

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

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new table was published with this generation.
    Published(u64),
    /// The directory compiles to the live table (this generation): nothing was published.
    Unchanged(u64),
    /// The directory had errors; the live table (this generation) keeps serving. `settling`:
    /// some file was caught being written, so another reload is due soon.
    Kept { generation: u64, settling: bool },
}

/// How soon a directory with a file caught mid-write is read again.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

/// Load the directory, compile and publish (or keep the live table, per the reload rule).
/// Blocking: run it on a blocking thread.
pub fn reload_once(
    dir: &Path,
    proxy: &Proxy,
    opts: &CompileOptions,
    status: &ReloadStatus,
) -> Reloaded {
    let outcome = load_dir(dir);
    let metrics = &proxy.metrics;
    metrics.reloads.inc();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let errors: Vec<String> = outcome.errors.iter().map(|e| e.to_string()).collect();
    for e in &errors {
        tracing::warn!(dir = %dir.display(), "configuration error: {e}");
    }
    if !errors.is_empty() {
        metrics.reload_errors.inc();
        metrics.config_ok.set(0);
        if proxy.is_ready() {
            let live = proxy.table().generation;
            tracing::warn!(
                generation = live,
                errors = errors.len(),
                "configuration rejected; the last good table keeps serving"
            );
            status.update(|s| {
                s.config_ok = false;
                s.errors = errors;
                s.reloads += 1;
                s.last_reload_unix = now;
            });
            return Reloaded::Kept {
                generation: live,
                settling: outcome.errors.iter().any(|e| e.transient),
            };
        }
    } else {
        metrics.config_ok.set(1);
    }
    let prev = proxy.table();
    let compiled = compile(&outcome.index, opts, Some(&prev));
    let route_problems = compiled.route_problems();
    // Resyncs and rewrites with the same content must not churn generations, pools and logs.
    let changes = if proxy.is_ready() {
        let changes = TableDigest::of(&prev).changes(&TableDigest::of(&compiled.table));
        if changes.is_empty() {
            let generation = prev.generation;
            tracing::debug!(generation, "configuration unchanged; nothing to publish");
            status.update(|s| {
                s.config_ok = true;
                s.errors = errors;
                s.route_problems = route_problems;
                s.reloads += 1;
                s.last_reload_unix = now;
            });
            return Reloaded::Unchanged(generation);
        }
        Some(changes)
    } else {
        None
    };
    drop(prev);
    for p in &route_problems {
        tracing::warn!("route not fully accepted: {p}");
    }
    let parents = compiled.table.parent_count();
    let generation = proxy.publish(compiled.table);
    match changes {
        Some(c) => tracing::info!(
            generation,
            parents,
            changes = %c,
            "routing table published"
        ),
        None => tracing::info!(generation, parents, "routing table published"),
    }
    status.update(|s| {
        s.generation = generation;
        s.config_ok = errors.is_empty();
        s.errors = errors;
        s.route_problems = route_problems;
        s.reloads += 1;
        s.last_reload_unix = now;
    });
    Reloaded::Published(generation)
}

/// A registered directory watch; events flow from the moment [`DirWatch::new`] returns, so
/// nothing written after startup can be missed.
///
/// The directory's parent is watched too, for the directory itself: `rm -rf dir && cp -r new
/// dir` (what many deploy scripts do) removes the watched inode, and the new directory is
/// watched again as soon as it appears.
pub struct DirWatch {
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<()>,
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
        let (tx, rx) = mpsc::unbounded_channel::<()>();
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
                    let _ = tx.send(());
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
    fn rearm(&mut self) {
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
        }
    }
}

/// The directory that holds `dir` (`.` for a relative name without one).
fn parent_of(dir: &Path) -> Option<PathBuf> {
    let abs = std::fs::canonicalize(dir).ok()?;
    abs.parent().map(Path::to_path_buf)
}

/// Reload on every change seen by `watch` until `shutdown` resolves. Also reloads once per
/// `resync` as a safety net for filesystems that drop events, and again shortly after a
/// reload that caught a file mid-write.
pub async fn watch(
    mut watch: DirWatch,
    proxy: Arc<Proxy>,
    opts: CompileOptions,
    status: Arc<ReloadStatus>,
    resync: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let resync = resync.unwrap_or(Duration::from_secs(24 * 3600));
    let mut next_wait = resync;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            ev = watch.rx.recv() => if ev.is_none() { break },
            () = tokio::time::sleep(next_wait) => {},
        }
        // Debounce: editors and kubelet produce bursts (write, rename, chmod, symlink swap).
        let first = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(DEBOUNCE.min(left), watch.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        while watch.rx.try_recv().is_ok() {}
        watch.rearm();
        let (d, p, o, s) = (
            watch.dir.clone(),
            proxy.clone(),
            opts.clone(),
            status.clone(),
        );
        next_wait = match tokio::task::spawn_blocking(move || reload_once(&d, &p, &o, &s)).await {
            Ok(Reloaded::Kept { settling: true, .. }) => SETTLE_RETRY,
            Ok(_) => resync,
            Err(e) => {
                tracing::error!(error = %e, "reload task failed");
                resync
            }
        };
    }
}
