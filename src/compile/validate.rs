//! Admission: what the API server (CRD schema, CEL rules, defaulting) would do with a route
//! before any controller sees it. Every route-like object is turned into an [`AdmittedRoute`]
//! — the one rule model compile works on — or refused with errors naming the field and value.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::apis::standard::grpcroutes as gw_grpc;
use gateway_api::apis::standard::httproutes as gw;
use http::{HeaderName, HeaderValue, Method};

use crate::intern::intern;
use crate::model::{self, smi, LinkerdHttpRoute, Object, TrafficSplit};
use crate::table::{
    cors::{Cors, OriginPattern},
    matching::{
        Anchoring, GrpcRank, HeaderMatch, PathMatch, Pattern, QueryMatch, RequestMatch, ValueMatch,
    },
    Filter, HeaderModifier, PathModifier, Redirect, Timeouts, UrlRewrite,
};

/// Upper bound on the compiled size of one regex (the API server has no such check, but a
/// pathological regex must not eat the proxy's memory).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
pub const REGEX_MAX_LEN: usize = 1024;
pub const MAX_WEIGHT: i64 = 1_000_000;

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Which kind of route an admitted route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Gateway,
    Linkerd,
    TrafficSplit,
    /// gateway.networking.k8s.io GRPCRoute.
    Grpc,
}

impl RouteKind {
    pub fn group(self) -> &'static str {
        match self {
            RouteKind::Gateway | RouteKind::Grpc => model::GATEWAY_GROUP,
            RouteKind::Linkerd => model::LINKERD_GROUP,
            RouteKind::TrafficSplit => model::SPLIT_GROUP,
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::TrafficSplit => "TrafficSplit",
            RouteKind::Grpc => "GRPCRoute",
            _ => "HTTPRoute",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParentRefSpec {
    /// Names are interned ([`crate::intern`]): the same Services recur in many routes.
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: Option<u16>,
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendRefSpec {
    /// Interned, as [`ParentRefSpec`]'s.
    pub group: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub port: Option<u16>,
    pub weight: u32,
    pub filters: Vec<FilterSpec>,
}

/// A filter as admitted; mirrors still name an unresolved Service.
#[derive(Debug, Clone)]
pub enum FilterSpec {
    Ready(Filter),
    Mirror {
        backend: BackendRefSpec,
        numerator: u32,
        denominator: u32,
    },
    /// Valid per schema but not implemented here (ExtensionRef, CORS): the rule is dropped
    /// with reason `UnsupportedValue`.
    Unsupported(String),
}

impl PartialEq for FilterSpec {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub matches: Vec<Arc<RequestMatch>>,
    pub filters: Vec<FilterSpec>,
    pub backends: Vec<BackendRefSpec>,
    pub timeouts: Timeouts,
    /// The rule's own retry policy (its `retry` field or its route's Linkerd annotations);
    /// `None` leaves it to the parent Service's annotations ([`super::retry`]).
    pub retry: Option<std::sync::Arc<crate::table::retry::RetryPolicy>>,
}

/// A route-like object that passed admission, in the common rule model.
#[derive(Debug, Clone)]
pub struct AdmittedRoute {
    pub kind: RouteKind,
    /// Interned, as the names of its [`ObjectKey`](crate::model::ObjectKey).
    pub api_version: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// creationTimestamp; `None` (file mode without one) sorts after every timestamp.
    pub created: Option<i64>,
    pub generation: Option<i64>,
    pub parents: Vec<ParentRefSpec>,
    pub rules: Vec<RuleSpec>,
    /// TrafficSplit v1alpha3+: HTTPRouteGroups whose matches select the split's traffic.
    pub smi_groups: Vec<String>,
    /// linkerd-failover's `failover.linkerd.io/primary-service` annotation is set: a backend
    /// without ready endpoints gives its share to those that have some.
    pub failover: bool,
}

/// linkerd-failover's annotation naming the primary backend; its presence turns failover on.
pub const FAILOVER_ANNOTATION: &str = "failover.linkerd.io/primary-service";

/// Admit a route-like object. `Ok(None)` for objects that are not routes.
pub fn admit(obj: &Object) -> Result<Option<AdmittedRoute>, Vec<FieldError>> {
    let meta = obj.metadata();
    let mut errors = Vec::new();
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        errors.push(err("metadata.name", "required"));
    }
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_nanosecond() as i64);
    let base = AdmittedRoute {
        kind: RouteKind::Gateway,
        api_version: intern(&obj.api_version()),
        namespace: intern(&namespace),
        name: intern(&name),
        created,
        generation: meta.generation,
        parents: vec![],
        rules: vec![],
        smi_groups: vec![],
        failover: meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(FAILOVER_ANNOTATION)),
    };
    let route = match obj {
        Object::GatewayHttpRoute(r) => {
            let retry = RouteRetry {
                rules: &r.retries,
                annotations: meta.annotations.as_ref(),
            };
            admit_httproute(base, RouteKind::Gateway, &r.spec, retry, &mut errors)
        }
        Object::LinkerdHttpRoute(r) => match linkerd_as_gateway(r) {
            Ok(spec) => {
                let retry = RouteRetry {
                    rules: &[],
                    annotations: meta.annotations.as_ref(),
                };
                admit_httproute(base, RouteKind::Linkerd, &spec, retry, &mut errors)
            }
            Err(e) => {
                errors.push(e);
                base
            }
        },
        Object::TrafficSplit(t) => admit_split(base, t, &mut errors),
        Object::GatewayGrpcRoute(r) => admit_grpcroute(base, &r.spec, &mut errors),
        _ => return Ok(None),
    };
    if errors.is_empty() {
        Ok(Some(route))
    } else {
        Err(errors)
    }
}

