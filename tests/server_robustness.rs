//! Bad input against a real `doozerd`: every malformed frame gets the error of
//! the contract or a disconnect of that one connection, and the server keeps
//! serving everyone else.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use doozer::codec::client::{Request, Verb};
use doozer::error::ErrCode;

fn req(tag: i32, verb: Verb) -> Request {
    Request {
        tag: Some(tag),
        verb: Some(verb as i32),
        ..Request::default()
    }
}

fn set(tag: i32, path: &str, value: Vec<u8>) -> Request {
    Request {
        path: Some(path.into()),
        value: Some(value),
        rev: Some(-1),
        ..req(tag, Verb::Set)
    }
}

fn still_serves(server: &mut Server) {
    assert!(server.is_running(), "doozerd died");
    let mut conn = server.connect();
    let reply = call(&mut conn, &req(1, Verb::Rev));
    assert!(reply.rev.unwrap() > 0);
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let mut server = Server::start(&[]);
    let mut bystander = server.connect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative length", vec![0xff, 0xff, 0xff, 0xfe]),
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff]),
        ("over the frame cap", (5u32 << 20).to_be_bytes().to_vec()),
        ("undecodable body", vec![0, 0, 0, 3, 0xff, 0xff, 0xff]),
        (
            "invalid utf-8 path",
            vec![0, 0, 0, 6, 0x10, 0x01, 0x22, 0x02, 0xc3, 0x28],
        ),
    ];
    for (what, bytes) in cases {
        let mut conn = server.connect();
        conn.write_all(&bytes).unwrap();
        assert!(
            closed_by_server(&mut conn),
            "{what}: the server must close the connection"
        );
        still_serves(&mut server);
    }
    // A frame cut short by the client's close.
    let mut conn = server.connect();
    conn.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
    drop(conn);
    still_serves(&mut server);
    // The bystander never noticed.
    assert!(call(&mut bystander, &req(9, Verb::Rev)).rev.is_some());
}

#[test]
fn empty_frame_and_unknown_verbs_get_unknown_verb() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.write_all(&[0, 0, 0, 0]).unwrap();
    let reply = recv(&mut conn).unwrap();
    assert_eq!(
        (reply.tag, reply.err_code),
        (None, Some(ErrCode::UnknownVerb as i32))
    );
    for verb in [0, 4, 8, 10, 12345] {
        let r = Request {
            tag: Some(3),
            verb: Some(verb),
            ..Request::default()
        };
        let reply = call(&mut conn, &r);
        assert_eq!(
            (reply.tag, reply.err_code),
            (Some(3), Some(ErrCode::UnknownVerb as i32))
        );
    }
    // The connection is still usable.
    assert!(call(&mut conn, &req(4, Verb::Rev)).rev.is_some());
}

#[test]
fn duplicate_tag_in_flight_is_tag_in_use() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let wait = Request {
        path: Some("/never/**".into()),
        rev: Some(1_000_000),
        ..req(7, Verb::Wait)
    };
    send(&mut conn, &wait);
    let reply = call(&mut conn, &req(7, Verb::Rev));
    assert_eq!(
        (reply.tag, reply.err_code),
        (Some(7), Some(ErrCode::TagInUse as i32))
    );
    // Other tags are fine.
    assert!(call(&mut conn, &req(8, Verb::Rev)).rev.is_some());
}

#[test]
fn oversized_value_is_refused_with_a_clear_error() {
    let server = Server::start(&["--max-value-bytes", "1000"]);
    let mut conn = server.connect();
    let reply = call(&mut conn, &set(1, "/big", vec![b'x'; 1001]));
    assert_eq!(reply.err_code, Some(ErrCode::Other as i32));
    assert_eq!(reply.err_detail.as_deref(), Some("value too large"));
    let reply = call(&mut conn, &set(2, "/big", vec![b'x'; 1000]));
    assert_eq!(reply.err_code, None);
}

