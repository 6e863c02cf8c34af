//! Interned names: one shared allocation per distinct namespace or object name.
//!
//! An object's key is held by several maps at once (the index, the incremental compile's
//! bookkeeping, the source seam's per-feed key sets, file mode's per-file keys and owners),
//! and the same namespace and Service names recur in every route that names them. As `String`s
//! each copy was its own heap block (32 bytes at least); [`intern`] hands out clones of one
//! `Arc<str>` per distinct value instead, so a copy is a reference count. Interning object
//! keys and the names admitted routes hold (their own, their parentRefs' and backendRefs')
//! took the peak RSS of the issue #14 workload (`benches/workload/measure.py`, file mode) from
//! 614 to 461 MiB at 100k routes (6.3 to 4.7 KiB per route), 196 to 153 MiB at 30k and 77 to
//! 62 MiB at 10k: fewer bytes, and far fewer small heap blocks, each of which costs glibc's
//! allocator a header and rounding on top.
//!
//! Names nobody holds any more are dropped from the table when it has doubled since the last
//! sweep, so a cluster that churns through names does not grow it without bound.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

struct Table {
    names: HashSet<Arc<str>>,
    /// Sweep unused names when `names` grows past this.
    sweep_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        names: HashSet::new(),
        sweep_at: 1024,
    })
});

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(have) = t.names.get(s) {
        return have.clone();
    }
    if t.names.len() >= t.sweep_at {
        // Only the table holds it: nobody uses the name any more.
        t.names.retain(|n| Arc::strong_count(n) > 1);
        t.sweep_at = (t.names.len() * 2).max(1024);
    }
    let new: Arc<str> = Arc::from(s);
    t.names.insert(new.clone());
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation_and_unused_ones_are_swept() {
        let a = intern("intern-test-a");
        let b = intern(&String::from("intern-test-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "intern-test-a");
        assert!(!Arc::ptr_eq(&a, &intern("intern-test-b")));
        // Churn through enough unused names to force sweeps: the held one survives them and
        // is still handed out, the table does not keep every name ever seen.
        for i in 0..10_000 {
            intern(&format!("intern-test-churn-{i}"));
        }
        assert!(Arc::ptr_eq(&a, &intern("intern-test-a")));
        let len = TABLE.lock().unwrap().names.len();
        assert!(len < 10_000, "unused names swept ({len} left)");
    }
}
