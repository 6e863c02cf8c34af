//! Typed models of every input meshroute reads, and [`Object`], the one enum the loader and the
//! Kubernetes watchers hand to the index.

pub mod linkerd;
pub mod smi;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use gateway_api::apis::standard::grpcroutes::GrpcRoute as GatewayGrpcRoute;
/// GEP-1731 `rules[].retry` of a gateway.networking.k8s.io HTTPRoute (experimental channel;
/// the same shape as upstream's `HTTPRouteRetry`).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct GatewayRetry {
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// Least wait between attempts (GEP-2257 duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Response statuses that are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<i64>>,
}

/// A gateway.networking.k8s.io HTTPRoute: the standard channel's object plus each rule's
/// GEP-1731 `retry` (experimental channel), which the standard types do not carry. The loader
/// takes `spec.rules[i].retry` out of the document before decoding the rest, so one decoder
/// serves file and Kubernetes mode. Derefs to the standard object.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayHttpRoute {
    pub route: gateway_api::apis::standard::httproutes::HttpRoute,
    /// `retry` of `spec.rules[i]` at index `i`; shorter than the rules when the last have none.
    pub retries: Vec<Option<GatewayRetry>>,
}

impl std::ops::Deref for GatewayHttpRoute {
    type Target = gateway_api::apis::standard::httproutes::HttpRoute;
    fn deref(&self) -> &Self::Target {
        &self.route
    }
}

impl GatewayHttpRoute {
    /// The retry of rule `i`, if it has one.
    pub fn retry(&self, i: usize) -> Option<&GatewayRetry> {
        self.retries.get(i).and_then(Option::as_ref)
    }
}

/// Serialized as the manifest would say it: the standard object with each `retry` put back.
impl serde::Serialize for GatewayHttpRoute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut v = serde_json::to_value(&self.route).map_err(S::Error::custom)?;
        if let Some(rules) = v.pointer_mut("/spec/rules").and_then(|r| r.as_array_mut()) {
            for (rule, retry) in rules.iter_mut().zip(&self.retries) {
                if let (Some(obj), Some(retry)) = (rule.as_object_mut(), retry) {
                    let retry = serde_json::to_value(retry).map_err(S::Error::custom)?;
                    obj.insert("retry".into(), retry);
                }
            }
        }
        v.serialize(s)
    }
}

/// A policy.linkerd.io HTTPRoute of any served version.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkerdHttpRoute {
    V1alpha1(linkerd::v1alpha1::HttpRoute),
    V1beta1(linkerd::v1beta1::HttpRoute),
    V1beta2(linkerd::v1beta2::HttpRoute),
    V1beta3(linkerd::v1beta3::HttpRoute),
}

/// A split.smi-spec.io TrafficSplit of any version.
#[derive(Clone, Debug, PartialEq)]
pub enum TrafficSplit {
    V1alpha1(smi::split_v1alpha1::TrafficSplit),
    V1alpha2(smi::split_v1alpha2::TrafficSplit),
    V1alpha3(smi::split_v1alpha3::TrafficSplit),
    V1alpha4(smi::split_v1alpha4::TrafficSplit),
}

/// A specs.smi-spec.io HTTPRouteGroup (all versions share one shape).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRouteGroup {
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: smi::group_v1alpha4::HttpRouteGroupSpec,
}

/// A gateway.networking.x-k8s.io/v1alpha1 XBackendTrafficPolicy (Gateway API experimental):
/// meshroute reads its `retryConstraint`, the retry budget of the Services it targets.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct BackendTrafficPolicy {
    pub metadata: ObjectMeta,
    pub spec: BackendTrafficPolicySpec,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    pub target_refs: Vec<PolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_constraint: Option<RetryConstraint>,
}

/// A LocalPolicyTargetReference: an object in the policy's namespace.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PolicyTargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryConstraint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_rate: Option<RequestRate>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RetryBudgetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RequestRate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Every kind of object meshroute understands.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    GatewayHttpRoute(Box<GatewayHttpRoute>),
    GatewayGrpcRoute(Box<GatewayGrpcRoute>),
    LinkerdHttpRoute(Box<LinkerdHttpRoute>),
    TrafficSplit(Box<TrafficSplit>),
    HttpRouteGroup(Box<HttpRouteGroup>),
    BackendTrafficPolicy(Box<BackendTrafficPolicy>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Endpoints(Box<Endpoints>),
}

/// Identity of an object: what the API server keys it by (versions of one kind share it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub group: &'static str,
    pub kind: &'static str,
    /// Interned ([`crate::intern`]): every copy of a key shares its names.
    pub namespace: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        if self.group.is_empty() {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        } else {
            write!(f, "{kind}.{} {}/{}", self.group, self.namespace, self.name)
        }
    }
}

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const GATEWAY_X_GROUP: &str = "gateway.networking.x-k8s.io";
pub const LINKERD_GROUP: &str = "policy.linkerd.io";
pub const SPLIT_GROUP: &str = "split.smi-spec.io";
pub const SPECS_GROUP: &str = "specs.smi-spec.io";
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";

