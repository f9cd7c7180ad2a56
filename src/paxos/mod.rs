//! Multi-Paxos with a stable leader, as a pure state machine.
//!
//! Why this shape: the original ran one Paxos instance per slot with a rotating
//! owner and filled idle owners' slots after a delay, so every write waited for a
//! fill and a dead member stalled the log. Here one leader runs phase 1 once for
//! every open slot and then streams phase-2 batches, so a write costs one round
//! trip to a quorum (none at all for a lone node, a quorum of one).
//!
//! Each slot is an ordinary single-decree Paxos instance whose acceptors are
//! that slot's voters ([`Membership`]); a leader may only propose a slot once a
//! majority of that slot's voters promised its ballot. Elections start with a
//! pre-vote, so a node that was cut off cannot depose a healthy leader when it
//! comes back.
//!
//! The engine knows nothing of the store or of sockets: values are opaque, time
//! is a count of ticks, randomness comes from a seeded generator, and every
//! message to another node is returned in `out`. Messages to itself are
//! delivered at once, inside the same call.

mod ballot;
mod membership;
mod slots;

pub use ballot::Ballot;
pub use membership::{is_quorum, quorum, Membership};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::types::NodeId;

/// A consensus slot. Slot `n` produces store rev `n`.
pub type Slot = i64;

/// A value the engine can order. A new leader fills holes with `nop()`.
pub trait Value: Clone + std::fmt::Debug + PartialEq {
    fn nop() -> Self;
    /// An upper bound of the bytes it takes on the wire: batches (phase 2,
    /// resends, forwards) are cut by it so none outgrows a peer frame.
    fn size(&self) -> usize;
}

/// Acceptor state that must reach stable storage before any message the
/// engine sent after changing it leaves the node (the caller's contract:
/// [`Paxos::take_durable`] after a batch, sync, then send). A node that comes
/// back from a crash must still refuse the ballots it promised against and
/// report what it accepted, or two values could be chosen for one slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Durable<V> {
    /// The highest ballot promised is now this one.
    Promised(Ballot),
    /// These slots were accepted under `ballot`.
    Accepted {
        ballot: Ballot,
        values: Vec<(Slot, V)>,
    },
}

/// Peer messages of the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Msg<V> {
    /// Would you vote for me in `round`? Asked before a real election so a
    /// node cut off for a while cannot depose a healthy leader on its return.
    PreVote { round: u64, commit: Slot },
    /// The answer, with the sender's commit point so a stale asker learns it
    /// is behind.
    PreVoteReply {
        round: u64,
        granted: bool,
        commit: Slot,
    },
    /// Phase 1a for every slot from `from_slot` on.
    Prepare { ballot: Ballot, from_slot: Slot },
    /// Phase 1b: what this acceptor accepted at or after the Prepare's
    /// `from_slot`, how far it knows the log to be decided, and (in
    /// `from_slot`) its own first undelivered slot: it still reports every
    /// slot from there on, so a candidate may recover those from promises.
    Promise {
        ballot: Ballot,
        from_slot: Slot,
        accepted: Vec<(Slot, Ballot, V)>,
        commit: Slot,
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
    /// The receiver has promised a higher ballot; `commit` is its commit
    /// point.
    Reject { promised: Ballot, commit: Slot },
    /// Heartbeat from the leader carrying the commit point.
    Commit { ballot: Ballot, commit: Slot },
    /// Values for the leader to order, from a node that does not lead.
    Forward { values: Vec<V> },
    /// Are you still following me? Probe `probe` of the leader's
    /// confirmation rounds (see [`Paxos::read_index`]), with its commit
    /// point. Answered with `Confirmed` by a voter that has not promised a
    /// higher ballot, with `Reject` otherwise.
    Confirm {
        ballot: Ballot,
        probe: u64,
        commit: Slot,
    },
    /// The answer to `Confirm`: the sender still follows `ballot`, as of
    /// the time it received probe `probe`.
    Confirmed { ballot: Ballot, probe: u64 },
}

/// What a leader hands out for reads that arrived before it was asked
/// ([`Paxos::read_index`]): once probe `probe` of the term of `ballot` is
/// confirmed by a quorum ([`Paxos::confirmed_probe`]), every write
/// acknowledged anywhere before the ask sits at a slot `<= index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadTicket {
    pub ballot: Ballot,
    pub probe: u64,
    pub index: Slot,
}

/// The highest ballot round a message may carry. Rounds grow by one per
/// election, so no real cluster comes near it; a round beyond it (`u64::MAX`
/// from a rogue or a bug) would leave no room for a higher ballot and stop
/// every future election, so a message carrying one is refused
/// ([`Refusal::BadBallot`]).
pub const MAX_ROUND: u64 = u64::MAX / 2;

/// The highest slot or commit point a message may name: 2^61 writes are out
/// of reach, and the margin keeps `slot + len` and `slot + window` far from
/// overflowing. A message naming a slot outside `0..=MAX_SLOT` (or a batch
/// running past it) is refused ([`Refusal::BadSlot`]).
pub const MAX_SLOT: Slot = i64::MAX / 4;

/// Why the engine refused a message from another node. The message is
/// dropped whole and changes nothing; the caller counts and logs it.
///
/// Who may send what (models: etcd-raft's `ErrStepPeerNotFound`,
/// TigerBeetle's header checks):
/// - nobody sends as this node (`FromSelf`);
/// - `PreVote`, `PreVoteReply`, `Promise`, `Accepted`, `Reject`,
///   `Confirmed`: only a voter of some slot of this node's window
///   (`NotVoter`);
/// - `Prepare`, `Accept`, `Commit`, `Confirm`: only the ballot's owner
///   (`NotOwner`),
///   and only a voter of the window or a node the caller vouches for (the
///   leader a voter named, the join target) (`Stranger`);
/// - `Forward`: only a voter or a vouched-for node (the caller checks the
///   values' origins);
/// - every ballot has an owner and a round `<= MAX_ROUND` (a chosen value
///   reported in a `Promise` carries the internal chosen ballot), every slot
///   and commit point lies in `0..=MAX_SLOT` (`BadBallot`, `BadSlot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a message claiming to come from this node")]
    FromSelf,
    #[error("the sender is not of this cluster")]
    Stranger,
    #[error("the sender does not own the ballot")]
    NotOwner,
    #[error("the sender votes on none of the slots concerned")]
    NotVoter,
    #[error("a ballot without owner or with a round beyond MAX_ROUND")]
    BadBallot,
    #[error("a slot or commit point out of range")]
    BadSlot,
    #[error("a decided value contradicting the one this node knows chosen")]
    Conflict,
}

/// Settings, in ticks and counts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many slots past its applied point a leader may propose (alpha):
    /// the voters of those slots are already known.
    pub window: usize,
    /// A follower that hears nothing from a leader for a random number of ticks
    /// in this range starts an election.
    pub election_ticks: (u32, u32),
    /// A leader with writes or reads in flight sends a heartbeat after this
    /// many quiet ticks, and resends what was not acknowledged after twice
    /// as many; a follower acknowledges a bare heartbeat only when it sent
    /// no acknowledgement for this long.
    pub heartbeat_ticks: u32,
    /// An idle leader's heartbeat period: longer, so an idle cluster sleeps,
    /// and still well below `election_ticks.0`, so no follower times out.
    pub idle_heartbeat_ticks: u32,
    /// Largest phase-2 batch, in bytes of values.
    pub max_batch_bytes: usize,
    /// Largest phase-2 batch, in slots.
    pub max_batch_slots: usize,
    /// Values a leader holds before it has slots for them (when it cannot
    /// reach a majority they pile up here); past it, `propose` refuses.
    pub max_queued: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: 256,
            election_ticks: (30, 60),
            heartbeat_ticks: 10,
            idle_heartbeat_ticks: 20,
            max_batch_bytes: 4 << 20,
            max_batch_slots: 4096,
            max_queued: 100_000,
        }
    }
}

