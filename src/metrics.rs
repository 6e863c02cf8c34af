//! Process metrics, exported in the OpenMetrics text format by the admin server.
//!
//! Route and backend families use Linkerd's outbound names and labels
//! (`outbound_http_route_*`) so existing dashboards and Flagger/Argo queries keep working.
//! The request path never hashes a label set: the first request a parent port of a published
//! table serves resolves a handle for each of its (rule) and (backend) once ([`TableMetrics`]),
//! and requests look the handle up by the address of the table entry (a pointer-sized key) and
//! bump atomics. Parent ports that never serve cost no series (100k idle routes would
//! otherwise hold several KiB each).
//!
//! Histograms are [`AtomicHistogram`]s — fixed buckets of atomics instead of
//! prometheus-client's lock-protected histogram — so observing a latency never takes a lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::table::{Backend, BackendTarget, Mirror, ParentPort, RouteTable, Rule, ServiceBackend};

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations with fixed [`BUCKETS`], updated with relaxed atomics only.
#[derive(Debug, Clone, Default)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug, Default)]
struct HistogramInner {
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.partition_point(|&b| b < secs);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); BUCKETS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.0.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Parent and route labels (Linkerd's `outbound_http_route_*` label set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub parent_group: &'static str,
    pub parent_kind: &'static str,
    pub parent_namespace: Arc<str>,
    pub parent_name: Arc<str>,
    pub parent_port: u16,
    pub route_group: &'static str,
    pub route_kind: &'static str,
    pub route_namespace: Arc<str>,
    pub route_name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub http_status: u16,
    /// Empty when the proxy made no error; otherwise the `meshroute-error` reason.
    pub error: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub backend_group: &'static str,
    pub backend_kind: &'static str,
    pub backend_namespace: Arc<str>,
    pub backend_name: Arc<str>,
    pub backend_port: u16,
    /// `mirror.linkerd.io/cluster-name` of a mirrored Service; empty for local Services.
    pub backend_cluster: Arc<str>,
    /// `true` for copies sent by a RequestMirror filter.
    pub mirror: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    pub backend_namespace: Arc<str>,
    pub backend_name: Arc<str>,
    pub backend_port: u16,
    pub backend_cluster: Arc<str>,
}

/// Every metric the process exports. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    route_duration: Family<RouteLabels, AtomicHistogram>,
    route_statuses: Family<StatusLabels, Counter>,
    retry_requests: Family<RouteLabels, Counter>,
    retry_successes: Family<RouteLabels, Counter>,
    retry_limit_exceeded: Family<RouteLabels, Counter>,
    retry_overflow: Family<RouteLabels, Counter>,
    hedge_requests: Family<RouteLabels, Counter>,
    hedge_wins: Family<RouteLabels, Counter>,
    backend_requests: Family<BackendLabels, Counter>,
    backend_duration: Family<BackendLabels, AtomicHistogram>,
    endpoints_ready: Family<ServiceLabels, Gauge>,
    /// How many parent ports of the live table send to each Service of `endpoints_ready`.
    gauge_refs: std::sync::Mutex<HashMap<ServiceLabels, usize>>,
    pub open_connections: Gauge,
    pub connections_total: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Endpoints taken out of rotation by failure accrual ([`crate::table::accrual`]).
    pub endpoint_ejections: Counter,
    pub table_generation: Gauge,
    pub reloads: Counter,
    pub reload_errors: Counter,
    /// 1 while the live table is the result of the last reload attempt, 0 while a broken
    /// edit is being ignored.
    pub config_ok: Gauge,
    /// Kubernetes mode: 1 while this replica holds the status Lease (and so writes status and
    /// Events).
    pub status_writer_leader: Gauge,
    /// Kubernetes mode: 1 while the status Lease can be read and taken or renewed, 0 while it
    /// cannot (missing namespace, no RBAC, API server unreachable): then no replica may be
    /// writing status.
    pub status_writer_lease_ok: Gauge,
    /// Requests refused before routing (missing Host, unknown authority, no matching rule).
    unrouted: Family<UnroutedLabels, Counter>,
    /// Failure counts per route label set, shared by every table's handles (not exported:
    /// `outbound_http_route_request_statuses` has them by status; this is for the live view).
    route_stats: std::sync::Mutex<HashMap<RouteLabels, Arc<RouteStats>>>,
    /// `meshroute_info{mode, version} 1`: lets alerts tell file mode (no status writer) from
    /// Kubernetes mode.
    info: Family<InfoLabels, Gauge>,
}

