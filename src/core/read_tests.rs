//! Linearizable reads (`core::reads`), on small clusters of cores wired
//! together in memory through the real peer codec: the message pattern of
//! each path, a deposed leader, and forged or excess read-index traffic.

use std::collections::{BTreeSet, VecDeque};

use super::*;
use crate::paxos::Msg;

fn config() -> CoreConfig {
    CoreConfig {
        history_revs: 500,
        pulse_ticks: 100_000,
        timeout_ticks: 100_000,
        max_value_bytes: 1024,
        max_pending_writes: 1000,
        max_peer_frame_bytes: 256 << 20,
        paxos: paxos::Settings::default(),
        local_reads: false,
        read_timeout_ticks: 400,
        seed: 7,
    }
}

fn info(n: u8) -> NodeInfo {
    NodeInfo {
        id: NodeId::from_bytes([n; 10]),
        addr: format!("127.0.0.{n}:8046"),
        hostname: format!("box{n}"),
        cluster_name: "test".into(),
        register_ns: true,
    }
}

fn path(p: &str) -> Path {
    Path::parse(p).unwrap()
}

fn get(p: &str) -> Command {
    Command::Get {
        path: path(p),
        rev: None,
    }
}

fn set(p: &str, body: &str) -> Command {
    Command::Set {
        path: path(p),
        check: RevCheck::Clobber,
        body: Body::from(body.as_bytes().to_vec()),
    }
}

fn kind(msg: &PeerMsg) -> &'static str {
    match msg {
        PeerMsg::ReadIndex { .. } => "ReadIndex",
        PeerMsg::ReadIndexIs { .. } => "ReadIndexIs",
        PeerMsg::Paxos(Msg::Confirm { .. }) => "Confirm",
        PeerMsg::Paxos(Msg::Confirmed { .. }) => "Confirmed",
        PeerMsg::Paxos(Msg::Reject { .. }) => "Reject",
        _ => "other",
    }
}

/// Cores wired in memory. Messages to or from a node in `cut` are lost;
/// a node in `paused` gets no input at all (its messages wait in
/// `held`, as in a stopped process's socket, until it resumes).
struct Net {
    cores: Vec<Core>,
    cut: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    held: Vec<(usize, Input)>,
    /// Every peer message delivered: (from, to, kind).
    sent: Vec<(usize, usize, &'static str)>,
    /// Every reply: (node, conn, outcome).
    replies: Vec<(usize, ConnId, Outcome)>,
}

impl Net {
    /// A seed, `attached - 1` more nodes that attach, and `members - 1` of
    /// them voting after `/ctl/cal` slots were opened.
    fn new(members: usize, nodes: usize) -> Net {
        let mut net = Net {
            cores: vec![Core::seed(info(1), config())],
            cut: BTreeSet::new(),
            paused: BTreeSet::new(),
            held: Vec::new(),
            sent: Vec::new(),
            replies: Vec::new(),
        };
        let seed_id = net.cores[0].node().id.clone();
        for n in 2..=nodes as u8 {
            let core = Core::join(info(n), config(), seed_id.clone(), "127.0.0.1:8046".into());
            net.cores.push(core);
        }
        net.tick_until(|net| net.cores.iter().all(|c| c.nodes.len() == nodes));
        for slot in 1..members {
            net.request(0, 1, set(&format!("/ctl/cal/{slot}"), ""));
        }
        net.tick_until(|net| net.cores.iter().all(|c| c.cal.len() == members));
        // Long enough for every node to apply and hear the heartbeat.
        net.tick(60);
        net.sent.clear();
        net.replies.clear();
        net
    }

    fn id(&self, i: usize) -> NodeId {
        self.cores[i].node().id.clone()
    }

    fn leader(&self) -> usize {
        self.cores
            .iter()
            .position(|c| c.is_leader())
            .expect("a leader")
    }

    fn input(&mut self, i: usize, input: Input) {
        if self.paused.contains(&i) {
            self.held.push((i, input));
            return;
        }
        let mut out = Vec::new();
        self.cores[i].handle(input, &mut out);
        self.cores[i].end_batch(&mut out);
        self.route(i, out);
    }

