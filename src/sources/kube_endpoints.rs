//! Transparent serving, the I/O half: the status leader writes the EndpointSlices that make
//! selector-less route parents lead to meshroute, and every replica learns meshroute's own
//! addresses. What to write is decided by [`crate::compile::publish`].
//!
//! - **Own addresses**: `--advertise IP[,IP…]` as given, or else the ready endpoints of
//!   meshroute's own Service (its EndpointSlices, watched), so only ready replicas get traffic
//!   and a replica that goes away leaves the slices as soon as its Service says so.
//! - **Writes** happen on every snapshot (route, Service, slice changes), address change and
//!   leadership change, and every 30 s as a safety net. Each pass lists our slices from the API
//!   server (label `endpointslice.kubernetes.io/managed-by=meshroute.dev`), so the allocation
//!   and the diff are computed against what is stored, not against what a watch has delivered
//!   so far. A conflict or failure is retried a second later.
//! - **Never on shutdown**: a stopping leader leaves the slices (the other replicas keep
//!   serving the ports they name).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;

use super::kube::Snapshot;
use crate::compile::publish::{self, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::compile::status::CONTROLLER_NAME;

/// meshroute's own addresses, sorted.
pub type Addresses = Arc<Vec<IpAddr>>;

/// Keep `tx` at the ready addresses of Service `namespace/name`, from its EndpointSlices.
pub async fn own_addresses(
    client: Client,
    namespace: String,
    name: String,
    tx: watch::Sender<Option<Addresses>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg).default_backoff());
    // Slice name → its ready addresses; a relist is collected aside and swapped in.
    let mut slices: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, Vec<IpAddr>>> = None;
    let mut failing = false;
    let mut seen_any = false;
    loop {
        let ev = tokio::select! {
            () = &mut shutdown => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        let ev = match ev {
            Ok(ev) => {
                failing = false;
                ev
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(service = %format!("{namespace}/{name}"), error = %e, "cannot watch meshroute's own Service endpoints; the last known addresses stay published");
                }
                failing = true;
                continue;
            }
        };
        match ev {
            WatchEvent::Init => relist = Some(BTreeMap::new()),
            WatchEvent::InitApply(s) => {
                if let Some(r) = relist.as_mut() {
                    r.insert(s.metadata.name.clone().unwrap_or_default(), ready(&s));
                }
            }
            WatchEvent::InitDone => {
                slices = relist.take().unwrap_or_default();
            }
            WatchEvent::Apply(s) => {
                slices.insert(s.metadata.name.clone().unwrap_or_default(), ready(&s));
            }
            WatchEvent::Delete(s) => {
                slices.remove(&s.metadata.name.clone().unwrap_or_default());
            }
        }
        if relist.is_some() {
            continue;
        }
        let mut all: Vec<IpAddr> = slices.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        if !seen_any && all.is_empty() {
            tracing::warn!(service = %format!("{namespace}/{name}"), "meshroute's own Service has no ready endpoints: published EndpointSlices list no replica (set --self-service, or --advertise outside a cluster)");
        }
        seen_any = true;
        tx.send_if_modified(|have| {
            if have.as_deref().is_some_and(|h| *h == all) {
                return false;
            }
            tracing::info!(addresses = ?all, "meshroute's own ready addresses");
            *have = Some(Arc::new(all));
            true
        });
    }
}

/// Ready addresses of one slice (`ready` unset counts as ready, as for any endpoint).
fn ready(slice: &EndpointSlice) -> Vec<IpAddr> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// What the publisher needs besides its inputs.
pub struct Publisher {
    pub client: Client,
    /// Write only in this namespace (`--namespace`); all namespaces when `None`.
    pub namespace: Option<String>,
    pub port_range: RangeInclusive<u16>,
    pub identity: String,
}

