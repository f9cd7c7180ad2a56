//! The file system seen through a small trait, so a test or the simulation
//! can swap the real disk for one it can crash.
//!
//! [`RealFs`] is `std::fs`. [`MemFs`] is an in-memory disk that models what
//! a crash can do to a real one:
//! - each file has the bytes last synced (`sync`) and an unsynced tail; a
//!   crash keeps a random prefix of that tail and may garble up to 8 of its
//!   last kept bytes (a torn write);
//! - directory operations (create, rename, remove) become durable at
//!   `sync_dir`; a crash keeps a random subset of those not yet synced (POSIX
//!   promises no order, so this is stricter than an ordered journal);
//! - `truncate` is durable when it returns (it syncs, as `RealFs` does);
//! - fault knobs: [`MemFs::fail_next_sync`], [`MemFs::set_capacity`] (writes
//!   past it stop there with `ENOSPC`), and [`MemFs::crash_after`] (the
//!   n-th mutating call from now writes half of its bytes, then it and every
//!   later call fail, as if the process had died right there).
//!
//! [`MemFs::crash`] is a power cut; [`MemFs::kill`] is only the process
//! dying (unsynced data stays, unsynced, in the "page cache"). Handles opened
//! before either fail afterwards, and the locks are released (the process
//! that held them is gone).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file open for appending.
pub trait FsFile: Send {
    /// Writes all of `buf` at the end of the file (a failure may leave part).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the bytes written so far survive a crash once it is Ok.
    fn sync(&mut self) -> io::Result<()>;
}

/// Every file operation the disk layer uses. Paths are whole paths.
pub trait Fs: Clone + Send + Sync + 'static {
    type File: FsFile;
    /// Held while the lock is; dropping it releases it.
    type Lock: Send;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates (or empties) the file and opens it for appending.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// The file's length in bytes.
    fn size(&self, path: &Path) -> io::Result<u64>;
    /// The whole file (check `size` first: this allocates that much).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Cuts the file to `len` bytes and syncs that.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Names (UTF-8 ones only) and sizes of the regular files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// An exclusive lock on `path` (created if missing); `WouldBlock` if taken.
    fn lock(&self, path: &Path) -> io::Result<Self::Lock>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl FsFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Fs for RealFs {
    type File = File;
    type Lock = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().append(true).open(path)
    }
    fn size(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if let (true, Ok(name)) = (meta.is_file(), entry.file_name().into_string()) {
                out.push((name, meta.len()));
            }
        }
        Ok(out)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn lock(&self, path: &Path) -> io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// A directory operation, durable only after `sync_dir`.
#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// Bytes of `data` that are synced. Files only grow by appending, and
    /// truncation syncs, so the synced content is always this prefix.
    synced: usize,
}

#[derive(Default)]
struct Disk {
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    /// What a reader sees now.
    live: BTreeMap<PathBuf, u64>,
    /// What survives a crash, plus `pending` applied in order.
    durable: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    /// Bumped by a crash: older handles fail.
    epoch: u64,
    locks: HashMap<PathBuf, u64>,
    next_token: u64,
    fail_next_sync: bool,
    capacity: Option<u64>,
    /// Mutating calls left before the simulated process death.
    crash_after: Option<u64>,
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

impl Disk {
    /// Counts one mutating call; `Ok(true)` if it is the one that dies.
    fn step(&mut self) -> io::Result<bool> {
        match self.crash_after {
            None => Ok(false),
            Some(0) => Err(dead()),
            Some(n) => {
                self.crash_after = Some(n - 1);
                Ok(n == 1)
            }
        }
    }

    fn used(&self) -> u64 {
        self.live
            .values()
            .filter_map(|i| self.inodes.get(i))
            .map(|n| n.data.len() as u64)
            .sum()
    }

    fn inode(&self, path: &Path) -> io::Result<u64> {
        self.live
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }
}

fn apply(ns: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(p, i) => {
            ns.insert(p.clone(), *i);
        }
        DirOp::Unlink(p) => {
            ns.remove(p);
        }
        DirOp::Rename(from, to) => {
            if let Some(i) = ns.remove(from) {
                ns.insert(to.clone(), i);
            }
        }
    }
}

/// An in-memory disk that can crash (see the module docs). Clones share it.
#[derive(Clone, Default)]
pub struct MemFs(Arc<Mutex<Disk>>);

/// A file of a [`MemFs`] open for appending.
pub struct MemFile {
    disk: MemFs,
    inode: u64,
    epoch: u64,
}

/// A lock on a [`MemFs`] path, released on drop.
pub struct MemLock {
    disk: MemFs,
    path: PathBuf,
    token: u64,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut d = self.disk.disk();
        if d.locks.get(&self.path) == Some(&self.token) {
            d.locks.remove(&self.path);
        }
    }
}

impl MemFs {
    pub fn new() -> MemFs {
        MemFs::default()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A panic elsewhere while holding the lock leaves the model usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `sync` or `sync_dir` fails with `EIO` (and syncs nothing).
    pub fn fail_next_sync(&self) {
        self.disk().fail_next_sync = true;
    }

    /// Writes that would take the live files past `bytes` in total write up
    /// to it and fail with `ENOSPC`. `None` lifts the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.disk().capacity = bytes;
    }

    /// The `n`-th mutating call from now (1 = the next) dies halfway, and
    /// every call after it fails, until [`MemFs::crash`]. `None` disarms.
    pub fn crash_after(&self, n: Option<u64>) {
        self.disk().crash_after = n;
    }

