use super::*;

fn p(s: &str) -> Path {
    Path::parse(s).unwrap()
}

fn b(s: &str) -> Body {
    Arc::from(s.as_bytes())
}

fn g(s: &str) -> Glob {
    Glob::parse(s).unwrap()
}

fn set(path: &str, rev: i64, body: &str) -> Mutation {
    Mutation::Set {
        path: p(path),
        check: RevCheck::from_wire(rev),
        body: b(body),
    }
}

fn del(path: &str, rev: i64) -> Mutation {
    Mutation::Del {
        path: p(path),
        check: RevCheck::from_wire(rev),
    }
}

fn file(s: &Store, path: &str) -> Option<(i64, String)> {
    match s.current().entry(&p(path)) {
        Entry::File { rev, body } => Some((rev.0, String::from_utf8(body.to_vec()).unwrap())),
        _ => None,
    }
}

/// Applies and returns the error, asserting the event's shape on the way.
fn run(s: &mut Store, m: &Mutation) -> Result<(), ApplyError> {
    let ev = s.apply(m);
    assert_eq!(ev.rev, s.rev());
    assert_eq!(s.event_at(ev.rev), Some(&ev));
    match ev.error {
        Some(e) => {
            assert_eq!(ev.path.as_str(), "/ctl/err");
            assert_eq!(ev.kind, EventKind::Set);
            assert_eq!(&*ev.body, e.to_string().as_bytes());
            assert_eq!(file(s, "/ctl/err"), Some((ev.rev.0, e.to_string())));
            Err(e)
        }
        None => Ok(()),
    }
}

/// A store with a file `/f` at rev 1 and a directory `/d` (holding `/d/x` at rev 2).
fn fixture() -> Store {
    let mut s = Store::new(100);
    run(&mut s, &set("/f", -1, "F")).unwrap();
    run(&mut s, &set("/d/x", -1, "X")).unwrap();
    s
}

/// (request rev, outcome on an absent path, on the file at rev 1, on a directory)
type TableRow = (i64, Outcome, Outcome, Outcome);
type Outcome = Result<(), ApplyError>;

#[test]
fn rev_table_for_set() {
    use ApplyError::*;
    let table: &[TableRow] = &[
        (-1, Ok(()), Ok(()), Err(IsDir)),
        (0, Ok(()), Err(RevMismatch), Err(IsDir)),
        (1, Ok(()), Ok(()), Err(IsDir)),
        (100, Ok(()), Ok(()), Err(IsDir)),
        (-2, Err(RevMismatch), Err(RevMismatch), Err(IsDir)),
        (-3, Err(RevMismatch), Err(RevMismatch), Err(RevMismatch)),
        (
            i64::MIN,
            Err(RevMismatch),
            Err(RevMismatch),
            Err(RevMismatch),
        ),
    ];
    for &(rev, absent, on_file, on_dir) in table {
        let mut s = fixture();
        assert_eq!(
            run(&mut s, &set("/new", rev, "v")),
            absent,
            "set absent rev {rev}"
        );
        if absent.is_ok() {
            assert_eq!(file(&s, "/new"), Some((3, "v".into())));
        } else {
            assert_eq!(file(&s, "/new"), None);
        }
        let mut s = fixture();
        assert_eq!(
            run(&mut s, &set("/f", rev, "v")),
            on_file,
            "set file rev {rev}"
        );
        let expect = if on_file.is_ok() { (3, "v") } else { (1, "F") };
        assert_eq!(file(&s, "/f"), Some((expect.0, expect.1.into())));
        let mut s = fixture();
        assert_eq!(
            run(&mut s, &set("/d", rev, "v")),
            on_dir,
            "set dir rev {rev}"
        );
        assert_eq!(s.current().entry(&p("/d")), Entry::Dir { len: 1 });
    }
    // A file at rev 2: rev 1 is stale.
    let mut s = fixture();
    assert_eq!(run(&mut s, &set("/d/x", 1, "v")), Err(RevMismatch));
    assert_eq!(run(&mut s, &set("/d/x", 2, "v")), Ok(()));
    assert_eq!(file(&s, "/d/x"), Some((4, "v".into())));
}

