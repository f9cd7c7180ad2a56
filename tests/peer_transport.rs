//! The peer transport over real sockets: `PeerLinks` dialing the shared
//! client/peer listener (`accept_loop`) of another "node" whose core is
//! replaced by the test reading its inbox.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use futures::{AsyncReadExt, AsyncWriteExt};

use doozer::budget::ByteBudget;
use doozer::codec::client::{encode_frame, read_message, Request, Response};
use doozer::codec::peer::{
    self, encode_hello, encode_peer_frame, encode_peer_frame_into, Hello, MAGIC, PROTOCOL_VERSION,
};
use doozer::codec::peer_auth::{FrameOpener, FrameSealer, PeerKey, TAG_BYTES};
use doozer::core::{Decree, Input, PeerMsg};
use doozer::error::ErrCode;
use doozer::paxos::{Ballot, Msg};
use doozer::runtime::client_conn::{accept_loop, ClientContext};
use doozer::runtime::conn::Conn;
use doozer::runtime::event_loop::{Control, ControlSender, Inbox, NodeStatus, Queued};
use doozer::runtime::peer_link::{
    self as link, PeerIdentity, PeerInbound, PeerLinks, KEEPALIVE_INTERVAL, SILENCE_TIMEOUT,
    UNACKED_TIMEOUT,
};
use doozer::runtime::rt::{self, TcpListener, TcpStream};
use doozer::session::{Secrets, SessionLimits};
use doozer::store::Mutation;
use doozer::types::{NodeId, Path, Rev, RevCheck};

const MAX_FRAME: usize = 4 << 20;
const WAIT: Duration = Duration::from_secs(10);

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 10])
}

/// A small message numbered `n`.
fn alive(n: i64) -> PeerMsg {
    PeerMsg::Decided {
        first: Rev(n),
        decrees: Vec::new(),
    }
}

/// A free port on a loopback address of its own.
async fn bind() -> TcpListener {
    let n = 2 + rand_u8() % 250;
    TcpListener::bind(format!("127.0.0.{n}:0")).await.unwrap()
}

fn rand_u8() -> u8 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u8
}

/// One side of a test: a listener that takes clients and peers, and the
/// channels its core would read.
struct Node {
    id: NodeId,
    addr: String,
    inbox: Receiver<Queued>,
    /// Kept so client connections can announce themselves.
    _control: Receiver<Control>,
    status: Arc<NodeStatus>,
}

/// The key every test node holds unless a test says otherwise.
fn key() -> PeerKey {
    PeerKey::for_secrets("test peer secret", "", "")
}

fn identity(n: u8, cluster: &str, key: PeerKey) -> PeerIdentity {
    PeerIdentity {
        me: id(n),
        cluster: cluster.into(),
        key,
        bind_ip: None,
        tls: None,
    }
}

fn node(n: u8, cluster: &str, inbox_capacity: usize) -> Node {
    node_with(n, cluster, inbox_capacity, key(), 64 << 20)
}

fn node_with(
    n: u8,
    cluster: &str,
    inbox_capacity: usize,
    key: PeerKey,
    frame_budget: usize,
) -> Node {
    let listener = rt::block_on(bind());
    let addr = listener.local_addr().unwrap().to_string();
    let (inbox_tx, inbox) = Inbox::new(inbox_capacity, 64 << 20);
    let (control_tx, control) = ControlSender::standalone(1 << 16);
    let status = Arc::new(NodeStatus::default());
    // As a node with its copy of the store: clients are served at once.
    status
        .writable
        .store(true, std::sync::atomic::Ordering::Release);
    let ctx = Arc::new(ClientContext {
        inbox: inbox_tx.clone(),
        control: control_tx,
        status: status.clone(),
        node_id: id(n),
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
            identity(n, cluster, key),
            MAX_FRAME,
            frame_budget,
            status.clone(),
        ),
        tls: None,
    });
    rt::spawn(accept_loop(listener, ctx));
    Node {
        id: id(n),
        addr,
        inbox,
        _control: control,
        status,
    }
}