    /// Everything not yet synced may be lost or torn (see the module docs).
    pub fn crash(&self, rng: &mut impl rand::Rng) {
        let mut d = self.disk();
        let pending = std::mem::take(&mut d.pending);
        let mut ns = std::mem::take(&mut d.durable);
        for op in &pending {
            if rng.next_u32() & 1 == 0 {
                apply(&mut ns, op);
            }
        }
        let referenced: std::collections::HashSet<u64> = ns.values().copied().collect();
        d.inodes.retain(|i, _| referenced.contains(i));
        for inode in d.inodes.values_mut() {
            assert!(
                inode.synced <= inode.data.len(),
                "synced bytes beyond the file"
            );
            let tail = inode.data.len() - inode.synced;
            let keep = rng.next_u64() as usize % (tail + 1);
            inode.data.truncate(inode.synced + keep);
            if keep > 0 && rng.next_u32() & 1 == 0 {
                let garble = 1 + rng.next_u32() as usize % keep.min(8);
                let len = inode.data.len();
                for b in &mut inode.data[len - garble..] {
                    *b ^= 1 << (rng.next_u32() % 8);
                }
            }
            inode.synced = inode.data.len();
        }
        d.durable = ns.clone();
        d.live = ns;
        d.epoch += 1;
        d.locks.clear();
        d.crash_after = None;
        d.fail_next_sync = false;
    }

    /// The process dies but the machine stays up: what it wrote stays in
    /// the "page cache" (still unsynced, so a later [`MemFs::crash`] can
    /// lose it); handles and locks of the dead process are gone.
    pub fn kill(&self) {
        let mut d = self.disk();
        d.epoch += 1;
        d.locks.clear();
        d.crash_after = None;
        d.fail_next_sync = false;
    }

    /// The live content of a file (tests).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let d = self.disk();
        let i = d.live.get(path)?;
        d.inodes.get(i).map(|n| n.data.clone())
    }

    /// Replaces the live content of a file, durably (tests: corruption).
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        let mut d = self.disk();
        if let Some(i) = d.live.get(path).copied() {
            if let Some(n) = d.inodes.get_mut(&i) {
                n.synced = data.len();
                n.data = data;
            }
        }
    }
}

impl FsFile for MemFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut d = self.disk.disk();
        if d.epoch != self.epoch {
            return Err(dead());
        }
        let dies = d.step()?;
        let room = match d.capacity {
            Some(cap) => cap.saturating_sub(d.used()) as usize,
            None => usize::MAX,
        };
        let want = if dies { buf.len() / 2 } else { buf.len() };
        let n = want.min(room);
        let inode = d.inodes.get_mut(&self.inode).ok_or_else(dead)?;
        inode.data.extend_from_slice(&buf[..n]);
        if dies {
            Err(dead())
        } else if n < buf.len() {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            Ok(())
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut d = self.disk.disk();
        if d.epoch != self.epoch || d.step()? {
            return Err(dead());
        }
        if std::mem::take(&mut d.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let inode = d.inodes.get_mut(&self.inode).ok_or_else(dead)?;
        inode.synced = inode.data.len();
        Ok(())
    }
}

impl Fs for MemFs {
    type File = MemFile;
    type Lock = MemLock;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn create(&self, path: &Path) -> io::Result<MemFile> {
        let mut d = self.disk();
        if d.step()? {
            return Err(dead());
        }
        let inode = d.next_inode;
        d.next_inode += 1;
        d.inodes.insert(inode, Inode::default());
        d.live.insert(path.to_path_buf(), inode);
        d.pending.push(DirOp::Link(path.to_path_buf(), inode));
        Ok(MemFile {
            disk: self.clone(),
            inode,
            epoch: d.epoch,
        })
    }
    fn open_append(&self, path: &Path) -> io::Result<MemFile> {
        let d = self.disk();
        if d.crash_after == Some(0) {
            return Err(dead());
        }
        Ok(MemFile {
            disk: self.clone(),
            inode: d.inode(path)?,
            epoch: d.epoch,
        })
    }
    fn size(&self, path: &Path) -> io::Result<u64> {
        let d = self.disk();
        let i = d.inode(path)?;
        Ok(d.inodes.get(&i).map_or(0, |n| n.data.len() as u64))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let d = self.disk();
        let i = d.inode(path)?;
        Ok(d.inodes.get(&i).map(|n| n.data.clone()).unwrap_or_default())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut d = self.disk();
        if d.step()? {
            return Err(dead());
        }
        let i = d.inode(path)?;
        if let Some(n) = d.inodes.get_mut(&i) {
            n.data.truncate(len as usize);
            n.synced = n.data.len();
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if d.step()? {
            return Err(dead());
        }
        let i = d.inode(from)?;
        d.live.remove(from);
        d.live.insert(to.to_path_buf(), i);
        d.pending
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if d.step()? {
            return Err(dead());
        }
        d.inode(path)?;
        d.live.remove(path);
        d.pending.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, u64)>> {
        let d = self.disk();
        Ok(d.live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, i)| {
                let name = p.file_name()?.to_str()?.to_string();
                Some((name, d.inodes.get(i).map_or(0, |n| n.data.len() as u64)))
            })
            .collect())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if d.step()? {
            return Err(dead());
        }
        if std::mem::take(&mut d.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let pending = std::mem::take(&mut d.pending);
        let mut ns = std::mem::take(&mut d.durable);
        for op in &pending {
            apply(&mut ns, op);
        }
        d.durable = ns;
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<MemLock> {
        let mut d = self.disk();
        if d.locks.contains_key(path) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        d.next_token += 1;
        let token = d.next_token;
        d.locks.insert(path.to_path_buf(), token);
        Ok(MemLock {
            disk: self.clone(),
            path: path.to_path_buf(),
            token,
        })
    }
}
