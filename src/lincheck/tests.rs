//! Tests of the checker itself: each plants one anomaly in an otherwise
//! valid history and asserts exactly it is found; valid tricky histories
//! pass; random histories from the sequential model pass, and a read turned
//! stale in them is caught.

use super::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn op(id: usize, t: (Time, Option<Time>), kind: OpKind) -> Op {
    Op {
        id,
        client: id % 8,
        invoked: t.0,
        completed: t.1,
        kind,
    }
}

fn set(id: usize, t: (Time, Time), key: &str, body: &str, check: i64, rev: i64) -> Op {
    set_outcome(id, t, key, body, check, Outcome::Ok(Some(rev)))
}

fn set_outcome(
    id: usize,
    t: (Time, Time),
    key: &str,
    body: &str,
    check: i64,
    outcome: Outcome,
) -> Op {
    let done = (outcome != Outcome::Unknown).then_some(t.1);
    op(
        id,
        (t.0, done),
        OpKind::Set {
            key: key.into(),
            body: body.as_bytes().to_vec(),
            check,
            outcome,
        },
    )
}

fn del(id: usize, t: (Time, Time), key: &str, check: i64, outcome: Outcome) -> Op {
    let done = (outcome != Outcome::Unknown).then_some(t.1);
    op(
        id,
        (t.0, done),
        OpKind::Del {
            key: key.into(),
            check,
            outcome,
        },
    )
}

fn get(id: usize, t: (Time, Time), key: &str, body: &str, rev: i64) -> Op {
    op(
        id,
        (t.0, Some(t.1)),
        OpKind::Get {
            key: key.into(),
            body: body.as_bytes().to_vec(),
            rev,
        },
    )
}

fn ev(rev: i64, key: &str, body: Option<&str>) -> WatchEvent {
    WatchEvent {
        rev,
        key: key.into(),
        body: body.map(|b| b.as_bytes().to_vec()),
    }
}

fn stream(node: &str, segments: Vec<(i64, Vec<WatchEvent>)>) -> WatchStream {
    WatchStream {
        node: node.into(),
        segments: segments
            .into_iter()
            .map(|(from, events)| WatchSegment { from, events })
            .collect(),
    }
}

fn fin(node: &str, rev: i64, files: &[(&str, i64, &str)]) -> Final {
    Final {
        node: node.into(),
        rev,
        files: files
            .iter()
            .map(|(k, r, b)| (k.to_string(), *r, b.as_bytes().to_vec()))
            .collect(),
    }
}

/// Checks and prints the detailed report (shown when a test fails).
fn run(ops: &[Op], watches: &[WatchStream], finals: &[Final]) -> Report {
    let report = check(ops, watches, finals);
    println!("{}", report.detailed());
    assert_eq!(report.details.len(), report.anomalies.len());
    report
}

#[test]
fn a_tricky_valid_history_passes() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        // Concurrent with the next write: either value is fine.
        set(1, (2, 20), "a", "2", 5, 6),
        get(2, (11, 19), "a", "1", 5),
        get(3, (12, 25), "a", "2", 6),
        // Another key, absent at first, created only if absent.
        get(4, (0, 1), "b", "", 0),
        set(5, (21, 30), "b", "x", 0, 7),
        get(6, (31, 40), "b", "x", 7),
        // A write of unknown outcome that a read saw later.
        set_outcome(7, (41, 0), "b", "y", -1, Outcome::Unknown),
        get(8, (50, 60), "b", "y", 9),
        // A refusal explained by a write concurrent with it: check 6 fails
        // once op 10's rev 12 is in.
        set(10, (61, 70), "a", "3", -1, 12),
        set_outcome(9, (62, 72), "a", "4", 6, Outcome::Mismatch),
        // A DEL placed only by the search (no rev), then an absent read and
        // a create-only SET that needs the absence.
        del(11, (80, 90), "a", 12, Outcome::Ok(None)),
        get(12, (91, 95), "a", "", 0),
        set(13, (96, 99), "a", "5", 0, 14),
        // A write of unknown outcome nobody saw, and a DEL of unknown
        // outcome that explains a later absent read.
        set_outcome(14, (100, 0), "c", "ghost", -1, Outcome::Unknown),
        set(15, (101, 102), "c", "real", -1, 15),
        del(16, (103, 0), "c", -1, Outcome::Unknown),
        get(17, (200, 210), "c", "", 0),
        // A refused write of no consequence.
        set_outcome(18, (211, 212), "c", "nope", -1, Outcome::Refused),
    ];
    let watches = vec![stream(
        "n1",
        vec![(
            1,
            vec![
                ev(5, "a", Some("1")),
                ev(6, "a", Some("2")),
                ev(7, "b", Some("x")),
                ev(9, "b", Some("y")),
                ev(12, "a", Some("3")),
                ev(13, "a", None),
                ev(14, "a", Some("5")),
                ev(15, "c", Some("real")),
                ev(16, "c", None),
            ],
        )],
    )];
    let finals = vec![
        fin("n1", 20, &[("a", 14, "5"), ("b", 9, "y")]),
        fin("n2", 20, &[("a", 14, "5"), ("b", 9, "y")]),
    ];
    let report = run(&ops, &watches, &finals);
    assert_eq!(report.anomalies, vec![]);
    assert!(report.passed());
    assert!(report.to_string().starts_with("verdict=PASS"));
}

