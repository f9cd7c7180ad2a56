//! Every setting and limit of a `doozerd`, in one place, checked once.
//!
//! Each bound on memory (frames, values, requests in flight, queues, history)
//! lives here so that an overflow anywhere has one documented number behind it.

use std::time::Duration;

use crate::codec::peer_auth::PeerKey;
use crate::core::CoreConfig;
use crate::paxos;
use crate::session::{Secrets, SessionLimits};

/// Where the web view listens (`-w`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebSetting {
    /// The `-l` host, port 8000.
    Default,
    /// `-w false` (or any boolean-looking value, as the original).
    Off,
    Addr(String),
}

/// Bounds on what clients can make the server hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest client frame accepted; a longer header closes the connection
    /// before anything is allocated.
    pub max_frame_bytes: usize,
    /// Largest file body; larger SETs get `OTHER value too large`.
    pub max_value_bytes: usize,
    /// Requests one connection may have unanswered (WAITs included).
    pub max_in_flight_per_conn: usize,
    /// Bytes one connection's unanswered requests may weigh (path, value,
    /// and four times a WAIT's or WALK's glob, which the core holds until
    /// the WAIT fires; see [`crate::session::request_cost`]). Past it a
    /// request gets `OTHER: too many bytes in flight` and never reaches the
    /// core; one request alone always goes through. 8 MiB: a client
    /// pipelining 1 MiB values still has seven in flight, and no real glob
    /// comes near.
    pub max_in_flight_bytes_per_conn: usize,
    /// Bytes all connections' unanswered requests may weigh together; past
    /// it requests get `OTHER: busy`. 512 MiB: 64 connections at the
    /// per-connection budget, while thousands of connections each holding
    /// a few WAITs of ordinary globs use a few megabytes.
    pub max_client_bytes_in_flight: usize,
    /// Open client connections; more are refused at accept.
    pub max_connections: usize,
    /// Open connections from one source address (one IPv6 /64); more from
    /// that address are closed at accept (logged, a line a second at most),
    /// so one host cannot take every slot of `max_connections`. 500, or
    /// half of `max_connections` when that is smaller (`doozerd` derives it
    /// so); it must stay below `max_connections`. Peer links count too: a
    /// member holds one or two.
    pub max_connections_per_ip: usize,
    /// With a secret set: time a connection has, from accept, to gain a
    /// right with `ACCESS`; then it is closed (logged). 10 s: a client
    /// sends ACCESS right after connecting.
    pub access_timeout: Duration,
    /// Wrong `ACCESS` attempts on one connection: the last one is answered
    /// `OTHER: permission denied` and the connection closed (logged with
    /// the client's address). 3: a person mistyping, not a guesser.
    pub max_access_failures: u32,
    /// Inputs queued for the core; when full, clients get `OTHER busy`.
    /// 16,384: four of the event loop's largest batches (4,096 inputs), a
    /// few hundred milliseconds of work at full load. The channel holds
    /// its slots for good (about 140 bytes each once the ring has gone
    /// round), so 65,536 cost 9 MB of resident memory for nothing.
    pub inbox_capacity: usize,
    /// Bytes of inputs queued for the core (client requests at their
    /// [`request_cost`](crate::session::request_cost), peer messages at
    /// their frame size); when full, clients get `OTHER: busy` and peer
    /// messages are dropped (consensus sends again). One input alone always
    /// fits. 128 MiB: two catch-up replies at a quarter of the peer frame
    /// limit, or 128 queued 1 MiB writes.
    pub inbox_max_bytes: usize,
    /// Replies queued for one connection; a client that lets it fill (it
    /// stopped reading) is disconnected.
    pub outbox_capacity: usize,
    /// Writes proposed on this node and not applied yet.
    pub max_pending_writes: usize,
    /// Largest peer frame accepted or sent (a batch of slots, a snapshot);
    /// a longer header closes the link before anything is allocated, and a
    /// longer message is dropped by its sender.
    pub max_peer_frame_bytes: usize,
    /// Messages queued for one peer link; when full, new ones are dropped
    /// (consensus retransmits).
    pub peer_queue_capacity: usize,
    /// Bytes of peer frames being read at once on all inbound links (each
    /// frame's announced length counts from its header until it is decoded);
    /// a frame that would pass it closes its link (the sender redials and
    /// consensus retransmits). At least one largest frame always fits.
    pub peer_frame_budget_bytes: usize,
}

