//! WAL records, decoded far enough to see what recovery targets stop at
//! (transaction commits and aborts, restore points) and where valid WAL ends.
//!
//! The record format is the same in PostgreSQL 15 to 18. A record starts on an
//! 8-byte boundary with a 24-byte header, may cross page and segment boundaries
//! (even inside its header), and each page starts with a page header whose
//! `xlp_rem_len` says how much of a record begun earlier it continues:
//!
//! ```text
//! XLogRecord:  0 u32 xl_tot_len  4 u32 xl_xid  8 u64 xl_prev
//!             16 u8 xl_info     17 u8 xl_rmid 18 (2 pad) 20 u32 xl_crc
//! page header: 0 u16 magic  2 u16 info  4 u32 tli  8 u64 pageaddr
//!             16 u32 rem_len (24 bytes; 40 with the long header's sysid,
//!              seg_size, blcksz on a segment's first page)
//! ```
//!
//! Semantics follow PostgreSQL's xlogreader.c (page and record checks,
//! DecodeXLogRecord), xactdesc.c (ParseCommitRecord / ParseAbortRecord) and
//! xlogrecovery.c (which xid and time a recovery target compares).

use chrono::{DateTime, Utc};

use super::lsn::Lsn;
use super::version;

/// XLOG_BLCKSZ: every supported build uses 8 KiB WAL pages.
const PAGE_SIZE: usize = 8192;
/// SizeOfXLogShortPHD (MAXALIGNed).
const SHORT_PAGE_HEADER: usize = 24;
/// SizeOfXLogLongPHD (MAXALIGNed).
const LONG_PAGE_HEADER: usize = 40;
/// SizeOfXLogRecord.
const RECORD_HEADER: usize = 24;
/// offsetof(XLogRecord, xl_crc): the CRC covers the header up to here.
const CRC_OFFSET: usize = 20;
/// Largest xl_tot_len accepted: PostgreSQL 16+ caps records at 1020 MiB
/// (XLogRecordMaxSize), 15's reader at MaxAllocSize; anything above is garbage.
const MAX_RECORD_LEN: u32 = 1 << 30;

/// XLP_FIRST_IS_CONTRECORD: the page starts with the rest of an earlier record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// XLP_LONG_HEADER: the page has the long header (a segment's first page).
const XLP_LONG_HEADER: u16 = 0x0002;
/// XLP_FIRST_IS_OVERWRITE_CONTRECORD: the record continued here was abandoned.
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// XLP_ALL_FLAGS: any other bit in xlp_info means a damaged page.
const XLP_ALL_FLAGS: u16 = 0x000F;

/// RM_XLOG_ID: the resource manager of switch and restore point records.
const RM_XLOG_ID: u8 = 0;
/// RM_XACT_ID: the resource manager of commit and abort records.
const RM_XACT_ID: u8 = 1;
/// RM_MAX_BUILTIN_ID in 15 to 18 (RM_LOGICALMSG_ID).
const RM_MAX_BUILTIN_ID: u8 = 21;
/// RM_MIN_CUSTOM_ID: 128 to 255 are extensions' resource managers.
const RM_MIN_CUSTOM_ID: u8 = 128;
/// XLR_RMGR_INFO_MASK: the bits of xl_info that belong to the resource manager.
const XLR_RMGR_INFO_MASK: u8 = 0xF0;
/// XLOG_SWITCH: the rest of the segment is unused.
const XLOG_SWITCH: u8 = 0x40;
/// XLOG_RESTORE_POINT: pg_create_restore_point().
const XLOG_RESTORE_POINT: u8 = 0x70;
/// sizeof(xl_restore_point): TimestampTz rp_time, char rp_name[MAXFNAMELEN].
const RESTORE_POINT_LEN: usize = 8 + RESTORE_POINT_NAME_LEN;
/// MAXFNAMELEN: the NUL-padded name field of a restore point.
const RESTORE_POINT_NAME_LEN: usize = 64;

/// XLOG_XACT_OPMASK: the operation bits of an xact record's xl_info.
const XLOG_XACT_OPMASK: u8 = 0x70;
/// XLOG_XACT_HAS_INFO: an xinfo word follows xact_time.
const XLOG_XACT_HAS_INFO: u8 = 0x80;
/// XLOG_XACT_COMMIT.
const XLOG_XACT_COMMIT: u8 = 0x00;
/// XLOG_XACT_ABORT.
const XLOG_XACT_ABORT: u8 = 0x20;
/// XLOG_XACT_COMMIT_PREPARED.
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// XLOG_XACT_ABORT_PREPARED.
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// XACT_XINFO_HAS_DBINFO: xl_xact_dbinfo (2 Oids).
const XINFO_HAS_DBINFO: u32 = 1 << 0;
/// XACT_XINFO_HAS_SUBXACTS: count + TransactionIds.
const XINFO_HAS_SUBXACTS: u32 = 1 << 1;
/// XACT_XINFO_HAS_RELFILELOCATORS (RELFILENODES in 15): count + 12-byte locators.
const XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
/// XACT_XINFO_HAS_INVALS: count + 16-byte SharedInvalidationMessages (commits only).
const XINFO_HAS_INVALS: u32 = 1 << 3;
/// XACT_XINFO_HAS_TWOPHASE: xl_xact_twophase, the prepared transaction's xid.
const XINFO_HAS_TWOPHASE: u32 = 1 << 4;
/// XACT_XINFO_HAS_DROPPED_STATS: count + xl_xact_stats_item.
const XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// sizeof(RelFileLocator) / sizeof(RelFileNode): three Oids.
const REL_FILE_LOCATOR_LEN: u64 = 12;
/// sizeof(SharedInvalidationMessage).
const INVAL_MSG_LEN: u64 = 16;

/// XLR_MAX_BLOCK_ID: block reference ids run from 0 to this.
const XLR_MAX_BLOCK_ID: u8 = 32;
/// XLR_BLOCK_ID_DATA_SHORT: main data with a u8 length.
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// XLR_BLOCK_ID_DATA_LONG: main data with a u32 length.
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
/// XLR_BLOCK_ID_ORIGIN: a u16 replication origin follows.
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
/// XLR_BLOCK_ID_TOPLEVEL_XID: a u32 top-level xid follows.
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// BKPBLOCK_HAS_IMAGE: an XLogRecordBlockImageHeader follows.
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
/// BKPBLOCK_HAS_DATA: the block carries data_length payload bytes.
const BKPBLOCK_HAS_DATA: u8 = 0x20;
/// BKPBLOCK_SAME_REL: the RelFileLocator is omitted (same as the previous block's).
const BKPBLOCK_SAME_REL: u8 = 0x80;
/// BKPIMAGE_HAS_HOLE.
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD (15+; 14 and older used other bits).
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One record's facts that recovery targets care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordEvent {
    /// A transaction commit or abort, as recovery_target_xid/time see it.
    XactEnd {
        /// Where the record starts.
        lsn: u64,
        /// Where the next record starts (the record's end, MAXALIGNed).
        end_lsn: u64,
        /// The top-level xid: xl_xid, or the prepared transaction's xid for
        /// COMMIT/ABORT PREPARED.
        xid: u32,
        /// Commit (true) or abort (false).
        commit: bool,
        /// xact_time.
        time: DateTime<Utc>,
    },
    /// A restore point, as recovery_target_name sees it.
    RestorePoint {
        /// Where the record starts.
        lsn: u64,
        /// Where the next record starts; what pg_create_restore_point() returns.
        end_lsn: u64,
        /// rp_name.
        name: String,
        /// rp_time.
        time: DateTime<Utc>,
    },
}

