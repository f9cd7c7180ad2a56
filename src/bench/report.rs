//! What `doozer bench` prints: a progress line a second on stderr, and at
//! the end either the human report (`name: value` lines) or, with `-json`,
//! one line of JSON for scripts (`scripts/bench-compare.sh` reads it).

use std::fmt::Write as _;
use std::time::Duration;

use super::histogram::Latency;
use super::{BenchConfig, Op, Protocol};

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

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    /// From the start of the timed part until the last request ended.
    pub elapsed: Duration,
    pub latency: Latency,
    /// Open loop: requests sent late, and requests never sent (see
    /// [`super::pacer`]); zero in the closed loop.
    pub late: u64,
    pub unsent: u64,
    pub first_error: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

    /// The final report, one `name: value` per line; the open loop's
    /// target rate and late and unsent requests when `cfg` has a rate.
    pub fn render(&self, cfg: &BenchConfig) -> String {
        let mut out = format!(
            "ops: {}\nerrors: {}\nelapsed: {:.3} s\nops/s: {:.1}\n",
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
        );
        if let Some(rate) = cfg.rate {
            let _ = write!(
                out,
                "rate target: {rate:.1} ops/s\nlate: {}\nunsent: {}\n",
                self.late, self.unsent
            );
        }
        let l = &self.latency;
        let _ = write!(
            out,
            "latency p50: {:.3} ms\nlatency p90: {:.3} ms\nlatency p99: {:.3} ms\nlatency p99.9: {:.3} ms\nlatency max: {:.3} ms\n",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
        );
        out
    }

    /// One line of JSON (with its newline), its fields in a fixed order:
    /// the run's settings (`op`, `read_pct`: the share of GETs, `conns`,
    /// `pipeline`, `size`, `keys`, `threads`, `rate`: the open loop's target
    /// or `null`, `duration_s`), then what came of it (`ops`, `errors`,
    /// `elapsed_s`, `ops_per_sec`, `late`, `unsent`, `p50_ms`, `p90_ms`,
    /// `p99_ms`, `p999_ms`, `max_ms`, `first_error`: a string or `null`),
    /// and last `"protocol":"zookeeper"` when the run drove ZooKeeper (a
    /// doozer run's line is as it always was).
    pub fn json(&self, cfg: &BenchConfig) -> String {
        let (op, read_pct) = match cfg.op {
            Op::Set => ("set", 0),
            Op::Get => ("get", 100),
            Op::Mixed => ("mixed", cfg.read_pct),
        };
        let rate = cfg.rate.map_or("null".to_string(), |r| format!("{r:.1}"));
        let first_error = self
            .first_error
            .as_deref()
            .map_or("null".to_string(), json_string);
        let l = &self.latency;
        let protocol = match cfg.protocol {
            Protocol::Doozer => "",
            Protocol::ZooKeeper => ",\"protocol\":\"zookeeper\"",
        };
        format!(
            "{{\"op\":\"{op}\",\"read_pct\":{read_pct},\"conns\":{},\"pipeline\":{},\"size\":{},\
             \"keys\":{},\"threads\":{},\"rate\":{rate},\"duration_s\":{:.3},\"ops\":{},\
             \"errors\":{},\"elapsed_s\":{:.3},\"ops_per_sec\":{:.1},\"late\":{},\"unsent\":{},\
             \"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\
             \"first_error\":{first_error}{protocol}}}\n",
            cfg.conns,
            cfg.pipeline,
            cfg.size,
            cfg.keys,
            cfg.threads,
            cfg.duration.as_secs_f64(),
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            self.late,
            self.unsent,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
        )
    }
}

/// `text` as a JSON string literal (escaped as the web view's JSON is).
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    crate::web::json::push_str(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            ops: 1000,
            errors: 2,
            elapsed: Duration::from_secs(2),
            latency: Latency {
                p50: Duration::from_micros(1500),
                p90: Duration::from_millis(2),
                p99: Duration::from_millis(3),
                p999: Duration::from_millis(4),
                max: Duration::from_millis(10),
            },
            late: 3,
            unsent: 4,
            first_error: None,
        }
    }

    #[test]
    fn human_format() {
        let cfg = BenchConfig::default();
        assert_eq!(
            report().render(&cfg),
            "ops: 1000\nerrors: 2\nelapsed: 2.000 s\nops/s: 500.0\nlatency p50: 1.500 ms\nlatency p90: 2.000 ms\nlatency p99: 3.000 ms\nlatency p99.9: 4.000 ms\nlatency max: 10.000 ms\n"
        );
        let open = BenchConfig {
            rate: Some(500.0),
            ..BenchConfig::default()
        };
        assert!(report()
            .render(&open)
            .contains("ops/s: 500.0\nrate target: 500.0 ops/s\nlate: 3\nunsent: 4\nlatency p50:"));
        let p = Progress {
            elapsed: Duration::from_millis(3001),
            ops: 12345,
            errors: 0,
            rate: 4115.2,
        };
        assert_eq!(p.render(), "bench: 3s 12345 ops (4115 ops/s)");
    }

    #[test]
    fn json_line() {
        let cfg = BenchConfig {
            op: Op::Mixed,
            read_pct: 90,
            conns: 4,
            pipeline: 8,
            rate: Some(2000.0),
            duration: Duration::from_millis(1500),
            ..BenchConfig::default()
        };
        let mut r = report();
        r.first_error = Some("OTHER: \"x\"\n".into());
        assert_eq!(
            r.json(&cfg),
            "{\"op\":\"mixed\",\"read_pct\":90,\"conns\":4,\"pipeline\":8,\"size\":64,\"keys\":1000,\
             \"threads\":1,\"rate\":2000.0,\"duration_s\":1.500,\"ops\":1000,\"errors\":2,\
             \"elapsed_s\":2.000,\"ops_per_sec\":500.0,\"late\":3,\"unsent\":4,\"p50_ms\":1.500,\
             \"p90_ms\":2.000,\"p99_ms\":3.000,\"p999_ms\":4.000,\"max_ms\":10.000,\
             \"first_error\":\"OTHER: \\\"x\\\"\\n\"}\n"
        );
        let closed = report().json(&BenchConfig::default());
        assert!(
            closed.contains("\"op\":\"set\",\"read_pct\":0,"),
            "{closed}"
        );
        assert!(closed.contains("\"rate\":null,"), "{closed}");
        assert!(closed.ends_with("\"first_error\":null}\n"), "{closed}");
        assert_eq!(closed.lines().count(), 1);
        for line in [closed, r.json(&cfg)] {
            let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(v.as_object().unwrap().len(), 21, "{line}");
        }
        let zk = BenchConfig {
            protocol: Protocol::ZooKeeper,
            ..BenchConfig::default()
        };
        let line = report().json(&zk);
        assert!(
            line.ends_with("\"first_error\":null,\"protocol\":\"zookeeper\"}\n"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["protocol"], "zookeeper");
    }

    #[test]
    fn json_strings_escape_control_characters() {
        assert_eq!(json_string("a\u{1}b\\"), "\"a\\u0001b\\\\\"");
        assert_eq!(json_string("é"), "\"é\"");
    }
}
