//! Admission of retry settings into [`RetryPolicy`]: GEP-1731 `rules[].retry` and Linkerd's
//! `retry.linkerd.io/*` annotations.
//!
//! Precedence, as Linkerd documents it ("if any retry configuration annotations are present on
//! a route resource, they override all retry configuration annotations on the parent
//! Service") extended by the Gateway API field: a rule's own `retry` wins over the route's
//! annotations, which win as a whole over the parent Service's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;

use super::validate::{is_core, parse_duration, FieldError};
use crate::index::Index;
use crate::model::{BackendTrafficPolicy, GatewayRetry};
use crate::table::retry::{
    parse_linkerd_codes, BudgetConfig, Hedge, HedgeDelay, RetryPolicy, StatusCodes,
};

pub const HTTP_ANNOTATION: &str = "retry.linkerd.io/http";
pub const LIMIT_ANNOTATION: &str = "retry.linkerd.io/limit";
pub const TIMEOUT_ANNOTATION: &str = "retry.linkerd.io/timeout";
/// meshroute's own: request hedging on a route ([`crate::table::retry::Hedge`]).
pub const HEDGE_ANNOTATION: &str = "meshroute.dev/hedge";

/// Retries when neither `attempts` nor `retry.linkerd.io/limit` says (Linkerd's default).
pub const DEFAULT_LIMIT: u32 = 1;
/// Most retries one request may get, whatever the configuration asks (the budget bounds
/// the total anyway; this bounds one slow request's tail).
pub const MAX_LIMIT: i64 = 10;

fn field_error(field: String, message: String) -> FieldError {
    FieldError { field, message }
}

/// GEP-1731 `retry` of the rule at `f` (`spec.rules[i]`). Codes are 400..=599 (upstream's
/// `HTTPRouteRetryStatusCode`), `attempts` 0..=[`MAX_LIMIT`], `backoff` a GEP-2257 duration.
pub fn admit_gateway(
    f: &str,
    r: &GatewayRetry,
    errors: &mut Vec<FieldError>,
) -> Option<Arc<RetryPolicy>> {
    let before = errors.len();
    let limit = match r.attempts {
        None => DEFAULT_LIMIT,
        Some(n) if (0..=MAX_LIMIT).contains(&n) => n as u32,
        Some(n) => {
            errors.push(field_error(
                format!("{f}.retry.attempts"),
                format!("{n} is out of range (0-{MAX_LIMIT})"),
            ));
            0
        }
    };
    let mut codes = StatusCodes::default();
    for (j, &c) in r.codes.iter().flatten().enumerate() {
        match u16::try_from(c) {
            Ok(c) if (400..=599).contains(&c) => codes.insert_range(c, c),
            _ => errors.push(field_error(
                format!("{f}.retry.codes[{j}]"),
                format!("{c} is not a retriable status code (400-599)"),
            )),
        }
    }
    let backoff = match r.backoff.as_deref().map(parse_duration) {
        None => Default::default(),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(field_error(format!("{f}.retry.backoff"), e));
            Default::default()
        }
    };
    (errors.len() == before).then(|| {
        Arc::new(RetryPolicy {
            limit,
            codes,
            backoff,
            attempt_timeout: None,
            hedge: None,
        })
    })
}

