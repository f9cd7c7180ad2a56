//! Headless Chromium (Debian's `chromium`) driven over the DevTools
//! protocol: a minimal WebSocket client (RFC 6455, client side, text
//! frames) and the few commands the tests need: navigate, evaluate,
//! screenshot.
//!
//! Chromium is started with `--remote-debugging-port=0` and a fresh profile
//! directory; it writes the port it chose to `DevToolsActivePort` there. It
//! is killed, and the profile removed, on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::base64_decode;

/// Where the browser is; `DOOZER_CHROMIUM` overrides.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("DOOZER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket,
    next_id: u64,
}

impl Browser {
    /// Starts headless Chromium with an empty page and attaches to that page.
    pub fn launch() -> Browser {
        let bin = chromium_path();
        assert!(
            bin.exists(),
            "{} is missing: the web view's browser tests need Debian's chromium \
             (apt-get install -y chromium; .ci/run installs it), or set DOOZER_CHROMIUM",
            bin.display()
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let profile =
            std::env::temp_dir().join(format!("doozer-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromium.log")).unwrap();
        let child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut browser = BrowserGuard {
            child: Some(child),
            profile: profile.clone(),
        };
        let port = wait_port(&profile, &mut browser);
        let ws_url = page_target(port, &profile);
        let ws = WebSocket::connect(&ws_url);
        let child = browser.child.take().unwrap();
        let mut b = Browser {
            child,
            profile,
            ws,
            next_id: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends one command and returns its `result` (panics on an error).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send_text(&msg.to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "{method}: no answer from chromium"
            );
            let text = self.ws.recv_text(deadline);
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in the page.
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(err) = r.get("errorText") {
            panic!("navigating to {url}: {err}");
        }
    }

    /// The value of a JavaScript expression in the page (JSON-able values).
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` every 20 ms until it is truthy; the time it took.
    pub fn wait_until(&mut self, what: &str, expr: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.eval(&format!(
                "(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()"
            ));
            if v == Value::Bool(true) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "timed out after {limit:?} waiting for {what} ({expr}); the page says:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Saves a PNG of the whole page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask it to close (its helper processes go with it), then make sure.
        self.ws
            .try_send_text(r#"{"id":0,"method":"Browser.close"}"#);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("----- chromium log tail:");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        remove_profile(&self.profile);
    }
}

/// Removes a profile directory, retrying while exiting helper processes may
/// still write into it.
fn remove_profile(dir: &Path) {
    for _ in 0..50 {
        if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills a half-started browser if launching fails.
struct BrowserGuard {
    child: Option<Child>,
    profile: PathBuf,
}

impl Drop for BrowserGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let log =
                std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
            eprintln!("----- chromium did not start; its log:\n{log}");
            remove_profile(&self.profile);
        }
    }
}

fn wait_port(profile: &Path, browser: &mut BrowserGuard) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return port;
            }
        }
        if let Some(child) = browser.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromium exited at start: {status}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromium never opened its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The WebSocket URL of the browser's page.
fn page_target(port: u16, _profile: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(res) = super::get(&format!("127.0.0.1:{port}"), "/json/list", &[]) {
            if res.status == 200 {
                let list: Value = serde_json::from_slice(&res.body).unwrap_or(Value::Null);
                if let Some(page) = list
                    .as_array()
                    .and_then(|l| l.iter().find(|t| t["type"] == "page"))
                {
                    return page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "chromium shows no page target");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client WebSocket: text messages only, enough for DevTools.
struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    fn connect(url: &str) -> WebSocket {
        let rest = url.strip_prefix("ws://").expect("a ws:// url");
        let (host, path) = rest.split_once('/').unwrap();
        let mut stream = TcpStream::connect(host).unwrap();
        stream.set_nodelay(true).unwrap();
        let req = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        // Read the handshake answer byte by byte up to the blank line, so no
        // frame bytes are consumed.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("websocket handshake");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket refused: {head}"
        );
        WebSocket { stream }
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 65536 {
            frame.push(0x80 | 126);
            frame.extend((len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend((len as u64).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes());
    }

    /// Sends a short text message, ignoring failure (for shutting down).
    fn try_send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        assert!(payload.len() < 126);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend(mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let _ = self.stream.write_all(&frame);
    }

    /// The next whole text message (answers pings, joins fragments).
    fn recv_text(&mut self, deadline: Instant) -> String {
        let mut message = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no message from chromium in time");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut head = [0u8; 2];
            self.stream
                .read_exact(&mut head)
                .expect("a frame from chromium");
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            match opcode {
                0x0..=0x2 => {
                    message.extend(payload);
                    if fin {
                        return String::from_utf8(message).unwrap();
                    }
                }
                0x8 => panic!("chromium closed the DevTools connection"),
                0x9 => self.send_frame(0xA, &payload),
                _ => {}
            }
        }
    }
}
