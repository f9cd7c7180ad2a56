//! One bench connection, driven by one future with no helper tasks.
//!
//! The bench shares its machine with the servers it measures, so every
//! cycle it spends is taken from them. The general [`crate::client::Client`]
//! runs a reader and a writer task per connection and hands every reply to
//! its caller through a oneshot channel and a mutex-guarded map: several
//! wake-ups and allocations per request. Here one future owns the
//! connection: it encodes requests straight into one reused buffer
//! (the path in a reused `String`, the value set once), writes what is
//! queued with one `write`, reads replies in 64 KiB batches, decodes only
//! their tag and error code ([`ReplyHead`]), and sends the next requests
//! in the same wake-up, so a reply and the request it lets out cost no
//! task switch. Reading and writing are polled side by side, so a full
//! socket in one direction never stops the other (no deadlock with large
//! values). [`Pacer`] decides what goes out when.
//!
//! What is particular to a protocol is behind [`Wire`]: encoding a request,
//! reading a reply frame, and a keep-alive when the connection has been
//! silent too long. [`DoozerWire`] speaks doozer; [`super::zk::ZkWire`]
//! ZooKeeper (whose handshake is done before the driver starts). The
//! driver is generic over it, so each protocol gets its own compiled hot
//! loop and the pacing, histogram and report are shared.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use prost::Message;

use super::histogram::LatencyHistogram;
use super::pacer::Pacer;
use super::{Op, GRACE};
use crate::client::io_error_text;
use crate::codec::client::{
    encode_frame_into, frame_len, ReplyHead, Request, Response, Verb, HEADER_BYTES,
};
use crate::runtime::conn::Conn;
use crate::runtime::rt::Timer;

/// Bytes read from the socket at once (the read buffer's size unless one
/// reply is larger).
pub const READ_CHUNK_BYTES: usize = 64 << 10;

/// A reply may be this much larger than the values the bench sends (a GET
/// reply carries a value; an error reply a short text). Anything longer is
/// a protocol error, so a confused server cannot make the bench buffer
/// more than `size + REPLY_SLACK_BYTES`.
pub const REPLY_SLACK_BYTES: usize = 64 << 10;

/// Rounds of read-and-send one poll may take before yielding to the other
/// connections of its thread.
const POLL_BUDGET: usize = 32;

/// Progress counters shared with the reporting thread (updated once per
/// wake-up, not per request).
#[derive(Debug, Default)]
pub struct Live {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// Which key each request names.
pub enum Keys {
    /// A random key of `count` (the timed part).
    Random { rng: Rng, count: u64 },
    /// Every key once, in order, shared by all connections (the fill).
    Sequential { next: Arc<AtomicU64>, count: u64 },
}

impl Keys {
    fn next(&mut self) -> Option<u64> {
        match self {
            Keys::Random { rng, count } => Some(rng.below(*count)),
            Keys::Sequential { next, count } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                (n < *count).then_some(n)
            }
        }
    }
}

/// What one request does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Writes the value whatever the key holds (doozer SET at rev -1,
    /// ZooKeeper setData at version -1).
    Set,
    /// Reads the key (doozer GET, ZooKeeper getData without a watch).
    Get,
    /// Makes the key with the value; a key already there counts as done
    /// (ZooKeeper create: its setData fails on a missing znode). Doozer
    /// never needs it (its SET makes a missing file) and encodes it as SET.
    Create,
}

/// One reply, as a [`Wire`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer to the request tagged `tag`: done, or the error to show.
    Answer { tag: i32, error: Option<String> },
    /// A frame that answers no request of the bench (a keep-alive's reply,
    /// an event).
    Ignore,
}

/// What is particular to a protocol on a connection already set up: how a
/// request is encoded and a reply read. Both protocols frame messages with
/// a 4-byte big-endian length, which the [`Driver`] checks (against the
/// value size plus [`Wire::REPLY_SLACK_BYTES`]) before buffering a frame;
/// a `Wire` sees whole frames only. The driver is generic over it, so the
/// doozer path pays no dynamic dispatch.
pub trait Wire: Unpin {
    /// How much larger than the values the bench sends a reply frame may
    /// be before it is a protocol error.
    const REPLY_SLACK_BYTES: usize;

    /// Appends one request frame, `action` on key number `key`, tagged
    /// `tag` (a tag is never reused before its reply came or the request
    /// was given up).
    fn encode(&mut self, action: Action, key: u64, tag: u32, out: &mut Vec<u8>);

    /// Reads one reply frame's body (the bytes after the length). `Err` is
    /// a protocol error that ends the connection; a request that failed is
    /// an `Answer` with an error.
    fn reply(&mut self, body: &[u8]) -> Result<Reply, String>;

