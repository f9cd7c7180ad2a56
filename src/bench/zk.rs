//! The ZooKeeper client protocol, as far as `doozer bench -zk` needs it:
//! the session handshake, `create`, `getData`, `setData`, `ping` and
//! `closeSession`.
//!
//! Why it is here: comparing doozer with ZooKeeper is only fair with the
//! *same* load generator (closed or open loop, pipelining, keys, threads,
//! histogram), so the bench speaks ZooKeeper's wire protocol itself rather
//! than timing a different client. Five requests need no client library
//! (and the build takes no new crate); written here they encode straight
//! into the driver's reused write buffer like the doozer requests do.
//!
//! Why it is pure: nothing here does I/O. Encoders append whole frames to
//! a `Vec`; decoders take one frame's body and return a value or a
//! [`ZkError`]; [`ZkWire`] is the [`Wire`] the generic
//! [`Driver`](super::driver::Driver) drives. So every encoding is tested
//! against bytes worked out by hand from the spec, and every decoder
//! against short and garbled input.
//!
//! The format is jute's (`zookeeper-jute/src/main/resources/zookeeper.jute`
//! in Apache ZooKeeper): integers big-endian (`int` 4 bytes, `long` 8,
//! `boolean` 1); a `buffer` or `ustring` is an `int` length then the bytes
//! (-1: null); a `vector` an `int` count then the items. Every message is
//! framed by a 4-byte big-endian length, as doozer's are, so the driver's
//! framing (and its bound on a frame's length) serves both.
//!
//! * Handshake: `ConnectRequest {int protocolVersion, long lastZxidSeen,
//!   int timeOut, long sessionId, buffer passwd, boolean readOnly}`, then
//!   `ConnectResponse` with the same fields bar `lastZxidSeen` (servers
//!   before 3.5 leave out `readOnly`; either is accepted). A time-out of 0
//!   in the response is a session refused.
//! * Request: `RequestHeader {int xid, int type}` then the body. Xids
//!   count 1, 2, 3, … per session, as ZooKeeper's own client sends them,
//!   rather than repeating the bench's tags; a reply answers the oldest
//!   request and so names its tag. Ping's xid is -2.
//! * Reply: `ReplyHeader {int xid, long zxid, int err}`, then the body if
//!   `err` is 0. Replies of one session come in request order; xid -2 is a
//!   ping's reply and -1 a watch event (the bench sets no watch), both
//!   ignored.
//!
//! Every byte from the server is taken as hostile: the driver refuses a
//! frame longer than the value size plus [`REPLY_SLACK_BYTES`] before
//! buffering it, and the decoders check every length against what is
//! there, so a short or garbled frame is an error, never a panic or an
//! allocation the server chose.

use std::collections::VecDeque;
use std::fmt::Write as _;

use super::driver::{Action, Reply, Wire};

/// A reply frame may be this much larger than the values the bench sends
/// (ZooKeeper's own bound on a packet, `jute.maxbuffer`, is 1 MiB less a
/// byte by default; a getData reply is its value, a 68-byte `Stat` and 24
/// bytes of headers).
pub const REPLY_SLACK_BYTES: usize = 1 << 20;

/// The largest value (`-size`) the ZooKeeper mode sends: far above what a
/// server takes by default (`jute.maxbuffer`), and small enough that every
/// length on the wire fits jute's `int`.
pub const MAX_VALUE_BYTES: usize = 256 << 20;

/// The largest handshake reply accepted (one is 37 bytes).
pub const MAX_CONNECT_RESPONSE_BYTES: usize = 4096;

/// The session time-out the bench asks for; the server clamps it to its
/// `minSessionTimeout`..`maxSessionTimeout` (by default 2 to 20 ticks,
/// 4 s to 40 s) and says which it chose.
pub const SESSION_TIMEOUT_MS: i32 = 30_000;

/// `ConnectRequest.protocolVersion`: the only one there is.
pub const PROTOCOL_VERSION: i32 = 0;

/// Bytes of the session password a client sends (zeros for a new session).
pub const PASSWD_BYTES: usize = 16;

/// Bytes of a serialized `Stat`: six longs and five ints.
pub const STAT_BYTES: usize = 6 * 8 + 5 * 4;

/// Bytes of a `ReplyHeader`.
pub const REPLY_HEADER_BYTES: usize = 4 + 8 + 4;

/// `RequestHeader.type` values (`ZooDefs.OpCode`).
pub mod opcode {
    pub const CREATE: i32 = 1;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const PING: i32 = 11;
    pub const CLOSE_SESSION: i32 = -11;
}

/// The xid of a ping and of its reply.
pub const PING_XID: i32 = -2;
/// The xid of a watch event.
pub const WATCH_XID: i32 = -1;

/// `ReplyHeader.err` values the bench acts on (`KeeperException.Code`).
pub mod code {
    pub const OK: i32 = 0;
    pub const NO_NODE: i32 = -101;
    pub const NODE_EXISTS: i32 = -110;
}

