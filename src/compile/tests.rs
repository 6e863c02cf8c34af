//! Table-driven tests of compile: precedence and every tie-break, weights, TrafficSplit
//! versions, status reasons and order independence. Inputs are YAML, as users write them.

use std::path::Path;

use http::{HeaderMap, Method};

use super::*;
use crate::sources::file::parse_documents;
use crate::table::matching::RequestView;
use crate::table::Lookup;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: shop, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
"#;

fn index_of(docs: &[&str]) -> Index {
    let mut index = Index::new();
    for d in docs {
        for item in parse_documents(Path::new("t.yaml"), d) {
            let loaded = item.unwrap_or_else(|e| panic!("{e}"));
            index
                .apply(loaded.object)
                .unwrap_or_else(|e| panic!("{e:?}"));
        }
    }
    index
}

fn compile_docs(docs: &[&str]) -> Compiled {
    compile(&index_of(docs), &CompileOptions::default(), None)
}

/// Route name and rule index that a request lands on.
fn route_for(
    c: &Compiled,
    host: &str,
    method: Method,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Option<(String, usize)> {
    let mut h = HeaderMap::new();
    for (n, v) in headers {
        h.insert(*n, v.parse().unwrap());
    }
    let (path, query) = path
        .split_once('?')
        .map(|(p, q)| (p, Some(q)))
        .unwrap_or((path, None));
    let view = RequestView {
        method: &method,
        path,
        query,
        headers: &h,
    };
    match c.table.lookup(host, &view) {
        Lookup::Matched { rule, .. } => Some((
            rule.route
                .as_ref()
                .map(|r| r.name.to_string())
                .unwrap_or_else(|| "<passthrough>".into()),
            rule.index,
        )),
        _ => None,
    }
}

fn route(name: &str, created: Option<&str>, rules: &str) -> String {
    let ts = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: shop{ts}}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: web, port: 80}}]\n  rules:\n{rules}"
    )
}

const TO_A: &str = "    backendRefs: [{name: a, port: 80}]\n";
/// A whole rule sending everything to `a`.
const RULE_A: &str = "  - backendRefs: [{name: a, port: 80}]\n";

#[test]
fn precedence_exact_beats_prefix_beats_shorter_prefix() {
    let r = route(
        "r",
        None,
        &format!("  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n{TO_A}  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n{TO_A}  - matches: [{{path: {{type: Exact, value: /api/v1}}}}]\n{TO_A}"),
    );
    let c = compile_docs(&[SERVICES, &r]);
    let host = "web.shop.svc.cluster.local";
    assert_eq!(
        route_for(&c, host, Method::GET, "/api/v1", &[]),
        Some(("r".into(), 2))
    );
    assert_eq!(
        route_for(&c, host, Method::GET, "/api/v2", &[]),
        Some(("r".into(), 1))
    );
    assert_eq!(
        route_for(&c, host, Method::GET, "/apix", &[]),
        Some(("r".into(), 0))
    );
}

#[test]
fn precedence_method_then_headers_then_query() {
    let r = route(
        "r",
        None,
        &format!(
            "  - matches: [{{path: {{value: /p}}, queryParams: [{{name: q, value: '1'}}]}}]\n{TO_A}  - matches: [{{path: {{value: /p}}, headers: [{{name: x, value: '1'}}]}}]\n{TO_A}  - matches: [{{path: {{value: /p}}, method: GET}}]\n{TO_A}"
        ),
    );
    let c = compile_docs(&[SERVICES, &r]);
    let host = "web.shop";
    // All three match: method wins.
    assert_eq!(
        route_for(&c, host, Method::GET, "/p?q=1", &[("x", "1")]),
        Some(("r".into(), 2))
    );
    // Method ruled out: headers beat query.
    assert_eq!(
        route_for(&c, host, Method::POST, "/p?q=1", &[("x", "1")]),
        Some(("r".into(), 1))
    );
    assert_eq!(
        route_for(&c, host, Method::POST, "/p?q=1", &[]),
        Some(("r".into(), 0))
    );
    assert_eq!(
        route_for(&c, host, Method::POST, "/p", &[]),
        None,
        "no rule matches: 404"
    );
}

#[test]
fn ties_go_to_oldest_route_then_namespace_name_then_rule_order() {
    let same = format!("  - matches: [{{path: {{value: /x}}}}]\n{TO_A}  - matches: [{{path: {{value: /x}}}}]\n{TO_A}");
    let old = route("zzz-old", Some("2024-01-01T00:00:00Z"), &same);
    let new = route("aaa-new", Some("2025-01-01T00:00:00Z"), &same);
    let c = compile_docs(&[SERVICES, &new, &old]);
    assert_eq!(
        route_for(&c, "web.shop", Method::GET, "/x", &[]),
        Some(("zzz-old".into(), 0)),
        "oldest wins"
    );

    let b = route("bbb", Some("2024-01-01T00:00:00Z"), &same);
    let a = route("aaa", Some("2024-01-01T00:00:00Z"), &same);
    let c = compile_docs(&[SERVICES, &b, &a]);
    assert_eq!(
        route_for(&c, "web.shop", Method::GET, "/x", &[]),
        Some(("aaa".into(), 0)),
        "then name"
    );

    let c = compile_docs(&[SERVICES, &route("only", None, &same)]);
    assert_eq!(
        route_for(&c, "web.shop", Method::GET, "/x", &[]),
        Some(("only".into(), 0)),
        "then rule order"
    );

    // A route without a timestamp (file mode) sorts after every timestamped one.
    let c = compile_docs(&[
        SERVICES,
        &route("aaa-untimed", None, &same),
        &route("zzz-timed", Some("2030-01-01T00:00:00Z"), &same),
    ]);
    assert_eq!(
        route_for(&c, "web.shop", Method::GET, "/x", &[]),
        Some(("zzz-timed".into(), 0))
    );
}

