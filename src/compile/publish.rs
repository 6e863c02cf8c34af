//! Transparent serving, the pure half: which parent Services lead to meshroute, and the
//! EndpointSlices that make them do so.
//!
//! A selector-less Service that is the parent of an accepted route has no endpoints of its
//! own; meshroute supplies them: one EndpointSlice per address family, labelled
//! `kubernetes.io/service-name: <parent>` and `endpointslice.kubernetes.io/managed-by:
//! meshroute.dev`, whose endpoints are the ready meshroute replicas and whose ports (named like
//! the Service's) are listener ports allocated per parent port. kube-proxy then sends
//! `http://smiley/` to a replica's listener for `smiley:80`, and the connection's local port
//! names the parent port ([`local_ports`]).
//!
//! - **The allocation lives in the slices.** A (Service, port name) keeps the port its slice
//!   names; a new one gets the lowest port of the range that no slice of ours names, so a port
//!   is never reused while any slice still names it, and a restart or a new leader computes
//!   the same allocation from what the API server holds.
//! - **Never someone else's endpoints**: a Service with a selector, with EndpointSlices or
//!   Endpoints managed by anyone else, a multicluster mirror, or one that opts out
//!   (`meshroute.dev/publish-endpoints: "false"`) is left alone ([`refusal`] says why).
//! - **No loops**: when meshroute resolves endpoints itself, it ignores its own slices
//!   ([`is_ours`]), so a backend or passthrough parent never leads back to meshroute.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::index::Index;
use crate::table::RouteTable;

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "meshroute.dev";
/// Annotation (or label) with which a Service opts out: `"false"`.
pub const OPT_OUT: &str = "meshroute.dev/publish-endpoints";
/// Linkerd gateway-mode mirrors.
pub const MIRRORED_LABEL: &str = super::MIRRORED_LABEL;
/// Linkerd pod-to-pod mirrors.
pub const REMOTE_DISCOVERY_LABEL: &str = "multicluster.linkerd.io/remote-discovery";
/// Default range of per-parent-port listener ports.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 20000..=29999;

/// Whether meshroute manages this slice.
pub fn is_ours(slice: &EndpointSlice) -> bool {
    label(&slice.metadata, MANAGED_BY_LABEL) == Some(MANAGED_BY)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// One port of a published parent: the slice port carries the Service port's name and
/// appProtocol, and a listener port of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentPortSpec {
    /// The Service port's name (`""` for a single unnamed port).
    pub name: String,
    /// The Service port number.
    pub port: u16,
    pub app_protocol: Option<String>,
}

/// A parent of an accepted route, and whether meshroute publishes its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// The ports to publish (TCP ports of the Service), or why meshroute leaves it alone.
    pub ports: Result<Vec<ParentPortSpec>, String>,
}

