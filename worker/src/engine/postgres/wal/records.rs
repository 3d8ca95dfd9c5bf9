//! Reads a WAL segment's records far enough to know what a point-in-time restore needs:
//! where the valid WAL in it ends (a `pg_receivewal` partial file is padded with zeros), and
//! the times of the transaction ends in it (commit and abort records, the only records a
//! `recovery_target_time` can stop at).
//!
//! Why this exists: PostgreSQL refuses to finish a recovery whose `recovery_target_time`
//! lies after the last transaction end of the WAL it was given ("recovery ended before
//! configured recovery target was reached"), and a restore cannot tell which segment holds
//! the first commit after a time without reading the records. The format read here (page
//! headers, the 24-byte `XLogRecord` header, the block-id headers, `xl_xact_commit`) has
//! not changed since PostgreSQL 9.5; every record's CRC-32C is checked, so stale bytes of
//! a recycled file are never taken for records.

/// A page header's flag: the page starts with the rest of a record begun on earlier pages.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// A page header's flag: the long header (the first page of a segment).
const XLP_LONG_HEADER: u16 = 0x0002;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// What a segment holds, as far as a restore to a time cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the segment's start to the end of its last valid record (the segment's
    /// size after an `XLOG_SWITCH`).
    pub valid_bytes: u64,
    /// Time of the first commit or abort record (microseconds since the Unix epoch).
    pub first_xact_end: Option<i64>,
    /// Time of the last commit or abort record.
    pub last_xact_end: Option<i64>,
    /// Time of the last commit record.
    pub last_commit: Option<i64>,
    /// Records read.
    pub records: u64,
}

/// Reads `data`, the first bytes of the segment that starts at WAL position `start`.
/// Stops at the first byte that is not a valid record (zeros, a page of another position,
/// a CRC that does not match): everything before it is what PostgreSQL would replay.
pub fn scan(data: &[u8], start: u64) -> Scan {
    let mut out = Scan::default();
    if data.len() < LONG_HEADER {
        return out;
    }
    let info = u16_at(data, 2);
    if info & XLP_LONG_HEADER == 0 || u64_at(data, 8) != start {
        return out;
    }
    let magic = u16_at(data, 0);
    let block = u32_at(data, 36) as usize;
    if !(1024..=65536).contains(&block) || !block.is_power_of_two() {
        return out;
    }
    // A record being assembled across pages, and how much of it is still to come; or,
    // on the segment's first pages, the tail of a record begun in the previous segment.
    let mut record: Vec<u8> = Vec::new();
    let mut need = 0usize;
    let mut skipping = false;
    let mut page = 0usize;
    while page + SHORT_HEADER <= data.len() {
        let info = u16_at(data, page + 2);
        if u16_at(data, page) != magic || u64_at(data, page + 8) != start + page as u64 {
            return out;
        }
        let rem_len = u32_at(data, page + 16) as usize;
        let page_end = (page + block).min(data.len());
        let mut off = page
            + if info & XLP_LONG_HEADER != 0 {
                LONG_HEADER
            } else {
                SHORT_HEADER
            };
        if off > page_end {
            // A header cut off by the end of the data (or claiming a long one mid-segment).
            return out;
        }
        if need > 0 || skipping || (page == 0 && info & XLP_FIRST_IS_CONTRECORD != 0) {
            if info & XLP_FIRST_IS_CONTRECORD == 0 || (need > 0 && rem_len != need) {
                return out;
            }
            let take = rem_len.min(page_end.saturating_sub(off));
            if need > 0 {
                record.extend_from_slice(&data[off..off + take]);
                need -= take;
            }
            off += take;
            if take < rem_len {
                skipping = need == 0;
                page += block;
                continue;
            }
            skipping = false;
            if !record.is_empty() {
                if !out.take(&record, off as u64) {
                    return out;
                }
                record.clear();
            } else if page == 0 {
                out.valid_bytes = off as u64;
            }
        }
        loop {
            off = maxalign(off);
            if off + 4 > page_end {
                break;
            }
            let total = u32_at(data, off) as usize;
            if total == 0 {
                return out;
            }
            if total < RECORD_HEADER {
                return out;
            }
            let here = total.min(page_end - off);
            if here < total {
                if page_end - page < block {
                    // The data ends inside this record: it is incomplete.
                    return out;
                }
                record.extend_from_slice(&data[off..off + here]);
                need = total - here;
                break;
            }
            if !out.take(&data[off..off + total], (off + total) as u64) {
                return out;
            }
            off += total;
        }
        page += block;
    }
    out
}

