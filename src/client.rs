//! An asynchronous, pipelined doozer client (the Go `github.com/ha/doozer`
//! library's behaviour, reference §7).
//!
//! One [`Client`] is one TCP connection. Any number of tasks may call it at
//! once: every call gets a fresh tag (a counter that skips tags still in use),
//! its frame goes through the single writer task, and the single reader task
//! hands each reply to the call with the same tag, in whatever order the
//! server answers. When the connection fails, every pending call and every
//! later call gets the error; nothing hangs. A call that is given up (its
//! future dropped, for example on a timeout) keeps its tag reserved until the
//! server answers it, so a late reply can never be taken for another call's.
//!
//! Dropping the last handle of a client (or [`Client::close`]) closes the
//! connection.

use std::collections::HashMap;
use std::fmt;

use std::net::Shutdown;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{AsyncWriteExt, SinkExt, StreamExt};
use rand::seq::SliceRandom;

use crate::codec::client::{
    encode_frame, flags, read_message, FrameError, Request, Response, Verb,
};
use crate::error::{ErrCode, ReplyError};
use crate::runtime::conn::Conn;
use crate::runtime::rt::{spawn, timeout, TcpStream};
use crate::tls::ClientTls;
use crate::uri::{with_default_port, Uri, UriError};

/// How long [`dial_uri`] waits for one address to accept a connection.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest reply frame the client accepts.
pub const MAX_REPLY_BYTES: usize = 256 << 20;

/// Up to this many queued frames are coalesced into one socket write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Bytes read from the socket at once.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// Why a client operation failed. `Display` gives the texts the Go client
/// shows (`REV_MISMATCH`, `OTHER: permission denied`, `EOF`, `closed`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an error code.
    Reply(ReplyError),
    /// A TCP connection could not be made: `dial tcp <addr>: <reason>`.
    Dial { addr: String, reason: String },
    /// The TLS handshake with a server failed; the reason says why in
    /// words (untrusted certificate, wrong name, not TLS, …).
    Tls { addr: String, reason: String },
    /// The TLS settings could not be loaded (the CA file).
    TlsSetup(String),
    /// The connection failed or the server closed it (`EOF`,
    /// `unexpected EOF`, `connection reset by peer`, …).
    Connection(String),
    /// The client was closed with [`Client::close`].
    Closed,
    /// The URI could not be parsed, or names nothing to dial.
    Uri(UriError),
    /// The boot cluster knows no address for the cluster name.
    NoAddrs,
    /// [`Client::wait_timeout`] ran out of time.
    WaitTimeout,
    /// The server's reply lacks a field this verb always carries.
    Protocol(String),
    /// The caller's sink for a [`Client::snapshot`] failed (the text says
    /// why, e.g. a full disk); the stream was abandoned.
    Sink(String),
}

impl Error {
    /// The server's error code, if this is an error reply.
    pub fn code(&self) -> Option<ErrCode> {
        match self {
            Error::Reply(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether the server refused for lack of a secret.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Reply(e) if *e == ReplyError::permission_denied())
    }

    pub fn is_rev_mismatch(&self) -> bool {
        self.code() == Some(ErrCode::RevMismatch)
    }

    /// Whether the connection is unusable after this error (as opposed to a
    /// refusal of one request).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connection(_) | Error::Closed | Error::Protocol(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Reply(e) => e.fmt(f),
            Error::Dial { addr, reason } => write!(f, "dial tcp {addr}: {reason}"),
            Error::Tls { addr, reason } => write!(f, "TLS handshake with {addr} failed: {reason}"),
            Error::TlsSetup(reason) => write!(f, "TLS: {reason}"),
            Error::Connection(text) => f.write_str(text),
            Error::Closed => f.write_str("closed"),
            Error::Uri(e) => e.fmt(f),
            Error::NoAddrs => f.write_str("no known address"),
            Error::WaitTimeout => f.write_str("wait timeout"),
            Error::Protocol(text) => write!(f, "protocol error: {text}"),
            Error::Sink(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for Error {}

impl From<ReplyError> for Error {
    fn from(e: ReplyError) -> Error {
        Error::Reply(e)
    }
}

impl From<ErrCode> for Error {
    fn from(code: ErrCode) -> Error {
        Error::Reply(ReplyError::code(code))
    }
}

impl From<UriError> for Error {
    fn from(e: UriError) -> Error {
        Error::Uri(e)
    }
}

/// An I/O error as Go's net package words it (`connection refused`, …),
/// without Rust's ` (os error N)` suffix.
pub fn io_error_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        TimedOut | WouldBlock => "i/o timeout".into(),
        BrokenPipe => "broken pipe".into(),
        UnexpectedEof => "unexpected EOF".into(),
        _ => {
            let text = e.to_string();
            let text = match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

/// One event of a WAIT (or one entry of a WALK).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub rev: i64,
    pub path: String,
    pub body: Vec<u8>,
    /// `flags & (SET | DEL)`, as the Go client keeps it: 4 set, 8 del, 0 nop.
    pub flags: i32,
}

impl Event {
    pub fn is_set(&self) -> bool {
        self.flags & flags::SET != 0
    }

    pub fn is_del(&self) -> bool {
        self.flags & flags::DEL != 0
    }

    /// `set`, `del`, or empty for a nop (the CLI's record kind).
    pub fn kind(&self) -> &'static str {
        if self.is_set() {
            "set"
        } else if self.is_del() {
            "del"
        } else {
            ""
        }
    }
}

/// What STAT says about a path (Go's `FileInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FileInfo {
    /// The last path component.
    pub name: String,
    /// Body length for a file, number of entries for a directory.
    pub len: i32,
    /// File rev, or -2 for a directory.
    pub rev: i64,
    pub is_dir: bool,
    /// False when the STAT of this entry failed and only the name is known.
    pub is_set: bool,
}

type Reply = Result<Response, Error>;

/// Who waits for the replies of one tag.
enum Waiter {
    /// A call answered by one frame.
    Once(oneshot::Sender<Reply>),
    /// A SNAPSHOT, answered by frames up to one with `DONE` or an error.
    /// Bounded: the read loop waits for the caller to take frames (which
    /// holds up the connection's other replies meanwhile: backpressure, not
    /// memory). `None` once the caller gave up: frames are dropped until
    /// the last one, so the tag stays reserved until the server is done.
    Stream(Option<mpsc::Sender<Reply>>),
}

/// Frames a SNAPSHOT stream may hold between the socket and the caller.
const STREAM_QUEUE_FRAMES: usize = 16;

/// One file of a SNAPSHOT stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: String,
    /// The rev that last wrote the file.
    pub rev: i64,
    pub body: Vec<u8>,
}

