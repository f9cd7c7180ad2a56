//! TLS end to end: certificates made at run time (see `common::certs`),
//! real `doozerd` processes and the `doozer` CLI.
//!
//! The README walk-through over TLS (attach, slots, the CLI's three ways of
//! naming the CA, watch, wait, bench, failover); every way a client can get
//! TLS wrong failing fast and in words (and counted in /metrics); a node
//! with a certificate from another CA kept out; a TLS cluster booted
//! through a TLS DzNS; openssl-made certificates; the HTTPS web view.
//!
//! Addresses: 127.0.61.x, 127.0.62.x and 127.0.63.x (free ports), so these
//! tests do not collide with other suites. Every wait is bounded; nodes are
//! killed when a test ends, and their logs printed when it fails.

mod common;

use common::certs::TestCa;
use common::TempDir;
use doozer::tls::{NodeTls, NodeTlsFiles};

/// The certificates the tests make are what doozerd loads: chain, key and
/// CA, with the expiry date read back.
#[test]
fn generated_certificates_load() {
    let dir = TempDir::new("tls-load");
    let ca = TestCa::new("test CA load");
    let ca_file = ca.write(&dir.path, "ca.pem");
    let node = ca.issue_files_until(&dir.path, "n1", &["127.0.0.1:8046"], Some((2040, 1, 1)));
    let tls = NodeTls::load(NodeTlsFiles {
        cert: node.cert.clone(),
        key: node.key.clone(),
        ca: Some(ca_file),
    })
    .expect("loads");
    assert!(tls.takes_peers());
    assert_eq!(tls.current().not_after, 2_208_988_800);
    // A key that is not the certificate's is refused, naming both files.
    let other = ca.issue_files(&dir.path, "n2", &["127.0.0.2"]);
    let err = NodeTls::load(NodeTlsFiles {
        cert: node.cert,
        key: other.key,
        ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("n1.pem") && err.contains("n2.key"), "{err}");
}

// ---------------------------------------------------------------------------
// Clusters over TLS: real nodes, the CLI, and clients of the library.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    doozer_with_env, free_addr_on, print_logs_if_panicking, text, wait_for, Node, DOOZER,
};
use doozer::client::{Client, Error as ClientError};
use doozer::runtime::rt;
use doozer::tls::ClientTls;

/// A client of one TLS node: each call dials afresh, the whole call bounded
/// by `limit`.
struct TlsConn {
    addr: String,
    tls: ClientTls,
    limit: Duration,
}

impl TlsConn {
    fn new(addr: &str, ca: &Path) -> TlsConn {
        TlsConn {
            addr: addr.to_string(),
            tls: ClientTls::from_ca_file(ca).expect("the CA loads"),
            limit: Duration::from_secs(5),
        }
    }

    fn run<T>(&self, f: impl AsyncFnOnce(&Client) -> Result<T, ClientError>) -> Result<T, String> {
        let call = async {
            let client = Client::connect_with(&self.addr, Some(&self.tls)).await?;
            let result = f(&client).await;
            client.close();
            result
        };
        match rt::block_on(rt::timeout(self.limit, call)) {
            Some(result) => result.map_err(|e| format!("{}: {e}", self.addr)),
            None => Err(format!("{}: no answer within {:?}", self.addr, self.limit)),
        }
    }

    fn rev(&self) -> Result<i64, String> {
        self.run(async |c| c.rev().await)
    }

    fn self_id(&self) -> Result<String, String> {
        self.run(async |c| c.self_id().await)
            .map(|id| String::from_utf8_lossy(&id).into_owned())
    }

    fn get(&self, path: &str) -> Result<(Vec<u8>, i64), String> {
        self.run(async |c| c.get(path, None).await)
    }

    fn set(&self, path: &str, rev: i64, body: &[u8]) -> Result<i64, String> {
        self.run(async |c| c.set(path, rev, body).await)
    }

    /// The names in directory `dir` (none when it is absent).
    fn names(&self, dir: &str) -> Result<Vec<String>, String> {
        self.run(async |c| {
            let rev = c.rev().await?;
            match c.getdir_all(dir, rev).await {
                Err(e) if e.code().is_some() => Ok(Vec::new()),
                other => other,
            }
        })
    }

    /// Every file directly in `dir`: name → body as text.
    fn dir_bodies(&self, dir: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
        self.run(async |c| {
            let rev = c.rev().await?;
            let mut files = std::collections::BTreeMap::new();
            let names = match c.getdir_all(dir, rev).await {
                Ok(names) => names,
                Err(e) if e.code().is_some() => Vec::new(),
                Err(e) => return Err(e),
            };
            for name in names {
                let (body, _) = c.get(&format!("{dir}/{name}"), Some(rev)).await?;
                files.insert(name, String::from_utf8_lossy(&body).into_owned());
            }
            Ok(files)
        })
    }
}

