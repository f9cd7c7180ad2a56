//! `doozer bench`: a load generator.
//!
//! `conns` connections, each with `pipeline` requests in flight (one task per
//! slot, all sharing the connection's pipelined [`Client`]), send SETs, GETs
//! or a mix to `keys` distinct paths under `/bench/` for `duration`. Every
//! completed request's latency is kept, and the report gives the
//! throughput and the p50/p90/p99/max latency. The run ends by itself: when
//! the time is up no new request is sent, and requests still unanswered a
//! short grace period later are cut off by closing the connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;
use futures::channel::mpsc;
use futures::StreamExt;

use crate::client::{dial_uri, Client, Error};
use crate::runtime::rt::{sleep, spawn, timeout};
use crate::uri::Uri;

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
    /// requests in flight per connection (default 1)
    #[argh(option, short = 'p', default = "1")]
    pub pipeline: usize,
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
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let parsed = BenchArgs::from_args(&[command], &args).map_err(|e| e.output)?;
        parsed.config()
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
        if self.conns == 0 || self.pipeline == 0 || self.keys == 0 {
            return Err("bench: -c, -p and -keys must be at least 1".into());
        }
        let duration = parse_seconds(&self.duration)
            .ok_or_else(|| format!("bench: bad duration {:?}", self.duration))?;
        Ok(BenchConfig {
            conns: self.conns,
            pipeline: self.pipeline,
            op,
            read_pct,
            size: self.size,
            duration,
            keys: self.keys,
            prefix: "/bench".into(),
            fill: op != Op::Set,
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

/// A once-a-second progress report.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    /// Successful operations so far.
    pub ops: u64,
    pub errors: u64,
    /// Operations per second over the last interval.
    pub rate: f64,
}

impl Progress {
    /// `bench: 3s 12345 ops (4115 ops/s)`, plus errors when there are any.
    pub fn render(&self) -> String {
        let mut line = format!(
            "bench: {}s {} ops ({:.0} ops/s)",
            self.elapsed.as_secs_f64().round(),
            self.ops,
            self.rate
        );
        if self.errors > 0 {
            line.push_str(&format!(" {} errors", self.errors));
        }
        line
    }
}

/// Latency percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    /// From samples in nanoseconds (sorted here).
    pub fn from_samples(samples: &mut [u64]) -> Latency {
        samples.sort_unstable();
        let at = |p| Duration::from_nanos(percentile(samples, p));
        Latency {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: Duration::from_nanos(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// The nearest-rank `p`th percentile of sorted samples (0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    /// From the start of the timed part until the last request ended.
    pub elapsed: Duration,
    pub latency: Latency,
    pub first_error: Option<String>,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The final report, one `name: value` per line.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "ops: {}\nerrors: {}\nelapsed: {:.3} s\nops/s: {:.1}\nlatency p50: {:.3} ms\nlatency p90: {:.3} ms\nlatency p99: {:.3} ms\nlatency max: {:.3} ms\n",
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            ms(self.latency.p50),
            ms(self.latency.p90),
            ms(self.latency.p99),
            ms(self.latency.max),
        )
    }
}

/// A small xorshift generator: enough to pick keys and operations.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
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

/// What a worker hands back.
struct WorkerResult {
    samples: Vec<u64>,
    first_error: Option<String>,
}

struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// Runs the benchmark against the cluster of `uri`. `on_progress` is
/// called about once a second. Fails only if a connection cannot be made.
pub async fn run(
    uri: &Uri,
    boot: Option<&Uri>,
    cfg: &BenchConfig,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report, Error> {
    let mut clients = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        clients.push(dial_uri(uri, boot).await?);
    }
    let value: Arc<[u8]> = (0..cfg.size).map(|i| b'a' + (i % 26) as u8).collect();
    let workers = cfg.conns * cfg.pipeline;

    if cfg.fill {
        fill(&clients, cfg, &value).await;
    }

    let counters = Arc::new(Counters {
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let (results_tx, mut results) = mpsc::unbounded();
    for w in 0..workers {
        let client = clients[w % cfg.conns].clone();
        let cfg = cfg.clone();
        let value = value.clone();
        let counters = counters.clone();
        let results_tx = results_tx.clone();
        spawn(async move {
            let result = worker(client, cfg, value, deadline, counters).await;
            let _ = results_tx.unbounded_send(result);
        });
    }
    drop(results_tx);

    // Progress, once a second, until the deadline.
    let mut last_ops = 0;
    let mut last_at = start;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let next = last_at + Duration::from_secs(1);
        sleep(next.min(deadline).saturating_duration_since(now)).await;
        let now = Instant::now();
        if now < next && now >= deadline {
            break;
        }
        let ops = counters.ops.load(Ordering::Relaxed);
        let interval = now.duration_since(last_at).as_secs_f64();
        on_progress(&Progress {
            elapsed: now.duration_since(start),
            ops,
            errors: counters.errors.load(Ordering::Relaxed),
            rate: if interval > 0.0 {
                (ops - last_ops) as f64 / interval
            } else {
                0.0
            },
        });
        last_ops = ops;
        last_at = now;
    }

    // Collect the workers; cut off what is still unanswered after the grace.
    let mut collected = Vec::with_capacity(workers);
    let grace_end = Instant::now() + GRACE;
    while collected.len() < workers {
        let left = grace_end.saturating_duration_since(Instant::now());
        match timeout(left, results.next()).await {
            Some(Some(r)) => collected.push(r),
            Some(None) => break,
            None => {
                for c in &clients {
                    c.close();
                }
                while let Some(Some(r)) = timeout(GRACE, results.next()).await {
                    collected.push(r);
                    if collected.len() == workers {
                        break;
                    }
                }
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    for c in &clients {
        c.close();
    }

    let mut samples: Vec<u64> = Vec::with_capacity(collected.iter().map(|r| r.samples.len()).sum());
    let mut first_error = None;
    for r in collected {
        samples.extend_from_slice(&r.samples);
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    Ok(Report {
        ops: samples.len() as u64,
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed,
        latency: Latency::from_samples(&mut samples),
        first_error,
    })
}

fn key(cfg: &BenchConfig, n: u64) -> String {
    format!("{}/{n}", cfg.prefix)
}

/// Writes every key once, spread over all connections and pipeline slots;
/// bounded by the run's duration.
async fn fill(clients: &[Client], cfg: &BenchConfig, value: &Arc<[u8]>) {
    let slots = clients.len() * cfg.pipeline;
    let give_up = Instant::now() + cfg.duration.max(Duration::from_secs(1));
    let mut tasks = Vec::with_capacity(slots);
    for s in 0..slots {
        let client = clients[s % clients.len()].clone();
        let cfg = cfg.clone();
        let value = value.clone();
        tasks.push(spawn(async move {
            let mut n = s;
            while n < cfg.keys && Instant::now() < give_up {
                let left = give_up.saturating_duration_since(Instant::now());
                match timeout(left, client.set(&key(&cfg, n as u64), -1, &value)).await {
                    Some(Err(e)) if e.is_connection_error() => return,
                    None => return,
                    _ => {}
                }
                n += slots;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
}

async fn worker(
    client: Client,
    cfg: BenchConfig,
    value: Arc<[u8]>,
    deadline: Instant,
    counters: Arc<Counters>,
) -> WorkerResult {
    let mut rng = Rng::new();
    let mut samples = Vec::new();
    let mut first_error = None;
    while Instant::now() < deadline {
        let path = key(&cfg, rng.below(cfg.keys as u64));
        let read = match cfg.op {
            Op::Set => false,
            Op::Get => true,
            Op::Mixed => rng.below(100) < u64::from(cfg.read_pct),
        };
        let t0 = Instant::now();
        let result = if read {
            client.get(&path, None).await.map(|_| ())
        } else {
            client.set(&path, -1, &value).await.map(|_| ())
        };
        let nanos = t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        match result {
            Ok(()) => {
                samples.push(nanos);
                counters.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let dead = e.is_connection_error();
                first_error.get_or_insert_with(|| e.to_string());
                if dead {
                    break;
                }
            }
        }
    }
    WorkerResult {
        samples,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 90.0), 90);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        let mut samples = vec![5_000_000, 1_000_000, 3_000_000, 2_000_000, 4_000_000];
        let lat = Latency::from_samples(&mut samples);
        assert_eq!(lat.p50, Duration::from_millis(3));
        assert_eq!(lat.p90, Duration::from_millis(5));
        assert_eq!(lat.max, Duration::from_millis(5));
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
    fn report_format() {
        let report = Report {
            ops: 1000,
            errors: 2,
            elapsed: Duration::from_secs(2),
            latency: Latency {
                p50: Duration::from_micros(1500),
                p90: Duration::from_millis(2),
                p99: Duration::from_millis(3),
                max: Duration::from_millis(10),
            },
            first_error: None,
        };
        assert_eq!(
            report.render(),
            "ops: 1000\nerrors: 2\nelapsed: 2.000 s\nops/s: 500.0\nlatency p50: 1.500 ms\nlatency p90: 2.000 ms\nlatency p99: 3.000 ms\nlatency max: 10.000 ms\n"
        );
        let p = Progress {
            elapsed: Duration::from_millis(3001),
            ops: 12345,
            errors: 0,
            rate: 4115.2,
        };
        assert_eq!(p.render(), "bench: 3s 12345 ops (4115 ops/s)");
    }
}
