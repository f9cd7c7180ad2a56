//! Multi-Paxos with a stable leader, as a pure state machine.
//!
//! Why this shape: the original ran one Paxos instance per slot with a rotating
//! owner and filled idle owners' slots after a delay, so every write waited for a
//! fill. Here one leader runs phase 1 once for every open slot and then streams
//! phase-2 batches, so a write costs one round trip to a quorum (zero network
//! hops for a lone node, which is simply a quorum of one).
//!
//! The engine knows nothing of the store or of sockets: values are opaque, time
//! is a count of ticks, randomness comes from a seeded generator, and every
//! message to another member is returned in `out`. Messages a node sends to
//! itself are delivered at once, inside the same call.

mod ballot;

pub use ballot::Ballot;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::types::NodeId;

/// A consensus slot. Slot `n` produces store rev `n`.
pub type Slot = i64;

/// A value the engine can order. A new leader fills holes with `nop()`.
pub trait Value: Clone + std::fmt::Debug + PartialEq {
    fn nop() -> Self;
}

/// Peer messages of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg<V> {
    /// Phase 1a for every slot from `from_slot` on.
    Prepare { ballot: Ballot, from_slot: Slot },
    /// Phase 1b: what this acceptor accepted at or after `from_slot`.
    Promise {
        ballot: Ballot,
        from_slot: Slot,
        accepted: Vec<(Slot, Ballot, V)>,
    },
    /// Phase 2a for the consecutive slots `first_slot..`, plus the leader's
    /// commit point (every slot `<= commit` is chosen).
    Accept {
        ballot: Ballot,
        first_slot: Slot,
        values: Vec<V>,
        commit: Slot,
    },
    /// Phase 2b for the slots `first_slot..=last_slot`.
    Accepted {
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
    },
    /// The receiver has promised a higher ballot.
    Reject { promised: Ballot },
    /// Heartbeat from the leader carrying the commit point.
    Commit { ballot: Ballot, commit: Slot },
}

/// Settings, in ticks.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many slots past the commit point a leader may have in flight.
    pub window: usize,
    /// A follower that hears nothing from a leader for a random number of ticks
    /// in this range starts an election.
    pub election_ticks: (u32, u32),
    /// A leader sends a heartbeat after this many quiet ticks.
    pub heartbeat_ticks: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: 1000,
            election_ticks: (30, 60),
            heartbeat_ticks: 5,
        }
    }
}

#[derive(Debug)]
enum Role<V> {
    Follower {
        leader: Option<NodeId>,
        quiet_ticks: u32,
        timeout_ticks: u32,
    },
    Candidate {
        ballot: Ballot,
        promises: BTreeMap<NodeId, Vec<(Slot, Ballot, V)>>,
        elapsed_ticks: u32,
        timeout_ticks: u32,
    },
    Leader {
        ballot: Ballot,
        next_slot: Slot,
        acks: BTreeMap<Slot, BTreeSet<NodeId>>,
        quiet_ticks: u32,
    },
}

/// One member's engine: acceptor, learner and (when elected) leader.
pub struct Paxos<V: Value> {
    me: NodeId,
    voters: BTreeSet<NodeId>,
    settings: Settings,
    rng: rand_chacha::ChaCha8Rng,
    role: Role<V>,
    /// Acceptor: the highest ballot promised.
    promised: Ballot,
    /// Acceptor: accepted and not yet decided values.
    accepted: BTreeMap<Slot, (Ballot, V)>,
    /// Learner: chosen values not yet taken by the caller.
    chosen: BTreeMap<Slot, V>,
    /// Learner: the next slot to hand out; everything below it is decided.
    next_to_deliver: Slot,
    /// The highest slot known to be chosen.
    commit: Slot,
    /// Values waiting for a slot while this node leads.
    queue: VecDeque<V>,
    /// Messages to self, delivered before a call returns.
    loopback: VecDeque<Msg<V>>,
}

