//! What served a request, told only when asked: the `meshroute-served-by` response header
//! (`--debug-headers`) and one access-log line per request (`--access-log`, tracing target
//! `meshroute::access`). Both are off by default; off, each costs the request path a branch on
//! a bool and nothing is formatted or cloned.
//!
//! The access log names the request by method and path only: never the query string, header
//! values or tokens.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::table::{ParentPort, Rule, ServiceBackend};

/// The response header naming route, rule, backend and endpoint (`--debug-headers`).
pub const SERVED_BY: HeaderName = HeaderName::from_static("meshroute-served-by");

/// Tracing target of the access log.
pub const ACCESS_TARGET: &str = "meshroute::access";

/// How far a request got: the parent, rule, backend and endpoint it was bound to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served<'a> {
    pub parent: Option<&'a ParentPort>,
    pub rule: Option<&'a Rule>,
    pub backend: Option<&'a ServiceBackend>,
    pub endpoint: Option<SocketAddr>,
}

impl Served<'_> {
    /// `route=<ns>/<name> rule=<i> backend=<ns>/<name>:<port> [cluster=<c>] endpoint=<ip:port>`,
    /// as far as the request got (`route=passthrough` for a parent without routes). Nothing
    /// before a rule was bound.
    fn header_value(&self) -> Option<HeaderValue> {
        let rule = self.rule?;
        let mut v = String::with_capacity(128);
        let _ = write!(v, "route={} rule={}", RouteName(rule), rule.index);
        if let Some(b) = self.backend {
            let _ = write!(v, " backend={}/{}:{}", b.namespace, b.name, b.port);
            if let Some(c) = &b.cluster {
                let _ = write!(v, " cluster={c}");
            }
        }
        if let Some(e) = self.endpoint {
            let _ = write!(v, " endpoint={e}");
        }
        // Names and addresses are header-safe; a value that is not would be left out.
        HeaderValue::try_from(v).ok()
    }

    /// The same, sent to `endpoint`.
    pub fn at(self, endpoint: SocketAddr) -> Self {
        Served {
            endpoint: Some(endpoint),
            ..self
        }
    }

    /// Add the `meshroute-served-by` header.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.header_value() {
            headers.insert(SERVED_BY, v);
        }
    }
}

/// `<ns>/<name>` of a rule's route, or `passthrough`.
struct RouteName<'a>(&'a Rule);

impl fmt::Display for RouteName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.route {
            Some(r) => write!(f, "{}/{}", r.namespace, r.name),
            None => f.write_str("passthrough"),
        }
    }
}

/// A request as the access log names it, from the moment it arrived.
#[derive(Debug, Clone)]
pub(crate) struct AccessStart {
    method: Method,
    /// The path the client sent (before any URLRewrite), without the query.
    path: Box<str>,
    received: Instant,
}

impl AccessStart {
    pub fn new(method: &Method, path: &str, received: Instant) -> Self {
        AccessStart {
            method: method.clone(),
            path: path.into(),
            received,
        }
    }

    /// Log the request now, answered with `status` (and a proxy error `reason`).
    pub fn log(&self, at: Served<'_>, status: u16, reason: Option<&str>) {
        let parent = at
            .parent
            .map(|p| format!("{}/{}:{}", p.namespace, p.name, p.port));
        let route = at.rule.map(|r| RouteName(r).to_string());
        let backend = at
            .backend
            .map(|b| format!("{}/{}:{}", b.namespace, b.name, b.port));
        tracing::info!(
            target: ACCESS_TARGET,
            parent = parent.as_deref().unwrap_or("-"),
            route = route.as_deref().unwrap_or("-"),
            rule = at.rule.map(|r| r.index),
            backend = backend.as_deref().unwrap_or("-"),
            cluster = at.backend.and_then(|b| b.cluster.as_deref()),
            endpoint = at.endpoint.map(tracing::field::display),
            method = %self.method,
            path = %self.path,
            status,
            duration_ms = self.received.elapsed().as_secs_f64() * 1000.0,
            error = reason.unwrap_or("-"),
            "request"
        );
    }
}

/// An access-log line held until the response body ends ([`super::body::Completion`]).
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub start: AccessStart,
    pub parent: Arc<ParentPort>,
    pub rule: Arc<Rule>,
    pub backend: Arc<ServiceBackend>,
    pub endpoint: SocketAddr,
}

impl AccessEntry {
    /// Log the exchange, `reason` being why its body was cut short, if it was.
    pub fn log(&self, status: u16, reason: Option<&str>) {
        let at = Served {
            parent: Some(&self.parent),
            rule: Some(&self.rule),
            backend: Some(&self.backend),
            endpoint: Some(self.endpoint),
        };
        self.start.log(at, status, reason);
    }
}
