#!/usr/bin/env bash
# Build (cached) a real kube-proxy from the kube-testenv Go module (the same k8s.io/kubernetes
# version as the API server; tools.go keeps its dependencies in go.mod/go.sum) and print its path.
#
# Usage: tests/kube-testenv/kube-proxy.sh
#
# The binary is cached as ${XDG_CACHE_HOME:-~/.cache}/meshroute/kube-proxy-<hash>, the hash
# covering go.mod, go.sum, `go version` and the build flags. Builds run under `nice` and a lock.
# The end-to-end tests run it inside a network namespace of their own (iptables mode, Debian's
# iptables and conntrack), so it never touches the host's rules.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "kube-testenv/kube-proxy.sh: $*" >&2; }

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! [ -x "$go" ] && ! command -v "$go" >/dev/null; then
  log "no Go toolchain found (set GO=/path/to/go)"; exit 1
fi
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

k8s_version="$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9.]*\).*/\1/p' "$here/go.mod" | head -n1)"
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
build_flags=(-trimpath "-ldflags=$ldflags")

hash="$(
  cd "$here"
  { cat go.mod go.sum tools.go; "$go" version; printf '%s\n' "$GOFLAGS" "${build_flags[@]}"; } | sha256sum | cut -c1-16
)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshroute"
bin="$cache/kube-proxy-$hash"
mkdir -p "$cache"

if ! [ -x "$bin" ]; then
  exec 9>"$cache/kube-proxy.lock"
  flock 9
  if ! [ -x "$bin" ]; then
    log "building kube-proxy $k8s_version ($hash)"
    start=$SECONDS
    ok=false
    for attempt in 1 2 3 4; do
      if (cd "$here" && nice -n 15 "$go" mod download) >&2; then ok=true; break; fi
      log "go mod download failed (attempt $attempt), retrying"
      sleep $((attempt * 5))
    done
    $ok || { log "go mod download failed"; exit 1; }
    tmp="$bin.tmp.$$"
    if ! (cd "$here" && nice -n 15 "$go" build "${build_flags[@]}" -o "$tmp" k8s.io/kubernetes/cmd/kube-proxy) >&2; then
      rm -f "$tmp"; log "go build failed"; exit 1
    fi
    mv -f "$tmp" "$bin"
    log "built $bin in $((SECONDS - start))s"
    find "$cache" -maxdepth 1 -name 'kube-proxy-*' ! -name "kube-proxy-$hash" -mtime +7 -delete 2>/dev/null || true
  fi
  flock -u 9
  exec 9>&-
fi
touch "$bin"
echo "$bin"