impl<V: Value> Paxos<V> {
    /// A member whose first undecided slot is `first_slot`, voting with `voters`.
    pub fn new(
        me: NodeId,
        voters: BTreeSet<NodeId>,
        first_slot: Slot,
        settings: Settings,
        seed: u64,
    ) -> Paxos<V> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let timeout_ticks = random_ticks(&mut rng, settings.election_ticks);
        Paxos {
            me,
            voters,
            settings,
            rng,
            role: Role::Follower {
                leader: None,
                quiet_ticks: 0,
                timeout_ticks,
            },
            promised: Ballot::ZERO,
            accepted: BTreeMap::new(),
            chosen: BTreeMap::new(),
            next_to_deliver: first_slot,
            commit: first_slot - 1,
            queue: VecDeque::new(),
            loopback: VecDeque::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// The leader this node follows or is, if known.
    pub fn leader(&self) -> Option<&NodeId> {
        match &self.role {
            Role::Leader { .. } => Some(&self.me),
            Role::Follower { leader, .. } => leader.as_ref(),
            Role::Candidate { .. } => None,
        }
    }

    /// Values queued at this leader and not yet given a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Starts an election now (a seed does this at once instead of waiting a
    /// timeout).
    pub fn campaign(&mut self, out: &mut Vec<(NodeId, Msg<V>)>) {
        let round = self.promised.round.max(self.current_ballot().round) + 1;
        let ballot = Ballot::new(round, self.me.clone());
        let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
        self.role = Role::Candidate {
            ballot: ballot.clone(),
            promises: BTreeMap::new(),
            elapsed_ticks: 0,
            timeout_ticks,
        };
        let msg = Msg::Prepare {
            ballot,
            from_slot: self.next_to_deliver,
        };
        self.broadcast(msg, out);
        self.drain_loopback(out);
    }

    fn current_ballot(&self) -> Ballot {
        match &self.role {
            Role::Leader { ballot, .. } | Role::Candidate { ballot, .. } => ballot.clone(),
            Role::Follower { .. } => self.promised.clone(),
        }
    }

    /// Queues `value` for ordering; the next [`Paxos::flush`] sends it, so
    /// every value proposed in one batch of inputs shares one message. Returns
    /// the value back when this node cannot order it (not the leader), so the
    /// caller can forward or hold it.
    pub fn propose(&mut self, value: V) -> Result<(), V> {
        if !self.is_leader() {
            return Err(value);
        }
        self.queue.push_back(value);
        Ok(())
    }

    /// Sends one Accept for every queued value that fits the window.
    pub fn flush(&mut self, out: &mut Vec<(NodeId, Msg<V>)>) {
        let Role::Leader {
            ballot, next_slot, ..
        } = &self.role
        else {
            return;
        };
        let room = (self.commit + self.settings.window as i64 + 1 - *next_slot).max(0) as usize;
        let take = room.min(self.queue.len());
        if take == 0 {
            return;
        }
        let values: Vec<V> = self.queue.drain(..take).collect();
        let msg = Msg::Accept {
            ballot: ballot.clone(),
            first_slot: *next_slot,
            values,
            commit: self.commit,
        };
        if let Role::Leader { next_slot, .. } = &mut self.role {
            *next_slot += take as i64;
        }
        self.broadcast(msg, out);
        self.drain_loopback(out);
    }

    /// Advances time by one tick: heartbeats, election timeouts.
    pub fn tick(&mut self, out: &mut Vec<(NodeId, Msg<V>)>) {
        let mut start_election = false;
        let mut heartbeat = None;
        match &mut self.role {
            Role::Follower {
                quiet_ticks,
                timeout_ticks,
                ..
            } => {
                *quiet_ticks += 1;
                start_election = *quiet_ticks >= *timeout_ticks && self.voters.contains(&self.me);
            }
            Role::Candidate {
                elapsed_ticks,
                timeout_ticks,
                ..
            } => {
                *elapsed_ticks += 1;
                start_election = *elapsed_ticks >= *timeout_ticks;
            }
            Role::Leader {
                ballot,
                quiet_ticks,
                ..
            } => {
                *quiet_ticks += 1;
                if *quiet_ticks >= self.settings.heartbeat_ticks {
                    *quiet_ticks = 0;
                    heartbeat = Some(Msg::Commit {
                        ballot: ballot.clone(),
                        commit: self.commit,
                    });
                }
            }
        }
        if start_election {
            self.campaign(out);
        }
        if let Some(msg) = heartbeat {
            self.broadcast_others(msg, out);
        }
        self.flush(out);
    }

    /// Takes the next decided value, in slot order.
    pub fn take_decided(&mut self) -> Option<(Slot, V)> {
        let value = self.chosen.remove(&self.next_to_deliver)?;
        let slot = self.next_to_deliver;
        self.next_to_deliver += 1;
        Some((slot, value))
    }

    /// Handles a message from `from` (which may be this node).
    pub fn handle(&mut self, from: NodeId, msg: Msg<V>, out: &mut Vec<(NodeId, Msg<V>)>) {
        self.step(from, msg, out);
        self.drain_loopback(out);
    }

    fn drain_loopback(&mut self, out: &mut Vec<(NodeId, Msg<V>)>) {
        while let Some(msg) = self.loopback.pop_front() {
            let me = self.me.clone();
            self.step(me, msg, out);
        }
    }

    fn send(&mut self, to: NodeId, msg: Msg<V>, out: &mut Vec<(NodeId, Msg<V>)>) {
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            out.push((to, msg));
        }
    }

