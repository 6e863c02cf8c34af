#!/usr/bin/env python3
"""Generate the control-plane scale workload of issue #14 into a directory (file mode).

    benches/workload/gen.py DIR ROUTES

ROUTES HTTPRoutes over ROUTES/10 parent Services (10 routes per parent). Each parent has one
file `p-<i>.yaml` holding its Service, an EndpointSlice with 3 ready endpoints and its 10
HTTPRoutes. Each route has one rule with a path + header match, two weighted backends (the
next two parents, so an endpoint change reaches three parents) and a request timeout.
Deterministic: the same arguments write the same bytes.
"""
import os
import sys

ROUTES_PER_PARENT = 10


def parent_file(i, parents, weight_of=lambda r: (90, 10)):
    out = []
    a, b = divmod(i, 250)
    out.append(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: scale}}\n"
        f"spec: {{ports: [{{name: http, port: 80}}]}}\n---\n"
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        f"metadata: {{name: svc-{i}-1, namespace: scale, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n"
        f"addressType: IPv4\nports: [{{name: http, port: 8080}}]\n"
        f"endpoints: [{{addresses: [10.{1 + a // 250}.{a % 250}.{b + 1}]}}, "
        f"{{addresses: [10.{101 + a // 250}.{a % 250}.{b + 1}]}}, "
        f"{{addresses: [10.{201 + a // 250}.{a % 250}.{b + 1}]}}]\n---\n"
    )
    for k in range(ROUTES_PER_PARENT):
        r = i * ROUTES_PER_PARENT + k
        w1, w2 = weight_of(r)
        q1 = (i + 1) % parents
        q2 = (i + 2) % parents
        out.append(
            f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: route-{r}, namespace: scale}}\n"
            f"spec:\n"
            f"  parentRefs: [{{group: \"\", kind: Service, name: svc-{i}, port: 80}}]\n"
            f"  rules:\n"
            f"  - matches: [{{path: {{type: PathPrefix, value: /r{r}}}, headers: [{{name: x-tenant, value: t{r}}}]}}]\n"
            f"    backendRefs: [{{name: svc-{q1}, port: 80, weight: {w1}}}, {{name: svc-{q2}, port: 80, weight: {w2}}}]\n"
            f"    timeouts: {{request: 5s}}\n---\n"
        )
    return "".join(out)


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def main_args(d, routes):
    parents = max(routes // ROUTES_PER_PARENT, 3)
    os.makedirs(d, exist_ok=True)
    for i in range(parents):
        write_atomic(os.path.join(d, f"p-{i}.yaml"), parent_file(i, parents))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main_args(sys.argv[1], int(sys.argv[2]))


if __name__ == "__main__":
    main()
