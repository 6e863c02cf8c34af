//! Failure accrual: whether an endpoint is in rotation, from what its recent requests saw.
//!
//! The state of one endpoint lives in its [`EndpointLoad`](super::EndpointLoad), so it survives
//! table swaps as long as the endpoint stays in the table. The rules (design.md "Resilience",
//! Linkerd's consecutive-failures accrual, Envoy's outlier detection):
//!
//! - A **connect failure** (refused, unreachable, connect timeout) ejects the endpoint at once:
//!   nothing listens there, so every request sent its way fails the same.
//! - Other exchange failures (a broken or malformed response) eject it after
//!   [`CONSECUTIVE_FAILURES`] in a row; any success resets the count.
//! - Linkerd's `balancer.linkerd.io/failure-accrual: consecutive` annotations on a Service set
//!   its own count, backoff bounds and jitter ([`AccrualConfig`]).
//! - An ejected endpoint gets no traffic for its backoff: 1 s after the first ejection, doubling
//!   on every failed probe up to 30 s. When the backoff has passed, exactly one request is let
//!   through as a probe (the first to claim it); its success returns the endpoint to rotation
//!   and resets the backoff, its failure ejects the endpoint again for the next, longer, backoff.
//! - Ejection alone never fails a request: when every candidate endpoint of a backend is
//!   ejected, the balancer uses them anyway (Envoy's panic mode, Linkerd's behaviour when all
//!   endpoints are in failure accrual would be 503; meshroute prefers trying).
//!
//! - A **429 or 503 with `Retry-After`** (delta-seconds) penalises the endpoint for that long
//!   (at most [`MAX_PENALTY_MS`]): it stays in rotation, but P2C prefers the other candidate
//!   while it is penalised (Linkerd 2.20's load biaser). An HTTP-date `Retry-After` is ignored.
//!
//! Pure: times are milliseconds on a monotonic clock chosen by the caller. An endpoint in
//! rotation costs one relaxed atomic load per pick and nothing else (no clock is read).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Exchange failures in a row that eject an endpoint (Linkerd's default for HTTP).
pub const CONSECUTIVE_FAILURES: u32 = 7;
/// Backoff after the first ejection.
pub const MIN_BACKOFF_MS: u64 = 1_000;
/// Longest backoff between probes.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// How a backend's endpoints are ejected: meshroute's defaults above, or what Linkerd's
/// `balancer.linkerd.io/failure-accrual: consecutive` annotations on its Service say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AccrualConfig {
    /// Exchange failures in a row that eject an endpoint.
    pub max_failures: u32,
    /// Backoff after the first ejection, doubled on each failed probe up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Each backoff is lengthened by up to this share of itself (per mille), so endpoints
    /// ejected together are not all probed at once.
    pub jitter_permille: u32,
    /// A 5xx response counts as a failure too (Linkerd's HTTP classification), not only a
    /// broken exchange.
    pub count_5xx: bool,
}

impl AccrualConfig {
    /// meshroute's defaults: 7 failures, 1 s doubling up to 30 s, no jitter.
    pub const DEFAULT: AccrualConfig = AccrualConfig {
        max_failures: CONSECUTIVE_FAILURES,
        min_backoff_ms: MIN_BACKOFF_MS,
        max_backoff_ms: MAX_BACKOFF_MS,
        jitter_permille: 0,
        count_5xx: false,
    };

    pub fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }

    /// The backoff `b` plus its jitter, drawn from `seed` (the clock: this module is pure).
    fn jittered(&self, b: u64, seed: u64) -> u64 {
        let span = b.saturating_mul(u64::from(self.jitter_permille)) / 1000;
        if span == 0 {
            return b;
        }
        let r = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        b + r % (span + 1)
    }
}

impl Default for AccrualConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Failure accrual state of one endpoint.
#[derive(Debug, Default)]
pub struct Health {
    /// 0: in rotation. Otherwise ejected until this time; a probe may go once it has passed.
    ejected_until: AtomicU64,
    /// The backoff that the next ejection uses.
    backoff: AtomicU64,
    /// Exchange failures since the last success.
    failures: AtomicU32,
    /// A probe has been let through and has not reported yet.
    probing: AtomicBool,
    /// 0: no penalty. Otherwise the endpoint asked for less traffic (429/503 with
    /// `Retry-After`) until this time: the balancer prefers any other candidate.
    penalized_until: AtomicU64,
}

