//! The pure engine's throughput: three nodes' [`Core`]s wired in memory (no
//! sockets, no threads), 256 writers against the leader, each with one SET
//! of a 64-byte value outstanding (its next SET goes in when the reply comes
//! out). This is the ceiling the runtime can reach: if the core sequences
//! far more writes per second than the network path carries, the engine is
//! never the limit (issue 13).
//!
//! Each node is driven as `runtime::event_loop` drives it: a batch of queued
//! inputs, `Core::handle` each, `Core::end_batch`, then its outputs routed
//! (replies to the writers, peer messages to the other nodes' queues). Peer
//! messages go through the real peer codec (encode, then decode, as
//! production pays both); a second run hands them over as values, to show
//! what the codec costs. Ticks arrive every 5 ms of wall time (the
//! runtime's default tick).
//!
//! `cargo bench --bench core` runs the timed runs (`CORE_BENCH_SECS`,
//! default 3, each; `CORE_BENCH_CODEC=on` or `off` runs only one) and
//! prints one line per figure. Run any other way (as
//! `cargo test --release --all-targets` does, without `--bench`) it is a
//! smoke test, not timed: a few hundred writes, every one answered with a
//! rev, and the three stores end identical.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use doozer::codec::peer::{decode_peer_msg, encode_peer_frame_into, HEADER_BYTES};
use doozer::config::Config;
use doozer::core::{Command, ConnId, Core, Input, NodeInfo, Outcome, Output, Reply};
use doozer::types::{Body, NodeId, Path, RevCheck};

mod shape;
use shape::{MAX_BATCH, MAX_TURNS, TICK, VALUE_BYTES, WRITERS};

/// Distinct keys written (`/bench/<n>`, as `doozer bench` names them).
const KEYS: usize = 1000;
/// Writes the smoke test waits to see answered.
const SMOKE_WRITES: u64 = 600;

/// Three cores and the inputs queued for each.
struct Cluster {
    cores: Vec<Core>,
    inboxes: Vec<VecDeque<Input>>,
    /// Peer messages go through the peer codec.
    codec: bool,
    max_frame_bytes: usize,
    frame: Vec<u8>,
    out: Vec<Output>,
    last_tick: Instant,
}

impl Cluster {
    /// A three-member cluster, formed as in production: a seed, two nodes
    /// joining it as slaves, two `/ctl/cal` slots opened so they claim them.
    fn form(codec: bool) -> Cluster {
        let config = Config::default();
        let info = |n: u8| NodeInfo {
            id: NodeId::from_bytes([n; 10]),
            addr: format!("127.0.140.{n}:8046"),
            hostname: format!("host{n}"),
            cluster_name: "bench".into(),
            register_ns: true,
        };
        let seed = Core::seed(info(1), config.core_config(1));
        let seed_id = seed.node().id.clone();
        let seed_addr = seed.node().addr.clone();
        let mut cores = vec![seed];
        for n in 2..=3u8 {
            cores.push(Core::join(
                info(n),
                config.core_config(u64::from(n)),
                seed_id.clone(),
                seed_addr.clone(),
            ));
        }
        let mut cluster = Cluster {
            inboxes: vec![VecDeque::new(); cores.len()],
            cores,
            codec,
            max_frame_bytes: config.limits.max_peer_frame_bytes,
            frame: Vec::new(),
            out: Vec::new(),
            last_tick: Instant::now(),
        };
        // Both joiners registered (their /ctl/node entries applied on the
        // seed), then the slots opened and claimed.
        cluster.settle(|c| c.registered() == 3);
        for slot in 1..=2 {
            let path = Path::parse(&format!("/ctl/cal/{slot}")).expect("valid");
            cluster.inboxes[0].push_back(Input::Request {
                conn: 0,
                tag: Some(slot),
                command: Command::Set {
                    path,
                    check: RevCheck::NotOlderThan(0),
                    body: Body::from(Vec::new()),
                },
            });
        }
        cluster.settle(|c| {
            c.cores.iter().all(|core| {
                core.members().len() == 3 && core.window_voters().len() == 1 && core.is_writable()
            })
        });
        assert!(cluster.cores[0].is_leader(), "the seed still leads");
        cluster
    }

    /// Nodes registered in the seed's store.
    fn registered(&self) -> usize {
        let dir = Path::parse("/ctl/node").expect("valid");
        self.cores[0]
            .store()
            .current()
            .dir_names(&dir)
            .map_or(0, |names| names.len())
    }

    /// Runs turns, a tick each round, until `done` holds.
    fn settle(&mut self, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..100_000 {
            if done(self) {
                return;
            }
            for inbox in &mut self.inboxes {
                inbox.push_back(Input::Tick(1));
            }
            for i in 0..self.cores.len() {
                self.turn(i, &mut |_, _, _| {});
            }
        }
        let states: Vec<String> = self.cores.iter().map(Core::describe).collect();
        panic!("the cluster did not settle: {states:#?}");
    }

    /// Queues a tick for every node when one is due by the wall clock.
    fn tick_if_due(&mut self) {
        if self.last_tick.elapsed() >= TICK {
            self.last_tick = Instant::now();
            for inbox in &mut self.inboxes {
                inbox.push_back(Input::Tick(1));
            }
        }
    }

