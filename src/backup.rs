//! The backup file `doozer snapshot save` writes and `restore` reads: the
//! tree at one rev, file by file, with a checksum over everything.
//!
//! A backup has to be trustworthy long after it was made and on another
//! machine, so every length is bounded and checked before anything is
//! allocated, the whole file is covered by a SHA-256, and every error names
//! the file and the offset. A hostile or damaged file gets a clear error,
//! never a huge allocation or a panic. Writing and reading both stream: a
//! backup of any size needs one file's worth of memory.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! header   "DOOZSNAP" (8 bytes), version u32 (= 1), tree rev i64
//! records  tag 'F' (1 byte), path length u32, path (UTF-8),
//!          file rev i64, body length u32, body        (one per file, walk order)
//! end      tag 'E' (1 byte), number of files u64,
//!          SHA-256 (32 bytes) of every byte before it
//! ```
//!
//! The writer writes `FILE.tmp`, syncs it, renames it to `FILE` and syncs
//! the directory: a crash leaves either no backup or a whole one.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The first 8 bytes of every backup.
pub const MAGIC: &[u8; 8] = b"DOOZSNAP";
/// The format this code writes and reads.
pub const VERSION: u32 = 1;
/// Longest path a record may hold: the store's own limit
/// ([`crate::types::MAX_PATH_BYTES`]); a longer length field is corruption.
pub const MAX_PATH_BYTES: usize = crate::types::MAX_PATH_BYTES;
/// Largest body a record may hold: 1 GiB, above any value a server can hold
/// (its frames are under 1 GiB, see [`crate::config::Limits`]); a larger
/// length field is corruption. A length is also checked against the bytes
/// left in the file before anything is read, and a body's buffer grows only
/// as its bytes arrive.
pub const MAX_BODY_BYTES: usize = 1 << 30;

const TAG_FILE: u8 = b'F';
const TAG_END: u8 = b'E';
const HEADER_BYTES: u64 = 8 + 4 + 8;
const END_BYTES: u64 = 1 + 8 + 32;
/// Bytes read ahead for a body before its length is proven by the bytes
/// themselves.
const INITIAL_BODY_BYTES: usize = 64 * 1024;

/// Why a backup could not be written or read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: not a doozer backup (no DOOZSNAP header)")]
    NotABackup { file: PathBuf },
    #[error("{file}: backup format version {version}; this doozer reads version {VERSION}")]
    Version { file: PathBuf, version: u32 },
    #[error("{file}: truncated at byte {offset} (the backup is incomplete)")]
    Truncated { file: PathBuf, offset: u64 },
    #[error("{file}: corrupt at byte {offset}: {what}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{file}: checksum mismatch (the backup is damaged)")]
    Checksum { file: PathBuf },
    #[error("{file}: {what}")]
    Invalid { file: PathBuf, what: String },
}

/// What a whole backup holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The rev of the tree saved.
    pub rev: i64,
    pub files: u64,
    /// Size of the backup file.
    pub bytes: u64,
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    pub path: String,
    /// The rev that last wrote it in the saved cluster.
    pub rev: i64,
    pub body: Vec<u8>,
}

/// The temporary name a backup is written under before its rename.
pub fn tmp_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes a backup: [`BackupWriter::add`] each file, then
/// [`BackupWriter::finish`]. Dropped unfinished, it removes its temporary
/// file and leaves any earlier `FILE` as it was.
pub struct BackupWriter {
    file: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    hash: Sha256,
    files: u64,
    bytes: u64,
}

