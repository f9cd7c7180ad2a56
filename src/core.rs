//! The core: consensus, store and client sessions joined in one pure state
//! machine, driven by one thread.
//!
//! Every change of state goes through [`Core::handle`]: a typed input in,
//! outputs appended to a vector. The core never touches a socket, the clock
//! or an unseeded random generator, so a simulation can run many cores over a
//! fake network from one seed and replay any failure.
//!
//! Writes from clients become [`Decree`]s ordered by the Paxos engine; a lone
//! node is a quorum of one and takes the very same path. A write is answered
//! when the local store has applied its slot, so the writer reads its own write
//! on this node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::error::{ErrCode, ReplyError};
use crate::paxos::{self, Membership, Paxos, Slot};
use crate::store::{
    Cursor, Entry, Event, EventKind, Glob, Mutation, ReadError, Scan, Snapshot, Step, Store,
    WatchIndex,
};
use crate::types::{Body, NodeId, Path, Rev, RevCheck};

/// The version this server reports in `/ctl/node/<id>/version`, as the
/// original did (clients and operators compare it).
pub const NODE_VERSION: &str = "0.9.0-alpha";
/// The file in which the current leader names itself (our addition to the
/// original's `/ctl` layout).
pub const LEADER_PATH: &str = "/ctl/leader";

/// One client connection, as numbered by the runtime.
pub type ConnId = u64;

/// A validated client request, as the core sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Get {
        path: Path,
        rev: Option<i64>,
    },
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
    Rev,
    Wait {
        glob: Glob,
        rev: i64,
    },
    Walk {
        glob: Glob,
        offset: i64,
        rev: Option<i64>,
    },
    Getdir {
        path: Path,
        offset: i64,
        rev: Option<i64>,
    },
    /// `path` is `None` when the request's path fails the syntax check: the
    /// original answers such a STAT like an absent file.
    Stat {
        path: Option<Path>,
        rev: Option<i64>,
    },
    /// SNAPSHOT (our extension): the whole tree at `rev` (default: now),
    /// answered with [`Reply::Tree`]; the connection task streams it.
    Snapshot {
        rev: Option<i64>,
    },
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Only the tag (DEL, NOP).
    Done,
    /// `rev` alone (SET, REV).
    Rev(Rev),
    /// GET: the file's rev (0 when absent) and body.
    Value { rev: Rev, body: Body },
    /// WAIT and WALK: one event or file.
    Event {
        path: Path,
        rev: Rev,
        body: Body,
        kind: EventKind,
    },
    /// GETDIR: one entry name.
    Name(String),
    /// STAT: length and rev (-2 for a directory, 0 for absent).
    Stat { len: i64, rev: i64 },
    /// SNAPSHOT: the pinned tree (an O(1) clone). The core does no per-file
    /// work: the connection task walks and sends it, at the client's pace.
    Tree(Snapshot),
}

pub type Outcome = Result<Reply, ReplyError>;

/// What the core is fed.
#[derive(Clone, Debug)]
pub enum Input {
    Request {
        conn: ConnId,
        tag: Option<i32>,
        command: Command,
    },
    /// The connection is gone: forget its WAITs, parked reads and unanswered
    /// writes.
    ConnClosed { conn: ConnId },
    /// Time passed: this many units of the runtime's tick interval since the
    /// previous `Tick` (at least 1; the runtime measures it, so ticks it could
    /// not deliver while busy still count). The core adds it to its clock.
    Tick(u64),
    /// A message from another node. `from` is the id the link proved (or,
    /// without a peer key, claimed); `source` is the link's TCP source
    /// address (`None`: not known, as in the simulation), against which an
    /// address a stranger claims for itself is checked.
    Peer {
        from: NodeId,
        source: Option<std::net::IpAddr>,
        msg: PeerMsg,
    },
}

/// What the core asks the runtime to do.
#[derive(Clone, Debug)]
pub enum Output {
    Reply {
        conn: ConnId,
        tag: Option<i32>,
        outcome: Outcome,
    },
    /// A message for another node, reached at `addr` (its `-l` address).
    Peer {
        to: NodeId,
        addr: String,
        msg: PeerMsg,
    },
}

/// Everything nodes say to each other.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerMsg {
    /// The consensus engine's own traffic.
    Paxos(paxos::Msg<Decree>),
    /// Sent to the leader now and then by every other node: it is alive, has
    /// applied up to `applied` and listens on `addr` (which the leader may not
    /// know: a node it removed, or one attaching).
    Alive { applied: Rev, addr: String },
    /// Please send the decided slots from `from` on (or a snapshot), to
    /// `addr` (the asker may not be registered yet).
    CatchUp { from: Rev, addr: String },
    /// Decided slots `first..first + decrees.len()`.
    Decided { first: Rev, decrees: Vec<Decree> },
    /// The whole state at a rev, for a node too far behind for the log (an
    /// older form, still installed; senders now use `SnapshotChunk`).
    Snapshot(Box<SnapshotData>),
    /// An answer to `Alive` sent to a node that does not lead: who does.
    LeaderIs { leader: NodeId, addr: String },
    /// Please tell me the read index for the reads this node holds
    /// (`ask` numbers the request; see `core::reads`). `ballot` is the
    /// highest this node has promised: when it is the leader's and the
    /// asker votes, the ask itself confirms the leader (see
    /// `Paxos::read_index_confirmed_by`).
    ReadIndex { ask: u64, ballot: paxos::Ballot },
    /// The leader's answer to `ReadIndex`: the reads of `ask` may be
    /// answered once the asker applied `index`.
    ReadIndexIs { ask: u64, index: Rev },
    /// Chunk `index` (from 0) of the state at `data.rev`, for a node too far
    /// behind for the log: files in walk order, each chunk within the
    /// catch-up budget; `membership` and `dedupe` travel in the last one
    /// (`done`). The asker requests each next chunk with `SnapshotNext`.
    SnapshotChunk {
        index: u64,
        done: bool,
        data: Box<SnapshotData>,
    },
    /// Please send chunk `index` of the snapshot at `rev` you are streaming
    /// to me (pull pacing: one chunk in flight per asker).
    SnapshotNext { rev: Rev, index: u64 },
}

