//! TLS for every byte a node sends over a network: the `-l` port (clients
//! and peer links share it), the links it dials to peers, the client
//! connections it opens to attach or to boot through a DzNS, and the web
//! view.
//!
//! Everything here is configuration: reading PEM files (bounded, because a
//! file on disk is input like any other), building rustls configs, and
//! saying in words why a handshake failed. The sockets are wrapped in
//! [`crate::runtime::conn`]; nothing above the framing knows TLS is there.
//!
//! - **Client port**: the node's certificate; a client certificate is asked
//!   for but optional (clients have none), and one that is offered must be
//!   signed by the cluster CA.
//! - **Peer links**: both ends show certificates signed by the CA given with
//!   `--tls-ca`. The dialer checks the listener's certificate against the
//!   address it dialled; the listener takes a peer link only from a
//!   connection that showed a verified client certificate. The peer key's
//!   challenge–response then runs inside the TLS session as before.
//! - **Rotation**: [`NodeTls`] rebuilds every config from the files on
//!   SIGHUP or when they change, and swaps them in for new connections;
//!   open connections keep the session they have. A reload that fails keeps
//!   the old certificate and says why.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// The largest PEM file read: certificate chains and keys are a few KB; a
/// CA bundle of every public root is ~250 KB.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// How long a TLS handshake may take, on either side, before the
/// connection is dropped: a client that connects and says nothing (or
/// speaks plain text slowly) holds nothing for longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`NodeTls::watch`] looks at the files and for SIGHUP.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is over {MAX_PEM_BYTES} bytes; not a PEM certificate or key")]
    TooLarge { path: String },
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("{path} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")")]
    NoCertificate { path: String },
    #[error(
        "{path} holds no private key (expected PEM \"-----BEGIN PRIVATE KEY-----\", RSA or EC)"
    )]
    NoKey { path: String },
    #[error("{path}: {reason}")]
    BadCertificate { path: String, reason: String },
    #[error("the certificate in {cert} and the key in {key} do not belong together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// The crypto every config here uses (ring: no C toolchain beyond `cc`, no
/// OpenSSL).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: shown(path),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: shown(path) });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: shown(path),
            reason: format!("not valid PEM: {err}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: shown(path) });
    }
    for cert in &certs {
        not_after(cert).map_err(|reason| TlsError::BadCertificate {
            path: shown(path),
            reason,
        })?;
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: shown(path) },
        err => TlsError::Pem {
            path: shown(path),
            reason: format!("not a valid PEM private key: {err}"),
        },
    })
}

/// The CA certificates in a PEM file, as roots to trust.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|err| TlsError::BadCertificate {
            path: shown(path),
            reason: format!("not usable as a CA certificate: {err}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// When a certificate expires, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|err| format!("not a valid X.509 certificate: {err}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The subject of a certificate and its expiry date, for log lines.
fn describe(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, parsed)| {
            format!(
                "{} (expires {})",
                parsed.subject(),
                parsed.validity().not_after
            )
        })
        .unwrap_or_else(|_| "?".to_string())
}

/// The host part of `host:port` (`[v6]:port` too) as a TLS server name: an
/// IP address is checked against the certificate's IP addresses, anything
/// else against its DNS names.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|_| {
        format!("{host:?} is not an IP address or DNS name to check a certificate against")
    })
}

// ---------------------------------------------------------------------------
// Client side: the CLI, the client library, attach and DzNS.

/// What a client trusts when it dials over TLS.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    /// What is trusted, in words, for errors (`the CA in ca.pem`).
    trust: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.trust)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM), and checks each server's
    /// certificate against the address or name dialled.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let roots = load_roots(ca)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            trust: format!("the CA in {}", shown(ca)),
        })
    }

    /// Trusts exactly these certificates (a node's own, for its web view's
    /// connection to itself, whatever address that goes through).
    pub fn pinned(certs: Vec<CertificateDer<'static>>) -> ClientTls {
        let verifier = Arc::new(PinnedCertificates {
            certs,
            provider: provider(),
        });
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        ClientTls {
            config: Arc::new(config),
            trust: "this node's own certificate".to_string(),
        }
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// What is trusted, in words.
    pub fn trust(&self) -> &str {
        &self.trust
    }
}

