//! A linearizability checker for doozer's model, for the fault suite (issue
//! 11): it reads a history of client operations (invocation and completion
//! times, what each returned), the WAIT streams watchers saw and the final
//! contents of every node, and names every anomaly. Pure: no clock, no I/O.
//!
//! # The model
//!
//! One store; every write of the whole cluster takes the next global rev
//! (internal writes too, so the clients see gaps). Per key the state is
//! absent or (body, file rev). SET returns its rev; DEL's reply carries none;
//! GET returns (body, file rev), 0 = absent. A rev check `-1` always passes;
//! any other `c` passes when `c >=` the key's current file rev (0 absent); a
//! failing check changes nothing (REV_MISMATCH). Real time: op A precedes B
//! when A completed before B was invoked. The whole history is assumed to
//! write each (key, body) at most once (the suite's bodies are unique), and
//! every write to the keys is in it (they start absent).
//!
//! # How
//!
//! Revs order every write and name the write a read saw, which makes most
//! checks linear after a sort (see `analysis`):
//!
//! - **facts**: every claim that rev `r` wrote (key, body or DEL) — from
//!   acknowledgements, GETs, watch events, finals — must agree
//!   ([`Anomaly::SharedRev`], [`Anomaly::Divergence`],
//!   [`Anomaly::PhantomRead`]); a (key, body) at two revs is
//!   [`Anomaly::AppliedTwice`]; a refused write whose body shows up is
//!   [`Anomaly::RefusedButApplied`]. An unknown-outcome SET whose body is
//!   seen gets that rev.
//! - **intervals**: the store's rev at any instant is at least every rev
//!   acknowledged or read before it ("floor"), and a write's rev is below
//!   every rev of a write invoked after it was acknowledged ("ceiling").
//!   So writes acknowledged in real-time order have increasing revs
//!   ([`Anomaly::WritesOutOfOrder`]), a read that missed a write at or
//!   below its floor is stale ([`Anomaly::StaleRead`]), and a read of a
//!   write invoked after it ended is [`Anomaly::FutureRead`].
//! - **streams**: revs strictly increase in a segment
//!   ([`Anomaly::WatchReordered`]); every fact inside a segment's gap-free
//!   range is in it ([`Anomaly::WatchSkipped`], or [`Anomaly::LostWrite`]
//!   for an acknowledged SET no stream has at all, or an acknowledged DEL
//!   whose whole rev window a segment covers without a DEL of its key).
//! - **finals**: two at one rev agree; each agrees with the last fact of
//!   every key at or below its rev ([`Anomaly::FinalMismatch`], or
//!   [`Anomaly::LostWrite`] when that fact is an acknowledged write).
//! - **search**: per key, a WGL/Porcupine-style search (see `search`) places
//!   what the revs do not fix — DELs, writes of unknown outcome, the reads
//!   between them, rev checks — and proves every acknowledged conditional
//!   write's check could pass ([`Anomaly::CheckShouldHaveFailed`]) and every
//!   REV_MISMATCH's could fail ([`Anomaly::UnexplainedRefusal`]), else
//!   [`Anomaly::NotLinearizable`]. Reads an interval check already named are
//!   left out of it, so one fault gives one anomaly.
//!
//! # Bounds
//!
//! Every structure is linear in the input except the search, which is cut
//! per key and, within a key, into chunks at quiescent points (no op of the
//! key open; ops of unknown outcome do not hold a chunk open, they float
//! into later chunks), memoised, and charged against a byte budget per key
//! ([`SEARCH_BUDGET_BYTES`]): running out is [`Anomaly::Inconclusive`],
//! never a pass. ~20k ops over 5 keys and 8 clients check in about a second.

use std::collections::HashMap;
use std::fmt;

mod analysis;
mod search;
#[cfg(test)]
mod tests;

pub use analysis::MAX_RELAXATIONS;
pub use search::{
    MAX_END_STATES, MAX_EXACT_OPTIONAL, MAX_FLOATING, MAX_POOLED, SEARCH_BUDGET_BYTES,
};

