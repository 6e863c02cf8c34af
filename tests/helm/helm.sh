#!/usr/bin/env bash
# Build (cached) the helm CLI pinned in this Go module and print its path. The chart tests use
# it to render deploy/helm/meshroute (`helm template`, `helm lint`) for the test API server.
#
# The binary is cached as ${XDG_CACHE_HOME:-~/.cache}/meshroute/helm-<hash>, the hash covering
# go.mod, go.sum, tools.go, `go version` and the build flags; builds run under `nice` and a lock.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "tests/helm/helm.sh: $*" >&2; }

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! [ -x "$go" ] && ! command -v "$go" >/dev/null; then
  log "no Go toolchain found (set GO=/path/to/go)"; exit 1
fi
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
version="$(sed -n 's/^\(require\)\{0,1\}[[:space:]]*helm\.sh\/helm\/v4 \(v[0-9.]*\).*/\2/p' "$here/go.mod" | head -n1)"
build_flags=(-trimpath "-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version=$version")

hash="$(
  cd "$here"
  { cat go.mod go.sum tools.go; "$go" version; printf '%s\n' "$GOFLAGS" "${build_flags[@]}"; } | sha256sum | cut -c1-16
)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshroute"
bin="$cache/helm-$hash"
mkdir -p "$cache"

if ! [ -x "$bin" ]; then
  exec 9>"$cache/helm.lock"
  flock 9
  if ! [ -x "$bin" ]; then
    log "building helm $version ($hash)"
    start=$SECONDS
    ok=false
    for attempt in 1 2 3 4; do
      if (cd "$here" && nice -n 15 "$go" mod download) >&2; then ok=true; break; fi
      log "go mod download failed (attempt $attempt), retrying"
      sleep $((attempt * 5))
    done
    $ok || { log "go mod download failed"; exit 1; }
    tmp="$bin.tmp.$$"
    if ! (cd "$here" && nice -n 15 "$go" build "${build_flags[@]}" -o "$tmp" helm.sh/helm/v4/cmd/helm) >&2; then
      rm -f "$tmp"; log "go build failed"; exit 1
    fi
    mv -f "$tmp" "$bin"
    log "built $bin in $((SECONDS - start))s"
    find "$cache" -maxdepth 1 -name 'helm-*' ! -name "helm-$hash" -mtime +7 -delete 2>/dev/null || true
  fi
  flock -u 9
  exec 9>&-
fi
echo "$bin"
