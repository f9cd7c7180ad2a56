//! The data store (reference §3, DESIGN.md §3): a pure state machine.
//!
//! [`Store::apply`] turns one decided [`Mutation`] into the next rev and an
//! [`Event`]; every node runs the same function on the same sequence, so replicas
//! are identical at every rev ([`Snapshot::digest`] compares them). Snapshots
//! share structure, so each rev of the history window costs only its changed path.
//! No I/O, clock or randomness in here.

mod glob;
mod tree;
pub mod watch;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

pub use glob::{Glob, GlobState};
pub use watch::WatchIndex;

use crate::error::ErrCode;
use crate::types::{Body, Path, Rev, RevCheck};
use tree::{Dir, Lookup, Name, Node};

/// The file that failed mutations are written to (reference §3.4 step 5).
pub const ERR_PATH: &str = "/ctl/err";

/// The consensus value: what one rev does to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Set {
        path: Path,
        check: RevCheck,
        body: Body,
    },
    Del {
        path: Path,
        check: RevCheck,
    },
    Nop,
}

/// What an event did. On the wire: flags 4, 8 and 0 (reference §2.6 WAIT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Set,
    Del,
    Nop,
}

/// Why a mutation failed at apply time. The texts are the original's, byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("rev mismatch")]
    RevMismatch,
    #[error("is a directory")]
    IsDir,
    #[error("not a directory")]
    NotDir,
}

impl ApplyError {
    pub fn code(self) -> ErrCode {
        match self {
            ApplyError::RevMismatch => ErrCode::RevMismatch,
            ApplyError::IsDir => ErrCode::IsDir,
            ApplyError::NotDir => ErrCode::NotDir,
        }
    }
}

/// The result of applying one rev.
///
/// A failed mutation becomes a set of `/ctl/err` (body = the error text) with
/// `error: Some(e)`; a nop has path `/` and an empty body; a delete has an empty body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub rev: Rev,
    pub path: Path,
    pub body: Body,
    pub kind: EventKind,
    pub error: Option<ApplyError>,
}

/// What a path holds in a snapshot (GET and STAT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Absent,
    File {
        rev: Rev,
        body: Body,
    },
    /// `len` = the number of entries.
    Dir {
        len: usize,
    },
}

fn empty_body() -> Body {
    Arc::from(&[][..])
}

/// What [`Snapshot::files_after`] counts for a file beyond its path and
/// body: the length prefixes and rev of an encoding (at most 9 bytes each).
pub const FILE_OVERHEAD_BYTES: usize = 32;

