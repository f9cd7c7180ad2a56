//! The core trusts no sender: each refusal of `on_peer`, the engine
//! assertions the core owns, and the pruning of the dedupe state and the
//! membership history.

use super::*;
use crate::paxos::{Ballot, Msg};

fn config() -> CoreConfig {
    CoreConfig {
        history_revs: 50,
        pulse_ticks: 100,
        timeout_ticks: 1000,
        max_value_bytes: 1024,
        max_pending_writes: 8,
        max_peer_frame_bytes: 256 << 20,
        paxos: paxos::Settings::default(),
        local_reads: false,
        read_timeout_ticks: 1000,
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

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

fn seed() -> Core {
    Core::seed(info(1), config())
}

fn path(p: &str) -> Path {
    Path::parse(p).unwrap()
}

fn write(origin: NodeId, seq: u64, floor: u64, p: &str) -> Decree {
    Decree::Write {
        origin,
        seq,
        floor,
        mutation: Mutation::Set {
            path: path(p),
            check: RevCheck::Clobber,
            body: Body::from(b"x".to_vec()),
        },
    }
}

/// Feeds one peer message as its own batch; returns the outputs.
fn peer(core: &mut Core, from: NodeId, source: Option<&str>, msg: PeerMsg) -> Vec<Output> {
    let mut out = Vec::new();
    let source = source.map(|s| s.parse().unwrap());
    core.handle(Input::Peer { from, source, msg }, &mut out);
    core.end_batch(&mut out);
    out
}

fn request(core: &mut Core, conn: ConnId, command: Command) -> Vec<Output> {
    let mut out = Vec::new();
    let input = Input::Request {
        conn,
        tag: Some(1),
        command,
    };
    core.handle(input, &mut out);
    core.end_batch(&mut out);
    out
}

fn set(p: &str) -> Command {
    Command::Set {
        path: path(p),
        check: RevCheck::Clobber,
        body: Body::from(b"v".to_vec()),
    }
}

fn peer_msgs(out: &[Output]) -> Vec<(NodeId, String, PeerMsg)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Peer { to, addr, msg } => Some((to.clone(), addr.clone(), msg.clone())),
            Output::Reply { .. } => None,
        })
        .collect()
}

fn replies(out: &[Output]) -> Vec<Outcome> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply { outcome, .. } => Some(outcome.clone()),
            Output::Peer { .. } => None,
        })
        .collect()
}

/// A forged snapshot: one file, the stranger as the only voter.
fn forged_snapshot(rev: i64) -> PeerMsg {
    PeerMsg::Snapshot(Box::new(SnapshotData {
        rev: Rev(rev),
        files: vec![(path("/owned"), Rev(rev), Body::from(b"yes".to_vec()))],
        membership: vec![(1, vec![id(9)])],
        dedupe: vec![],
    }))
}

/// A node attached to `seed`'s cluster: it got the seed's snapshot and
/// heard its heartbeat, and is not registered yet.
fn attached(seed: &mut Core, n: u8) -> Core {
    let mut node = Core::join(
        info(n),
        config(),
        seed.node().id.clone(),
        "127.0.0.1:8046".into(),
    );
    let snapshot = PeerMsg::Snapshot(Box::new(seed.snapshot_data()));
    peer(&mut node, seed.node().id.clone(), None, snapshot);
    assert!(node.is_writable(), "the snapshot was installed");
    let heartbeat = seed.paxos.heartbeat().expect("the seed leads");
    peer(
        &mut node,
        seed.node().id.clone(),
        None,
        PeerMsg::Paxos(heartbeat),
    );
    assert_eq!(node.leader(), Some(&seed.node().id));
    node
}

#[test]
fn a_snapshot_nobody_asked_for_is_refused() {
    let mut core = seed();
    let before = core.store().current().digest();
    let rev = core.store().rev();
    peer(&mut core, id(9), None, forged_snapshot(1000));
    assert_eq!(core.store().rev(), rev, "the store was not replaced");
    assert_eq!(core.store().current().digest(), before);
    assert!(core.is_leader(), "still leads its own cluster");
    assert_eq!(core.refused(), 1);

    // A joining node takes a snapshot only from its target.
    let mut joining = Core::join(info(2), config(), id(1), "127.0.0.1:8046".into());
    peer(&mut joining, id(9), None, forged_snapshot(1000));
    assert!(!joining.is_writable(), "not from a stranger");
    assert_eq!(joining.refused(), 1);
    peer(&mut joining, id(1), None, forged_snapshot(1000));
    assert!(joining.is_writable(), "from its target");
}

