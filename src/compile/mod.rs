//! `compile(&index) -> (RouteTable, statuses)`: binds admitted routes to their Service parents,
//! resolves backends to endpoints, orders matches by precedence and computes each route's
//! status. Pure and deterministic: the same objects in any order give the same table.

pub mod accrual;
pub mod incremental;
pub mod publish;
pub mod retry;
pub mod status;
pub mod validate;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use http::HeaderValue;
use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::index::{Dep, Index};
use crate::model::ObjectKey;
use crate::table::{
    Backend, BackendTarget, Endpoint, EndpointLoad, Filter, Mirror, ParentPort, Protocol,
    RequestMatch, RouteRef, RouteTable, Rule, ServiceBackend, WeightedBackends,
    DEFAULT_CLUSTER_DOMAIN,
};
use status::{condition, ParentStatus, RouteStatus, CONTROLLER_NAME};
use validate::{is_core, AdmittedRoute, BackendRefSpec, FilterSpec, RouteKind, RuleSpec};

pub const MIRRORED_LABEL: &str = "mirror.linkerd.io/mirrored-service";
pub const CLUSTER_LABEL: &str = "mirror.linkerd.io/cluster-name";
pub const REMOTE_FQ_NAME: &str = "mirror.linkerd.io/remote-svc-fq-name";
/// Pod-to-pod mirrors (Linkerd 2.14+): the linked cluster whose endpoints the mirror stands for.
pub const REMOTE_DISCOVERY_LABEL: &str = "multicluster.linkerd.io/remote-discovery";
/// Pod-to-pod mirrors: the Service's name in that cluster (same namespace).
pub const REMOTE_SERVICE_LABEL: &str = "multicluster.linkerd.io/remote-service";
/// Federated Services: the local member's name (the remote members are in the
/// `multicluster.linkerd.io/remote-discovery` annotation, `name@cluster,...`).
pub const LOCAL_DISCOVERY_ANNOTATION: &str = "multicluster.linkerd.io/local-discovery";
/// Label of a Service exported for remote discovery (`remote-discovery` or `true`).
pub const EXPORTED_LABEL: &str = "mirror.linkerd.io/exported";
/// Label of a Service that is a member of a federated Service (`member`).
pub const FEDERATED_LABEL: &str = "mirror.linkerd.io/federated";

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub cluster_domain: String,
    /// Kubernetes mode publishes EndpointSlices for route parents ([`publish`]): a route's
    /// `Accepted` message then says when its parent is left alone, and why.
    pub publish_endpoints: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            publish_endpoints: false,
        }
    }
}

/// The result of compiling an index.
#[derive(Debug)]
pub struct Compiled {
    pub table: RouteTable,
    /// One per admitted route-like object, in key order.
    pub statuses: Vec<RouteStatus>,
}

impl Compiled {
    /// Every problem of every route, one line each, prefixed with the route's `namespace/name`.
    pub fn route_problems(&self) -> Vec<String> {
        self.statuses
            .iter()
            .flat_map(|s| {
                let name = format!("{}/{}", s.namespace, s.name);
                s.problems()
                    .into_iter()
                    .map(move |p| format!("{name}: {p}"))
            })
            .collect()
    }
}

/// Compile the index. `prev` (the live table, if any) lends its endpoint load counters so
/// load-aware balancing carries over a swap.
///
/// This is the full compile; [`incremental::Incremental`] gives the same table and statuses
/// rebuilding only what a change touches (and is tested against this).
pub fn compile(index: &Index, opts: &CompileOptions, prev: Option<&RouteTable>) -> Compiled {
    let loads = prev.map(|t| t.endpoint_loads()).unwrap_or_default();
    let mut cx = Cx::new(index, loads, None);

    // (parent ns, parent name, port) → matches collected from every accepted route.
    let mut buckets: HashMap<(&str, &str, u16), Vec<Entry>> = HashMap::new();
    let mut statuses = Vec::new();
    for (key, route) in &index.routes {
        statuses.push(compile_route(
            &mut cx,
            opts,
            key,
            route,
            |ns, name, port, e| buckets.entry((ns, name, port)).or_default().push(e),
        ));
    }

    let mut table = RouteTable::new(&opts.cluster_domain);
    table.retry_budgets = retry::budgets(index);
    // Every Service port is a parent; those with accepted routes get their rules, the rest
    // pass through to their own endpoints.
    for ((ns, name), svc) in &index.services {
        for parent in build_parent(&mut cx, ns, name, svc, |port| {
            buckets.remove(&(ns.as_str(), name.as_str(), port))
        }) {
            table.insert_parent(parent);
        }
    }
    for lp in publish::local_ports(index) {
        table.set_local_port(lp.local, &lp.namespace, &lp.name, lp.port);
    }
    Compiled { table, statuses }
}

