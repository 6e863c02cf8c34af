//! The live traffic view behind `meshroute top`, the admin dashboard and `--demo`: per parent
//! and route, requests per second, success rate, p50/p99 latency and the split per backend,
//! configured next to observed.
//!
//! The proxy only keeps cumulative counters (the same handles the metrics export, plus a
//! failure count per route); a [`Sampler`] turns two readings of them into rates. Readings
//! are taken when a view is asked for, never in the background, so an unwatched proxy pays
//! nothing, and each view compares with the oldest reading of the last few seconds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Buckets;
use crate::proxy::Proxy;
use crate::table::BackendTarget;

/// Rates are taken over about this long: since the oldest reading not older than it (or, for
/// viewers that poll less often, since their previous reading).
pub const WINDOW: Duration = Duration::from_secs(5);
/// A view needs a reading at least this old to give rates.
const MIN_SPAN: Duration = Duration::from_millis(500);

/// What a view shows: every parent port with routes or traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrafficView {
    pub generation: u64,
    /// Seconds the rates cover; `None` on the first reading (no rates yet).
    pub window_secs: Option<f64>,
    pub parents: Vec<ParentView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ParentView {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteView {
    /// `HTTPRoute`, `TrafficSplit`, or `default` for a parent without routes (passthrough).
    pub kind: String,
    pub group: String,
    pub namespace: String,
    pub name: String,
    pub requests_total: u64,
    pub rps: Option<f64>,
    /// Share of responses below 500 over the window; `None` without requests.
    pub success_rate: Option<f64>,
    /// Latency quantiles over the window, as bucket upper bounds in milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackendView {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    /// Cluster of a mirrored Service; empty for local ones.
    pub cluster: String,
    /// Share configured by weight (0..=1) in the first rule of the route that names it.
    pub configured: f64,
    /// Share of the route's dispatched requests over the window; `None` without any.
    pub observed: Option<f64>,
    pub requests_total: u64,
    /// Why the backendRef is invalid (it answers 500 for its share), if it is.
    pub invalid: Option<String>,
}

/// One reading of the cumulative counters.
#[derive(Debug, Default)]
struct Reading {
    /// Route key → (requests, failures, latency buckets).
    routes: HashMap<String, (u64, u64, Buckets)>,
    /// Backend key → dispatched requests.
    backends: HashMap<String, u64>,
}

/// Keeps recent readings so each view can give rates. Share one per process.
#[derive(Debug, Default)]
pub struct Sampler {
    readings: Mutex<VecDeque<(Instant, Arc<Reading>)>>,
}

fn route_key(p: &ParentView, r: &RouteView) -> String {
    format!(
        "{}/{}:{} {} {}/{}/{}",
        p.namespace, p.name, p.port, r.kind, r.group, r.namespace, r.name
    )
}

fn backend_key(route: &str, b: &BackendView) -> String {
    format!(
        "{route} -> {}/{}:{}@{}",
        b.namespace, b.name, b.port, b.cluster
    )
}

impl Sampler {
    /// The view of `proxy`'s live table now, with rates since the oldest recent reading.
    pub fn view(&self, proxy: &Proxy) -> TrafficView {
        let (mut view, now) = read(proxy);
        let at = Instant::now();
        let now = Arc::new(now);
        let earlier = {
            let mut ring = self.readings.lock().unwrap_or_else(|e| e.into_inner());
            // Drop readings older than the window, but keep the newest of those when nothing
            // younger is left: a viewer that polls more slowly than the window (the demo's
            // view into a pipe every 5 s) still gets rates, over its own interval.
            while ring.len() >= 2
                && ring
                    .get(1)
                    .is_some_and(|(t, _)| at.duration_since(*t) > WINDOW)
            {
                ring.pop_front();
            }
            let earlier = ring
                .front()
                .filter(|(t, _)| at.duration_since(*t) >= MIN_SPAN)
                .cloned();
            // Enough to cover the window at any polling rate, without growing.
            if ring.len() >= 64 {
                ring.pop_front();
            }
            ring.push_back((at, now.clone()));
            earlier
        };
        if let Some((t, before)) = earlier {
            let secs = at.duration_since(t).as_secs_f64();
            view.window_secs = Some(secs);
            rates(&mut view, &now, &before, secs);
        }
        view
    }
}

/// Read the live table and its counters.
fn read(proxy: &Proxy) -> (TrafficView, Reading) {
    let live = proxy.live();
    let mut reading = Reading::default();
    let mut view = TrafficView {
        generation: live.table.generation,
        ..TrafficView::default()
    };
    let mut parents: Vec<_> = live.table.services().flat_map(|s| s.ports.iter()).collect();
    parents.sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
    for parent in parents {
        let mut pv = ParentView {
            namespace: parent.namespace.to_string(),
            name: parent.name.to_string(),
            port: parent.port,
            routes: Vec::new(),
        };
        // Rules of one route share its counters; the first rule (in precedence order)
        // that names a backend gives its configured share.
        let mut index: HashMap<String, usize> = HashMap::new();
        for (_, rule) in &parent.matches {
            let Some(handles) = live.metrics.route(parent, rule) else {
                continue;
            };
            let l = &handles.labels;
            let rv = RouteView {
                kind: l.route_kind.to_string(),
                group: l.route_group.to_string(),
                namespace: l.route_namespace.to_string(),
                name: l.route_name.to_string(),
                ..RouteView::default()
            };
            let key = route_key(&pv, &rv);
            let i = *index.entry(key.clone()).or_insert_with(|| {
                let (requests, failures, buckets) = handles.totals();
                reading
                    .routes
                    .insert(key.clone(), (requests, failures, buckets));
                pv.routes.push(RouteView {
                    requests_total: requests,
                    ..rv
                });
                pv.routes.len() - 1
            });
            let route = &mut pv.routes[i];
            for (b, p) in rule.backends.iter().zip(rule.backends.probabilities()) {
                let mut bv = match &b.target {
                    BackendTarget::Service(s) => BackendView {
                        namespace: s.namespace.to_string(),
                        name: s.name.to_string(),
                        port: s.port,
                        cluster: s.cluster.as_deref().unwrap_or("").to_string(),
                        configured: p,
                        ..BackendView::default()
                    },
                    BackendTarget::Invalid { reason } => BackendView {
                        configured: p,
                        invalid: Some(reason.clone()),
                        ..BackendView::default()
                    },
                };
                let bkey = backend_key(&key, &bv);
                if reading.backends.contains_key(&bkey) {
                    continue;
                }
                bv.requests_total = live
                    .metrics
                    .backend(parent, b)
                    .map(|m| m.requests.get())
                    .unwrap_or(0);
                reading.backends.insert(bkey, bv.requests_total);
                route.backends.push(bv);
            }
        }
        if !pv.routes.is_empty() {
            view.parents.push(pv);
        }
    }
    (view, reading)
}

/// Fill rates, success, quantiles and observed shares from two readings `secs` apart.
fn rates(view: &mut TrafficView, now: &Reading, before: &Reading, secs: f64) {
    for p in &mut view.parents {
        let pkey = ParentView {
            routes: Vec::new(),
            ..p.clone()
        };
        for r in &mut p.routes {
            let key = route_key(&pkey, r);
            let Some((n1, f1, b1)) = now.routes.get(&key) else {
                continue;
            };
            let (n0, f0, b0) = before.routes.get(&key).cloned().unwrap_or_default();
            let n = n1.saturating_sub(n0);
            let f = f1.saturating_sub(f0);
            r.rps = Some(n as f64 / secs);
            if n > 0 {
                r.success_rate = Some(1.0 - f as f64 / n as f64);
                let d = b1.since(&b0);
                r.p50_ms = d.quantile(0.5).map(|s| s * 1000.0);
                r.p99_ms = d.quantile(0.99).map(|s| s * 1000.0);
            }
            let deltas: Vec<u64> = r
                .backends
                .iter()
                .map(|b| {
                    let k = backend_key(&key, b);
                    let a = now.backends.get(&k).copied().unwrap_or(0);
                    let z = before.backends.get(&k).copied().unwrap_or(0);
                    a.saturating_sub(z)
                })
                .collect();
            let sum: u64 = deltas.iter().sum();
            if sum > 0 {
                for (b, d) in r.backends.iter_mut().zip(deltas) {
                    b.observed = Some(d as f64 / sum as f64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::{Proxy, ProxyConfig};

    #[test]
    fn a_viewer_slower_than_the_window_still_gets_rates() {
        let proxy = Proxy::new(Arc::new(Metrics::new()), ProxyConfig::default());
        let sampler = Sampler::default();
        assert_eq!(sampler.view(&proxy).window_secs, None);
        // Every 6 s: each view compares with the previous one, not with nothing.
        for _ in 0..3 {
            let at = Instant::now();
            // The sampler reads std time; move its readings back instead of sleeping 6 s.
            {
                let mut ring = sampler.readings.lock().unwrap();
                for (t, _) in ring.iter_mut() {
                    *t = at.checked_sub(Duration::from_secs(6)).unwrap_or(*t);
                }
            }
            let w = sampler.view(&proxy).window_secs.expect("rates");
            assert!((6.0..7.0).contains(&w), "{w}");
        }
        // And the ring does not grow with them.
        assert!(sampler.readings.lock().unwrap().len() <= 2);
    }
}
