//! Model test of the store: random operation sequences from a seeded RNG are run
//! against the real store and against a deliberately naive model (a flat map of
//! files, directories derived, globs matched by backtracking), comparing every
//! reply, the full file list after every op, and historic snapshots.
//!
//! On failure the seed is printed; rerun just that one with
//! `STORE_MODEL_SEED=<seed> cargo test --test store_model`; run more seeds with
//! `STORE_MODEL_SEEDS=<count>` (the default keeps a debug-build run near 20 s).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use doozer::error::ErrCode;
use doozer::store::{
    ApplyError, Entry, Event, EventKind, Glob, Mutation, ReadError, Snapshot, Store,
};
use doozer::types::{Body, Path, Rev, RevCheck};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEEDS: u64 = 200;
const OPS: usize = 250;

/// path → (body, file rev). Files only; directories are implied.
type Files = BTreeMap<String, (Vec<u8>, i64)>;

#[derive(Clone, Debug, PartialEq)]
struct ModelEvent {
    rev: i64,
    path: String,
    body: Vec<u8>,
    kind: EventKind,
    error: Option<ApplyError>,
}

struct Model {
    history_revs: i64,
    /// states[r] = the files after rev r (states[0] is empty).
    states: Vec<Files>,
    /// events[r - 1] = the event of rev r.
    events: Vec<ModelEvent>,
}

fn proper_ancestors(path: &str) -> Vec<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    (1..comps.len())
        .map(|n| format!("/{}", comps[..n].join("/")))
        .collect()
}

fn dir_prefix(path: &str) -> String {
    if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    }
}

fn is_dir(files: &Files, path: &str) -> bool {
    let prefix = dir_prefix(path);
    path == "/" || files.keys().any(|k| k.starts_with(&prefix))
}

fn names(files: &Files, path: &str) -> Vec<String> {
    let prefix = dir_prefix(path);
    let set: BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|rest| rest.split('/').next().unwrap().to_string())
        .collect();
    set.into_iter().collect()
}

fn cur(files: &Files, path: &str) -> i64 {
    if let Some((_, rev)) = files.get(path) {
        *rev
    } else if is_dir(files, path) {
        -2
    } else {
        0
    }
}

fn admits(check: i64, cur: i64) -> bool {
    check == -1 || check >= cur
}