#[test]
fn rev_table_for_del() {
    use ApplyError::*;
    let table: &[TableRow] = &[
        (-1, Ok(()), Ok(()), Err(IsDir)),
        (0, Ok(()), Err(RevMismatch), Err(IsDir)),
        (1, Ok(()), Ok(()), Err(IsDir)),
        (100, Ok(()), Ok(()), Err(IsDir)),
        (-2, Err(RevMismatch), Err(RevMismatch), Err(IsDir)),
        (-3, Err(RevMismatch), Err(RevMismatch), Err(RevMismatch)),
    ];
    for &(rev, absent, on_file, on_dir) in table {
        let mut s = fixture();
        let before = s.current().files();
        let ev = s.apply(&del("/new", rev));
        assert_eq!(ev.error, absent.err(), "del absent rev {rev}");
        if absent.is_ok() {
            assert_eq!(ev.kind, EventKind::Del);
            assert_eq!(ev.path.as_str(), "/new");
            assert!(ev.body.is_empty());
            assert_eq!(s.current().files(), before);
        }
        let mut s = fixture();
        assert_eq!(run(&mut s, &del("/f", rev)), on_file, "del file rev {rev}");
        assert_eq!(file(&s, "/f").is_none(), on_file.is_ok());
        let mut s = fixture();
        assert_eq!(run(&mut s, &del("/d", rev)), on_dir, "del dir rev {rev}");
        assert_eq!(file(&s, "/d/x"), Some((2, "X".into())));
    }
}

#[test]
fn root_is_a_directory() {
    let mut s = Store::new(10);
    assert_eq!(s.current().entry(&Path::root()), Entry::Dir { len: 0 });
    assert_eq!(run(&mut s, &set("/", -1, "x")), Err(ApplyError::IsDir));
    assert_eq!(run(&mut s, &set("/", 0, "x")), Err(ApplyError::IsDir));
    assert_eq!(run(&mut s, &del("/", -1)), Err(ApplyError::IsDir));
    assert_eq!(run(&mut s, &del("/", -3)), Err(ApplyError::RevMismatch));
    // /ctl/err was written by the failures: the root holds /ctl.
    assert_eq!(s.current().entry(&Path::root()), Entry::Dir { len: 1 });
}

#[test]
fn set_below_a_file_is_notdir_before_the_rev_check() {
    let mut s = fixture();
    assert_eq!(run(&mut s, &set("/f/x", -1, "v")), Err(ApplyError::NotDir));
    assert_eq!(run(&mut s, &set("/f/x/y", 0, "v")), Err(ApplyError::NotDir));
    // NotDir wins over a failing rev check.
    assert_eq!(run(&mut s, &set("/f/x", -5, "v")), Err(ApplyError::NotDir));
    assert_eq!(file(&s, "/f"), Some((1, "F".into())));
}

#[test]
fn del_below_a_file_leaves_the_file() {
    let mut s = fixture();
    let ev = s.apply(&del("/f/x", -1));
    assert_eq!(
        (ev.kind, ev.error, ev.path.as_str()),
        (EventKind::Del, None, "/f/x")
    );
    assert_eq!(file(&s, "/f"), Some((1, "F".into())));
    assert_eq!(run(&mut s, &del("/f/x/y", 0)), Ok(()));
    assert_eq!(run(&mut s, &del("/f/x", 7)), Ok(()));
    // Treated as absent: cur = 0, so -2 fails.
    assert_eq!(run(&mut s, &del("/f/x", -2)), Err(ApplyError::RevMismatch));
    assert_eq!(file(&s, "/f"), Some((1, "F".into())));
}

#[test]
fn implicit_directories_and_pruning() {
    let mut s = Store::new(10);
    run(&mut s, &set("/a/b/c/d", 0, "1")).unwrap();
    run(&mut s, &set("/a/x", 0, "2")).unwrap();
    let snap = s.current().clone();
    assert_eq!(snap.entry(&p("/a")), Entry::Dir { len: 2 });
    assert_eq!(snap.entry(&p("/a/b")), Entry::Dir { len: 1 });
    assert_eq!(snap.entry(&p("/a/b/c")), Entry::Dir { len: 1 });
    run(&mut s, &del("/a/b/c/d", -1)).unwrap();
    assert_eq!(s.current().entry(&p("/a/b")), Entry::Absent);
    assert_eq!(s.current().entry(&p("/a/b/c")), Entry::Absent);
    assert_eq!(s.current().entry(&p("/a")), Entry::Dir { len: 1 });
    run(&mut s, &del("/a/x", -1)).unwrap();
    assert_eq!(s.current().entry(&p("/a")), Entry::Absent);
    assert_eq!(s.current().entry(&Path::root()), Entry::Dir { len: 0 });
    assert!(s.current().files().is_empty());
    // The old snapshot is untouched.
    assert_eq!(
        snap.entry(&p("/a/b/c/d")),
        Entry::File {
            rev: Rev(1),
            body: b("1")
        }
    );
    assert_eq!(s.snapshot_at(Rev(2)).unwrap(), snap);
}

