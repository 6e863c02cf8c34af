//! Linked clusters from Linkerd's own objects: `Link` resources (multicluster.linkerd.io) in the
//! links namespace and the kubeconfig Secrets they name (`spec.clusterCredentialsSecret`, key
//! `kubeconfig`, in the Link's namespace). Each Link becomes a linked cluster named
//! `spec.targetClusterName`, watched like one given with `--link`; adding, changing or deleting a
//! Link takes effect without a restart, and so does editing its credentials Secret (the Secrets
//! of the namespace are watched: an edited kubeconfig restarts that cluster's watches, a broken
//! one leaves the last good ones running, a Link waits for a Secret not there yet). Read-only:
//! list/watch Links, get/list/watch Secrets; where Secrets cannot be listed (an older Role with
//! `get` only) each new or changed Link reads its Secret with a get.

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

/// The kubeconfig a credentials Secret holds (`data.kubeconfig`).
fn kubeconfig_of(secret: &Secret) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .map(|b| b.0.clone())
}

/// A client for a kubeconfig read from a credentials Secret.
async fn client_from_kubeconfig(bytes: &[u8]) -> Result<Client, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("data.kubeconfig: {e}"))?;
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
    /// The kubeconfig they were started with: an edited Secret restarts them.
    kubeconfig: Vec<u8>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One watched kind as a map by name, replaced whole by a relist.
struct Listed<K> {
    items: BTreeMap<String, K>,
    /// A relist in progress.
    listing: Option<BTreeMap<String, K>>,
    synced: bool,
    failing: bool,
}

impl<K: kube::Resource> Listed<K> {
    fn new() -> Self {
        Listed {
            items: BTreeMap::new(),
            listing: None,
            synced: false,
            failing: false,
        }
    }

    /// Apply one watch event; true when the map changed (a relist counts once complete).
    fn handle(
        &mut self,
        what: &str,
        namespace: &str,
        ev: Result<Event<K>, watcher::Error>,
    ) -> bool {
        let ev = match ev {
            Ok(ev) => {
                if self.failing {
                    tracing::info!(%namespace, "{what} watch resumed");
                    self.failing = false;
                }
                ev
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(%namespace, error = %e, "{what} watch failed; retrying with backoff, linked clusters keep serving");
                }
                self.failing = true;
                return false;
            }
        };
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match ev {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name(&o), o);
                false
            }
            Event::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(o) => {
                self.items.insert(name(&o), o);
                true
            }
            Event::Delete(o) => self.items.remove(&name(&o)).is_some(),
        }
    }
}

/// The Links of one namespace and the linked-cluster watches they started.
struct Linker {
    namespace: String,
    watch_namespace: Option<String>,
    secrets_api: Api<Secret>,
    tx: mpsc::UnboundedSender<SourceEvent>,
    /// By Link name.
    active: BTreeMap<String, Watches>,
    /// What was last said about a Link that cannot be used (said once per change).
    complaints: BTreeMap<String, String>,
}

impl Linker {
    fn complain(&mut self, link: &str, why: String) {
        if self.complaints.get(link) != Some(&why) {
            tracing::warn!(link = %format!("{}/{link}", self.namespace), "Link cannot be used: {why}");
            self.complaints.insert(link.to_string(), why);
        }
    }

    /// Bring the linked-cluster watches in line with the Links and Secrets; `false` when the
    /// seam is gone.
    async fn reconcile(&mut self, links: &Listed<DynamicObject>, secrets: &Listed<Secret>) -> bool {
        let ns = self.namespace.clone();
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|k| !links.items.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            self.complaints.remove(&name);
            if let Some(w) = self.active.remove(&name) {
                let cluster = w.spec.cluster.clone();
                drop(w);
                tracing::info!(link = %format!("{ns}/{name}"), %cluster, "Link removed: cluster unlinked");
                if self
                    .tx
                    .send(SourceEvent::Unlinked(Arc::from(cluster.as_str())))
                    .is_err()
                {
                    return false;
                }
            }
        }
        self.complaints.retain(|k, _| links.items.contains_key(k));
        for (name, link) in &links.items {
            let spec = match link_spec(link) {
                Ok(s) => s,
                Err(e) => {
                    self.complain(name, e);
                    continue;
                }
            };
            let current = self.active.get(name);
            let kubeconfig = if secrets.synced {
                secrets.items.get(&spec.secret).map(kubeconfig_of)
            } else if current.is_some_and(|w| w.spec == spec) {
                // Secrets cannot be watched (RBAC older than `list, watch` on Secrets): a Link
                // change is what re-reads its Secret.
                continue;
            } else {
                match get_secret(&self.secrets_api, &spec.secret).await {
                    Ok(s) => Some(kubeconfig_of(&s)),
                    Err(kube::Error::Api(e)) if e.code == 404 => None,
                    Err(e) => {
                        self.complain(
                            name,
                            format!("credentials Secret {ns}/{}: {e}", spec.secret),
                        );
                        continue;
                    }
                }
            };
            let kubeconfig = match kubeconfig {
                Some(Some(k)) => k,
                Some(None) => {
                    self.complain(
                        name,
                        format!(
                            "credentials Secret {ns}/{} has no data.kubeconfig",
                            spec.secret
                        ),
                    );
                    continue;
                }
                None => {
                    // A linked cluster keeps serving when its Secret goes; a new Link waits for it.
                    self.complain(
                        name,
                        format!(
                            "credentials Secret {ns}/{} not found (waiting for it)",
                            spec.secret
                        ),
                    );
                    continue;
                }
            };
            if current.is_some_and(|w| w.spec == spec && w.kubeconfig == kubeconfig) {
                continue;
            }
            let client = match client_from_kubeconfig(&kubeconfig).await {
                Ok(c) => c,
                Err(e) => {
                    // A broken edit: the watches of the last good kubeconfig keep going.
                    self.complain(
                        name,
                        format!("credentials Secret {ns}/{}: {e}", spec.secret),
                    );
                    continue;
                }
            };
            self.complaints.remove(name);
            let mut reread = false;
            if let Some(old) = self.active.remove(name) {
                let old_cluster = old.spec.cluster.clone();
                reread = old.spec == spec;
                drop(old);
                if old_cluster != spec.cluster
                    && self
                        .tx
                        .send(SourceEvent::Unlinked(Arc::from(old_cluster.as_str())))
                        .is_err()
                {
                    return false;
                }
            }
            let linked = LinkedCluster {
                name: Arc::from(spec.cluster.as_str()),
                client,
            };
            if reread {
                tracing::info!(link = %format!("{ns}/{name}"), cluster = %spec.cluster, secret = %spec.secret, "credentials Secret changed: watching linked cluster with the new kubeconfig");
            } else {
                tracing::info!(link = %format!("{ns}/{name}"), cluster = %spec.cluster, "Link: watching linked cluster");
            }
            // Linked again for a re-read: the cluster's objects stay until the new watches
            // have listed (a relist replaces them atomically).
            if self
                .tx
                .send(SourceEvent::Linked(linked.name.clone()))
                .is_err()
            {
                return false;
            }
            let tasks = spawn_linked(&linked, self.watch_namespace.as_deref(), &self.tx);
            self.active.insert(
                name.clone(),
                Watches {
                    spec,
                    kubeconfig,
                    tasks,
                },
            );
        }
        true
    }
}

