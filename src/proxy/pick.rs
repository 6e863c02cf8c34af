//! Cheap randomness and a cheap clock for the picks of the request path: weighted backend
//! choice, P2C endpoint choice, mirror fractions, and failure accrual's timestamps.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A fast per-thread random number (xorshift64*): weighted picks need speed, not secrecy.
pub(crate) fn fast_rand() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// The clock of failure accrual ([`crate::table::accrual`]): milliseconds since the first call.
pub(crate) fn accrual_now() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
