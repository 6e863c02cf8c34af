//! The multicluster traffic-shifting story end to end: real kube-apiserver, real `kubectl`,
//! meshroute in Kubernetes mode (as User `meshroute`, bound only to the shipped RBAC), echo
//! backends on a private network namespace. Every step measures the time from kubectl
//! returning to the first request served by the new table.

#[path = "support/e2e.rs"]
mod e2e;

use std::time::{Duration, Instant};

use e2e::{
    cluster, condition, our_parent, unique, wait_object, Backends, Kubectl, Latencies, Mesh, Relay,
};

/// Namespace, Services and slices of the story: `smiley` (no endpoints), mirrored
/// `smiley-east`, local `color`, mirrored `color2-west`.
async fn setup(k: &Kubectl, b: &Backends, ns: &str) {
    let mut y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
    y.push_str(&b.service_yaml(ns, "smiley", None, None));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "smiley-east", Some("east"), Some("smiley-east")));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "color", None, Some("color")));
    y.push_str("---\n");
    y.push_str(&b.service_yaml(ns, "color2-west", Some("west"), Some("color2-west")));
    k.apply(&y).await;
}

fn kubeconfig_for_meshroute(c: &e2e::Cluster) -> std::path::PathBuf {
    c.restricted.clone().unwrap_or_else(|| c.admin.clone())
}

fn smiley_route(ns: &str) -> String {
    format!(
        r#"apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {{name: smiley-router, namespace: {ns}}}
spec:
  parentRefs: [{{name: smiley, kind: Service, group: core, port: 80}}]
  rules:
  - backendRefs: [{{name: smiley-east, port: 80}}]
    timeouts: {{request: 5s}}
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
    - {{name: color, port: 80, weight: {local}}}
    - {{name: color2-west, port: 80, weight: {west}}}
"#
    )
}