/// Watch the Links of `namespace` and the Secrets there, keeping one set of linked-cluster
/// watches per Link (restarted when its credentials Secret changes), sending into the source
/// seam. Runs until the seam closes (or the task is aborted).
pub async fn run(
    client: Client,
    ar: ApiResource,
    namespace: String,
    watch_namespace: Option<String>,
    tx: mpsc::UnboundedSender<SourceEvent>,
) {
    let links_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let secrets_api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut link_events =
        std::pin::pin!(watcher::watcher(links_api, watcher::Config::default()).default_backoff());
    let mut secret_events =
        std::pin::pin!(
            watcher::watcher(secrets_api.clone(), watcher::Config::default()).default_backoff()
        );
    let mut links = Listed::<DynamicObject>::new();
    let mut secrets = Listed::<Secret>::new();
    let mut linker = Linker {
        namespace: namespace.clone(),
        watch_namespace,
        secrets_api,
        tx,
        active: BTreeMap::new(),
        complaints: BTreeMap::new(),
    };
    let mut was_ready = false;
    loop {
        let changed = tokio::select! {
            ev = link_events.next() => match ev {
                Some(ev) => links.handle("Link", &namespace, ev),
                None => return,
            },
            ev = secret_events.next() => match ev {
                Some(ev) => secrets.handle("Secret", &namespace, ev),
                None => return,
            },
        };
        // Once the Links have listed, and the Secrets too (or cannot be watched: then each
        // new Link reads its Secret with a get).
        let ready = links.synced && (secrets.synced || secrets.failing);
        if ready && (changed || !was_ready) && !linker.reconcile(&links, &secrets).await {
            return;
        }
        was_ready = ready;
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

    fn secret(name: &str, kubeconfig: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "linkerd-multicluster"},
            "data": {"kubeconfig": k8s_openapi::ByteString(kubeconfig.as_bytes().to_vec())}
        }))
        .expect("secret")
    }

    #[test]
    fn secrets_are_listed_whole_then_followed_and_their_kubeconfig_read() {
        let mut l = Listed::<Secret>::new();
        let ns = "linkerd-multicluster";
        assert!(!l.handle("Secret", ns, Ok(Event::Init)));
        assert!(!l.handle("Secret", ns, Ok(Event::InitApply(secret("a", "one")))));
        assert!(
            l.items.is_empty() && !l.synced,
            "nothing before the list is complete"
        );
        assert!(l.handle("Secret", ns, Ok(Event::InitDone)));
        assert!(l.synced);
        assert_eq!(kubeconfig_of(&l.items["a"]), Some(b"one".to_vec()));
        // An edit in place is seen.
        assert!(l.handle("Secret", ns, Ok(Event::Apply(secret("a", "two")))));
        assert_eq!(kubeconfig_of(&l.items["a"]), Some(b"two".to_vec()));
        // A failing watch changes nothing and is remembered until it resumes.
        let err = watcher::Error::NoResourceVersion;
        assert!(!l.handle("Secret", ns, Err(err)));
        assert!(l.failing && l.items.contains_key("a"));
        // A relist without `a` drops it, atomically.
        assert!(!l.handle("Secret", ns, Ok(Event::Init)));
        assert!(!l.failing);
        assert!(!l.handle("Secret", ns, Ok(Event::InitApply(secret("b", "three")))));
        assert!(
            l.items.contains_key("a"),
            "the old list serves until the new one is complete"
        );
        assert!(l.handle("Secret", ns, Ok(Event::InitDone)));
        assert_eq!(l.items.keys().collect::<Vec<_>>(), ["b"]);
        assert!(l.handle("Secret", ns, Ok(Event::Delete(secret("b", "")))));
        assert!(l.items.is_empty());
    }
}
