//! Helpers for the web view's tests: `doozerd` processes with the web view
//! on, a tiny blocking HTTP/1.1 client, a Server-Sent Events reader, and
//! headless Chromium driven over the DevTools protocol ([`cdp`]).
#![allow(dead_code)]

pub mod cdp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::{doozer_with_env, free_addr_on, spawn_doozerd};

/// A `doozerd` with its web view on, killed (SIGKILL) on drop; its log goes
/// to `log`, whose tail a failing test prints.
pub struct WebNode {
    pub name: String,
    pub addr: String,
    pub web: String,
    pub log: std::path::PathBuf,
    child: Child,
}

impl WebNode {
    /// `doozerd -l <ip>:<free> -w <ip>:<free> <args>` with `env` (secrets
    /// are removed unless given); returns once the web view answers.
    pub fn start(name: &str, ip: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> WebNode {
        let node = WebNode::spawn(name, ip, args, env, dir, true);
        node.wait_web(Duration::from_secs(15));
        node
    }

    /// Like `start`, with the web view on or off, without waiting.
    pub fn spawn(
        name: &str,
        ip: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        web: bool,
    ) -> WebNode {
        let addr = free_addr_on(ip);
        let web_addr = if web {
            free_addr_on(ip)
        } else {
            "false".to_string()
        };
        WebNode::spawn_at(name, &addr, &web_addr, args, env, dir)
    }

    /// `doozerd -l addr -w web <args>`, without waiting.
    pub fn spawn_at(
        name: &str,
        addr: &str,
        web: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> WebNode {
        let (child, log) = spawn_doozerd(name, addr, web, args, env, dir);
        WebNode {
            name: name.to_string(),
            addr: addr.to_string(),
            web: web.to_string(),
            log,
            child,
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.web)
    }

    pub fn uri(&self) -> String {
        format!("doozer:?ca={}", self.addr)
    }

    /// Runs the `doozer` CLI against this node; panics unless it succeeds.
    pub fn doozer(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = doozer_with_env(&[("DOOZER_URI", &self.uri())], args, stdin);
        assert!(
            out.status.success(),
            "doozer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `doozer set PATH -1` with `body`; the new rev.
    pub fn set(&self, path: &str, body: &[u8]) -> i64 {
        self.doozer(&["set", path, "-1"], body)
            .trim()
            .parse()
            .unwrap()
    }

    pub fn wait_web(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(res) = get(&self.web, "/healthz", &[]) {
                if res.status == 200 || res.status == 401 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!(
            "the web view of {} on {} never answered\n{}",
            self.name,
            self.web,
            self.log_tail(30)
        );
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WebNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} ({}, web {}) log tail:\n{}",
                self.name,
                self.addr,
                self.web,
                self.log_tail(30)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<BufReader<TcpStream>> {
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    (&stream).write_all(req.as_bytes())?;
    Ok(BufReader::new(stream))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut size = String::new();
    if reader.read_line(&mut size)? == 0 {
        return Ok(None);
    }
    let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
    if n == 0 {
        return Ok(None);
    }
    let mut buf = vec![0; n + 2];
    reader.read_exact(&mut buf)?;
    buf.truncate(n);
    Ok(Some(buf))
}

/// `GET path` with `headers`; the whole answer.
pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    let mut reader = open(addr, path, headers)?;
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend(chunk);
        }
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// `get`, panicking on a transport error.
pub fn fetch(addr: &str, path: &str) -> HttpResponse {
    get(addr, path, &[]).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub name: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// An open event stream.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Sse {
    pub fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut reader =
            open(addr, path, headers).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
        let (status, headers) = read_head(&mut reader).unwrap();
        Sse {
            status,
            headers,
            reader,
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when `limit` passes or the stream ends.
    pub fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..at + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut ev = SseEvent {
                    name: "message".into(),
                    id: None,
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.name = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match read_chunk(&mut self.reader) {
                Ok(Some(chunk)) => self.buf.extend(chunk),
                _ => return None,
            }
        }
    }

    /// The next event that is not a `ping`.
    pub fn next_change(&mut self, limit: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next(left)?;
            if ev.name != "ping" {
                return Some(ev);
            }
        }
    }
}

pub use crate::common::wait_for;

/// Standard base64 (with or without padding) to bytes.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Where screenshots go: `target/tmp/web-screenshots`.
pub fn screenshot_dir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