/// Accepts a server certificate only when it is one of a known few: the
/// web view dials its own node, and trusts what that node serves.
#[derive(Debug)]
struct PinnedCertificates {
    certs: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificates {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a handshake this side started as a client failed, in words:
/// `trust` says what was trusted (see [`ClientTls::trust`]).
pub fn explain_dial_failure(err: &io::Error, trust: &str) -> String {
    if let Some(tls) = rustls_error(err) {
        return match tls {
            rustls::Error::InvalidCertificate(cert) => explain_certificate(cert, trust, "server"),
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::BadCertificate
                | AlertDescription::DecryptError
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateRequired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired => format!(
                    "the other end refused our certificate ({alert:?}): it must be signed by the cluster's CA"
                ),
                AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                    format!("the server could not agree on TLS parameters ({alert:?})")
                }
                other => format!("the server sent the TLS alert {other:?}"),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "the server does not speak TLS on this port (is it running without -tlscert?)"
                    .to_string()
            }
            other => format!("TLS error: {other}"),
        };
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => format!(
            "the server closed the connection during the TLS handshake ({}); is it running without -tlscert?",
            crate::client::io_error_text(err)
        ),
        _ => crate::client::io_error_text(err),
    }
}

/// The TLS reason behind an I/O error, in words, when there is one (an
/// alert that came after the handshake seemed done: in TLS 1.3 a server
/// refuses a client certificate only then).
pub fn tls_reason(err: &io::Error, trust: &str) -> Option<String> {
    rustls_error(err).map(|_| explain_dial_failure(err, trust))
}

/// Why a handshake this side answered as a server failed, in words (for the
/// log line about a refused connection).
pub fn explain_accept_failure(err: &io::Error) -> String {
    if let Some(tls) = rustls_error(err) {
        return match tls {
            rustls::Error::InvalidCertificate(cert) => {
                explain_certificate(cert, "the cluster's CA", "client")
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "not a TLS client (plain text on a TLS port?)".to_string()
            }
            rustls::Error::AlertReceived(alert) => {
                format!("the client gave up with the TLS alert {alert:?} (it does not trust our certificate?)")
            }
            rustls::Error::NoCertificatesPresented => {
                "the client showed no certificate".to_string()
            }
            other => format!("TLS error: {other}"),
        };
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => "the client hung up during the handshake".to_string(),
        _ => crate::client::io_error_text(err),
    }
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn explain_certificate(err: &CertificateError, trust: &str, whose: &str) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            format!("the {whose}'s certificate is not signed by {trust} (unknown issuer)")
        }
        CertificateError::BadSignature => {
            format!("the {whose}'s certificate has a bad signature (not signed by {trust}?)")
        }
        CertificateError::NotValidForName => {
            format!("the {whose}'s certificate does not name the address or host dialled")
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the {whose}'s certificate is not valid for {}, the address or host dialled: it names {} \
             (a node's certificate must name the address clients and peers dial)",
            name_text(expected),
            if presented.is_empty() {
                "nothing".to_string()
            } else {
                presented
                    .iter()
                    .map(|name| presented_text(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("the {whose}'s certificate has expired")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the {whose}'s certificate is not valid yet (check the clocks)")
        }
        CertificateError::Revoked => format!("the {whose}'s certificate is revoked"),
        other => format!("the {whose}'s certificate was refused: {other:?}"),
    }
}

/// A server name as an operator writes it (`127.0.0.1`, `db.example`).
fn name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// A name a certificate presents, as the verifier writes it
/// (`IpAddress(192.0.2.1)`, `DnsName("db.example")`), in words.
fn presented_text(name: &str) -> String {
    if let Some(ip) = name
        .strip_prefix("IpAddress(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        return format!("the IP address {ip}");
    }
    if let Some(dns) = name
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
    {
        return format!("the DNS name {dns}");
    }
    name.to_string()
}

// ---------------------------------------------------------------------------
// Node side: what `-tlscert`, `-tlskey` and `--tls-ca` name.

/// The files a node's TLS is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster's CA: peers' certificates must be signed by it, and the
    /// node dials attach and DzNS addresses trusting it. Without it the node
    /// serves TLS to clients but takes no peers (as the original).
    pub ca: Option<PathBuf>,
}

