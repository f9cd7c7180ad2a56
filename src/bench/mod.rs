//! `doozer bench`: a load generator.
//!
//! `conns` connections send SETs, GETs or a mix to `keys` distinct paths
//! under `/bench/` for `duration`, either in a closed loop (each connection
//! keeps `pipeline` requests outstanding, the next sent as soon as a reply
//! comes) or in an open loop (`-rate N`: N requests a second on a fixed
//! schedule, latency measured from each request's intended start, so a
//! stalled server shows as latency; see [`pacer`]). Latencies go into an
//! HdrHistogram of fixed size ([`histogram`]); the report gives the
//! throughput and p50/p90/p99/p99.9/max, as text or one JSON line
//! ([`report`]). The run ends by itself: when the time is up no new request
//! is sent, and requests still unanswered [`GRACE`] later are cut off.
//!
//! The bench runs beside the servers it measures, so it is built to cost
//! them little: each connection is one future ([`driver`]) with no helper
//! tasks, and all of them run on `-threads` threads (default 1) with no
//! executor pool.
//!
//! With `-zk` the same load goes to a ZooKeeper server in its own protocol
//! ([`zk`]), so both systems are measured by one load generator: each
//! connection first opens a session, the parent znode and every key's
//! znode are created (a znode already there is fine: ZooKeeper's setData
//! fails on a missing one), then the fill and the timed part run as they
//! do for doozer; at the end each session is closed.

pub mod driver;
pub mod histogram;
pub mod pacer;
pub mod report;
pub mod zk;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use argh::FromArgs;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::client::{
    connect_conn_timeout, dial_uri_conn, io_error_text, Error, DEFAULT_DIAL_TIMEOUT,
};
use crate::codec::client::{frame_len, HEADER_BYTES};
use crate::runtime::conn::Conn;
use crate::runtime::rt::{block_on, block_on_own_reactor, timeout};
use crate::uri::Uri;
use driver::{ConnOutcome, DoozerWire, Driver, Keys, Live, Requests, Rng, Wire};
pub use histogram::Latency;
use histogram::LatencyHistogram;
use pacer::{Pacer, Schedule};
pub use report::{Progress, Report};

/// The most connections one run may open (each holds a 64 KiB read
/// buffer and its requests' slots).
pub const MAX_CONNS: usize = 10_000;
/// The most requests in flight per connection (`-p`): each slot holds 8
/// bytes here and a tag on the wire.
pub const MAX_PIPELINE: usize = 1 << 20;
/// The most threads (`-threads`); never more than one per connection.
pub const MAX_THREADS: usize = 64;

/// How long unanswered requests may run past the end before the
/// connections are closed under them.
pub const GRACE: Duration = Duration::from_secs(2);

/// The port a ZooKeeper server listens on for clients unless told.
pub const ZK_DEFAULT_PORT: u16 = 2181;

/// The ZooKeeper server `-zk` drives unless `-a` names one.
pub const ZK_DEFAULT_ADDR: &str = "127.0.0.1:2181";

/// The ZooKeeper mode's create phase may run this long at least (it ends
/// as soon as every key exists; a run cannot start without them).
pub const ZK_CREATE_AT_LEAST: Duration = Duration::from_secs(60);

/// How long a ZooKeeper handshake (or the parent's create) may take.
pub const ZK_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// How long the sessions are given to close at the end.
pub const ZK_CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// ZooKeeper sessions opened at once: the sessions opened first then wait
/// (without pings) only for the last batch, not for every connection.
pub const ZK_DIAL_BATCH: usize = 64;

/// Which server the bench drives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Doozer,
    /// A ZooKeeper server, in its own protocol ([`zk`]).
    ZooKeeper,
}

/// What the requests do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
    /// GET with probability `read_pct`%, SET otherwise.
    Mixed,
}

/// One benchmark run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    pub conns: usize,
    pub pipeline: usize,
    pub op: Op,
    /// Percentage of GETs when `op` is `Mixed`.
    pub read_pct: u32,
    /// Bytes per value.
    pub size: usize,
    pub duration: Duration,
    pub keys: usize,
    /// Keys are `<prefix>/<n>`.
    pub prefix: String,
    /// Write every key once before the timed part.
    pub fill: bool,
    /// Open loop: operations per second in all (`None`: closed loop).
    pub rate: Option<f64>,
    /// Threads driving the connections.
    pub threads: usize,
    pub protocol: Protocol,
}

impl Default for BenchConfig {
    fn default() -> BenchConfig {
        BenchConfig {
            conns: 1,
            pipeline: 1,
            op: Op::Set,
            read_pct: 50,
            size: 64,
            duration: Duration::from_secs(10),
            keys: 1000,
            prefix: "/bench".into(),
            fill: false,
            rate: None,
            threads: 1,
            protocol: Protocol::Doozer,
        }
    }
}

