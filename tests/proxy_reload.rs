//! Hot reload through the real directory watcher, and the admin endpoints that report it.

#[path = "support/proxy.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

fn world(a: &Backend, b: &Backend) -> String {
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(a, true)]);
    y += &service_with_endpoints("shop", "web-b", &[(b, true)]);
    y
}

fn split_route(wa: u32, wb: u32) -> String {
    route(
        "shop",
        "web-split",
        "web",
        &format!("  - backendRefs:\n    - {{name: web-a, port: 80, weight: {wa}}}\n    - {{name: web-b, port: 80, weight: {wb}}}\n"),
    )
}

#[tokio::test]
async fn edited_weights_take_effect_on_next_request_after_reload() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = start_on(dir.path()).await;
    let c = client();
    assert_eq!(split(&c, m.proxy_addr, HOST, 20).await.get("a"), Some(&20));

    let before = m.proxy.table().generation;
    let edited = std::time::Instant::now();
    write(dir.path(), "route.yaml", &split_route(0, 1));
    wait_generation(&m, before + 1).await;
    assert!(
        edited.elapsed() < Duration::from_secs(3),
        "reload took {:?}",
        edited.elapsed()
    );
    // The very next request follows the new table.
    assert_eq!(split(&c, m.proxy_addr, HOST, 20).await.get("b"), Some(&20));
    m.shutdown().await.unwrap();
}