    fn route(&mut self, from: usize, out: Vec<Output>) {
        let mut queue: VecDeque<(usize, Output)> = out.into_iter().map(|o| (from, o)).collect();
        let mut rounds = 0;
        while let Some((src, output)) = queue.pop_front() {
            rounds += 1;
            assert!(rounds < 100_000, "messages never settled");
            match output {
                Output::Reply { conn, outcome, .. } => self.replies.push((src, conn, outcome)),
                Output::Peer { to, msg, .. } => {
                    let Some(dst) = self.cores.iter().position(|c| c.node().id == to) else {
                        continue;
                    };
                    if self.cut.contains(&src) || self.cut.contains(&dst) {
                        continue;
                    }
                    let mut frame = Vec::new();
                    crate::codec::peer::encode_peer_frame_into(&msg, &mut frame, 1 << 30)
                        .expect("encodes");
                    let msg = crate::codec::peer::decode_peer_msg(&frame[4..]).expect("decodes");
                    self.sent.push((src, dst, kind(&msg)));
                    let from = self.id(src);
                    let input = Input::Peer {
                        from,
                        source: None,
                        msg,
                    };
                    if self.paused.contains(&dst) {
                        self.held.push((dst, input));
                        continue;
                    }
                    let mut more = Vec::new();
                    self.cores[dst].handle(input, &mut more);
                    self.cores[dst].end_batch(&mut more);
                    queue.extend(more.into_iter().map(|o| (dst, o)));
                }
            }
        }
    }

    fn request(&mut self, i: usize, conn: ConnId, command: Command) {
        let input = Input::Request {
            conn,
            tag: Some(1),
            command,
        };
        self.input(i, input);
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for i in 0..self.cores.len() {
                self.input(i, Input::Tick(1));
            }
        }
    }

    fn tick_until(&mut self, done: impl Fn(&Net) -> bool) {
        for _ in 0..5000 {
            if done(self) {
                return;
            }
            self.tick(1);
        }
        panic!("never settled");
    }

    /// Wakes a paused node: its held inputs arrive in one batch, as a
    /// stopped process reads its sockets when it resumes.
    fn resume(&mut self, i: usize) {
        self.paused.remove(&i);
        let held: Vec<Input> = std::mem::take(&mut self.held)
            .into_iter()
            .filter_map(|(to, input)| (to == i).then_some(input))
            .collect();
        let mut out = Vec::new();
        for input in held {
            self.cores[i].handle(input, &mut out);
        }
        self.cores[i].end_batch(&mut out);
        self.route(i, out);
    }

    fn reply(&self, node: usize, conn: ConnId) -> Option<&Outcome> {
        self.replies
            .iter()
            .rev()
            .find(|(n, c, _)| *n == node && *c == conn)
            .map(|(_, _, outcome)| outcome)
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.sent
            .iter()
            .map(|(_, _, k)| *k)
            .filter(|k| *k != "other")
            .collect()
    }
}

fn value_rev(outcome: Option<&Outcome>) -> Rev {
    match outcome {
        Some(Ok(Reply::Value { rev, .. })) => *rev,
        other => panic!("not a value: {other:?}"),
    }
}

#[test]
fn a_lone_node_answers_reads_in_the_same_batch() {
    let mut core = Core::seed(info(1), config());
    let mut out = Vec::new();
    core.handle(
        Input::Request {
            conn: 1,
            tag: Some(1),
            command: Command::Rev,
        },
        &mut out,
    );
    assert!(out.is_empty(), "held until the batch's end");
    core.end_batch(&mut out);
    assert!(
        matches!(&out[..], [Output::Reply { outcome: Ok(Reply::Rev(rev)), .. }] if *rev == core.store().rev()),
        "{out:?}"
    );
}

