//! Peer link authentication: a mutual challenge–response on the cluster's
//! peer key, and a MAC on every frame after it.
//!
//! Anyone who can reach the `-l` port could otherwise speak the peer
//! protocol: ask for a snapshot (every file, protected ones included), send
//! one (and replace a store), or forge consensus messages. So a link is
//! accepted only from a node that proves it holds the key, and a dialer only
//! talks to a listener that proves the same:
//!
//! ```text
//! dialer                                           listener
//!   MAGIC, Hello { version, from, cluster, nonce_d } ──►
//!        ◄── Challenge { from, nonce_l, HMAC(K, "listener" ‖ T) }
//!   Proof { HMAC(K, "dialer" ‖ T) } ──►
//!   sealed frames ──►                    ◄── sealed keepalives
//! ```
//!
//! `T` (the transcript) hashes the hello exactly as it was sent and the
//! listener's id and nonce, so each proof is fresh for the side that checks
//! it (its own nonce is inside) and the two proofs differ by label, so one
//! cannot be reflected as the other. The key never travels.
//!
//! Every later frame carries a truncated HMAC of its body under a key derived
//! from `T` and a per-direction counter, so the rest of the connection is
//! bound to the handshake: a frame injected, replayed, reordered or moved from
//! another connection fails the check and ends the link.
//!
//! Without any secret the key is a fixed, public value: links still check
//! ids, nonces and frame integrity, but anyone can complete the handshake —
//! the peer plane is then exactly as open as the client plane.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::types::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a handshake proof (a full HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;
/// Bytes of the MAC that ends every frame after the handshake (HMAC-SHA256
/// truncated to 128 bits).
pub const TAG_BYTES: usize = 16;

/// The cluster's peer key.
#[derive(Clone)]
pub struct PeerKey {
    key: [u8; 32],
    configured: bool,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerKey")
            .field("configured", &self.configured)
            .finish_non_exhaustive()
    }
}

impl PeerKey {
    /// The key derived from a secret. An empty secret gives the public key of
    /// [`PeerKey::open`].
    pub fn from_secret(secret: &[u8]) -> PeerKey {
        let mut hash = Sha256::new();
        hash.update(b"doozer peer key v1\0");
        hash.update(secret);
        PeerKey {
            key: hash.finalize().into(),
            configured: !secret.is_empty(),
        }
    }

    /// The key of a cluster without secrets: known to everyone.
    pub fn open() -> PeerKey {
        PeerKey::from_secret(b"")
    }

    /// The peer key a server uses: `peer` (`DOOZER_PEERSECRET`) when set,
    /// else one derived from the client secrets, so a cluster with a secret
    /// has an authenticated peer plane without further setup.
    pub fn for_secrets(peer: &str, read_write: &str, read_only: &str) -> PeerKey {
        if !peer.is_empty() {
            return PeerKey::from_secret(format!("peer\0{peer}").as_bytes());
        }
        if read_write.is_empty() && read_only.is_empty() {
            return PeerKey::open();
        }
        PeerKey::from_secret(format!("rw\0{read_write}\0ro\0{read_only}").as_bytes())
    }