impl BackupWriter {
    /// Starts `file` (as `file.tmp`) for the tree at `rev`.
    pub fn create(file: &Path, rev: i64) -> Result<BackupWriter, BackupError> {
        let tmp = tmp_path(file);
        let out = File::create(&tmp).map_err(|source| BackupError::Io {
            file: tmp.clone(),
            source,
        })?;
        let mut w = BackupWriter {
            file: file.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, out)),
            hash: Sha256::new(),
            files: 0,
            bytes: 0,
        };
        w.put(MAGIC)?;
        w.put(&VERSION.to_be_bytes())?;
        w.put(&rev.to_be_bytes())?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        let out = self.out.as_mut().expect("open until finished");
        out.write_all(bytes).map_err(|source| BackupError::Io {
            file: self.tmp.clone(),
            source,
        })
    }

    /// Adds one file. Paths and bodies over the format's limits are refused.
    pub fn add(&mut self, path: &str, rev: i64, body: &[u8]) -> Result<(), BackupError> {
        if path.len() > MAX_PATH_BYTES || body.len() > MAX_BODY_BYTES {
            return Err(BackupError::Invalid {
                file: self.file.clone(),
                what: format!(
                    "{path:.64}: path of {} bytes or body of {} bytes over the format's limits",
                    path.len(),
                    body.len()
                ),
            });
        }
        self.put(&[TAG_FILE])?;
        self.put(&(path.len() as u32).to_be_bytes())?;
        self.put(path.as_bytes())?;
        self.put(&rev.to_be_bytes())?;
        self.put(&(body.len() as u32).to_be_bytes())?;
        self.put(body)?;
        self.files += 1;
        Ok(())
    }

    /// Ends the backup: the end record and checksum, a sync, the rename to
    /// `FILE` and a sync of its directory.
    pub fn finish(mut self, rev: i64) -> Result<Summary, BackupError> {
        self.put(&[TAG_END])?;
        self.put(&self.files.to_be_bytes())?;
        let sum = std::mem::take(&mut self.hash).finalize();
        let mut out = self.out.take().expect("open until finished");
        let io = |source| BackupError::Io {
            file: self.tmp.clone(),
            source,
        };
        out.write_all(&sum).map_err(io)?;
        self.bytes += sum.len() as u64;
        let out = out.into_inner().map_err(|e| io(e.into_error()))?;
        out.sync_all().map_err(io)?;
        drop(out);
        fs::rename(&self.tmp, &self.file).map_err(|source| BackupError::Io {
            file: self.file.clone(),
            source,
        })?;
        let dir = match self.file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(Summary {
            rev,
            files: self.files,
            bytes: self.bytes,
        })
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Reads a backup file by file. The checksum is known good only once
/// [`BackupReader::next_file`] has returned `Ok(None)`; [`verify`] reads a
/// whole backup first, for whoever must not act on a damaged one.
pub struct BackupReader {
    file: PathBuf,
    input: BufReader<File>,
    hash: Sha256,
    offset: u64,
    len: u64,
    rev: i64,
    files: u64,
    done: bool,
}

impl BackupReader {
    /// Opens `file` and checks its header.
    pub fn open(file: &Path) -> Result<BackupReader, BackupError> {
        let f = File::open(file).map_err(|source| BackupError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| BackupError::Io {
                file: file.to_path_buf(),
                source,
            })?
            .len();
        let mut r = BackupReader {
            file: file.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, f),
            hash: Sha256::new(),
            offset: 0,
            len,
            rev: 0,
            files: 0,
            done: false,
        };
        if len < HEADER_BYTES {
            let mut start = vec![0; len as usize];
            r.input.read_exact(&mut start).map_err(|e| r.io(e))?;
            return Err(if MAGIC.starts_with(&start) && !start.is_empty() {
                BackupError::Truncated {
                    file: r.file,
                    offset: len,
                }
            } else {
                BackupError::NotABackup { file: r.file }
            });
        }
        let magic: [u8; 8] = r.take()?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup { file: r.file });
        }
        let version = u32::from_be_bytes(r.take()?);
        if version != VERSION {
            return Err(BackupError::Version {
                file: r.file,
                version,
            });
        }
        r.rev = i64::from_be_bytes(r.take()?);
        Ok(r)
    }

    /// The rev of the tree saved.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    fn io(&self, source: io::Error) -> BackupError {
        BackupError::Io {
            file: self.file.clone(),
            source,
        }
    }

    fn corrupt(&self, offset: u64, what: String) -> BackupError {
        BackupError::Corrupt {
            file: self.file.clone(),
            offset,
            what,
        }
    }

    fn truncated(&self) -> BackupError {
        BackupError::Truncated {
            file: self.file.clone(),
            offset: self.len,
        }
    }

    /// Reads `n` bytes into `buf` (cleared first), growing it only as bytes
    /// arrive; `Truncated` when the file ends first.
    fn read_into(&mut self, buf: &mut Vec<u8>, n: usize) -> Result<(), BackupError> {
        buf.clear();
        buf.reserve(n.min(INITIAL_BODY_BYTES));
        let got = (&mut self.input)
            .take(n as u64)
            .read_to_end(buf)
            .map_err(|e| self.io(e))?;
        if got < n {
            return Err(self.truncated());
        }
        self.hash.update(&buf[..]);
        self.offset += n as u64;
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], BackupError> {
        let mut out = [0u8; N];
        match self.input.read_exact(&mut out) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(self.truncated()),
            Err(e) => return Err(self.io(e)),
        }
        self.hash.update(out);
        self.offset += N as u64;
        Ok(out)
    }

    /// Checks a length field at `at` against its limit and the bytes left
    /// in the file (`after` more bytes must follow what it counts).
    fn length(
        &self,
        at: u64,
        len: u32,
        max: usize,
        what: &str,
        after: u64,
    ) -> Result<usize, BackupError> {
        let len = len as usize;
        if len > max {
            return Err(self.corrupt(at, format!("{what} length {len} over the limit of {max}")));
        }
        let left = self.len.saturating_sub(self.offset);
        if (len as u64).saturating_add(after) > left {
            return Err(self.corrupt(
                at,
                format!("{what} length {len} runs past the end of the file ({left} bytes left)"),
            ));
        }
        Ok(len)
    }

    /// The next file, or `None` at the end record once the count and the
    /// checksum are proven.
    pub fn next_file(&mut self) -> Result<Option<BackupFile>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let [tag] = self.take()?;
        match tag {
            TAG_FILE => {}
            TAG_END => return self.end(at).map(|()| None),
            other => {
                return Err(self.corrupt(at, format!("record tag {other:#04x} is neither F nor E")))
            }
        }
        let at = self.offset;
        let len = u32::from_be_bytes(self.take()?);
        // At least a rev, a body length and the end record follow the path.
        let len = self.length(at, len, MAX_PATH_BYTES, "path", 8 + 4 + END_BYTES)?;
        let mut path = Vec::new();
        self.read_into(&mut path, len)?;
        let path = String::from_utf8(path)
            .map_err(|_| self.corrupt(at + 4, "path is not UTF-8".into()))?;
        if crate::types::Path::parse(&path).is_err() {
            return Err(self.corrupt(at + 4, format!("{path:.64}: not a valid doozer path")));
        }
        let rev = i64::from_be_bytes(self.take()?);
        let at = self.offset;
        let len = u32::from_be_bytes(self.take()?);
        let len = self.length(at, len, MAX_BODY_BYTES, "body", END_BYTES)?;
        let mut body = Vec::new();
        self.read_into(&mut body, len)?;
        self.files += 1;
        Ok(Some(BackupFile { path, rev, body }))
    }

    fn end(&mut self, at: u64) -> Result<(), BackupError> {
        let count = u64::from_be_bytes(self.take()?);
        let expected = std::mem::take(&mut self.hash).finalize();
        let mut sum = [0u8; 32];
        match self.input.read_exact(&mut sum) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(self.truncated()),
            Err(e) => return Err(self.io(e)),
        }
        if sum[..] != expected[..] {
            return Err(BackupError::Checksum {
                file: self.file.clone(),
            });
        }
        if count != self.files {
            return Err(self.corrupt(
                at,
                format!("end record counts {count} files, {} were read", self.files),
            ));
        }
        self.offset += 32;
        if self.offset != self.len {
            return Err(self.corrupt(
                self.offset,
                format!("{} bytes after the end record", self.len - self.offset),
            ));
        }
        self.done = true;
        Ok(())
    }

    /// What the backup holds; complete only after the last file was read.
    pub fn summary(&self) -> Summary {
        Summary {
            rev: self.rev,
            files: self.files,
            bytes: self.len,
        }
    }
}

