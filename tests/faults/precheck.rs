//! An independent cross-check of the history, beside `doozer::lincheck`:
//! the interval checks of the project's first checker (commit 27bb9cc),
//! kept here so two implementations judge every run; a run passes only
//! when both find nothing, and a disagreement points at a checker bug.
//!
//! Why this suffices for reads: doozer orders every write of the whole
//! store by one rev, and hands that rev back — to the writer, and to every
//! reader of the file it wrote. So the linearization order of the writes is
//! known, and each read names the write it saw. The search then collapses
//! to interval checks, linear after a sort:
//!
//! - writes: two acknowledged writes never share a rev, and a write
//!   acknowledged before another was invoked has the lower rev (real time);
//! - a read of key `k` that saw the write at rev `r` (`r = 0`: no file) takes
//!   effect at some store rev `S` inside its interval: `S` is at least every
//!   rev acknowledged before the read began, and below every rev first
//!   invoked after it ended. The read is linearizable when some such `S` has
//!   the write at `r` as the last write to `k` at or below `S`: `r <= S <
//!   next(k, r)`, with `next` the first known write to `k` after `r`;
//! - the write a read saw exists, wrote that key and that body, and was
//!   invoked before the read ended (no reading the future).
//!
//! A write whose outcome the client never learned (a time-out, a cut
//! connection) counts once some read saw it: the read gives its rev. One no
//! read saw may or may not have happened, and so can convict nobody.
//!
//! A lost acknowledged write shows up as a stale read: the suite reads every
//! key once the faults have healed, after every write ended.

use std::collections::{BTreeMap, HashMap};

/// When something happened, in any unit that orders events of all clients
/// (nanoseconds since the run began).
pub type Time = u64;

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index in the history, for messages.
    pub id: usize,
    pub invoked: Time,
    /// `None`: no answer came (time-out, cut connection).
    pub completed: Option<Time>,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A SET or DEL (`body: None`). `rev`: the rev it was acknowledged at,
    /// `None` when it failed or its outcome is unknown (`refused` says which:
    /// a clear refusal such as REV_MISMATCH took no effect).
    Write {
        key: String,
        body: Option<Vec<u8>>,
        rev: Option<i64>,
        /// The server answered with an error that means "not applied".
        refused: bool,
    },
    /// A GET that answered: the body and the file's rev (0: no such file).
    Read {
        key: String,
        body: Vec<u8>,
        rev: i64,
    },
}

/// Something no linearizable execution of doozer's model explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// Two different writes acknowledged (or seen) at one rev.
    SharedRev { rev: i64, ops: (usize, usize) },
    /// `later` was invoked after `earlier` was acknowledged, yet has the
    /// lower rev.
    WritesOutOfOrder { earlier: usize, later: usize },
    /// A read saw rev `rev` of its key, but a newer write to it (`newer`,
    /// at `newer_rev`) was acknowledged before the read began.
    StaleRead {
        read: usize,
        rev: i64,
        newer: usize,
        newer_rev: i64,
    },
    /// A read saw a write that was invoked only after the read ended.
    FutureRead { read: usize, write: usize },
    /// A read saw a rev at which no write of that key and body is known.
    PhantomRead { read: usize, rev: i64 },
}

/// A write with a known rev: acknowledged, or seen by a read.
#[derive(Clone, Debug)]
struct KnownWrite {
    op: usize,
    key: String,
    body: Option<Vec<u8>>,
    invoked: Time,
    /// When it was acknowledged (`None`: seen only through a read).
    acked: Option<Time>,
}

