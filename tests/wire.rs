//! The client wire format: golden bytes from the reference (§2.2), and a check
//! that the hand-derived prost types agree with `proto/doozer.proto`.

use std::collections::BTreeMap;

use doozer::codec::client::{encode_frame, response, Request, Response, Verb};
use doozer::core::Reply;
use doozer::error::{ErrCode, ReplyError};
use doozer::store::EventKind;
use doozer::types::{Body, Path, Rev};
use prost::Message;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn get_request_frame() {
    let req = Request {
        tag: Some(0),
        verb: Some(Verb::Get as i32),
        path: Some("/a".into()),
        ..Request::default()
    };
    assert_eq!(
        encode_frame(&req),
        hex("00 00 00 08 08 00 10 01 22 02 2F 61")
    );
}

#[test]
fn value_reply_frame() {
    let outcome = Ok(Reply::Value {
        rev: Rev(5),
        body: Body::from(b"hello".to_vec()),
    });
    let frame = encode_frame(&response(Some(0), &outcome));
    assert_eq!(frame, hex("00 00 00 0B 08 00 18 05 32 05 68 65 6C 6C 6F"));
}

#[test]
fn clobber_set_request_frame() {
    let req = Request {
        tag: Some(1),
        verb: Some(Verb::Set as i32),
        path: Some("/a".into()),
        value: Some(b"x".to_vec()),
        rev: Some(-1),
        ..Request::default()
    };
    let frame = encode_frame(&req);
    assert_eq!(
        frame,
        hex("00 00 00 16 08 01 10 02 22 02 2F 61 2A 01 78 48 FF FF FF FF FF FF FF FF FF 01")
    );
    // And it decodes back (the server's side).
    assert_eq!(Request::decode(&frame[4..]).unwrap(), req);
}

#[test]
fn error_reply_frames() {
    let frame = encode_frame(&response(Some(1), &Err(ErrCode::RevMismatch.into())));
    assert_eq!(frame, hex("00 00 00 05 08 01 A0 06 05"));
    let frame = encode_frame(&response(Some(1), &Err(ReplyError::permission_denied())));
    let mut want = hex("00 00 00 19 08 01 A0 06 7F AA 06 11");
    want.extend_from_slice(b"permission denied");
    assert_eq!(frame, want);
}

#[test]
fn replies_always_carry_the_fields_go_clients_dereference() {
    // WAIT/WALK: rev, path, flags and value, even for an empty nop event.
    let outcome = Ok(Reply::Event {
        path: Path::root(),
        rev: Rev(9),
        body: Body::from(Vec::new()),
        kind: EventKind::Nop,
    });
    let r = response(Some(2), &outcome);
    assert_eq!(
        (r.rev, r.flags, r.path.as_deref(), r.value.as_deref()),
        (Some(9), Some(0), Some("/"), Some(&b""[..]))
    );
    // GET of an absent file: rev 0 and an empty value.
    let r = response(
        Some(2),
        &Ok(Reply::Value {
            rev: Rev(0),
            body: Body::from(Vec::new()),
        }),
    );
    assert_eq!((r.rev, r.value.as_deref()), (Some(0), Some(&b""[..])));
    // STAT: len and rev.
    let r = response(Some(2), &Ok(Reply::Stat { len: 0, rev: 0 }));
    assert_eq!((r.len, r.rev), (Some(0), Some(0)));
    // Tag 0 is written, as the Go client expects.
    assert_eq!(
        encode_frame(&response(Some(0), &Ok(Reply::Done))),
        hex("00 00 00 02 08 00")
    );
}

/// Fields of each message and values of each enum in `proto/doozer.proto`.
struct Schema {
    fields: BTreeMap<String, BTreeMap<String, (u32, String)>>,
    enums: BTreeMap<String, BTreeMap<String, i32>>,
}

fn parse_schema() -> Schema {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/doozer.proto"))
        .unwrap();
    let mut schema = Schema {
        fields: BTreeMap::new(),
        enums: BTreeMap::new(),
    };
    let mut message = String::new();
    let mut in_enum: Option<String> = None;
    for line in text.lines().map(|l| l.split("//").next().unwrap().trim()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["message", name, "{"] => message = name.to_string(),
            ["enum", name, "{"] => in_enum = Some(name.to_string()),
            ["}"] if in_enum.is_some() => in_enum = None,
            ["optional", ty, name, "=", num] => {
                let num: u32 = num.trim_end_matches(';').parse().unwrap();
                schema
                    .fields
                    .entry(message.clone())
                    .or_default()
                    .insert(name.to_string(), (num, ty.to_string()));
            }
            [name, "=", value] if in_enum.is_some() => {
                let value: i32 = value.trim_end_matches(';').parse().unwrap();
                schema
                    .enums
                    .entry(in_enum.clone().unwrap())
                    .or_default()
                    .insert(name.to_string(), value);
            }
            _ => {}
        }
    }
    schema
}