#[test]
fn one_mebibyte_value_round_trips() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let reply = call(&mut conn, &set(1, "/mib", value.clone()));
    assert_eq!(reply.err_code, None);
    let get = Request {
        path: Some("/mib".into()),
        ..req(2, Verb::Get)
    };
    assert_eq!(call(&mut conn, &get).value.unwrap(), value);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_carry_on() {
    let mut server = Server::start(&[]);
    let mut setup = server.connect();
    assert_eq!(
        call(&mut setup, &set(1, "/fat", vec![b'y'; 512 * 1024])).err_code,
        None
    );

    // Ask for far more reply bytes than any buffer holds, never read them.
    let mut greedy = server.connect();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let get = Request {
        path: Some("/fat".into()),
        ..req(0, Verb::Get)
    };
    let started = Instant::now();
    let mut tag = 0;
    while started.elapsed() < Duration::from_secs(20) && tag < 20_000 {
        let mut r = get.clone();
        r.tag = Some(tag);
        tag += 1;
        if greedy
            .write_all(&doozer::codec::client::encode_frame(&r))
            .is_err()
        {
            break;
        }
    }
    // Whatever happened to the greedy client, the server serves others.
    still_serves(&mut server);
    assert!(
        closed_by_server(&mut greedy),
        "a client that never reads is cut off (sent {tag} requests)"
    );
    still_serves(&mut server);
}

#[test]
fn many_connections_closing_with_pending_waits_do_not_disturb_the_server() {
    let mut server = Server::start(&[]);
    for round in 0..20 {
        let mut conn = server.connect();
        for tag in 0..100 {
            let wait = Request {
                path: Some(format!("/w{round}/**")),
                rev: Some(1_000_000),
                ..req(tag, Verb::Wait)
            };
            send(&mut conn, &wait);
        }
        drop(conn);
    }
    still_serves(&mut server);
}

// ---------------------------------------------------------------------------
// Attacks on the client edge (issue 9, items 4–6): each must leave the server
// alive, bounded in memory and serving everyone else.

/// The process's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/<pid>/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// A connection to `server` from the loopback source address `ip` (every
/// loopback address is this host's, but the server sees another client).
fn connect_from(ip: &str, server: &Server) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let to: std::net::SocketAddr = server.addr.parse().unwrap();
    let from: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let conn: std::net::TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

/// The slowest of `REV`s sent one after another on a fresh connection until
/// `stop` is set.
fn time_revs(addr: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Duration {
    let mut conn = TimedConn::new(&addr, Duration::from_secs(10));
    let mut worst = Duration::ZERO;
    let mut tag = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        conn.rev().expect("a bystander's REV is answered");
        worst = worst.max(started.elapsed());
        tag += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(tag > 0);
    worst
}

#[test]
fn attack_4_many_waits_with_huge_globs_are_refused_past_the_byte_budget() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut server = Server::start(&[]);
    let pid = server.child.id();
    let before = rss_bytes(pid);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let bystander = std::thread::spawn({
        let (addr, stop) = (server.addr.clone(), stop.clone());
        move || time_revs(addr, stop)
    });

    // 600 WAITs, each with a 1 MiB glob that never matches, far in the
    // future: the issue grew the server from 13 MB to 2.4 GB with these.
    // Globs that long are refused outright now; then 600 more at the
    // longest glob allowed, which the byte budget stops after a couple of
    // hundred.
    const WAITS: i32 = 600;
    let huge = format!("/{}", "g".repeat((1 << 20) - 1));
    let longest = format!("/{}", "g".repeat(doozer::types::MAX_GLOB_BYTES - 1));
    let per_wait = doozer::session::request_cost(&Request {
        path: Some(longest.clone()),
        ..req(0, Verb::Wait)
    });
    let admitted_at_most = (8 << 20) / per_wait + 1;
    let mut conn = server.connect();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let writer = std::thread::spawn({
        let mut conn = conn.try_clone().unwrap();
        let (huge, longest) = (huge.clone(), longest.clone());
        move || {
            for tag in 0..2 * WAITS {
                let glob = if tag < WAITS { &huge } else { &longest };
                let wait = Request {
                    path: Some(glob.clone()),
                    rev: Some(1_000_000_000),
                    ..req(tag, Verb::Wait)
                };
                conn.write_all(&doozer::codec::client::encode_frame(&wait))
                    .unwrap();
            }
        }
    });
    // Every WAIT refused is answered at once; the ones taken stay pending
    // (at most the per-connection budget of 8 MiB of them).
    let mut too_long = 0;
    let mut refused = 0;
    let mut other_errors = Vec::new();
    let mut peak = 0;
    let expected = 2 * WAITS as usize - admitted_at_most;
    while too_long + refused + other_errors.len() < expected {
        let reply = recv(&mut conn).expect("the attacker's connection stays open");
        match reply.err_detail.as_deref() {
            Some("too many bytes in flight") => refused += 1,
            Some(detail) if detail.starts_with("invalid glob pattern") => too_long += 1,
            _ => other_errors.push(format!("{reply:?}")),
        }
        if (too_long + refused + other_errors.len()) % 50 == 0 {
            peak = peak.max(rss_bytes(pid));
        }
    }
    writer.join().unwrap();
    peak = peak.max(rss_bytes(pid));
    stop.store(true, Ordering::Relaxed);
    let worst_rev = bystander.join().unwrap();
    eprintln!(
        "RSS {} MB before, {} MB at most during; {too_long} refused as too long, {refused} \
         for bytes; other replies: {other_errors:?}; slowest bystander REV {worst_rev:?}",
        before >> 20,
        peak >> 20
    );
    assert_eq!(too_long, WAITS as usize, "every 1 MiB glob is refused");
    assert!(other_errors.is_empty(), "{other_errors:?}");
    assert!(
        refused >= WAITS as usize - admitted_at_most,
        "{refused} refused for bytes"
    );
    assert!(peak < 300 << 20, "RSS reached {} MB", peak >> 20);
    assert!(
        worst_rev < Duration::from_millis(500),
        "a bystander's REV took {worst_rev:?}"
    );
    still_serves(&mut server);
}

