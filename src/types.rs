//! Validated value types shared by every layer.
//!
//! Requests arrive as loose protobuf fields; they are turned into these types at
//! the edge so that the core and the store never see an unchecked path, a
//! sentinel rev or a raw node id string.

use std::fmt;
use std::sync::Arc;

/// A store revision: the number of the consensus slot that produced it.
///
/// Revs are consecutive from 1; rev 0 is the empty store before any slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev(pub i64);

impl Rev {
    /// The empty store's rev, and the file rev reported for an absent path.
    pub const ZERO: Rev = Rev(0);

    pub fn next(self) -> Rev {
        Rev(self.0 + 1)
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The rev sentinels of the wire protocol (reference §2.5).
pub mod sentinel {
    /// The path is absent (also: "create only" on SET).
    pub const MISSING: i64 = 0;
    /// Unconditional write.
    pub const CLOBBER: i64 = -1;
    /// The path is a directory.
    pub const DIR: i64 = -2;
}

/// The precondition of a SET or DEL, checked when the slot is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevCheck {
    /// `-1`: write whatever the path holds now (a directory still fails).
    Clobber,
    /// Any other number: the write succeeds when it is `>= ` the path's current
    /// rev (0 for absent, -2 for a directory, the file rev otherwise). So `0`
    /// means "create only", a file's rev means "unchanged since", and values
    /// `<= -2` can never match a file or an absent path.
    NotOlderThan(i64),
}

impl RevCheck {
    pub fn from_wire(rev: i64) -> RevCheck {
        if rev == sentinel::CLOBBER {
            RevCheck::Clobber
        } else {
            RevCheck::NotOlderThan(rev)
        }
    }

    pub fn to_wire(self) -> i64 {
        match self {
            RevCheck::Clobber => sentinel::CLOBBER,
            RevCheck::NotOlderThan(r) => r,
        }
    }

    /// Whether a write may proceed over a path whose current rev is `current`
    /// (in the sentinel encoding: 0 absent, -2 directory).
    pub fn admits(self, current: i64) -> bool {
        match self {
            RevCheck::Clobber => true,
            RevCheck::NotOlderThan(r) => r >= current,
        }
    }
}

/// The longest path accepted, in bytes (the whole text, leading `/` included).
///
/// Checked by [`Path::parse`], which both the client edge and the peer decoder
/// go through: a client's SET, DEL, GET or GETDIR with a longer path is
/// answered `BAD_PATH` and its STAT like an absent path (as for any invalid
/// path, reference §2.6); a peer message carrying one is refused as malformed.
///
/// 4 KiB is Linux's `PATH_MAX`. Doozer's own paths are under 64 bytes
/// (`/ctl/node/<16-character id>/applied` is 32) and real applications'
/// are of the same order, so no real user reaches it. It bounds what one path
/// costs everywhere it goes (decoding, the tree walk of an apply, every WAIT
/// glob matched against it), and the tree's depth: at most 2,048 components.
pub const MAX_PATH_BYTES: usize = 4096;

/// The longest glob accepted by WAIT and WALK, in bytes.
///
/// Checked by `Glob::parse` (src/store/glob.rs), at the client edge and in the
/// web view: a longer glob is answered `OTHER` with the detail
/// `invalid glob pattern: ...` (the code of any invalid glob, reference §2.6),
/// the pattern itself not echoed. Matching a glob costs, per byte of path, one
/// step over 64-bit words of state, one word per 64 glob elements; so this
/// caps one match at `(MAX_PATH_BYTES + 1) × 65` word steps (a fraction of a
/// millisecond) and a compiled glob at about 9 bytes per pattern byte. The
/// same value as [`MAX_PATH_BYTES`], so that every valid path is also a valid
/// (literal) glob; real globs are a few dozen bytes.
pub const MAX_GLOB_BYTES: usize = 4096;

/// Why a string is not a valid path or glob.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("bad path")]
    BadPath,
    #[error("bad path: {len} bytes, longer than the limit of {MAX_PATH_BYTES}")]
    PathTooLong { len: usize },
    #[error("invalid glob pattern: {0}")]
    BadGlob(String),
    #[error("invalid glob pattern: {len} bytes, longer than the limit of {MAX_GLOB_BYTES}")]
    GlobTooLong { len: usize },
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// A store path: `/`, or `/`-separated non-empty components of ASCII letters,
/// digits, `.` and `-` (reference §3.1). Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(Arc<str>);

impl Path {
    pub fn root() -> Path {
        Path(Arc::from("/"))
    }

