//! Request-path timers that keep their registration with tokio's timer between requests.
//!
//! Each request arms two timers: hyper's header-read timeout while it waits for the request
//! head, and the route's deadline while the exchange runs. Almost none of them fire. A fresh
//! tokio `Sleep` costs an allocation, and, once polled, a lock and a timer-wheel insert; dropping
//! it takes the lock again to remove it. Here a dropped sleep goes onto a short spare list of its
//! thread and the next timer re-arms it with [`Sleep::reset`]. While the new deadline is not
//! earlier than the one still registered, tokio only moves it forward with a compare-and-swap;
//! the wheel entry catches up when its old slot comes round. Deadlines of one kind grow with time,
//! so that is the usual case; an earlier deadline re-registers the entry, which is still cheaper
//! than a new one.
//!
//! A spare whose deadline passes while it waits on the list fires once and wakes the task that
//! last polled it; that task finds nothing to do. Until then the spare holds that task's waker
//! (so its memory): at most 512 per kind and thread, for one timeout's length.
//! Spares belong to the runtime that made them: a sleep is only handed out again to a timer of
//! the same runtime, since polling one whose runtime has shut down panics.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Spares kept per thread and kind; more are dropped (deregistered) as usual.
const MAX_SPARES: usize = 512;

/// Timers of one kind share a spare list, so their deadlines keep growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Route deadlines (`timeouts.request` / `timeouts.backendRequest`).
    Deadline,
    /// hyper's own timers: header-read timeout, h2 keep-alive.
    Hyper,
    /// Idle limits of streaming bodies ([`super::timeout::IdleTimer`]).
    Idle,
}

#[derive(Default)]
struct Spares {
    runtime: Option<Id>,
    lists: [Vec<Pin<Box<Sleep>>>; 3],
}

thread_local! {
    static SPARES: RefCell<Spares> = RefCell::default();
}

fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|h| h.id())
}

/// A spare of `runtime`, if this thread has one.
fn take(kind: Kind, runtime: Id) -> Option<Pin<Box<Sleep>>> {
    SPARES
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            if s.runtime != Some(runtime) {
                return None;
            }
            s.lists[kind as usize].pop()
        })
        .ok()
        .flatten()
}

/// Keep `sleep`, made by `runtime`, as a spare. A list holds the sleeps of one runtime: one of
/// another runtime replaces them.
fn give_back(kind: Kind, runtime: Id, sleep: Pin<Box<Sleep>>) {
    // The closure moves the sleep in; if the thread is tearing down it is simply dropped.
    let _ = SPARES.try_with(move |s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        if s.runtime != Some(runtime) {
            s.lists.iter_mut().for_each(Vec::clear);
            s.runtime = Some(runtime);
        }
        let list = &mut s.lists[kind as usize];
        if list.len() < MAX_SPARES {
            list.push(sleep);
        }
    });
}

/// A tokio sleep that returns to its thread's spare list when dropped.
#[derive(Debug)]
pub struct ReusedSleep {
    // Always `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    kind: Kind,
    // The runtime whose timer the sleep is registered with (`None`: not kept when dropped).
    runtime: Option<Id>,
}

impl ReusedSleep {
    /// A sleep until `at`, re-arming a spare when there is one. Must run inside a runtime with
    /// timers enabled, like `tokio::time::sleep_until`.
    pub fn until(at: Instant, kind: Kind) -> Self {
        let runtime = current_runtime();
        let sleep = match runtime.and_then(|r| take(kind, r)) {
            Some(mut s) => {
                s.as_mut().reset(at);
                s
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        };
        ReusedSleep {
            sleep: Some(sleep),
            kind,
            runtime,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.pinned().deadline()
    }

    pub fn reset(&mut self, at: Instant) {
        self.pinned_mut().reset(at);
    }

    pub fn is_elapsed(&self) -> bool {
        self.pinned().is_elapsed()
    }

    fn pinned(&self) -> &Sleep {
        self.sleep.as_deref().expect("sleep present until drop")
    }

    fn pinned_mut(&mut self) -> Pin<&mut Sleep> {
        self.sleep
            .as_mut()
            .expect("sleep present until drop")
            .as_mut()
    }
}

impl Future for ReusedSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().pinned_mut().poll(cx)
    }
}

