//! Seeded simulation of whole clusters: the real `Core` of every node over a
//! simulated network that delays, drops, duplicates and reorders messages,
//! partitions nodes, and crashes them (a crashed node comes back as a new
//! node, as a restarted process does).
//!
//! After every step the checkers run: no two nodes applied different events
//! at one rev; nodes at equal revs hold identical stores; every acknowledged
//! write is the event at the rev it was acknowledged with. After the faults
//! heal, every live node converges and new writes complete.
//!
//! The simulation sees what production sees: every message goes through the
//! real peer codec (a frame the codec refuses fails the run), values run up
//! to 1 MiB, nodes are paused (no ticks, no deliveries, as a stopped process
//! or a long GC), inputs reach a core in batches of random size, and clients
//! hang up with writes outstanding.
//!
//! With `durable` on (the `durable_*` tests), every node keeps a data dir on
//! an in-memory disk through the real journal and disk layer, and the
//! runtime's contract is kept: a batch's outputs leave only after its records
//! are synced. Crashes then keep the node's disk: what was not synced is lost,
//! the last write may be torn (`MemFs::crash`), a crash may strike halfway
//! through a write, and the node restarts from its dir as itself — one node,
//! or every node of the cluster at once. The checkers then also prove that
//! no acknowledged write is lost and that a restarted node's history agrees
//! with what every node applied before.
//!
//! A failure prints its seed; `SIM_SEED=n cargo test --test simulation -- --nocapture`
//! replays it (see scripts/sim-replay.sh). `SIM_SEEDS=n` runs more seeds.

use std::collections::{BTreeMap, BTreeSet};

use doozer::codec::peer::{decode_peer_msg, encode_peer_frame_into, HEADER_BYTES};
use doozer::config::Limits;
use doozer::core::{
    Command, ConnId, Core, CoreConfig, Decree, Input, NodeInfo, Outcome, Output, PeerMsg, Reply,
    SnapshotData,
};
use doozer::disk::{DataDir, MemFs};
use doozer::journal::{leaves_before_sync, Journal, Loaded};
use doozer::paxos::{self, Ballot};
use doozer::store::Mutation;
use doozer::store::{Event, EventKind, Glob};
use doozer::types::{Body, NodeId, Path, Rev, RevCheck};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TIMEOUT_TICKS: u64 = 300;
/// Ticks of contact that end a node's stretch of being cut off (fewer may
/// not reach the leader, so the silence it sees goes on).
const CUT_GAP_TICKS: u64 = 20;