/// What a SNAPSHOT stream came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The rev of the tree that was sent.
    pub rev: i64,
    /// Files sent.
    pub files: u64,
}

struct State {
    next_tag: i32,
    pending: HashMap<i32, Waiter>,
    failed: Option<Error>,
}

/// What the caller handles and the two connection tasks share.
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection failed (the first error wins) and fails every
    /// pending call.
    fn fail(&self, err: Error) {
        let (err, drained) = {
            let mut st = self.lock();
            let err = st.failed.get_or_insert(err).clone();
            (err, std::mem::take(&mut st.pending))
        };
        for (_, waiter) in drained {
            match waiter {
                Waiter::Once(tx) => {
                    let _ = tx.send(Err(err.clone()));
                }
                // A full queue drops the error: the caller then sees the
                // channel close and asks `failure()`.
                Waiter::Stream(Some(mut tx)) => {
                    let _ = tx.try_send(Err(err.clone()));
                }
                Waiter::Stream(None) => {}
            }
        }
    }

    fn failure(&self) -> Error {
        self.lock().failed.clone().unwrap_or(Error::Closed)
    }
}

struct Inner {
    shared: Arc<Shared>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    stream: Conn,
    addr: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connection to one doozer server. Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl Client {
    /// Connects to one server (`host:port`), with no timeout beyond the
    /// system's.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        Client::connect_with(addr, None).await
    }

