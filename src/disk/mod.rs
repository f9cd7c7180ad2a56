//! The data directory of `doozerd -data-dir DIR`: files, checksums,
//! segments, torn tails, corruption, the lock, the identity, images and
//! compaction. Payloads are opaque bytes: this layer knows nothing of the
//! core, so the one that must never lose a byte stays small enough to read.
//!
//! # What is in DIR
//!
//! - `LOCK`: held (`flock`) for as long as a [`DataDir`] lives, so a second
//!   `doozerd` on DIR is refused with [`DiskError::Locked`].
//! - `IDENTITY`: id, cluster name and incarnation, checksummed, replaced
//!   atomically (tmp file, fsync, rename, fsync DIR).
//! - `wal-<seq:016x>.log`: the write-ahead log in segments. Each batch the
//!   caller appends is one checksummed frame with a sequence number that runs
//!   on across segments; [`DataDir::append`] fdatasyncs before it returns. A
//!   new segment starts when the current one passes [`SEGMENT_TARGET_BYTES`],
//!   and at every [`DataDir::start_image`]. Byte layouts: [`format`].
//! - `image-<seq:016x>.img`: the caller's whole state as of the start of
//!   segment `<seq>`. Once it is durable, segments and images before `<seq>`
//!   are deleted, which bounds disk use to about one image plus the log
//!   written since it.
//!
//! # Torn tail or corruption
//!
//! The caller syncs each batch before it appends the next, so a crash can
//! leave at most the last batch of the last segment incomplete. Recovery
//! therefore treats a bad batch at offset X of the last segment as a torn
//! tail (truncates there, syncs, warns) only if no valid batch (right salt,
//! a sequence number not below the expected one, both checksums good) starts
//! anywhere after X. Everything else is [`DiskError::Corrupt`], naming the
//! file and the offset: a bad batch followed by a valid one, a bad batch in
//! any other segment, a bad segment header (except in a newest segment no
//! longer than a header: torn at creation, removed and made again), a bad
//! newest image (the segments before it are gone), a missing segment, a gap
//! in batch sequence numbers, a bad identity. Refusing is the safe answer:
//! dropping a record this node already promised on could break consensus.
//!
//! # Failures while running
//!
//! A failed write or sync leaves the file in an unknown state (Linux may drop
//! the dirty pages of a failed fsync and report success on the next one), so
//! after any I/O error in `append` or `start_image` the `DataDir` is failed
//! for good: every later call returns [`DiskError::Failed`] until the process
//! restarts and recovers. An image that fails to write only returns its error:
//! the log is untouched and a later image can try again.

mod error;
pub mod format;
pub mod fs;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use error::DiskError;
pub use fs::{Fs, FsFile, MemFs, RealFs};

use format::{FRAME_HEADER_LEN, MAX_BATCH_BYTES, MAX_IDENTITY_FIELD, SEG_HEADER_LEN};

/// The lock file in DIR.
pub const LOCK_FILE: &str = "LOCK";
/// The identity file in DIR.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// A segment is closed once it holds this much (64 MiB); the next batch
/// starts a new one. A single batch may take a segment past it.
pub const SEGMENT_TARGET_BYTES: u64 = 64 << 20;
/// Largest image read back: 64 GiB (a bigger file is corrupt). The image is
/// read whole, so this is only a sanity bound; `ImageTicket::write` refuses a
/// bigger payload with `TooLarge`.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;
/// The first segment and the first batch of a new log are numbered 1.
const FIRST: u64 = 1;

/// Who this node is: written once when the node first joins, read at every
/// restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub cluster: String,
    /// Bumped by the caller when it wants to tell restarts apart.
    pub incarnation: u64,
}

impl Identity {
    /// `Mismatch` unless this identity belongs to `cluster` (the `-c` given).
    pub fn check_cluster(&self, dir: &Path, cluster: &str) -> Result<(), DiskError> {
        if self.cluster == cluster {
            return Ok(());
        }
        Err(DiskError::Mismatch {
            path: dir.join(IDENTITY_FILE),
            id: self.id.clone(),
            on_disk: self.cluster.clone(),
            given: cluster.to_string(),
        })
    }
}