    /// Checks the syntax and the length limit ([`MAX_PATH_BYTES`]).
    pub fn parse(text: &str) -> Result<Path, PathError> {
        if text.len() > MAX_PATH_BYTES {
            return Err(PathError::PathTooLong { len: text.len() });
        }
        if Self::syntax_ok(text) {
            Ok(Path(Arc::from(text)))
        } else {
            Err(PathError::BadPath)
        }
    }

    /// The check of reference §3.1, `^/$|^(/[a-zA-Z0-9.\-]+)+$`, and the
    /// length limit [`MAX_PATH_BYTES`].
    pub fn is_valid(text: &str) -> bool {
        text.len() <= MAX_PATH_BYTES && Self::syntax_ok(text)
    }

    fn syntax_ok(text: &str) -> bool {
        if text == "/" {
            return true;
        }
        // One pass over the bytes (this runs for every path a client or a
        // peer sends): a '/' must start the text and every name, and no
        // name may be empty.
        let bytes = text.as_bytes();
        if bytes.first() != Some(&b'/') {
            return false;
        }
        let mut previous = b'/';
        for &b in &bytes[1..] {
            if b == b'/' {
                if previous == b'/' {
                    return false;
                }
            } else if !is_name_byte(b) {
                return false;
            }
            previous = b;
        }
        previous != b'/'
    }

