//! The consensus engine alone: three [`Paxos`] instances wired in memory,
//! 256 writers against the leader, each with one 64-byte value outstanding,
//! and a state machine that keeps nothing (a decided value only answers its
//! writer). This is the shape of openraft's published in-process figure
//! (in-memory log, a state machine with no data, function calls for RPC),
//! which issue 13 names as the engine's goal; `benches/core.rs` measures
//! the whole [`doozer::core::Core`] with the versioned store in the loop.
//!
//! Each node is driven as the runtime drives its core: the messages queued
//! for it, [`Paxos::handle`] each, [`Paxos::flush`], the decided values
//! taken in slot order, and its messages routed to the other nodes' queues.
//! Ticks arrive every 5 ms of wall time (the runtime's default tick).
//!
//! `cargo bench --bench engine` runs the timed run (`ENGINE_BENCH_SECS`,
//! default 3) and prints one line. Run any other way (as
//! `cargo test --release --all-targets` does) it is a smoke test, not
//! timed: a few thousand writes, every one answered once, and the three
//! nodes decide the same values in the same order.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use doozer::paxos::{Membership, Msg, Paxos, Settings, Slot, Value};
use doozer::types::NodeId;

mod shape;
use shape::{MAX_BATCH, MAX_TURNS, TICK, VALUE_BYTES, WRITERS};

/// Writes the smoke test waits to see answered.
const SMOKE_WRITES: u64 = 5_000;
/// Ticks the election may take before the harness gives up.
const MAX_ELECTION_TICKS: usize = 10_000;

/// One write: who sent it, and its value (shared, as a store body is).
#[derive(Clone, Debug, PartialEq)]
struct Write {
    /// `None` for a nop a leader fills a hole with.
    writer: Option<u32>,
    /// The writer's count of writes, so a write decided twice shows.
    seq: u64,
    body: Arc<[u8]>,
}

impl Value for Write {
    fn nop() -> Write {
        Write {
            writer: None,
            seq: 0,
            body: Arc::from(Vec::new()),
        }
    }

    fn size(&self) -> usize {
        16 + self.body.len()
    }
}

type Out = Vec<(NodeId, Msg<Write>)>;

/// Three engines, the messages queued for each, and what each decided.
struct Cluster {
    nodes: Vec<Paxos<Write>>,
    inboxes: Vec<VecDeque<(NodeId, Msg<Write>)>>,
    /// Per node: a running digest of the decided sequence (slot and value),
    /// and the next slot it expects, so the harness checks order and
    /// agreement without keeping every value.
    digests: Vec<(u64, Slot)>,
    out: Out,
    last_tick: Instant,
}

fn node_id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

impl Cluster {
    /// Three voters from slot 1, ticked until one leads.
    fn elect() -> Cluster {
        let voters: BTreeSet<NodeId> = (1..=3).map(node_id).collect();
        let nodes: Vec<Paxos<Write>> = (1..=3u8)
            .map(|n| {
                Paxos::new(
                    node_id(n),
                    Membership::new(voters.clone()),
                    1,
                    Settings::default(),
                    u64::from(n),
                )
            })
            .collect();
        let mut cluster = Cluster {
            inboxes: vec![VecDeque::new(); nodes.len()],
            digests: vec![(0, 1); nodes.len()],
            nodes,
            out: Vec::new(),
            last_tick: Instant::now(),
        };
        for _ in 0..MAX_ELECTION_TICKS {
            if cluster.leader().is_some() {
                return cluster;
            }
            cluster.tick_all();
            for i in 0..cluster.nodes.len() {
                cluster.turn(i, &mut |_| {});
            }
        }
        panic!("no leader after {MAX_ELECTION_TICKS} ticks");
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(Paxos::is_leader)
    }

    fn tick_all(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        for i in 0..self.nodes.len() {
            self.nodes[i].tick(&mut out);
            self.route(i, &mut out);
        }
        self.out = out;
    }

    fn tick_if_due(&mut self) {
        if self.last_tick.elapsed() >= TICK {
            self.last_tick = Instant::now();
            self.tick_all();
        }
    }

    /// Sends node `i`'s messages in `out` to the others' queues.
    fn route(&mut self, i: usize, out: &mut Out) {
        let from = self.nodes[i].me().clone();
        for (to, msg) in out.drain(..) {
            if let Some(dst) = self.nodes.iter().position(|n| n.me() == &to) {
                self.inboxes[dst].push_back((from.clone(), msg));
            }
        }
    }

    /// One turn of node `i`: a batch of its messages, a flush, its decided
    /// values taken (each handed to `decided`), its messages routed.
    fn turn(&mut self, i: usize, decided: &mut dyn FnMut(&Write)) {
        let mut out = std::mem::take(&mut self.out);
        let take = self.inboxes[i].len().min(MAX_BATCH);
        for (from, msg) in self.inboxes[i].drain(..take) {
            if let Err(refusal) = self.nodes[i].handle(from, msg, true, &mut out) {
                panic!("node {i} refused a message: {refusal}");
            }
        }
        self.nodes[i].flush(&mut out);
        while let Some((slot, write)) = self.nodes[i].take_decided() {
            let (digest, next) = &mut self.digests[i];
            assert_eq!(slot, *next, "node {i} delivered slot {slot} out of order");
            *next += 1;
            *digest = mix(*digest, slot, &write);
            decided(&write);
        }
        self.route(i, &mut out);
        self.out = out;
    }
}