/// The policy Linkerd's annotations state, `None` when none of them is there. `Err` names
/// each bad annotation (as `metadata.annotations.<name>`).
pub fn from_annotations(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Arc<RetryPolicy>>, Vec<FieldError>> {
    let Some(a) = annotations else {
        return Ok(None);
    };
    let (http, limit, timeout) = (
        a.get(HTTP_ANNOTATION),
        a.get(LIMIT_ANNOTATION),
        a.get(TIMEOUT_ANNOTATION),
    );
    if http.is_none() && limit.is_none() && timeout.is_none() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let field = |name: &str| format!("metadata.annotations.{name}");
    let codes = match http.map(|v| parse_linkerd_codes(v)) {
        None => StatusCodes::default(),
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            errors.push(field_error(field(HTTP_ANNOTATION), e));
            StatusCodes::default()
        }
    };
    let limit = match limit.map(|v| (v, v.trim().parse::<i64>())) {
        None => DEFAULT_LIMIT,
        Some((_, Ok(n))) if (0..=MAX_LIMIT).contains(&n) => n as u32,
        Some((v, _)) => {
            errors.push(field_error(
                field(LIMIT_ANNOTATION),
                format!("{v:?} is not a number of retries (0-{MAX_LIMIT})"),
            ));
            0
        }
    };
    let attempt_timeout = match timeout.map(|v| parse_duration(v.trim())) {
        None => None,
        Some(Ok(d)) => Some(d).filter(|d| !d.is_zero()),
        Some(Err(e)) => {
            errors.push(field_error(field(TIMEOUT_ANNOTATION), e));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(Arc::new(RetryPolicy {
        limit,
        codes,
        backoff: Default::default(),
        attempt_timeout,
        hedge: None,
    })))
}

/// Parse `meshroute.dev/hedge`: `<delay>` or `<delay>,<max extra attempts>` (1-3, default 1),
/// the delay a GEP-2257 duration of at least 1ms, or `p95`: the rule's observed 95th
/// percentile time to a response head ([`HedgeDelay::P95`]).
pub fn parse_hedge(value: &str) -> Result<Hedge, String> {
    let (delay, max) = match value.split_once(',') {
        Some((d, m)) => (d.trim(), Some(m.trim())),
        None => (value.trim(), None),
    };
    let delay = if delay == "p95" {
        HedgeDelay::P95
    } else {
        let d = parse_duration(delay)?;
        if d.is_zero() {
            return Err(format!("{value:?}: the delay must be over 0s"));
        }
        HedgeDelay::Fixed(d)
    };
    let max = match max {
        None => 1,
        Some(m) => match m.parse::<u32>() {
            Ok(n) if (1..=3).contains(&n) => n,
            _ => return Err(format!("{m:?} is not a number of extra attempts (1-3)")),
        },
    };
    Ok(Hedge {
        delay,
        max,
        observed: Default::default(),
    })
}

/// A route's `meshroute.dev/hedge` added to the retry policy of one of its rules (a rule
/// without one gets a policy that only hedges: no retries).
pub fn with_hedge(
    policy: Option<Arc<RetryPolicy>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Arc<RetryPolicy>>, FieldError> {
    let Some(v) = annotations.and_then(|a| a.get(HEDGE_ANNOTATION)) else {
        return Ok(policy);
    };
    let hedge = parse_hedge(v)
        .map_err(|e| field_error(format!("metadata.annotations.{HEDGE_ANNOTATION}"), e))?;
    let mut p = match policy {
        Some(p) => (*p).clone(),
        None => RetryPolicy {
            limit: 0,
            codes: StatusCodes::default(),
            backoff: Default::default(),
            attempt_timeout: None,
            hedge: None,
        },
    };
    p.hedge = Some(hedge);
    Ok(Some(Arc::new(p)))
}

/// The policy of a parent Service's annotations. A Service is never refused for them: a bad
/// value is logged and the Service states no retries.
pub fn for_service(svc: &Service) -> Option<Arc<RetryPolicy>> {
    match from_annotations(svc.metadata.annotations.as_ref()) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                tracing::warn!(
                    namespace = svc.metadata.namespace.as_deref().unwrap_or("default"),
                    service = svc.metadata.name.as_deref().unwrap_or_default(),
                    error = %e,
                    "retry annotation ignored"
                );
            }
            None
        }
    }
}

