//! The checks in order: facts at revs (and their conflicts), the interval
//! checks, the WAIT streams, the finals, then the per-key search. Internally
//! ops are named by their index in the history; anomalies name their `id`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::search::{self, Present, SKind, SOp, State};
use super::{Anomaly, Final, Op, OpKind, Outcome, Stats, Time, WatchStream, Witness};

/// How many single-op relaxations a failed chunk tries, to name the one
/// conditional write (or REV_MISMATCH) whose check nothing explains, before
/// reporting the chunk as [`Anomaly::NotLinearizable`]. Each retry draws on
/// the key's search budget.
pub const MAX_RELAXATIONS: usize = 32;

/// One claim about the write at a rev.
#[derive(Clone, Copy, Debug)]
struct Sighting<'a> {
    rev: i64,
    key: &'a str,
    /// `None`: a DEL.
    body: Option<&'a [u8]>,
    witness: Witness,
    /// The op it comes from (history index), if any.
    op: Option<usize>,
    /// Which claim wins when they disagree: acks, then streams, finals, GETs.
    prio: u8,
}

/// The write known at a rev (the first claim about it).
#[derive(Clone, Copy, Debug)]
struct Fact<'a> {
    key: &'a str,
    body: Option<&'a [u8]>,
    witness: Witness,
    op: Option<usize>,
}

/// Max of `v` over the entries with time `< t`, from a list sorted by time
/// with a running max.
fn running_before(list: &[(Time, i64)], t: Time) -> Option<i64> {
    let n = list.partition_point(|(time, _)| *time < t);
    n.checked_sub(1).map(|i| list[i].1)
}

struct Ctx<'a> {
    ops: &'a [Op],
    watches: &'a [WatchStream],
    finals: &'a [Final],
    anomalies: Vec<Anomaly>,
    /// GETs excluded from the search: an interval check already named them.
    flagged: HashSet<usize>,
    /// (key, body) → the SET that wrote it.
    writer: HashMap<(&'a str, &'a [u8]), usize>,
    /// The rev each SET took effect at, when known.
    set_rev: Vec<Option<i64>>,
    facts: BTreeMap<i64, Fact<'a>>,
    /// Per key, the revs of its facts, ascending.
    key_facts: HashMap<&'a str, Vec<i64>>,
    /// (completion time, running max rev) of everything proving the store
    /// had reached a rev: acknowledged SETs, GETs of a file.
    floor_list: Vec<(Time, i64)>,
    /// (rev, min completion among evidence at this rev or above).
    eff_end_list: Vec<(i64, Time)>,
    /// (invocation, min rev among known writes invoked at or after it),
    /// sorted by invocation.
    ceil_list: Vec<(Time, i64)>,
    /// Per key, its DELs that may have taken effect: (history index, rev
    /// window lo, hi, acknowledged).
    dels: HashMap<&'a str, Vec<(usize, i64, i64, bool)>>,
}

fn key_of(op: &Op) -> &str {
    match &op.kind {
        OpKind::Set { key, .. } | OpKind::Del { key, .. } | OpKind::Get { key, .. } => key,
    }
}

/// When `op` ended (`Time::MAX`: never answered). A completion recorded
/// before the invocation (a broken clock) counts as the invocation.
fn done(op: &Op) -> Time {
    op.completed.map_or(Time::MAX, |t| t.max(op.invoked))
}

impl<'a> Ctx<'a> {
    fn id(&self, i: usize) -> usize {
        self.ops[i].id
    }

    /// Whether op `i` is a SET acknowledged with a rev.
    fn acked_set(&self, i: usize) -> bool {
        matches!(
            self.ops[i].kind,
            OpKind::Set {
                outcome: Outcome::Ok(Some(_)),
                ..
            }
        )
    }

    /// The highest rev the store is known to have reached before `t`.
    fn floor(&self, t: Time) -> i64 {
        running_before(&self.floor_list, t).unwrap_or(0)
    }

    /// The lowest rev of a known write invoked after `t` (`i64::MAX`: none).
    fn ceil(&self, t: Time) -> i64 {
        let n = self.ceil_list.partition_point(|(inv, _)| *inv <= t);
        self.ceil_list.get(n).map_or(i64::MAX, |(_, r)| *r)
    }

