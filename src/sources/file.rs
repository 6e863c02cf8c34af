//! File source: every `*.yaml`/`*.yml` directly in a directory (subdirectories and dot-files
//! are not read, so `..data` symlink farms of ConfigMap volumes and `policies/invalid/` are
//! skipped), multi-document, parsed with hard limits before anything is trusted.
//!
//! Input is strict, like `kubectl apply`'s default field validation: an unknown or duplicate
//! field, or a value of the wrong type, refuses the object. What the API server itself adds
//! (`status`, `metadata.managedFields`, other controllers' entries, any annotation or label)
//! is accepted.
//!
//! Errors name `file:line:column` of the offending field, the object and the field, e.g.
//! `policies/routes.yaml:9:18: httproute.policy.linkerd.io faces/smiley: spec.rules[0].timeouts.request: "5" is not a duration`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::positions::{alias_expansion, positions, DocPositions, Expansion, Pos};
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
/// Nodes that aliases may add when expanded, per file. Counted before anything is expanded
/// (`positions::alias_expansion`), so a bomb under [`MAX_ALIASES`] is refused after one
/// linear pass instead of after building the values it asks for.
pub const MAX_ALIAS_EXPANSION: u64 = 100_000;
/// Scalar bytes that aliases may add when expanded, per file (counted like
/// [`MAX_ALIAS_EXPANSION`]): a long string replayed by every alias is refused before it is
/// copied. Measured with `meshroute check` on a release build: a 1 MB scalar behind 99 aliases
/// cost 74 MB RSS before the parser's own budget stopped it; refused here it costs 0.01 s and
/// under 15 MB (a 4 MiB file holds at most this much anyway).
pub const MAX_ALIAS_EXPANSION_BYTES: u64 = 4 * 1024 * 1024;

/// Where something came from: a file, the document in it (counting from 1; 0 for the
/// whole file) and, when known, the line and column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub file: PathBuf,
    pub document: usize,
    pub pos: Option<Pos>,
}

impl Location {
    /// The same document, pointing at `pos`.
    pub fn at(&self, pos: Option<Pos>) -> Location {
        Location {
            pos: pos.or(self.pos),
            ..self.clone()
        }
    }
}

impl fmt::Display for Location {
    /// `file:line:column` where the line is known (what editors and CI annotations jump
    /// to), else `file (document N)`, else just the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.pos, self.document) {
            (Some(p), _) => write!(f, "{}:{}:{}", self.file.display(), p.line, p.column),
            (None, 0) => write!(f, "{}", self.file.display()),
            (None, d) => write!(f, "{} (document {d})", self.file.display()),
        }
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
    /// The file was caught being written: reading it again shortly should settle it.
    pub transient: bool,
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
    /// Where the object starts.
    pub location: Location,
    pub object: Object,
    /// Where its fields are, for errors found after decoding (admission). Dropped once the
    /// object is admitted.
    pub positions: Option<Box<DocPositions>>,
}

impl Loaded {
    /// Where `field` (e.g. `spec.rules[0].timeouts.request`) is, or the object's start.
    pub fn location_of(&self, field: &str) -> Location {
        let pos = self.positions.as_ref().and_then(|p| p.find(field));
        self.location.at(pos)
    }
}

/// Everything read from a directory: the index of good objects and every error.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub index: Index,
    /// Route-like objects admitted, with where they came from (for `check`).
    pub routes: Vec<(Location, ObjectKey)>,
    pub errors: Vec<LoadError>,
    /// The objects `index` was built from, in reading order (what file mode sends to the
    /// source seam).
    pub objects: Vec<Object>,
}

/// Read a directory into an index. Never panics on bad input; every problem is an error entry
/// and the objects that are fine are still indexed.
pub fn load_dir(dir: &Path) -> LoadOutcome {
    load_paths(&[dir.to_path_buf()])
}