#[test]
fn failures_write_ctl_err_even_over_obstacles() {
    let mut s = Store::new(10);
    run(&mut s, &set("/ctl/err/x", 0, "in the way")).unwrap();
    // /ctl/err is a directory: the forced write replaces it with a file.
    assert_eq!(run(&mut s, &set("/", -1, "")), Err(ApplyError::IsDir));
    assert_eq!(file(&s, "/ctl/err/x"), None);
    // /ctl a file: replaced by a directory holding err.
    let mut s = Store::new(10);
    run(&mut s, &set("/ctl", 0, "file")).unwrap();
    assert_eq!(
        run(&mut s, &set("/x", -2, "")),
        Err(ApplyError::RevMismatch)
    );
    assert_eq!(s.current().entry(&p("/ctl")), Entry::Dir { len: 1 });
    assert_eq!(file(&s, "/ctl/err"), Some((2, "rev mismatch".into())));
    // Error texts are the original's.
    assert_eq!(ApplyError::NotDir.to_string(), "not a directory");
    assert_eq!(ApplyError::IsDir.code(), ErrCode::IsDir);
    assert_eq!(ApplyError::NotDir.code(), ErrCode::NotDir);
    assert_eq!(ApplyError::RevMismatch.code(), ErrCode::RevMismatch);
}

#[test]
fn nop_event() {
    let mut s = fixture();
    let before = s.current().clone();
    let ev = s.apply(&Mutation::Nop);
    assert_eq!(ev.rev, Rev(3));
    assert_eq!(
        (ev.path.as_str(), ev.kind, ev.error),
        ("/", EventKind::Nop, None)
    );
    assert!(ev.body.is_empty());
    assert_eq!(s.current().files(), before.files());
    assert_eq!(s.current().rev(), Rev(3));
}

#[test]
fn history_gc_too_late_and_future() {
    let mut s = Store::new(3);
    assert_eq!((s.rev(), s.head()), (Rev(0), Rev(0)));
    assert_eq!(s.snapshot_at(Rev(0)), Err(ReadError::Future));
    assert_eq!(s.snapshot_at(Rev(1)), Err(ReadError::Future));
    assert_eq!(s.first_match(&Glob::any(), Rev(0)), Ok(None));
    assert_eq!(s.current().rev(), Rev(0));
    for i in 1..=5 {
        run(&mut s, &set("/x", -1, &i.to_string())).unwrap();
        assert_eq!(s.rev(), Rev(i));
    }
    // Revs 3, 4, 5 readable.
    assert_eq!(s.head(), Rev(3));
    assert_eq!(s.snapshot_at(Rev(2)), Err(ReadError::TooLate));
    assert_eq!(s.snapshot_at(Rev(-7)), Err(ReadError::TooLate));
    assert_eq!(s.snapshot_at(Rev(6)), Err(ReadError::Future));
    for r in 3..=5 {
        let snap = s.snapshot_at(Rev(r)).unwrap();
        assert_eq!(snap.rev(), Rev(r));
        assert_eq!(
            snap.entry(&p("/x")),
            Entry::File {
                rev: Rev(r),
                body: b(&r.to_string())
            }
        );
    }
    assert_eq!(s.event_at(Rev(2)), None);
    assert_eq!(s.event_at(Rev(3)).unwrap().rev, Rev(3));
    assert_eq!(s.event_at(Rev(6)), None);
    assert_eq!(s.first_match(&g("/x"), Rev(2)), Err(ReadError::TooLate));
    assert_eq!(
        s.first_match(&g("/x"), Rev(3)).unwrap().unwrap().rev,
        Rev(3)
    );

    // While fewer revs than the window were applied, everything from 1 is there.
    let mut s = Store::new(10);
    for _ in 0..4 {
        s.apply(&Mutation::Nop);
    }
    assert_eq!(s.head(), Rev(0));
    assert_eq!(s.snapshot_at(Rev(0)).unwrap().rev(), Rev(1));
    assert_eq!(
        s.first_match(&Glob::any(), Rev(-5)).unwrap().unwrap().rev,
        Rev(1)
    );

    // A window of one rev keeps only the current one.
    let mut s = Store::new(0);
    assert_eq!(s.history_revs(), 1);
    s.apply(&Mutation::Nop);
    s.apply(&Mutation::Nop);
    assert_eq!(s.head(), Rev(2));
    assert_eq!(s.snapshot_at(Rev(1)), Err(ReadError::TooLate));
    assert!(s.snapshot_at(Rev(2)).is_ok());
}

