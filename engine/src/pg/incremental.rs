//! PostgreSQL 17's incremental base backups: the `INCREMENTAL.<file>` entries of
//! `BASE_BACKUP ( INCREMENTAL )` and the lines of their backup_label.
//!
//! An incremental file (basebackup_incremental.c) is, in the server's byte order:
//! u32 magic `0xd3ae1f0d`, u32 block count n, u32 truncation block length, n u32
//! block numbers relative to the segment (ascending), zero padding to a multiple of
//! BLCKSZ when n > 0, then the n pages in that order. The file it stands for is
//! max(truncation length, last block + 1) pages long; a page comes from the
//! incremental file, else — below the truncation length — from the prior backup's
//! file, else it is zeros (pg_combinebackup's rules).

/// The first word of every incremental file.
const MAGIC: u32 = 0xd3ae1f0d;
/// The prefix the server gives a relation file it sends incrementally.
const PREFIX: &str = "INCREMENTAL.";
/// backup_label lines an incremental backup has and a data directory must not: with
/// them PostgreSQL refuses to start ("this is an incremental backup, not a data
/// directory"). pg_combinebackup drops them when it writes the combined directory.
const LABEL_LINES: [&str; 2] = ["INCREMENTAL FROM LSN:", "INCREMENTAL FROM TLI:"];

/// The server's page and relation segment sizes (`block_size`, `segment_size`):
/// how an incremental file's pages map onto the file it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub page_size: usize,
    /// Pages per relation segment file (RELSEG_SIZE): the most one file can hold.
    pub segment_pages: u32,
}

/// The header of an incremental file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncrementalHeader {
    /// Pages below this come from the prior backup when not listed.
    pub truncation_pages: u32,
    /// The pages the file carries, ascending, relative to the segment's start.
    pub pages: Vec<u32>,
    /// Bytes of header before the first page.
    pub len: usize,
}

impl IncrementalHeader {
    /// Parse the header at the start of `buf`: `Ok(None)` while more bytes are needed.
    pub(crate) fn parse(buf: &[u8], g: Geometry) -> Result<Option<Self>, String> {
        let page_size = g.page_size;
        if buf.len() < 12 {
            return Ok(None);
        }
        let word = |at: usize, big: bool| {
            let b = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
            if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        // The server writes its own byte order: the magic says which.
        let big = match (word(0, false), word(0, true)) {
            (MAGIC, _) => false,
            (_, MAGIC) => true,
            (found, _) => return Err(format!("magic number {found:#010x}, expected {MAGIC:#010x}")),
        };
        let (n, truncation_pages) = (word(4, big), word(8, big));
        if n > g.segment_pages {
            return Err(format!("{n} pages listed: more than a segment of {} holds", g.segment_pages));
        }
        // No file outgrows its segment; servers before the clamp in
        // basebackup_incremental.c could send more for a non-last segment.
        let truncation_pages = truncation_pages.min(g.segment_pages);
        let mut len = 12 + 4 * n as usize;
        if n > 0 && !len.is_multiple_of(page_size) {
            len += page_size - len % page_size;
        }
        if buf.len() < 12 + 4 * n as usize {
            return Ok(None);
        }
        let pages: Vec<u32> = (0..n as usize).map(|i| word(12 + 4 * i, big)).collect();
        if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|p| *p >= g.segment_pages) {
            return Err("block numbers not ascending or beyond a segment".into());
        }
        Ok(Some(IncrementalHeader { truncation_pages, pages, len }))
    }

    /// Pages of the file it stands for.
    pub(crate) fn file_pages(&self) -> u32 {
        self.pages.last().map_or(self.truncation_pages, |last| self.truncation_pages.max(last + 1))
    }
}

/// The relation file an `INCREMENTAL.` entry stands for (`base/5/INCREMENTAL.16384.1`
/// → `base/5/16384.1`); None for any other path. Only relation directories hold
/// them: global/, base/<db>/, and <PG_version>/<db>/ of a tablespace (inside
/// pg_tblspc/<oid>/ for an in-place one).
pub(crate) fn stands_for(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/')?;
    let rel = name.strip_prefix(PREFIX)?;
    let in_place = dir.strip_prefix("pg_tblspc/").and_then(|d| d.split_once('/')).map(|(_, rest)| rest);
    let tablespace = |d: &str| d.starts_with("PG_");
    let relation_dir =
        dir == "global" || dir.starts_with("base/") || tablespace(dir) || in_place.is_some_and(tablespace);
    let numeric = rel.split(['.', '_']).next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (relation_dir && numeric).then(|| format!("{dir}/{rel}"))
}

