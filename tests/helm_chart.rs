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
