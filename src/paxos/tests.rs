use super::*;

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Nop,
    Put(u32),
}

impl Value for Val {
    fn nop() -> Self {
        Val::Nop
    }

    fn size(&self) -> usize {
        4
    }
}

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

/// A tiny in-order network of engines, with nodes that can be cut off.
struct Net {
    nodes: Vec<Paxos<Val>>,
    down: BTreeSet<NodeId>,
    /// Nodes that run (tick) but whose messages are lost both ways.
    cut: BTreeSet<NodeId>,
    queue: VecDeque<(NodeId, NodeId, Msg<Val>)>,
    decided: Vec<Vec<(Slot, Val)>>,
}

impl Net {
    fn new(n: u8) -> Net {
        let voters: BTreeSet<NodeId> = (1..=n).map(id).collect();
        let nodes = (1..=n)
            .map(|i| {
                Paxos::new(
                    id(i),
                    Membership::new(voters.clone()),
                    1,
                    Settings::default(),
                    u64::from(i),
                )
            })
            .collect();
        Net {
            nodes,
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            queue: VecDeque::new(),
            decided: vec![Vec::new(); n as usize],
        }
    }

    fn idx(&self, node: &NodeId) -> usize {
        self.nodes.iter().position(|n| n.me() == node).unwrap()
    }

    fn sent(&mut self, from: usize, out: Vec<(NodeId, Msg<Val>)>) {
        let sender = self.nodes[from].me().clone();
        self.queue
            .extend(out.into_iter().map(|(to, m)| (sender.clone(), to, m)));
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, msg)) = self.queue.pop_front() else {
                self.collect();
                return;
            };
            let lost = |n: &NodeId| self.down.contains(n) || self.cut.contains(n);
            if lost(&to) || lost(&from) {
                continue;
            }
            let i = self.idx(&to);
            let mut out = Vec::new();
            if let Err(refusal) = self.nodes[i].handle(from.clone(), msg.clone(), false, &mut out) {
                panic!("{to} refused {msg:?} from {from}: {refusal}");
            }
            self.nodes[i].flush(&mut out);
            self.sent(i, out);
        }
        panic!("network never went quiet");
    }

    fn tick_all(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for i in 0..self.nodes.len() {
                if self.down.contains(self.nodes[i].me()) {
                    continue;
                }
                let mut out = Vec::new();
                self.nodes[i].tick(&mut out);
                self.sent(i, out);
            }
            self.settle();
        }
    }

    fn collect(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            while let Some(d) = node.take_decided() {
                self.decided[i].push(d);
            }
        }
    }

    fn propose(&mut self, at: usize, v: Val) {
        self.nodes[at].propose(v).unwrap();
        let mut out = Vec::new();
        self.nodes[at].flush(&mut out);
        self.sent(at, out);
        self.settle();
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.is_leader() && !self.down.contains(n.me()))
    }
}

#[test]
fn lone_member_is_a_quorum_of_one() {
    let mut net = Net::new(1);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    assert!(out.is_empty(), "a lone member talks only to itself");
    assert!(net.nodes[0].is_leader());
    for i in 0..5 {
        net.nodes[0].propose(Val::Put(i)).unwrap();
    }
    net.nodes[0].flush(&mut out);
    assert!(out.is_empty());
    net.collect();
    let want: Vec<_> = (0..5).map(|i| (i64::from(i) + 1, Val::Put(i))).collect();
    assert_eq!(net.decided[0], want);
}

#[test]
fn three_members_agree_and_followers_learn_from_commit() {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    assert!(net.nodes[0].is_leader());
    assert_eq!(net.nodes[1].leader(), Some(&id(1)));
    for i in 0..10 {
        net.propose(0, Val::Put(i));
    }
    // A proposal on a follower is forwarded.
    net.propose(2, Val::Put(99));
    assert_eq!(net.decided[0].len(), 11);
    net.tick_all(Settings::default().heartbeat_ticks as usize);
    assert_eq!(net.decided[1], net.decided[0]);
    assert_eq!(net.decided[2], net.decided[0]);
}