/// One load of a node's TLS files: every config built from them.
pub struct NodeTlsSet {
    /// The `-l` port: the node's certificate; client certificates asked
    /// for, optional, verified against the CA when one is given.
    pub listener: Arc<ServerConfig>,
    /// The web view over HTTPS: the same certificate, no client
    /// certificates, ALPN `http/1.1`.
    pub web: Arc<ServerConfig>,
    /// Dialling peers: the CA as roots, the node's certificate as the
    /// client certificate. `None` without a CA.
    pub peer_dialer: Option<ClientTls>,
    /// Dialling attach and DzNS addresses: the CA as roots, no client
    /// certificate. `None` without a CA.
    pub client: Option<ClientTls>,
    /// The web view's connection to its own node.
    pub own: ClientTls,
    /// When the served certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// The served certificate's subject and expiry, in words.
    pub subject: String,
}

impl NodeTlsSet {
    pub fn load(files: &NodeTlsFiles) -> Result<NodeTlsSet, TlsError> {
        let certs = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let mismatch = |reason: String| TlsError::Mismatch {
            cert: shown(&files.cert),
            key: shown(&files.key),
            reason,
        };
        let signing_key = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|err| mismatch(format!("the key is not usable: {err}")))?;
        let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing_key);
        certified
            .keys_match()
            .map_err(|err| mismatch(err.to_string()))?;
        let roots = files.ca.as_deref().map(load_roots).transpose()?;
        let config_err = |err: rustls::Error| TlsError::Config(err.to_string());

        let listener_verifier = match &roots {
            Some(roots) => WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|err| TlsError::Config(format!("the CA: {err}")))?,
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let listener = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_client_cert_verifier(listener_verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|err| mismatch(err.to_string()))?;
        let mut web = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|err| mismatch(err.to_string()))?;
        web.alpn_protocols = vec![b"http/1.1".to_vec()];

        let (peer_dialer, client) = match (&roots, &files.ca) {
            (Some(roots), Some(ca)) => {
                let trust = format!("the CA in {}", shown(ca));
                let peer = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(config_err)?
                    .with_root_certificates(roots.clone())
                    .with_client_auth_cert(certs.clone(), key.clone_key())
                    .map_err(|err| mismatch(err.to_string()))?;
                let plain = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(config_err)?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                (
                    Some(ClientTls {
                        config: Arc::new(peer),
                        trust: trust.clone(),
                    }),
                    Some(ClientTls {
                        config: Arc::new(plain),
                        trust,
                    }),
                )
            }
            _ => (None, None),
        };
        let not_after = not_after(&certs[0]).map_err(|reason| TlsError::BadCertificate {
            path: shown(&files.cert),
            reason,
        })?;
        Ok(NodeTlsSet {
            listener: Arc::new(listener),
            web: Arc::new(web),
            peer_dialer,
            client,
            own: ClientTls::pinned(vec![certs[0].clone()]),
            not_after,
            subject: describe(&certs[0]),
        })
    }
}

/// What a file looked like when last loaded: a change to any of these
/// makes the watcher reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FileStamp(Vec<Option<(SystemTime, u64, u64)>>);

impl FileStamp {
    fn of(files: &NodeTlsFiles) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let paths = [Some(&files.cert), Some(&files.key), files.ca.as_ref()];
        FileStamp(
            paths
                .into_iter()
                .flatten()
                .map(|path| {
                    std::fs::metadata(path)
                        .ok()
                        .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len(), m.ino()))
                })
                .collect(),
        )
    }
}

/// A node's TLS: the current [`NodeTlsSet`], swapped whole on reload, and
/// the counts `/metrics` shows.
pub struct NodeTls {
    files: NodeTlsFiles,
    current: RwLock<Arc<NodeTlsSet>>,
    stamp: Mutex<FileStamp>,
    /// Successful reloads since start.
    pub reloads: AtomicU64,
    /// Reloads that failed (the old certificate stayed).
    pub reload_failures: AtomicU64,
    /// Inbound handshakes that failed (plain text, untrusted or no
    /// certificate, timeouts).
    pub handshake_failures: AtomicU64,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.files)
            .finish()
    }
}

impl NodeTls {
    /// Loads the files; fails (and the node does not start) when they are
    /// unreadable, not PEM, or the key does not match the certificate.
    pub fn load(files: NodeTlsFiles) -> Result<Arc<NodeTls>, TlsError> {
        let stamp = FileStamp::of(&files);
        let set = NodeTlsSet::load(&files)?;
        Ok(Arc::new(NodeTls {
            files,
            current: RwLock::new(Arc::new(set)),
            stamp: Mutex::new(stamp),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        }))
    }

