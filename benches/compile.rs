//! Compile and lookup at scale: 1,000 and 10,000 HTTPRoutes over 1,000 parent Services, and a
//! request lookup in the result. Also prints the resident memory the 10,000-route table adds.
//! `parent/*` compares the two ways a connection finds its parent port: by the request's
//! authority (main listener) and by the connection's local port (per-parent-port listeners,
//! looked up once per connection and table).
//!
//!     cargo bench --bench compile

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use meshroute::compile::{compile, CompileOptions};
use meshroute::index::Index;
use meshroute::sources::file::parse_documents;
use meshroute::table::matching::RequestView;
use meshroute::table::Lookup;

const PARENTS: usize = 1000;

/// Services (each with a 3-endpoint EndpointSlice) and `routes` HTTPRoutes spread over them,
/// each with three rules of different match kinds and two weighted backends.
fn index(routes: usize) -> Index {
    let mut y = String::new();
    for i in 0..PARENTS {
        y.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.1.{a}.{b}]}}, {{addresses: [10.2.{a}.{b}]}}, {{addresses: [10.3.{a}.{b}]}}]\n---\n",
            a = i / 250,
            b = i % 250 + 1
        ));
    }
    for r in 0..routes {
        let p = r % PARENTS;
        let q = (r * 7 + 1) % PARENTS;
        y.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: route-{r}, namespace: bench, creationTimestamp: \"2025-01-01T00:00:{s:02}Z\"}}\n\
             spec:\n  parentRefs: [{{kind: Service, group: \"\", name: svc-{p}, port: 80}}]\n  rules:\n\
             \x20 - matches: [{{path: {{type: Exact, value: /r{r}/exact}}}}]\n    backendRefs: [{{name: svc-{q}, port: 80, weight: 90}}, {{name: svc-{p}, port: 80, weight: 10}}]\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /r{r}}}, headers: [{{name: x-canary, value: \"yes\"}}]}}]\n    backendRefs: [{{name: svc-{q}, port: 80}}]\n    timeouts: {{request: 5s}}\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /r{r}}}}}]\n    backendRefs: [{{name: svc-{p}, port: 80}}]\n---\n",
            s = r % 60
        ));
    }
    let mut index = Index::new();
    // One document at a time: the loader's per-file budget is sized for hand-written files.
    for doc in y.split("---\n").filter(|d| !d.trim().is_empty()) {
        for item in parse_documents(Path::new("bench.yaml"), doc) {
            let loaded = item.expect("bench input parses");
            index.apply(loaded.object).expect("bench input is valid");
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

fn bench_compile(c: &mut Criterion) {
    // Memory first, before the timing loops have grown the heap: RSS added by one 10k table.
    let idx = index(10_000);
    let before = rss_kib();
    let compiled = compile(&idx, &CompileOptions::default(), None);
    let after = rss_kib();
    eprintln!(
        "10,000 routes over {PARENTS} parents ({} parent ports): process RSS {:.1} MiB with index and table; \
         the table added {:.1} MiB (a lower bound: it may reuse memory the parser freed)",
        compiled.table.parent_count(),
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for routes in [1_000, 10_000] {
        let idx = index(routes);
        g.bench_with_input(BenchmarkId::new("httproutes", routes), &idx, |b, idx| {
            b.iter(|| black_box(compile(idx, &CompileOptions::default(), None)))
        });
    }
    g.finish();

    let headers = {
        let mut h = HeaderMap::new();
        h.insert("x-canary", "yes".parse().unwrap());
        h
    };
    let mut g = c.benchmark_group("lookup");
    // Worst realistic case: a parent with 10 routes x 3 rules, request matching the last-sorted prefix rule.
    for (name, path, hdrs) in [
        ("exact", "/r4321/exact", &HeaderMap::new()),
        ("header", "/r4321/x", &headers),
        ("prefix", "/r4321/x", &HeaderMap::new()),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    path: black_box(path),
                    query: None,
                    headers: hdrs,
                };
                match compiled
                    .table
                    .lookup(black_box("svc-321.bench.svc.cluster.local:80"), &view)
                {
                    Lookup::Matched { rule, .. } => black_box(rule.index),
                    other => panic!("{other:?}"),
                }
            })
        });
    }
    g.finish();

    // Transparent serving: our own EndpointSlices name a listener port per parent port.
    let mut idx = idx;
    for i in 0..PARENTS {
        let doc = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-meshroute, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}, endpointslice.kubernetes.io/managed-by: meshroute.dev}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [10.9.0.1]}}]\n",
            20000 + i
        );
        for item in parse_documents(Path::new("bench.yaml"), &doc) {
            idx.apply(item.expect("parses").object).expect("valid");
        }
    }
    let table = compile(&idx, &CompileOptions::default(), None).table;
    assert_eq!(table.local_port_numbers().len(), PARENTS);
    let mut g = c.benchmark_group("parent");
    g.bench_function("by_authority", |b| {
        b.iter(|| {
            black_box(
                table
                    .parent(black_box("svc-321.bench.svc.cluster.local:80"))
                    .map(|p| p.port),
            )
        })
    });
    g.bench_function("by_local_port", |b| {
        b.iter(|| {
            black_box(
                table
                    .parent_for_local_port(black_box(20321))
                    .map(|p| p.port),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
