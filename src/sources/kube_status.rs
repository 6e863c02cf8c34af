//! Kubernetes mode's writes: route status, TrafficSplit Events and the leader election that
//! makes one replica (of many serving) the only writer.
//!
//! **Status.** For each HTTPRoute (both groups) our `status.parents[]` entries (controllerName
//! `meshroute.dev/controller`) are compared, without timestamps, with what the API server holds
//! (as last seen by the watch); only a difference leads to a write. The write reads the object,
//! keeps every other controller's entry as it is, replaces ours, and sends the whole list as a
//! JSON merge patch on `/status` with the read `resourceVersion` as precondition (a conflict
//! re-reads). `status.parents` is an atomic list in some CRDs, so a server-side apply of only
//! our entries would take the list over and wipe Linkerd's; read-merge-write under optimistic
//! concurrency is correct for atomic and map lists alike. `lastTransitionTime` only moves when
//! a condition's status changes.
//!
//! **A snapshot costs what changed.** The writer remembers, per route, the status and the
//! watched object (both `Arc`s) it last found in sync, and skips a route whose pair is the very
//! same: the incremental compile keeps an untouched route's status and the seam an unchanged
//! object's info, so one edit leads to one comparison, not a JSON comparison per route. With
//! the seam sharing route infos instead of deep-cloning them per publish and computing the
//! endpoint-publishing candidates after the table serves, one route's weights patched through a
//! real API server at 10k routes went from 5.7 ms to 1.9 ms (median, kubectl's return to the
//! new generation on `/status`; 1k routes: 1.0 and 0.9 ms) — `benches/workload/measure_kube.py`.
//!
//! **Events.** TrafficSplits have no status subresource: a change in their problems (Warning,
//! reason from the failing condition) and in their weights (Normal, `WeightsChanged`) becomes an
//! Event (events.k8s.io/v1).
//!
//! **Leader election.** A coordination.k8s.io Lease, renewed every 2 s, lost after 15 s without
//! renewal; expiry is judged by the local clock since the record last changed (as client-go
//! does), so clock skew between replicas does not matter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::kube::{normalize_parent, Plan, Rejected, RouteInfo, Slot, Snapshot};
use crate::compile::status::{RouteStatus, CONTROLLER_NAME};
use crate::compile::validate::RouteKind;
use crate::compile::FAILOVER_NOTE;
use crate::metrics::Metrics;
use crate::model::ObjectKey;
use crate::sources::watch::{ReloadStatus, StatusWriterState};

