//! WAL file names and the long page header at the start of every segment.
//! Layout of XLogLongPageHeaderData (little-endian on every platform we support):
//!
//! ```text
//! 0  u16 xlp_magic      2  u16 xlp_info     4  u32 xlp_tli
//! 8  u64 xlp_pageaddr  16  u32 xlp_rem_len  20  (padding)
//! 24 u64 xlp_sysid     32  u32 xlp_seg_size 36  u32 xlp_xlog_blcksz
//! ```

use super::version;
use crate::pg::lsn::Lsn;

pub(crate) const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;
const WAL_BLOCK_SIZE: u32 = 8192;

/// A file PostgreSQL archives, by its name; fields are the name's hex parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFile {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment {
        /// `TTTTTTTT`: the timeline.
        timeline: u32,
        /// `XXXXXXXX`: the high 32 bits of the segment's start LSN.
        log: u32,
        /// `YYYYYYYY`: the segment within `log`.
        seg: u32,
    },
    /// A segment cut short at a timeline switch: `<segment>.partial`
    Partial {
        /// The timeline that was switched away from.
        timeline: u32,
        /// The high 32 bits of the segment's start LSN.
        log: u32,
        /// The segment within `log`.
        seg: u32,
    },
    /// The received start of a segment still being streamed by wal-receive:
    /// `<segment>.XXXXXXXX.stream`, its first `upto` bytes (pgcairn's own name;
    /// PostgreSQL never writes it).
    Streamed {
        /// The timeline streamed.
        timeline: u32,
        /// The high 32 bits of the segment's start LSN.
        log: u32,
        /// The segment within `log`.
        seg: u32,
        /// `XXXXXXXX`: bytes of the segment received and stored.
        upto: u32,
    },
    /// `TTTTTTTT.history`
    History {
        /// The timeline whose history (parents and switch points) the file lists.
        timeline: u32,
    },
    /// Backup history file: `<segment>.XXXXXXXX.backup`
    BackupHistory {
        /// The timeline of the segment the backup started in.
        timeline: u32,
        /// The high 32 bits of that segment's start LSN.
        log: u32,
        /// That segment within `log`.
        seg: u32,
        /// `XXXXXXXX`: the backup's start offset in that segment, in bytes.
        offset: u32,
    },
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
        .then(|| u32::from_str_radix(s, 16).ok())?
}

fn parse_segment(s: &str) -> Option<(u32, u32, u32)> {
    // ASCII first: slicing a 24-byte name with multi-byte characters at 8 and 16
    // panicked (found by the hostile-input property test).
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl WalFile {
    /// The file a name denotes; None for any other name (upper-case hex only).
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(t) = name.strip_suffix(".history") {
            return Some(WalFile::History { timeline: hex8(t)? });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = parse_segment(s)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(rest) = name.strip_suffix(".stream") {
            let (s, upto) = rest.split_once('.')?;
            let (timeline, log, seg) = parse_segment(s)?;
            return Some(WalFile::Streamed { timeline, log, seg, upto: hex8(upto)? });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (s, off) = rest.split_once('.')?;
            let (timeline, log, seg) = parse_segment(s)?;
            return Some(WalFile::BackupHistory { timeline, log, seg, offset: hex8(off)? });
        }
        let (timeline, log, seg) = parse_segment(name)?;
        Some(WalFile::Segment { timeline, log, seg })
    }

    /// The timeline the name carries.
    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::Streamed { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupHistory { timeline, .. } => timeline,
        }
    }

    /// Segment number for segment-like files, given the segment size.
    pub fn segno(&self, seg_size: u32) -> Option<u64> {
        match *self {
            WalFile::Segment { log, seg, .. }
            | WalFile::Partial { log, seg, .. }
            | WalFile::Streamed { log, seg, .. }
            | WalFile::BackupHistory { log, seg, .. } => Some(log as u64 * segments_per_xlogid(seg_size) + seg as u64),
            WalFile::History { .. } => None,
        }
    }
}

pub(crate) fn segments_per_xlogid(seg_size: u32) -> u64 {
    0x1_0000_0000u64 / seg_size as u64
}