#[test]
fn decided_slots_only_from_the_asked_node_or_the_leader() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let rev = node.store().rev();
    let forged = PeerMsg::Decided {
        first: rev.next(),
        decrees: vec![write(id(9), 1, 1, "/owned")],
    };
    peer(&mut node, id(9), None, forged.clone());
    assert_eq!(node.store().rev(), rev, "not from a stranger");
    // A registered node that was not asked is refused too.
    node.nodes.insert(id(3), "127.0.0.3:8046".into());
    peer(&mut node, id(3), None, forged.clone());
    assert_eq!(node.store().rev(), rev, "not from a node it did not ask");
    assert_eq!(node.refused(), 2);

    // The node asked, or the leader, is heard.
    node.catch_up = Some((id(3), node.ticks));
    node.asked_catch_up.insert(id(3), node.ticks);
    peer(&mut node, id(3), None, forged);
    assert_eq!(node.store().rev(), rev.next());
    assert!(node.catch_up.is_none(), "the answer ends the request");
    let streamed = PeerMsg::Decided {
        first: rev.next().next(),
        decrees: vec![Decree::Fill],
    };
    peer(&mut node, id(1), None, streamed);
    assert_eq!(node.store().rev(), rev.next().next());
    // An answer long after the request is not taken.
    node.ticks += CATCH_UP_ANSWER_TICKS + 1;
    let late = PeerMsg::Decided {
        first: Rev(rev.0 + 3),
        decrees: vec![Decree::Fill],
    };
    peer(&mut node, id(3), None, late);
    assert_eq!(node.store().rev(), rev.next().next());
    assert_eq!(node.refused(), 3);
}

#[test]
fn decided_slots_that_contradict_the_log_are_refused() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let rev = node.store().rev();
    peer(
        &mut node,
        id(1),
        None,
        PeerMsg::Decided {
            first: rev.next(),
            decrees: vec![Decree::Fill, Decree::Fill],
        },
    );
    let applied = node.store().rev();
    assert_eq!(applied, Rev(rev.0 + 2));
    let digest = node.store().current().digest();
    // The leader itself now says slot rev+1 held something else, and
    // offers one more slot after it: all of it is refused.
    peer(
        &mut node,
        id(1),
        None,
        PeerMsg::Decided {
            first: rev.next(),
            decrees: vec![write(id(1), 50, 50, "/x"), Decree::Fill, Decree::Fill],
        },
    );
    assert_eq!(node.store().rev(), applied);
    assert_eq!(node.store().current().digest(), digest);
    assert_eq!(node.refused(), 1);
    // So is one contradicting a slot known chosen but not applied yet.
    let next = applied.next().0;
    node.paxos.learn(next + 1, Decree::Fill).unwrap();
    peer(
        &mut node,
        id(1),
        None,
        PeerMsg::Decided {
            first: applied.next(),
            decrees: vec![Decree::Fill, write(id(1), 51, 51, "/y")],
        },
    );
    assert_eq!(node.refused(), 2);
    assert_eq!(node.store().rev(), applied, "nothing learned from it");
}

#[test]
fn out_of_range_revs_and_slots_are_refused_without_overflow() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let rev = node.store().rev();
    for first in [i64::MAX - 1, i64::MIN, 0, -5, paxos::MAX_SLOT] {
        let msg = PeerMsg::Decided {
            first: Rev(first),
            decrees: vec![Decree::Fill, Decree::Fill],
        };
        peer(&mut node, id(1), None, msg);
    }
    assert_eq!(node.refused(), 5);
    assert_eq!(node.store().rev(), rev);
    let msgs = [
        PeerMsg::Alive {
            applied: Rev(-1),
            addr: "127.0.0.1:1".into(),
        },
        PeerMsg::CatchUp {
            from: Rev(i64::MAX),
            addr: "127.0.0.1:1".into(),
        },
    ];
    for msg in msgs {
        peer(&mut seed, id(2), None, msg);
    }
    assert_eq!(seed.refused(), 2);
}