/// Folds a decided value into a node's digest, a word at a time (cheap:
/// the harness should cost little beside the engine it measures).
fn mix(digest: u64, slot: Slot, write: &Write) -> u64 {
    let writer = write.writer.map_or(u64::MAX, u64::from);
    [slot as u64, writer, write.seq, write.body.len() as u64]
        .into_iter()
        .fold(digest, |hash, word| {
            (hash ^ word)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29)
        })
}

/// The writers: each has one value in flight on the leader.
struct Writers {
    body: Arc<[u8]>,
    /// Per writer: the seq of its write in flight (`None`: none).
    in_flight: Vec<Option<u64>>,
    next_seq: u64,
    sending: bool,
    answered: u64,
}

impl Writers {
    fn new() -> Writers {
        Writers {
            body: Arc::from(vec![b'x'; VALUE_BYTES]),
            in_flight: vec![None; WRITERS as usize],
            next_seq: 0,
            sending: true,
            answered: 0,
        }
    }

    fn write(&mut self, writer: u32) -> Write {
        self.next_seq += 1;
        self.in_flight[writer as usize] = Some(self.next_seq);
        Write {
            writer: Some(writer),
            seq: self.next_seq,
            body: self.body.clone(),
        }
    }

    fn outstanding(&self) -> usize {
        self.in_flight.iter().filter(|w| w.is_some()).count()
    }
}

/// Runs the writers until `stop` says so (given the answered count and the
/// start time); returns the answered count and the time taken.
fn run(cluster: &mut Cluster, stop: impl Fn(u64, Instant) -> bool) -> (u64, Duration) {
    let leader = cluster.leader().expect("elected");
    let mut writers = Writers::new();
    for writer in 0..WRITERS {
        let write = writers.write(writer);
        cluster.nodes[leader]
            .propose(write)
            .expect("the leader takes the first writes");
    }
    let start = Instant::now();
    let mut answered_now: Vec<u32> = Vec::new();
    let mut turns = 0u64;
    while writers.sending || writers.outstanding() > 0 {
        turns += 1;
        assert!(turns < MAX_TURNS, "writes were never answered");
        if writers.sending && stop(writers.answered, start) {
            writers.sending = false;
        }
        cluster.tick_if_due();
        if !writers.sending {
            cluster.tick_all();
        }
        for i in 0..cluster.nodes.len() {
            let on_leader = i == leader;
            cluster.turn(i, &mut |write| {
                let Some(writer) = write.writer else { return };
                if !on_leader {
                    return;
                }
                let slot = &mut writers.in_flight[writer as usize];
                assert_eq!(*slot, Some(write.seq), "a write was decided twice");
                *slot = None;
                writers.answered += 1;
                answered_now.push(writer);
            });
            for writer in answered_now.drain(..) {
                if writers.sending {
                    let write = writers.write(writer);
                    if let Err(write) = cluster.nodes[leader].propose(write) {
                        panic!("the leader refused {write:?}");
                    }
                }
            }
        }
        assert_eq!(cluster.leader(), Some(leader), "the leader changed");
    }
    (writers.answered, start.elapsed())
}

/// Runs until every node delivered the same slots, then checks they decided
/// the same sequence.
fn check_agreement(cluster: &mut Cluster) {
    for _ in 0..100_000 {
        let next = cluster.digests[0].1;
        if cluster.digests.iter().all(|(_, n)| *n == next) {
            let first = cluster.digests[0].0;
            assert!(
                cluster.digests.iter().all(|(d, _)| *d == first),
                "the nodes decided different sequences: {:x?}",
                cluster.digests
            );
            return;
        }
        cluster.tick_all();
        for i in 0..cluster.nodes.len() {
            cluster.turn(i, &mut |_| {});
        }
    }
    panic!(
        "the nodes never delivered the same slots: {:?}",
        cluster.digests
    );
}

fn main() {
    let timed = std::env::args().any(|arg| arg == "--bench");
    if !timed {
        let mut cluster = Cluster::elect();
        let (answered, _) = run(&mut cluster, |answered, _| answered >= SMOKE_WRITES);
        assert!(answered >= SMOKE_WRITES, "only {answered} writes answered");
        check_agreement(&mut cluster);
        println!(
            "engine bench smoke test: {answered} writes answered once each, the 3 nodes decided the same {} slots",
            cluster.digests[0].1 - 1
        );
        return;
    }
    let secs: f64 = std::env::var("ENGINE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let length = Duration::from_secs_f64(secs);
    let mut cluster = Cluster::elect();
    let (answered, took) = run(&mut cluster, |_, start| start.elapsed() >= length);
    check_agreement(&mut cluster);
    let rate = answered as f64 / took.as_secs_f64();
    println!(
        "engine: 3 Paxos nodes in memory, {WRITERS} writers, {VALUE_BYTES}-byte values, no store: {rate:.0} writes/s ({answered} in {:.2} s)",
        took.as_secs_f64()
    );
}
