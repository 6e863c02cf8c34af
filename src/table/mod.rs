//! The compiled routing table: immutable, built once by `compile`, shared by every request as an
//! `Arc<RouteTable>` and swapped whole. Lookups never allocate on the common path and never lock.
//!
//! Shape: Service (`name.namespace`) → port → [`ParentPort`], which holds every rule match that
//! applies to that parent port, already sorted by Gateway API precedence (see [`matching`]). A
//! parent without accepted routes holds one synthetic passthrough rule to its own endpoints, so the
//! proxy always deals with exactly one kind of thing: a [`Rule`].
//!
//! A parent port's matches are the admitted route's own (`Arc<RequestMatch>`, see
//! [`crate::compile::validate::shared_match`]): the table holds no copy of a match's path, header
//! names and values. Measured with `benches/workload/measure.py` (issue #14 workload, file
//! mode), together with two smaller start-up cuts in [`crate::sources::file_state`] (its map
//! of first definitions holds a file's index instead of a copy of its path; per-file key lists
//! without spare capacity): peak RSS 438.3 → 400.6 MiB at 100k routes (4.6 → 4.2 KiB per
//! route), 61.7 → 57.1 MiB at 10k. Part of that is the start-up compile's buckets of entries,
//! which no longer hold a copy of every match either.

pub mod accrual;
pub mod cors;
pub mod diff;
pub mod matching;
pub mod retry;
pub mod weighted;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Serialize;

pub use matching::{HeaderMatch, PathMatch, QueryMatch, RequestMatch, ValueMatch};
pub use weighted::WeightedBackends;

/// Default Kubernetes cluster domain used to recognise `<svc>.<ns>.svc.<domain>` authorities.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The whole compiled table. Immutable once built.
///
/// Cloning is shallow and cheap (the Services are in [`SHARDS`] shared maps): an incremental
/// compile clones the live table and replaces the parents it rebuilt, so the new table shares
/// every other parent, and all but the touched shards, with the old one.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RouteTable {
    /// Monotonic number of this table, set by the publisher (0 = not yet published).
    pub generation: u64,
    /// Cluster domain accepted in authorities (`cluster.local` unless configured).
    pub cluster_domain: String,
    /// `"<name>.<namespace>"` → the Service's parent ports. Serialized in key order so dumps
    /// of equal tables are equal.
    #[serde(serialize_with = "ser_sorted")]
    services: Services,
    /// Listener port → the parent port it stands for (transparent serving: the ports named in
    /// meshroute's own EndpointSlices). A connection to one of these ports is for that parent,
    /// whatever its `Host`.
    #[serde(serialize_with = "ser_local_ports")]
    local_ports: HashMap<u16, Arc<ParentPort>>,
    /// Retry budgets set by XBackendTrafficPolicies, by backend Service `namespace/name`;
    /// other Services get [`retry::BudgetConfig::default`].
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub retry_budgets: std::collections::BTreeMap<String, retry::BudgetConfig>,
}

/// Number of shards of [`RouteTable`]'s Service map.
pub const SHARDS: usize = 64;

/// `"<name>.<namespace>"` → parent Service, in [`SHARDS`] maps shared between tables.
#[derive(Debug, Default, Clone)]
struct Services {
    /// Empty until the first insert, then exactly [`SHARDS`] long.
    shards: Vec<Arc<HashMap<Box<str>, ParentService>>>,
}

impl Services {
    fn shard_of(key: &str) -> usize {
        // FNV-1a: cheap, and spreads `svc-1.ns`, `svc-2.ns`, ... evenly.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h as usize % SHARDS
    }

    fn get(&self, key: &str) -> Option<&ParentService> {
        self.shards.get(Self::shard_of(key))?.get(key)
    }

