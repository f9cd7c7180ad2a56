//! The peer port under attack, and peer links under partitions, with real
//! `doozerd` processes on loopback.
//!
//! - An outsider who can reach the `-l` port but lacks the peer key can
//!   neither read (a catch-up request used to return a full snapshot,
//!   protected files included) nor write (a forged snapshot used to replace
//!   the store, a forged `Forward` to write a file).
//! - A node cut off by a partition (iptables rules on loopback; the nodes
//!   dial from their own IPs) is caught up and takes writes again soon after
//!   the heal, instead of waiting for TCP's backed-off retransmission.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cut::{require_iptables, Cut};
use common::*;
use doozer::codec::client::{Request, Verb};
use doozer::codec::peer::{encode_hello, encode_peer_frame, Hello, MAGIC, PROTOCOL_VERSION};
use doozer::codec::peer_auth::PeerKey;
use doozer::core::{Decree, PeerMsg, SnapshotData};
use doozer::paxos::Msg;
use doozer::runtime::peer_link::{self, PeerIdentity};
use doozer::runtime::rt;
use doozer::store::Mutation;
use doozer::types::{NodeId, Path, Rev, RevCheck};

const SECRET: &str = "correct horse battery staple";

/// A client connection that has passed ACCESS with `secret`, or why not.
fn try_conn_with(addr: &str, secret: &str) -> Result<TimedConn, String> {
    let mut conn = TimedConn::new(addr, Duration::from_secs(5));
    conn.ok(Request {
        verb: Some(Verb::Access as i32),
        value: Some(secret.as_bytes().to_vec()),
        ..Request::default()
    })?;
    Ok(conn)
}

/// A client connection that has passed ACCESS with `secret`.
fn conn_with(addr: &str, secret: &str) -> TimedConn {
    try_conn_with(addr, secret).expect("ACCESS with the right secret")
}

fn uri_with(addr: &str, secret: &str) -> String {
    format!("doozer:?ca={addr}&sk={secret}")
}

/// A seed, two more members and a slave, every node started with `env`;
/// `secret` opens the client port.
struct Bed {
    nodes: Vec<Node>,
    ids: Vec<String>,
    /// The ids in `/ctl/cal/0..3` once the members settled.
    cal: Vec<String>,
    dir: TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        print_logs_if_panicking(&self.nodes, &self.dir);
    }
}