#[test]
fn forwards_carry_only_what_the_sender_may_propose() {
    let mut core = seed();
    let rev = core.store().rev();
    let forward = |values| PeerMsg::Paxos(Msg::Forward { values });
    // A stranger: not a plain write, not in another origin's name, no
    // fill, no floor above the seq.
    let refused = [
        forward(vec![write(id(9), 1, 1, "/owned")]),
        forward(vec![write(id(1), 99, 99, "/ctl/node/999/x")]),
        forward(vec![Decree::Fill]),
        forward(vec![write(
            id(9),
            1,
            5,
            &format!("/ctl/node/{}/addr", id(9)),
        )]),
    ];
    for msg in refused {
        peer(&mut core, id(9), None, msg);
    }
    assert_eq!(core.refused(), 4);
    assert_eq!(core.store().rev(), rev, "nothing written");
    // Its own registration is what an attaching node forwards.
    let own = format!("/ctl/node/{}/addr", id(9));
    peer(
        &mut core,
        id(9),
        None,
        forward(vec![write(id(9), 1, 1, &own)]),
    );
    assert_eq!(core.store().rev(), rev.next());
    assert_eq!(core.refused(), 4);
    // Registered, it may forward its clients' writes, still only its own.
    peer(
        &mut core,
        id(9),
        None,
        forward(vec![write(id(9), 2, 2, "/mine")]),
    );
    assert_eq!(core.store().rev(), Rev(rev.0 + 2));
    peer(
        &mut core,
        id(9),
        None,
        forward(vec![write(id(1), 80, 80, "/forged")]),
    );
    assert_eq!(core.refused(), 5);
}

#[test]
fn a_stranger_cannot_steer_consensus() {
    let mut core = seed();
    let rev = core.store().rev();
    let big = Ballot::new(u64::MAX, id(9));
    let msgs = [
        Msg::Accept {
            ballot: Ballot::new(5, id(9)),
            first_slot: rev.0 + 1,
            values: vec![write(id(9), 1, 1, "/owned")],
            commit: rev.0 + 1,
        },
        Msg::Prepare {
            ballot: big.clone(),
            from_slot: 1,
        },
        Msg::Commit {
            ballot: Ballot::new(5, id(9)),
            commit: rev.0 + 100,
        },
        Msg::Reject {
            promised: big.clone(),
            commit: 0,
        },
        Msg::PreVote {
            round: 3,
            commit: rev.0 + 100,
        },
        Msg::Promise {
            ballot: big,
            from_slot: 1,
            accepted: vec![],
            commit: 0,
        },
    ];
    for msg in msgs {
        peer(&mut core, id(9), None, PeerMsg::Paxos(msg));
    }
    assert_eq!(core.refused(), 6);
    assert!(core.is_leader(), "still leads");
    assert_eq!(core.store().rev(), rev);
    // And it still takes writes.
    let out = request(&mut core, 1, set("/after"));
    assert_eq!(replies(&out), vec![Ok(Reply::Rev(rev.next()))]);
}

#[test]
fn nobody_speaks_as_this_node() {
    let mut core = seed();
    let heartbeat = core.paxos.heartbeat().unwrap();
    peer(&mut core, id(1), None, PeerMsg::Paxos(heartbeat));
    let alive = PeerMsg::Alive {
        applied: Rev(1),
        addr: "127.0.0.1:8046".into(),
    };
    peer(&mut core, id(1), None, alive);
    assert_eq!(core.refused(), 2);
}

#[test]
fn a_stranger_names_only_the_host_it_connects_from() {
    let mut core = seed();
    // Asking for a catch-up to another host: refused, nothing dialled.
    let msg = PeerMsg::CatchUp {
        from: Rev(0),
        addr: "10.1.2.3:8046".into(),
    };
    let out = peer(&mut core, id(9), Some("127.0.0.9"), msg);
    assert!(peer_msgs(&out).is_empty(), "{out:?}");
    assert_eq!(core.refused(), 1);
    let alive = PeerMsg::Alive {
        applied: Rev(0),
        addr: "example.com:80".into(),
    };
    let out = peer(&mut core, id(9), Some("127.0.0.9"), alive);
    assert!(peer_msgs(&out).is_empty(), "{out:?}");
    assert_eq!(core.refused(), 2);
    // From the host it names, it is answered there.
    let msg = PeerMsg::CatchUp {
        from: Rev(0),
        addr: "127.0.0.9:8046".into(),
    };
    let out = peer(&mut core, id(9), Some("127.0.0.9"), msg);
    let sent = peer_msgs(&out);
    assert!(
        matches!(&sent[..], [(to, addr, PeerMsg::SnapshotChunk { index: 0, .. })] if *to == id(9) && addr == "127.0.0.9:8046"),
        "{sent:?}"
    );
}

