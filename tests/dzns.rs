//! Booting clusters through a DzNS (`doozerd -c NAME -b URI`, reference §5.7
//! with the fixes of CONTRACT.md), with real processes on loopback: the
//! README walk-through (four nodes started at once, one seed, the others
//! attached), two clusters on one DzNS, a restart after a total outage (the
//! stale `/ctl/boot/<name>` taken over), the DzNS's `/ctl/ns/<name>` kept
//! equal to the member set when a member dies, and the start-up errors
//! (DzNS unreachable, wrong secret).
//!
//! Every test uses a random `127.a.b.` network of its own, writes the logs of
//! its nodes to a temporary directory (kept, and every node's log tail
//! printed, when it fails) and kills every process it started, also on panic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use doozer::codec::client::{Request, Verb};

/// The rev `doozer set` printed.
fn rev_of(out: &Output, what: &str) -> i64 {
    assert!(
        out.status.success(),
        "{what}: {:?}, stdout {:?}, stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: stdout {:?}: {e}", text(&out.stdout)))
}

/// Runs `doozer -a 'doozer:?cn=NAME' -b BOOT args…`.
fn doozer_cn(name: &str, boot: &str, args: &[&str], stdin: &[u8]) -> Output {
    let uri = format!("doozer:?cn={name}");
    let mut all = vec!["-a", uri.as_str(), "-b", boot];
    all.extend_from_slice(args);
    doozer_with_env(&[], &all, stdin)
}

/// `doozer -a 'doozer:?cn=NAME' -b BOOT set PATH 0` with an empty body: opens
/// a member slot as an operator does.
fn open_slot(name: &str, boot: &str, slot: usize) {
    let path = format!("/ctl/cal/{slot}");
    let out = doozer_cn(name, boot, &["set", &path, "0"], b"");
    rev_of(&out, &format!("doozer set {path} 0 through cn={name}"));
}

/// ACCESS on `conn`.
fn access(conn: &mut TimedConn, secret: &str) -> Result<(), String> {
    conn.ok(Request {
        verb: Some(Verb::Access as i32),
        value: Some(secret.as_bytes().to_vec()),
        ..Default::default()
    })
    .map(|_| ())
}

/// The processes of one test; on a failed test prints every node's log tail.
struct Bed {
    nodes: Vec<Node>,
    /// When each node was started.
    spawned: Vec<Instant>,
    net: String,
    // Dropped after the nodes, so logs are complete when kept.
    dir: TempDir,
}

impl Drop for Bed {
    fn drop(&mut self) {
        print_logs_if_panicking(&self.nodes, &self.dir);
    }
}

/// A DzNS cluster of the test: its nodes (indexes into `Bed::nodes`) and the
/// URI naming all of them.
struct Dzns {
    nodes: Vec<usize>,
    uri: String,
}

impl Bed {
    fn new(name: &str) -> Bed {
        Bed {
            nodes: Vec::new(),
            spawned: Vec::new(),
            net: loopback_net(),
            dir: TempDir::new(name),
        }
    }

    /// Starts `doozerd -l <free port on net.host> -w false args…` with `env`;
    /// returns its index at once.
    fn spawn(&mut self, name: &str, host: u8, args: &[&str], env: &[(&str, &str)]) -> usize {
        let addr = free_addr_on(&format!("{}{host}", self.net));
        self.spawn_at(name, &addr, args, env)
    }

    fn spawn_at(&mut self, name: &str, addr: &str, args: &[&str], env: &[(&str, &str)]) -> usize {
        let node = Node::spawn_env(name, addr, args, env, &self.dir.path);
        self.nodes.push(node);
        self.spawned.push(Instant::now());
        self.nodes.len() - 1
    }

    fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.clone()
    }

    fn conn(&self, i: usize) -> TimedConn {
        TimedConn::new(&self.nodes[i].addr, Duration::from_secs(5))
    }

    /// Panics (with the log) when node `i` has exited.
    fn check_running(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].is_running() {
            return Ok(());
        }
        let node = &mut self.nodes[i];
        panic!(
            "doozerd {} on {} exited: {:?}\n{}",
            node.name,
            node.addr,
            node.child.try_wait(),
            node.log_tail(30)
        );
    }

    /// An ordinary cluster to serve as the DzNS: a seed on `net.1`, then
    /// `members - 1` slaves attached to it (`net.2`, …), then their slots
    /// opened; returns once they are all members.
    fn start_dzns(&mut self, members: usize) -> Dzns {
        let seed = self.spawn("dzns1", 1, &[], &[]);
        self.nodes[seed].wait_answers(Duration::from_secs(10));
        let seed_addr = self.addr(seed);
        let mut nodes = vec![seed];
        for k in 2..=members {
            let i = self.spawn(&format!("dzns{k}"), k as u8, &["-a", &seed_addr], &[]);
            nodes.push(i);
        }
        for &i in &nodes {
            self.nodes[i].wait_answers(Duration::from_secs(10));
        }
        let mut ids = Vec::new();
        for &i in &nodes {
            ids.push(wait_for(
                "SELF of a DzNS node",
                Duration::from_secs(5),
                || self.conn(i).self_id(),
            ));
        }
        for (k, &i) in nodes.iter().enumerate() {
            let (id, addr) = (ids[k].clone(), self.addr(i));
            wait_for(
                &format!("DzNS node {addr} to register"),
                Duration::from_secs(10),
                || {
                    let (body, _) = self.conn(seed).get(&format!("/ctl/node/{id}/addr"))?;
                    (text(&body) == addr)
                        .then_some(())
                        .ok_or(format!("addr {:?}", text(&body)))
                },
            );
        }
        for slot in 1..members {
            self.conn(seed)
                .set(&format!("/ctl/cal/{slot}"), 0, b"")
                .unwrap();
        }
        wait_for(
            &format!("a {members}-member DzNS"),
            Duration::from_secs(15),
            || {
                let cal = self.cal(seed)?;
                let held: BTreeSet<&String> = cal.values().collect();
                let want: BTreeSet<&String> = ids.iter().collect();
                (cal.len() == members && held == want)
                    .then_some(())
                    .ok_or(format!("/ctl/cal is {cal:?}"))
            },
        );
        let uri = format!(
            "doozer:?{}",
            nodes
                .iter()
                .map(|&i| format!("ca={}", self.addr(i)))
                .collect::<Vec<_>>()
                .join("&")
        );
        Dzns { nodes, uri }
    }

    /// `/ctl/cal` as node `i` has it: slot → body.
    fn cal(&self, i: usize) -> Result<BTreeMap<String, String>, String> {
        self.conn(i).dir_bodies("/ctl/cal")
    }

    /// `/ctl/ns/<name>` in the DzNS (read on its first node): id → address.
    fn ns(&self, dzns: &Dzns, name: &str) -> Result<BTreeMap<String, String>, String> {
        self.conn(dzns.nodes[0])
            .dir_bodies(&format!("/ctl/ns/{name}"))
    }

    /// `/ctl/boot/<name>` in the DzNS.
    fn boot_entry(&self, dzns: &Dzns, name: &str) -> Result<String, String> {
        let (body, _) = self.conn(dzns.nodes[0]).get(&format!("/ctl/boot/{name}"))?;
        Ok(text(&body))
    }

    /// Waits until every node of `nodes` is in cluster `name` (it answers
    /// `/ctl/name` = name; a node exiting fails at once); returns their ids.
    fn wait_booted(&mut self, nodes: &[usize], name: &str, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut ids = Vec::new();
        for &i in nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            let what = format!("{} to boot into cluster {name}", self.nodes[i].name);
            wait_for(&what, left, || {
                self.check_running(i)?;
                let (body, _) = self.conn(i).get("/ctl/name")?;
                (body == name.as_bytes())
                    .then_some(())
                    .ok_or(format!("/ctl/name is {:?}", text(&body)))
            });
            let id = wait_for("SELF", Duration::from_secs(5), || self.conn(i).self_id());
            assert_eq!(id.len(), 16, "node id {id:?}");
            ids.push(id);
        }
        ids
    }

    /// Waits until every node of `nodes` has the same non-empty `/ctl/cal/0`,
    /// the id of one of them (`ids`, by position); returns that position.
    fn wait_one_seed(&mut self, nodes: &[usize], ids: &[String], limit: Duration) -> usize {
        wait_for("every node to agree on /ctl/cal/0", limit, || {
            let mut seen = BTreeSet::new();
            for &i in nodes {
                self.check_running(i)?;
                let (body, _) = self.conn(i).get("/ctl/cal/0")?;
                seen.insert(text(&body));
            }
            let seed = match seen.iter().collect::<Vec<_>>().as_slice() {
                [one] => ids.iter().position(|id| id == *one),
                _ => None,
            };
            seed.ok_or(format!("/ctl/cal/0 seen: {seen:?}, ids {ids:?}"))
        })
    }

    /// Waits until every node of `nodes` has the same `/ctl/cal` with
    /// `members` slots, each holding a distinct id of `ids` and each such
    /// node registered with its own address; returns that `/ctl/cal`.
    fn wait_members(
        &mut self,
        nodes: &[usize],
        ids: &[String],
        members: usize,
        limit: Duration,
    ) -> BTreeMap<String, String> {
        wait_for(
            &format!("{members} members in every node's view"),
            limit,
            || {
                let first = self.cal(nodes[0])?;
                let held: BTreeSet<&String> = first.values().collect();
                if first.len() != members
                    || held.len() != members
                    || first.values().any(|id| !ids.contains(id))
                {
                    return Err(format!("/ctl/cal is {first:?}, ids {ids:?}"));
                }
                for &i in nodes {
                    self.check_running(i)?;
                    let theirs = self.cal(i)?;
                    if theirs != first {
                        return Err(format!(
                            "{} has /ctl/cal {theirs:?}, {} has {first:?}",
                            self.nodes[i].name, self.nodes[nodes[0]].name
                        ));
                    }
                }
                for id in first.values() {
                    let k = ids.iter().position(|x| x == id).unwrap();
                    let (addr, _) = self.conn(nodes[0]).get(&format!("/ctl/node/{id}/addr"))?;
                    if text(&addr) != self.nodes[nodes[k]].addr {
                        return Err(format!("/ctl/node/{id}/addr is {:?}", text(&addr)));
                    }
                }
                Ok(first)
            },
        )
    }

    /// Waits until the DzNS lists exactly `want` (id → address) under
    /// `/ctl/ns/<name>`.
    fn wait_ns(&self, dzns: &Dzns, name: &str, want: &BTreeMap<String, String>, limit: Duration) {
        wait_for(
            &format!("/ctl/ns/{name} in the DzNS to be {want:?}"),
            limit,
            || {
                let ns = self.ns(dzns, name)?;
                (ns == *want).then_some(()).ok_or(format!("it is {ns:?}"))
            },
        );
    }

    /// Waits until node `i` answers GET `path` with exactly `(body, rev)`.
    fn wait_value(&self, i: usize, path: &str, body: &[u8], rev: i64, limit: Duration) {
        self.nodes[i].wait_value(path, body, rev, limit);
    }

    /// id → address of the nodes (positions in `nodes`/`ids`) named in `cal`.
    fn member_addrs(
        &self,
        cal: &BTreeMap<String, String>,
        nodes: &[usize],
        ids: &[String],
    ) -> BTreeMap<String, String> {
        cal.values()
            .map(|id| {
                let k = ids.iter().position(|x| x == id).unwrap();
                (id.clone(), self.addr(nodes[k]))
            })
            .collect()
    }
}

