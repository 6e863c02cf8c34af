//! SMI TrafficSplit (split.smi-spec.io v1alpha1–v1alpha4) and HTTPRouteGroup
//! (specs.smi-spec.io v1alpha1–v1alpha4).
//!
//! v1alpha1 weights are Kubernetes quantities (`1`, `"90"`, `500m`); later versions use
//! integers. v1alpha3 and v1alpha4 add `matches`, naming HTTPRouteGroups whose entries select
//! the requests the split applies to.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A v1alpha1 weight: an integer or a quantity string.
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
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
pub struct QuantityBackend {
    pub service: String,
    pub weight: QuantityWeight,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct IntBackend {
    pub service: String,
    #[schemars(range(min = 0))]
    pub weight: i64,
}

/// A reference from a TrafficSplit to an HTTPRouteGroup (v1alpha3+).
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
pub struct MatchRef {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "apiGroup")]
    pub api_group: Option<String>,
}

pub mod split_v1alpha1 {
    use super::*;
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "split.smi-spec.io",
        version = "v1alpha1",
        kind = "TrafficSplit",
        plural = "trafficsplits",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct TrafficSplitSpec {
        pub service: String,
        pub backends: Vec<QuantityBackend>,
    }
}

pub mod split_v1alpha2 {
    use super::*;
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "split.smi-spec.io",
        version = "v1alpha2",
        kind = "TrafficSplit",
        plural = "trafficsplits",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct TrafficSplitSpec {
        pub service: String,
        pub backends: Vec<IntBackend>,
    }
}

pub mod split_v1alpha3 {
    use super::*;
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "split.smi-spec.io",
        version = "v1alpha3",
        kind = "TrafficSplit",
        plural = "trafficsplits",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct TrafficSplitSpec {
        pub service: String,
        pub backends: Vec<IntBackend>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub matches: Option<Vec<MatchRef>>,
    }
}

pub mod split_v1alpha4 {
    use super::*;
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
    #[kube(
        group = "split.smi-spec.io",
        version = "v1alpha4",
        kind = "TrafficSplit",
        plural = "trafficsplits",
        namespaced,
        derive = "PartialEq"
    )]
    pub struct TrafficSplitSpec {
        pub service: String,
        pub backends: Vec<IntBackend>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub matches: Option<Vec<MatchRef>>,
    }
}

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
