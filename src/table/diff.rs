//! What a reload changed. A [`TableDigest`] reduces a table to comparable text, object by
//! object, so a reload whose table equals the live one publishes nothing, and one that
//! differs can say which routes were added, removed or edited.
//!
//! The digest holds everything a request can observe (matches, filters, timeouts, weights,
//! backends with their endpoints and readiness, rule order) and nothing it cannot (the
//! generation, endpoint load counters).

use std::collections::BTreeMap;

use super::{ParentPort, ParentService, RouteTable};

/// A table as comparable text. Equal digests route every request the same way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableDigest {
    cluster_domain: String,
    /// Object label (`httproute.gateway.networking.k8s.io faces/color-split`, or
    /// `service faces/color` for a passthrough parent) → its compiled entries, one per
    /// (parent port, match), sorted.
    objects: BTreeMap<String, Vec<String>>,
    /// Parent port (`faces/color:80`) → (object label, rule index) in precedence order.
    order: BTreeMap<String, Vec<(String, usize)>>,
    /// Listener port → its parent port (transparent serving).
    local_ports: BTreeMap<u16, String>,
    /// Retry budgets from XBackendTrafficPolicies, by Service.
    retry_budgets: BTreeMap<String, super::retry::BudgetConfig>,
}

/// The difference between two digests, by object label; each list is sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub edited: Vec<String>,
    /// Parent ports whose rules changed precedence order (e.g. a `creationTimestamp` edit).
    pub reordered: Vec<String>,
    /// The cluster domain changed (every authority is read differently).
    pub cluster_domain: bool,
    /// Listener ports were allocated, released or moved to another parent.
    pub local_ports: bool,
    /// Retry budgets (XBackendTrafficPolicy) changed.
    pub retry_budgets: bool,
}

impl TableDigest {
    pub fn of(table: &RouteTable) -> Self {
        let mut d = TableDigest {
            cluster_domain: table.cluster_domain.clone(),
            local_ports: table.local_port_map(),
            retry_budgets: table.retry_budgets.clone(),
            ..TableDigest::default()
        };
        for svc in table.services() {
            for port in &svc.ports {
                d.add_parent(port);
            }
        }
        for entries in d.objects.values_mut() {
            entries.sort_unstable();
        }
        d
    }

    /// The digest of some parent Services of `table` only (what an incremental compile
    /// rebuilt): comparing two of them tells what changed in those parents.
    pub fn of_parts<'a>(
        table: &RouteTable,
        services: impl IntoIterator<Item = &'a ParentService>,
    ) -> Self {
        let mut d = TableDigest {
            cluster_domain: table.cluster_domain.clone(),
            local_ports: table.local_port_map(),
            retry_budgets: table.retry_budgets.clone(),
            ..TableDigest::default()
        };
        for svc in services {
            for port in &svc.ports {
                d.add_parent(port);
            }
        }
        for entries in d.objects.values_mut() {
            entries.sort_unstable();
        }
        d
    }

    fn add_parent(&mut self, port: &ParentPort) {
        let parent = format!("{}/{}:{}", port.namespace, port.name, port.port);
        let mut order = Vec::with_capacity(port.matches.len());
        for (m, rule) in &port.matches {
            let label = match &rule.route {
                Some(r) => format!(
                    "{}.{} {}/{}",
                    r.kind.to_ascii_lowercase(),
                    r.group,
                    r.namespace,
                    r.name
                ),
                None => format!("service {}/{}", port.namespace, port.name),
            };
            // Serializing a table cannot fail (string keys, no non-finite floats); an
            // error would only make the digest differ, i.e. publish once more.
            let entry = serde_json::to_string(&(&parent, m, rule)).unwrap_or_default();
            self.objects.entry(label.clone()).or_default().push(entry);
            order.push((label, rule.index));
        }
        self.order.insert(parent, order);
    }

    /// What turns `self` (the live table) into `new`.
    pub fn changes(&self, new: &TableDigest) -> TableChanges {
        let mut c = TableChanges {
            cluster_domain: self.cluster_domain != new.cluster_domain,
            local_ports: self.local_ports != new.local_ports,
            retry_budgets: self.retry_budgets != new.retry_budgets,
            ..TableChanges::default()
        };
        for (label, entries) in &new.objects {
            match self.objects.get(label) {
                None => c.added.push(label.clone()),
                Some(old) if old != entries => c.edited.push(label.clone()),
                Some(_) => {}
            }
        }
        c.removed = self
            .objects
            .keys()
            .filter(|l| !new.objects.contains_key(*l))
            .cloned()
            .collect();
        // Order changes that adding, removing or editing an object does not already explain.
        let touched = |o: &[(String, usize)]| {
            o.iter()
                .any(|(l, _)| c.added.contains(l) || c.removed.contains(l) || c.edited.contains(l))
        };
        c.reordered = new
            .order
            .iter()
            .filter(|(parent, order)| {
                self.order
                    .get(*parent)
                    .is_some_and(|old| old != *order && !touched(old) && !touched(order))
            })
            .map(|(parent, _)| parent.clone())
            .collect();
        c
    }
}