#[test]
fn namespace_breaks_ties_before_name() {
    let mk = |ns: &str, name: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: web, namespace: shop, port: 80}}]\n  rules:\n  - backendRefs: [{{name: a, namespace: shop, port: 80}}]\n")
    };
    let c = compile_docs(&[SERVICES, &mk("zeta", "aaa"), &mk("alpha", "zzz")]);
    assert_eq!(
        route_for(&c, "web.shop", Method::GET, "/", &[]),
        Some(("zzz".into(), 0))
    );
}

#[test]
fn compile_is_independent_of_input_order() {
    let r1 = route(
        "one",
        None,
        &format!("  - matches: [{{path: {{value: /a}}}}]\n{TO_A}"),
    );
    let r2 = route(
        "two",
        None,
        "  - matches: [{path: {value: /a}}]\n    backendRefs: [{name: b, port: 80}]\n",
    );
    let split = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: a\n  backends: [{service: a, weight: 1}, {service: b, weight: 3}]\n";
    let docs = [SERVICES, r1.as_str(), r2.as_str(), split];
    let reference = serde_json::to_string(&compile_docs(&docs).table).unwrap();
    // Every rotation and the reverse.
    for k in 0..docs.len() {
        let mut d = docs.to_vec();
        d.rotate_left(k);
        assert_eq!(
            serde_json::to_string(&compile_docs(&d).table).unwrap(),
            reference,
            "rotation {k}"
        );
        d.reverse();
        assert_eq!(
            serde_json::to_string(&compile_docs(&d).table).unwrap(),
            reference,
            "reversed rotation {k}"
        );
    }
}

fn backend_weights(c: &Compiled, host: &str) -> Vec<(String, u32)> {
    let view_h = HeaderMap::new();
    let view = RequestView {
        method: &Method::GET,
        path: "/",
        query: None,
        headers: &view_h,
    };
    match c.table.lookup(host, &view) {
        Lookup::Matched { rule, .. } => rule
            .backends
            .iter()
            .map(|b| match &b.target {
                BackendTarget::Service(s) => (s.name.to_string(), b.weight),
                BackendTarget::Invalid { .. } => ("<invalid>".into(), b.weight),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn weights_default_to_one_and_zero_is_kept_but_never_picked() {
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: a, port: 80}, {name: b, port: 80, weight: 0}]\n",
    );
    let c = compile_docs(&[SERVICES, &r]);
    assert_eq!(
        backend_weights(&c, "web.shop"),
        vec![("a".into(), 1), ("b".into(), 0)]
    );
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &HeaderMap::new(),
        },
    ) else {
        panic!()
    };
    for r in 0..1000u64 {
        let BackendTarget::Service(s) = &rule.backends.pick(r).unwrap().target else {
            panic!()
        };
        assert_eq!(&*s.name, "a");
    }
}

#[test]
fn all_zero_weights_have_no_pick() {
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: a, port: 80, weight: 0}, {name: b, port: 80, weight: 0}]\n",
    );
    let c = compile_docs(&[SERVICES, &r]);
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &HeaderMap::new(),
        },
    ) else {
        panic!()
    };
    assert!(rule.backends.pick(0).is_none());
}

#[test]
fn weight_bounds_are_enforced_at_admission() {
    for (w, ok) in [
        (0, true),
        (1_000_000, true),
        (1_000_001, false),
        (-1, false),
    ] {
        let r = route(
            "r",
            None,
            &format!("  - backendRefs: [{{name: a, port: 80, weight: {w}}}]\n"),
        );
        let items = parse_documents(Path::new("t.yaml"), &r);
        let obj = items.into_iter().next().unwrap().unwrap().object;
        let res = Index::new().apply(obj);
        assert_eq!(res.is_ok(), ok, "weight {w}: {res:?}");
        if let Err(e) = res {
            assert_eq!(e[0].field, "spec.rules[0].backendRefs[0].weight");
            assert!(e[0].message.contains(&w.to_string()));
        }
    }
}

#[test]
fn missing_backend_keeps_its_weight_as_an_invalid_share() {
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: a, port: 80, weight: 9}, {name: gone, port: 80, weight: 1}]\n",
    );
    let c = compile_docs(&[SERVICES, &r]);
    assert_eq!(
        backend_weights(&c, "web.shop"),
        vec![("a".into(), 9), ("<invalid>".into(), 1)]
    );
    let st = &c.statuses[0].parents[0];
    let rr = st.condition("ResolvedRefs").unwrap();
    assert_eq!((rr.status, rr.reason), ("False", "BackendNotFound"));
    assert!(rr.message.contains("shop/gone"), "{}", rr.message);
    assert_eq!(st.condition("Accepted").unwrap().status, "True");
}

