//! The real-cluster test loop: a kube-apiserver from tests/kube-testenv (or the cluster in
//! MESHROUTE_TEST_KUBECONFIG), driven with kube-rs. Proves what the Kubernetes-mode tests
//! rely on: selector-less Services and hand-written EndpointSlices arrive through a
//! kube::runtime watcher, a CRD installed via the API gets Established, its /status takes a
//! server-side apply, clusters are independent, and a token user only gets what RBAC grants.
//!
//! Without a usable cluster these tests print `skipping: ...` and pass, except under CI=true,
//! where they fail.

#[path = "support/kube.rs"]
mod kube_support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use kube_support::{unique_name, TestCluster};

/// Bound for every wait on the API server.
const WAIT: Duration = Duration::from_secs(30);

/// A tiny CRD with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "testenv.meshroute.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct WidgetStatus {
    phase: String,
    observed_size: u32,
}

/// Reads watch events until one satisfies `want`, failing after WAIT.
async fn wait_event<K, S>(
    stream: &mut S,
    what: &str,
    mut want: impl FnMut(&Event<K>) -> bool,
) -> Result<Event<K>>
where
    K: Debug,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, async {
        while let Some(event) = stream.next().await {
            let event = event.with_context(|| format!("watch error while waiting for {what}"))?;
            if want(&event) {
                return Ok(event);
            }
        }
        bail!("watch stream ended while waiting for {what}")
    })
    .await
    .with_context(|| format!("timed out after {WAIT:?} waiting for {what}"))?
}

fn applied<K: ResourceExt + Clone>(event: &Event<K>, name: &str) -> Option<K> {
    match event {
        Event::Apply(obj) if obj.name_any() == name => Some(obj.clone()),
        _ => None,
    }
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Best effort: an external cluster would otherwise collect test namespaces. (The test
/// server has no namespace controller, and is thrown away anyway.)
async fn cleanup_namespace(cluster: &TestCluster, client: &Client, name: &str) {
    if cluster.is_external() {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await;
    }
}

fn selectorless_service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            // No selector: endpoints come from our own EndpointSlices.
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint_slice(name: &str, service: &str, address: &str, ready: bool) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.to_string(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            // A real API server refuses loopback addresses here.
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn endpoint_ready(slice: &EndpointSlice) -> Option<bool> {
    slice.endpoints.first()?.conditions.as_ref()?.ready
}

#[tokio::test]
async fn services_endpointslices_and_crd_status_round_trip() -> Result<()> {
    let Some(cluster) = TestCluster::start("testenv") else {
        return Ok(());
    };
    let client = cluster.client().await?;
    let ns = unique_name("mr-testenv");
    create_namespace(&client, &ns).await?;

    // Watchers first, so the objects arrive as watch events, not in the initial list.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let mut service_events = watcher(services.clone(), watcher::Config::default()).boxed();
    let mut slice_events = watcher(
        slices.clone(),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
    )
    .boxed();
    wait_event(
        &mut service_events,
        "the Service watch's initial list",
        |e| matches!(e, Event::InitDone),
    )
    .await?;
    wait_event(
        &mut slice_events,
        "the EndpointSlice watch's initial list",
        |e| matches!(e, Event::InitDone),
    )
    .await?;

    // Loopback is refused, as the harness docs say.
    let refused = slices
        .create(
            &PostParams::default(),
            &endpoint_slice("web-lo", "web", "127.0.0.1", true),
        )
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.is_invalid()),
        "a loopback EndpointSlice address should be refused, got {refused:?}"
    );

    services
        .create(&PostParams::default(), &selectorless_service("web"))
        .await
        .context("creating Service web")?;
    slices
        .create(
            &PostParams::default(),
            &endpoint_slice("web-1", "web", "10.213.0.2", true),
        )
        .await
        .context("creating EndpointSlice web-1")?;

    let svc = wait_event(&mut service_events, "Service web", |e| {
        applied(e, "web").is_some()
    })
    .await
    .and_then(|e| applied(&e, "web").context("unreachable"))?;
    let spec = svc.spec.context("Service without spec")?;
    ensure!(
        spec.selector.is_none(),
        "Service web got a selector: {:?}",
        spec.selector
    );
    ensure!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.")),
        "Service web got no cluster IP: {:?}",
        spec.cluster_ip
    );

    let slice = wait_event(&mut slice_events, "EndpointSlice web-1", |e| {
        applied(e, "web-1").is_some()
    })
    .await
    .and_then(|e| applied(&e, "web-1").context("unreachable"))?;
    ensure!(
        slice.endpoints[0].addresses == ["10.213.0.2"] && endpoint_ready(&slice) == Some(true),
        "unexpected EndpointSlice: {slice:?}"
    );

    // An update arrives too: the endpoint turns not-ready.
    slices
        .patch(
            "web-1",
            &PatchParams::apply("meshroute-testenv").force(),
            &Patch::Apply(endpoint_slice("web-1", "web", "10.213.0.2", false)),
        )
        .await
        .context("applying EndpointSlice web-1 (not ready)")?;
    wait_event(
        &mut slice_events,
        "EndpointSlice web-1 to turn not-ready",
        |e| applied(e, "web-1").is_some_and(|s| endpoint_ready(&s) == Some(false)),
    )
    .await?;

    // The CRD, installed through the API and waited for.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = Widget::crd_name();
    crds.patch(
        crd_name,
        &PatchParams::apply("meshroute-testenv").force(),
        &Patch::Apply(Widget::crd()),
    )
    .await
    .context("applying the Widget CRD")?;
    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), crd_name, conditions::is_crd_established()),
    )
    .await
    .context("timed out waiting for the Widget CRD to be Established")?
    .context("waiting for the Widget CRD")?;

    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);
    let widget = Widget::new("w1", WidgetSpec { size: 3 });
    widgets
        .patch(
            "w1",
            &PatchParams::apply("meshroute-testenv"),
            &Patch::Apply(&widget),
        )
        .await
        .context("applying Widget w1")?;

    // Server-side apply on /status, as meshroute's status writer does.
    let status_manager = "meshroute-testenv-status";
    let patched = widgets
        .patch_status(
            "w1",
            &PatchParams::apply(status_manager).force(),
            &Patch::Apply(json!({
                "apiVersion": "testenv.meshroute.dev/v1",
                "kind": "Widget",
                "status": { "phase": "Ready", "observedSize": 3 },
            })),
        )
        .await
        .context("applying Widget w1's status")?;
    let want = WidgetStatus {
        phase: "Ready".into(),
        observed_size: 3,
    };
    ensure!(
        patched.status.as_ref() == Some(&want),
        "status after apply: {:?}",
        patched.status
    );

    let fetched = widgets.get("w1").await.context("getting Widget w1")?;
    ensure!(
        fetched.status == Some(want),
        "stored status: {:?}",
        fetched.status
    );
    ensure!(
        fetched.spec.size == 3,
        "status apply changed the spec: {:?}",
        fetched.spec
    );
    let status_entry = fetched
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some(status_manager))
        .context("no managedFields entry for the status manager")?;
    ensure!(
        status_entry.subresource.as_deref() == Some("status"),
        "status manager's managedFields entry is not for /status: {status_entry:?}"
    );

    // /status is a real subresource: a status in the main resource is ignored.
    let mut with_status = Widget::new("w1", WidgetSpec { size: 4 });
    with_status.status = Some(WidgetStatus {
        phase: "Sneaky".into(),
        observed_size: 4,
    });
    let after = widgets
        .patch(
            "w1",
            &PatchParams::apply("meshroute-testenv"),
            &Patch::Apply(&with_status),
        )
        .await
        .context("applying Widget w1 with a status in the main resource")?;
    ensure!(
        after.spec.size == 4 && after.status.as_ref().map(|s| s.phase.as_str()) == Some("Ready"),
        "main-resource apply should change spec only: {after:?}"
    );

    cleanup_namespace(&cluster, &client, &ns).await;
    Ok(())
}

