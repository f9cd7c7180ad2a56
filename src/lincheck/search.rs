//! The per-key search (Wing & Gong, Lowe; Porcupine's shape): find an order
//! of one key's operations, consistent with real time, in which every op
//! does what the sequential model says, from a set of start states to the
//! set of every state the key can be in once all of them are placed.
//!
//! # The model
//!
//! The state of a key is what it holds (absent, a known write's body, or an
//! invisible body: a write of unknown outcome nobody ever saw) and the rev
//! of the last write to it, as an interval `[lo, hi]` because the revs of
//! DELs and unseen writes are not known, only bounded (by the global revs
//! acknowledged before they began and first invoked after they ended). The
//! file rev the rev checks compare with is that rev when present, 0 when
//! absent. A write's rev must be above the last one's: revs order all
//! writes. A check that passes narrows `hi` to the check, one that fails
//! narrows `lo` above it; a GET of rev `r` pins it. So an acknowledged SET
//! (exact rev) can only come after the writes below its rev, and a GET only
//! while the write it names is the last one.
//!
//! # Why it is correct
//!
//! Depth-first over (set of placed ops, state), every op whose invocation is
//! not after the completion of an unplaced op (the real-time order: A before
//! B when A completed before B was invoked) tried next. An op of unknown
//! outcome is *optional*: it may be placed any time after its invocation, or
//! never, so it never blocks another and is not required at the end. Every
//! state reached with every required op placed is an end state; none means
//! no linearization exists (given the start states).
//!
//! Ops of unknown outcome from earlier chunks may still land later (a
//! proposal delayed by a pause): the caller passes how many such SETs and
//! DELs float; each may be placed at most once per chunk, with no check and
//! an unbounded rev. That over-approximates (one may be used in two chunks),
//! so it can hide an anomaly needing that, never invent one. A chunk with
//! more than [`MAX_EXACT_OPTIONAL`] optional ops of its own pools them the
//! same way (counts, not mask bits), so a burst of time-outs costs a
//! constant factor instead of doubling the search per op.
//!
//! # Why it is bounded
//!
//! Each (placed set, state) is explored at most once (memoised): the
//! placed sets are bit masks over the chunk's ops, and each entry's bytes
//! (mask + state + table overhead) count against a budget
//! ([`SEARCH_BUDGET_BYTES`] per key); the number of end states is capped
//! ([`MAX_END_STATES`]). Running out gives "inconclusive", never a pass. The
//! search is a loop with an explicit stack whose depth is at most the
//! chunk's op count plus the floating ops.

use std::collections::HashSet;

use super::Time;

/// The memo's budget for one key, in bytes, summed over all its chunks:
/// each explored (mask, state) counts its mask's bytes plus
/// [`ENTRY_OVERHEAD_BYTES`]. Exceeding it ends that key's search with
/// [`super::Anomaly::Inconclusive`] (the key's later chunks are not
/// searched). The memo is freed after each chunk, so memory stays below
/// the largest chunk's share; the sum bounds the time. 256 MiB is about
/// 2.5 M states of a small chunk: generated 50k-op histories (8 clients,
/// 5 keys, up to 1 write in 5 of unknown outcome, 2% of ops 20-100x
/// longer) need 0.2-0.8 M per key.
pub const SEARCH_BUDGET_BYTES: u64 = 256 << 20;

/// What one memo entry costs beyond its mask: the state, the hash table's
/// slot and the box header, rounded up.
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// The most distinct states a chunk may end in. Beyond that the chunk is
/// inconclusive. With exact revs for every acknowledged SET, a real chunk
/// ends in a handful (which of concurrent DELs and SETs came last).
pub const MAX_END_STATES: usize = 4096;

/// The most floating ops of each kind (SET, DEL) offered to a chunk: two in
/// a row act as one, so a few suffice between any two ops of the chunk.
pub const MAX_FLOATING: u8 = 2;

/// The most optional ops (unknown outcome) a chunk tracks one by one; each
/// doubles the placed sets the search may meet. Beyond it they are pooled:
/// each kind (SET, DEL) becomes a count of anonymous writes usable once
/// their invocation is reached, with no check and an unbounded rev, like
/// the floating ones (more permissive: it can hide an anomaly that needs an
/// unknown write's check or identity, never invent one).
pub const MAX_EXACT_OPTIONAL: usize = 6;

