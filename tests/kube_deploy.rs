//! deploy/ against a real API server: every manifest passes server-side dry-run, the RBAC is
//! exactly the allowlist, and the real meshroute binary with a token bound only to the shipped
//! ClusterRole and Role lists, watches, writes status and Events, and elects one leader among
//! two replicas. Also: discovery picks what a cluster serves (linkerd-smi's TrafficSplit
//! v1alpha1/v1alpha2 only, or no SMI at all).

#[path = "support/e2e.rs"]
mod e2e;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    cluster, condition, meshroute_bin, our_parent, own_cluster, repo, unique, wait_object, Kubectl,
};
use serde_json::Value;

#[test]
fn every_deploy_manifest_passes_server_side_dry_run() {
    let test = "every_deploy_manifest_passes_server_side_dry_run";
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    // The namespace exists (the shared cluster applied it); dry-run everything else into it.
    let mut files: Vec<_> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut kinds = BTreeSet::new();
    for f in &files {
        let out = k.run(&[
            "apply",
            "--dry-run=server",
            "-f",
            &f.to_string_lossy(),
            "-o",
            "name",
        ]);
        assert!(out.ok, "{}: {}", f.display(), out.stderr);
        for line in out.stdout.lines() {
            kinds.insert(line.split('/').next().unwrap_or("").to_string());
        }
    }
    for want in [
        "namespace",
        "serviceaccount",
        "clusterrole.rbac.authorization.k8s.io",
        "clusterrolebinding.rbac.authorization.k8s.io",
        "role.rbac.authorization.k8s.io",
        "rolebinding.rbac.authorization.k8s.io",
        "deployment.apps",
        "service",
    ] {
        assert!(kinds.contains(want), "deploy/ lacks a {want}: {kinds:?}");
    }
}

#[test]
fn deployment_is_hardened_with_two_replicas_and_probes() {
    let text =
        std::fs::read_to_string(repo().join("deploy/20-deployment.yaml")).expect("deployment");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let ctr = &pod["containers"][0];
    let sc = &ctr["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(ctr["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(ctr["resources"]["requests"]["cpu"].is_string());
    assert!(ctr["resources"]["requests"]["memory"].is_string());
    let docker = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("Dockerfile");
    assert!(docker.contains("USER 65532"), "non-root image");
}

/// `(apiGroup, resource, verb)` of every rule.
fn triples(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for g in rule["apiGroups"].as_array().into_iter().flatten() {
            for r in rule["resources"].as_array().into_iter().flatten() {
                for v in rule["verbs"].as_array().into_iter().flatten() {
                    out.insert((
                        g.as_str().unwrap_or("?").into(),
                        r.as_str().unwrap_or("?").into(),
                        v.as_str().unwrap_or("?").into(),
                    ));
                }
            }
        }
        assert!(rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none());
    }
    out
}