#[test]
fn new_leader_reproposes_accepted_values_and_fills_holes() {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();

    // Slot 1 reaches only node 2 before the leader dies.
    net.nodes[0].propose(Val::Put(7)).unwrap();
    let mut out = Vec::new();
    net.nodes[0].flush(&mut out);
    for (to, msg) in out {
        if to == id(2) {
            let mut ignored = Vec::new();
            net.nodes[1]
                .handle(id(1), msg, false, &mut ignored)
                .unwrap();
        }
    }
    net.down.insert(id(1));
    net.tick_all(200);
    let leader = net.leader().expect("a new leader");
    assert_ne!(leader, 0);
    net.tick_all(20);
    assert_eq!(net.decided[1].first(), Some(&(1, Val::Put(7))));
    assert_eq!(net.decided[1], net.decided[2]);
}

#[test]
fn a_returning_node_does_not_depose_a_healthy_leader() {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    net.cut.insert(id(3));
    net.tick_all(300);
    // Node 3 kept timing out and asking for pre-votes while cut off; when
    // it returns, nobody grants them while the leader is heard.
    net.cut.clear();
    net.tick_all(50);
    assert!(net.nodes[0].is_leader(), "the leader survived the return");
    net.propose(0, Val::Put(1));
    net.tick_all(20);
    assert_eq!(net.decided[2].last(), Some(&(1, Val::Put(1))));
}

#[test]
fn minority_cannot_decide() {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    net.down.insert(id(2));
    net.down.insert(id(3));
    net.propose(0, Val::Put(5));
    net.tick_all(30);
    assert!(net.decided[0].is_empty(), "one of three decided alone");
    net.down.clear();
    net.tick_all(100);
    assert_eq!(net.decided[0], vec![(1, Val::Put(5))]);
}

/// A three-member net with node 1 leading and a few slots decided.
fn led_net() -> Net {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    assert!(net.nodes[0].is_leader());
    for i in 0..3 {
        net.propose(0, Val::Put(i));
    }
    net
}

