//! The nemeses: a seeded schedule of faults (each ~2-10 s, with healthy
//! gaps between), and their execution on a [`Cluster`]. The schedule is a
//! pure function of (nemesis, seed, run length); which node "the leader" is
//! gets decided when the fault starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{wait_until, Cluster};
use crate::rng::Rng;
use crate::workload::Shared;

pub const NEMESES: [&str; 6] = ["kill", "pause", "partition", "churn", "restart", "combined"];

#[derive(Clone, Debug)]
pub enum Target {
    Leader,
    /// The n-th live node (modulo their number).
    Any(usize),
}

#[derive(Clone, Debug)]
pub enum Partition {
    /// The leader alone on one side.
    IsolateLeader,
    /// The live nodes shuffled by `seed`, the first `minority` on one side.
    Split { seed: u64, minority: usize },
    /// `from`'s packets to `to` dropped (n-th live nodes), not the reverse.
    OneWay { from: usize, to: usize },
    /// A split, cut and healed every `period_ms`.
    Flap { seed: u64, period_ms: u64 },
}

#[derive(Clone, Debug)]
pub enum Fault {
    Kill {
        target: Target,
        down_ms: u64,
    },
    Pause {
        target: Target,
        ms: u64,
    },
    Partition {
        kind: Partition,
        ms: u64,
    },
    /// A member killed for good; once the slave took its slot, a new node
    /// attaches (fresh data dir) and becomes the slave.
    Churn {
        target: Target,
    },
    RestartAll {
        down_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    /// When to start, in ms since the run began.
    pub at_ms: u64,
    pub fault: Fault,
}

/// First fault after this (the cluster warms up).
const WARMUP_MS: u64 = 3_000;
/// Healthy time left at the end before the final phase.
const TAIL_MS: u64 = 4_000;

fn pick(nemesis: &str, rng: &mut Rng) -> Fault {
    let target = |rng: &mut Rng| {
        if rng.percent(50) {
            Target::Leader
        } else {
            Target::Any(rng.index(8))
        }
    };
    match nemesis {
        "kill" => Fault::Kill {
            target: target(rng),
            down_ms: rng.range(2_000, 8_000),
        },
        "pause" => Fault::Pause {
            target: target(rng),
            ms: rng.range(5_000, 10_001),
        },
        "partition" => {
            let ms = rng.range(3_000, 10_001);
            let kind = match rng.range(0, 4) {
                0 => Partition::IsolateLeader,
                1 => Partition::Split {
                    seed: rng.next_u64(),
                    minority: rng.range(1, 3) as usize,
                },
                2 => Partition::OneWay {
                    from: rng.index(8),
                    to: rng.index(8),
                },
                _ => Partition::Flap {
                    seed: rng.next_u64(),
                    period_ms: 500,
                },
            };
            let ms = if matches!(kind, Partition::Flap { .. }) {
                ms.min(6_000)
            } else {
                ms
            };
            Fault::Partition { kind, ms }
        }
        "churn" => Fault::Churn {
            target: target(rng),
        },
        "restart" => Fault::RestartAll {
            down_ms: rng.range(500, 3_000),
        },
        "combined" => {
            let which = NEMESES[rng.index(5)];
            pick(which, rng)
        }
        other => panic!("unknown nemesis {other:?} (one of {NEMESES:?})"),
    }
}

/// Rough length of a fault, for spacing the schedule.
fn length_ms(f: &Fault) -> u64 {
    match f {
        Fault::Kill { down_ms, .. } => *down_ms,
        Fault::Pause { ms, .. } => *ms,
        Fault::Partition { ms, .. } => *ms,
        Fault::Churn { .. } => 8_000,
        Fault::RestartAll { down_ms } => down_ms + 5_000,
    }
}

pub fn schedule(nemesis: &str, seed: u64, secs: u64) -> Vec<Step> {
    let mut rng = Rng::fork(seed, 7);
    let end = secs * 1000;
    let mut at = WARMUP_MS;
    let mut steps = Vec::new();
    loop {
        let fault = pick(nemesis, &mut rng);
        let len = length_ms(&fault);
        if at + len + TAIL_MS > end {
            break;
        }
        steps.push(Step { at_ms: at, fault });
        at += len + rng.range(2_000, 5_000);
    }
    steps
}

/// Runs the schedule until `end`, logging each step into `log`; every fault
/// is undone before the next starts.
pub fn execute(
    cluster: &mut Cluster,
    shared: &Arc<Shared>,
    steps: &[Step],
    end: Instant,
    log: &mut Vec<String>,
) -> Result<(), String> {
    for step in steps {
        let at = shared.start + Duration::from_millis(step.at_ms);
        sleep_until(at.min(end));
        if Instant::now() >= end {
            break;
        }
        let t = shared.start.elapsed().as_secs_f64();
        let what = run_fault(cluster, shared, &step.fault)?;
        log.push(format!(
            "{t:8.3}..{:8.3} {what}",
            shared.start.elapsed().as_secs_f64()
        ));
    }
    sleep_until(end);
    Ok(())
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn resolve(cluster: &Cluster, target: &Target) -> Option<usize> {
    let up: Vec<usize> = cluster
        .live()
        .into_iter()
        .filter(|&i| cluster.nodes[i].is_up())
        .collect();
    match target {
        Target::Leader => cluster.leader().or_else(|| up.first().copied()),
        Target::Any(n) => up.get(n % up.len().max(1)).copied(),
    }
}

fn run_fault(cluster: &mut Cluster, shared: &Arc<Shared>, fault: &Fault) -> Result<String, String> {
    match fault {
        Fault::Kill { target, down_ms } => {
            let Some(i) = resolve(cluster, target) else {
                return Ok("kill: no node up".into());
            };
            cluster.kill9(i);
            std::thread::sleep(Duration::from_millis(*down_ms));
            cluster.start(i)?;
            Ok(format!(
                "kill -9 {} ({target:?}), restarted after {down_ms} ms",
                cluster.nodes[i].name
            ))
        }
        Fault::Pause { target, ms } => {
            let Some(i) = resolve(cluster, target) else {
                return Ok("pause: no node up".into());
            };
            cluster.signal(i, true);
            std::thread::sleep(Duration::from_millis(*ms));
            cluster.signal(i, false);
            Ok(format!(
                "SIGSTOP {} ({target:?}) for {ms} ms",
                cluster.nodes[i].name
            ))
        }
        Fault::Partition { kind, ms } => {
            let live = cluster.live();
            let what = match kind {
                Partition::IsolateLeader => {
                    let Some(l) = cluster.leader() else {
                        return Ok("isolate leader: no leader found".into());
                    };
                    let rest: Vec<usize> = live.iter().copied().filter(|&i| i != l).collect();
                    cluster.split(&[l], &rest)?;
                    std::thread::sleep(Duration::from_millis(*ms));
                    format!("leader {} isolated for {ms} ms", cluster.nodes[l].name)
                }
                Partition::Split { seed, minority } => {
                    let (a, b) = split_of(&live, *seed, *minority);
                    cluster.split(&a, &b)?;
                    std::thread::sleep(Duration::from_millis(*ms));
                    format!(
                        "split {} | {} for {ms} ms",
                        names(cluster, &a),
                        names(cluster, &b)
                    )
                }
                Partition::OneWay { from, to } => {
                    let f = live[from % live.len()];
                    let mut t = live[to % live.len()];
                    if t == f {
                        t = live[(to + 1) % live.len()];
                    }
                    cluster.block(f, t, false)?;
                    std::thread::sleep(Duration::from_millis(*ms));
                    format!(
                        "one-way drop {} -> {} for {ms} ms",
                        cluster.nodes[f].name, cluster.nodes[t].name
                    )
                }
                Partition::Flap { seed, period_ms } => {
                    let (a, b) = split_of(&live, *seed, 1 + (*seed % 2) as usize);
                    let until = Instant::now() + Duration::from_millis(*ms);
                    let mut cut = false;
                    while Instant::now() < until {
                        if cut {
                            cluster.heal()?;
                        } else {
                            cluster.split(&a, &b)?;
                        }
                        cut = !cut;
                        std::thread::sleep(Duration::from_millis(*period_ms));
                    }
                    format!(
                        "flapping {} | {} every {period_ms} ms for {ms} ms",
                        names(cluster, &a),
                        names(cluster, &b)
                    )
                }
            };
            cluster.heal()?;
            Ok(what)
        }
        Fault::Churn { target } => churn(cluster, shared, target),
        Fault::RestartAll { down_ms } => {
            let live = cluster.live();
            for &i in &live {
                cluster.kill9(i);
            }
            std::thread::sleep(Duration::from_millis(*down_ms));
            for &i in &live {
                cluster.start(i)?;
            }
            // Give the cluster time to come back before the next fault.
            std::thread::sleep(Duration::from_secs(5));
            Ok(format!("kill -9 all, restarted after {down_ms} ms"))
        }
    }
}

fn split_of(live: &[usize], seed: u64, minority: usize) -> (Vec<usize>, Vec<usize>) {
    let mut v = live.to_vec();
    Rng::new(seed).shuffle(&mut v);
    let m = minority.clamp(1, v.len().saturating_sub(1).max(1));
    let b = v.split_off(m);
    (v, b)
}

fn names(cluster: &Cluster, v: &[usize]) -> String {
    v.iter()
        .map(|&i| cluster.nodes[i].name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Kills a member for good, waits for the slave to take its slot, then
/// attaches a brand-new node (it takes the dead one's client slot).
fn churn(cluster: &mut Cluster, shared: &Arc<Shared>, target: &Target) -> Result<String, String> {
    // A member: the leader, or the n-th member as some node lists them.
    let victim = match target {
        Target::Leader => cluster.leader(),
        Target::Any(n) => {
            let probe = cluster
                .live()
                .into_iter()
                .find(|&i| cluster.nodes[i].is_up());
            let cal = probe.map(|p| cluster.cal_of(p)).transpose().ok().flatten();
            let ids: Vec<(usize, String)> = cluster
                .live()
                .into_iter()
                .filter(|&i| cluster.nodes[i].is_up())
                .filter_map(|i| cluster.id_of(i).ok().map(|id| (i, id)))
                .collect();
            cal.and_then(|cal| {
                let members: Vec<usize> = ids
                    .iter()
                    .filter(|(_, id)| cal.contains(id))
                    .map(|(i, _)| *i)
                    .collect();
                members.get(n % members.len().max(1)).copied()
            })
        }
    };
    let Some(v) = victim else {
        return Ok("churn: no member found".into());
    };
    let victim_id = cluster.id_of(v).ok();
    cluster.kill9(v);
    cluster.nodes[v].retired = true;
    let t0 = Instant::now();
    let probe = cluster
        .live()
        .into_iter()
        .find(|&i| cluster.nodes[i].is_up());
    let Some(p) = probe else {
        return Err("churn: no node left up".into());
    };
    let removed = wait_until("the dead member's removal", Duration::from_secs(30), || {
        let cal = cluster.cal_of(p)?;
        let gone = victim_id.as_ref().is_none_or(|id| !cal.contains(id));
        (gone && cal.iter().all(|s| !s.is_empty()))
            .then_some(())
            .ok_or_else(|| format!("/ctl/cal {cal:?}"))
    });
    let attach = cluster.nodes[p].addr.clone();
    let n = cluster.add_node(Some(&attach))?;
    // The new node serves the dead one's clients.
    {
        let mut slots = shared.slots.lock().unwrap();
        for s in slots.iter_mut() {
            if *s == cluster.nodes[v].addr {
                *s = cluster.nodes[n].addr.clone();
            }
        }
    }
    let new_addr = cluster.nodes[n].addr.clone();
    let joined = wait_until("the new node to answer", Duration::from_secs(20), || {
        crate::cluster::rev_of(&new_addr)
    });
    Ok(format!(
        "churn: {} killed for good ({}), slot refilled: {}; {} attached: {}",
        cluster.nodes[v].name,
        if matches!(target, Target::Leader) {
            "leader"
        } else {
            "member"
        },
        match &removed {
            Ok(()) => format!("yes after {:.1} s", t0.elapsed().as_secs_f64()),
            Err(e) => format!("NO ({e})"),
        },
        cluster.nodes[n].name,
        match joined {
            Ok(_) => "answers".to_string(),
            Err(e) => format!("NO ({e})"),
        }
    ))
}
