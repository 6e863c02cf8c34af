//! Multicluster with real parts: two kube-apiservers (`north`, where meshroute runs, and a
//! fresh `east` linked with `--link east=KUBECONFIG`), meshroute in-process in Kubernetes mode,
//! echo backends on a private network namespace whose address is in east's EndpointSlice.
//! meshroute reads east as User `meshroute` bound only to `deploy/remote/rbac.yaml`'s
//! ClusterRole, through a relay that the outage test cuts.
//!
//! Pod-to-pod mirrors: `smiley-east` in north is selector-less, labelled
//! `multicluster.linkerd.io/remote-discovery: east` and `remote-service: smiley`, and has no
//! endpoints in north.

#[path = "support/e2e.rs"]
mod e2e;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{
    cluster, condition, meshroute_bin, our_parent, own_cluster, port_range, repo, unique,
    wait_object, Backends, Kubectl, Latencies, Mesh, Relay,
};
use meshroute::run::RunConfig;
use meshroute::sources::kube::{KubeOptions, Link, PublishOptions};

const GATEWAY_ROUTE: &str = "httproutes.gateway.networking.k8s.io";

/// North: `smiley` and `smiley-nf` (selector-less parents), the pod-to-pod mirror `smiley-east`
/// and a local `smiley2` with an endpoint.
fn north_yaml(b: &Backends, ns: &str) -> String {
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "smiley-nf", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "smiley2", None, Some("smiley2")));
    y.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: smiley-federated\n  namespace: {ns}\n  annotations: {{multicluster.linkerd.io/remote-discovery: smiley@east, multicluster.linkerd.io/local-discovery: smiley2}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    ));
    y.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: smiley-east\n  namespace: {ns}\n  labels: {{multicluster.linkerd.io/remote-discovery: east, multicluster.linkerd.io/remote-service: smiley}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    ));
    y
}

/// East: `smiley`, exported for remote discovery, with the backend's address.
fn east_yaml(b: &Backends, ns: &str, ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: smiley\n  namespace: {ns}\n  labels: {{mirror.linkerd.io/exported: remote-discovery}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: smiley-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: smiley}}\naddressType: IPv4\nports: [{{name: http, port: {}, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: {ready}}}}}]\n",
        b.port("smiley"),
        b.ip
    )
}

/// `parent` → 1 × smiley-east, 0 × smiley2; with linkerd-failover's annotation and label
/// when `failover`.
fn route(ns: &str, name: &str, parent: &str, failover: bool) -> String {
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
    - {{name: smiley2, port: 80, weight: 0}}
"#
    )
}

/// Apply the remote-side RBAC we ship and bind its ClusterRole to User `meshroute` (whose
/// kubeconfig the test environment wrote), so meshroute reads east with exactly that.
fn grant_remote_rbac(east: &Kubectl) {
    let rbac = std::fs::read_to_string(repo().join("deploy/remote/rbac.yaml")).expect("rbac");
    east.run_in(&["apply", "-f", "-"], &rbac).expect_ok();
    let bind = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: meshroute-remote-test-user}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshroute-remote}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}]\n";
    east.run_in(&["apply", "-f", "-"], bind).expect_ok();
}

