use super::*;

fn config() -> CoreConfig {
    CoreConfig {
        history_revs: 50,
        pulse_ticks: 100,
        timeout_ticks: 1000,
        max_value_bytes: 1024,
        max_pending_writes: 8,
        max_peer_frame_bytes: 256 << 20,
        paxos: paxos::Settings::default(),
        local_reads: false,
        read_timeout_ticks: 1000,
        seed: 7,
    }
}

fn seed() -> Core {
    let info = NodeInfo {
        id: NodeId::from_bytes([1; 10]),
        addr: "127.0.0.1:8046".into(),
        hostname: "box".into(),
        cluster_name: "test".into(),
        register_ns: true,
    };
    Core::seed(info, config())
}

fn path(p: &str) -> Path {
    Path::parse(p).unwrap()
}

/// Sends one request as its own batch and returns the replies.
fn call(
    core: &mut Core,
    conn: ConnId,
    tag: i32,
    command: Command,
) -> Vec<(ConnId, Option<i32>, Outcome)> {
    let mut out = Vec::new();
    core.handle(
        Input::Request {
            conn,
            tag: Some(tag),
            command,
        },
        &mut out,
    );
    core.end_batch(&mut out);
    replies(out)
}

fn replies(out: Vec<Output>) -> Vec<(ConnId, Option<i32>, Outcome)> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Reply { conn, tag, outcome } => Some((conn, tag, outcome)),
            Output::Peer { .. } => None,
        })
        .collect()
}

fn set(p: &str, rev: i64, body: &str) -> Command {
    Command::Set {
        path: path(p),
        check: RevCheck::from_wire(rev),
        body: Body::from(body.as_bytes().to_vec()),
    }
}