#[test]
fn status_reasons() {
    let cases: Vec<(String, &str, &str, &str)> = vec![
        (route("r", None, RULE_A).replace("name: web, port: 80", "name: nope, port: 80"), "Accepted", "False", "NoMatchingParent"),
        (route("r", None, RULE_A).replace("port: 80}]\n  rules", "port: 81}]\n  rules"), "Accepted", "False", "NoMatchingParent"),
        (route("r", None, "  - backendRefs: [{name: a, port: 81}]\n"), "ResolvedRefs", "False", "BackendNotFound"),
        (route("r", None, "  - backendRefs: [{group: apps, kind: Deployment, name: a, port: 80}]\n"), "ResolvedRefs", "False", "InvalidKind"),
        (route("r", None, "  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: F, name: f}}]\n    backendRefs: [{name: a, port: 80}]\n"), "Accepted", "False", "UnsupportedValue"),
        // CORS is supported (it was dropped before).
        (route("r", None, "  - filters: [{type: CORS, cors: {}}]\n    backendRefs: [{name: a, port: 80}]\n"), "Accepted", "True", "Accepted"),
        (
            route("r", None, "  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: F, name: f}}]\n    backendRefs: [{name: a, port: 80}]\n  - backendRefs: [{name: a, port: 80}]\n"),
            "PartiallyInvalid",
            "True",
            "UnsupportedValue",
        ),
        (route("r", None, RULE_A), "Accepted", "True", "Accepted"),
        (route("r", None, RULE_A), "ResolvedRefs", "True", "ResolvedRefs"),
    ];
    for (yaml, ty, status, reason) in cases {
        let c = compile_docs(&[SERVICES, &yaml]);
        let cond = c.statuses[0].parents[0]
            .condition(ty)
            .unwrap_or_else(|| panic!("no {ty} in {:?}", c.statuses[0]));
        assert_eq!(
            (cond.status, cond.reason),
            (status, reason),
            "{yaml}\n{cond:?}"
        );
        assert!(!cond.message.is_empty());
    }
}

#[test]
fn externalname_and_headless_parents_are_not_accepted() {
    let svcs = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\nspec: {type: ExternalName, externalName: example.com, ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: hl, namespace: shop}\nspec: {clusterIP: None, ports: [{port: 80}]}\n";
    for parent in ["ext", "hl"] {
        let r = route("r", None, RULE_A)
            .replace("name: web, port: 80", &format!("name: {parent}, port: 80"));
        let c = compile_docs(&[SERVICES, svcs, &r]);
        let a = c.statuses[0].parents[0].condition("Accepted").unwrap();
        assert_eq!(
            (a.status, a.reason),
            ("False", "NoMatchingParent"),
            "{parent}"
        );
    }
}

#[test]
fn service_parent_group_is_core_in_any_case_and_port_is_optional() {
    for group in ["\"\"", "core", "Core", "CORE"] {
        let r = route("r", None, RULE_A).replace(
            "group: \"\", name: web, port: 80",
            &format!("group: {group}, name: web"),
        );
        let c = compile_docs(&[SERVICES, &r]);
        assert!(c.statuses[0].accepted(), "group {group}");
        // No port: binds every port of the Service.
        assert_eq!(
            route_for(&c, "web.shop:80", Method::GET, "/", &[]),
            Some(("r".into(), 0))
        );
        assert_eq!(
            route_for(&c, "web.shop:9000", Method::GET, "/", &[]),
            Some(("r".into(), 0))
        );
    }
}

#[test]
fn route_on_one_port_leaves_other_ports_passthrough() {
    let c = compile_docs(&[SERVICES, &route("r", None, RULE_A)]);
    assert_eq!(
        route_for(&c, "web.shop:80", Method::GET, "/", &[]),
        Some(("r".into(), 0))
    );
    assert_eq!(
        route_for(&c, "web.shop:9000", Method::GET, "/", &[]),
        Some(("<passthrough>".into(), 0))
    );
    assert!(route_for(&c, "nope.shop", Method::GET, "/", &[]).is_none());
}

#[test]
fn gateway_parents_are_left_to_other_controllers() {
    let r = route("r", None, RULE_A).replace(
        "kind: Service, group: \"\", name: web, port: 80",
        "name: my-gateway",
    );
    let c = compile_docs(&[SERVICES, &r]);
    assert!(c.statuses[0].parents.is_empty());
}

#[test]
fn endpoints_resolve_by_port_name_and_readiness() {
    let c = compile_docs(&[SERVICES, &route("r", None, RULE_A)]);
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &HeaderMap::new(),
        },
    ) else {
        panic!()
    };
    let BackendTarget::Service(s) = &rule.backends.iter().next().unwrap().target else {
        panic!()
    };
    let eps: Vec<(String, bool)> = s
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.ready))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("10.0.0.1:8080".into(), true),
            ("10.0.0.2:8080".into(), false)
        ]
    );
    assert_eq!(
        s.pick_endpoint(0, 0, || 0).unwrap().addr.to_string(),
        "10.0.0.1:8080"
    );
}

const SPLIT_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: apex, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v1, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v2, namespace: shop}
spec: {ports: [{name: http, port: 80}]}
"#;

