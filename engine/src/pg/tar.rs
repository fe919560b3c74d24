//! Streaming reader of the ustar archives BASE_BACKUP sends. Data arrives in
//! arbitrary CopyData pieces; the reader emits entries and zero-copy slices of
//! their contents. Header fields are decoded by the `tar` crate. The server does
//! not send the two terminating zero blocks, so the end of the stream at an entry
//! boundary is a valid end.

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub link: Option<String>,
}

#[derive(Debug)]
pub enum TarItem {
    Entry(TarEntry),
    Data(Bytes),
    EntryEnd,
}

/// Incremental decoder of a tar stream fed in pieces of any size.
#[derive(Debug, Default)]
pub struct TarReader {
    header: Vec<u8>,
    remaining: u64,
    padding: u64,
    in_entry: bool,
}

const BLOCK: usize = 512;

impl TarReader {
    /// A reader at the start of an archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next piece of the archive.
    pub fn feed<E>(&mut self, mut chunk: Bytes, emit: &mut impl FnMut(TarItem) -> Result<(), E>) -> Result<(), E>
    where
        E: From<String>,
    {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(chunk.len());
                let data = chunk.split_to(n);
                self.remaining -= n as u64;
                emit(TarItem::Data(data))?;
                if self.remaining == 0 {
                    self.in_entry = false;
                    emit(TarItem::EntryEnd)?;
                }
            } else if self.padding > 0 {
                let n = (self.padding as usize).min(chunk.len());
                let _ = chunk.split_to(n);
                self.padding -= n as u64;
            } else {
                let n = (BLOCK - self.header.len()).min(chunk.len());
                self.header.extend_from_slice(&chunk.split_to(n));
                if self.header.len() == BLOCK {
                    let block = std::mem::take(&mut self.header);
                    if block.iter().all(|b| *b == 0) {
                        continue; // end-of-archive marker
                    }
                    let entry = parse_header(&block).map_err(E::from)?;
                    let size = if entry.kind == EntryKind::File { entry.size } else { 0 };
                    self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
                    self.remaining = size;
                    self.in_entry = true;
                    emit(TarItem::Entry(entry))?;
                    if size == 0 {
                        self.in_entry = false;
                        emit(TarItem::EntryEnd)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Check that the stream did not stop inside an entry or header.
    pub fn finish(&self) -> Result<(), String> {
        if self.in_entry || !self.header.is_empty() {
            return Err(format!("archive ends inside an entry ({} bytes missing)", self.remaining));
        }
        Ok(())
    }
}

fn parse_header(block: &[u8]) -> Result<TarEntry, String> {
    let h = tar::Header::from_byte_slice(block);
    let stored = h.cksum().map_err(|e| format!("tar header checksum field: {e}"))?;
    let computed: u32 =
        block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { *b as u32 }).sum();
    if stored != computed {
        return Err(format!("tar header checksum mismatch (stored {stored}, computed {computed})"));
    }
    // PostgreSQL 17+ names two directories "./pg_wal/..."; store every path one way.
    let raw = h.path().map_err(|e| format!("tar entry path: {e}"))?;
    let path = raw.to_string_lossy();
    let path = path.trim_start_matches("./").trim_end_matches('/').to_string();
    let kind = match h.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
        tar::EntryType::Directory => EntryKind::Dir,
        tar::EntryType::Symlink => EntryKind::Symlink,
        other => return Err(format!("tar entry {path} has unsupported type {other:?}")),
    };
    let link = if kind == EntryKind::Symlink {
        Some(h.link_name().map_err(|e| e.to_string())?.unwrap_or_default().to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(TarEntry {
        path,
        kind,
        mode: h.mode().map_err(|e| format!("tar mode: {e}"))? & 0o7777,
        size: h.size().map_err(|e| format!("tar size: {e}"))?,
        mtime: h.mtime().map_err(|e| format!("tar mtime: {e}"))? as i64,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn archive(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path("base/").unwrap();
        h.set_mode(0o700);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path("pg_tblspc/16384").unwrap();
        h.set_link_name("/ts").unwrap();
        h.set_mode(0o777);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8], piece: usize) -> Vec<(TarEntry, Vec<u8>)> {
        let mut r = TarReader::new();
        let mut out: Vec<(TarEntry, Vec<u8>)> = Vec::new();
        for c in bytes.chunks(piece.max(1)) {
            r.feed(Bytes::copy_from_slice(c), &mut |item| -> Result<(), String> {
                match item {
                    TarItem::Entry(e) => out.push((e, Vec::new())),
                    TarItem::Data(d) => out.last_mut().unwrap().1.extend_from_slice(&d),
                    TarItem::EntryEnd => {}
                }
                Ok(())
            })
            .unwrap();
        }
        r.finish().unwrap();
        out
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_entries(a in proptest::collection::vec(any::<u8>(), 0..3000), b in proptest::collection::vec(any::<u8>(), 0..1500), piece in 1usize..2000) {
            let bytes = archive(&[("base/1/1", a.clone()), ("global/pg_control", b.clone())]);
            let got = read_all(&bytes, piece);
            prop_assert_eq!(got.len(), 4);
            prop_assert_eq!((&got[0].0.path, got[0].0.kind), (&"base".to_string(), EntryKind::Dir));
            prop_assert_eq!(&got[1].1, &a);
            prop_assert_eq!(got[1].0.mode, 0o600);
            prop_assert_eq!(&got[2].1, &b);
            prop_assert_eq!(got[3].0.link.as_deref(), Some("/ts"));
        }
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let bytes = archive(&[("f", vec![7u8; 1000])]);
        let mut r = TarReader::new();
        r.feed(Bytes::copy_from_slice(&bytes[..1200]), &mut |_| -> Result<(), String> { Ok(()) }).unwrap();
        assert!(r.finish().is_err());
    }

    #[test]
    fn corrupt_header_is_refused() {
        let mut bytes = archive(&[("f", vec![1u8; 10])]);
        bytes[512 + 5] ^= 0xff; // inside the second header's name
        let mut r = TarReader::new();
        assert!(r.feed(Bytes::from(bytes), &mut |_| -> Result<(), String> { Ok(()) }).is_err());
    }
}