/// The command-line options of `doozer bench`, parsed by argh once the CLI
/// has turned Go-style `-name` into argh's spelling ([`argh_spelling`]).
#[derive(FromArgs, Debug)]
/// Generate load against a doozer cluster.
pub struct BenchArgs {
    /// number of connections (default 1)
    #[argh(option, short = 'c', default = "1")]
    pub conns: usize,
    /// requests in flight per connection (default 1; with --rate, the most
    /// in flight, default 1024)
    #[argh(option, short = 'p')]
    pub pipeline: Option<usize>,
    /// set, get or mixed (default set; mixed when --read-pct is given)
    #[argh(option)]
    pub op: Option<String>,
    /// percentage of reads for mixed (default 50)
    #[argh(option)]
    pub read_pct: Option<u32>,
    /// bytes per value (default 64)
    #[argh(option, default = "64")]
    pub size: usize,
    /// duration in seconds, or a Go duration like 1m30s (default 10)
    #[argh(option, short = 'd', default = "String::from(\"10\")")]
    pub duration: String,
    /// number of distinct keys (default 1000)
    #[argh(option, default = "1000")]
    pub keys: usize,
    /// open loop: this many operations per second in all, each measured
    /// from its scheduled start (default: closed loop)
    #[argh(option)]
    pub rate: Option<f64>,
    /// threads driving the connections (default 1)
    #[argh(option, default = "1")]
    pub threads: usize,
    /// print one JSON line instead of the report
    #[argh(switch)]
    pub json: bool,
    /// drive a ZooKeeper server (-a HOST:PORT, default 127.0.0.1:2181) in
    /// its own protocol
    #[argh(switch)]
    pub zk: bool,
}

/// The spelling argh expects for a flag name given with one or two dashes:
/// `-c`, `-p`, `-d` stay short; every other name becomes `--name`.
pub fn argh_spelling(name: &str) -> String {
    match name {
        "c" | "p" | "d" => format!("-{name}"),
        _ => format!("--{name}"),
    }
}

impl BenchArgs {
    /// Parses argh-spelled arguments into a run's configuration. The error
    /// is the text to show.
    pub fn parse(command: &str, args: &[String]) -> Result<BenchConfig, String> {
        BenchArgs::parse_args(command, args)?.config()
    }

    /// The options as given.
    pub fn parse_args(command: &str, args: &[String]) -> Result<BenchArgs, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        BenchArgs::from_args(&[command], &args).map_err(|e| e.output)
    }

    pub fn config(&self) -> Result<BenchConfig, String> {
        let op = match (self.op.as_deref(), self.read_pct) {
            (None, None) | (Some("set"), _) => Op::Set,
            (None, Some(_)) | (Some("mixed"), _) => Op::Mixed,
            (Some("get"), _) => Op::Get,
            (Some(other), _) => {
                return Err(format!(
                    "bench: unknown -op {other:?}: want set, get or mixed"
                ))
            }
        };
        let read_pct = self.read_pct.unwrap_or(50);
        if read_pct > 100 {
            return Err(format!("bench: -read-pct {read_pct} is above 100"));
        }
        let pipeline = self.pipeline.unwrap_or(match self.rate {
            None => 1,
            Some(_) => pacer::OPEN_LOOP_DEFAULT_SLOTS,
        });
        if self.conns == 0 || pipeline == 0 || self.keys == 0 || self.threads == 0 {
            return Err("bench: -c, -p, -keys and -threads must be at least 1".into());
        }
        if self.conns > MAX_CONNS || pipeline > MAX_PIPELINE || self.threads > MAX_THREADS {
            return Err(format!(
                "bench: at most {MAX_CONNS} connections, {MAX_PIPELINE} in flight per \
                 connection and {MAX_THREADS} threads"
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate <= pacer::MAX_RATE) {
                return Err(format!(
                    "bench: -rate {rate} out of range: want more than 0 and at most {}",
                    pacer::MAX_RATE
                ));
            }
        }
        let duration = parse_seconds(&self.duration)
            .ok_or_else(|| format!("bench: bad duration {:?}", self.duration))?;
        if self.zk && self.size > zk::MAX_VALUE_BYTES {
            return Err(format!(
                "bench: -size {} is above the -zk limit of {} bytes",
                self.size,
                zk::MAX_VALUE_BYTES
            ));
        }
        Ok(BenchConfig {
            conns: self.conns,
            pipeline,
            op,
            read_pct,
            size: self.size,
            duration,
            keys: self.keys,
            prefix: "/bench".into(),
            fill: op != Op::Set,
            rate: self.rate,
            threads: self.threads.min(self.conns),
            protocol: if self.zk {
                Protocol::ZooKeeper
            } else {
                Protocol::Doozer
            },
        })
    }
}

