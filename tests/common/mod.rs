//! Helpers for end-to-end tests: real `doozerd` processes on loopback, each on
//! its own free port, killed when the test ends.
#![allow(dead_code)]

pub mod certs;
pub mod cut;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use doozer::codec::client::{encode_frame, Request, Response, Verb};
use prost::Message;

/// Polls `probe` every 50 ms until it yields a value or `limit` passes; then
/// panics with `what` and the last thing `probe` said.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > limit => {
                panic!("timed out after {limit:?} waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Starts `doozerd -l addr -w web <args>` with a clean environment plus
/// `env`, its output in `<dir>/<name>.log`; returns at once.
pub fn spawn_doozerd(
    name: &str,
    addr: &str,
    web: &str,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &std::path::Path,
) -> (Child, std::path::PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(DOOZERD);
    cmd.args(["-l", addr, "-w", web]).args(args);
    cmd.env_remove("DOOZER_RWSECRET")
        .env_remove("DOOZER_ROSECRET")
        .env_remove("DOOZER_BOOT_URI")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    (cmd.spawn().expect("doozerd starts"), log)
}

/// On a failing test (called from a `Drop`), prints each node's log tail
/// and where the logs are kept.
pub fn print_logs_if_panicking(nodes: &[Node], dir: &TempDir) {
    if !std::thread::panicking() {
        return;
    }
    for node in nodes {
        eprintln!(
            "----- {} {} (pid {}) log tail:\n{}",
            node.name,
            node.addr,
            node.pid(),
            node.log_tail(40)
        );
    }
    eprintln!("----- logs in {}", dir.path.display());
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub const DOOZERD: &str = env!("CARGO_BIN_EXE_doozerd");
pub const DOOZER: &str = env!("CARGO_BIN_EXE_doozer");

/// A free TCP address on a loopback IP of its own (127.0.0.x spreads tests
/// over addresses as a cluster would).
pub fn free_addr() -> String {
    let n = 2 + (std::process::id() as usize + rand_u8() as usize) % 200;
    let ip = format!("127.0.0.{n}");
    let listener = TcpListener::bind((ip.as_str(), 0)).unwrap();
    listener.local_addr().unwrap().to_string()
}

fn rand_u8() -> u8 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u8
}

/// A running `doozerd`, killed on drop.
pub struct Server {
    pub addr: String,
    pub child: Child,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let addr = free_addr();
        let mut cmd = Command::new(DOOZERD);
        cmd.args(["-l", &addr, "-w", "false"]).args(extra);
        cmd.env_remove("DOOZER_RWSECRET")
            .env_remove("DOOZER_ROSECRET")
            .env_remove("DOOZER_BOOT_URI")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("doozerd starts");
        let server = Server { addr, child };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = TcpStream::connect(&self.addr) {
                // Ready once it answers (a REV, or a refusal when secrets are set).
                conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                send(
                    &mut conn,
                    &Request {
                        tag: Some(0),
                        verb: Some(5),
                        ..Default::default()
                    },
                );
                if recv(&mut conn).is_some() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("doozerd on {} never became ready", self.addr);
    }

    pub fn uri(&self) -> String {
        format!("doozer:?ca={}", self.addr)
    }

    pub fn connect(&self) -> TcpStream {
        let conn = TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn
    }

    /// Runs the `doozer` CLI against this server with `stdin` as input.
    pub fn doozer(&self, args: &[&str], stdin: &[u8]) -> Output {
        doozer_with_env(&[("DOOZER_URI", &self.uri())], args, stdin)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI with a bounded run time.
pub fn doozer_with_env(env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(DOOZER);
    cmd.args(args)
        .env_remove("DOOZER_URI")
        .env_remove("DOOZER_BOOT_URI")
        .env_remove("DOOZER_TLS_CA")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("doozer starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("doozer {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = writer.join();
    child.wait_with_output().unwrap()
}

pub fn send(conn: &mut TcpStream, req: &Request) {
    conn.write_all(&encode_frame(req)).unwrap();
}

/// Reads one reply; `None` when the server closed the connection.
pub fn recv(conn: &mut TcpStream) -> Option<Response> {
    let mut header = [0u8; 4];
    conn.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    conn.read_exact(&mut body).ok()?;
    Some(Response::decode(body.as_slice()).expect("server frames decode"))
}

pub fn call(conn: &mut TcpStream, req: &Request) -> Response {
    send(conn, req);
    recv(conn).expect("a reply")
}

/// True when the server closes `conn` within a few seconds.
pub fn closed_by_server(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------
// Clusters of real processes: nodes on chosen loopback addresses, stopped,
// continued and killed by PID, each with its stderr in a log file.

/// A random loopback network `127.a.b.` of its own (all of 127.0.0.0/8 is
/// loopback), so parallel tests rarely share an IP; append a host number.
pub fn loopback_net() -> String {
    let a = 10 + rand_u8() % 240;
    let b = rand_u8();
    format!("127.{a}.{b}.")
}

/// A free `ip:port` on exactly `ip` (bind port 0, then let go).
pub fn free_addr_on(ip: &str) -> String {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A directory for one test's logs, removed when the test passes and kept
/// (its path printed) when it fails.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "doozer-test-{name}-{}-{nanos}-{}",
            std::process::id(),
            rand_u8()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// One `doozerd` process on a chosen address, its stderr in `log`; killed
/// (SIGKILL, also when stopped) on drop.
pub struct Node {
    pub name: String,
    pub addr: String,
    pub log: std::path::PathBuf,
    pub child: Child,
    killed: bool,
}

impl Node {
    /// Starts `doozerd -l addr -w false <args>` and returns at once (see
    /// `wait_answers`).
    pub fn spawn(name: &str, addr: &str, args: &[&str], dir: &std::path::Path) -> Node {
        Node::spawn_env(name, addr, args, &[], dir)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uri(&self) -> String {
        format!("doozer:?ca={}", self.addr)
    }

    /// Runs the `doozer` CLI against this node.
    pub fn doozer(&self, args: &[&str], stdin: &[u8]) -> Output {
        doozer_with_env(&[("DOOZER_URI", &self.uri())], args, stdin)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        !self.killed && self.child.try_wait().unwrap().is_none()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }

    /// `kill -STOP`: the process freezes, its sockets stay open. Returns
    /// once every thread of it is stopped: the kernel stops the threads one
    /// by one after `kill` returns (the one that takes the signal stops the
    /// others), and on a loaded machine a thread can still answer a request
    /// sent meanwhile.
    pub fn stop(&self) {
        self.signal("-STOP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(self.pid()) {
            assert!(
                Instant::now() < deadline,
                "doozerd {} did not stop within 10 s of SIGSTOP",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `kill -CONT`.
    pub fn cont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {} failed", self.pid());
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the node answers a REV on its client port.
    pub fn wait_answers(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                panic!(
                    "doozerd {} on {} exited: {:?}\n{}",
                    self.name,
                    self.addr,
                    self.child.try_wait(),
                    self.log_tail(30)
                );
            }
            let mut conn = TimedConn::new(&self.addr, Duration::from_secs(2));
            if conn.rev().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "doozerd {} on {} never answered\n{}",
            self.name,
            self.addr,
            self.log_tail(30)
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-request-at-a-time client connection with a per-request time limit:
/// connects lazily, and after any failure (time-out included, as a late reply
/// would confuse the next request) drops the connection to start afresh.
pub struct TimedConn {
    pub addr: String,
    pub limit: Duration,
    conn: Option<TcpStream>,
    tag: i32,
}

impl TimedConn {
    pub fn new(addr: &str, limit: Duration) -> TimedConn {
        TimedConn {
            addr: addr.to_string(),
            limit,
            conn: None,
            tag: 0,
        }
    }

    /// Sends `req` (with a fresh tag) and returns the reply, or why none came.
    /// A reply carrying an error code is returned as `Ok`.
    pub fn request(&mut self, mut req: Request) -> Result<Response, String> {
        let result = self.try_request(&mut req);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn try_request(&mut self, req: &mut Request) -> Result<Response, String> {
        if self.conn.is_none() {
            let sock: std::net::SocketAddr = self.addr.parse().unwrap();
            let conn = TcpStream::connect_timeout(&sock, self.limit)
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            conn.set_nodelay(true).unwrap();
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().unwrap();
        self.tag = self.tag.wrapping_add(1) & 0x7fff_ffff;
        req.tag = Some(self.tag);
        conn.set_write_timeout(Some(self.limit)).unwrap();
        conn.write_all(&encode_frame(req))
            .map_err(|e| format!("send to {}: {e}", self.addr))?;
        let deadline = Instant::now() + self.limit;
        let left = deadline.saturating_duration_since(Instant::now());
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut header = [0u8; 4];
        conn.read_exact(&mut header)
            .map_err(|e| format!("reply from {}: {e}", self.addr))?;
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        let left = deadline.saturating_duration_since(Instant::now());
        conn.set_read_timeout(Some(left.max(Duration::from_millis(200))))
            .unwrap();
        conn.read_exact(&mut body)
            .map_err(|e| format!("reply from {}: {e}", self.addr))?;
        let resp = Response::decode(body.as_slice())
            .map_err(|e| format!("bad reply from {}: {e}", self.addr))?;
        if resp.tag != Some(self.tag) {
            return Err(format!(
                "reply from {} tagged {:?}, expected {}",
                self.addr, resp.tag, self.tag
            ));
        }
        Ok(resp)
    }

    /// Like `request`, but an error code in the reply is an error too.
    pub fn ok(&mut self, req: Request) -> Result<Response, String> {
        let resp = self.request(req)?;
        match resp.err_code {
            None => Ok(resp),
            Some(code) => Err(format!(
                "{} answered error {code} {:?}",
                self.addr, resp.err_detail
            )),
        }
    }

    pub fn rev(&mut self) -> Result<i64, String> {
        let resp = self.ok(Request {
            verb: Some(Verb::Rev as i32),
            ..Default::default()
        })?;
        resp.rev.ok_or_else(|| "REV without a rev".to_string())
    }

    /// GET: `(body, rev)`; rev 0 for an absent file.
    pub fn get(&mut self, path: &str) -> Result<(Vec<u8>, i64), String> {
        let resp = self.ok(Request {
            verb: Some(Verb::Get as i32),
            path: Some(path.to_string()),
            ..Default::default()
        })?;
        Ok((resp.value.unwrap_or_default(), resp.rev.unwrap_or(0)))
    }

    /// SET: the new rev.
    pub fn set(&mut self, path: &str, rev: i64, body: &[u8]) -> Result<i64, String> {
        let resp = self.ok(Request {
            verb: Some(Verb::Set as i32),
            path: Some(path.to_string()),
            value: Some(body.to_vec()),
            rev: Some(rev),
            ..Default::default()
        })?;
        resp.rev.ok_or_else(|| "SET without a rev".to_string())
    }

    pub fn self_id(&mut self) -> Result<String, String> {
        let resp = self.ok(Request {
            verb: Some(Verb::SelfId as i32),
            ..Default::default()
        })?;
        Ok(String::from_utf8_lossy(&resp.value.unwrap_or_default()).into_owned())
    }

    /// The names in directory `path` (empty when it is absent or empty).
    /// Every file directly in `dir`: name → body as text.
    pub fn dir_bodies(
        &mut self,
        dir: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, String> {
        let mut files = std::collections::BTreeMap::new();
        for name in self.getdir(dir)? {
            let (body, _) = self.get(&format!("{dir}/{name}"))?;
            files.insert(name, text(&body));
        }
        Ok(files)
    }

    pub fn getdir(&mut self, path: &str) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        loop {
            let resp = self.request(Request {
                verb: Some(Verb::Getdir as i32),
                path: Some(path.to_string()),
                offset: Some(names.len() as i32),
                ..Default::default()
            })?;
            match resp.err_code {
                None => names.push(resp.path.unwrap_or_default()),
                // RANGE (past the end) or NOENT (no such directory).
                Some(8) | Some(22) => return Ok(names),
                Some(code) => {
                    return Err(format!(
                        "{} answered GETDIR {path} with error {code} {:?}",
                        self.addr, resp.err_detail
                    ))
                }
            }
        }
    }

    /// WAIT: the first event at or after `rev` on a path matching `glob`,
    /// as `(path, rev, flags, body)`.
    pub fn wait(&mut self, glob: &str, rev: i64) -> Result<(String, i64, i32, Vec<u8>), String> {
        let resp = self.ok(Request {
            verb: Some(Verb::Wait as i32),
            path: Some(glob.to_string()),
            rev: Some(rev),
            ..Default::default()
        })?;
        Ok((
            resp.path.unwrap_or_default(),
            resp.rev.unwrap_or(0),
            resp.flags.unwrap_or(0),
            resp.value.unwrap_or_default(),
        ))
    }
}

impl Node {
    /// Like `spawn`, with `env` added to the process's environment (set after
    /// the secrets and `DOOZER_BOOT_URI` are cleared, so it may set them).
    pub fn spawn_env(
        name: &str,
        addr: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &std::path::Path,
    ) -> Node {
        let (child, log) = spawn_doozerd(name, addr, "false", args, env, dir);
        Node {
            name: name.to_string(),
            addr: addr.to_string(),
            log,
            child,
            killed: false,
        }
    }

    /// Like `spawn_env`, with the web view on `web` (`-w web`).
    pub fn spawn_web(
        name: &str,
        addr: &str,
        web: &str,
        args: &[&str],
        dir: &std::path::Path,
    ) -> Node {
        let (child, log) = spawn_doozerd(name, addr, web, args, &[], dir);
        Node {
            name: name.to_string(),
            addr: addr.to_string(),
            log,
            child,
            killed: false,
        }
    }

    /// Waits until the node answers GET `path` with exactly `(body, rev)`.
    pub fn wait_value(&self, path: &str, body: &[u8], rev: i64, limit: Duration) {
        let name = &self.name;
        wait_for(&format!("{path} at rev {rev} on {name}"), limit, || {
            let (got, got_rev) = TimedConn::new(&self.addr, Duration::from_secs(5)).get(path)?;
            if got_rev == rev && got == body {
                Ok(())
            } else {
                Err(format!("rev {got_rev}, {:?}", text(&got)))
            }
        });
    }

    /// Waits up to `limit` for the process to exit; its status, or `None`
    /// when it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/<pid>/task/<tid>/stat`: the field after the command's closing
/// parenthesis).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T")
    })
}
