//! Kubernetes source: kube-rs watchers for Services, EndpointSlices, Endpoints and every route
//! kind the cluster serves, plus each linked cluster's Services and EndpointSlices, all sending
//! into the source seam ([`super::seam`]) that file mode's directory feeds too.
//!
//! - **Feeds.** Every watch is a [`Feed`] (a kind from an [`Origin`]: the local API server or
//!   a linked cluster). Linked clusters (`--link`, or Linkerd `Link` objects through
//!   [`super::kube_links`]) contribute to [`crate::index::Index::remote`] and never gate the
//!   first table.
//! - **Versions by discovery.** For each CRD group the best version the cluster serves is
//!   watched (e.g. linkerd-smi clusters serve only TrafficSplit v1alpha1/v1alpha2). A kind the
//!   cluster does not serve at all is not watched; one log line says so.
//! - **Nothing is published before every local watch has finished its initial list**, and a
//!   relist replaces its kind atomically (the seam buffers `Reset`..`Synced`).
//! - **API server gone**: the watchers back off and resume; the last table keeps serving.
//!
//! Route status and TrafficSplit Events are written by [`super::kube_status`] from the
//! [`Snapshot`] published after every compile.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::compile::status::{RouteStatus, CONTROLLER_NAME};
use crate::model::{
    ObjectKey, DISCOVERY_GROUP, GATEWAY_GROUP, LINKERD_GROUP, SPECS_GROUP, SPLIT_GROUP,
};
use crate::sources::file::{decode, Location};

use super::seam::{run_loop, State};
pub use super::seam::{Feed, Item, Origin, Sinks, SourceEvent};

/// Scope and identity of Kubernetes mode.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Kubeconfig to use instead of in-cluster config / `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Label selector for route-like objects (HTTPRoutes, TrafficSplits, HTTPRouteGroups).
    /// Services and endpoints are always watched in full: a selected route must resolve its
    /// parents and backends whatever their labels.
    pub label_selector: Option<String>,
    /// Namespace of the leader-election Lease (default: `$POD_NAMESPACE`, else the client's
    /// default namespace: the pod's own in a cluster, the kubeconfig context's outside one).
    pub lease_namespace: Option<String>,
    /// Name of the Lease (default `meshroute`).
    pub lease_name: Option<String>,
    /// This replica's identity (default: `$POD_NAME`, else hostname plus a random suffix).
    pub identity: Option<String>,
    /// Do not write status, Events or EndpointSlices (serve only).
    pub read_only: bool,
    /// Transparent serving and its settings ([`PublishOptions`]).
    pub publish: PublishOptions,
    /// Linked clusters (`--link NAME=KUBECONFIG`): read-only sources of Services and
    /// EndpointSlices; only those exported (or federated members) are resolved.
    pub links: Vec<Link>,
    /// Namespace of Linkerd's `Link` objects and their credentials Secrets (`--link-namespace`,
    /// default `linkerd-multicluster`); `Some("")` turns Link discovery off.
    pub link_namespace: Option<String>,
}

/// A linked cluster as given by `--link NAME=KUBECONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The name mirrors use in `multicluster.linkerd.io/remote-discovery`.
    pub name: String,
    pub kubeconfig: PathBuf,
}

impl std::str::FromStr for Link {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Link {
                name: name.to_string(),
                kubeconfig: PathBuf::from(path),
            }),
            _ => Err(format!(
                "{s:?}: expected NAME=KUBECONFIG, e.g. east=/etc/meshroute/east.kubeconfig"
            )),
        }
    }
}

/// A linked cluster's client, ready to watch.
#[derive(Clone)]
pub struct LinkedCluster {
    pub name: Arc<str>,
    pub client: Client,
}