/// The whole tree as it stood after one rev. Cloning is O(1).
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    rev: Rev,
    root: Dir,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            rev: Rev::ZERO,
            root: Dir::new(),
        }
    }

    /// Builds a snapshot from a file list (as [`Snapshot::files`] gives it), for
    /// catching up from a peer. Root entries are ignored; if a path lies below
    /// another listed file, the later one wins.
    pub fn from_files(rev: Rev, files: impl IntoIterator<Item = (Path, Rev, Body)>) -> Snapshot {
        let mut root = Dir::new();
        for (path, file_rev, body) in files {
            let comps: Vec<&str> = path.components().collect();
            if !comps.is_empty() {
                tree::set(
                    &mut root,
                    &comps,
                    Node::File {
                        body,
                        rev: file_rev,
                    },
                );
            }
        }
        Snapshot { rev, root }
    }

    /// The rev after which this snapshot was taken.
    pub fn rev(&self) -> Rev {
        self.rev
    }

    fn lookup(&self, path: &Path) -> Lookup<'_> {
        tree::lookup(&self.root, path.components())
    }

    /// GET / STAT.
    pub fn entry(&self, path: &Path) -> Entry {
        match self.lookup(path) {
            Lookup::Absent | Lookup::UnderFile => Entry::Absent,
            Lookup::File { body, rev } => Entry::File {
                rev,
                body: body.clone(),
            },
            Lookup::Dir(d) => Entry::Dir { len: d.len() },
        }
    }

    fn dir(&self, path: &Path) -> Result<&Dir, ErrCode> {
        match self.lookup(path) {
            Lookup::Absent | Lookup::UnderFile => Err(ErrCode::NoEnt),
            Lookup::File { .. } => Err(ErrCode::NotDir),
            Lookup::Dir(d) => Ok(d),
        }
    }

    /// The entry names of a directory, sorted byte-wise.
    pub fn dir_names(&self, path: &Path) -> Result<Vec<String>, ErrCode> {
        Ok(self.dir(path)?.keys().map(|k| k.to_string()).collect())
    }

    /// GETDIR: the `offset`-th name. NoEnt, NotDir, or Range (also for an empty root).
    pub fn getdir(&self, path: &Path, offset: i64) -> Result<String, ErrCode> {
        let dir = self.dir(path)?;
        let index = usize::try_from(offset).map_err(|_| ErrCode::Range)?;
        dir.keys()
            .nth(index)
            .map(|k| k.to_string())
            .ok_or(ErrCode::Range)
    }

    /// WALK: the `offset`-th file (depth-first, each level sorted) whose path
    /// matches `glob`. Subtrees no continuation of which can match are skipped.
    pub fn walk(&self, glob: &Glob, offset: i64) -> Result<(Path, Rev, Body), ErrCode> {
        let mut left = u64::try_from(offset).map_err(|_| ErrCode::Range)?;
        let mut found = None;
        let mut base = String::new();
        walk_dir(
            &self.root,
            glob,
            &glob.start(),
            &mut base,
            &mut |path, rev, body| {
                if left == 0 {
                    found = Some((path.to_string(), rev, body.clone()));
                    false
                } else {
                    left -= 1;
                    true
                }
            },
        );
        let (path, rev, body) = found.ok_or(ErrCode::Range)?;
        let path = Path::parse(&path).expect("store paths are valid");
        Ok((path, rev, body))
    }

    /// Every file, in walk order.
    pub fn files(&self) -> Vec<(Path, Rev, Body)> {
        let mut out = Vec::new();
        tree::for_each_file(&self.root, &mut String::new(), &mut |path, body, rev| {
            out.push((
                Path::parse(path).expect("store paths are valid"),
                rev,
                body.clone(),
            ));
            true
        });
        out
    }

    /// A run of files in walk order for a snapshot sent in chunks: those
    /// after the file `after` (from the first when `None`), as many as fit in
    /// `max_bytes` (at least one; each file counts its path, its body and
    /// [`FILE_OVERHEAD_BYTES`]), and whether the walk
    /// reached the end. The walk keeps an explicit stack (one entry per
    /// directory level), so no path depth can exhaust the thread's stack,
    /// and it touches only the files it returns and the path to `after`.
    pub fn files_after(
        &self,
        after: Option<&Path>,
        max_bytes: usize,
    ) -> (Vec<(Path, Rev, Body)>, bool) {
        use std::ops::Bound;
        type Level<'a> = (Box<dyn Iterator<Item = (&'a Name, &'a Node)> + 'a>, usize);
        let mut stack: Vec<Level<'_>> = Vec::new();
        let mut base = String::new();
        match after {
            None => stack.push((Box::new(self.root.iter()), 0)),
            Some(after) => {
                let mut dir = Some(&self.root);
                for comp in after.components() {
                    let Some(d) = dir else {
                        break;
                    };
                    let bounds = (Bound::Excluded(comp), Bound::Unbounded);
                    stack.push((Box::new(d.range::<_, str>(bounds)), base.len()));
                    base.push('/');
                    base.push_str(comp);
                    dir = match d.get(comp) {
                        Some(Node::Dir(child)) => Some(child),
                        _ => None,
                    };
                }
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some((iter, len)) = stack.last_mut() {
            let len = *len;
            let Some((name, node)) = iter.next() else {
                stack.pop();
                continue;
            };
            base.truncate(len);
            base.push('/');
            base.push_str(name);
            match node {
                Node::File { body, rev } => {
                    let cost = base.len() + body.len() + FILE_OVERHEAD_BYTES;
                    if !out.is_empty() && bytes.saturating_add(cost) > max_bytes {
                        return (out, false);
                    }
                    bytes = bytes.saturating_add(cost);
                    let path = Path::parse(&base).expect("store paths are valid");
                    out.push((path, *rev, body.clone()));
                }
                Node::Dir(d) => {
                    let len = base.len();
                    stack.push((Box::new(d.iter()), len));
                }
            }
        }
        (out, true)
    }

    /// A deterministic 64-bit FNV-1a hash of the tree's content (every file's
    /// path, rev and body, in walk order). The snapshot's own rev is not included.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        tree::for_each_file(&self.root, &mut String::new(), &mut |path, body, rev| {
            h.write(&(path.len() as u64).to_le_bytes());
            h.write(path.as_bytes());
            h.write(&rev.0.to_le_bytes());
            h.write(&(body.len() as u64).to_le_bytes());
            h.write(body);
            true
        });
        h.0
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("rev", &self.rev)
            .field("root_entries", &self.root.len())
            .field("digest", &format_args!("{:016x}", self.digest()))
            .finish()
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Depth-first walk of the files of `dir` that match `glob`, where `state` is
/// the glob's state after `base` (the path of `dir`, `""` for the root).
/// Returns false once `f` asked to stop.
fn walk_dir(
    dir: &Dir,
    glob: &Glob,
    state: &GlobState,
    base: &mut String,
    f: &mut dyn FnMut(&str, Rev, &Body) -> bool,
) -> bool {
    let slash = glob.advance(state, "/");
    if slash.is_dead() {
        return true;
    }
    for (name, node) in dir.iter() {
        let next = glob.advance(&slash, name);
        if next.is_dead() {
            continue;
        }
        let len = base.len();
        base.push('/');
        base.push_str(name);
        let go_on = match node {
            Node::File { body, rev } => !glob.accepts(&next) || f(base, *rev, body),
            Node::Dir(d) => walk_dir(d, glob, &next, base, f),
        };
        base.truncate(len);
        if !go_on {
            return false;
        }
    }
    true
}

