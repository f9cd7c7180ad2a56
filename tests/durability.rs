//! `-data-dir` with real processes: a whole cluster killed with `kill -9`
//! during a write load and restarted with the same command lines keeps every
//! acknowledged write at its rev, with the same members; a node removed
//! while it was down comes back as a slave; a second `doozerd` on a dir, a
//! dir of another cluster and a corrupt log are refused with a clear message;
//! a full disk stops the node with a clear error and loses nothing.
//!
//! `scripts/durability-rounds.sh` repeats the full-cluster restart (20 rounds
//! by default) outside the default test run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One node's command line: its address and `-a`, kept to start it again.
struct Spec {
    name: String,
    addr: String,
    args: Vec<String>,
    /// Times started, so each run of the node logs to its own file.
    runs: usize,
}

struct Cluster {
    specs: Vec<Spec>,
    nodes: Vec<Node>,
    dir: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        print_logs_if_panicking(&self.nodes, &self.dir);
    }
}

impl Cluster {
    /// A seed and `members - 1 + slaves` attached nodes, each with its own
    /// data dir; the member slots opened as an operator does.
    fn start(name: &str, members: usize, slaves: usize, extra: &[&str]) -> Cluster {
        let dir = TempDir::new(name);
        let net = loopback_net();
        let seed_addr = free_addr_on(&format!("{net}1"));
        let mut specs = Vec::new();
        for i in 1..=members + slaves {
            let addr = if i == 1 {
                seed_addr.clone()
            } else {
                free_addr_on(&format!("{net}{i}"))
            };
            let data = dir.path.join(format!("data{i}"));
            let mut args = vec!["-data-dir".to_string(), data.display().to_string()];
            if i > 1 {
                args.extend(["-a".to_string(), seed_addr.clone()]);
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            specs.push(Spec {
                name: format!("node{i}"),
                addr,
                args,
                runs: 0,
            });
        }
        let mut cluster = Cluster {
            specs,
            nodes: Vec::new(),
            dir,
        };
        cluster.spawn(0);
        cluster.nodes[0].wait_answers(Duration::from_secs(10));
        for i in 1..cluster.specs.len() {
            cluster.spawn(i);
        }
        for node in &mut cluster.nodes {
            node.wait_answers(Duration::from_secs(10));
        }
        for slot in 1..members {
            let out = cluster.nodes[0].doozer(&["set", &format!("/ctl/cal/{slot}"), "0"], b"");
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        wait_for(
            &format!("{members} members"),
            Duration::from_secs(20),
            || {
                let cal = cluster.conn(0).dir_bodies("/ctl/cal")?;
                let full = cal.len() == members && cal.values().all(|id| id.len() == 16);
                full.then_some(()).ok_or(format!("/ctl/cal is {cal:?}"))
            },
        );
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let spec = &mut self.specs[i];
        spec.runs += 1;
        let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
        let name = match spec.runs {
            1 => spec.name.clone(),
            run => format!("{}.run{run}", spec.name),
        };
        let node = Node::spawn(&name, &spec.addr, &args, &self.dir.path);
        if i < self.nodes.len() {
            self.nodes[i] = node;
        } else {
            self.nodes.push(node);
        }
    }

    fn conn(&self, i: usize) -> TimedConn {
        TimedConn::new(&self.nodes[i].addr, Duration::from_secs(5))
    }

    /// `/ctl/cal` as node `i` has it.
    fn cal(&self, i: usize) -> BTreeMap<String, String> {
        self.conn(i).dir_bodies("/ctl/cal").unwrap()
    }
}

/// Acknowledged writes: path, rev, body.
type Acked = Arc<Mutex<Vec<(String, i64, Vec<u8>)>>>;

/// Writes `/w/<writer>/<n>` = `n` one after another on node `node` until
/// `stop`, recording each acknowledged write's rev.
fn writer(
    addr: String,
    writer: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = TimedConn::new(&addr, Duration::from_secs(2));
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let path = format!("/w/{writer}/{n}");
            let body = n.to_string().into_bytes();
            if let Ok(rev) = conn.set(&path, 0, &body) {
                acked.lock().unwrap().push((path, rev, body));
            }
            n += 1;
        }
    })
}

/// Every acknowledged write is there with its body and at its rev.
fn check_acked(cluster: &Cluster, node: usize, acked: &[(String, i64, Vec<u8>)]) {
    let mut conn = cluster.conn(node);
    for (path, rev, body) in acked {
        let (got, got_rev) = conn.get(path).unwrap();
        assert_eq!(
            (text(&got), got_rev),
            (text(body), *rev),
            "acknowledged write {path} on {}",
            cluster.specs[node].name
        );
    }
}