/// `ACL.perms` for every permission (read, write, create, delete, admin).
pub const PERMS_ALL: i32 = 31;

/// The name ZooKeeper gives an error code (`KeeperException.Code`).
pub fn error_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        -1 => "SystemError",
        -2 => "RuntimeInconsistency",
        -3 => "DataInconsistency",
        -4 => "ConnectionLoss",
        -5 => "MarshallingError",
        -6 => "Unimplemented",
        -7 => "OperationTimeout",
        -8 => "BadArguments",
        -12 => "UnknownSession",
        -13 => "NewConfigNoQuorum",
        -14 => "ReconfigInProgress",
        -100 => "APIError",
        -101 => "NoNode",
        -102 => "NoAuth",
        -103 => "BadVersion",
        -108 => "NoChildrenForEphemerals",
        -110 => "NodeExists",
        -111 => "NotEmpty",
        -112 => "SessionExpired",
        -113 => "InvalidCallback",
        -114 => "InvalidACL",
        -115 => "AuthFailed",
        -118 => "SessionMoved",
        -119 => "NotReadOnly",
        -120 => "EphemeralOnLocalSession",
        -121 => "NoWatcher",
        -122 => "RequestTimeout",
        -123 => "ReconfigDisabled",
        -124 => "SessionClosedRequireSaslAuth",
        -125 => "QuotaExceeded",
        -127 => "Throttled",
        _ => "unknown",
    }
}

/// The text of an error reply: `ZooKeeper error -101 (NoNode) on setData`.
pub fn error_text(code: i32, opcode: i32) -> String {
    let op = match opcode {
        opcode::CREATE => "create",
        opcode::GET_DATA => "getData",
        opcode::SET_DATA => "setData",
        opcode::CLOSE_SESSION => "closeSession",
        _ => "a request",
    };
    format!("ZooKeeper error {code} ({}) on {op}", error_name(code))
}

/// Why a frame from the server could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ZkError {
    /// The frame ends before a field does.
    #[error("{what} cut short: {need} bytes needed at offset {at}, {have} there")]
    Truncated {
        what: &'static str,
        at: usize,
        need: usize,
        have: usize,
    },
    /// A length field is negative (and not jute's -1 for null).
    #[error("{what} has a bad length {len}")]
    BadLength { what: &'static str, len: i32 },
    /// The server refused the session (it answers a session it will not
    /// have with a time-out of 0).
    #[error(
        "session refused by the server (time-out {timeout_ms} ms, session id {session_id:#x})"
    )]
    SessionRefused { timeout_ms: i32, session_id: i64 },
}

// ---------------------------------------------------------------------------
// Encoding.

fn put_int(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// A `buffer` or `ustring`: its length, then its bytes. Lengths are
/// bounded by the caller ([`MAX_VALUE_BYTES`], short paths).
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= i32::MAX as usize);
    put_int(out, bytes.len() as i32);
    out.extend_from_slice(bytes);
}

/// Starts a frame: a length to be filled in by [`end_frame`].
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end_frame(out: &mut [u8], at: usize) {
    let len = out.len() - at - 4;
    debug_assert!(len <= i32::MAX as usize);
    out[at..at + 4].copy_from_slice(&(len as i32).to_be_bytes());
}

/// Appends a `ConnectRequest` for a new session asking for `timeout_ms`.
pub fn encode_connect(timeout_ms: i32, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, PROTOCOL_VERSION);
    put_long(out, 0); // lastZxidSeen
    put_int(out, timeout_ms);
    put_long(out, 0); // sessionId: a new session
    put_bytes(out, &[0; PASSWD_BYTES]);
    put_bool(out, false); // readOnly
    end_frame(out, at);
}

/// Appends `create(path, data)`: a persistent znode open to all
/// (`world:anyone`, every permission).
pub fn encode_create(xid: i32, path: &str, data: &[u8], out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, xid);
    put_int(out, opcode::CREATE);
    put_bytes(out, path.as_bytes());
    put_bytes(out, data);
    put_int(out, 1); // one ACL
    put_int(out, PERMS_ALL);
    put_bytes(out, b"world");
    put_bytes(out, b"anyone");
    put_int(out, 0); // flags: persistent
    end_frame(out, at);
}

/// Appends `getData(path, watch)`.
pub fn encode_get_data(xid: i32, path: &str, watch: bool, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, xid);
    put_int(out, opcode::GET_DATA);
    put_bytes(out, path.as_bytes());
    put_bool(out, watch);
    end_frame(out, at);
}

/// Appends `setData(path, data, version)` (-1: whatever the version).
pub fn encode_set_data(xid: i32, path: &str, data: &[u8], version: i32, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, xid);
    put_int(out, opcode::SET_DATA);
    put_bytes(out, path.as_bytes());
    put_bytes(out, data);
    put_int(out, version);
    end_frame(out, at);
}

/// Appends a ping (no body).
pub fn encode_ping(out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, PING_XID);
    put_int(out, opcode::PING);
    end_frame(out, at);
}

