//! The JSON documents of the API and the Prometheus text of `/metrics`.
//! Everything store-derived is read over the client protocol from this
//! node's own copy; everything about the node comes from its [`NodeStatus`].

use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::future::join_all;

use super::json::{self, Obj};
use super::{Stats, Upstream};
use crate::client::{Client, Error, Event};
use crate::core::{ClusterView, NODE_VERSION};
use crate::error::ErrCode;
use crate::runtime::event_loop::NodeStatus;
use crate::types::Path;

/// Files a tree answer lists by default (`limit`). Listing is WALK at
/// offsets 0, 1, 2, …, and each costs the store time in proportion to its
/// offset, so a listing of n files costs O(n²) on the core thread: 1000
/// files take milliseconds, 10000 take seconds.
pub const DEFAULT_TREE_FILES: usize = 1000;
/// The largest `limit`.
pub const MAX_TREE_FILES: usize = 5000;
/// Bytes of one value a tree answer shows by default (`max_value`).
pub const DEFAULT_TREE_VALUE: usize = 4096;
/// Value bytes one tree answer carries in all; later values are cut to
/// nothing (and marked `truncated`).
pub const MAX_TREE_BYTES: usize = 8 << 20;
/// WALKs in flight while listing a tree.
const WALK_BATCH: i32 = 32;

/// An API failure: an HTTP status and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The rev the answer refers to, when one was read.
    pub rev: Option<i64>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            rev: None,
        }
    }

    pub fn at(mut self, rev: i64) -> ApiError {
        self.rev = Some(rev);
        self
    }

    pub fn json(&self) -> String {
        let o = Obj::new().str("error", &self.message);
        match self.rev {
            Some(rev) => o.num("rev", rev).finish(),
            None => o.finish(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let status = match err.code() {
            Some(ErrCode::NoEnt) => 404,
            Some(ErrCode::TooLate) => 410,
            Some(ErrCode::BadPath) | Some(ErrCode::NotDir) | Some(ErrCode::IsDir) => 400,
            Some(_) => 500,
            None => 503,
        };
        ApiError::new(status, err.to_string())
    }
}

pub type ApiResult = Result<String, ApiError>;

/// Checks a `path` parameter.
pub fn parse_path(text: Option<&str>) -> Result<String, ApiError> {
    let text = text.unwrap_or("/");
    // A trailing slash names the same directory.
    let trimmed = match text.strip_suffix('/') {
        Some(t) if !t.is_empty() => t,
        _ => text,
    };
    if !Path::is_valid(trimmed) {
        return Err(ApiError::new(400, format!("bad path {trimmed:?}")));
    }
    Ok(trimmed.to_string())
}

/// Parses an optional number parameter.
pub fn parse_num(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| ApiError::new(400, format!("bad {name} {t:?}")))
        })
        .transpose()
}

/// The rev to read at: `rev` when given (and not in the future), else now.
async fn read_rev(client: &Client, rev: Option<i64>) -> Result<i64, ApiError> {
    let now = client.rev().await?;
    match rev {
        None => Ok(now),
        Some(r) if r > now => Err(ApiError::new(
            400,
            format!("rev {r} is in the future (this node is at {now})"),
        )),
        Some(r) if r < 1 => Err(ApiError::new(400, format!("bad rev {r}"))),
        Some(r) => Ok(r),
    }
}

fn file_json(ev: &Event, max_value: usize) -> String {
    Obj::new()
        .str("path", &ev.path)
        .num("rev", ev.rev)
        .body(&ev.body, max_value)
        .finish()
}