#[test]
fn refuses_what_no_honest_sender_sends() {
    let mut net = led_net();
    let ballot = Ballot::new(1, id(1));
    let node = &mut net.nodes[1];
    let promised = node.promised.clone();
    let commit = node.commit();
    let cases: Vec<(NodeId, Msg<Val>, Refusal)> = vec![
        (
            id(2),
            Msg::Commit {
                ballot: Ballot::new(9, id(2)),
                commit: 1,
            },
            Refusal::FromSelf,
        ),
        // A stranger with its own ballot.
        (
            id(9),
            Msg::Accept {
                ballot: Ballot::new(50, id(9)),
                first_slot: commit + 1,
                values: vec![Val::Put(666)],
                commit: commit + 1,
            },
            Refusal::Stranger,
        ),
        (
            id(9),
            Msg::Prepare {
                ballot: Ballot::new(50, id(9)),
                from_slot: 1,
            },
            Refusal::Stranger,
        ),
        // A member speaking under another member's ballot.
        (
            id(3),
            Msg::Accept {
                ballot: ballot.clone(),
                first_slot: commit + 1,
                values: vec![Val::Put(666)],
                commit: commit + 1,
            },
            Refusal::NotOwner,
        ),
        (
            id(3),
            Msg::Commit {
                ballot: ballot.clone(),
                commit: commit + 5,
            },
            Refusal::NotOwner,
        ),
        // Votes from non-voters.
        (
            id(9),
            Msg::Promise {
                ballot: ballot.clone(),
                from_slot: 1,
                accepted: vec![],
                commit: 0,
            },
            Refusal::NotVoter,
        ),
        (
            id(9),
            Msg::Accepted {
                ballot: ballot.clone(),
                first_slot: 1,
                last_slot: 3,
            },
            Refusal::NotVoter,
        ),
        (
            id(9),
            Msg::Reject {
                promised: Ballot::new(80, id(3)),
                commit: 0,
            },
            Refusal::NotVoter,
        ),
        (
            id(9),
            Msg::PreVote {
                round: 80,
                commit: 100,
            },
            Refusal::NotVoter,
        ),
        (
            id(9),
            Msg::PreVoteReply {
                round: 80,
                granted: true,
                commit: 100,
            },
            Refusal::NotVoter,
        ),
        (id(9), Msg::Forward { values: vec![] }, Refusal::Stranger),
        // Rounds that leave no room above them, ballots without owner.
        (
            id(1),
            Msg::Commit {
                ballot: Ballot::new(u64::MAX, id(1)),
                commit,
            },
            Refusal::BadBallot,
        ),
        (
            id(3),
            Msg::Reject {
                promised: Ballot::new(MAX_ROUND + 1, id(3)),
                commit: 0,
            },
            Refusal::BadBallot,
        ),
        (
            id(3),
            Msg::Reject {
                promised: Ballot::ZERO,
                commit: 0,
            },
            Refusal::BadBallot,
        ),
        (
            id(3),
            Msg::PreVote {
                round: u64::MAX,
                commit: 0,
            },
            Refusal::BadBallot,
        ),
        // Slots out of range, batches that would overflow.
        (
            id(1),
            Msg::Accept {
                ballot: ballot.clone(),
                first_slot: i64::MAX - 1,
                values: vec![Val::Put(1), Val::Put(2), Val::Put(3)],
                commit: 0,
            },
            Refusal::BadSlot,
        ),
        (
            id(1),
            Msg::Accept {
                ballot: ballot.clone(),
                first_slot: 0,
                values: vec![Val::Put(1)],
                commit: 0,
            },
            Refusal::BadSlot,
        ),
        (
            id(1),
            Msg::Commit {
                ballot: ballot.clone(),
                commit: i64::MAX,
            },
            Refusal::BadSlot,
        ),
        (
            id(1),
            Msg::Commit {
                ballot: ballot.clone(),
                commit: -1,
            },
            Refusal::BadSlot,
        ),
        (
            id(3),
            Msg::Promise {
                ballot: ballot.clone(),
                from_slot: 1,
                accepted: vec![(i64::MIN, ballot.clone(), Val::Nop)],
                commit: 0,
            },
            Refusal::BadSlot,
        ),
    ];
    for (from, msg, want) in cases {
        let mut out = Vec::new();
        let got = node.handle(from.clone(), msg.clone(), false, &mut out);
        assert_eq!(got, Err(want), "{msg:?} from {from}");
        assert!(out.is_empty(), "a refused message is not answered");
    }
    assert_eq!(node.promised, promised, "no ballot was raised");
    assert_eq!(node.commit(), commit);
    assert_eq!(node.leader(), Some(&id(1)));
    // What the caller vouches for is heard: a registered node that leads
    // from outside this node's window, and a promise reporting a chosen
    // value with the internal chosen ballot.
    let mut out = Vec::new();
    let vouched = node.handle(
        id(9),
        Msg::Commit {
            ballot: Ballot::new(2, id(9)),
            commit,
        },
        true,
        &mut out,
    );
    assert_eq!(vouched, Ok(()));
    let chosen = node.admit(
        &id(3),
        &Msg::Promise {
            ballot: ballot.clone(),
            from_slot: 1,
            accepted: vec![(1, chosen_ballot(), Val::Nop)],
            commit: 0,
        },
        false,
    );
    assert_eq!(chosen, Ok(()));
}

#[test]
fn the_cluster_works_on_after_refusals() {
    let mut net = led_net();
    for (i, from) in [(1, id(9)), (2, id(9))] {
        let mut out = Vec::new();
        let forged = Msg::Accept {
            ballot: Ballot::new(u64::MAX, from.clone()),
            first_slot: 4,
            values: vec![Val::Put(666)],
            commit: 4,
        };
        assert!(net.nodes[i].handle(from, forged, false, &mut out).is_err());
    }
    net.propose(0, Val::Put(10));
    net.tick_all(Settings::default().heartbeat_ticks as usize);
    assert_eq!(net.decided[0].len(), 4);
    assert_eq!(net.decided[1], net.decided[0]);
    assert_eq!(net.decided[2], net.decided[0]);
    // An election after the leader dies still finds room for a higher
    // ballot.
    net.down.insert(id(1));
    net.tick_all(200);
    assert!(net.leader().is_some_and(|l| l != 0));
}

