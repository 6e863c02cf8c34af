//! Multicluster with real parts: three kube-apiservers named as in seed 004 — `north`, where
//! meshroute runs (in-process, Kubernetes mode), and `east` and `west`, linked either with
//! `--link NAME=KUBECONFIG` or through Linkerd-shaped `Link` objects and kubeconfig Secrets
//! applied with the real `kubectl`. Every cluster has its own test host (a private network
//! namespace running echo backends) whose address is in that cluster's EndpointSlices.
//! meshroute reads east and west as User `meshroute`, bound only to `deploy/remote/rbac.yaml`'s
//! ClusterRole.
//!
//! Control planes are shared where that is honest: north is the binary's shared cluster, and
//! east and west are shared by the tests that never stop them (each test works in namespaces
//! of its own). The outage test stops and restarts an east of its own.
//!
//! Pod-to-pod mirrors (Linkerd 2.14+, `linkerd multicluster link --gateway=false`): e.g.
//! `smiley-east` in north is selector-less, labelled `multicluster.linkerd.io/remote-discovery:
//! east` and `remote-service: smiley`, and has no endpoints in north.
//!
//! Timings are printed (run with `--nocapture`), never asserted.

#[path = "support/e2e.rs"]
mod e2e;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{
    cluster, condition, meshroute_bin, named_cluster, our_parent, own_cluster, port_range, repo,
    unique, wait_object, Backends, Cluster, Kubectl, Latencies, Mesh, Reply,
};
use meshroute::run::RunConfig;
use meshroute::sources::kube::{KubeOptions, Link, PublishOptions};

const GATEWAY_ROUTE: &str = "httproutes.gateway.networking.k8s.io";

/// The three test hosts: north's `color` and `smiley-north` (the federated Service's local
/// member), east's `smiley`, west's `smiley` and `color2`. Each backend answers with its name.
struct Hosts {
    north: Backends,
    east: Backends,
    west: Backends,
}

impl Hosts {
    fn start(test: &str) -> Option<Hosts> {
        Some(Hosts {
            north: Backends::start(test, &["color", "smiley-north"])?,
            east: Backends::start(test, &["smiley-east"])?,
            west: Backends::start(test, &["smiley-west", "color2-west"])?,
        })
    }
}

fn namespace(ns: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n")
}

/// A Service with one port and, when `backend` is given, an EndpointSlice `<svc>-1` with that
/// backend's address on `host`. `labels`/`annotations` are YAML flow-mapping bodies.
fn service(
    ns: &str,
    svc: &str,
    labels: &str,
    annotations: &str,
    endpoint: Option<(&Backends, &str)>,
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {ns}\n  labels: {{{labels}}}\n  annotations: {{{annotations}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
    );
    if let Some((host, backend)) = endpoint {
        y.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n---\n",
            host.port(backend),
            host.ip
        ));
    }
    y
}

/// A pod-to-pod mirror in north of `remote` in `cluster`.
fn mirror(ns: &str, name: &str, cluster: &str, remote: &str) -> String {
    service(
        ns,
        name,
        &format!("multicluster.linkerd.io/remote-discovery: {cluster}, multicluster.linkerd.io/remote-service: {remote}"),
        "",
        None,
    )
}

const EXPORTED: &str = "mirror.linkerd.io/exported: remote-discovery";

/// North: the parents (`smiley`, `color`, `smiley-fo`, `smiley-nf`; selector-less), `color`'s
/// own endpoint, the mirrors `smiley-east`, `smiley-west`, `color2-west`, and the federated
/// `smiley-federated` (local member `smiley-local`, remote members `smiley` in east and west).
fn north_yaml(h: &Hosts, ns: &str) -> String {
    let mut y = namespace(ns);
    for parent in ["smiley", "smiley-fo", "smiley-nf"] {
        y.push_str(&service(ns, parent, "", "", None));
    }
    y.push_str(&service(ns, "color", "", "", Some((&h.north, "color"))));
    y.push_str(&service(
        ns,
        "smiley-local",
        "",
        "",
        Some((&h.north, "smiley-north")),
    ));
    y.push_str(&mirror(ns, "smiley-east", "east", "smiley"));
    y.push_str(&mirror(ns, "smiley-west", "west", "smiley"));
    y.push_str(&mirror(ns, "color2-west", "west", "color2"));
    y.push_str(&service(
        ns,
        "smiley-federated",
        "",
        "multicluster.linkerd.io/remote-discovery: \"smiley@east,smiley@west\", multicluster.linkerd.io/local-discovery: smiley-local",
        None,
    ));
    y
}

