//! The client edge against a core that does not answer: the test holds the
//! receiving ends of the core's inbox and control channel, so it decides
//! when they drain and can fill them on purpose. Checks that a full control
//! channel refuses new connections without losing a `Closed`, and that the
//! inbox's byte budget answers `OTHER: busy` without waiting.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use common::{call, closed_by_server, loopback_net, send};
use doozer::budget::ByteBudget;
use doozer::codec::client::{Request, Verb};
use doozer::codec::peer_auth::PeerKey;
use doozer::core::Input;
use doozer::runtime::client_conn::{accept_loop, ClientContext};
use doozer::runtime::event_loop::{Control, ControlSender, Inbox, NodeStatus, Queued};
use doozer::runtime::peer_link::{PeerIdentity, PeerInbound};
use doozer::runtime::rt::{self, TcpListener};
use doozer::session::{Secrets, SessionLimits};
use doozer::types::NodeId;

const WAIT: Duration = Duration::from_secs(10);

struct Edge {
    addr: String,
    status: Arc<NodeStatus>,
    inbox: Receiver<Queued>,
    control: Receiver<Control>,
}

/// A listener serving clients into channels the test reads: a control
/// channel of `control_slots`, an inbox of `inbox_bytes`.
fn edge(control_slots: usize, inbox_bytes: usize) -> Edge {
    let ip = format!("{}1", loopback_net());
    let listener = rt::block_on(TcpListener::bind(format!("{ip}:0"))).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (inbox_tx, inbox) = Inbox::new(1024, inbox_bytes);
    let (control_tx, control) = ControlSender::standalone(control_slots);
    let status = Arc::new(NodeStatus::default());
    status
        .writable
        .store(true, std::sync::atomic::Ordering::Release);
    let ctx = Arc::new(ClientContext {
        inbox: inbox_tx.clone(),
        control: control_tx,
        status: status.clone(),
        node_id: NodeId::from_bytes([1; 10]),
        secrets: Secrets::default(),
        session_limits: SessionLimits {
            max_in_flight: 16,
            max_in_flight_bytes: 8 << 20,
            max_value_bytes: 1 << 20,
            max_access_failures: 3,
        },
        max_frame_bytes: 2 << 20,
        outbox_capacity: 16,
        max_connections: 100,
        max_connections_per_ip: 50,
        access_timeout: Duration::from_secs(10),
        client_budget: Arc::new(ByteBudget::new(64 << 20)),
        peers: PeerInbound::new(
            inbox_tx,
            PeerIdentity {
                me: NodeId::from_bytes([1; 10]),
                cluster: "c".into(),
                key: PeerKey::for_secrets("", "", ""),
                bind_ip: None,
                tls: None,
            },
            4 << 20,
            64 << 20,
            status.clone(),
        ),
        tls: None,
    });
    rt::spawn(accept_loop(listener, ctx));
    Edge {
        addr,
        status,
        inbox,
        control,
    }
}

fn connect(addr: &str) -> TcpStream {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn
}

fn rev(tag: i32) -> Request {
    Request {
        tag: Some(tag),
        verb: Some(Verb::Rev as i32),
        ..Request::default()
    }
}

/// The next control message: `Ok(conn)` for an `Opened`, `Err(conn)` for a
/// `Closed`.
fn next_control(edge: &Edge) -> Result<u64, u64> {
    match edge.control.recv_timeout(WAIT).expect("a control message") {
        Control::Opened { conn, .. } => Ok(conn),
        Control::Closed { conn } => Err(conn),
    }
}

/// The next request the core would get, as its tag.
fn next_request(edge: &Edge) -> Option<i32> {
    match edge
        .inbox
        .recv_timeout(WAIT)
        .expect("a request")
        .into_input()
    {
        Input::Request { tag, .. } => tag,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn a_full_control_channel_refuses_new_connections_and_loses_no_close() {
    let edge = edge(1, 64 << 20);
    // A's Opened fills the channel.
    let mut a = connect(&edge.addr);
    send(&mut a, &rev(1));
    assert_eq!(next_request(&edge), Some(1));
    // B finds it full: refused, not queued, not blocking anyone.
    let mut b = connect(&edge.addr);
    send(&mut b, &rev(1));
    assert!(closed_by_server(&mut b), "B is refused");
    let refused = edge
        .status
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 1, "the refusal is counted");
    let a_id = next_control(&edge).expect("A's Opened");
    assert!(edge.control.is_empty(), "nothing of B's was queued");

    // C opens (its Opened fills the channel again), then A leaves: A's
    // Closed must wait for room, not be dropped.
    let mut c = connect(&edge.addr);
    send(&mut c, &rev(1));
    assert_eq!(next_request(&edge), Some(1));
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let c_id = next_control(&edge).expect("C's Opened");
    assert_ne!(a_id, c_id);
    assert_eq!(next_control(&edge), Err(a_id), "A's Closed arrives late");
    drop(c);
    assert_eq!(next_control(&edge), Err(c_id));
}

#[test]
fn the_inbox_byte_budget_answers_busy_at_once() {
    let edge = edge(64, 4096);
    let mut conn = connect(&edge.addr);
    // A 3500-byte SET (charged 3758) fills most of the 4096 bytes; one REV
    // (256) still fits.
    let set = Request {
        tag: Some(1),
        verb: Some(Verb::Set as i32),
        path: Some("/x".into()),
        value: Some(vec![b'v'; 3500]),
        rev: Some(-1),
        ..Request::default()
    };
    send(&mut conn, &set);
    send(&mut conn, &rev(2));
    // The next REV does not fit in the inbox: busy, from the edge.
    let reply = call(&mut conn, &rev(3));
    assert_eq!(
        (reply.tag, reply.err_detail.as_deref()),
        (Some(3), Some("busy"))
    );
    // Once the core takes what is queued, there is room again.
    assert_eq!(next_request(&edge), Some(1));
    assert_eq!(next_request(&edge), Some(2));
    send(&mut conn, &rev(3));
    assert_eq!(next_request(&edge), Some(3));
}