/// Where the scanner is in the WAL stream between records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Looking for the first record that begins on a page (skipping a continuation).
    Resync,
    /// Reading records one after the other.
    Reading,
    /// An XLOG_SWITCH ended the segment: the next one starts with a record.
    AfterSwitch,
    /// Valid WAL ended inside the segment; the next segment starts afresh.
    Stopped,
}

/// What to do after part of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// More records start at this offset of the page.
    At(usize),
    /// The page is used up.
    NextPage,
    /// Nothing more to read in this segment.
    EndSegment,
}

/// Decodes the records of consecutive WAL segments fed in order, keeping the
/// record that spans a segment boundary.
pub(crate) struct RecordScanner {
    /// wal_segment_size.
    seg_size: u32,
    /// The segment that continues the stream; `None` after an error or at the start.
    next_segno: Option<u64>,
    /// Where we are between records.
    mode: Mode,
    /// A record begun on an earlier page.
    pending: Option<Pending>,
    /// Start of the last complete record, which the next one's xl_prev must name.
    prev_start: Option<u64>,
    /// End of the last complete record.
    end_lsn: u64,
    /// XLOG_PAGE_MAGIC of the stream: it tells the major version.
    magic: Option<u16>,
    /// Walk the block references of every record, not only the ones we report
    /// (tests use it to check the walk against real WAL).
    check_all: bool,
}

impl RecordScanner {
    /// A scanner for segments of `seg_size` bytes (a multiple of 8 KiB).
    pub(crate) fn new(seg_size: u32) -> Self {
        RecordScanner {
            seg_size,
            next_segno: None,
            mode: Mode::Resync,
            pending: None,
            prev_start: None,
            end_lsn: 0,
            magic: None,
            check_all: false,
        }
    }

    /// Where the last complete record ended (the next record's start): the end of
    /// replayable WAL so far. After an XLOG_SWITCH, the next segment's start.
    pub(crate) fn end_lsn(&self) -> u64 {
        self.end_lsn
    }

    /// Decodes segment `segno` and returns the events of the records completed in
    /// it. A segment that does not follow the previous one starts the scan afresh
    /// at its first record; so does the segment after an error or a clean stop
    /// (a zero record length, or a page from another place: the recycled tail of
    /// a segment or a .partial file).
    pub(crate) fn feed(&mut self, segno: u64, data: &[u8]) -> Result<Vec<RecordEvent>, String> {
        let seg_size = self.seg_size as usize;
        if seg_size == 0 || !seg_size.is_multiple_of(PAGE_SIZE) {
            return Err(format!("WAL segment size {seg_size} is not a multiple of {PAGE_SIZE}"));
        }
        if data.len() != seg_size {
            return Err(format!("WAL segment {segno:X} is {} bytes, a segment is {seg_size}", data.len()));
        }
        // The whole segment's addresses must fit in 64 bits.
        let seg = u64::from(self.seg_size);
        let seg_start = segno
            .checked_add(1)
            .and_then(|n| n.checked_mul(seg))
            .map(|end| end - seg)
            .ok_or_else(|| format!("WAL segment number {segno:X} overflows"))?;
        if self.next_segno != Some(segno) {
            self.reset();
        }
        self.mode = match self.mode {
            Mode::AfterSwitch => Mode::Reading,
            Mode::Stopped => {
                // What follows a gap in valid WAL cannot be checked against what preceded it.
                self.prev_start = None;
                Mode::Resync
            }
            m => m,
        };
        // An error below leaves the scanner to start over at whatever comes next.
        self.next_segno = None;
        let mut events = Vec::new();
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let page_lsn = seg_start + (i * PAGE_SIZE) as u64;
            if self.scan_page(page_lsn, i == 0, page, &mut events)? == Flow::EndSegment {
                break;
            }
        }
        self.next_segno = segno.checked_add(1);
        Ok(events)
    }

    /// Forgets the stream: the next record read is checked against nothing before it.
    fn reset(&mut self) {
        self.mode = Mode::Resync;
        self.pending = None;
        self.prev_start = None;
        self.magic = None;
    }

    /// Valid WAL ended: drop any unfinished record, skip the rest of the segment.
    fn stop(&mut self) -> Flow {
        self.pending = None;
        self.mode = Mode::Stopped;
        Flow::EndSegment
    }

    /// Reads one page: the continuation of a pending record, then the records starting on it.
    fn scan_page(
        &mut self,
        page_lsn: u64,
        first: bool,
        page: &[u8],
        events: &mut Vec<RecordEvent>,
    ) -> Result<Flow, String> {
        let hdr = PageHeader::parse(page)?;
        if hdr.pageaddr != page_lsn {
            // A recycled or zeroed page: xlogreader's "unexpected pageaddr", the end of WAL.
            return Ok(self.stop());
        }
        self.check_page_header(&hdr, first, page_lsn)?;
        match self.page_start(&hdr, page, page_lsn, events)? {
            Flow::At(off) => self.scan_records(page_lsn, page, off, events),
            other => Ok(other),
        }
    }

    /// xlogreader's XLogReaderValidatePageHeader, for a page at the expected address.
    fn check_page_header(&mut self, hdr: &PageHeader, first: bool, page_lsn: u64) -> Result<(), String> {
        let at = Lsn(page_lsn);
        if hdr.info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("invalid info bits {:04X} in the WAL page at {at}", hdr.info));
        }
        if first && hdr.long.is_none() {
            return Err(format!("the WAL page at {at} starts a segment but has no long header"));
        }
        if let Some((seg_size, blcksz)) = hdr.long {
            if seg_size != self.seg_size || blcksz as usize != PAGE_SIZE {
                return Err(format!(
                    "the WAL page at {at} is from a cluster with {seg_size}-byte segments and {blcksz}-byte pages, \
                     expected {} and {PAGE_SIZE}",
                    self.seg_size
                ));
            }
        }
        match self.magic {
            Some(m) if m != hdr.magic => {
                Err(format!("WAL page magic {:04X} at {at} differs from {m:04X} of the pages before it", hdr.magic))
            }
            Some(_) => Ok(()),
            None => {
                major_of_magic(hdr.magic).ok_or_else(|| {
                    format!("WAL page magic {:04X} at {at} is not from a supported PostgreSQL version", hdr.magic)
                })?;
                self.magic = Some(hdr.magic);
                Ok(())
            }
        }
    }

    /// Handles what precedes the first record starting on the page: the rest of a
    /// pending record, or (when resynchronising) a continuation to skip.
    fn page_start(
        &mut self,
        hdr: &PageHeader,
        page: &[u8],
        page_lsn: u64,
        events: &mut Vec<RecordEvent>,
    ) -> Result<Flow, String> {
        let cont = hdr.info & XLP_FIRST_IS_CONTRECORD != 0;
        let space = PAGE_SIZE - hdr.len;
        if self.pending.is_some() && hdr.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
            // The record's tail was never written (a crash, then promotion): PostgreSQL
            // abandoned it and a new record starts here.
            self.pending = None;
            return Ok(Flow::At(hdr.len));
        }
        if let Some(mut p) = self.pending.take() {
            let left = p.total - p.got;
            if !cont || hdr.rem_len != left {
                return Err(format!(
                    "the record at {} misses its continuation at {} (contrecord flag {cont}, {} bytes, expected {left})",
                    Lsn(p.start),
                    Lsn(page_lsn),
                    hdr.rem_len
                ));
            }
            let n = space.min(left as usize);
            p.push(slice(page, hdr.len, n)?)?;
            if !p.is_complete() {
                self.pending = Some(p);
                return Ok(Flow::NextPage);
            }
            return self.complete(p, page_lsn, hdr.len + n, events);
        }
        if self.mode == Mode::Resync {
            if !cont {
                self.mode = Mode::Reading;
                return Ok(Flow::At(hdr.len));
            }
            if hdr.rem_len as usize > space {
                return Ok(Flow::NextPage);
            }
            self.mode = Mode::Reading;
            return Ok(Flow::At(maxalign(hdr.len + hdr.rem_len as usize)));
        }
        if cont {
            return Err(format!("the WAL page at {} continues a record that never began", Lsn(page_lsn)));
        }
        Ok(Flow::At(hdr.len))
    }

    /// Reads the records that start on the page from `off` on.
    fn scan_records(
        &mut self,
        page_lsn: u64,
        page: &[u8],
        mut off: usize,
        events: &mut Vec<RecordEvent>,
    ) -> Result<Flow, String> {
        while off < PAGE_SIZE {
            // Records are MAXALIGNed, so xl_tot_len is always on the record's first page.
            let total = le_u32(slice(page, off, 4)?);
            if total == 0 {
                // Never-written space after the last record: the end of WAL.
                return Ok(self.stop());
            }
            let mut p = Pending::new(page_lsn + off as u64, total, self.prev_start, self.check_all)?;
            let n = (PAGE_SIZE - off).min(total as usize);
            p.push(slice(page, off, n)?)?;
            if !p.is_complete() {
                self.pending = Some(p);
                return Ok(Flow::NextPage);
            }
            match self.complete(p, page_lsn, off + n, events)? {
                Flow::At(next) => off = next,
                other => return Ok(other),
            }
        }
        Ok(Flow::NextPage)
    }

    /// Checks a whole record (ending at `end_off` of the page at `page_lsn`), records
    /// its event, and says where the next record starts.
    fn complete(
        &mut self,
        p: Pending,
        page_lsn: u64,
        end_off: usize,
        events: &mut Vec<RecordEvent>,
    ) -> Result<Flow, String> {
        p.check_crc()?;
        let end = page_lsn + maxalign(end_off) as u64;
        self.prev_start = Some(p.start);
        self.end_lsn = end;
        if let Some(event) = self.event(&p, end).map_err(|e| format!("WAL record at {}: {e}", Lsn(p.start)))? {
            events.push(event);
        }
        if p.rmid() == RM_XLOG_ID && p.info() & XLR_RMGR_INFO_MASK == XLOG_SWITCH {
            // The rest of the segment is zeros: the next record opens the next segment.
            let seg = u64::from(self.seg_size);
            self.end_lsn = end.div_ceil(seg) * seg;
            self.mode = Mode::AfterSwitch;
            return Ok(Flow::EndSegment);
        }
        Ok(Flow::At(maxalign(end_off)))
    }

    /// The event a complete record reports, if any.
    fn event(&self, p: &Pending, end_lsn: u64) -> Result<Option<RecordEvent>, String> {
        let Some(body) = &p.body else { return Ok(None) };
        let main = main_data(body)?;
        let lsn = p.start;
        match (p.rmid(), p.info() & XLR_RMGR_INFO_MASK) {
            (RM_XACT_ID, _) => {
                let stats_len = stats_item_len(self.magic);
                let Some(end) = parse_xact_end(p.info(), p.xid(), main, stats_len)? else { return Ok(None) };
                Ok(Some(RecordEvent::XactEnd {
                    lsn,
                    end_lsn,
                    xid: end.xid,
                    commit: end.commit,
                    time: pg_time(end.time)?,
                }))
            }
            (RM_XLOG_ID, XLOG_RESTORE_POINT) => {
                let (name, time) = parse_restore_point(main)?;
                Ok(Some(RecordEvent::RestorePoint { lsn, end_lsn, name, time: pg_time(time)? }))
            }
            _ => Ok(None),
        }
    }
}