/// File name of segment `segno` on `timeline`.
pub(crate) fn segment_name(timeline: u32, segno: u64, seg_size: u32) -> String {
    let per = segments_per_xlogid(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The object name of segment `segno`'s first `upto` bytes, streamed on `timeline`.
pub(crate) fn streamed_name(timeline: u32, segno: u64, upto: u32, seg_size: u32) -> String {
    format!("{}.{upto:08X}.stream", segment_name(timeline, segno, seg_size))
}

/// The segment holding byte `lsn`.
pub(crate) fn segno_of(lsn: u64, seg_size: u32) -> u64 {
    lsn / seg_size as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LongHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub pageaddr: u64,
    pub system_identifier: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

// Invariant: each slice taken has exactly the length of the integer read from it,
// and every offset read ends within the LONG_HEADER_LEN bytes checked first.
#[allow(clippy::expect_used)]
pub(crate) fn parse_long_header(data: &[u8]) -> Option<LongHeader> {
    if data.len() < LONG_HEADER_LEN {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().expect("2-byte slice"));
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4-byte slice"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8-byte slice"));
    Some(LongHeader {
        magic: u16_at(0),
        info: u16_at(2),
        timeline: u32_at(4),
        pageaddr: u64_at(8),
        system_identifier: u64_at(24),
        seg_size: u32_at(32),
        block_size: u32_at(36),
    })
}

/// Check a segment (or partial segment) against the cluster it should belong to.
/// The error says what does not match, for the operator.
pub fn validate_segment(
    file: &WalFile,
    data: &[u8],
    system_identifier: u64,
    pg_major: u32,
    seg_size: u32,
) -> Result<(), String> {
    let h =
        parse_long_header(data).ok_or_else(|| format!("it is {} bytes, too short for a WAL segment", data.len()))?;
    let want_magic = version::constants(pg_major)
        .map(|c| c.wal_page_magic)
        .ok_or_else(|| format!("PostgreSQL {pg_major} is not supported"))?;
    if h.magic != want_magic {
        return Err(format!(
            "its page magic is {:#06X}, PostgreSQL {pg_major} writes {want_magic:#06X}: it comes from another PostgreSQL major version or is not WAL",
            h.magic
        ));
    }
    if h.info & XLP_LONG_HEADER == 0 {
        return Err("its first page has no long header: it is not the start of a segment".into());
    }
    if h.system_identifier != system_identifier {
        return Err(format!(
            "it belongs to database system {}, this stanza to {system_identifier}: WAL from another cluster",
            h.system_identifier
        ));
    }
    if h.seg_size != seg_size || h.block_size != WAL_BLOCK_SIZE {
        return Err(format!("its segment size is {} (stanza: {seg_size}) and block size {}", h.seg_size, h.block_size));
    }
    // A .partial is the whole segment file renamed at a timeline switch (zeros after
    // the switch point): it has the segment's size too. A streamed object holds the
    // bytes its name says.
    let expected = match file {
        WalFile::Streamed { upto, .. } if *upto <= seg_size => *upto as usize,
        _ => seg_size as usize,
    };
    if data.len() != expected {
        return Err(format!("it is {} bytes, its name and the segment size say {expected}", data.len()));
    }
    let segno = file.segno(seg_size).ok_or_else(|| "not a segment file name".to_string())?;
    if h.pageaddr != segno * seg_size as u64 {
        return Err(format!("its first page is for address {:X}, not for this file name: it was renamed", h.pageaddr));
    }
    Ok(())
}

/// Largest timeline history file accepted (PostgreSQL writes a line per switch).
const MAX_HISTORY_LEN: usize = 1 << 20;
/// Largest backup history file accepted (a dozen short lines).
const MAX_BACKUP_HISTORY_LEN: usize = 64 << 10;

/// Check a `TTTTTTTT.history` file: lines `parentTLI <tab> switch LSN <tab> reason`
/// (comments and blank lines allowed), parents increasing and below `timeline`,
/// switch points not going back.
pub fn validate_history(timeline: u32, data: &[u8]) -> Result<(), String> {
    parse_history(timeline, data).map(|_| ())
}

/// The parents a history file lists, oldest first: (parent timeline, the LSN where
/// the next timeline branched off it). Refuses what [`validate_history`] refuses.
pub(crate) fn parse_history(timeline: u32, data: &[u8]) -> Result<Vec<(u32, Lsn)>, String> {
    if data.len() > MAX_HISTORY_LEN {
        return Err(format!("it is {} bytes, more than a timeline history holds", data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| "it is not text: not a timeline history file".to_string())?;
    let mut entries: Vec<(u32, Lsn)> = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent: u32 = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("line {n} does not start with a timeline number"))?;
        let lsn: Lsn = fields.next().ok_or_else(|| format!("line {n} has no switch point"))?.parse()?;
        let (last_parent, last_lsn) = entries.last().copied().unwrap_or((0, Lsn(0)));
        if parent >= timeline || parent <= last_parent || lsn < last_lsn {
            return Err(format!(
                "line {n} names timeline {parent} at {lsn}: parents must rise, stay below {timeline}, and switch points must not go back"
            ));
        }
        entries.push((parent, lsn));
    }
    if entries.is_empty() {
        return Err("it names no parent timeline".into());
    }
    Ok(entries)
}

/// Check a `<segment>.<offset>.backup` file: text whose START WAL LOCATION is the
/// place its name gives.
pub fn validate_backup_history(file: &WalFile, data: &[u8], seg_size: u32) -> Result<(), String> {
    let WalFile::BackupHistory { timeline, offset, .. } = *file else {
        return Err("not a backup history file name".into());
    };
    if data.len() > MAX_BACKUP_HISTORY_LEN {
        return Err(format!("it is {} bytes, more than a backup history file holds", data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| "it is not text: not a backup history file".to_string())?;
    let start = text
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| "it has no START WAL LOCATION line".to_string())?;
    let lsn: Lsn = start.parse()?;
    let segno = file.segno(seg_size).ok_or_else(|| "not a backup history file name".to_string())?;
    if lsn.0 / seg_size as u64 != segno || lsn.0 % seg_size as u64 != offset as u64 {
        return Err(format!("it starts at {lsn}, not at the place its name gives (timeline {timeline})"));
    }
    if !text.lines().any(|l| l.starts_with("STOP WAL LOCATION: ")) {
        return Err("it has no STOP WAL LOCATION line".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn streamed_names_round_trip() {
        let seg_size = 16 << 20;
        let name = streamed_name(2, 0x103, 0xA000, seg_size);
        assert_eq!(name, "000000020000000100000003.0000A000.stream");
        let file = WalFile::parse(&name).unwrap();
        assert_eq!(file, WalFile::Streamed { timeline: 2, log: 1, seg: 3, upto: 0xA000 });
        assert_eq!((file.timeline(), file.segno(seg_size)), (2, Some(0x103)));
        for bad in ["000000020000000100000003.0000a000.stream", "000000020000000100000003.stream", "x.0000A000.stream"]
        {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    const SEG: u32 = 16 << 20;

    fn segment(sysid: u64, segno: u64, magic: u16) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[0..2].copy_from_slice(&magic.to_le_bytes());
        d[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        d[4..8].copy_from_slice(&1u32.to_le_bytes());
        d[8..16].copy_from_slice(&(segno * SEG as u64).to_le_bytes());
        d[24..32].copy_from_slice(&sysid.to_le_bytes());
        d[32..36].copy_from_slice(&SEG.to_le_bytes());
        d[36..40].copy_from_slice(&8192u32.to_le_bytes());
        d.resize(SEG as usize, 0);
        d
    }

    #[test]
    fn names() {
        assert_eq!(WalFile::parse("000000010000000000000003"), Some(WalFile::Segment { timeline: 1, log: 0, seg: 3 }));
        assert_eq!(WalFile::parse("00000002.history"), Some(WalFile::History { timeline: 2 }));
        assert_eq!(
            WalFile::parse("000000010000000000000003.00000028.backup"),
            Some(WalFile::BackupHistory { timeline: 1, log: 0, seg: 3, offset: 0x28 })
        );
        assert_eq!(
            WalFile::parse("000000010000000A000000FF.partial"),
            Some(WalFile::Partial { timeline: 1, log: 10, seg: 255 })
        );
        assert_eq!(WalFile::parse("00000001000000000000000g"), None);
        assert_eq!(WalFile::parse("00000001000000000000000a"), None, "PostgreSQL writes upper case");
        assert_eq!(WalFile::parse("RECOVERYXLOG"), None);
        // Regression: 24 bytes with a multi-byte character across byte 8 panicked.
        assert_eq!(WalFile::parse("🕴'w=𞸹<𐔠𝪡𐤿"), None);
        assert_eq!(segment_name(1, 0x1_0000_0003, SEG), "000000010100000000000003");
        assert_eq!(segment_name(2, 0x1FF, SEG), "0000000200000001000000FF");
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32..1000, segno in 0u64..(1 << 40), shift in 20u32..31) {
            let seg_size = 1u32 << shift;
            let segno = segno % (0x1_0000_0000u64 * segments_per_xlogid(seg_size));
            let name = segment_name(tli, segno, seg_size);
            let f = WalFile::parse(&name).unwrap();
            prop_assert_eq!(f.timeline(), tli);
            prop_assert_eq!(f.segno(seg_size), Some(segno));
        }
    }

    #[test]
    fn validation() {
        let f = WalFile::parse("000000010000000000000005").unwrap();
        let good = segment(42, 5, 0xD116);
        assert_eq!(validate_segment(&f, &good, 42, 17, SEG), Ok(()));
        let e = validate_segment(&f, &good, 43, 17, SEG).unwrap_err();
        assert!(e.contains("another cluster"), "{e}");
        let e = validate_segment(&f, &good, 42, 15, SEG).unwrap_err();
        assert!(e.contains("major version"), "{e}");
        let e = validate_segment(&WalFile::parse("000000010000000000000006").unwrap(), &good, 42, 17, SEG).unwrap_err();
        assert!(e.contains("renamed"), "{e}");
        let e = validate_segment(&f, &good[..1000], 42, 17, SEG).unwrap_err();
        assert!(e.contains("1000 bytes"), "{e}");
        assert!(validate_segment(&f, b"short", 42, 17, SEG).is_err());
    }

    /// Regression (issue 10, defect 7): garbage `.history` files and 100-byte
    /// `.partial` files were archived without a look.
    #[test]
    fn history_backup_and_partial_files_are_validated() {
        assert_eq!(
            validate_history(3, b"1\t0/3000000\tno recovery target specified\n\n2\t0/5000000\tbefore 2026\n"),
            Ok(())
        );
        assert_eq!(validate_history(2, b"# comment\n1\t0/3000000\treason\n"), Ok(()));
        for bad in [&b"garbage"[..], b"", b"2\t0/3000000\tx\n", b"1\tzz\tx\n", b"1\t0/5\n1\t0/6\n", b"\xff\xfe"] {
            assert!(validate_history(2, bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let f = WalFile::parse("000000010000000000000003.00000028.backup").unwrap();
        let good = b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\nSTOP WAL LOCATION: 0/3000100 (file 000000010000000000000003)\n";
        assert_eq!(validate_backup_history(&f, good, SEG), Ok(()));
        let moved = b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nSTOP WAL LOCATION: 0/4000100\n";
        assert!(validate_backup_history(&f, moved, SEG).is_err());
        assert!(validate_backup_history(&f, b"hello", SEG).is_err());
        let partial = WalFile::parse("000000010000000000000005.partial").unwrap();
        let mut data = segment(42, 5, 0xD116);
        assert_eq!(validate_segment(&partial, &data, 42, 17, SEG), Ok(()));
        data.truncate(100);
        assert!(validate_segment(&partial, &data, 42, 17, SEG).is_err(), "a 100-byte .partial is refused");
    }
}