fn config(seed: u64) -> CoreConfig {
    CoreConfig {
        history_revs: 400,
        pulse_ticks: 100,
        timeout_ticks: TIMEOUT_TICKS,
        max_value_bytes: 1 << 20,
        max_pending_writes: 10_000,
        max_peer_frame_bytes: 256 << 20,
        paxos: paxos::Settings {
            window: 32,
            ..paxos::Settings::default()
        },
        // SIM_LOCAL_READS=1 runs with -local-reads: the read checker then
        // finds stale reads (the proof that it can fail).
        local_reads: std::env::var("SIM_LOCAL_READS").is_ok_and(|v| v == "1"),
        read_timeout_ticks: 1000,
        seed,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Faults {
    drop_pct: u32,
    dup_pct: u32,
    max_delay: u64,
}

struct Node {
    core: Core,
    /// The last rev the checkers looked at.
    checked: Rev,
    /// The node's data dir, in durable runs.
    journal: Option<Journal<MemFs>>,
}

/// A durable node that crashed, waiting to restart (its disk stays in
/// `Sim::disks`).
struct Down {
    info: NodeInfo,
    restart_at: u64,
}

/// Where a simulated node keeps its data dir on its own disk.
const DATA_DIR: &str = "/data";

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, encoded: (deliver at, sequence) → (from, to, frame
    /// body).
    wire: BTreeMap<(u64, u64), (NodeId, NodeId, Vec<u8>)>,
    /// The frame cap the codec enforces, as in production.
    max_frame_bytes: usize,
    /// Inputs waiting for each node's next turn.
    inboxes: BTreeMap<NodeId, Vec<Input>>,
    /// Paused nodes and the tick they resume at.
    paused: BTreeMap<NodeId, u64>,
    /// Each node's open client connections.
    conns: BTreeMap<NodeId, Vec<ConnId>>,
    next_conn: ConnId,
    /// Connections the clients hung up: replies to them are dropped, as the
    /// runtime drops them.
    closed: BTreeSet<(NodeId, ConnId)>,
    wire_seq: u64,
    faults: Faults,
    /// Ordered pairs that cannot talk (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Each node's latest stretch of ticks paused or with a link cut (first
    /// tick, last tick): faults in a row can silence a member past
    /// -timeout, and the cluster then rightly removes it, so the crash
    /// budget counts a member cut off for long as failed for a while.
    cut: BTreeMap<NodeId, (u64, u64)>,
    /// The first event seen at each rev, and the store digest at each rev.
    events: BTreeMap<Rev, Event>,
    digests: BTreeMap<Rev, u64>,
    /// Acknowledged sets: rev → (path, body).
    acked: BTreeMap<Rev, (Path, Body)>,
    /// Requests sent and not answered: (node, conn, tag) → what was asked.
    asked: BTreeMap<(NodeId, ConnId, i32), Command>,
    /// When each request was sent (for the read checker).
    invoked: BTreeMap<(NodeId, ConnId, i32), u64>,
    /// Acknowledged sets in the order of their acknowledgement: (tick,
    /// rev, path).
    acks: Vec<(u64, Rev, Path)>,
    /// Every answer to a read, in order (for tests that look at one).
    read_answers: Vec<(NodeId, Command, Outcome)>,
    next_tag: i32,
    next_node: u8,
    log: Vec<String>,
    /// A node that is no member and sends arbitrary well-formed messages,
    /// as itself, to random nodes (see `rogue_msg`).
    rogue: Option<NodeId>,
    /// Nodes keep data dirs and come back from crashes as themselves.
    durable: bool,
    /// Each durable node's disk (kept across its crashes).
    disks: BTreeMap<NodeId, MemFs>,
    /// Crashed durable nodes waiting to restart.
    down: BTreeMap<NodeId, Down>,
    /// Durable nodes whose disk dies halfway through a coming write, and
    /// the tick by which they crash anyway.
    armed: BTreeMap<NodeId, u64>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            nodes: BTreeMap::new(),
            wire: BTreeMap::new(),
            max_frame_bytes: Limits::default().max_peer_frame_bytes,
            inboxes: BTreeMap::new(),
            paused: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            closed: BTreeSet::new(),
            wire_seq: 0,
            faults: Faults {
                drop_pct: 0,
                dup_pct: 0,
                max_delay: 1,
            },
            blocked: BTreeSet::new(),
            cut: BTreeMap::new(),
            events: BTreeMap::new(),
            digests: BTreeMap::new(),
            acked: BTreeMap::new(),
            asked: BTreeMap::new(),
            invoked: BTreeMap::new(),
            acks: Vec::new(),
            read_answers: Vec::new(),
            next_tag: 0,
            next_node: 1,
            log: Vec::new(),
            rogue: None,
            durable: false,
            disks: BTreeMap::new(),
            down: BTreeMap::new(),
            armed: BTreeMap::new(),
        }
    }

    /// A data dir on `id`'s disk (made on first use), ready for `load`.
    fn journal_for(&mut self, id: &NodeId) -> Journal<MemFs> {
        let disk = self.disks.entry(id.clone()).or_default().clone();
        match DataDir::open_with(disk, std::path::Path::new(DATA_DIR)) {
            Ok(dir) => Journal::new(dir, false),
            Err(err) => self.fail(format!("{id}: cannot open its data dir: {err}")),
        }
    }

    /// Adds a node started afresh, with its data dir when the run is
    /// durable.
    fn insert_fresh(&mut self, mut core: Core) {
        let id = core.node().id.clone();
        let journal = if self.durable {
            let mut journal = self.journal_for(&id);
            if let Err(err) = journal.begin(&mut core, "sim") {
                self.fail(format!("{id}: {err}"));
            }
            Some(journal)
        } else {
            None
        };
        self.nodes.insert(
            id,
            Node {
                core,
                checked: Rev(0),
                journal,
            },
        );
    }

    /// A durable node crashes with its disk: unsynced bytes are lost or
    /// torn; it restarts `after` ticks later from its data dir.
    fn crash_keeping_disk(&mut self, id: &NodeId, after: u64) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        let info = node.core.node().clone();
        self.crash(id);
        self.armed.remove(id);
        self.disks[id].crash(&mut self.rng);
        self.log
            .push(format!("t{} {id} down for {after} ticks", self.now));
        self.down.insert(
            id.clone(),
            Down {
                info,
                restart_at: self.now + after,
            },
        );
    }

    /// Arms `id`'s disk to die halfway through one of its next writes (the
    /// node crashes then, or at `deadline` if it writes nothing).
    fn arm_crash(&mut self, id: &NodeId, deadline: u64) {
        if let Some(disk) = self.disks.get(id) {
            let calls = self.rng.random_range(1..6);
            disk.crash_after(Some(calls));
            self.armed.insert(id.clone(), deadline);
            self.log.push(format!(
                "t{} {id}: disk dies at its {calls}th write from now",
                self.now
            ));
        }
    }

    /// Restarts a crashed durable node from its data dir: the same node
    /// when the dir has state, else a new attach with the same id.
    fn restart(&mut self, id: &NodeId) {
        let Some(down) = self.down.remove(id) else {
            return;
        };
        let mut journal = self.journal_for(id);
        let info = down.info.clone();
        let loaded = journal.load("sim", |_| info, config(self.rng.random()));
        match loaded {
            Ok(Loaded::Resumed(core)) => {
                self.log.push(format!(
                    "t{} {id} restarts from its dir at rev {}",
                    self.now,
                    core.store().rev()
                ));
                self.nodes.insert(
                    id.clone(),
                    Node {
                        core: *core,
                        checked: Rev(0),
                        journal: Some(journal),
                    },
                );
            }
            Ok(Loaded::Fresh { .. }) => {
                drop(journal);
                let target = self
                    .members()
                    .into_iter()
                    .find(|m| self.nodes.contains_key(m));
                let Some(target) = target else {
                    // Nobody to attach to yet: try again later.
                    self.down.insert(
                        id.clone(),
                        Down {
                            restart_at: self.now + 50,
                            ..down
                        },
                    );
                    return;
                };
                self.log.push(format!(
                    "t{} {id} restarts with an empty dir, attaching via {target}",
                    self.now
                ));
                let target_addr = self.nodes[&target].core.node().addr.clone();
                let core = Core::join(down.info, config(self.rng.random()), target, target_addr);
                self.insert_fresh(core);
            }
            Err(err) => self.fail(format!("{id} cannot restart from its dir: {err}")),
        }
    }

    /// The runtime's contract after a batch (`doozer::journal`): its records
    /// synced before the outputs they hold leave, the others routed first.
    /// Routes `out`. False when the disk died (the node crashed; what was
    /// held is lost with it).
    fn persist_and_route(&mut self, id: &NodeId, mut out: Vec<Output>) -> bool {
        let Some(node) = self.nodes.get_mut(id) else {
            return false;
        };
        let Some(journal) = node.journal.as_mut() else {
            self.route(id, out);
            return true;
        };
        let step = journal.take(&mut node.core);
        if step.holds_outputs() {
            let (early, held): (Vec<Output>, Vec<Output>) =
                out.into_iter().partition(leaves_before_sync);
            self.route(id, early);
            out = held;
        } else {
            self.route(id, std::mem::take(&mut out));
        }
        let node = self.nodes.get_mut(id).expect("still there");
        let journal = node.journal.as_mut().expect("durable");
        match journal.write(step, &node.core) {
            Ok(()) => {
                self.route(id, out);
                true
            }
            Err(err) => {
                if !self.armed.contains_key(id) {
                    self.fail(format!("{id}: the journal failed unprovoked: {err}"));
                }
                self.log
                    .push(format!("t{} {id} crashes mid-write: {err}", self.now));
                let after = self.rng.random_range(0..TIMEOUT_TICKS * 2);
                self.crash_keeping_disk(id, after);
                false
            }
        }
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).collect();
        panic!(
            "simulation seed {} failed at tick {}: {what}\nreplay: SIM_SEED={} cargo test --test simulation -- --nocapture\nlast events (newest first): {tail:#?}",
            self.seed, self.now, self.seed
        );
    }

    fn new_info(&mut self) -> NodeInfo {
        let n = self.next_node;
        self.next_node += 1;
        let mut bytes = [0u8; 10];
        bytes[0] = n;
        bytes[1..9].copy_from_slice(&self.seed.to_le_bytes());
        NodeInfo {
            id: NodeId::from_bytes(bytes),
            addr: format!("127.0.0.{n}:8046"),
            hostname: format!("host{n}"),
            cluster_name: "sim".into(),
            register_ns: true,
        }
    }

    fn add_seed(&mut self) -> NodeId {
        let info = self.new_info();
        let id = info.id.clone();
        let core = Core::seed(info, config(self.rng.random()));
        self.insert_fresh(core);
        id
    }

    fn add_slave(&mut self, target: &NodeId) -> NodeId {
        let info = self.new_info();
        let id = info.id.clone();
        let target_addr = self.nodes[target].core.node().addr.clone();
        let core = Core::join(info, config(self.rng.random()), target.clone(), target_addr);
        self.log
            .push(format!("t{} join {id} via {target}", self.now));
        self.insert_fresh(core);
        id
    }

    fn crash(&mut self, id: &NodeId) {
        self.log.push(format!("t{} crash {id}", self.now));
        self.nodes.remove(id);
        self.inboxes.remove(id);
        self.paused.remove(id);
        self.conns.remove(id);
        self.asked.retain(|(node, _, _), _| node != id);
    }

    /// Stops `id` for `ticks`: it gets no ticks and no messages (they wait
    /// on the wire), as a stopped process or a long pause would. A node
    /// already stopped resumes when it was due to, as a second SIGSTOP does
    /// nothing: pauses that stacked up once silenced a member past
    /// -timeout (seed 278), and the cluster, rightly, removed it.
    fn pause(&mut self, id: &NodeId, ticks: u64) {
        if self.is_paused(id) {
            return;
        }
        self.log
            .push(format!("t{} pause {id} for {ticks}", self.now));
        self.paused.insert(id.clone(), self.now + ticks);
    }

    fn is_paused(&self, id: &NodeId) -> bool {
        self.paused.get(id).is_some_and(|until| *until > self.now)
    }

    /// A client of `id` hangs up one connection that has requests
    /// outstanding.
    fn disconnect_random(&mut self) {
        let open: Vec<(NodeId, ConnId)> = self
            .asked
            .keys()
            .map(|(node, conn, _)| (node.clone(), *conn))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if open.is_empty() {
            return;
        }
        let (node, conn) = open[self.rng.random_range(0..open.len())].clone();
        self.log
            .push(format!("t{} {node} client {conn} hangs up", self.now));
        self.asked
            .retain(|(n, c, _), _| !(*n == node && *c == conn));
        self.closed.insert((node.clone(), conn));
        if let Some(conns) = self.conns.get_mut(&node) {
            conns.retain(|c| *c != conn);
        }
        self.feed(&node, Input::ConnClosed { conn });
    }

    fn route(&mut self, from: &NodeId, out: Vec<Output>) {
        for output in out {
            match output {
                Output::Reply { conn, tag, outcome } => {
                    if self.closed.contains(&(from.clone(), conn)) {
                        continue;
                    }
                    let tag = tag.expect("sim requests carry tags");
                    let key = (from.clone(), conn, tag);
                    let Some(command) = self.asked.remove(&key) else {
                        self.fail(format!("{from} answered an unknown request {conn}/{tag}"));
                    };
                    let invoked = self.invoked.remove(&key).unwrap_or(0);
                    self.on_reply(from, command, invoked, outcome);
                }
                Output::Peer { to, msg, .. } => {
                    if let Ok(trace) = std::env::var("SIM_TRACE") {
                        if from.as_str().starts_with(&trace) || to.as_str().starts_with(&trace) {
                            let text = format!("{msg:?}");
                            eprintln!(
                                "t{} {from} -> {to}: {}",
                                self.now,
                                &text[..text.len().min(160)]
                            );
                        }
                    }
                    let mut frame = Vec::new();
                    if let Err(err) = encode_peer_frame_into(&msg, &mut frame, self.max_frame_bytes)
                    {
                        self.fail(format!("{from} -> {to}: the codec refused {err}"));
                    }
                    let body = frame.split_off(HEADER_BYTES);
                    if self.blocked.contains(&(from.clone(), to.clone())) {
                        continue;
                    }
                    if self.rng.random_range(0..100) < self.faults.drop_pct {
                        continue;
                    }
                    let copies = if self.rng.random_range(0..100) < self.faults.dup_pct {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let at = self.now + 1 + self.rng.random_range(0..=self.faults.max_delay);
                        self.wire_seq += 1;
                        self.wire.insert(
                            (at, self.wire_seq),
                            (from.clone(), to.clone(), body.clone()),
                        );
                    }
                }
            }
        }
    }

    fn on_reply(&mut self, node: &NodeId, command: Command, invoked: u64, outcome: Outcome) {
        self.check_read(node, &command, invoked, &outcome);
        if let (Command::Set { path, body, .. }, Ok(Reply::Rev(rev))) = (&command, &outcome) {
            self.acks.push((self.now, *rev, path.clone()));
            if let Some((p, b)) = self.acked.get(rev) {
                if p != path || b != body {
                    self.fail(format!("two writes acknowledged at rev {rev}"));
                }
            }
            self.acked.insert(*rev, (path.clone(), body.clone()));
            self.log
                .push(format!("t{} {node} acked {path} at {rev}", self.now));
        }
    }

    /// Reads are linearizable: a REV is at least every rev acknowledged
    /// (anywhere) before it was sent, and a GET sees its file at least at
    /// the rev of the last set of it acknowledged before it was sent (or
    /// absent: a delete, whose answer carries no rev, may have followed).
    fn check_read(&mut self, node: &NodeId, command: &Command, invoked: u64, outcome: &Outcome) {
        let floor = |path: Option<&Path>| {
            self.acks
                .iter()
                .take_while(|(at, _, _)| *at < invoked)
                .filter(|(_, _, p)| path.is_none_or(|path| p == path))
                .map(|(_, rev, _)| *rev)
                .max()
        };
        let stale = match (command, outcome) {
            (Command::Rev, Ok(Reply::Rev(rev))) => floor(None).filter(|floor| rev < floor),
            (Command::Get { path, rev: None }, Ok(Reply::Value { rev, .. }))
                if *rev != Rev::ZERO =>
            {
                floor(Some(path)).filter(|floor| rev < floor)
            }
            _ => None,
        };
        if matches!(command, Command::Rev | Command::Get { .. }) {
            self.read_answers
                .push((node.clone(), command.clone(), outcome.clone()));
        }
        if let Some(floor) = stale {
            self.fail(format!(
                "stale read at {node}: {command:?} sent at t{invoked} answered {outcome:?}, but rev {floor} was acknowledged before"
            ));
        }
    }

    /// A read at a random node (paused ones too: their reads wait, as a
    /// stopped process's would in its socket).
    fn random_read(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let at = ids[self.rng.random_range(0..ids.len())].clone();
        let command = if self.rng.random_range(0..2) == 0 {
            Command::Rev
        } else {
            let key = self.rng.random_range(0..6);
            let path = Path::parse(&format!("/k/{key}")).unwrap();
            Command::Get { path, rev: None }
        };
        self.request(&at, command);
    }

    /// Queues `input` for `id`'s next turn.
    fn feed(&mut self, id: &NodeId, input: Input) {
        if self.nodes.contains_key(id) {
            self.inboxes.entry(id.clone()).or_default().push(input);
        }
    }

    /// One turn of `id`'s event loop: its queued inputs, in batches of random
    /// size (the runtime ends a batch when its inbox runs dry, wherever that
    /// falls).
    fn turn(&mut self, id: &NodeId) {
        let inputs = self.inboxes.remove(id).unwrap_or_default();
        let mut out = Vec::new();
        let mut left_in_batch = self.rng.random_range(1..=4);
        for input in inputs {
            let Some(node) = self.nodes.get_mut(id) else {
                return;
            };
            node.core.handle(input, &mut out);
            left_in_batch -= 1;
            if left_in_batch == 0 {
                node.core.end_batch(&mut out);
                left_in_batch = self.rng.random_range(1..=4);
                if !self.persist_and_route(id, std::mem::take(&mut out)) {
                    return;
                }
            }
        }
        if let Some(node) = self.nodes.get_mut(id) {
            node.core.end_batch(&mut out);
        }
        self.persist_and_route(id, out);
    }

    fn step(&mut self) {
        self.now += 1;
        self.paused.retain(|_, until| *until > self.now);
        let cut = self
            .paused
            .keys()
            .chain(self.blocked.iter().flat_map(|(from, to)| [from, to]));
        let now = self.now;
        for id in cut {
            let stretch = self.cut.entry(id.clone()).or_insert((now, now));
            // A few ticks of contact between two faults need not reach the
            // leader: the stretch goes on.
            if now - stretch.1 > CUT_GAP_TICKS {
                stretch.0 = now;
            }
            stretch.1 = now;
        }
        let due: Vec<NodeId> = self
            .down
            .iter()
            .filter(|(_, down)| down.restart_at <= self.now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.restart(&id);
        }
        let late: Vec<NodeId> = self
            .armed
            .iter()
            .filter(|(_, deadline)| **deadline <= self.now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            let after = self.rng.random_range(0..TIMEOUT_TICKS * 2);
            self.crash_keeping_disk(&id, after);
        }
        let due: Vec<(u64, u64)> = self
            .wire
            .range(..=(self.now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let (from, to, body) = self.wire.remove(&key).expect("listed");
            if let Some(until) = self.paused.get(&to) {
                // Waits in the socket until the node runs again.
                self.wire.insert((*until, key.1), (from, to, body));
                continue;
            }
            let msg = match decode_peer_msg(&body) {
                Ok(msg) => msg,
                Err(err) => self.fail(format!("{from} -> {to}: the codec cannot read back {err}")),
            };
            self.feed(
                &to,
                Input::Peer {
                    from,
                    source: None,
                    msg,
                },
            );
        }
        if let Some(rogue) = self.rogue.clone() {
            for _ in 0..self.rng.random_range(0..3) {
                let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
                let to = ids[self.rng.random_range(0..ids.len())].clone();
                let msg = self.rogue_msg(&rogue);
                // As it would arrive: through the codec (what it cannot
                // carry never reaches a core).
                let mut frame = Vec::new();
                if encode_peer_frame_into(&msg, &mut frame, self.max_frame_bytes).is_err() {
                    continue;
                }
                let Ok(msg) = decode_peer_msg(&frame[HEADER_BYTES..]) else {
                    continue;
                };
                let input = Input::Peer {
                    from: rogue.clone(),
                    source: None,
                    msg,
                };
                self.feed(&to, input);
            }
        }
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for id in ids {
            if self.is_paused(&id) {
                continue;
            }
            self.feed(&id, Input::Tick(1));
            self.turn(&id);
        }
        self.check();
    }

    /// A round a rogue might try: small, near the edge of the range, or
    /// past it.
    fn rogue_round(&mut self) -> u64 {
        match self.rng.random_range(0..6) {
            0 => u64::MAX,
            1 => paxos::MAX_ROUND,
            2 => paxos::MAX_ROUND + 1,
            3 => 0,
            _ => self.rng.random_range(1..40),
        }
    }

    fn rogue_ballot(&mut self, rogue: &NodeId) -> Ballot {
        let round = self.rogue_round();
        let leader = match self.rng.random_range(0..5) {
            0 => None,
            1 => Some(self.random_node()),
            _ => Some(rogue.clone()),
        };
        Ballot { round, leader }
    }

    fn random_node(&mut self) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        ids[self.rng.random_range(0..ids.len())].clone()
    }

    /// A slot a rogue might name: near the cluster's current rev, or an
    /// extreme.
    fn rogue_slot(&mut self) -> i64 {
        let rev = self
            .nodes
            .values()
            .map(|n| n.core.store().rev().0)
            .max()
            .unwrap_or(0);
        match self.rng.random_range(0..10) {
            0 => i64::MAX,
            1 => i64::MIN,
            2 => -1,
            3 => 0,
            4 => paxos::MAX_SLOT,
            5 => rev + self.rng.random_range(100..100_000),
            _ => rev + self.rng.random_range(-5..10),
        }
    }

    fn rogue_decree(&mut self, rogue: &NodeId) -> Decree {
        if self.rng.random_range(0..4) == 0 {
            return Decree::Fill;
        }
        let origin = if self.rng.random_range(0..3) == 0 {
            self.random_node()
        } else {
            rogue.clone()
        };
        let key = self.rng.random_range(0..6);
        // Under /k (as clients write) or its own /ctl/node entries: a
        // node's own registration is what anyone may forward.
        let path = if self.rng.random_range(0..4) == 0 {
            format!("/ctl/node/{rogue}/addr")
        } else {
            format!("/k/{key}")
        };
        let path = Path::parse(&path).unwrap();
        let mutation = match self.rng.random_range(0..4) {
            0 => Mutation::Del {
                path,
                check: RevCheck::Clobber,
            },
            1 => Mutation::Nop,
            _ => Mutation::Set {
                path,
                check: RevCheck::Clobber,
                body: Body::from(format!("rogue{}", self.rng.random_range(0..1000)).into_bytes()),
            },
        };
        let seq = match self.rng.random_range(0..4) {
            0 => u64::MAX,
            _ => self.rng.random_range(0..50),
        };
        let floor = match self.rng.random_range(0..4) {
            0 => u64::MAX,
            1 => seq,
            _ => self.rng.random_range(0..50),
        };
        Decree::Write {
            origin,
            seq,
            floor,
            mutation,
        }
    }

    fn rogue_decrees(&mut self, rogue: &NodeId) -> Vec<Decree> {
        let n = self.rng.random_range(0..4);
        (0..n).map(|_| self.rogue_decree(rogue)).collect()
    }

    fn rogue_addr(&mut self) -> String {
        match self.rng.random_range(0..3) {
            0 => "10.9.9.9:1".into(),
            1 => "not an address".into(),
            _ => "127.0.0.250:8046".into(),
        }
    }

    /// One arbitrary well-formed message from the rogue.
    fn rogue_msg(&mut self, rogue: &NodeId) -> PeerMsg {
        use paxos::Msg;
        let msg = match self.rng.random_range(0..15) {
            0 => Msg::PreVote {
                round: self.rogue_round(),
                commit: self.rogue_slot(),
            },
            1 => Msg::PreVoteReply {
                round: self.rogue_round(),
                granted: true,
                commit: self.rogue_slot(),
            },
            2 => Msg::Prepare {
                ballot: self.rogue_ballot(rogue),
                from_slot: self.rogue_slot(),
            },
            3 => {
                let n = self.rng.random_range(0..3);
                let accepted = (0..n)
                    .map(|_| {
                        let slot = self.rogue_slot();
                        let ballot = self.rogue_ballot(rogue);
                        (slot, ballot, self.rogue_decree(rogue))
                    })
                    .collect();
                Msg::Promise {
                    ballot: self.rogue_ballot(rogue),
                    from_slot: self.rogue_slot(),
                    accepted,
                    commit: self.rogue_slot(),
                }
            }
            4 => Msg::Accept {
                ballot: self.rogue_ballot(rogue),
                first_slot: self.rogue_slot(),
                values: self.rogue_decrees(rogue),
                commit: self.rogue_slot(),
            },
            5 => Msg::Accepted {
                ballot: self.rogue_ballot(rogue),
                first_slot: self.rogue_slot(),
                last_slot: self.rogue_slot(),
            },
            6 => Msg::Reject {
                promised: self.rogue_ballot(rogue),
                commit: self.rogue_slot(),
            },
            7 => Msg::Commit {
                ballot: self.rogue_ballot(rogue),
                commit: self.rogue_slot(),
            },
            8 => Msg::Forward {
                values: self.rogue_decrees(rogue),
            },
            9 => {
                return PeerMsg::Alive {
                    applied: Rev(self.rogue_slot()),
                    addr: self.rogue_addr(),
                }
            }
            10 => {
                return PeerMsg::CatchUp {
                    from: Rev(self.rogue_slot()),
                    addr: self.rogue_addr(),
                }
            }
            11 => {
                return PeerMsg::Decided {
                    first: Rev(self.rogue_slot()),
                    decrees: self.rogue_decrees(rogue),
                }
            }
            12 => {
                let rev = Rev(self.rogue_slot());
                let voters = vec![rogue.clone(), self.random_node()];
                let path = Path::parse("/k/owned").unwrap();
                return PeerMsg::Snapshot(Box::new(SnapshotData {
                    rev,
                    files: vec![(path, rev, Body::from(b"rogue".to_vec()))],
                    membership: vec![(i64::MIN, voters)],
                    dedupe: vec![(self.random_node(), u64::MAX, vec![], rev)],
                }));
            }
            _ => {
                let leader = if self.rng.random_range(0..2) == 0 {
                    rogue.clone()
                } else {
                    self.random_node()
                };
                return PeerMsg::LeaderIs {
                    leader,
                    addr: self.rogue_addr(),
                };
            }
        };
        PeerMsg::Paxos(msg)
    }

    fn request(&mut self, at: &NodeId, command: Command) {
        self.next_tag += 1;
        let tag = self.next_tag;
        // A few connections per node; a hung-up one is replaced.
        let conns = self.conns.entry(at.clone()).or_default();
        while conns.len() < 3 {
            conns.push(self.next_conn);
            self.next_conn += 1;
        }
        let conn = conns[self.rng.random_range(0..conns.len())];
        self.asked.insert((at.clone(), conn, tag), command.clone());
        self.invoked.insert((at.clone(), conn, tag), self.now);
        self.feed(
            at,
            Input::Request {
                conn,
                tag: Some(tag),
                command,
            },
        );
    }

    fn random_write(&mut self) {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.core.is_writable() && !self.is_paused(id))
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        let at = ids[self.rng.random_range(0..ids.len())].clone();
        let key = self.rng.random_range(0..6);
        let path = Path::parse(&format!("/k/{key}")).unwrap();
        let command = match self.rng.random_range(0..10) {
            0 => Command::Del {
                path,
                check: RevCheck::Clobber,
            },
            1 => Command::Nop,
            _ => {
                let mut value = format!("v{}", self.rng.random_range(0..1_000_000)).into_bytes();
                // Now and then a large value, up to the 1 MiB maximum.
                match self.rng.random_range(0..1000) {
                    0 => value.resize(1 << 20, b'x'),
                    1..=10 => value.resize(self.rng.random_range(1024..65_536), b'y'),
                    _ => {}
                }
                Command::Set {
                    path,
                    check: RevCheck::Clobber,
                    body: Body::from(value),
                }
            }
        };
        self.request(&at, command);
    }

    /// The safety checks, over every rev each node applied since last time.
    fn check(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        for id in ids {
            let node = &self.nodes[&id];
            let store = node.core.store();
            let rev = store.rev();
            let from = node.checked.next().max(store.head()).max(Rev(1));
            let mut seen = Vec::new();
            for r in from.0..=rev.0 {
                if let Some(event) = store.event_at(Rev(r)) {
                    seen.push((Rev(r), event.clone()));
                }
            }
            let digest = store.current().digest();
            for (r, event) in seen {
                match self.events.get(&r) {
                    Some(known) if *known != event => self.fail(format!(
                        "{id} applied {event:?} at rev {r}, another node {known:?}"
                    )),
                    Some(_) => {}
                    None => {
                        self.events.insert(r, event);
                    }
                }
            }
            match self.digests.get(&rev) {
                Some(known) if *known != digest && rev > Rev(0) => {
                    self.fail(format!("{id} at rev {rev} holds a different store"))
                }
                Some(_) => {}
                None => {
                    self.digests.insert(rev, digest);
                }
            }
            self.nodes.get_mut(&id).expect("listed").checked = rev;
        }
        let acked: Vec<(Rev, Path, Body)> = self
            .acked
            .iter()
            .map(|(r, (p, b))| (*r, p.clone(), b.clone()))
            .collect();
        for (rev, path, body) in acked {
            if let Some(event) = self.events.get(&rev) {
                if event.path != path || event.body != body || event.kind != EventKind::Set {
                    self.fail(format!("write of {path} acknowledged at rev {rev}, but the event there is {event:?}"));
                }
            }
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    fn members(&self) -> BTreeSet<NodeId> {
        self.nodes
            .values()
            .max_by_key(|n| n.core.store().rev())
            .map(|n| n.core.members().clone())
            .unwrap_or_default()
    }

    fn live_members(&self) -> usize {
        self.members()
            .iter()
            .filter(|m| self.nodes.contains_key(*m))
            .count()
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.core.is_leader())
            .map(|(id, _)| id.clone())
    }

    /// Opens `slots` member slots and waits until slaves claimed them.
    fn grow_to(&mut self, members: usize) {
        let seed_id = self.leader().expect("a leader");
        for slot in 1..members {
            let path = Path::parse(&format!("/ctl/cal/{slot}")).unwrap();
            self.request(
                &seed_id,
                Command::Set {
                    path,
                    check: RevCheck::NotOlderThan(0),
                    body: Body::from(Vec::new()),
                },
            );
        }
        for _ in 0..3000 {
            self.step();
            // Claimed, and in force: no change still on its way in.
            let settled = self
                .nodes
                .values()
                .all(|n| n.core.window_voters().len() == 1);
            if self.live_members() >= members && settled {
                return;
            }
        }
        self.fail(format!(
            "only {} of {members} member slots were claimed",
            self.live_members()
        ));
    }

    /// After a quiet spell, `/ctl/leader` names the node that leads.
    fn check_leader_named(&self) {
        let Some(leader) = self.leader() else {
            self.fail("no leader after healing".into());
        };
        let path = Path::parse(doozer::core::LEADER_PATH).unwrap();
        let store = self.nodes[&leader].core.store();
        let named = match store.current().entry(&path) {
            doozer::store::Entry::File { body, .. } => String::from_utf8_lossy(&body).into_owned(),
            other => self.fail(format!("{} is {other:?}", doozer::core::LEADER_PATH)),
        };
        if named != leader.as_str() {
            self.fail(format!("/ctl/leader names {named}, but {leader} leads"));
        }
    }

    /// Heals every fault, then checks that the cluster converges and takes
    /// writes again.
    fn heal_and_converge(&mut self) {
        self.blocked.clear();
        self.paused.clear();
        // Disks stop dying; crashed nodes come back.
        for id in std::mem::take(&mut self.armed).keys() {
            self.disks[id].crash_after(None);
        }
        for down in self.down.values_mut() {
            down.restart_at = down.restart_at.min(self.now + 1);
        }
        self.faults = Faults {
            drop_pct: 0,
            dup_pct: 0,
            max_delay: 1,
        };
        self.run(TIMEOUT_TICKS * 3);
        let writer = self
            .nodes
            .iter()
            .find(|(_, n)| n.core.is_writable())
            .map(|(id, _)| id.clone())
            .expect("a writable node");
        let path = Path::parse("/final").unwrap();
        self.request(
            &writer,
            Command::Set {
                path,
                check: RevCheck::Clobber,
                body: Body::from(b"done".to_vec()),
            },
        );
        for _ in 0..2000 {
            self.step();
            let done = !self.asked.keys().any(|(n, _, _)| *n == writer);
            let revs: BTreeSet<Rev> = self.nodes.values().map(|n| n.core.store().rev()).collect();
            if done && revs.len() == 1 {
                let digests: BTreeSet<u64> = self
                    .nodes
                    .values()
                    .map(|n| n.core.store().current().digest())
                    .collect();
                if digests.len() != 1 {
                    self.fail("nodes at one rev differ".into());
                }
                if !self.down.is_empty() {
                    continue;
                }
                // No acknowledged write was lost, whatever crashed.
                let rev = revs.first().copied().unwrap_or_default();
                if let Some((last, _)) = self.acked.last_key_value() {
                    if *last > rev {
                        self.fail(format!(
                            "a write was acknowledged at rev {last}, but the cluster is at {rev}"
                        ));
                    }
                }
                self.check_leader_named();
                // Reads wait out faults shorter than the read time-out:
                // most are answered, not refused.
                let ok = self
                    .read_answers
                    .iter()
                    .filter(|(_, _, outcome)| outcome.is_ok())
                    .count();
                if self.read_answers.len() >= 20 && ok * 10 < self.read_answers.len() * 9 {
                    self.fail(format!(
                        "only {ok} of {} reads were answered",
                        self.read_answers.len()
                    ));
                }
                return;
            }
        }
        let revs: Vec<String> = self.nodes.values().map(|n| n.core.describe()).collect();
        self.fail(format!(
            "no convergence after healing: {revs:#?}, {} writes unanswered",
            self.asked.len()
        ));
    }
}

