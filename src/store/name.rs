//! An entry name inside a directory of the tree, stored inline when short.
//!
//! Why: the tree holds one name per file, and nearly every name is short
//! (`/ctl/cal/0`, `/bench/12345`, a service's name). As an `Arc<str>` each
//! cost a 32-byte allocation on top of its 16-byte slot in the directory;
//! up to [`INLINE_BYTES`] bytes it now lives in the slot itself, which is
//! still 16 bytes. Longer names (a node id is 16 characters) keep one
//! shared allocation.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The longest name kept inline: what fits in 16 bytes beside a length byte
/// and the variant's tag.
pub const INLINE_BYTES: usize = 14;

/// A directory entry's name. Compares, orders and borrows as the `str` it
/// holds, so a directory keyed by it is looked up with a `&str`.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; INLINE_BYTES],
    },
    /// A thin pointer (so the whole name stays 16 bytes).
    Shared(Arc<Box<str>>),
}

impl Name {
    /// The name's bytes, without the UTF-8 check [`Name::as_str`] makes:
    /// what the tree's lookups compare (a name orders as its bytes).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(text) => text.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("built from a str")
            }
            Repr::Shared(text) => text,
        }
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        if text.len() <= INLINE_BYTES {
            let mut bytes = [0; INLINE_BYTES];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            let len = u8::try_from(text.len()).expect("at most INLINE_BYTES");
            Name(Repr::Inline { len, bytes })
        } else {
            Name(Repr::Shared(Arc::new(Box::from(text))))
        }
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Lookups on the write path borrow as bytes (no UTF-8 check per
/// comparison); `str` and `[u8]` order alike.
impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_sixteen_bytes_and_orders_as_its_text() {
        assert_eq!(std::mem::size_of::<Name>(), 16);
        let texts = ["", "a", "ab", "b", "12345678901234", "123456789012345", "z"];
        for a in texts {
            assert_eq!(Name::from(a).as_str(), a);
            assert_eq!(Name::from(a).as_bytes(), a.as_bytes());
            for b in texts {
                assert_eq!(Name::from(a).cmp(&Name::from(b)), a.cmp(b), "{a} {b}");
                assert_eq!(Name::from(a) == Name::from(b), a == b);
            }
        }
    }
}