/// The most pooled ops of each kind one chunk may place (on top of the
/// floating ones): a few absences or refusals to explain between two
/// acknowledged writes is already more than a real run shows.
pub const MAX_POOLED: u8 = 4;

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Present {
    Absent,
    /// The body of the SET with this index in the history.
    Body(usize),
    /// The body of a write nobody saw: no read can match it.
    Invisible,
}

/// A key's state: what it holds and the bounds of its last write's rev.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct State {
    pub present: Present,
    pub lo: i64,
    pub hi: i64,
    /// Floating SETs and DELs placed in this chunk.
    fset: u8,
    fdel: u8,
}

impl State {
    /// Nothing written yet.
    pub fn initial() -> State {
        State {
            present: Present::Absent,
            lo: 0,
            hi: 0,
            fset: 0,
            fdel: 0,
        }
    }

    /// A known write at an exact rev (for restarting after a failed chunk).
    pub fn exact(present: Present, rev: i64) -> State {
        State {
            present,
            lo: rev,
            hi: rev,
            fset: 0,
            fdel: 0,
        }
    }

    /// The same state with no floating op used (for the next chunk).
    fn settled(self) -> State {
        State {
            fset: 0,
            fdel: 0,
            ..self
        }
    }

    /// The state with the rev check `check` passing (`None`: it cannot).
    fn pass(self, check: i64) -> Option<State> {
        if check == -1 {
            return Some(self);
        }
        match self.present {
            Present::Absent => (check >= 0).then_some(self),
            _ => (self.lo <= check).then_some(State {
                hi: self.hi.min(check),
                ..self
            }),
        }
    }

    /// The state with the rev check `check` failing (`None`: it cannot).
    fn fail(self, check: i64) -> Option<State> {
        if check == -1 {
            return None;
        }
        match self.present {
            Present::Absent => (check < 0).then_some(self),
            _ => (self.hi > check).then_some(State {
                lo: self.lo.max(check.saturating_add(1)),
                ..self
            }),
        }
    }

    /// The state after a write holding `present` at a rev in `[lo, hi]`.
    fn write(self, present: Present, lo: i64, hi: i64) -> Option<State> {
        let lo = lo.max(self.lo.saturating_add(1));
        (lo <= hi).then_some(State {
            present,
            lo,
            hi,
            ..self
        })
    }
}

/// One op of the chunk, as the search sees it.
#[derive(Clone, Debug)]
pub struct SOp {
    /// Index in the history.
    pub index: usize,
    pub invoked: Time,
    /// When it must have taken effect by; `None`: optional (unknown outcome,
    /// may never have happened).
    pub end: Option<Time>,
    pub kind: SKind,
}

#[derive(Clone, Debug)]
pub enum SKind {
    /// A SET (`present` = its body) or DEL (`Absent`) with its check, at a
    /// rev in `[lo, hi]`.
    Write {
        present: Present,
        check: i64,
        lo: i64,
        hi: i64,
    },
    /// REV_MISMATCH: the check failed, nothing changed.
    Mismatch { check: i64 },
    /// A GET that saw `present` at file rev `rev` (0 when absent).
    Read { present: Present, rev: i64 },
}

impl SOp {
    /// The state after this op, if it can come next from `s`.
    fn apply(&self, s: State) -> Option<State> {
        match self.kind {
            SKind::Write {
                present,
                check,
                lo,
                hi,
            } => s.pass(check)?.write(present, lo, hi),
            SKind::Mismatch { check } => s.fail(check),
            SKind::Read { present, rev } => {
                if s.present != present {
                    return None;
                }
                if present == Present::Absent {
                    return Some(s);
                }
                (s.lo <= rev && rev <= s.hi).then_some(State {
                    lo: rev,
                    hi: rev,
                    ..s
                })
            }
        }
    }
}

/// How a chunk's search ended.
#[derive(Debug)]
pub enum Outcome {
    /// Linearizable: every state it can end in (floating counts reset).
    Ends(Vec<State>),
    /// No linearization: the longest placeable prefix, and the ops that
    /// could have come next there but did not fit (history indexes).
    Fails { longest: usize, stuck: Vec<usize> },
    /// Out of budget.
    Inconclusive,
}

/// A candidate step: an op of the chunk, or a floating SET or DEL.
#[derive(Clone, Copy, Debug)]
enum Step {
    Op(usize),
    FloatSet,
    FloatDel,
}

struct Frame {
    mask: Box<[u64]>,
    state: State,
    required_left: usize,
    steps: Vec<Step>,
    next: usize,
}

