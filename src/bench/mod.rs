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

pub mod driver;
pub mod histogram;
pub mod pacer;
pub mod report;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use argh::FromArgs;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::client::{dial_uri_conn, Error, DEFAULT_DIAL_TIMEOUT};
use crate::runtime::conn::Conn;
use crate::runtime::rt::block_on;
use crate::uri::Uri;
use driver::{ConnOutcome, Driver, Keys, Live, Requests, Rng};
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

/// Runs the benchmark against the cluster of `uri`: the fill (for reads),
/// then the timed part. `on_progress` is called about once a second on the
/// calling thread. Fails only if a connection cannot be made.
pub fn run(
    uri: &Uri,
    boot: Option<&Uri>,
    cfg: &BenchConfig,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let conns = block_on(dial_all(uri, boot, cfg.conns))?;
    let value: Vec<u8> = (0..cfg.size).map(|i| b'a' + (i % 26) as u8).collect();

    if cfg.fill {
        let next = Arc::new(AtomicU64::new(0));
        let fill_for = cfg.duration.max(Duration::from_secs(1));
        let count = cfg.keys as u64;
        run_phase(
            &conns,
            cfg,
            fill_for,
            |_| {
                let keys = Keys::Sequential {
                    next: next.clone(),
                    count,
                };
                let requests = Requests::new(keys, Op::Set, 0, &cfg.prefix, &value);
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
        &conns,
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
            let requests = Requests::new(keys, cfg.op, cfg.read_pct, &cfg.prefix, &value);
            (pacer, requests)
        },
        &mut on_progress,
    );
    for c in &conns {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }

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
    Ok(report)
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
fn run_phase<S>(
    conns: &[Conn],
    cfg: &BenchConfig,
    length: Duration,
    setup: S,
    mut on_progress: impl FnMut(&Progress),
) -> (Vec<ConnOutcome>, LatencyHistogram, Duration)
where
    S: Fn(usize) -> (Pacer, Requests) + Sync,
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
                .map(|(i, c)| (i, c.clone()))
                .collect();
            let size = cfg.size;
            scope.spawn(move || {
                let hist = Rc::new(RefCell::new(LatencyHistogram::new()));
                let mut drivers: FuturesUnordered<Driver> = mine
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
                let outcomes = block_on(async {
                    let mut outcomes = Vec::new();
                    while let Some(o) = drivers.next().await {
                        outcomes.push(o);
                    }
                    outcomes
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
