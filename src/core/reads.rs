//! Linearizable reads: a read without a rev (GET, STAT, GETDIR, WALK,
//! SNAPSHOT) and REV are answered only once this node has applied every
//! write the cluster had committed when the read arrived.
//!
//! Why: a node's own copy may be behind. A follower cut off from the leader,
//! or a leader paused for seconds (a GC, a VM stall) while the others elected
//! another and went on, would otherwise answer from the past — a reader could
//! miss a write acknowledged before its read began, and a lock built on such
//! reads is no lock (Jepsen's etcd finding of 2014; issue 11).
//!
//! How (the read index of Raft §6.4, for multi-Paxos):
//! - reads that arrive during a batch are routed together at its end;
//! - on the leader, the engine hands out a [`ReadTicket`]: the highest slot
//!   that may hold an acknowledged write, and a confirmation probe sent to
//!   the voters at the batch's flush. Once a quorum confirms the probe (no
//!   higher ballot had been promised by then), the reads wait until the
//!   store reaches the ticket's index and are answered from it;
//! - elsewhere (followers and slaves), one `ReadIndex` ask per batch goes to
//!   the leader, which puts it on its next probe and answers `ReadIndexIs`
//!   with the index once the probe is confirmed;
//! - a leader that lost its term drops its tickets: their reads are routed
//!   again (to the new leader); an ask not answered in time, or whose
//!   leader changed, is asked again; a read that finds no confirmed leader
//!   within `read_timeout_ticks` gets an error rather than a stale answer.
//!
//! One probe serves every read of a batch, so the cost is a round trip of
//! latency and two small messages per voter per batch, not per read.
//! `-local-reads` (`CoreConfig::local_reads`) answers from the local copy
//! at once, as before. Reads at an explicit rev the node has applied never
//! wait: history does not change.

use std::collections::BTreeMap;

use super::cluster::Refused;
use super::{Command, ConnId, Core, Output, ParkedRead, PeerMsg};
use crate::error::ReplyError;
use crate::paxos::{self, Ballot, ReadTicket};
use crate::types::{NodeId, Rev};

/// Asks from other nodes a leader holds at once (each honest node has one
/// or two outstanding: one per batch, answered within a round trip); past
/// it, further asks are refused and their askers ask again later.
pub(super) const MAX_REMOTE_ASKS: usize = 1024;

/// Reads waiting for their read index, by how far they got.
#[derive(Debug, Default)]
pub(super) struct ReadIndexState {
    /// Arrived (or sent back) since the last batch ended.
    unrouted: Vec<ParkedRead>,
    /// Leader: asks from other nodes that arrived since the last batch.
    asks: Vec<(NodeId, u64)>,
    /// Leader: tickets waiting for their probe, by probe, all of the term of
    /// `probing_ballot`.
    probing: BTreeMap<u64, Probing>,
    probing_ballot: Option<Ballot>,
    /// Asks of remote readers held in `probing` (bounded).
    pub(super) remote_asks: usize,
    /// Not leading: asks sent to a leader, by ask number.
    pub(super) asked: BTreeMap<u64, Asked>,
    next_ask: u64,
}

#[derive(Debug)]
struct Probing {
    index: paxos::Slot,
    reads: Vec<ParkedRead>,
    asks: Vec<(NodeId, u64)>,
}

#[derive(Debug)]
pub(super) struct Asked {
    /// The nodes this ask went to, the latest last (at most
    /// [`MAX_ASKED_LEADERS`]): an answer from any of them is good, since a
    /// node answers only once its leadership was confirmed after the ask.
    leaders: Vec<NodeId>,
    at_tick: u64,
    reads: Vec<ParkedRead>,
}

/// Leaders one ask is remembered as sent to (it is sent again on a leader
/// change or a time-out).
const MAX_ASKED_LEADERS: usize = 4;

impl ReadIndexState {
    /// Whether reads wait on something ticks retry or time out.
    pub(super) fn waits_on_time(&self) -> bool {
        !self.unrouted.is_empty()
            || !self.asks.is_empty()
            || !self.probing.is_empty()
            || !self.asked.is_empty()
    }

    fn forget_conn(&mut self, conn: ConnId) {
        self.unrouted.retain(|r| r.conn != conn);
        for probing in self.probing.values_mut() {
            probing.reads.retain(|r| r.conn != conn);
        }
        for asked in self.asked.values_mut() {
            asked.reads.retain(|r| r.conn != conn);
        }
    }
}

