//! The engine's per-slot values (accepted, chosen), kept the way they are
//! used: nearly every slot touched lies just past the next one to deliver,
//! is inserted once, looked up a few times and removed in slot order. A
//! `BTreeMap` paid a tree search and node shuffling for each of those
//! steps, about a fifth of the engine's instructions per write; here a slot
//! within [`RING_SLOTS`] of the base is an index into a ring, and only the
//! rare slot outside it (a lagging follower told of slots far ahead, or a
//! value restored below the base) goes into a map.
//!
//! The base follows the caller's next slot to deliver ([`SlotMap::set_base`]);
//! values below a new base are dropped, as the caller has delivered them.

use std::collections::{BTreeMap, VecDeque};

use super::Slot;

/// Slots from the base that live in the ring (the rest in the map). Well
/// above the leader's window (`-alpha`, 64 by default), so that in steady
/// state the map stays empty; the ring only grows as far as slots are used.
pub const RING_SLOTS: usize = 1024;

pub struct SlotMap<T> {
    /// The slot of `ring[0]`.
    base: Slot,
    /// `ring[i]` holds slot `base + i`; never ends with `None`.
    ring: VecDeque<Option<T>>,
    /// Slots below the base or at `base + RING_SLOTS` and beyond.
    far: BTreeMap<Slot, T>,
}

impl<T> SlotMap<T> {
    /// An empty map whose ring starts at `base`.
    pub fn new(base: Slot) -> SlotMap<T> {
        SlotMap {
            base,
            ring: VecDeque::new(),
            far: BTreeMap::new(),
        }
    }

    /// The ring index of `slot`, if it falls in the ring's span.
    fn index(&self, slot: Slot) -> Option<usize> {
        let offset = slot.checked_sub(self.base)?;
        let offset = usize::try_from(offset).ok()?;
        (offset < RING_SLOTS).then_some(offset)
    }

    /// Stores `value` at `slot`, returning what was there.
    pub fn insert(&mut self, slot: Slot, value: T) -> Option<T> {
        match self.index(slot) {
            Some(i) => {
                if i >= self.ring.len() {
                    self.ring.resize_with(i + 1, || None);
                }
                self.ring[i].replace(value)
            }
            None => self.far.insert(slot, value),
        }
    }

    /// Takes the value at `slot` out.
    pub fn remove(&mut self, slot: Slot) -> Option<T> {
        match self.index(slot) {
            Some(i) => {
                let value = self.ring.get_mut(i)?.take();
                while matches!(self.ring.back(), Some(None)) {
                    self.ring.pop_back();
                }
                value
            }
            None => self.far.remove(&slot),
        }
    }

    pub fn get(&self, slot: Slot) -> Option<&T> {
        match self.index(slot) {
            Some(i) => self.ring.get(i)?.as_ref(),
            None => self.far.get(&slot),
        }
    }

    pub fn contains_key(&self, slot: Slot) -> bool {
        self.get(slot).is_some()
    }

    /// Every value from `from` on, in slot order.
    pub fn range_from(&self, from: Slot) -> impl Iterator<Item = (Slot, &T)> {
        let base = self.base;
        let ring_end = base.saturating_add(RING_SLOTS as Slot);
        let below = self.far.range(from..base.max(from));
        // Slots are signed: a `from` below the base skips nothing.
        let skip = usize::try_from(from.saturating_sub(base).max(0)).unwrap_or(usize::MAX);
        let ring = self
            .ring
            .iter()
            .enumerate()
            .skip(skip)
            .filter_map(move |(i, value)| Some((base + i as Slot, value.as_ref()?)));
        let above = self.far.range(ring_end.max(from)..);
        below
            .map(|(slot, value)| (*slot, value))
            .chain(ring)
            .chain(above.map(|(slot, value)| (*slot, value)))
    }

    /// Every value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &T)> {
        self.range_from(Slot::MIN)
    }

    /// Moves the base to `base` (the caller's next slot to deliver) and
    /// drops every value below it.
    pub fn set_base(&mut self, base: Slot) {
        if self
            .far
            .first_key_value()
            .is_some_and(|(slot, _)| *slot < base)
        {
            self.far = self.far.split_off(&base);
        }
        if base <= self.base {
            // Only the map holds slots below the ring; the ring stays put.
            return;
        }
        let advance = usize::try_from(base - self.base).unwrap_or(usize::MAX);
        if advance >= self.ring.len() {
            self.ring.clear();
        } else {
            self.ring.drain(..advance);
        }
        self.base = base;
        // Slots of the map that the ring's span now covers move into it.
        let ring_end = base.saturating_add(RING_SLOTS as Slot);
        while let Some(entry) = self.far.first_entry() {
            if *entry.key() >= ring_end {
                break;
            }
            let (slot, value) = entry.remove_entry();
            self.insert(slot, value);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for SlotMap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map and a `BTreeMap` given the same operations (slots near and
    /// far from the base, below it, base moves both ways) agree on every
    /// read after every step.
    #[test]
    fn agrees_with_a_btreemap() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut map = SlotMap::new(100);
        let mut model: BTreeMap<Slot, u32> = BTreeMap::new();
        let mut base: Slot = 100;
        for step in 0..200_000u32 {
            let slot = match rng.random_range(0..10) {
                0 => base + rng.random_range(0..4 * RING_SLOTS as Slot),
                1 => base.saturating_sub(rng.random_range(0..50)),
                _ => base + rng.random_range(0..80),
            };
            match rng.random_range(0..10) {
                0..=3 => assert_eq!(map.insert(slot, step), model.insert(slot, step)),
                4..=6 => assert_eq!(map.remove(slot), model.remove(&slot)),
                7 => {
                    base = match rng.random_range(0..20) {
                        0 => base.saturating_sub(rng.random_range(0..30)),
                        1 => base + rng.random_range(0..3 * RING_SLOTS as Slot),
                        _ => base + rng.random_range(0..5),
                    };
                    map.set_base(base);
                    model = model.split_off(&base);
                }
                _ => {
                    let from = base.saturating_sub(10) + rng.random_range(0..100);
                    let got: Vec<(Slot, u32)> =
                        map.range_from(from).map(|(s, v)| (s, *v)).collect();
                    let want: Vec<(Slot, u32)> =
                        model.range(from..).map(|(s, v)| (*s, *v)).collect();
                    assert_eq!(
                        got,
                        want,
                        "step {step} base {base} map base {} ring {} far {:?} from {from}",
                        map.base,
                        map.ring.len(),
                        map.far.keys().collect::<Vec<_>>()
                    );
                }
            }
            assert_eq!(map.get(slot), model.get(&slot));
            assert_eq!(map.contains_key(slot), model.contains_key(&slot));
            assert!(!matches!(map.ring.back(), Some(None)));
            assert!(map.ring.len() <= RING_SLOTS);
        }
        let all: Vec<(Slot, u32)> = map.iter().map(|(s, v)| (s, *v)).collect();
        assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    }

    /// In steady state (insert ahead, remove at the base, base + 1) the map
    /// never spills into the far map and the ring stays short.
    #[test]
    fn steady_state_stays_in_the_ring() {
        let mut map = SlotMap::new(1);
        for slot in 1..64 {
            map.insert(slot, slot);
        }
        for slot in 1..100_000 {
            map.insert(slot + 63, slot + 63);
            assert_eq!(map.remove(slot), Some(slot));
            map.set_base(slot + 1);
            assert!(map.far.is_empty());
            assert!(map.ring.len() <= 64);
        }
    }
}