    fn shard_mut(&mut self, key: &str) -> &mut HashMap<Box<str>, ParentService> {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.shards[Self::shard_of(key)])
    }

    fn remove(&mut self, key: &str) -> Option<ParentService> {
        // Only a shard that holds it is copied.
        self.get(key)?;
        self.shard_mut(key).remove(key)
    }

    fn values(&self) -> impl Iterator<Item = &ParentService> {
        self.shards.iter().flat_map(|s| s.values())
    }

    fn iter(&self) -> impl Iterator<Item = (&Box<str>, &ParentService)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// One Service that requests can be addressed to.
#[derive(Debug, Clone, Serialize)]
pub struct ParentService {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Sorted by port number; never empty.
    pub ports: Vec<Arc<ParentPort>>,
}

/// One port of a parent Service, with its rules in precedence order.
#[derive(Debug, Serialize)]
pub struct ParentPort {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: u16,
    /// Every (match, rule) pair that applies to this parent port, most specific first. A
    /// passthrough parent has exactly one entry: a match-all rule with no route.
    pub matches: Vec<(Arc<RequestMatch>, Arc<Rule>)>,
}

/// Which object a rule came from (for metrics, logs and `/debug/table`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RouteRef {
    /// `HTTPRoute` or `TrafficSplit`.
    pub kind: &'static str,
    /// API group: `gateway.networking.k8s.io`, `policy.linkerd.io` or `split.smi-spec.io`.
    pub group: &'static str,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// One rule of one route, compiled. Shared between all parent ports it applies to.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// `None` for the synthetic passthrough rule of a parent without routes.
    pub route: Option<RouteRef>,
    /// Index of the rule within its route (`spec.rules[i]`).
    pub index: usize,
    pub filters: Vec<Filter>,
    pub backends: WeightedBackends,
    pub timeouts: Timeouts,
    /// How the rule retries ([`retry`]); `None`: every request gets one attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Arc<retry::RetryPolicy>>,
}

/// GEP-1742 timeouts; `None` means disabled (absent or `0s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(with = "opt_duration")]
    pub request: Option<Duration>,
    /// Whether the rule sets `request` at all (`0s` included). Without it the proxy applies
    /// its default request timeout.
    #[serde(skip)]
    pub request_set: bool,
    #[serde(with = "opt_duration", rename = "backendRequest")]
    pub backend_request: Option<Duration>,
}

/// A backendRef as compiled: its weight and where it leads.
#[derive(Debug, Serialize)]
pub struct Backend {
    pub weight: u32,
    pub target: BackendTarget,
    pub filters: Vec<Filter>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum BackendTarget {
    Service(Arc<ServiceBackend>),
    /// A backendRef that did not resolve. It keeps its weight and answers 500 for its share.
    Invalid {
        reason: String,
    },
}

/// Upstream protocol of a Service port (from `appProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http1,
    /// `appProtocol: kubernetes.io/h2c` (or `h2c`, `grpc`).
    H2c,
}

/// A resolved backend Service port and its endpoints.
#[derive(Debug, Serialize)]
pub struct ServiceBackend {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: u16,
    /// Linkerd multicluster: the `mirror.linkerd.io/cluster-name` of a mirrored Service.
    pub cluster: Option<Arc<str>>,
    /// Gateway-mode mirrors: authority to send upstream (`mirror.linkerd.io/remote-svc-fq-name`
    /// plus port); otherwise the request keeps its own authority.
    #[serde(serialize_with = "ser_opt_header_value")]
    pub authority: Option<HeaderValue>,
    pub protocol: Protocol,
    /// Every known endpoint, ready or not (for `/debug/table`).
    pub endpoints: Vec<Endpoint>,
    /// Indices into `endpoints` of the ready ones: the only ones that take traffic.
    #[serde(skip)]
    pub ready: Vec<usize>,
    /// How its endpoints are ejected ([`accrual`]); Linkerd's annotations on the Service.
    #[serde(skip_serializing_if = "accrual::AccrualConfig::is_default")]
    pub accrual: accrual::AccrualConfig,
}