/// `GET /api/tree?path=P&rev=R&max_value=N&limit=L`: the first `limit`
/// files under `P` at `R`.
pub async fn tree(
    upstream: &Upstream,
    path: &str,
    rev: Option<i64>,
    max_value: usize,
    limit: usize,
) -> ApiResult {
    let client = upstream.client().await?;
    let rev = read_rev(&client, rev).await?;
    let (_, file_rev) = client.stat(path, Some(rev)).await?;
    if file_rev == 0 {
        return Err(ApiError::new(404, format!("{path} does not exist at rev {rev}")).at(rev));
    }
    let mut files = Vec::new();
    let mut truncated = false;
    if file_rev > 0 {
        let (body, file_rev) = client.get(path, Some(rev)).await?;
        files.push(file_json(
            &Event {
                rev: file_rev,
                path: path.to_string(),
                body,
                flags: 0,
            },
            max_value,
        ));
    } else {
        let glob = if path == "/" {
            "/**".to_string()
        } else {
            format!("{path}/**")
        };
        let mut budget = MAX_TREE_BYTES;
        let mut offset = 0i32;
        'walk: loop {
            let replies =
                join_all((offset..offset + WALK_BATCH).map(|o| client.walk(&glob, Some(rev), o)))
                    .await;
            for reply in replies {
                match reply {
                    Ok(ev) => {
                        if files.len() == limit {
                            truncated = true;
                            break 'walk;
                        }
                        let shown = max_value.min(budget);
                        budget -= shown.min(ev.body.len());
                        files.push(file_json(&ev, shown));
                    }
                    Err(e) if e.code() == Some(ErrCode::Range) => break 'walk,
                    Err(e) => return Err(e.into()),
                }
            }
            offset += WALK_BATCH;
        }
    }
    Ok(Obj::new()
        .str("path", path)
        .num("rev", rev)
        .bool("is_dir", file_rev < 0)
        .raw("files", &json::array(files))
        .bool("truncated", truncated)
        .finish())
}

/// `GET /api/file?path=P&rev=R`: one file, its whole value.
pub async fn file(upstream: &Upstream, path: &str, rev: Option<i64>) -> ApiResult {
    let client = upstream.client().await?;
    let rev = read_rev(&client, rev).await?;
    let (_, file_rev) = client.stat(path, Some(rev)).await?;
    if file_rev == 0 {
        return Err(ApiError::new(
            404,
            format!("{path} does not exist at rev {rev}"),
        ));
    }
    if file_rev < 0 {
        return Err(ApiError::new(400, format!("{path} is a directory")));
    }
    let (body, file_rev) = client.get(path, Some(rev)).await?;
    Ok(Obj::new()
        .str("path", path)
        .num("rev", file_rev)
        .num("at", rev)
        .body(&body, usize::MAX)
        .finish())
}

/// What one node's `/ctl/node/<id>` files say.
#[derive(Default)]
struct NodeFiles {
    hostname: Option<String>,
    version: Option<String>,
    applied: Option<i64>,
}

async fn node_files(client: &Client, id: &str, rev: i64) -> NodeFiles {
    let get = |name: &'static str| {
        let path = format!("/ctl/node/{id}/{name}");
        async move {
            match client.get(&path, Some(rev)).await {
                Ok((body, r)) if r > 0 => Some(String::from_utf8_lossy(&body).into_owned()),
                _ => None,
            }
        }
    };
    let (hostname, version, applied) =
        futures::join!(get("hostname"), get("version"), get("applied"));
    NodeFiles {
        hostname,
        version,
        applied: applied.and_then(|a| a.trim().parse().ok()),
    }
}

/// This node's role in words.
pub fn role(view: &ClusterView) -> &'static str {
    if view.is_leader {
        "leader"
    } else if view.is_member {
        "member"
    } else {
        "slave"
    }
}

/// `GET /api/cluster`.
pub async fn cluster(upstream: &Upstream, status: &NodeStatus) -> ApiResult {
    let view = status.cluster_view();
    let client = upstream.client().await?;
    let rev = client.rev().await?;
    let files = join_all(
        view.nodes
            .iter()
            .map(|n| node_files(&client, n.id.as_str(), rev)),
    )
    .await;
    let my_rev = view.rev.0.max(rev);
    let slots = view.cal.iter().map(|(slot, id)| {
        Obj::new()
            .str("slot", slot)
            .opt_str("id", id.as_ref().map(|id| id.as_str()))
            .finish()
    });
    let nodes = view.nodes.iter().zip(files).map(|(n, f)| {
        let slot = view
            .cal
            .iter()
            .find(|(_, id)| id.as_ref() == Some(&n.id))
            .map(|(slot, _)| slot.as_str());
        // The leader knows every node's applied rev; elsewhere the node's own
        // report in /ctl/node/<id>/applied (written every pulse) stands in.
        // Each is compared with the rev of the same reading: the view's own,
        // or the rev the files were read at.
        let (applied, lag) = match (n.applied, f.applied) {
            (Some(a), _) => (Some(a.0), Some((view.rev.0 - a.0).max(0))),
            (None, Some(a)) => (Some(a), Some((my_rev - a).max(0))),
            (None, None) => (None, None),
        };
        Obj::new()
            .str("id", n.id.as_str())
            .str("addr", &n.addr)
            .opt_str("hostname", f.hostname.as_deref())
            .opt_str("version", f.version.as_deref())
            .bool("member", n.is_member)
            .opt_str("slot", slot)
            .bool("leader", view.leader.as_ref() == Some(&n.id))
            .bool("self", n.id == view.id)
            .opt_num("applied", applied)
            .opt_num("lag", lag)
            .opt_num("heard_ms_ago", n.heard_ms_ago)
            .finish()
    });
    Ok(Obj::new()
        .str("name", &view.cluster_name)
        .str("self", view.id.as_str())
        .str("role", role(&view))
        .num("rev", my_rev)
        .opt_str("leader", view.leader.as_ref().map(|l| l.as_str()))
        .bool("writable", view.writable)
        .raw("slots", &json::array(slots))
        .raw("nodes", &json::array(nodes))
        .finish())
}