#[test]
fn first_match_over_history() {
    let mut s = Store::new(100);
    s.apply(&set("/a", 0, "1")); // 1
    s.apply(&Mutation::Nop); // 2
    s.apply(&set("/b/c", 0, "2")); // 3
    s.apply(&del("/a", -1)); // 4
    s.apply(&set("/a", -5, "x")); // 5: fails, /ctl/err
    let rev_of =
        |glob: &str, from: i64| s.first_match(&g(glob), Rev(from)).unwrap().map(|e| e.rev.0);
    assert_eq!(rev_of("/**", 1), Some(1));
    assert_eq!(rev_of("/**", 2), Some(2));
    assert_eq!(rev_of("/", 1), Some(2));
    assert_eq!(rev_of("/", 3), None);
    assert_eq!(rev_of("/a", 2), Some(4));
    assert_eq!(rev_of("/b/*", 0), Some(3));
    assert_eq!(rev_of("/ctl/err", 1), Some(5));
    assert_eq!(rev_of("/**", 6), None);
    assert_eq!(rev_of("/**", 600), None);
    let ev = s.first_match(&g("/a"), Rev(2)).unwrap().unwrap();
    assert_eq!((ev.kind, ev.body.len()), (EventKind::Del, 0));
    let ev = s.first_match(&g("/"), Rev(0)).unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Nop);
}

#[test]
fn getdir_order_and_range() {
    let mut s = Store::new(10);
    let snap = s.current().clone();
    assert_eq!(snap.getdir(&Path::root(), 0), Err(ErrCode::Range));
    assert_eq!(snap.dir_names(&Path::root()), Ok(vec![]));
    for path in ["/b", "/a-b", "/a/b", "/B", "/a.x", "/0"] {
        s.apply(&set(path, 0, ""));
    }
    let snap = s.current();
    let names: Vec<String> = (0..)
        .map_while(|i| snap.getdir(&Path::root(), i).ok())
        .collect();
    assert_eq!(names, ["0", "B", "a", "a-b", "a.x", "b"]);
    assert_eq!(snap.dir_names(&Path::root()).unwrap(), names);
    assert_eq!(snap.getdir(&Path::root(), 6), Err(ErrCode::Range));
    assert_eq!(snap.getdir(&Path::root(), -1), Err(ErrCode::Range));
    assert_eq!(snap.getdir(&p("/a"), 0), Ok("b".to_string()));
    assert_eq!(snap.getdir(&p("/b"), 0), Err(ErrCode::NotDir));
    assert_eq!(snap.getdir(&p("/c"), 0), Err(ErrCode::NoEnt));
    assert_eq!(snap.getdir(&p("/b/c"), 0), Err(ErrCode::NoEnt));
    assert_eq!(snap.dir_names(&p("/b")), Err(ErrCode::NotDir));
    assert_eq!(snap.dir_names(&p("/zz")), Err(ErrCode::NoEnt));
}

#[test]
fn walk_order_and_matching() {
    let mut s = Store::new(10);
    for path in ["/a-b", "/a/b", "/a/c/d", "/b", "/ab/x"] {
        s.apply(&set(path, 0, path));
    }
    let snap = s.current();
    let walk_all = |glob: &str| -> Vec<String> {
        let glob = g(glob);
        (0..)
            .map_while(|i| snap.walk(&glob, i).ok())
            .map(|(path, _, _)| path.to_string())
            .collect()
    };
    assert_eq!(walk_all("/**"), ["/a/b", "/a/c/d", "/a-b", "/ab/x", "/b"]);
    assert_eq!(walk_all("/a**"), ["/a/b", "/a/c/d", "/a-b", "/ab/x"]);
    assert_eq!(walk_all("/a/**"), ["/a/b", "/a/c/d"]);
    assert_eq!(walk_all("/*"), ["/a-b", "/b"]);
    assert_eq!(walk_all("/a?/*"), ["/ab/x"]);
    assert_eq!(walk_all("/a"), Vec::<String>::new());
    assert_eq!(walk_all("/"), Vec::<String>::new());
    assert_eq!(walk_all("/**d"), ["/a/c/d"]);
    let (path, rev, body) = snap.walk(&g("/b"), 0).unwrap();
    assert_eq!((path.as_str(), rev, body), ("/b", Rev(4), b("/b")));
    assert_eq!(snap.walk(&g("/**"), -1), Err(ErrCode::Range));
    assert_eq!(snap.walk(&g("/**"), 5), Err(ErrCode::Range));
    let files: Vec<String> = snap.files().into_iter().map(|f| f.0.to_string()).collect();
    assert_eq!(files, walk_all("/**"));
}

#[test]
fn stat_entries() {
    let s = fixture();
    let snap = s.current();
    assert_eq!(snap.entry(&Path::root()), Entry::Dir { len: 2 });
    assert_eq!(snap.entry(&p("/d")), Entry::Dir { len: 1 });
    assert_eq!(
        snap.entry(&p("/f")),
        Entry::File {
            rev: Rev(1),
            body: b("F")
        }
    );
    assert_eq!(snap.entry(&p("/f/x")), Entry::Absent);
    assert_eq!(snap.entry(&p("/nope")), Entry::Absent);
}

