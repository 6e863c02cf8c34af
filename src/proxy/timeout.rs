//! GEP-1742 timeouts as deadlines on tokio's timer (millisecond resolution, no polling tick).
//!
//! `request` runs from the moment the proxy received the request until the response ends;
//! `backendRequest` from dispatching to a backend until its response ends. One attempt is
//! bounded by whichever deadline comes first, and the same sleep keeps running while the body
//! streams: expiry before the response head is a 504, expiry after it aborts the stream
//! (see [`ResponseBody`](super::respond::ResponseBody)). Dropping the upstream future or body on
//! expiry is what cancels the exchange upstream (h1 connection closed, h2 stream reset).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
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

/// The deadline of one attempt dispatched at `now`, if any timeout applies. A rule that does
/// not set `request` gets `default_request` (zero: none).
pub fn attempt_deadline(
    timeouts: &Timeouts,
    default_request: Duration,
    received: Instant,
    now: Instant,
) -> Option<(Instant, Which)> {
    let request = if timeouts.request_set {
        timeouts.request
    } else {
        Some(default_request).filter(|d| !d.is_zero())
    };
    let request = request.map(|d| (add(received, d), Which::Request));
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

/// A limit on how long a body may keep its reader waiting for the next frame. The clock
/// starts when a poll finds nothing ready and stops at the next frame, so time the reader
/// spends not asking (its own back-pressure) never counts. One timer per body, re-armed at
/// most once per frame.
#[derive(Debug)]
pub struct IdleTimer {
    limit: Duration,
    sleep: Option<ReusedSleep>,
    waiting: bool,
}

impl IdleTimer {
    pub fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            waiting: false,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// A frame arrived.
    pub fn progressed(&mut self) {
        self.waiting = false;
    }

    /// Call after the body's source answered `Pending`: true once it has been idle for the
    /// limit (otherwise the task is woken when it would be).
    pub fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let at = add(Instant::now(), self.limit);
            match &mut self.sleep {
                Some(s) => s.reset(at),
                None => self.sleep = Some(ReusedSleep::until(at, Kind::Idle)),
            }
        }
        match &mut self.sleep {
            Some(s) => std::pin::Pin::new(s).poll(cx).is_ready(),
            None => false,
        }
    }
}

/// Poll `fut` until it finishes or the deadline passes (the caller then drops `fut`).
///
/// `fut` is pinned by the caller and only borrowed here: an `async fn` taking the future by
/// value kept it twice in its state (the argument, and the moved copy it awaits), and every
/// request's future, which hyper moves around, carried both. Measured with callgrind as in
/// `forward`'s doc, together with the smaller request future there: see that doc.
pub fn bounded<'a, F, T>(
    mut fut: Pin<&'a mut F>,
    mut deadline: Option<&'a mut Deadline>,
) -> impl Future<Output = Result<T, ProxyError>> + 'a
where
    F: Future<Output = Result<T, ProxyError>>,
{
    std::future::poll_fn(move |cx| {
        // Biased: a response that is ready wins over a deadline that passed meanwhile.
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        match deadline.as_deref_mut() {
            Some(d) => match Pin::new(&mut d.sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(d.which.error())),
                Poll::Pending => Poll::Pending,
            },
            None => Poll::Pending,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(request: Option<u64>, backend: Option<u64>) -> Timeouts {
        Timeouts {
            request: request.map(Duration::from_millis),
            request_set: true,
            backend_request: backend.map(Duration::from_millis),
        }
    }

    #[test]
    fn earliest_deadline_bounds_the_attempt() {
        let start = Instant::now();
        let later = start + Duration::from_millis(100);
        let none = Duration::ZERO;
        assert_eq!(attempt_deadline(&t(None, None), none, start, later), None);
        let (at, w) = attempt_deadline(&t(Some(1000), Some(200)), none, start, later).unwrap();
        assert_eq!(
            (at - start, w),
            (Duration::from_millis(300), Which::BackendRequest)
        );
        let (at, w) = attempt_deadline(&t(Some(250), Some(200)), none, start, later).unwrap();
        assert_eq!(
            (at - start, w),
            (Duration::from_millis(250), Which::Request)
        );
        let (_, w) = attempt_deadline(&t(None, Some(5)), none, start, later).unwrap();
        assert_eq!(w, Which::BackendRequest);
    }

    #[test]
    fn the_default_request_timeout_applies_only_where_request_is_not_set() {
        let start = Instant::now();
        let default = Duration::from_secs(15);
        let unset = Timeouts::default();
        let (at, w) = attempt_deadline(&unset, default, start, start).unwrap();
        assert_eq!((at - start, w), (default, Which::Request));
        let zero = Timeouts {
            request_set: true,
            ..Timeouts::default()
        };
        assert_eq!(
            attempt_deadline(&zero, default, start, start),
            None,
            "0s disables"
        );
        let own = t(Some(500), None);
        let (at, _) = attempt_deadline(&own, default, start, start).unwrap();
        assert_eq!(at - start, Duration::from_millis(500));
        assert_eq!(attempt_deadline(&unset, Duration::ZERO, start, start), None);
    }

    #[tokio::test]
    async fn expiry_drops_the_future_and_reports_which_timeout() {
        let mut d = Deadline::new(Instant::now() + Duration::from_millis(50), Which::Request);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ProxyError>(())
        };
        let before = Instant::now();
        let r = bounded(std::pin::pin!(slow), Some(&mut d)).await;
        assert!(matches!(r, Err(ProxyError::RequestTimeout)));
        let took = Instant::now() - before;
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
