//! File mode, incrementally: what each file of the config directory last contributed, so a
//! change re-reads only the files it touched and sends the source seam only their objects
//! (a [`SourceEvent::Patch`]), never the whole directory again.
//!
//! - **Which files**: the paths the watcher saw ([`Scan::Paths`]), or, when it cannot tell
//!   (an event on the directory itself, a `..data` symlink swap, a resync, a retry after a
//!   file caught mid-write), every file whose identity, size or modification time changed
//!   ([`Scan::Stamps`]): one `stat` per file, no parsing.
//! - **The reload rule holds**: once a table is live, a change that leaves any file of the
//!   directory with errors is refused as a whole (the live table keeps serving) and the files
//!   it touched are read again with the next change; at startup the valid objects are
//!   published and the errors reported with them.
//! - **Same answers as a whole read**: a directory with symlinked files (ConfigMap volumes) or
//!   objects defined twice is read whole on every change ([`super::file::load_paths`]'s rules:
//!   first definition wins, a file reached twice is read once), and so is a change that
//!   defines an object another file defines.
//! - **Nothing is kept but keys**: objects go to the seam as soon as they are read (at startup
//!   file by file, in parallel chunks), so raw YAML and decoded documents never pile up. A
//!   whole read drops its map of first definitions before it builds `owner`, and finds what
//!   went by borrowing the keys it holds (at start-up it does not look): start-up's peak no
//!   longer holds three copies of every key (part of a 461 → 437 MiB cut at 100k routes, with
//!   the index's boxed values; see [`crate::index`]).
//! - **Start-up keeps little per key**: the map of first definitions holds a file's place in
//!   the listing and the document's position, not a copy of the file's path per object (part
//!   of the 438 → 401 MiB cut at 100k routes that [`crate::table`]'s shared matches made);
//!   `owner` is a B-tree built at once from the sorted keys after a whole read (full nodes)
//!   instead of a hash map (whose table, at 120k keys, doubles to 262,144 slots of 80 bytes);
//!   and start-up reads `CHUNK` = 64 files per parallel round instead of 256, so fewer
//!   decoded objects are alive at once in the parse threads' allocator arenas. With the
//!   index's and the seam's packed B-trees ([`crate::index::Index::compact`]) these took the
//!   peak RSS from 400.6 to 382.6 MiB at 100k routes (a second run: 370.3; 4.2 → 3.9 KiB per
//!   route), 133.1 → 124.1 MiB at 30k and 57.1 → 52.9 MiB at 10k
//!   (`benches/workload/measure.py`; measured together, not one by one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compile::validate::admit;
use crate::model::{Object, ObjectKey};
use crate::sources::file::{list_files, read_file_with, LoadError, Loaded, Locate};

/// How to find the files a round reads.
#[derive(Debug, Clone)]
pub enum Scan {
    /// These paths changed (as the watcher spelled them).
    Paths(Vec<PathBuf>),
    /// Every file whose stamp changed, appeared or went.
    Stamps,
}

/// What a file looked like when read: device, inode, size, modification time.
type Stamp = (u64, u64, u64, Option<std::time::SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()))
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    /// Keys of the objects from this file that the seam holds.
    keys: Vec<ObjectKey>,
    errors: Vec<LoadError>,
}

/// What a round asks the seam to do.
#[derive(Debug)]
pub enum Round {
    /// Apply these objects and delete these keys; `problems` are every error of the
    /// directory (reported with the next table).
    Patch {
        apply: Vec<Object>,
        delete: Vec<ObjectKey>,
        problems: Vec<String>,
    },
    /// The directory has errors and a table is live: nothing changes; report these.
    Refused(Vec<String>),
}

/// The outcome of one round: what to send, and whether a file was caught mid-write (read
/// again soon).
#[derive(Debug)]
pub struct RoundOutcome {
    pub round: Round,
    pub settling: bool,
    /// Files read (for logs and tests).
    pub read: usize,
}

/// Files read per parallel chunk at startup: bounds the decoded objects alive at once.
const CHUNK: usize = 64;

/// What each file of a directory contributed.
#[derive(Debug)]
pub struct DirState {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The file whose object the seam holds, per key.
    /// A B-tree built at once from sorted keys after a whole read (full nodes: about half the
    /// bytes of a hash map of 100k keys, whose table doubles to twice the keys' size).
    owner: BTreeMap<ObjectKey, Arc<Path>>,
    /// Read the whole directory on every change (symlinked files, duplicate objects).
    whole: bool,
    /// Files touched by a refused or unsettled round: read again next round.
    pending: BTreeSet<PathBuf>,
    /// A table is live (errors now refuse a change instead of being reported with it).
    pub listed: bool,
}

