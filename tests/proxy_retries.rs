//! Retries end to end (GEP-1731 `retry` and Linkerd's `retry.linkerd.io/*` annotations) and
//! `Retry-After` penalties in the balancer: real sockets, scripted backends that answer each request as their script says, and counts
//! of what the backends saw. Timing bounds are generous: the box running these is small and
//! shared.

#[path = "support/proxy.rs"]
mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

const HOST: &str = "web.shop.svc.cluster.local";

/// One scripted answer.
#[derive(Clone, Copy, Debug)]
enum Step {
    Status(u16),
    /// Wait this many milliseconds, then answer 200.
    Delay(u64),
    /// This status with `Retry-After: <seconds>`.
    Throttle(u16, u64),
}

/// A backend answering its requests in script order (200 once the script is used up) and
/// recording the body of each.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Step>>>,
    /// Answered with this once the script is used up.
    then: Arc<Mutex<Step>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    count: Arc<AtomicUsize>,
    /// Answer without reading the request body.
    eager: Arc<std::sync::atomic::AtomicBool>,
    /// Every n-th request (1-based) waits 500 ms once the script is used up; 0: none.
    slow_every: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: &[Step]) -> Scripted {
        Self::start_at("127.0.0.1:0", script).await
    }

    async fn start_at(addr: &str, script: &[Step]) -> Scripted {
        let listener = TcpListener::bind(addr).await.unwrap();
        let s = Scripted {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            then: Arc::new(Mutex::new(Step::Status(200))),
            bodies: Arc::default(),
            count: Arc::default(),
            eager: Arc::default(),
            slow_every: Arc::default(),
        };
        let state = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(st.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        s
    }

    /// Answer with `step` once the script is used up.
    fn then(self, step: Step) -> Self {
        *self.then.lock().unwrap() = step;
        self
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let step = {
            let next = self.script.lock().unwrap().pop_front();
            next.unwrap_or(*self.then.lock().unwrap())
        };
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.slow_every.load(Ordering::SeqCst);
        let step = if every > 0 && n % every == 0 {
            Step::Delay(500)
        } else {
            step
        };
        if self.eager.load(Ordering::SeqCst) {
            let Step::Status(status) = step else {
                unreachable!("eager backends answer statuses")
            };
            let mut rsp = Response::new(Full::new(Bytes::from("eager")));
            *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
            return rsp;
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.bodies.lock().unwrap().push(body);
        let (status, retry_after) = match step {
            Step::Status(s) => (s, None),
            Step::Delay(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (200, None)
            }
            Step::Throttle(s, secs) => (s, Some(secs)),
        };
        let mut rsp = Response::new(Full::new(Bytes::from(format!("answer {status}"))));
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(secs) = retry_after {
            rsp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        rsp
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// YAML for Service `name` whose one endpoint is `b` (port 80 → its port), with annotations.
fn service_for(ns: &str, name: &str, b: &Scripted, annotations: &str) -> String {
    let port = b.addr.port();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{{annotations}}}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n---\n"
    )
}

/// A parent `web` routed by one rule (`rule_extra` under the rule) to Service `web-a` = `b`.
async fn setup(b: &Scripted, rule_extra: &str) -> (tempfile::TempDir, meshroute::run::Running) {
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_for("shop", "web-a", b, "");
    y += &route(
        "shop",
        "retrying",
        "web",
        &format!("  - backendRefs: [{{name: web-a, port: 80}}]\n{rule_extra}"),
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    (dir, m)
}

fn metric(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn listed_codes_are_retried_and_others_are_not() {
    let b = Scripted::start(&[Step::Status(503), Step::Status(200)]).await;
    let (_dir, m) = setup(&b, "    retry: {codes: [503], attempts: 2}\n").await;
    let c = client();
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.count(), 2, "one retry after the 503");

    // 500 is not in `codes`: answered as it is.
    b.script
        .lock()
        .unwrap()
        .extend([Step::Status(500), Step::Status(200)]);
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 500);
    assert_eq!(b.count(), 3, "no retry after the 500");

    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_retry_requests_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "outbound_http_route_retry_successes_total"),
        1
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn attempts_cap_the_retries_and_the_last_answer_is_passed_on() {
    let b = Scripted::start(&[]).await.then(Step::Status(503));
    let (_dir, m) = setup(&b, "    retry: {codes: [503], attempts: 2}\n").await;
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), None, "the endpoint's own 503 is passed on");
    assert_eq!(b.count(), 3, "first attempt + 2 retries");
    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_retry_limit_exceeded_total"),
        1,
        "{metrics}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_attempt_over_backend_request_is_retried() {
    let b = Scripted::start(&[Step::Delay(3000), Step::Status(200)]).await;
    let (_dir, m) = setup(
        &b,
        "    timeouts: {request: 5s, backendRequest: 200ms}\n    retry: {attempts: 1}\n",
    )
    .await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.count(), 2);
    assert!(took < Duration::from_millis(2500), "{took:?}");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_request_timeout_ends_every_attempt_at_its_deadline() {
    let b = Scripted::start(&[]).await.then(Step::Delay(3000));
    let (_dir, m) = setup(
        &b,
        "    timeouts: {request: 700ms, backendRequest: 200ms}\n    retry: {attempts: 10, backoff: 10ms}\n",
    )
    .await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    let took = started.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.error()),
        (504, Some("request-timeout")),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(690),
        "answered early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered late: {took:?}"
    );
    let n = b.count();
    assert!((2..=4).contains(&n), "{n} attempts in 700ms of 200ms each");
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn small_bodies_are_replayed_and_large_ones_sent_once() {
    let b = Scripted::start(&[Step::Status(503), Step::Status(200)]).await;
    let (_dir, m) = setup(&b, "    retry: {codes: [503], attempts: 1}\n").await;
    let c = client();
    let small = Bytes::from(vec![b'x'; 1000]);
    let r = send(
        &c,
        m.proxy_addr,
        Request::post("/").header("host", HOST),
        small.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(*b.bodies.lock().unwrap(), [small.clone(), small]);

    // Over 64 KiB: sent once, and its 503 is the answer.
    b.script
        .lock()
        .unwrap()
        .extend([Step::Status(503), Step::Status(200)]);
    let large = Bytes::from(vec![b'y'; 100 * 1024]);
    let r = send(
        &c,
        m.proxy_addr,
        Request::post("/").header("host", HOST),
        large.clone(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(b.count(), 3);
    assert_eq!(b.bodies.lock().unwrap()[2], large, "sent whole, once");
    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_retry_overflow_total"),
        1,
        "{metrics}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_backend_is_retried_on_another_by_weight() {
    let live = Scripted::start(&[]).await;
    let dead = Backend::dead("dead").await;
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_for("shop", "web-a", &live, "");
    y += &service_with_endpoints("shop", "web-dead", &[(&dead, true)]);
    y += &route(
        "shop",
        "retrying",
        "web",
        "  - backendRefs: [{name: web-a, port: 80, weight: 9}, {name: web-dead, port: 80, weight: 1}]\n    retry: {attempts: 5}\n",
    );
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    // A request fails only if all 6 picks go to the dead backend (10^-6 each). Half carry a
    // body: one that never reached an endpoint is sent again as it is.
    for i in 0..100 {
        let body = Bytes::from(if i % 2 == 0 { vec![] } else { vec![b'z'; 2000] });
        let r = send(
            &c,
            m.proxy_addr,
            Request::post("/").header("host", HOST),
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(live.bodies.lock().unwrap().last(), Some(&body));
    }
    assert_eq!(live.count(), 100);
    // About 10 requests went to the dead backend first (none at all: 0.9^100).
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(
        metric(&metrics, "outbound_http_route_retry_requests_total") > 0,
        "{metrics}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_budget_bounds_the_extra_load_on_a_failing_backend() {
    let b = Scripted::start(&[]).await.then(Step::Status(503));
    let (_dir, m) = setup(&b, "    retry: {codes: [503], attempts: 3}\n").await;
    let requests = 1200usize;
    let c = client();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        let addr = m.proxy_addr;
        tasks.push(tokio::spawn(async move {
            for _ in (w..requests).step_by(8) {
                let r = get(&c, addr, HOST, "/").await;
                assert_eq!(r.status, 503);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ratio = b.count() as f64 / requests as f64;
    // 20% of the requests, or the floor of 10/s over 10 s (100 per window) if more: ≤ 1.2 when
    // it all fits in one 10 s window (it takes about a second). Without a budget: 4.0.
    let windows = (started.elapsed().as_secs_f64() / 10.0).ceil().max(1.0);
    let bound = 1.0 + f64::max(0.2, 100.0 * windows / requests as f64) + 0.01;
    assert!(ratio <= bound, "attempts/requests = {ratio} > {bound}");
    assert!(ratio >= 1.05, "some retries went out: {ratio}");
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(
        metric(&metrics, "outbound_http_route_retry_overflow_total") > 0,
        "{metrics}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn linkerd_annotations_on_the_service_and_the_route_which_wins() {
    let b = Scripted::start(&[Step::Status(502), Step::Status(503), Step::Status(200)]).await;
    let dir = tempfile::tempdir().unwrap();
    let annotations = "retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\"";
    // A parent without routes passes through to its own endpoints, with its annotations.
    let y = service_for("shop", "web", &b, annotations);
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.count(), 3, "two retries (limit 2) on 5xx");

    // A route with annotations of its own replaces the Service's: only 429 is retried.
    let route_yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop, annotations: {retry.linkerd.io/http: \"429\"}}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n";
    write(dir.path(), "route.yaml", route_yaml);
    wait_generation(&m, 2).await;
    b.script
        .lock()
        .unwrap()
        .extend([Step::Status(503), Step::Status(429), Step::Status(200)]);
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 503, "5xx is not the route's");
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200, "429 retried once (default limit 1)");
    assert_eq!(b.count(), 6);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn linkerd_timeout_annotation_bounds_and_retries_each_attempt() {
    let b = Scripted::start(&[Step::Delay(3000), Step::Status(200)]).await;
    let dir = tempfile::tempdir().unwrap();
    let y = service_for("shop", "web", &b, "retry.linkerd.io/timeout: 200ms");
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.count(), 2);
    assert!(started.elapsed() < Duration::from_millis(2500));
    m.shutdown().await.unwrap();
}

#[test]
fn check_accepts_the_retry_field_and_names_a_bad_one_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{name: http, port: 80}]\n";
    write(dir.path(), "svc.yaml", svc);
    let good = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - backendRefs: [{name: web, port: 80}]\n    retry: {codes: [500, 503], attempts: 3, backoff: 100ms}\n";
    write(dir.path(), "route.yaml", good);
    let report = meshroute::cli::check(dir.path());
    assert!(report.ok, "{}", report.to_text());

    let bad = good.replace("attempts: 3", "attempts: 3, codez: [1]");
    write(dir.path(), "route.yaml", &bad);
    let report = meshroute::cli::check(dir.path());
    let out = report.to_text();
    assert!(!report.ok);
    assert!(
        out.contains("route.yaml:8:") && out.contains("spec.rules[0].retry.codez: unknown field"),
        "{out}"
    );

    let bad = good.replace("backoff: 100ms", "backoff: soon");
    write(dir.path(), "route.yaml", &bad);
    let out = meshroute::cli::check(dir.path()).to_text();
    assert!(
        out.contains("route.yaml:8:") && out.contains("spec.rules[0].retry.backoff"),
        "{out}"
    );
}

#[tokio::test]
async fn an_xbackendtrafficpolicy_sets_the_budget_of_its_service() {
    let b = Scripted::start(&[]).await.then(Step::Status(503));
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_for("shop", "web-a", &b, "");
    y += &route(
        "shop",
        "retrying",
        "web",
        "  - backendRefs: [{name: web-a, port: 80}]\n    retry: {codes: [503], attempts: 3}\n",
    );
    // A tenth of the requests, and no floor (the default would allow 100 retries here).
    y += "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {name: web-a-budget, namespace: shop}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: web-a}]\n  retryConstraint:\n    budget: {percent: 10, interval: 10s}\n    minRetryRate: {count: 0, interval: 1s}\n";
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    let requests = 200;
    for _ in 0..requests {
        assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 503);
    }
    let ratio = b.count() as f64 / requests as f64;
    assert!(
        (1.05..=1.11).contains(&ratio),
        "attempts/requests = {ratio}"
    );
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_body_still_streaming_is_never_waited_for_nor_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Scripted::start(&[Step::Status(503)]).await;
    b.eager.store(true, Ordering::SeqCst);
    let (_dir, m) = setup(&b, "    retry: {codes: [503], attempts: 2}\n").await;
    // One chunk, then the client waits for the answer before it sends the rest: buffering
    // the body before the first attempt would never answer.
    let mut s = tokio::net::TcpStream::connect(m.proxy_addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "proxy closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was still open");
    let text = String::from_utf8_lossy(&got);
    // Not all of the body was read when the 503 came: it cannot be replayed.
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert_eq!(b.count(), 1);
    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_retry_overflow_total"),
        1,
        "{metrics}"
    );
    m.shutdown().await.unwrap();
}

/// Service `web` (with `annotations`) whose two endpoints are `a` (127.0.0.1) and a second
/// backend on 127.0.0.2, same port; `None` when 127.0.0.2 cannot be bound here.
async fn two_endpoints(a: &Scripted, annotations: &str) -> Option<(Scripted, String)> {
    let port = a.addr.port();
    let Ok(probe) = std::net::TcpListener::bind(("127.0.0.2", port)) else {
        eprintln!("skipped: cannot bind 127.0.0.2:{port}");
        return None;
    };
    drop(probe);
    let b = Scripted::start_at(&format!("127.0.0.2:{port}"), &[]).await;
    let y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n- addresses: [\"127.0.0.2\"]\n  conditions: {{ready: true}}\n"
    );
    Some((b, y))
}

#[tokio::test]
async fn retry_after_keeps_p2c_away_from_an_endpoint_for_that_long() {
    let a = Scripted::start(&[Step::Throttle(503, 2)]).await;
    let Some((b, y)) = two_endpoints(&a, "").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    // Until A has answered its 503 + Retry-After: 2.
    let mut throttled = false;
    for _ in 0..200 {
        let r = get(&c, m.proxy_addr, HOST, "/").await;
        if r.status == 503 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "A never got a request");
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    }
    let a_during = a.count();
    if started.elapsed() < Duration::from_millis(1900) {
        // P2C with two endpoints compares both on every pick: A must lose every time.
        assert_eq!(a_during, 1, "A got requests while penalised");
    }
    // After the penalty A takes its share again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..40 {
        assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    }
    assert!(
        a.count() > a_during,
        "A never came back ({} requests)",
        a.count()
    );
    assert!(b.count() > 0);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn linkerd_failure_accrual_ejects_after_consecutive_5xx_and_a_probe_brings_it_back() {
    let a = Scripted::start(&[]).await.then(Step::Status(500));
    let annotations = "balancer.linkerd.io/failure-accrual: consecutive, \
        balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\", \
        balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 300ms, \
        balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 300ms, \
        balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: \"0\"";
    let Some((b, y)) = two_endpoints(&a, annotations).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    let c = client();
    let started = Instant::now();
    for _ in 0..100 {
        get(&c, m.proxy_addr, HOST, "/").await;
    }
    let elapsed = started.elapsed().as_millis() as usize;
    // 3 failures eject A; then one probe per 300 ms at most.
    let bound = 3 + elapsed / 300 + 1;
    assert!(
        a.count() <= bound,
        "A got {} of 100 requests in {elapsed} ms (at most {bound})",
        a.count()
    );
    assert!(b.count() >= 100 - bound);
    let (_, metrics) = admin(&m, "/metrics").await;
    assert!(
        metric(&metrics, "meshroute_endpoint_ejections_total") >= 1,
        "{metrics}"
    );

    // A recovers: its next probe succeeds and it takes its share again.
    *a.then.lock().unwrap() = Step::Status(200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = a.count();
    for _ in 0..60 {
        assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    }
    assert!(
        a.count() - before >= 10,
        "A took {} of 60",
        a.count() - before
    );
    m.shutdown().await.unwrap();
}

/// Parent `web` → Service `web-a` = `b`, by a route with `annotations` and `rule_extra`.
async fn setup_annotated(
    b: &Scripted,
    annotations: &str,
    extra_yaml: &str,
) -> (tempfile::TempDir, meshroute::run::Running) {
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_for("shop", "web-a", b, "");
    y += &format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: hedged, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}]\n  rules:\n  - backendRefs: [{{name: web-a, port: 80}}]\n---\n"
    );
    y += extra_yaml;
    write(dir.path(), "all.yaml", &y);
    let m = start_on(dir.path()).await;
    (dir, m)
}

#[tokio::test]
async fn a_slow_answer_is_hedged_and_the_first_head_wins() {
    let b = Scripted::start(&[Step::Delay(3000)]).await;
    let (_dir, m) = setup_annotated(&b, "meshroute.dev/hedge: 50ms", "").await;
    let c = client();
    let started = Instant::now();
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(took < Duration::from_millis(1500), "not hedged: {took:?}");
    assert_eq!(b.count(), 2, "the first attempt and one hedge");
    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_hedge_requests_total"),
        1,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "outbound_http_route_hedge_wins_total"), 1);
    // A fast answer is never hedged.
    let r = get(&c, m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(b.count(), 3);

    // A request with a body is not hedged: it waits for its one attempt.
    b.script.lock().unwrap().push_back(Step::Delay(600));
    let started = Instant::now();
    let r = send(
        &c,
        m.proxy_addr,
        Request::post("/").header("host", HOST),
        Bytes::from_static(b"body"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(b.count(), 4);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn p95_hedging_waits_to_know_the_rules_latency_then_hedges_its_slow_tail() {
    let b = Scripted::start(&[Step::Delay(600)]).await;
    let (_dir, m) = setup_annotated(&b, "meshroute.dev/hedge: p95", "").await;
    let c = client();
    // Nothing observed yet: a slow answer is waited for, not hedged.
    let started = Instant::now();
    assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(b.count(), 1, "no hedge before the rule's latency is known");
    // Fast answers teach it the rule's p95 (a few milliseconds here).
    for _ in 0..40 {
        assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    }
    assert_eq!(b.count(), 41, "fast answers are not hedged");
    // Now a slow answer is hedged after about the p95 and the hedge's fast answer wins.
    b.script.lock().unwrap().push_back(Step::Delay(3000));
    let started = Instant::now();
    assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "not hedged"
    );
    assert_eq!(b.count(), 43, "the slow attempt and one hedge");
    let (_, metrics) = admin(&m, "/metrics").await;
    assert_eq!(
        metric(&metrics, "outbound_http_route_hedge_requests_total"),
        1
    );
    assert_eq!(metric(&metrics, "outbound_http_route_hedge_wins_total"), 1);
    m.shutdown().await.unwrap();
}

#[tokio::test]
async fn hedges_draw_on_the_retry_budget() {
    let b = Scripted::start(&[Step::Delay(600)]).await;
    let budget = "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {name: none, namespace: shop}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: web-a}]\n  retryConstraint:\n    budget: {percent: 0}\n    minRetryRate: {count: 0}\n";
    let (_dir, m) = setup_annotated(&b, "meshroute.dev/hedge: \"50ms,3\"", budget).await;
    let started = Instant::now();
    let r = get(&client(), m.proxy_addr, HOST, "/").await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(550));
    assert_eq!(b.count(), 1, "an empty budget sends no hedge");
    m.shutdown().await.unwrap();
}

/// Figures for the note, not a check (timings never go into assertions): p50/p99 of 300
/// requests when every 10th (or 50th) answer takes 500 ms, without and with
/// `meshroute.dev/hedge: 50ms` or `p95` (which helps only when the slow share is under 5%).
/// `cargo test --test proxy_retries hedging_figures -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn hedging_figures() {
    for (every, hedge) in [
        (10, ""),
        (10, "meshroute.dev/hedge: 50ms"),
        (10, "meshroute.dev/hedge: p95"),
        (50, ""),
        (50, "meshroute.dev/hedge: p95"),
    ] {
        let b = Scripted::start(&[]).await;
        b.slow_every.store(every, Ordering::SeqCst);
        let (_dir, m) = setup_annotated(&b, hedge, "").await;
        let c = client();
        let n = 300;
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            assert_eq!(get(&c, m.proxy_addr, HOST, "/").await.status, 200);
            took.push(started.elapsed());
        }
        took.sort();
        println!(
            "1 in {every:<2} slow, {:<28} p50 {:>7.1?} p99 {:>7.1?} attempts/requests {:.2}",
            if hedge.is_empty() { "no hedge" } else { hedge },
            took[n / 2],
            took[n * 99 / 100],
            b.count() as f64 / n as f64
        );
        m.shutdown().await.unwrap();
    }
}
