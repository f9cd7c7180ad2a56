//! The glue between the core's durable records and the data dir: what the
//! event loop (and the simulation, with an in-memory disk) calls after every
//! batch, and how a node is rebuilt from its dir at start.
//!
//! The contract ([`crate::core::Durable`] has the why): after
//! [`Core::end_batch`], [`Journal::take`] takes the batch's records and
//! [`Journal::write`] appends them as one log entry and syncs it. When the
//! records alone cannot describe the state (the node's first state, a
//! snapshot installed from another node) it writes a whole image instead.
//!
//! Which outputs wait for the sync ([`Step::holds_outputs`]): every output of
//! a batch that changed the acceptor (a promise, an accept) or needs an
//! image, except the leader's phase-2a `Accept` messages
//! ([`leaves_before_sync`]): those go out at once, so the followers' syncs
//! run while the leader's own does. That is safe because an `Accept` depends
//! on nothing this batch made durable: its ballot was promised durably before
//! the `Prepare` that won it left, and the leader counts its own acceptance
//! only in later batches, which start after this batch's sync (in a cluster
//! of one, the decision and the reply come in this batch, and the reply
//! waits). A batch that only applied decided slots holds nothing back, and
//! its records wait to be written with a later batch
//! ([`MAX_DEFERRED_BYTES`]): those slots are already on a majority of disks
//! as accepted values, so the records only spare a restart some catching up.
//! Every append is synced before the next batch starts, so at most the last
//! batch on disk is ever unsynced (what tells a torn tail from corruption).
//!
//! Now and then it writes an image in the background so the log below it
//! can be deleted: disk use stays about one image plus
//! [`IMAGE_AFTER_LOG_BYTES`] (or one image's size, if larger) of log.

use std::thread::JoinHandle;

use crate::codec::durable::{decode_batch, decode_image, encode_batch, encode_image};
use crate::core::{Core, CoreConfig, Durable, NodeInfo, Output, PeerMsg};
use crate::disk::{DataDir, DiskError, Fs, Identity, RealFs};
use crate::paxos::Value;

/// Log bytes after which a new image is taken (when the last image was
/// smaller): the log replayed at a restart stays under about this much (or
/// one image's size), and the log's disk use with it. Replay costs about
/// 10 µs a slot and a slot about 215 log bytes with 64-byte values, so 8 MiB
/// is ~0.4 s of replay: a 3-member cluster holding 100k keys took writes
/// again 0.7–0.85 s after all three were restarted (32 MiB: 1.7–2.2 s).
pub const IMAGE_AFTER_LOG_BYTES: u64 = 8 << 20;

/// Bytes of decided slots that batches without acceptor records leave
/// unwritten, at most:
/// they are written with the next batch that writes acceptor records, or
/// the next batch with nothing to write (an idle moment), or once their
/// values (at [`crate::paxos::Value::size`]) pass this many bytes, so a run
/// of large values is not held back in memory nor written as one huge
/// append. A leader's batch that only decided and answered then costs no sync
/// (the next write's batch would wait behind it), and a slave syncs seldom.
/// Losing them in a crash loses nothing: each is on a majority of disks as an
/// accepted value, and the node learns it again on restart (a new leader
/// recovers it at its slot, or the node catches up).
const MAX_DEFERRED_BYTES: usize = 1 << 20;

/// Bit position of the incarnation in this node's write sequence numbers:
/// each restart numbers its writes from `incarnation << 40`, above every
/// number an earlier incarnation could have reached (2^40 writes), so no
/// replica takes a new write for a duplicate of an old one.
const INCARNATION_SHIFT: u32 = 40;

/// Why a node cannot start from its data dir.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(
        "{dir}: {detail}; refusing to start: move {dir} away (or restore from a backup) and \
         start this node with an empty -data-dir to rejoin as a new node"
    )]
    Unusable { dir: String, detail: String },
}

/// What the data dir says about the node to start.
pub enum Loaded {
    /// A node with state: resume it (same id, same slot, same revs).
    Resumed(Box<Core>),
    /// No state yet: start as a new node, with this id if the dir already
    /// had one (a node that stopped before its first copy of the store).
    Fresh { id: Option<String> },
}

