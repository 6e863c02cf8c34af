//! Transparent serving against a real API server: the status leader publishes EndpointSlices
//! for selector-less route parents, every replica listens on the ports they name, and a client
//! that dials a slice's address and port (as kube-proxy would send it) reaches the route's
//! backends with no Host header, or a short one. meshroute runs as User `meshroute`, bound
//! only to the shipped RBAC; backends live on a network namespace the test creates.

#[path = "support/e2e.rs"]
mod e2e;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::{
    cluster, condition, dial, our_parent, tally_at, unique, wait_object, Backends, KubeProxy,
    Kubectl, Latencies, Mesh, MeshOptions, Reply,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

const LINKERD_ROUTE: &str = "httproutes.policy.linkerd.io";
const GATEWAY_ROUTE: &str = "httproutes.gateway.networking.k8s.io";
const OURS: &str = "endpointslice.kubernetes.io/managed-by=meshroute.dev";

fn meshroute_kubeconfig(c: &e2e::Cluster) -> std::path::PathBuf {
    c.restricted.clone().unwrap_or_else(|| c.admin.clone())
}

async fn admin_client(c: &e2e::Cluster) -> kube::Client {
    meshroute::sources::kube::client(&meshroute::sources::kube::KubeOptions {
        kubeconfig: Some(c.admin.clone()),
        ..Default::default()
    })
    .await
    .expect("admin client")
}

/// The seed story's Services: `smiley` and `color` selector-less without endpoints (they lead
/// to meshroute), `smiley-east` and `color2-west` mirrors, and `color-local`, the Service of
/// color's own pods (the `color` → `color-local` pattern of the README).
fn story_yaml(b: &Backends, ns: &str) -> String {
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "smiley-east", Some("east"), Some("smiley-east")));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "color", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "color-local", None, Some("color-local")));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "color2-west", Some("west"), Some("color2-west")));
    y
}

fn smiley_route(ns: &str, parent: &str) -> String {
    format!(
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: {parent}-router, namespace: {ns}}}
spec:
  parentRefs: [{{name: {parent}, kind: Service, group: core, port: 80}}]
  rules:
  - backendRefs: [{{name: smiley-east, port: 80}}]
"#
    )
}

fn color_split(ns: &str, local: u32, west: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: color-split, namespace: {ns}}}
spec:
  parentRefs: [{{name: color, kind: Service, group: "", port: 80}}]
  rules:
  - backendRefs:
    - {{name: color-local, port: 80, weight: {local}}}
    - {{name: color2-west, port: 80, weight: {west}}}
"#
    )
}

/// Poll the API server (every 10 ms, no kubectl in the way) until slice `ns/name` satisfies
/// `pred` (`None`: absent).
async fn wait_slice(
    api: &Api<EndpointSlice>,
    name: &str,
    what: &str,
    pred: impl Fn(Option<&EndpointSlice>) -> bool,
) -> Option<EndpointSlice> {
    let t0 = Instant::now();
    loop {
        let s = api.get_opt(name).await.expect("get endpointslice");
        if pred(s.as_ref()) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: not seen within 20s; slice now: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn addresses(s: &EndpointSlice) -> BTreeSet<String> {
    s.endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.clone())
        .collect()
}

/// `(name, port)` of each slice port.
fn ports(s: &EndpointSlice) -> Vec<(String, u16)> {
    s.ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
            )
        })
        .collect()
}

