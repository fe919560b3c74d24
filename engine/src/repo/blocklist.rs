//! A backup's block list, in parts: where every block of every file lives.
//!
//! The manifest lists files; the blocks of all its regular files, in manifest order,
//! form one sequence cut into parts of `blocks_per_part` entries, each its own sealed
//! object. Every entry carries the block's location, so restore needs neither the
//! index nor memory that grows with the backup: it reads the parts in order.
//!
//! A block stored as a delta (a diff or incr's changed block, compressed against the
//! parent's version of it) also names its base: a blob stored whole.
//!
//! ```text
//! part   = "PGCBLKS2" ‖ u32 pack count ‖ u32 block count ‖ u32 base count
//!          ‖ pack* ‖ blobs(blocks) ‖ u32 base number* ‖ blobs(bases)      (little endian)
//! pack   = pack id (32) ‖ data key id (16)
//! blobs  = chunk id* (32 each) ‖ u32 pack number* ‖ u64 offset* ‖ u32 length* ‖ u32 raw length*
//! ```
//!
//! Column by column, so the metadata compression squeezes everything but the chunk
//! ids (pack numbers and raw lengths repeat, offsets rise). A base number is 0 for a
//! block stored whole, n for a delta over base n - 1.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::format::{ChunkId, Manifest, BACKUP_PREFIX, PACK_KEY_ID_LEN};
use super::Repository;
use crate::error::{Error, Result};

pub(crate) const PART_MAGIC: &[u8; 8] = b"PGCBLKS2";
/// 65536 blocks: 2 GiB of cluster at 32 KiB blocks; 56 B per block and 52 B per
/// delta base, ~3.7 MB for a part of a full backup.
pub(crate) const BLOCKS_PER_PART: u32 = 65536;
const PACK_LEN: usize = 32 + PACK_KEY_ID_LEN;
const BLOB_LEN: usize = 32 + 4 + 8 + 4 + 4;
const BLOCK_LEN: usize = BLOB_LEN + 4;

/// `backup/<label>/blocks/<n, 6 digits>`.
pub(crate) fn block_part_key(label: &str, n: u32) -> String {
    format!("{BACKUP_PREFIX}{label}/blocks/{n:06}")
}

/// Blocks of a file of `size` bytes: one per started `block_size`.
pub(crate) fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(block_size as u64)
}

/// A pack and the data key that sealed its blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackRef {
    pub id: [u8; 32],
    pub key_id: [u8; PACK_KEY_ID_LEN],
}

impl PackRef {
    pub fn hex_id(&self) -> String {
        hex::encode(self.id)
    }
}

/// Where one block's blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLocation {
    pub pack: PackRef,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    /// Set when the blob is a delta: the blob (stored whole) it was compressed against.
    pub base: Option<DeltaBase>,
}

/// The base of a delta blob: a blob stored whole, and its chunk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaBase {
    pub id: ChunkId,
    pub pack: PackRef,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

impl BlockLocation {
    /// The blob that a new delta of this block must be compressed against: the block's
    /// own blob when stored whole, else its base (deltas never chain).
    pub fn delta_base(&self, id: ChunkId) -> DeltaBase {
        self.base.unwrap_or(DeltaBase {
            id,
            pack: self.pack,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
        })
    }
}

impl DeltaBase {
    /// Where the base's blob lives (a blob stored whole).
    pub fn whole_location(&self) -> BlockLocation {
        BlockLocation {
            pack: self.pack,
            offset: self.offset,
            length: self.length,
            raw_length: self.raw_length,
            base: None,
        }
    }
}

/// (chunk id, pack number, offset, length, raw length)
type Blob = (ChunkId, u32, u64, u32, u32);

/// One part, decoded.
#[derive(Debug, Default, Clone)]
pub struct BlockPart {
    /// The packs this part's blobs live in, numbered by position.
    pub packs: Vec<PackRef>,
    /// Each block's blob and its base (0: none; n: `bases[n - 1]`).
    blocks: Vec<(Blob, u32)>,
    bases: Vec<Blob>,
    pack_numbers: HashMap<PackRef, u32>,
}

