//! The offline commands: `check`, `explain` and `crds`. Each renders to a `String` so tests can
//! assert on exactly what users see.

use std::fmt::Write as _;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::compile::{compile, status::RouteStatus, CompileOptions, Compiled};
use crate::sources::file::{load_dir, LoadOutcome};
use crate::table::{matching::RequestView, BackendTarget, Lookup, RouteTable};

/// One element of `meshroute check -o json`.
#[derive(Debug, Serialize)]
pub struct CheckEntry {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `accepted` or `rejected` (refused at admission, as the API server would).
    pub admission: &'static str,
    pub message: String,
    pub status: CheckStatus,
}

#[derive(Debug, Serialize)]
pub struct CheckStatus {
    pub parents: Vec<crate::compile::status::ParentStatus>,
}

/// Result of `check`: entries and whether everything was admitted and accepted.
pub struct CheckReport {
    pub entries: Vec<CheckEntry>,
    /// Problems with files or non-route objects (broken YAML, bad Services...).
    pub other_errors: Vec<String>,
    pub ok: bool,
}

pub fn check(dir: &Path) -> CheckReport {
    let LoadOutcome {
        index,
        routes: _,
        errors,
    } = load_dir(dir);
    let Compiled { statuses, .. } = compile(&index, &CompileOptions::default(), None);
    let mut entries = Vec::new();
    let mut other_errors = Vec::new();
    for e in &errors {
        match &e.object {
            Some(o) if is_route_kind(&o.kind) => entries.push(CheckEntry {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                admission: "rejected",
                message: format!("{}: {}", e.location, e.message),
                status: CheckStatus { parents: vec![] },
            }),
            _ => other_errors.push(e.to_string()),
        }
    }
    for s in statuses {
        let problems = s.problems();
        let message = if s.parents.is_empty() {
            "no Service parentRefs: ignored by meshroute".to_string()
        } else if problems.is_empty() {
            "accepted on every parent".to_string()
        } else {
            problems.join("; ")
        };
        entries.push(entry_for(s, message));
    }
    entries.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.kind, &a.api_version).cmp(&(
            &b.namespace,
            &b.name,
            &b.kind,
            &b.api_version,
        ))
    });
    // Stricter than "accepted": a dangling backendRef or a dropped rule fails CI too.
    let ok = other_errors.is_empty()
        && entries
            .iter()
            .all(|e| e.admission == "accepted" && e.healthy());
    CheckReport {
        entries,
        other_errors,
        ok,
    }
}

fn is_route_kind(kind: &str) -> bool {
    matches!(kind, "HTTPRoute" | "TrafficSplit")
}

fn entry_for(s: RouteStatus, message: String) -> CheckEntry {
    CheckEntry {
        api_version: s.api_version.clone(),
        kind: s.kind.kind().to_string(),
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        admission: "accepted",
        message,
        status: CheckStatus { parents: s.parents },
    }
}

impl CheckEntry {
    /// Admitted, and every parent has Accepted=True, ResolvedRefs=True, no PartiallyInvalid.
    pub fn healthy(&self) -> bool {
        self.status.parents.iter().all(|p| {
            p.conditions.iter().all(|c| match c.type_ {
                "PartiallyInvalid" => c.status != "True",
                _ => c.status == "True",
            })
        })
    }
}

impl CheckReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.entries)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let verdict = if e.admission == "rejected" {
                "REJECTED"
            } else if e
                .status
                .parents
                .iter()
                .any(|p| p.condition("Accepted").is_some_and(|c| c.status != "True"))
            {
                "NOT ACCEPTED"
            } else if !e.healthy() {
                "accepted with problems"
            } else {
                "accepted"
            };
            let _ = writeln!(
                out,
                "{} {} {}/{}: {verdict}",
                e.api_version, e.kind, e.namespace, e.name
            );
            if e.admission == "rejected" {
                let _ = writeln!(out, "  {}", e.message);
            }
            for p in &e.status.parents {
                let port = p
                    .parent_ref
                    .port
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  parent {} {}/{}{port}",
                    p.parent_ref.kind, p.parent_ref.namespace, p.parent_ref.name
                );
                for c in &p.conditions {
                    let _ = writeln!(
                        out,
                        "    {}={} {}: {}",
                        c.type_, c.status, c.reason, c.message
                    );
                }
            }
        }
        for e in &self.other_errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }
}

