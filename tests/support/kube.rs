//! A real Kubernetes API server for integration tests.
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "support/kube.rs"]
//! mod kube_support;
//! use kube_support::TestCluster;
//! ```
//!
//! `TestCluster::start("north")` gives a cluster, in this order of preference:
//!
//! 1. `MESHROUTE_TEST_KUBECONFIG_<NAME>` (name upper-cased, `-` → `_`), then
//!    `MESHROUTE_TEST_KUBECONFIG`: an existing cluster (kind, k3d, anything) is used as is.
//!    Every `TestCluster` of that name then shares it, so tests must use their own namespaces
//!    ([`unique_name`]) and must not rely on the cluster being empty. Users are emulated with
//!    impersonation (`as:`/`as-groups:` in a generated kubeconfig).
//! 2. Otherwise `tests/kube-testenv/start.sh` starts an embedded etcd + kube-apiserver (built
//!    once and cached; the first build takes 10-20 minutes) in a fresh temporary directory.
//!    The server is stopped (SIGTERM, then waited for) when the `TestCluster` is dropped, and
//!    also exits by itself when this test process dies (`--watch-pid`).
//!
//! When no cluster can be had, `start` panics with the log tail if `CI=true`, and otherwise
//! prints one line `skipping: <reason>` to stderr and returns `None`, so the caller can
//! `return` early:
//!
//! ```ignore
//! let Some(cluster) = TestCluster::start("north") else { return };
//! ```
//!
//! The test server has no controller manager: nothing creates EndpointSlices, deletes
//! namespaces, collects garbage or mints service-account tokens. It refuses loopback
//! addresses in EndpointSlices/Endpoints, like any API server (use e.g. 10.213.0.2).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Environment variable naming an existing cluster's kubeconfig to test against.
pub const KUBECONFIG_ENV: &str = "MESHROUTE_TEST_KUBECONFIG";

/// How long to wait for the server to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of start.sh's stderr kept for failure messages.
const TAIL_LINES: usize = 60;

/// A Kubernetes API server for one test (or an external cluster shared by tests).
pub struct TestCluster {
    name: String,
    kubeconfig: PathBuf,
    /// User name → groups, as given to `start_with_users`.
    users: HashMap<String, Vec<String>>,
    backend: Backend,
}

enum Backend {
    /// A kube-testenv process we started; `dir` holds its kubeconfigs and logs.
    Testenv { pid: u32, dir: tempfile::TempDir },
    /// An existing cluster; `scratch` holds generated impersonation kubeconfigs.
    External { scratch: tempfile::TempDir },
}

impl TestCluster {
    /// A cluster named `name` (used for the kubeconfig context and to pick
    /// `MESHROUTE_TEST_KUBECONFIG_<NAME>`), with only the admin user.
    pub fn start(name: &str) -> Option<TestCluster> {
        Self::start_with_users(name, &[])
    }