    /// By when the write at `rev` must have taken effect: the first
    /// completion of anything that saw the store at `rev` or later.
    fn eff_end(&self, rev: i64) -> Time {
        let n = self.eff_end_list.partition_point(|(r, _)| *r < rev);
        self.eff_end_list.get(n).map_or(Time::MAX, |(_, t)| *t)
    }

    /// The bounds on the rev of a DEL or an unseen write (`done`: when it
    /// was acknowledged, if it was).
    fn window(&self, op: &Op, acked: bool) -> (i64, i64) {
        let lo = self.floor(op.invoked).saturating_add(1);
        let hi = match (acked, op.completed) {
            (true, Some(t)) => self.ceil(t).saturating_sub(1),
            _ => i64::MAX,
        };
        (lo, hi)
    }

    /// The DELs of `key` that may have taken effect (acknowledged or of
    /// unknown outcome), with their rev windows and whether acknowledged.
    fn del_windows(&self, key: &str) -> &[(usize, i64, i64, bool)] {
        self.dels.get(key).map_or(&[], |v| v.as_slice())
    }
}

/// Fills [`Ctx::dels`] (after [`bounds`]).
fn del_windows(cx: &mut Ctx<'_>) {
    let mut dels: HashMap<&str, Vec<(usize, i64, i64, bool)>> = HashMap::new();
    for (i, op) in cx.ops.iter().enumerate() {
        if let OpKind::Del { key, outcome, .. } = &op.kind {
            let acked = match outcome {
                Outcome::Ok(_) => true,
                Outcome::Unknown => false,
                Outcome::Refused | Outcome::Mismatch => continue,
            };
            let (lo, hi) = cx.window(op, acked);
            dels.entry(key.as_str())
                .or_default()
                .push((i, lo, hi, acked));
        }
    }
    cx.dels = dels;
}

pub(super) fn run(
    ops: &[Op],
    watches: &[WatchStream],
    finals: &[Final],
    stats: &mut Stats,
    budget: u64,
) -> Vec<Anomaly> {
    let mut cx = Ctx {
        ops,
        watches,
        finals,
        anomalies: Vec::new(),
        flagged: HashSet::new(),
        writer: HashMap::new(),
        set_rev: vec![None; ops.len()],
        facts: BTreeMap::new(),
        key_facts: HashMap::new(),
        floor_list: Vec::new(),
        eff_end_list: Vec::new(),
        ceil_list: Vec::new(),
        dels: HashMap::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        if let OpKind::Set { key, body, .. } = &op.kind {
            cx.writer
                .entry((key.as_str(), body.as_slice()))
                .or_insert(i);
        }
    }
    facts(&mut cx);
    bounds(&mut cx);
    del_windows(&mut cx);
    writes_in_order(&mut cx);
    reads(&mut cx);
    streams(&mut cx);
    final_states(&mut cx);
    searches(&mut cx, stats, budget);
    // A lost write found by a stream and by a final is one anomaly.
    let mut lost = HashSet::new();
    cx.anomalies.retain(|a| match a {
        Anomaly::LostWrite { op, .. } => lost.insert(*op),
        _ => true,
    });
    cx.anomalies
}