/// How a whole read locates objects: clean files are parsed once; a duplicate found that way
/// (whose first definition would lack its line) has the directory read again, located.
const FAST: Locate = Locate::OnError;

impl DirState {
    pub fn new(dir: PathBuf) -> Self {
        DirState {
            dir,
            files: BTreeMap::new(),
            owner: BTreeMap::new(),
            whole: true,
            pending: BTreeSet::new(),
            listed: false,
        }
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file `p` (an event path) names directly in the directory, spelled as the directory
    /// listing spells it; `Err(())` when the event means something a path check cannot
    /// settle (the directory itself, a `..data`-style swap), `Ok(None)` for files never read
    /// (dot-files such as editors' temporaries, other extensions).
    fn in_dir(&self, p: &Path) -> Result<Option<PathBuf>, ()> {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            return Err(());
        };
        let parent = p.parent().unwrap_or(Path::new(""));
        let same_dir = parent == self.dir
            || std::fs::canonicalize(parent).ok() == std::fs::canonicalize(&self.dir).ok();
        if !same_dir {
            return Err(());
        }
        if name.starts_with("..") {
            return Err(());
        }
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            return Ok(None);
        }
        Ok(Some(self.dir.join(name)))
    }

    /// Files whose stamp differs from the one read, and files that appeared or went.
    fn changed_stamps(&self, listed: &[PathBuf]) -> BTreeSet<PathBuf> {
        let mut out: BTreeSet<PathBuf> = listed
            .iter()
            .filter(|p| self.files.get(*p).is_none_or(|f| f.stamp != stamp(p)))
            .cloned()
            .collect();
        let now: BTreeSet<&PathBuf> = listed.iter().collect();
        out.extend(self.files.keys().filter(|p| !now.contains(p)).cloned());
        out
    }

    /// One round: read what `scan` names (plus files pending from earlier rounds) and say what
    /// the seam must do. At startup (`!listed`), objects are handed to `early` as each chunk
    /// of files is read, and the returned patch holds only the rest.
    pub fn round(&mut self, scan: Scan, early: &mut dyn FnMut(Vec<Object>)) -> RoundOutcome {
        if self.whole || !self.listed {
            return self.read_whole(list_files(&self.dir), FAST, early);
        }
        let mut touched: BTreeSet<PathBuf> = std::mem::take(&mut self.pending);
        let mut stamps = matches!(scan, Scan::Stamps);
        if let Scan::Paths(paths) = scan {
            for p in paths {
                match self.in_dir(&p) {
                    Ok(Some(p)) => {
                        touched.insert(p);
                    }
                    Ok(None) => {}
                    Err(()) => stamps = true,
                }
            }
        }
        if stamps {
            match list_files(&self.dir) {
                Ok(listed) => touched.extend(self.changed_stamps(&listed)),
                Err(e) => return self.read_whole(Err(e), FAST, early),
            }
        }
        if touched.iter().any(|p| is_symlink(p)) {
            return self.read_whole(list_files(&self.dir), FAST, early);
        }
        // Read every touched file that is still there; the others are gone.
        let to_read: Vec<PathBuf> = touched.iter().filter(|p| listable(p)).cloned().collect();
        let read = read_parallel(&to_read, Locate::Always);
        let mut fresh: BTreeMap<PathBuf, (Vec<Object>, FileState)> = BTreeMap::new();
        let mut keys_here: HashMap<ObjectKey, &Path> = HashMap::new();
        for (p, items) in to_read.iter().zip(read) {
            let mut state = FileState {
                stamp: stamp(p),
                ..FileState::default()
            };
            let mut objects = Vec::new();
            for item in items {
                match item {
                    Err(e) => state.errors.push(e),
                    Ok(loaded) => {
                        let key = loaded.object.key();
                        // Another file defines it too (or this one, twice): the whole
                        // directory decides which definition wins.
                        let elsewhere = self.owner.get(&key).is_some_and(|o| **o != **p);
                        if elsewhere || keys_here.insert(key.clone(), p).is_some() {
                            self.pending.extend(touched);
                            return self.read_whole(list_files(&self.dir), FAST, early);
                        }
                        match admitted(loaded) {
                            Ok(object) => {
                                state.keys.push(key);
                                objects.push(object);
                            }
                            Err(e) => state.errors.push(e),
                        }
                    }
                }
            }
            fresh.insert(p.clone(), (objects, state));
        }
        let settling = fresh
            .values()
            .any(|(_, s)| s.errors.iter().any(|e| e.transient));
        // Every error of the directory after this change.
        let errors: Vec<String> = self
            .files
            .iter()
            .filter(|(p, _)| !touched.contains(*p))
            .flat_map(|(_, f)| f.errors.iter())
            .chain(fresh.values().flat_map(|(_, s)| s.errors.iter()))
            .map(|e| e.to_string())
            .collect();
        let n = to_read.len();
        if !errors.is_empty() {
            // The files touched are read again with the next change or retry; until then
            // their old objects serve.
            for (p, (_, s)) in fresh {
                if let Some(f) = self.files.get_mut(&p) {
                    f.errors = s.errors;
                    f.stamp = None;
                } else {
                    self.files.insert(
                        p,
                        FileState {
                            errors: s.errors,
                            ..FileState::default()
                        },
                    );
                }
            }
            self.pending = touched;
            return RoundOutcome {
                round: Round::Refused(errors),
                settling,
                read: n,
            };
        }
        let mut apply = Vec::new();
        let mut delete = Vec::new();
        for p in &touched {
            let old = self.files.remove(p).unwrap_or_default();
            let (objects, state) = fresh.remove(p).unwrap_or_default();
            let new_keys: BTreeSet<&ObjectKey> = state.keys.iter().collect();
            for k in old.keys.iter().filter(|k| !new_keys.contains(k)) {
                self.owner.remove(k);
                delete.push(k.clone());
            }
            let shared: Arc<Path> = Arc::from(p.as_path());
            for k in &state.keys {
                self.owner.insert(k.clone(), shared.clone());
            }
            apply.extend(objects);
            if to_read.contains(p) {
                self.files.insert(p.clone(), state);
            }
        }
        RoundOutcome {
            round: Round::Patch {
                apply,
                delete,
                problems: Vec::new(),
            },
            settling,
            read: n,
        }
    }

    /// Read every file, as [`super::file::load_paths`] does, and patch the seam from what it
    /// held to what the directory holds now.
    fn read_whole(
        &mut self,
        listing: std::io::Result<Vec<PathBuf>>,
        locate: Locate,
        early: &mut dyn FnMut(Vec<Object>),
    ) -> RoundOutcome {
        let again = listing.as_ref().ok().cloned();
        let mut errors: Vec<LoadError> = Vec::new();
        let mut files = match listing {
            Ok(f) => f,
            Err(e) => {
                errors.push(LoadError {
                    location: crate::sources::file::Location {
                        file: self.dir.clone(),
                        document: 0,
                        pos: None,
                    },
                    object: None,
                    message: format!("cannot read directory: {e}"),
                    transient: false,
                });
                Vec::new()
            }
        };
        // A file reached twice (a symlink to a sibling) is read once.
        let mut canonical = std::collections::HashSet::new();
        files.retain(|f| canonical.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
        let stream = !self.listed;
        // First definitions: which file (by its place in `files`) and where in it; the
        // location is spelled out only for a duplicate.
        let mut seen: HashMap<ObjectKey, (usize, usize, Option<crate::sources::positions::Pos>)> =
            HashMap::new();
        let mut fresh: BTreeMap<PathBuf, FileState> = BTreeMap::new();
        let mut apply: Vec<Object> = Vec::new();
        let mut duplicates = false;
        let mut symlinks = false;
        for (c, chunk) in files.chunks(CHUNK).enumerate() {
            let read = read_parallel(chunk, locate);
            for (i, (p, items)) in chunk.iter().zip(read).enumerate() {
                let file_index = c * CHUNK + i;
                symlinks |= is_symlink(p);
                let mut state = FileState {
                    stamp: stamp(p),
                    ..FileState::default()
                };
                for item in items {
                    match item {
                        Err(e) => state.errors.push(e),
                        Ok(loaded) => {
                            let key = loaded.object.key();
                            if let Some(&(f, document, pos)) = seen.get(&key) {
                                let first = crate::sources::file::Location {
                                    file: files[f].clone(),
                                    document,
                                    pos,
                                };
                                duplicates = true;
                                state.errors.push(LoadError {
                                    object: Some(Box::new(crate::sources::file::info_of(
                                        &loaded.object,
                                    ))),
                                    message: format!(
                                        "duplicate object: already defined at {first}"
                                    ),
                                    location: loaded.location,
                                    transient: false,
                                });
                                continue;
                            }
                            seen.insert(
                                key.clone(),
                                (file_index, loaded.location.document, loaded.location.pos),
                            );
                            match admitted(loaded) {
                                Ok(object) => {
                                    state.keys.push(key);
                                    apply.push(object);
                                }
                                Err(e) => state.errors.push(e),
                            }
                        }
                    }
                }
                state.keys.shrink_to_fit();
                fresh.insert(p.clone(), state);
            }
            if stream {
                early(std::mem::take(&mut apply));
            }
        }
        // Start-up's peak is here: give back the first definitions before building `owner`.
        drop(seen);
        if duplicates && locate != Locate::Always {
            // "already defined at" must name the first definition's line.
            if let Some(listing) = again {
                return self.read_whole(Ok(listing), Locate::Always, early);
            }
        }
        let settling = fresh.values().any(|s| s.errors.iter().any(|e| e.transient));
        let all_errors: Vec<String> = errors
            .iter()
            .chain(fresh.values().flat_map(|s| s.errors.iter()))
            .map(|e| e.to_string())
            .collect();
        let read = fresh.len();
        if !all_errors.is_empty() && self.listed {
            // Nothing applied; everything is read again next round.
            self.whole = true;
            return RoundOutcome {
                round: Round::Refused(all_errors),
                settling,
                read,
            };
        }
        // What went: nothing at start-up; otherwise owned keys no file holds now (borrowed,
        // not a second copy of every key).
        let delete: Vec<ObjectKey> = if self.owner.is_empty() {
            Vec::new()
        } else {
            let held: std::collections::HashSet<&ObjectKey> =
                fresh.values().flat_map(|s| s.keys.iter()).collect();
            self.owner
                .keys()
                .filter(|k| !held.contains(*k))
                .cloned()
                .collect()
        };
        // The old map goes before the new one is built.
        self.owner = BTreeMap::new();
        self.owner = fresh
            .iter()
            .flat_map(|(p, s)| {
                let shared: Arc<Path> = Arc::from(p.as_path());
                s.keys.iter().map(move |k| (k.clone(), shared.clone()))
            })
            .collect();
        // Files caught mid-write are read again soon; their objects stay until they settle.
        self.pending = fresh
            .iter()
            .filter(|(_, s)| s.errors.iter().any(|e| e.transient))
            .map(|(p, _)| p.clone())
            .collect();
        self.files = fresh;
        self.whole = duplicates || symlinks || !errors.is_empty();
        self.listed = true;
        RoundOutcome {
            round: Round::Patch {
                apply,
                delete,
                problems: all_errors,
            },
            settling,
            read,
        }
    }
}

