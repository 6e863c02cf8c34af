//! Client connections as a set: how many streams each has open and since when it is idle,
//! graceful shutdown of all of them ([`Drain`]), and closing one at a time ([`Watch`]): an h2
//! connection idle for the idle timeout, and the oldest idle connection when the accept loop
//! is at the connection cap and a new client waits ([`Drain::shed_oldest_idle`]).
//!
//! Every connection shares an [`Activity`] with its service: each service call holds an
//! [`Open`] guard until hyper drops its response body ([`Tracked`]), so "no open stream" is
//! one atomic load. The guard that closes the last stream stamps the time. No timer is armed
//! per request: the idle timer of an h2 connection wakes once per idle timeout, and re-arms
//! itself from the stamp when the connection was busy meanwhile.
//!
//! Closing is always graceful first (h2: GOAWAY, then the in-flight streams finish; HTTP/1.1:
//! the current exchange finishes, an idle keep-alive connection closes at once). A connection
//! closed that way on its own (idle or shed, not drain) is dropped after the drain timeout if
//! its peer never lets it finish (an h2 peer that never acknowledges the GOAWAY's PING).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use super::respond::ResponseBody;

/// What one client connection's service shares with its [`Watch`] and the [`Drain`].
#[derive(Debug)]
pub struct Activity {
    /// Service calls whose response body hyper has not dropped yet.
    open: AtomicUsize,
    /// When `open` last fell to zero (or the connection was accepted), in milliseconds since
    /// `base`.
    idle_since: AtomicU64,
    /// Asked to close by the accept loop to make room for a new client.
    shed: AtomicBool,
    base: Instant,
}

impl Activity {
    fn new(base: Instant) -> Arc<Self> {
        let a = Activity {
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            shed: AtomicBool::new(false),
            base,
        };
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        Arc::new(a)
    }

    /// A standalone activity, for a connection that no [`Drain`] watches.
    pub fn unwatched() -> Arc<Self> {
        Self::new(Instant::now())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Note a service call; the guard goes with its response body.
    pub fn open(this: &Arc<Self>) -> Open {
        // h2 streams end on their own tasks: counts and stamps are atomics, no ordering with
        // anything else is needed (a stale read at worst sheds a connection that just got a
        // request, which still finishes it: closing is graceful).
        this.open.fetch_add(1, Ordering::Relaxed);
        Open(this.clone())
    }

    /// Streams (HTTP/1.1: the exchange) still open.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// When the connection became idle, if it is.
    fn idle_since(&self) -> Option<Instant> {
        if self.open_streams() > 0 {
            return None;
        }
        let ms = self.idle_since.load(Ordering::Relaxed);
        Some(self.base + Duration::from_millis(ms))
    }
}

/// A service response still open (see [`Activity::open`]).
#[derive(Debug)]
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that holds its [`Open`] guard until hyper drops it.
#[derive(Debug)]
pub struct Tracked {
    pub body: ResponseBody,
    pub open: Open,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Every client connection being served. Each connection registers its task's waker once
/// (again only if the task's waker changes), so watching costs an atomic load per poll; on
/// shutdown every registered task is woken and asks hyper to finish in-flight requests and
/// close (idle connections close at once).
pub struct Drain {
    draining: AtomicBool,
    open: AtomicUsize,
    /// Connections asked to close by [`Drain::shed_oldest_idle`] that have not ended yet.
    shedding: AtomicUsize,
    slots: Mutex<Slots>,
    closed: Notify,
    base: Instant,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    activity: Option<Arc<Activity>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            shedding: AtomicUsize::new(0),
            slots: Mutex::default(),
            closed: Notify::new(),
            base: Instant::now(),
        }
    }
}

impl Drain {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a new connection; idle from now until its first request.
    pub fn watch(this: &Arc<Self>) -> Watch {
        this.open.fetch_add(1, Ordering::AcqRel);
        let activity = Activity::new(this.base);
        let mut s = this.slots();
        let slot = match s.free.pop() {
            Some(i) => i,
            None => {
                s.slots.push(Slot::default());
                s.slots.len() - 1
            }
        };
        s.slots[slot].activity = Some(activity.clone());
        Watch {
            drain: this.clone(),
            slot,
            activity,
            waker: None,
            closing: None,
            idle: None,
            grace: None,
            force: None,
        }
    }

    /// Connections asked to close to make room that are still open.
    pub fn shedding(&self) -> usize {
        self.shedding.load(Ordering::Acquire)
    }

