//! Index objects (§6.1): the union of all of them is the repository's chunk index.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::blocklist::{BlockLocation, DeltaBase, PackRef};
use super::format::*;
use super::Repository;
use crate::error::{Error, Result};

/// Every chunk the index objects list, and where it lives.
pub(crate) type ChunkIndex = HashMap<ChunkId, BlockLocation>;

impl Repository {
    /// Every chunk the repository holds, from all index objects. Restore does not
    /// need it (block lists carry locations); it is for checks and tools, and holds
    /// every blob in memory.
    pub async fn load_index(&self) -> Result<ChunkIndex> {
        let mut map = ChunkIndex::new();
        // Whole blobs by place, to complete the deltas' bases: (pack id, offset) → blob.
        let mut whole: HashMap<([u8; 32], u64), DeltaBase> = HashMap::new();
        let mut deltas = Vec::new();
        for info in self.storage.list(INDEX_PREFIX).await? {
            let file: IndexFile = self.get_meta(&info.key).await?;
            let bad = |e: hex::FromHexError| Error::Corrupt {
                what: format!("index {}", info.key),
                detail: format!("bad pack or key id: {e}"),
            };
            for p in file.packs {
                let mut pack = PackRef { id: [0; 32], key_id: [0; 16] };
                hex::decode_to_slice(&p.id, &mut pack.id).map_err(bad)?;
                hex::decode_to_slice(&p.key_id, &mut pack.key_id).map_err(bad)?;
                for b in p.blobs {
                    let loc = BlockLocation {
                        pack,
                        offset: b.offset,
                        length: b.length,
                        raw_length: b.raw_length,
                        base: None,
                    };
                    match b.base {
                        None => {
                            let blob = loc.delta_base(b.id);
                            whole.insert((pack.id, b.offset), blob);
                            map.insert(b.id, loc);
                        }
                        Some(base) => {
                            let mut base_pack = [0; 32];
                            hex::decode_to_slice(&base.pack, &mut base_pack).map_err(bad)?;
                            deltas.push((b.id, loc, base_pack, base.offset, info.key.clone()));
                        }
                    }
                }
            }
        }
        for (id, mut loc, base_pack, offset, key) in deltas {
            let base = *whole.get(&(base_pack, offset)).ok_or_else(|| Error::Corrupt {
                what: format!("index {key}"),
                detail: format!(
                    "delta {id} names a base at offset {offset} of pack {} that no index lists",
                    hex::encode(base_pack)
                ),
            })?;
            loc.base = Some(base);
            map.insert(id, loc);
        }
        Ok(map)
    }
}

// ------------------------------------------------------------ verify's catalog

/// Decoded index objects kept (each lists up to ~32k blobs, a few MiB decoded).
const INDEX_CACHE: usize = 8;

/// One pack as its index object lists it, blobs by offset.
pub(crate) struct PackListing {
    pub key_id: [u8; 16],
    pub size: u64,
    /// Sorted by offset.
    pub blobs: Vec<IndexBlob>,
}

impl PackListing {
    pub(crate) fn blob_at(&self, offset: u64) -> Option<&IndexBlob> {
        self.blobs.binary_search_by_key(&offset, |b| b.offset).ok().and_then(|i| self.blobs.get(i))
    }
}

type Listings = Arc<HashMap<[u8; 32], Arc<PackListing>>>;

/// Which index object lists each pack, and a small cache of decoded ones.
pub(crate) struct IndexCatalog {
    /// Pack id → index object key.
    owner: HashMap<[u8; 32], Arc<str>>,
    cache: tokio::sync::Mutex<VecDeque<(Arc<str>, Listings)>>,
    /// Index objects that could not be read: key → why.
    pub damaged: Vec<(String, String)>,
}

impl IndexCatalog {
    /// Read every index object once, keeping only which packs each lists.
    pub(crate) async fn load(repo: &Repository) -> Result<IndexCatalog> {
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

    /// Whether some index object lists `pack`.
    pub(crate) fn lists(&self, pack: &[u8; 32]) -> bool {
        self.owner.contains_key(pack)
    }

    /// Packs some index object lists.
    pub(crate) fn packs(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.owner.keys()
    }

    /// How the index lists `pack`; `None` when no index object does.
    pub(crate) async fn listing(&self, repo: &Repository, pack: &[u8; 32]) -> Result<Option<Arc<PackListing>>> {
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
    pub(crate) async fn blob(
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
