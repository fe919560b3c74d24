//! Fetching blocks from packs: runs of adjacent blobs read with one ranged GET,
//! opened (decrypt, decompress, verify) on rayon, written by a blocking writer.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::fsutil::{Commit, DurableFile};
use crate::progress::Progress;
use crate::repo::blob;
use crate::repo::blocklist::{BlockListReader, BlockLocation, PackRef};
use crate::repo::format::*;
use crate::repo::DataCiphers;

pub(super) const PARALLEL_FILES: usize = 4;
const BLOCKS_AHEAD: usize = 8;
/// Ranged reads in flight per file, and the most one read fetches. A run is capped
/// in restored bytes too: compressed 30x, a 4 MiB read would be 120 MiB in memory.
const RUNS_AHEAD: usize = 4;
const MAX_RUN_BYTES: u64 = 4 << 20;
const MAX_RUN_RAW_BYTES: u64 = 2 << 20;

struct Run {
    pack: PackRef,
    start: u64,
    end: u64,
    /// Restored bytes of the run.
    raw: u64,
    /// (block number in the file, chunk id, stored length, raw length), in file order.
    blocks: Vec<(usize, ChunkId, u32, u32)>,
}

/// A regular file to restore: its entry, destination and blocks in the block list.
pub(super) struct FileJob {
    pub entry: FileEntry,
    pub dest: PathBuf,
    pub first: u64,
    pub count: u64,
}

pub(super) struct Ctx<'r> {
    pub repo_storage: crate::storage::DynStorage,
    pub chunk_key: [u8; 32],
    pub ciphers: DataCiphers,
    pub blocks: BlockListReader<'r>,
    pub label: String,
    pub progress: Arc<dyn Progress>,
}

