//! One run: a cluster in namespaces, clients on every node, the nemesis,
//! then healing, the final reads, the checker, one summary line, and on
//! failure the evidence saved under `target/faults/<nemesis>-seed<S>/`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::future::timeout;
use doozer::client::Client;

use crate::cluster::{call, rev_of, wait_until, Cluster};
use crate::history::{self, Final, Op, OpKind, WatchStream};
use crate::nemesis;
use crate::workload::{self, key, Shared, KEYS};

/// Workers per node slot, each on its own connection.
const WORKERS_PER_NODE: usize = 3;
/// Pause between one worker's ops: 12 workers at most ~25 ops/s each, a few
/// hundred ops/s in total.
const PERIOD: Duration = Duration::from_millis(40);
/// How long the cluster gets to heal after the last fault.
const HEAL_LIMIT: Duration = Duration::from_secs(60);

pub struct Spec {
    pub nemesis: String,
    pub seed: u64,
    pub secs: u64,
    pub run: usize,
    pub extra: Vec<String>,
}

pub struct Outcome {
    pub line: String,
    pub pass: bool,
}

/// The verdicts: PASS; FAIL (an anomaly: doozer's fault); UNHEALED (the
/// cluster did not come back); HARNESS (the suite itself failed: no
/// judgement on doozer).
pub fn run(spec: &Spec) -> Outcome {
    let work = std::env::temp_dir().join(format!(
        "dzfaults-{}-{}-{}-seed{}",
        std::process::id(),
        spec.run,
        spec.nemesis,
        spec.seed
    ));
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = std::fs::create_dir_all(&work) {
        return harness(spec, &format!("{}: {e}", work.display()), None);
    }
    let out = run_in(spec, &work);
    let _ = std::fs::remove_dir_all(&work);
    out
}

struct Record {
    ops: Vec<Op>,
    watches: Vec<WatchStream>,
    finals: Vec<Final>,
    nemesis_log: Vec<String>,
}

fn harness(spec: &Spec, why: &str, saved: Option<&Path>) -> Outcome {
    let mut line = format!(
        "faults nemesis={} seed={} secs={} verdict=HARNESS ({why})",
        spec.nemesis, spec.seed, spec.secs
    );
    if let Some(p) = saved {
        line.push_str(&format!(" saved={}", p.display()));
    }
    Outcome { line, pass: false }
}

