//! What a node with a data dir persists, and how it comes back from it.
//!
//! The contract with the runtime (modelled on etcd-raft's Ready/Advance):
//! after every batch ([`Core::end_batch`]) the runtime takes the batch's
//! records with [`Core::take_durable`] and makes them durable (one append and
//! one sync for the whole batch: group commit) **before** it routes any
//! output of that batch. So a promise or an accept is on disk before the
//! message that depends on it leaves, a follower's `Accepted` means its disk
//! has the value, and a client's answer (given when this node applied the
//! slot, itself a quorum of disks) never outruns this node's own disk.
//!
//! Records are of two kinds: the acceptor's (promised ballot, accepted
//! values), which safety rests on, and the decided slots, from which the store
//! is rebuilt. When a snapshot from another node was installed in the batch
//! ([`Core::take_installed`]) the records alone no longer describe the state:
//! the runtime then writes a whole [`NodeImage`] instead. Images also let the
//! runtime drop old log segments.
//!
//! Recovery is the snapshot-install path followed by the decided slots,
//! applied by the very code that applied them the first time.

use super::{Core, Decree, NodeInfo, Output, Phase, SnapshotData};
use crate::core::CoreConfig;
use crate::paxos::{self, Ballot, Membership, Slot};
use crate::types::Rev;

/// One durable change.
#[derive(Clone, Debug, PartialEq)]
pub enum Durable {
    /// The acceptor's: promised ballot or accepted values.
    Acceptor(paxos::Durable<Decree>),
    /// Slots `first..first + decrees.len()` were decided and applied.
    Decided { first: Rev, decrees: Vec<Decree> },
}

/// A whole node's durable state at one point: the replicated state at the
/// store's rev and the acceptor's state.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeImage {
    pub snapshot: SnapshotData,
    pub promised: Ballot,
    /// Values accepted (or known chosen) and not yet applied.
    pub accepted: Vec<(Slot, Ballot, Decree)>,
}

/// Why a data dir's contents cannot be resumed from.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the image cannot be installed: {0}")]
    Image(String),
    #[error("decided slot {found} follows rev {applied}: slots are missing")]
    Gap { applied: Rev, found: Rev },
    #[error("decided slot {0} contradicts the value known chosen there")]
    Conflict(Rev),
}

impl Core {
    /// From now on, every batch's durable records are kept for
    /// [`Core::take_durable`] (a node with a data dir).
    pub fn record_durable(&mut self) {
        self.durable = Some(Vec::new());
        self.paxos.record_durable();
    }

    /// The records of the batches since the last call, to make durable
    /// before routing their outputs (see the module docs). Empty without a
    /// data dir.
    pub fn take_durable(&mut self) -> Vec<Durable> {
        let Some(decided) = self.durable.as_mut() else {
            return Vec::new();
        };
        let decided = std::mem::take(decided);
        let mut records: Vec<Durable> = self
            .paxos
            .take_durable()
            .into_iter()
            .map(Durable::Acceptor)
            .collect();
        records.extend(decided);
        records
    }

    /// Whether a snapshot from another node was installed since the last
    /// call: the log records no longer describe the state, so the runtime
    /// writes a whole [`Core::image`] before routing the batch's outputs.
    pub fn take_installed(&mut self) -> bool {
        std::mem::take(&mut self.installed)
    }

    /// Notes an applied slot among the batch's durable records.
    pub(super) fn record_decided(&mut self, rev: Rev, decree: &Decree) {
        let Some(records) = self.durable.as_mut() else {
            return;
        };
        if let Some(Durable::Decided { first, decrees }) = records.last_mut() {
            if first.0 + decrees.len() as i64 == rev.0 {
                decrees.push(decree.clone());
                return;
            }
        }
        records.push(Durable::Decided {
            first: rev,
            decrees: vec![decree.clone()],
        });
    }

    /// The node's whole durable state now.
    pub fn image(&self) -> NodeImage {
        let (promised, accepted) = self.paxos.acceptor_state();
        NodeImage {
            snapshot: self.snapshot_data(),
            promised,
            accepted,
        }
    }