    /// Connects to one server, over TLS when `tls` is given (the server's
    /// certificate checked against `addr` and what `tls` trusts).
    pub async fn connect_with(addr: &str, tls: Option<&ClientTls>) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr).await.map_err(|e| Error::Dial {
            addr: addr.to_string(),
            reason: io_error_text(&e),
        })?;
        let conn = match tls {
            None => Conn::plain(stream),
            Some(tls) => Conn::connect_tls(stream, addr, tls)
                .await
                .map_err(|reason| Error::Tls {
                    addr: addr.to_string(),
                    reason,
                })?,
        };
        Ok(Client::from_conn(conn, addr))
    }

    /// Connects to one server, giving up after `limit`.
    pub async fn connect_timeout(addr: &str, limit: Duration) -> Result<Client, Error> {
        Client::connect_timeout_with(addr, None, limit).await
    }

    /// [`Client::connect_with`], giving up after `limit` (the TCP connect
    /// and the TLS handshake together). A server that takes the connection
    /// but never answers the handshake is told apart from one that cannot
    /// be reached.
    pub async fn connect_timeout_with(
        addr: &str,
        tls: Option<&ClientTls>,
        limit: Duration,
    ) -> Result<Client, Error> {
        let conn = connect_conn_timeout(addr, tls, limit).await?;
        Ok(Client::from_conn(conn, addr))
    }

    /// Starts the reader and writer tasks on a connected stream.
    pub fn from_stream(stream: TcpStream, addr: &str) -> Client {
        Client::from_conn(Conn::plain(stream), addr)
    }

    /// Starts the reader and writer tasks on a connection (plain or TLS).
    pub fn from_conn(stream: Conn, addr: &str) -> Client {
        let _ = stream.set_nodelay(true);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_tag: 0,
                pending: HashMap::new(),
                failed: None,
            }),
        });
        let (frames, queue) = mpsc::unbounded();
        spawn(write_loop(stream.clone(), queue, shared.clone()));
        spawn(read_loop(stream.clone(), shared.clone()));
        Client {
            inner: Arc::new(Inner {
                shared,
                frames,
                stream,
                addr: addr.to_string(),
            }),
        }
    }

    /// The address this client dialled.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Closes the connection: pending and later calls fail with `closed`.
    pub fn close(&self) {
        self.inner.shared.fail(Error::Closed);
        let _ = self.inner.stream.shutdown(Shutdown::Both);
    }

    /// Whether the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().failed.is_some()
    }

    /// Sends `req` with a fresh tag (any tag in `req` is replaced) and returns
    /// the server's reply as it is, error fields included.
    pub async fn call(&self, req: Request) -> Result<Response, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(req, Waiter::Once(tx))?;
        match rx.await {
            Ok(reply) => reply,
            Err(_canceled) => Err(self.inner.shared.failure()),
        }
    }

    /// Sends `req` with a fresh tag whose replies go to `waiter`.
    fn send(&self, mut req: Request, waiter: Waiter) -> Result<i32, Error> {
        let tag = {
            let mut st = self.inner.shared.lock();
            if let Some(err) = &st.failed {
                return Err(err.clone());
            }
            let mut tag = st.next_tag;
            while st.pending.contains_key(&tag) {
                tag = tag.wrapping_add(1);
            }
            st.next_tag = tag.wrapping_add(1);
            st.pending.insert(tag, waiter);
            tag
        };
        req.tag = Some(tag);
        if self
            .inner
            .frames
            .unbounded_send(encode_frame(&req))
            .is_err()
        {
            self.inner.shared.lock().pending.remove(&tag);
            return Err(self.inner.shared.failure());
        }
        Ok(tag)
    }

    /// SNAPSHOT (our extension): the whole tree at `rev` (default: the
    /// server's current rev), each file handed to `each` in walk order as
    /// it arrives, never all held at once. Returns the tree's rev and the
    /// number of files. An error from `each` abandons the stream and is
    /// returned (the connection stays usable; the rest of the stream is
    /// read and dropped).
    pub async fn snapshot<F>(&self, rev: Option<i64>, mut each: F) -> Result<SnapshotSummary, Error>
    where
        F: FnMut(SnapshotFile) -> Result<(), Error>,
    {
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE_FRAMES);
        self.send(req(Verb::Snapshot).rev_opt(rev).0, Waiter::Stream(Some(tx)))?;
        let mut files: u64 = 0;
        while let Some(reply) = rx.next().await {
            let resp = reply?;
            if let Some(mut e) = resp.reply_error() {
                if e.detail.as_deref() == Some("") {
                    e.detail = None;
                }
                return Err(Error::Reply(e));
            }
            if resp.flags.unwrap_or(0) & flags::DONE != 0 {
                let rev = resp.rev.ok_or_else(|| missing("SNAPSHOT", "rev"))?;
                let len = resp.len.ok_or_else(|| missing("SNAPSHOT", "len"))?;
                if u64::try_from(len).ok() != Some(files.min(i32::MAX as u64)) {
                    return Err(Error::Protocol(format!(
                        "SNAPSHOT ended saying {len} files, {files} came"
                    )));
                }
                return Ok(SnapshotSummary { rev, files });
            }
            let (Some(path), Some(rev)) = (resp.path, resp.rev) else {
                return Err(missing("SNAPSHOT", "path or rev"));
            };
            files += 1;
            each(SnapshotFile {
                path,
                rev,
                body: resp.value.unwrap_or_default(),
            })?;
        }
        Err(self.inner.shared.failure())
    }

    /// [`Client::call`], with an error reply turned into [`Error::Reply`].
    async fn request(&self, req: Request) -> Result<Response, Error> {
        let resp = self.call(req).await?;
        match resp.reply_error() {
            Some(mut e) => {
                if e.detail.as_deref() == Some("") {
                    e.detail = None;
                }
                Err(Error::Reply(e))
            }
            None => Ok(resp),
        }
    }

    /// GET: the body and the file's rev (0 when absent) at `rev`, or now.
    pub async fn get(&self, path: &str, rev: Option<i64>) -> Result<(Vec<u8>, i64), Error> {
        let resp = self
            .request(req(Verb::Get).path(path).rev_opt(rev).0)
            .await?;
        Ok((resp.value.unwrap_or_default(), resp.rev.unwrap_or(0)))
    }

    /// SET: writes `body` if the file's rev is not newer than `rev` (-1:
    /// always, 0: only when absent). Returns the new rev.
    pub async fn set(&self, path: &str, rev: i64, body: &[u8]) -> Result<i64, Error> {
        let resp = self
            .request(req(Verb::Set).path(path).rev(rev).value(body.to_vec()).0)
            .await?;
        Ok(resp.rev.unwrap_or(0))
    }

    /// DEL, with the same rev rule as SET.
    pub async fn del(&self, path: &str, rev: i64) -> Result<(), Error> {
        self.request(req(Verb::Del).path(path).rev(rev).0).await?;
        Ok(())
    }

    pub async fn nop(&self) -> Result<(), Error> {
        self.request(req(Verb::Nop).0).await?;
        Ok(())
    }

    /// REV: the store revision the server has applied.
    pub async fn rev(&self) -> Result<i64, Error> {
        let resp = self.request(req(Verb::Rev).0).await?;
        resp.rev.ok_or_else(|| missing("REV", "rev"))
    }

    /// SELF: the server's node id.
    pub async fn self_id(&self) -> Result<Vec<u8>, Error> {
        let resp = self.request(req(Verb::SelfId).0).await?;
        Ok(resp.value.unwrap_or_default())
    }

    /// ACCESS with a secret.
    pub async fn access(&self, secret: &[u8]) -> Result<(), Error> {
        self.request(req(Verb::Access).value(secret.to_vec()).0)
            .await?;
        Ok(())
    }

    /// STAT: `(len, rev)`: a file's length and rev, a directory's entry count
    /// and -2, or `(0, 0)` for an absent path.
    pub async fn stat(&self, path: &str, rev: Option<i64>) -> Result<(i32, i64), Error> {
        let resp = self
            .request(req(Verb::Stat).path(path).rev_opt(rev).0)
            .await?;
        Ok((resp.len.unwrap_or(0), resp.rev.unwrap_or(0)))
    }

    /// GETDIR: the name of the `offset`-th entry (sorted) of directory `path`.
    pub async fn getdir(&self, path: &str, rev: Option<i64>, offset: i32) -> Result<String, Error> {
        let resp = self
            .request(req(Verb::Getdir).path(path).rev_opt(rev).offset(offset).0)
            .await?;
        resp.path.ok_or_else(|| missing("GETDIR", "path"))
    }

    /// WALK: the `offset`-th file (depth-first, sorted per level) matching
    /// `glob`.
    pub async fn walk(&self, glob: &str, rev: Option<i64>, offset: i32) -> Result<Event, Error> {
        let resp = self
            .request(req(Verb::Walk).path(glob).rev_opt(rev).offset(offset).0)
            .await?;
        event_of("WALK", resp)
    }

    /// WAIT: the first event at or after `rev` whose path matches `glob`.
    pub async fn wait(&self, glob: &str, rev: i64) -> Result<Event, Error> {
        let resp = self.request(req(Verb::Wait).path(glob).rev(rev).0).await?;
        event_of("WAIT", resp)
    }

    /// [`Client::wait`] that gives up after `limit` with
    /// [`Error::WaitTimeout`]. The connection stays usable.
    pub async fn wait_timeout(
        &self,
        glob: &str,
        rev: i64,
        limit: Duration,
    ) -> Result<Event, Error> {
        timeout(limit, self.wait(glob, rev))
            .await
            .unwrap_or(Err(Error::WaitTimeout))
    }

    /// Every entry name of directory `path` at `rev` (GETDIR from offset 0
    /// until `RANGE`), like Go's `Getdir(dir, rev, 0, -1)`.
    pub async fn getdir_all(&self, path: &str, rev: i64) -> Result<Vec<String>, Error> {
        until_range(|offset| self.getdir(path, Some(rev), offset)).await
    }

    /// Every file matching `glob` at `rev` (WALK until `RANGE`).
    pub async fn walk_all(&self, glob: &str, rev: i64) -> Result<Vec<Event>, Error> {
        until_range(|offset| self.walk(glob, Some(rev), offset)).await
    }

    /// Go's `Statinfo`: STAT at `rev`; an absent path is `NOENT`.
    pub async fn statinfo(&self, rev: i64, path: &str) -> Result<FileInfo, Error> {
        let (len, file_rev) = self.stat(path, Some(rev)).await?;
        if file_rev == 0 {
            return Err(ErrCode::NoEnt.into());
        }
        Ok(FileInfo {
            name: basename(path).to_string(),
            len,
            rev: file_rev,
            is_dir: file_rev == -2,
            is_set: true,
        })
    }

    /// Go's `Getdirinfo`: the entries of `dir` with a STAT each. An entry
    /// whose STAT fails keeps only its name.
    pub async fn getdirinfo(&self, dir: &str, rev: i64) -> Result<Vec<FileInfo>, Error> {
        let names = self.getdir_all(dir, rev).await?;
        let mut infos = Vec::with_capacity(names.len());
        for name in names {
            let path = join(dir, &name);
            infos.push(match self.statinfo(rev, &path).await {
                Ok(info) => info,
                Err(_) => FileInfo {
                    name,
                    ..FileInfo::default()
                },
            });
        }
        Ok(infos)
    }
}

