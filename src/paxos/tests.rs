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
}

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

fn cluster(n: u8) -> Vec<Paxos<Val>> {
    let voters: BTreeSet<NodeId> = (1..=n).map(id).collect();
    (1..=n)
        .map(|i| Paxos::new(id(i), voters.clone(), 1, Settings::default(), u64::from(i)))
        .collect()
}

/// Delivers every message until the network is quiet.
fn settle(nodes: &mut [Paxos<Val>], mut inflight: Vec<(NodeId, NodeId, Msg<Val>)>) {
    for _ in 0..10_000 {
        let Some((from, to, msg)) = inflight.pop() else {
            return;
        };
        let node = nodes.iter_mut().find(|n| *n.me() == to).unwrap();
        let mut out = Vec::new();
        node.handle(from, msg, &mut out);
        let sender = node.me().clone();
        inflight.extend(out.into_iter().map(|(to, m)| (sender.clone(), to, m)));
    }
    panic!("network never went quiet");
}

fn sent_by(node: &Paxos<Val>, out: Vec<(NodeId, Msg<Val>)>) -> Vec<(NodeId, NodeId, Msg<Val>)> {
    out.into_iter()
        .map(|(to, m)| (node.me().clone(), to, m))
        .collect()
}

#[test]
fn lone_member_is_a_quorum_of_one() {
    let mut nodes = cluster(1);
    let mut out = Vec::new();
    nodes[0].campaign(&mut out);
    assert!(out.is_empty(), "a lone member talks only to itself");
    assert!(nodes[0].is_leader());
    for i in 0..5 {
        nodes[0].propose(Val::Put(i)).unwrap();
    }
    nodes[0].flush(&mut out);
    assert!(out.is_empty());
    let decided: Vec<_> = std::iter::from_fn(|| nodes[0].take_decided()).collect();
    assert_eq!(
        decided,
        (0..5)
            .map(|i| (i64::from(i) + 1, Val::Put(i)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn three_members_agree_and_followers_learn_from_commit() {
    let mut nodes = cluster(3);
    let mut out = Vec::new();
    nodes[0].campaign(&mut out);
    let msgs = sent_by(&nodes[0], std::mem::take(&mut out));
    settle(&mut nodes, msgs);
    assert!(nodes[0].is_leader());
    assert_eq!(nodes[1].leader(), Some(&id(1)));

    for i in 0..10 {
        nodes[0].propose(Val::Put(i)).unwrap();
    }
    nodes[0].flush(&mut out);
    let msgs = sent_by(&nodes[0], std::mem::take(&mut out));
    settle(&mut nodes, msgs);
    let leader_decided: Vec<_> = std::iter::from_fn(|| nodes[0].take_decided()).collect();
    assert_eq!(leader_decided.len(), 10);

    // Followers learn the commit point from the next heartbeat.
    for _ in 0..Settings::default().heartbeat_ticks {
        nodes[0].tick(&mut out);
    }
    let msgs = sent_by(&nodes[0], std::mem::take(&mut out));
    settle(&mut nodes, msgs);
    for node in &mut nodes[1..] {
        let decided: Vec<_> = std::iter::from_fn(|| node.take_decided()).collect();
        assert_eq!(decided, leader_decided);
    }
}

#[test]
fn new_leader_reproposes_accepted_values_and_fills_holes() {
    let mut nodes = cluster(3);
    let mut out = Vec::new();
    nodes[0].campaign(&mut out);
    let msgs = sent_by(&nodes[0], std::mem::take(&mut out));
    settle(&mut nodes, msgs);

    // Slot 1 reaches only node 2; slot 2 reaches nobody else; the leader dies.
    nodes[0].propose(Val::Put(7)).unwrap();
    nodes[0].flush(&mut out);
    let to_node2: Vec<_> = sent_by(&nodes[0], std::mem::take(&mut out))
        .into_iter()
        .filter(|(_, to, _)| *to == id(2))
        .collect();
    let mut acks = Vec::new();
    for (from, _, msg) in to_node2 {
        nodes[1].handle(from, msg, &mut acks);
    }
    nodes[0].propose(Val::Put(8)).unwrap();
    nodes[0].flush(&mut out);
    out.clear();

    // Node 3 times out and campaigns; node 2 promises its accepted slot 1.
    let mut survivors: Vec<Paxos<Val>> = nodes.drain(1..).collect();
    for _ in 0..200 {
        survivors[1].tick(&mut out);
        if !out.is_empty() {
            break;
        }
    }
    let msgs: Vec<_> = sent_by(&survivors[1], std::mem::take(&mut out))
        .into_iter()
        .filter(|(_, to, _)| *to != id(1))
        .collect();
    settle_among(&mut survivors, msgs);
    assert!(survivors[1].is_leader());
    survivors[1].flush(&mut out);
    let msgs: Vec<_> = sent_by(&survivors[1], std::mem::take(&mut out))
        .into_iter()
        .filter(|(_, to, _)| *to != id(1))
        .collect();
    settle_among(&mut survivors, msgs);
    let decided: Vec<_> = std::iter::from_fn(|| survivors[1].take_decided()).collect();
    assert_eq!(decided, vec![(1, Val::Put(7))]);
}

fn settle_among(nodes: &mut [Paxos<Val>], inflight: Vec<(NodeId, NodeId, Msg<Val>)>) {
    let alive: Vec<NodeId> = nodes.iter().map(|n| n.me().clone()).collect();
    let mut queue: Vec<_> = inflight
        .into_iter()
        .filter(|(_, to, _)| alive.contains(to))
        .collect();
    for _ in 0..10_000 {
        let Some((from, to, msg)) = queue.pop() else {
            return;
        };
        let node = nodes.iter_mut().find(|n| *n.me() == to).unwrap();
        let mut out = Vec::new();
        node.handle(from, msg, &mut out);
        let sender = node.me().clone();
        queue.extend(
            out.into_iter()
                .filter(|(to, _)| alive.contains(to))
                .map(|(to, m)| (sender.clone(), to, m)),
        );
    }
    panic!("network never went quiet");
}
