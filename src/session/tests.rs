use super::*;

fn session(secrets: Secrets) -> Session {
    let limits = SessionLimits {
        max_in_flight: 3,
        max_in_flight_bytes: 1 << 20,
        max_value_bytes: 10,
        max_access_failures: 3,
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
        Action::Close { .. } => panic!("{verb:?} closed the connection"),
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

fn wait(tag: Option<i32>, glob: &str) -> Request {
    Request {
        tag,
        verb: Some(Verb::Wait as i32),
        path: Some(glob.into()),
        rev: Some(1_000_000),
        ..Request::default()
    }
}

fn bytes_session(max_bytes: usize) -> Session {
    let limits = SessionLimits {
        max_in_flight: 100,
        max_in_flight_bytes: max_bytes,
        max_value_bytes: 1 << 20,
        max_access_failures: 3,
    };
    Session::new(Secrets::default(), NodeId::from_bytes([7; 10]), limits)
}

fn submitted_bytes(action: Action) -> usize {
    match action {
        Action::Submit { bytes, .. } => bytes,
        other => panic!("expected a submission, got {other:?}"),
    }
}

#[test]
fn requests_are_charged_for_what_they_make_the_core_hold() {
    let glob = "/".to_string() + &"a".repeat(999);
    assert_eq!(
        request_cost(&wait(Some(1), &glob)),
        REQUEST_OVERHEAD_BYTES + GLOB_BYTES_FACTOR * 1000
    );
    let mut set = req(1, Verb::Set);
    set.path = Some("/a".into());
    set.value = Some(vec![0; 500]);
    assert_eq!(request_cost(&set), REQUEST_OVERHEAD_BYTES + 2 + 500);
    assert_eq!(request_cost(&req(1, Verb::Rev)), REQUEST_OVERHEAD_BYTES);
    // Unknown verbs are charged like plain paths; lengths never overflow.
    assert_eq!(request_cost(&Request::default()), REQUEST_OVERHEAD_BYTES);
}

#[test]
fn bytes_in_flight_are_bounded_per_connection() {
    // Each WAIT with a 1000-byte glob costs 256 + 10 × 1000 bytes; three
    // and a REV fit in 31,100, a fourth WAIT does not.
    let glob = "/".to_string() + &"w".repeat(999);
    let mut s = bytes_session(3 * (REQUEST_OVERHEAD_BYTES + GLOB_BYTES_FACTOR * 1000) + 300);
    let each = submitted_bytes(s.on_request(wait(Some(1), &glob), true));
    submitted_bytes(s.on_request(wait(Some(2), &glob), true));
    submitted_bytes(s.on_request(wait(Some(3), &glob), true));
    assert_eq!(s.in_flight_bytes(), 3 * each);
    let (tag, code, detail) = err_of(s.on_request(wait(Some(4), &glob), true));
    assert_eq!(
        (tag, code, detail.as_deref()),
        (Some(4), ErrCode::Other, Some("too many bytes in flight"))
    );
    // Small requests still fit in what is left; answers at once always do.
    submitted_bytes(s.on_request(req(5, Verb::Rev), true));
    assert!(matches!(
        s.on_request(req(6, Verb::SelfId), true),
        Action::Reply(r) if r.err_code.is_none()
    ));
    // A completed WAIT gives its bytes back.
    s.completed(Some(2));
    assert_eq!(s.in_flight_bytes(), 2 * each + REQUEST_OVERHEAD_BYTES);
    submitted_bytes(s.on_request(wait(Some(4), &glob), true));
    // Completing an unknown tag gives nothing back.
    s.completed(Some(99));
    assert_eq!(s.in_flight(), 4);
}

#[test]
fn one_request_alone_always_goes_through() {
    // As large as a glob may be.
    let huge = "/".to_string() + &"h".repeat(4095);
    let mut s = bytes_session(1000);
    let bytes = submitted_bytes(s.on_request(wait(Some(1), &huge), true));
    assert!(bytes > 1000);
    assert_eq!(
        err_of(s.on_request(req(2, Verb::Rev), true)).2.as_deref(),
        Some("too many bytes in flight")
    );
    s.completed(Some(1));
    assert_eq!(s.in_flight_bytes(), 0);
    submitted_bytes(s.on_request(req(2, Verb::Rev), true));
}

#[test]
fn untagged_completions_never_undercount() {
    // Untagged answers do not say which request finished: the smallest
    // charge is given back, so what is counted stays >= what is held.
    let big = "/".to_string() + &"b".repeat(2000);
    let mut s = bytes_session(1 << 20);
    let large = submitted_bytes(s.on_request(wait(None, &big), true));
    let small = submitted_bytes(s.on_request(
        Request {
            tag: None,
            ..req(0, Verb::Rev)
        },
        true,
    ));
    assert!(large > small);
    // The REV is answered; the WAIT still holds its glob.
    s.completed(None);
    assert_eq!(s.in_flight_bytes(), large);
    s.completed(None);
    assert_eq!((s.in_flight(), s.in_flight_bytes()), (0, 0));
    // More completions than requests change nothing.
    s.completed(None);
    assert_eq!((s.in_flight(), s.in_flight_bytes()), (0, 0));
}

#[test]
fn the_shared_budget_bounds_all_connections_and_is_given_back() {
    let shared = std::sync::Arc::new(crate::budget::ByteBudget::new(25_000));
    let glob = "/".to_string() + &"s".repeat(1499);
    let mut a = bytes_session(1 << 20).with_shared_budget(shared.clone());
    let mut b = bytes_session(1 << 20).with_shared_budget(shared.clone());
    // 15,256 bytes each: a fits, b does not.
    let each = submitted_bytes(a.on_request(wait(Some(1), &glob), true));
    assert_eq!(shared.used(), each);
    let (_, code, detail) = err_of(b.on_request(wait(Some(1), &glob), true));
    assert_eq!((code, detail.as_deref()), (ErrCode::Other, Some("busy")));
    assert_eq!(b.in_flight(), 0, "a refused request is not in flight");
    // The tag is free again after a refusal.
    submitted_bytes(b.on_request(req(1, Verb::Rev), true));
    assert_eq!(shared.used(), each + REQUEST_OVERHEAD_BYTES);
    b.completed(Some(1));
    assert_eq!(shared.used(), each);
    // A closed connection gives back everything it still had in flight.
    drop(a);
    assert_eq!(shared.used(), 0);
    submitted_bytes(b.on_request(wait(Some(2), &glob), true));
    drop(b);
    assert_eq!(shared.used(), 0);
}

#[test]
fn wrong_access_attempts_close_the_connection() {
    let secrets = Secrets {
        read_write: "rw".into(),
        read_only: String::new(),
    };
    let mut s = session(secrets);
    let mut access = req(1, Verb::Access);
    access.value = Some(b"guess".to_vec());
    for _ in 0..2 {
        assert_eq!(
            err_of(s.on_request(access.clone(), true)).2.as_deref(),
            Some("permission denied")
        );
    }
    // Other refusals do not count.
    assert!(denied(&mut s, Verb::Get));
    assert!(!s.has_rights());
    match s.on_request(access.clone(), true) {
        Action::Close { reply, reason } => {
            assert_eq!(reply.tag, Some(1));
            assert_eq!(reply.err_detail.as_deref(), Some("permission denied"));
            assert_eq!(reason, "3 wrong ACCESS attempts");
        }
        other => panic!("expected the connection closed, got {other:?}"),
    }

    // The right secret before the limit works, and grants rights.
    let mut s = session(Secrets {
        read_write: "rw".into(),
        read_only: String::new(),
    });
    s.on_request(access.clone(), true);
    s.on_request(access.clone(), true);
    access.value = Some(b"rw".to_vec());
    assert!(matches!(s.on_request(access, true), Action::Reply(r) if r.err_code.is_none()));
    assert!(s.has_rights());
    // Without secrets every connection has rights from the start.
    assert!(open().has_rights());
}

#[test]
fn a_request_past_the_bytes_in_flight_waits_only_when_answers_will_make_room() {
    let glob = "/".to_string() + &"w".repeat(999);
    let each_wait = REQUEST_OVERHEAD_BYTES + GLOB_BYTES_FACTOR * 1000;
    let mut s = bytes_session(2 * each_wait);
    let big_get = Request {
        path: Some("/".to_string() + &"g".repeat(2 * each_wait)),
        ..req(3, Verb::Get)
    };
    // Nothing in flight: a request alone always goes through, no wait.
    assert!(!s.must_wait(&big_get));
    submitted_bytes(s.on_request(wait(Some(1), &glob), true));
    // Only a WAIT in flight, which may never fire: refused at once.
    assert!(!s.must_wait(&big_get));
    submitted_bytes(s.on_request(req(2, Verb::Rev), true));
    // A REV in flight will be answered: wait for it, and be woken.
    assert!(s.must_wait(&big_get));
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    s.wake_on_completion(&Waker::from(Arc::new(Flag(woken.clone()))));
    s.completed(Some(2));
    assert!(woken.load(std::sync::atomic::Ordering::SeqCst));
    // Back to the WAIT alone; ACCESS and SELF never wait.
    assert!(!s.must_wait(&big_get));
    submitted_bytes(s.on_request(req(4, Verb::Rev), true));
    assert!(s.must_wait(&big_get));
    assert!(!s.must_wait(&req(5, Verb::SelfId)));
    // The WAIT firing gives back its hold; the REV still makes room.
    s.completed(Some(1));
    assert_eq!(s.in_flight(), 1);
    s.completed(Some(4));
    assert!(!s.must_wait(&big_get));
}
