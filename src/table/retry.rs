//! Retries as compiled: which answers a rule retries, how often, how long it waits in between,
//! and the retry budget that keeps a failing backend from being sent more than its share.
//!
//! Sources (design.md "Resilience"): GEP-1731 `rules[].retry {codes, attempts, backoff}` on
//! gateway.networking.k8s.io HTTPRoutes, and Linkerd's `retry.linkerd.io/{http,limit,timeout}`
//! annotations on the route or its parent Service (the route's win, field by field). Where
//! GEP-1731 is silent meshroute follows Linkerd: one retry when no limit is given, no wait
//! between attempts when no backoff is given.
//!
//! What is retried once a rule has a policy: a response whose status is in `codes`; an
//! attempt that could not connect; an attempt cut off by its per-attempt deadline
//! (`timeouts.backendRequest`, or `retry.linkerd.io/timeout`); an exchange that broke before
//! the response head. Never: the `request` deadline, a response already streaming to the
//! client, or a request body over [`MAX_REPLAY_BODY`].
//!
//! Pure: budgets take times as milliseconds on a clock the caller chooses.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Largest request body kept for replay; a larger one is sent once and never retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// How a rule retries. Present only on rules that retry at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt (GEP-1731 `attempts`, Linkerd `retry.linkerd.io/limit`).
    pub limit: u32,
    /// Status codes that are retried.
    pub codes: StatusCodes,
    /// Least wait before a retry; doubled for each further retry (capped at 8×), plus up to
    /// half of it again as jitter. Zero: retry at once.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Linkerd's `retry.linkerd.io/timeout`: bounds each attempt (as `backendRequest` does; the
    /// shorter wins).
    #[serde(with = "opt_millis")]
    pub attempt_timeout: Option<Duration>,
    /// `meshroute.dev/hedge` on the route: request hedging for idempotent requests without
    /// a body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
}

/// Request hedging: when an idempotent request without a body has no response head after
/// `delay`, another attempt goes out (to another endpoint when the backend has one, to
/// another backend by weight when the rule has several), up to `max` extra attempts; the
/// first response head wins and the others are cancelled. Hedges draw on the retry budget.
#[derive(Debug, Clone, Serialize)]
pub struct Hedge {
    pub delay: HedgeDelay,
    pub max: u32,
    /// The rule's observed time to a response head, for [`HedgeDelay::P95`]. Shared by the
    /// copies of one admitted rule (every parent port it is on); an edited route starts afresh.
    #[serde(skip)]
    pub observed: std::sync::Arc<LatencyWindow>,
}

impl PartialEq for Hedge {
    fn eq(&self, other: &Hedge) -> bool {
        self.delay == other.delay && self.max == other.max
    }
}

impl Eq for Hedge {}

impl Hedge {
    /// The delay before the next hedge at `now_ms`: the fixed one, or the observed p95 (at
    /// least 1 ms); `None` while a p95 rule has seen fewer than [`LatencyWindow::MIN_SAMPLES`]
    /// answers in the last two windows (no hedging until the rule's latency is known).
    pub fn delay_at(&self, now_ms: u64) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::P95 => self
                .observed
                .quantile(now_ms, 0.95)
                .map(|d| d.max(Duration::from_millis(1))),
        }
    }
}

/// How long a hedged request waits for a response head before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    Fixed(Duration),
    /// The 95th percentile of the rule's observed time to a response head over the last 10
    /// to 20 seconds.
    P95,
}

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeDelay::Fixed(d) => {
                s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            HedgeDelay::P95 => s.serialize_str("p95"),
        }
    }
}

/// A rule's recent latencies, for quantiles: two 10-second windows (the current one and the
/// one before) of log-spaced buckets (4 per power of two of microseconds: a quantile is the
/// upper bound of its bucket, at most 25% above the true value), counted with relaxed atomics. Recording is one atomic add
/// (plus a reset when a window turns over); a quantile reads 2 x 112 counters.
#[derive(Debug)]
pub struct LatencyWindow {
    /// Window number each slot counts, by `window % 2`.
    epochs: [std::sync::atomic::AtomicU64; 2],
    buckets: [[std::sync::atomic::AtomicU32; LATENCY_BUCKETS]; 2],
}

