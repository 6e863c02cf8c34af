//! Control-plane scale (issue #14) on the workload of `benches/workload/gen.py`: N HTTPRoutes,
//! 10 per parent Service, each with a path + header match, two weighted backends (the next
//! two parents) and a request timeout; every parent has an EndpointSlice with 3 endpoints.
//!
//! For 1k, 10k and 100k routes: a full compile, one route's weights edited and compiled
//! incrementally (index apply + [`Incremental::update`]), a lookup, and the memory per route
//! the index and the compiled state take (process RSS deltas, printed).
//!
//!     cargo bench --bench scale
//!     SCALE_SIZES=1000,10000 cargo bench --bench scale   # fewer sizes

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use meshroute::compile::incremental::Incremental;
use meshroute::compile::{compile, CompileOptions};
use meshroute::index::Index;
use meshroute::model::Object;
use meshroute::sources::file::parse_documents;
use meshroute::table::matching::RequestView;
use meshroute::table::Lookup;

const ROUTES_PER_PARENT: usize = 10;

/// The objects of parent `i` (its Service, EndpointSlice and 10 routes), as `gen.py` writes
/// them; `edit` gives route `edit` other weights.
fn parent(i: usize, parents: usize, edit: Option<(usize, u32)>) -> Vec<Object> {
    let (a, b) = (i / 250, i % 250);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: scale}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: scale, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [10.{x}.{y}.{z}]}}, {{addresses: [10.{x2}.{y}.{z}]}}, {{addresses: [10.{x3}.{y}.{z}]}}]\n---\n",
        x = 1 + a / 250,
        x2 = 101 + a / 250,
        x3 = 201 + a / 250,
        y = a % 250,
        z = b + 1
    );
    for k in 0..ROUTES_PER_PARENT {
        let r = i * ROUTES_PER_PARENT + k;
        let (w1, w2) = match edit {
            Some((e, w)) if e == r => (w, 100 - w),
            _ => (90, 10),
        };
        y.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: route-{r}, namespace: scale}}\n\
             spec:\n  parentRefs: [{{group: \"\", kind: Service, name: svc-{i}, port: 80}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /r{r}}}, headers: [{{name: x-tenant, value: t{r}}}]}}]\n\
             \x20   backendRefs: [{{name: svc-{q1}, port: 80, weight: {w1}}}, {{name: svc-{q2}, port: 80, weight: {w2}}}]\n\
             \x20   timeouts: {{request: 5s}}\n---\n",
            q1 = (i + 1) % parents,
            q2 = (i + 2) % parents,
        ));
    }
    parse_documents(Path::new("scale.yaml"), &y)
        .into_iter()
        .map(|l| l.expect("workload parses").object)
        .collect()
}

fn index(routes: usize) -> Index {
    let parents = (routes / ROUTES_PER_PARENT).max(3);
    let mut index = Index::new();
    index.track_changes();
    for i in 0..parents {
        for o in parent(i, parents, None) {
            index.apply(o).expect("workload is valid");
        }
    }
    index
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn sizes() -> Vec<usize> {
    std::env::var("SCALE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000])
}

fn bench_scale(c: &mut Criterion) {
    let opts = CompileOptions::default();
    for routes in sizes() {
        let parents = (routes / ROUTES_PER_PARENT).max(3);
        let r0 = rss_kib();
        let mut idx = index(routes);
        let r1 = rss_kib();
        let mut inc = Incremental::new(opts.clone()).keep_statuses(false);
        let table = inc.update(&mut idx).table;
        let r2 = rss_kib();
        eprintln!(
            "{routes} routes: index {} B/route, compiled table + incremental state {} B/route (RSS deltas)",
            (r1.saturating_sub(r0)) * 1024 / routes as u64,
            (r2.saturating_sub(r1)) * 1024 / routes as u64,
        );

        let mut g = c.benchmark_group(format!("scale/{routes}"));
        g.sample_size(10);
        g.bench_function(BenchmarkId::new("full_compile", routes), |b| {
            b.iter(|| black_box(compile(&idx, &opts, None).table.parent_count()))
        });
        // One route's weights edited: the index takes the new object, the table is patched.
        let target = parents / 2;
        let route = target * ROUTES_PER_PARENT + 3;
        let edited: Vec<Vec<Object>> = (0..2)
            .map(|n| {
                parent(target, parents, Some((route, 40 + n)))
                    .into_iter()
                    .filter(|o| *o.key().name == *format!("route-{route}"))
                    .collect()
            })
            .collect();
        let mut n = 0;
        g.bench_function(BenchmarkId::new("one_edit_incremental", routes), |b| {
            b.iter(|| {
                n += 1;
                for o in edited[n % 2].iter().cloned() {
                    idx.apply(o).expect("valid");
                }
                let up = inc.update(&mut idx);
                assert_eq!(up.routes, 1);
                black_box(up.table.parent_count())
            })
        });
        let headers = {
            let mut h = HeaderMap::new();
            h.insert("x-tenant", format!("t{route}").parse().expect("header"));
            h
        };
        let path = format!("/r{route}/x");
        let authority = format!("svc-{target}.scale.svc.cluster.local:80");
        g.bench_function(BenchmarkId::new("lookup", routes), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    path: black_box(&path),
                    query: None,
                    headers: &headers,
                };
                match table.lookup(black_box(&authority), &view) {
                    Lookup::Matched { rule, .. } => black_box(rule.index),
                    other => panic!("{other:?}"),
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench_scale);
criterion_main!(benches);