/// Why a read at a given rev cannot be answered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Older than the retained history: TOO_LATE.
    #[error("too late")]
    TooLate,
    /// Not applied yet: the caller waits.
    #[error("rev not reached yet")]
    Future,
}

/// The store: the current tree plus the events and snapshots of the last
/// `history_revs` revs.
pub struct Store {
    history_revs: usize,
    /// The oldest rev still readable (0 while nothing was ever dropped).
    head: Rev,
    current: Snapshot,
    /// Consecutive revs, oldest first, ending at `current.rev`.
    history: VecDeque<(Event, Snapshot)>,
    /// The snapshot this store was started from (catch-up), kept readable
    /// while its rev is inside the history window: a node that just
    /// installed one answers reads at the rev it reports. Its event is not
    /// known, so WAIT still starts at `head`.
    base: Option<Snapshot>,
}

impl Store {
    /// An empty store at rev 0 that keeps the last `history_revs` (at least 1) revs.
    pub fn new(history_revs: usize) -> Store {
        Store {
            history_revs: history_revs.max(1),
            head: Rev::ZERO,
            current: Snapshot::empty(),
            history: VecDeque::new(),
            base: None,
        }
    }

    /// A store that starts from a snapshot taken elsewhere (catch-up). As in the
    /// original after a clone, no event at or before the snapshot's rev is in
    /// the history: `head` (where WAIT may start) is its rev + 1. Reads at the
    /// snapshot's own rev are still answered (unlike the original, whose
    /// fresh slaves answered `TOO_LATE` at the rev they reported), for as long
    /// as that rev stays inside the history window.
    pub fn from_snapshot(snapshot: Snapshot, history_revs: usize) -> Store {
        Store {
            history_revs: history_revs.max(1),
            head: snapshot.rev.next(),
            base: Some(snapshot.clone()),
            current: snapshot,
            history: VecDeque::new(),
        }
    }

    /// The last applied rev.
    pub fn rev(&self) -> Rev {
        self.current.rev
    }

    /// The oldest rev still readable.
    pub fn head(&self) -> Rev {
        self.head
    }

    pub fn history_revs(&self) -> usize {
        self.history_revs
    }

    pub fn current(&self) -> &Snapshot {
        &self.current
    }

    /// Applies `mutation` at `rev() + 1` and returns its event.
    pub fn apply(&mut self, mutation: &Mutation) -> Event {
        let rev = self.rev().next();
        let (root, event) = match try_apply(&self.current.root, mutation, rev) {
            Ok((root, event)) => (root.unwrap_or_else(|| self.current.root.clone()), event),
            Err(error) => {
                let body: Body = Arc::from(error.to_string().into_bytes());
                let mut root = self.current.root.clone();
                // Forced like the original's: replaces whatever is in the way.
                tree::set(
                    &mut root,
                    &["ctl", "err"],
                    Node::File {
                        body: body.clone(),
                        rev,
                    },
                );
                let event = Event {
                    rev,
                    path: Path::parse(ERR_PATH).expect("valid path"),
                    body,
                    kind: EventKind::Set,
                    error: Some(error),
                };
                (root, event)
            }
        };
        self.current = Snapshot { rev, root };
        self.history
            .push_back((event.clone(), self.current.clone()));
        let keep_from = rev.0 - self.history_revs as i64 + 1;
        while self
            .history
            .front()
            .is_some_and(|(e, _)| e.rev.0 < keep_from)
        {
            self.history.pop_front();
        }
        if keep_from > self.head.0 {
            self.head = Rev(keep_from);
        }
        if self.base.as_ref().is_some_and(|b| b.rev.0 < keep_from) {
            self.base = None;
        }
        event
    }

