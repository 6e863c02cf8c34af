//! The source seam: every source — the config directory (file mode), the local API server's
//! watches, each linked cluster's — is a set of [`Feed`]s sending [`SourceEvent`]s (reset /
//! apply / delete / synced, plus cluster link changes and a directory's refusal) into one
//! channel. One loop (`run_loop`) applies them to one [`Index`], and once every expected feed
//! has synced compiles, publishes the table and reports status (admin `/status`, metrics, and
//! in Kubernetes mode the [`Snapshot`] the status writer works from).
//!
//! - **A relist replaces a feed atomically**: `Reset`/`ResetApply` are buffered and swapped in
//!   on `Synced`, so the table never sees a half-listed kind (or a half-read directory).
//! - **Batching without a timer**: events already queued are applied together and compiled
//!   once.
//! - **Unchanged tables are not published**: a compile equal to the live table (a resync, a
//!   relist, a file rewritten with the same content) keeps the generation, pools and logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::kube::{Rejected, RouteInfo, Slot, Snapshot};
use crate::compile::incremental::Incremental;
use crate::compile::CompileOptions;
use crate::index::Index;
use crate::model::{Object, ObjectKey};
use crate::proxy::Proxy;
use crate::sources::watch::ReloadStatus;

/// One object as a source read it: decoded, or why it could not be.
#[derive(Debug)]
pub struct Item {
    pub key: ObjectKey,
    pub object: Result<Object, String>,
    /// Route-like objects in Kubernetes mode: what the status writer needs.
    pub info: Option<RouteInfo>,
    pub api_version: String,
    pub uid: Option<String>,
}

impl Item {
    /// An object read from a manifest file.
    pub fn from_manifest(object: Object) -> Item {
        Item {
            key: object.key(),
            api_version: object.api_version(),
            object: Ok(object),
            info: None,
            uid: None,
        }
    }
}

/// Where objects come from: the config directory (file mode), the local API server, or a
/// linked cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Files,
    Local,
    Linked(Arc<str>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Files => f.write_str("config directory"),
            Origin::Local => f.write_str("local"),
            Origin::Linked(c) => write!(f, "linked cluster {c}"),
        }
    }
}

/// One watch: a kind, from a source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Feed {
    pub origin: Origin,
    pub slot: Slot,
}

impl Feed {
    /// Every object of the config directory (file mode): one feed, relisted on every reload.
    pub fn files() -> Feed {
        Feed {
            origin: Origin::Files,
            slot: Slot::Manifests,
        }
    }
}

impl Slot {
    /// This kind from the local API server.
    pub fn local(self) -> Feed {
        Feed {
            origin: Origin::Local,
            slot: self,
        }
    }
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Files | Origin::Local => write!(f, "{}", self.slot),
            Origin::Linked(c) => write!(f, "{} ({c})", self.slot),
        }
    }
}

/// The source seam: every watch (the local API server's kinds, each linked cluster's Services
/// and EndpointSlices) sends these into one channel; one loop applies them to one [`Index`]
/// and compiles, publishes and reports status.
#[derive(Debug)]
pub enum SourceEvent {
    /// A (re)list of the feed begins: what follows replaces the feed's objects atomically.
    Reset(Feed),
    /// One object of the list in progress.
    ResetApply(Feed, Item),
    /// The list is complete (the feed is synced).
    Synced(Feed),
    Apply(Feed, Item),
    Delete(Feed, ObjectKey),
    /// Several applies and deletes taken together (file mode: what the files a change
    /// touched hold now), never compiled half-way.
    Patch(Feed, Vec<Item>, Vec<ObjectKey>),
    /// A linked cluster joins (a `Link` appeared): mirrors of it now resolve, to nothing until
    /// its feeds have listed.
    Linked(Arc<str>),
    /// A linked cluster leaves (its `Link` was deleted): its objects go.
    Unlinked(Arc<str>),
    /// Problems of the list in progress that are not one object's (file mode: files that do
    /// not parse), reported with the next table; replaced by the feed's next report.
    Problems(Feed, Vec<String>),
    /// The source refuses its current content as a whole (file mode: a directory with errors
    /// once a table is live): the last table keeps serving and these are reported.
    Refused(Feed, Vec<String>),
}

