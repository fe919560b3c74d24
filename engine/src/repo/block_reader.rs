//! The one way blocks come back out of the repository. Given block locations (from a
//! block list), the reader groups them into runs stored back to back in one pack and
//! fetches each run with one ranged read, reads the delta bases of a run (bases close
//! to each other in one pack with one read), opens every blob (decrypt, decompress,
//! undo the delta) and checks its chunk id, on the CPU pool the caller gives, and
//! hands back plaintext blocks. Restore, delta restore and backup (the parent's
//! blocks under a delta) read through it; verify opens through [`BlockReader::open`].
//! The chunk key and the data ciphers never leave `repo/`.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::blob;
use super::blocklist::{BlockLocation, DeltaBase, PackRef};
use super::format::ChunkId;
use super::pack::{PackFault, PackReader};
use super::DataCiphers;
use crate::cpu::Cpu;
use crate::error::Error;

/// A run's restored bytes are capped too: compressed 30x, a 4 MiB read would be
/// 120 MiB in memory.
const MAX_RUN_BYTES: u64 = 4 << 20;
const MAX_RUN_RAW_BYTES: u64 = 2 << 20;
/// Bases of one run closer than this in a pack are read with one GET.
const MAX_BASE_GAP: u64 = 64 << 10;

/// The keyed hash that names blocks (chunk ids), without handing out its key.
#[derive(Clone)]
pub(crate) struct ChunkHasher([u8; 32]);

impl ChunkHasher {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self(*key)
    }

    /// The chunk id of `data`.
    pub(crate) fn id(&self, data: &[u8]) -> ChunkId {
        blob::chunk_id(&self.0, data)
    }
}

/// One block wanted: its number (for the caller: a block of a file), chunk id and
/// location.
pub(crate) type Wanted = (usize, ChunkId, BlockLocation);

/// Why a block could not be read back.
#[derive(Debug)]
pub(crate) enum BlockFault {
    /// Block `n` is lost or fails its checks: the text names the pack (and offset)
    /// and what failed, for the caller to say which file or backup it damages.
    Damaged { n: usize, detail: String },
    /// Anything else (a transient storage error, already retried; a stopped pool).
    Other(Error),
}

/// A block read by [`BlockReader::read_scattered`].
pub(crate) struct Scattered {
    /// The caller's number for it.
    pub n: usize,
    pub plain: Bytes,
    /// What a new delta of the block is compressed against: its own plaintext when it
    /// is stored whole, its base's when it is a delta (deltas never chain).
    pub base_plain: Bytes,
}

/// Blocks fetched by [`BlockReader::fetch_scattered`], still sealed.
pub(crate) struct Fetched {
    blocks: Vec<Wanted>,
    /// Slot 2i: block i's blob; 2i + 1: its base's (empty when it has none).
    sealed: Vec<Bytes>,
}

/// Blocks stored back to back in one pack, read with one ranged read.
pub(crate) struct Run {
    pack: PackRef,
    start: u64,
    end: u64,
    /// Restored bytes of the run.
    raw: u64,
    /// Stored bytes of its blobs and of its deltas' bases.
    stored: u64,
    blocks: Vec<Wanted>,
}

impl Run {
    /// The first block's number (for messages about the run as a whole).
    pub(crate) fn first(&self) -> usize {
        self.blocks.first().map_or(0, |b| b.0)
    }
}

/// Reads blocks back (module comment).
#[derive(Clone)]
pub(crate) struct BlockReader {
    packs: PackReader,
    ciphers: Arc<DataCiphers>,
    hasher: ChunkHasher,
    cpu: Cpu,
}

impl BlockReader {
    pub(crate) fn new(packs: PackReader, ciphers: DataCiphers, hasher: ChunkHasher, cpu: Cpu) -> Self {
        Self { packs, ciphers: Arc::new(ciphers), hasher, cpu }
    }

