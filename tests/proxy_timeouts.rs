//! GEP-1742 timeouts end to end: 504 near the deadline, the upstream exchange cancelled,
//! `0s` disabling, and a response body cut off (not truncated) when the deadline passes
//! while it streams. Bounds are generous: the box running these is small and shared.

#[path = "support/proxy.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

async fn setup(timeouts: &str) -> (tempfile::TempDir, Backend, meshroute::run::Running) {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &route(
        "shop",
        "timed",
        "web",
        &format!("  - backendRefs: [{{name: web-a, port: 80}}]\n    timeouts: {timeouts}\n"),
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    (dir, a, m)
}

#[tokio::test]
async fn request_timeout_answers_504_at_its_deadline_and_cancels_upstream() {
    let (_dir, a, m) = setup("{request: 300ms}").await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/?delay=3000").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (504, Some("request-timeout"))
    );
    assert!(
        took >= Duration::from_millis(295),
        "answered early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered late: {took:?}"
    );
    // The backend sees the exchange abandoned long before its 3 s delay ends.
    for _ in 0..100 {
        if a.cancelled.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        a.cancelled.load(Ordering::SeqCst),
        1,
        "upstream request cancelled"
    );
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(metrics.contains("error=\"request-timeout\""), "{metrics}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn backend_request_timeout_bounds_one_attempt() {
    let (_dir, _a, m) = setup("{request: 5s, backendRequest: 200ms}").await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/?delay=3000").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (504, Some("backend-request-timeout"))
    );
    assert!(
        took >= Duration::from_millis(195) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn fast_answers_are_not_affected_by_timeouts() {
    let (_dir, _a, m) = setup("{request: 2s, backendRequest: 1s}").await;
    let r = get(&client(), m.proxy_addr, HOST, "/?delay=20").await;
    assert_eq!(r.status, 200);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn zero_seconds_disables_the_timeout() {
    let (_dir, _a, m) = setup("{request: 0s}").await;
    let r = get(&client(), m.proxy_addr, HOST, "/?delay=400").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), Some("a"));
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn deadline_while_body_streams_aborts_the_stream() {
    let (_dir, a, m) = setup("{request: 350ms}").await;
    let c = client();
    let req = http::Request::get(format!("http://{}/?stream=20", m.proxy_addr))
        .header("host", HOST)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let rsp = c.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200, "the head arrived before the deadline");
    let body = rsp.into_body().collect().await;
    assert!(body.is_err(), "a cut stream must not look complete");
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..100 {
        if a.cancelled.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        a.cancelled.load(Ordering::SeqCst),
        1,
        "upstream stream abandoned"
    );
    m.shutdown().await.unwrap();
}