/// Whether a request is a read that must see every write committed before
/// it arrived (reads at an explicit rev see a fixed past, WAIT follows).
pub(super) fn needs_index(command: &Command) -> bool {
    match command {
        Command::Rev => true,
        Command::Get { rev, .. }
        | Command::Walk { rev, .. }
        | Command::Getdir { rev, .. }
        | Command::Stat { rev, .. }
        | Command::Snapshot { rev } => rev.is_none(),
        Command::Set { .. } | Command::Del { .. } | Command::Nop | Command::Wait { .. } => false,
    }
}

impl Core {
    /// Holds a read until its index is known (routed at the batch's end).
    pub(super) fn hold_for_index(&mut self, read: ParkedRead) {
        self.reads.unrouted.push(read);
    }

    /// A closed connection's reads are forgotten.
    pub(super) fn forget_reads_of(&mut self, conn: ConnId) {
        self.reads.forget_conn(conn);
    }

    /// At a batch's end, before the engine's flush: the batch's reads (and,
    /// on the leader, other nodes' asks) get a ticket on the leader, or go
    /// to the leader in one ask.
    pub(super) fn route_reads(&mut self, out: &mut Vec<Output>) {
        self.void_lost_term();
        if self.reads.unrouted.is_empty() && self.reads.asks.is_empty() {
            return;
        }
        if let Some(ticket) = self.paxos.read_index() {
            let ReadTicket {
                ballot,
                probe,
                index,
            } = ticket;
            self.reads.probing_ballot = Some(ballot);
            let reads = std::mem::take(&mut self.reads.unrouted);
            let asks = std::mem::take(&mut self.reads.asks);
            let probing = self.reads.probing.entry(probe).or_insert(Probing {
                index,
                reads: Vec::new(),
                asks: Vec::new(),
            });
            probing.index = probing.index.max(index);
            probing.reads.extend(reads);
            probing.asks.extend(asks);
            return;
        }
        // Not leading: asks that reached this node are left to their askers'
        // retries; the reads go to the leader, if one is known.
        self.reads.remote_asks = self.reads.remote_asks.saturating_sub(self.reads.asks.len());
        self.reads.asks.clear();
        let Some(leader) = self.paxos.leader().cloned() else {
            return;
        };
        if self.reads.unrouted.is_empty() {
            return;
        }
        let ask = self.reads.next_ask;
        self.reads.next_ask += 1;
        let reads = std::mem::take(&mut self.reads.unrouted);
        self.reads.asked.insert(
            ask,
            Asked {
                leaders: vec![leader.clone()],
                at_tick: self.ticks,
                reads,
            },
        );
        let ballot = self.paxos.promised().clone();
        self.send_peer(leader, PeerMsg::ReadIndex { ask, ballot }, out);
    }

    /// A leader deposed (or leading a new term) drops the tickets of its old
    /// term: the index they carry may miss what another leader committed.
    /// Their reads are routed again; remote askers ask again.
    fn void_lost_term(&mut self) {
        let Some(ballot) = &self.reads.probing_ballot else {
            return;
        };
        if self.paxos.confirmed_probe(ballot).is_some() {
            return;
        }
        self.reads.probing_ballot = None;
        self.reads.remote_asks = 0;
        let probing = std::mem::take(&mut self.reads.probing);
        for (_, p) in probing {
            self.reads.unrouted.extend(p.reads);
        }
    }

    /// At a batch's end, after the flush: tickets whose probe a quorum
    /// confirmed release their reads (answered once the store reaches the
    /// index) and answer their askers.
    pub(super) fn settle_reads(&mut self, out: &mut Vec<Output>) {
        let Some(ballot) = self.reads.probing_ballot.clone() else {
            return;
        };
        let Some(confirmed) = self.paxos.confirmed_probe(&ballot) else {
            return;
        };
        let rest = self.reads.probing.split_off(&(confirmed + 1));
        let done = std::mem::replace(&mut self.reads.probing, rest);
        for (_, probing) in done {
            let index = Rev(probing.index);
            self.reads.remote_asks = self.reads.remote_asks.saturating_sub(probing.asks.len());
            for (node, ask) in probing.asks {
                self.send_peer(node, PeerMsg::ReadIndexIs { ask, index }, out);
            }
            for read in probing.reads {
                self.release_read(read, index, out);
            }
        }
    }

    /// A read whose index is known: answered now if the store reached it,
    /// else parked until it does.
    fn release_read(&mut self, mut read: ParkedRead, index: Rev, out: &mut Vec<Output>) {
        read.indexed = true;
        if self.store.rev() >= index {
            self.read(read, out);
        } else {
            self.parked_reads.entry(index).or_default().push(read);
        }
    }