/// Read several paths into one index, as `check a.yaml b/` does: a directory contributes its
/// YAML files (as [`list_files`] says), a file is read whatever its name. A file named twice
/// (directly and through its directory) is read once.
pub fn load_paths(paths: &[PathBuf]) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let listed = if path.is_dir() {
            list_files(path).map_err(|e| format!("cannot read directory: {e}"))
        } else if path.exists() {
            Ok(vec![path.clone()])
        } else {
            Err("no such file or directory".to_string())
        };
        match listed {
            Ok(mut f) => files.append(&mut f),
            Err(message) => out.errors.push(whole_file_error(path, message)),
        }
    }
    let mut read = std::collections::HashSet::new();
    files.retain(|f| read.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
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
                            transient: false,
                        });
                        continue;
                    }
                    seen.insert(key.clone(), loaded.location.clone());
                    let is_route = loaded.object.is_route();
                    let info = info_of(&loaded.object);
                    let Loaded {
                        location,
                        object,
                        positions,
                    } = loaded;
                    match out.index.apply(object.clone()) {
                        Ok(()) => {
                            out.objects.push(object);
                            if is_route {
                                out.routes.push((location, key));
                            }
                        }
                        Err(errs) => out.errors.push(LoadError {
                            location: location.at(errs
                                .first()
                                .zip(positions.as_ref())
                                .and_then(|(e, p)| p.find(&e.field))),
                            object: Some(Box::new(info)),
                            message: errs
                                .iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                            transient: false,
                        }),
                    }
                }
            }
        }
    }
    out
}

/// The YAML files of a directory in name order. A symlink is listed whatever it points at:
/// a dangling one or a loop must be reported as unreadable (keeping what it held), never
/// read as "the file is gone".
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        let listed = match entry.file_type() {
            Ok(t) if t.is_symlink() => !path.is_dir(),
            Ok(t) => t.is_file(),
            // Cannot even tell: list it, and let reading it say why.
            Err(_) => true,
        };
        if yaml && listed {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// An empty file younger than this is taken for one being written (truncate, then write),
/// not for a file whose objects were all deleted.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

fn whole_file_error(file: &Path, message: String) -> LoadError {
    LoadError {
        location: Location {
            file: file.to_path_buf(),
            document: 0,
            pos: None,
        },
        object: None,
        message,
        transient: false,
    }
}

/// Read one file into objects (or errors), document by document.
///
/// A file caught mid-write is an error, not an empty or shorter file: its size or
/// modification time changed while it was read, or it is empty and was written less than
/// [`SETTLE`] ago. Those errors are [`LoadError::transient`], so the watcher reads again soon.
pub fn read_file(file: &Path) -> Vec<Result<Loaded, LoadError>> {
    read_file_with(file, Locate::Always)
}

/// Whether objects are located (line and column of the document and of every field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locate {
    Always,
    /// Only when something in the file is wrong: a clean file is parsed once instead of twice
    /// (locating is a second pass over the text), and its objects carry document numbers
    /// only. A file with any error is parsed again, located, so every error still names
    /// `file:line:column`.
    OnError,
}

/// [`read_file`], locating objects as `locate` says.
pub fn read_file_with(file: &Path, locate: Locate) -> Vec<Result<Loaded, LoadError>> {
    let stamp = |m: &std::fs::Metadata| (m.len(), m.modified().ok());
    let before = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) => return vec![Err(whole_file_error(file, format!("cannot read: {e}")))],
    };
    let size = before.len();
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
    let after = std::fs::metadata(file).ok();
    let changed = after.as_ref().map(stamp) != Some(stamp(&before));
    let fresh_and_empty = text.trim().is_empty()
        && before
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < SETTLE);
    if changed || fresh_and_empty {
        let mut e = whole_file_error(
            file,
            if changed {
                "file changed while being read; its last good objects stay until it settles".into()
            } else {
                "file is empty and was just written; its last good objects stay until it settles or stays empty".into()
            },
        );
        e.transient = true;
        return vec![Err(e)];
    }
    match locate {
        Locate::Always => parse_documents(file, &text),
        Locate::OnError => {
            parse_unlocated(file, &text).unwrap_or_else(|| parse_documents(file, &text))
        }
    }
}

/// Parse without locating; `None` when anything in the text is wrong (a YAML error, a
/// repeated key, an object that does not decode or is not admitted).
fn parse_unlocated(file: &Path, text: &str) -> Option<Vec<Result<Loaded, LoadError>>> {
    if alias_expansion(text).is_some_and(|e| alias_refusal(e).is_some()) {
        return None;
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options()).ok()?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let location = Location {
            file: file.to_path_buf(),
            document: i + 1,
            pos: None,
        };
        if doc.is_null() {
            continue;
        }
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            return None;
        }
        let loaded = decode_strict(&location, doc, None).ok()?;
        crate::compile::validate::admit(&loaded.object).ok()?;
        out.push(Ok(loaded));
    }
    Some(out)
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