#[test]
fn leader_is_only_from_cluster_nodes() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let msg = PeerMsg::LeaderIs {
        leader: id(9),
        addr: "10.9.9.9:1".into(),
    };
    peer(&mut node, id(8), None, msg.clone());
    assert_eq!(node.refused(), 1);
    assert!(node.leader_hint.is_none());
    assert!(!node.unregistered.contains_key(&id(9)));
    // From a cluster node, the hint is kept.
    peer(&mut node, id(1), None, msg);
    assert_eq!(
        node.leader_hint.as_ref().map(|(l, _)| l.clone()),
        Some(id(9))
    );
}

#[test]
fn strangers_do_not_count_as_heard() {
    let mut core = seed();
    let alive = PeerMsg::Alive {
        applied: Rev(0),
        addr: "127.0.0.9:8046".into(),
    };
    peer(&mut core, id(9), None, alive);
    assert!(core.last_heard.is_empty(), "{:?}", core.last_heard);
    assert!(core.applied_of.is_empty());
}

#[test]
#[should_panic(expected = "slots are applied in order without gaps")]
fn a_gap_in_the_applied_slots_stops_the_node() {
    let mut core = seed();
    let next = Rev(core.store().rev().0 + 2);
    core.apply(next, Decree::Fill, false, &mut Vec::new());
}