/// A chosen value learned without its ballot (from the log of another node)
/// is reported with this one, which outranks every real ballot.
fn chosen_ballot() -> Ballot {
    Ballot {
        round: u64::MAX,
        leader: None,
    }
}

#[derive(Debug)]
struct Lead<V> {
    ballot: Ballot,
    /// The next slot to propose.
    next_slot: Slot,
    /// Who promised this ballot (from the first undecided slot on).
    promised_by: BTreeSet<NodeId>,
    /// Values accepted under earlier ballots, reported in promises, for slots
    /// not yet proposed under this ballot.
    recovered: BTreeMap<Slot, (Ballot, V)>,
    /// Proposed and not yet known chosen: the value and who accepted it.
    inflight: BTreeMap<Slot, (V, BTreeSet<NodeId>)>,
    quiet_ticks: u32,
    resend_ticks: u32,
    sent_commit: Slot,
    /// Voters heard from (under this ballot) since the last quorum check, and
    /// ticks since that check: a leader that cannot hear a majority steps
    /// down, so a cut-off leader stops believing it leads.
    heard: BTreeSet<NodeId>,
    check_ticks: u32,
    /// The highest slot any promiser knew chosen or reported accepted at
    /// the election: a value chosen under an earlier ballot (and perhaps
    /// acknowledged to a client) sits at or below it, even before this
    /// leader learns it is chosen.
    election_floor: Slot,
    /// Confirmation rounds of this term: the last probe sent, whether reads
    /// want another one sent at the next flush, the highest probe each voter
    /// confirmed, and the highest probe a quorum confirmed.
    probes_sent: u64,
    probe_wanted: bool,
    probe_acks: BTreeMap<NodeId, u64>,
    probe_confirmed: u64,
}

#[derive(Debug)]
enum Role<V> {
    Follower {
        leader: Option<NodeId>,
        quiet_ticks: u32,
        timeout_ticks: u32,
    },
    PreCandidate {
        round: u64,
        grants: BTreeSet<NodeId>,
        elapsed_ticks: u32,
        timeout_ticks: u32,
    },
    Candidate {
        ballot: Ballot,
        promised_by: BTreeSet<NodeId>,
        recovered: BTreeMap<Slot, (Ballot, V)>,
        highest_commit: Slot,
        /// Every promiser still reports the slots from here on (none has
        /// delivered and forgotten them).
        promisers_undelivered: Slot,
        elapsed_ticks: u32,
        timeout_ticks: u32,
    },
    Leader(Box<Lead<V>>),
}

/// One node's engine: acceptor and learner always, leader when elected.
pub struct Paxos<V: Value> {
    me: NodeId,
    settings: Settings,
    rng: rand_chacha::ChaCha8Rng,
    membership: Membership,
    role: Role<V>,
    /// Acceptor: the highest ballot promised.
    promised: Ballot,
    /// Acceptor: accepted values of slots not yet known chosen.
    accepted: slots::SlotMap<(Ballot, V)>,
    /// Learner: chosen values not yet taken by the caller.
    chosen: slots::SlotMap<(Ballot, V)>,
    /// Learner: the next slot to hand out; everything below it is delivered.
    next_to_deliver: Slot,
    /// The highest slot known to be chosen.
    commit: Slot,
    /// Leader: values waiting for a slot.
    queue: VecDeque<V>,
    /// Follower: values to forward to the leader at the next flush.
    forward: Vec<V>,
    /// Ticks since a leader was last heard from (pre-votes are refused while
    /// a leader is alive).
    leader_silent_ticks: u32,
    /// The leader pads with nops up to here so a membership change takes
    /// effect promptly on an idle cluster.
    pad_until: Slot,
    /// A node that knows the log further than we do, and how far.
    hint: Option<(NodeId, Slot)>,
    /// Messages to self, delivered before a call returns.
    loopback: VecDeque<Msg<V>>,
    /// Whether acceptor changes are recorded in `durable` (a node with a
    /// data dir); without one nothing is kept.
    record_durable: bool,
    /// Acceptor changes since the caller last took them.
    durable: Vec<Durable<V>>,
    /// Ticks since this node last acknowledged anything (a follower does
    /// not answer every bare heartbeat: see [`Settings::heartbeat_ticks`]).
    ticks_since_ack: u32,
    /// Periodic heartbeats this node sent as leader, ever (the caller sends
    /// slaves one whenever it grows).
    heartbeats_sent: u64,
}

type Out<V> = Vec<(NodeId, Msg<V>)>;

