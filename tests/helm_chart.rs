//! deploy/helm/meshroute: `helm lint` passes; `helm template` renders what deploy/ ships (the
//! same RBAC rules, the same container args) and passes `kubectl apply --dry-run=server`
//! against a real API server; its values change exactly what they say; and the real binary
//! started with the chart's rendered args serves against that API server.

#[path = "support/e2e.rs"]
mod e2e;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{cluster, meshroute_bin, repo, skip_or_fail, Kubectl};
use serde_json::Value;

/// The helm CLI built (cached) by tests/helm/helm.sh, or why not.
fn helm(test: &str) -> Option<String> {
    let out = Command::new(repo().join("tests/helm/helm.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        skip_or_fail(test, "tests/helm/helm.sh could not build helm");
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

fn chart() -> String {
    repo().join("deploy/helm/meshroute").display().to_string()
}

/// `helm template meshroute <chart> -n NS [--set ...]` as YAML text.
fn template(helm: &str, ns: &str, sets: &[&str]) -> String {
    let mut cmd = Command::new(helm);
    cmd.args(["template", "meshroute", &chart(), "--namespace", ns]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn container_args(docs: &[Value]) -> Vec<String> {
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn shipped() -> Vec<Value> {
    let mut out = Vec::new();
    for f in ["deploy/10-rbac.yaml", "deploy/20-deployment.yaml"] {
        out.extend(docs(&std::fs::read_to_string(repo().join(f)).unwrap()));
    }
    out
}

#[test]
fn chart_renders_what_deploy_ships_and_lints() {
    let test = "chart_renders_what_deploy_ships_and_lints";
    let Some(helm) = helm(test) else { return };
    let lint = Command::new(&helm)
        .args(["lint", &chart()])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let rendered = docs(&template(&helm, "meshroute", &[]));
    let deploy = shipped();
    let kinds = |d: &[Value]| {
        let mut k: Vec<String> = d
            .iter()
            .map(|x| x["kind"].as_str().unwrap().to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(kinds(&rendered), kinds(&deploy));
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            find(&rendered, kind)["rules"],
            find(&deploy, kind)["rules"],
            "{kind} rules"
        );
    }
    let args = container_args(&rendered);
    for a in container_args(&deploy) {
        assert!(
            args.contains(&a),
            "the chart's Deployment lacks {a}: {args:?}"
        );
    }
    let spec = |d: &[Value], f: &str| find(d, "Deployment")["spec"]["template"]["spec"][f].clone();
    for f in [
        "securityContext",
        "serviceAccountName",
        "terminationGracePeriodSeconds",
    ] {
        assert_eq!(spec(&rendered, f), spec(&deploy, f), "{f}");
    }
    let probes = |d: &[Value]| {
        let c = &find(d, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        (
            c["readinessProbe"].clone(),
            c["livenessProbe"].clone(),
            c["ports"].clone(),
        )
    };
    assert_eq!(probes(&rendered), probes(&deploy));
}

#[test]
fn values_change_what_they_say() {
    let test = "values_change_what_they_say";
    let Some(helm) = helm(test) else { return };
    let d = docs(&template(
        &helm,
        "team-a",
        &[
            "publishEndpoints=false",
            "watchNamespace=shop",
            "selector=app.kubernetes.io/part-of=shop",
            "replicaCount=3",
            "image.tag=9.9.9",
            "parentPorts=30000-30999",
        ],
    ));
    let args = container_args(&d);
    for want in [
        "--no-publish-endpoints",
        "--namespace=shop",
        "--selector=app.kubernetes.io/part-of=shop",
        "--parent-ports=30000-30999",
    ] {
        assert!(args.iter().any(|a| a == want), "{want}: {args:?}");
    }
    assert_eq!(find(&d, "Deployment")["spec"]["replicas"], 3);
    assert_eq!(
        find(&d, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/meshroute/meshroute:9.9.9"
    );
    assert!(d
        .iter()
        .all(|x| x["metadata"]["namespace"].is_null() || x["metadata"]["namespace"] == "team-a"));
    // Without publishing, meshroute may not write EndpointSlices at all.
    let rules = find(&d, "ClusterRole")["rules"].as_array().unwrap();
    assert!(!rules.iter().any(|r| r["resources"][0] == "endpointslices"
        && r["verbs"].as_array().unwrap().iter().any(|v| v == "create")));
}

#[test]
fn rendered_chart_passes_server_side_dry_run_and_its_args_serve() {
    let test = "rendered_chart_passes_server_side_dry_run_and_its_args_serve";
    let Some(helm) = helm(test) else { return };
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    // What `helm install --create-namespace` does first.
    let ns = e2e::unique("helm");
    k.run(&["create", "namespace", &ns]).expect_ok();
    for sets in [
        &[][..],
        &[
            "publishEndpoints=false",
            "watchNamespace=shop",
            "readOnly=true",
        ][..],
    ] {
        let yaml = template(&helm, &ns, sets);
        let out = k.run_in(
            &["apply", "--dry-run=server", "-f", "-", "-o", "name"],
            &yaml,
        );
        assert!(out.ok, "{sets:?}: {}", out.stderr);
        assert!(
            out.stdout.contains("deployment.apps/meshroute"),
            "{}",
            out.stdout
        );
    }
    // The real binary accepts the rendered args and serves with them (listeners moved to
    // loopback ports of the test's own; the pod's namespace comes from POD_NAMESPACE).
    let d = docs(&template(&helm, &ns, &[]));
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args: Vec<String> = container_args(&d)
        .into_iter()
        .map(|a| match a.split_once('=') {
            Some(("--listen", _)) => "--listen=127.0.0.1:0".to_string(),
            Some(("--admin", _)) => format!("--admin={admin}"),
            _ => a.replace("$(POD_NAMESPACE)", &ns),
        })
        .collect();
    let mut child = Command::new(meshroute_bin())
        .args(&args)
        .env("KUBECONFIG", &c.admin)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "helm-test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                ready = true;
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("meshroute exited with {status} on the chart's args {args:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "not ready within 30 s with the chart's args {args:?}"
    );
    k.run(&["delete", "namespace", &ns, "--wait=false"]);
}

/// The Role of `deploy/links/rbac.yaml` (what a user applies by hand in the Links' namespace).
fn shipped_links_role() -> Value {
    let d = docs(&std::fs::read_to_string(repo().join("deploy/links/rbac.yaml")).unwrap());
    find(&d, "Role").clone()
}

fn named<'a>(docs: &'a [Value], kind: &str, prefix: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
    })
}

const LINK_SETS: [&str; 6] = [
    "links.namespace=linkerd-multicluster",
    "links.kubeconfigs[0].name=east",
    "links.kubeconfigs[0].secret=meshroute-link-east",
    "links.kubeconfigs[1].name=west",
    "links.kubeconfigs[1].secret=west-credentials",
    "links.kubeconfigs[1].key=config",
];

#[test]
fn links_values_render_link_flags_secret_mounts_and_the_shipped_links_rbac() {
    let test = "links_values_render_link_flags_secret_mounts_and_the_shipped_links_rbac";
    let Some(helm) = helm(test) else { return };
    // Defaults: nothing about links (meshroute's own default namespace, no grants, no mounts).
    let d = docs(&template(&helm, "team-a", &[]));
    assert!(!container_args(&d).iter().any(|a| a.starts_with("--link")));
    assert!(named(&d, "Role", "meshroute-links").is_none());
    assert!(find(&d, "Deployment")["spec"]["template"]["spec"]["volumes"].is_null());

    let d = docs(&template(&helm, "team-a", &LINK_SETS));
    let args = container_args(&d);
    for want in [
        "--link-namespace=linkerd-multicluster",
        "--link=east=/etc/meshroute/links/east/kubeconfig",
        "--link=west=/etc/meshroute/links/west/config",
    ] {
        assert!(args.iter().any(|a| a == want), "{want}: {args:?}");
    }
    // Each kubeconfig is its Secret, mounted read-only where its --link flag points.
    let pod = &find(&d, "Deployment")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    for (name, secret) in [
        ("east", "meshroute-link-east"),
        ("west", "west-credentials"),
    ] {
        let v = volumes
            .iter()
            .find(|v| v["secret"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no volume for Secret {secret}: {volumes:?}"));
        let m = mounts
            .iter()
            .find(|m| m["name"] == v["name"])
            .unwrap_or_else(|| panic!("{secret} not mounted: {mounts:?}"));
        assert_eq!(m["mountPath"], format!("/etc/meshroute/links/{name}"));
        assert_eq!(m["readOnly"], true);
    }
    // The Links' namespace gets exactly the shipped Links Role, bound to the release's
    // ServiceAccount.
    let role = named(&d, "Role", "meshroute-links").expect("links Role");
    assert_eq!(role["metadata"]["namespace"], "linkerd-multicluster");
    assert_eq!(role["rules"], shipped_links_role()["rules"]);
    let binding = named(&d, "RoleBinding", "meshroute-links").expect("links RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], "linkerd-multicluster");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "meshroute");
    assert_eq!(binding["subjects"][0]["namespace"], "team-a");

    // Link discovery off: the flag says so and nothing is granted.
    let d = docs(&template(
        &helm,
        "team-a",
        &[
            "links.namespace=linkerd-multicluster",
            "links.discovery=false",
        ],
    ));
    assert!(container_args(&d).iter().any(|a| a == "--link-namespace="));
    assert!(named(&d, "Role", "meshroute-links").is_none());
}

#[test]
fn rendered_links_pass_server_side_dry_run_and_their_args_serve() {
    let test = "rendered_links_pass_server_side_dry_run_and_their_args_serve";
    let Some(helm) = helm(test) else { return };
    let Some(c) = cluster(test) else { return };
    let k = Kubectl::new(&c.admin);
    let ns = e2e::unique("helm-links");
    let links_ns = e2e::unique("helm-linkerd-multicluster");
    k.run(&["create", "namespace", &ns]).expect_ok();
    k.run(&["create", "namespace", &links_ns]).expect_ok();
    let links_set = format!("links.namespace={links_ns}");
    let sets: Vec<&str> = [links_set.as_str()]
        .into_iter()
        .chain(LINK_SETS[1..].iter().copied())
        .collect();
    let yaml = template(&helm, &ns, &sets);
    let out = k.run_in(
        &["apply", "--dry-run=server", "-f", "-", "-o", "name"],
        &yaml,
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("role.rbac.authorization.k8s.io/meshroute-links-"),
        "{}",
        out.stdout
    );
    // The binary accepts the rendered link flags and serves: each mounted kubeconfig is a file
    // in a directory of the test's own (as the Secret volume would hold it), here the test
    // cluster's kubeconfig for both.
    let mounts = tempfile::tempdir().unwrap();
    for (name, key) in [("east", "kubeconfig"), ("west", "config")] {
        let dir = mounts.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&c.admin, dir.join(key)).unwrap();
    }
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let args: Vec<String> = container_args(&docs(&yaml))
        .into_iter()
        .map(|a| match a.split_once('=') {
            Some(("--listen", _)) => "--listen=127.0.0.1:0".to_string(),
            Some(("--admin", _)) => format!("--admin={admin}"),
            _ => a
                .replace("$(POD_NAMESPACE)", &ns)
                .replace("/etc/meshroute/links", &mounts.path().display().to_string()),
        })
        .collect();
    let mut child = Command::new(meshroute_bin())
        .args(&args)
        .env("KUBECONFIG", &c.admin)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "helm-links-test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                ready = true;
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("meshroute exited with {status} on the chart's args {args:?}:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "not ready within 30 s with the chart's args {args:?}"
    );
    k.run(&["delete", "namespace", &ns, &links_ns, "--wait=false"]);
}