    /// Whether a secret was set (false: the public key).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    fn keyed(&self, label: &[u8], transcript: &Transcript) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(&transcript.0);
        mac
    }

    /// What the listener sends to prove it holds the key.
    pub fn listener_proof(&self, transcript: &Transcript) -> [u8; PROOF_BYTES] {
        self.keyed(b"listener proof", transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// What the dialer sends to prove it holds the key.
    pub fn dialer_proof(&self, transcript: &Transcript) -> [u8; PROOF_BYTES] {
        self.keyed(b"dialer proof", transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks the listener's proof, in constant time.
    pub fn check_listener_proof(&self, transcript: &Transcript, proof: &[u8]) -> bool {
        self.keyed(b"listener proof", transcript)
            .verify_slice(proof)
            .is_ok()
    }

    /// Checks the dialer's proof, in constant time.
    pub fn check_dialer_proof(&self, transcript: &Transcript, proof: &[u8]) -> bool {
        self.keyed(b"dialer proof", transcript)
            .verify_slice(proof)
            .is_ok()
    }

    /// The frame keys of one link: (dialer → listener, listener → dialer).
    pub fn link_keys(&self, transcript: &Transcript) -> (FrameSealer, FrameOpener) {
        let d2l = self.keyed(b"dialer to listener", transcript).finalize();
        let l2d = self.keyed(b"listener to dialer", transcript).finalize();
        (
            FrameSealer::new(&d2l.into_bytes()),
            FrameOpener::new(&l2d.into_bytes()),
        )
    }

    /// The listener's side of [`PeerKey::link_keys`]: it opens what the dialer
    /// seals and seals what the dialer opens.
    pub fn listener_link_keys(&self, transcript: &Transcript) -> (FrameSealer, FrameOpener) {
        let d2l = self.keyed(b"dialer to listener", transcript).finalize();
        let l2d = self.keyed(b"listener to dialer", transcript).finalize();
        (
            FrameSealer::new(&l2d.into_bytes()),
            FrameOpener::new(&d2l.into_bytes()),
        )
    }
}

/// A hash of everything both sides said before the proofs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transcript([u8; 32]);

impl Transcript {
    /// `hello_body` is the hello frame's body exactly as sent (it holds the
    /// dialer's id, cluster and nonce).
    pub fn new(hello_body: &[u8], listener: &NodeId, listener_nonce: &[u8]) -> Transcript {
        let mut hash = Sha256::new();
        hash.update(b"doozer peer link v2\0");
        hash.update((hello_body.len() as u64).to_be_bytes());
        hash.update(hello_body);
        hash.update(listener.as_str().as_bytes());
        hash.update((listener_nonce.len() as u64).to_be_bytes());
        hash.update(listener_nonce);
        Transcript(hash.finalize().into())
    }
}

/// A fresh random nonce (from the OS-seeded generator: only the runtime
/// calls this, never the core).
pub fn fresh_nonce() -> Vec<u8> {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    nonce.to_vec()
}

/// Why a frame was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("frame shorter than its MAC")]
    TooShort,
    #[error("frame MAC does not match (forged, replayed or corrupted)")]
    BadMac,
}

/// Adds a MAC to each frame one side sends.
pub struct FrameSealer {
    mac: HmacSha256,
    seq: u64,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    fn new(key: &[u8]) -> FrameSealer {
        FrameSealer {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
            seq: 0,
        }
    }

    /// Seals the frame that starts at `buf[start]` and runs to the end of
    /// `buf` (a 4-byte length header, then the body): appends the MAC and
    /// makes the header count it. The caller kept the body at least
    /// [`TAG_BYTES`] under the frame cap.
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) {
        let body = &buf[start + 4..];
        let tag = self.tag(body);
        let len = body.len() + TAG_BYTES;
        let len = u32::try_from(len).expect("frames are capped far below 4 GiB");
        buf.extend_from_slice(&tag);
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// A sealed frame with an empty body: a keepalive.
    pub fn keepalive(&mut self, buf: &mut Vec<u8>) {
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]);
        self.seal(buf, start);
    }

    fn tag(&mut self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(body);
        self.seq += 1;
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }
}

/// Checks the MAC of each frame the other side sent.
pub struct FrameOpener {
    mac: HmacSha256,
    seq: u64,
}

impl FrameOpener {
    fn new(key: &[u8]) -> FrameOpener {
        FrameOpener {
            mac: HmacSha256::new_from_slice(key).expect("HMAC takes any key length"),
            seq: 0,
        }
    }