    /// Ask the connection that has been idle (no open stream) the longest to close
    /// gracefully. False when every connection has a stream open (or is already closing).
    /// Scans every connection: it runs only when a new client waits at the connection cap.
    pub fn shed_oldest_idle(&self) -> bool {
        let waker = {
            let mut s = self.slots();
            let oldest = s
                .slots
                .iter_mut()
                .filter_map(|slot| {
                    let a = slot.activity.as_ref()?;
                    if a.shed.load(Ordering::Relaxed) {
                        return None;
                    }
                    Some((a.idle_since()?, slot))
                })
                .min_by_key(|(since, _)| *since);
            let Some((_, slot)) = oldest else {
                return false;
            };
            if let Some(a) = &slot.activity {
                a.shed.store(true, Ordering::Release);
            }
            self.shedding.fetch_add(1, Ordering::AcqRel);
            // A connection not polled yet has no waker: it sees the flag on its first poll.
            slot.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Signal every watched connection, then wait until all have ended.
    pub async fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut s = self.slots();
            s.slots
                .iter_mut()
                .filter_map(|slot| slot.waker.take())
                .collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        loop {
            let closed = self.closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// Why a connection was asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Drain,
    Shed,
    Idle,
}

/// How a watched connection ended.
pub enum Ended<E> {
    /// hyper finished the connection, possibly with an error.
    Done(Result<(), E>),
    /// Asked to close (idle or shed), it did not finish within the grace period.
    Dropped,
}

/// One connection's registration with the [`Drain`].
pub struct Watch {
    drain: Arc<Drain>,
    slot: usize,
    activity: Arc<Activity>,
    waker: Option<Waker>,
    closing: Option<Closing>,
    /// h2 only: fires at most once per idle timeout.
    idle: Option<(Pin<Box<Sleep>>, Duration)>,
    /// How long a graceful close of its own (idle, shed) may take.
    grace: Option<Duration>,
    /// When to give up on the peer, once closing on its own.
    force: Option<Pin<Box<Sleep>>>,
}

impl Watch {
    /// The connection's activity, for its service.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Close the connection gracefully once it has had no open stream for `timeout` (zero:
    /// never).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        if !timeout.is_zero() {
            self.idle = Some((Box::pin(tokio::time::sleep(timeout)), timeout));
        }
        self
    }

    /// Drop a connection closed on its own (idle, shed) `grace` after asking it to close.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// Drive `conn` to its end, asking it to shut down gracefully once draining starts, once
    /// it is shed, or once it has been idle for the idle timeout.
    pub async fn run<C: GracefulConnection>(mut self, conn: C) -> Ended<C::Error> {
        let mut conn = std::pin::pin!(conn);
        std::future::poll_fn(|cx| {
            if self.closing != Some(Closing::Drain) {
                if let Some(why) = self.should_close(cx) {
                    self.close(why, conn.as_mut());
                }
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Done(r));
            }
            if let (Some(Closing::Shed | Closing::Idle), Some(force)) =
                (self.closing, &mut self.force)
            {
                if force.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ended::Dropped);
                }
            }
            Poll::Pending
        })
        .await
    }

    fn close<C: GracefulConnection>(&mut self, why: Closing, conn: Pin<&mut C>) {
        if self.closing.is_none() {
            conn.graceful_shutdown();
            tracing::debug!(reason = ?why, "closing client connection");
            if why != Closing::Drain {
                self.force = self.grace.map(|g| Box::pin(tokio::time::sleep(g)));
            }
        }
        self.closing = Some(why);
    }

    /// Whether the connection should start closing now; otherwise make sure this task is
    /// woken when it should.
    fn should_close(&mut self, cx: &mut Context<'_>) -> Option<Closing> {
        if self.draining(cx) {
            return Some(Closing::Drain);
        }
        if self.closing.is_some() {
            return None;
        }
        if self.activity.shed.load(Ordering::Acquire) {
            return Some(Closing::Shed);
        }
        let (sleep, timeout) = self.idle.as_mut()?;
        while sleep.as_mut().poll(cx).is_ready() {
            // Busy meanwhile, or idle for less than the timeout: wait for the rest.
            let due = match self.activity.idle_since() {
                None => Instant::now() + *timeout,
                Some(since) if since + *timeout <= Instant::now() => return Some(Closing::Idle),
                Some(since) => since + *timeout,
            };
            sleep.as_mut().reset(due);
        }
        None
    }

    /// Whether draining has started; otherwise make sure this task will be woken when it does
    /// (or when it is shed).
    fn draining(&mut self, cx: &Context<'_>) -> bool {
        if self.drain.draining.load(Ordering::Acquire) {
            return true;
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        let waker = cx.waker().clone();
        self.drain.slots().slots[self.slot].waker = Some(waker.clone());
        self.waker = Some(waker);
        // Draining may have started before the waker was in place.
        self.drain.draining.load(Ordering::SeqCst)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        {
            let mut s = self.drain.slots();
            s.slots[self.slot] = Slot::default();
            s.free.push(self.slot);
        }
        if self.activity.shed.load(Ordering::Acquire) {
            self.drain.shedding.fetch_sub(1, Ordering::AcqRel);
        }
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_shed_and_busy_ones_never() {
        let drain = Arc::new(Drain::default());
        let oldest_busy = Drain::watch(&drain);
        let busy = Activity::open(oldest_busy.activity());
        std::thread::sleep(Duration::from_millis(5));
        let idle_old = Drain::watch(&drain);
        std::thread::sleep(Duration::from_millis(5));
        let idle_new = Drain::watch(&drain);

        assert!(drain.shed_oldest_idle());
        assert!(idle_old.activity().shed.load(Ordering::Relaxed));
        assert!(!oldest_busy.activity().shed.load(Ordering::Relaxed));
        assert_eq!(drain.shedding(), 1);
        assert!(drain.shed_oldest_idle());
        assert!(idle_new.activity().shed.load(Ordering::Relaxed));
        assert!(!drain.shed_oldest_idle(), "only a busy connection is left");
        drop((idle_old, idle_new));
        assert_eq!(drain.shedding(), 0);

        // A connection whose last stream ended is idle again, from then on.
        drop(busy);
        assert!(oldest_busy.activity().idle_since().is_some());
        assert!(drain.shed_oldest_idle());
    }
}