    /// Leader: another node asks for the read index of reads it holds.
    /// Answered at once when the ask itself completes a quorum with this
    /// leader (a voter of a 3-member cluster: one round trip), else with
    /// the next probe.
    pub(super) fn on_read_index(
        &mut self,
        from: &NodeId,
        ask: u64,
        ballot: &Ballot,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        let known = self.nodes.contains_key(from) || self.paxos.in_window(from);
        if !known {
            return Err(Refused::Stranger);
        }
        if !self.paxos.is_leader() {
            // The asker asks the leader it learns of next.
            return Ok(());
        }
        if let Some(index) = self.paxos.read_index_confirmed_by(from, ballot) {
            let index = Rev(index);
            self.send_peer(from.clone(), PeerMsg::ReadIndexIs { ask, index }, out);
            return Ok(());
        }
        if self.reads.remote_asks >= MAX_REMOTE_ASKS {
            return Err(Refused::TooMany("read index asks"));
        }
        self.reads.remote_asks += 1;
        self.reads.asks.push((from.clone(), ask));
        Ok(())
    }

    /// The leader's answer to an ask of this node.
    pub(super) fn on_read_index_is(
        &mut self,
        from: &NodeId,
        ask: u64,
        index: Rev,
        out: &mut Vec<Output>,
    ) -> Result<(), Refused> {
        if !(0..=paxos::MAX_SLOT).contains(&index.0) {
            return Err(Refused::Range);
        }
        match self.reads.asked.get(&ask) {
            Some(asked) if asked.leaders.contains(from) => {}
            _ => return Err(Refused::NotAsked),
        }
        let asked = self.reads.asked.remove(&ask).expect("just found");
        for read in asked.reads {
            self.release_read(read, index, out);
        }
        Ok(())
    }

    /// Every tick: asks whose leader changed or that went unanswered for
    /// an election timeout are sent again (to the leader known now); reads
    /// that found no confirmed leader for `read_timeout_ticks` get an
    /// error.
    pub(super) fn retry_reads(&mut self, out: &mut Vec<Output>) {
        // A probe may be lost (a link that dropped): ask for another now
        // and then while reads wait on one; any later probe confirmed
        // releases every earlier one.
        if !self.reads.probing.is_empty() && self.due(u64::from(self.config.paxos.heartbeat_ticks))
        {
            self.paxos.read_index();
        }
        if self.reads.asked.is_empty() && self.reads.unrouted.is_empty() {
            return;
        }
        let leader = self.paxos.leader().filter(|l| **l != self.node.id).cloned();
        let retry_ticks = u64::from(self.config.paxos.election_ticks.1);
        let now = self.ticks;
        let limit = self.config.read_timeout_ticks;
        let expired_at = |r: &ParkedRead| now.saturating_sub(r.since_tick) > limit;
        let mut expired: Vec<ParkedRead> = Vec::new();
        let mut resend = Vec::new();
        for (ask, asked) in self.reads.asked.iter_mut() {
            let (gone, kept) = std::mem::take(&mut asked.reads)
                .into_iter()
                .partition(expired_at);
            expired.extend::<Vec<ParkedRead>>(gone);
            asked.reads = kept;
            let latest = asked.leaders.last();
            let stale = latest != leader.as_ref() || now - asked.at_tick > retry_ticks;
            if let (true, Some(leader)) = (stale, &leader) {
                if !asked.leaders.contains(leader) {
                    if asked.leaders.len() >= MAX_ASKED_LEADERS {
                        asked.leaders.remove(0);
                    }
                    asked.leaders.push(leader.clone());
                }
                asked.at_tick = now;
                resend.push((*ask, leader.clone()));
            }
        }
        self.reads.asked.retain(|_, asked| !asked.reads.is_empty());
        let ballot = self.paxos.promised().clone();
        for (ask, leader) in resend {
            if self.reads.asked.contains_key(&ask) {
                let msg = PeerMsg::ReadIndex {
                    ask,
                    ballot: ballot.clone(),
                };
                self.send_peer(leader, msg, out);
            }
        }
        if self.paxos.is_leader() {
            // Leading now: what was asked elsewhere is routed here.
            let asked = std::mem::take(&mut self.reads.asked);
            for (_, a) in asked {
                self.reads.unrouted.extend(a.reads);
            }
        }
        let (gone, kept): (Vec<ParkedRead>, Vec<ParkedRead>) =
            std::mem::take(&mut self.reads.unrouted)
                .into_iter()
                .partition(expired_at);
        expired.extend(gone);
        self.reads.unrouted = kept;
        for read in expired {
            let outcome = Err(ReplyError::other(
                "no leader confirmed this read in time (no quorum reachable?); retry, or run doozerd with -local-reads to read this node's copy",
            ));
            out.push(Output::Reply {
                conn: read.conn,
                tag: read.tag,
                outcome,
            });
        }
    }
}