/// Dial `addr` until it answers from `backend` (a new listener binds when its replica's
/// table names the port).
async fn wait_answer(addr: SocketAddr, host: Option<&str>, backend: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let r = dial(addr, host, "/").await;
        if r.backend.as_deref() == Some(backend) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{addr} (Host {host:?}) never answered from {backend}; last {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn set(items: &[IpAddr]) -> BTreeSet<String> {
    items.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_applied_publishes_a_slice_within_a_second_and_traffic_follows_its_ports() {
    let test = "route_applied_publishes_a_slice_within_a_second_and_traffic_follows_its_ports";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color-local", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("serve");
    k.apply(&story_yaml(&b, &ns)).await;
    let ip = b.host_ip();
    let o = MeshOptions::advertised(&ns, ip);
    let range = o.publish.port_range.clone();
    let mesh = Mesh::start_with(&meshroute_kubeconfig(&c), &ns, o).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin_client(&c).await, &ns);
    let lat = Latencies::new(test);

    // No route, no slice: meshroute writes nothing for a Service that is no route's parent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ours = api
        .list(&ListParams::default().labels(OURS))
        .await
        .expect("list");
    assert!(ours.items.is_empty(), "{:?}", ours.items);

    // A route: the slice appears, names the replica and one listener port per Service port.
    k.apply(&smiley_route(&ns, "smiley")).await;
    let t = Instant::now();
    let slice = wait_slice(&api, "smiley-meshroute", "smiley's slice", |s| s.is_some())
        .await
        .expect("slice");
    lat.record("route applied -> EndpointSlice written", t.elapsed());
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.io/service-name"], "smiley");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "meshroute.dev"
    );
    assert_eq!(addresses(&slice), set(&[ip]));
    let p = ports(&slice);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "http", "named as in the Service");
    assert!(range.contains(&p[0].1), "{p:?} outside {range:?}");
    let smiley = SocketAddr::new(ip, p[0].1);
    // No Host at all, and a short Host as a pod would send: both are smiley's.
    let d = wait_answer(smiley, None, "smiley-east").await;
    lat.record("route applied -> traffic on the slice's port", t.elapsed());
    eprintln!(
        "listener answered {} ms after the slice was seen",
        d.as_millis()
    );
    let r = dial(smiley, Some("smiley"), "/").await;
    assert_eq!(
        (r.status, r.backend.as_deref()),
        (200, Some("smiley-east")),
        "{r:?}"
    );
    let r = dial(smiley, Some(&format!("smiley.{ns}:80")), "/").await;
    assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");
    // The main listener keeps routing by Host.
    let r = mesh
        .get(&format!("smiley.{ns}.svc.cluster.local"), "/")
        .await;
    assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");

    // color 50/50 between its own pods (color-local) and the west cluster.
    k.apply(&color_split(&ns, 50, 50)).await;
    let t = Instant::now();
    let slice = wait_slice(&api, "color-meshroute", "color's slice", |s| s.is_some())
        .await
        .expect("slice");
    lat.record("split applied -> EndpointSlice written", t.elapsed());
    let cp = ports(&slice);
    assert_ne!(
        cp[0].1, p[0].1,
        "each parent port has its own listener port"
    );
    let color = SocketAddr::new(ip, cp[0].1);
    wait_answer(color, None, "color2-west").await;
    let tally = tally_at(color, Some("color"), 200).await;
    let west = tally.get("color2-west").copied().unwrap_or(0);
    let local = tally.get("color-local").copied().unwrap_or(0);
    assert_eq!(west + local, 200, "{tally:?}");
    assert!((60..=140).contains(&west), "50/50: {tally:?}");

    // Weights edited: 0/100. The slice does not change; the traffic does.
    let before = mesh.generation();
    k.arun(
        &[
            "patch",
            GATEWAY_ROUTE,
            "color-split",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/weight","value":0},
              {"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":100}]"#,
        ],
        "",
    )
    .await
    .expect_ok();
    let t = Instant::now();
    while mesh.generation() <= before {
        assert!(t.elapsed() < Duration::from_secs(20), "no new table");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    lat.record("weights edited -> new table", t.elapsed());
    let tally = tally_at(color, None, 100).await;
    assert_eq!(tally.get("color2-west"), Some(&100), "{tally:?}");
    let same = api.get("color-meshroute").await.expect("slice");
    assert_eq!(ports(&same), cp, "the allocation stays");

    // The route goes: so does the slice (smiley is no route's parent any more).
    k.arun(&["delete", LINKERD_ROUTE, "smiley-router", "-n", &ns], "")
        .await
        .expect_ok();
    let t = Instant::now();
    wait_slice(&api, "smiley-meshroute", "smiley's slice removed", |s| {
        s.is_none()
    })
    .await;
    lat.record("route deleted -> EndpointSlice removed", t.elapsed());
    // color's allocation is untouched.
    assert_eq!(ports(&api.get("color-meshroute").await.expect("slice")), cp);
    lat.report();
    mesh.shutdown().await;
}

