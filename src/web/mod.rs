//! The web view (`-w`): the tree live, the cluster at a glance, node stats,
//! `/metrics`, `/healthz`, `/readyz` and the JSON API behind the pages.
//! tide lives here and nowhere else.
//!
//! The web view is a client of its own node: it reads the tree over the
//! client protocol (WALK, STAT, GET at one rev) through one pipelined
//! connection to the node's `-l` address, and follows changes with one
//! `WAIT /**` loop shared by every event stream ([`events`]). Cluster and
//! node facts come from the node's published [`NodeStatus`]. So the web view
//! sees exactly what a client of this node sees, and touches no core state.
//!
//! Pages are one HTML shell and one script (`web/`, compiled in); the script
//! builds the page from the JSON API with `textContent`, so nothing from the
//! store is ever parsed as HTML. A Content-Security-Policy forbids inline
//! script and every other origin as a second line of defence.
//!
//! With a secret set (`DOOZER_RWSECRET` / `DOOZER_ROSECRET`), every request
//! must present one: `?sk=SECRET` (a page opened so answers with a cookie
//! and a redirect to the same URL without it), the `doozer_sk` cookie, or
//! `Authorization: Bearer SECRET`. The web view itself sends ACCESS with
//! the RW secret (or the RO one) on its own connection.

mod api;
mod events;
pub(crate) mod json;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tide::{Request, Response, StatusCode};

use crate::client::{Client, Error};
use crate::runtime::conn::Conn;
use crate::runtime::event_loop::NodeStatus;
use crate::runtime::rt::{self, TcpListener};
use crate::session::Secrets;
use crate::store::Glob;
use crate::tls::NodeTls;
use crate::types::Path;
use api::{ApiError, ApiResult, RevSamples, Snapshot};
use events::{Hub, Take};
use json::Obj;

/// HTTP connections served at once; more are closed at accept.
pub const MAX_HTTP_CONNECTIONS: usize = 256;
/// Event streams open at once; more get 503.
pub const MAX_SUBSCRIBERS: usize = 64;
/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to this node's own client port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The cookie that carries a secret.
const COOKIE: &str = "doozer_sk";

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

/// Pages may load only this origin's script and style, and talk only to it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The web view's own client connection to its node, reopened when it
/// fails.
pub struct Upstream {
    addr: String,
    secret: Vec<u8>,
    client: Mutex<Option<Client>>,
    /// The node's TLS, when on: the connection is TLS, trusting the
    /// certificate the node serves now.
    tls: Option<Arc<NodeTls>>,
}

impl Upstream {
    fn new(addr: String, secret: Vec<u8>, tls: Option<Arc<NodeTls>>) -> Upstream {
        Upstream {
            addr,
            secret,
            client: Mutex::new(None),
            tls,
        }
    }