fn links(n: u8, cluster: &str) -> PeerLinks {
    links_with(n, cluster, key())
}

fn links_with(n: u8, cluster: &str, key: PeerKey) -> PeerLinks {
    PeerLinks::new(identity(n, cluster, key), MAX_FRAME, 4096)
}

/// The next peer message in `inbox`.
fn next_peer(inbox: &Receiver<Queued>) -> (NodeId, PeerMsg) {
    match inbox.recv_timeout(WAIT).map(Queued::into_input) {
        Ok(Input::Peer { from, msg, .. }) => (from, msg),
        Ok(other) => panic!("expected a peer message, got {other:?}"),
        Err(err) => panic!("no peer message: {err}"),
    }
}

fn assert_quiet(inbox: &Receiver<Queued>, for_: Duration) {
    match inbox.recv_timeout(for_).map(Queued::into_input) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

fn catch_up() -> PeerMsg {
    PeerMsg::CatchUp {
        from: Rev(7),
        addr: "127.0.0.1:1".into(),
    }
}

fn big_accept(bytes: usize) -> PeerMsg {
    let body: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    PeerMsg::Paxos(Msg::Accept {
        ballot: Ballot::new(3, id(1)),
        first_slot: 10,
        values: vec![
            Decree::Write {
                origin: id(1),
                seq: 1,
                floor: 0,
                mutation: Mutation::Set {
                    path: Path::parse("/big").unwrap(),
                    check: RevCheck::Clobber,
                    body: body.into(),
                },
            },
            Decree::Fill,
        ],
        commit: 9,
    })
}

/// Waits until `stream` is closed by the other side (EOF or reset).
async fn closed_by_peer<S: futures::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match rt::timeout(WAIT, stream.read(&mut buf)).await {
            Some(Ok(0)) | Some(Err(_)) => return true,
            Some(Ok(_)) => continue,
            None => return false,
        }
    }
    false
}

/// A connection that sent only `hello` (no handshake beyond it).
async fn raw_hello(addr: &str, hello: &Hello) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&encode_hello(hello)).await.unwrap();
    stream
}

/// An authenticated connection from node `n` to `to`, written by hand.
async fn authed(n: u8, to: &Node) -> (Conn, FrameSealer) {
    link::dial(&identity(n, "c", key()), &to.id, &to.addr)
        .await
        .unwrap()
}

/// `msg` as one sealed frame.
fn sealed(msg: &PeerMsg, sealer: &mut FrameSealer) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_peer_frame_into(msg, &mut buf, usize::MAX).unwrap();
    sealer.seal(&mut buf, 0);
    buf
}

/// Acts as the listening node `me` on an accepted connection: reads the
/// magic, answers the handshake; the dialer's id and the frame opener.
async fn accept_as(conn: &mut TcpStream, me: u8) -> (NodeId, FrameOpener, FrameSealer) {
    let mut magic = [0u8; 4];
    conn.read_exact(&mut magic).await.unwrap();
    assert_eq!(magic, MAGIC);
    let mut reader = conn.clone();
    let (from, sealer, opener) =
        link::listen_handshake(&mut reader, conn, &identity(me, "c", key()))
            .await
            .unwrap();
    (from, opener, sealer)
}

/// The next message on a connection accepted with [`accept_as`], skipping
/// keepalives.
async fn read_sealed(conn: &mut TcpStream, opener: &mut FrameOpener) -> PeerMsg {
    loop {
        let frame = rt::timeout(WAIT, peer::read_frame(conn, MAX_FRAME))
            .await
            .expect("a frame in time")
            .unwrap()
            .expect("not closed");
        let body = opener.open(&frame).unwrap();
        if !body.is_empty() {
            return peer::decode_peer_msg(body).unwrap();
        }
    }
}