/// Longest penalty a `Retry-After` can ask for.
pub const MAX_PENALTY_MS: u64 = 30_000;

/// What the balancer may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In rotation.
    Yes,
    /// Ejected, but its backoff has passed and this caller won the probe: send it this request.
    Probe,
    /// Ejected: send elsewhere if anything else is available.
    No,
}

impl Health {
    /// Whether the endpoint is in rotation, without reading the clock.
    #[inline]
    pub fn in_rotation(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    /// Whether an endpoint may take a request at `now`. A `Probe` answer claims the probe:
    /// other callers see `No` until the probe's outcome is recorded or another backoff passes.
    pub fn admit(&self, now: impl FnOnce() -> u64) -> Admit {
        self.admit_with(now, &AccrualConfig::DEFAULT)
    }

    /// [`Health::admit`] under `cfg`.
    pub fn admit_with(&self, now: impl FnOnce() -> u64, cfg: &AccrualConfig) -> Admit {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return Admit::Yes;
        }
        let now = now();
        if now < until {
            return Admit::No;
        }
        // Hold the others off for another backoff while the probe runs (a probe that never
        // reports, e.g. cancelled by its client, thus gives the next caller the next chance).
        let next = (now + self.backoff(cfg).max(cfg.min_backoff_ms)).max(1);
        match self
            .ejected_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                self.probing.store(true, Ordering::Release);
                Admit::Probe
            }
            Err(_) => Admit::No,
        }
    }

    /// The endpoint answered 429 or 503 with `Retry-After: ms/1000`: penalise it until
    /// `now + ms` (at most [`MAX_PENALTY_MS`]; a later penalty never shortens an earlier one).
    pub fn penalize(&self, now: u64, ms: u64) {
        let until = (now + ms.min(MAX_PENALTY_MS)).max(1);
        self.penalized_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the endpoint is penalised at `now`. Reads the clock only while a penalty is
    /// set; one that has passed is cleared.
    #[inline]
    pub fn penalized(&self, now: impl FnOnce() -> u64) -> bool {
        let until = self.penalized_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now() < until {
            return true;
        }
        let _ =
            self.penalized_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// The backoff the next ejection will use.
    fn backoff(&self, cfg: &AccrualConfig) -> u64 {
        match self.backoff.load(Ordering::Relaxed) {
            0 => cfg.min_backoff_ms,
            b => b,
        }
    }

    /// A request to this endpoint got a response. Cheap when nothing was wrong.
    #[inline]
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Release);
            self.backoff.store(0, Ordering::Relaxed);
            self.probing.store(false, Ordering::Relaxed);
        }
    }

    /// Connecting failed: eject at once. True when this put the endpoint out of rotation (it
    /// was in rotation, or a probe failed).
    pub fn connect_failed(&self, now: u64) -> bool {
        self.eject(now, &AccrualConfig::DEFAULT)
    }

    /// [`Health::connect_failed`] under `cfg`.
    pub fn connect_failed_with(&self, now: u64, cfg: &AccrualConfig) -> bool {
        self.eject(now, cfg)
    }

    /// An exchange failed after connecting. True when this ejected the endpoint.
    pub fn exchange_failed(&self, now: u64) -> bool {
        self.exchange_failed_with(now, &AccrualConfig::DEFAULT)
    }

    /// [`Health::exchange_failed`] under `cfg`.
    pub fn exchange_failed_with(&self, now: u64, cfg: &AccrualConfig) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= cfg.max_failures || self.probing.load(Ordering::Acquire) {
            return self.eject(now, cfg);
        }
        false
    }

    /// Take the endpoint out of rotation for its backoff, and double the next one. Failures
    /// reported while it is out change nothing (requests sent before the ejection), except the
    /// probe's, which starts the next, longer, backoff.
    fn eject(&self, now: u64, cfg: &AccrualConfig) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let ejecting = until == 0;
        if !ejecting && !self.probing.swap(false, Ordering::AcqRel) {
            return false;
        }
        let backoff = self.backoff(cfg).min(cfg.max_backoff_ms);
        self.ejected_until
            .store((now + cfg.jittered(backoff, now)).max(1), Ordering::Release);
        self.backoff.store(
            (backoff * 2).min(cfg.max_backoff_ms).max(1),
            Ordering::Relaxed,
        );
        self.failures.store(0, Ordering::Relaxed);
        ejecting
    }
}

