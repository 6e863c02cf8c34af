//! Every Gateway API filter through the real proxy, at rule and backendRef level, plus the
//! upstream authority of gateway-mode multicluster mirrors and h2c backends.

#[path = "support/proxy.rs"]
mod support;

use std::time::Duration;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

async fn with_rules(
    backends: &[&Backend],
    rules: &str,
) -> (tempfile::TempDir, meshroute::run::Running) {
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    for b in backends {
        y += &service_with_endpoints("shop", &format!("web-{}", b.name), &[(b, true)]);
    }
    y += &route("shop", "filtered", "web", rules);
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    (dir, m)
}

#[tokio::test]
async fn request_header_modifier_sets_adds_and_removes() {
    let a = Backend::start("a").await;
    let (_d, m) = with_rules(&[&a], "  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x-set, value: new}]\n        add: [{name: x-add, value: added}]\n        remove: [x-drop]\n    backendRefs: [{name: web-a, port: 80}]\n").await;
    let req = http::Request::get("/")
        .header("host", HOST)
        .header("x-set", "old")
        .header("x-add", "mine")
        .header("x-drop", "secret");
    let r = send(&client(), m.proxy_addr, req, bytes::Bytes::new()).await;
    assert_eq!(r.status, 200);
    let h = a.last().unwrap().headers;
    assert_eq!(h.get_all("x-set").iter().collect::<Vec<_>>(), ["new"]);
    assert_eq!(
        h.get_all("x-add").iter().collect::<Vec<_>>(),
        ["mine", "added"]
    );
    assert!(h.get("x-drop").is_none());
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn response_header_modifier_edits_the_answer() {
    let a = Backend::start("a").await;
    let (_d, m) = with_rules(&[&a], "  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier:\n        set: [{name: x-backend, value: hidden}]\n        add: [{name: x-served-by, value: meshroute}]\n    backendRefs: [{name: web-a, port: 80}]\n").await;
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(r.headers["x-backend"], "hidden");
    assert_eq!(r.headers["x-served-by"], "meshroute");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_redirect_answers_without_a_backend() {
    let a = Backend::start("a").await;
    let (_d, m) = with_rules(&[&a], "  - matches: [{path: {type: PathPrefix, value: /old}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: https, hostname: example.com, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}\n  - backendRefs: [{name: web-a, port: 80}]\n").await;
    let r = get(&client(), m.proxy_addr, HOST, "/old/page?q=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://example.com/new/page?q=1");
    assert_eq!(a.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn url_rewrite_changes_host_and_path_prefix() {
    let a = Backend::start("a").await;
    let (_d, m) = with_rules(&[&a], "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {hostname: internal.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}\n    backendRefs: [{name: web-a, port: 80}]\n").await;
    let r = get(&client(), m.proxy_addr, HOST, "/api/users?id=7").await;
    assert_eq!(r.status, 200);
    let seen = a.last().unwrap();
    assert_eq!(seen.path_and_query, "/v2/users?id=7");
    assert_eq!(seen.headers["host"], "internal.example");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_mirror_sends_a_copy_and_ignores_its_answer() {
    let (a, mirror) = (Backend::start("a").await, Backend::start("m").await);
    let (_d, m) = with_rules(&[&a, &mirror], "  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: web-m, port: 80}}\n    backendRefs: [{name: web-a, port: 80}]\n").await;
    let req = http::Request::post("/submit?x=1").header("host", HOST);
    let r = send(
        &client(),
        m.proxy_addr,
        req,
        bytes::Bytes::from_static(b"payload"),
    )
    .await;
    assert_eq!(r.backend(), Some("a"), "the primary answers");
    for _ in 0..200 {
        if mirror.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copy = mirror.last().expect("mirror got a copy");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.path_and_query, "/submit?x=1");
    assert_eq!(&copy.body[..], b"payload");
    assert_eq!(
        a.last().unwrap().body,
        bytes::Bytes::from_static(b"payload")
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn backend_level_filters_apply_only_to_their_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (_d, m) = with_rules(&[&a, &b], "  - backendRefs:\n    - name: web-a\n      port: 80\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {set: [{name: x-via, value: a-filter}]}\n      - type: ResponseHeaderModifier\n        responseHeaderModifier: {add: [{name: x-backend-filter, value: a}]}\n    - {name: web-b, port: 80}\n").await;
    let c = client();
    let mut saw = (false, false);
    for _ in 0..100 {
        let r = get(&c, m.proxy_addr, HOST, "/").await;
        match r.backend() {
            Some("a") => {
                saw.0 = true;
                assert_eq!(r.headers["x-backend-filter"], "a");
                assert_eq!(a.last().unwrap().headers["x-via"], "a-filter");
            }
            Some("b") => {
                saw.1 = true;
                assert!(r.headers.get("x-backend-filter").is_none());
                assert!(b.last().unwrap().headers.get("x-via").is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw.0 && saw.1, "both backends served: {saw:?}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn gateway_mode_mirror_receives_the_remote_service_authority() {
    let east = Backend::start("east").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints_extra(
        "shop",
        "web-east",
        &[(&east, true)],
        "mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: east",
        "",
        "mirror.linkerd.io/remote-svc-fq-name: web.shop.svc.cluster.local",
    );
    y += &route(
        "shop",
        "to-east",
        "web",
        "  - backendRefs: [{name: web-east, port: 80}]\n",
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let r = get(&client(), m.proxy_addr, "web.shop", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        east.last().unwrap().headers["host"],
        "web.shop.svc.cluster.local:80"
    );
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(metrics.contains("backend_cluster=\"east\""), "{metrics}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn h2c_backend_is_spoken_to_over_http2_with_the_request_authority() {
    let b = Backend::start_h2c("grpcish").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints_extra(
        "shop",
        "web-grpcish",
        &[(&b, true)],
        "",
        ", appProtocol: kubernetes.io/h2c",
        "",
    );
    y += &route(
        "shop",
        "h2",
        "web",
        "  - backendRefs: [{name: web-grpcish, port: 80}]\n",
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    for _ in 0..3 {
        let r = get(&c, m.proxy_addr, HOST, "/x").await;
        assert_eq!(r.status, 200);
    }
    let seen = b.last().unwrap();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.path_and_query, "/x");
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_proxy_and_actual_responses_carry_the_policy() {
    let a = Backend::start("a").await;
    let (_d, m) = with_rules(&[&a], "  - filters:\n    - type: CORS\n      cors:\n        allowOrigins: [\"https://app.example.com\", \"https://*.shop.test\"]\n        allowMethods: [GET, PUT]\n        allowHeaders: [x-token]\n        exposeHeaders: [x-trace]\n        allowCredentials: true\n        maxAge: 600\n    backendRefs: [{name: web-a, port: 80}]\n").await;
    let c = client();
    // Preflight from an allowed origin: 204 from the proxy; the backend never sees it.
    let pre = http::Request::builder()
        .method("OPTIONS")
        .uri("/api")
        .header("host", HOST)
        .header("origin", "https://eu.shop.test")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-token");
    let r = send(&c, m.proxy_addr, pre, bytes::Bytes::new()).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://eu.shop.test"
    );
    assert_eq!(r.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(r.headers["access-control-allow-headers"], "x-token");
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(r.headers["access-control-max-age"], "600");
    assert_eq!(a.count(), 0, "a preflight is not forwarded");
    // A preflight from another origin: 204 without CORS headers (the browser stops there).
    let pre = http::Request::builder()
        .method("OPTIONS")
        .uri("/api")
        .header("host", HOST)
        .header("origin", "https://evil.test")
        .header("access-control-request-method", "PUT");
    let r = send(&c, m.proxy_addr, pre, bytes::Bytes::new()).await;
    assert_eq!(r.status, 204);
    assert!(r.headers.get("access-control-allow-origin").is_none());
    // The actual request goes to the backend; its response carries the policy.
    let get = http::Request::get("/api")
        .header("host", HOST)
        .header("origin", "https://app.example.com");
    let r = send(&c, m.proxy_addr, get, bytes::Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), Some("a"));
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(r.headers["access-control-expose-headers"], "x-trace");
    assert_eq!(r.headers["vary"], "Origin");
    // An OPTIONS that is not a preflight is forwarded like any request.
    let opts = http::Request::builder()
        .method("OPTIONS")
        .uri("/api")
        .header("host", HOST);
    let r = send(&c, m.proxy_addr, opts, bytes::Bytes::new()).await;
    assert_eq!(r.backend(), Some("a"));
    m.shutdown().await.unwrap();
}