impl Scan {
    /// Takes one whole record that ends at `end`; false when it is not valid (the WAL ends
    /// before it) or ends the segment (`XLOG_SWITCH`).
    fn take(&mut self, rec: &[u8], end: u64) -> bool {
        if rec.len() < RECORD_HEADER || u32_at(rec, 0) as usize != rec.len() {
            return false;
        }
        let mut crc = Crc32c::new();
        crc.update(&rec[RECORD_HEADER..]);
        crc.update(&rec[..20]);
        if crc.finish() != u32_at(rec, 20) {
            return false;
        }
        self.records += 1;
        self.valid_bytes = end;
        let (info, rmid) = (rec[16], rec[17]);
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            // The rest of the segment is unused: a restore reads on in the next one.
            self.valid_bytes = u64::MAX;
            return false;
        }
        if rmid != RM_XACT_ID {
            return true;
        }
        let op = info & XLOG_XACT_OPMASK;
        let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
        if !commit && !matches!(op, XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED) {
            return true;
        }
        if let Some(at) = main_data(rec).filter(|d| d.len() >= 8).map(|d| {
            i64::from_le_bytes(d[..8].try_into().expect("8 bytes")).saturating_add(PG_EPOCH_MICROS)
        }) {
            self.first_xact_end.get_or_insert(at);
            self.last_xact_end = Some(at);
            if commit {
                self.last_commit = Some(at);
            }
        }
        true
    }
}

/// The record's main data: after the header and the block-id headers, for records without
/// block references (transaction records have none).
fn main_data(rec: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    loop {
        let id = *rec.get(at)?;
        at += 1;
        match id {
            255 => {
                let len = usize::from(*rec.get(at)?);
                return rec.get(at + 1..at + 1 + len);
            }
            254 => {
                let len = u32::from_le_bytes(rec.get(at..at + 4)?.try_into().ok()?) as usize;
                return rec.get(at + 4..at + 4 + len);
            }
            253 => at += 2,
            252 => at += 4,
            _ => return None,
        }
    }
}

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().expect("8 bytes"))
}

/// CRC-32C (Castagnoli), PostgreSQL's record checksum.
struct Crc32c(u32);

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