/// Appends `closeSession` (no body): the server ends the session at once
/// instead of when it times out.
pub fn encode_close_session(xid: i32, out: &mut Vec<u8>) {
    let at = begin_frame(out);
    put_int(out, xid);
    put_int(out, opcode::CLOSE_SESSION);
    end_frame(out, at);
}

// ---------------------------------------------------------------------------
// Decoding.

/// Reads jute fields off a frame's body, checking each against what is
/// left.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, at: 0, what }
    }

    fn take(&mut self, need: usize) -> Result<&'a [u8], ZkError> {
        let have = self.buf.len() - self.at;
        if need > have {
            return Err(ZkError::Truncated {
                what: self.what,
                at: self.at,
                need,
                have,
            });
        }
        let bytes = &self.buf[self.at..self.at + need];
        self.at += need;
        Ok(bytes)
    }

    fn int(&mut self) -> Result<i32, ZkError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn long(&mut self) -> Result<i64, ZkError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn bool(&mut self) -> Result<bool, ZkError> {
        Ok(self.take(1)?[0] != 0)
    }

    /// A `buffer` or `ustring`; `None` for jute's null (length -1).
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, ZkError> {
        let len = self.int()?;
        match len {
            -1 => Ok(None),
            len if len < 0 => Err(ZkError::BadLength {
                what: self.what,
                len,
            }),
            len => self.take(len as usize).map(Some),
        }
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }
}

/// What the server said to a `ConnectRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub protocol_version: i32,
    /// The time-out the server chose; the session needs a ping when it has
    /// sent nothing for a third of it.
    pub timeout_ms: i32,
    pub session_id: i64,
    /// `None` from a server that leaves the field out (before 3.5).
    pub read_only: Option<bool>,
}

impl Session {
    /// How long a connection may stay silent before it pings, in
    /// nanoseconds: a third of the time-out, as ZooKeeper's own client
    /// does (at least a millisecond).
    pub fn ping_every_nanos(&self) -> u64 {
        (u64::try_from(self.timeout_ms).unwrap_or(0) * 1_000_000 / 3).max(1_000_000)
    }
}

/// Reads a `ConnectResponse` (a frame's body). A session the server
/// refused (a time-out of 0 or less) is an error.
pub fn parse_connect_response(body: &[u8]) -> Result<Session, ZkError> {
    let mut r = Reader::new(body, "connect response");
    let protocol_version = r.int()?;
    let timeout_ms = r.int()?;
    let session_id = r.long()?;
    let _passwd = r.bytes()?;
    let read_only = if r.rest().is_empty() {
        None
    } else {
        Some(r.bool()?)
    };
    if timeout_ms <= 0 {
        return Err(ZkError::SessionRefused {
            timeout_ms,
            session_id,
        });
    }
    Ok(Session {
        protocol_version,
        timeout_ms,
        session_id,
        read_only,
    })
}

/// A reply's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
}

/// Reads the header at the front of a reply frame's body; the rest is the
/// reply's body.
pub fn parse_reply_header(body: &[u8]) -> Result<(ReplyHeader, &[u8]), ZkError> {
    let mut r = Reader::new(body, "reply header");
    let header = ReplyHeader {
        xid: r.int()?,
        zxid: r.long()?,
        err: r.int()?,
    };
    Ok((header, r.rest()))
}