#[test]
fn a_planted_stale_read_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 20), "a", "2", -1, 6),
        // Began after rev 6 was acknowledged, yet saw rev 5.
        get(2, (21, 30), "a", "1", 5),
    ];
    let report = run(&ops, &[], &[]);
    assert_eq!(
        report.anomalies,
        vec![Anomaly::StaleRead {
            read: 2,
            rev: 5,
            newer: Some(1),
            newer_rev: 6
        }]
    );
    assert!(report.details[0].contains("op 2 [client 2"));
    let text = format!("{report:#}");
    assert!(text.starts_with("verdict=FAIL anomalies=1 "), "{text}");
    assert!(text.contains("\n  stale read: op 2 [client 2, "), "{text}");
    // A write to another key acknowledged before the read bounds it too.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 20), "a", "2", -1, 6),
        set(2, (11, 22), "b", "z", -1, 7),
        get(3, (23, 30), "a", "1", 5),
    ];
    assert!(matches!(
        run(&ops, &[], &[]).anomalies[..],
        [Anomaly::StaleRead { read: 3, .. }]
    ));
}

#[test]
fn a_stale_read_only_the_search_sees_is_caught() {
    // The read began before rev 6 was acknowledged, so the revs alone allow
    // it; but a read that completed before it began already saw rev 6.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 40), "a", "2", -1, 6),
        get(2, (12, 20), "a", "2", 6),
        get(3, (21, 30), "a", "1", 5),
    ];
    let found = run(&ops, &[], &[]).anomalies;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        matches!(&found[0], Anomaly::StaleRead { read: 3, .. }),
        "{found:?}"
    );
    // Same, but the earlier read's evidence does not reach the floor: a
    // DEL of unknown rev sits between, so only the search sees it.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        del(1, (11, 40), "a", -1, Outcome::Ok(None)),
        get(2, (12, 20), "a", "", 0),
        get(3, (21, 30), "a", "1", 5),
    ];
    let found = run(&ops, &[], &[]).anomalies;
    assert!(
        matches!(&found[..], [Anomaly::NotLinearizable { stuck, .. }] if stuck.contains(&3)),
        "{found:?}"
    );
}

#[test]
fn a_planted_lost_write_is_caught() {
    // Rev 6 was acknowledged, then lost: the stream covering it lacks it
    // and the final shows the older value.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 20), "a", "2", -1, 6),
        set(2, (21, 30), "b", "3", -1, 7),
    ];
    let watches = vec![stream(
        "n1",
        vec![(1, vec![ev(5, "a", Some("1")), ev(7, "b", Some("3"))])],
    )];
    let finals = vec![fin("n1", 7, &[("a", 5, "1"), ("b", 7, "3")])];
    let found = run(&ops, &watches, &finals).anomalies;
    assert_eq!(
        found,
        vec![Anomaly::LostWrite {
            op: 1,
            rev: Some(6),
            evidence: Witness::Watch {
                stream: 0,
                segment: 0,
                event: 1
            }
        }]
    );
    // The final alone shows it too.
    let found = run(&ops, &[], &finals).anomalies;
    assert_eq!(
        found,
        vec![Anomaly::LostWrite {
            op: 1,
            rev: Some(6),
            evidence: Witness::Final { index: 0 }
        }]
    );
    // A lost acknowledged DEL: the final still shows the file it deleted.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        del(1, (11, 20), "a", -1, Outcome::Ok(None)),
        set(2, (21, 30), "b", "3", -1, 7),
    ];
    let finals = vec![fin("n1", 7, &[("a", 5, "1"), ("b", 7, "3")])];
    assert_eq!(
        run(&ops, &[], &finals).anomalies,
        vec![Anomaly::LostWrite {
            op: 1,
            rev: None,
            evidence: Witness::Final { index: 0 }
        }]
    );
}