impl Bed {
    fn start(name: &str, env: &[(&str, &str)], secret: &str, extra: &[&str]) -> Bed {
        let dir = TempDir::new(name);
        let net = loopback_net();
        let seed = free_addr_on(&format!("{net}1"));
        let mut nodes = vec![Node::spawn_env("node1", &seed, extra, env, &dir.path)];
        wait_for("the seed", Duration::from_secs(10), || {
            try_conn_with(&seed, secret)?.rev().map(|_| ())
        });
        for i in 2..=4 {
            let addr = free_addr_on(&format!("{net}{i}"));
            let mut args = vec!["-a", seed.as_str()];
            args.extend_from_slice(extra);
            nodes.push(Node::spawn_env(
                &format!("node{i}"),
                &addr,
                &args,
                env,
                &dir.path,
            ));
        }
        let mut bed = Bed {
            nodes,
            ids: Vec::new(),
            cal: Vec::new(),
            dir,
        };
        for i in 0..4 {
            let addr = bed.nodes[i].addr.clone();
            let id = wait_for(
                &format!("node{} to serve", i + 1),
                Duration::from_secs(15),
                || {
                    let mut conn = TimedConn::new(&addr, Duration::from_secs(2));
                    conn.ok(Request {
                        verb: Some(Verb::Access as i32),
                        value: Some(secret.as_bytes().to_vec()),
                        ..Request::default()
                    })?;
                    conn.self_id()
                },
            );
            bed.ids.push(id);
        }
        for slot in 1..3 {
            let out = doozer_with_env(
                &[("DOOZER_URI", &uri_with(&seed, secret))],
                &["set", &format!("/ctl/cal/{slot}"), "0"],
                b"",
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        bed.cal = wait_for("three members", Duration::from_secs(15), || {
            let mut conn = try_conn_with(&seed, secret)?;
            let members: Vec<String> = (0..3)
                .map(|slot| conn.get(&format!("/ctl/cal/{slot}")).map(|(b, _)| text(&b)))
                .collect::<Result<_, _>>()?;
            if members.iter().all(|m| bed.ids.contains(m)) {
                Ok(members)
            } else {
                Err(format!("/ctl/cal holds {members:?}"))
            }
        });
        bed
    }

    fn node_id(&self, i: usize) -> NodeId {
        NodeId::parse(&self.ids[i]).unwrap()
    }

    /// The node that holds no member slot.
    fn slave(&self) -> usize {
        (0..4).find(|i| !self.cal.contains(&self.ids[*i])).unwrap()
    }

    /// Indices of the members.
    fn members(&self) -> Vec<usize> {
        (0..4)
            .filter(|i| self.cal.contains(&self.ids[*i]))
            .collect()
    }
}

/// Sends `bytes` on a fresh connection to `addr` and collects everything the
/// node sends back until it closes the connection (or 5 s pass).
fn send_and_collect(addr: &str, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = conn.write_all(bytes);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

fn frame(msg: &PeerMsg) -> Vec<u8> {
    encode_peer_frame(msg)
}

/// What an outsider sends once connected: a catch-up request naming its own
/// address, a snapshot that would empty the store, and a forwarded write.
fn forged_messages(attacker: &str) -> Vec<u8> {
    let mut bytes = frame(&PeerMsg::CatchUp {
        from: Rev(0),
        addr: attacker.into(),
    });
    bytes.extend(frame(&PeerMsg::Snapshot(Box::new(SnapshotData {
        rev: Rev(1_000_000),
        files: vec![(
            Path::parse("/forged").unwrap(),
            Rev(1),
            b"x".to_vec().into(),
        )],
        membership: vec![(1, vec![NodeId::from_bytes([9; 10])])],
        dedupe: vec![],
    }))));
    bytes.extend(frame(&PeerMsg::Paxos(Msg::Forward {
        values: vec![Decree::Write {
            origin: NodeId::from_bytes([9; 10]),
            seq: 1,
            floor: 1,
            mutation: Mutation::Set {
                path: Path::parse("/forged").unwrap(),
                check: RevCheck::Clobber,
                body: b"forged".to_vec().into(),
            },
        }],
    })));
    bytes
}

/// Attack 1 of issue 9: the peer port with a secret set, from a program
/// that speaks the peer format but lacks the key. Also shows a cluster with
/// a secret (attach, slave, member slots) working over authenticated links.
#[test]
fn an_outsider_on_the_peer_port_reads_nothing_and_changes_nothing() {
    let bed = Bed::start(
        "peer-outsider",
        &[("DOOZER_RWSECRET", SECRET)],
        SECRET,
        &["-timeout", "5"],
    );
    let seed = bed.nodes[0].addr.clone();
    let slave = bed.nodes[bed.slave()].addr.clone();
    let rev = conn_with(&seed, SECRET)
        .set("/protected", 0, b"hidden value")
        .unwrap();
    // Replicated to the slave over the authenticated links.
    wait_for("the slave's copy", Duration::from_secs(10), || {
        let (body, got) = try_conn_with(&slave, SECRET)?.get("/protected")?;
        (got == rev && body == b"hidden value")
            .then_some(())
            .ok_or(format!("rev {got}"))
    });

    let attacker = "127.0.0.1:1";
    for target in [&seed, &slave] {
        // The old protocol: hello, then messages straight away.
        let mut v1 = MAGIC.to_vec();
        let hello = doozer::codec::peer::encode_handshake(&(1u32, "AAAAAAAAAAAAAAAA", "local"));
        v1.extend(hello);
        v1.extend(forged_messages(attacker));
        let (got, closed) = send_and_collect(target, &v1);
        assert!(closed, "{target}: the connection stayed open");
        assert!(got.is_empty(), "{target}: answered {} bytes", got.len());

        // This protocol's hello, then the messages without any proof.
        let mut v2 = encode_hello(&Hello {
            version: PROTOCOL_VERSION,
            from: NodeId::from_bytes([9; 10]),
            cluster: "local".into(),
            nonce: vec![7; 32],
        });
        v2.extend(forged_messages(attacker));
        let (got, closed) = send_and_collect(target, &v2);
        assert!(closed, "{target}: the connection stayed open");
        assert!(
            !got.windows(6).any(|w| w == b"hidden"),
            "{target}: a protected value leaked"
        );
    }
    // A full peer implementation with the wrong key, or none: no handshake.
    let target_id = bed.node_id(0);
    for key in [PeerKey::open(), PeerKey::for_secrets("", "a guess", "")] {
        let identity = PeerIdentity {
            me: NodeId::from_bytes([9; 10]),
            cluster: "local".into(),
            key,
            bind_ip: None,
            tls: None,
        };
        let err = rt::block_on(peer_link::dial(&identity, &target_id, &seed)).unwrap_err();
        assert!(err.contains("peer key"), "{err}");
    }
    // Control: with the cluster's key the same program gets in, so the
    // refusals above are the key's doing.
    let insider = PeerIdentity {
        me: NodeId::from_bytes([9; 10]),
        cluster: "local".into(),
        key: PeerKey::for_secrets("", SECRET, ""),
        bind_ip: None,
        tls: None,
    };
    rt::block_on(peer_link::dial(&insider, &target_id, &seed)).expect("the key opens the link");

    // Nothing changed, on any node; the cluster still takes writes.
    for node in &bed.nodes {
        let mut conn = conn_with(&node.addr, SECRET);
        assert_eq!(
            conn.get("/protected").unwrap(),
            (b"hidden value".to_vec(), rev)
        );
        assert_eq!(conn.get("/forged").unwrap().1, 0, "{}", node.name);
        assert_eq!(conn.get("/ctl/name").unwrap().0, b"local");
        let cal: Vec<String> = (0..3)
            .map(|s| text(&conn.get(&format!("/ctl/cal/{s}")).unwrap().0))
            .collect();
        assert_eq!(cal, bed.cal, "{}", node.name);
    }
    let after = conn_with(&slave, SECRET).set("/after", 0, b"ok").unwrap();
    assert!(after > rev);
    let log = std::fs::read_to_string(&bed.nodes[0].log).unwrap();
    assert!(
        log.contains("peer connection from 127.0.0.1") && log.contains("closed: bad hello"),
        "the refusals are logged (one a second):\n{}",
        bed.nodes[0].log_tail(20)
    );
}

/// A node whose peer key differs cannot join, even with the client secret
/// that lets it pass the attach check.
#[test]
fn a_node_with_another_peer_key_cannot_join() {
    let dir = TempDir::new("peer-other-key");
    let net = loopback_net();
    let seed_addr = free_addr_on(&format!("{net}1"));
    let env = [
        ("DOOZER_RWSECRET", SECRET),
        ("DOOZER_PEERSECRET", "the cluster's peer key"),
    ];
    let mut seed = Node::spawn_env("node1", &seed_addr, &[], &env, &dir.path);
    wait_for("the seed", Duration::from_secs(10), || {
        try_conn_with(&seed_addr, SECRET)?.rev().map(|_| ())
    });
    let addr = free_addr_on(&format!("{net}2"));
    let other = [
        ("DOOZER_RWSECRET", SECRET),
        ("DOOZER_PEERSECRET", "another key"),
    ];
    let mut joiner = Node::spawn_env("node2", &addr, &["-a", &seed_addr], &other, &dir.path);
    wait_for("the refusal in the logs", Duration::from_secs(10), || {
        let seed_log = std::fs::read_to_string(&seed.log).unwrap_or_default();
        let joiner_log = std::fs::read_to_string(&joiner.log).unwrap_or_default();
        (seed_log.contains("did not prove it holds the peer key")
            && joiner_log.contains("peer key differs"))
        .then_some(())
        .ok_or_else(|| "not yet".to_string())
    });
    // Never registered in the cluster.
    let mut conn = conn_with(&seed_addr, SECRET);
    let nodes = conn.getdir("/ctl/node").unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(seed.is_running());
    joiner.kill9();
}

// ---------------------------------------------------------------------------
// Partitions

/// Cuts node `i` off for `secs`, with writes going on through `writer`, then
/// heals and returns how long after the heal node `i` had every write acked
/// before the heal and took a write of its own.
fn cut_and_heal(bed: &Bed, i: usize, writer: usize, secs: u64) -> Duration {
    let ip = bed.nodes[i].addr.rsplit_once(':').unwrap().0.to_string();
    let cut = Cut::new(&ip);
    let writer_addr = bed.nodes[writer].addr.clone();
    let start = Instant::now();
    let mut last_acked = 0;
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        // Writes go on (the first ones may wait out a failover).
        let write = try_conn_with(&writer_addr, SECRET)
            .and_then(|mut conn| conn.set(&format!("/during/{n}"), -1, b"w"));
        if let Ok(rev) = write {
            last_acked = rev;
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(n > 0, "no write was acknowledged during the cut");
    drop(cut);
    let healed = Instant::now();
    let addr = bed.nodes[i].addr.clone();
    wait_for(
        "the cut node to catch up and take a write",
        Duration::from_secs(20),
        || {
            let mut conn = try_conn_with(&addr, SECRET)?;
            let rev = conn.rev()?;
            if rev < last_acked {
                return Err(format!("at rev {rev}, {last_acked} was acknowledged"));
            }
            conn.set("/after-heal", -1, b"ok").map(|_| ())
        },
    );
    healed.elapsed()
}

fn leader_index(bed: &Bed) -> usize {
    let (body, _) = conn_with(&bed.nodes[0].addr, SECRET)
        .get("/ctl/leader")
        .unwrap();
    let leader = text(&body);
    bed.ids.iter().position(|id| *id == leader).unwrap()
}

/// Item 8 of issue 9: a node cut off for 10 s (the leader) or 30 s (a
/// follower) is caught up and takes a write soon after the heal.
#[test]
fn a_healed_partition_takes_writes_within_a_second() {
    require_iptables();
    let bed = Bed::start(
        "peer-partition",
        &[("DOOZER_RWSECRET", SECRET)],
        SECRET,
        &["-timeout", "120"],
    );
    let leader = leader_index(&bed);
    let other = bed.members().into_iter().find(|i| *i != leader).unwrap();
    let took = cut_and_heal(&bed, leader, other, 10);
    println!("leader cut off for 10 s: caught up and took a write {took:?} after the heal");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let leader = leader_index(&bed);
    let follower = bed.members().into_iter().find(|i| *i != leader).unwrap();
    let took = cut_and_heal(&bed, follower, leader, 30);
    println!("follower cut off for 30 s: caught up and took a write {took:?} after the heal");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// The process's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS in /proc/<pid>/status")
        * 1024
}

/// Attack 9 of issue 9: inbound peer connections that stall. Before the
/// handshake nobody gets to send more than a hello, and every stalled one is
/// closed at the handshake deadline; frames announced larger than a hello
/// are refused from their header. The node stays small and serving.
#[test]
fn stalled_peer_connections_are_closed_and_hold_little() {
    use doozer::codec::peer::MAX_HELLO_BYTES;
    use doozer::runtime::peer_link::HANDSHAKE_TIMEOUT;
    let dir = TempDir::new("peer-stalled");
    let addr = free_addr_on(&format!("{}1", loopback_net()));
    let node = Node::spawn_env(
        "node1",
        &addr,
        &[],
        &[("DOOZER_RWSECRET", SECRET)],
        &dir.path,
    );
    wait_for("the node", Duration::from_secs(10), || {
        try_conn_with(&addr, SECRET)?.rev().map(|_| ())
    });
    let before = rss_bytes(node.pid());
    let started = Instant::now();
    let mut conns = Vec::new();
    for i in 0..400 {
        let mut conn = TcpStream::connect(&addr).unwrap();
        let mut bytes = MAGIC.to_vec();
        if i % 100 == 0 {
            // A 48 MiB frame where the hello goes.
            bytes.extend_from_slice(&(48u32 << 20).to_be_bytes());
        } else {
            // The largest hello announced, and a little of it sent.
            bytes.extend_from_slice(&(MAX_HELLO_BYTES as u32).to_be_bytes());
            bytes.extend_from_slice(&[0; 100]);
        }
        conn.write_all(&bytes).unwrap();
        conns.push(conn);
    }
    let peak = rss_bytes(node.pid());
    // Meanwhile clients are served.
    assert!(conn_with(&addr, SECRET).rev().is_ok());
    let deadline = HANDSHAKE_TIMEOUT + Duration::from_secs(3);
    for mut conn in conns {
        let left = deadline.saturating_sub(started.elapsed());
        conn.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 64];
        let timed_out = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if !timed_out(&e) => {}
            other => panic!(
                "a stalled peer connection is still open after {:?}: {other:?}",
                started.elapsed()
            ),
        }
    }
    println!(
        "400 stalled peer connections closed within {:?}; RSS {} MB before, {} MB with them open",
        started.elapsed(),
        before >> 20,
        peak >> 20
    );
    assert!(peak < before + (64 << 20), "RSS grew to {} MB", peak >> 20);
    assert!(conn_with(&addr, SECRET).rev().is_ok());
}
