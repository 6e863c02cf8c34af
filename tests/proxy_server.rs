//! Listener safety: header count and size limits, clients that send headers slowly or not at
//! all, and graceful shutdown.

#[path = "support/proxy.rs"]
mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

async fn passthrough() -> (tempfile::TempDir, Backend, meshroute::run::Running) {
    passthrough_with(test_config()).await
}

async fn passthrough_with(
    cfg: meshroute::proxy::ProxyConfig,
) -> (tempfile::TempDir, Backend, meshroute::run::Running) {
    let own = Backend::start("own").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "web", &[(&own, true)]),
    );
    let m = start_with(dir.path(), cfg).await;
    (dir, own, m)
}

/// Read until the peer closes (bounded); returns what arrived and how long it took.
async fn read_all(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn too_many_headers_are_refused() {
    let (_d, own, m) = passthrough().await;
    let mut req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..150 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (out, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(own.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_header_is_refused() {
    let (_d, own, m) = passthrough().await;
    let big = "x".repeat(100 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nx-big: {big}\r\n\r\n");
    let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
    let _ = s.write_all(req.as_bytes()).await;
    let (out, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(own.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_header_client_is_disconnected_after_the_header_timeout() {
    let (_d, own, m) = passthrough().await;
    let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
    // Start a request and trickle the rest: the 500 ms test header timeout must fire even
    // though bytes keep arriving.
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    let started = Instant::now();
    trickle.await;
    let (out, _) = read_all(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(!out.contains("200 OK"), "{out}");
    assert!(took < Duration::from_secs(4), "connection held {took:?}");
    assert_eq!(own.count(), 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_client_is_disconnected() {
    let (_d, _own, m) = passthrough().await;
    let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
    let (out, took) = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(out.is_empty(), "{out}");
    assert!(
        took < Duration::from_secs(3),
        "silent connection held {took:?}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_cap_makes_extra_clients_wait_not_fail() {
    let (_d, _own, m) = passthrough_with(meshroute::proxy::ProxyConfig {
        max_connections: 1,
        ..test_config()
    })
    .await;
    // The first connection holds the only slot until it closes.
    let mut first = TcpStream::connect(m.proxy_addr).await.unwrap();
    first
        .write_all(
            format!("GET /?delay=300 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn({
        let addr = m.proxy_addr;
        async move { get(&client(), addr, HOST, "/").await }
    });
    let (out, _) = read_all(&mut first, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let r = second.await.unwrap();
    assert_eq!(
        r.status, 200,
        "the waiting client is served once a slot frees"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let (_d, _own, m) = passthrough().await;
    let addr = m.proxy_addr;
    let in_flight = tokio::spawn(async move { get(&client(), addr, HOST, "/?delay=500").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    m.shutdown().await.unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request completed");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain is bounded"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    // A header-read timeout longer than the drain, so only the shutdown signal can close an
    // idle connection in time.
    let (_d, own, m) = passthrough_with(meshroute::proxy::ProxyConfig {
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    // Two clients that finished a request and keep their connections open.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    assert_eq!(own.count(), 2);
    let started = Instant::now();
    m.shutdown().await.unwrap();
    // The drain timeout is 3 s: the idle connections must not hold the shutdown until then.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for mut s in idle {
        let (rest, took) = read_all(&mut s, Duration::from_secs(5)).await;
        assert_eq!(rest, "", "closed without another word");
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}
