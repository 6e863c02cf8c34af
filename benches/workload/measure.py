#!/usr/bin/env python3
"""Measure file-mode control-plane scale with the release binary (issue #14).

    cargo build --release
    benches/workload/measure.py [--bin target/release/meshroute] ROUTES [ROUTES...]

For each size: generate the workload (gen.py) into a fresh temporary directory, start
`meshroute run --config DIR`, and report
- time to ready: process start until admin /ready answers 200,
- one route's weights edited -> new generation: the file holding the route is rewritten
  (write to a dot-file, rename over: what editors and `kubectl cp` do) and /status is polled
  every 1 ms until its generation moves; median of EDITS edits, each to a different file,
- peak RSS: VmHWM of the process after start-up and after the edits (high-water mark).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402

EDITS = 7


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return None, b""


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
            
    return 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def generation(admin):
    code, body = get(f"http://{admin}/status")
    if code != 200:
        return None
    return json.loads(body)["generation"]


def run(binary, routes):
    d = tempfile.mkdtemp(prefix=f"meshroute-scale-{routes}-")
    try:
        gen.main_args(d, routes)
        parents = max(routes // gen.ROUTES_PER_PARENT, 3)
        admin = f"127.0.0.1:{free_port()}"
        listen = f"127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        p = subprocess.Popen(
            [binary, "run", "--config", d, "--listen", listen, "--admin", admin],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        try:
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"meshroute exited with {p.returncode}")
                code, _ = get(f"http://{admin}/ready")
                if code == 200:
                    break
                time.sleep(0.005)
            ready = time.monotonic() - t0
            hwm_start = hwm_kib(p.pid)
            time.sleep(0.5)
            lat = []
            for e in range(EDITS):
                i = (e * 7919) % parents
                before = generation(admin)
                text = gen.parent_file(
                    i, parents, lambda r, e=e: (50 + e, 50 - e) if r == i * 10 + 3 else (90, 10)
                )
                t1 = time.monotonic()
                gen.write_atomic(os.path.join(d, f"p-{i}.yaml"), text)
                while True:
                    g = generation(admin)
                    if g is not None and g != before:
                        break
                    if time.monotonic() - t1 > 120:
                        raise RuntimeError("no new generation within 120 s")
                    time.sleep(0.001)
                lat.append(time.monotonic() - t1)
                time.sleep(0.3)
            hwm_end = hwm_kib(p.pid)
            rss_end = rss_kib(p.pid)
        finally:
            p.terminate()
            p.wait()
        return {
            "routes": routes,
            "parents": parents,
            "ready_s": round(ready, 3),
            "peak_rss_start_mib": round(hwm_start / 1024, 1),
            "peak_rss_mib": round(hwm_end / 1024, 1),
            "rss_after_edits_mib": round(rss_end / 1024, 1),
            "bytes_per_route_peak": int(hwm_end * 1024 / routes),
            "edit_ms_median": round(statistics.median(lat) * 1000, 1),
            "edit_ms_max": round(max(lat) * 1000, 1),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/meshroute")
    ap.add_argument("routes", type=int, nargs="+")
    a = ap.parse_args()
    for n in a.routes:
        print(json.dumps(run(a.bin, n)), flush=True)


if __name__ == "__main__":
    main()