/// Gathers every claim about a rev, reports the ones that disagree, the
/// same write at two revs and refused writes that took effect; resolves
/// each SET's rev.
fn facts(cx: &mut Ctx<'_>) {
    let ops = cx.ops;
    let mut sightings: Vec<Sighting<'_>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match &op.kind {
            OpKind::Set {
                key,
                body,
                outcome: Outcome::Ok(Some(rev)),
                ..
            } if *rev > 0 => sightings.push(Sighting {
                rev: *rev,
                key,
                body: Some(body),
                witness: Witness::Op(op.id),
                op: Some(i),
                prio: 0,
            }),
            OpKind::Get { key, body, rev } if *rev != 0 => {
                if *rev < 0 || !cx.writer.contains_key(&(key.as_str(), body.as_slice())) {
                    cx.anomalies.push(Anomaly::PhantomRead {
                        read: op.id,
                        rev: *rev,
                    });
                    cx.flagged.insert(i);
                    continue;
                }
                sightings.push(Sighting {
                    rev: *rev,
                    key,
                    body: Some(body),
                    witness: Witness::Op(op.id),
                    op: Some(i),
                    prio: 3,
                });
            }
            _ => {}
        }
    }
    for (s, stream) in cx.watches.iter().enumerate() {
        for (g, seg) in stream.segments.iter().enumerate() {
            for (e, ev) in seg.events.iter().enumerate() {
                sightings.push(Sighting {
                    rev: ev.rev,
                    key: &ev.key,
                    body: ev.body.as_deref(),
                    witness: Witness::Watch {
                        stream: s,
                        segment: g,
                        event: e,
                    },
                    op: None,
                    prio: 1,
                });
            }
        }
    }
    for (f, fin) in cx.finals.iter().enumerate() {
        for (key, rev, body) in &fin.files {
            if *rev > 0 {
                sightings.push(Sighting {
                    rev: *rev,
                    key,
                    body: Some(body),
                    witness: Witness::Final { index: f },
                    op: None,
                    prio: 2,
                });
            }
        }
    }
    sightings.sort_by_key(|s| (s.rev, s.prio));
    let is_get = |s: &Sighting<'_>| {
        s.op.is_some_and(|i| matches!(ops[i].kind, OpKind::Get { .. }))
    };
    let mut first_of_write: HashMap<(&str, &[u8]), (i64, Witness)> = HashMap::new();
    let mut reported: HashSet<(i64, &str, Option<&[u8]>)> = HashSet::new();
    let mut twice: HashSet<(&str, &[u8], i64)> = HashSet::new();
    let mut start = 0;
    while start < sightings.len() {
        let rev = sightings[start].rev;
        let end = start + sightings[start..].partition_point(|s| s.rev == rev);
        let reference = sightings[start];
        cx.facts.insert(
            rev,
            Fact {
                key: reference.key,
                body: reference.body,
                witness: reference.witness,
                op: reference.op,
            },
        );
        for s in &sightings[start..end] {
            if s.key != reference.key || s.body != reference.body {
                if is_get(s) {
                    if let Some(i) = s.op {
                        cx.anomalies.push(Anomaly::PhantomRead {
                            read: ops[i].id,
                            rev,
                        });
                        cx.flagged.insert(i);
                    }
                    continue;
                }
                if !reported.insert((rev, s.key, s.body)) {
                    continue;
                }
                let both_ops = s.op.is_some() && reference.op.is_some();
                cx.anomalies.push(if both_ops {
                    Anomaly::SharedRev {
                        rev,
                        a: reference.witness,
                        b: s.witness,
                    }
                } else {
                    Anomaly::Divergence {
                        rev,
                        a: reference.witness,
                        b: s.witness,
                    }
                });
                continue;
            }
            let Some(body) = s.body else { continue };
            match first_of_write.get(&(s.key, body)) {
                None => {
                    first_of_write.insert((s.key, body), (rev, s.witness));
                }
                Some(&(first_rev, first_witness)) if first_rev != rev => {
                    if let Some(i) = s.op.filter(|_| is_get(s)) {
                        cx.flagged.insert(i);
                    }
                    if twice.insert((s.key, body, rev)) {
                        cx.anomalies.push(Anomaly::AppliedTwice {
                            key: s.key.to_string(),
                            revs: (first_rev, rev),
                            a: first_witness,
                            b: s.witness,
                        });
                    }
                }
                Some(_) => {}
            }
        }
        start = end;
    }
    for (rev, fact) in &cx.facts {
        cx.key_facts.entry(fact.key).or_default().push(*rev);
    }
    // Each SET's rev: acknowledged, or where its body was first seen.
    for (i, op) in ops.iter().enumerate() {
        let OpKind::Set {
            key, body, outcome, ..
        } = &op.kind
        else {
            continue;
        };
        let seen = first_of_write
            .get(&(key.as_str(), body.as_slice()))
            .copied();
        match outcome {
            Outcome::Ok(Some(rev)) => cx.set_rev[i] = Some(*rev),
            Outcome::Ok(None) | Outcome::Unknown => cx.set_rev[i] = seen.map(|(r, _)| r),
            Outcome::Refused | Outcome::Mismatch => {
                if let Some((rev, witness)) = seen {
                    cx.anomalies.push(Anomaly::RefusedButApplied {
                        op: op.id,
                        rev,
                        witness,
                    });
                }
            }
        }
    }
    // A GET whose write is refused, or took effect at another rev, was
    // reported above; keep it out of the later checks.
    for (i, op) in ops.iter().enumerate() {
        if let OpKind::Get { key, body, rev } = &op.kind {
            if *rev == 0 || cx.flagged.contains(&i) {
                continue;
            }
            if let Some(&w) = cx.writer.get(&(key.as_str(), body.as_slice())) {
                if cx.set_rev[w] != Some(*rev) {
                    cx.flagged.insert(i);
                }
            }
        }
    }
}

