//! Where each field of a YAML document is: a map from field path (`spec.rules[0].timeouts`,
//! the same spelling errors use) to the line and column of its key (or, for a sequence item,
//! of the item). Built from the parser's events after the document was accepted by the
//! size-limited loader, so it costs one linear pass and never expands aliases.
//!
//! Errors look a path up with [`DocPositions::find`]; a path that is not in the map (a field
//! that came through an alias or a merge key, or one that is missing) falls back to its
//! nearest ancestor that is, so an error always points at the closest line the user wrote.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

/// Line (from 1) and column (from 1) in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// Positions of one document's fields.
#[derive(Debug, Default, Clone)]
pub struct DocPositions {
    /// Where the document's top node starts.
    pub start: Option<Pos>,
    fields: HashMap<String, Pos>,
    /// Keys written twice in one mapping: the path and where the repeat is.
    pub duplicates: Vec<(String, Pos)>,
    /// The document is empty or a bare null, which the loader leaves out.
    null: bool,
}

impl DocPositions {
    /// Position of `path`, or of its nearest ancestor that has one, or of the document.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.fields.get(p) {
                return Some(*pos);
            }
            match parent(p) {
                Some(up) => p = up,
                None => return self.start,
            }
        }
    }

    /// The same map seen from `prefix` (an item of a `kind: List`): `find("spec")` looks up
    /// `items[3].spec`.
    pub fn under(&self, prefix: &str) -> DocPositions {
        let start = self.fields.get(prefix).copied().or(self.start);
        let fields = self
            .fields
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(prefix)?;
                let rest = rest.strip_prefix('.').or_else(|| {
                    // `items[3][0]`-style children cannot occur under a mapping item.
                    rest.is_empty().then_some("")
                })?;
                (!rest.is_empty()).then(|| (rest.to_string(), *v))
            })
            .collect();
        let duplicates = self
            .duplicates
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(prefix)?.strip_prefix('.')?;
                Some((rest.to_string(), *v))
            })
            .collect();
        DocPositions {
            start,
            fields,
            duplicates,
            null: false,
        }
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Append a map key to a path. Keys that would be ambiguous in the dotted spelling are kept
/// as they are: field names never contain dots, and label keys are not looked up.
fn push_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

enum Frame {
    /// A mapping; `key` is the path of the entry whose value comes next, if a key was read.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A complex (non-scalar) key, skipped with everything under it.
    Skip {
        depth: usize,
    },
}

/// Positions of every document in `text`, in order. `None` when the text does not parse
/// (the caller's loader reports that error).
pub fn positions(text: &str) -> Option<Vec<DocPositions>> {
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut current: Option<DocPositions> = None;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.ok()?;
        let pos = Pos {
            line: u32::try_from(span.start.line()).unwrap_or(u32::MAX),
            column: u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX),
        };
        match event {
            Event::DocumentStart(..) => {
                stack.clear();
                current = Some(DocPositions::default());
            }
            // The loader leaves out empty and null documents (`a: 1\n---\n`): so do we.
            Event::DocumentEnd => docs.extend(current.take().filter(|d| !d.null)),
            Event::MappingStart(..)
            | Event::SequenceStart(..)
            | Event::Scalar(..)
            | Event::Alias(_) => {
                let Some(doc) = current.as_mut() else {
                    continue;
                };
                let opens = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
                // Inside a skipped complex key: only track depth.
                if let Some(Frame::Skip { depth }) = stack.last_mut() {
                    if opens {
                        *depth += 1;
                    }
                    continue;
                }
                // Is this node a mapping key? Then remember it and wait for its value.
                if let Some(Frame::Map { path, key }) = stack.last_mut() {
                    if key.is_none() {
                        match &event {
                            Event::Scalar(k, ..) => {
                                let full = push_key(path, k);
                                if doc.fields.contains_key(&full) {
                                    doc.duplicates.push((full.clone(), pos));
                                } else {
                                    doc.fields.insert(full.clone(), pos);
                                }
                                *key = Some(full);
                            }
                            _ => {
                                // A complex key: its value is unreachable by path; skip both.
                                *key = Some(String::new());
                                if opens {
                                    stack.push(Frame::Skip { depth: 1 });
                                }
                            }
                        }
                        continue;
                    }
                }
                // A value: of the root, of a mapping entry, or a sequence item.
                let here = match stack.last_mut() {
                    None => {
                        doc.start.get_or_insert(pos);
                        doc.null = matches!(
                            &event,
                            Event::Scalar(v, ScalarStyle::Plain, _, None)
                                if matches!(&**v, "" | "~" | "null" | "Null" | "NULL")
                        );
                        Some(String::new())
                    }
                    Some(Frame::Map { key, .. }) => key.take().filter(|k| !k.is_empty()),
                    Some(Frame::Seq { path, next }) => {
                        let p = format!("{path}[{next}]");
                        *next += 1;
                        doc.fields.entry(p.clone()).or_insert(pos);
                        Some(p)
                    }
                    Some(Frame::Skip { .. }) => None,
                };
                match event {
                    Event::MappingStart(..) => stack.push(match here {
                        Some(path) => Frame::Map { path, key: None },
                        None => Frame::Skip { depth: 1 },
                    }),
                    Event::SequenceStart(..) => stack.push(match here {
                        Some(path) => Frame::Seq { path, next: 0 },
                        None => Frame::Skip { depth: 1 },
                    }),
                    _ => {}
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Skip { depth }) = stack.last_mut() {
                    *depth -= 1;
                    if *depth > 0 {
                        continue;
                    }
                }
                // After a complex key the map's `key` is `Some("")`: the value that follows
                // is skipped as well (see the value branch).
                stack.pop();
            }
            _ => {}
        }
    }
    Some(docs)
}