/// Why a file whose aliases would add `e` when expanded is refused, if it is.
fn alias_refusal(e: Expansion) -> Option<String> {
    if e.nodes > MAX_ALIAS_EXPANSION {
        return Some(format!(
            "invalid YAML: aliases would expand to {} nodes, more than the {MAX_ALIAS_EXPANSION} allowed",
            e.nodes
        ));
    }
    if e.bytes > MAX_ALIAS_EXPANSION_BYTES {
        return Some(format!(
            "invalid YAML: aliases would expand to {} bytes of values, more than the {MAX_ALIAS_EXPANSION_BYTES} allowed",
            e.bytes
        ));
    }
    None
}

/// Parse YAML text (one or more documents) into objects, strictly (see the module doc).
pub fn parse_documents(file: &Path, text: &str) -> Vec<Result<Loaded, LoadError>> {
    if let Some(why) = alias_expansion(text).and_then(alias_refusal) {
        return vec![Err(whole_file_error(file, why))];
    }
    let parsed = serde_saphyr::from_multiple_with_options(text, yaml_options()).or_else(|e| {
        // A repeated key refuses only its own object, naming the field: read the file
        // again keeping first values, and let the position pass find the repeats.
        if !is_duplicate_key(&e) {
            return Err(e);
        }
        let mut opts = yaml_options();
        opts.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::FirstWins;
        let found = positions(text).is_some_and(|p| p.iter().any(|d| !d.duplicates.is_empty()));
        match serde_saphyr::from_multiple_with_options(text, opts) {
            Ok(docs) if found => Ok(docs),
            _ => Err(e),
        }
    });
    let docs: Vec<Value> = match parsed {
        Ok(d) => d,
        Err(e) => {
            let pos = e.location().map(|l| Pos {
                line: u32::try_from(l.line()).unwrap_or(u32::MAX),
                column: u32::try_from(l.column()).unwrap_or(u32::MAX),
            });
            let msg = e.to_string();
            let msg = msg.lines().next().unwrap_or("invalid YAML");
            // The position is already in front of the message.
            let msg = match (msg.strip_prefix("error: line "), pos) {
                (Some(rest), Some(_)) => rest
                    .split_once(": ")
                    .map(|(_, m)| m)
                    .unwrap_or(rest)
                    .to_string(),
                _ => msg.to_string(),
            };
            let mut err = whole_file_error(file, format!("invalid YAML: {msg}"));
            err.location.pos = pos.filter(|p| p.line > 0);
            return vec![Err(err)];
        }
    };
    // Positions come from a second, event-level pass over text the loader has accepted. If
    // the two disagree on the documents (they should not), errors fall back to document
    // numbers rather than pointing at the wrong lines.
    let mut spans = positions(text).unwrap_or_default();
    if spans.len() != docs.len() {
        spans = Vec::new();
    }
    let mut spans = spans.into_iter();
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let doc_pos = spans.next();
        let location = Location {
            file: file.to_path_buf(),
            document: i + 1,
            pos: doc_pos.as_ref().and_then(|p| p.start),
        };
        if doc.is_null() {
            continue;
        }
        // `kind: List` (what `kubectl get -o yaml` prints) carries objects in `items`.
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let items = match doc {
                Value::Object(mut m) => m.remove("items"),
                _ => None,
            };
            if let Some(Value::Array(items)) = items {
                for (j, item) in items.into_iter().enumerate() {
                    let item_pos = doc_pos.as_ref().map(|p| p.under(&format!("items[{j}]")));
                    let loc = location.at(item_pos.as_ref().and_then(|p| p.start));
                    out.push(decode_strict(&loc, item, item_pos));
                }
            }
            continue;
        }
        out.push(decode_strict(&location, doc, doc_pos));
    }
    out
}