impl ServiceBackend {
    /// The same backend, spoken to with `protocol`; endpoints share their load and health.
    pub fn with_protocol(&self, protocol: Protocol) -> ServiceBackend {
        ServiceBackend {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: self.port,
            cluster: self.cluster.clone(),
            authority: self.authority.clone(),
            protocol,
            endpoints: self.endpoints.clone(),
            ready: self.ready.clone(),
            accrual: self.accrual,
        }
    }
}

/// One endpoint address. `load` is shared across table generations (see
/// [`RouteTable::inherit_load`]) so load-aware balancing survives a swap.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    #[serde(skip)]
    pub load: Arc<EndpointLoad>,
}

/// Live state of one endpoint: requests in flight through this process, and whether it is in
/// rotation ([`accrual`]).
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU64,
    pub health: accrual::Health,
}

impl EndpointLoad {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Count one request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A filter, at rule or backendRef level.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
    #[serde(rename = "CORS")]
    Cors(cors::Cors),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderModifier {
    #[serde(serialize_with = "ser_header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser_header_names")]
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path matched by the rule's `PathPrefix` match.
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    /// Where copies go. A mirror to an unresolved backend is dropped at compile time.
    pub backend: Arc<ServiceBackend>,
    /// Fraction of requests mirrored: numerator / denominator (100/100 by default).
    pub numerator: u32,
    pub denominator: u32,
}

/// Why an authority names no parent port. The proxy answers each with 404
/// `unknown-authority`; `explain` tells them apart.
#[derive(Debug)]
pub enum ParentMiss<'a> {
    /// Not `name.namespace[.svc[.<cluster-domain>]][:port]` at all.
    NotServiceAuthority,
    /// A Service authority for a Service the table does not hold.
    NoSuchService { namespace: String, name: String },
    /// The Service exists but has no port `port`.
    NoSuchPort {
        service: &'a ParentService,
        port: u16,
    },
}

/// Result of binding a request to the table.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The authority names no known Service (or is not a Service authority at all).
    UnknownAuthority,
    /// A known parent with routes, none of which matches.
    NoMatch(&'a ParentPort),
    /// The winning rule and the match that selected it.
    Matched {
        parent: &'a ParentPort,
        matched: &'a RequestMatch,
        rule: &'a Arc<Rule>,
    },
}

impl RouteTable {
    pub fn new(cluster_domain: &str) -> Self {
        RouteTable {
            generation: 0,
            cluster_domain: cluster_domain.to_ascii_lowercase(),
            services: Services::default(),
            local_ports: HashMap::new(),
            retry_budgets: Default::default(),
        }
    }

    /// Make listener port `local` stand for parent port `namespace/name:port` (used by
    /// `compile`, after every parent is inserted). Ignored when no such parent port exists.
    pub fn set_local_port(&mut self, local: u16, namespace: &str, name: &str, port: u16) {
        let key = format!("{name}.{namespace}");
        let Some(svc) = self.services.get(key.as_str()) else {
            return;
        };
        if let Ok(i) = svc.ports.binary_search_by_key(&port, |p| p.port) {
            self.local_ports.insert(local, svc.ports[i].clone());
        }
    }

    /// The parent port a connection to listener port `local` is for.
    pub fn parent_for_local_port(&self, local: u16) -> Option<&Arc<ParentPort>> {
        self.local_ports.get(&local)
    }

    /// Every listener port named for a parent, sorted.
    /// Listener port → `namespace/name:port` of its parent, in port order.
    pub fn local_port_map(&self) -> std::collections::BTreeMap<u16, String> {
        self.local_ports
            .iter()
            .map(|(local, p)| (*local, format!("{}/{}:{}", p.namespace, p.name, p.port)))
            .collect()
    }

    pub fn local_port_numbers(&self) -> std::collections::BTreeSet<u16> {
        self.local_ports.keys().copied().collect()
    }