/// What `explain` looks up.
pub struct ExplainQuery {
    pub host: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

/// Explain how a request would be routed. `Err` for unusable input (bad method, header).
pub fn explain(dir: &Path, q: &ExplainQuery) -> Result<String, String> {
    let outcome = load_dir(dir);
    let compiled = compile(&outcome.index, &CompileOptions::default(), None);
    let mut out = String::new();
    for e in &outcome.errors {
        let _ = writeln!(out, "warning: {e}");
    }
    out.push_str(&explain_table(&compiled.table, q)?);
    Ok(out)
}

pub fn explain_table(table: &RouteTable, q: &ExplainQuery) -> Result<String, String> {
    let method = Method::from_bytes(q.method.as_bytes())
        .map_err(|_| format!("--method: {:?} is not an HTTP method", q.method))?;
    let mut headers = HeaderMap::new();
    for (n, v) in &q.headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("-H: {n:?} is not a valid header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("-H: {v:?} is not a valid header value"))?;
        headers.append(name, value);
    }
    let (path, query) = match q.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (q.path.as_str(), None),
    };
    if !path.starts_with('/') {
        return Err(format!("--path: {path:?} must start with '/'"));
    }
    let view = RequestView {
        method: &method,
        path,
        query,
        headers: &headers,
    };
    let mut out = String::new();
    match table.lookup(&q.host, &view) {
        Lookup::UnknownAuthority => {
            let _ = writeln!(
                out,
                "{}: no such Service: 404 (meshroute-error: unknown-authority)",
                q.host
            );
        }
        Lookup::NoMatch(parent) => {
            let _ = writeln!(
                out,
                "parent Service {}/{} port {}",
                parent.namespace, parent.name, parent.port
            );
            let _ = writeln!(
                out,
                "no rule matches {} {path}: 404 (meshroute-error: no-route)",
                q.method
            );
        }
        Lookup::Matched {
            parent,
            matched,
            rule,
        } => {
            let _ = writeln!(
                out,
                "parent Service {}/{} port {}",
                parent.namespace, parent.name, parent.port
            );
            match &rule.route {
                None => {
                    let _ = writeln!(
                        out,
                        "no routes attached: passthrough to the Service's own endpoints"
                    );
                }
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "route {} {}/{}.{} rule {}",
                        r.kind, r.namespace, r.name, r.group, rule.index
                    );
                    let _ = writeln!(
                        out,
                        "match {}",
                        serde_json::to_string(matched).unwrap_or_default()
                    );
                }
            }
            let t = &rule.timeouts;
            let fmt_d = |d: Option<std::time::Duration>| {
                d.map(|d| format!("{}ms", d.as_millis()))
                    .unwrap_or_else(|| "none".into())
            };
            let _ = writeln!(
                out,
                "timeouts request={} backendRequest={}",
                fmt_d(t.request),
                fmt_d(t.backend_request)
            );
            for f in &rule.filters {
                let _ = writeln!(
                    out,
                    "filter {}",
                    serde_json::to_string(f).unwrap_or_default()
                );
            }
            if rule.backends.total() == 0 {
                let _ = writeln!(
                    out,
                    "no backend can be picked (all weights zero or none): 500"
                );
            }
            for (b, p) in rule.backends.iter().zip(rule.backends.probabilities()) {
                match &b.target {
                    BackendTarget::Invalid { reason } => {
                        let _ = writeln!(
                            out,
                            "backend {:5.1}% weight {} INVALID (answers 500): {reason}",
                            p * 100.0,
                            b.weight
                        );
                    }
                    BackendTarget::Service(s) => {
                        let cluster = s
                            .cluster
                            .as_deref()
                            .map(|c| format!(" cluster={c}"))
                            .unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "backend {:5.1}% weight {} Service {}/{}:{}{cluster}",
                            p * 100.0,
                            b.weight,
                            s.namespace,
                            s.name,
                            s.port
                        );
                        if let Some(a) = s.authority.as_ref().and_then(|a| a.to_str().ok()) {
                            let _ = writeln!(out, "  authority rewritten to {a}");
                        }
                        if s.endpoints.is_empty() {
                            let _ = writeln!(out, "  no endpoints: 503");
                        }
                        for e in &s.endpoints {
                            let _ = writeln!(
                                out,
                                "  endpoint {} {}",
                                e.addr,
                                if e.ready { "ready" } else { "not ready" }
                            );
                        }
                        for f in &b.filters {
                            let _ = writeln!(
                                out,
                                "  filter {}",
                                serde_json::to_string(f).unwrap_or_default()
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The CRDs for the kinds meshroute defines, drop-in compatible with Linkerd's and
/// linkerd-smi's: same groups and plurals, a superset of their versions, same storage version,
/// and one superset schema in every version (see [`crate::crds`]).
pub fn crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    crate::crds::ours()
}

/// Render CRDs as one multi-document YAML stream: ours, or (`gateway_api`) the Gateway API
/// HTTPRoute CRD with the approval annotation and upstream's validation.
pub fn crds_yaml(gateway_api: bool) -> String {
    if gateway_api {
        crate::crds::to_yaml(&[crate::crds::gateway_httproute()])
    } else {
        crate::crds::to_yaml(&crds())
    }
}