fn run_in(spec: &Spec, work: &Path) -> Outcome {
    let mut cluster = match Cluster::new(spec.run, work, &spec.extra) {
        Ok(c) => c,
        Err(e) => return harness(spec, &format!("network setup: {e}"), None),
    };
    if let Err(e) = cluster.form() {
        let saved = save(spec, &cluster, None, &format!("cluster formation: {e}"));
        return harness(spec, &format!("cluster formation: {e}"), Some(&saved));
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        slots: Mutex::new(cluster.nodes.iter().map(|n| n.addr.clone()).collect()),
        stop_workers: AtomicBool::new(false),
        stop_watchers: AtomicBool::new(false),
        watch_until: AtomicI64::new(i64::MAX),
        period: PERIOD,
    });
    let slots = cluster.nodes.len();
    let mut workers = Vec::new();
    for slot in 0..slots {
        for w in 0..WORKERS_PER_NODE {
            let client = slot * WORKERS_PER_NODE + w;
            workers.push(async_std::task::spawn(workload::worker(
                shared.clone(),
                client,
                slot,
                spec.seed,
            )));
        }
    }
    let watchers: Vec<_> = (0..slots)
        .map(|slot| async_std::task::spawn(workload::watcher(shared.clone(), slot)))
        .collect();

    let steps = nemesis::schedule(&spec.nemesis, spec.seed, spec.secs);
    let mut nemesis_log: Vec<String> = steps.iter().map(|s| format!("plan {s:?}")).collect();
    let end = start + Duration::from_secs(spec.secs);
    let nemesis_result = nemesis::execute(&mut cluster, &shared, &steps, end, &mut nemesis_log);

    shared.stop_workers.store(true, Ordering::Relaxed);
    let mut ops: Vec<Op> = Vec::new();
    for w in workers {
        ops.extend(async_std::task::block_on(w));
    }
    let ops_secs = start.elapsed().as_secs_f64();

    // Heal: SIGCONT, flush rules, restart the dead (not the retired).
    // A node whose process ended on its own (not by the nemesis) is noted
    // and started again.
    let mut exits = Vec::new();
    let heal = (|| -> Result<(), String> {
        for i in cluster.live() {
            if cluster.nodes[i].paused {
                cluster.signal(i, false);
            }
            if cluster.exited(i) {
                exits.push(cluster.nodes[i].name.clone());
                cluster.nodes[i].child = None;
            }
            if !cluster.nodes[i].is_up() {
                cluster.start(i)?;
            }
        }
        cluster.heal()
    })();
    if !exits.is_empty() {
        nemesis_log.push(format!("exited on their own: {exits:?}"));
    }
    let panicked: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| std::fs::read_to_string(&n.log).is_ok_and(|l| l.contains("panicked at")))
        .map(|n| n.name.clone())
        .collect();
    let final_phase = nemesis_result
        .and(heal)
        .map_err(|e| format!("HARNESS: {e}"))
        .and_then(|()| final_phase(&cluster, &shared, &mut ops));
    let finals = match &final_phase {
        Ok(f) => f.clone(),
        Err(_) => Vec::new(),
    };
    // The watchers read up to the final rev, then stop (bounded: each WAIT
    // times out within a second, and they give up 15 s from now).
    shared.stop_watchers.store(true, Ordering::Relaxed);
    let mut watches: Vec<WatchStream> = Vec::new();
    for w in watchers {
        let got = async_std::task::block_on(timeout(Duration::from_secs(15), w));
        match got {
            Ok(s) => watches.extend(s),
            Err(_) => nemesis_log.push("a watcher did not stop within 15 s".into()),
        }
    }
    for (id, op) in ops.iter_mut().enumerate() {
        op.id = id;
    }
    let record = Record {
        ops,
        watches,
        finals,
        nemesis_log,
    };
    let check_start = Instant::now();
    let judgement = history::judge(&record.ops, &record.watches, &record.finals);
    let check_secs = check_start.elapsed().as_secs_f64();

    let count = |f: &dyn Fn(&Op) -> bool| record.ops.iter().filter(|o| f(o)).count();
    use history::Outcome as O;
    let outcome_of = |o: &Op| match &o.kind {
        OpKind::Set { outcome, .. } | OpKind::Del { outcome, .. } => Some(outcome.clone()),
        OpKind::Get { .. } => None,
    };
    let ok = count(&|o| matches!(outcome_of(o), Some(O::Ok(_))));
    let refused = count(&|o| matches!(outcome_of(o), Some(O::Refused | O::Mismatch)));
    let unknown = count(&|o| outcome_of(o) == Some(O::Unknown));
    let reads = count(&|o| matches!(o.kind, OpKind::Get { .. }));
    let events: usize = record
        .watches
        .iter()
        .flat_map(|w| &w.segments)
        .map(|s| s.events.len())
        .sum();
    let (verdict, why) = match &final_phase {
        Err(e) if e.starts_with("HARNESS") => ("HARNESS", e.clone()),
        Err(e) => ("UNHEALED", e.clone()),
        Ok(_) if !panicked.is_empty() => ("FAIL", format!("doozerd panicked: {panicked:?}")),
        Ok(_) if judgement.inconclusive => ("INCONCLUSIVE", String::new()),
        Ok(_) if !judgement.anomalies.is_empty() => ("FAIL", String::new()),
        Ok(_) => ("PASS", String::new()),
    };
    let mut line = format!(
        "faults nemesis={} seed={} secs={} ops={} ok={ok} refused={refused} unknown={unknown} reads={reads} events={events} ops/s={:.0} anomalies={} precheck={} verdict={verdict} ({check_secs:.2} s check)",
        spec.nemesis,
        spec.seed,
        spec.secs,
        record.ops.len(),
        record.ops.len() as f64 / ops_secs.max(0.001),
        judgement.lincheck,
        judgement.precheck,
    );
    if !exits.is_empty() {
        line.push_str(&format!(" exited={}", exits.join(",")));
    }
    if !why.is_empty() {
        line.push_str(&format!(" [{why}]"));
    }
    let pass = verdict == "PASS";
    if !pass {
        let mut report = judgement.report.clone();
        report.push_str(&format!("\n{line}\n"));
        let saved = save(spec, &cluster, Some(&record), &report);
        line.push_str(&format!(" saved={}", saved.display()));
    }
    Outcome { line, pass }
}

