//! Booting through a DzNS, and keeping the DzNS's list of our members true.
//!
//! A DzNS is an ordinary doozer cluster used as a name service. Nodes of a
//! cluster named `<name>` that start with a boot URI look up
//! `/ctl/ns/<name>/*` there and attach to a live member; when none answers
//! they hold an election on `/ctl/boot/<name>` and the winner seeds the
//! cluster (reference §5.7). Two things differ from the original, as the
//! contract asks:
//!
//! * a boot entry whose cluster answers nothing (every listed address is
//!   dead or belongs to something else, for [`STALE_BOOT_GRACE`]) is taken
//!   over with a conditional delete and a new election, so a cluster can be
//!   restarted after a total outage without hand edits; an address that
//!   answers but refuses us blocks this (a live cluster we lack the secret
//!   for must not get a rival);
//! * the booted cluster's leader keeps `/ctl/ns/<name>` equal to its member
//!   set ([`keep_registered`]): new members are added and removed ones
//!   deleted, where the original left them stale.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::attach::{find_member, Origin};
use super::event_loop::NodeStatus;
use super::rt;
use crate::client::{dial_uri_timeout, ns_entries, Client, Error as ClientError, NsEntry};
use crate::config::Config;
use crate::error::ErrCode;
use crate::tls::ClientTls;
use crate::types::{NodeId, Path};
use crate::uri::{with_default_port, Uri};

/// How long a boot entry must go on naming a cluster that answers nothing
/// before it is taken over. Longer than a fresh seed needs to start serving
/// (milliseconds), short enough that a restart is not a long wait.
pub const STALE_BOOT_GRACE: Duration = Duration::from_secs(4);
/// The same when some listed address takes connections but stays silent or
/// answers with an error: that may be a live node too busy to answer, and
/// replacing a live cluster would leave two of one name, so it gets longer.
pub const SILENT_BOOT_GRACE: Duration = Duration::from_secs(20);
/// How long a boot may take before the node gives up with the reasons.
const BOOT_LIMIT: Duration = Duration::from_secs(60);
/// How long the DzNS may stay unreachable at start before the node gives up.
const DZNS_DIAL_LIMIT: Duration = Duration::from_secs(6);
/// The pause between two rounds of lookup and attach.
const ROUND_PAUSE: Duration = Duration::from_millis(300);
/// Per-address connect timeout towards the DzNS.
const DZNS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request to the DzNS may take.
const DZNS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a DzNS boot failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the boot URI {uri:?} is not a doozer URI ({reason})")]
    BadUri { uri: String, reason: String },
    #[error("cluster name {0:?} (-c) cannot be listed in a DzNS: it must be a non-empty path component without '/'")]
    BadName(String),
    #[error("cannot reach the DzNS at {uri}: {reason}")]
    Unreachable { uri: String, reason: String },
    #[error("the DzNS at {uri} refused us ({reason}); give its secret with sk= in the boot URI or DOOZER_RWSECRET")]
    DznsRefused { uri: String, reason: String },
    #[error("cluster {name:?} is listed in the DzNS but its members refused us: {reasons}")]
    ClusterRefused { name: String, reasons: String },
    #[error(
        "could not join or found cluster {name:?} through the DzNS within {limit:?}: {reasons}"
    )]
    GaveUp {
        name: String,
        limit: Duration,
        reasons: String,
    },
}

/// A connection to the DzNS with the node's credentials, redialled when it
/// fails.
pub struct Dzns {
    uri: Uri,
    uri_text: String,
    /// The node's `DOOZER_RWSECRET`, presented when the URI has no `sk`.
    secret: String,
    client: Option<Client>,
    /// The node's `--tls-ca`: its own cluster's nodes are probed over TLS
    /// trusting it.
    cluster_ca: Option<String>,
}

impl fmt::Debug for Dzns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dzns").field("uri", &self.uri_text).finish()
    }
}

/// A failed DzNS request, sorted by what the caller does about it.
#[derive(Debug)]
enum DznsError {
    /// The connection failed (it is dropped and redialled next time).
    Down(String),
    /// The DzNS said `permission denied`.
    Refused(String),
    /// Any other error reply (REV_MISMATCH, NOENT, …).
    Reply(ClientError),
}