#[test]
fn a_learned_value_that_contradicts_a_chosen_one_is_refused() {
    let mut net = led_net();
    let node = &mut net.nodes[1];
    let next = node.next_to_deliver();
    assert_eq!(node.learn(next + 2, Val::Put(1)), Ok(()));
    assert_eq!(node.learn(next + 2, Val::Put(1)), Ok(()), "the same again");
    assert_eq!(node.learn(next + 2, Val::Put(2)), Err(Refusal::Conflict));
    assert_eq!(node.chosen_value(next + 2), Some(&Val::Put(1)));
    assert_eq!(node.learn(i64::MAX, Val::Put(2)), Err(Refusal::BadSlot));
}

#[test]
#[should_panic(expected = "was chosen as")]
fn a_chosen_value_never_changes() {
    let mut net = led_net();
    let node = &mut net.nodes[1];
    let slot = node.next_to_deliver() + 5;
    node.learn(slot, Val::Put(1)).unwrap();
    // This node's own bookkeeping now finds another value chosen there.
    let ballot = Ballot::new(1, id(1));
    node.accepted.insert(slot, (ballot.clone(), Val::Put(2)));
    node.learn_commit(&id(1), &ballot, slot);
}

#[test]
#[should_panic(expected = "which it does not own")]
fn a_node_never_sends_under_another_nodes_ballot() {
    let net = led_net();
    let forged = Msg::Commit {
        ballot: Ballot::new(1, id(1)),
        commit: 1,
    };
    net.nodes[1].assert_own_ballots(&[(id(3), forged)]);
}

/// Read index: a probe counts only once a quorum confirmed it; a lie about
/// an unsent probe is ignored; a deposed leader's tickets are void, and the
/// election floor covers a value chosen under an earlier ballot that the
/// new leader has not yet learned is chosen.
#[test]
fn read_probes_need_a_quorum_and_die_with_the_term() {
    let mut net = Net::new(5);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    net.propose(0, Val::Put(1));
    let ticket = net.nodes[0]
        .read_index()
        .expect("the leader hands out tickets");
    assert_eq!((ticket.probe, ticket.index), (1, 1));
    assert_eq!(net.nodes[0].confirmed_probe(&ticket.ballot), Some(0));
    // A voter claiming a probe never sent changes nothing.
    let mut ignored = Vec::new();
    let lie = Msg::Confirmed {
        ballot: ticket.ballot.clone(),
        probe: 7,
    };
    net.nodes[0]
        .handle(id(2), lie, false, &mut ignored)
        .unwrap();
    assert_eq!(net.nodes[0].confirmed_probe(&ticket.ballot), Some(0));
    // Two of five cut off: the other two and the leader confirm.
    net.cut.insert(id(4));
    net.cut.insert(id(5));
    let mut out = Vec::new();
    net.nodes[0].flush(&mut out);
    let probes = out
        .iter()
        .filter(|(_, m)| matches!(m, Msg::Confirm { probe: 1, .. }))
        .count();
    assert_eq!(probes, 4, "one probe to each other voter");
    // Only one follower answers: no quorum yet.
    let (to_two, rest): (Vec<_>, Vec<_>) = out.into_iter().partition(|(to, _)| *to == id(2));
    net.sent(0, to_two);
    net.settle();
    assert_eq!(net.nodes[0].confirmed_probe(&ticket.ballot), Some(0));
    net.sent(0, rest);
    net.settle();
    assert_eq!(net.nodes[0].confirmed_probe(&ticket.ballot), Some(1));
    // A voter of a 5-member cluster cannot confirm alone; in 3 it could.
    assert_eq!(
        net.nodes[0].read_index_confirmed_by(&id(2), &ticket.ballot),
        None
    );
    // Deposed: another node wins an election; the old ballot is void.
    net.cut.clear();
    net.cut.insert(id(1));
    net.tick_all(300);
    let leader = net.leader().filter(|l| *l != 0).expect("a new leader");
    assert_eq!(net.nodes[leader].confirmed_probe(&ticket.ballot), None);
    net.cut.clear();
    net.tick_all(50);
    assert_eq!(net.nodes[0].confirmed_probe(&ticket.ballot), None);
}