/// The (field number, wire type) of a message that has exactly one field set.
fn only_key<M: Message>(msg: &M) -> (u32, u32) {
    let bytes = msg.encode_to_vec();
    let mut key: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        key |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    ((key >> 3) as u32, (key & 7) as u32)
}

fn wire_type(proto_type: &str) -> u32 {
    match proto_type {
        "int32" | "int64" | "Verb" | "Err" => 0,
        "string" | "bytes" => 2,
        other => panic!("unexpected type {other}"),
    }
}

#[test]
fn prost_types_agree_with_the_proto_schema() {
    let schema = parse_schema();
    let request: Vec<(&str, Request)> = vec![
        (
            "tag",
            Request {
                tag: Some(1),
                ..Default::default()
            },
        ),
        (
            "verb",
            Request {
                verb: Some(1),
                ..Default::default()
            },
        ),
        (
            "path",
            Request {
                path: Some("/".into()),
                ..Default::default()
            },
        ),
        (
            "value",
            Request {
                value: Some(vec![1]),
                ..Default::default()
            },
        ),
        (
            "other_tag",
            Request {
                other_tag: Some(1),
                ..Default::default()
            },
        ),
        (
            "offset",
            Request {
                offset: Some(1),
                ..Default::default()
            },
        ),
        (
            "rev",
            Request {
                rev: Some(1),
                ..Default::default()
            },
        ),
    ];
    let response: Vec<(&str, Response)> = vec![
        (
            "tag",
            Response {
                tag: Some(1),
                ..Default::default()
            },
        ),
        (
            "flags",
            Response {
                flags: Some(1),
                ..Default::default()
            },
        ),
        (
            "rev",
            Response {
                rev: Some(1),
                ..Default::default()
            },
        ),
        (
            "path",
            Response {
                path: Some("/".into()),
                ..Default::default()
            },
        ),
        (
            "value",
            Response {
                value: Some(vec![1]),
                ..Default::default()
            },
        ),
        (
            "len",
            Response {
                len: Some(1),
                ..Default::default()
            },
        ),
        (
            "err_code",
            Response {
                err_code: Some(1),
                ..Default::default()
            },
        ),
        (
            "err_detail",
            Response {
                err_detail: Some("x".into()),
                ..Default::default()
            },
        ),
    ];
    let check = |name: &str, ours: Vec<(&str, (u32, u32))>| {
        let theirs = &schema.fields[name];
        assert_eq!(ours.len(), theirs.len(), "{name}: field count");
        for (field, (num, wt)) in ours {
            let (pnum, ptype) = &theirs[field];
            assert_eq!((num, wt), (*pnum, wire_type(ptype)), "{name}.{field}");
        }
    };
    check(
        "Request",
        request.iter().map(|(n, m)| (*n, only_key(m))).collect(),
    );
    check(
        "Response",
        response.iter().map(|(n, m)| (*n, only_key(m))).collect(),
    );

    let verbs = &schema.enums["Verb"];
    // The original's 11 and our SNAPSHOT.
    assert_eq!(verbs.len(), 12);
    for (name, value) in verbs {
        let ours = Verb::try_from(*value).unwrap_or_else(|_| panic!("verb {name}"));
        let ours = match ours {
            Verb::Get => "GET",
            Verb::Set => "SET",
            Verb::Del => "DEL",
            Verb::Rev => "REV",
            Verb::Wait => "WAIT",
            Verb::Nop => "NOP",
            Verb::Walk => "WALK",
            Verb::Getdir => "GETDIR",
            Verb::Stat => "STAT",
            Verb::SelfId => "SELF",
            Verb::Access => "ACCESS",
            Verb::Snapshot => "SNAPSHOT",
        };
        assert_eq!(ours, name);
    }
    let errs = &schema.enums["Err"];
    assert_eq!(errs.len(), ErrCode::ALL.len());
    for (name, value) in errs {
        assert_eq!(
            ErrCode::from_wire(*value).map(ErrCode::name),
            Some(name.as_str())
        );
    }
}