/// Where a rogue peer stands (see `Sim::rogue_msg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rogue {
    None,
    /// An id the cluster never heard of.
    Stranger,
    /// An id registered under /ctl/node (like a slave), never a voter.
    Registered,
}

/// Prints the seed of a run that panicked outside the checkers (an engine
/// assertion, say), so it can be replayed.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation seed {} panicked; replay: SIM_SEED={} cargo test --test simulation -- --nocapture",
                self.0, self.0
            );
        }
    }
}

/// One randomised run: a cluster of `members` voters plus `slaves`, writes
/// from every side, and a schedule of faults drawn from the seed.
fn scenario(seed: u64, members: usize, slaves: usize, ticks: u64) {
    scenario_with(seed, members, slaves, ticks, Rogue::None);
}

fn scenario_with(seed: u64, members: usize, slaves: usize, ticks: u64, rogue: Rogue) {
    let _guard = SeedGuard(seed);
    let mut sim = Sim::new(seed);
    let seed_id = sim.add_seed();
    for _ in 0..(members - 1 + slaves) {
        sim.add_slave(&seed_id);
    }
    sim.run(50);
    sim.grow_to(members);
    if rogue != Rogue::None {
        let mut bytes = [0xeeu8; 10];
        bytes[1..9].copy_from_slice(&seed.to_le_bytes());
        let id = NodeId::from_bytes(bytes);
        if rogue == Rogue::Registered {
            let leader = sim.leader().expect("a leader");
            let path = Path::parse(&format!("/ctl/node/{id}/addr")).unwrap();
            sim.request(
                &leader,
                Command::Set {
                    path,
                    check: RevCheck::Clobber,
                    body: Body::from(b"127.0.0.250:8046".to_vec()),
                },
            );
            sim.run(20);
        }
        sim.log.push(format!("t{} rogue {id} ({rogue:?})", sim.now));
        sim.rogue = Some(id);
    }
    let mut until = 0;
    for _ in 0..ticks {
        if sim.now >= until {
            until = sim.now + sim.rng.random_range(50..300);
            sim.blocked.clear();
            sim.faults = Faults {
                drop_pct: sim.rng.random_range(0..15),
                dup_pct: sim.rng.random_range(0..5),
                max_delay: sim.rng.random_range(1..6),
            };
            match sim.rng.random_range(0..8) {
                0 => partition(&mut sim, false),
                1 => partition(&mut sim, true),
                2 => isolate_leader(&mut sim),
                3 => {
                    // Asymmetric: one node hears nobody.
                    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
                    let victim = ids[sim.rng.random_range(0..ids.len())].clone();
                    for other in &ids {
                        sim.blocked.insert((other.clone(), victim.clone()));
                    }
                    sim.log.push(format!("t{} deafen {victim}", sim.now));
                }
                4 => crash_and_replace(&mut sim, members),
                5 => {
                    // A stopped process, the leader as often as not: longer
                    // than an election, shorter than -timeout.
                    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
                    let victim = match sim.leader() {
                        Some(leader) if sim.rng.random_range(0..2) == 0 => leader,
                        _ => ids[sim.rng.random_range(0..ids.len())].clone(),
                    };
                    let ticks = sim.rng.random_range(20..250);
                    sim.pause(&victim, ticks);
                }
                _ => {}
            }
        }
        if sim.rng.random_range(0..4) == 0 {
            sim.random_write();
        }
        if sim.rng.random_range(0..4) == 0 {
            sim.random_read();
        }
        if sim.rng.random_range(0..60) == 0 {
            sim.disconnect_random();
        }
        sim.step();
    }
    sim.heal_and_converge();
}