#[test]
fn every_trafficsplit_version_converts_to_the_same_weighted_rule() {
    let cases = [
        (
            "v1alpha1",
            "[{service: v1, weight: 900m}, {service: v2, weight: 100m}]",
            vec![900, 100],
        ),
        (
            "v1alpha1",
            "[{service: v1, weight: \"90\"}, {service: v2, weight: 10}]",
            vec![90, 10],
        ),
        // A stored v1alpha1 split read under a later version still carries quantities.
        (
            "v1alpha4",
            "[{service: v1, weight: 900m}, {service: v2, weight: \"0.1\"}]",
            vec![900, 100],
        ),
        (
            "v1alpha2",
            "[{service: v1, weight: 90}, {service: v2, weight: 10}]",
            vec![90, 10],
        ),
        (
            "v1alpha3",
            "[{service: v1, weight: 90}, {service: v2, weight: 10}]",
            vec![90, 10],
        ),
        (
            "v1alpha4",
            "[{service: v1, weight: 90}, {service: v2, weight: 10}]",
            vec![90, 10],
        ),
    ];
    for (v, backends, weights) in cases {
        let ts = format!("apiVersion: split.smi-spec.io/{v}\nkind: TrafficSplit\nmetadata: {{name: s, namespace: shop}}\nspec:\n  service: apex.shop.svc.cluster.local\n  backends: {backends}\n");
        let c = compile_docs(&[SPLIT_SERVICES, &ts]);
        let got = backend_weights(&c, "apex.shop");
        assert_eq!(
            got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["v1", "v2"],
            "{v}"
        );
        assert_eq!(
            got.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
            weights,
            "{v}"
        );
        let probs: Vec<f64> = {
            let h = HeaderMap::new();
            let Lookup::Matched { rule, .. } = c.table.lookup(
                "apex.shop",
                &RequestView {
                    method: &Method::GET,
                    path: "/",
                    query: None,
                    headers: &h,
                },
            ) else {
                panic!()
            };
            rule.backends.probabilities()
        };
        assert!((probs[0] - 0.9).abs() < 1e-9, "{v}: {probs:?}");
        assert!(c.statuses[0].accepted(), "{v}");
    }
}

#[test]
fn trafficsplit_matches_select_through_httproutegroups_and_fall_back_to_apex() {
    for v in ["v1alpha3", "v1alpha4"] {
        let group = format!(
            "apiVersion: specs.smi-spec.io/{}\nkind: HTTPRouteGroup\nmetadata: {{name: api, namespace: shop}}\nspec:\n  matches:\n  - name: canary\n    pathRegex: /api/.*\n    methods: [GET]\n    headers: {{x-canary: \"yes|true\"}}\n",
            if v == "v1alpha3" { "v1alpha3" } else { "v1alpha4" }
        );
        let ts = format!("apiVersion: split.smi-spec.io/{v}\nkind: TrafficSplit\nmetadata: {{name: s, namespace: shop}}\nspec:\n  service: apex\n  matches: [{{kind: HTTPRouteGroup, name: api}}]\n  backends: [{{service: v2, weight: 1}}]\n");
        let c = compile_docs(&[SPLIT_SERVICES, &group, &ts]);
        assert_eq!(
            route_for(
                &c,
                "apex.shop",
                Method::GET,
                "/api/x",
                &[("x-canary", "true")]
            ),
            Some(("s".into(), 0)),
            "{v}"
        );
        // Not matching the group: the split does not apply; the apex serves it.
        assert_eq!(
            route_for(
                &c,
                "apex.shop",
                Method::POST,
                "/api/x",
                &[("x-canary", "true")]
            ),
            Some(("s".into(), 1)),
            "{v}"
        );
        assert_eq!(
            route_for(&c, "apex.shop", Method::GET, "/other", &[]),
            Some(("s".into(), 1)),
            "{v}"
        );
    }
}

#[test]
fn trafficsplit_with_missing_group_is_not_accepted() {
    let ts = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: apex\n  matches: [{kind: HTTPRouteGroup, name: nope}]\n  backends: [{service: v2, weight: 1}]\n";
    let c = compile_docs(&[SPLIT_SERVICES, ts]);
    let p = &c.statuses[0].parents[0];
    let cond = p
        .condition("PartiallyInvalid")
        .or(p.condition("Accepted"))
        .unwrap();
    assert!(
        cond.message.contains("HTTPRouteGroup shop/nope not found"),
        "{cond:?}"
    );
}

#[test]
fn linkerd_versions_compile_alike() {
    for (v, backend) in [
        ("v1alpha1", "{name: a, port: 80}"),
        ("v1beta1", "{name: a, port: 80}"),
        ("v1beta2", "{name: a, port: 80, weight: 3}"),
        ("v1beta3", "{name: a, port: 80, weight: 3}"),
    ] {
        let r = format!("apiVersion: policy.linkerd.io/{v}\nkind: HTTPRoute\nmetadata: {{name: l, namespace: shop}}\nspec:\n  parentRefs: [{{group: core, kind: Service, name: web, port: 80}}]\n  rules:\n  - matches: [{{path: {{value: /l}}}}]\n    backendRefs: [{backend}]\n");
        let c = compile_docs(&[SERVICES, &r]);
        assert!(c.statuses[0].accepted(), "{v}: {:?}", c.statuses[0]);
        assert_eq!(
            route_for(&c, "web.shop", Method::GET, "/l/x", &[]),
            Some(("l".into(), 0)),
            "{v}"
        );
        let RouteKind::Linkerd = c.statuses[0].kind else {
            panic!()
        };
    }
}

