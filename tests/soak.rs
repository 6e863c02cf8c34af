//! Soak: meshroute in file mode under steady mixed HTTP/1.1 and h2c load, with the split's
//! weights edited every few seconds, watching this process's RSS and open file descriptors.
//!
//! ```sh
//! MESHROUTE_SOAK_SECONDS=300 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `MESHROUTE_SOAK_RPS` sets the target rate (default 3000). The test fails on any answer
//! other than 200 from a backend, on any transport error, or when RSS or the fd count grows
//! beyond a tolerance from the first third of the run to the last. Everything (proxy,
//! backends, clients) runs in this process, so the samples cover all of it.

#[path = "support/proxy.rs"]
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpListener;

use support::*;

const HOST: &str = "web.shop.svc.cluster.local";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// An echo backend that keeps nothing per request (the support `Backend` records every
/// request, which would itself grow over a soak).
async fn echo(name: &'static str, h2: bool) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    let mut rsp = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    rsp.headers_mut()
                        .insert("x-backend", http::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(rsp)
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
    let mut b = Backend::dead(name).await;
    b.addr = addr;
    b
}

fn split_route(wa: u32, wb: u32) -> String {
    route(
        "shop",
        "web-split",
        "web",
        &format!("  - backendRefs:\n    - {{name: web-a, port: 80, weight: {wa}}}\n    - {{name: web-b, port: 80, weight: {wb}}}\n"),
    )
}

/// (RSS in KiB, open fds) of this process.
fn sample() -> (u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// GET `http://HOST/soak` over an h2c (prior knowledge) connection to the proxy, opened on
/// first use and again after it fails.
async fn h2_get(
    conn: &mut Option<H2>,
    proxy: std::net::SocketAddr,
) -> Result<Response<hyper::body::Incoming>, String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| e.to_string())?;
        let (send, driver) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        *conn = Some(send);
    }
    let send = conn.as_mut().expect("just opened");
    send.ready().await.map_err(|e| e.to_string())?;
    let req = Request::get(format!("http://{HOST}/soak"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.send_request(req).await.map_err(|e| format!("{e:?}"))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Unexpected outcomes by kind (`HTTP 503`, `transport`), with one example each.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Tally {
    fn error(&self, kind: String, example: String) {
        let mut e = self.errors.lock().unwrap();
        let entry = e.entry(kind).or_insert((0, example));
        entry.0 += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long soak: MESHROUTE_SOAK_SECONDS=300 cargo test --release --test soak -- --ignored --nocapture"]
async fn mixed_h1_h2c_load_with_weight_edits_keeps_rss_and_fds_flat() {
    let seconds = env_u64("MESHROUTE_SOAK_SECONDS", 300);
    let rps = env_u64("MESHROUTE_SOAK_RPS", 3000);
    let a = echo("web-a", false).await;
    let b = echo("web-b", true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut world = service("shop", "web");
    world += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    world += &service_with_endpoints_extra(
        "shop",
        "web-b",
        &[(&b, true)],
        "",
        ", appProtocol: kubernetes.io/h2c",
        "",
    );
    write(dir.path(), "world.yaml", &world);
    write(dir.path(), "route.yaml", &split_route(50, 50));
    let running = start_on(dir.path()).await;
    let proxy = running.proxy_addr;
    let first_generation = running.proxy.table().generation;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Half the workers speak HTTP/1.1 (kept-alive pools), half h2c with prior knowledge.
    let workers = 32u64;
    let period = Duration::from_secs_f64(workers as f64 / rps as f64);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let h2 = w % 2 == 1;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http();
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut h2_conn = None;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // h2c carries the authority as `:authority` (a differing `host` is refused),
                // so that request is made on a connection opened to the proxy by hand.
                let sent = if h2 {
                    h2_get(&mut h2_conn, proxy).await
                } else {
                    let req = Request::get(format!("http://{proxy}/soak"))
                        .header("host", HOST)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    client.request(req).await.map_err(|e| format!("{e:?}"))
                };
                match sent {
                    Ok(rsp) => {
                        let status = rsp.status();
                        let backend = rsp.headers().get("x-backend").cloned();
                        let body = rsp.into_body().collect().await;
                        match (status.as_u16(), backend, body) {
                            (200, Some(_), Ok(_)) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            (_, _, Err(e)) => tally.error("body".into(), e.to_string()),
                            (s, _, Ok(body)) => tally.error(
                                format!("HTTP {s}"),
                                String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                            ),
                        }
                    }
                    Err(e) => tally.error("transport".into(), e),
                }
            }
        }));
    }

    // Weight edits every 3 s; samples every 5 s.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    let mut edits = 0u64;
    // The first sample after 5 s of load: a t=0 sample would count warm-up as growth.
    let mut next_sample = started + Duration::from_secs(5);
    let mut next_edit = started + Duration::from_secs(3);
    let mut last_ok = 0;
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_edit {
            let (wa, wb) = {
                let mut rng = rand::rng();
                (rng.random_range(0..=100u32), rng.random_range(1..=100u32))
            };
            write(dir.path(), "route.yaml", &split_route(wa, wb));
            edits += 1;
            next_edit += Duration::from_secs(3);
        }
        if now >= next_sample {
            let (rss, fds) = sample();
            let ok = tally.ok.load(Ordering::Relaxed);
            let t = started.elapsed().as_secs();
            println!(
                "soak t={t:>4}s rss={:>6} KiB fds={fds:>4} ok={ok} (+{}) generation={}",
                rss,
                ok - last_ok,
                running.proxy.table().generation
            );
            last_ok = ok;
            samples.push((rss, fds));
            next_sample += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let generations = running.proxy.table().generation - first_generation;
    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.errors.lock().unwrap().clone();
    let errored: u64 = errors.values().map(|(n, _)| n).sum();
    println!(
        "soak: {ok} ok, {errored} errors in {elapsed:.0}s = {:.0} rps (target {rps}); {edits} weight edits, {generations} generations",
        (ok + errored) as f64 / elapsed
    );
    for (kind, (n, example)) in &errors {
        println!("soak: {n} × {kind}, e.g. {example}");
    }
    running.shutdown().await.unwrap();

    // Flat: the last third against the first third of the samples.
    assert!(
        samples.len() >= 3,
        "too short a soak to compare: {samples:?}"
    );
    let third = samples.len() / 3;
    let (first, last) = (&samples[..third], &samples[samples.len() - third..]);
    let mean = |s: &[(u64, usize)]| s.iter().map(|x| x.0).sum::<u64>() / s.len() as u64;
    let max_fd = |s: &[(u64, usize)]| s.iter().map(|x| x.1).max().unwrap_or(0);
    let (rss_first, rss_last) = (mean(first), mean(last));
    let (fd_first, fd_last) = (max_fd(first), max_fd(last));
    println!(
        "soak: RSS {rss_first} → {rss_last} KiB (mean of first and last third), fds {fd_first} → {fd_last} (max)"
    );
    assert!(errors.is_empty(), "unexpected outcomes: {errors:?}");
    assert!(
        rss_last <= rss_first + rss_first / 4 + 8 * 1024,
        "RSS grew: {rss_first} → {rss_last} KiB"
    );
    assert!(fd_last <= fd_first + 16, "fds grew: {fd_first} → {fd_last}");
    assert!(edits == 0 || generations > 0, "no weight edit was applied");
}
