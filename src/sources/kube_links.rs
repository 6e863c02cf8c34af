//! Linked clusters from Linkerd's own objects: `Link` resources (multicluster.linkerd.io) in the
//! links namespace and the kubeconfig Secrets they name (`spec.clusterCredentialsSecret`, key
//! `kubeconfig`, in the Link's namespace). Each Link becomes a linked cluster named
//! `spec.targetClusterName`, watched like one given with `--link`; adding, changing or deleting a
//! Link takes effect without a restart. Read-only: list/watch Links, get Secrets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::kube::{spawn_linked, LinkedCluster, SourceEvent};

pub const LINK_GROUP: &str = "multicluster.linkerd.io";
/// Namespace Linkerd multicluster keeps its Links and credentials in.
pub const DEFAULT_LINK_NAMESPACE: &str = "linkerd-multicluster";

/// What a Link says about its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub cluster: String,
    pub secret: String,
}

/// `spec.targetClusterName` and `spec.clusterCredentialsSecret` of a Link, or why not.
pub fn link_spec(link: &DynamicObject) -> Result<LinkSpec, String> {
    let field = |f: &str| {
        link.data
            .pointer(&format!("/spec/{f}"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("spec.{f}: required"))
    };
    Ok(LinkSpec {
        cluster: field("targetClusterName")?,
        secret: field("clusterCredentialsSecret")?,
    })
}

/// A client for the kubeconfig held by a credentials Secret (`data.kubeconfig`).
async fn client_from_secret(secret: &Secret) -> Result<Client, String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .ok_or("has no data.kubeconfig")?;
    let text = std::str::from_utf8(&bytes.0).map_err(|e| format!("data.kubeconfig: {e}"))?;
    let kc = Kubeconfig::from_yaml(text).map_err(|e| format!("data.kubeconfig: {e}"))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("data.kubeconfig: {e}"))?;
    Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))
}

/// The Link resource the API server serves (best version first), if any.
pub async fn discover_links(client: &Client) -> Result<Option<ApiResource>, kube::Error> {
    let discovery = kube::Discovery::new(client.clone())
        .filter(&[LINK_GROUP])
        .run()
        .await?;
    Ok(discovery.get(LINK_GROUP).and_then(|g| {
        g.recommended_kind("Link").map(|(ar, _)| ar).or_else(|| {
            g.versions()
                .find_map(|v| {
                    g.versioned_resources(v)
                        .into_iter()
                        .find(|(ar, _)| ar.kind == "Link")
                })
                .map(|(ar, _)| ar)
        })
    }))
}

/// The watches of one linked cluster; dropping it stops them.
struct Watches {
    spec: LinkSpec,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Watch the Links of `namespace` and keep one set of linked-cluster watches per Link, sending
/// into the source seam. Runs until the seam closes (or the task is aborted).
pub async fn run(
    client: Client,
    ar: ApiResource,
    namespace: String,
    watch_namespace: Option<String>,
    tx: mpsc::UnboundedSender<SourceEvent>,
) {
    let links: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let mut stream =
        std::pin::pin!(watcher::watcher(links, watcher::Config::default()).default_backoff());
    // By Link name.
    let mut active: BTreeMap<String, Watches> = BTreeMap::new();
    // A relist in progress: the Links seen so far.
    let mut listing: Option<Vec<DynamicObject>> = None;
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => {
                if failing {
                    tracing::info!(namespace = %namespace, "Link watch resumed");
                    failing = false;
                }
                ev
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(namespace = %namespace, error = %e, "Link watch failed; retrying with backoff, linked clusters keep serving");
                }
                failing = true;
                continue;
            }
        };
        let (upserts, deletes): (Vec<DynamicObject>, Vec<String>) = match ev {
            Event::Init => {
                listing = Some(Vec::new());
                continue;
            }
            Event::InitApply(l) => {
                listing.get_or_insert_with(Vec::new).push(l);
                continue;
            }
            Event::InitDone => {
                let listed = listing.take().unwrap_or_default();
                let names: Vec<String> = listed
                    .iter()
                    .filter_map(|l| l.metadata.name.clone())
                    .collect();
                let gone = active
                    .keys()
                    .filter(|k| !names.contains(k))
                    .cloned()
                    .collect();
                (listed, gone)
            }
            Event::Apply(l) => (vec![l], vec![]),
            Event::Delete(l) => (vec![], l.metadata.name.into_iter().collect()),
        };
        for name in deletes {
            if let Some(w) = active.remove(&name) {
                let cluster = w.spec.cluster.clone();
                drop(w);
                tracing::info!(link = %format!("{namespace}/{name}"), %cluster, "Link removed: cluster unlinked");
                if tx
                    .send(SourceEvent::Unlinked(Arc::from(cluster.as_str())))
                    .is_err()
                {
                    return;
                }
            }
        }
        for link in upserts {
            let name = link.metadata.name.clone().unwrap_or_default();
            let spec = match link_spec(&link) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(link = %format!("{namespace}/{name}"), "Link cannot be used: {e}");
                    continue;
                }
            };
            if active.get(&name).is_some_and(|w| w.spec == spec) {
                continue;
            }
            let secret = match get_secret(&secrets, &spec.secret).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(link = %format!("{namespace}/{name}"), secret = %spec.secret, "Link cannot be used: credentials Secret {}/{}: {e}", namespace, spec.secret);
                    continue;
                }
            };
            let client = match client_from_secret(&secret).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(link = %format!("{namespace}/{name}"), "Link cannot be used: credentials Secret {namespace}/{}: {e}", spec.secret);
                    continue;
                }
            };
            if let Some(old) = active.remove(&name) {
                let old_cluster = old.spec.cluster.clone();
                drop(old);
                if old_cluster != spec.cluster
                    && tx
                        .send(SourceEvent::Unlinked(Arc::from(old_cluster.as_str())))
                        .is_err()
                {
                    return;
                }
            }
            let linked = LinkedCluster {
                name: Arc::from(spec.cluster.as_str()),
                client,
            };
            tracing::info!(link = %format!("{namespace}/{name}"), cluster = %spec.cluster, "Link: watching linked cluster");
            if tx.send(SourceEvent::Linked(linked.name.clone())).is_err() {
                return;
            }
            let tasks = spawn_linked(&linked, watch_namespace.as_deref(), &tx);
            active.insert(name, Watches { spec, tasks });
        }
    }
}

async fn get_secret(secrets: &Api<Secret>, name: &str) -> Result<Secret, kube::Error> {
    // The Secret may be applied just after its Link: a few quick retries.
    let mut attempt = 0;
    loop {
        match secrets.get(name).await {
            Ok(s) => return Ok(s),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_names_its_cluster_and_credentials() {
        let link: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "multicluster.linkerd.io/v1alpha3", "kind": "Link",
            "metadata": {"name": "east", "namespace": "linkerd-multicluster"},
            "spec": {"targetClusterName": "east", "clusterCredentialsSecret": "cluster-credentials-east"}
        }))
        .expect("link");
        assert_eq!(
            link_spec(&link),
            Ok(LinkSpec {
                cluster: "east".into(),
                secret: "cluster-credentials-east".into()
            })
        );
        let mut bad = link.clone();
        bad.data["spec"]["clusterCredentialsSecret"] = serde_json::json!("");
        assert_eq!(
            link_spec(&bad),
            Err("spec.clusterCredentialsSecret: required".into())
        );
    }
}
