//! Restoring files: their blocks read back through the repository's block reader
//! (runs of adjacent blobs with one ranged read, opened and checked on rayon), a few
//! runs ahead, written by a blocking writer.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{Commit, DurableFile};
use crate::progress::Progress;
use crate::repo::block_reader::{BlockFault, BlockReader, Run, Wanted};
use crate::repo::blocklist::BlockListReader;
use crate::repo::format::FileEntry;

/// Files restored at once. Most files of a cluster are small, one ranged read each:
/// on an object store with 20 ms per request, 4 at a time made a restore of 981 files
/// 5 s slower than without latency (issue 22); 8 halves that at the same memory bound
/// as 4 files × 4 runs ahead.
pub(super) const PARALLEL_FILES: usize = 8;
/// Runs fetched and opened, waiting for a file's writer (each at most 2 MiB restored).
/// The writer takes a run at a time: one wake-up per run, not per block.
const RUNS_QUEUED: usize = 2;
/// Ranged reads in flight per file.
const RUNS_AHEAD: usize = 2;

/// A regular file to restore: its entry, destination and blocks in the block list.
pub(super) struct FileJob {
    pub entry: FileEntry,
    pub dest: PathBuf,
    pub first: u64,
    pub count: u64,
    /// fsync this file itself (pg_control, written last); the others are made
    /// durable together, by one sync of their file system before it.
    pub durable: bool,
    /// A left-out database's file (selective restore): written as zeros.
    pub zero: bool,
}

/// A left-out database's file: a sparse file of its size, all zeros, with its mode
/// (temp → rename; made durable with the others by the sync of its file system).
pub(super) async fn zero_file(job: FileJob) -> Result<()> {
    tokio::task::spawn_blocking(move || -> Result<()> {
        let ctx = || format!("cannot write {}", job.dest.display());
        let mut f = DurableFile::create(&job.dest).ctx(ctx)?;
        f.file().set_len(job.entry.size).ctx(ctx)?;
        f.file().set_permissions(std::fs::Permissions::from_mode(job.entry.mode)).ctx(ctx)?;
        f.publish_volatile().ctx(ctx)
    })
    .await
    .map_err(|e| Error::Internal(format!("writer task failed: {e}")))?
}

pub(super) struct Ctx<'r> {
    pub reader: BlockReader,
    pub blocks: BlockListReader<'r>,
    pub label: String,
    pub progress: Arc<dyn Progress>,
}

impl Ctx<'_> {
    /// Read one run back; a damaged block is named by backup, file and block.
    async fn fetch_run(self: &Arc<Self>, path: &str, run: Run) -> Result<Vec<(usize, Bytes)>> {
        let blocks = self.reader.read_run(run).await.map_err(|fault| match fault {
            BlockFault::Damaged { n, detail } => {
                Error::Corrupt { what: format!("backup {} file {path} block {n}", self.label), detail }
            }
            BlockFault::Other(e) => e,
        })?;
        self.progress.advance(blocks.iter().map(|b| b.1.len() as u64).sum());
        Ok(blocks)
    }

    /// Fetch `blocks` of `path` in order, `RUNS_AHEAD` ranged reads at a time, handing
    /// each to `sink` (a bounded channel to a blocking writer). Stops at the first error.
    async fn fetch_into(
        self: &Arc<Self>,
        path: &str,
        blocks: impl Iterator<Item = Wanted>,
        sink: tokio::sync::mpsc::Sender<Vec<(usize, Bytes)>>,
    ) -> Result<()> {
        let fetches =
            futures::stream::iter(BlockReader::runs(blocks)).map(|run| self.fetch_run(path, run)).buffered(RUNS_AHEAD);
        futures::pin_mut!(fetches);
        while let Some(r) = fetches.next().await {
            if sink.send(r?).await.is_err() {
                return Ok(()); // the writer failed; its error is the one to report
            }
        }
        Ok(())
    }

    /// Restore one regular file: blocks fetched ahead in order, written by a
    /// blocking writer, committed durably (temp → fsync → rename), then size and
    /// CRC-32C checked.
    pub(super) async fn restore_file(self: Arc<Self>, job: FileJob) -> Result<()> {
        let FileJob { entry, dest, first, count, durable, .. } = job;
        let located = self.blocks.range(first, count).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(usize, Bytes)>>(RUNS_QUEUED);
        let dest2 = dest.clone();
        let mode = entry.mode;
        let writer = tokio::task::spawn_blocking(move || -> Result<(u64, u32)> {
            let ctx = || format!("cannot write {}", dest2.display());
            let mut f = DurableFile::create(&dest2).ctx(ctx)?;
            let (mut len, mut crc) = (0u64, 0u32);
            while let Some(run) = rx.blocking_recv() {
                for (_, block) in run {
                    f.file().write_all(&block).ctx(ctx)?;
                    len += block.len() as u64;
                    crc = crc32c::crc32c_append(crc, &block);
                }
            }
            f.file().set_permissions(std::fs::Permissions::from_mode(mode)).ctx(ctx)?;
            if durable {
                f.commit(Commit::Replace).ctx(ctx)?;
            } else {
                f.publish_volatile().ctx(ctx)?;
            }
            Ok((len, crc))
        });
        let blocks = located.into_iter().enumerate().map(|(n, (id, loc))| (n, id, loc));
        let fetched = self.fetch_into(&entry.path, blocks, tx).await;
        if let Err(e) = fetched {
            // Let the writer drop its temp file; the fetch error is the one to report.
            let _ = writer.await;
            return Err(e);
        }
        let (len, crc) = writer.await.map_err(|e| Error::Internal(format!("writer task failed: {e}")))??;
        if len != entry.size || entry.crc32c.is_some_and(|c| c != crc) {
            return Err(Error::Corrupt {
                what: format!("backup {} file {}", self.label, entry.path),
                detail: format!(
                    "restored {len} bytes with crc32c {crc:08x}, manifest says {} bytes, {:08x?}",
                    entry.size, entry.crc32c
                ),
            });
        }
        Ok(())
    }

    /// Delta restore of one existing file: write only the `changed` blocks in place,
    /// cut the file to its size, fsync. Every other block was hashed equal to the
    /// manifest's, and every written block is verified when opened.
    pub(super) async fn patch_file(self: Arc<Self>, job: FileJob, block_size: u64, changed: Vec<usize>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let FileJob { entry, dest, first, count, durable, .. } = job;
        let located = self.blocks.range(first, count).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(usize, Bytes)>>(RUNS_QUEUED);
        let (size, mode) = (entry.size, entry.mode);
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            let ctx = || format!("cannot write {}", dest.display());
            let f = std::fs::OpenOptions::new().write(true).open(&dest).ctx(ctx)?;
            while let Some(run) = rx.blocking_recv() {
                for (n, block) in run {
                    f.write_all_at(&block, n as u64 * block_size).ctx(ctx)?;
                }
            }
            f.set_len(size).ctx(ctx)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode)).ctx(ctx)?;
            if durable {
                f.sync_all().ctx(ctx)?;
            }
            Ok(())
        });
        let blocks = changed.into_iter().map(|n| (n, located[n].0, located[n].1));
        let fetched = self.fetch_into(&entry.path, blocks, tx).await;
        let written = writer.await.map_err(|e| Error::Internal(format!("writer task failed: {e}")))?;
        fetched.and(written)
    }
}
