//! The core's cluster duties: time, peers, catch-up, slaves, liveness.
//!
//! Everything here is driven by ticks and peer messages and only ever
//! proposes ordinary writes through consensus (removing a silent node,
//! claiming a free slot, registering this node), so every replica sees the
//! same decisions in the same order.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::paxos::Value as _;

/// A snapshot this node streams to one asker, chunk by chunk as it asks:
/// the tree at the rev it was taken (a persistent tree: holding it costs only
/// what changed since) and where the walk stands.
pub(super) struct SnapshotStream {
    tree: Snapshot,
    membership: Vec<(Slot, Vec<NodeId>)>,
    dedupe: Vec<(NodeId, u64, Vec<u64>, Rev)>,
    /// The next chunk to build and the file it starts after.
    next_index: u64,
    cursor: Option<Path>,
    /// Where the chunk before `next_index` started (to send it again).
    last_start: Option<Path>,
    /// The walk reached its end (the last chunk was built).
    done: bool,
    /// When the asker last asked.
    touched: u64,
}

/// A snapshot being received: the chunks so far, all from the node this one
/// asked and of one rev.
pub(super) struct Assembly {
    from: NodeId,
    rev: Rev,
    next_index: u64,
    files: Vec<(Path, Rev, Body)>,
    bytes: usize,
    /// Times the next chunk was asked for again without progress.
    retries: u32,
}

/// Bytes a file is counted for in a snapshot chunk: its path and body, plus
/// what their length prefixes and rev take on the wire.
fn file_bytes(path: &Path, body: &Body) -> usize {
    path.as_str().len() + body.len() + crate::store::FILE_OVERHEAD_BYTES
}