const LATENCY_BUCKETS: usize = 112;
const LATENCY_WINDOW_MS: u64 = 10_000;

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            epochs: Default::default(),
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| Default::default())),
        }
    }
}

impl LatencyWindow {
    /// Fewer answers than this in the last two windows give no quantile.
    pub const MIN_SAMPLES: u64 = 20;

    fn bucket(latency: Duration) -> usize {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let log = 63 - us.leading_zeros() as usize;
        // The two bits below the leading one pick a quarter of the power of two.
        let sub = if log >= 2 {
            ((us >> (log - 2)) & 3) as usize
        } else {
            0
        };
        (log * 4 + sub).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of a bucket.
    fn bound(bucket: usize) -> Duration {
        let (log, sub) = (bucket / 4, bucket % 4);
        let us = if log >= 2 {
            (1u64 << log) + ((sub as u64 + 1) << (log - 2))
        } else {
            2u64 << log
        };
        Duration::from_micros(us)
    }

    /// The slot for window `w`, emptied first if it still counts an older window.
    fn slot(&self, w: u64) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let i = (w % 2) as usize;
        let seen = self.epochs[i].load(Relaxed);
        if seen != w
            && self.epochs[i]
                .compare_exchange(seen, w, Relaxed, Relaxed)
                .is_ok()
        {
            for b in &self.buckets[i] {
                b.store(0, Relaxed);
            }
        }
        i
    }

    /// Count one answer that took `latency`, at `now_ms`.
    pub fn record(&self, now_ms: u64, latency: Duration) {
        let i = self.slot(now_ms / LATENCY_WINDOW_MS + 1);
        self.buckets[i][Self::bucket(latency)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `q` quantile (0 < q < 1) of what was recorded in this window and the one before,
    /// as the upper bound of its bucket.
    pub fn quantile(&self, now_ms: u64, q: f64) -> Option<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        // Window numbers start at 1 so that 0 means "never counted".
        let w = now_ms / LATENCY_WINDOW_MS + 1;
        let live: Vec<usize> = (0..2)
            .filter(|&i| {
                let e = self.epochs[i].load(Relaxed);
                e != 0 && e + 1 >= w
            })
            .collect();
        let count = |b: usize| -> u64 {
            live.iter()
                .map(|&i| u64::from(self.buckets[i][b].load(Relaxed)))
                .sum()
        };
        let total: u64 = (0..LATENCY_BUCKETS).map(count).sum();
        if total < Self::MIN_SAMPLES {
            return None;
        }
        // The smallest bucket with at least q of the answers at or below it.
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for b in 0..LATENCY_BUCKETS {
            seen += count(b);
            if seen >= want.max(1) {
                return Some(Self::bound(b));
            }
        }
        Some(Self::bound(LATENCY_BUCKETS - 1))
    }
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based), given a random number for the jitter.
    pub fn backoff_before(&self, n: u32, random: u64) -> Duration {
        if self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let base = self.backoff * (1u32 << n.saturating_sub(1).min(3));
        let jitter_ms = u64::try_from(base.as_millis() / 2).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            0
        } else {
            random % (jitter_ms + 1)
        };
        base + Duration::from_millis(jitter)
    }
}

/// A set of HTTP status codes 100..=599, one bit each.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StatusCodes([u64; 8]);

