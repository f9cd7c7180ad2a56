//! The core's cluster duties: time, peers, catch-up, slaves, liveness.
//!
//! Everything here is driven by ticks and peer messages and only ever
//! proposes ordinary writes through consensus (removing a silent node,
//! claiming a free slot, registering this node), so every replica sees the
//! same decisions in the same order.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;

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
/// - `Forward`: see `check_forward`.
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
}

impl Core {
    pub(super) fn on_tick(&mut self, out: &mut Vec<Output>) {
        self.ticks += 1;
        let mut sent = Vec::new();
        self.paxos.tick(&mut sent);
        self.push_peer(sent, out);
        let took_over = self.track_leadership();
        let heartbeat_due = self.ticks % u64::from(self.config.paxos.heartbeat_ticks.max(1)) == 0;
        if self.paxos.is_leader() && (took_over || heartbeat_due) {
            // Slaves hear who leads as members do, so their forwarded writes
            // move to a new leader at once.
            if let Some(heartbeat) = self.paxos.heartbeat() {
                for slave in self.slaves() {
                    self.send_peer(slave, PeerMsg::Paxos(heartbeat.clone()), out);
                }
            }
        }
        if self.is_writable() {
            self.resend_pending();
            self.pulse();
            if self.paxos.is_leader() && (took_over || self.ticks % HOUSEKEEPING_TICKS == 0) {
                self.announce_leadership();
            }
        }
        if self.ticks % HOUSEKEEPING_TICKS == 0 {
            self.housekeeping(out);
        }
        self.catch_up_if_behind(out);
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
        if !changed && self.ticks % HOUSEKEEPING_TICKS != 0 {
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
                // Ask (again) for the snapshot that starts this node.
                let target = target.clone();
                // From rev 0: a snapshot, whatever the log holds.
                let addr = self.node.addr.clone();
                self.send_peer(target, PeerMsg::CatchUp { from: Rev(0), addr }, out);
                return;
            }
            Phase::Running => {}
        }
        // Tell the leader this node lives; a node that does not know the
        // leader asks every voter (the leader answers with a heartbeat).
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
        if to.is_empty() {
            // Nobody known to lead: ask every node this one knows of.
            let next = self.paxos.next_to_deliver();
            to = self.paxos.membership().voters(next).clone();
            to.extend(self.nodes.keys().cloned());
            if let Phase::Joining { target, .. } = &self.phase {
                to.insert(target.clone());
            }
        }
        for node in to.into_iter().filter(|n| *n != self.node.id) {
            self.send_peer(node, alive.clone(), out);
        }
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
                let heard = self
                    .last_heard
                    .get(*id)
                    .copied()
                    .unwrap_or(since)
                    .max(since);
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
        let first = applied[0].0;
        let decrees: Vec<Decree> = applied.into_iter().map(|(_, d)| d).collect();
        for slave in self.slaves() {
            let msg = PeerMsg::Decided {
                first,
                decrees: decrees.clone(),
            };
            self.send_peer(slave, msg, out);
        }
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
        match self.admit_peer(&from, source, msg, out) {
            Ok(()) => {
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

    fn admit_peer(
        &mut self,
        from: &NodeId,
        source: Option<IpAddr>,
        msg: PeerMsg,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
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
            PeerMsg::Decided { first, decrees } => self.on_decided(from, first, decrees)?,
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
        }
        Ok(())
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
    ) -> Result<(), Refused> {
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
        if self
            .catch_up
            .as_ref()
            .is_some_and(|(asked, _)| asked == from)
        {
            self.catch_up = None;
        }
        Ok(())
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

    fn serve_catch_up(&mut self, to: NodeId, first: Rev, out: &mut Vec<Output>) {
        if self.phase != Phase::Running || first > self.store.rev() {
            return;
        }
        let log_start = self.decided_log.front().map(|(rev, _)| *rev);
        match log_start {
            Some(start) if first >= start && first > Rev(0) => {
                let skip = (first.0 - start.0) as usize;
                let decrees: Vec<Decree> = self
                    .decided_log
                    .iter()
                    .skip(skip)
                    .take(CATCH_UP_SLOTS)
                    .map(|(_, d)| d.clone())
                    .collect();
                self.send_peer(to, PeerMsg::Decided { first, decrees }, out);
            }
            _ => {
                let snapshot = self.snapshot_data();
                log::info!("sending a snapshot at rev {} to {to}", snapshot.rev);
                self.send_peer(to, PeerMsg::Snapshot(Box::new(snapshot)), out);
            }
        }
    }

    /// The replicated state at the current rev.
    pub fn snapshot_data(&self) -> SnapshotData {
        SnapshotData {
            rev: self.store.rev(),
            files: self.store.current().files(),
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
        self.catch_up = None;
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

    /// Asks a node that knows more of the log for what this one misses.
    fn catch_up_if_behind(&mut self, out: &mut Vec<Output>) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some((_, asked)) = &self.catch_up {
            if self.ticks - asked < HOUSEKEEPING_TICKS {
                return;
            }
            self.catch_up = None;
        }
        let hint = self.paxos.take_hint().map(|(node, _)| node);
        if hint.is_some() {
            self.catch_up_source = hint.clone();
        }
        // Asked only of nodes whose word this node takes on the log: one
        // that proved it is ahead in a consensus message (the hint), the
        // leader, the last such node. Never a node on its own claim (an
        // `Alive` saying how far it applied): its answer is installed.
        let source = match hint {
            Some(node) => Some(node),
            None if self.paxos.is_behind() => self
                .paxos
                .leader()
                .filter(|l| **l != self.node.id)
                .cloned()
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