/// One node as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub addr: String,
    /// Its id is in a `/ctl/cal` slot.
    pub is_member: bool,
    /// The rev it last reported having applied (known to the leader; this
    /// node's own always).
    pub applied: Option<Rev>,
    /// Milliseconds since the leader last heard from it (known only on the
    /// leader).
    pub heard_ms_ago: Option<u64>,
}

/// What a node knows of its cluster, published for the web view and stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub id: NodeId,
    pub cluster_name: String,
    pub rev: Rev,
    /// The oldest rev still readable.
    pub history_start: Rev,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub is_member: bool,
    pub writable: bool,
    /// Every `/ctl/cal` slot: its name and the member in it (`None`: free).
    pub cal: Vec<(String, Option<NodeId>)>,
    /// Every registered node.
    pub nodes: Vec<NodeView>,
    pub pending_writes: usize,
    pub waiting: usize,
    /// Peer messages refused since start (see [`Core::refused`]).
    pub refused_peer_msgs: u64,
}

/// A node's replicated state at one rev: enough to continue from `rev + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotData {
    pub rev: Rev,
    /// Every file: path, file rev, body.
    pub files: Vec<(Path, Rev, Body)>,
    /// Voter sets: (first slot governed, voters).
    pub membership: Vec<(Slot, Vec<NodeId>)>,
    /// Per origin: the floor below which every write was applied, the
    /// writes at or above it that were, and the rev of its last write
    /// (which decides when the entry is pruned, identically everywhere).
    pub dedupe: Vec<(NodeId, u64, Vec<u64>, Rev)>,
}

/// The value of one consensus slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Decree {
    /// A hole filled by a new leader.
    Fill,
    /// A mutation proposed by `origin`, which answers its client when it
    /// applies the slot.
    Write {
        origin: NodeId,
        seq: u64,
        /// Every write of `origin` below this seq was already answered, so
        /// replicas may forget them when looking for duplicates.
        floor: u64,
        mutation: Mutation,
    },
}

impl paxos::Value for Decree {
    fn nop() -> Self {
        Decree::Fill
    }

    /// An upper bound of its encoded size (varint fields at their widest),
    /// known before encoding: batches, catch-up answers and slave streams
    /// are cut by it so that no message outgrows the peer frame cap.
    fn size(&self) -> usize {
        match self {
            Decree::Fill => 8,
            Decree::Write {
                origin, mutation, ..
            } => {
                // Tags, seq, floor, check and length prefixes: at most 9
                // bytes each.
                96 + origin.as_str().len()
                    + match mutation {
                        Mutation::Set { path, body, .. } => path.as_str().len() + body.len(),
                        Mutation::Del { path, .. } => path.as_str().len(),
                        Mutation::Nop => 0,
                    }
            }
        }
    }
}

/// Who learns the result of a write proposed here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposer {
    Client {
        conn: ConnId,
        tag: Option<i32>,
    },
    Pulse,
    /// The node's own `/ctl` entries (seed bootstrap, attach, re-attach).
    Register,
    /// A slave claiming an empty `/ctl/cal` slot.
    Claim,
    /// The leader removing a silent node.
    Removal,
    /// The leader naming itself in `/ctl/leader`.
    Leader,
}

/// A write proposed here and not applied yet.
#[derive(Clone, Debug)]
struct Pending {
    proposer: Proposer,
    decree: Decree,
    /// The leader it was last handed to (`None`: not handed to anyone yet),
    /// and when.
    sent_to: Option<NodeId>,
    sent_tick: u64,
}

/// This node's identity, written under `/ctl/node/<id>`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: String,
    pub hostname: String,
    pub cluster_name: String,
    /// Whether the seed lists itself under `/ctl/ns/<name>` in its own store
    /// (not when booted through a DzNS, which keeps that list instead).
    pub register_ns: bool,
}

/// The core's settings, in ticks and counts.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub history_revs: usize,
    pub pulse_ticks: u64,
    /// A node unheard of for this long is removed by the leader.
    pub timeout_ticks: u64,
    pub max_value_bytes: usize,
    /// Writes proposed here and not yet applied; past it, `OTHER busy`.
    pub max_pending_writes: usize,
    /// The largest peer frame a link sends (`Limits::max_peer_frame_bytes`):
    /// catch-up answers, snapshot chunks and slave streams are cut to a
    /// fraction of it ([`Core::catch_up_budget`]).
    pub max_peer_frame_bytes: usize,
    pub paxos: paxos::Settings,
    /// Answer reads from this node's copy at once, without a read index
    /// (`-local-reads`: faster, may be stale; see `core::reads`).
    pub local_reads: bool,
    /// A read that finds no confirmed leader for this long gets an error.
    pub read_timeout_ticks: u64,
    /// Seeds the election-timeout randomness.
    pub seed: u64,
}

/// A read waiting for the store to reach the rev it names.
#[derive(Clone, Debug)]
struct ParkedRead {
    conn: ConnId,
    tag: Option<i32>,
    command: Command,
    /// When it arrived (reads waiting for an index give up after
    /// `read_timeout_ticks`).
    since_tick: u64,
    /// Its read index is known and was reached (or it needs none): it is
    /// answered from the current store.
    indexed: bool,
}

/// Key of a registered WAIT or of a request's unfinished work: the
/// connection first, so a closed connection's are one range.
type WaitKey = (ConnId, u64);

/// A request whose work goes on over several batches.
#[derive(Clone, Debug)]
enum Job {
    Wait(Scanning),
    List(Listing),
}

/// A GETDIR or WALK still looking for its entry.
#[derive(Clone, Debug)]
struct Listing {
    tag: Option<i32>,
    /// The tree it reads (pinned: later writes do not change the answer).
    snapshot: Snapshot,
    what: ListWhat,
    cursor: Cursor,
}

#[derive(Clone, Debug)]
enum ListWhat {
    Getdir(Path),
    Walk(Glob),
}

/// A WAIT still scanning the history for its first match.
#[derive(Clone, Debug)]
struct Scanning {
    tag: Option<i32>,
    glob: Glob,
    /// The rev the WAIT asked for (at least 1).
    from: Rev,
    /// The next rev to examine.
    next: Rev,
}