#[test]
fn digest_and_rebuild() {
    let mut a = Store::new(10);
    let mut b2 = Store::new(10);
    let empty = a.current().digest();
    for m in [
        set("/x/y", 0, "1"),
        set("/z", 0, "2"),
        Mutation::Nop,
        del("/x/y", -1),
    ] {
        a.apply(&m);
        b2.apply(&m);
        assert_eq!(a.current().digest(), b2.current().digest());
    }
    assert_ne!(a.current().digest(), empty);
    let mut c = Store::new(10);
    c.apply(&set("/z", 0, "2"));
    // Same paths and bodies but a different file rev: different digest.
    assert_ne!(c.current().digest(), a.current().digest());
    // Body boundaries matter.
    let s1 = Snapshot::from_files(Rev(1), [(p("/a"), Rev(1), b("bc"))]);
    let s2 = Snapshot::from_files(Rev(1), [(p("/ab"), Rev(1), b("c"))]);
    assert_ne!(s1.digest(), s2.digest());

    let rebuilt = Snapshot::from_files(a.rev(), a.current().files());
    assert_eq!(&rebuilt, a.current());
    assert_eq!(rebuilt.digest(), a.current().digest());
    let mut d = Store::from_snapshot(rebuilt, 10);
    assert_eq!((d.rev(), d.head()), (Rev(4), Rev(5)));
    // A read at the installed rev is answered (issue 9 item 11); a WAIT
    // from it needs its event, which is not known.
    assert_eq!(d.snapshot_at(Rev(4)), Ok(a.current().clone()));
    assert_eq!(d.snapshot_at(Rev(3)), Err(ReadError::TooLate));
    assert_eq!(d.first_match(&Glob::any(), Rev(4)), Err(ReadError::TooLate));
    assert_eq!(d.first_match(&Glob::any(), Rev(5)), Ok(None));
    d.apply(&Mutation::Nop);
    a.apply(&Mutation::Nop);
    assert_eq!(d.snapshot_at(Rev(5)), a.snapshot_at(Rev(5)));
    assert_eq!(
        d.first_match(&Glob::any(), Rev(5)).unwrap().unwrap().rev,
        Rev(5)
    );
    // The installed rev stays readable after later writes, until it leaves
    // the history window.
    assert_eq!(d.snapshot_at(Rev(4)), a.snapshot_at(Rev(4)));
    for _ in 0..9 {
        d.apply(&Mutation::Nop);
    }
    assert_eq!(d.snapshot_at(Rev(4)), Err(ReadError::TooLate));
}

/// Snapshots travel in chunks (issue 9 item 7): walking from a cursor with
/// any byte budget yields every file once, in walk order, at least one per
/// chunk.
#[test]
fn files_after_chunks_the_walk() {
    let mut s = Store::new(10);
    for path in [
        "/a", "/a.b/c", "/b/c/d/e", "/b/c/f", "/b/d", "/b/c/d/g", "/c", "/ab", "/z/y/x",
    ] {
        s.apply(&set(path, -1, "0123456789"));
    }
    let snap = s.current().clone();
    let all = snap.files();
    assert_eq!(all.len(), 9);
    for budget in [0, 1, 45, 50, 90, 200, 1000] {
        let mut got = Vec::new();
        let mut cursor: Option<Path> = None;
        for round in 0.. {
            assert!(round <= all.len(), "budget {budget}: no progress");
            let (files, done) = snap.files_after(cursor.as_ref(), budget);
            assert!(!files.is_empty() || done, "budget {budget}: empty chunk");
            let bytes: usize = files
                .iter()
                .map(|(p, _, b)| p.as_str().len() + b.len() + FILE_OVERHEAD_BYTES)
                .sum();
            assert!(
                files.len() == 1 || bytes <= budget,
                "budget {budget}: {bytes}"
            );
            cursor = files.last().map(|(p, _, _)| p.clone()).or(cursor);
            got.extend(files);
            if done {
                break;
            }
        }
        assert_eq!(got, all, "budget {budget}");
    }
    // A deep path is walked without recursion.
    let deep = format!("/{}", vec!["d"; 200].join("/"));
    let mut s = Store::new(10);
    s.apply(&set(&deep, -1, "x"));
    s.apply(&set("/e", -1, "y"));
    let (first, done) = s.current().files_after(None, 0);
    assert_eq!((first.len(), done), (1, false));
    let (rest, done) = s.current().files_after(Some(&first[0].0), 0);
    assert_eq!((rest[0].0.as_str(), done), ("/e", true));
}