impl<V: Value> Paxos<V> {
    /// A node whose first undecided slot is `first_slot`.
    pub fn new(
        me: NodeId,
        membership: Membership,
        first_slot: Slot,
        settings: Settings,
        seed: u64,
    ) -> Paxos<V> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let timeout_ticks = random_ticks(&mut rng, settings.election_ticks);
        Paxos {
            me,
            settings,
            rng,
            membership,
            role: Role::Follower {
                leader: None,
                quiet_ticks: 0,
                timeout_ticks,
            },
            promised: Ballot::ZERO,
            accepted: slots::SlotMap::new(first_slot),
            chosen: slots::SlotMap::new(first_slot),
            next_to_deliver: first_slot,
            commit: first_slot - 1,
            queue: VecDeque::new(),
            forward: Vec::new(),
            leader_silent_ticks: u32::MAX / 2,
            pad_until: 0,
            hint: None,
            loopback: VecDeque::new(),
            record_durable: false,
            durable: Vec::new(),
            ticks_since_ack: u32::MAX,
            heartbeats_sent: 0,
        }
    }

    /// From now on, acceptor changes are recorded for the caller to persist
    /// ([`Paxos::take_durable`]).
    pub fn record_durable(&mut self) {
        self.record_durable = true;
    }

    /// Acceptor changes since the last call, in order. The caller makes them
    /// durable before sending any message produced since the last call.
    pub fn take_durable(&mut self) -> Vec<Durable<V>> {
        std::mem::take(&mut self.durable)
    }

    /// The acceptor state to persist whole (in an image): the promised
    /// ballot and every value accepted or known chosen and not delivered.
    pub fn acceptor_state(&self) -> (Ballot, Vec<(Slot, Ballot, V)>) {
        let mut values: BTreeMap<Slot, (Ballot, V)> = self
            .accepted
            .iter()
            .map(|(slot, entry)| (slot, entry.clone()))
            .collect();
        for (slot, (ballot, value)) in self.chosen.iter() {
            values.insert(slot, (ballot.clone(), value.clone()));
        }
        let values = values
            .into_iter()
            .map(|(slot, (ballot, value))| (slot, ballot, value))
            .collect();
        (self.promised.clone(), values)
    }

    /// Replays a persisted acceptor change (recovery from disk). Values of
    /// slots already delivered are ignored.
    pub fn restore(&mut self, record: Durable<V>) {
        match record {
            Durable::Promised(ballot) => {
                if ballot > self.promised {
                    self.promised = ballot;
                }
            }
            Durable::Accepted { ballot, values } => {
                for (slot, value) in values {
                    if slot >= self.next_to_deliver {
                        self.accepted.insert(slot, (ballot.clone(), value));
                    }
                }
            }
        }
    }

    /// Raises the promised ballot, recording the change.
    fn promise(&mut self, ballot: &Ballot) {
        if *ballot != self.promised {
            self.promised = ballot.clone();
            if self.record_durable {
                self.durable.push(Durable::Promised(ballot.clone()));
            }
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node follows or is, if known.
    pub fn leader(&self) -> Option<&NodeId> {
        match &self.role {
            Role::Leader(_) => Some(&self.me),
            Role::Follower { leader, .. } => leader.as_ref(),
            _ => None,
        }
    }

    pub fn commit(&self) -> Slot {
        self.commit
    }

    pub fn next_to_deliver(&self) -> Slot {
        self.next_to_deliver
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The voters of the slots this node may still see proposed.
    fn window_end(&self) -> Slot {
        self.next_to_deliver - 1 + self.settings.window as Slot
    }

    /// Whether this node votes on some slot of its window.
    pub fn is_voter(&self) -> bool {
        self.membership
            .union_between(self.next_to_deliver, self.window_end())
            .contains(&self.me)
    }

    /// Records that slots from `rev + window` on are voted by `voters` (the
    /// caller read them from the store at `rev`). The leader then pads the log
    /// so the change takes effect without waiting for writes.
    pub fn record_voters(&mut self, rev: Slot, voters: BTreeSet<NodeId>) {
        let from = rev + self.settings.window as Slot;
        if self.membership.change_from(from, voters) {
            self.pad_until = self.pad_until.max(from);
        }
    }

    /// A node that knows more of the log than this one (someone to catch up
    /// from), taken once.
    pub fn take_hint(&mut self) -> Option<(NodeId, Slot)> {
        self.hint
            .take()
            .filter(|(_, commit)| *commit >= self.next_to_deliver)
    }

    fn note_commit(&mut self, from: &NodeId, commit: Slot) {
        if commit >= self.next_to_deliver && *from != self.me {
            let better = self.hint.as_ref().is_none_or(|(_, known)| commit > *known);
            if better {
                self.hint = Some((from.clone(), commit));
            }
        }
    }

    /// Whether a node proved it knows chosen slots this one lacks (what
    /// [`Self::take_hint`] would give).
    pub fn has_hint(&self) -> bool {
        self.hint
            .as_ref()
            .is_some_and(|(_, commit)| *commit >= self.next_to_deliver)
    }

    /// Whether slots up to the known commit point are missing here (so the
    /// caller should fetch them).
    pub fn is_behind(&self) -> bool {
        self.commit >= self.next_to_deliver && !self.chosen.contains_key(self.next_to_deliver)
    }

    /// Asks for `value` to be ordered: queued here when leading, forwarded to
    /// the leader at the next flush otherwise. Returns it back when no leader
    /// is known, so the caller can hold it and retry.
    pub fn propose(&mut self, value: V) -> Result<(), V> {
        match self.leader() {
            Some(leader) if *leader == self.me => {
                if self.queue.len() >= self.settings.max_queued {
                    return Err(value);
                }
                self.queue.push_back(value)
            }
            Some(_) => self.forward.push(value),
            None => return Err(value),
        }
        Ok(())
    }

    /// The leader's heartbeat (its ballot and commit point), for the caller
    /// to send to nodes the engine does not talk to (slaves, returning nodes).
    pub fn heartbeat(&self) -> Option<Msg<V>> {
        match &self.role {
            Role::Leader(lead) => Some(Msg::Commit {
                ballot: lead.ballot.clone(),
                commit: self.commit,
            }),
            _ => None,
        }
    }

    /// Leader: a ticket for the reads that arrived up to now. The next
    /// flush sends a new confirmation probe to the voters (one probe serves
    /// every read asked for before it goes out); the reads may be answered
    /// once that probe is confirmed ([`Paxos::confirmed_probe`]) and the
    /// caller has applied up to the ticket's index. `None` when this node
    /// does not lead.
    ///
    /// Why this is linearizable: a quorum that confirms the probe had not
    /// promised a higher ballot when it received it, so no later leader had
    /// chosen anything before the probe left, hence before the reads
    /// arrived. Every value chosen under this ballot is at or below
    /// `commit` (only this leader learns those), and every value chosen
    /// under an earlier one at or below the election floor.
    pub fn read_index(&mut self) -> Option<ReadTicket> {
        let commit = self.commit;
        let Role::Leader(lead) = &mut self.role else {
            return None;
        };
        lead.probe_wanted = true;
        Some(ReadTicket {
            ballot: lead.ballot.clone(),
            probe: lead.probes_sent + 1,
            index: commit.max(lead.election_floor),
        })
    }

    /// Leader: the read index for reads a voter asks for, when its ask
    /// confirms this leadership on its own: the voter had promised nothing
    /// above this leader's `ballot` when it sent the ask (after its reads
    /// arrived), this leader has promised nothing above it now, and the two
    /// make a quorum of every voter set of the window. The reasoning of
    /// [`Paxos::read_index`] then holds without a probe. `None` otherwise
    /// (the asker waits for a probe).
    pub fn read_index_confirmed_by(&self, voter: &NodeId, ballot: &Ballot) -> Option<Slot> {
        let Role::Leader(lead) = &self.role else {
            return None;
        };
        if lead.ballot != *ballot || *voter == self.me {
            return None;
        }
        let pair = BTreeSet::from([self.me.clone(), voter.clone()]);
        self.membership
            .quorum_of_all(&pair, self.next_to_deliver, self.window_end())
            .then(|| self.commit.max(lead.election_floor))
    }

    /// The highest ballot this node promised.
    pub fn promised(&self) -> &Ballot {
        &self.promised
    }

    /// Leader under `ballot`: the highest probe of this term a quorum of
    /// every voter set of the window confirmed. `None` when this node does
    /// not lead under `ballot` (deposed, or leading a later term): tickets
    /// of that term are void.
    pub fn confirmed_probe(&self, ballot: &Ballot) -> Option<u64> {
        match &self.role {
            Role::Leader(lead) if lead.ballot == *ballot => Some(lead.probe_confirmed),
            _ => None,
        }
    }

    /// Leader: sends the probe reads asked for, and counts it confirmed at
    /// once when this node alone is a quorum.
    fn send_probe(&mut self, out: &mut Out<V>) {
        let window = self
            .membership
            .union_between(self.next_to_deliver, self.window_end());
        let commit = self.commit;
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        if !lead.probe_wanted {
            return;
        }
        lead.probe_wanted = false;
        lead.probes_sent += 1;
        let msg = Msg::Confirm {
            ballot: lead.ballot.clone(),
            probe: lead.probes_sent,
            commit,
        };
        for to in window.iter().filter(|v| **v != self.me) {
            out.push((to.clone(), msg.clone()));
        }
        self.update_confirmed();
    }

    /// Leader: raises the confirmed probe to the highest one a quorum of
    /// every voter set of the window (this node counting for the last probe
    /// it sent) confirmed.
    fn update_confirmed(&mut self) {
        let (first, last) = (self.next_to_deliver, self.window_end());
        let Role::Leader(lead) = &self.role else {
            return;
        };
        let mut candidates: Vec<u64> = lead.probe_acks.values().copied().collect();
        candidates.push(lead.probes_sent);
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        let mut confirmed = lead.probe_confirmed;
        for candidate in candidates {
            if candidate <= confirmed {
                break;
            }
            let mut with: BTreeSet<NodeId> = lead
                .probe_acks
                .iter()
                .filter(|(_, acked)| **acked >= candidate)
                .map(|(node, _)| node.clone())
                .collect();
            with.insert(self.me.clone());
            if self.membership.quorum_of_all(&with, first, last) {
                confirmed = candidate;
                break;
            }
        }
        if let Role::Leader(lead) = &mut self.role {
            lead.probe_confirmed = confirmed;
        }
    }

    /// Takes the next decided value, in slot order.
    pub fn take_decided(&mut self) -> Option<(Slot, V)> {
        let (_, value) = self.chosen.remove(self.next_to_deliver)?;
        let slot = self.next_to_deliver;
        self.accepted.remove(slot);
        self.next_to_deliver += 1;
        self.accepted.set_base(self.next_to_deliver);
        self.chosen.set_base(self.next_to_deliver);
        if let Role::Leader(lead) = &mut self.role {
            // Learned another way (catch-up) before a quorum acknowledged
            // it: not in flight any more. A stale entry would keep the
            // resends aimed at it and starve the slots after it.
            lead.inflight.remove(&slot);
            lead.recovered.remove(&slot);
            lead.next_slot = lead.next_slot.max(slot + 1);
        }
        Some((slot, value))
    }

    /// The value this node knows chosen at `slot` and has not delivered yet.
    pub fn chosen_value(&self, slot: Slot) -> Option<&V> {
        self.chosen.get(slot).map(|(_, v)| v)
    }

    /// A decided value learned from another node's log. A value that
    /// contradicts the one this node already knows chosen at `slot` comes
    /// from a single peer, so it is refused (the caller logs it loudly) and
    /// never crashes the node.
    pub fn learn(&mut self, slot: Slot, value: V) -> Result<(), Refusal> {
        if !(1..=MAX_SLOT).contains(&slot) {
            return Err(Refusal::BadSlot);
        }
        if slot < self.next_to_deliver {
            return Ok(());
        }
        if let Some((_, known)) = self.chosen.get(slot) {
            return if *known == value {
                Ok(())
            } else {
                Err(Refusal::Conflict)
            };
        }
        self.accepted.remove(slot);
        self.chosen.insert(slot, (chosen_ballot(), value));
        self.commit = self.commit.max(slot);
        Ok(())
    }

    /// Records that this node itself found `value` chosen at `slot`.
    /// Invariant: a chosen value never changes, so finding another value
    /// chosen at the same slot is a bug in this node (not input from a
    /// peer): it stops the node rather than let it diverge.
    fn choose(&mut self, slot: Slot, ballot: Ballot, value: V) {
        if let Some((_, known)) = self.chosen.get(slot) {
            assert!(
                *known == value,
                "{}: slot {slot} was chosen as {known:?} and now as {value:?}",
                self.me
            );
            return;
        }
        self.chosen.insert(slot, (ballot, value));
    }

    /// Forgets voter sets that govern only delivered slots: every question
    /// the engine asks of the membership is about a slot at or after
    /// `next_to_deliver` (the window), and a snapshot sent from here starts
    /// its receiver there too. Without this the history of changes grows
    /// for the cluster's whole life and rides in every snapshot.
    pub fn prune_membership(&mut self) {
        self.membership.prune_below(self.next_to_deliver);
    }

    /// The caller installed a snapshot: everything up to `rev` is decided and
    /// applied, and `membership` votes from here on.
    pub fn restart_at(&mut self, rev: Slot, membership: Membership) {
        self.next_to_deliver = rev + 1;
        self.commit = self.commit.max(rev);
        self.accepted.set_base(rev + 1);
        self.chosen.set_base(rev + 1);
        self.membership = membership;
        if let Role::Leader(lead) = &mut self.role {
            lead.next_slot = lead.next_slot.max(rev + 1);
        }
    }

    /// Advances time by one tick: heartbeats, resends, elections.
    pub fn tick(&mut self, out: &mut Out<V>) {
        self.tick_by(1, out);
    }

    /// Advances time by `elapsed` ticks at once (the caller's loop was busy
    /// and measured that much time passing): every timer counts them, so a
    /// timeout means the same time on a loaded machine. Heartbeats and
    /// resends fire at most once per call.
    pub fn tick_by(&mut self, elapsed: u32, out: &mut Out<V>) {
        let start = out.len();
        self.tick_inner(elapsed, out);
        self.assert_own_ballots(&out[start..]);
    }

    /// Ticks until a [`Self::tick_by`] could do anything here (send a
    /// heartbeat or a resend, time out, check a quorum), at least 1: the
    /// caller may let that many pass in one `tick_by` when no input comes.
    /// Waking later than this only delays what ticks drive; it never breaks
    /// safety, which no timing decides.
    pub fn ticks_until_due(&self) -> u32 {
        if !self.forward.is_empty() || !self.queue.is_empty() {
            return 1;
        }
        let left = |limit: u32, spent: u32| limit.saturating_sub(spent);
        let due = match &self.role {
            Role::Follower {
                leader,
                quiet_ticks,
                timeout_ticks,
            } => {
                let prevote = if self.is_voter() {
                    left(*timeout_ticks, *quiet_ticks)
                } else {
                    u32::MAX
                };
                let forget_leader = if leader.is_some() {
                    left(timeout_ticks.saturating_mul(2), *quiet_ticks)
                } else {
                    u32::MAX
                };
                prevote.min(forget_leader)
            }
            Role::PreCandidate {
                elapsed_ticks,
                timeout_ticks,
                ..
            }
            | Role::Candidate {
                elapsed_ticks,
                timeout_ticks,
                ..
            } => left(*timeout_ticks, *elapsed_ticks),
            Role::Leader(lead) => {
                let resend = if lead.inflight.is_empty() {
                    u32::MAX
                } else {
                    left(
                        self.settings.heartbeat_ticks.saturating_mul(2),
                        lead.resend_ticks,
                    )
                };
                left(self.heartbeat_period(lead), lead.quiet_ticks)
                    .min(resend)
                    .min(left(self.settings.election_ticks.1, lead.check_ticks))
            }
        };
        due.max(1)
    }

    /// Periodic heartbeats this node sent as leader, ever: the caller sends
    /// the nodes the engine does not talk to (slaves) one whenever it grows.
    pub fn heartbeats_sent(&self) -> u64 {
        self.heartbeats_sent
    }

    /// The leader's heartbeat period now: short while writes or reads are
    /// in flight (a lost commit point or probe is noticed soon), long when
    /// idle, so an idle cluster wakes rarely.
    fn heartbeat_period(&self, lead: &Lead<V>) -> u32 {
        let busy = !lead.inflight.is_empty()
            || !self.queue.is_empty()
            || lead.probe_wanted
            || lead.probe_confirmed < lead.probes_sent;
        if busy {
            self.settings.heartbeat_ticks
        } else {
            self.settings.idle_heartbeat_ticks
        }
    }

    fn tick_inner(&mut self, elapsed: u32, out: &mut Out<V>) {
        let elapsed = elapsed.max(1);
        self.leader_silent_ticks = self.leader_silent_ticks.saturating_add(elapsed);
        self.ticks_since_ack = self.ticks_since_ack.saturating_add(elapsed);
        let is_voter = self.is_voter();
        let heartbeat = match &self.role {
            Role::Leader(lead) => self.heartbeat_period(lead),
            _ => self.settings.heartbeat_ticks,
        };
        let mut start_prevote = false;
        let mut leader_duties = false;
        match &mut self.role {
            Role::Follower {
                quiet_ticks,
                timeout_ticks,
                leader,
            } => {
                *quiet_ticks = quiet_ticks.saturating_add(elapsed);
                start_prevote = *quiet_ticks >= *timeout_ticks && is_voter;
                if *quiet_ticks >= timeout_ticks.saturating_mul(2) {
                    // Whoever led has gone quiet: stop forwarding to it.
                    *leader = None;
                }
            }
            Role::PreCandidate {
                elapsed_ticks,
                timeout_ticks,
                ..
            }
            | Role::Candidate {
                elapsed_ticks,
                timeout_ticks,
                ..
            } => {
                *elapsed_ticks = elapsed_ticks.saturating_add(elapsed);
                start_prevote = *elapsed_ticks >= *timeout_ticks && is_voter;
                if *elapsed_ticks >= *timeout_ticks && !is_voter {
                    self.become_follower(None);
                }
            }
            Role::Leader(_) => {
                self.leader_silent_ticks = 0;
                leader_duties = true;
            }
        }
        if start_prevote {
            self.start_prevote(out);
        }
        if leader_duties {
            self.leader_tick(heartbeat, elapsed, out);
        }
        self.flush(out);
    }

    fn leader_tick(&mut self, heartbeat: u32, elapsed: u32, out: &mut Out<V>) {
        let commit = self.commit;
        let window = self
            .membership
            .union_between(self.next_to_deliver, self.window_end());
        let check_every = self.settings.election_ticks.1;
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        lead.check_ticks = lead.check_ticks.saturating_add(elapsed);
        if lead.check_ticks >= check_every {
            lead.check_ticks = 0;
            let heard = std::mem::replace(&mut lead.heard, BTreeSet::from([self.me.clone()]));
            if !self
                .membership
                .quorum_of_all(&heard, self.next_to_deliver, self.window_end())
            {
                self.become_follower(None);
                return;
            }
        }
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        lead.quiet_ticks = lead.quiet_ticks.saturating_add(elapsed);
        lead.resend_ticks = lead.resend_ticks.saturating_add(elapsed);
        if lead.quiet_ticks >= heartbeat {
            lead.quiet_ticks = 0;
            lead.sent_commit = commit;
            self.heartbeats_sent += 1;
            let msg = Msg::Commit {
                ballot: lead.ballot.clone(),
                commit,
            };
            for to in window.iter().filter(|v| **v != self.me) {
                out.push((to.clone(), msg.clone()));
            }
        }
        if lead.resend_ticks >= 2 * self.settings.heartbeat_ticks {
            lead.resend_ticks = 0;
            // Resend what a voter has not acknowledged (a lost message, a
            // reconnected link), and phase 1 to voters that never promised.
            let Some((first, _)) = lead.inflight.first_key_value() else {
                return;
            };
            let first = *first;
            let ballot = lead.ballot.clone();
            let lagging: BTreeSet<NodeId> = window
                .iter()
                .filter(|v| **v != self.me && !lead.inflight[&first].1.contains(*v))
                .cloned()
                .collect();
            // Within the batch limits, like the first send (at least one).
            let mut bytes = 0usize;
            let values: Vec<V> = lead
                .inflight
                .values()
                .take(self.settings.max_batch_slots)
                .map(|(v, _)| v)
                .take_while(|v| {
                    let first = bytes == 0;
                    bytes = bytes.saturating_add(v.size());
                    first || bytes <= self.settings.max_batch_bytes
                })
                .cloned()
                .collect();
            let unpromised: Vec<NodeId> = window.difference(&lead.promised_by).cloned().collect();
            let msg = Msg::Accept {
                ballot: ballot.clone(),
                first_slot: first,
                values,
                commit,
            };
            for to in lagging {
                out.push((to, msg.clone()));
            }
            let prepare = Msg::Prepare {
                ballot,
                from_slot: self.next_to_deliver,
            };
            for to in unpromised {
                out.push((to, prepare.clone()));
            }
        }
    }

    /// Starts an election now (a seed does this at once instead of waiting
    /// for a timeout). A lone voter wins it within the call.
    pub fn start_election(&mut self, out: &mut Out<V>) {
        let start = out.len();
        self.start_prevote(out);
        self.assert_own_ballots(&out[start..]);
    }

    fn start_prevote(&mut self, out: &mut Out<V>) {
        let round = self
            .promised
            .round
            .max(self.current_round())
            .saturating_add(1);
        let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
        self.role = Role::PreCandidate {
            round,
            grants: BTreeSet::from([self.me.clone()]),
            elapsed_ticks: 0,
            timeout_ticks,
        };
        let voters = self
            .membership
            .union_between(self.next_to_deliver, self.window_end());
        if self.membership.quorum_of_all(
            &BTreeSet::from([self.me.clone()]),
            self.next_to_deliver,
            self.window_end(),
        ) {
            self.campaign(round, out);
            return;
        }
        let msg = Msg::PreVote {
            round,
            commit: self.commit,
        };
        for to in voters.into_iter().filter(|v| *v != self.me) {
            out.push((to, msg.clone()));
        }
    }

    fn current_round(&self) -> u64 {
        match &self.role {
            Role::Leader(lead) => lead.ballot.round,
            Role::Candidate { ballot, .. } => ballot.round,
            Role::PreCandidate { round, .. } => *round,
            Role::Follower { .. } => self.promised.round,
        }
    }

    fn campaign(&mut self, round: u64, out: &mut Out<V>) {
        let ballot = Ballot::new(
            round.max(self.promised.round.saturating_add(1)),
            self.me.clone(),
        );
        let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
        self.role = Role::Candidate {
            ballot: ballot.clone(),
            promised_by: BTreeSet::new(),
            recovered: BTreeMap::new(),
            highest_commit: self.commit,
            promisers_undelivered: self.next_to_deliver,
            elapsed_ticks: 0,
            timeout_ticks,
        };
        let msg = Msg::Prepare {
            ballot,
            from_slot: self.next_to_deliver,
        };
        let voters = self
            .membership
            .union_between(self.next_to_deliver, self.window_end());
        for to in voters {
            self.send(to, msg.clone(), out);
        }
        self.drain_loopback(out);
    }

    /// Sends what waits: forwarded values to the leader; when leading, phase 2
    /// for queued values (in batches), or the commit point if it moved.
    pub fn flush(&mut self, out: &mut Out<V>) {
        let start = out.len();
        self.flush_inner(out);
        self.assert_own_ballots(&out[start..]);
    }

    fn flush_inner(&mut self, out: &mut Out<V>) {
        if !self.forward.is_empty() {
            match self.leader().cloned() {
                Some(leader) if leader != self.me => {
                    // In messages within the batch limits (a leader change
                    // hands over every pending write at once).
                    let mut values = Vec::new();
                    let mut bytes = 0usize;
                    for value in std::mem::take(&mut self.forward) {
                        let size = value.size();
                        let full = values.len() >= self.settings.max_batch_slots
                            || bytes.saturating_add(size) > self.settings.max_batch_bytes;
                        if !values.is_empty() && full {
                            let values = std::mem::take(&mut values);
                            out.push((leader.clone(), Msg::Forward { values }));
                            bytes = 0;
                        }
                        bytes = bytes.saturating_add(size);
                        values.push(value);
                    }
                    out.push((leader, Msg::Forward { values }));
                }
                Some(_) => {
                    let values = std::mem::take(&mut self.forward);
                    self.queue.extend(values);
                }
                None => {}
            }
        }
        if self.is_leader() {
            self.propose_queued(out);
            self.send_probe(out);
        }
        self.drain_loopback(out);
    }

    fn propose_queued(&mut self, out: &mut Out<V>) {
        let window_end = self.window_end();
        let commit = self.commit;
        let max_bytes = self.settings.max_batch_bytes;
        let max_slots = self.settings.max_batch_slots;
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        let mut batches: Vec<(Slot, Vec<V>)> = Vec::new();
        let mut uncovered: BTreeSet<NodeId> = BTreeSet::new();
        // Bytes in the last batch, kept as it grows (summing it per slot
        // would cost O(batch²)).
        let mut batch_bytes = 0;
        loop {
            let slot = lead.next_slot;
            let has_work = !self.queue.is_empty()
                || lead.recovered.contains_key(&slot)
                || slot <= self.pad_until;
            if !has_work || slot > window_end {
                break;
            }
            let voters = self.membership.voters(slot);
            if !is_quorum(&lead.promised_by, voters) {
                uncovered.extend(voters.difference(&lead.promised_by).cloned());
                break;
            }
            let value = match lead.recovered.remove(&slot) {
                Some((_, v)) => v,
                None => self.queue.pop_front().unwrap_or_else(V::nop),
            };
            let size = value.size();
            let start_new = match batches.last() {
                None => true,
                Some((_, values)) => values.len() >= max_slots || batch_bytes + size > max_bytes,
            };
            if start_new {
                batches.push((slot, Vec::new()));
                batch_bytes = 0;
            }
            batch_bytes += size;
            batches
                .last_mut()
                .expect("just pushed")
                .1
                .push(value.clone());
            lead.inflight.insert(slot, (value, BTreeSet::new()));
            lead.next_slot += 1;
        }
        let ballot = lead.ballot.clone();
        let send_commit = batches.is_empty() && commit > lead.sent_commit;
        if !batches.is_empty() || send_commit {
            lead.sent_commit = commit;
            lead.quiet_ticks = 0;
        }
        for (first_slot, values) in batches {
            let last = first_slot + values.len() as Slot - 1;
            let voters = self.membership.union_between(first_slot, last);
            let msg = Msg::Accept {
                ballot: ballot.clone(),
                first_slot,
                values,
                commit,
            };
            for to in voters {
                self.send(to, msg.clone(), out);
            }
        }
        if send_commit {
            let voters = self
                .membership
                .union_between(self.next_to_deliver, window_end);
            let msg = Msg::Commit {
                ballot: ballot.clone(),
                commit,
            };
            for to in voters.into_iter().filter(|v| *v != self.me) {
                out.push((to, msg.clone()));
            }
        }
        let prepare = Msg::Prepare {
            ballot,
            from_slot: self.next_to_deliver,
        };
        for to in uncovered {
            // Only new voters land here; a repeat is harmless (rate: one per
            // flush that reaches them, i.e. per batch).
            self.send(to, prepare.clone(), out);
        }
    }

    /// Handles a message from another node, `from`, after checking it
    /// against what this node knows (see [`Refusal`]): `vouched` says the
    /// caller knows `from` as a node that may lead this one (the leader a
    /// voter named, the join target) even if it votes on none of this
    /// node's window; for a `Forward`, that the caller checked its values.
    pub fn handle(
        &mut self,
        from: NodeId,
        msg: Msg<V>,
        vouched: bool,
        out: &mut Out<V>,
    ) -> Result<(), Refusal> {
        self.admit(&from, &msg, vouched)?;
        let start = out.len();
        self.step(from, msg, out);
        self.drain_loopback(out);
        self.assert_own_ballots(&out[start..]);
        Ok(())
    }

    /// Whether `node` votes on some slot this node may still see proposed.
    pub fn in_window(&self, node: &NodeId) -> bool {
        self.membership
            .sets_between(self.next_to_deliver, self.window_end())
            .iter()
            .any(|voters| voters.contains(node))
    }

    /// The checks of [`Refusal`], before a message changes anything.
    fn admit(&self, from: &NodeId, msg: &Msg<V>, vouched: bool) -> Result<(), Refusal> {
        if *from == self.me {
            return Err(Refusal::FromSelf);
        }
        let slot_ok = |slot: Slot| (0..=MAX_SLOT).contains(&slot);
        let slot = |slot: Slot| slot_ok(slot).then_some(()).ok_or(Refusal::BadSlot);
        let round = |round: u64| (round <= MAX_ROUND).then_some(()).ok_or(Refusal::BadBallot);
        let ballot = |b: &Ballot| match b.leader {
            Some(_) => round(b.round),
            None => Err(Refusal::BadBallot),
        };
        // A batch `first..first + len` inside 1..=MAX_SLOT.
        let batch = |first: Slot, len: usize| {
            let last = Slot::try_from(len)
                .ok()
                .and_then(|len| first.checked_add(len))
                .ok_or(Refusal::BadSlot)?;
            if first >= 1 && last - 1 <= MAX_SLOT {
                Ok(())
            } else {
                Err(Refusal::BadSlot)
            }
        };
        let voter = || self.in_window(from).then_some(()).ok_or(Refusal::NotVoter);
        let owner = |b: &Ballot| {
            if b.leader.as_ref() != Some(from) {
                Err(Refusal::NotOwner)
            } else if vouched || self.in_window(from) {
                Ok(())
            } else {
                Err(Refusal::Stranger)
            }
        };
        match msg {
            Msg::PreVote { round: r, commit } => {
                round(*r)?;
                slot(*commit)?;
                voter()
            }
            Msg::PreVoteReply {
                round: r, commit, ..
            } => {
                round(*r)?;
                slot(*commit)?;
                voter()
            }
            Msg::Prepare {
                ballot: b,
                from_slot,
            } => {
                ballot(b)?;
                batch(*from_slot, 0)?;
                owner(b)
            }
            Msg::Promise {
                ballot: b,
                from_slot,
                accepted,
                commit,
            } => {
                ballot(b)?;
                batch(*from_slot, 0)?;
                slot(*commit)?;
                for (s, b, _) in accepted {
                    batch(*s, 1)?;
                    if *b != chosen_ballot() {
                        ballot(b)?;
                    }
                }
                voter()
            }
            Msg::Accept {
                ballot: b,
                first_slot,
                values,
                commit,
            } => {
                ballot(b)?;
                batch(*first_slot, values.len())?;
                slot(*commit)?;
                owner(b)
            }
            Msg::Accepted {
                ballot: b,
                first_slot,
                last_slot,
            } => {
                ballot(b)?;
                batch(*first_slot, 0)?;
                slot(*last_slot)?;
                voter()
            }
            Msg::Reject { promised, commit } => {
                ballot(promised)?;
                slot(*commit)?;
                voter()
            }
            Msg::Commit { ballot: b, commit } => {
                ballot(b)?;
                slot(*commit)?;
                owner(b)
            }
            Msg::Confirm {
                ballot: b,
                probe: _,
                commit,
            } => {
                ballot(b)?;
                slot(*commit)?;
                owner(b)
            }
            Msg::Confirmed { ballot: b, .. } => {
                ballot(b)?;
                voter()
            }
            Msg::Forward { .. } => {
                if vouched || self.in_window(from) {
                    Ok(())
                } else {
                    Err(Refusal::Stranger)
                }
            }
        }
    }

    /// Engine invariant: every ballot message this node sends is of a ballot
    /// it owns (a Prepare, Accept or Commit under another node's ballot would
    /// be a forgery by this very node).
    fn assert_own_ballots(&self, sent: &[(NodeId, Msg<V>)]) {
        for (_, msg) in sent {
            if let Msg::Prepare { ballot, .. }
            | Msg::Accept { ballot, .. }
            | Msg::Commit { ballot, .. }
            | Msg::Confirm { ballot, .. } = msg
            {
                assert!(
                    ballot.leader.as_ref() == Some(&self.me),
                    "{} sent a message under ballot {ballot:?}, which it does not own",
                    self.me
                );
            }
        }
    }

    fn drain_loopback(&mut self, out: &mut Out<V>) {
        while let Some(msg) = self.loopback.pop_front() {
            let me = self.me.clone();
            self.step(me, msg, out);
        }
    }

    fn send(&mut self, to: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        if matches!(msg, Msg::Accepted { .. }) {
            self.ticks_since_ack = 0;
        }
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            out.push((to, msg));
        }
    }

    fn step(&mut self, from: NodeId, msg: Msg<V>, out: &mut Out<V>) {
        match msg {
            Msg::PreVote { round, commit } => self.on_prevote(from, round, commit, out),
            Msg::PreVoteReply {
                round,
                granted,
                commit,
            } => self.on_prevote_reply(from, round, granted, commit, out),
            Msg::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot, out),
            Msg::Promise {
                ballot,
                from_slot,
                accepted,
                commit,
            } => self.on_promise(from, ballot, from_slot, accepted, commit, out),
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
            } => self.on_accepted(from, ballot, first_slot, last_slot),
            Msg::Reject { promised, commit } => {
                self.note_commit(&from, commit);
                self.on_reject(promised);
            }
            Msg::Commit { ballot, commit } => self.on_commit(from, ballot, commit, out),
            Msg::Confirm {
                ballot,
                probe,
                commit,
            } => self.on_confirm(from, ballot, probe, commit, out),
            Msg::Confirmed { ballot, probe } => self.on_confirmed(from, ballot, probe),
            Msg::Forward { values } => {
                if self.is_leader() {
                    let room = self.settings.max_queued.saturating_sub(self.queue.len());
                    self.queue.extend(values.into_iter().take(room));
                }
                // Otherwise dropped: the origin proposes again once it learns
                // who leads.
            }
        }
    }

    /// Tells `to` that this node promised a higher ballot, and how far it
    /// knows the log.
    fn reject(&mut self, to: NodeId, out: &mut Out<V>) {
        if !self.is_voter() {
            // Only voters' rejections count (see `Refusal::NotVoter`).
            return;
        }
        let msg = Msg::Reject {
            promised: self.promised.clone(),
            commit: self.commit,
        };
        self.send(to, msg, out);
    }

    fn become_follower(&mut self, leader: Option<NodeId>) {
        let heard = leader.is_some();
        if let Role::Follower {
            leader: known,
            quiet_ticks,
            ..
        } = &mut self.role
        {
            if heard {
                *known = leader;
                *quiet_ticks = 0;
            }
            return;
        }
        // A deposed leader hands its unordered values to whoever leads now.
        if self.is_leader() {
            self.forward.extend(self.queue.drain(..));
        }
        let timeout_ticks = random_ticks(&mut self.rng, self.settings.election_ticks);
        self.role = Role::Follower {
            leader,
            quiet_ticks: 0,
            timeout_ticks,
        };
    }

    /// A message from the leader of `ballot` arrived.
    fn heard_leader(&mut self, leader: NodeId) {
        self.leader_silent_ticks = 0;
        if leader != self.me {
            self.become_follower(Some(leader));
        }
    }

    fn on_prevote(&mut self, from: NodeId, round: u64, commit: Slot, out: &mut Out<V>) {
        let leader_alive = self.leader_silent_ticks < self.settings.election_ticks.0;
        let voter = self
            .membership
            .union_between(self.next_to_deliver, self.window_end())
            .contains(&from);
        let granted =
            !leader_alive && voter && round > self.promised.round && commit >= self.commit;
        let reply = Msg::PreVoteReply {
            round,
            granted,
            commit: self.commit,
        };
        self.send(from, reply, out);
    }

    fn on_prevote_reply(
        &mut self,
        from: NodeId,
        round: u64,
        granted: bool,
        commit: Slot,
        out: &mut Out<V>,
    ) {
        self.note_commit(&from, commit);
        let (from_slot, to_slot) = (self.next_to_deliver, self.window_end());
        let Role::PreCandidate {
            round: mine,
            grants,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *mine != round || !granted {
            return;
        }
        grants.insert(from);
        if self.membership.quorum_of_all(grants, from_slot, to_slot) {
            self.campaign(round, out);
        }
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot, out: &mut Out<V>) {
        if ballot < self.promised {
            return self.reject(from, out);
        }
        self.promise(&ballot);
        if from != self.me {
            self.become_follower(None);
        }
        let accepted = self
            .accepted
            .range_from(from_slot)
            .chain(self.chosen.range_from(from_slot))
            .map(|(slot, (b, v))| (slot, b.clone(), v.clone()))
            .collect();
        let msg = Msg::Promise {
            ballot,
            from_slot: self.next_to_deliver,
            accepted,
            commit: self.commit,
        };
        self.send(from, msg, out);
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        undelivered_from: Slot,
        accepted: Vec<(Slot, Ballot, V)>,
        commit: Slot,
        out: &mut Out<V>,
    ) {
        self.note_commit(&from, commit);
        let (first, window_end) = (self.next_to_deliver, self.window_end());
        match &mut self.role {
            Role::Leader(lead) if lead.ballot == ballot => {
                // A voter that joined the window after the election.
                lead.promised_by.insert(from);
                for (slot, b, v) in accepted {
                    if slot >= lead.next_slot {
                        merge_highest(&mut lead.recovered, slot, b, v);
                    }
                }
            }
            Role::Candidate {
                ballot: mine,
                promised_by,
                recovered,
                highest_commit,
                promisers_undelivered,
                ..
            } if *mine == ballot => {
                promised_by.insert(from);
                *highest_commit = (*highest_commit).max(commit);
                *promisers_undelivered = (*promisers_undelivered).max(undelivered_from);
                for (slot, b, v) in accepted {
                    if slot >= first {
                        merge_highest(recovered, slot, b, v);
                    }
                }
                if self
                    .membership
                    .quorum_of_all(promised_by, first, window_end)
                {
                    self.become_leader(out);
                }
            }
            _ => {}
        }
    }

    fn become_leader(&mut self, out: &mut Out<V>) {
        let Role::Candidate {
            ballot,
            promised_by,
            mut recovered,
            highest_commit,
            promisers_undelivered,
            ..
        } = std::mem::replace(
            &mut self.role,
            Role::Follower {
                leader: None,
                quiet_ticks: 0,
                timeout_ticks: 0,
            },
        )
        else {
            return;
        };
        // Slots some promiser knows decided must be known chosen here: their
        // acceptors may have forgotten them after delivery, so the promises
        // cannot be trusted to report them. Catch up first (the hint says
        // from whom), then run again. A slot no promiser has delivered yet is
        // still reported by every promiser, so a value recovered from the
        // promises is the chosen one (plain Paxos recovery): without this,
        // voters that all missed a slot only a slave holds could never elect.
        let known = (self.next_to_deliver..=highest_commit).all(|slot| {
            self.chosen.contains_key(slot)
                || (slot >= promisers_undelivered && recovered.contains_key(&slot))
        });
        if !known {
            // Left a follower whose election timeout (0) runs out at the
            // next tick: it runs again then.
            return;
        }
        for (slot, (b, v)) in self.chosen.iter() {
            merge_highest(&mut recovered, slot, b.clone(), v.clone());
        }
        // Every open slot up to the last one anyone reported is proposed
        // again (a hole becomes a nop), ahead of new values.
        let last = recovered
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.next_to_deliver - 1);
        self.pad_until = self.pad_until.max(last);
        self.role = Role::Leader(Box::new(Lead {
            ballot,
            next_slot: self.next_to_deliver,
            promised_by,
            recovered,
            inflight: BTreeMap::new(),
            quiet_ticks: 0,
            resend_ticks: 0,
            sent_commit: self.commit,
            heard: BTreeSet::from([self.me.clone()]),
            check_ticks: 0,
            election_floor: last.max(highest_commit),
            probes_sent: 0,
            probe_wanted: false,
            probe_acks: BTreeMap::new(),
            probe_confirmed: 0,
        }));
        self.leader_silent_ticks = 0;
        self.queue.extend(self.forward.drain(..));
        // Announce the new leadership at once, so followers forward to it.
        if let Some(heartbeat) = self.heartbeat() {
            let voters = self
                .membership
                .union_between(self.next_to_deliver, self.window_end());
            for to in voters.into_iter().filter(|v| *v != self.me) {
                out.push((to, heartbeat.clone()));
            }
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
        out: &mut Out<V>,
    ) {
        if !self.follow(&from, &ballot, commit, out) {
            return;
        }
        let count = values.len() as Slot;
        let mut kept = Vec::new();
        for (i, value) in values.into_iter().enumerate() {
            let slot = first_slot + i as Slot;
            if slot >= self.next_to_deliver && !self.chosen.contains_key(slot) {
                if self.record_durable {
                    kept.push((slot, value.clone()));
                }
                self.accepted.insert(slot, (ballot.clone(), value));
            }
        }
        if !kept.is_empty() {
            self.durable.push(Durable::Accepted {
                ballot: ballot.clone(),
                values: kept,
            });
        }
        self.learn_commit(&from, &ballot, commit);
        if count > 0 {
            let msg = Msg::Accepted {
                ballot,
                first_slot,
                last_slot: first_slot + count - 1,
            };
            self.send(from, msg, out);
        }
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot, last_slot: Slot) {
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        if lead.ballot != ballot {
            return;
        }
        lead.heard.insert(from.clone());
        if first_slot <= last_slot {
            for (_, (_, acks)) in lead.inflight.range_mut(first_slot..=last_slot) {
                acks.insert(from.clone());
            }
        }
        let mut commit = self.commit;
        while let Some((_, acks)) = lead.inflight.get(&(commit + 1)) {
            if !is_quorum(acks, self.membership.voters(commit + 1)) {
                break;
            }
            commit += 1;
            lead.inflight.remove(&commit);
        }
        if commit > self.commit {
            let me = self.me.clone();
            self.learn_commit(&me, &ballot, commit);
        }
    }

    fn on_reject(&mut self, promised: Ballot) {
        if promised > self.promised {
            self.promise(&promised);
        }
        if promised.round > self.current_round()
            || (self.is_leader() && promised > self.current_ballot())
        {
            self.become_follower(None);
        }
    }

    fn current_ballot(&self) -> Ballot {
        match &self.role {
            Role::Leader(lead) => lead.ballot.clone(),
            Role::Candidate { ballot, .. } => ballot.clone(),
            _ => self.promised.clone(),
        }
    }

    /// A message of the leader of `ballot` that carries its commit point
    /// (`Accept`, `Commit`, `Confirm`): followed (true), or, when this node
    /// promised a higher ballot, rejected (false) — the leader may be
    /// deposed and not know it yet. The commit point is a fact whatever the
    /// ballot: a node whose own stale promise outranks the leader (one
    /// removed after it campaigned, whose rejections no voter hears) still
    /// learns it is behind and catches up.
    fn follow(&mut self, from: &NodeId, ballot: &Ballot, commit: Slot, out: &mut Out<V>) -> bool {
        if *ballot < self.promised {
            self.note_commit(from, commit);
            self.reject(from.clone(), out);
            return false;
        }
        self.promise(ballot);
        self.heard_leader(from.clone());
        true
    }

    fn on_commit(&mut self, from: NodeId, ballot: Ballot, commit: Slot, out: &mut Out<V>) {
        if !self.follow(&from, &ballot, commit, out) {
            return;
        }
        self.learn_commit(&from, &ballot, commit);
        // An empty acknowledgement: the leader counts who it still hears
        // (among voters: a slave's would be refused). Only when this node
        // told its leader nothing for a heartbeat period: a commit point
        // sent right after an acknowledged Accept, or a heartbeat soon after
        // another, needs none, which saves a message per write at low load.
        if from != self.me
            && self.is_voter()
            && self.ticks_since_ack >= self.settings.heartbeat_ticks
        {
            let ack = Msg::Accepted {
                ballot,
                first_slot: commit + 1,
                last_slot: commit,
            };
            self.send(from, ack, out);
        }
    }

    /// A leader's confirmation probe: answered like a heartbeat, with the
    /// probe's number, by a voter that still follows `ballot`.
    fn on_confirm(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        probe: u64,
        commit: Slot,
        out: &mut Out<V>,
    ) {
        if !self.follow(&from, &ballot, commit, out) {
            return;
        }
        self.learn_commit(&from, &ballot, commit);
        if from != self.me && self.is_voter() {
            self.send(from, Msg::Confirmed { ballot, probe }, out);
        }
    }

    fn on_confirmed(&mut self, from: NodeId, ballot: Ballot, probe: u64) {
        let Role::Leader(lead) = &mut self.role else {
            return;
        };
        // A voter can only confirm a probe that was sent (a higher number
        // is a lie, or from another term of the same ballot: none exists).
        if lead.ballot != ballot || probe > lead.probes_sent {
            return;
        }
        lead.heard.insert(from.clone());
        let acked = lead.probe_acks.entry(from).or_insert(0);
        if probe > *acked {
            *acked = probe;
            self.update_confirmed();
        }
    }

    /// Every slot up to `commit` that this node accepted at `ballot` (the
    /// ballot of the leader that says so) holds the chosen value.
    fn learn_commit(&mut self, from: &NodeId, ballot: &Ballot, commit: Slot) {
        if commit > self.commit {
            self.commit = commit;
        }
        let start = self.next_to_deliver;
        if commit >= start {
            let now_chosen: Vec<Slot> = self
                .accepted
                .range_from(start)
                .take_while(|(slot, _)| *slot <= commit)
                .filter(|(_, (b, _))| b == ballot)
                .map(|(slot, _)| slot)
                .collect();
            for slot in now_chosen {
                if let Some((ballot, value)) = self.accepted.remove(slot) {
                    self.choose(slot, ballot, value);
                }
            }
        }
        if self.is_behind() {
            self.note_commit(from, commit);
        }
    }
}

fn merge_highest<V>(map: &mut BTreeMap<Slot, (Ballot, V)>, slot: Slot, ballot: Ballot, value: V) {
    match map.get(&slot) {
        Some((seen, _)) if *seen >= ballot => {}
        _ => {
            map.insert(slot, (ballot, value));
        }
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