/// A record being collected, possibly over several pages and segments. Only the
/// records we decode keep their bytes; the others just run through the CRC, so
/// memory grows with real data of interesting records only.
struct Pending {
    /// LSN of the record's first byte.
    start: u64,
    /// xl_tot_len, checked against MAX_RECORD_LEN.
    total: u32,
    /// Bytes collected so far.
    got: u32,
    /// The record header (complete once `got` >= RECORD_HEADER).
    header: [u8; RECORD_HEADER],
    /// Running CRC-32C of the bytes after the header.
    crc: u32,
    /// The bytes after the header, for records whose main data we read.
    body: Option<Vec<u8>>,
    /// Start of the previous record, which xl_prev must name (None: unknown).
    expect_prev: Option<u64>,
    /// Keep the body of every record (see `RecordScanner::check_all`).
    keep_all: bool,
}

impl Pending {
    /// A record of `total` bytes starting at `start`.
    fn new(start: u64, total: u32, expect_prev: Option<u64>, keep_all: bool) -> Result<Self, String> {
        if (total as usize) < RECORD_HEADER || total > MAX_RECORD_LEN {
            return Err(format!("invalid WAL record length {total} at {}", Lsn(start)));
        }
        Ok(Pending { start, total, got: 0, header: [0; RECORD_HEADER], crc: 0, body: None, expect_prev, keep_all })
    }

    /// Appends the next bytes of the record (never more than it lacks).
    fn push(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        let got = self.got as usize;
        if got < RECORD_HEADER {
            let n = (RECORD_HEADER - got).min(bytes.len());
            let (head, rest) = bytes.split_at(n);
            self.header.get_mut(got..got + n).ok_or_else(|| "record header overrun".to_string())?.copy_from_slice(head);
            bytes = rest;
            self.got += n as u32;
            if self.got as usize == RECORD_HEADER {
                self.check_header()?;
            }
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        if let Some(body) = &mut self.body {
            body.extend_from_slice(bytes);
        }
        self.got += bytes.len() as u32;
        Ok(())
    }

    /// Whether all xl_tot_len bytes are in.
    fn is_complete(&self) -> bool {
        self.got >= self.total
    }

    /// xlogreader's ValidXLogRecordHeader, once the header is complete; also
    /// decides whether the body is worth keeping.
    fn check_header(&mut self) -> Result<(), String> {
        let at = Lsn(self.start);
        let rmid = self.rmid();
        if rmid > RM_MAX_BUILTIN_ID && rmid < RM_MIN_CUSTOM_ID {
            return Err(format!("invalid resource manager id {rmid} in the WAL record at {at}"));
        }
        let prev = self.prev();
        let prev_ok = match self.expect_prev {
            Some(expected) => prev == expected,
            // Reading from the middle: the previous record is unknown but must lie before.
            None => prev < self.start,
        };
        if !prev_ok {
            return Err(format!("WAL record at {at} has incorrect prev-link {}", Lsn(prev)));
        }
        let wanted =
            rmid == RM_XACT_ID || (rmid == RM_XLOG_ID && self.info() & XLR_RMGR_INFO_MASK == XLOG_RESTORE_POINT);
        if wanted || self.keep_all {
            self.body = Some(Vec::new());
        }
        Ok(())
    }

    /// xlogreader's ValidXLogRecord: CRC-32C of the body, then the header up to xl_crc.
    fn check_crc(&self) -> Result<(), String> {
        let crc = crc32c::crc32c_append(self.crc, &self.header[..CRC_OFFSET]);
        let stored = le_u32(&self.header[CRC_OFFSET..]);
        if crc != stored {
            return Err(format!(
                "CRC mismatch in the WAL record at {}: computed {crc:08X}, stored {stored:08X}",
                Lsn(self.start)
            ));
        }
        Ok(())
    }

    /// xl_xid.
    fn xid(&self) -> u32 {
        le_u32(&self.header[4..8])
    }

    /// xl_prev.
    fn prev(&self) -> u64 {
        let h = &self.header;
        u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]])
    }

    /// xl_info.
    fn info(&self) -> u8 {
        self.header[16]
    }

    /// xl_rmid.
    fn rmid(&self) -> u8 {
        self.header[17]
    }
}