/// `10`, `0.5` (seconds) or a Go duration (`1m30s`).
pub fn parse_seconds(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let ns = crate::cli::goflag::parse_duration(text).ok()?;
    (ns >= 0).then(|| Duration::from_nanos(ns as u64))
}

/// Runs the benchmark against the doozer cluster of `uri`: the fill (for
/// reads), then the timed part. `on_progress` is called about once a
/// second on the calling thread. Fails only if a connection cannot be
/// made. (`cfg.protocol` is the caller's to dispatch on: see [`run_zk`].)
pub fn run(
    uri: &Uri,
    boot: Option<&Uri>,
    cfg: &BenchConfig,
    on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let conns = block_on(dial_all(uri, boot, cfg.conns))?;
    let value = value_of(cfg.size);
    let report = measure(
        &conns,
        cfg,
        |_| DoozerWire::new(&cfg.prefix, &value),
        on_progress,
    );
    for c in &conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    Ok(report)
}

/// Runs the benchmark against the ZooKeeper server at `addr` (HOST:PORT):
/// a session per connection, the parent znode and every key's znode
/// created, then the fill (for reads) and the timed part as [`run`] does,
/// and the sessions closed. Fails if a session cannot be opened or a key
/// cannot be created.
pub fn run_zk(
    addr: &str,
    cfg: &BenchConfig,
    on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let sessions = block_on(zk_dial_all(addr, cfg.conns))?;
    let (conns, pings): (Vec<Conn>, Vec<u64>) = sessions
        .into_iter()
        .map(|(conn, session)| (conn, session.ping_every_nanos()))
        .unzip();
    let Some(first) = conns.first() else {
        return Err(Error::Connection("bench: no connections".into()));
    };
    let value = value_of(cfg.size);
    let wire = |i: usize| zk::ZkWire::new(&cfg.prefix, &value, pings[i]);
    let result = block_on(zk_create_parent(first, &cfg.prefix))
        .and_then(|()| create_keys(&conns, cfg, wire))
        .map(|()| measure(&conns, cfg, wire, on_progress));
    block_on(zk_close_all(&conns));
    for c in &conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    result
}

/// The value every write sends: `size` bytes of `abc…`.
fn value_of(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The fill (for reads) and the timed part over connections already set
/// up, connection `i` speaking `wire(i)`.
fn measure<W, M>(
    conns: &[Conn],
    cfg: &BenchConfig,
    wire: M,
    mut on_progress: impl FnMut(&Progress),
) -> Report
where
    W: Wire,
    M: Fn(usize) -> W + Sync,
{
    if cfg.fill {
        let next = Arc::new(AtomicU64::new(0));
        let fill_for = cfg.duration.max(Duration::from_secs(1));
        let count = cfg.keys as u64;
        run_phase(
            conns,
            cfg,
            fill_for,
            |i| {
                let keys = Keys::Sequential {
                    next: next.clone(),
                    count,
                };
                let requests = Requests::new(keys, Op::Set, 0, wire(i));
                (
                    Pacer::closed(cfg.pipeline, driver::nanos(fill_for)),
                    requests,
                )
            },
            |_| {},
        );
    }

    let end = driver::nanos(cfg.duration);
    let (outcomes, hist, elapsed) = run_phase(
        conns,
        cfg,
        cfg.duration,
        |index| {
            let pacer = match cfg.rate {
                None => Pacer::closed(cfg.pipeline, end),
                Some(rate) => Pacer::open(cfg.pipeline, Schedule::new(rate, cfg.conns, index, end)),
            };
            let keys = Keys::Random {
                rng: Rng::new(),
                count: cfg.keys as u64,
            };
            let requests = Requests::new(keys, cfg.op, cfg.read_pct, wire(index));
            (pacer, requests)
        },
        &mut on_progress,
    );

    let mut report = Report {
        elapsed,
        latency: hist.summary(),
        ..Report::default()
    };
    for o in outcomes {
        report.ops += o.ops;
        report.errors += o.errors;
        report.late += o.late;
        report.unsent += o.unsent;
        if report.first_error.is_none() {
            report.first_error = o.first_error;
        }
    }
    report
}

/// Creates every key once over all connections (a key already there is
/// fine); an error if any create failed or the keys were not all done in
/// time.
fn create_keys<W, M>(conns: &[Conn], cfg: &BenchConfig, wire: M) -> Result<(), Error>
where
    W: Wire,
    M: Fn(usize) -> W + Sync,
{
    let next = Arc::new(AtomicU64::new(0));
    let limit = cfg.duration.max(ZK_CREATE_AT_LEAST);
    let count = cfg.keys as u64;
    let (outcomes, _, _) = run_phase(
        conns,
        cfg,
        limit,
        |i| {
            let keys = Keys::Sequential {
                next: next.clone(),
                count,
            };
            (
                Pacer::closed(cfg.pipeline, driver::nanos(limit)),
                Requests::creating(keys, wire(i)),
            )
        },
        |_| {},
    );
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    if errors > 0 {
        let first = outcomes
            .into_iter()
            .find_map(|o| o.first_error)
            .unwrap_or_default();
        return Err(Error::Connection(format!(
            "bench: {errors} of the creates of the keys failed, the first: {first}"
        )));
    }
    let handed_out = next.load(Ordering::Relaxed).min(count);
    if handed_out < count {
        return Err(Error::Connection(format!(
            "bench: only {handed_out} of the {count} keys were created in {limit:?}"
        )));
    }
    Ok(())
}

/// Opens `n` connections to the cluster, each through ACCESS when the URI
/// has a secret.
async fn dial_all(uri: &Uri, boot: Option<&Uri>, n: usize) -> Result<Vec<Conn>, Error> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let (conn, _addr) = dial_uri_conn(uri, boot, DEFAULT_DIAL_TIMEOUT).await?;
        let _ = conn.set_nodelay(true);
        if let Some(secret) = &uri.secret {
            driver::access(&conn, secret.as_bytes()).await?;
        }
        conns.push(conn);
    }
    Ok(conns)
}