/// Clients for `links`; fails on an unreadable kubeconfig (a wrong flag), not on an
/// unreachable API server (that one is retried by the watchers).
pub async fn linked_clients(links: &[Link]) -> Result<Vec<LinkedCluster>, KubeSourceError> {
    let mut out = Vec::new();
    for link in links {
        let opts = KubeOptions {
            kubeconfig: Some(link.kubeconfig.clone()),
            ..Default::default()
        };
        out.push(LinkedCluster {
            name: Arc::from(link.name.as_str()),
            client: client(&opts).await?,
        });
    }
    Ok(out)
}

/// Watch a linked cluster: its Services and EndpointSlices (in `namespace` only when set: a
/// mirror's remote Service lives in the mirror's namespace). Which Services count (exported
/// for remote discovery, or federated members) is decided when resolving: one label selector
/// cannot ask for both, and two watches of one kind could disagree about an object.
pub(crate) fn spawn_linked(
    linked: &LinkedCluster,
    namespace: Option<&str>,
    tx: &mpsc::UnboundedSender<SourceEvent>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let origin = Origin::Linked(linked.name.clone());
    let services = watcher::Config::default();
    vec![
        tokio::spawn(watch_kind(
            api_for::<Service>(&linked.client, namespace),
            services,
            Feed {
                origin: origin.clone(),
                slot: Slot::Service,
            },
            ApiResource::erase::<Service>(&()),
            tx.clone(),
        )),
        tokio::spawn(watch_kind(
            api_for::<EndpointSlice>(&linked.client, namespace),
            watcher::Config::default(),
            Feed {
                origin,
                slot: Slot::EndpointSlice,
            },
            ApiResource::erase::<EndpointSlice>(&()),
            tx.clone(),
        )),
    ]
}

/// Transparent serving: EndpointSlices for route parents, listeners for their ports.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `--no-publish-endpoints` turns the feature off: no slices written, no parent listeners.
    pub enabled: bool,
    /// Listener ports to allocate per parent port (`--parent-ports`, default 20000-29999).
    pub port_range: std::ops::RangeInclusive<u16>,
    /// meshroute's own addresses as given (`--advertise`); when empty, the ready endpoints of
    /// [`PublishOptions::self_service`].
    pub advertise: Vec<std::net::IpAddr>,
    /// meshroute's own Service, `(namespace, name)` (`--self-service`; default: the pod's
    /// namespace, as for the Lease, and `meshroute`).
    pub self_service: Option<(String, String)>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            enabled: true,
            port_range: crate::compile::publish::DEFAULT_PORT_RANGE,
            advertise: Vec::new(),
            self_service: None,
        }
    }
}

impl KubeOptions {
    /// The Lease's namespace: `--lease-namespace`, else `$POD_NAMESPACE`, else
    /// `client_default` ([`Client::default_namespace`]: in a cluster the service account's
    /// namespace file, outside it the kubeconfig context's namespace or `default`), so that a
    /// newcomer's `meshroute run --kube` finds a namespace that exists.
    pub fn lease_namespace(&self, client_default: &str) -> String {
        self.lease_namespace
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| client_default.to_string())
    }

    /// meshroute's own Service: `--self-service`, else `meshroute` in the Lease's default
    /// namespace (the pod's own in a cluster).
    pub fn self_service(&self, client_default: &str) -> (String, String) {
        self.publish.self_service.clone().unwrap_or_else(|| {
            let ns = std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| client_default.to_string());
            (ns, "meshroute".into())
        })
    }

    pub fn lease_name(&self) -> String {
        self.lease_name
            .clone()
            .unwrap_or_else(|| "meshroute".into())
    }

    pub fn identity(&self) -> String {
        if let Some(id) = self.identity.clone() {
            return id;
        }
        if let Some(pod) = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
            return pod;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "meshroute".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot find Kubernetes credentials (in-cluster or KUBECONFIG): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("API discovery failed: {0}")]
    Discovery(#[source] kube::Error),
}

/// A Kubernetes client from `opts.kubeconfig`, or in-cluster config / `KUBECONFIG`.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeSourceError> {
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeSourceError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await.map_err(KubeSourceError::Infer)?,
    };
    Client::try_from(config).map_err(KubeSourceError::Client)
}

