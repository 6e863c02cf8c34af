//! The shared state of the proxy: its configuration, and the live table with everything the
//! request path derives from it (metric handles, connection pools, retry budgets), published
//! through an [`ArcSwap`]: a request loads it once and finishes on that table even if a new
//! one is swapped in meanwhile. Publishing resolves the metric handles of every route and
//! carries the upstream connection pools and retry budgets over.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::budget::{self, Budgets};
use super::pool::{self, EndpointPool, Pools};
use crate::metrics::{Metrics, PtrHasher, TableMetrics};
use crate::table::{BackendTarget, Filter, ParentPort, RouteTable};

/// Limits and timeouts of the proxy listener and its upstream client.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Client connections served at once. At the cap, a new client makes the connection idle
    /// the longest (no open stream) close gracefully and takes its place; while every
    /// connection has a stream open, new clients wait in the accept backlog.
    pub max_connections: usize,
    /// An h2 client connection with no open stream for this long is closed gracefully
    /// (GOAWAY); zero: never. (HTTP/1.1 keep-alive idles under `header_read_timeout`.)
    pub h2_idle_timeout: Duration,
    /// Interval of the h2 keep-alive PINGs sent to clients; zero: none.
    pub h2_keep_alive_interval: Duration,
    /// A client that does not acknowledge a keep-alive PING within this is disconnected.
    pub h2_keep_alive_timeout: Duration,
    /// Time a client has to send a complete request head (also the idle keep-alive limit
    /// between requests on HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Most header fields in one HTTP/1.1 request head.
    pub max_headers: usize,
    /// Largest request head (HTTP/1.1) or header list (h2), in bytes.
    pub max_header_bytes: usize,
    /// Time allowed to open a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Connections open at once to one endpoint, busy or idle; 0: no limit.
    pub max_connections_per_endpoint: usize,
    /// Requests that may wait for a connection to one endpoint at its connection limit;
    /// more are answered 503 `upstream-overflow` at once.
    pub max_pending_per_endpoint: usize,
    /// How long graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Upper bound on a mirrored request when the rule sets no timeout.
    pub mirror_timeout: Duration,
    /// `request` timeout of rules that set none (passthrough parents, routes without
    /// `timeouts.request`); zero: none. A rule's own value, `0s` included, wins.
    pub default_request_timeout: Duration,
    /// Longest wait for the next byte of a response body from an endpoint before the stream
    /// is aborted; zero: no limit.
    pub upstream_idle_timeout: Duration,
    /// Longest wait for the next byte of a request body from the client: 408
    /// `client-body-timeout` if no response has started, otherwise the exchange is aborted;
    /// zero: no limit.
    pub client_body_timeout: Duration,
    /// Add `meshroute-served-by` (route, rule, backend, endpoint) to responses.
    pub debug_headers: bool,
    /// Log one line per request at target `meshroute::access`.
    pub access_log: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_connections: 10_000,
            h2_idle_timeout: Duration::from_secs(300),
            h2_keep_alive_interval: Duration::from_secs(30),
            h2_keep_alive_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            connect_timeout: Duration::from_secs(3),
            // Envoy's circuit breaker defaults.
            max_connections_per_endpoint: 1024,
            max_pending_per_endpoint: 1024,
            drain_timeout: Duration::from_secs(4),
            mirror_timeout: Duration::from_secs(10),
            // Envoy's route timeout.
            default_request_timeout: Duration::from_secs(15),
            // nginx's proxy_read_timeout and client_body_timeout.
            upstream_idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            debug_headers: false,
            access_log: false,
        }
    }
}

impl ProxyConfig {
    pub(crate) fn pool_limits(&self) -> pool::PoolLimits {
        pool::PoolLimits {
            connect_timeout: self.connect_timeout,
            max_connections: self.max_connections_per_endpoint,
            max_pending: self.max_pending_per_endpoint,
        }
    }
}

/// One published table with everything the request path derives from it.
#[derive(Debug)]
pub struct Live {
    pub table: Arc<RouteTable>,
    /// Every parent port of `table` by its address, so a request path that found a parent by
    /// reference can hold it ([`ParentCache`](super::forward::ParentCache)).
    pub(crate) parents: HashMap<usize, Arc<ParentPort>, BuildHasherDefault<PtrHasher>>,
    pub(crate) metrics: TableMetrics,
    pub(crate) pools: Pools,
    /// Retry budgets of the backends of rules that retry ([`budget`]).
    pub(crate) budgets: Budgets,
}

