//! Backup ids: a UTC timestamp plus a short random suffix, so ids sort by time as plain
//! strings (the store lists keys in lexical order) and two backups started in the same
//! second never collide.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const SUFFIX_LEN: usize = 6;

/// Identifies one backup of one target, e.g. `20261122T020000Z-7f3a9c`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

/// A string that is not a backup id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a backup id (expected e.g. 20261122T020000Z-7f3a9c, or `latest`); run `kubectl dr list` to see the ids")]
pub struct BadBackupId(String);

impl BackupId {
    /// A fresh id for a backup starting at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        let suffix: u32 = rand::rng().random_range(0..1 << 24);
        BackupId(format!("{}-{suffix:06x}", now.format(TIME_FORMAT)))
    }

    /// When the backup started, as encoded in the id (second precision).
    pub fn created_at(&self) -> DateTime<Utc> {
        // The constructor and the parser both guarantee the prefix parses.
        NaiveDateTime::parse_from_str(&self.0[..16], TIME_FORMAT)
            .expect("validated backup id")
            .and_utc()
    }

    /// The id as text, e.g. `20261122T020000Z-7f3a9c`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = BadBackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBackupId(s.to_string());
        let (time, suffix) = s.split_once('-').ok_or_else(bad)?;
        if time.len() != 16
            || NaiveDateTime::parse_from_str(time, TIME_FORMAT).is_err()
            || suffix.len() != SUFFIX_LEN
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad());
        }
        Ok(BackupId(s.to_string()))
    }
}

impl TryFrom<String> for BackupId {
    type Error = BadBackupId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn new_ids_round_trip_and_carry_their_time() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 5).unwrap();
        let id = BackupId::new(now);
        assert!(id.as_str().starts_with("20261122T020005Z-"), "{id}");
        let parsed: BackupId = id.as_str().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.created_at(), now);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = BackupId::new(Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap());
        let b = BackupId::new(Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
        assert!(a < b);
    }

    #[test]
    fn rejects_lookalikes() {
        for s in [
            "",
            "latest",
            "20261122T020000Z",
            "20261122T020000Z-",
            "20261122T020000Z-7F3A9C",
            "20261122T020000Z-7f3a9",
            "20261322T020000Z-7f3a9c",
            "20261122T020000Z-7f3a9c/../x",
            "2026-11-22T02:00:00Z-7f3a9c",
        ] {
            assert!(s.parse::<BackupId>().is_err(), "{s:?} accepted");
        }
    }
}
