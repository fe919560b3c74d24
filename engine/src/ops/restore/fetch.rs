//! Fetching blocks from packs: runs of adjacent blobs read with one ranged GET,
//! opened (decrypt, decompress, verify) on rayon, written by a blocking writer.
//! A delta blob's base is read too (nearby bases with one GET) and opened first.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{Commit, DurableFile};
use crate::progress::Progress;
use crate::repo::blob;
use crate::repo::blocklist::{BlockListReader, BlockLocation, DeltaBase, PackRef};
use crate::repo::format::{ChunkId, FileEntry};
use crate::repo::pack::{PackFault, PackReader};
use crate::repo::DataCiphers;

pub(super) const PARALLEL_FILES: usize = 4;
/// Runs fetched and opened, waiting for a file's writer (each ≤ `MAX_RUN_RAW_BYTES`).
/// The writer takes a run at a time: one wake-up per run, not per block.
const RUNS_QUEUED: usize = 2;
/// Ranged reads in flight per file, and the most one read fetches. A run is capped
/// in restored bytes too: compressed 30x, a 4 MiB read would be 120 MiB in memory.
const RUNS_AHEAD: usize = 4;
const MAX_RUN_BYTES: u64 = 4 << 20;
const MAX_RUN_RAW_BYTES: u64 = 2 << 20;
/// Bases of one run closer than this in a pack are read with one GET.
const MAX_BASE_GAP: u64 = 64 << 10;

struct Run {
    pack: PackRef,
    start: u64,
    end: u64,
    /// Restored bytes of the run.
    raw: u64,
    /// Stored bytes of its blobs and of its deltas' bases.
    stored: u64,
    /// (block number in the file, chunk id, stored length, raw length, delta base),
    /// in file order.
    blocks: Vec<(usize, ChunkId, u32, u32, Option<DeltaBase>)>,
}

/// A regular file to restore: its entry, destination and blocks in the block list.
pub(super) struct FileJob {
    pub entry: FileEntry,
    pub dest: PathBuf,
    pub first: u64,
    pub count: u64,
}