/// P2C's comparison of two endpoints in rotation: true when `b` should take the request
/// rather than `a`. An endpoint under a `Retry-After` penalty loses to one that is not;
/// otherwise the one with fewer requests in flight wins (ties go to `a`).
#[inline]
pub fn prefer(b: &super::Endpoint, a: &super::Endpoint, now: &impl Fn() -> u64) -> bool {
    match (a.load.health.penalized(now), b.load.health.penalized(now)) {
        (true, false) => true,
        (false, true) => false,
        _ => b.load.in_flight() < a.load.in_flight(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_accrual_ejects_after_its_own_count_and_backs_off_within_its_bounds() {
        let cfg = AccrualConfig {
            max_failures: 2,
            min_backoff_ms: 100,
            max_backoff_ms: 250,
            jitter_permille: 500,
            count_5xx: true,
        };
        let h = Health::default();
        assert!(!h.exchange_failed_with(0, &cfg));
        assert!(h.exchange_failed_with(0, &cfg), "second failure ejects");
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let mut waited = 0;
            while h.admit_with(|| now + waited, &cfg) != Admit::Probe {
                waited += 10;
            }
            waits.push(waited);
            now += waited;
            h.connect_failed_with(now, &cfg);
        }
        // 100, 200, 250, 250 plus up to half again of jitter.
        for (w, base) in waits.iter().zip([100, 200, 250, 250]) {
            assert!((base..=base + base / 2 + 10).contains(w), "{waits:?}");
        }
    }

    #[test]
    fn a_penalty_lasts_as_asked_up_to_its_cap_and_never_shrinks() {
        let h = Health::default();
        assert!(!h.penalized(|| 0));
        h.penalize(1_000, 2_000);
        assert!(h.penalized(|| 2_999));
        assert!(!h.penalized(|| 3_000));
        h.penalize(0, 10_000_000);
        assert!(h.penalized(|| MAX_PENALTY_MS - 1));
        h.penalize(0, 1);
        assert!(
            h.penalized(|| MAX_PENALTY_MS - 1),
            "a shorter one does not shorten"
        );
        assert!(!h.penalized(|| MAX_PENALTY_MS));
        assert!(h.in_rotation(), "a penalty is no ejection");
    }

    #[test]
    fn connect_failure_ejects_at_once_and_a_probe_brings_it_back() {
        let h = Health::default();
        assert_eq!(h.admit(|| 0), Admit::Yes);
        assert!(h.connect_failed(10_000), "first ejection is reported");
        assert!(!h.in_rotation());
        assert_eq!(h.admit(|| 10_500), Admit::No, "inside the 1 s backoff");
        assert_eq!(h.admit(|| 11_000), Admit::Probe, "backoff over: one probe");
        assert_eq!(h.admit(|| 11_001), Admit::No, "only one probe at a time");
        h.success();
        assert!(h.in_rotation());
        assert_eq!(h.admit(|| 11_002), Admit::Yes);
    }

    #[test]
    fn failed_probes_double_the_backoff_up_to_the_limit() {
        let h = Health::default();
        let mut now = 0;
        assert!(h.connect_failed(now));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let mut waited = 0;
            while h.admit(|| now + waited) != Admit::Probe {
                waited += 100;
            }
            waits.push(waited);
            now += waited;
            assert!(!h.connect_failed(now), "a failed probe is no new ejection");
        }
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        h.success();
        assert!(h.connect_failed(now), "a fresh ejection after recovery");
        assert_eq!(h.admit(|| now + 1000), Admit::Probe, "backoff reset to 1 s");
    }

    #[test]
    fn failures_of_requests_sent_before_the_ejection_do_not_extend_it() {
        let h = Health::default();
        assert!(h.connect_failed(0));
        assert!(!h.connect_failed(500));
        assert_eq!(h.admit(|| 1000), Admit::Probe);
    }

    #[test]
    fn exchange_failures_eject_after_consecutive_ones_only() {
        let h = Health::default();
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            assert!(!h.exchange_failed(0));
        }
        h.success();
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            assert!(!h.exchange_failed(0));
        }
        assert!(h.in_rotation());
        assert!(h.exchange_failed(0));
        assert!(!h.in_rotation());
    }
}
