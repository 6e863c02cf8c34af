//! Requests that try to make the proxy and its endpoints disagree: a Host that differs from
//! the target, malformed client framing, CONNECT, and malformed heads hyper answers itself.
//! Real sockets; raw bytes where a well-behaved client could not send them.

#[path = "support/proxy.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const APP: &str = "app.shop";

async fn proxy_with_app() -> (tempfile::TempDir, meshroute::run::Running, Backend) {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints("shop", "app", &[(&app, true)]),
    );
    let m = start_on(dir.path()).await;
    (dir, m, app)
}

/// Write `request` raw and read until the proxy closes (bounded).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code and the `meshroute-error` value of the first response in `text`.
fn first_status(text: &str) -> (u16, Option<String>) {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let error = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("meshroute-error")
            .then(|| v.trim().to_string())
    });
    (status, error)
}

async fn h2_send(
    addr: std::net::SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut send, driver) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn),
    )
    .await
    .unwrap();
    tokio::spawn(driver);
    send.send_request(req).await.expect("the proxy answers")
}

#[tokio::test]
async fn absolute_form_target_is_the_one_authority_routed_and_forwarded() {
    let (_dir, m, app) = proxy_with_app().await;
    let text = raw(
        m.proxy_addr,
        format!("GET http://{APP}/x HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(first_status(&text), (200, None), "{text:?}");
    let seen = app.last().unwrap();
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    assert_eq!(
        hosts,
        [APP],
        "the endpoint sees the authority that was routed"
    );
    assert_eq!(seen.path_and_query, "/x");

    // The other way round: routed by the target, never by Host.
    let text = raw(
        m.proxy_addr,
        format!("GET http://evil.example/x HTTP/1.1\r\nhost: {APP}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(
        first_status(&text),
        (404, Some("unknown-authority".into())),
        "{text:?}"
    );
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn host_that_is_not_an_authority_is_400() {
    let (_dir, m, app) = proxy_with_app().await;
    for host in [
        "app.shop b",
        "app.shop:80:80",
        "user@app.shop",
        "app.shop/x",
    ] {
        let text = raw(
            m.proxy_addr,
            format!("GET /x HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(
            first_status(&text),
            (400, Some("invalid-authority".into())),
            "{host:?}: {text:?}"
        );
    }
    assert_eq!(app.count(), 0);

    // On a connection whose last request was routed: the valid Host is trusted as the one
    // before it, an invalid one is still checked and refused.
    let text = raw(
        m.proxy_addr,
        format!(
            "GET /x HTTP/1.1\r\nhost: {APP}\r\n\r\nGET /x HTTP/1.1\r\nhost: {APP}\r\n\r\n\
             GET /x HTTP/1.1\r\nhost: app.shop b\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{text:?}");
    assert!(text.contains("invalid-authority"), "{text:?}");
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn h2_host_that_differs_from_authority_is_400() {
    let (_dir, m, app) = proxy_with_app().await;
    let req = http::Request::get(format!("http://{APP}/x"))
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = h2_send(m.proxy_addr, req).await;
    assert_eq!(rsp.status(), 400);
    assert_eq!(rsp.headers()["meshroute-error"], "conflicting-host");
    assert_eq!(app.count(), 0);

    // The same authority twice is fine.
    let req = http::Request::get(format!("http://{APP}/x"))
        .header("host", APP)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = h2_send(m.proxy_addr, req).await;
    assert_eq!(rsp.status(), 200);
    let _ = rsp.into_body().collect().await;
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn heads_hyper_refuses_by_itself_carry_meshroute_error() {
    let (_dir, m, app) = proxy_with_app().await;
    let big = "a".repeat(70 * 1024);
    let cases = [
        (
            format!("GET /x HTTP/1.1\r\nhost: {APP}\r\nbad header\r\n\r\n"),
            400,
            "client-protocol-error",
        ),
        (
            format!("GET /x HTTP/1.1\r\nhost: {APP}\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"),
            400,
            "client-protocol-error",
        ),
        (
            format!("GET /x HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: gzip\r\n\r\n"),
            400,
            "client-protocol-error",
        ),
        (
            format!("GET /x HTTP/1.1\r\nhost: {APP}\r\nx-big: {big}\r\n\r\n"),
            431,
            "request-head-too-large",
        ),
    ];
    for (request, status, reason) in cases {
        let text = raw(m.proxy_addr, request.as_bytes()).await;
        let shown = &request[..request.len().min(80)];
        assert_eq!(
            first_status(&text),
            (status, Some(reason.into())),
            "{shown:?}: {text:?}"
        );
    }
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn only_hyper_own_error_heads_are_labelled_not_forwarded_ones() {
    // A forwarded 400 on the same keep-alive connection, right before a malformed head (sent
    // in one write, so hyper reads the second head straight after the first exchange).
    let (_dir, m, app) = proxy_with_app().await;
    let text = raw(
        m.proxy_addr,
        format!(
            "GET /x?status=400 HTTP/1.1\r\nhost: {APP}\r\n\r\n\
             GET /y HTTP/1.1\r\nhost: {APP}\r\nbad header\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let second = text
        .match_indices("HTTP/1.1 400 ")
        .nth(1)
        .map(|(at, _)| &text[at..])
        .unwrap_or_else(|| panic!("two responses: {text:?}"));
    let first = &text[..text.len() - second.len()];
    assert_eq!(first_status(first), (400, None), "{text:?}");
    assert!(first.contains("x-backend: app"), "{text:?}");
    assert_eq!(
        first_status(second),
        (400, Some("client-protocol-error".into())),
        "{text:?}"
    );
    assert_eq!(app.count(), 1);
}

#[tokio::test]
async fn connect_is_405_and_never_forwarded() {
    let (_dir, m, app) = proxy_with_app().await;
    for target in [format!("{APP}:80"), format!("{APP}:443")] {
        let text = raw(
            m.proxy_addr,
            format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(
            first_status(&text),
            (405, Some("connect-not-supported".into())),
            "{text:?}"
        );
        assert!(
            text.to_ascii_lowercase().contains("\r\nallow: get, "),
            "{text:?}"
        );
    }

    // h2 CONNECT (no :path).
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("{APP}:80"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = h2_send(m.proxy_addr, req).await;
    assert_eq!(rsp.status(), 405);
    assert_eq!(rsp.headers()["meshroute-error"], "connect-not-supported");

    // Extended CONNECT (RFC 8441) is never offered, so an h2 client cannot even send it.
    let conn = TcpStream::connect(m.proxy_addr).await.unwrap();
    let (mut send, driver) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(conn),
    )
    .await
    .unwrap();
    tokio::spawn(driver);
    // Let the server's SETTINGS arrive.
    let warm = http::Request::get(format!("http://{APP}/warm"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let _ = send
        .send_request(warm)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("http://{APP}/chat"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    assert!(send.send_request(req).await.is_err());
    assert_eq!(
        app.count(),
        1,
        "only the warm-up request reached the endpoint"
    );
}

#[tokio::test]
async fn malformed_client_body_is_400_towards_an_h2c_endpoint_too() {
    let b = Backend::start_h2c("grpcish").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &service_with_endpoints_extra(
            "shop",
            "app",
            &[(&b, true)],
            "",
            ", appProtocol: kubernetes.io/h2c",
            "",
        ),
    );
    let m = start_on(dir.path()).await;
    for body in ["ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", "3\nabc\n0\n\n"] {
        let text = raw(
            m.proxy_addr,
            format!("POST /up HTTP/1.1\r\nhost: {APP}\r\ntransfer-encoding: chunked\r\n\r\n{body}")
                .as_bytes(),
        )
        .await;
        assert_eq!(
            first_status(&text),
            (400, Some("client-protocol-error".into())),
            "{body:?}: {text:?}"
        );
    }
}
