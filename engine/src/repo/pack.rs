//! Pack writer: blobs appended behind a small header until the target size.

use bytes::{BufMut, Bytes, BytesMut};

use super::blocklist::{BlockLocation, DeltaBase, PackRef};
use super::format::{ChunkId, IndexBase, IndexBlob, IndexPack, PACK_HEADER_LEN, PACK_KEY_ID_LEN, PACK_MAGIC};

pub struct PackWriter {
    /// Random, chosen up front so a blob's location is known when it is added.
    id: [u8; 32],
    key_id: [u8; PACK_KEY_ID_LEN],
    buf: BytesMut,
    blobs: Vec<IndexBlob>,
}

impl PackWriter {
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

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The pack's bytes and its index record.
    pub fn finish(self) -> (Bytes, IndexPack) {
        let id = hex::encode(self.id);
        let size = self.buf.len() as u64;
        (self.buf.freeze(), IndexPack { id, key_id: hex::encode(self.key_id), size, blobs: self.blobs })
    }

    pub fn key_id(&self) -> [u8; PACK_KEY_ID_LEN] {
        self.key_id
    }
}

/// Parse a pack header, returning its data key id.
pub fn parse_header(header: &[u8]) -> Option<[u8; PACK_KEY_ID_LEN]> {
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
