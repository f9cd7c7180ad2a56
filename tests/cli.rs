//! The real `doozer` CLI against a real `doozerd`: every command, its stdout,
//! stderr and exit code, the error cases included (reference §8 with the
//! fixes of CONTRACT.md).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(server: &Server, args: &[&str], stdin: &str) -> Run {
    let out = server.doozer(args, stdin.as_bytes());
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(server: &Server, args: &[&str], stdin: &str) -> String {
    let r = run(server, args, stdin);
    assert_eq!(r.code, 0, "doozer {args:?}: stderr {:?}", r.stderr);
    r.stdout
}

fn rev_line(text: &str) -> i64 {
    assert!(text.ends_with('\n'), "{text:?} ends with a newline");
    text.trim_end().parse().unwrap()
}

#[test]
fn set_get_add_del_touch_stat() {
    let server = Server::start(&[]);
    let rev = rev_line(&ok(&server, &["set", "/a", "0"], "hello"));
    assert_eq!(ok(&server, &["get", "/a"], ""), "hello");
    assert_eq!(ok(&server, &["stat", "/a"], ""), format!("{rev} 5\n"));

    // Rev mismatch: exit 1 (the documented code), error on stderr.
    let r = run(&server, &["set", "/a", "0"], "again");
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
    assert_eq!(r.stderr.trim_end(), "Error: REV_MISMATCH");
    let rev2 = rev_line(&ok(&server, &["set", "/a", &rev.to_string()], "second"));
    assert!(rev2 > rev);
    assert_eq!(ok(&server, &["get", "/a"], ""), "second");

    let added = rev_line(&ok(&server, &["add", "/b"], "bee"));
    assert!(added > rev2);
    let r = run(&server, &["add", "/b"], "bee");
    assert_eq!(r.code, 1, "add over an existing file is a rev mismatch");

    assert_eq!(ok(&server, &["del", "/b", &added.to_string()], ""), "");
    assert_eq!(
        ok(&server, &["get", "/b"], ""),
        "",
        "an absent file prints nothing"
    );

    assert_eq!(ok(&server, &["touch", "/t"], ""), "");
    let stat = ok(&server, &["stat", "/t"], "");
    assert!(stat.ends_with(" 0\n"), "{stat:?}");
    let before = stat.split(' ').next().unwrap().parse::<i64>().unwrap();
    ok(&server, &["touch", "/t"], "");
    let after = ok(&server, &["stat", "/t"], "");
    assert!(after.split(' ').next().unwrap().parse::<i64>().unwrap() > before);

    // Directories.
    ok(&server, &["set", "/d/x", "-1"], "1");
    ok(&server, &["set", "/d/y", "-1"], "2");
    assert_eq!(ok(&server, &["stat", "/d"], ""), "d 2\n");
    let r = run(&server, &["get", "/d"], "");
    assert_eq!((r.code, r.stderr.trim_end()), (2, "Error: ISDIR"));
    let r = run(&server, &["set", "/d", "-1"], "x");
    assert_eq!((r.code, r.stderr.trim_end()), (2, "Error: ISDIR"));

    // Absent file in stat.
    let r = run(&server, &["stat", "/nope"], "");
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.trim_end(), "No such file or directory: /nope");

    // Bad paths.
    let r = run(&server, &["set", "/bad/", "0"], "x");
    assert_eq!((r.code, r.stderr.trim_end()), (2, "Error: BAD_PATH"));
    let r = run(&server, &["get", "nope"], "");
    assert_eq!((r.code, r.stderr.trim_end()), (2, "Error: BAD_PATH"));
}