/// The ZooKeeper server of `-a`: `HOST:PORT`, a bare host getting the
/// client port 2181; a doozer URI is refused (the default one, `-a` not
/// given, means [`ZK_DEFAULT_ADDR`]).
pub fn zk_addr(a: &str) -> Result<String, String> {
    if a == crate::uri::DEFAULT_URI {
        return Ok(ZK_DEFAULT_ADDR.to_string());
    }
    if a.starts_with("doozer:") {
        return Err(format!(
            "bench: -zk wants -a HOST:PORT of a ZooKeeper server, not the doozer URI {a:?}"
        ));
    }
    if a.is_empty() {
        return Err("bench: -zk wants -a HOST:PORT".into());
    }
    Ok(match a.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && !a.ends_with(']') => a.to_string(),
        Some((host, "")) => format!("{host}:{ZK_DEFAULT_PORT}"),
        _ => format!("{a}:{ZK_DEFAULT_PORT}"),
    })
}

/// Opens `n` connections to the ZooKeeper server at `addr`, each with a
/// new session, [`ZK_DIAL_BATCH`] at a time.
async fn zk_dial_all(addr: &str, n: usize) -> Result<Vec<(Conn, zk::Session)>, Error> {
    let mut sessions = Vec::with_capacity(n);
    while sessions.len() < n {
        let batch = (n - sessions.len()).min(ZK_DIAL_BATCH);
        let opened = futures::future::try_join_all((0..batch).map(|_| zk_dial(addr))).await?;
        sessions.extend(opened);
    }
    Ok(sessions)
}

/// One connection to `addr` with a new session.
async fn zk_dial(addr: &str) -> Result<(Conn, zk::Session), Error> {
    let conn = connect_conn_timeout(addr, None, DEFAULT_DIAL_TIMEOUT).await?;
    let _ = conn.set_nodelay(true);
    let session = timeout(ZK_HANDSHAKE_LIMIT, zk_handshake(&conn))
        .await
        .unwrap_or_else(|| {
            Err(Error::Connection(format!(
                "ZooKeeper handshake with {addr}: no answer within {ZK_HANDSHAKE_LIMIT:?}"
            )))
        })?;
    Ok((conn, session))
}

/// Writes `frame` whole.
async fn write_frame(conn: &Conn, frame: &[u8]) -> Result<(), Error> {
    use futures::AsyncWriteExt;
    let mut writer = conn;
    writer
        .write_all(frame)
        .await
        .map_err(|e| Error::Connection(io_error_text(&e)))?;
    writer
        .flush()
        .await
        .map_err(|e| Error::Connection(io_error_text(&e)))
}

/// Reads one frame whose body is at most `max` bytes; its body.
async fn read_frame(conn: &Conn, max: usize) -> Result<Vec<u8>, Error> {
    use futures::AsyncReadExt;
    let mut reader = conn;
    let mut header = [0u8; HEADER_BYTES];
    let conn_err = |e: std::io::Error| Error::Connection(io_error_text(&e));
    reader.read_exact(&mut header).await.map_err(conn_err)?;
    let len = frame_len(header, max).map_err(|e| Error::Protocol(format!("bad frame: {e}")))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.map_err(conn_err)?;
    Ok(body)
}