fn partition(sim: &mut Sim, majority_side_has_leader: bool) {
    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
    let leader = sim.leader();
    let mut side: BTreeSet<NodeId> = BTreeSet::new();
    for id in &ids {
        if sim.rng.random_range(0..2) == 0 {
            side.insert(id.clone());
        }
    }
    if let Some(leader) = leader {
        if majority_side_has_leader {
            side.remove(&leader);
        } else {
            side.insert(leader);
        }
    }
    for a in &ids {
        for b in &ids {
            if side.contains(a) != side.contains(b) {
                sim.blocked.insert((a.clone(), b.clone()));
            }
        }
    }
    sim.log.push(format!("t{} partition {side:?}", sim.now));
}

fn isolate_leader(sim: &mut Sim) {
    let Some(leader) = sim.leader() else {
        return;
    };
    for other in sim.nodes.keys() {
        if *other != leader {
            sim.blocked.insert((leader.clone(), other.clone()));
            sim.blocked.insert((other.clone(), leader.clone()));
        }
    }
    sim.log
        .push(format!("t{} isolate leader {leader}", sim.now));
}

/// A durable cluster under the usual network faults, pauses, and crashes
/// that keep the disk: one node at a time, now or halfway through a write,
/// and every node at once. Nodes come back from their data dirs as
/// themselves.
fn durable_scenario(seed: u64, members: usize, slaves: usize, ticks: u64) {
    let _guard = SeedGuard(seed);
    let mut sim = Sim::new(seed);
    sim.durable = true;
    let seed_id = sim.add_seed();
    for _ in 0..(members - 1 + slaves) {
        sim.add_slave(&seed_id);
    }
    sim.run(50);
    sim.grow_to(members);
    let mut until = 0;
    for _ in 0..ticks {
        if sim.now >= until {
            until = sim.now + sim.rng.random_range(50..300);
            sim.blocked.clear();
            sim.faults = Faults {
                drop_pct: sim.rng.random_range(0..15),
                dup_pct: sim.rng.random_range(0..5),
                max_delay: sim.rng.random_range(1..6),
            };
            let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
            match sim.rng.random_range(0..8) {
                0 => {
                    let leader_side = sim.rng.random_range(0..2) == 0;
                    partition(&mut sim, leader_side)
                }
                1 => isolate_leader(&mut sim),
                2 | 3 if !ids.is_empty() => {
                    // One node, the leader as often as not.
                    let victim = match sim.leader() {
                        Some(leader) if sim.rng.random_range(0..2) == 0 => leader,
                        _ => ids[sim.rng.random_range(0..ids.len())].clone(),
                    };
                    if sim.rng.random_range(0..2) == 0 {
                        let deadline = sim.now + 100;
                        sim.arm_crash(&victim, deadline);
                    } else {
                        let after = sim.rng.random_range(0..TIMEOUT_TICKS * 2);
                        sim.crash_keeping_disk(&victim, after);
                    }
                }
                4 => {
                    // Every node at once (a power cut), some halfway
                    // through a write.
                    sim.log.push(format!("t{} power cut", sim.now));
                    for id in ids {
                        if sim.rng.random_range(0..2) == 0 {
                            let deadline = sim.now + 5;
                            sim.arm_crash(&id, deadline);
                        } else {
                            let after = sim.rng.random_range(1..60);
                            sim.crash_keeping_disk(&id, after);
                        }
                    }
                }
                5 if !ids.is_empty() => {
                    let victim = ids[sim.rng.random_range(0..ids.len())].clone();
                    let ticks = sim.rng.random_range(20..250);
                    sim.pause(&victim, ticks);
                }
                _ => {}
            }
        }
        if sim.rng.random_range(0..3) == 0 {
            sim.random_write();
        }
        if sim.rng.random_range(0..4) == 0 {
            sim.random_read();
        }
        if sim.rng.random_range(0..60) == 0 {
            sim.disconnect_random();
        }
        sim.step();
    }
    sim.heal_and_converge();
}