/// What [`DataDir::recover`] found: the newest image and every batch
/// appended after it, oldest first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub image: Option<Vec<u8>>,
    pub batches: Vec<Vec<u8>>,
    /// What recovery repaired (a torn tail truncated, a segment torn at
    /// creation removed), one line each naming the file and offset; each was
    /// also logged as a warning.
    pub repairs: Vec<String>,
}

/// State shared between a `DataDir` and its outstanding image ticket.
#[derive(Debug, Default)]
struct ImageState {
    /// A ticket exists and has not finished.
    outstanding: bool,
    /// Segment of the newest durable image (0: none).
    image_seg: u64,
}

fn lock_state(s: &Mutex<ImageState>) -> MutexGuard<'_, ImageState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The segment being appended to.
struct Tail<F: Fs> {
    file: F::File,
    path: PathBuf,
    seg: u64,
    salt: u64,
    len: u64,
    /// Batches in this segment.
    batches: u64,
}

enum LogState<F: Fs> {
    NotRecovered,
    Open(Tail<F>),
    Failed(String),
}

/// A node's data directory, locked for as long as this value lives.
pub struct DataDir<F: Fs = RealFs> {
    fs: F,
    dir: PathBuf,
    _lock: F::Lock,
    log: LogState<F>,
    /// Sequence number of the next batch.
    next_batch: u64,
    /// Bytes of every live segment, by segment number.
    seg_bytes: BTreeMap<u64, u64>,
    segment_target: u64,
    images: Arc<Mutex<ImageState>>,
}