/// Opens a new session on `conn`.
async fn zk_handshake(conn: &Conn) -> Result<zk::Session, Error> {
    let mut frame = Vec::new();
    zk::encode_connect(zk::SESSION_TIMEOUT_MS, &mut frame);
    write_frame(conn, &frame).await?;
    let body = read_frame(conn, zk::MAX_CONNECT_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            Error::Connection(text) => Error::Connection(format!(
                "ZooKeeper handshake: {text} (the server refused the session: too many \
                 connections from this address, see maxClientCnxns?)"
            )),
            e => e,
        })?;
    zk::parse_connect_response(&body)
        .map_err(|e| Error::Protocol(format!("ZooKeeper handshake: {e}")))
}

/// Creates the znode `path` (empty) unless it is there.
async fn zk_create_parent(conn: &Conn, path: &str) -> Result<(), Error> {
    let create = async {
        let mut frame = Vec::new();
        zk::encode_create(0, path, b"", &mut frame);
        write_frame(conn, &frame).await?;
        // Skip a ping's reply or an event, a few at most.
        for _ in 0..16 {
            let body = read_frame(conn, zk::REPLY_SLACK_BYTES).await?;
            let (head, _) =
                zk::parse_reply_header(&body).map_err(|e| Error::Protocol(e.to_string()))?;
            match head.xid {
                zk::PING_XID | zk::WATCH_XID => continue,
                0 => {}
                xid => {
                    return Err(Error::Protocol(format!(
                        "reply for xid {xid}, which has no request outstanding"
                    )))
                }
            }
            return match head.err {
                zk::code::OK | zk::code::NODE_EXISTS => Ok(()),
                err => Err(Error::Connection(format!(
                    "bench: creating {path}: {}",
                    zk::error_text(err, zk::opcode::CREATE)
                ))),
            };
        }
        Err(Error::Protocol("no reply to the create".into()))
    };
    timeout(ZK_HANDSHAKE_LIMIT, create)
        .await
        .unwrap_or_else(|| {
            Err(Error::Connection(format!(
                "bench: creating {path}: no answer within {ZK_HANDSHAKE_LIMIT:?}"
            )))
        })
}