/// Waits until a TLS node answers a REV (and panics, with its log, when it
/// exits or never does).
fn wait_tls_answers(node: &mut Node, ca: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let conn = TlsConn::new(&node.addr, ca);
    let mut last = String::new();
    while Instant::now() < deadline {
        if !node.is_running() {
            panic!(
                "doozerd {} on {} exited\n{}",
                node.name,
                node.addr,
                node.log_tail(30)
            );
        }
        match conn.rev() {
            Ok(_) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "doozerd {} on {} never answered over TLS ({last})\n{}",
        node.name,
        node.addr,
        node.log_tail(30)
    );
}

/// `doozer ARGS` with `env`; asserts success and returns stdout.
fn cli_ok(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> String {
    let out = doozer_with_env(env, args, stdin);
    assert!(
        out.status.success(),
        "doozer {args:?} {env:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `doozer ARGS` expected to fail: returns (stderr, how long it took).
fn cli_fails(env: &[(&str, &str)], args: &[&str]) -> (String, Duration) {
    let start = Instant::now();
    let out: Output = doozer_with_env(env, args, b"");
    let took = start.elapsed();
    assert!(
        !out.status.success(),
        "doozer {args:?} {env:?} succeeded: {}",
        text(&out.stdout)
    );
    (text(&out.stderr), took)
}

/// The nodes of one test and its directory; prints the logs of a failed
/// test.
struct Bed {
    nodes: Vec<Node>,
    dir: common::TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        print_logs_if_panicking(&self.nodes, &self.dir);
    }
}

fn tls_args(cert: &common::certs::CertFiles, ca: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = cert.args();
    args.push("--tls-ca".into());
    args.push(ca.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A child process (`doozer watch`) killed on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `doozer members` lines as (slot, id, addr, role).
fn members(env: &[(&str, &str)]) -> Vec<(String, String, String, String)> {
    cli_ok(env, &["members"], b"")
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "members line {line:?}");
            (f[0].into(), f[1].into(), f[2].into(), f[3].into())
        })
        .collect()
}

/// The README's walk-through over TLS: a seed and three nodes attached with
/// `-a`, each with its own certificate; two slots opened with the CLI; the
/// CLI with the CA from `DOOZER_TLS_CA`, `-tls-ca` and `tlsca=`; `watch`,
/// `wait` and `bench`; then the leader killed and writes going on through
/// the survivors' TLS peer links.
#[test]
fn tls_cluster_walkthrough() {
    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-walk"),
    };
    let ca = TestCa::new("walkthrough CA");
    let ca_file = ca.write(&bed.dir.path, "ca.pem");
    let ca_s = ca_file.display().to_string();
    let addrs: Vec<String> = (1..=4)
        .map(|i| free_addr_on(&format!("127.0.61.{i}")))
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        let cert = ca.issue_files(&bed.dir.path, &format!("n{}", i + 1), &[addr]);
        let mut extra = vec!["-timeout", "3"];
        if i > 0 {
            extra.extend(["-a", addrs[0].as_str()]);
        }
        let args = tls_args(&cert, &ca_file, &extra);
        let node = Node::spawn(&format!("node{}", i + 1), addr, &strs(&args), &bed.dir.path);
        bed.nodes.push(node);
        if i == 0 {
            wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));
        }
    }
    for node in &mut bed.nodes {
        wait_tls_answers(node, &ca_file, Duration::from_secs(10));
    }
    let conn = |i: usize| TlsConn::new(&addrs[i], &ca_file);
    let ids: Vec<String> = (0..4)
        .map(|i| wait_for("SELF", Duration::from_secs(5), || conn(i).self_id()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        wait_for(
            &format!("node{} to register", i + 1),
            Duration::from_secs(10),
            || {
                let (body, _) = conn(0).get(&format!("/ctl/node/{id}/addr"))?;
                (text(&body) == addrs[i])
                    .then_some(())
                    .ok_or(format!("addr {:?}", text(&body)))
            },
        );
    }

    // Open two slots as an operator does, the CA from the environment.
    let seed_uri = format!("doozer:?ca={}", addrs[0]);
    let env_seed = [
        ("DOOZER_URI", seed_uri.as_str()),
        ("DOOZER_TLS_CA", ca_s.as_str()),
    ];
    cli_ok(&env_seed, &["set", "/ctl/cal/1", "0"], b"");
    cli_ok(&env_seed, &["set", "/ctl/cal/2", "0"], b"");
    let cal = wait_for("3 members", Duration::from_secs(15), || {
        let cal = conn(0).dir_bodies("/ctl/cal")?;
        let full = cal.len() == 3 && cal.values().all(|id| ids.contains(id));
        full.then_some(cal.clone())
            .ok_or(format!("/ctl/cal {cal:?}"))
    });
    let member_ids: Vec<&String> = cal.values().collect();
    let slaves: Vec<usize> = (0..4).filter(|i| !member_ids.contains(&&ids[*i])).collect();
    assert_eq!(slaves.len(), 1, "one slave: {cal:?} {ids:?}");
    let slave = slaves[0];
    let member = (1..4).find(|i| *i != slave).unwrap();

    // Set through a member (CA from DOOZER_TLS_CA), get on the slave
    // (-tls-ca) and on the seed (tlsca= in the URI).
    let member_uri = format!("doozer:?ca={}", addrs[member]);
    let env_member = [
        ("DOOZER_URI", member_uri.as_str()),
        ("DOOZER_TLS_CA", ca_s.as_str()),
    ];
    let rev: i64 = cli_ok(&env_member, &["set", "/tls/greeting", "0"], b"over TLS")
        .trim()
        .parse()
        .unwrap();
    let slave_uri = format!("doozer:?ca={}", addrs[slave]);
    let got = cli_ok(
        &[],
        &["-a", &slave_uri, "-tls-ca", &ca_s, "get", "/tls/greeting"],
        b"",
    );
    assert_eq!(got, "over TLS");
    let seed_tls_uri = format!("doozer:?ca={}&tlsca={ca_s}", addrs[0]);
    let slave_tls_uri = format!("doozer:?ca={}&tlsca={ca_s}", addrs[slave]);
    assert_eq!(
        cli_ok(&[], &["-a", &seed_tls_uri, "get", "/tls/greeting"], b""),
        "over TLS"
    );
    let found = cli_ok(&[], &["-a", &slave_tls_uri, "find", "/tls"], b"");
    assert!(found.lines().any(|l| l == "/tls/greeting"), "{found:?}");
    let stat = cli_ok(
        &[("DOOZER_URI", &slave_tls_uri)],
        &["stat", "/tls/greeting"],
        b"",
    );
    assert_eq!(stat.trim(), format!("{rev} 8"), "stat");
    let now: i64 = cli_ok(&[("DOOZER_URI", &slave_tls_uri)], &["rev"], b"")
        .trim()
        .parse()
        .unwrap();
    assert!(now >= rev, "rev {now} < {rev}");

    // `watch` on the slave sees a set made through the seed; `wait` from the
    // set's rev returns it.
    let child = Command::new(DOOZER)
        .args(["-a", &slave_tls_uri, "-r", &(now + 1).to_string()])
        .args(["watch", "/tls/**"])
        .env_remove("DOOZER_URI")
        .env_remove("DOOZER_BOOT_URI")
        .env_remove("DOOZER_TLS_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("doozer watch starts");
    let mut watch = ChildGuard(child);
    let mut stdout = watch.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let watched: i64 = cli_ok(&env_seed, &["set", "/tls/watched", "0"], b"seen")
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let want = format!("/tls/watched {watched} set 4\nseen\n");
    while !text(&seen).contains(&want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.extend(bytes),
            Err(_) => panic!("the watch on the slave printed {:?}", text(&seen)),
        }
    }
    drop(watch);
    let waited = cli_ok(
        &[],
        &[
            "-a",
            &slave_tls_uri,
            "-r",
            &watched.to_string(),
            "wait",
            "/tls/**",
        ],
        b"",
    );
    assert_eq!(waited, want, "wait");

    // A short set load over TLS.
    let out = cli_ok(
        &[],
        &[
            "-a",
            &member_uri,
            "-tls-ca",
            &ca_s,
            "bench",
            "-d",
            "1",
            "-keys",
            "20",
            "-c",
            "2",
        ],
        b"",
    );
    let ops: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("ops: "))
        .unwrap_or_else(|| panic!("no ops line in {out:?}"))
        .parse()
        .unwrap();
    assert!(ops > 0, "bench over TLS: {out}");
    assert!(out.contains("errors: 0\n"), "bench over TLS: {out}");

    // Kill the leader; writes go on through the survivors.
    let leader = members(&env_seed)
        .into_iter()
        .find(|m| m.3 == "leader")
        .expect("a leader");
    let dead = addrs.iter().position(|a| *a == leader.2).unwrap();
    bed.nodes[dead].kill9();
    let alive: Vec<usize> = (0..4).filter(|i| *i != dead).collect();
    let writer = alive[0];
    let writer_uri = format!("doozer:?ca={}&tlsca={ca_s}", addrs[writer]);
    let start = Instant::now();
    let after = wait_for(
        "a write after the leader's death",
        Duration::from_secs(15),
        || {
            let out = doozer_with_env(&[], &["-a", &writer_uri, "set", "/tls/after", "-1"], b"on");
            if out.status.success() {
                Ok(text(&out.stdout).trim().parse::<i64>().unwrap())
            } else {
                Err(text(&out.stderr))
            }
        },
    );
    eprintln!(
        "a write succeeded {:?} after the leader died",
        start.elapsed()
    );
    for &i in &alive {
        wait_for(
            &format!("node{} to read /tls/after", i + 1),
            Duration::from_secs(10),
            || {
                let (body, got) = conn(i).get("/tls/after")?;
                (got == after && body == b"on")
                    .then_some(())
                    .ok_or(format!("rev {got}"))
            },
        );
    }
    // The dead leader is removed after -timeout 3 and the slave takes its
    // slot: three members again, all alive.
    let new_leader = (0..4).find(|i| *i != dead).unwrap();
    wait_for("three live members", Duration::from_secs(20), || {
        let cal = conn(new_leader).dir_bodies("/ctl/cal")?;
        let live = cal.len() == 3 && cal.values().all(|id| *id != ids[dead] && ids.contains(id));
        live.then_some(()).ok_or(format!("/ctl/cal {cal:?}"))
    });
}

