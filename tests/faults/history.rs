//! What a run records — client operations, WAIT streams, the final reads —
//! in the shape `doozer::lincheck` takes, and how it is judged and saved.
//!
//! The types mirror the checker's API one to one (see `judge`), so the
//! harness keeps its own record while the checker evolves and a failing
//! run's files read the same either way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use doozer::lincheck;

use crate::precheck;

pub use doozer::lincheck::{
    Final, Op, OpKind, Outcome, Time, WatchEvent, WatchSegment, WatchStream,
};

/// What the checkers said: one line per anomaly, and the report.
pub struct Judgement {
    /// `doozer::lincheck`'s anomalies, then the cross-check's.
    pub anomalies: Vec<String>,
    pub lincheck: usize,
    pub precheck: usize,
    /// A search ran out of budget (neither pass nor proof).
    pub inconclusive: bool,
    pub report: String,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `doozer::lincheck` and the cross-check on the record.
pub fn judge(ops: &[Op], watches: &[WatchStream], finals: &[Final]) -> Judgement {
    let report = lincheck::check(ops, watches, finals);
    let inconclusive = report
        .anomalies
        .iter()
        .any(|a| matches!(a, lincheck::Anomaly::Inconclusive { .. }));
    let mut lines: Vec<String> = if report.details.len() == report.anomalies.len() {
        report.details.clone()
    } else {
        report.anomalies.iter().map(|a| format!("{a:?}")).collect()
    };
    let pre = precheck(ops, watches, finals);
    let (lincheck_n, precheck_n) = (lines.len(), pre.len());
    lines.extend(pre.into_iter().map(|a| format!("precheck: {a}")));
    let mut text = format!("lincheck: {}\n", report.detailed());
    let _ = writeln!(
        text,
        "precheck: {precheck_n} anomalies (op ids {} and up: DELs known only from the watch streams, by rev)",
        ops.len()
    );
    let by_id: HashMap<usize, &Op> = ops.iter().map(|o| (o.id, o)).collect();
    for a in &lines[lincheck_n..] {
        let _ = writeln!(text, "{a}");
        for id in referenced_ops(a) {
            if let Some(op) = by_id.get(&id) {
                let _ = write!(text, "    {}", format_ops(std::slice::from_ref(op)));
            }
        }
    }
    Judgement {
        anomalies: lines,
        lincheck: lincheck_n,
        precheck: precheck_n,
        inconclusive,
        report: text,
    }
}

/// The cross-check: `precheck::check` on the ops (with the revs the watch
/// streams give DELs and writes of unknown outcome), plus divergence of the
/// finals and order and gaps of the watch streams.
fn precheck(ops: &[Op], watches: &[WatchStream], finals: &[Final]) -> Vec<String> {
    // What the WAIT streams saw: the rev of every SET body, every DEL.
    let mut set_seen: HashMap<(&str, &[u8]), i64> = HashMap::new();
    let mut del_seen: BTreeMap<i64, &str> = BTreeMap::new();
    for ev in watches
        .iter()
        .flat_map(|w| &w.segments)
        .flat_map(|s| &s.events)
    {
        match &ev.body {
            Some(b) => {
                set_seen.insert((ev.key.as_str(), b.as_slice()), ev.rev);
            }
            None => {
                del_seen.insert(ev.rev, ev.key.as_str());
            }
        }
    }
    let mut anomalies: Vec<String> = Vec::new();
    let mut history: Vec<precheck::Op> = Vec::with_capacity(ops.len() + del_seen.len());
    for op in ops {
        let mut converted = to_checker(op);
        if let OpKind::Set {
            key, body, outcome, ..
        } = &op.kind
        {
            let seen = set_seen.get(&(key.as_str(), body.as_slice()));
            match (outcome, seen) {
                // A write of unknown outcome that a watcher saw: its rev.
                (Outcome::Unknown, Some(rev)) => {
                    if let precheck::OpKind::Write { rev: r, .. } = &mut converted.kind {
                        *r = Some(*rev);
                    }
                }
                (Outcome::Refused | Outcome::Mismatch, Some(rev)) => anomalies.push(format!(
                    "RefusedButApplied: op {} (SET {key} refused) seen by a watcher at rev {rev}",
                    op.id
                )),
                (Outcome::Ok(Some(acked)), Some(rev)) if acked != rev => anomalies.push(format!(
                    "WrongRev: op {} acknowledged at rev {acked}, seen by a watcher at rev {rev}",
                    op.id
                )),
                _ => {}
            }
        }
        history.push(converted);
    }
    // A DEL's reply carries no rev; the watchers tell it. Each becomes a
    // write known only by its rev (no real-time bound), numbered after the
    // history's ops.
    for (n, (rev, key)) in del_seen.iter().enumerate() {
        history.push(precheck::Op {
            id: ops.len() + n,
            invoked: 0,
            completed: None,
            kind: precheck::OpKind::Write {
                key: key.to_string(),
                body: None,
                rev: Some(*rev),
                refused: false,
            },
        });
    }
    // A SET body no client sent.
    let sent: HashSet<(&str, &[u8])> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Set { key, body, .. } => Some((key.as_str(), body.as_slice())),
            _ => None,
        })
        .collect();
    for ((key, body), rev) in &set_seen {
        if !sent.contains(&(*key, *body)) {
            anomalies.push(format!(
                "PhantomEvent: a watcher saw SET {key} {:?} at rev {rev}, which no client sent",
                text(body)
            ));
        }
    }
    anomalies.extend(precheck::check(&history).iter().map(|a| format!("{a:?}")));
    // Until the checker reads the watch streams and the finals itself, the
    // two simplest checks on them run here: no divergence, no reordering.
    anomalies.extend(check_finals(finals));
    anomalies.extend(check_watches(ops, watches));
    anomalies
}