#[test]
fn messages_flow_both_ways_in_order() {
    let a = node(1, "c", 65_536);
    let b = node(2, "c", 65_536);
    let mut a_links = links(1, "c");
    let mut b_links = links(2, "c");

    for i in 0..2000 {
        a_links.send(b.id.clone(), &b.addr, alive(i));
    }
    let big = big_accept(1 << 20);
    a_links.send(b.id.clone(), &b.addr, big.clone());
    b_links.send(a.id.clone(), &a.addr, catch_up());

    for i in 0..2000 {
        assert_eq!(next_peer(&b.inbox), (a.id.clone(), alive(i)));
    }
    assert_eq!(next_peer(&b.inbox), (a.id.clone(), big));
    assert_eq!(next_peer(&a.inbox), (b.id.clone(), catch_up()));
    assert_eq!(a_links.len(), 1);
    assert_eq!(a_links.dropped(), 0);
}

#[test]
fn a_link_redials_after_the_listener_drops_it_and_keeps_the_backlog() {
    rt::block_on(async {
        let listener = bind().await;
        let addr = listener.local_addr().unwrap().to_string();
        let mut links = links(1, "c");
        let to = id(2);

        links.send(to.clone(), &addr, alive(1));
        let (mut conn, _) = rt::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (from, mut opener, _) = accept_as(&mut conn, 2).await;
        assert_eq!(from, id(1));
        assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(1));

        // The listener hangs up; the link notices without sending and redials
        // once it has something to say.
        drop(conn);
        rt::sleep(Duration::from_millis(200)).await;
        links.send(to.clone(), &addr, alive(2));
        let (mut conn, _) = rt::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (_, mut opener, _) = accept_as(&mut conn, 2).await;
        assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(2));

        // Now nobody listens: messages wait in the backlog and arrive, in
        // order, once the address answers again.
        drop(conn);
        drop(listener);
        rt::sleep(Duration::from_millis(100)).await;
        for i in 3..6 {
            links.send(to.clone(), &addr, alive(i));
            rt::sleep(Duration::from_millis(100)).await;
        }
        let listener = TcpListener::bind(&addr).await.unwrap();
        let (mut conn, _) = rt::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (_, mut opener, _) = accept_as(&mut conn, 2).await;
        for i in 3..6 {
            assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(i));
        }
    });
}

/// A link whose listener writes nothing stays up: TCP's acknowledgements
/// say the path works. Once its bytes go unacknowledged (a partition: no
/// FIN, no RST, packets dropped), the kernel drops the connection after
/// [`UNACKED_TIMEOUT`] and the next message goes out on a new one, where
/// TCP's backed-off retransmission would have brought it seconds after the
/// heal.
#[test]
fn a_quiet_link_stays_up_and_one_whose_bytes_go_unacknowledged_is_redialed() {
    common::cut::require_iptables();
    // A net no other test of this file uses: the cut drops all its packets.
    let ip = format!("127.0.1.{}", 2 + rand_u8() % 250);
    rt::block_on(async {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut links = links(1, "c");
        links.send(id(2), &addr, alive(1));
        let (mut conn, _) = rt::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (_, mut opener, _sealer) = accept_as(&mut conn, 2).await;
        assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(1));
        // This end writes nothing, past the silence that closes an inbound
        // link: the link keeps the connection.
        rt::sleep(SILENCE_TIMEOUT + Duration::from_millis(300)).await;
        links.send(id(2), &addr, alive(2));
        assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(2));
        assert!(
            rt::timeout(Duration::from_millis(50), listener.accept())
                .await
                .is_none(),
            "a quiet link was redialed"
        );
        // Cut: what the link sends now is never acknowledged.
        let cut = common::cut::Cut::new(&ip);
        links.send(id(2), &addr, alive(3));
        rt::sleep(UNACKED_TIMEOUT + Duration::from_secs(1)).await;
        drop(cut);
        links.send(id(2), &addr, alive(4));
        let (mut again, _) = rt::timeout(WAIT, listener.accept())
            .await
            .expect("the link dialed again after the heal")
            .unwrap();
        let (_, mut opener, _) = accept_as(&mut again, 2).await;
        // alive(3) went down with the dropped connection, unless the link
        // still held it when the connection failed.
        let mut next = read_sealed(&mut again, &mut opener).await;
        if next == alive(3) {
            next = read_sealed(&mut again, &mut opener).await;
        }
        assert_eq!(next, alive(4));
    });
}