    fn broadcast(&mut self, msg: Msg<V>, out: &mut Vec<(NodeId, Msg<V>)>) {
        let voters: Vec<NodeId> = self.voters.iter().cloned().collect();
        for to in voters {
            self.send(to, msg.clone(), out);
        }
    }

    fn broadcast_others(&mut self, msg: Msg<V>, out: &mut Vec<(NodeId, Msg<V>)>) {
        for to in self.voters.iter().filter(|v| **v != self.me) {
            out.push((to.clone(), msg.clone()));
        }
    }

    fn step(&mut self, from: NodeId, msg: Msg<V>, out: &mut Vec<(NodeId, Msg<V>)>) {
        match msg {
            Msg::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot, out),
            Msg::Promise {
                ballot, accepted, ..
            } => self.on_promise(from, ballot, accepted, out),
            Msg::Accept {
                ballot,
                first_slot,
                values,
                commit,
            } => self.on_accept(from, ballot, first_slot, values, commit, out),
            Msg::Accepted {
                ballot,
                first_slot,
                last_slot,
            } => self.on_accepted(from, ballot, first_slot, last_slot, out),
            Msg::Reject { promised } => self.on_reject(promised),
            Msg::Commit { ballot, commit } => self.on_commit(from, ballot, commit),
        }
    }

    fn follow(&mut self, leader: NodeId) {
        if let Role::Follower {
            leader: known,
            quiet_ticks,
            ..
        } = &mut self.role
        {
            *known = Some(leader);
            *quiet_ticks = 0;
            return;
        }
        let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
        // A deposed leader keeps its queued values; the caller takes them back
        // with `drain_unordered` and forwards them.
        self.role = Role::Follower {
            leader: Some(leader),
            quiet_ticks: 0,
            timeout_ticks,
        };
    }

    /// Values this node accepted for proposal but can no longer order itself
    /// (it lost the leadership), for the caller to forward.
    pub fn drain_unordered(&mut self) -> Vec<V> {
        if self.is_leader() {
            return Vec::new();
        }
        self.queue.drain(..).collect()
    }

    fn on_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        out: &mut Vec<(NodeId, Msg<V>)>,
    ) {
        if ballot < self.promised {
            let promised = self.promised.clone();
            self.send(from, Msg::Reject { promised }, out);
            return;
        }
        self.promised = ballot.clone();
        if from != self.me {
            self.follow(from.clone());
        }
        let accepted = self
            .accepted
            .range(from_slot..)
            .map(|(slot, (b, v))| (*slot, b.clone(), v.clone()))
            .collect();
        let msg = Msg::Promise {
            ballot,
            from_slot,
            accepted,
        };
        self.send(from, msg, out);
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Vec<(Slot, Ballot, V)>,
        out: &mut Vec<(NodeId, Msg<V>)>,
    ) {
        let quorum = self.quorum();
        let Role::Candidate {
            ballot: mine,
            promises,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *mine != ballot {
            return;
        }
        promises.insert(from, accepted);
        if promises.len() < quorum {
            return;
        }
        // Elected: re-propose the highest-ballot accepted value of every open
        // slot and fill the holes with nops.
        let mut best: BTreeMap<Slot, (Ballot, V)> = BTreeMap::new();
        for (slot, b, v) in promises.values().flatten() {
            if *slot < self.next_to_deliver || self.chosen.contains_key(slot) {
                continue;
            }
            match best.get(slot) {
                Some((seen, _)) if seen >= b => {}
                _ => {
                    best.insert(*slot, (b.clone(), v.clone()));
                }
            }
        }
        let first = self.next_to_deliver;
        let chosen_top = self.chosen.keys().next_back().copied().unwrap_or(first - 1);
        let last = best
            .keys()
            .next_back()
            .copied()
            .unwrap_or(first - 1)
            .max(chosen_top);
        let mut refill = Vec::new();
        for slot in first..=last {
            let value = match (self.chosen.get(&slot), best.remove(&slot)) {
                (Some(v), _) => v.clone(),
                (None, Some((_, v))) => v,
                (None, None) => V::nop(),
            };
            refill.push(value);
        }
        self.role = Role::Leader {
            ballot: ballot.clone(),
            next_slot: first,
            acks: BTreeMap::new(),
            quiet_ticks: 0,
        };
        // Open slots go first, ahead of anything queued while campaigning.
        for value in refill.into_iter().rev() {
            self.queue.push_front(value);
        }
        self.flush(out);
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        values: Vec<V>,
        commit: Slot,
        out: &mut Vec<(NodeId, Msg<V>)>,
    ) {
        if ballot < self.promised {
            let promised = self.promised.clone();
            self.send(from, Msg::Reject { promised }, out);
            return;
        }
        self.promised = ballot.clone();
        if from != self.me {
            self.follow(from.clone());
        }
        let count = values.len() as i64;
        for (i, value) in values.into_iter().enumerate() {
            let slot = first_slot + i as i64;
            if slot >= self.next_to_deliver && !self.chosen.contains_key(&slot) {
                self.accepted.insert(slot, (ballot.clone(), value));
            }
        }
        self.learn_commit(&ballot, commit);
        if count > 0 {
            let msg = Msg::Accepted {
                ballot,
                first_slot,
                last_slot: first_slot + count - 1,
            };
            self.send(from, msg, out);
        }
    }

    fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
        out: &mut Vec<(NodeId, Msg<V>)>,
    ) {
        let quorum = self.quorum();
        let Role::Leader {
            ballot: mine,
            acks,
            next_slot,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *mine != ballot {
            return;
        }
        let last_slot = last_slot.min(*next_slot - 1);
        for slot in first_slot.max(self.commit + 1)..=last_slot {
            acks.entry(slot).or_default().insert(from.clone());
        }
        let mut commit = self.commit;
        while acks.get(&(commit + 1)).is_some_and(|a| a.len() >= quorum) {
            commit += 1;
            acks.remove(&commit);
        }
        if commit > self.commit {
            let ballot = ballot.clone();
            self.learn_commit(&ballot, commit);
        }
        let _ = out;
    }

    fn on_reject(&mut self, promised: Ballot) {
        if promised > self.current_ballot() {
            let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
            self.role = Role::Follower {
                leader: None,
                quiet_ticks: 0,
                timeout_ticks,
            };
        }
        if promised > self.promised {
            self.promised = promised;
        }
    }

    fn on_commit(&mut self, from: NodeId, ballot: Ballot, commit: Slot) {
        if ballot < self.promised {
            return;
        }
        self.promised = ballot.clone();
        if from != self.me {
            self.follow(from);
        }
        self.learn_commit(&ballot, commit);
    }

    /// Every slot up to `commit` that this node accepted at `ballot` (the
    /// leader's current ballot) holds the chosen value.
    fn learn_commit(&mut self, ballot: &Ballot, commit: Slot) {
        if commit > self.commit {
            self.commit = commit;
        }
        let from = self.next_to_deliver;
        if commit < from {
            return;
        }
        let chosen_now: Vec<Slot> = self
            .accepted
            .range(from..=commit)
            .filter(|(_, (b, _))| b == ballot)
            .map(|(slot, _)| *slot)
            .collect();
        for slot in chosen_now {
            if let Some((_, value)) = self.accepted.remove(&slot) {
                self.chosen.insert(slot, value);
            }
        }
    }

    /// Forgets acceptor state below `slot` once the caller has applied it.
    pub fn compact_below(&mut self, slot: Slot) {
        self.accepted = self.accepted.split_off(&slot);
    }
}

fn random_ticks(rng: &mut rand_chacha::ChaCha8Rng, (low, high): (u32, u32)) -> u32 {
    use rand::RngExt;
    if high <= low {
        low
    } else {
        rng.random_range(low..=high)
    }
}

#[cfg(test)]
mod tests;