#[test]
fn a_full_cluster_restart_after_kill_9_keeps_every_acknowledged_write() {
    let mut c = Cluster::start("durable-restart", 3, 1, &[]);
    let cal_before = c.cal(0);
    let ids_before: Vec<String> = (0..4).map(|i| c.conn(i).self_id().unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    // Writers on every node, members and the slave alike.
    let writers: Vec<_> = (0..8)
        .map(|w| writer(c.nodes[w % 4].addr.clone(), w, stop.clone(), acked.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for node in &mut c.nodes {
        node.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let restarted = Instant::now();
    for i in 0..c.specs.len() {
        c.spawn(i);
    }
    // Serving writes again: a write through a member is acknowledged.
    wait_for("a write after the restart", Duration::from_secs(20), || {
        c.conn(1).set("/after", 0, b"x").map(|_| ())
    });
    println!(
        "{} acknowledged writes; the restarted cluster took a write {:?} after the restart",
        acked.len(),
        restarted.elapsed()
    );
    for (i, id) in ids_before.iter().enumerate() {
        assert_eq!(c.conn(i).self_id().unwrap(), *id, "same id");
    }
    assert_eq!(c.cal(0), cal_before, "same members in the same slots");
    let rev = c.conn(1).rev().unwrap();
    for i in 0..4 {
        wait_for("the node to catch up", Duration::from_secs(10), || {
            let now = c.conn(i).rev()?;
            (now >= rev).then_some(()).ok_or(format!("at {now}"))
        });
        check_acked(&c, i, &acked);
    }
    // History from before the crash is readable at its rev where kept.
    let (path, rev, body) = acked.last().unwrap().clone();
    let mut conn = c.conn(2);
    let mut req = doozer::codec::client::Request {
        verb: Some(doozer::codec::client::Verb::Get as i32),
        path: Some(path.clone()),
        rev: Some(rev),
        ..Default::default()
    };
    req.tag = Some(1);
    let resp = conn.ok(req).unwrap();
    assert_eq!(resp.value.unwrap_or_default(), body, "{path} at rev {rev}");
}

#[test]
fn a_node_removed_while_down_comes_back_as_a_slave() {
    let mut c = Cluster::start("durable-removed", 3, 1, &["-timeout", "2"]);
    // A member other than the seed (which leads).
    let cal = c.cal(0);
    let victim = (1..4)
        .find(|&i| {
            let id = c.conn(i).self_id().unwrap();
            cal.values().any(|member| *member == id)
        })
        .unwrap();
    let victim_id = c.conn(victim).self_id().unwrap();
    c.nodes[victim].kill9();
    // Removed, and the slave takes the dead member's slot.
    wait_for(
        "the slave to take the slot",
        Duration::from_secs(20),
        || {
            let cal = c.conn(0).dir_bodies("/ctl/cal")?;
            let taken = cal.values().all(|id| id.len() == 16 && *id != victim_id);
            let gone = c.conn(0).get(&format!("/ctl/node/{victim_id}/addr"))?.1 == 0;
            (taken && gone).then_some(()).ok_or(format!("{cal:?}"))
        },
    );
    c.conn(0).set("/while-away", 0, b"1").unwrap();
    c.spawn(victim);
    c.nodes[victim].wait_answers(Duration::from_secs(10));
    assert_eq!(c.conn(victim).self_id().unwrap(), victim_id, "same id");
    // It learns it was removed and registers again, as a slave.
    wait_for("re-registration", Duration::from_secs(20), || {
        let (addr, _) = c.conn(0).get(&format!("/ctl/node/{victim_id}/addr"))?;
        (text(&addr) == c.nodes[victim].addr)
            .then_some(())
            .ok_or("not registered".to_string())
    });
    let cal = c.cal(0);
    assert!(!cal.values().any(|id| *id == victim_id), "{cal:?}");
    c.nodes[victim].wait_value(
        "/while-away",
        b"1",
        c.conn(0).get("/while-away").unwrap().1,
        Duration::from_secs(10),
    );
    assert!(c.nodes[victim]
        .log_tail(200)
        .contains("registering this node"));
}

#[test]
fn a_second_doozerd_on_a_dir_another_cluster_and_a_corrupt_log_are_refused() {
    let dir = TempDir::new("durable-refusals");
    let net = loopback_net();
    let data = dir.path.join("data");
    let data_arg = data.display().to_string();
    let addr = free_addr_on(&format!("{net}1"));
    let mut first = Node::spawn("first", &addr, &["-data-dir", &data_arg], &dir.path);
    first.wait_answers(Duration::from_secs(10));
    for i in 0..50 {
        first
            .doozer(&["set", &format!("/k{i}"), "0"], format!("v{i}").as_bytes())
            .status
            .success()
            .then_some(())
            .unwrap();
    }
    // The same dir, another address: refused, naming the lock.
    let addr2 = free_addr_on(&format!("{net}2"));
    let mut second = Node::spawn("second", &addr2, &["-data-dir", &data_arg], &dir.path);
    let status = second.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("another doozerd is using"), "{log}");
    first.kill9();
    // Another cluster name: refused.
    let mut other = Node::spawn(
        "other",
        &addr,
        &["-data-dir", &data_arg, "-c", "x"],
        &dir.path,
    );
    assert!(!other
        .wait_exit(Duration::from_secs(10))
        .expect("exits")
        .success());
    let log = std::fs::read_to_string(&other.log).unwrap();
    assert!(
        log.contains("holds node") && log.contains("\"local\""),
        "{log}"
    );
    // A byte flipped in the middle of the log: refused, naming file and
    // offset and the way out.
    let wal = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a log segment");
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    let mut corrupt = Node::spawn("corrupt", &addr, &["-data-dir", &data_arg], &dir.path);
    assert!(!corrupt
        .wait_exit(Duration::from_secs(10))
        .expect("exits")
        .success());
    let log = std::fs::read_to_string(&corrupt.log).unwrap();
    assert!(
        log.contains("corrupt at offset") && log.contains("move") && log.contains(".log"),
        "{log}"
    );
    // Restored byte: it starts again with every write.
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    let mut back = Node::spawn("back", &addr, &["-data-dir", &data_arg], &dir.path);
    back.wait_answers(Duration::from_secs(10));
    back.wait_value(
        "/k49",
        b"v49",
        back_rev(&back, "/k49"),
        Duration::from_secs(5),
    );
}

fn back_rev(node: &Node, path: &str) -> i64 {
    TimedConn::new(&node.addr, Duration::from_secs(5))
        .get(path)
        .unwrap()
        .1
}

/// Unmounts (lazily) a tmpfs mounted for a test, also on panic.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A data dir on a 4 MiB tmpfs (the test runs as root, as CI does): writes
/// of 512 KiB fill it. The write whose batch cannot be written, and every
/// request after it, get an error naming the data dir; the node keeps
/// running (no crash) and says why in its log; restarted with room, it
/// has every write it acknowledged.
#[test]
fn a_full_disk_stops_the_node_with_a_clear_error() {
    let dir = TempDir::new("durable-full");
    let mnt = dir.path.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "this test mounts a 4 MiB tmpfs and needs root (as CI runs)"
    );
    let _mount = Mount(mnt.clone());
    let data = mnt.join("data");
    let data_arg = data.display().to_string();
    let net = loopback_net();
    let addr = free_addr_on(&format!("{net}1"));
    let mut node = Node::spawn("full", &addr, &["-data-dir", &data_arg], &dir.path);
    node.wait_answers(Duration::from_secs(10));
    let mut conn = TimedConn::new(&addr, Duration::from_secs(5));
    let body = vec![b'z'; 512 << 10];
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..20 {
        let path = format!("/big/{i}");
        match conn.set(&path, 0, &body) {
            Ok(rev) => acked.push((path, rev)),
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk filled up");
    assert!(refusal.contains("data dir failed"), "{refusal}");
    assert!(!acked.is_empty());
    // Reads are refused too, with the same cause; the process lives on.
    let err = TimedConn::new(&addr, Duration::from_secs(5))
        .get("/big/0")
        .unwrap_err();
    assert!(err.contains("data dir failed"), "{err}");
    assert!(node.is_running());
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains("data dir failed") && log.contains("No space left"),
        "{log}"
    );
    node.kill9();
    // Room again (a bigger tmpfs): every acknowledged write is there.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    let mut back = Node::spawn("full-back", &addr, &["-data-dir", &data_arg], &dir.path);
    back.wait_answers(Duration::from_secs(10));
    let mut conn = TimedConn::new(&addr, Duration::from_secs(5));
    for (path, rev) in &acked {
        let (got, got_rev) = conn.get(path).unwrap();
        assert_eq!((got.len(), got_rev), (body.len(), *rev), "{path}");
    }
}