#[test]
fn reads_of_the_future_and_of_phantoms_are_caught() {
    let ops = vec![
        get(0, (0, 5), "a", "1", 5),
        set(1, (6, 10), "a", "1", -1, 5),
        get(2, (11, 12), "a", "nope", 5),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![
            Anomaly::PhantomRead { read: 2, rev: 5 },
            Anomaly::FutureRead { read: 0, write: 1 },
        ]
    );
    // A known body at a rev where another write is known.
    let ops = vec![
        set(0, (0, 5), "a", "1", -1, 5),
        set(1, (6, 10), "a", "2", -1, 6),
        get(2, (11, 12), "a", "2", 5),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![Anomaly::PhantomRead { read: 2, rev: 5 }]
    );
}

#[test]
fn absence_needs_a_del_that_fits() {
    // Explained only by a DEL of unknown rev (and unknown outcome).
    let mut ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        del(1, (20, 0), "a", -1, Outcome::Unknown),
        get(2, (30, 40), "a", "", 0),
    ];
    assert_eq!(run(&ops, &[], &[]).anomalies, vec![]);
    // Without it: stale.
    ops.remove(1);
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![Anomaly::StaleRead {
            read: 2,
            rev: 0,
            newer: Some(0),
            newer_rev: 5
        }]
    );
    // An acknowledged DEL surely before a later SET cannot explain an
    // absence after that SET.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        del(1, (20, 25), "a", -1, Outcome::Ok(None)),
        set(2, (26, 27), "a", "2", -1, 9),
        get(3, (30, 40), "a", "", 0),
    ];
    assert!(matches!(
        run(&ops, &[], &[]).anomalies[..],
        [Anomaly::StaleRead {
            read: 3,
            newer_rev: 9,
            ..
        }]
    ));
}

#[test]
fn a_conditional_set_whose_check_must_have_failed_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        // Create-only, yet the file existed since rev 5.
        set(1, (20, 30), "a", "2", 0, 7),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![Anomaly::CheckShouldHaveFailed { op: 1 }]
    );
    // Compare-and-set against a rev older than the file's.
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 12), "a", "2", -1, 6),
        set(2, (20, 30), "a", "3", 5, 7),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![Anomaly::CheckShouldHaveFailed { op: 2 }]
    );
}

#[test]
fn a_refusal_nothing_explains_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        // Check 5 against a file at rev 5 passes: no reason to refuse.
        set_outcome(1, (20, 30), "a", "2", 5, Outcome::Mismatch),
        // A clobber never mismatches.
        set_outcome(2, (31, 32), "a", "3", -1, Outcome::Mismatch),
        // A DEL too.
        del(3, (33, 34), "a", 5, Outcome::Mismatch),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![
            Anomaly::UnexplainedRefusal { op: 2 },
            Anomaly::UnexplainedRefusal { op: 1 },
            Anomaly::UnexplainedRefusal { op: 3 },
        ]
    );
    // A write of unknown outcome nobody saw may explain it (the watch
    // stream has a gap where it could be).
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set_outcome(1, (11, 0), "a", "ghost", -1, Outcome::Unknown),
        set_outcome(2, (20, 30), "a", "2", 5, Outcome::Mismatch),
    ];
    assert_eq!(run(&ops, &[], &[]).anomalies, vec![]);
    // Unless gap-free streams show it never happened, up to the final
    // state (read after every op ended).
    let watches = vec![stream(
        "n1",
        vec![(1, vec![ev(5, "a", Some("1")), ev(9, "x", None)])],
    )];
    assert_eq!(run(&ops, &watches, &[]).anomalies, vec![]);
    let finals = vec![fin("n1", 9, &[("a", 5, "1")])];
    assert_eq!(
        run(&ops, &watches, &finals).anomalies,
        vec![Anomaly::UnexplainedRefusal { op: 2 }]
    );
}

#[test]
fn refused_writes_that_took_effect_are_caught() {
    let ops = vec![
        set_outcome(0, (0, 10), "a", "1", -1, Outcome::Refused),
        get(1, (20, 30), "a", "1", 5),
    ];
    assert_eq!(
        run(&ops, &[], &[]).anomalies,
        vec![Anomaly::RefusedButApplied {
            op: 0,
            rev: 5,
            witness: Witness::Op(1)
        }]
    );
}

#[test]
fn a_wait_skip_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 20), "a", "2", -1, 6),
        set(2, (21, 30), "b", "3", -1, 7),
    ];
    let full = vec![
        ev(5, "a", Some("1")),
        ev(6, "a", Some("2")),
        ev(7, "b", Some("3")),
    ];
    let mut skipping = full.clone();
    skipping.remove(1);
    let watches = vec![
        stream("n1", vec![(1, full)]),
        stream("n2", vec![(1, skipping)]),
    ];
    assert_eq!(
        run(&ops, &watches, &[]).anomalies,
        vec![Anomaly::WatchSkipped {
            stream: 1,
            segment: 0,
            rev: 6,
            known: Witness::Op(1)
        }]
    );
    // A segment that starts after a lost place covers nothing before it.
    let watches = vec![stream(
        "n2",
        vec![
            (1, vec![ev(5, "a", Some("1"))]),
            (7, vec![ev(7, "b", Some("3"))]),
        ],
    )];
    assert_eq!(run(&ops, &watches, &[]).anomalies, vec![]);
}

