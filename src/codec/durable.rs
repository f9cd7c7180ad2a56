//! The payloads the data dir stores: one batch of [`Durable`] records per log
//! append, and a whole [`NodeImage`]. The disk layer (`crate::disk`) frames
//! and checksums them; here they are bincode, with the peer wire's encodings
//! and decode limit, so a corrupt length inside a checksummed payload still
//! cannot ask for an unbounded allocation.

use bincode::{Decode, Encode};

use super::peer::{wire_config, PeerFrameError};
use crate::core::{Durable, NodeImage};

/// Why a payload read back from disk does not decode. Its checksum was
/// good, so this is a bug or a foreign file, never a torn write.
#[derive(Debug, thiserror::Error)]
#[error("a stored record does not decode: {0}")]
pub struct PayloadError(#[from] PeerFrameError);

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail, and the impls return no errors.
    bincode::encode_to_vec(value, wire_config()).expect("encoding into a Vec cannot fail")
}

fn decode<T: Decode<()>>(payload: &[u8]) -> Result<T, PayloadError> {
    Ok(super::peer::decode_body(payload)?)
}

/// One log append: every record of a batch.
pub fn encode_batch(records: &[Durable]) -> Vec<u8> {
    encode(&records.to_vec())
}

pub fn decode_batch(payload: &[u8]) -> Result<Vec<Durable>, PayloadError> {
    decode(payload)
}

pub fn encode_image(image: &NodeImage) -> Vec<u8> {
    encode(image)
}

pub fn decode_image(payload: &[u8]) -> Result<NodeImage, PayloadError> {
    decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Decree, SnapshotData};
    use crate::paxos::{self, Ballot};
    use crate::store::Mutation;
    use crate::types::{NodeId, Path, Rev, RevCheck};

    #[test]
    fn batches_and_images_round_trip() {
        let id = NodeId::from_bytes([7; 10]);
        let write = Decree::Write {
            origin: id.clone(),
            seq: 1 << 40,
            floor: 3,
            mutation: Mutation::Set {
                path: Path::parse("/a").unwrap(),
                check: RevCheck::NotOlderThan(0),
                body: std::sync::Arc::from(&b"x"[..]),
            },
        };
        let ballot = Ballot::new(3, id.clone());
        let batch = vec![
            Durable::Acceptor(paxos::Durable::Promised(ballot.clone())),
            Durable::Acceptor(paxos::Durable::Accepted {
                ballot: ballot.clone(),
                values: vec![(5, write.clone()), (6, Decree::Fill)],
            }),
            Durable::Decided {
                first: Rev(5),
                decrees: vec![write.clone(), Decree::Fill],
            },
        ];
        assert_eq!(decode_batch(&encode_batch(&batch)).unwrap(), batch);
        let image = NodeImage {
            snapshot: SnapshotData {
                rev: Rev(4),
                files: vec![(
                    Path::parse("/a").unwrap(),
                    Rev(2),
                    std::sync::Arc::from(&b"y"[..]),
                )],
                membership: vec![(1, vec![id.clone()])],
                dedupe: vec![(id, 1, vec![2], Rev(4))],
            },
            promised: ballot.clone(),
            accepted: vec![(5, ballot, write)],
        };
        assert_eq!(decode_image(&encode_image(&image)).unwrap(), image);
        assert!(decode_batch(&[0xff; 9]).is_err());
    }
}
