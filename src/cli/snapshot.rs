//! `doozer snapshot save|status|restore FILE`: backups of a cluster's tree.
//!
//! `save` reads the tree at one rev with the SNAPSHOT verb (our extension:
//! one request, the files streamed in walk order) and writes it as a
//! [`crate::backup`] file, file by file, so a backup of any size needs one
//! file's worth of memory. `status` proves a backup's checksum. `restore`
//! proves it too, then writes its files into a running cluster with
//! pipelined SETs: that is how a new cluster is seeded from a backup.
//!
//! What `restore` skips: everything under `/ctl`, the saved cluster's own
//! state (its members, slots, leader), which would describe nodes that are
//! not the new cluster's. Revs cannot be restored: the new cluster gives
//! each write its own rev (the backup keeps the old ones for reference).

use std::path::Path;

use futures::stream::FuturesUnordered;
use futures::StreamExt;

use super::goflag::{self, FlagError, Kind};
use super::{dial, help_text, usage_text, Failure, Globals, Io, Outcome, EXIT_ERROR, EXIT_USAGE};
use crate::backup::{self, BackupReader, BackupWriter};
use crate::client::{self, Client};
use crate::error::ErrCode;

/// SETs `restore` keeps in flight at once.
pub const RESTORE_WINDOW: usize = 64;
/// Bytes of bodies `restore` keeps in flight at once (one larger body goes
/// alone): half the server's default per-connection budget of 8 MiB, so
/// restoring never meets `too many bytes in flight`.
pub const RESTORE_WINDOW_BYTES: usize = 4 << 20;

/// Bytes as `save` and `status` print them: `6.4 MB`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes < 1_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else if bytes < 1_000_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} GB", bytes as f64 / 1e9)
    }
}

/// Whether `path` is the saved cluster's own state, which `restore` skips.
pub fn is_ctl(path: &str) -> bool {
    path == "/ctl" || path.starts_with("/ctl/")
}

/// The whole `snapshot` command; `args` follow the command name. Flags may
/// stand anywhere among the arguments: the global ones and `-force`.
pub fn run(argv0: &str, g: &mut Globals, args: &[String], io: &mut Io<'_>) -> i32 {
    let mut force = false;
    let mut positional: Vec<&str> = Vec::new();
    let mut rest = args;
    loop {
        let kind_of = |name: &str| match name {
            "force" => Some(Kind::Bool),
            _ => Globals::kind_of(name),
        };
        let parsed = goflag::parse(rest, kind_of, |name, value| match name {
            "force" => {
                force = goflag::parse_bool(value)?;
                Ok(())
            }
            _ => g.set(name, value),
        });
        match parsed {
            Ok(after) => rest = after,
            Err(e) => {
                if e != FlagError::Help {
                    let _ = writeln!(io.stderr, "{e}");
                    let _ = io.stderr.write_all(usage_text(argv0).as_bytes());
                    return EXIT_ERROR;
                }
                let _ = io.stdout.write_all(help_text(argv0, "snapshot").as_bytes());
                return 0;
            }
        }
        let Some((first, after)) = rest.split_first() else {
            break;
        };
        positional.push(first);
        rest = after;
    }
    if g.help {
        let _ = io.stdout.write_all(help_text(argv0, "snapshot").as_bytes());
        return 0;
    }
    let result = match positional.as_slice() {
        ["save", file] => save(g, io, Path::new(file)),
        ["status", file] => status(io, Path::new(file)),
        ["restore", file] => restore(g, io, Path::new(file), force),
        [op, _] => {
            let _ = writeln!(
                io.stderr,
                "snapshot: unknown operation {op} (save, status or restore)"
            );
            let _ = io.stdout.write_all(help_text(argv0, "snapshot").as_bytes());
            return EXIT_USAGE;
        }
        _ => {
            let _ = writeln!(io.stderr, "snapshot: wrong number of arguments");
            let _ = io.stdout.write_all(help_text(argv0, "snapshot").as_bytes());
            return EXIT_USAGE;
        }
    };
    super::finish(result, io)
}