impl Ctx<'_> {
    /// Group blocks into runs stored back to back in one pack, each fetched with one
    /// ranged read (a backup writes a file's new blocks in order).
    fn runs(blocks: impl Iterator<Item = (usize, ChunkId, BlockLocation)>) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (n, id, loc) in blocks {
            let end = loc.offset + loc.length as u64;
            let block = (n, id, loc.length, loc.raw_length);
            match runs.last_mut() {
                Some(r)
                    if r.pack == loc.pack
                        && r.end == loc.offset
                        && end - r.start <= MAX_RUN_BYTES
                        && r.raw + loc.raw_length as u64 <= MAX_RUN_RAW_BYTES =>
                {
                    r.end = end;
                    r.raw += loc.raw_length as u64;
                    r.blocks.push(block);
                }
                _ => runs.push(Run {
                    pack: loc.pack,
                    start: loc.offset,
                    end,
                    raw: loc.raw_length as u64,
                    blocks: vec![block],
                }),
            }
        }
        runs
    }

    async fn fetch_run(self: &Arc<Self>, path: &str, run: Run) -> Result<Vec<(usize, Bytes)>> {
        let what = |n: usize| format!("backup {} file {path} block {n}", self.label);
        let key = pack_key(&run.pack.hex_id());
        let first = run.blocks[0].0;
        let bytes =
            self.repo_storage.get_range(&key, run.start..run.end).await.map_err(|e| match e.storage_kind() {
                Some(StorageErrorKind::NotFound) => {
                    Error::Corrupt { what: what(first), detail: format!("pack {key} is missing") }
                }
                Some(StorageErrorKind::Permanent) => {
                    Error::Corrupt { what: what(first), detail: format!("pack {key}: {e}") }
                }
                _ => e,
            })?;
        let (cipher, chunk_key) = (self.ciphers.get(&run.pack.key_id), self.chunk_key);
        let (tx, rx) = tokio::sync::oneshot::channel();
        rayon::spawn(move || {
            let mut out = Vec::with_capacity(run.blocks.len());
            let mut at = 0usize;
            for (n, id, len, raw) in &run.blocks {
                let sealed = &bytes[at..at + *len as usize];
                at += *len as usize;
                match blob::open_block(&cipher, &chunk_key, id, sealed, *raw as usize) {
                    Ok(d) => out.push((*n, Bytes::from(d))),
                    Err(e) => {
                        let _ = tx.send(Err((*n, e)));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(out));
        });
        let blocks = rx
            .await
            .map_err(|_| Error::Other("block worker stopped".into()))?
            .map_err(|(n, e)| Error::Corrupt { what: what(n), detail: format!("{e} (pack {key})") })?;
        self.progress.advance(blocks.iter().map(|b| b.1.len() as u64).sum());
        Ok(blocks)
    }

    /// Fetch `blocks` of `path` in order, `RUNS_AHEAD` ranged reads at a time, handing
    /// each to `sink` (a bounded channel to a blocking writer). Stops at the first error.
    async fn fetch_into(
        self: &Arc<Self>,
        path: &str,
        blocks: impl Iterator<Item = (usize, ChunkId, BlockLocation)>,
        sink: tokio::sync::mpsc::Sender<(usize, Bytes)>,
    ) -> Result<()> {
        let fetches =
            futures::stream::iter(Self::runs(blocks)).map(|run| self.fetch_run(path, run)).buffered(RUNS_AHEAD);
        futures::pin_mut!(fetches);
        while let Some(r) = fetches.next().await {
            for b in r? {
                if sink.send(b).await.is_err() {
                    return Ok(()); // the writer failed; its error is the one to report
                }
            }
        }
        Ok(())
    }

    /// Restore one regular file: blocks fetched ahead in order, written by a
    /// blocking writer, committed durably (temp → fsync → rename), then size and
    /// CRC-32C checked.
    pub(super) async fn restore_file(self: Arc<Self>, job: FileJob) -> Result<()> {
        let FileJob { entry, dest, first, count } = job;
        let located = self.blocks.range(first, count).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(BLOCKS_AHEAD);
        let dest2 = dest.clone();
        let mode = entry.mode;
        let writer = tokio::task::spawn_blocking(move || -> Result<(u64, u32)> {
            let ctx = || format!("cannot write {}", dest2.display());
            let mut f = DurableFile::create(&dest2).ctx(ctx)?;
            let (mut len, mut crc) = (0u64, 0u32);
            while let Some((_, block)) = rx.blocking_recv() {
                f.file().write_all(&block).ctx(ctx)?;
                len += block.len() as u64;
                crc = crc32c::crc32c_append(crc, &block);
            }
            f.file().set_permissions(std::fs::Permissions::from_mode(mode)).ctx(ctx)?;
            f.commit(Commit::Replace).ctx(ctx)?;
            Ok((len, crc))
        });
        let blocks = located.into_iter().enumerate().map(|(n, (id, loc))| (n, id, loc));
        let fetched = self.fetch_into(&entry.path, blocks, tx).await;
        if let Err(e) = fetched {
            // Let the writer drop its temp file; the fetch error is the one to report.
            let _ = writer.await;
            return Err(e);
        }
        let (len, crc) = writer.await.map_err(|e| Error::Other(format!("writer task failed: {e}")))??;
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
        let FileJob { entry, dest, first, count } = job;
        let located = self.blocks.range(first, count).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(BLOCKS_AHEAD);
        let (size, mode) = (entry.size, entry.mode);
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            let ctx = || format!("cannot write {}", dest.display());
            let f = std::fs::OpenOptions::new().write(true).open(&dest).ctx(ctx)?;
            while let Some((n, block)) = rx.blocking_recv() {
                f.write_all_at(&block, n as u64 * block_size).ctx(ctx)?;
            }
            f.set_len(size).ctx(ctx)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode)).ctx(ctx)?;
            f.sync_all().ctx(ctx)
        });
        let blocks = changed.into_iter().map(|n| (n, located[n].0, located[n].1));
        let fetched = self.fetch_into(&entry.path, blocks, tx).await;
        let written = writer.await.map_err(|e| Error::Other(format!("writer task failed: {e}")))?;
        fetched.and(written)
    }
}