#[test]
fn an_unregistered_node_forwards_only_its_registration() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let out = request(&mut node, 1, set("/early"));
    let forwarded: Vec<Decree> = peer_msgs(&out)
        .into_iter()
        .filter_map(|(_, _, msg)| match msg {
            PeerMsg::Paxos(Msg::Forward { values }) => Some(values),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(forwarded.is_empty(), "held until registered: {forwarded:?}");
    // Housekeeping registers it; its registration goes out alone.
    let mut out = Vec::new();
    for _ in 0..HOUSEKEEPING_TICKS {
        node.handle(Input::Tick(1), &mut out);
    }
    node.end_batch(&mut out);
    let forwarded: Vec<Decree> = peer_msgs(&out)
        .into_iter()
        .filter_map(|(_, _, msg)| match msg {
            PeerMsg::Paxos(Msg::Forward { values }) => Some(values),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!forwarded.is_empty());
    assert!(
        forwarded.iter().all(|d| registers(d, &id(2))),
        "{forwarded:?}"
    );
    assert_eq!(node.pending_writes.len(), forwarded.len() + 1);
}

#[test]
fn dedupe_state_of_gone_origins_is_pruned() {
    let mut core = seed();
    let me = core.node().id.clone();
    let base = 3 * ORIGIN_IDLE_REVS;
    let mut files = core.store().current().files();
    for f in &mut files {
        f.1 = Rev(1);
    }
    let snapshot = SnapshotData {
        rev: Rev(base),
        files,
        membership: core.paxos.membership().entries(),
        dedupe: vec![
            // This node: registered, so kept however old.
            (me.clone(), 3, vec![], Rev(1)),
            // Gone and idle: pruned.
            (id(7), 5, vec![6], Rev(base - ORIGIN_IDLE_REVS - 10)),
            // Gone but written lately: kept.
            (id(8), 5, vec![], Rev(base - 10)),
        ],
    };
    core.install(snapshot, &mut Vec::new()).unwrap();
    let mut out = Vec::new();
    for rev in base + 1..=base + PRUNE_EVERY_REVS {
        core.apply(Rev(rev), Decree::Fill, false, &mut out);
    }
    let origins: Vec<NodeId> = core.applied_writes.keys().cloned().collect();
    assert_eq!(origins, vec![me, id(8)]);
    assert_eq!(core.snapshot_data().dedupe.len(), 2, "and out of snapshots");
}

#[test]
fn a_pruned_origin_does_not_resend_blindly() {
    let mut core = seed();
    let me = core.node().id.clone();
    // A write handed to the leader (itself here) and not applied yet.
    let mut out = Vec::new();
    core.handle(
        Input::Request {
            conn: 4,
            tag: Some(2),
            command: set("/in-flight"),
        },
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!(core.pending_writes.len(), 1);
    // Its origin entry goes (it was away, unregistered, long enough).
    core.applied_writes.remove(&me);
    core.prune_origins(Rev(PRUNE_EVERY_REVS), &mut out);
    assert!(core.pending_writes.is_empty());
    let outcome = replies(&out);
    assert!(
        matches!(&outcome[..], [Err(e)] if e.to_string().contains("outcome unknown")),
        "{outcome:?}"
    );
}

#[test]
fn a_snapshot_settles_writes_it_shows_applied_and_keeps_the_others() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    let me = node.node().id.clone();
    // Registered, with two writes handed to the leader.
    node.nodes.insert(me.clone(), "127.0.0.2:8046".into());
    request(&mut node, 1, set("/a"));
    request(&mut node, 2, set("/b"));
    let seqs: Vec<u64> = node.pending_writes.keys().copied().collect();
    assert_eq!(seqs.len(), 2);
    assert!(node.pending_writes.values().all(|p| p.sent_to.is_some()));
    // A snapshot showing the first applied (its answer was never seen here).
    let mut data = seed.snapshot_data();
    data.rev = Rev(data.rev.0 + 10);
    data.dedupe
        .push((me.clone(), seqs[0] + 1, vec![], data.rev));
    let out = peer(
        &mut node,
        id(1),
        None,
        PeerMsg::Snapshot(Box::new(data.clone())),
    );
    assert_eq!(node.refused(), 1, "not asked for");
    node.asked_catch_up.insert(id(1), node.ticks);
    let out2 = peer(&mut node, id(1), None, PeerMsg::Snapshot(Box::new(data)));
    assert!(replies(&out).is_empty());
    let outcome = replies(&out2);
    assert_eq!(outcome.len(), 1, "{outcome:?}");
    assert!(outcome[0].is_err());
    assert_eq!(
        node.pending_writes.keys().copied().collect::<Vec<_>>(),
        vec![seqs[1]],
        "the unapplied one is kept, to be resent"
    );
}

#[test]
fn membership_history_is_pruned_as_slots_apply() {
    let mut core = seed();
    let base = 1000;
    let snapshot = SnapshotData {
        rev: Rev(base),
        files: core.store().current().files(),
        // Another voter governed the slots up to `base`; this node alone
        // governs from `base + 1` on.
        membership: vec![(Slot::MIN, vec![id(2)]), (base + 1, vec![id(1)])],
        dedupe: vec![],
    };
    core.install(snapshot, &mut Vec::new()).unwrap();
    assert_eq!(core.paxos.membership().entries().len(), 2);
    let out = request(&mut core, 1, set("/after"));
    assert_eq!(replies(&out), vec![Ok(Reply::Rev(Rev(base + 1)))]);
    let entries = core.paxos.membership().entries();
    assert_eq!(entries, vec![(Slot::MIN, vec![id(1)])]);
    assert_eq!(core.snapshot_data().membership.len(), 1);
}

#[test]
fn a_registered_node_that_does_not_vote_cannot_lead() {
    let mut seed = seed();
    let mut node = attached(&mut seed, 2);
    // Node 3 is registered (a slave), not a voter.
    node.nodes.insert(id(3), "127.0.0.3:8046".into());
    let rev = node.store().rev();
    let accept = Msg::Accept {
        ballot: Ballot::new(MAX_ROUND_FOR_TESTS, id(3)),
        first_slot: rev.0 + 1,
        values: vec![write(id(3), 1, 1, "/owned")],
        commit: rev.0 + 1,
    };
    peer(&mut node, id(3), None, PeerMsg::Paxos(accept));
    assert_eq!(node.refused(), 1);
    assert_eq!(node.store().rev(), rev);
    assert_eq!(node.leader(), Some(&id(1)));
    // Nor can it name itself leader.
    let msg = PeerMsg::LeaderIs {
        leader: id(3),
        addr: "127.0.0.3:8046".into(),
    };
    peer(&mut node, id(3), None, msg);
    assert_eq!(node.refused(), 2);
    assert!(node.leader_hint.is_none());
}

const MAX_ROUND_FOR_TESTS: u64 = paxos::MAX_ROUND;