/// The Service meshroute takes its own addresses from, with a hand-written slice (the test
/// server has no endpoint controller; this is what it would write for two pods).
fn self_service_yaml(ns: &str, ready: &[(IpAddr, bool)]) -> String {
    let eps: Vec<String> = ready
        .iter()
        .map(|(ip, r)| format!("{{addresses: [\"{ip}\"], conditions: {{ready: {r}}}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: mr-self, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: mr-self-1, namespace: {ns}, labels: {{kubernetes.io/service-name: mr-self}}}}\naddressType: IPv4\nports: [{{name: http, port: 4140, protocol: TCP}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publish_ready_ones_only_and_keep_slices_and_ports_when_the_leader_dies() {
    let test =
        "two_replicas_publish_ready_ones_only_and_keep_slices_and_ports_when_the_leader_dies";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("replicas");
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(&ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(&ns, "smiley-east", Some("east"), Some("smiley-east")));
    k.apply(&y).await;
    let (ip_a, ip_b) = (b.host_ip(), b.add_host_ip(3));
    k.apply(&self_service_yaml(&ns, &[(ip_a, true), (ip_b, true)]))
        .await;
    let range = e2e::port_range();
    let replica = |ip: IpAddr, id: &str| {
        let mut o = MeshOptions::advertised(&ns, ip);
        o.publish.advertise = vec![];
        o.publish.self_service = Some((ns.clone(), "mr-self".into()));
        o.publish.port_range = range.clone();
        o.identity = id.to_string();
        o
    };
    let kc = meshroute_kubeconfig(&c);
    let a = Mesh::start_with(&kc, &ns, replica(ip_a, "replica-a")).await;
    let b_mesh = Mesh::start_with(&kc, &ns, replica(ip_b, "replica-b")).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin_client(&c).await, &ns);
    let lat = Latencies::new(test);

    k.apply(&smiley_route(&ns, "smiley")).await;
    let slice = wait_slice(&api, "smiley-meshroute", "both replicas", |s| {
        s.is_some_and(|s| addresses(s) == set(&[ip_a, ip_b]))
    })
    .await
    .expect("slice");
    let p = ports(&slice);
    let port = p[0].1;
    // Both replicas listen on the port the slice names: the follower learnt it from the slice.
    for ip in [ip_a, ip_b] {
        wait_answer(SocketAddr::new(ip, port), None, "smiley-east").await;
    }

    // Replica b is not ready (its readiness probe fails): it leaves the slice.
    k.apply(&self_service_yaml(&ns, &[(ip_a, true), (ip_b, false)]))
        .await;
    let t = Instant::now();
    wait_slice(&api, "smiley-meshroute", "b removed", |s| {
        s.is_some_and(|s| addresses(s) == set(&[ip_a]))
    })
    .await;
    lat.record("replica not ready -> removed from slices", t.elapsed());
    k.apply(&self_service_yaml(&ns, &[(ip_a, true), (ip_b, true)]))
        .await;
    wait_slice(&api, "smiley-meshroute", "b back", |s| {
        s.is_some_and(|s| addresses(s) == set(&[ip_a, ip_b]))
    })
    .await;

    // The leader goes away (SIGTERM: releases the Lease; its pod leaves its Service).
    let lease = k
        .get_json(&["lease", &format!("lease-{ns}"), "-n", "meshroute"])
        .await;
    let holder = lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (leader, survivor, ip_left, ip_gone, survivor_id) = if holder == "replica-a" {
        (a, b_mesh, ip_b, ip_a, "replica-b")
    } else {
        assert_eq!(holder, "replica-b");
        (b_mesh, a, ip_a, ip_b, "replica-a")
    };
    leader.shutdown().await;
    let t = Instant::now();
    // Until the new leader writes, the slices stay as they were: the survivor serves at once.
    let s = api
        .get("smiley-meshroute")
        .await
        .expect("slices survive the leader");
    assert_eq!(ports(&s), p);
    wait_answer(SocketAddr::new(ip_left, port), None, "smiley-east").await;
    k.apply(&self_service_yaml(&ns, &[(ip_left, true)])).await;
    wait_object(
        &k,
        &["lease", &format!("lease-{ns}"), "-n", "meshroute"],
        "new leader",
        |l| l["spec"]["holderIdentity"] == survivor_id,
    )
    .await;
    let s = wait_slice(&api, "smiley-meshroute", "survivor only", |s| {
        s.is_some_and(|s| addresses(s) == set(&[ip_left]))
    })
    .await
    .expect("slice");
    lat.record("leader gone -> slice names only the survivor", t.elapsed());
    assert_eq!(ports(&s), p, "same ports after the leader change");
    assert!(!addresses(&s).contains(&ip_gone.to_string()));
    let r = dial(SocketAddr::new(ip_left, port), Some("smiley"), "/").await;
    assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");
    // And the new leader publishes new parents too.
    k.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: smiley2, namespace: {ns}}}\nspec: {{ports: [{{name: web, port: 8080}}]}}\n---\n{}",
        smiley_route(&ns, "smiley2").replace("port: 80}]\n  rules", "port: 8080}]\n  rules")
    ))
    .await;
    let s2 = wait_slice(&api, "smiley2-meshroute", "smiley2's slice", |s| {
        s.is_some()
    })
    .await
    .expect("slice");
    let p2 = ports(&s2);
    assert_eq!(p2[0].0, "web");
    assert_ne!(p2[0].1, port, "a port is not reused while a slice names it");
    wait_answer(SocketAddr::new(ip_left, p2[0].1), None, "smiley-east").await;
    lat.report();
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_with_a_selector_others_endpoints_a_mirror_or_an_opt_out_are_left_alone() {
    let test = "services_with_a_selector_others_endpoints_a_mirror_or_an_opt_out_are_left_alone";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "userep"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("alone");
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(&ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(&ns, "smiley-east", Some("east"), Some("smiley-east")));
    y.push_str("---\n");
    // Selector-less, endpoints written by its user.
    y.push_str(&b.service_yaml(&ns, "userep", None, Some("userep")));
    y.push_str(&format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: withsel, namespace: {ns}}}