/// When something happened: nanoseconds since the run began, one clock for
/// all clients (so times of different clients compare).
pub type Time = u64;

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Names the op in messages; unique in the history.
    pub id: usize,
    /// Which client issued it (one op at a time per client).
    pub client: usize,
    pub invoked: Time,
    /// `None`: no answer came (time-out, cut connection).
    pub completed: Option<Time>,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// SET with the wire rev check `check` (-1 clobber, else NotOlderThan(check)).
    Set {
        key: String,
        body: Vec<u8>,
        check: i64,
        outcome: Outcome,
    },
    /// DEL with the wire rev check.
    Del {
        key: String,
        check: i64,
        outcome: Outcome,
    },
    /// A GET that answered: body and file rev (0: absent).
    Get {
        key: String,
        body: Vec<u8>,
        rev: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged. SET: Some(rev); DEL: None (its reply has no rev).
    Ok(Option<i64>),
    /// An error that means "not applied" (REV_MISMATCH, READONLY, busy): no
    /// effect. Nothing has to explain it (READONLY or busy can refuse any
    /// write); record REV_MISMATCH as [`Outcome::Mismatch`] to have it
    /// checked.
    Refused,
    /// No answer or an error that does not say (time-out, cut connection):
    /// may or may not have taken effect, at any time after `invoked`.
    Unknown,
    /// REV_MISMATCH: refused by its rev check, so no effect, and at some
    /// instant of its interval the key's rev must have been above the check
    /// (else: [`Anomaly::UnexplainedRefusal`]).
    Mismatch,
}

/// One client's WAIT chain on one node over the keys under `prefix` (glob
/// `prefix**`): WAIT from `from`, then from each event's rev + 1. A segment
/// is gap-free: it saw every matching event in [from, last event's rev]. A
/// watcher that lost its place (TOO_LATE after a reconnect) starts a new
/// segment.
///
/// The checker takes every stream to cover every key of the history (the
/// suite watches the one prefix all its keys live under).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStream {
    pub node: String,
    pub segments: Vec<WatchSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSegment {
    pub from: i64,
    pub events: Vec<WatchEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub rev: i64,
    pub key: String,
    /// `None`: a DEL.
    pub body: Option<Vec<u8>>,
}

/// A node's data keys (key, file rev, body) read at one rev after the faults
/// healed. A key of the history that is not listed was absent at `rev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Final {
    pub node: String,
    pub rev: i64,
    pub files: Vec<(String, i64, Vec<u8>)>,
}

/// Where a fact about one rev came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Witness {
    /// A client operation (its id): a SET's acknowledgement or a GET's answer.
    Op(usize),
    /// Event `event` of segment `segment` of watch stream `stream` (indexes
    /// into the slices given to [`check`]).
    Watch {
        stream: usize,
        segment: usize,
        event: usize,
    },
    /// The final state `index` (into the slice given to [`check`]).
    Final { index: usize },
}