/// A kind the source can watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Service,
    EndpointSlice,
    Endpoints,
    GatewayHttpRoute,
    GatewayGrpcRoute,
    LinkerdHttpRoute,
    TrafficSplit,
    HttpRouteGroup,
    /// gateway.networking.x-k8s.io XBackendTrafficPolicy (retry budgets).
    BackendTrafficPolicy,
    /// Every kind at once, from a directory of manifests (file mode's one feed).
    Manifests,
}

impl Slot {
    pub const CRDS: [Slot; 6] = [
        Slot::GatewayHttpRoute,
        Slot::GatewayGrpcRoute,
        Slot::LinkerdHttpRoute,
        Slot::TrafficSplit,
        Slot::HttpRouteGroup,
        Slot::BackendTrafficPolicy,
    ];

    pub fn group(self) -> &'static str {
        match self {
            Slot::Service | Slot::Endpoints => "",
            Slot::EndpointSlice => DISCOVERY_GROUP,
            Slot::GatewayHttpRoute | Slot::GatewayGrpcRoute => GATEWAY_GROUP,
            Slot::LinkerdHttpRoute => LINKERD_GROUP,
            Slot::TrafficSplit => SPLIT_GROUP,
            Slot::HttpRouteGroup => SPECS_GROUP,
            Slot::BackendTrafficPolicy => crate::model::GATEWAY_X_GROUP,
            Slot::Manifests => "",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Slot::Service => "Service",
            Slot::EndpointSlice => "EndpointSlice",
            Slot::Endpoints => "Endpoints",
            Slot::GatewayHttpRoute | Slot::LinkerdHttpRoute => "HTTPRoute",
            Slot::GatewayGrpcRoute => "GRPCRoute",
            Slot::TrafficSplit => "TrafficSplit",
            Slot::HttpRouteGroup => "HTTPRouteGroup",
            Slot::BackendTrafficPolicy => "XBackendTrafficPolicy",
            Slot::Manifests => "manifests",
        }
    }

    /// Versions meshroute understands, best first.
    pub fn preferred_versions(self) -> &'static [&'static str] {
        match self {
            Slot::Service | Slot::Endpoints | Slot::EndpointSlice => &["v1"],
            Slot::GatewayHttpRoute => &["v1", "v1beta1"],
            Slot::GatewayGrpcRoute => &["v1"],
            Slot::LinkerdHttpRoute => &["v1beta3", "v1beta2", "v1beta1", "v1alpha1"],
            Slot::TrafficSplit | Slot::HttpRouteGroup => {
                &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"]
            }
            Slot::BackendTrafficPolicy => &["v1alpha1"],
            Slot::Manifests => &[],
        }
    }

    fn is_route_like(self) -> bool {
        matches!(
            self,
            Slot::GatewayHttpRoute
                | Slot::GatewayGrpcRoute
                | Slot::LinkerdHttpRoute
                | Slot::TrafficSplit
                | Slot::HttpRouteGroup
                | Slot::BackendTrafficPolicy
        )
    }

    fn key(self, namespace: Option<&str>, name: Option<&str>) -> ObjectKey {
        ObjectKey {
            group: self.group(),
            kind: self.kind(),
            namespace: crate::intern::intern(namespace.unwrap_or("default")),
            name: crate::intern::intern(name.unwrap_or_default()),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group().is_empty() {
            write!(f, "{}", self.kind())
        } else {
            write!(f, "{}.{}", self.kind(), self.group())
        }
    }
}

/// The best version meshroute understands among those `served` (`None`: do not watch).
pub fn pick_version(slot: Slot, served: &[&str]) -> Option<&'static str> {
    slot.preferred_versions()
        .iter()
        .copied()
        .find(|v| served.contains(v))
}

