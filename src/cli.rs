//! The offline commands: `check`, `explain` and `crds`. Each renders to a `String` so tests can
//! assert on exactly what users see.

use std::fmt::Write as _;
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::compile::{compile, status::RouteStatus, CompileOptions, Compiled};
use crate::sources::file::{load_dir, load_paths, LoadOutcome};
use crate::table::{
    matching::RequestView, Backend, BackendTarget, Filter, Lookup, ParentMiss, ParentPort,
    RequestMatch, RouteRef, RouteTable, Timeouts,
};

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
    check_paths(&[dir.to_path_buf()])
}

/// `check` over several files and directories, compiled together as one set.
pub fn check_paths(paths: &[std::path::PathBuf]) -> CheckReport {
    let LoadOutcome {
        index,
        routes: _,
        objects: _,
        errors,
    } = load_paths(paths);
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
    matches!(kind, "HTTPRoute" | "GRPCRoute" | "TrafficSplit")
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

/// How the proxy would treat the request (`outcome` in `meshroute explain -o json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExplainOutcome {
    /// A rule matched (or the parent passes through): the request is forwarded.
    Matched,
    /// The parent has routes and none matches: 404 `no-route`.
    NoRoute,
    /// A Service authority for a Service that does not exist: 404 `unknown-authority`.
    UnknownService,
    /// The Service exists without that port: 404 `unknown-authority`.
    UnknownPort,
    /// Not a Service authority at all: 404 `unknown-authority`.
    BadAuthority,
}

/// The parent port a request is addressed to.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainParent {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

/// One backendRef of the matched rule.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainBackend {
    pub weight: u32,
    /// Chance of being picked, 0 to 1.
    pub probability: f64,
    /// `Service`, or `Invalid` for a backendRef that did not resolve (it answers 500).
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub port: Option<u16>,
    /// Linkerd multicluster: the cluster of a mirrored Service.
    pub cluster: Option<String>,
    /// Authority sent upstream when a gateway-mode mirror rewrites it.
    pub authority: Option<String>,
    pub endpoints: Vec<ExplainEndpoint>,
    pub filters: Vec<Filter>,
    pub invalid_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExplainEndpoint {
    pub addr: std::net::SocketAddr,
    pub ready: bool,
}

/// Result of `explain`: what users see as text, or as `-o json`.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub host: String,
    pub method: String,
    pub path: String,
    pub parent: Option<ExplainParent>,
    pub outcome: ExplainOutcome,
    /// One line saying why, e.g. `Service faces/color has no port 8080 (ports: 80)`.
    pub message: String,
    /// Status the proxy answers itself (404, or 500 when no backend can be picked); `None`
    /// when the request is forwarded.
    pub status: Option<u16>,
    /// The `meshroute-error` header of that answer.
    pub error: Option<&'static str>,
    /// The known ports of the Service (`unknown-port` only; otherwise empty).
    pub ports: Vec<u16>,
    /// True when the parent has no routes and forwards to its own endpoints.
    pub passthrough: bool,
    pub route: Option<RouteRef>,
    /// Index of the matched rule within its route (`spec.rules[i]`).
    pub rule: Option<usize>,
    #[serde(rename = "match")]
    pub matched: Option<RequestMatch>,
    pub timeouts: Option<Timeouts>,
    /// The matched rule's retry policy, when it retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<std::sync::Arc<crate::table::retry::RetryPolicy>>,
    pub filters: Vec<Filter>,
    pub backends: Vec<ExplainBackend>,
    /// Problems loading the directory (the objects concerned are left out).
    pub warnings: Vec<String>,
}

