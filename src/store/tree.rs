//! The persistent tree (reference §3.2).
//!
//! A directory is an [`imbl::OrdMap`] from name to node, so cloning a tree is O(1)
//! and an update copies only the nodes on the changed path that another clone
//! still shares (none, when the store's tree is the only one: it is then
//! changed in place). Names are ASCII, so the map's order (byte-wise, see
//! [`Name`]) is the order the protocol lists in.
//!
//! Directories are implicit: [`set`] creates missing ancestors and [`delete`]
//! prunes the directories it empties, the root excepted. So no empty directory
//! exists except the root.
//!
//! **No recursion.** A client chooses how deep the tree is (one level per path
//! component), so nothing here recurses once per level: every walk keeps an
//! explicit stack on the heap, and so do dropping a tree ([`Node`]'s `Drop`)
//! and comparing two ([`Node`]'s `PartialEq`), which derived code would do
//! recursively. A path at the byte limit ([`crate::types::MAX_PATH_BYTES`])
//! is at most 2,048 levels deep, but these functions do not rely on that: the
//! tests run paths of 10,000 levels on a 128 KiB stack.

use std::cell::{Cell, RefCell};
use std::fmt;

use imbl::OrdMap;

use crate::types::{Body, Rev};

pub(crate) use super::name::Name;

/// A directory: its entries by name.
pub(crate) type Dir = OrdMap<Name, Node>;

#[derive(Clone)]
pub(crate) enum Node {
    File { body: Body, rev: Rev },
    Dir(Dir),
}

thread_local! {
    /// Directories whose last owner is gone and whose entries are still to be
    /// dropped, while some [`Node`] up the stack is draining them.
    static DROP_QUEUE: RefCell<Vec<Dir>> = const { RefCell::new(Vec::new()) };
    /// Whether a [`Node::drop`] on this thread is draining [`DROP_QUEUE`].
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// Dropping a directory drops its entries, and a derived drop would go one
/// call deeper per level of the tree. Instead the first directory node dropped
/// on a thread drains a queue: dropping a map that was the last owner of its
/// entries drops their nodes, which only queue their own maps. The stack stays
/// a few frames deep whatever the tree's depth, and the work is proportional
/// to what is actually freed (a map still shared with another snapshot is only
/// a reference count decremented).
impl Drop for Node {
    fn drop(&mut self) {
        let Node::Dir(dir) = self else { return };
        if dir.is_empty() {
            return;
        }
        let mut dir = Some(std::mem::take(dir));
        // Fails only while thread-local storage is torn down: then the map
        // is dropped in place below.
        let _ = DROP_QUEUE.try_with(|q| q.borrow_mut().extend(dir.take()));
        if dir.is_some() {
            return;
        }
        if DRAINING.with(|d| d.replace(true)) {
            return; // a caller up the stack drains the queue
        }
        loop {
            let next = DROP_QUEUE.with(|q| q.borrow_mut().pop());
            match next {
                Some(dir) => drop(dir), // may queue more, never recurses
                None => break,
            }
        }
        DROP_QUEUE.with(|q| q.borrow_mut().shrink_to(64));
        DRAINING.with(|d| d.set(false));
    }
}

/// Compares two trees with an explicit stack (a derived comparison would
/// recurse once per level).
impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::File { body, rev }, Node::File { body: b, rev: r }) => rev == r && body == b,
            (Node::Dir(a), Node::Dir(b)) => dirs_equal(a, b),
            _ => false,
        }
    }
}

impl Eq for Node {}

/// Shallow: a tree can be deeper than a formatter's recursion.
impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::File { body, rev } => write!(f, "File(rev {rev}, {} bytes)", body.len()),
            Node::Dir(d) => write!(f, "Dir({} entries)", d.len()),
        }
    }
}

