//! Starting a node: bind, build the core, start its thread and the listeners.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::client_conn::{accept_loop, ClientContext};
use super::event_loop::{EventLoop, NodeStatus};
use super::peer_link::{PeerInbound, PeerLinks};
use super::rt::{self, TcpListener};
use crate::client::Client;
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
    #[error("booting through a DzNS (-b, DOOZER_BOOT_URI) is not available yet; use -a to attach")]
    BootUnsupported,
    #[error("failed to attach: {0}")]
    Attach(String),
    #[error("cannot start the core thread: {0}")]
    Thread(std::io::Error),
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    /// The address clients reach, as written in `/ctl/node/<id>/addr`.
    pub addr: String,
    pub status: Arc<NodeStatus>,
    /// Where the web view listens (`None`: `-w false`).
    pub web_addr: Option<String>,
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

/// How long one `-a` address may take to answer the attach check.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(1);

/// The first `-a` address that is a member of a cluster with our name, and
/// that member's id.
async fn find_member(config: &Config) -> Result<(NodeId, String), StartError> {
    let mut reasons = Vec::new();
    for addr in &config.attach {
        match rt::timeout(ATTACH_TIMEOUT * 3, check_member(addr, config)).await {
            Some(Ok(id)) => return Ok((id, addr.clone())),
            Some(Err(reason)) => reasons.push(format!("{addr}: {reason}")),
            None => reasons.push(format!("{addr}: no answer in time")),
        }
    }
    Err(StartError::Attach(reasons.join("; ")))
}

/// The attach check of the original: the target answers, belongs to a
/// cluster of the same name, and is one of its members (its id is in a
/// `/ctl/cal` slot and that id's `addr` is exactly the address dialled).
async fn check_member(addr: &str, config: &Config) -> Result<NodeId, String> {
    let client = Client::connect_timeout(addr, ATTACH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let secret = &config.secrets.read_write;
    if !secret.is_empty() {
        client
            .access(secret.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let (name, _) = client
        .get("/ctl/name", None)
        .await
        .map_err(|e| e.to_string())?;
    if name != config.cluster_name.as_bytes() {
        return Err(format!(
            "it belongs to cluster {:?}, not {:?}",
            String::from_utf8_lossy(&name),
            config.cluster_name
        ));
    }
    let rev = client.rev().await.map_err(|e| e.to_string())?;
    let slots = client
        .getdir_all("/ctl/cal", rev)
        .await
        .map_err(|e| e.to_string())?;
    for slot in slots {
        let (body, _) = client
            .get(&format!("/ctl/cal/{slot}"), Some(rev))
            .await
            .map_err(|e| e.to_string())?;
        let Some(id) = std::str::from_utf8(&body).ok().and_then(NodeId::parse) else {
            continue;
        };
        let (member_addr, _) = client
            .get(&format!("/ctl/node/{id}/addr"), Some(rev))
            .await
            .map_err(|e| e.to_string())?;
        if member_addr == addr.as_bytes() {
            return Ok(id);
        }
    }
    Err("it is not a member (no /ctl/cal slot names a node with this address)".into())
}

/// Binds `-l`, seeds a new cluster or attaches to one, and starts serving.
pub async fn start(config: Config) -> Result<Node, StartError> {
    config.validate()?;
    if config.attach.is_empty() && config.boot_uri.is_some() {
        return Err(StartError::BootUnsupported);
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
    let core_config = config.core_config(rand::random());
    let core = if config.attach.is_empty() {
        Core::seed(info, core_config)
    } else {
        let (target, target_addr) = find_member(&config).await?;
        log::info!("attaching to {target_addr} (node {target}) as a slave");
        Core::join(info, core_config, target, target_addr)
    };

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

    // ---- web view (src/web): served on -w unless it is off ----
    let web_addr = match config.web_addr() {
        Some(web) => Some(
            crate::web::start(&web, &addr, config.secrets.clone(), status.clone())
                .await
                .map_err(|source| StartError::Bind { addr: web, source })?,
        ),
        None => None,
    };
    // ---- end web view ----

    Ok(Node {
        id,
        addr,
        status,
        web_addr,
        accept,
    })
}