    /// Insert or replace a parent port (used by `compile`).
    pub fn insert_parent(&mut self, parent: ParentPort) {
        let key = format!("{}.{}", parent.name, parent.namespace).into_boxed_str();
        let svc = self
            .services
            .shard_mut(&key)
            .entry(key)
            .or_insert_with(|| ParentService {
                namespace: parent.namespace.clone(),
                name: parent.name.clone(),
                ports: Vec::new(),
            });
        let parent = Arc::new(parent);
        match svc.ports.binary_search_by_key(&parent.port, |p| p.port) {
            Ok(i) => svc.ports[i] = parent,
            Err(i) => svc.ports.insert(i, parent),
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &ParentService> {
        self.services.values()
    }

    /// Parent Service `namespace/name`, if the table holds it.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ParentService> {
        self.services.get(&format!("{name}.{namespace}"))
    }

    /// Take parent Service `namespace/name` (every port) out of the table; listener ports
    /// that stood for it no longer do.
    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Option<ParentService> {
        let gone = self.services.remove(&format!("{name}.{namespace}"))?;
        self.local_ports
            .retain(|_, p| !(*p.namespace == *namespace && *p.name == *name));
        Some(gone)
    }

    /// Forget every listener port (before they are set again with
    /// [`RouteTable::set_local_port`]).
    pub fn clear_local_ports(&mut self) {
        self.local_ports.clear();
    }

    /// Number of parent ports in the table.
    pub fn parent_count(&self) -> usize {
        self.services.values().map(|s| s.ports.len()).sum()
    }

    /// Find the parent port a request authority names. `host` may carry a port; without one,
    /// `default_port` (80) applies. Accepted forms: `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.<cluster-domain>` (case-insensitive, optional trailing dot).
    pub fn parent(&self, authority: &str) -> Option<&ParentPort> {
        let (host, port) = split_authority(authority)?;
        let key = service_key(host, &self.cluster_domain)?;
        let svc = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            self.services.get(key.to_ascii_lowercase().as_str())?
        } else {
            self.services.get(key)?
        };
        svc.ports
            .binary_search_by_key(&port, |p| p.port)
            .ok()
            .map(|i| &*svc.ports[i])
    }

    /// Why [`RouteTable::parent`] finds nothing for `authority`; `None` when it finds a parent.
    pub fn parent_miss(&self, authority: &str) -> Option<ParentMiss<'_>> {
        let Some((host, port)) = split_authority(authority) else {
            return Some(ParentMiss::NotServiceAuthority);
        };
        let Some(key) = service_key(host, &self.cluster_domain) else {
            return Some(ParentMiss::NotServiceAuthority);
        };
        let key = key.to_ascii_lowercase();
        let Some(service) = self.services.get(key.as_str()) else {
            let (name, namespace) = key.split_once('.').unwrap_or((key.as_str(), ""));
            return Some(ParentMiss::NoSuchService {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        };
        match service.ports.binary_search_by_key(&port, |p| p.port) {
            Ok(_) => None,
            Err(_) => Some(ParentMiss::NoSuchPort { service, port }),
        }
    }

    /// Bind a request to a rule: find the parent by authority, then the first match in
    /// precedence order.
    pub fn lookup<'a>(&'a self, authority: &str, req: &matching::RequestView<'_>) -> Lookup<'a> {
        let Some(parent) = self.parent(authority) else {
            return Lookup::UnknownAuthority;
        };
        parent.lookup(req)
    }

    /// The load counters of every endpoint in this table, by address. `compile` reuses them
    /// for the next table so in-flight counts (and the balancing that depends on them) survive
    /// a table swap.
    pub fn endpoint_loads(&self) -> HashMap<SocketAddr, Arc<EndpointLoad>> {
        let mut known = HashMap::new();
        self.for_each_backend(|b| {
            for e in &b.endpoints {
                known.entry(e.addr).or_insert_with(|| e.load.clone());
            }
        });
        known
    }

    fn for_each_backend(&self, mut f: impl FnMut(&Arc<ServiceBackend>)) {
        for svc in self.services.values() {
            for port in &svc.ports {
                for (_, rule) in &port.matches {
                    for b in rule.backends.iter() {
                        if let BackendTarget::Service(s) = &b.target {
                            f(s);
                        }
                    }
                }
            }
        }
    }
}

impl ParentPort {
    pub fn lookup<'a>(&'a self, req: &matching::RequestView<'_>) -> Lookup<'a> {
        for (m, rule) in &self.matches {
            if m.matches(req) {
                return Lookup::Matched {
                    parent: self,
                    matched: m,
                    rule,
                };
            }
        }
        Lookup::NoMatch(self)
    }

