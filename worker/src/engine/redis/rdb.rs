//! A streaming walker of Redis RDB files (versions 1 to 12, as Redis 7.4 and Valkey 8
//! write them): it reads every opcode and value only as far as needed to skip it, counts
//! keys and expires per logical database, and checks the trailing CRC64, while copying the
//! bytes it consumed to a writer (the backup's encoder). It never reads past the checksum,
//! so a replication stream's trailing `$EOF` mark stays in the reader. Memory stays flat:
//! values are skipped in 64 KiB steps, never held.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// What a walk found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RdbSummary {
    /// The RDB version (`REDIS0010` is 10).
    pub version: u32,
    /// Keys and keys with an expiry, per logical database.
    pub dbs: BTreeMap<u64, DbCount>,
    /// Whether a checksum was present and matched (servers with `rdbchecksum no` write 0).
    pub checksum_checked: bool,
    /// Bytes of the file.
    pub bytes: u64,
    /// `redis-ver` from the file's aux fields.
    pub redis_ver: Option<String>,
}

/// Keys of one logical database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbCount {
    /// Keys.
    pub keys: u64,
    /// Keys with an expiry.
    pub expires: u64,
}

impl RdbSummary {
    /// The counts as manifest rows (`db0.keys`, `db0.expires`…).
    pub fn rows(&self) -> Vec<crate::catalog::TableCount> {
        self.dbs
            .iter()
            .flat_map(|(db, c)| super::keyspace_rows(&format!("db{db}"), c.keys, c.expires))
            .collect()
    }
}

/// Why a walk failed.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    /// Not an RDB file.
    #[error("not an RDB file (no REDIS header)")]
    NotRdb,
    /// The stream ended before the end of the file.
    #[error("the RDB is cut short after {0} bytes")]
    Truncated(u64),
    /// The checksum does not match.
    #[error("the RDB's CRC64 does not match (stored {stored:016x}, computed {computed:016x}): the snapshot is damaged")]
    Checksum {
        /// The checksum in the file.
        stored: u64,
        /// The checksum of the bytes read.
        computed: u64,
    },
    /// Something this walker does not know how to skip.
    #[error("{0}; this version cannot walk it")]
    Unsupported(String),
    /// Reading or copying failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The CRC-64 Redis uses (Jones polynomial, reflected, as `crc64.c`).
pub struct Crc64 {
    table: [u64; 256],
    value: u64,
}

impl Default for Crc64 {
    fn default() -> Self {
        const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        Crc64 { table, value: 0 }
    }
}

impl Crc64 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.value =
                self.table[((self.value ^ u64::from(b)) & 0xff) as usize] ^ (self.value >> 8);
        }
    }

    /// The CRC so far.
    pub fn value(&self) -> u64 {
        self.value
    }
}

/// The reading side: every byte taken is added to the CRC and copied to `tee`.
struct Input<'a, R> {
    inner: R,
    tee: Option<&'a mut dyn Write>,
    crc: Crc64,
    pos: u64,
    scratch: Vec<u8>,
}

