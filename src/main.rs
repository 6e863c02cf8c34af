//! meshroute command line: parses flags and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "meshroute",
    version,
    about = "Routing engine for Kubernetes traffic shifting"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a directory of manifests offline and print each route's admission and status.
    /// Exits 1 when anything is rejected or not accepted.
    Check {
        dir: PathBuf,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show how a request would be routed: route, rule, backends with probabilities, endpoints,
    /// timeouts and filters.
    Explain {
        dir: PathBuf,
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
        /// Print instead a gateway.networking.k8s.io HTTPRoute CRD generated from our types
        /// (for test clusters that cannot download the upstream one).
        #[arg(long)]
        gateway_api: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { dir, output } => {
            let report = meshroute::cli::check(&dir);
            match output {
                Output::Json => println!("{}", report.to_json()),
                Output::Text => print!("{}", report.to_text()),
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Explain {
            dir,
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
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Crds { gateway_api } => {
            print!("{}", meshroute::cli::crds_yaml(gateway_api));
            ExitCode::SUCCESS
        }
    }
}
