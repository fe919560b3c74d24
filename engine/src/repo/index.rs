//! Index objects (§6.1): the union of all of them is the repository's chunk index.

use std::collections::HashMap;

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