impl<R: Read> Input<'_, R> {
    fn take(&mut self, buf: &mut [u8]) -> Result<(), RdbError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                RdbError::Truncated(self.pos)
            } else {
                RdbError::Io(e)
            }
        })?;
        self.crc.update(buf);
        if let Some(t) = self.tee.as_mut() {
            t.write_all(buf)?;
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, RdbError> {
        let mut b = [0u8; 1];
        self.take(&mut b)?;
        Ok(b[0])
    }

    fn skip(&mut self, mut n: u64) -> Result<(), RdbError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(64 * 1024, 0);
        while n > 0 {
            let step = n.min(scratch.len() as u64) as usize;
            self.take(&mut scratch[..step])?;
            n -= step as u64;
        }
        self.scratch = scratch;
        Ok(())
    }

    /// A length, or a special string encoding (`Err(kind)`).
    fn length(&mut self) -> Result<Result<u64, u8>, RdbError> {
        let first = self.byte()?;
        Ok(match first >> 6 {
            0 => Ok(u64::from(first & 0x3f)),
            1 => Ok((u64::from(first & 0x3f) << 8) | u64::from(self.byte()?)),
            2 => match first {
                0x80 => {
                    let mut b = [0u8; 4];
                    self.take(&mut b)?;
                    Ok(u64::from(u32::from_be_bytes(b)))
                }
                0x81 => {
                    let mut b = [0u8; 8];
                    self.take(&mut b)?;
                    Ok(u64::from_be_bytes(b))
                }
                other => {
                    return Err(RdbError::Unsupported(format!(
                        "length encoding {other:#04x} at byte {}",
                        self.pos
                    )))
                }
            },
            _ => Err(first & 0x3f),
        })
    }

    fn len(&mut self) -> Result<u64, RdbError> {
        self.length()?.map_err(|kind| {
            RdbError::Unsupported(format!(
                "an encoded string ({kind}) where a length belongs at byte {}",
                self.pos
            ))
        })
    }

    /// Skips a string; returns it when it is short and plain (aux fields).
    fn string(&mut self, keep: bool) -> Result<Option<Vec<u8>>, RdbError> {
        match self.length()? {
            Ok(n) if keep && n <= 4096 => {
                let mut v = vec![0u8; n as usize];
                self.take(&mut v)?;
                Ok(Some(v))
            }
            Ok(n) => self.skip(n).map(|()| None),
            Err(0) => self.skip(1).map(|()| None),
            Err(1) => self.skip(2).map(|()| None),
            Err(2) => self.skip(4).map(|()| None),
            Err(3) => {
                let compressed = self.len()?;
                let _plain = self.len()?;
                self.skip(compressed).map(|()| None)
            }
            Err(kind) => Err(RdbError::Unsupported(format!(
                "string encoding {kind} at byte {}",
                self.pos
            ))),
        }
    }

    fn strings(&mut self, n: u64) -> Result<(), RdbError> {
        for _ in 0..n {
            self.string(false)?;
        }
        Ok(())
    }

    /// Module data: typed entries up to their EOF opcode.
    fn module_data(&mut self) -> Result<(), RdbError> {
        loop {
            match self.len()? {
                0 => return Ok(()),
                1 | 2 => {
                    self.len()?;
                }
                3 => self.skip(4)?,
                4 => self.skip(8)?,
                5 => {
                    self.string(false)?;
                }
                other => {
                    return Err(RdbError::Unsupported(format!(
                        "module data opcode {other} at byte {}",
                        self.pos
                    )))
                }
            }
        }
    }

    fn stream(&mut self, kind: u8) -> Result<(), RdbError> {
        let listpacks = self.len()?;
        self.strings(listpacks * 2)?;
        self.len()?; // elements
        self.len()?; // last id
        self.len()?;
        if kind >= 19 {
            for _ in 0..5 {
                self.len()?; // first id, max deleted id, entries added
            }
        }
        let groups = self.len()?;
        for _ in 0..groups {
            self.string(false)?;
            self.len()?;
            self.len()?;
            if kind >= 19 {
                self.len()?; // entries read
            }
            let pending = self.len()?;
            for _ in 0..pending {
                self.skip(16 + 8)?;
                self.len()?;
            }
            let consumers = self.len()?;
            for _ in 0..consumers {
                self.string(false)?;
                self.skip(8)?; // seen time
                if kind >= 21 {
                    self.skip(8)?; // active time
                }
                let owned = self.len()?;
                self.skip(owned * 16)?;
            }
        }
        Ok(())
    }

    fn value(&mut self, kind: u8) -> Result<(), RdbError> {
        match kind {
            0 | 9..=13 | 16 | 17 | 20 => self.string(false).map(|_| ()),
            1 | 2 => {
                let n = self.len()?;
                self.strings(n)
            }
            4 => {
                let n = self.len()?;
                self.strings(n * 2)
            }
            3 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.string(false)?;
                    let score = self.byte()?;
                    if score < 253 {
                        self.skip(u64::from(score))?;
                    }
                }
                Ok(())
            }
            5 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.string(false)?;
                    self.skip(8)?;
                }
                Ok(())
            }
            7 => {
                self.len()?; // module id
                self.module_data()
            }
            14 => {
                let n = self.len()?;
                self.strings(n)
            }
            18 => {
                let n = self.len()?;
                for _ in 0..n {
                    self.len()?; // container: plain or packed
                    self.string(false)?;
                }
                Ok(())
            }
            15 | 19 | 21 => self.stream(kind),
            other => Err(RdbError::Unsupported(format!(
                "value type {other} at byte {} (a newer server's type, or a module's)",
                self.pos
            ))),
        }
    }
}

