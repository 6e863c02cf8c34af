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

/// Send `method path` with `body` through the proxy; the body of the answer is collected (its
/// error kept as text).
async fn call_with_body(
    client: &TestClient,
    m: &meshroute::run::Running,
    method: &str,
    path: &str,
    body: &'static str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    try_call(client, m, method, path, body)
        .await
        .expect("proxy answers")
}

/// [`call_with_body`], or the error of a client connection the proxy closed unanswered.
async fn try_call(
    client: &TestClient,
    m: &meshroute::run::Running,
    method: &str,
    path: &str,
    body: &'static str,
) -> Result<(StatusCode, http::HeaderMap, Result<Bytes, String>), String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", m.proxy_addr))
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("proxy answers in time")
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = rsp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("body ends in time")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok((parts.status, parts.headers, body))
}

/// What a client saw of one exchange through the proxy: the status, every response field but
/// `date`, and the body (`Err` when it failed or was cut short).
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: Result<Bytes, ()>,
}

/// What one path made of a scenario: every answer, and what the endpoint saw.
#[derive(Debug, PartialEq)]
struct Observed {
    answers: Vec<Seen>,
    connections: usize,
    requests_seen: usize,
}

/// One scripted upstream scenario: the endpoint's bytes, the requests sent one after another
/// on one client, and what the client must see, whichever upstream path carries them.
struct Case {
    name: &'static str,
    method: &'static str,
    script: fn(usize, usize, &str) -> Reply,
    requests: usize,
    /// Pause between requests (lets an endpoint's close reach the proxy first).
    pause: Duration,
    expect: fn(&Observed) -> Result<(), String>,
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn header<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The status recorded for an exchange that broke (no answer, or a body cut short).
const BROKEN: u16 = 0;

/// Every answer is `status` with `body` (`None`: a failed body).
fn all(o: &Observed, status: u16, body: Option<&str>) -> Result<(), String> {
    for (i, a) in o.answers.iter().enumerate() {
        check(a.status == status, || format!("#{i}: status {}", a.status))?;
        let got = a
            .body
            .as_ref()
            .ok()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        check(got.as_deref() == body, || format!("#{i}: body {got:?}"))?;
    }
    Ok(())
}

fn connections(o: &Observed, n: usize) -> Result<(), String> {
    check(o.connections == n, || {
        format!("{} connections, not {n}", o.connections)
    })
}

/// The two upstream paths: the same method without a body (meshroute's own HTTP/1.1 client)
/// and with one (hyper's client).
const BODIES: [&str; 2] = ["", "hello"];

/// Run `case` through a fresh endpoint and proxy, sending `body` with every request.
async fn observe(case: &Case, body: &'static str) -> Observed {
    let ep = Scripted::start(case.script).await;
    let (_dir, m) = proxy_to(&ep).await;
    let c = client();
    let mut answers = Vec::new();
    for i in 0..case.requests {
        if i > 0 {
            tokio::time::sleep(case.pause).await;
        }
        let answer = try_call(&c, &m, case.method, "/p?x=1", body).await;
        let (status, headers, got) = match answer {
            Ok((status, headers, Ok(got))) => (status.as_u16(), headers, Ok(got)),
            // A broken exchange, whether or not its head reached the client before the break
            // (that depends only on when the proxy's client connection flushed).
            Ok((_, _, Err(_))) | Err(_) => (BROKEN, Default::default(), Err(())),
        };
        let mut headers: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| *n != "date")
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        headers.sort();
        answers.push(Seen {
            status,
            headers,
            body: got,
        });
    }
    let requests_seen = ep.heads.lock().unwrap().len();
    Observed {
        answers,
        connections: ep.connections(),
        requests_seen,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "chunked with extensions and trailers, connection reused",
            method: "GET",
            script: |_, _, _| {
                reply(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n\
                     5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
                )
            },
            requests: 3,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("hello world"))?;
                check(header(&o.answers[0], "x-a") == Some("1"), || "x-a".into())?;
                connections(o, 1)
            },
        },
        Case {
            name: "close-delimited body read to the end, connection not reused",
            method: "GET",
            script: |_, _, _| reply_and_close("HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("until the end"))?;
                connections(o, 2)
            },
        },
        Case {
            name: "HTTP/1.0 close-delimited body",
            method: "PUT",
            script: |_, _, _| reply_and_close("HTTP/1.0 200 OK\r\nx-a: 1\r\n\r\nold style"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("old style"))?;
                connections(o, 2)
            },
        },
        Case {
            name: "HTTP/1.0 keep-alive with a length reuses the connection",
            method: "GET",
            script: |_, _, _| {
                reply("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
            },
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 1)
            },
        },
        Case {
            name: "interim responses are skipped",
            method: "POST",
            script: |_, _, _| {
                reply(
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                )
            },
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                check(header(&o.answers[0], "link").is_none(), || {
                    "link kept".into()
                })?;
                connections(o, 1)
            },
        },
        Case {
            name: "interim heads past the head limit are refused",
            method: "GET",
            script: |_, _, _| {
                let early = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
                let mut answer = early.repeat(2 * 64 * 1024 / early.len());
                answer.push_str("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                Reply {
                    bytes: answer.into_bytes(),
                    close: false,
                    delay: Duration::ZERO,
                }
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, 502, Some("upstream-protocol-error")),
        },
        Case {
            name: "HEAD response has no body and keeps the connection",
            method: "HEAD",
            script: |_, _, _| reply("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some(""))?;
                check(
                    header(&o.answers[0], "content-length") == Some("100"),
                    || format!("{:?}", o.answers[0].headers),
                )?;
                connections(o, 1)
            },
        },
        Case {
            name: "hop-by-hop fields and connection options are not forwarded",
            method: "GET",
            script: |_, _, _| {
                reply(
                    "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-drop\r\nkeep-alive: timeout=5\r\n\
                     x-drop: 1\r\nupgrade: h2c\r\nte: trailers\r\nproxy-connection: keep-alive\r\n\
                     proxy-authenticate: Basic\r\nx-keep: 2\r\ncontent-length: 2\r\n\r\nok",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                let names: Vec<&str> = o.answers[0]
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                check(
                    names == ["content-length", "proxy-authenticate", "x-keep"],
                    || format!("{names:?}"),
                )
            },
        },
        Case {
            name: "a listed content-length is sent on as one value",
            method: "GET",
            script: |_, _, _| reply("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                check(header(&o.answers[0], "content-length") == Some("2"), || {
                    format!("{:?}", o.answers[0].headers)
                })?;
                connections(o, 1)
            },
        },
        Case {
            name: "204 with a broken content-length is refused",
            method: "DELETE",
            script: |_, _, _| reply("HTTP/1.1 204 No Content\r\ncontent-length: x\r\n\r\n"),
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, 502, Some("upstream-protocol-error")),
        },
        Case {
            name: "304 with conflicting content-lengths is refused",
            method: "GET",
            script: |_, _, _| {
                reply("HTTP/1.1 304 Not Modified\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, 502, Some("upstream-protocol-error")),
        },
        Case {
            name: "endpoint closing without an answer is 502",
            method: "GET",
            script: |_, _, _| reply_and_close(""),
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, 502, Some("upstream-protocol-error")),
        },
        Case {
            name: "sized body cut short fails",
            method: "GET",
            script: |_, _, _| reply_and_close("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "chunked body cut short fails",
            method: "GET",
            script: |_, _, _| {
                reply_and_close("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare LF in a trailer section fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\n\r\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare LF after a chunk size fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare LF after chunk data fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\n0\r\n\r\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare LF ending the trailer section fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare CR in a chunk extension fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\rb\r\nok\r\n0\r\n\r\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "bare LF after the last chunk fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "a trailer line ended by LF then CRLF is one field, connection reused",
            method: "GET",
            script: |_, _, _| {
                reply("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-a: 1\n\r\n\r\n")
            },
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 1)
            },
        },
        Case {
            name: "a bare LF starting a second trailer field in one line fails the body",
            method: "GET",
            script: |_, _, _| {
                reply_and_close(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-a: 1\nx-b: 2\r\n\r\n",
                )
            },
            requests: 1,
            pause: Duration::ZERO,
            expect: |o| all(o, BROKEN, None),
        },
        Case {
            name: "pooled connection the endpoint closed is replaced (POST is never sent twice)",
            method: "POST",
            script: |_, _, _| reply_and_close("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            requests: 5,
            pause: Duration::from_millis(20),
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 5)?;
                check(o.requests_seen == 5, || {
                    format!("{} requests", o.requests_seen)
                })
            },
        },
        Case {
            name: "bytes past the body stop reuse",
            method: "GET",
            script: |_, _, _| reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 2)
            },
        },
        Case {
            name: "connection: close stops reuse",
            method: "GET",
            script: |_, _, _| {
                reply("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            },
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 2)
            },
        },
        Case {
            name: "HTTP/1.0 without keep-alive stops reuse",
            method: "GET",
            script: |_, _, _| reply("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 200, Some("ok"))?;
                connections(o, 2)
            },
        },
        Case {
            name: "bytes after a 204 stop reuse",
            method: "GET",
            script: |_, _, _| reply("HTTP/1.1 204 No Content\r\n\r\nJUNK"),
            requests: 2,
            pause: Duration::ZERO,
            expect: |o| {
                all(o, 204, Some(""))?;
                connections(o, 2)
            },
        },
        Case {
            name: "bodies that read like an error head are passed on untouched",
            method: "GET",
            script: |_, nth, _| {
                const LOOKALIKE: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
                let answer = if nth % 2 == 0 {
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
            },
            requests: 4,
            pause: Duration::ZERO,
            expect: |o| {
                all(
                    o,
                    200,
                    Some("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
                )?;
                connections(o, 1)
            },
        },
    ]
}