/// The per-address connection cap when `max_connections` leaves room for it.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 500;

impl Limits {
    /// Sets `max_connections` and, unless it is set on its own, the
    /// per-address cap that goes with it: the default, or half the total
    /// when that is smaller, so one address never takes every slot.
    pub fn set_max_connections(&mut self, total: usize, per_ip: Option<usize>) {
        self.max_connections = total;
        self.max_connections_per_ip =
            per_ip.unwrap_or_else(|| DEFAULT_MAX_CONNECTIONS_PER_IP.min((total / 2).max(1)));
    }

    /// Slots of the connection life-cycle channel: each open connection has
    /// at most an `Opened` and a `Closed` queued, plus room for connections
    /// that closed while the core was busy. A connection that cannot queue
    /// its `Opened` is refused; a `Closed` that finds it full is retried,
    /// its connection still counted (so no new one is accepted meanwhile).
    pub fn control_capacity(&self) -> usize {
        self.max_connections.saturating_mul(2).saturating_add(64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 4 << 20,
            max_value_bytes: 1 << 20,
            max_in_flight_per_conn: 4096,
            max_in_flight_bytes_per_conn: 8 << 20,
            max_client_bytes_in_flight: 512 << 20,
            max_connections: 10_000,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            access_timeout: Duration::from_secs(10),
            max_access_failures: 3,
            inbox_capacity: 16_384,
            inbox_max_bytes: 128 << 20,
            outbox_capacity: 8192,
            max_pending_writes: 100_000,
            max_peer_frame_bytes: 256 << 20,
            peer_queue_capacity: 4096,
            peer_frame_budget_bytes: 384 << 20,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `-l`: client (and later peer) address, and this node's identity.
    pub listen: String,
    /// `-a`: addresses to attach to.
    pub attach: Vec<String>,
    /// `-b` / `DOOZER_BOOT_URI`.
    pub boot_uri: Option<String>,
    /// `-c`.
    pub cluster_name: String,
    /// `-w`.
    pub web: WebSetting,
    /// `-pulse`: seconds between `applied` writes.
    pub pulse: Duration,
    /// `-timeout`: a node unheard of for this long is removed.
    pub timeout: Duration,
    /// `-hist`: revisions of history kept readable.
    pub history_revs: usize,
    /// `-tlscert`, `-tlskey`: serve the `-l` port (clients and peers) and
    /// the web view over TLS with this certificate chain and key (PEM).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// `--tls-ca`: the cluster's CA (PEM). Peers must show certificates it
    /// signed, and `-a` / DzNS addresses are dialled over TLS trusting it.
    pub tls_ca: Option<String>,
    /// `--web-http`: serve the web view over plain HTTP even with TLS on.
    pub web_http: bool,
    /// The core's unit of time.
    pub tick: Duration,
    /// Slots a leader may run past its applied point (the original's alpha):
    /// it caps writes in flight, and a `/ctl/cal` change governs voting this
    /// many slots later (the leader pads with nops). 64 measured no slower
    /// than 256 with 64 connections or 128 pipelined requests on a 3-member
    /// cluster, and pads a quarter as many nops per membership change.
    pub alpha: usize,
    pub limits: Limits,
    pub secrets: Secrets,
    /// `DOOZER_PEERSECRET`: the key peer links prove they hold; when empty,
    /// one derived from the client secrets (none: the peer plane is open).
    pub peer_secret: String,
    /// `-data-dir`: where this node keeps its identity, write-ahead log and
    /// images (`None`: memory only, as the original).
    pub data_dir: Option<std::path::PathBuf>,
    /// `-local-reads`: answer reads from this node's copy at once (may be
    /// stale) instead of after a read index (see `core::reads`).
    pub local_reads: bool,
    /// How long a read waits for a confirmed leader before it gets an
    /// error (a node cut off from a quorum answers no reads).
    pub read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8046".into(),
            attach: Vec::new(),
            boot_uri: None,
            cluster_name: "local".into(),
            web: WebSetting::Default,
            pulse: Duration::from_secs(1),
            timeout: Duration::from_secs(60),
            history_revs: 2000,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            web_http: false,
            tick: Duration::from_millis(5),
            alpha: 64,
            limits: Limits::default(),
            secrets: Secrets::default(),
            peer_secret: String::new(),
            data_dir: None,
            local_reads: false,
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("require a listen address")]
    NoListenAddress,
    #[error("-hist must be at least 1")]
    NoHistory,
    #[error("-{0} must be a positive number of seconds")]
    BadDuration(&'static str),
    #[error("need both cert file and key file")]
    HalfTls,
    #[error("--tls-ca needs -tlscert and -tlskey: a node's peers dial it over TLS")]
    CaWithoutCert,
    #[error("-a and DzNS boot with -tlscert need --tls-ca: peers must show certificates the cluster CA signed")]
    PeersNeedCa,
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    #[error(
        "the per-address connection limit ({per_ip}) must be below the connection limit ({total})"
    )]
    PerIpNotBelowTotal { per_ip: usize, total: usize },
    #[error("the shared in-flight byte budget must be at least the per-connection one")]
    SharedBudgetTooSmall,
    #[error("the inbox byte budget must be at least the frame limit")]
    InboxBytesTooSmall,
    #[error("the frame limit ({frame} bytes) must leave room for a value of {value} bytes")]
    FrameSmallerThanValue { frame: usize, value: usize },
    #[error("the frame limit must stay below 1 GiB")]
    FrameTooLarge,
    #[error(
        "the peer frame limit ({frame} bytes) must leave 1 MiB above a value of {value} bytes"
    )]
    PeerFrameSmallerThanValue { frame: usize, value: usize },
    #[error("the peer frame limit must not exceed {0} bytes")]
    PeerFrameTooLarge(usize),
}