/// Whether [`list_files`] would list `p` (given a YAML name directly in the directory).
fn listable(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => !p.is_dir(),
        Ok(m) => m.is_file(),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// The object, if admission takes it; else the error, located at the offending field.
fn admitted(loaded: Loaded) -> Result<Object, LoadError> {
    match admit(&loaded.object) {
        Ok(_) => Ok(loaded.object),
        Err(errs) => Err(LoadError {
            location: loaded.location.at(errs
                .first()
                .zip(loaded.positions.as_ref())
                .and_then(|(e, p)| p.find(&e.field))),
            object: Some(Box::new(crate::sources::file::info_of(&loaded.object))),
            message: errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            transient: false,
        }),
    }
}

/// Read files on every core, results in the order given.
fn read_parallel(files: &[PathBuf], locate: Locate) -> Vec<Vec<Result<Loaded, LoadError>>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(|f| read_file_with(f, locate)).collect();
    }
    let per = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|f| read_file_with(f, locate))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{ports: [{{port: 80}}]}}\n---\n")
    }

    fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn names(objects: &[Object]) -> Vec<String> {
        objects.iter().map(|o| o.key().name.to_string()).collect()
    }

    fn patch(out: RoundOutcome) -> (Vec<String>, Vec<String>, Vec<String>) {
        match out.round {
            Round::Patch {
                apply,
                delete,
                problems,
            } => (
                names(&apply),
                delete.into_iter().map(|k| k.name.to_string()).collect(),
                problems,
            ),
            Round::Refused(e) => panic!("refused: {e:?}"),
        }
    }

    #[test]
    fn a_change_rereads_only_the_files_it_names_and_patches_what_they_hold() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write(dir, "a.yaml", &svc("a"));
        let b = write(dir, "b.yaml", &format!("{}{}", svc("b1"), svc("b2")));
        let mut st = DirState::new(dir.to_path_buf());
        let mut streamed = Vec::new();
        let out = st.round(Scan::Stamps, &mut |o| streamed.extend(names(&o)));
        assert_eq!(out.read, 2);
        assert_eq!(streamed, ["a", "b1", "b2"], "startup streams objects");
        assert_eq!(patch(out), (vec![], vec![], vec![]));

        // b.yaml loses b2 and gains b3; a.yaml is not read.
        write(dir, "b.yaml", &format!("{}{}", svc("b1"), svc("b3")));
        let out = st.round(Scan::Paths(vec![b.clone()]), &mut |_| {
            panic!("not at startup")
        });
        assert_eq!(out.read, 1);
        assert_eq!(
            patch(out),
            (vec!["b1".into(), "b3".into()], vec!["b2".into()], vec![])
        );

        // Editors' temporaries are not read; a removed file's objects go.
        std::fs::remove_file(dir.join("a.yaml")).expect("rm");
        let out = st.round(
            Scan::Paths(vec![dir.join(".a.yaml.swp"), dir.join("a.yaml")]),
            &mut |_| {},
        );
        assert_eq!(out.read, 0);
        assert_eq!(patch(out), (vec![], vec!["a".into()], vec![]));

        // Without paths: only files whose stamp changed.
        write(dir, "c.yaml", &svc("c"));
        let out = st.round(Scan::Stamps, &mut |_| {});
        assert_eq!(out.read, 1);
        assert_eq!(patch(out).0, ["c"]);
    }

    #[test]
    fn once_live_a_change_that_leaves_errors_is_refused_and_read_again_with_the_next() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let a = write(dir, "a.yaml", &svc("a"));
        let b = write(dir, "b.yaml", &svc("b"));
        let mut st = DirState::new(dir.to_path_buf());
        patch(st.round(Scan::Stamps, &mut |_| {}));
        write(dir, "a.yaml", &format!("{}kind: [", svc("a2")));
        let out = st.round(Scan::Paths(vec![a.clone()]), &mut |_| {});
        assert!(
            matches!(&out.round, Round::Refused(e) if e.len() == 1),
            "{out:?}"
        );
        // Another file changes: still refused, since a.yaml still has errors.
        write(dir, "b.yaml", &svc("b2"));
        let out = st.round(Scan::Paths(vec![b.clone()]), &mut |_| {});
        assert!(matches!(&out.round, Round::Refused(_)), "{out:?}");
        // a.yaml is fixed: both touched files are read and patched together.
        write(dir, "a.yaml", &svc("a2"));
        let out = st.round(Scan::Paths(vec![a]), &mut |_| {});
        assert_eq!(out.read, 2);
        let (mut apply, mut delete, problems) = patch(out);
        apply.sort();
        delete.sort();
        assert_eq!(
            (apply, delete, problems),
            (
                vec!["a2".into(), "b2".into()],
                vec!["a".into(), "b".into()],
                vec![]
            )
        );
    }

    #[test]
    fn an_object_defined_by_two_files_falls_back_to_the_whole_directory_first_file_winning() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write(dir, "a.yaml", &svc("x"));
        let b = write(dir, "b.yaml", &svc("y"));
        let mut st = DirState::new(dir.to_path_buf());
        patch(st.round(Scan::Stamps, &mut |_| {}));
        write(dir, "b.yaml", &svc("x"));
        let out = st.round(Scan::Paths(vec![b]), &mut |_| {});
        assert_eq!(out.read, 2, "whole directory");
        match out.round {
            Round::Refused(e) => {
                assert!(
                    e[0].contains("duplicate object: already defined at"),
                    "{e:?}"
                );
                assert!(
                    e[0].contains("a.yaml:1:1"),
                    "the first definition's line: {e:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clean_files_are_parsed_once_but_every_error_still_names_its_line() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        write(dir, "a.yaml", &svc("a"));
        write(
            dir,
            "b.yaml",
            &format!(
                "{}{}",
                svc("b"),
                svc("c").replace("spec:", "bogus: 1\nspec:")
            ),
        );
        let mut st = DirState::new(dir.to_path_buf());
        let mut streamed = Vec::new();
        let out = st.round(Scan::Stamps, &mut |o| streamed.extend(names(&o)));
        assert_eq!(streamed, ["a", "b"]);
        let (_, _, problems) = patch(out);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("b.yaml:9:1"), "{problems:?}");
    }
}