/// Runs `f` on a thread with a 128 KiB stack: a function that recursed once
/// per path component would overflow it (and abort the test binary).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// `/a/a/…/<last>` with `depth` components: past the byte limit, built
/// without it, because the store must not depend on the limit.
fn deep_path(depth: usize, last: &str) -> Path {
    let mut text = "/a".repeat(depth - 1);
    text.push('/');
    text.push_str(last);
    Path::from_store(&text)
}

/// Attack 2 of issue 9: one SET of a path of 8,000 components overflowed the
/// core thread's stack. Every store operation on a 10,000-level tree, on a
/// 128 KiB stack.
#[test]
fn deep_paths_need_no_stack() {
    on_small_stack(|| {
        const DEPTH: usize = 10_000;
        let leaf = deep_path(DEPTH, "x");
        let sibling = deep_path(DEPTH, "y");
        let mut s = Store::new(10);
        let set_deep = |path: &Path| Mutation::Set {
            path: path.clone(),
            check: RevCheck::Clobber,
            body: b("deep"),
        };
        s.apply(&set_deep(&leaf));
        s.apply(&set_deep(&sibling));
        assert_eq!(
            s.current().entry(&leaf),
            Entry::File {
                rev: Rev(1),
                body: b("deep")
            }
        );
        // STAT of the parent directory, GETDIR in it.
        let parent = deep_path(DEPTH - 1, "a");
        assert_eq!(s.current().entry(&parent), Entry::Dir { len: 2 });
        assert_eq!(s.current().getdir(&parent, 1), Ok("y".to_string()));
        // Below a file: NOTDIR, nothing changes.
        let below = Path::from_store(&format!("{leaf}/z"));
        assert_eq!(s.apply(&set_deep(&below)).error, Some(ApplyError::NotDir));
        // WALK, digest, listing and rebuilding from the listing.
        let (path, rev, _) = s.current().walk(&g("/**"), 0).unwrap();
        assert_eq!((path, rev), (leaf.clone(), Rev(1)));
        assert_eq!(s.current().walk(&g("/a/a/a/**y"), 0).unwrap().0, sibling);
        assert_eq!(s.current().walk(&g("/a/a/b/**"), 0), Err(ErrCode::Range));
        let files = s.current().files();
        assert_eq!(files.len(), 3, "x, y and /ctl/err");
        let rebuilt = Snapshot::from_files(s.rev(), files);
        assert_eq!(rebuilt.digest(), s.current().digest());
        let same_rev = Snapshot::from_files(s.rev(), s.current().files());
        assert_eq!(&same_rev, s.current());
        assert!(format!("{rebuilt:?}").contains("Snapshot"));
        // WAIT over the history and in the index.
        assert_eq!(
            s.first_match(&g("/a/**y"), Rev(1)).unwrap().unwrap().path,
            sibling
        );
        let mut waits = WatchIndex::new();
        waits.insert(1, g("/a/a/**x"), Rev(1));
        waits.insert(2, g("/b/**"), Rev(1));
        let ev = s.event_at(Rev(1)).unwrap().clone();
        assert_eq!(waits.take_matches(&ev), vec![1]);
        // DEL prunes the 9,999 directories the last file leaves empty.
        s.apply(&Mutation::Del {
            path: leaf.clone(),
            check: RevCheck::Clobber,
        });
        assert_eq!(s.current().entry(&parent), Entry::Dir { len: 1 });
        s.apply(&Mutation::Del {
            path: sibling,
            check: RevCheck::Clobber,
        });
        assert_eq!(s.current().entry(&p("/a")), Entry::Absent);
        // Dropping every deep tree of the history, and a second copy.
        let copy = rebuilt.clone();
        drop(rebuilt);
        drop(s);
        drop(copy);
    });
}

#[test]
fn delete_prunes_exactly_the_emptied_directories() {
    let mut s = Store::new(100);
    for path in ["/a/b/c/d", "/a/b/e", "/a/f/g/h", "/x"] {
        run(&mut s, &set(path, -1, "v")).unwrap();
    }
    run(&mut s, &del("/a/f/g/h", -1)).unwrap();
    assert_eq!(s.current().entry(&p("/a/f")), Entry::Absent);
    assert_eq!(s.current().entry(&p("/a")), Entry::Dir { len: 1 });
    run(&mut s, &del("/a/b/c/d", -1)).unwrap();
    assert_eq!(s.current().entry(&p("/a/b")), Entry::Dir { len: 1 });
    run(&mut s, &del("/a/b/e", -1)).unwrap();
    assert_eq!(s.current().entry(&p("/a")), Entry::Absent);
    // Absent or below a file: nothing changes.
    let before = s.current().files();
    run(&mut s, &del("/x/y", -1)).unwrap();
    run(&mut s, &del("/q/r", -1)).unwrap();
    assert_eq!(s.current().files(), before);
    run(&mut s, &del("/x", -1)).unwrap();
    assert_eq!(s.current().entry(&Path::root()), Entry::Dir { len: 0 });
}