/// After the handshake an inbound link writes nothing back (the dialer's
/// keepalives and TCP's acknowledgements keep both ends sure of the path),
/// and it stays open as long as the dialer's frames come.
#[test]
fn an_inbound_link_writes_nothing_and_stays_while_keepalives_come() {
    let a = node(1, "c", 1024);
    rt::block_on(async {
        let (conn, mut sealer) = authed(3, &a).await;
        let mut writer = conn.clone();
        let mut reader = conn.clone();
        let keepalives = rt::spawn(async move {
            let mut buf = Vec::new();
            let stop = Instant::now() + SILENCE_TIMEOUT * 2;
            while Instant::now() < stop {
                buf.clear();
                sealer.keepalive(&mut buf);
                writer.write_all(&buf).await.unwrap();
                rt::sleep(KEEPALIVE_INTERVAL).await;
            }
            sealer
        });
        let mut byte = [0u8; 1];
        let read = rt::timeout(SILENCE_TIMEOUT * 2, reader.read(&mut byte)).await;
        assert!(read.is_none(), "the listener wrote or closed: {read:?}");
        let mut sealer = keepalives.await;
        let mut writer = conn.clone();
        writer
            .write_all(&sealed(&alive(7), &mut sealer))
            .await
            .unwrap();
    });
    assert_eq!(next_peer(&a.inbox), (id(3), alive(7)));
}

#[test]
fn a_new_address_replaces_the_link() {
    let old = node(2, "c", 1024);
    // The same node, moved to another address.
    let new = node(2, "c", 1024);
    let mut links = links(1, "c");
    links.send(id(2), &old.addr, alive(1));
    assert_eq!(next_peer(&old.inbox), (id(1), alive(1)));
    links.send(id(2), &new.addr, alive(2));
    assert_eq!(next_peer(&new.inbox), (id(1), alive(2)));
    assert_eq!(links.len(), 1);
    assert_quiet(&old.inbox, Duration::from_millis(100));
}

#[test]
fn a_peer_of_another_cluster_is_refused() {
    let a = node(1, "prod", 1024);
    let mut stranger = links(9, "test");
    stranger.send(a.id.clone(), &a.addr, alive(1));
    assert_quiet(&a.inbox, Duration::from_millis(500));

    rt::block_on(async {
        let mut conn = raw_hello(
            &a.addr,
            &Hello {
                version: PROTOCOL_VERSION,
                from: id(9),
                cluster: "test".into(),
                nonce: vec![0; 32],
            },
        )
        .await;
        let _ = conn.write_all(&encode_peer_frame(&alive(2))).await;
        assert!(closed_by_peer(&mut conn).await);
        // Another protocol version is refused too.
        let mut conn = raw_hello(
            &a.addr,
            &Hello {
                version: PROTOCOL_VERSION + 1,
                from: id(9),
                cluster: "prod".into(),
                nonce: vec![0; 32],
            },
        )
        .await;
        assert!(closed_by_peer(&mut conn).await);
    });
    assert_quiet(&a.inbox, Duration::from_millis(100));
}