#[test]
fn timeouts_compile_and_zero_disables() {
    let r = route("r", None, "  - backendRefs: [{name: a, port: 80}]\n    timeouts: {request: 0s, backendRequest: 250ms}\n");
    let c = compile_docs(&[SERVICES, &r]);
    let h = HeaderMap::new();
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
        },
    ) else {
        panic!()
    };
    assert_eq!(rule.timeouts.request, None);
    assert_eq!(
        rule.timeouts.backend_request,
        Some(std::time::Duration::from_millis(250))
    );
}

#[test]
fn mirrored_backends_carry_cluster_and_remote_authority() {
    let mirror = "apiVersion: v1\nkind: Service\nmetadata: {name: a-east, namespace: shop, labels: {mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: east}}\nspec: {ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: a-east, namespace: shop, annotations: {mirror.linkerd.io/remote-svc-fq-name: a.shop.svc.cluster.local}}\nsubsets: [{addresses: [{ip: 10.1.0.1}], ports: [{name: http, port: 4143}]}]\n";
    let r = route("r", None, "  - backendRefs: [{name: a-east, port: 80}]\n");
    let c = compile_docs(&[SERVICES, mirror, &r]);
    let h = HeaderMap::new();
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
        },
    ) else {
        panic!()
    };
    let BackendTarget::Service(s) = &rule.backends.iter().next().unwrap().target else {
        panic!()
    };
    assert_eq!(s.cluster.as_deref(), Some("east"));
    assert_eq!(s.authority.as_ref().unwrap(), "a.shop.svc.cluster.local:80");
    assert_eq!(s.endpoints[0].addr.to_string(), "10.1.0.1:4143");
}

