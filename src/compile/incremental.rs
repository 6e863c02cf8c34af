//! Incremental compile: an edit costs O(what it touches), not O(every route).
//!
//! [`Incremental`] remembers, for every route, what compiling it read ([`Dep`]: its parent
//! Services, its backends with their endpoints, HTTPRouteGroups, linked clusters) and which
//! parents it has a parentRef to, and for every parent Service what building it read. An
//! [`Index`] that tracks changes says what an apply or delete touched; [`Incremental::update`]
//! then
//!
//! 1. recompiles the routes that read something touched (their statuses too),
//! 2. rebuilds the parents those routes are on (before and after), and those whose own
//!    Service or passthrough endpoints changed, from every route on them,
//! 3. publishes a table that is a shallow clone of the last one with those parents replaced:
//!    every other parent (`Arc<ParentPort>`) and every untouched shard is shared.
//!
//! The result equals [`super::compile`] of the same index (a property test drives both with
//! random edit sequences), and what changed is found by comparing only the rebuilt parents.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::status::RouteStatus;
use super::{build_parent, compile_route, publish, CompileOptions, Cx, Entry};
use crate::index::{Dep, Index, NsName};
use crate::model::ObjectKey;
use crate::table::diff::{TableChanges, TableDigest};
use crate::table::{EndpointLoad, RouteTable};

use super::validate::is_core;

/// A route's key, shared by the maps that name it.
type Key = Arc<ObjectKey>;

/// The state an incremental compile carries from one update to the next.
#[derive(Debug)]
pub struct Incremental {
    opts: CompileOptions,
    /// The last table built (shallow-cloned for the next one).
    table: RouteTable,
    started: bool,
    /// Whether `statuses` is kept.
    keep_statuses: bool,
    /// Every admitted route's status (when kept).
    statuses: BTreeMap<Key, Arc<RouteStatus>>,
    /// Problems of the routes that have some (`namespace/name: problem`).
    problems: BTreeMap<Key, Vec<String>>,
    /// What compiling each route read, and the other way round. Keys, dependencies and
    /// parents are shared (`Arc`) between these maps: a few words per route and edge.
    route_deps: HashMap<Key, Box<[Arc<Dep>]>>,
    route_readers: HashMap<Arc<Dep>, HashSet<Key>>,
    /// Service parentRefs of each route, and the other way round.
    route_parents: HashMap<Key, Box<[Arc<NsName>]>>,
    on_parent: HashMap<Arc<NsName>, BTreeSet<Key>>,
    /// What building each parent read (its passthrough backends), and the other way round.
    parent_deps: HashMap<NsName, Box<[Dep]>>,
    parent_readers: HashMap<Dep, HashSet<NsName>>,
    /// Load counters of endpoints in live tables, so load-aware balancing carries over.
    loads: HashMap<SocketAddr, Weak<EndpointLoad>>,
    /// `loads` is swept of dead counters when it grows past this.
    loads_sweep_at: usize,
    /// Listener ports named by our own EndpointSlices (transparent serving).
    local_ports: Vec<publish::LocalPort>,
}

/// What one [`Incremental::update`] did.
#[derive(Debug)]
pub struct Update {
    /// The new table (generation 0: the publisher numbers it).
    pub table: RouteTable,
    /// What differs from the previous table; empty when nothing a request can observe did.
    /// `None` for the first table.
    pub changes: Option<TableChanges>,
    /// Routes recompiled because something they read changed.
    pub routes: usize,
    /// Parent Services rebuilt.
    pub parents: usize,
}

impl Incremental {
    pub fn new(opts: CompileOptions) -> Self {
        Incremental {
            table: RouteTable::new(&opts.cluster_domain),
            opts,
            started: false,
            keep_statuses: true,
            statuses: BTreeMap::new(),
            problems: BTreeMap::new(),
            route_deps: HashMap::new(),
            route_readers: HashMap::new(),
            route_parents: HashMap::new(),
            on_parent: HashMap::new(),
            parent_deps: HashMap::new(),
            parent_readers: HashMap::new(),
            loads: HashMap::new(),
            loads_sweep_at: 1024,
            local_ports: Vec::new(),
        }
    }