#[test]
fn the_election_floor_covers_values_chosen_under_an_earlier_ballot() {
    let mut net = Net::new(3);
    let mut out = Vec::new();
    net.nodes[0].start_election(&mut out);
    net.sent(0, out);
    net.settle();
    // Slot 1 is accepted by nodes 1 and 2 (chosen), but only node 1 learns
    // it: the commit point never reaches node 2 before node 1 dies.
    net.nodes[0].propose(Val::Put(7)).unwrap();
    let mut out = Vec::new();
    net.nodes[0].flush(&mut out);
    for (to, msg) in out {
        if to == id(2) {
            let mut answers = Vec::new();
            net.nodes[1]
                .handle(id(1), msg, false, &mut answers)
                .unwrap();
            for (_, answer) in answers {
                let mut ignored = Vec::new();
                net.nodes[0]
                    .handle(id(2), answer, false, &mut ignored)
                    .unwrap();
            }
        }
    }
    assert_eq!(net.nodes[0].commit(), 1, "chosen, known by node 1 only");
    assert!(net.nodes[1].commit() < 1);
    net.down.insert(id(1));
    // Node 2 or 3 takes over; right after its election, before it commits
    // anything, its read index already covers slot 1.
    for _ in 0..300 {
        if net.leader().is_some_and(|l| l != 0) {
            break;
        }
        for i in 1..3 {
            let mut out = Vec::new();
            net.nodes[i].tick(&mut out);
            // Hold back phase 2 so nothing commits under the new ballot.
            out.retain(|(_, m)| !matches!(m, Msg::Accept { .. } | Msg::Accepted { .. }));
            net.sent(i, out);
        }
        net.queue
            .retain(|(_, _, m)| !matches!(m, Msg::Accept { .. } | Msg::Accepted { .. }));
        net.settle();
    }
    let leader = net.leader().filter(|l| *l != 0).expect("a new leader");
    let ticket = net.nodes[leader].read_index().unwrap();
    assert!(ticket.index >= 1, "{ticket:?}");
}

#[test]
fn nothing_is_due_before_ticks_until_due_and_an_idle_cluster_stays_led() {
    let mut net = led_net();
    let mut longest_step = 0;
    for _ in 0..300 {
        let step = net.nodes.iter().map(|n| n.ticks_until_due()).min().unwrap();
        longest_step = longest_step.max(step);
        for i in 0..3 {
            let mut out = Vec::new();
            // One tick short of the due time: nothing to send yet.
            net.nodes[i].tick_by(step - 1, &mut out);
            assert!(out.is_empty(), "node {i} sent {out:?} before its due time");
            net.nodes[i].tick_by(1, &mut out);
            net.sent(i, out);
        }
        net.settle();
        assert_eq!(net.leader(), Some(0), "the idle cluster keeps its leader");
    }
    let heartbeat = Settings::default().idle_heartbeat_ticks;
    assert_eq!(
        longest_step, heartbeat,
        "idle, a node sleeps an idle heartbeat period"
    );
    // A follower left alone is due when its election timer runs out.
    let mut lone = Net::new(3);
    let due = lone.nodes[1].ticks_until_due();
    let mut out = Vec::new();
    lone.nodes[1].tick_by(due - 1, &mut out);
    assert!(out.is_empty());
    lone.nodes[1].tick_by(1, &mut out);
    assert!(!out.is_empty(), "the follower asks for votes when due");
    // Work queued: due at once.
    let mut net = led_net();
    net.nodes[0].propose(Val::Put(99)).unwrap();
    assert_eq!(net.nodes[0].ticks_until_due(), 1);
}

