//! The peer protocol: how nodes talk to each other over TCP.
//!
//! Peers share the client port. A connection whose first 4 bytes are
//! [`MAGIC`] is a peer link: the dialer then sends one [`Hello`] frame, the
//! listener answers with a [`Challenge`], the dialer with a [`Proof`]
//! (the handshake of [`super::peer_auth`]), and after it the dialer sends
//! [`PeerMsg`] frames for as long as the link lives while the listener sends
//! nothing (an older doozerd sent keepalives, which dialers still take);
//! every frame after the handshake ends with a MAC
//! ([`super::peer_auth::TAG_BYTES`]) and an empty body is a keepalive. Each frame is a 4-byte big-endian length and then the
//! bincode 2 encoding (`config::standard()`: varints, little endian) of the
//! message. The length is checked against a cap before anything is allocated
//! for the body, and every length inside a message against the bytes left
//! in the frame ([`FrameDecode`]), so a hostile length cannot make us
//! reserve more than the frame could hold; bincode's claim limit
//! ([`DECODE_LIMIT`]) bounds a whole message on top of that.
//!
//! `MAGIC` read as a client frame length is 0x445A5052 (about 1.07 GiB); client
//! frames are capped below 1 GiB (`Config::validate`), so no client frame can
//! start with it.
//!
//! The `Encode`/`Decode` impls are written here by hand, at the edge, so the
//! core's types carry no codec attributes and the two that must be validated
//! ([`NodeId`], [`Path`]) are checked on the way in. Enums and structs are
//! listed once, field by field, in [`wire_enum!`]/[`wire_struct!`] tables with
//! explicit variant numbers: when a message gains a field the tables stop
//! compiling (every pattern and constructor is exhaustive), and adding it to
//! the list is the whole change.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{AllowedEnumVariants, DecodeError, EncodeError};
use bincode::{Decode, Encode};
use futures::AsyncRead;

use crate::core::{Decree, Durable, NodeImage, PeerMsg, SnapshotData};
use crate::paxos::{Ballot, Durable as AcceptorRecord, Msg};
use crate::store::Mutation;
use crate::types::{NodeId, Path, Rev, RevCheck, MAX_PATH_BYTES};

/// The first 4 bytes of every peer connection.
pub const MAGIC: [u8; 4] = *b"DZPR";

/// Bytes of a frame's length header.
pub const HEADER_BYTES: usize = 4;

/// The version of this protocol, sent in [`Hello`]; a link whose version
/// differs is refused. Version 2 added the authenticated handshake, 3 the
/// read index (`Confirm`, `Confirmed`, `ReadIndex`, `ReadIndexIs`).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest [`Hello`] frame accepted (a node id and a cluster name).
pub const MAX_HELLO_BYTES: usize = 4096;

/// The most memory one frame may make the decoder claim (bincode counts the
/// in-memory size of everything it builds, containers before they are
/// filled). `Config::validate` keeps frames at half of this or less so that
/// any honest frame decodes.
pub const DECODE_LIMIT: usize = 1 << 30;

/// The bincode configuration of every peer frame.
pub type WireConfig = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT>>;

pub fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// The first frame of a link, after [`MAGIC`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    /// The dialing node.
    pub from: NodeId,
    /// Its cluster name (`-c`); a listener of another cluster hangs up.
    pub cluster: String,
    /// The dialer's fresh nonce ([`super::peer_auth::NONCE_BYTES`]).
    pub nonce: Vec<u8>,
}

/// The listener's answer to a [`Hello`]: who it is, its own nonce, and its
/// proof that it holds the peer key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub from: NodeId,
    pub nonce: Vec<u8>,
    pub proof: Vec<u8>,
}

/// The dialer's proof that it holds the peer key; the last handshake frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub proof: Vec<u8>,
}

/// Largest [`Challenge`] or [`Proof`] frame accepted.
pub const MAX_HANDSHAKE_BYTES: usize = 1024;

/// Why a peer frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PeerFrameError {
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

// ---------------------------------------------------------------------------
// Framing

/// Appends `value` as one frame (length header, then bincode) to `out`.
/// Refuses, leaving `out` as it was, a body longer than `max_frame_bytes`.
fn encode_frame_into<T: Encode>(
    value: &T,
    out: &mut Vec<u8>,
    max_frame_bytes: usize,
) -> Result<usize, PeerFrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    // Writing into a Vec cannot fail, and our impls return no errors of
    // their own; the only failure left would be a bug.
    bincode::encode_into_std_write(value, out, wire_config())
        .expect("encoding into a Vec cannot fail");
    let len = out.len() - start - HEADER_BYTES;
    let max = max_frame_bytes.min(u32::MAX as usize);
    if len > max {
        out.truncate(start);
        return Err(PeerFrameError::TooLong { len, max });
    }
    out[start..start + HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(HEADER_BYTES + len)
}