#[test]
fn a_bad_peer_frame_closes_only_that_connection() {
    let a = node(1, "c", 1024);
    let mut good = links(2, "c");
    good.send(a.id.clone(), &a.addr, alive(1));
    assert_eq!(next_peer(&a.inbox), (id(2), alive(1)));

    rt::block_on(async {
        // A valid message, then garbage under a valid MAC.
        let (mut conn, mut sealer) = authed(3, &a).await;
        conn.write_all(&sealed(&alive(5), &mut sealer))
            .await
            .unwrap();
        let mut garbage = vec![0, 0, 0, 3, 0xff, 0xff, 0xff];
        sealer.seal(&mut garbage, 0);
        conn.write_all(&garbage).await.unwrap();
        assert!(closed_by_peer(&mut conn).await);
        // A well-formed message without its MAC.
        let (mut conn, _) = authed(3, &a).await;
        conn.write_all(&encode_peer_frame(&alive(6))).await.unwrap();
        assert!(closed_by_peer(&mut conn).await);
        // A replayed frame: the same sealed bytes twice.
        let (mut conn, mut sealer) = authed(3, &a).await;
        let frame = sealed(&alive(7), &mut sealer);
        conn.write_all(&frame).await.unwrap();
        conn.write_all(&frame).await.unwrap();
        assert!(closed_by_peer(&mut conn).await);
        // An over-cap length: refused from the header.
        let (mut conn, _) = authed(3, &a).await;
        let len = (MAX_FRAME as u32 + 1).to_be_bytes();
        conn.write_all(&len).await.unwrap();
        assert!(closed_by_peer(&mut conn).await);
        // An invalid node id in the hello.
        let hello = Hello {
            version: PROTOCOL_VERSION,
            from: id(3),
            cluster: "c".into(),
            nonce: vec![0; 32],
        };
        let mut conn = TcpStream::connect(&a.addr).await.unwrap();
        let mut bytes = encode_hello(&hello);
        let at = bytes.len() - 2 - 32 - 1 - 16; // the id, before the cluster and nonce
        bytes[at] = b'!';
        conn.write_all(&bytes).await.unwrap();
        assert!(closed_by_peer(&mut conn).await);
        // A magic and nothing else, then a hang-up.
        let mut conn = TcpStream::connect(&a.addr).await.unwrap();
        conn.write_all(&MAGIC).await.unwrap();
        drop(conn);
    });
    assert_eq!(next_peer(&a.inbox), (id(3), alive(5)));
    assert_eq!(next_peer(&a.inbox), (id(3), alive(7)));
    // The good link is undisturbed.
    good.send(a.id.clone(), &a.addr, alive(2));
    assert_eq!(next_peer(&a.inbox), (id(2), alive(2)));
    assert_quiet(&a.inbox, Duration::from_millis(100));
}

/// Without the cluster's key nothing gets through, either way round: a
/// node with another key neither delivers to nor accepts from this one,
/// and one that skips the handshake is cut off.
#[test]
fn a_peer_without_the_key_is_refused() {
    let a = node(1, "c", 1024);
    let wrong = PeerKey::for_secrets("", "a guess", "");
    // A node with the wrong key dials: its messages never arrive.
    let mut intruder = links_with(9, "c", wrong.clone());
    intruder.send(a.id.clone(), &a.addr, alive(1));
    intruder.send(a.id.clone(), &a.addr, catch_up());
    // A node with no key at all (the public key).
    let mut open = links_with(8, "c", PeerKey::open());
    open.send(a.id.clone(), &a.addr, catch_up());
    assert_quiet(&a.inbox, Duration::from_millis(700));

    // A listener with the wrong key: our link refuses to send to it.
    let b = node_with(2, "c", 1024, wrong.clone(), 64 << 20);
    let mut ours = links(1, "c");
    ours.send(b.id.clone(), &b.addr, alive(2));
    assert_quiet(&b.inbox, Duration::from_millis(700));

    rt::block_on(async {
        // By hand: the handshake fails on the listener's proof.
        let err = link::dial(&identity(9, "c", wrong), &a.id, &a.addr)
            .await
            .unwrap_err();
        assert!(err.contains("peer key"), "{err}");
        // Hello, then frames as the old protocol sent them (no proof): cut off.
        let mut conn = raw_hello(
            &a.addr,
            &Hello {
                version: PROTOCOL_VERSION,
                from: id(9),
                cluster: "c".into(),
                nonce: vec![1; 32],
            },
        )
        .await;
        let _ = conn.write_all(&encode_peer_frame(&catch_up())).await;
        assert!(closed_by_peer(&mut conn).await);
        // An address that answers as another node than the one dialed.
        let err = link::dial(&identity(3, "c", key()), &id(7), &a.addr)
            .await
            .unwrap_err();
        assert!(err.contains("answers as node"), "{err}");
    });
    assert_quiet(&a.inbox, Duration::from_millis(100));
    assert!(a.status.peer_in_refused.load(Ordering::Relaxed) >= 3);
}

