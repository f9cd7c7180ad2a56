//! Bad input against a real `doozerd`: every malformed frame gets the error of
//! the contract or a disconnect of that one connection, and the server keeps
//! serving everyone else.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use doozer::codec::client::{Request, Verb};
use doozer::error::ErrCode;

fn req(tag: i32, verb: Verb) -> Request {
    Request {
        tag: Some(tag),
        verb: Some(verb as i32),
        ..Request::default()
    }
}

fn set(tag: i32, path: &str, value: Vec<u8>) -> Request {
    Request {
        path: Some(path.into()),
        value: Some(value),
        rev: Some(-1),
        ..req(tag, Verb::Set)
    }
}

fn still_serves(server: &mut Server) {
    assert!(server.is_running(), "doozerd died");
    let mut conn = server.connect();
    let reply = call(&mut conn, &req(1, Verb::Rev));
    assert!(reply.rev.unwrap() > 0);
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let mut server = Server::start(&[]);
    let mut bystander = server.connect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative length", vec![0xff, 0xff, 0xff, 0xfe]),
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff]),
        ("over the frame cap", (5u32 << 20).to_be_bytes().to_vec()),
        ("undecodable body", vec![0, 0, 0, 3, 0xff, 0xff, 0xff]),
        (
            "invalid utf-8 path",
            vec![0, 0, 0, 6, 0x10, 0x01, 0x22, 0x02, 0xc3, 0x28],
        ),
    ];
    for (what, bytes) in cases {
        let mut conn = server.connect();
        conn.write_all(&bytes).unwrap();
        assert!(
            closed_by_server(&mut conn),
            "{what}: the server must close the connection"
        );
        still_serves(&mut server);
    }
    // A frame cut short by the client's close.
    let mut conn = server.connect();
    conn.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
    drop(conn);
    still_serves(&mut server);
    // The bystander never noticed.
    assert!(call(&mut bystander, &req(9, Verb::Rev)).rev.is_some());
}

#[test]
fn empty_frame_and_unknown_verbs_get_unknown_verb() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.write_all(&[0, 0, 0, 0]).unwrap();
    let reply = recv(&mut conn).unwrap();
    assert_eq!(
        (reply.tag, reply.err_code),
        (None, Some(ErrCode::UnknownVerb as i32))
    );
    for verb in [0, 4, 8, 10, 12345] {
        let r = Request {
            tag: Some(3),
            verb: Some(verb),
            ..Request::default()
        };
        let reply = call(&mut conn, &r);
        assert_eq!(
            (reply.tag, reply.err_code),
            (Some(3), Some(ErrCode::UnknownVerb as i32))
        );
    }
    // The connection is still usable.
    assert!(call(&mut conn, &req(4, Verb::Rev)).rev.is_some());
}

#[test]
fn duplicate_tag_in_flight_is_tag_in_use() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let wait = Request {
        path: Some("/never/**".into()),
        rev: Some(1_000_000),
        ..req(7, Verb::Wait)
    };
    send(&mut conn, &wait);
    let reply = call(&mut conn, &req(7, Verb::Rev));
    assert_eq!(
        (reply.tag, reply.err_code),
        (Some(7), Some(ErrCode::TagInUse as i32))
    );
    // Other tags are fine.
    assert!(call(&mut conn, &req(8, Verb::Rev)).rev.is_some());
}

#[test]
fn oversized_value_is_refused_with_a_clear_error() {
    let server = Server::start(&["--max-value-bytes", "1000"]);
    let mut conn = server.connect();
    let reply = call(&mut conn, &set(1, "/big", vec![b'x'; 1001]));
    assert_eq!(reply.err_code, Some(ErrCode::Other as i32));
    assert_eq!(reply.err_detail.as_deref(), Some("value too large"));
    let reply = call(&mut conn, &set(2, "/big", vec![b'x'; 1000]));
    assert_eq!(reply.err_code, None);
}

#[test]
fn one_mebibyte_value_round_trips() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let value: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let reply = call(&mut conn, &set(1, "/mib", value.clone()));
    assert_eq!(reply.err_code, None);
    let get = Request {
        path: Some("/mib".into()),
        ..req(2, Verb::Get)
    };
    assert_eq!(call(&mut conn, &get).value.unwrap(), value);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_others_carry_on() {
    let mut server = Server::start(&[]);
    let mut setup = server.connect();
    assert_eq!(
        call(&mut setup, &set(1, "/fat", vec![b'y'; 512 * 1024])).err_code,
        None
    );

    // Ask for far more reply bytes than any buffer holds, never read them.
    let mut greedy = server.connect();
    greedy
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let get = Request {
        path: Some("/fat".into()),
        ..req(0, Verb::Get)
    };
    let started = Instant::now();
    let mut tag = 0;
    while started.elapsed() < Duration::from_secs(20) && tag < 20_000 {
        let mut r = get.clone();
        r.tag = Some(tag);
        tag += 1;
        if greedy
            .write_all(&doozer::codec::client::encode_frame(&r))
            .is_err()
        {
            break;
        }
    }
    // Whatever happened to the greedy client, the server serves others.
    still_serves(&mut server);
    assert!(
        closed_by_server(&mut greedy),
        "a client that never reads is cut off (sent {tag} requests)"
    );
    still_serves(&mut server);
}

#[test]
fn many_connections_closing_with_pending_waits_do_not_disturb_the_server() {
    let mut server = Server::start(&[]);
    for round in 0..20 {
        let mut conn = server.connect();
        for tag in 0..100 {
            let wait = Request {
                path: Some(format!("/w{round}/**")),
                rev: Some(1_000_000),
                ..req(tag, Verb::Wait)
            };
            send(&mut conn, &wait);
        }
        drop(conn);
    }
    still_serves(&mut server);
}
