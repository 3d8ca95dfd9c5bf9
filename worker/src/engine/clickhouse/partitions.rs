//! Partitions of MergeTree tables and their fingerprints, read from `system.parts`: a
//! backup stores such a table as one part per partition, and an incremental backup stores
//! again only the partitions whose fingerprint moved since its base.
//!
//! A fingerprint is a SHA-256 over what decides a partition's data: the table's identity
//! (UUID where the server has one, its DDL, the dumped columns and format) and its active
//! parts. Where the server reports `hash_of_all_files` (ClickHouse 21.x and later; 26 does,
//! 18.16 does not), the parts count by their file hashes and rows, not their names: a
//! mutation of another partition renames every part of the table but leaves the files of
//! the untouched ones as they were, so their partitions keep their fingerprints. Without
//! the hashes, part names, rows and sizes are used: a merge or a mutation then moves the
//! fingerprint and the partition is dumped again, which is correct, only less thrifty.
//!
//! Fingerprints are read before the partition is dumped. Rows inserted in between are in
//! the dump but not in the fingerprint, so the next backup finds it moved and dumps it
//! again; the other order could record new data's fingerprint for an older dump.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};

use super::schema::TableDdl;
use super::{quote_str, ChClient, ChError};
use crate::catalog::Partition;

/// One active part of a partition, as `system.parts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ActivePart {
    /// `hash_of_all_files`, empty where the server has none.
    hash: String,
    name: String,
    rows: u64,
    bytes: u64,
}

/// A partition of a table on the server now.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    /// `partition_id`.
    pub id: String,
    /// Its active parts, sorted.
    parts: Vec<ActivePart>,
    /// The partition key's time range, where it has a date or time.
    pub min_time: Option<DateTime<Utc>>,
    /// See `min_time`.
    pub max_time: Option<DateTime<Utc>>,
}

impl Live {
    /// The fingerprint of this partition of `table` (see the module doc).
    pub fn fingerprint(&self, table: &TableDdl) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field("kube-dr clickhouse partition 1");
        field(table.uuid.as_deref().unwrap_or(""));
        field(&table.create);
        field(table.data_format.clickhouse_name());
        for c in &table.columns {
            field(c);
        }
        field(&self.id);
        let hashed = self.parts.iter().all(|p| !p.hash.is_empty());
        let mut rows: Vec<String> = self
            .parts
            .iter()
            .map(|p| {
                if hashed {
                    format!("{} {}", p.hash, p.rows)
                } else {
                    format!("{} {} {}", p.name, p.rows, p.bytes)
                }
            })
            .collect();
        rows.sort();
        for r in &rows {
            field(r);
        }
        hex::encode(h.finalize())
    }

    /// What the manifest records of it.
    pub fn recorded(&self, table: &TableDdl) -> Partition {
        Partition {
            id: self.id.clone(),
            fingerprint: Some(self.fingerprint(table)),
            min_time: self.min_time,
            max_time: self.max_time,
        }
    }
}

/// Active partitions of the tables of `databases`: `(database, table)` → partitions by id.
/// Tables that keep no parts (Log, Memory, an empty MergeTree) are absent.
///
/// # Errors
/// Query errors.
pub async fn list(
    client: &ChClient,
    databases: &[String],
) -> Result<BTreeMap<(String, String), Vec<Live>>, ChError> {
    let list = databases
        .iter()
        .map(|d| quote_str(d))
        .collect::<Vec<_>>()
        .join(", ");
    let query = |hash: &str| {
        format!(
            "SELECT database, table, partition_id, name, rows, bytes_on_disk, {hash}, \
             toString(min_date), toString(max_date), toUnixTimestamp(min_time), toUnixTimestamp(max_time) \
             FROM system.parts WHERE active AND database IN ({list}) \
             ORDER BY database, table, partition_id, name"
        )
    };
    let rows = match client
        .rows("listing partitions", &query("hash_of_all_files"))
        .await
    {
        Ok(rows) => rows,
        // Servers before 21.x have no file hashes: names and sizes stand in.
        Err(ChError::Query { message, .. }) if message.contains("hash_of_all_files") => {
            client.rows("listing partitions", &query("''")).await?
        }
        Err(e) => return Err(e),
    };
    let bad = |why: &str| ChError::Query {
        addr: client.addr(),
        what: "listing partitions".into(),
        message: why.to_string(),
    };
    let mut out: BTreeMap<(String, String), Vec<Live>> = BTreeMap::new();
    for row in rows {
        let [database, table, id, name, rows, bytes, hash, min_date, max_date, min_time, max_time] =
            <[String; 11]>::try_from(row).map_err(|_| bad("unexpected columns in system.parts"))?;
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad("a non-numeric size in system.parts"))
        };
        let part = ActivePart {
            hash,
            name,
            rows: number(&rows)?,
            bytes: number(&bytes)?,
        };
        let (min_time, max_time) = time_range(&min_date, &max_date, &min_time, &max_time);
        let partitions = out.entry((database, table)).or_default();
        match partitions.last_mut() {
            Some(p) if p.id == id => {
                p.parts.push(part);
                p.min_time = match (p.min_time, min_time) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                p.max_time = p.max_time.max(max_time);
            }
            _ => partitions.push(Live {
                id,
                parts: vec![part],
                min_time,
                max_time,
            }),
        }
    }
    for p in out.values_mut().flatten() {
        p.parts.sort();
    }
    Ok(out)
}