fn get_body(core: &mut Core, p: &str) -> (Rev, Vec<u8>) {
    match call(
        core,
        9,
        0,
        Command::Get {
            path: path(p),
            rev: None,
        },
    )
    .remove(0)
    .2
    {
        Ok(Reply::Value { rev, body }) => (rev, body.to_vec()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn seed_writes_its_ctl_entries_through_consensus() {
    let mut core = seed();
    let id = core.node().id.to_string();
    assert_eq!(get_body(&mut core, "/ctl/name").1, b"test");
    assert_eq!(get_body(&mut core, "/ctl/cal/0").1, id.as_bytes());
    assert_eq!(
        get_body(&mut core, &format!("/ctl/node/{id}/addr")).1,
        b"127.0.0.1:8046"
    );
    assert_eq!(
        get_body(&mut core, &format!("/ctl/node/{id}/hostname")).1,
        b"box"
    );
    assert_eq!(
        get_body(&mut core, &format!("/ctl/node/{id}/version")).1,
        NODE_VERSION.as_bytes()
    );
    assert_eq!(
        get_body(&mut core, &format!("/ctl/node/{id}/writable")).1,
        b"true"
    );
    assert_eq!(
        get_body(&mut core, &format!("/ctl/ns/test/{id}")).1,
        b"127.0.0.1:8046"
    );
    let applied = get_body(&mut core, &format!("/ctl/node/{id}/applied"));
    assert_eq!(applied.1, b"0", "written at start, before any pulse");
    assert_eq!(core.store().rev(), Rev(8));
}

#[test]
fn set_answers_with_the_rev_after_applying() {
    let mut core = seed();
    let base = core.store().rev().0;
    let got = call(&mut core, 1, 5, set("/a", 0, "x"));
    assert_eq!(got, vec![(1, Some(5), Ok(Reply::Rev(Rev(base + 1))))]);
    assert_eq!(get_body(&mut core, "/a"), (Rev(base + 1), b"x".to_vec()));
    let got = call(&mut core, 1, 6, set("/a", 0, "y"));
    assert_eq!(got[0].2, Err(ErrCode::RevMismatch.into()));
    // The failed write used a rev and wrote /ctl/err.
    assert_eq!(
        get_body(&mut core, "/ctl/err"),
        (Rev(base + 2), b"rev mismatch".to_vec())
    );
    let got = call(
        &mut core,
        1,
        7,
        Command::Del {
            path: path("/a"),
            check: RevCheck::Clobber,
        },
    );
    assert_eq!(got[0].2, Ok(Reply::Done));
    let got = call(&mut core, 1, 8, Command::Nop);
    assert_eq!(got[0].2, Ok(Reply::Done));
    assert_eq!(
        call(&mut core, 1, 9, Command::Rev)[0].2,
        Ok(Reply::Rev(Rev(base + 4)))
    );
}

#[test]
fn wait_registered_before_a_set_sees_it_and_is_freed_on_close() {
    let mut core = seed();
    let next = core.store().rev().0 + 1;
    let glob = Glob::parse("/x/**").unwrap();
    assert!(call(
        &mut core,
        1,
        1,
        Command::Wait {
            glob: glob.clone(),
            rev: next
        }
    )
    .is_empty());
    assert_eq!(core.waiting(), 1);
    let got = call(&mut core, 2, 1, set("/x/y", -1, "v"));
    assert_eq!(got.len(), 2);
    let event = got.iter().find(|(conn, ..)| *conn == 1).unwrap();
    assert_eq!(
        event.2,
        Ok(Reply::Event {
            path: path("/x/y"),
            rev: Rev(next),
            body: Body::from(b"v".to_vec()),
            kind: EventKind::Set
        })
    );
    assert_eq!(core.waiting(), 0);

    // A wait far in the future stays until its connection closes.
    assert!(call(
        &mut core,
        3,
        1,
        Command::Wait {
            glob,
            rev: next + 1000
        }
    )
    .is_empty());
    assert_eq!(core.waiting(), 1);
    let mut out = Vec::new();
    core.handle(Input::ConnClosed { conn: 3 }, &mut out);
    assert_eq!(core.waiting(), 0);
}

#[test]
fn wait_answers_from_history_and_nops_match_root() {
    let mut core = seed();
    let rev = core.store().rev().0;
    call(&mut core, 1, 1, Command::Nop);
    let got = call(
        &mut core,
        1,
        2,
        Command::Wait {
            glob: Glob::parse("/").unwrap(),
            rev: rev + 1,
        },
    );
    match &got[0].2 {
        Ok(Reply::Event {
            path, kind, rev: r, ..
        }) => {
            assert_eq!((path.as_str(), *kind, r.0), ("/", EventKind::Nop, rev + 1));
        }
        other => panic!("{other:?}"),
    }
    // rev 0 is raised to 1: the first event ever.
    let got = call(
        &mut core,
        1,
        3,
        Command::Wait {
            glob: Glob::parse("/**").unwrap(),
            rev: 0,
        },
    );
    assert!(matches!(&got[0].2, Ok(Reply::Event { rev: Rev(1), .. })));
}

#[test]
fn reads_at_a_future_rev_wait_for_it() {
    let mut core = seed();
    let next = core.store().rev().0 + 1;
    let got = call(
        &mut core,
        1,
        1,
        Command::Get {
            path: path("/f"),
            rev: Some(next),
        },
    );
    assert!(got.is_empty(), "parked until rev {next}");
    let got = call(&mut core, 2, 1, set("/f", 0, "z"));
    assert!(got.iter().any(|(conn, _, o)| *conn == 1
        && *o
            == Ok(Reply::Value {
                rev: Rev(next),
                body: Body::from(b"z".to_vec())
            })));
}

#[test]
fn old_revs_are_too_late() {
    let mut core = seed();
    for i in 0..60 {
        call(&mut core, 1, i, set("/n", -1, "v"));
    }
    let got = call(
        &mut core,
        1,
        100,
        Command::Get {
            path: path("/n"),
            rev: Some(2),
        },
    );
    assert_eq!(got[0].2, Err(ErrCode::TooLate.into()));
    let got = call(
        &mut core,
        1,
        101,
        Command::Wait {
            glob: Glob::parse("/**").unwrap(),
            rev: 2,
        },
    );
    assert_eq!(got[0].2, Err(ErrCode::TooLate.into()));
}

#[test]
fn pending_writes_are_bounded() {
    let mut core = seed();
    let mut out = Vec::new();
    for tag in 0..9 {
        let input = Input::Request {
            conn: 1,
            tag: Some(tag),
            command: set("/p", -1, "v"),
        };
        core.handle(input, &mut out);
    }
    let busy = replies(std::mem::take(&mut out));
    assert_eq!(busy, vec![(1, Some(8), Err(ReplyError::busy()))]);
    core.end_batch(&mut out);
    assert_eq!(replies(out).len(), 8);
}

#[test]
fn pulse_writes_applied() {
    let mut core = seed();
    let mut out = Vec::new();
    for _ in 0..100 {
        core.handle(Input::Tick(1), &mut out);
    }
    core.end_batch(&mut out);
    let id = core.node().id.to_string();
    let (rev, body) = get_body(&mut core, &format!("/ctl/node/{id}/applied"));
    let applied: i64 = String::from_utf8(body).unwrap().parse().unwrap();
    // The rev applied when the pulse was proposed: a write or two before.
    assert!(
        applied < rev.0 && applied >= rev.0 - 2,
        "{applied} at {rev:?}"
    );
}

#[test]
fn the_leader_names_itself() {
    let mut core = seed();
    let mut out = Vec::new();
    for _ in 0..10 {
        core.handle(Input::Tick(1), &mut out);
    }
    core.end_batch(&mut out);
    let id = core.node().id.to_string();
    let (rev, body) = get_body(&mut core, LEADER_PATH);
    assert!(rev.0 > 0);
    assert_eq!(body, id.into_bytes());
    // Once named, it is not written again.
    for _ in 0..100 {
        core.handle(Input::Tick(1), &mut out);
    }
    core.end_batch(&mut out);
    assert_eq!(get_body(&mut core, LEADER_PATH).0, rev);
}

#[test]
fn stat_getdir_walk() {
    let mut core = seed();
    call(&mut core, 1, 1, set("/d/b", -1, "12345"));
    call(&mut core, 1, 2, set("/d/a", -1, ""));
    let got = call(
        &mut core,
        1,
        3,
        Command::Stat {
            path: Some(path("/d")),
            rev: None,
        },
    );
    assert_eq!(got[0].2, Ok(Reply::Stat { len: 2, rev: -2 }));
    let got = call(
        &mut core,
        1,
        4,
        Command::Stat {
            path: Some(path("/d/b")),
            rev: None,
        },
    );
    assert!(matches!(got[0].2, Ok(Reply::Stat { len: 5, .. })));
    let got = call(
        &mut core,
        1,
        5,
        Command::Stat {
            path: None,
            rev: None,
        },
    );
    assert_eq!(got[0].2, Ok(Reply::Stat { len: 0, rev: 0 }));
    let got = call(
        &mut core,
        1,
        6,
        Command::Getdir {
            path: path("/d"),
            offset: 0,
            rev: None,
        },
    );
    assert_eq!(got[0].2, Ok(Reply::Name("a".into())));
    let got = call(
        &mut core,
        1,
        7,
        Command::Getdir {
            path: path("/d"),
            offset: 2,
            rev: None,
        },
    );
    assert_eq!(got[0].2, Err(ErrCode::Range.into()));
    let got = call(
        &mut core,
        1,
        8,
        Command::Walk {
            glob: Glob::parse("/d/*").unwrap(),
            offset: 1,
            rev: None,
        },
    );
    assert!(
        matches!(&got[0].2, Ok(Reply::Event { path, kind: EventKind::Set, .. }) if path.as_str() == "/d/b")
    );
    let got = call(
        &mut core,
        1,
        9,
        Command::Get {
            path: path("/d"),
            rev: None,
        },
    );
    assert_eq!(got[0].2, Err(ErrCode::IsDir.into()));
}

fn seed_with_history(history_revs: usize) -> Core {
    let info = NodeInfo {
        id: NodeId::from_bytes([1; 10]),
        addr: "127.0.0.1:8046".into(),
        hostname: "box".into(),
        cluster_name: "test".into(),
        register_ns: true,
    };
    let mut config = config();
    config.history_revs = history_revs;
    config.max_pending_writes = 256;
    Core::seed(info, config)
}

/// A glob of 2,000 elements whose literal prefix is only `/`, so that every
/// event is run through it: 32 words of state per byte of path.
fn costly_glob() -> Glob {
    Glob::parse(&format!("/**{}z", "a**".repeat(1000))).unwrap()
}

fn wait(core: &mut Core, conn: ConnId, tag: i32, glob: &Glob, rev: i64) -> Vec<Output> {
    let mut out = Vec::new();
    let command = Command::Wait {
        glob: glob.clone(),
        rev,
    };
    core.handle(
        Input::Request {
            conn,
            tag: Some(tag),
            command,
        },
        &mut out,
    );
    out
}

/// Ends batches (with no input) until one gives a reply; returns how many
/// batches that took and the replies.
fn batches_until_reply(core: &mut Core) -> (usize, Vec<(ConnId, Option<i32>, Outcome)>) {
    for batch in 1..=10_000 {
        let mut out = Vec::new();
        core.end_batch(&mut out);
        let got = replies(out);
        if !got.is_empty() {
            return (batch, got);
        }
        assert!(core.has_unfinished_work(), "no reply and nothing to do");
    }
    panic!("no reply after 10,000 batches");
}

/// Attack 3 of issue 9: a WAIT from rev 1 with a long glob over a long
/// history held the core for seconds. The scan is now split across batches,
/// each spending at most about `BATCH_WORK_BUDGET`, and still finds the first
/// match, including one applied while it was scanning.
#[test]
fn a_long_wait_scan_is_split_across_batches_and_still_answers() {
    let mut core = seed_with_history(5000);
    let long = format!("/p/{}", "a".repeat(1000));
    for i in 0..600 {
        call(&mut core, 1, i, set(&long, -1, "v"));
    }
    let glob = costly_glob();
    let per_event = glob.match_cost(long.len()) + 4;
    assert!(
        per_event * 600 > 10 * BATCH_WORK_BUDGET,
        "the scan needs many batches"
    );
    let out = wait(&mut core, 2, 7, &glob, 1);
    assert!(out.is_empty() && core.has_unfinished_work());
    assert_eq!(core.waiting(), 1);
    // Other clients are answered meanwhile, and a matching write lands after
    // the WAIT started: the scan reaches it in the history.
    let hit = format!("/q/{}z", "a".repeat(1000));
    let got = call(&mut core, 1, 1000, set(&hit, -1, "hit"));
    let hit_rev = match got[..] {
        [(1, Some(1000), Ok(Reply::Rev(rev)))] => rev,
        ref other => panic!("{other:?}"),
    };
    let (batches, got) = batches_until_reply(&mut core);
    assert!(batches >= 10, "{batches} batches");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        (
            2,
            Some(7),
            Ok(Reply::Event {
                path: path(&hit),
                rev: hit_rev,
                body: Body::from(b"hit".to_vec()),
                kind: EventKind::Set
            })
        )
    );
    assert!(!core.has_unfinished_work() && core.waiting() == 0);
}

/// A scan that reaches the current rev without a match becomes an ordinary
/// registered WAIT: the next matching event answers it.
#[test]
fn a_finished_scan_waits_for_the_next_event() {
    let mut core = seed_with_history(5000);
    let long = format!("/p/{}", "a".repeat(1000));
    for i in 0..300 {
        call(&mut core, 1, i, set(&long, -1, "v"));
    }
    let glob = costly_glob();
    assert!(wait(&mut core, 2, 7, &glob, 1).is_empty());
    let mut batches = 0;
    while core.has_unfinished_work() {
        let mut out = Vec::new();
        core.end_batch(&mut out);
        assert!(replies(out).is_empty());
        batches += 1;
    }
    assert!(batches >= 5, "{batches}");
    assert_eq!(core.waiting(), 1);
    let hit = format!("/q/{}z", "a".repeat(1000));
    let got = call(&mut core, 1, 1000, set(&hit, -1, "hit"));
    assert!(got.iter().any(|(conn, tag, outcome)| *conn == 2
        && *tag == Some(7)
        && matches!(outcome, Ok(Reply::Event { path: p, .. }) if p.as_str() == hit)));
    assert_eq!(core.waiting(), 0);
}

/// Scans overtaken by the history's garbage collection answer TOO_LATE;
/// a closed connection's scans are dropped; several scans share the budget
/// round robin, so a second one is not starved by the first.
#[test]
fn scans_too_late_closed_and_round_robin() {
    let mut core = seed_with_history(200);
    let long = format!("/p/{}", "a".repeat(1000));
    for i in 0..200 {
        call(&mut core, 1, i, set(&long, -1, "v"));
    }
    let glob = costly_glob();
    let from = core.store().head().0;
    assert!(wait(&mut core, 2, 1, &glob, from).is_empty());
    assert!(wait(&mut core, 3, 1, &glob, from).is_empty());
    assert!(wait(&mut core, 4, 1, &glob, from).is_empty());
    assert_eq!(core.waiting(), 3);
    core.handle(Input::ConnClosed { conn: 4 }, &mut Vec::new());
    assert_eq!(core.waiting(), 2);
    // A few batches: both remaining scans move (round robin).
    for _ in 0..4 {
        let mut out = Vec::new();
        core.end_batch(&mut out);
        assert!(replies(out).is_empty());
    }
    let progress: Vec<Rev> = core
        .jobs
        .values()
        .map(|job| match job {
            Job::Wait(scan) => scan.next,
            Job::List(_) => unreachable!("no listing here"),
        })
        .collect();
    assert!(progress.iter().all(|next| next.0 > from), "{progress:?}");
    // 200 more writes in a few batches push the history past where they are.
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for i in 0..200 {
        let command = set(&long, -1, "v");
        let input = Input::Request {
            conn: 1,
            tag: Some(1000 + i),
            command,
        };
        core.handle(input, &mut out);
        if i % 50 == 49 {
            core.end_batch(&mut out);
        }
    }
    answers.extend(replies(out).into_iter().filter(|(conn, ..)| *conn != 1));
    for _ in 0..1000 {
        if !core.has_unfinished_work() {
            break;
        }
        let mut out = Vec::new();
        core.end_batch(&mut out);
        answers.extend(replies(out));
    }
    assert!(!core.has_unfinished_work());
    assert_eq!(core.waiting(), 0);
    answers.sort_by_key(|(conn, ..)| *conn);
    let too_late = Err(ErrCode::TooLate.into());
    assert_eq!(
        answers,
        vec![(2, Some(1), too_late.clone()), (3, Some(1), too_late)]
    );
}

/// A WALK or GETDIR far into a big tree walks that many entries: the work
/// is split across batches like a WAIT's scan, reads the tree as it was at
/// the request (a write meanwhile does not change the answer), and answers
/// what the unbounded listing answers.
#[test]
fn a_listing_far_into_a_big_tree_is_split_across_batches() {
    let mut core = seed_with_history(50);
    let long = "n".repeat(200);
    let mut out = Vec::new();
    for i in 0..5000 {
        let input = Input::Request {
            conn: 1,
            tag: Some(i),
            command: set(&format!("/big/{i:05}{long}"), -1, "v"),
        };
        core.handle(input, &mut out);
        if i % 200 == 199 {
            core.end_batch(&mut out);
        }
    }
    core.end_batch(&mut out);
    let glob = Glob::parse("/big/**").unwrap();
    let before = core.store().current().clone();
    let expected = before.walk(&glob, 4999).unwrap();
    let dir = path("/big");
    let last_name = before.getdir(&dir, 4999).unwrap();
    let mut out = Vec::new();
    let requests = [
        (
            2,
            Command::Walk {
                glob: glob.clone(),
                offset: 4999,
                rev: None,
            },
        ),
        (
            3,
            Command::Getdir {
                path: dir.clone(),
                offset: 4999,
                rev: None,
            },
        ),
        (
            4,
            Command::Walk {
                glob,
                offset: 5000,
                rev: None,
            },
        ),
    ];
    for (conn, command) in requests {
        let input = Input::Request {
            conn,
            tag: Some(1),
            command,
        };
        core.handle(input, &mut out);
    }
    // Reads start at the batch's end, once their read index is confirmed
    // (at once on a lone node); then a write changes the tree under them.
    core.end_batch(&mut out);
    assert!(replies(out).is_empty() && core.has_unfinished_work());
    let mut out = Vec::new();
    let change = set(expected.0.as_str(), -1, "changed");
    core.handle(
        Input::Request {
            conn: 1,
            tag: Some(1),
            command: change,
        },
        &mut out,
    );
    let mut answers = BTreeMap::new();
    let mut batches = 0;
    while core.has_unfinished_work() {
        let mut out = Vec::new();
        core.end_batch(&mut out);
        batches += 1;
        for (conn, _, outcome) in replies(out) {
            answers.insert(conn, outcome);
        }
        assert!(batches < 1000);
    }
    assert!(batches >= 4, "{batches} batches");
    let (walked, rev, body) = expected;
    assert_eq!(
        answers[&2],
        Ok(Reply::Event {
            path: walked,
            rev,
            body,
            kind: EventKind::Set
        })
    );
    assert_eq!(answers[&3], Ok(Reply::Name(last_name)));
    assert_eq!(answers[&4], Err(ErrCode::Range.into()));
    // A negative offset: NOENT for a missing directory, else RANGE.
    for (dir, code) in [("/nope", ErrCode::NoEnt), ("/big", ErrCode::Range)] {
        let getdir = Command::Getdir {
            path: path(dir),
            offset: -1,
            rev: None,
        };
        assert_eq!(call(&mut core, 6, 1, getdir)[0].2, Err(code.into()));
    }
    // A closed connection's listing is dropped.
    let walk = Command::Walk {
        glob: Glob::parse("/big/**").unwrap(),
        offset: 4999,
        rev: None,
    };
    let mut out = Vec::new();
    core.handle(
        Input::Request {
            conn: 5,
            tag: Some(1),
            command: walk,
        },
        &mut out,
    );
    core.end_batch(&mut out);
    assert!(core.has_unfinished_work());
    core.handle(Input::ConnClosed { conn: 5 }, &mut out);
    assert!(!core.has_unfinished_work() && replies(out).is_empty());
}

/// Issue 9 item 10: a `Tick` carries the time that passed, so a loop too
/// busy to deliver every tick keeps time; periodic duties fire when the
/// clock crosses their period, however far one `Tick` moves it.
#[test]
fn a_tick_of_many_units_counts_them_all() {
    let applied = |core: &mut Core| {
        let id = core.node().id.to_string();
        get_body(core, &format!("/ctl/node/{id}/applied"))
    };
    let mut core = seed();
    let at_start = applied(&mut core);
    let mut out = Vec::new();
    // 99 single ticks: one short of the pulse period (100).
    for _ in 0..99 {
        core.handle(Input::Tick(1), &mut out);
    }
    core.end_batch(&mut out);
    assert_eq!(applied(&mut core), at_start, "no pulse before -pulse");
    // One tick reporting a whole period: the pulse is due.
    let mut core = seed();
    core.handle(Input::Tick(100), &mut out);
    core.end_batch(&mut out);
    let (rev, body) = applied(&mut core);
    assert!(rev > at_start.0, "pulsed after one Tick(100): {rev:?}");
    assert_ne!(body, b"0".to_vec());
    // The leader's removal of a silent node (checked every housekeeping
    // period) runs on time when each Tick jumps over multiples of it: a
    // node registered and never heard of goes within a check of -timeout
    // (1000 ticks).
    let mut core = seed();
    let period = core.housekeeping_ticks();
    assert_eq!(period, 1000 / 20, "a twentieth of -timeout");
    let other = NodeId::from_bytes([2; 10]).to_string();
    let addr = format!("/ctl/node/{other}/addr");
    call(&mut core, 1, 1, set(&addr, -1, "127.0.0.9:1"));
    let mut ticks = 0;
    while get_body(&mut core, &addr).0 != Rev::ZERO {
        core.handle(Input::Tick(7), &mut out);
        core.end_batch(&mut out);
        ticks += 7;
        assert!(
            ticks <= 1000 + period + 7,
            "not removed after {ticks} ticks"
        );
    }
    assert!(ticks > 1000, "removed after {ticks} ticks, before -timeout");
}

/// Two cores wired together through the real peer codec, with a frame cap.
struct Pair {
    cores: Vec<Core>,
    /// Encoded size of every peer message delivered, by kind.
    sizes: Vec<(&'static str, usize)>,
    cap: usize,
}

impl Pair {
    fn kind(msg: &PeerMsg) -> &'static str {
        match msg {
            PeerMsg::Decided { decrees, .. } if decrees.is_empty() => "decided-empty",
            PeerMsg::Decided { .. } => "decided",
            PeerMsg::SnapshotChunk { .. } => "chunk",
            PeerMsg::Snapshot(_) => "snapshot",
            _ => "other",
        }
    }

    /// Routes `out` of core `from`; messages of `drop` kinds are lost.
    fn deliver(&mut self, from: usize, out: Vec<Output>, drop: &[&str]) {
        let mut queue: VecDeque<(usize, Output)> = out.into_iter().map(|o| (from, o)).collect();
        let mut rounds = 0;
        while let Some((src, output)) = queue.pop_front() {
            rounds += 1;
            assert!(rounds < 100_000, "messages never settled");
            let Output::Peer { to, msg, .. } = output else {
                continue;
            };
            let Some(dst) = self.cores.iter().position(|c| c.node().id == to) else {
                continue;
            };
            let mut frame = Vec::new();
            let len = crate::codec::peer::encode_peer_frame_into(&msg, &mut frame, self.cap)
                .unwrap_or_else(|e| panic!("{} refused: {e}", Self::kind(&msg)));
            let kind = Self::kind(&msg);
            self.sizes.push((kind, len));
            if drop.contains(&kind) {
                continue;
            }
            let msg = crate::codec::peer::decode_peer_msg(&frame[4..]).unwrap();
            let from_id = self.cores[src].node().id.clone();
            let mut more = Vec::new();
            self.cores[dst].handle(
                Input::Peer {
                    from: from_id,
                    source: None,
                    msg,
                },
                &mut more,
            );
            self.cores[dst].end_batch(&mut more);
            queue.extend(more.into_iter().map(|o| (dst, o)));
        }
    }

    fn tick(&mut self, n: usize, drop: &[&str]) {
        for _ in 0..n {
            for i in 0..self.cores.len() {
                let mut out = Vec::new();
                self.cores[i].handle(Input::Tick(1), &mut out);
                self.cores[i].end_batch(&mut out);
                self.deliver(i, out, drop);
            }
        }
    }

    fn count(&self, kind: &str) -> usize {
        self.sizes.iter().filter(|(k, _)| *k == kind).count()
    }
}

/// Issue 9 item 7: a node far behind gets the state in chunks and then the
/// log in answers, each within a quarter of the peer frame cap, however
/// much there is to send; the asker pulls the next piece as soon as it has
/// applied the last.
#[test]
fn catch_up_travels_in_pieces_within_the_frame_cap() {
    let cap = 64 * 1024;
    let cfg = CoreConfig {
        max_peer_frame_bytes: cap,
        max_pending_writes: 1000,
        history_revs: 500,
        ..config()
    };
    let info = |n: u8, addr: &str| NodeInfo {
        id: NodeId::from_bytes([n; 10]),
        addr: addr.into(),
        hostname: "box".into(),
        cluster_name: "test".into(),
        register_ns: false,
    };
    let mut a = Core::seed(info(1, "127.0.0.1:1"), cfg.clone());
    let value = "v".repeat(1000);
    for i in 0..200 {
        call(&mut a, 1, i, set(&format!("/f/{i:03}"), -1, &value));
    }
    let b = Core::join(
        info(2, "127.0.0.1:2"),
        cfg,
        a.node().id.clone(),
        "127.0.0.1:1".into(),
    );
    let mut pair = Pair {
        cores: vec![a, b],
        sizes: Vec::new(),
        cap,
    };
    // B installs the snapshot, registers and hears its registration.
    pair.tick(60, &[]);
    let chunks = pair.count("chunk");
    assert!(chunks >= 200_000 / (cap / 4), "{chunks} chunks");
    assert_eq!(
        pair.cores[1]
            .store()
            .current()
            .files_after(None, usize::MAX),
        pair.cores[0]
            .store()
            .current()
            .files_after(None, usize::MAX),
    );
    assert!(pair.cores[1].is_writable());
    pair.tick(100, &[]);
    // Now B follows. It misses 120 writes (their stream is lost) and
    // catches up from A's log in several answers.
    for i in 0..120 {
        let mut out = Vec::new();
        pair.cores[0].handle(
            Input::Request {
                conn: 1,
                tag: Some(i),
                command: set(&format!("/g/{i:03}"), -1, &value),
            },
            &mut out,
        );
        pair.cores[0].end_batch(&mut out);
        pair.deliver(0, out, &["decided"]);
    }
    let before = pair.count("decided");
    let chunks = pair.count("chunk");
    let rev_a = pair.cores[0].store().rev();
    assert!(pair.cores[1].store().rev() < rev_a);
    pair.tick(60, &[]);
    assert!(pair.cores[1].store().rev() >= rev_a, "B caught up");
    let answers = pair.count("decided") - before;
    assert!(answers >= 120_000 / (cap / 4), "{answers} answers");
    assert_eq!(pair.count("chunk"), chunks, "the log sufficed");
    let biggest = pair.sizes.iter().map(|(_, len)| *len).max().unwrap();
    assert!(biggest <= cap / 4 + 1024, "a message of {biggest} bytes");
}

/// Batches and catch-up answers are cut by `Decree::size` before encoding:
/// it must bound the real encoding, whatever the field values.
#[test]
fn decree_size_bounds_its_encoding() {
    use crate::paxos::Value;
    let origin = NodeId::from_bytes([0xff; 10]);
    let mutations = [
        Mutation::Nop,
        Mutation::Del {
            path: path("/a/b"),
            check: RevCheck::NotOlderThan(i64::MIN),
        },
        Mutation::Set {
            path: path(&format!("/{}", "p".repeat(4095))),
            check: RevCheck::NotOlderThan(i64::MAX),
            body: Body::from(vec![7u8; 1 << 20]),
        },
        Mutation::Set {
            path: path("/x"),
            check: RevCheck::Clobber,
            body: Body::from(Vec::new()),
        },
    ];
    let mut decrees = vec![Decree::Fill];
    for mutation in mutations {
        decrees.push(Decree::Write {
            origin: origin.clone(),
            seq: u64::MAX,
            floor: u64::MAX - 1,
            mutation,
        });
    }
    for decree in decrees {
        let msg = PeerMsg::Decided {
            first: Rev(i64::MAX),
            decrees: vec![decree.clone()],
        };
        // Header, variant, first and the list's length: at most 4 + 5 + 9 + 9.
        let encoded = crate::codec::peer::encode_peer_frame(&msg)
            .len()
            .saturating_sub(27);
        assert!(encoded <= decree.size(), "{encoded} > {}", decree.size());
    }
}

#[test]
fn an_idle_core_sleeps_up_to_an_idle_heartbeat_period_and_a_busy_one_ticks() {
    let mut core = seed();
    let mut out = Vec::new();
    for _ in 0..300 {
        core.handle(Input::Tick(1), &mut out);
        core.end_batch(&mut out);
    }
    let heartbeat = u64::from(core.config.paxos.idle_heartbeat_ticks);
    let idle = core.ticks_until_due();
    assert!(idle > 1 && idle <= heartbeat, "idle: {idle}");
    // A write proposed and not yet applied waits on time: every tick.
    core.handle(
        Input::Request {
            conn: 1,
            tag: Some(1),
            command: Command::Set {
                path: path("/x"),
                check: RevCheck::Clobber,
                body: Body::from(b"1".to_vec()),
            },
        },
        &mut out,
    );
    assert_eq!(core.ticks_until_due(), 1);
    core.end_batch(&mut out);
    assert!(core.ticks_until_due() > 1);
}