/// Lease validity without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the lease is renewed or tried.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long stops writing.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{route}: {source}")]
    Api {
        route: String,
        #[source]
        source: kube::Error,
    },
    #[error("{route}: status changed under us {attempts} times in a row")]
    Contended { route: String, attempts: u32 },
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn now_rfc3339() -> String {
    // Whole seconds: what every controller writes, and what `date-time` schemas accept.
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Where leader election reports how it is going: `/status` on the admin server and the
/// `meshroute_status_writer_*` metrics.
#[derive(Clone)]
pub struct LeaseReport {
    pub status: Arc<ReloadStatus>,
    pub metrics: Arc<Metrics>,
}

impl LeaseReport {
    fn set(&self, lease: &str, identity: &str, leader: bool, error: Option<String>) {
        self.metrics.status_writer_leader.set(i64::from(leader));
        self.metrics
            .status_writer_lease_ok
            .set(i64::from(error.is_none()));
        self.status.update(|s| {
            s.status_writer = Some(StatusWriterState {
                lease: lease.to_string(),
                identity: identity.to_string(),
                leader,
                error,
            })
        });
    }
}

/// Hold the Lease `namespace/name` as `identity` whenever possible; `leader` says whether we
/// hold it, `report` whether it can be had at all. On shutdown the Lease is released whenever
/// we hold it, even if we won it a moment ago, so another replica takes over at once instead
/// of after [`LEASE_DURATION`].
pub async fn elect(
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    leader: watch::Sender<bool>,
    report: LeaseReport,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let lease = format!("{namespace}/{name}");
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    // (holder, renewTime, resourceVersion) as last observed, and when it last changed.
    let mut observed: Option<(Option<String>, Option<MicroTime>, Option<String>)> = None;
    let mut observed_at = Instant::now();
    let mut last_renew: Option<Instant> = None;
    let mut warned = false;
    loop {
        let (held, error) = match try_lease(&api, &name, &identity, &mut observed, &mut observed_at)
            .await
        {
            Ok(held) => {
                if warned {
                    tracing::info!(%lease, "leader election: the lease can be had again");
                }
                warned = false;
                if held {
                    last_renew = Some(Instant::now());
                }
                (held, None)
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(%lease, error = %e, "leader election: cannot read, take or renew the lease; route status and Events are not written until it can (see /status on the admin port)");
                    warned = true;
                }
                // Keep writing only while the lease we hold is surely still ours.
                let held =
                    *leader.borrow() && last_renew.is_some_and(|t| t.elapsed() < RENEW_DEADLINE);
                (held, Some(format!("lease {lease}: {e}")))
            }
        };
        report.set(&lease, &identity, held, error);
        leader.send_if_modified(|l| {
            if *l != held {
                tracing::info!(%identity, leader = held, "leader election: {}", if held { "this replica now writes status" } else { "another replica writes status" });
                *l = held;
                true
            } else {
                false
            }
        });
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(RETRY_PERIOD) => {}
        }
    }
    leader.send_replace(false);
    // Whatever `leader` said: an attempt that won the lease may have completed just now.
    match tokio::time::timeout(Duration::from_secs(2), release(&api, &name, &identity)).await {
        Ok(Ok(true)) => tracing::info!(%lease, "leader election: lease released"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            tracing::warn!(%lease, error = %e, "leader election: cannot release the lease; another replica takes over when it expires")
        }
        Err(_) => {
            tracing::warn!(%lease, "leader election: releasing the lease timed out; another replica takes over when it expires")
        }
    }
    report.set(&lease, &identity, false, None);
}

/// Give the lease up if we hold it: no holder and a 1 s duration, so the next candidate takes
/// it on its next try. `Ok(true)` when released.
async fn release(api: &Api<Lease>, name: &str, identity: &str) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(name, &PostParams::default(), &lease).await?;
    Ok(true)
}

type Record = (Option<String>, Option<MicroTime>, Option<String>);