impl fmt::Display for DznsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DznsError::Down(reason) | DznsError::Refused(reason) => f.write_str(reason),
            DznsError::Reply(e) => e.fmt(f),
        }
    }
}

impl DznsError {
    fn code(&self) -> Option<ErrCode> {
        match self {
            DznsError::Reply(e) => e.code(),
            _ => None,
        }
    }
}

impl Dzns {
    /// `tls_ca`: the node's `--tls-ca`; the DzNS is dialled over TLS
    /// trusting it unless the URI names its own (`tlsca=`).
    pub fn new(uri_text: &str, secret: &str, tls_ca: Option<&str>) -> Result<Dzns, BootError> {
        let mut uri = Uri::parse(uri_text).map_err(|e| BootError::BadUri {
            uri: uri_text.to_string(),
            reason: e.to_string(),
        })?;
        if uri.tls_ca.is_none() {
            uri.tls_ca = tls_ca.map(str::to_string);
        }
        let cluster_ca = tls_ca.map(str::to_string);
        Ok(Dzns {
            uri,
            uri_text: uri_text.to_string(),
            secret: secret.to_string(),
            client: None,
            cluster_ca,
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri_text
    }

    async fn client(&mut self) -> Result<Client, DznsError> {
        if let Some(client) = self.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        self.client = None;
        let client = dial_uri_timeout(&self.uri, None, DZNS_CONNECT_TIMEOUT)
            .await
            .map_err(classify)?;
        if self.uri.secret.is_none() && !self.secret.is_empty() {
            if let Err(e) = client.access(self.secret.as_bytes()).await {
                client.close();
                return Err(classify(e));
            }
        }
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Runs one request on the DzNS, bounded in time; a failed connection is
    /// dropped so the next request redials.
    async fn run<T, F, Fut>(&mut self, request: F) -> Result<T, DznsError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let client = self.client().await?;
        let result = match rt::timeout(DZNS_REQUEST_TIMEOUT, request(client.clone())).await {
            Some(result) => result.map_err(classify),
            None => Err(DznsError::Down("no answer in time".into())),
        };
        if matches!(result, Err(DznsError::Down(_))) {
            client.close();
            self.client = None;
        }
        result
    }

    /// Every entry under `/ctl/ns/<name>`, read at one rev.
    async fn ns_entries(&mut self, name: &str) -> Result<Vec<NsEntry>, DznsError> {
        self.run(|c| async move { ns_entries(&c, name).await })
            .await
    }

    async fn get(&mut self, path: &str) -> Result<(Vec<u8>, i64), DznsError> {
        self.run(|c| async move { c.get(path, None).await }).await
    }

    async fn set(&mut self, path: &str, rev: i64, body: &str) -> Result<i64, DznsError> {
        self.run(|c| async move { c.set(path, rev, body.as_bytes()).await })
            .await
    }

    async fn del(&mut self, path: &str, rev: i64) -> Result<(), DznsError> {
        self.run(|c| async move { c.del(path, rev).await }).await
    }

    fn close(&mut self) {
        if let Some(client) = self.client.take() {
            client.close();
        }
    }
}

fn classify(e: ClientError) -> DznsError {
    match &e {
        _ if e.is_permission_denied() => DznsError::Refused(e.to_string()),
        ClientError::Reply(_) => DznsError::Reply(e),
        _ => DznsError::Down(e.to_string()),
    }
}

/// Checks that `-c` can name a directory in the DzNS.
pub fn check_cluster_name(name: &str) -> Result<(), BootError> {
    let valid =
        !name.is_empty() && !name.contains('/') && Path::parse(&format!("/ctl/ns/{name}")).is_ok();
    if valid {
        Ok(())
    } else {
        Err(BootError::BadName(name.to_string()))
    }
}

/// The boot of reference §5.7 with a takeover of stale boot entries: finds
/// a live member of cluster `config.cluster_name` through the DzNS, or wins
/// the election and seeds it. `id` and `addr` are this node's; the name was
/// checked with [`check_cluster_name`].
pub async fn boot(
    dzns: &mut Dzns,
    config: &Config,
    id: &NodeId,
    addr: &str,
) -> Result<Origin, BootError> {
    let name = config.cluster_name.as_str();
    let started = Instant::now();
    let boot_path = format!("/ctl/boot/{name}");
    let own_entry = format!("/ctl/ns/{name}/{id}");
    // The boot entry as first seen (its rev) and when, while no listed
    // address answers.
    let mut unanswered_since: Option<(i64, Instant)> = None;
    // Whether a listed address may have held a live node since then.
    let mut heard_maybe_alive = false;
    let mut last_reasons = String::from("nothing tried yet");
    let mut first_failure: Option<Instant> = None;
    loop {
        if started.elapsed() > BOOT_LIMIT {
            return Err(BootError::GaveUp {
                name: name.to_string(),
                limit: BOOT_LIMIT,
                reasons: last_reasons,
            });
        }
        let entries = match dzns.ns_entries(name).await {
            Ok(entries) => {
                first_failure = None;
                entries
            }
            Err(e) => {
                let first = first_failure.is_none();
                let since = *first_failure.get_or_insert_with(Instant::now);
                match e {
                    DznsError::Refused(reason) => {
                        return Err(BootError::DznsRefused {
                            uri: dzns.uri().to_string(),
                            reason,
                        })
                    }
                    DznsError::Down(reason) if since.elapsed() > DZNS_DIAL_LIMIT => {
                        return Err(BootError::Unreachable {
                            uri: dzns.uri().to_string(),
                            reason,
                        })
                    }
                    other => {
                        if first {
                            log::warn!("DzNS {}: {other}; trying again", dzns.uri());
                        }
                        last_reasons = format!("DzNS: {other}");
                        rt::sleep(ROUND_PAUSE).await;
                        continue;
                    }
                }
            }
        };
        let candidates: Vec<String> = entries
            .iter()
            .map(|e| e.addr.clone())
            .filter(|a| a != addr)
            .collect();
        let mut maybe_alive = false;
        if !candidates.is_empty() {
            let search = find_member(&candidates, config).await;
            maybe_alive = search.maybe_alive();
            if let Some((target, target_addr)) = search.found {
                return Ok(Origin::Attach {
                    target,
                    target_addr,
                });
            }
            last_reasons = search.reasons();
            if search.refused() {
                return Err(BootError::ClusterRefused {
                    name: name.to_string(),
                    reasons: last_reasons,
                });
            }
            log::debug!("no listed member of {name:?} answers: {last_reasons}");
        }
        let (seed, boot_rev) = match dzns.get(&boot_path).await {
            Ok(found) => found,
            Err(e) => {
                last_reasons = format!("DzNS: {e}");
                rt::sleep(ROUND_PAUSE).await;
                continue;
            }
        };
        if boot_rev == 0 {
            unanswered_since = None;
            match elect(dzns, &own_entry, &boot_path, id, addr).await {
                Ok(true) => return Ok(Origin::Seed),
                Ok(false) => log::info!("lost the election for {name:?}; looking for the winner"),
                Err(DznsError::Refused(reason)) => {
                    return Err(BootError::DznsRefused {
                        uri: dzns.uri().to_string(),
                        reason,
                    })
                }
                Err(e) => last_reasons = format!("DzNS: {e}"),
            }
            continue;
        }
        heard_maybe_alive |= maybe_alive;
        let grace = if heard_maybe_alive {
            SILENT_BOOT_GRACE
        } else {
            STALE_BOOT_GRACE
        };
        match unanswered_since {
            Some((rev, since)) if rev == boot_rev && since.elapsed() >= grace => {
                let seed = String::from_utf8_lossy(&seed).into_owned();
                take_over(dzns, &boot_path, boot_rev, &seed, &entries, grace).await;
                unanswered_since = None;
                heard_maybe_alive = false;
                continue;
            }
            Some((rev, _)) if rev == boot_rev => {}
            _ => {
                log::info!(
                    "{boot_path} names seed {} but no listed member answers ({last_reasons}); \
                     taking it over if that lasts {grace:?}",
                    String::from_utf8_lossy(&seed)
                );
                unanswered_since = Some((boot_rev, Instant::now()));
                heard_maybe_alive = maybe_alive;
            }
        }
        if candidates.is_empty() {
            last_reasons = format!("{boot_path} names a seed but no member is listed");
        }
        rt::sleep(ROUND_PAUSE + jitter()).await;
    }
}

/// The election: list ourselves, then try to create the boot entry. True
/// when this node won. A loser withdraws its entry at once; it is listed
/// again when it becomes a member.
async fn elect(
    dzns: &mut Dzns,
    own_entry: &str,
    boot_path: &str,
    id: &NodeId,
    addr: &str,
) -> Result<bool, DznsError> {
    let entry_rev = dzns.set(own_entry, 0, addr).await?;
    match dzns.set(boot_path, 0, id.as_str()).await {
        Ok(_) => {
            log::info!("won the election on {boot_path}: seeding the cluster");
            Ok(true)
        }
        Err(e) => {
            if let Err(del) = dzns.del(own_entry, entry_rev).await {
                log::debug!("withdrawing {own_entry}: {del}");
            }
            if e.code() == Some(ErrCode::RevMismatch) {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Replaces a stale boot entry: deletes it if it is still the one seen (a
/// rival restarting node may have been quicker), and the listed addresses
/// that answered nothing.
async fn take_over(
    dzns: &mut Dzns,
    boot_path: &str,
    boot_rev: i64,
    seed: &str,
    dead: &[NsEntry],
    grace: Duration,
) {
    match dzns.del(boot_path, boot_rev).await {
        Ok(()) => log::warn!(
            "{boot_path} named seed {seed} but no listed member answered for {grace:?}: \
             taking the entry over (new election)"
        ),
        Err(e) => {
            log::info!("{boot_path} changed while taking it over ({e}); looking again");
            return;
        }
    }
    let dir = boot_path.replacen("/ctl/boot/", "/ctl/ns/", 1);
    for entry in dead {
        let path = format!("{dir}/{}", entry.name);
        if let Err(e) = dzns.del(&path, entry.rev).await {
            log::debug!("removing stale {path}: {e}");
        }
    }
}

/// Up to 200 ms, so restarting nodes do not move in lockstep.
fn jitter() -> Duration {
    Duration::from_millis(rand::random_range(0..200))
}

/// How often the leader compares the member set with the DzNS.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A full comparison at least this often, even when nothing changed here
/// (someone may have edited the DzNS).
const FULL_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// An entry naming a node this cluster never knew is left alone this long
/// (it may be a node in the middle of its election) before it is probed.
const UNKNOWN_ENTRY_GRACE: Duration = Duration::from_secs(60);
/// Ids remembered as having been in this cluster, at most.
const MAX_KNOWN_IDS: usize = 100_000;

/// Keeps `/ctl/ns/<name>` in the DzNS equal to this cluster's members while
/// this node leads: every member listed with its address, every former
/// node's entry deleted. Runs for the life of the node; each node runs one
/// and only the leader acts, so a new leader picks the duty up.
pub async fn keep_registered(mut dzns: Dzns, name: String, status: Arc<NodeStatus>) {
    let mut known: BTreeSet<NodeId> = BTreeSet::new();
    let mut synced: Option<BTreeMap<String, String>> = None;
    let mut last_full = Instant::now();
    let mut unknown_seen: HashMap<String, Instant> = HashMap::new();
    let mut failing = false;
    loop {
        rt::sleep(SYNC_INTERVAL).await;
        let view = status.cluster_view();
        if known.len() > MAX_KNOWN_IDS {
            known.clear();
        }
        known.extend(view.nodes.iter().map(|n| n.id.clone()));
        if !view.is_leader || !view.writable {
            synced = None;
            dzns.close();
            continue;
        }
        let members = member_addrs(&view);
        if synced.as_ref() == Some(&members) && last_full.elapsed() < FULL_SYNC_INTERVAL {
            continue;
        }
        match sync(&mut dzns, &name, &members, &known, &mut unknown_seen).await {
            Ok(()) => {
                if failing {
                    log::info!("DzNS {} reachable again", dzns.uri());
                }
                failing = false;
                synced = Some(members);
                last_full = Instant::now();
            }
            Err(e) => {
                if !failing {
                    log::warn!(
                        "cannot update /ctl/ns/{name} in the DzNS {}: {e}",
                        dzns.uri()
                    );
                }
                failing = true;
                synced = None;
            }
        }
    }
}

/// Every member (an id in a `/ctl/cal` slot) and its address.
fn member_addrs(view: &crate::core::ClusterView) -> BTreeMap<String, String> {
    let addrs: HashMap<&NodeId, &str> = view
        .nodes
        .iter()
        .map(|n| (&n.id, n.addr.as_str()))
        .collect();
    view.cal
        .iter()
        .filter_map(|(_, id)| id.as_ref())
        .filter_map(|id| Some((id.to_string(), addrs.get(id)?.to_string())))
        .filter(|(_, addr)| !addr.is_empty())
        .collect()
}

/// What to do with the DzNS's entries so they list exactly `members`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// (entry, rev it must still have (0: absent), address).
    write: Vec<(String, i64, String)>,
    /// (entry, rev) of former nodes of this cluster.
    delete: Vec<(String, i64)>,
    /// Entries naming nodes this cluster never knew.
    unknown: Vec<NsEntry>,
}

fn plan(entries: &[NsEntry], members: &BTreeMap<String, String>, known: &BTreeSet<NodeId>) -> Plan {
    let mut plan = Plan::default();
    let listed: HashMap<&str, &NsEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for (id, addr) in members {
        match listed.get(id.as_str()) {
            Some(entry) if with_default_port(&entry.addr) == with_default_port(addr) => {}
            Some(entry) => plan.write.push((id.clone(), entry.rev, addr.clone())),
            None => plan.write.push((id.clone(), 0, addr.clone())),
        }
    }
    for entry in entries {
        if members.contains_key(&entry.name) {
            continue;
        }
        let ours = NodeId::parse(&entry.name).is_some_and(|id| known.contains(&id));
        if ours {
            plan.delete.push((entry.name.clone(), entry.rev));
        } else {
            plan.unknown.push(entry.clone());
        }
    }
    plan
}

async fn sync(
    dzns: &mut Dzns,
    name: &str,
    members: &BTreeMap<String, String>,
    known: &BTreeSet<NodeId>,
    unknown_seen: &mut HashMap<String, Instant>,
) -> Result<(), DznsError> {
    let entries = dzns.ns_entries(name).await?;
    let plan = plan(&entries, members, known);
    let dir = format!("/ctl/ns/{name}");
    for (id, rev, addr) in &plan.write {
        match dzns.set(&format!("{dir}/{id}"), *rev, addr).await {
            Ok(_) => log::info!("listed member {id} ({addr}) in the DzNS under {dir}"),
            Err(e @ DznsError::Down(_)) | Err(e @ DznsError::Refused(_)) => return Err(e),
            Err(e) => log::debug!("listing {id}: {e}"),
        }
    }
    for (id, rev) in &plan.delete {
        match dzns.del(&format!("{dir}/{id}"), *rev).await {
            Ok(()) => log::info!("removed former member {id} from {dir} in the DzNS"),
            Err(e @ DznsError::Down(_)) | Err(e @ DznsError::Refused(_)) => return Err(e),
            Err(e) => log::debug!("unlisting {id}: {e}"),
        }
    }
    unknown_seen.retain(|entry, _| plan.unknown.iter().any(|u| &u.name == entry));
    for entry in &plan.unknown {
        let first = *unknown_seen
            .entry(entry.name.clone())
            .or_insert_with(Instant::now);
        if first.elapsed() < UNKNOWN_ENTRY_GRACE
            || answers_as(&entry.addr, &entry.name, dzns.cluster_ca.as_deref()).await
        {
            continue;
        }
        match dzns.del(&format!("{dir}/{}", entry.name), entry.rev).await {
            Ok(()) => log::info!(
                "removed {dir}/{} from the DzNS: no node answers at {}",
                entry.name,
                entry.addr
            ),
            Err(e) => log::debug!("unlisting {}: {e}", entry.name),
        }
    }
    check_boot_entry(dzns, name, known).await;
    Ok(())
}

/// Whether a node answers at `addr` with the id `entry` names. A node that
/// refuses to say (it has secrets we lack) counts as answering: it is alive
/// and its entry is not ours to judge.
async fn answers_as(addr: &str, entry: &str, cluster_ca: Option<&str>) -> bool {
    let tls = match cluster_ca.map(|ca| ClientTls::from_ca_file(std::path::Path::new(ca))) {
        None => None,
        Some(Ok(tls)) => Some(tls),
        // The CA cannot be read just now: judge nobody.
        Some(Err(err)) => {
            log::warn!("cannot probe {addr} over TLS: {err}");
            return true;
        }
    };
    let probe = async {
        let client = Client::connect_timeout_with(addr, tls.as_ref(), DZNS_CONNECT_TIMEOUT)
            .await
            .ok()?;
        let answer = client.self_id().await;
        client.close();
        Some(match answer {
            Ok(id) => id == entry.as_bytes(),
            Err(e) => e.code().is_some(),
        })
    };
    rt::timeout(DZNS_REQUEST_TIMEOUT, probe)
        .await
        .flatten()
        .unwrap_or(false)
}

/// Warns when the boot entry names a node this cluster never knew: another
/// cluster of the same name took it over, so clients may reach either.
async fn check_boot_entry(dzns: &mut Dzns, name: &str, known: &BTreeSet<NodeId>) {
    let Ok((seed, rev)) = dzns.get(&format!("/ctl/boot/{name}")).await else {
        return;
    };
    let seed = String::from_utf8_lossy(&seed);
    let ours = NodeId::parse(&seed).is_some_and(|id| known.contains(&id));
    if rev > 0 && !ours {
        log::error!(
            "/ctl/boot/{name} in the DzNS names {seed}, which is not a node of this cluster: \
             another cluster named {name:?} was booted (was this one unreachable?)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 10])
    }

    fn entry(name: &str, addr: &str, rev: i64) -> NsEntry {
        NsEntry {
            name: name.into(),
            addr: addr.into(),
            rev,
        }
    }

    #[test]
    fn plan_lists_new_members_and_fixes_moved_ones() {
        let (a, b, c) = (id(1), id(2), id(3));
        let members = BTreeMap::from([
            (a.to_string(), "127.0.0.1:8046".to_string()),
            (b.to_string(), "127.0.0.2:8046".to_string()),
            (c.to_string(), "127.0.0.3:8046".to_string()),
        ]);
        let entries = vec![
            entry(a.as_str(), "127.0.0.1:8046", 10),
            entry(b.as_str(), "127.0.0.9:8046", 11),
        ];
        let known = BTreeSet::from([a.clone(), b.clone(), c.clone()]);
        let got = plan(&entries, &members, &known);
        assert_eq!(
            got.write,
            vec![
                (b.to_string(), 11, "127.0.0.2:8046".to_string()),
                (c.to_string(), 0, "127.0.0.3:8046".to_string()),
            ]
        );
        assert!(got.delete.is_empty() && got.unknown.is_empty());
    }

    #[test]
    fn plan_deletes_former_nodes_and_sets_strangers_aside() {
        let (a, gone, stranger) = (id(1), id(2), id(3));
        let members = BTreeMap::from([(a.to_string(), "127.0.0.1:8046".to_string())]);
        let entries = vec![
            entry(a.as_str(), "127.0.0.1", 10),
            entry(gone.as_str(), "127.0.0.2:8046", 11),
            entry(stranger.as_str(), "127.0.0.3:8046", 12),
            entry("not-an-id", "127.0.0.4:8046", 13),
        ];
        let known = BTreeSet::from([a.clone(), gone.clone()]);
        let got = plan(&entries, &members, &known);
        assert!(
            got.write.is_empty(),
            "a default port matches: {:?}",
            got.write
        );
        assert_eq!(got.delete, vec![(gone.to_string(), 11)]);
        let strangers: Vec<&str> = got.unknown.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(strangers, vec![stranger.as_str(), "not-an-id"]);
    }

    #[test]
    fn cluster_names_must_be_path_components() {
        assert!(check_cluster_name("example").is_ok());
        assert!(check_cluster_name("local").is_ok());
        for bad in ["", "a/b", "/", "a\0b"] {
            assert!(check_cluster_name(bad).is_err(), "{bad:?}");
        }
    }
}