/// What to watch, decided by discovery.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Watched kinds with the resource (group, version, plural) to use.
    pub watched: Vec<(Slot, ApiResource)>,
    /// Kinds not served by the cluster, with why.
    pub skipped: Vec<(Slot, String)>,
}

impl Plan {
    pub fn resource(&self, slot: Slot) -> Option<&ApiResource> {
        self.watched
            .iter()
            .find(|(s, _)| *s == slot)
            .map(|(_, ar)| ar)
    }
}

/// Ask the API server which versions of our CRD kinds it serves.
pub async fn discover(client: &Client) -> Result<Plan, KubeSourceError> {
    // Every group of a kind in `Slot::CRDS`, once.
    let mut groups: Vec<&str> = Slot::CRDS.iter().map(|s| s.group()).collect();
    groups.sort_unstable();
    groups.dedup();
    let discovery = kube::Discovery::new(client.clone())
        .filter(&groups)
        .run()
        .await
        .map_err(KubeSourceError::Discovery)?;
    let mut plan = Plan {
        watched: vec![
            (Slot::Service, ApiResource::erase::<Service>(&())),
            (
                Slot::EndpointSlice,
                ApiResource::erase::<EndpointSlice>(&()),
            ),
            (Slot::Endpoints, ApiResource::erase::<Endpoints>(&())),
        ],
        skipped: vec![],
    };
    for slot in Slot::CRDS {
        let Some(group) = discovery.get(slot.group()) else {
            plan.skipped
                .push((slot, format!("API group {} is not served", slot.group())));
            continue;
        };
        // Versions of the group that actually have this kind.
        let mut served: Vec<(String, ApiResource)> = Vec::new();
        for v in group.versions() {
            if let Some((ar, _)) = group
                .versioned_resources(v)
                .into_iter()
                .find(|(ar, _)| ar.kind == slot.kind())
            {
                served.push((v.to_string(), ar));
            }
        }
        let names: Vec<&str> = served.iter().map(|(v, _)| v.as_str()).collect();
        match pick_version(slot, &names) {
            Some(v) => {
                if let Some((_, ar)) = served.into_iter().find(|(sv, _)| sv == v) {
                    plan.watched.push((slot, ar));
                }
            }
            None => plan.skipped.push((
                slot,
                format!(
                    "served versions [{}] include none of [{}]",
                    names.join(", "),
                    slot.preferred_versions().join(", ")
                ),
            )),
        }
    }
    Ok(plan)
}

/// What the status writer needs to know about a route-like object as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub api_version: String,
    pub uid: Option<String>,
    /// Our entries of `status.parents` as the API server holds them, without timestamps.
    pub ours: Vec<Value>,
    /// TrafficSplit: `service=weight` per backend, in order.
    pub split_weights: Option<String>,
}

/// An object the API server returned that meshroute cannot use: it is named in a log line,
/// in `/status` on the admin port and, by the status writer, in a Warning Event on the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub key: ObjectKey,
    pub api_version: String,
    pub uid: Option<String>,
    /// Event reason: `Unreadable` (does not decode) or `Invalid` (refused at admission).
    pub reason: &'static str,
    pub message: String,
}

/// Published after every compile for the status writer.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub statuses: Vec<Arc<RouteStatus>>,
    /// Shared with the seam's copy: a route's info is replaced (a new `Arc`) only when its
    /// object changes, so the status writer can tell untouched routes by pointer.
    pub infos: BTreeMap<ObjectKey, Arc<RouteInfo>>,
    /// Objects that could not be used (an earlier good version, if any, keeps serving).
    pub rejected: Vec<Rejected>,
    /// Parents of accepted routes, and whether their endpoints are published (only when
    /// publishing is on).
    pub publish: Vec<crate::compile::publish::Candidate>,
    /// False only for the placeholder before every watch has listed.
    pub synced: bool,
}

