//! Packs and index objects for verify. Every pack a block list names is read whole,
//! once per run, and every blob its index object lists is opened (AEAD), decompressed
//! and its chunk id recomputed; block list entries are then held against the index.
//!
//! Memory does not grow with the database: what is kept per pack is its id, the
//! index object that lists it and whether it was checked (a few dozen bytes per
//! 16 MiB pack); index objects are decoded on demand into a small cache; damaged
//! blobs are remembered by place (there should be none).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::Result;
use crate::repo::block_reader::{BlockFault, BlockReader};
use crate::repo::blocklist::{BlockLocation, DeltaBase, PackRef};
use crate::repo::format::{ChunkId, IndexBlob};
use crate::repo::index::{IndexCatalog, PackListing};
use crate::repo::pack::{PackFault, PackReader};
use crate::repo::Repository;

/// Blobs opened per step (their delta bases are held for the step only).
const BLOBS_PER_WINDOW: usize = 1024;
/// Delta base reads in flight per pack.
const BASE_READS: usize = 16;

/// What checking packs found: packs that failed as a whole, blobs that failed by place.
#[derive(Default)]
pub(super) struct Damage {
    pub packs: HashMap<[u8; 32], String>,
    pub blobs: HashMap<([u8; 32], u64), String>,
}

/// Reads and checks packs, each at most once per run.
pub(super) struct PackChecker<'r> {
    pub repo: &'r Repository,
    pub index: IndexCatalog,
    reader: BlockReader,
    checked: std::sync::Mutex<HashSet<[u8; 32]>>,
    pub damage: std::sync::Mutex<Damage>,
    /// Bytes read from packs and blobs opened.
    pub bytes: std::sync::atomic::AtomicU64,
    pub blobs: std::sync::atomic::AtomicU64,
}

impl<'r> PackChecker<'r> {
    pub(super) fn new(repo: &'r Repository, index: IndexCatalog) -> Self {
        PackChecker {
            repo,
            index,
            reader: repo.block_reader(crate::cpu::Cpu::global()),
            checked: Default::default(),
            damage: Default::default(),
            bytes: Default::default(),
            blobs: Default::default(),
        }
    }

    /// Whether `pack` was read already (or is being read); marks it taken.
    pub(super) fn take(&self, pack: &[u8; 32]) -> bool {
        lock(&self.checked).insert(*pack)
    }

    /// Packs read (or being read) so far.
    pub(super) fn checked_count(&self) -> usize {
        lock(&self.checked).len()
    }

    /// The first damaged blob of `pack`, if any.
    pub(super) fn any_blob_damage(&self, pack: &[u8; 32]) -> Option<String> {
        lock(&self.damage).blobs.iter().find(|((p, _), _)| p == pack).map(|(_, why)| why.clone())
    }

    pub(super) fn pack_damage(&self, pack: &[u8; 32]) -> Option<String> {
        lock(&self.damage).packs.get(pack).cloned()
    }

    pub(super) fn blob_damage(&self, pack: &[u8; 32], offset: u64) -> Option<String> {
        let d = lock(&self.damage);
        d.packs.get(pack).or_else(|| d.blobs.get(&(*pack, offset))).cloned()
    }

    /// Packs known: those an index object lists, and those only block lists name.
    pub(super) fn known_count(&self) -> usize {
        let only_named = lock(&self.checked).iter().filter(|p| !self.index.lists(p)).count();
        self.index.packs().count() + only_named
    }

    /// Whether `pack` can be checked only through the block lists: no readable index
    /// object lists it, and some index object is damaged (it may have been the one).
    pub(super) fn unindexed(&self, pack: &[u8; 32]) -> bool {
        !self.index.damaged.is_empty() && !self.index.lists(pack)
    }