/// The walk-through: a 3-member DzNS, four `doozerd -c example -b DZNS`
/// started at the same moment, two slots opened through `cn=example`. One
/// seed (named in `/ctl/boot/example`), three members and a slave, the DzNS
/// listing exactly the members, and a write through `cn` on every node.
#[test]
fn walkthrough_four_nodes_boot_through_a_dzns() {
    let started = Instant::now();
    let mut bed = Bed::new("dzns-walkthrough");
    let dzns = bed.start_dzns(3);
    let name = "example";
    let args = ["-c", name, "-b", dzns.uri.as_str()];
    let nodes: Vec<usize> = (11..=14)
        .map(|h| bed.spawn(&format!("example{h}"), h, &args, &[]))
        .collect();
    let spawned = Instant::now();
    let ids = bed.wait_booted(&nodes, name, Duration::from_secs(30));
    eprintln!("four nodes booted in {:?}", spawned.elapsed());

    // Exactly one seed: every node has its id in /ctl/cal/0, and the DzNS
    // names it in /ctl/boot/example.
    let seed = bed.wait_one_seed(&nodes, &ids, Duration::from_secs(10));
    let seed_id = ids[seed].clone();
    wait_for(
        "/ctl/boot/example to name the seed",
        Duration::from_secs(5),
        || {
            let boot = bed.boot_entry(&dzns, name)?;
            (boot == seed_id)
                .then_some(())
                .ok_or(format!("it is {boot:?}, the seed is {seed_id}"))
        },
    );

    // Only the seed is a member yet: the DzNS lists it alone (the losers'
    // election entries are gone, slaves are not listed).
    let only_seed = BTreeMap::from([(seed_id.clone(), bed.addr(nodes[seed]))]);
    bed.wait_ns(&dzns, name, &only_seed, Duration::from_secs(10));

    // Open two member slots the way the README does: DOOZER_URI with cn,
    // DOOZER_BOOT_URI naming the DzNS.
    let env = [
        ("DOOZER_URI", "doozer:?cn=example"),
        ("DOOZER_BOOT_URI", dzns.uri.as_str()),
    ];
    for slot in 1..=2 {
        let path = format!("/ctl/cal/{slot}");
        let out = doozer_with_env(&env, &["set", &path, "0"], b"");
        rev_of(&out, &format!("doozer set {path} 0 (env)"));
    }
    let cal = bed.wait_members(&nodes, &ids, 3, Duration::from_secs(20));
    assert_eq!(cal.get("0"), Some(&seed_id), "the seed keeps slot 0");
    let slaves: Vec<usize> = (0..4)
        .filter(|k| !cal.values().any(|id| *id == ids[*k]))
        .collect();
    assert_eq!(slaves.len(), 1, "one slave: {cal:?}, ids {ids:?}");
    for &i in &nodes {
        let (body, _) = bed.conn(i).get("/ctl/name").unwrap();
        assert_eq!(text(&body), name);
    }
    // Every node registered with its own address.
    for (k, &i) in nodes.iter().enumerate() {
        let path = format!("/ctl/node/{}/addr", ids[k]);
        let addr = bed.addr(i);
        wait_for(&format!("{path} = {addr}"), Duration::from_secs(5), || {
            let (body, _) = bed.conn(nodes[seed]).get(&path)?;
            (text(&body) == addr)
                .then_some(())
                .ok_or(format!("{:?}", text(&body)))
        });
    }

    // The DzNS lists exactly the three members, with their addresses.
    let want = bed.member_addrs(&cal, &nodes, &ids);
    bed.wait_ns(&dzns, name, &want, Duration::from_secs(10));
    assert_eq!(bed.boot_entry(&dzns, name).unwrap(), seed_id);

    // `doozer members` through the DzNS says the same: the three slots with
    // their members (one of them the leader), then the slave.
    let out = doozer_cn(name, &dzns.uri, &["members"], b"");
    assert!(
        out.status.success(),
        "doozer members: {}",
        text(&out.stderr)
    );
    let listing = text(&out.stdout);
    let lines: Vec<Vec<&str>> = listing.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 4, "doozer members:\n{listing}");
    for (k, fields) in lines.iter().enumerate() {
        assert_eq!(fields.len(), 5, "doozer members:\n{listing}");
        let node = ids.iter().position(|id| id == fields[1]);
        let node = node.unwrap_or_else(|| panic!("unknown id in:\n{listing}"));
        assert_eq!(
            fields[2],
            bed.addr(nodes[node]),
            "doozer members:\n{listing}"
        );
        if k < 3 {
            assert_eq!(fields[0], k.to_string(), "doozer members:\n{listing}");
            assert_eq!(Some(&ids[node]), cal.get(fields[0]));
            assert!(
                ["leader", "member"].contains(&fields[3]),
                "doozer members:\n{listing}"
            );
        } else {
            assert_eq!(
                (fields[0], fields[3], node),
                ("-", "slave", slaves[0]),
                "doozer members:\n{listing}"
            );
        }
    }
    // The leader names itself in /ctl/leader, so exactly one line says so.
    let leaders = lines.iter().filter(|f| f[3] == "leader").count();
    assert_eq!(leaders, 1, "doozer members:\n{listing}");

    // A client reaches the cluster through the DzNS; its write is on every
    // node of the booted cluster.
    let out = doozer_cn(name, &dzns.uri, &["get", "/ctl/name"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), name);
    let body = b"written through the DzNS";
    let out = doozer_cn(name, &dzns.uri, &["set", "/walk/cn", "0"], body);
    let rev = rev_of(&out, "doozer -a cn -b DZNS set /walk/cn 0");
    for &i in &nodes {
        bed.wait_value(i, "/walk/cn", body, rev, Duration::from_secs(5));
    }
    // And it did not land in the DzNS.
    let (_, rev_in_dzns) = bed.conn(dzns.nodes[0]).get("/walk/cn").unwrap();
    assert_eq!(rev_in_dzns, 0, "the write went to the booted cluster only");
    eprintln!("walkthrough took {:?}", started.elapsed());
}

