//! End-to-end support for Kubernetes-mode tests: a real API server (kube-testenv, shared by the
//! tests of one binary), real `kubectl`, echo backends on a private network namespace the test
//! creates (the API server refuses loopback endpoint addresses), an in-process meshroute in
//! Kubernetes mode, a relay to cut meshroute off from the API server, and latency recording.
//!
//! Skips: outside CI, a missing control plane or missing root prints one line and the test
//! returns; with `CI=true` the same condition fails the test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use meshroute::run::{start, RunConfig, Running};
use meshroute::sources::kube::KubeOptions;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (outside CI) or fail (in CI) with one line.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true: Kubernetes tests must run)");
    }
    eprintln!("skipping {test}: {why}");
}

/// The meshroute binary, for commands like `crds`.
pub fn meshroute_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meshroute")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running control plane.
#[derive(Debug)]
pub struct Cluster {
    /// Admin kubeconfig (kubectl as the user would run it).
    pub admin: PathBuf,
    /// Kubeconfig of User `meshroute`, bound only to the shipped ClusterRole and Role
    /// (`None` on an external cluster given by MESHROUTE_TEST_KUBECONFIG).
    pub restricted: Option<PathBuf>,
    pub dir: PathBuf,
    pub pid: Option<u32>,
    /// `host:port` of the API server.
    pub server: String,
}

static CLUSTER: OnceLock<Result<Arc<Cluster>, String>> = OnceLock::new();

/// The shared cluster of this test binary, started (and prepared: CRDs, shipped RBAC bound to
/// User `meshroute`) on first use.
pub fn cluster(test: &str) -> Option<Arc<Cluster>> {
    match CLUSTER.get_or_init(|| start_cluster("e2e").map(Arc::new)) {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            skip_or_fail(test, e);
            None
        }
    }
}

/// A fresh cluster of its own (not prepared), stopped when the returned value drops.
pub fn own_cluster(test: &str, name: &str) -> Option<OwnCluster> {
    if std::env::var_os("MESHROUTE_TEST_KUBECONFIG").is_some() {
        skip_or_fail(
            test,
            "needs a fresh cluster of its own; MESHROUTE_TEST_KUBECONFIG points at a shared one",
        );
        return None;
    }
    match launch(name) {
        Ok(c) => Some(OwnCluster(c)),
        Err(e) => {
            skip_or_fail(test, &e);
            None
        }
    }
}

pub struct OwnCluster(pub Cluster);

impl OwnCluster {
    /// Stop the control plane (SIGTERM: the API server, then etcd) and wait until it is gone:
    /// its port refuses connections. Its run directory (etcd data, credentials, ports) stays.
    pub fn stop(&mut self) {
        let Some(pid) = self.0.pid.take() else { return };
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            // Reaped by init once it exits (start.sh runs it in the background).
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            });
            if zombie || t0.elapsed() > Duration::from_secs(30) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            std::net::TcpStream::connect(&self.0.server).is_err(),
            "the API server still answers after it was stopped"
        );
    }

    /// Start it again from its run directory: the same objects, credentials and address
    /// (`kube-testenv --resume`).
    pub fn resume(&mut self, name: &str) {
        assert!(self.0.pid.is_none(), "resume after stop");
        let out = Command::new(repo().join("tests/kube-testenv/start.sh"))
            .arg("--dir")
            .arg(&self.0.dir)
            .args([
                "--name",
                name,
                "--user",
                "meshroute",
                "--resume",
                "--watch-pid",
            ])
            .arg(std::process::id().to_string())
            .stderr(Stdio::piped())
            .output()
            .expect("start.sh");
        assert!(
            out.status.success(),
            "kube-testenv --resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.pid = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("export KUBE_TESTENV_PID="))
            .and_then(|p| p.trim().parse().ok());
        assert_eq!(
            server_of(&self.0.admin).ok().as_deref(),
            Some(self.0.server.as_str()),
            "resumed at another address"
        );
    }
}