/// Write our EndpointSlices from every snapshot while `leader` is true.
pub async fn publish(
    p: Publisher,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut addresses: watch::Receiver<Option<Addresses>>,
    mut leader: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let api: Api<EndpointSlice> = match &p.namespace {
        Some(ns) => Api::namespaced(p.client.clone(), ns),
        None => Api::all(p.client.clone()),
    };
    let recorder = Recorder::new(
        p.client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(p.identity.clone()),
        },
    );
    // Per leadership term: what was said about each parent left alone.
    let mut told: HashMap<(String, String), String> = HashMap::new();
    let mut retry = false;
    // `--advertise` addresses are sent once and never change.
    let mut addresses_change = true;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            r = snapshots.changed() => if r.is_err() { return },
            r = addresses.changed(), if addresses_change => addresses_change = r.is_ok(),
            r = leader.changed() => {
                if r.is_err() { return }
                told.clear();
            }
            () = tokio::time::sleep(if retry { Duration::from_secs(1) } else { Duration::from_secs(30) }) => {}
        }
        if !*leader.borrow() {
            continue;
        }
        let snap = snapshots.borrow_and_update().clone();
        // Nothing before the first table and the first list of our own addresses: an empty
        // view would remove every slice, or every endpoint, for a moment.
        let Some(addrs) = addresses.borrow_and_update().clone() else {
            continue;
        };
        if !snap.synced {
            continue;
        }
        let (full, result) = sync(&api, &p, &snap, &addrs).await;
        retry = match result {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write meshroute's EndpointSlices; retrying in 1s");
                true
            }
        };
        let range = format!("{}-{}", p.port_range.start(), p.port_range.end());
        let not_published = snap.publish.iter().filter_map(|c| {
            let why = match &c.ports {
                Err(why) => why.clone(),
                Ok(_) if full.contains(&(c.namespace.clone(), c.name.clone())) => format!(
                    "no free listener port in --parent-ports {range}: endpoints not published (existing slices are left as they are)"
                ),
                Ok(_) => return None,
            };
            Some((c, why))
        });
        for (c, why) in not_published.collect::<Vec<_>>() {
            let why = &why;
            let key = (c.namespace.clone(), c.name.clone());
            if told.get(&key) == Some(why) {
                continue;
            }
            tracing::info!(service = %format!("{}/{}", c.namespace, c.name), "not publishing endpoints: {why}");
            // A full range is a fault to fix; the other reasons are choices.
            let (type_, reason) = if c.ports.is_ok() {
                (EventType::Warning, "PortRangeFull")
            } else {
                (EventType::Normal, "EndpointsNotPublished")
            };
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note(why)),
                action: "PublishEndpoints".into(),
                secondary: None,
            };
            match recorder.publish(&ev, &service_ref(c)).await {
                Ok(()) => {
                    told.insert(key, why.clone());
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(error = %e, "cannot publish event");
                }
            }
        }
        told.retain(|(ns, name), _| {
            full.contains(&(ns.clone(), name.clone()))
                || snap
                    .publish
                    .iter()
                    .any(|c| &c.namespace == ns && &c.name == name && c.ports.is_err())
        });
    }
}

fn note(s: &str) -> String {
    if s.len() <= 1000 {
        return s.to_string();
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn service_ref(c: &publish::Candidate) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(c.namespace.clone()),
        name: Some(c.name.clone()),
        uid: c.uid.clone(),
        ..Default::default()
    }
}

/// One pass: list our slices, plan, write. Returns the parents left alone for lack of ports.
async fn sync(
    api: &Api<EndpointSlice>,
    p: &Publisher,
    snap: &Snapshot,
    addrs: &[IpAddr],
) -> (Vec<(String, String)>, Result<(), kube::Error>) {
    let existing = match api
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await
    {
        Ok(l) => l,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let plan = publish::plan(&snap.publish, addrs, &existing.items, p.port_range.clone());
    for (ns, svc) in &plan.range_full {
        tracing::warn!(service = %format!("{ns}/{svc}"), range = ?p.port_range, "no free listener port in --parent-ports: this Service's endpoints are not published (its existing slices are left as they are)");
    }
    let mut first_err = None;
    for slice in &plan.apply {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(p.client.clone(), ns);
        let r = if slice.metadata.resource_version.is_some() {
            api.replace(name, &PostParams::default(), slice).await
        } else {
            api.create(&PostParams::default(), slice).await
        };
        match r {
            Ok(_) => {
                let ports: Vec<String> = slice
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}={}",
                            p.name.as_deref().unwrap_or(""),
                            p.port.unwrap_or(0)
                        )
                    })
                    .collect();
                tracing::info!(slice = %format!("{ns}/{name}"), endpoints = slice.endpoints.len(), ports = %ports.join(","), "EndpointSlice written");
            }
            Err(e) => {
                tracing::debug!(slice = %format!("{ns}/{name}"), error = %e, "EndpointSlice write failed");
                first_err.get_or_insert(e);
            }
        }
    }
    for (ns, name) in &plan.delete {
        let api: Api<EndpointSlice> = Api::namespaced(p.client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(slice = %format!("{ns}/{name}"), "EndpointSlice deleted: its Service is no longer a published route parent")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let result = match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    };
    (plan.range_full, result)
}