/// The time bounds revs give: the floor of the store at any time, when a
/// write at a rev must have taken effect by, the ceiling of a write's rev.
fn bounds(cx: &mut Ctx<'_>) {
    let mut evidence: Vec<(i64, Time)> = Vec::new();
    let mut known: Vec<(Time, i64)> = Vec::new();
    for (i, op) in cx.ops.iter().enumerate() {
        match &op.kind {
            OpKind::Set { outcome, .. } => {
                if let (Outcome::Ok(Some(rev)), Some(t)) = (outcome, op.completed) {
                    evidence.push((*rev, t));
                }
                if let Some(rev) = cx.set_rev[i] {
                    known.push((op.invoked, rev));
                }
            }
            OpKind::Get { rev, .. } if *rev > 0 && !cx.flagged.contains(&i) => {
                if let Some(t) = op.completed {
                    evidence.push((*rev, t));
                }
            }
            _ => {}
        }
    }
    let mut by_time: Vec<(Time, i64)> = evidence.iter().map(|&(r, t)| (t, r)).collect();
    by_time.sort_unstable();
    let mut max = i64::MIN;
    cx.floor_list = by_time
        .into_iter()
        .map(|(t, r)| {
            max = max.max(r);
            (t, max)
        })
        .collect();
    evidence.sort_unstable();
    let mut min = Time::MAX;
    let mut eff: Vec<(i64, Time)> = evidence
        .into_iter()
        .rev()
        .map(|(r, t)| {
            min = min.min(t);
            (r, min)
        })
        .collect();
    eff.reverse();
    cx.eff_end_list = eff;
    known.sort_unstable();
    let mut min = i64::MAX;
    let mut ceil: Vec<(Time, i64)> = known
        .into_iter()
        .rev()
        .map(|(t, r)| {
            min = min.min(r);
            (t, min)
        })
        .collect();
    ceil.reverse();
    cx.ceil_list = ceil;
}

/// A write acknowledged before another was invoked has the lower rev.
fn writes_in_order(cx: &mut Ctx<'_>) {
    let mut by_rev: BTreeMap<i64, (usize, Time, Option<Time>)> = BTreeMap::new();
    for (i, op) in cx.ops.iter().enumerate() {
        if let Some(rev) = cx.set_rev[i] {
            let acked = if cx.acked_set(i) { op.completed } else { None };
            by_rev.entry(rev).or_insert((i, op.invoked, acked));
        }
    }
    // From the highest rev down, keep the earliest acknowledgement above.
    let mut min_ack_above: Option<(Time, usize)> = None;
    for &(i, invoked, acked) in by_rev.values().rev() {
        if let Some((acked_at, later)) = min_ack_above {
            if acked_at < invoked {
                cx.anomalies.push(Anomaly::WritesOutOfOrder {
                    earlier: cx.id(later),
                    later: cx.id(i),
                });
            }
        }
        if let Some(t) = acked {
            if min_ack_above.is_none_or(|(m, _)| t < m) {
                min_ack_above = Some((t, i));
            }
        }
    }
}

