#!/usr/bin/env bash
# deploy/pgo.sh - build target/release/meshroute with profile-guided optimisation.
#
# 1. build an instrumented binary (target/pgo/instrumented),
# 2. train it: `run --config policies --demo` (echo backends on every loopback endpoint) while
#    a small client sends keep-alive GETs, HEADs and POSTs with bodies to the three bundled
#    routes (policy.linkerd.io, gateway.networking.k8s.io, SMI) and a few unknown hosts,
# 3. merge the profile and rebuild target/release/meshroute with it.
#
# Needs: rustup (the llvm-tools component is added if missing), python3, ports 4140/9990 and
# the policies' loopback ports free. Takes about three release builds' time.
set -euo pipefail
cd "$(dirname "$0")/.."

host="$(rustc -vV | sed -n 's/^host: //p')"
llvm_bin="$(rustc --print sysroot)/lib/rustlib/$host/bin"
if [ ! -x "$llvm_bin/llvm-profdata" ]; then
  rustup component add llvm-tools
fi

work="$PWD/target/pgo"
rm -rf "$work/profiles"
mkdir -p "$work/profiles"

echo "pgo: building the instrumented binary" >&2
RUSTFLAGS="-Cprofile-generate=$work/profiles" \
  cargo build --release --locked --bin meshroute --target-dir "$work/instrumented"

echo "pgo: training" >&2
"$work/instrumented/release/meshroute" run --config policies --demo \
  --listen 127.0.0.1:4140 --admin 127.0.0.1:9990 >"$work/train.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
python3 - <<'EOF'
import socket, sys, threading, time

ADDR = ("127.0.0.1", 4140)
HOSTS = ["smiley.faces.svc.cluster.local", "color.faces.svc.cluster.local:80",
         "service-b.faces.svc.cluster.local"]

deadline = time.time() + 15
while True:
    try:
        socket.create_connection(ADDR, timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("pgo: meshroute did not start (see target/pgo/train.log)")
        time.sleep(0.2)
time.sleep(1)

def read_response(f, head_only):
    status = f.readline()
    if not status:
        raise EOFError
    length, chunked = 0, False
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if head_only:
        return status
    if chunked:
        while True:
            size = int(f.readline().split(b";")[0], 16)
            f.read(size + 2)
            if size == 0:
                break
    else:
        f.read(length)
    return status

def client(n, seed):
    s = socket.create_connection(ADDR)
    f = s.makefile("rb")
    for i in range(n):
        host = HOSTS[(i + seed) % len(HOSTS)]
        if i % 50 == 7:
            req = ("POST /echo HTTP/1.1\r\nHost: %s\r\ncontent-length: 11\r\n\r\nhello world" % host)
        elif i % 50 == 9:
            req = "HEAD / HTTP/1.1\r\nHost: %s\r\n\r\n" % host
        elif i % 97 == 3:
            req = "GET / HTTP/1.1\r\nHost: unknown.example\r\n\r\n"
        else:
            req = "GET /?n=%d HTTP/1.1\r\nHost: %s\r\nuser-agent: pgo\r\naccept: */*\r\n\r\n" % (i, host)
        s.sendall(req.encode())
        try:
            read_response(f, req.startswith("HEAD"))
        except (EOFError, ValueError, OSError):
            s.close()
            s = socket.create_connection(ADDR)
            f = s.makefile("rb")
    s.close()

# The demo's echo backends answer after a few milliseconds, so many connections at once.
threads = [threading.Thread(target=client, args=(1000, k)) for k in range(40)]
started = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
print("pgo: trained on 40000 requests in %.1f s" % (time.time() - started), file=sys.stderr)
EOF
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT

echo "pgo: merging the profile" >&2
"$llvm_bin/llvm-profdata" merge -o "$work/meshroute.profdata" "$work/profiles"

echo "pgo: building target/release/meshroute with the profile" >&2
RUSTFLAGS="-Cprofile-use=$work/meshroute.profdata" \
  cargo build --release --locked --bin meshroute
echo "pgo: done: target/release/meshroute" >&2
