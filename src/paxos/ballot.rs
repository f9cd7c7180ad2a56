//! Ballots: totally ordered, and unique per member because the member's id
//! breaks ties between equal rounds.

use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ballot {
    pub round: u64,
    /// The member that owns the ballot; `None` only for the zero ballot.
    pub leader: Option<NodeId>,
}

impl Ballot {
    /// Lower than every ballot a member can own.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        leader: None,
    };

    pub fn new(round: u64, leader: NodeId) -> Ballot {
        Ballot {
            round,
            leader: Some(leader),
        }
    }
}