/// Compile one route: its status, and every (match, rule) it adds to a parent port, given to
/// `emit` with the parent's namespace, name and port. What it reads besides the route is
/// recorded in `cx.deps`.
fn compile_route<'a>(
    cx: &mut Cx<'_>,
    opts: &CompileOptions,
    key: &'a ObjectKey,
    route: &'a AdmittedRoute,
    mut emit: impl FnMut(&'a str, &'a str, u16, Entry<'a>),
) -> RouteStatus {
    let mut rs = RouteStatus {
        kind: route.kind,
        api_version: route.api_version.to_string(),
        namespace: route.namespace.to_string(),
        name: route.name.to_string(),
        generation: route.generation,
        parents: vec![],
        notes: vec![],
    };
    let route_ref = RouteRef {
        kind: route.kind.kind(),
        group: route.kind.group(),
        namespace: route.namespace.clone(),
        name: route.name.clone(),
    };
    if route.kind == RouteKind::TrafficSplit {
        for g in &route.smi_groups {
            cx.deps
                .push(Dep::Group((route.namespace.to_string(), g.clone())));
        }
    }
    let rules = expand_rules(cx.index, route);
    cx.failover = route.failover;
    for parent in &route.parents {
        let g = route.generation;
        let mut conds = Vec::new();
        if !(is_core(&parent.group) && parent.kind.eq_ignore_ascii_case("Service")) {
            // Gateways and other parents belong to other controllers. But a core-group
            // parent that is not a Service, or a "Service" outside the core group, is
            // nobody's: a typo that would silently detach the route.
            if let Some(msg) = misspelled_service_parent(&parent.group, &parent.kind) {
                rs.parents.push(parent_not_accepted(parent, msg, g));
            }
            continue;
        }
        cx.deps.push(Dep::Service((
            parent.namespace.to_string(),
            parent.name.to_string(),
        )));
        let ports = match parent_ports(cx.index, &parent.namespace, &parent.name, parent.port) {
            Ok(p) => p,
            Err(msg) => {
                rs.parents.push(parent_not_accepted(parent, msg, g));
                continue;
            }
        };
        cx.service_retry = cx
            .index
            .service(&parent.namespace, &parent.name)
            .and_then(retry::for_service);
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let mut dropped: Vec<String> = rules.dropped.clone();
        let mut kept = 0usize;
        let mut notes: Vec<String> = Vec::new();
        for port in &ports {
            for (ri, rule) in rules.rules.iter().enumerate() {
                let Some(rule) = rule else { continue };
                let compiled = cx.rule(
                    route_ref.clone(),
                    rules.index[ri],
                    rule,
                    *port,
                    &mut problems,
                    &mut notes,
                );
                if *port == ports[0] {
                    kept += 1;
                }
                for (mi, m) in rule.matches.iter().enumerate() {
                    emit(
                        &parent.namespace,
                        &parent.name,
                        *port,
                        Entry {
                            m: m.clone(),
                            rule: compiled.clone(),
                            created: route.created,
                            key,
                            rule_index: rules.index[ri],
                            match_index: mi,
                        },
                    );
                }
            }
        }
        problems.sort();
        problems.dedup();
        notes.sort();
        notes.dedup();
        if kept == 0 {
            if dropped.is_empty() {
                dropped.push("route has no rules".into());
            }
            conds.push(condition(
                "Accepted",
                false,
                "UnsupportedValue",
                format!("no valid rules: {}", dropped.join("; ")),
                g,
            ));
        } else {
            let mut msg = String::from("route accepted by meshroute");
            for n in &notes {
                msg.push_str("; ");
                msg.push_str(n);
            }
            if opts.publish_endpoints {
                if let Some(why) = cx
                    .index
                    .service(&parent.namespace, &parent.name)
                    .and_then(|svc| publish::refusal(cx.index, svc))
                {
                    let _ = write!(msg, "; meshroute does not publish endpoints for it: {why}");
                }
            }
            conds.push(condition("Accepted", true, "Accepted", msg, g));
            rs.notes.extend(notes);
        }
        if problems.is_empty() {
            conds.push(condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                g,
            ));
        } else {
            let reason = if problems.iter().any(|(r, _)| *r == "InvalidKind") {
                "InvalidKind"
            } else {
                problems[0].0
            };
            let msg = problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            conds.push(condition("ResolvedRefs", false, reason, msg, g));
        }
        if kept > 0 && !dropped.is_empty() {
            conds.push(condition(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!("rules dropped: {}", dropped.join("; ")),
                g,
            ));
        }
        rs.parents.push(ParentStatus {
            parent_ref: parent.into(),
            controller_name: CONTROLLER_NAME,
            conditions: conds,
        });
    }
    rs
}