/// Two clusters on one DzNS, booted at the same moment (one node of `two`
/// finds the DzNS through `DOOZER_BOOT_URI` rather than `-b`): each has its
/// own seed, name and data; the DzNS has a boot entry and a disjoint ns
/// directory for each.
#[test]
fn two_clusters_share_one_dzns() {
    let started = Instant::now();
    let mut bed = Bed::new("dzns-two");
    let dzns = bed.start_dzns(1);
    let boot = dzns.uri.clone();
    let one_args = ["-c", "one", "-b", boot.as_str()];
    let one = [
        bed.spawn("one-a", 11, &one_args, &[]),
        bed.spawn("one-b", 12, &one_args, &[]),
    ];
    let two = [
        bed.spawn("two-a", 21, &["-c", "two", "-b", &boot], &[]),
        bed.spawn("two-b", 22, &["-c", "two"], &[("DOOZER_BOOT_URI", &boot)]),
    ];
    let one_ids = bed.wait_booted(&one, "one", Duration::from_secs(30));
    let two_ids = bed.wait_booted(&two, "two", Duration::from_secs(30));
    let one_seed = bed.wait_one_seed(&one, &one_ids, Duration::from_secs(10));
    let two_seed = bed.wait_one_seed(&two, &two_ids, Duration::from_secs(10));
    let (one_seed_id, two_seed_id) = (one_ids[one_seed].clone(), two_ids[two_seed].clone());

    wait_for("both boot entries", Duration::from_secs(5), || {
        let got = (bed.boot_entry(&dzns, "one")?, bed.boot_entry(&dzns, "two")?);
        (got == (one_seed_id.clone(), two_seed_id.clone()))
            .then_some(())
            .ok_or(format!("/ctl/boot/one, two = {got:?}"))
    });
    // Each lists its seed, the only member, and nothing of the other.
    let want_one = BTreeMap::from([(one_seed_id.clone(), bed.addr(one[one_seed]))]);
    let want_two = BTreeMap::from([(two_seed_id.clone(), bed.addr(two[two_seed]))]);
    bed.wait_ns(&dzns, "one", &want_one, Duration::from_secs(10));
    bed.wait_ns(&dzns, "two", &want_two, Duration::from_secs(10));
    // Each node is registered in its own cluster only.
    for (k, &i) in one.iter().enumerate() {
        let (_, rev) = bed
            .conn(two[0])
            .get(&format!("/ctl/node/{}/addr", one_ids[k]))
            .unwrap();
        assert_eq!(rev, 0, "{} is not in cluster two", bed.nodes[i].name);
    }
    for (k, &i) in two.iter().enumerate() {
        let (_, rev) = bed
            .conn(one[0])
            .get(&format!("/ctl/node/{}/addr", two_ids[k]))
            .unwrap();
        assert_eq!(rev, 0, "{} is not in cluster one", bed.nodes[i].name);
    }

    // A write in one is on both nodes of one and absent in two, and the
    // other way round.
    let out = doozer_cn("one", &boot, &["set", "/data", "0"], b"in one");
    let rev_one = rev_of(&out, "set /data in one");
    let out = doozer_cn("two", &boot, &["set", "/only-two", "0"], b"in two");
    let rev_two = rev_of(&out, "set /only-two in two");
    for &i in &one {
        bed.wait_value(i, "/data", b"in one", rev_one, Duration::from_secs(5));
    }
    for &i in &two {
        bed.wait_value(i, "/only-two", b"in two", rev_two, Duration::from_secs(5));
    }
    for &i in &two {
        let (_, rev) = bed.conn(i).get("/data").unwrap();
        assert_eq!(rev, 0, "/data is absent in cluster two");
        let (body, _) = bed.conn(i).get("/ctl/name").unwrap();
        assert_eq!(text(&body), "two");
    }
    for &i in &one {
        let (_, rev) = bed.conn(i).get("/only-two").unwrap();
        assert_eq!(rev, 0, "/only-two is absent in cluster one");
        let (body, _) = bed.conn(i).get("/ctl/name").unwrap();
        assert_eq!(text(&body), "one");
    }
    let out = doozer_cn("two", &boot, &["get", "/data"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "cn=two does not see one's data");
    eprintln!("two clusters took {:?}", started.elapsed());
}

/// Every node of a booted cluster killed, then two new nodes with the same
/// name started (one on an old address, one on a new one): they take the
/// stale `/ctl/boot/<name>` over, one seeds, the other attaches; the DzNS
/// ends up listing exactly the new members.
#[test]
fn restart_after_total_outage() {
    let started = Instant::now();
    let mut bed = Bed::new("dzns-restart");
    let dzns = bed.start_dzns(1);
    let name = "phoenix";
    let args = ["-c", name, "-b", dzns.uri.as_str()];
    let first = bed.spawn("old-seed", 11, &args, &[]);
    let first_ids = bed.wait_booted(&[first], name, Duration::from_secs(30));
    let second = bed.spawn("old-member", 12, &args, &[]);
    let mut old = vec![first];
    old.push(second);
    let old_ids = [
        first_ids[0].clone(),
        bed.wait_booted(&[second], name, Duration::from_secs(30))[0].clone(),
    ];
    assert_eq!(
        bed.wait_one_seed(&old, &old_ids, Duration::from_secs(10)),
        0
    );
    open_slot(name, &dzns.uri, 1);
    let cal = bed.wait_members(&old, &old_ids, 2, Duration::from_secs(20));
    let want = bed.member_addrs(&cal, &old, &old_ids);
    bed.wait_ns(&dzns, name, &want, Duration::from_secs(10));
    assert_eq!(bed.boot_entry(&dzns, name).unwrap(), old_ids[0]);

    // Total outage.
    let reused = bed.addr(first);
    for &i in &old {
        bed.nodes[i].kill9();
    }
    let killed_at = Instant::now();

    let new = [
        bed.spawn_at("new-a", &reused, &args, &[]),
        bed.spawn("new-b", 13, &args, &[]),
    ];
    let ids = bed.wait_booted(&new, name, Duration::from_secs(40));
    let seed = bed.wait_one_seed(&new, &ids, Duration::from_secs(10));
    eprintln!(
        "new cluster booted {:?} after the outage",
        killed_at.elapsed()
    );
    let seed_id = ids[seed].clone();
    wait_for(
        "/ctl/boot to name the new seed",
        Duration::from_secs(10),
        || {
            let boot = bed.boot_entry(&dzns, name)?;
            (boot == seed_id)
                .then_some(())
                .ok_or(format!("it is {boot:?}, the new seed is {seed_id}"))
        },
    );
    let out = doozer_cn(name, &dzns.uri, &["set", "/reborn", "0"], b"yes");
    let rev = rev_of(&out, "set through cn after the restart");
    for &i in &new {
        bed.wait_value(i, "/reborn", b"yes", rev, Duration::from_secs(5));
    }

    // The stale entries go; the new members are listed.
    open_slot(name, &dzns.uri, 1);
    let cal = bed.wait_members(&new, &ids, 2, Duration::from_secs(20));
    let want = bed.member_addrs(&cal, &new, &ids);
    bed.wait_ns(&dzns, name, &want, Duration::from_secs(15));
    for id in &old_ids {
        assert!(!want.contains_key(id));
    }
    eprintln!("restart after outage took {:?}", started.elapsed());
}

/// A member of a booted cluster killed (`-timeout 2`): its ns entry leaves
/// the DzNS and the slave that takes its slot is listed. (Three members, so a
/// majority survives to remove it.)
#[test]
fn dead_member_leaves_the_ns_and_its_successor_joins() {
    let started = Instant::now();
    let mut bed = Bed::new("dzns-removal");
    let dzns = bed.start_dzns(1);
    let name = "churn";
    let args = ["-c", name, "-b", dzns.uri.as_str(), "-timeout", "2"];
    let seed_node = bed.spawn("seed", 11, &args, &[]);
    bed.wait_booted(&[seed_node], name, Duration::from_secs(30));
    let mut nodes = vec![seed_node];
    for h in 12..=14 {
        nodes.push(bed.spawn(&format!("node{h}"), h, &args, &[]));
    }
    let ids = bed.wait_booted(&nodes, name, Duration::from_secs(30));
    assert_eq!(bed.wait_one_seed(&nodes, &ids, Duration::from_secs(10)), 0);
    open_slot(name, &dzns.uri, 1);
    open_slot(name, &dzns.uri, 2);
    let cal = bed.wait_members(&nodes, &ids, 3, Duration::from_secs(20));
    let want = bed.member_addrs(&cal, &nodes, &ids);
    bed.wait_ns(&dzns, name, &want, Duration::from_secs(10));

    let (victim_slot, victim_id) = cal
        .iter()
        .find(|(_, id)| **id != ids[0])
        .map(|(s, id)| (s.clone(), id.clone()))
        .unwrap();
    let victim = ids.iter().position(|x| *x == victim_id).unwrap();
    let slave = (0..4)
        .find(|k| !cal.values().any(|id| *id == ids[*k]))
        .unwrap();
    bed.nodes[nodes[victim]].kill9();
    let killed_at = Instant::now();

    let mut want_after = want.clone();
    want_after.remove(&victim_id);
    want_after.insert(ids[slave].clone(), bed.addr(nodes[slave]));
    bed.wait_ns(&dzns, name, &want_after, Duration::from_secs(15));
    eprintln!("ns entry replaced {:?} after the kill", killed_at.elapsed());
    let (body, _) = bed
        .conn(nodes[0])
        .get(&format!("/ctl/cal/{victim_slot}"))
        .unwrap();
    assert_eq!(
        text(&body),
        ids[slave],
        "the slave took the dead member's slot"
    );
    eprintln!("member removal took {:?}", started.elapsed());
}

/// Waits up to 15 s for a node that cannot boot to exit; checks it failed,
/// said why on stderr (naming the DzNS or the boot URI) and did not panic.
fn assert_fails_cleanly(bed: &mut Bed, i: usize, what: &str) -> String {
    let spawned = bed.spawned[i];
    let limit = Duration::from_secs(15).saturating_sub(spawned.elapsed());
    let status = bed.nodes[i].wait_exit(limit);
    let log = std::fs::read_to_string(&bed.nodes[i].log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!("{what}: doozerd still running after 15 s; its log:\n{log}");
    });
    assert!(!status.success(), "{what}: exited {status:?}; log:\n{log}");
    assert!(!log.contains("panicked at"), "{what}: a Rust panic:\n{log}");
    let lower = log.to_lowercase();
    assert!(
        lower.contains("dzns") || lower.contains("boot"),
        "{what}: the message names neither the DzNS nor the boot URI:\n{log}"
    );
    eprintln!(
        "{what}: exited {status:?} after {:?}: {}",
        spawned.elapsed(),
        log.trim_end()
    );
    log
}