/// Something no linearizable execution of doozer's model explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// Two client operations claim different writes at one rev (two SETs
    /// acknowledged at one rev, or a GET naming a rev another write has).
    SharedRev { rev: i64, a: Witness, b: Witness },
    /// Watch streams, finals or operations disagree about the write at one
    /// rev (key, body, or SET against DEL); at least one is a stream or a
    /// final.
    Divergence { rev: i64, a: Witness, b: Witness },
    /// The same write (key and body; every body in the suite is unique) at
    /// two different revs.
    AppliedTwice {
        key: String,
        revs: (i64, i64),
        a: Witness,
        b: Witness,
    },
    /// `later` was invoked after `earlier` was acknowledged, yet has the
    /// lower rev.
    WritesOutOfOrder { earlier: usize, later: usize },
    /// A read saw rev `rev` of its key (0: absent), but a newer write to it
    /// (at `newer_rev`, by op `newer` when a client op is known) was
    /// acknowledged, or ordered below a write acknowledged, before the read
    /// began.
    StaleRead {
        read: usize,
        rev: i64,
        newer: Option<usize>,
        newer_rev: i64,
    },
    /// A read saw a write that was invoked only after the read ended.
    FutureRead { read: usize, write: usize },
    /// A read saw a rev at which no write of that key and body is known.
    PhantomRead { read: usize, rev: i64 },
    /// An acknowledged write (op `op`, at `rev` when known) that a gap-free
    /// watch segment or a final covering it does not reflect (`evidence`).
    LostWrite {
        op: usize,
        rev: Option<i64>,
        evidence: Witness,
    },
    /// A final state contradicts a write known at a rev at or below its own:
    /// `key` should read as `expected` (rev, body; `None`: absent).
    FinalMismatch {
        index: usize,
        key: String,
        expected: Option<(i64, Vec<u8>)>,
        known: Witness,
    },
    /// Within one segment, an event at a rev not above the previous one.
    WatchReordered {
        stream: usize,
        segment: usize,
        event: usize,
        rev: i64,
        previous: i64,
    },
    /// A write known at `rev` (by `known`) inside the range a gap-free
    /// segment covers, missing from it.
    WatchSkipped {
        stream: usize,
        segment: usize,
        rev: i64,
        known: Witness,
    },
    /// A REV_MISMATCH ([`Outcome::Mismatch`]) at no instant of which the
    /// key's rev could have been above the check (or a clobber, which never
    /// mismatches).
    UnexplainedRefusal { op: usize },
    /// A write answered as refused (REV_MISMATCH, READONLY, busy) whose body
    /// was seen at `rev` (by `witness`): it took effect after all.
    RefusedButApplied {
        op: usize,
        rev: i64,
        witness: Witness,
    },
    /// An acknowledged conditional write whose check must have failed at
    /// every instant it could have taken effect.
    CheckShouldHaveFailed { op: usize },
    /// The search found no linearization of the ops of `key` between times
    /// `from` and `to` (a chunk cut at quiescent points): `ops` are the
    /// chunk's ops, `stuck` the ops none of which could come next after
    /// the longest linearizable prefix (`longest` ops long).
    NotLinearizable {
        key: String,
        from: Time,
        to: Time,
        ops: Vec<usize>,
        stuck: Vec<usize>,
        longest: usize,
    },
    /// The search of `key` ran out of its state budget on a chunk of `ops`
    /// operations: neither a pass nor a proof of an anomaly.
    Inconclusive {
        key: String,
        from: Time,
        ops: usize,
        explored: u64,
    },
}

/// What was checked, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sets: usize,
    pub dels: usize,
    pub gets: usize,
    /// Writes by outcome.
    pub ok: usize,
    pub refused: usize,
    pub mismatch: usize,
    pub unknown: usize,
    pub streams: usize,
    pub segments: usize,
    pub events: usize,
    pub finals: usize,
    pub keys: usize,
    /// Independent chunks searched, and the largest (in ops).
    pub chunks: usize,
    pub largest_chunk: usize,
    /// Search states explored, summed over every chunk.
    pub states: u64,
    /// Whether any chunk's search ran out of its budget (then there is an
    /// [`Anomaly::Inconclusive`]).
    pub budget_hit: bool,
}

/// The checker's verdict: every anomaly, in a stable order, with a rendered
/// description of each naming the ops involved.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    pub stats: Stats,
    /// One line per anomaly (same order), naming ops with their clients and
    /// times.
    pub details: Vec<String>,
}

impl Report {
    /// True when no anomaly was found and no search ran out of budget.
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// A multi-line rendering: the summary, then every anomaly.
    pub fn detailed(&self) -> Detailed<'_> {
        Detailed(self)
    }
}

/// The one-line summary; with `{:#}`, the summary then every anomaly (as
/// [`Report::detailed`]).
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return write!(f, "{}", self.detailed());
        }
        let s = &self.stats;
        write!(
            f,
            "verdict={} anomalies={} sets={} dels={} gets={} ok={} refused={} mismatch={} \
             unknown={} events={} finals={} keys={} chunks={} largest_chunk={} states={}{}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.anomalies.len(),
            s.sets,
            s.dels,
            s.gets,
            s.ok,
            s.refused,
            s.mismatch,
            s.unknown,
            s.events,
            s.finals,
            s.keys,
            s.chunks,
            s.largest_chunk,
            s.states,
            if s.budget_hit { " budget_hit" } else { "" }
        )
    }
}

/// See [`Report::detailed`].
pub struct Detailed<'a>(&'a Report);

impl fmt::Display for Detailed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.0)?;
        for line in &self.0.details {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Every anomaly in the history `ops`, the watch streams and the finals.
pub fn check(ops: &[Op], watches: &[WatchStream], finals: &[Final]) -> Report {
    check_with(ops, watches, finals, Limits::default())
}

/// The checker's bounds (see [`SEARCH_BUDGET_BYTES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The per-key search budget in bytes.
    pub search_budget_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            search_budget_bytes: SEARCH_BUDGET_BYTES,
        }
    }
}

