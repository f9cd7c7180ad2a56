//! The one error type of the disk layer.
//!
//! Every message names the file it is about, because the operator is the
//! one who has to act on it: a corruption message also says the way out.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in [`crate::disk`].
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A system call failed (full disk, failed fsync, permissions, ...).
    #[error("{op} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file holds something that no crash could have produced. Refuses to
    /// start: guessing which records to drop could lose a promise or a write
    /// this node acknowledged.
    #[error(
        "{}: corrupt at offset {offset}: {detail}; refusing to start: move {} away (or restore \
         from a backup) and start this node with an empty -data-dir to rejoin as a new node",
        .path.display(),
        dir_of(.path).display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// Another process (or another `DataDir` in this one) holds the lock.
    #[error(
        "another doozerd is using {} (lock held on {})",
        .path.display(),
        .path.join(super::LOCK_FILE).display()
    )]
    Locked { path: PathBuf },
    /// The identity on disk is not the one the command line asks for.
    #[error(
        "{} holds node {id:?} of cluster {on_disk:?}, but the command line says cluster \
         {given:?}: give the same -c, or start with another (empty) -data-dir",
        .path.display()
    )]
    Mismatch {
        path: PathBuf,
        id: String,
        on_disk: String,
        given: String,
    },
    /// A payload or identity field longer than the format allows.
    #[error("{what} of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// An earlier write or sync failed: what is on disk is unknown, so this
    /// `DataDir` refuses every further append until the node restarts and
    /// recovers (which truncates whatever half-written tail is left).
    #[error(
        "the write-ahead log in {} failed earlier ({first}); no more writes until doozerd \
         is restarted",
        .path.display()
    )]
    Failed { path: PathBuf, first: String },
    /// `start_image` while the previous image ticket is still unwritten.
    #[error("an image of {} is already being written", .path.display())]
    ImageBusy { path: PathBuf },
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => path,
    }
}

impl DiskError {
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> DiskError {
        DiskError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> DiskError {
        DiskError::Corrupt {
            path: path.to_path_buf(),
            offset,
            detail: detail.into(),
        }
    }
}