/// A boot URI pointing at a closed port, or not a URI at all: doozerd exits
/// non-zero with a message, no panic.
#[test]
fn boot_fails_cleanly_when_the_dzns_is_unreachable() {
    let mut bed = Bed::new("dzns-unreachable");
    let closed = free_addr_on(&format!("{}1", bed.net));
    let uri = format!("doozer:?ca={closed}");
    let a = bed.spawn("closed-port", 11, &["-c", "lost", "-b", &uri], &[]);
    let b = bed.spawn(
        "closed-port-env",
        12,
        &["-c", "lost"],
        &[("DOOZER_BOOT_URI", &uri)],
    );
    let c = bed.spawn("bad-uri", 13, &["-c", "lost", "-b", "http://nowhere"], &[]);
    assert_fails_cleanly(&mut bed, a, "-b with a closed port");
    assert_fails_cleanly(&mut bed, b, "DOOZER_BOOT_URI with a closed port");
    assert_fails_cleanly(&mut bed, c, "-b that is not a doozer URI");
}

/// A DzNS with `DOOZER_RWSECRET=x`: a node booting with another secret, or
/// none, exits non-zero with a message, no panic; one with the same secret
/// boots.
#[test]
fn boot_fails_cleanly_with_a_wrong_secret() {
    let mut bed = Bed::new("dzns-secret");
    let secret = [("DOOZER_RWSECRET", "x")];
    let dz = bed.spawn("dzns1", 1, &[], &secret);
    wait_for("the DzNS to answer", Duration::from_secs(10), || {
        bed.check_running(dz)?;
        let mut conn = bed.conn(dz);
        access(&mut conn, "x")?;
        conn.rev()
    });
    let dzns = Dzns {
        nodes: vec![dz],
        uri: format!("doozer:?ca={}", bed.addr(dz)),
    };
    let args = ["-c", "sec", "-b", dzns.uri.as_str()];
    let wrong = bed.spawn("wrong-secret", 11, &args, &[("DOOZER_RWSECRET", "y")]);
    let none = bed.spawn("no-secret", 12, &args, &[]);
    assert_fails_cleanly(&mut bed, wrong, "a node with another secret");
    assert_fails_cleanly(&mut bed, none, "a node without a secret");

    // The right secret boots.
    let right = bed.spawn("right-secret", 13, &args, &secret);
    let id = wait_for(
        "the node with the right secret to boot",
        Duration::from_secs(30),
        || {
            bed.check_running(right)?;
            let mut conn = bed.conn(right);
            access(&mut conn, "x")?;
            let (body, _) = conn.get("/ctl/name")?;
            if body != b"sec" {
                return Err(format!("/ctl/name is {:?}", text(&body)));
            }
            conn.self_id()
        },
    );
    wait_for("the DzNS to list the node", Duration::from_secs(10), || {
        let mut conn = bed.conn(dz);
        access(&mut conn, "x")?;
        let (boot, _) = conn.get("/ctl/boot/sec")?;
        let (addr, _) = conn.get(&format!("/ctl/ns/sec/{id}"))?;
        (text(&boot) == id && text(&addr) == bed.addr(right))
            .then_some(())
            .ok_or(format!(
                "/ctl/boot/sec {:?}, /ctl/ns/sec/{id} {:?}",
                text(&boot),
                text(&addr)
            ))
    });

    // A second node with the secret finds the cluster through the DzNS and
    // joins it over peer links authenticated with the key the secret gives:
    // a write on the first reaches it.
    let second = bed.spawn("right-secret-2", 14, &args, &secret);
    let mut conn = bed.conn(right);
    access(&mut conn, "x").unwrap();
    let rev = conn
        .set("/shared", -1, b"over authenticated links")
        .unwrap();
    wait_for("the second node's copy", Duration::from_secs(30), || {
        bed.check_running(second)?;
        let mut conn = bed.conn(second);
        access(&mut conn, "x")?;
        let (body, got) = conn.get("/shared")?;
        (got == rev && body == b"over authenticated links")
            .then_some(())
            .ok_or(format!("rev {got}, {:?}", text(&body)))
    });
}

