//! meshroute command line: parses flags and calls into the library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use meshroute::run::RunConfig;

/// jemalloc with its background thread instead of glibc's malloc. After a burst (issue #16's
/// h2 amplification probe: 5 connections × 1,000 streams opened and reset, three times) glibc
/// keeps the freed memory in its arenas for good; jemalloc purges dirty pages after its decay
/// time (10 s), off the request path. Measured (release, 2026-12-04), RSS before / peak /
/// 12 s / 30 s after the probe: glibc 14.4 / 37.3 / 37.1 / 37.1 MiB, jemalloc 17.6 / 36.9 /
/// 29.1 / 19.9 MiB. It also costs fewer instructions per request: callgrind, one worker,
/// 10,000 keep-alive GETs over 16 connections through the peer kit's split: 23,791
/// instructions per request with glibc's malloc, 22,869 with jemalloc (-3.9%).
/// Peer kit, one run, 3 repeats, medians: CPU per request 18.0 µs (closed loop) and 38.5 µs
/// (2,000 requests/s) against 18.8 and 42.0 with glibc, fixed-rate p50 0.213 against 0.233 ms,
/// idle RSS 15.6 against 14.8 MiB. The control plane too: 100k routes in file mode peak at
/// 339 MiB against 372 MiB (3.6 against 3.9 KiB per route), ready in 9.6 s against 12.4 s.
/// (mimalloc 0.1.52 was tried as well: 24 MiB before the probe, 78 MiB peak, 56 MiB 12 s after;
/// not taken.)
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `0.1.0 (commit 1a2b3c4d5e6f)`: the commit is recorded by `src/build.rs` from git, when the
/// source is a git checkout.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MESHROUTE_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "meshroute",
    version = VERSION,
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
// Parsed once at startup: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        #[command(flatten)]
        limits: Limits,
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
        /// Kubernetes mode: link a cluster, NAME=KUBECONFIG (repeatable). Its Services and
        /// EndpointSlices are read (never written): mirrors labelled
        /// `multicluster.linkerd.io/remote-discovery: NAME` resolve to its exported Services.
        #[arg(long = "link", requires = "kube", value_name = "NAME=KUBECONFIG")]
        links: Vec<meshroute::sources::kube::Link>,
        /// Kubernetes mode: namespace of Linkerd's Link objects and their credentials Secrets
        /// (each Link links its cluster without a restart); "" turns Link discovery off.
        #[arg(long, requires = "kube", default_value = "linkerd-multicluster")]
        link_namespace: String,
    },
    /// Compile manifests offline and print each route's admission and status.
    /// Exits 1 when anything is rejected or not accepted.
    ///
    /// Paths are files or directories (their `*.yaml`/`*.yml`, not subdirectories), compiled
    /// together: `meshroute check policies/services.yaml policies/invalid/bad-regex.yaml`.
    Check {
        /// Files and directories of manifests, compiled together.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// text, or json: one element per route-like object (see the README).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show how a request would be routed: route, rule, backends with probabilities, endpoints,
    /// timeouts and filters. Exits 1 when it would not be routed (unknown authority, no
    /// matching rule).
    ///
    /// With `--admin ADDR` instead of a directory, explain against the live table of a
    /// running meshroute (file or Kubernetes mode), read from its admin port.
    Explain {
        /// Directory of manifests to compile and explain against.
        #[arg(required_unless_present = "admin", conflicts_with = "admin")]
        dir: Option<PathBuf>,
        /// Admin address of a running meshroute (e.g. 127.0.0.1:9990): explain against its
        /// live table.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// text, or json (the shape is in the README).
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        /// Request authority, e.g. smiley.faces.svc.cluster.local[:port]
        #[arg(long)]
        host: String,
        /// Request path, with an optional query (`/api?v=2`).
        #[arg(long, default_value = "/")]
        path: String,
        /// Request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request header as name:value (repeatable)
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Live traffic of a running meshroute, from its admin port: per parent and route, RPS,
    /// success rate, p50/p99 latency and the split per backend (configured / observed),
    /// redrawn in place. The last line says whether the last reload was accepted.
    Top {
        /// Admin address of the running meshroute.
        #[arg(long, default_value = "127.0.0.1:9990", value_name = "ADDR")]
        admin: SocketAddr,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Print a shell completion script: `meshroute completions bash > /etc/bash_completion.d/meshroute`,
    /// `meshroute completions zsh > "${fpath[1]}/_meshroute"`, `meshroute completions fish >
    /// ~/.config/fish/completions/meshroute.fish`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the CRDs for the kinds meshroute defines (policy.linkerd.io HTTPRoute, SMI
    /// TrafficSplit and HTTPRouteGroup).
    Crds {
        /// Print instead the gateway.networking.k8s.io HTTPRoute and GRPCRoute CRDs generated from our types,
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
            limits,
            no_publish_endpoints,
            parent_ports,
            advertise,
            self_service,
            links,
            link_namespace,
        } => {
            let cfg = RunConfig {
                proxy: limits.proxy_config(),
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
                    links,
                    link_namespace: Some(link_namespace),
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
            admin,
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
            if let Some(admin) = admin {
                return runtime().block_on(async {
                    match meshroute::cli::explain_remote(admin, &q, matches!(output, Output::Json))
                        .await
                    {
                        Ok((body, routed)) => print_then(
                            &body,
                            if routed {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::FAILURE
                            },
                        ),
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::from(2)
                        }
                    }
                });
            }
            let Some(dir) = dir else {
                eprintln!("error: a directory or --admin is required");
                return ExitCode::from(2);
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
        Command::Top {
            admin,
            interval,
            iterations,
        } => {
            let interval = std::time::Duration::from_secs_f64(interval.clamp(0.1, 3600.0));
            let code = runtime().block_on(meshroute::top::run(admin, interval, iterations));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "meshroute",
                &mut script,
            );
            print_then(&String::from_utf8_lossy(&script), ExitCode::SUCCESS)
        }
        Command::Crds { gateway_api } => {
            print_then(&meshroute::cli::crds_yaml(gateway_api), ExitCode::SUCCESS)
        }
    }
}

/// A small runtime for the client commands (`top`, `explain --admin`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime starts")
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
/// Proxy timeouts and limits of `meshroute run` (durations as in routes: `500ms`, `15s`, `1m`;
/// `0s` turns a limit off).
#[derive(clap::Args)]
struct Limits {
    /// Request timeout of passthrough parents and of rules without `timeouts.request` (a
    /// rule's own value, `0s` included, wins).
    #[arg(long, default_value = "15s", value_parser = duration)]
    default_request_timeout: Duration,
    /// Abort a response body when the endpoint sends nothing for this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    upstream_idle_timeout: Duration,
    /// Answer 408 (or abort, once the response has started) when the client sends no byte
    /// of its request body for this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    client_body_timeout: Duration,
    /// Connections open at once to one endpoint, busy or idle (0: no limit).
    #[arg(long, default_value_t = 1024)]
    max_connections_per_endpoint: usize,
    /// Requests that may wait for a connection to an endpoint at its connection limit; more
    /// are answered 503 upstream-overflow.
    #[arg(long, default_value_t = 1024)]
    max_pending_per_endpoint: usize,
    /// Client connections served at once; at the cap a new client closes the connection idle
    /// the longest (h2: GOAWAY) and takes its place.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Close an h2 client connection (GOAWAY) once it has had no open stream for this long.
    #[arg(long, default_value = "5m", value_parser = duration)]
    h2_idle_timeout: Duration,
    /// Send h2 clients a keep-alive PING this often.
    #[arg(long, default_value = "30s", value_parser = duration)]
    h2_keep_alive_interval: Duration,
    /// Disconnect an h2 client that leaves a keep-alive PING unanswered for this long.
    #[arg(long, default_value = "20s", value_parser = duration)]
    h2_keep_alive_timeout: Duration,
    /// Add a `meshroute-served-by` header (route, rule, backend, cluster, endpoint) to every
    /// response; for debugging, it tells clients about the topology behind the proxy.
    #[arg(long)]
    debug_headers: bool,
    /// Log one line per request (target `meshroute::access`; JSON with --log-format json):
    /// parent, route, rule, backend, endpoint, method, path without query, status, duration,
    /// meshroute-error reason.
    #[arg(long)]
    access_log: bool,
}

impl Limits {
    fn proxy_config(&self) -> meshroute::proxy::ProxyConfig {
        meshroute::proxy::ProxyConfig {
            default_request_timeout: self.default_request_timeout,
            upstream_idle_timeout: self.upstream_idle_timeout,
            client_body_timeout: self.client_body_timeout,
            max_connections_per_endpoint: self.max_connections_per_endpoint,
            max_pending_per_endpoint: self.max_pending_per_endpoint,
            max_connections: self.max_connections,
            h2_idle_timeout: self.h2_idle_timeout,
            h2_keep_alive_interval: self.h2_keep_alive_interval,
            h2_keep_alive_timeout: self.h2_keep_alive_timeout,
            debug_headers: self.debug_headers,
            access_log: self.access_log,
            ..Default::default()
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    meshroute::compile::validate::parse_duration(s)
}

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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help` describes every subcommand, flag and argument a user can give.
    #[test]
    fn every_command_flag_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "meshroute", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_commit() {
        let v = Cli::command().render_version();
        assert!(
            v.starts_with(&format!("meshroute {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
    }
}
