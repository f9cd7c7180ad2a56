//! Which members vote on which slot.
//!
//! The voters of slot `n` are fixed by the decided log itself (the `/ctl/cal`
//! files as of rev `n − alpha`), so every node derives the same set for the
//! same slot without any extra agreement. This type only records the result:
//! a map from the first slot a set governs to the set.

use std::collections::{BTreeMap, BTreeSet};

use super::Slot;
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// First slot governed → voters from that slot on. Never empty.
    changes: BTreeMap<Slot, BTreeSet<NodeId>>,
}

/// A majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Whether `nodes` hold a majority of `voters`.
pub fn is_quorum(nodes: &BTreeSet<NodeId>, voters: &BTreeSet<NodeId>) -> bool {
    !voters.is_empty() && voters.intersection(nodes).count() >= quorum(voters.len())
}

impl Membership {
    /// `initial` votes on every slot until a change says otherwise.
    pub fn new(initial: BTreeSet<NodeId>) -> Membership {
        Membership {
            changes: BTreeMap::from([(Slot::MIN, initial)]),
        }
    }

    pub fn from_entries(entries: Vec<(Slot, Vec<NodeId>)>) -> Option<Membership> {
        let changes: BTreeMap<Slot, BTreeSet<NodeId>> = entries
            .into_iter()
            .filter(|(_, voters)| !voters.is_empty())
            .map(|(slot, voters)| (slot, voters.into_iter().collect()))
            .collect();
        let first = *changes.keys().next()?;
        let mut changes = changes;
        // Whatever came first governs everything before it too.
        if first != Slot::MIN {
            let set = changes.remove(&first)?;
            changes.insert(Slot::MIN, set);
        }
        Some(Membership { changes })
    }

    pub fn entries(&self) -> Vec<(Slot, Vec<NodeId>)> {
        self.changes
            .iter()
            .map(|(slot, voters)| (*slot, voters.iter().cloned().collect()))
            .collect()
    }

    /// The voters of `slot`.
    pub fn voters(&self, slot: Slot) -> &BTreeSet<NodeId> {
        self.changes
            .range(..=slot)
            .next_back()
            .map(|(_, v)| v)
            .expect("the first entry governs from Slot::MIN")
    }

    /// From `slot` on, `voters` vote (an empty set changes nothing, as in the
    /// original). Returns whether this was a change.
    ///
    /// Invariant: changes arrive in slot order (they are read from the log,
    /// applied in order), so a change recorded for a later slot than `slot`
    /// means this node's own bookkeeping went wrong: it stops the node.
    pub fn change_from(&mut self, slot: Slot, voters: BTreeSet<NodeId>) -> bool {
        let later = slot
            .checked_add(1)
            .and_then(|next| self.changes.range(next..).next());
        assert!(
            later.is_none(),
            "membership changes arrive in slot order: a change from slot {} is known, and now one from slot {slot}",
            later.map_or(0, |(s, _)| *s)
        );
        if voters.is_empty() || *self.voters(slot) == voters {
            return false;
        }
        self.changes.insert(slot, voters);
        true
    }

    /// Every distinct voter set of the slots `from..=to`.
    pub fn sets_between(&self, from: Slot, to: Slot) -> Vec<&BTreeSet<NodeId>> {
        let mut sets = vec![self.voters(from)];
        if to > from {
            sets.extend(self.changes.range(from + 1..=to).map(|(_, v)| v));
        }
        sets
    }

    /// Everyone who votes on some slot of `from..=to`.
    pub fn union_between(&self, from: Slot, to: Slot) -> BTreeSet<NodeId> {
        self.sets_between(from, to)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether `nodes` hold a majority of every voter set of `from..=to`.
    pub fn quorum_of_all(&self, nodes: &BTreeSet<NodeId>, from: Slot, to: Slot) -> bool {
        self.sets_between(from, to)
            .into_iter()
            .all(|voters| is_quorum(nodes, voters))
    }

    /// Forgets changes that govern only slots below `slot`.
    pub fn prune_below(&mut self, slot: Slot) {
        let governing = *self
            .changes
            .range(..=slot)
            .next_back()
            .expect("the first entry governs from Slot::MIN")
            .0;
        let mut rest = self.changes.split_off(&governing);
        let set = rest.remove(&governing).expect("split at an existing key");
        rest.insert(Slot::MIN, set);
        self.changes = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 10])
    }

    fn set(ids: &[u8]) -> BTreeSet<NodeId> {
        ids.iter().map(|n| id(*n)).collect()
    }

    #[test]
    fn voters_per_slot_and_quorums() {
        let mut m = Membership::new(set(&[1]));
        assert_eq!(*m.voters(5), set(&[1]));
        assert!(m.change_from(10, set(&[1, 2, 3])));
        assert!(!m.change_from(12, set(&[1, 2, 3])), "same set is no change");
        assert!(
            !m.change_from(13, BTreeSet::new()),
            "an empty set changes nothing"
        );
        assert_eq!(*m.voters(9), set(&[1]));
        assert_eq!(*m.voters(10), set(&[1, 2, 3]));
        assert_eq!(m.sets_between(5, 20).len(), 2);
        assert_eq!(m.union_between(5, 20), set(&[1, 2, 3]));
        assert!(m.quorum_of_all(&set(&[1, 2]), 5, 20));
        assert!(
            !m.quorum_of_all(&set(&[2, 3]), 5, 20),
            "slot 5 needs node 1"
        );
        assert!(m.quorum_of_all(&set(&[2, 3]), 10, 20));
        assert_eq!([1, 2, 3, 4, 5, 7].map(quorum), [1, 2, 2, 3, 3, 4]);

        m.prune_below(15);
        assert_eq!(*m.voters(15), set(&[1, 2, 3]));
        assert_eq!(*m.voters(0), set(&[1, 2, 3]));
        let back = Membership::from_entries(m.entries()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    #[should_panic(expected = "membership changes arrive in slot order")]
    fn a_change_out_of_slot_order_stops_the_node() {
        let mut m = Membership::new(set(&[1]));
        m.change_from(10, set(&[1, 2, 3]));
        m.change_from(5, set(&[1, 2]));
    }

    #[test]
    fn pruning_keeps_the_voters_of_every_later_slot() {
        let mut m = Membership::new(set(&[1]));
        m.change_from(10, set(&[1, 2]));
        m.change_from(20, set(&[1, 2, 3]));
        m.prune_below(12);
        assert_eq!(m.entries().len(), 2);
        assert_eq!(*m.voters(12), set(&[1, 2]));
        assert_eq!(*m.voters(25), set(&[1, 2, 3]));
        m.prune_below(20);
        assert_eq!(m.entries(), vec![(Slot::MIN, vec![id(1), id(2), id(3)])]);
    }
}