impl Drop for ReusedSleep {
    fn drop(&mut self) {
        if let (Some(s), Some(runtime)) = (self.sleep.take(), self.runtime) {
            give_back(self.kind, runtime, s);
        }
    }
}

/// hyper's timer on [`ReusedSleep`]s (in place of hyper-util's `TokioTimer`).
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

struct HyperSleep(ReusedSleep);

impl Future for HyperSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let now = Instant::now();
        let at = now
            .checked_add(duration)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        Box::pin(HyperSleep(ReusedSleep::until(at, Kind::Hyper)))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(ReusedSleep::until(deadline.into(), Kind::Hyper)))
    }

    /// tokio's clock, so paused test time applies to hyper's timers too.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<HyperSleep>() {
            Some(s) => s.get_mut().0.reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::poll;

    fn spares(kind: Kind) -> usize {
        SPARES.with(|s| s.borrow().lists[kind as usize].len())
    }

    fn armed(secs: u64) -> ReusedSleep {
        ReusedSleep::until(Instant::now() + Duration::from_secs(secs), Kind::Deadline)
    }

    /// Arms a sleep, registers it with the wheel by polling it, drops it; returns its address.
    async fn spare(secs: u64) -> *const Sleep {
        let mut s = armed(secs);
        assert!(poll!(&mut s).is_pending());
        let at: *const Sleep = s.pinned();
        drop(s);
        at
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_extends_the_spare_without_firing_early() {
        let first = spare(5).await;
        assert_eq!(spares(Kind::Deadline), 1);
        let mut s = armed(7);
        assert_eq!(s.pinned() as *const Sleep, first, "the spare is reused");
        assert_eq!(spares(Kind::Deadline), 0);
        assert!(poll!(&mut s).is_pending());
        // The slot it was registered in passes without firing it.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(poll!(&mut s).is_pending());
        tokio::time::advance(Duration::from_millis(998)).await;
        assert!(poll!(&mut s).is_pending());
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(poll!(&mut s).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_fires_on_time() {
        let first = spare(10).await;
        let mut s = armed(1);
        assert_eq!(s.pinned() as *const Sleep, first);
        assert!(poll!(&mut s).is_pending());
        tokio::time::advance(Duration::from_millis(998)).await;
        assert!(poll!(&mut s).is_pending());
        tokio::time::advance(Duration::from_millis(3)).await;
        assert!(poll!(&mut s).is_ready());
        // Kinds keep separate lists.
        drop(s);
        assert_eq!(spares(Kind::Hyper), 0);
        let h = ReusedSleep::until(Instant::now(), Kind::Hyper);
        assert_ne!(h.pinned() as *const Sleep, first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_that_fired_unused_can_be_armed_again() {
        let first = spare(1).await;
        // Its deadline passes while it waits on the list.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut s = armed(3);
        assert_eq!(s.pinned() as *const Sleep, first);
        assert!(!s.is_elapsed());
        let before = Instant::now();
        (&mut s).await;
        assert_eq!(Instant::now() - before, Duration::from_secs(3));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A short deadline armed in `rt` fires there (and does not panic).
    fn fires_in(rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            let at = Instant::now() + Duration::from_millis(5);
            ReusedSleep::until(at, Kind::Deadline).await;
            assert!(Instant::now() >= at);
        });
    }

    #[test]
    fn spares_never_cross_runtimes() {
        let first = runtime();
        first.block_on(async {
            spare(1).await;
        });
        assert_eq!(spares(Kind::Deadline), 1);
        drop(first);
        // Polling a sleep whose runtime is gone panics; the new runtime must get its own.
        fires_in(&runtime());
    }

    #[test]
    fn a_sleep_dropped_inside_another_runtime_stays_with_its_own() {
        let (a, b) = (runtime(), runtime());
        // Made (and registered) inside `a`.
        let made_in_a = a.block_on(async {
            let mut s = armed(1);
            assert!(poll!(&mut s).is_pending());
            Some(s)
        });
        // Dropped while `b` is entered: it must not become one of `b`'s spares.
        b.block_on(async move { drop(made_in_a) });
        drop(a);
        fires_in(&b);
    }
}