#[test]
fn the_leader_confirms_its_reads_with_one_probe_per_batch() {
    let mut net = Net::new(3, 3);
    let leader = net.leader();
    let mut out = Vec::new();
    for conn in 1..=5 {
        let input = Input::Request {
            conn,
            tag: Some(1),
            command: get("/x"),
        };
        net.cores[leader].handle(input, &mut out);
    }
    net.cores[leader].end_batch(&mut out);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Reply { .. })),
        "no answer before a quorum confirmed the leader"
    );
    net.route(leader, out);
    let mut kinds = net.kinds();
    kinds.sort();
    assert_eq!(
        kinds,
        ["Confirm", "Confirm", "Confirmed", "Confirmed"],
        "one probe to each follower for the five reads"
    );
    for conn in 1..=5 {
        assert_eq!(value_rev(net.reply(leader, conn)), Rev::ZERO);
    }
}

#[test]
fn a_voter_read_in_three_members_takes_one_round_trip() {
    let mut net = Net::new(3, 3);
    let leader = net.leader();
    let follower = (leader + 1) % 3;
    net.request(follower, 1, get("/x"));
    assert_eq!(net.kinds(), ["ReadIndex", "ReadIndexIs"]);
    assert_eq!(value_rev(net.reply(follower, 1)), Rev::ZERO);
}

#[test]
fn a_slave_read_waits_for_a_probe_and_sees_acknowledged_writes() {
    let mut net = Net::new(3, 4);
    let leader = net.leader();
    let slave = (0..4)
        .find(|i| !net.cores[*i].cal.contains(&net.id(*i)))
        .unwrap();
    net.request(leader, 7, set("/x", "1"));
    let written = match net.reply(leader, 7) {
        Some(Ok(Reply::Rev(rev))) => *rev,
        other => panic!("{other:?}"),
    };
    net.sent.clear();
    net.request(slave, 1, get("/x"));
    assert_eq!(
        net.kinds(),
        [
            "ReadIndex",
            "Confirm",
            "Confirm",
            "Confirmed",
            "Confirmed",
            "ReadIndexIs"
        ]
    );
    assert_eq!(value_rev(net.reply(slave, 1)), written);
}

/// The case: the leader stops (SIGSTOP) with reads queued, the
/// others elect a new leader and acknowledge writes, the old leader wakes.
/// Its reads must not be answered from its old copy.
#[test]
fn a_paused_leader_that_was_deposed_never_answers_from_its_old_copy() {
    let mut net = Net::new(3, 3);
    let old = net.leader();
    net.paused.insert(old);
    net.request(old, 1, get("/x"));
    net.request(old, 2, Command::Rev);
    net.tick_until(|net| {
        net.cores
            .iter()
            .any(|c| c.is_leader() && c.node().id != net.id(old))
    });
    let new = (0..3)
        .find(|i| *i != old && net.cores[*i].is_leader())
        .unwrap();
    net.request(new, 9, set("/x", "after"));
    net.tick_until(|net| net.reply(new, 9).is_some());
    let written = match net.reply(new, 9) {
        Some(Ok(Reply::Rev(rev))) => *rev,
        other => panic!("{other:?}"),
    };
    assert!(net.cores[old].is_leader(), "still believes it leads");
    net.resume(old);
    net.tick_until(|net| net.reply(old, 1).is_some() && net.reply(old, 2).is_some());
    assert_eq!(value_rev(net.reply(old, 1)), written);
    assert!(
        matches!(net.reply(old, 2), Some(Ok(Reply::Rev(rev))) if *rev >= written),
        "{:?}",
        net.reply(old, 2)
    );
    assert!(!net.cores[old].is_leader());
}

/// A node cut off from the others answers no read from its copy: the read
/// gets an error after `read_timeout_ticks`.
#[test]
fn a_cut_off_node_refuses_reads_after_the_time_out() {
    let mut net = Net::new(3, 3);
    let leader = net.leader();
    let follower = (leader + 1) % 3;
    net.cut.insert(follower);
    net.request(follower, 1, get("/x"));
    net.tick(300);
    assert!(net.reply(follower, 1).is_none(), "waits, then...");
    net.tick(200);
    assert!(
        matches!(net.reply(follower, 1), Some(Err(e)) if e.to_string().contains("no leader confirmed")),
        "{:?}",
        net.reply(follower, 1)
    );
    // Healed, it reads again.
    net.cut.clear();
    net.tick(100);
    net.request(follower, 2, get("/x"));
    net.tick_until(|net| net.reply(follower, 2).is_some());
    assert_eq!(value_rev(net.reply(follower, 2)), Rev::ZERO);
}

