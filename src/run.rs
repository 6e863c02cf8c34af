//! `meshroute run`. File mode: the source seam's loop ([`crate::sources::seam`]) fed by the
//! directory watcher, waiting for the first table, then proxy listener, admin server and (with
//! `--demo`) built-in echo backends and the live split view.
//! Kubernetes mode (`kube: true`): proxy and admin listeners plus the per-parent-port listeners
//! ([`crate::proxy::ports`]), then in the background discovery, watchers, leader election, the
//! status writer ([`crate::sources::kube`]) and the EndpointSlice publisher with meshroute's own
//! addresses ([`crate::sources::kube_endpoints`]); `/ready` turns 200 once every watch has
//! listed and the first table is published.
//!
//! [`start`] binds everything and returns a [`Running`] handle (tests use it with
//! `127.0.0.1:0`); [`run`] is `start` plus waiting for the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use crate::sources::kube::KubeOptions;
use crate::sources::{seam, watch};

use crate::compile::CompileOptions;
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxyConfig};
use watch::ReloadStatus;

/// Everything `meshroute run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Directory of manifests (file mode).
    pub config_dir: PathBuf,
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Start built-in echo backends for loopback endpoints and show the live split.
    pub demo: bool,
    /// Read objects from the Kubernetes API instead of `config_dir`.
    pub kube: bool,
    /// Scope, credentials and leader-election settings of Kubernetes mode.
    pub kube_options: KubeOptions,
    /// Listener limits and upstream timeouts.
    pub proxy: ProxyConfig,
    /// Cluster domain accepted in authorities.
    pub cluster_domain: String,
    /// Reload even without a filesystem event this often (safety net).
    pub resync: Option<Duration>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            config_dir: PathBuf::from("policies"),
            listen: SocketAddr::from(([127, 0, 0, 1], 4140)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9990)),
            demo: false,
            kube: false,
            kube_options: KubeOptions::default(),
            proxy: ProxyConfig::default(),
            cluster_domain: crate::table::DEFAULT_CLUSTER_DOMAIN.to_string(),
            resync: Some(Duration::from_secs(60)),
        }
    }
}

/// A started meshroute: addresses it listens on and the handles to stop it.
#[derive(Debug)]
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub status: Arc<ReloadStatus>,
    stop: signal::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    /// Tasks that finish by themselves on the stop signal (leader election releases its
    /// Lease), waited for on shutdown.
    finishing: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (bounded by the drain timeout), stop the
    /// admin server and the watcher.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.server.await;
        for t in self.finishing {
            // Bounded by the task itself (the Lease release has its own timeout); the margin
            // only guards against a bug there.
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        for t in self.others {
            t.abort();
        }
        match served {
            Ok(r) => r.context("proxy listener failed"),
            Err(e) => Err(anyhow::anyhow!("proxy task failed: {e}")),
        }
    }
}

async fn stopped(mut rx: signal::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The proxy and admin listeners of `config`.
async fn bind(config: &RunConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot bind admin address {}", config.admin))?;
    Ok((listener, admin))
}

/// Load, publish, bind and serve; returns once everything is listening.
pub async fn start(config: RunConfig) -> anyhow::Result<Running> {
    if config.kube {
        return start_kube(config).await;
    }
    let metrics = Arc::new(Metrics::new());
    metrics.set_mode("file");
    let proxy = Proxy::new(metrics, config.proxy.clone());
    let status = Arc::new(ReloadStatus::default());
    let opts = CompileOptions {
        cluster_domain: config.cluster_domain.clone(),
        ..Default::default()
    };

    if !config.config_dir.is_dir() {
        anyhow::bail!(
            "config directory {} does not exist or is not a directory",
            config.config_dir.display()
        );
    }
    // Watch before the initial read so no edit can fall between the two.
    let dir_watch = watch::DirWatch::new(config.config_dir.clone())?;
    let (stop, stop_rx) = signal::channel(false);
    let mut others = Vec::new();
    // The seam: the directory is one feed; one loop compiles and publishes.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (snap_tx, mut snap_rx) =
        tokio::sync::watch::channel(Arc::new(crate::sources::kube::Snapshot::default()));
    {
        let sinks = seam::Sinks {
            proxy: proxy.clone(),
            compile: opts,
            status: status.clone(),
            snapshots: snap_tx,
            parent_ports: None,
            statuses: false,
        };
        let rx_stop = stop_rx.clone();
        others.push(tokio::spawn(async move {
            let mut state = seam::State::new([seam::Feed::files()].into());
            let shutdown = stopped(rx_stop);
            tokio::pin!(shutdown);
            seam::run_loop(rx, &mut state, &sinks, &mut shutdown).await;
        }));
    }
    others.push(tokio::spawn(watch::feed(
        dir_watch,
        tx,
        config.resync,
        stopped(stop_rx.clone()),
    )));
    // Serve once the first table is live.
    snap_rx
        .wait_for(|s| s.synced)
        .await
        .map_err(|_| anyhow::anyhow!("initial load failed"))?;

    if config.demo {
        others.extend(crate::demo::start_backends(proxy.clone(), stopped(stop_rx.clone())).await);
    }

    let (listener, admin) = bind(&config).await?;
    let proxy_addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    tracing::info!(%proxy_addr, %admin_addr, dir = %config.config_dir.display(), "meshroute running");

    let server = tokio::spawn(crate::proxy::server::serve(
        listener,
        proxy.clone(),
        stopped(stop_rx.clone()),
    ));
    {
        let (p, s, rx) = (proxy.clone(), status.clone(), stop_rx.clone());
        others.push(tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(admin, p, s, stopped(rx)).await {
                tracing::error!(error = %e, "admin server failed");
            }
        }));
    }
    let finishing = Vec::new();
    if config.demo {
        others.push(tokio::spawn(crate::demo::show(
            proxy.clone(),
            status.clone(),
            proxy_addr,
            stopped(stop_rx.clone()),
        )));
    }

    Ok(Running {
        proxy_addr,
        admin_addr,
        proxy,
        status,
        stop,
        server,
        finishing,
        others,
    })
}