fn to_checker(op: &Op) -> precheck::Op {
    let kind = match &op.kind {
        OpKind::Set {
            key, body, outcome, ..
        } => precheck::OpKind::Write {
            key: key.clone(),
            body: Some(body.clone()),
            rev: match outcome {
                Outcome::Ok(rev) => *rev,
                _ => None,
            },
            refused: matches!(outcome, Outcome::Refused | Outcome::Mismatch),
        },
        OpKind::Del { key, outcome, .. } => precheck::OpKind::Write {
            key: key.clone(),
            body: None,
            rev: None,
            refused: matches!(outcome, Outcome::Refused | Outcome::Mismatch),
        },
        OpKind::Get { key, body, rev } => precheck::OpKind::Read {
            key: key.clone(),
            body: body.clone(),
            rev: *rev,
        },
    };
    precheck::Op {
        id: op.id,
        invoked: op.invoked,
        completed: op.completed,
        kind,
    }
}

/// Every node read the same files at the same rev.
fn check_finals(finals: &[Final]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(first) = finals.first() {
        for f in &finals[1..] {
            if f.rev == first.rev && f.files != first.files {
                out.push(format!(
                    "Divergence at rev {}: {} has {:?}, {} has {:?}",
                    f.rev,
                    first.node,
                    show_files(&first.files),
                    f.node,
                    show_files(&f.files)
                ));
            }
        }
    }
    out
}

fn show_files(files: &[(String, i64, Vec<u8>)]) -> Vec<String> {
    files
        .iter()
        .map(|(k, r, b)| format!("{k}@{r}={}", text(b)))
        .collect()
}

/// Within a segment revs rise; an event at the rev of an acknowledged SET
/// names that SET's key and body; no acknowledged SET of a watched key falls
/// between two events of one segment unseen.
fn check_watches(ops: &[Op], watches: &[WatchStream]) -> Vec<String> {
    let mut acked: BTreeMap<i64, (&str, &[u8])> = BTreeMap::new();
    for op in ops {
        if let OpKind::Set {
            key,
            body,
            outcome: Outcome::Ok(Some(rev)),
            ..
        } = &op.kind
        {
            acked.insert(*rev, (key.as_str(), body.as_slice()));
        }
    }
    let mut out = Vec::new();
    for stream in watches {
        for seg in &stream.segments {
            let mut last = seg.from - 1;
            for ev in &seg.events {
                if ev.rev <= last {
                    out.push(format!(
                        "WatchReordered: {} event rev {} after rev {last}",
                        stream.node, ev.rev
                    ));
                }
                if let Some((k, b)) = acked.get(&ev.rev) {
                    if *k != ev.key || ev.body.as_deref() != Some(*b) {
                        out.push(format!(
                            "WatchWrongEvent: {} rev {} {} {:?}, acknowledged SET {k} {}",
                            stream.node,
                            ev.rev,
                            ev.key,
                            ev.body.as_deref().map(text),
                            text(b)
                        ));
                    }
                }
                if let Some((skipped, (k, _))) = acked.range(last + 1..ev.rev).next() {
                    out.push(format!(
                        "WatchSkipped: {} went from rev {last} to {} past acknowledged SET {k} at {skipped}",
                        stream.node, ev.rev
                    ));
                }
                last = last.max(ev.rev);
            }
        }
    }
    out
}

/// One op per line, readable: `#id c=client [invoked..completed] VERB …`.
pub fn format_ops(ops: &[Op]) -> String {
    let mut s = String::new();
    for op in ops {
        let done = op
            .completed
            .map(|t| format!("{:.6}", t as f64 / 1e9))
            .unwrap_or_else(|| "-".into());
        let what = match &op.kind {
            OpKind::Set {
                key,
                body,
                check,
                outcome,
            } => format!("SET {key} {:?} check={check} -> {outcome:?}", text(body)),
            OpKind::Del {
                key,
                check,
                outcome,
            } => format!("DEL {key} check={check} -> {outcome:?}"),
            OpKind::Get { key, body, rev } => format!("GET {key} -> {:?} rev={rev}", text(body)),
        };
        let _ = writeln!(
            s,
            "#{} c={} [{:.6} .. {done}] {what}",
            op.id,
            op.client,
            op.invoked as f64 / 1e9
        );
    }
    s
}

pub fn format_watches(watches: &[WatchStream]) -> String {
    let mut s = String::new();
    for w in watches {
        let _ = writeln!(s, "stream {}", w.node);
        for seg in &w.segments {
            let _ = writeln!(s, "  segment from {}", seg.from);
            for ev in &seg.events {
                let _ = writeln!(
                    s,
                    "    {} {} {}",
                    ev.rev,
                    ev.key,
                    ev.body
                        .as_deref()
                        .map(|b| format!("{:?}", text(b)))
                        .unwrap_or_else(|| "DEL".into())
                );
            }
        }
    }
    s
}

pub fn format_finals(finals: &[Final]) -> String {
    let mut s = String::new();
    for f in finals {
        let _ = writeln!(s, "{} at rev {}: {:?}", f.node, f.rev, show_files(&f.files));
    }
    s
}

/// The op ids an anomaly's text names (`read: 12`, `newer: 7`, `op 3`, …).
fn referenced_ops(anomaly: &str) -> Vec<usize> {
    let mut ids = Vec::new();
    for label in [
        "read: ",
        "newer: ",
        "write: ",
        "earlier: ",
        "later: ",
        "ops: (",
        "op ",
    ] {
        for (at, _) in anomaly.match_indices(label) {
            let rest = &anomaly[at + label.len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(id) = digits.parse() {
                ids.push(id);
            }
        }
    }
    ids
}