/// Inbound connections cannot hold the node's memory or a slot for long:
/// an authenticated link that falls silent is closed, an unfinished frame
/// has a deadline, and frames being read on all links share a byte budget.
#[test]
fn stalled_inbound_links_are_closed_and_bounded_in_bytes() {
    // Room for one frame of about 3 MiB at a time.
    let a = node_with(1, "c", 1024, key(), 3 << 20);
    rt::block_on(async {
        // Silent after the handshake.
        let (mut conn, _) = authed(3, &a).await;
        let since = Instant::now();
        assert!(closed_by_peer(&mut conn).await);
        let took = since.elapsed();
        assert!(took < SILENCE_TIMEOUT * 3, "closed after {took:?}");

        // Announces 2 MiB and sends a little: holds 2 MiB of the budget...
        let (mut first, _) = authed(3, &a).await;
        first
            .write_all(&((2u32 << 20) + TAG_BYTES as u32).to_be_bytes())
            .await
            .unwrap();
        first.write_all(&[0; 1000]).await.unwrap();
        rt::sleep(Duration::from_millis(100)).await;
        // ...so a second such frame does not fit and closes its link...
        let (mut second, _) = authed(4, &a).await;
        second
            .write_all(&((2u32 << 20) + TAG_BYTES as u32).to_be_bytes())
            .await
            .unwrap();
        assert!(closed_by_peer(&mut second).await);
        // ...and the first one is cut off at its deadline (2 MiB at 1 MiB/s
        // after the silence timeout), giving its bytes back.
        let since = Instant::now();
        assert!(closed_by_peer(&mut first).await);
        let took = since.elapsed();
        let deadline = SILENCE_TIMEOUT + Duration::from_secs(2);
        assert!(
            took < deadline + Duration::from_secs(3),
            "closed after {took:?}"
        );
        // Now a frame of that size goes through.
        let (mut third, mut sealer) = authed(5, &a).await;
        let big = big_accept(2 << 20);
        third.write_all(&sealed(&big, &mut sealer)).await.unwrap();
    });
    assert_eq!(next_peer(&a.inbox).0, id(5));
}

#[test]
fn a_full_inbox_drops_peer_messages_and_keeps_the_link() {
    let a = node(1, "c", 4);
    let mut l = links(2, "c");
    for i in 0..100 {
        l.send(a.id.clone(), &a.addr, alive(i));
    }
    let deadline = Instant::now() + WAIT;
    while a.status.peer_in_dropped.load(Ordering::Relaxed) < 96 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(a.status.peer_in_dropped.load(Ordering::Relaxed), 96);
    for i in 0..4 {
        assert_eq!(next_peer(&a.inbox), (id(2), alive(i)));
    }
    l.send(a.id.clone(), &a.addr, alive(100));
    assert_eq!(next_peer(&a.inbox), (id(2), alive(100)));
}