    pub fn files(&self) -> &NodeTlsFiles {
        &self.files
    }

    /// The configs new connections use.
    pub fn current(&self) -> Arc<NodeTlsSet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the node can take and make peer links (it has a CA).
    pub fn takes_peers(&self) -> bool {
        self.files.ca.is_some()
    }

    /// Loads the files again and swaps the new configs in. On failure the
    /// old ones stay and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = FileStamp::of(&self.files);
        match NodeTlsSet::load(&self.files) {
            Ok(set) => {
                log::info!(
                    "TLS: loaded the certificate {} from {}",
                    set.subject,
                    self.files.cert.display(),
                );
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("TLS: reload failed, still serving the old certificate: {err}");
                Err(err)
            }
        }
    }

    /// Whether any file changed since the last load.
    fn changed(&self) -> bool {
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) != FileStamp::of(&self.files)
    }

    /// Seconds until the served certificate expires (negative once it has).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.current().not_after - now
    }

    /// Reloads on SIGHUP and whenever a file changes, looking every
    /// [`WATCH_INTERVAL`], on a thread of its own for the life of the
    /// process.
    pub fn watch(self: &Arc<Self>) -> io::Result<()> {
        let hangup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())?;
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("tls-watch".to_string())
            .spawn(move || loop {
                std::thread::sleep(WATCH_INTERVAL);
                let Some(tls) = weak.upgrade() else { return };
                let signalled = hangup.swap(false, Ordering::AcqRel);
                if signalled {
                    log::info!("TLS: SIGHUP: reloading {}", tls.files.cert.display());
                }
                if signalled || tls.changed() {
                    let _ = tls.reload();
                }
            })?;
        Ok(())
    }
}

