//! What users write survives a real API server, and meshroute understands whatever it returns:
//!
//! - every version of each of our kinds, applied with `crds/meshroute-crds.yaml` installed as
//!   shipped, reads back unchanged in every other served version (no conversion webhook: the
//!   API server stores and serves the same object under every version);
//! - a v1alpha1 TrafficSplit (quantity weights) watched as v1alpha4 routes by its weights, and
//!   a split meshroute refuses is named on `/status` and in a Warning Event;
//! - `meshroute crds --gateway-api` applies as printed and refuses what upstream refuses;
//! - `meshroute run --kube` with default flags on a fresh cluster writes status, and a replica
//!   stopped right after winning the Lease hands it over at once.

#[path = "support/e2e.rs"]
mod e2e;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{cluster, meshroute_bin, our_parent, own_cluster, repo, unique, Kubectl, Mesh};
use serde_json::{json, Value};

/// A kind as `plural.group`, its `kind`, and per version the spec its users would write.
type Sample = (&'static str, &'static str, Vec<(&'static str, Value)>);

fn samples() -> Vec<Sample> {
    let parent = json!([{"group": "core", "kind": "Service", "name": "web"}]);
    vec![
        (
            "trafficsplits.split.smi-spec.io",
            "TrafficSplit",
            vec![
                (
                    "v1alpha1",
                    json!({"service": "web", "backends": [
                        {"service": "web-v1", "weight": "500m"},
                        {"service": "web-v2", "weight": 1}]}),
                ),
                (
                    "v1alpha2",
                    json!({"service": "web", "backends": [
                        {"service": "web-v1", "weight": 90},
                        {"service": "web-v2", "weight": 10}]}),
                ),
                (
                    "v1alpha3",
                    json!({"service": "web", "backends": [
                        {"service": "web-v1", "weight": 0},
                        {"service": "web-v2", "weight": 100}],
                        "matches": [{"kind": "HTTPRouteGroup", "name": "canary"}]}),
                ),
                (
                    "v1alpha4",
                    json!({"service": "web", "backends": [
                        {"service": "web-v1", "weight": 50},
                        {"service": "web-v2", "weight": 50}],
                        "matches": [{"kind": "HTTPRouteGroup", "name": "canary",
                                     "apiGroup": "specs.smi-spec.io"}]}),
                ),
            ],
        ),
        (
            "httproutegroups.specs.smi-spec.io",
            "HTTPRouteGroup",
            ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"]
                .into_iter()
                .map(|v| {
                    (
                        v,
                        json!({"matches": [{"name": "canary", "pathRegex": "/api/.*",
                            "methods": ["GET", "POST"], "headers": {"x-canary": "yes"}}]}),
                    )
                })
                .collect(),
        ),
        (
            "httproutes.policy.linkerd.io",
            "HTTPRoute",
            vec![
                (
                    "v1alpha1",
                    json!({"parentRefs": parent, "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "backendRefs": [{"name": "web-v2", "port": 80}]}]}),
                ),
                (
                    "v1beta1",
                    json!({"parentRefs": parent, "hostnames": ["web.shop"], "rules": [{
                        "matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "yes"}]}],
                        "filters": [{"type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-via", "value": "meshroute"}]}}],
                        "backendRefs": [{"name": "web-v2", "namespace": "other", "port": 8080}]}]}),
                ),
                (
                    "v1beta2",
                    json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}],
                        "rules": [{"backendRefs": [
                            {"group": "", "kind": "Service", "name": "web-v1", "port": 80, "weight": 90},
                            {"name": "web-v2", "port": 80, "weight": 10}]}]}),
                ),
                (
                    "v1beta3",
                    json!({"parentRefs": parent, "rules": [{
                        "matches": [{"method": "GET", "path": {"type": "Exact", "value": "/"}}],
                        "backendRefs": [{"name": "web-v1", "port": 80, "weight": 3}],
                        "timeouts": {"request": "5s", "backendRequest": "1s"}}]}),
                ),
            ],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_of_our_kinds_reads_back_in_every_other_version_with_nothing_lost() {
    let test = "every_version_of_our_kinds_reads_back_in_every_other_version_with_nothing_lost";
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    let ns = unique("versions");
    k.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ))
    .await;
    let mut lost = Vec::new();
    for (resource, kind, written) in samples() {
        let (plural, group) = resource.split_once('.').expect("plural.group");
        let versions: Vec<&str> = written.iter().map(|(v, _)| *v).collect();
        for (version, spec) in &written {
            let name = format!("{}-{version}", plural.trim_end_matches('s'));
            let obj = json!({
                "apiVersion": format!("{group}/{version}"),
                "kind": kind,
                "metadata": {"name": name, "namespace": ns},
                "spec": spec,
            });
            let out = k.arun(&["apply", "-f", "-"], &obj.to_string()).await;
            assert!(out.ok, "{kind} {version} refused: {}", out.stderr);
            for read in &versions {
                let got = k
                    .get_json(&[&format!("{plural}.{read}.{group}"), &name, "-n", &ns])
                    .await;
                if got["spec"] != *spec {
                    lost.push(format!(
                        "{kind} written as {version}, read as {read}:\n  wrote {spec}\n  read  {}",
                        got["spec"]
                    ));
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "the API server lost data:\n{}",
        lost.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_crd_as_printed_applies_and_refuses_what_upstream_refuses() {
    let test = "gateway_api_crd_as_printed_applies_and_refuses_what_upstream_refuses";
    // The shared cluster installs `meshroute crds --gateway-api` exactly as printed.
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    let printed = e2e::gateway_crd();
    assert!(
        printed.contains(
            "api-approved.kubernetes.io: https://github.com/kubernetes-sigs/gateway-api/pull/3328"
        ),
        "the printed CRD carries upstream's approval annotation"
    );
    let applied = k.run_in(&["apply", "--server-side", "-f", "-"], &printed);
    assert!(applied.ok, "{}", applied.stderr);

    let ns = unique("gwapi");
    k.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ))
    .await;
    let route = |name: &str, timeouts: &str, weight: i64| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
  - backendRefs: [{{name: web-v1, port: 80, weight: {weight}}}]
    timeouts: {timeouts}
"#
        )
    };
    let good = k
        .arun(
            &["apply", "-f", "-"],
            &route("good", "{request: 1h30m, backendRequest: 300ms}", 1_000_000),
        )
        .await;
    assert!(good.ok, "a valid route is accepted: {}", good.stderr);
    for (name, timeouts, weight, why) in [
        (
            "bad-duration",
            "{request: 5 seconds}",
            1,
            "timeouts.request in body should match '^([0-9]{1,5}(h|m|s|ms)){1,4}$'",
        ),
        (
            "bad-weight",
            "{request: 5s}",
            1_000_001,
            "weight in body should be less than or equal to 1000000",
        ),
        (
            "negative-weight",
            "{request: 5s}",
            -1,
            "weight in body should be greater than or equal to 0",
        ),
        (
            "backend-longer",
            "{request: 5s, backendRequest: 10s}",
            1,
            "backendRequest timeout cannot be longer than request timeout",
        ),
    ] {
        let out = k
            .arun(&["apply", "-f", "-"], &route(name, timeouts, weight))
            .await;
        assert!(!out.ok, "{name}: the API server accepted it");
        assert!(
            out.stderr.contains(why),
            "{name}: expected the refusal to mention {why:?}: {}",
            out.stderr
        );
    }
    // `0s` disables the request timeout, so any backendRequest goes.
    let zero = k
        .arun(
            &["apply", "-f", "-"],
            &route("zero", "{request: 0s, backendRequest: 10s}", 1),
        )
        .await;
    assert!(zero.ok, "{}", zero.stderr);

    // GEP-1731 `retry` is in the printed schema: kept as written, bad codes refused.
    let with_retry = |name: &str, codes: &str| {
        format!(
            "{}    retry: {{codes: {codes}, attempts: 2, backoff: 100ms}}\n",
            route(name, "{request: 5s}", 1)
        )
    };
    k.apply(&with_retry("retrying", "[503]")).await;
    let got = k
        .get_json(&[
            "httproutes.gateway.networking.k8s.io",
            "retrying",
            "-n",
            &ns,
        ])
        .await;
    assert_eq!(
        got["spec"]["rules"][0]["retry"],
        json!({"codes": [503], "attempts": 2, "backoff": "100ms"}),
        "retry pruned: {got}"
    );
    let bad = k
        .arun(&["apply", "-f", "-"], &with_retry("bad-retry", "[99]"))
        .await;
    assert!(!bad.ok, "a retry code of 99 was accepted");
    assert!(
        bad.stderr
            .contains("should be greater than or equal to 400"),
        "{}",
        bad.stderr
    );
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1alpha1_split_watched_as_v1alpha4_routes_by_its_quantity_weights() {
    let test = "v1alpha1_split_watched_as_v1alpha4_routes_by_its_quantity_weights";
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    let ns = unique("quantity");
    let svc = |name: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n")
    };
    k.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n{}{}{}{}",
        svc("web"),
        svc("web-v1"),
        svc("web-v2"),
        svc("shop")
    ))
    .await;
    k.apply(&format!(
        r#"apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {{name: web, namespace: {ns}}}
spec:
  service: web
  backends: [{{service: web-v1, weight: 1}}, {{service: web-v2, weight: 500m}}]
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {{name: shop, namespace: {ns}}}
spec:
  service: shop
  backends: [{{service: web-v1, weight: 2000k}}]
"#
    ))
    .await;
    let mesh = Mesh::start(&c.admin, &ns).await;
    let plan_version = k
        .get_json(&["trafficsplits.v1alpha4.split.smi-spec.io", "web", "-n", &ns])
        .await;
    assert_eq!(
        plan_version["spec"]["backends"][1]["weight"], "500m",
        "read as v1alpha4 the stored split still has its quantity"
    );
    let explained = meshroute::cli::explain_table(
        &mesh.running().proxy.table(),
        &meshroute::cli::ExplainQuery {
            host: format!("web.{ns}"),
            path: "/".into(),
            method: "GET".into(),
            headers: vec![],
        },
    )
    .expect("explain")
    .to_text();
    assert!(
        explained.contains("route TrafficSplit") || explained.contains("TrafficSplit"),
        "the split routes `web`, it does not pass through:\n{explained}"
    );
    assert!(
        explained.contains(" 66.7% weight 1000 Service")
            && explained.contains(" 33.3% weight 500 Service"),
        "1 : 500m is 2 : 1:\n{explained}"
    );

    // A split meshroute refuses (2000k is above the 1000000 maximum) is not silent.
    let status = mesh.running().status.snapshot();
    assert!(
        status
            .errors
            .iter()
            .any(|e| e.contains(&format!("{ns}/shop")) && e.contains("2000k")),
        "/status names the refused split: {:?}",
        status.errors
    );
    let event = wait_for("a Warning Event on the refused split", 30, async || {
        let events = k.get_json(&["events.events.k8s.io", "-n", &ns]).await;
        events["items"]
            .as_array()?
            .iter()
            .find(|e| {
                e["regarding"]["name"] == "shop"
                    && e["regarding"]["kind"] == "TrafficSplit"
                    && e["type"] == "Warning"
            })
            .cloned()
    })
    .await;
    assert_eq!(event["reason"], "Invalid", "{event}");
    assert!(
        event["note"].as_str().unwrap_or("").contains("2000k"),
        "{event}"
    );
    mesh.shutdown().await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// SIGTERM (through kill(1): this crate forbids `unsafe`), then wait for the exit.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("meshroute did not exit within 20s of SIGTERM");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` on the admin port: (status, body).
fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `meshroute run --kube` as a newcomer runs it: default flags but for the listen addresses
/// (other tests may hold the default ports).
fn run_kube(kubeconfig: &std::path::Path, extra: &[&str], log: &std::path::Path) -> (Proc, u16) {
    let admin = free_port();
    let child = Command::new(meshroute_bin())
        .args(["run", "--kube", "--listen", "127.0.0.1:0"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAMESPACE")
        .env_remove("POD_NAME")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("meshroute binary");
    (Proc(child), admin)
}

fn log_of(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_run_kube_with_default_flags_writes_status_and_hands_over_the_lease() {
    let test = "newcomer_run_kube_with_default_flags_writes_status_and_hands_over_the_lease";
    let Some(own) = own_cluster(test, "newcomer") else {
        return;
    };
    let c = &own.0;
    let k = Kubectl::new(&c.admin);
    // What the README tells a newcomer: our CRDs, then a route. No `kubectl apply -f deploy/`.
    let crds = std::fs::read_to_string(repo().join("crds/meshroute-crds.yaml")).expect("crds");
    k.run_in(&["apply", "--server-side", "-f", "-"], &crds)
        .expect_ok();
    k.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/httproutes.policy.linkerd.io",
    ])
    .expect_ok();
    // Their kubeconfig's context points at their team's namespace.
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&c.admin, &kubeconfig).expect("copy kubeconfig");
    let me = Kubectl::new(&kubeconfig);
    me.run(&["create", "namespace", "team-a"]).expect_ok();
    me.run(&["config", "set-context", "--current", "--namespace=team-a"])
        .expect_ok();
    me.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: team-a}
