//! Client connections at the cap and idle ones (issue 16): idle connections cannot lock new
//! clients out, an idle h2 connection is closed after the idle timeout, and a connection
//! with a stream in flight is never the one closed. Real sockets on loopback; time bounds are
//! behaviour with wide margins, never performance claims.

#[path = "support/proxy.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use meshroute::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";
/// Long enough for anything that should happen; never reached when the behaviour is right.
const PATIENCE: Duration = Duration::from_secs(8);

async fn passthrough_with(
    cfg: ProxyConfig,
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

/// An idle h2 client written frame by frame, so what the server sends is seen as it is: it
/// acknowledges SETTINGS and answers PINGs (a live peer) and never opens a stream.
struct RawH2 {
    goaway: Arc<AtomicBool>,
    /// Ends when the server closes the connection.
    reader: JoinHandle<()>,
}

impl RawH2 {
    async fn connect(addr: std::net::SocketAddr) -> RawH2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&frame_head(0, 4, 0)).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let goaway = Arc::new(AtomicBool::new(false));
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let seen = goaway.clone();
        let reader = tokio::spawn(async move {
            let mut ready = Some(ready);
            loop {
                let mut head = [0u8; 9];
                if rd.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let answer = match (kind, flags & 1) {
                    // SETTINGS: acknowledge.
                    (4, 0) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        frame_head(0, 4, 1).to_vec()
                    }
                    // PING: answer with the same payload.
                    (6, 0) => {
                        let mut f = frame_head(8, 6, 1).to_vec();
                        f.extend_from_slice(&payload);
                        f
                    }
                    (7, _) => {
                        seen.store(true, Ordering::SeqCst);
                        continue;
                    }
                    _ => continue,
                };
                if wr.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
        tokio::time::timeout(PATIENCE, is_ready)
            .await
            .expect("the server's SETTINGS")
            .unwrap();
        RawH2 { goaway, reader }
    }

    fn open(&self) -> bool {
        !self.reader.is_finished()
    }

    /// Wait (bounded) until the server closes the connection; whether it sent GOAWAY first.
    async fn closed(self) -> Option<bool> {
        tokio::time::timeout(PATIENCE, self.reader)
            .await
            .ok()?
            .ok()?;
        Some(self.goaway.load(Ordering::SeqCst))
    }
}

/// A frame header on stream 0.
fn frame_head(len: u32, kind: u8, flags: u8) -> [u8; 9] {
    let l = len.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, 0, 0, 0, 0]
}

type H2Send = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An h2 client connection (hyper) and the task driving it, which ends when it closes.
async fn h2_client(addr: std::net::SocketAddr) -> (H2Send, JoinHandle<()>) {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (send, driver) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(async move {
        let _ = driver.await;
    });
    (send, driver)
}

fn h2_get(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://web.shop{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One GET on a new h2 connection, bounded: the status and the connection.
async fn served_on_new_h2_connection(addr: std::net::SocketAddr) -> Option<(u16, H2Send)> {
    tokio::time::timeout(PATIENCE, async {
        let (mut send, _driver) = h2_client(addr).await;
        let rsp = send.send_request(h2_get("/")).await.ok()?;
        Some((rsp.status().as_u16(), send))
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test]
async fn idle_h2_connections_at_the_cap_make_room_for_a_new_client() {
    let (_d, _own, m) = passthrough_with(ProxyConfig {
        max_connections: 3,
        ..test_config()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(RawH2::connect(m.proxy_addr).await);
        // Distinct idle-since stamps.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let served = served_on_new_h2_connection(m.proxy_addr).await;
    assert_eq!(
        served.map(|(status, _)| status),
        Some(200),
        "a new client at the cap is served"
    );
    let mut idle = idle.into_iter();
    let oldest = idle.next().unwrap();
    assert_eq!(
        oldest.closed().await,
        Some(true),
        "the oldest idle connection got GOAWAY and closed"
    );
    for (i, c) in idle.enumerate() {
        assert!(c.open(), "younger idle connection {i} stays open");
        assert!(!c.goaway.load(Ordering::SeqCst));
    }
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_at_the_cap_make_room_for_a_new_client() {
    let (_d, own, m) = passthrough_with(ProxyConfig {
        max_connections: 2,
        // Only making room can close them in time.
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let served = served_on_new_h2_connection(m.proxy_addr).await;
    assert_eq!(served.map(|(status, _)| status), Some(200));
    assert_eq!(own.count(), 3);
    let mut oldest = idle.remove(0);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, oldest.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the oldest keep-alive connection was closed without a word: {closed:?}"
    );
    // The younger one still serves requests.
    let mut younger = idle.remove(0);
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    younger.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = younger.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_with_a_stream_in_flight_is_never_shed() {
    let (_d, _own, m) = passthrough_with(ProxyConfig {
        max_connections: 2,
        ..test_config()
    })
    .await;
    // The oldest connection is busy with a response that streams for a second.
    let (mut busy, busy_driver) = h2_client(m.proxy_addr).await;
    let rsp = busy.send_request(h2_get("/?stream=10")).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let streaming = tokio::spawn(rsp.into_body().collect());
    tokio::time::sleep(Duration::from_millis(30)).await;
    let idle = RawH2::connect(m.proxy_addr).await;

    let served = served_on_new_h2_connection(m.proxy_addr).await;
    assert_eq!(served.map(|(status, _)| status), Some(200));
    assert_eq!(idle.closed().await, Some(true), "the idle one made room");

    let body = tokio::time::timeout(PATIENCE, streaming)
        .await
        .expect("the stream finishes")
        .unwrap()
        .expect("the stream is whole")
        .to_bytes();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 10);
    // Not asked to go away: it still takes new streams.
    assert!(!busy_driver.is_finished());
    let again = tokio::time::timeout(PATIENCE, busy.send_request(h2_get("/")))
        .await
        .expect("answered")
        .expect("the busy connection still takes streams");
    assert_eq!(again.status(), 200);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_h2_connection_idle_past_the_idle_timeout_gets_goaway_and_closes() {
    let (_d, _own, m) = passthrough_with(ProxyConfig {
        h2_idle_timeout: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    // Answering PINGs does not keep an idle connection open.
    let never_used = RawH2::connect(m.proxy_addr).await;

    // Nor does having been used; a stream longer than the timeout is never cut.
    let (mut used, used_driver) = h2_client(m.proxy_addr).await;
    let rsp = used.send_request(h2_get("/?stream=8")).await.unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 8);

    assert_eq!(never_used.closed().await, Some(true));
    assert!(
        tokio::time::timeout(PATIENCE, used_driver).await.is_ok(),
        "the used connection is closed once idle"
    );
    m.shutdown().await.unwrap();
}