/// The status under a parentRef that names no Service meshroute can serve (`msg` says why):
/// not accepted, and its references not evaluated.
fn parent_not_accepted(
    parent: &validate::ParentRefSpec,
    msg: impl Into<String>,
    generation: Option<i64>,
) -> ParentStatus {
    ParentStatus {
        parent_ref: parent.into(),
        controller_name: CONTROLLER_NAME,
        conditions: vec![
            condition("Accepted", false, "NoMatchingParent", msg, generation),
            condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "not evaluated: parent not accepted",
                generation,
            ),
        ],
    }
}

/// The ports of parent Service `ns/name` (none for an ExternalName Service): each port's
/// entries (`take(port)`) in precedence order, or, without any, a passthrough rule to the
/// Service's own endpoints.
fn build_parent<'a>(
    cx: &mut Cx<'_>,
    ns: &str,
    name: &str,
    svc: &Service,
    mut take: impl FnMut(u16) -> Option<Vec<Entry<'a>>>,
) -> Vec<ParentPort> {
    let mut out = Vec::new();
    if service_type(svc) == "ExternalName" {
        return out;
    }
    for sp in service_ports(svc) {
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let matches = match take(port) {
            Some(mut entries) => {
                entries.sort_by(Entry::cmp);
                entries.into_iter().map(|e| (e.m, e.rule)).collect()
            }
            None => {
                let mut problems = Vec::new();
                let target = cx.backend(ns, name, Some(port), port, &mut problems);
                let rule = Rule {
                    route: None,
                    index: 0,
                    filters: vec![],
                    backends: WeightedBackends::new(vec![Backend {
                        weight: 1,
                        target,
                        filters: vec![],
                    }]),
                    timeouts: Default::default(),
                    retry: retry::for_service(svc),
                };
                vec![(Arc::new(RequestMatch::default()), Arc::new(rule))]
            }
        };
        out.push(ParentPort {
            namespace: ns.into(),
            name: name.into(),
            port,
            matches,
        });
    }
    out
}

/// Why a parentRef that is not a core Service looks like a mistaken one, if it does: a kind
/// in the core group other than Service (the core group has no other parent kinds), or a kind
/// spelled like Service in another group (`group` left out defaults to the Gateway API group).
fn misspelled_service_parent(group: &str, kind: &str) -> Option<String> {
    let near = edit_distance(&kind.to_ascii_lowercase(), "service") <= 2;
    if is_core(group) {
        Some(format!(
            "parentRef kind {kind:?} in the core group is not a parent kind{}",
            if near { " (did you mean Service?)" } else { "" }
        ))
    } else if near {
        let group = if group.is_empty() { "\"\"" } else { group };
        Some(format!(
            "parentRef kind {kind:?} in group {group} is not a Service; a Service parent needs group \"\" or core"
        ))
    } else {
        None
    }
}

/// Levenshtein distance (short ASCII words only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// One (match, rule) pair destined for a parent port, with its tie-breakers.
struct Entry<'a> {
    m: Arc<RequestMatch>,
    rule: Arc<Rule>,
    created: Option<i64>,
    key: &'a ObjectKey,
    rule_index: usize,
    match_index: usize,
}

impl Entry<'_> {
    /// Precedence, then oldest route, then namespace/name, then rule and match order. The
    /// group is a last resort so two kinds with the same name still order deterministically.
    fn cmp(a: &Entry, b: &Entry) -> std::cmp::Ordering {
        a.m.precedence(&b.m)
            .then_with(|| {
                a.created
                    .unwrap_or(i64::MAX)
                    .cmp(&b.created.unwrap_or(i64::MAX))
            })
            .then_with(|| a.key.namespace.cmp(&b.key.namespace))
            .then_with(|| a.key.name.cmp(&b.key.name))
            .then_with(|| a.key.group.cmp(b.key.group))
            .then_with(|| a.rule_index.cmp(&b.rule_index))
            .then_with(|| a.match_index.cmp(&b.match_index))
            // Two kinds of one group and name (an HTTPRoute and a GRPCRoute): key order, as
            // the index walks them.
            .then_with(|| a.key.kind.cmp(b.key.kind))
    }
}

/// A route's rules after rule-level checks that need the index (SMI groups, unsupported
/// filters). `rules[i]` is `None` when rule `i` was dropped; `index[i]` is its position.
struct ExpandedRules<'a> {
    rules: Vec<Option<Cow<'a, RuleSpec>>>,
    index: Vec<usize>,
    dropped: Vec<String>,
}