spec: {{selector: {{app: withsel}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: mirror, namespace: {ns}, labels: {{mirror.linkerd.io/mirrored-service: "true", mirror.linkerd.io/cluster-name: east}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: p2p, namespace: {ns}, labels: {{multicluster.linkerd.io/remote-discovery: east}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: optout, namespace: {ns}, annotations: {{meshroute.dev/publish-endpoints: "false"}}}}
spec: {{ports: [{{name: http, port: 80}}]}}
"#
    ));
    for parent in ["smiley", "userep", "withsel", "mirror", "p2p", "optout"] {
        y.push_str("---\n");
        y.push_str(&smiley_route(&ns, parent));
    }
    k.apply(&y).await;
    let ip = b.host_ip();
    let mesh = Mesh::start_with(
        &meshroute_kubeconfig(&c),
        &ns,
        MeshOptions::advertised(&ns, ip),
    )
    .await;
    let api: Api<EndpointSlice> = Api::namespaced(admin_client(&c).await, &ns);
    wait_slice(
        &api,
        "smiley-meshroute",
        "the control parent's slice",
        |s| s.is_some(),
    )
    .await;
    for (parent, why) in [
        ("userep", "EndpointSlices managed by someone else"),
        ("withsel", "has a selector"),
        ("mirror", "multicluster mirror"),
        ("p2p", "multicluster mirror"),
        ("optout", "opts out"),
    ] {
        let v = wait_object(
            &k,
            &[LINKERD_ROUTE, &format!("{parent}-router"), "-n", &ns],
            "status says why",
            |v| {
                our_parent(v).is_some_and(|p| {
                    condition(&p, "Accepted").is_some_and(|c| c.0 == "True" && c.2.contains(why))
                })
            },
        )
        .await;
        let msg = condition(&our_parent(&v).expect("entry"), "Accepted")
            .expect("Accepted")
            .2;
        assert!(
            msg.contains("does not publish endpoints"),
            "{parent}: {msg}"
        );
    }
    // An Event on the Service says it too.
    let t0 = Instant::now();
    loop {
        let ev = k
            .get_json(&[
                "events.events.k8s.io",
                "-n",
                &ns,
                "--field-selector",
                "regarding.name=withsel",
            ])
            .await;
        if ev["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["reason"] == "EndpointsNotPublished"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no EndpointsNotPublished event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only smiley has a slice of ours; the user's slice is as the user wrote it.
    let ours = api
        .list(&ListParams::default().labels(OURS))
        .await
        .expect("list");
    let names: Vec<_> = ours
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["smiley-meshroute"]);
    let user = api.get("userep-1").await.expect("user slice");
    assert_eq!(user.endpoints[0].addresses, std::slice::from_ref(&b.ip));
    // userep still routes (by Host) and its own endpoints resolve as before.
    let r = mesh.get(&format!("userep.{ns}"), "/").await;
    assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_publish_endpoints_writes_no_slice_and_opens_no_parent_port() {
    let test = "no_publish_endpoints_writes_no_slice_and_opens_no_parent_port";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("nopublish");
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(&ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(&ns, "smiley-east", Some("east"), Some("smiley-east")));
    y.push_str("---\n");
    y.push_str(&smiley_route(&ns, "smiley"));
    k.apply(&y).await;
    let ip = b.host_ip();
    let mut o = MeshOptions::advertised(&ns, ip);
    o.publish.enabled = false;
    let range = o.publish.port_range.clone();
    let mesh = Mesh::start_with(&meshroute_kubeconfig(&c), &ns, o).await;
    // Status is written as before, without any word about endpoints.
    let v = wait_object(
        &k,
        &[LINKERD_ROUTE, "smiley-router", "-n", &ns],
        "Accepted",
        |v| our_parent(v).is_some_and(|p| condition(&p, "Accepted").is_some_and(|c| c.0 == "True")),
    )
    .await;
    let msg = condition(&our_parent(&v).expect("entry"), "Accepted")
        .expect("Accepted")
        .2;
    assert!(!msg.contains("endpoints"), "{msg}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin_client(&c).await, &ns);
    let ours = api
        .list(&ListParams::default().labels(OURS))
        .await
        .expect("list");
    assert!(ours.items.is_empty(), "{:?}", ours.items);
    for port in range {
        assert!(
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .is_err(),
            "port {port} is open"
        );
    }
    // Host-based routing on the main listener is unchanged.
    let r = mesh.get(&format!("smiley.{ns}"), "/").await;
    assert_eq!(r.backend.as_deref(), Some("smiley-east"), "{r:?}");
    mesh.shutdown().await;
}

/// Tally replies by backend (or `status:error`).
fn tally(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in replies {
        let k = r
            .backend
            .clone()
            .unwrap_or_else(|| format!("{}:{}", r.status, r.error.clone().unwrap_or_default()));
        *out.entry(k).or_default() += 1;
    }
    out
}

/// How long a ClusterIP call may take to follow a change meshroute made.
const FOLLOW_LIMIT: Duration = Duration::from_secs(30);

/// From the test host, call `ip:80` with `Host: host` until one answer satisfies `done`, for
/// at most `limit`.
async fn follow_cluster_ip(
    b: &Backends,
    kp: &KubeProxy,
    ip: &str,
    host: &str,
    since: Instant,
    limit: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Duration {
    loop {
        let r = b.call(ip, 80, 1, Some(host)).await;
        if r.first().is_some_and(&done) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{host} at {ip}: traffic did not follow within {limit:?} (last {r:?}); kube-proxy log:\n{}",
            kp.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_story_through_cluster_ips_and_a_real_kube_proxy_with_unchanged_clients() {
    let test = "seed_story_through_cluster_ips_and_a_real_kube_proxy_with_unchanged_clients";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color-local", "color2-west"]) else {
        return;
    };
    let Some(kp) = KubeProxy::start(test, &c, &b).await else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("seed");
    k.apply(&story_yaml(&b, &ns)).await;
    let cluster_ip = |svc: &str| {
        let k = k.clone();
        let (svc, ns) = (svc.to_string(), ns.clone());
        async move {
            k.arun(
                &[
                    "get",
                    "svc",
                    &svc,
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.spec.clusterIP}",
                ],
                "",
            )
            .await
            .expect_ok()
        }
    };
    let (smiley_ip, color_ip) = (cluster_ip("smiley").await, cluster_ip("color").await);
    let mesh = Mesh::start_with(
        &meshroute_kubeconfig(&c),
        &ns,
        MeshOptions::advertised(&ns, b.host_ip()),
    )
    .await;
    let lat = Latencies::new(test);

    // Sanity: kube-proxy serves the cluster — color-local's own pods through its ClusterIP.
    // This waits for kube-proxy itself to start and program its first rules (nothing of
    // meshroute's is involved), which on a loaded machine has taken over 30 s; the changes
    // meshroute makes below are held to FOLLOW_LIMIT.
    let local_ip = cluster_ip("color-local").await;
    let kube_proxy_start = Duration::from_secs(120);
    follow_cluster_ip(
        &b,
        &kp,
        &local_ip,
        "color-local",
        Instant::now(),
        kube_proxy_start,
        |r| r.backend.as_deref() == Some("color-local"),
    )
    .await;
    // smiley has no endpoints yet: the call fails, as it does in a cluster today.
    let r = b.call(&smiley_ip, 80, 1, Some("smiley")).await;
    assert_eq!(r[0].status, 0, "{r:?}");

    // smiley → smiley-east: the unchanged client's `http://smiley/` now reaches the east cluster.
    k.apply(&smiley_route(&ns, "smiley")).await;
    let t = Instant::now();
    let d = follow_cluster_ip(&b, &kp, &smiley_ip, "smiley", t, FOLLOW_LIMIT, |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    lat.record("route applied -> ClusterIP call reaches smiley-east", d);
    let r = b
        .call(&smiley_ip, 80, 20, Some(&format!("smiley.{ns}:80")))
        .await;
    assert!(
        r.iter()
            .all(|r| r.backend.as_deref() == Some("smiley-east")),
        "{r:?}"
    );
    // A client that sends the ClusterIP itself as Host is served too (the port decides).
    let r = b.call(&smiley_ip, 80, 5, None).await;
    assert!(
        r.iter()
            .all(|r| r.backend.as_deref() == Some("smiley-east")),
        "{r:?}"
    );

    // color 50/50 between its own pods and the west cluster, then migrate.
    k.apply(&color_split(&ns, 50, 50)).await;
    let t = Instant::now();
    let d = follow_cluster_ip(&b, &kp, &color_ip, "color", t, FOLLOW_LIMIT, |r| {
        r.backend.as_deref() == Some("color2-west")
    })
    .await;
    lat.record("split applied -> ClusterIP call reaches color2-west", d);
    let got = tally(&b.call(&color_ip, 80, 200, Some("color")).await);
    let west = got.get("color2-west").copied().unwrap_or(0);
    let local = got.get("color-local").copied().unwrap_or(0);
    assert_eq!(west + local, 200, "{got:?}");
    assert!((60..=140).contains(&west), "50/50: {got:?}");
    let before = mesh.generation();
    k.arun(
        &[
            "patch",
            GATEWAY_ROUTE,
            "color-split",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/weight","value":0},
              {"op":"replace","path":"/spec/rules/0/backendRefs/1/weight","value":100}]"#,
        ],
        "",
    )
    .await
    .expect_ok();
    let t = Instant::now();
    while mesh.generation() <= before {
        assert!(t.elapsed() < Duration::from_secs(20), "no new table");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    lat.record("weights edited -> new table", t.elapsed());
    let got = tally(&b.call(&color_ip, 80, 100, Some("color")).await);
    assert_eq!(got.get("color2-west"), Some(&100), "{got:?}");

    // The route goes: smiley leads nowhere again (its slice is removed).
    k.arun(&["delete", LINKERD_ROUTE, "smiley-router", "-n", &ns], "")
        .await
        .expect_ok();
    let t = Instant::now();
    follow_cluster_ip(&b, &kp, &smiley_ip, "smiley", t, FOLLOW_LIMIT, |r| {
        r.status == 0
    })
    .await;
    lat.report();
    mesh.shutdown().await;
    drop(kp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_port_range_leaves_the_next_parent_unpublished_and_says_so() {
    let test = "a_full_port_range_leaves_the_next_parent_unpublished_and_says_so";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color-local", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("full");
    k.apply(&story_yaml(&b, &ns)).await;
    let ip = b.host_ip();
    let mut o = MeshOptions::advertised(&ns, ip);
    let first = *o.publish.port_range.start();
    o.publish.port_range = first..=first;
    let mesh = Mesh::start_with(&meshroute_kubeconfig(&c), &ns, o).await;
    let api: Api<EndpointSlice> = Api::namespaced(admin_client(&c).await, &ns);
    k.apply(&smiley_route(&ns, "smiley")).await;
    let s = wait_slice(&api, "smiley-meshroute", "smiley's slice", |s| s.is_some())
        .await
        .expect("slice");
    assert_eq!(ports(&s), [("http".to_string(), first)]);
    k.apply(&color_split(&ns, 50, 50)).await;
    let t0 = Instant::now();
    loop {
        let ev = k
            .get_json(&[
                "events.events.k8s.io",
                "-n",
                &ns,
                "--field-selector",
                "regarding.name=color",
            ])
            .await;
        if ev["items"].as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["reason"] == "PortRangeFull" && e["type"] == "Warning")
        }) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no PortRangeFull event"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(api.get_opt("color-meshroute").await.expect("get").is_none());
    // smiley keeps its port and its traffic.
    wait_answer(SocketAddr::new(ip, first), None, "smiley-east").await;
    // Its route goes: the port is free once no slice names it, and color gets it.
    k.arun(&["delete", LINKERD_ROUTE, "smiley-router", "-n", &ns], "")
        .await
        .expect_ok();
    let s = wait_slice(&api, "color-meshroute", "color published", |s| s.is_some())
        .await
        .expect("slice");
    assert_eq!(ports(&s), [("http".to_string(), first)]);
    wait_answer(SocketAddr::new(ip, first), None, "color2-west").await;
    mesh.shutdown().await;
}