/// East: `smiley`, exported for remote discovery.
fn east_yaml(h: &Hosts, ns: &str) -> String {
    namespace(ns) + &service(ns, "smiley", EXPORTED, "", Some((&h.east, "smiley-east")))
}

/// West: `smiley` and `color2`, exported.
fn west_yaml(h: &Hosts, ns: &str) -> String {
    namespace(ns)
        + &service(ns, "smiley", EXPORTED, "", Some((&h.west, "smiley-west")))
        + &service(ns, "color2", EXPORTED, "", Some((&h.west, "color2-west")))
}

/// Seed 004's migrated `smiley`: every request to smiley-east, with a request timeout.
fn smiley_router(ns: &str, timeout: &str) -> String {
    format!(
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: smiley-router, namespace: {ns}}}
spec:
  parentRefs: [{{group: core, kind: Service, name: smiley, port: 80}}]
  rules:
  - backendRefs: [{{name: smiley-east, port: 80}}]
    timeouts: {{request: {timeout}}}
"#
    )
}

/// Seed 004's `color`: half local, half to the mirror of west's `color2`; `local: false` is
/// the migration (the local backendRef deleted).
fn color_split(ns: &str, local: bool) -> String {
    let local = if local {
        "    - {name: color, port: 80, weight: 50}\n"
    } else {
        ""
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: color-split, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: color, port: 80}}]
  rules:
  - backendRefs:
{local}    - {{name: color2-west, port: 80, weight: 50}}
"#
    )
}

/// `parent` → 1 × smiley-east, 0 × smiley-west (linkerd-failover's pattern), with
/// linkerd-failover's annotation and label when `failover`.
fn failover_route(ns: &str, name: &str, parent: &str, failover: bool) -> String {
    let meta = if failover {
        ", annotations: {failover.linkerd.io/primary-service: smiley-east}, labels: {failover.linkerd.io/controlled-by: linkerd-failover}"
    } else {
        ""
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}{meta}}}
spec:
  parentRefs: [{{name: {parent}, kind: Service, group: "", port: 80}}]
  rules:
  - backendRefs:
    - {{name: smiley-east, port: 80, weight: 1}}
    - {{name: smiley-west, port: 80, weight: 0}}
"#
    )
}

/// Apply the remote-side RBAC we ship and bind its ClusterRole to User `meshroute` (whose
/// kubeconfig the test environment wrote), so meshroute reads the cluster with exactly that.
fn grant_remote_rbac(k: &Kubectl) {
    let rbac = std::fs::read_to_string(repo().join("deploy/remote/rbac.yaml")).expect("rbac");
    k.run_in(&["apply", "-f", "-"], &rbac).expect_ok();
    let bind = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: meshroute-remote-test-user}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshroute-remote}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}]\n";
    k.run_in(&["apply", "-f", "-"], bind).expect_ok();
}

/// A shared linked cluster (east or west) with the remote RBAC granted, once (tests run in
/// parallel, and two concurrent `kubectl apply` of one new object race to create it).
fn linked(test: &str, name: &str) -> Option<Arc<Cluster>> {
    static GRANTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let c = named_cluster(test, name)?;
    let mut granted = GRANTED.lock().unwrap_or_else(|e| e.into_inner());
    if !granted.iter().any(|n| n == name) {
        grant_remote_rbac(&Kubectl::new(&c.admin));
        granted.push(name.to_string());
    }
    Some(c)
}

fn restricted(c: &Cluster) -> PathBuf {
    c.restricted.clone().unwrap_or(c.admin.clone())
}