#[tokio::test]
async fn broken_or_ambiguous_responses_are_502_upstream_protocol_error() {
    let many_fields: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
    let early = "HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
    let cases: [String; 9] = [
        format!(
            "{}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            early.repeat(2 * 64 * 1024 / early.len())
        ),
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
async fn every_scripted_scenario_means_the_same_on_both_upstream_paths() {
    let mut failures = Vec::new();
    for case in cases() {
        let bodiless = observe(&case, BODIES[0]).await;
        let with_body = observe(&case, BODIES[1]).await;
        if bodiless != with_body {
            failures.push(format!(
                "{} ({}): paths disagree\n  without a body: {bodiless:?}\n  with a body:    {with_body:?}",
                case.name, case.method
            ));
        }
        for (path, o) in [("without a body", &bodiless), ("with a body", &with_body)] {
            if let Err(e) = (case.expect)(o) {
                failures.push(format!(
                    "{} ({} {path}): {e}\n  {o:?}",
                    case.name, case.method
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn connection_closed_under_a_request_is_sent_again_only_when_that_is_safe_on_both_paths() {
    // The first request on each connection is answered; the second is read and then the
    // connection is closed without a word (an endpoint's idle timeout racing the request).
    // The same policy decides on both upstream paths: an idempotent request goes once more,
    // on a new connection (not on another pooled one), a POST never does.
    for body in BODIES {
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
        let warm =
            futures::future::join_all((0..3).map(|_| call_with_body(&c, &m, "PUT", "/warm", body)))
                .await;
        assert!(warm.iter().all(|(s, _, _)| *s == 200), "{body:?}");
        assert_eq!(ep.connections(), 3, "{body:?}");
        let (status, _, got) = call_with_body(&c, &m, "PUT", "/again", body).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(got.unwrap(), "ok", "{body:?}");
        assert_eq!(ep.connections(), 4, "{body:?}");
        let seen = |prefix: &str| {
            ep.heads
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.starts_with(prefix))
                .count()
        };
        assert_eq!(
            seen("PUT /again"),
            2,
            "{body:?}: one failed attempt and one more"
        );
        // POST is not idempotent: the endpoint may have acted on it.
        let (status, headers, _) = call_with_body(&c, &m, "POST", "/once", body).await;
        assert_eq!(status, 502, "{body:?}");
        assert_eq!(headers["meshroute-error"], "upstream-protocol-error");
        assert_eq!(
            seen("POST /once"),
            1,
            "{body:?}: a POST is never sent twice"
        );
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
async fn idle_connections_are_closed_after_the_idle_limit_on_both_paths() {
    for body in BODIES {
        let ep = Scripted::start(|_, _, _| Reply {
            delay: Duration::from_millis(200),
            ..reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        })
        .await;
        let (_dir, m) = proxy_to(&ep).await;
        let c = client();
        let answers =
            futures::future::join_all((0..3).map(|_| call_with_body(&c, &m, "PUT", "/", body)))
                .await;
        assert!(answers.iter().all(|(s, _, _)| *s == 200), "{body:?}");
        assert_eq!(ep.connections(), 3, "{body:?}");
        assert_eq!(ep.closed_by_proxy.load(Ordering::SeqCst), 0, "{body:?}");
        let limit = Duration::from_secs(u64::from(meshroute::proxy::pool::IDLE_SECS) + 3);
        let started = std::time::Instant::now();
        while ep.closed_by_proxy.load(Ordering::SeqCst) < 3 {
            assert!(
                started.elapsed() < limit,
                "{body:?}: idle connections still open after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    // The smuggling attempt end to end: one client connection, a request whose answer
    // declares both framings, then a second request. Nothing of "evil" may reach the client,
    // whichever upstream path the first request took.
    let ep = Scripted::start(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-smuggled: 1\r\n\r\nevil",
        )
    })
    .await;
    let (_dir, m) = proxy_to(&ep).await;
    for body in BODIES {
        let text = raw_exchange(
            &m,
            &format!(
                "POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: {}\r\n\r\n{body}\
                 GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n",
                body.len()
            ),
        )
        .await;
        assert!(!text.contains("evil"), "{body:?}: {text:?}");
        assert!(!text.contains("x-smuggled"), "{body:?}: {text:?}");
        assert!(text.starts_with("HTTP/1.1 502 "), "{body:?}: {text:?}");
    }
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