    /// One turn of node `i`'s event loop: a batch of its queued inputs,
    /// the end of the batch, its outputs routed. Replies go to `reply`.
    fn turn(&mut self, i: usize, reply: &mut dyn FnMut(ConnId, Option<i32>, Outcome)) {
        let mut out = std::mem::take(&mut self.out);
        let take = self.inboxes[i].len().min(MAX_BATCH);
        if take == 0 {
            return;
        }
        for input in self.inboxes[i].drain(..take) {
            self.cores[i].handle(input, &mut out);
        }
        self.cores[i].end_batch(&mut out);
        let from = self.cores[i].node().id.clone();
        for output in out.drain(..) {
            match output {
                Output::Reply { conn, tag, outcome } => reply(conn, tag, outcome),
                Output::Peer { to, msg, .. } => {
                    let Some(dst) = self.cores.iter().position(|c| c.node().id == to) else {
                        continue;
                    };
                    let msg = if self.codec {
                        self.frame.clear();
                        encode_peer_frame_into(&msg, &mut self.frame, self.max_frame_bytes)
                            .expect("the codec takes what the core sends");
                        decode_peer_msg(&self.frame[HEADER_BYTES..])
                            .expect("the codec decodes what it encoded")
                    } else {
                        msg
                    };
                    self.inboxes[dst].push_back(Input::Peer {
                        from: from.clone(),
                        source: None,
                        msg,
                    });
                }
            }
        }
        self.out = out;
    }
}

/// The writers: each has one SET in flight on the leader.
struct Writers {
    paths: Vec<Path>,
    body: Body,
    next_key: usize,
    next_tag: i32,
    /// Whether answered writers send another SET.
    sending: bool,
    in_flight: u64,
    answered: u64,
}

impl Writers {
    fn new() -> Writers {
        Writers {
            paths: (0..KEYS)
                .map(|n| Path::parse(&format!("/bench/{n}")).expect("valid"))
                .collect(),
            body: Body::from(vec![b'x'; VALUE_BYTES]),
            next_key: 0,
            next_tag: 0,
            sending: true,
            in_flight: 0,
            answered: 0,
        }
    }

    fn request(&mut self, conn: ConnId) -> Input {
        let path = self.paths[self.next_key].clone();
        self.next_key = (self.next_key + 1) % self.paths.len();
        self.next_tag = self.next_tag.wrapping_add(1);
        self.in_flight += 1;
        Input::Request {
            conn,
            tag: Some(self.next_tag),
            command: Command::Set {
                path,
                check: RevCheck::Clobber,
                body: self.body.clone(),
            },
        }
    }
}

/// Runs the writers until `stop` says so (given the answered count and
/// the start time); returns the answered count and the time taken.
fn run(cluster: &mut Cluster, stop: impl Fn(u64, Instant) -> bool) -> (u64, Duration) {
    let mut writers = Writers::new();
    for conn in 1..=u64::from(WRITERS) {
        let input = writers.request(conn);
        cluster.inboxes[0].push_back(input);
    }
    let start = Instant::now();
    let mut next = VecDeque::new();
    let mut turns = 0u64;
    while writers.sending || writers.in_flight > 0 {
        turns += 1;
        assert!(turns < MAX_TURNS, "writes were never answered");
        if writers.sending && stop(writers.answered, start) {
            writers.sending = false;
        }
        cluster.tick_if_due();
        if !writers.sending {
            // Draining: ticks keep heartbeats and resends going.
            for inbox in &mut cluster.inboxes {
                inbox.push_back(Input::Tick(1));
            }
        }
        for i in 0..cluster.cores.len() {
            cluster.turn(i, &mut |conn, _tag, outcome| {
                if conn == 0 {
                    return;
                }
                match outcome {
                    Ok(Reply::Rev(_)) => {}
                    other => panic!("writer {conn}: a SET answered {other:?}"),
                }
                writers.in_flight -= 1;
                writers.answered += 1;
                if writers.sending {
                    next.push_back(conn);
                }
            });
            while let Some(conn) = next.pop_front() {
                let input = writers.request(conn);
                cluster.inboxes[0].push_back(input);
            }
        }
    }
    (writers.answered, start.elapsed())
}

/// Runs ticks until every node applied the same rev, then checks that the
/// three stores are identical.
fn check_agreement(cluster: &mut Cluster) {
    cluster.settle(|c| {
        let rev = c.cores[0].store().rev();
        c.cores.iter().all(|core| core.store().rev() == rev)
    });
    let digests: Vec<u64> = cluster
        .cores
        .iter()
        .map(|core| core.store().current().digest())
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "the stores differ: {digests:x?}"
    );
}

fn main() {
    let timed = std::env::args().any(|arg| arg == "--bench");
    if !timed {
        for codec in [true, false] {
            let mut cluster = Cluster::form(codec);
            let (answered, _) = run(&mut cluster, |answered, _| answered >= SMOKE_WRITES);
            assert!(answered >= SMOKE_WRITES, "only {answered} writes answered");
            check_agreement(&mut cluster);
            println!("core bench smoke test (codec {codec}): {answered} writes answered, the 3 stores agree");
        }
        return;
    }
    let secs: f64 = std::env::var("CORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let length = Duration::from_secs_f64(secs);
    // CORE_BENCH_CODEC=on or off runs only that figure.
    let runs: &[bool] = match std::env::var("CORE_BENCH_CODEC").as_deref() {
        Ok("on") => &[true],
        Ok("off") => &[false],
        _ => &[true, false],
    };
    for &codec in runs {
        let mut cluster = Cluster::form(codec);
        let (answered, took) = run(&mut cluster, |_, start| start.elapsed() >= length);
        check_agreement(&mut cluster);
        let rate = answered as f64 / took.as_secs_f64();
        println!(
            "core: 3 nodes in memory, {WRITERS} writers, {VALUE_BYTES}-byte SETs, peer codec {}: {:.0} writes/s ({answered} in {:.2} s)",
            if codec { "on " } else { "off" },
            rate,
            took.as_secs_f64()
        );
    }
}