#[test]
fn bounded_scan_pauses_and_resumes_to_the_same_answer() {
    let mut s = Store::new(1000);
    for i in 0..500 {
        run(&mut s, &set(&format!("/n/{i}"), -1, "v")).unwrap();
    }
    run(&mut s, &set("/hit", -1, "v")).unwrap();
    let glob = g("/h*");
    let per_event = scan_cost(&glob, s.event_at(Rev(1)).unwrap());
    let mut from = Rev(1);
    let mut pieces = 0;
    let found = loop {
        pieces += 1;
        let mut budget = per_event * 10;
        match s.scan(&glob, from, &mut budget).unwrap() {
            Scan::Paused(next) => {
                assert!(next > from);
                from = next;
            }
            Scan::Found(event) => break event,
            Scan::Exhausted => panic!("missed the match"),
        }
    };
    assert_eq!(found.rev, Rev(501));
    assert!(pieces >= 50, "{pieces} pieces");
    // A zero budget examines nothing; a spent one reports where to go on.
    assert_eq!(s.scan(&glob, Rev(3), &mut 0), Ok(Scan::Paused(Rev(3))));
    let mut budget = 1;
    assert_eq!(s.scan(&glob, Rev(3), &mut budget), Ok(Scan::Paused(Rev(4))));
    assert_eq!(budget, 0);
    assert_eq!(
        s.scan(&g("/none"), Rev(1), &mut u64::MAX.clone()),
        Ok(Scan::Exhausted)
    );
    assert_eq!(s.scan(&glob, Rev(502), &mut 1), Ok(Scan::Exhausted));
}

#[test]
fn over_long_paths_are_refused_at_parse() {
    let at_limit = format!("/{}", "a".repeat(crate::types::MAX_PATH_BYTES - 1));
    assert!(Path::parse(&at_limit).is_ok());
    let over = format!("{at_limit}b");
    assert_eq!(
        Path::parse(&over),
        Err(crate::types::PathError::PathTooLong { len: over.len() })
    );
    assert!(!Path::is_valid(&over));
    let deep = "/a".repeat(8000);
    assert!(Path::parse(&deep).is_err());
}

/// Runs a stepped listing to its end with `budget` per piece; returns the
/// answer and the number of pieces.
fn in_pieces<T>(budget: u64, mut piece: impl FnMut(Cursor, &mut u64) -> Step<T>) -> (T, usize) {
    let mut cursor = Cursor::new(0);
    for pieces in 1..100_000 {
        let mut left = budget;
        match piece(cursor, &mut left) {
            Step::Done(answer) => return (answer, pieces),
            Step::Paused(next) => cursor = next,
        }
    }
    panic!("no answer");
}

/// WALK and GETDIR split into pieces of any size give the unbounded answers,
/// for every offset, pausing at files, skipped entries and directories alike.
#[test]
fn stepped_listings_agree_with_whole_ones() {
    let mut s = Store::new(10);
    for path in [
        "/a/b/c", "/a/b/d", "/a/bx", "/a-c", "/a/e/f/g", "/b/x/c", "/b/y", "/c", "/d/e/c",
    ] {
        run(&mut s, &set(path, -1, "v")).unwrap();
    }
    for i in 0..30 {
        run(&mut s, &set(&format!("/many/f{i:02}"), -1, "v")).unwrap();
    }
    let snap = s.current().clone();
    for glob in [
        "/**",
        "/a/**",
        "/*/*/c",
        "/**c",
        "/many/*",
        "/nothing/**",
        "/a/b?",
    ] {
        let glob = g(glob);
        for offset in 0..45u64 {
            let whole = snap.walk(&glob, offset as i64);
            for budget in [1, 9, 30, 200] {
                let (answer, pieces) = in_pieces(budget, |cursor, left| {
                    let cursor = Cursor {
                        left: if cursor.at.is_none() {
                            offset
                        } else {
                            cursor.left
                        },
                        ..cursor
                    };
                    snap.walk_step(&glob, cursor, left)
                });
                assert_eq!(answer, whole, "{glob} offset {offset} budget {budget}");
                if budget == 1 && whole.is_ok() && offset > 3 {
                    assert!(pieces > 3, "{glob} offset {offset}: {pieces} pieces");
                }
            }
        }
    }
    for dir in ["/", "/a", "/many", "/c", "/zz"] {
        for offset in 0..35u64 {
            let whole = snap.getdir(&p(dir), offset as i64);
            let (answer, _) = in_pieces(LIST_ENTRY_COST * 2, |cursor, left| {
                let cursor = Cursor {
                    left: if cursor.at.is_none() {
                        offset
                    } else {
                        cursor.left
                    },
                    ..cursor
                };
                snap.getdir_step(&p(dir), cursor, left)
            });
            assert_eq!(answer, whole, "{dir} offset {offset}");
        }
    }
}

