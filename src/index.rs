//! The index: the current set of objects from a source, keyed the way the API server keys them.
//! Routes are stored admitted (see `compile::validate`); everything else is stored as read.
//! Sorted maps make every walk deterministic, so compiling is independent of arrival order.
//!
//! An index that [tracks changes](Index::track_changes) also records what each apply or
//! delete touched ([`Changes`]), so that an incremental compile
//! ([`crate::compile::incremental`]) rebuilds only what depends on it.
//!
//! Services, EndpointSlices and admitted routes are boxed in their maps: the maps fill in key
//! order (a directory is read in name order), which leaves B-tree nodes about half full, and a
//! node holds its values inline. Together with file mode dropping its start-up copies of every
//! key earlier ([`crate::sources::file_state`]) this took the issue #14 workload's peak RSS from
//! 461 to 437 MiB at 100k routes (145 from 153 MiB at 30k; `benches/workload/measure.py`).
//!
//! Filling in key order also leaves every B-tree node it splits half empty: once start-up has
//! listed everything, [`Index::compact`] rebuilds the large maps from their sorted entries
//! (full nodes), as the seam does with its per-feed key sets. Measured together with file
//! mode's packed `owner` map and smaller parse rounds ([`crate::sources::file_state`]): 400.6
//! → 382.6 MiB peak at 100k routes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::compile::validate::{admit, AdmittedRoute, FieldError};
use crate::model::{BackendTrafficPolicy, HttpRouteGroup, Object, ObjectKey};

/// `(namespace, name)`.
pub type NsName = (String, String);

/// Label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Something a compile reads besides the route itself; what an index change touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// A local Service together with its endpoints (EndpointSlices labelled for it, or its
    /// Endpoints).
    Service(NsName),
    /// An SMI HTTPRouteGroup.
    Group(NsName),
    /// A Service of linked cluster `.0` together with its endpoints there.
    Remote(String, NsName),
    /// Whether cluster `.0` is linked.
    Cluster(String),
}

/// What changed in an index since the last [`Index::take_changes`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub deps: BTreeSet<Dep>,
    /// Routes applied (admitted) or deleted.
    pub routes: BTreeSet<ObjectKey>,
    /// One of meshroute's own EndpointSlices (listener ports of transparent serving).
    pub own_slices: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty() && self.routes.is_empty() && !self.own_slices
    }
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    /// Large values are boxed: these maps fill in key order, which leaves B-tree nodes about
    /// half full, and a node holds its values inline (a Service is most of a KiB).
    pub services: BTreeMap<NsName, Box<Service>>,
    /// EndpointSlices by their own name (several per Service).
    pub slices: BTreeMap<NsName, Box<EndpointSlice>>,
    pub endpoints: BTreeMap<NsName, Endpoints>,
    pub groups: BTreeMap<NsName, HttpRouteGroup>,
    /// XBackendTrafficPolicies (retry budgets of the Services they target).
    pub backend_policies: BTreeMap<NsName, BackendTrafficPolicy>,
    pub routes: BTreeMap<ObjectKey, Box<AdmittedRoute>>,
    /// Linked clusters by name: their exported Services and EndpointSlices (nothing else is
    /// read from them). A cluster is present once linked, even before it has listed.
    pub remote: BTreeMap<String, Index>,
    /// `(namespace, service)` → names of the EndpointSlices labelled for it. Kept by
    /// `apply`/`delete`; never mutate `slices` directly.
    slices_by_service: BTreeMap<NsName, BTreeSet<String>>,
    /// What changed since the last [`Index::take_changes`] (`None`: not tracked).
    changes: Option<Changes>,
}

fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

fn is_own_slice(slice: &EndpointSlice) -> bool {
    crate::compile::publish::is_ours(slice)
}