/// Reads from `conn` until the server closes it (EOF or reset) or `limit`
/// passes; whether it closed, and how long that took.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (false, start.elapsed());
        }
        conn.set_read_timeout(Some(left)).unwrap();
        match conn.read(&mut buf) {
            Ok(0) => return (true, start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (false, start.elapsed())
            }
            Err(_) => return (true, start.elapsed()),
        }
    }
}

/// One `GET path` over plain HTTP; the body.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let out = text(&out);
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("reply {out:?}")),
    }
}

/// A metric's value in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Everything that goes wrong between a client and a TLS node fails fast,
/// with words saying what: no CA, plain text (a request or nothing at all),
/// another CA, a certificate for another address, TLS to a plain node; and
/// the node counts the failed handshakes in /metrics.
#[test]
fn tls_refusals_are_clean_and_clear() {
    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-refusals"),
    };
    let ca = TestCa::new("refusals CA");
    let other = TestCa::new("another CA");
    let ca_file = ca.write(&bed.dir.path, "ca.pem");
    let other_file = other.write(&bed.dir.path, "other.pem");
    let (ca_s, other_s) = (
        ca_file.display().to_string(),
        other_file.display().to_string(),
    );

    // a: a TLS node (web view in plain HTTP, for /metrics); b: a TLS node
    // whose certificate names 127.0.62.9; c: a plain node.
    let a = free_addr_on("127.0.62.1");
    let web = free_addr_on("127.0.62.1");
    let cert_a = ca.issue_files(&bed.dir.path, "a", &[&a]);
    let args = tls_args(&cert_a, &ca_file, &["--web-http"]);
    bed.nodes
        .push(Node::spawn_web("a", &a, &web, &strs(&args), &bed.dir.path));
    let b = free_addr_on("127.0.62.2");
    let cert_b = ca.issue_files(&bed.dir.path, "b", &["127.0.62.9"]);
    let args = tls_args(&cert_b, &ca_file, &[]);
    bed.nodes
        .push(Node::spawn("b", &b, &strs(&args), &bed.dir.path));
    let c = free_addr_on("127.0.62.3");
    bed.nodes.push(Node::spawn("c", &c, &[], &bed.dir.path));
    wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));
    bed.nodes[2].wait_answers(Duration::from_secs(10));
    wait_for("b to listen", Duration::from_secs(10), || {
        TcpStream::connect(&b).map(drop).map_err(|e| e.to_string())
    });

    // A client that connects and says nothing is closed at the handshake
    // deadline (watched on a thread while the rest runs).
    let mut silent = TcpStream::connect(&a).unwrap();
    let silent = std::thread::spawn(move || closed_within(&mut silent, Duration::from_secs(15)));

    // A server that takes the connection and never answers: the CLI with
    // TLS gives up on its own (watched on a thread too).
    let mute = std::net::TcpListener::bind("127.0.62.4:0").unwrap();
    let mute_uri = format!("doozer:?ca={}", mute.local_addr().unwrap());
    let mute_ca = ca_s.clone();
    let mute_cli = std::thread::spawn(move || {
        cli_fails(&[], &["-a", &mute_uri, "-tls-ca", &mute_ca, "get", "/x"])
    });

    let uri = |addr: &str| format!("doozer:?ca={addr}");
    // The right CA works.
    assert_eq!(
        cli_ok(
            &[],
            &["-a", &uri(&a), "-tls-ca", &ca_s, "get", "/nothing"],
            b""
        ),
        ""
    );

    // (a) No CA: the CLI says the server answered in TLS.
    let (err, took) = cli_fails(&[], &["-a", &uri(&a), "get", "/x"]);
    assert!(err.contains("TLS"), "no CA: {err}");
    assert!(took < Duration::from_secs(5), "no CA: took {took:?}");
    eprintln!("no CA: {}", err.trim());

    // (b) A plain request frame: the connection is closed, no reply frame.
    let mut plain = TcpStream::connect(&a).unwrap();
    let frame = doozer::codec::client::encode_frame(&doozer::codec::client::Request {
        tag: Some(1),
        verb: Some(doozer::codec::client::Verb::Rev as i32),
        ..Default::default()
    });
    let (closed, took) = match plain.write_all(&frame) {
        Ok(()) => closed_within(&mut plain, Duration::from_secs(5)),
        Err(_) => (true, Duration::ZERO),
    };
    assert!(
        closed,
        "a plain request on the TLS port was not closed in {took:?}"
    );

    // (c) Another CA: the certificate is not signed by it.
    let (err, took) = cli_fails(&[], &["-a", &uri(&a), "-tls-ca", &other_s, "get", "/x"]);
    assert!(
        err.contains("not signed by") || err.contains("unknown issuer"),
        "another CA: {err}"
    );
    assert!(err.contains(&other_s), "names the CA file: {err}");
    assert!(took < Duration::from_secs(5), "another CA: took {took:?}");
    eprintln!("another CA: {}", err.trim());

    // (d) A certificate for 127.0.62.9 served on 127.0.62.2.
    let (err, took) = cli_fails(&[], &["-a", &uri(&b), "-tls-ca", &ca_s, "get", "/x"]);
    assert!(
        err.contains("not valid for 127.0.62.2,")
            && err.contains("names the IP address 127.0.62.9"),
        "wrong address: {err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "wrong address: took {took:?}"
    );
    eprintln!("wrong address: {}", err.trim());

    // (e) TLS to a plain node.
    let (err, took) = cli_fails(&[], &["-a", &uri(&c), "-tls-ca", &ca_s, "get", "/x"]);
    assert!(
        err.contains("TLS") && err.contains("-tlscert"),
        "TLS to a plain node: {err}"
    );
    assert!(took < Duration::from_secs(5), "TLS to plain: took {took:?}");
    eprintln!("TLS to a plain node: {}", err.trim());

    // The silent client was closed at the handshake deadline.
    let (closed, took) = silent.join().unwrap();
    assert!(closed, "a silent client was still connected after {took:?}");
    assert!(
        took >= doozer::tls::HANDSHAKE_TIMEOUT - Duration::from_secs(1),
        "closed early: {took:?}"
    );
    eprintln!("a silent client was closed after {took:?}");

    // The CLI against a server that never answers the handshake.
    let (err, took) = mute_cli.join().unwrap();
    assert!(
        took < Duration::from_secs(15),
        "a mute server: took {took:?}"
    );
    assert!(
        err.contains("TLS handshake") && err.contains("did not answer the handshake"),
        "a mute server: {err}"
    );
    eprintln!("a mute server, after {took:?}: {}", err.trim());
    drop(mute);

    // (f) Every failure above counted (no CA, plain frame, other CA, silent).
    let failures = wait_for(
        "the handshake failures in /metrics",
        Duration::from_secs(5),
        || {
            let page = http_get(&web, "/metrics")?;
            match metric(&page, "doozer_tls_handshake_failures_total") {
                Some(n) if n >= 4.0 => Ok(n),
                other => Err(format!("{other:?}")),
            }
        },
    );
    eprintln!("doozer_tls_handshake_failures_total {failures}");
    // The node is healthy after all this.
    cli_ok(&[], &["-a", &uri(&a), "-tls-ca", &ca_s, "rev"], b"");
}

