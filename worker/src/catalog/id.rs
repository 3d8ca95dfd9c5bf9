//! Backup ids: a UTC timestamp to the millisecond plus a short random suffix, so ids sort
//! by time and two backups started in the same second (or millisecond, on two machines)
//! never collide.
//!
//! Ids made before millisecond ids (`YYYYMMDDTHHMMSSZ-xxxxxx`) still parse. Ordering never
//! relies on the ids' text: [`Ord`] compares the time first (an old id counts as the start
//! of its second), then the text, so `list`, `latest`, prune, `restore --all` and the drill
//! all agree on which backup is the newest whatever the mix of formats.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Seconds, as the oldest ids carry them: `20261122T020000Z`.
const SECONDS_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Milliseconds: `20261122T020000.123Z`.
const MILLIS_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
const SUFFIX_LEN: usize = 6;

/// The millisecond of the last id this process handed out, so ids made by one process
/// (a backup run, a test) within the same millisecond, or across a small step back of the
/// clock, still increase.
static LAST_MILLIS: Mutex<i64> = Mutex::new(i64::MIN);

/// How far back a clock may step and still count as "the same moment" for [`LAST_MILLIS`]:
/// an id made for a time clearly apart (a test's backdated backup) keeps its own time.
const SAME_MOMENT_MS: i64 = 1000;

/// Identifies one backup of one target, e.g. `20261122T020000.123Z-7f3a9c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

/// A string that is not a backup id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a backup id (expected e.g. 20261122T020000.123Z-7f3a9c, or `latest`); run `kubectl dr list` to see the ids")]
pub struct BadBackupId(String);

impl BackupId {
    /// A fresh id for a backup starting at `now`: later than the id this process made
    /// just before, if that was within the same moment.
    pub fn new(now: DateTime<Utc>) -> Self {
        let wanted = now.timestamp_millis();
        let millis = {
            let mut last = LAST_MILLIS.lock().unwrap_or_else(|e| e.into_inner());
            *last = next_millis(*last, wanted);
            *last
        };
        let at = DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or(now);
        let suffix: u32 = rand::rng().random_range(0..1 << 24);
        BackupId(format!("{}-{suffix:06x}", at.format(MILLIS_FORMAT)))
    }

    /// When the backup started, as encoded in the id (milliseconds; ids made before
    /// millisecond ids give the start of their second).
    pub fn created_at(&self) -> DateTime<Utc> {
        // The constructor and the parser both guarantee the time parses.
        parse_time(self.time_text()).expect("validated backup id")
    }

    /// The id as text, e.g. `20261122T020000.123Z-7f3a9c`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn time_text(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(time, _)| time)
    }
}

/// The millisecond for an id wanted at `wanted` when the previous one was `last`: later
/// than `last` if both are the same moment, else `wanted` itself.
fn next_millis(last: i64, wanted: i64) -> i64 {
    if (0..SAME_MOMENT_MS).contains(&last.saturating_sub(wanted)) {
        last + 1
    } else {
        wanted
    }
}

/// Parses either time format; None for anything else.
fn parse_time(time: &str) -> Option<DateTime<Utc>> {
    let format = match time.len() {
        16 => SECONDS_FORMAT,
        20 if time.as_bytes()[15] == b'.' => MILLIS_FORMAT,
        _ => return None,
    };
    NaiveDateTime::parse_from_str(time, format)
        .ok()
        .map(|t| t.and_utc())
}

impl Ord for BackupId {
    /// Time first (milliseconds), then the text: the one ordering every reader uses.
    fn cmp(&self, other: &Self) -> Ordering {
        self.created_at()
            .cmp(&other.created_at())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for BackupId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for BackupId {
    type Err = BadBackupId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadBackupId(s.to_string());
        let (time, suffix) = s.split_once('-').ok_or_else(bad)?;
        if parse_time(time).is_none()
            || !time
                .bytes()
                .all(|b| b.is_ascii_digit() || b"T.Z".contains(&b))
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
        assert!(id.as_str().starts_with("20261122T020005.000Z-"), "{id}");
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
            "20261122T020000.12Z-7f3a9c",
            "20261122T020000,123Z-7f3a9c",
            "20261122T020000.1234Z-7f3a9c",
            "20261122T020000.+12Z-7f3a9c",
        ] {
            assert!(s.parse::<BackupId>().is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn ids_of_one_process_increase_even_within_a_millisecond() {
        // The state is the process's; other tests make ids beside this one, so the rule
        // itself is checked here.
        let t = 1_900_000_000_000;
        let mut last = i64::MIN;
        let mut seen = Vec::new();
        for wanted in [
            t,
            t,
            t,
            t + 1,
            t - 300,
            t + 5_000,
            t + 5_000,
            t - 86_400_000,
        ] {
            last = next_millis(last, wanted);
            seen.push(last);
        }
        assert_eq!(
            seen,
            vec![
                t,
                t + 1,
                t + 2,
                t + 3,
                t + 4,
                t + 5_000,
                t + 5_001,
                t - 86_400_000
            ]
        );
        let now = Utc.with_ymd_and_hms(2030, 5, 1, 0, 0, 0).unwrap();
        let (a, b) = (BackupId::new(now), BackupId::new(now));
        assert!(a.created_at() >= now && b.created_at() >= now, "{a} {b}");
        assert_ne!(a, b);
    }

    #[test]
    fn same_second_ids_sort_by_millisecond_not_by_suffix() {
        let early: BackupId = "20261122T020000.100Z-ffffff".parse().unwrap();
        let late: BackupId = "20261122T020000.900Z-000000".parse().unwrap();
        assert!(early < late);
        let mut ids = vec![late.clone(), early.clone()];
        ids.sort();
        assert_eq!(ids, vec![early.clone(), late.clone()]);
        assert_eq!(ids.iter().max(), Some(&late));
    }

    #[test]
    fn second_ids_still_parse_and_sort_with_millisecond_ids() {
        let old: BackupId = "20261122T020000Z-7f3a9c".parse().unwrap();
        assert_eq!(
            old.created_at(),
            Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap()
        );
        let before: BackupId = "20261122T015959.999Z-000000".parse().unwrap();
        let after: BackupId = "20261122T020001.000Z-000000".parse().unwrap();
        let within: BackupId = "20261122T020000.500Z-000000".parse().unwrap();
        assert!(before < old && old < after && old < within);
        // Both formats round-trip through serde as the text they were.
        let json = serde_json::to_string(&old).unwrap();
        assert_eq!(serde_json::from_str::<BackupId>(&json).unwrap(), old);
    }
}