/// The retry budget an XBackendTrafficPolicy states (Gateway API's defaults for what it
/// leaves out: 20% over 10 s, 10 per 1 s). Upstream's bounds: `percent` 0-100, intervals
/// 1s-1h, `count` at least 0; at least one and at most 16 targetRefs.
pub fn admit_budget(p: &BackendTrafficPolicy) -> Result<BudgetConfig, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut config = BudgetConfig::default();
    let targets = p.spec.target_refs.len();
    if !(1..=16).contains(&targets) {
        errors.push(field_error(
            "spec.targetRefs".into(),
            format!("{targets} items, 1 to 16 allowed"),
        ));
    }
    let interval = |f: &str, v: &str, errors: &mut Vec<FieldError>| match parse_duration(v) {
        Ok(d) if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) => Some(d),
        Ok(_) => {
            errors.push(field_error(
                f.into(),
                format!("{v:?} must be between 1s and 1h"),
            ));
            None
        }
        Err(e) => {
            errors.push(field_error(f.into(), e));
            None
        }
    };
    let rc = p.spec.retry_constraint.as_ref();
    if let Some(b) = rc.and_then(|r| r.budget.as_ref()) {
        match b.percent {
            None => {}
            Some(n) if (0..=100).contains(&n) => config.percent = n as u32,
            Some(n) => errors.push(field_error(
                "spec.retryConstraint.budget.percent".into(),
                format!("{n} is out of range (0-100)"),
            )),
        }
        if let Some(v) = &b.interval {
            let f = "spec.retryConstraint.budget.interval";
            if let Some(d) = interval(f, v, &mut errors) {
                config.interval = d;
            }
        }
    }
    if let Some(r) = rc.and_then(|r| r.min_retry_rate.as_ref()) {
        match r.count {
            None => {}
            Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => config.min_count = n as u32,
            Some(n) => errors.push(field_error(
                "spec.retryConstraint.minRetryRate.count".into(),
                format!("{n} is out of range (0 or more)"),
            )),
        }
        if let Some(v) = &r.interval {
            let f = "spec.retryConstraint.minRetryRate.interval";
            if let Some(d) = interval(f, v, &mut errors) {
                config.min_interval = d;
            }
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

/// Retry budgets by backend Service (`namespace/name`) from the index's
/// XBackendTrafficPolicies; a Service targeted twice keeps the first policy by
/// namespace/name. Policies target Services in their own namespace (core group only).
pub fn budgets(index: &Index) -> std::collections::BTreeMap<String, BudgetConfig> {
    let mut out = std::collections::BTreeMap::new();
    for ((ns, name), p) in &index.backend_policies {
        let config = match admit_budget(p) {
            Ok(c) => c,
            Err(errors) => {
                // Refused when loaded; only an object built in code gets here.
                tracing::warn!(namespace = %ns, policy = %name, errors = ?errors, "XBackendTrafficPolicy ignored");
                continue;
            }
        };
        for t in &p.spec.target_refs {
            if is_core(&t.group) && t.kind == "Service" {
                out.entry(format!("{ns}/{}", t.name)).or_insert(config);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn gateway_retry_defaults_to_one_retry_without_codes() {
        let mut errors = Vec::new();
        let p = admit_gateway("r", &GatewayRetry::default(), &mut errors).unwrap();
        assert_eq!((p.limit, p.codes.is_empty()), (1, true));
    }

    #[test]
    fn gateway_retry_out_of_range_values_are_refused_by_field() {
        let mut errors = Vec::new();
        let r = GatewayRetry {
            attempts: Some(-1),
            backoff: Some("5".into()),
            codes: Some(vec![503, 99, 600]),
        };
        assert!(admit_gateway("spec.rules[0]", &r, &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].retry.attempts",
                "spec.rules[0].retry.codes[1]",
                "spec.rules[0].retry.codes[2]",
                "spec.rules[0].retry.backoff"
            ]
        );
    }

    #[test]
    fn linkerd_annotations_compile() {
        let a = annotations(&[
            (HTTP_ANNOTATION, "gateway-error,429"),
            (LIMIT_ANNOTATION, "3"),
            (TIMEOUT_ANNOTATION, "250ms"),
            ("unrelated", "x"),
        ]);
        let p = from_annotations(Some(&a)).unwrap().unwrap();
        assert_eq!(p.limit, 3);
        assert_eq!(p.codes.to_string(), "429,502-504");
        assert_eq!(
            p.attempt_timeout,
            Some(std::time::Duration::from_millis(250))
        );
        assert!(from_annotations(Some(&annotations(&[("x", "y")])))
            .unwrap()
            .is_none());
        let only_limit = from_annotations(Some(&annotations(&[(LIMIT_ANNOTATION, "2")])))
            .unwrap()
            .unwrap();
        assert!(only_limit.codes.is_empty());
    }

    fn policy(yaml_spec: serde_json::Value) -> BackendTrafficPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": yaml_spec,
        }))
        .unwrap()
    }

    #[test]
    fn budget_policy_fills_in_gateway_api_defaults() {
        let p = policy(serde_json::json!({
            "targetRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "retryConstraint": {"budget": {"percent": 50}}
        }));
        let c = admit_budget(&p).unwrap();
        assert_eq!(
            c,
            BudgetConfig {
                percent: 50,
                ..BudgetConfig::default()
            }
        );
    }

    #[test]
    fn budget_policy_bounds_are_upstreams() {
        let p = policy(serde_json::json!({
            "targetRefs": [],
            "retryConstraint": {
                "budget": {"percent": 101, "interval": "500ms"},
                "minRetryRate": {"count": -1, "interval": "2h"}
            }
        }));
        let fields: Vec<String> = admit_budget(&p)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.targetRefs",
                "spec.retryConstraint.budget.percent",
                "spec.retryConstraint.budget.interval",
                "spec.retryConstraint.minRetryRate.count",
                "spec.retryConstraint.minRetryRate.interval"
            ]
        );
    }

    #[test]
    fn hedge_annotations_parse() {
        let h = parse_hedge("50ms").unwrap();
        assert_eq!(
            (h.delay, h.max),
            (HedgeDelay::Fixed(std::time::Duration::from_millis(50)), 1)
        );
        assert_eq!(parse_hedge("1s, 3").unwrap().max, 3);
        let h = parse_hedge("p95,2").unwrap();
        assert_eq!((h.delay, h.max), (HedgeDelay::P95, 2));
        for bad in [
            "", "50", "0s", "50ms,0", "50ms,4", "p99", "P95", "p95,x", "50ms,x",
        ] {
            assert!(parse_hedge(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_linkerd_annotations_name_themselves() {
        let a = annotations(&[(HTTP_ANNOTATION, "5xx,99"), (LIMIT_ANNOTATION, "-1")]);
        let e = from_annotations(Some(&a)).unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].field, "metadata.annotations.retry.linkerd.io/http");
        assert_eq!(e[1].field, "metadata.annotations.retry.linkerd.io/limit");
    }
}