async fn try_lease(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    observed: &mut Option<Record>,
    observed_at: &mut Instant,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(identity.to_string()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = (
        spec.holder_identity.clone(),
        spec.renew_time.clone(),
        lease.metadata.resource_version.clone(),
    );
    if observed.as_ref() != Some(&record) {
        *observed = Some(record);
        *observed_at = Instant::now();
    }
    let duration = Duration::from_secs(
        u64::try_from(spec.lease_duration_seconds.unwrap_or(secs).max(1)).unwrap_or(15),
    );
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let mine = holder == Some(identity);
    if !(mine || holder.is_none() || observed_at.elapsed() > duration) {
        return Ok(false);
    }
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(secs),
        acquire_time: if mine {
            spec.acquire_time
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
        ..spec
    });
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What was last reported per route (per leadership term): problems, weights and notes of
/// TrafficSplits, failover notes of every route.
#[derive(Default)]
struct Reported {
    problems: HashMap<ObjectKey, Vec<String>>,
    weights: HashMap<ObjectKey, String>,
    notes: HashMap<ObjectKey, Vec<String>>,
    /// Objects that could not be used, with the message last reported.
    rejected: HashMap<ObjectKey, String>,
    /// Each route's status and watched object as last found in sync (or written and
    /// reported). A snapshot whose entry for a route is the very same pair (`Arc::ptr_eq`:
    /// the incremental compile keeps an untouched route's status, the seam an unchanged
    /// object's info) is skipped, so a snapshot costs what changed instead of a JSON
    /// comparison per route.
    done: HashMap<ObjectKey, (Arc<RouteStatus>, Arc<RouteInfo>)>,
}

impl Reported {
    fn unchanged(&self, key: &ObjectKey, rs: &Arc<RouteStatus>, info: &Arc<RouteInfo>) -> bool {
        self.done
            .get(key)
            .is_some_and(|(s, i)| Arc::ptr_eq(s, rs) && Arc::ptr_eq(i, info))
    }
}

/// Write status and Events from every snapshot while `leader` is true.
pub async fn write(
    client: Client,
    plan: Plan,
    identity: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(identity),
        },
    );
    let mut reported = Reported::default();
    let mut retry = false;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            r = snapshots.changed() => if r.is_err() { return },
            r = leader.changed() => {
                if r.is_err() { return }
                reported = Reported::default();
            }
            // Failed writes are retried; otherwise this is a cheap local comparison.
            () = tokio::time::sleep(if retry { Duration::from_secs(2) } else { Duration::from_secs(30) }) => {}
        }
        if !*leader.borrow() {
            continue;
        }
        let snap = snapshots.borrow_and_update().clone();
        retry = false;
        for rs in &snap.statuses {
            let key = ObjectKey {
                group: rs.kind.group(),
                kind: rs.kind.kind(),
                namespace: crate::intern::intern(&rs.namespace),
                name: crate::intern::intern(&rs.name),
            };
            let Some(info) = snap.infos.get(&key) else {
                continue;
            };
            if reported.unchanged(&key, rs, info) {
                continue;
            }
            if rs.kind == RouteKind::TrafficSplit {
                for ev in split_events(&mut reported, &key, rs, info) {
                    let reference = ObjectReference {
                        api_version: Some(info.api_version.clone()),
                        kind: Some("TrafficSplit".into()),
                        namespace: Some(rs.namespace.clone()),
                        name: Some(rs.name.clone()),
                        uid: info.uid.clone(),
                        ..Default::default()
                    };
                    if let Err(e) = recorder.publish(&ev, &reference).await {
                        tracing::warn!(route = %key, error = %e, "cannot publish event");
                    }
                }
                reported.done.insert(key, (rs.clone(), info.clone()));
                continue;
            }
            let slot = match rs.kind {
                RouteKind::Gateway => Slot::GatewayHttpRoute,
                RouteKind::Linkerd => Slot::LinkerdHttpRoute,
                RouteKind::Grpc => Slot::GatewayGrpcRoute,
                RouteKind::TrafficSplit => continue,
            };
            let Some(ar) = plan.resource(slot) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &rs.namespace, ar);
            let synced = match sync_status(&api, rs, info, &key).await {
                Ok(written) => {
                    if written {
                        tracing::debug!(route = %key, "status written");
                    }
                    true
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(error = %e, "cannot write route status");
                    false
                }
            };
            // The status message says failover is active while it is; Events keep the history.
            for ev in failover_events(&mut reported, &key, rs) {
                let reference = ObjectReference {
                    api_version: Some(info.api_version.clone()),
                    kind: Some(slot.kind().into()),
                    namespace: Some(rs.namespace.clone()),
                    name: Some(rs.name.clone()),
                    uid: info.uid.clone(),
                    ..Default::default()
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(route = %key, error = %e, "cannot publish event");
                }
            }
            if synced {
                reported.done.insert(key, (rs.clone(), info.clone()));
            }
        }
        for r in &snap.rejected {
            if reported.rejected.get(&r.key) == Some(&r.message) {
                continue;
            }
            let reference = ObjectReference {
                api_version: Some(r.api_version.clone()),
                kind: Some(r.key.kind.to_string()),
                namespace: Some(r.key.namespace.to_string()),
                name: Some(r.key.name.to_string()),
                uid: r.uid.clone(),
                ..Default::default()
            };
            match recorder.publish(&rejected_event(r), &reference).await {
                Ok(()) => {
                    reported.rejected.insert(r.key.clone(), r.message.clone());
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(object = %r.key, error = %e, "cannot publish event");
                }
            }
        }
        let live: std::collections::HashSet<&ObjectKey> = snap.infos.keys().collect();
        reported.problems.retain(|k, _| live.contains(k));
        reported.weights.retain(|k, _| live.contains(k));
        reported.notes.retain(|k, _| live.contains(k));
        reported.done.retain(|k, _| live.contains(k));
        let rejected: std::collections::HashSet<&ObjectKey> =
            snap.rejected.iter().map(|r| &r.key).collect();
        reported.rejected.retain(|k, _| rejected.contains(k));
    }
}

/// Our desired `status.parents` entries.
fn desired(rs: &RouteStatus) -> Vec<Value> {
    rs.parents
        .iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect()
}

