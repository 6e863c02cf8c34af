//! The admin server (loopback by default): `/live`, `/ready` (200 once the first table is
//! live), `/metrics` (OpenMetrics), `/debug/table` (JSON of the live table), `/status`
//! (what the last configuration reload did), `/api/traffic` (the live traffic view, see
//! [`crate::traffic`]) and `/` (a dashboard of that view).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::proxy::Proxy;
use crate::sources::watch::ReloadStatus;
use crate::top::LiveTraffic;
use crate::traffic::Sampler;

/// The dashboard: one self-contained page (no external assets, works air-gapped) that polls
/// `/api/traffic`.
const DASHBOARD: &str = include_str!("dashboard.html");

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    status: Arc<ReloadStatus>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let sampler = Arc::new(Sampler::default());
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let proxy = proxy.clone();
        let status = status.clone();
        let sampler = sampler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rsp = respond(&proxy, &status, &sampler, &req);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn respond(
    proxy: &Proxy,
    status: &ReloadStatus,
    sampler: &Sampler,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if proxy.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no routing table yet\n")
            }
        }
        "/metrics" => {
            let mut rsp = Response::new(Full::new(Bytes::from(proxy.metrics.encode())));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(OPENMETRICS),
            );
            rsp
        }
        "/debug/table" => json(&*proxy.table()),
        "/status" => json(&status.snapshot()),
        "/api/traffic" => json(&LiveTraffic {
            traffic: sampler.view(proxy),
            status: serde_json::to_value(status.snapshot()).unwrap_or_default(),
        }),
        "/api/explain" => explain(proxy, req.uri().query().unwrap_or("")),
        "/" => {
            let mut rsp = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            rsp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `explain` against the live table: `?host=H&path=P&method=M&header=name:value&format=json`.
/// The body is what `meshroute explain` prints; `meshroute-explain-routed` says whether the
/// request would be forwarded (the command's exit status).
fn explain(proxy: &Proxy, query: &str) -> Response<Full<Bytes>> {
    let mut q = crate::cli::ExplainQuery {
        host: String::new(),
        path: "/".into(),
        method: "GET".into(),
        headers: Vec::new(),
    };
    let mut as_json = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "host" => q.host = v.into_owned(),
            "path" => q.path = v.into_owned(),
            "method" => q.method = v.into_owned(),
            "header" => match v.split_once(':') {
                Some((n, v)) => q.headers.push((n.trim().into(), v.trim().into())),
                None => {
                    return owned_text(
                        StatusCode::BAD_REQUEST,
                        format!("header {v:?}: expected name:value\n"),
                    )
                }
            },
            "format" => as_json = v == "json",
            _ => {}
        }
    }
    if q.host.is_empty() {
        return text(StatusCode::BAD_REQUEST, "host is required\n");
    }
    match crate::cli::explain_table(&proxy.table(), &q) {
        Ok(x) => {
            let mut rsp = if as_json {
                json(&x)
            } else {
                owned_text(StatusCode::OK, x.to_text())
            };
            rsp.headers_mut().insert(
                "meshroute-explain-routed",
                header::HeaderValue::from_static(if x.routed() { "true" } else { "false" }),
            );
            rsp
        }
        Err(e) => owned_text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = text(status, "");
    *rsp.body_mut() = Full::new(Bytes::from(body));
    rsp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut rsp = Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize admin response");
            text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed\n")
        }
    }
}