    /// How long the connection may send nothing before the server needs a
    /// keep-alive, in nanoseconds (`None`: never).
    fn keepalive_nanos(&self) -> Option<u64> {
        None
    }

    /// Appends a keep-alive frame, whose reply is a [`Reply::Ignore`].
    fn encode_keepalive(&mut self, _out: &mut Vec<u8>) {}
}

/// The doozer protocol: protobuf requests and replies, reusing one
/// `Request` per verb (the path in its reused `String`, the value set
/// once); of a reply only the tag and error code are decoded
/// ([`ReplyHead`]) unless it is an error.
pub struct DoozerWire {
    prefix: String,
    set: Request,
    get: Request,
}

impl DoozerWire {
    pub fn new(prefix: &str, value: &[u8]) -> DoozerWire {
        DoozerWire {
            prefix: prefix.to_string(),
            set: Request {
                verb: Some(Verb::Set as i32),
                path: Some(String::new()),
                value: Some(value.to_vec()),
                rev: Some(-1),
                ..Request::default()
            },
            get: Request {
                verb: Some(Verb::Get as i32),
                path: Some(String::new()),
                ..Request::default()
            },
        }
    }
}

impl Wire for DoozerWire {
    const REPLY_SLACK_BYTES: usize = REPLY_SLACK_BYTES;

    fn encode(&mut self, action: Action, key: u64, tag: u32, out: &mut Vec<u8>) {
        let req = match action {
            Action::Set | Action::Create => &mut self.set,
            Action::Get => &mut self.get,
        };
        let path = req.path.get_or_insert_with(String::new);
        path.clear();
        let _ = write!(path, "{}/{key}", self.prefix);
        req.tag = Some(tag as i32);
        encode_frame_into(req, out);
    }

    fn reply(&mut self, body: &[u8]) -> Result<Reply, String> {
        let head = ReplyHead::decode(body).map_err(|e| format!("undecodable reply: {e}"))?;
        let tag = head.tag.ok_or_else(|| "reply without a tag".to_string())?;
        let error = head.err_code.map(|_| {
            match Response::decode(body).ok().and_then(|r| r.reply_error()) {
                Some(e) => e.to_string(),
                None => "undecodable error reply".to_string(),
            }
        });
        Ok(Reply::Answer { tag, error })
    }
}

/// Which requests a phase sends.
#[derive(Clone, Copy, Debug)]
enum Mix {
    Always(Action),
    /// A GET with this probability in percent, a SET otherwise.
    Reads(u32),
}

/// Picks the key and the action of each request of a run and has `W`
/// encode it.
pub struct Requests<W> {
    keys: Keys,
    mix: Mix,
    rng: Rng,
    wire: W,
}

impl<W: Wire> Requests<W> {
    /// `op` on `keys` (`read_pct`: the share of GETs of `Op::Mixed`).
    pub fn new(keys: Keys, op: Op, read_pct: u32, wire: W) -> Requests<W> {
        let mix = match op {
            Op::Set => Mix::Always(Action::Set),
            Op::Get => Mix::Always(Action::Get),
            Op::Mixed => Mix::Reads(read_pct),
        };
        Requests {
            keys,
            mix,
            rng: Rng::new(),
            wire,
        }
    }

    /// A CREATE of each key.
    pub fn creating(keys: Keys, wire: W) -> Requests<W> {
        Requests {
            keys,
            mix: Mix::Always(Action::Create),
            rng: Rng::new(),
            wire,
        }
    }

    /// Appends the next request, tagged `tag`, to `out`; false when there
    /// are no more keys.
    fn encode_next(&mut self, tag: u32, out: &mut Vec<u8>) -> bool {
        let Some(n) = self.keys.next() else {
            return false;
        };
        let action = match self.mix {
            Mix::Always(action) => action,
            Mix::Reads(pct) => {
                if self.rng.below(100) < u64::from(pct) {
                    Action::Get
                } else {
                    Action::Set
                }
            }
        };
        self.wire.encode(action, n, tag, out);
        true
    }
}

/// A small xorshift generator: enough to pick keys and operations.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        Rng(rand::random::<u64>() | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Default for Rng {
    fn default() -> Rng {
        Rng::new()
    }
}

/// What one connection did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnOutcome {
    /// Successful replies.
    pub ops: u64,
    /// Error replies, requests lost with the connection, and requests
    /// unanswered [`GRACE`] after the end.
    pub errors: u64,
    pub late: u64,
    pub unsent: u64,
    pub first_error: Option<String>,
}