/// Old revs are rebuilt by undoing the later ones (no snapshot is kept per
/// rev): every kind of change is undone exactly, including the forced
/// `/ctl/err` write over a file or a directory in its way, deletes that
/// prune directories, and sets that create them.
#[test]
fn old_revs_are_rebuilt_exactly() {
    let mut s = Store::new(1000);
    let mut seen: Vec<Snapshot> = Vec::new();
    let steps = [
        set("/a/b/c", -1, "1"),
        set("/a/b/d", -1, "2"),
        set("/a/b/c", -1, "3"),
        del("/a/b/c", -1),
        del("/a/b/d", -1), // prunes /a/b and /a
        set("/ctl", -1, "a file where /ctl/err goes"),
        set("/x", -5, "rev mismatch"), // forced /ctl/err over the file /ctl
        del("/ctl/err", -1),
        set("/ctl/err/deep/dir", -1, "y"),
        set("/ctl", -1, "is a dir"), // forced /ctl/err over the dir /ctl/err
        Mutation::Nop,
        del("/nothing/here", -1),
        set("/q/r/s/t", -1, "deep"),
        del("/q/r/s/t", -1),
    ];
    for m in &steps {
        s.apply(m);
        seen.push(s.current().clone());
    }
    let errors: Vec<i64> = (1..=s.rev().0)
        .filter(|r| s.event_at(Rev(*r)).unwrap().error.is_some())
        .collect();
    assert_eq!(errors, vec![7, 10], "the two forced writes");
    assert_eq!(seen[8].entry(&p("/ctl/err")), Entry::Dir { len: 1 });
    // Twice: once while the kept copies share the tree, once after.
    for _ in 0..2 {
        for snap in &seen {
            let rebuilt = s.snapshot_at(snap.rev()).unwrap();
            assert_eq!(&rebuilt, snap, "rev {}", snap.rev());
            assert_eq!(rebuilt.digest(), snap.digest(), "rev {}", snap.rev());
        }
        let digests: Vec<u64> = seen.iter().map(Snapshot::digest).collect();
        seen.clear();
        for (i, digest) in digests.into_iter().enumerate() {
            let rebuilt = s.snapshot_at(Rev(i as i64 + 1)).unwrap();
            assert_eq!(rebuilt.digest(), digest);
            seen.push(rebuilt);
        }
    }
    // Newest first: each rebuild starts from the one before it.
    for snap in seen.iter().rev() {
        assert_eq!(s.snapshot_at(snap.rev()).unwrap().digest(), snap.digest());
        assert_eq!(s.snapshot_at(snap.rev()).unwrap().digest(), snap.digest());
    }
    // Writing on after a rebuild leaves the rebuilt copy as it was.
    let old = s.snapshot_at(Rev(3)).unwrap();
    let before = old.digest();
    s.apply(&set("/a/b/c", -1, "later"));
    assert_eq!(old.digest(), before);
}

#[test]
fn file_mut_finds_only_files_and_changes_no_clone() {
    let s = fixture();
    let mut root = s.current().root.clone();
    let kept = root.clone();
    for (path, found) in [
        (vec!["f"], true),
        (vec!["d", "x"], true),
        (vec!["d"], false),          // a directory
        (vec!["f", "below"], false), // below a file
        (vec!["nothing"], false),
        (vec!["d", "nothing"], false),
        (vec![], false), // the root
    ] {
        let depth = path.len();
        assert_eq!(
            tree::file_mut(&mut root, path.clone()).map(|(_, depth)| depth),
            found.then_some(depth),
            "{path:?}"
        );
    }
    let Some((file, _)) = tree::file_mut(&mut root, ["d", "x"]) else {
        panic!("/d/x is a file")
    };
    *file = Node::File {
        body: b("changed"),
        rev: Rev(9),
    };
    let before = Snapshot {
        rev: s.rev(),
        root: kept,
    };
    let after = Snapshot { rev: s.rev(), root };
    assert_eq!(before.entry(&p("/d/x")), s.current().entry(&p("/d/x")));
    assert_eq!(&before, s.current(), "the clone kept its tree");
    assert_ne!(&after, s.current());
    assert!(matches!(
        after.entry(&p("/d/x")),
        Entry::File { rev: Rev(9), .. }
    ));
}
