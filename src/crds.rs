//! The CRDs `meshroute crds` prints, generated from our types.
//!
//! - **Ours** (policy.linkerd.io HTTPRoute, split.smi-spec.io TrafficSplit, specs.smi-spec.io
//!   HTTPRouteGroup): drop-in compatible with Linkerd's and linkerd-smi's (same groups and
//!   plurals, a superset of their served versions, the same storage versions), and every served
//!   version has the same schema, the superset of all of them: with `conversion: None` the API
//!   server prunes a written object to the storage version's schema and a read one to the
//!   asked-for version's, so any narrower version would lose what users wrote.
//! - **Gateway API HTTPRoute** (`--gateway-api`): generated from the `gateway-api` crate's types,
//!   for clusters that cannot fetch upstream's install file. It carries what a real API server
//!   demands of a `*.k8s.io` group (the `api-approved.kubernetes.io` annotation, set to upstream's
//!   value) and upstream's validation of the fields meshroute acts on: GEP-2257 durations,
//!   `backendRequest` ≤ `request` (CEL), weights 0..=1000000, ports, and list bounds.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::crd::merge_crds;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use crate::model::linkerd::DURATION_PATTERN;
use crate::model::{linkerd, smi};

/// The annotation a real API server requires on CRDs of `*.k8s.io` groups; upstream's value.
pub const API_APPROVED: (&str, &str) = (
    "api-approved.kubernetes.io",
    "https://github.com/kubernetes-sigs/gateway-api/pull/3328",
);

/// Upstream's rule: a backend attempt may not outlast the whole request (unless that is `0s`).
const TIMEOUTS_RULE: &str = "!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))";
const TIMEOUTS_MESSAGE: &str = "backendRequest timeout cannot be longer than request timeout";

/// The CRDs for the kinds meshroute defines.
pub fn ours() -> Vec<CustomResourceDefinition> {
    let mut out = Vec::new();
    let merged = |crds, storage| match merge_crds(crds, storage) {
        Ok(c) => Some(c),
        Err(e) => {
            // Only reachable by a programming error (the types disagree on group or kind);
            // the drift test catches it.
            tracing::error!(error = ?e, "cannot merge CRD versions");
            None
        }
    };
    if let Some(mut c) = merged(
        vec![
            linkerd::v1alpha1::HttpRoute::crd(),
            linkerd::v1beta1::HttpRoute::crd(),
            linkerd::v1beta2::HttpRoute::crd(),
            linkerd::v1beta3::HttpRoute::crd(),
        ],
        "v1beta3",
    ) {
        harden_route(&mut c, httproute_rules);
        out.push(c);
    }
    out.extend(merged(
        vec![
            smi::split_v1alpha1::TrafficSplit::crd(),
            smi::split_v1alpha2::TrafficSplit::crd(),
            smi::split_v1alpha3::TrafficSplit::crd(),
            smi::split_v1alpha4::TrafficSplit::crd(),
        ],
        "v1alpha2",
    ));
    out.extend(merged(
        vec![
            smi::group_v1alpha1::HttpRouteGroup::crd(),
            smi::group_v1alpha2::HttpRouteGroup::crd(),
            smi::group_v1alpha3::HttpRouteGroup::crd(),
            smi::group_v1alpha4::HttpRouteGroup::crd(),
        ],
        "v1alpha4",
    ));
    out
}

/// The gateway.networking.k8s.io HTTPRoute CRD, ready for a real API server, with upstream's
/// validation of the fields meshroute acts on (bounds, durations, backendRequest ≤ request).
pub fn gateway_httproute() -> CustomResourceDefinition {
    let mut crd = gateway_api::apis::standard::httproutes::HttpRoute::crd();
    approve(&mut crd);
    harden_route(&mut crd, |v, rules| {
        httproute_rules(v, rules);
        retry_field(v, rules);
    });
    crd
}