/// Appends `msg` as one frame to `out` and returns the frame's size, or
/// refuses a message whose encoding exceeds `max_frame_bytes` (leaving `out`
/// untouched): the receiver would drop the link for it.
pub fn encode_peer_frame_into(
    msg: &PeerMsg,
    out: &mut Vec<u8>,
    max_frame_bytes: usize,
) -> Result<usize, PeerFrameError> {
    encode_frame_into(msg, out, max_frame_bytes)
}

/// `msg` as one frame, with no size cap (tests, tools).
pub fn encode_peer_frame(msg: &PeerMsg) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(msg, &mut out, usize::MAX).expect("no cap");
    out
}

/// What a dialer writes first: [`MAGIC`], then the [`Hello`] frame.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    encode_frame_into(hello, &mut out, usize::MAX).expect("no cap");
    out
}

/// The hello frame's body within what [`encode_hello`] returned (what the
/// handshake's transcript hashes).
pub fn hello_body(encoded: &[u8]) -> &[u8] {
    &encoded[MAGIC.len() + HEADER_BYTES..]
}

/// One handshake frame ([`Challenge`], [`Proof`]), with no size cap.
pub fn encode_handshake<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(value, &mut out, usize::MAX).expect("no cap");
    out
}

/// Reads one handshake frame ([`Challenge`] or [`Proof`]); the end of the
/// stream is truncation.
pub async fn read_handshake<T: Decode<()>, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<T, PeerFrameError> {
    match read_frame(reader, MAX_HANDSHAKE_BYTES).await? {
        None => Err(PeerFrameError::Truncated),
        Some(body) => decode_body(&body),
    }
}

/// Decodes one frame's body, which must be exactly one value.
pub fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, PeerFrameError> {
    let (value, used) = bincode::decode_from_slice(body, wire_config())?;
    if used != body.len() {
        return Err(PeerFrameError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

/// Decodes one [`PeerMsg`] body.
pub fn decode_peer_msg(body: &[u8]) -> Result<PeerMsg, PeerFrameError> {
    decode_body(body)
}

/// Peer frames share the client framing; its errors in peer terms.
fn from_client_frame(err: crate::codec::client::FrameError) -> PeerFrameError {
    match err {
        crate::codec::client::FrameError::Truncated => PeerFrameError::Truncated,
        crate::codec::client::FrameError::Io(io) => PeerFrameError::Io(io),
        other => PeerFrameError::Io(std::io::Error::other(other.to_string())),
    }
}

/// Reads a 4-byte header (the same framing as client frames).
async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<[u8; HEADER_BYTES]>, PeerFrameError> {
    crate::codec::client::read_header(reader)
        .await
        .map_err(from_client_frame)
}

/// Reads a frame's 4-byte header. `Ok(None)` is a clean end of stream
/// between frames.
pub async fn read_frame_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<[u8; HEADER_BYTES]>, PeerFrameError> {
    read_header(reader).await
}

/// Reads exactly `len` body bytes (a length the caller checked against its
/// cap), growing the buffer only as bytes arrive.
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Vec<u8>, PeerFrameError> {
    crate::codec::client::read_len(reader, len)
        .await
        .map_err(from_client_frame)
}

/// Reads one frame's body. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Vec<u8>>, PeerFrameError> {
    let Some(header) = read_header(reader).await? else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(header) as usize;
    if len > max_frame_bytes {
        return Err(PeerFrameError::TooLong {
            len,
            max: max_frame_bytes,
        });
    }
    crate::codec::client::read_len(reader, len)
        .await
        .map(Some)
        .map_err(from_client_frame)
}

/// Reads and decodes one [`PeerMsg`] frame. `Ok(None)` is a clean end of
/// stream between frames.
pub async fn read_peer_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<PeerMsg>, PeerFrameError> {
    match read_frame(reader, max_frame_bytes).await? {
        None => Ok(None),
        Some(body) => decode_peer_msg(&body).map(Some),
    }
}

/// Reads the [`Hello`] frame that follows [`MAGIC`] (which the caller has
/// already consumed), with its body as received (for the handshake's
/// transcript). A link that ends before it is truncated.
pub async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Hello, Vec<u8>), PeerFrameError> {
    match read_frame(reader, MAX_HELLO_BYTES).await? {
        None => Err(PeerFrameError::Truncated),
        Some(body) => Ok((decode_body(&body)?, body)),
    }
}

// ---------------------------------------------------------------------------
// Lengths bounded by the frame

/// How every field of a peer message or a data-dir record is decoded: like
/// bincode's own `Decode`, except that a length (of a list, a body, a
/// string) is checked against the bytes left in the frame before anything
/// is allocated for it.
///
/// Why: bincode sizes a `Vec` or a body from the length it reads, bounded
/// only by the configured claim limit ([`DECODE_LIMIT`], 1 GiB), so a
/// ten-byte frame claiming a 500 MB body made the node allocate 500 MB
/// before finding out. Every element takes at least one byte on the wire,
/// so a length larger than the bytes left is a lie, refused at once; what a
/// frame can make us allocate is then bounded by its own size (times the
/// in-memory size of one element).
///
/// Decoding runs on a frame in memory ([`decode_body`]): a reader that
/// cannot tell how much is left (bincode's `peek_read` returning `None`)
/// has every non-empty length refused.
pub trait FrameDecode: Sized {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError>;
}

/// Types whose decoding allocates nothing sized by the input (or checks its
/// own bound, as [`Path`] and [`NodeId`] do): their bincode `Decode`.
macro_rules! frame_decode_as_decode {
    ($($t:ty),* $(,)?) => {
        $(
            impl FrameDecode for $t {
                fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
                    <$t as Decode<D::Context>>::decode(decoder)
                }
            }
        )*
    };
}