#[tokio::test]
async fn two_clusters_side_by_side_and_rbac_users() -> Result<()> {
    let Some(north) = TestCluster::start_with_users("north", &["reader:meshroute-readers"]) else {
        return Ok(());
    };
    let Some(east) = TestCluster::start("east") else {
        return Ok(());
    };
    let north_client = north.client().await?;
    let east_client = east.client().await?;

    // Independent clusters (unless both were pointed at the same external one).
    let ns = unique_name("mr-north");
    create_namespace(&north_client, &ns).await?;
    let same_cluster = north.is_external() && north.kubeconfig() == east.kubeconfig();
    if !same_cluster {
        let in_east = Api::<Namespace>::all(east_client.clone())
            .get_opt(&ns)
            .await
            .context("looking for north's namespace in east")?;
        ensure!(
            in_east.is_none(),
            "namespace {ns} created in north shows up in east"
        );
    }
    Api::<Service>::namespaced(north_client.clone(), &ns)
        .create(&PostParams::default(), &selectorless_service("web"))
        .await
        .context("creating Service web in north")?;

    // The reader has no permissions until bound.
    let reader = north.user_client("reader").await?;
    let reader_services: Api<Service> = Api::namespaced(reader.clone(), &ns);
    match reader_services.list(&Default::default()).await {
        Err(kube::Error::Api(s)) if s.is_forbidden() => {}
        other => bail!("an unbound user should be forbidden to list services, got {other:?}"),
    }

    // Bind read access to the user's group.
    let role_name = unique_name("mr-service-reader");
    Api::<ClusterRole>::all(north_client.clone())
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["services".into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                }]),
                ..Default::default()
            },
        )
        .await
        .context("creating the ClusterRole")?;
    Api::<ClusterRoleBinding>::all(north_client.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(role_name.clone()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: role_name.clone(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "meshroute-readers".into(),
                    ..Default::default()
                }]),
            },
        )
        .await
        .context("creating the ClusterRoleBinding")?;

    // The RBAC authorizer learns of the binding through an informer: allow a moment.
    let listed = tokio::time::timeout(WAIT, async {
        loop {
            match reader_services.list(&Default::default()).await {
                Ok(list) => return Ok(list),
                Err(kube::Error::Api(s)) if s.is_forbidden() => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .context("the reader was still forbidden after the binding")?
    .context("listing services as the reader")?;
    ensure!(
        listed.items.iter().any(|s| s.name_any() == "web"),
        "the reader does not see Service web"
    );

    // ...and nothing more.
    match reader_services
        .create(&PostParams::default(), &selectorless_service("intruder"))
        .await
    {
        Err(kube::Error::Api(s)) if s.is_forbidden() => {}
        other => bail!("the reader should not create services, got {other:?}"),
    }

    if north.is_external() {
        let _ = Api::<ClusterRoleBinding>::all(north_client.clone())
            .delete(&role_name, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(north_client.clone())
            .delete(&role_name, &DeleteParams::default())
            .await;
    }
    cleanup_namespace(&north, &north_client, &ns).await;
    Ok(())
}