/// Future and stale reads, by the revs alone.
fn reads(cx: &mut Ctx<'_>) {
    let ops = cx.ops;
    for (i, op) in ops.iter().enumerate() {
        let OpKind::Get { key, body, rev } = &op.kind else {
            continue;
        };
        if cx.flagged.contains(&i) {
            continue;
        }
        let rev = *rev;
        if rev != 0 {
            if let Some(&w) = cx.writer.get(&(key.as_str(), body.as_slice())) {
                if ops[w].invoked > done(op) {
                    cx.anomalies.push(Anomaly::FutureRead {
                        read: op.id,
                        write: ops[w].id,
                    });
                    cx.flagged.insert(i);
                    continue;
                }
            }
        }
        let floor = cx.floor(op.invoked);
        let revs = cx
            .key_facts
            .get(key.as_str())
            .map_or(&[][..], |v| v.as_slice());
        let stale = if rev != 0 {
            // The next write to the key after the one seen is at or below
            // the floor: the read missed it.
            let next = revs.partition_point(|r| *r <= rev);
            revs.get(next).copied().filter(|&n| n <= floor)
        } else {
            // Absent: the last write at or below the floor must be a DEL,
            // or a DEL may come after it before the read could have ended.
            let below = revs.partition_point(|r| *r <= floor);
            match below.checked_sub(1).map(|j| revs[j]) {
                Some(last) if cx.facts[&last].body.is_some() => {
                    let ceil = cx.ceil(done(op));
                    let del_fact = revs[below..]
                        .iter()
                        .any(|r| *r < ceil && cx.facts[r].body.is_none());
                    let del_op = cx
                        .del_windows(key)
                        .iter()
                        .any(|&(d, _, hi, _)| ops[d].invoked <= done(op) && hi > last);
                    (!del_fact && !del_op).then_some(last)
                }
                _ => None,
            }
        };
        if let Some(newer_rev) = stale {
            // The write named by the fact's body (the fact may come from a
            // read, a stream or a final).
            let fact = cx.facts[&newer_rev];
            let newer = fact
                .body
                .and_then(|b| cx.writer.get(&(fact.key, b)))
                .map(|&w| ops[w].id);
            cx.anomalies.push(Anomaly::StaleRead {
                read: op.id,
                rev,
                newer,
                newer_rev,
            });
            cx.flagged.insert(i);
        }
    }
}

/// WAIT streams: order within a segment, skipped events, lost writes.
fn streams(cx: &mut Ctx<'_>) {
    let watched: HashSet<i64> = cx
        .watches
        .iter()
        .flat_map(|w| w.segments.iter())
        .flat_map(|g| g.events.iter().map(|e| e.rev))
        .collect();
    let mut lost: HashSet<usize> = HashSet::new();
    let mut acked_dels: Vec<(usize, &str, i64, i64)> = cx
        .dels
        .iter()
        .flat_map(|(key, v)| {
            v.iter()
                .filter(|d| d.3)
                .map(move |&(i, lo, hi, _)| (i, *key, lo, hi))
        })
        .collect();
    acked_dels.sort_unstable();
    let mut found = Vec::new();
    for (s, stream) in cx.watches.iter().enumerate() {
        for (g, seg) in stream.segments.iter().enumerate() {
            let mut last = i64::MIN;
            for (e, ev) in seg.events.iter().enumerate() {
                if ev.rev <= last || ev.rev < seg.from {
                    found.push(Anomaly::WatchReordered {
                        stream: s,
                        segment: g,
                        event: e,
                        rev: ev.rev,
                        previous: last,
                    });
                }
                last = last.max(ev.rev);
            }
            if seg.events.is_empty() || seg.from > last {
                // Nothing covered (events below `from` were reported).
                continue;
            }
            let revs: HashSet<i64> = seg.events.iter().map(|e| e.rev).collect();
            let mut del_events: HashMap<&str, Vec<i64>> = HashMap::new();
            for e in seg.events.iter().filter(|e| e.body.is_none()) {
                del_events.entry(e.key.as_str()).or_default().push(e.rev);
            }
            for v in del_events.values_mut() {
                v.sort_unstable();
            }
            for (&rev, fact) in cx.facts.range(seg.from..=last) {
                if revs.contains(&rev) {
                    continue;
                }
                match fact.op {
                    Some(i) if cx.acked_set(i) && !watched.contains(&rev) => {
                        if lost.insert(i) {
                            let event = seg.events.partition_point(|e| e.rev < rev);
                            found.push(Anomaly::LostWrite {
                                op: cx.id(i),
                                rev: Some(rev),
                                evidence: Witness::Watch {
                                    stream: s,
                                    segment: g,
                                    event,
                                },
                            });
                        }
                    }
                    _ => found.push(Anomaly::WatchSkipped {
                        stream: s,
                        segment: g,
                        rev,
                        known: fact.witness,
                    }),
                }
            }
            // An acknowledged DEL whose whole rev window the segment covers
            // must show as a DEL event of its key.
            for &(d, key, lo, hi) in &acked_dels {
                if seg.from > lo || last < hi || lost.contains(&d) {
                    continue;
                }
                let seen = del_events.get(key).is_some_and(|revs| {
                    let n = revs.partition_point(|r| *r < lo);
                    revs.get(n).is_some_and(|r| *r <= hi)
                });
                if !seen {
                    lost.insert(d);
                    let event = seg.events.partition_point(|e| e.rev < lo);
                    found.push(Anomaly::LostWrite {
                        op: cx.id(d),
                        rev: None,
                        evidence: Witness::Watch {
                            stream: s,
                            segment: g,
                            event,
                        },
                    });
                }
            }
        }
    }
    cx.anomalies.extend(found);
}