#[test]
fn backends_that_are_parents_are_not_routed_again() {
    // a routes to b, b routes to a: no stacking, each backend resolves to endpoints directly.
    let ab = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ab, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: a, port: 80}]\n  rules: [{backendRefs: [{name: b, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ba, namespace: shop}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: b, port: 80}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n";
    let c = compile_docs(&[SERVICES, ab]);
    assert_eq!(backend_weights(&c, "a.shop"), vec![("b".into(), 1)]);
    assert_eq!(backend_weights(&c, "b.shop"), vec![("a".into(), 1)]);
}

#[test]
fn endpoint_load_counters_survive_recompile() {
    let index = index_of(&[SERVICES, &route("r", None, RULE_A)]);
    let first = compile(&index, &CompileOptions::default(), None);
    let second = compile(&index, &CompileOptions::default(), Some(&first.table));
    let a = first.table.endpoint_loads();
    let b = second.table.endpoint_loads();
    assert!(!a.is_empty());
    for (addr, load) in &a {
        assert!(Arc::ptr_eq(load, &b[addr]), "{addr}");
    }
}

#[test]
fn httproute_regexes_match_the_whole_value_even_when_an_earlier_branch_is_a_prefix() {
    let r = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: rx, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n  - matches:\n    - path: {type: RegularExpression, value: /api|/api/v2}\n    backendRefs: [{name: a, port: 80}]\n  - matches:\n    - headers: [{type: RegularExpression, name: x-tier, value: gold|golden}]\n      queryParams: [{type: RegularExpression, name: v, value: 1|12}]\n    backendRefs: [{name: b, port: 80}]\n";
    let c = compile_docs(&[SERVICES, r]);
    let at =
        |path: &str, h: &[(&'static str, &str)]| route_for(&c, "web.shop", Method::GET, path, h);
    assert_eq!(at("/api", &[]), Some(("rx".into(), 0)));
    assert_eq!(at("/api/v2", &[]), Some(("rx".into(), 0)));
    assert_eq!(at("/api/v3", &[]), None);
    assert_eq!(
        at("/x?v=12", &[("x-tier", "golden")]),
        Some(("rx".into(), 1))
    );
    assert_eq!(at("/x?v=1", &[("x-tier", "gold")]), Some(("rx".into(), 1)));
    assert_eq!(at("/x?v=123", &[("x-tier", "golden")]), None);
    assert_eq!(at("/x?v=12", &[("x-tier", "goldenrod")]), None);
}

#[test]
fn smi_path_regexes_are_anchored_at_the_start_and_header_regexes_match_whole_values() {
    let group = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: api, namespace: shop}\nspec:\n  matches:\n  - name: canary\n    pathRegex: /api|/api/v2\n    headers: {x-tier: gold|golden}\n";
    let ts = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: apex\n  matches: [{kind: HTTPRouteGroup, name: api}]\n  backends: [{service: v2, weight: 1}]\n";
    let c = compile_docs(&[SPLIT_SERVICES, group, ts]);
    let at =
        |path: &str, tier: &str| route_for(&c, "apex.shop", Method::GET, path, &[("x-tier", tier)]);
    // SMI: "anchored (^) to the beginning of the URI" — a match may end anywhere.
    assert_eq!(at("/api/v2", "golden"), Some(("s".into(), 0)));
    assert_eq!(at("/api/v2/users", "gold"), Some(("s".into(), 0)));
    assert_eq!(at("/apiary", "gold"), Some(("s".into(), 0)));
    // Not at the start: the split's match does not apply; the apex rule serves it.
    assert_eq!(at("/v1/api", "gold"), Some(("s".into(), 1)));
    // Header regexes match whole values.
    assert_eq!(at("/api", "goldenrod"), Some(("s".into(), 1)));
}

#[test]
fn smi_backend_without_the_apex_port_is_left_out_of_the_split_on_that_port() {
    // apex serves 80 and 8080; v1 has both, v2 only 80 (SMI TrafficSplit "Ports").
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: apex, namespace: shop}\nspec: {ports: [{name: http, port: 80}, {name: alt, port: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: v1, namespace: shop}\nspec: {ports: [{name: http, port: 80}, {name: alt, port: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: v2, namespace: shop}\nspec: {ports: [{name: http, port: 80}]}\n";
    for v in ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"] {
        let ts = format!("apiVersion: split.smi-spec.io/{v}\nkind: TrafficSplit\nmetadata: {{name: s, namespace: shop}}\nspec:\n  service: apex\n  backends: [{{service: v1, weight: 1}}, {{service: v2, weight: 1}}]\n");
        let c = compile_docs(&[services, &ts]);
        let backends_on = |host: &str| {
            let h = HeaderMap::new();
            let Lookup::Matched { rule, .. } = c.table.lookup(
                host,
                &RequestView {
                    method: &Method::GET,
                    path: "/",
                    query: None,
                    headers: &h,
                },
            ) else {
                panic!("{v}: {host} not matched")
            };
            rule.backends
                .iter()
                .map(|b| match &b.target {
                    crate::table::BackendTarget::Service(s) => s.name.to_string(),
                    crate::table::BackendTarget::Invalid { reason } => format!("invalid: {reason}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(backends_on("apex.shop"), ["v1", "v2"], "{v}");
        // On 8080 v2 takes no share at all: no 500s for "its half".
        assert_eq!(backends_on("apex.shop:8080"), ["v1"], "{v}");
        let s = &c.statuses[0];
        assert!(s.accepted(), "{v}: {s:?}");
        assert!(s.problems().is_empty(), "{v}: {:?}", s.problems());
        assert_eq!(
            s.notes,
            ["backend Service shop/v2 has no port 8080: not part of the split on that port (SMI)"],
            "{v}"
        );
        let accepted = s.parents[0].condition("Accepted").unwrap();
        assert!(
            accepted.message.contains("shop/v2 has no port 8080"),
            "{v}: {accepted:?}"
        );
    }
}

const GRPC_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 80}]\n  rules:\n";

#[test]
fn grpcroute_method_matches_become_paths_ranked_by_service_then_method() {
    let r = format!("{GRPC_HEAD}  - matches: [{{method: {{service: helloworld.Greeter, method: SayHello}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{method: {{service: helloworld.Greeter}}}}]\n    backendRefs: [{{name: b, port: 80}}]\n  - matches: [{{method: {{method: Check}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n  - matches: [{{method: {{type: RegularExpression, service: \"helloworld\\\\..*\", method: \"Say.*\"}}, headers: [{{name: x-tier, value: gold}}]}}]\n    backendRefs: [{{name: b, port: 80}}]\n");
    let c = compile_docs(&[SERVICES, &r]);
    assert!(c.statuses[0].accepted(), "{:?}", c.statuses[0]);
    assert_eq!(c.statuses[0].kind.kind(), "GRPCRoute");
    let at =
        |path: &str, h: &[(&'static str, &str)]| route_for(&c, "web.shop", Method::POST, path, h);
    assert_eq!(
        at("/helloworld.Greeter/SayHello", &[]),
        Some(("g".into(), 0))
    );
    assert_eq!(at("/helloworld.Greeter/SayBye", &[]), Some(("g".into(), 1)));
    assert_eq!(
        at("/grpc.health.v1.Health/Check", &[]),
        Some(("g".into(), 2))
    );
    // A longer service wins over a method-only match (GRPCRoute precedence).
    assert_eq!(at("/helloworld.Greeter/Check", &[]), Some(("g".into(), 1)));
    // The regex rule: service 12 chars, method 5 — fewer than `helloworld.Greeter`, so the
    // exact service match still wins for Greeter; another service reaches the regex rule.
    assert_eq!(
        at("/helloworld.Other/SayHi", &[("x-tier", "gold")]),
        Some(("g".into(), 3))
    );
    assert_eq!(at("/helloworld.Other/SayHi", &[]), None);
    assert_eq!(at("/other.Svc/Do", &[]), None);
    // Backends of a GRPCRoute speak h2c whatever appProtocol says.
    let h = HeaderMap::new();
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::POST,
            path: "/helloworld.Greeter/SayHello",
            query: None,
            headers: &h,
        },
    ) else {
        panic!()
    };
    let crate::table::BackendTarget::Service(s) = &rule.backends.iter().next().unwrap().target
    else {
        panic!()
    };
    assert_eq!(s.protocol, crate::table::Protocol::H2c);
}

#[test]
fn grpcroute_refuses_what_the_crd_refuses() {
    for (m, want) in [
        (
            "{method: {type: Exact}}",
            "one or both of service and method must be set",
        ),
        (
            "{method: {service: \"hello world\"}}",
            "is not a gRPC service name",
        ),
        (
            "{method: {method: \"Say-Hello\"}}",
            "is not a gRPC method name",
        ),
        (
            "{method: {type: RegularExpression, service: \"(\"}}",
            "is not a valid regular expression",
        ),
    ] {
        let r =
            format!("{GRPC_HEAD}  - matches: [{m}]\n    backendRefs: [{{name: a, port: 80}}]\n");
        let items = parse_documents(Path::new("t.yaml"), &r);
        let obj = items.into_iter().next().unwrap().unwrap().object;
        let e = crate::compile::validate::admit(&obj).unwrap_err();
        let text = e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        assert!(
            text.contains(want) && text.contains("spec.rules[0].matches[0].method"),
            "{m}: {text}"
        );
    }
}

/// `smiley-east` in shop is a pod-to-pod mirror of `smiley` in linked cluster east, whose
/// EndpointSlice has one ready and one not-ready endpoint.
const POD_TO_POD_MIRROR: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: smiley-east, namespace: shop, labels: {multicluster.linkerd.io/remote-discovery: east, multicluster.linkerd.io/remote-service: smiley}}\nspec: {ports: [{name: http, port: 80}]}\n";
const EAST: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: smiley, namespace: shop, labels: {mirror.linkerd.io/exported: remote-discovery}}\nspec: {ports: [{name: http, port: 80, targetPort: 8080}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: smiley-1, namespace: shop, labels: {kubernetes.io/service-name: smiley}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.2.0.1]\n- addresses: [10.2.0.2]\n  conditions: {ready: false}\n";

fn with_east(mut index: Index, east: &str) -> Index {
    *index.linked("east") = index_of(&[east]);
    index
}

fn first_backends(c: &Compiled, host: &str) -> Vec<(Option<String>, Vec<String>, usize, u32)> {
    let h = HeaderMap::new();
    let Lookup::Matched { rule, .. } = c.table.lookup(
        host,
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
        },
    ) else {
        panic!("no match for {host}")
    };
    rule.backends
        .iter()
        .map(|b| match &b.target {
            BackendTarget::Service(s) => (
                s.cluster.as_deref().map(str::to_string),
                s.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                s.ready.len(),
                b.weight,
            ),
            BackendTarget::Invalid { reason } => (None, vec![reason.clone()], 0, b.weight),
        })
        .collect()
}

#[test]
fn pod_to_pod_mirror_resolves_to_the_linked_clusters_endpoints_with_their_readiness() {
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: smiley-east, port: 80}]\n",
    );
    let index = with_east(index_of(&[SERVICES, POD_TO_POD_MIRROR, &r]), EAST);
    let c = compile(&index, &CompileOptions::default(), None);
    assert_eq!(
        first_backends(&c, "web.shop"),
        vec![(
            Some("east".into()),
            vec!["10.2.0.1:8080".into(), "10.2.0.2:8080".into()],
            1,
            1
        )]
    );
    assert!(c.route_problems().is_empty(), "{:?}", c.route_problems());
    // The mirror itself (a parent without routes) passes through to the same endpoints.
    assert_eq!(first_backends(&c, "smiley-east.shop")[0].2, 1);
}

#[test]
fn pod_to_pod_mirror_of_an_unlinked_cluster_or_unexported_service_is_a_backend_problem() {
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: smiley-east, port: 80}]\n",
    );
    let c = compile_docs(&[SERVICES, POD_TO_POD_MIRROR, &r]);
    let p = c.route_problems().join("\n");
    assert!(p.contains("\"east\", which is not linked"), "{p}");
    let index = with_east(index_of(&[SERVICES, POD_TO_POD_MIRROR, &r]), "");
    let c = compile(&index, &CompileOptions::default(), None);
    let p = c.route_problems().join("\n");
    assert!(
        p.contains("not found (or not exported) in linked cluster east"),
        "{p}"
    );
}

