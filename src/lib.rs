//! meshroute: HTTPRoutes and SMI TrafficSplits compiled into immutable routing tables, served by
//! an embedded hyper proxy.
//!
//! ```text
//! sources ──SourceEvent──▶ index ──▶ compile() ──▶ Arc<RouteTable> ──arc-swap──▶ proxy
//!  (file dir | kube watch    (pure)    (pure)        (immutable)                    (hyper)
//!   + linked clusters)
//!                                       └──▶ statuses ──▶ status writer (kube) / `check` (file)
//! ```
//!
//! `model`, `index`, `compile` and `table` are pure: no tokio, no sockets, no kube client.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod compile;
pub mod crds;
pub mod demo;
pub mod index;
pub mod intern;
pub mod metrics;
pub mod model;
pub mod output;
pub mod proxy;
pub mod run;
pub mod sources;
pub mod table;
pub mod top;
pub mod traffic;
