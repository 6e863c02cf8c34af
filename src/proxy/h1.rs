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
//! Measured gain, against hyper-util's pooled client (a spawned connection task per upstream
//! connection), at stop 7 (see that session's note): callgrind, `wrk -t1 -c16`, one worker,
//! nginx backends: ~31,000 instructions per proxied GET with hyper-util's client, 22,700 with
//! this one (−27%), 19,750 with the borrowed head and one-pass hop-by-hop filtering that came
//! with it; user CPU 5.6–5.8 µs/request against 5.6–6.9 µs for a bare hyper proxy. Not yet
//! measured: hyper's `client::conn::http1` driven inside the request's task (no connection
//! task) against this client, which is the comparison issue #13 asks for (peer kit CPU
//! µs/request and fixed-rate p50/p99 in one run). Until it is, this client stays behind the
//! seam ([`pool`] chooses it for bodiless HTTP/1.1 requests only), held to the same [`wire`]
//! policy as hyper's, so deleting it later changes no outcome a client can see.
//!
//! [`pool`]: super::pool
//! [`wire`]: super::wire

mod codec;
mod conn;

pub use super::wire::Framing;
pub use codec::{fuzzing, Error, MAX_HEADERS, MAX_HEAD_BYTES};
pub use conn::{exchange, Conn, Failure, Home, InlineBody};