/// The backup_label of a combined (whole) backup: the incremental's without the
/// lines that name its prior backup.
pub(crate) fn combined_backup_label(label: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(label);
    text.split_inclusive('\n')
        .filter(|l| !LABEL_LINES.iter().any(|p| l.starts_with(p)))
        .collect::<String>()
        .into_bytes()
}

/// Where the prior backup an incremental backup's label names started
/// (`INCREMENTAL FROM LSN:`), as written; None for any other backup_label.
pub(crate) fn incremental_from(label: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(label);
    text.lines().find_map(|l| l.strip_prefix(LABEL_LINES[0])).map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry { page_size: 8192, segment_pages: 131_072 };

    fn file(n_pages: &[u32], truncation: u32, big: bool) -> Vec<u8> {
        let w = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = Vec::new();
        out.extend(w(MAGIC));
        out.extend(w(n_pages.len() as u32));
        out.extend(w(truncation));
        for p in n_pages {
            out.extend(w(*p));
        }
        if !n_pages.is_empty() {
            out.resize(8192, 0);
        }
        out
    }

    #[test]
    fn headers_parse_in_either_byte_order_and_wait_for_their_bytes() {
        for big in [false, true] {
            let f = file(&[0, 5, 9], 7, big);
            assert_eq!(IncrementalHeader::parse(&f[..11], G), Ok(None));
            assert_eq!(IncrementalHeader::parse(&f[..20], G), Ok(None), "block numbers incomplete");
            let h = IncrementalHeader::parse(&f, G).unwrap().unwrap();
            assert_eq!((h.truncation_pages, h.pages.clone(), h.len), (7, vec![0, 5, 9], 8192));
            assert_eq!(h.file_pages(), 10, "the last page sent lengthens the file");
        }
        let empty = IncrementalHeader::parse(&file(&[], 12, false), G).unwrap().unwrap();
        assert_eq!((empty.len, empty.file_pages()), (12, 12), "no padding without pages");
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut f = file(&[1], 1, false);
        f[0] ^= 1;
        assert!(IncrementalHeader::parse(&f, G).unwrap_err().contains("magic"));
        assert!(IncrementalHeader::parse(&file(&[3, 2], 0, false), G).is_err(), "descending");
        assert!(IncrementalHeader::parse(&file(&[G.segment_pages], 0, false), G).is_err());
        let long = IncrementalHeader::parse(&file(&[], G.segment_pages + 9, false), G).unwrap().unwrap();
        assert_eq!(long.file_pages(), G.segment_pages, "clamped to a segment, as newer servers do");
        let small = Geometry { page_size: 4096, segment_pages: 4 };
        assert!(IncrementalHeader::parse(&file(&[4], 0, false), small).is_err(), "the server's own segment size");
    }

    #[test]
    fn incremental_names_map_to_relation_files() {
        assert_eq!(stands_for("base/5/INCREMENTAL.16384").as_deref(), Some("base/5/16384"));
        assert_eq!(stands_for("base/5/INCREMENTAL.16384.2").as_deref(), Some("base/5/16384.2"));
        assert_eq!(stands_for("base/5/INCREMENTAL.16384_vm").as_deref(), Some("base/5/16384_vm"));
        assert_eq!(stands_for("global/INCREMENTAL.1262").as_deref(), Some("global/1262"));
        assert_eq!(stands_for("PG_17_202406281/5/INCREMENTAL.16390").as_deref(), Some("PG_17_202406281/5/16390"));
        assert_eq!(stands_for("base/5/16384"), None);
        assert_eq!(
            stands_for("pg_tblspc/16390/PG_17_202406281/5/INCREMENTAL.16391").as_deref(),
            Some("pg_tblspc/16390/PG_17_202406281/5/16391"),
            "in place"
        );
        assert_eq!(stands_for("pg_logical/INCREMENTAL.x"), None, "not a relation directory");
        assert_eq!(stands_for("base/5/INCREMENTAL.notes"), None);
    }

    #[test]
    fn the_combined_label_drops_the_prior_backup_lines() {
        let label = b"START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nCHECKPOINT LOCATION: 0/6000080\nINCREMENTAL FROM LSN: 0/2000028\nINCREMENTAL FROM TLI: 1\nLABEL: x\n";
        assert_eq!(incremental_from(label).as_deref(), Some("0/2000028"));
        let combined = combined_backup_label(label);
        assert_eq!(
            String::from_utf8(combined.clone()).unwrap(),
            "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nCHECKPOINT LOCATION: 0/6000080\nLABEL: x\n"
        );
        assert_eq!(incremental_from(&combined), None);
    }
}