/// [`check`] with other bounds.
pub fn check_with(ops: &[Op], watches: &[WatchStream], finals: &[Final], limits: Limits) -> Report {
    let mut stats = Stats::default();
    for op in ops {
        let outcome = match &op.kind {
            OpKind::Set { outcome, .. } => {
                stats.sets += 1;
                outcome
            }
            OpKind::Del { outcome, .. } => {
                stats.dels += 1;
                outcome
            }
            OpKind::Get { .. } => {
                stats.gets += 1;
                continue;
            }
        };
        match outcome {
            Outcome::Ok(_) => stats.ok += 1,
            Outcome::Refused => stats.refused += 1,
            Outcome::Mismatch => stats.mismatch += 1,
            Outcome::Unknown => stats.unknown += 1,
        }
    }
    stats.streams = watches.len();
    for w in watches {
        stats.segments += w.segments.len();
        stats.events += w.segments.iter().map(|s| s.events.len()).sum::<usize>();
    }
    stats.finals = finals.len();
    let anomalies = analysis::run(ops, watches, finals, &mut stats, limits.search_budget_bytes);
    let render = Render {
        by_id: ops.iter().map(|op| (op.id, op)).collect(),
        watches,
        finals,
    };
    let details = anomalies.iter().map(|a| render.anomaly(a)).collect();
    Report {
        anomalies,
        stats,
        details,
    }
}

/// Renders anomalies with the ops, events and finals they name.
struct Render<'a> {
    by_id: HashMap<usize, &'a Op>,
    watches: &'a [WatchStream],
    finals: &'a [Final],
}

/// At most this many bytes of a body or key are shown in a message.
const SHOWN_BYTES: usize = 48;

fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SHOWN_BYTES)];
    let text = String::from_utf8_lossy(cut);
    if bytes.len() > SHOWN_BYTES {
        format!("{text:?}...")
    } else {
        format!("{text:?}")
    }
}

fn secs(t: Time) -> String {
    format!("{:.3}s", t as f64 / 1e9)
}