/// The future that runs one connection until its requests are done,
/// speaking the protocol of `W`.
pub struct Driver<W> {
    conn: Conn,
    pacer: Pacer,
    requests: Requests<W>,
    /// Times are nanoseconds since `epoch`.
    epoch: Instant,
    /// Requests still unanswered at this time are given up.
    give_up: u64,
    max_reply: usize,
    read: Vec<u8>,
    read_start: usize,
    read_end: usize,
    write: Vec<u8>,
    written: usize,
    timer: Timer,
    timer_at: Option<u64>,
    /// How long the connection may stay silent before a keep-alive
    /// ([`Wire::keepalive_nanos`]), when it last sent, and when to look
    /// again whether a keep-alive is due (moved only when reached, so the
    /// timer is not re-armed at every send).
    keepalive: Option<u64>,
    last_sent: u64,
    keepalive_at: u64,
    hist: Rc<RefCell<LatencyHistogram>>,
    live: Arc<Live>,
    /// Counts not yet added to `live`.
    live_ops: u64,
    live_errors: u64,
    outcome: ConnOutcome,
}

/// How the connection ended early.
enum Failure {
    Io(String),
    Protocol(String),
}

impl<W: Wire> Driver<W> {
    /// `end` is when the pacer stops sending, from `epoch`; replies are
    /// awaited [`GRACE`] longer. `size` is the value size (to bound replies).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: Conn,
        pacer: Pacer,
        requests: Requests<W>,
        epoch: Instant,
        end: Duration,
        size: usize,
        hist: Rc<RefCell<LatencyHistogram>>,
        live: Arc<Live>,
    ) -> Driver<W> {
        let keepalive = requests.wire.keepalive_nanos();
        let now = nanos(epoch.elapsed());
        Driver {
            conn,
            pacer,
            requests,
            epoch,
            give_up: nanos(end + GRACE),
            max_reply: size.saturating_add(W::REPLY_SLACK_BYTES),
            read: vec![0; READ_CHUNK_BYTES],
            read_start: 0,
            read_end: 0,
            write: Vec::with_capacity(READ_CHUNK_BYTES),
            written: 0,
            // Set before its first poll (`timer_at` is `None`).
            timer: Timer::at(epoch),
            timer_at: None,
            keepalive,
            last_sent: now,
            keepalive_at: keepalive.map_or(u64::MAX, |every| now.saturating_add(every)),
            hist,
            live,
            live_ops: 0,
            live_errors: 0,
            outcome: ConnOutcome::default(),
        }
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    fn error(&mut self, text: impl FnOnce() -> String) {
        self.outcome.errors += 1;
        self.live_errors += 1;
        if self.outcome.first_error.is_none() {
            self.outcome.first_error = Some(text());
        }
    }

    /// Handles every complete reply in the read buffer.
    fn take_replies(&mut self, now: u64) -> Result<(), Failure> {
        loop {
            let buffered = &self.read[self.read_start..self.read_end];
            let Some(header) = buffered.first_chunk::<HEADER_BYTES>() else {
                return Ok(());
            };
            let len = frame_len(*header, self.max_reply)
                .map_err(|e| Failure::Protocol(format!("bad reply frame: {e}")))?;
            let Some(body) = buffered.get(HEADER_BYTES..HEADER_BYTES + len) else {
                return Ok(());
            };
            let (tag, error) = match self.requests.wire.reply(body).map_err(Failure::Protocol)? {
                Reply::Answer { tag, error } => (tag, error),
                Reply::Ignore => {
                    self.read_start += HEADER_BYTES + len;
                    continue;
                }
            };
            let Some(latency) = self.pacer.complete(tag, now) else {
                return Err(Failure::Protocol(format!(
                    "reply for tag {tag}, which has no request outstanding"
                )));
            };
            if let Some(text) = error {
                self.error(|| text);
            } else {
                self.outcome.ops += 1;
                self.live_ops += 1;
                self.hist.borrow_mut().record_nanos(latency);
            }
            self.read_start += HEADER_BYTES + len;
        }
    }

    /// Makes room at the end of the read buffer: moves what is buffered to
    /// the front, and grows the buffer if one reply is larger than it.
    fn make_room(&mut self) {
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
            return;
        }
        if self.read.len() - self.read_end >= READ_CHUNK_BYTES / 4 {
            return;
        }
        self.read.copy_within(self.read_start..self.read_end, 0);
        self.read_end -= self.read_start;
        self.read_start = 0;
        // The reply at the front may be larger than the buffer: its header
        // (already checked against `max_reply` by `take_replies`) says how
        // large.
        if let Some(header) = self.read[..self.read_end].first_chunk::<HEADER_BYTES>() {
            let whole = frame_len(*header, self.max_reply).map_or(0, |len| len + HEADER_BYTES);
            if whole > self.read.len() {
                self.read.resize(whole, 0);
            }
        }
    }

    /// Encodes every request the pacer lets out now, and a keep-alive if
    /// the protocol needs one and the connection has been silent too long.
    fn send_due(&mut self, now: u64) {
        let queued = self.write.len();
        while let Some(tag) = self.pacer.next_send(now) {
            if !self.requests.encode_next(tag, &mut self.write) {
                self.pacer.stop();
                let _ = self.pacer.complete(tag as i32, now);
                break;
            }
        }
        if let Some(every) = self.keepalive {
            if self.write.len() > queued {
                self.last_sent = now;
            }
            if now >= self.keepalive_at {
                if now.saturating_sub(self.last_sent) >= every {
                    self.requests.wire.encode_keepalive(&mut self.write);
                    self.last_sent = now;
                }
                self.keepalive_at = self.last_sent.saturating_add(every);
            }
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), Failure> {
        while self.written < self.write.len() {
            match Pin::new(&mut &self.conn).poll_write(cx, &self.write[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(Failure::Io("connection closed".into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Err(Failure::Io(io_error_text(&e))),
                Poll::Pending => return Ok(()),
            }
        }
        self.write.clear();
        self.written = 0;
        if self.conn.is_tls() {
            if let Poll::Ready(Err(e)) = Pin::new(&mut &self.conn).poll_flush(cx) {
                return Err(Failure::Io(io_error_text(&e)));
            }
        }
        Ok(())
    }

    /// Reads once: whether bytes came (`Ok(false)`: none ready).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, Failure> {
        self.make_room();
        let room = &mut self.read[self.read_end..];
        match Pin::new(&mut &self.conn).poll_read(cx, room) {
            Poll::Ready(Ok(0)) => Err(Failure::Io(if self.read_start == self.read_end {
                "EOF".into()
            } else {
                "unexpected EOF".into()
            })),
            Poll::Ready(Ok(n)) => {
                self.read_end += n;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(Failure::Io(io_error_text(&e))),
            Poll::Pending => Ok(false),
        }
    }

    /// Whether the timer fired for the next due request, keep-alive or
    /// the give-up.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let wake = self
            .pacer
            .wake_at()
            .map_or(self.give_up, |at| at.min(self.give_up))
            .min(self.keepalive_at);
        if self.timer_at != Some(wake) {
            self.timer.set_at(self.epoch + Duration::from_nanos(wake));
            self.timer_at = Some(wake);
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(_) => {
                self.timer_at = None;
                true
            }
            Poll::Pending => false,
        }
    }

    fn flush_live(&mut self) {
        if self.live_ops > 0 {
            self.live.ops.fetch_add(self.live_ops, Ordering::Relaxed);
            self.live_ops = 0;
        }
        if self.live_errors > 0 {
            self.live
                .errors
                .fetch_add(self.live_errors, Ordering::Relaxed);
            self.live_errors = 0;
        }
    }

    /// Ends the run of this connection: what was outstanding is lost. A
    /// connection that ends with `lost` (it failed, or replies are missing)
    /// is shut down, so no late reply can be taken for a later phase's; one
    /// that is done is left open for the next phase.
    fn finish(&mut self, lost: Option<String>) -> ConnOutcome {
        let failed = lost.is_some();
        let outstanding = self.pacer.in_flight() as u64;
        if outstanding > 0 {
            let text = lost.unwrap_or_else(|| "lost".into());
            self.error(|| text);
            // `error` counted one.
            self.outcome.errors += outstanding - 1;
            self.live_errors += outstanding - 1;
        } else if let Some(text) = lost {
            if self.outcome.first_error.is_none() && !self.pacer.done_sending(self.now()) {
                self.outcome.first_error = Some(text);
            }
        }
        if failed {
            let _ = self.conn.shutdown(std::net::Shutdown::Both);
        }
        self.pacer.stop();
        self.flush_live();
        self.outcome.late = self.pacer.late();
        self.outcome.unsent = self.pacer.unsent();
        std::mem::take(&mut self.outcome)
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<ConnOutcome> {
        for _ in 0..POLL_BUDGET {
            let now = self.now();
            if let Err(f) = self.take_replies(now) {
                return Poll::Ready(self.fail(f));
            }
            if self.pacer.done_sending(now) && self.pacer.in_flight() == 0 {
                return Poll::Ready(self.finish(None));
            }
            if now >= self.give_up {
                let text = format!("no reply within {GRACE:?} of the end");
                return Poll::Ready(self.finish(Some(text)));
            }
            self.send_due(now);
            // The keys may have run out just now, with nothing in flight:
            // no reply will come to wake this connection again.
            if self.pacer.done_sending(now) && self.pacer.in_flight() == 0 {
                return Poll::Ready(self.finish(None));
            }
            if let Err(f) = self.poll_write(cx) {
                return Poll::Ready(self.fail(f));
            }
            match self.poll_read(cx) {
                Err(f) => return Poll::Ready(self.fail(f)),
                Ok(true) => continue,
                Ok(false) => {}
            }
            if !self.poll_timer(cx) {
                self.flush_live();
                return Poll::Pending;
            }
        }
        self.flush_live();
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn fail(&mut self, f: Failure) -> ConnOutcome {
        let text = match f {
            Failure::Io(text) => text,
            Failure::Protocol(text) => format!("protocol error: {text}"),
        };
        self.finish(Some(text))
    }
}

impl<W: Wire> Future for Driver<W> {
    type Output = ConnOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConnOutcome> {
        self.get_mut().step(cx)
    }
}

/// A duration in nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Sends ACCESS with `secret` on a fresh connection and waits for the
/// answer (before the run starts: the bench's requests all need it).
pub async fn access(conn: &Conn, secret: &[u8]) -> Result<(), crate::client::Error> {
    use crate::client::Error;
    use futures::{AsyncReadExt, AsyncWriteExt};
    let req = Request {
        tag: Some(0),
        verb: Some(Verb::Access as i32),
        value: Some(secret.to_vec()),
        ..Request::default()
    };
    let mut frame = Vec::new();
    encode_frame_into(&req, &mut frame);
    let conn_err = |e: io::Error| Error::Connection(io_error_text(&e));
    let mut writer = conn;
    writer.write_all(&frame).await.map_err(conn_err)?;
    writer.flush().await.map_err(conn_err)?;
    let mut reader = conn;
    let mut header = [0u8; HEADER_BYTES];
    reader.read_exact(&mut header).await.map_err(conn_err)?;
    let len = frame_len(header, REPLY_SLACK_BYTES).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.map_err(conn_err)?;
    let resp = Response::decode(body.as_slice()).map_err(|e| Error::Protocol(e.to_string()))?;
    match resp.reply_error() {
        Some(mut e) => {
            if e.detail.as_deref() == Some("") {
                e.detail = None;
            }
            Err(Error::Reply(e))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::client::encode_frame_into;
    use std::io::{Read, Write};

    /// Answers every request on one connection with an empty reply of the
    /// same tag, until the client hangs up.
    fn answer_everything(listener: std::net::TcpListener) {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut header = [0u8; 4];
        while stream.read_exact(&mut header).is_ok() {
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            if stream.read_exact(&mut body).is_err() {
                return;
            }
            let request = Request::decode(body.as_slice()).expect("a request");
            let reply = Response {
                tag: request.tag,
                ..Response::default()
            };
            let mut frame = Vec::new();
            encode_frame_into(&reply, &mut frame);
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }

    #[test]
    fn a_connection_whose_keys_run_out_finishes_before_its_time_is_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || answer_everything(listener));
        let outcome = crate::runtime::rt::block_on(async move {
            let tcp = crate::runtime::rt::TcpStream::connect(addr)
                .await
                .expect("connect");
            let keys = Keys::Sequential {
                next: Arc::new(AtomicU64::new(0)),
                count: 5,
            };
            let length = Duration::from_secs(600);
            let driver = Driver::new(
                Conn::plain(tcp),
                Pacer::closed(1, nanos(length)),
                Requests::new(keys, Op::Set, 0, DoozerWire::new("/t", b"v")),
                Instant::now(),
                length,
                1,
                Rc::new(RefCell::new(LatencyHistogram::new())),
                Arc::new(Live::default()),
            );
            // Long before the phase's 600 s: the driver ends when its
            // fifth reply comes, not at the end of the phase. (The timer is
            // polled first, so its wake-up cannot finish the driver.)
            let limit = Timer::after(Duration::from_secs(60));
            match futures::future::select(limit, driver).await {
                futures::future::Either::Left(_) => None,
                futures::future::Either::Right((outcome, _)) => Some(outcome),
            }
        })
        .expect("the driver finished once its keys ran out");
        assert_eq!(outcome.ops, 5);
        assert_eq!(outcome.errors, 0);
        drop(outcome);
        server.join().expect("server");
    }
}