/// Glob matching by plain backtracking over the pattern text (reference §3.7).
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    if pat.starts_with(b"**") {
        return (0..=s.len()).any(|i| glob_match(&pat[2..], &s[i..]));
    }
    match pat.first() {
        None => s.is_empty(),
        Some(b'*') => {
            let run = s.iter().take_while(|c| **c != b'/').count();
            (0..=run).any(|i| glob_match(&pat[1..], &s[i..]))
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && glob_match(&pat[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob_match(&pat[1..], &s[1..]),
    }
}

/// Files in walk order: depth-first, each level sorted.
fn walk_order(files: &Files) -> Vec<(String, i64, Vec<u8>)> {
    let mut out: Vec<_> = files
        .iter()
        .map(|(k, (body, rev))| (k.clone(), *rev, body.clone()))
        .collect();
    out.sort_by_cached_key(|(k, _, _)| k.split('/').map(str::to_string).collect::<Vec<_>>());
    out
}

impl Model {
    fn rev(&self) -> i64 {
        self.events.len() as i64
    }

    fn head(&self) -> i64 {
        (self.rev() - self.history_revs + 1).max(0)
    }

    fn files(&self) -> &Files {
        self.states.last().unwrap()
    }

    fn apply(&mut self, op: &Op) -> ModelEvent {
        let rev = self.rev() + 1;
        let mut files = self.files().clone();
        let result: Result<ModelEvent, ApplyError> = match op {
            Op::Nop => Ok(ModelEvent {
                rev,
                path: "/".into(),
                body: vec![],
                kind: EventKind::Nop,
                error: None,
            }),
            Op::Set(path, check, body) => {
                if proper_ancestors(path).iter().any(|a| files.contains_key(a)) {
                    Err(ApplyError::NotDir)
                } else {
                    let c = cur(&files, path);
                    if !admits(*check, c) {
                        Err(ApplyError::RevMismatch)
                    } else if c == -2 {
                        Err(ApplyError::IsDir)
                    } else {
                        files.insert(path.clone(), (body.clone(), rev));
                        Ok(ModelEvent {
                            rev,
                            path: path.clone(),
                            body: body.clone(),
                            kind: EventKind::Set,
                            error: None,
                        })
                    }
                }
            }
            Op::Del(path, check) => {
                let c = cur(&files, path);
                if !admits(*check, c) {
                    Err(ApplyError::RevMismatch)
                } else if c == -2 {
                    Err(ApplyError::IsDir)
                } else {
                    files.remove(path);
                    Ok(ModelEvent {
                        rev,
                        path: path.clone(),
                        body: vec![],
                        kind: EventKind::Del,
                        error: None,
                    })
                }
            }
        };
        let event = result.unwrap_or_else(|e| {
            // Forced write: whatever is in the way of /ctl/err goes.
            files.remove("/ctl");
            files.retain(|k, _| !k.starts_with("/ctl/err/"));
            let body = e.to_string().into_bytes();
            files.insert("/ctl/err".into(), (body.clone(), rev));
            ModelEvent {
                rev,
                path: "/ctl/err".into(),
                body,
                kind: EventKind::Set,
                error: Some(e),
            }
        });
        self.states.push(files);
        self.events.push(event.clone());
        event
    }
}

#[derive(Debug)]
enum Op {
    Set(String, i64, Vec<u8>),
    Del(String, i64),
    Nop,
}

impl Op {
    fn mutation(&self) -> Mutation {
        match self {
            Op::Set(path, check, body) => Mutation::Set {
                path: Path::parse(path).unwrap(),
                check: RevCheck::from_wire(*check),
                body: Body::from(&body[..]),
            },
            Op::Del(path, check) => Mutation::Del {
                path: Path::parse(path).unwrap(),
                check: RevCheck::from_wire(*check),
            },
            Op::Nop => Mutation::Nop,
        }
    }
}

const NAMES: &[&str] = &["a", "b", "a-b", "ctl", "err"];
const GLOB_PARTS: &[&str] = &[
    "a", "b", "a-b", "ctl", "*", "**", "?", "a*", "*b", "***", "?*",
];

fn random_path(rng: &mut ChaCha8Rng) -> String {
    if rng.random_range(0..40) == 0 {
        return "/".into();
    }
    let depth = rng.random_range(1..=3);
    (0..depth)
        .map(|_| format!("/{}", NAMES[rng.random_range(0..NAMES.len())]))
        .collect()
}

fn random_glob(rng: &mut ChaCha8Rng) -> String {
    if rng.random_range(0..20) == 0 {
        return "/".into();
    }
    let depth = rng.random_range(1..=3);
    (0..depth)
        .map(|_| format!("/{}", GLOB_PARTS[rng.random_range(0..GLOB_PARTS.len())]))
        .collect()
}

fn random_check(rng: &mut ChaCha8Rng, model: &Model, path: &str) -> i64 {
    let c = cur(model.files(), path);
    match rng.random_range(0..10) {
        0 => -3,
        1 => -2,
        2 | 3 => -1,
        4 | 5 => 0,
        6 => c,
        7 => c - 1,
        8 => rng.random_range(1..=model.rev() + 2),
        _ => i64::MAX,
    }
}

fn random_op(rng: &mut ChaCha8Rng, model: &Model) -> Op {
    let path = random_path(rng);
    match rng.random_range(0..20) {
        0 => Op::Nop,
        1..=12 => {
            let check = random_check(rng, model, &path);
            let len = rng.random_range(0..4);
            let body = (0..len).map(|_| rng.random_range(b'x'..=b'z')).collect();
            Op::Set(path, check, body)
        }
        _ => {
            let check = random_check(rng, model, &path);
            Op::Del(path, check)
        }
    }
}

fn event_view(e: &Event) -> ModelEvent {
    ModelEvent {
        rev: e.rev.0,
        path: e.path.to_string(),
        body: e.body.to_vec(),
        kind: e.kind,
        error: e.error,
    }
}

fn snapshot_files(snap: &Snapshot) -> Vec<(String, i64, Vec<u8>)> {
    snap.files()
        .into_iter()
        .map(|(p, r, b)| (p.to_string(), r.0, b.to_vec()))
        .collect()
}

/// Compares every read of `snap` that touches `path` / `glob` with `files`.
fn check_reads(rng: &mut ChaCha8Rng, snap: &Snapshot, files: &Files, ctx: &str) {
    let ordered = walk_order(files);
    assert_eq!(snapshot_files(snap), ordered, "{ctx}: files");
    for _ in 0..3 {
        let path = random_path(rng);
        let p = Path::parse(&path).unwrap();
        let want = if let Some((body, rev)) = files.get(&path) {
            Entry::File {
                rev: Rev(*rev),
                body: Arc::from(&body[..]),
            }
        } else if is_dir(files, &path) {
            Entry::Dir {
                len: names(files, &path).len(),
            }
        } else {
            Entry::Absent
        };
        assert_eq!(snap.entry(&p), want, "{ctx}: entry {path}");

        let want_names = if files.contains_key(&path) {
            Err(ErrCode::NotDir)
        } else if is_dir(files, &path) {
            Ok(names(files, &path))
        } else {
            Err(ErrCode::NoEnt)
        };
        assert_eq!(snap.dir_names(&p), want_names, "{ctx}: dir_names {path}");
        let offset = rng.random_range(-1..5);
        let want_getdir = want_names.and_then(|n| {
            usize::try_from(offset)
                .ok()
                .and_then(|i| n.get(i).cloned())
                .ok_or(ErrCode::Range)
        });
        assert_eq!(
            snap.getdir(&p, offset),
            want_getdir,
            "{ctx}: getdir {path} {offset}"
        );
    }
    let pattern = random_glob(rng);
    let glob = Glob::parse(&pattern).unwrap();
    let matching: Vec<_> = ordered
        .iter()
        .filter(|(k, _, _)| glob_match(pattern.as_bytes(), k.as_bytes()))
        .cloned()
        .collect();
    // Every walk starts again from the root: check the edges and a few inside.
    let n = matching.len() as i64;
    let mut offsets: BTreeSet<i64> = [-1, 0, 1, n - 1, n, n + 1].into();
    offsets.insert(rng.random_range(0..=n));
    for offset in offsets {
        let got = snap
            .walk(&glob, offset)
            .map(|(p, r, b)| (p.to_string(), r.0, b.to_vec()));
        let want = usize::try_from(offset)
            .ok()
            .and_then(|i| matching.get(i).cloned())
            .ok_or(ErrCode::Range);
        assert_eq!(got, want, "{ctx}: walk {pattern} {offset}");
    }
    for (path, _, _) in &ordered {
        assert_eq!(
            glob.matches(path),
            glob_match(pattern.as_bytes(), path.as_bytes()),
            "{ctx}: glob {pattern} on {path}"
        );
    }
}

fn run_seed(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let history_revs = match rng.random_range(0..4) {
        0 => 1,
        1 => rng.random_range(2..10),
        2 => rng.random_range(10..60),
        _ => 1000,
    };
    let mut store = Store::new(history_revs);
    let mut model = Model {
        history_revs: history_revs as i64,
        states: vec![Files::new()],
        events: vec![],
    };
    for step in 0..OPS {
        let op = random_op(&mut rng, &model);
        let ctx = format!("seed {seed} step {step} op {op:?}");
        let got = store.apply(&op.mutation());
        let want = model.apply(&op);
        assert_eq!(event_view(&got), want, "{ctx}: event");
        assert_eq!(store.rev().0, model.rev(), "{ctx}: rev");
        assert_eq!(store.head().0, model.head(), "{ctx}: head");
        check_reads(&mut rng, store.current(), model.files(), &ctx);

        // A historic snapshot.
        let r = rng.random_range(-1..=model.rev() + 2);
        let eff = r.max(1);
        match store.snapshot_at(Rev(r)) {
            Ok(snap) => {
                assert!(
                    eff >= model.head() && eff <= model.rev(),
                    "{ctx}: snapshot_at {r}"
                );
                assert_eq!(snap.rev().0, eff, "{ctx}: snapshot_at {r} rev");
                let files = &model.states[eff as usize];
                // Every rev retained at the end is compared below; here, one in four.
                if step % 4 == 0 {
                    let ctx = format!("{ctx} snapshot_at {r}");
                    check_reads(&mut rng, &snap, files, &ctx);
                }
            }
            Err(ReadError::TooLate) => assert!(eff < model.head(), "{ctx}: too late {r}"),
            Err(ReadError::Future) => assert!(eff > model.rev(), "{ctx}: future {r}"),
        }

        // WAIT over the history.
        let pattern = random_glob(&mut rng);
        let glob = Glob::parse(&pattern).unwrap();
        let from = rng.random_range(model.head() - 2..=model.rev() + 2);
        let eff = from.max(1);
        let want = if eff < model.head() {
            Err(ReadError::TooLate)
        } else {
            Ok(model
                .events
                .iter()
                .skip((eff - 1) as usize)
                .find(|e| glob_match(pattern.as_bytes(), e.path.as_bytes()))
                .cloned())
        };
        let got = store
            .first_match(&glob, Rev(from))
            .map(|e| e.as_ref().map(event_view));
        assert_eq!(got, want, "{ctx}: first_match {pattern} from {from}");

        let r = rng.random_range(model.head() - 2..=model.rev() + 2);
        let want = (r >= model.head().max(1) && r <= model.rev())
            .then(|| model.events[(r - 1) as usize].clone());
        assert_eq!(
            store.event_at(Rev(r)).map(event_view),
            want,
            "{ctx}: event_at {r}"
        );
    }
    // Every retained rev, whole.
    for r in model.head().max(1)..=model.rev() {
        let snap = store.snapshot_at(Rev(r)).unwrap();
        assert_eq!(
            snapshot_files(&snap),
            walk_order(&model.states[r as usize]),
            "seed {seed}: retained rev {r}"
        );
        let rebuilt = Snapshot::from_files(snap.rev(), snap.files());
        assert_eq!(
            rebuilt.digest(),
            snap.digest(),
            "seed {seed}: digest at {r}"
        );
    }
}

#[test]
fn store_matches_model() {
    let seeds: Vec<u64> = match std::env::var("STORE_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("STORE_MODEL_SEED is a number")],
        Err(_) => {
            let count = std::env::var("STORE_MODEL_SEEDS")
                .map(|s| s.parse().expect("STORE_MODEL_SEEDS is a number"))
                .unwrap_or(SEEDS);
            (0..count).collect()
        }
    };
    for seed in seeds {
        if std::panic::catch_unwind(|| run_seed(seed)).is_err() {
            panic!("store model test failed with seed {seed}");
        }
    }
}

#[test]
fn oracle_glob_agrees_with_reference_examples() {
    let m = |p: &str, s: &str| glob_match(p.as_bytes(), s.as_bytes());
    assert!(m("/a**", "/a") && m("/a**", "/ab/c") && !m("/a**", "/ba") && !m("/a**", "/"));
    assert!(!m("/a/**", "/a") && m("/**", "/") && m("/a?", "/ab") && !m("/a?", "/a/"));
}