/// Crashes a random node if the members keep a majority without it, and
/// starts a new node that attaches as a slave.
fn crash_and_replace(sim: &mut Sim, members: usize) {
    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
    let victim = ids[sim.rng.random_range(0..ids.len())].clone();
    // Crash only what every voter set still being decided survives: the
    // cluster tolerates a minority of each, no more (reference #26).
    let newest = sim
        .nodes
        .values()
        .max_by_key(|n| n.core.store().rev())
        .expect("nodes");
    let mut sets = newest.core.window_voters();
    let current = sim.members();
    // With a member slot free, a slave may already have claimed it in a
    // slot no node has applied yet (seed 256: the victim's claim was being
    // decided, and the cluster was left with voters {live, victim}): the
    // victim counts as a member of the set it would join.
    if current.len() < members && !current.contains(&victim) {
        let mut joined = current.clone();
        joined.insert(victim.clone());
        sets.push(joined);
    }
    sets.push(current);
    // A member the leader is removing for silence has failed as far as the
    // cluster is concerned, even if it comes back.
    let removing: BTreeSet<NodeId> = sim
        .nodes
        .values()
        .filter(|n| n.core.is_leader())
        .flat_map(|n| n.core.removing())
        .collect();
    // So has one cut off for long lately: the leader may be removing it.
    let cut_lately = |m: &NodeId| {
        sim.cut.get(m).is_some_and(|(first, last)| {
            sim.now - last < TIMEOUT_TICKS && last - first >= TIMEOUT_TICKS / 3
        })
    };
    for set in sets {
        let live_after = set
            .iter()
            .filter(|m| {
                sim.nodes.contains_key(*m)
                    && **m != victim
                    && !removing.contains(*m)
                    && !cut_lately(m)
            })
            .count();
        if set.contains(&victim) && live_after < paxos::quorum(set.len()) {
            return;
        }
    }
    sim.crash(&victim);
    let target = sim
        .members()
        .into_iter()
        .find(|m| sim.nodes.contains_key(m));
    if let Some(target) = target {
        sim.add_slave(&target);
    }
}

