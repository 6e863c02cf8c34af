//! The bundled examples: `policies/` compiles cleanly, every file in `policies/invalid/`
//! produces exactly the error its first line announces, and `crds/` matches our types.

use std::path::{Path, PathBuf};

use meshroute::cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn bundled_policies_are_all_accepted() {
    let report = cli::check(&root().join("policies"));
    assert!(report.ok, "{}", report.to_text());
    let names: Vec<_> = report
        .entries
        .iter()
        .map(|e| format!("{} {}", e.kind, e.name))
        .collect();
    assert_eq!(
        names,
        [
            "HTTPRoute color-split",
            "TrafficSplit service-b",
            "HTTPRoute smiley-router"
        ]
    );
    for e in &report.entries {
        assert_eq!(e.status.parents.len(), 1, "{}", e.name);
    }
}

#[test]
fn every_invalid_example_fails_with_its_announced_error() {
    let invalid = yaml_files(&root().join("policies/invalid"));
    assert!(
        invalid.len() >= 15,
        "expected one file per mistake, found {}",
        invalid.len()
    );
    for file in invalid {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| {
                panic!("{}: first line must be `# expect: <error>`", file.display())
            });
        // The mistake sits among the valid examples, as it would in a real repository, and
        // is checked the way the README says: `check policies policies/invalid/<file>`.
        let report = cli::check_paths(&[root().join("policies"), file.clone()]);
        let out = report.to_text();
        assert!(
            !report.ok,
            "{}: check passed but should fail:\n{out}",
            file.display()
        );
        assert!(
            out.contains(expect),
            "{}: expected {expect:?} in:\n{out}",
            file.display()
        );
        // The valid examples next to it are unaffected.
        for good in ["smiley-router", "service-b"] {
            let e = report.entries.iter().find(|e| e.name == good).unwrap();
            assert!(
                e.healthy(),
                "{}: {good} was affected:\n{out}",
                file.display()
            );
        }
    }
}

#[test]
fn check_json_has_the_documented_shape() {
    let report = cli::check(&root().join("policies"));
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let first = &v.as_array().unwrap()[0];
    for key in [
        "apiVersion",
        "kind",
        "namespace",
        "name",
        "admission",
        "message",
        "status",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    let parent = &first["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "meshroute.dev/controller");
    assert_eq!(parent["parentRef"]["kind"], "Service");
    assert_eq!(parent["conditions"][0]["type"], "Accepted");
}

#[test]
fn committed_crds_match_the_types() {
    let committed = std::fs::read_to_string(root().join("crds/meshroute-crds.yaml")).unwrap();
    let generated = cli::crds_yaml(false);
    assert!(
        committed == generated,
        "crds/meshroute-crds.yaml is stale: run `cargo run -- crds > crds/meshroute-crds.yaml`"
    );
    // Drop-in compatibility with Linkerd and linkerd-smi: groups, plurals, storage versions.
    for (name, storage, versions) in [
        (
            "httproutes.policy.linkerd.io",
            "v1beta3",
            vec!["v1alpha1", "v1beta1", "v1beta2", "v1beta3"],
        ),
        (
            "trafficsplits.split.smi-spec.io",
            "v1alpha2",
            vec!["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
        ),
        (
            "httproutegroups.specs.smi-spec.io",
            "v1alpha4",
            vec!["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
        ),
    ] {
        let crd = cli::crds()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name}"));
        let mut served: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        served.sort();
        assert_eq!(served, versions, "{name}");
        let stored: Vec<_> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(stored, [storage], "{name}");
    }
}

/// Every prefix of every example, and every example with one byte replaced by a YAML-special
/// character, loads and compiles without panicking (errors are fine, panics are not).
#[test]
fn truncated_and_corrupted_manifests_never_panic() {
    use meshroute::compile::{compile, CompileOptions};
    use meshroute::index::Index;
    use meshroute::sources::file::parse_documents;

    let mut files = yaml_files(&root().join("policies"));
    files.extend(yaml_files(&root().join("policies/invalid")));
    let specials = [
        b':', b'-', b'[', b'{', b'&', b'*', b'"', b'\'', b'\n', b'0', b'#', b'!', b'|',
    ];
    let mut runs = 0;
    for file in files {
        let text = std::fs::read(&file).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..text.len())
            .step_by(3)
            .map(|n| text[..n].to_vec())
            .collect();
        for (i, _) in text.iter().enumerate().step_by(5) {
            let mut v = text.clone();
            v[i] = specials[i % specials.len()];
            variants.push(v);
        }
        for v in variants {
            let s = String::from_utf8_lossy(&v);
            let mut index = Index::new();
            for loaded in parse_documents(&file, &s).into_iter().flatten() {
                let _ = index.apply(loaded.object);
            }
            let _ = compile(&index, &CompileOptions::default(), None);
            runs += 1;
        }
    }
    assert!(runs > 1000, "only {runs} variants");
}

#[test]
fn readme_duration_typo_example_is_what_check_prints() {
    // README: put `request: 5` in smiley-route.yaml; the quoted line is what users see.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let quoted = readme
        .lines()
        .find(|l| l.starts_with("policies/smiley-route.yaml:") && l.contains("is not a duration"))
        .expect("README quotes the duration error");
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in yaml_files(&root().join("policies")) {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.replace("request: 5s", "request: 5");
        std::fs::write(policies.join(f.file_name().unwrap()), text).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshroute"))
        .current_dir(dir.path())
        .args(["check", "policies"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // `check` prints the location and the field; the object is on the line above. The run log
    // line (what the README quotes) carries all three.
    let (location, rest) = quoted
        .split_once(": httproute.policy.linkerd.io faces/smiley-router: ")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{location}: {rest}")),
        "{quoted}\nnot in:\n{stdout}"
    );
    assert!(
        stdout.contains("HTTPRoute faces/smiley-router: REJECTED"),
        "{stdout}"
    );
}