#[test]
fn attack_5_idle_sockets_from_one_address_do_not_lock_others_out() {
    let mut server = Server::start(&["--max-connections", "500"]);
    // 600 idle sockets from 127.0.0.1 (the default source on loopback):
    // half of the 500 slots at most are theirs, the rest are closed.
    let idle: Vec<std::net::TcpStream> = (0..600)
        .map(|_| connect_from("127.0.0.1", &server))
        .collect();
    // Accepted in order: the first 250 are held, later ones closed.
    let mut last = idle.into_iter().rev();
    let mut late = last.next().unwrap();
    assert!(
        closed_by_server(&mut late),
        "a connection over the per-address cap is closed"
    );
    let held: Vec<_> = last.collect();
    // Another address still gets in and is served.
    let mut other = connect_from("127.0.0.2", &server);
    let reply = call(&mut other, &req(1, Verb::Rev));
    assert!(reply.rev.unwrap() > 0);
    assert!(server.is_running());
    // Count how many of the idle ones the server kept.
    let mut open = 0;
    for mut conn in held {
        conn.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut buf = [0u8; 1];
        match std::io::Read::read(&mut conn, &mut buf) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                open += 1
            }
            _ => {}
        }
    }
    eprintln!("{open} of 600 idle sockets from one address held open");
    assert_eq!(open, 250, "half of --max-connections per address");
}

#[test]
fn attack_6_guessing_the_secret_is_cut_off_after_three_tries() {
    let mut server = Server::start_with_env(&[], &[("DOOZER_RWSECRET", "s3cret")]);
    let mut conn = server.connect();
    // Ten guesses at wire speed, as a brute-forcer would send them.
    for tag in 0..10 {
        let guess = Request {
            value: Some(format!("guess{tag}").into_bytes()),
            ..req(tag, Verb::Access)
        };
        // The server may close before every guess is written.
        let _ = conn.write_all(&doozer::codec::client::encode_frame(&guess));
    }
    let mut answers = Vec::new();
    while let Some(reply) = recv(&mut conn) {
        assert_eq!(reply.err_detail.as_deref(), Some("permission denied"));
        answers.push(reply.tag.unwrap());
    }
    assert_eq!(answers, [0, 1, 2], "three guesses answered, then closed");
    // The right secret on a new connection works.
    let mut conn = server.connect();
    let access = Request {
        value: Some(b"s3cret".to_vec()),
        ..req(1, Verb::Access)
    };
    assert_eq!(call(&mut conn, &access).err_code, None);
    assert!(call(&mut conn, &req(2, Verb::Rev)).rev.unwrap() > 0);
    assert!(server.is_running());
}