impl Config {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::NodeTlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::NodeTlsFiles {
                cert: cert.into(),
                key: key.into(),
                ca: self.tls_ca.as_ref().map(Into::into),
            }),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListenAddress);
        }
        if self.history_revs == 0 {
            return Err(ConfigError::NoHistory);
        }
        for (name, d) in [
            ("pulse", self.pulse),
            ("timeout", self.timeout),
            ("tick", self.tick),
            ("access-timeout", self.limits.access_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::BadDuration(name));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (None, None) if self.tls_ca.is_some() => return Err(ConfigError::CaWithoutCert),
            (Some(_), Some(_))
                if self.tls_ca.is_none()
                    && (!self.attach.is_empty() || self.boot_uri.is_some()) =>
            {
                return Err(ConfigError::PeersNeedCa)
            }
            (None, None) | (Some(_), Some(_)) => {}
            _ => return Err(ConfigError::HalfTls),
        }
        let l = &self.limits;
        for (name, n) in [
            ("max_value_bytes", l.max_value_bytes),
            ("max_in_flight_per_conn", l.max_in_flight_per_conn),
            (
                "max_in_flight_bytes_per_conn",
                l.max_in_flight_bytes_per_conn,
            ),
            ("max_connections", l.max_connections),
            ("max_connections_per_ip", l.max_connections_per_ip),
            ("max_access_failures", l.max_access_failures as usize),
            ("inbox_capacity", l.inbox_capacity),
            ("inbox_max_bytes", l.inbox_max_bytes),
            ("outbox_capacity", l.outbox_capacity),
            ("max_pending_writes", l.max_pending_writes),
            ("peer_queue_capacity", l.peer_queue_capacity),
            ("alpha", self.alpha),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        // One address must leave room for others (a limit of one connection
        // in all can only be one address's).
        if l.max_connections > 1 && l.max_connections_per_ip >= l.max_connections
            || l.max_connections_per_ip > l.max_connections
        {
            return Err(ConfigError::PerIpNotBelowTotal {
                per_ip: l.max_connections_per_ip,
                total: l.max_connections,
            });
        }
        if l.max_client_bytes_in_flight < l.max_in_flight_bytes_per_conn {
            return Err(ConfigError::SharedBudgetTooSmall);
        }
        if l.inbox_max_bytes < l.max_frame_bytes {
            return Err(ConfigError::InboxBytesTooSmall);
        }
        // A SET frame carries the value plus the path and a few small fields.
        if l.max_frame_bytes < l.max_value_bytes + 64 * 1024 {
            return Err(ConfigError::FrameSmallerThanValue {
                frame: l.max_frame_bytes,
                value: l.max_value_bytes,
            });
        }
        if l.max_frame_bytes >= 1 << 30 {
            return Err(ConfigError::FrameTooLarge);
        }
        // A slot batch or catch-up frame must carry at least one largest value.
        if l.max_peer_frame_bytes < l.max_value_bytes.saturating_add(1 << 20) {
            return Err(ConfigError::PeerFrameSmallerThanValue {
                frame: l.max_peer_frame_bytes,
                value: l.max_value_bytes,
            });
        }
        // Decoding claims about the in-memory size of a message, which can
        // exceed its wire size; half the decoder's limit leaves that room.
        let peer_max = crate::codec::peer::DECODE_LIMIT / 2;
        if l.max_peer_frame_bytes > peer_max {
            return Err(ConfigError::PeerFrameTooLarge(peer_max));
        }
        Ok(())
    }

    /// The key every peer link of this node proves it holds.
    pub fn peer_key(&self) -> PeerKey {
        PeerKey::for_secrets(
            &self.peer_secret,
            &self.secrets.read_write,
            &self.secrets.read_only,
        )
    }

    /// Ticks in `d`, at least one.
    pub fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos() / self.tick.as_nanos().max(1)).max(1) as u64
    }

    pub fn core_config(&self, seed: u64) -> CoreConfig {
        CoreConfig {
            history_revs: self.history_revs,
            pulse_ticks: self.ticks(self.pulse),
            timeout_ticks: self.ticks(self.timeout),
            max_value_bytes: self.limits.max_value_bytes,
            max_pending_writes: self.limits.max_pending_writes,
            max_peer_frame_bytes: self.limits.max_peer_frame_bytes,
            paxos: paxos::Settings {
                window: self.alpha,
                max_queued: self.limits.max_pending_writes,
                // A batch of values stays well inside a peer frame.
                max_batch_bytes: paxos::Settings::default()
                    .max_batch_bytes
                    .min(self.limits.max_peer_frame_bytes / 4),
                ..paxos::Settings::default()
            },
            local_reads: self.local_reads,
            read_timeout_ticks: self.ticks(self.read_timeout),
            seed,
        }
    }

    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_in_flight: self.limits.max_in_flight_per_conn,
            max_in_flight_bytes: self.limits.max_in_flight_bytes_per_conn,
            max_value_bytes: self.limits.max_value_bytes,
            max_access_failures: self.limits.max_access_failures,
        }
    }

    /// The web view's address, if it is on.
    pub fn web_addr(&self) -> Option<String> {
        match &self.web {
            WebSetting::Off => None,
            WebSetting::Addr(addr) => Some(addr.clone()),
            WebSetting::Default => {
                let host = self
                    .listen
                    .rsplit_once(':')
                    .map_or(self.listen.as_str(), |(h, _)| h);
                Some(format!("{host}:8000"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_match_the_reference() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8046");
        assert_eq!(c.cluster_name, "local");
        assert_eq!(c.history_revs, 2000);
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert_eq!(c.web_addr().as_deref(), Some("127.0.0.1:8000"));
        assert_eq!(c.core_config(1).pulse_ticks, 200);
    }

    #[test]
    fn tls_settings() {
        let tls = |cert: Option<&str>, key: Option<&str>, ca: Option<&str>, attach: bool| Config {
            tls_cert: cert.map(Into::into),
            tls_key: key.map(Into::into),
            tls_ca: ca.map(Into::into),
            attach: if attach {
                vec!["127.0.0.1:8046".into()]
            } else {
                Vec::new()
            },
            ..Config::default()
        };
        assert_eq!(
            tls(None, None, Some("ca"), false).validate(),
            Err(ConfigError::CaWithoutCert)
        );
        assert_eq!(
            tls(Some("c"), None, Some("ca"), false).validate(),
            Err(ConfigError::HalfTls)
        );
        // A seed may serve TLS without a CA (as the original); attaching
        // needs one, peers being checked against it.
        tls(Some("c"), Some("k"), None, false).validate().unwrap();
        assert_eq!(
            tls(Some("c"), Some("k"), None, true).validate(),
            Err(ConfigError::PeersNeedCa)
        );
        let c = tls(Some("c"), Some("k"), Some("ca"), true);
        c.validate().unwrap();
        let files = c.tls_files().unwrap();
        assert_eq!(files.ca.as_deref(), Some(std::path::Path::new("ca")));
        assert!(Config::default().tls_files().is_none());
    }

    #[test]
    fn bad_settings_are_refused() {
        let c = Config {
            listen: String::new(),
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoListenAddress));
        let c = Config {
            tls_cert: Some("c".into()),
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::HalfTls));
        let mut c = Config::default();
        c.limits.max_frame_bytes = 1024;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::FrameSmallerThanValue { .. })
        ));
        let mut c = Config::default();
        c.limits.max_peer_frame_bytes = c.limits.max_value_bytes + 1024;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PeerFrameSmallerThanValue { .. })
        ));
        c.limits.max_peer_frame_bytes = 1 << 30;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PeerFrameTooLarge(_))
        ));
        let c = Config {
            history_revs: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::NoHistory));
    }

    #[test]
    fn the_per_address_cap_stays_below_the_total() {
        let mut c = Config::default();
        assert_eq!(c.limits.max_connections_per_ip, 500);
        c.limits.set_max_connections(500, None);
        assert_eq!(c.limits.max_connections_per_ip, 250);
        c.validate().unwrap();
        c.limits.set_max_connections(1, None);
        assert_eq!(c.limits.max_connections_per_ip, 1);
        c.validate().unwrap();
        c.limits.set_max_connections(100_000, None);
        assert_eq!(c.limits.max_connections_per_ip, 500);
        c.limits.set_max_connections(500, Some(500));
        assert_eq!(
            c.validate(),
            Err(ConfigError::PerIpNotBelowTotal {
                per_ip: 500,
                total: 500
            })
        );
        c.limits.set_max_connections(500, Some(0));
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroLimit("max_connections_per_ip"))
        );
    }

    #[test]
    fn byte_budgets_are_checked() {
        let mut c = Config::default();
        c.limits.max_client_bytes_in_flight = c.limits.max_in_flight_bytes_per_conn - 1;
        assert_eq!(c.validate(), Err(ConfigError::SharedBudgetTooSmall));
        let mut c = Config::default();
        c.limits.inbox_max_bytes = c.limits.max_frame_bytes - 1;
        assert_eq!(c.validate(), Err(ConfigError::InboxBytesTooSmall));
        let mut c = Config::default();
        c.limits.max_in_flight_bytes_per_conn = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroLimit("max_in_flight_bytes_per_conn"))
        );
        let mut c = Config::default();
        c.limits.access_timeout = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::BadDuration("access-timeout"))
        );
    }
}