    /// True when this parent has no routes and passes traffic through to its own endpoints.
    pub fn is_passthrough(&self) -> bool {
        self.matches.len() == 1 && self.matches[0].1.route.is_none()
    }
}

impl ServiceBackend {
    /// Pick a ready endpoint: power of two choices over in-flight requests, among the ready
    /// endpoints in rotation ([`accrual`]). `r1`, `r2` are random numbers from the caller's
    /// RNG; `now` reads the accrual clock (only called while some candidate is ejected). When
    /// every ready endpoint is ejected, one is picked anyway: ejection alone never fails a
    /// request. `None` only when nothing is ready.
    pub fn pick_endpoint(&self, r1: u64, r2: u64, now: impl Fn() -> u64) -> Option<&Endpoint> {
        use accrual::Admit;
        let n = self.ready.len();
        let ia = match n {
            0 => return None,
            1 => return Some(&self.endpoints[self.ready[0]]),
            n => (r1 % n as u64) as usize,
        };
        let a = &self.endpoints[self.ready[ia]];
        // Choose the second among the other n-1 so the two candidates differ.
        let mut j = (r2 % (n as u64 - 1)) as usize;
        if j >= ia {
            j += 1;
        }
        let b = &self.endpoints[self.ready[j]];
        match a.load.health.admit_with(&now, &self.accrual) {
            Admit::Probe => return Some(a),
            Admit::Yes => {
                return Some(match b.load.health.admit_with(&now, &self.accrual) {
                    Admit::Yes if accrual::prefer(b, a, &now) => b,
                    Admit::Probe => b,
                    _ => a,
                })
            }
            Admit::No => {}
        }
        if b.load.health.admit_with(&now, &self.accrual) != Admit::No {
            return Some(b);
        }
        // Both candidates are out: any other that is in, else `a` (panic mode).
        let other = self
            .ready
            .iter()
            .map(|&i| &self.endpoints[i])
            .find(|e| e.load.health.admit_with(&now, &self.accrual) != Admit::No);
        Some(other.unwrap_or(a))
    }

    /// `name.namespace:port`, for logs and metrics.
    pub fn display_name(&self) -> String {
        format!("{}.{}:{}", self.name, self.namespace, self.port)
    }
}

/// Split `host[:port]` (or `[v6]:port`) into host and port; port defaults to 80.
pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    if authority.starts_with('[') {
        // IP literals are never Service names.
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            // Digits only: `u16::from_str` would also take `+80`.
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let port: u16 = port.parse().ok()?;
            Some((host, port))
        }
        None => Some((authority, 80)),
    }
}

/// Reduce a Service host name to its `name.namespace` key, or `None` if it is not one.
fn service_key<'h>(host: &'h str, cluster_domain: &str) -> Option<&'h str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let first = host.find('.')?;
    let rest = &host[first + 1..];
    let (ns, tail) = match rest.find('.') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if host[..first].is_empty() || ns.is_empty() {
        return None;
    }
    // Case-insensitive throughout (`Svc.` too); an empty tail is an empty label (`svc.ns..`).
    let ok_tail = match tail {
        None => true,
        Some(t) => {
            t.eq_ignore_ascii_case("svc")
                || t.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("svc."))
                    && t[4..].eq_ignore_ascii_case(cluster_domain)
        }
    };
    if !ok_tail {
        return None;
    }
    Some(&host[..first + 1 + ns.len()])
}