/// A node whose certificate another CA signed cannot join, though it trusts
/// the cluster's CA: it never registers nor gets a copy, and both logs say
/// why. A node without `--tls-ca` cannot attach at all; a TLS client with
/// no certificate that speaks the peer protocol is hung up on.
#[test]
fn node_with_foreign_certificate_cannot_join() {
    use doozer::codec::peer::{encode_hello, Hello, PROTOCOL_VERSION};
    use doozer::runtime::conn::Conn;
    use doozer::types::NodeId;
    use futures::{AsyncReadExt, AsyncWriteExt};

    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-foreign"),
    };
    let ca = TestCa::new("cluster CA");
    let other = TestCa::new("foreign CA");
    let ca_file = ca.write(&bed.dir.path, "ca.pem");
    let ca_s = ca_file.display().to_string();
    let other_file = other.write(&bed.dir.path, "foreign-ca.pem");

    let seed = free_addr_on("127.0.63.1");
    let cert = ca.issue_files(&bed.dir.path, "seed", &[&seed]);
    let args = tls_args(&cert, &ca_file, &["-timeout", "3"]);
    bed.nodes
        .push(Node::spawn("seed", &seed, &strs(&args), &bed.dir.path));
    wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));
    let seed_conn = TlsConn::new(&seed, &ca_file);
    let seed_id = seed_conn.self_id().unwrap();
    let rev = seed_conn.set("/secret", 0, b"members only").unwrap();

    // The foreign node: its certificate from another CA, the cluster's CA
    // trusted, attaching to the seed.
    let foreign = free_addr_on("127.0.63.2");
    let cert = other.issue_files(&bed.dir.path, "foreign", &[&foreign]);
    let args = tls_args(&cert, &ca_file, &["-a", &seed]);
    bed.nodes.push(Node::spawn(
        "foreign",
        &foreign,
        &strs(&args),
        &bed.dir.path,
    ));
    let seed_env = [("DOOZER_URI", &format!("doozer:?ca={seed}&tlsca={ca_s}")[..])];
    let foreign_conn = TlsConn::new(&foreign, &other_file);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let nodes = cli_ok(&seed_env, &["find", "/ctl/node"], b"");
        for line in nodes.lines() {
            assert!(
                line == "/ctl/node" || line.starts_with(&format!("/ctl/node/{seed_id}")),
                "a node other than the seed registered: {nodes}"
            );
        }
        if let Ok((body, got)) = foreign_conn.get("/secret") {
            assert!(
                body.is_empty() && got == 0,
                "the foreign node has a copy: {:?} at {got}",
                text(&body)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let foreign_log = bed.nodes[1].log_tail(200);
    assert!(
        foreign_log.contains("refused our certificate"),
        "the foreign node's log says why:\n{foreign_log}"
    );
    let seed_log = bed.nodes[0].log_tail(400);
    assert!(
        seed_log.contains("TLS") && seed_log.contains("handshake"),
        "the seed's log says a TLS handshake failed:\n{seed_log}"
    );
    eprintln!(
        "foreign: {}",
        foreign_log
            .lines()
            .find(|l| l.contains("refused our certificate"))
            .unwrap()
    );
    eprintln!(
        "seed: {}",
        seed_log.lines().find(|l| l.contains("handshake")).unwrap()
    );

    // A node with a certificate but no --tls-ca cannot attach: doozerd
    // exits with the configuration error.
    let lone = free_addr_on("127.0.63.3");
    let cert = ca.issue_files(&bed.dir.path, "lone", &[&lone]);
    let mut args = cert.args();
    args.extend(["-a".to_string(), seed.clone()]);
    bed.nodes
        .push(Node::spawn("lone", &lone, &strs(&args), &bed.dir.path));
    let status = bed.nodes[2]
        .wait_exit(Duration::from_secs(10))
        .expect("doozerd -a without --tls-ca exits");
    assert!(!status.success(), "{status:?}");
    let log = bed.nodes[2].log_tail(20);
    assert!(log.contains("--tls-ca"), "the error names --tls-ca:\n{log}");
    eprintln!("no --tls-ca: {}", log.trim());

    // A TLS client without a certificate that speaks the peer protocol.
    let tls = ClientTls::from_ca_file(&ca_file).unwrap();
    let hello = encode_hello(&Hello {
        version: PROTOCOL_VERSION,
        from: NodeId::from_bytes([9; 10]),
        cluster: "local".into(),
        nonce: vec![7; 32],
    });
    let outcome = rt::block_on(rt::timeout(Duration::from_secs(8), async {
        let tcp = rt::TcpStream::connect(&seed[..])
            .await
            .map_err(|e| e.to_string())?;
        let conn = Conn::connect_tls(tcp, &seed, &tls).await?;
        (&conn).write_all(&hello).await.map_err(|e| e.to_string())?;
        (&conn).flush().await.map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match (&conn).read(&mut buf).await {
                Ok(0) | Err(_) => return Ok::<_, String>(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }));
    let got = outcome
        .expect("the peer hello without a client certificate was not closed in 8 s")
        .expect("the TLS handshake itself works");
    assert!(got.is_empty(), "the node answered {} bytes", got.len());
    wait_for(
        "the refusal in the seed's log",
        Duration::from_secs(5),
        || {
            let log = bed.nodes[0].log_tail(400);
            log.contains("showed no client certificate")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    // The node stays healthy.
    assert_eq!(cli_ok(&seed_env, &["get", "/secret"], b""), "members only");
    let (_, got) = seed_conn.get("/secret").unwrap();
    assert_eq!(got, rev);
}

/// A TLS cluster boots through a TLS DzNS: three nodes started at once with
/// `-c NAME -b 'doozer:?ca=DZNS'` dial the DzNS over TLS trusting their
/// `--tls-ca`, elect one seed, the others attach over TLS; the CLI finds
/// the cluster by name through the DzNS.
#[test]
fn tls_cluster_boots_through_a_tls_dzns() {
    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-dzns"),
    };
    let ca = TestCa::new("dzns CA");
    let ca_file = ca.write(&bed.dir.path, "ca.pem");
    let ca_s = ca_file.display().to_string();
    let dz = free_addr_on("127.0.63.20");
    let cert = ca.issue_files(&bed.dir.path, "dzns", &[&dz]);
    let args = tls_args(&cert, &ca_file, &["-c", "dzns"]);
    bed.nodes
        .push(Node::spawn("dzns", &dz, &strs(&args), &bed.dir.path));
    wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));

    let boot = format!("doozer:?ca={dz}");
    let addrs: Vec<String> = (21..=23)
        .map(|h| free_addr_on(&format!("127.0.63.{h}")))
        .collect();
    for (k, addr) in addrs.iter().enumerate() {
        let cert = ca.issue_files(&bed.dir.path, &format!("ex{k}"), &[addr]);
        let args = tls_args(&cert, &ca_file, &["-c", "tlsex", "-b", &boot]);
        bed.nodes.push(Node::spawn(
            &format!("ex{k}"),
            addr,
            &strs(&args),
            &bed.dir.path,
        ));
    }
    for i in 1..=3 {
        wait_tls_answers(&mut bed.nodes[i], &ca_file, Duration::from_secs(20));
    }
    let conn = |k: usize| TlsConn::new(&addrs[k], &ca_file);
    let ids: Vec<String> = (0..3)
        .map(|k| wait_for("SELF", Duration::from_secs(5), || conn(k).self_id()))
        .collect();
    // One cluster: every node sees the three registered, one seed in slot 0.
    let seed_id = wait_for("one cluster of three", Duration::from_secs(20), || {
        let mut seeds = Vec::new();
        for addr in &addrs {
            let conn = TlsConn::new(addr, &ca_file);
            let cal = conn.dir_bodies("/ctl/cal")?;
            let nodes = conn.names("/ctl/node")?.len();
            if nodes != 3 {
                return Err(format!("{addr} sees {nodes} nodes"));
            }
            seeds.push(cal.get("0").cloned().unwrap_or_default());
        }
        (seeds.iter().all(|s| *s == seeds[0] && ids.contains(s)))
            .then(|| seeds[0].clone())
            .ok_or(format!("slot 0 per node: {seeds:?}"))
    });

    // The CLI by cluster name through the DzNS, -tls-ca for both.
    let by_name = ["-a", "doozer:?cn=tlsex", "-b", &boot, "-tls-ca", &ca_s];
    let mut args = by_name.to_vec();
    args.extend(["set", "/ctl/cal/1", "0"]);
    cli_ok(&[], &args, b"");
    wait_for("two members", Duration::from_secs(15), || {
        let cal = conn(0).dir_bodies("/ctl/cal")?;
        (cal.len() == 2 && cal.values().all(|id| ids.contains(id)))
            .then_some(())
            .ok_or(format!("/ctl/cal {cal:?}"))
    });
    let dzns = TlsConn::new(&dz, &ca_file);
    wait_for(
        "the DzNS to list both members",
        Duration::from_secs(15),
        || {
            let ns = dzns.dir_bodies("/ctl/ns/tlsex")?;
            (ns.len() == 2 && ns.contains_key(&seed_id) && ns.values().all(|a| addrs.contains(a)))
                .then_some(())
                .ok_or(format!("/ctl/ns/tlsex {ns:?}"))
        },
    );
    let mut args = by_name.to_vec();
    args.extend(["set", "/by-name", "0"]);
    let rev: i64 = cli_ok(&[], &args, b"found").trim().parse().unwrap();
    for k in 0..3 {
        wait_for("the write everywhere", Duration::from_secs(10), || {
            let (body, got) = conn(k).get("/by-name")?;
            (got == rev && body == b"found")
                .then_some(())
                .ok_or(format!("rev {got}"))
        });
    }
}

/// Certificates made by `scripts/make-tls-certs.sh` (openssl) are what
/// doozerd takes: a seed and an attached node, the CLI trusting the
/// script's CA.
#[test]
fn openssl_certificates_from_the_script_work() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("NOTE: openssl is not installed; skipping the make-tls-certs.sh test");
        return;
    }
    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-openssl"),
    };
    let certs = bed.dir.path.join("certs");
    let a = free_addr_on("127.0.62.30");
    let b = free_addr_on("127.0.62.31");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make-tls-certs.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(&certs)
        .args(["n1=127.0.62.30", "n2=127.0.62.31"])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "make-tls-certs.sh: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let ca_file = certs.join("ca.pem");
    let ca_s = ca_file.display().to_string();
    let node_args = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "-tlscert".to_string(),
            certs.join(format!("{name}.pem")).display().to_string(),
            "-tlskey".to_string(),
            certs.join(format!("{name}.key")).display().to_string(),
            "--tls-ca".to_string(),
            ca_s.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let args = node_args("n1", &[]);
    bed.nodes
        .push(Node::spawn("n1", &a, &strs(&args), &bed.dir.path));
    wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));
    let args = node_args("n2", &["-a", &a]);
    bed.nodes
        .push(Node::spawn("n2", &b, &strs(&args), &bed.dir.path));
    wait_tls_answers(&mut bed.nodes[1], &ca_file, Duration::from_secs(10));
    let id = TlsConn::new(&b, &ca_file).self_id().unwrap();
    wait_for("n2 to register", Duration::from_secs(10), || {
        let (body, _) = TlsConn::new(&a, &ca_file).get(&format!("/ctl/node/{id}/addr"))?;
        (text(&body) == b)
            .then_some(())
            .ok_or(format!("{:?}", text(&body)))
    });
    let b_uri = format!("doozer:?ca={b}");
    let rev: i64 = cli_ok(
        &[("DOOZER_TLS_CA", &ca_s)],
        &["-a", &b_uri, "set", "/openssl", "0"],
        b"made by openssl",
    )
    .trim()
    .parse()
    .unwrap();
    let a_uri = format!("doozer:?ca={a}&tlsca={ca_s}");
    let (_, got) = TlsConn::new(&a, &ca_file).get("/openssl").unwrap();
    assert_eq!(got, rev);
    assert_eq!(
        cli_ok(&[], &["-a", &a_uri, "get", "/openssl"], b""),
        "made by openssl"
    );
}