/// The sources' view of the world: one index and what is needed to report on it.
pub(crate) struct State {
    pub(crate) index: Index,
    /// Keys present per feed, to find what a relist dropped.
    pub(crate) known: BTreeMap<Feed, BTreeSet<ObjectKey>>,
    /// Objects of a relist in progress.
    pub(crate) buffers: BTreeMap<Feed, Vec<Item>>,
    pub(crate) synced: BTreeSet<Feed>,
    /// Feeds that must have listed before the first table (the local ones: a linked cluster
    /// that cannot be reached must not keep the local routes from serving).
    pub(crate) expected: BTreeSet<Feed>,
    pub(crate) infos: BTreeMap<ObjectKey, Arc<RouteInfo>>,
    pub(crate) rejected: BTreeMap<ObjectKey, Rejected>,
    /// Problems per feed ([`SourceEvent::Problems`]).
    pub(crate) problems: BTreeMap<Feed, Vec<String>>,
    /// Refusals not yet reported ([`SourceEvent::Refused`]).
    pub(crate) refused: Vec<String>,
    pub(crate) dirty: bool,
    /// The compile state carried between tables (created at the first publish).
    pub(crate) compiled: Option<Incremental>,
}

impl State {
    /// Rebuild the key maps filled at start-up with full B-tree nodes (see
    /// [`Index::compact`]): the per-feed key sets and the route infos.
    pub(crate) fn compact(&mut self) {
        for keys in self.known.values_mut() {
            *keys = std::mem::take(keys).into_iter().collect();
        }
        self.infos = std::mem::take(&mut self.infos).into_iter().collect();
        self.index.compact();
    }

    pub(crate) fn new(expected: BTreeSet<Feed>) -> Self {
        let mut index = Index::new();
        index.track_changes();
        State {
            index,
            known: BTreeMap::new(),
            buffers: BTreeMap::new(),
            synced: BTreeSet::new(),
            expected,
            infos: BTreeMap::new(),
            rejected: BTreeMap::new(),
            problems: BTreeMap::new(),
            refused: Vec::new(),
            dirty: false,
            compiled: None,
        }
    }

