//! meshroute command line: parses flags and calls into the library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use meshroute::run::RunConfig;

#[derive(Parser)]
#[command(
    name = "meshroute",
    version,
    about = "Routing engine for Kubernetes traffic shifting"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text (coloured only when stderr is a terminal) or json (one
    /// object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routing table: from a directory of manifests (hot reload) or from Kubernetes.
    Run {
        /// Directory of manifests (file mode).
        #[arg(long, default_value = "policies", conflicts_with = "kube")]
        config: PathBuf,
        /// Read objects from the Kubernetes API (in-cluster config or KUBECONFIG).
        #[arg(long)]
        kube: bool,
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:4140")]
        listen: SocketAddr,
        /// Admin listener (/live, /ready, /metrics, /debug/table).
        #[arg(long, default_value = "127.0.0.1:9990")]
        admin: SocketAddr,
        /// Start echo backends on the loopback endpoints of the manifests and show the
        /// observed split per parent next to the configured weights.
        #[arg(long)]
        demo: bool,
        /// Kubernetes mode: watch only this namespace (default: all namespaces).
        #[arg(long, requires = "kube")]
        namespace: Option<String>,
        /// Kubernetes mode: label selector for HTTPRoutes, TrafficSplits and HTTPRouteGroups,
        /// e.g. `app.kubernetes.io/part-of=shop` (Services and endpoints are always watched).
        #[arg(long, requires = "kube")]
        selector: Option<String>,
        /// Kubernetes mode: namespace of the leader-election Lease (default: $POD_NAMESPACE,
        /// else the pod's namespace in a cluster, else the kubeconfig context's namespace).
        #[arg(long, requires = "kube")]
        lease_namespace: Option<String>,
        /// Kubernetes mode: name of the leader-election Lease.
        #[arg(long, requires = "kube", default_value = "meshroute")]
        lease_name: String,
        /// Kubernetes mode: serve only; never write route status, Events or EndpointSlices.
        #[arg(long, requires = "kube")]
        read_only: bool,
        /// Kubernetes mode: do not publish EndpointSlices for selector-less route parents and
        /// do not listen on per-parent ports (clients must then send to meshroute's Service with
        /// the parent as Host).
        #[arg(long, requires = "kube")]
        no_publish_endpoints: bool,
        /// Kubernetes mode: listener ports allocated per parent Service port, FIRST-LAST.
        #[arg(long, requires = "kube", default_value = "20000-29999", value_parser = parse_port_range)]
        parent_ports: std::ops::RangeInclusive<u16>,
        /// Kubernetes mode, outside a cluster: meshroute's own addresses for the published
        /// EndpointSlices (every replica's, comma-separated) instead of its Service's ready
        /// endpoints.
        #[arg(
            long,
            requires = "kube",
            value_delimiter = ',',
            value_name = "IP[,IP...]"
        )]
        advertise: Vec<std::net::IpAddr>,
        /// Kubernetes mode: meshroute's own Service, NAMESPACE/NAME, whose ready endpoints are
        /// published (default: the pod's namespace and `meshroute`).
        #[arg(long, requires = "kube", value_parser = parse_ns_name, value_name = "NS/NAME")]
        self_service: Option<(String, String)>,
    },
    /// Compile manifests offline and print each route's admission and status.
    /// Exits 1 when anything is rejected or not accepted.
    ///
    /// Paths are files or directories (their `*.yaml`/`*.yml`, not subdirectories), compiled
    /// together: `meshroute check policies/services.yaml policies/invalid/bad-regex.yaml`.
    Check {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show how a request would be routed: route, rule, backends with probabilities, endpoints,
    /// timeouts and filters. Exits 1 when it would not be routed (unknown authority, no
    /// matching rule).
    Explain {
        dir: PathBuf,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        /// Request authority, e.g. smiley.faces.svc.cluster.local[:port]
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request header as name:value (repeatable)
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Print the CRDs for the kinds meshroute defines (policy.linkerd.io HTTPRoute, SMI
    /// TrafficSplit and HTTPRouteGroup).
    Crds {
        /// Print instead a gateway.networking.k8s.io HTTPRoute CRD generated from our types,
        /// with upstream's approval annotation and validation (for clusters that cannot
        /// download the upstream one): `meshroute crds --gateway-api | kubectl apply --server-side -f -`.
        #[arg(long)]
        gateway_api: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            kube,
            listen,
            admin,
            demo,
            namespace,
            selector,
            lease_namespace,
            lease_name,
            read_only,
            no_publish_endpoints,
            parent_ports,
            advertise,
            self_service,
        } => {
            let cfg = RunConfig {
                config_dir: config,
                listen,
                admin,
                demo,
                kube,
                kube_options: meshroute::sources::kube::KubeOptions {
                    namespace,
                    label_selector: selector,
                    lease_namespace,
                    lease_name: Some(lease_name),
                    read_only,
                    publish: meshroute::sources::kube::PublishOptions {
                        enabled: !no_publish_endpoints,
                        port_range: parent_ports,
                        advertise,
                        self_service,
                    },
                    ..Default::default()
                },
                ..Default::default()
            };
            match serve(cfg, cli.log_format) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { paths, output } => {
            let report = meshroute::cli::check_paths(&paths);
            let text = match output {
                Output::Json => format!("{}\n", report.to_json()),
                Output::Text => report.to_text(),
            };
            let code = if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            print_then(&text, code)
        }
        Command::Explain {
            dir,
            output,
            host,
            path,
            method,
            headers,
        } => {
            let mut parsed = Vec::new();
            for h in headers {
                match h.split_once(':') {
                    Some((n, v)) => parsed.push((n.trim().to_string(), v.trim().to_string())),
                    None => {
                        eprintln!("error: -H {h:?}: expected name:value");
                        return ExitCode::from(2);
                    }
                }
            }
            let q = meshroute::cli::ExplainQuery {
                host,
                path,
                method,
                headers: parsed,
            };
            match meshroute::cli::explain(&dir, &q) {
                Ok(x) => {
                    let text = match output {
                        Output::Json => format!("{}\n", x.to_json()),
                        Output::Text => x.to_text(),
                    };
                    let code = if x.routed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    };
                    print_then(&text, code)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Crds { gateway_api } => {
            print_then(&meshroute::cli::crds_yaml(gateway_api), ExitCode::SUCCESS)
        }
    }
}

/// `FIRST-LAST`, e.g. `20000-29999`.
fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 20000-29999"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("{s:?}: the first port is above the last"));
    }
    Ok(a..=b)
}

/// `NAMESPACE/NAME`.
fn parse_ns_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
    }
}

/// Print `text` to stdout and exit with `code`. A reader that closed the pipe early
/// (`meshroute crds | head`) ends the output quietly; the exit code stays the command's.
fn print_then(text: &str, code: ExitCode) -> ExitCode {
    match meshroute::output::print(text) {
        Ok(_) => code,
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`). Text is coloured only on a terminal
/// (`kubectl logs` shows escape codes verbatim) and never when `NO_COLOR` is set.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init();
        }
    }
}

/// Build the runtime (`MESHROUTE_WORKERS=1` gives a single-threaded one, as the bench kit asks
/// of every proxy), log to stderr in `log_format`, and run until SIGTERM or Ctrl-C.
fn serve(cfg: RunConfig, log_format: LogFormat) -> anyhow::Result<()> {
    init_logging(log_format);
    let workers = match std::env::var("MESHROUTE_WORKERS") {
        Ok(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("MESHROUTE_WORKERS={v:?}: expected a positive integer"))?,
        ),
        Err(_) => None,
    };
    let runtime = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        meshroute::run::run(cfg, shutdown).await
    })
}
