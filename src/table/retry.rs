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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hedge {
    #[serde(with = "millis")]
    pub delay: Duration,
    pub max: u32,
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