/// `explain` against a running meshroute's admin port: the printed text (or JSON) and
/// whether the request would be routed.
pub async fn explain_remote(
    admin: std::net::SocketAddr,
    q: &ExplainQuery,
    as_json: bool,
) -> Result<(String, bool), String> {
    use http_body_util::BodyExt;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("host", &q.host)
        .append_pair("path", &q.path)
        .append_pair("method", &q.method);
    for (n, v) in &q.headers {
        query.append_pair("header", &format!("{n}:{v}"));
    }
    if as_json {
        query.append_pair("format", "json");
    }
    let uri = format!("/api/explain?{}", query.finish());
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("{admin}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{admin}: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(uri)
        .header(http::header::HOST, admin.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{admin}: {e}"))?;
    let status = rsp.status();
    let routed = rsp
        .headers()
        .get("meshroute-explain-routed")
        .is_some_and(|v| v == "true");
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{admin}: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != http::StatusCode::OK {
        return Err(format!("{admin}: {}", body.trim_end()));
    }
    let body = if as_json && !body.ends_with('\n') {
        body + "\n"
    } else {
        body
    };
    Ok((body, routed))
}

/// Explain how a request would be routed. `Err` for unusable input (bad method, header).
pub fn explain(dir: &Path, q: &ExplainQuery) -> Result<Explanation, String> {
    let outcome = load_dir(dir);
    let compiled = compile(&outcome.index, &CompileOptions::default(), None);
    let mut explanation = explain_table(&compiled.table, q)?;
    explanation.warnings = outcome.errors.iter().map(|e| e.to_string()).collect();
    Ok(explanation)
}

pub fn explain_table(table: &RouteTable, q: &ExplainQuery) -> Result<Explanation, String> {
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
    let mut x = Explanation {
        host: q.host.clone(),
        method: q.method.clone(),
        path: q.path.clone(),
        parent: None,
        outcome: ExplainOutcome::Matched,
        message: String::new(),
        status: None,
        error: None,
        ports: Vec::new(),
        passthrough: false,
        route: None,
        rule: None,
        matched: None,
        timeouts: None,
        retry: None,
        filters: Vec::new(),
        backends: Vec::new(),
        warnings: Vec::new(),
    };
    let parent_of = |p: &ParentPort| ExplainParent {
        namespace: p.namespace.to_string(),
        name: p.name.to_string(),
        port: p.port,
    };
    match table.lookup(&q.host, &view) {
        Lookup::UnknownAuthority => {
            x.status = Some(404);
            x.error = Some("unknown-authority");
            match table.parent_miss(&q.host) {
                Some(ParentMiss::NoSuchService { namespace, name }) => {
                    x.outcome = ExplainOutcome::UnknownService;
                    x.message = format!("no such Service {namespace}/{name}");
                }
                Some(ParentMiss::NoSuchPort { service, port }) => {
                    x.outcome = ExplainOutcome::UnknownPort;
                    x.ports = service.ports.iter().map(|p| p.port).collect();
                    let ports: Vec<String> = x.ports.iter().map(u16::to_string).collect();
                    x.message = format!(
                        "Service {}/{} has no port {port} (ports: {})",
                        service.namespace,
                        service.name,
                        ports.join(", ")
                    );
                }
                Some(ParentMiss::NotServiceAuthority) | None => {
                    x.outcome = ExplainOutcome::BadAuthority;
                    x.message = format!(
                        "not a Service authority (expected name.namespace, name.namespace.svc or name.namespace.svc.{}, optionally with :port)",
                        table.cluster_domain
                    );
                }
            }
        }
        Lookup::NoMatch(parent) => {
            x.parent = Some(parent_of(parent));
            x.outcome = ExplainOutcome::NoRoute;
            x.status = Some(404);
            x.error = Some("no-route");
            x.message = format!("no rule matches {} {path}", q.method);
        }
        Lookup::Matched {
            parent,
            matched,
            rule,
        } => {
            x.parent = Some(parent_of(parent));
            x.passthrough = rule.route.is_none();
            x.route = rule.route.clone();
            x.rule = rule.route.as_ref().map(|_| rule.index);
            x.matched = rule.route.as_ref().map(|_| matched.clone());
            x.timeouts = Some(rule.timeouts);
            x.retry = rule.retry.clone();
            x.filters = rule.filters.clone();
            x.message = match &rule.route {
                None => "no routes attached: passthrough to the Service's own endpoints".into(),
                Some(r) => format!(
                    "route {} {}/{}.{} rule {}",
                    r.kind, r.namespace, r.name, r.group, rule.index
                ),
            };
            if rule.backends.total() == 0 {
                x.status = Some(500);
                x.error = Some("no-backends");
            }
            for (b, p) in rule.backends.iter().zip(rule.backends.probabilities()) {
                x.backends.push(explain_backend(b, p));
            }
        }
    }
    Ok(x)
}

fn explain_backend(b: &Backend, probability: f64) -> ExplainBackend {
    let mut out = ExplainBackend {
        weight: b.weight,
        probability,
        kind: "Service",
        namespace: None,
        name: None,
        port: None,
        cluster: None,
        authority: None,
        endpoints: Vec::new(),
        filters: b.filters.clone(),
        invalid_reason: None,
    };
    match &b.target {
        BackendTarget::Invalid { reason } => {
            out.kind = "Invalid";
            out.invalid_reason = Some(reason.clone());
        }
        BackendTarget::Service(s) => {
            out.namespace = Some(s.namespace.to_string());
            out.name = Some(s.name.to_string());
            out.port = Some(s.port);
            out.cluster = s.cluster.as_deref().map(str::to_string);
            out.authority = s
                .authority
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .map(str::to_string);
            out.endpoints = s
                .endpoints
                .iter()
                .map(|e| ExplainEndpoint {
                    addr: e.addr,
                    ready: e.ready,
                })
                .collect();
        }
    }
    out
}

impl Explanation {
    /// True when the proxy would forward the request to a rule's backends: exit status 0 of
    /// `meshroute explain`.
    pub fn routed(&self) -> bool {
        self.outcome == ExplainOutcome::Matched
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let answer = |status: Option<u16>, error: Option<&str>| match (status, error) {
            (Some(s), Some(e)) => format!("{s} (meshroute-error: {e})"),
            _ => String::new(),
        };
        let Some(parent) = &self.parent else {
            let _ = writeln!(
                out,
                "{}: {}: {}",
                self.host,
                self.message,
                answer(self.status, self.error)
            );
            return out;
        };
        let _ = writeln!(
            out,
            "parent Service {}/{} port {}",
            parent.namespace, parent.name, parent.port
        );
        if self.outcome == ExplainOutcome::NoRoute {
            let _ = writeln!(out, "{}: {}", self.message, answer(self.status, self.error));
            return out;
        }
        let _ = writeln!(out, "{}", self.message);
        if let Some(m) = &self.matched {
            let _ = writeln!(
                out,
                "match {}",
                serde_json::to_string(m).unwrap_or_default()
            );
        }
        if let Some(t) = &self.timeouts {
            let fmt_d = |d: Option<std::time::Duration>| {
                d.map(crate::compile::validate::format_duration)
                    .unwrap_or_else(|| "none".into())
            };
            let _ = writeln!(
                out,
                "timeouts request={} backendRequest={}",
                if t.request_set {
                    fmt_d(t.request)
                } else {
                    "default".into()
                },
                fmt_d(t.backend_request)
            );
        }
        if let Some(r) = &self.retry {
            let _ = writeln!(
                out,
                "retry limit={} codes={} backoff={}ms attemptTimeout={}",
                r.limit,
                if r.codes.is_empty() {
                    "none".into()
                } else {
                    r.codes.to_string()
                },
                r.backoff.as_millis(),
                r.attempt_timeout
                    .map(|d| format!("{}ms", d.as_millis()))
                    .unwrap_or_else(|| "none".into())
            );
            if let Some(h) = &r.hedge {
                let delay = match h.delay {
                    crate::table::retry::HedgeDelay::Fixed(d) => format!("{}ms", d.as_millis()),
                    crate::table::retry::HedgeDelay::P95 => "p95".into(),
                };
                let _ = writeln!(out, "hedge delay={delay} max={}", h.max);
            }
        }
        for f in &self.filters {
            let _ = writeln!(
                out,
                "filter {}",
                serde_json::to_string(f).unwrap_or_default()
            );
        }
        if self.status == Some(500) {
            let _ = writeln!(
                out,
                "no backend can be picked (all weights zero or none): {}",
                answer(self.status, self.error)
            );
        }
        for b in &self.backends {
            let pct = b.probability * 100.0;
            if let Some(reason) = &b.invalid_reason {
                let _ = writeln!(
                    out,
                    "backend {pct:5.1}% weight {} INVALID (answers 500): {reason}",
                    b.weight
                );
                continue;
            }
            let cluster = b
                .cluster
                .as_deref()
                .map(|c| format!(" cluster={c}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "backend {pct:5.1}% weight {} Service {}/{}:{}{cluster}",
                b.weight,
                b.namespace.as_deref().unwrap_or_default(),
                b.name.as_deref().unwrap_or_default(),
                b.port.unwrap_or_default()
            );
            if let Some(a) = &b.authority {
                let _ = writeln!(out, "  authority rewritten to {a}");
            }
            if b.endpoints.is_empty() {
                let _ = writeln!(out, "  no endpoints: 503");
            }
            for e in &b.endpoints {
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
        out
    }
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
/// HTTPRoute, GRPCRoute and XBackendTrafficPolicy CRDs with the approval annotation and
/// upstream's validation.
pub fn crds_yaml(gateway_api: bool) -> String {
    if gateway_api {
        crate::crds::to_yaml(&[
            crate::crds::gateway_httproute(),
            crate::crds::gateway_grpcroute(),
            crate::crds::gateway_backendtrafficpolicy(),
        ])
    } else {
        crate::crds::to_yaml(&crds())
    }
}