#[test]
fn with_secrets_a_connection_must_pass_access_in_time() {
    let server =
        Server::start_with_env(&["--access-timeout", "1"], &[("DOOZER_RWSECRET", "s3cret")]);
    let started = Instant::now();
    // Silent from the start.
    let mut silent = server.connect();
    // Talking, but never with the secret.
    let mut talker = server.connect();
    let reply = call(&mut talker, &req(1, Verb::Rev));
    assert_eq!(reply.err_detail.as_deref(), Some("permission denied"));
    // Passed ACCESS: no deadline any more.
    let mut good = server.connect();
    let access = Request {
        value: Some(b"s3cret".to_vec()),
        ..req(1, Verb::Access)
    };
    assert_eq!(call(&mut good, &access).err_code, None);

    assert!(
        closed_by_server(&mut silent),
        "a silent connection is closed"
    );
    assert!(
        closed_by_server(&mut talker),
        "one without ACCESS is closed"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    assert!(call(&mut good, &req(2, Verb::Rev)).rev.unwrap() > 0);
}

#[test]
fn without_secrets_idle_connections_stay() {
    let server = Server::start(&["--access-timeout", "0.5"]);
    let mut conn = server.connect();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(call(&mut conn, &req(1, Verb::Rev)).rev.unwrap() > 0);
}

#[test]
fn attack_6_guessing_over_many_connections_locks_the_address_out() {
    use doozer::runtime::client_conn::MAX_GUESSES_PER_ADDRESS;
    let mut server = Server::start_with_env(&[], &[("DOOZER_RWSECRET", "s3cret")]);
    let guess = |conn: &mut std::net::TcpStream, tag: i32| {
        let access = Request {
            value: Some(format!("guess{tag}").into_bytes()),
            ..req(tag, Verb::Access)
        };
        let _ = conn.write_all(&doozer::codec::client::encode_frame(&access));
        recv(conn)
    };
    // Two guesses a connection (under the per-connection limit), over and
    // over from 127.0.0.1, until the address's allowance is used up.
    let mut answered = 0;
    for round in 0..MAX_GUESSES_PER_ADDRESS as i32 {
        let mut conn = connect_from("127.0.0.1", &server);
        for tag in 0..2 {
            match guess(&mut conn, round * 2 + tag) {
                Some(reply) => {
                    assert_eq!(reply.err_detail.as_deref(), Some("permission denied"));
                    answered += 1;
                }
                None => break,
            }
        }
        if answered >= MAX_GUESSES_PER_ADDRESS {
            break;
        }
    }
    assert_eq!(answered, MAX_GUESSES_PER_ADDRESS);
    // Now the address is out: a new connection is closed at once, even
    // with the right secret.
    let mut conn = connect_from("127.0.0.1", &server);
    let access = Request {
        value: Some(b"s3cret".to_vec()),
        ..req(1, Verb::Access)
    };
    let _ = conn.write_all(&doozer::codec::client::encode_frame(&access));
    assert!(recv(&mut conn).is_none(), "a locked-out address is refused");
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", &server);
    assert_eq!(call(&mut other, &access).err_code, None);
    assert!(call(&mut other, &req(2, Verb::Rev)).rev.unwrap() > 0);
    assert!(server.is_running());
}

/// A seed and two nodes attached to it, all three members: returns once
/// `/ctl/cal/0..3` hold three registered ids.
fn three_members(dir: &TempDir) -> Vec<Node> {
    let net = loopback_net();
    let seed_addr = free_addr_on(&format!("{net}1"));
    let mut nodes = vec![Node::spawn("node1", &seed_addr, &[], &dir.path)];
    nodes[0].wait_answers(Duration::from_secs(10));
    for i in 2..=3 {
        let addr = free_addr_on(&format!("{net}{i}"));
        let args = ["-a", seed_addr.as_str()];
        nodes.push(Node::spawn(&format!("node{i}"), &addr, &args, &dir.path));
    }
    for node in &mut nodes {
        node.wait_answers(Duration::from_secs(10));
    }
    for slot in 1..3 {
        let out = nodes[0].doozer(&["set", &format!("/ctl/cal/{slot}"), "0"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    wait_for("3 members", Duration::from_secs(15), || {
        let cal = TimedConn::new(&nodes[0].addr, Duration::from_secs(5)).dir_bodies("/ctl/cal")?;
        (cal.len() == 3 && cal.values().all(|id| id.len() == 16))
            .then_some(())
            .ok_or(format!("/ctl/cal is {cal:?}"))
    });
    nodes
}

/// Attack 2 of issue 9: one SET of a path of 8,000 components overflowed the
/// stack of every replica that applied it (on 3 members the cluster went
/// down). Now such a path is refused at the edge (`BAD_PATH`: longer than
/// 4 KiB), and the deepest path allowed (2,048 components) is stored,
/// replicated, walked, waited on and deleted on every member.
#[test]
fn deep_paths_are_refused_or_served_and_every_replica_lives() {
    let dir = TempDir::new("deep-paths");
    let mut nodes = three_members(&dir);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut conn = TcpStream::connect(&nodes[0].addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let attack = "/a".repeat(8000);
        let reply = call(&mut conn, &set(1, &attack, b"x".to_vec()));
        assert_eq!(reply.err_code, Some(ErrCode::BadPath as i32), "{reply:?}");
        let get = Request {
            path: Some(attack.clone()),
            ..req(2, Verb::Get)
        };
        assert_eq!(
            call(&mut conn, &get).err_code,
            Some(ErrCode::BadPath as i32)
        );
        let stat = Request {
            path: Some(attack),
            ..req(3, Verb::Stat)
        };
        let reply = call(&mut conn, &stat);
        assert_eq!(
            (reply.err_code, reply.rev, reply.len),
            (None, Some(0), Some(0))
        );

        // The deepest path allowed: 4,096 bytes, 2,048 components.
        let deepest = format!("{}/x", "/a".repeat(2047));
        assert_eq!(deepest.len(), 4096);
        let watch = Request {
            path: Some("/a/**x".into()),
            rev: Some(1_000_000_000),
            ..req(4, Verb::Wait)
        };
        let mut waiter = TcpStream::connect(&nodes[2].addr).unwrap();
        waiter
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let rev_now = call(&mut waiter, &req(5, Verb::Rev)).rev.unwrap();
        send(
            &mut waiter,
            &Request {
                rev: Some(rev_now + 1),
                ..watch
            },
        );
        let reply = call(&mut conn, &set(5, &deepest, b"deep".to_vec()));
        assert_eq!(reply.err_code, None, "{reply:?}");
        let rev = reply.rev.unwrap();
        let fired = recv(&mut waiter).expect("the WAIT on a follower fires");
        assert_eq!(fired.err_code, None, "{:?}", fired.err_detail);
        assert!(fired.path.as_deref() == Some(deepest.as_str()) && fired.rev == Some(rev));
        for node in &nodes {
            node.wait_value(&deepest, b"deep", rev, Duration::from_secs(10));
            let walk = Request {
                path: Some("/a/**".into()),
                offset: Some(0),
                ..req(6, Verb::Walk)
            };
            let mut c = TcpStream::connect(&node.addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let reply = call(&mut c, &walk);
            assert!(reply.path.as_deref() == Some(deepest.as_str()), "{reply:?}");
        }
        let del = Request {
            path: Some(deepest.clone()),
            rev: Some(-1),
            ..req(7, Verb::Del)
        };
        assert_eq!(call(&mut conn, &del).err_code, None);
        let glob = Request {
            path: Some(format!("/{}", "*".repeat(100_000))),
            rev: Some(1),
            ..req(8, Verb::Wait)
        };
        let reply = call(&mut conn, &glob);
        assert_eq!(reply.err_code, Some(ErrCode::Other as i32));
        let detail = reply.err_detail.unwrap_or_default();
        assert!(
            detail.starts_with("invalid glob pattern: ") && detail.len() < 100,
            "{detail}"
        );
    }));
    for node in &mut nodes {
        assert!(node.is_running(), "{} died", node.name);
        TimedConn::new(&node.addr, Duration::from_secs(5))
            .rev()
            .unwrap();
    }
    print_logs_if_panicking(&nodes, &dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Attack 3 of issue 9: WAIT from rev 1 with a long many-star glob over the
/// whole history used to hold the core thread (1.2–2.8 s with a 200,000-star
/// glob). With the 4 KiB glob allowed now, 2,000 revs of 4 KiB paths are
/// about 340 M steps of the matcher, close to a second per WAIT. Here 4 such
/// WAITs at once: another client's REV keeps answering within milliseconds
/// (the scans go on a bounded piece per batch), and the WAITs still answer
/// correctly once a matching event comes.
#[test]
fn long_wait_scans_do_not_freeze_other_clients() {
    let mut server = Server::start(&["-hist", "3000"]);
    // 2,000 revs whose path the NFA must read to the end: 4,000 bytes of `/a`.
    let long = "/a".repeat(2000);
    let mut writer = server.connect();
    for chunk in 0..20 {
        for i in 0..100 {
            send(&mut writer, &set(chunk * 100 + i, &long, b"v".to_vec()));
        }
        for _ in 0..100 {
            let reply = recv(&mut writer).expect("SET answered");
            assert_eq!(reply.err_code, None, "{reply:?}");
        }
    }
    // `/**a**a…**a**b`: 4,094 bytes, prefix `/`, every state alive on `/a/a…`.
    let glob = format!("/**{}b", "a**".repeat(1363));
    assert!(glob.len() <= 4096);
    let mut attackers: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut c = server.connect();
            let wait = Request {
                path: Some(glob.clone()),
                rev: Some(1),
                ..req(i, Verb::Wait)
            };
            send(&mut c, &wait);
            c
        })
        .collect();
    let mut probe = server.connect();
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    let mut tag = 0;
    while Instant::now() < until {
        tag += 1;
        let started = Instant::now();
        let reply = call(&mut probe, &req(tag, Verb::Rev));
        assert!(reply.rev.unwrap() > 2000);
        worst = worst.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("worst REV latency during 4 long WAIT scans: {worst:?}");
    assert!(worst < Duration::from_secs(1), "REV took {worst:?}");
    // No WAIT matched the history; a matching write answers all four.
    let hit = format!("{}/b", "/a".repeat(1400));
    let reply = call(&mut writer, &set(5000, &hit, b"hit".to_vec()));
    let rev = reply.rev.expect("SET answered");
    for c in &mut attackers {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let fired = recv(c).expect("the WAIT answers");
        assert_eq!(fired.err_code, None, "{:?}", fired.err_detail);
        assert!(fired.path.as_deref() == Some(hit.as_str()) && fired.rev == Some(rev));
    }
    still_serves(&mut server);
}

/// The listing side of "no request monopolises the core": a WALK at a high
/// offset walks that many files, and 200 of them pipelined over 10,000 files
/// used to be answered back to back on the core thread. They now go on a
/// bounded piece per turn of the loop: another client's REV keeps answering
/// quickly, and every WALK still gets the right file.
#[test]
fn walks_far_into_a_big_tree_do_not_freeze_other_clients() {
    let mut server = Server::start(&[]);
    let name = |i: usize| format!("/w/{i:05}{}", "x".repeat(100));
    let mut writer = server.connect();
    for chunk in 0..100 {
        for i in 0..100 {
            send(
                &mut writer,
                &set(i, &name(chunk * 100 + i as usize), b"v".to_vec()),
            );
        }
        for _ in 0..100 {
            let reply = recv(&mut writer).expect("SET answered");
            assert_eq!(reply.err_code, None, "{reply:?}");
        }
    }
    let mut walkers: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = server.connect();
            for tag in 0..50 {
                let walk = Request {
                    path: Some("/w/**".into()),
                    offset: Some(9999),
                    ..req(tag, Verb::Walk)
                };
                send(&mut c, &walk);
            }
            c
        })
        .collect();
    let mut probe = server.connect();
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    let mut tag = 0;
    while Instant::now() < until {
        tag += 1;
        let started = Instant::now();
        call(&mut probe, &req(tag, Verb::Rev));
        worst = worst.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("worst REV latency during 200 WALKs at offset 9,999: {worst:?}");
    assert!(worst < Duration::from_secs(1), "REV took {worst:?}");
    let last = name(9999);
    for c in &mut walkers {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        for _ in 0..50 {
            let reply = recv(c).expect("the WALK answers");
            assert_eq!(reply.err_code, None, "{:?}", reply.err_detail);
            assert_eq!(reply.path.as_deref(), Some(last.as_str()));
        }
    }
    still_serves(&mut server);
}
