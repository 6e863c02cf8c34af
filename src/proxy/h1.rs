//! The upstream HTTP/1.1 exchange of a request without a body, run inside the request's own
//! task.
//!
//! Most proxied requests carry no body (GET, HEAD, DELETE…). For them a general client, with
//! a connection task per upstream connection and channels between it and the request, is pure
//! overhead: the request head is written with one `write`, the response head comes back with
//! one `read`, and the body streams straight off the socket into the client's response. This
//! module does exactly that and nothing more; requests with a body (and h2c endpoints) go
//! through hyper's client in [`pool`](super::pool).
//!
//! What a response head means (framing, reuse, refusals, hop-by-hop fields, trailers) is
//! decided by [`wire`](super::wire), the policy hyper's path is held to as well; this module
//! only parses and decodes. Interim 1xx heads are skipped (their bytes count against
//! [`MAX_HEAD_BYTES`]). A connection goes back to its pool only when its response ended exactly
//! at the framing's end, keep-alive was agreed and nothing extra was received; every other end
//! closes it, which is also how an abandoned exchange is cancelled upstream.
//!
//! Split in two: `codec` (no I/O: request head out, response head and body in, fed any split
//! of the bytes) and `conn` (the socket, its buffers, the exchange and the streaming body).
//!
//! Measured gain, against hyper's own client in the two ways it can be driven:
//! - hyper-util's pooled client (a spawned connection task per upstream connection), at stop 7:
//!   callgrind, `wrk -t1 -c16`, one worker, nginx backends: ~31,000 instructions per proxied
//!   GET with hyper-util's client, 22,700 with this one (−27%), 19,750 with the borrowed head
//!   and one-pass hop-by-hop filtering that came with it.
//! - hyper's `client::conn::http1` driven inside the request's task, with no connection task
//!   (issue #13's experiment, branch `exp`, da9d6cf: the exchange polls hyper's connection and
//!   its response future in turn, the response body does the same with the body channel and
//!   pools the connection when the body ends; all scripted upstream tests passed through it).
//!   Peer kit, one binary with both clients chosen per process, 3 interleaved repeats, medians
//!   [range], 2026-12-04: closed loop (64 connections, proxy on one core) 41,497 requests/s
//!   [40,257–54,617] and 23.5 µs CPU per request [17.4–24.2] with this client against 33,713
//!   [32,913–40,354] and 29.1 µs [24.1–30.0] with hyper's; fixed rate (2,000 requests/s) p50
//!   0.269 ms against 0.296 ms and 47.0 against 59.0 µs CPU per request. So this client costs
//!   about 20% less CPU per request than hyper's driven in-task, outside the kit's noise
//!   (1–2% for CPU per request), and stays. Not profiled further; by design hyper's dispatcher
//!   still hands the request and the response head over through a channel and a oneshot, and
//!   the body through another channel, even when one task drives both ends.
//!
//! It stays behind the seam ([`pool`] chooses it for bodiless HTTP/1.1 requests only), held to
//! the same [`wire`] policy as hyper's path (heads, framing and the chunked grammar, trailers
//! included; `tests/fuzz.rs` checks both against the same bytes), so neither client decides
//! anything a client of meshroute can see.
//!
//! [`pool`]: super::pool
//! [`wire`]: super::wire

mod codec;
mod conn;

pub use super::wire::Framing;
pub use codec::{fuzzing, Error, MAX_HEADERS, MAX_HEAD_BYTES};
pub use conn::{exchange, Conn, Failure, Home, InlineBody};
