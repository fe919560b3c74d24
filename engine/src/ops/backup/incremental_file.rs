//! An `INCREMENTAL.<file>` entry of `BASE_BACKUP ( INCREMENTAL )` (pg/incremental.rs)
//! turned into the blocks of the whole file, as it arrives: a block with no changed
//! page is the parent's, a block with some is the parent's with those pages laid
//! over it. Memory: the header (at most 512 KiB) and one block's changed pages.

use bytes::{Bytes, BytesMut};

use super::worker::Patch;
use crate::pg::incremental::{Geometry, IncrementalHeader};

/// The incremental file being received.
pub(super) struct IncrementalFile {
    geometry: Geometry,
    page_size: usize,
    block_size: usize,
    /// Bytes of the header until it is whole.
    head: Vec<u8>,
    header: Option<IncrementalHeader>,
    /// Pages received so far (an index into the header's list).
    received: usize,
    page: BytesMut,
    /// Changed pages of block `collecting`: (offset in the block, bytes).
    collected: Vec<(usize, Bytes)>,
    collecting: u64,
    /// The next block of the whole file to hand out.
    next_block: u64,
}

impl IncrementalFile {
    pub(super) fn new(geometry: Geometry, block_size: usize) -> Self {
        IncrementalFile {
            geometry,
            page_size: geometry.page_size,
            block_size,
            head: Vec::new(),
            header: None,
            received: 0,
            page: BytesMut::new(),
            collected: Vec::new(),
            collecting: 0,
            next_block: 0,
        }
    }

    /// Bytes of the whole file, once the header is known.
    pub(super) fn file_size(&self) -> Option<u64> {
        self.header.as_ref().map(|h| h.file_pages() as u64 * self.page_size as u64)
    }

    /// The next bytes of the incremental file; the blocks they complete go to `out`.
    pub(super) fn feed(&mut self, mut d: Bytes, out: &mut Vec<Patch>) -> Result<(), String> {
        if self.header.is_none() {
            self.head.extend_from_slice(&d);
            let Some(h) = IncrementalHeader::parse(&self.head, self.geometry)? else {
                return Ok(());
            };
            if self.head.len() < h.len {
                return Ok(());
            }
            d = Bytes::from(self.head.split_off(h.len));
            self.head = Vec::new();
            self.header = Some(h);
        }
        while !d.is_empty() {
            let take = (self.page_size - self.page.len()).min(d.len());
            self.page.extend_from_slice(&d.split_to(take));
            if self.page.len() == self.page_size {
                let page = self.page.split().freeze();
                self.page_done(page, out)?;
            }
        }
        Ok(())
    }

    fn page_done(&mut self, page: Bytes, out: &mut Vec<Patch>) -> Result<(), String> {
        let number = self
            .header
            .as_ref()
            .and_then(|h| h.pages.get(self.received))
            .copied()
            .ok_or("more pages than its header lists")?;
        self.received += 1;
        let per_block = (self.block_size / self.page_size) as u64;
        let block = number as u64 / per_block;
        self.emit_until(block, out);
        self.collecting = block;
        self.collected.push(((number as u64 % per_block) as usize * self.page_size, page));
        Ok(())
    }

    /// Hand out the whole file's blocks before `block`.
    fn emit_until(&mut self, block: u64, out: &mut Vec<Patch>) {
        while self.next_block < block {
            let pages = match self.collecting == self.next_block {
                true => std::mem::take(&mut self.collected),
                false => Vec::new(),
            };
            out.push(self.patch(self.next_block, pages));
            self.next_block += 1;
        }
    }

    fn patch(&self, block: u64, pages: Vec<(usize, Bytes)>) -> Patch {
        let (file_pages, truncation) = self.header.as_ref().map_or((0, 0), |h| (h.file_pages(), h.truncation_pages));
        let per_block = (self.block_size / self.page_size) as u64;
        let start = block * per_block;
        let end = (start + per_block).min(file_pages as u64);
        let keep = (end.min(truncation as u64)).saturating_sub(start);
        Patch { len: (end - start) as usize * self.page_size, keep: keep as usize * self.page_size, pages }
    }