/// What the aliases of a text would add when expanded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expansion {
    /// Nodes (scalars, mappings, sequences).
    pub nodes: u64,
    /// Bytes of scalar values.
    pub bytes: u64,
}

impl Expansion {
    fn add(&mut self, other: Expansion) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// What the aliases of `text` would add when expanded: each `*ref` replays its anchored node
/// with everything under it (aliases inside it included), nodes and scalar bytes. `None` when
/// the text does not parse (the loader reports that). Counted on events, without expanding
/// anything, so a billion-laughs file (many nodes) or a long scalar replayed by every alias
/// (many bytes) costs one linear pass, not the memory it asks for.
pub fn alias_expansion(text: &str) -> Option<Expansion> {
    // Sizes of finished anchors by id, and the anchored nodes still open (id, size so far).
    let mut sizes: HashMap<usize, Expansion> = HashMap::new();
    let mut open: Vec<(usize, Expansion, usize)> = Vec::new(); // (anchor id, size, depth at start)
    let mut depth = 0usize;
    let mut total = Expansion::default();
    for item in Parser::new_from_str(text) {
        let (event, _) = item.ok()?;
        let node = |bytes: usize| Expansion {
            nodes: 1,
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
        };
        let (add, anchor, opens, closes) = match &event {
            Event::Scalar(value, _, anchor, _) => (node(value.len()), *anchor, false, false),
            Event::MappingStart(_, anchor, _) | Event::SequenceStart(_, anchor, _) => {
                (node(0), *anchor, true, false)
            }
            Event::MappingEnd | Event::SequenceEnd => (Expansion::default(), 0, false, true),
            Event::Alias(id) => {
                let n = sizes.get(id).copied().unwrap_or_default();
                total.add(n);
                (n, 0, false, false)
            }
            Event::DocumentStart(..) => {
                sizes.clear();
                open.clear();
                depth = 0;
                continue;
            }
            _ => continue,
        };
        for o in open.iter_mut() {
            o.1.add(add);
        }
        if anchor != 0 {
            if opens {
                open.push((anchor, add, depth));
            } else {
                sizes.insert(anchor, add);
            }
        }
        if opens {
            depth += 1;
        }
        if closes {
            depth = depth.saturating_sub(1);
            while let Some(&(id, size, d)) = open.last() {
                if d < depth {
                    break;
                }
                sizes.insert(id, size);
                open.pop();
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_items_and_documents_have_their_lines() {
        let y = "# a comment\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - name: http\n    port: 80\n  - {name: admin, port: 9000}\n---\nkind: X\nspec: {rules: [{backendRef: [x]}]}\n";
        let docs = positions(y).unwrap();
        assert_eq!(docs.len(), 2);
        let d = &docs[0];
        assert_eq!(d.start, Some(Pos { line: 2, column: 1 }));
        assert_eq!(d.find("metadata.name"), Some(Pos { line: 5, column: 3 }));
        assert_eq!(d.find("spec.ports[0]"), Some(Pos { line: 8, column: 5 }));
        assert_eq!(
            d.find("spec.ports[0].port"),
            Some(Pos { line: 9, column: 5 })
        );
        assert_eq!(
            d.find("spec.ports[1].port"),
            Some(Pos {
                line: 10,
                column: 19
            })
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(
            d.find("spec.ports[1].nope.deeper"),
            Some(Pos {
                line: 10,
                column: 5
            })
        );
        assert_eq!(d.find("spec.ports[7]"), Some(Pos { line: 7, column: 3 }));
        assert_eq!(d.find("nothing"), Some(Pos { line: 2, column: 1 }));
        let d = &docs[1];
        assert_eq!(
            d.find("spec.rules[0].backendRef"),
            Some(Pos {
                line: 13,
                column: 17
            })
        );
    }

    #[test]
    fn documents_are_counted_like_the_loader_counts_them() {
        // Empty and null documents are left out by the loader; positions must line up.
        for t in [
            "a: 1\n---\n",
            "a: 1\n---\n~\n---\nb: 1\n",
            "a: 1\n---\n# only a comment\n---\nb: 1\n",
            "---\na: 1\n---\n---\nb: null\n",
            "'null'\n---\na: 1\n",
        ] {
            let loaded: Vec<serde_json::Value> = serde_saphyr::from_multiple(t).unwrap();
            assert_eq!(positions(t).unwrap().len(), loaded.len(), "{t:?}");
        }
    }

    #[test]
    fn repeated_keys_are_listed_where_they_repeat() {
        let y = "a: 1\nb:\n  c: 1\n  c: 2\nd: [{e: 1}, {e: 2}]\n";
        let d = &positions(y).unwrap()[0];
        assert_eq!(
            d.duplicates,
            [("b.c".to_string(), Pos { line: 4, column: 3 })]
        );
    }

    #[test]
    fn alias_expansion_counts_nested_replays_without_expanding() {
        let nodes = |t: &str| alias_expansion(t).map(|e| e.nodes);
        assert_eq!(nodes("a: &a [1, 2]\nb: *a\nc: *a\n"), Some(6));
        assert_eq!(nodes("a: &s x\nb: *s\n"), Some(1));
        // Nested: b holds two copies of a (3 nodes each) plus itself.
        assert_eq!(nodes("a: &a [1, 2]\nb: &b [*a, *a]\nc: *b\n"), Some(6 + 7));
        // A bomb: 12 levels of 10 aliases each is 10^12 nodes, counted in microseconds.
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            let refs = vec![format!("*{prev}"); 10].join(", ");
            y.push_str(&format!("b{i}: &b{i} [{refs}]\n"));
        }
        assert!(nodes(&y).unwrap() > 1_000_000_000_000);
    }

    #[test]
    fn alias_expansion_counts_the_scalar_bytes_replayed() {
        let bytes = |t: &str| alias_expansion(t).map(|e| e.bytes);
        assert_eq!(bytes("a: &s hello\nb: *s\nc: *s\n"), Some(10));
        assert_eq!(bytes("a: &m {k: vv}\nb: [*m, *m]\n"), Some(6));
        assert_eq!(
            bytes("a: &a [xy]\nb: &b [*a, *a]\nc: *b\n"),
            Some(2 + 2 + 4)
        );
        // One long scalar replayed by 99 aliases: few nodes, many bytes.
        let long = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(100_000),
            ["*a"; 99].join(", ")
        );
        let e = alias_expansion(&long).unwrap();
        assert_eq!((e.nodes, e.bytes), (99, 9_900_000));
    }

    #[test]
    fn list_items_are_seen_from_their_own_root() {
        let y = "kind: List\nitems:\n- kind: Service\n  spec:\n    ports: []\n- kind: Service\n  spec:\n    typo: 1\n";
        let docs = positions(y).unwrap();
        let item = docs[0].under("items[1]");
        assert_eq!(item.start, Some(Pos { line: 6, column: 3 }));
        assert_eq!(item.find("spec.typo"), Some(Pos { line: 8, column: 5 }));
        assert_eq!(item.find("kind"), Some(Pos { line: 6, column: 3 }));
    }

    #[test]
    fn complex_keys_and_aliases_do_not_confuse_paths() {
        let y = "a: &x {b: 1}\n? [k]\n: {c: 2}\nd: *x\ne:\n  f: 3\n";
        let d = &positions(y).unwrap()[0];
        assert_eq!(d.find("e.f"), Some(Pos { line: 6, column: 3 }));
        // Through the alias: the nearest written ancestor.
        assert_eq!(d.find("d.b"), Some(Pos { line: 4, column: 1 }));
    }
}