impl TableChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.edited.is_empty()
            && self.reordered.is_empty()
            && !self.cluster_domain
            && !self.local_ports
            && !self.retry_budgets
    }
}

/// `edited: httproute.gateway.networking.k8s.io faces/color-split; added: service faces/color`
/// (empty parts left out).
impl std::fmt::Display for TableChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        for (what, list) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("edited", &self.edited),
            ("rule order changed on", &self.reordered),
        ] {
            if !list.is_empty() {
                write!(f, "{sep}{what}: {}", list.join(", "))?;
                sep = "; ";
            }
        }
        if self.cluster_domain {
            write!(f, "{sep}cluster domain changed")?;
            sep = "; ";
        }
        if self.local_ports {
            write!(f, "{sep}parent listener ports changed")?;
            sep = "; ";
        }
        if self.retry_budgets {
            write!(f, "{sep}retry budgets changed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, CompileOptions};
    use crate::index::Index;
    use crate::sources::file::parse_documents;

    fn table(yaml: &str) -> RouteTable {
        let mut index = Index::new();
        for loaded in parse_documents(std::path::Path::new("test.yaml"), yaml) {
            index.apply(loaded.unwrap().object).unwrap();
        }
        compile(&index, &CompileOptions::default(), None).table
    }

    const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-b, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 80}]}
---
";

    fn route(name: &str, parent: &str, weight: u32) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}, port: 80}}]\n  rules:\n  - backendRefs: [{{name: web-b, port: 80, weight: {weight}}}]\n---\n"
        )
    }

    #[test]
    fn swapped_creation_timestamps_reorder_the_parent() {
        let aged = |name: &str, ts: &str| {
            route(name, "web", 1).replace(
                "namespace: shop}",
                &format!("namespace: shop, creationTimestamp: \"{ts}\"}}"),
            )
        };
        let old = TableDigest::of(&table(&format!(
            "{SERVICES}{}{}",
            aged("one", "2024-01-01T00:00:00Z"),
            aged("two", "2025-01-01T00:00:00Z")
        )));
        let new = TableDigest::of(&table(&format!(
            "{SERVICES}{}{}",
            aged("one", "2025-01-01T00:00:00Z"),
            aged("two", "2024-01-01T00:00:00Z")
        )));
        assert_ne!(old, new);
        let c = old.changes(&new);
        assert_eq!(c.reordered, ["shop/web:80"], "{c:?}");
        assert!(c.added.is_empty() && c.removed.is_empty() && c.edited.is_empty());
    }

    #[test]
    fn recompiling_the_same_objects_changes_nothing() {
        let yaml = format!("{SERVICES}{}", route("split", "web", 1));
        let (a, b) = (
            TableDigest::of(&table(&yaml)),
            TableDigest::of(&table(&yaml)),
        );
        assert!(a
            .objects
            .contains_key("httproute.gateway.networking.k8s.io shop/split"));
        assert_eq!(a, b);
        assert!(a.changes(&b).is_empty());
    }

    #[test]
    fn changes_name_the_routes_added_removed_and_edited() {
        let old = TableDigest::of(&table(&format!(
            "{SERVICES}{}{}",
            route("split", "web", 1),
            route("gone", "api", 1)
        )));
        let new = TableDigest::of(&table(&format!(
            "{SERVICES}{}{}",
            route("split", "web", 2),
            route("fresh", "web-b", 1)
        )));
        assert_ne!(old, new);
        let c = old.changes(&new);
        // A parent that loses its only route passes through again, and the other way round.
        assert_eq!(
            c.added,
            [
                "httproute.gateway.networking.k8s.io shop/fresh",
                "service shop/api"
            ]
        );
        assert_eq!(
            c.removed,
            [
                "httproute.gateway.networking.k8s.io shop/gone",
                "service shop/web-b"
            ]
        );
        assert_eq!(c.edited, ["httproute.gateway.networking.k8s.io shop/split"]);
        assert!(c.reordered.is_empty(), "{c:?}");
        assert_eq!(
            c.to_string(),
            "added: httproute.gateway.networking.k8s.io shop/fresh, service shop/api; \
             removed: httproute.gateway.networking.k8s.io shop/gone, service shop/web-b; \
             edited: httproute.gateway.networking.k8s.io shop/split"
        );
    }
}