/// Strip what the status comparison ignores: timestamps, and nulls.
pub fn normalize_parent(entry: &Value) -> Value {
    let mut v = entry.clone();
    strip_nulls(&mut v);
    if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn route_info(slot: Slot, api_version: &str, doc: &Value) -> Option<RouteInfo> {
    if !matches!(
        slot,
        Slot::GatewayHttpRoute
            | Slot::GatewayGrpcRoute
            | Slot::LinkerdHttpRoute
            | Slot::TrafficSplit
    ) {
        return None;
    }
    let ours = doc
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                })
                .map(normalize_parent)
                .collect()
        })
        .unwrap_or_default();
    let split_weights = (slot == Slot::TrafficSplit).then(|| {
        doc.pointer("/spec/backends")
            .and_then(Value::as_array)
            .map(|bs| {
                bs.iter()
                    .map(|b| {
                        let svc = b.get("service").and_then(Value::as_str).unwrap_or("?");
                        let w = match b.get("weight") {
                            Some(Value::String(s)) => s.clone(),
                            Some(w) => w.to_string(),
                            None => "?".into(),
                        };
                        format!("{svc}={w}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    });
    Some(RouteInfo {
        api_version: api_version.to_string(),
        uid: doc
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        ours,
        split_weights,
    })
}

/// Decode a watched object through the same decoder as file mode. An object that does not
/// decode is still an item (with the error), never silently dropped.
fn to_item(slot: Slot, ar: &ApiResource, mut doc: Value) -> Item {
    if let Some(o) = doc.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        o.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    let info = route_info(slot, &ar.api_version, &doc);
    let meta = |field: &str| {
        doc.pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (namespace, name, uid) = (meta("namespace"), meta("name"), meta("uid"));
    let location = Location {
        file: PathBuf::from("kube"),
        document: 0,
        pos: None,
    };
    let key = slot.key(namespace.as_deref(), name.as_deref());
    let object = match decode(&location, doc) {
        Ok(loaded) => Ok(loaded.object),
        Err(e) => Err(e.message),
    };
    Item {
        key,
        object,
        info,
        api_version: ar.api_version.clone(),
        uid,
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    cfg: watcher::Config,
    feed: Feed,
    ar: ApiResource,
    tx: mpsc::UnboundedSender<SourceEvent>,
) where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + fmt::Debug + Send + 'static,
{
    let slot = feed.slot;
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
    let mut failing = false;
    let convert = |obj: &K| -> Option<Item> {
        match serde_json::to_value(obj) {
            Ok(doc) => Some(to_item(slot, &ar, doc)),
            Err(e) => {
                // Unreachable for what the watcher itself just decoded.
                let m = obj.meta();
                tracing::warn!(kind = %slot, namespace = m.namespace.as_deref().unwrap_or(""), name = m.name.as_deref().unwrap_or(""), error = %e, "cannot re-encode a watched object");
                None
            }
        }
    };
    while let Some(ev) = stream.next().await {
        let f = feed.clone();
        let msg = match ev {
            Err(e) => {
                // One line per outage, not one per retry.
                if !failing {
                    tracing::warn!(kind = %slot, source = %feed.origin, error = %e, "watch failed; retrying with backoff, the last table keeps serving");
                }
                failing = true;
                continue;
            }
            Ok(ev) => {
                if failing {
                    tracing::info!(kind = %slot, source = %feed.origin, "watch resumed");
                    failing = false;
                }
                match ev {
                    Event::Init => SourceEvent::Reset(f),
                    Event::InitDone => SourceEvent::Synced(f),
                    Event::InitApply(o) => match convert(&o) {
                        Some(item) => SourceEvent::ResetApply(f, item),
                        None => continue,
                    },
                    Event::Apply(o) => match convert(&o) {
                        Some(item) => SourceEvent::Apply(f, item),
                        None => continue,
                    },
                    Event::Delete(o) => {
                        let m = o.meta();
                        SourceEvent::Delete(f, slot.key(m.namespace.as_deref(), m.name.as_deref()))
                    }
                }
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn spawn_watchers(
    client: &Client,
    plan: &Plan,
    opts: &KubeOptions,
    tx: &mpsc::UnboundedSender<SourceEvent>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ns = opts.namespace.as_deref();
    let mut tasks = Vec::new();
    for (slot, ar) in &plan.watched {
        let mut cfg = watcher::Config::default();
        if slot.is_route_like() {
            if let Some(sel) = &opts.label_selector {
                cfg = cfg.labels(sel);
            }
        }
        let (slot, ar, tx) = (*slot, ar.clone(), tx.clone());
        let feed = slot.local();
        let task = match slot {
            Slot::Service => tokio::spawn(watch_kind(
                api_for::<Service>(client, ns),
                cfg,
                feed,
                ar,
                tx,
            )),
            Slot::EndpointSlice => tokio::spawn(watch_kind(
                api_for::<EndpointSlice>(client, ns),
                cfg,
                feed,
                ar,
                tx,
            )),
            Slot::Endpoints => tokio::spawn(watch_kind(
                api_for::<Endpoints>(client, ns),
                cfg,
                feed,
                ar,
                tx,
            )),
            _ => {
                let api: Api<DynamicObject> = match ns {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                    None => Api::all_with(client.clone(), &ar),
                };
                tokio::spawn(watch_kind(api, cfg, feed, ar, tx))
            }
        };
        tasks.push(task);
    }
    tasks
}

/// Discover (retrying until the API server answers), start the watchers and keep the proxy's
/// table in step with the cluster until `shutdown` resolves.
pub async fn run(
    client: Client,
    opts: KubeOptions,
    sinks: Sinks,
    linked: Vec<LinkedCluster>,
    plan_tx: Option<tokio::sync::oneshot::Sender<Plan>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Linked clusters are watched from the start: they need no discovery, and their endpoints
    // are then ready when the local routes first publish.
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for l in &linked {
        tracing::info!(cluster = %l.name, namespace = opts.namespace.as_deref().unwrap_or("*"), "watching linked cluster: Services and EndpointSlices");
        tasks.extend(spawn_linked(l, opts.namespace.as_deref(), &tx));
    }
    let mut delay = Duration::from_millis(200);
    let plan = loop {
        tokio::select! {
            () = &mut shutdown => { tasks.iter().for_each(|t| t.abort()); return },
            r = discover(&client) => match r {
                Ok(plan) => break plan,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the API server");
                    tokio::select! {
                        () = &mut shutdown => { tasks.iter().for_each(|t| t.abort()); return },
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    for (slot, why) in &plan.skipped {
        tracing::info!(kind = %slot, "not watching {slot}: {why}");
    }
    for (slot, ar) in &plan.watched {
        tracing::info!(kind = %slot, api_version = %ar.api_version, namespace = opts.namespace.as_deref().unwrap_or("*"), "watching");
    }
    if let Some(tx) = plan_tx {
        let _ = tx.send(plan.clone());
    }
    tasks.extend(spawn_watchers(&client, &plan, &opts, &tx));
    let link_ns = opts
        .link_namespace
        .clone()
        .unwrap_or_else(|| super::kube_links::DEFAULT_LINK_NAMESPACE.into());
    if !link_ns.is_empty() {
        match super::kube_links::discover_links(&client).await {
            Ok(Some(ar)) => {
                tracing::info!(namespace = %link_ns, api_version = %ar.api_version, "watching Links (multicluster.linkerd.io)");
                tasks.push(tokio::spawn(super::kube_links::run(
                    client.clone(),
                    ar,
                    link_ns,
                    opts.namespace.clone(),
                    tx.clone(),
                )));
            }
            Ok(None) => tracing::info!(
                "not watching Links: API group multicluster.linkerd.io is not served"
            ),
            Err(e) => tracing::warn!(error = %e, "not watching Links: discovery failed"),
        }
    }
    drop(tx);
    let mut state = State::new(plan.watched.iter().map(|(s, _)| s.local()).collect());
    for l in &linked {
        state.index.linked(&l.name);
    }
    run_loop(rx, &mut state, &sinks, &mut shutdown).await;
    for t in tasks {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;

    #[test]
    fn best_served_version_is_picked() {
        assert_eq!(
            pick_version(Slot::TrafficSplit, &["v1alpha1", "v1alpha2"]),
            Some("v1alpha2")
        );
        assert_eq!(
            pick_version(Slot::TrafficSplit, &["v1alpha4", "v1alpha1", "v1alpha2"]),
            Some("v1alpha4")
        );
        assert_eq!(
            pick_version(Slot::LinkerdHttpRoute, &["v1beta1", "v1beta3", "v1alpha1"]),
            Some("v1beta3")
        );
        assert_eq!(
            pick_version(Slot::GatewayHttpRoute, &["v1beta1"]),
            Some("v1beta1")
        );
        assert_eq!(pick_version(Slot::TrafficSplit, &["v2"]), None);
        assert_eq!(pick_version(Slot::HttpRouteGroup, &[]), None);
    }

    #[test]
    fn status_comparison_ignores_timestamps_and_nulls() {
        let a = serde_json::json!({"parentRef": {"name": "s", "port": null},
            "conditions": [{"type": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let b = serde_json::json!({"parentRef": {"name": "s"},
            "conditions": [{"type": "Accepted", "lastTransitionTime": "2027-01-01T00:00:00Z"}]});
        assert_eq!(normalize_parent(&a), normalize_parent(&b));
    }

    fn item(name: &str) -> Item {
        let svc = Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Item {
            key: Slot::Service.key(Some("ns"), Some(name)),
            object: Ok(Object::Service(Box::new(svc))),
            info: None,
            api_version: "v1".into(),
            uid: None,
        }
    }

    #[test]
    fn relist_replaces_a_kind_atomically_and_drops_what_is_gone() {
        let mut st = State::new([Slot::Service.local(), Slot::Endpoints.local()].into());
        st.handle(SourceEvent::Reset(Slot::Service.local()));
        st.handle(SourceEvent::ResetApply(Slot::Service.local(), item("a")));
        st.handle(SourceEvent::ResetApply(Slot::Service.local(), item("b")));
        // Nothing is visible before the list is complete.
        assert!(st.index.services.is_empty());
        st.handle(SourceEvent::Synced(Slot::Service.local()));
        assert_eq!(st.index.services.len(), 2);
        assert!(!st.all_synced(), "Endpoints have not listed yet");
        st.handle(SourceEvent::Reset(Slot::Endpoints.local()));
        st.handle(SourceEvent::Synced(Slot::Endpoints.local()));
        assert!(st.all_synced());
        // A relist (after a watch desync) without `a`: `a` goes, `b` stays throughout.
        st.handle(SourceEvent::Reset(Slot::Service.local()));
        st.handle(SourceEvent::ResetApply(Slot::Service.local(), item("b")));
        assert_eq!(
            st.index.services.len(),
            2,
            "old state serves until InitDone"
        );
        st.handle(SourceEvent::Synced(Slot::Service.local()));
        let names: Vec<_> = st.index.services.keys().map(|(_, n)| n.clone()).collect();
        assert_eq!(names, vec!["b".to_string()]);
    }

    #[test]
    fn a_cluster_unlinked_takes_its_objects_and_late_events_of_its_watch_are_ignored() {
        let east = Feed {
            origin: Origin::Linked(Arc::from("east")),
            slot: Slot::Service,
        };
        let mut st = State::new([Slot::Service.local()].into());
        // Not linked (yet): its events are dropped.
        st.handle(SourceEvent::Apply(east.clone(), item("smiley")));
        assert!(st.index.remote.is_empty());
        st.handle(SourceEvent::Linked(Arc::from("east")));
        st.handle(SourceEvent::Reset(east.clone()));
        st.handle(SourceEvent::ResetApply(east.clone(), item("smiley")));
        st.handle(SourceEvent::Synced(east.clone()));
        assert!(st.index.remote["east"].service("ns", "smiley").is_some());
        assert!(
            st.index.services.is_empty(),
            "linked objects stay out of the local index"
        );
        assert!(
            !st.all_synced(),
            "a linked cluster listing does not make the local source synced"
        );
        st.handle(SourceEvent::Unlinked(Arc::from("east")));
        assert!(st.index.remote.is_empty());
        st.handle(SourceEvent::Apply(east, item("late")));
        assert!(st.index.remote.is_empty());
    }

    #[test]
    fn link_flag_is_name_equals_kubeconfig() {
        let l: Link = "east=/etc/east.kubeconfig".parse().expect("parses");
        assert_eq!(l.name, "east");
        assert_eq!(l.kubeconfig, PathBuf::from("/etc/east.kubeconfig"));
        assert!("east".parse::<Link>().is_err());
        assert!("=x".parse::<Link>().is_err());
    }

    fn split_resource(version: &str) -> ApiResource {
        ApiResource {
            group: SPLIT_GROUP.into(),
            version: version.into(),
            api_version: format!("{SPLIT_GROUP}/{version}"),
            kind: "TrafficSplit".into(),
            plural: "trafficsplits".into(),
        }
    }

    /// What an API server without a conversion webhook returns for a v1alpha1 split when asked
    /// for v1alpha4: the stored object, quantity weights and all.
    fn stored_v1alpha1_split() -> Value {
        serde_json::json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": {"service": "web", "backends": [
                {"service": "web-v1", "weight": 1},
                {"service": "web-v2", "weight": "500m"}
            ]}
        })
    }

    #[test]
    fn v1alpha1_split_read_as_v1alpha4_keeps_its_quantity_weights() {
        let item = to_item(
            Slot::TrafficSplit,
            &split_resource("v1alpha4"),
            stored_v1alpha1_split(),
        );
        let object = item.object.expect("decodes");
        let route = crate::compile::validate::admit(&object)
            .expect("admitted")
            .expect("a route");
        let weights: Vec<u32> = route.rules[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1000, 500]);
    }

    #[test]
    fn an_object_that_cannot_be_read_is_reported_not_dropped() {
        let mut bad = stored_v1alpha1_split();
        bad["spec"]["backends"] = serde_json::json!("everything");
        let item = to_item(Slot::TrafficSplit, &split_resource("v1alpha4"), bad);
        assert!(item.object.is_err());
        let key = item.key.clone();
        let mut st = State::new([Slot::TrafficSplit.local()].into());
        st.handle(SourceEvent::Reset(Slot::TrafficSplit.local()));
        st.handle(SourceEvent::ResetApply(Slot::TrafficSplit.local(), item));
        st.handle(SourceEvent::Synced(Slot::TrafficSplit.local()));
        let r = st.rejected.get(&key).expect("reported");
        assert_eq!(r.reason, "Unreadable");
        assert_eq!(r.uid.as_deref(), Some("u-1"));
        assert!(r.message.contains("spec.backends"), "{}", r.message);
        // Once it reads again the report goes away.
        st.handle(SourceEvent::Apply(
            Slot::TrafficSplit.local(),
            to_item(
                Slot::TrafficSplit,
                &split_resource("v1alpha4"),
                stored_v1alpha1_split(),
            ),
        ));
        assert!(st.rejected.is_empty());
        assert!(st.index.routes.contains_key(&key));
    }

    #[test]
    fn lease_namespace_defaults_to_the_clients_namespace() {
        let opts = KubeOptions::default();
        if std::env::var_os("POD_NAMESPACE").is_none() {
            assert_eq!(opts.lease_namespace("team-a"), "team-a");
        }
        let opts = KubeOptions {
            lease_namespace: Some("ops".into()),
            ..Default::default()
        };
        assert_eq!(opts.lease_namespace("team-a"), "ops");
    }
}