/// Every Linkerd version is a subset of the Gateway API v1 shape, field for field.
fn linkerd_as_gateway(r: &LinkerdHttpRoute) -> Result<gw::HttpRouteSpec, FieldError> {
    let value = match r {
        LinkerdHttpRoute::V1alpha1(r) => serde_json::to_value(&r.spec),
        LinkerdHttpRoute::V1beta1(r) => serde_json::to_value(&r.spec),
        LinkerdHttpRoute::V1beta2(r) => serde_json::to_value(&r.spec),
        LinkerdHttpRoute::V1beta3(r) => serde_json::to_value(&r.spec),
    };
    value
        .and_then(serde_json::from_value)
        .map_err(|e| err("spec", format!("cannot be read as an HTTPRoute: {e}")))
}

/// Where an HTTPRoute states retries: per rule (GEP-1731, gateway group only) and in its
/// annotations (Linkerd's).
struct RouteRetry<'a> {
    rules: &'a [Option<model::GatewayRetry>],
    annotations: Option<&'a std::collections::BTreeMap<String, String>>,
}

fn admit_httproute(
    mut route: AdmittedRoute,
    kind: RouteKind,
    spec: &gw::HttpRouteSpec,
    retry: RouteRetry<'_>,
    errors: &mut Vec<FieldError>,
) -> AdmittedRoute {
    let route_retry = match super::retry::from_annotations(retry.annotations) {
        Ok(p) => p,
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    route.kind = kind;
    let parents = spec.parent_refs.as_deref().unwrap_or_default();
    if parents.len() > 32 {
        errors.push(err(
            "spec.parentRefs",
            format!("{} items, at most 32 allowed", parents.len()),
        ));
    }
    for (i, p) in parents.iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        if p.name.is_empty() {
            errors.push(err(format!("{f}.name"), "required"));
        }
        let port = p
            .port
            .and_then(|port| check_port(port, &format!("{f}.port"), errors));
        route.parents.push(ParentRefSpec {
            group: intern(p.group.as_deref().unwrap_or(model::GATEWAY_GROUP)),
            kind: intern(p.kind.as_deref().unwrap_or("Gateway")),
            namespace: p
                .namespace
                .as_deref()
                .map_or_else(|| route.namespace.clone(), intern),
            name: intern(&p.name),
            port,
            section_name: p.section_name.clone(),
        });
    }
    for (i, h) in spec.hostnames.iter().flatten().enumerate() {
        if h.is_empty() || h.len() > 253 || h.contains(':') {
            errors.push(err(
                format!("spec.hostnames[{i}]"),
                format!("{h:?} is not a valid hostname"),
            ));
        }
    }
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.len() > 16 {
        errors.push(err(
            "spec.rules",
            format!("{} items, at most 16 allowed", rules.len()),
        ));
    }
    let default_rule = [gw::HttpRouteRules::default()];
    let rules = if rules.is_empty() {
        &default_rule[..]
    } else {
        rules
    };
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        let before = errors.len();
        let mut r = admit_rule(&f, kind, &route.namespace, rule, errors);
        r.retry = match retry.rules.get(i).and_then(Option::as_ref) {
            Some(own) => super::retry::admit_gateway(&f, own, errors),
            None => route_retry.clone(),
        };
        match super::retry::with_hedge(r.retry.take(), retry.annotations) {
            Ok(p) => r.retry = p,
            // Said once for the route, not per rule.
            Err(e) if i == 0 => errors.push(e),
            Err(_) => {}
        }
        if errors.len() == before {
            route.rules.push(r);
        }
    }
    route
}

/// A GRPCRoute: its parentRefs, backendRefs and filters have the HTTPRoute shape (a subset
/// of it), so they are admitted as such; its matches name a service and method, which become
/// a path match on `/<service>/<method>` ranked as the GRPCRoute spec says.
fn admit_grpcroute(
    base: AdmittedRoute,
    spec: &gw_grpc::GrpcRouteSpec,
    errors: &mut Vec<FieldError>,
) -> AdmittedRoute {
    let raw_matches: Vec<Vec<gw_grpc::GrpcRouteRulesMatches>> = spec
        .rules
        .iter()
        .flatten()
        .map(|r| r.matches.clone().unwrap_or_default())
        .collect();
    let mut value = match serde_json::to_value(spec) {
        Ok(v) => v,
        Err(e) => {
            errors.push(err("spec", e.to_string()));
            return base;
        }
    };
    for rule in value
        .get_mut("rules")
        .and_then(|r| r.as_array_mut())
        .into_iter()
        .flatten()
    {
        if let Some(r) = rule.as_object_mut() {
            r.remove("matches");
        }
    }
    let http: gw::HttpRouteSpec = match serde_json::from_value(value) {
        Ok(h) => h,
        Err(e) => {
            errors.push(err("spec", format!("cannot be read: {e}")));
            return base;
        }
    };
    let before = errors.len();
    let retry = RouteRetry {
        rules: &[],
        annotations: None,
    };
    let mut route = admit_httproute(base, RouteKind::Grpc, &http, retry, errors);
    if errors.len() != before {
        return route;
    }
    for (i, rule) in route.rules.iter_mut().enumerate() {
        let raw = raw_matches.get(i).map(Vec::as_slice).unwrap_or_default();
        if raw.len() > 8 {
            errors.push(err(
                format!("spec.rules[{i}].matches"),
                format!("{} items, at most 8 allowed", raw.len()),
            ));
        }
        rule.matches = if raw.is_empty() {
            // No matches: every gRPC request (still ranked among gRPC matches).
            vec![shared_match(RequestMatch {
                grpc: Some(GrpcRank {
                    service: 0,
                    method: 0,
                }),
                ..RequestMatch::default()
            })]
        } else {
            raw.iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    grpc_match(&format!("spec.rules[{i}].matches[{j}]"), m, errors)
                })
                .map(shared_match)
                .collect()
        };
    }
    route
}

/// A match as admitted routes and compiled tables hold it: one allocation shared by the route
/// (in the index) and every table entry compiled from it, its vectors without spare capacity.
pub fn shared_match(mut m: RequestMatch) -> Arc<RequestMatch> {
    m.headers.shrink_to_fit();
    m.query.shrink_to_fit();
    Arc::new(m)
}