/// The work that WAIT scans of the history and listings (GETDIR, WALK) may
/// do per batch, in the unit of [`Glob::match_cost`] (steps over 64-bit
/// words of glob state, 1–3 ns each): a batch spends at most this plus one
/// event's or entry's cost (at most ~270,000 with paths and globs at their
/// byte limits) on them, so about a millisecond at most however long the
/// globs, the history or the directories are.
///
/// A WAIT from an old rev used to match its glob against every event of the
/// history at once, on the thread that orders writes: with a long glob that
/// took seconds, during which no other client was answered (issue 9, attack
/// 3); a WALK or GETDIR at a high offset walks that many entries. Now work
/// that runs out of budget is kept and continued in the next batches, round
/// robin with the rest; the event loop does not sleep while some is
/// unfinished ([`Core::has_unfinished_work`]). An ordinary request (a short
/// glob, a few hundred events back, a few thousand entries) still finishes
/// in its own batch.
pub const BATCH_WORK_BUDGET: u64 = 1 << 18;

/// Where a node is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Attaching: waiting for a snapshot from `target`.
    Joining { target: NodeId, target_addr: String },
    /// Has a copy of the store and follows the log.
    Running,
}

/// Writes of one origin already applied, to drop a write proposed twice (an
/// origin proposes again when a leader may have lost it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Applied {
    /// Every write below this seq was applied.
    floor: u64,
    /// Writes at or above the floor that were applied.
    seqs: BTreeSet<u64>,
    /// The rev of the last write of this origin (applied or dropped as a
    /// duplicate): see [`Core::prune_origins`].
    last: Rev,
}

pub struct Core {
    node: NodeInfo,
    config: CoreConfig,
    store: Store,
    paxos: Paxos<Decree>,
    phase: Phase,
    next_seq: u64,
    pending_writes: BTreeMap<u64, Pending>,
    /// The leader pending writes were last handed to.
    last_leader: Option<NodeId>,
    waits: WatchIndex<WaitKey>,
    wait_tags: BTreeMap<WaitKey, Option<i32>>,
    next_wait: u64,
    /// WAITs whose history scan is unfinished, continued in later batches.
    jobs: BTreeMap<WaitKey, Job>,
    /// Scan work left in this batch (see [`BATCH_WORK_BUDGET`]).
    work_budget: u64,
    /// The scan continued last, so that the next batch starts after it.
    job_cursor: Option<WaitKey>,
    parked_reads: BTreeMap<Rev, Vec<ParkedRead>>,
    /// The core's clock, in ticks, and its value before the latest `Tick`
    /// (a periodic duty is due when the clock crossed a multiple of its
    /// period: one `Tick` may advance it by many).
    ticks: u64,
    ticks_before: u64,
    /// Housekeeping is due at the next tick, not at its period: the member
    /// slots changed (a slave may claim one), or this node was removed (it
    /// registers again), or it just started running.
    housekeeping_soon: bool,
    last_pulse_tick: u64,
    /// Decided slots kept to serve other nodes' catch-up (the last
    /// `history_revs`).
    decided_log: VecDeque<(Rev, Decree)>,
    /// Slots applied in this batch, streamed to slaves by the leader.
    newly_applied: Vec<(Rev, Decree)>,
    applied_writes: BTreeMap<NodeId, Applied>,
    /// Every node with an `/ctl/node/<id>/addr`, and that address.
    nodes: BTreeMap<NodeId, String>,
    /// The voters in `/ctl/cal` as of the current rev.
    cal: BTreeSet<NodeId>,
    /// Leader: when each node was last heard from; when this node took over.
    last_heard: BTreeMap<NodeId, u64>,
    lead_since: Option<u64>,
    /// Leader: nodes whose removal is in flight, and since when.
    removing: BTreeMap<NodeId, u64>,
    /// Each node's applied rev, as it last told the leader.
    applied_of: BTreeMap<NodeId, Rev>,
    /// The catch-up request in flight: asked whom, when.
    catch_up: Option<(NodeId, u64)>,
    /// Every node asked for catch-up lately, and when: their answers are
    /// taken for [`CATCH_UP_ANSWER_TICKS`] (a large answer may arrive after
    /// the request was sent again elsewhere). Holds only nodes this node
    /// chose to ask, so it is as small as the cluster.
    asked_catch_up: BTreeMap<NodeId, u64>,
    /// Addresses of nodes not (yet) registered that asked for catch-up.
    unregistered: BTreeMap<NodeId, String>,
    /// Who another node says leads (and when it said so), when the engine
    /// does not know yet.
    leader_hint: Option<(NodeId, u64)>,
    /// The last node known to be ahead of this one.
    catch_up_source: Option<NodeId>,
    /// Peer messages refused (see `on_peer`), for the node's metrics.
    refused: u64,
    /// This node's own origin had a dedupe entry at some point (so its
    /// absence now means the entry was pruned, not that none existed yet).
    origin_seen: bool,
    /// Snapshots being streamed to nodes that asked, by asker (at most
    /// [`MAX_SNAPSHOT_STREAMS`]).
    streams: BTreeMap<NodeId, cluster::SnapshotStream>,
    /// The snapshot being received, chunk by chunk.
    assembly: Option<cluster::Assembly>,
    /// Durable records of the batch (decided slots; the engine keeps the
    /// acceptor's), when this node has a data dir.
    durable: Option<Vec<durable::Durable>>,
    /// A snapshot was installed since the runtime last asked.
    installed: bool,
    /// Reads waiting for their read index.
    reads: reads::ReadIndexState,
}