    /// Group blocks into runs stored back to back in one pack (a backup writes a
    /// file's new blocks in order), each within the read and memory caps.
    pub(crate) fn runs(blocks: impl Iterator<Item = Wanted>) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (n, id, loc) in blocks {
            let end = loc.offset + loc.length as u64;
            let stored = loc.length as u64 + loc.base.map_or(0, |b| b.length as u64);
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
                    r.blocks.push((n, id, loc));
                }
                _ => runs.push(Run {
                    pack: loc.pack,
                    start: loc.offset,
                    end,
                    raw: loc.raw_length as u64,
                    stored,
                    blocks: vec![(n, id, loc)],
                }),
            }
        }
        runs
    }

    /// Bytes `range` of `pack`; a missing or unreadable pack damages block `n`.
    async fn read(&self, pack: PackRef, range: Range<u64>, n: usize) -> Result<Bytes, BlockFault> {
        self.packs.read(&pack, range).await.map_err(|fault| match fault {
            PackFault::Damaged(detail) => BlockFault::Damaged { n, detail },
            PackFault::Other(e) => BlockFault::Other(e),
        })
    }

    /// Fetch and open one run: its blocks' plaintext, by block number, in order.
    pub(crate) async fn read_run(&self, run: Run) -> Result<Vec<(usize, Bytes)>, BlockFault> {
        let bytes = self.read(run.pack, run.start..run.end, run.first()).await?;
        let bases = self.fetch_bases(&run.blocks).await?;
        let me = self.clone();
        let opened = self.cpu.run(move || {
            let mut out = Vec::with_capacity(run.blocks.len());
            let mut at = 0usize;
            for ((n, id, loc), base) in run.blocks.iter().zip(&bases) {
                let sealed = &bytes[at..at + loc.length as usize];
                at += loc.length as usize;
                let base = loc.base.as_ref().zip(base.as_ref());
                let plain = me.open(id, loc, sealed, base).map_err(|detail| BlockFault::Damaged { n: *n, detail })?;
                out.push((*n, Bytes::from(plain)));
            }
            Ok(out)
        });
        opened.await.map_err(BlockFault::Other)?
    }

    /// Blocks scattered over packs (a backup's parents of its changed blocks, a few
    /// at a time): every blob and delta base wanted from one pack comes with one
    /// `get_ranges`, the packs concurrently, and all are opened in one job on the CPU
    /// pool. Each comes back with the plaintext a new delta of it is compressed
    /// against (its own when stored whole, its base's when a delta). Callers keep
    /// `blocks` to a batch: everything is in memory at once.
    pub(crate) async fn read_scattered(&self, blocks: Vec<Wanted>) -> Result<Vec<Scattered>, BlockFault> {
        let fetched = self.fetch_scattered(blocks).await?;
        let me = self.clone();
        self.cpu.run(move || me.open_fetched(fetched)).await.map_err(BlockFault::Other)?
    }

    /// The I/O half of [`BlockReader::read_scattered`], for callers that open the
    /// blocks in a CPU job of their own ([`BlockReader::open_fetched`]).
    pub(crate) async fn fetch_scattered(&self, blocks: Vec<Wanted>) -> Result<Fetched, BlockFault> {
        // Slot 2i is block i's blob, 2i + 1 its base's.
        let mut by_pack: HashMap<PackRef, Vec<(Range<u64>, usize)>> = HashMap::new();
        for (i, (_, _, loc)) in blocks.iter().enumerate() {
            by_pack.entry(loc.pack).or_default().push((loc.offset..loc.offset + loc.length as u64, 2 * i));
            if let Some(b) = loc.base {
                by_pack.entry(b.pack).or_default().push((b.offset..b.offset + b.length as u64, 2 * i + 1));
            }
        }
        let blocks_ref = &blocks;
        let reads = by_pack.into_iter().map(|(pack, wanted)| async move {
            let ranges: Vec<Range<u64>> = wanted.iter().map(|(r, _)| r.clone()).collect();
            let n = blocks_ref[wanted[0].1 / 2].0;
            let got = self.packs.read_ranges(&pack, &ranges).await.map_err(|fault| match fault {
                PackFault::Damaged(detail) => BlockFault::Damaged { n, detail },
                PackFault::Other(e) => BlockFault::Other(e),
            })?;
            Ok::<_, BlockFault>(wanted.into_iter().map(|(_, slot)| slot).zip(got))
        });
        let mut sealed: Vec<Bytes> = vec![Bytes::new(); 2 * blocks.len()];
        for part in futures::future::try_join_all(reads).await? {
            for (slot, bytes) in part {
                sealed[slot] = bytes;
            }
        }
        Ok(Fetched { blocks, sealed })
    }

    /// The CPU half of [`BlockReader::read_scattered`]: run it on a pool.
    pub(crate) fn open_fetched(&self, Fetched { blocks, sealed }: Fetched) -> Result<Vec<Scattered>, BlockFault> {
        let open_one = |i: usize, (n, id, loc): Wanted| {
            let damaged = |detail| BlockFault::Damaged { n, detail };
            let (blob, base_blob) = (&sealed[2 * i], &sealed[2 * i + 1]);
            let Some(b) = loc.base else {
                let plain = Bytes::from(self.open(&id, &loc, blob, None).map_err(damaged)?);
                return Ok(Scattered { n, base_plain: plain.clone(), plain });
            };
            let base_plain = self.open_whole(&b, base_blob).map_err(|e| damaged(format!("its delta base: {e}")))?;
            let plain = self.open_over(&id, &loc, blob, &b, &base_plain).map_err(damaged)?;
            Ok(Scattered { n, plain: Bytes::from(plain), base_plain: Bytes::from(base_plain) })
        };
        blocks.into_iter().enumerate().map(|(i, wanted)| open_one(i, wanted)).collect()
    }

    fn open_whole(&self, b: &DeltaBase, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let cipher = self.ciphers.get(&b.pack.key_id);
        blob::open_block(&cipher, &self.hasher.0, &b.id, sealed, b.raw_length as usize)
            .map_err(|e| format!("{e} (pack {} at offset {}, chunk {})", PackReader::name(&b.pack), b.offset, b.id))
    }

    /// Open one sealed blob stored at `loc` and check it is chunk `id`; a delta is
    /// opened over its base (`base`: the base's location and sealed bytes). The
    /// error names the pack and offset of what failed. CPU work: run it on a pool.
    pub(crate) fn open(
        &self,
        id: &ChunkId,
        loc: &BlockLocation,
        sealed: &[u8],
        base: Option<(&DeltaBase, &Bytes)>,
    ) -> Result<Vec<u8>, String> {
        let Some((b, sealed_base)) = base else {
            let cipher = self.ciphers.get(&loc.pack.key_id);
            return blob::open_block(&cipher, &self.hasher.0, id, sealed, loc.raw_length as usize)
                .map_err(|e| format!("{e} (pack {} at offset {})", PackReader::name(&loc.pack), loc.offset));
        };
        let plain = self.open_whole(b, sealed_base).map_err(|e| format!("its delta base: {e}"))?;
        self.open_over(id, loc, sealed, b, &plain)
    }

    /// Open the delta blob stored at `loc` over its base's plaintext.
    fn open_over(
        &self,
        id: &ChunkId,
        loc: &BlockLocation,
        sealed: &[u8],
        base: &DeltaBase,
        base_plain: &[u8],
    ) -> Result<Vec<u8>, String> {
        let cipher = self.ciphers.get(&loc.pack.key_id);
        blob::open_delta_block(&cipher, &self.hasher.0, id, (&base.id, base_plain), sealed, loc.raw_length as usize)
            .map_err(|e| format!("{e} (pack {} at offset {})", PackReader::name(&loc.pack), loc.offset))
    }

    /// The sealed bases of `blocks`' deltas, by position; bases near each other in
    /// one pack are read with one GET.
    async fn fetch_bases(&self, blocks: &[Wanted]) -> Result<Vec<Option<Bytes>>, BlockFault> {
        let mut wanted: Vec<(usize, usize, DeltaBase)> =
            blocks.iter().enumerate().filter_map(|(i, b)| Some((i, b.0, b.2.base?))).collect();
        let mut out = vec![None; blocks.len()];
        wanted.sort_by_key(|(_, _, b)| (b.pack.id, b.offset));
        let blob_end = |b: &DeltaBase| b.offset.saturating_add(b.length as u64);
        // Spans of bases: (first, past the last into `wanted`, end offset in the pack).
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
            let (_, n, start) = wanted[first];
            self.read(start.pack, start.offset..end, n)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::pack_key;
    use crate::repo::pack::PackWriter;
    use crate::repo::tests::test_repo;
    use crate::repo::Repository;

    /// Three blocks in one stored pack: `a` whole, `b` a delta over `a`, `c` whole.
    /// `damage` flips a byte of `c` before the pack is stored.
    async fn stored(repo: &Repository, damage: bool) -> (Vec<Wanted>, Vec<Vec<u8>>) {
        let (key_id, hasher) = ([9u8; 16], repo.chunk_hasher());
        let cipher = repo.data_ciphers().get(&key_id);
        let a: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut b = a.clone();
        b[100..140].fill(7);
        let c: Vec<u8> = (0..8192u32).map(|i| (i * 17 % 13) as u8).collect();
        let mut w = PackWriter::new(key_id, 1 << 20);
        let (ia, ib, ic) = (hasher.id(&a), hasher.id(&b), hasher.id(&c));
        let la = w.add(ia, 8192, &blob::seal_block(&cipher, 3, &ia, &a), None);
        let base = blob::BasePlain { id: ia, plain: &a, stored_len: None };
        let (sealed_b, is_delta) = blob::seal_changed_block(&cipher, 3, &ib, &b, base);
        assert!(is_delta, "b is stored as a delta over a");
        let lb = w.add(ib, 8192, &sealed_b, Some(la.delta_base(ia)));
        let mut sealed_c = blob::seal_block(&cipher, 3, &ic, &c);
        if damage {
            sealed_c[20] ^= 1;
        }
        let lc = w.add(ic, 8192, &sealed_c, None);
        let (bytes, _) = w.finish();
        repo.storage().put_new(&pack_key(&la.pack.hex_id()), bytes).await.unwrap();
        (vec![(0, ia, la), (1, ib, lb), (2, ic, lc)], vec![a, b, c])
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_comes_back_whole_with_its_delta_resolved() {
        let (_s, repo) = test_repo(true).await;
        let (wanted, plain) = stored(&repo, false).await;
        let reader = repo.block_reader(Cpu::global());
        let runs = BlockReader::runs(wanted.clone().into_iter());
        assert_eq!(runs.len(), 1, "adjacent blobs of one pack: one ranged read");
        let got = reader.read_run(runs.into_iter().next().unwrap()).await.unwrap();
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(got, plain);
    }

    /// A backup's parents: blocks in any order, each with what a new delta of it is
    /// compressed against (a's plaintext for the delta b, c's own for c).
    #[tokio::test(flavor = "multi_thread")]
    async fn scattered_blocks_come_back_with_their_delta_bases() {
        let (_s, repo) = test_repo(true).await;
        let (wanted, plain) = stored(&repo, false).await;
        let reader = repo.block_reader(Cpu::global());
        let got =
            reader.read_scattered(vec![(7, wanted[2].1, wanted[2].2), (9, wanted[1].1, wanted[1].2)]).await.unwrap();
        let got: Vec<(usize, Vec<u8>, Vec<u8>)> =
            got.into_iter().map(|s| (s.n, s.plain.to_vec(), s.base_plain.to_vec())).collect();
        assert_eq!(got, vec![(7, plain[2].clone(), plain[2].clone()), (9, plain[1].clone(), plain[0].clone())]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_damaged_blob_is_named_by_block_pack_and_offset() {
        let (_s, repo) = test_repo(true).await;
        let (wanted, _) = stored(&repo, true).await;
        let (pack, offset) = (PackReader::name(&wanted[2].2.pack), wanted[2].2.offset);
        let run = BlockReader::runs(wanted.clone().into_iter()).pop().unwrap();
        let scattered = vec![wanted[1], wanted[2]];
        match repo.block_reader(Cpu::global()).read_run(run).await {
            Err(BlockFault::Damaged { n: 2, detail }) => {
                assert!(detail.contains(&pack) && detail.contains(&format!("offset {offset}")), "{detail}")
            }
            other => panic!("block 2 is damaged: {other:?}"),
        }
        match repo.block_reader(Cpu::global()).read_scattered(scattered).await {
            Err(BlockFault::Damaged { n: 2, detail }) => assert!(detail.contains(&pack), "{detail}"),
            other => panic!("block 2 is damaged: {:?}", other.map(|v| v.len())),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_pack_or_base_is_damage_never_absence() {
        let (_s, repo) = test_repo(true).await;
        let (mut wanted, _) = stored(&repo, false).await;
        let reader = repo.block_reader(Cpu::global());
        // The delta's base lives in a pack that is gone.
        if let Some(base) = wanted[1].2.base.as_mut() {
            base.pack.id = [1; 32];
        }
        let run = BlockReader::runs(std::iter::once(wanted[1])).pop().unwrap();
        match reader.read_run(run).await {
            Err(BlockFault::Damaged { n: 1, detail }) => assert!(detail.contains("is missing"), "{detail}"),
            other => panic!("{other:?}"),
        }
        match reader.read_scattered(vec![wanted[0], wanted[1]]).await {
            Err(BlockFault::Damaged { n: 1, detail }) => assert!(detail.contains("is missing"), "{detail}"),
            other => panic!("{:?}", other.map(|v| v.len())),
        }
        wanted[2].2.pack.id = [2; 32];
        let run = BlockReader::runs(std::iter::once(wanted[2])).pop().unwrap();
        match reader.read_run(run).await {
            Err(BlockFault::Damaged { n: 2, detail }) => assert!(detail.contains("is missing"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    /// Issue 22: ops/ reads blocks, packs and index objects only through repo/; it
    /// builds no object key and never sees the chunk key or the data ciphers (code
    /// under `#[cfg(test)]` may build keys to inject faults).
    #[test]
    fn ops_builds_no_object_key_and_holds_no_key() {
        fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                if e.path().is_dir() {
                    sources(&e.path(), out);
                } else if e.path().extension().is_some_and(|x| x == "rs") && e.file_name() != "tests.rs" {
                    out.push(e.path());
                }
            }
        }
        let mut files = Vec::new();
        sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops"), &mut files);
        assert!(files.len() > 20, "ops/ sources found: {files:?}");
        let forbidden = [
            "pack_key(",
            "index_key(",
            "wal_key(",
            "_PREFIX",
            "chunk_key",
            "DataCiphers",
            "data_ciphers(",
            "open_block(",
            "open_delta_block(",
            "blob::chunk_id(",
            ".storage().get",
            ".storage().put",
        ];
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for word in forbidden {
                assert!(!code.contains(word), "{} uses {word}: reading the repository belongs in repo/", f.display());
            }
        }
    }
}