/// Shared clusters by name, or why one could not start.
type Named = Mutex<BTreeMap<String, Result<Arc<Cluster>, String>>>;

static NAMED: OnceLock<Named> = OnceLock::new();

/// A fresh cluster named `name` shared by the tests of this binary that ask for that name (not
/// prepared: no CRDs or RBAC); it stops when the test process exits. Tests that stop their
/// control plane take an [`own_cluster`] instead.
pub fn named_cluster(test: &str, name: &str) -> Option<Arc<Cluster>> {
    if std::env::var_os("MESHROUTE_TEST_KUBECONFIG").is_some() {
        skip_or_fail(
            test,
            "needs fresh clusters of its own; MESHROUTE_TEST_KUBECONFIG points at a shared one",
        );
        return None;
    }
    let mut all = NAMED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let c = all
        .entry(name.to_string())
        .or_insert_with(|| launch(name).map(Arc::new));
    match c {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            skip_or_fail(test, e);
            None
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.0.pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

fn launch(name: &str) -> Result<Cluster, String> {
    let script = repo().join("tests/kube-testenv/start.sh");
    // Under target/ (kept for post-mortems, gone with `cargo clean`); runs older than a day
    // are removed.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kube-testenv");
    let _ = std::fs::create_dir_all(&root);
    for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let stale = old
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if stale {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(&root)
        .map_err(|e| format!("tempdir: {e}"))?
        .keep();
    let out = Command::new(&script)
        .args(["--dir"])
        .arg(&dir)
        .args(["--name", name, "--user", "meshroute", "--watch-pid"])
        .arg(std::process::id().to_string())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(format!("kube-testenv did not start: {last}"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBE_TESTENV_PID="))
        .and_then(|p| p.trim().parse().ok());
    let admin = dir.join("kubeconfig");
    let server = server_of(&admin)?;
    Ok(Cluster {
        restricted: Some(dir.join("kubeconfig-meshroute")),
        admin,
        dir,
        pid,
        server,
    })
}

fn server_of(kubeconfig: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(kubeconfig).map_err(|e| format!("{e}"))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .map(|s| s.trim().trim_start_matches("https://").to_string())
        .ok_or_else(|| "no server in kubeconfig".into())
}

fn start_cluster(name: &str) -> Result<Cluster, String> {
    let c = match std::env::var_os("MESHROUTE_TEST_KUBECONFIG") {
        Some(k) => {
            let admin = PathBuf::from(k);
            let server = server_of(&admin)?;
            Cluster {
                admin,
                restricted: None,
                dir: std::env::temp_dir(),
                pid: None,
                server,
            }
        }
        None => launch(name)?,
    };
    prepare(&c)?;
    Ok(c)
}

/// The Gateway API HTTPRoute CRD exactly as `meshroute crds --gateway-api` prints it for users.
pub fn gateway_crd() -> String {
    let out = Command::new(meshroute_bin())
        .args(["crds", "--gateway-api"])
        .output()
        .expect("meshroute crds --gateway-api");
    assert!(out.status.success(), "meshroute crds --gateway-api failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn prepare(c: &Cluster) -> Result<(), String> {
    let k = Kubectl::new(&c.admin);
    let crds = std::fs::read_to_string(repo().join("crds/meshroute-crds.yaml"))
        .map_err(|e| format!("crds: {e}"))?;
    k.run_in(&["apply", "--server-side", "-f", "-"], &crds)
        .into_result()?;
    k.run_in(&["apply", "--server-side", "-f", "-"], &gateway_crd())
        .into_result()?;
    k.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/httproutes.policy.linkerd.io",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/trafficsplits.split.smi-spec.io",
        "crd/httproutegroups.specs.smi-spec.io",
        "crd/xbackendtrafficpolicies.gateway.networking.x-k8s.io",
    ])
    .into_result()?;
    let deploy = repo().join("deploy");
    k.run(&[
        "apply",
        "-f",
        &deploy.join("00-namespace.yaml").to_string_lossy(),
    ])
    .into_result()?;
    k.run(&[
        "apply",
        "-f",
        &deploy.join("10-rbac.yaml").to_string_lossy(),
    ])
    .into_result()?;
    // The test user gets exactly the shipped roles.
    let bind = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: meshroute-test-user}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: meshroute}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: meshroute-test-user, namespace: meshroute}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: meshroute-leader-election}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: meshroute}]