#[test]
fn clients_share_the_port() {
    let a = node(1, "c", 1024);
    let mut l = links(2, "c");
    rt::block_on(async {
        let mut client = TcpStream::connect(&a.addr).await.unwrap();
        // An idle client is not cut off while peers come and go.
        l.send(a.id.clone(), &a.addr, alive(1));
        rt::sleep(Duration::from_millis(200)).await;
        // Unknown verb: answered by the session, no core needed.
        let req = Request {
            tag: Some(7),
            verb: Some(1234),
            ..Request::default()
        };
        client.write_all(&encode_frame(&req)).await.unwrap();
        let resp: Response = rt::timeout(WAIT, read_message(&mut client, 1 << 20))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.tag, Some(7));
        assert_eq!(resp.err_code, Some(ErrCode::UnknownVerb as i32));
        // A REV goes to the core's inbox as a request.
        let req = Request {
            tag: Some(8),
            verb: Some(5),
            ..Request::default()
        };
        client.write_all(&encode_frame(&req)).await.unwrap();
    });
    let mut saw_peer = false;
    let mut saw_request = false;
    while !(saw_peer && saw_request) {
        match a.inbox.recv_timeout(WAIT).unwrap().into_input() {
            Input::Peer { from, msg, .. } => {
                assert_eq!((from, msg), (id(2), alive(1)));
                saw_peer = true;
            }
            Input::Request { tag, .. } => {
                assert_eq!(tag, Some(8));
                saw_request = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A peer that shakes hands, keeps sending keepalives (so the link never
/// falls silent) but stops reading: the bytes the socket cannot take are
/// queued up to the link's byte bound, then the link gives the connection
/// up and redials.
#[test]
fn a_peer_that_stops_reading_is_dropped_past_the_byte_bound_and_redialed() {
    rt::block_on(async {
        let listener = bind().await;
        let addr = listener.local_addr().unwrap().to_string();
        let mut links = links(1, "c");
        links.send(id(2), &addr, alive(1));
        let (mut conn, _) = rt::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        let (_, mut opener, mut sealer) = accept_as(&mut conn, 2).await;
        assert_eq!(read_sealed(&mut conn, &mut opener).await, alive(1));
        // The link hands its socket to the sender just after that first
        // write; give it the moment.
        rt::sleep(Duration::from_millis(500)).await;
        let mut keepalive_conn = conn.clone();
        let keepalives = rt::spawn(async move {
            let mut buf = Vec::new();
            for _ in 0..100 {
                buf.clear();
                sealer.keepalive(&mut buf);
                if keepalive_conn.write_all(&buf).await.is_err() {
                    return;
                }
                rt::sleep(Duration::from_millis(100)).await;
            }
        });
        // 1 MiB messages until one is refused: the socket buffers hold up to
        // ~36 MiB here (32 MiB of receive buffer, 4 MiB of send buffer), the
        // link's queue 64 MiB more; 200 MiB is far past both.
        let message = big_accept(1 << 20);
        for _ in 0..200 {
            links.send(id(2), &addr, message.clone());
            if links.dropped() > 0 {
                break;
            }
        }
        assert!(links.dropped() > 0, "200 MiB queued for a peer not reading");
        // The link dials again for its next message: cut by the byte bound,
        // not by the write time-out (10 s) later.
        let give_up = Instant::now() + link::WRITE_TIMEOUT / 2;
        let mut again = loop {
            assert!(
                Instant::now() < give_up,
                "the link did not give the stalled connection up"
            );
            links.send(id(2), &addr, alive(2));
            if let Some(accepted) = rt::timeout(Duration::from_millis(100), listener.accept()).await
            {
                break accepted.unwrap().0;
            }
        };
        let (_, mut opener, _) = accept_as(&mut again, 2).await;
        // Whatever of the backlog comes first, alive(2) arrives on the new
        // connection.
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "alive(2) never came");
            if read_sealed(&mut again, &mut opener).await == alive(2) {
                break;
            }
        }
        drop(conn);
        keepalives.await;
    });
}
