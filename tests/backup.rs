//! Backups end to end, on real processes (addresses 127.0.10.x): `doozer
//! snapshot save` from a slave of a 3-member cluster under write load gives
//! exactly the tree a WALK shows at the saved rev; `restore` seeds a fresh
//! node and refuses a non-empty one; a client that asks for a SNAPSHOT of
//! a large tree and never reads holds only its own connection and a
//! bounded amount of the server's memory; SNAPSHOT needs read rights.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use doozer::backup::{self, BackupReader};
use doozer::client::Client;
use doozer::codec::client::{flags, Request, Verb};
use doozer::error::ErrCode;
use doozer::runtime::rt;

/// The nodes of one test; on a failed test prints every node's log tail.
struct Nodes {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        print_logs_if_panicking(&self.nodes, &self.dir);
    }
}

fn conn(node: &Node) -> TimedConn {
    TimedConn::new(&node.addr, Duration::from_secs(10))
}

fn client(node: &Node) -> Client {
    rt::block_on(Client::connect(&node.addr)).expect("connects")
}

/// Writes `files` with at most 64 SETs in flight.
fn fill(c: &Client, files: &[(String, Vec<u8>)]) {
    rt::block_on(async {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut pending = FuturesUnordered::new();
        for (path, body) in files {
            if pending.len() >= 64 {
                let done: Result<i64, _> = pending.next().await.unwrap();
                done.expect("set");
            }
            pending.push(c.set(path, -1, body));
        }
        while let Some(r) = pending.next().await {
            r.expect("set");
        }
    });
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Every file of a backup, in order.
fn read_backup(file: &std::path::Path) -> (i64, Vec<(String, i64, Vec<u8>)>) {
    let mut r = BackupReader::open(file).unwrap();
    let mut out = Vec::new();
    while let Some(f) = r.next_file().unwrap() {
        out.push((f.path, f.rev, f.body));
    }
    (r.rev(), out)
}

#[test]
fn save_from_a_slave_under_load_equals_walk_and_restores_into_a_new_node() {
    let dir = TempDir::new("backup-save");
    let extra = ["-hist", "50000"];
    let seed_addr = free_addr_on("127.0.10.1");
    let mut t = Nodes {
        nodes: vec![Node::spawn("node1", &seed_addr, &extra, &dir.path)],
        dir,
    };
    t.nodes[0].wait_answers(Duration::from_secs(10));
    for i in 2..=4 {
        let addr = free_addr_on(&format!("127.0.10.{i}"));
        let args = ["-a", seed_addr.as_str(), "-hist", "50000"];
        let node = Node::spawn(&format!("node{i}"), &addr, &args, &t.dir.path);
        t.nodes.push(node);
    }
    for node in &mut t.nodes {
        node.wait_answers(Duration::from_secs(10));
    }
    for slot in 1..3 {
        let out = t.nodes[0].doozer(&["set", &format!("/ctl/cal/{slot}"), "0"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let ids: Vec<String> = (0..4)
        .map(|i| {
            wait_for("SELF", Duration::from_secs(5), || {
                conn(&t.nodes[i]).self_id()
            })
        })
        .collect();
    let cal = wait_for("3 members", Duration::from_secs(20), || {
        let cal = conn(&t.nodes[0]).dir_bodies("/ctl/cal")?;
        (cal.len() == 3 && cal.values().all(|id| ids.contains(id)))
            .then_some(cal.clone())
            .ok_or(format!("{cal:?}"))
    });
    let slave = (0..4)
        .find(|i| !cal.values().any(|id| *id == ids[*i]))
        .expect("one slave");

    // A few thousand files, some of 1 MiB.
    let mut files: Vec<(String, Vec<u8>)> = (0..3000)
        .map(|i| {
            (
                format!("/data/d{}/f{i}", i % 37),
                format!("body {i}").into_bytes(),
            )
        })
        .collect();
    for i in 0..6 {
        files.push((format!("/big/b{i}"), vec![b'a' + i as u8; 1 << 20]));
    }
    let writer_client = client(&t.nodes[0]);
    fill(&writer_client, &files);

    // Another client keeps writing while the slave saves.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let c = writer_client.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let path = format!("/data/d{}/f{}", n % 37, n % 3000);
                rt::block_on(c.set(&path, -1, format!("rewrite {n}").as_bytes())).unwrap();
                if n.is_multiple_of(10) {
                    rt::block_on(c.set(&format!("/new/n{n}"), -1, b"new")).unwrap();
                }
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let file = t.dir.path.join("cluster.snap");
    let file_s = file.to_str().unwrap();
    let started = Instant::now();
    let out = t.nodes[slave].doozer(&["snapshot", "save", file_s], b"");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let writes = load.join().unwrap();
    assert!(out.status.success(), "save: {}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(writes > 0, "the load wrote during the save");
    assert!(
        said.starts_with("saved rev ") && said.contains(file_s),
        "{said}"
    );
    eprintln!("{} in {took:?} ({writes} writes by the load)", said.trim());

    // The file holds exactly what a WALK shows at its rev, revs included.
    let (rev, saved) = read_backup(&file);
    assert!(
        said.contains(&format!("saved rev {rev}, {} files", saved.len())),
        "{said}"
    );
    let walked = rt::block_on(client(&t.nodes[slave]).walk_all("/**", rev)).unwrap();
    assert_eq!(saved.len(), walked.len());
    for (s, w) in saved.iter().zip(&walked) {
        assert_eq!((s.0.as_str(), s.1), (w.path.as_str(), w.rev));
        assert!(s.2 == w.body, "body of {}", s.0);
    }
    assert!(saved.iter().filter(|f| f.2.len() == 1 << 20).count() == 6);
    assert!(saved.iter().any(|f| f.0.starts_with("/ctl/")));

    let out = t.nodes[slave].doozer(&["snapshot", "status", file_s], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("rev {rev}, {} files", saved.len()))
            && text(&out.stdout).contains("checksum ok"),
        "{}",
        text(&out.stdout)
    );

    // Restore into a fresh single node: every non-/ctl file, same body.
    let fresh_addr = free_addr_on("127.0.10.5");
    t.nodes
        .push(Node::spawn("fresh", &fresh_addr, &[], &t.dir.path));
    let fresh = t.nodes.len() - 1;
    t.nodes[fresh].wait_answers(Duration::from_secs(10));
    let out = t.nodes[fresh].doozer(&["snapshot", "restore", file_s], b"");
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let user: Vec<_> = saved.iter().filter(|f| !f.0.starts_with("/ctl/")).collect();
    assert!(
        text(&out.stdout).starts_with(&format!("restored {} files", user.len())),
        "{}",
        text(&out.stdout)
    );
    let c = client(&t.nodes[fresh]);
    let now = rt::block_on(c.rev()).unwrap();
    let there = rt::block_on(c.walk_all("/**", now)).unwrap();
    let there: Vec<_> = there
        .into_iter()
        .filter(|e| !e.path.starts_with("/ctl/"))
        .collect();
    assert_eq!(there.len(), user.len());
    for (s, e) in user.iter().zip(&there) {
        assert_eq!(s.0, e.path);
        assert!(s.2 == e.body, "body of {}", s.0);
    }
    // The fresh node's own /ctl is its own, not the saved cluster's.
    let fresh_id = conn(&t.nodes[fresh]).self_id().unwrap();
    let cal = conn(&t.nodes[fresh]).dir_bodies("/ctl/cal").unwrap();
    assert_eq!(cal.values().collect::<Vec<_>>(), vec![&fresh_id]);

    // Again: refused, the target holds data now; -force goes through.
    let out = t.nodes[fresh].doozer(&["snapshot", "restore", file_s], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already holds files outside /ctl"),
        "{}",
        text(&out.stderr)
    );
    let out = t.nodes[fresh].doozer(&["snapshot", "restore", "-force", file_s], b"");
    assert!(
        out.status.success(),
        "restore -force: {}",
        text(&out.stderr)
    );

    // A damaged file is refused before anything is written.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    let bad = t.dir.path.join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let out = t.nodes[fresh].doozer(&["snapshot", "status", bad.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.snap"),
        "{}",
        text(&out.stderr)
    );
    assert!(backup::verify(&bad).is_err());
}

/// Clients that ask for a SNAPSHOT of a 64 MiB tree and never read: each
/// holds its own connection only, the node's memory stays bounded (no frames
/// piled up), streams past the cap are refused busy, other clients are
/// served, and a stalled stream is cut after the stall limit.
#[test]
fn snapshot_readers_that_never_read_hold_bounded_memory() {
    let dir = TempDir::new("backup-stall");
    let addr = free_addr_on("127.0.10.6");
    let mut t = Nodes {
        nodes: vec![Node::spawn("node", &addr, &[], &dir.path)],
        dir,
    };
    t.nodes[0].wait_answers(Duration::from_secs(10));
    let files: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("/big/{i}"), vec![i as u8; 1 << 20]))
        .collect();
    fill(&client(&t.nodes[0]), &files);
    std::thread::sleep(Duration::from_millis(500));
    let pid = t.nodes[0].pid();
    let before = rss(pid);

    let stream_cap = 8;
    let mut stalled = Vec::new();
    let stalled_at = Instant::now();
    for i in 0..stream_cap {
        // A fixed receive buffer, as a real client that stopped reading has
        // once the kernel stops growing it (on loopback it would grow to
        // 32 MiB, which would take half this tree).
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(64 << 10).unwrap();
        let to: std::net::SocketAddr = addr.parse().unwrap();
        sock.connect(&to.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        send(
            &mut s,
            &Request {
                tag: Some(i),
                verb: Some(Verb::Snapshot as i32),
                ..Default::default()
            },
        );
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    // One more: busy, at once.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reply = call(
        &mut extra,
        &Request {
            tag: Some(1),
            verb: Some(Verb::Snapshot as i32),
            ..Default::default()
        },
    );
    let err = reply.reply_error().expect("busy");
    assert_eq!(err.code, ErrCode::Other);
    assert!(
        err.detail.as_deref().unwrap_or("").contains("busy"),
        "{err:?}"
    );

    // Others are served meanwhile, promptly.
    let mut other = conn(&t.nodes[0]);
    let started = Instant::now();
    let rev = other.set("/other", -1, b"x").unwrap();
    let (body, _) = other.get("/other").unwrap();
    assert_eq!((body.as_slice(), rev > 0), (&b"x"[..], true));
    assert!(started.elapsed() < Duration::from_secs(2));

    let during = rss(pid);
    eprintln!(
        "RSS before {} MiB, with {stream_cap} stalled snapshots of a 64 MiB tree {} MiB",
        before >> 20,
        during >> 20
    );
    // Each stalled stream holds a chunk (256 KiB) plus one 1 MiB file of
    // frames; materialising its frames would be 64 MiB each.
    assert!(
        during < before + (48 << 20),
        "RSS grew from {before} to {during}"
    );

    // The stall limit (2 MiB per 30 s) cuts them, which lets go of their
    // trees: past it, each socket holds what the kernel had buffered (far
    // less than the tree), then its end.
    let since = stalled_at.elapsed();
    std::thread::sleep(Duration::from_secs(45).saturating_sub(since));
    // The kernel on loopback may keep taking a few MiB now and then from
    // some of the sockets, so not every stream is cut by then; at least one
    // must be, its client having had only what the kernel buffered.
    let log = std::fs::read_to_string(&t.nodes[0].log).unwrap();
    let cut = log.matches("bytes of its snapshot in 30s").count();
    eprintln!("{cut} of {stream_cap} stalled snapshots cut by the stall limit");
    assert!(cut >= 1, "no stalled snapshot was cut:\n{log}");
    let mut ended_small = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = loop {
            match std::io::Read::read(s, &mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false
                }
                Err(_) => break true,
            }
        };
        if ended && got < 32 << 20 {
            ended_small += 1;
        }
    }
    assert!(
        ended_small >= 1,
        "no stalled client saw its stream end early"
    );
    drop(stalled);
    // And a snapshot can be had again.
    let c = client(&t.nodes[0]);
    let got = rt::block_on(c.snapshot(None, |_| Ok(()))).unwrap();
    assert_eq!(got.files as usize, 64 + 1 + count_ctl(&t.nodes[0]));
}