/// File names in DIR.
fn seg_name(seg: u64) -> String {
    format!("wal-{seg:016x}.log")
}
fn image_name(seg: u64) -> String {
    format!("image-{seg:016x}.img")
}
fn parse_num(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Creates, fills and syncs `tmp`, renames it to `path` and syncs `dir`.
fn write_atomic<F: Fs>(
    fs: &F,
    dir: &Path,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), DiskError> {
    let mut f = fs
        .create(tmp)
        .map_err(|e| DiskError::io(tmp, "create", e))?;
    f.write_all(bytes)
        .map_err(|e| DiskError::io(tmp, "write", e))?;
    f.sync().map_err(|e| DiskError::io(tmp, "fsync", e))?;
    drop(f);
    fs.rename(tmp, path)
        .map_err(|e| DiskError::io(path, "rename to", e))?;
    fs.sync_dir(dir)
        .map_err(|e| DiskError::io(dir, "fsync directory", e))
}

/// Reads a file after checking its size against `max` (`Corrupt` beyond).
fn read_bounded<F: Fs>(fs: &F, path: &Path, max: u64) -> Result<Vec<u8>, DiskError> {
    let size = fs.size(path).map_err(|e| DiskError::io(path, "stat", e))?;
    if size > max {
        return Err(DiskError::corrupt(
            path,
            0,
            format!("{size} bytes, more than the {max} such a file can hold"),
        ));
    }
    fs.read(path).map_err(|e| DiskError::io(path, "read", e))
}

impl DataDir<RealFs> {
    /// Opens (creating it if needed) DIR on the real disk and takes its lock.
    pub fn open(dir: &Path) -> Result<DataDir, DiskError> {
        DataDir::open_with(RealFs, dir)
    }
}

impl<F: Fs> DataDir<F> {
    /// Opens DIR through `fs`: creates it if needed and takes its lock.
    pub fn open_with(fs: F, dir: &Path) -> Result<Self, DiskError> {
        fs.create_dir_all(dir)
            .map_err(|e| DiskError::io(dir, "create directory", e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = match fs.lock(&lock_path) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(DiskError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(DiskError::io(&lock_path, "lock", e)),
        };
        Ok(DataDir {
            fs,
            dir: dir.to_path_buf(),
            _lock: lock,
            log: LogState::NotRecovered,
            next_batch: FIRST,
            seg_bytes: BTreeMap::new(),
            segment_target: SEGMENT_TARGET_BYTES,
            images: Arc::default(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the size at which a segment is closed (tests use small ones).
    pub fn set_segment_target(&mut self, bytes: u64) {
        self.segment_target = bytes.max(1);
    }

    /// The identity on disk; `None` for a new (or empty) directory.
    pub fn identity(&self) -> Result<Option<Identity>, DiskError> {
        let path = self.dir.join(IDENTITY_FILE);
        match self.fs.size(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DiskError::io(&path, "stat", e)),
            Ok(_) => {}
        }
        let bytes = read_bounded(&self.fs, &path, format::MAX_IDENTITY_FILE)?;
        let (incarnation, id, cluster) = format::decode_identity(&bytes)
            .map_err(|(off, detail)| DiskError::corrupt(&path, off, detail))?;
        Ok(Some(Identity {
            id,
            cluster,
            incarnation,
        }))
    }

    /// Writes the identity atomically (tmp file, fsync, rename, fsync DIR).
    pub fn write_identity(&mut self, identity: &Identity) -> Result<(), DiskError> {
        for (what, s) in [
            ("node id", &identity.id),
            ("cluster name", &identity.cluster),
        ] {
            if s.len() > MAX_IDENTITY_FIELD {
                return Err(DiskError::TooLarge {
                    what,
                    len: s.len() as u64,
                    max: MAX_IDENTITY_FIELD as u64,
                });
            }
        }
        let bytes = format::encode_identity(identity.incarnation, &identity.id, &identity.cluster);
        let path = self.dir.join(IDENTITY_FILE);
        let tmp = self.dir.join("IDENTITY.tmp");
        write_atomic(&self.fs, &self.dir, &tmp, &path, &bytes)
    }

    /// Reads the newest image and every batch after it, in order; truncates
    /// a torn tail (with a warning); refuses corruption with `Corrupt`.
    /// Leaves the log open for [`DataDir::append`]. Call it once, first.
    pub fn recover(&mut self) -> Result<Recovered, DiskError> {
        assert!(
            matches!(self.log, LogState::NotRecovered),
            "DataDir::recover called twice"
        );
        let fs = self.fs.clone();
        let dir = self.dir.clone();
        // What a crashed process wrote may still sit in the page cache only:
        // make the directory (and below, the last segment) durable before
        // trusting and building on them.
        fs.sync_dir(&dir)
            .map_err(|e| DiskError::io(&dir, "fsync directory", e))?;
        let listing = fs.list(&dir).map_err(|e| DiskError::io(&dir, "list", e))?;
        let mut segs = BTreeSet::new();
        let mut images = BTreeSet::new();
        let mut stale = Vec::new();
        for (name, _) in listing {
            if let Some(n) = parse_num(&name, "wal-", ".log") {
                segs.insert(n);
            } else if let Some(n) = parse_num(&name, "image-", ".img") {
                images.insert(n);
            } else if name.ends_with(".tmp") {
                stale.push(dir.join(name));
            }
        }

        // The newest image, if any, and where the log continues from it.
        let mut image = None;
        let (mut expect_seg, mut expect_batch) = (FIRST, FIRST);
        if let Some(&seg) = images.last() {
            let path = dir.join(image_name(seg));
            let bytes = read_bounded(&fs, &path, MAX_IMAGE_BYTES + format::IMAGE_OVERHEAD as u64)?;
            let h = format::decode_image(&bytes)
                .map_err(|(off, d)| DiskError::corrupt(&path, off, d))?;
            if h.seg != seg {
                return Err(DiskError::corrupt(
                    &path,
                    8,
                    format!("image says segment {} but is named for {seg}", h.seg),
                ));
            }
            expect_seg = seg;
            expect_batch = h.next_batch;
            image = Some(bytes[h.payload].to_vec());
            lock_state(&self.images).image_seg = seg;
        }

        // Finish an interrupted compaction: what the image covers can go (the
        // directory was synced above, so the image's own entry is durable).
        let old: Vec<PathBuf> = segs
            .range(..expect_seg)
            .map(|&s| dir.join(seg_name(s)))
            .chain(images.range(..expect_seg).map(|&s| dir.join(image_name(s))))
            .chain(stale)
            .collect();
        if !old.is_empty() {
            for p in &old {
                log::info!(
                    "removing {} (covered by a newer image or left over)",
                    p.display()
                );
                fs.remove(p).map_err(|e| DiskError::io(p, "remove", e))?;
            }
            fs.sync_dir(&dir)
                .map_err(|e| DiskError::io(&dir, "fsync directory", e))?;
        }

        let live: Vec<u64> = segs.range(expect_seg..).copied().collect();
        if image.is_some() && live.first() != Some(&expect_seg) {
            return Err(DiskError::corrupt(
                &dir.join(seg_name(expect_seg)),
                0,
                "the log segment that follows the newest image is missing",
            ));
        }
        let mut batches = Vec::new();
        let mut repairs = Vec::new();
        let mut tail: Option<(u64, u64, u64, u64)> = None; // seg, salt, len, batches
        let mut next_seg = expect_seg;
        for (i, &seg) in live.iter().enumerate() {
            let path = dir.join(seg_name(seg));
            if seg != next_seg {
                return Err(DiskError::corrupt(
                    &dir.join(seg_name(next_seg)),
                    0,
                    format!("log segment missing (found {} after it)", seg_name(seg)),
                ));
            }
            next_seg = seg + 1;
            let last = i + 1 == live.len();
            let max = self.segment_target.max(SEGMENT_TARGET_BYTES)
                + MAX_BATCH_BYTES
                + (SEG_HEADER_LEN + FRAME_HEADER_LEN) as u64;
            let bytes = read_bounded(&fs, &path, max)?;
            let header = match format::decode_seg_header(&bytes) {
                Ok(h) => h,
                Err(_) if last && bytes.len() <= SEG_HEADER_LEN => {
                    let note = format!(
                        "{}: segment torn while it was created ({} bytes at offset 0); \
                         removed it",
                        path.display(),
                        bytes.len()
                    );
                    log::warn!("{note}");
                    repairs.push(note);
                    fs.remove(&path)
                        .map_err(|e| DiskError::io(&path, "remove", e))?;
                    fs.sync_dir(&dir)
                        .map_err(|e| DiskError::io(&dir, "fsync directory", e))?;
                    next_seg = seg;
                    break;
                }
                Err(detail) => return Err(DiskError::corrupt(&path, 0, detail)),
            };
            if header.seg != seg {
                return Err(DiskError::corrupt(
                    &path,
                    8,
                    format!(
                        "header says segment {} but the file is named for {seg}",
                        header.seg
                    ),
                ));
            }
            if header.first_batch != expect_batch {
                return Err(DiskError::corrupt(
                    &path,
                    24,
                    format!(
                        "segment starts at batch {} but batch {expect_batch} comes next",
                        header.first_batch
                    ),
                ));
            }
            let mut at = SEG_HEADER_LEN;
            let mut count = 0;
            while at < bytes.len() {
                match format::decode_frame(&bytes, at, header.salt) {
                    Some(f) if f.seq == expect_batch => {
                        batches.push(bytes[f.payload.clone()].to_vec());
                        expect_batch += 1;
                        count += 1;
                        at = f.payload.end;
                    }
                    Some(f) => {
                        return Err(DiskError::corrupt(
                            &path,
                            at as u64,
                            format!("batch {} where batch {expect_batch} belongs", f.seq),
                        ))
                    }
                    None if !last => {
                        return Err(DiskError::corrupt(
                            &path,
                            at as u64,
                            "bad batch in a segment that is not the last",
                        ))
                    }
                    None => {
                        if let Some(later) = (at + 1..bytes.len()).find(|&p| {
                            format::decode_frame(&bytes, p, header.salt)
                                .is_some_and(|f| f.seq >= expect_batch)
                        }) {
                            return Err(DiskError::corrupt(
                                &path,
                                at as u64,
                                format!("bad batch followed by a valid one at offset {later}"),
                            ));
                        }
                        let note = format!(
                            "{}: torn write at offset {at} ({} bytes of an unfinished batch); \
                             truncated it",
                            path.display(),
                            bytes.len() - at
                        );
                        log::warn!("{note}");
                        repairs.push(note);
                        fs.truncate(&path, at as u64)
                            .map_err(|e| DiskError::io(&path, "truncate", e))?;
                        break;
                    }
                }
            }
            let len = at.min(bytes.len()) as u64;
            self.seg_bytes.insert(seg, len);
            tail = Some((seg, header.salt, len, count));
        }
        self.next_batch = expect_batch;

        let open = match tail {
            Some((seg, salt, len, batches)) if seg + 1 == next_seg => {
                let path = dir.join(seg_name(seg));
                let mut file = fs
                    .open_append(&path)
                    .map_err(|e| DiskError::io(&path, "open", e))?;
                file.sync()
                    .map_err(|e| DiskError::io(&path, "fdatasync", e))?;
                Tail {
                    file,
                    path,
                    seg,
                    salt,
                    len,
                    batches,
                }
            }
            _ => self.new_segment(next_seg)?,
        };
        self.log = LogState::Open(open);
        Ok(Recovered {
            image,
            batches,
            repairs,
        })
    }

    /// Creates segment `seg` (header synced, DIR synced) for appending.
    fn new_segment(&mut self, seg: u64) -> Result<Tail<F>, DiskError> {
        let path = self.dir.join(seg_name(seg));
        let salt: u64 = rand::random();
        let header = format::encode_seg_header(&format::SegHeader {
            seg,
            salt,
            first_batch: self.next_batch,
        });
        let mut file = self
            .fs
            .create(&path)
            .map_err(|e| DiskError::io(&path, "create", e))?;
        file.write_all(&header)
            .map_err(|e| DiskError::io(&path, "write", e))?;
        file.sync()
            .map_err(|e| DiskError::io(&path, "fdatasync", e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| DiskError::io(&self.dir, "fsync directory", e))?;
        self.seg_bytes.insert(seg, SEG_HEADER_LEN as u64);
        Ok(Tail {
            file,
            path,
            seg,
            salt,
            len: SEG_HEADER_LEN as u64,
            batches: 0,
        })
    }

    /// The open tail, or why there is none.
    fn tail(&mut self) -> Result<&mut Tail<F>, DiskError> {
        match &mut self.log {
            LogState::Open(t) => Ok(t),
            LogState::Failed(first) => Err(DiskError::Failed {
                path: self.dir.clone(),
                first: first.clone(),
            }),
            LogState::NotRecovered => panic!("DataDir used before recover"),
        }
    }

    /// Marks the log failed for good when `r` is an I/O error.
    fn fail_on_err<T>(&mut self, r: Result<T, DiskError>) -> Result<T, DiskError> {
        if let Err(e) = &r {
            log::error!("{e}; the write-ahead log accepts no more writes");
            self.log = LogState::Failed(e.to_string());
        }
        r
    }

    /// Closes the current segment and opens segment `seq + 1`.
    fn roll(&mut self) -> Result<u64, DiskError> {
        let seg = self.tail()?.seg + 1;
        let r = self.new_segment(seg);
        let t = self.fail_on_err(r)?;
        self.log = LogState::Open(t);
        Ok(seg)
    }

    /// Appends one batch and fdatasyncs it; returns the bytes written.
    /// Nothing that depends on the batch may leave the node before this
    /// returns Ok. After an I/O error, every later call fails (`Failed`).
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, DiskError> {
        if payload.len() as u64 > MAX_BATCH_BYTES {
            return Err(DiskError::TooLarge {
                what: "log batch",
                len: payload.len() as u64,
                max: MAX_BATCH_BYTES,
            });
        }
        let mut written = 0;
        let t = self.tail()?;
        if t.batches > 0 && t.len >= self.segment_target {
            self.roll()?;
            written += SEG_HEADER_LEN as u64;
        }
        let seq = self.next_batch;
        let t = self.tail()?;
        let frame = format::encode_frame(t.salt, seq, payload);
        let r = t
            .file
            .write_all(&frame)
            .map_err(|e| DiskError::io(&t.path, "write", e))
            .and_then(|()| {
                t.file
                    .sync()
                    .map_err(|e| DiskError::io(&t.path, "fdatasync", e))
            });
        self.fail_on_err(r)?;
        let t = self.tail()?;
        t.len += frame.len() as u64;
        t.batches += 1;
        let (seg, len) = (t.seg, t.len);
        self.seg_bytes.insert(seg, len);
        self.next_batch += 1;
        Ok(written + frame.len() as u64)
    }

    /// Log bytes (segment files) written since the newest durable image.
    pub fn log_bytes_since_image(&self) -> u64 {
        let since = lock_state(&self.images).image_seg;
        self.seg_bytes.range(since..).map(|(_, b)| b).sum()
    }

    /// Starts a new segment and returns a ticket for an image of the state
    /// as of now: every batch appended so far is in it, later ones go to the
    /// new segment. One ticket at a time: another call before the ticket is
    /// written or dropped returns `ImageBusy`.
    pub fn start_image(&mut self) -> Result<ImageTicket<F>, DiskError> {
        self.tail()?;
        {
            let mut st = lock_state(&self.images);
            if st.outstanding {
                return Err(DiskError::ImageBusy {
                    path: self.dir.clone(),
                });
            }
            st.outstanding = true;
        }
        let rolled = self.roll();
        let seg = match rolled {
            Ok(s) => s,
            Err(e) => {
                lock_state(&self.images).outstanding = false;
                return Err(e);
            }
        };
        // Forget the sizes of segments an earlier image made obsolete.
        let since = lock_state(&self.images).image_seg;
        self.seg_bytes = self.seg_bytes.split_off(&since);
        Ok(ImageTicket {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            seg,
            next_batch: self.next_batch,
            images: self.images.clone(),
        })
    }

    /// Bytes of every file in DIR (0 if it cannot be listed).
    pub fn disk_bytes(&self) -> u64 {
        match self.fs.list(&self.dir) {
            Ok(files) => files.iter().map(|(_, b)| b).sum(),
            Err(e) => {
                log::warn!("listing {}: {e}", self.dir.display());
                0
            }
        }
    }
}

/// The right to write one image: made by [`DataDir::start_image`], `Send`,
/// so the caller can write the image on another thread while the log goes on.
pub struct ImageTicket<F: Fs = RealFs> {
    fs: F,
    dir: PathBuf,
    seg: u64,
    next_batch: u64,
    images: Arc<Mutex<ImageState>>,
}

impl<F: Fs> ImageTicket<F> {
    /// The segment this image precedes.
    pub fn segment(&self) -> u64 {
        self.seg
    }

    /// Writes `image-<seg>.img` atomically (tmp, fsync, rename, fsync DIR),
    /// then deletes every older segment and image. A crash anywhere leaves
    /// either the old image and segments or the new ones, both recoverable.
    /// Returns the image file's size.
    pub fn write(self, payload: &[u8]) -> Result<u64, DiskError> {
        let path = self.dir.join(image_name(self.seg));
        if payload.len() as u64 > MAX_IMAGE_BYTES {
            return Err(DiskError::TooLarge {
                what: "image",
                len: payload.len() as u64,
                max: MAX_IMAGE_BYTES,
            });
        }
        let bytes = format::encode_image(self.seg, self.next_batch, payload);
        let tmp = self.dir.join(format!("{}.tmp", image_name(self.seg)));
        if let Err(e) = write_atomic(&self.fs, &self.dir, &tmp, &path, &bytes) {
            // Best effort: do not leave a half image filling a full disk
            // (recovery removes any leftover `.tmp` too).
            let _ = self.fs.remove(&tmp);
            return Err(e);
        }
        lock_state(&self.images).image_seg = self.seg;
        let files = self
            .fs
            .list(&self.dir)
            .map_err(|e| DiskError::io(&self.dir, "list", e))?;
        for (name, _) in files {
            let old = parse_num(&name, "wal-", ".log")
                .or_else(|| parse_num(&name, "image-", ".img"))
                .is_some_and(|s| s < self.seg);
            if old {
                let p = self.dir.join(&name);
                self.fs
                    .remove(&p)
                    .map_err(|e| DiskError::io(&p, "remove", e))?;
            }
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| DiskError::io(&self.dir, "fsync directory", e))?;
        Ok(bytes.len() as u64)
    }
}

impl<F: Fs> Drop for ImageTicket<F> {
    fn drop(&mut self) {
        lock_state(&self.images).outstanding = false;
    }
}
