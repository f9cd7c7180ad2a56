//! The attach check: is the node at an address a member of our cluster?
//!
//! Both `-a` and a DzNS boot ask it before a node joins as a slave. Why a
//! check failed matters to a DzNS boot: an address that answers nothing (or
//! answers for another cluster) says its entry is stale, while a refusal
//! (a secret we do not have) says a live cluster is there and must not be
//! replaced, so the failure is classified rather than flattened to text.

use std::fmt;
use std::time::Duration;

use futures::future::join_all;

use super::rt;
use crate::client::{Client, Error as ClientError};
use crate::config::Config;
use crate::tls::ClientTls;
use crate::types::NodeId;

/// How long one address may take to answer the whole check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an address did not qualify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckFailure {
    /// Nothing listens there, or the connection failed.
    Unreachable(String),
    /// Something took the connection but did not answer in time: a dead
    /// host, or a live node too busy to answer.
    Silent,
    /// It answered with an error other than a refusal (`busy`, say).
    Failed(String),
    /// It answered for a cluster with another name.
    OtherCluster { theirs: String, ours: String },
    /// It belongs to our cluster but is not a member at that address.
    NotMember,
    /// It refused us: a secret is missing or wrong.
    Refused(String),
}

impl CheckFailure {
    /// Whether the answer shows a live node we may not use (as opposed to an
    /// address where our cluster is not, or no longer, found).
    pub fn is_refusal(&self) -> bool {
        matches!(self, CheckFailure::Refused(_))
    }

    /// Whether the address may still hold a live node (one that is slow or
    /// answered oddly), as opposed to nothing of our cluster.
    pub fn may_be_alive(&self) -> bool {
        matches!(self, CheckFailure::Silent | CheckFailure::Failed(_))
    }

    fn from_client(e: ClientError) -> CheckFailure {
        match e {
            _ if e.is_permission_denied() => CheckFailure::Refused(e.to_string()),
            ClientError::Reply(_) => CheckFailure::Failed(e.to_string()),
            _ => CheckFailure::Unreachable(e.to_string()),
        }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckFailure::Unreachable(reason) => write!(f, "no answer ({reason})"),
            CheckFailure::Silent => f.write_str("no answer in time"),
            CheckFailure::Failed(reason) => write!(f, "it answered {reason}"),
            CheckFailure::OtherCluster { theirs, ours } => write!(
                f,
                "it belongs to cluster {theirs:?}, not {ours:?} (the name given with -c)"
            ),
            CheckFailure::NotMember => {
                f.write_str("it is not a member (no /ctl/cal slot names a node with this address)")
            }
            CheckFailure::Refused(reason) => write!(
                f,
                "it refused us ({reason}); does DOOZER_RWSECRET match the cluster's?"
            ),
        }
    }
}

/// The original's attach check: the target answers, belongs to a cluster of
/// our name, and is one of its members (its id is in a `/ctl/cal` slot and
/// that id's `addr` is exactly the address dialled). Gives the member's id.
pub async fn check_member(addr: &str, config: &Config) -> Result<NodeId, CheckFailure> {
    match rt::timeout(CHECK_TIMEOUT, check_member_untimed(addr, config)).await {
        Some(result) => result,
        None => Err(CheckFailure::Silent),
    }
}

async fn check_member_untimed(addr: &str, config: &Config) -> Result<NodeId, CheckFailure> {
    // With TLS on, members are dialled over TLS trusting the cluster CA
    // (read afresh each time, so a rotated CA counts at once).
    let tls = match &config.tls_ca {
        None => None,
        Some(ca) => Some(
            ClientTls::from_ca_file(std::path::Path::new(ca))
                .map_err(|err| CheckFailure::Unreachable(err.to_string()))?,
        ),
    };
    let connect = Client::connect_with(addr, tls.as_ref());
    let client = match rt::timeout(CONNECT_TIMEOUT, connect).await {
        Some(Ok(client)) => client,
        Some(Err(e)) => return Err(CheckFailure::Unreachable(e.to_string())),
        None => return Err(CheckFailure::Silent),
    };
    let result = member_id(&client, addr, config).await;
    client.close();
    result
}

async fn member_id(client: &Client, addr: &str, config: &Config) -> Result<NodeId, CheckFailure> {
    let secret = &config.secrets.read_write;
    if !secret.is_empty() {
        client
            .access(secret.as_bytes())
            .await
            .map_err(CheckFailure::from_client)?;
    }
    let (name, _) = client
        .get("/ctl/name", None)
        .await
        .map_err(CheckFailure::from_client)?;
    if name != config.cluster_name.as_bytes() {
        return Err(CheckFailure::OtherCluster {
            theirs: String::from_utf8_lossy(&name).into_owned(),
            ours: config.cluster_name.clone(),
        });
    }
    let rev = client.rev().await.map_err(CheckFailure::from_client)?;
    let slots = client
        .getdir_all("/ctl/cal", rev)
        .await
        .map_err(CheckFailure::from_client)?;
    for slot in slots {
        let (body, _) = client
            .get(&format!("/ctl/cal/{slot}"), Some(rev))
            .await
            .map_err(CheckFailure::from_client)?;
        let Some(id) = std::str::from_utf8(&body).ok().and_then(NodeId::parse) else {
            continue;
        };
        let (member_addr, _) = client
            .get(&format!("/ctl/node/{id}/addr"), Some(rev))
            .await
            .map_err(CheckFailure::from_client)?;
        if member_addr == addr.as_bytes() {
            return Ok(id);
        }
    }
    Err(CheckFailure::NotMember)
}

/// Where a starting node's copy of the cluster comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// It founds the cluster.
    Seed,
    /// It attaches as a slave to `target`, a member at `target_addr`.
    Attach { target: NodeId, target_addr: String },
}

/// The outcome of checking several addresses at once.
pub struct Search {
    /// The first qualifying member: its id and the address dialled.
    pub found: Option<(NodeId, String)>,
    /// Every address that did not qualify, and why.
    pub failures: Vec<(String, CheckFailure)>,
}

impl Search {
    /// One line naming every failure, for logs and errors.
    pub fn reasons(&self) -> String {
        self.failures
            .iter()
            .map(|(addr, why)| format!("{addr}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether some address refused us.
    pub fn refused(&self) -> bool {
        self.failures.iter().any(|(_, why)| why.is_refusal())
    }

    /// Whether some address may hold a live node of ours.
    pub fn maybe_alive(&self) -> bool {
        self.failures.iter().any(|(_, why)| why.may_be_alive())
    }
}

/// Checks every address in parallel (as the original did), so a dead or
/// slow address costs one [`CHECK_TIMEOUT`] at most, not one each.
pub async fn find_member(addrs: &[String], config: &Config) -> Search {
    let checks = addrs
        .iter()
        .map(|addr| async move { (addr.clone(), check_member(addr, config).await) });
    let mut search = Search {
        found: None,
        failures: Vec::new(),
    };
    for (addr, result) in join_all(checks).await {
        match result {
            Ok(id) if search.found.is_none() => search.found = Some((id, addr)),
            Ok(_) => {}
            Err(why) => search.failures.push((addr, why)),
        }
    }
    search
}
