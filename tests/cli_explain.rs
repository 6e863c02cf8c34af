//! `meshroute explain`: what it says for each way a request can go (or not go), its JSON
//! shape, and its exit status.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshroute::cli::{self, ExplainOutcome, ExplainQuery, Explanation};

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn query(host: &str, path: &str) -> ExplainQuery {
    ExplainQuery {
        host: host.to_string(),
        path: path.to_string(),
        method: "GET".to_string(),
        headers: vec![],
    }
}

fn explain(dir: &Path, host: &str, path: &str) -> Explanation {
    cli::explain(dir, &query(host, path)).expect("valid query")
}

/// A Service `web` (ports 80 and 8080) whose only route on port 80 matches `/api`.
fn api_only() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}, {port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 8080}]
",
    )
    .unwrap();
    dir
}

#[test]
fn readme_example_is_matched_and_split_between_clusters() {
    let x = explain(&policies(), "color.faces.svc.cluster.local", "/api");
    assert_eq!(x.outcome, ExplainOutcome::Matched);
    assert!(x.routed());
    let text = x.to_text();
    assert!(
        text.starts_with("parent Service faces/color port 80\n"),
        "{text}"
    );
    assert!(
        text.contains("route HTTPRoute faces/color-split.gateway.networking.k8s.io rule 0"),
        "{text}"
    );
    assert!(
        text.contains("backend  50.0% weight 50 Service faces/color2-west:80 cluster=west"),
        "{text}"
    );
}

#[test]
fn unknown_service_port_and_authority_are_told_apart() {
    let x = explain(&policies(), "nope.faces.svc.cluster.local", "/");
    assert_eq!(x.outcome, ExplainOutcome::UnknownService);
    assert_eq!(x.message, "no such Service faces/nope");

    let x = explain(&policies(), "color.faces:8080", "/");
    assert_eq!(x.outcome, ExplainOutcome::UnknownPort);
    assert_eq!(
        x.message,
        "Service faces/color has no port 8080 (ports: 80)"
    );
    assert_eq!(x.ports, [80]);

    let x = explain(&policies(), "color.faces.example.org", "/");
    assert_eq!(x.outcome, ExplainOutcome::BadAuthority);
    assert!(x.message.starts_with("not a Service authority"), "{x:?}");

    for host in [
        "nope.faces",
        "color.faces:8080",
        "color.faces.example.org",
        "web",
    ] {
        let x = explain(&policies(), host, "/");
        assert!(!x.routed(), "{host}: {x:?}");
        assert!(x.parent.is_none(), "{host}");
        assert_eq!(
            (x.status, x.error),
            (Some(404), Some("unknown-authority")),
            "{host}"
        );
        let text = x.to_text();
        assert!(
            text.starts_with(&format!("{host}: {}: 404", x.message)),
            "{text}"
        );
    }
}

#[test]
fn no_matching_rule_is_a_no_route_404_and_other_ports_are_listed() {
    let dir = api_only();
    let x = explain(dir.path(), "web.shop", "/other");
    assert_eq!(x.outcome, ExplainOutcome::NoRoute);
    assert!(!x.routed());
    assert_eq!((x.status, x.error), (Some(404), Some("no-route")));
    let parent = x.parent.as_ref().unwrap();
    assert_eq!((parent.name.as_str(), parent.port), ("web", 80));
    assert!(
        x.to_text()
            .contains("no rule matches GET /other: 404 (meshroute-error: no-route)"),
        "{}",
        x.to_text()
    );

    let x = explain(dir.path(), "web.shop", "/api/v1");
    assert_eq!(x.outcome, ExplainOutcome::Matched);
    assert_eq!(x.rule, Some(0));

    // Port 8080 has no route: it passes through.
    let x = explain(dir.path(), "web.shop:8080", "/other");
    assert!(x.routed() && x.passthrough, "{x:?}");

    let x = explain(dir.path(), "web.shop:9090", "/");
    assert_eq!(x.outcome, ExplainOutcome::UnknownPort);
    assert_eq!(
        x.message,
        "Service shop/web has no port 9090 (ports: 80, 8080)"
    );
}

#[test]
fn explain_json_has_the_documented_shape() {
    let x = explain(&policies(), "smiley.faces", "/");
    let v: serde_json::Value = serde_json::from_str(&x.to_json()).unwrap();
    assert_eq!(v["host"], "smiley.faces");
    assert_eq!(v["outcome"], "matched");
    assert_eq!(v["parent"]["namespace"], "faces");
    assert_eq!(v["parent"]["name"], "smiley");
    assert_eq!(v["parent"]["port"], 80);
    assert_eq!(v["route"]["name"], "smiley-router");
    assert_eq!(v["route"]["group"], "policy.linkerd.io");
    assert_eq!(v["rule"], 0);
    assert_eq!(v["timeouts"]["request"], "5s");
    assert!(v["filters"].is_array());
    let b = &v["backends"][0];
    assert_eq!(b["kind"], "Service");
    assert_eq!(b["name"], "smiley-east");
    assert_eq!(b["namespace"], "faces");
    assert_eq!(b["port"], 80);
    assert_eq!(b["cluster"], "east");
    assert_eq!(b["probability"], 1.0);
    assert_eq!(b["weight"], 1);
    assert_eq!(b["endpoints"][0]["ready"], true);
    assert!(b["endpoints"][0]["addr"].is_string());
    assert!(b["invalid_reason"].is_null());

    let x = explain(&policies(), "nope.faces", "/");
    let v: serde_json::Value = serde_json::from_str(&x.to_json()).unwrap();
    assert_eq!(v["outcome"], "unknown-service");
    assert!(v["parent"].is_null());
    assert_eq!(v["backends"], serde_json::json!([]));
}

/// `meshroute explain ARGS…`: exit code and stdout.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshroute"))
        .arg("explain")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_exits_1_when_the_request_would_not_be_routed() {
    let dir = api_only();
    let d = dir.path().to_str().unwrap();
    assert_eq!(run(&["policies", "--host", "color.faces"]).0, Some(0));
    assert_eq!(run(&["policies", "--host", "nope.faces"]).0, Some(1));
    assert_eq!(run(&["policies", "--host", "color.faces:81"]).0, Some(1));
    assert_eq!(run(&["policies", "--host", "example"]).0, Some(1));
    assert_eq!(run(&[d, "--host", "web.shop", "--path", "/x"]).0, Some(1));
    assert_eq!(run(&[d, "--host", "web.shop", "--path", "/api"]).0, Some(0));
    // Unusable input is a usage error, not a routing verdict.
    assert_eq!(
        run(&["policies", "--host", "color.faces", "--method", "G E T"]).0,
        Some(2)
    );

    let (code, json) = run(&["policies", "--host", "color.faces:81", "-o", "json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["outcome"], "unknown-port");
    let (code, json) = run(&[d, "--host", "web.shop", "--path", "/x", "--output", "json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["outcome"], "no-route");
}

#[test]
fn the_retry_policy_of_the_matched_rule_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {retry.linkerd.io/http: gateway-error, retry.linkerd.io/timeout: 250ms}
spec: {ports: [{port: 80}]}
",
    )
    .unwrap();
    let x = explain(dir.path(), "web.shop", "/");
    let text = x.to_text();
    assert!(
        text.contains("retry limit=1 codes=502-504 backoff=0ms attemptTimeout=250ms"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&x.to_json()).unwrap();
    assert_eq!(v["retry"]["codes"], "502-504", "{v}");
}