/// Wait until the watcher has attempted more than `n` reloads (bounded).
async fn wait_reloads(m: &meshroute::run::Running, n: u64) {
    for _ in 0..500 {
        if m.status.snapshot().reloads > n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no reload after {n}: {:?}", m.status.snapshot());
}

#[tokio::test]
async fn resync_of_an_unchanged_directory_publishes_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = meshroute::run::start(meshroute::run::RunConfig {
        config_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        proxy: test_config(),
        resync: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = m.proxy.table().generation;
    wait_reloads(&m, 3).await;
    assert_eq!(m.proxy.table().generation, first);
    let st = m.status.snapshot();
    assert_eq!(st.generation, first, "{st:?}");
    assert!(st.config_ok, "{st:?}");

    // A real edit is still published, by the watcher or the next resync.
    write(dir.path(), "route.yaml", &split_route(0, 1));
    wait_generation(&m, first + 1).await;
    assert_eq!(
        split(&client(), m.proxy_addr, HOST, 10).await.get("b"),
        Some(&10)
    );
    let reloads = m.status.snapshot().reloads;
    wait_reloads(&m, reloads + 2).await;
    assert_eq!(m.proxy.table().generation, first + 1);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn rewriting_a_file_with_the_same_content_publishes_nothing() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = start_on(dir.path()).await;
    let first = m.proxy.table().generation;
    let reloads = m.status.snapshot().reloads;

    write(dir.path(), "route.yaml", &split_route(1, 0));
    wait_reloads(&m, reloads).await;
    assert_eq!(m.proxy.table().generation, first);
    assert_eq!(m.status.snapshot().generation, first);
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(
        metrics.contains(&format!("meshroute_table_generation {first}\n")),
        "{metrics}"
    );

    write(dir.path(), "route.yaml", &split_route(0, 1));
    wait_generation(&m, first + 1).await;
    assert_eq!(
        split(&client(), m.proxy_addr, HOST, 10).await.get("b"),
        Some(&10)
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn broken_edit_keeps_the_last_good_table_and_reports_it() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = start_on(dir.path()).await;
    let good = m.proxy.table().generation;

    let broken = split_route(0, 1).replace(
        "backendRefs:",
        "timeouts: {request: \"5\"}\n    backendRefs:",
    );
    write(dir.path(), "route.yaml", &broken);
    // The reload is attempted (reload counter moves) but nothing is published.
    for _ in 0..300 {
        if m.status.snapshot().reloads >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = m.status.snapshot();
    assert!(!st.config_ok, "{st:?}");
    assert_eq!(m.proxy.table().generation, good);
    let err = st.errors.join("\n");
    assert!(err.contains("route.yaml"), "error names the file: {err}");
    assert!(err.contains("web-split"), "error names the object: {err}");
    assert!(err.contains("timeouts"), "error names the field: {err}");
    // Still served by the last good table.
    assert_eq!(
        split(&client(), m.proxy_addr, HOST, 10).await.get("a"),
        Some(&10)
    );

    let (code, metrics) = admin(&m, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("meshroute_config_reload_errors_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("meshroute_config_ok 0"), "{metrics}");
    let (code, status) = admin(&m, "/status").await;
    assert_eq!(code, 200);
    assert!(status.contains("\"config_ok\": false"), "{status}");

    // Fixing the file publishes again.
    write(dir.path(), "route.yaml", &split_route(0, 1));
    wait_generation(&m, good + 1).await;
    assert_eq!(
        split(&client(), m.proxy_addr, HOST, 10).await.get("b"),
        Some(&10)
    );
    assert!(m.status.snapshot().config_ok);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn hundred_table_swaps_under_load_fail_no_request() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 1));
    let m = start_on(dir.path()).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), m.proxy_addr);
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let r = get(&c, addr, HOST, "/").await;
                if r.status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Swap tables directly (the watcher path is covered above): compile and publish 100
    // alternating tables while the load runs.
    let opts = meshroute::compile::CompileOptions::default();
    for i in 0..100u32 {
        let route = split_route(1 + i % 3, 1 + (i + 1) % 3);
        write(dir.path(), "route.yaml", &route);
        let loaded = meshroute::sources::file::load_dir(dir.path());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let prev = m.proxy.table();
        let compiled = meshroute::compile::compile(&loaded.index, &opts, Some(&prev));
        m.proxy.publish(compiled.table);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(ok > 100, "load ran ({ok} requests)");
    assert!(m.proxy.table().generation >= 101);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_reports_readiness_table_and_route_metrics() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(1, 0));
    let m = start_on(dir.path()).await;
    assert_eq!(admin(&m, "/live").await.0, 200);
    assert_eq!(admin(&m, "/ready").await.0, 200);
    let _ = split(&client(), m.proxy_addr, HOST, 3).await;

    let (code, table) = admin(&m, "/debug/table").await;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&table).unwrap();
    assert_eq!(json["generation"], 1);
    assert!(
        table.contains("web-split") && table.contains("web-a"),
        "{table}"
    );

    let (_, metrics) = admin(&m, "/metrics").await;
    let want = [
        "outbound_http_route_request_duration_seconds_bucket{",
        "outbound_http_route_request_statuses_total{",
        "outbound_http_route_backend_requests_total{",
        "outbound_http_route_backend_response_duration_seconds_count{",
        "route_name=\"web-split\"",
        "backend_name=\"web-a\"",
        "parent_name=\"web\"",
        "http_status=\"200\"",
        "meshroute_table_generation 1",
        "meshroute_backend_endpoints_ready{",
    ];
    for w in want {
        assert!(metrics.contains(w), "missing {w} in\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics terminator");
    m.shutdown().await.unwrap();
}

/// Send `n` requests and count those not answered by backend `want`.
async fn misses(c: &TestClient, m: &meshroute::run::Running, want: &str, n: usize) -> usize {
    let counts = split(c, m.proxy_addr, HOST, n).await;
    n - counts.get(want).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_route_file_that_becomes_a_dangling_symlink_or_a_loop_keeps_its_routes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(0, 1));
    let m = start_on(dir.path()).await;
    let c = client();
    assert_eq!(misses(&c, &m, "b", 10).await, 0);
    let route = dir.path().join("route.yaml");
    for target in ["nowhere.yaml", "route.yaml"] {
        // Dangling first, then a symlink to itself (ELOOP).
        let reloads = m.status.snapshot().reloads;
        std::fs::remove_file(&route).unwrap();
        std::os::unix::fs::symlink(dir.path().join(target), &route).unwrap();
        wait_reloads(&m, reloads).await;
        let s = m.status.snapshot();
        assert!(!s.config_ok, "{target}: {s:?}");
        assert!(
            s.errors
                .iter()
                .any(|e| e.contains("route.yaml") && e.contains("cannot read")),
            "{target}: {s:?}"
        );
        assert_eq!(
            misses(&c, &m, "b", 20).await,
            0,
            "{target}: the route was dropped"
        );
    }
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_file_rewritten_in_place_keeps_its_routes_until_it_settles() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "services.yaml", &world(&a, &b));
    write(dir.path(), "route.yaml", &split_route(0, 1));
    let m = start_on(dir.path()).await;
    let c = client();
    let generation = m.proxy.table().generation;
    // Truncated in place, as `>` in a shell or a non-atomic writer does; the rest comes late.
    let route = dir.path().join("route.yaml");
    let reloads = m.status.snapshot().reloads;
    std::fs::write(&route, "").unwrap();
    wait_reloads(&m, reloads).await;
    assert_eq!(
        m.proxy.table().generation,
        generation,
        "empty moment published"
    );
    assert_eq!(misses(&c, &m, "b", 20).await, 0);
    assert!(m
        .status
        .snapshot()
        .errors
        .iter()
        .any(|e| e.contains("just written")));
    // The writer finishes (in place, not atomically): the new content is served.
    std::fs::write(&route, split_route(1, 0)).unwrap();
    wait_generation(&m, generation + 1).await;
    assert_eq!(misses(&c, &m, "a", 20).await, 0);
    // A file that stays empty really is empty: after it settles, its route is gone, without
    // any further write (`web` passes through to its own endpoints: it has none).
    let generation = m.proxy.table().generation;
    std::fs::write(&route, "").unwrap();
    wait_generation(&m, generation + 1).await;
    let counts = split(&c, m.proxy_addr, HOST, 5).await;
    assert_eq!(counts.get("HTTP 503"), Some(&5), "{counts:?}");
    assert!(m.status.snapshot().config_ok);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_config_directory_removed_and_recreated_is_watched_again() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "services.yaml", &world(&a, &b));
    write(&dir, "route.yaml", &split_route(1, 0));
    let m = start_on(&dir).await;
    let c = client();
    assert_eq!(misses(&c, &m, "a", 10).await, 0);
    // `rm -rf dir && cp -r new dir`, as deploy scripts do.
    let staged = root.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    write(&staged, "services.yaml", &world(&a, &b));
    write(&staged, "route.yaml", &split_route(0, 1));
    let generation = m.proxy.table().generation;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    for f in ["services.yaml", "route.yaml"] {
        std::fs::copy(staged.join(f), dir.join(f)).unwrap();
    }
    wait_generation(&m, generation + 1).await;
    assert_eq!(misses(&c, &m, "b", 20).await, 0);
    // And the new directory's edits are seen too (no resync is configured).
    let generation = m.proxy.table().generation;
    write(&dir, "route.yaml", &split_route(1, 0));
    wait_generation(&m, generation + 1).await;
    assert_eq!(misses(&c, &m, "a", 20).await, 0);
    m.shutdown().await.unwrap();
}