/// The seeds a test runs: `base + 1 ..= base + count`, or just `SIM_SEED`
/// (the seed a failure printed) when that is set.
fn seeds(base: u64, default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (base + 1..=base + count).collect()
}

/// Crashes that keep the disk, down to every node at once, with unsynced
/// writes lost and torn: no safety violation, no acknowledged write lost.
#[test]
fn durable_three_members_and_a_slave_survive_crashes_and_power_cuts() {
    for seed in seeds(5000, 60) {
        durable_scenario(seed, 3, 1, 1500);
    }
}

#[test]
fn durable_five_members_survive_crashes_and_power_cuts() {
    for seed in seeds(6000, 20) {
        durable_scenario(seed, 5, 0, 1500);
    }
}

#[test]
fn three_members_and_a_slave_under_faults() {
    for seed in seeds(0, 150) {
        scenario(seed, 3, 1, 1500);
    }
}

/// A rogue that is no member sends arbitrary well-formed messages (ballots
/// up to `u64::MAX`, extreme slots, forged decrees, snapshots, catch-up
/// requests with addresses) to random nodes throughout the usual faults:
/// no safety violation, and the cluster still converges and takes writes.
#[test]
fn three_members_and_a_slave_with_a_rogue_stranger() {
    for seed in seeds(3000, 40) {
        scenario_with(seed, 3, 1, 1500, Rogue::Stranger);
    }
}