"#;
    k.run_in(&["apply", "-f", "-"], bind).into_result()?;
    Ok(())
}

/// Output of one kubectl run.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn into_result(self) -> Result<String, String> {
        if self.ok {
            Ok(self.stdout)
        } else {
            Err(format!("kubectl failed: {}", self.stderr.trim()))
        }
    }

    #[track_caller]
    pub fn expect_ok(self) -> String {
        assert!(self.ok, "kubectl failed: {}", self.stderr.trim());
        self.stdout
    }
}

/// `kubectl --kubeconfig K ...`, the machine's real kubectl.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Self {
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_in(args, "")
    }

    pub fn run_in(&self, args: &[&str], stdin: &str) -> Out {
        use std::io::Write;
        let mut child = match Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return Out {
                    ok: false,
                    stdout: String::new(),
                    stderr: format!("cannot run kubectl: {e}"),
                }
            }
        };
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        match child.wait_with_output() {
            Ok(o) => Out {
                ok: o.status.success(),
                stdout: String::from_utf8_lossy(&o.stdout).into(),
                stderr: String::from_utf8_lossy(&o.stderr).into(),
            },
            Err(e) => Out {
                ok: false,
                stdout: String::new(),
                stderr: e.to_string(),
            },
        }
    }

    /// Run on a blocking thread (kubectl takes a few hundred ms; the proxy keeps running).
    pub async fn arun(&self, args: &[&str], stdin: &str) -> Out {
        let me = self.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            me.run_in(&a, &stdin)
        })
        .await
        .expect("kubectl thread")
    }

    pub async fn apply(&self, yaml: &str) -> String {
        self.arun(&["apply", "-f", "-"], yaml).await.expect_ok()
    }

    pub async fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get", "-o", "json"];
        a.extend_from_slice(args);
        let out = self.arun(&a, "").await.expect_ok();
        serde_json::from_str(&out).expect("kubectl -o json")
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique lowercase suffix.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Echo backends on a private network namespace: `10.213.N.2:port`, reachable from the host
/// through a veth pair, answering with their name (`x-backend` header and body);
/// `?delay=MS` delays the answer.
pub struct Backends {
    pub netns: String,
    pub host_if: String,
    pub ip: String,
    pub ports: BTreeMap<String, u16>,
    child: Option<std::process::Child>,
}

const ECHO_PY: &str = r#"
import sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from urllib.parse import urlparse, parse_qs
def make(name):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            q = parse_qs(urlparse(self.path).query)
            d = int(q.get("delay", ["0"])[0])
            if d: time.sleep(d / 1000.0)
            body = name.encode()
            try:
                self.send_response(200)
                self.send_header("x-backend", name)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy gave up (timeout tests)
        do_POST = do_GET
    return H