/// Whether two directories hold the same tree.
pub(crate) fn dirs_equal(a: &Dir, b: &Dir) -> bool {
    let mut stack = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        if a.ptr_eq(b) {
            continue;
        }
        if a.len() != b.len() {
            return false;
        }
        for ((name_a, node_a), (name_b, node_b)) in a.iter().zip(b.iter()) {
            if name_a != name_b {
                return false;
            }
            match (node_a, node_b) {
                (Node::Dir(x), Node::Dir(y)) => stack.push((x, y)),
                (x, y) => {
                    if x != y {
                        return false;
                    }
                }
            }
        }
    }
    true
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
        match dir.get(name.as_bytes()) {
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

/// The file at `comps` (at least one component), to change in place, and
/// the number of components, found on one walk down; `None` when no file is
/// there (absent, a directory, or below a file). Overwriting a file is
/// nearly every write, and a [`lookup`] and then a [`set`] walk the path
/// twice and search each directory twice more on the way; the components
/// are taken as they come, with no vector built. The walk makes the
/// directories on the path unshared (copy on write) even when it returns
/// `None`: their contents stay the same.
pub(crate) fn file_mut<'a, 'p>(
    root: &'a mut Dir,
    comps: impl IntoIterator<Item = &'p str>,
) -> Option<(&'a mut Node, usize)> {
    let mut comps = comps.into_iter();
    let mut dir = root;
    let mut depth = 1;
    let mut name = comps.next()?;
    for next in comps {
        match dir.get_mut(name.as_bytes()) {
            Some(Node::Dir(child)) => dir = child,
            _ => return None,
        }
        name = next;
        depth += 1;
    }
    match dir.get_mut(name.as_bytes()) {
        Some(node @ Node::File { .. }) => Some((node, depth)),
        _ => None,
    }
}

/// Puts `leaf` at `comps` (at least one component), creating missing
/// directories. An ancestor that is a file is replaced by a directory; callers
/// that must not do that check first (only the forced `/ctl/err` write relies on it).
///
/// Returns what it replaced, for undoing it, found on the same walk: the
/// number of components of `comps` down to the highest entry changed (the
/// first directory created, a file replaced by a directory, or the leaf)
/// and what that entry was (`None`: absent).
pub(crate) fn set(root: &mut Dir, comps: &[&str], leaf: Node) -> (usize, Option<Node>) {
    let (last, parents) = comps.split_last().expect("set below the root");
    let mut dir = root;
    let mut changed: Option<(usize, Option<Node>)> = None;
    for (j, name) in parents.iter().enumerate() {
        if !matches!(dir.get(name.as_bytes()), Some(Node::Dir(_))) {
            let old = dir.insert(Name::from(*name), Node::Dir(Dir::new()));
            changed.get_or_insert((j + 1, old));
        }
        dir = match dir.get_mut(name.as_bytes()) {
            Some(Node::Dir(child)) => child,
            _ => unreachable!("a directory was just put there"),
        };
    }
    let old = dir.insert(Name::from(*last), leaf);
    changed.unwrap_or((comps.len(), old))
}

/// Removes the entry at `comps` (at least one component) and prunes every
/// directory left empty on the way up, except `root` itself.
/// Does nothing if the path does not exist or passes through a file.
/// Returns what was taken out, for undoing it: the number of components of
/// `comps` down to the entry actually removed (the path's own, or the
/// highest directory pruned with it) and that entry; `(0, None)` when
/// nothing was.
pub(crate) fn delete(root: &mut Dir, comps: &[&str]) -> (usize, Option<Node>) {
    let n = comps.len();
    assert!(n > 0, "delete below the root");
    // Look first, copying nothing: the path must lead through directories to
    // an entry. With d_j the directory at `comps[..j]` (d_0 the root), the
    // entry goes from d_{n-1}, and each d_j with that one entry is emptied in
    // turn. So the entry actually removed is `comps[keep]` from d_keep, the
    // deepest directory on the path that keeps other entries (or the root).
    let mut keep = 0;
    let mut dir: &Dir = root;
    for (j, name) in comps.iter().enumerate() {
        if j == 0 || dir.len() != 1 {
            keep = j;
        }
        match dir.get(name.as_bytes()) {
            None => return (0, None),
            Some(_) if j + 1 == n => {}
            Some(Node::Dir(child)) => dir = child,
            Some(Node::File { .. }) => return (0, None),
        }
    }
    let mut dir = root;
    for name in &comps[..keep] {
        dir = match dir.get_mut(name.as_bytes()) {
            Some(Node::Dir(child)) => child,
            _ => unreachable!("the path was checked above"),
        };
    }
    let removed = dir.remove(comps[keep].as_bytes());
    assert!(removed.is_some(), "the path was checked above");
    (keep + 1, removed)
}

/// Calls `f` on every file below `root` (whose path is `base`, `""` for the
/// root), depth-first with each level sorted. Stops early when `f` returns false.
/// Returns false if stopped.
pub(crate) fn for_each_file(
    root: &Dir,
    base: &mut String,
    f: &mut dyn FnMut(&str, &Body, Rev) -> bool,
) -> bool {
    // One iterator per open directory, and the length of `base` above it.
    let mut stack = vec![(root.iter(), base.len())];
    while let Some((entries, len)) = stack.last_mut() {
        let len = *len;
        base.truncate(len);
        let Some((name, node)) = entries.next() else {
            stack.pop();
            continue;
        };
        base.push('/');
        base.push_str(name);
        match node {
            Node::File { body, rev } => {
                if !f(base, body, *rev) {
                    base.truncate(stack[0].1);
                    return false;
                }
            }
            Node::Dir(d) => stack.push((d.iter(), base.len())),
        }
    }
    true
}
