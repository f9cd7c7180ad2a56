//! Client connections: accept, read frames, check them in the session, hand
//! commands to the core, write replies.
//!
//! Peers share the port: a connection whose first 4 bytes are the peer magic
//! goes to [`peer_link::serve_inbound`]; any other first 4 bytes are the
//! header of a client's first frame.
//!
//! Each connection is two tasks: a reader that owns the session checks and
//! `try_send`s to the core, and a writer that drains the connection's bounded
//! outbox and writes replies in as few syscalls as it can.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use futures::channel::mpsc;
use futures::{AsyncWriteExt, StreamExt};

use super::event_loop::{Control, NodeStatus, Outgoing};
use super::peer_link::{self, PeerInbound};
use super::rt::{self, TcpListener, TcpStream};
use crate::codec::client::{self, read_message, read_message_after, Request, Response};
use crate::codec::peer::MAGIC;
use crate::core::{ConnId, Input};
use crate::error::ReplyError;
use crate::session::{Action, Secrets, Session, SessionLimits};
use crate::types::NodeId;

/// What every connection task shares.
pub struct ClientContext {
    pub inbox: Sender<Input>,
    pub control: Sender<Control>,
    pub status: Arc<NodeStatus>,
    pub node_id: NodeId,
    pub secrets: Secrets,
    pub session_limits: SessionLimits,
    pub max_frame_bytes: usize,
    pub outbox_capacity: usize,
    pub max_connections: usize,
    /// Where connections that turn out to be peer links go.
    pub peers: PeerInbound,
}

/// Bytes gathered before a writer flushes to the socket.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Accepts client and peer connections for ever.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<ClientContext>) {
    let mut next_conn: ConnId = 1;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off, don't spin.
                log::warn!("accept failed: {err}");
                rt::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = ctx.status.connections.load(Ordering::Relaxed);
        if open >= ctx.max_connections {
            log::warn!("refusing a connection: {open} are open (the limit)");
            let _ = stream.shutdown(std::net::Shutdown::Both);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = next_conn;
        next_conn += 1;
        ctx.status.connections.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        rt::spawn(async move {
            dispatch(conn, stream, &ctx).await;
            ctx.status.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads a connection's first 4 bytes, here in its own task: an idle client
/// is normal and must not hold up the accept loop.
async fn dispatch(conn: ConnId, stream: TcpStream, ctx: &ClientContext) {
    let mut reader = &stream;
    let header = match client::read_header(&mut reader).await {
        Ok(Some(header)) => header,
        // Connected and left without a word.
        Ok(None) => return,
        Err(err) => {
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            log::info!("client {peer} (connection {conn}) disconnected: {err}");
            return;
        }
    };
    if header == MAGIC {
        peer_link::serve_inbound(stream, &ctx.peers).await;
    } else {
        serve(conn, stream, header, ctx).await;
    }
}

/// Bytes read from a client socket at once.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How often a client held while the node fetches its copy looks again.
const COPY_POLL: Duration = Duration::from_millis(10);

/// Serves a client whose first frame header was already read.
async fn serve(
    conn: ConnId,
    stream: TcpStream,
    first_header: [u8; client::HEADER_BYTES],
    ctx: &ClientContext,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    // A node still fetching its first copy of the store (attaching) has
    // nothing true to say yet: an empty tree at rev 0 would mislead. Hold
    // the client until the copy is in, as the original did by accepting
    // nobody before its clone; the client may give up by closing.
    while !ctx.status.writable.load(Ordering::Acquire) {
        rt::sleep(COPY_POLL).await;
    }
    let session = Arc::new(Mutex::new(Session::new(
        ctx.secrets.clone(),
        ctx.node_id.clone(),
        ctx.session_limits,
    )));
    let (mut outbox, replies) = mpsc::channel(ctx.outbox_capacity);
    let cut = stream.clone();
    let opened = Control::Opened {
        conn,
        outbox: outbox.clone(),
        hang_up: Box::new(move || {
            let _ = cut.shutdown(std::net::Shutdown::Both);
        }),
    };
    if ctx.control.send(opened).is_err() {
        return;
    }
    let writer = rt::spawn(write_replies(stream.clone(), replies, session.clone()));

    // Buffered: a pipelining client's frames come in with one read, not two
    // (header, body) per request.
    let mut reader = futures::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream.clone());
    let mut first_header = Some(first_header);
    let reason = loop {
        let read = match first_header.take() {
            Some(header) => read_message_after(&mut reader, header, ctx.max_frame_bytes)
                .await
                .map(Some),
            None => read_message(&mut reader, ctx.max_frame_bytes).await,
        };
        let request: Request = match read {
            Ok(Some(request)) => request,
            Ok(None) => break None,
            Err(err) => break Some(err.to_string()),
        };
        let writable = ctx.status.writable.load(Ordering::Acquire);
        let action = lock(&session).on_request(request, writable);
        let immediate = match action {
            Action::Reply(response) => response,
            Action::Submit { tag, command } => {
                match ctx.inbox.try_send(Input::Request { conn, tag, command }) {
                    Ok(()) => continue,
                    Err(TrySendError::Full(_)) => {
                        lock(&session).completed(tag);
                        Response::error(tag, &ReplyError::busy())
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        break Some("server is shutting down".into())
                    }
                }
            }
        };
        if outbox.try_send(Outgoing::Immediate(immediate)).is_err() {
            break Some("client is not reading its replies".into());
        }
    };
    if let Some(reason) = reason {
        log::info!("client {peer} (connection {conn}) disconnected: {reason}");
    }
    let _ = ctx.control.send(Control::Closed { conn });
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(outbox);
    writer.await;
}

async fn write_replies(
    mut stream: TcpStream,
    mut replies: mpsc::Receiver<Outgoing>,
    session: Arc<Mutex<Session>>,
) {
    let mut buf = Vec::with_capacity(WRITE_BATCH_BYTES);
    while let Some(first) = replies.next().await {
        encode(first, &mut buf, &session);
        while buf.len() < WRITE_BATCH_BYTES {
            match replies.try_recv() {
                Ok(next) => encode(next, &mut buf, &session),
                Err(_) => break,
            }
        }
        if stream.write_all(&buf).await.is_err() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        buf.clear();
    }
}

fn encode(outgoing: Outgoing, buf: &mut Vec<u8>, session: &Mutex<Session>) {
    let response = match outgoing {
        Outgoing::Immediate(response) => response,
        Outgoing::Completed { tag, outcome } => {
            lock(session).completed(tag);
            client::response(tag, &outcome)
        }
    };
    client::encode_frame_into(&response, buf);
}

fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}