/// A bare connection to one server, plain or TLS (the TCP connect and the
/// TLS handshake together within `limit`), with no client tasks on it: for
/// callers that speak the protocol themselves, like `doozer bench`. A
/// server that takes the connection but never answers the handshake is
/// told apart from one that cannot be reached.
pub async fn connect_conn_timeout(
    addr: &str,
    tls: Option<&ClientTls>,
    limit: Duration,
) -> Result<Conn, Error> {
    let started = std::time::Instant::now();
    let stream = match timeout(limit, TcpStream::connect(addr)).await {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => {
            return Err(Error::Dial {
                addr: addr.to_string(),
                reason: io_error_text(&e),
            })
        }
        None => {
            return Err(Error::Dial {
                addr: addr.to_string(),
                reason: "i/o timeout".into(),
            })
        }
    };
    let conn = match tls {
        None => Conn::plain(stream),
        Some(tls) => {
            let left = limit.saturating_sub(started.elapsed());
            match timeout(left, Conn::connect_tls(stream, addr, tls)).await {
                Some(Ok(conn)) => conn,
                Some(Err(reason)) => {
                    return Err(Error::Tls {
                        addr: addr.to_string(),
                        reason,
                    })
                }
                None => {
                    return Err(Error::Tls {
                        addr: addr.to_string(),
                        reason: format!(
                            "the server took the connection but did not answer the \
                             handshake within {limit:?} (stalled, or not a doozer server?)"
                        ),
                    })
                }
            }
        }
    };
    Ok(conn)
}