/// Kubernetes mode: bind, serve an empty (not ready) table, and sync from the API server in
/// the background.
async fn start_kube(config: RunConfig) -> anyhow::Result<Running> {
    use crate::sources::{kube as source, kube_endpoints, kube_status};

    if config.demo {
        tracing::warn!("--demo has no effect in Kubernetes mode");
    }
    let opts = config.kube_options.clone();
    let client = source::client(&opts).await?;
    let linked = source::linked_clients(&opts.links).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_mode("kube");
    let proxy = Proxy::new(metrics, config.proxy.clone());
    let status = Arc::new(ReloadStatus::default());

    let (listener, admin) = bind(&config).await?;
    let proxy_addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    tracing::info!(%proxy_addr, %admin_addr, namespace = opts.namespace.as_deref().unwrap_or("*"), "meshroute running in Kubernetes mode");

    // Transparent serving: every replica listens on the ports our EndpointSlices name, on the
    // IP of --listen; the leader writes the slices.
    let publishing = opts.publish.enabled;
    let (ports_tx, ports_rx) = tokio::sync::watch::channel(Arc::default());
    let parent_listeners =
        publishing.then(|| crate::proxy::ports::ParentListeners::new(config.listen.ip(), ports_rx));

    let (stop, stop_rx) = signal::channel(false);
    let server = tokio::spawn(crate::proxy::server::serve_with_parent_ports(
        listener,
        parent_listeners,
        proxy.clone(),
        stopped(stop_rx.clone()),
    ));
    let mut others = Vec::new();
    {
        let (p, s, rx) = (proxy.clone(), status.clone(), stop_rx.clone());
        others.push(tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(admin, p, s, stopped(rx)).await {
                tracing::error!(error = %e, "admin server failed");
            }
        }));
    }

    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(source::Snapshot::default()));
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel();
    let sinks = source::Sinks {
        proxy: proxy.clone(),
        compile: CompileOptions {
            cluster_domain: config.cluster_domain.clone(),
            publish_endpoints: publishing,
        },
        status: status.clone(),
        snapshots: snap_tx,
        parent_ports: publishing.then_some(ports_tx),
        statuses: true,
    };
    others.push(tokio::spawn(source::run(
        client.clone(),
        opts.clone(),
        sinks,
        linked,
        Some(plan_tx),
        stopped(stop_rx.clone()),
    )));
    let mut finishing = Vec::new();
    if !opts.read_only {
        let identity = opts.identity();
        let lease_namespace = opts.lease_namespace(client.default_namespace());
        tracing::info!(lease = %format!("{lease_namespace}/{}", opts.lease_name()), %identity, "status writer: leader election");
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        finishing.push(tokio::spawn(kube_status::elect(
            client.clone(),
            lease_namespace,
            opts.lease_name(),
            identity.clone(),
            leader_tx,
            kube_status::LeaseReport {
                status: status.clone(),
                metrics: proxy.metrics.clone(),
            },
            stopped(stop_rx.clone()),
        )));
        if publishing {
            let (addr_tx, addr_rx) = tokio::sync::watch::channel(None);
            if opts.publish.advertise.is_empty() {
                let (ns, name) = opts.self_service(client.default_namespace());
                tracing::info!(service = %format!("{ns}/{name}"), "own addresses: the ready endpoints of meshroute's Service");
                others.push(tokio::spawn(kube_endpoints::own_addresses(
                    client.clone(),
                    ns,
                    name,
                    addr_tx,
                    stopped(stop_rx.clone()),
                )));
            } else {
                let mut addrs = opts.publish.advertise.clone();
                addrs.sort_unstable();
                addrs.dedup();
                tracing::info!(addresses = ?addrs, "own addresses: --advertise");
                addr_tx.send_replace(Some(Arc::new(addrs)));
            }
            others.push(tokio::spawn(kube_endpoints::publish(
                kube_endpoints::Publisher {
                    client: client.clone(),
                    namespace: opts.namespace.clone(),
                    port_range: opts.publish.port_range.clone(),
                    identity: identity.clone(),
                },
                snap_rx.clone(),
                addr_rx,
                leader_rx.clone(),
                stopped(stop_rx.clone()),
            )));
        }
        let rx = stop_rx.clone();
        others.push(tokio::spawn(async move {
            // The writer needs to know which versions are watched.
            if let Ok(plan) = plan_rx.await {
                kube_status::write(client, plan, identity, snap_rx, leader_rx, stopped(rx)).await;
            }
        }));
    }

    Ok(Running {
        proxy_addr,
        admin_addr,
        proxy,
        status,
        stop,
        server,
        finishing,
        others,
    })
}

/// Run until `shutdown` resolves, then shut down gracefully.
pub async fn run(config: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.shutdown().await
}
