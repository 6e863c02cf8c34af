#!/usr/bin/env bash
# Smoke test of kube-testenv with the real kubectl: two clusters side by side, a CRD applied
# server-side and Established, get/patch/wait on a custom resource and its /status, a
# namespace, a selector-less Service, an EndpointSlice (loopback refused), and RBAC for a
# token user checked with `kubectl auth can-i`. Exits non-zero on the first failure.
#
# Usage: tests/kube-testenv/smoke.sh   (needs kubectl on PATH; builds kube-testenv if needed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/kube-testenv-smoke.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

step() { echo "--- $*" >&2; }
# expect_fail DESCRIPTION CMD...: CMD must fail.
expect_fail() {
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then echo "FAIL: $what succeeded" >&2; exit 1; fi
}
# expect_eq WANT CMD...: CMD must print WANT.
expect_eq() {
  local want="$1"; shift
  local got; got="$("$@")"
  [ "$got" = "$want" ] || { echo "FAIL: $* printed '$got', want '$want'" >&2; exit 1; }
}

step "start north (with users alice, bob:devs,ops) and east"
"$here/start.sh" --dir "$work/north" --name north --user alice --user bob:devs,ops --watch-pid $$ >"$work/north.env"
pids+=("$(cat "$work/north/pid")")
"$here/start.sh" --dir "$work/east" --name east --watch-pid $$ >"$work/east.env"
pids+=("$(cat "$work/east/pid")")
north=(kubectl --kubeconfig "$work/north/kubeconfig")
east=(kubectl --kubeconfig "$work/east/kubeconfig")
alice=(kubectl --kubeconfig "$work/north/kubeconfig-alice")
bob=(kubectl --kubeconfig "$work/north/kubeconfig-bob")

step "server version and isolation"
"${north[@]}" version -o json | grep -q '"gitVersion": "v1\.35\.'
"${north[@]}" create namespace shop
expect_fail "namespace shop visible in east" "${east[@]}" get namespace shop

step "CRD: apply --server-side, wait Established"
cat >"$work/crd.yaml" <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.meshroute.dev
spec:
  group: smoke.meshroute.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 0, maximum: 10}
          status:
            type: object
            properties:
              phase: {type: string}
EOF
"${north[@]}" apply --server-side -f "$work/crd.yaml"
"${north[@]}" wait --for condition=Established --timeout=30s crd/widgets.smoke.meshroute.dev

step "custom resource: apply, schema validation, patch, /status patch, wait"
printf 'apiVersion: smoke.meshroute.dev/v1\nkind: Widget\nmetadata: {name: w1, namespace: shop}\nspec: {size: 3}\n' |
  "${north[@]}" apply --server-side -f -
expect_fail "size 30 accepted" sh -c "printf 'apiVersion: smoke.meshroute.dev/v1\nkind: Widget\nmetadata: {name: w2, namespace: shop}\nspec: {size: 30}\n' | ${north[*]} apply --server-side -f -"
"${north[@]}" -n shop patch widget w1 --type merge -p '{"spec":{"size":4}}'
"${north[@]}" -n shop patch widget w1 --subresource status --type merge -p '{"status":{"phase":"Ready"}}'
"${north[@]}" -n shop wait widget/w1 --for=jsonpath='{.status.phase}'=Ready --timeout=10s
expect_eq "4 Ready" "${north[@]}" -n shop get widget w1 -o jsonpath='{.spec.size} {.status.phase}'

step "selector-less Service and EndpointSlice"
cat >"$work/objs.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.213.0.2]
  conditions: {ready: true}
EOF
"${north[@]}" apply --server-side -f "$work/objs.yaml"
expect_eq "" "${north[@]}" -n shop get service web -o jsonpath='{.spec.selector}'
expect_eq "10.213.0.2" "${north[@]}" -n shop get endpointslice web-1 -o jsonpath='{.endpoints[0].addresses[0]}'
expect_fail "loopback EndpointSlice accepted" sh -c "sed 's/10.213.0.2/127.0.0.1/; s/web-1/web-lo/' '$work/objs.yaml' | ${north[*]} apply --server-side -f -"

step "RBAC for token users"
expect_eq "alice" "${alice[@]}" auth whoami -o jsonpath='{.status.userInfo.username}'
expect_eq "no" "${alice[@]}" auth can-i list endpointslices.discovery.k8s.io -A || true
"${north[@]}" create clusterrole route-reader --verb=get,list,watch \
  --resource=services,endpointslices.discovery.k8s.io,widgets.smoke.meshroute.dev
"${north[@]}" create clusterrolebinding alice-route-reader --clusterrole=route-reader --user=alice
"${north[@]}" -n shop create role widget-status --verb=get,patch --resource=widgets.smoke.meshroute.dev/status
"${north[@]}" -n shop create rolebinding ops-widget-status --role=widget-status --group=ops
expect_eq "yes" "${alice[@]}" auth can-i list endpointslices.discovery.k8s.io -A
expect_eq "no" "${alice[@]}" auth can-i create services -n shop || true
"${alice[@]}" -n shop get services,endpointslices,widgets >/dev/null
expect_eq "yes" "${bob[@]}" auth can-i patch widgets.smoke.meshroute.dev --subresource=status -n shop
expect_eq "no" "${bob[@]}" auth can-i patch widgets.smoke.meshroute.dev -n shop || true
"${bob[@]}" -n shop patch widget w1 --subresource status --type merge -p '{"status":{"phase":"Bob"}}'
expect_fail "bob listed widgets" "${bob[@]}" -n shop get widgets

step "SIGTERM stops both and exits"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null && ! grep -q ') Z' "/proc/$pid/stat" 2>/dev/null; then
    echo "FAIL: pid $pid still running 10s after SIGTERM" >&2; exit 1
  fi
done
grep -q 'kube-testenv: etcd stopped' "$work/north/kube-testenv.log"
pids=()
echo "kube-testenv smoke: 1 passed, 0 failed"