#[test]
fn a_wait_reorder_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set(1, (11, 20), "a", "2", -1, 6),
        set(2, (21, 30), "b", "3", -1, 7),
    ];
    let watches = vec![stream(
        "n1",
        vec![(
            1,
            vec![
                ev(5, "a", Some("1")),
                ev(7, "b", Some("3")),
                ev(6, "a", Some("2")),
            ],
        )],
    )];
    assert_eq!(
        run(&ops, &watches, &[]).anomalies,
        vec![Anomaly::WatchReordered {
            stream: 0,
            segment: 0,
            event: 2,
            rev: 6,
            previous: 7
        }]
    );
}

#[test]
fn divergence_between_streams_and_between_finals_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 5),
        set_outcome(1, (11, 0), "a", "2", -1, Outcome::Unknown),
    ];
    // Two nodes disagree about rev 6 (the other claims a body no client
    // wrote).
    let watches = vec![
        stream(
            "n1",
            vec![(1, vec![ev(5, "a", Some("1")), ev(6, "a", Some("2"))])],
        ),
        stream(
            "n2",
            vec![(1, vec![ev(5, "a", Some("1")), ev(6, "a", Some("other"))])],
        ),
    ];
    assert_eq!(
        run(&ops, &watches, &[]).anomalies,
        vec![Anomaly::Divergence {
            rev: 6,
            a: Witness::Watch {
                stream: 0,
                segment: 0,
                event: 1
            },
            b: Witness::Watch {
                stream: 1,
                segment: 0,
                event: 1
            }
        }]
    );
    // A stream contradicting an acknowledged write: a DEL where the SET is.
    let watches = vec![stream("n1", vec![(1, vec![ev(5, "a", None)])])];
    assert_eq!(
        run(&ops[..1], &watches, &[]).anomalies,
        vec![Anomaly::Divergence {
            rev: 5,
            a: Witness::Op(0),
            b: Witness::Watch {
                stream: 0,
                segment: 0,
                event: 0
            }
        }]
    );
    // Two finals at one rev that differ.
    let finals = vec![
        fin("n1", 8, &[("a", 6, "2")]),
        fin("n2", 8, &[("a", 5, "1")]),
    ];
    assert_eq!(
        run(&ops, &[], &finals).anomalies,
        vec![Anomaly::Divergence {
            rev: 8,
            a: Witness::Final { index: 0 },
            b: Witness::Final { index: 1 }
        }]
    );
    // A final contradicting a stream: the stream saw rev 6 delete it.
    let watches = vec![stream(
        "n1",
        vec![(1, vec![ev(5, "a", Some("1")), ev(6, "a", None)])],
    )];
    let finals = vec![fin("n2", 8, &[("a", 5, "1")])];
    assert_eq!(
        run(&ops[..1], &watches, &finals).anomalies,
        vec![Anomaly::FinalMismatch {
            index: 0,
            key: "a".into(),
            expected: None,
            known: Witness::Watch {
                stream: 0,
                segment: 0,
                event: 1
            }
        }]
    );
}

#[test]
fn a_write_applied_twice_is_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "x", -1, 5),
        set(1, (11, 12), "b", "y", -1, 6),
    ];
    let watches = vec![stream(
        "n1",
        vec![(
            1,
            vec![
                ev(5, "a", Some("x")),
                ev(6, "b", Some("y")),
                ev(8, "a", Some("x")),
            ],
        )],
    )];
    assert_eq!(
        run(&ops, &watches, &[]).anomalies,
        vec![Anomaly::AppliedTwice {
            key: "a".into(),
            revs: (5, 8),
            a: Witness::Op(0),
            b: Witness::Watch {
                stream: 0,
                segment: 0,
                event: 2
            }
        }]
    );
}

#[test]
fn shared_revs_and_writes_out_of_order_are_caught() {
    let ops = vec![
        set(0, (0, 10), "a", "1", -1, 8),
        set(1, (11, 20), "b", "2", -1, 7),
        set(2, (21, 30), "c", "3", -1, 8),
    ];
    let found = run(&ops, &[], &[]).anomalies;
    assert_eq!(
        found,
        vec![
            Anomaly::SharedRev {
                rev: 8,
                a: Witness::Op(0),
                b: Witness::Op(2)
            },
            Anomaly::WritesOutOfOrder {
                earlier: 0,
                later: 1
            },
        ]
    );
}

