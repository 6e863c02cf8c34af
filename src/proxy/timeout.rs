//! GEP-1742 timeouts as deadlines on tokio's timer (millisecond resolution, no polling tick).
//!
//! `request` runs from the moment the proxy received the request until the response ends;
//! `backendRequest` from dispatching to a backend until its response ends. One attempt is
//! bounded by whichever deadline comes first, and the same sleep keeps running while the body
//! streams: expiry before the response head is a 504, expiry after it aborts the stream
//! (see [`ResponseBody`](super::body::ResponseBody)). Dropping the upstream future or body on
//! expiry is what cancels the exchange upstream (h1 connection closed, h2 stream reset).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::error::ProxyError;
use super::timer::{Kind, ReusedSleep};
use crate::table::Timeouts;

/// Which timeout bounds an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Request,
    BackendRequest,
}

impl Which {
    pub fn error(self) -> ProxyError {
        match self {
            Which::Request => ProxyError::RequestTimeout,
            Which::BackendRequest => ProxyError::BackendRequestTimeout,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Which::Request => "request timeout",
            Which::BackendRequest => "backendRequest timeout",
        }
    }
}

/// The deadline of one attempt dispatched at `now`, if any timeout applies.
pub fn attempt_deadline(
    timeouts: &Timeouts,
    received: Instant,
    now: Instant,
) -> Option<(Instant, Which)> {
    let request = timeouts.request.map(|d| (add(received, d), Which::Request));
    let backend = timeouts
        .backend_request
        .map(|d| (add(now, d), Which::BackendRequest));
    match (request, backend) {
        (Some(r), Some(b)) => Some(if b.0 < r.0 { b } else { r }),
        (r, b) => r.or(b),
    }
}

/// `at + d`, saturating far in the future instead of overflowing on absurd durations.
fn add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A running deadline: the sleep is handed on to the response body after the head, and
/// goes back to the spare list when the exchange ends ([`super::timer`]).
#[derive(Debug)]
pub struct Deadline {
    pub sleep: ReusedSleep,
    pub which: Which,
}

impl Deadline {
    pub fn new(at: Instant, which: Which) -> Self {
        Deadline {
            sleep: ReusedSleep::until(at, Kind::Deadline),
            which,
        }
    }
}

/// Run `fut` until it finishes or the deadline passes; on expiry `fut` is dropped.
pub async fn bounded<F, T>(fut: F, deadline: Option<&mut Deadline>) -> Result<T, ProxyError>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    match deadline {
        None => fut.await,
        Some(d) => {
            tokio::select! {
                biased;
                r = fut => r,
                () = &mut d.sleep => Err(d.which.error()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(request: Option<u64>, backend: Option<u64>) -> Timeouts {
        Timeouts {
            request: request.map(Duration::from_millis),
            backend_request: backend.map(Duration::from_millis),
        }
    }

    #[test]
    fn earliest_deadline_bounds_the_attempt() {
        let start = Instant::now();
        let later = start + Duration::from_millis(100);
        assert_eq!(attempt_deadline(&t(None, None), start, later), None);
        let (at, w) = attempt_deadline(&t(Some(1000), Some(200)), start, later).unwrap();
        assert_eq!(
            (at - start, w),
            (Duration::from_millis(300), Which::BackendRequest)
        );
        let (at, w) = attempt_deadline(&t(Some(250), Some(200)), start, later).unwrap();
        assert_eq!(
            (at - start, w),
            (Duration::from_millis(250), Which::Request)
        );
        let (_, w) = attempt_deadline(&t(None, Some(5)), start, later).unwrap();
        assert_eq!(w, Which::BackendRequest);
    }

    #[tokio::test]
    async fn expiry_drops_the_future_and_reports_which_timeout() {
        let mut d = Deadline::new(Instant::now() + Duration::from_millis(50), Which::Request);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ProxyError>(())
        };
        let before = Instant::now();
        let r = bounded(slow, Some(&mut d)).await;
        assert!(matches!(r, Err(ProxyError::RequestTimeout)));
        let took = Instant::now() - before;
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