/// meshroute watching `ns` in north, linked to `links` (`--link`) and reading Links from
/// `link_namespace` (`None`: Link discovery off).
async fn mesh(north: &Path, ns: &str, links: Vec<Link>, link_namespace: Option<&str>) -> Mesh {
    Mesh::from_config(RunConfig {
        kube: true,
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        kube_options: KubeOptions {
            kubeconfig: Some(north.to_path_buf()),
            namespace: Some(ns.to_string()),
            lease_namespace: Some("meshroute".into()),
            lease_name: Some(format!("lease-{ns}")),
            identity: Some(format!("test-{ns}")),
            publish: PublishOptions {
                port_range: port_range(),
                ..Default::default()
            },
            links,
            link_namespace: Some(link_namespace.unwrap_or("").to_string()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

fn link(name: &str, c: &Cluster) -> Link {
    Link {
        name: name.into(),
        kubeconfig: restricted(c),
    }
}

async fn set_ready(k: &Kubectl, ns: &str, slice: &str, ready: bool) {
    let patch =
        format!(r#"[{{"op":"replace","path":"/endpoints/0/conditions/ready","value":{ready}}}]"#);
    k.arun(
        &[
            "patch",
            "endpointslice",
            slice,
            "-n",
            ns,
            "--type=json",
            "-p",
            &patch,
        ],
        "",
    )
    .await
    .expect_ok();
}

/// Poll `host` until `done` holds on an answer; panics after `limit`.
async fn until(
    mesh: &Mesh,
    host: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&Reply) -> bool,
) {
    let t = Instant::now();
    loop {
        let r = mesh.get(host, "/").await;
        if done(&r) {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "{what}: not within {limit:?} (last answer {r:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait for a table newer than generation `before` (an edit a single answer cannot tell).
async fn new_table(mesh: &Mesh, before: u64, what: &str) {
    let t = Instant::now();
    while mesh.generation() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: no new table within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn explain(admin: SocketAddr, host: &str) -> String {
    let out = std::process::Command::new(meshroute_bin())
        .args(["explain", "--admin", &admin.to_string(), "--host", host])
        .output()
        .expect("meshroute explain");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// GET from the admin port.
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.expect("admin");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf).to_string()
}

/// Reasons of the Events about `kind/name` in `ns`.
async fn event_reasons(k: &Kubectl, ns: &str, kind: &str, name: &str) -> Vec<String> {
    let v = k.get_json(&["events", "-n", ns]).await;
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// Seed 004 through `--link east=… --link west=…`: `smiley` → `smiley-east` with a 5 s
/// request timeout, tightened to 300 ms (a slow call is a 504); `color` 50/50 with
/// `color2-west`, then migrated by deleting the local backendRef; failover to west within one
/// table swap while east's endpoint is not ready (and 503 for that share without failover),
/// 16 times, timing each remote EndpointSlice change to the first request that follows it; a
/// federated Service local first, spilling to east and west.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_across_north_east_west_with_link_flags() {
    let test = "seed_004_across_north_east_west_with_link_flags";
    let Some(north) = cluster(test) else { return };
    let Some(east) = linked(test, "east") else {
        return;
    };
    let Some(west) = linked(test, "west") else {
        return;
    };
    let Some(h) = Hosts::start(test) else { return };
    let (kn, ke, kw) = (
        Kubectl::new(&north.admin),
        Kubectl::new(&east.admin),
        Kubectl::new(&west.admin),
    );
    let ns = unique("mc-seed");
    kn.apply(&north_yaml(&h, &ns)).await;
    ke.apply(&east_yaml(&h, &ns)).await;
    kw.apply(&west_yaml(&h, &ns)).await;
    let mesh = mesh(
        &restricted(&north),
        &ns,
        vec![link("east", &east), link("west", &west)],
        None,
    )
    .await;
    let lat = Latencies::new(&format!(
        "{test}: remote EndpointSlice change → first request following it"
    ));
    let host = |svc: &str| format!("{svc}.{ns}.svc.cluster.local");
    let (smiley, color, fo, nf, fed) = (
        host("smiley"),
        host("color"),
        host("smiley-fo"),
        host("smiley-nf"),
        host("smiley-federated"),
    );

    // smiley → smiley-east (east's endpoint, on east's test host), 5 s timeout.
    kn.apply(&smiley_router(&ns, "5s")).await;
    until(
        &mesh,
        &smiley,
        "smiley → smiley-east",
        Duration::from_secs(30),
        |r| r.backend.as_deref() == Some("smiley-east"),
    )
    .await;
    let r = mesh.get(&smiley, "/?delay=1000").await;
    assert_eq!(
        (r.status, r.backend.as_deref()),
        (200, Some("smiley-east")),
        "a 1 s call within 5 s: {r:?}"
    );
    // The cluster is labelled in explain and metrics.
    let text = explain(mesh.admin, &smiley);
    assert!(text.contains("cluster=east"), "{text}");
    assert!(
        text.contains(&format!("{}:{}", h.east.ip, h.east.port("smiley-east"))),
        "{text}"
    );
    let metrics = admin_get(mesh.admin, "/metrics").await;
    assert!(
        metrics.contains("backend_cluster=\"east\""),
        "no backend_cluster=\"east\" in /metrics"
    );
    // 5 s → 300 ms: the slow call fails fast with 504, a quick one still answers.
    let g = mesh.generation();
    kn.apply(&smiley_router(&ns, "300ms")).await;
    new_table(&mesh, g, "300 ms timeout").await;
    let t = Instant::now();
    loop {
        let r = mesh.get(&smiley, "/?delay=1000").await;
        if r.status == 504 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no 504 with a 300 ms timeout: {r:?}"
        );
    }
    let r = mesh.get(&smiley, "/").await;
    assert_eq!(
        (r.status, r.backend.as_deref()),
        (200, Some("smiley-east")),
        "{r:?}"
    );

    // color: 50/50 between the local color and west's color2.
    kn.apply(&color_split(&ns, true)).await;
    until(&mesh, &color, "color split", Duration::from_secs(30), |r| {
        r.backend.as_deref() == Some("color2-west")
    })
    .await;
    let tally = mesh.tally(&color, 100).await;
    let (local, remote) = (
        tally.get("color").copied().unwrap_or(0),
        tally.get("color2-west").copied().unwrap_or(0),
    );
    assert_eq!(local + remote, 100, "{tally:?}");
    // Binomial(100, 0.5): fewer than 20 on a side happens about once in 10^9 runs.
    assert!(local >= 20 && remote >= 20, "50/50: {tally:?}");
    // Migrate: the local backendRef deleted, everything goes west.
    let g = mesh.generation();
    kn.apply(&color_split(&ns, false)).await;
    new_table(&mesh, g, "migration").await;
    let tally = mesh.tally(&color, 20).await;
    assert_eq!(
        tally.get("color2-west"),
        Some(&20),
        "migrated to west: {tally:?}"
    );

    // Failover: smiley-fo (annotated) and smiley-nf (not) send everything to smiley-east
    // (weight 1; smiley-west 0).
    kn.apply(&failover_route(&ns, "smiley-failover", "smiley-fo", true))
        .await;
    kn.apply(&failover_route(&ns, "smiley-plain", "smiley-nf", false))
        .await;
    until(&mesh, &fo, "failover route", Duration::from_secs(30), |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    until(&mesh, &nf, "plain route", Duration::from_secs(30), |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    for i in 0..16 {
        set_ready(&ke, &ns, "smiley-1", false).await;
        let t = Instant::now();
        // Never a 503 on the way: the table that drops east's endpoint moves its share west.
        lat.follow(
            "east endpoint not ready: failover to west",
            &mesh,
            &fo,
            t,
            |r| {
                assert_eq!(r.status, 200, "failover leaves no gap: {r:?}");
                r.backend.as_deref() == Some("smiley-west")
            },
        )
        .await;
        let r = mesh.get(&fo, "/").await;
        assert_eq!(r.backend.as_deref(), Some("smiley-west"), "{r:?}");
        let r = mesh.get(&nf, "/").await;
        assert_eq!(r.status, 503, "no failover without the annotation: {r:?}");
        if i == 0 {
            let obj = wait_object(
                &kn,
                &[GATEWAY_ROUTE, "smiley-failover", "-n", &ns],
                "failover in status",
                |v| {
                    our_parent(v).is_some_and(|p| {
                        condition(&p, "Accepted").is_some_and(|c| c.2.contains("failover active"))
                    })
                },
            )
            .await;
            let msg = condition(&our_parent(&obj).expect("parent"), "Accepted")
                .expect("Accepted")
                .2;
            assert!(
                msg.contains("(cluster east) has no ready endpoints, its share goes to"),
                "{msg}"
            );
            assert!(msg.contains("smiley-west:80 (cluster west)"), "{msg}");
            let t = Instant::now();
            while !event_reasons(&kn, &ns, "HTTPRoute", "smiley-failover")
                .await
                .contains(&"FailoverActive".to_string())
            {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "no FailoverActive Event for the HTTPRoute"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        set_ready(&ke, &ns, "smiley-1", true).await;
        let t = Instant::now();
        lat.follow(
            "east endpoint ready again: share returns",
            &mesh,
            &fo,
            t,
            |r| {
                assert_eq!(r.status, 200, "{r:?}");
                r.backend.as_deref() == Some("smiley-east")
            },
        )
        .await;
        let r = mesh.get(&nf, "/").await;
        assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");
    }
    let t = Instant::now();
    while !event_reasons(&kn, &ns, "HTTPRoute", "smiley-failover")
        .await
        .contains(&"FailoverEnded".to_string())
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no FailoverEnded Event for the HTTPRoute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Federated: local first (north's smiley-local), spilling to east and west when the local
    // endpoint is not ready, and back.
    let tally = mesh.tally(&fed, 10).await;
    assert_eq!(
        tally.get("smiley-north"),
        Some(&10),
        "local first: {tally:?}"
    );
    set_ready(&kn, &ns, "smiley-local-1", false).await;
    until(
        &mesh,
        &fed,
        "spill to linked clusters",
        Duration::from_secs(30),
        |r| r.backend.as_deref() != Some("smiley-north"),
    )
    .await;
    let tally = mesh.tally(&fed, 20).await;
    assert_eq!(
        tally.get("smiley-east").unwrap_or(&0) + tally.get("smiley-west").unwrap_or(&0),
        20,
        "spilled to east and west: {tally:?}"
    );
    set_ready(&kn, &ns, "smiley-local-1", true).await;
    until(&mesh, &fed, "back to local", Duration::from_secs(30), |r| {
        r.backend.as_deref() == Some("smiley-north")
    })
    .await;

    lat.report();
    mesh.shutdown().await;
}

/// A minimal stand-in for Linkerd's Link CRD (Linkerd is not installed in the test cluster):
/// the group, kind and names Linkerd serves, any spec.
const LINK_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: links.multicluster.linkerd.io}
spec:
  group: multicluster.linkerd.io
  scope: Namespaced
  names: {plural: links, singular: link, kind: Link}
  versions:
  - name: v1alpha3
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// Install [`LINK_CRD`] in north, once (tests run in parallel).
fn install_link_crd(kn: &Kubectl) {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        kn.run_in(&["apply", "-f", "-"], LINK_CRD).expect_ok();
        kn.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/links.multicluster.linkerd.io",
        ])
        .expect_ok();
        *done = true;
    }
}

fn link_object(links_ns: &str, cluster: &str) -> String {
    format!("apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata: {{name: {cluster}, namespace: {links_ns}}}\nspec: {{targetClusterName: {cluster}, clusterCredentialsSecret: cluster-credentials-{cluster}, targetClusterDomain: cluster.local}}\n")
}

/// `kubectl create secret generic cluster-credentials-NAME --from-file=kubeconfig=…`, applied
/// (created or replaced) the way `linkerd multicluster link` output is.
async fn apply_credentials(kn: &Kubectl, links_ns: &str, cluster: &str, kubeconfig: &Path) {
    let yaml = kn
        .arun(
            &[
                "create",
                "secret",
                "generic",
                &format!("cluster-credentials-{cluster}"),
                "-n",
                links_ns,
                "--type=mirror.linkerd.io/remote-kubeconfig",
                &format!("--from-file=kubeconfig={}", kubeconfig.display()),
                "--dry-run=client",
                "-o",
                "yaml",
            ],
            "",
        )
        .await
        .expect_ok();
    kn.apply(&yaml).await;
}

/// The same clusters linked through Linkerd's objects, applied with kubectl: before any Link a
/// mirror does not resolve (and the status says why); Links for east and west link them without
/// a restart (east's Link before its Secret: it waits for it); west's credentials Secret first
/// holds a kubeconfig whose token the API server refuses, and editing the Secret (no Link
/// change) is followed; a Secret edited into garbage, then deleted, leaves west read with the
/// last good kubeconfig; deleting west's Link unlinks west alone, applying it again links it
/// back; deleting east's Link unlinks east.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_with_linkerd_link_objects_links_and_unlinks_without_a_restart() {
    let test = "seed_004_with_linkerd_link_objects_links_and_unlinks_without_a_restart";
    let Some(north) = cluster(test) else { return };
    let Some(east) = linked(test, "east") else {
        return;
    };
    let Some(west) = linked(test, "west") else {
        return;
    };
    let Some(h) = Hosts::start(test) else { return };
    let (kn, ke, kw) = (
        Kubectl::new(&north.admin),
        Kubectl::new(&east.admin),
        Kubectl::new(&west.admin),
    );
    install_link_crd(&kn);
    let ns = unique("mc-links");
    let links_ns = unique("mc-linkerd-multicluster");
    kn.apply(&north_yaml(&h, &ns)).await;
    ke.apply(&east_yaml(&h, &ns)).await;
    kw.apply(&west_yaml(&h, &ns)).await;
    // The shipped Links RBAC, in the Links' namespace, bound to the test's User too.
    kn.apply(&namespace(&links_ns)).await;
    let rbac = std::fs::read_to_string(repo().join("deploy/links/rbac.yaml")).expect("rbac");
    kn.arun(&["apply", "-n", &links_ns, "-f", "-"], &rbac)
        .await
        .expect_ok();
    kn.apply(&format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: meshroute-links-test-user, namespace: {links_ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshroute-links}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}}]\n")).await;

    let mesh = mesh(&restricted(&north), &ns, vec![], Some(&links_ns)).await;
    let host = |svc: &str| format!("{svc}.{ns}.svc.cluster.local");
    let (smiley, color) = (host("smiley"), host("color"));
    kn.apply(&smiley_router(&ns, "5s")).await;
    kn.apply(&color_split(&ns, true)).await;
    // Nothing linked yet: the mirror does not resolve, and the status says why; an unresolved
    // backendRef fails its share with 500 (Gateway API).
    wait_object(
        &kn,
        &["httproutes.policy.linkerd.io", "smiley-router", "-n", &ns],
        "not linked",
        |v| {
            our_parent(v).is_some_and(|p| {
                condition(&p, "ResolvedRefs").is_some_and(|c| c.2.contains("not linked"))
            })
        },
    )
    .await;
    until(
        &mesh,
        &smiley,
        "unlinked mirror",
        Duration::from_secs(30),
        |r| r.status == 500,
    )
    .await;

    // East: Link and credentials as `linkerd multicluster link` writes them; the Link first,
    // waiting for its Secret.
    kn.apply(&link_object(&links_ns, "east")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mesh.get(&smiley, "/").await.status,
        500,
        "no credentials yet"
    );
    apply_credentials(&kn, &links_ns, "east", &restricted(&east)).await;
    let t = Instant::now();
    until(
        &mesh,
        &smiley,
        "east's Link",
        Duration::from_secs(30),
        |r| r.backend.as_deref() == Some("smiley-east"),
    )
    .await;
    eprintln!(
        "{test}: east's Secret applied after its Link → traffic to east: {} ms",
        t.elapsed().as_millis()
    );

    // West: a Secret whose token west refuses (401), then the right one; the Link never changes.
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(restricted(&west)).expect("kubeconfig");
    let token = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the kubeconfig")
        .trim()
        .to_string();
    let bad_path = tmp.path().join("west-bad");
    std::fs::write(&bad_path, good.replace(&token, "not-a-valid-token")).expect("write");
    apply_credentials(&kn, &links_ns, "west", &bad_path).await;
    kn.apply(&link_object(&links_ns, "west")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = mesh.tally(&color, 20).await;
    assert!(
        !tally.contains_key("color2-west"),
        "west read with a refused token: {tally:?}"
    );
    apply_credentials(&kn, &links_ns, "west", &restricted(&west)).await;
    let t = Instant::now();
    until(
        &mesh,
        &color,
        "edited credentials Secret",
        Duration::from_secs(60),
        |r| r.backend.as_deref() == Some("color2-west"),
    )
    .await;
    eprintln!(
        "{test}: west's Secret fixed → traffic to west: {} ms",
        t.elapsed().as_millis()
    );
    let r = mesh.get(&smiley, "/").await;
    assert_eq!(
        r.backend.as_deref(),
        Some("smiley-east"),
        "east unaffected: {r:?}"
    );
    // A Secret edited into something that is not a kubeconfig, then deleted: west keeps being
    // read with the last good one.
    let garbage = tmp.path().join("west-garbage");
    std::fs::write(&garbage, "this is not a kubeconfig\n").expect("write");
    apply_credentials(&kn, &links_ns, "west", &garbage).await;
    kn.arun(
        &[
            "delete",
            "secret",
            "cluster-credentials-west",
            "-n",
            &links_ns,
        ],
        "",
    )
    .await
    .expect_ok();
    set_ready(&kw, &ns, "color2-1", false).await;
    until(
        &mesh,
        &color,
        "west still followed with the last good kubeconfig",
        Duration::from_secs(30),
        |r| r.status == 503,
    )
    .await;
    set_ready(&kw, &ns, "color2-1", true).await;
    until(
        &mesh,
        &color,
        "west's endpoint back",
        Duration::from_secs(30),
        |r| r.backend.as_deref() == Some("color2-west"),
    )
    .await;

    apply_credentials(&kn, &links_ns, "west", &restricted(&west)).await;

    // Deleting west's Link unlinks west only: color2-west's share fails (500), east serves.
    kn.arun(
        &[
            "delete",
            "links.multicluster.linkerd.io",
            "west",
            "-n",
            &links_ns,
        ],
        "",
    )
    .await
    .expect_ok();
    until(
        &mesh,
        &color,
        "west's Link deleted",
        Duration::from_secs(30),
        |r| r.status == 500,
    )
    .await;
    mesh.settle(Duration::from_millis(300)).await;
    let tally = mesh.tally(&color, 20).await;
    assert!(!tally.contains_key("color2-west"), "{tally:?}");
    assert!(tally.contains_key("color"), "{tally:?}");
    let r = mesh.get(&smiley, "/").await;
    assert_eq!(
        r.backend.as_deref(),
        Some("smiley-east"),
        "east still linked: {r:?}"
    );
    // And back.
    kn.apply(&link_object(&links_ns, "west")).await;
    until(
        &mesh,
        &color,
        "west's Link again",
        Duration::from_secs(30),
        |r| r.backend.as_deref() == Some("color2-west"),
    )
    .await;
    // Deleting east's Link: smiley's only backend is unresolved again.
    kn.arun(
        &[
            "delete",
            "links.multicluster.linkerd.io",
            "east",
            "-n",
            &links_ns,
        ],
        "",
    )
    .await
    .expect_ok();
    until(
        &mesh,
        &smiley,
        "east's Link deleted",
        Duration::from_secs(30),
        |r| r.status == 500,
    )
    .await;
    mesh.shutdown().await;
}

/// East's API server stopped (its process gone, its port refusing connections): traffic keeps
/// flowing on east's last endpoints; started again at the same address with the same data, it
/// is followed again without restarting meshroute (east's endpoint goes not ready: the share
/// fails over to west; ready again: it returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn east_api_server_stopped_keeps_last_endpoints_and_is_followed_when_back() {
    let test = "east_api_server_stopped_keeps_last_endpoints_and_is_followed_when_back";
    let Some(north) = cluster(test) else { return };
    let Some(mut east) = own_cluster(test, "east") else {
        return;
    };
    let Some(west) = linked(test, "west") else {
        return;
    };
    let Some(h) = Hosts::start(test) else { return };
    let (kn, ke, kw) = (
        Kubectl::new(&north.admin),
        Kubectl::new(&east.0.admin),
        Kubectl::new(&west.admin),
    );
    grant_remote_rbac(&ke);
    let ns = unique("mc-outage");
    kn.apply(&north_yaml(&h, &ns)).await;
    ke.apply(&east_yaml(&h, &ns)).await;
    kw.apply(&west_yaml(&h, &ns)).await;
    let mesh = mesh(
        &restricted(&north),
        &ns,
        vec![link("east", &east.0), link("west", &west)],
        None,
    )
    .await;
    let fo = format!("smiley-fo.{ns}.svc.cluster.local");
    kn.apply(&failover_route(&ns, "smiley-failover", "smiley-fo", true))
        .await;
    until(
        &mesh,
        &fo,
        "traffic to east",
        Duration::from_secs(30),
        |r| r.backend.as_deref() == Some("smiley-east"),
    )
    .await;

    east.stop();
    let gone = Instant::now();
    let mut served = 0;
    while gone.elapsed() < Duration::from_secs(5) {
        let r = mesh.get(&fo, "/").await;
        assert_eq!(
            (r.status, r.backend.as_deref()),
            (200, Some("smiley-east")),
            "during the outage: {r:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 10);

    east.resume("east");
    // The same objects, the same address: kubectl works again with the same kubeconfig.
    let back = Instant::now();
    set_ready(&ke, &ns, "smiley-1", false).await;
    until(
        &mesh,
        &fo,
        "east followed again after its restart",
        Duration::from_secs(90),
        |r| {
            assert_eq!(r.status, 200, "{r:?}");
            r.backend.as_deref() == Some("smiley-west")
        },
    )
    .await;
    eprintln!(
        "{test}: east back → its first change followed: {} ms (includes the watch's backoff)",
        back.elapsed().as_millis()
    );
    set_ready(&ke, &ns, "smiley-1", true).await;
    let t = Instant::now();
    until(&mesh, &fo, "a later change", Duration::from_secs(30), |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    eprintln!(
        "{test}: next change followed: {} ms",
        t.elapsed().as_millis()
    );
    mesh.shutdown().await;
}

/// A Links Role from before Secrets were watched (`get` on Secrets only) still links: the Secret
/// watch is refused, and each Link reads its Secret with a get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_still_work_where_secrets_may_only_be_read_one_by_one() {
    let test = "links_still_work_where_secrets_may_only_be_read_one_by_one";
    let Some(north) = cluster(test) else { return };
    let Some(east) = linked(test, "east") else {
        return;
    };
    let Some(h) = Hosts::start(test) else { return };
    let (kn, ke) = (Kubectl::new(&north.admin), Kubectl::new(&east.admin));
    install_link_crd(&kn);
    let ns = unique("mc-getonly");
    let links_ns = unique("mc-linkerd-multicluster");
    kn.apply(&north_yaml(&h, &ns)).await;
    ke.apply(&east_yaml(&h, &ns)).await;
    kn.apply(&namespace(&links_ns)).await;
    kn.apply(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: meshroute-links-old, namespace: {links_ns}}}
rules:
- {{apiGroups: [multicluster.linkerd.io], resources: [links], verbs: [list, watch]}}
- {{apiGroups: [""], resources: [secrets], verbs: [get]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: meshroute-links-old, namespace: {links_ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshroute-links-old}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}}]
"#
    ))
    .await;
    apply_credentials(&kn, &links_ns, "east", &restricted(&east)).await;
    let mesh = mesh(&restricted(&north), &ns, vec![], Some(&links_ns)).await;
    let smiley = format!("smiley.{ns}.svc.cluster.local");
    kn.apply(&smiley_router(&ns, "5s")).await;
    kn.apply(&link_object(&links_ns, "east")).await;
    until(
        &mesh,
        &smiley,
        "Link with get-only Secrets",
        Duration::from_secs(60),
        |r| r.backend.as_deref() == Some("smiley-east"),
    )
    .await;
    kn.arun(
        &[
            "delete",
            "links.multicluster.linkerd.io",
            "east",
            "-n",
            &links_ns,
        ],
        "",
    )
    .await
    .expect_ok();
    until(
        &mesh,
        &smiley,
        "Link deleted",
        Duration::from_secs(30),
        |r| r.status == 500,
    )
    .await;
    mesh.shutdown().await;
}