/// Ticks between a joining node's snapshot requests, and the least between
/// a running node's `Alive` messages, claim attempts and other housekeeping
/// (see `Core::housekeeping_ticks`).
const HOUSEKEEPING_TICKS: u64 = 20;
/// The most ticks between a running node's housekeeping rounds (1 s at the
/// default 5 ms tick).
const MAX_HOUSEKEEPING_TICKS: u64 = 200;
/// How long an answer to a catch-up request is taken from the node asked
/// (`Decided` and `Snapshot` from a node not asked that lately are refused).
const CATCH_UP_ANSWER_TICKS: u64 = 10 * HOUSEKEEPING_TICKS;
/// The largest catch-up answer, snapshot chunk or slave stream message, in
/// bytes of its contents, whatever the frame cap (a quarter of the cap when
/// that is smaller): small enough that one crosses a loopback or LAN link
/// well within [`CATCH_UP_TICKS`], large enough to amortise a round trip.
/// A single decree larger than it still travels alone.
const CATCH_UP_BYTES: usize = 8 << 20;
/// How long the next chunk of a snapshot may take before this node asks for
/// it again (a log answer gets [`HOUSEKEEPING_TICKS`]).
const CATCH_UP_TICKS: u64 = 40;
/// Times the next chunk of a snapshot is asked for again before the
/// snapshot is given up and asked for anew.
const SNAPSHOT_RETRIES: u32 = 3;
/// Snapshots streamed at once; a further asker replaces the stream that was
/// idle longest.
const MAX_SNAPSHOT_STREAMS: usize = 8;
/// A snapshot stream nobody asked the next chunk of for this long is
/// dropped (the asker starts over).
const SNAPSHOT_STREAM_TICKS: u64 = 2000;
/// The largest snapshot this node assembles, in bytes of paths and bodies;
/// a larger one is dropped (logged) and the node stays behind. Far above
/// any store a coordination service holds, it only stops a peer from
/// growing this node without end.
const MAX_SNAPSHOT_BYTES: usize = 16 << 30;
/// Unregistered nodes (attaching) whose address is remembered; past it the
/// oldest is forgotten.
const MAX_UNREGISTERED: usize = 64;
/// The dedupe state is pruned at revs that are multiples of this (see
/// [`Core::prune_origins`]).
const PRUNE_EVERY_REVS: i64 = 64;
/// An unregistered origin's dedupe entry is dropped once its last write is
/// this many revs old (see [`Core::prune_origins`]). Far beyond any queue a
/// write can wait in, yet a bound: origins churn by restarts, not by writes.
pub const ORIGIN_IDLE_REVS: i64 = 100_000;

impl Core {
    fn new(node: NodeInfo, config: CoreConfig, membership: Membership, phase: Phase) -> Core {
        let paxos = Paxos::new(
            node.id.clone(),
            membership,
            1,
            config.paxos.clone(),
            config.seed,
        );
        let store = Store::new(config.history_revs);
        Core {
            node,
            config,
            store,
            paxos,
            phase,
            next_seq: 1,
            pending_writes: BTreeMap::new(),
            last_leader: None,
            waits: WatchIndex::new(),
            wait_tags: BTreeMap::new(),
            next_wait: 0,
            jobs: BTreeMap::new(),
            work_budget: BATCH_WORK_BUDGET,
            job_cursor: None,
            parked_reads: BTreeMap::new(),
            ticks: 0,
            ticks_before: 0,
            housekeeping_soon: false,
            last_pulse_tick: 0,
            decided_log: VecDeque::new(),
            newly_applied: Vec::new(),
            applied_writes: BTreeMap::new(),
            nodes: BTreeMap::new(),
            cal: BTreeSet::new(),
            last_heard: BTreeMap::new(),
            lead_since: None,
            removing: BTreeMap::new(),
            applied_of: BTreeMap::new(),
            catch_up: None,
            asked_catch_up: BTreeMap::new(),
            unregistered: BTreeMap::new(),
            leader_hint: None,
            catch_up_source: None,
            refused: 0,
            origin_seen: false,
            streams: BTreeMap::new(),
            assembly: None,
            durable: None,
            installed: false,
            reads: reads::ReadIndexState::default(),
        }
    }

    /// A node that founds a new cluster: the only member, leader at once, with
    /// its `/ctl` entries as the first slots.
    pub fn seed(node: NodeInfo, config: CoreConfig) -> Core {
        let membership = Membership::new(BTreeSet::from([node.id.clone()]));
        let mut core = Core::new(node, config, membership, Phase::Running);
        let mut sent = Vec::new();
        core.paxos.start_election(&mut sent);
        debug_assert!(sent.is_empty(), "a lone seed has nobody to talk to");
        let mut out = Vec::new();
        let name = Mutation::Set {
            path: Path::parse("/ctl/name").expect("valid"),
            check: RevCheck::NotOlderThan(0),
            body: Body::from(core.node.cluster_name.clone().into_bytes()),
        };
        core.propose(Proposer::Register, name);
        for mutation in core.registration(RevCheck::NotOlderThan(0)) {
            core.propose(Proposer::Register, mutation);
        }
        core.end_batch(&mut out);
        debug_assert!(out.is_empty(), "a lone seed has nobody to talk to");
        core
    }

    /// A node attaching to the cluster that `target` (at `target_addr`) is a
    /// member of. It asks `target` for a snapshot, then follows the log as a
    /// slave and claims an empty `/ctl/cal` slot when one appears.
    pub fn join(node: NodeInfo, config: CoreConfig, target: NodeId, target_addr: String) -> Core {
        let membership = Membership::new(BTreeSet::from([target.clone()]));
        Core::new(
            node,
            config,
            membership,
            Phase::Joining {
                target,
                target_addr,
            },
        )
    }

