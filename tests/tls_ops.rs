//! TLS in operation, end to end with real `doozerd` processes and
//! certificates made at run time (`common::certs`): the HTTPS web view and
//! its `/metrics`, certificate rotation without a restart (file change,
//! SIGHUP, broken files, a new CA), and hostile bytes on the TLS ports
//! (garbage, huge record headers, truncated and stalled handshakes).
//!
//! Loopback block: 127.0.64.x (web view), 127.0.65.x (rotation), 127.0.66.x
//! (hostile input).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcp;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::certs::{CertFiles, TestCa};
use common::{free_addr_on, spawn_doozerd, wait_for, TempDir};
use doozer::client::Client;
use doozer::runtime::conn::Conn;
use doozer::runtime::rt;
use doozer::tls::ClientTls;
use futures::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Helpers.

/// A `doozerd` with TLS on and its web view at `web`; SIGKILLed on drop.
struct TlsNode {
    addr: String,
    web: String,
    log: PathBuf,
    child: Child,
}

impl TlsNode {
    /// Starts `doozerd -l ip:port -w ip:port <cert args> <extra>` and waits
    /// until it answers a REV over TLS (trusting `ca`).
    fn start(ip: &str, cert: &CertFiles, ca: &ClientTls, extra: &[&str], dir: &Path) -> TlsNode {
        let node = TlsNode::spawn(ip, cert, extra, dir);
        node.wait_ready(ca);
        node
    }

    fn spawn(ip: &str, cert: &CertFiles, extra: &[&str], dir: &Path) -> TlsNode {
        let addr = free_addr_on(ip);
        let web = free_addr_on(ip);
        let mut args: Vec<String> = cert.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("node-{}", addr.replace([':', '.'], "-"));
        let (child, log) = spawn_doozerd(&name, &addr, &web, &args, &[], dir);
        TlsNode {
            addr,
            web,
            log,
            child,
        }
    }

    fn wait_ready(&self, ca: &ClientTls) {
        wait_for(
            &format!("{} to answer over TLS", self.addr),
            Duration::from_secs(15),
            || {
                if let Ok(text) = std::fs::read_to_string(&self.log) {
                    if text.contains("panicked") {
                        return Ok(());
                    }
                }
                tls_rev(&self.addr, ca).map(|_| ())
            },
        );
        assert!(!self.log_text().contains("panicked"), "{}", self.log_text());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "----- {} log tail:\n{}",
                self.addr,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One REV over a fresh TLS connection, within 5 s.
fn tls_rev(addr: &str, tls: &ClientTls) -> Result<i64, String> {
    rt::block_on(rt::timeout(Duration::from_secs(5), async {
        let client = Client::connect_with(addr, Some(tls))
            .await
            .map_err(|e| e.to_string())?;
        let rev = client.rev().await.map_err(|e| e.to_string());
        client.close();
        rev
    }))
    .unwrap_or_else(|| Err("no answer within 5 s".to_string()))
}

/// SET over a fresh TLS connection; the new rev.
fn tls_set(addr: &str, tls: &ClientTls, path: &str, body: &[u8]) -> Result<i64, String> {
    rt::block_on(rt::timeout(Duration::from_secs(5), async {
        let client = Client::connect_with(addr, Some(tls))
            .await
            .map_err(|e| e.to_string())?;
        let rev = client.set(path, -1, body).await.map_err(|e| e.to_string());
        client.close();
        rev
    }))
    .unwrap_or_else(|| Err("no answer within 5 s".to_string()))
}

/// GET over a fresh TLS connection: (body, rev).
fn tls_get(addr: &str, tls: &ClientTls, path: &str) -> Result<(Vec<u8>, i64), String> {
    rt::block_on(rt::timeout(Duration::from_secs(5), async {
        let client = Client::connect_with(addr, Some(tls))
            .await
            .map_err(|e| e.to_string())?;
        let got = client.get(path, None).await.map_err(|e| e.to_string());
        client.close();
        got
    }))
    .unwrap_or_else(|| Err("no answer within 5 s".to_string()))
}

/// An HTTP response: status and body.
#[derive(Debug)]
struct Http {
    status: u16,
    body: String,
}

/// Parses a whole HTTP/1.1 response (read to EOF), chunked or not.
fn parse_http(raw: &[u8]) -> Result<Http, String> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n").ok_or("bad chunk")?;
            let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        body.to_string()
    };
    Ok(Http { status, body })
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: doozer\r\nConnection: close\r\n\r\n")
}