impl LinkerdHttpRoute {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            LinkerdHttpRoute::V1alpha1(r) => &r.metadata,
            LinkerdHttpRoute::V1beta1(r) => &r.metadata,
            LinkerdHttpRoute::V1beta2(r) => &r.metadata,
            LinkerdHttpRoute::V1beta3(r) => &r.metadata,
        }
    }
    pub fn version(&self) -> &'static str {
        match self {
            LinkerdHttpRoute::V1alpha1(_) => "v1alpha1",
            LinkerdHttpRoute::V1beta1(_) => "v1beta1",
            LinkerdHttpRoute::V1beta2(_) => "v1beta2",
            LinkerdHttpRoute::V1beta3(_) => "v1beta3",
        }
    }
}

impl TrafficSplit {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            TrafficSplit::V1alpha1(t) => &t.metadata,
            TrafficSplit::V1alpha2(t) => &t.metadata,
            TrafficSplit::V1alpha3(t) => &t.metadata,
            TrafficSplit::V1alpha4(t) => &t.metadata,
        }
    }
    pub fn version(&self) -> &'static str {
        match self {
            TrafficSplit::V1alpha1(_) => "v1alpha1",
            TrafficSplit::V1alpha2(_) => "v1alpha2",
            TrafficSplit::V1alpha3(_) => "v1alpha3",
            TrafficSplit::V1alpha4(_) => "v1alpha4",
        }
    }
}

impl Object {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::GatewayHttpRoute(r) => &r.metadata,
            Object::GatewayGrpcRoute(r) => &r.metadata,
            Object::LinkerdHttpRoute(r) => r.metadata(),
            Object::TrafficSplit(t) => t.metadata(),
            Object::HttpRouteGroup(g) => &g.metadata,
            Object::BackendTrafficPolicy(p) => &p.metadata,
            Object::Service(s) => &s.metadata,
            Object::EndpointSlice(s) => &s.metadata,
            Object::Endpoints(e) => &e.metadata,
        }
    }

    pub fn group_kind(&self) -> (&'static str, &'static str) {
        match self {
            Object::GatewayHttpRoute(_) => (GATEWAY_GROUP, "HTTPRoute"),
            Object::GatewayGrpcRoute(_) => (GATEWAY_GROUP, "GRPCRoute"),
            Object::LinkerdHttpRoute(_) => (LINKERD_GROUP, "HTTPRoute"),
            Object::TrafficSplit(_) => (SPLIT_GROUP, "TrafficSplit"),
            Object::HttpRouteGroup(_) => (SPECS_GROUP, "HTTPRouteGroup"),
            Object::BackendTrafficPolicy(_) => (GATEWAY_X_GROUP, "XBackendTrafficPolicy"),
            Object::Service(_) => ("", "Service"),
            Object::EndpointSlice(_) => (DISCOVERY_GROUP, "EndpointSlice"),
            Object::Endpoints(_) => ("", "Endpoints"),
        }
    }

    /// `apiVersion` as written (`group/version` or `v1`).
    pub fn api_version(&self) -> String {
        match self {
            Object::GatewayHttpRoute(_) | Object::GatewayGrpcRoute(_) => {
                format!("{GATEWAY_GROUP}/v1")
            }
            Object::LinkerdHttpRoute(r) => format!("{LINKERD_GROUP}/{}", r.version()),
            Object::TrafficSplit(t) => format!("{SPLIT_GROUP}/{}", t.version()),
            Object::HttpRouteGroup(g) => g.api_version.clone(),
            Object::BackendTrafficPolicy(_) => format!("{GATEWAY_X_GROUP}/v1alpha1"),
            Object::Service(_) | Object::Endpoints(_) => "v1".into(),
            Object::EndpointSlice(_) => format!("{DISCOVERY_GROUP}/v1"),
        }
    }

    /// Key of the object; a missing namespace is `default`, as `kubectl apply` would do.
    pub fn key(&self) -> ObjectKey {
        let (group, kind) = self.group_kind();
        let meta = self.metadata();
        ObjectKey {
            group,
            kind,
            namespace: crate::intern::intern(meta.namespace.as_deref().unwrap_or("default")),
            name: crate::intern::intern(meta.name.as_deref().unwrap_or_default()),
        }
    }

    pub fn is_route(&self) -> bool {
        matches!(
            self,
            Object::GatewayHttpRoute(_)
                | Object::GatewayGrpcRoute(_)
                | Object::LinkerdHttpRoute(_)
                | Object::TrafficSplit(_)
        )
    }
}
