//! Seeing what served a request (issue 15), both off by default: the `meshroute-served-by`
//! response header (`--debug-headers`) and the access log (`--access-log`), the latter read
//! from the real binary's stderr in JSON.

#[path = "support/proxy.rs"]
mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshroute::proxy::ProxyConfig;
use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

/// `shop/web` with a route `shop/web-split`: rule 0 sends `/only-a` to `web-a`, rule 1 splits
/// the rest between `web-a` and `web-b-east` (mirrored from cluster `east`).
fn split_manifests(a: &Backend, b: &Backend) -> String {
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(a, true)]);
    y += &service_with_endpoints_extra(
        "shop",
        "web-b-east",
        &[(b, true)],
        "mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: east",
        "",
        "",
    );
    y += &route(
        "shop",
        "web-split",
        "web",
        "  - matches: [{path: {type: PathPrefix, value: /only-a}}]\n    backendRefs: [{name: web-a, port: 80}]\n  \
         - backendRefs:\n    - {name: web-a, port: 80, weight: 1}\n    - {name: web-b-east, port: 80, weight: 1}\n",
    );
    y
}

#[tokio::test]
async fn debug_headers_name_route_rule_backend_cluster_and_endpoint() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &split_manifests(&a, &b));
    let m = start_with(
        dir.path(),
        ProxyConfig {
            debug_headers: true,
            ..test_config()
        },
    )
    .await;
    let c = client();
    let expected_a = format!(
        "route=shop/web-split rule=1 backend=shop/web-a:80 endpoint={}",
        a.addr
    );
    let expected_b = format!(
        "route=shop/web-split rule=1 backend=shop/web-b-east:80 cluster=east endpoint={}",
        b.addr
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..60 {
        let r = get(&c, m.proxy_addr, HOST, "/").await;
        assert_eq!(r.status, 200);
        let served_by = r.headers["meshroute-served-by"].to_str().unwrap();
        match r.backend() {
            Some("a") => assert_eq!(served_by, expected_a),
            Some("b") => assert_eq!(served_by, expected_b),
            other => panic!("unexpected backend {other:?}"),
        }
        seen.insert(r.backend().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both sides of the split were seen: {seen:?}");

    let r = get(&c, m.proxy_addr, HOST, "/only-a").await;
    assert_eq!(
        r.headers["meshroute-served-by"],
        format!(
            "route=shop/web-split rule=0 backend=shop/web-a:80 endpoint={}",
            a.addr
        )
    );
    // Not bound to any rule: nothing to name.
    let r = get(&c, m.proxy_addr, "nope.shop", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.headers.get("meshroute-served-by").is_none());
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn debug_headers_are_off_by_default() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &split_manifests(&a, &b));
    assert!(!ProxyConfig::default().debug_headers);
    let m = start_on(dir.path()).await;
    for path in ["/", "/only-a", "/?status=503"] {
        let r = get(&client(), m.proxy_addr, HOST, path).await;
        assert!(r.headers.get("meshroute-served-by").is_none(), "{path}");
    }
    m.shutdown().await.unwrap();
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run the binary (`--log-format json run ARGS`) on `dir`, send it the requests of `exchange`
/// once it serves, stop it and return its stderr.
async fn run_binary<F, Fut>(dir: &std::path::Path, args: &[&str], exchange: F) -> String
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshroute"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(dir)
        .args(["--listen", &listen, "--admin", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    // Ready once a request is routed (the first table is live).
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(&client(), addr, HOST, "/only-a").await.status == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "meshroute serves");
    exchange(addr).await;
    // SIGKILL: every line was written when its request finished.
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let _ = child.wait();
    stderr
}

/// The fields of the JSON lines of `stderr` at the access-log target.
fn access_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect(l))
        .filter(|v| v["target"] == "meshroute::access")
        .map(|v| v["fields"].clone())
        .collect()
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request_without_queries_or_header_values() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &split_manifests(&a, &b));
    let stderr = run_binary(dir.path(), &["--access-log"], |addr| async move {
        let c = client();
        let r = send(
            &c,
            addr,
            http::Request::post("/only-a/items?token=qs-s3cr3t")
                .header("host", HOST)
                .header("authorization", "Bearer s3cr3t-token"),
            bytes::Bytes::from_static(b"body"),
        )
        .await;
        assert_eq!(r.status, 200);
        let r = get(&c, addr, HOST, "/only-a?status=503").await;
        assert_eq!(r.status, 503);
        let r = get(&c, addr, "nope.shop", "/x").await;
        assert_eq!(r.status, 404);
    })
    .await;

    assert!(
        !stderr.contains("s3cr3t"),
        "no query or header values: {stderr}"
    );
    let lines = access_lines(&stderr);
    // Leave out the readiness probes.
    let ours: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|f| f["path"] != "/only-a" || f["status"] != 200)
        .collect();
    assert_eq!(ours.len(), 3, "one line per request: {stderr}");

    let post = ours[0];
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/only-a/items");
    assert_eq!(post["status"], 200);
    assert_eq!(post["parent"], "shop/web:80");
    assert_eq!(post["route"], "shop/web-split");
    assert_eq!(post["rule"], 0);
    assert_eq!(post["backend"], "shop/web-a:80");
    assert_eq!(post["endpoint"], a.addr.to_string());
    assert_eq!(post["error"], "-");
    assert!(post["duration_ms"].as_f64().unwrap() >= 0.0);

    assert_eq!(ours[1]["status"], 503, "an endpoint's own status");
    assert_eq!(ours[1]["error"], "-");

    let unknown = ours[2];
    assert_eq!(unknown["status"], 404);
    assert_eq!(unknown["error"], "unknown-authority");
    assert_eq!(unknown["parent"], "-");
    assert_eq!(unknown["route"], "-");
    assert_eq!(unknown["path"], "/x");
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    assert!(!ProxyConfig::default().access_log);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &split_manifests(&a, &b));
    let stderr = run_binary(dir.path(), &[], |addr| async move {
        assert_eq!(get(&client(), addr, HOST, "/").await.status, 200);
    })
    .await;
    assert!(stderr.lines().count() > 0, "other logs still come");
    assert_eq!(access_lines(&stderr), Vec::<serde_json::Value>::new());
}