/// The same, from a rogue registered under /ctl/node (as a slave is).
#[test]
fn five_members_and_a_slave_with_a_registered_rogue() {
    for seed in seeds(4000, 15) {
        scenario_with(seed, 5, 1, 1500, Rogue::Registered);
    }
}

#[test]
fn five_members_and_two_slaves_under_faults() {
    for seed in seeds(1000, 60) {
        scenario(seed, 5, 2, 1500);
    }
}

#[test]
fn seven_members_under_faults() {
    for seed in seeds(2000, 25) {
        scenario(seed, 7, 1, 1500);
    }
}

/// #26: the lone survivor of a cluster cannot commit writes alone, does not
/// hang its reads, and the cluster recovers when a majority is back.
#[test]
fn lone_survivor_waits_for_quorum() {
    let mut sim = Sim::new(26);
    let seed_id = sim.add_seed();
    for _ in 0..2 {
        sim.add_slave(&seed_id);
    }
    sim.run(50);
    sim.grow_to(3);
    let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
    let survivor = ids[0].clone();
    for other in &ids[1..] {
        sim.blocked.insert((survivor.clone(), other.clone()));
        sim.blocked.insert((other.clone(), survivor.clone()));
    }
    sim.run(100);
    let before = sim.nodes[&survivor].core.store().rev();
    let path = Path::parse("/lonely").unwrap();
    sim.request(
        &survivor,
        Command::Set {
            path: path.clone(),
            check: RevCheck::Clobber,
            body: Body::from(b"x".to_vec()),
        },
    );
    sim.request(&survivor, Command::Get { path, rev: None });
    sim.run(200);
    // Its copy may be stale: the read waits for a leader to confirm it...
    assert_eq!(sim.asked.len(), 2, "the read and the write wait");
    // ... and gets an error once no leader confirmed it in time.
    sim.run(1000);
    assert_eq!(sim.asked.len(), 1, "the read answers, the write waits");
    assert!(
        matches!(sim.asked.values().next(), Some(Command::Set { .. })),
        "the waiting request is the write: {:?}",
        sim.asked
    );
    let answer = sim
        .read_answers
        .last()
        .map(|(_, _, outcome)| outcome.clone());
    assert!(
        matches!(&answer, Some(Err(e)) if e.to_string().contains("no leader confirmed")),
        "the read was refused, not answered from a possibly stale copy: {answer:?}"
    );
    assert_eq!(
        sim.nodes[&survivor].core.store().rev(),
        before,
        "nothing commits without a quorum"
    );
    sim.heal_and_converge();
}