/// One step of [`walk_tree`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visit {
    Dir(String, FileInfo),
    File(String, FileInfo),
    Error(Error),
}

/// Calls `at(0)`, `at(1)`, … until the server answers `RANGE`: how the
/// protocol lists (GETDIR, WALK take an offset).
async fn until_range<T, F, Fut>(mut at: F) -> Result<Vec<T>, Error>
where
    F: FnMut(i32) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut items = Vec::new();
    loop {
        match at(items.len() as i32).await {
            Ok(item) => items.push(item),
            Err(e) if e.code() == Some(ErrCode::Range) => return Ok(items),
            Err(e) => return Err(e),
        }
    }
}

/// Go's `doozer.Walk(conn, rev, root, visitor, errors)`: the tree under
/// `root` at `rev`, pre-order, every directory and file with its full path,
/// entries sorted per level. Errors (an absent root is `NOENT`, a failed
/// listing, `TOO_LATE`, …) are reported and the walk goes on with what it
/// has.
pub async fn walk_tree(client: &Client, rev: i64, root: &str, mut visit: impl FnMut(Visit)) {
    let info = match client.statinfo(rev, root).await {
        Ok(info) => info,
        Err(e) => return visit(Visit::Error(e)),
    };
    let mut stack = vec![(root.to_string(), info)];
    while let Some((path, info)) = stack.pop() {
        if !info.is_dir {
            visit(Visit::File(path, info));
            continue;
        }
        visit(Visit::Dir(path.clone(), info));
        let children = match client.getdirinfo(&path, rev).await {
            Ok(children) => children,
            Err(e) => {
                visit(Visit::Error(e));
                Vec::new()
            }
        };
        for child in children.into_iter().rev() {
            stack.push((join(&path, &child.name), child));
        }
    }
}

/// [`walk_tree`], collected.
pub async fn walk_tree_collect(client: &Client, rev: i64, root: &str) -> Vec<Visit> {
    let mut out = Vec::new();
    walk_tree(client, rev, root, |v| out.push(v)).await;
    out
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(at) => &path[at + 1..],
        None => path,
    }
}

/// Connects to a cluster named by `uri` (Go's `DialUri(uri, buri)`):
///
/// * with `cn` and a boot URI: dial the boot cluster (through its own URI),
///   take its REV, list `/ctl/ns/<cn>/*` at that rev and GET each address;
/// * otherwise the `ca` addresses (none: `invalid uri`).
///
/// The addresses are tried in random order, each with
/// [`DEFAULT_DIAL_TIMEOUT`], until one answers (the last failure is the
/// error). With `sk`, ACCESS is sent first; if it fails the connection is
/// closed and that is the error.
pub async fn dial_uri(uri: &Uri, boot: Option<&Uri>) -> Result<Client, Error> {
    dial_uri_timeout(uri, boot, DEFAULT_DIAL_TIMEOUT).await
}

/// [`dial_uri`] with a per-address connect timeout.
pub async fn dial_uri_timeout(
    uri: &Uri,
    boot: Option<&Uri>,
    limit: Duration,
) -> Result<Client, Error> {
    let addrs = uri_addrs(uri, boot, limit).await?;
    let tls = client_tls(uri)?;
    let mut last = Error::NoAddrs;
    let mut client = None;
    for addr in &addrs {
        match Client::connect_timeout_with(addr, tls.as_ref(), limit).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(e) => last = e,
        }
    }
    let client = client.ok_or(last)?;
    if let Some(secret) = &uri.secret {
        if let Err(e) = client.access(secret.as_bytes()).await {
            client.close();
            return Err(e);
        }
    }
    Ok(client)
}