/// Certificates for unit tests, made at run time (rcgen, a dev-dependency):
/// no key material is checked in.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };

    use super::NodeTlsFiles;

    /// A certificate authority.
    pub struct Ca {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        pub fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            Ca {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A server-and-client certificate for the IP addresses `ips`:
        /// (certificate PEM, key PEM).
        pub fn issue(&self, ips: &[&str]) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, ips.first().copied().unwrap_or("node"));
            params.distinguished_name = dn;
            params.subject_alt_names = ips
                .iter()
                .map(|ip| SanType::IpAddress(ip.parse().unwrap()))
                .collect();
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }

        /// Writes this CA (`<file>-ca.pem`) and a certificate for `ips`
        /// (`<file>.pem`, `<file>.key`) to `dir`: a node's files.
        pub fn node_files(&self, dir: &Path, file: &str, ips: &[&str]) -> NodeTlsFiles {
            let (cert, key) = self.issue(ips);
            let files = NodeTlsFiles {
                cert: dir.join(format!("{file}.pem")),
                key: dir.join(format!("{file}.key")),
                ca: Some(dir.join(format!("{file}-ca.pem"))),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            std::fs::write(files.ca.as_ref().unwrap(), &self.pem).unwrap();
            files
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(
            server_name("127.0.0.1:8046").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:8046").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("db.example:8046").unwrap(),
            ServerName::try_from("db.example").unwrap()
        );
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn a_certificate_for_another_name_is_explained_in_plain_words() {
        let err = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("127.0.62.2").unwrap(),
            presented: vec![
                "IpAddress(127.0.62.9)".to_string(),
                "DnsName(\"db.example\")".to_string(),
            ],
        };
        let text = explain_certificate(&err, "the CA in ca.pem", "server");
        assert!(
            text.starts_with(
                "the server's certificate is not valid for 127.0.62.2, the address or host \
                 dialled: it names the IP address 127.0.62.9, the DNS name db.example"
            ),
            "{text}"
        );
    }

    #[test]
    fn hostile_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert!(matches!(load_certs(&big), Err(TlsError::TooLarge { .. })));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"hello").unwrap();
        let err = load_certs(&junk).unwrap_err();
        assert!(err.to_string().contains("junk.pem"), "{err}");
        assert!(matches!(load_key(&junk), Err(TlsError::NoKey { .. })));
        let fake = dir.path().join("fake.pem");
        std::fs::write(
            &fake,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = load_certs(&fake).unwrap_err();
        assert!(matches!(err, TlsError::BadCertificate { .. }), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(matches!(load_roots(&missing), Err(TlsError::Read { .. })));
    }

    /// Handshakes over loopback that fail, and what each side says.
    mod explained {
        use std::sync::Arc;

        use futures::{AsyncReadExt, AsyncWriteExt};

        use super::super::testing::Ca;
        use super::super::{ClientTls, NodeTlsSet};
        use crate::runtime::conn::Conn;
        use crate::runtime::rt::{self, TcpListener, TcpStream};

        /// Dials a TLS server (its certificate from `set`) at `ip` trusting
        /// `tls`: (the dialler's error, the server's error).
        fn dial(ip: &str, set: &NodeTlsSet, tls: &ClientTls) -> (String, String) {
            rt::block_on(async {
                let listener = TcpListener::bind((ip, 0)).await.unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let config = set.listener.clone();
                let accept = rt::spawn(async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    Conn::accept_tls(tcp, config).await
                });
                let tcp = TcpStream::connect(&addr).await.unwrap();
                let dialed = Conn::connect_tls(tcp, &addr, tls).await;
                let accepted = accept.await;
                (dialed.unwrap_err(), accepted.unwrap_err())
            })
        }

        fn node(ip: &str, name: &str) -> (tempfile::TempDir, NodeTlsSet) {
            let dir = tempfile::tempdir().unwrap();
            let files = Ca::new(name).node_files(dir.path(), "n", &[ip]);
            (dir, NodeTlsSet::load(&files).unwrap())
        }

        #[test]
        fn an_unknown_issuer() {
            let ip = "127.0.64.210";
            let (_dir, set) = node(ip, "the server's CA");
            let (other_dir, _) = node(ip, "another CA");
            let tls = ClientTls::from_ca_file(&other_dir.path().join("n-ca.pem")).unwrap();
            let (dialer, server) = dial(ip, &set, &tls);
            assert!(
                dialer.contains("server's certificate is not signed by the CA in")
                    && dialer.contains("n-ca.pem")
                    && dialer.contains("unknown issuer"),
                "{dialer}"
            );
            assert!(server.contains("TLS alert"), "{server}");
        }

        #[test]
        fn a_wrong_name() {
            let ip = "127.0.64.211";
            // The certificate names another address than the one dialled.
            let (dir, set) = node("127.0.64.99", "name CA");
            let tls = ClientTls::from_ca_file(&dir.path().join("n-ca.pem")).unwrap();
            let (dialer, _) = dial(ip, &set, &tls);
            assert!(
                dialer.starts_with(
                    "the server's certificate is not valid for 127.0.64.211, the address or host \
                     dialled: it names the IP address 127.0.64.99"
                ),
                "{dialer}"
            );
        }

        /// A plain-text server: one that answers with text, and one that
        /// hangs up; and a plain-text client on a TLS port.
        #[test]
        fn plain_text_on_the_other_end() {
            let ip = "127.0.64.212";
            let (dir, set) = node(ip, "plain CA");
            let tls = ClientTls::from_ca_file(&dir.path().join("n-ca.pem")).unwrap();
            rt::block_on(async {
                for answer in [&b"HTTP/1.1 400 Bad Request\r\n\r\n"[..], b""] {
                    let listener = TcpListener::bind((ip, 0)).await.unwrap();
                    let addr = listener.local_addr().unwrap().to_string();
                    let server = rt::spawn(async move {
                        let (mut tcp, _) = listener.accept().await.unwrap();
                        let mut buf = [0u8; 512];
                        let _ = tcp.read(&mut buf).await;
                        let _ = tcp.write_all(answer).await;
                    });
                    let tcp = TcpStream::connect(&addr).await.unwrap();
                    let err = Conn::connect_tls(tcp, &addr, &tls).await.unwrap_err();
                    server.await;
                    if answer.is_empty() {
                        assert!(err.contains("closed the connection"), "{err}");
                    } else {
                        assert!(err.contains("does not speak TLS"), "{err}");
                    }
                }

                let listener = TcpListener::bind((ip, 0)).await.unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let config: Arc<rustls::ServerConfig> = set.listener.clone();
                let accept = rt::spawn(async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    Conn::accept_tls(tcp, config).await
                });
                let mut tcp = TcpStream::connect(&addr).await.unwrap();
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let err = accept.await.unwrap_err();
                assert!(err.contains("not a TLS client"), "{err}");
            });
        }
    }
}