/// Why meshroute does not publish endpoints for `svc`; `None` when it does.
pub fn refusal(index: &Index, svc: &Service) -> Option<String> {
    let meta = &svc.metadata;
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    let id = format!("Service {ns}/{name}");
    if annotation(meta, OPT_OUT) == Some("false") || label(meta, OPT_OUT) == Some("false") {
        return Some(format!("{id} opts out ({OPT_OUT}: \"false\")"));
    }
    if label(meta, MIRRORED_LABEL) == Some("true") || label(meta, REMOTE_DISCOVERY_LABEL).is_some()
    {
        return Some(format!(
            "{id} is a multicluster mirror; its endpoints belong to the mirror controller"
        ));
    }
    if annotation(meta, REMOTE_DISCOVERY_LABEL).is_some()
        || annotation(meta, super::LOCAL_DISCOVERY_ANNOTATION).is_some()
    {
        return Some(format!(
            "{id} is a federated Service; its endpoints are its members'"
        ));
    }
    if svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
    {
        return Some(format!(
            "{id} has a selector, so its endpoints are its pods: clients that call it reach them directly; only requests sent to meshroute's own Service follow the route"
        ));
    }
    let others: BTreeSet<String> = index
        .slices_for(ns, name)
        .filter(|s| !is_ours(s))
        .map(|s| {
            label(&s.metadata, MANAGED_BY_LABEL)
                .unwrap_or("someone else")
                .to_string()
        })
        .collect();
    if !others.is_empty() {
        return Some(format!(
            "{id} has EndpointSlices managed by {}",
            others.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if index
        .endpoints
        .contains_key(&(ns.to_string(), name.to_string()))
    {
        return Some(format!("{id} has Endpoints written by someone else"));
    }
    None
}

/// The TCP ports of `svc` as published.
fn port_specs(svc: &Service) -> Vec<ParentPortSpec> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ParentPortSpec {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok()?,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

/// Every Service that is the parent of an accepted route in `table` (a parent port that is not
/// a passthrough), with what to publish for it, in (namespace, name) order.
pub fn candidates(index: &Index, table: &RouteTable) -> Vec<Candidate> {
    let mut parents: Vec<(&str, &str)> = table
        .services()
        .filter(|s| s.ports.iter().any(|p| !p.is_passthrough()))
        .map(|s| (&*s.namespace, &*s.name))
        .collect();
    parents.sort_unstable();
    parents
        .into_iter()
        .filter_map(|(ns, name)| {
            let svc = index.service(ns, name)?;
            let ports = match refusal(index, svc) {
                Some(why) => Err(why),
                None => Ok(port_specs(svc)),
            };
            Some(Candidate {
                namespace: ns.to_string(),
                name: name.to_string(),
                uid: svc.metadata.uid.clone(),
                ports,
            })
        })
        .collect()
}

/// A listener port named by one of our slices, and the parent port it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPort {
    pub local: u16,
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

/// Every listener port our slices name, mapped to its parent port through the slice port's
/// name (as kube-proxy maps a Service port to slice ports). Ports whose Service or port name
/// is gone are left out; if two slices name one port, the first in (namespace, name) order wins.
pub fn local_ports(index: &Index) -> Vec<LocalPort> {
    let mut out: BTreeMap<u16, LocalPort> = BTreeMap::new();
    for ((ns, _), slice) in &index.slices {
        if !is_ours(slice) {
            continue;
        }
        let Some(svc_name) = label(&slice.metadata, SERVICE_NAME_LABEL) else {
            continue;
        };
        let Some(svc) = index.service(ns, svc_name) else {
            continue;
        };
        let specs = port_specs(svc);
        for p in slice.ports.iter().flatten() {
            let Some(local) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let pname = p.name.as_deref().unwrap_or_default();
            let Some(spec) = specs.iter().find(|s| s.name == pname) else {
                continue;
            };
            out.entry(local).or_insert_with(|| LocalPort {
                local,
                namespace: ns.clone(),
                name: svc_name.to_string(),
                port: spec.port,
            });
        }
    }
    out.into_values().collect()
}

/// What the status leader should write.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SlicePlan {
    /// Slices to create (no `resourceVersion`) or replace (the existing one's).
    pub apply: Vec<EndpointSlice>,
    /// `(namespace, name)` of our slices that no longer belong to a published parent.
    pub delete: Vec<(String, String)>,
    /// Parents left as they are because the port range has no free port for them.
    pub range_full: Vec<(String, String)>,
}

/// Name of our slice for a Service and address family.
pub fn slice_name(service: &str, v6: bool) -> String {
    if v6 {
        format!("{service}-meshroute-v6")
    } else {
        format!("{service}-meshroute")
    }
}

/// Compare two slices by what clients observe (labels we set, family, ports, endpoints).
fn content(s: &EndpointSlice) -> impl PartialEq {
    type Port = (Option<String>, Option<i32>, Option<String>, Option<String>);
    let mut ports: Vec<Port> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone(),
                p.port,
                p.protocol.clone(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    ports.sort();
    let mut eps: Vec<(Vec<String>, Option<bool>)> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses.clone(),
                e.conditions.as_ref().and_then(|c| c.ready),
            )
        })
        .collect();
    eps.sort();
    (
        label(&s.metadata, SERVICE_NAME_LABEL).map(str::to_string),
        label(&s.metadata, MANAGED_BY_LABEL).map(str::to_string),
        s.address_type.clone(),
        ports,
        eps,
    )
}

/// Plan our slices: `candidates` (from [`candidates`]), the ready replicas' `addresses`, our
/// slices as the API server holds them (`existing`), and the listener port `range`.
pub fn plan(
    candidates: &[Candidate],
    addresses: &[IpAddr],
    existing: &[EndpointSlice],
    range: RangeInclusive<u16>,
) -> SlicePlan {
    let key = |s: &EndpointSlice| {
        (
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        )
    };
    let existing: BTreeMap<(String, String), &EndpointSlice> = existing
        .iter()
        .filter(|s| is_ours(s))
        .map(|s| (key(s), s))
        .collect();
    // Allocation as the slices hold it: (namespace, service, port name) → listener port.
    let mut allocated: BTreeMap<(String, String, String), u16> = BTreeMap::new();
    let mut used: BTreeSet<u16> = BTreeSet::new();
    for s in existing.values() {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let svc = label(&s.metadata, SERVICE_NAME_LABEL)
            .unwrap_or_default()
            .to_string();
        for p in s.ports.iter().flatten() {
            let Some(port) = p.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            used.insert(port);
            allocated
                .entry((ns.clone(), svc.clone(), p.name.clone().unwrap_or_default()))
                .or_insert(port);
        }
    }
    let v4: Vec<String> = addresses
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| a.to_string())
        .collect();
    let v6: Vec<String> = addresses
        .iter()
        .filter(|a| a.is_ipv6())
        .map(|a| a.to_string())
        .collect();

    let mut out = SlicePlan::default();
    let mut keep: BTreeSet<(String, String)> = BTreeSet::new();
    for c in candidates {
        let Ok(specs) = &c.ports else { continue };
        let mut ports = Vec::new();
        let mut fresh = Vec::new();
        for spec in specs {
            let k = (c.namespace.clone(), c.name.clone(), spec.name.clone());
            let local = match allocated.get(&k) {
                Some(p) => Some(*p),
                None => {
                    let free = range.clone().find(|p| !used.contains(p));
                    if let Some(p) = free {
                        used.insert(p);
                        fresh.push(p);
                    }
                    free
                }
            };
            match local {
                Some(local) => ports.push(EndpointPort {
                    name: Some(spec.name.clone()),
                    port: Some(i32::from(local)),
                    protocol: Some("TCP".into()),
                    app_protocol: spec.app_protocol.clone(),
                }),
                None => break,
            }
        }
        if ports.len() < specs.len() {
            // Leave this parent as it is; its fresh ports go back to the pool.
            for p in fresh {
                used.remove(&p);
            }
            out.range_full.push((c.namespace.clone(), c.name.clone()));
            keep.insert((c.namespace.clone(), slice_name(&c.name, false)));
            keep.insert((c.namespace.clone(), slice_name(&c.name, true)));
            continue;
        }
        for (v6_family, addrs) in [(false, &v4), (true, &v6)] {
            if v6_family && addrs.is_empty() {
                // The IPv4 slice always exists: it holds the allocation.
                continue;
            }
            let name = slice_name(&c.name, v6_family);
            keep.insert((c.namespace.clone(), name.clone()));
            let want = desired_slice(c, &name, v6_family, addrs, ports.clone());
            match existing.get(&(c.namespace.clone(), name)) {
                Some(have) if content(have) == content(&want) => {}
                Some(have) => {
                    let mut want = want;
                    want.metadata.resource_version = have.metadata.resource_version.clone();
                    out.apply.push(want);
                }
                None => out.apply.push(want),
            }
        }
    }
    out.delete = existing
        .keys()
        .filter(|k| !keep.contains(*k))
        .cloned()
        .collect();
    out
}

