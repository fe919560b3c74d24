//! WAL file names and the long page header at the start of every segment.
//! Layout of XLogLongPageHeaderData (little-endian on every platform we support):
//!
//! ```text
//! 0  u16 xlp_magic      2  u16 xlp_info     4  u32 xlp_tli
//! 8  u64 xlp_pageaddr  16  u32 xlp_rem_len  20  (padding)
//! 24 u64 xlp_sysid     32  u32 xlp_seg_size 36  u32 xlp_xlog_blcksz
//! ```

use super::version;

pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;
const WAL_BLOCK_SIZE: u32 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFile {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment { timeline: u32, log: u32, seg: u32 },
    /// A segment cut short at a timeline switch: `<segment>.partial`
    Partial { timeline: u32, log: u32, seg: u32 },
    /// `TTTTTTTT.history`
    History { timeline: u32 },
    /// Backup history file: `<segment>.XXXXXXXX.backup`
    BackupHistory { timeline: u32, log: u32, seg: u32, offset: u32 },
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
        .then(|| u32::from_str_radix(s, 16).ok())?
}

fn parse_segment(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24 {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl WalFile {
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(t) = name.strip_suffix(".history") {
            return Some(WalFile::History { timeline: hex8(t)? });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = parse_segment(s)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (s, off) = rest.split_once('.')?;
            let (timeline, log, seg) = parse_segment(s)?;
            return Some(WalFile::BackupHistory { timeline, log, seg, offset: hex8(off)? });
        }
        let (timeline, log, seg) = parse_segment(name)?;
        Some(WalFile::Segment { timeline, log, seg })
    }

    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::History { timeline }
            | WalFile::BackupHistory { timeline, .. } => timeline,
        }
    }

    /// Segment number for segment-like files, given the segment size.
    pub fn segno(&self, seg_size: u32) -> Option<u64> {
        match *self {
            WalFile::Segment { log, seg, .. }
            | WalFile::Partial { log, seg, .. }
            | WalFile::BackupHistory { log, seg, .. } => Some(log as u64 * segments_per_xlogid(seg_size) + seg as u64),
            WalFile::History { .. } => None,
        }
    }
}

pub fn segments_per_xlogid(seg_size: u32) -> u64 {
    0x1_0000_0000u64 / seg_size as u64
}

/// File name of segment `segno` on `timeline`.
pub fn segment_name(timeline: u32, segno: u64, seg_size: u32) -> String {
    let per = segments_per_xlogid(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The segment holding byte `lsn`.
pub fn segno_of(lsn: u64, seg_size: u32) -> u64 {
    lsn / seg_size as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub pageaddr: u64,
    pub system_identifier: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

pub fn parse_long_header(data: &[u8]) -> Option<LongHeader> {
    if data.len() < LONG_HEADER_LEN {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
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
    if matches!(file, WalFile::Segment { .. }) && data.len() as u64 != seg_size as u64 {
        return Err(format!("it is {} bytes, a segment is {seg_size}", data.len()));
    }
    let segno = file.segno(seg_size).expect("segment-like");
    if h.pageaddr != segno * seg_size as u64 {
        return Err(format!("its first page is for address {:X}, not for this file name: it was renamed", h.pageaddr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