fn split_route(annotations: &str, weights: (u32, u32)) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop{annotations}}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: web, port: 80}}]\n  rules:\n  - backendRefs: [{{name: smiley-east, port: 80, weight: {}}}, {{name: a, port: 80, weight: {}}}]\n",
        weights.0, weights.1
    )
}

const FAILOVER: &str = ", annotations: {failover.linkerd.io/primary-service: smiley-east}, labels: {failover.linkerd.io/controlled-by: linkerd-failover}";
const EAST_DOWN: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: smiley, namespace: shop, labels: {mirror.linkerd.io/exported: remote-discovery}}\nspec: {ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: smiley-1, namespace: shop, labels: {kubernetes.io/service-name: smiley}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.2.0.1]\n  conditions: {ready: false}\n";

fn weights_of(c: &Compiled) -> Vec<u32> {
    first_backends(c, "web.shop").iter().map(|b| b.3).collect()
}

#[test]
fn failover_moves_the_share_of_a_backend_without_ready_endpoints_and_gives_it_back() {
    let compile_with = |east: &str, annotations: &str, w: (u32, u32)| {
        let r = split_route(annotations, w);
        let index = with_east(index_of(&[SERVICES, POD_TO_POD_MIRROR, &r]), east);
        compile(&index, &CompileOptions::default(), None)
    };
    // Healthy: weights as written.
    assert_eq!(weights_of(&compile_with(EAST, FAILOVER, (3, 1))), [3, 1]);
    // East has no ready endpoint: all of it goes to `a`.
    let c = compile_with(EAST_DOWN, FAILOVER, (3, 1));
    assert_eq!(weights_of(&c), [0, 1]);
    let status = format!("{:?}", c.statuses);
    assert!(status.contains("failover active: backend shop/smiley-east:80 (cluster east) has no ready endpoints, its share goes to shop/a:80"), "{status}");
    // linkerd-failover's pattern: primary 1, secondary 0 → the secondary takes everything.
    assert_eq!(
        weights_of(&compile_with(EAST_DOWN, FAILOVER, (1, 0))),
        [0, 1]
    );
    assert_eq!(weights_of(&compile_with(EAST, FAILOVER, (1, 0))), [1, 0]);
    // Without the annotation Gateway API semantics stay: east keeps its (failing) share.
    let c = compile_with(EAST_DOWN, "", (3, 1));
    assert_eq!(weights_of(&c), [3, 1]);
    assert!(!format!("{:?}", c.statuses).contains("failover"));
}