fn set(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (g, r, verbs) in items {
        for v in *verbs {
            out.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn shipped_roles_grant_exactly_the_allowlist() {
    let test = "shipped_roles_grant_exactly_the_allowlist";
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    let read: &[&str] = &["get", "list", "watch"];
    let cluster_role = k
        .run(&["get", "clusterrole", "meshroute", "-o", "json"])
        .expect_ok();
    let cluster_role: Value = serde_json::from_str(&cluster_role).expect("json");
    assert_eq!(
        triples(&cluster_role),
        set(&[
            ("", "services", read),
            ("", "endpoints", read),
            ("discovery.k8s.io", "endpointslices", read),
            (
                "discovery.k8s.io",
                "endpointslices",
                &["create", "update", "delete"]
            ),
            ("gateway.networking.k8s.io", "httproutes", read),
            ("gateway.networking.k8s.io", "httproutes/status", &["patch"]),
            ("gateway.networking.k8s.io", "grpcroutes", read),
            ("gateway.networking.k8s.io", "grpcroutes/status", &["patch"]),
            (
                "gateway.networking.x-k8s.io",
                "xbackendtrafficpolicies",
                read
            ),
            ("policy.linkerd.io", "httproutes", read),
            ("policy.linkerd.io", "httproutes/status", &["patch"]),
            ("split.smi-spec.io", "trafficsplits", read),
            ("specs.smi-spec.io", "httproutegroups", read),
            ("events.k8s.io", "events", &["create", "patch"]),
        ])
    );
    let role = k
        .run(&[
            "get",
            "role",
            "meshroute-leader-election",
            "-n",
            "meshroute",
            "-o",
            "json",
        ])
        .expect_ok();
    let role: Value = serde_json::from_str(&role).expect("json");
    assert_eq!(
        triples(&role),
        set(&[(
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"]
        )])
    );
    // The bindings grant them to the ServiceAccount only.
    let crb: Value = serde_json::from_str(
        &k.run(&["get", "clusterrolebinding", "meshroute", "-o", "json"])
            .expect_ok(),
    )
    .expect("json");
    assert_eq!(crb["subjects"].as_array().map(Vec::len), Some(1));
    assert_eq!(crb["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(crb["subjects"][0]["namespace"], "meshroute");
}

struct Proc(Child, std::path::PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_meshroute(
    kubeconfig: &std::path::Path,
    ns: &str,
    lease: &str,
    id: &str,
    log: &std::path::Path,
) -> (Proc, u16) {
    let admin = free_port();
    let child = Command::new(meshroute_bin())
        .args(["run", "--kube", "--listen", "127.0.0.1:0"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args([
            "--namespace",
            ns,
            "--lease-namespace",
            "meshroute",
            "--lease-name",
            lease,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("meshroute binary");
    (Proc(child, log.to_path_buf()), admin)
}

fn http_get(port: u16, path: &str) -> Option<u16> {
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
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn wait_ready(port: u16, log: &std::path::Path) {
    let t0 = Instant::now();
    while http_get(port, "/ready") != Some(200) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "meshroute not ready; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_only_shipped_rbac_serves_writes_status_and_elects_one_leader() {
    let test = "binary_with_only_shipped_rbac_serves_writes_status_and_elects_one_leader";
    let Some(c) = cluster(test) else { return };
    let Some(restricted) = c.restricted.clone() else {
        e2e::skip_or_fail(
            test,
            "needs kube-testenv's restricted user (MESHROUTE_TEST_KUBECONFIG is set)",
        );
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("rbac");
    let lease = format!("lease-{ns}");
    k.apply(&format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: web, namespace: {ns}}}
spec:
  parentRefs: [{{name: web, kind: Service, group: core, port: 80}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {{name: web-split, namespace: {ns}}}
spec:
  service: web
  backends: [{{service: web, weight: 90}}, {{service: web-missing, weight: 10}}]
"#
    ))
    .await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, admin_a) = spawn_meshroute(
        &restricted,
        &ns,
        &lease,
        "replica-a",
        &tmp.path().join("a.log"),
    );
    let (b, admin_b) = spawn_meshroute(
        &restricted,
        &ns,
        &lease,
        "replica-b",
        &tmp.path().join("b.log"),
    );
    wait_ready(admin_a, &a.1);
    wait_ready(admin_b, &b.1);

    // Status written (patch on httproutes/status), by exactly one replica.
    wait_object(
        &k,
        &["httproutes.policy.linkerd.io", "web", "-n", &ns],
        "status",
        |v| our_parent(v).is_some_and(|p| condition(&p, "Accepted").is_some_and(|c| c.0 == "True")),
    )
    .await;
    let lease_obj = k.get_json(&["lease", &lease, "-n", "meshroute"]).await;
    let holder = lease_obj["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        holder == "replica-a" || holder == "replica-b",
        "one replica leads: {holder:?}"
    );
    // Event for the split's missing backend (create on events.k8s.io).
    let t0 = Instant::now();
    loop {
        let ev = k
            .get_json(&[
                "events.events.k8s.io",
                "-n",
                &ns,
                "--field-selector",
                "regarding.name=web-split",
            ])
            .await;
        let ok = ev["items"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["type"] == "Warning" && e["reportingController"] == "meshroute.dev/controller"
            })
        });
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no Warning event for web-split"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both serve.
    for port in [admin_a, admin_b] {
        assert_eq!(http_get(port, "/live"), Some(200));
    }
    // Nothing was forbidden.
    for p in [&a, &b] {
        let log = std::fs::read_to_string(&p.1).unwrap_or_default();
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "RBAC denial in {}:\n{log}",
            p.1.display()
        );
    }
    // The leader goes away: the other replica takes over (after its lease expires at most).
    let (leader, follower) = if holder == "replica-a" {
        (a, "replica-b")
    } else {
        (b, "replica-a")
    };
    drop(leader);
    let t0 = Instant::now();
    loop {
        let l = k.get_json(&["lease", &lease, "-n", "meshroute"]).await;
        if l["spec"]["holderIdentity"] == follower {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "{follower} never took over: {}",
            l["spec"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The TrafficSplit CRD as linkerd-smi ships it: v1alpha1 and v1alpha2 only.
fn smi_crd_v1alpha1_v1alpha2() -> String {
    let text = std::fs::read_to_string(repo().join("crds/meshroute-crds.yaml")).expect("crds");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("yaml");
    let mut split = docs
        .into_iter()
        .find(|d| d["metadata"]["name"] == "trafficsplits.split.smi-spec.io")
        .expect("TrafficSplit CRD");
    let versions: Vec<Value> = split["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["name"] == "v1alpha1" || v["name"] == "v1alpha2")
        .cloned()
        .map(|mut v| {
            v["storage"] = Value::Bool(v["name"] == "v1alpha2");
            v
        })
        .collect();
    split["spec"]["versions"] = Value::Array(versions);
    serde_json::to_string(&split).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_watches_what_the_cluster_serves() {
    let test = "discovery_watches_what_the_cluster_serves";
    let Some(own) = own_cluster(test, "smi-old") else {
        return;
    };
    let c = &own.0;
    let k = Kubectl::new(&c.admin);
    let client = meshroute::sources::kube::client(&meshroute::sources::kube::KubeOptions {
        kubeconfig: Some(c.admin.clone()),
        ..Default::default()
    })
    .await
    .expect("client");
    use meshroute::sources::kube::{discover, Slot};

    // No SMI, no Gateway API: only core kinds and nothing else.
    let plan = discover(&client).await.expect("discover");
    let watched: Vec<Slot> = plan.watched.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        watched,
        vec![Slot::Service, Slot::EndpointSlice, Slot::Endpoints]
    );
    assert_eq!(plan.skipped.len(), Slot::CRDS.len(), "{:?}", plan.skipped);

    // linkerd-smi's TrafficSplit CRD: v1alpha2 is the best served version.
    k.run_in(
        &["apply", "--server-side", "-f", "-"],
        &smi_crd_v1alpha1_v1alpha2(),
    )
    .expect_ok();
    k.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/trafficsplits.split.smi-spec.io",
    ])
    .expect_ok();
    let plan = discover(&client).await.expect("discover");
    let ar = plan
        .resource(Slot::TrafficSplit)
        .expect("TrafficSplit watched");
    assert_eq!(ar.version, "v1alpha2");
    assert!(plan.resource(Slot::HttpRouteGroup).is_none());

    // And meshroute runs on it: a v1alpha1 split (quantity weights) routes.
    let ns = unique("smi");
    k.apply(&format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: apex, namespace: {ns}}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {{name: s, namespace: {ns}}}
spec:
  service: apex
  backends: [{{service: apex, weight: 1}}]
"#
    ))
    .await;
    let running = meshroute::run::start(meshroute::run::RunConfig {
        kube: true,
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        kube_options: meshroute::sources::kube::KubeOptions {
            kubeconfig: Some(c.admin.clone()),
            namespace: Some(ns.clone()),
            read_only: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("start");
    let t0 = Instant::now();
    while !running.proxy.is_ready() {
        assert!(t0.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let table = serde_json::to_value(&*running.proxy.table()).expect("table json");
    assert!(
        table.to_string().contains("TrafficSplit"),
        "the split is in the table: {table}"
    );
    let _ = running.shutdown().await;
}