    /// This node's `/ctl/node/<id>` entries (and the seed's cal slot and ns
    /// entry).
    fn registration(&self, check: RevCheck) -> Vec<Mutation> {
        let node = &self.node;
        let id = node.id.as_str();
        let mut files = vec![
            (format!("/ctl/node/{id}/addr"), node.addr.clone()),
            (format!("/ctl/node/{id}/hostname"), node.hostname.clone()),
            (format!("/ctl/node/{id}/version"), NODE_VERSION.to_string()),
        ];
        if self.store.rev() == Rev::ZERO {
            files.push(("/ctl/cal/0".to_string(), id.to_string()));
            if node.register_ns {
                files.push((
                    format!("/ctl/ns/{}/{id}", node.cluster_name),
                    node.addr.clone(),
                ));
            }
        }
        files.push((format!("/ctl/node/{id}/writable"), "true".to_string()));
        // As the original, `applied` exists from the start (the pulse then
        // rewrites it every -pulse).
        files.push((
            format!("/ctl/node/{id}/applied"),
            self.store.rev().to_string(),
        ));
        files
            .into_iter()
            .filter_map(|(path, body)| {
                // A cluster name that is not a valid path component cannot be
                // listed under /ctl/ns; the rest still works.
                let path = Path::parse(&path).ok()?;
                Some(Mutation::Set {
                    path,
                    check,
                    body: Body::from(body.into_bytes()),
                })
            })
            .collect()
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether this node takes writes now (it has a copy of the store).
    pub fn is_writable(&self) -> bool {
        self.phase == Phase::Running
    }

    pub fn is_leader(&self) -> bool {
        self.paxos.is_leader()
    }

    pub fn leader(&self) -> Option<&NodeId> {
        self.paxos.leader()
    }

    /// Peer messages refused since start (not from this cluster, not asked
    /// for, out of range or contradicting what this node knows), for
    /// `/metrics`.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Unanswered WAITs (registered or still scanning), for the node's stats.
    pub fn waiting(&self) -> usize {
        let scanning = self.jobs.values().filter(|job| matches!(job, Job::Wait(_)));
        self.wait_tags.len() + scanning.count()
    }

    /// Whether a request's work (a WAIT's scan of the history, a listing)
    /// is unfinished: the runtime then ends another batch without waiting
    /// for input, to continue it.
    pub fn has_unfinished_work(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Handles one input; outputs are appended to `out`.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Request { conn, tag, command } => self.on_request(conn, tag, command, out),
            Input::ConnClosed { conn } => self.on_conn_closed(conn),
            Input::Tick(elapsed) => self.on_tick(elapsed, out),
            Input::Peer { from, source, msg } => self.on_peer(from, source, msg, out),
        }
    }

    /// Ends a batch of inputs: sends what was proposed during it as one
    /// message, applies whatever got decided, and streams it to slaves.
    pub fn end_batch(&mut self, out: &mut Vec<Output>) {
        self.route_reads(out);
        let mut sent = Vec::new();
        self.paxos.flush(&mut sent);
        self.push_peer(sent, out);
        self.apply_decided(out);
        // Applying may have made room in the window (or changed the voters).
        let mut sent = Vec::new();
        self.paxos.flush(&mut sent);
        self.push_peer(sent, out);
        self.stream_to_slaves(out);
        self.settle_reads(out);
        self.continue_jobs(out);
        self.work_budget = BATCH_WORK_BUDGET;
    }

    /// Continues unfinished work with what is left of this batch's budget,
    /// round robin from the job after the last continued.
    fn continue_jobs(&mut self, out: &mut Vec<Output>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let keys: Vec<WaitKey> = match self.job_cursor {
            None => self.jobs.keys().copied().collect(),
            Some(cursor) => self
                .jobs
                .range((Excluded(cursor), Unbounded))
                .chain(self.jobs.range(..=cursor))
                .map(|(key, _)| *key)
                .collect(),
        };
        for key in keys {
            if self.work_budget == 0 {
                break;
            }
            if let Some(job) = self.jobs.remove(&key) {
                self.job_cursor = Some(key);
                match job {
                    Job::Wait(scan) => self.scan_wait(key, scan, out),
                    Job::List(listing) => self.list(key, listing, out),
                }
            }
        }
    }

    /// Runs a WAIT's scan of the history on this batch's budget: answers it,
    /// registers it for future events once the scan reached the current rev,
    /// or keeps it for the next batch.
    fn scan_wait(&mut self, key: WaitKey, mut scan: Scanning, out: &mut Vec<Output>) {
        let (conn, tag) = (key.0, scan.tag);
        match self
            .store
            .scan(&scan.glob, scan.next, &mut self.work_budget)
        {
            Ok(Scan::Found(event)) => out.push(Output::Reply {
                conn,
                tag,
                outcome: Ok(event_reply(&event)),
            }),
            Ok(Scan::Exhausted) => {
                // Every event up to the current rev was examined; later ones
                // go through the index as they are applied.
                self.waits.insert(key, scan.glob, scan.from);
                self.wait_tags.insert(key, tag);
            }
            Ok(Scan::Paused(next)) => {
                scan.next = next;
                self.jobs.insert(key, Job::Wait(scan));
            }
            Err(_) => out.push(Output::Reply {
                conn,
                tag,
                outcome: Err(ErrCode::TooLate.into()),
            }),
        }
    }

    /// Runs a GETDIR or WALK on this batch's budget: answers it or keeps it
    /// for the next batch.
    fn list(&mut self, key: WaitKey, mut listing: Listing, out: &mut Vec<Output>) {
        let budget = &mut self.work_budget;
        let cursor = listing.cursor.clone();
        let step = match &listing.what {
            ListWhat::Getdir(path) => match listing.snapshot.getdir_step(path, cursor, budget) {
                Step::Done(answer) => Step::Done(answer.map(Reply::Name)),
                Step::Paused(cursor) => Step::Paused(cursor),
            },
            ListWhat::Walk(glob) => match listing.snapshot.walk_step(glob, cursor, budget) {
                Step::Done(answer) => Step::Done(answer.map(|(path, rev, body)| Reply::Event {
                    path,
                    rev,
                    body,
                    kind: EventKind::Set,
                })),
                Step::Paused(cursor) => Step::Paused(cursor),
            },
        };
        match step {
            Step::Done(answer) => out.push(Output::Reply {
                conn: key.0,
                tag: listing.tag,
                outcome: answer.map_err(ReplyError::code),
            }),
            Step::Paused(cursor) => {
                listing.cursor = cursor;
                self.jobs.insert(key, Job::List(listing));
            }
        }
    }