    /// The open connection, or a new one (with ACCESS when a secret is set).
    pub async fn client(&self) -> Result<Client, Error> {
        if let Some(client) = self.lock().as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let own = self.tls.as_ref().map(|tls| tls.current().own.clone());
        let client =
            Client::connect_timeout_with(&self.addr, own.as_ref(), CONNECT_TIMEOUT).await?;
        if !self.secret.is_empty() {
            client.access(&self.secret).await?;
        }
        *self.lock() = Some(client.clone());
        Ok(client)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Client>> {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Numbers the web view keeps about its node over time.
pub struct Stats {
    pub started: Instant,
    samples: Mutex<RevSamples>,
}

impl Stats {
    pub fn revs_per_sec(&self) -> f64 {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rate()
    }
}

struct Web {
    upstream: Arc<Upstream>,
    status: Arc<NodeStatus>,
    secrets: Secrets,
    hub: Arc<Hub>,
    stats: Arc<Stats>,
    http_connections: AtomicUsize,
    /// Held while a tree is listed.
    listing: futures::lock::Mutex<()>,
}

type State = Arc<Web>;

/// The address to dial for this node's own client port: a wildcard listen
/// address is reached on loopback.
fn dial_addr(listen: &str) -> String {
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.to_string(),
    }
}

/// Binds `web_addr` and serves the web view for the node whose client port
/// is `node_addr`, until the process ends. Returns the bound address.
///
/// With TLS on (`status.tls`), the web view dials its node over TLS
/// (trusting exactly the certificate the node serves), and with `https` it
/// serves HTTPS with that certificate too.
pub async fn start(
    web_addr: &str,
    node_addr: &str,
    secrets: Secrets,
    status: Arc<NodeStatus>,
    https: bool,
) -> io::Result<String> {
    let listener = TcpListener::bind(web_addr).await?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| web_addr.to_string(), |a| a.to_string());
    let secret = if secrets.read_write.is_empty() {
        secrets.read_only.clone()
    } else {
        secrets.read_write.clone()
    };
    let upstream = Arc::new(Upstream::new(
        dial_addr(node_addr),
        secret.into_bytes(),
        status.tls.get().cloned(),
    ));
    let hub = Arc::new(Hub::new(
        status.rev.load(Ordering::Acquire),
        events::RING_EVENTS,
        events::RING_BYTES,
    ));
    let stats = Arc::new(Stats {
        started: Instant::now(),
        samples: Mutex::new(RevSamples::new(11)),
    });
    rt::spawn(hub.clone().run(upstream.clone(), status.clone()));
    rt::spawn(sample_revs(stats.clone(), status.clone()));
    let web = Arc::new(Web {
        upstream,
        status,
        secrets,
        hub,
        stats,
        http_connections: AtomicUsize::new(0),
        listing: futures::lock::Mutex::new(()),
    });
    let mut app = tide::with_state(web.clone());
    app.at("/").get(route);
    app.at("/*").get(route);
    let https = if https { status_tls(&web) } else { None };
    rt::spawn(accept_loop(listener, app, web, https));
    Ok(addr)
}

/// Records the applied rev once a second, for proposals/s.
async fn sample_revs(stats: Arc<Stats>, status: Arc<NodeStatus>) {
    loop {
        let rev = status.rev.load(Ordering::Acquire);
        stats
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(Instant::now(), rev);
        rt::sleep(Duration::from_secs(1)).await;
    }
}

/// tide's own listener has no connection limit; this one closes
/// connections past [`MAX_HTTP_CONNECTIONS`] at once.
async fn accept_loop(
    listener: TcpListener,
    app: tide::Server<State>,
    web: Arc<Web>,
    https: Option<Arc<NodeTls>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                log::warn!("web view: accept failed: {err}");
                rt::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if web.http_connections.load(Ordering::Relaxed) >= MAX_HTTP_CONNECTIONS {
            log::warn!("web view: refusing {peer}: {MAX_HTTP_CONNECTIONS} connections are open");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            continue;
        }
        web.http_connections.fetch_add(1, Ordering::Relaxed);
        let app = app.clone();
        let web = web.clone();
        let https = https.clone();
        rt::spawn(async move {
            let local = stream.local_addr().ok();
            let stream = match https {
                None => Conn::plain(stream),
                Some(tls) => {
                    let first = first_byte(&stream).await;
                    if !matches!(first, First::Tls) {
                        tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        log::debug!("web view: {peer} sent no TLS handshake on the HTTPS port");
                        if let First::Http = first {
                            answer_plain_on_https(stream).await;
                        } else {
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                        }
                        web.http_connections.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    match Conn::accept_tls(stream, tls.current().web.clone()).await {
                        Ok(stream) => stream,
                        Err(reason) => {
                            tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                            log::debug!("web view: TLS handshake from {peer} failed: {reason}");
                            web.http_connections.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            };
            let served = async_h1::accept(stream, |mut req| {
                let app = app.clone();
                async move {
                    req.set_local_addr(local);
                    req.set_peer_addr(Some(peer));
                    app.respond(req).await
                }
            })
            .await;
            if let Err(err) = served {
                log::debug!("web view: connection from {peer}: {err}");
            }
            web.http_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Bytes of a plain-HTTP request read (and dropped) after answering it on
/// the HTTPS port, so the close does not reset the connection before the
/// browser reads the answer; past this, or [`PLAIN_DRAIN_TIME`], the
/// connection is closed anyway.
const PLAIN_DRAIN_BYTES: usize = 16 * 1024;
/// How long the drain of [`PLAIN_DRAIN_BYTES`] may take.
const PLAIN_DRAIN_TIME: Duration = Duration::from_secs(1);

/// How a connection to the HTTPS port starts.
enum First {
    /// As TLS may (anything but a letter: rustls judges the rest).
    Tls,
    /// With a letter: a plain-HTTP request, answered by
    /// [`answer_plain_on_https`].
    Http,
    /// With nothing within [`crate::tls::HANDSHAKE_TIMEOUT`], or a hang-up.
    Silent,
}

/// Looks at (without taking) the first byte of a connection, waiting at
/// most the handshake timeout: a silent connection is held no longer than
/// one that starts a handshake and stalls. (One that sends its first byte
/// late and then stalls is held at most twice the handshake timeout.)
async fn first_byte(stream: &rt::TcpStream) -> First {
    let mut first = [0u8; 1];
    match rt::timeout(crate::tls::HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Some(Ok(1)) if first[0].is_ascii_alphabetic() => First::Http,
        Some(Ok(1)) => First::Tls,
        _ => First::Silent,
    }
}

/// A short plain-HTTP 400 for a browser sent to `http://` on the HTTPS
/// port, then a bounded drain and close.
async fn answer_plain_on_https(stream: rt::TcpStream) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "This port serves the doozer web view over HTTPS: use https://.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut writer = &stream;
    let wrote = rt::timeout(PLAIN_DRAIN_TIME, writer.write_all(answer.as_bytes())).await;
    if matches!(wrote, Some(Ok(()))) {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let drain = async {
            let mut reader = &stream;
            let mut buf = [0u8; 4096];
            let mut drained = 0;
            while drained < PLAIN_DRAIN_BYTES {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = rt::timeout(PLAIN_DRAIN_TIME, drain).await;
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn status_tls(web: &Web) -> Option<Arc<NodeTls>> {
    web.status.tls.get().cloned()
}

/// Whether `candidate` is one of the secrets (the web view is never open,
/// so the empty secret of an open server does not count).
fn valid_secret(secrets: &Secrets, candidate: &[u8]) -> bool {
    secrets.any_set() && secrets.grant(candidate).is_some()
}

/// Percent-encodes everything but unreserved characters (RFC 3986), so any
/// secret fits in a cookie.
fn pct_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(text: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The secret a `Cookie` header carries, if any.
fn cookie_secret(header: &str) -> Option<Vec<u8>> {
    header.split(';').find_map(|part| {
        let (name, value) = part.trim().split_once('=')?;
        (name == COOKIE).then(|| pct_decode(value))
    })
}

/// How a request got in.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// No secret is set.
    Open,
    /// It presented a valid secret; `in_query` when as `?sk=`.
    Granted {
        in_query: bool,
    },
    Denied,
}

fn check_access(
    secrets: &Secrets,
    query_sk: Option<&str>,
    cookie: Option<&str>,
    authorization: Option<&str>,
) -> Access {
    if !secrets.any_set() {
        return Access::Open;
    }
    if query_sk.is_some_and(|sk| valid_secret(secrets, sk.as_bytes())) {
        return Access::Granted { in_query: true };
    }
    let from_cookie = cookie.and_then(cookie_secret);
    let from_header = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|s| s.trim().as_bytes().to_vec());
    if from_cookie
        .into_iter()
        .chain(from_header)
        .any(|s| valid_secret(secrets, &s))
    {
        return Access::Granted { in_query: false };
    }
    Access::Denied
}

fn header<'a>(req: &'a Request<State>, name: &str) -> Option<&'a str> {
    req.header(name).map(|v| v.last().as_str())
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Asset(&'static str, &'static str),
    /// The single-page shell (tree, cluster or stats).
    Page,
    ApiTree,
    ApiFile,
    ApiCluster,
    ApiStats,
    ApiEvents,
    /// A store path without its trailing slash.
    Redirect(String),
    NotFound,
}

fn classify(path: &str) -> Route {
    match path {
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/_/app.js" => Route::Asset(APP_JS, "text/javascript; charset=utf-8"),
        "/_/app.css" => Route::Asset(APP_CSS, "text/css; charset=utf-8"),
        "/cluster" | "/stats" | "/" => Route::Page,
        "/api/tree" => Route::ApiTree,
        "/api/file" => Route::ApiFile,
        "/api/cluster" => Route::ApiCluster,
        "/api/stats" => Route::ApiStats,
        "/api/events" => Route::ApiEvents,
        p => match p.strip_suffix('/') {
            Some(dir) if dir != "/" && Path::is_valid(dir) => Route::Page,
            Some(_) => Route::NotFound,
            None if Path::is_valid(p) => Route::Redirect(format!("{p}/")),
            None => Route::NotFound,
        },
    }
}

fn with_headers(mut res: Response, cache: bool) -> Response {
    res.insert_header("X-Content-Type-Options", "nosniff");
    res.insert_header("Referrer-Policy", "no-referrer");
    res.insert_header("X-Frame-Options", "DENY");
    if !cache {
        res.insert_header("Cache-Control", "no-store");
    }
    res
}

fn text(status: u16, body: &str) -> Response {
    let mut res = Response::new(StatusCode::try_from(status).unwrap_or(StatusCode::Ok));
    res.insert_header("Content-Type", "text/plain; charset=utf-8");
    res.set_body(body.to_string());
    res
}

fn json_response(result: ApiResult) -> Response {
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(e) => (e.status, e.json()),
    };
    let mut res = Response::new(StatusCode::try_from(status).unwrap_or(StatusCode::Ok));
    res.insert_header("Content-Type", "application/json");
    res.set_body(body);
    res
}

fn redirect(location: &str) -> Response {
    let mut res = Response::new(StatusCode::SeeOther);
    res.insert_header("Location", location);
    res
}

async fn within(limit: Duration, work: impl std::future::Future<Output = ApiResult>) -> ApiResult {
    rt::timeout(limit, work)
        .await
        .unwrap_or_else(|| Err(ApiError::new(504, "this node did not answer in time")))
}

async fn route(req: Request<State>) -> tide::Result {
    let web = req.state().clone();
    let url = req.url().clone();
    let mut query: HashMap<String, String> = HashMap::new();
    for (k, v) in url.query_pairs() {
        query
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    let access = check_access(
        &web.secrets,
        query.get("sk").map(String::as_str),
        header(&req, "Cookie"),
        header(&req, "Authorization"),
    );
    let route = classify(url.path());
    match access {
        Access::Denied => {
            let mut res = text(
                401,
                "This doozer web view needs a secret: open it with ?sk=SECRET \
                 (DOOZER_RWSECRET or DOOZER_ROSECRET), or send \
                 Authorization: Bearer SECRET.\n",
            );
            res.insert_header("WWW-Authenticate", "Bearer realm=\"doozer\"");
            return Ok(with_headers(res, false));
        }
        Access::Granted { in_query: true } if route == Route::Page => {
            // Keep the secret in a cookie, out of the address bar and history.
            let rest: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "sk")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut clean = url.clone();
            if rest.is_empty() {
                clean.set_query(None);
            } else {
                clean.query_pairs_mut().clear().extend_pairs(rest);
            }
            let location = match clean.query() {
                Some(q) => format!("{}?{q}", clean.path()),
                None => clean.path().to_string(),
            };
            let mut res = redirect(&location);
            let sk = query.get("sk").map(String::as_str).unwrap_or("");
            res.insert_header(
                "Set-Cookie",
                format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    pct_encode(sk.as_bytes())
                ),
            );
            return Ok(with_headers(res, false));
        }
        _ => {}
    }
    let res = match route {
        Route::Healthz => text(200, "ok\n"),
        Route::Readyz => {
            let snap = Snapshot::take(&web.status, &web.stats, 0);
            match api::readiness(&snap) {
                Ok(()) => text(200, "ready\n"),
                Err(why) => text(503, &format!("{why}\n")),
            }
        }
        Route::Metrics => {
            let snap = Snapshot::take(&web.status, &web.stats, web.subscribers());
            let mut res = text(200, &api::metrics(&snap));
            res.insert_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
            res
        }
        Route::Asset(body, kind) => {
            let mut res = text(200, body);
            res.insert_header("Content-Type", kind);
            return Ok(with_headers(res, true));
        }
        Route::Page => {
            let mut res = text(200, INDEX_HTML);
            res.insert_header("Content-Type", "text/html; charset=utf-8");
            res.insert_header("Content-Security-Policy", CSP);
            res
        }
        Route::ApiTree => json_response(
            within(API_TIMEOUT, async {
                let path = api::parse_path(query.get("path").map(String::as_str))?;
                let rev = api::parse_num("rev", query.get("rev").map(String::as_str))?;
                let max_value =
                    api::parse_num("max_value", query.get("max_value").map(String::as_str))?
                        .map_or(api::DEFAULT_TREE_VALUE, |n| n.clamp(0, 1 << 20) as usize);
                let limit = api::parse_num("limit", query.get("limit").map(String::as_str))?
                    .map_or(api::DEFAULT_TREE_FILES, |n| {
                        n.clamp(1, api::MAX_TREE_FILES as i64) as usize
                    });
                // One listing at a time: they are the costly reads.
                let _turn = web.listing.lock().await;
                api::tree(&web.upstream, &path, rev, max_value, limit).await
            })
            .await,
        ),
        Route::ApiFile => json_response(
            within(API_TIMEOUT, async {
                let path = api::parse_path(query.get("path").map(String::as_str))?;
                let rev = api::parse_num("rev", query.get("rev").map(String::as_str))?;
                api::file(&web.upstream, &path, rev).await
            })
            .await,
        ),
        Route::ApiCluster => {
            json_response(within(API_TIMEOUT, api::cluster(&web.upstream, &web.status)).await)
        }
        Route::ApiStats => {
            let snap = Snapshot::take(&web.status, &web.stats, web.subscribers());
            json_response(Ok(api::stats(&snap)))
        }
        Route::ApiEvents => events_stream(req, web, &query),
        Route::Redirect(location) => redirect(&location),
        Route::NotFound => text(404, "not found\n"),
    };
    Ok(with_headers(res, false))
}

impl Web {
    fn subscribers(&self) -> usize {
        self.hub.subscribers.load(Ordering::Relaxed)
    }
}

/// Frees a subscriber's place when its stream ends.
struct Subscriber(Arc<Web>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/events?glob=G&rev=R`: Server-Sent Events, one `change` per
/// set or delete whose path matches `G`, with the rev as the event id; from
/// `Last-Event-ID + 1` when the browser resumes, else from `R`, else from
/// now.
fn events_stream(req: Request<State>, web: Arc<Web>, query: &HashMap<String, String>) -> Response {
    let glob = match Glob::parse(query.get("glob").map_or("/**", String::as_str)) {
        Ok(glob) => glob,
        Err(e) => return json_response(Err(ApiError::new(400, e.to_string()))),
    };
    let resume = header(&req, "Last-Event-ID")
        .filter(|id| !id.is_empty())
        .map(|id| {
            id.trim()
                .parse::<i64>()
                .map(|rev| rev + 1)
                .map_err(|_| ApiError::new(400, format!("bad Last-Event-ID {id:?}")))
        })
        .transpose();
    let from = match resume.and_then(|r| match r {
        Some(rev) => Ok(Some(rev)),
        None => api::parse_num("rev", query.get("rev").map(String::as_str)),
    }) {
        // `None`: from whatever comes next.
        Ok(from) => from,
        Err(e) => return json_response(Err(e)),
    };
    // Before the count, which wakes an idle hub: it must know where to start.
    if let Some(from) = from {
        web.hub.want(from);
    }
    if web.hub.subscribers.fetch_add(1, Ordering::AcqRel) >= MAX_SUBSCRIBERS {
        web.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        return json_response(Err(ApiError::new(503, "too many event streams are open")));
    }
    let guard = Subscriber(web.clone());
    let start = Mutex::new(Some((guard, glob, from)));
    let mut res = tide::sse::upgrade(req, move |_req, sender| {
        let start = start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        async move {
            if let Some((guard, glob, from)) = start {
                // An error here is the browser going away.
                let _ = follow(&sender, &guard.0, &glob, from).await;
            }
            Ok(())
        }
    });
    res.insert_header("X-Accel-Buffering", "no");
    res
}

/// How long a stream asked to start past this node's rev waits for it.
const AHEAD_GRACE: Duration = Duration::from_secs(1);

/// Streams the changes matching `glob` from `cursor` on, until the browser
/// leaves or its cursor falls out of the ring (then a `reset`).
async fn follow(
    sender: &tide::sse::Sender,
    web: &Web,
    glob: &Glob,
    from: Option<i64>,
) -> io::Result<()> {
    let hub = &web.hub;
    let mut wake = hub.subscribe();
    // An idle hub starts following within moments of a subscriber arriving.
    while !hub.is_active() {
        match rt::timeout(events::PING_INTERVAL, wake.next()).await {
            Some(Some(())) => {}
            Some(None) => return Ok(()),
            None => {
                let data = Obj::new().num("rev", hub.next() - 1).finish();
                sender.send("ping", data, None).await?;
            }
        }
    }
    let mut cursor = from.unwrap_or_else(|| hub.next());
    // A cursor past this node's rev is a browser that followed another node,
    // or this one before it restarted (with a fresh store): it must reload.
    // A moment's grace covers a rev this node has applied and answered but
    // not yet published in its status.
    let ahead = || cursor > web.status.rev.load(Ordering::Acquire) + 1;
    let grace = Instant::now() + AHEAD_GRACE;
    while ahead() && Instant::now() < grace {
        rt::sleep(Duration::from_millis(10)).await;
    }
    if ahead() {
        let rev = web.status.rev.load(Ordering::Acquire);
        let data = Obj::new()
            .num("rev", rev)
            .num("start", hub.start())
            .finish();
        return sender.send("reset", data, None).await;
    }
    loop {
        match hub.take(cursor, glob) {
            Take::Reset(rev) => {
                let data = Obj::new()
                    .num("rev", rev)
                    .num("start", hub.start())
                    .finish();
                return sender.send("reset", data, None).await;
            }
            Take::Changes(changes, next) => {
                for change in &changes {
                    sender
                        .send("change", &change.json, Some(&change.rev.to_string()))
                        .await?;
                }
                cursor = next;
                if !changes.is_empty() {
                    continue;
                }
            }
        }
        match rt::timeout(events::PING_INTERVAL, wake.next()).await {
            Some(Some(())) => {}
            Some(None) => return Ok(()),
            None => {
                let data = Obj::new().num("rev", cursor - 1).finish();
                sender.send("ping", data, None).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(rw: &str, ro: &str) -> Secrets {
        Secrets {
            read_write: rw.into(),
            read_only: ro.into(),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(classify("/"), Route::Page);
        assert_eq!(classify("/ctl/"), Route::Page);
        assert_eq!(classify("/ctl/node/"), Route::Page);
        assert_eq!(classify("/cluster"), Route::Page);
        assert_eq!(classify("/cluster/"), Route::Page);
        assert_eq!(classify("/stats"), Route::Page);
        assert_eq!(classify("/ctl"), Route::Redirect("/ctl/".into()));
        assert_eq!(classify("/api/tree"), Route::ApiTree);
        assert_eq!(classify("/api/tree/"), Route::Page);
        assert_eq!(classify("/metrics"), Route::Metrics);
        assert_eq!(classify("/healthz"), Route::Healthz);
        assert_eq!(classify("/readyz"), Route::Readyz);
        assert!(matches!(classify("/_/app.js"), Route::Asset(..)));
        assert_eq!(classify("/_/nope.js"), Route::NotFound);
        assert_eq!(classify("//"), Route::NotFound);
        assert_eq!(classify("/a%3Cb/"), Route::NotFound);
        assert_eq!(
            classify("/favicon.ico"),
            Route::Redirect("/favicon.ico/".into())
        );
    }

    #[test]
    fn access_needs_a_valid_secret_once_one_is_set() {
        let open = secrets("", "");
        assert_eq!(check_access(&open, None, None, None), Access::Open);
        assert_eq!(check_access(&open, Some("x"), None, None), Access::Open);

        let both = secrets("rw", "ro");
        assert_eq!(check_access(&both, None, None, None), Access::Denied);
        assert_eq!(check_access(&both, Some(""), None, None), Access::Denied);
        assert_eq!(check_access(&both, Some("r"), None, None), Access::Denied);
        assert_eq!(
            check_access(&both, Some("rw"), None, None),
            Access::Granted { in_query: true }
        );
        assert_eq!(
            check_access(&both, Some("ro"), None, None),
            Access::Granted { in_query: true }
        );
        assert_eq!(
            check_access(&both, None, Some("a=b; doozer_sk=ro"), None),
            Access::Granted { in_query: false }
        );
        assert_eq!(
            check_access(&both, None, None, Some("Bearer rw")),
            Access::Granted { in_query: false }
        );
        assert_eq!(
            check_access(&both, None, Some("doozer_sk=nope"), Some("Basic rw")),
            Access::Denied
        );

        // An unset secret is never matched by an empty guess.
        let rw_only = secrets("s e;cret%", "");
        assert_eq!(check_access(&rw_only, Some(""), None, None), Access::Denied);
        let cookie = format!("doozer_sk={}", pct_encode(b"s e;cret%"));
        assert_eq!(
            check_access(&rw_only, None, Some(&cookie), None),
            Access::Granted { in_query: false }
        );
    }

    #[test]
    fn percent_coding_round_trips() {
        let raw = b"a b;c=d%e\xff~";
        assert_eq!(pct_encode(raw), "a%20b%3Bc%3Dd%25e%FF~");
        assert_eq!(pct_decode(&pct_encode(raw)), raw);
        assert_eq!(pct_decode("%zz%4"), b"%zz%4");
    }

    #[test]
    fn wildcard_listen_addresses_are_dialled_on_loopback() {
        assert_eq!(dial_addr("0.0.0.0:8046"), "127.0.0.1:8046");
        assert_eq!(dial_addr("[::]:8046"), "[::1]:8046");
        assert_eq!(dial_addr("127.0.0.2:8046"), "127.0.0.2:8046");
    }
}