impl BlockPart {
    /// Number of blocks in the part.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the part has no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn pack_number(&mut self, pack: PackRef) -> u32 {
        let next = self.packs.len() as u32;
        let n = *self.pack_numbers.entry(pack).or_insert(next);
        if n == next {
            self.packs.push(pack);
        }
        n
    }

    /// Appends the next block: its chunk id and where its blob (and base) live.
    pub fn push(&mut self, id: ChunkId, loc: &BlockLocation) {
        let base = match loc.base {
            None => 0,
            Some(b) => {
                let pack = self.pack_number(b.pack);
                self.bases.push((b.id, pack, b.offset, b.length, b.raw_length));
                self.bases.len() as u32
            }
        };
        let pack = self.pack_number(loc.pack);
        self.blocks.push(((id, pack, loc.offset, loc.length, loc.raw_length), base));
    }

    /// Block `i` of the part; panics if `i` is not below [`BlockPart::len`].
    pub fn get(&self, i: usize) -> (ChunkId, BlockLocation) {
        let ((id, pack, offset, length, raw_length), base) = self.blocks[i];
        let base = (base > 0).then(|| {
            let (id, pack, offset, length, raw_length) = self.bases[base as usize - 1];
            DeltaBase { id, pack: self.packs[pack as usize], offset, length, raw_length }
        });
        (id, BlockLocation { pack: self.packs[pack as usize], offset, length, raw_length, base })
    }

    /// The part's bytes, as the module docs lay them out (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            20 + self.packs.len() * PACK_LEN + self.blocks.len() * BLOCK_LEN + self.bases.len() * BLOB_LEN,
        );
        out.extend_from_slice(PART_MAGIC);
        for n in [self.packs.len(), self.blocks.len(), self.bases.len()] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for p in &self.packs {
            out.extend_from_slice(&p.id);
            out.extend_from_slice(&p.key_id);
        }
        put_blobs(&mut out, self.blocks.iter().map(|b| &b.0));
        self.blocks.iter().for_each(|b| out.extend_from_slice(&b.1.to_le_bytes()));
        put_blobs(&mut out, self.bases.iter());
        out
    }

    /// Parses a part's bytes, checking sizes and that every pack and base number it
    /// names exists; the error says what is wrong.
    // Invariant: `take(n)` returns exactly n bytes, so each fixed-size conversion fits.
    #[allow(clippy::expect_used)]
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let mut r = Reader(data);
        if r.take(8)? != PART_MAGIC {
            return Err("not a block list part".into());
        }
        let (packs, blocks, bases) = (r.u32()? as usize, r.u32()? as usize, r.u32()? as usize);
        if r.0.len() != packs * PACK_LEN + blocks * BLOCK_LEN + bases * BLOB_LEN {
            return Err(format!("{} bytes for {packs} packs, {blocks} blocks and {bases} bases", data.len()));
        }
        let mut part = BlockPart::default();
        for _ in 0..packs {
            let id = r.take(32)?.try_into().expect("32 bytes");
            let key_id = r.take(PACK_KEY_ID_LEN)?.try_into().expect("PACK_KEY_ID_LEN bytes");
            part.packs.push(PackRef { id, key_id });
        }
        let block_blobs = take_blobs(&mut r, blocks, packs)?;
        for blob in block_blobs {
            let base = r.u32()?;
            if base as usize > bases {
                return Err(format!("block names base {base} of {bases}"));
            }
            part.blocks.push((blob, base));
        }
        part.bases = take_blobs(&mut r, bases, packs)?;
        Ok(part)
    }
}

fn put_blobs<'a>(out: &mut Vec<u8>, blobs: impl Iterator<Item = &'a Blob> + Clone) {
    blobs.clone().for_each(|b| out.extend_from_slice(&b.0 .0));
    blobs.clone().for_each(|b| out.extend_from_slice(&b.1.to_le_bytes()));
    blobs.clone().for_each(|b| out.extend_from_slice(&b.2.to_le_bytes()));
    blobs.clone().for_each(|b| out.extend_from_slice(&b.3.to_le_bytes()));
    blobs.for_each(|b| out.extend_from_slice(&b.4.to_le_bytes()));
}