#[test]
fn rev_self_nop_find() {
    let server = Server::start(&[]);
    let rev = rev_line(&ok(&server, &["rev"], ""));
    assert!(rev >= 7);
    let id = ok(&server, &["self"], "");
    assert_eq!(id.len(), 16, "{id:?}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    assert_eq!(ok(&server, &["get", "/ctl/cal/0"], ""), id);
    assert_eq!(ok(&server, &["nop"], ""), "");
    assert!(rev_line(&ok(&server, &["rev"], "")) > rev);

    ok(&server, &["set", "/f/a/b", "-1"], "1");
    ok(&server, &["set", "/f/a-b", "-1"], "2");
    ok(&server, &["set", "/f/c", "-1"], "3");
    // Pre-order, sorted per level: /f/a/b before /f/a-b.
    assert_eq!(
        ok(&server, &["find", "/f"], ""),
        "/f\n/f/a\n/f/a/b\n/f/a-b\n/f/c\n"
    );
    let r = run(&server, &["find", "/missing"], "");
    assert_eq!(r.code, 2, "find fails after an error: {}", r.stderr);
    assert!(r.stderr.contains("NOENT"), "{:?}", r.stderr);
}

#[test]
fn wait_and_watch_records() {
    let server = Server::start(&[]);
    let rev = rev_line(&ok(&server, &["set", "/w/x", "-1"], "body"));
    let record = ok(&server, &["wait", "-r", &rev.to_string(), "/w/**"], "");
    assert_eq!(record, format!("/w/x {rev} set 4\nbody\n"));
    // Flags after the command work too, and -r before it.
    let record = ok(&server, &["-r", &rev.to_string(), "wait", "/w/**"], "");
    assert_eq!(record, format!("/w/x {rev} set 4\nbody\n"));

    // Wait with a timeout that expires.
    let r = run(&server, &["wait", "-t", "200ms", "/never/**"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);

    // Watch: set, del and nop records, in order.
    let start = rev_line(&ok(&server, &["rev"], "")) + 1;
    let mut child = Command::new(DOOZER)
        .args(["watch", "-r", &start.to_string(), "/**"])
        .env("DOOZER_URI", server.uri())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let set_rev = rev_line(&ok(&server, &["set", "/w/y", "-1"], "two\nlines"));
    ok(&server, &["del", "/w/y", "-1"], "");
    ok(&server, &["nop"], "");
    // Read on a thread, so a watch that prints too little fails the test at
    // the deadline instead of blocking it.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
            return;
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines.len() < 7 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text: String = lines.concat();
    assert_eq!(
        text,
        format!(
            "/w/y {set_rev} set 9\ntwo\nlines\n/w/y {} del 0\n\n/ {}  0\n\n",
            set_rev + 1,
            set_rev + 2
        )
    );
}

#[test]
fn usage_errors_and_version() {
    let server = Server::start(&[]);
    let r = run(&server, &[], "");
    assert_eq!(r.code, 127);
    assert!(r.stderr.contains("missing command"), "{}", r.stderr);
    let r = run(&server, &["frob"], "");
    assert_eq!(r.code, 127);
    assert!(r.stderr.contains("Unknown command: frob"));
    let r = run(&server, &["get"], "");
    assert_eq!(r.code, 127);
    assert!(r.stderr.contains("get: wrong number of arguments"));
    let r = run(&server, &["-v"], "");
    assert_eq!((r.code, r.stdout.as_str()), (0, "doozer 0.9.0\n"));
    let r = run(&server, &["set", "/x", "notanumber"], "");
    assert_eq!(r.code, 2);
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let addr = free_addr();
    let out = doozer_with_env(
        &[("DOOZER_URI", &format!("doozer:?ca={addr}"))],
        &["get", "/x"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Error:"));
}

#[test]
fn secrets_deny_and_grant() {
    let server =
        Server::start_with_env(&[], &[("DOOZER_RWSECRET", "rw"), ("DOOZER_ROSECRET", "ro")]);
    for args in [&["get", "/ctl/name"][..], &["rev"], &["self"]] {
        let r = run(&server, args, "");
        assert_eq!(r.code, 2, "{args:?}");
        assert_eq!(
            r.stderr.trim_end(),
            "Error: OTHER: permission denied",
            "{args:?}"
        );
    }
    let ro = format!("doozer:?ca={}&sk=ro", server.addr);
    let rw = format!("doozer:?ca={}&sk=rw", server.addr);
    let wrong = format!("doozer:?ca={}&sk=nope", server.addr);
    assert_eq!(ok(&server, &["-a", &ro, "get", "/ctl/name"], ""), "local");
    let r = run(&server, &["-a", &ro, "set", "/x", "0"], "v");
    assert_eq!(
        (r.code, r.stderr.trim_end()),
        (2, "Error: OTHER: permission denied")
    );
    // The bench sends the URI's secret first on each of its connections.
    let r = run(
        &server,
        &["-a", &rw, "bench", "-d", "0.3", "-c", "2", "-json"],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"errors\":0,"), "{}", r.stdout);
    let r = run(&server, &["-a", &wrong, "bench", "-d", "0.3"], "");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    let r = run(&server, &["-a", &ro, "bench", "-d", "0.3"], "");
    assert_eq!(r.code, 2, "a read-only secret: every set refused");
    assert!(
        r.stderr.contains("first error: OTHER: permission denied"),
        "{}",
        r.stderr
    );
    let r = run(&server, &["-a", &wrong, "get", "/ctl/name"], "");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    // -a after the command.
    rev_line(&ok(&server, &["set", "-a", &rw, "/x", "0"], "v"));
    assert_eq!(ok(&server, &["get", "-a", &ro, "/x"], ""), "v");
}

#[test]
fn help_and_bench_against_a_real_server() {
    let server = Server::start(&[]);
    let help = ok(&server, &["help", "set"], "");
    assert!(help.starts_with("Use: "), "{help:?}");
    assert!(help.contains("set [options] <path> <rev>"), "{help:?}");

    // A short bench run: progress on stderr, a summary on stdout, no errors.
    let r = run(
        &server,
        &[
            "bench", "-c", "4", "-p", "2", "-op", "mixed", "-d", "1", "-keys", "20",
        ],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let field = |name: &str| -> f64 {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.stdout));
        line.split_whitespace()
            .nth_back(if name.starts_with("latency") { 1 } else { 0 })
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("ops:") > 0.0);
    assert_eq!(field("errors:"), 0.0);
    assert!(field("ops/s:") > 0.0);
    let percentiles: Vec<f64> = [
        "latency p50:",
        "latency p90:",
        "latency p99:",
        "latency max:",
    ]
    .iter()
    .map(|p| field(p))
    .collect();
    assert!(
        percentiles[0] > 0.0 && percentiles.windows(2).all(|w| w[0] <= w[1]),
        "p50 <= p90 <= p99 <= max: {percentiles:?}"
    );
    // The keys it wrote are there.
    let listing = ok(&server, &["find", "/bench"], "");
    assert!(listing.lines().count() > 1, "{listing:?}");
}

/// The open loop with a JSON summary: `-rate 200 -d 1` sends about 200
/// requests on schedule, and stdout is one JSON line whose fields say so.
#[test]
fn bench_open_loop_json_summary() {
    let server = Server::start(&[]);
    let r = run(
        &server,
        &["bench", "-rate", "200", "-d", "1", "-c", "2", "-json"],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 1, "one line: {:?}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim_end()).unwrap();
    assert_eq!(v["op"], "set");
    assert_eq!(v["conns"], 2);
    assert_eq!(v["size"], 64);
    assert_eq!(v["rate"], 200.0);
    assert_eq!(v["duration_s"], 1.0);
    assert_eq!(v["errors"], 0, "{}", r.stdout);
    assert!(v["first_error"].is_null(), "{}", r.stdout);
    let ops = v["ops"].as_u64().unwrap();
    let unsent = v["unsent"].as_u64().unwrap();
    // Exactly 200 are scheduled in one second; each is either answered or
    // counted unsent (no errors).
    assert_eq!(ops + unsent, 200, "{}", r.stdout);
    assert!(ops > 0);
    assert!(v["late"].as_u64().unwrap() <= ops);
    let rate = v["ops_per_sec"].as_f64().unwrap();
    assert!(
        rate > 0.0 && rate <= 201.0,
        "never faster than scheduled: {rate}"
    );
    let p: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| {
            v[k].as_f64()
                .unwrap_or_else(|| panic!("{k} in {}", r.stdout))
        })
        .collect();
    assert!(
        p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
        "p50 <= p90 <= p99 <= p99.9 <= max: {p:?}"
    );

    // -json=false keeps the human report.
    let r = run(
        &server,
        &["bench", "-rate", "50", "-d", "0.2", "-json=false"],
        "",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("rate target: 50.0 ops/s\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("latency p99.9: "), "{}", r.stdout);
}

/// `doozer members` on a one-node cluster: one `leader` line for slot 0; an
/// opened slot shows as `empty`; an argument is a usage error.
#[test]
fn members_lists_slots_and_roles() {
    let server = Server::start(&[]);
    let id = ok(&server, &["self"], "");
    let applied_ok = |applied: &str| applied == "-" || applied.parse::<i64>().is_ok();

    let out = ok(&server, &["members"], "");
    let lines: Vec<&str> = out.lines().collect();
    assert!(out.ends_with('\n'), "{out:?}");
    assert_eq!(lines.len(), 1, "{out:?}");
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields.len(), 5, "{out:?}");
    assert_eq!(
        fields[..4],
        ["0", id.as_str(), server.addr.as_str(), "leader"],
        "{out:?}"
    );
    assert!(applied_ok(fields[4]), "{out:?}");

    // At an explicit revision, with -r before or after the command.
    let rev = rev_line(&ok(&server, &["rev"], ""));
    let at = ok(&server, &["members", "-r", &rev.to_string()], "");
    assert_eq!(at.lines().count(), 1, "{at:?}");
    assert!(
        at.starts_with(&format!("0 {id} {} ", server.addr)),
        "{at:?}"
    );

    // An operator opens slot 1: nobody is there to claim it.
    rev_line(&ok(&server, &["set", "/ctl/cal/1", "0"], ""));
    let out = ok(&server, &["members"], "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].starts_with(&format!("0 {id} {} leader ", server.addr)),
        "{out:?}"
    );
    assert_eq!(lines[1], "1 - - empty -");
    // The old revision still shows the one slot.
    let before = ok(&server, &["-r", &rev.to_string(), "members"], "");
    assert_eq!(before, at);

    // Usage errors and help.
    let r = run(&server, &["members", "extra"], "");
    assert_eq!(r.code, 127);
    assert_eq!(r.stderr, "members: wrong number of arguments\n");
    assert!(r.stdout.starts_with("Use: "), "{:?}", r.stdout);
    let help = ok(&server, &["help", "members"], "");
    assert!(
        help.contains("<slot> <id> <addr> <role> <applied>"),
        "{help:?}"
    );
    let r = run(&server, &["-h"], "");
    assert!(
        r.stderr.contains("  members          - "),
        "usage lists members: {:?}",
        r.stderr
    );
}

#[test]
fn members_against_no_server_is_an_error() {
    let addr = free_addr();
    let out = doozer_with_env(
        &[("DOOZER_URI", &format!("doozer:?ca={addr}"))],
        &["members"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Error: dial tcp"));
    assert!(out.stdout.is_empty());
}