    /// A node resumed from its data dir: `image`, then [`Core::replay`] of
    /// every record logged after it, then [`Core::finish_recovery`].
    /// `first_seq` numbers this incarnation's writes above every earlier
    /// one's (so none is taken for a duplicate of an old one).
    pub fn recover(
        node: NodeInfo,
        config: CoreConfig,
        image: NodeImage,
        first_seq: u64,
    ) -> Result<Core, RecoveryError> {
        let membership = Membership::new(Default::default());
        let mut core = Core::new(node, config, membership, Phase::Running);
        core.phase = Phase::Joining {
            target: core.node.id.clone(),
            target_addr: String::new(),
        };
        let mut discard = Vec::new();
        core.install(image.snapshot, &mut discard)
            .map_err(|err| RecoveryError::Image(err.to_string()))?;
        core.paxos.restore(paxos::Durable::Promised(image.promised));
        for (slot, ballot, value) in image.accepted {
            core.paxos.restore(paxos::Durable::Accepted {
                ballot,
                values: vec![(slot, value)],
            });
        }
        core.next_seq = first_seq.max(1);
        core.installed = false;
        Ok(core)
    }

    /// Replays one record logged after the image (see [`Core::recover`]).
    pub fn replay(&mut self, record: Durable) -> Result<(), RecoveryError> {
        match record {
            Durable::Acceptor(record) => self.paxos.restore(record),
            Durable::Decided { first, decrees } => {
                let mut discard: Vec<Output> = Vec::new();
                for (i, decree) in decrees.into_iter().enumerate() {
                    let rev = Rev(first.0 + i as i64);
                    let applied = self.store.rev();
                    if rev <= applied {
                        continue;
                    }
                    if rev != applied.next() {
                        return Err(RecoveryError::Gap {
                            applied,
                            found: rev,
                        });
                    }
                    self.paxos
                        .learn(rev.0, decree)
                        .map_err(|_| RecoveryError::Conflict(rev))?;
                    self.apply_decided(&mut discard);
                }
            }
        }
        Ok(())
    }

    /// The node stops taking part (its disk failed): every client request
    /// it holds (unanswered writes, WAITs, listings, reads parked for a rev)
    /// is answered with `detail`, so no client waits for an answer that
    /// will never come. A write's outcome is unknown to its client: the
    /// cluster may still decide it.
    pub fn fail_all(&mut self, detail: &str, out: &mut Vec<Output>) {
        let error = || Err(crate::error::ReplyError::other(detail.to_string()));
        for (_, pending) in std::mem::take(&mut self.pending_writes) {
            if let super::Proposer::Client { conn, tag } = pending.proposer {
                out.push(Output::Reply {
                    conn,
                    tag,
                    outcome: error(),
                });
            }
        }
        for ((conn, id), tag) in std::mem::take(&mut self.wait_tags) {
            self.waits.remove(&(conn, id));
            out.push(Output::Reply {
                conn,
                tag,
                outcome: error(),
            });
        }
        for ((conn, _), job) in std::mem::take(&mut self.jobs) {
            let tag = match job {
                super::Job::Wait(scan) => scan.tag,
                super::Job::List(listing) => listing.tag,
            };
            out.push(Output::Reply {
                conn,
                tag,
                outcome: error(),
            });
        }
        for read in std::mem::take(&mut self.parked_reads)
            .into_values()
            .flatten()
        {
            out.push(Output::Reply {
                conn: read.conn,
                tag: read.tag,
                outcome: error(),
            });
        }
    }

    /// Ends recovery: from now on the batches' records are kept for the
    /// runtime (what replay did is on disk already).
    pub fn finish_recovery(&mut self) {
        self.newly_applied.clear();
        self.installed = false;
        self.record_durable();
        log::info!(
            "resumed from the data dir at rev {} ({})",
            self.store.rev(),
            self.describe()
        );
    }
}
