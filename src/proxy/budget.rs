//! Retry budgets ([`RetryBudget`]) kept per backend Service (namespace/name, all ports),
//! carried over from table to table like connection pools, so a reload never refills one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::table::retry::RetryBudget;
use crate::table::{BackendTarget, ParentPort, RouteTable};

/// Retry budgets by backend Service (namespace, name).
pub type Budgets = HashMap<(Arc<str>, Arc<str>), Arc<RetryBudget>>;

/// The budgets for a new table: every backend Service of a rule that retries keeps the budget
/// it had in `prev` unless its configuration changed, or gets a fresh one (an
/// XBackendTrafficPolicy's, or the default).
///
/// `added` are the parent ports of `table` that `prev_table` does not share (an incremental
/// compile rebuilds only some): while no budget configuration changed, only their backends are
/// looked at and every budget of `prev` is kept (a Service no rule retries to any more keeps
/// a small idle budget until the next configuration change). Otherwise every parent is.
pub fn carry_over_budgets<'a>(
    prev: &Budgets,
    prev_table: &RouteTable,
    table: &RouteTable,
    added: impl IntoIterator<Item = &'a ParentPort>,
) -> Budgets {
    if prev_table.retry_budgets != table.retry_budgets {
        let mut out = Budgets::new();
        for svc in table.services() {
            for parent in &svc.ports {
                add_budgets(&mut out, prev, table, parent);
            }
        }
        return out;
    }
    let mut out = prev.clone();
    for parent in added {
        add_budgets(&mut out, prev, table, parent);
    }
    out
}

fn add_budgets(out: &mut Budgets, prev: &Budgets, table: &RouteTable, parent: &ParentPort) {
    for (_, rule) in &parent.matches {
        if rule.retry.is_none() {
            continue;
        }
        for b in rule.backends.iter() {
            if let BackendTarget::Service(s) = &b.target {
                let key = (s.namespace.clone(), s.name.clone());
                if out.contains_key(&key) {
                    continue;
                }
                let config = table
                    .retry_budgets
                    .get(&format!("{}/{}", s.namespace, s.name))
                    .copied()
                    .unwrap_or_default();
                // A budget whose configuration changed starts afresh.
                let budget = prev
                    .get(&key)
                    .filter(|b| b.config() == config)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(RetryBudget::new(config)));
                out.insert(key, budget);
            }
        }
    }
}