fn ser_sorted<S: serde::Serializer>(m: &Services, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().collect::<std::collections::BTreeMap<_, _>>())
}

fn ser_local_ports<S: serde::Serializer>(
    m: &HashMap<u16, Arc<ParentPort>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(
        m.iter()
            .map(|(local, p)| (*local, format!("{}/{}:{}", p.namespace, p.name, p.port)))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
}

mod opt_duration {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::compile::validate::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

fn ser_opt_header_value<S: serde::Serializer>(
    v: &Option<HeaderValue>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v.as_ref().and_then(|v| v.to_str().ok()) {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

fn ser_header_pairs<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for (n, val) in v {
        // Lossy rather than a placeholder: the table digest must see every edit.
        seq.serialize_element(&(n.as_str(), String::from_utf8_lossy(val.as_bytes())))?;
    }
    seq.end()
}

fn ser_header_names<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_authorities_are_recognised() {
        let d = "cluster.local";
        assert_eq!(service_key("web.shop", d), Some("web.shop"));
        assert_eq!(service_key("web.shop.svc", d), Some("web.shop"));
        assert_eq!(
            service_key("web.shop.svc.cluster.local", d),
            Some("web.shop")
        );
        assert_eq!(
            service_key("web.shop.svc.cluster.local.", d),
            Some("web.shop")
        );
        assert_eq!(
            service_key("Web.Shop.SVC.Cluster.Local", d),
            Some("Web.Shop")
        );
        assert_eq!(service_key("web.shop.svc.other.domain", d), None);
        assert_eq!(service_key("web.shop.example.com", d), None);
        assert_eq!(service_key("web", d), None);
        assert_eq!(service_key(".shop", d), None);
        assert_eq!(service_key("web.", d), None);
    }

    #[test]
    fn parent_misses_say_why() {
        let mut t = RouteTable::new("cluster.local");
        t.insert_parent(ParentPort {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
            matches: Vec::new(),
        });
        assert!(t.parent_miss("web.shop").is_none());
        assert!(t.parent_miss("Web.Shop.svc.cluster.local:80").is_none());
        assert!(matches!(
            t.parent_miss("web.shop.example.com"),
            Some(ParentMiss::NotServiceAuthority)
        ));
        assert!(matches!(
            t.parent_miss("[::1]:80"),
            Some(ParentMiss::NotServiceAuthority)
        ));
        assert!(matches!(
            t.parent_miss("web"),
            Some(ParentMiss::NotServiceAuthority)
        ));
        assert!(matches!(
            t.parent_miss("web.shop:http"),
            Some(ParentMiss::NotServiceAuthority)
        ));
        match t.parent_miss("api.shop.svc") {
            Some(ParentMiss::NoSuchService { namespace, name }) => {
                assert_eq!((namespace.as_str(), name.as_str()), ("shop", "api"));
            }
            other => panic!("{other:?}"),
        }
        match t.parent_miss("web.shop:8080") {
            Some(ParentMiss::NoSuchPort { service, port }) => {
                assert_eq!((&*service.name, port), ("web", 8080));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn authority_ports_default_to_80_and_reject_junk() {
        assert_eq!(split_authority("a.b"), Some(("a.b", 80)));
        assert_eq!(split_authority("a.b:8080"), Some(("a.b", 8080)));
        assert_eq!(split_authority("a.b:99999"), None);
        assert_eq!(split_authority("a.b:x"), None);
        assert_eq!(split_authority("[::1]:80"), None);
    }
}