impl Render<'_> {
    fn op(&self, id: usize) -> String {
        let Some(op) = self.by_id.get(&id) else {
            return format!("op {id} (not in the history)");
        };
        let done = op.completed.map_or("no answer".to_string(), secs);
        let what = match &op.kind {
            OpKind::Set {
                key,
                body,
                check,
                outcome,
            } => format!(
                "SET {} {} check {check} -> {}",
                shown(key.as_bytes()),
                shown(body),
                outcome_text(outcome)
            ),
            OpKind::Del {
                key,
                check,
                outcome,
            } => format!(
                "DEL {} check {check} -> {}",
                shown(key.as_bytes()),
                outcome_text(outcome)
            ),
            OpKind::Get { key, body, rev } => {
                format!("GET {} -> {} rev {rev}", shown(key.as_bytes()), shown(body))
            }
        };
        format!(
            "op {id} [client {}, {} .. {}] {what}",
            op.client,
            secs(op.invoked),
            done
        )
    }

    fn witness(&self, w: Witness) -> String {
        match w {
            Witness::Op(id) => self.op(id),
            Witness::Watch {
                stream,
                segment,
                event,
            } => {
                let node = self.watches.get(stream).map_or("?", |s| s.node.as_str());
                let ev = self
                    .watches
                    .get(stream)
                    .and_then(|s| s.segments.get(segment))
                    .and_then(|g| g.events.get(event));
                match ev {
                    Some(e) => format!(
                        "watch stream {stream} (node {node}) segment {segment} event {event}: \
                         rev {} {} {}",
                        e.rev,
                        shown(e.key.as_bytes()),
                        e.body.as_deref().map_or("DEL".to_string(), shown)
                    ),
                    None => format!(
                        "watch stream {stream} (node {node}) segment {segment} (past its end)"
                    ),
                }
            }
            Witness::Final { index } => match self.finals.get(index) {
                Some(f) => format!("final {index} (node {}, at rev {})", f.node, f.rev),
                None => format!("final {index}"),
            },
        }
    }

    fn anomaly(&self, a: &Anomaly) -> String {
        match a {
            Anomaly::SharedRev { rev, a, b } => format!(
                "shared rev {rev}: {} and {}",
                self.witness(*a),
                self.witness(*b)
            ),
            Anomaly::Divergence { rev, a, b } => format!(
                "divergence at rev {rev}: {} against {}",
                self.witness(*a),
                self.witness(*b)
            ),
            Anomaly::AppliedTwice { key, revs, a, b } => format!(
                "applied twice: {} at rev {} ({}) and at rev {} ({})",
                shown(key.as_bytes()),
                revs.0,
                self.witness(*a),
                revs.1,
                self.witness(*b)
            ),
            Anomaly::WritesOutOfOrder { earlier, later } => format!(
                "writes out of order: {} was acknowledged before {} began, yet has the higher rev",
                self.op(*earlier),
                self.op(*later)
            ),
            Anomaly::StaleRead {
                read,
                rev,
                newer,
                newer_rev,
            } => format!(
                "stale read: {} saw rev {rev}, but rev {newer_rev} ({}) wrote the key before it began",
                self.op(*read),
                newer.map_or("known from a stream or a final".to_string(), |n| self.op(n))
            ),
            Anomaly::FutureRead { read, write } => format!(
                "future read: {} saw {}, invoked after the read ended",
                self.op(*read),
                self.op(*write)
            ),
            Anomaly::PhantomRead { read, rev } => format!(
                "phantom read: {} saw rev {rev}, which no write of that key and body has",
                self.op(*read)
            ),
            Anomaly::LostWrite { op, rev, evidence } => format!(
                "lost write: {}{} is missing from {}",
                self.op(*op),
                rev.map_or(String::new(), |r| format!(" (rev {r})")),
                self.witness(*evidence)
            ),
            Anomaly::FinalMismatch {
                index,
                key,
                expected,
                known,
            } => format!(
                "final mismatch: {} should show {} as {} ({})",
                self.witness(Witness::Final { index: *index }),
                shown(key.as_bytes()),
                expected.as_ref().map_or("absent".to_string(), |(r, b)| format!(
                    "{} at rev {r}",
                    shown(b)
                )),
                self.witness(*known)
            ),
            Anomaly::WatchReordered {
                stream,
                segment,
                event,
                rev,
                previous,
            } => format!(
                "watch reordered: rev {rev} comes after rev {previous}: {}",
                self.witness(Witness::Watch {
                    stream: *stream,
                    segment: *segment,
                    event: *event
                })
            ),
            Anomaly::WatchSkipped {
                stream,
                segment,
                rev,
                known,
            } => format!(
                "watch skipped: stream {stream} (node {}) segment {segment} covers rev {rev} but \
                 lacks {}",
                self.watches.get(*stream).map_or("?", |s| s.node.as_str()),
                self.witness(*known)
            ),
            Anomaly::RefusedButApplied { op, rev, witness } => format!(
                "refused but applied: {} shows at rev {rev} in {}",
                self.op(*op),
                self.witness(*witness)
            ),
            Anomaly::UnexplainedRefusal { op } => format!(
                "unexplained refusal: {} could not have failed its check at any point",
                self.op(*op)
            ),
            Anomaly::CheckShouldHaveFailed { op } => format!(
                "check should have failed: {} succeeded, though its check fails wherever it \
                 could take effect",
                self.op(*op)
            ),
            Anomaly::NotLinearizable {
                key,
                from,
                to,
                ops,
                stuck,
                longest,
            } => {
                let stuck: Vec<String> = stuck.iter().map(|&id| self.op(id)).collect();
                format!(
                    "not linearizable: key {} from {} to {} ({} ops: {:?}); the longest \
                     linearizable prefix places {longest}, then none of these fits: {}",
                    shown(key.as_bytes()),
                    secs(*from),
                    secs(*to),
                    ops.len(),
                    ops,
                    stuck.join("; ")
                )
            }
            Anomaly::Inconclusive {
                key,
                from,
                ops,
                explored,
            } => format!(
                "inconclusive: key {} from {}: the search ran out of budget on a chunk of {ops} \
                 ops after {explored} states",
                shown(key.as_bytes()),
                secs(*from)
            ),
        }
    }
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Ok(Some(rev)) => format!("ok rev {rev}"),
        Outcome::Ok(None) => "ok".to_string(),
        Outcome::Refused => "refused".to_string(),
        Outcome::Unknown => "unknown".to_string(),
        Outcome::Mismatch => "REV_MISMATCH".to_string(),
    }
}