/// #59: a few seconds of packet loss must not wedge anyone.
#[test]
fn short_packet_loss_heals() {
    for seed in seeds(5900, 5) {
        let mut sim = Sim::new(seed);
        let seed_id = sim.add_seed();
        for _ in 0..3 {
            sim.add_slave(&seed_id);
        }
        sim.run(50);
        sim.grow_to(3);
        sim.faults = Faults {
            drop_pct: 70,
            dup_pct: 0,
            max_delay: 3,
        };
        for _ in 0..(TIMEOUT_TICKS / 2) {
            sim.random_write();
            sim.step();
        }
        sim.heal_and_converge();
    }
}

/// #44 and #64: a node replaced on the same address (a new id), and a node
/// bounced, never make the leader evict a healthy other node.
#[test]
fn bouncing_a_node_evicts_nobody_else() {
    let mut sim = Sim::new(64);
    let seed_id = sim.add_seed();
    for _ in 0..3 {
        sim.add_slave(&seed_id);
    }
    sim.run(50);
    sim.grow_to(3);
    let members = sim.members();
    let leader = sim.leader().unwrap();
    let victim = members.iter().find(|m| **m != leader).unwrap().clone();
    let addr = sim.nodes[&victim].core.node().addr.clone();
    sim.crash(&victim);
    // Restart on the same address with a new id.
    let mut info = sim.new_info();
    info.addr = addr;
    let core = Core::join(
        info,
        config(7),
        leader.clone(),
        sim.nodes[&leader].core.node().addr.clone(),
    );
    sim.insert_fresh(core);
    sim.run(TIMEOUT_TICKS * 3);
    let survivors: BTreeSet<NodeId> = members.iter().filter(|m| **m != victim).cloned().collect();
    for m in &survivors {
        assert!(sim.members().contains(m), "healthy member {m} was evicted");
    }
    let states: Vec<String> = sim.nodes.values().map(|n| n.core.describe()).collect();
    assert!(
        !sim.members().contains(&victim),
        "the dead member was not removed: {states:#?} {:?}",
        sim.members()
    );
    assert_eq!(sim.live_members(), 3, "a slave took the free slot");
    sim.heal_and_converge();
}

/// The fire drill (#70): kill the leader repeatedly while writes flow; the
/// cluster keeps electing, replacing and answering.
#[test]
fn fire_drill() {
    let mut sim = Sim::new(70);
    let seed_id = sim.add_seed();
    for _ in 0..4 {
        sim.add_slave(&seed_id);
    }
    sim.run(50);
    sim.grow_to(3);
    for round in 0..4 {
        for _ in 0..200 {
            sim.random_write();
            sim.step();
        }
        if let Some(leader) = sim.leader() {
            sim.crash(&leader);
            let target = sim
                .members()
                .into_iter()
                .find(|m| sim.nodes.contains_key(m))
                .unwrap();
            sim.add_slave(&target);
        }
        sim.run(TIMEOUT_TICKS * 2);
        assert!(
            sim.leader().is_some(),
            "round {round}: no leader after the drill"
        );
    }
    sim.heal_and_converge();
}

/// A WAIT registered on a slave sees writes made on a member.
#[test]
fn slaves_serve_waits_and_reads() {
    let mut sim = Sim::new(5);
    let seed_id = sim.add_seed();
    let slave = sim.add_slave(&seed_id);
    sim.run(100);
    let rev = sim.nodes[&slave].core.store().rev();
    sim.request(
        &slave,
        Command::Wait {
            glob: Glob::parse("/w/**").unwrap(),
            rev: rev.0 + 1,
        },
    );
    let path = Path::parse("/w/x").unwrap();
    sim.request(
        &seed_id,
        Command::Set {
            path,
            check: RevCheck::Clobber,
            body: Body::from(b"1".to_vec()),
        },
    );
    sim.run(20);
    assert!(
        sim.asked.is_empty(),
        "the wait on the slave fired: {:?}",
        sim.asked
    );
}