/// Checks the body of a successful reply to a request of `opcode`: what
/// ZooKeeper sends is there (a `create` its path, a `getData` the data
/// and a `Stat`, a `setData` a `Stat`). Bytes after it are ignored, as
/// ZooKeeper's own client does.
pub fn check_reply_body(opcode: i32, body: &[u8]) -> Result<(), ZkError> {
    match opcode {
        opcode::CREATE => {
            let mut r = Reader::new(body, "create reply");
            r.bytes()?;
        }
        opcode::GET_DATA => {
            let mut r = Reader::new(body, "getData reply");
            r.bytes()?;
            r.take(STAT_BYTES)?;
        }
        opcode::SET_DATA => {
            Reader::new(body, "setData reply").take(STAT_BYTES)?;
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The bench's side.

/// The opcode the bench sends for `action`.
pub fn opcode_of(action: Action) -> i32 {
    match action {
        Action::Set => opcode::SET_DATA,
        Action::Get => opcode::GET_DATA,
        Action::Create => opcode::CREATE,
    }
}

/// The ZooKeeper [`Wire`] of one session: SET is `setData` at version -1,
/// GET is `getData` without a watch, CREATE is `create` (a znode already
/// there counts as done). Keys are `<prefix>/<n>`.
pub struct ZkWire {
    prefix: String,
    path: String,
    value: Vec<u8>,
    /// Requests sent and not answered, oldest first: (xid, tag, opcode).
    /// A session's replies come in request order, so the front is the one
    /// the next reply answers; at most the pacer's slots
    /// ([`super::MAX_PIPELINE`]).
    outstanding: VecDeque<(i32, u32, i32)>,
    /// The xid of the next request: 1, 2, 3, … as ZooKeeper's own client
    /// numbers them (the pacer's tags repeat, which no real client does).
    next_xid: i32,
    ping_every: u64,
}

impl ZkWire {
    /// `ping_every`: nanoseconds of silence before a ping
    /// ([`Session::ping_every_nanos`]). `value.len()` is at most
    /// [`MAX_VALUE_BYTES`].
    pub fn new(prefix: &str, value: &[u8], ping_every: u64) -> ZkWire {
        assert!(
            value.len() <= MAX_VALUE_BYTES,
            "value of {} bytes",
            value.len()
        );
        ZkWire {
            prefix: prefix.to_string(),
            path: String::new(),
            value: value.to_vec(),
            outstanding: VecDeque::new(),
            next_xid: 1,
            ping_every,
        }
    }
}

impl Wire for ZkWire {
    const REPLY_SLACK_BYTES: usize = REPLY_SLACK_BYTES;

    fn encode(&mut self, action: Action, key: u64, tag: u32, out: &mut Vec<u8>) {
        self.path.clear();
        let _ = write!(self.path, "{}/{key}", self.prefix);
        let xid = self.next_xid;
        // Past i32::MAX: back to 1 (0 and the negatives are special xids).
        self.next_xid = self.next_xid.checked_add(1).unwrap_or(1);
        let op = opcode_of(action);
        self.outstanding.push_back((xid, tag, op));
        match action {
            Action::Set => encode_set_data(xid, &self.path, &self.value, -1, out),
            Action::Get => encode_get_data(xid, &self.path, false, out),
            Action::Create => encode_create(xid, &self.path, &self.value, out),
        }
    }

    fn reply(&mut self, body: &[u8]) -> Result<Reply, String> {
        let (head, rest) = parse_reply_header(body).map_err(|e| e.to_string())?;
        if head.xid == PING_XID || head.xid == WATCH_XID {
            return Ok(Reply::Ignore);
        }
        let Some((xid, tag, op)) = self.outstanding.pop_front() else {
            return Err(format!("a reply (xid {}) to no request", head.xid));
        };
        if head.xid != xid {
            return Err(format!(
                "a reply with xid {} where the oldest request has xid {xid}",
                head.xid
            ));
        }
        let error = match head.err {
            code::OK => {
                check_reply_body(op, rest).map_err(|e| e.to_string())?;
                None
            }
            code::NODE_EXISTS if op == opcode::CREATE => None,
            err => Some(error_text(err, op)),
        };
        Ok(Reply::Answer {
            tag: tag as i32,
            error,
        })
    }

    fn keepalive_nanos(&self) -> Option<u64> {
        Some(self.ping_every)
    }

    fn encode_keepalive(&mut self, out: &mut Vec<u8>) {
        encode_ping(out);
    }
}

/// A tiny ZooKeeper server for tests: std threads, a map of znodes, the
/// requests the bench sends and nothing else. It decodes every request
/// strictly (any field out of place is a violation, recorded, and the
/// connection closed), so it checks the encoders a second way.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// How the server misbehaves, if it does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        /// Answers as ZooKeeper does.
        Honest,
        /// Answers the handshake with 10 bytes.
        CutHandshake,
        /// Announces a reply of 2 GiB for every setData or getData.
        HugeReply,
        /// Answers every setData or getData with a 3-byte frame.
        ShortReply,
        /// Answers every setData with a `Stat` cut to 10 bytes.
        ShortStat,
    }

    /// What the server saw.
    #[derive(Clone, Debug, Default)]
    pub struct Seen {
        pub sessions: u32,
        pub creates: u32,
        pub sets: u32,
        pub gets: u32,
        pub pings: u32,
        pub closes: u32,
        /// Requests answered NoNode.
        pub no_node: u32,
        pub znodes: BTreeMap<String, Vec<u8>>,
        pub violations: Vec<String>,
    }

    pub struct FakeZk {
        pub addr: SocketAddr,
        seen: Arc<Mutex<Seen>>,
        accept: std::thread::JoinHandle<()>,
    }

    impl FakeZk {
        /// Serves up to `conns` connections accepted within 10 s on `ip`,
        /// granting sessions of at most `timeout_ms`.
        pub fn start(ip: &str, conns: usize, mode: Mode, timeout_ms: i32) -> FakeZk {
            let listener = TcpListener::bind((ip, 0)).unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Seen::default()));
            let shared = seen.clone();
            let accept = std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut served = Vec::new();
                while served.len() < conns && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            let seen = shared.clone();
                            served.push(std::thread::spawn(move || {
                                serve(sock, mode, timeout_ms, &seen)
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                for t in served {
                    let _ = t.join();
                }
            });
            FakeZk { addr, seen, accept }
        }

        /// Waits until every connection has ended; what the server saw.
        pub fn finish(self) -> Seen {
            self.accept.join().unwrap();
            let seen = self.seen.lock().unwrap().clone();
            seen
        }
    }

    fn read_frame(sock: &mut TcpStream) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        sock.read_exact(&mut header).ok()?;
        let len = usize::try_from(i32::from_be_bytes(header)).ok()?;
        if len > 4 << 20 {
            return None;
        }
        let mut body = vec![0; len];
        sock.read_exact(&mut body).ok()?;
        Some(body)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn reply(xid: i32, err: i32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_int(&mut out, xid);
        put_long(&mut out, 42); // zxid
        put_int(&mut out, err);
        out.extend_from_slice(body);
        framed(&out)
    }

    fn text(bytes: Option<&[u8]>) -> String {
        String::from_utf8_lossy(bytes.unwrap_or(b"<null>")).into_owned()
    }

    /// One request's answer, or a violation.
    fn answer(body: &[u8], mode: Mode, seen: &Mutex<Seen>) -> Result<(Vec<u8>, bool), String> {
        let mut r = Reader::new(body, "request");
        let xid = r.int().map_err(|e| e.to_string())?;
        let op = r.int().map_err(|e| e.to_string())?;
        let e = |e: ZkError| e.to_string();
        let mut seen = seen.lock().unwrap();
        let out = match op {
            opcode::CREATE => {
                let path = text(r.bytes().map_err(e)?);
                let data = r.bytes().map_err(e)?.unwrap_or_default().to_vec();
                let acls = r.int().map_err(e)?;
                let perms = r.int().map_err(e)?;
                let scheme = text(r.bytes().map_err(e)?);
                let id = text(r.bytes().map_err(e)?);
                let flags = r.int().map_err(e)?;
                if (acls, perms, scheme.as_str(), id.as_str(), flags)
                    != (1, 31, "world", "anyone", 0)
                {
                    return Err(format!(
                        "create {path}: acl {acls} {perms} {scheme}:{id} flags {flags}"
                    ));
                }
                seen.creates += 1;
                let mut body = Vec::new();
                put_bytes(&mut body, path.as_bytes());
                match seen.znodes.entry(path) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        reply(xid, code::NODE_EXISTS, b"")
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(data);
                        reply(xid, code::OK, &body)
                    }
                }
            }
            opcode::SET_DATA | opcode::GET_DATA => {
                let path = text(r.bytes().map_err(e)?);
                let data = if op == opcode::SET_DATA {
                    let data = r.bytes().map_err(e)?.unwrap_or_default().to_vec();
                    let version = r.int().map_err(e)?;
                    if version != -1 {
                        return Err(format!("setData {path} at version {version}"));
                    }
                    seen.sets += 1;
                    Some(data)
                } else {
                    if r.bool().map_err(e)? {
                        return Err(format!("getData {path} with a watch"));
                    }
                    seen.gets += 1;
                    None
                };
                match mode {
                    Mode::HugeReply => i32::MAX.to_be_bytes().to_vec(),
                    Mode::ShortReply => framed(&[1, 2, 3]),
                    Mode::ShortStat if op == opcode::SET_DATA => reply(xid, code::OK, &[0; 10]),
                    _ => match (seen.znodes.get_mut(&path), data) {
                        (None, _) => {
                            seen.no_node += 1;
                            reply(xid, code::NO_NODE, b"")
                        }
                        (Some(held), Some(data)) => {
                            *held = data;
                            reply(xid, code::OK, &[0; STAT_BYTES])
                        }
                        (Some(held), None) => {
                            let mut body = Vec::new();
                            put_bytes(&mut body, held);
                            body.extend_from_slice(&[0; STAT_BYTES]);
                            reply(xid, code::OK, &body)
                        }
                    },
                }
            }
            opcode::PING if xid == PING_XID => {
                seen.pings += 1;
                reply(PING_XID, code::OK, b"")
            }
            opcode::CLOSE_SESSION => {
                seen.closes += 1;
                return Ok((reply(xid, code::OK, b""), true));
            }
            op => return Err(format!("request type {op}, xid {xid}")),
        };
        if !r.rest().is_empty() {
            return Err(format!(
                "{} bytes after a request of type {op}",
                r.rest().len()
            ));
        }
        Ok((out, false))
    }

    fn serve(mut sock: TcpStream, mode: Mode, timeout_ms: i32, seen: &Mutex<Seen>) {
        let _ = sock.set_nonblocking(false);
        let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
        let violation = |text: String| seen.lock().unwrap().violations.push(text);
        let Some(hello) = read_frame(&mut sock) else {
            return;
        };
        let mut r = Reader::new(&hello, "connect request");
        let fields = (|| {
            let version = r.int()?;
            let zxid = r.long()?;
            let asked = r.int()?;
            let session = r.long()?;
            let passwd = r.bytes()?.map(<[u8]>::to_vec);
            let read_only = r.bool()?;
            Ok::<_, ZkError>((version, zxid, asked, session, passwd, read_only))
        })();
        let asked = match fields {
            Ok((0, 0, asked, 0, Some(passwd), false))
                if passwd == [0; 16] && r.rest().is_empty() =>
            {
                asked
            }
            other => return violation(format!("connect request {other:?}")),
        };
        seen.lock().unwrap().sessions += 1;
        let mut resp = Vec::new();
        put_int(&mut resp, 0);
        put_int(&mut resp, asked.min(timeout_ms));
        put_long(&mut resp, 0x100 + i64::from(seen.lock().unwrap().sessions));
        put_bytes(&mut resp, &[7; 16]);
        put_bool(&mut resp, false);
        let resp = if mode == Mode::CutHandshake {
            framed(&resp[..10])
        } else {
            framed(&resp)
        };
        if sock.write_all(&resp).is_err() {
            return;
        }
        while let Some(body) = read_frame(&mut sock) {
            match answer(&body, mode, seen) {
                Ok((out, last)) => {
                    if sock.write_all(&out).is_err() || last {
                        return;
                    }
                }
                Err(text) => return violation(text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written out by hand: each item a big-endian field.
    fn be(fields: &[&[u8]]) -> Vec<u8> {
        fields.concat()
    }

    #[test]
    fn connect_request_golden_bytes() {
        let mut out = Vec::new();
        encode_connect(30_000, &mut out);
        // 4 protocolVersion + 8 lastZxidSeen + 4 timeOut + 8 sessionId
        // + 4 + 16 passwd + 1 readOnly = 45 bytes of body.
        let want = be(&[
            &[0, 0, 0, 45],
            &[0, 0, 0, 0],
            &[0; 8],
            &[0x00, 0x00, 0x75, 0x30], // 30000
            &[0; 8],
            &[0, 0, 0, 16],
            &[0; 16],
            &[0],
        ]);
        assert_eq!(out, want);
    }

    #[test]
    fn create_golden_bytes() {
        let mut out = vec![0xAA]; // appended after what is there
        encode_create(7, "/b/1", b"xy", &mut out);
        // xid 4 + type 4 + path 4+4 + data 4+2 + acl count 4 + perms 4
        // + "world" 4+5 + "anyone" 4+6 + flags 4 = 53.
        let want = be(&[
            &[0xAA],
            &[0, 0, 0, 53],
            &[0, 0, 0, 7],
            &[0, 0, 0, 1],
            &[0, 0, 0, 4],
            b"/b/1",
            &[0, 0, 0, 2],
            b"xy",
            &[0, 0, 0, 1],
            &[0, 0, 0, 31],
            &[0, 0, 0, 5],
            b"world",
            &[0, 0, 0, 6],
            b"anyone",
            &[0, 0, 0, 0],
        ]);
        assert_eq!(out, want);
    }

    #[test]
    fn get_data_golden_bytes() {
        let mut out = Vec::new();
        encode_get_data(258, "/bench/42", false, &mut out);
        // xid 4 + type 4 + path 4+9 + watch 1 = 22.
        let want = be(&[
            &[0, 0, 0, 22],
            &[0, 0, 1, 2],
            &[0, 0, 0, 4],
            &[0, 0, 0, 9],
            b"/bench/42",
            &[0],
        ]);
        assert_eq!(out, want);
        let mut out = Vec::new();
        encode_get_data(0, "/", true, &mut out);
        assert_eq!(
            out,
            be(&[
                &[0, 0, 0, 14],
                &[0; 4],
                &[0, 0, 0, 4],
                &[0, 0, 0, 1],
                b"/",
                &[1]
            ])
        );
    }

    #[test]
    fn set_data_golden_bytes() {
        let mut out = Vec::new();
        encode_set_data(0x01020304, "/k", b"abc", -1, &mut out);
        // xid 4 + type 4 + path 4+2 + data 4+3 + version 4 = 25.
        let want = be(&[
            &[0, 0, 0, 25],
            &[1, 2, 3, 4],
            &[0, 0, 0, 5],
            &[0, 0, 0, 2],
            b"/k",
            &[0, 0, 0, 3],
            b"abc",
            &[0xff, 0xff, 0xff, 0xff],
        ]);
        assert_eq!(out, want);
        // An empty value is a zero length, not null.
        let mut out = Vec::new();
        encode_set_data(1, "/k", b"", 5, &mut out);
        assert_eq!(&out[18..], &[0, 0, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn ping_and_close_golden_bytes() {
        let mut out = Vec::new();
        encode_ping(&mut out);
        assert_eq!(
            out,
            be(&[&[0, 0, 0, 8], &[0xff, 0xff, 0xff, 0xfe], &[0, 0, 0, 11]])
        );
        let mut out = Vec::new();
        encode_close_session(3, &mut out);
        assert_eq!(
            out,
            be(&[&[0, 0, 0, 8], &[0, 0, 0, 3], &[0xff, 0xff, 0xff, 0xf5]])
        );
    }

    /// A ConnectResponse body, with or without `readOnly`.
    fn connect_response(timeout_ms: i32, read_only: Option<bool>) -> Vec<u8> {
        let mut body = be(&[
            &[0, 0, 0, 0],
            &timeout_ms.to_be_bytes(),
            &[0, 0, 0, 0, 0, 0, 0x12, 0x34],
            &[0, 0, 0, 16],
            &[9; 16],
        ]);
        if let Some(ro) = read_only {
            body.push(u8::from(ro));
        }
        body
    }

    #[test]
    fn connect_response_parsing() {
        let s = parse_connect_response(&connect_response(30_000, Some(false))).unwrap();
        assert_eq!(
            s,
            Session {
                protocol_version: 0,
                timeout_ms: 30_000,
                session_id: 0x1234,
                read_only: Some(false),
            }
        );
        assert_eq!(s.ping_every_nanos(), 10_000_000_000);
        let s = parse_connect_response(&connect_response(4000, None)).unwrap();
        assert_eq!((s.timeout_ms, s.read_only), (4000, None));
        assert!(matches!(
            parse_connect_response(&connect_response(0, Some(false))),
            Err(ZkError::SessionRefused { timeout_ms: 0, .. })
        ));
        // Every cut short of the password is an error, not a panic.
        let whole = connect_response(30_000, None);
        for len in 0..whole.len() {
            assert!(
                matches!(
                    parse_connect_response(&whole[..len]),
                    Err(ZkError::Truncated { .. })
                ),
                "cut at {len}"
            );
        }
        // A password length pointing past the end, or negative.
        let mut bad = whole.clone();
        bad[16..20].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            parse_connect_response(&bad),
            Err(ZkError::Truncated { .. })
        ));
        bad[16..20].copy_from_slice(&(-7i32).to_be_bytes());
        assert_eq!(
            parse_connect_response(&bad),
            Err(ZkError::BadLength {
                what: "connect response",
                len: -7
            })
        );
    }

    fn reply(xid: i32, err: i32, body: &[u8]) -> Vec<u8> {
        be(&[
            &xid.to_be_bytes(),
            &[0, 0, 0, 0, 0, 0, 1, 0],
            &err.to_be_bytes(),
            body,
        ])
    }

    fn stat() -> Vec<u8> {
        vec![0x5a; STAT_BYTES]
    }

    #[test]
    fn reply_header_and_bodies() {
        let frame = reply(5, 0, b"zz");
        let (h, rest) = parse_reply_header(&frame).unwrap();
        assert_eq!(
            h,
            ReplyHeader {
                xid: 5,
                zxid: 256,
                err: 0
            }
        );
        assert_eq!(rest, b"zz");
        for len in 0..REPLY_HEADER_BYTES {
            assert!(parse_reply_header(&reply(5, 0, b"")[..len]).is_err());
        }

        let get = be(&[&[0, 0, 0, 3], b"abc", &stat()]);
        check_reply_body(opcode::GET_DATA, &get).unwrap();
        // Null data (length -1) is a legal getData reply.
        check_reply_body(opcode::GET_DATA, &be(&[&[0xff; 4], &stat()])).unwrap();
        for len in 0..get.len() {
            assert!(
                check_reply_body(opcode::GET_DATA, &get[..len]).is_err(),
                "{len}"
            );
        }
        let huge = be(&[&0x7fff_fff0i32.to_be_bytes(), b"abc", &stat()]);
        assert!(check_reply_body(opcode::GET_DATA, &huge).is_err());
        let negative = be(&[&(-2i32).to_be_bytes(), &stat()]);
        assert!(check_reply_body(opcode::GET_DATA, &negative).is_err());

        check_reply_body(opcode::SET_DATA, &stat()).unwrap();
        assert!(check_reply_body(opcode::SET_DATA, &stat()[1..]).is_err());
        check_reply_body(opcode::CREATE, &be(&[&[0, 0, 0, 2], b"/a"])).unwrap();
        assert!(check_reply_body(opcode::CREATE, &[0, 0, 0, 2, b'/']).is_err());
        assert!(check_reply_body(opcode::CREATE, &[]).is_err());
    }

    /// Requests carry xids 1, 2, 3, … whatever the pacer's tags (which
    /// repeat), as ZooKeeper's own client numbers them.
    #[test]
    fn wire_numbers_requests_from_one_whatever_the_tags() {
        let mut w = ZkWire::new("/bench", b"vv", 1_000_000);
        let mut out = Vec::new();
        w.encode(Action::Set, 12, 3, &mut out);
        let mut want = Vec::new();
        encode_set_data(1, "/bench/12", b"vv", -1, &mut want);
        assert_eq!(out, want);
        out.clear();
        w.encode(Action::Get, 0, 0, &mut out);
        want.clear();
        encode_get_data(2, "/bench/0", false, &mut want);
        assert_eq!(out, want);
        out.clear();
        w.encode(Action::Create, 999, 0, &mut out);
        want.clear();
        encode_create(3, "/bench/999", b"vv", &mut want);
        assert_eq!(out, want);
        assert_eq!(w.keepalive_nanos(), Some(1_000_000));
        out.clear();
        w.encode_keepalive(&mut out);
        assert_eq!(&out[4..8], &PING_XID.to_be_bytes());
        // Past i32::MAX the xids start again at 1, never 0 or negative.
        w.next_xid = i32::MAX;
        out.clear();
        w.encode(Action::Get, 0, 0, &mut out);
        assert_eq!(&out[4..8], &i32::MAX.to_be_bytes());
        out.clear();
        w.encode(Action::Get, 0, 0, &mut out);
        assert_eq!(&out[4..8], &1i32.to_be_bytes());
    }

    #[test]
    fn wire_reads_replies_in_request_order() {
        let mut w = ZkWire::new("/bench", b"vv", 1_000_000);
        let mut sink = Vec::new();
        // Tags 5, 0, 5 go out as xids 1, 2, 3.
        w.encode(Action::Set, 1, 5, &mut sink);
        w.encode(Action::Get, 1, 0, &mut sink);
        w.encode(Action::Create, 1, 5, &mut sink);
        let ok = |tag| Ok(Reply::Answer { tag, error: None });

        assert_eq!(w.reply(&reply(1, 0, &stat())), ok(5));
        // Pings' replies and watch events answer nothing, in between too.
        assert_eq!(w.reply(&reply(PING_XID, 0, b"")), Ok(Reply::Ignore));
        assert_eq!(
            w.reply(&reply(WATCH_XID, 0, b"anything")),
            Ok(Reply::Ignore)
        );
        let get = be(&[&[0, 0, 0, 2], b"vv", &stat()]);
        assert_eq!(w.reply(&reply(2, 0, &get)), ok(0));
        assert_eq!(w.reply(&reply(3, 0, &be(&[&[0, 0, 0, 2], b"/x"]))), ok(5));

        // A znode already there is what a create wants; NoNode is not, nor
        // NodeExists for anything else.
        w.encode(Action::Create, 1, 1, &mut sink);
        w.encode(Action::Set, 1, 2, &mut sink);
        w.encode(Action::Get, 1, 3, &mut sink);
        assert_eq!(w.reply(&reply(4, code::NODE_EXISTS, b"")), ok(1));
        assert_eq!(
            w.reply(&reply(5, code::NO_NODE, b"")),
            Ok(Reply::Answer {
                tag: 2,
                error: Some("ZooKeeper error -101 (NoNode) on setData".into())
            })
        );
        assert_eq!(
            w.reply(&reply(6, code::NODE_EXISTS, b"")),
            Ok(Reply::Answer {
                tag: 3,
                error: Some("ZooKeeper error -110 (NodeExists) on getData".into())
            })
        );

        // A reply to nothing, or out of order, is a protocol error.
        let err = w.reply(&reply(7, 0, b"")).unwrap_err();
        assert!(err.contains("to no request"), "{err}");
        w.encode(Action::Get, 1, 0, &mut sink);
        let err = w.reply(&reply(9, 0, b"")).unwrap_err();
        assert!(err.contains("oldest request has xid 7"), "{err}");

        // Garbled: a short header, a short body, a bad length.
        let err = w.reply(&[0, 0, 0]).unwrap_err();
        assert!(err.starts_with("reply header cut short"), "{err}");
        w.encode(Action::Set, 1, 0, &mut sink);
        let err = w.reply(&reply(8, 0, &stat()[..10])).unwrap_err();
        assert!(err.starts_with("setData reply cut short"), "{err}");
        w.encode(Action::Get, 1, 0, &mut sink);
        let err = w.reply(&reply(9, 0, &[0x80, 0, 0, 0])).unwrap_err();
        assert!(err.contains("bad length"), "{err}");
    }

    /// Random bytes never make a decoder panic.
    #[test]
    fn garbage_never_panics() {
        let mut w = ZkWire::new("/b", b"", 1);
        let mut sink = Vec::new();
        for tag in 0..4 {
            w.encode(Action::Get, 0, tag, &mut sink);
        }
        for round in 0..20_000 {
            let len = (rand::random::<u32>() % 120) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            if round % 2 == 0 && len >= 4 {
                // A small xid, so the body checks run too.
                buf[..4].copy_from_slice(&(round % 5i32).to_be_bytes());
                if len >= 16 {
                    buf[12..16].copy_from_slice(&[0; 4]);
                }
            }
            let _ = parse_connect_response(&buf);
            let _ = w.reply(&buf);
            for op in [opcode::CREATE, opcode::GET_DATA, opcode::SET_DATA] {
                let _ = check_reply_body(op, &buf);
            }
        }
    }

    #[test]
    fn error_names() {
        assert_eq!(error_name(code::NO_NODE), "NoNode");
        assert_eq!(error_name(code::NODE_EXISTS), "NodeExists");
        assert_eq!(error_name(-112), "SessionExpired");
        assert_eq!(error_name(12345), "unknown");
        assert_eq!(
            error_text(-103, opcode::SET_DATA),
            "ZooKeeper error -103 (BadVersion) on setData"
        );
    }
}