impl StatusCodes {
    /// Add `from..=to`; codes outside 100..=599 are ignored (validation refuses them first).
    pub fn insert_range(&mut self, from: u16, to: u16) {
        for code in from.max(100)..=to.min(599) {
            let i = usize::from(code - 100);
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        match code.checked_sub(100).map(usize::from) {
            Some(i) if i < 500 => self.0[i / 64] & (1 << (i % 64)) != 0,
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The set as ranges, e.g. `[(500, 599)]`.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for code in 100..=599u16 {
            if !self.contains(code) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 + 1 == code => last.1 = code,
                _ => out.push((code, code)),
            }
        }
        out
    }
}

impl std::fmt::Debug for StatusCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for StatusCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .ranges()
            .into_iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for StatusCodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Parse Linkerd's `retry.linkerd.io/http`: a comma-separated list of `5xx`, `gateway-error`
/// (502-504), `NNN` and `NNN-MMM`, each within 100..=599.
pub fn parse_linkerd_codes(value: &str) -> Result<StatusCodes, String> {
    let mut codes = StatusCodes::default();
    for item in value.split(',').map(str::trim) {
        let code = |s: &str| -> Result<u16, String> {
            match s.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "{item:?} is not a status code, a range NNN-MMM, 5xx or gateway-error"
                )),
            }
        };
        match item {
            "5xx" => codes.insert_range(500, 599),
            "gateway-error" => codes.insert_range(502, 504),
            "" => return Err(format!("{value:?} has an empty item")),
            _ => match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (code(a.trim())?, code(b.trim())?);
                    if a > b {
                        return Err(format!("{item:?}: the range is empty ({a} > {b})"));
                    }
                    codes.insert_range(a, b);
                }
                None => {
                    let c = code(item)?;
                    codes.insert_range(c, c);
                }
            },
        }
    }
    Ok(codes)
}

/// A retry budget (XBackendTrafficPolicy `retryConstraint`): over the last `interval`, retries
/// may be at most `percent` of the requests, but `min_count` per `min_interval` are always
/// allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetConfig {
    pub percent: u32,
    #[serde(with = "millis")]
    pub interval: Duration,
    pub min_count: u32,
    #[serde(with = "millis")]
    pub min_interval: Duration,
}

impl Default for BudgetConfig {
    /// Gateway API's defaults: 20% over 10 s, at least 10 retries per second.
    fn default() -> Self {
        BudgetConfig {
            percent: 20,
            interval: Duration::from_secs(10),
            min_count: 10,
            min_interval: Duration::from_secs(1),
        }
    }
}

/// Slots of the sliding window a budget counts in.
const SLOTS: usize = 10;

/// The running budget of one backend Service: requests and retries counted in [`SLOTS`]
/// slices of its interval. Only rules that retry touch it, and only under its own lock.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Per slot: the slot number it counts for (time / slot length), requests, retries.
    slots: [(u64, u64, u64); SLOTS],
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        RetryBudget {
            config,
            window: Mutex::new(Window::default()),
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    fn slot_ms(&self) -> u64 {
        let interval = u64::try_from(self.config.interval.as_millis()).unwrap_or(u64::MAX);
        (interval / SLOTS as u64).max(1)
    }

    /// A request (first attempt) was sent.
    pub fn deposit(&self, now_ms: u64) {
        let n = now_ms / self.slot_ms();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let slot = w.current(n);
        slot.1 += 1;
    }

    /// Take one retry from the budget; false when it is spent.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        let n = now_ms / self.slot_ms();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (mut requests, mut retries) = (0u64, 0u64);
        for (slot, r, t) in &w.slots {
            if *slot + SLOTS as u64 > n && *slot <= n {
                requests += r;
                retries += t;
            }
        }
        let c = &self.config;
        let share = requests * u64::from(c.percent) / 100;
        // The floor, scaled to the window: `min_count` per `min_interval`.
        let min_ms = u128::max(c.min_interval.as_millis(), 1);
        let floor = u128::from(c.min_count) * c.interval.as_millis() / min_ms;
        let floor = u64::try_from(floor).unwrap_or(u64::MAX);
        if retries >= share.max(floor) {
            return false;
        }
        w.current(n).2 += 1;
        true
    }
}