fn expand_rules<'a>(index: &Index, route: &'a AdmittedRoute) -> ExpandedRules<'a> {
    let mut out = ExpandedRules {
        rules: vec![],
        index: vec![],
        dropped: vec![],
    };
    for (i, rule) in route.rules.iter().enumerate() {
        let unsupported: Vec<&str> = rule
            .filters
            .iter()
            .chain(rule.backends.iter().flat_map(|b| b.filters.iter()))
            .filter_map(|f| match f {
                FilterSpec::Unsupported(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if !unsupported.is_empty() {
            out.dropped.push(format!(
                "spec.rules[{i}]: filter {} is not supported",
                unsupported.join(", ")
            ));
            out.rules.push(None);
        } else {
            out.rules.push(Some(Cow::Borrowed(rule)));
        }
        out.index.push(i);
    }
    if route.kind == RouteKind::TrafficSplit && !route.smi_groups.is_empty() {
        // The split applies to requests matching its HTTPRouteGroups; the rest go to the apex.
        let mut matches = Vec::new();
        for g in &route.smi_groups {
            match index.groups.get(&(route.namespace.to_string(), g.clone())) {
                None => out.dropped.push(format!(
                    "spec.matches: HTTPRouteGroup {}/{g} not found",
                    route.namespace
                )),
                Some(group) => {
                    for entry in &group.spec.matches {
                        match validate::group_matches(group, entry) {
                            Ok(ms) => matches.extend(ms.into_iter().map(validate::shared_match)),
                            Err(errs) => out.dropped.push(format!(
                                "HTTPRouteGroup {}/{g}: {}",
                                route.namespace,
                                errs.iter()
                                    .map(|e| e.to_string())
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            )),
                        }
                    }
                }
            }
        }
        match out.rules.first_mut().and_then(|r| r.as_mut()) {
            Some(rule) if !matches.is_empty() => rule.to_mut().matches = matches,
            _ => out.rules.iter_mut().for_each(|r| *r = None),
        }
        if let Some(apex) = route.parents.first() {
            out.rules.push(Some(Cow::Owned(RuleSpec {
                matches: vec![validate::shared_match(RequestMatch::default())],
                filters: vec![],
                backends: vec![BackendRefSpec {
                    group: crate::intern::intern(""),
                    kind: crate::intern::intern("Service"),
                    namespace: apex.namespace.clone(),
                    name: apex.name.clone(),
                    port: None,
                    weight: 1,
                    filters: vec![],
                }],
                timeouts: Default::default(),
                retry: None,
            })));
            out.index.push(route.rules.len());
        }
    }
    out
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The ports of a parent Service a parentRef binds to, or why it binds to none.
fn parent_ports(
    index: &Index,
    ns: &str,
    name: &str,
    port: Option<u16>,
) -> Result<Vec<u16>, String> {
    let Some(svc) = index.service(ns, name) else {
        return Err(format!("Service {ns}/{name} not found"));
    };
    if service_type(svc) == "ExternalName" {
        return Err(format!(
            "Service {ns}/{name} is of type ExternalName and cannot be a parent"
        ));
    }
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        return Err(format!(
            "Service {ns}/{name} is headless (clusterIP: None) and cannot be a parent"
        ));
    }
    let ports: Vec<u16> = service_ports(svc)
        .iter()
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    match port {
        Some(p) if ports.contains(&p) => Ok(vec![p]),
        Some(p) => Err(format!(
            "Service {ns}/{name} has no port {p} (ports: {})",
            ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None if ports.is_empty() => Err(format!("Service {ns}/{name} has no ports")),
        None => Ok(ports),
    }
}

/// Endpoints of one Service, merged from its EndpointSlices (or Endpoints when it has none).
#[derive(Default, Clone)]
struct ServiceEndpoints {
    /// (port name, port number, address, ready)
    entries: Vec<(String, u16, IpAddr, bool)>,
    remote_fq_name: Option<String>,
}

/// The endpoints of Service `ns/name` in `index`: from its EndpointSlices (meshroute's own
/// left out: they lead to meshroute itself), or from its Endpoints when it has none; `None`
/// when it has neither.
fn service_endpoints(index: &Index, ns: &str, name: &str) -> Option<ServiceEndpoints> {
    let mut e: Option<ServiceEndpoints> = None;
    for slice in index.slices_for(ns, name) {
        if publish::is_ours(slice) {
            continue;
        }
        let e = e.get_or_insert_with(ServiceEndpoints::default);
        if let Some(fq) = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REMOTE_FQ_NAME))
        {
            e.remote_fq_name = Some(fq.clone());
        }
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                for p in slice.ports.iter().flatten() {
                    let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    e.entries
                        .push((p.name.clone().unwrap_or_default(), port, ip, ready));
                }
            }
        }
    }
    if e.is_some() {
        // EndpointSlices win, as they do for kube-proxy.
        return e;
    }
    let eps = index.endpoints.get(&(ns.to_string(), name.to_string()))?;
    let mut e = ServiceEndpoints::default();
    if let Some(fq) = eps
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REMOTE_FQ_NAME))
    {
        e.remote_fq_name = Some(fq.clone());
    }
    for subset in eps.subsets.iter().flatten() {
        let lists = [
            (subset.addresses.as_ref(), true),
            (subset.not_ready_addresses.as_ref(), false),
        ];
        for (addrs, ready) in lists {
            for a in addrs.into_iter().flatten() {
                let Ok(ip) = a.ip.parse::<IpAddr>() else {
                    continue;
                };
                for p in subset.ports.iter().flatten() {
                    let Ok(port) = u16::try_from(p.port) else {
                        continue;
                    };
                    e.entries
                        .push((p.name.clone().unwrap_or_default(), port, ip, ready));
                }
            }
        }
    }
    Some(e)
}