/// Bytes of the files in `dir` (a data dir holds no subdirectories); 0 when
/// it cannot be listed. Read here, on a web request, not on the core's
/// thread.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// The numbers behind `/api/stats` and `/metrics`.
pub struct Snapshot {
    pub view: ClusterView,
    pub rev: i64,
    pub connections: usize,
    pub waiting: usize,
    pub peer_in_dropped: u64,
    pub peer_out_dropped: u64,
    pub connections_refused: u64,
    pub access_refused: u64,
    pub peer_frames_refused: u64,
    pub revs_per_sec: f64,
    pub resident_bytes: Option<u64>,
    pub uptime_secs: f64,
    pub subscribers: usize,
    /// The data dir's counters (see [`NodeStatus`]); all 0 without one.
    pub disk: DiskNumbers,
    /// TLS numbers; `None` with TLS off.
    pub tls: Option<TlsNumbers>,
}

/// The served certificate and the TLS counters, for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct TlsNumbers {
    /// When the served certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// Seconds until then (negative once it has expired).
    pub seconds_left: i64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub handshake_failures: u64,
}

/// The data dir's numbers, for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskNumbers {
    pub failed: bool,
    pub syncs: u64,
    pub written_bytes: u64,
    pub images: u64,
    pub bytes: u64,
}

impl Snapshot {
    pub fn take(status: &NodeStatus, stats: &Stats, subscribers: usize) -> Snapshot {
        Snapshot {
            view: status.cluster_view(),
            rev: status.rev.load(Ordering::Acquire),
            connections: status.connections.load(Ordering::Relaxed),
            waiting: status.waiting.load(Ordering::Relaxed),
            peer_in_dropped: status.peer_in_dropped.load(Ordering::Relaxed),
            peer_out_dropped: status.peer_out_dropped.load(Ordering::Relaxed),
            connections_refused: status.connections_refused.load(Ordering::Relaxed),
            access_refused: status.access_refused.load(Ordering::Relaxed),
            peer_frames_refused: status.peer_frames_refused.load(Ordering::Relaxed),
            revs_per_sec: stats.revs_per_sec(),
            resident_bytes: resident_bytes(),
            uptime_secs: stats.started.elapsed().as_secs_f64(),
            subscribers,
            disk: DiskNumbers {
                failed: status.disk_failed.load(Ordering::Relaxed),
                syncs: status.disk_appends.load(Ordering::Relaxed),
                written_bytes: status.disk_appended_bytes.load(Ordering::Relaxed),
                images: status.disk_images.load(Ordering::Relaxed),
                bytes: status.data_dir.get().map_or(0, |dir| dir_bytes(dir)),
            },
            tls: status.tls.get().map(|tls| TlsNumbers {
                not_after: tls.current().not_after,
                seconds_left: tls.seconds_left(std::time::SystemTime::now()),
                reloads: tls.reloads.load(Ordering::Relaxed),
                reload_failures: tls.reload_failures.load(Ordering::Relaxed),
                handshake_failures: tls.handshake_failures.load(Ordering::Relaxed),
            }),
        }
    }

    fn history_start(&self) -> i64 {
        self.view.history_start.0.min(self.rev)
    }