    fn on_request(
        &mut self,
        conn: ConnId,
        tag: Option<i32>,
        command: Command,
        out: &mut Vec<Output>,
    ) {
        let reply = |outcome: Outcome, out: &mut Vec<Output>| {
            out.push(Output::Reply { conn, tag, outcome })
        };
        match command {
            Command::Set { path, check, body } => {
                if body.len() > self.config.max_value_bytes {
                    return reply(Err(ReplyError::value_too_large()), out);
                }
                self.submit_write(conn, tag, Mutation::Set { path, check, body }, out);
            }
            Command::Del { path, check } => {
                self.submit_write(conn, tag, Mutation::Del { path, check }, out)
            }
            Command::Nop => self.submit_write(conn, tag, Mutation::Nop, out),
            Command::Wait { glob, rev } => {
                let key = (conn, self.next_wait);
                self.next_wait += 1;
                let from = Rev(rev.max(1));
                let scan = Scanning {
                    tag,
                    glob,
                    from,
                    next: from,
                };
                self.scan_wait(key, scan, out);
            }
            read => self.read(
                ParkedRead {
                    conn,
                    tag,
                    command: read,
                    since_tick: self.ticks,
                    indexed: self.config.local_reads,
                },
                out,
            ),
        }
    }

    fn submit_write(
        &mut self,
        conn: ConnId,
        tag: Option<i32>,
        mutation: Mutation,
        out: &mut Vec<Output>,
    ) {
        if !self.is_writable() {
            let outcome = Err(ErrCode::Readonly.into());
            return out.push(Output::Reply { conn, tag, outcome });
        }
        if self.pending_writes.len() >= self.config.max_pending_writes {
            let outcome = Err(ReplyError::busy());
            return out.push(Output::Reply { conn, tag, outcome });
        }
        self.propose(Proposer::Client { conn, tag }, mutation);
    }