frame_decode_as_decode!(u8, u32, u64, i64, bool, Rev, Path, NodeId);

/// Reads a length and checks that `len` bytes are left in the frame (the
/// least that `len` elements, or `len` bytes, take).
fn decode_frame_len<D: Decoder>(decoder: &mut D) -> Result<usize, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len).map_err(|_| DecodeError::Other(LONGER_THAN_FRAME))?;
    if len > 0 && decoder.reader().peek_read(len).is_none() {
        return Err(DecodeError::Other(LONGER_THAN_FRAME));
    }
    Ok(len)
}

/// The error of a length that the rest of the frame cannot hold.
pub const LONGER_THAN_FRAME: &str = "a length longer than the rest of the frame";

impl<T: FrameDecode> FrameDecode for Vec<T> {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_frame_len(decoder)?;
        // The claim limit still bounds the whole message's memory.
        decoder.claim_container_read::<T>(len)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            // Each element claims what it holds itself (as bincode does).
            decoder.unclaim_bytes_read(std::mem::size_of::<T>());
            items.push(T::frame_decode(decoder)?);
        }
        Ok(items)
    }
}

/// A value's body: copied once, straight from the frame.
impl FrameDecode for std::sync::Arc<[u8]> {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_frame_len(decoder)?;
        decoder.claim_bytes_read(len)?;
        let reader = decoder.reader();
        let body = std::sync::Arc::from(reader.peek_read(len).unwrap_or_default());
        reader.consume(len);
        Ok(body)
    }
}

impl FrameDecode for String {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = decode_frame_len(decoder)?;
        decoder.claim_bytes_read(len)?;
        let reader = decoder.reader();
        let bytes = reader.peek_read(len).unwrap_or_default().to_vec();
        reader.consume(len);
        String::from_utf8(bytes).map_err(|err| DecodeError::Utf8 {
            inner: err.utf8_error(),
        })
    }
}

impl<T: FrameDecode> FrameDecode for Option<T> {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        match u8::decode(decoder)? {
            0 => Ok(None),
            1 => T::frame_decode(decoder).map(Some),
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "Option<T>",
                allowed: &AllowedEnumVariants::Range { min: 0, max: 1 },
                found: u32::from(found),
            }),
        }
    }
}

impl<T: FrameDecode> FrameDecode for Box<T> {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        T::frame_decode(decoder).map(Box::new)
    }
}

impl<A: FrameDecode, B: FrameDecode> FrameDecode for (A, B) {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok((A::frame_decode(decoder)?, B::frame_decode(decoder)?))
    }
}

impl<A: FrameDecode, B: FrameDecode, C: FrameDecode> FrameDecode for (A, B, C) {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok((
            A::frame_decode(decoder)?,
            B::frame_decode(decoder)?,
            C::frame_decode(decoder)?,
        ))
    }
}

impl<A: FrameDecode, B: FrameDecode, C: FrameDecode, E: FrameDecode> FrameDecode for (A, B, C, E) {
    fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok((
            A::frame_decode(decoder)?,
            B::frame_decode(decoder)?,
            C::frame_decode(decoder)?,
            E::frame_decode(decoder)?,
        ))
    }
}

// ---------------------------------------------------------------------------
// Encode / Decode

