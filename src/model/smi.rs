//! SMI TrafficSplit (split.smi-spec.io v1alpha1–v1alpha4) and HTTPRouteGroup
//! (specs.smi-spec.io v1alpha1–v1alpha4).
//!
//! **Every version has one shape, the superset of them all.** v1alpha1 weights are Kubernetes
//! quantities (`1`, `"90"`, `500m`), later versions write integers; v1alpha3 and v1alpha4 add
//! `matches`, naming HTTPRouteGroups whose entries select the requests the split applies to.
//! A cluster that serves several versions without a conversion webhook hands back the stored
//! object unchanged under whatever version is asked for (a v1alpha1 split read as v1alpha4
//! still carries `"500m"`), and stores every version in the storage version's schema, pruning
//! what that schema lacks. So each version's type, and the CRD schema generated from it,
//! accepts everything any version may hold: int-or-quantity weights and `matches` everywhere.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The quantities a weight may be written as: a non-negative decimal with an optional `m`,
/// `k`, `M`, `Ki` or `Mi` suffix (what [`crate::compile::validate::quantity_weight`] reads).
pub const QUANTITY_PATTERN: &str = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|Ki|Mi)?$";

/// A TrafficSplit weight: an integer or a quantity string, in every version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum QuantityWeight {
    Int(i64),
    Str(String),
}

impl JsonSchema for QuantityWeight {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuantityWeight".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // `pattern` applies to strings only and `minimum`/`maximum` to integers only, as
        // controller-gen does for resource.Quantity.
        schemars::json_schema!({
            "description": "Integer or quantity (1, \"90\", 500m); weights are compared within one split.",
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "minimum": 0,
            "maximum": 1000000
        })
    }
}

/// One backend of a split.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
pub struct Backend {
    pub service: String,
    pub weight: QuantityWeight,
}

/// A reference from a TrafficSplit to an HTTPRouteGroup (v1alpha3+).
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct MatchRef {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "apiGroup")]
    pub api_group: Option<String>,
}

macro_rules! traffic_split {
    ($module:ident, $version:literal) => {
        pub mod $module {
            use super::*;
            /// split.smi-spec.io TrafficSplit (every version has the same, superset, shape).
            #[derive(
                CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq,
            )]
            #[kube(group = "split.smi-spec.io", version = $version, kind = "TrafficSplit")]
            #[kube(plural = "trafficsplits", namespaced, derive = "PartialEq")]
            pub struct TrafficSplitSpec {
                pub service: String,
                pub backends: Vec<Backend>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub matches: Option<Vec<MatchRef>>,
            }
        }
    };
}

traffic_split!(split_v1alpha1, "v1alpha1");
traffic_split!(split_v1alpha2, "v1alpha2");
traffic_split!(split_v1alpha3, "v1alpha3");
traffic_split!(split_v1alpha4, "v1alpha4");

/// One HTTPRouteGroup match: a path regex, methods (`*` = any) and header regexes.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct HttpMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "pathRegex")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

macro_rules! route_group {
    ($module:ident, $version:literal) => {
        pub mod $module {
            use super::*;
            #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
            #[kube(group = "specs.smi-spec.io", version = $version, kind = "HTTPRouteGroup", root = "HttpRouteGroup", plural = "httproutegroups", namespaced, derive = "PartialEq")]
            pub struct HttpRouteGroupSpec {
                #[serde(default)]
                pub matches: Vec<HttpMatch>,
            }
        }
    };
}

route_group!(group_v1alpha1, "v1alpha1");
route_group!(group_v1alpha2, "v1alpha2");
route_group!(group_v1alpha3, "v1alpha3");
route_group!(group_v1alpha4, "v1alpha4");