/// A backend resolution: the backend, or (status reason, message).
type Resolved = Result<Arc<ServiceBackend>, (&'static str, String)>;

struct Cx<'a> {
    index: &'a Index,
    loads: HashMap<SocketAddr, Arc<EndpointLoad>>,
    /// Load counters of endpoints in tables still alive (incremental compiles), for
    /// endpoints `loads` does not have.
    live_loads: Option<&'a HashMap<SocketAddr, Weak<EndpointLoad>>>,
    /// Resolved backends by (namespace, name, port), shared between rules, with what
    /// resolving them read.
    backends: HashMap<String, (Resolved, Vec<Dep>)>,
    /// Scratch buffer for `ns/name:port` cache keys.
    key_buf: String,
    /// The route being compiled has linkerd-failover's annotation ([`fail_over`]).
    failover: bool,
    /// Retry policy of the parent Service being compiled (Linkerd's annotations on it).
    service_retry: Option<Arc<crate::table::retry::RetryPolicy>>,
    /// What was read since last cleared (besides routes): Services, their endpoints,
    /// HTTPRouteGroups, linked clusters.
    deps: Vec<Dep>,
}

impl<'a> Cx<'a> {
    fn new(
        index: &'a Index,
        loads: HashMap<SocketAddr, Arc<EndpointLoad>>,
        live_loads: Option<&'a HashMap<SocketAddr, Weak<EndpointLoad>>>,
    ) -> Self {
        Cx {
            index,
            loads,
            live_loads,
            backends: HashMap::new(),
            key_buf: String::new(),
            failover: false,
            service_retry: None,
            deps: Vec::new(),
        }
    }