/// Reads a whole backup and proves its checksum, holding one file at a
/// time.
pub fn verify(file: &Path) -> Result<Summary, BackupError> {
    let mut r = BackupReader::open(file)?;
    while r.next_file()?.is_some() {}
    Ok(r.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "doozer-backup-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample(file: &Path) -> Summary {
        sample_sized(file, 100_000)
    }

    fn sample_sized(file: &Path, big: usize) -> Summary {
        let mut w = BackupWriter::create(file, 42).unwrap();
        w.add("/a", 3, b"hello").unwrap();
        w.add("/b/c", 7, &[]).unwrap();
        w.add("/b/d", 9, &vec![7u8; big]).unwrap();
        w.finish(42).unwrap()
    }

    fn read_all(file: &Path) -> Result<(Vec<BackupFile>, Summary), BackupError> {
        let mut r = BackupReader::open(file)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_file()? {
            out.push(f);
        }
        Ok((out, r.summary()))
    }

    #[test]
    fn round_trip() {
        let d = dir();
        let file = d.join("b.snap");
        let written = sample(&file);
        assert!(!tmp_path(&file).exists(), "the temporary file is renamed");
        assert_eq!(written.files, 3);
        assert_eq!(written.bytes, fs::metadata(&file).unwrap().len());
        let (files, summary) = read_all(&file).unwrap();
        assert_eq!(summary, written);
        assert_eq!(
            files[0],
            BackupFile {
                path: "/a".into(),
                rev: 3,
                body: b"hello".to_vec()
            }
        );
        assert_eq!(files[1].path, "/b/c");
        assert!(files[1].body.is_empty());
        assert_eq!(files[2].body.len(), 100_000);
        assert_eq!(verify(&file).unwrap(), written);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let d = dir();
        let file = d.join("b.snap");
        let mut w = BackupWriter::create(&file, 1).unwrap();
        w.add("/a", 1, b"x").unwrap();
        drop(w);
        assert!(!file.exists() && !tmp_path(&file).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let d = dir();
        let file = d.join("b.snap");
        sample_sized(&file, 300);
        let whole = fs::read(&file).unwrap();
        let cut = d.join("cut.snap");
        for len in 0..whole.len() {
            fs::write(&cut, &whole[..len]).unwrap();
            let err = read_all(&cut).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("cut.snap"), "{text}");
            assert!(
                matches!(
                    err,
                    BackupError::Truncated { .. }
                        | BackupError::NotABackup { .. }
                        | BackupError::Corrupt { .. }
                ),
                "at {len}: {err}"
            );
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let d = dir();
        let file = d.join("b.snap");
        sample(&file);
        let whole = fs::read(&file).unwrap();
        let bad = d.join("bad.snap");
        // Every byte of the header and the small records, and a sample of the
        // large body.
        let positions = (0..200)
            .chain((200..whole.len()).step_by(997))
            .chain(whole.len() - 40..whole.len());
        for at in positions {
            let mut copy = whole.clone();
            copy[at] ^= 0x01;
            fs::write(&bad, &copy).unwrap();
            let err = read_all(&bad).expect_err(&format!("flip at {at} not caught"));
            assert!(err.to_string().contains("bad.snap"), "{err}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn huge_length_fields_are_refused_before_allocating() {
        let d = dir();
        let file = d.join("huge.snap");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_be_bytes());
        bytes.extend_from_slice(&5i64.to_be_bytes());
        // A path length of 4 GiB - 1.
        let mut path_huge = bytes.clone();
        path_huge.push(TAG_FILE);
        path_huge.extend_from_slice(&u32::MAX.to_be_bytes());
        fs::write(&file, &path_huge).unwrap();
        let err = read_all(&file).unwrap_err();
        assert!(
            err.to_string()
                .contains("path length 4294967295 over the limit"),
            "{err}"
        );
        // A body length under the limit but past the end of the file.
        let mut body_huge = bytes.clone();
        body_huge.push(TAG_FILE);
        body_huge.extend_from_slice(&2u32.to_be_bytes());
        body_huge.extend_from_slice(b"/a");
        body_huge.extend_from_slice(&1i64.to_be_bytes());
        body_huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
        body_huge.extend_from_slice(&[0; 100]);
        fs::write(&file, &body_huge).unwrap();
        let err = read_all(&file).unwrap_err();
        assert!(
            err.to_string().contains("runs past the end of the file"),
            "{err}"
        );
        // Over the body limit.
        let mut over = bytes.clone();
        over.push(TAG_FILE);
        over.extend_from_slice(&2u32.to_be_bytes());
        over.extend_from_slice(b"/a");
        over.extend_from_slice(&1i64.to_be_bytes());
        over.extend_from_slice(&u32::MAX.to_be_bytes());
        over.extend_from_slice(&[0; 100]);
        fs::write(&file, &over).unwrap();
        let err = read_all(&file).unwrap_err();
        assert!(
            err.to_string().contains("over the limit of 1073741824"),
            "{err}"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn wrong_magic_version_and_paths_are_named() {
        let d = dir();
        let file = d.join("x.snap");
        fs::write(&file, b"hello world, not a backup at all").unwrap();
        assert!(matches!(
            read_all(&file),
            Err(BackupError::NotABackup { .. })
        ));
        let mut v2 = Vec::new();
        v2.extend_from_slice(MAGIC);
        v2.extend_from_slice(&2u32.to_be_bytes());
        v2.extend_from_slice(&0i64.to_be_bytes());
        fs::write(&file, &v2).unwrap();
        let err = read_all(&file).unwrap_err();
        assert!(
            matches!(err, BackupError::Version { version: 2, .. }),
            "{err}"
        );
        let missing = d.join("missing.snap");
        let err = read_all(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.snap"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }
}