#[test]
fn the_budget_turns_into_inconclusive() {
    // 24 concurrent DELs of unknown rev and 24 concurrent reads: the
    // search has ~2^48 orders to consider.
    let mut ops = vec![set(0, (0, 1), "a", "0", -1, 1)];
    for i in 1..=24 {
        ops.push(set_outcome(
            i,
            (2, 0),
            "a",
            &format!("v{i}"),
            -1,
            Outcome::Unknown,
        ));
        ops.push(del(100 + i, (2, 1000), "a", -1, Outcome::Ok(None)));
    }
    for i in 1..=24 {
        ops.push(get(200 + i, (3, 999), "a", "", 0));
    }
    let report = check_with(
        &ops,
        &[],
        &[],
        Limits {
            search_budget_bytes: 1 << 20,
        },
    );
    println!("{}", report.detailed());
    assert!(
        matches!(&report.anomalies[..], [Anomaly::Inconclusive { key, .. }] if key == "a"),
        "{:?}",
        report.anomalies
    );
    assert!(report.stats.budget_hit && !report.passed());
}

// ---- Random histories from the sequential model ----

/// A generated history with, per GET, whether it can be made stale.
struct Generated {
    ops: Vec<Op>,
    watches: Vec<WatchStream>,
    finals: Vec<Final>,
}

/// Runs `clients` clients for `per_client` ops each over `keys` keys
/// against the sequential model: each op takes effect at a random instant
/// of its interval, in that order; one write in `gap` also takes an extra
/// rev (doozer's internal writes). One write in `lose` loses its reply
/// (unknown outcome; half of those never took effect).
/// One op in `long` (0: none) takes 20-100 times longer (a paused node).
fn generate(
    seed: u64,
    clients: usize,
    keys: usize,
    per_client: usize,
    lose: u32,
    long: u32,
) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // (invocation, effect point, completion, client, what)
    struct Plan {
        invoked: Time,
        point: Time,
        done: Time,
        client: usize,
        key: String,
        what: u8,
        check_kind: u8,
        lost: bool,
        applies: bool,
    }
    let mut plans = Vec::new();
    for client in 0..clients {
        let mut t: Time = rng.random_range(0..50);
        for _ in 0..per_client {
            let invoked = t;
            let len = if long > 0 && rng.random_range(0..long) == 0 {
                rng.random_range(1200..6000)
            } else {
                rng.random_range(1..60)
            };
            let done = invoked + len;
            let point = rng.random_range(invoked..=done);
            let lost = lose > 0 && rng.random_range(0..lose) == 0;
            plans.push(Plan {
                invoked,
                point,
                done,
                client,
                key: format!("/k/{}", rng.random_range(0..keys)),
                what: rng.random_range(0..10),
                check_kind: rng.random_range(0..4),
                lost,
                applies: !lost || rng.random_bool(0.5),
            });
            t = done + rng.random_range(0..20);
        }
    }
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| (plans[i].point, i));
    let mut files: BTreeMap<String, (i64, Vec<u8>)> = BTreeMap::new();
    let mut rev = 0i64;
    let mut events = Vec::new();
    let mut ops: Vec<Option<Op>> = (0..plans.len()).map(|_| None).collect();
    let mut counter = 0;
    for i in order {
        let p = &plans[i];
        if rng.random_range(0..5) == 0 {
            rev += 1; // an internal write in between
        }
        let current = files.get(&p.key).map_or(0, |f| f.0);
        let check = match p.check_kind {
            0 | 1 => -1,
            2 => current,
            _ => {
                if current > 0 {
                    current - 1
                } else {
                    0
                }
            }
        };
        let passes = check == -1 || check >= current;
        let kind = if p.what < 5 {
            counter += 1;
            let body = format!("c{}-{counter}", p.client).into_bytes();
            let outcome = if p.lost {
                if p.applies && passes {
                    rev += 1;
                    files.insert(p.key.clone(), (rev, body.clone()));
                    events.push(WatchEvent {
                        rev,
                        key: p.key.clone(),
                        body: Some(body.clone()),
                    });
                }
                Outcome::Unknown
            } else if passes {
                rev += 1;
                files.insert(p.key.clone(), (rev, body.clone()));
                events.push(WatchEvent {
                    rev,
                    key: p.key.clone(),
                    body: Some(body.clone()),
                });
                Outcome::Ok(Some(rev))
            } else {
                rev += 1; // the /ctl/err write
                Outcome::Mismatch
            };
            OpKind::Set {
                key: p.key.clone(),
                body,
                check,
                outcome,
            }
        } else if p.what < 7 {
            let outcome = if p.lost {
                if p.applies && passes {
                    rev += 1;
                    files.remove(&p.key);
                    events.push(WatchEvent {
                        rev,
                        key: p.key.clone(),
                        body: None,
                    });
                }
                Outcome::Unknown
            } else if passes {
                rev += 1;
                files.remove(&p.key);
                events.push(WatchEvent {
                    rev,
                    key: p.key.clone(),
                    body: None,
                });
                Outcome::Ok(None)
            } else {
                rev += 1;
                Outcome::Mismatch
            };
            OpKind::Del {
                key: p.key.clone(),
                check,
                outcome,
            }
        } else {
            let (r, body) = files.get(&p.key).cloned().unwrap_or((0, Vec::new()));
            OpKind::Get {
                key: p.key.clone(),
                body,
                rev: r,
            }
        };
        let unknown = matches!(
            kind,
            OpKind::Set {
                outcome: Outcome::Unknown,
                ..
            } | OpKind::Del {
                outcome: Outcome::Unknown,
                ..
            }
        );
        ops[i] = Some(Op {
            id: i,
            client: p.client,
            invoked: p.invoked,
            completed: (!unknown).then_some(p.done),
            kind,
        });
    }
    let ops: Vec<Op> = ops
        .into_iter()
        .map(|o| o.expect("every op planned"))
        .collect();
    // One stream saw everything; another lost its place midway.
    let half = events.len() / 2;
    let restart = events.get(half).map_or(1, |e| e.rev);
    let watches = vec![
        WatchStream {
            node: "n1".into(),
            segments: vec![WatchSegment {
                from: 1,
                events: events.clone(),
            }],
        },
        WatchStream {
            node: "n2".into(),
            segments: vec![
                WatchSegment {
                    from: 1,
                    events: events[..half / 2].to_vec(),
                },
                WatchSegment {
                    from: restart,
                    events: events[half..].to_vec(),
                },
            ],
        },
    ];
    let finals = vec![Final {
        node: "n1".into(),
        rev,
        files: files.into_iter().map(|(k, (r, b))| (k, r, b)).collect(),
    }];
    Generated {
        ops,
        watches,
        finals,
    }
}