spec: {ports: [{port: 80}]}
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: web, namespace: team-a}
spec:
  parentRefs: [{group: core, kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#,
    )
    .await;

    let log = dir.path().join("first.log");
    let (mut first, admin) = run_kube(&kubeconfig, &[], &log);
    let route = wait_for("meshroute's status on the route", 40, async || {
        let r = me.get_json(&["httproutes.policy.linkerd.io", "web"]).await;
        our_parent(&r).map(|_| r)
    })
    .await;
    assert!(our_parent(&route).is_some(), "{}", log_of(&log));
    let lease = me.get_json(&["lease", "meshroute"]).await;
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !holder.is_empty(),
        "the Lease is in team-a and held: {lease}"
    );
    let (code, body) = admin_get(admin, "/status").expect("/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).expect("/status json");
    assert_eq!(
        status["status_writer"]["lease"], "team-a/meshroute",
        "{status}"
    );
    assert_eq!(status["status_writer"]["leader"], true, "{status}");
    assert!(status["status_writer"]["error"].is_null(), "{status}");
    let (_, metrics) = admin_get(admin, "/metrics").expect("/metrics");
    assert!(
        metrics.contains("meshroute_status_writer_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshroute_status_writer_lease_ok 1"),
        "{metrics}"
    );

    // SIGTERM: the Lease is handed over, not held for its 15 s.
    first.terminate();
    let lease = me.get_json(&["lease", "meshroute"]).await;
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "released on shutdown: {lease}\n{}",
        log_of(&log)
    );

    // A replica stopped right after winning the Lease still hands it over.
    let log = dir.path().join("brief.log");
    let (mut brief, _) = run_kube(&kubeconfig, &[], &log);
    wait_for("the new replica to win the Lease", 30, async || {
        let l = me.get_json(&["lease", "meshroute"]).await;
        let h = l["spec"]["holderIdentity"].as_str()?.to_string();
        (!h.is_empty()).then_some(h)
    })
    .await;
    brief.terminate();
    let lease = me.get_json(&["lease", "meshroute"]).await;
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "released on shutdown right after winning it: {lease}\n{}",
        log_of(&log)
    );

    // A Lease that cannot be had is reported, not only logged once.
    let log = dir.path().join("nowhere.log");
    let (_nowhere, admin) = run_kube(&kubeconfig, &["--lease-namespace", "nowhere"], &log);
    let writer = wait_for("/status to report the lease error", 30, async || {
        let (_, body) = admin_get(admin, "/status")?;
        let status: Value = serde_json::from_str(&body).ok()?;
        let w = status["status_writer"].clone();
        w["error"].is_string().then_some(w)
    })
    .await;
    assert_eq!(writer["leader"], false, "{writer}");
    assert!(
        writer["error"].as_str().unwrap_or("").contains("nowhere"),
        "{writer}"
    );
    let (_, metrics) = admin_get(admin, "/metrics").expect("/metrics");
    assert!(
        metrics.contains("meshroute_status_writer_lease_ok 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshroute_status_writer_leader 0"),
        "{metrics}"
    );
}