ip = sys.argv[1]
for spec in sys.argv[2:]:
    port, name = spec.split("=", 1)
    s = ThreadingHTTPServer((ip, int(port)), make(name))
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Backends {
    /// Start `names` as backends (ports 8081, 8082, ... in order). `None` after a skip.
    pub fn start(test: &str, names: &[&str]) -> Option<Backends> {
        if !is_root() {
            skip_or_fail(test, "e2e backends need root (ip netns)");
            return None;
        }
        match Self::try_start(names) {
            Ok(b) => Some(b),
            Err(e) => {
                skip_or_fail(
                    test,
                    &format!("cannot create the backend network namespace: {e}"),
                );
                None
            }
        }
    }

    fn try_start(names: &[&str]) -> Result<Backends, String> {
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Pick a /24 no interface on this host uses yet.
        let used = Command::new("ip")
            .args(["-o", "addr"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let base = (pid as usize * 7 + id as usize * 13) % 250;
        let n = (0..250)
            .map(|i| (base + i) % 250 + 1)
            .find(|n| !used.contains(&format!("10.213.{n}.")))
            .ok_or("no free 10.213.N.0/24")?;
        let netns = format!("mr-e2e-{pid}-{id}");
        let tag = format!("{:x}", (pid << 6 | id) & 0xffffff);
        let (a, b) = (format!("mre{tag}a"), format!("mre{tag}b"));
        let mut me = Backends {
            netns: netns.clone(),
            host_if: a.clone(),
            ip: format!("10.213.{n}.2"),
            ports: BTreeMap::new(),
            child: None,
        };
        sh(&["ip", "netns", "add", &netns])?;
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        sh(&["ip", "link", "set", &b, "netns", &netns])?;
        sh(&["ip", "addr", "add", &format!("10.213.{n}.1/24"), "dev", &a])?;
        sh(&["ip", "link", "set", &a, "up"])?;
        let exec = ["ip", "netns", "exec", netns.as_str()];
        let in_ns = |rest: &[&str]| {
            let mut v: Vec<&str> = exec.to_vec();
            v.extend_from_slice(rest);
            sh(&v)
        };
        in_ns(&["ip", "addr", "add", &format!("10.213.{n}.2/24"), "dev", &b])?;
        in_ns(&["ip", "link", "set", &b, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            netns.clone(),
            "python3".into(),
            "-c".into(),
            ECHO_PY.into(),
            me.ip.clone(),
        ];
        for (i, name) in names.iter().enumerate() {
            let port = 8081 + i as u16;
            me.ports.insert(name.to_string(), port);
            args.push(format!("{port}={name}"));
        }
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        {
            use std::io::BufRead;
            let mut line = String::new();
            if let Some(out) = child.stdout.as_mut() {
                let _ = std::io::BufReader::new(out).read_line(&mut line);
            }
            me.child = Some(child);
            if line.trim() != "ready" {
                return Err("echo backends did not start".into());
            }
        }
        Ok(me)
    }

    /// The host's own address on the backends' network (`10.213.N.1`): meshroute listens and
    /// is advertised there, so the API server accepts it in EndpointSlices.
    pub fn host_ip(&self) -> std::net::IpAddr {
        self.ip
            .rsplit_once('.')
            .map(|(net, _)| format!("{net}.1"))
            .unwrap_or_default()
            .parse()
            .expect("host ip")
    }

    /// Another host address on the backends' network, `10.213.N.k` (a second replica).
    pub fn add_host_ip(&self, k: u8) -> std::net::IpAddr {
        let net = self.ip.rsplit_once('.').map(|(n, _)| n).unwrap_or_default();
        let ip = format!("{net}.{k}");
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &self.host_if,
        ])
        .expect("add host address");
        ip.parse().expect("ip")
    }

    /// A command run inside the backends' network namespace (the test host).
    pub fn in_netns(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    /// A selector-less Service (optionally a multicluster mirror) with an EndpointSlice
    /// pointing at the backend `endpoints` (none: no slice).
    pub fn service_yaml(
        &self,
        ns: &str,
        svc: &str,
        mirror_of: Option<&str>,
        endpoints: Option<&str>,
    ) -> String {
        let labels = match mirror_of {
            Some(cluster) => format!("\n  labels: {{mirror.linkerd.io/mirrored-service: \"true\", mirror.linkerd.io/cluster-name: {cluster}}}"),
            None => String::new(),
        };
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {ns}{labels}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
        );
        if let Some(b) = endpoints {
            let port = self.port(b);
            y.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
                self.ip
            ));
        }
        y
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.netns]);
    }
}

