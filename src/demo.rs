//! `meshroute run --demo`: built-in echo backends and a live view of the split.
//!
//! Every loopback endpoint in the table gets an echo server that answers with the Service and
//! cluster it stands in for (`x-demo-service`, `x-demo-cluster`, and a one-line body), after a
//! few milliseconds of simulated work (`?delay=250` asks for 250 ms) so timeouts can be tried.
//! Endpoints that appear in later tables get a server too. A light load generator sends
//! `GET /` to every parent through the proxy, and the terminal shows the `meshroute top` view
//! of it: per parent and route, rates, latency and the configured split next to the observed
//! one.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proxy::Proxy;
use crate::sources::watch::ReloadStatus;
use crate::table::{BackendTarget, Filter, RouteTable, ServiceBackend};
use crate::top::{LiveTraffic, Style};
use crate::traffic::Sampler;

/// Each parent gets one request per tick.
const TICK: Duration = Duration::from_millis(50);

/// Who an echo backend stands in for.
#[derive(Debug, Clone)]
struct Identity {
    service: String,
    cluster: String,
}

fn identity(s: &ServiceBackend) -> Identity {
    Identity {
        service: format!("{}.{}", s.name, s.namespace),
        cluster: s.cluster.as_deref().unwrap_or("local").to_string(),
    }
}

/// Loopback endpoints of every backend and mirror target in the table.
fn loopback_endpoints(table: &RouteTable) -> BTreeMap<SocketAddr, Identity> {
    let mut out = BTreeMap::new();
    let mut add = |s: &ServiceBackend| {
        for e in &s.endpoints {
            if e.addr.ip().is_loopback() {
                out.entry(e.addr).or_insert_with(|| identity(s));
            }
        }
    };
    for svc in table.services() {
        for parent in &svc.ports {
            for (_, rule) in &parent.matches {
                for b in rule.backends.iter() {
                    if let BackendTarget::Service(s) = &b.target {
                        add(s);
                    }
                    for f in rule.filters.iter().chain(&b.filters) {
                        if let Filter::RequestMirror(m) = f {
                            add(&m.backend);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Start echo servers for the loopback endpoints of the live table, and a supervisor that
/// starts more when new ones appear.
pub async fn start_backends(
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Vec<JoinHandle<()>> {
    let mut bound = HashSet::new();
    let mut handles = bind_new(&proxy.table(), &mut bound).await;
    handles.push(tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut tasks = Vec::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tasks.extend(bind_new(&proxy.table(), &mut bound).await);
        }
        for t in tasks {
            t.abort();
        }
    }));
    handles
}

async fn bind_new(table: &RouteTable, bound: &mut HashSet<SocketAddr>) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for (addr, id) in loopback_endpoints(table) {
        if !bound.insert(addr) {
            continue;
        }
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, service = %id.service, cluster = %id.cluster, "demo backend");
                handles.push(tokio::spawn(echo(l, id)));
            }
            Err(e) => tracing::warn!(%addr, error = %e, "cannot start demo backend"),
        }
    }
    handles
}

async fn echo(listener: TcpListener, id: Identity) {
    let id = Arc::new(id);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let id = id.clone();
                async move { Ok::<_, Infallible>(answer(&id, &req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(id: &Identity, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let asked = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay=")))
        .and_then(|v| v.parse::<u64>().ok());
    let delay = asked.unwrap_or_else(|| 2 + crate::proxy::pick::fast_rand() % 18);
    tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
    let body = format!("{} {}\n", id.service, id.cluster);
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    let h = rsp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.service) {
        h.insert("x-demo-service", v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.cluster) {
        h.insert("x-demo-cluster", v);
    }
    rsp
}

/// Generate light traffic to every parent and redraw the live view (the `meshroute top`
/// view, read in-process) every second.
pub async fn show(
    proxy: Arc<Proxy>,
    status: Arc<ReloadStatus>,
    proxy_addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let tty = std::io::stdout().is_terminal();
    let style = if tty && std::env::var_os("NO_COLOR").is_none() {
        Style::Colour
    } else {
        Style::Plain
    };
    let sampler = Sampler::default();
    // A first reading, so the first frame already has rates.
    let _ = sampler.view(&proxy);
    tokio::pin!(shutdown);
    let mut next_draw = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(TICK) => {}
        }
        let table = proxy.table();
        for svc in table.services() {
            for parent in &svc.ports {
                let authority = authority_of(&parent.name, &parent.namespace, parent.port);
                let uri = format!("http://{proxy_addr}/");
                let Ok(req) = Request::builder()
                    .uri(uri)
                    .header(http::header::HOST, authority)
                    .body(Empty::new())
                else {
                    continue;
                };
                let client = client.clone();
                tokio::spawn(async move {
                    if let Ok(rsp) = client.request(req).await {
                        let _ = rsp.into_body().collect().await;
                    }
                });
            }
        }
        if Instant::now() >= next_draw {
            next_draw += Duration::from_secs(if tty { 1 } else { 5 });
            let live = LiveTraffic {
                traffic: sampler.view(&proxy),
                status: serde_json::to_value(status.snapshot()).unwrap_or_default(),
            };
            let (w, h) = crate::top::terminal_size();
            let title = format!("meshroute demo · proxy {proxy_addr}");
            let text =
                crate::top::render(&live, &title, w, if tty { h } else { usize::MAX }, style);
            let text = if tty {
                format!("\x1b[2J\x1b[H{text}")
            } else {
                format!("{text}\n")
            };
            match crate::output::print(&text) {
                Ok(crate::output::Printed::All) => {}
                // `meshroute run --demo | head`: the proxy keeps serving, the view stops.
                Ok(crate::output::Printed::ReaderGone) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot print the demo view; it stops");
                    break;
                }
            }
        }
    }
}

fn authority_of(name: &str, namespace: &str, port: u16) -> String {
    format!("{name}.{namespace}.svc.cluster.local:{port}")
}