/// `Encode`, `Decode` and `BorrowDecode` for an enum, variant by variant with
/// explicit wire numbers. Variants are `N => Name`, `N => Name { fields }` or
/// `N => Name(bindings)`; fields are encoded in the order listed.
macro_rules! wire_enum {
    (
        $name:ident $(<$g:ident>)? {
            $( $idx:literal => $var:ident
                $( { $($f:ident),* $(,)? } )?
                $( ( $($t:ident),* $(,)? ) )?
            ),* $(,)?
        }
    ) => {
        impl$(<$g: Encode>)? Encode for $name$(<$g>)? {
            fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
                match self {
                    $(
                        $name::$var $( { $($f),* } )? $( ( $($t),* ) )? => {
                            Encode::encode(&($idx as u32), encoder)?;
                            $( $( Encode::encode($f, encoder)?; )* )?
                            $( $( Encode::encode($t, encoder)?; )* )?
                        }
                    )*
                }
                Ok(())
            }
        }

        impl<Ctx $(, $g: FrameDecode)?> Decode<Ctx> for $name$(<$g>)? {
            fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
                let variant = <u32 as Decode<Ctx>>::decode(decoder)?;
                Ok(match variant {
                    $(
                        $idx => $name::$var
                            $( { $($f: FrameDecode::frame_decode(decoder)?),* } )?
                            $( ( $( wire_field!($t, decoder) ),* ) )?,
                    )*
                    found => {
                        return Err(DecodeError::UnexpectedVariant {
                            type_name: stringify!($name),
                            allowed: &AllowedEnumVariants::Allowed(&[$($idx),*]),
                            found,
                        })
                    }
                })
            }
        }

        impl<'de, Ctx $(, $g: FrameDecode)?> bincode::BorrowDecode<'de, Ctx> for $name$(<$g>)? {
            fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Ctx>>(
                decoder: &mut D,
            ) -> Result<Self, DecodeError> {
                Decode::decode(decoder)
            }
        }

        impl$(<$g: FrameDecode>)? FrameDecode for $name$(<$g>)? {
            fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
                Decode::decode(decoder)
            }
        }
    };
}

/// One positional field of a tuple variant (the binding name only drives the
/// macro repetition).
macro_rules! wire_field {
    ($t:ident, $decoder:ident) => {{
        let _ = stringify!($t);
        FrameDecode::frame_decode($decoder)?
    }};
}

/// `Encode`, `Decode` and `BorrowDecode` for a struct, fields in the order
/// listed (the destructuring is exhaustive, so a new field must be listed).
macro_rules! wire_struct {
    ($name:ident { $($f:ident),* $(,)? }) => {
        impl Encode for $name {
            fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
                let $name { $($f),* } = self;
                $( Encode::encode($f, encoder)?; )*
                Ok(())
            }
        }

        impl<Ctx> Decode<Ctx> for $name {
            fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
                Ok($name { $($f: FrameDecode::frame_decode(decoder)?),* })
            }
        }

        bincode::impl_borrow_decode!($name);

        impl FrameDecode for $name {
            fn frame_decode<D: Decoder>(decoder: &mut D) -> Result<Self, DecodeError> {
                Decode::decode(decoder)
            }
        }
    };
}

wire_enum!(PeerMsg {
    0 => Paxos(msg),
    1 => Alive { applied, addr },
    2 => CatchUp { from, addr },
    3 => Decided { first, decrees },
    4 => Snapshot(snapshot),
    5 => LeaderIs { leader, addr },
    6 => SnapshotChunk { index, done, data },
    7 => SnapshotNext { rev, index },
    8 => ReadIndex { ask, ballot },
    9 => ReadIndexIs { ask, index },
});

wire_enum!(Msg<V> {
    0 => PreVote { round, commit },
    1 => PreVoteReply { round, granted, commit },
    2 => Prepare { ballot, from_slot },
    3 => Promise { ballot, from_slot, accepted, commit },
    4 => Accept { ballot, first_slot, values, commit },
    5 => Accepted { ballot, first_slot, last_slot },
    6 => Reject { promised, commit },
    7 => Commit { ballot, commit },
    8 => Forward { values },
    9 => Confirm { ballot, probe, commit },
    10 => Confirmed { ballot, probe },
});

wire_enum!(Decree {
    0 => Fill,
    1 => Write { origin, seq, floor, mutation },
});

wire_enum!(Mutation {
    0 => Set { path, check, body },
    1 => Del { path, check },
    2 => Nop,
});

wire_enum!(RevCheck {
    0 => Clobber,
    1 => NotOlderThan(rev),
});

wire_struct!(Ballot { round, leader });

// The data dir's records (see `codec::durable`): the same encodings as on
// the wire, so a value is one format everywhere.
wire_enum!(AcceptorRecord<V> {
    0 => Promised(ballot),
    1 => Accepted { ballot, values },
});

wire_enum!(Durable {
    0 => Acceptor(record),
    1 => Decided { first, decrees },
});

wire_struct!(NodeImage {
    snapshot,
    promised,
    accepted,
});

wire_struct!(SnapshotData {
    rev,
    files,
    membership,
    dedupe,
});

wire_struct!(Hello {
    version,
    from,
    cluster,
    nonce,
});

wire_struct!(Challenge { from, nonce, proof });

wire_struct!(Proof { proof });

impl Encode for Rev {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Ctx> Decode<Ctx> for Rev {
    fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Rev(i64::decode(decoder)?))
    }
}
bincode::impl_borrow_decode!(Rev);

impl Encode for Path {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_str().encode(encoder)
    }
}

/// A path is checked like one from a client: a peer cannot plant a name the
/// store would refuse.
impl<Ctx> Decode<Ctx> for Path {
    fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // Checked where it was read, then one allocation for the path
        // itself: every decree names one, so a `String` first would cost a
        // second allocation and copy per write.
        decode_bounded_str(decoder, MAX_PATH_BYTES, "invalid path", |text| {
            Path::parse(text).map_err(|_| DecodeError::Other("invalid path"))
        })
    }
}

