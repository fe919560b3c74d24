//! Packs: the writer appends blobs behind a small header until the target size; the
//! reader fetches byte ranges of stored packs by their place.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::blocklist::{BlockLocation, DeltaBase, PackRef};
use super::format::{pack_key, ChunkId, IndexBase, IndexBlob, IndexPack, PACK_KEY_ID_LEN, PACK_MAGIC};
use crate::error::{Error, StorageErrorKind};
use crate::storage::DynStorage;

/// Ranged reads of stored packs. A pack that is missing or that the storage refuses
/// to read is damage ([`PackFault::Damaged`], for the caller to name what it
/// damages), never "absent"; transient trouble stays an error to retry.
#[derive(Clone, Debug)]
pub struct PackReader {
    storage: DynStorage,
}

#[derive(Debug)]
pub enum PackFault {
    /// The pack is missing or unreadable: what it holds is lost. The text names it.
    Damaged(String),
    /// Anything else (a transient storage error, already retried).
    Other(Error),
}

impl PackReader {
    pub(crate) fn new(storage: DynStorage) -> Self {
        Self { storage }
    }

    /// Bytes `range` of `pack`.
    pub async fn read(&self, pack: &PackRef, range: Range<u64>) -> Result<Bytes, PackFault> {
        let key = pack_key(&pack.hex_id());
        self.storage.get_range(&key, range).await.map_err(|e| Self::fault(&key, e))
    }

    /// Bytes of several `ranges` of `pack`, in order, read together.
    pub async fn read_ranges(&self, pack: &PackRef, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, PackFault> {
        let key = pack_key(&pack.hex_id());
        self.storage.get_ranges(&key, ranges).await.map_err(|e| Self::fault(&key, e))
    }

    fn fault(key: &str, e: Error) -> PackFault {
        match e.storage_kind() {
            Some(StorageErrorKind::NotFound) => PackFault::Damaged(format!("pack {key} is missing")),
            Some(StorageErrorKind::Permanent) => PackFault::Damaged(format!("pack {key}: {e}")),
            _ => PackFault::Other(e),
        }
    }

    /// The whole of pack `id` (verify reads every byte of it), checked against what
    /// its index object says: `size` bytes, a pack header for data key `key_id`.
    pub(crate) async fn read_whole(
        &self,
        id: &[u8; 32],
        size: u64,
        key_id: &[u8; PACK_KEY_ID_LEN],
    ) -> Result<Bytes, PackFault> {
        let key = Self::name_of(id);
        let data = self.storage.get(&key).await.map_err(|e| match e.storage_kind() {
            Some(StorageErrorKind::NotFound) => PackFault::Damaged(format!("{key} is missing")),
            Some(StorageErrorKind::Permanent) => PackFault::Damaged(format!("{key}: {e}")),
            _ => PackFault::Other(e),
        })?;
        if data.len() as u64 != size {
            return Err(PackFault::Damaged(format!("{key} is {} bytes, its index object says {size}", data.len())));
        }
        if parse_header(&data) != Some(*key_id) {
            return Err(PackFault::Damaged(format!("{key} does not start with a pack header for its data key")));
        }
        Ok(data)
    }

    /// How messages name a pack: its object key.
    pub fn name(pack: &PackRef) -> String {
        Self::name_of(&pack.id)
    }

    /// The object key of pack `id`.
    pub(crate) fn name_of(id: &[u8; 32]) -> String {
        pack_key(&hex::encode(id))
    }
}

/// Builds one pack in memory: sealed blobs appended after the header, with the
/// index record of each.
pub struct PackWriter {
    /// Random, chosen up front so a blob's location is known when it is added.
    id: [u8; 32],
    key_id: [u8; PACK_KEY_ID_LEN],
    buf: BytesMut,
    blobs: Vec<IndexBlob>,
}

impl PackWriter {
    /// An empty pack (just its header) under a new random id, for blobs sealed with
    /// data key `key_id`; `capacity` is the expected size in bytes.
    pub fn new(key_id: [u8; PACK_KEY_ID_LEN], capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + 1024 * 1024);
        buf.put_slice(PACK_MAGIC);
        buf.put_slice(&key_id);
        Self { id: crate::crypto::random_bytes::<32>(), key_id, buf, blobs: Vec::new() }
    }

    /// Append a blob (a delta when `base` is set); returns where it will live once
    /// the pack is stored.
    pub fn add(&mut self, id: ChunkId, raw_length: u32, sealed: &[u8], base: Option<DeltaBase>) -> BlockLocation {
        let loc = BlockLocation {
            pack: PackRef { id: self.id, key_id: self.key_id },
            offset: self.buf.len() as u64,
            length: sealed.len() as u32,
            raw_length,
            base,
        };
        let base = base.map(|b| IndexBase { pack: b.pack.hex_id(), offset: b.offset });
        self.blobs.push(IndexBlob { id, offset: loc.offset, length: loc.length, raw_length, base });
        self.buf.put_slice(sealed);
        loc
    }

    /// The pack's size so far in bytes, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added yet.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The pack's bytes and its index record.
    pub(crate) fn finish(self) -> (Bytes, IndexPack) {
        let id = hex::encode(self.id);
        let size = self.buf.len() as u64;
        (self.buf.freeze(), IndexPack { id, key_id: hex::encode(self.key_id), size, blobs: self.blobs })
    }

    /// The pack's bytes alone (benchmarks).
    pub fn into_bytes(self) -> Bytes {
        self.finish().0
    }
}

/// Parse a pack header, returning its data key id (blob readers need not: every
/// blob authenticates itself; verify checks it, and the test pins §5's layout).
fn parse_header(header: &[u8]) -> Option<[u8; PACK_KEY_ID_LEN]> {
    use super::format::PACK_HEADER_LEN;
    if header.len() < PACK_HEADER_LEN || &header[..PACK_MAGIC.len()] != PACK_MAGIC {
        return None;
    }
    header[PACK_MAGIC.len()..PACK_HEADER_LEN].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_point_at_blobs() {
        let mut w = PackWriter::new([7; 16], 1024);
        let a = w.add(ChunkId([1; 32]), 10, b"aaaa", None);
        let b = w.add(ChunkId([2; 32]), 20, b"bbbbbb", Some(a.delta_base(ChunkId([1; 32]))));
        let (bytes, idx) = w.finish();
        assert_eq!(a.pack, b.pack);
        assert_eq!((b.offset, b.length, b.raw_length), (idx.blobs[1].offset, 6, 20));
        assert_eq!(a.pack.hex_id(), idx.id);
        assert_eq!(idx.blobs[1].base, Some(IndexBase { pack: idx.id.clone(), offset: a.offset }));
        assert_eq!(parse_header(&bytes), Some([7; 16]));
        for (b, want) in idx.blobs.iter().zip([&b"aaaa"[..], &b"bbbbbb"[..]]) {
            assert_eq!(&bytes[b.offset as usize..(b.offset + b.length as u64) as usize], want);
        }
        assert_eq!(idx.size, bytes.len() as u64);
        assert_eq!(idx.id.len(), 64);
    }
}
