//! File source: every `*.yaml`/`*.yml` directly in a directory (subdirectories and dot-files
//! are not read, so `..data` symlink farms of ConfigMap volumes and `policies/invalid/` are
//! skipped), multi-document, parsed with hard limits before anything is trusted.
//!
//! Errors name `file:document`, the object and the field, e.g.
//! `policies/routes.yaml:2: httproute.policy.linkerd.io faces/smiley: spec.rules[0].timeouts.request: "5" is not a duration`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::index::Index;
use crate::model::{
    self, linkerd, smi, HttpRouteGroup, LinkerdHttpRoute, Object, ObjectKey, TrafficSplit,
};

/// Files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// YAML nesting deeper than this is refused (real manifests stay far below).
pub const MAX_DEPTH: usize = 64;
/// Aliases allowed per file: enough for anchors in hand-written YAML, far too few for a bomb.
pub const MAX_ALIASES: usize = 100;

/// Where a document came from: `file:document` (documents count from 1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.document)
    }
}

/// The object an error is about, when it could be identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = self
            .api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("");
        let kind = self.kind.to_ascii_lowercase();
        if group.is_empty() {
            write!(f, "{kind} {}/{}", self.namespace, self.name)
        } else {
            write!(f, "{kind}.{group} {}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub location: Location,
    pub object: Option<Box<ObjectInfo>>,
    /// `field: message`, or just a message for whole-file problems.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {o}: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// An object read from disk, with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub location: Location,
    pub object: Object,
}

/// Everything read from a directory: the index of good objects and every error.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub index: Index,
    /// Route-like objects admitted, with where they came from (for `check`).
    pub routes: Vec<(Location, ObjectKey)>,
    pub errors: Vec<LoadError>,
}

/// Read a directory into an index. Never panics on bad input; every problem is an error entry
/// and the objects that are fine are still indexed.
pub fn load_dir(dir: &Path) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let files = match list_files(dir) {
        Ok(f) => f,
        Err(e) => {
            out.errors.push(LoadError {
                location: Location {
                    file: dir.to_path_buf(),
                    document: 0,
                },
                object: None,
                message: format!("cannot read directory: {e}"),
            });
            return out;
        }
    };
    let mut seen: std::collections::BTreeMap<ObjectKey, Location> = Default::default();
    for file in files {
        for item in read_file(&file) {
            match item {
                Err(e) => out.errors.push(e),
                Ok(loaded) => {
                    let key = loaded.object.key();
                    if let Some(first) = seen.get(&key) {
                        out.errors.push(LoadError {
                            object: Some(Box::new(info_of(&loaded.object))),
                            message: format!("duplicate object: already defined at {first}"),
                            location: loaded.location,
                        });
                        continue;
                    }
                    seen.insert(key.clone(), loaded.location.clone());
                    let is_route = loaded.object.is_route();
                    let info = info_of(&loaded.object);
                    match out.index.apply(loaded.object) {
                        Ok(()) => {
                            if is_route {
                                out.routes.push((loaded.location, key));
                            }
                        }
                        Err(errs) => out.errors.push(LoadError {
                            location: loaded.location,
                            object: Some(Box::new(info)),
                            message: errs
                                .iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                        }),
                    }
                }
            }
        }
    }
    out
}

/// The YAML files of a directory in name order.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `is_file` follows symlinks, as ConfigMap volumes need.
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn whole_file_error(file: &Path, message: String) -> LoadError {
    LoadError {
        location: Location {
            file: file.to_path_buf(),
            document: 0,
        },
        object: None,
        message,
    }
}

/// Read one file into objects (or errors), document by document.
pub fn read_file(file: &Path) -> Vec<Result<Loaded, LoadError>> {
    let size = match std::fs::metadata(file) {
        Ok(m) => m.len(),
        Err(e) => return vec![Err(whole_file_error(file, format!("cannot read: {e}")))],
    };
    if size > MAX_FILE_BYTES {
        return vec![Err(whole_file_error(
            file,
            format!("file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit"),
        ))];
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return vec![Err(whole_file_error(file, format!("cannot read: {e}")))],
    };
    parse_documents(file, &text)
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = MAX_ALIASES;
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = 10_000;
    // Enough for a 4 MiB file of ordinary manifests.
    budget.max_nodes = 2_000_000;
    let mut opts = serde_saphyr::Options::default();
    opts.budget = Some(budget);
    opts.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    opts
}

/// Parse YAML text (one or more documents) into objects.
pub fn parse_documents(file: &Path, text: &str) -> Vec<Result<Loaded, LoadError>> {
    let docs: Vec<Value> = match serde_saphyr::from_multiple_with_options(text, yaml_options()) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            let msg = msg.lines().next().unwrap_or("invalid YAML").to_string();
            return vec![Err(whole_file_error(file, format!("invalid YAML: {msg}")))];
        }
    };
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let location = Location {
            file: file.to_path_buf(),
            document: i + 1,
        };
        if doc.is_null() {
            continue;
        }
        // `kind: List` (what `kubectl get -o yaml` prints) carries objects in `items`.
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            for item in doc
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                out.push(decode(&location, item));
            }
            continue;
        }
        out.push(decode(&location, doc));
    }
    out
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn info_of(obj: &Object) -> ObjectInfo {
    let key = obj.key();
    ObjectInfo {
        api_version: obj.api_version(),
        kind: key.kind.to_string(),
        namespace: key.namespace,
        name: key.name,
    }
}