/// One `GET path` over HTTPS trusting `ca`; the status line and body.
fn https_get(addr: &str, ca: &Path, path: &str) -> Result<(String, String), String> {
    use doozer::runtime::conn::Conn;
    use futures::{AsyncReadExt, AsyncWriteExt};
    let tls = ClientTls::from_ca_file(ca).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let fetch = async {
        let tcp = rt::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let conn = Conn::connect_tls(tcp, addr, &tls).await?;
        (&conn)
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        (&conn).flush().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match (&conn).read(&mut buf).await {
                Ok(0) => return Ok::<_, String>(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A server may close without a TLS close_notify.
                Err(_) if !out.is_empty() => return Ok(out),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    let out = rt::block_on(rt::timeout(Duration::from_secs(5), fetch))
        .ok_or_else(|| format!("no answer from https://{addr}{path} in 5 s"))??;
    let out = text(&out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("reply {out:?}"))?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// With TLS on and no `--web-http`, the web view speaks HTTPS with the
/// node's certificate: /metrics and the tree API answer over it (the view
/// reads its node over TLS too), and plain HTTP on that port is closed
/// fast and counted as a failed handshake.
#[test]
fn https_web_view_serves_metrics_and_refuses_plain_http() {
    let mut bed = Bed {
        nodes: Vec::new(),
        dir: common::TempDir::new("tls-https"),
    };
    let ca = TestCa::new("web CA");
    let ca_file = ca.write(&bed.dir.path, "ca.pem");
    let addr = free_addr_on("127.0.62.40");
    let web = free_addr_on("127.0.62.40");
    let cert = ca.issue_files(&bed.dir.path, "w", &[&addr]);
    let args = tls_args(&cert, &ca_file, &[]);
    bed.nodes.push(Node::spawn_web(
        "w",
        &addr,
        &web,
        &strs(&args),
        &bed.dir.path,
    ));
    wait_tls_answers(&mut bed.nodes[0], &ca_file, Duration::from_secs(10));
    TlsConn::new(&addr, &ca_file)
        .set("/web/seen", 0, b"over https")
        .unwrap();

    let (status, page) = wait_for("/metrics over HTTPS", Duration::from_secs(10), || {
        https_get(&web, &ca_file, "/metrics")
    });
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(metric(&page, "doozer_tls_enabled"), Some(1.0), "{page}");
    let (status, tree) = https_get(&web, &ca_file, "/api/tree?path=/web").unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {tree}");
    assert!(tree.contains("over https"), "{tree}");

    // Plain HTTP on the HTTPS port: closed at once, counted.
    let mut plain = TcpStream::connect(&web).unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {web}\r\n\r\n");
    // The node may hang up before all of it is written: that is a close.
    let (closed, took) = match plain.write_all(request.as_bytes()) {
        Ok(()) => closed_within(&mut plain, Duration::from_secs(5)),
        Err(_) => (true, Duration::ZERO),
    };
    assert!(
        closed,
        "plain HTTP on the HTTPS port was not closed in {took:?}"
    );
    wait_for(
        "the failed handshake counted",
        Duration::from_secs(5),
        || {
            let (_, page) = https_get(&web, &ca_file, "/metrics")?;
            match metric(&page, "doozer_tls_handshake_failures_total") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    );
}
