//! The persistent tree (reference §3.2).
//!
//! A directory is an [`imbl::OrdMap`] from name to node, so cloning a tree is O(1)
//! and an update copies only the nodes on the changed path. Names are ASCII, so
//! the map's `str` order is the byte-wise order the protocol lists in.
//!
//! Directories are implicit: [`set`] creates missing ancestors and [`delete`]
//! prunes the directories it empties, the root excepted. So no empty directory
//! exists except the root.

use std::sync::Arc;

use imbl::OrdMap;

use crate::types::{Body, Rev};

/// An entry name inside a directory.
pub(crate) type Name = Arc<str>;

/// A directory: its entries by name.
pub(crate) type Dir = OrdMap<Name, Node>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    File { body: Body, rev: Rev },
    Dir(Dir),
}

/// What sits at a path, looking down from `root`.
pub(crate) enum Lookup<'a> {
    /// Nothing: some component is missing.
    Absent,
    /// An ancestor (not the path itself) is a file.
    UnderFile,
    File {
        body: &'a Body,
        rev: Rev,
    },
    Dir(&'a Dir),
}

pub(crate) fn lookup<'a, 'p>(
    root: &'a Dir,
    comps: impl IntoIterator<Item = &'p str>,
) -> Lookup<'a> {
    let mut node: Option<&'a Node> = None;
    let mut dir = root;
    for name in comps {
        if let Some(Node::File { .. }) = node {
            return Lookup::UnderFile;
        }
        match dir.get(name) {
            None => return Lookup::Absent,
            Some(n) => {
                if let Node::Dir(d) = n {
                    dir = d;
                }
                node = Some(n);
            }
        }
    }
    match node {
        None => Lookup::Dir(root),
        Some(Node::Dir(d)) => Lookup::Dir(d),
        Some(Node::File { body, rev }) => Lookup::File { body, rev: *rev },
    }
}

/// Puts `leaf` at `comps` (at least one component), creating missing
/// directories. An ancestor that is a file is replaced by a directory; callers
/// that must not do that check first (only the forced `/ctl/err` write relies on it).
pub(crate) fn set(dir: &mut Dir, comps: &[&str], leaf: Node) {
    let (first, rest) = comps.split_first().expect("set below the root");
    if rest.is_empty() {
        dir.insert(Name::from(*first), leaf);
        return;
    }
    if let Some(Node::Dir(child)) = dir.get_mut(*first) {
        set(child, rest, leaf);
        return;
    }
    let mut child = Dir::new();
    set(&mut child, rest, leaf);
    dir.insert(Name::from(*first), Node::Dir(child));
}

/// Removes the entry at `comps` (at least one component) and prunes every
/// directory left empty on the way up, except `dir` itself (the caller's root).
/// Does nothing if the path does not exist or passes through a file.
pub(crate) fn delete(dir: &mut Dir, comps: &[&str]) {
    let (first, rest) = comps.split_first().expect("delete below the root");
    if rest.is_empty() {
        dir.remove(*first);
        return;
    }
    // Look before get_mut, which would copy the path even if nothing changes.
    if !matches!(dir.get(*first), Some(Node::Dir(_))) {
        return;
    }
    if let Some(Node::Dir(child)) = dir.get_mut(*first) {
        delete(child, rest);
        if child.is_empty() {
            dir.remove(*first);
        }
    }
}

/// Calls `f` on every file below `dir` (whose path is `base`, `""` for the
/// root), depth-first with each level sorted. Stops early when `f` returns false.
/// Returns false if stopped.
pub(crate) fn for_each_file(
    dir: &Dir,
    base: &mut String,
    f: &mut dyn FnMut(&str, &Body, Rev) -> bool,
) -> bool {
    for (name, node) in dir.iter() {
        let len = base.len();
        base.push('/');
        base.push_str(name);
        let go_on = match node {
            Node::File { body, rev } => f(base, body, *rev),
            Node::Dir(d) => for_each_file(d, base, f),
        };
        base.truncate(len);
        if !go_on {
            return false;
        }
    }
    true
}