fn is_duplicate_key(mut e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error as E;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = e {
        e = error;
    }
    matches!(e, E::DuplicateMappingKey { .. })
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

pub(crate) fn info_of(obj: &Object) -> ObjectInfo {
    let key = obj.key();
    ObjectInfo {
        api_version: obj.api_version(),
        kind: key.kind.to_string(),
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
    }
}

/// Decode one object as the API server returned it: fields meshroute does not know are
/// left alone (the server has validated the object against its own schema; see the module
/// doc of `sources::kube`).
pub fn decode(location: &Location, doc: Value) -> Result<Loaded, LoadError> {
    decode_with(location, doc, None, Strictness::Lenient)
}

/// Decode one object as a user wrote it: unknown fields are refused, as `kubectl apply`
/// refuses them, and errors point at `positions` when given.
pub fn decode_strict(
    location: &Location,
    doc: Value,
    positions: Option<DocPositions>,
) -> Result<Loaded, LoadError> {
    let duplicate = positions
        .as_ref()
        .and_then(|p| p.duplicates.first().cloned());
    let loaded = decode_with(location, doc, positions, Strictness::Strict);
    match (duplicate, loaded) {
        (Some((path, pos)), loaded) => {
            let object = match &loaded {
                Ok(l) => Some(Box::new(info_of(&l.object))),
                Err(e) => e.object.clone(),
            };
            let name = path.rsplit('.').next().unwrap_or(&path);
            Err(LoadError {
                location: location.at(Some(pos)),
                object,
                message: format!("{path}: duplicate field {name:?}"),
                transient: false,
            })
        }
        (None, loaded) => loaded,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    Strict,
    Lenient,
}

/// A field path in the spelling errors use: `spec.rules[0].backendRefs`.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let up = ignored_path(parent);
            if up.is_empty() {
                key.clone()
            } else {
                format!("{up}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// What the API server adds to objects (or other controllers write), which a manifest
/// exported with `kubectl get -o yaml` carries: accepted, never interpreted.
fn server_owned(path: &str) -> bool {
    // `apiVersion` and `kind` are read before decoding; some typed decoders skip them.
    matches!(path, "apiVersion" | "kind" | "status")
        || path.starts_with("status.")
        || path.starts_with("status[")
}

/// Fields of the Gateway API experimental channel that the standard-channel HTTPRoute
/// meshroute serves does not have: named as such rather than as typos.
fn experimental_gateway_field(path: &str) -> Option<&'static str> {
    let last = path.rsplit('.').next()?;
    let in_rule = path.starts_with("spec.rules[");
    match last {
        "sessionPersistence" if in_rule => Some("sessionPersistence"),
        _ => None,
    }
}

/// Take each rule's GEP-1731 `retry` out of a gateway.networking.k8s.io HTTPRoute document
/// and decode it with the experimental channel's type (the standard type the rest of the
/// route decodes into has no such field). Errors keep their full field path.
fn take_retries(
    doc: &mut Value,
    strictness: Strictness,
) -> Result<Vec<Option<model::GatewayRetry>>, Fault> {
    #[derive(serde::Deserialize)]
    struct Doc {
        spec: Spec,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    struct Rule {
        retry: Option<model::GatewayRetry>,
    }
    let Some(rules) = doc.pointer_mut("/spec/rules").and_then(Value::as_array_mut) else {
        return Ok(Vec::new());
    };
    let mut taken = Vec::with_capacity(rules.len());
    let mut any = false;
    for rule in rules.iter_mut() {
        let retry = rule.as_object_mut().and_then(|r| r.remove("retry"));
        any |= retry.is_some();
        let mut slot = serde_json::Map::new();
        if let Some(r) = retry {
            slot.insert("retry".into(), r);
        }
        taken.push(Value::Object(slot));
    }
    if !any {
        return Ok(Vec::new());
    }
    let shaped = serde_json::json!({"spec": {"rules": taken}});
    let decoded: Doc = typed(shaped, strictness)?;
    Ok(decoded.spec.rules.into_iter().map(|r| r.retry).collect())
}

/// A decode failure: the path that locates it, and the message. `message` names its own
/// fields when `named` (several unknown fields), otherwise it is said of `path`.
struct Fault {
    path: String,
    message: String,
    named: bool,
}

impl Fault {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            path: path.into(),
            message: message.into(),
            named: false,
        }
    }

    fn text(self) -> String {
        if self.named || self.path.is_empty() {
            self.message
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

/// A typed decode that knows the path of a type error and every field serde skipped.
fn typed<T: DeserializeOwned>(doc: Value, strictness: Strictness) -> Result<T, Fault> {
    let mut track = serde_path_to_error::Track::new();
    let mut unknown: Vec<String> = Vec::new();
    let de = serde_path_to_error::Deserializer::new(doc, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(de, |p| {
        let path = ignored_path(&p);
        if !server_owned(&path) {
            unknown.push(path);
        }
    });
    match result {
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err(Fault::at(path, e.to_string()))
        }
        Ok(_) if strictness == Strictness::Strict && !unknown.is_empty() => {
            let first = unknown[0].clone();
            let msgs: Vec<String> = unknown
                .iter()
                .map(|p| {
                    let name = p.rsplit(['.', '[']).next().unwrap_or(p);
                    match experimental_gateway_field(p) {
                        Some(f) => format!(
                            "{p}: field {f:?} is in Gateway API's experimental channel; meshroute serves the standard channel's HTTPRoute and would ignore it"
                        ),
                        None => format!("{p}: unknown field {name:?}"),
                    }
                })
                .collect();
            // The first path locates the error; the message lists them all.
            Err(Fault {
                path: first,
                message: msgs.join("; "),
                named: true,
            })
        }
        Ok(v) => Ok(v),
    }
}

/// A number where a duration string belongs gets the duration message the README promises,
/// not serde's "invalid type: integer".
fn check_duration_types(doc: &Value) -> Result<(), Fault> {
    let Some(rules) = doc.pointer("/spec/rules").and_then(Value::as_array) else {
        return Ok(());
    };
    for (i, rule) in rules.iter().enumerate() {
        for field in ["request", "backendRequest"] {
            let Some(v) = rule.get("timeouts").and_then(|t| t.get(field)) else {
                continue;
            };
            if v.is_number() || v.is_boolean() {
                let path = format!("spec.rules[{i}].timeouts.{field}");
                let msg = crate::compile::validate::parse_duration(&v.to_string())
                    .err()
                    .unwrap_or_else(|| format!("{v} is not a duration string"));
                return Err(Fault::at(path, msg));
            }
        }
    }
    Ok(())
}

fn decode_with(
    location: &Location,
    doc: Value,
    positions: Option<DocPositions>,
    strictness: Strictness,
) -> Result<Loaded, LoadError> {
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
    let pos_of = |path: &str| positions.as_ref().and_then(|p| p.find(path));
    let fail = |f: Fault| LoadError {
        location: location.at(pos_of(&f.path)),
        object: Some(Box::new(info.clone())),
        message: f.text(),
        transient: false,
    };
    if !doc.is_object() {
        return Err(LoadError {
            location: location.clone(),
            object: None,
            message: "document is not a mapping".into(),
            transient: false,
        });
    }
    if api_version.is_empty() || kind.is_empty() {
        return Err(fail(Fault::at("", "apiVersion and kind are required")));
    }
    check_duration_types(&doc).map_err(fail)?;
    let st = strictness;
    let object = match (api_version.as_str(), kind.as_str()) {
        ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
            let mut doc = doc;
            let retries = take_retries(&mut doc, st).map_err(fail)?;
            Object::GatewayHttpRoute(Box::new(model::GatewayHttpRoute {
                route: typed(doc, st).map_err(fail)?,
                retries,
            }))
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => Object::GatewayGrpcRoute(Box::new(
            typed::<model::GatewayGrpcRoute>(doc, st).map_err(fail)?,
        )),
        ("policy.linkerd.io/v1alpha1", "HTTPRoute") => {
            Object::LinkerdHttpRoute(Box::new(LinkerdHttpRoute::V1alpha1(
                typed::<linkerd::v1alpha1::HttpRoute>(doc, st).map_err(fail)?,
            )))
        }
        ("policy.linkerd.io/v1beta1", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta1(typed::<linkerd::v1beta1::HttpRoute>(doc, st).map_err(fail)?),
        )),
        ("policy.linkerd.io/v1beta2", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta2(typed::<linkerd::v1beta2::HttpRoute>(doc, st).map_err(fail)?),
        )),
        ("policy.linkerd.io/v1beta3", "HTTPRoute") => Object::LinkerdHttpRoute(Box::new(
            LinkerdHttpRoute::V1beta3(typed::<linkerd::v1beta3::HttpRoute>(doc, st).map_err(fail)?),
        )),
        ("split.smi-spec.io/v1alpha1", "TrafficSplit") => {
            Object::TrafficSplit(Box::new(TrafficSplit::V1alpha1(
                typed::<smi::split_v1alpha1::TrafficSplit>(doc, st).map_err(fail)?,
            )))
        }
        ("split.smi-spec.io/v1alpha2", "TrafficSplit") => {
            Object::TrafficSplit(Box::new(TrafficSplit::V1alpha2(
                typed::<smi::split_v1alpha2::TrafficSplit>(doc, st).map_err(fail)?,
            )))
        }
        ("split.smi-spec.io/v1alpha3", "TrafficSplit") => {
            Object::TrafficSplit(Box::new(TrafficSplit::V1alpha3(
                typed::<smi::split_v1alpha3::TrafficSplit>(doc, st).map_err(fail)?,
            )))
        }
        ("split.smi-spec.io/v1alpha4", "TrafficSplit") => {
            Object::TrafficSplit(Box::new(TrafficSplit::V1alpha4(
                typed::<smi::split_v1alpha4::TrafficSplit>(doc, st).map_err(fail)?,
            )))
        }
        (v, "HTTPRouteGroup") if v.starts_with("specs.smi-spec.io/v1alpha") => {
            let g: smi::group_v1alpha4::HttpRouteGroup = typed(doc, st).map_err(fail)?;
            Object::HttpRouteGroup(Box::new(HttpRouteGroup {
                api_version: api_version.clone(),
                metadata: g.metadata,
                spec: g.spec,
            }))
        }
        ("gateway.networking.x-k8s.io/v1alpha1", "XBackendTrafficPolicy") => {
            let p: model::BackendTrafficPolicy = typed(doc, st).map_err(fail)?;
            if let Err(errors) = crate::compile::retry::admit_budget(&p) {
                let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                return Err(fail(Fault {
                    path: errors[0].field.clone(),
                    message: text.join("; "),
                    named: true,
                }));
            }
            Object::BackendTrafficPolicy(Box::new(p))
        }
        ("v1", "Service") => Object::Service(Box::new(typed(doc, st).map_err(fail)?)),
        ("v1", "Endpoints") => Object::Endpoints(Box::new(typed(doc, st).map_err(fail)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(Box::new(typed(doc, st).map_err(fail)?))
        }
        (v, k) => {
            return Err(fail(Fault::at(
                "",
                format!("unsupported kind {k:?} in apiVersion {v:?}"),
            )))
        }
    };
    if object
        .metadata()
        .name
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return Err(fail(Fault::at("metadata.name", "required")));
    }
    Ok(Loaded {
        location: location.clone(),
        object,
        positions: positions.map(Box::new),
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
    fn alias_bombs_under_the_alias_cap_are_refused_before_expanding() {
        // 9 levels x 10 aliases = 90 aliases (under MAX_ALIASES) for 10^10 nodes.
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            let refs = vec![format!("*{prev}"); 10].join(", ");
            y.push_str(&format!("b{i}: &b{i} [{refs}]\n"));
        }
        let out = parse(&y);
        let e = out[0].as_ref().unwrap_err();
        assert!(e.message.contains("aliases would expand to"), "{e}");
        // Few aliases, one long value: refused for its bytes.
        let long = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(100_000),
            ["*a"; 50].join(", ")
        );
        let out = parse(&long);
        let e = out[0].as_ref().unwrap_err();
        assert!(e.message.contains("5000000 bytes of values"), "{e}");
        // Ordinary anchors are fine.
        let ok = "apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: &l {app: a}}\nspec: {selector: *l}\n";
        assert!(parse(ok)[0].is_ok(), "{:?}", parse(ok));
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
            e0.contains("t.yaml:1:1:") && e0.contains("unsupported kind \"ConfigMap\""),
            "{e0}"
        );
        let e1 = out[1].as_ref().unwrap_err().to_string();
        assert!(
            e1.contains("t.yaml:7:1:") && e1.contains("metadata.name: required"),
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

    const ROUTE_HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  namespace: ns\n";

    #[test]
    fn unknown_fields_are_refused_at_their_line_and_column() {
        let y = format!("{ROUTE_HEAD}spec:\n  parentRefs: [{{group: \"\", kind: Service, name: web}}]\n  rules:\n  - backendRefs: [{{name: a, port: 80, weigth: 0}}]\n  - rule: {{}}\n");
        let e = parse(&y).remove(0).unwrap_err();
        assert_eq!(
            e.location.pos,
            Some(Pos {
                line: 9,
                column: 39
            }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "t.yaml:9:39: httproute.gateway.networking.k8s.io ns/r: spec.rules[0].backendRefs[0].weigth: unknown field \"weigth\"; spec.rules[1].rule: unknown field \"rule\""
        );
    }

    #[test]
    fn what_the_api_server_adds_is_accepted() {
        let y = format!("{ROUTE_HEAD}  resourceVersion: \"7\"\n  managedFields:\n  - manager: kubectl\n    operation: Apply\n    fieldsType: FieldsV1\n    fieldsV1: {{f:spec: {{}}}}\n  annotations: {{whatever.example/x: \"y\"}}\n  labels: {{any: thing}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web}}]\nstatus:\n  parents:\n  - parentRef: {{name: web}}\n    controllerName: linkerd.io/policy-controller\n    conditions: []\n    someFutureField: 1\n");
        let out = parse(&y);
        assert!(out[0].is_ok(), "{:?}", out[0]);
    }

    #[test]
    fn experimental_gateway_fields_are_named_as_such() {
        let y =
            format!("{ROUTE_HEAD}spec:\n  rules:\n  - sessionPersistence: {{sessionName: s}}\n");
        let e = parse(&y).remove(0).unwrap_err().to_string();
        assert!(
            e.contains("t.yaml:8:5:")
                && e.contains(
                    "spec.rules[0].sessionPersistence: field \"sessionPersistence\" is in Gateway API's experimental channel"
                ),
            "{e}"
        );
    }

    #[test]
    fn gateway_retry_is_read_with_the_rule_it_belongs_to() {
        let y = format!(
            "{ROUTE_HEAD}spec:\n  rules:\n  - {{}}\n  - retry: {{attempts: 2, codes: [503]}}\n"
        );
        let loaded = parse(&y).remove(0).unwrap();
        let Object::GatewayHttpRoute(r) = &loaded.object else {
            panic!("{:?}", loaded.object);
        };
        assert!(r.retry(0).is_none());
        assert_eq!(r.retry(1).and_then(|r| r.attempts), Some(2));
        // Serialized as written, retry included (what kube mode and `to_value` see).
        let v = serde_json::to_value(&**r).unwrap();
        assert_eq!(v["spec"]["rules"][1]["retry"]["codes"][0], 503);
        assert!(v["spec"]["rules"][0].get("retry").is_none());

        let y = format!("{ROUTE_HEAD}spec:\n  rules:\n  - retry: {{attempts: two}}\n");
        let e = parse(&y).remove(0).unwrap_err().to_string();
        assert!(
            e.contains("t.yaml:8:") && e.contains("spec.rules[0].retry.attempts"),
            "{e}"
        );
    }

    #[test]
    fn objects_from_the_api_server_keep_fields_meshroute_does_not_know() {
        let doc: Value = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"rules": [{"retry": {"attempts": 2}, "futureField": true}]}
        });
        let loc = Location {
            file: "kube".into(),
            document: 0,
            pos: None,
        };
        assert!(decode(&loc, doc).is_ok());
    }

    #[test]
    fn a_repeated_field_refuses_only_its_object() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  type: ClusterIP\n  type: NodePort\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
        let out = parse(y);
        assert_eq!(out.len(), 2);
        let e = out[0].as_ref().unwrap_err().to_string();
        assert_eq!(
            e,
            "t.yaml:6:3: service default/a: spec.type: duplicate field \"type\""
        );
        assert!(out[1].is_ok());
    }

    #[test]
    fn list_items_are_located_and_strict() {
        let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec: {portz: []}\n";
        let out = parse(y);
        assert!(out[0].is_ok());
        let e = out[1].as_ref().unwrap_err().to_string();
        assert_eq!(
            e,
            "t.yaml:10:10: service default/b: spec.portz: unknown field \"portz\""
        );
    }

    #[test]
    fn lists_are_unpacked() {
        let y = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n";
        let out = parse(y);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.is_ok()));
    }
}