fn count_ctl(node: &Node) -> usize {
    let c = client(node);
    let rev = rt::block_on(c.rev()).unwrap();
    rt::block_on(c.walk_all("/ctl/**", rev)).unwrap().len()
}

#[test]
fn snapshot_needs_read_rights_and_a_rev_in_the_history() {
    let dir = TempDir::new("backup-rights");
    let addr = free_addr_on("127.0.10.7");
    let mut t = Nodes {
        nodes: vec![Node::spawn_env(
            "node",
            &addr,
            &["-hist", "5"],
            &[("DOOZER_RWSECRET", "rw"), ("DOOZER_ROSECRET", "ro")],
            &dir.path,
        )],
        dir,
    };
    let mut s;
    let started = Instant::now();
    let snapshot = |rev: Option<i64>| Request {
        tag: Some(1),
        verb: Some(Verb::Snapshot as i32),
        rev,
        ..Default::default()
    };
    let reply = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(conn) => {
                s = conn;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                break call(&mut s, &snapshot(None));
            }
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("node never listened: {e}"),
        }
    };
    let err = reply.reply_error().expect("refused");
    assert_eq!(
        (err.code, err.detail.as_deref()),
        (ErrCode::Other, Some("permission denied"))
    );
    // The CLI without the secret: an error, exit 2, nothing written.
    let file = t.dir.path.join("x.snap");
    let uri = format!("doozer:?ca={addr}");
    let out = doozer_with_env(
        &[],
        &["-a", &uri, "snapshot", "save", file.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!file.exists() && !backup::tmp_path(&file).exists());

    // With the read-only secret: allowed, and a rev out of the history is
    // TOO_LATE as for GET.
    let ro = format!("doozer:?ca={addr}&sk=ro");
    let out = doozer_with_env(
        &[],
        &["-a", &ro, "snapshot", "save", file.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rw = rt::block_on(async {
        let c = Client::connect(&addr).await.unwrap();
        c.access(b"rw").await.unwrap();
        c
    });
    for i in 0..20 {
        rt::block_on(rw.set("/w", -1, format!("{i}").as_bytes())).unwrap();
    }
    let err = rt::block_on(rw.snapshot(Some(1), |_| Ok(()))).unwrap_err();
    assert_eq!(err.code(), Some(ErrCode::TooLate), "{err}");
    let now = rt::block_on(rw.rev()).unwrap();
    let got = rt::block_on(rw.snapshot(Some(now - 2), |_| Ok(()))).unwrap();
    assert_eq!(got.rev, now - 2);
    assert!(t.nodes[0].is_running());
    // The DONE flag is the original's.
    assert_eq!(flags::DONE, 2);
}
