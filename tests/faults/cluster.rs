//! A doozer cluster on real processes, each `doozerd` in its own network
//! namespace, all on one bridge that holds an address, so the test process
//! (root namespace) reaches every node directly while iptables rules inside
//! a node's namespace cut the peer traffic between node addresses.
//!
//! Names derive from the test process PID and a run index
//! (`dz<pid hex>r<run>…`, at most 14 bytes: Linux interface names stop at
//! 15), subnets from both (`10.<64 + pid % 128>.<run>.0/24`), so runs of one
//! process, and most processes, never collide. `Drop` kills only the PIDs
//! this cluster started and removes every namespace, veth and bridge it
//! created, also on panic; `sweep_stale` removes what a killed test process
//! left behind (names whose PID no longer runs).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_std::future::timeout;
use doozer::client::Client;

/// The port every node listens on (each has its own address).
pub const PORT: u16 = 8046;
/// Seconds a silent node keeps its place (`-timeout`): short, so removal,
/// slave promotion and return happen within a run.
pub const NODE_TIMEOUT: &str = "3";
/// The peer key every node proves (authenticated peers, as in production).
const PEER_SECRET: &str = "fault-suite-peer-key";
/// Most nodes one run creates (3 members, a slave, and churn's newcomers):
/// bounds addresses and processes.
pub const MAX_NODES: usize = 40;
/// Times a node that failed to attach while the cluster forms is started
/// again (a loaded machine can leave the seed silent past doozerd's 3 s).
const ATTACH_RETRIES: usize = 3;

/// The `ip` binary (root's PATH may lack /usr/sbin in a test runner).
pub fn ip_bin() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

fn iptables_bin() -> &'static str {
    ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("iptables")
}

/// Runs a command to completion; `Err` carries its stderr.
pub fn sh(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    sh(ip_bin(), args)
}

/// Whether this machine lets us build namespaces (root, `ip` present).
pub fn netns_available() -> Result<(), String> {
    let probe = format!("dz{:x}probe", std::process::id());
    ip(&["netns", "add", &probe])?;
    let _ = ip(&["netns", "del", &probe]);
    Ok(())
}