    /// Open one block's blob (and its delta base) from the block list's location,
    /// as restore reads it: None when it opens and matches its chunk id.
    ///
    /// Regression (issue 21, item 10): a damaged index object marked backups DAMAGED
    /// that restored exactly; their blocks are now checked without the index.
    pub(super) async fn open_unindexed(&self, id: &ChunkId, loc: &BlockLocation) -> Result<Option<String>> {
        let run = BlockReader::runs(std::iter::once((0, *id, *loc))).pop();
        let Some(run) = run else { return Ok(None) };
        self.bytes.fetch_add(loc.length as u64, std::sync::atomic::Ordering::Relaxed);
        match self.reader.read_run(run).await {
            Ok(_) => Ok(None),
            Err(BlockFault::Damaged { detail, .. }) => Ok(Some(detail)),
            Err(BlockFault::Other(e)) => Err(e),
        }
    }

    /// Read `pack` whole and open every blob its index lists.
    pub(super) async fn check_pack(&self, pack: [u8; 32]) -> Result<()> {
        let name = PackReader::name_of(&pack);
        let Some(listing) = self.index.listing(self.repo, &pack).await? else {
            // With an index object damaged, its packs are checked block by block from
            // the block lists (open_unindexed), not declared damaged unread.
            if self.index.damaged.is_empty() {
                lock(&self.damage).packs.insert(pack, format!("{name} is listed by no index object"));
            }
            return Ok(());
        };
        let data = match self.read_whole(&pack, &listing).await? {
            Ok(d) => d,
            Err(why) => {
                lock(&self.damage).packs.insert(pack, why);
                return Ok(());
            }
        };
        self.bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        // A window of blobs at a time: the bases of a pack of small deltas would
        // otherwise all be held at once.
        for start in (0..listing.blobs.len()).step_by(BLOBS_PER_WINDOW) {
            let window = start..(start + BLOBS_PER_WINDOW).min(listing.blobs.len());
            self.check_window(&pack, &name, &listing, &data, window).await?;
        }
        Ok(())
    }

    /// Fetch the window's delta bases (a few reads in flight), then open its blobs on rayon.
    async fn check_window(
        &self,
        pack: &[u8; 32],
        name: &str,
        listing: &Arc<PackListing>,
        data: &Bytes,
        window: std::ops::Range<usize>,
    ) -> Result<()> {
        let bases = self.fetch_bases(pack, &listing.blobs[window.clone()], data).await?;
        let pack_ref = PackRef { id: *pack, key_id: listing.key_id };
        let (listing, data, reader) = (listing.clone(), data.clone(), self.reader.clone());
        let work = move || open_all(&reader, pack_ref, &listing.blobs[window], &data, &bases);
        let failures = crate::ops::on_rayon(work).await?;
        self.blobs.fetch_add(failures.1, std::sync::atomic::Ordering::Relaxed);
        let mut d = lock(&self.damage);
        for (offset, why) in failures.0 {
            d.blobs.insert((*pack, offset), format!("{name} at offset {offset}: {why}"));
        }
        Ok(())
    }

    /// The whole pack, or why it is damaged (missing, truncated, wrong header).
    async fn read_whole(&self, pack: &[u8; 32], listing: &PackListing) -> Result<std::result::Result<Bytes, String>> {
        match self.repo.pack_reader().read_whole(pack, listing.size, &listing.key_id).await {
            Ok(d) => Ok(Ok(d)),
            Err(PackFault::Damaged(why)) => Ok(Err(why)),
            Err(PackFault::Other(e)) => Err(e),
        }
    }

    /// The sealed base blob of every delta in the pack, by the delta's offset: sliced
    /// from this pack or read from the base's (one ranged read each).
    async fn fetch_bases(&self, pack: &[u8; 32], blobs: &[IndexBlob], data: &Bytes) -> Result<HashMap<u64, BaseRead>> {
        let reads = blobs.iter().filter_map(|b| Some((b.offset, b.base.as_ref()?))).map(|(offset, base)| async move {
            let mut base_pack = [0u8; 32];
            if hex::decode_to_slice(&base.pack, &mut base_pack).is_err() {
                return Ok((offset, Err(format!("its base names pack {:?}, not a pack id", base.pack))));
            }
            Ok((offset, self.read_base(pack, data, base_pack, base.offset).await?))
        });
        futures::stream::iter(reads).buffer_unordered(BASE_READS).try_collect().await
    }