/// One GRPCRoute match: headers as in HTTPRoute; the method match as a path match.
fn grpc_match(
    f: &str,
    m: &gw_grpc::GrpcRouteRulesMatches,
    errors: &mut Vec<FieldError>,
) -> Option<RequestMatch> {
    let before = errors.len();
    // Header matches have the HTTPRoute shape.
    let headers = serde_json::json!({ "headers": m.headers });
    let mut out = match serde_json::from_value::<gw::HttpRouteRulesMatches>(headers) {
        Ok(hm) => admit_match(f, &hm, errors)?,
        Err(e) => {
            errors.push(err(format!("{f}.headers"), e.to_string()));
            return None;
        }
    };
    let mut rank = GrpcRank {
        service: 0,
        method: 0,
    };
    if let Some(mm) = &m.method {
        let mf = format!("{f}.method");
        let service = mm.service.as_deref().filter(|s| !s.is_empty());
        let method = mm.method.as_deref().filter(|s| !s.is_empty());
        rank = GrpcRank {
            service: service.map_or(0, str::len),
            method: method.map_or(0, str::len),
        };
        let regex = matches!(
            mm.r#type,
            Some(gw_grpc::GrpcRouteRulesMatchesMethodType::RegularExpression)
        );
        out.path = match (service, method) {
            (None, None) => {
                errors.push(err(&mf, "one or both of service and method must be set"));
                return None;
            }
            _ if regex => {
                // Each part must be a valid regex on its own; the path is both, anchored.
                let part = |field: &str, p: Option<&str>, errors: &mut Vec<FieldError>| match p {
                    Some(p) => compile_regex(&format!("{mf}.{field}"), p, Anchoring::Full, errors)
                        .map(|_| format!("(?:{p})")),
                    None => Some("[^/]+".to_string()),
                };
                let (s, m) = (
                    part("service", service, errors),
                    part("method", method, errors),
                );
                let (Some(s), Some(m)) = (s, m) else {
                    return None;
                };
                PathMatch::Regex(compile_regex(
                    &mf,
                    &format!("/{s}/{m}"),
                    Anchoring::Full,
                    errors,
                )?)
            }
            (service, method) => {
                let service_ok = |s: &str| {
                    let s = s.strip_prefix('.').unwrap_or(s);
                    !s.is_empty()
                        && s.split('.').all(|label| {
                            label
                                .chars()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        })
                };
                let method_ok = |m: &str| {
                    m.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                if let Some(s) = service.filter(|s| !service_ok(s)) {
                    errors.push(err(
                        format!("{mf}.service"),
                        format!("{s:?} is not a gRPC service name (e.g. helloworld.Greeter)"),
                    ));
                }
                if let Some(m) = method.filter(|m| !method_ok(m)) {
                    errors.push(err(
                        format!("{mf}.method"),
                        format!("{m:?} is not a gRPC method name"),
                    ));
                }
                match (service, method) {
                    (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                    (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                    (None, Some(m)) => PathMatch::Regex(compile_regex(
                        &mf,
                        &format!("/[^/]+/{}", regex::escape(m)),
                        Anchoring::Full,
                        errors,
                    )?),
                    (None, None) => return None,
                }
            }
        };
    }
    out.grpc = Some(rank);
    (errors.len() == before).then_some(out)
}

fn admit_rule(
    f: &str,
    kind: RouteKind,
    namespace: &str,
    rule: &gw::HttpRouteRules,
    errors: &mut Vec<FieldError>,
) -> RuleSpec {
    let raw_matches = rule.matches.as_deref().unwrap_or_default();
    if raw_matches.len() > 64 {
        errors.push(err(
            format!("{f}.matches"),
            format!("{} items, at most 64 allowed", raw_matches.len()),
        ));
    }
    let mut matches: Vec<RequestMatch> = raw_matches
        .iter()
        .enumerate()
        .filter_map(|(j, m)| admit_match(&format!("{f}.matches[{j}]"), m, errors))
        .collect();
    if raw_matches.is_empty() {
        matches.push(RequestMatch::default());
    }

    let filters = admit_filters(
        &format!("{f}.filters"),
        namespace,
        rule.filters
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(RawFilter::from_rule),
        errors,
    );
    let has_prefix_match = matches
        .iter()
        .all(|m| matches!(m.path, PathMatch::Prefix(_)));
    check_filter_combination(f, &filters, has_prefix_match, errors);

    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    if refs.len() > 16 {
        errors.push(err(
            format!("{f}.backendRefs"),
            format!("{} items, at most 16 allowed", refs.len()),
        ));
    }
    let has_redirect = filters
        .iter()
        .any(|x| matches!(x, FilterSpec::Ready(Filter::RequestRedirect(_))));
    if has_redirect && !refs.is_empty() {
        errors.push(err(
            format!("{f}.backendRefs"),
            "must be empty when the rule has a RequestRedirect filter",
        ));
    }
    let mut backends = Vec::new();
    for (j, b) in refs.iter().enumerate() {
        let bf = format!("{f}.backendRefs[{j}]");
        let weight = match b.weight {
            None => 1,
            Some(w) if (0..=MAX_WEIGHT).contains(&i64::from(w)) => w as u32,
            Some(w) => {
                errors.push(err(
                    format!("{bf}.weight"),
                    format!("{w} is out of range 0..=1000000"),
                ));
                0
            }
        };
        let port = b
            .port
            .and_then(|p| check_port(p, &format!("{bf}.port"), errors));
        let group = b.group.clone().unwrap_or_default();
        let bkind = b.kind.clone().unwrap_or_else(|| "Service".into());
        if matches!(kind, RouteKind::Gateway | RouteKind::Grpc)
            && port.is_none()
            && b.port.is_none()
            && is_core(&group)
            && bkind == "Service"
        {
            errors.push(err(
                format!("{bf}.port"),
                "required when referring to a Service",
            ));
        }
        if b.name.is_empty() {
            errors.push(err(format!("{bf}.name"), "required"));
        }
        let bfilters = admit_filters(
            &format!("{bf}.filters"),
            namespace,
            b.filters
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(RawFilter::from_backend),
            errors,
        );
        check_filter_combination(&bf, &bfilters, has_prefix_match, errors);
        backends.push(BackendRefSpec {
            group: intern(&group),
            kind: intern(&bkind),
            namespace: intern(b.namespace.as_deref().unwrap_or(namespace)),
            name: intern(&b.name),
            port,
            weight,
            filters: bfilters,
        });
    }

    let timeouts = admit_timeouts(&format!("{f}.timeouts"), rule.timeouts.as_ref(), errors);
    RuleSpec {
        matches: matches.into_iter().map(shared_match).collect(),
        filters,
        backends,
        timeouts,
        retry: None,
    }
}

pub fn is_core(group: &str) -> bool {
    group.is_empty() || group.eq_ignore_ascii_case("core")
}

fn check_port(port: i32, field: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errors.push(err(field, format!("{port} is not a valid port (1-65535)")));
            None
        }
    }
}

fn admit_timeouts(
    f: &str,
    t: Option<&gw::HttpRouteRulesTimeouts>,
    errors: &mut Vec<FieldError>,
) -> Timeouts {
    let Some(t) = t else {
        return Timeouts::default();
    };
    let parse =
        |field: &str, v: &Option<String>, errors: &mut Vec<FieldError>| -> Option<Duration> {
            let v = v.as_deref()?;
            match parse_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(err(format!("{f}.{field}"), e));
                    None
                }
            }
        };
    let request = parse("request", &t.request, errors);
    let backend = parse("backendRequest", &t.backend_request, errors);
    if let (Some(r), Some(b)) = (request, backend) {
        if !r.is_zero() && b > r {
            errors.push(err(
                format!("{f}.backendRequest"),
                format!(
                    "{:?} must be <= request {:?} (unless request is 0s)",
                    t.backend_request.as_deref().unwrap_or_default(),
                    t.request.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    Timeouts {
        request: nonzero(request),
        request_set: t.request.is_some(),
        backend_request: nonzero(backend),
    }
}

/// Parse a GEP-2257 duration: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (expected e.g. 500ms, 5s, 1m, 1h30m)");
    let b = s.as_bytes();
    let (mut i, mut groups, mut total) = (0usize, 0usize, Duration::ZERO);
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let unit = if s[i..].starts_with("ms") {
            i += 2;
            Duration::from_millis(n)
        } else {
            let d = match b.get(i) {
                Some(b'h') => Duration::from_secs(n * 3600),
                Some(b'm') => Duration::from_secs(n * 60),
                Some(b's') => Duration::from_secs(n),
                _ => return Err(bad()),
            };
            i += 1;
            d
        };
        total += unit;
        groups += 1;
        if groups > 4 {
            return Err(bad());
        }
    }
    if groups == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// Write a duration as the GEP-2257 text a user would write for it (`5s`, `2m`, `1h30m`,
/// `1s500ms`), so `explain` and `/debug/table` show `120000ms` as `2m`. A duration with a
/// sub-millisecond part (none comes from a GEP-2257 field) is shown as Rust does (`1.0005s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1_000 % 60, "s"),
        (ms % 1_000, "ms"),
    ];
    let mut out = String::new();
    for (count, unit) in parts {
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
        }
    }
    out
}