/// Removes namespaces and links of earlier test processes that died
/// without cleaning up (their PID no longer exists).
pub fn sweep_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix("dz") else {
            return false;
        };
        let Some(hex) = rest.split('r').next() else {
            return false;
        };
        match u32::from_str_radix(hex, 16) {
            Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => false,
        }
    };
    if let Ok(out) = Command::new(ip_bin()).args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if dead(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new(ip_bin()).args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: dz1a2br0b: <...": the name ends at ':' or '@'.
            let name = line
                .split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap_or("");
            if dead(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// One `doozerd` of the cluster, started and restarted with one command
/// line.
pub struct NodeProc {
    /// `n1`, `n2`, … (in the order created).
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub addr: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Stopped with SIGSTOP (and not yet continued).
    pub paused: bool,
    /// Killed for good (churn): never restarted, not read at the end.
    pub retired: bool,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    /// `dz<pid hex>r<run>`: every name of this cluster starts with it.
    pub tag: String,
    /// `10.a.b`: node `i` (0-based) is `10.a.b.(10 + i)`, the bridge `.1`.
    pub subnet: String,
    pub bridge: String,
    pub dir: PathBuf,
    pub nodes: Vec<NodeProc>,
    extra: Vec<String>,
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl Cluster {
    /// A bridge with an address, no node yet.
    pub fn new(run: usize, dir: &Path, extra: &[String]) -> Result<Cluster, String> {
        let pid = std::process::id();
        let tag = format!("dz{pid:x}r{run}");
        let a = 64 + pid % 128;
        let b = run % 250 + 1;
        let mut cluster = Cluster {
            bridge: format!("{tag}b"),
            subnet: format!("10.{a}.{b}"),
            tag,
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            extra: extra.to_vec(),
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        let br = cluster.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge"])?;
        cluster.links.push(br.clone());
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", cluster.subnet),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        Ok(cluster)
    }

    /// A namespace, a veth into it and a node spawned there (seed when
    /// `attach` is `None`); returns its index at once.
    pub fn add_node(&mut self, attach: Option<&str>) -> Result<usize, String> {
        let i = self.nodes.len();
        assert!(i < MAX_NODES, "a run creates at most {MAX_NODES} nodes");
        let name = format!("n{}", i + 1);
        let ns = format!("{}n{}", self.tag, i + 1);
        let host = format!("{}v{}", self.tag, i + 1);
        let peer = format!("{}p{}", self.tag, i + 1);
        let ipaddr = format!("{}.{}", self.subnet, 10 + i);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        self.links.push(host.clone());
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["link", "set", &host, "master", &self.bridge])?;
        ip(&["link", "set", &host, "up"])?;
        let nsx = |args: &[&str]| -> Result<(), String> {
            let mut all = vec!["netns", "exec", ns.as_str(), ip_bin()];
            all.extend_from_slice(args);
            ip(&all)
        };
        nsx(&["link", "set", "lo", "up"])?;
        nsx(&["link", "set", &peer, "name", "eth0"])?;
        nsx(&["addr", "add", &format!("{ipaddr}/24"), "dev", "eth0"])?;
        nsx(&["link", "set", "eth0", "up"])?;
        let addr = format!("{ipaddr}:{PORT}");
        let data = self.dir.join(format!("{name}.data"));
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let mut args: Vec<String> = vec![
            "-l".into(),
            addr.clone(),
            "-w".into(),
            "false".into(),
            "-timeout".into(),
            NODE_TIMEOUT.into(),
            "-data-dir".into(),
            data.display().to_string(),
        ];
        if let Some(a) = attach {
            args.extend(["-a".to_string(), a.to_string()]);
        }
        args.extend(self.extra.iter().cloned());
        self.nodes.push(NodeProc {
            log: self.dir.join(format!("{name}.log")),
            name,
            ns,
            ip: ipaddr,
            addr,
            args,
            child: None,
            paused: false,
            retired: false,
        });
        self.start(i)?;
        Ok(i)
    }

    /// Starts node `i` with its command line (it must be down).
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} is already running", node.name);
        let mut log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let _ = writeln!(
            log,
            "===== fault suite: start {} {:?}",
            node.name, node.args
        );
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", &node.ns, env!("CARGO_BIN_EXE_doozerd")])
            .args(&node.args);
        cmd.env_remove("DOOZER_RWSECRET")
            .env_remove("DOOZER_ROSECRET")
            .env_remove("DOOZER_BOOT_URI")
            .env("DOOZER_PEERSECRET", PEER_SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // `ip netns exec` execs doozerd in place: the child's PID is the node's.
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", node.name))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `kill -9` node `i` (a no-op when down) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writeln!(
                OpenOptions::new().append(true).open(&node.log).unwrap(),
                "===== fault suite: kill -9 {}",
                node.name
            );
        }
        node.paused = false;
    }

    pub fn signal(&mut self, i: usize, stop: bool) {
        let node = &mut self.nodes[i];
        if let Some(pid) = node.pid() {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // Only a PID this cluster started and has not reaped.
            unsafe {
                libc::kill(pid as i32, sig);
            }
            node.paused = stop;
        }
    }

    /// Indices of nodes that are not retired.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].retired)
            .collect()
    }

    /// Drops peer traffic from `from` to `to` (inside `to`'s namespace,
    /// INPUT from `from`'s address; both directions when `both`).
    pub fn block(&self, from: usize, to: usize, both: bool) -> Result<(), String> {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        self.iptables(&b.ns, &["-A", "INPUT", "-s", &a.ip, "-j", "DROP"])?;
        if both {
            self.iptables(&a.ns, &["-A", "INPUT", "-s", &b.ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Cuts every pair across the two groups, both ways.
    pub fn split(&self, left: &[usize], right: &[usize]) -> Result<(), String> {
        for &l in left {
            for &r in right {
                self.block(l, r, true)?;
            }
        }
        Ok(())
    }

    /// Flushes every node's rules.
    pub fn heal(&self) -> Result<(), String> {
        for i in self.live() {
            self.iptables(&self.nodes[i].ns, &["-F", "INPUT"])?;
        }
        Ok(())
    }

    fn iptables(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", ns, iptables_bin(), "-w"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The seed, three attached nodes, `/ctl/cal/1` and `/ctl/cal/2` opened:
    /// three members and a slave, every node answering.
    pub fn form(&mut self) -> Result<(), String> {
        let seed = self.add_node(None)?;
        let seed_addr = self.nodes[seed].addr.clone();
        wait_until("the seed to answer", Duration::from_secs(15), || {
            block_on_rev(&seed_addr).map(|_| ())
        })?;
        for _ in 0..3 {
            self.add_node(Some(&seed_addr))?;
        }
        for i in 0..4 {
            let addr = self.nodes[i].addr.clone();
            let mut restarts = 0;
            wait_until(
                &format!("{} to register", self.nodes[i].name),
                Duration::from_secs(30),
                || {
                    // An attach that found the seed silent (a busy machine:
                    // it gives up after 3 s) exits; start it again.
                    if self.exited(i) && restarts < ATTACH_RETRIES {
                        restarts += 1;
                        self.nodes[i].child = None;
                        self.start(i)?;
                        return Err("restarted after a failed attach".into());
                    }
                    let id = call(&addr, |c| async move { c.self_id().await })?;
                    let id = String::from_utf8_lossy(&id).into_owned();
                    let (body, _) = call(&seed_addr, |c| {
                        let id = id.clone();
                        async move { c.get(&format!("/ctl/node/{id}/addr"), None).await }
                    })?;
                    (body == addr.as_bytes())
                        .then_some(())
                        .ok_or_else(|| format!("addr {:?}", String::from_utf8_lossy(&body)))
                },
            )?;
        }
        for slot in ["/ctl/cal/1", "/ctl/cal/2"] {
            call(&seed_addr, |c| async move { c.set(slot, 0, b"").await })
                .map_err(|e| format!("open {slot}: {e}"))?;
        }
        wait_until("three members", Duration::from_secs(20), || {
            let cal = members(&seed_addr)?;
            (cal.len() == 3 && cal.iter().all(|id| !id.is_empty()))
                .then_some(())
                .ok_or_else(|| format!("/ctl/cal {cal:?}"))
        })?;
        Ok(())
    }

    /// Whether node `i`'s process has ended (reaped if so).
    pub fn exited(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => true,
            Some(Ok(None)) => false,
            Some(Err(_)) | None => false,
        }
    }

    /// The leader's node index, asked of the first node that answers.
    pub fn leader(&self) -> Option<usize> {
        for i in self.live() {
            let n = &self.nodes[i];
            if !n.is_up() || n.paused {
                continue;
            }
            let addr = n.addr.clone();
            let found = call(&addr, |c| async move {
                let (id, _) = c.get("/ctl/leader", None).await?;
                let id = String::from_utf8_lossy(&id).into_owned();
                let (a, _) = c.get(&format!("/ctl/node/{id}/addr"), None).await?;
                Ok(String::from_utf8_lossy(&a).into_owned())
            });
            if let Ok(leader_addr) = found {
                if let Some(j) = self.nodes.iter().position(|n| n.addr == leader_addr) {
                    return Some(j);
                }
            }
        }
        None
    }

    /// Node ids in `/ctl/cal/*` as node `i` sees it.
    pub fn cal_of(&self, i: usize) -> Result<Vec<String>, String> {
        members(&self.nodes[i].addr)
    }

    /// Node `i`'s id (SELF).
    pub fn id_of(&self, i: usize) -> Result<String, String> {
        let addr = self.nodes[i].addr.clone();
        call(&addr, |c| async move { c.self_id().await })
            .map(|id| String::from_utf8_lossy(&id).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        for ns in self.namespaces.drain(..) {
            let _ = ip(&["netns", "del", &ns]);
        }
        for link in self.links.drain(..).rev() {
            // A veth goes with its namespace; a failure here is expected.
            let _ = Command::new(ip_bin())
                .args(["link", "del", &link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `f` on a fresh connection to `addr`, all within 2 s.
pub fn call<T, F, Fut>(addr: &str, f: F) -> Result<T, String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, doozer::client::Error>>,
{
    async_std::task::block_on(async {
        let limit = Duration::from_secs(2);
        let c = Client::connect_timeout(addr, limit)
            .await
            .map_err(|e| e.to_string())?;
        let out = timeout(limit, f(c.clone())).await;
        c.close();
        match out {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("{addr}: no answer in {limit:?}")),
        }
    })
}

fn block_on_rev(addr: &str) -> Result<i64, String> {
    call(addr, |c| async move { c.rev().await })
}

/// The node's REV.
pub fn rev_of(addr: &str) -> Result<i64, String> {
    block_on_rev(addr)
}

fn members(addr: &str) -> Result<Vec<String>, String> {
    call(addr, |c| async move {
        let rev = c.rev().await?;
        let slots = c.getdir_all("/ctl/cal", rev).await?;
        let mut ids = Vec::new();
        for s in slots {
            let (b, _) = c.get(&format!("/ctl/cal/{s}"), Some(rev)).await?;
            ids.push(String::from_utf8_lossy(&b).into_owned());
        }
        Ok(ids)
    })
}

/// Polls `probe` every 100 ms until it succeeds or `limit` passes.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > limit => {
                return Err(format!("{what}: not within {limit:?}; last: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