/// An in-process meshroute in Kubernetes mode.
pub struct Mesh {
    pub running: Option<Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// One answer from the proxy.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub backend: Option<String>,
    pub error: Option<String>,
}

/// How [`Mesh::start_with`] runs meshroute.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// IP of the proxy listener (port 0) and of the per-parent-port listeners.
    pub listen_ip: std::net::IpAddr,
    pub publish: meshroute::sources::kube::PublishOptions,
    /// Lease name (replicas of one deployment share it) and this replica's identity.
    pub lease: String,
    pub identity: String,
}

impl MeshOptions {
    /// Publishing on, listening and advertised on `ip`, ports from a range no other test uses.
    pub fn advertised(ns: &str, ip: std::net::IpAddr) -> Self {
        MeshOptions {
            listen_ip: ip,
            publish: meshroute::sources::kube::PublishOptions {
                enabled: true,
                port_range: port_range(),
                advertise: vec![ip],
                self_service: None,
            },
            lease: format!("lease-{ns}"),
            identity: format!("test-{ns}"),
        }
    }
}

/// Ten listener ports of their own for one test run.
pub fn port_range() -> std::ops::RangeInclusive<u16> {
    let slot = (std::process::id() % 300) * 20 + NEXT.fetch_add(1, Ordering::SeqCst) % 20;
    let first = 30000 + (slot % 3000) as u16 * 10;
    first..=first + 9
}

/// One plain HTTP/1.1 exchange with `addr`, `Host` only when given (`connection: close`).
pub async fn dial(addr: SocketAddr, host: Option<&str>, path: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\nconnection: close\r\n");
        if let Some(h) = host {
            req.push_str(&format!("host: {h}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    let text = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return Reply {
                status: 0,
                backend: None,
                error: Some(format!("client: {e}")),
            }
        }
        Err(_) => {
            return Reply {
                status: 0,
                backend: None,
                error: Some("client timeout".into()),
            }
        }
    };
    parse_reply(&text)
}

/// Status, `x-backend` and `meshroute-error` of a raw HTTP/1.1 response.
pub fn parse_reply(text: &str) -> Reply {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut r = Reply {
        status,
        backend: None,
        error: None,
    };
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            match n.trim().to_ascii_lowercase().as_str() {
                "x-backend" => r.backend = Some(v.trim().to_string()),
                "meshroute-error" => r.error = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    r
}

/// Count answers of `n` requests to `addr` by backend name (or `status:error`).
pub async fn tally_at(addr: SocketAddr, host: Option<&str>, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = dial(addr, host, "/").await;
        let k = r
            .backend
            .clone()
            .unwrap_or_else(|| format!("{}:{}", r.status, r.error.unwrap_or_default()));
        *out.entry(k).or_default() += 1;
    }
    out
}

impl Mesh {
    /// Start watching `namespace` with `kubeconfig` as one replica described by `o`; waits
    /// for `/ready`.
    pub async fn start_with(kubeconfig: &Path, namespace: &str, o: MeshOptions) -> Mesh {
        let cfg = RunConfig {
            kube: true,
            listen: SocketAddr::new(o.listen_ip, 0),
            admin: "127.0.0.1:0".parse().expect("addr"),
            kube_options: KubeOptions {
                kubeconfig: Some(kubeconfig.to_path_buf()),
                namespace: Some(namespace.to_string()),
                lease_namespace: Some("meshroute".into()),
                lease_name: Some(o.lease),
                identity: Some(o.identity),
                publish: o.publish,
                ..Default::default()
            },
            ..Default::default()
        };
        Self::from_config(cfg).await
    }