    fn upsert(&mut self, feed: &Feed, item: Item) {
        self.known
            .entry(feed.clone())
            .or_default()
            .insert(item.key.clone());
        if let Origin::Linked(cluster) = &feed.origin {
            // Services and EndpointSlices only: no status, no Events in a linked cluster.
            let result = match item.object {
                Ok(object) => self.index.linked(cluster).apply(object).map_err(|errs| {
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(cluster = %cluster, object = %item.key, "{}: cannot be read from linked cluster {cluster}: {e}", item.key);
            }
            return;
        }
        match item.info {
            Some(info) => {
                self.infos.insert(item.key.clone(), Arc::new(info));
            }
            None => {
                self.infos.remove(&item.key);
            }
        }
        let refused = match item.object {
            Ok(object) => match self.index.apply(object) {
                Ok(()) => None,
                Err(errs) => {
                    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                    Some(("Invalid", errs.join("; ")))
                }
            },
            Err(e) => Some(("Unreadable", e)),
        };
        match refused {
            None => {
                self.rejected.remove(&item.key);
            }
            Some((reason, message)) => {
                // Like an edit the API server refuses: an earlier good version keeps serving.
                tracing::warn!(object = %item.key, api_version = %item.api_version, "{}: {}: {message}", item.key, if reason == "Unreadable" { "cannot be read" } else { "refused" });
                self.rejected.insert(
                    item.key.clone(),
                    Rejected {
                        key: item.key,
                        api_version: item.api_version,
                        uid: item.uid,
                        reason,
                        message,
                    },
                );
            }
        }
    }

    fn remove(&mut self, feed: &Feed, key: &ObjectKey) {
        if let Some(k) = self.known.get_mut(feed) {
            k.remove(key);
        }
        if let Origin::Linked(cluster) = &feed.origin {
            self.index.linked(cluster).delete(key);
            return;
        }
        self.infos.remove(key);
        self.rejected.remove(key);
        self.index.delete(key);
    }

    pub(crate) fn handle(&mut self, ev: SourceEvent) {
        let feed = match &ev {
            SourceEvent::Reset(f)
            | SourceEvent::ResetApply(f, _)
            | SourceEvent::Synced(f)
            | SourceEvent::Apply(f, _)
            | SourceEvent::Delete(f, _)
            | SourceEvent::Patch(f, _, _)
            | SourceEvent::Problems(f, _)
            | SourceEvent::Refused(f, _) => Some(f),
            SourceEvent::Linked(_) | SourceEvent::Unlinked(_) => None,
        };
        if let Some(Feed {
            origin: Origin::Linked(cluster),
            ..
        }) = feed
        {
            if !self.index.remote.contains_key(&**cluster) {
                // Sent by the watch of a Link deleted since.
                return;
            }
        }
        match ev {
            SourceEvent::Reset(feed) => {
                self.buffers.insert(feed, Vec::new());
            }
            SourceEvent::ResetApply(feed, item) => self.buffers.entry(feed).or_default().push(item),
            SourceEvent::Synced(feed) => {
                // Without a relist in progress (file mode sends patches), the feed holds
                // what it applied.
                let relisted = self.buffers.remove(&feed);
                let relist = relisted.is_some();
                let items = relisted.unwrap_or_default();
                let listed: BTreeSet<ObjectKey> = items.iter().map(|i| i.key.clone()).collect();
                let gone: Vec<ObjectKey> = if relist {
                    self.known
                        .get(&feed)
                        .map(|k| k.difference(&listed).cloned().collect())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                for key in &gone {
                    self.remove(&feed, key);
                }
                for item in items {
                    self.upsert(&feed, item);
                }
                if !self.synced.contains(&feed) {
                    let objects = self.known.get(&feed).map_or(0, BTreeSet::len);
                    tracing::info!(kind = %feed.slot, source = %feed.origin, objects, "initial list complete");
                    self.synced.insert(feed);
                }
                self.dirty = true;
            }
            SourceEvent::Apply(feed, item) => {
                self.upsert(&feed, item);
                self.dirty = true;
            }
            SourceEvent::Delete(feed, key) => {
                self.remove(&feed, &key);
                self.dirty = true;
            }
            SourceEvent::Patch(feed, apply, delete) => {
                for key in &delete {
                    self.remove(&feed, key);
                }
                for item in apply {
                    self.upsert(&feed, item);
                }
                self.dirty = true;
            }
            SourceEvent::Linked(cluster) => {
                self.index.linked(&cluster);
                self.dirty = true;
            }
            SourceEvent::Problems(feed, problems) => {
                self.problems.insert(feed, problems);
            }
            SourceEvent::Refused(_, errors) => {
                self.refused = errors;
            }
            SourceEvent::Unlinked(cluster) => {
                let origin = Origin::Linked(cluster.clone());
                self.known.retain(|f, _| f.origin != origin);
                self.buffers.retain(|f, _| f.origin != origin);
                self.synced.retain(|f| f.origin != origin);
                self.index.unlink(&cluster);
                self.dirty = true;
            }
        }
    }

    pub(crate) fn all_synced(&self) -> bool {
        self.expected.is_subset(&self.synced)
    }
}

/// Where the source publishes.
#[derive(Clone)]
pub struct Sinks {
    pub proxy: Arc<Proxy>,
    pub compile: CompileOptions,
    pub status: Arc<ReloadStatus>,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    /// Listener ports named by our EndpointSlices, for the parent port listeners (only when
    /// publishing is on).
    pub parent_ports: Option<watch::Sender<crate::proxy::ports::PortSet>>,
    /// Someone reads routes' statuses from the snapshots (the Kubernetes status writer); file
    /// mode needs only their problems, and keeps nothing else per route.
    pub statuses: bool,
}

/// Apply events as they come until the channel closes or `shutdown` resolves; compile and
/// publish once per batch when something changed and every expected feed has synced.
pub(crate) async fn run_loop(
    mut rx: mpsc::UnboundedReceiver<SourceEvent>,
    state: &mut State,
    sinks: &Sinks,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) {
    loop {
        let msg = tokio::select! {
            () = &mut *shutdown => break,
            m = rx.recv() => m,
        };
        let Some(msg) = msg else { break };
        state.handle(msg);
        // Apply everything already queued, then compile once.
        while let Ok(m) = rx.try_recv() {
            state.handle(m);
        }
        if !state.refused.is_empty() {
            refused(state, sinks);
        }
        if state.dirty && state.all_synced() {
            state.dirty = false;
            publish(state, sinks);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A source refused its content: the live table keeps serving; say so.
fn refused(state: &mut State, sinks: &Sinks) {
    let errors = std::mem::take(&mut state.refused);
    let metrics = &sinks.proxy.metrics;
    metrics.reloads.inc();
    metrics.reload_errors.inc();
    metrics.config_ok.set(0);
    if sinks.proxy.is_ready() {
        tracing::warn!(
            generation = sinks.proxy.table().generation,
            errors = errors.len(),
            "configuration rejected; the last good table keeps serving"
        );
    }
    sinks.status.update(|s| {
        s.config_ok = false;
        s.errors = errors;
        s.reloads += 1;
        s.last_reload_unix = unix_now();
    });
}

fn publish(state: &mut State, sinks: &Sinks) {
    let started = std::time::Instant::now();
    if state.compiled.is_none() {
        // Start-up: everything listed, nothing compiled yet.
        state.compact();
    }
    let compiled = state.compiled.get_or_insert_with(|| {
        Incremental::new(sinks.compile.clone()).keep_statuses(sinks.statuses)
    });
    let update = compiled.update(&mut state.index);
    let compiled = &*compiled;
    let route_problems = compiled.route_problems();
    let parents = update.table.parent_count();
    let rejected: Vec<Rejected> = state.rejected.values().cloned().collect();
    let errors: Vec<String> = state
        .problems
        .values()
        .flatten()
        .cloned()
        .chain(rejected.iter().map(|r| format!("{}: {}", r.key, r.message)))
        .collect();
    let metrics = &sinks.proxy.metrics;
    metrics.reloads.inc();
    if !errors.is_empty() {
        metrics.reload_errors.inc();
    }
    metrics.config_ok.set(i64::from(errors.is_empty()));
    // Resyncs, relists and rewrites with the same content must not churn generations, pools
    // and logs.
    let changes = if sinks.proxy.is_ready() {
        update.changes
    } else {
        None
    };
    let generation = match &changes {
        Some(c) if c.is_empty() => {
            let generation = sinks.proxy.table().generation;
            tracing::debug!(generation, "table unchanged; nothing to publish");
            generation
        }
        _ => {
            for p in &route_problems {
                tracing::warn!("route not fully accepted: {p}");
            }
            let ports = update.table.local_port_numbers();
            let generation = sinks.proxy.publish(update.table);
            // After the table: a connection to a new port must find its parent.
            if let Some(tx) = &sinks.parent_ports {
                tx.send_if_modified(|have| {
                    if **have == ports {
                        return false;
                    }
                    *have = Arc::new(ports);
                    true
                });
            }
            match &changes {
                None => tracing::info!(
                    generation,
                    parents,
                    "every source has listed; first routing table published"
                ),
                Some(c) => tracing::info!(
                    generation,
                    parents,
                    routes_recompiled = update.routes,
                    parents_rebuilt = update.parents,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    changes = %c,
                    "routing table published"
                ),
            }
            generation
        }
    };
    sinks.status.update(|s| {
        s.generation = generation;
        s.config_ok = errors.is_empty();
        s.errors = errors;
        s.route_problems = route_problems;
        s.reloads += 1;
        s.last_reload_unix = unix_now();
    });
    // Endpoint publishing walks every parent: after the table serves and /status says so,
    // not on the way there.
    let publish = if sinks.compile.publish_endpoints {
        crate::compile::publish::candidates(&state.index, &sinks.proxy.table())
    } else {
        Vec::new()
    };
    sinks.snapshots.send_replace(Arc::new(Snapshot {
        statuses: compiled.statuses().cloned().collect(),
        infos: state.infos.clone(),
        rejected,
        publish,
        synced: true,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::file::parse_documents;

    fn items(yaml: &str) -> Vec<Item> {
        parse_documents(std::path::Path::new("t.yaml"), yaml)
            .into_iter()
            .map(|l| Item::from_manifest(l.expect("parses").object))
            .collect()
    }

    fn relist(st: &mut State, yaml: &str) {
        st.handle(SourceEvent::Reset(Feed::files()));
        for i in items(yaml) {
            st.handle(SourceEvent::ResetApply(Feed::files(), i));
        }
        st.handle(SourceEvent::Problems(Feed::files(), vec![]));
        st.handle(SourceEvent::Synced(Feed::files()));
    }

    #[test]
    fn the_directory_is_one_feed_relisted_whole_and_a_refusal_leaves_the_index_alone() {
        let svc = |n: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: ns}}\n---\n")
        };
        let mut st = State::new([Feed::files()].into());
        assert!(!st.all_synced());
        relist(&mut st, &format!("{}{}", svc("a"), svc("b")));
        assert!(st.all_synced());
        assert_eq!(st.index.services.len(), 2);
        // A reload without `a`: it goes.
        relist(&mut st, &svc("b"));
        let names: Vec<_> = st.index.services.keys().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, ["b"]);
        // A refused directory: the index (hence the live table) is untouched, the errors wait
        // to be reported.
        st.handle(SourceEvent::Refused(
            Feed::files(),
            vec!["t.yaml:1: bad".into()],
        ));
        assert_eq!(st.index.services.len(), 1);
        assert_eq!(st.refused, ["t.yaml:1: bad"]);
    }

    #[test]
    fn file_mode_patches_apply_and_delete_together_and_synced_without_a_relist_keeps_them() {
        let svc = |n: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: ns}}\n---\n")
        };
        let mut st = State::new([Feed::files()].into());
        st.handle(SourceEvent::Patch(Feed::files(), items(&svc("a")), vec![]));
        st.handle(SourceEvent::Patch(Feed::files(), items(&svc("b")), vec![]));
        assert!(!st.all_synced());
        st.handle(SourceEvent::Synced(Feed::files()));
        assert!(st.all_synced());
        assert_eq!(
            st.index.services.len(),
            2,
            "a Synced without a Reset removes nothing"
        );
        let a = items(&svc("a")).remove(0).key;
        st.handle(SourceEvent::Patch(Feed::files(), items(&svc("c")), vec![a]));
        let names: Vec<_> = st.index.services.keys().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(st.known[&Feed::files()].len(), 2);
    }
}
