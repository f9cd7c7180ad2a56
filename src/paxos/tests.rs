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
