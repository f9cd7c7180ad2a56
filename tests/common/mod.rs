//! Helpers for end-to-end tests: real `doozerd` processes on loopback, each on
//! its own free port, killed when the test ends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use doozer::codec::client::{encode_frame, Request, Response};
use prost::Message;

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
            .env_remove("DOOZER_BOOT_URI");
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