/// Merge `want` (ours) into `current` (everyone's): others' entries stay as they are, in
/// order; ours replace our old ones. Timestamps carry over while a condition's status holds.
pub fn merge_parents(current: &[Value], want: &[Value], now: &str) -> Vec<Value> {
    let ours_old: Vec<&Value> = current
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME))
        .collect();
    let mut out: Vec<Value> = current
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for w in want {
        let mut entry = w.clone();
        let old = ours_old
            .iter()
            .find(|o| normalize_parent(&o["parentRef"]) == normalize_parent(&w["parentRef"]));
        if let Some(conds) = entry.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds {
                let kept = old.and_then(|o| {
                    o["conditions"].as_array()?.iter().find_map(|oc| {
                        (oc["type"] == c["type"] && oc["status"] == c["status"])
                            .then(|| oc.get("lastTransitionTime").cloned())
                            .flatten()
                    })
                });
                if let Some(o) = c.as_object_mut() {
                    o.insert(
                        "lastTransitionTime".into(),
                        kept.unwrap_or_else(|| Value::String(now.to_string())),
                    );
                }
            }
        }
        out.push(entry);
    }
    out
}

/// Bring our entries of one route's status in line. `Ok(true)` when written.
async fn sync_status(
    api: &Api<DynamicObject>,
    rs: &RouteStatus,
    info: &RouteInfo,
    key: &ObjectKey,
) -> Result<bool, StatusError> {
    let want = desired(rs);
    let want_norm: Vec<Value> = want.iter().map(normalize_parent).collect();
    if want_norm == info.ours {
        return Ok(false);
    }
    let api_err = |source| StatusError::Api {
        route: key.to_string(),
        source,
    };
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let obj = match api.get(&rs.name).await {
            Ok(o) => o,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(api_err(e)),
        };
        let current: Vec<Value> = obj
            .data
            .pointer("/status/parents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ours_now: Vec<Value> = current
            .iter()
            .filter(|p| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME))
            .map(normalize_parent)
            .collect();
        if ours_now == want_norm {
            return Ok(false);
        }
        let merged = merge_parents(&current, &want, &now_rfc3339());
        let patch = json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "status": {"parents": merged},
        });
        match api
            .patch_status(&rs.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(e) if is_conflict(&e) => continue,
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(api_err(e)),
        }
    }
    Err(StatusError::Contended {
        route: key.to_string(),
        attempts: ATTEMPTS,
    })
}

/// Events notes are limited to 1 kB.
fn note(s: String) -> String {
    if s.len() <= 1000 {
        return s;
    }
    let mut end = 1000;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The Warning Event for an object meshroute cannot use.
fn rejected_event(r: &Rejected) -> Event {
    let what = if r.reason == "Unreadable" {
        "meshroute cannot read this object"
    } else {
        "meshroute refused this object"
    };
    Event {
        type_: EventType::Warning,
        reason: r.reason.into(),
        note: Some(note(format!(
            "{what} as {} (an earlier accepted version, if any, keeps serving): {}",
            r.api_version, r.message
        ))),
        action: "Route".into(),
        secondary: None,
    }
}

fn split_events(
    reported: &mut Reported,
    key: &ObjectKey,
    rs: &RouteStatus,
    info: &RouteInfo,
) -> Vec<Event> {
    let mut out = Vec::new();
    let problems = rs.problems();
    let before = reported.problems.insert(key.clone(), problems.clone());
    if before.as_ref() != Some(&problems) {
        if !problems.is_empty() {
            let reason = rs
                .parents
                .iter()
                .flat_map(|p| p.conditions.iter())
                .find(|c| match c.type_ {
                    "PartiallyInvalid" => c.status == "True",
                    _ => c.status != "True",
                })
                .map(|c| c.reason)
                .unwrap_or("Invalid");
            out.push(Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note(problems.join("; "))),
                action: "Route".into(),
                secondary: None,
            });
        } else if before.is_some_and(|b| !b.is_empty()) {
            out.push(Event {
                type_: EventType::Normal,
                reason: "Accepted".into(),
                note: Some("every backend resolves again".into()),
                action: "Route".into(),
                secondary: None,
            });
        }
    }
    if let Some(w) = &info.split_weights {
        if let Some(old) = reported.weights.insert(key.clone(), w.clone()) {
            if &old != w {
                out.push(Event {
                    type_: EventType::Normal,
                    reason: "WeightsChanged".into(),
                    note: Some(note(format!("{old} → {w}"))),
                    action: "Route".into(),
                    secondary: None,
                });
            }
        }
    }
    // What the spec made of the split (e.g. a backend left out on a port it lacks): said once
    // per change, as a Normal Event, since it is the specified behaviour, not a fault.
    // Failover (linkerd-failover's annotation) says when it starts and when it ends.
    out.extend(note_events(reported, key, &rs.notes));
    out
}