/// Every anomaly in `history`, in a stable order (empty: linearizable).
pub fn check(history: &[Op]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut by_rev: BTreeMap<i64, KnownWrite> = BTreeMap::new();
    // Acknowledged writes first: their revs are facts.
    for op in history {
        if let OpKind::Write {
            key,
            body,
            rev: Some(rev),
            ..
        } = &op.kind
        {
            let write = KnownWrite {
                op: op.id,
                key: key.clone(),
                body: body.clone(),
                invoked: op.invoked,
                acked: op.completed,
            };
            if let Some(known) = by_rev.get(rev) {
                anomalies.push(Anomaly::SharedRev {
                    rev: *rev,
                    ops: (known.op, op.id),
                });
            } else {
                by_rev.insert(*rev, write);
            }
        }
    }
    // Writes of unknown outcome that a read saw: the read tells their rev.
    let unknown: Vec<&Op> = history
        .iter()
        .filter(|op| {
            matches!(
                op.kind,
                OpKind::Write {
                    rev: None,
                    refused: false,
                    ..
                }
            )
        })
        .collect();
    for op in history {
        let OpKind::Read { key, body, rev } = &op.kind else {
            continue;
        };
        if *rev == 0 || by_rev.contains_key(rev) {
            continue;
        }
        let candidate = unknown.iter().find(|w| match &w.kind {
            OpKind::Write {
                key: k, body: b, ..
            } => k == key && b.as_deref() == Some(body.as_slice()),
            OpKind::Read { .. } => false,
        });
        if let Some(w) = candidate {
            if let OpKind::Write { key, body, .. } = &w.kind {
                by_rev.insert(
                    *rev,
                    KnownWrite {
                        op: w.id,
                        key: key.clone(),
                        body: body.clone(),
                        invoked: w.invoked,
                        acked: None,
                    },
                );
            }
        }
    }
    // Real time: a write acknowledged before another was invoked has the
    // lower rev. From the highest rev down, keep the earliest
    // acknowledgement among the writes above.
    let mut min_ack_above: Option<(Time, usize)> = None;
    for write in by_rev.values().rev() {
        if let Some((acked_at, later)) = min_ack_above {
            if acked_at < write.invoked {
                anomalies.push(Anomaly::WritesOutOfOrder {
                    earlier: later,
                    later: write.op,
                });
            }
        }
        if let Some(acked_at) = write.acked {
            if min_ack_above.is_none_or(|(t, _)| acked_at < t) {
                min_ack_above = Some((acked_at, write.op));
            }
        }
    }
    // Per key, the known revs in order, for `next(k, r)`.
    let mut revs_of_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (rev, write) in &by_rev {
        revs_of_key
            .entry(write.key.as_str())
            .or_default()
            .push(*rev);
    }
    // Acknowledgements sorted by time, with the running highest rev, for
    // "every rev acknowledged before the read began".
    let mut acks: Vec<(Time, i64, usize)> = by_rev
        .iter()
        .filter_map(|(rev, w)| w.acked.map(|t| (t, *rev, w.op)))
        .collect();
    acks.sort();
    let mut highest_by_then: Vec<(Time, i64, usize)> = Vec::with_capacity(acks.len());
    for (t, rev, op) in acks {
        let best = match highest_by_then.last() {
            Some(&(_, r, o)) if r > rev => (t, r, o),
            _ => (t, rev, op),
        };
        highest_by_then.push(best);
    }
    for op in history {
        let OpKind::Read { key, body, rev } = &op.kind else {
            continue;
        };
        let rev = *rev;
        if rev != 0 {
            match by_rev.get(&rev) {
                Some(w) if w.key == *key && w.body.as_deref() == Some(body.as_slice()) => {
                    if let Some(done) = op.completed {
                        if w.invoked > done {
                            anomalies.push(Anomaly::FutureRead {
                                read: op.id,
                                write: w.op,
                            });
                        }
                    }
                }
                _ => {
                    anomalies.push(Anomaly::PhantomRead { read: op.id, rev });
                    continue;
                }
            }
        }
        // The store rev the read took effect at is at least the highest rev
        // acknowledged before it began...
        let before = highest_by_then.partition_point(|(t, _, _)| *t < op.invoked);
        let Some(&(_, floor, floor_op)) =
            before.checked_sub(1).and_then(|i| highest_by_then.get(i))
        else {
            continue;
        };
        // ... so the read must not have missed a write to its key at or below
        // that floor.
        let revs = revs_of_key
            .get(key.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if rev == 0 {
            // No file: fine if the last write at or below the floor deleted
            // it, or a delete comes later (the read may take effect after
            // the floor; where exactly is not known from the writes alone).
            let below = revs.partition_point(|r| *r <= floor);
            let Some(&last) = below.checked_sub(1).and_then(|i| revs.get(i)) else {
                continue;
            };
            let is_del = |r: &i64| by_rev.get(r).is_some_and(|w| w.body.is_none());
            if !is_del(&last) && !revs[below..].iter().any(is_del) {
                let newer = by_rev.get(&last).map(|w| w.op).unwrap_or(floor_op);
                anomalies.push(Anomaly::StaleRead {
                    read: op.id,
                    rev,
                    newer,
                    newer_rev: last,
                });
            }
            continue;
        }
        let next = revs.partition_point(|r| *r <= rev);
        if let Some(&newer_rev) = revs.get(next) {
            if newer_rev <= floor {
                // A write the reader had to see: acknowledged before the read
                // began, or ordered below one that was.
                let newer = by_rev.get(&newer_rev).map(|w| w.op).unwrap_or(floor_op);
                anomalies.push(Anomaly::StaleRead {
                    read: op.id,
                    rev,
                    newer,
                    newer_rev,
                });
            }
        }
    }
    anomalies
}