fn compile_regex(
    field: &str,
    pattern: &str,
    anchoring: Anchoring,
    errors: &mut Vec<FieldError>,
) -> Option<Pattern> {
    if pattern.len() > REGEX_MAX_LEN {
        errors.push(err(
            field,
            format!(
                "regex is {} bytes long, at most {REGEX_MAX_LEN} allowed",
                pattern.len()
            ),
        ));
        return None;
    }
    match Pattern::new(pattern, anchoring, REGEX_SIZE_LIMIT) {
        Ok(r) => Some(r),
        Err(e) => {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            errors.push(err(
                field,
                format!("{pattern:?} is not a valid regular expression: {first}"),
            ));
            None
        }
    }
}

fn admit_match(
    f: &str,
    m: &gw::HttpRouteRulesMatches,
    errors: &mut Vec<FieldError>,
) -> Option<RequestMatch> {
    let before = errors.len();
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p
                .r#type
                .clone()
                .unwrap_or(gw::HttpRouteRulesMatchesPathType::PathPrefix)
            {
                gw::HttpRouteRulesMatchesPathType::RegularExpression => {
                    compile_regex(&format!("{f}.path.value"), &value, Anchoring::Full, errors)
                        .map(PathMatch::Regex)?
                }
                t => {
                    if !value.starts_with('/') {
                        errors.push(err(
                            format!("{f}.path.value"),
                            format!("{value:?} must start with '/'"),
                        ));
                    } else if value.contains("//") || value.contains('?') || value.contains('#') {
                        errors.push(err(
                            format!("{f}.path.value"),
                            format!("{value:?} must not contain '//', '?' or '#'"),
                        ));
                    }
                    if t == gw::HttpRouteRulesMatchesPathType::Exact {
                        PathMatch::Exact(value)
                    } else {
                        let trimmed = value.trim_end_matches('/');
                        PathMatch::Prefix(if trimmed.is_empty() {
                            "/".into()
                        } else {
                            trimmed.into()
                        })
                    }
                }
            }
        }
    };
    let method = m.method.as_ref().map(|m| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| Method::from_bytes(s.as_bytes()).ok())
            })
            .unwrap_or(Method::GET)
    });
    let mut headers = Vec::new();
    let mut seen = BTreeSet::new();
    for (k, h) in m.headers.iter().flatten().enumerate() {
        let hf = format!("{f}.headers[{k}]");
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            errors.push(err(
                format!("{hf}.name"),
                format!("{:?} is not a valid header name", h.name),
            ));
            continue;
        };
        if !seen.insert(name.as_str().to_string()) {
            errors.push(err(
                format!("{hf}.name"),
                format!("{:?} is matched twice (names are case-insensitive)", h.name),
            ));
        }
        let value = match h.r#type {
            Some(gw::HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                match compile_regex(&format!("{hf}.value"), &h.value, Anchoring::Full, errors) {
                    Some(r) => ValueMatch::Regex(r),
                    None => continue,
                }
            }
            _ => ValueMatch::Exact(h.value.clone()),
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query = Vec::new();
    for (k, q) in m.query_params.iter().flatten().enumerate() {
        let qf = format!("{f}.queryParams[{k}]");
        if q.name.is_empty() {
            errors.push(err(format!("{qf}.name"), "required"));
            continue;
        }
        let value = match q.r#type {
            Some(gw::HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                match compile_regex(&format!("{qf}.value"), &q.value, Anchoring::Full, errors) {
                    Some(r) => ValueMatch::Regex(r),
                    None => continue,
                }
            }
            _ => ValueMatch::Exact(q.value.clone()),
        };
        query.push(QueryMatch {
            name: q.name.clone(),
            value,
        });
    }
    (errors.len() == before).then_some(RequestMatch {
        grpc: None,
        path,
        method,
        headers,
        query,
    })
}