    /// The index in `history` of `rev`, which must be in `head.max(1)..=rev()`.
    fn index(&self, rev: Rev) -> usize {
        let first = self.history.front().expect("history covers rev").0.rev;
        usize::try_from(rev.0 - first.0).expect("rev at or after the history start")
    }

    /// The store as it stood after `rev` (raised to at least 1).
    pub fn snapshot_at(&self, rev: Rev) -> Result<Snapshot, ReadError> {
        let rev = Rev(rev.0.max(1));
        if rev > self.rev() {
            return Err(ReadError::Future);
        }
        if rev == self.rev() {
            return Ok(self.current.clone());
        }
        if let Some(base) = self.base.as_ref().filter(|b| b.rev == rev) {
            return Ok(base.clone());
        }
        if rev < self.head {
            return Err(ReadError::TooLate);
        }
        Ok(self.history[self.index(rev)].1.clone())
    }

    /// WAIT over the history: the first event at or after `from` (raised to at
    /// least 1) whose path matches `glob`; `None` if there is none yet.
    pub fn first_match(&self, glob: &Glob, from: Rev) -> Result<Option<Event>, ReadError> {
        let from = Rev(from.0.max(1));
        if from < self.head {
            return Err(ReadError::TooLate);
        }
        if from > self.rev() {
            return Ok(None);
        }
        Ok(self
            .history
            .range(self.index(from)..)
            .map(|(e, _)| e)
            .find(|e| glob.matches(e.path.as_str()))
            .cloned())
    }

    /// The event of `rev`, if it is in the history.
    pub fn event_at(&self, rev: Rev) -> Option<&Event> {
        let first = self.history.front()?.0.rev;
        let index = usize::try_from(rev.0.checked_sub(first.0)?).ok()?;
        self.history.get(index).map(|(e, _)| e)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("rev", &self.rev())
            .field("head", &self.head)
            .field("history_revs", &self.history_revs)
            .finish()
    }
}

/// Reference §3.4 steps 3–7 with the CONTRACT §3 fixes. `Ok((None, _))` means
/// the tree is unchanged.
fn try_apply(
    root: &Dir,
    mutation: &Mutation,
    rev: Rev,
) -> Result<(Option<Dir>, Event), ApplyError> {
    match mutation {
        Mutation::Nop => Ok((
            None,
            Event {
                rev,
                path: Path::root(),
                body: empty_body(),
                kind: EventKind::Nop,
                error: None,
            },
        )),
        Mutation::Set { path, check, body } => {
            let comps: Vec<&str> = path.components().collect();
            let found = tree::lookup(root, comps.iter().copied());
            // Step 3: a proper ancestor that is a file (the one walk tells).
            if let Lookup::UnderFile = found {
                return Err(ApplyError::NotDir);
            }
            check_rev(current_rev(found), *check)?;
            let mut root = root.clone();
            tree::set(
                &mut root,
                &comps,
                Node::File {
                    body: body.clone(),
                    rev,
                },
            );
            let event = Event {
                rev,
                path: path.clone(),
                body: body.clone(),
                kind: EventKind::Set,
                error: None,
            };
            Ok((Some(root), event))
        }
        Mutation::Del { path, check } => {
            let comps: Vec<&str> = path.components().collect();
            // Below a file counts as absent (CONTRACT §3): nothing changes.
            let cur = current_rev(tree::lookup(root, comps.iter().copied()));
            check_rev(cur, *check)?;
            let new_root = (cur > 0).then(|| {
                let mut root = root.clone();
                tree::delete(&mut root, &comps);
                root
            });
            let event = Event {
                rev,
                path: path.clone(),
                body: empty_body(),
                kind: EventKind::Del,
                error: None,
            };
            Ok((new_root, event))
        }
    }
}

/// `cur` of reference §2.5: 0 absent, -2 directory, the file rev otherwise.
fn current_rev(lookup: Lookup<'_>) -> i64 {
    match lookup {
        Lookup::Absent | Lookup::UnderFile => 0,
        Lookup::Dir(_) => crate::types::sentinel::DIR,
        Lookup::File { rev, .. } => rev.0,
    }
}

/// Step 4: the rev check, then "a directory cannot be written".
fn check_rev(cur: i64, check: RevCheck) -> Result<(), ApplyError> {
    if !check.admits(cur) {
        Err(ApplyError::RevMismatch)
    } else if cur == crate::types::sentinel::DIR {
        Err(ApplyError::IsDir)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
