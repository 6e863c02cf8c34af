#!/usr/bin/env bash
# Build (cached) and start kube-testenv: embedded etcd + kube-apiserver on loopback.
#
# Usage:
#   tests/kube-testenv/start.sh [--build-only] [--dir DIR] [--timeout SECS] [KUBE-TESTENV ARGS...]
#
#   --build-only   build (or find the cached build), print its path, exit
#   --dir DIR      run directory (default: a new mktemp -d)
#   --timeout S    seconds to wait for the "ready" line (default 90, env KUBE_TESTENV_TIMEOUT)
#   other args     passed to kube-testenv: --name NAME, --user NAME[:GROUP,...],
#                  --watch-pid PID, --resume (restart from DIR's previous run: same data,
#                  credentials and address), -v N, -- EXTRA-KUBE-APISERVER-FLAGS
#
# On success it prints shell assignments on stdout, so this works:
#   eval "$(tests/kube-testenv/start.sh --name north --user alice)"
#   kubectl get ns; kill "$KUBE_TESTENV_PID"
# and writes DIR/pid. The server's stdout (its "ready" line) is DIR/stdout, its log
# DIR/kube-testenv.log (etcd's: DIR/etcd.log). Build output and errors go to stderr; on failure the log tail is
# printed and the exit status is non-zero.
#
# The binary is cached as ${XDG_CACHE_HOME:-~/.cache}/meshroute/kube-testenv-<hash>, the
# hash covering go.mod, go.sum, *.go, `go version` and the build flags, so only the first
# run pays for the (long) compile. Builds run under `nice` and a lock, so parallel callers
# build once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_only=false
dir=""
timeout="${KUBE_TESTENV_TIMEOUT:-90}"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=true; shift ;;
    --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --timeout) timeout="${2:?--timeout needs a value}"; shift 2 ;;
    --timeout=*) timeout="${1#--timeout=}"; shift ;;
    --) args+=("$@"); break ;; # the rest is for kube-apiserver
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done

log() { echo "kube-testenv/start.sh: $*" >&2; }

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! [ -x "$go" ] && ! command -v "$go" >/dev/null; then
  log "no Go toolchain found (set GO=/path/to/go)"; exit 1
fi
# Replaces any GOFLAGS from the environment or `go env -w`, on purpose: builds must not
# depend on them.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

# ------------------------------------------------------------------ build (cached)
k8s_version="$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9.]*\).*/\1/p' "$here/go.mod" | head -n1)"
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
# /version reports the real release instead of v0.0.0-master.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
build_flags=(-trimpath "-ldflags=$ldflags")

hash="$(
  cd "$here"
  { cat go.mod go.sum; for f in $(ls -- *.go | LC_ALL=C sort); do echo "== $f"; cat "$f"; done
    "$go" version; printf '%s\n' "$GOFLAGS" "${build_flags[@]}"; } | sha256sum | cut -c1-16
)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshroute"
bin="$cache/kube-testenv-$hash"
mkdir -p "$cache"

if ! [ -x "$bin" ]; then
  # One build at a time; a caller that waited finds the binary ready.
  exec 9>"$cache/kube-testenv.lock"
  flock 9
  if ! [ -x "$bin" ]; then
    log "building kube-testenv $k8s_version ($hash); the first build takes 10-20 minutes"
    start=$SECONDS
    ok=false
    for attempt in 1 2 3 4; do
      if (cd "$here" && nice -n 15 "$go" mod download) >&2; then ok=true; break; fi
      log "go mod download failed (attempt $attempt), retrying"
      sleep $((attempt * 5))
    done
    $ok || { log "go mod download failed"; exit 1; }
    tmp="$bin.tmp.$$"
    if ! (cd "$here" && nice -n 15 "$go" build "${build_flags[@]}" -o "$tmp" .) >&2; then
      rm -f "$tmp"; log "go build failed"; exit 1
    fi
    mv -f "$tmp" "$bin"
    log "built $bin in $((SECONDS - start))s"
    # Drop builds of other versions unused for a week.
    find "$cache" -maxdepth 1 -name 'kube-testenv-*' ! -name "kube-testenv-$hash" -mtime +7 -delete 2>/dev/null || true
  fi
  flock -u 9
  exec 9>&-
fi
touch "$bin" # marks it as used for the clean-up above

if $build_only; then
  echo "$bin"
  exit 0
fi

# ------------------------------------------------------------------ start
if [ -z "$dir" ]; then
  dir="$(mktemp -d "${TMPDIR:-/tmp}/kube-testenv.XXXXXX")"
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
rm -f "$dir/stdout" "$dir/pid"

# Files, not pipes: `eval "$(start.sh)"` must not wait for the server to exit.
"$bin" --dir "$dir" "${args[@]}" >"$dir/stdout" 2>"$dir/kube-testenv.log" </dev/null &
pid=$!
echo "$pid" >"$dir/pid"

fail() {
  log "$1"
  log "last lines of $dir/kube-testenv.log:"
  tail -n 40 "$dir/kube-testenv.log" >&2 || true
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  exit 1
}

deadline=$((SECONDS + timeout))
while ! grep -q '^ready ' "$dir/stdout" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid" && rc=0 || rc=$?
    fail "kube-testenv exited with status $rc before it was ready"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail "kube-testenv not ready after ${timeout}s"
  fi
  sleep 0.2
done

printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
printf 'export KUBE_TESTENV_DIR=%q\n' "$dir"
printf 'export KUBE_TESTENV_PID=%d\n' "$pid"
printf '# %s\n' "$(grep -m1 '^ready ' "$dir/stdout")"
