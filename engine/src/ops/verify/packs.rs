//! Packs and index objects for verify. Every pack a block list names is read whole,
//! once per run, and every blob its index object lists is opened (AEAD), decompressed
//! and its chunk id recomputed; block list entries are then held against the index.
//!
//! Memory does not grow with the database: what is kept per pack is its id, the
//! index object that lists it and whether it was checked (a few dozen bytes per
//! 16 MiB pack); index objects are decoded on demand into a small cache; damaged
//! blobs are remembered by place (there should be none).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::error::StorageErrorKind;
use crate::error::{Error, Result};
use crate::repo::blob::{open_block, open_delta_block, BlockError};
use crate::repo::blocklist::{BlockLocation, PackRef};
use crate::repo::format::{pack_key, ChunkId, IndexBlob, IndexFile, INDEX_PREFIX, PACK_HEADER_LEN, PACK_MAGIC};
use crate::repo::pack::{PackFault, PackReader};
use crate::repo::{DataCiphers, Repository};

/// Blobs opened per step (their delta bases are held for the step only).
const BLOBS_PER_WINDOW: usize = 1024;
/// Delta base reads in flight per pack.
const BASE_READS: usize = 16;
/// Decoded index objects kept (each lists up to ~32k blobs, a few MiB decoded).
const INDEX_CACHE: usize = 8;

/// One pack as its index object lists it, blobs by offset.
pub(super) struct PackListing {
    pub key_id: [u8; 16],
    pub size: u64,
    /// Sorted by offset.
    pub blobs: Vec<IndexBlob>,
}

impl PackListing {
    fn blob_at(&self, offset: u64) -> Option<&IndexBlob> {
        self.blobs.binary_search_by_key(&offset, |b| b.offset).ok().and_then(|i| self.blobs.get(i))
    }
}

type Listings = Arc<HashMap<[u8; 32], Arc<PackListing>>>;

/// Which index object lists each pack, and a small cache of decoded ones.
pub(super) struct IndexCatalog {
    /// Pack id → index object key.
    owner: HashMap<[u8; 32], Arc<str>>,
    cache: tokio::sync::Mutex<VecDeque<(Arc<str>, Listings)>>,
    /// Index objects that could not be read: key → why.
    pub damaged: Vec<(String, String)>,
}

impl IndexCatalog {
    /// Read every index object once, keeping only which packs each lists.
    pub(super) async fn load(repo: &Repository) -> Result<IndexCatalog> {
        let mut catalog = IndexCatalog { owner: HashMap::new(), cache: Default::default(), damaged: Vec::new() };
        for info in repo.storage().list(INDEX_PREFIX).await? {
            let key: Arc<str> = info.key.as_str().into();
            match decode_index(repo, &key).await {
                Ok(listings) => {
                    for id in listings.keys() {
                        catalog.owner.insert(*id, key.clone());
                    }
                }
                Err(Error::Corrupt { detail, .. }) => catalog.damaged.push((key.to_string(), detail)),
                Err(e) => return Err(e),
            }
        }
        Ok(catalog)
    }

    /// Packs some index object lists.
    pub(super) fn packs(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.owner.keys()
    }

    /// How the index lists `pack`; `None` when no index object does.
    pub(super) async fn listing(&self, repo: &Repository, pack: &[u8; 32]) -> Result<Option<Arc<PackListing>>> {
        let Some(key) = self.owner.get(pack) else { return Ok(None) };
        {
            let mut cache = self.cache.lock().await;
            let hit = cache.iter().position(|(k, _)| k == key).and_then(|i| cache.remove(i));
            if let Some(hit) = hit {
                // Least recently used goes first: a hit moves to the back.
                let found = hit.1.get(pack).cloned();
                cache.push_back(hit);
                return Ok(found);
            }
        } // not held while decoding: other pack checks go on meanwhile
        let listings = Arc::new(decode_index(repo, key).await?);
        let mut cache = self.cache.lock().await;
        if cache.len() >= INDEX_CACHE {
            cache.pop_front();
        }
        cache.push_back((key.clone(), listings.clone()));
        Ok(listings.get(pack).cloned())
    }