/// A part's time range from `system.parts`: its DateTime range where the partition key
/// has a DateTime, else its Date range (the whole last day), else none. Servers print an
/// unset range as the epoch (or `0000-00-00` before 20.x).
fn time_range(
    min_date: &str,
    max_date: &str,
    min_time: &str,
    max_time: &str,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let seconds = |s: &str| {
        s.parse::<i64>()
            .ok()
            .filter(|&t| t > 0)
            .and_then(|t| DateTime::from_timestamp(t, 0))
    };
    if let (Some(a), Some(b)) = (seconds(min_time), seconds(max_time)) {
        return (Some(a), Some(b));
    }
    let day = |s: &str| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .filter(|d| *d > NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date"))
    };
    match (day(min_date), day(max_date)) {
        (Some(a), Some(b)) => (
            a.and_hms_opt(0, 0, 0).map(|t| t.and_utc()),
            b.and_hms_opt(23, 59, 59).map(|t| t.and_utc()),
        ),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clickhouse::schema::DataFormat;

    fn table() -> TableDdl {
        TableDdl {
            database: "db".into(),
            name: "t".into(),
            engine: "MergeTree".into(),
            create: "CREATE TABLE db.t (d Date, x UInt32) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY x".into(),
            columns: vec!["d".into(), "x".into()],
            part: Some("data-db.t".into()),
            data_format: DataFormat::Native,
            uuid: None,
        }
    }

    fn live(parts: &[(&str, &str, u64, u64)]) -> Live {
        Live {
            id: "202612".into(),
            parts: parts
                .iter()
                .map(|(hash, name, rows, bytes)| ActivePart {
                    hash: hash.to_string(),
                    name: name.to_string(),
                    rows: *rows,
                    bytes: *bytes,
                })
                .collect(),
            min_time: None,
            max_time: None,
        }
    }

    #[test]
    fn with_file_hashes_a_rename_keeps_the_fingerprint_and_new_data_moves_it() {
        let t = table();
        let before = live(&[("h1", "202612_1_1_0", 10, 100)]).fingerprint(&t);
        // A mutation elsewhere renamed the part; its files are the same.
        let renamed = live(&[("h1", "202612_1_1_0_5", 10, 100)]).fingerprint(&t);
        assert_eq!(before, renamed);
        let grown = live(&[
            ("h1", "202612_1_1_0", 10, 100),
            ("h2", "202612_6_6_0", 1, 10),
        ]);
        assert_ne!(before, grown.fingerprint(&t));
        let rewritten = live(&[("h9", "202612_1_1_0_7", 10, 100)]).fingerprint(&t);
        assert_ne!(before, rewritten);
    }

    #[test]
    fn without_file_hashes_names_count_and_the_table_identity_counts() {
        let t = table();
        let before = live(&[("", "202612_1_1_0", 10, 100)]).fingerprint(&t);
        assert_ne!(
            before,
            live(&[("", "202612_1_1_0_5", 10, 100)]).fingerprint(&t)
        );
        let mut altered = table();
        altered.columns.push("y".into());
        assert_ne!(
            before,
            live(&[("", "202612_1_1_0", 10, 100)]).fingerprint(&altered)
        );
        let mut other = table();
        other.uuid = Some("9b2c0b7e-0000-4000-8000-000000000001".into());
        assert_ne!(
            before,
            live(&[("", "202612_1_1_0", 10, 100)]).fingerprint(&other)
        );
    }

    #[test]
    fn time_ranges_come_from_times_or_dates() {
        let (a, b) = time_range("1970-01-01", "1970-01-01", "1764720000", "1764806399");
        assert_eq!(a.unwrap().to_rfc3339(), "2025-12-03T00:00:00+00:00");
        assert_eq!(b.unwrap().to_rfc3339(), "2025-12-03T23:59:59+00:00");
        let (a, b) = time_range("2026-10-01", "2026-10-31", "0", "0");
        assert_eq!(a.unwrap().to_rfc3339(), "2026-10-01T00:00:00+00:00");
        assert_eq!(b.unwrap().to_rfc3339(), "2026-10-31T23:59:59+00:00");
        assert_eq!(
            time_range("0000-00-00", "0000-00-00", "0", "0"),
            (None, None)
        );
    }
}