fn save(g: &Globals, io: &mut Io<'_>, file: &Path) -> Outcome {
    let c = dial(g)?;
    crate::runtime::rt::block_on(async {
        // The rev first: the file's header names it before any file is in.
        let rev = if g.rev == -1 { c.rev().await? } else { g.rev };
        let mut out = BackupWriter::create(file, rev).map_err(|e| Failure::text(e.to_string()))?;
        let got = c
            .snapshot(Some(rev), |f| {
                out.add(&f.path, f.rev, &f.body)
                    .map_err(|e| client::Error::Sink(e.to_string()))
            })
            .await?;
        if got.rev != rev {
            return Err(Failure::text(format!(
                "asked for the tree at rev {rev}, got rev {}",
                got.rev
            )));
        }
        let summary = out.finish(rev).map_err(|e| Failure::text(e.to_string()))?;
        super::write_out(
            io,
            format!(
                "saved rev {}, {} files, {} to {}\n",
                summary.rev,
                summary.files,
                human_bytes(summary.bytes),
                file.display()
            )
            .as_bytes(),
        )
    })
}

fn status(io: &mut Io<'_>, file: &Path) -> Outcome {
    let s = backup::verify(file).map_err(|e| Failure::text(e.to_string()))?;
    super::write_out(
        io,
        format!(
            "{}: rev {}, {} files, {} bytes ({}), checksum ok\n",
            file.display(),
            s.rev,
            s.files,
            s.bytes,
            human_bytes(s.bytes)
        )
        .as_bytes(),
    )
}

/// Whether the cluster holds anything outside `/ctl` at `rev`.
async fn holds_data(c: &Client, rev: i64) -> Result<bool, client::Error> {
    match c.getdir_all("/", rev).await {
        Ok(names) => Ok(names.iter().any(|n| n != "ctl")),
        Err(e) if e.code() == Some(ErrCode::NoEnt) => Ok(false),
        Err(e) => Err(e),
    }
}

fn restore(g: &Globals, io: &mut Io<'_>, file: &Path, force: bool) -> Outcome {
    // The whole file is proven before anything is written anywhere.
    let summary = backup::verify(file).map_err(|e| Failure::text(e.to_string()))?;
    let c = dial(g)?;
    let (restored, skipped, bytes, rev) = crate::runtime::rt::block_on(async {
        let rev = c.rev().await?;
        if !force && holds_data(&c, rev).await? {
            return Err(Failure::text(format!(
                "the cluster already holds files outside /ctl (at rev {rev}); restore into a \
                 new cluster, or give -force to write the backup's files over it"
            )));
        }
        let mut reader = BackupReader::open(file).map_err(|e| Failure::text(e.to_string()))?;
        let mut in_flight = FuturesUnordered::new();
        let mut held = 0usize;
        let (mut restored, mut skipped, mut bytes) = (0u64, 0u64, 0u64);
        while let Some(f) = reader
            .next_file()
            .map_err(|e| Failure::text(e.to_string()))?
        {
            if is_ctl(&f.path) {
                skipped += 1;
                continue;
            }
            let cost = f.body.len() + f.path.len();
            while in_flight.len() >= RESTORE_WINDOW
                || (!in_flight.is_empty() && held + cost > RESTORE_WINDOW_BYTES)
            {
                let (done, result): (usize, Result<i64, client::Error>) =
                    in_flight.next().await.expect("not empty");
                held -= done;
                result?;
            }
            held += cost;
            restored += 1;
            bytes += f.body.len() as u64;
            let c = c.clone();
            in_flight.push(async move {
                let result = c
                    .set(&f.path, crate::types::sentinel::CLOBBER, &f.body)
                    .await;
                (cost, result)
            });
        }
        while let Some((_, result)) = in_flight.next().await {
            result?;
        }
        let rev = c.rev().await?;
        Ok((restored, skipped, bytes, rev))
    })?;
    super::write_out(
        io,
        format!(
            "restored {restored} files ({}) from {} (saved at rev {}); skipped {skipped} under \
             /ctl; the cluster is at rev {rev}\n",
            human_bytes(bytes),
            file.display(),
            summary.rev
        )
        .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_and_sizes() {
        assert!(is_ctl("/ctl") && is_ctl("/ctl/node/x/addr"));
        assert!(!is_ctl("/ctlx") && !is_ctl("/a/ctl"));
        assert_eq!(human_bytes(6_400_000), "6.4 MB");
        assert_eq!(human_bytes(1_500), "1.5 kB");
    }
}
