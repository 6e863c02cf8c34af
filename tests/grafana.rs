//! `deploy/grafana/`: the dashboard and alert rules parse, are well formed, and every metric
//! and label their queries use exists in a real `/metrics` scrape of a running meshroute.

#[path = "support/proxy.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `expr` string anywhere in `v`.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/meshroute-dashboard.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn alerts() -> Value {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/meshroute-alerts.yaml")).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn dashboard_and_alerts_are_well_formed() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        assert!(p["gridPos"]["w"].as_i64().unwrap() > 0);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(!t["expr"].as_str().unwrap().is_empty());
        }
    }
    let a = alerts();
    let rules = a["groups"][0]["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for want in [
        "MeshrouteRouteErrorRate",
        "MeshrouteBackendNoReadyEndpoints",
        "MeshrouteConfigReloadFailing",
        "MeshrouteStatusWriterFailing",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    for r in rules {
        assert!(r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
        assert!(r["for"].as_str().is_some());
        assert!(r["labels"]["severity"].as_str().is_some());
        assert!(r["annotations"]["summary"].as_str().is_some());
    }
}

/// Sample names in a scrape, with the label names each carries.
fn scrape_labels(text: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="#).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let entry = out.entry(line[..name_end].to_string()).or_default();
        if let (Some(a), Some(b)) = (line.find('{'), line.rfind('}')) {
            for c in label.captures_iter(&line[a..b]) {
                entry.insert(c[1].to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_query_names_metrics_and_labels_a_real_scrape_has() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = tempfile::tempdir().unwrap();
    let mut y = service("shop", "web");
    y += &service_with_endpoints("shop", "web-a", &[(&a, true)]);
    y += &service_with_endpoints("shop", "web-b", &[(&b, true)]);
    write(dir.path(), "services.yaml", &y);
    write(
        dir.path(),
        "route.yaml",
        &route("shop", "r", "web", "  - backendRefs:\n    - {name: web-a, port: 80}\n    - {name: web-b, port: 80}\n    - {name: nowhere, port: 80}\n"),
    );
    let m = start_on(dir.path()).await;
    // Traffic of every kind the queries look at: successes, proxy-made errors (500 for the
    // invalid backendRef), histograms.
    split(&client(), m.proxy_addr, "web.shop", 60).await;
    let c = client();
    let scrape = String::from_utf8(
        get(&c, m.admin_addr, "admin", "/metrics")
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    let have = scrape_labels(&scrape);
    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    exprs(&alerts(), &mut all);
    assert!(all.len() >= 10);
    let metric = Regex::new(r"\b((?:outbound_http_route|meshroute)_[a-z_]+)(\{[^}]*\})?").unwrap();
    let label = Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)").unwrap();
    let by = Regex::new(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)").unwrap();
    for e in &all {
        let e = e.replace("$__rate_interval", "1m");
        let mut labels_here = BTreeSet::new();
        let mut found = 0;
        for c in metric.captures_iter(&e) {
            found += 1;
            let name = &c[1];
            let labels = have
                .get(name)
                .unwrap_or_else(|| panic!("{name} (in {e}) is not in the scrape:\n{scrape}"));
            labels_here.extend(labels.iter().cloned());
            if let Some(sel) = c.get(2) {
                for l in label.captures_iter(sel.as_str()) {
                    assert!(
                        labels.contains(&l[1]),
                        "{name} has no label {} (in {e})",
                        &l[1]
                    );
                }
            }
        }
        assert!(found > 0, "no meshroute metric in {e}");
        for c in by.captures_iter(&e) {
            for l in c[1].split(',').map(str::trim).filter(|l| !l.is_empty()) {
                assert!(
                    l == "le" || l == "instance" || labels_here.contains(l),
                    "label {l} of {e} is on none of its metrics"
                );
            }
        }
    }
    m.shutdown().await.unwrap();
}