/// What crosses the network per heartbeat period, idle and busy: an idle
/// leader heartbeats every `idle_heartbeat_ticks` (each heartbeat acked,
/// as the leader must hear a quorum every `election_ticks.1`), a leader
/// with a write in flight every `heartbeat_ticks`; and a follower that
/// acknowledged an Accept does not acknowledge the commit point that
/// follows it (one message less per write).
#[test]
fn idle_heartbeats_are_sparse_and_a_commit_after_an_accept_is_not_acked() {
    let settings = Settings::default();
    assert!(settings.idle_heartbeat_ticks > settings.heartbeat_ticks);
    assert!(settings.idle_heartbeat_ticks < settings.election_ticks.0);
    let mut net = led_net();
    // Count messages by kind over ticks, delivering everything.
    let run = |net: &mut Net, ticks: u32| {
        let (mut commits, mut acks) = (0, 0);
        for _ in 0..ticks {
            for i in 0..3 {
                let mut out = Vec::new();
                net.nodes[i].tick(&mut out);
                for (_, msg) in &out {
                    match msg {
                        Msg::Commit { .. } => commits += 1,
                        Msg::Accepted { .. } => acks += 1,
                        _ => {}
                    }
                }
                net.sent(i, out);
            }
            // Acks are sent while handling, not ticking: count them there.
            while let Some((from, to, msg)) = net.queue.pop_front() {
                let i = net.idx(&to);
                let mut out = Vec::new();
                net.nodes[i].handle(from, msg, false, &mut out).unwrap();
                net.nodes[i].flush(&mut out);
                acks += out
                    .iter()
                    .filter(|(_, m)| matches!(m, Msg::Accepted { .. }))
                    .count();
                net.sent(i, out);
            }
        }
        (commits, acks)
    };
    run(&mut net, 100);
    let idle = settings.idle_heartbeat_ticks;
    let (commits, acks) = run(&mut net, 10 * idle);
    assert_eq!(
        commits,
        2 * 10,
        "idle: one heartbeat per follower per period"
    );
    assert_eq!(acks, commits, "idle: every heartbeat acked");
    assert_eq!(net.leader(), Some(0));
    // One write: an Accept and its acks, then the commit point, not acked.
    net.nodes[0].propose(Val::Put(7)).unwrap();
    let mut out = Vec::new();
    net.nodes[0].flush(&mut out);
    net.sent(0, out);
    let mut kinds = Vec::new();
    while let Some((from, to, msg)) = net.queue.pop_front() {
        kinds.push(match &msg {
            Msg::Accept { .. } => "accept",
            Msg::Accepted { .. } => "accepted",
            Msg::Commit { .. } => "commit",
            _ => "other",
        });
        let i = net.idx(&to);
        let mut out = Vec::new();
        net.nodes[i].handle(from, msg, false, &mut out).unwrap();
        net.nodes[i].flush(&mut out);
        net.sent(i, out);
    }
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["accept", "accept", "accepted", "accepted", "commit", "commit"]
    );
    net.collect();
    assert!(net
        .decided
        .iter()
        .all(|d| d.last() == Some(&(d.len() as Slot, Val::Put(7)))));
    // A write left in flight (its acks lost): heartbeats every
    // `heartbeat_ticks` until it is chosen.
    net.nodes[0].propose(Val::Put(8)).unwrap();
    let mut out = Vec::new();
    net.nodes[0].flush(&mut out);
    assert!(out.iter().all(|(_, m)| matches!(m, Msg::Accept { .. })));
    let heartbeat = settings.heartbeat_ticks;
    let mut sent = Vec::new();
    for _ in 0..heartbeat {
        net.nodes[0].tick(&mut sent);
    }
    assert_eq!(
        sent.iter()
            .filter(|(_, m)| matches!(m, Msg::Commit { .. }))
            .count(),
        2,
        "busy: a heartbeat per follower after {heartbeat} ticks"
    );
}
