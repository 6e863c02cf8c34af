//! The upstream side of HTTP/1.1 against scripted endpoints that answer with exact bytes:
//! every response framing, interim responses, broken and ambiguous responses, and pooled
//! connections the endpoint closes.

#[path = "support/proxy.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const HOST: &str = "raw.shop.svc.cluster.local";

/// What a scripted endpoint does with one request: bytes to answer (none: say nothing) and
/// whether to close the connection afterwards.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
    delay: Duration,
}

fn reply(bytes: &str) -> Reply {
    Reply {
        bytes: bytes.as_bytes().to_vec(),
        close: false,
        delay: Duration::ZERO,
    }
}

fn reply_and_close(bytes: &str) -> Reply {
    Reply {
        close: true,
        ..reply(bytes)
    }
}

/// The script: (connection number, request number on that connection, request head) → reply.
type Script = dyn Fn(usize, usize, &str) -> Reply + Send + Sync;

/// An endpoint that reads request heads and answers them from a script.
struct Scripted {
    backend: Backend,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    /// Connections the proxy closed (EOF seen while waiting for a request).
    closed_by_proxy: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(usize, usize, &str) -> Reply + Send + Sync + 'static) -> Self {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (h, c, closed) = (heads.clone(), connections.clone(), closed_by_proxy.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (script, h, closed) = (script.clone(), h.clone(), closed.clone());
                tokio::spawn(async move {
                    if serve_scripted(stream, n, script, h).await {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let backend = Backend {
            name: "raw".into(),
            addr,
            seen: Arc::default(),
            connections: Arc::default(),
            cancelled: Arc::default(),
        };
        Scripted {
            backend,
            heads,
            connections,
            closed_by_proxy,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serve one connection; true when it ended because the proxy closed it.
async fn serve_scripted(
    mut s: TcpStream,
    conn: usize,
    script: Arc<Script>,
    heads: Arc<Mutex<Vec<String>>>,
) -> bool {
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        // A sized request body is read too, so the next head is found where it starts.
        let body_len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        heads.lock().unwrap().push(head.clone());
        let r = script(conn, nth, &head);
        nth += 1;
        tokio::time::sleep(r.delay).await;
        if s.write_all(&r.bytes).await.is_err() {
            return false;
        }
        if r.close {
            let _ = s.shutdown().await;
            return false;
        }
    }
}

async fn proxy_to(endpoint: &Scripted) -> (tempfile::TempDir, meshroute::run::Running) {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "raw", &[(&endpoint.backend, true)]),
    );
    let m = start_on(dir.path()).await;
    (dir, m)
}

/// Write `request` raw to the proxy and read everything it sends until it closes (bounded).
async fn raw_exchange(m: &meshroute::run::Running, request: &str) -> String {
    let mut s = TcpStream::connect(m.proxy_addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes the client connection in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Send `method path` through the proxy; the body is collected (its error kept as text).
async fn call(
    m: &meshroute::run::Running,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    call_with(&client(), m, method, path).await
}

async fn call_with(
    client: &TestClient,
    m: &meshroute::run::Running,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    call_with_body(client, m, method, path, "").await
}

async fn call_with_body(
    client: &TestClient,
    m: &meshroute::run::Running,
    method: &str,
    path: &str,
    body: &'static str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", m.proxy_addr))
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("proxy answers in time")
        .expect("proxy answers");
    let (parts, body) = rsp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("body ends in time")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn chunked_response_with_extensions_and_trailers_arrives_whole_and_reuses_the_connection() {
    let ep = Scripted::start(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
        )
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    for (method, sent) in PATHS {
        for _ in 0..3 {
            let (status, headers, body) = call_with_body(&c, &m, method, "/c?x=1", sent).await;
            assert_eq!(status, 200, "{method}");
            assert_eq!(headers["x-a"], "1", "{method}");
            assert_eq!(body.unwrap(), "hello world", "{method}");
        }
    }
    // One connection for the inline client's exchanges and one for hyper's.
    assert_eq!(
        ep.connections(),
        2,
        "one connection carries every exchange of a path"
    );
    let head = ep.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /c?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {HOST}\r\n")), "{head}");
}

#[tokio::test]
async fn close_delimited_response_is_read_to_the_end_and_its_connection_not_reused() {
    let ep =
        Scripted::start(|_, _, _| reply_and_close("HTTP/1.1 200 OK\r\n\r\nuntil the end")).await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    for (method, sent) in PATHS {
        for _ in 0..2 {
            let (status, _, body) = call_with_body(&c, &m, method, "/", sent).await;
            assert_eq!(status, 200, "{method}");
            assert_eq!(body.unwrap(), "until the end", "{method}");
        }
    }
    assert_eq!(ep.connections(), 4);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let ep = Scripted::start(|_, _, _| {
        reply(
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    for (method, sent) in PATHS {
        let (status, headers, body) = call_with_body(&client(), &m, method, "/", sent).await;
        assert_eq!(status, 200, "{method}");
        assert!(headers.get("link").is_none(), "{method}");
        assert_eq!(body.unwrap(), "ok", "{method}");
    }
}

#[tokio::test]
async fn head_response_has_no_body_and_keeps_the_connection() {
    let ep = Scripted::start(|_, _, head| {
        if head.starts_with("HEAD ") {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        } else {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nget")
        }
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let (status, headers, body) = call(&m, "HEAD", "/").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], "100");
    assert_eq!(body.unwrap(), "");
    let (_, _, body) = call(&m, "GET", "/").await;
    assert_eq!(body.unwrap(), "get");
    assert_eq!(ep.connections(), 1);
}

#[tokio::test]
async fn broken_or_ambiguous_responses_are_502_upstream_protocol_error() {
    let many_fields: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
    let cases: [String; 8] = [
        "HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n".to_string(),
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_string(),
        "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n".to_string(),
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_string(),
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_string(),
        "NOT HTTP AT ALL\r\n\r\n".to_string(),
        format!("HTTP/1.1 200 OK\r\n{many_fields}content-length: 0\r\n\r\n"),
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
            "a".repeat(70 * 1024)
        ),
    ];
    for case in cases {
        assert_refused_on_both_paths(case.leak()).await;
    }
}

#[tokio::test]
async fn endpoint_closing_without_an_answer_is_502() {
    let ep = Scripted::start(|_, _, _| reply_and_close("")).await;
    let (_dir, m) = proxy_to(&ep).await;
    let (status, headers, _) = call(&m, "GET", "/").await;
    assert_eq!(status, 502);
    assert_eq!(headers["meshroute-error"], "upstream-protocol-error");
}

#[tokio::test]
async fn body_cut_short_is_never_passed_off_as_complete() {
    let ep = Scripted::start(|_, _, head| {
        if head.contains("/chunked") {
            reply_and_close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        } else {
            reply_and_close("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        }
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    for path in ["/sized", "/chunked"] {
        // A raw client, to see exactly what the proxy sends before it closes.
        let text = raw_exchange(&m, &format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n")).await;
        // Either nothing was sent yet, or a head whose body stops short of its framing.
        if let Some(at) = text.find("\r\n\r\n") {
            let (head, body) = (&text[..at], &text[at + 4..]);
            let complete = if path == "/sized" {
                !head.contains("content-length: 10") || body.len() >= 10
            } else {
                !head.contains("transfer-encoding: chunked") || body.ends_with("0\r\n\r\n")
            };
            assert!(!complete, "{path}: {text:?}");
        }
    }
}

#[tokio::test]
async fn pooled_connection_the_endpoint_closed_is_replaced_for_the_next_request() {
    // Every response says keep-alive, but the endpoint closes right after it anyway. POST is
    // never sent twice, so only noticing the close before sending can make these succeed.
    let ep = Scripted::start(|_, _, _| {
        reply_and_close("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    for i in 0..5 {
        let (status, _, body) = call(&m, "POST", "/").await;
        assert_eq!(status, 200, "request {i}");
        assert_eq!(body.unwrap(), "ok");
        // Let the close reach the proxy's socket before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ep.connections(), 5);
}

#[tokio::test]
async fn connection_closed_under_a_request_is_retried_only_when_that_is_safe() {
    // The first request on each connection is answered; the second is read and then the
    // connection is closed without a word (an endpoint's idle timeout racing the request).
    let ep = Scripted::start(|_, nth, _| {
        if nth == 0 {
            Reply {
                delay: Duration::from_millis(200),
                ..reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            }
        } else {
            reply_and_close("")
        }
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    // Three pooled connections: three slow first answers at once.
    let c = client();
    let warm = futures::future::join_all((0..3).map(|_| call_with(&c, &m, "GET", "/warm"))).await;
    assert!(warm.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(ep.connections(), 3);
    // GET is idempotent: sent once more, on a new connection, not on the other pooled ones.
    let (status, _, body) = call(&m, "GET", "/again").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), "ok");
    assert_eq!(ep.connections(), 4);
    let agains = ep
        .heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("GET /again"))
        .count();
    assert_eq!(agains, 2, "one failed attempt and one retry, no more");
    // POST is not: the endpoint may have acted on it, so the client hears of the failure.
    let (status, headers, _) = call(&m, "POST", "/once").await;
    assert_eq!(status, 502);
    assert_eq!(headers["meshroute-error"], "upstream-protocol-error");
    let posts = ep
        .heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("POST /once"))
        .count();
    assert_eq!(posts, 1, "a POST is never sent twice");
}

#[tokio::test]
async fn connections_are_reused_only_after_a_clean_keep_alive_response() {
    // Each case answers every request the same way; none of them may be reused.
    let cases = [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK",
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 204 No Content\r\n\r\nJUNK",
    ];
    for case in cases {
        let ep = Scripted::start(move |_, _, _| reply(case)).await;
        let (_dir, m) = proxy_to(&ep).await;
        let c = client();
        for (method, sent) in PATHS {
            for i in 0..2 {
                let (status, _, body) = call_with_body(&c, &m, method, "/", sent).await;
                assert!(
                    status == 200 || status == 204,
                    "{method} {case:?} #{i}: {status}"
                );
                let body = body.unwrap();
                assert!(
                    body.is_empty() || body == "ok",
                    "{method} {case:?} #{i}: {body:?}"
                );
            }
        }
        assert_eq!(ep.connections(), 4, "{case:?}");
    }
}

#[tokio::test]
async fn declared_trailers_reach_a_client_that_asks_for_them_without_forbidden_fields() {
    // hyper's server sends the trailers the response head declares (`Trailer`) to a client
    // that said `TE: trailers`; the proxy drops framing and hop-by-hop fields from them on
    // both upstream paths (GET: inline client, POST with a body: hyper's client).
    let ep = Scripted::start(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
             trailer: x-sum, content-length, keep-alive\r\n\r\n\
             5\r\nhello\r\n0\r\nx-sum: 5\r\ncontent-length: 99\r\nkeep-alive: 1\r\n\r\n",
        )
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    for (method, body) in [("GET", ""), ("POST", "abc")] {
        let req = format!(
            "{method} / HTTP/1.1\r\nhost: {HOST}\r\nte: trailers\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let text = raw_exchange(&m, &req).await.to_ascii_lowercase();
        let at = text
            .find("5\r\nhello\r\n0\r\n")
            .unwrap_or_else(|| panic!("{method}: {text:?}"));
        let trailers = &text[at..];
        assert!(trailers.contains("x-sum: 5\r\n"), "{method}: {text:?}");
        assert!(!trailers.contains("content-length"), "{method}: {text:?}");
        assert!(!trailers.contains("keep-alive"), "{method}: {text:?}");
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_limit() {
    let ep = Scripted::start(|_, _, _| Reply {
        delay: Duration::from_millis(200),
        ..reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    let answers = futures::future::join_all((0..3).map(|_| call_with(&c, &m, "GET", "/"))).await;
    assert!(answers.iter().all(|(s, _, _)| *s == 200));
    assert_eq!(ep.connections(), 3);
    assert_eq!(ep.closed_by_proxy.load(Ordering::SeqCst), 0);
    let limit = Duration::from_secs(u64::from(meshroute::proxy::pool::IDLE_SECS) + 3);
    let started = std::time::Instant::now();
    while ep.closed_by_proxy.load(Ordering::SeqCst) < 3 {
        assert!(
            started.elapsed() < limit,
            "idle connections still open after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The two upstream paths a request can take: a bodiless GET goes through meshroute's own
/// HTTP/1.1 client, a POST with a body through hyper's. Framing tests run through both, so the
/// two can never disagree about what an endpoint's bytes mean.
const PATHS: [(&str, &str); 2] = [("GET", ""), ("POST", "hello")];

/// Answer both paths with `answer` (connection left open by the endpoint) and check that each
/// is refused with 502 `upstream-protocol-error` and that the proxy closes the endpoint's
/// connection instead of reusing it.
async fn assert_refused_on_both_paths(answer: &'static str) {
    let ep = Scripted::start(move |_, _, _| reply(answer)).await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    let shown = &answer[..answer.len().min(70)];
    for (i, (method, body)) in PATHS.into_iter().enumerate() {
        let (status, headers, _) = call_with_body(&c, &m, method, "/", body).await;
        assert_eq!(status, 502, "{method} {shown:?}");
        assert_eq!(
            headers.get("meshroute-error").map(|v| v.to_str().unwrap()),
            Some("upstream-protocol-error"),
            "{method} {shown:?}"
        );
        let started = std::time::Instant::now();
        while ep.closed_by_proxy.load(Ordering::SeqCst) < i + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{method} {shown:?}: the endpoint's connection was left open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ep.connections(), i + 1, "{method} {shown:?}");
    }
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_alone_are_refused_on_both_paths() {
    // RFC 9112 §6.1, §6.3: Transfer-Encoding with Content-Length is a smuggling attempt, and a
    // final coding other than chunked leaves the length to the connection close; a coding
    // before chunked (gzip, chunked) would reach the client still encoded but unlabelled,
    // since Transfer-Encoding is hop-by-hop.
    for answer in [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 5\r\n\r\nhello\
         HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: identity\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        assert_refused_on_both_paths(answer).await;
    }
}

#[tokio::test]
async fn unrequested_switching_protocols_and_out_of_range_statuses_are_refused_on_both_paths() {
    for answer in [
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        "HTTP/1.1 600 X\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 999 X\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 099 X\r\ncontent-length: 0\r\n\r\n",
    ] {
        assert_refused_on_both_paths(answer).await;
    }
}

#[tokio::test]
async fn bytes_past_a_refused_response_never_reach_the_client_as_a_response() {
    // The smuggling attempt end to end: one client connection, a POST whose answer declares
    // both framings, then a second request. Nothing of "evil" may reach the client.
    let ep = Scripted::start(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-smuggled: 1\r\n\r\nevil",
        )
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let text = raw_exchange(
        &m,
        &format!(
            "POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 1\r\n\r\nx\
             GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(!text.contains("evil"), "{text:?}");
    assert!(!text.contains("x-smuggled"), "{text:?}");
    assert!(text.starts_with("HTTP/1.1 502 "), "{text:?}");
}

#[tokio::test]
async fn malformed_client_chunked_body_is_400_and_the_endpoint_connection_is_closed() {
    // The endpoint answers only after a while, so the client's body fails first.
    let ep = Scripted::start(|_, _, _| Reply {
        delay: Duration::from_millis(300),
        ..reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let bodies = [
        // A chunk size that overflows 64 bits.
        "ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        // Chunk lines ended by a bare LF.
        "3\nabc\n0\n\n",
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let text = raw_exchange(
            &m,
            &format!(
                "POST /up HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n{body}"
            ),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{body:?}: {text:?}");
        assert!(
            text.to_ascii_lowercase()
                .contains("meshroute-error: client-protocol-error\r\n"),
            "{body:?}: {text:?}"
        );
        // The endpoint's connection carried half a request: it is closed, never pooled.
        let started = std::time::Instant::now();
        while ep.closed_by_proxy.load(Ordering::SeqCst) < i + 1 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{body:?}: the endpoint's connection was left open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (status, _, body) = call_with_body(&client(), &m, "POST", "/up", "fine").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), "ok");
    assert_eq!(ep.connections(), 3, "a fresh connection after each failure");
}

#[tokio::test]
async fn forwarded_bodies_that_read_like_an_error_head_are_passed_on_untouched() {
    // The client connection labels the error heads hyper writes by itself; a body that looks
    // like one, written after its response was handed over, must never be mistaken for one.
    const LOOKALIKE: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
    let ep = Scripted::start(|_, _, head| {
        let answer = if head.contains("/chunked") {
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{LOOKALIKE}\r\n0\r\n\r\n",
                LOOKALIKE.len()
            )
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{LOOKALIKE}",
                LOOKALIKE.len()
            )
        };
        Reply {
            bytes: answer.into_bytes(),
            close: false,
            delay: Duration::ZERO,
        }
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    for (method, sent) in PATHS {
        for path in ["/sized", "/chunked"] {
            for _ in 0..3 {
                let (status, headers, body) = call_with_body(&c, &m, method, path, sent).await;
                assert_eq!(status, 200, "{method} {path}");
                assert!(headers.get("meshroute-error").is_none(), "{method} {path}");
                assert_eq!(body.unwrap(), LOOKALIKE, "{method} {path}");
            }
        }
    }
}