// Invariant: each column holds exactly n entries of its width (`take` returns exactly
// the bytes asked for), and i < n, so each fixed-size slice conversion fits.
#[allow(clippy::expect_used)]
fn take_blobs(r: &mut Reader, n: usize, packs: usize) -> Result<Vec<Blob>, String> {
    let ids = r.take(32 * n)?;
    let (pack_nos, offsets, lengths, raws) = (r.take(4 * n)?, r.take(8 * n)?, r.take(4 * n)?, r.take(4 * n)?);
    let u32_at = |col: &[u8], i: usize| u32::from_le_bytes(col[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    (0..n)
        .map(|i| {
            let pack = u32_at(pack_nos, i);
            if pack as usize >= packs {
                return Err(format!("block names pack {pack} of {packs}"));
            }
            Ok((
                ChunkId(ids[32 * i..32 * i + 32].try_into().expect("32 bytes")),
                pack,
                u64::from_le_bytes(offsets[8 * i..8 * i + 8].try_into().expect("8 bytes")),
                u32_at(lengths, i),
                u32_at(raws, i),
            ))
        })
        .collect()
}

/// Reads one backup's block list, keeping the `keep` parts used last.
pub(crate) struct BlockListReader<'r> {
    repo: &'r Repository,
    label: String,
    per_part: u64,
    total: u64,
    keep: usize,
    parts: tokio::sync::Mutex<VecDeque<(u64, Arc<BlockPart>)>>,
}

impl<'r> BlockListReader<'r> {
    pub(crate) fn new(repo: &'r Repository, manifest: &Manifest, keep: usize) -> Self {
        BlockListReader {
            repo,
            label: manifest.label.clone(),
            per_part: manifest.blocks_per_part.max(1) as u64,
            total: manifest.blocks,
            keep: keep.max(1),
            parts: Default::default(),
        }
    }

    /// The backup whose block list this is.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Read every part once (and keep none): a restore checks that its block list is
    /// complete and authentic before it writes anything.
    pub(crate) async fn check(&self) -> Result<()> {
        for no in 0..self.total.div_ceil(self.per_part) {
            self.load(no).await?;
        }
        Ok(())
    }

    async fn part(&self, no: u64) -> Result<Arc<BlockPart>> {
        let mut parts = self.parts.lock().await;
        if let Some((_, p)) = parts.iter().find(|(n, _)| *n == no) {
            return Ok(p.clone());
        }
        let part = Arc::new(self.load(no).await?);
        if parts.len() >= self.keep {
            parts.pop_front();
        }
        parts.push_back((no, part.clone()));
        Ok(part)
    }

    async fn load(&self, no: u64) -> Result<BlockPart> {
        let part = self.repo.load_block_part(&self.label, no as u32).await.map_err(|e| match e.storage_kind() {
            Some(crate::error::StorageErrorKind::NotFound) => Error::Corrupt {
                what: format!("backup {} block list", self.label),
                detail: format!("object {} is missing", block_part_key(&self.label, no as u32)),
            },
            _ => e,
        })?;
        let want = self.per_part.min(self.total.saturating_sub(no * self.per_part));
        if part.len() as u64 != want {
            return Err(Error::Corrupt {
                what: format!("backup {} block list part {no}", self.label),
                detail: format!("has {} blocks, the manifest says {want}", part.len()),
            });
        }
        Ok(part)
    }

    /// Entries `first..first + count` of the block list.
    pub(crate) async fn range(&self, first: u64, count: u64) -> Result<Vec<(ChunkId, BlockLocation)>> {
        let mut out = Vec::with_capacity(count as usize);
        let mut n = first;
        while n < first + count {
            let part = self.part(n / self.per_part).await?;
            let from = (n % self.per_part) as usize;
            let to = (from as u64 + (first + count - n)).min(part.len() as u64) as usize;
            out.extend((from..to).map(|i| part.get(i)));
            n += (to - from) as u64;
        }
        Ok(out)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    // Invariant: `take(4)` returns exactly 4 bytes.
    #[allow(clippy::expect_used)]
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parts_round_trip(blocks in proptest::collection::vec((any::<[u8; 32]>(), 0u8..4, any::<u64>(), any::<u32>(), any::<u32>(), proptest::option::of((any::<[u8; 32]>(), 0u8..6, any::<u64>()))), 0..50)) {
            let mut part = BlockPart::default();
            let pack = |n: u8| PackRef { id: [n; 32], key_id: [n; 16] };
            for (id, p, offset, length, raw_length, base) in &blocks {
                let base = base.map(|(id, p, offset)| DeltaBase { id: ChunkId(id), pack: pack(p), offset, length: 7, raw_length: 9 });
                part.push(ChunkId(*id), &BlockLocation { pack: pack(*p), offset: *offset, length: *length, raw_length: *raw_length, base });
            }
            prop_assert!(part.packs.len() <= 6);
            let back = BlockPart::decode(&part.encode()).unwrap();
            prop_assert_eq!(back.len(), blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                prop_assert_eq!(back.get(i), part.get(i));
                prop_assert_eq!(back.get(i).1.base.is_some(), block.5.is_some());
            }
        }
    }

    fn manifest(label: &str, blocks: u64, per_part: u32) -> Manifest {
        let json = serde_json::json!({
            "format_version": 2, "label": label, "backup_type": "full", "start_time": "", "stop_time": "",
            "start_lsn": "0/0", "stop_lsn": "0/0", "timeline": 1, "system_identifier": 1, "pg_version": 170000,
            "block_size": 8192, "wal_included": true, "backup_label": "", "tablespaces": [], "size": 0,
            "stored_new": 0, "indexes": [], "files": [], "blocks": blocks, "blocks_per_part": per_part,
        });
        serde_json::from_value(json).unwrap()
    }

    /// Ranges that cross part boundaries come back whole and in order; a part shorter
    /// than the manifest implies, or a missing one, is reported as corrupt.
    #[tokio::test]
    async fn reader_crosses_parts_and_checks_their_length() {
        let (_mem, repo) = crate::repo::tests::test_repo(true).await;
        let pack = PackRef { id: [1; 32], key_id: [2; 16] };
        let entry =
            |n: u64| (ChunkId([n as u8; 32]), BlockLocation { pack, offset: n, length: 1, raw_length: 1, base: None });
        for (no, range) in [(0u32, 0..3u64), (1, 3..6), (2, 6..7)] {
            let mut part = BlockPart::default();
            range.for_each(|n| part.push(entry(n).0, &entry(n).1));
            repo.put_block_part("L", no, &part).await.unwrap();
        }
        let reader = BlockListReader::new(&repo, &manifest("L", 7, 3), 1);
        reader.check().await.unwrap();
        assert_eq!(reader.range(2, 5).await.unwrap(), (2..7).map(entry).collect::<Vec<_>>());
        assert_eq!(reader.range(0, 7).await.unwrap().len(), 7);
        assert!(reader.range(7, 0).await.unwrap().is_empty());
        let err = BlockListReader::new(&repo, &manifest("L", 8, 3), 1).check().await.unwrap_err();
        assert!(err.to_string().contains("has 1 blocks, the manifest says 2"), "{err}");
        let err = BlockListReader::new(&repo, &manifest("M", 3, 3), 1).range(1, 1).await.unwrap_err();
        assert!(err.to_string().contains("backup/M/blocks/000000 is missing"), "{err}");
    }

    #[test]
    fn refuses_damaged_parts() {
        let mut part = BlockPart::default();
        let pack = PackRef { id: [1; 32], key_id: [2; 16] };
        let whole = BlockLocation { pack, offset: 24, length: 10, raw_length: 20, base: None };
        part.push(ChunkId([3; 32]), &whole);
        let bytes = part.encode();
        assert!(BlockPart::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(BlockPart::decode(b"PGCPACK1xxxxxxxxxxxx").is_err());
        let mut bad_pack = bytes.clone();
        bad_pack[20 + PACK_LEN + 32] = 9; // pack number 9 of 1 (the column after the ids)
        assert!(BlockPart::decode(&bad_pack).unwrap_err().contains("pack 9"));
        let mut bad_base = bytes.clone();
        bad_base[20 + PACK_LEN + BLOB_LEN] = 1; // base 1 of 0 (the column after the blobs)
        assert!(BlockPart::decode(&bad_base).unwrap_err().contains("base 1 of 0"));
        assert_eq!(block_count(0, 8192), 0);
        assert_eq!(block_count(8193, 8192), 2);
    }

    /// A new delta is always compressed against a blob stored whole: a delta's base.
    #[test]
    fn deltas_never_chain() {
        let pack = PackRef { id: [1; 32], key_id: [2; 16] };
        let whole = BlockLocation { pack, offset: 24, length: 10, raw_length: 20, base: None };
        let base = whole.delta_base(ChunkId([3; 32]));
        assert_eq!((base.id, base.offset, base.length, base.raw_length), (ChunkId([3; 32]), 24, 10, 20));
        let delta = BlockLocation { offset: 99, length: 2, base: Some(base), ..whole };
        assert_eq!(delta.delta_base(ChunkId([4; 32])), base);
    }
}