    /// Hands a write to the engine (queued here when leading, forwarded
    /// otherwise). Without a known leader it waits in `pending_writes` and
    /// is handed over once one is known.
    fn propose(&mut self, proposer: Proposer, mutation: Mutation) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let floor = self.pending_writes.keys().next().copied().unwrap_or(seq);
        let decree = Decree::Write {
            origin: self.node.id.clone(),
            seq,
            floor,
            mutation,
        };
        self.pending_writes.insert(
            seq,
            Pending {
                proposer,
                decree,
                sent_to: None,
                sent_tick: self.ticks,
            },
        );
        self.send_pending(seq);
    }

    fn send_pending(&mut self, seq: u64) {
        let leader = self.paxos.leader().cloned();
        // Until this node is registered (attaching, or back after it was
        // removed), only its registration goes out: leaders refuse anything
        // else from a node they do not know, and a removed node's old writes
        // must not be sent blindly (see `prune_origins`). The rest waits here
        // and goes out at the next housekeeping after registration.
        let hold = !self.nodes.contains_key(&self.node.id)
            && leader.as_ref() != Some(&self.node.id)
            && self
                .pending_writes
                .get(&seq)
                .is_some_and(|p| !registers(&p.decree, &self.node.id));
        if hold {
            return;
        }
        let Some(pending) = self.pending_writes.get_mut(&seq) else {
            return;
        };
        if self.paxos.propose(pending.decree.clone()).is_ok() {
            pending.sent_to = leader;
            pending.sent_tick = self.ticks;
        }
    }

    /// Answers a read now, holds it for its read index (see
    /// `core::reads`), or parks it until the store reaches its rev.
    fn read(&mut self, read: ParkedRead, out: &mut Vec<Output>) {
        if !read.indexed && reads::needs_index(&read.command) {
            return self.hold_for_index(read);
        }
        let rev = match &read.command {
            Command::Get { rev, .. }
            | Command::Walk { rev, .. }
            | Command::Getdir { rev, .. }
            | Command::Stat { rev, .. }
            | Command::Snapshot { rev } => *rev,
            _ => None,
        };
        let snapshot = match rev {
            None => Ok(self.store.current().clone()),
            Some(rev) => self.store.snapshot_at(Rev(rev.max(1))),
        };
        let outcome = match snapshot {
            Ok(snapshot) => {
                let (what, offset) = match read.command {
                    Command::Getdir { path, offset, .. } => (ListWhat::Getdir(path), offset),
                    Command::Walk { glob, offset, .. } => (ListWhat::Walk(glob), offset),
                    command => {
                        let outcome = answer_read(&snapshot, &command);
                        let (conn, tag) = (read.conn, read.tag);
                        return out.push(Output::Reply { conn, tag, outcome });
                    }
                };
                let Ok(offset) = u64::try_from(offset) else {
                    // Answered at once, in the unbounded listings' order of
                    // checks (GETDIR: the directory before the offset).
                    let outcome = match &what {
                        ListWhat::Getdir(path) => snapshot.getdir(path, offset).map(Reply::Name),
                        ListWhat::Walk(_) => Err(ErrCode::Range),
                    };
                    let outcome = outcome.map_err(ReplyError::code);
                    let (conn, tag) = (read.conn, read.tag);
                    return out.push(Output::Reply { conn, tag, outcome });
                };
                let key = (read.conn, self.next_wait);
                self.next_wait += 1;
                let listing = Listing {
                    tag: read.tag,
                    snapshot,
                    what,
                    cursor: Cursor::new(offset),
                };
                return self.list(key, listing, out);
            }
            Err(ReadError::TooLate) => Err(ErrCode::TooLate.into()),
            Err(ReadError::Future) => {
                let rev = Rev(rev.unwrap_or(0).max(1));
                self.parked_reads.entry(rev).or_default().push(read);
                return;
            }
        };
        out.push(Output::Reply {
            conn: read.conn,
            tag: read.tag,
            outcome,
        });
    }

    fn on_conn_closed(&mut self, conn: ConnId) {
        let keys: Vec<WaitKey> = self
            .wait_tags
            .range((conn, 0)..=(conn, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.waits.remove(&key);
            self.wait_tags.remove(&key);
        }
        self.jobs.retain(|key, _| key.0 != conn);
        for reads in self.parked_reads.values_mut() {
            reads.retain(|read| read.conn != conn);
        }
        self.parked_reads.retain(|_, reads| !reads.is_empty());
        self.forget_reads_of(conn);
        // Writes not yet handed to a leader are dropped; the others still get
        // decided (they may already be chosen), but nobody is told.
        self.pending_writes
            .retain(|_, pending| match pending.proposer {
                Proposer::Client { conn: c, .. } => c != conn,
                _ => true,
            });
    }

    fn push_peer(&self, sent: Vec<(NodeId, paxos::Msg<Decree>)>, out: &mut Vec<Output>) {
        for (to, msg) in sent {
            self.send_peer(to, PeerMsg::Paxos(msg), out);
        }
    }

    fn send_peer(&self, to: NodeId, msg: PeerMsg, out: &mut Vec<Output>) {
        let addr = match (self.nodes.get(&to), self.unregistered.get(&to), &self.phase) {
            (Some(addr), _, _) | (None, Some(addr), _) => addr.clone(),
            (
                None,
                None,
                Phase::Joining {
                    target,
                    target_addr,
                },
            ) if *target == to => target_addr.clone(),
            _ => {
                log::debug!("no address known for {to}; message dropped");
                return;
            }
        };
        out.push(Output::Peer { to, addr, msg });
    }

    /// Applies every slot the engine has decided, in order, and answers
    /// whoever waited for them.
    fn apply_decided(&mut self, out: &mut Vec<Output>) {
        let mut stream_to_slaves = None;
        while let Some((slot, decree)) = self.paxos.take_decided() {
            let stream = *stream_to_slaves
                .get_or_insert_with(|| self.paxos.is_leader() && !self.slaves().is_empty());
            self.apply(Rev(slot), decree, stream, out);
        }
        if stream_to_slaves.is_some() {
            self.paxos.prune_membership();
        }
    }

    fn apply(&mut self, rev: Rev, decree: Decree, stream_to_slaves: bool, out: &mut Vec<Output>) {
        assert_eq!(
            rev,
            self.store.rev().next(),
            "slots are applied in order without gaps"
        );
        let (event, mine) = match &decree {
            Decree::Fill => (self.store.apply(&Mutation::Nop), None),
            Decree::Write {
                origin,
                seq,
                floor,
                mutation,
            } => {
                let applied = self.applied_writes.entry(origin.clone()).or_default();
                applied.last = rev;
                if *floor > applied.floor {
                    applied.floor = *floor;
                    while applied.seqs.first().is_some_and(|seq| seq < floor) {
                        applied.seqs.pop_first();
                    }
                }
                let duplicate = *seq < applied.floor || !applied.seqs.insert(*seq);
                let event = if duplicate {
                    self.store.apply(&Mutation::Nop)
                } else {
                    self.store.apply(mutation)
                };
                if *origin == self.node.id {
                    self.origin_seen = true;
                }
                let mine = (*origin == self.node.id && !duplicate).then_some(*seq);
                (event, mine)
            }
        };
        self.record_decided(rev, &decree);
        // Streamed to slaves at the end of the batch.
        if stream_to_slaves {
            self.newly_applied.push((rev, decree.clone()));
        }
        self.decided_log.push_back((rev, decree));
        while self.decided_log.len() > self.config.history_revs {
            self.decided_log.pop_front();
        }
        if let Some(pending) = mine.and_then(|seq| self.pending_writes.remove(&seq)) {
            self.answer_write(pending.proposer, &event, out);
        }
        self.observe(&event);
        for key in self.waits.take_matches(&event) {
            if let Some(tag) = self.wait_tags.remove(&key) {
                out.push(Output::Reply {
                    conn: key.0,
                    tag,
                    outcome: Ok(event_reply(&event)),
                });
            }
        }
        if rev.0 % PRUNE_EVERY_REVS == 0 {
            self.prune_origins(rev, out);
        }
        let due: Vec<Rev> = self
            .parked_reads
            .range(..=event.rev)
            .map(|(rev, _)| *rev)
            .collect();
        for rev in due {
            for read in self.parked_reads.remove(&rev).unwrap_or_default() {
                self.read(read, out);
            }
        }
    }

    /// Forgets the dedupe state of origins that are gone. Without this it
    /// grows for the cluster's whole life (every restarted process is a new
    /// origin) and rides in every snapshot.
    ///
    /// The rule, applied at every rev that is a multiple of
    /// [`PRUNE_EVERY_REVS`] and so identically on every replica (it reads
    /// only replicated state: the store and the dedupe entries, whose `last`
    /// rides in snapshots): an origin's entry is dropped when the origin is
    /// not registered (no `/ctl/node/<id>/addr`) and its last write was
    /// decided more than [`ORIGIN_IDLE_REVS`] revs ago. A cluster-wide
    /// constant, not the per-node `-hist`, because replicas that pruned
    /// differently would disagree on what is a duplicate.
    ///
    /// Why no write is applied twice because of it:
    /// - an origin that writes again after its entry was dropped sends a
    ///   `floor` above every seq it had handed out before (see below), so
    ///   the new entry drops any old copy that turns up later;
    /// - the origin itself never resends blindly: when it sees its own
    ///   entry dropped (here, or missing from a snapshot it installs) while
    ///   writes it handed to a leader are unanswered, it answers those with
    ///   an error ("outcome unknown") instead of resending them, and
    ///   forwards nothing but its own registration until it is registered
    ///   again;
    /// - what is left is a copy stuck undecided in some other node's queue
    ///   for `ORIGIN_IDLE_REVS` revs while others were decided, which the
    ///   first-in-first-out queues and in-order handover do not produce.
    fn prune_origins(&mut self, rev: Rev, out: &mut Vec<Output>) {
        let cutoff = rev.0 - ORIGIN_IDLE_REVS;
        let nodes = &self.nodes;
        self.applied_writes
            .retain(|id, applied| nodes.contains_key(id) || applied.last.0 > cutoff);
        if self.origin_seen && !self.applied_writes.contains_key(&self.node.id) {
            log::warn!(
                "the dedupe state of this node's writes was pruned at rev {rev} (it was away); its unanswered writes get an error instead of being sent again"
            );
            self.origin_seen = false;
            self.drop_handed_out_writes(|_| true, out);
        }
    }

    /// Answers with an error, and forgets, the writes proposed here that
    /// were already handed to a leader and match `lost`: whether they were
    /// (or will be) applied cannot be known safely any more.
    fn drop_handed_out_writes(&mut self, lost: impl Fn(u64) -> bool, out: &mut Vec<Output>) {
        let seqs: Vec<u64> = self
            .pending_writes
            .iter()
            .filter(|(seq, p)| p.sent_to.is_some() && lost(**seq))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in seqs {
            let Some(pending) = self.pending_writes.remove(&seq) else {
                continue;
            };
            if let Proposer::Client { conn, tag } = pending.proposer {
                let outcome = Err(ReplyError::other(
                    "outcome unknown: this node was away while the write was in flight; read to check",
                ));
                out.push(Output::Reply { conn, tag, outcome });
            }
        }
    }

    fn answer_write(&mut self, proposer: Proposer, event: &Event, out: &mut Vec<Output>) {
        match proposer {
            Proposer::Client { conn, tag } => {
                let outcome = match (event.error, event.kind) {
                    (Some(err), _) => Err(err.code().into()),
                    (None, EventKind::Set) => Ok(Reply::Rev(event.rev)),
                    (None, _) => Ok(Reply::Done),
                };
                out.push(Output::Reply { conn, tag, outcome });
            }
            Proposer::Pulse
            | Proposer::Register
            | Proposer::Claim
            | Proposer::Removal
            | Proposer::Leader => {
                if let Some(err) = event.error {
                    log::debug!("internal write at rev {} failed: {err}", event.rev);
                }
            }
        }
    }

    /// Keeps the caches of `/ctl` in step with the store.
    fn observe(&mut self, event: &Event) {
        let path = event.path.as_str();
        if path == "/" || !path.starts_with("/ctl") {
            return;
        }
        if path.starts_with("/ctl/node/") || path == "/ctl/node" || path == "/ctl" {
            let me_before = self.nodes.contains_key(&self.node.id);
            self.refresh_nodes();
            let me_now = self.nodes.contains_key(&self.node.id);
            if me_before != me_now {
                // Registered: claim a free slot now. Removed: register again.
                self.housekeeping_soon = true;
            }
            if me_before && !me_now {
                log::warn!(
                    "this node ({}) was removed from the cluster at rev {} (silent for longer than -timeout); re-attaching as a slave",
                    self.node.id,
                    event.rev
                );
            }
        }
        if path.starts_with("/ctl/cal/") || path == "/ctl/cal" || path == "/ctl" {
            self.refresh_cal();
            self.paxos.record_voters(event.rev.0, self.cal.clone());
        }
    }

    fn refresh_nodes(&mut self) {
        let snapshot = self.store.current();
        let dir = Path::parse("/ctl/node").expect("valid");
        let names = snapshot.dir_names(&dir).unwrap_or_default();
        self.nodes = names
            .into_iter()
            .filter_map(|name| {
                let id = NodeId::parse(&name)?;
                let path = Path::parse(&format!("/ctl/node/{name}/addr")).ok()?;
                match snapshot.entry(&path) {
                    Entry::File { body, .. } => Some((id, String::from_utf8(body.to_vec()).ok()?)),
                    _ => None,
                }
            })
            .collect();
        let nodes = &self.nodes;
        self.unregistered.retain(|id, _| !nodes.contains_key(id));
    }

    fn refresh_cal(&mut self) {
        self.housekeeping_soon = true;
        self.cal = cal_slots(self.store.current())
            .into_iter()
            .filter_map(|(_, _, body)| NodeId::parse(std::str::from_utf8(&body).ok()?))
            .collect();
    }
}