/// Rule-level and backend-level filters have the same shape in JSON; read both through JSON
/// into the rule-level type so one function admits both.
struct RawFilter(Result<gw::HttpRouteRulesFilters, String>);

impl RawFilter {
    fn from_rule(f: &gw::HttpRouteRulesFilters) -> Self {
        RawFilter(Ok(f.clone()))
    }
    fn from_backend(f: &gw::HttpRouteRulesBackendRefsFilters) -> Self {
        RawFilter(
            serde_json::to_value(f)
                .and_then(serde_json::from_value)
                .map_err(|e| e.to_string()),
        )
    }
}

fn header_modifier(
    f: &str,
    set: impl Iterator<Item = (String, String)>,
    add: impl Iterator<Item = (String, String)>,
    remove: &[String],
    errors: &mut Vec<FieldError>,
) -> HeaderModifier {
    let mut pairs = |kind: &str, it: &mut dyn Iterator<Item = (String, String)>| {
        let mut out = Vec::new();
        for (i, (n, v)) in it.enumerate() {
            let name = HeaderName::from_bytes(n.as_bytes());
            let value = HeaderValue::from_str(&v);
            match (name, value) {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => errors.push(err(
                    format!("{f}.{kind}[{i}].name"),
                    format!("{n:?} is not a valid header name"),
                )),
                (_, Err(_)) => errors.push(err(
                    format!("{f}.{kind}[{i}].value"),
                    format!("{v:?} is not a valid header value"),
                )),
            }
        }
        out
    };
    let set = pairs("set", &mut { set });
    let add = pairs("add", &mut { add });
    let mut rm = Vec::new();
    for (i, n) in remove.iter().enumerate() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(n) => rm.push(n),
            Err(_) => errors.push(err(
                format!("{f}.remove[{i}]"),
                format!("{n:?} is not a valid header name"),
            )),
        }
    }
    HeaderModifier {
        set,
        add,
        remove: rm,
    }
}

fn path_modifier(
    f: &str,
    full: &Option<String>,
    prefix: &Option<String>,
    is_full: bool,
    errors: &mut Vec<FieldError>,
) -> Option<PathModifier> {
    let (value, field) = if is_full {
        (full, "replaceFullPath")
    } else {
        (prefix, "replacePrefixMatch")
    };
    match value {
        Some(v) if v.starts_with('/') => Some(if is_full {
            PathModifier::ReplaceFullPath(v.clone())
        } else {
            PathModifier::ReplacePrefixMatch(v.clone())
        }),
        Some(v) => {
            errors.push(err(
                format!("{f}.{field}"),
                format!("{v:?} must start with '/'"),
            ));
            None
        }
        None => {
            errors.push(err(format!("{f}.{field}"), "required for this path type"));
            None
        }
    }
}