fn desired_slice(
    c: &Candidate,
    name: &str,
    v6: bool,
    addresses: &[String],
    ports: Vec<EndpointPort>,
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), c.name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let owner = c.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: c.name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }]
    });
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(c.namespace.clone()),
            labels: Some(labels),
            owner_references: owner,
            ..Default::default()
        },
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![a.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(ports),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions};
    use crate::sources::file::parse_documents;

    fn load(text: &str) -> Index {
        let mut index = Index::new();
        for item in parse_documents(std::path::Path::new("t.yaml"), text) {
            let loaded = item.unwrap_or_else(|e| panic!("{e}"));
            index
                .apply(loaded.object)
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
        index
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: smiley, namespace: faces, uid: u-smiley}
spec: {ports: [{name: http, port: 80}, {name: admin, port: 9000, appProtocol: kubernetes.io/h2c}]}
---
apiVersion: v1
kind: Service
metadata: {name: smiley-east, namespace: faces}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: smiley, namespace: faces}
spec:
  parentRefs: [{name: smiley, kind: Service, group: core}]
  rules: [{backendRefs: [{name: smiley-east, port: 80}]}]
"#;

    fn index(extra: &str) -> Index {
        load(&format!("{SERVICES}---\n{extra}"))
    }

    fn cands(index: &Index) -> Vec<Candidate> {
        let c = compile(index, &CompileOptions::default(), None);
        candidates(index, &c.table)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_selectorless_route_parent_gets_a_slice_with_one_port_per_service_port() {
        let idx = index("");
        let c = cands(&idx);
        assert_eq!(c.len(), 1, "only the parent, not its backend: {c:?}");
        let p = plan(&c, &[ip("10.1.0.1"), ip("10.1.0.2")], &[], 20000..=20009);
        assert!(p.delete.is_empty() && p.range_full.is_empty());
        assert_eq!(p.apply.len(), 1);
        let s = &p.apply[0];
        assert_eq!(s.metadata.name.as_deref(), Some("smiley-meshroute"));
        assert!(is_ours(s));
        assert_eq!(
            label(&s.metadata, SERVICE_NAME_LABEL),
            Some("smiley"),
            "kube-proxy finds it by this label"
        );
        let ports: Vec<(String, i32)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.port.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [("http".to_string(), 20000), ("admin".to_string(), 20001)]
        );
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u-smiley"
        );
    }

    #[test]
    fn allocation_is_read_back_from_the_slices_and_ports_are_not_reused() {
        let idx = index("");
        let c = cands(&idx);
        let first = plan(&c, &[ip("10.1.0.1")], &[], 20000..=20009);
        // As the API server would hold it.
        let mut held = first.apply[0].clone();
        held.metadata.resource_version = Some("7".into());
        // Same inputs: nothing to do (stable across restarts and leaders).
        let again = plan(&c, &[ip("10.1.0.1")], &[held.clone()], 20000..=20009);
        assert_eq!(again, SlicePlan::default());
        // A replica goes: the same ports, one endpoint fewer, written over resourceVersion 7.
        let fewer = plan(&c, &[], &[held.clone()], 20000..=20009);
        assert_eq!(fewer.apply.len(), 1);
        assert!(fewer.apply[0].endpoints.is_empty());
        assert_eq!(
            fewer.apply[0].metadata.resource_version.as_deref(),
            Some("7")
        );
        assert_eq!(fewer.apply[0].ports, held.ports);
        // An old slice of another Service still names 20000 and 20001: they are not reused.
        let mut other = held.clone();
        other.metadata.name = Some("gone-meshroute".into());
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "gone".into());
        let p = plan(&c, &[], &[other], 20000..=20009);
        assert_eq!(
            p.delete,
            [("faces".to_string(), "gone-meshroute".to_string())]
        );
        let ports: Vec<i32> = p.apply[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .collect();
        assert_eq!(ports, [20002, 20003]);
    }

    #[test]
    fn a_full_range_leaves_the_parent_alone() {
        let idx = index("");
        let c = cands(&idx);
        let p = plan(&c, &[ip("10.1.0.1")], &[], 20000..=20000);
        assert!(p.apply.is_empty());
        assert_eq!(p.range_full, [("faces".to_string(), "smiley".to_string())]);
    }

    #[test]
    fn ipv6_replicas_get_their_own_slice() {
        let idx = index("");
        let c = cands(&idx);
        let p = plan(&c, &[ip("10.1.0.1"), ip("fd00::1")], &[], 20000..=20009);
        let names: Vec<_> = p
            .apply
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s.address_type.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("smiley-meshroute".to_string(), "IPv4".to_string()),
                ("smiley-meshroute-v6".to_string(), "IPv6".to_string())
            ]
        );
        assert_eq!(p.apply[0].ports, p.apply[1].ports);
    }

    #[test]
    fn services_meshroute_must_leave_alone_say_why() {
        let cases = [
            (
                "metadata: {name: smiley, namespace: faces, annotations: {meshroute.dev/publish-endpoints: \"false\"}}",
                "opts out",
            ),
            (
                "metadata: {name: smiley, namespace: faces}\nspec: {selector: {app: smiley}, ports: [{port: 80}]}",
                "has a selector",
            ),
            (
                "metadata: {name: smiley, namespace: faces, labels: {mirror.linkerd.io/mirrored-service: \"true\"}}",
                "multicluster mirror",
            ),
            (
                "metadata: {name: smiley, namespace: faces, labels: {multicluster.linkerd.io/remote-discovery: east}}",
                "multicluster mirror",
            ),
            (
                "metadata: {name: smiley, namespace: faces, annotations: {multicluster.linkerd.io/local-discovery: smiley-local}}",
                "federated Service",
            ),
        ];
        for (meta, why) in cases {
            let svc = if meta.contains("spec:") {
                format!("apiVersion: v1\nkind: Service\n{meta}\n")
            } else {
                format!("apiVersion: v1\nkind: Service\n{meta}\nspec: {{ports: [{{port: 80}}]}}\n")
            };
            let text = SERVICES.replacen(
                "apiVersion: v1\nkind: Service\nmetadata: {name: smiley, namespace: faces, uid: u-smiley}\nspec: {ports: [{name: http, port: 80}, {name: admin, port: 9000, appProtocol: kubernetes.io/h2c}]}\n",
                &svc,
                1,
            );
            let c = cands(&load(&text));
            assert_eq!(c.len(), 1, "{meta}");
            let err = c[0].ports.clone().unwrap_err();
            assert!(err.contains(why), "{meta}: {err}");
            assert!(plan(&c, &[ip("10.1.0.1")], &[], 20000..=20009)
                .apply
                .is_empty());
        }
        // Endpoints or slices written by someone else.
        let idx = index(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: smiley-1, namespace: faces, labels: {kubernetes.io/service-name: smiley}}\naddressType: IPv4\nendpoints: []\n",
        );
        let err = cands(&idx)[0].ports.clone().unwrap_err();
        assert!(err.contains("managed by someone else"), "{err}");
        let idx = index(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: smiley, namespace: faces}\nsubsets: []\n",
        );
        let err = cands(&idx)[0].ports.clone().unwrap_err();
        assert!(err.contains("Endpoints"), "{err}");
    }

    #[test]
    fn our_slices_name_the_listener_ports_and_never_become_endpoints() {
        let idx = index(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: smiley-meshroute, namespace: faces, labels: {kubernetes.io/service-name: smiley, endpointslice.kubernetes.io/managed-by: meshroute.dev}}\naddressType: IPv4\nports: [{name: http, port: 20007}, {name: admin, port: 20003}, {name: gone, port: 20009}]\nendpoints: [{addresses: [10.1.0.1]}]\n",
        );
        // Ours do not count as someone else's: still published.
        assert!(cands(&idx)[0].ports.is_ok());
        let ports = local_ports(&idx);
        let got: Vec<(u16, u16)> = ports.iter().map(|p| (p.local, p.port)).collect();
        assert_eq!(got, [(20003, 9000), (20007, 80)]);
        let c = compile(&idx, &CompileOptions::default(), None);
        let t = &c.table;
        assert_eq!(t.parent_for_local_port(20007).map(|p| p.port), Some(80));
        assert!(t.parent_for_local_port(20009).is_none());
        // smiley without its route passes through to its own endpoints: ours are not among them.
        let idx2 = {
            let mut i = idx.clone();
            i.routes.clear();
            i
        };
        let c = compile(&idx2, &CompileOptions::default(), None);
        let dump = serde_json::to_string(&c.table).unwrap();
        assert!(!dump.contains("10.1.0.1"), "{dump}");
    }
}