/// GEP-1731 `rules[].retry` (experimental channel): meshroute acts on it, so the CRD it prints
/// carries it — without it the API server would prune it from what users apply. Upstream's
/// bounds (codes 400-599, a GEP-2257 backoff) and meshroute's own on `attempts` (0-10, what
/// `check` accepts).
fn retry_field(v: &mut Value, rules: &str) {
    let pointer = format!("{rules}/items/properties");
    let Some(props) = v.pointer_mut(&pointer).and_then(Value::as_object_mut) else {
        return;
    };
    let max = crate::compile::retry::MAX_LIMIT;
    props.insert(
        "retry".into(),
        json!({
            "description": "Retry defines the configuration for when to retry an HTTP request (GEP-1731).",
            "type": "object",
            "properties": {
                "attempts": {
                    "description": "Attempts is the largest number of retries of one request.",
                    "type": "integer",
                    "minimum": 0,
                    "maximum": max
                },
                "backoff": {
                    "description": "Backoff is the least wait between attempts.",
                    "type": "string",
                    "pattern": DURATION_PATTERN
                },
                "codes": {
                    "description": "Codes are the response status codes that are retried.",
                    "type": "array",
                    "items": {"type": "integer", "minimum": 400, "maximum": 599}
                }
            }
        }),
    );
}

/// The gateway.networking.k8s.io GRPCRoute CRD, ready for a real API server, with upstream's
/// bounds on the fields meshroute acts on (lists, weights, ports, method matches).
pub fn gateway_grpcroute() -> CustomResourceDefinition {
    let mut crd = crate::model::GatewayGrpcRoute::crd();
    approve(&mut crd);
    harden_route(&mut crd, |v, rules| {
        let matches = format!("{rules}/items/properties/matches");
        set(v, &matches, "maxItems", json!(8));
        let method = format!("{matches}/items/properties/method");
        let rule = json!([{
            "message": "One or both of 'service' or 'method' must be specified",
            "rule": "has(self.type) ? has(self.service) || has(self.method) : true"
        }]);
        set(v, &method, "x-kubernetes-validations", rule);
    });
    crd
}

/// The annotation a CRD in a `*.k8s.io` group needs to be accepted by an API server.
/// The gateway.networking.x-k8s.io XBackendTrafficPolicy CRD (Gateway API experimental,
/// v1alpha1), for clusters without upstream's experimental install: the fields meshroute reads
/// (`targetRefs`, `retryConstraint`) with upstream's bounds, so the API server refuses what
/// `meshroute check` refuses. `sessionPersistence` is left out: meshroute does not act on it,
/// and a policy that states it is refused by both rather than silently ignored.
pub fn gateway_backendtrafficpolicy() -> CustomResourceDefinition {
    let duration = json!({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32});
    let target = json!({
        "type": "object",
        "required": ["group", "kind", "name"],
        "properties": {
            "group": {"type": "string", "maxLength": 253},
            "kind": {"type": "string", "minLength": 1, "maxLength": 63},
            "name": {"type": "string", "minLength": 1, "maxLength": 253}
        }
    });
    let schema = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["targetRefs"],
                "properties": {
                    "targetRefs": {
                        "type": "array", "minItems": 1, "maxItems": 16, "items": target,
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["group", "kind", "name"]
                    },
                    "retryConstraint": {
                        "type": "object",
                        "properties": {
                            "budget": {
                                "type": "object",
                                "properties": {
                                    "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                                    "interval": duration.clone()
                                }
                            },
                            "minRetryRate": {
                                "type": "object",
                                "properties": {
                                    "count": {"type": "integer", "minimum": 0},
                                    "interval": duration
                                }
                            }
                        }
                    }
                }
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
    });
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "xbackendtrafficpolicies.gateway.networking.x-k8s.io"},
        "spec": {
            "group": crate::model::GATEWAY_X_GROUP,
            "names": {
                "kind": "XBackendTrafficPolicy",
                "listKind": "XBackendTrafficPolicyList",
                "plural": "xbackendtrafficpolicies",
                "singular": "xbackendtrafficpolicy",
                "shortNames": ["xbtrafficpolicy"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": schema}
            }]
        }
    });
    // Not a `*.k8s.io` group (`x-k8s.io`): no approval annotation.
    serde_json::from_value(crd).unwrap_or_else(|e| unreachable!("a fixed, valid CRD: {e}"))
}