    /// A path the store rebuilt from its own entry names, which all came
    /// from parsed paths: the syntax is checked again (an invariant), the
    /// length is not, so that the store never depends on the limit.
    pub(crate) fn from_store(text: &str) -> Path {
        assert!(Self::syntax_ok(text), "store paths are valid: {text:?}");
        Path(Arc::from(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// The components below the root, in order (none for `/`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The path of `name` inside this directory.
    pub fn join(&self, name: &str) -> Result<Path, PathError> {
        let text = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        Path::parse(&text)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({:?})", &*self.0)
    }
}

impl AsRef<str> for Path {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A node's identity: 80 random bits as 16 characters of RFC 4648 base32.
///
/// Kept as its 16 ASCII characters inline: ids are cloned, compared and
/// dropped several times per write (the origin of every decree, the sender
/// of every message, the acknowledgers of every slot), and inline that is
/// a 16-byte copy and one 128-bit comparison, where a shared string was an
/// atomic count and a `memcmp` call, and decoding one needed a cache of
/// recent ids to avoid an allocation per decree.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeId([u8; NodeId::LEN]);

/// Ordered as the text is: the characters are ASCII, so comparing the 16
/// bytes as one big-endian number is comparing them in order.
impl Ord for NodeId {
    fn cmp(&self, other: &NodeId) -> std::cmp::Ordering {
        u128::from_be_bytes(self.0).cmp(&u128::from_be_bytes(other.0))
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &NodeId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Default for NodeId {
    /// The all-zero id (used only as a placeholder before a node has one).
    fn default() -> Self {
        NodeId::from_bytes([0; 10])
    }
}

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl NodeId {
    /// Characters in an id.
    pub const LEN: usize = 16;

    /// Encodes 10 bytes (80 bits) as 16 base32 characters, no padding.
    pub fn from_bytes(bytes: [u8; 10]) -> NodeId {
        let mut bits: u128 = 0;
        for b in bytes {
            bits = (bits << 8) | u128::from(b);
        }
        let mut text = [0u8; NodeId::LEN];
        for (i, c) in text.iter_mut().enumerate() {
            let shift = 75 - 5 * i;
            *c = BASE32_ALPHABET[((bits >> shift) & 31) as usize];
        }
        NodeId(text)
    }

    /// Accepts any 16-character base32 string (as another node would write it).
    pub fn parse(text: &str) -> Option<NodeId> {
        // The alphabet is A-Z and 2-7 (a range test per byte: this runs
        // for every decree a peer sends).
        let ok = text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
        let bytes: [u8; NodeId::LEN] = text.as_bytes().try_into().ok()?;
        ok.then_some(NodeId(bytes))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an id is built from base32 characters")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.as_str())
    }
}

/// A file body. Shared, never copied on the way from the store to a reply.
pub type Body = Arc<[u8]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_syntax_follows_reference() {
        for ok in ["/", "/a", "/a/b", "/a.b-c/..", "/ctl/node/ABC/addr", "/A9"] {
            assert!(Path::is_valid(ok), "{ok}");
        }
        for bad in [
            "", "a", "/a/", "//", "/a//b", "/a b", "/a_b", "/é", "/a:b", "/a=b", "/*",
        ] {
            assert!(!Path::is_valid(bad), "{bad}");
        }
    }

    /// The one-pass check agrees with the reference's pattern, written
    /// here the plain way, on every text of up to six bytes over an
    /// alphabet that covers each case.
    #[test]
    fn path_check_agrees_with_the_pattern_on_every_short_text() {
        let by_pattern = |text: &str| {
            text == "/"
                || text.strip_prefix('/').is_some_and(|rest| {
                    rest.split('/')
                        .all(|name| !name.is_empty() && name.bytes().all(is_name_byte))
                })
        };
        let alphabet = ["/", "a", ".", "_", "é"];
        let mut texts = vec![String::new()];
        for _ in 0..6 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            for text in texts.iter().chain(&longer) {
                assert_eq!(Path::is_valid(text), by_pattern(text), "{text:?}");
            }
            texts = longer;
        }
    }

    #[test]
    fn path_components_and_join() {
        let p = Path::parse("/a/b").unwrap();
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(Path::root().components().count(), 0);
        assert_eq!(Path::root().join("x").unwrap().as_str(), "/x");
        assert_eq!(p.join("c").unwrap().as_str(), "/a/b/c");
        assert!(p.join("c/").is_err());
    }

    #[test]
    fn rev_check_matches_reference_table() {
        // cur: 0 absent, -2 directory, 5 a file at rev 5.
        let admits = |wire: i64, cur: i64| RevCheck::from_wire(wire).admits(cur);
        assert!(admits(-1, 0) && admits(-1, 5) && admits(-1, -2));
        assert!(admits(0, 0) && !admits(0, 5));
        assert!(admits(5, 5) && admits(6, 5) && !admits(4, 5) && admits(1, 0));
        assert!(!admits(-2, 0) && !admits(-2, 5) && admits(-2, -2) && !admits(-3, -2));
        assert_eq!(RevCheck::from_wire(-1), RevCheck::Clobber);
        assert_eq!(RevCheck::from_wire(7).to_wire(), 7);
    }

    #[test]
    fn node_id_is_16_base32_chars() {
        let id = NodeId::from_bytes([0; 10]);
        assert_eq!(id.as_str(), "AAAAAAAAAAAAAAAA");
        let id = NodeId::from_bytes([0xff; 10]);
        assert_eq!(id.as_str(), "7777777777777777");
        // 0x00..0x09: RFC 4648 encodes 00 01 02 03 04 as "AAAQEAYE".
        let id = NodeId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(&id.as_str()[..8], "AAAQEAYE");
        assert!(NodeId::parse(id.as_str()).is_some());
        assert!(NodeId::parse("abc").is_none());
        assert!(
            NodeId::parse("AAAAAAAAAAAAAAAAA").is_none(),
            "17 characters"
        );
        assert!(NodeId::parse("AAAAAAAAAAAAAAA1").is_none(), "not base32");
        assert!(NodeId::parse("aaaaaaaaaaaaaaaa").is_none(), "lower case");
    }

    #[test]
    fn node_ids_order_as_their_text() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        let mut ids: Vec<NodeId> = (0..2_000)
            .map(|_| NodeId::from_bytes(rng.random()))
            .collect();
        // Ids that share long prefixes, where the order is decided late.
        ids.extend((0..=255u8).map(|b| NodeId::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, b])));
        for pair in ids.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(a.cmp(b), a.as_str().cmp(b.as_str()), "{a} vs {b}");
            assert_eq!(a == b, a.as_str() == b.as_str());
            assert_eq!(NodeId::parse(a.as_str()).as_ref(), Some(a));
        }
        let mut by_id = ids.clone();
        by_id.sort();
        let mut by_text = ids;
        by_text.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(by_id, by_text);
    }
}