    /// Keep every route's status (the default), or only its problems.
    pub fn keep_statuses(mut self, keep: bool) -> Self {
        self.keep_statuses = keep;
        self
    }

    /// Every admitted route's status, in key order (none unless kept).
    pub fn statuses(&self) -> impl Iterator<Item = &Arc<RouteStatus>> {
        self.statuses.values()
    }

    /// Every problem of every route, one line each, prefixed with the route's
    /// `namespace/name` (as [`super::Compiled::route_problems`]).
    pub fn route_problems(&self) -> Vec<String> {
        self.problems.values().flatten().cloned().collect()
    }

    /// Bring the table up to date with `index` (which must [track
    /// changes](Index::track_changes) from before its first object, and be given to no other
    /// `Incremental`).
    pub fn update(&mut self, index: &mut Index) -> Update {
        let changes = index.take_changes();
        let index: &Index = index;
        let first = !self.started;
        self.started = true;

        // 1. Routes whose own inputs changed.
        let mut dirty: BTreeSet<ObjectKey> = if first {
            index.routes.keys().cloned().collect()
        } else {
            changes.routes.clone()
        };
        let mut parents: BTreeSet<NsName> = if first {
            index.services.keys().cloned().collect()
        } else {
            BTreeSet::new()
        };
        for dep in &changes.deps {
            if let Some(readers) = self.route_readers.get(dep) {
                dirty.extend(readers.iter().map(|k| (**k).clone()));
            }
            if let Some(readers) = self.parent_readers.get(dep) {
                parents.extend(readers.iter().cloned());
            }
            if let Dep::Service(nn) = dep {
                // Its ports, or whether it exists at all.
                parents.insert(nn.clone());
            }
        }

        let mut cx = Cx::new(index, HashMap::new(), Some(&self.loads));
        let mut buckets: HashMap<(&str, &str, u16), Vec<Entry>> = HashMap::new();
        for key in &dirty {
            // Forget what it read and where it was.
            if let Some(deps) = self.route_deps.remove(key) {
                for d in deps.iter() {
                    if let Some(r) = self.route_readers.get_mut(d) {
                        r.remove(key);
                        if r.is_empty() {
                            self.route_readers.remove(d);
                        }
                    }
                }
            }
            if let Some(ps) = self.route_parents.remove(key) {
                for p in ps.iter() {
                    if let Some(on) = self.on_parent.get_mut(p) {
                        on.remove(key);
                        if on.is_empty() {
                            self.on_parent.remove(p);
                        }
                    }
                    parents.insert((**p).clone());
                }
            }
            let Some((key, route)) = index.routes.get_key_value(key) else {
                self.statuses.remove(key);
                self.problems.remove(key);
                continue;
            };
            cx.deps.clear();
            let status = compile_route(&mut cx, &self.opts, key, route, |ns, name, port, e| {
                buckets.entry((ns, name, port)).or_default().push(e)
            });
            let shared: Key = Arc::new(key.clone());
            let mut deps = std::mem::take(&mut cx.deps);
            deps.sort_unstable();
            deps.dedup();
            let deps: Box<[Arc<Dep>]> = deps
                .into_iter()
                .map(|d| {
                    let d = match self.route_readers.get_key_value(&d) {
                        Some((have, _)) => have.clone(),
                        None => Arc::new(d),
                    };
                    self.route_readers
                        .entry(d.clone())
                        .or_default()
                        .insert(shared.clone());
                    d
                })
                .collect();
            self.route_deps.insert(shared.clone(), deps);
            let mut ps: Vec<NsName> = route
                .parents
                .iter()
                .filter(|p| is_core(&p.group) && p.kind.eq_ignore_ascii_case("Service"))
                .map(|p| (p.namespace.to_string(), p.name.to_string()))
                .collect();
            ps.sort_unstable();
            ps.dedup();
            let ps: Box<[Arc<NsName>]> = ps
                .into_iter()
                .map(|p| {
                    parents.insert(p.clone());
                    let p = match self.on_parent.get_key_value(&p) {
                        Some((have, _)) => have.clone(),
                        None => Arc::new(p),
                    };
                    self.on_parent
                        .entry(p.clone())
                        .or_default()
                        .insert(shared.clone());
                    p
                })
                .collect();
            self.route_parents.insert(shared.clone(), ps);
            let problems: Vec<String> = status
                .problems()
                .into_iter()
                .map(|p| format!("{}/{}: {p}", status.namespace, status.name))
                .collect();
            if problems.is_empty() {
                self.problems.remove(key);
            } else {
                self.problems.insert(shared.clone(), problems);
            }
            if self.keep_statuses {
                self.statuses.insert(shared, Arc::new(status));
            }
        }

        // 2. Routes on a rebuilt parent that did not change: their entries for that parent
        // (the same as before by value; their other parents keep theirs).
        for p in &parents {
            let Some(on) = self.on_parent.get(p) else {
                continue;
            };
            for key in on.iter().filter(|k| !dirty.contains(&***k)) {
                let Some((key, route)) = index.routes.get_key_value(key) else {
                    continue;
                };
                compile_route(&mut cx, &self.opts, key, route, |ns, name, port, e| {
                    if *ns == *p.0 && *name == *p.1 {
                        buckets.entry((ns, name, port)).or_default().push(e)
                    }
                });
            }
        }

        // 3. The new table: the last one with the rebuilt parents replaced.
        let mut table = self.table.clone();
        let before: Vec<Option<crate::table::ParentService>> = parents
            .iter()
            .map(|(ns, name)| table.remove_service(ns, name))
            .collect();
        for p in &parents {
            if let Some(deps) = self.parent_deps.remove(p) {
                for d in deps.iter() {
                    if let Some(r) = self.parent_readers.get_mut(d) {
                        r.remove(p);
                        if r.is_empty() {
                            self.parent_readers.remove(d);
                        }
                    }
                }
            }
            let Some(svc) = index.services.get(p) else {
                continue;
            };
            let (ns, name) = (p.0.as_str(), p.1.as_str());
            cx.deps.clear();
            for port in build_parent(&mut cx, ns, name, svc, |port| {
                buckets.remove(&(ns, name, port))
            }) {
                table.insert_parent(port);
            }
            let mut deps = std::mem::take(&mut cx.deps);
            deps.sort_unstable();
            deps.dedup();
            for d in &deps {
                self.parent_readers
                    .entry(d.clone())
                    .or_default()
                    .insert(p.clone());
            }
            self.parent_deps.insert(p.clone(), deps.into_boxed_slice());
        }
        let new_loads = std::mem::take(&mut cx.loads);
        drop(cx);
        for (addr, load) in new_loads {
            self.loads.insert(addr, Arc::downgrade(&load));
        }
        if self.loads.len() > self.loads_sweep_at {
            self.loads.retain(|_, l| l.strong_count() > 0);
            self.loads_sweep_at = (self.loads.len() * 2).max(1024);
        }

        // Retry budgets: a handful of XBackendTrafficPolicies at most, read whole each time.
        table.retry_budgets = super::retry::budgets(index);

        // Listener ports follow the parents they stand for.
        let services_changed = changes.deps.iter().any(|d| matches!(d, Dep::Service(_)));
        if first || changes.own_slices || (services_changed && !self.local_ports.is_empty()) {
            self.local_ports = publish::local_ports(index);
        }
        if !self.local_ports.is_empty() || first || changes.own_slices {
            table.clear_local_ports();
            for lp in &self.local_ports {
                table.set_local_port(lp.local, &lp.namespace, &lp.name, lp.port);
            }
        }

        // 4. What changed, from the rebuilt parents alone.
        let changes = (!first).then(|| {
            let old = TableDigest::of_parts(&self.table, before.iter().flatten());
            let new = TableDigest::of_parts(
                &table,
                parents
                    .iter()
                    .filter_map(|(ns, name)| table.service(ns, name)),
            );
            old.changes(&new)
        });
        self.table = table.clone();
        Update {
            table,
            changes,
            routes: dirty.len(),
            parents: parents.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Incremental equals full: random edit sequences over a small world of Services (some
    //! ExternalName or headless, one or two ports), EndpointSlices, Endpoints, HTTPRoutes
    //! (one or two parents, mirrors, failover), TrafficSplits with HTTPRouteGroups and a
    //! linked cluster, each step compared with a full compile of the same index.

    use std::path::Path;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::compile::compile;
    use crate::sources::file::parse_documents;

    const NS: &str = "ns";
    const SERVICES: usize = 6;

    fn object(yaml: &str) -> crate::model::Object {
        let mut docs = parse_documents(Path::new("t.yaml"), yaml);
        assert_eq!(docs.len(), 1, "{yaml}");
        docs.remove(0)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .object
    }

    fn service(rng: &mut StdRng, i: usize) -> String {
        let ports = if rng.random_bool(0.3) {
            "[{name: http, port: 80}, {name: admin, port: 9000}]"
        } else {
            "[{name: http, port: 80}]"
        };
        let extra = match rng.random_range(0..10) {
            0 => ", type: ExternalName, externalName: example.com",
            1 => ", clusterIP: None",
            _ => "",
        };
        let labels = match rng.random_range(0..8) {
            0 => ", labels: {mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: east}",
            1 => ", labels: {multicluster.linkerd.io/remote-discovery: east, multicluster.linkerd.io/remote-service: s1}",
            _ => "",
        };
        // Linkerd's retry and failure-accrual annotations are read from parents and backends.
        let annotations = match rng.random_range(0..6) {
            0 => ", annotations: {retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\"}",
            1 => ", annotations: {balancer.linkerd.io/failure-accrual: consecutive}",
            _ => "",
        };
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {NS}{labels}{annotations}}}\nspec: {{ports: {ports}{extra}}}\n")
    }

    fn slice(rng: &mut StdRng, i: usize) -> String {
        let svc = rng.random_range(0..SERVICES + 1);
        let ready = if rng.random_bool(0.3) {
            "false"
        } else {
            "true"
        };
        let ip = rng.random_range(1..4);
        let port = if rng.random_bool(0.2) {
            "admin"
        } else {
            "http"
        };
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: slice-{i}, namespace: {NS}, labels: {{kubernetes.io/service-name: s{svc}}}}}\naddressType: IPv4\nports: [{{name: {port}, port: 8080}}]\nendpoints: [{{addresses: [10.0.{i}.{ip}], conditions: {{ready: {ready}}}}}, {{addresses: [10.0.9.{ip}]}}]\n")
    }

    fn endpoints(rng: &mut StdRng, i: usize) -> String {
        let ip = rng.random_range(1..4);
        format!("apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}, namespace: {NS}}}\nsubsets: [{{addresses: [{{ip: 10.1.{i}.{ip}}}], notReadyAddresses: [{{ip: 10.2.{i}.{ip}}}], ports: [{{name: http, port: 8080}}]}}]\n")
    }

    fn route(rng: &mut StdRng, i: usize) -> String {
        let svc = |rng: &mut StdRng| rng.random_range(0..SERVICES + 1);
        let mut parents = format!("{{group: \"\", kind: Service, name: s{}", svc(rng));
        if rng.random_bool(0.5) {
            parents.push_str(", port: 80");
        }
        parents.push('}');
        if rng.random_bool(0.3) {
            parents.push_str(&format!(
                ", {{group: core, kind: Service, name: s{}}}",
                svc(rng)
            ));
        }
        let mut rules = String::new();
        for _ in 0..rng.random_range(1..3) {
            let path = ["/", "/a", "/a/b", "/b"][rng.random_range(0..4)];
            let kind = if rng.random_bool(0.5) {
                "PathPrefix"
            } else {
                "Exact"
            };
            let header = if rng.random_bool(0.3) {
                ", headers: [{name: x-h, value: v}]"
            } else {
                ""
            };
            let mirror = if rng.random_bool(0.15) {
                format!("\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: s{}, port: 80}}}}}}]", svc(rng))
            } else {
                String::new()
            };
            let retry = if rng.random_bool(0.15) {
                "\n    retry: {attempts: 2, codes: [503]}"
            } else {
                ""
            };
            rules.push_str(&format!(
                "  - matches: [{{path: {{type: {kind}, value: {path}}}{header}}}]\n    backendRefs: [{{name: s{}, port: 80, weight: {}}}, {{name: s{}, port: {}, weight: {}}}]{mirror}{retry}\n",
                svc(rng),
                rng.random_range(0..3),
                svc(rng),
                [80, 9000][rng.random_range(0..2)],
                rng.random_range(0..3),
            ));
        }
        let created = rng.random_range(0..3);
        let failover = if rng.random_bool(0.2) {
            ", annotations: {failover.linkerd.io/primary-service: s0}"
        } else {
            ""
        };
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: {NS}, creationTimestamp: \"2025-01-01T00:00:0{created}Z\"{failover}}}\nspec:\n  parentRefs: [{parents}]\n  rules:\n{rules}")
    }

    fn split(rng: &mut StdRng, i: usize) -> String {
        let matches = if rng.random_bool(0.5) {
            "\n  matches: [{kind: HTTPRouteGroup, name: g0}]"
        } else {
            ""
        };
        format!("apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: ts{i}, namespace: {NS}}}\nspec:\n  service: s{}{matches}\n  backends: [{{service: s{}, weight: 1}}, {{service: s{}, weight: 2}}]\n",
            rng.random_range(0..SERVICES),
            rng.random_range(0..SERVICES + 1),
            rng.random_range(0..SERVICES + 1))
    }

    fn group(rng: &mut StdRng) -> String {
        let path = ["/a.*", "/b.*"][rng.random_range(0..2)];
        format!("apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: g0, namespace: {NS}}}\nspec:\n  matches:\n  - name: m\n    pathRegex: {path}\n")
    }

    fn remote_service(rng: &mut StdRng) -> String {
        let exported = if rng.random_bool(0.7) {
            "remote-discovery"
        } else {
            "nope"
        };
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s1, namespace: {NS}, labels: {{mirror.linkerd.io/exported: {exported}}}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n")
    }

    fn key(group: &'static str, kind: &'static str, name: String) -> ObjectKey {
        ObjectKey {
            group,
            kind,
            namespace: NS.into(),
            name: name.into(),
        }
    }

    /// One random edit: apply or delete one object.
    fn edit(rng: &mut StdRng, index: &mut Index) {
        let del = rng.random_bool(0.25);
        match rng.random_range(0..9) {
            0 | 1 => {
                let i = rng.random_range(0..SERVICES);
                if del {
                    index.delete(&key("", "Service", format!("s{i}")));
                } else {
                    index.apply(object(&service(rng, i))).expect("valid");
                }
            }
            2 => {
                let i = rng.random_range(0..4);
                if del {
                    index.delete(&key(
                        crate::model::DISCOVERY_GROUP,
                        "EndpointSlice",
                        format!("slice-{i}"),
                    ));
                } else {
                    index.apply(object(&slice(rng, i))).expect("valid");
                }
            }
            3 => {
                let i = rng.random_range(0..SERVICES);
                if del {
                    index.delete(&key("", "Endpoints", format!("s{i}")));
                } else {
                    index.apply(object(&endpoints(rng, i))).expect("valid");
                }
            }
            4 | 5 => {
                let i = rng.random_range(0..6);
                if del {
                    index.delete(&key(
                        crate::model::GATEWAY_GROUP,
                        "HTTPRoute",
                        format!("r{i}"),
                    ));
                } else {
                    index.apply(object(&route(rng, i))).expect("valid");
                }
            }
            6 => {
                let i = rng.random_range(0..2);
                if del {
                    index.delete(&key(
                        crate::model::SPLIT_GROUP,
                        "TrafficSplit",
                        format!("ts{i}"),
                    ));
                } else {
                    index.apply(object(&split(rng, i))).expect("valid");
                }
            }
            7 => {
                if del {
                    index.delete(&key(
                        crate::model::SPECS_GROUP,
                        "HTTPRouteGroup",
                        "g0".into(),
                    ));
                } else {
                    index.apply(object(&group(rng))).expect("valid");
                }
            }
            _ => match rng.random_range(0..4) {
                0 => index.unlink("east"),
                1 => {
                    index.linked("east");
                }
                2 => {
                    let svc = object(&remote_service(rng));
                    index.linked("east").apply(svc).expect("valid");
                }
                _ => {
                    let ip = rng.random_range(1..4);
                    let s = object(&format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: slice-1, namespace: {NS}, labels: {{kubernetes.io/service-name: s1}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.9.0.{ip}]}}]\n"));
                    if del {
                        index.linked("east").delete(&key(
                            crate::model::DISCOVERY_GROUP,
                            "EndpointSlice",
                            "slice-1".into(),
                        ));
                    } else {
                        index.linked("east").apply(s).expect("valid");
                    }
                }
            },
        }
    }

    fn digest(t: &RouteTable) -> TableDigest {
        TableDigest::of(t)
    }

    #[test]
    fn incremental_compile_equals_full_compile_over_random_edit_sequences() {
        let opts = CompileOptions::default();
        // More with MESHROUTE_EQUIVALENCE_SEEDS=1000 (CI runs the default: reproducible).
        let seeds: u64 = std::env::var("MESHROUTE_EQUIVALENCE_SEEDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        for seed in 0..seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut index = Index::new();
            index.track_changes();
            let mut inc = Incremental::new(opts.clone());
            let mut published = inc.update(&mut index).table;
            for step in 0..40 {
                for _ in 0..rng.random_range(1..4) {
                    edit(&mut rng, &mut index);
                }
                let up = inc.update(&mut index);
                let full = compile(&index, &opts, None);
                let ctx = format!("seed {seed} step {step}");
                assert_eq!(digest(&up.table), digest(&full.table), "{ctx}: table");
                let got: Vec<RouteStatus> = inc.statuses().map(|s| (**s).clone()).collect();
                assert_eq!(got, full.statuses, "{ctx}: statuses");
                assert_eq!(
                    inc.route_problems(),
                    full.route_problems(),
                    "{ctx}: problems"
                );
                let changed = digest(&published) != digest(&up.table);
                let said = up.changes.as_ref().is_some_and(|c| !c.is_empty());
                assert_eq!(changed, said, "{ctx}: changes {:?}", up.changes);
                published = up.table;
            }
        }
    }

    #[test]
    fn an_edit_rebuilds_only_the_parents_it_touches_and_shares_the_rest() {
        let mut index = Index::new();
        index.track_changes();
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..SERVICES {
            index
                .apply(object(&service(&mut StdRng::seed_from_u64(100), i)))
                .expect("valid");
        }
        for i in 0..6 {
            index.apply(object(&route(&mut rng, i))).expect("valid");
        }
        let mut inc = Incremental::new(CompileOptions::default());
        let before = inc.update(&mut index).table;
        // A new Service nobody refers to: one parent rebuilt, no route recompiled.
        let fresh = "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: ns}\nspec: {ports: [{port: 80}]}\n";
        index.apply(object(fresh)).expect("valid");
        let up = inc.update(&mut index);
        assert_eq!((up.routes, up.parents), (0, 1));
        for svc in before.services() {
            let now = up
                .table
                .service(&svc.namespace, &svc.name)
                .expect("still there");
            for (a, b) in svc.ports.iter().zip(&now.ports) {
                assert!(
                    Arc::ptr_eq(a, b),
                    "{}/{} was rebuilt",
                    svc.namespace,
                    svc.name
                );
            }
        }
        assert_eq!(
            up.changes.map(|c| c.added),
            Some(vec!["service ns/lonely".to_string()])
        );
        // Nothing changed: nothing rebuilt.
        let up = inc.update(&mut index);
        assert_eq!((up.routes, up.parents), (0, 0));
        assert!(up.changes.is_some_and(|c| c.is_empty()));
    }
}