impl Crc32c {
    fn new() -> Self {
        Crc32c(0xFFFF_FFFF)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = 8192;
    const START: u64 = 0x0300_0000;

    /// Lays records out as PostgreSQL does: 8-byte aligned, page headers every BLOCK bytes,
    /// a record split over pages continued after the next page's header.
    struct Writer {
        data: Vec<u8>,
    }

    impl Writer {
        fn new() -> Self {
            let mut w = Writer { data: Vec::new() };
            w.page_header(0);
            w
        }

        fn page_header(&mut self, rem_len: usize) {
            let page = self.data.len();
            let long = page == 0;
            let mut info = if long { XLP_LONG_HEADER } else { 0 };
            if rem_len > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            self.data.extend_from_slice(&0xD116u16.to_le_bytes());
            self.data.extend_from_slice(&info.to_le_bytes());
            self.data.extend_from_slice(&1u32.to_le_bytes());
            self.data
                .extend_from_slice(&(START + page as u64).to_le_bytes());
            self.data.extend_from_slice(&(rem_len as u32).to_le_bytes());
            self.data.extend_from_slice(&[0; 4]);
            if long {
                self.data.extend_from_slice(&7u64.to_le_bytes());
                self.data.extend_from_slice(&(16u32 << 20).to_le_bytes());
                self.data.extend_from_slice(&(BLOCK as u32).to_le_bytes());
            }
        }

        fn record(&mut self, rmid: u8, info: u8, main: &[u8]) {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.push(255);
            rec.push(main.len() as u8);
            rec.extend_from_slice(main);
            let len = rec.len() as u32;
            rec[..4].copy_from_slice(&len.to_le_bytes());
            rec[16] = info;
            rec[17] = rmid;
            let mut crc = Crc32c::new();
            crc.update(&rec[RECORD_HEADER..]);
            crc.update(&rec[..20]);
            let sum = crc.finish();
            rec[20..24].copy_from_slice(&sum.to_le_bytes());
            while self.data.len() % 8 != 0 {
                self.data.push(0);
            }
            if self.data.len() % BLOCK == 0 {
                self.page_header(0);
            }
            let mut rest = &rec[..];
            loop {
                let room = BLOCK - self.data.len() % BLOCK;
                let n = room.min(rest.len());
                self.data.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if rest.is_empty() {
                    break;
                }
                self.page_header(rest.len());
            }
        }

        fn commit(&mut self, unix_micros: i64, padding: usize) {
            let mut main = (unix_micros - PG_EPOCH_MICROS).to_le_bytes().to_vec();
            main.resize(8 + padding, 0xAB);
            self.record(RM_XACT_ID, XLOG_XACT_COMMIT, &main);
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    #[test]
    fn finds_commit_times_across_page_boundaries_and_stops_at_zeros() {
        let mut w = Writer::new();
        w.record(10, 0, &[1; 100]);
        // Enough commits that several straddle page boundaries.
        let times: Vec<i64> = (0..300)
            .map(|i| 1_764_000_000_000_000 + i * 1_000_000)
            .collect();
        for (i, t) in times.iter().enumerate() {
            w.commit(*t, 40 + (i % 7) * 13);
        }
        w.record(
            RM_XACT_ID,
            XLOG_XACT_ABORT,
            &(times[299] + 5 - PG_EPOCH_MICROS).to_le_bytes(),
        );
        let valid = w.data.len() as u64;
        assert!(valid > 2 * BLOCK as u64, "the test needs several pages");
        let mut data = w.data.clone();
        // Zeros after the last record, as in a partial segment, up to a page past it.
        data.resize((data.len() / BLOCK + 2) * BLOCK, 0);
        let s = scan(&data, START);
        assert_eq!(s.records, 302);
        assert_eq!(s.valid_bytes, valid);
        assert_eq!(s.first_xact_end, Some(times[0]));
        assert_eq!(s.last_commit, Some(times[299]));
        assert_eq!(s.last_xact_end, Some(times[299] + 5));
    }

    #[test]
    fn a_damaged_record_ends_the_valid_wal_before_it() {
        let mut w = Writer::new();
        w.commit(1_764_000_000_000_000, 0);
        let first_end = w.data.len() as u64;
        w.commit(1_764_000_001_000_000, 0);
        let mut data = w.data.clone();
        let last = data.len() - 3;
        data[last] ^= 0x40;
        let s = scan(&data, START);
        assert_eq!(s.records, 1);
        assert_eq!(s.valid_bytes, first_end);
        assert_eq!(s.last_commit, Some(1_764_000_000_000_000));
    }

    #[test]
    fn a_page_of_another_position_is_not_read() {
        let mut w = Writer::new();
        w.commit(1_764_000_000_000_000, 0);
        // The wrong segment start: the page address does not match.
        assert_eq!(scan(&w.data, START + (16 << 20)), Scan::default());
        assert_eq!(scan(&[0u8; 8192], START), Scan::default());
    }

    #[test]
    fn bytes_cut_anywhere_never_panic_and_keep_what_is_whole() {
        let mut w = Writer::new();
        for i in 0..200 {
            w.commit(1_764_000_000_000_000 + i, 30);
        }
        let full = scan(&w.data, START);
        for cut in (0..w.data.len()).step_by(7) {
            let s = scan(&w.data[..cut], START);
            assert!(s.valid_bytes <= full.valid_bytes && s.records <= full.records);
        }
        // A later page claiming a long header, cut inside it.
        let mut data = w.data.clone();
        data.truncate(BLOCK + 30);
        data[BLOCK + 2] |= XLP_LONG_HEADER as u8;
        let _ = scan(&data, START);
    }

    #[test]
    fn a_switch_record_fills_the_segment() {
        let mut w = Writer::new();
        w.commit(1_764_000_000_000_000, 0);
        w.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
        w.commit(1_764_000_009_000_000, 0);
        let s = scan(&w.data, START);
        assert_eq!(s.valid_bytes, u64::MAX);
        assert_eq!(s.last_commit, Some(1_764_000_000_000_000));
    }
}