/// Give back what admission's vectors grew but do not use: a route is held as long as it
/// exists, and at 100k routes spare capacity is a large part of the index.
fn compact(route: &mut AdmittedRoute) {
    route.parents.shrink_to_fit();
    route.smi_groups.shrink_to_fit();
    route.rules.shrink_to_fit();
    for rule in &mut route.rules {
        rule.matches.shrink_to_fit();
        rule.filters.shrink_to_fit();
        rule.backends.shrink_to_fit();
        for b in &mut rule.backends {
            b.filters.shrink_to_fit();
        }
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuild the large maps with full B-tree nodes. They fill in key order (a directory is
    /// read in name order, an API server lists in key order), and a B-tree filled that way
    /// leaves every node it splits half empty; a map built from sorted entries at once packs
    /// its nodes. The seam calls this once, after start-up's listing and before the first
    /// compile (which reuses the memory the old nodes give back).
    pub fn compact(&mut self) {
        self.routes = std::mem::take(&mut self.routes).into_iter().collect();
        self.services = std::mem::take(&mut self.services).into_iter().collect();
        self.slices = std::mem::take(&mut self.slices).into_iter().collect();
        self.slices_by_service = std::mem::take(&mut self.slices_by_service)
            .into_iter()
            .collect();
        for r in self.remote.values_mut() {
            r.compact();
        }
    }

    /// Record what every apply and delete touches from now on (see [`Index::take_changes`]).
    /// Linked clusters' indexes created later track too.
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
        for r in self.remote.values_mut() {
            r.track_changes();
        }
    }

    /// What changed since the last call (or since tracking began), linked clusters included;
    /// tracking goes on.
    pub fn take_changes(&mut self) -> Changes {
        let mut out = self
            .changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for (cluster, r) in &mut self.remote {
            let theirs = r.take_changes();
            for d in theirs.deps {
                if let Dep::Service(nn) = d {
                    out.deps.insert(Dep::Remote(cluster.clone(), nn));
                }
            }
        }
        out
    }

    fn touch(&mut self, dep: Dep) {
        if let Some(c) = &mut self.changes {
            c.deps.insert(dep);
        }
    }

    fn touch_slice(&mut self, ns: &str, slice: &EndpointSlice) {
        if let Some(c) = &mut self.changes {
            if is_own_slice(slice) {
                c.own_slices = true;
            }
            if let Some(svc) = slice_service(slice) {
                c.deps
                    .insert(Dep::Service((ns.to_string(), svc.to_string())));
            }
        }
    }

    fn unlist_slice(&mut self, nn: &NsName, slice: &EndpointSlice) {
        if let Some(svc) = slice_service(slice) {
            let key = (nn.0.clone(), svc.to_string());
            if let Some(names) = self.slices_by_service.get_mut(&key) {
                names.remove(&nn.1);
                if names.is_empty() {
                    self.slices_by_service.remove(&key);
                }
            }
        }
    }

    /// Insert or replace an object. A route that fails admission is refused (and, like an edit
    /// the API server refuses, leaves any earlier version in place).
    pub fn apply(&mut self, obj: Object) -> Result<(), Vec<FieldError>> {
        let key = obj.key();
        let nn = (key.namespace.to_string(), key.name.to_string());
        if let Some(mut route) = admit(&obj)? {
            compact(&mut route);
            if let Some(c) = &mut self.changes {
                c.routes.insert(key.clone());
            }
            self.routes.insert(key, Box::new(route));
            return Ok(());
        }
        match obj {
            Object::Service(s) => {
                self.touch(Dep::Service(nn.clone()));
                self.services.insert(nn, s);
            }
            Object::EndpointSlice(s) => {
                self.touch_slice(&nn.0, &s);
                if let Some(svc) = slice_service(&s) {
                    self.slices_by_service
                        .entry((nn.0.clone(), svc.to_string()))
                        .or_default()
                        .insert(nn.1.clone());
                }
                if let Some(old) = self.slices.insert(nn.clone(), s) {
                    self.touch_slice(&nn.0, &old);
                    if slice_service(&old) != self.slices.get(&nn).and_then(|s| slice_service(s)) {
                        self.unlist_slice(&nn, &old);
                    }
                }
            }
            Object::Endpoints(e) => {
                self.touch(Dep::Service(nn.clone()));
                self.endpoints.insert(nn, *e);
            }
            Object::HttpRouteGroup(g) => {
                self.touch(Dep::Group(nn.clone()));
                self.groups.insert(nn, *g);
            }
            Object::BackendTrafficPolicy(p) => {
                self.backend_policies.insert(nn, *p);
            }
            Object::GatewayHttpRoute(_)
            | Object::GatewayGrpcRoute(_)
            | Object::LinkerdHttpRoute(_)
            | Object::TrafficSplit(_) => {}
        }
        Ok(())
    }

    /// Remove an object by key (no-op when absent).
    pub fn delete(&mut self, key: &ObjectKey) {
        let nn = (key.namespace.to_string(), key.name.to_string());
        match (key.group, key.kind) {
            ("", "Service") => {
                if self.services.remove(&nn).is_some() {
                    self.touch(Dep::Service(nn));
                }
            }
            (_, "EndpointSlice") => {
                if let Some(old) = self.slices.remove(&nn) {
                    self.touch_slice(&nn.0, &old);
                    self.unlist_slice(&nn, &old);
                }
            }
            ("", "Endpoints") => {
                if self.endpoints.remove(&nn).is_some() {
                    self.touch(Dep::Service(nn));
                }
            }
            (_, "HTTPRouteGroup") => {
                if self.groups.remove(&nn).is_some() {
                    self.touch(Dep::Group(nn));
                }
            }
            (_, "XBackendTrafficPolicy") => {
                self.backend_policies.remove(&nn);
            }
            _ => {
                if self.routes.remove(key).is_some() {
                    if let Some(c) = &mut self.changes {
                        c.routes.insert(key.clone());
                    }
                }
            }
        }
    }

    /// The index of linked cluster `name`, created empty on first use.
    pub fn linked(&mut self, name: &str) -> &mut Index {
        if !self.remote.contains_key(name) {
            self.touch(Dep::Cluster(name.to_string()));
            let mut linked = Index::new();
            if self.changes.is_some() {
                linked.track_changes();
            }
            self.remote.insert(name.to_string(), linked);
        }
        self.remote.entry(name.to_string()).or_default()
    }

    /// Forget linked cluster `name` and everything read from it.
    pub fn unlink(&mut self, name: &str) {
        if self.remote.remove(name).is_some() {
            self.touch(Dep::Cluster(name.to_string()));
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| &**s)
    }

    /// EndpointSlices of a Service (`kubernetes.io/service-name` label), in name order.
    pub fn slices_for<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices_by_service
            .get(&(namespace.to_string(), service.to_string()))
            .into_iter()
            .flatten()
            .filter_map(move |n| self.slices.get(&(namespace.to_string(), n.clone())))
            .map(|s| &**s)
    }
}