    async fn read_base(&self, pack: &[u8; 32], data: &Bytes, base_pack: [u8; 32], offset: u64) -> Result<BaseRead> {
        let Some((blob, key_id)) = self.index.blob(self.repo, &base_pack, offset).await? else {
            return Ok(Err(format!(
                "its base at offset {offset} of pack {} is listed by no index object",
                hex::encode(base_pack)
            )));
        };
        let range = offset..offset + blob.length as u64;
        let sealed = if base_pack == *pack {
            match data.get(range.start as usize..range.end as usize) {
                Some(s) => data.slice_ref(s),
                None => return Ok(Err("its base lies past the end of the pack".into())),
            }
        } else {
            let pref = PackRef { id: base_pack, key_id };
            match self.repo.pack_reader().read(&pref, range).await {
                Ok(b) => b,
                Err(PackFault::Damaged(why)) => return Ok(Err(format!("its base: {why}"))),
                Err(PackFault::Other(e)) => return Err(e),
            }
        };
        let pack = PackRef { id: base_pack, key_id };
        let at = DeltaBase { id: blob.id, pack, offset, length: blob.length, raw_length: blob.raw_length };
        Ok(Ok(Base { at, sealed }))
    }

    /// Check a block list entry against the index: the same blob at the same place.
    pub(super) async fn matches_index(&self, id: &ChunkId, loc: &BlockLocation) -> Result<Option<String>> {
        let name = PackReader::name(&loc.pack);
        let Some((blob, key_id)) = self.index.blob(self.repo, &loc.pack.id, loc.offset).await? else {
            return Ok(Some(format!("{name} has no blob at offset {} in any index object", loc.offset)));
        };
        if blob.id != *id || blob.length != loc.length || blob.raw_length != loc.raw_length || key_id != loc.pack.key_id
        {
            return Ok(Some(format!(
                "{name} at offset {}: the block list and the index disagree on the blob",
                loc.offset
            )));
        }
        match (&blob.base, &loc.base) {
            (None, None) => Ok(None),
            (Some(ib), Some(lb)) if ib.offset == lb.offset && ib.pack == hex::encode(lb.pack.id) => Ok(None),
            _ => Ok(Some(format!(
                "{name} at offset {}: the block list and the index disagree on its delta base",
                loc.offset
            ))),
        }
    }
}

/// A delta's base blob, sealed, and where it lives.
pub(super) struct Base {
    at: DeltaBase,
    sealed: Bytes,
}

type BaseRead = std::result::Result<Base, String>;

/// Open blobs of a pack through the block reader: (failures by offset, blobs opened).
fn open_all(
    reader: &BlockReader,
    pack: PackRef,
    blobs: &[IndexBlob],
    data: &Bytes,
    bases: &HashMap<u64, BaseRead>,
) -> (Vec<(u64, String)>, u64) {
    use rayon::prelude::*;
    let failures: Vec<(u64, String)> = blobs
        .par_iter()
        .filter_map(|b| {
            let sealed = data.get(b.offset as usize..(b.offset + b.length as u64) as usize);
            let Some(sealed) = sealed else { return Some((b.offset, "lies past the end of the pack".to_string())) };
            let base = match bases.get(&b.offset) {
                None => None,
                Some(Err(why)) => return Some((b.offset, why.clone())),
                Some(Ok(base)) => Some(base),
            };
            let at = |base: Option<&Base>| BlockLocation {
                pack,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
                base: base.map(|x| x.at),
            };
            let opened = reader.open(&b.id, &at(base), sealed, base.map(|x| (&x.at, &x.sealed)));
            opened.err().map(|e| (b.offset, format!("blob {}: {e}", hex::encode(&b.id.0[..8]))))
        })
        .collect();
    (failures, blobs.len() as u64)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
