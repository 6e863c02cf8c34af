//! The built binary as users and Kubernetes run it: stdout and stderr are pipes, not terminals,
//! and readers like `head` close them early.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn meshroute() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meshroute"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info");
    c
}

/// Start `meshroute run` on the bundled policies (ephemeral ports), with `extra` flags and
/// stderr piped; collect stderr lines until the proxy says it is running, then stop it.
fn run_logs(extra: &[&str]) -> Vec<String> {
    let mut child: Child = meshroute()
        .args([
            "run",
            "--config",
            "policies",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshroute starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let running = line.contains("meshroute running");
        lines.push(line);
        if running {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("meshroute running")),
        "meshroute never said it was running:\n{}",
        lines.join("\n")
    );
    lines
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let lines = run_logs(&[]);
    let all = lines.join("\n");
    assert!(!all.contains("\x1b["), "ANSI escapes in piped logs:\n{all}");
    assert!(all.contains("INFO"), "{all}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lines = run_logs(&["--log-format", "json"]);
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let running = lines
        .iter()
        .find(|l| l.contains("meshroute running"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(running).unwrap();
    assert!(v["fields"]["proxy_addr"].is_string(), "{running}");
}

/// Run `args` with stdout a pipe the reader closes at once (as `| head -0` would, or `head`
/// after its lines): no panic, and the command's own exit code.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = meshroute()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshroute starts");
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), err)
}

#[test]
fn closed_stdout_ends_every_printing_command_quietly() {
    for (args, code) in [
        (&["crds"][..], 0),
        (&["crds", "--gateway-api"][..], 0),
        (&["check", "policies"][..], 0),
        (&["check", "policies", "-o", "json"][..], 0),
        (&["check", "policies/invalid"][..], 1),
        (
            &[
                "explain",
                "policies",
                "--host",
                "color.faces.svc.cluster.local",
            ][..],
            0,
        ),
    ] {
        let (got, err) = with_closed_stdout(args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "meshroute {args:?}: {err}"
        );
        assert_eq!(got, Some(code), "meshroute {args:?}: {err}");
    }
}

#[test]
fn head_reads_the_first_lines_of_crds() {
    let mut child = meshroute()
        .arg("crds")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshroute starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("apiVersion"), "{first}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.is_empty(), "{err}");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn completions_are_printed_for_each_shell_and_bash_parses_its_script() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_meshroute"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("top") && script.contains("explain"),
            "{shell}"
        );
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("meshroute.bash");
            std::fs::write(&f, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&f).output().unwrap();
            assert!(check.status.success(), "{check:?}");
        }
    }
}

#[test]
fn transparent_serving_flags_are_checked_before_anything_starts() {
    for (args, says) in [
        (&["--parent-ports", "30000-20000"][..], "above the last"),
        (&["--parent-ports", "20000"][..], "FIRST-LAST"),
        (&["--advertise", "10.0.0.1,not-an-ip"][..], "not-an-ip"),
        (&["--self-service", "meshroute"][..], "NAMESPACE/NAME"),
    ] {
        let out = meshroute()
            .args(["run", "--kube"])
            .args(args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // They belong to Kubernetes mode.
    let out = meshroute()
        .args(["run", "--no-publish-endpoints"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kube"));
}