/// An HTTPS GET, trusting `tls`, within 10 s.
fn https_get(addr: &str, tls: &ClientTls, path: &str) -> Result<Http, String> {
    let raw = rt::block_on(rt::timeout(Duration::from_secs(10), async {
        let tcp = rt::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let conn = Conn::connect_tls(tcp, addr, tls).await?;
        let mut stream = &conn;
        stream
            .write_all(request(path).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(raw)
    }))
    .unwrap_or_else(|| Err("no answer within 10 s".to_string()))?;
    parse_http(&raw)
}

/// A plain HTTP GET within 10 s.
fn http_get(addr: &str, path: &str) -> Result<Http, String> {
    let mut conn = StdTcp::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request(path).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_http(&raw)
}

/// One metric's value from `/metrics` text.
fn metric(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

/// `/metrics` over HTTPS trusting `tls`, or over plain HTTP when `None`.
fn metrics(web: &str, tls: Option<&ClientTls>) -> Result<String, String> {
    let res = match tls {
        Some(tls) => https_get(web, tls, "/metrics")?,
        None => http_get(web, "/metrics")?,
    };
    if res.status != 200 {
        return Err(format!("/metrics answered {}: {}", res.status, res.body));
    }
    Ok(res.body)
}

/// Seconds since the epoch of midnight UTC on a date (civil calendar).
fn epoch_of(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Replaces a file as operators do: write a new one, rename it over.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Puts a new certificate and key in place of `files` (key first, so the
/// pair is mismatched for as short a time as possible).
fn rotate(files: &CertFiles, cert_pem: &str, key_pem: &str) {
    replace(&files.key, key_pem.as_bytes());
    replace(&files.cert, cert_pem.as_bytes());
}

/// A client that trusts exactly the certificate in `pem` (so a connection
/// through it proves which certificate a port serves).
fn pinned(pem: &str) -> ClientTls {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    ClientTls::pinned(vec![der])
}

// ---------------------------------------------------------------------------
// 1. The web view over HTTPS.

#[test]
fn epoch_dates_match_the_loader() {
    assert_eq!(epoch_of(2040, 1, 1), 2_208_988_800);
    assert_eq!(epoch_of(1970, 1, 1), 0);
}

/// The web view serves HTTPS with the node's certificate, its pages that
/// read the tree work (it dials its own node over TLS), `/metrics` shows
/// the certificate's expiry, and plain HTTP on the HTTPS port is closed. With
/// `--web-http` the web view answers plain HTTP while the -l port is TLS.
#[test]
fn web_view_serves_https_with_the_node_certificate() {
    let dir = TempDir::new("tls-web");
    let ca = TestCa::new("tls-ops web CA");
    let ca_file = ca.write(&dir.path, "ca.pem");
    let trust = ClientTls::from_ca_file(&ca_file).unwrap();
    let https_cert = ca.issue_files_until(&dir.path, "https", &["127.0.64.1"], Some((2031, 6, 15)));
    let http_cert = ca.issue_files(&dir.path, "http", &["127.0.64.2"]);
    let https = TlsNode::spawn("127.0.64.1", &https_cert, &[], &dir.path);
    let http = TlsNode::spawn("127.0.64.2", &http_cert, &["--web-http"], &dir.path);
    https.wait_ready(&trust);
    http.wait_ready(&trust);

    // HTTPS: /metrics, the page, and the API that reads the tree.
    let rev = tls_set(&https.addr, &trust, "/t/a", b"over tls").unwrap();
    let body = wait_for("/metrics over HTTPS", Duration::from_secs(10), || {
        metrics(&https.web, Some(&trust))
    });
    assert_eq!(metric(&body, "doozer_tls_enabled"), Some(1), "{body}");
    let expiry = epoch_of(2031, 6, 15);
    assert_eq!(
        metric(&body, "doozer_tls_cert_not_after_seconds"),
        Some(expiry),
        "{body}"
    );
    let left = metric(&body, "doozer_tls_cert_expires_in_seconds").unwrap();
    assert!(
        (left - (expiry - now_secs())).abs() < 120,
        "expires in {left}"
    );
    assert_eq!(metric(&body, "doozer_tls_reloads_total"), Some(0));
    let page = https_get(&https.web, &trust, "/").unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("<html") || page.body.contains("<!"),
        "{page:?}"
    );
    let file = wait_for("/api/file over HTTPS", Duration::from_secs(10), || {
        let res = https_get(&https.web, &trust, "/api/file?path=/t/a")?;
        if res.status == 200 {
            Ok(res)
        } else {
            Err(format!("{res:?}"))
        }
    });
    assert!(file.body.contains("over tls"), "{file:?}");
    assert!(file.body.contains(&format!("\"rev\":{rev}")), "{file:?}");
    let tree = https_get(&https.web, &trust, "/api/tree?path=/t").unwrap();
    assert_eq!(tree.status, 200, "{tree:?}");
    assert!(tree.body.contains("/t/a"), "{tree:?}");

    // Plain HTTP to the HTTPS port: a plain 400 that says to use https,
    // then closed, promptly.
    let start = Instant::now();
    let mut plain = StdTcp::connect(&https.web).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    plain.write_all(request("/metrics").as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let answer = parse_http(&got).unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.body.contains("use https://"), "{answer:?}");
    // Garbage that is neither: closed without an answer.
    let mut junk = StdTcp::connect(&https.web).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    junk.write_all(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06])
        .unwrap();
    let mut got = Vec::new();
    let _ = junk.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/"), "{:?}", common::text(&got));
    // The node is fine after that.
    assert_eq!(
        https_get(&https.web, &trust, "/healthz").unwrap().status,
        200
    );

    // --web-http: plain HTTP, TLS on the -l port, the tree read over TLS.
    let rev = tls_set(&http.addr, &trust, "/t/b", b"plain web").unwrap();
    let body = wait_for("/metrics over HTTP", Duration::from_secs(10), || {
        metrics(&http.web, None)
    });
    assert_eq!(metric(&body, "doozer_tls_enabled"), Some(1), "{body}");
    let file = wait_for("/api/file over HTTP", Duration::from_secs(10), || {
        let res = http_get(&http.web, "/api/file?path=/t/b")?;
        if res.status == 200 {
            Ok(res)
        } else {
            Err(format!("{res:?}"))
        }
    });
    assert!(file.body.contains("plain web"), "{file:?}");
    assert!(file.body.contains(&format!("\"rev\":{rev}")), "{file:?}");
    // HTTPS to the plain web port fails (it answers in plain text).
    assert!(https_get(&http.web, &trust, "/metrics").is_err());
    for node in [&https, &http] {
        assert!(!node.log_text().contains("panicked"), "{}", node.log_text());
    }
}

// ---------------------------------------------------------------------------
// 2. Rotation.

/// Waits until `/metrics` on `web` satisfies `ok`; the text.
fn wait_metrics(
    what: &str,
    web: &str,
    tls: Option<&ClientTls>,
    limit: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    wait_for(what, limit, || {
        let body = metrics(web, tls)?;
        if ok(&body) {
            Ok(body)
        } else {
            Err(body
                .lines()
                .filter(|l| l.starts_with("doozer_tls"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    })
}

/// A new certificate is served after the files change (within the 1 s
/// poll) and after SIGHUP; a broken one is refused and the old one stays;
/// an open connection lives through all of it.
#[test]
fn certificates_rotate_without_a_restart() {
    let dir = TempDir::new("tls-rotate");
    let ca = TestCa::new("tls-ops rotation CA");
    let ca_file = ca.write(&dir.path, "ca.pem");
    let trust = ClientTls::from_ca_file(&ca_file).unwrap();
    let ip = "127.0.65.1";
    let files = ca.issue_files_until(&dir.path, "node", &[ip], Some((2031, 1, 1)));
    let node = TlsNode::start(ip, &files, &trust, &[], &dir.path);
    let kept = rt::block_on(Client::connect_with(&node.addr, Some(&trust))).unwrap();
    let r0 = rt::block_on(kept.set("/kept", -1, b"0")).unwrap();
    let body = wait_metrics(
        "metrics",
        &node.web,
        Some(&trust),
        Duration::from_secs(10),
        |_| true,
    );
    assert_eq!(
        metric(&body, "doozer_tls_cert_not_after_seconds"),
        Some(epoch_of(2031, 1, 1))
    );

    // (a) Files rewritten: the watcher reloads within a few seconds.
    let (cert_a, key_a) = ca.issue(&[ip], Some((2032, 2, 2)));
    let changed = Instant::now();
    rotate(&files, &cert_a, &key_a);
    let body = wait_metrics(
        "the rotated certificate in /metrics",
        &node.web,
        Some(&trust),
        Duration::from_secs(6),
        |m| metric(m, "doozer_tls_cert_not_after_seconds") == Some(epoch_of(2032, 2, 2)),
    );
    assert!(changed.elapsed() < Duration::from_secs(5));
    assert!(metric(&body, "doozer_tls_reloads_total").unwrap() >= 1);
    // New connections get the new certificate, on both ports.
    let only_a = pinned(&cert_a);
    tls_rev(&node.addr, &only_a).unwrap();
    assert_eq!(
        https_get(&node.web, &only_a, "/healthz").unwrap().status,
        200
    );
    tls_rev(&node.addr, &trust).unwrap();
    // The open connection still works.
    let r1 = rt::block_on(kept.set("/kept", -1, b"1")).unwrap();
    assert!(r1 > r0);

    // (b) SIGHUP. The new files have the old files' lengths, inodes and
    // modification times where possible, so the watcher's poll does not see
    // them and the signal is what reloads.
    let old_len = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
    let (cert_b, key_b) = (0..200)
        .map(|_| ca.issue(&[ip], Some((2033, 3, 3))))
        .find(|(c, k)| c.len() == old_len(&files.cert) && k.len() == old_len(&files.key))
        .expect("a certificate and key of the same lengths");
    for (path, pem) in [(&files.key, &key_b), (&files.cert, &cert_b)] {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.write_all(pem.as_bytes()).unwrap();
        file.set_modified(mtime).unwrap();
    }
    // The watcher does not see that change...
    std::thread::sleep(Duration::from_millis(2500));
    let body = metrics(&node.web, Some(&trust)).unwrap();
    assert_eq!(
        metric(&body, "doozer_tls_cert_not_after_seconds"),
        Some(epoch_of(2032, 2, 2)),
        "{body}"
    );
    // ...SIGHUP makes it reload. Only the pid this test spawned.
    assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) }, 0);
    wait_metrics(
        "the certificate loaded on SIGHUP",
        &node.web,
        Some(&trust),
        Duration::from_secs(5),
        |m| metric(m, "doozer_tls_cert_not_after_seconds") == Some(epoch_of(2033, 3, 3)),
    );
    assert!(
        node.log_text().contains("SIGHUP"),
        "no SIGHUP line in the log"
    );
    let only_b = pinned(&cert_b);
    tls_rev(&node.addr, &only_b).unwrap();
    let r2 = rt::block_on(kept.set("/kept", -1, b"2")).unwrap();
    assert!(r2 > r1);

    // (c) Broken files: garbage, then a key that is not the certificate's.
    // Each is one failure; the served certificate stays.
    let failures0 = metric(
        &metrics(&node.web, Some(&trust)).unwrap(),
        "doozer_tls_reload_failures_total",
    )
    .unwrap();
    replace(&files.cert, b"this is not a certificate\n");
    let body = wait_metrics(
        "a reload failure for a garbage certificate",
        &node.web,
        Some(&trust),
        Duration::from_secs(5),
        |m| metric(m, "doozer_tls_reload_failures_total") >= Some(failures0 + 1),
    );
    assert_eq!(
        metric(&body, "doozer_tls_cert_not_after_seconds"),
        Some(epoch_of(2033, 3, 3))
    );
    let failures1 = metric(&body, "doozer_tls_reload_failures_total").unwrap();
    tls_rev(&node.addr, &only_b).unwrap();
    tls_rev(&node.addr, &trust).unwrap();
    let (cert_c, _) = ca.issue(&[ip], Some((2034, 4, 4)));
    let (_, other_key) = ca.issue(&[ip], None);
    replace(&files.key, other_key.as_bytes());
    replace(&files.cert, cert_c.as_bytes());
    wait_metrics(
        "a reload failure for a mismatched key",
        &node.web,
        Some(&trust),
        Duration::from_secs(5),
        |m| metric(m, "doozer_tls_reload_failures_total") > Some(failures1),
    );
    // Settle past a poll so no reload is half done, then look again.
    std::thread::sleep(Duration::from_millis(1200));
    let body = metrics(&node.web, Some(&trust)).unwrap();
    assert_eq!(
        metric(&body, "doozer_tls_cert_not_after_seconds"),
        Some(epoch_of(2033, 3, 3)),
        "{body}"
    );
    tls_rev(&node.addr, &only_b).unwrap();
    assert_eq!(
        https_get(&node.web, &only_b, "/healthz").unwrap().status,
        200
    );
    let text = node.log_text();
    assert!(text.contains("reload failed"), "{text}");
    assert!(text.contains("do not belong together"), "{text}");
    let r3 = rt::block_on(kept.set("/kept", -1, b"3")).unwrap();
    assert!(r3 > r2);
    kept.close();
    assert!(!text.contains("panicked"), "{text}");
}

/// Moving a cluster to a new CA: first every node trusts both CAs (a
/// bundle), then every node gets a certificate the new CA signed. The seed
/// and its slave stay linked throughout, and a node that knows only the new
/// CA joins afterwards.
#[test]
fn rotation_to_a_new_ca_keeps_a_cluster_linked() {
    let dir = TempDir::new("tls-newca");
    let old_ca = TestCa::new("tls-ops old CA");
    let new_ca = TestCa::new("tls-ops new CA");
    let bundle = format!("{}{}", old_ca.pem, new_ca.pem);
    let old_trust = ClientTls::from_ca_file(&old_ca.write(&dir.path, "old-ca.pem")).unwrap();
    let new_ca_file = new_ca.write(&dir.path, "new-ca.pem");
    let new_trust = ClientTls::from_ca_file(&new_ca_file).unwrap();
    let bundle_file = dir.path.join("bundle.pem");
    std::fs::write(&bundle_file, &bundle).unwrap();
    let both = ClientTls::from_ca_file(&bundle_file).unwrap();

    let (seed_ip, slave_ip, late_ip) = ("127.0.65.10", "127.0.65.11", "127.0.65.12");
    let seed_ca = old_ca.write(&dir.path, "seed-ca.pem");
    let slave_ca = old_ca.write(&dir.path, "slave-ca.pem");
    let seed_files = old_ca.issue_files(&dir.path, "seed", &[seed_ip]);
    let slave_files = old_ca.issue_files(&dir.path, "slave", &[slave_ip]);
    let ca_arg = |p: &Path| p.display().to_string();
    let seed_ca_arg = ca_arg(&seed_ca);
    let seed = TlsNode::start(
        seed_ip,
        &seed_files,
        &old_trust,
        &["--tls-ca", &seed_ca_arg, "--web-http"],
        &dir.path,
    );
    let slave_ca_arg = ca_arg(&slave_ca);
    let slave = TlsNode::start(
        slave_ip,
        &slave_files,
        &old_trust,
        &["--tls-ca", &slave_ca_arg, "--web-http", "-a", &seed.addr],
        &dir.path,
    );
    let linked = |what: &str, trust: &ClientTls, nodes: &[&TlsNode], body: &[u8]| {
        let rev = tls_set(&seed.addr, trust, "/linked", body).unwrap();
        for node in nodes {
            wait_for(
                &format!("{what}: the write on {}", node.addr),
                Duration::from_secs(15),
                || match tls_get(&node.addr, trust, "/linked")? {
                    (got, r) if r >= rev && got == body => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
    };
    linked("before", &old_trust, &[&slave], b"before");

    // Step 1: every node trusts both CAs.
    for file in [&seed_ca, &slave_ca] {
        replace(file, bundle.as_bytes());
    }
    for node in [&seed, &slave] {
        wait_metrics(
            "the bundle loaded",
            &node.web,
            None,
            Duration::from_secs(6),
            |m| metric(m, "doozer_tls_reloads_total") >= Some(1),
        );
    }
    linked("with the bundle", &old_trust, &[&slave], b"bundle");

    // Step 2: every node gets a certificate the new CA signed.
    for (files, ip) in [(&seed_files, seed_ip), (&slave_files, slave_ip)] {
        let (cert, key) = new_ca.issue(&[ip], Some((2035, 5, 5)));
        rotate(files, &cert, &key);
    }
    for node in [&seed, &slave] {
        wait_metrics(
            "the new CA's certificate loaded",
            &node.web,
            None,
            Duration::from_secs(6),
            |m| metric(m, "doozer_tls_cert_not_after_seconds") == Some(epoch_of(2035, 5, 5)),
        );
    }
    // Clients that trust only the new CA get in; the old links carry on.
    tls_rev(&seed.addr, &new_trust).unwrap();
    tls_rev(&slave.addr, &new_trust).unwrap();
    assert!(tls_rev(&seed.addr, &old_trust).is_err());
    linked("after rotation", &new_trust, &[&slave], b"after");

    // A node that knows only the new CA attaches: new links both ways, each
    // side showing its rotated certificate.
    let late_files = new_ca.issue_files(&dir.path, "late", &[late_ip]);
    let new_ca_arg = ca_arg(&new_ca_file);
    let late = TlsNode::start(
        late_ip,
        &late_files,
        &new_trust,
        &["--tls-ca", &new_ca_arg, "--web-http", "-a", &seed.addr],
        &dir.path,
    );
    linked("with a new node", &both, &[&slave, &late], b"late");
    for node in [&seed, &slave, &late] {
        assert!(!node.log_text().contains("panicked"), "{}", node.log_text());
    }
}

// ---------------------------------------------------------------------------
// 3. Hostile bytes on the TLS ports.

/// Sends `bytes` on a new connection to `addr`, then waits (at most
/// `limit`) for the other end to close; how long that took, or `None` when
/// it did not close.
fn closed_after(addr: &str, bytes: &[u8], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut conn = StdTcp::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = conn.write_all(bytes);
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// The first bytes of a real ClientHello for `addr`.
fn client_hello(addr: &str, tls: &ClientTls) -> Vec<u8> {
    let name = doozer::tls::server_name(addr).unwrap();
    let mut conn = rustls::ClientConnection::new(tls.config(), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100 && out[0] == 0x16, "{out:?}");
    out
}

/// Random bytes (xorshift; the seed need not be secret).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Garbage, record headers announcing more than will come, truncated
/// ClientHellos and hundreds of one-byte stalls on the -l port and the
/// HTTPS web port: bad bytes are closed at once, stalls at the handshake
/// timeout; the node keeps answering, its memory stays flat, it does not
/// panic, and its log does not grow a line per failure.
#[test]
fn hostile_bytes_on_tls_ports() {
    let dir = TempDir::new("tls-hostile");
    let ca = TestCa::new("tls-ops hostile CA");
    let ca_file = ca.write(&dir.path, "ca.pem");
    let trust = ClientTls::from_ca_file(&ca_file).unwrap();
    let ip = "127.0.66.1";
    let files = ca.issue_files(&dir.path, "node", &[ip]);
    let node = TlsNode::start(ip, &files, &trust, &[], &dir.path);
    wait_metrics(
        "metrics",
        &node.web,
        Some(&trust),
        Duration::from_secs(10),
        |_| true,
    );
    let rss0 = node.rss_kib();
    let log_lines0 = node.log_text().lines().count();
    let hello = client_hello(&node.addr, &trust);

    const STALLS: usize = 200;
    let started = Instant::now();
    let mut quick = Vec::new();
    let mut slow = Vec::new();
    for port in [node.addr.clone(), node.web.clone()] {
        // Closed at once: garbage, a record over the 16 KiB + slack rustls
        // takes, a ClientHello followed by garbage.
        for (i, bytes) in [
            garbage(1, 64 * 1024),
            garbage(2, 3),
            vec![0x16, 0x03, 0x01, 0xff, 0xff],
            [hello.clone(), garbage(3, 4096)].concat(),
        ]
        .into_iter()
        .enumerate()
        {
            let port = port.clone();
            quick.push(std::thread::spawn(move || {
                (
                    format!("{port} case {i}"),
                    closed_after(&port, &bytes, Duration::from_secs(15)),
                )
            }));
        }
        // Closed at the handshake timeout: a header announcing a full
        // record, a truncated ClientHello, one byte; then silence.
        let stalls = if port == node.addr { STALLS } else { 50 };
        for i in 0..stalls + 3 {
            let bytes = match i {
                0 => vec![0x16, 0x03, 0x01, 0x40, 0x00],
                1 => hello[..hello.len() / 2].to_vec(),
                2 => Vec::new(),
                _ => vec![0x16],
            };
            let port = port.clone();
            slow.push(std::thread::spawn(move || {
                (
                    format!("{port} stall {i}"),
                    closed_after(&port, &bytes, Duration::from_secs(16)),
                )
            }));
        }
    }
    // While the stalls are held: the node answers, on both ports.
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    tls_rev(&node.addr, &trust).unwrap();
    let body = metrics(&node.web, Some(&trust)).unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        asked.elapsed()
    );
    let rss_held = node.rss_kib();
    for handle in quick {
        let (what, closed) = handle.join().unwrap();
        let took = closed.unwrap_or_else(|| panic!("{what}: never closed"));
        assert!(
            took < Duration::from_secs(5),
            "{what}: closed after {took:?}"
        );
    }
    let mut latest = Duration::ZERO;
    for handle in slow {
        let (what, closed) = handle.join().unwrap();
        let took = closed.unwrap_or_else(|| panic!("{what}: never closed"));
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(15),
            "{what}: closed after {took:?}"
        );
        latest = latest.max(took);
    }
    assert!(started.elapsed() < Duration::from_secs(17));
    tls_rev(&node.addr, &trust).unwrap();
    let after = metrics(&node.web, Some(&trust)).unwrap();
    let failures = metric(&after, "doozer_tls_handshake_failures_total").unwrap();
    let hostile = 2 * 4 + STALLS + 3 + 50 + 3;
    assert!(
        failures >= hostile as i64,
        "{failures} handshake failures counted, {hostile} hostile connections; before: {body}"
    );
    let rss = node.rss_kib();
    eprintln!(
        "RSS {rss0} KiB before, {rss_held} KiB with {} stalls held, {rss} KiB after; \
         last stall closed after {latest:?}",
        STALLS + 56
    );
    assert!(rss_held < rss0 + 100 * 1024, "{rss0} -> {rss_held} KiB");
    assert!(rss < rss0 + 100 * 1024, "{rss0} -> {rss} KiB");
    let text = node.log_text();
    assert!(!text.contains("panicked"), "{text}");
    let new_lines = text.lines().count() - log_lines0;
    assert!(
        new_lines < 40,
        "{new_lines} log lines for {hostile} failed handshakes:\n{text}"
    );
}
