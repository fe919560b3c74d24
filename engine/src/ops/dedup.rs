//! Which blocks a backup need not store again, in memory that does not grow with the
//! cluster: the parent's block at the same position of the same file (diff, incr),
//! and a bounded cache of recently stored chunks (repeats within one backup: empty
//! pages, the template databases).

use std::collections::HashMap;

use crate::error::Result;
use crate::repo::blocklist::{block_count, BlockListReader, BlockLocation};
use crate::repo::format::{ChunkId, FileKind, Manifest};
use crate::repo::Repository;

/// Parent block list parts kept: files need not arrive in the parent's order.
const PARENT_PARTS_KEPT: usize = 3;

/// The parent backup's block list, read part by part as the new backup reaches it.
pub(super) struct ParentBlocks<'r> {
    list: BlockListReader<'r>,
    /// (tablespace, path) → (first block in the block list, block count).
    files: HashMap<(Option<u32>, String), (u64, u64)>,
}

impl<'r> ParentBlocks<'r> {
    pub(super) fn new(repo: &'r Repository, parent: &Manifest) -> Self {
        let mut files = HashMap::new();
        let mut next = 0;
        for f in parent.files.iter().filter(|f| f.kind == FileKind::File) {
            let n = block_count(f.size, parent.block_size);
            files.insert((f.tablespace, f.path.clone()), (next, n));
            next += n;
        }
        ParentBlocks { list: BlockListReader::new(repo, parent, PARENT_PARTS_KEPT), files }
    }

    pub(super) fn label(&self) -> &str {
        self.list.label()
    }

    /// Where the parent's blocks of a file start, and how many it has.
    pub(super) fn file(&self, tablespace: Option<u32>, path: &str) -> Option<(u64, u64)> {
        self.files.get(&(tablespace, path.to_string())).copied()
    }

    /// Entry `n` of the parent's block list.
    pub(super) async fn block(&self, n: u64) -> Result<Option<(ChunkId, BlockLocation)>> {
        Ok(self.list.range(n, 1).await?.pop())
    }
}

/// Chunk ids a backup stored (or is storing) lately. Two generations of at most
/// `cap` entries: a hit moves an entry to the young one, a full young generation
/// replaces the old one, so frequent blocks stay and memory stays bounded.
pub(super) struct RecentChunks {
    cap: usize,
    young: HashMap<ChunkId, Option<BlockLocation>>,
    old: HashMap<ChunkId, Option<BlockLocation>>,
}

impl RecentChunks {
    pub(super) fn new(cap: usize) -> Self {
        RecentChunks { cap, young: HashMap::new(), old: HashMap::new() }
    }

    /// True when `id` is new here: the caller must store it (and then call `stored`).
    /// False when it is stored or being stored by an earlier block.
    pub(super) fn claim(&mut self, id: ChunkId) -> bool {
        if self.young.contains_key(&id) {
            return false;
        }
        let (claimed, entry) = match self.old.remove(&id) {
            Some(loc) => (false, loc),
            None => (true, None),
        };
        self.young.insert(id, entry);
        if self.young.len() >= self.cap {
            self.old = std::mem::take(&mut self.young);
        }
        claimed
    }

    pub(super) fn location(&self, id: &ChunkId) -> Option<BlockLocation> {
        self.young.get(id).or_else(|| self.old.get(id)).copied().flatten()
    }

    pub(super) fn stored(&mut self, id: ChunkId, loc: BlockLocation) {
        match self.old.get_mut(&id) {
            Some(e) => *e = Some(loc),
            None => {
                self.young.insert(id, Some(loc));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::blocklist::PackRef;

    fn loc(offset: u64) -> BlockLocation {
        BlockLocation { pack: PackRef { id: [1; 32], key_id: [2; 16] }, offset, length: 1, raw_length: 1, base: None }
    }

    #[test]
    fn recent_chunks_stay_bounded_and_keep_what_repeats() {
        let mut r = RecentChunks::new(4);
        let id = |n: u8| ChunkId([n; 32]);
        assert!(r.claim(id(0)));
        assert!(!r.claim(id(0)), "claimed, being stored");
        assert_eq!(r.location(&id(0)), None);
        r.stored(id(0), loc(7));
        assert_eq!(r.location(&id(0)), Some(loc(7)));
        for n in 1..=20u8 {
            assert!(r.claim(id(n)));
            assert!(!r.claim(id(0)), "a repeating block stays known");
        }
        assert!(r.young.len() + r.old.len() <= 8);
        assert_eq!(r.location(&id(0)), Some(loc(7)));
        assert!(r.claim(id(1)), "an old block was forgotten: stored again");
    }
}