/// `-a` and a boot URI together (reference §5.2): `-a` is tried first; when
/// it names no live member, the node boots through the DzNS instead. Both
/// end up as slaves of the one booted cluster.
#[test]
fn attach_flag_is_tried_before_the_dzns() {
    let mut bed = Bed::new("dzns-attach-first");
    let dzns = bed.start_dzns(1);
    let name = "both";
    let args = ["-c", name, "-b", dzns.uri.as_str()];
    let seed = bed.spawn("seed", 11, &args, &[]);
    let seed_id = bed.wait_booted(&[seed], name, Duration::from_secs(30))[0].clone();

    // A live member through -a, and a dead address through -a.
    let seed_addr = bed.addr(seed);
    let dead_addr = free_addr_on(&format!("{}99", bed.net));
    let mut with_live = vec!["-a", seed_addr.as_str()];
    with_live.extend_from_slice(&args);
    let mut with_dead = vec!["-a", dead_addr.as_str()];
    with_dead.extend_from_slice(&args);
    let live = bed.spawn("via-a", 12, &with_live, &[]);
    let fallback = bed.spawn("via-dzns", 13, &with_dead, &[]);
    let nodes = [seed, live, fallback];
    let ids = bed.wait_booted(&nodes, name, Duration::from_secs(30));
    assert_eq!(bed.wait_one_seed(&nodes, &ids, Duration::from_secs(10)), 0);

    // Both registered in the seed's cluster, as slaves.
    for k in 1..3 {
        let path = format!("/ctl/node/{}/addr", ids[k]);
        let addr = bed.addr(nodes[k]);
        wait_for(&format!("{path} = {addr}"), Duration::from_secs(10), || {
            let (body, _) = bed.conn(seed).get(&path)?;
            (text(&body) == addr)
                .then_some(())
                .ok_or(format!("{:?}", text(&body)))
        });
    }
    assert_eq!(bed.cal(seed).unwrap().len(), 1, "no slot opened yet");
    let live_log = std::fs::read_to_string(&bed.nodes[live].log).unwrap();
    assert!(
        !live_log.contains("looking up cluster"),
        "-a alone sufficed:\n{live_log}"
    );
    let fallback_log = std::fs::read_to_string(&bed.nodes[fallback].log).unwrap();
    assert!(
        fallback_log.contains("booting through the DzNS"),
        "the dead -a fell back to the DzNS:\n{fallback_log}"
    );
    // The DzNS still lists the seed alone (slaves are not listed).
    let only_seed = BTreeMap::from([(seed_id, seed_addr)]);
    bed.wait_ns(&dzns, name, &only_seed, Duration::from_secs(5));
}