fn admit_filters(
    f: &str,
    namespace: &str,
    raw: impl Iterator<Item = RawFilter>,
    errors: &mut Vec<FieldError>,
) -> Vec<FilterSpec> {
    use gw::HttpRouteRulesFiltersType as T;
    let mut out = Vec::new();
    for (i, RawFilter(filter)) in raw.enumerate() {
        let ff = format!("{f}[{i}]");
        let filter = match filter {
            Ok(x) => x,
            Err(e) => {
                errors.push(err(ff, e));
                continue;
            }
        };
        let missing = |field: &str| {
            err(
                format!("{ff}.{field}"),
                format!("required when type is {:?}", filter.r#type),
            )
        };
        let spec = match filter.r#type {
            T::RequestHeaderModifier | T::ResponseHeaderModifier => {
                let request = filter.r#type == T::RequestHeaderModifier;
                let (field, m) = if request {
                    (
                        "requestHeaderModifier",
                        filter.request_header_modifier.as_ref().map(|m| {
                            (
                                m.set
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone()))
                                    .collect::<Vec<_>>(),
                                m.add
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone()))
                                    .collect::<Vec<_>>(),
                                m.remove.clone().unwrap_or_default(),
                            )
                        }),
                    )
                } else {
                    (
                        "responseHeaderModifier",
                        filter.response_header_modifier.as_ref().map(|m| {
                            (
                                m.set
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone()))
                                    .collect::<Vec<_>>(),
                                m.add
                                    .iter()
                                    .flatten()
                                    .map(|h| (h.name.clone(), h.value.clone()))
                                    .collect::<Vec<_>>(),
                                m.remove.clone().unwrap_or_default(),
                            )
                        }),
                    )
                };
                let Some((set, add, remove)) = m else {
                    errors.push(missing(field));
                    continue;
                };
                let hm = header_modifier(
                    &format!("{ff}.{field}"),
                    set.into_iter(),
                    add.into_iter(),
                    &remove,
                    errors,
                );
                FilterSpec::Ready(if request {
                    Filter::RequestHeaderModifier(hm)
                } else {
                    Filter::ResponseHeaderModifier(hm)
                })
            }
            T::RequestRedirect => {
                let Some(r) = &filter.request_redirect else {
                    errors.push(missing("requestRedirect"));
                    continue;
                };
                let rf = format!("{ff}.requestRedirect");
                let status = match r.status_code.unwrap_or(302) {
                    s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                    s => {
                        errors.push(err(
                            format!("{rf}.statusCode"),
                            format!("{s} is not one of 301, 302, 303, 307, 308"),
                        ));
                        continue;
                    }
                };
                let port = r
                    .port
                    .and_then(|p| check_port(p, &format!("{rf}.port"), errors));
                let path = r.path.as_ref().and_then(|p| {
                    path_modifier(
                        &format!("{rf}.path"),
                        &p.replace_full_path,
                        &p.replace_prefix_match,
                        p.r#type
                            == gw::HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                        errors,
                    )
                });
                let scheme = r.scheme.as_ref().map(|s| match s {
                    gw::HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                    gw::HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                });
                FilterSpec::Ready(Filter::RequestRedirect(Redirect {
                    scheme,
                    hostname: r.hostname.clone(),
                    path,
                    port,
                    status,
                }))
            }
            T::UrlRewrite => {
                let Some(r) = &filter.url_rewrite else {
                    errors.push(missing("urlRewrite"));
                    continue;
                };
                let path = r.path.as_ref().and_then(|p| {
                    path_modifier(
                        &format!("{ff}.urlRewrite.path"),
                        &p.replace_full_path,
                        &p.replace_prefix_match,
                        p.r#type == gw::HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                        errors,
                    )
                });
                FilterSpec::Ready(Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path,
                }))
            }
            T::RequestMirror => {
                let Some(m) = &filter.request_mirror else {
                    errors.push(missing("requestMirror"));
                    continue;
                };
                let mf = format!("{ff}.requestMirror");
                let (numerator, denominator) = match (&m.fraction, m.percent) {
                    (Some(_), Some(_)) => {
                        errors.push(err(mf, "only one of percent and fraction may be set"));
                        continue;
                    }
                    (Some(fr), None) => (fr.numerator, fr.denominator.unwrap_or(100)),
                    (None, Some(p)) => (p, 100),
                    (None, None) => (100, 100),
                };
                if denominator <= 0 || numerator < 0 || numerator > denominator {
                    errors.push(err(
                        format!("{mf}.fraction"),
                        format!("{numerator}/{denominator} is not a fraction between 0 and 1"),
                    ));
                    continue;
                }
                let b = &m.backend_ref;
                let port = b
                    .port
                    .and_then(|p| check_port(p, &format!("{mf}.backendRef.port"), errors));
                FilterSpec::Mirror {
                    backend: BackendRefSpec {
                        group: intern(b.group.as_deref().unwrap_or_default()),
                        kind: intern(b.kind.as_deref().unwrap_or("Service")),
                        namespace: intern(b.namespace.as_deref().unwrap_or(namespace)),
                        name: intern(&b.name),
                        port,
                        weight: 1,
                        filters: vec![],
                    },
                    numerator: numerator as u32,
                    denominator: denominator as u32,
                }
            }
            T::ExtensionRef => FilterSpec::Unsupported("ExtensionRef".into()),
            T::Cors => {
                let Some(c) = &filter.cors else {
                    errors.push(missing("cors"));
                    continue;
                };
                let cf = format!("{ff}.cors");
                match cors_filter(
                    &cf,
                    CorsSpec {
                        allow_origins: c.allow_origins.as_deref(),
                        allow_methods: c.allow_methods.as_deref(),
                        allow_headers: c.allow_headers.as_deref(),
                        expose_headers: c.expose_headers.as_deref(),
                        allow_credentials: c.allow_credentials,
                        max_age: c.max_age,
                    },
                    errors,
                ) {
                    Some(c) => FilterSpec::Ready(Filter::Cors(c)),
                    None => continue,
                }
            }
        };
        out.push(spec);
    }
    out
}

/// The fields of a CORS filter (rule and backendRef filters have their own, equal, types).
struct CorsSpec<'a> {
    allow_origins: Option<&'a [String]>,
    allow_methods: Option<&'a [String]>,
    allow_headers: Option<&'a [String]>,
    expose_headers: Option<&'a [String]>,
    allow_credentials: Option<bool>,
    max_age: Option<i32>,
}

