#!/usr/bin/env python3
"""Measure Kubernetes-mode edit latency with the release binary (issue #14).

    cargo build --release
    benches/workload/measure_kube.py [--bin target/release/meshroute] ROUTES [ROUTES...]

For each size, against a fresh real API server (tests/kube-testenv: embedded etcd +
kube-apiserver on loopback; its first build takes 10-20 minutes, then it is cached):

1. install the CRDs (`meshroute crds`, `meshroute crds --gateway-api`, server-side apply),
2. create the workload of gen.py (ROUTES HTTPRoutes, 10 per parent Service, each parent with
   an EndpointSlice of 3 endpoints) in namespace `scale` with `kubectl apply --server-side`,
   20 files per kubectl and four kubectl at a time (a call that fails is retried),
3. start `meshroute run --kube` (default flags: it writes route status; it finds no Service of
   its own outside a cluster, so it publishes no EndpointSlices), time it to /ready, and wait
   until the status writes of start-up are done (every route's status written once, the watch
   echoes of those writes applied: /status's reload count still for 3 s),
4. EDITS times: patch one route's weights with `kubectl patch` (each a route on a different
   parent) and measure from kubectl's return to the new generation on the admin /status
   (polled every millisecond). Median and max; also how long kubectl itself ran (process
   start to return), which the latency above does not include.

Also reports the peak RSS (VmHWM) of meshroute and, from its log, how many routes each edit
recompiled and how many parents it rebuilt (one watch event must touch only its object).
Prints one JSON line per size; KEEP=1 keeps the run directory (logs, cluster state).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402
import measure  # noqa: E402

EDITS = 7
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
NS = "scale"


def kubectl(env, *args, stdin=None, check=True):
    return subprocess.run(
        ["kubectl", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=check,
    )


def start_cluster(d):
    out = subprocess.run(
        [os.path.join(REPO, "tests/kube-testenv/start.sh"), "--dir", d, "--name", "scale",
         "--timeout", "300",
         # One ClusterIP per parent: the test server's /24 holds 254.
         "--", "--service-cluster-ip-range=10.0.0.0/16"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = dict(os.environ)
    pid = None
    for line in out.splitlines():
        if line.startswith("export "):
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'")
            if k == "KUBE_TESTENV_PID":
                pid = int(v)
    return env, pid


def install(binary, env, d, routes):
    for extra in ([], ["--gateway-api"]):
        crds = subprocess.run([binary, "crds", *extra], capture_output=True, text=True,
                              check=True).stdout
        kubectl(env, "apply", "--server-side", "-f", "-", stdin=crds)
    kubectl(env, "wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")
    kubectl(env, "create", "namespace", NS)
    work = os.path.join(d, "workload")
    gen.main_args(work, routes)
    files = sorted(os.listdir(work))
    # kubectl create -f FILE -f FILE ...: 20 files (240 objects) per call, 4 calls at a time.
    batches = [files[i:i + 20] for i in range(0, len(files), 20)]

    def create(batch):
        args = []
        for f in batch:
            args += ["-f", os.path.join(work, f)]
        # Server-side apply is idempotent: a call the loaded API server times out is retried.
        for attempt in range(5):
            r = kubectl(env, "apply", "--server-side", *args, check=False)
            if r.returncode == 0:
                return
            print(f"kubectl apply failed (attempt {attempt + 1}): {r.stderr.strip()[-300:]}",
                  file=sys.stderr)
            time.sleep(2 * (attempt + 1))
        raise RuntimeError("kubectl apply kept failing")

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(create, batches))


def status(admin):
    code, body = measure.get(f"http://{admin}/status")
    if code != 200:
        return None
    return json.loads(body)


def run(binary, routes):
    d = tempfile.mkdtemp(prefix=f"meshroute-kube-scale-{routes}-")
    cluster_pid = None
    try:
        env, cluster_pid = start_cluster(os.path.join(d, "cluster"))
        t = time.monotonic()
        install(binary, env, d, routes)
        created_s = time.monotonic() - t
        parents = max(routes // gen.ROUTES_PER_PARENT, 3)
        admin = f"127.0.0.1:{measure.free_port()}"
        listen = f"127.0.0.1:{measure.free_port()}"
        log = open(os.path.join(d, "meshroute.log"), "w")
        t0 = time.monotonic()
        p = subprocess.Popen(
            [binary, "run", "--kube", "--listen", listen, "--admin", admin],
            stdout=log,
            stderr=log,
            # info: each published table's log line says how many routes were recompiled
            # and parents rebuilt (read back below).
            env={**env, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"},
        )
        try:
            while True:
                if p.poll() is not None:
                    raise RuntimeError(f"meshroute exited with {p.returncode}")
                code, _ = measure.get(f"http://{admin}/ready")
                if code == 200:
                    break
                time.sleep(0.005)
            ready = time.monotonic() - t0
            # Start-up status writes echo back as watch events: wait until applying stops.
            quiet_since, last = time.monotonic(), None
            while time.monotonic() - quiet_since < 3:
                s = status(admin)
                key = s and s.get("reloads")
                if key != last:
                    last, quiet_since = key, time.monotonic()
                time.sleep(0.1)
            settled = time.monotonic() - t0
            lat, kubectl_s = [], []
            for e in range(EDITS):
                i = (e * 7919) % parents
                r = i * gen.ROUTES_PER_PARENT + 3
                before = status(admin)["generation"]
                patch = json.dumps([
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight",
                     "value": 50 + e},
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight",
                     "value": 50 - e},
                ])
                t_start = time.monotonic()
                kubectl(env, "-n", NS, "patch", "httproutes.gateway.networking.k8s.io",
                        f"route-{r}", "--type=json", "-p", patch)
                t1 = time.monotonic()
                while True:
                    g = status(admin)["generation"]
                    if g != before:
                        break
                    if time.monotonic() - t1 > 120:
                        raise RuntimeError("no new generation within 120 s")
                    time.sleep(0.001)
                lat.append(time.monotonic() - t1)
                kubectl_s.append(t1 - t_start)
                time.sleep(1.0)
            hwm = measure.hwm_kib(p.pid)
        finally:
            p.terminate()
            p.wait()
            log.close()
        # What each edit's table cost: the last EDITS "routing table published" lines.
        work = []
        with open(os.path.join(d, "meshroute.log")) as f:
            for line in f:
                if "routing table published" in line:
                    m = re.search(r"routes_recompiled=(\d+) parents_rebuilt=(\d+)", line)
                    if m:
                        work.append([int(m.group(1)), int(m.group(2))])
        return {
            "mode": "kube",
            "routes": routes,
            "parents": parents,
            "create_s": round(created_s, 1),
            "ready_s": round(ready, 3),
            "settled_s": round(settled, 1),
            "peak_rss_mib": round(hwm / 1024, 1),
            "edit_ms_median": round(statistics.median(lat) * 1000, 1),
            "edit_ms_max": round(max(lat) * 1000, 1),
            "edit_ms": [round(x * 1000, 1) for x in lat],
            # The kubectl process itself (start to return), for scale: not part of the above.
            "kubectl_ms_median": round(statistics.median(kubectl_s) * 1000, 1),
            # [routes recompiled, parents rebuilt] per edit, from meshroute's log.
            "edit_work": work[-EDITS:],
        }
    finally:
        if cluster_pid:
            subprocess.run(["kill", "-TERM", str(cluster_pid)], check=False)
            for _ in range(50):
                if subprocess.run(["kill", "-0", str(cluster_pid)],
                                  capture_output=True).returncode != 0:
                    break
                time.sleep(0.2)
        if os.environ.get("KEEP") is None:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"kept {d}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/meshroute")
    ap.add_argument("routes", type=int, nargs="+")
    a = ap.parse_args()
    for n in a.routes:
        print(json.dumps(run(os.path.abspath(a.bin), n)), flush=True)


if __name__ == "__main__":
    main()