#[test]
fn failover_math() {
    fn b(weight: u32, ready: bool) -> Backend {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        Backend {
            weight,
            target: BackendTarget::Service(Arc::new(ServiceBackend {
                namespace: "ns".into(),
                name: "s".into(),
                port: 80,
                cluster: None,
                authority: None,
                protocol: Protocol::Http1,
                endpoints: vec![Endpoint {
                    addr,
                    ready,
                    load: Default::default(),
                }],
                ready: if ready { vec![0] } else { vec![] },
                accrual: Default::default(),
            })),
            filters: vec![],
        }
    }
    let run = |bs: Vec<Backend>| -> Vec<u32> {
        let mut notes = Vec::new();
        fail_over(bs, &mut notes).iter().map(|b| b.weight).collect()
    };
    // Proportional to the remaining weights: zeroing the failed one does exactly that.
    assert_eq!(run(vec![b(2, false), b(1, true), b(3, true)]), [0, 1, 3]);
    // Evenly when the healthy ones all weigh 0.
    assert_eq!(run(vec![b(1, false), b(0, true), b(0, true)]), [0, 1, 1]);
    // Nobody healthy, or nobody down, or nothing to give: unchanged.
    assert_eq!(run(vec![b(1, false), b(2, false)]), [1, 2]);
    assert_eq!(run(vec![b(1, true), b(0, false)]), [1, 0]);
    assert_eq!(run(vec![b(0, false), b(0, true)]), [0, 0]);
    // An invalid backend (e.g. an unlinked cluster) has no ready endpoints either.
    let invalid = Backend {
        weight: 5,
        target: BackendTarget::Invalid { reason: "x".into() },
        filters: vec![],
    };
    assert_eq!(run(vec![invalid, b(1, true)]), [0, 1]);
}

#[test]
fn failover_annotation_works_on_trafficsplits_too() {
    let split = |annotations: &str| {
        format!(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{name: s, namespace: shop{annotations}}}\nspec:\n  service: web\n  backends: [{{service: smiley-east, weight: 1}}, {{service: a, weight: 0}}]\n"
        )
    };
    let weights = |doc: String| {
        let index = with_east(index_of(&[SERVICES, POD_TO_POD_MIRROR, &doc]), EAST_DOWN);
        weights_of(&compile(&index, &CompileOptions::default(), None))
    };
    assert_eq!(weights(split(FAILOVER)), [0, 1]);
    assert_eq!(weights(split("")), [1, 0]);
}

fn federated_index(local_ready: bool) -> Index {
    let local = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: smiley, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: smiley-1, namespace: shop, labels: {{kubernetes.io/service-name: smiley}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [10.1.0.1]\n  conditions: {{ready: {local_ready}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: smiley-federated, namespace: shop, annotations: {{multicluster.linkerd.io/remote-discovery: \"smiley@east,smiley@west\", multicluster.linkerd.io/local-discovery: smiley}}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n");
    let r = route(
        "r",
        None,
        "  - backendRefs: [{name: smiley-federated, port: 80}]\n",
    );
    // East's member is labelled as a federated member rather than exported.
    let east = EAST.replace(
        "mirror.linkerd.io/exported: remote-discovery",
        "mirror.linkerd.io/federated: member",
    );
    with_east(index_of(&[SERVICES, &local, &r]), &east)
}

#[test]
fn federated_service_is_the_union_local_first_then_spills_to_linked_clusters() {
    // Local ready: only the local endpoint takes traffic; every member's endpoint is listed.
    let c = compile(&federated_index(true), &CompileOptions::default(), None);
    let b = &first_backends(&c, "web.shop")[0];
    assert_eq!(
        b.1,
        ["10.1.0.1:8080", "10.2.0.1:8080", "10.2.0.2:8080"],
        "{b:?}"
    );
    assert_eq!((b.0.as_deref(), b.2), (None, 1), "{b:?}");
    // West is not linked: not a member, and no problem while others resolve.
    assert!(c.route_problems().is_empty(), "{:?}", c.route_problems());
    // Local not ready: spill to east's ready endpoint.
    let c = compile(&federated_index(false), &CompileOptions::default(), None);
    let b = &first_backends(&c, "web.shop")[0];
    assert_eq!((b.0.as_deref(), b.2), (Some("east"), 1), "{b:?}");
    let h = HeaderMap::new();
    let Lookup::Matched { rule, .. } = c.table.lookup(
        "web.shop",
        &RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
        },
    ) else {
        panic!()
    };
    let BackendTarget::Service(s) = &rule.backends.iter().next().unwrap().target else {
        panic!()
    };
    let used: Vec<String> = s
        .ready
        .iter()
        .map(|&i| s.endpoints[i].addr.to_string())
        .collect();
    assert_eq!(used, ["10.2.0.1:8080"]);
}