/// Finals: agree with each other at one rev, and with every write known at
/// or below their rev.
fn final_states(cx: &mut Ctx<'_>) {
    let ops = cx.ops;
    let maps: Vec<BTreeMap<&str, (i64, &[u8])>> = cx
        .finals
        .iter()
        .map(|f| {
            f.files
                .iter()
                .map(|(k, r, b)| (k.as_str(), (*r, b.as_slice())))
                .collect()
        })
        .collect();
    let mut found = Vec::new();
    for i in 0..cx.finals.len() {
        if let Some(j) = (0..i).find(|&j| cx.finals[j].rev == cx.finals[i].rev) {
            if maps[i] != maps[j] {
                found.push(Anomaly::Divergence {
                    rev: cx.finals[i].rev,
                    a: Witness::Final { index: j },
                    b: Witness::Final { index: i },
                });
            }
        }
    }
    let mut keys: Vec<&str> = cx.key_facts.keys().copied().collect();
    keys.extend(ops.iter().map(key_of));
    keys.sort_unstable();
    keys.dedup();
    for (f, fin) in cx.finals.iter().enumerate() {
        let view = &maps[f];
        for &key in &keys {
            let revs = cx.key_facts.get(key).map_or(&[][..], |v| v.as_slice());
            let below = revs.partition_point(|r| *r <= fin.rev);
            let dels = cx.del_windows(key);
            if let Some(last) = below.checked_sub(1).map(|j| revs[j]) {
                let fact = cx.facts[&last];
                let wrong = match view.get(key) {
                    Some(&(fr, _)) => fr < last,
                    None => {
                        fact.body.is_some()
                            && !dels
                                .iter()
                                .any(|&(_, lo, hi, _)| lo <= fin.rev && hi > last)
                    }
                };
                // Two finals at one rev that differ are one divergence.
                let twin = matches!(fact.witness, Witness::Final { index }
                    if cx.finals[index].rev == fin.rev && maps[index] != *view);
                if wrong && !twin {
                    found.push(match fact.op {
                        Some(i) if cx.acked_set(i) => Anomaly::LostWrite {
                            op: ops[i].id,
                            rev: Some(last),
                            evidence: Witness::Final { index: f },
                        },
                        _ => Anomaly::FinalMismatch {
                            index: f,
                            key: key.to_string(),
                            expected: fact.body.map(|b| (last, b.to_vec())),
                            known: fact.witness,
                        },
                    });
                    continue;
                }
            }
            // An acknowledged DEL surely after the file the final shows,
            // and surely at or below the final's rev.
            if let Some(&(fr, _)) = view.get(key) {
                if let Some(&(d, _, _, _)) = dels
                    .iter()
                    .find(|&&(_, lo, hi, acked)| acked && fr < lo && hi <= fin.rev)
                {
                    found.push(Anomaly::LostWrite {
                        op: ops[d].id,
                        rev: None,
                        evidence: Witness::Final { index: f },
                    });
                }
            }
        }
    }
    cx.anomalies.extend(found);
}

/// Whether the watch segments together saw every rev from `lo` to `top`.
fn covered_to_end(ranges: &[(i64, i64)], lo: i64, top: i64) -> bool {
    // `ranges` sorted by start: extend the covered prefix `[lo, reach)`; a
    // range starting beyond it leaves a gap no later range fills.
    let mut reach = lo;
    for &(from, to) in ranges {
        if reach > top {
            break;
        }
        if from > reach {
            return false;
        }
        reach = reach.max(to.saturating_add(1));
    }
    reach > top
}