    fn rule(
        &mut self,
        route: RouteRef,
        index: usize,
        spec: &RuleSpec,
        parent_port: u16,
        problems: &mut Vec<(&'static str, String)>,
        excluded: &mut Vec<String>,
    ) -> Arc<Rule> {
        let filters = self.filters(&spec.filters, parent_port, problems);
        let smi = route.kind == "TrafficSplit";
        if smi {
            // Whether a backend has the apex's port (below).
            for b in spec.backends.iter().filter(|b| b.port.is_none()) {
                self.deps
                    .push(Dep::Service((b.namespace.to_string(), b.name.to_string())));
            }
        }
        let backends = spec
            .backends
            .iter()
            .filter(|b| {
                // SMI (TrafficSplit v1alpha2+, "Ports"): a backend Service without the port the
                // client used on the apex "is not included and will not receive traffic".
                let missing_port = smi
                    && b.port.is_none()
                    && self.index.service(&b.namespace, &b.name).is_some_and(|svc| {
                        !service_ports(svc)
                            .iter()
                            .any(|p| p.port == i32::from(parent_port))
                    });
                if missing_port {
                    excluded.push(format!(
                        "backend Service {}/{} has no port {parent_port}: not part of the split on that port (SMI)",
                        b.namespace, b.name
                    ));
                }
                !missing_port
            })
            .map(|b| {
                let target = if !is_core(&b.group) || &*b.kind != "Service" {
                    let msg = format!("backendRef {}: kind {:?} (group {:?}) is not supported; only core Services", b.name, b.kind, b.group);
                    problems.push(("InvalidKind", msg.clone()));
                    BackendTarget::Invalid { reason: msg }
                } else {
                    self.backend(&b.namespace, &b.name, b.port, parent_port, problems)
                        .h2c_if(route.kind == "GRPCRoute")
                };
                Backend { weight: b.weight, target, filters: self.filters(&b.filters, parent_port, problems) }
            })
            .collect();
        let backends = if self.failover {
            fail_over(backends, excluded)
        } else {
            backends
        };
        Arc::new(Rule {
            route: Some(route),
            index,
            filters,
            backends: WeightedBackends::new(backends),
            timeouts: spec.timeouts,
            retry: spec.retry.clone().or_else(|| self.service_retry.clone()),
        })
    }

    fn filters(
        &mut self,
        specs: &[FilterSpec],
        parent_port: u16,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Vec<Filter> {
        specs
            .iter()
            .filter_map(|f| match f {
                FilterSpec::Ready(f) => Some(f.clone()),
                FilterSpec::Mirror {
                    backend,
                    numerator,
                    denominator,
                } => {
                    match self.backend(
                        &backend.namespace,
                        &backend.name,
                        backend.port,
                        parent_port,
                        problems,
                    ) {
                        BackendTarget::Service(svc) => Some(Filter::RequestMirror(Mirror {
                            backend: svc,
                            numerator: *numerator,
                            denominator: *denominator,
                        })),
                        BackendTarget::Invalid { .. } => None,
                    }
                }
                FilterSpec::Unsupported(_) => None,
            })
            .collect()
    }

    /// Resolve a Service backend; failures are recorded in `problems` and become an
    /// `Invalid` target that keeps its weight.
    fn backend(
        &mut self,
        ns: &str,
        name: &str,
        port: Option<u16>,
        parent_port: u16,
        problems: &mut Vec<(&'static str, String)>,
    ) -> BackendTarget {
        let port = port.unwrap_or(parent_port);
        self.key_buf.clear();
        let _ = write!(self.key_buf, "{ns}/{name}:{port}");
        match self.backends.get(self.key_buf.as_str()) {
            Some((_, deps)) => self.deps.extend(deps.iter().cloned()),
            None => {
                let start = self.deps.len();
                let key = self.key_buf.clone();
                let resolved = self.resolve(ns, name, port);
                let deps = self.deps[start..].to_vec();
                self.backends.insert(key, (resolved, deps));
            }
        }
        match &self.backends[self.key_buf.as_str()].0 {
            Ok(b) => BackendTarget::Service(b.clone()),
            Err((reason, msg)) => {
                problems.push((reason, msg.clone()));
                BackendTarget::Invalid {
                    reason: msg.clone(),
                }
            }
        }
    }

    /// Port name and single-port flag of Service `ns/name` in linked cluster `cluster` for
    /// local port `port` (`sp`), if the cluster is linked and exports it (for federation:
    /// `mirror.linkerd.io/federated: member` also counts); else why not.
    fn remote_member(
        &mut self,
        cluster: &str,
        ns: &str,
        name: &str,
        port: u16,
        sp: &ServicePort,
        federation: bool,
    ) -> Result<(String, bool), String> {
        self.deps.push(Dep::Cluster(cluster.to_string()));
        let index = self.index;
        let Some(linked) = index.remote.get(cluster) else {
            return Err(format!(
                "{ns}/{name} in cluster {cluster:?}, which is not linked (--link {cluster}=KUBECONFIG)"
            ));
        };
        let exported = |s: &Service| {
            let l = s.metadata.labels.as_ref();
            let v = |k: &str| l.and_then(|l| l.get(k)).map(String::as_str);
            matches!(v(EXPORTED_LABEL), Some("remote-discovery" | "true"))
                || (federation && v(FEDERATED_LABEL) == Some("member"))
        };
        self.deps.push(Dep::Remote(
            cluster.to_string(),
            (ns.to_string(), name.to_string()),
        ));
        let Some(rsvc) = linked.service(ns, name).filter(|s| exported(s)) else {
            return Err(format!(
                "{ns}/{name}, which is not found (or not exported) in linked cluster {cluster}"
            ));
        };
        member_port(rsvc, port, sp).ok_or_else(|| {
            format!("{ns}/{name} in linked cluster {cluster}, which has no port {port}")
        })
    }

    fn resolve(
        &mut self,
        ns: &str,
        name: &str,
        port: u16,
    ) -> Result<Arc<ServiceBackend>, (&'static str, String)> {
        self.deps
            .push(Dep::Service((ns.to_string(), name.to_string())));
        let index = self.index;
        let Some(svc) = index.service(ns, name) else {
            return Err((
                "BackendNotFound",
                format!("backend Service {ns}/{name} not found"),
            ));
        };
        if service_type(svc) == "ExternalName" {
            return Err(("InvalidKind", format!("backend Service {ns}/{name} is of type ExternalName, which meshroute does not forward to")));
        }
        let Some(sp) = service_ports(svc)
            .iter()
            .find(|p| p.port == i32::from(port))
        else {
            return Err((
                "BackendNotFound",
                format!("backend Service {ns}/{name} has no port {port}"),
            ));
        };
        let labels = svc.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let annotation = |k: &str| {
            svc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .map(String::as_str)
        };
        let mirrored = label(MIRRORED_LABEL) == Some("true");
        let mut cluster = label(CLUSTER_LABEL)
            .filter(|_| mirrored)
            .map(Arc::<str>::from);
        let local_eps = service_endpoints(index, ns, name);
        // Where the endpoints come from: (linked cluster or local, endpoints, port name, the
        // Service has a single port).
        let mut members: Vec<(Option<&str>, Option<ServiceEndpoints>, String, bool)> = Vec::new();
        let federated_remote = annotation(REMOTE_DISCOVERY_LABEL);
        let federated_local = annotation(LOCAL_DISCOVERY_ANNOTATION);
        if federated_remote.is_some() || federated_local.is_some() {
            // A federated Service: the union of its members' endpoints, local ones first.
            let mut missing = Vec::new();
            if let Some(local) = federated_local.filter(|l| !l.is_empty()) {
                self.deps
                    .push(Dep::Service((ns.to_string(), local.to_string())));
                match index.service(ns, local).map(|s| member_port(s, port, sp)) {
                    Some(Some((pn, single))) => {
                        members.push((None, service_endpoints(index, ns, local), pn, single))
                    }
                    _ => missing.push(format!("{ns}/{local} (local): not found or no port {port}")),
                }
            }
            for m in federated_remote.into_iter().flat_map(|r| r.split(',')) {
                let Some((rname, rcluster)) = m.trim().split_once('@') else {
                    continue;
                };
                match self.remote_member(rcluster, ns, rname, port, sp, true) {
                    Ok((pn, single)) => members.push((
                        Some(rcluster),
                        index
                            .remote
                            .get(rcluster)
                            .and_then(|i| service_endpoints(i, ns, rname)),
                        pn,
                        single,
                    )),
                    Err(e) => missing.push(e),
                }
            }
            if members.is_empty() {
                return Err((
                    "BackendNotFound",
                    format!(
                        "federated backend Service {ns}/{name} has no member: {}",
                        missing.join("; ")
                    ),
                ));
            }
        } else if let Some(remote_cluster) = label(REMOTE_DISCOVERY_LABEL) {
            // A pod-to-pod mirror has no endpoints here: they are those of the remote Service
            // in the linked cluster, matched by port number (Linkerd copies the ports), else
            // by port name.
            let remote_name = label(REMOTE_SERVICE_LABEL).unwrap_or(name);
            let (pn, single) = self
                .remote_member(remote_cluster, ns, remote_name, port, sp, false)
                .map_err(|e| {
                    (
                        "BackendNotFound",
                        format!("backend Service {ns}/{name} mirrors {e}"),
                    )
                })?;
            cluster = Some(Arc::from(remote_cluster));
            members.push((
                Some(remote_cluster),
                index
                    .remote
                    .get(remote_cluster)
                    .and_then(|i| service_endpoints(i, ns, remote_name)),
                pn,
                single,
            ));
        } else {
            members.push((
                None,
                local_eps.clone(),
                sp.name.clone().unwrap_or_default(),
                service_ports(svc).len() == 1,
            ));
        }
        let federated = federated_remote.is_some() || federated_local.is_some();
        // (endpoint, member cluster) in member order.
        let mut found: Vec<(Endpoint, Option<&str>)> = Vec::new();
        for (member_cluster, eps, port_name, single_port) in &members {
            for (pname, pnum, ip, ready) in eps
                .as_ref()
                .map(|e| e.entries.as_slice())
                .unwrap_or_default()
            {
                // A single unnamed port matches the Service's only port, named or not.
                if pname != port_name && !(pname.is_empty() && *single_port) {
                    continue;
                }
                let addr = SocketAddr::new(*ip, *pnum);
                if found.iter().any(|(e, _)| e.addr == addr) {
                    continue;
                }
                let live = self.live_loads;
                let load = self
                    .loads
                    .entry(addr)
                    .or_insert_with(|| {
                        live.and_then(|l| l.get(&addr))
                            .and_then(Weak::upgrade)
                            .unwrap_or_default()
                    })
                    .clone();
                found.push((
                    Endpoint {
                        addr,
                        ready: *ready,
                        load,
                    },
                    *member_cluster,
                ));
            }
        }
        found.sort_by_key(|(e, _)| e.addr);
        // Local first: a federated Service uses its local ready endpoints while there are
        // any, and spills to the linked clusters' ready ones when there are none.
        let local_ready = found.iter().any(|(e, c)| e.ready && c.is_none());
        let ready: Vec<usize> = found
            .iter()
            .enumerate()
            .filter(|(_, (e, c))| e.ready && !(federated && local_ready && c.is_some()))
            .map(|(i, _)| i)
            .collect();
        if federated {
            let mut used: Vec<&str> = ready.iter().filter_map(|&i| found[i].1).collect();
            used.sort_unstable();
            used.dedup();
            cluster = (!used.is_empty()).then(|| Arc::from(used.join(",")));
        }
        let endpoints: Vec<Endpoint> = found.into_iter().map(|(e, _)| e).collect();
        let remote = local_eps.and_then(|e| e.remote_fq_name).or_else(|| {
            svc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REMOTE_FQ_NAME))
                .cloned()
        });
        let authority = remote.and_then(|fq| HeaderValue::from_str(&format!("{fq}:{port}")).ok());
        let protocol = match sp.app_protocol.as_deref() {
            Some("kubernetes.io/h2c" | "h2c") => Protocol::H2c,
            _ => Protocol::Http1,
        };
        Ok(Arc::new(ServiceBackend {
            namespace: ns.into(),
            name: name.into(),
            port,
            cluster,
            authority,
            protocol,
            endpoints,
            ready,
            accrual: accrual::for_service(svc),
        }))
    }
}

/// The port of `svc` standing for port `port` (`sp`) of a mirror or federated Service: the same
/// number (Linkerd copies the ports), else the same name; with its name and whether it is the
/// Service's only port.
fn member_port(svc: &Service, port: u16, sp: &ServicePort) -> Option<(String, bool)> {
    let ports = service_ports(svc);
    ports
        .iter()
        .find(|p| p.port == i32::from(port))
        .or_else(|| ports.iter().find(|p| p.name == sp.name))
        .map(|p| (p.name.clone().unwrap_or_default(), ports.len() == 1))
}

/// How a route's status message and Events start when failover moved a backend's share.
pub const FAILOVER_NOTE: &str = "failover active";

/// linkerd-failover in the data plane: a backend without ready endpoints (or invalid) gives its
/// share to those with ready endpoints, in proportion to their weights, or evenly when their
/// weights are all 0 (linkerd-failover's primary 1 / secondaries 0). Nothing changes when no
/// backend has ready endpoints or none has lost any: then the rule's own semantics stand.
/// Each backend that gave its share away is named in `notes` (the route's status message).
fn fail_over(mut backends: Vec<Backend>, notes: &mut Vec<String>) -> Vec<Backend> {
    let healthy = |b: &Backend| match &b.target {
        BackendTarget::Service(s) => !s.ready.is_empty(),
        BackendTarget::Invalid { .. } => false,
    };
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let down: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0 && !healthy(&backends[i]))
        .collect();
    if total == 0 || down.is_empty() || !backends.iter().any(healthy) {
        return backends;
    }
    let healthy_weight: u64 = backends
        .iter()
        .filter(|b| healthy(b))
        .map(|b| u64::from(b.weight))
        .sum();
    // Zeroing the failed shares hands them out in proportion to the remaining weights.
    for &i in &down {
        backends[i].weight = 0;
    }
    if healthy_weight == 0 {
        for b in backends.iter_mut().filter(|b| healthy(b)) {
            b.weight = 1;
        }
    }
    let takers: Vec<String> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(backend_label)
        .collect();
    for &i in &down {
        notes.push(format!(
            "{FAILOVER_NOTE}: backend {} has no ready endpoints, its share goes to {}",
            backend_label(&backends[i]),
            takers.join(", ")
        ));
    }
    backends
}

fn backend_label(b: &Backend) -> String {
    match &b.target {
        BackendTarget::Service(s) => match &s.cluster {
            Some(c) => format!("{}/{}:{} (cluster {c})", s.namespace, s.name, s.port),
            None => format!("{}/{}:{}", s.namespace, s.name, s.port),
        },
        BackendTarget::Invalid { reason } => format!("invalid ({reason})"),
    }
}

impl BackendTarget {
    /// GRPCRoute backends speak h2c whatever the Service port's `appProtocol` says: gRPC is
    /// HTTP/2.
    fn h2c_if(self, grpc: bool) -> BackendTarget {
        match self {
            BackendTarget::Service(s) if grpc && s.protocol != Protocol::H2c => {
                BackendTarget::Service(Arc::new(s.with_protocol(Protocol::H2c)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