/// Decode one document into a typed object by `apiVersion` and `kind`.
pub fn decode(location: &Location, doc: Value) -> Result<Loaded, LoadError> {
    let api_version = str_at(&doc, &["apiVersion"])
        .unwrap_or_default()
        .to_string();
    let kind = str_at(&doc, &["kind"]).unwrap_or_default().to_string();
    let info = ObjectInfo {
        api_version: api_version.clone(),
        kind: kind.clone(),
        namespace: str_at(&doc, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_string(),
        name: str_at(&doc, &["metadata", "name"])
            .unwrap_or("<unnamed>")
            .to_string(),
    };
    let fail = |message: String| LoadError {
        location: location.clone(),
        object: Some(Box::new(info.clone())),
        message,
    };
    if !doc.is_object() {
        return Err(LoadError {
            location: location.clone(),
            object: None,
            message: "document is not a mapping".into(),
        });
    }
    if api_version.is_empty() || kind.is_empty() {
        return Err(fail("apiVersion and kind are required".into()));
    }
    fn typed<T: DeserializeOwned>(doc: Value) -> Result<T, String> {
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." {
                inner
            } else {
                format!("{path}: {inner}")
            }
        })
    }
    let object = match (api_version.as_str(), kind.as_str()) {
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
            Object::GatewayHttpRoute(Box::new(
                typed::<model::GatewayHttpRoute>(doc).map_err(fail)?,
            ))
        }
        ("policy.linkerd.io/v1alpha1", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1alpha1(typed::<linkerd::v1alpha1::HttpRoute>(doc).map_err(fail)?),
        )),
        ("policy.linkerd.io/v1beta1", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta1(typed::<linkerd::v1beta1::HttpRoute>(doc).map_err(fail)?),
        )),
        ("policy.linkerd.io/v1beta2", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta2(typed::<linkerd::v1beta2::HttpRoute>(doc).map_err(fail)?),
        )),
        ("policy.linkerd.io/v1beta3", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta3(typed::<linkerd::v1beta3::HttpRoute>(doc).map_err(fail)?),
        )),
        ("split.smi-spec.io/v1alpha1", "TrafficSplit") => Object::TrafficSplit(Box::new(
            TrafficSplit::V1alpha1(typed::<smi::split_v1alpha1::TrafficSplit>(doc).map_err(fail)?),
        )),
        ("split.smi-spec.io/v1alpha2", "TrafficSplit") => Object::TrafficSplit(Box::new(
            TrafficSplit::V1alpha2(typed::<smi::split_v1alpha2::TrafficSplit>(doc).map_err(fail)?),
        )),
        ("split.smi-spec.io/v1alpha3", "TrafficSplit") => Object::TrafficSplit(Box::new(
            TrafficSplit::V1alpha3(typed::<smi::split_v1alpha3::TrafficSplit>(doc).map_err(fail)?),
        )),
        ("split.smi-spec.io/v1alpha4", "TrafficSplit") => Object::TrafficSplit(Box::new(
            TrafficSplit::V1alpha4(typed::<smi::split_v1alpha4::TrafficSplit>(doc).map_err(fail)?),
        )),
        (v, "HTTPRouteGroup") if v.starts_with("specs.smi-spec.io/v1alpha") => {
            let g: smi::group_v1alpha4::HttpRouteGroup = typed(doc).map_err(fail)?;
            Object::HttpRouteGroup(Box::new(HttpRouteGroup {
                api_version: api_version.clone(),
                metadata: g.metadata,
                spec: g.spec,
            }))
        }
        ("v1", "Service") => Object::Service(Box::new(typed(doc).map_err(fail)?)),
        ("v1", "Endpoints") => Object::Endpoints(Box::new(typed(doc).map_err(fail)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Box::new(typed(doc).map_err(fail)?))
        }
        (v, k) => return Err(fail(format!("unsupported kind {k:?} in apiVersion {v:?}"))),
    };
    if object
        .metadata()
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(fail("metadata.name: required".into()));
    }
    Ok(Loaded {
        location: location.clone(),
        object,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Result<Loaded, LoadError>> {
        parse_documents(Path::new("t.yaml"), text)
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            y.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let out = parse(&y);
        assert_eq!(out.len(), 1);
        let e = out[0].as_ref().unwrap_err();
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let y = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        let out = parse(&y);
        assert!(out[0]
            .as_ref()
            .unwrap_err()
            .message
            .starts_with("invalid YAML"));
    }

    #[test]
    fn unknown_kinds_and_missing_names_are_named() {
        let out = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {namespace: a}\n");
        let e0 = out[0].as_ref().unwrap_err().to_string();
        assert!(
            e0.contains("t.yaml:1") && e0.contains("unsupported kind \"ConfigMap\""),
            "{e0}"
        );
        let e1 = out[1].as_ref().unwrap_err().to_string();
        assert!(
            e1.contains("t.yaml:2") && e1.contains("metadata.name: required"),
            "{e1}"
        );
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let y = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\nspec:\n  rules:\n  - matches:\n    - path: {type: Fuzzy, value: /}\n";
        let e = parse(y).remove(0).unwrap_err().to_string();
        assert!(
            e.contains("httproute.gateway.networking.k8s.io ns/r"),
            "{e}"
        );
        assert!(e.contains("spec.rules[0].matches[0].path.type"), "{e}");
        assert!(e.contains("Fuzzy"), "{e}");
    }

    #[test]
    fn lists_are_unpacked() {
        let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n";
        let out = parse(y);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.is_ok()));
    }
}