/// Shared state of the proxy: the live table, metrics and configuration.
#[derive(Debug)]
pub struct Proxy {
    live: ArcSwap<Live>,
    pub metrics: Arc<Metrics>,
    pub config: ProxyConfig,
    ready: AtomicBool,
    /// Serialises publishes; holds how many parent ports of the live table send to each
    /// endpoint (its pool lives while some do).
    publishing: Mutex<HashMap<std::net::SocketAddr, usize>>,
}

impl Proxy {
    /// A proxy serving an empty table (every authority unknown) until the first publish.
    pub fn new(metrics: Arc<Metrics>, config: ProxyConfig) -> Arc<Self> {
        let live = Live {
            table: Arc::new(RouteTable::new(crate::table::DEFAULT_CLUSTER_DOMAIN)),
            parents: HashMap::default(),
            metrics: TableMetrics::default(),
            pools: Pools::default(),
            budgets: Budgets::default(),
        };
        Arc::new(Proxy {
            live: ArcSwap::from_pointee(live),
            metrics,
            config,
            ready: AtomicBool::new(false),
            publishing: Mutex::new(HashMap::new()),
        })
    }

    /// Make `table` the live table. Assigns and returns its generation (previous + 1).
    ///
    /// A table that shares parent ports (`Arc`) with the live one (an incremental compile)
    /// costs what differs: their metric handles and connection pools carry over untouched.
    pub fn publish(&self, mut table: RouteTable) -> u64 {
        let mut pool_refs = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let prev = self.live.load_full();
        table.generation = prev.table.generation + 1;
        let generation = table.generation;
        let metrics = self.metrics.for_table(&table, Some(&prev.metrics));
        let parents: HashMap<usize, Arc<ParentPort>, BuildHasherDefault<PtrHasher>> = table
            .services()
            .flat_map(|s| s.ports.iter())
            .map(|p| (Arc::as_ptr(p) as usize, p.clone()))
            .collect();
        // Pools of the endpoints that parent ports entering the table send to, and none for
        // endpoints no parent port sends to any more.
        let mut added = Vec::new();
        for (key, p) in &parents {
            if !prev.parents.contains_key(key) {
                added.extend(endpoint_addrs(p));
            }
        }
        let mut removed = Vec::new();
        for (key, p) in &prev.parents {
            if !parents.contains_key(key) {
                removed.extend(endpoint_addrs(p));
            }
        }
        let mut pools = prev.pools.clone();
        for addr in &added {
            *pool_refs.entry(*addr).or_default() += 1;
        }
        pools.extend(pool::carry_over(
            Some(&prev.pools),
            added,
            self.config.pool_limits(),
        ));
        for addr in removed {
            if let Some(n) = pool_refs.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    pool_refs.remove(&addr);
                    pools.remove(&addr);
                }
            }
        }
        let budgets = budget::carry_over_budgets(
            &prev.budgets,
            &prev.table,
            &table,
            parents
                .iter()
                .filter(|(key, _)| !prev.parents.contains_key(key))
                .map(|(_, p)| &**p),
        );
        self.live.store(Arc::new(Live {
            table: Arc::new(table),
            parents,
            metrics,
            pools,
            budgets,
        }));
        self.metrics
            .table_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.ready.store(true, Ordering::Release);
        generation
    }

    /// The live table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.live.load().table.clone()
    }

    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// True once a table has been published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Every endpoint address a parent port can send to (backends and mirror targets), once.
fn endpoint_addrs(parent: &ParentPort) -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for (_, rule) in &parent.matches {
        let backend_filters = rule.backends.iter().flat_map(|b| b.filters.iter());
        for f in rule.filters.iter().chain(backend_filters) {
            if let Filter::RequestMirror(m) = f {
                out.extend(m.backend.endpoints.iter().map(|e| e.addr));
            }
        }
        for b in rule.backends.iter() {
            if let BackendTarget::Service(s) = &b.target {
                out.extend(s.endpoints.iter().map(|e| e.addr));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The pool of an endpoint of the live table. An endpoint missing from the map (only possible
/// for a request still running on a table older than the map) gets an unshared pool.
pub(crate) fn pool_for(
    proxy: &Proxy,
    live: &Live,
    addr: std::net::SocketAddr,
) -> Arc<EndpointPool> {
    match live.pools.get(&addr) {
        Some(p) => p.clone(),
        None => Arc::new(EndpointPool::new(addr, proxy.config.pool_limits())),
    }
}