/// One batch's durable part, taken after [`Core::end_batch`].
#[must_use = "a step must be written before the outputs it holds are routed"]
pub struct Step {
    records: Vec<Durable>,
    /// A whole image is due (the first state, or a snapshot installed).
    image: bool,
}

impl Step {
    /// Whether the batch's outputs (but those [`leaves_before_sync`]) must
    /// wait until [`Journal::write`] returned.
    pub fn holds_outputs(&self) -> bool {
        self.image
            || self
                .records
                .iter()
                .any(|record| matches!(record, Durable::Acceptor(_)))
    }
}

/// Outputs that may leave before their batch is synced, even when it holds
/// the rest (see the module docs): the leader's phase-2a messages.
pub fn leaves_before_sync(output: &Output) -> bool {
    matches!(
        output,
        Output::Peer {
            msg: PeerMsg::Paxos(crate::paxos::Msg::Accept { .. }),
            ..
        }
    )
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JournalStats {
    pub appends: u64,
    pub appended_bytes: u64,
    pub images: u64,
    pub last_image_bytes: u64,
}

/// A node's data dir as the event loop drives it.
pub struct Journal<F: Fs = RealFs> {
    dir: DataDir<F>,
    /// Whether an image exists: until one does, records have no base and
    /// are not logged.
    has_image: bool,
    /// Images written on another thread (the runtime); the simulation
    /// writes them inline so that runs replay from their seed.
    background: bool,
    writer: Option<JoinHandle<Result<u64, DiskError>>>,
    /// The dir was read ([`Journal::load`]), which opens its log.
    loaded: bool,
    /// Decided slots not written yet, and their bytes (see
    /// [`MAX_DEFERRED_BYTES`]).
    deferred: Vec<Durable>,
    deferred_bytes: usize,
    pub stats: JournalStats,
}

impl<F: Fs> Journal<F> {
    pub fn new(dir: DataDir<F>, background: bool) -> Journal<F> {
        Journal {
            dir,
            has_image: false,
            background,
            writer: None,
            loaded: false,
            deferred: Vec::new(),
            deferred_bytes: 0,
            stats: JournalStats::default(),
        }
    }

    /// Reads the dir: the identity (checked against `cluster`), the newest
    /// image and the log after it. With state, the node is rebuilt and a
    /// new incarnation recorded; `node_info` makes its [`NodeInfo`] from the
    /// id on disk.
    pub fn load(
        &mut self,
        cluster: &str,
        node_info: impl FnOnce(&str) -> NodeInfo,
        config: CoreConfig,
    ) -> Result<Loaded, JournalError> {
        let started = std::time::Instant::now();
        let identity = self.dir.identity()?;
        if let Some(identity) = &identity {
            identity.check_cluster(self.dir.dir(), cluster)?;
        }
        let recovered = self.dir.recover()?;
        let read = started.elapsed();
        self.loaded = true;
        let dir_name = self.dir.dir().display().to_string();
        let unusable = |detail: String| JournalError::Unusable {
            dir: dir_name.clone(),
            detail,
        };
        let (mut identity, image) = match (identity, recovered.image) {
            (identity, None) => {
                return Ok(Loaded::Fresh {
                    id: identity.map(|i| i.id),
                })
            }
            (None, Some(_)) => return Err(unusable("an image but no IDENTITY file".into())),
            (Some(identity), Some(image)) => (identity, image),
        };
        let image = decode_image(&image).map_err(|e| unusable(format!("the image: {e}")))?;
        identity.incarnation += 1;
        self.dir.write_identity(&identity)?;
        let first_seq = identity.incarnation << INCARNATION_SHIFT;
        let info = node_info(&identity.id);
        let mut core =
            Core::recover(info, config, image, first_seq).map_err(|e| unusable(e.to_string()))?;
        let batches = recovered.batches.len();
        for (i, batch) in recovered.batches.into_iter().enumerate() {
            let records =
                decode_batch(&batch).map_err(|e| unusable(format!("log batch {i}: {e}")))?;
            for record in records {
                core.replay(record)
                    .map_err(|e| unusable(format!("log batch {i}: {e}")))?;
            }
        }
        core.finish_recovery();
        log::info!(
            "data dir {}: node {} resumed (incarnation {}) from an image and {batches} log batches in {:?} ({:?} reading)",
            self.dir.dir().display(),
            identity.id,
            identity.incarnation,
            started.elapsed(),
            read
        );
        self.has_image = true;
        Ok(Loaded::Resumed(Box::new(core)))
    }

    /// Records the identity of a node starting afresh and makes `core`
    /// keep its durable records from now on.
    pub fn begin(&mut self, core: &mut Core, cluster: &str) -> Result<(), JournalError> {
        if !self.loaded {
            let recovered = self.dir.recover()?;
            self.loaded = true;
            if recovered.image.is_some() {
                return Err(JournalError::Unusable {
                    dir: self.dir.dir().display().to_string(),
                    detail: "it holds a node's state, which a new node must not overwrite".into(),
                });
            }
        }
        let incarnation = match self.dir.identity()? {
            Some(identity) => identity.incarnation + 1,
            None => 0,
        };
        self.dir.write_identity(&Identity {
            id: core.node().id.to_string(),
            cluster: cluster.to_string(),
            incarnation,
        })?;
        core.record_durable();
        Ok(())
    }

    /// Takes the durable part of the batch that just ended.
    pub fn take(&self, core: &mut Core) -> Step {
        let installed = core.take_installed();
        let records = core.take_durable();
        Step {
            image: (!self.has_image || installed) && core.is_writable(),
            // Before the first image, records have no base to apply to:
            // the image, once taken, holds them.
            records: if self.has_image { records } else { Vec::new() },
        }
    }

    /// Makes `step` durable. On an error, what it holds must never be sent:
    /// the node must stop taking part.
    pub fn write(&mut self, step: Step, core: &Core) -> Result<(), DiskError> {
        let Step { records, image } = step;
        if image {
            return self.image_now(core);
        }
        if !self.has_image {
            return Ok(());
        }
        let acceptor = records
            .iter()
            .any(|record| matches!(record, Durable::Acceptor(_)));
        let idle = records.is_empty();
        let decided: usize = records
            .iter()
            .map(|record| match record {
                Durable::Decided { decrees, .. } => decrees.iter().map(Value::size).sum(),
                Durable::Acceptor(_) => 0,
            })
            .sum();
        self.deferred.extend(records);
        self.deferred_bytes += decided;
        let due = acceptor
            || (idle && !self.deferred.is_empty())
            || self.deferred_bytes >= MAX_DEFERRED_BYTES;
        if due {
            let payload = encode_batch(&self.deferred);
            let written = self.dir.append(&payload)?;
            self.deferred.clear();
            self.deferred_bytes = 0;
            self.stats.appends += 1;
            self.stats.appended_bytes += written;
        }
        self.maybe_start_image(core)
    }

    /// [`Journal::take`] and [`Journal::write`] in one, for a caller that
    /// holds every output of the batch until it returns.
    pub fn persist(&mut self, core: &mut Core) -> Result<(), DiskError> {
        let step = self.take(core);
        self.write(step, core)
    }

    /// Writes an image of `core` before returning.
    fn image_now(&mut self, core: &Core) -> Result<(), DiskError> {
        self.finish_writer(true);
        let ticket = self.dir.start_image()?;
        let bytes = ticket.write(&encode_image(&core.image()))?;
        self.image_written(bytes);
        self.has_image = true;
        Ok(())
    }

    fn image_written(&mut self, bytes: u64) {
        self.stats.images += 1;
        self.stats.last_image_bytes = bytes;
        log::debug!("data dir image written: {bytes} bytes");
    }

    /// Collects the background image writer's result when it is done (or,
    /// with `wait`, waits for it).
    fn finish_writer(&mut self, wait: bool) {
        let done = self
            .writer
            .as_ref()
            .is_some_and(|writer| wait || writer.is_finished());
        if !done {
            return;
        }
        let Some(writer) = self.writer.take() else {
            return;
        };
        match writer.join() {
            Ok(Ok(bytes)) => self.image_written(bytes),
            // The log is intact; a later image tries again.
            Ok(Err(err)) => log::error!("writing an image of the data dir failed: {err}"),
            Err(_) => log::error!("the data dir's image writer panicked"),
        }
    }

    /// Starts an image when the log since the last one has grown past
    /// [`IMAGE_AFTER_LOG_BYTES`] and the last image's size.
    fn maybe_start_image(&mut self, core: &Core) -> Result<(), DiskError> {
        self.finish_writer(false);
        let threshold = IMAGE_AFTER_LOG_BYTES.max(self.stats.last_image_bytes);
        if self.writer.is_some() || self.dir.log_bytes_since_image() < threshold {
            return Ok(());
        }
        let ticket = self.dir.start_image()?;
        // The state is captured here, on the core's thread (the store's
        // persistent tree makes the files a cheap copy); encoding and
        // writing happen elsewhere while the log goes on.
        let image = core.image();
        if !self.background {
            let bytes = ticket.write(&encode_image(&image))?;
            self.image_written(bytes);
            return Ok(());
        }
        let writer = std::thread::Builder::new()
            .name("doozer-image".into())
            .spawn(move || ticket.write(&encode_image(&image)));
        match writer {
            Ok(writer) => self.writer = Some(writer),
            Err(err) => log::error!("cannot start the image writer: {err}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Decree;
    use crate::disk::MemFs;
    use crate::store::Mutation;
    use crate::types::{Body, NodeId, Path, Rev, RevCheck};

    fn seed() -> Core {
        let info = NodeInfo {
            id: NodeId::from_bytes([3; 10]),
            addr: "127.0.0.1:8046".into(),
            hostname: "h".into(),
            cluster_name: "t".into(),
            register_ns: true,
        };
        let config = CoreConfig {
            history_revs: 100,
            pulse_ticks: 200,
            timeout_ticks: 1000,
            max_value_bytes: 1 << 20,
            max_pending_writes: 100,
            max_peer_frame_bytes: 256 << 20,
            paxos: crate::paxos::Settings::default(),
            local_reads: false,
            read_timeout_ticks: 1000,
            seed: 1,
        };
        Core::seed(info, config)
    }

    fn decided(rev: i64, bytes: usize) -> Step {
        let decree = Decree::Write {
            origin: NodeId::from_bytes([3; 10]),
            seq: rev as u64,
            floor: 0,
            mutation: Mutation::Set {
                path: Path::parse("/big").unwrap(),
                check: RevCheck::Clobber,
                body: Body::from(vec![b'x'; bytes]),
            },
        };
        Step {
            records: vec![Durable::Decided {
                first: Rev(rev),
                decrees: vec![decree],
            }],
            image: false,
        }
    }

    #[test]
    fn decided_only_batches_wait_in_memory_up_to_a_byte_bound() {
        let dir = DataDir::open_with(MemFs::new(), std::path::Path::new("/d")).unwrap();
        let mut journal = Journal::new(dir, false);
        let mut core = seed();
        journal.begin(&mut core, "t").unwrap();
        journal.persist(&mut core).unwrap();
        assert_eq!(journal.stats.images, 1, "the first state is an image");
        let appends = journal.stats.appends;
        // Three values of 300 KiB stay in memory (under 1 MiB)...
        for rev in 100..103 {
            journal.write(decided(rev, 300 << 10), &core).unwrap();
            assert_eq!(journal.stats.appends, appends, "rev {rev}");
        }
        // ... the fourth passes the bound: one append holds all four.
        journal.write(decided(103, 300 << 10), &core).unwrap();
        assert_eq!(journal.stats.appends, appends + 1);
        assert!(journal.stats.appended_bytes > 4 * (300 << 10));
        // A small one waits, and the next idle batch writes it.
        journal.write(decided(104, 10), &core).unwrap();
        assert_eq!(journal.stats.appends, appends + 1);
        let idle = Step {
            records: Vec::new(),
            image: false,
        };
        journal.write(idle, &core).unwrap();
        assert_eq!(journal.stats.appends, appends + 2);
    }
}
