//! policy.linkerd.io HTTPRoute, every served version. Linkerd's v1alpha1 and v1beta1 have
//! backendRefs without weights; v1beta2 adds weight/group/kind and Service parents with a port;
//! v1beta3 adds `rules[].timeouts`. **Every version here has the v1beta3 shape** (the superset):
//! with `conversion: None` the API server stores any version in the storage version's schema and
//! serves the stored object under whatever version is asked for, pruning what the asked-for
//! schema lacks, so a v1beta3 `timeouts` or a weight read as v1beta1 must survive. Matches,
//! filters and parentRefs share the Gateway API shapes, so every version converts losslessly
//! into the gateway.networking.k8s.io type for compilation.
//!
//! The schemas carry the validation Linkerd's CRDs (and the Gateway API's CEL rules) apply, so a
//! cluster running our CRDs refuses the same bad edits that `meshroute check` reports.

use gateway_api::apis::standard::httproutes::{
    HttpRouteParentRefs, HttpRouteRulesFilters, HttpRouteRulesMatches, HttpRouteStatus,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GEP-2257 duration, e.g. `300ms`, `1h30m`.
pub const DURATION_PATTERN: &str = "^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A backendRef, Gateway API shape (weight, group and kind are Linkerd v1beta2+).
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct BackendRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<HttpRouteRulesFilters>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub request: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "backendRequest"
    )]
    #[schemars(regex(pattern = "^([0-9]{1,5}(h|m|s|ms)){1,4}$"))]
    pub backend_request: Option<String>,
}

/// A rule of any version (`timeouts` are Linkerd v1beta3+).
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<HttpRouteRulesMatches>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<HttpRouteRulesFilters>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "backendRefs"
    )]
    pub backend_refs: Option<Vec<BackendRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
}

macro_rules! linkerd_httproute {
    ($module:ident, $version:literal, $rule:ty) => {
        pub mod $module {
            use super::*;

            /// policy.linkerd.io HTTPRoute
            #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
            #[kube(
                group = "policy.linkerd.io",
                version = $version,
                kind = "HTTPRoute",
                root = "HttpRoute",
                plural = "httproutes",
                namespaced,
                status = "HttpRouteStatus",
                derive = "Default",
                derive = "PartialEq"
            )]
            pub struct HttpRouteSpec {
                #[serde(default, skip_serializing_if = "Option::is_none", rename = "parentRefs")]
                pub parent_refs: Option<Vec<HttpRouteParentRefs>>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub hostnames: Option<Vec<String>>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub rules: Option<Vec<$rule>>,
            }
        }
    };
}

linkerd_httproute!(v1alpha1, "v1alpha1", Rule);
linkerd_httproute!(v1beta1, "v1beta1", Rule);
linkerd_httproute!(v1beta2, "v1beta2", Rule);
linkerd_httproute!(v1beta3, "v1beta3", Rule);
