//! Property tests on everything the outside controls: any bytes as a peer
//! message or a client frame, any request the session accepts fed to a
//! real core, and any bytes on a real node's port. Each case must be
//! answered or refused without a panic, within a bounded number of steps;
//! the node lives on.
//!
//! Case counts are kept small enough for the default test run;
//! `PROPTEST_CASES=n` runs more.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use prost::Message;

use common::*;
use doozer::codec::client::{encode_frame, Request, Verb};
use doozer::codec::peer::{decode_peer_msg, encode_peer_frame, MAGIC};
use doozer::core::{Command, Core, CoreConfig, Decree, Input, NodeInfo, Output, PeerMsg};
use doozer::paxos::{self, Ballot, Msg};
use doozer::session::{Action, Secrets, Session, SessionLimits};
use doozer::store::Mutation;
use doozer::types::{NodeId, Path, Rev, RevCheck};

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

/// Valid peer messages of every kind, to mutate.
fn sample_messages() -> Vec<Vec<u8>> {
    let write = Decree::Write {
        origin: id(1),
        seq: 5,
        floor: 2,
        mutation: Mutation::Set {
            path: Path::parse("/a/b").unwrap(),
            check: RevCheck::NotOlderThan(3),
            body: Arc::from(&b"body"[..]),
        },
    };
    let msgs = [
        PeerMsg::Paxos(Msg::Accept {
            ballot: Ballot::new(4, id(2)),
            first_slot: 10,
            values: vec![write.clone(), Decree::Fill],
            commit: 9,
        }),
        PeerMsg::Paxos(Msg::Promise {
            ballot: Ballot::new(4, id(2)),
            from_slot: 3,
            accepted: vec![(3, Ballot::new(1, id(1)), write.clone())],
            commit: 2,
        }),
        PeerMsg::Decided {
            first: Rev(7),
            decrees: vec![write.clone(), Decree::Fill],
        },
        PeerMsg::CatchUp {
            from: Rev(1),
            addr: "127.0.0.1:8046".into(),
        },
        PeerMsg::Alive {
            applied: Rev(3),
            addr: "127.0.0.2:8046".into(),
        },
    ];
    msgs.iter()
        .map(|m| encode_peer_frame(m)[4..].to_vec())
        .collect()
}

/// A request built from loosely chosen fields, most of them plausible.
fn request() -> impl Strategy<Value = Request> {
    let verb = prop_oneof![
        (0i32..16).prop_map(Some),
        Just(Some(Verb::Access as i32)),
        Just(None),
        any::<i32>().prop_map(Some),
    ];
    let path = prop_oneof![
        Just(None),
        Just(Some("/".to_string())),
        "(/[a-z]{1,3}){1,4}".prop_map(Some),
        "(/[a-z*?]{0,3}){1,4}(/\\*\\*)?".prop_map(Some),
        any::<String>().prop_map(Some),
        (1usize..3000).prop_map(|n| Some("/a".repeat(n))),
        (1usize..3000).prop_map(|n| Some(format!("/{}", "*".repeat(n)))),
    ];
    let rev = prop_oneof![
        Just(None),
        (-3i64..40).prop_map(Some),
        Just(Some(i64::MAX)),
        Just(Some(i64::MIN)),
        any::<i64>().prop_map(Some),
    ];
    let value = prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        (0usize..3).prop_map(|k| Some(vec![7u8; [1 << 20, (1 << 20) + 1, 100_000][k]])),
    ];
    let offset = prop_oneof![
        Just(None),
        (-2i32..10).prop_map(Some),
        any::<i32>().prop_map(Some)
    ];
    (any::<Option<i32>>(), verb, path, value, offset, rev).prop_map(
        |(tag, verb, path, value, offset, rev)| Request {
            tag,
            verb,
            path,
            value,
            other_tag: None,
            offset,
            rev,
        },
    )
}

fn lone_core() -> Core {
    let info = NodeInfo {
        id: id(1),
        addr: "127.0.0.1:8046".into(),
        hostname: "h".into(),
        cluster_name: "local".into(),
        register_ns: true,
    };
    let config = CoreConfig {
        history_revs: 50,
        pulse_ticks: 200,
        timeout_ticks: 1000,
        max_value_bytes: 1 << 20,
        max_pending_writes: 1000,
        max_peer_frame_bytes: 256 << 20,
        paxos: paxos::Settings::default(),
        local_reads: false,
        read_timeout_ticks: 1000,
        seed: 7,
    };
    Core::seed(info, config)
}