/// Whether `decree` writes under `/ctl/node/<node>/` (a node's registration
/// and pulse: all a node that is not registered may forward).
fn registers(decree: &Decree, node: &NodeId) -> bool {
    let Decree::Write { mutation, .. } = decree else {
        return false;
    };
    let path = match mutation {
        Mutation::Set { path, .. } | Mutation::Del { path, .. } => path.as_str(),
        Mutation::Nop => return false,
    };
    path.strip_prefix("/ctl/node/")
        .and_then(|rest| rest.strip_prefix(node.as_str()))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Every `/ctl/cal/<slot>` file: its path, rev and body.
fn cal_slots(snapshot: &Snapshot) -> Vec<(Path, Rev, Body)> {
    let dir = Path::parse("/ctl/cal").expect("valid");
    snapshot
        .dir_names(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|name| {
            let path = dir.join(&name).ok()?;
            match snapshot.entry(&path) {
                Entry::File { rev, body } => Some((path, rev, body)),
                _ => None,
            }
        })
        .collect()
}

fn event_reply(event: &Event) -> Reply {
    Reply::Event {
        path: event.path.clone(),
        rev: event.rev,
        body: event.body.clone(),
        kind: event.kind,
    }
}

/// Answers GET or STAT from one snapshot (GETDIR and WALK are [`Listing`]s).
fn answer_read(snapshot: &Snapshot, command: &Command) -> Outcome {
    match command {
        Command::Get { path, .. } => match snapshot.entry(path) {
            Entry::Absent => Ok(Reply::Value {
                rev: Rev::ZERO,
                body: Body::from(Vec::new()),
            }),
            Entry::File { rev, body } => Ok(Reply::Value { rev, body }),
            Entry::Dir { .. } => Err(ErrCode::IsDir.into()),
        },
        Command::Stat { path, .. } => {
            let entry = path.as_ref().map_or(Entry::Absent, |p| snapshot.entry(p));
            Ok(match entry {
                Entry::Absent => Reply::Stat { len: 0, rev: 0 },
                Entry::File { rev, body } => Reply::Stat {
                    len: body.len() as i64,
                    rev: rev.0,
                },
                Entry::Dir { len } => Reply::Stat {
                    len: len as i64,
                    rev: crate::types::sentinel::DIR,
                },
            })
        }
        Command::Snapshot { .. } => Ok(Reply::Tree(snapshot.clone())),
        Command::Rev => Ok(Reply::Rev(snapshot.rev())),
        other => unreachable!("{other:?} is not a read"),
    }
}

mod cluster;
mod durable;
mod reads;

pub use durable::{Durable, NodeImage, RecoveryError};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod trust_tests;

#[cfg(test)]
mod read_tests;
