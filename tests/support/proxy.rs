//! Helpers for the proxy integration tests: real backends on 127.0.0.1:0 that record what
//! they receive, manifests written into a tempdir, and a meshroute started on 127.0.0.1:0
//! through the real loader and compiler.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use meshroute::proxy::ProxyConfig;
use meshroute::run::{start, RunConfig, Running};

/// What a test backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

/// A backend that answers every request with its name (`x-backend` header and body) and
/// records it. `?delay=MS` delays the head, `?stream=N` sends N chunks 100 ms apart,
/// `?status=N` answers with that status.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// Requests whose response was dropped before it finished (upstream cancellation).
    pub cancelled: Arc<AtomicUsize>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, false).await
    }

    /// An h2c-only backend (prior knowledge).
    pub async fn start_h2c(name: &str) -> Backend {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &str, h2: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            connections: Arc::default(),
            cancelled: Arc::default(),
        };
        let state = b.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let st = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(st.answer(req).await) }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        b
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let q = parts.uri.query().unwrap_or("").to_string();
        let param = |k: &str| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_string))
                .and_then(|v| v.parse::<u64>().ok())
        };
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body,
            version: parts.version,
        });
        let guard = CancelGuard(Some(self.cancelled.clone()));
        if let Some(ms) = param("delay") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let status = param("status")
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::OK);
        let mut rsp = if let Some(n) = param("stream") {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let mut guard = guard;
                for i in 0..n {
                    let chunk = Frame::data(Bytes::from(format!("chunk{i}\n")));
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                guard.0 = None;
            });
            let stream = tokio_stream_from(rx);
            Response::new(StreamBody::new(stream).boxed())
        } else {
            let mut g = guard;
            g.0 = None;
            Response::new(Full::new(Bytes::from(self.name.clone())).boxed())
        };
        *rsp.status_mut() = status;
        rsp.headers_mut()
            .insert("x-backend", self.name.parse().unwrap());
        rsp
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }
}

/// Counts a request as cancelled when dropped before being disarmed.
struct CancelGuard(Option<Arc<AtomicUsize>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// YAML for a selector-less Service with one port 80 named http.
pub fn service(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n"
    )
}

/// YAML for a Service (port 80 → the backend's port) and an EndpointSlice with the given
/// backends as endpoints (`ready` for each).
pub fn service_with_endpoints(ns: &str, name: &str, endpoints: &[(&Backend, bool)]) -> String {
    service_with_endpoints_extra(ns, name, endpoints, "", "", "")
}

/// Like [`service_with_endpoints`], with extra Service labels, Service port fields and
/// EndpointSlice annotations (YAML flow-map bodies, e.g. `"a: b"`).
pub fn service_with_endpoints_extra(
    ns: &str,
    name: &str,
    endpoints: &[(&Backend, bool)],
    svc_labels: &str,
    port_extra: &str,
    slice_annotations: &str,
) -> String {
    let port = endpoints.first().map(|(b, _)| b.addr.port()).unwrap_or(1);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{svc_labels}}}}}\nspec:\n  ports: [{{name: http, port: 80{port_extra}}}]\n---\n"
    );
    y.push_str(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}, annotations: {{{slice_annotations}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n"
    ));
    for (b, ready) in endpoints {
        assert_eq!(
            b.addr.port(),
            port,
            "one EndpointSlice port per Service in these tests"
        );
        y.push_str(&format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}}}\n",
            b.addr.ip()
        ));
    }
    y.push_str("---\n");
    y
}

/// A Gateway API HTTPRoute on Service parent `parent` (port 80) with the given rules YAML
/// (indented under `rules:`).
pub fn route(ns: &str, name: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}, port: 80}}]\n  rules:\n{rules}---\n"
    )
}

/// Write `yaml` as `dir/name`, atomically (write + rename) so a watcher never reads half.
pub fn write(dir: &Path, name: &str, yaml: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Test-friendly proxy limits.
pub fn test_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    }
}

/// Start meshroute on `dir` with proxy and admin on 127.0.0.1:0.
pub async fn start_on(dir: &Path) -> Running {
    start_with(dir, test_config()).await
}

pub async fn start_with(dir: &Path, proxy: ProxyConfig) -> Running {
    start(RunConfig {
        config_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        proxy,
        resync: None,
        ..RunConfig::default()
    })
    .await
    .expect("meshroute starts")
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished exchange.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }
    pub fn error(&self) -> Option<&str> {
        self.headers
            .get("meshroute-error")
            .and_then(|v| v.to_str().ok())
    }
}

/// GET `path` for `host` through the proxy at `proxy`.
pub async fn get(c: &TestClient, proxy: SocketAddr, host: &str, path: &str) -> Answer {
    send(
        c,
        proxy,
        Request::get(path).header("host", host),
        Bytes::new(),
    )
    .await
}

pub async fn send(
    c: &TestClient,
    proxy: SocketAddr,
    req: http::request::Builder,
    body: Bytes,
) -> Answer {
    let path = req.uri_ref().map(|u| u.to_string()).unwrap_or_default();
    let req = req
        .uri(format!("http://{proxy}{path}"))
        .body(Full::new(body))
        .unwrap();
    let rsp = c.request(req).await.expect("proxy answers");
    let (parts, body) = rsp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Fetch an admin path.
pub async fn admin(running: &Running, path: &str) -> (StatusCode, String) {
    let c = client();
    let req = Request::get(format!("http://{}{path}", running.admin_addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let rsp = c.request(req).await.expect("admin answers");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Wait until the live table's generation is at least `gen`, and the reload status (written
/// just after the table is published) has caught up with it (bounded).
pub async fn wait_generation(running: &Running, gen: u64) {
    for _ in 0..300 {
        if running.proxy.table().generation >= gen && running.status.snapshot().generation >= gen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "table generation stayed at {} (wanted {gen})",
        running.proxy.table().generation
    );
}

/// Count answers by backend name over `n` GETs.
pub async fn split(
    c: &TestClient,
    proxy: SocketAddr,
    host: &str,
    n: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let a = get(c, proxy, host, "/").await;
        let key = a
            .backend()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {}", a.status.as_u16()));
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

impl Backend {
    /// An address nothing listens on (bound, then released).
    pub async fn dead(name: &str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        Backend {
            name: name.to_string(),
            addr,
            seen: Arc::default(),
            connections: Arc::default(),
            cancelled: Arc::default(),
        }
    }
}