#[test]
fn reads_at_an_applied_rev_and_with_local_reads_answer_at_once() {
    let mut net = Net::new(3, 3);
    let follower = (net.leader() + 1) % 3;
    let rev = net.cores[follower].store().rev();
    net.cut.insert(follower);
    let at_rev = Command::Get {
        path: path("/x"),
        rev: Some(rev.0),
    };
    net.request(follower, 1, at_rev);
    assert_eq!(value_rev(net.reply(follower, 1)), Rev::ZERO);
    net.cores[follower].config.local_reads = true;
    net.request(follower, 2, get("/x"));
    assert_eq!(value_rev(net.reply(follower, 2)), Rev::ZERO);
}

#[test]
fn forged_read_index_answers_and_asks_are_refused() {
    let mut net = Net::new(3, 4);
    let leader = net.leader();
    let follower = (0..4)
        .find(|i| *i != leader && net.cores[*i].cal.contains(&net.id(*i)))
        .unwrap();
    // An answer to an ask never made, and one from a node not asked.
    let mut core_out = Vec::new();
    let refused = net.cores[follower].refused();
    let bogus = PeerMsg::ReadIndexIs {
        ask: 12345,
        index: Rev(1),
    };
    let from = net.id(leader);
    net.cores[follower].handle(
        Input::Peer {
            from,
            source: None,
            msg: bogus,
        },
        &mut core_out,
    );
    assert_eq!(net.cores[follower].refused(), refused + 1);
    net.cut.insert(leader);
    net.request(follower, 1, get("/x"));
    let other = (0..4).find(|i| *i != leader && *i != follower).unwrap();
    let asked = net.cores[follower]
        .reads
        .asked
        .keys()
        .next()
        .copied()
        .unwrap();
    let forged = PeerMsg::ReadIndexIs {
        ask: asked,
        index: Rev(0),
    };
    let from = net.id(other);
    net.cores[follower].handle(
        Input::Peer {
            from,
            source: None,
            msg: forged,
        },
        &mut core_out,
    );
    net.cores[follower].end_batch(&mut core_out);
    assert_eq!(net.cores[follower].refused(), refused + 2);
    assert!(
        !core_out.iter().any(|o| matches!(o, Output::Reply { .. })),
        "the read still waits for its leader"
    );
    // An ask from a stranger.
    let stranger = NodeId::from_bytes([77; 10]);
    let refused = net.cores[leader].refused();
    let ballot = net.cores[leader].paxos.promised().clone();
    net.cores[leader].handle(
        Input::Peer {
            from: stranger,
            source: None,
            msg: PeerMsg::ReadIndex { ask: 1, ballot },
        },
        &mut core_out,
    );
    assert_eq!(net.cores[leader].refused(), refused + 1);
}

#[test]
fn a_flood_of_read_index_asks_is_bounded() {
    let mut net = Net::new(3, 4);
    let leader = net.leader();
    let slave = (0..4)
        .find(|i| !net.cores[*i].cal.contains(&net.id(*i)))
        .unwrap();
    let from = net.id(slave);
    let refused = net.cores[leader].refused();
    let mut out = Vec::new();
    let flood = reads::MAX_REMOTE_ASKS + 100;
    for ask in 0..flood as u64 {
        net.cores[leader].handle(
            Input::Peer {
                from: from.clone(),
                source: None,
                msg: PeerMsg::ReadIndex {
                    ask,
                    ballot: paxos::Ballot::ZERO,
                },
            },
            &mut out,
        );
    }
    assert_eq!(net.cores[leader].refused(), refused + 100);
    net.cores[leader].end_batch(&mut out);
    net.route(leader, out);
    // Answered with one probe; the count is back to zero.
    let answers = net.kinds().iter().filter(|k| **k == "ReadIndexIs").count();
    assert_eq!(answers, reads::MAX_REMOTE_ASKS);
    assert_eq!(net.cores[leader].reads.remote_asks, 0);
}