    /// Like [`start`](Self::start), plus token users, each given as `NAME` or
    /// `NAME:GROUP,GROUP...`. A user has no permissions until the test binds a role to
    /// `User NAME` (or one of its groups); see [`user_kubeconfig`](Self::user_kubeconfig).
    pub fn start_with_users(name: &str, users: &[&str]) -> Option<TestCluster> {
        match Self::try_start(name, users) {
            Ok(cluster) => Some(cluster),
            Err(Unavailable { reason, tail }) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "kube test cluster {name:?} could not start: {reason}\n\
                         --- last lines of tests/kube-testenv/start.sh ---\n{tail}"
                    );
                }
                // Straight to the stderr handle: libtest captures eprintln! output of
                // passing tests, and this line must be seen.
                let _ = writeln!(std::io::stderr(), "skipping: {reason}");
                None
            }
        }
    }

    fn try_start(name: &str, users: &[&str]) -> Result<TestCluster, Unavailable> {
        let users = parse_users(users).map_err(|e| Unavailable::new(format!("{e:#}")))?;
        if let Some(kubeconfig) = external_kubeconfig(name) {
            if !kubeconfig.is_file() {
                return Err(Unavailable::new(format!(
                    "{} does not exist",
                    kubeconfig.display()
                )));
            }
            let scratch = tempdir(name).map_err(|e| Unavailable::new(format!("{e:#}")))?;
            return Ok(TestCluster {
                name: name.to_string(),
                kubeconfig,
                users,
                backend: Backend::External { scratch },
            });
        }
        start_testenv(name, users)
    }

    /// The cluster's name as given to `start`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin kubeconfig (cluster-admin on a test server).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether this is an external cluster from `MESHROUTE_TEST_KUBECONFIG*`.
    pub fn is_external(&self) -> bool {
        matches!(self.backend, Backend::External { .. })
    }

    /// The server's log (kube-testenv only).
    pub fn log_path(&self) -> Option<PathBuf> {
        match &self.backend {
            Backend::Testenv { dir, .. } => Some(dir.path().join("kube-testenv.log")),
            Backend::External { .. } => None,
        }
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A kubeconfig that authenticates as `user` (which must have been passed to
    /// `start_with_users`): a token user on a test server, impersonation on an external
    /// cluster. Bind roles with e.g.
    /// `cluster.kubectl().args(["create", "clusterrolebinding", "x", "--clusterrole=view", "--user=alice"])`.
    pub fn user_kubeconfig(&self, user: &str) -> Result<PathBuf> {
        let groups = self.users.get(user).with_context(|| {
            format!("user {user:?} was not passed to TestCluster::start_with_users")
        })?;
        match &self.backend {
            Backend::Testenv { dir, .. } => {
                let path = dir.path().join(format!("kubeconfig-{user}"));
                if !path.is_file() {
                    bail!("{} is missing", path.display());
                }
                Ok(path)
            }
            Backend::External { scratch } => {
                let path = scratch.path().join(format!("kubeconfig-{user}"));
                write_impersonating_kubeconfig(&self.kubeconfig, &path, user, groups)?;
                Ok(path)
            }
        }
    }

    /// A kube client authenticated as `user` (see [`user_kubeconfig`](Self::user_kubeconfig)).
    pub async fn user_client(&self, user: &str) -> Result<Client> {
        client_from_kubeconfig(&self.user_kubeconfig(user)?).await
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`, ready for `.args(...)`.
    pub fn kubectl(&self) -> Command {
        kubectl_with(&self.kubeconfig)
    }

    /// `kubectl` authenticated as `user`.
    pub fn kubectl_as(&self, user: &str) -> Result<Command> {
        Ok(kubectl_with(&self.user_kubeconfig(user)?))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Backend::Testenv { pid, .. } = &self.backend {
            if let Err(e) = stop_process(*pid) {
                eprintln!("kube test cluster {:?}: {e:#}", self.name);
            }
        }
        // The TempDir fields remove their directories after this.
    }
}

/// A kube client for any kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building kube client")
}

/// A name no other test (in this or a concurrent run) uses, e.g. for a namespace:
/// `<prefix>-<pid>-<n>`; at most 63 characters if `prefix` is at most 40.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ------------------------------------------------------------------ internals

/// Why no cluster could be had, with the tail of start.sh's output.
struct Unavailable {
    reason: String,
    tail: String,
}

impl Unavailable {
    fn new(reason: String) -> Self {
        Unavailable {
            reason,
            tail: String::new(),
        }
    }
}

fn parse_users(users: &[&str]) -> Result<HashMap<String, Vec<String>>> {
    let mut out = HashMap::new();
    for spec in users {
        let (name, groups) = spec.split_once(':').unwrap_or((spec, ""));
        if name.is_empty() {
            bail!("empty user name in {spec:?}");
        }
        let groups = groups
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        if out.insert(name.to_string(), groups).is_some() {
            bail!("user {name:?} given twice");
        }
    }
    Ok(out)
}

fn external_kubeconfig(name: &str) -> Option<PathBuf> {
    let suffix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    [
        format!("{KUBECONFIG_ENV}_{suffix}"),
        KUBECONFIG_ENV.to_string(),
    ]
    .iter()
    .filter_map(std::env::var_os)
    .find(|v| !v.is_empty())
    .map(PathBuf::from)
}

fn tempdir(name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("kube-testenv-{name}-"))
        .tempdir()
        .context("creating a temporary directory")
}

fn start_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kube-testenv/start.sh")
}

/// Runs start.sh, which returns once the server is ready (or has failed).
fn start_testenv(
    name: &str,
    users: HashMap<String, Vec<String>>,
) -> Result<TestCluster, Unavailable> {
    let script = start_script();
    let dir = tempdir(name).map_err(|e| Unavailable::new(format!("{e:#}")))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--dir")
        .arg(dir.path())
        .args(["--name", name])
        // The server exits by itself if this process dies without dropping us.
        .args(["--watch-pid", &std::process::id().to_string()]);
    for (user, groups) in &users {
        let spec = if groups.is_empty() {
            user.clone()
        } else {
            format!("{user}:{}", groups.join(","))
        };
        cmd.args(["--user", &spec]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Unavailable::new(format!("cannot run bash {}: {e}", script.display())))?;

    // Forward stderr (build progress, errors) to the test's captured output, keeping a tail.
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail)
    });
    let mut stdout = String::new();
    let read = child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut stdout);
    let status = child.wait();
    let tail = stderr_reader.join().unwrap_or_default();

    let fail = |reason: String| Unavailable {
        reason,
        tail: tail.join("\n"),
    };
    let status = status.map_err(|e| fail(format!("waiting for start.sh: {e}")))?;
    read.map_err(|e| fail(format!("reading start.sh output: {e}")))?;
    if !status.success() {
        // start.sh's own last message, not the server log lines it prints after it.
        let why = tail
            .iter()
            .rev()
            .find(|l| l.starts_with("kube-testenv/start.sh: ") && !l.ends_with(':'))
            .map(|l| l.trim_start_matches("kube-testenv/start.sh: ").to_string())
            .unwrap_or_else(|| format!("exited with {status}"));
        return Err(fail(format!("tests/kube-testenv/start.sh: {why}")));
    }

    let parsed = parse_start_output(&stdout).map_err(|e| fail(format!("{e:#}")))?;
    let cluster = TestCluster {
        name: name.to_string(),
        kubeconfig: parsed.kubeconfig,
        users,
        backend: Backend::Testenv {
            pid: parsed.pid,
            dir,
        },
    };
    if !cluster.kubeconfig.is_file() {
        // Dropping `cluster` stops the server.
        return Err(fail(format!(
            "start.sh reported ready but {} is missing",
            cluster.kubeconfig.display()
        )));
    }
    Ok(cluster)
}

struct StartOutput {
    kubeconfig: PathBuf,
    pid: u32,
}

/// Parses start.sh's `export KUBECONFIG=...` and `export KUBE_TESTENV_PID=...` lines.
/// Values are printed with bash's `%q`; the temporary paths we pass need no quoting,
/// so a quoted value is rejected rather than unquoted.
fn parse_start_output(stdout: &str) -> Result<StartOutput> {
    let value = |key: &str| -> Result<&str> {
        let prefix = format!("export {key}=");
        let v = stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .with_context(|| format!("no `{prefix}` line in start.sh output: {stdout:?}"))?;
        if v.contains(['\'', '"', '\\', '$']) {
            bail!("unexpected shell quoting in start.sh output: {v:?}");
        }
        Ok(v)
    };
    let kubeconfig = PathBuf::from(value("KUBECONFIG")?);
    let pid = value("KUBE_TESTENV_PID")?
        .parse()
        .context("parsing KUBE_TESTENV_PID")?;
    Ok(StartOutput { kubeconfig, pid })
}

/// Whether `pid` is still running (a zombie counts as stopped: the server was started by
/// start.sh, so it is not our child and whoever adopted it reaps it).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL. Uses kill(1) because this crate forbids
/// `unsafe` (no libc::kill).
fn stop_process(pid: u32) -> Result<()> {
    if !process_running(pid) {
        return Ok(());
    }
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("running kill {sig} {pid}"))
    };
    signal("-TERM")?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !process_running(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-KILL")?;
    Err(anyhow!(
        "kube-testenv (pid {pid}) did not stop within {STOP_TIMEOUT:?}; killed"
    ))
}

fn kubectl_with(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// Copies `admin` to `out`, making its current context's user impersonate `user`.
fn write_impersonating_kubeconfig(
    admin: &Path,
    out: &Path,
    user: &str,
    groups: &[String],
) -> Result<()> {
    let mut kc = Kubeconfig::read_from(admin)
        .with_context(|| format!("reading kubeconfig {}", admin.display()))?;
    let context_name = kc
        .current_context
        .clone()
        .with_context(|| format!("{} has no current-context", admin.display()))?;
    let auth_name = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .with_context(|| format!("context {context_name:?} has no user"))?;
    let auth = kc
        .auth_infos
        .iter_mut()
        .find(|a| a.name == auth_name)
        .and_then(|a| a.auth_info.as_mut())
        .with_context(|| format!("user {auth_name:?} not found in {}", admin.display()))?;
    auth.impersonate = Some(user.to_string());
    auth.impersonate_groups = (!groups.is_empty()).then(|| groups.to_vec());
    // JSON is valid YAML, and both kube-rs and kubectl read it.
    let data = serde_json::to_vec_pretty(&kc).context("serializing kubeconfig")?;
    std::fs::write(out, data).with_context(|| format!("writing {}", out.display()))
}
