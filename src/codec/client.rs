//! The client protocol: hand-derived prost messages that mirror
//! `proto/doozer.proto` (so no `protoc` is needed; `tests/wire.rs` checks the two
//! agree) and the length-prefixed framing.
//!
//! prost's own `encode_length_delimited` writes a varint prefix, which is not
//! doozer's framing: frames here are a 4-byte big-endian length read as a signed
//! number, then the message.

use futures::{AsyncRead, AsyncReadExt};
use prost::Message;

use crate::core::{Outcome, Reply};
use crate::error::{ErrCode, ReplyError};
use crate::store::EventKind;

/// The `Request.Verb` enum of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Verb {
    Get = 1,
    Set = 2,
    Del = 3,
    Rev = 5,
    Wait = 6,
    Nop = 7,
    Walk = 9,
    Getdir = 14,
    Stat = 16,
    SelfId = 20,
    Access = 99,
    /// Our extension: the whole tree at one rev, streamed (see
    /// `proto/doozer.proto` and `runtime::client_conn`).
    Snapshot = 100,
}

/// Client → server message. Every field is optional, as in proto2; an unknown
/// verb number is kept as a number and answered `UNKNOWN_VERB`.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(int32, optional, tag = "1")]
    pub tag: Option<i32>,
    #[prost(enumeration = "Verb", optional, tag = "2")]
    pub verb: Option<i32>,
    #[prost(string, optional, tag = "4")]
    pub path: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub value: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "6")]
    pub other_tag: Option<i32>,
    #[prost(int32, optional, tag = "7")]
    pub offset: Option<i32>,
    #[prost(int64, optional, tag = "9")]
    pub rev: Option<i64>,
}

/// Server → client message. (`len` is the protocol's field name; the derive
/// makes it a getter, which is not a collection length.)
#[allow(clippy::len_without_is_empty)]
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(int32, optional, tag = "1")]
    pub tag: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub flags: Option<i32>,
    #[prost(int64, optional, tag = "3")]
    pub rev: Option<i64>,
    #[prost(string, optional, tag = "5")]
    pub path: Option<String>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub value: Option<Vec<u8>>,
    #[prost(int32, optional, tag = "8")]
    pub len: Option<i32>,
    #[prost(int32, optional, tag = "100")]
    pub err_code: Option<i32>,
    #[prost(string, optional, tag = "101")]
    pub err_detail: Option<String>,
}

impl Response {
    /// An error reply for `tag`, with the detail only for `OTHER`.
    pub fn error(tag: Option<i32>, err: &ReplyError) -> Response {
        Response {
            tag,
            err_code: Some(err.code as i32),
            err_detail: err.detail.clone(),
            ..Response::default()
        }
    }

    /// The reply's error, if it carries one.
    pub fn reply_error(&self) -> Option<ReplyError> {
        let code = self.err_code?;
        let code = ErrCode::from_wire(code).unwrap_or(ErrCode::Other);
        Some(ReplyError {
            code,
            detail: self.err_detail.clone(),
        })
    }
}

/// The two fields of a [`Response`] that say which request it answers and
/// whether it failed, decoded without the rest: prost skips the other
/// fields (path, value, …) without allocating for them. A load generator
/// reads every reply this way and decodes the whole [`Response`] only for
/// the rare error it wants to show.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct ReplyHead {
    #[prost(int32, optional, tag = "1")]
    pub tag: Option<i32>,
    #[prost(int32, optional, tag = "100")]
    pub err_code: Option<i32>,
}

/// The frame for the core's answer to the request tagged `tag`.
pub fn response(tag: Option<i32>, outcome: &Outcome) -> Response {
    let reply = match outcome {
        Ok(reply) => reply,
        Err(err) => return Response::error(tag, err),
    };
    let mut r = Response {
        tag,
        ..Response::default()
    };
    match reply {
        Reply::Done => {}
        Reply::Rev(rev) => r.rev = Some(rev.0),
        Reply::Value { rev, body } => {
            r.rev = Some(rev.0);
            r.value = Some(body.to_vec());
        }
        Reply::Event {
            path,
            rev,
            body,
            kind,
        } => {
            r.flags = Some(match kind {
                EventKind::Set => flags::SET,
                EventKind::Del => flags::DEL,
                EventKind::Nop => flags::NOP,
            });
            r.rev = Some(rev.0);
            r.path = Some(path.to_string());
            r.value = Some(body.to_vec());
        }
        Reply::Name(name) => r.path = Some(name.clone()),
        Reply::Stat { len, rev } => {
            r.rev = Some(*rev);
            r.len = Some((*len).clamp(0, i64::from(i32::MAX)) as i32);
        }
        // The connection task streams a SNAPSHOT's files itself (one frame
        // per file, then the DONE frame) and never asks for this frame; were
        // it sent, it would read as the DONE frame of an empty listing.
        Reply::Tree(tree) => {
            r.flags = Some(flags::DONE);
            r.rev = Some(tree.rev().0);
            r.len = Some(0);
        }
    }
    r
}

/// Flags of a WAIT or WALK reply (reference §2.6), and of SNAPSHOT's frames
/// (each file `SET`, the last frame `DONE`).
pub mod flags {
    pub const NOP: i32 = 0;
    /// The original's `Done` flag: SNAPSHOT's last frame (rev = the tree's
    /// rev, len = files sent).
    pub const DONE: i32 = 2;
    pub const SET: i32 = 4;
    pub const DEL: i32 = 8;
}