/// Walks an RDB from `input`, copying every byte of it (and nothing after it) to `tee`.
///
/// # Errors
/// Not an RDB, cut short, a checksum mismatch, a type this walker does not know, I/O.
pub fn walk<R: Read>(input: R, tee: Option<&mut dyn Write>) -> Result<RdbSummary, RdbError> {
    // Opcodes and lengths are taken a few bytes at a time: copy them on in batches.
    let mut buffered = tee.map(|t| io::BufWriter::with_capacity(256 * 1024, t));
    let mut r = Input {
        inner: input,
        tee: buffered.as_mut().map(|b| b as &mut dyn Write),
        crc: Crc64::default(),
        pos: 0,
        scratch: Vec::new(),
    };
    let mut header = [0u8; 9];
    r.take(&mut header).map_err(|e| match e {
        RdbError::Truncated(0..=8) => RdbError::NotRdb,
        other => other,
    })?;
    if &header[..5] != b"REDIS" {
        return Err(RdbError::NotRdb);
    }
    let version: u32 = std::str::from_utf8(&header[5..])
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(RdbError::NotRdb)?;
    let mut summary = RdbSummary {
        version,
        ..RdbSummary::default()
    };
    let (mut db, mut expiring) = (0u64, false);
    loop {
        let op = r.byte()?;
        match op {
            0xff => break,
            0xfe => db = r.len()?,
            0xfd => {
                r.skip(4)?;
                expiring = true;
            }
            0xfc => {
                r.skip(8)?;
                expiring = true;
            }
            0xfb => {
                r.len()?;
                r.len()?;
            }
            0xfa => {
                let key = r.string(true)?;
                let value = r.string(true)?;
                if key.as_deref() == Some(b"redis-ver".as_slice()) {
                    summary.redis_ver = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                }
            }
            0xf9 => r.skip(1)?,
            0xf8 => {
                r.len()?;
            }
            0xf7 => {
                r.len()?;
                r.module_data()?;
            }
            0xf5 => {
                r.string(false)?;
            }
            0xf4 => {
                for _ in 0..3 {
                    r.len()?;
                }
            }
            kind if kind < 0xf0 => {
                r.string(false)?; // the key
                r.value(kind)?;
                let count = summary.dbs.entry(db).or_default();
                count.keys += 1;
                if std::mem::take(&mut expiring) {
                    count.expires += 1;
                }
            }
            other => {
                return Err(RdbError::Unsupported(format!(
                    "opcode {other:#04x} at byte {}",
                    r.pos - 1
                )))
            }
        }
    }
    if version >= 5 {
        let computed = r.crc.value();
        let mut stored = [0u8; 8];
        r.take(&mut stored)?;
        let stored = u64::from_le_bytes(stored);
        if stored != 0 {
            if stored != computed {
                return Err(RdbError::Checksum { stored, computed });
            }
            summary.checksum_checked = true;
        }
    }
    summary.bytes = r.pos;
    drop(r);
    if let Some(b) = buffered.as_mut() {
        b.flush()?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_jones() {
        let mut c = Crc64::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xe9c6_d914_c4b8_d9ca);
    }

    /// A small RDB 10: aux, db 0 with a string and an expiring string, db 3 with a set.
    fn sample() -> Vec<u8> {
        let mut f = b"REDIS0010".to_vec();
        f.extend(b"\xfa\x09redis-ver\x067.0.15");
        f.extend(b"\xfe\x00\xfb\x02\x01");
        f.extend(b"\x00\x01a\x03one");
        f.extend(b"\xfc\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01b\xc0\x07");
        f.extend(b"\xfe\x03\x02\x01s\x02\x01x\x01y");
        f.push(0xff);
        let mut c = Crc64::default();
        c.update(&f);
        f.extend(c.value().to_le_bytes());
        f
    }

    #[test]
    fn counts_keys_and_expires_per_database_and_copies_exactly_the_file() {
        let mut file = sample();
        let len = file.len();
        file.extend(b"0123456789012345678901234567890123456789"); // an $EOF mark after it
        let mut copy = Vec::new();
        let mut input = io::Cursor::new(&file);
        let s = walk(&mut input, Some(&mut copy)).unwrap();
        assert_eq!(s.version, 10);
        assert_eq!(
            s.dbs[&0],
            DbCount {
                keys: 2,
                expires: 1
            }
        );
        assert_eq!(
            s.dbs[&3],
            DbCount {
                keys: 1,
                expires: 0
            }
        );
        assert!(s.checksum_checked);
        assert_eq!(s.redis_ver.as_deref(), Some("7.0.15"));
        assert_eq!(copy, &file[..len]);
        assert_eq!(input.position() as usize, len, "read past the checksum");
    }

    #[test]
    fn damage_and_truncation_are_errors() {
        let mut bad = sample();
        let at = bad.len() - 12;
        bad[at] ^= 1;
        assert!(matches!(
            walk(bad.as_slice(), None),
            Err(RdbError::Checksum { .. }) | Err(RdbError::Unsupported(_))
        ));
        let cut = &sample()[..20];
        assert!(matches!(walk(cut, None), Err(RdbError::Truncated(_))));
        assert!(matches!(
            walk(&b"GARBAGE00"[..], None),
            Err(RdbError::NotRdb)
        ));
    }
}
