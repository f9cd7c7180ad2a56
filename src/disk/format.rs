//! Byte layouts of the files in a data directory, as pure functions.
//!
//! All integers are little-endian; every checksum is CRC-32C (Castagnoli,
//! the `crc32c` crate: hardware-accelerated on x86-64 and aarch64, and a
//! better error-detecting polynomial than the zlib CRC-32 for the short
//! records a log is full of).
//!
//! ```text
//! segment  wal-<seq:016x>.log
//!   header (36 B): "DZWL" | version u32 | segment seq u64 | salt u64
//!                  | first batch seq u64 | crc32c(previous 32 bytes) u32
//!   batch  (20 B + payload): len u32 | batch seq u64
//!                  | hcrc u32 = crc32c(salt | len | seq)
//!                  | pcrc u32 = crc32c(salt | seq | len | payload) | payload
//! image    image-<seq:016x>.img   (the state before segment <seq>)
//!   "DZIM" | version u32 | segment seq u64 | next batch seq u64 | len u64
//!   | payload | crc32c(everything before) u32
//! identity IDENTITY
//!   "DZID" | version u32 | incarnation u64 | id_len u32 | id | cluster_len u32
//!   | cluster | crc32c(everything before) u32
//! ```
//!
//! The salt is random per segment and never leaves the node, so a client's
//! value that holds a copy of a well-formed batch (from any segment) can never
//! pass as one: both checksums cover the salt. The header checksum lets a
//! scan for "is there a valid batch after this bad one" reject almost every
//! offset after 20 bytes, so that scan is linear in the segment, whatever the
//! payloads hold.

use crc32c::{crc32c, crc32c_append};

/// Format version written in every header; others are refused as corrupt.
pub const VERSION: u32 = 1;
const SEG_MAGIC: &[u8; 4] = b"DZWL";
const IMG_MAGIC: &[u8; 4] = b"DZIM";
const ID_MAGIC: &[u8; 4] = b"DZID";

/// Bytes of a segment header.
pub const SEG_HEADER_LEN: usize = 36;
/// Bytes of a batch frame before its payload.
pub const FRAME_HEADER_LEN: usize = 20;
/// Bytes of an image file around its payload.
pub const IMAGE_OVERHEAD: usize = 36;

/// Largest batch payload: 1 GiB. `append` refuses a longer one with
/// `TooLarge`; a frame claiming more on disk is corrupt (never allocated).
pub const MAX_BATCH_BYTES: u64 = 1 << 30;
/// Largest id or cluster name in the identity file: 4 KiB each
/// (`write_identity` refuses longer with `TooLarge`).
pub const MAX_IDENTITY_FIELD: usize = 4096;
/// Largest identity file read (a bigger one is corrupt): both fields at
/// their maximum plus the fixed fields.
pub const MAX_IDENTITY_FILE: u64 = 2 * MAX_IDENTITY_FIELD as u64 + 64;

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegHeader {
    pub seg: u64,
    pub salt: u64,
    pub first_batch: u64,
}