/// Searches one chunk (`ops` sorted by invocation) from each of `starts`.
/// `floating`: how many ops of unknown outcome from earlier chunks (SETs,
/// DELs) may land here. Charges `budget` (bytes left) and counts `explored`.
pub fn search(
    chunk: &[SOp],
    starts: &[State],
    floating: (u8, u8),
    budget: &mut u64,
    explored: &mut u64,
) -> Outcome {
    assert!(
        chunk.windows(2).all(|w| w[0].invoked <= w[1].invoked),
        "chunk ops sorted by invocation"
    );
    // Many optional ops: pool them (see MAX_EXACT_OPTIONAL).
    let optional = chunk.iter().filter(|o| o.end.is_none()).count();
    let pooled_ops: Vec<SOp>;
    let mut pooled_sets: Vec<Time> = Vec::new();
    let mut pooled_dels: Vec<Time> = Vec::new();
    let ops: &[SOp] = if optional > MAX_EXACT_OPTIONAL {
        for op in chunk.iter().filter(|o| o.end.is_none()) {
            match op.kind {
                SKind::Write {
                    present: Present::Absent,
                    ..
                } => pooled_dels.push(op.invoked),
                SKind::Write { .. } => pooled_sets.push(op.invoked),
                // Only writes are optional.
                SKind::Mismatch { .. } | SKind::Read { .. } => {}
            }
        }
        pooled_ops = chunk.iter().filter(|o| o.end.is_some()).cloned().collect();
        &pooled_ops
    } else {
        chunk
    };
    // Floating or pooled ops of one kind usable by the time `min_end`.
    let usable = |carried: u8, pool: &[Time], min_end: Time| -> u8 {
        let pooled = pool.partition_point(|t| *t <= min_end);
        let n = usize::from(carried.min(MAX_FLOATING)) + pooled.min(usize::from(MAX_POOLED));
        u8::try_from(n).unwrap_or(u8::MAX)
    };
    let words = ops.len().div_ceil(64).max(1);
    let entry_cost = words as u64 * 8 + ENTRY_OVERHEAD_BYTES;
    let required = ops.iter().filter(|o| o.end.is_some()).count();
    let mut visited: HashSet<(Box<[u64]>, State)> = HashSet::new();
    let mut ends: HashSet<State> = HashSet::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut longest = 0usize;
    let mut longest_frame: Option<(Box<[u64]>, State)> = None;
    let placed = |mask: &[u64], i: usize| mask[i / 64] & (1 << (i % 64)) != 0;
    // The steps that may come next from `mask` (real-time order).
    let steps_from = |mask: &[u64], state: &State| -> Vec<Step> {
        // The first unplaced op: skip whole words of placed ones.
        let first = mask
            .iter()
            .position(|w| *w != u64::MAX)
            .map(|w| w * 64 + mask[w].trailing_ones() as usize)
            .filter(|&i| i < ops.len());
        let mut steps = Vec::new();
        // The earliest deadline among unplaced required ops: ops are
        // sorted by invocation and an op's deadline is not before its
        // invocation, so scanning can stop once invocations pass it.
        let mut min_end = Time::MAX;
        if let Some(first) = first {
            for (i, op) in ops.iter().enumerate().skip(first) {
                if op.invoked > min_end {
                    break;
                }
                if !placed(mask, i) {
                    if let Some(end) = op.end {
                        min_end = min_end.min(end);
                    }
                }
            }
            for (i, op) in ops.iter().enumerate().skip(first) {
                if op.invoked > min_end {
                    break;
                }
                if !placed(mask, i) {
                    steps.push(Step::Op(i));
                }
            }
        }
        if state.fset < usable(floating.0, &pooled_sets, min_end) {
            steps.push(Step::FloatSet);
        }
        if state.fdel < usable(floating.1, &pooled_dels, min_end) {
            steps.push(Step::FloatDel);
        }
        steps
    };
    for &start in starts {
        let mask: Box<[u64]> = vec![0u64; words].into_boxed_slice();
        let start = start.settled();
        if !visited.insert((mask.clone(), start)) {
            continue;
        }
        if *budget < entry_cost {
            return Outcome::Inconclusive;
        }
        *budget -= entry_cost;
        *explored += 1;
        let steps = steps_from(&mask, &start);
        stack.push(Frame {
            mask,
            state: start,
            required_left: required,
            steps,
            next: 0,
        });
        while let Some(top) = stack.last_mut() {
            let depth = top
                .mask
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>();
            if top.next == 0 {
                if top.required_left == 0 {
                    ends.insert(top.state.settled());
                    if ends.len() > MAX_END_STATES {
                        return Outcome::Inconclusive;
                    }
                }
                if depth >= longest && longest_frame.is_none() || depth > longest {
                    longest = depth;
                    longest_frame = Some((top.mask.clone(), top.state));
                }
            }
            let Some(&step) = top.steps.get(top.next) else {
                stack.pop();
                continue;
            };
            top.next += 1;
            let (next_state, next_mask, required_left) = match step {
                Step::Op(i) => {
                    let Some(s) = ops[i].apply(top.state) else {
                        continue;
                    };
                    let mut mask = top.mask.clone();
                    mask[i / 64] |= 1 << (i % 64);
                    let left = top.required_left - usize::from(ops[i].end.is_some());
                    (s, mask, left)
                }
                Step::FloatSet => {
                    let Some(s) = top.state.write(Present::Invisible, 1, i64::MAX) else {
                        continue;
                    };
                    let s = State {
                        fset: s.fset + 1,
                        ..s
                    };
                    (s, top.mask.clone(), top.required_left)
                }
                Step::FloatDel => {
                    let Some(s) = top.state.write(Present::Absent, 1, i64::MAX) else {
                        continue;
                    };
                    let s = State {
                        fdel: s.fdel + 1,
                        ..s
                    };
                    (s, top.mask.clone(), top.required_left)
                }
            };
            if visited.contains(&(next_mask.clone(), next_state)) {
                continue;
            }
            if *budget < entry_cost {
                return Outcome::Inconclusive;
            }
            *budget -= entry_cost;
            *explored += 1;
            visited.insert((next_mask.clone(), next_state));
            let steps = steps_from(&next_mask, &next_state);
            stack.push(Frame {
                mask: next_mask,
                state: next_state,
                required_left,
                steps,
                next: 0,
            });
        }
    }
    if !ends.is_empty() {
        let mut ends: Vec<State> = ends.into_iter().collect();
        ends.sort();
        return Outcome::Ends(ends);
    }
    let stuck = match longest_frame {
        Some((mask, state)) => steps_from(&mask, &state)
            .into_iter()
            .filter_map(|s| match s {
                Step::Op(i) => Some(ops[i].index),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Outcome::Fails { longest, stuck }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(index: usize, t: (Time, Time), rev: i64, check: i64) -> SOp {
        SOp {
            index,
            invoked: t.0,
            end: Some(t.1),
            kind: SKind::Write {
                present: Present::Body(index),
                check,
                lo: rev,
                hi: rev,
            },
        }
    }

    fn get(index: usize, t: (Time, Time), writer: Option<usize>, rev: i64) -> SOp {
        SOp {
            index,
            invoked: t.0,
            end: Some(t.1),
            kind: SKind::Read {
                present: writer.map_or(Present::Absent, Present::Body),
                rev,
            },
        }
    }

    fn run(ops: &[SOp], floating: (u8, u8)) -> Outcome {
        let mut budget = SEARCH_BUDGET_BYTES;
        let mut explored = 0;
        search(
            ops,
            &[State::initial()],
            floating,
            &mut budget,
            &mut explored,
        )
    }

    #[test]
    fn concurrent_sets_end_in_the_higher_rev() {
        let ops = [set(0, (0, 10), 5, -1), set(1, (1, 9), 4, -1)];
        let Outcome::Ends(ends) = run(&ops, (0, 0)) else {
            panic!()
        };
        assert_eq!(ends, vec![State::exact(Present::Body(0), 5)]);
    }

    #[test]
    fn a_read_between_two_sets_must_see_the_first() {
        let ops = [
            set(0, (0, 1), 5, -1),
            get(1, (2, 3), Some(0), 5),
            set(2, (4, 5), 6, -1),
            get(3, (6, 7), Some(0), 5),
        ];
        assert!(matches!(
            run(&ops, (0, 0)),
            Outcome::Fails { longest: 3, ref stuck } if stuck == &vec![3]
        ));
    }

    #[test]
    fn a_floating_del_explains_a_late_absence() {
        let ops = [set(0, (0, 1), 5, -1), get(1, (2, 3), None, 0)];
        assert!(matches!(run(&ops, (0, 0)), Outcome::Fails { .. }));
        assert!(matches!(run(&ops, (0, 1)), Outcome::Ends(_)));
    }
}