    /// The blob the index lists at a place, if any.
    pub(super) async fn blob(
        &self,
        repo: &Repository,
        pack: &[u8; 32],
        offset: u64,
    ) -> Result<Option<(IndexBlob, [u8; 16])>> {
        Ok(self.listing(repo, pack).await?.and_then(|l| l.blob_at(offset).map(|b| (b.clone(), l.key_id))))
    }
}

async fn decode_index(repo: &Repository, key: &str) -> Result<HashMap<[u8; 32], Arc<PackListing>>> {
    let file: IndexFile = repo.get_meta(key).await?;
    let bad = |e: hex::FromHexError| Error::Corrupt {
        what: format!("index object {key}"),
        detail: format!("bad pack or key id: {e}"),
    };
    let mut out = HashMap::with_capacity(file.packs.len());
    for p in file.packs {
        let (mut id, mut key_id) = ([0u8; 32], [0u8; 16]);
        hex::decode_to_slice(&p.id, &mut id).map_err(bad)?;
        hex::decode_to_slice(&p.key_id, &mut key_id).map_err(bad)?;
        let mut blobs = p.blobs;
        blobs.sort_by_key(|b| b.offset);
        out.insert(id, Arc::new(PackListing { key_id, size: p.size, blobs }));
    }
    Ok(out)
}

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
    ciphers: DataCiphers,
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
            ciphers: repo.data_ciphers(),
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
        let only_named = lock(&self.checked).iter().filter(|p| !self.index.owner.contains_key(*p)).count();
        self.index.packs().count() + only_named
    }

    /// Whether `pack` can be checked only through the block lists: no readable index
    /// object lists it, and some index object is damaged (it may have been the one).
    pub(super) fn unindexed(&self, pack: &[u8; 32]) -> bool {
        !self.index.damaged.is_empty() && !self.index.owner.contains_key(pack)
    }

    /// Open one block's blob (and its delta base) from the block list's location,
    /// as restore reads it: None when it opens and matches its chunk id.
    ///
    /// Regression (issue 21, item 10): a damaged index object marked backups DAMAGED
    /// that restored exactly; their blocks are now checked without the index.
    pub(super) async fn open_unindexed(&self, id: &ChunkId, loc: &BlockLocation) -> Result<Option<String>> {
        let reader = self.repo.pack_reader();
        let read = |pack: PackRef, offset: u64, length: u32| {
            let reader = reader.clone();
            async move { reader.read(&pack, offset..offset + length as u64).await }
        };
        let chunk_key = *self.repo.chunk_key();
        let base_plain = match loc.base {
            None => None,
            Some(b) => match read(b.pack, b.offset, b.length).await {
                Ok(sealed) => {
                    match open_block(
                        &self.ciphers.get(&b.pack.key_id),
                        &chunk_key,
                        &b.id,
                        &sealed,
                        b.raw_length as usize,
                    ) {
                        Ok(plain) => Some((b.id, plain)),
                        Err(e) => return Ok(Some(format!("its delta base in {}: {e}", PackReader::name(&b.pack)))),
                    }
                }
                Err(PackFault::Damaged(why)) => return Ok(Some(format!("its delta base: {why}"))),
                Err(PackFault::Other(e)) => return Err(e),
            },
        };
        let sealed = match read(loc.pack, loc.offset, loc.length).await {
            Ok(s) => s,
            Err(PackFault::Damaged(why)) => return Ok(Some(why)),
            Err(PackFault::Other(e)) => return Err(e),
        };
        self.bytes.fetch_add(sealed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let cipher = self.ciphers.get(&loc.pack.key_id);
        let raw = loc.raw_length as usize;
        let opened = match &base_plain {
            None => open_block(&cipher, &chunk_key, id, &sealed, raw),
            Some((base_id, plain)) => open_delta_block(&cipher, &chunk_key, id, (base_id, plain), &sealed, raw),
        };
        Ok(opened.err().map(|e| format!("{} at offset {}: {e}", PackReader::name(&loc.pack), loc.offset)))
    }

    /// Read `pack` whole and open every blob its index lists.
    pub(super) async fn check_pack(&self, pack: [u8; 32]) -> Result<()> {
        let name = pack_key(&hex::encode(pack));
        let Some(listing) = self.index.listing(self.repo, &pack).await? else {
            // With an index object damaged, its packs are checked block by block from
            // the block lists (open_unindexed), not declared damaged unread.
            if self.index.damaged.is_empty() {
                lock(&self.damage).packs.insert(pack, format!("{name} is listed by no index object"));
            }
            return Ok(());
        };
        let data = match self.read_whole(&name, &listing).await? {
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
        let cipher = self.ciphers.get(&listing.key_id);
        let chunk_key = *self.repo.chunk_key();
        let base_ciphers: HashMap<[u8; 16], Arc<crate::crypto::Cipher>> =
            bases.values().filter_map(|b| b.as_ref().ok()).map(|b| (b.key_id, self.ciphers.get(&b.key_id))).collect();
        let (listing, data) = (listing.clone(), data.clone());
        let work = move || open_all(&cipher, &base_ciphers, &chunk_key, &listing.blobs[window], &data, &bases);
        let failures = crate::ops::on_rayon(work).await?;
        self.blobs.fetch_add(failures.1, std::sync::atomic::Ordering::Relaxed);
        let mut d = lock(&self.damage);
        for (offset, why) in failures.0 {
            d.blobs.insert((*pack, offset), format!("{name} at offset {offset}: {why}"));
        }
        Ok(())
    }

    /// The whole pack, or why it is damaged (missing, truncated, wrong header).
    async fn read_whole(&self, name: &str, listing: &PackListing) -> Result<std::result::Result<Bytes, String>> {
        let data = match self.repo.storage().get(name).await {
            Ok(d) => d,
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {
                return Ok(Err(format!("{name} is missing")))
            }
            Err(e) if e.storage_kind() == Some(StorageErrorKind::Permanent) => return Ok(Err(format!("{name}: {e}"))),
            Err(e) => return Err(e),
        };
        if data.len() as u64 != listing.size {
            return Ok(Err(format!("{name} is {} bytes, its index object says {}", data.len(), listing.size)));
        }
        if data.len() < PACK_HEADER_LEN
            || &data[..PACK_MAGIC.len()] != PACK_MAGIC
            || data[PACK_MAGIC.len()..PACK_HEADER_LEN] != listing.key_id
        {
            return Ok(Err(format!("{name} does not start with a pack header for its data key")));
        }
        Ok(Ok(data))
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
        Ok(Ok(Base { id: blob.id, raw_length: blob.raw_length, key_id, sealed }))
    }

    /// Check a block list entry against the index: the same blob at the same place.
    pub(super) async fn matches_index(&self, id: &ChunkId, loc: &BlockLocation) -> Result<Option<String>> {
        let name = pack_key(&hex::encode(loc.pack.id));
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

/// A delta's base blob, sealed, with what opening it needs.
pub(super) struct Base {
    id: ChunkId,
    raw_length: u32,
    key_id: [u8; 16],
    sealed: Bytes,
}

type BaseRead = std::result::Result<Base, String>;

/// Open blobs of a pack: (failures by offset, blobs opened).
fn open_all(
    cipher: &crate::crypto::Cipher,
    base_ciphers: &HashMap<[u8; 16], Arc<crate::crypto::Cipher>>,
    chunk_key: &[u8; 32],
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
            let opened = match bases.get(&b.offset) {
                None => open_block(cipher, chunk_key, &b.id, sealed, b.raw_length as usize).map(|_| ()),
                Some(Err(why)) => return Some((b.offset, why.clone())),
                Some(Ok(base)) => open_delta(cipher, base_ciphers, chunk_key, b, base, sealed),
            };
            opened.err().map(|e| (b.offset, format!("blob {}: {e}", hex::encode(&b.id.0[..8]))))
        })
        .collect();
    (failures, blobs.len() as u64)
}

fn open_delta(
    cipher: &crate::crypto::Cipher,
    base_ciphers: &HashMap<[u8; 16], Arc<crate::crypto::Cipher>>,
    chunk_key: &[u8; 32],
    b: &IndexBlob,
    base: &Base,
    sealed: &[u8],
) -> std::result::Result<(), BlockError> {
    let base_cipher = base_ciphers.get(&base.key_id).ok_or(BlockError::IdMismatch)?;
    let plain = open_block(base_cipher, chunk_key, &base.id, &base.sealed, base.raw_length as usize)?;
    open_delta_block(cipher, chunk_key, &b.id, (&base.id, &plain), sealed, b.raw_length as usize).map(|_| ())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