    fn members(&self) -> usize {
        self.view.cal.iter().filter(|(_, id)| id.is_some()).count()
    }

    fn ready(&self) -> bool {
        self.view.writable && self.view.leader.is_some()
    }
}

/// `GET /api/stats`.
pub fn stats(s: &Snapshot) -> String {
    Obj::new()
        .str("id", s.view.id.as_str())
        .str("name", &s.view.cluster_name)
        .str("version", NODE_VERSION)
        .str("role", role(&s.view))
        .num("rev", s.rev)
        .num("history_start", s.history_start())
        .bool("writable", s.view.writable)
        .opt_str("leader", s.view.leader.as_ref().map(|l| l.as_str()))
        .bool("ready", s.ready())
        .num("members", s.members() as u64)
        .num("slots", s.view.cal.len() as u64)
        .num("nodes", s.view.nodes.len() as u64)
        .num("connections", s.connections as u64)
        .num("waiting", s.waiting as u64)
        .num("pending_writes", s.view.pending_writes as u64)
        .float("proposals_per_sec", s.revs_per_sec)
        .opt_num("resident_bytes", s.resident_bytes)
        .float("uptime_secs", s.uptime_secs)
        .num("peer_in_dropped", s.peer_in_dropped)
        .num("peer_out_dropped", s.peer_out_dropped)
        .num("connections_refused", s.connections_refused)
        .num("access_refused", s.access_refused)
        .num("peer_frames_refused", s.peer_frames_refused)
        .num("event_subscribers", s.subscribers as u64)
        .finish()
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /metrics`: the Prometheus text exposition format (0.0.4).
pub fn metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    let flag = |b: bool| if b { "1".to_string() } else { "0".to_string() };
    metric(
        "doozer_rev",
        "gauge",
        "The store revision this node has applied.",
        s.rev.to_string(),
    );
    metric(
        "doozer_history_start_rev",
        "gauge",
        "The oldest revision still readable.",
        s.history_start().to_string(),
    );
    metric(
        "doozer_writable",
        "gauge",
        "1 when this node accepts writes.",
        flag(s.view.writable),
    );
    metric(
        "doozer_leader_known",
        "gauge",
        "1 when this node knows a leader.",
        flag(s.view.leader.is_some()),
    );
    metric(
        "doozer_is_leader",
        "gauge",
        "1 when this node leads.",
        flag(s.view.is_leader),
    );
    metric(
        "doozer_is_member",
        "gauge",
        "1 when this node holds a /ctl/cal slot (0: a slave).",
        flag(s.view.is_member),
    );
    metric(
        "doozer_members",
        "gauge",
        "Occupied /ctl/cal slots.",
        s.members().to_string(),
    );
    metric(
        "doozer_slots",
        "gauge",
        "/ctl/cal slots, occupied or free.",
        s.view.cal.len().to_string(),
    );
    metric(
        "doozer_nodes",
        "gauge",
        "Registered nodes, members and slaves.",
        s.view.nodes.len().to_string(),
    );
    metric(
        "doozer_client_connections",
        "gauge",
        "Open client connections (the web view's own included).",
        s.connections.to_string(),
    );
    metric(
        "doozer_waiting",
        "gauge",
        "WAITs not answered yet (the web view's own included).",
        s.waiting.to_string(),
    );
    metric(
        "doozer_pending_writes",
        "gauge",
        "Writes proposed on this node and not applied yet.",
        s.view.pending_writes.to_string(),
    );
    metric(
        "doozer_peer_messages_refused_total",
        "counter",
        "Peer messages refused: not from this cluster, not asked for, out of range, or contradicting this node's log.",
        s.view.refused_peer_msgs.to_string(),
    );
    metric(
        "doozer_disk_failed",
        "gauge",
        "1 when the data dir failed (full, or a write or sync refused): the node no longer takes part until restarted.",
        u8::from(s.disk.failed).to_string(),
    );
    metric(
        "doozer_disk_syncs_total",
        "counter",
        "Write-ahead log appends, each followed by one fdatasync (0 without -data-dir).",
        s.disk.syncs.to_string(),
    );
    metric(
        "doozer_disk_written_bytes_total",
        "counter",
        "Bytes appended to the write-ahead log.",
        s.disk.written_bytes.to_string(),
    );
    metric(
        "doozer_disk_images_total",
        "counter",
        "Images of the node's state written to the data dir.",
        s.disk.images.to_string(),
    );
    metric(
        "doozer_disk_bytes",
        "gauge",
        "Bytes of the data dir's files.",
        s.disk.bytes.to_string(),
    );
    metric(
        "doozer_tls_enabled",
        "gauge",
        "1 when the client and peer port (and by default the web view) speak TLS.",
        flag(s.tls.is_some()),
    );
    if let Some(tls) = &s.tls {
        metric(
            "doozer_tls_cert_not_after_seconds",
            "gauge",
            "When the served certificate expires, in seconds since the Unix epoch.",
            tls.not_after.to_string(),
        );
        metric(
            "doozer_tls_cert_expires_in_seconds",
            "gauge",
            "Seconds until the served certificate expires (negative once it has).",
            tls.seconds_left.to_string(),
        );
        metric(
            "doozer_tls_reloads_total",
            "counter",
            "Certificate reloads that took effect (SIGHUP or a changed file).",
            tls.reloads.to_string(),
        );
        metric(
            "doozer_tls_reload_failures_total",
            "counter",
            "Certificate reloads that failed (the old certificate stayed).",
            tls.reload_failures.to_string(),
        );
        metric(
            "doozer_tls_handshake_failures_total",
            "counter",
            "Inbound TLS handshakes that failed (plain text, untrusted certificates, time-outs).",
            tls.handshake_failures.to_string(),
        );
    }
    metric(
        "doozer_proposals_per_second",
        "gauge",
        "Revisions applied per second over the last 10 seconds.",
        format!("{:.3}", s.revs_per_sec),
    );
    if let Some(bytes) = s.resident_bytes {
        metric(
            "doozer_resident_memory_bytes",
            "gauge",
            "Resident memory of the process.",
            bytes.to_string(),
        );
    }
    metric(
        "doozer_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        format!("{:.3}", s.uptime_secs),
    );
    metric(
        "doozer_peer_in_dropped_total",
        "counter",
        "Peer messages dropped because the core's inbox was full.",
        s.peer_in_dropped.to_string(),
    );
    metric(
        "doozer_peer_out_dropped_total",
        "counter",
        "Peer messages dropped because a link's queue was full.",
        s.peer_out_dropped.to_string(),
    );
    metric(
        "doozer_client_connections_refused_total",
        "counter",
        "Connections closed at accept: over the connection or per-address limit, out of ACCESS guesses, or the core far behind.",
        s.connections_refused.to_string(),
    );
    metric(
        "doozer_client_access_refused_total",
        "counter",
        "Client connections closed for wrong ACCESS attempts or no ACCESS in time.",
        s.access_refused.to_string(),
    );
    metric(
        "doozer_peer_frames_refused_total",
        "counter",
        "Peer messages not sent because their encoding exceeded the peer frame cap (a bug: senders cut messages to fit).",
        s.peer_frames_refused.to_string(),
    );
    metric(
        "doozer_web_event_subscribers",
        "gauge",
        "Open event streams of the web view.",
        s.subscribers.to_string(),
    );
    out.push_str(&format!(
        "# HELP doozer_info This node's identity.\n# TYPE doozer_info gauge\ndoozer_info{{id=\"{}\",cluster=\"{}\",version=\"{}\",role=\"{}\"}} 1\n",
        label(s.view.id.as_str()),
        label(&s.view.cluster_name),
        label(NODE_VERSION),
        role(&s.view),
    ));
    out
}

/// `GET /readyz`: `Ok` when this node can take writes and knows its leader.
pub fn readiness(s: &Snapshot) -> Result<(), &'static str> {
    if !s.view.writable {
        Err("not ready: this node does not take writes yet (joining, or no quorum)")
    } else if s.view.leader.is_none() {
        Err("not ready: no leader known")
    } else {
        Ok(())
    }
}

/// Resident memory from `/proc/self/statm` (pages; Linux pages are 4 KiB on
/// the platforms we run on, and `/proc/self/status` says so in kB when it
/// is there).
pub fn resident_bytes() -> Option<u64> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            return Some(kb * 1024);
        }
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Samples of the applied rev, for a rate.
pub struct RevSamples {
    samples: std::collections::VecDeque<(Instant, i64)>,
    keep: usize,
}

impl RevSamples {
    pub fn new(keep: usize) -> RevSamples {
        RevSamples {
            samples: std::collections::VecDeque::new(),
            keep: keep.max(2),
        }
    }

    pub fn record(&mut self, at: Instant, rev: i64) {
        if self.samples.len() == self.keep {
            self.samples.pop_front();
        }
        self.samples.push_back((at, rev));
    }

    /// Revs per second between the oldest and newest sample.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, r0)), Some((t1, r1))) if t1 > t0 => {
                (r1 - r0).max(0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn paths_and_numbers_are_checked() {
        assert_eq!(parse_path(None).unwrap(), "/");
        assert_eq!(parse_path(Some("/")).unwrap(), "/");
        assert_eq!(parse_path(Some("/ctl/")).unwrap(), "/ctl");
        assert_eq!(parse_path(Some("/ctl/cal")).unwrap(), "/ctl/cal");
        assert_eq!(parse_path(Some("ctl")).unwrap_err().status, 400);
        assert_eq!(parse_path(Some("/a//b")).unwrap_err().status, 400);
        assert_eq!(parse_path(Some("/<x>")).unwrap_err().status, 400);
        assert_eq!(parse_num("rev", Some("12")).unwrap(), Some(12));
        assert_eq!(parse_num("rev", None).unwrap(), None);
        assert_eq!(parse_num("rev", Some("")).unwrap(), None);
        assert_eq!(parse_num("rev", Some("x")).unwrap_err().status, 400);
    }

    #[test]
    fn client_errors_map_to_http_statuses() {
        assert_eq!(ApiError::from(Error::from(ErrCode::NoEnt)).status, 404);
        assert_eq!(ApiError::from(Error::from(ErrCode::TooLate)).status, 410);
        assert_eq!(ApiError::from(Error::Closed).status, 503);
        assert_eq!(
            ApiError::new(400, "bad \"x\"").json(),
            r#"{"error":"bad \"x\""}"#
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let s = Snapshot {
            view: ClusterView {
                cluster_name: "a\"b\\c\nd".into(),
                writable: true,
                ..ClusterView::default()
            },
            rev: 42,
            connections: 3,
            waiting: 1,
            peer_in_dropped: 0,
            peer_out_dropped: 0,
            connections_refused: 0,
            access_refused: 0,
            peer_frames_refused: 0,
            revs_per_sec: 2.5,
            resident_bytes: Some(4096),
            uptime_secs: 1.0,
            subscribers: 0,
            disk: DiskNumbers::default(),
            tls: Some(TlsNumbers {
                not_after: 1_900_000_000,
                seconds_left: 86_400,
                reloads: 2,
                reload_failures: 1,
                handshake_failures: 7,
            }),
        };
        let text = metrics(&s);
        assert!(text.contains("doozer_tls_enabled 1\n"));
        assert!(text.contains("doozer_tls_cert_not_after_seconds 1900000000\n"));
        assert!(text.contains("doozer_tls_cert_expires_in_seconds 86400\n"));
        assert!(text.contains("doozer_tls_reloads_total 2\n"));
        assert!(text.contains("doozer_tls_handshake_failures_total 7\n"));
        assert!(text.contains("# TYPE doozer_rev gauge\ndoozer_rev 42\n"));
        assert!(text.contains("doozer_proposals_per_second 2.500\n"));
        assert!(text.contains("doozer_peer_messages_refused_total 0\n"));
        assert!(text.contains("doozer_disk_failed 0\n"));
        assert!(text.contains(r#"cluster="a\"b\\c\nd""#));
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.split(' ').count() == 2,
                "{line}"
            );
        }
        assert_eq!(readiness(&s), Err("not ready: no leader known"));
        assert!(stats(&s).contains("\"rev\":42"));
    }

    #[test]
    fn rev_rate_over_the_samples() {
        let mut samples = RevSamples::new(3);
        let t = Instant::now();
        assert_eq!(samples.rate(), 0.0);
        samples.record(t, 10);
        samples.record(t + Duration::from_secs(1), 20);
        samples.record(t + Duration::from_secs(2), 40);
        assert_eq!(samples.rate(), 15.0);
        samples.record(t + Duration::from_secs(3), 40);
        assert_eq!(samples.rate(), 10.0);
        assert!(resident_bytes().unwrap() > 0);
    }
}