pub fn encode_seg_header(h: &SegHeader) -> [u8; SEG_HEADER_LEN] {
    let mut b = [0u8; SEG_HEADER_LEN];
    b[0..4].copy_from_slice(SEG_MAGIC);
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&h.seg.to_le_bytes());
    b[16..24].copy_from_slice(&h.salt.to_le_bytes());
    b[24..32].copy_from_slice(&h.first_batch.to_le_bytes());
    let crc = crc32c(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `Err` says what is wrong with it.
pub fn decode_seg_header(b: &[u8]) -> Result<SegHeader, String> {
    if b.len() < SEG_HEADER_LEN {
        return Err(format!("segment header cut short ({} bytes)", b.len()));
    }
    if crc32c(&b[..32]) != u32_at(b, 32) {
        return Err("segment header checksum mismatch".into());
    }
    if &b[0..4] != SEG_MAGIC {
        return Err("not a log segment (bad magic)".into());
    }
    let v = u32_at(b, 4);
    if v != VERSION {
        return Err(format!("unknown segment format version {v}"));
    }
    Ok(SegHeader {
        seg: u64_at(b, 8),
        salt: u64_at(b, 16),
        first_batch: u64_at(b, 24),
    })
}

fn header_crc(salt: u64, len: u32, seq: u64) -> u32 {
    let mut h = [0u8; 20];
    h[0..8].copy_from_slice(&salt.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    crc32c(&h)
}

fn payload_crc(salt: u64, seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = [0u8; 20];
    h[0..8].copy_from_slice(&salt.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    crc32c_append(crc32c(&h), payload)
}

/// One batch frame, ready to append. The caller checked the length.
pub fn encode_frame(salt: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() as u64 <= MAX_BATCH_BYTES,
        "batch over MAX_BATCH_BYTES"
    );
    let len = payload.len() as u32;
    let mut b = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&header_crc(salt, len, seq).to_le_bytes());
    b.extend_from_slice(&payload_crc(salt, seq, len, payload).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// A frame read back: its sequence number and where its payload lies.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub payload: std::ops::Range<usize>,
}

/// Decodes the frame at `buf[at..]` if it is whole and both checksums hold
/// under `salt`. `None` for anything else (short, bad length, bad checksum):
/// the caller decides whether that is a torn tail or corruption.
pub fn decode_frame(buf: &[u8], at: usize, salt: u64) -> Option<Frame> {
    let rest = buf.len().checked_sub(at)?;
    if rest < FRAME_HEADER_LEN {
        return None;
    }
    let len = u32_at(buf, at);
    let seq = u64_at(buf, at + 4);
    if header_crc(salt, len, seq) != u32_at(buf, at + 12) {
        return None;
    }
    if u64::from(len) > MAX_BATCH_BYTES || len as usize > rest - FRAME_HEADER_LEN {
        return None;
    }
    let start = at + FRAME_HEADER_LEN;
    let payload = start..start + len as usize;
    if payload_crc(salt, seq, len, &buf[payload.clone()]) != u32_at(buf, at + 16) {
        return None;
    }
    Some(Frame { seq, payload })
}

/// A decoded image: which segment it precedes, the batch sequence number it
/// continues with, and its payload's place in the file.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub seg: u64,
    pub next_batch: u64,
    pub payload: std::ops::Range<usize>,
}

pub fn encode_image(seg: u64, next_batch: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(IMAGE_OVERHEAD + payload.len());
    b.extend_from_slice(IMG_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&seg.to_le_bytes());
    b.extend_from_slice(&next_batch.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_image(b: &[u8]) -> Result<ImageHeader, (u64, String)> {
    if b.len() < IMAGE_OVERHEAD {
        return Err((0, format!("image cut short ({} bytes)", b.len())));
    }
    let end = b.len() - 4;
    if crc32c(&b[..end]) != u32_at(b, end) {
        return Err((0, "image checksum mismatch".into()));
    }
    if &b[0..4] != IMG_MAGIC {
        return Err((0, "not an image (bad magic)".into()));
    }
    let v = u32_at(b, 4);
    if v != VERSION {
        return Err((4, format!("unknown image format version {v}")));
    }
    let len = u64_at(b, 24);
    if len != (b.len() - IMAGE_OVERHEAD) as u64 {
        return Err((24, format!("image length {len} does not match the file")));
    }
    Ok(ImageHeader {
        seg: u64_at(b, 8),
        next_batch: u64_at(b, 16),
        payload: 32..end,
    })
}

pub fn encode_identity(incarnation: u64, id: &str, cluster: &str) -> Vec<u8> {
    assert!(id.len() <= MAX_IDENTITY_FIELD && cluster.len() <= MAX_IDENTITY_FIELD);
    let mut b = Vec::with_capacity(32 + id.len() + cluster.len());
    b.extend_from_slice(ID_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&incarnation.to_le_bytes());
    b.extend_from_slice(&(id.len() as u32).to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(&(cluster.len() as u32).to_le_bytes());
    b.extend_from_slice(cluster.as_bytes());
    let crc = crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// `(incarnation, id, cluster)`, or the offset and what is wrong.
pub fn decode_identity(b: &[u8]) -> Result<(u64, String, String), (u64, String)> {
    if b.len() < 28 {
        return Err((0, format!("identity cut short ({} bytes)", b.len())));
    }
    let end = b.len() - 4;
    if crc32c(&b[..end]) != u32_at(b, end) {
        return Err((0, "identity checksum mismatch".into()));
    }
    if &b[0..4] != ID_MAGIC {
        return Err((0, "not an identity file (bad magic)".into()));
    }
    let v = u32_at(b, 4);
    if v != VERSION {
        return Err((4, format!("unknown identity format version {v}")));
    }
    let incarnation = u64_at(b, 8);
    let mut at = 16;
    let field = |at: &mut usize| -> Result<String, (u64, String)> {
        let off = *at as u64;
        if end - *at < 4 {
            return Err((off, "identity field cut short".into()));
        }
        let len = u32_at(b, *at) as usize;
        if len > MAX_IDENTITY_FIELD || len > end - *at - 4 {
            return Err((off, format!("identity field length {len} out of range")));
        }
        let s = std::str::from_utf8(&b[*at + 4..*at + 4 + len])
            .map_err(|_| (off, "identity field is not UTF-8".to_string()))?;
        *at += 4 + len;
        Ok(s.to_string())
    };
    let id = field(&mut at)?;
    let cluster = field(&mut at)?;
    if at != end {
        return Err((at as u64, "trailing bytes after the identity".into()));
    }
    Ok((incarnation, id, cluster))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_need_the_salt() {
        let f = encode_frame(7, 3, b"hello");
        let got = decode_frame(&f, 0, 7).expect("valid");
        assert_eq!(got.seq, 3);
        assert_eq!(&f[got.payload], b"hello");
        assert_eq!(decode_frame(&f, 0, 8), None);
        for cut in 0..f.len() {
            assert_eq!(decode_frame(&f[..cut], 0, 7), None);
        }
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert_eq!(decode_frame(&g, 0, 7), None, "flip at {i}");
        }
    }

    #[test]
    fn a_huge_length_is_rejected_without_allocating() {
        // A header whose checksum is right but whose length is 4 GiB - 1.
        let mut f = encode_frame(1, 1, b"");
        f[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let hcrc = header_crc(1, u32::MAX, 1);
        f[12..16].copy_from_slice(&hcrc.to_le_bytes());
        assert_eq!(decode_frame(&f, 0, 1), None);
    }

    #[test]
    fn headers_images_and_identities_round_trip() {
        let h = SegHeader {
            seg: 9,
            salt: 42,
            first_batch: 100,
        };
        assert_eq!(decode_seg_header(&encode_seg_header(&h)), Ok(h));
        let img = encode_image(5, 77, b"state");
        let d = decode_image(&img).expect("valid");
        assert_eq!(
            (d.seg, d.next_batch, &img[d.payload]),
            (5, 77, &b"state"[..])
        );
        let id = encode_identity(3, "node-a", "example");
        assert_eq!(
            decode_identity(&id),
            Ok((3, "node-a".to_string(), "example".to_string()))
        );
        for i in 0..id.len() {
            let mut g = id.clone();
            g[i] ^= 1;
            assert!(decode_identity(&g).is_err());
        }
    }
}