/// The per-key searches, chunk by chunk.
fn searches(cx: &mut Ctx<'_>, stats: &mut Stats, budget: u64) {
    let ops = cx.ops;
    let mut ranges: Vec<(i64, i64)> = cx
        .watches
        .iter()
        .flat_map(|w| w.segments.iter())
        .filter_map(|g| g.events.iter().map(|e| e.rev).max().map(|m| (g.from, m)))
        .collect();
    ranges.sort_unstable();
    // A write nobody saw never happened if the streams together saw every
    // rev from where it could be up to the highest final: finals are read
    // after every op ended, so a write above them could not have come
    // before any op. No finals: nothing can be ruled out.
    let top = cx.finals.iter().map(|f| f.rev).max();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(key_of(op)).or_default().push(i);
    }
    stats.keys = by_key.len();
    for (key, indexes) in by_key {
        let mut sops: Vec<SOp> = Vec::new();
        for &i in &indexes {
            let op = &ops[i];
            let end = Some(done(op));
            let sop = |end: Option<Time>, kind: SKind| SOp {
                index: i,
                invoked: op.invoked,
                end,
                kind,
            };
            match &op.kind {
                OpKind::Get { key, body, rev } => {
                    if cx.flagged.contains(&i) {
                        continue;
                    }
                    let present = if *rev == 0 {
                        Present::Absent
                    } else {
                        match cx.writer.get(&(key.as_str(), body.as_slice())) {
                            Some(&w) => Present::Body(w),
                            None => continue,
                        }
                    };
                    sops.push(sop(end, SKind::Read { present, rev: *rev }));
                }
                OpKind::Set { check, outcome, .. } | OpKind::Del { check, outcome, .. } => {
                    let is_set = matches!(op.kind, OpKind::Set { .. });
                    let check = *check;
                    match outcome {
                        Outcome::Refused => {}
                        Outcome::Mismatch => {
                            if check == -1 {
                                cx.anomalies.push(Anomaly::UnexplainedRefusal { op: op.id });
                            } else {
                                sops.push(sop(end, SKind::Mismatch { check }));
                            }
                        }
                        Outcome::Ok(_) | Outcome::Unknown => {
                            let acked = matches!(outcome, Outcome::Ok(_));
                            if is_set {
                                if let Some(rev) = cx.set_rev[i] {
                                    let end = if acked { end } else { Some(cx.eff_end(rev)) };
                                    sops.push(sop(
                                        end,
                                        SKind::Write {
                                            present: Present::Body(i),
                                            check,
                                            lo: rev,
                                            hi: rev,
                                        },
                                    ));
                                    continue;
                                }
                            }
                            let (lo, hi) = cx.window(op, acked);
                            let present = if is_set {
                                // Unseen: visible to no read.
                                if !acked && top.is_some_and(|top| covered_to_end(&ranges, lo, top))
                                {
                                    continue;
                                }
                                Present::Invisible
                            } else {
                                Present::Absent
                            };
                            let end = if acked { end } else { None };
                            sops.push(sop(
                                end,
                                SKind::Write {
                                    present,
                                    check,
                                    lo,
                                    hi,
                                },
                            ));
                        }
                    }
                }
            }
        }
        sops.sort_by_key(|s| (s.invoked, s.index));
        search_key(cx, stats, key, sops, budget);
    }
}

/// Cuts one key's ops into chunks at quiescent points and searches each.
fn search_key(cx: &mut Ctx<'_>, stats: &mut Stats, key: &str, sops: Vec<SOp>, budget: u64) {
    let mut budget = budget;
    let mut starts = vec![State::initial()];
    let mut floating = (0u8, 0u8);
    let mut begin = 0;
    while begin < sops.len() {
        // Extend the chunk while some required op is still open.
        let mut end_time = sops[begin].end.unwrap_or(0);
        let mut stop = begin + 1;
        while stop < sops.len() && sops[stop].invoked <= end_time {
            end_time = end_time.max(sops[stop].end.unwrap_or(0));
            stop += 1;
        }
        let chunk = &sops[begin..stop];
        begin = stop;
        stats.chunks += 1;
        stats.largest_chunk = stats.largest_chunk.max(chunk.len());
        let mut explored = 0;
        let outcome = search::search(chunk, &starts, floating, &mut budget, &mut explored);
        stats.states += explored;
        let inconclusive = |cx: &mut Ctx<'_>, stats: &mut Stats, explored: u64| {
            stats.budget_hit = true;
            cx.anomalies.push(Anomaly::Inconclusive {
                key: key.to_string(),
                from: chunk[0].invoked,
                ops: chunk.len(),
                explored,
            });
        };
        match outcome {
            search::Outcome::Ends(ends) => starts = ends,
            search::Outcome::Inconclusive => {
                inconclusive(cx, stats, explored);
                return;
            }
            search::Outcome::Fails { longest, stuck } => {
                match diagnose(cx, chunk, &starts, floating, &mut budget, stats) {
                    Diagnosis::Named(anomaly, ends) => {
                        cx.anomalies.push(anomaly);
                        starts = ends;
                    }
                    Diagnosis::OutOfBudget => {
                        inconclusive(cx, stats, explored);
                        return;
                    }
                    Diagnosis::Unnamed => {
                        cx.anomalies.push(Anomaly::NotLinearizable {
                            key: key.to_string(),
                            from: chunk[0].invoked,
                            to: end_time,
                            ops: chunk.iter().map(|s| cx.ops[s.index].id).collect(),
                            stuck: stuck.iter().map(|&i| cx.ops[i].id).collect(),
                            longest,
                        });
                        starts = restart_states(chunk, &starts, floating, &mut budget, stats);
                    }
                }
            }
        }
        for op in chunk {
            if op.end.is_none() {
                if let SKind::Write { present, .. } = op.kind {
                    if present == Present::Absent {
                        floating.1 = floating.1.saturating_add(1);
                    } else {
                        floating.0 = floating.0.saturating_add(1);
                    }
                }
            }
        }
    }
}

