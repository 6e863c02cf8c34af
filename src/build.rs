//! Records the git commit the binary is built from (`meshroute --version`), or `unknown`
//! outside a git checkout (a crate tarball, a Docker context without `.git`).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MESHROUTE_COMMIT={commit}");
    // Rebuild when HEAD moves: a checkout changes HEAD, a commit changes the branch's ref.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for f in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &f]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=src/build.rs");
}
