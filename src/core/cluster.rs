//! The core's cluster duties: time, peers, catch-up, slaves, liveness.
//!
//! Everything here is driven by ticks and peer messages and only ever
//! proposes ordinary writes through consensus (removing a silent node,
//! claiming a free slot, registering this node), so every replica sees the
//! same decisions in the same order.

use std::collections::BTreeSet;

use super::*;

impl Core {
    pub(super) fn on_tick(&mut self, elapsed: u64, out: &mut Vec<Output>) {
        let elapsed = elapsed.max(1);
        self.ticks_before = self.ticks;
        self.ticks = self.ticks.saturating_add(elapsed);
        let mut sent = Vec::new();
        self.paxos
            .tick_by(u32::try_from(elapsed).unwrap_or(u32::MAX), &mut sent);
        self.push_peer(sent, out);
        let took_over = self.track_leadership();
        let heartbeat_due = self.due(u64::from(self.config.paxos.heartbeat_ticks));
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
            if self.paxos.is_leader() && (took_over || self.due(HOUSEKEEPING_TICKS)) {
                self.announce_leadership();
            }
        }
        if self.due(HOUSEKEEPING_TICKS) {
            self.housekeeping(out);
        }
        self.catch_up_if_behind(out);
    }

    /// Whether a duty every `period` ticks is due: the latest `Tick` moved
    /// the clock past a multiple of it.
    fn due(&self, period: u64) -> bool {
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
                // Ask (again) for the snapshot that starts this node.
                let target = target.clone();
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
        for id in silent {
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

    pub(super) fn on_peer(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Output>) {
        self.last_heard.insert(from.clone(), self.ticks);
        match msg {
            PeerMsg::Paxos(msg) => {
                let mut sent = Vec::new();
                self.paxos.handle(from, msg, &mut sent);
                self.push_peer(sent, out);
            }
            PeerMsg::Alive { applied, addr } => {
                self.remember_addr(&from, addr);
                self.applied_of.insert(from.clone(), applied);
                // Tell it who leads and how far the log is decided, so a node
                // that was away learns it is behind.
                if let Some(heartbeat) = self.paxos.heartbeat() {
                    self.send_peer(from, PeerMsg::Paxos(heartbeat), out);
                } else if let Some(leader) = self.paxos.leader().filter(|l| **l != from).cloned() {
                    if let Some(addr) = self.nodes.get(&leader).cloned() {
                        self.send_peer(from, PeerMsg::LeaderIs { leader, addr }, out);
                    }
                }
            }
            PeerMsg::LeaderIs { leader, addr } => {
                if self.paxos.leader() != Some(&leader) {
                    self.remember_addr(&leader, addr);
                    self.leader_hint = Some((leader, self.ticks));
                }
            }
            PeerMsg::CatchUp { from: first, addr } => {
                self.remember_addr(&from, addr);
                self.serve_catch_up(from, first, out)
            }
            PeerMsg::Decided { first, decrees } => {
                if self.phase == Phase::Running {
                    for (i, decree) in decrees.into_iter().enumerate() {
                        self.paxos.learn(first.0 + i as Slot, decree);
                    }
                    if self
                        .catch_up
                        .as_ref()
                        .is_some_and(|(asked, _)| *asked == from)
                    {
                        self.catch_up = None;
                    }
                }
            }
            PeerMsg::Snapshot(snapshot) => self.install(*snapshot, out),
        }
        self.apply_decided(out);
    }

    /// Keeps the address of a node that is not registered (attaching, or
    /// removed), so it can be answered. Bounded.
    fn remember_addr(&mut self, id: &NodeId, addr: String) {
        if self.nodes.contains_key(id) {
            return;
        }
        if self.unregistered.len() >= MAX_UNREGISTERED && !self.unregistered.contains_key(id) {
            self.unregistered.pop_first();
        }
        self.unregistered.insert(id.clone(), addr);
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
                .map(|(id, a)| (id.clone(), a.floor, a.seqs.iter().copied().collect()))
                .collect(),
        }
    }

    fn install(&mut self, snapshot: SnapshotData, out: &mut Vec<Output>) {
        if snapshot.rev <= self.store.rev() && self.phase == Phase::Running {
            return;
        }
        let Some(membership) = Membership::from_entries(snapshot.membership) else {
            log::warn!("ignoring a snapshot without voters");
            return;
        };
        log::info!("installing a snapshot at rev {}", snapshot.rev);
        let tree = Snapshot::from_files(snapshot.rev, snapshot.files);
        self.store = Store::from_snapshot(tree, self.config.history_revs);
        self.applied_writes = snapshot
            .dedupe
            .into_iter()
            .map(|(id, floor, seqs)| {
                let seqs = seqs.into_iter().collect();
                (id, Applied { floor, seqs })
            })
            .collect();
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
            waiting: self.wait_tags.len(),
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