const LINKERD_ROUTE: &str = "httproutes.policy.linkerd.io";
const GATEWAY_ROUTE: &str = "httproutes.gateway.networking.k8s.io";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicluster_story_follows_every_kubectl_change() {
    let test = "multicluster_story_follows_every_kubectl_change";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("story");
    setup(&k, &b, &ns).await;
    let mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let lat = Latencies::new(test);
    let smiley = format!("smiley.{ns}.svc.cluster.local");
    let color = format!("color.{ns}.svc.cluster.local");

    // No route: smiley passes through to its own endpoints, and it has none.
    let r = mesh.get(&smiley, "/").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.error.is_some(), "proxy-made answers say why: {r:?}");

    // Send everything to the mirrored smiley-east with a 5s timeout.
    k.apply(&smiley_route(&ns)).await;
    let t = Instant::now();
    lat.follow("apply linkerd v1beta3 route", &mesh, &smiley, t, |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    let obj = wait_object(
        &k,
        &[LINKERD_ROUTE, "smiley-router", "-n", &ns],
        "Accepted status",
        |v| {
            our_parent(v).is_some_and(|p| {
                condition(&p, "Accepted").is_some_and(|c| c.0 == "True")
                    && condition(&p, "ResolvedRefs").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;
    let p = our_parent(&obj).expect("our parent entry");
    assert_eq!(p["parentRef"]["name"], "smiley");
    assert_eq!(
        p["conditions"][0]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    // A call slower than 300ms but well within 5s succeeds.
    let r = mesh.get(&smiley, "/?delay=600").await;
    assert_eq!((r.status, r.backend.as_deref()), (200, Some("smiley-east")));
    mesh.settle(Duration::from_millis(300)).await;

    // Tune the timeout down: slow calls now get 504.
    let before = mesh.generation();
    k.arun(
        &[
            "patch",
            LINKERD_ROUTE,
            "smiley-router",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/timeouts/request","value":"300ms"}]"#,
        ],
        "",
    )
    .await
    .expect_ok();
    let t = Instant::now();
    lat.follow_generation("patch timeout 5s -> 300ms", &mesh, &smiley, before, t)
        .await;
    let r = mesh.get(&smiley, "/?delay=1000").await;
    assert_eq!(r.status, 504, "{r:?}");
    let r = mesh.get(&smiley, "/").await;
    assert_eq!((r.status, r.backend.as_deref()), (200, Some("smiley-east")));

    // Split color 50/50 with the mirrored color2-west (Gateway API v1 route).
    let r = mesh.get(&color, "/").await;
    assert_eq!(
        r.backend.as_deref(),
        Some("color"),
        "passthrough before any route"
    );
    k.apply(&color_split(&ns, 50, 50)).await;
    let t = Instant::now();
    lat.follow("apply gateway v1 50/50 split", &mesh, &color, t, |r| {
        r.backend.as_deref() == Some("color2-west")
    })
    .await;
    let tally = mesh.tally(&color, 200).await;
    let west = tally.get("color2-west").copied().unwrap_or(0);
    let local = tally.get("color").copied().unwrap_or(0);
    assert_eq!(west + local, 200, "{tally:?}");
    assert!((60..=140).contains(&west), "50/50 split: {tally:?}");
    wait_object(
        &k,
        &[GATEWAY_ROUTE, "color-split", "-n", &ns],
        "Accepted status",
        |v| our_parent(v).is_some_and(|p| condition(&p, "Accepted").is_some_and(|c| c.0 == "True")),
    )
    .await;
    mesh.settle(Duration::from_millis(300)).await;

    // Migrate: weights 0/100.
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
    lat.follow_generation("edit weights 50/50 -> 0/100", &mesh, &color, before, t)
        .await;
    let tally = mesh.tally(&color, 100).await;
    assert_eq!(tally.get("color2-west"), Some(&100), "{tally:?}");
    mesh.settle(Duration::from_millis(300)).await;

    // Remove the local backendRef altogether.
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
            r#"[{"op":"remove","path":"/spec/rules/0/backendRefs/0"}]"#,
        ],
        "",
    )
    .await
    .expect_ok();
    let t = Instant::now();
    lat.follow_generation("remove local backendRef", &mesh, &color, before, t)
        .await;
    let tally = mesh.tally(&color, 50).await;
    assert_eq!(tally.get("color2-west"), Some(&50), "{tally:?}");

    // Delete the routes: passthrough again.
    k.arun(&["delete", GATEWAY_ROUTE, "color-split", "-n", &ns], "")
        .await
        .expect_ok();
    let t = Instant::now();
    lat.follow("delete gateway route", &mesh, &color, t, |r| {
        r.backend.as_deref() == Some("color")
    })
    .await;
    k.arun(&["delete", LINKERD_ROUTE, "smiley-router", "-n", &ns], "")
        .await
        .expect_ok();
    let t = Instant::now();
    lat.follow("delete linkerd route", &mesh, &smiley, t, |r| {
        r.status == 503
    })
    .await;

    lat.report();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_with_missing_service_fails_only_its_share() {
    let test = "backend_with_missing_service_fails_only_its_share";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("missing");
    setup(&k, &b, &ns).await;
    let mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let lat = Latencies::new(test);
    let color = format!("color.{ns}.svc.cluster.local");

    k.apply(&color_split(&ns, 50, 50)).await;
    let t = Instant::now();
    lat.follow("apply 50/50 split", &mesh, &color, t, |r| {
        r.backend.as_deref() == Some("color2-west")
    })
    .await;
    wait_object(
        &k,
        &[GATEWAY_ROUTE, "color-split", "-n", &ns],
        "ResolvedRefs=True",
        |v| {
            our_parent(v)
                .is_some_and(|p| condition(&p, "ResolvedRefs").is_some_and(|c| c.0 == "True"))
        },
    )
    .await;

    // Another controller (Linkerd) holds its own entry in the same status list.
    let obj = k.get_json(&[GATEWAY_ROUTE, "color-split", "-n", &ns]).await;
    let mut parents = obj["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let linkerd = serde_json::json!({
        "parentRef": {"group": "core", "kind": "Service", "name": "color", "namespace": ns, "port": 80},
        "controllerName": "linkerd.io/policy-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    });
    parents.push(linkerd.clone());
    let patch = serde_json::json!({"status": {"parents": parents}}).to_string();
    k.arun(
        &[
            "patch",
            GATEWAY_ROUTE,
            "color-split",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        "",
    )
    .await
    .expect_ok();

    // Point the west backendRef at a Service that does not exist.
    k.arun(
        &["patch", GATEWAY_ROUTE, "color-split", "-n", &ns, "--type=json", "-p",
          r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/1/name","value":"color2-nowhere"}]"#],
        "",
    )
    .await
    .expect_ok();
    let t = Instant::now();
    lat.follow(
        "point a backendRef at a missing Service",
        &mesh,
        &color,
        t,
        |r| r.status == 500,
    )
    .await;
    let obj = wait_object(
        &k,
        &[GATEWAY_ROUTE, "color-split", "-n", &ns],
        "BackendNotFound",
        |v| {
            our_parent(v).is_some_and(|p| {
                condition(&p, "ResolvedRefs")
                    .is_some_and(|c| c.0 == "False" && c.1 == "BackendNotFound")
            })
        },
    )
    .await;
    let others: Vec<&serde_json::Value> = obj["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] != "meshroute.dev/controller")
        .collect();
    assert_eq!(
        others,
        vec![&linkerd],
        "Linkerd's entry is left exactly as it was"
    );
    let p = our_parent(&obj).expect("our entry");
    let (_, _, message) = condition(&p, "ResolvedRefs").expect("ResolvedRefs");
    assert!(
        message.contains("color2-nowhere"),
        "message names the missing Service: {message}"
    );
    assert_eq!(
        condition(&p, "Accepted").map(|c| c.0),
        Some("True".to_string()),
        "the route stays accepted"
    );

    let tally = mesh.tally(&color, 200).await;
    let failed: usize = tally
        .iter()
        .filter(|(k, _)| k.starts_with("500:"))
        .map(|(_, n)| n)
        .sum();
    let local = tally.get("color").copied().unwrap_or(0);
    assert_eq!(
        failed + local,
        200,
        "only the missing backend's share fails: {tally:?}"
    );
    assert!((60..=140).contains(&failed), "about half fails: {tally:?}");

    lat.report();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_refused_by_crd_schema_leaves_traffic_untouched() {
    let test = "edit_refused_by_crd_schema_leaves_traffic_untouched";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("schema");
    setup(&k, &b, &ns).await;
    let mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let lat = Latencies::new(test);
    let smiley = format!("smiley.{ns}.svc.cluster.local");

    k.apply(&smiley_route(&ns)).await;
    let t = Instant::now();
    lat.follow("apply route", &mesh, &smiley, t, |r| {
        r.backend.as_deref() == Some("smiley-east")
    })
    .await;
    mesh.settle(Duration::from_millis(500)).await;
    let before = mesh.generation();

    // Not a GEP-2257 duration: the CRD's pattern refuses it, kubectl reports it.
    let out = k
        .arun(
            &[
                "patch",
                LINKERD_ROUTE,
                "smiley-router",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/rules/0/timeouts/request","value":"5 seconds"}]"#,
            ],
            "",
        )
        .await;
    assert!(!out.ok, "the API server must refuse a bad duration");
    assert!(
        out.stderr.contains("timeouts.request") || out.stderr.contains("timeouts/request"),
        "kubectl names the field: {}",
        out.stderr
    );
    // A weight out of range is refused too.
    let out = k
        .arun(
            &[
                "patch",
                LINKERD_ROUTE,
                "smiley-router",
                "-n",
                &ns,
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/spec/rules/0/backendRefs/0/weight","value":-1}]"#,
            ],
            "",
        )
        .await;
    assert!(!out.ok, "negative weight must be refused: {}", out.stdout);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mesh.generation(), before, "nothing reached the table");
    let r = mesh.get(&smiley, "/?delay=600").await;
    assert_eq!(
        (r.status, r.backend.as_deref()),
        (200, Some("smiley-east")),
        "5s timeout still live"
    );

    lat.report();
    mesh.shutdown().await;
}

fn split_v1alpha2(ns: &str, local: u32, west: u32) -> String {
    format!(
        r#"apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {{name: color-canary, namespace: {ns}}}
spec:
  service: color
  backends:
  - {{service: color, weight: {local}}}
  - {{service: color2-west, weight: {west}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trafficsplit_v1alpha2_shifts_weights_step_by_step() {
    let test = "trafficsplit_v1alpha2_shifts_weights_step_by_step";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("split");
    setup(&k, &b, &ns).await;
    let mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let lat = Latencies::new(test);
    let color = format!("color.{ns}.svc.cluster.local");

    // Flagger-style: start all local, then shift in steps by re-applying the split.
    let before = mesh.generation();
    k.apply(&split_v1alpha2(&ns, 100, 0)).await;
    let t = Instant::now();
    lat.follow_generation("create split 100/0", &mesh, &color, before, t)
        .await;
    let tally = mesh.tally(&color, 40).await;
    assert_eq!(tally.get("color"), Some(&40), "{tally:?}");
    for (local, west) in [(90, 10), (75, 25), (50, 50), (25, 75), (0, 100)] {
        mesh.settle(Duration::from_millis(200)).await;
        let before = mesh.generation();
        k.apply(&split_v1alpha2(&ns, local, west)).await;
        let t = Instant::now();
        lat.follow_generation(&format!("step {local}/{west}"), &mesh, &color, before, t)
            .await;
    }
    let tally = mesh.tally(&color, 60).await;
    assert_eq!(tally.get("color2-west"), Some(&60), "{tally:?}");

    // Weight changes are reported as Events on the TrafficSplit.
    let t0 = Instant::now();
    loop {
        let ev = k
            .get_json(&[
                "events.events.k8s.io",
                "-n",
                &ns,
                "--field-selector",
                "regarding.name=color-canary",
            ])
            .await;
        let reasons: Vec<String> = ev["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["reason"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if reasons.iter().any(|r| r == "WeightsChanged") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no WeightsChanged event: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A backend that does not exist is a Warning Event.
    k.apply(&split_v1alpha2(&ns, 50, 50).replace("service: color2-west", "service: nowhere"))
        .await;
    let t0 = Instant::now();
    loop {
        let ev = k
            .get_json(&[
                "events.events.k8s.io",
                "-n",
                &ns,
                "--field-selector",
                "regarding.name=color-canary",
            ])
            .await;
        let warned = ev["items"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e["type"] == "Warning" && e["note"].as_str().is_some_and(|n| n.contains("nowhere"))
            })
        });
        if warned {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no Warning event for the missing backend"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    lat.report();
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_keeps_serving_and_resyncs() {
    let test = "api_server_outage_keeps_serving_and_resyncs";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("outage");
    setup(&k, &b, &ns).await;
    // meshroute reaches the API server only through the relay.
    let mut relay = Relay::start(&c.server).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let kc = relay.kubeconfig(
        &kubeconfig_for_meshroute(&c),
        &c.server,
        &tmp.path().join("kubeconfig"),
    );
    let mesh = Mesh::start(&kc, &ns).await;
    let lat = Latencies::new(test);
    let color = format!("color.{ns}.svc.cluster.local");

    k.apply(&color_split(&ns, 100, 0)).await;
    let t = Instant::now();
    lat.follow_generation("apply split 100/0", &mesh, &color, 0, t)
        .await;
    mesh.settle(Duration::from_millis(500)).await;
    let tally = mesh.tally(&color, 20).await;
    assert_eq!(tally.get("color"), Some(&20), "{tally:?}");

    // The API server goes away: the last table keeps serving.
    relay.stop().await;
    let gone = Instant::now();
    let mut served = 0;
    while gone.elapsed() < Duration::from_secs(3) {
        let r = mesh.get(&color, "/").await;
        assert_eq!(
            r.backend.as_deref(),
            Some("color"),
            "served during the outage: {r:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 10);
    // The cluster changes meanwhile.
    k.apply(&color_split(&ns, 0, 100)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = mesh.get(&color, "/").await;
    assert_eq!(r.backend.as_deref(), Some("color"), "still the last table");

    // Back: the watches resume (with backoff) and catch up.
    relay.restart().await;
    let back = Instant::now();
    let t0 = Instant::now();
    loop {
        let tally = mesh.tally(&color, 10).await;
        if tally.get("color2-west") == Some(&10) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no resync within 60s: {tally:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{test}: resync after the API server came back: {} ms (includes watch backoff; not in the kubectl latency)",
        back.elapsed().as_millis()
    );
    // And new edits flow again at watch speed.
    mesh.settle(Duration::from_millis(500)).await;
    k.apply(&color_split(&ns, 100, 0)).await;
    let t = Instant::now();
    lat.follow("edit after resync", &mesh, &color, t, |r| {
        r.backend.as_deref() == Some("color")
    })
    .await;

    lat.report();
    mesh.shutdown().await;
    relay.stop().await;
}

#[tokio::test]
async fn grpcroute_applied_with_kubectl_is_watched_gets_status_and_bad_ones_are_refused() {
    let test = "grpcroute_applied_with_kubectl_is_watched_gets_status_and_bad_ones_are_refused";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("grpc");
    setup(&k, &b, &ns).await;
    // meshroute runs with only the shipped RBAC (the restricted user): reading GRPCRoutes and
    // writing their status must be allowed by it.
    let _mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: greeter, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: color, port: 80}}]\n  rules:\n  - matches: [{{method: {{service: helloworld.Greeter}}}}]\n    backendRefs: [{{name: color2-west, port: 80}}]\n"
    );
    k.apply(&route).await;
    let obj = wait_object(
        &k,
        &["grpcroutes.gateway.networking.k8s.io", "greeter", "-n", &ns],
        "Accepted=True from meshroute",
        |v| {
            our_parent(v).is_some_and(|p| {
                condition(&p, "Accepted").is_some_and(|c| c.0 == "True")
                    && condition(&p, "ResolvedRefs").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;
    assert_eq!(our_parent(&obj).unwrap()["parentRef"]["name"], "color");
    // What upstream's CRD refuses, the printed one refuses too.
    let bad = route
        .replace("greeter", "greeter-bad")
        .replace("{service: helloworld.Greeter}", "{type: Exact}");
    let out = k.arun(&["apply", "-f", "-"], &bad).await;
    assert!(
        !out.ok,
        "a method match without service or method was stored"
    );
    assert!(
        out.stderr.contains("service") && out.stderr.contains("method"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn xbackendtrafficpolicy_applied_with_kubectl_sets_the_budget_and_bad_ones_are_refused() {
    let test =
        "xbackendtrafficpolicy_applied_with_kubectl_sets_the_budget_and_bad_ones_are_refused";
    let Some(c) = cluster(test) else { return };
    let Some(b) = Backends::start(test, &["smiley-east", "color", "color2-west"]) else {
        return;
    };
    let k = Kubectl::new(&c.admin);
    let ns = unique("budget");
    setup(&k, &b, &ns).await;
    // Only the shipped RBAC (the restricted user): reading the policies must be allowed by it.
    let mesh = Mesh::start(&kubeconfig_for_meshroute(&c), &ns).await;
    let key = format!("{ns}/color");
    let budget = |mesh: &Mesh| {
        mesh.running()
            .proxy
            .table()
            .retry_budgets
            .get(&key)
            .copied()
    };
    assert_eq!(budget(&mesh), None);
    let policy = format!(
        "apiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackendTrafficPolicy\nmetadata: {{name: color-budget, namespace: {ns}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: color}}]\n  retryConstraint:\n    budget: {{percent: 5, interval: 30s}}\n    minRetryRate: {{count: 0, interval: 1s}}\n"
    );
    k.apply(&policy).await;
    let t0 = Instant::now();
    let got = loop {
        if let Some(b) = budget(&mesh) {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the policy never reached the table"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (got.percent, got.interval, got.min_count),
        (5, Duration::from_secs(30), 0)
    );
    // What the printed CRD refuses never reaches meshroute.
    let bad = policy
        .replace("color-budget", "color-budget-bad")
        .replace("percent: 5", "percent: 500");
    let out = k.arun(&["apply", "-f", "-"], &bad).await;
    assert!(!out.ok, "a budget of 500% was stored");
    assert!(out.stderr.contains("percent"), "{}", out.stderr);
    // Deleted: back to the default budget.
    k.arun(
        &["delete", "-n", &ns, "xbackendtrafficpolicy", "color-budget"],
        "",
    )
    .await;
    let t0 = Instant::now();
    while budget(&mesh).is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the deleted policy stayed in the table"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