impl Window {
    fn current(&mut self, n: u64) -> &mut (u64, u64, u64) {
        let slot = &mut self.slots[(n % SLOTS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot
    }
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }
}

mod opt_millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_come_from_the_last_two_windows() {
        let w = LatencyWindow::default();
        // Too few answers: no quantile.
        for _ in 0..19 {
            w.record(1_000, Duration::from_millis(10));
        }
        assert_eq!(w.quantile(1_000, 0.95), None);
        // 95 fast (10 ms) and 5 slow (500 ms): p95 is in the fast bucket, p99 in the slow.
        for _ in 0..76 {
            w.record(2_000, Duration::from_millis(10));
        }
        for _ in 0..5 {
            w.record(3_000, Duration::from_millis(500));
        }
        let p95 = w.quantile(3_000, 0.95).unwrap();
        assert!(
            p95 >= Duration::from_millis(10) && p95 <= Duration::from_micros(12_500),
            "{p95:?}"
        );
        let p99 = w.quantile(3_000, 0.99).unwrap();
        assert!(
            p99 >= Duration::from_millis(500) && p99 <= Duration::from_millis(625),
            "{p99:?}"
        );
        // The next window still sees these; the one after does not.
        assert!(w.quantile(15_000, 0.95).is_some());
        assert_eq!(w.quantile(25_000, 0.95), None);
        // A new window reuses the old slot from scratch.
        for _ in 0..20 {
            w.record(25_000, Duration::from_millis(2));
        }
        let p = w.quantile(25_000, 0.95).unwrap();
        assert!(p <= Duration::from_micros(2_500), "{p:?}");
    }

    #[test]
    fn latency_buckets_bound_their_values_within_a_quarter() {
        for us in [1u64, 2, 3, 7, 100, 999, 1_000, 12_345, 500_000, 60_000_000] {
            let d = Duration::from_micros(us);
            let b = LatencyWindow::bound(LatencyWindow::bucket(d));
            assert!(b > d || (us < 4 && b >= d), "{us} us: bound {b:?}");
            assert!(
                b.as_secs_f64() <= d.as_secs_f64() * 1.25 + 2e-6,
                "{us} us: bound {b:?}"
            );
        }
    }

    #[test]
    fn linkerd_code_lists_parse() {
        let c = parse_linkerd_codes("5xx").unwrap();
        assert!(c.contains(500) && c.contains(599) && !c.contains(499));
        let c = parse_linkerd_codes("gateway-error").unwrap();
        assert_eq!(c.ranges(), [(502, 504)]);
        let c = parse_linkerd_codes("429, 500-502,504").unwrap();
        assert_eq!(c.to_string(), "429,500-502,504");
        for bad in ["", "99", "600", "5xx,", "abc", "503-500", "4xx", "500-"] {
            assert!(parse_linkerd_codes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_codes_outside_the_range_are_never_contained() {
        let mut c = StatusCodes::default();
        c.insert_range(0, 1000);
        assert!(c.contains(100) && c.contains(599));
        assert!(!c.contains(99) && !c.contains(600) && !c.contains(0));
    }

    #[test]
    fn backoff_grows_and_never_goes_below_its_minimum() {
        let p = RetryPolicy {
            limit: 5,
            codes: StatusCodes::default(),
            backoff: Duration::from_millis(100),
            attempt_timeout: None,
            hedge: None,
        };
        for r in [0, 7, u64::MAX] {
            assert!(p.backoff_before(1, r) >= Duration::from_millis(100));
            assert!(p.backoff_before(1, r) <= Duration::from_millis(150));
            assert!(p.backoff_before(2, r) >= Duration::from_millis(200));
            assert!(p.backoff_before(9, r) <= Duration::from_millis(1200));
        }
        let none = RetryPolicy {
            backoff: Duration::ZERO,
            ..p
        };
        assert_eq!(none.backoff_before(3, 5), Duration::ZERO);
    }

    #[test]
    fn budget_allows_its_share_of_requests_plus_nothing_more() {
        let b = RetryBudget::new(BudgetConfig {
            percent: 20,
            interval: Duration::from_secs(10),
            min_count: 0,
            min_interval: Duration::from_secs(1),
        });
        for _ in 0..100 {
            b.deposit(1_000);
        }
        let granted = (0..100).filter(|_| b.withdraw(1_500)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window has moved past those requests.
        assert!(!b.withdraw(12_000));
    }

    #[test]
    fn budget_floor_allows_retries_without_requests() {
        let b = RetryBudget::new(BudgetConfig::default());
        // 10 per second over 10 s: 100 in the window.
        let granted = (0..1000).filter(|_| b.withdraw(500)).count();
        assert_eq!(granted, 100);
    }
}