/// The fields of XLogPageHeaderData (and the long header's checks) we use.
struct PageHeader {
    /// xlp_magic.
    magic: u16,
    /// xlp_info.
    info: u16,
    /// xlp_pageaddr.
    pageaddr: u64,
    /// xlp_rem_len.
    rem_len: u32,
    /// Header length: 24, or 40 with XLP_LONG_HEADER.
    len: usize,
    /// The long header's xlp_seg_size and xlp_xlog_blcksz.
    long: Option<(u32, u32)>,
}

impl PageHeader {
    /// Reads the header at the start of `page`.
    fn parse(page: &[u8]) -> Result<Self, String> {
        let mut c = Cursor::new(page);
        let magic = c.u16()?;
        let info = c.u16()?;
        c.skip(4)?; // xlp_tli
        let pageaddr = c.u64()?;
        let rem_len = c.u32()?;
        if info & XLP_LONG_HEADER == 0 {
            return Ok(PageHeader { magic, info, pageaddr, rem_len, len: SHORT_PAGE_HEADER, long: None });
        }
        c.skip(4 + 8)?; // padding, xlp_sysid
        let long = Some((c.u32()?, c.u32()?));
        Ok(PageHeader { magic, info, pageaddr, rem_len, len: LONG_PAGE_HEADER, long })
    }
}

/// The main data of a record, given its bytes after the header: DecodeXLogRecord's
/// walk over the block reference headers, whose payloads come before the main data.
fn main_data(body: &[u8]) -> Result<&[u8], String> {
    let mut c = Cursor::new(body);
    let mut payload: u64 = 0;
    let mut main_len: u64 = 0;
    let mut last_block: Option<u8> = None;
    let mut have_rel = false;
    while c.remaining() as u64 > payload {
        match c.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(c.u8()?);
                break; // by convention the main data header comes last
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(c.u32()?);
                break;
            }
            XLR_BLOCK_ID_ORIGIN => c.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID => c.skip(4)?,
            id if id <= XLR_MAX_BLOCK_ID => {
                if last_block.is_some_and(|last| id <= last) {
                    return Err(format!("out-of-order block id {id}"));
                }
                last_block = Some(id);
                payload += block_header(&mut c, &mut have_rel)?;
            }
            id => return Err(format!("invalid block id {id}")),
        }
    }
    if c.remaining() as u64 != payload + main_len {
        return Err(format!("record length does not match its fragments ({} bytes left)", c.remaining()));
    }
    let from = body.len() - main_len as usize;
    body.get(from..).ok_or_else(|| "main data out of range".to_string())
}

/// Reads one XLogRecordBlockHeader (after its id) and returns how many payload
/// bytes (image plus data) it adds after the headers.
fn block_header(c: &mut Cursor<'_>, have_rel: &mut bool) -> Result<u64, String> {
    let fork_flags = c.u8()?;
    let data_len = c.u16()?;
    if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
        return Err(format!("block data length {data_len} disagrees with its BKPBLOCK_HAS_DATA flag"));
    }
    let mut payload = u64::from(data_len);
    if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
        let image_len = c.u16()?;
        c.skip(2)?; // hole_offset
        let bimg_info = c.u8()?;
        // Only a compressed image with a hole stores the hole's length.
        if bimg_info & BKPIMAGE_COMPRESSED != 0 && bimg_info & BKPIMAGE_HAS_HOLE != 0 {
            c.skip(2)?;
        }
        payload += u64::from(image_len);
    }
    if fork_flags & BKPBLOCK_SAME_REL == 0 {
        c.skip(REL_FILE_LOCATOR_LEN)?;
        *have_rel = true;
    } else if !*have_rel {
        return Err("BKPBLOCK_SAME_REL set but no previous relation".to_string());
    }
    c.skip(4)?; // BlockNumber
    Ok(payload)
}

/// What a commit or abort record says, before time conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct XactEnd {
    /// Top-level xid.
    xid: u32,
    /// Commit or abort.
    commit: bool,
    /// xact_time in PostgreSQL microseconds.
    time: i64,
}

/// Reads a commit/abort record's main data (other xact records give `None`). For
/// prepared transactions the xid is in the xl_xact_twophase part, after the
/// variable parts ParseCommitRecord / ParseAbortRecord walk in the same order.
fn parse_xact_end(info: u8, record_xid: u32, main: &[u8], stats_item_len: u64) -> Result<Option<XactEnd>, String> {
    let (commit, prepared) = match info & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT => (true, false),
        XLOG_XACT_ABORT => (false, false),
        XLOG_XACT_COMMIT_PREPARED => (true, true),
        XLOG_XACT_ABORT_PREPARED => (false, true),
        _ => return Ok(None),
    };
    let mut c = Cursor::new(main);
    let time = c.i64()?;
    if !prepared {
        return Ok(Some(XactEnd { xid: record_xid, commit, time }));
    }
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 { c.u32()? } else { 0 };
    if xinfo & XINFO_HAS_DBINFO != 0 {
        c.skip(8)?;
    }
    skip_counted(&mut c, xinfo & XINFO_HAS_SUBXACTS != 0, 4)?;
    skip_counted(&mut c, xinfo & XINFO_HAS_RELFILELOCATORS != 0, REL_FILE_LOCATOR_LEN)?;
    skip_counted(&mut c, xinfo & XINFO_HAS_DROPPED_STATS != 0, stats_item_len)?;
    // Abort records never carry invalidation messages.
    skip_counted(&mut c, commit && xinfo & XINFO_HAS_INVALS != 0, INVAL_MSG_LEN)?;
    if xinfo & XINFO_HAS_TWOPHASE == 0 {
        return Err("a prepared transaction's end record without its xid".to_string());
    }
    Ok(Some(XactEnd { xid: c.u32()?, commit, time }))
}

/// Skips an `int count` followed by `count` items of `item_len` bytes, if present.
fn skip_counted(c: &mut Cursor<'_>, present: bool, item_len: u64) -> Result<(), String> {
    if present {
        // A negative count reads as huge and fails the bounds check.
        let count = c.u32()?;
        c.skip(u64::from(count) * item_len)?;
    }
    Ok(())
}

/// sizeof(xl_xact_stats_item): 12 bytes until 17; 18 widened the object id to 64 bits.
fn stats_item_len(magic: Option<u16>) -> u64 {
    match magic.and_then(major_of_magic) {
        Some(major) if major >= 18 => 16,
        _ => 12,
    }
}

/// The PostgreSQL major version that writes pages with this XLOG_PAGE_MAGIC.
fn major_of_magic(magic: u16) -> Option<u32> {
    (version::MIN_MAJOR..=version::MAX_MAJOR)
        .find(|&m| version::constants(m).is_some_and(|c| c.wal_page_magic == magic))
}

/// Reads xl_restore_point: the time and the NUL-padded name.
fn parse_restore_point(main: &[u8]) -> Result<(String, i64), String> {
    if main.len() < RESTORE_POINT_LEN {
        return Err(format!("restore point record has {} bytes of data, expected {RESTORE_POINT_LEN}", main.len()));
    }
    let mut c = Cursor::new(main);
    let time = c.i64()?;
    let field = c.take(RESTORE_POINT_NAME_LEN)?;
    let name = field.split(|&b| b == 0).next().unwrap_or_default();
    Ok((String::from_utf8_lossy(name).into_owned(), time))
}

/// A TimestampTz (microseconds since 2000-01-01 UTC) as a UTC time.
fn pg_time(micros: i64) -> Result<DateTime<Utc>, String> {
    micros
        .checked_add(PG_EPOCH_UNIX_MICROS)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| format!("timestamp {micros} is out of range"))
}

