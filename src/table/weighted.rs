//! Weighted backend choice: a cumulative-weight table built once, searched per request.
//! Weight-0 backends are never picked; a rule whose weights are all zero (or that has no
//! backends) has no pick at all, which the proxy answers with 500.

use serde::Serialize;

use super::Backend;

#[derive(Debug, Default, Serialize)]
pub struct WeightedBackends {
    backends: Vec<Backend>,
    /// `cumulative[i]` = sum of weights of backends `0..=i`.
    #[serde(skip)]
    cumulative: Vec<u64>,
}

impl WeightedBackends {
    pub fn new(backends: Vec<Backend>) -> Self {
        let mut sum = 0u64;
        let cumulative = backends
            .iter()
            .map(|b| {
                sum += u64::from(b.weight);
                sum
            })
            .collect();
        WeightedBackends {
            backends,
            cumulative,
        }
    }

    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Probability of each backend being picked, in order (all 0 when the total is 0).
    pub fn probabilities(&self) -> Vec<f64> {
        let total = self.total();
        self.backends
            .iter()
            .map(|b| {
                if total == 0 {
                    0.0
                } else {
                    b.weight as f64 / total as f64
                }
            })
            .collect()
    }

    /// Pick a backend for a random number `r` (any u64). `None` when all weights are zero.
    pub fn pick(&self, r: u64) -> Option<&Backend> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        if self.backends.len() == 1 {
            return self.backends.first();
        }
        let x = r % total;
        // First index whose cumulative weight exceeds x; weight-0 entries have the same
        // cumulative value as their predecessor and so can never be that index.
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.backends.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::BackendTarget;

    fn b(weight: u32, name: &str) -> Backend {
        Backend {
            weight,
            target: BackendTarget::Invalid {
                reason: name.to_string(),
            },
            filters: vec![],
        }
    }

    fn name(b: &Backend) -> &str {
        match &b.target {
            BackendTarget::Invalid { reason } => reason,
            BackendTarget::Service(_) => "svc",
        }
    }

    #[test]
    fn picks_follow_weights_exactly_over_one_cycle() {
        let w = WeightedBackends::new(vec![b(90, "a"), b(0, "zero"), b(10, "b")]);
        let mut counts = std::collections::HashMap::new();
        for r in 0..100u64 {
            *counts
                .entry(name(w.pick(r).unwrap()).to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.get("a"), Some(&90));
        assert_eq!(counts.get("b"), Some(&10));
        assert_eq!(counts.get("zero"), None);
    }

    #[test]
    fn zero_weight_first_and_last_are_never_picked() {
        let w = WeightedBackends::new(vec![b(0, "z1"), b(1, "a"), b(0, "z2")]);
        for r in [0, 1, 2, u64::MAX] {
            assert_eq!(name(w.pick(r).unwrap()), "a");
        }
    }

    #[test]
    fn all_zero_or_empty_has_no_pick() {
        assert!(WeightedBackends::new(vec![b(0, "a"), b(0, "b")])
            .pick(7)
            .is_none());
        assert!(WeightedBackends::new(vec![]).pick(7).is_none());
    }

    #[test]
    fn large_weights_do_not_overflow() {
        let w = WeightedBackends::new(vec![b(1_000_000, "a"), b(1_000_000, "b")]);
        assert_eq!(w.total(), 2_000_000);
        assert_eq!(name(w.pick(1_500_000).unwrap()), "b");
        assert_eq!(w.probabilities(), vec![0.5, 0.5]);
    }
}