fn approve(crd: &mut CustomResourceDefinition) {
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(API_APPROVED.0.into(), API_APPROVED.1.into());
}

/// HTTPRoute's own rules (both groups): duration patterns and backendRequest ≤ request.
fn httproute_rules(v: &mut Value, rules: &str) {
    let timeouts = format!("{rules}/items/properties/timeouts");
    for field in ["request", "backendRequest"] {
        let path = format!("{timeouts}/properties/{field}");
        set(v, &path, "pattern", json!(DURATION_PATTERN));
    }
    let rule = json!([{"message": TIMEOUTS_MESSAGE, "rule": TIMEOUTS_RULE}]);
    set(v, &timeouts, "x-kubernetes-validations", rule);
}

/// Add, to every version's schema of a route CRD, upstream's bounds shared by route kinds
/// (parentRefs, rules, backendRefs, weights, ports) and what `kind_rules` adds for its kind
/// (given the JSON pointer of `spec.rules`).
fn harden_route(crd: &mut CustomResourceDefinition, kind_rules: impl Fn(&mut Value, &str)) {
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        // The k8s-openapi schema type has typed fields for everything we set; going through
        // JSON keeps this to one path per field.
        let Ok(mut v) = serde_json::to_value(&*schema) else {
            continue;
        };
        let spec = "/properties/spec/properties";
        set(&mut v, &format!("{spec}/parentRefs"), "maxItems", json!(32));
        let rules = format!("{spec}/rules");
        set(&mut v, &rules, "maxItems", json!(16));
        let backends = format!("{rules}/items/properties/backendRefs");
        set(&mut v, &backends, "maxItems", json!(16));
        let weight = format!("{backends}/items/properties/weight");
        set(&mut v, &weight, "minimum", json!(0));
        set(&mut v, &weight, "maximum", json!(1_000_000));
        let port = format!("{backends}/items/properties/port");
        set(&mut v, &port, "minimum", json!(1));
        set(&mut v, &port, "maximum", json!(65535));
        kind_rules(&mut v, &rules);
        if let Ok(hardened) = serde_json::from_value(v) {
            *schema = hardened;
        }
    }
}

/// Set `key` on the schema at `pointer` if it exists (a path that does not is left alone, so a
/// change in the generated shape shows up as a missing validation in the tests, not as a bogus
/// property).
fn set(schema: &mut Value, pointer: &str, key: &str, value: Value) {
    if let Some(o) = schema.pointer_mut(pointer).and_then(Value::as_object_mut) {
        o.insert(key.into(), value);
    }
}

/// CRDs as one multi-document YAML stream.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> String {
    crds.iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .map(|d| serde_saphyr::to_string(&d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_props(crd: &CustomResourceDefinition) -> Vec<Value> {
        crd.spec
            .versions
            .iter()
            .map(|v| {
                let schema = serde_json::to_value(&v.schema).unwrap();
                schema
                    .pointer("/openAPIV3Schema/properties/spec/properties/rules/items/properties")
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect()
    }

    #[test]
    fn gateway_httproute_crd_carries_retry_with_its_bounds_in_every_version() {
        let crd = gateway_httproute();
        let props = rule_props(&crd);
        assert!(!props.is_empty());
        for p in props {
            let retry = &p["retry"]["properties"];
            // The typed schema holds bounds as floats.
            assert_eq!(retry["codes"]["items"]["minimum"], 400.0, "{p}");
            assert_eq!(retry["codes"]["items"]["maximum"], 599.0);
            assert_eq!(retry["attempts"]["minimum"], 0.0);
            assert_eq!(retry["backoff"]["pattern"], DURATION_PATTERN);
            // Still the standard channel otherwise.
            assert!(p.get("sessionPersistence").is_none());
        }
    }

    #[test]
    fn linkerd_httproute_crd_has_no_retry_field() {
        // Linkerd reads retries from annotations only; its CRD stays as Linkerd ships it.
        let ours = ours();
        for p in rule_props(&ours[0]) {
            assert!(p.get("retry").is_none(), "{p}");
        }
    }
}