pub(super) struct Ctx<'r> {
    pub packs: PackReader,
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
            let stored = loc.length as u64 + loc.base.map_or(0, |b| b.length as u64);
            let block = (n, id, loc.length, loc.raw_length, loc.base);
            match runs.last_mut() {
                Some(r)
                    if r.pack == loc.pack
                        && r.end == loc.offset
                        && r.stored + stored <= MAX_RUN_BYTES
                        && r.raw + loc.raw_length as u64 <= MAX_RUN_RAW_BYTES =>
                {
                    r.end = end;
                    r.raw += loc.raw_length as u64;
                    r.stored += stored;
                    r.blocks.push(block);
                }
                _ => runs.push(Run {
                    pack: loc.pack,
                    start: loc.offset,
                    end,
                    raw: loc.raw_length as u64,
                    stored,
                    blocks: vec![block],
                }),
            }
        }
        runs
    }

    /// A ranged read of a pack; a missing or unreadable pack is a corrupt block `n`.
    async fn read_pack(&self, pack: PackRef, range: std::ops::Range<u64>, path: &str, n: usize) -> Result<Bytes> {
        self.packs.read(&pack, range).await.map_err(|fault| match fault {
            PackFault::Damaged(detail) => {
                Error::Corrupt { what: format!("backup {} file {path} block {n}", self.label), detail }
            }
            PackFault::Other(e) => e,
        })
    }

    /// The sealed bases of a run's delta blocks, by position in the run; bases near
    /// each other in one pack are read with one GET.
    async fn fetch_bases(&self, path: &str, run: &Run) -> Result<Vec<Option<Bytes>>> {
        let mut wanted: Vec<(usize, usize, DeltaBase)> =
            run.blocks.iter().enumerate().filter_map(|(i, b)| Some((i, b.0, b.4?))).collect();
        let mut out = vec![None; run.blocks.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        wanted.sort_by_key(|(_, _, b)| (b.pack.id, b.offset));
        // Spans of bases: (first, past the last into `wanted`, end offset in the pack).
        let blob_end = |b: &DeltaBase| b.offset.saturating_add(b.length as u64);
        let mut spans: Vec<(usize, usize, u64)> = Vec::new();
        for (i, (_, _, b)) in wanted.iter().enumerate() {
            match spans.last_mut() {
                Some((first, last, end))
                    if wanted[*first].2.pack == b.pack
                        && b.offset <= end.saturating_add(MAX_BASE_GAP)
                        && blob_end(b) - wanted[*first].2.offset <= MAX_RUN_BYTES =>
                {
                    *last = i + 1;
                    *end = (*end).max(blob_end(b));
                }
                _ => spans.push((i, i + 1, blob_end(b))),
            }
        }
        let reads = spans.iter().map(|&(first, _, end)| {
            let start = wanted[first].2;
            self.read_pack(start.pack, start.offset..end, path, wanted[first].1)
        });
        let bytes = futures::future::try_join_all(reads).await?;
        for ((first, last, _), bytes) in spans.into_iter().zip(bytes) {
            let start = wanted[first].2.offset;
            for (i, _, b) in &wanted[first..last] {
                let from = (b.offset - start) as usize;
                out[*i] = Some(bytes.slice(from..from + b.length as usize));
            }
        }
        Ok(out)
    }

    async fn fetch_run(self: &Arc<Self>, path: &str, run: Run) -> Result<Vec<(usize, Bytes)>> {
        let what = |n: usize| format!("backup {} file {path} block {n}", self.label);
        let key = PackReader::name(&run.pack);
        let bytes = self.read_pack(run.pack, run.start..run.end, path, run.blocks[0].0).await?;
        let bases = self.fetch_bases(path, &run).await?;
        let base_ciphers: Vec<_> = run.blocks.iter().map(|b| b.4.map(|b| self.ciphers.get(&b.pack.key_id))).collect();
        let (cipher, chunk_key) = (self.ciphers.get(&run.pack.key_id), self.chunk_key);
        let blocks = super::super::on_rayon(move || {
            let mut out = Vec::with_capacity(run.blocks.len());
            let mut at = 0usize;
            for (i, (n, id, len, raw, base)) in run.blocks.iter().enumerate() {
                let sealed = &bytes[at..at + *len as usize];
                at += *len as usize;
                let opened = match (base, &bases[i], &base_ciphers[i]) {
                    (Some(b), Some(sealed_base), Some(base_cipher)) => {
                        let raw_base = b.raw_length as usize;
                        let plain =
                            blob::open_block(base_cipher, &chunk_key, &b.id, sealed_base, raw_base).map_err(|e| {
                                (*n, format!("its delta base {}: {e} (pack {})", b.id, PackReader::name(&b.pack)))
                            })?;
                        blob::open_delta_block(&cipher, &chunk_key, id, (&b.id, &plain), sealed, *raw as usize)
                    }
                    _ => blob::open_block(&cipher, &chunk_key, id, sealed, *raw as usize),
                };
                out.push((*n, Bytes::from(opened.map_err(|e| (*n, format!("{e} (pack {key})")))?)));
            }
            Ok(out)
        })
        .await?
        .map_err(|(n, detail): (usize, String)| Error::Corrupt { what: what(n), detail })?;
        self.progress.advance(blocks.iter().map(|b| b.1.len() as u64).sum());
        Ok(blocks)
    }

    /// Fetch `blocks` of `path` in order, `RUNS_AHEAD` ranged reads at a time, handing
    /// each to `sink` (a bounded channel to a blocking writer). Stops at the first error.
    async fn fetch_into(
        self: &Arc<Self>,
        path: &str,
        blocks: impl Iterator<Item = (usize, ChunkId, BlockLocation)>,
        sink: tokio::sync::mpsc::Sender<Vec<(usize, Bytes)>>,
    ) -> Result<()> {
        let fetches =
            futures::stream::iter(Self::runs(blocks)).map(|run| self.fetch_run(path, run)).buffered(RUNS_AHEAD);
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
        let FileJob { entry, dest, first, count } = job;
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
        let FileJob { entry, dest, first, count } = job;
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
            f.sync_all().ctx(ctx)
        });
        let blocks = changed.into_iter().map(|n| (n, located[n].0, located[n].1));
        let fetched = self.fetch_into(&entry.path, blocks, tx).await;
        let written = writer.await.map_err(|e| Error::Internal(format!("writer task failed: {e}")))?;
        fetched.and(written)
    }
}