    /// The file ended: the blocks left go to `out`; an error if it was cut short.
    pub(super) fn finish(&mut self, out: &mut Vec<Patch>) -> Result<(), String> {
        let Some(h) = &self.header else {
            return Err(format!("ended after {} bytes, inside its header", self.head.len()));
        };
        if self.received != h.pages.len() || !self.page.is_empty() {
            return Err(format!("ended after {} of the {} pages its header lists", self.received, h.pages.len()));
        }
        let blocks = (h.file_pages() as u64 * self.page_size as u64).div_ceil(self.block_size as u64);
        self.emit_until(blocks, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 8192;
    const BLOCK: usize = 4 * PAGE;
    const G: Geometry = Geometry { page_size: PAGE, segment_pages: 131_072 };

    fn incremental(pages: &[u32], truncation: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [0xd3ae1f0du32, pages.len() as u32, truncation].iter().chain(pages) {
            out.extend(w.to_le_bytes());
        }
        if !pages.is_empty() {
            out.resize(PAGE, 0);
        }
        for p in pages {
            out.extend(vec![*p as u8 + 1; PAGE]);
        }
        out
    }

    /// Fed in pieces of every size, the same blocks come out: pages in the block they
    /// belong to, the parent's bytes kept below the truncation length only.
    #[test]
    fn pages_land_in_their_blocks_whatever_the_pieces() {
        let bytes = incremental(&[1, 2, 9, 13], 11);
        for piece in [1, 7, 4096, PAGE, PAGE + 5, bytes.len()] {
            let mut f = IncrementalFile::new(G, BLOCK);
            let mut out = Vec::new();
            for chunk in bytes.chunks(piece) {
                f.feed(Bytes::copy_from_slice(chunk), &mut out).unwrap();
            }
            f.finish(&mut out).unwrap();
            assert_eq!(f.file_size(), Some(14 * PAGE as u64), "pages up to the last sent");
            let shape: Vec<(usize, usize, Vec<usize>)> =
                out.iter().map(|p| (p.len, p.keep, p.pages.iter().map(|(at, _)| *at).collect())).collect();
            assert_eq!(
                shape,
                vec![
                    (BLOCK, BLOCK, vec![PAGE, 2 * PAGE]),
                    (BLOCK, BLOCK, vec![]),
                    (BLOCK, 3 * PAGE, vec![PAGE]),
                    (2 * PAGE, 0, vec![PAGE]),
                ],
                "pieces of {piece}"
            );
            assert_eq!(out[0].pages[1].1[0], 3, "page 2's bytes");
        }
    }

    #[test]
    fn an_unchanged_file_is_its_parent_cut_to_the_truncation_length() {
        let mut f = IncrementalFile::new(G, BLOCK);
        let mut out = Vec::new();
        f.feed(Bytes::from(incremental(&[], 6)), &mut out).unwrap();
        f.finish(&mut out).unwrap();
        let shape: Vec<(usize, usize, usize)> = out.iter().map(|p| (p.len, p.keep, p.pages.len())).collect();
        assert_eq!(shape, vec![(BLOCK, BLOCK, 0), (2 * PAGE, 2 * PAGE, 0)]);
    }

    #[test]
    fn a_file_cut_short_is_an_error() {
        let bytes = incremental(&[0, 1], 2);
        let mut f = IncrementalFile::new(G, BLOCK);
        let mut out = Vec::new();
        f.feed(Bytes::copy_from_slice(&bytes[..bytes.len() - 1]), &mut out).unwrap();
        assert!(f.finish(&mut out).unwrap_err().contains("1 of the 2 pages"));
        let mut f = IncrementalFile::new(G, BLOCK);
        f.feed(Bytes::copy_from_slice(&bytes[..8]), &mut out).unwrap();
        assert!(f.finish(&mut out).unwrap_err().contains("inside its header"));
    }
}