/// After healing: a final write every live node must reach; then GET every
/// key on every live node (recorded) and each node's `/jepsen` files at the
/// final write's rev. `Err` means the cluster did not heal.
fn final_phase(
    cluster: &Cluster,
    shared: &Arc<Shared>,
    ops: &mut Vec<Op>,
) -> Result<Vec<Final>, String> {
    let live: Vec<usize> = cluster.live();
    let mut turn = 0usize;
    let rev = wait_until("a final write", HEAL_LIMIT, || {
        turn += 1;
        let addr = &cluster.nodes[live[turn % live.len()]].addr;
        call(
            addr,
            |c| async move { c.set("/fault-final", -1, b"done").await },
        )
    })?;
    for &i in &live {
        let addr = cluster.nodes[i].addr.clone();
        wait_until(
            &format!("{} to reach rev {rev}", cluster.nodes[i].name),
            HEAL_LIMIT,
            || {
                let now = rev_of(&addr)?;
                (now >= rev).then_some(()).ok_or(format!("at rev {now}"))
            },
        )?;
    }
    shared.watch_until.store(rev, Ordering::Relaxed);
    let mut finals = Vec::new();
    for (n, &i) in live.iter().enumerate() {
        let addr = cluster.nodes[i].addr.clone();
        let client = 100_000 + n;
        let got = async_std::task::block_on(async {
            let c = Client::connect_timeout(&addr, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            for k in 0..KEYS {
                let invoked = shared.now();
                let (body, r) = timeout(Duration::from_secs(2), c.get(&key(k), None))
                    .await
                    .map_err(|_| format!("{addr}: final GET timed out"))?
                    .map_err(|e| format!("{addr}: final GET: {e}"))?;
                ops.push(Op {
                    id: 0,
                    client,
                    invoked,
                    completed: Some(shared.now()),
                    kind: OpKind::Get {
                        key: key(k),
                        body,
                        rev: r,
                    },
                });
            }
            let files = timeout(Duration::from_secs(5), c.walk_all(workload::GLOB, rev))
                .await
                .map_err(|_| format!("{addr}: final WALK timed out"))?
                .map_err(|e| format!("{addr}: final WALK: {e}"))?;
            c.close();
            Ok::<_, String>(files)
        })?;
        finals.push(Final {
            node: addr,
            rev,
            files: got.into_iter().map(|e| (e.path, e.rev, e.body)).collect(),
        });
    }
    Ok(finals)
}

/// Where a failing run's evidence goes.
fn save_dir(spec: &Spec) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target
        .join("faults")
        .join(format!("{}-seed{}", spec.nemesis, spec.seed))
}

fn save(spec: &Spec, cluster: &Cluster, record: Option<&Record>, report: &str) -> PathBuf {
    let dir = save_dir(spec);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("report.txt"), report);
    if let Some(r) = record {
        let _ = std::fs::write(dir.join("history.txt"), history::format_ops(&r.ops));
        let _ = std::fs::write(dir.join("watches.txt"), history::format_watches(&r.watches));
        let _ = std::fs::write(dir.join("finals.txt"), history::format_finals(&r.finals));
        let _ = std::fs::write(dir.join("nemesis.txt"), r.nemesis_log.join("\n") + "\n");
    }
    for n in &cluster.nodes {
        let _ = std::fs::copy(&n.log, dir.join(format!("{}.log", n.name)));
    }
    dir
}