enum Diagnosis {
    /// Relaxing one op's check makes the chunk pass: the anomaly naming it,
    /// and the relaxed chunk's end states.
    Named(Anomaly, Vec<State>),
    Unnamed,
    OutOfBudget,
}

/// Finds the one conditional op whose check outcome nothing explains.
fn diagnose(
    cx: &Ctx<'_>,
    chunk: &[SOp],
    starts: &[State],
    floating: (u8, u8),
    budget: &mut u64,
    stats: &mut Stats,
) -> Diagnosis {
    let suspects: Vec<usize> = chunk
        .iter()
        .enumerate()
        .filter(|(_, s)| match s.kind {
            SKind::Mismatch { .. } => true,
            SKind::Write { check, .. } => check != -1 && s.end.is_some(),
            SKind::Read { .. } => false,
        })
        .map(|(j, _)| j)
        .take(MAX_RELAXATIONS)
        .collect();
    for j in suspects {
        let mut relaxed = chunk.to_vec();
        let anomaly = match relaxed[j].kind {
            SKind::Mismatch { .. } => {
                relaxed.remove(j);
                Anomaly::UnexplainedRefusal {
                    op: cx.ops[chunk[j].index].id,
                }
            }
            SKind::Write { ref mut check, .. } => {
                *check = -1;
                Anomaly::CheckShouldHaveFailed {
                    op: cx.ops[chunk[j].index].id,
                }
            }
            SKind::Read { .. } => continue,
        };
        let mut explored = 0;
        let outcome = search::search(&relaxed, starts, floating, budget, &mut explored);
        stats.states += explored;
        match outcome {
            search::Outcome::Ends(ends) => return Diagnosis::Named(anomaly, ends),
            search::Outcome::Inconclusive => return Diagnosis::OutOfBudget,
            search::Outcome::Fails { .. } => {}
        }
    }
    Diagnosis::Unnamed
}

/// Where to go on from after a chunk with an anomaly: its writes alone
/// (reads and checks dropped), else the last known write or absence.
fn restart_states(
    chunk: &[SOp],
    starts: &[State],
    floating: (u8, u8),
    budget: &mut u64,
    stats: &mut Stats,
) -> Vec<State> {
    let writes: Vec<SOp> = chunk
        .iter()
        .filter_map(|s| match s.kind {
            SKind::Write {
                present, lo, hi, ..
            } => Some(SOp {
                kind: SKind::Write {
                    present,
                    check: -1,
                    lo,
                    hi,
                },
                ..s.clone()
            }),
            _ => None,
        })
        .collect();
    let mut explored = 0;
    let outcome = search::search(&writes, starts, floating, budget, &mut explored);
    stats.states += explored;
    if let search::Outcome::Ends(ends) = outcome {
        return ends;
    }
    let mut states = vec![State::initial()];
    if let Some((present, rev)) = chunk
        .iter()
        .filter_map(|s| match s.kind {
            SKind::Write {
                present, lo, hi, ..
            } if lo == hi => Some((present, lo)),
            _ => None,
        })
        .max_by_key(|&(_, rev)| rev)
    {
        states.push(State::exact(present, rev));
        states.push(State::exact(Present::Absent, rev));
    }
    states
}