use std::collections::BTreeMap;

/// An acknowledged SET: (rev, body, completion).
type AckedSet<'a> = (i64, &'a [u8], Time);

/// Turns one GET into a stale read: one that began after a newer write to
/// its key than the one it saw was acknowledged. Returns its id.
fn make_stale(g: &mut Generated, rng: &mut ChaCha8Rng) -> Option<usize> {
    let ops = &g.ops;
    // Acknowledged SETs per key by rev: (rev, body, completed).
    let mut sets: BTreeMap<&str, Vec<AckedSet<'_>>> = BTreeMap::new();
    for op in ops {
        if let OpKind::Set {
            key,
            body,
            outcome: Outcome::Ok(Some(rev)),
            ..
        } = &op.kind
        {
            sets.entry(key)
                .or_default()
                .push((*rev, body, op.completed?));
        }
    }
    for v in sets.values_mut() {
        v.sort();
    }
    let mut candidates = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let OpKind::Get { key, .. } = &op.kind else {
            continue;
        };
        let Some(list) = sets.get(key.as_str()) else {
            continue;
        };
        // An older SET of the key than a SET acknowledged before this GET
        // began, and older than what it saw.
        let Some(&(newer, _, _)) = list
            .iter()
            .filter(|(_, _, done)| *done < op.invoked)
            .max_by_key(|(r, _, _)| *r)
        else {
            continue;
        };
        if let Some(&(old, body, _)) = list.iter().rev().find(|(r, _, _)| *r < newer) {
            candidates.push((i, old, body.to_vec()));
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (i, old, body) = candidates.swap_remove(rng.random_range(0..candidates.len()));
    let OpKind::Get { key, .. } = &g.ops[i].kind else {
        unreachable!()
    };
    g.ops[i].kind = OpKind::Get {
        key: key.clone(),
        body,
        rev: old,
    };
    Some(g.ops[i].id)
}

#[test]
fn random_linearizable_histories_pass_and_a_stale_read_in_them_is_caught() {
    let mut caught = 0;
    for seed in 0..300u64 {
        let lose = if seed % 3 == 0 { 0 } else { 8 };
        let mut g = generate(
            seed,
            2 + (seed % 5) as usize,
            1 + (seed % 3) as usize,
            30,
            lose,
            if seed % 4 == 0 { 10 } else { 0 },
        );
        let report = check(&g.ops, &g.watches, &g.finals);
        assert!(report.passed(), "seed {seed}: {}", report.detailed());
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let Some(stale) = make_stale(&mut g, &mut rng) else {
            continue;
        };
        let report = check(&g.ops, &g.watches, &g.finals);
        let names_it = report.anomalies.iter().any(|a| match a {
            Anomaly::StaleRead { read, .. } | Anomaly::PhantomRead { read, .. } => *read == stale,
            Anomaly::NotLinearizable { ops, .. } => ops.contains(&stale),
            _ => false,
        });
        assert!(
            names_it,
            "seed {seed}: stale op {stale} not named: {}",
            report.detailed()
        );
        caught += 1;
    }
    assert!(caught > 100, "only {caught} mutations planted");
}

#[test]
fn random_histories_with_a_lost_write_are_caught() {
    let mut caught = 0;
    for seed in 0..100u64 {
        let mut g = generate(seed, 3 + (seed % 4) as usize, 2, 30, 10, 0);
        // Lose one acknowledged SET: every stream forgets it, and so do the
        // GETs that saw it (dropped). One inside the streams' range, and
        // overwritten before the final (else the final shows it).
        let top = g.watches[0].segments[0].events.last().map_or(0, |e| e.rev);
        let in_final: Vec<i64> = g.finals[0].files.iter().map(|f| f.1).collect();
        let acked: Vec<(usize, i64, String)> = g
            .ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Set {
                    key,
                    outcome: Outcome::Ok(Some(rev)),
                    ..
                } if *rev < top && !in_final.contains(rev) => Some((op.id, *rev, key.clone())),
                _ => None,
            })
            .collect();
        if acked.is_empty() {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (id, rev, key) = acked[rng.random_range(0..acked.len())].clone();
        for w in &mut g.watches {
            for seg in &mut w.segments {
                seg.events.retain(|e| e.rev != rev);
            }
        }
        g.ops
            .retain(|op| !matches!(&op.kind, OpKind::Get { rev: r, .. } if *r == rev));
        let report = check(&g.ops, &g.watches, &g.finals);
        assert!(
            report
                .anomalies
                .iter()
                .any(|a| matches!(a, Anomaly::LostWrite { op, .. } if *op == id)),
            "seed {seed}: lost write {id} (rev {rev}, key {key}) not named: {}",
            report.detailed()
        );
        caught += 1;
    }
    assert!(caught > 50, "only {caught} planted");
}

