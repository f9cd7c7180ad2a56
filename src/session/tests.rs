use super::*;

fn session(secrets: Secrets) -> Session {
    let limits = SessionLimits {
        max_in_flight: 3,
        max_value_bytes: 10,
    };
    Session::new(secrets, NodeId::from_bytes([7; 10]), limits)
}

fn open() -> Session {
    session(Secrets::default())
}

fn req(tag: i32, verb: Verb) -> Request {
    Request {
        tag: Some(tag),
        verb: Some(verb as i32),
        ..Request::default()
    }
}

fn err_of(action: Action) -> (Option<i32>, ErrCode, Option<String>) {
    match action {
        Action::Reply(r) => (
            r.tag,
            ErrCode::from_wire(r.err_code.expect("an error reply")).unwrap(),
            r.err_detail,
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn command_of(action: Action) -> Command {
    match action {
        Action::Submit { command, .. } => command,
        other => panic!("expected a submission, got {other:?}"),
    }
}

#[test]
fn unknown_or_absent_verbs() {
    let mut s = open();
    let empty = Request::default();
    assert_eq!(
        err_of(s.on_request(empty, true)),
        (None, ErrCode::UnknownVerb, None)
    );
    for removed in [0, 4, 8, 10, 1000] {
        let r = Request {
            tag: Some(1),
            verb: Some(removed),
            ..Request::default()
        };
        assert_eq!(err_of(s.on_request(r, true)).1, ErrCode::UnknownVerb);
    }
}

#[test]
fn missing_arguments() {
    let mut s = open();
    let mut get = req(1, Verb::Get);
    assert_eq!(
        err_of(s.on_request(get.clone(), true)).1,
        ErrCode::MissingArg
    );
    get.path = Some("/a".into());
    assert!(matches!(
        command_of(s.on_request(get, true)),
        Command::Get { .. }
    ));

    let mut set = req(2, Verb::Set);
    set.path = Some("/a".into());
    assert_eq!(
        err_of(s.on_request(set.clone(), true)).1,
        ErrCode::MissingArg,
        "SET needs rev"
    );
    let mut del = req(2, Verb::Del);
    del.rev = Some(0);
    assert_eq!(
        err_of(s.on_request(del, true)).1,
        ErrCode::MissingArg,
        "DEL needs path"
    );
    let mut wait = req(2, Verb::Wait);
    wait.path = Some("/**".into());
    assert_eq!(
        err_of(s.on_request(wait, true)).1,
        ErrCode::MissingArg,
        "WAIT needs rev"
    );
    let mut walk = req(2, Verb::Walk);
    walk.path = Some("/**".into());
    assert_eq!(
        err_of(s.on_request(walk, true)).1,
        ErrCode::MissingArg,
        "WALK needs offset"
    );
    let mut getdir = req(2, Verb::Getdir);
    getdir.offset = Some(0);
    assert_eq!(
        err_of(s.on_request(getdir, true)).1,
        ErrCode::MissingArg,
        "GETDIR needs path"
    );
}

#[test]
fn bad_paths_and_globs() {
    let mut s = open();
    for bad in ["", "x", "/a/", "xfoo", "/a b"] {
        let mut get = req(1, Verb::Get);
        get.path = Some(bad.into());
        assert_eq!(
            err_of(s.on_request(get, true)).1,
            ErrCode::BadPath,
            "GET {bad:?}"
        );
        let mut getdir = req(1, Verb::Getdir);
        getdir.path = Some(bad.into());
        getdir.offset = Some(0);
        assert_eq!(
            err_of(s.on_request(getdir, true)).1,
            ErrCode::BadPath,
            "GETDIR {bad:?}"
        );
        let mut set = req(1, Verb::Set);
        set.path = Some(bad.into());
        set.rev = Some(-1);
        assert_eq!(
            err_of(s.on_request(set, true)).1,
            ErrCode::BadPath,
            "SET {bad:?}"
        );
    }
    let mut wait = req(1, Verb::Wait);
    wait.path = Some("a*".into());
    wait.rev = Some(1);
    let (_, code, detail) = err_of(s.on_request(wait, true));
    assert_eq!(code, ErrCode::Other);
    assert_eq!(detail.as_deref(), Some("invalid glob pattern: a*"));

    // STAT never fails on a bad path: it answers like an absent file.
    let stat = req(1, Verb::Stat);
    assert_eq!(
        command_of(s.on_request(stat, true)),
        Command::Stat {
            path: None,
            rev: None
        }
    );
}

#[test]
fn walk_checks_glob_before_offset() {
    let mut s = open();
    let mut walk = req(1, Verb::Walk);
    walk.path = Some("bad".into());
    walk.offset = Some(-1);
    assert_eq!(err_of(s.on_request(walk.clone(), true)).1, ErrCode::Other);
    walk.path = Some("/**".into());
    assert_eq!(err_of(s.on_request(walk, true)).1, ErrCode::Range);
}

#[test]
fn writes_on_a_readonly_node_and_value_limit() {
    let mut s = open();
    let mut set = req(1, Verb::Set);
    set.path = Some("/a".into());
    set.rev = Some(0);
    assert_eq!(
        err_of(s.on_request(set.clone(), false)).1,
        ErrCode::Readonly
    );
    assert_eq!(
        err_of(s.on_request(req(2, Verb::Nop), false)).1,
        ErrCode::Readonly
    );
    set.value = Some(vec![0; 11]);
    let (_, code, detail) = err_of(s.on_request(set.clone(), true));
    assert_eq!(
        (code, detail.as_deref()),
        (ErrCode::Other, Some("value too large"))
    );
    set.value = Some(vec![0; 10]);
    assert!(matches!(
        command_of(s.on_request(set, true)),
        Command::Set { .. }
    ));
}

#[test]
fn duplicate_tags_and_in_flight_bound() {
    let mut s = open();
    assert_eq!(
        command_of(s.on_request(req(5, Verb::Rev), true)),
        Command::Rev
    );
    assert_eq!(
        err_of(s.on_request(req(5, Verb::Rev), true)).1,
        ErrCode::TagInUse
    );
    s.completed(Some(5));
    assert_eq!(
        command_of(s.on_request(req(5, Verb::Rev), true)),
        Command::Rev
    );
    command_of(s.on_request(req(6, Verb::Rev), true));
    command_of(s.on_request(req(7, Verb::Rev), true));
    let (_, code, detail) = err_of(s.on_request(req(8, Verb::Rev), true));
    assert_eq!(
        (code, detail.as_deref()),
        (ErrCode::Other, Some("too many requests in flight"))
    );
    assert_eq!(s.in_flight(), 3);
}

#[test]
fn self_and_access_answer_at_once() {
    let mut s = open();
    match s.on_request(req(3, Verb::SelfId), true) {
        Action::Reply(r) => {
            assert_eq!(r.tag, Some(3));
            assert_eq!(
                r.value.as_deref(),
                Some(NodeId::from_bytes([7; 10]).as_str().as_bytes())
            );
        }
        other => panic!("{other:?}"),
    }
    match s.on_request(req(4, Verb::Access), true) {
        Action::Reply(r) => assert_eq!(
            r,
            Response {
                tag: Some(4),
                ..Response::default()
            }
        ),
        other => panic!("{other:?}"),
    }
}

fn denied(s: &mut Session, verb: Verb) -> bool {
    let mut r = req(1, verb);
    r.path = Some("/a".into());
    r.rev = Some(-1);
    r.offset = Some(0);
    match s.on_request(r, true) {
        Action::Reply(resp) => resp.err_detail.as_deref() == Some("permission denied"),
        Action::Submit { tag, .. } => {
            s.completed(tag);
            false
        }
    }
}

const READS: [Verb; 7] = [
    Verb::Get,
    Verb::Stat,
    Verb::Getdir,
    Verb::Wait,
    Verb::Walk,
    Verb::Rev,
    Verb::SelfId,
];
const WRITES: [Verb; 3] = [Verb::Set, Verb::Del, Verb::Nop];

#[test]
fn secrets_follow_the_contract() {
    let both = Secrets {
        read_write: "rw".into(),
        read_only: "ro".into(),
    };
    let mut s = session(both.clone());
    for verb in READS.into_iter().chain(WRITES) {
        assert!(denied(&mut s, verb), "{verb:?} must need a secret");
    }
    let mut access = req(1, Verb::Access);
    access.value = Some(b"wrong".to_vec());
    assert_eq!(
        err_of(s.on_request(access.clone(), true)).2.as_deref(),
        Some("permission denied")
    );
    access.value = Some(b"ro".to_vec());
    assert!(matches!(s.on_request(access.clone(), true), Action::Reply(r) if r.err_code.is_none()));
    assert!(READS.into_iter().all(|v| !denied(&mut s, v)));
    assert!(WRITES.into_iter().all(|v| denied(&mut s, v)));
    access.value = Some(b"rw".to_vec());
    s.on_request(access.clone(), true);
    assert!(WRITES.into_iter().all(|v| !denied(&mut s, v)));
    // A failed ACCESS takes nothing away.
    access.value = Some(b"wrong".to_vec());
    s.on_request(access, true);
    assert!(WRITES.into_iter().all(|v| !denied(&mut s, v)));

    // Only the read-only secret: it reads, nobody writes.
    let ro_only = Secrets {
        read_write: String::new(),
        read_only: "ro".into(),
    };
    let mut s = session(ro_only.clone());
    assert!(denied(&mut s, Verb::Get));
    assert_eq!(ro_only.grant(b""), None);
    assert_eq!(
        ro_only.grant(b"ro"),
        Some(Rights {
            read: true,
            write: false
        })
    );

    // Only the read-write secret: anonymous has nothing.
    let rw_only = Secrets {
        read_write: "rw".into(),
        read_only: String::new(),
    };
    let mut s = session(rw_only.clone());
    assert!(denied(&mut s, Verb::Get) && denied(&mut s, Verb::Set));
    assert_eq!(rw_only.grant(b""), None);

    // No secret: everything is open, and only the empty secret is right.
    assert!(Secrets::default().grant(b"").is_some());
    assert_eq!(Secrets::default().grant(b"x"), None);
    let mut s = open();
    assert!(READS.into_iter().chain(WRITES).all(|v| !denied(&mut s, v)));
}

#[test]
fn secrets_compare_whole() {
    assert!(same_secret(b"abc", b"abc"));
    assert!(!same_secret(b"abc", b"abd"));
    assert!(!same_secret(b"abc", b"ab"));
    assert!(!same_secret(b"", b"a"));
}