/// Whether a command may legitimately wait (for a change, or for a rev the
/// store has not reached).
fn may_wait(command: &Command, rev_now: Rev) -> bool {
    match command {
        Command::Wait { .. } => true,
        Command::Get { rev, .. }
        | Command::Walk { rev, .. }
        | Command::Getdir { rev, .. }
        | Command::Stat { rev, .. } => rev.is_some_and(|r| r > rev_now.0),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_a_peer_message_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_peer_msg(&bytes);
    }

    #[test]
    fn mutated_peer_messages_decode_or_fail(
        which in 0usize..5,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = sample_messages()[which].clone();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let at = at % bytes.len();
            match kind {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at),
            }
        }
        let _ = decode_peer_msg(&bytes);
    }

    #[test]
    fn any_bytes_as_a_client_frame_are_answered_or_refused(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Ok(req) = Request::decode(bytes.as_slice()) {
            let mut session = Session::new(
                Secrets::default(),
                id(1),
                SessionLimits {
                    max_in_flight: 16,
                    max_in_flight_bytes: 8 << 20,
                    max_value_bytes: 1 << 20,
                    max_access_failures: 3,
                },
            );
            let _ = session.on_request(req, true);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any request, through the session, into a real core: no panic, and
    /// everything that need not wait is answered within a few ticks.
    #[test]
    fn any_request_the_session_accepts_is_answered_by_the_core(
        reqs in proptest::collection::vec(request(), 1..24),
        secret in prop_oneof![Just(false), Just(true)],
    ) {
        let secrets = if secret {
            Secrets { read_write: "rw".into(), read_only: "ro".into() }
        } else {
            Secrets::default()
        };
        let mut session = Session::new(
            secrets,
            id(1),
            SessionLimits {
                max_in_flight: 64,
                max_in_flight_bytes: 8 << 20,
                max_value_bytes: 1 << 20,
                max_access_failures: 3,
            },
        );
        let mut core = lone_core();
        let mut out = Vec::new();
        let mut owed = Vec::new();
        for req in reqs {
            match session.on_request(req, true) {
                Action::Reply(_) => {}
                // Wrong secrets once too often: the connection is closed.
                Action::Close { .. } => break,
                Action::Submit { tag, command, .. } => {
                    let waits = may_wait(&command, core.store().rev());
                    core.handle(Input::Request { conn: 1, tag, command: command.clone() }, &mut out);
                    if !waits {
                        owed.push((tag, command));
                    }
                }
            }
            core.end_batch(&mut out);
        }
        for _ in 0..20 {
            core.handle(Input::Tick(1), &mut out);
            core.end_batch(&mut out);
        }
        let mut answered: Vec<Option<i32>> = out
            .iter()
            .filter_map(|o| match o {
                Output::Reply { tag, .. } => Some(*tag),
                _ => None,
            })
            .collect();
        for (tag, command) in owed {
            let at = answered.iter().position(|t| *t == tag);
            prop_assert!(at.is_some(), "{command:?} (tag {tag:?}) was never answered");
            answered.remove(at.unwrap());
        }
    }
}

/// Reads from `conn` until the server closes it or `limit` passes; whether
/// it closed.
fn drained_until_closed(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// Any bytes on a real node's port, as a peer (after the magic) or as a
/// client: the connection is answered or closed, never crashes the node,
/// and the node still serves others. Each case is bounded: a client that
/// sent garbage is answered or cut off at once; one that sent a partial
/// frame is left waiting (that is a normal client), so the case hangs up.
#[test]
fn any_bytes_on_a_real_port_leave_the_node_serving() {
    let server = Server::start(&[]);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let strategy = (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    );
    runner
        .run(&strategy, |(as_peer, bytes)| {
            let mut conn = TcpStream::connect(&server.addr).unwrap();
            let mut sent = Vec::new();
            if as_peer {
                sent.extend_from_slice(&MAGIC);
            }
            sent.extend_from_slice(&bytes);
            let _ = conn.write_all(&sent);
            if as_peer {
                // A peer that has not completed the handshake is cut off by
                // the handshake deadline at the latest.
                prop_assert!(drained_until_closed(&mut conn, Duration::from_secs(5)));
            } else {
                let _ = conn.shutdown(std::net::Shutdown::Write);
                prop_assert!(drained_until_closed(&mut conn, Duration::from_secs(5)));
            }
            let mut probe = TimedConn::new(&server.addr, Duration::from_secs(5));
            prop_assert!(probe.rev().is_ok(), "the node stopped answering");
            Ok(())
        })
        .unwrap();
    // A valid frame on a fresh connection still works.
    let mut conn = server.connect();
    let resp = call(
        &mut conn,
        &Request {
            tag: Some(1),
            verb: Some(Verb::Rev as i32),
            ..Request::default()
        },
    );
    assert!(resp.rev.is_some());
    let _ = encode_frame(&Request::default());
}