#[test]
fn twenty_thousand_ops_check_in_bounded_time() {
    let g = generate(7, 8, 5, 2500, 50, 200);
    assert_eq!(g.ops.len(), 20_000);
    let began = std::time::Instant::now();
    let report = check(&g.ops, &g.watches, &g.finals);
    println!(
        "20k ops: {} in {:.2} s",
        report,
        began.elapsed().as_secs_f64()
    );
    assert!(report.passed(), "{}", report.detailed());
    assert!(report.stats.chunks > 100);
}

#[test]
fn unknown_writes_seen_later_are_placed_by_their_rev() {
    // Op 0's reply was lost; a stream saw it at rev 6. Rev 7 was
    // acknowledged at 30, so op 0 took effect before 30: a read beginning
    // after that must not see the older value.
    let ops = vec![
        set(1, (0, 5), "a", "old", -1, 5),
        set_outcome(0, (10, 0), "a", "new", -1, Outcome::Unknown),
        set(2, (20, 30), "b", "x", -1, 7),
        get(3, (31, 40), "a", "old", 5),
        get(4, (41, 50), "a", "new", 6),
    ];
    let watches = vec![stream(
        "n1",
        vec![(
            1,
            vec![
                ev(5, "a", Some("old")),
                ev(6, "a", Some("new")),
                ev(7, "b", Some("x")),
            ],
        )],
    )];
    assert_eq!(
        run(&ops, &watches, &[]).anomalies,
        vec![Anomaly::StaleRead {
            read: 3,
            rev: 5,
            newer: Some(0),
            newer_rev: 6
        }]
    );
    // Without the stale read: fine, and the read of rev 6 names it.
    assert_eq!(
        run(&[&ops[..3], &ops[4..]].concat(), &watches, &[]).anomalies,
        vec![]
    );
    // Seen only by the later read (no stream): the search places it.
    let ops = vec![
        set(1, (0, 5), "a", "old", -1, 5),
        set_outcome(0, (10, 0), "a", "new", -1, Outcome::Unknown),
        get(3, (31, 40), "a", "old", 5),
        get(4, (41, 50), "a", "new", 6),
        get(5, (51, 60), "a", "old", 5),
    ];
    let found = run(&ops, &[], &[]).anomalies;
    assert_eq!(
        found,
        vec![Anomaly::StaleRead {
            read: 5,
            rev: 5,
            newer: Some(0),
            newer_rev: 6
        }]
    );
}

