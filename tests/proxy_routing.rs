//! Routing through the real proxy: weighted splits, weight 0, passthrough, no open proxy, and
//! every error status with its `meshroute-error` reason.

#[path = "support/proxy.rs"]
mod support;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

fn two_backend_route(wa: u32, wb: u32) -> String {
    route(
        "shop",
        "web-split",
        "web",
        &format!(
            "  - backendRefs:\n    - {{name: web-a, port: 80, weight: {wa}}}\n    - {{name: web-b, port: 80, weight: {wb}}}\n"
        ),
    )
}

#[tokio::test]
async fn weighted_split_follows_weights_within_tolerance() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &service_with_endpoints("shop", "web-b", &[(&b, true)]);
    y += &two_backend_route(90, 10);
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    let counts = split(&c, m.proxy_addr, HOST, 1000).await;
    let na = counts.get("a").copied().unwrap_or(0);
    let nb = counts.get("b").copied().unwrap_or(0);
    assert_eq!(na + nb, 1000, "every request served: {counts:?}");
    // Binomial sd is ~9.5 for 1000 draws at 90/10; 6 sd keeps this from ever flaking.
    assert!((840..=960).contains(&na), "a got {na} of 1000: {counts:?}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn backend_with_weight_zero_is_never_served() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &service_with_endpoints("shop", "web-b", &[(&b, true)]);
    y += &two_backend_route(1, 0);
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let counts = split(&client(), m.proxy_addr, HOST, 300).await;
    assert_eq!(counts.get("a"), Some(&300), "{counts:?}");
    assert_eq!(b.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn parent_without_routes_passes_through_to_its_own_endpoints() {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_on(dir.path()).await;
    let a = get(&client(), m.proxy_addr, "web.shop:80", "/x?y=1").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.backend(), Some("own"));
    let seen = own.last().unwrap();
    assert_eq!(seen.path_and_query, "/x?y=1");
    assert_eq!(
        seen.headers["host"], "web.shop:80",
        "the client's authority is kept"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_authority_is_404_and_never_reaches_a_backend() {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_on(dir.path()).await;
    let c = client();
    // A foreign host, the backend's own address, and a known name on an unknown port.
    let backend_addr = own.addr.to_string();
    for host in [
        "example.com",
        backend_addr.as_str(),
        "web.shop:8080",
        "web.other",
    ] {
        let a = get(&c, m.proxy_addr, host, "/").await;
        assert_eq!(a.status, 404, "{host}");
        assert_eq!(a.error(), Some("unknown-authority"), "{host}");
    }
    // Absolute-form URI naming a foreign host: still no connection anywhere.
    let a = raw(
        m.proxy_addr,
        &format!("GET http://{backend_addr}/ HTTP/1.1\r\nHost: {backend_addr}\r\n\r\n"),
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    assert_eq!(own.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn absolute_form_uri_naming_a_service_is_routed() {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_on(dir.path()).await;
    let a = raw(
        m.proxy_addr,
        "GET http://web.shop.svc/p HTTP/1.1\r\nHost: web.shop.svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(own.last().unwrap().path_and_query, "/p");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_or_duplicate_host_is_400() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "svc.yaml", &service("shop", "web"));
    let m = start_on(dir.path()).await;
    let a = raw(m.proxy_addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    assert!(a.contains("meshroute-error: missing-host"), "{a}");
    let a = raw(
        m.proxy_addr,
        "GET / HTTP/1.1\r\nHost: web.shop\r\nHost: web.shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(a.starts_with("HTTP/1.1 400"), "{a}");
    assert!(a.contains("meshroute-error: duplicate-host"), "{a}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_matching_rule_is_404_no_route() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &route("shop", "only-api", "web", "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: web-a, port: 80}]\n");
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    assert_eq!(get(&c, m.proxy_addr, HOST, "/api/x").await.status, 200);
    let r = get(&c, m.proxy_addr, HOST, "/other").await;
    assert_eq!((r.status.as_u16(), r.error()), (404, Some("no-route")));
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_backend_fails_only_its_share_with_500() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &route("shop", "half-broken", "web", "  - backendRefs:\n    - {name: web-a, port: 80, weight: 1}\n    - {name: missing, port: 80, weight: 1}\n");
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let counts = split(&client(), m.proxy_addr, HOST, 200).await;
    let ok = counts.get("a").copied().unwrap_or(0);
    let failed = counts.get("HTTP 500").copied().unwrap_or(0);
    assert_eq!(ok + failed, 200, "{counts:?}");
    assert!((50..=150).contains(&ok), "{counts:?}");
    let r = loop {
        let r = get(&client(), m.proxy_addr, HOST, "/").await;
        if r.status == 500 {
            break r;
        }
    };
    assert_eq!(r.error(), Some("invalid-backend"));
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn all_zero_weights_is_500() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &route(
        "shop",
        "zero",
        "web",
        "  - backendRefs: [{name: web-a, port: 80, weight: 0}]\n",
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!((r.status.as_u16(), r.error()), (500, Some("no-backends")));
    assert_eq!(a.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn refused_connection_is_502() {
    let dead = Backend::dead("dead").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&dead, true)]),
    );
    let m = start_on(dir.path()).await;
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (502, Some("connect-failed"))
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn backend_without_ready_endpoints_is_503_at_once() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, false)]);
    y += &route(
        "shop",
        "r",
        "web",
        "  - backendRefs: [{name: web-a, port: 80}]\n",
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let started = std::time::Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (503, Some("no-ready-endpoint"))
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "503 must not queue"
    );
    assert_eq!(a.count(), 0, "not-ready endpoints take no traffic");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn h2c_client_is_served_on_the_same_port() {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_on(dir.path()).await;
    // Prior-knowledge h2c; the parent travels in :authority, taken from the URI.
    let req = http::Request::get("http://web.shop.svc.cluster.local/h2")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let conn = tokio::net::TcpStream::connect(m.proxy_addr).await.unwrap();
    let (mut send, driver) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn),
    )
    .await
    .unwrap();
    tokio::spawn(driver);
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-backend"], "own");
    assert_eq!(own.last().unwrap().path_and_query, "/h2");
    m.shutdown().await.unwrap();
}

/// Send raw bytes and read the whole answer (the request should ask to close).
async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