/// What the live traffic view needs beyond the exported families: failures (5xx), counted
/// once per route label set and shared across table swaps.
#[derive(Debug, Default)]
pub struct RouteStats {
    failures: AtomicU64,
}

/// A histogram's non-cumulative bucket counts (the last is `+Inf`), for the live view.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Buckets(pub Vec<u64>);

impl Buckets {
    /// Upper bounds of the buckets in seconds (`+Inf` last).
    pub fn bounds() -> impl Iterator<Item = f64> {
        BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
    }

    /// `self - earlier`, bucket by bucket (saturating: counters only grow).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }

    /// The `q` quantile (0..=1) as the upper bound of the bucket it falls in; `None` when
    /// empty. The last finite bound stands for `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    BUCKETS
                        .get(i)
                        .copied()
                        .unwrap_or(BUCKETS[BUCKETS.len() - 1]),
                );
            }
        }
        None
    }
}

impl AtomicHistogram {
    pub fn buckets(&self) -> Buckets {
        Buckets(
            self.0
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct InfoLabels {
    /// `file` or `kube`.
    mode: &'static str,
    version: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UnroutedLabels {
    error: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            route_duration: Family::default(),
            route_statuses: Family::default(),
            retry_requests: Family::default(),
            retry_successes: Family::default(),
            retry_limit_exceeded: Family::default(),
            retry_overflow: Family::default(),
            hedge_requests: Family::default(),
            hedge_wins: Family::default(),
            backend_requests: Family::default(),
            backend_duration: Family::default(),
            endpoints_ready: Family::default(),
            gauge_refs: Default::default(),
            open_connections: Gauge::default(),
            connections_total: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            endpoint_ejections: Counter::default(),
            table_generation: Gauge::default(),
            reloads: Counter::default(),
            reload_errors: Counter::default(),
            config_ok: Gauge::default(),
            status_writer_leader: Gauge::default(),
            status_writer_lease_ok: Gauge::default(),
            unrouted: Family::default(),
            route_stats: Default::default(),
            info: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "outbound_http_route_request_duration_seconds",
            "Time from receiving a request until its response stream ends, per route",
            m.route_duration.clone(),
        );
        r.register(
            "outbound_http_route_request_statuses",
            "Completed requests per route, by HTTP status and proxy error",
            m.route_statuses.clone(),
        );
        r.register(
            "outbound_http_route_retry_requests",
            "Retries sent, per route (first attempts not included)",
            m.retry_requests.clone(),
        );
        r.register(
            "outbound_http_route_retry_successes",
            "Requests answered without a retryable failure after at least one retry",
            m.retry_successes.clone(),
        );
        r.register(
            "outbound_http_route_retry_limit_exceeded",
            "Retryable failures answered as they were because the rule's retry limit was reached",
            m.retry_limit_exceeded.clone(),
        );
        r.register(
            "outbound_http_route_retry_overflow",
            "Retryable failures not retried because the backend's retry budget was spent or the request body was too large to replay",
            m.retry_overflow.clone(),
        );
        r.register(
            "outbound_http_route_hedge_requests",
            "Hedged attempts sent (meshroute.dev/hedge), per route",
            m.hedge_requests.clone(),
        );
        r.register(
            "outbound_http_route_hedge_wins",
            "Requests answered by a hedged attempt rather than the first, per route",
            m.hedge_wins.clone(),
        );
        r.register(
            "outbound_http_route_backend_requests",
            "Requests dispatched to each backend of a route",
            m.backend_requests.clone(),
        );
        r.register(
            "outbound_http_route_backend_response_duration_seconds",
            "Time from dispatching to a backend until its response stream ends",
            m.backend_duration.clone(),
        );
        r.register(
            "meshroute_backend_endpoints_ready",
            "Ready endpoints of each backend Service port in the live table",
            m.endpoints_ready.clone(),
        );
        r.register(
            "meshroute_info",
            "1, labelled with how this process runs (mode: file or kube) and its version",
            m.info.clone(),
        );
        r.register(
            "meshroute_unrouted_requests",
            "Requests answered before a route was found",
            m.unrouted.clone(),
        );
        r.register(
            "meshroute_open_connections",
            "Client connections currently open",
            m.open_connections.clone(),
        );
        r.register(
            "meshroute_connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "meshroute_received_bytes",
            "Bytes read from clients",
            m.bytes_in.clone(),
        );
        r.register(
            "meshroute_sent_bytes",
            "Bytes written to clients",
            m.bytes_out.clone(),
        );
        r.register(
            "meshroute_endpoint_ejections",
            "Endpoints taken out of rotation after failing (connect failures at once, other exchange failures after 7 in a row)",
            m.endpoint_ejections.clone(),
        );
        r.register(
            "meshroute_status_writer_leader",
            "1 while this replica holds the Lease that makes it write route status and Events",
            m.status_writer_leader.clone(),
        );
        r.register(
            "meshroute_status_writer_lease_ok",
            "1 while the status writer's Lease can be read and taken or renewed",
            m.status_writer_lease_ok.clone(),
        );
        r.register(
            "meshroute_table_generation",
            "Generation of the live routing table",
            m.table_generation.clone(),
        );
        r.register(
            "meshroute_config_reloads",
            "Configuration reload attempts",
            m.reloads.clone(),
        );
        r.register(
            "meshroute_config_reload_errors",
            "Configuration reloads that found errors (the last good table kept serving)",
            m.reload_errors.clone(),
        );
        r.register(
            "meshroute_config_ok",
            "1 when the live table reflects the configuration on disk, 0 while an edit is rejected",
            m.config_ok.clone(),
        );
        m
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Say how this process runs (`file` or `kube`), once at start.
    pub fn set_mode(&self, mode: &'static str) {
        self.info.clear();
        self.info
            .get_or_create(&InfoLabels {
                mode,
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
    }

    pub fn count_unrouted(&self, error: &'static str) {
        self.unrouted.get_or_create(&UnroutedLabels { error }).inc();
    }

    /// Describe `table` for the request path: every parent port gets a slot whose route and
    /// backend handles are resolved when it first serves a request (an idle route costs no
    /// metric series), and the ready-endpoint gauges of its backends. Parent ports `prev` (the
    /// live table's metrics) already has, the same `Arc` in both tables, keep their slot:
    /// an incremental publish costs what it rebuilt.
    pub fn for_table(
        self: &Arc<Self>,
        table: &RouteTable,
        prev: Option<&TableMetrics>,
    ) -> TableMetrics {
        let mut parents = PtrMap::default();
        for svc in table.services() {
            for parent in &svc.ports {
                let key = ptr(&**parent);
                // `prev`'s table is alive while this runs, so an address it knows is still
                // the same parent port.
                let slot = match prev.and_then(|p| p.parents.get(&key)) {
                    Some(h) => h.clone(),
                    None => {
                        let h = Arc::new(ParentSlot {
                            ready: ready_gauges(parent),
                            handles: OnceLock::new(),
                        });
                        self.gauges_hold(&h.ready);
                        h
                    }
                };
                parents.insert(key, slot);
            }
        }
        for (key, h) in prev.map(|p| &p.parents).into_iter().flatten() {
            if !parents.contains_key(key) {
                self.gauges_release(&h.ready);
            }
        }
        TableMetrics {
            metrics: Some(self.clone()),
            parents,
        }
    }

    fn parent_handles(self: &Arc<Self>, parent: &ParentPort) -> ParentMetrics {
        let mut h = ParentMetrics::default();
        for (_, rule) in &parent.matches {
            let key = ptr(&**rule);
            if h.routes.contains_key(&key) {
                continue;
            }
            let labels = route_labels(parent, rule);
            let mut handles = self.route_handles(labels.clone());
            if rule.retry.is_some() {
                handles.retry = Some(self.retry_handles(&labels));
            }
            h.routes.insert(key, Arc::new(handles));
            for b in rule.backends.iter() {
                let handles = self.backend_handles(&labels, b);
                h.backends.insert(ptr(b), Arc::new(handles));
            }
            let rule_mirrors = rule.filters.iter();
            let backend_mirrors = rule.backends.iter().flat_map(|b| b.filters.iter());
            for f in rule_mirrors.chain(backend_mirrors) {
                if let crate::table::Filter::RequestMirror(m) = f {
                    let handles = self.mirror_handles(&labels, m);
                    h.backends.insert(ptr(m), Arc::new(handles));
                }
            }
        }
        h
    }

    /// A parent port entered the table: the ready-endpoint gauges of its backends are set and
    /// held.
    fn gauges_hold(&self, ready: &[(ServiceLabels, i64)]) {
        let mut refs = self.gauge_refs.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, n) in ready {
            *refs.entry(labels.clone()).or_default() += 1;
            self.endpoints_ready.get_or_create(labels).set(*n);
        }
    }

    /// A parent port left the table: a Service no parent port sends to any more stops being
    /// reported.
    fn gauges_release(&self, ready: &[(ServiceLabels, i64)]) {
        let mut refs = self.gauge_refs.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, _) in ready {
            if let Some(n) = refs.get_mut(labels) {
                *n -= 1;
                if *n == 0 {
                    refs.remove(labels);
                    self.endpoints_ready.remove(labels);
                }
            }
        }
    }

    fn route_handles(&self, labels: RouteLabels) -> RouteMetrics {
        let stats = self
            .route_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(labels.clone())
            .or_default()
            .clone();
        RouteMetrics {
            stats,
            duration: self.route_duration.get_or_create_owned(&labels),
            ok: OnceLock::new(),
            statuses: self.route_statuses.clone(),
            labels,
            retry: None,
        }
    }

    fn retry_handles(&self, labels: &RouteLabels) -> RetryMetrics {
        RetryMetrics {
            requests: self.retry_requests.get_or_create_owned(labels),
            successes: self.retry_successes.get_or_create_owned(labels),
            limit_exceeded: self.retry_limit_exceeded.get_or_create_owned(labels),
            overflow: self.retry_overflow.get_or_create_owned(labels),
            hedges: self.hedge_requests.get_or_create_owned(labels),
            hedge_wins: self.hedge_wins.get_or_create_owned(labels),
        }
    }

    fn backend_handles(&self, route: &RouteLabels, b: &Backend) -> BackendMetrics {
        let labels = match &b.target {
            BackendTarget::Service(s) => backend_labels(route, s, false),
            BackendTarget::Invalid { .. } => BackendLabels {
                route: route.clone(),
                backend_group: "",
                backend_kind: "Invalid",
                backend_namespace: route.route_namespace.clone(),
                backend_name: Arc::from(""),
                backend_port: 0,
                backend_cluster: Arc::from(""),
                mirror: false,
            },
        };
        self.backend_from_labels(labels)
    }

    fn mirror_handles(&self, route: &RouteLabels, m: &Mirror) -> BackendMetrics {
        self.backend_from_labels(backend_labels(route, &m.backend, true))
    }

    fn backend_from_labels(&self, labels: BackendLabels) -> BackendMetrics {
        BackendMetrics {
            requests: self.backend_requests.get_or_create_owned(&labels),
            duration: self.backend_duration.get_or_create_owned(&labels),
        }
    }

    /// Forget per-Service gauges (and what holds them) before a table is described from
    /// scratch.
    pub fn reset_endpoint_gauges(&self) {
        self.endpoints_ready.clear();
        self.gauge_refs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The ready-endpoint count of every Service a parent port's rules send to, once each.
fn ready_gauges(parent: &ParentPort) -> Box<[(ServiceLabels, i64)]> {
    let mut out: Vec<(ServiceLabels, i64)> = Vec::new();
    for (_, rule) in &parent.matches {
        for b in rule.backends.iter() {
            if let BackendTarget::Service(s) = &b.target {
                let labels = service_labels(s);
                if !out.iter().any(|(l, _)| *l == labels) {
                    out.push((labels, i64::try_from(s.ready.len()).unwrap_or(i64::MAX)));
                }
            }
        }
    }
    out.into_boxed_slice()
}

fn service_labels(s: &ServiceBackend) -> ServiceLabels {
    ServiceLabels {
        backend_namespace: s.namespace.clone(),
        backend_name: s.name.clone(),
        backend_port: s.port,
        backend_cluster: s.cluster.clone().unwrap_or_else(|| Arc::from("")),
    }
}

/// Slots for statuses 100..=599 in [`RouteMetrics::ok`].
const STATUS_SLOTS: usize = 500;

/// Handles for one (parent port, rule).
#[derive(Debug)]
pub struct RouteMetrics {
    pub labels: RouteLabels,
    stats: Arc<RouteStats>,
    duration: AtomicHistogram,
    /// Counter handles for error-free responses, by `status - 100`, created on first use
    /// (the slots too: a route that never served costs no 8 KiB of them).
    ok: OnceLock<Box<[OnceLock<Counter>]>>,
    statuses: Family<StatusLabels, Counter>,
    /// Linkerd's retry families; only for rules that retry.
    pub retry: Option<RetryMetrics>,
}

/// `outbound_http_route_retry_*_total` of one route.
#[derive(Debug)]
pub struct RetryMetrics {
    pub requests: Counter,
    pub successes: Counter,
    pub limit_exceeded: Counter,
    pub overflow: Counter,
    pub hedges: Counter,
    pub hedge_wins: Counter,
}

impl RouteMetrics {
    /// Record one finished request: its status, the proxy error if any, and its duration.
    pub fn record(&self, status: u16, error: Option<&'static str>, elapsed: Duration) {
        self.duration.observe(elapsed);
        if status >= 500 {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        match (error, usize::from(status).checked_sub(100)) {
            (None, Some(i)) if i < STATUS_SLOTS => {
                self.ok
                    .get_or_init(|| (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect())[i]
                    .get_or_init(|| self.status_counter(status, ""))
                    .inc();
            }
            (error, _) => {
                self.status_counter(status, error.unwrap_or("")).inc();
            }
        }
    }

    /// Requests finished so far, failures (5xx) among them, and their latency buckets: the
    /// cumulative figures the live view turns into rates.
    pub fn totals(&self) -> (u64, u64, Buckets) {
        (
            self.duration.count(),
            self.stats.failures.load(Ordering::Relaxed),
            self.duration.buckets(),
        )
    }

    fn status_counter(&self, http_status: u16, error: &'static str) -> Counter {
        self.statuses.get_or_create_owned(&StatusLabels {
            route: self.labels.clone(),
            http_status,
            error,
        })
    }
}

/// Handles for one backend (or mirror target) of one rule under one parent.
#[derive(Debug)]
pub struct BackendMetrics {
    pub requests: Counter,
    pub duration: AtomicHistogram,
}

/// Metric handles of one published table, keyed by the address of table entries: per parent
/// port (shared with the previous table's when the parent port is), then per rule, backend or
/// mirror.
#[derive(Debug, Default)]
pub struct TableMetrics {
    metrics: Option<Arc<Metrics>>,
    parents: PtrMap<Arc<ParentSlot>>,
}

/// One parent port: the ready-endpoint gauges it holds (with their values), and its handles
/// once it has served.
#[derive(Debug)]
struct ParentSlot {
    ready: Box<[(ServiceLabels, i64)]>,
    handles: OnceLock<ParentMetrics>,
}

/// Handles of one parent port's rules, backends and mirrors.
#[derive(Debug, Default)]
pub struct ParentMetrics {
    routes: PtrMap<Arc<RouteMetrics>>,
    backends: PtrMap<Arc<BackendMetrics>>,
}

impl ParentMetrics {
    /// Handles for one rule of this parent port.
    pub fn route(&self, rule: &Rule) -> Option<&Arc<RouteMetrics>> {
        self.routes.get(&ptr(rule))
    }

    /// Handles for one backend of this parent port's rules.
    pub fn backend(&self, backend: &Backend) -> Option<&Arc<BackendMetrics>> {
        self.backends.get(&ptr(backend))
    }
}

impl TableMetrics {
    /// The handles of `parent`, resolved on first use. A request looks them up once and takes
    /// its rule's and backend's from them ([`ParentMetrics::route`], [`ParentMetrics::backend`]).
    pub fn handles(&self, parent: &ParentPort) -> Option<&ParentMetrics> {
        let slot = self.parents.get(&ptr(parent))?;
        let metrics = self.metrics.as_ref()?;
        Some(slot.handles.get_or_init(|| metrics.parent_handles(parent)))
    }

    /// Handles for `rule` served under `parent`. Both must belong to the table these metrics
    /// were built for.
    pub fn route(&self, parent: &ParentPort, rule: &Rule) -> Option<&Arc<RouteMetrics>> {
        self.handles(parent)?.route(rule)
    }

    pub fn backend(&self, parent: &ParentPort, backend: &Backend) -> Option<&Arc<BackendMetrics>> {
        self.handles(parent)?.backend(backend)
    }

    pub fn mirror(&self, parent: &ParentPort, mirror: &Mirror) -> Option<&Arc<BackendMetrics>> {
        self.handles(parent)?.backends.get(&ptr(mirror))
    }
}

fn route_labels(parent: &ParentPort, rule: &Rule) -> RouteLabels {
    let (route_group, route_kind, route_namespace, route_name) = match &rule.route {
        Some(r) => (r.group, r.kind, r.namespace.clone(), r.name.clone()),
        // Linkerd labels traffic of a Service without routes as the "default" route.
        None => ("", "default", parent.namespace.clone(), Arc::from("http")),
    };
    RouteLabels {
        parent_group: "core",
        parent_kind: "Service",
        parent_namespace: parent.namespace.clone(),
        parent_name: parent.name.clone(),
        parent_port: parent.port,
        route_group,
        route_kind,
        route_namespace,
        route_name,
    }
}

fn backend_labels(route: &RouteLabels, s: &ServiceBackend, mirror: bool) -> BackendLabels {
    BackendLabels {
        route: route.clone(),
        backend_group: "core",
        backend_kind: "Service",
        backend_namespace: s.namespace.clone(),
        backend_name: s.name.clone(),
        backend_port: s.port,
        backend_cluster: s.cluster.clone().unwrap_or_else(|| Arc::from("")),
        mirror,
    }
}

type PtrMap<V> = HashMap<usize, V, BuildHasherDefault<PtrHasher>>;

fn ptr<T>(r: &T) -> usize {
    r as *const T as usize
}

/// A multiplicative hasher for pointer pairs: addresses are already well spread, so SipHash
/// would only add cost on the request path.
#[derive(Default)]
pub struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_encodes_cumulative_buckets_and_sum() {
        let h = AtomicHistogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(20));
        let mut reg = Registry::default();
        reg.register("lat_seconds", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("lat_seconds_bucket{le=\"0.005\"} 1"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.5\"} 2"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("lat_seconds_count 3"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
