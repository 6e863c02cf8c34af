//! The embedded proxy: serves the live [`RouteTable`](crate::table::RouteTable) on one shared
//! listener.
//!
//! ## The request path
//!
//! [`server`] accepts a connection (HTTP/1.1 or h2c, limits) and hands each request to
//! [`forward::handle`], which reads as four calls:
//!
//! 1. **bind**: the parent Service from the authority ([`route`]) or the listener's port, the
//!    rule from the table's lookup, then the rule's [`filters`];
//! 2. **pick**: a backend by weight and an endpoint by P2C ([`pick`] for the randomness);
//! 3. **attempt(s)**: one [`attempt`], the upstream seam (one endpoint, one deadline → a
//!    response head or a typed [`error::ProxyError`]), or for rules with a retry policy the
//!    [`retry`] loop of picks and attempts (hedges included), both through [`upstream`] (the
//!    head an endpoint gets, mirrors, what an answered request hands back);
//! 4. **respond**: the response filters and the upstream body under its deadlines
//!    ([`respond`], [`timeout`]), or a proxy-made failure ([`respond::error_response`]).
//!
//! Below the seam, [`pool`] keeps upstream connections and speaks HTTP/1.1 through two
//! clients held to one policy ([`wire`]: framing, refusals, hop-by-hop fields, trailers,
//! send-again): the own client of [`h1`] for bodiless requests and hyper's for the rest (and
//! for h2c).
//!
//! ## Layers
//!
//! Every module imports only from the layers below it (no `super::` import goes up or
//! sideways into a cycle), so each can be read knowing only what is under it:
//!
//! | layer | modules | imports from the proxy |
//! |---|---|---|
//! | 0, leaves | [`wire`], [`error`], [`pick`], [`timer`], [`served`], [`ports`], [`budget`] | nothing |
//! | 1, deadlines, route authority | [`timeout`], [`route`] | error, timer |
//! | 2, codec and bodies | [`h1`], [`body`] (request bodies) | wire; timeout |
//! | 3, connections | [`pool`] | h1, body, error, wire |
//! | 4, state, answers | [`live`] (config, live table, publish), [`respond`] | pool, budget; pool, body, served, timeout, timer |
//! | 5, the seam, filters | [`attempt`], [`filters`], [`conns`] | live, pool, pick, timeout; respond, route |
//! | 6, upstream request | [`upstream`] | attempt, filters, live, respond, timeout |
//! | 7, retries | [`retry`] | upstream, attempt, filters |
//! | 8, the request path | [`forward`] | retry, upstream, attempt, filters, route, conns |
//! | 9, serving | [`parse_errors`], [`server`] | conns; forward, pool, ports |
//!
//! Speed tricks carry their measured gain in their module's doc: [`forward`] (one `map`
//! around the service future: -1.4% instructions per request), [`route`] (the authority byte
//! table: 746 -> 427 instructions), [`retry`] (no cost for rules without a policy, within
//! noise), [`h1`] (the own client: about 20% less CPU per request than hyper's client driven
//! in the request's task, peer kit). No figure is on record for the smaller ones: the per-connection parent cache in [`forward`], the length-first hop-by-hop
//! lookup in [`wire`] and the idle clock of [`pool`]; their docs say what they save, not by how
//! much.

pub mod attempt;
pub mod body;
pub mod budget;
pub mod conns;
pub mod error;
pub mod filters;
pub mod forward;
pub mod h1;
pub mod live;
pub mod parse_errors;
pub mod pick;
pub mod pool;
pub mod ports;
pub mod respond;
pub mod retry;
pub mod route;
pub mod served;
pub mod server;
pub mod timeout;
pub mod timer;
pub mod upstream;
pub mod wire;

pub use live::{Live, Proxy, ProxyConfig};