/// Strings up to this many bytes are read into the stack (most paths and
/// every node id); longer ones into a buffer of their exact length.
const INLINE_STR_BYTES: usize = 64;

/// Reads a bincode string (length, then bytes) of at most `max` bytes and
/// hands it to `make`: a longer one is refused as `what` before any byte of
/// it is read, so the length a peer sends never sizes more than `max`.
fn decode_bounded_str<D: Decoder, T>(
    decoder: &mut D,
    max: usize,
    what: &'static str,
    make: impl FnOnce(&str) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let len = u64::decode(decoder)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(DecodeError::Other(what))?;
    decoder.claim_bytes_read(len)?;
    let mut inline = [0u8; INLINE_STR_BYTES];
    let mut spilled = Vec::new();
    let bytes = if len <= INLINE_STR_BYTES {
        &mut inline[..len]
    } else {
        spilled.resize(len, 0);
        &mut spilled[..]
    };
    decoder.reader().read(bytes)?;
    make(std::str::from_utf8(bytes).map_err(|inner| DecodeError::Utf8 { inner })?)
}
bincode::impl_borrow_decode!(Path);

impl Encode for NodeId {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_str().encode(encoder)
    }
}

impl<Ctx> Decode<Ctx> for NodeId {
    fn decode<D: Decoder<Context = Ctx>>(decoder: &mut D) -> Result<Self, DecodeError> {
        decode_bounded_str(decoder, NodeId::LEN, "invalid node id", |text| {
            NodeId::parse(text).ok_or(DecodeError::Other("invalid node id"))
        })
    }
}
bincode::impl_borrow_decode!(NodeId);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::types::Body;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 10])
    }

    fn path(p: &str) -> Path {
        Path::parse(p).unwrap()
    }

    fn body(bytes: &[u8]) -> Body {
        Arc::from(bytes)
    }

    fn write(n: u64, mutation: Mutation) -> Decree {
        Decree::Write {
            origin: id(n as u8),
            seq: n,
            floor: n.saturating_sub(3),
            mutation,
        }
    }

    fn ballot(round: u64, n: u8) -> Ballot {
        Ballot::new(round, id(n))
    }

    fn every_message() -> Vec<PeerMsg> {
        let set = Mutation::Set {
            path: path("/a/b"),
            check: RevCheck::NotOlderThan(7),
            body: body(b"hello"),
        };
        let del = Mutation::Del {
            path: path("/ctl/node/X"),
            check: RevCheck::Clobber,
        };
        let decrees = vec![
            Decree::Fill,
            write(1, set.clone()),
            write(2, del.clone()),
            write(3, Mutation::Nop),
            write(
                u64::MAX,
                Mutation::Set {
                    path: Path::root(),
                    check: RevCheck::NotOlderThan(i64::MIN),
                    body: body(b""),
                },
            ),
        ];
        let paxos = vec![
            Msg::PreVote {
                round: 3,
                commit: 99,
            },
            Msg::PreVoteReply {
                round: 3,
                granted: true,
                commit: -1,
            },
            Msg::Prepare {
                ballot: ballot(4, 1),
                from_slot: 17,
            },
            Msg::Promise {
                ballot: ballot(4, 1),
                from_slot: 17,
                accepted: vec![
                    (17, ballot(2, 3), decrees[1].clone()),
                    (18, Ballot::ZERO, Decree::Fill),
                ],
                commit: 16,
            },
            Msg::Accept {
                ballot: ballot(u64::MAX, 2),
                first_slot: i64::MAX - 5,
                values: decrees.clone(),
                commit: i64::MIN,
            },
            Msg::Accepted {
                ballot: ballot(4, 1),
                first_slot: 1,
                last_slot: 1000,
            },
            Msg::Reject {
                promised: ballot(9, 9),
                commit: 0,
            },
            Msg::Commit {
                ballot: ballot(4, 1),
                commit: 12,
            },
            Msg::Forward { values: vec![] },
            Msg::Forward {
                values: decrees.clone(),
            },
            Msg::Confirm {
                ballot: ballot(4, 1),
                probe: u64::MAX,
                commit: 12,
            },
            Msg::Confirmed {
                ballot: ballot(4, 1),
                probe: 0,
            },
        ];
        let mut all: Vec<PeerMsg> = paxos.into_iter().map(PeerMsg::Paxos).collect();
        all.extend([
            PeerMsg::Alive {
                applied: Rev(42),
                addr: "127.0.0.2:8046".into(),
            },
            PeerMsg::CatchUp {
                from: Rev(0),
                addr: "127.0.0.1:8046".into(),
            },
            PeerMsg::Decided {
                first: Rev(5),
                decrees: decrees.clone(),
            },
            PeerMsg::Decided {
                first: Rev(-3),
                decrees: vec![],
            },
            PeerMsg::Snapshot(Box::new(SnapshotData {
                rev: Rev(100),
                files: vec![
                    (path("/a"), Rev(3), body(b"x")),
                    (path("/b/c"), Rev(99), body(&[0, 255, 7])),
                ],
                membership: vec![(1, vec![id(1)]), (50, vec![id(1), id(2), id(3)])],
                dedupe: vec![
                    (id(1), 10, vec![11, 13], Rev(7)),
                    (id(2), 0, vec![], Rev(0)),
                ],
            })),
            PeerMsg::Snapshot(Box::new(SnapshotData {
                rev: Rev(0),
                files: vec![],
                membership: vec![],
                dedupe: vec![],
            })),
            PeerMsg::SnapshotChunk {
                index: 0,
                done: false,
                data: Box::new(SnapshotData {
                    rev: Rev(100),
                    files: vec![(path("/a"), Rev(3), body(b"x"))],
                    membership: vec![],
                    dedupe: vec![],
                }),
            },
            PeerMsg::SnapshotChunk {
                index: u64::MAX,
                done: true,
                data: Box::new(SnapshotData {
                    rev: Rev(100),
                    files: vec![],
                    membership: vec![(1, vec![id(1)])],
                    dedupe: vec![(id(1), 10, vec![11, 13], Rev(9))],
                }),
            },
            PeerMsg::SnapshotNext {
                rev: Rev(100),
                index: 7,
            },
            PeerMsg::ReadIndex {
                ask: 9,
                ballot: ballot(4, 1),
            },
            PeerMsg::ReadIndexIs {
                ask: u64::MAX,
                index: Rev(77),
            },
        ]);
        all
    }

    fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Option<PeerMsg>, PeerFrameError>> {
        let mut reader = futures::io::Cursor::new(bytes);
        let mut got = Vec::new();
        loop {
            let r = futures::executor::block_on(read_peer_frame(&mut reader, max));
            let stop = !matches!(r, Ok(Some(_)));
            got.push(r);
            if stop {
                return got;
            }
        }
    }

    #[test]
    fn every_variant_round_trips() {
        let msgs = every_message();
        let mut stream = Vec::new();
        for msg in &msgs {
            let frame = encode_peer_frame(msg);
            assert_eq!(
                frame[..HEADER_BYTES],
                ((frame.len() - HEADER_BYTES) as u32).to_be_bytes()
            );
            assert_eq!(&decode_peer_msg(&frame[HEADER_BYTES..]).unwrap(), msg);
            let n = encode_peer_frame_into(msg, &mut stream, 1 << 20).unwrap();
            assert_eq!(n, frame.len());
        }
        let got = read_all(stream, 1 << 20);
        assert_eq!(got.len(), msgs.len() + 1);
        for (got, want) in got.iter().zip(&msgs) {
            assert_eq!(got.as_ref().unwrap().as_ref().unwrap(), want);
        }
        assert!(matches!(got.last(), Some(Ok(None))));
    }

    #[test]
    fn a_one_mebibyte_body_round_trips() {
        let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7) as u8).collect();
        let msg = PeerMsg::Paxos(Msg::Accept {
            ballot: ballot(1, 1),
            first_slot: 1,
            values: vec![write(
                1,
                Mutation::Set {
                    path: path("/big"),
                    check: RevCheck::Clobber,
                    body: body(&big),
                },
            )],
            commit: 0,
        });
        let frame = encode_peer_frame(&msg);
        assert!(frame.len() < (1 << 20) + 256, "{}", frame.len());
        let got = read_all(frame, (1 << 20) + 1024);
        assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap(), &msg);
        // The default frame cap leaves room for it.
        let limits = crate::config::Limits::default();
        let mut out = Vec::new();
        encode_peer_frame_into(&msg, &mut out, limits.max_peer_frame_bytes).unwrap();
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let msg = PeerMsg::Decided {
            first: Rev(1),
            decrees: vec![write(1, Mutation::Nop); 100],
        };
        let mut out = vec![1, 2, 3];
        let err = encode_peer_frame_into(&msg, &mut out, 50).unwrap_err();
        assert!(
            matches!(err, PeerFrameError::TooLong { max: 50, .. }),
            "{err}"
        );
        assert_eq!(out, [1, 2, 3]);
    }

    /// A node id or path that the types would refuse is refused on decode.
    #[test]
    fn invalid_ids_and_paths_are_rejected() {
        // Encode with plain strings where the types would be, then decode.
        let cfg = wire_config();
        // Alive is variant 1; CatchUp 2. Use Hello for the node id.
        let bad_hello = bincode::encode_to_vec(
            (PROTOCOL_VERSION, "not-a-node-id!!!", "c", Vec::<u8>::new()),
            cfg,
        )
        .unwrap();
        let err = decode_body::<Hello>(&bad_hello).unwrap_err();
        assert!(err.to_string().contains("invalid node id"), "{err}");
        let lower = bincode::encode_to_vec(
            (PROTOCOL_VERSION, "aaaaaaaaaaaaaaaa", "c", Vec::<u8>::new()),
            cfg,
        )
        .unwrap();
        assert!(decode_body::<Hello>(&lower).is_err());
        // Too long or too short: refused before the bytes are read.
        for wrong_length in ["AAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAA", ""] {
            let hello = bincode::encode_to_vec(
                (PROTOCOL_VERSION, wrong_length, "c", Vec::<u8>::new()),
                cfg,
            )
            .unwrap();
            let err = decode_body::<Hello>(&hello).unwrap_err();
            assert!(err.to_string().contains("invalid node id"), "{err}");
        }
        let good = bincode::encode_to_vec(
            (PROTOCOL_VERSION, "AAAAAAAAAAAAAAAA", "c", vec![1u8, 2]),
            cfg,
        )
        .unwrap();
        assert_eq!(decode_body::<Hello>(&good).unwrap().from, id(0));

        // Decided { first, [Write { origin, seq, floor, Set { path, .. } }] }
        let decided = |path: &str| {
            bincode::encode_to_vec(
                (
                    3u32,
                    1i64,
                    1u64,
                    (
                        1u32,
                        "AAAAAAAAAAAAAAAA",
                        1u64,
                        0u64,
                        (0u32, path, 0u32, b"v".to_vec()),
                    ),
                ),
                cfg,
            )
            .unwrap()
        };
        let msg = decode_peer_msg(&decided("/ok")).unwrap();
        assert!(matches!(msg, PeerMsg::Decided { ref decrees, .. } if decrees.len() == 1));
        for bad in ["", "a", "/a/", "//", "/a b", "/é"] {
            let err = decode_peer_msg(&decided(bad)).unwrap_err();
            assert!(err.to_string().contains("invalid path"), "{bad:?}: {err}");
        }
        // An unknown variant number is an error, not a panic.
        let unknown = bincode::encode_to_vec(77u32, cfg).unwrap();
        assert!(matches!(
            decode_peer_msg(&unknown),
            Err(PeerFrameError::Decode(DecodeError::UnexpectedVariant {
                found: 77,
                ..
            }))
        ));
        // Bytes after the message are refused.
        let mut trailing = encode_peer_frame(&PeerMsg::Alive {
            applied: Rev(1),
            addr: String::new(),
        });
        trailing.push(0);
        assert!(matches!(
            decode_peer_msg(&trailing[HEADER_BYTES..]),
            Err(PeerFrameError::TrailingBytes(1))
        ));
    }

    /// Attack 2 of issue 9 from the peer side: a path past the byte limit
    /// (here 8,000 components) is refused at decode, like from a client.
    #[test]
    fn over_long_paths_are_rejected_at_decode() {
        let cfg = wire_config();
        // Decided { first, [Write { origin, seq, floor, Set { path, .. } }] }
        let decided = |path: &str| {
            let set = (0u32, path, 0u32, b"v".to_vec());
            let write = (1u32, "AAAAAAAAAAAAAAAA", 1u64, 0u64, set);
            bincode::encode_to_vec((3u32, 1i64, 1u64, write), cfg).unwrap()
        };
        let limit = crate::types::MAX_PATH_BYTES;
        let at_limit = format!("/{}", "a".repeat(limit - 1));
        assert!(decode_peer_msg(&decided(&at_limit)).is_ok());
        for bad in [format!("{at_limit}b"), "/a".repeat(8000)] {
            let err = decode_peer_msg(&decided(&bad)).unwrap_err();
            assert!(err.to_string().contains("invalid path"), "{err}");
        }
    }

    #[test]
    fn over_cap_length_is_rejected_before_reading_the_body() {
        // Announces 2 GiB and sends nothing more: refused from the header.
        let got = read_all(vec![0x80, 0, 0, 0], 1 << 20);
        assert!(matches!(
            got[0],
            Err(PeerFrameError::TooLong {
                len: 0x8000_0000,
                max: 1_048_576
            })
        ));
        let got = read_all(vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], usize::MAX);
        // Under an unlimited cap the body is only read as it arrives.
        assert!(matches!(got[0], Err(PeerFrameError::Truncated)));
    }

    /// The error of a frame whose lengths claim more than it holds.
    fn longer_than_frame(result: Result<PeerMsg, PeerFrameError>) -> bool {
        matches!(
            result,
            Err(PeerFrameError::Decode(DecodeError::Other(
                LONGER_THAN_FRAME
            )))
        )
    }

    /// A `Decided` frame (first rev 1) whose decree list has `count` entries
    /// and holds one `Set` of a body claimed `body_len` bytes long (and
    /// holding none).
    fn decided_claiming(count: u64, body_len: u64) -> Vec<u8> {
        let set = (
            1u32,
            "AAAAAAAAAAAAAAAA",
            1u64,
            0u64,
            (0u32, "/a", 0u32, body_len),
        );
        bincode::encode_to_vec((3u32, 1i64, count, set), wire_config()).unwrap()
    }

    #[test]
    fn counts_and_lengths_beyond_the_frame_are_refused_before_allocating() {
        // Below the claim limit, these were allocated in full by bincode
        // before the frame ran out: 0.5 GiB of decree slots, a 500 MB body.
        let count = (DECODE_LIMIT / std::mem::size_of::<Decree>() / 2) as u64;
        assert!(longer_than_frame(decode_peer_msg(&decided_claiming(
            count, 1
        ))));
        assert!(longer_than_frame(decode_peer_msg(&decided_claiming(
            1,
            500 << 20
        ))));
        // Far above it, the same.
        assert!(longer_than_frame(decode_peer_msg(&decided_claiming(
            1 << 60,
            1
        ))));
        assert!(longer_than_frame(decode_peer_msg(&decided_claiming(
            1,
            1 << 40
        ))));
        // A string (an address) and a snapshot's file list likewise.
        let alive = bincode::encode_to_vec((1u32, 5i64, 400u64 << 20), wire_config()).unwrap();
        assert!(longer_than_frame(decode_peer_msg(&alive)));
        let snapshot = bincode::encode_to_vec((4u32, 7i64, 300u64 << 20), wire_config()).unwrap();
        assert!(longer_than_frame(decode_peer_msg(&snapshot)));
        // One byte short of an honest body is refused; the honest one decodes.
        let mut honest = decided_claiming(1, 3);
        honest.extend_from_slice(b"abc");
        let PeerMsg::Decided { decrees, .. } = decode_peer_msg(&honest).unwrap() else {
            panic!("a Decided frame");
        };
        assert!(matches!(
            &decrees[..],
            [Decree::Write { mutation: Mutation::Set { body, .. }, .. }] if &body[..] == b"abc"
        ));
        honest.pop();
        assert!(longer_than_frame(decode_peer_msg(&honest)));
    }

    /// Options decode as bincode's: a tag byte of 0 or 1, anything else
    /// refused.
    #[test]
    fn a_ballot_leader_tag_other_than_0_or_1_is_refused() {
        let ballot = Ballot {
            round: 3,
            leader: Some(id(1)),
        };
        let mut bytes = bincode::encode_to_vec(&ballot, wire_config()).unwrap();
        assert_eq!(decode_body::<Ballot>(&bytes).unwrap(), ballot);
        bytes[1] = 2;
        assert!(decode_body::<Ballot>(&bytes).is_err());
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = encode_peer_frame(&every_message()[4]);
        for cut in 1..frame.len() {
            let got = read_all(frame[..cut].to_vec(), 1 << 20);
            assert!(
                matches!(got[0], Err(PeerFrameError::Truncated)),
                "cut at {cut}: {:?}",
                got[0]
            );
        }
        // A complete header with a body that is too short for the message.
        let mut short = frame[HEADER_BYTES..frame.len() - 3].to_vec();
        let mut framed = (short.len() as u32).to_be_bytes().to_vec();
        framed.append(&mut short);
        let got = read_all(framed, 1 << 20);
        assert!(matches!(got[0], Err(PeerFrameError::Decode(_))));
        // An empty frame is not a message either.
        let got = read_all(vec![0, 0, 0, 0], 1 << 20);
        assert!(matches!(got[0], Err(PeerFrameError::Decode(_))));
    }

    #[test]
    fn hello_round_trips_after_the_magic() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            from: id(5),
            cluster: "prod-east".into(),
            nonce: vec![3; 32],
        };
        let bytes = encode_hello(&hello);
        assert_eq!(bytes[..4], MAGIC);
        let mut reader = futures::io::Cursor::new(bytes[4..].to_vec());
        let (back, body) = futures::executor::block_on(read_hello(&mut reader)).unwrap();
        assert_eq!(back, hello);
        assert_eq!(body, hello_body(&bytes));
        // The other two handshake frames round-trip too.
        let challenge = Challenge {
            from: id(6),
            nonce: vec![4; 32],
            proof: vec![5; 32],
        };
        let mut reader = futures::io::Cursor::new(encode_handshake(&challenge));
        let back: Challenge = futures::executor::block_on(read_handshake(&mut reader)).unwrap();
        assert_eq!(back, challenge);
        let proof = Proof { proof: vec![6; 32] };
        let mut reader = futures::io::Cursor::new(encode_handshake(&proof));
        let back: Proof = futures::executor::block_on(read_handshake(&mut reader)).unwrap();
        assert_eq!(back, proof);
        // A hello that is too large is refused from its header.
        let big = Hello {
            cluster: "x".repeat(MAX_HELLO_BYTES),
            ..hello
        };
        let bytes = encode_hello(&big);
        let mut reader = futures::io::Cursor::new(bytes[4..].to_vec());
        assert!(matches!(
            futures::executor::block_on(read_hello(&mut reader)),
            Err(PeerFrameError::TooLong { .. })
        ));
        // The magic can never be a client frame length.
        let as_len = i32::from_be_bytes(MAGIC);
        assert!(as_len > 0 && as_len as usize >= 1 << 30);
    }
}
