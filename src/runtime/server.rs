//! Starting a node: bind, build the core, start its thread and the listeners.

use std::sync::Arc;
use std::thread;

use super::client_conn::{accept_loop, ClientContext};
use super::event_loop::{EventLoop, NodeStatus};
use super::peer_link::{PeerInbound, PeerLinks};
use super::rt::{self, TcpListener};
use crate::config::Config;
use crate::core::{Core, NodeInfo};
use crate::types::NodeId;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "attaching to a cluster (-a, -b) is not available yet: this build runs a single seed node"
    )]
    AttachUnsupported,
    #[error("cannot start the core thread: {0}")]
    Thread(std::io::Error),
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    /// The address clients reach, as written in `/ctl/node/<id>/addr`.
    pub addr: String,
    pub status: Arc<NodeStatus>,
    accept: rt::JoinHandle<()>,
}

impl Node {
    /// Serves until the process ends.
    pub async fn serve_forever(self) {
        self.accept.await
    }
}

/// A fresh random node id (80 bits from the OS-seeded generator).
pub fn new_node_id() -> NodeId {
    NodeId::from_bytes(rand::random())
}

/// The OS host name, or `unknown`, as the original wrote it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Binds `-l`, seeds a new cluster and starts serving.
pub async fn start(config: Config) -> Result<Node, StartError> {
    config.validate()?;
    if !config.attach.is_empty() || config.boot_uri.is_some() {
        return Err(StartError::AttachUnsupported);
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.clone());
    let id = new_node_id();
    let info = NodeInfo {
        id: id.clone(),
        addr: addr.clone(),
        hostname: hostname(),
        cluster_name: config.cluster_name.clone(),
        register_ns: true,
    };
    let core = Core::seed(info, config.core_config(rand::random()));

    let status = Arc::new(NodeStatus::default());
    let (inbox_tx, inbox_rx) = crossbeam_channel::bounded(config.limits.inbox_capacity);
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    let limits = &config.limits;
    let peer_links = PeerLinks::new(
        id.clone(),
        &config.cluster_name,
        limits.max_peer_frame_bytes,
        limits.peer_queue_capacity,
    );
    let peer_inbound = PeerInbound::new(
        inbox_tx.clone(),
        &config.cluster_name,
        limits.max_peer_frame_bytes,
        status.clone(),
    );
    let event_loop = EventLoop::new(
        core,
        inbox_rx,
        control_rx,
        config.tick,
        status.clone(),
        peer_links,
    );
    thread::Builder::new()
        .name("doozer-core".into())
        .spawn(move || event_loop.run())
        .map_err(StartError::Thread)?;

    let ctx = Arc::new(ClientContext {
        inbox: inbox_tx,
        control: control_tx,
        status: status.clone(),
        node_id: id.clone(),
        secrets: config.secrets.clone(),
        session_limits: config.session_limits(),
        max_frame_bytes: config.limits.max_frame_bytes,
        outbox_capacity: config.limits.outbox_capacity,
        max_connections: config.limits.max_connections,
        peers: peer_inbound,
    });
    let accept = rt::spawn(accept_loop(listener, ctx));
    Ok(Node {
        id,
        addr,
        status,
        accept,
    })
}