/// Closes every session (best effort, for at most [`ZK_CLOSE_LIMIT`]):
/// otherwise each would linger on the server until its time-out, and its
/// expiry would cost the ensemble a write then.
async fn zk_close_all(conns: &[Conn]) {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let closing = conns.iter().map(|conn| async move {
        let mut frame = Vec::new();
        zk::encode_close_session(0, &mut frame);
        let mut writer = conn;
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        // The server answers, then closes the connection: read to its end
        // (late replies of the run included).
        let mut reader = conn;
        let mut buf = [0u8; 512];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let _ = timeout(ZK_CLOSE_LIMIT, futures::future::join_all(closing)).await;
}

/// What a thread of a phase hands back.
struct ThreadResult {
    outcomes: Vec<ConnOutcome>,
    hist: LatencyHistogram,
    finished: Instant,
}

/// Drives every connection for one phase of `length` (plus the grace for
/// late replies) on `cfg.threads` threads; connection `i` gets its pacer
/// and requests from `setup(i)`. Reports progress once a second
/// until `length` has passed. Returns each connection's outcome, the
/// latencies, and the time from the start to the last reply.
fn run_phase<W, S>(
    conns: &[Conn],
    cfg: &BenchConfig,
    length: Duration,
    setup: S,
    mut on_progress: impl FnMut(&Progress),
) -> (Vec<ConnOutcome>, LatencyHistogram, Duration)
where
    W: Wire,
    S: Fn(usize) -> (Pacer, Requests<W>) + Sync,
{
    let live = Arc::new(Live::default());
    let threads = cfg.threads.clamp(1, conns.len().max(1));
    let start = Instant::now();
    let (done_tx, done) = mpsc::channel::<ThreadResult>();
    let mut results = Vec::with_capacity(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let done_tx = done_tx.clone();
            let live = live.clone();
            let setup = &setup;
            let mine: Vec<(usize, Conn)> = conns
                .iter()
                .enumerate()
                .skip(t)
                .step_by(threads)
                // A handle of its own per connection, so the thread's
                // reactor watches it (a TLS connection stays on async-io).
                .map(|(i, c)| (i, c.rehome().unwrap_or_else(|_| c.clone())))
                .collect();
            let size = cfg.size;
            scope.spawn(move || {
                let hist = Rc::new(RefCell::new(LatencyHistogram::new()));
                let mut drivers: FuturesUnordered<Driver<W>> = mine
                    .into_iter()
                    .map(|(i, conn)| {
                        let (pacer, requests) = setup(i);
                        Driver::new(
                            conn,
                            pacer,
                            requests,
                            start,
                            length,
                            size,
                            hist.clone(),
                            live.clone(),
                        )
                    })
                    .collect();
                let count = drivers.len();
                let outcomes = block_on_own_reactor(async {
                    let mut outcomes = Vec::new();
                    while let Some(o) = drivers.next().await {
                        outcomes.push(o);
                    }
                    outcomes
                })
                .unwrap_or_else(|err| {
                    let text = format!("the bench thread's reactor failed: {err}");
                    (0..count)
                        .map(|_| ConnOutcome {
                            errors: 1,
                            first_error: Some(text.clone()),
                            ..ConnOutcome::default()
                        })
                        .collect()
                });
                drop(drivers);
                let hist = Rc::try_unwrap(hist)
                    .map(RefCell::into_inner)
                    .unwrap_or_else(|shared| shared.borrow().clone());
                let _ = done_tx.send(ThreadResult {
                    outcomes,
                    hist,
                    finished: Instant::now(),
                });
            });
        }
        drop(done_tx);

        // Progress, once a second until the end of the phase, while the
        // threads run; then collect them.
        let deadline = start + length;
        let (mut last_ops, mut last_at) = (0, start);
        while results.len() < threads {
            let now = Instant::now();
            let next = last_at + Duration::from_secs(1);
            let wait = if now < deadline {
                next.min(deadline).saturating_duration_since(now)
            } else {
                Duration::from_secs(3600)
            };
            match done.recv_timeout(wait) {
                Ok(r) => {
                    results.push(r);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now < next || now >= deadline + Duration::from_millis(100) {
                continue;
            }
            let ops = live.ops.load(Ordering::Relaxed);
            let interval = now.duration_since(last_at).as_secs_f64();
            on_progress(&Progress {
                elapsed: now.duration_since(start),
                ops,
                errors: live.errors.load(Ordering::Relaxed),
                rate: if interval > 0.0 {
                    (ops - last_ops) as f64 / interval
                } else {
                    0.0
                },
            });
            last_ops = ops;
            last_at = now;
        }
    });

    let mut hist = LatencyHistogram::new();
    let mut outcomes = Vec::with_capacity(conns.len());
    let mut finished = start;
    for r in results {
        hist.add(&r.hist);
        outcomes.extend(r.outcomes);
        finished = finished.max(r.finished);
    }
    (outcomes, hist, finished.duration_since(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A fake server on `ip` that, for each of up to `conns` connections,
    /// reads the first request and answers with `reply` (raw bytes, or
    /// nothing), then reads until the bench hangs up. Returns its URI.
    fn fake_server(ip: &str, conns: usize, reply: Vec<u8>) -> Uri {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((mut sock, _)) = listener.accept() else {
                    return;
                };
                let reply = reply.clone();
                std::thread::spawn(move || {
                    sock.set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    if sock.read(&mut buf).unwrap_or(0) > 0 && !reply.is_empty() {
                        let _ = sock.write_all(&reply);
                    }
                    while sock.read(&mut buf).is_ok_and(|n| n > 0) {}
                });
            }
        });
        Uri::parse(&format!("doozer:?ca={addr}")).unwrap()
    }

    fn short(conns: usize) -> BenchConfig {
        BenchConfig {
            conns,
            pipeline: 2,
            duration: Duration::from_millis(200),
            ..BenchConfig::default()
        }
    }

    #[test]
    fn a_reply_frame_too_long_is_a_protocol_error() {
        let uri = fake_server("127.0.131.1", 1, vec![0x7f, 0xff, 0xff, 0xff]);
        let report = run(&uri, None, &short(1), |_| {}).unwrap();
        assert_eq!((report.ops, report.errors), (0, 2), "{report:?}");
        let err = report.first_error.unwrap();
        assert!(err.starts_with("protocol error: bad reply frame"), "{err}");
    }

    #[test]
    fn a_reply_for_a_tag_never_sent_is_a_protocol_error() {
        use crate::codec::client::{encode_frame, Response};
        let stray = encode_frame(&Response {
            tag: Some(99),
            ..Response::default()
        });
        let uri = fake_server("127.0.131.2", 1, stray);
        let report = run(&uri, None, &short(1), |_| {}).unwrap();
        assert_eq!(report.ops, 0);
        let err = report.first_error.unwrap();
        assert!(err.contains("tag 99"), "{err}");
    }

    #[test]
    fn a_silent_server_is_given_up_after_the_grace() {
        let uri = fake_server("127.0.131.3", 2, Vec::new());
        let started = Instant::now();
        let report = run(&uri, None, &short(2), |_| {}).unwrap();
        assert!(started.elapsed() < GRACE + Duration::from_secs(5));
        assert_eq!((report.ops, report.errors), (0, 4), "{report:?}");
        let err = report.first_error.unwrap();
        assert!(err.starts_with("no reply within"), "{err}");
    }

    fn zk_cfg(conns: usize, op: Op) -> BenchConfig {
        BenchConfig {
            conns,
            pipeline: 4,
            op,
            keys: 20,
            size: 5,
            duration: Duration::from_millis(300),
            fill: op != Op::Set,
            protocol: Protocol::ZooKeeper,
            ..BenchConfig::default()
        }
    }

    #[test]
    fn zk_runs_create_the_znodes_then_measure() {
        use zk::fake::{FakeZk, Mode};
        // Two runs on one server: the second finds every znode there.
        let server = FakeZk::start("127.0.132.1", 4, Mode::Honest, 30_000);
        let addr = server.addr.to_string();
        let set = run_zk(&addr, &zk_cfg(2, Op::Set), |_| {}).unwrap();
        assert_eq!(set.errors, 0, "{set:?}");
        assert!(set.ops > 0, "{set:?}");
        let mixed = run_zk(&addr, &zk_cfg(2, Op::Mixed), |_| {}).unwrap();
        assert_eq!(mixed.errors, 0, "{mixed:?}");
        assert!(mixed.ops > 0, "{mixed:?}");
        let seen = server.finish();
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!((seen.sessions, seen.closes), (4, 4));
        // /bench and its 20 keys, each created once a run (NodeExists the
        // second time); the mixed run's fill wrote each key once more.
        assert_eq!(seen.creates, 2 * 21);
        assert_eq!(seen.znodes.len(), 21);
        assert_eq!(seen.znodes["/bench"], b"");
        assert_eq!(seen.znodes["/bench/19"], b"abcde");
        assert_eq!(seen.no_node, 0);
        assert!(
            seen.gets > 0 && seen.sets >= 20 + set.ops as u32,
            "{seen:?}"
        );
        assert_eq!(u64::from(seen.gets + seen.sets), set.ops + mixed.ops + 20);
    }

    #[test]
    fn zk_sessions_open_in_batches() {
        use zk::fake::{FakeZk, Mode};
        let conns = ZK_DIAL_BATCH + 6;
        let server = FakeZk::start("127.0.132.3", conns, Mode::Honest, 30_000);
        let cfg = BenchConfig {
            duration: Duration::from_millis(200),
            threads: 2,
            ..zk_cfg(conns, Op::Set)
        };
        let report = run_zk(&server.addr.to_string(), &cfg, |_| {}).unwrap();
        assert_eq!(report.errors, 0, "{report:?}");
        let seen = server.finish();
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!((seen.sessions, seen.closes), (conns as u32, conns as u32));
        assert_eq!(seen.znodes.len(), 21);
    }

    #[test]
    fn zk_sessions_are_kept_alive_by_pings_when_idle() {
        use zk::fake::{FakeZk, Mode};
        // A 60 ms session: a ping after 20 ms of silence. Two requests a
        // second over 0.5 s leave the connection idle between them.
        let server = FakeZk::start("127.0.132.2", 1, Mode::Honest, 60);
        let cfg = BenchConfig {
            rate: Some(2.0),
            duration: Duration::from_millis(500),
            ..zk_cfg(1, Op::Get)
        };
        let report = run_zk(&server.addr.to_string(), &cfg, |_| {}).unwrap();
        assert_eq!((report.ops, report.errors), (1, 0), "{report:?}");
        let seen = server.finish();
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert!(seen.pings >= 5, "{} pings", seen.pings);
        assert_eq!(seen.closes, 1);
    }

    #[test]
    fn zk_hostile_replies_are_protocol_errors() {
        use zk::fake::{FakeZk, Mode};
        let cases = [
            (
                Mode::HugeReply,
                "protocol error: bad reply frame: frame length 2147483647 exceeds",
            ),
            (Mode::ShortReply, "protocol error: reply header cut short"),
            (Mode::ShortStat, "protocol error: setData reply cut short"),
        ];
        for (i, (mode, want)) in cases.into_iter().enumerate() {
            let server = FakeZk::start(&format!("127.0.132.{}", 10 + i), 1, mode, 30_000);
            let report = run_zk(&server.addr.to_string(), &zk_cfg(1, Op::Set), |_| {}).unwrap();
            assert_eq!((report.ops, report.errors), (0, 4), "{mode:?}: {report:?}");
            let err = report.first_error.unwrap();
            assert!(err.starts_with(want), "{mode:?}: {err}");
            let seen = server.finish();
            assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        }
        // A handshake cut short fails the run before it starts.
        let server = FakeZk::start("127.0.132.20", 1, Mode::CutHandshake, 30_000);
        let err = run_zk(&server.addr.to_string(), &zk_cfg(1, Op::Set), |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("protocol error: ZooKeeper handshake: connect response cut short"),
            "{err}"
        );
        server.finish();
        // Nobody listening.
        let err = run_zk("127.0.132.21:1", &zk_cfg(1, Op::Set), |_| {}).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[test]
    fn zk_options_and_addresses() {
        let cfg = BenchArgs::parse("doozer bench", &args(&["--zk"])).unwrap();
        assert_eq!(cfg.protocol, Protocol::ZooKeeper);
        assert_eq!(
            BenchArgs::parse("doozer bench", &[]).unwrap().protocol,
            Protocol::Doozer
        );
        let big = (zk::MAX_VALUE_BYTES + 1).to_string();
        assert!(BenchArgs::parse("doozer bench", &args(&["--zk", "--size", &big])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["--size", &big])).is_ok());
        assert_eq!(zk_addr(crate::uri::DEFAULT_URI).unwrap(), ZK_DEFAULT_ADDR);
        assert_eq!(zk_addr("10.0.0.1:2182").unwrap(), "10.0.0.1:2182");
        assert_eq!(zk_addr("zk1").unwrap(), "zk1:2181");
        assert_eq!(zk_addr("zk1:").unwrap(), "zk1:2181");
        assert_eq!(zk_addr("[::1]").unwrap(), "[::1]:2181");
        assert_eq!(zk_addr("[::1]:3000").unwrap(), "[::1]:3000");
        assert!(zk_addr("doozer:?ca=127.0.0.1").is_err());
        assert!(zk_addr("").is_err());
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let cfg = BenchArgs::parse("doozer bench", &[]).unwrap();
        assert_eq!(cfg, BenchConfig::default());
        let given = args(&[
            "-c",
            "4",
            "-p",
            "16",
            "--op",
            "mixed",
            "--read-pct",
            "90",
            "--size",
            "10",
            "-d",
            "1.5",
            "--keys",
            "7",
        ]);
        let cfg = BenchArgs::parse("doozer bench", &given).unwrap();
        assert_eq!(
            (
                cfg.conns,
                cfg.pipeline,
                cfg.op,
                cfg.read_pct,
                cfg.size,
                cfg.duration,
                cfg.keys,
                cfg.fill
            ),
            (
                4,
                16,
                Op::Mixed,
                90,
                10,
                Duration::from_millis(1500),
                7,
                true
            )
        );
        let cfg = BenchArgs::parse("doozer bench", &args(&["--read-pct", "10"])).unwrap();
        assert_eq!(cfg.op, Op::Mixed);
        let cfg = BenchArgs::parse("doozer bench", &args(&["--op", "get", "-d", "2m"])).unwrap();
        assert_eq!(
            (cfg.op, cfg.duration, cfg.fill),
            (Op::Get, Duration::from_secs(120), true)
        );
        assert!(BenchArgs::parse("doozer bench", &args(&["--op", "x"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["--size", "big"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["-c", "0"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["--read-pct", "101"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["extra"])).is_err());
        assert_eq!(argh_spelling("c"), "-c");
        assert_eq!(argh_spelling("read-pct"), "--read-pct");
    }

    #[test]
    fn open_loop_and_thread_options() {
        let cfg = BenchArgs::parse("doozer bench", &args(&["--rate", "2500.5"])).unwrap();
        assert_eq!(cfg.rate, Some(2500.5));
        assert_eq!(
            cfg.pipeline,
            pacer::OPEN_LOOP_DEFAULT_SLOTS,
            "open loop default cap"
        );
        let cfg = BenchArgs::parse("doozer bench", &args(&["--rate", "100", "-p", "3"])).unwrap();
        assert_eq!((cfg.rate, cfg.pipeline), (Some(100.0), 3));
        for bad in ["0", "-5", "NaN", "inf", "1e9", "fast"] {
            assert!(
                BenchArgs::parse("doozer bench", &args(&["--rate", bad])).is_err(),
                "-rate {bad}"
            );
        }
        let cfg = BenchArgs::parse("doozer bench", &args(&["-c", "4", "--threads", "2"])).unwrap();
        assert_eq!(cfg.threads, 2);
        let cfg = BenchArgs::parse("doozer bench", &args(&["-c", "2", "--threads", "8"])).unwrap();
        assert_eq!(cfg.threads, 2, "no more threads than connections");
        assert!(BenchArgs::parse("doozer bench", &args(&["--threads", "0"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["--threads", "65"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["-p", "2000000"])).is_err());
        assert!(BenchArgs::parse("doozer bench", &args(&["-c", "10001"])).is_err());
        let parsed = BenchArgs::parse_args("doozer bench", &args(&["--json"])).unwrap();
        assert!(parsed.json);
        assert!(!BenchArgs::parse_args("doozer bench", &[]).unwrap().json);
    }
}