async fn mesh_linked(north: &Path, ns: &str, east: PathBuf) -> Mesh {
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
            links: vec![Link {
                name: "east".into(),
                kubeconfig: east,
            }],
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

async fn set_ready(east: &Kubectl, ns: &str, ready: bool) {
    set_slice_ready(east, ns, "smiley-1", ready).await;
}

async fn set_slice_ready(k: &Kubectl, ns: &str, slice: &str, ready: bool) {
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

fn explain(admin: SocketAddr, host: &str) -> String {
    let out = std::process::Command::new(meshroute_bin())
        .args(["explain", "--admin", &admin.to_string(), "--host", host])
        .output()
        .expect("meshroute explain");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_mirror_reaches_east_fails_over_within_one_swap_and_federates_local_first() {
    let test =
        "pod_to_pod_mirror_reaches_east_fails_over_within_one_swap_and_federates_local_first";
    let Some(north) = cluster(test) else { return };
    let Some(east) = own_cluster(test, "east") else {
        return;
    };
    let Some(b) = Backends::start(test, &["smiley", "smiley2"]) else {
        return;
    };
    let (kn, ke) = (Kubectl::new(&north.admin), Kubectl::new(&east.0.admin));
    grant_remote_rbac(&ke);
    let ns = unique("mc");
    kn.apply(&north_yaml(&b, &ns)).await;
    ke.apply(&east_yaml(&b, &ns, true)).await;
    let east_kc = east.0.restricted.clone().expect("east user kubeconfig");
    let north_kc = north.restricted.clone().unwrap_or(north.admin.clone());
    let mesh = mesh_linked(&north_kc, &ns, east_kc).await;
    // Remote EndpointSlice changes only (the route apply is timed on its own).
    let lat = Latencies::new(test);
    let lat_route = Latencies::new(&format!("{test} (route apply)"));
    let smiley = format!("smiley.{ns}.svc.cluster.local");
    let nf = format!("smiley-nf.{ns}.svc.cluster.local");

    // smiley → smiley-east (failover on), smiley-nf → smiley-east (failover off).
    kn.apply(&route(&ns, "smiley-router", "smiley", true)).await;
    kn.apply(&route(&ns, "smiley-nf-router", "smiley-nf", false))
        .await;
    let t = Instant::now();
    lat_route
        .follow("route to pod-to-pod mirror", &mesh, &smiley, t, |r| {
            r.backend.as_deref() == Some("smiley")
        })
        .await;
    let tally = mesh.tally(&nf, 10).await;
    assert_eq!(tally.get("smiley"), Some(&10), "{tally:?}");

    // The cluster is labelled in /debug/table, metrics and explain.
    let text = explain(mesh.admin, &smiley);
    assert!(text.contains("cluster=east"), "{text}");
    assert!(
        text.contains(&format!("{}:{}", b.ip, b.port("smiley"))),
        "{text}"
    );
    let metrics = reqwest_get(mesh.admin, "/metrics").await;
    assert!(
        metrics.contains("backend_cluster=\"east\""),
        "no backend_cluster=\"east\" in /metrics"
    );

    // East's endpoint goes not ready and back, 16 times: with failover the share moves to
    // smiley2 within the swap that saw it go and returns; without, that share is a 503.
    for i in 0..16 {
        set_ready(&ke, &ns, false).await;
        let t = Instant::now();
        // Never a 503 on the way: the swap that drops east's endpoint moves its share.
        lat.follow("east endpoint not ready", &mesh, &smiley, t, |r| {
            assert_eq!(r.status, 200, "failover leaves no gap: {r:?}");
            r.backend.as_deref() == Some("smiley2")
        })
        .await;
        // The same table: no request in between may still land on east.
        let r = mesh.get(&smiley, "/").await;
        assert_eq!(r.backend.as_deref(), Some("smiley2"), "{r:?}");
        let r = mesh.get(&nf, "/").await;
        assert_eq!(r.status, 503, "no failover without the annotation: {r:?}");
        if i == 0 {
            let obj = wait_object(
                &kn,
                &[GATEWAY_ROUTE, "smiley-router", "-n", &ns],
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
            assert!(msg.contains("its share goes to"), "{msg}");
        }
        set_ready(&ke, &ns, true).await;
        let t = Instant::now();
        lat.follow("east endpoint ready again", &mesh, &smiley, t, |r| {
            assert_eq!(r.status, 200, "{r:?}");
            r.backend.as_deref() == Some("smiley")
        })
        .await;
        let r = mesh.get(&nf, "/").await;
        assert_eq!(r.backend.as_deref(), Some("smiley"), "{r:?}");
    }

    // A federated Service: local first (smiley2 in north), spilling to east when the local
    // endpoint is not ready, and back.
    let fed = format!("smiley-federated.{ns}.svc.cluster.local");
    let tally = mesh.tally(&fed, 10).await;
    assert_eq!(tally.get("smiley2"), Some(&10), "local first: {tally:?}");
    set_slice_ready(&kn, &ns, "smiley2-1", false).await;
    let t = Instant::now();
    while mesh.get(&fed, "/").await.backend.as_deref() != Some("smiley") {
        assert!(t.elapsed() < Duration::from_secs(20), "no spill to east");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tally = mesh.tally(&fed, 10).await;
    assert_eq!(tally.get("smiley"), Some(&10), "spilled to east: {tally:?}");
    set_slice_ready(&kn, &ns, "smiley2-1", true).await;
    let t = Instant::now();
    while mesh.get(&fed, "/").await.backend.as_deref() != Some("smiley2") {
        assert!(t.elapsed() < Duration::from_secs(20), "not back to local");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    lat_route.report();
    lat.report();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_api_server_gone_keeps_last_endpoints_and_resyncs() {
    let test = "linked_api_server_gone_keeps_last_endpoints_and_resyncs";
    let Some(north) = cluster(test) else { return };
    let Some(east) = own_cluster(test, "east") else {
        return;
    };
    let Some(b) = Backends::start(test, &["smiley", "smiley2"]) else {
        return;
    };
    let (kn, ke) = (Kubectl::new(&north.admin), Kubectl::new(&east.0.admin));
    grant_remote_rbac(&ke);
    let ns = unique("mc-outage");
    kn.apply(&north_yaml(&b, &ns)).await;
    ke.apply(&east_yaml(&b, &ns, true)).await;
    // meshroute reaches east only through the relay.
    let mut relay = Relay::start(&east.0.server).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let east_kc = relay.kubeconfig(
        east.0.restricted.as_ref().expect("east user kubeconfig"),
        &east.0.server,
        &tmp.path().join("east"),
    );
    let north_kc = north.restricted.clone().unwrap_or(north.admin.clone());
    let mesh = mesh_linked(&north_kc, &ns, east_kc).await;
    let smiley = format!("smiley.{ns}.svc.cluster.local");
    kn.apply(&route(&ns, "smiley-router", "smiley", true)).await;
    let t0 = Instant::now();
    while mesh.get(&smiley, "/").await.backend.as_deref() != Some("smiley") {
        assert!(t0.elapsed() < Duration::from_secs(20), "no traffic to east");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // East's API server goes away: its last endpoints keep serving.
    relay.stop().await;
    let gone = Instant::now();
    let mut served = 0;
    while gone.elapsed() < Duration::from_secs(3) {
        let r = mesh.get(&smiley, "/").await;
        assert_eq!(
            r.backend.as_deref(),
            Some("smiley"),
            "during the outage: {r:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 10);
    // East changes meanwhile (its endpoint goes not ready): not seen yet.
    set_ready(&ke, &ns, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = mesh.get(&smiley, "/").await;
    assert_eq!(
        r.backend.as_deref(),
        Some("smiley"),
        "still the last endpoints"
    );

    // Back, without a restart: the watch resumes and follows the change (failover to
    // smiley2), then follows new changes at watch speed.
    relay.restart().await;
    let back = Instant::now();
    while mesh.get(&smiley, "/").await.backend.as_deref() != Some("smiley2") {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no resync with east within 60s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{test}: resync after east came back: {} ms (includes watch backoff)",
        back.elapsed().as_millis()
    );
    set_ready(&ke, &ns, true).await;
    let t = Instant::now();
    while mesh.get(&smiley, "/").await.backend.as_deref() != Some("smiley") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "edit after resync not followed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    mesh.shutdown().await;
    relay.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerd_link_objects_link_and_unlink_a_cluster_without_a_restart() {
    let test = "linkerd_link_objects_link_and_unlink_a_cluster_without_a_restart";
    let Some(north) = cluster(test) else { return };
    let Some(east) = own_cluster(test, "east") else {
        return;
    };
    let Some(b) = Backends::start(test, &["smiley", "smiley2"]) else {
        return;
    };
    let (kn, ke) = (Kubectl::new(&north.admin), Kubectl::new(&east.0.admin));
    grant_remote_rbac(&ke);
    kn.run_in(&["apply", "-f", "-"], LINK_CRD).expect_ok();
    kn.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/links.multicluster.linkerd.io",
    ])
    .expect_ok();
    let ns = unique("mc-link");
    let links_ns = unique("mc-links");
    kn.apply(&north_yaml(&b, &ns)).await;
    ke.apply(&east_yaml(&b, &ns, true)).await;
    // The shipped Links RBAC, in the Links' namespace, bound to the test's User too.
    kn.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {links_ns}}}\n"
    ))
    .await;
    let rbac = std::fs::read_to_string(repo().join("deploy/links/rbac.yaml")).expect("rbac");
    kn.arun(&["apply", "-n", &links_ns, "-f", "-"], &rbac)
        .await
        .expect_ok();
    kn.apply(&format!("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: meshroute-links-test-user, namespace: {links_ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshroute-links}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}}]\n")).await;

    let north_kc = north.restricted.clone().unwrap_or(north.admin.clone());
    let mesh = Mesh::from_config(RunConfig {
        kube: true,
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        kube_options: KubeOptions {
            kubeconfig: Some(north_kc),
            namespace: Some(ns.clone()),
            lease_namespace: Some("meshroute".into()),
            lease_name: Some(format!("lease-{ns}")),
            identity: Some(format!("test-{ns}")),
            publish: PublishOptions {
                port_range: port_range(),
                ..Default::default()
            },
            link_namespace: Some(links_ns.clone()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let smiley = format!("smiley.{ns}.svc.cluster.local");
    kn.apply(&route(&ns, "smiley-router", "smiley", false))
        .await;
    // East is not linked yet: the mirror does not resolve, and says why.
    wait_object(
        &kn,
        &[GATEWAY_ROUTE, "smiley-router", "-n", &ns],
        "not linked",
        |v| {
            our_parent(v).is_some_and(|p| {
                condition(&p, "ResolvedRefs").is_some_and(|c| c.2.contains("not linked"))
            })
        },
    )
    .await;
    // An unresolved backendRef fails its share with 500 (Gateway API).
    assert_eq!(mesh.get(&smiley, "/").await.status, 500);

    // Link + credentials Secret, as `linkerd multicluster link` writes them.
    let east_kc = east.0.restricted.clone().expect("east user kubeconfig");
    kn.arun(
        &[
            "create",
            "secret",
            "generic",
            "cluster-credentials-east",
            "-n",
            &links_ns,
            "--type=mirror.linkerd.io/remote-kubeconfig",
            &format!("--from-file=kubeconfig={}", east_kc.display()),
        ],
        "",
    )
    .await
    .expect_ok();
    kn.apply(&format!("apiVersion: multicluster.linkerd.io/v1alpha3\nkind: Link\nmetadata: {{name: east, namespace: {links_ns}}}\nspec: {{targetClusterName: east, clusterCredentialsSecret: cluster-credentials-east, targetClusterDomain: cluster.local}}\n")).await;
    let t = Instant::now();
    while mesh.get(&smiley, "/").await.backend.as_deref() != Some("smiley") {
        assert!(t.elapsed() < Duration::from_secs(30), "Link not followed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{test}: Link applied → traffic to east: {} ms",
        t.elapsed().as_millis()
    );

    // Deleting the Link unlinks east: its endpoints go.
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
    let t = Instant::now();
    while mesh.get(&smiley, "/").await.status != 500 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Link deletion not followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.shutdown().await;
}

/// GET from the admin port.
async fn reqwest_get(admin: SocketAddr, path: &str) -> String {
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