/// HTTPRoutes and GRPCRoutes with linkerd-failover's annotation: a `FailoverActive` Event when
/// failover starts (or moves), `FailoverEnded` when every backend has ready endpoints again.
fn failover_events(reported: &mut Reported, key: &ObjectKey, rs: &RouteStatus) -> Vec<Event> {
    let failover: Vec<String> = rs
        .notes
        .iter()
        .filter(|n| n.starts_with(FAILOVER_NOTE))
        .cloned()
        .collect();
    note_events(reported, key, &failover)
}

/// `FailoverActive` / `BackendExcluded` when a route's notes change, `FailoverEnded` when
/// failover stops.
fn note_events(reported: &mut Reported, key: &ObjectKey, notes: &[String]) -> Vec<Event> {
    let mut out = Vec::new();
    let failing_over = |notes: &[String]| notes.iter().any(|n| n.starts_with(FAILOVER_NOTE));
    let before = reported.notes.insert(key.clone(), notes.to_vec());
    if !notes.is_empty() && before.as_deref() != Some(notes) {
        out.push(Event {
            type_: EventType::Normal,
            reason: if failing_over(notes) {
                "FailoverActive"
            } else {
                "BackendExcluded"
            }
            .into(),
            note: Some(note(notes.join("; "))),
            action: "Route".into(),
            secondary: None,
        });
    }
    if !failing_over(notes) && before.is_some_and(|b| failing_over(&b)) {
        out.push(Event {
            type_: EventType::Normal,
            reason: "FailoverEnded".into(),
            note: Some("every backend has ready endpoints again; weights as written".into()),
            action: "Route".into(),
            secondary: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_skipped_only_while_its_status_and_object_are_the_ones_found_in_sync() {
        let key = |name: &str| ObjectKey {
            group: crate::model::GATEWAY_GROUP,
            kind: "HTTPRoute",
            namespace: "ns".into(),
            name: name.into(),
        };
        let status = |name: &str| {
            Arc::new(RouteStatus {
                kind: RouteKind::Gateway,
                api_version: "gateway.networking.k8s.io/v1".into(),
                namespace: "ns".into(),
                name: name.into(),
                generation: Some(1),
                parents: vec![],
                notes: vec![],
            })
        };
        let info = || {
            Arc::new(RouteInfo {
                api_version: "gateway.networking.k8s.io/v1".into(),
                uid: None,
                ours: vec![],
                split_weights: None,
            })
        };
        let (rs, ri) = (status("a"), info());
        let mut reported = Reported::default();
        assert!(!reported.unchanged(&key("a"), &rs, &ri), "never synced");
        reported.done.insert(key("a"), (rs.clone(), ri.clone()));
        assert!(reported.unchanged(&key("a"), &rs, &ri));
        assert!(!reported.unchanged(&key("b"), &rs, &ri), "another route");
        // Equal content in a new Arc means a recompile or a watch event: compared again.
        assert!(
            !reported.unchanged(&key("a"), &status("a"), &ri),
            "recompiled"
        );
        assert!(
            !reported.unchanged(&key("a"), &rs, &info()),
            "object changed"
        );
    }

    #[test]
    fn merge_keeps_other_controllers_entries_and_replaces_ours() {
        let current = vec![
            json!({"parentRef": {"name": "smiley"}, "controllerName": "linkerd.io/policy-controller",
                   "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "t0"}]}),
            json!({"parentRef": {"name": "old"}, "controllerName": CONTROLLER_NAME,
                   "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "t1"}]}),
            json!({"parentRef": {"name": "smiley"}, "controllerName": CONTROLLER_NAME,
                   "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "t2"},
                                  {"type": "ResolvedRefs", "status": "True", "lastTransitionTime": "t3"}]}),
        ];
        let want = vec![
            json!({"parentRef": {"name": "smiley"}, "controllerName": CONTROLLER_NAME,
            "conditions": [{"type": "Accepted", "status": "True"},
                           {"type": "ResolvedRefs", "status": "False"}]}),
        ];
        let merged = merge_parents(&current, &want, "now");
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0], current[0], "Linkerd's entry is untouched");
        let conds = merged[1]["conditions"].as_array().unwrap();
        assert_eq!(
            conds[0]["lastTransitionTime"], "t2",
            "unchanged status keeps its time"
        );
        assert_eq!(
            conds[1]["lastTransitionTime"], "now",
            "changed status gets a new time"
        );
    }

    #[test]
    fn merge_into_empty_status_adds_ours() {
        let want = vec![
            json!({"parentRef": {"name": "s"}, "controllerName": CONTROLLER_NAME,
            "conditions": [{"type": "Accepted", "status": "True"}]}),
        ];
        let merged = merge_parents(&[], &want, "now");
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0]["conditions"][0]["lastTransitionTime"], "now");
    }

    #[test]
    fn trafficsplit_failover_is_told_in_events_when_it_starts_and_ends() {
        let key = ObjectKey {
            group: "split.smi-spec.io",
            kind: "TrafficSplit",
            namespace: "ns".into(),
            name: "s".into(),
        };
        let info = RouteInfo {
            api_version: "split.smi-spec.io/v1alpha2".into(),
            uid: None,
            ours: vec![],
            split_weights: Some("a=1, b=0".into()),
        };
        let status = |notes: Vec<String>| RouteStatus {
            kind: RouteKind::TrafficSplit,
            api_version: info.api_version.clone(),
            namespace: "ns".into(),
            name: "s".into(),
            generation: None,
            parents: vec![],
            notes,
        };
        let reasons = |reported: &mut Reported, notes: Vec<String>| -> Vec<String> {
            split_events(reported, &key, &status(notes), &info)
                .into_iter()
                .map(|e| e.reason)
                .collect()
        };
        let mut reported = Reported::default();
        assert!(reasons(&mut reported, vec![]).is_empty());
        let active = vec![format!(
            "{FAILOVER_NOTE}: backend ns/a:80 has no ready endpoints"
        )];
        assert_eq!(reasons(&mut reported, active.clone()), ["FailoverActive"]);
        assert!(reasons(&mut reported, active).is_empty(), "said once");
        assert_eq!(reasons(&mut reported, vec![]), ["FailoverEnded"]);
    }

    #[test]
    fn httproute_failover_is_told_in_events_and_other_notes_are_not() {
        let key = ObjectKey {
            group: "gateway.networking.k8s.io",
            kind: "HTTPRoute",
            namespace: "ns".into(),
            name: "r".into(),
        };
        let status = |notes: Vec<String>| RouteStatus {
            kind: RouteKind::Gateway,
            api_version: "gateway.networking.k8s.io/v1".into(),
            namespace: "ns".into(),
            name: "r".into(),
            generation: None,
            parents: vec![],
            notes,
        };
        let mut reported = Reported::default();
        let mut reasons = |notes: Vec<String>| -> Vec<String> {
            failover_events(&mut reported, &key, &status(notes))
                .into_iter()
                .map(|e| e.reason)
                .collect()
        };
        assert!(reasons(vec![]).is_empty());
        assert!(reasons(vec!["something else".into()]).is_empty());
        let active = format!(
            "{FAILOVER_NOTE}: backend ns/a:80 (cluster east) has no ready endpoints, its share goes to ns/b:80 (cluster west)"
        );
        assert_eq!(reasons(vec![active.clone()]), ["FailoverActive"]);
        assert!(reasons(vec![active.clone()]).is_empty(), "said once");
        assert_eq!(reasons(vec![]), ["FailoverEnded"]);
        assert!(reasons(vec![]).is_empty());
        assert_eq!(reasons(vec![active]), ["FailoverActive"], "and again");
    }
}