/// `n` rounded up to MAXALIGN (8).
fn maxalign(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// `data[from..from + len]`, or an error instead of a panic.
fn slice(data: &[u8], from: usize, len: usize) -> Result<&[u8], String> {
    from.checked_add(len)
        .and_then(|end| data.get(from..end))
        .ok_or_else(|| format!("{len} bytes at offset {from} are beyond a {}-byte buffer", data.len()))
}

/// The little-endian u32 at the start of `b` (0 if shorter: callers pass 4 bytes).
fn le_u32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |a| u32::from_le_bytes(*a))
}

/// Bounds-checked little-endian reads over untrusted bytes.
struct Cursor<'a> {
    /// The bytes read.
    data: &'a [u8],
    /// Offset of the next read.
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    /// Bytes not yet read.
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = slice(self.data, self.pos, n)
            .map_err(|_| format!("needs {n} bytes at offset {}, has {}", self.pos, self.remaining()))?;
        self.pos += n;
        Ok(bytes)
    }

    /// Skips `n` bytes (a u64: counts times item sizes come from untrusted data).
    fn skip(&mut self, n: u64) -> Result<(), String> {
        let n = usize::try_from(n).map_err(|_| format!("cannot skip {n} bytes"))?;
        self.take(n).map(|_| ())
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N)?.try_into().map_err(|_| format!("expected {N} bytes"))
    }

    /// Reads a u8.
    fn u8(&mut self) -> Result<u8, String> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u16.
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u32.
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian u64.
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian i64.
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// PostgreSQL 17's page magic, for synthetic WAL.
    const MAGIC_17: u16 = 0xD116;
    /// Two pages a segment: page and segment boundaries come quickly.
    const SEG: u32 = 16384;
    /// A commit time: 2026-01-01 03:04:05.678901 UTC in PostgreSQL microseconds.
    const T: i64 = 820_551_845_678_901;

    /// Writes WAL the way PostgreSQL lays it out: page headers, MAXALIGNed
    /// records, continuations with xlp_rem_len.
    struct Wal {
        seg_size: u32,
        /// LSN of `buf[0]` (a segment start).
        base: u64,
        buf: Vec<u8>,
        pos: usize,
        prev: u64,
        magic: u16,
    }

    impl Wal {
        fn new(first_segno: u64, nsegs: usize, seg_size: u32) -> Wal {
            let base = first_segno * u64::from(seg_size);
            Wal { seg_size, base, buf: vec![0; nsegs * seg_size as usize], pos: 0, prev: 0, magic: MAGIC_17 }
        }

        fn lsn(&self) -> u64 {
            self.base + self.pos as u64
        }

        fn segment(&self, segno: u64) -> &[u8] {
            let from = ((segno * u64::from(self.seg_size)) - self.base) as usize;
            &self.buf[from..from + self.seg_size as usize]
        }

        fn page_header(&mut self, rem_len: u32) {
            let lsn = self.lsn();
            let long = lsn.is_multiple_of(u64::from(self.seg_size));
            let info = u16::from(rem_len > 0) * XLP_FIRST_IS_CONTRECORD + u16::from(long) * XLP_LONG_HEADER;
            let h = &mut self.buf[self.pos..];
            h[0..2].copy_from_slice(&self.magic.to_le_bytes());
            h[2..4].copy_from_slice(&info.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&lsn.to_le_bytes());
            h[16..20].copy_from_slice(&rem_len.to_le_bytes());
            if long {
                h[24..32].copy_from_slice(&42u64.to_le_bytes());
                h[32..36].copy_from_slice(&self.seg_size.to_le_bytes());
                h[36..40].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            }
            self.pos += if long { LONG_PAGE_HEADER } else { SHORT_PAGE_HEADER };
        }

        /// Appends a record; returns its start and end LSN.
        fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> (u64, u64) {
            if self.pos.is_multiple_of(PAGE_SIZE) {
                self.page_header(0);
            }
            let start = self.lsn();
            let bytes = record_bytes(rmid, info, xid, self.prev, body);
            let mut done = 0;
            while done < bytes.len() {
                if self.pos.is_multiple_of(PAGE_SIZE) {
                    self.page_header((bytes.len() - done) as u32);
                }
                let n = (bytes.len() - done).min(PAGE_SIZE - self.pos % PAGE_SIZE);
                self.buf[self.pos..self.pos + n].copy_from_slice(&bytes[done..done + n]);
                self.pos += n;
                done += n;
            }
            self.pos = maxalign(self.pos);
            self.prev = start;
            (start, self.lsn())
        }

        /// A heap record that ends exactly `gap` bytes before the end of the current page.
        fn fill_until_gap(&mut self, gap: usize) {
            if self.pos.is_multiple_of(PAGE_SIZE) {
                self.page_header(0);
            }
            let len = PAGE_SIZE - self.pos % PAGE_SIZE - gap - RECORD_HEADER;
            self.record(10, 0, 0, &main_only(&vec![7; len - 5]));
            assert_eq!((PAGE_SIZE - self.pos % PAGE_SIZE) % PAGE_SIZE, gap);
        }

        fn commit(&mut self, xid: u32, time: i64) -> (u64, u64) {
            self.record(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &main_only(&time.to_le_bytes()))
        }
    }

    fn record_bytes(rmid: u8, info: u8, xid: u32, prev: u64, body: &[u8]) -> Vec<u8> {
        let mut rec = Vec::with_capacity(RECORD_HEADER + body.len());
        rec.extend_from_slice(&((RECORD_HEADER + body.len()) as u32).to_le_bytes());
        rec.extend_from_slice(&xid.to_le_bytes());
        rec.extend_from_slice(&prev.to_le_bytes());
        rec.extend_from_slice(&[info, rmid, 0, 0]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(body), &rec);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(body);
        rec
    }

    /// A record body with only main data (short or long header as PostgreSQL picks).
    fn main_only(main: &[u8]) -> Vec<u8> {
        let mut body = main_header(main.len());
        body.extend_from_slice(main);
        body
    }

    fn main_header(len: usize) -> Vec<u8> {
        match u8::try_from(len) {
            Ok(short) => vec![XLR_BLOCK_ID_DATA_SHORT, short],
            Err(_) => [&[XLR_BLOCK_ID_DATA_LONG][..], &(len as u32).to_le_bytes()].concat(),
        }
    }

    fn restore_point_main(name: &str, time: i64) -> Vec<u8> {
        let mut main = time.to_le_bytes().to_vec();
        let mut field = [0u8; RESTORE_POINT_NAME_LEN];
        field[..name.len()].copy_from_slice(name.as_bytes());
        main.extend_from_slice(&field);
        main
    }

    /// A commit with `n` subtransactions: main data of about 4n bytes.
    fn big_commit_main(n: u32) -> Vec<u8> {
        let mut main = T.to_le_bytes().to_vec();
        main.extend_from_slice(&XINFO_HAS_SUBXACTS.to_le_bytes());
        main.extend_from_slice(&n.to_le_bytes());
        for i in 0..n {
            main.extend_from_slice(&(1000 + i).to_le_bytes());
        }
        main
    }

    fn time(micros: i64) -> DateTime<Utc> {
        pg_time(micros).unwrap()
    }

    fn xact(lsn_end: (u64, u64), xid: u32, commit: bool, t: i64) -> RecordEvent {
        RecordEvent::XactEnd { lsn: lsn_end.0, end_lsn: lsn_end.1, xid, commit, time: time(t) }
    }

    #[test]
    fn decodes_commits_aborts_and_restore_points() {
        let mut wal = Wal::new(1, 1, SEG);
        let c = wal.commit(700, T);
        let a = wal.record(RM_XACT_ID, XLOG_XACT_ABORT, 701, &main_only(&(T + 1).to_le_bytes()));
        let rp = wal.record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &main_only(&restore_point_main("rp-one", T + 2)));
        let heap = wal.record(10, 0, 702, &main_only(&[1, 2, 3]));
        let mut s = RecordScanner::new(SEG);
        let events = s.feed(1, wal.segment(1)).unwrap();
        let want_rp = RecordEvent::RestorePoint { lsn: rp.0, end_lsn: rp.1, name: "rp-one".into(), time: time(T + 2) };
        assert_eq!(events, vec![xact(c, 700, true, T), xact(a, 701, false, T + 1), want_rp]);
        assert_eq!(c.0, SEG as u64 + LONG_PAGE_HEADER as u64);
        // The zero tail after the last record is a clean stop.
        assert_eq!(s.end_lsn(), heap.1);
        assert_eq!(time(T).to_rfc3339(), "2026-01-01T03:04:05.678901+00:00");
    }

    #[test]
    fn record_crossing_pages_and_segments() {
        let mut wal = Wal::new(1, 3, SEG);
        let first = wal.commit(10, T);
        // ~20 KB: from segment 1's first page over its second into segment 2.
        let big = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 11, &main_only(&big_commit_main(5000)));
        let after = wal.commit(12, T + 5);
        assert!(big.0 < 2 * SEG as u64 && big.1 > 2 * SEG as u64);
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![xact(first, 10, true, T)]);
        assert_eq!(s.end_lsn(), first.1);
        assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![xact(big, 11, true, T), xact(after, 12, true, T + 5)]);
        assert_eq!(s.end_lsn(), after.1);
    }

    #[test]
    fn record_header_split_across_pages_and_segments() {
        for gap in [8, 16] {
            let mut wal = Wal::new(1, 3, SEG);
            wal.fill_until_gap(gap);
            let on_page_boundary = wal.commit(20, T); // from page 0 to page 1 of segment 1
            wal.fill_until_gap(gap);
            let on_segment_boundary = wal.commit(21, T); // from segment 1 into segment 2
            let mut s = RecordScanner::new(SEG);
            assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![xact(on_page_boundary, 20, true, T)], "gap {gap}");
            assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![xact(on_segment_boundary, 21, true, T)], "gap {gap}");
            assert_eq!(on_segment_boundary.0, 2 * SEG as u64 - gap as u64);
        }
    }

    #[test]
    fn crc_mismatch_is_an_error() {
        let mut wal = Wal::new(1, 2, SEG);
        wal.commit(30, T);
        let (start, _) =
            wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 31, &main_only(&big_commit_main(3000)));
        // A flipped bit in the part on the second page.
        let at = (start - wal.base) as usize + 9000;
        wal.buf[at] ^= 0x40;
        let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("CRC mismatch") && err.contains(&Lsn(start).to_string()), "{err}");
    }

    #[test]
    fn zero_tail_stops_cleanly_then_resumes_at_the_next_segment() {
        let mut wal = Wal::new(1, 2, SEG);
        let kept = wal.commit(40, T);
        let (lost, _) =
            wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 41, &main_only(&big_commit_main(5000)));
        let next = wal.commit(42, T);
        // The tail of segment 1 was never written (as in a .partial after a crash).
        let from = (lost - wal.base) as usize;
        wal.buf[from..SEG as usize].fill(0);
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![xact(kept, 40, true, T)]);
        assert_eq!(s.end_lsn(), kept.1);
        // Segment 2 opens with the rest of the lost record: skipped, not an error.
        assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![xact(next, 42, true, T)]);
        assert_eq!(s.end_lsn(), next.1);
    }

    #[test]
    fn switch_ends_the_segment() {
        let mut wal = Wal::new(1, 2, SEG);
        let c = wal.commit(50, T);
        let (switch, _) = wal.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
        // The rest of the segment is unused; make it junk to prove it is not read.
        let from = wal.pos;
        wal.buf[from..SEG as usize].fill(0xAA);
        wal.pos = SEG as usize;
        let next = wal.commit(51, T);
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![xact(c, 50, true, T)]);
        assert_eq!(s.end_lsn(), 2 * SEG as u64);
        // The next record's prev-link names the switch record: the stream goes on.
        assert_eq!(s.prev_start, Some(switch));
        assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![xact(next, 51, true, T)]);
    }

    #[test]
    fn first_segment_starts_at_its_first_whole_record() {
        let mut wal = Wal::new(1, 3, SEG);
        wal.fill_until_gap(64);
        // Spans segment 2's first page entirely: its second page still continues it.
        let big = big_commit_main(5000);
        wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 60, &main_only(&big));
        let next = wal.commit(61, T);
        assert!(next.0 > 2 * SEG as u64 + PAGE_SIZE as u64);
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![xact(next, 61, true, T)]);
    }

    #[test]
    fn gap_in_segment_numbers_drops_the_partial_record() {
        let mut wal = Wal::new(1, 3, SEG);
        wal.fill_until_gap(64);
        let a = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 70, &main_only(&big_commit_main(5000)));
        wal.fill_until_gap(64);
        let b = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 71, &main_only(&big_commit_main(2500)));
        let c = wal.commit(72, T);
        assert!(a.0 < 2 * SEG as u64 && a.1 > 2 * SEG as u64 && b.0 < 3 * SEG as u64 && b.1 > 3 * SEG as u64);
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![]);
        assert!(s.pending.is_some());
        // Segment 2 is missing: 3 starts afresh, skipping the end of record b.
        assert_eq!(s.feed(3, wal.segment(3)).unwrap(), vec![xact(c, 72, true, T)]);
    }

    #[test]
    fn page_from_elsewhere_mid_record_is_a_clean_stop() {
        let mut wal = Wal::new(1, 2, SEG);
        let kept = wal.commit(80, T);
        let big = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 81, &main_only(&big_commit_main(5000)));
        assert!(big.1 > 2 * SEG as u64);
        // Segment 2 is a recycled file: its pages carry an older address.
        let seg2 = SEG as usize;
        wal.buf[seg2 + 8..seg2 + 16].copy_from_slice(&(SEG as u64 * 7).to_le_bytes());
        let mut s = RecordScanner::new(SEG);
        assert_eq!(s.feed(1, wal.segment(1)).unwrap(), vec![xact(kept, 80, true, T)]);
        assert_eq!(s.feed(2, wal.segment(2)).unwrap(), vec![]);
        assert_eq!(s.end_lsn(), kept.1);
        assert!(s.pending.is_none());
    }

    #[test]
    fn overwritten_continuation_abandons_the_record() {
        let mut wal = Wal::new(1, 1, SEG);
        let kept = wal.commit(85, T);
        wal.record(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, 86, &main_only(&big_commit_main(2500)));
        // Page 1 was rewritten after a crash: the record's tail is gone and a new
        // record, whose prev-link names the last complete one, starts the page.
        wal.buf[PAGE_SIZE..].fill(0);
        wal.pos = PAGE_SIZE;
        wal.prev = kept.0;
        wal.page_header(0);
        wal.buf[PAGE_SIZE + 2..PAGE_SIZE + 4].copy_from_slice(&XLP_FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
        let next = wal.commit(87, T);
        let events = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap();
        assert_eq!(events, vec![xact(kept, 85, true, T), xact(next, 87, true, T)]);
    }

    #[test]
    fn bad_lengths_and_prev_links_are_errors() {
        for (len, want) in [(12u32, "invalid WAL record length 12"), (u32::MAX, "invalid WAL record length")] {
            let mut wal = Wal::new(1, 1, SEG);
            wal.commit(90, T);
            let at = wal.pos;
            wal.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
            let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        let mut wal = Wal::new(1, 1, SEG);
        wal.commit(91, T);
        wal.prev = 12345; // the next record names the wrong predecessor (with a valid CRC)
        wal.commit(92, T);
        let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("incorrect prev-link 0/3039"), "{err}");
    }

    #[test]
    fn page_header_checks() {
        let mut wal = Wal::new(1, 1, SEG);
        wal.magic = 0xD10D; // PostgreSQL 14
        wal.commit(1, T);
        let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("not from a supported PostgreSQL version"), "{err}");
        let mut wal = Wal::new(1, 1, SEG);
        wal.commit(1, T);
        let err = RecordScanner::new(2 * SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("a segment is 32768"), "{err}");
        wal.buf[32..36].copy_from_slice(&(2 * SEG).to_le_bytes()); // xlp_seg_size
        let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("32768-byte segments"), "{err}");
        // A page that continues a record nobody began.
        let mut wal = Wal::new(1, 1, SEG);
        wal.fill_until_gap(0);
        wal.page_header(100);
        let err = RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap_err();
        assert!(err.contains("continues a record that never began"), "{err}");
    }

    /// Block references of every kind, then main data: the layout DecodeXLogRecord walks.
    fn body_with_blocks(main: &[u8]) -> Vec<u8> {
        let rel = [1u8; 12];
        let mut h = Vec::new();
        // Block 0: image with a hole (uncompressed: no hole length), 10 data bytes.
        h.extend_from_slice(&[0, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA, 10, 0]);
        h.extend_from_slice(&[0x00, 0x1F, 0x40, 0x00, BKPIMAGE_HAS_HOLE | 0x02]); // 7936 bytes, hole at 64
        h.extend_from_slice(&rel);
        h.extend_from_slice(&5u32.to_le_bytes());
        // Block 1, same relation: compressed image with a hole (hole length stored).
        h.extend_from_slice(&[1, BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL | 1, 0, 0]);
        h.extend_from_slice(&[100, 0, 0x40, 0x00, BKPIMAGE_HAS_HOLE | 0x04, 0x00, 0x10]);
        h.extend_from_slice(&6u32.to_le_bytes());
        // Block 3 (ids may skip), data only, own relation.
        h.extend_from_slice(&[3, BKPBLOCK_HAS_DATA, 3, 0]);
        h.extend_from_slice(&rel);
        h.extend_from_slice(&7u32.to_le_bytes());
        h.extend_from_slice(&[XLR_BLOCK_ID_ORIGIN, 9, 0, XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4]);
        h.extend_from_slice(&main_header(main.len()));
        h.extend(std::iter::repeat_n(0xEE, 7936 + 10 + 100 + 3));
        h.extend_from_slice(main);
        h
    }

    #[test]
    fn main_data_follows_the_block_data() {
        let main: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        assert_eq!(main_data(&body_with_blocks(&main)).unwrap(), &main[..]);
        assert_eq!(main_data(&body_with_blocks(&main[..5])).unwrap(), &main[..5]);
        assert_eq!(main_data(&[]).unwrap(), &[] as &[u8]);
        // Through the scanner, across pages.
        let mut wal = Wal::new(1, 1, SEG);
        let c = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, 95, &body_with_blocks(&T.to_le_bytes()));
        assert_eq!(RecordScanner::new(SEG).feed(1, wal.segment(1)).unwrap(), vec![xact(c, 95, true, T)]);
    }

    #[test]
    fn malformed_block_headers_are_errors() {
        let rel = [1u8; 12];
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![100, 0, 0, 0], "invalid block id 100"),
            ([&[0, BKPBLOCK_SAME_REL, 0, 0][..], &[0; 4]].concat(), "no previous relation"),
            ([&[0, BKPBLOCK_HAS_DATA, 0, 0][..], &rel, &[0; 4]].concat(), "disagrees"),
            ([&[2, 0, 0, 0][..], &rel, &[0; 4], &[1, 0, 0, 0], &rel, &[0; 4]].concat(), "out-of-order block id 1"),
            (vec![XLR_BLOCK_ID_DATA_SHORT, 10, 1, 2], "record length does not match"),
            ([&[0, BKPBLOCK_HAS_DATA, 200, 0][..], &rel].concat(), "needs 4 bytes"),
        ];
        for (body, want) in cases {
            let err = main_data(&body).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    /// A COMMIT/ABORT PREPARED main data with every optional part before the xid.
    fn prepared_main(commit: bool, stats_len: usize, xid: u32) -> (u8, Vec<u8>) {
        let mut xinfo = XINFO_HAS_DBINFO
            | XINFO_HAS_SUBXACTS
            | XINFO_HAS_RELFILELOCATORS
            | XINFO_HAS_DROPPED_STATS
            | XINFO_HAS_TWOPHASE
            | (1 << 7) // GID
            | (1 << 5); // origin
        if commit {
            xinfo |= XINFO_HAS_INVALS;
        }
        let mut m = T.to_le_bytes().to_vec();
        m.extend_from_slice(&xinfo.to_le_bytes());
        m.extend_from_slice(&[5; 8]); // dbinfo
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[6; 8]); // two subxacts
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&[7; 12]); // one relation
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend(std::iter::repeat_n(8, 2 * stats_len));
        if commit {
            m.extend_from_slice(&3u32.to_le_bytes());
            m.extend_from_slice(&[9; 48]);
        }
        m.extend_from_slice(&xid.to_le_bytes());
        m.extend_from_slice(b"p1\0");
        m.extend_from_slice(&[1; 16]); // origin, unaligned
        let op = if commit { XLOG_XACT_COMMIT_PREPARED } else { XLOG_XACT_ABORT_PREPARED };
        (op | XLOG_XACT_HAS_INFO, m)
    }

    #[test]
    fn prepared_transactions_report_their_own_xid() {
        for (stats_len, magic) in [(12, Some(0xD110)), (12, Some(MAGIC_17)), (16, Some(0xD118))] {
            assert_eq!(stats_item_len(magic), stats_len as u64);
            for commit in [true, false] {
                let (info, main) = prepared_main(commit, stats_len, 1234);
                let end = parse_xact_end(info, 0, &main, stats_len as u64).unwrap();
                assert_eq!(end, Some(XactEnd { xid: 1234, commit, time: T }), "stats {stats_len} commit {commit}");
            }
        }
        let no_xid = [&T.to_le_bytes()[..], &0u32.to_le_bytes()].concat();
        let err = parse_xact_end(XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, 0, &no_xid, 12).unwrap_err();
        assert!(err.contains("without its xid"), "{err}");
        // PREPARE, ASSIGNMENT, INVALIDATIONS end nothing.
        for op in [0x10, 0x50, 0x60] {
            assert_eq!(parse_xact_end(op, 5, &T.to_le_bytes(), 12).unwrap(), None);
        }
        assert!(parse_xact_end(XLOG_XACT_COMMIT, 5, &[0; 4], 12).is_err());
    }

    #[test]
    fn restore_point_and_time_edge_cases() {
        let full = restore_point_main(&"n".repeat(63), 0);
        assert_eq!(parse_restore_point(&full).unwrap(), ("n".repeat(63), 0));
        assert!(parse_restore_point(&full[..40]).unwrap_err().contains("40 bytes"));
        assert_eq!(time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
        assert!(pg_time(i64::MAX).is_err());
        assert_eq!(major_of_magic(0xD116), Some(17));
        assert_eq!(major_of_magic(0xD10D), None);
    }

    // ---- Real WAL, written by PostgreSQL ----

    /// Server installs to test against: Debian's 15 (required), and 16-18 from the
    /// cache scripts/fetch-postgres.sh fills (17 required).
    fn pg_installs() -> Vec<(u32, PathBuf)> {
        let deb15 = PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(
            deb15.join("postgres").is_file() && deb15.join("psql").is_file(),
            "PostgreSQL 15 not found in {}: apt-get install -y postgresql-15",
            deb15.display()
        );
        let mut found = vec![(15, deb15)];
        let cache =
            std::env::var_os("PGCAIRN_TEST_PG_CACHE").map_or_else(|| "/var/tmp/pgcairn-cache".into(), PathBuf::from);
        for major in 16..=18 {
            let bin = cache.join(format!("pg{major}/native/bin"));
            if bin.join("postgres").is_file() {
                found.push((major, bin));
            } else {
                assert!(major != 17, "PostgreSQL 17 not found in {}: run scripts/fetch-postgres.sh 17", bin.display());
            }
        }
        found
    }

    fn is_root() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
    }

    /// `program`, run as `postgres` when we are root (the server refuses root).
    fn as_postgres(program: &Path) -> Command {
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn run(cmd: &mut Command, stdin: &str) -> String {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A cluster directory that stops its server and goes away with the test.
    struct Scratch {
        dir: PathBuf,
        pg_ctl: PathBuf,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let data = self.dir.join("data");
            if data.join("postmaster.pid").exists() {
                let _ = as_postgres(&self.pg_ctl).arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
            }
            if std::env::var_os("PGCAIRN_TEST_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }

    /// `key=value` pairs the SQL session printed.
    type Values = Vec<(String, String)>;
    /// pg_wal's segments: segment number and path, in order.
    type Segments = Vec<(u64, PathBuf)>;

    /// The session: each value it prints is a `key=value` line.
    const SCRIPT: &str = "
        CREATE TABLE t (i int);
        CREATE TABLE t_drop (i int);
        CHECKPOINT; -- later changes log full-page images (compressed: wal_compression)
        BEGIN; INSERT INTO t VALUES (1); SELECT 'commit=' || txid_current(); COMMIT;
        SELECT 'restore_point=' || pg_create_restore_point('rp-one');
        BEGIN; INSERT INTO t VALUES (2); SELECT 'abort=' || txid_current(); ROLLBACK;
        BEGIN; INSERT INTO t VALUES (3); SELECT 'prepared=' || txid_current(); PREPARE TRANSACTION 'p1';
        COMMIT PREPARED 'p1';
        BEGIN; DROP TABLE t_drop; SELECT 'prepared_drop=' || txid_current(); PREPARE TRANSACTION 'p2';
        COMMIT PREPARED 'p2';
        BEGIN; CREATE TABLE t_new (i int); INSERT INTO t_new VALUES (1);
        SELECT 'prepared_abort=' || txid_current(); PREPARE TRANSACTION 'p3';
        ROLLBACK PREPARED 'p3';
        SELECT 'switch=' || pg_switch_wal();
    ";

    /// Runs SCRIPT on a new cluster of this install, stops it, and returns the session's
    /// values and the pg_wal segments.
    fn make_wal(major: u32, bin: &Path, scratch: &Scratch) -> (Values, Segments) {
        let (dir, data) = (&scratch.dir, scratch.dir.join("data"));
        run(
            as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "",
        );
        let conf = format!(
            "port = 5432\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_prepared_transactions = 5\nwal_compression = pglz\nwal_keep_size = '1GB'\nfsync = off\n",
            dir.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let log = dir.join("server.log");
        run(as_postgres(&bin.join("pg_ctl")).arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "start"]), "");
        let psql = Path::new("/usr/lib/postgresql/15/bin/psql");
        let out = run(
            Command::new(psql).arg("-h").arg(dir).args([
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
            ]),
            SCRIPT,
        );
        run(as_postgres(&bin.join("pg_ctl")).arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]), "");
        let values =
            out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut segments: Segments = std::fs::read_dir(data.join("pg_wal"))
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let file = super::super::wal::WalFile::parse(e.file_name().to_str()?)?;
                matches!(file, super::super::wal::WalFile::Segment { .. })
                    .then(|| (file.segno(16 << 20).unwrap(), e.path()))
            })
            .collect();
        segments.sort();
        eprintln!("PostgreSQL {major}: {} segments in pg_wal", segments.len());
        (values, segments)
    }

    #[test]
    fn real_wal_from_postgresql() {
        for (major, bin) in pg_installs() {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let dir = PathBuf::from(format!("/var/tmp/pgcairn-walrecords-{}-{major}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            if is_root() {
                run(Command::new("chown").arg("postgres:postgres").arg(&dir), "");
            }
            let scratch = Scratch { dir, pg_ctl: bin.join("pg_ctl") };
            let (values, segments) = make_wal(major, &bin, &scratch);
            check_real_wal(major, &values, &segments);
        }
    }

    /// Scans the segments (walking every record's block references on the way) and
    /// checks the events against what the SQL session saw.
    fn check_real_wal(major: u32, values: &[(String, String)], segments: &[(u64, PathBuf)]) {
        let value = |k: &str| {
            values
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k} in {values:?}"))
        };
        let xid = |k: &str| value(k).parse::<u32>().unwrap();
        let rp_end: Lsn = value("restore_point").parse().unwrap();
        let switch: Lsn = value("switch").parse().unwrap();
        let seg_size = super::super::wal::parse_long_header(&std::fs::read(&segments[0].1).unwrap()).unwrap().seg_size;
        let mut scanner = RecordScanner::new(seg_size);
        scanner.check_all = true;
        let mut events = Vec::new();
        for (segno, path) in segments {
            let data = std::fs::read(path).unwrap();
            events.extend(
                scanner.feed(*segno, &data).unwrap_or_else(|e| panic!("PostgreSQL {major}, {}: {e}", path.display())),
            );
            if *segno == switch.0 / u64::from(seg_size) {
                assert_eq!(scanner.end_lsn(), (segno + 1) * u64::from(seg_size), "end after the switch");
            }
        }
        let now = Utc::now();
        let find_xact = |want: u32, want_commit: bool| {
            let found: Vec<_> = events
                .iter()
                .filter_map(|e| match e {
                    RecordEvent::XactEnd { xid, commit, time, .. } if *xid == want => Some((*commit, *time)),
                    _ => None,
                })
                .collect();
            assert_eq!(found.len(), 1, "PostgreSQL {major}: ends of xid {want}: {found:?}");
            assert_eq!(found[0].0, want_commit, "PostgreSQL {major}: xid {want} commit");
            assert!((now - found[0].1).num_seconds().abs() < 60, "PostgreSQL {major}: xid {want} at {}", found[0].1);
        };
        find_xact(xid("commit"), true);
        find_xact(xid("abort"), false);
        find_xact(xid("prepared"), true);
        find_xact(xid("prepared_drop"), true);
        find_xact(xid("prepared_abort"), false);
        let rps: Vec<_> = events.iter().filter(|e| matches!(e, RecordEvent::RestorePoint { .. })).collect();
        let [RecordEvent::RestorePoint { lsn, end_lsn, name, time }] = rps[..] else {
            panic!("restore points: {rps:?}")
        };
        // pg_create_restore_point() returns what XLogInsert does: the record's end.
        assert_eq!((name.as_str(), Lsn(*end_lsn)), ("rp-one", rp_end), "PostgreSQL {major}");
        assert!(*lsn < *end_lsn && (now - *time).num_seconds().abs() < 60);
        // COMMIT PREPARED runs without an xid of its own: no end reports xid 0.
        assert!(events.iter().all(|e| !matches!(e, RecordEvent::XactEnd { xid: 0, .. })));
        assert!(events.windows(2).all(|w| event_lsn(&w[0]) < event_lsn(&w[1])));
        assert!(scanner.end_lsn() > switch.0, "the shutdown checkpoint follows the switch");
        eprintln!(
            "PostgreSQL {major}: {} events, WAL ends at {}, restore point at {}",
            events.len(),
            Lsn(scanner.end_lsn()),
            Lsn(*lsn)
        );
    }

    fn event_lsn(e: &RecordEvent) -> u64 {
        match e {
            RecordEvent::XactEnd { lsn, .. } | RecordEvent::RestorePoint { lsn, .. } => *lsn,
        }
    }
}
