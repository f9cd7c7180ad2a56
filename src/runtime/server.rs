//! Starting a node: bind, build the core, start its thread and the listeners.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::future::Either;

use super::attach::{find_member, Origin};
use super::client_conn::{accept_loop, ClientContext};
use super::dzns::{self, BootError, Dzns};
use super::event_loop::{self, EventLoop, NodeStatus};
use super::peer_link::{PeerIdentity, PeerInbound, PeerLinks};
use super::rt::{self, TcpListener};
use crate::budget::ByteBudget;
use crate::config::Config;
use crate::core::{Core, NodeInfo};
use crate::disk::DataDir;
use crate::journal::{Journal, JournalError, Loaded};
use crate::tls::NodeTls;
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
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("failed to attach: {0}")]
    Attach(String),
    #[error("cannot start the core thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    DataDir(#[from] JournalError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS: cannot watch the certificate files: {0}")]
    TlsWatch(std::io::Error),
}

/// A running node.
pub struct Node {
    pub id: NodeId,
    /// The address clients reach, as written in `/ctl/node/<id>/addr`.
    pub addr: String,
    pub status: Arc<NodeStatus>,
    /// Where the web view listens (`None`: `-w false`).
    pub web_addr: Option<String>,
    /// The member it attached to, as `(id, address)`; `None` when it
    /// founded its cluster.
    pub attached_to: Option<(NodeId, String)>,
    /// Whether it resumed from its data dir.
    pub resumed: bool,
    thread: thread::JoinHandle<()>,
}

impl Node {
    /// Waits up to `limit` for the node to hold its copy of the store (at
    /// once for a seed; an attaching node fetches it from the member it
    /// attached to). False when it still has none.
    pub async fn wait_for_copy(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.status.writable.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            rt::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Serves until the node thread ends (it does not, short of a panic).
    /// Blocks the calling thread without driving the async reactor, so the
    /// node thread gets its events first-hand; call it outside any
    /// `block_on`.
    pub fn serve_forever(self) {
        if self.thread.join().is_err() {
            log::error!("the node thread panicked");
        }
    }
}

/// A fresh random node id (80 bits from the OS-seeded generator).
/// Anyone who reaches a node's port can act as a peer when no secret is set:
/// say so when that port is reachable from beyond this machine.
fn warn_if_open(config: &Config, addr: &str) {
    let loopback = addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback && !config.peer_key().is_configured() {
        log::warn!(
            "listening on {addr} with no secret: anyone who can reach this port can read and write every file and act as a peer of the cluster; set DOOZER_RWSECRET (or DOOZER_PEERSECRET) on every node"
        );
    }
}

/// The IP outbound peer links dial from: the one this node listens on, when
/// it names one (not `0.0.0.0`).
fn bind_ip(listen: &str) -> Option<std::net::IpAddr> {
    listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

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

/// The start-up decision of reference §5.2: `-a` first; when that fails or
/// is absent, the DzNS boot if there is a boot URI; else seed.
async fn decide_origin(
    config: &Config,
    dzns: Option<&mut Dzns>,
    id: &NodeId,
    addr: &str,
) -> Result<Origin, StartError> {
    if !config.attach.is_empty() {
        let search = find_member(&config.attach, config).await;
        if let Some((target, target_addr)) = search.found {
            return Ok(Origin::Attach {
                target,
                target_addr,
            });
        }
        if dzns.is_none() {
            return Err(StartError::Attach(search.reasons()));
        }
        log::warn!(
            "could not attach through -a ({}); booting through the DzNS",
            search.reasons()
        );
    }
    let Some(dzns) = dzns else {
        return Ok(Origin::Seed);
    };
    log::info!(
        "looking up cluster {:?} in the DzNS at {}",
        config.cluster_name,
        dzns.uri()
    );
    Ok(dzns::boot(dzns, config, id, addr).await?)
}

/// Accepts connections and closes them, for as long as it is polled.
async fn turn_clients_away(listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => drop(stream),
            Err(e) => {
                log::debug!("accept while starting: {e}");
                return;
            }
        }
    }
}

/// A node without state: seeds a new cluster or attaches to one (`-a`, or
/// through the DzNS).
async fn start_fresh(
    config: &Config,
    dzns: Option<&mut Dzns>,
    listener: &TcpListener,
    info: NodeInfo,
    core_config: crate::core::CoreConfig,
) -> Result<(Core, Option<(NodeId, String)>), StartError> {
    let origin = {
        // While it looks for its cluster the node has nothing to serve;
        // connections are closed at once rather than left waiting, so a node
        // booting on an address listed in a DzNS reads as gone, not as a
        // live node too slow to answer.
        let decide = decide_origin(config, dzns, &info.id, &info.addr);
        let turn_away = turn_clients_away(listener);
        futures::pin_mut!(decide, turn_away);
        match futures::future::select(decide, turn_away).await {
            Either::Left((origin, _)) => origin?,
            Either::Right(((), decide)) => decide.await?,
        }
    };
    Ok(match origin {
        Origin::Seed => (Core::seed(info, core_config), None),
        Origin::Attach {
            target,
            target_addr,
        } => {
            log::info!("attaching to {target_addr} (node {target}) as a slave");
            let attached_to = Some((target.clone(), target_addr.clone()));
            (
                Core::join(info, core_config, target, target_addr),
                attached_to,
            )
        }
    })
}