/// Validate a CORS filter as the CRD schema does (origins, methods, header names, maxAge).
fn cors_filter(f: &str, c: CorsSpec<'_>, errors: &mut Vec<FieldError>) -> Option<Cors> {
    let before = errors.len();
    let mut allow_origins = Vec::new();
    for (i, o) in c.allow_origins.unwrap_or_default().iter().enumerate() {
        match OriginPattern::parse(o) {
            Ok(p) => allow_origins.push(p),
            Err(e) => errors.push(err(format!("{f}.allowOrigins[{i}]"), e)),
        }
    }
    let names = |field: &str, list: Option<&[String]>, errors: &mut Vec<FieldError>| {
        let mut out = Vec::new();
        for (i, h) in list.unwrap_or_default().iter().enumerate() {
            if h != "*" && HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(err(
                    format!("{f}.{field}[{i}]"),
                    format!("{h:?} is not a valid header name"),
                ));
            } else {
                out.push(h.to_ascii_lowercase());
            }
        }
        out
    };
    let allow_headers = names("allowHeaders", c.allow_headers, errors);
    let expose_headers = names("exposeHeaders", c.expose_headers, errors);
    let mut allow_methods = Vec::new();
    for (i, m) in c.allow_methods.unwrap_or_default().iter().enumerate() {
        if m != "*" && Method::from_bytes(m.as_bytes()).is_err() {
            errors.push(err(
                format!("{f}.allowMethods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        } else {
            allow_methods.push(m.clone());
        }
    }
    let max_age = match c.max_age {
        None => 5,
        Some(n) if n >= 1 => n as u32,
        Some(n) => {
            errors.push(err(
                format!("{f}.maxAge"),
                format!("{n} must be at least 1"),
            ));
            5
        }
    };
    (errors.len() == before).then_some(Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials: c.allow_credentials.unwrap_or(false),
        max_age,
    })
}

/// Gateway API CEL rules on filter lists.
fn check_filter_combination(
    f: &str,
    filters: &[FilterSpec],
    prefix_matches_only: bool,
    errors: &mut Vec<FieldError>,
) {
    let mut counts = std::collections::BTreeMap::new();
    for x in filters {
        let name = match x {
            FilterSpec::Ready(Filter::RequestHeaderModifier(_)) => "RequestHeaderModifier",
            FilterSpec::Ready(Filter::ResponseHeaderModifier(_)) => "ResponseHeaderModifier",
            FilterSpec::Ready(Filter::RequestRedirect(_)) => "RequestRedirect",
            FilterSpec::Ready(Filter::UrlRewrite(_)) => "URLRewrite",
            FilterSpec::Ready(Filter::Cors(_)) => "CORS",
            _ => continue,
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    for (name, n) in &counts {
        if *n > 1 {
            errors.push(err(
                format!("{f}.filters"),
                format!("{name} may appear at most once, found {n}"),
            ));
        }
    }
    if counts.contains_key("RequestRedirect") && counts.contains_key("URLRewrite") {
        errors.push(err(
            format!("{f}.filters"),
            "RequestRedirect and URLRewrite cannot be used together",
        ));
    }
    let uses_prefix_replace = filters.iter().any(|x| {
        matches!(
            x,
            FilterSpec::Ready(Filter::UrlRewrite(UrlRewrite {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            })) | FilterSpec::Ready(Filter::RequestRedirect(Redirect {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            }))
        )
    });
    if uses_prefix_replace && !prefix_matches_only {
        errors.push(err(
            format!("{f}.filters"),
            "replacePrefixMatch requires every match of the rule to be a PathPrefix match",
        ));
    }
}

/// Apex service, (backend service, weight or error) pairs, and HTTPRouteGroup references.
type SplitParts<'a> = (
    &'a str,
    Vec<(String, Result<u32, String>)>,
    Option<&'a Vec<smi::MatchRef>>,
);

fn admit_split(
    mut route: AdmittedRoute,
    t: &TrafficSplit,
    errors: &mut Vec<FieldError>,
) -> AdmittedRoute {
    route.kind = RouteKind::TrafficSplit;
    let (service, backends, matches): SplitParts<'_> = match t {
        TrafficSplit::V1alpha1(t) => {
            split_parts(&t.spec.service, &t.spec.backends, &t.spec.matches)
        }
        TrafficSplit::V1alpha2(t) => {
            split_parts(&t.spec.service, &t.spec.backends, &t.spec.matches)
        }
        TrafficSplit::V1alpha3(t) => {
            split_parts(&t.spec.service, &t.spec.backends, &t.spec.matches)
        }
        TrafficSplit::V1alpha4(t) => {
            split_parts(&t.spec.service, &t.spec.backends, &t.spec.matches)
        }
    };
    if service.is_empty() {
        errors.push(err("spec.service", "required"));
    }
    // The apex may be written as a bare name or as an FQDN (`svc.ns.svc.cluster.local`).
    let apex = service.split('.').next().unwrap_or_default().to_string();
    route.parents.push(ParentRefSpec {
        group: intern(""),
        kind: intern("Service"),
        namespace: route.namespace.clone(),
        name: intern(&apex),
        port: None,
        section_name: None,
    });
    if backends.is_empty() {
        errors.push(err("spec.backends", "at least one backend is required"));
    }
    let mut refs = Vec::new();
    for (i, (svc, w)) in backends.into_iter().enumerate() {
        if svc.is_empty() {
            errors.push(err(format!("spec.backends[{i}].service"), "required"));
        }
        match w {
            Ok(weight) => refs.push(BackendRefSpec {
                group: intern(""),
                kind: intern("Service"),
                namespace: route.namespace.clone(),
                name: intern(svc.split('.').next().unwrap_or_default()),
                port: None,
                weight,
                filters: vec![],
            }),
            Err(e) => errors.push(err(format!("spec.backends[{i}].weight"), e)),
        }
    }
    for (i, m) in matches.into_iter().flatten().enumerate() {
        if m.kind != "HTTPRouteGroup" {
            errors.push(err(
                format!("spec.matches[{i}].kind"),
                format!("{:?} is not supported (expected HTTPRouteGroup)", m.kind),
            ));
        }
        route.smi_groups.push(m.name.clone());
    }
    route.rules.push(RuleSpec {
        matches: vec![shared_match(RequestMatch::default())],
        filters: vec![],
        backends: refs,
        timeouts: Timeouts::default(),
        retry: None,
    });
    route
}

fn split_parts<'a>(
    service: &'a str,
    backends: &[smi::Backend],
    matches: &'a Option<Vec<smi::MatchRef>>,
) -> SplitParts<'a> {
    (service, split_weights(backends), matches.as_ref())
}

/// The weights of one split, every version alike (a stored v1alpha1 split may be read under any
/// version): each is read as a quantity in thousandths, and when all of them are whole units
/// they are divided back down, so `90`/`10` stay `90`/`10` while `1`/`500m` become
/// `1000`/`500`. Either way every weight of the split has the same scale and ratios are exact.
pub fn split_weights(backends: &[smi::Backend]) -> Vec<(String, Result<u32, String>)> {
    let milli: Vec<(String, Result<u32, String>)> = backends
        .iter()
        .map(|b| (b.service.clone(), quantity_weight(&b.weight)))
        .collect();
    let whole = milli
        .iter()
        .all(|(_, w)| w.as_ref().map_or(true, |w| w % 1000 == 0));
    if !whole {
        return milli;
    }
    milli
        .into_iter()
        .map(|(s, w)| (s, w.map(|w| w / 1000)))
        .collect()
}