/// A listed address that takes connections but never answers may be a live
/// node too busy to reply: the boot entry naming it is not taken over after
/// the short grace, only after the long one (20 s), and then the node seeds.
#[test]
fn a_silent_listed_address_delays_the_takeover() {
    let mut bed = Bed::new("dzns-silent");
    let dzns = bed.start_dzns(1);
    let name = "hush";
    // A "node" that the kernel accepts connections for and that never reads.
    let silent = std::net::TcpListener::bind(format!("{}50:0", bed.net)).unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let fake_id = "AAAAAAAAAAAAAAAA";
    let mut conn = bed.conn(dzns.nodes[0]);
    conn.set(
        &format!("/ctl/ns/{name}/{fake_id}"),
        0,
        silent_addr.as_bytes(),
    )
    .unwrap();
    conn.set(&format!("/ctl/boot/{name}"), 0, fake_id.as_bytes())
        .unwrap();

    let args = ["-c", name, "-b", dzns.uri.as_str()];
    let node = bed.spawn("booting", 11, &args, &[]);
    std::thread::sleep(Duration::from_secs(9));
    bed.check_running(node).unwrap();
    assert_eq!(
        bed.boot_entry(&dzns, name).unwrap(),
        fake_id,
        "taken over while a listed address was merely silent"
    );
    let ids = bed.wait_booted(&[node], name, Duration::from_secs(25));
    wait_for("the new seed in /ctl/boot", Duration::from_secs(5), || {
        let boot = bed.boot_entry(&dzns, name)?;
        (boot == ids[0]).then_some(()).ok_or(boot)
    });
    drop(silent);
}
