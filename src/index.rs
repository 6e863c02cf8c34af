//! The index: the current set of objects from a source, keyed the way the API server keys them.
//! Routes are stored admitted (see `compile::validate`); everything else is stored as read.
//! Sorted maps make every walk deterministic, so compiling is independent of arrival order.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::compile::validate::{admit, AdmittedRoute, FieldError};
use crate::model::{BackendTrafficPolicy, HttpRouteGroup, Object, ObjectKey};

/// `(namespace, name)`.
pub type NsName = (String, String);

#[derive(Debug, Default, Clone)]
pub struct Index {
    pub services: BTreeMap<NsName, Service>,
    /// EndpointSlices by their own name (several per Service).
    pub slices: BTreeMap<NsName, EndpointSlice>,
    pub endpoints: BTreeMap<NsName, Endpoints>,
    pub groups: BTreeMap<NsName, HttpRouteGroup>,
    /// XBackendTrafficPolicies (retry budgets of the Services they target).
    pub backend_policies: BTreeMap<NsName, BackendTrafficPolicy>,
    pub routes: BTreeMap<ObjectKey, AdmittedRoute>,
    /// Linked clusters by name: their exported Services and EndpointSlices (nothing else is
    /// read from them). A cluster is present once linked, even before it has listed.
    pub remote: BTreeMap<String, Index>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace an object. A route that fails admission is refused (and, like an edit
    /// the API server refuses, leaves any earlier version in place).
    pub fn apply(&mut self, obj: Object) -> Result<(), Vec<FieldError>> {
        let key = obj.key();
        let nn = (key.namespace.clone(), key.name.clone());
        if let Some(route) = admit(&obj)? {
            self.routes.insert(key, route);
            return Ok(());
        }
        match obj {
            Object::Service(s) => {
                self.services.insert(nn, *s);
            }
            Object::EndpointSlice(s) => {
                self.slices.insert(nn, *s);
            }
            Object::Endpoints(e) => {
                self.endpoints.insert(nn, *e);
            }
            Object::HttpRouteGroup(g) => {
                self.groups.insert(nn, *g);
            }
            Object::BackendTrafficPolicy(p) => {
                self.backend_policies.insert(nn, *p);
            }
            Object::GatewayHttpRoute(_)
            | Object::GatewayGrpcRoute(_)
            | Object::LinkerdHttpRoute(_)
            | Object::TrafficSplit(_) => {}
        }
        Ok(())
    }

    /// Remove an object by key (no-op when absent).
    pub fn delete(&mut self, key: &ObjectKey) {
        let nn = (key.namespace.clone(), key.name.clone());
        match (key.group, key.kind) {
            ("", "Service") => {
                self.services.remove(&nn);
            }
            (_, "EndpointSlice") => {
                self.slices.remove(&nn);
            }
            ("", "Endpoints") => {
                self.endpoints.remove(&nn);
            }
            (_, "HTTPRouteGroup") => {
                self.groups.remove(&nn);
            }
            (_, "XBackendTrafficPolicy") => {
                self.backend_policies.remove(&nn);
            }
            _ => {
                self.routes.remove(key);
            }
        }
    }

    /// The index of linked cluster `name`, created empty on first use.
    pub fn linked(&mut self, name: &str) -> &mut Index {
        self.remote.entry(name.to_string()).or_default()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// EndpointSlices of a Service (`kubernetes.io/service-name` label), in name order.
    pub fn slices_for<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, s)| s)
            .filter(move |s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == service)
            })
    }
}