/// A TrafficSplit weight in thousandths (`1` → 1000, `500m` → 500, `"0.5"` → 500), so that
/// quantities of any scale keep their ratios.
pub fn quantity_weight(q: &smi::QuantityWeight) -> Result<u32, String> {
    let s = match q {
        smi::QuantityWeight::Int(i) => i.to_string(),
        smi::QuantityWeight::Str(s) => s.trim().to_string(),
    };
    let bad = || format!("{s:?} is not a valid quantity weight (expected e.g. 1, \"90\", 500m)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let milli_per_unit: f64 = match suffix {
        "m" => 1.0,
        "" => 1e3,
        "k" => 1e6,
        "M" => 1e9,
        "Ki" => 1024e3,
        "Mi" => 1024.0 * 1024e3,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let milli = (n * milli_per_unit).round();
    if !(0.0..=MAX_WEIGHT as f64 * 1000.0).contains(&milli) {
        return Err(format!("{s:?} is out of range (at most 1000000)"));
    }
    Ok(milli as u32)
}

/// Admit an HTTPRouteGroup's matches into request matches. Each method yields its own match
/// (SMI `*` or no methods = any method); header values are regexes, as SMI specifies.
pub fn group_matches(
    group: &model::HttpRouteGroup,
    entry: &smi::HttpMatch,
) -> Result<Vec<RequestMatch>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let i = group
        .spec
        .matches
        .iter()
        .position(|m| m == entry)
        .unwrap_or(0);
    let f = format!("spec.matches[{i}]");
    let path = match &entry.path_regex {
        Some(p) => compile_regex(&format!("{f}.pathRegex"), p, Anchoring::Start, &mut errors)
            .map(PathMatch::Regex),
        None => Some(PathMatch::Prefix("/".into())),
    };
    let mut headers = Vec::new();
    for (name, value) in entry.headers.iter().flatten() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => {
                if let Some(r) = compile_regex(
                    &format!("{f}.headers.{name}"),
                    value,
                    Anchoring::Full,
                    &mut errors,
                ) {
                    headers.push(HeaderMatch {
                        name: n,
                        value: ValueMatch::Regex(r),
                    });
                }
            }
            Err(_) => errors.push(err(
                format!("{f}.headers"),
                format!("{name:?} is not a valid header name"),
            )),
        }
    }
    let mut methods = Vec::new();
    for (k, m) in entry.methods.iter().flatten().enumerate() {
        if m == "*" {
            methods.clear();
            break;
        }
        match Method::from_bytes(m.as_bytes()) {
            Ok(m) => methods.push(Some(m)),
            Err(_) => errors.push(err(
                format!("{f}.methods[{k}]"),
                format!("{m:?} is not an HTTP method"),
            )),
        }
    }
    if methods.is_empty() {
        methods.push(None);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let path = path.unwrap_or_else(|| PathMatch::Prefix("/".into()));
    Ok(methods
        .into_iter()
        .map(|method| RequestMatch {
            grpc: None,
            path: path.clone(),
            method,
            headers: headers.clone(),
            query: vec![],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gep2257_valid_vectors() {
        for (s, ms) in [
            ("0s", 0),
            ("0h", 0),
            ("5s", 5_000),
            ("300ms", 300),
            ("1h30m", 5_400_000),
            ("1h", 3_600_000),
            ("99999ms", 99_999),
            ("1h1m1s1ms", 3_661_001),
            ("1m30s", 90_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
    }

    #[test]
    fn durations_are_shown_as_written() {
        for (ms, text) in [
            (0, "0s"),
            (300, "300ms"),
            (5_000, "5s"),
            (120_000, "2m"),
            (5_400_000, "1h30m"),
            (3_661_001, "1h1m1s1ms"),
            (1_500, "1s500ms"),
            (360_000_000, "100h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d, "{text} round trip");
        }
        assert_eq!(format_duration(Duration::from_micros(1_000_500)), "1.0005s");
    }

    #[test]
    fn gep2257_invalid_vectors() {
        for s in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "100000ms",
            "1h1m1s1ms1h",
            "1d",
            "5 s",
            " 5s",
            "5s ",
            "1us",
            "1ns",
            "1H",
            "PT5S",
            "5sec",
            "+5s",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("is not a duration"), "{s}: {e}");
        }
    }

    #[test]
    fn split_weights_share_one_scale_whatever_the_version_wrote() {
        use smi::QuantityWeight::*;
        let b = |service: &str, weight| smi::Backend {
            service: service.into(),
            weight,
        };
        let ws = |bs: &[smi::Backend]| -> Vec<Result<u32, String>> {
            split_weights(bs).into_iter().map(|(_, w)| w).collect()
        };
        // Whole units stay units (what v1alpha2+ users wrote and see in /debug/table).
        assert_eq!(ws(&[b("a", Int(90)), b("b", Int(10))]), [Ok(90), Ok(10)]);
        assert_eq!(
            ws(&[b("a", Str("90".into())), b("b", Int(10))]),
            [Ok(90), Ok(10)]
        );
        // Any fraction puts the whole split in thousandths: 1 : 0.5 stays 2 : 1.
        assert_eq!(
            ws(&[b("a", Int(1)), b("b", Str("500m".into()))]),
            [Ok(1000), Ok(500)]
        );
        assert_eq!(
            ws(&[b("a", Str("1k".into())), b("b", Str("0.5".into()))]),
            [Ok(1_000_000), Ok(500)]
        );
        // A bad weight is an error of its own and does not change the others' scale.
        let out = ws(&[b("a", Int(3)), b("b", Str("lots".into()))]);
        assert_eq!(out[0], Ok(3));
        assert!(out[1].is_err());
    }

    #[test]
    fn quantity_weights_keep_ratios() {
        use smi::QuantityWeight::*;
        assert_eq!(quantity_weight(&Int(1)), Ok(1000));
        assert_eq!(quantity_weight(&Str("90".into())), Ok(90_000));
        assert_eq!(quantity_weight(&Str("500m".into())), Ok(500));
        assert_eq!(quantity_weight(&Str("0.5".into())), Ok(500));
        assert_eq!(quantity_weight(&Str("1k".into())), Ok(1_000_000));
        assert_eq!(quantity_weight(&Int(0)), Ok(0));
        assert!(quantity_weight(&Int(-1)).is_err());
        assert!(quantity_weight(&Str("ten".into())).is_err());
        assert!(quantity_weight(&Str("5x".into())).is_err());
        assert!(quantity_weight(&Str("2000k".into())).is_err());
    }
}