/// Bytes of the length header.
pub const HEADER_BYTES: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (header and body in a single buffer, so one
/// write puts the whole frame on the wire).
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + msg.encoded_len());
    encode_frame_into(msg, &mut out);
    out
}

/// Appends `msg` as one frame to `out`.
pub fn encode_frame_into<M: Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(HEADER_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(out).expect("a Vec grows as needed");
}

/// Checks a frame header: the length it announces, or why it is refused.
/// Checked before anything is allocated for the body.
pub fn frame_len(header: [u8; HEADER_BYTES], max_frame_bytes: usize) -> Result<usize, FrameError> {
    let len = i32::from_be_bytes(header);
    if len < 0 {
        return Err(FrameError::NegativeLength(len));
    }
    let len = len as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLong {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len)
}

/// Reads a frame's 4-byte header. `Ok(None)` is a clean end of stream before
/// its first byte. (The listener reads a connection's first header itself, to
/// tell clients from peers, and passes it to [`read_body`].)
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<[u8; HEADER_BYTES]>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = reader.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    Ok(Some(header))
}

/// Reads the body of the frame whose header is `header`, after checking it.
pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: [u8; HEADER_BYTES],
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = frame_len(header, max_frame_bytes)?;
    read_len(reader, len).await
}

/// Bytes reserved up front for a frame body; more is allocated only as the
/// bytes actually arrive, so a sender announcing a large frame and sending
/// nothing holds no more than this.
const INITIAL_BODY_BYTES: usize = 64 * 1024;

/// Reads exactly `len` bytes (a length already checked against the cap);
/// `Truncated` when the stream ends first.
pub async fn read_len<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_BYTES));
    let got = reader.take(len as u64).read_to_end(&mut body).await?;
    if got < len {
        return Err(FrameError::Truncated);
    }
    Ok(body)
}

/// Reads one frame's body. `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    match read_header(reader).await? {
        None => Ok(None),
        Some(header) => read_body(reader, header, max_frame_bytes).await.map(Some),
    }
}

/// Reads and decodes one message frame.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<M>, FrameError> {
    match read_frame(reader, max_frame_bytes).await? {
        None => Ok(None),
        Some(body) => Ok(Some(M::decode(body.as_slice())?)),
    }
}

/// Reads and decodes the message whose header was already read.
pub async fn read_message_after<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    header: [u8; HEADER_BYTES],
    max_frame_bytes: usize,
) -> Result<M, FrameError> {
    let body = read_body(reader, header, max_frame_bytes).await?;
    Ok(M::decode(body.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        assert_eq!(frame_len([0, 0, 0, 8], 100).unwrap(), 8);
        assert!(matches!(
            frame_len([0xff, 0xff, 0xff, 0xff], 100),
            Err(FrameError::NegativeLength(-1))
        ));
        assert!(matches!(
            frame_len([0, 0, 1, 0], 100),
            Err(FrameError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn reply_head_reads_tag_and_error_only() {
        let full = Response {
            tag: Some(7),
            flags: Some(flags::SET),
            rev: Some(42),
            path: Some("/some/path".into()),
            value: Some(vec![b'v'; 300]),
            len: Some(3),
            err_code: Some(ErrCode::RevMismatch as i32),
            err_detail: Some("detail".into()),
        };
        let head = ReplyHead::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            head,
            ReplyHead {
                tag: Some(7),
                err_code: Some(ErrCode::RevMismatch as i32)
            }
        );
        let ok = Response {
            tag: Some(1),
            rev: Some(5),
            ..Response::default()
        };
        let head = ReplyHead::decode(ok.encode_to_vec().as_slice()).unwrap();
        assert_eq!((head.tag, head.err_code), (Some(1), None));
        assert!(ReplyHead::decode(&[0x0a, 0xff][..]).is_err(), "a cut field");
    }

    #[test]
    fn frames_round_trip() {
        let req = Request {
            tag: Some(3),
            verb: Some(Verb::Set as i32),
            path: Some("/a".into()),
            value: Some(b"x".to_vec()),
            rev: Some(-1),
            ..Request::default()
        };
        let frame = encode_frame(&req);
        let mut reader = futures::io::Cursor::new(frame);
        let back: Request = futures::executor::block_on(read_message(&mut reader, 1024))
            .unwrap()
            .unwrap();
        assert_eq!(back, req);
        let end: Option<Request> =
            futures::executor::block_on(read_message(&mut reader, 1024)).unwrap();
        assert!(end.is_none());
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut reader = futures::io::Cursor::new(vec![0, 0, 0, 9, 1, 2]);
        let got = futures::executor::block_on(read_frame(&mut reader, 1024));
        assert!(matches!(got, Err(FrameError::Truncated)));
        let mut reader = futures::io::Cursor::new(vec![0, 0]);
        let got = futures::executor::block_on(read_frame(&mut reader, 1024));
        assert!(matches!(got, Err(FrameError::Truncated)));
    }

    #[test]
    fn a_header_read_apart_continues_the_frame() {
        let req = Request {
            tag: Some(1),
            verb: Some(Verb::Rev as i32),
            ..Request::default()
        };
        let frame = encode_frame(&req);
        let mut reader = futures::io::Cursor::new(frame);
        let header = futures::executor::block_on(read_header(&mut reader))
            .unwrap()
            .unwrap();
        let back: Request =
            futures::executor::block_on(read_message_after(&mut reader, header, 1024)).unwrap();
        assert_eq!(back, req);
        let got = futures::executor::block_on(read_header(&mut reader)).unwrap();
        assert!(got.is_none());
    }
}