#[test]
fn garbage_input_gives_anomalies_not_panics() {
    // Nonsense from a broken client or node: revs at the extremes, answers
    // before questions, bodies at the wrong keys, checks at i64::MAX.
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let extreme = [i64::MIN, -2, -1, 0, 1, 2, 3, i64::MAX - 1, i64::MAX];
        let pick = |rng: &mut ChaCha8Rng| {
            if rng.random_bool(0.3) {
                extreme[rng.random_range(0..extreme.len())]
            } else {
                rng.random_range(0..12)
            }
        };
        let mut ops = Vec::new();
        for id in 0..40 {
            let key = format!("k{}", rng.random_range(0..2));
            let body = format!("b{}", rng.random_range(0..6)).into_bytes();
            let invoked = rng.random_range(0..100);
            let completed = match rng.random_range(0..4) {
                0 => None,
                1 => Some(rng.random_range(0..100)),
                _ => Some(invoked + rng.random_range(0..20)),
            };
            let outcome = match rng.random_range(0..5) {
                0 => Outcome::Ok(Some(pick(&mut rng))),
                1 => Outcome::Ok(None),
                2 => Outcome::Refused,
                3 => Outcome::Unknown,
                _ => Outcome::Mismatch,
            };
            let check = pick(&mut rng);
            let kind = match rng.random_range(0..3) {
                0 => OpKind::Set {
                    key,
                    body,
                    check,
                    outcome,
                },
                1 => OpKind::Del {
                    key,
                    check,
                    outcome,
                },
                _ => OpKind::Get {
                    key,
                    body,
                    rev: pick(&mut rng),
                },
            };
            ops.push(Op {
                id: id % 37,
                client: rng.random_range(0..4),
                invoked,
                completed,
                kind,
            });
        }
        let events: Vec<WatchEvent> = (0..10)
            .map(|_| WatchEvent {
                rev: pick(&mut rng),
                key: format!("k{}", rng.random_range(0..2)),
                body: rng
                    .random_bool(0.7)
                    .then(|| format!("b{}", rng.random_range(0..6)).into_bytes()),
            })
            .collect();
        let watches = vec![stream("n", vec![(pick(&mut rng), events)])];
        let finals = vec![
            fin("n1", pick(&mut rng), &[("k0", pick(&mut rng), "b1")]),
            fin("n2", pick(&mut rng), &[("k1", pick(&mut rng), "b2")]),
        ];
        let report = check_with(
            &ops,
            &watches,
            &finals,
            Limits {
                search_budget_bytes: 4 << 20,
            },
        );
        assert_eq!(report.details.len(), report.anomalies.len());
        let _ = report.detailed().to_string();
    }
}

/// For measuring: `cargo test --release --lib lincheck::tests::fifty -- --ignored --nocapture`.
#[test]
#[ignore]
fn fifty_thousand_ops_for_the_record() {
    // LINCHECK_LOSE=n: one write in n loses its reply (default 50).
    let lose = std::env::var("LINCHECK_LOSE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // LINCHECK_LONG=n: one op in n takes 20-100 times longer (default 0).
    let long = std::env::var("LINCHECK_LONG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let g = generate(11, 8, 5, 6250, lose, long);
    let began = std::time::Instant::now();
    let report = check(&g.ops, &g.watches, &g.finals);
    println!(
        "50k ops: {} in {:.2} s",
        report,
        began.elapsed().as_secs_f64()
    );
    assert!(report.passed(), "{}", report.detailed());
}

#[test]
fn many_unknown_writes_in_one_chunk_are_pooled_soundly() {
    // Eight DELs and eight SETs of unknown outcome, all open: more than
    // MAX_EXACT_OPTIONAL, so pooled. An absence and a refusal that only
    // they explain still pass...
    let mut ops = vec![set(0, (0, 10), "a", "1", -1, 5)];
    for i in 1..=8 {
        ops.push(del(i, (11, 0), "a", -1, Outcome::Unknown));
        ops.push(set_outcome(
            10 + i,
            (11, 0),
            "a",
            &format!("u{i}"),
            -1,
            Outcome::Unknown,
        ));
    }
    ops.push(get(30, (20, 25), "a", "", 0));
    ops.push(set_outcome(31, (26, 27), "a", "m", 0, Outcome::Mismatch));
    ops.push(set(32, (28, 29), "a", "2", -1, 9));
    ops.push(get(33, (30, 31), "a", "2", 9));
    assert_eq!(run(&ops, &[], &[]).anomalies, vec![]);
    // ... and a read that missed an acknowledged write is still caught, by
    // the search alone (a DEL of unknown rev keeps the intervals quiet).
    ops.push(del(34, (32, 40), "a", -1, Outcome::Ok(None)));
    ops.push(get(35, (33, 34), "a", "", 0));
    ops.push(get(36, (35, 36), "a", "2", 9));
    let found = run(&ops, &[], &[]).anomalies;
    assert!(
        matches!(&found[..], [Anomaly::NotLinearizable { stuck, .. }] if stuck.contains(&36)),
        "{found:?}"
    );
}