/// [`dial_uri_timeout`] without the client tasks or the ACCESS: a bare
/// connection to the first of the URI's addresses (in random order) that
/// answers, and that address. The caller sends the URI's secret itself.
pub async fn dial_uri_conn(
    uri: &Uri,
    boot: Option<&Uri>,
    limit: Duration,
) -> Result<(Conn, String), Error> {
    let addrs = uri_addrs(uri, boot, limit).await?;
    let tls = client_tls(uri)?;
    let mut last = Error::NoAddrs;
    for addr in addrs {
        match connect_conn_timeout(&addr, tls.as_ref(), limit).await {
            Ok(conn) => return Ok((conn, addr)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The addresses a URI names, in random order: its `ca` list, or what its
/// boot cluster lists for its `cn`.
async fn uri_addrs(uri: &Uri, boot: Option<&Uri>, limit: Duration) -> Result<Vec<String>, Error> {
    let mut addrs = match (&uri.cluster_name, boot) {
        (Some(name), Some(boot)) => {
            let dzns = Box::pin(dial_uri_timeout(boot, None, limit)).await?;
            let found = lookup(&dzns, name).await;
            dzns.close();
            let found = found?;
            if found.is_empty() {
                return Err(Error::NoAddrs);
            }
            found
        }
        _ if uri.addrs.is_empty() => return Err(Error::Uri(UriError::Invalid)),
        _ => uri.addrs.clone(),
    };
    addrs.shuffle(&mut rand::rng());
    Ok(addrs)
}

/// What a URI's `tlsca` asks to trust, loaded; `None` dials in plain text.
pub fn client_tls(uri: &Uri) -> Result<Option<ClientTls>, Error> {
    uri.tls_ca
        .as_deref()
        .map(|ca| {
            ClientTls::from_ca_file(std::path::Path::new(ca))
                .map_err(|err| Error::TlsSetup(err.to_string()))
        })
        .transpose()
}

/// [`dial_uri`] from texts, as the CLI has them. The boot URI is parsed
/// only when it is used (the URI has `cn` and `boot` is not empty).
pub async fn dial_uri_str(uri: &str, boot: &str) -> Result<Client, Error> {
    let uri = Uri::parse(uri)?;
    let boot = match (&uri.cluster_name, boot) {
        (Some(_), b) if !b.is_empty() => Some(Uri::parse(b)?),
        _ => None,
    };
    dial_uri(&uri, boot.as_ref()).await
}

/// The addresses a boot cluster lists for cluster `name` (Go's `lookup`).
/// No `/ctl/ns/<name>` at all is an empty list.
pub async fn lookup(dzns: &Client, name: &str) -> Result<Vec<String>, Error> {
    Ok(ns_entries(dzns, name)
        .await?
        .into_iter()
        .map(|entry| entry.addr)
        .collect())
}

/// One file `/ctl/ns/<cluster>/<name>` of a boot cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsEntry {
    /// The entry's name (a node id, when doozerd wrote it).
    pub name: String,
    /// The address it holds, with the default port when it names none.
    pub addr: String,
    pub rev: i64,
}

/// Every entry a boot cluster lists under `/ctl/ns/<cluster>`, read at one
/// rev. No directory at all is an empty list.
pub async fn ns_entries(dzns: &Client, cluster: &str) -> Result<Vec<NsEntry>, Error> {
    let rev = dzns.rev().await?;
    let dir = format!("/ctl/ns/{cluster}");
    let names = match dzns.getdir_all(&dir, rev).await {
        Ok(names) => names,
        Err(e) if e.code() == Some(ErrCode::NoEnt) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let (body, rev) = dzns.get(&format!("{dir}/{name}"), Some(rev)).await?;
        entries.push(NsEntry {
            name,
            addr: with_default_port(&String::from_utf8_lossy(&body)),
            rev,
        });
    }
    Ok(entries)
}

async fn write_loop(
    mut stream: Conn,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut buf = Vec::new();
    while let Some(frame) = queue.next().await {
        buf.clear();
        buf.extend_from_slice(&frame);
        while buf.len() < WRITE_BATCH_BYTES {
            match queue.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        let written = match stream.write_all(&buf).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            shared.fail(Error::Connection(io_error_text(&e)));
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Hands one reply to whoever waits for its tag. A stream's frames are
/// queued for its caller (waiting while the queue is full); its last frame
/// (`DONE` or an error) frees the tag.
async fn deliver(shared: &Shared, tag: i32, resp: Response) {
    let last = resp.err_code.is_some() || resp.flags.unwrap_or(0) & flags::DONE != 0;
    let mut stream = {
        let mut st = shared.lock();
        match st.pending.get_mut(&tag) {
            None => {
                drop(st);
                log::warn!("doozer client: reply for unknown tag {tag}");
                return;
            }
            Some(Waiter::Stream(tx)) => {
                let tx = tx.clone();
                if last {
                    st.pending.remove(&tag);
                }
                tx
            }
            Some(Waiter::Once(_)) => {
                if let Some(Waiter::Once(tx)) = st.pending.remove(&tag) {
                    let _ = tx.send(Ok(resp));
                }
                return;
            }
        }
    };
    if let Some(tx) = &mut stream {
        if tx.send(Ok(resp)).await.is_err() {
            // The caller gave up: drop the rest of its frames.
            if let Some(Waiter::Stream(tx)) = shared.lock().pending.get_mut(&tag) {
                *tx = None;
            }
        }
    }
}

async fn read_loop(stream: Conn, shared: Arc<Shared>) {
    // Buffered: pipelined replies come in with one read, not two per frame.
    let mut reader = futures::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream.clone());
    loop {
        let err = match read_message::<Response, _>(&mut reader, MAX_REPLY_BYTES).await {
            Ok(Some(resp)) => {
                let Some(tag) = resp.tag else {
                    log::warn!("doozer client: reply without a tag: {resp:?}");
                    continue;
                };
                deliver(&shared, tag, resp).await;
                continue;
            }
            Ok(None) => Error::Connection("EOF".into()),
            Err(FrameError::Decode(e)) => {
                log::warn!("doozer client: undecodable reply: {e}");
                continue;
            }
            Err(FrameError::Truncated) => Error::Connection("unexpected EOF".into()),
            Err(FrameError::Io(e)) => Error::Connection(io_error_text(&e)),
            Err(FrameError::TooLong { len, .. }) if !stream.is_tls() && looks_like_tls(len) => {
                Error::Connection(
                    "the server answered in TLS: it runs with -tlscert; connect with -tls-ca FILE \
                     (or DOOZER_TLS_CA, or tlsca= in the URI)"
                        .into(),
                )
            }
            Err(e) => Error::Protocol(e.to_string()),
        };
        shared.fail(err);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
}

/// Whether a frame length read from a plain-text connection is really the
/// start of a TLS record (content type 20–23, version 3.x): what a TLS
/// server sends a client that speaks plain text to it (an alert).
fn looks_like_tls(len: usize) -> bool {
    let [kind, major, minor, _] = (len as u32).to_be_bytes();
    (20..=23).contains(&kind) && major == 3 && minor <= 4
}

fn missing(verb: &str, field: &str) -> Error {
    Error::Protocol(format!("{verb} reply without {field}"))
}

fn event_of(verb: &str, resp: Response) -> Result<Event, Error> {
    Ok(Event {
        rev: resp.rev.ok_or_else(|| missing(verb, "rev"))?,
        path: resp.path.ok_or_else(|| missing(verb, "path"))?,
        body: resp.value.unwrap_or_default(),
        flags: resp.flags.ok_or_else(|| missing(verb, "flags"))? & (flags::SET | flags::DEL),
    })
}

/// A small builder for requests.
struct Req(Request);

fn req(verb: Verb) -> Req {
    Req(Request {
        verb: Some(verb as i32),
        ..Request::default()
    })
}

impl Req {
    fn path(mut self, path: &str) -> Req {
        self.0.path = Some(path.to_string());
        self
    }

    fn rev(mut self, rev: i64) -> Req {
        self.0.rev = Some(rev);
        self
    }

    fn rev_opt(mut self, rev: Option<i64>) -> Req {
        self.0.rev = rev;
        self
    }

    fn value(mut self, value: Vec<u8>) -> Req {
        self.0.value = Some(value);
        self
    }

    fn offset(mut self, offset: i32) -> Req {
        self.0.offset = Some(offset);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::client::read_message;
    use crate::runtime::rt::{block_on, sleep, TcpListener};

    /// A tiny in-memory server: a flat map of files, WAIT answered by the next
    /// SET, replies to GET delayed so that they come out of order.
    async fn fake_server(listener: TcpListener, close_after: Option<usize>) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = stream.clone();
        let writer = Arc::new(futures::lock::Mutex::new(stream.clone()));
        let mut files: HashMap<String, (Vec<u8>, i64)> = HashMap::new();
        let mut rev = 0i64;
        let mut waits: Vec<Request> = Vec::new();
        let mut seen = 0usize;
        while let Ok(Some(r)) = read_message::<Request, _>(&mut reader, 1 << 20).await {
            seen += 1;
            if close_after == Some(seen) {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            let mut resp = Response {
                tag: r.tag,
                ..Response::default()
            };
            let path = r.path.clone().unwrap_or_default();
            match Verb::try_from(r.verb.unwrap_or(0)) {
                Ok(Verb::Rev) => resp.rev = Some(rev),
                Ok(Verb::SelfId) => resp.value = Some(b"SELFID".to_vec()),
                Ok(Verb::Access) => {
                    if r.value.as_deref() != Some(b"good") {
                        resp = Response::error(r.tag, &ReplyError::permission_denied());
                    }
                }
                Ok(Verb::Set) => {
                    let cur = files.get(&path).map(|f| f.1).unwrap_or(0);
                    let want = r.rev.unwrap_or(-5);
                    if want != -1 && want < cur {
                        resp = Response::error(r.tag, &ErrCode::RevMismatch.into());
                    } else {
                        rev += 1;
                        files.insert(path.clone(), (r.value.clone().unwrap_or_default(), rev));
                        resp.rev = Some(rev);
                        for w in waits.drain(..) {
                            let ev = Response {
                                tag: w.tag,
                                rev: Some(rev),
                                path: Some(path.clone()),
                                value: r.value.clone(),
                                flags: Some(4),
                                ..Response::default()
                            };
                            writer
                                .lock()
                                .await
                                .write_all(&encode_frame(&ev))
                                .await
                                .unwrap();
                        }
                    }
                }
                Ok(Verb::Wait) => {
                    waits.push(r);
                    continue;
                }
                Ok(Verb::Get) => {
                    let (body, frev) = files.get(&path).cloned().unwrap_or_default();
                    resp.value = Some(body);
                    resp.rev = Some(frev);
                    // Answer later, from another task: out of order.
                    let writer = writer.clone();
                    spawn(async move {
                        sleep(Duration::from_millis(50)).await;
                        writer
                            .lock()
                            .await
                            .write_all(&encode_frame(&resp))
                            .await
                            .unwrap();
                    });
                    continue;
                }
                Ok(Verb::Stat) => match (path.as_str(), files.get(&path)) {
                    ("/", _) => {
                        resp.len = Some(files.len() as i32);
                        resp.rev = Some(-2);
                    }
                    (_, Some((body, frev))) => {
                        resp.len = Some(body.len() as i32);
                        resp.rev = Some(*frev);
                    }
                    _ => {
                        resp.len = Some(0);
                        resp.rev = Some(0);
                    }
                },
                Ok(Verb::Getdir) => {
                    let mut names: Vec<&String> = files.keys().collect();
                    names.sort();
                    match names.get(r.offset.unwrap_or(0) as usize) {
                        Some(name) => resp.path = Some(name[1..].to_string()),
                        None => resp = Response::error(r.tag, &ErrCode::Range.into()),
                    }
                }
                _ => resp = Response::error(r.tag, &ErrCode::UnknownVerb.into()),
            }
            writer
                .lock()
                .await
                .write_all(&encode_frame(&resp))
                .await
                .unwrap();
        }
    }

    async fn start(close_after: Option<usize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        spawn(fake_server(listener, close_after));
        addr
    }

    #[test]
    fn pipelined_calls_and_out_of_order_replies() {
        block_on(async {
            let addr = start(None).await;
            let c = Client::connect(&addr).await.unwrap();
            assert_eq!(c.rev().await.unwrap(), 0);
            assert_eq!(c.set("/a", 0, b"one").await.unwrap(), 1);
            let err = c.set("/a", 0, b"two").await.unwrap_err();
            assert!(err.is_rev_mismatch());
            assert_eq!(err.to_string(), "REV_MISMATCH");
            // A GET (answered late) and a REV in flight together.
            let (got, rev) = futures::join!(c.get("/a", None), c.rev());
            assert_eq!(got.unwrap(), (b"one".to_vec(), 1));
            assert_eq!(rev.unwrap(), 1);
            // A WAIT registered before a SET sees it.
            let waiter = c.clone();
            let w = spawn(async move { waiter.wait("/**", 2).await });
            sleep(Duration::from_millis(20)).await;
            assert_eq!(c.set("/b", -1, b"x").await.unwrap(), 2);
            let ev = w.await.unwrap();
            assert_eq!(
                (ev.path.as_str(), ev.rev, ev.kind(), ev.body.as_slice()),
                ("/b", 2, "set", &b"x"[..])
            );
            assert_eq!(c.self_id().await.unwrap(), b"SELFID");
            assert_eq!(c.stat("/a", None).await.unwrap(), (3, 1));
            assert_eq!(c.getdir_all("/", 2).await.unwrap(), ["a", "b"]);
            let tree = walk_tree_collect(&c, 2, "/").await;
            let paths: Vec<String> = tree
                .iter()
                .map(|v| match v {
                    Visit::Dir(p, _) => format!("d {p}"),
                    Visit::File(p, _) => format!("f {p}"),
                    Visit::Error(e) => format!("e {e}"),
                })
                .collect();
            assert_eq!(paths, ["d /", "f /a", "f /b"]);
            let tree = walk_tree_collect(&c, 2, "/nope").await;
            assert_eq!(tree, [Visit::Error(ErrCode::NoEnt.into())]);
            // A WAIT that never fires times out without harming the connection.
            let err = c
                .wait_timeout("/zzz", 100, Duration::from_millis(30))
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), "wait timeout");
            assert_eq!(c.rev().await.unwrap(), 2);
            c.close();
            assert_eq!(c.rev().await.unwrap_err(), Error::Closed);
        });
    }

    #[test]
    fn pending_calls_fail_when_the_connection_dies() {
        block_on(async {
            // The server hangs up on the third request; the WAIT pending since
            // the first must get an error, and so must every later call.
            let addr = start(Some(3)).await;
            let c = Client::connect(&addr).await.unwrap();
            let waiter = c.clone();
            let w = spawn(async move { waiter.wait("/x", 1).await });
            sleep(Duration::from_millis(20)).await;
            assert_eq!(c.rev().await.unwrap(), 0);
            let err = c.rev().await.unwrap_err();
            assert_eq!(err.to_string(), "EOF");
            assert_eq!(w.await.unwrap_err().to_string(), "EOF");
            assert_eq!(c.nop().await.unwrap_err().to_string(), "EOF");
        });
    }

    #[test]
    fn dial_uri_falls_through_and_sends_the_secret() {
        block_on(async {
            let dead = {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                l.local_addr().unwrap().to_string()
            };
            let addr = start(None).await;
            let uri = Uri::parse(&format!("doozer:?ca={dead}&ca={addr}&sk=good")).unwrap();
            let c = dial_uri(&uri, None).await.unwrap();
            assert_eq!(c.addr(), addr);
            assert_eq!(c.rev().await.unwrap(), 0);

            let addr = start(None).await;
            let err = dial_uri_str(&format!("doozer:?ca={addr}&sk=bad"), "")
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), "OTHER: permission denied");

            let err = dial_uri_str(&format!("doozer:?ca={dead}"), "")
                .await
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("dial tcp {dead}: connection refused")
            );
            assert_eq!(
                dial_uri_str("doozer:?cn=x", "")
                    .await
                    .unwrap_err()
                    .to_string(),
                "invalid uri"
            );
            assert_eq!(
                dial_uri_str("nope", "").await.unwrap_err().to_string(),
                "invalid uri"
            );
        });
    }

    #[test]
    fn dial_uri_with_an_empty_boot_lookup_is_an_error() {
        block_on(async {
            let boot = start(None).await;
            // The fake server has no /ctl/ns/<name>: GETDIR answers RANGE at
            // once, so the list is empty.
            let err = dial_uri_str("doozer:?cn=prod", &format!("doozer:?ca={boot}"))
                .await
                .unwrap_err();
            assert_eq!(err, Error::NoAddrs);
            assert_eq!(err.to_string(), "no known address");
        });
    }
}