/// Why a peer message was refused: dropped whole, counted in
/// [`Core::refused`], logged (at error level for a contradiction).
///
/// The rules, beyond the engine's ([`paxos::Refusal`]):
/// - `Alive` and `CatchUp`: from anyone but this node (attaching and
///   removed nodes send them); an address claimed by a node that is not
///   registered is kept only if its host is the link's source address
///   (when known); `applied` is kept only for registered nodes;
/// - `LeaderIs`: only from a voter of the window, never naming this node;
/// - `Prepare`, `Accept`, `Commit` from a node outside this node's window:
///   only from the leader a voter named, or the join target (`vouched`);
/// - `Decided`: only while running, from the node this one asked for
///   catch-up or the leader it follows, in range, agreeing with the log;
/// - `Snapshot`: only from the join target while attaching, else only from
///   the node this one asked for catch-up;
/// - `Forward`: see `check_forward`;
/// - `ReadIndex`: only from a registered node or a voter, at most
///   `MAX_REMOTE_ASKS` held (see `core::reads`); `ReadIndexIs`: only from
///   the leader this node asked, with that ask's number, in range.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    #[error(transparent)]
    Paxos(#[from] paxos::Refusal),
    #[error("the sender is not of this cluster")]
    Stranger,
    #[error("not an answer to a request of this node")]
    NotAsked,
    #[error("a rev or slot out of range")]
    Range,
    #[error("an address {0:?} not on the host the link comes from")]
    Address(String),
    #[error("a forwarded value that is {0}")]
    Forward(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("a snapshot {0}")]
    Snapshot(&'static str),
    #[error("too many {0} held at once")]
    TooMany(&'static str),
}

impl Core {
    pub(super) fn on_tick(&mut self, elapsed: u64, out: &mut Vec<Output>) {
        let elapsed = elapsed.max(1);
        self.ticks_before = self.ticks;
        self.ticks = self.ticks.saturating_add(elapsed);
        let mut sent = Vec::new();
        let heartbeats_before = self.paxos.heartbeats_sent();
        self.paxos
            .tick_by(u32::try_from(elapsed).unwrap_or(u32::MAX), &mut sent);
        self.push_peer(sent, out);
        let took_over = self.track_leadership();
        let heartbeat_due = self.paxos.heartbeats_sent() != heartbeats_before;
        if self.paxos.is_leader() && (took_over || heartbeat_due) {
            // Slaves hear who leads as members do, so their forwarded writes
            // move to a new leader at once.
            if let Some(heartbeat) = self.paxos.heartbeat() {
                for slave in self.slaves() {
                    self.send_peer(slave, PeerMsg::Paxos(heartbeat.clone()), out);
                }
            }
        }
        let housekeeping_due =
            std::mem::take(&mut self.housekeeping_soon) || self.due(self.housekeeping_ticks());
        if self.is_writable() {
            self.resend_pending();
            self.pulse();
            if self.paxos.is_leader() && (took_over || housekeeping_due) {
                self.announce_leadership();
            }
        }
        if housekeeping_due {
            self.housekeeping(out);
        } else if self.phase == Phase::Running {
            // A node that is not registered hears who leads only in answer
            // to its `Alive` (the leader heartbeats registered nodes), and
            // forgets it soon after: register while it is known.
            self.register_if_missing();
        }
        self.catch_up_if_behind(out);
        self.retry_reads(out);
    }

    /// Ticks between `Alive` messages, claim attempts and the other
    /// housekeeping of a running node: a twentieth of `-timeout` (what it
    /// times), within [`HOUSEKEEPING_TICKS`] and [`MAX_HOUSEKEEPING_TICKS`],
    /// so an idle node with the default `-timeout` does it once a second. A
    /// joining node asks for its snapshot every [`HOUSEKEEPING_TICKS`].
    pub(super) fn housekeeping_ticks(&self) -> u64 {
        if self.phase != Phase::Running {
            return HOUSEKEEPING_TICKS;
        }
        (self.config.timeout_ticks / 20).clamp(HOUSEKEEPING_TICKS, MAX_HOUSEKEEPING_TICKS)
    }

    /// Ticks until a `Tick` could do anything (at least 1): the runtime
    /// sleeps that long when no input comes, so an idle node wakes for its
    /// heartbeats (a leader), its election timeout (a follower, put off by
    /// every heartbeat), housekeeping and pulses, not every tick. While
    /// anything waits on time (writes or reads in flight, a catch-up, a
    /// join, a change of leader not yet acted on) it is 1, as before. The
    /// caller must report the time that passed before each input (a
    /// follower's timeout counts from the last heartbeat it was told of).
    pub fn ticks_until_due(&self) -> u64 {
        let waiting_on_time = self.housekeeping_soon
            || self.phase != Phase::Running
            || !self.pending_writes.is_empty()
            || !self.parked_reads.is_empty()
            || self.reads.waits_on_time()
            || self.catch_up.is_some()
            || self.paxos.has_hint()
            || self.paxos.is_behind()
            || self.paxos.is_leader() != self.lead_since.is_some()
            || self.has_unfinished_work();
        if waiting_on_time {
            return 1;
        }
        // The next multiple of `period` past the clock, as `due` counts.
        let boundary = |period: u64| {
            let period = period.max(1);
            period - self.ticks % period
        };
        let mut due =
            u64::from(self.paxos.ticks_until_due()).min(boundary(self.housekeeping_ticks()));
        if self.is_writable() {
            let since_pulse = self.ticks - self.last_pulse_tick;
            due = due.min(self.config.pulse_ticks.saturating_sub(since_pulse));
        }
        due.max(1)
    }

    /// Whether a duty every `period` ticks is due: the latest `Tick` moved
    /// the clock past a multiple of it.
    pub(super) fn due(&self, period: u64) -> bool {
        let period = period.max(1);
        self.ticks_before / period != self.ticks / period
    }

    /// Notes when this node starts or stops leading; true when it just took
    /// over.
    fn track_leadership(&mut self) -> bool {
        match (self.paxos.is_leader(), self.lead_since) {
            (true, None) => {
                self.lead_since = Some(self.ticks);
                log::info!("this node leads the cluster");
                true
            }
            (false, Some(_)) => {
                self.lead_since = None;
                false
            }
            _ => false,
        }
    }

    /// Hands pending writes to a new leader, and again to the same one when
    /// they take too long (a message or a leader may have been lost; a
    /// duplicate is dropped when applied).
    fn resend_pending(&mut self) {
        let leader = self.paxos.leader().cloned();
        let changed = leader != self.last_leader;
        self.last_leader = leader.clone();
        if changed && !self.paxos.is_leader() {
            // A deposed leader's announcement must not reach the next leader,
            // which would apply it after its own.
            self.pending_writes
                .retain(|_, p| p.proposer != Proposer::Leader);
        }
        let Some(leader) = leader else {
            return;
        };
        // Scanning every pending write each tick would cost too much under
        // load; only look when the leader changed, and now and then.
        if !changed && !self.due(HOUSEKEEPING_TICKS) {
            return;
        }
        let retry_ticks = u64::from(self.config.paxos.election_ticks.1) * 2;
        let stale: Vec<u64> = self
            .pending_writes
            .iter()
            .filter(|(_, p)| {
                p.sent_to.is_none()
                    || (changed && p.sent_to.as_ref() != Some(&leader))
                    || self.ticks - p.sent_tick > retry_ticks
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            self.send_pending(seq);
        }
    }

    /// Whether a write of this node's own `kind` is proposed and not applied
    /// yet (each duty keeps at most one in flight).
    fn in_flight(&self, kind: Proposer) -> bool {
        self.pending_writes.values().any(|p| p.proposer == kind)
    }

    /// The leader names itself in `/ctl/leader`, so clients can read and
    /// watch who sequences writes (`doozer members` shows it). Looked at
    /// again now and then, so an announcement of a deposed leader that was
    /// decided late is corrected.
    fn announce_leadership(&mut self) {
        if self.in_flight(Proposer::Leader) {
            return;
        }
        let Ok(path) = Path::parse(LEADER_PATH) else {
            return;
        };
        let id = self.node.id.as_str().as_bytes();
        if matches!(self.store.current().entry(&path), Entry::File { body, .. } if &body[..] == id)
        {
            return;
        }
        let mutation = Mutation::Set {
            path,
            check: RevCheck::Clobber,
            body: Body::from(id.to_vec()),
        };
        self.propose(Proposer::Leader, mutation);
    }

    fn pulse(&mut self) {
        if self.ticks - self.last_pulse_tick < self.config.pulse_ticks {
            return;
        }
        if self.in_flight(Proposer::Pulse) {
            return;
        }
        if !self.nodes.contains_key(&self.node.id) || self.paxos.leader().is_none() {
            return;
        }
        self.last_pulse_tick = self.ticks;
        let Ok(path) = Path::parse(&format!("/ctl/node/{}/applied", self.node.id)) else {
            return;
        };
        let body = Body::from(self.store.rev().to_string().into_bytes());
        let mutation = Mutation::Set {
            path,
            check: RevCheck::Clobber,
            body,
        };
        self.propose(Proposer::Pulse, mutation);
    }

    fn housekeeping(&mut self, out: &mut Vec<Output>) {
        match &self.phase {
            Phase::Joining { target, .. } => {
                // Ask (again) for the snapshot that starts this node, unless
                // one is on its way (each chunk received renews the request).
                let target = target.clone();
                if !self.catch_up_timed_out(out) {
                    return;
                }
                self.catch_up = Some((target.clone(), self.ticks));
                // From rev 0: a snapshot, whatever the log holds.
                let addr = self.node.addr.clone();
                self.send_peer(target, PeerMsg::CatchUp { from: Rev(0), addr }, out);
                return;
            }
            Phase::Running => {}
        }
        // Tell every node this one lives: the leader answers with a
        // heartbeat (or another node with who leads), and every node keeps
        // when it last heard each other one, so a new leader removes a node
        // that died before it took over on time, not a whole -timeout after
        // its takeover.
        let alive = PeerMsg::Alive {
            applied: self.store.rev(),
            addr: self.node.addr.clone(),
        };
        let leader = self.paxos.leader().cloned();
        let hint_ticks = u64::from(self.config.paxos.election_ticks.1) * 2;
        let stale_hint = self.leader_hint.as_ref().is_some_and(|(hint, at)| {
            leader.as_ref() == Some(hint) || self.ticks - at > hint_ticks
        });
        if stale_hint {
            self.leader_hint = None;
        }
        let hint = self.leader_hint.as_ref().map(|(hint, _)| hint.clone());
        let mut to: BTreeSet<NodeId> = leader.into_iter().chain(hint).collect();
        to.extend(self.nodes.keys().cloned());
        let next = self.paxos.next_to_deliver();
        to.extend(self.paxos.membership().voters(next).iter().cloned());
        for node in to.into_iter().filter(|n| *n != self.node.id) {
            self.send_peer(node, alive.clone(), out);
        }
        // Forget snapshot streams their asker stopped pulling.
        let now = self.ticks;
        self.streams
            .retain(|_, stream| now - stream.touched < SNAPSHOT_STREAM_TICKS);
        // Forget what was heard from nodes that are gone.
        let nodes = &self.nodes;
        self.last_heard.retain(|id, _| nodes.contains_key(id));
        self.applied_of.retain(|id, _| nodes.contains_key(id));
        self.register_if_missing();
        self.claim_free_slot();
        if self.paxos.is_leader() {
            self.remove_silent_nodes();
        }
    }

    /// Writes this node's `/ctl/node/<id>` entries when they are missing: on
    /// attach, and after the leader removed it while it was silent.
    fn register_if_missing(&mut self) {
        if self.nodes.contains_key(&self.node.id) || self.paxos.leader().is_none() {
            return;
        }
        if self.in_flight(Proposer::Register) {
            return;
        }
        log::info!("registering this node under /ctl/node/{}", self.node.id);
        // The registration writes `applied`; the next pulse is a period on.
        self.last_pulse_tick = self.ticks;
        for mutation in self.registration(RevCheck::Clobber) {
            self.propose(Proposer::Register, mutation);
        }
    }

    /// A slave takes the first empty `/ctl/cal` slot with a conditional write,
    /// so exactly one contender wins it.
    fn claim_free_slot(&mut self) {
        if self.cal.contains(&self.node.id) || !self.nodes.contains_key(&self.node.id) {
            return;
        }
        if self.in_flight(Proposer::Claim) {
            return;
        }
        let free = cal_slots(self.store.current())
            .into_iter()
            .find(|(_, _, body)| body.is_empty());
        if let Some((path, rev, _)) = free {
            log::info!("claiming the free member slot {path}");
            let mutation = Mutation::Set {
                path,
                check: RevCheck::NotOlderThan(rev.0),
                body: Body::from(self.node.id.as_str().as_bytes().to_vec()),
            };
            self.propose(Proposer::Claim, mutation);
        }
    }

    /// The leader alone removes a node unheard of for `-timeout`: its member
    /// slot is emptied and its `/ctl/node/<id>` files deleted, each write
    /// conditional on what the leader saw, so a race costs nothing.
    fn remove_silent_nodes(&mut self) {
        let Some(since) = self.lead_since else {
            return;
        };
        let timeout = self.config.timeout_ticks;
        let retry = timeout.max(HOUSEKEEPING_TICKS * 10);
        self.removing
            .retain(|id, started| self.nodes.contains_key(id) && self.ticks - *started < retry);
        let silent: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|id| **id != self.node.id && !self.removing.contains_key(*id))
            .filter(|id| {
                // What this node heard before it took over counts: every
                // node tells every other one it lives.
                let heard = self.last_heard.get(*id).copied().unwrap_or(since);
                self.ticks - heard > timeout
            })
            .cloned()
            .collect();
        let recent = u64::from(self.config.paxos.election_ticks.1) * 2;
        for id in silent {
            if self.cal.contains(&id) && !self.quorum_survives_removal(&id, recent) {
                // Taking a voter out shrinks the voter set; with another
                // voter silent too, what is left could never decide again.
                // Wait until enough of the rest are heard from.
                log::debug!("not removing {id} yet: the remaining members heard from would not form a quorum");
                continue;
            }
            log::warn!("removing node {id}: nothing heard from it for longer than -timeout");
            self.removing.insert(id.clone(), self.ticks);
            let snapshot = self.store.current().clone();
            for (path, rev, body) in cal_slots(&snapshot) {
                if body.as_ref() == id.as_str().as_bytes() {
                    let mutation = Mutation::Set {
                        path,
                        check: RevCheck::NotOlderThan(rev.0),
                        body: Body::from(Vec::new()),
                    };
                    self.propose(Proposer::Removal, mutation);
                }
            }
            let Ok(dir) = Path::parse(&format!("/ctl/node/{id}")) else {
                continue;
            };
            for name in snapshot.dir_names(&dir).unwrap_or_default() {
                let Ok(path) = dir.join(&name) else {
                    continue;
                };
                if let Entry::File { rev, .. } = snapshot.entry(&path) {
                    let mutation = Mutation::Del {
                        path,
                        check: RevCheck::NotOlderThan(rev.0),
                    };
                    self.propose(Proposer::Removal, mutation);
                }
            }
        }
    }

    /// Nodes this node (as leader) is removing for silence, for tests and
    /// stats: they count as failed until the removal is through.
    pub fn removing(&self) -> Vec<NodeId> {
        self.removing.keys().cloned().collect()
    }

    /// Whether the voters left after removing `id` (and those already being
    /// removed) include a quorum of nodes heard from within `recent` ticks.
    fn quorum_survives_removal(&self, id: &NodeId, recent: u64) -> bool {
        let remaining: Vec<&NodeId> = self
            .cal
            .iter()
            .filter(|v| *v != id && !self.removing.contains_key(*v))
            .collect();
        let heard = remaining
            .iter()
            .filter(|v| {
                **v == &self.node.id
                    || self
                        .last_heard
                        .get(**v)
                        .is_some_and(|at| self.ticks - at <= recent)
            })
            .count();
        heard >= paxos::quorum(remaining.len())
    }

    /// Nodes that follow the log without voting: they get every decided slot
    /// from the leader as it is applied.
    pub(super) fn slaves(&self) -> Vec<NodeId> {
        let next = self.paxos.next_to_deliver();
        let voters = self
            .paxos
            .membership()
            .union_between(next, next + self.config.paxos.window as Slot);
        self.nodes
            .keys()
            .filter(|id| **id != self.node.id && !voters.contains(*id))
            .cloned()
            .collect()
    }

    pub(super) fn stream_to_slaves(&mut self, out: &mut Vec<Output>) {
        if self.newly_applied.is_empty() {
            return;
        }
        let applied = std::mem::take(&mut self.newly_applied);
        if !self.paxos.is_leader() {
            return;
        }
        // Cut into messages of consecutive slots within the catch-up budget.
        let budget = self.catch_up_budget();
        let mut batches: Vec<(Rev, Vec<Decree>)> = Vec::new();
        let mut bytes = 0;
        for (rev, decree) in applied {
            let size = decree.size();
            match batches.last_mut() {
                Some((first, decrees))
                    if bytes + size <= budget
                        && first.0.checked_add(decrees.len() as i64) == Some(rev.0) =>
                {
                    bytes += size;
                    decrees.push(decree);
                }
                _ => {
                    bytes = size;
                    batches.push((rev, vec![decree]));
                }
            }
        }
        for slave in self.slaves() {
            for (first, decrees) in &batches {
                let msg = PeerMsg::Decided {
                    first: *first,
                    decrees: decrees.clone(),
                };
                self.send_peer(slave.clone(), msg, out);
            }
        }
    }

    /// The most bytes of decrees or files in one catch-up answer, snapshot
    /// chunk or slave stream message: [`CATCH_UP_BYTES`], or a quarter of
    /// the peer frame cap when that is smaller, so the message's encoding
    /// (bounded by [`paxos::Value::size`] before it is built) always fits.
    pub(super) fn catch_up_budget(&self) -> usize {
        CATCH_UP_BYTES
            .min(self.config.max_peer_frame_bytes / 4)
            .max(1)
    }

    /// Handles a message from another node, after checking it against what
    /// this node knows: one peer message must never be able to crash,
    /// corrupt or steer this node, whoever sent it (see [`Refused`]).
    pub(super) fn on_peer(
        &mut self,
        from: NodeId,
        source: Option<IpAddr>,
        msg: PeerMsg,
        out: &mut Vec<Output>,
    ) {
        // An answer to this node's catch-up request came: ask for the rest
        // once it is applied (pull pacing, one answer in flight).
        let mut pull_again = false;
        match self.admit_peer(&from, source, msg, out) {
            Ok(pull) => {
                pull_again = pull;
                if self.nodes.contains_key(&from) {
                    self.last_heard.insert(from, self.ticks);
                }
            }
            Err(Refused::Conflict(what)) => {
                self.refused += 1;
                log::error!(
                    "refused a message from {from}: it contradicts this node's log: {what}"
                );
            }
            Err(why) => {
                self.refused += 1;
                log::debug!("refused a message from {from}: {why}");
            }
        }
        self.apply_decided(out);
        if pull_again {
            self.catch_up_if_behind(out);
        }
    }

    /// Whether `node` may lead this node beyond the voters of its window:
    /// the leader a voter named (this node is behind and does not know the
    /// new member yet), or the node this one attaches through. Being
    /// registered is not enough: a slave never leads, and a registered
    /// node that is no voter must not get its ballots accepted.
    fn vouched(&self, node: &NodeId) -> bool {
        self.leader_hint
            .as_ref()
            .is_some_and(|(hint, _)| hint == node)
            || matches!(&self.phase, Phase::Joining { target, .. } if target == node)
    }

    /// Checks and takes one peer message; whether it answered this node's
    /// catch-up request (so the next part should be asked for).
    fn admit_peer(
        &mut self,
        from: &NodeId,
        source: Option<IpAddr>,
        msg: PeerMsg,
        out: &mut Vec<Output>,
    ) -> Result<bool, Refused> {
        if *from == self.node.id {
            return Err(Refused::Paxos(paxos::Refusal::FromSelf));
        }
        match msg {
            PeerMsg::Paxos(msg) => {
                // A forward that passes `check_forward` is vouched for: its
                // sender may be a node still registering.
                let vouched = match &msg {
                    paxos::Msg::Forward { values } => {
                        self.check_forward(from, values)?;
                        true
                    }
                    _ => self.vouched(from),
                };
                let mut sent = Vec::new();
                let result = self.paxos.handle(from.clone(), msg, vouched, &mut sent);
                self.push_peer(sent, out);
                result?;
            }
            PeerMsg::Alive { applied, addr } => {
                if !(0..=paxos::MAX_SLOT).contains(&applied.0) {
                    return Err(Refused::Range);
                }
                self.remember_addr(from, addr, source)?;
                if self.nodes.contains_key(from) {
                    self.applied_of.insert(from.clone(), applied);
                }
                // Tell it who leads and how far the log is decided, so a node
                // that was away learns it is behind.
                if let Some(heartbeat) = self.paxos.heartbeat() {
                    self.send_peer(from.clone(), PeerMsg::Paxos(heartbeat), out);
                } else if let Some(leader) = self.paxos.leader().filter(|l| *l != from).cloned() {
                    if let Some(addr) = self.nodes.get(&leader).cloned() {
                        self.send_peer(from.clone(), PeerMsg::LeaderIs { leader, addr }, out);
                    }
                }
            }
            PeerMsg::LeaderIs { leader, addr } => {
                // An answer to this node's `Alive`, heard only from a voter
                // (the node it names may then lead this one: see `vouched`);
                // the address is used only for a leader this node does not
                // have registered (else /ctl/node's is).
                if !self.paxos.in_window(from) {
                    return Err(Refused::Stranger);
                }
                if leader == self.node.id {
                    return Err(Refused::Range);
                }
                if self.paxos.leader() != Some(&leader) {
                    if !self.nodes.contains_key(&leader) {
                        self.remember_addr(&leader, addr, None)?;
                    }
                    self.leader_hint = Some((leader, self.ticks));
                }
            }
            PeerMsg::CatchUp { from: first, addr } => {
                if !(0..=paxos::MAX_SLOT).contains(&first.0) {
                    return Err(Refused::Range);
                }
                self.remember_addr(from, addr, source)?;
                self.serve_catch_up(from.clone(), first, out)
            }
            PeerMsg::Decided { first, decrees } => return self.on_decided(from, first, decrees),
            PeerMsg::Snapshot(snapshot) => {
                let asked = match &self.phase {
                    Phase::Joining { target, .. } => target == from,
                    Phase::Running => self.asked(from),
                };
                if !asked {
                    return Err(Refused::NotAsked);
                }
                self.install(*snapshot, out)?;
            }
            PeerMsg::SnapshotChunk { index, done, data } => {
                self.on_snapshot_chunk(from.clone(), index, done, *data, out)?;
                return Ok(self.catch_up.is_none());
            }
            PeerMsg::ReadIndex { ask, ballot } => self.on_read_index(from, ask, &ballot, out)?,
            PeerMsg::ReadIndexIs { ask, index } => self.on_read_index_is(from, ask, index, out)?,
            PeerMsg::SnapshotNext { rev, index } => {
                let now = self.ticks;
                let Some(stream) = self.streams.get_mut(from) else {
                    return Err(Refused::NotAsked);
                };
                if stream.tree.rev() != rev {
                    return Err(Refused::NotAsked);
                }
                stream.touched = now;
                self.send_chunk(from.clone(), index, out);
            }
        }
        Ok(false)
    }

    /// Whether this node asked `node` for catch-up lately.
    fn asked(&self, node: &NodeId) -> bool {
        self.asked_catch_up
            .get(node)
            .is_some_and(|at| self.ticks - at <= CATCH_UP_ANSWER_TICKS)
    }

    /// Values forwarded for the leader to order: writes only, each with a
    /// sane floor; of the sender's own origin, except from a voter (a
    /// deposed leader hands over what it had queued, whoever proposed it);
    /// and from a node that is neither registered nor a voter, only its own
    /// registration.
    fn check_forward(&self, from: &NodeId, values: &[Decree]) -> Result<(), Refused> {
        let voter = self.paxos.in_window(from);
        let registered = self.nodes.contains_key(from);
        for value in values {
            let Decree::Write {
                origin, seq, floor, ..
            } = value
            else {
                return Err(Refused::Forward("a fill"));
            };
            if floor > seq {
                return Err(Refused::Forward("a floor above the write's seq"));
            }
            if origin != from && !voter {
                return Err(Refused::Forward("another origin's write"));
            }
            if !registered && !voter && !registers(value, from) {
                return Err(Refused::Forward("more than its registration"));
            }
        }
        Ok(())
    }

    /// Decided slots: only from the node this one asked for catch-up, or
    /// from the leader (which streams applied slots to slaves); in range;
    /// and agreeing with every slot this node already knows decided.
    fn on_decided(
        &mut self,
        from: &NodeId,
        first: Rev,
        decrees: Vec<Decree>,
    ) -> Result<bool, Refused> {
        if self.phase != Phase::Running {
            return Err(Refused::NotAsked);
        }
        let from_leader = self.paxos.leader() == Some(from);
        if !from_leader && !self.asked(from) {
            return Err(Refused::NotAsked);
        }
        let len = Slot::try_from(decrees.len()).map_err(|_| Refused::Range)?;
        let end = first.0.checked_add(len).ok_or(Refused::Range)?;
        if first.0 < 1 || end - 1 > paxos::MAX_SLOT {
            return Err(Refused::Range);
        }
        // Check every slot before learning any.
        let log_start = self
            .decided_log
            .front()
            .map_or(Rev(i64::MAX), |(rev, _)| *rev);
        for (slot, decree) in (first.0..end).zip(&decrees) {
            let known = if slot < self.paxos.next_to_deliver() {
                (slot >= log_start.0).then(|| &self.decided_log[(slot - log_start.0) as usize].1)
            } else {
                self.paxos.chosen_value(slot)
            };
            if known.is_some_and(|known| known != decree) {
                return Err(Refused::Conflict(format!(
                    "slot {slot}: {known:?} here, {decree:?} from it"
                )));
            }
        }
        for (slot, decree) in (first.0..end).zip(decrees) {
            self.paxos.learn(slot, decree)?;
        }
        // The answer to this node's request: ask for the rest once it is
        // applied (unless a snapshot is being assembled meanwhile).
        if self
            .catch_up
            .as_ref()
            .is_some_and(|(asked, _)| asked == from)
            && self.assembly.is_none()
        {
            self.catch_up = None;
            return Ok(true);
        }
        Ok(false)
    }

    /// Keeps the address of a node that is not registered (attaching, or
    /// removed), so it can be answered. Bounded. When the link's source is
    /// known, a node may only claim an address on the host it connects
    /// from: this node never dials a host named by a stranger.
    fn remember_addr(
        &mut self,
        id: &NodeId,
        addr: String,
        source: Option<IpAddr>,
    ) -> Result<(), Refused> {
        if self.nodes.contains_key(id) {
            return Ok(());
        }
        if let Some(source) = source {
            let claimed = addr.parse::<std::net::SocketAddr>().ok();
            if claimed.is_none_or(|a| a.ip().to_canonical() != source.to_canonical()) {
                return Err(Refused::Address(addr));
            }
        }
        if self.unregistered.len() >= MAX_UNREGISTERED && !self.unregistered.contains_key(id) {
            self.unregistered.pop_first();
        }
        self.unregistered.insert(id.clone(), addr);
        Ok(())
    }

    /// Answers a catch-up request: the decided slots from `first` on, as
    /// many as fit the catch-up budget (the asker asks again for the rest),
    /// or the first chunk of a snapshot when the log no longer reaches back
    /// to `first`. Nothing when this node has nothing newer (the asker's
    /// request times out and it may ask another node).
    fn serve_catch_up(&mut self, to: NodeId, first: Rev, out: &mut Vec<Output>) {
        if self.phase != Phase::Running || first > self.store.rev() {
            return;
        }
        let log_start = self.decided_log.front().map(|(rev, _)| *rev);
        match log_start {
            Some(start) if first >= start && first > Rev(0) => {
                let Ok(skip) = usize::try_from(first.0 - start.0) else {
                    return;
                };
                let budget = self.catch_up_budget();
                let mut bytes = 0;
                let mut decrees = Vec::new();
                for (_, decree) in self.decided_log.range(skip..) {
                    let size = decree.size();
                    if !decrees.is_empty() && bytes + size > budget {
                        break;
                    }
                    bytes += size;
                    decrees.push(decree.clone());
                }
                self.send_peer(to, PeerMsg::Decided { first, decrees }, out);
            }
            _ => self.start_snapshot_stream(to, out),
        }
    }

    /// Takes a snapshot of the current state for `to` and sends its first
    /// chunk; the others follow as `to` asks for them.
    fn start_snapshot_stream(&mut self, to: NodeId, out: &mut Vec<Output>) {
        if !self.streams.contains_key(&to) && self.streams.len() >= MAX_SNAPSHOT_STREAMS {
            let idlest = self
                .streams
                .iter()
                .min_by_key(|(_, stream)| stream.touched)
                .map(|(id, _)| id.clone());
            if let Some(id) = idlest {
                self.streams.remove(&id);
            }
        }
        let data = self.snapshot_tail();
        log::info!("sending a snapshot at rev {} to {to}", data.rev);
        let stream = SnapshotStream {
            tree: self.store.current().clone(),
            membership: data.membership,
            dedupe: data.dedupe,
            next_index: 0,
            cursor: None,
            last_start: None,
            done: false,
            touched: self.ticks,
        };
        self.streams.insert(to.clone(), stream);
        self.send_chunk(to, 0, out);
    }

    /// Sends chunk `index` of the snapshot streamed to `to`: the next one,
    /// or the last one again (it may have been lost); any other is ignored.
    fn send_chunk(&mut self, to: NodeId, index: u64, out: &mut Vec<Output>) {
        let budget = self.catch_up_budget();
        let Some(stream) = self.streams.get_mut(&to) else {
            return;
        };
        let start = if index == stream.next_index && !stream.done {
            stream.cursor.clone()
        } else if index.checked_add(1) == Some(stream.next_index) {
            stream.last_start.clone()
        } else {
            return;
        };
        let (files, done) = stream.tree.files_after(start.as_ref(), budget);
        if index == stream.next_index {
            stream.last_start = start;
            if let Some((path, _, _)) = files.last() {
                stream.cursor = Some(path.clone());
            }
            stream.next_index += 1;
            stream.done = done;
        }
        let (membership, dedupe) = if done {
            (stream.membership.clone(), stream.dedupe.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        let data = Box::new(SnapshotData {
            rev: stream.tree.rev(),
            files,
            membership,
            dedupe,
        });
        self.send_peer(to, PeerMsg::SnapshotChunk { index, done, data }, out);
    }

    /// Adds a chunk to the snapshot being received, installs it after the
    /// last one, and asks for the next. Only chunks from the node this one
    /// asked are taken, in order and of one rev, bounded in bytes.
    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        index: u64,
        done: bool,
        data: SnapshotData,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        if index == 0 {
            let asked = self
                .catch_up
                .as_ref()
                .is_some_and(|(asked, _)| *asked == from);
            let stale = self.phase == Phase::Running && data.rev <= self.store.rev();
            let restart = self
                .assembly
                .as_ref()
                .is_none_or(|a| a.from != from || a.rev != data.rev);
            if !asked {
                return Err(Refused::NotAsked);
            }
            if stale {
                log::debug!("ignoring a snapshot chunk from {from} (not newer than this node)");
                return Ok(());
            }
            if restart {
                self.assembly = Some(Assembly {
                    from: from.clone(),
                    rev: data.rev,
                    next_index: 0,
                    files: Vec::new(),
                    bytes: 0,
                    retries: 0,
                });
            }
        }
        let Some(assembly) = self.assembly.as_mut() else {
            return Err(Refused::NotAsked);
        };
        if assembly.from != from || assembly.rev != data.rev || assembly.next_index != index {
            return Err(Refused::NotAsked);
        }
        let bytes: usize = data
            .files
            .iter()
            .map(|(path, _, body)| file_bytes(path, body))
            .sum();
        assembly.bytes = assembly.bytes.saturating_add(bytes);
        if assembly.bytes > MAX_SNAPSHOT_BYTES {
            log::warn!("dropping a snapshot from {from}: larger than {MAX_SNAPSHOT_BYTES} bytes");
            self.assembly = None;
            return Ok(());
        }
        assembly.files.extend(data.files);
        assembly.next_index += 1;
        assembly.retries = 0;
        let (rev, next) = (assembly.rev, assembly.next_index);
        // Progress: the request is not timed out while chunks arrive.
        self.catch_up = Some((from.clone(), self.ticks));
        if done {
            let assembly = self.assembly.take().expect("checked above");
            let snapshot = SnapshotData {
                rev,
                files: assembly.files,
                membership: data.membership,
                dedupe: data.dedupe,
            };
            self.install(snapshot, out)?;
        } else {
            self.send_peer(from, PeerMsg::SnapshotNext { rev, index: next }, out);
        }
        Ok(())
    }

    /// Whether the catch-up request in flight (if any) timed out, so a new
    /// one may be sent. A snapshot being received is asked for its next
    /// chunk again a few times before it is given up.
    fn catch_up_timed_out(&mut self, out: &mut Vec<Output>) -> bool {
        let Some((_, asked)) = &self.catch_up else {
            return true;
        };
        // A snapshot in chunks gets longer per chunk than a log answer.
        let patience = if self.assembly.is_some() {
            CATCH_UP_TICKS
        } else {
            HOUSEKEEPING_TICKS
        };
        if self.ticks - asked < patience {
            return false;
        }
        if let Some(assembly) = self.assembly.as_mut() {
            if assembly.retries < SNAPSHOT_RETRIES {
                assembly.retries += 1;
                let (from, rev, index) = (assembly.from.clone(), assembly.rev, assembly.next_index);
                self.catch_up = Some((from.clone(), self.ticks));
                self.send_peer(from, PeerMsg::SnapshotNext { rev, index }, out);
                return false;
            }
        }
        // No answer in time: start over, possibly from another node.
        self.catch_up = None;
        self.assembly = None;
        true
    }

    /// The replicated state at the current rev.
    pub fn snapshot_data(&self) -> SnapshotData {
        SnapshotData {
            files: self.store.current().files(),
            ..self.snapshot_tail()
        }
    }

    /// The replicated state at the current rev but the files.
    fn snapshot_tail(&self) -> SnapshotData {
        SnapshotData {
            rev: self.store.rev(),
            files: Vec::new(),
            membership: self.paxos.membership().entries(),
            dedupe: self
                .applied_writes
                .iter()
                .map(|(id, a)| {
                    let seqs = a.seqs.iter().copied().collect();
                    (id.clone(), a.floor, seqs, a.last)
                })
                .collect(),
        }
    }

    pub(super) fn install(
        &mut self,
        snapshot: SnapshotData,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        if !(0..=paxos::MAX_SLOT).contains(&snapshot.rev.0) {
            return Err(Refused::Range);
        }
        if snapshot.rev <= self.store.rev() && self.phase == Phase::Running {
            return Ok(());
        }
        let Some(membership) = Membership::from_entries(snapshot.membership) else {
            return Err(Refused::Snapshot("without voters"));
        };
        log::info!("installing a snapshot at rev {}", snapshot.rev);
        let tree = Snapshot::from_files(snapshot.rev, snapshot.files);
        self.store = Store::from_snapshot(tree, self.config.history_revs);
        self.applied_writes = snapshot
            .dedupe
            .into_iter()
            .map(|(id, floor, seqs, last)| {
                let seqs = seqs.into_iter().collect();
                (id, Applied { floor, seqs, last })
            })
            .collect();
        // Writes handed to a leader before the snapshot's rev and not
        // answered: the ones the snapshot shows applied, or whose origin
        // entry it does not have (pruned, or never made), cannot be answered
        // truly nor resent safely.
        let mine = self.applied_writes.get(&self.node.id).cloned();
        self.origin_seen = mine.is_some();
        self.drop_handed_out_writes(
            |seq| {
                mine.as_ref()
                    .is_none_or(|a| seq < a.floor || a.seqs.contains(&seq))
            },
            out,
        );
        self.decided_log.clear();
        self.paxos.restart_at(snapshot.rev.0, membership);
        self.refresh_nodes();
        self.refresh_cal();
        self.phase = Phase::Running;
        self.installed = true;
        self.catch_up = None;
        self.assembly = None;
        // Slots applied before the jump are not followed by the next ones:
        // slaves catch up on what they miss.
        self.newly_applied.clear();
        self.answer_writes_in_snapshot(out);
        // The history before the snapshot is gone: waits that needed it can
        // never be answered from it.
        let keys: Vec<WaitKey> = self.wait_tags.keys().copied().collect();
        for key in keys {
            self.waits.remove(&key);
            if let Some(tag) = self.wait_tags.remove(&key) {
                let outcome = Err(ErrCode::TooLate.into());
                out.push(Output::Reply {
                    conn: key.0,
                    tag,
                    outcome,
                });
            }
        }
        let parked: Vec<ParkedRead> = std::mem::take(&mut self.parked_reads)
            .into_values()
            .flatten()
            .collect();
        for read in parked {
            self.read(read, out);
        }
        Ok(())
    }

    /// Writes proposed here that the installed snapshot says were applied
    /// (while this node was behind) will never be applied here again: drop
    /// them, telling their clients the outcome is unknown, so they do not
    /// wait forever nor block this node's own duties.
    fn answer_writes_in_snapshot(&mut self, out: &mut Vec<Output>) {
        let Some(applied) = self.applied_writes.get(&self.node.id) else {
            return;
        };
        let done: Vec<u64> = self
            .pending_writes
            .keys()
            .filter(|seq| **seq < applied.floor || applied.seqs.contains(seq))
            .copied()
            .collect();
        for seq in done {
            let Some(pending) = self.pending_writes.remove(&seq) else {
                continue;
            };
            if let Proposer::Client { conn, tag } = pending.proposer {
                let outcome = Err(ReplyError::other(
                    "applied while this node was catching up; result unknown",
                ));
                out.push(Output::Reply { conn, tag, outcome });
            }
        }
    }

    /// Asks a node that knows more of the log for what this one misses.
    fn catch_up_if_behind(&mut self, out: &mut Vec<Output>) {
        if self.phase != Phase::Running {
            return;
        }
        if !self.catch_up_timed_out(out) {
            return;
        }
        let hint = self.paxos.take_hint().map(|(node, _)| node);
        if hint.is_some() {
            self.catch_up_source = hint.clone();
        }
        // Asked of nodes whose word this node takes on the log: one that
        // proved it is ahead in a consensus message (the hint); failing
        // that, the voter that said (in its `Alive`) it applied the most, if
        // that is more than here (a leader can be behind too); the leader;
        // the last such node. Never a non-voter on its own claim: its answer
        // is installed.
        let rev = self.store.rev();
        let ahead = self
            .applied_of
            .iter()
            .filter(|(id, applied)| {
                **id != self.node.id && **applied > rev && self.paxos.in_window(id)
            })
            .max_by_key(|(_, applied)| **applied)
            .map(|(id, _)| id.clone());
        let source = match hint {
            Some(node) => Some(node),
            None if self.paxos.is_behind() => ahead
                .or_else(|| self.paxos.leader().filter(|l| **l != self.node.id).cloned())
                .or_else(|| self.catch_up_source.clone()),
            None => None,
        };
        if let Some(source) = source {
            let from = self.store.rev().next();
            self.catch_up = Some((source.clone(), self.ticks));
            let ticks = self.ticks;
            self.asked_catch_up
                .retain(|_, at| ticks - *at <= CATCH_UP_ANSWER_TICKS);
            self.asked_catch_up.insert(source.clone(), ticks);
            let addr = self.node.addr.clone();
            self.send_peer(source, PeerMsg::CatchUp { from, addr }, out);
        }
    }

    /// What this node knows of the cluster, for the web view and stats.
    pub fn view(&self, tick_ms: u64) -> ClusterView {
        let cal = cal_slots(self.store.current())
            .into_iter()
            .map(|(path, _, body)| {
                let slot = path.as_str().rsplit('/').next().unwrap_or("").to_string();
                let id = std::str::from_utf8(&body).ok().and_then(NodeId::parse);
                (slot, id)
            })
            .collect();
        let nodes = self
            .nodes
            .iter()
            .map(|(id, addr)| {
                let heard_ms_ago = if *id == self.node.id {
                    Some(0)
                } else if self.paxos.is_leader() {
                    self.last_heard.get(id).map(|t| (self.ticks - t) * tick_ms)
                } else {
                    None
                };
                let applied = if *id == self.node.id {
                    Some(self.store.rev())
                } else {
                    self.applied_of.get(id).copied()
                };
                NodeView {
                    id: id.clone(),
                    addr: addr.clone(),
                    is_member: self.cal.contains(id),
                    applied,
                    heard_ms_ago,
                }
            })
            .collect();
        ClusterView {
            id: self.node.id.clone(),
            cluster_name: self.node.cluster_name.clone(),
            rev: self.store.rev(),
            history_start: self.store.head(),
            leader: self.paxos.leader().cloned(),
            is_leader: self.paxos.is_leader(),
            is_member: self.cal.contains(&self.node.id),
            writable: self.is_writable(),
            cal,
            nodes,
            pending_writes: self.pending_writes.len(),
            waiting: self.waiting(),
            refused_peer_msgs: self.refused,
        }
    }

    /// The voter sets of the slots this node may still see proposed (more
    /// than one while a membership change is on its way in).
    pub fn window_voters(&self) -> Vec<BTreeSet<NodeId>> {
        let next = self.paxos.next_to_deliver();
        let end = next + self.config.paxos.window as Slot;
        self.paxos
            .membership()
            .sets_between(next, end)
            .into_iter()
            .cloned()
            .collect()
    }

    /// A one-line summary of this node's replication state, for logs and
    /// failing tests.
    pub fn describe(&self) -> String {
        format!(
            "{} phase={:?} rev={} leader={:?} is_leader={} commit={} next={} behind={} registered={} voter={} catch_up={:?} pending={} voters={:?}",
            self.node.id,
            self.phase,
            self.store.rev(),
            self.paxos.leader(),
            self.paxos.is_leader(),
            self.paxos.commit(),
            self.paxos.next_to_deliver(),
            self.paxos.is_behind(),
            self.nodes.contains_key(&self.node.id),
            self.paxos.is_voter(),
            self.catch_up,
            self.pending_writes.len(),
            self.paxos
                .membership()
                .entries()
                .into_iter()
                .map(|(slot, v)| (slot.max(-1), v.iter().map(|n| n.as_str()[..4].to_string()).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        )
    }

    /// Who is in the cluster, for `/ctl` readers and the web view: voters of
    /// the current rev.
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.cal
    }
}