    pub async fn from_config(cfg: RunConfig) -> Mesh {
        let running = start(cfg).await.expect("meshroute starts in kube mode");
        let mesh = Mesh {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            running: Some(running),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        let t0 = Instant::now();
        while !mesh.running().proxy.is_ready() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "meshroute not ready after 30s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mesh
    }

    /// Start watching `namespace` with `kubeconfig`; waits for `/ready`. Publishing is on,
    /// with a port range of its own and meshroute's own Service (absent: no addresses).
    pub async fn start(kubeconfig: &Path, namespace: &str) -> Mesh {
        let cfg = RunConfig {
            kube: true,
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
            kube_options: KubeOptions {
                kubeconfig: Some(kubeconfig.to_path_buf()),
                namespace: Some(namespace.to_string()),
                lease_namespace: Some("meshroute".into()),
                lease_name: Some(format!("lease-{namespace}")),
                identity: Some(format!("test-{namespace}")),
                publish: meshroute::sources::kube::PublishOptions {
                    port_range: port_range(),
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        Self::from_config(cfg).await
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn generation(&self) -> u64 {
        self.running().proxy.table().generation
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        let req = http::Request::builder()
            .uri(format!("http://{}{path}", self.proxy))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        match tokio::time::timeout(Duration::from_secs(15), self.client.request(req)).await {
            Ok(Ok(rsp)) => {
                let status = rsp.status().as_u16();
                let h = |n: &str| {
                    rsp.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let (backend, error) = (h("x-backend"), h("meshroute-error"));
                let _ = rsp.into_body().collect().await;
                Reply {
                    status,
                    backend,
                    error,
                }
            }
            Ok(Err(e)) => Reply {
                status: 0,
                backend: None,
                error: Some(format!("client: {e}")),
            },
            Err(_) => Reply {
                status: 0,
                backend: None,
                error: Some("client timeout".into()),
            },
        }
    }

    /// Count answers by backend name (or `status:error` for proxy-made answers).
    pub async fn tally(&self, host: &str, n: usize) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let r = self.get(host, "/").await;
            let k = r
                .backend
                .clone()
                .unwrap_or_else(|| format!("{}:{}", r.status, r.error.unwrap_or_default()));
            *out.entry(k).or_default() += 1;
        }
        out
    }

    /// Wait until the table has not changed for `quiet` (status writes settle).
    pub async fn settle(&self, quiet: Duration) {
        let t0 = Instant::now();
        let mut g = self.generation();
        let mut since = Instant::now();
        while since.elapsed() < quiet && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.generation();
            if now != g {
                g = now;
                since = Instant::now();
            }
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown().await;
        }
    }
}

/// kubectl-to-traffic latencies of one test.
#[derive(Default)]
pub struct Latencies {
    pub test: String,
    samples: Mutex<Vec<(String, Duration)>>,
}

impl Latencies {
    pub fn new(test: &str) -> Self {
        Latencies {
            test: test.into(),
            samples: Mutex::default(),
        }
    }

    /// After a kubectl change returned at `since`: poll with requests to `host` until `done`
    /// says the answer comes from the new table; record and return the time it took.
    pub async fn follow(
        &self,
        step: &str,
        mesh: &Mesh,
        host: &str,
        since: Instant,
        done: impl Fn(&Reply) -> bool,
    ) -> Duration {
        loop {
            let r = mesh.get(host, "/").await;
            if done(&r) {
                let d = since.elapsed();
                self.record(step, d);
                return d;
            }
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "{step}: traffic did not follow within 20s (last answer {r:?})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// After a kubectl change returned at `since`, for changes a single answer cannot tell
    /// apart (weights): wait for the table generation to pass `before`, then time the first
    /// request served after that.
    pub async fn follow_generation(
        &self,
        step: &str,
        mesh: &Mesh,
        host: &str,
        before: u64,
        since: Instant,
    ) -> Duration {
        while mesh.generation() <= before {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "{step}: no new table within 20s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = mesh.get(host, "/").await;
        let d = since.elapsed();
        self.record(step, d);
        d
    }

    pub fn record(&self, step: &str, d: Duration) {
        eprintln!("{}: {step}: {} ms", self.test, d.as_millis());
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((step.into(), d));
    }

    /// Print p50/p99/max and append the raw samples to `$CARGO_TARGET_TMPDIR/kube-latency.txt`.
    pub fn report(&self) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut ms: Vec<f64> = s.iter().map(|(_, d)| d.as_secs_f64() * 1000.0).collect();
        if ms.is_empty() {
            return;
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        eprintln!(
            "latency {}: n={} p50={:.0}ms p99={:.0}ms max={:.0}ms",
            self.test,
            ms.len(),
            pct(0.5),
            pct(0.99),
            ms[ms.len() - 1]
        );
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kube-latency.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write;
            for (step, d) in s.iter() {
                let _ = writeln!(
                    f,
                    "{}\t{}\t{:.1}",
                    self.test,
                    step,
                    d.as_secs_f64() * 1000.0
                );
            }
        }
    }
}

/// Our `status.parents[]` entry of a route as the API server holds it.
pub fn our_parent(obj: &Value) -> Option<Value> {
    obj.pointer("/status/parents")?
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "meshroute.dev/controller")
        .cloned()
}

/// `(status, reason, message)` of condition `type_` in a parent entry.
pub fn condition(parent: &Value, type_: &str) -> Option<(String, String, String)> {
    parent["conditions"].as_array()?.iter().find_map(|c| {
        (c["type"] == type_).then(|| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

/// Poll `kubectl get` until `pred` holds on the object (status writes are asynchronous).
pub async fn wait_object(
    k: &Kubectl,
    args: &[&str],
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let v = k.get_json(args).await;
        if pred(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: not seen within 20s; last object status: {}",
            v.get("status").cloned().unwrap_or(Value::Null)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback TCP relay in front of the API server: meshroute's kubeconfig points at it, and
/// stopping it (closing every connection) makes the API server unreachable for meshroute
/// while kubectl keeps using the real address.
pub struct Relay {
    pub addr: SocketAddr,
    target: String,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), target).await
    }

    /// A relay listening on `bind` (e.g. the host's address on a test network, so that a
    /// process inside the network namespace reaches the API server on loopback).
    pub async fn start_on(bind: SocketAddr, target: &str) -> Relay {
        let l = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind relay");
        let addr = l.local_addr().expect("addr");
        let mut r = Relay {
            addr,
            target: target.into(),
            stop: None,
            task: None,
        };
        r.serve(l);
        r
    }

    fn serve(&mut self, l: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let target = self.target.clone();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut stop = rx.clone();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    a = l.accept() => {
                        let Ok((mut inbound, _)) = a else { continue };
                        let target = target.clone();
                        conns.spawn(async move {
                            if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        });
                    }
                }
            }
            conns.abort_all();
        }));
    }

    /// Close the listener and every relayed connection.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Listen again on the same address.
    pub async fn restart(&mut self) {
        let l = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind relay");
        self.serve(l);
    }

    /// A copy of `kubeconfig` whose server is this relay.
    pub fn kubeconfig(&self, kubeconfig: &Path, server: &str, out: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let text = text.replace(
            &format!("https://{server}"),
            &format!("https://{}", self.addr),
        );
        std::fs::write(out, text).expect("write kubeconfig");
        out.to_path_buf()
    }
}

/// A real kube-proxy (iptables mode) on the backends' network namespace, the test host: it
/// watches the API server like a node's kube-proxy and programs that namespace's iptables, so a
/// client there calling a Service's ClusterIP takes the path a pod takes. It reaches the API
/// server through a relay on the host's address (the server listens on loopback), skipping TLS
/// verification (the serving certificate names 127.0.0.1 only).
pub struct KubeProxy {
    child: Option<std::process::Child>,
    pub log: PathBuf,
    node: String,
    admin: PathBuf,
    _relay: Relay,
    _dir: tempfile::TempDir,
}

const CLIENT_PY: &str = r#"
import sys, http.client
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host = sys.argv[4] if len(sys.argv) > 4 else None
for _ in range(n):
    try:
        c = http.client.HTTPConnection(ip, port, timeout=5)
        c.putrequest("GET", "/", skip_host=host is not None)
        if host is not None:
            c.putheader("Host", host)
        c.putheader("Connection", "close")
        c.endheaders()
        r = c.getresponse()
        r.read()
        print(r.status, r.getheader("x-backend") or "-", r.getheader("meshroute-error") or "-", flush=True)
        c.close()
    except Exception as e:
        print(0, "-", type(e).__name__, flush=True)
"#;

impl KubeProxy {
    /// Build (cached) and start kube-proxy on `b`'s namespace. `None` after a skip.
    pub async fn start(test: &str, c: &Cluster, b: &Backends) -> Option<KubeProxy> {
        for tool in ["iptables", "conntrack"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                skip_or_fail(
                    test,
                    &format!(
                        "kube-proxy needs {tool} (Debian package {tool}; .ci/run installs it)"
                    ),
                );
                return None;
            }
        }
        let script = repo().join("tests/kube-testenv/kube-proxy.sh");
        let built = tokio::task::spawn_blocking(move || Command::new("bash").arg(script).output())
            .await
            .expect("build thread");
        let bin = match built {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => {
                skip_or_fail(
                    test,
                    &format!(
                        "cannot build kube-proxy: {}",
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    ),
                );
                return None;
            }
            Err(e) => {
                skip_or_fail(test, &format!("cannot run kube-proxy.sh: {e}"));
                return None;
            }
        };
        // Cluster IPs are routed through the host like any off-link address; kube-proxy's
        // rules rewrite them before they leave.
        let route = b
            .in_netns("ip")
            .args([
                "route",
                "replace",
                "default",
                "via",
                &b.host_ip().to_string(),
            ])
            .output()
            .expect("ip route");
        assert!(
            route.status.success(),
            "{}",
            String::from_utf8_lossy(&route.stderr)
        );
        let relay = Relay::start_on(SocketAddr::new(b.host_ip(), 0), &c.server).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = std::fs::read_to_string(&c.admin).expect("admin kubeconfig");
        let text: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("certificate-authority-data:") {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}insecure-skip-tls-verify: true")
                } else if l.trim_start().starts_with("server:") {
                    l.replace(&c.server, &relay.addr.to_string())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, text).expect("write kubeconfig");
        // kube-proxy waits for its Node before it programs anything.
        let node = format!("node-{}", b.netns);
        Kubectl::new(&c.admin)
            .apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n"
            ))
            .await;
        let log = dir.path().join("kube-proxy.log");
        let child = b
            .in_netns(&bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--hostname-override", &node, "--proxy-mode", "iptables"])
            .args(["--bind-address", &b.ip])
            // Leave the host-wide conntrack sysctls alone.
            .args([
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
            ])
            .args(["--iptables-min-sync-period=0s", "--v=2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("kube-proxy");
        Some(KubeProxy {
            child: Some(child),
            log,
            node,
            admin: c.admin.clone(),
            _relay: relay,
            _dir: dir,
        })
    }

    /// The last lines of kube-proxy's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("FLAG:")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Kubectl::new(&self.admin).run(&["delete", "node", &self.node, "--wait=false"]);
    }
}

impl Backends {
    /// `n` requests from inside the test host to `ip:port`, each on a new connection, with
    /// `Host: host` when given (otherwise `Host: ip:port`, as `curl http://ip/` sends).
    pub async fn call(&self, ip: &str, port: u16, n: usize, host: Option<&str>) -> Vec<Reply> {
        let mut cmd = self.in_netns("python3");
        cmd.args(["-c", CLIENT_PY, ip, &port.to_string(), &n.to_string()]);
        if let Some(h) = host {
            cmd.arg(h);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("client thread")
            .expect("python3 client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let mut f = l.split_whitespace();
                let status = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let some = |v: Option<&str>| v.filter(|v| *v != "-").map(str::to_string);
                Reply {
                    status,
                    backend: some(f.next()),
                    error: some(f.next()),
                }
            })
            .collect()
    }
}