/// Binds `-l`, seeds a new cluster or attaches to one (or resumes from the
/// data dir), and starts serving.
pub async fn start(config: Config) -> Result<Node, StartError> {
    config.validate()?;
    // Checked before anything else, so a bad boot URI, name or certificate
    // fails at once.
    let mut dzns = match &config.boot_uri {
        Some(uri) => {
            dzns::check_cluster_name(&config.cluster_name)?;
            Some(Dzns::new(
                uri,
                &config.secrets.read_write,
                config.tls_ca.as_deref(),
            )?)
        }
        None => None,
    };
    let tls = config.tls_files().map(NodeTls::load).transpose()?;
    if let Some(tls) = &tls {
        let set = tls.current();
        log::info!(
            "TLS on: serving the certificate {} from {}{}",
            set.subject,
            tls.files().cert.display(),
            if tls.takes_peers() {
                ""
            } else {
                "; no --tls-ca, so this node takes no peers"
            }
        );
        tls.watch().map_err(StartError::TlsWatch)?;
    }
    // The data dir's lock first: a second doozerd on the same dir must not
    // even bind.
    let mut journal = match &config.data_dir {
        Some(dir) => Some(Journal::new(
            DataDir::open(dir).map_err(JournalError::from)?,
            true,
        )),
        None => None,
    };
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
    warn_if_open(&config, &addr);
    let register_ns = dzns.is_none();
    let node_info = |id: NodeId| NodeInfo {
        id,
        addr: addr.clone(),
        hostname: hostname(),
        cluster_name: config.cluster_name.clone(),
        // Booted through a DzNS, the cluster is listed there instead.
        register_ns,
    };
    let core_config = config.core_config(rand::random());
    let loaded = match journal.as_mut() {
        Some(journal) => journal.load(
            &config.cluster_name,
            |id| node_info(NodeId::parse(id).unwrap_or_else(new_node_id)),
            core_config.clone(),
        )?,
        None => Loaded::Fresh { id: None },
    };
    let (core, attached_to, resumed) = match loaded {
        Loaded::Resumed(core) => {
            if !config.attach.is_empty() || dzns.is_some() {
                log::info!("resuming from the data dir: -a and the DzNS are not needed");
            }
            (*core, None, true)
        }
        Loaded::Fresh { id } => {
            let id = id
                .and_then(|id| NodeId::parse(&id))
                .unwrap_or_else(new_node_id);
            let (mut core, attached_to) = start_fresh(
                &config,
                dzns.as_mut(),
                &listener,
                node_info(id.clone()),
                core_config,
            )
            .await?;
            if let Some(journal) = journal.as_mut() {
                journal.begin(&mut core, &config.cluster_name)?;
            }
            (core, attached_to, false)
        }
    };
    let id = core.node().id.clone();

    let status = Arc::new(NodeStatus::default());
    if let Some(dir) = &config.data_dir {
        let _ = status.data_dir.set(dir.clone());
    }
    if let Some(tls) = &tls {
        let _ = status.tls.set(tls.clone());
    }
    let limits = &config.limits;
    let (inbox_tx, control_tx, receivers) = event_loop::channels(
        limits.inbox_capacity,
        limits.inbox_max_bytes,
        limits.control_capacity(),
    );
    let identity = || PeerIdentity {
        me: id.clone(),
        cluster: config.cluster_name.clone(),
        key: config.peer_key(),
        bind_ip: bind_ip(&addr),
        tls: tls.clone(),
    };
    let peer_links = PeerLinks::new(
        identity(),
        limits.max_peer_frame_bytes,
        limits.peer_queue_capacity,
    );
    let peer_inbound = PeerInbound::new(
        inbox_tx.clone(),
        identity(),
        limits.max_peer_frame_bytes,
        limits.peer_frame_budget_bytes,
        status.clone(),
    );
    let mut event_loop = EventLoop::new(core, receivers, config.tick, status.clone(), peer_links);
    if let Some(journal) = journal {
        event_loop = event_loop.with_journal(journal);
    }
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
        max_connections_per_ip: config.limits.max_connections_per_ip,
        access_timeout: config.limits.access_timeout,
        client_budget: Arc::new(ByteBudget::new(config.limits.max_client_bytes_in_flight)),
        peers: peer_inbound,
        tls: tls.clone(),
    });
    // The node thread: the core, the client and peer connections, all on
    // one executor (see `rt::spawn_node_thread`).
    let thread = rt::spawn_node_thread("doozer-node", move || async move {
        rt::spawn(accept_loop(listener, ctx));
        // A task of the executor rather than the thread's main future: a
        // connection that rings the doorbell then schedules it on the
        // executor, which runs it in the same pass. Woken as the main
        // future, it woke the thread's parker instead, which costs a spin
        // of the reactor (five system calls) per batch.
        rt::spawn(event_loop.run()).await;
    })
    .map_err(StartError::Thread)?;

    // ---- web view (src/web): served on -w unless it is off ----
    let web_addr = match config.web_addr() {
        Some(web) => Some(
            crate::web::start(
                &web,
                &addr,
                config.secrets.clone(),
                status.clone(),
                tls.is_some() && !config.web_http,
            )
            .await
            .map_err(|source| StartError::Bind { addr: web, source })?,
        ),
        None => None,
    };
    // ---- end web view ----

    if let Some(dzns) = dzns {
        rt::spawn(dzns::keep_registered(
            dzns,
            config.cluster_name.clone(),
            status.clone(),
        ));
    }

    Ok(Node {
        id,
        addr,
        status,
        web_addr,
        attached_to,
        resumed,
        thread,
    })
}
