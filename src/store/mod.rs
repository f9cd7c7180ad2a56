//! The data store (reference §3, DESIGN.md §3): a pure state machine.
//!
//! [`Store::apply`] turns one decided [`Mutation`] into the next rev and an
//! [`Event`]; every node runs the same function on the same sequence, so replicas
//! are identical at every rev ([`Snapshot::digest`] compares them). Snapshots
//! share structure (a clone is O(1)); the history window keeps each rev's
//! event and what it replaced, and rebuilds an old rev when one is read
//! (see [`Store`]). No I/O, clock or randomness in here.

mod glob;
mod name;
mod tree;
pub mod watch;

use std::collections::VecDeque;
use std::fmt;
use std::ops::Bound;
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
    /// Not bounded: the core uses [`Snapshot::getdir_step`].
    pub fn getdir(&self, path: &Path, offset: i64) -> Result<String, ErrCode> {
        // The directory is checked before the offset (NOENT before RANGE).
        self.dir(path)?;
        let offset = u64::try_from(offset).map_err(|_| ErrCode::Range)?;
        let mut unlimited = u64::MAX;
        match self.getdir_step(path, Cursor::new(offset), &mut unlimited) {
            Step::Done(answer) => answer,
            Step::Paused(_) => unreachable!("an unlimited budget never runs out"),
        }
    }

    /// GETDIR, one bounded piece at a time: spends at most `budget` (plus
    /// one entry) of work, [`LIST_ENTRY_COST`] per entry passed, and answers
    /// or says where to go on. A cursor only makes sense with the snapshot
    /// (and the path) it was made on.
    pub fn getdir_step(
        &self,
        path: &Path,
        cursor: Cursor,
        budget: &mut u64,
    ) -> Step<Result<String, ErrCode>> {
        let dir = match self.dir(path) {
            Ok(dir) => dir,
            Err(code) => return Step::Done(Err(code)),
        };
        let mut left = cursor.left;
        let entries = match &cursor.at {
            None => dir.range::<_, str>(..),
            Some(at) => dir.range::<_, str>((Bound::Included(at.as_str()), Bound::Unbounded)),
        };
        for (name, _) in entries {
            if *budget == 0 {
                let at = Some(name.to_string());
                return Step::Paused(Cursor { left, at });
            }
            *budget = budget.saturating_sub(LIST_ENTRY_COST);
            if left == 0 {
                return Step::Done(Ok(name.to_string()));
            }
            left -= 1;
        }
        Step::Done(Err(ErrCode::Range))
    }

    /// WALK: the `offset`-th file (depth-first, each level sorted) whose path
    /// matches `glob`. Not bounded: the core uses [`Snapshot::walk_step`].
    pub fn walk(&self, glob: &Glob, offset: i64) -> Result<(Path, Rev, Body), ErrCode> {
        let offset = u64::try_from(offset).map_err(|_| ErrCode::Range)?;
        let mut unlimited = u64::MAX;
        match self.walk_step(glob, Cursor::new(offset), &mut unlimited) {
            Step::Done(answer) => answer,
            Step::Paused(_) => unreachable!("an unlimited budget never runs out"),
        }
    }

    /// WALK, one bounded piece at a time: a depth-first walk of the files
    /// matching `glob`, skipping every subtree no continuation of which can
    /// match, that examines at least one entry and spends at most `budget`
    /// (plus one entry and reopening the cursor's path) of work:
    /// [`LIST_ENTRY_COST`] per entry examined plus the glob's
    /// [`Glob::match_cost`] on its name. Answers, or says where to go on: a
    /// paused walk restarts at the path of the entry it was about to examine.
    ///
    /// Iterative: one stack entry per open directory (its remaining entries,
    /// the glob's state after its path and a `/`, and the length of its path
    /// in `base`), so a deep tree costs heap, not call stack.
    pub fn walk_step(
        &self,
        glob: &Glob,
        cursor: Cursor,
        budget: &mut u64,
    ) -> Step<Result<(Path, Rev, Body), ErrCode>> {
        let slash = glob.advance(&glob.start(), "/");
        if slash.is_dead() {
            return Step::Done(Err(ErrCode::Range));
        }
        let mut left = cursor.left;
        let mut base = String::new();
        let mut stack: Vec<(Entries<'_>, GlobState, usize)> = Vec::new();
        match &cursor.at {
            None => stack.push((self.root.range::<_, str>(..), slash, 0)),
            Some(at) => {
                // Reopen every directory on the way to `at`, each after the
                // entry that leads on, and the last one at `at` itself.
                let comps: Vec<&str> = at.split('/').skip(1).collect();
                let mut dir = &self.root;
                let mut state = slash;
                for (i, name) in comps.iter().enumerate() {
                    let last = i + 1 == comps.len();
                    let from = if last {
                        Bound::Included(*name)
                    } else {
                        Bound::Excluded(*name)
                    };
                    let entries = dir.range::<_, str>((from, Bound::Unbounded));
                    stack.push((entries, state.clone(), base.len()));
                    if last {
                        break;
                    }
                    base.push('/');
                    base.push_str(name);
                    *budget = budget.saturating_sub(glob.match_cost(name.len() + 1));
                    dir = match dir.get(*name) {
                        Some(Node::Dir(d)) => d,
                        _ => panic!("a walk cursor is used on the snapshot it was made on"),
                    };
                    state = glob.advance(&glob.advance(&state, name), "/");
                }
            }
        }
        let mut examined = false;
        while let Some((entries, state, len)) = stack.last_mut() {
            base.truncate(*len);
            let Some((name, node)) = entries.next() else {
                stack.pop();
                continue;
            };
            // At least one entry per piece, whatever reopening the path cost.
            if *budget == 0 && examined {
                base.push('/');
                base.push_str(name);
                return Step::Paused(Cursor {
                    left,
                    at: Some(base),
                });
            }
            examined = true;
            let cost = glob
                .match_cost(name.len() + 1)
                .saturating_add(LIST_ENTRY_COST);
            *budget = budget.saturating_sub(cost);
            let next = glob.advance(state, name);
            if next.is_dead() {
                continue;
            }
            base.push('/');
            base.push_str(name);
            match node {
                Node::File { body, rev } => {
                    if glob.accepts(&next) {
                        if left == 0 {
                            return Step::Done(Ok((Path::from_store(&base), *rev, body.clone())));
                        }
                        left -= 1;
                    }
                }
                Node::Dir(d) => {
                    let below = glob.advance(&next, "/");
                    if !below.is_dead() {
                        stack.push((d.range::<_, str>(..), below, base.len()));
                    }
                }
            }
        }
        Step::Done(Err(ErrCode::Range))
    }

    /// Every file, in walk order.
    pub fn files(&self) -> Vec<(Path, Rev, Body)> {
        let mut out = Vec::new();
        tree::for_each_file(&self.root, &mut String::new(), &mut |path, body, rev| {
            out.push((Path::from_store(path), rev, body.clone()));
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

/// The remaining entries of one open directory, in name order.
type Entries<'a> = imbl::ordmap::RangedIter<'a, Name, Node, imbl::shared_ptr::DefaultSharedPtr>;

/// The work of passing one entry in a listing (GETDIR, WALK), in the unit of
/// [`Glob::match_cost`]: stepping a tree iterator costs about as much as
/// a few steps of the glob matcher.
pub const LIST_ENTRY_COST: u64 = 8;

/// Where a bounded listing (GETDIR, WALK) goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Matching entries still to pass before the one answered.
    left: u64,
    /// The name (GETDIR) or path (WALK) of the next entry to examine;
    /// `None`: the start.
    at: Option<String>,
}

impl Cursor {
    /// The start of a listing asked for at `offset`.
    pub fn new(offset: u64) -> Cursor {
        Cursor {
            left: offset,
            at: None,
        }
    }
}

/// What one bounded piece of work came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    Done(T),
    /// The budget ran out: go on from here.
    Paused(Cursor),
}

/// What one piece of a WAIT scan over the history found ([`Store::scan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first matching event.
    Found(Event),
    /// Every event up to the current rev was examined: none matches.
    Exhausted,
    /// The budget ran out: continue from this rev.
    Paused(Rev),
}

/// The work of matching `glob` against one event of the history: the match
/// itself, and a constant for the step to the event.
pub fn scan_cost(glob: &Glob, event: &Event) -> u64 {
    glob.match_cost(event.path.as_str().len()).saturating_add(4)
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

/// The store: the current tree plus the events of the last `history_revs`
/// revs, each with what it replaced (its [`Undo`]).
///
/// Why undo records and not a snapshot per rev: a snapshot kept per rev
/// shares the current tree's nodes, so every write had to copy the nodes on
/// its path (a B-tree leaf of up to 64 entries per level) and keep the old
/// copies for the whole window; that was most of the time of a write and,
/// with the default `-hist`, megabytes of copies. Held alone, the current
/// tree is changed in place. An old rev is rebuilt on demand (a read at a
/// rev, rare) from a clone of a newer tree by undoing the revs in between,
/// newest first: at most `history_revs` undos, each one path walk (see
/// [`Store::snapshot_at`]).
pub struct Store {
    history_revs: usize,
    /// The oldest rev still readable (0 while nothing was ever dropped).
    head: Rev,
    current: Snapshot,
    /// Consecutive revs, oldest first, ending at `current.rev`: each event
    /// and how to undo it.
    history: VecDeque<(Event, Undo)>,
    /// The snapshot this store was started from (catch-up), kept readable
    /// while its rev is inside the history window: a node that just
    /// installed one answers reads at the rev it reports. Its event is not
    /// known, so WAIT still starts at `head`.
    base: Option<Snapshot>,
    /// The last old rev rebuilt for a read, kept so that the reads of one
    /// listing (GETDIR or WALK offset by offset, `doozer find`) at one rev
    /// rebuild it once; later ones at older revs start from it. Dropped
    /// when it leaves the history window. One tree version at most: the
    /// writes after it copy each node they touch once.
    rebuilt: Option<Snapshot>,
}

/// What one rev replaced, enough to turn the tree after it back into the
/// tree before it: the entry at the first `depth` components of `path` was
/// `old` (`None`: absent). That entry is the highest one the rev changed: a
/// file or directory it overwrote or removed (with the directories a delete
/// pruned), or the first directory a set created.
#[derive(Clone, Debug)]
struct Undo {
    path: Path,
    /// Components of `path` down to the entry changed; 0 when the rev
    /// changed nothing.
    depth: usize,
    old: Option<Node>,
}

impl Undo {
    fn nothing() -> Undo {
        Undo {
            path: Path::root(),
            depth: 0,
            old: None,
        }
    }

    /// Puts back, in the tree after the rev, what the rev replaced.
    fn revert(&self, root: &mut Dir) {
        if self.depth == 0 {
            return;
        }
        let comps: Vec<&str> = self.path.components().take(self.depth).collect();
        match &self.old {
            Some(node) => {
                tree::set(root, &comps, node.clone());
            }
            None => {
                tree::delete(root, &comps);
            }
        }
    }
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
            rebuilt: None,
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
            rebuilt: None,
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

    /// Applies `mutation` at `rev() + 1` and returns its event. The tree is
    /// changed in place: only nodes some snapshot still shares are copied.
    pub fn apply(&mut self, mutation: &Mutation) -> Event {
        let rev = self.rev().next();
        let root = &mut self.current.root;
        let (event, undo) = match apply_in_place(root, mutation, rev) {
            Ok(done) => done,
            Err(error) => {
                let body: Body = Arc::from(error.to_string().into_bytes());
                let path = Path::parse(ERR_PATH).expect("valid path");
                // Forced like the original's: replaces whatever is in the way.
                let (depth, old) = tree::set(
                    root,
                    &["ctl", "err"],
                    Node::File {
                        body: body.clone(),
                        rev,
                    },
                );
                let undo = Undo {
                    path: path.clone(),
                    depth,
                    old,
                };
                let event = Event {
                    rev,
                    path,
                    body,
                    kind: EventKind::Set,
                    error: Some(error),
                };
                (event, undo)
            }
        };
        self.current.rev = rev;
        self.history.push_back((event.clone(), undo));
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
        if self.rebuilt.as_ref().is_some_and(|r| r.rev.0 < keep_from) {
            self.rebuilt = None;
        }
        event
    }

    /// The index in `history` of `rev`, which must be in `head.max(1)..=rev()`.
    fn index(&self, rev: Rev) -> usize {
        let first = self.history.front().expect("history covers rev").0.rev;
        usize::try_from(rev.0 - first.0).expect("rev at or after the history start")
    }

    /// The store as it stood after `rev` (raised to at least 1).
    ///
    /// An older rev than the current one is rebuilt: a clone of the current
    /// tree, or of the last rev rebuilt when that is at or after `rev`
    /// (O(1) either way), with the revs after `rev` undone, newest first.
    /// That is at most `history_revs` undos, each a walk of one path that
    /// copies the nodes on it (the clone shares them), so the work is
    /// bounded by `-hist` times the path depth; repeated reads at one rev
    /// pay it once.
    pub fn snapshot_at(&mut self, rev: Rev) -> Result<Snapshot, ReadError> {
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
        let from = match &self.rebuilt {
            Some(rebuilt) if rebuilt.rev == rev => return Ok(rebuilt.clone()),
            Some(rebuilt) if rebuilt.rev > rev => rebuilt,
            _ => &self.current,
        };
        let mut root = from.root.clone();
        let undone = self.index(rev.next())..=self.index(from.rev);
        for (event, undo) in self.history.range(undone).rev() {
            assert!(event.rev > rev, "only revs after the one read are undone");
            undo.revert(&mut root);
        }
        let snapshot = Snapshot { rev, root };
        self.rebuilt = Some(snapshot.clone());
        Ok(snapshot)
    }
    /// WAIT over the history: the first event at or after `from` (raised to at
    /// least 1) whose path matches `glob`; `None` if there is none yet. Not
    /// bounded: the core uses [`Store::scan`].
    pub fn first_match(&self, glob: &Glob, from: Rev) -> Result<Option<Event>, ReadError> {
        let mut unlimited = u64::MAX;
        match self.scan(glob, from, &mut unlimited)? {
            Scan::Found(event) => Ok(Some(event)),
            Scan::Exhausted => Ok(None),
            Scan::Paused(_) => unreachable!("an unlimited budget never runs out"),
        }
    }

    /// WAIT over the history, one bounded piece at a time: looks for the first
    /// event at or after `from` (raised to at least 1) whose path matches
    /// `glob`, spending at most `budget` (plus one event's cost) of work, in
    /// the unit of [`Glob::match_cost`]; what was spent is taken off `budget`.
    /// Examines at least one event when `budget` is not zero. A scan paused
    /// at rev `r` continues with `from = r`; `TooLate` once the history
    /// moved past it.
    pub fn scan(&self, glob: &Glob, from: Rev, budget: &mut u64) -> Result<Scan, ReadError> {
        let from = Rev(from.0.max(1));
        if from < self.head {
            return Err(ReadError::TooLate);
        }
        if from > self.rev() {
            return Ok(Scan::Exhausted);
        }
        for (event, _) in self.history.range(self.index(from)..) {
            if *budget == 0 {
                return Ok(Scan::Paused(event.rev));
            }
            *budget = budget.saturating_sub(scan_cost(glob, event));
            if glob.matches(event.path.as_str()) {
                return Ok(Scan::Found(event.clone()));
            }
        }
        Ok(Scan::Exhausted)
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

/// Reference §3.4 steps 3–7 with the CONTRACT §3 fixes, on the tree in
/// place: the checks come first, so a failed mutation leaves `root` as it
/// was. Returns the event and how to undo it.
fn apply_in_place(
    root: &mut Dir,
    mutation: &Mutation,
    rev: Rev,
) -> Result<(Event, Undo), ApplyError> {
    match mutation {
        Mutation::Nop => Ok((
            Event {
                rev,
                path: Path::root(),
                body: empty_body(),
                kind: EventKind::Nop,
                error: None,
            },
            Undo::nothing(),
        )),
        Mutation::Set { path, check, body } => {
            let event = || Event {
                rev,
                path: path.clone(),
                body: body.clone(),
                kind: EventKind::Set,
                error: None,
            };
            // Overwriting a file, in one walk: only the file's own rev is
            // checked (no ancestor is a file, no directory is in the way).
            if let Some((file, depth)) = tree::file_mut(root, path.components()) {
                let Node::File { rev: cur, .. } = file else {
                    unreachable!("file_mut finds only files")
                };
                check_rev(cur.0, *check)?;
                let old = std::mem::replace(
                    file,
                    Node::File {
                        body: body.clone(),
                        rev,
                    },
                );
                let undo = Undo {
                    path: path.clone(),
                    depth,
                    old: Some(old),
                };
                return Ok((event(), undo));
            }
            let comps: Vec<&str> = path.components().collect();
            let found = tree::lookup(root, comps.iter().copied());
            // Step 3: a proper ancestor that is a file (the one walk tells).
            if let Lookup::UnderFile = found {
                return Err(ApplyError::NotDir);
            }
            check_rev(current_rev(found), *check)?;
            let (depth, old) = tree::set(
                root,
                &comps,
                Node::File {
                    body: body.clone(),
                    rev,
                },
            );
            let undo = Undo {
                path: path.clone(),
                depth,
                old,
            };
            Ok((event(), undo))
        }
        Mutation::Del { path, check } => {
            let comps: Vec<&str> = path.components().collect();
            // Below a file counts as absent (CONTRACT §3): nothing changes.
            let cur = current_rev(tree::lookup(root, comps.iter().copied()));
            check_rev(cur, *check)?;
            let undo = if cur > 0 {
                let (depth, old) = tree::delete(root, &comps);
                Undo {
                    path: path.clone(),
                    depth,
                    old,
                }
            } else {
                Undo::nothing()
            };
            let event = Event {
                rev,
                path: path.clone(),
                body: empty_body(),
                kind: EventKind::Del,
                error: None,
            };
            Ok((event, undo))
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