    /// The body of a sealed frame (`frame` is what followed the length
    /// header), or why it is refused. An empty body is a keepalive.
    pub fn open<'a>(&mut self, frame: &'a [u8]) -> Result<&'a [u8], AuthError> {
        let Some(split) = frame.len().checked_sub(TAG_BYTES) else {
            return Err(AuthError::TooShort);
        };
        let (body, tag) = frame.split_at(split);
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| AuthError::BadMac)?;
        self.seq += 1;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        Transcript::new(b"hello body", &NodeId::from_bytes([1; 10]), &[7; 32])
    }

    #[test]
    fn proofs_check_only_under_the_same_key_and_transcript() {
        let key = PeerKey::for_secrets("", "sekrit", "");
        let t = transcript();
        assert!(key.check_listener_proof(&t, &key.listener_proof(&t)));
        assert!(key.check_dialer_proof(&t, &key.dialer_proof(&t)));
        // One side's proof is not the other's (no reflection).
        assert!(!key.check_dialer_proof(&t, &key.listener_proof(&t)));
        // Another key, another transcript, a truncated proof: refused.
        let other = PeerKey::for_secrets("", "guess", "");
        assert!(!key.check_dialer_proof(&t, &other.dialer_proof(&t)));
        let t2 = Transcript::new(b"hello body", &NodeId::from_bytes([1; 10]), &[8; 32]);
        assert!(!key.check_dialer_proof(&t2, &key.dialer_proof(&t)));
        assert!(!key.check_dialer_proof(&t, &key.dialer_proof(&t)[..16]));
        assert!(!key.check_dialer_proof(&t, b""));
    }

    #[test]
    fn keys_come_from_the_right_secret() {
        assert!(!PeerKey::open().is_configured());
        assert!(!PeerKey::for_secrets("", "", "").is_configured());
        assert!(PeerKey::for_secrets("", "", "ro").is_configured());
        assert!(PeerKey::for_secrets("p", "", "").is_configured());
        let t = transcript();
        let proof = |k: PeerKey| k.dialer_proof(&t);
        // The peer secret wins over the client secrets; rw and ro both count.
        assert_eq!(
            proof(PeerKey::for_secrets("p", "a", "b")),
            proof(PeerKey::for_secrets("p", "", ""))
        );
        assert_ne!(
            proof(PeerKey::for_secrets("", "a", "b")),
            proof(PeerKey::for_secrets("", "a", ""))
        );
        assert_ne!(
            proof(PeerKey::for_secrets("", "a", "")),
            proof(PeerKey::for_secrets("", "", "a"))
        );
        assert_ne!(
            proof(PeerKey::for_secrets("x", "", "")),
            proof(PeerKey::for_secrets("", "x", ""))
        );
        assert!(!format!("{:?}", PeerKey::from_secret(b"hidden")).contains("hidden"));
    }

    fn pair() -> (FrameSealer, FrameOpener, FrameSealer, FrameOpener) {
        let key = PeerKey::for_secrets("k", "", "");
        let t = transcript();
        let (d_seal, d_open) = key.link_keys(&t);
        let (l_seal, l_open) = key.listener_link_keys(&t);
        (d_seal, l_open, l_seal, d_open)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(body);
        buf
    }

    #[test]
    fn sealed_frames_open_in_order_both_ways() {
        let (mut d_seal, mut l_open, mut l_seal, mut d_open) = pair();
        for body in [&b"one"[..], b"", b"three"] {
            let mut buf = vec![9, 9];
            buf.extend(frame(body));
            d_seal.seal(&mut buf, 2);
            let len = u32::from_be_bytes(buf[2..6].try_into().unwrap()) as usize;
            assert_eq!(len, body.len() + TAG_BYTES);
            assert_eq!(l_open.open(&buf[6..]).unwrap(), body);
        }
        let mut buf = Vec::new();
        l_seal.keepalive(&mut buf);
        assert_eq!(buf.len(), 4 + TAG_BYTES);
        assert_eq!(d_open.open(&buf[4..]).unwrap(), b"");
    }

    #[test]
    fn forged_replayed_reordered_or_reflected_frames_are_refused() {
        let (mut d_seal, mut l_open, _, mut d_open) = pair();
        let mut first = frame(b"first");
        d_seal.seal(&mut first, 0);
        let mut second = frame(b"second");
        d_seal.seal(&mut second, 0);
        // Out of order.
        assert_eq!(l_open.open(&second[4..]), Err(AuthError::BadMac));
        assert_eq!(l_open.open(&first[4..]).unwrap(), b"first");
        // Replayed.
        assert_eq!(l_open.open(&first[4..]), Err(AuthError::BadMac));
        // A flipped bit.
        let mut bent = second.clone();
        bent[5] ^= 1;
        assert_eq!(l_open.open(&bent[4..]), Err(AuthError::BadMac));
        assert_eq!(l_open.open(&second[4..]).unwrap(), b"second");
        // Sent back the other way: another key.
        assert_eq!(d_open.open(&first[4..]), Err(AuthError::BadMac));
        // Too short to hold a MAC; a MAC-less frame under the open key.
        assert_eq!(l_open.open(&[1, 2, 3]), Err(AuthError::TooShort));
        let (_, mut open_a, _, _) = pair();
        let mut unsealed = frame(b"no mac here, just sixteen+ bytes");
        unsealed.truncate(unsealed.len());
        assert_eq!(open_a.open(&unsealed[4..]), Err(AuthError::BadMac));
    }
}
