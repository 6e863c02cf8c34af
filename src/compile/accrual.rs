//! Linkerd's failure-accrual annotations on a Service, as an [`AccrualConfig`]:
//!
//! - `balancer.linkerd.io/failure-accrual: consecutive` turns them on (any other value is
//!   logged and ignored: meshroute's defaults stay), and with them a 5xx response counts as a
//!   failure, as Linkerd classifies HTTP responses;
//! - `…-consecutive-max-failures` (default 7), `…-consecutive-min-penalty` (1s),
//!   `…-consecutive-max-penalty` (1m), `…-consecutive-jitter-ratio` (0.5, 0 to 100),
//!   Linkerd's defaults.
//!
//! A Service is never refused for its annotations: a bad value is logged and its default used.

use k8s_openapi::api::core::v1::Service;

use super::validate::parse_duration;
use crate::table::accrual::AccrualConfig;

pub const ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
const PREFIX: &str = "balancer.linkerd.io/failure-accrual-consecutive-";

/// Linkerd's defaults once `failure-accrual: consecutive` is set.
const LINKERD: AccrualConfig = AccrualConfig {
    max_failures: 7,
    min_backoff_ms: 1_000,
    max_backoff_ms: 60_000,
    jitter_permille: 500,
    count_5xx: true,
};

/// The accrual of `svc`'s endpoints: its annotations', or meshroute's defaults.
pub fn for_service(svc: &Service) -> AccrualConfig {
    let Some(a) = svc.metadata.annotations.as_ref() else {
        return AccrualConfig::DEFAULT;
    };
    let (ns, name) = (
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default(),
    );
    let warn = |key: &str, why: String| {
        tracing::warn!(namespace = ns, service = name, annotation = key, error = %why, "failure-accrual annotation ignored");
    };
    match a.get(ACCRUAL).map(|v| v.trim()) {
        None => return AccrualConfig::DEFAULT,
        Some("consecutive") => {}
        Some(other) => {
            warn(
                ACCRUAL,
                format!("{other:?} is not supported (only \"consecutive\")"),
            );
            return AccrualConfig::DEFAULT;
        }
    }
    let mut cfg = LINKERD;
    let get = |suffix: &str| {
        let key = format!("{PREFIX}{suffix}");
        a.get(&key).map(|v| (key, v.trim().to_string()))
    };
    if let Some((key, v)) = get("max-failures") {
        match v.parse::<u32>() {
            Ok(n) if n >= 1 => cfg.max_failures = n,
            _ => warn(&key, format!("{v:?} is not a count of 1 or more")),
        }
    }
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if let Some((key, v)) = get("min-penalty") {
        match parse_duration(&v) {
            Ok(d) if !d.is_zero() => cfg.min_backoff_ms = ms(d),
            Ok(_) => warn(&key, "0s is not a penalty".into()),
            Err(e) => warn(&key, e),
        }
    }
    if let Some((key, v)) = get("max-penalty") {
        match parse_duration(&v) {
            Ok(d) if !d.is_zero() => cfg.max_backoff_ms = ms(d),
            Ok(_) => warn(&key, "0s is not a penalty".into()),
            Err(e) => warn(&key, e),
        }
    }
    if cfg.max_backoff_ms < cfg.min_backoff_ms {
        warn(
            &format!("{PREFIX}max-penalty"),
            "is shorter than min-penalty; min-penalty used for both".into(),
        );
        cfg.max_backoff_ms = cfg.min_backoff_ms;
    }
    if let Some((key, v)) = get("jitter-ratio") {
        match v.parse::<f64>() {
            Ok(r) if (0.0..=100.0).contains(&r) => cfg.jitter_permille = (r * 1000.0) as u32,
            _ => warn(&key, format!("{v:?} is not a ratio (0 to 100)")),
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(pairs: &[(&str, &str)]) -> Service {
        let mut s = Service::default();
        s.metadata.annotations = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    }

    #[test]
    fn without_the_annotation_meshroutes_defaults_stay() {
        assert!(for_service(&Service::default()).is_default());
        assert!(for_service(&svc(&[(ACCRUAL, "none")])).is_default());
    }

    #[test]
    fn consecutive_takes_linkerds_defaults_and_overrides() {
        assert_eq!(for_service(&svc(&[(ACCRUAL, "consecutive")])), LINKERD);
        let c = for_service(&svc(&[
            (ACCRUAL, "consecutive"),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-max-failures",
                "3",
            ),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-min-penalty",
                "200ms",
            ),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-max-penalty",
                "5s",
            ),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio",
                "0.1",
            ),
        ]));
        assert_eq!(
            c,
            AccrualConfig {
                max_failures: 3,
                min_backoff_ms: 200,
                max_backoff_ms: 5_000,
                jitter_permille: 100,
                count_5xx: true,
            }
        );
    }

    #[test]
    fn bad_values_keep_their_defaults() {
        let c = for_service(&svc(&[
            (ACCRUAL, "consecutive"),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-max-failures",
                "0",
            ),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-min-penalty",
                "soon",
            ),
            (
                "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio",
                "-1",
            ),
        ]));
        assert_eq!(c, LINKERD);
    }
}
