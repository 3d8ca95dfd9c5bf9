//! PostgreSQL point-in-time recovery: the WAL archive beside the physical base backups.
//!
//! - [`archive`]: `worker archive postgres`, a long-running process that streams WAL over
//!   the replication protocol (`pg_receivewal`) and stores each segment, and the partial
//!   segment every half `--max-lag`, through zstd and age.
//! - [`base`]: `worker backup postgres --physical`, `pg_basebackup` through the pipeline.
//! - [`fetch`]: `kubectl dr wal-fetch %f %p`, PostgreSQL's `restore_command`.
//! - [`pitr`]: `kubectl dr restore --time … --to-datadir DIR` and `verify --wal`.
//! - [`prune`]: WAL no kept base backup needs.
//! - [`rekey`]: the archive re-encrypted to new recipients.
//! - [`records`]: what a segment holds (its valid end, its transaction end times).
//!
//! Layout in the store, beside the backups and outside their listing:
//! `wal/postgres/<target>/<timeline>/<file>.age` holds the encrypted file PostgreSQL asks
//! for (a segment, or a timeline's `.history`); `<file>.json` is its index entry (what it
//! is, its sha256, the WAL positions and transaction times in it) and `<file>.json.minisig`
//! the entry's signature. The segment being written (PostgreSQL's "partial" segment) is
//! stored as `<segment>.current-<sha>.age` with its entry: each upload is a new object, so
//! an entry never points at bytes that changed under it, and the previous one is deleted
//! once the newer one is stored. (Not `.partial-`: the local store marks its own unfinished
//! uploads so.)

pub mod archive;
pub mod base;
pub mod fetch;
pub mod pitr;
pub mod prune;
pub mod records;
pub mod rekey;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::signature::{Signature, MAX_SIGNATURE_BYTES};
use crate::catalog::{Compression, Trust};
use crate::store::{ReadStore, StoreError};

/// The version of the entry format this build writes and reads.
pub const ENTRY_FORMAT: u32 = 1;
/// Largest entry read (they are a few hundred bytes).
const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// Entries read at once.
const CONCURRENT_READS: usize = 16;

/// A WAL position (`0/3000028`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a WAL position (expected e.g. 0/3000028)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(u64::from(hi) << 32 | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One WAL segment file: its timeline and number (`wal_segment_size` fixes the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// Timeline.
    pub timeline: u32,
    /// Segment number from the start of WAL.
    pub number: u64,
}

impl Segment {
    /// The segment holding `lsn` on `timeline`.
    pub fn of(lsn: Lsn, timeline: u32, size: u64) -> Self {
        Segment {
            timeline,
            number: lsn.0 / size,
        }
    }

    /// Its file name, as PostgreSQL names it.
    pub fn name(&self, size: u64) -> String {
        let per_id = 0x1_0000_0000 / size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_id,
            self.number % per_id
        )
    }

    /// Parses a segment file name (24 hex digits).
    pub fn parse(name: &str, size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let n = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).ok();
        let per_id = 0x1_0000_0000 / size;
        let (id, seg) = (n(8..16)?, n(16..24)?);
        (seg < per_id).then_some(Segment {
            timeline: u32::try_from(n(0..8)?).ok()?,
            number: id * per_id + seg,
        })
    }

    /// The position where it starts.
    pub fn start(&self, size: u64) -> Lsn {
        Lsn(self.number * size)
    }
}

/// True for `00000002.history`.
pub fn is_history_name(name: &str) -> bool {
    name.len() == 16
        && name.ends_with(".history")
        && name[..8].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The WAL archive's directory of a target, relative to the store's prefix.
pub fn prefix(target: &str) -> String {
    format!("wal/postgres/{target}/")
}

/// A timeline's directory.
pub fn timeline_dir(target: &str, timeline: u32) -> String {
    format!("{}{timeline:08X}/", prefix(target))
}

/// What an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A whole segment.
    Segment,
    /// The segment being written, as far as it was received (zeros after `end_lsn`).
    Partial,
    /// A timeline's history file.
    History,
}

/// One archived file's index entry (`<file>.json`), signed like a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// [`ENTRY_FORMAT`].
    pub format: u32,
    /// The target whose WAL this is.
    pub target: String,
    /// The file PostgreSQL asks `restore_command` for.
    pub file: String,
    /// What it is.
    pub kind: EntryKind,
    /// The ciphertext object's name in the timeline's directory.
    pub object: String,
    /// The timeline.
    pub timeline: u32,
    /// `wal_segment_size`.
    pub segment_bytes: u64,
    /// Where the file's WAL starts (segments).
    pub start_lsn: Lsn,
    /// Where its valid WAL ends: the segment's end for a whole one, what was received for a
    /// partial one.
    pub end_lsn: Lsn,
    /// Compression under the encryption.
    pub compression: Compression,
    /// Size of the stored object.
    pub ciphertext_bytes: u64,
    /// Hex sha256 of the stored object.
    pub ciphertext_sha256: String,
    /// Size of the file.
    pub plaintext_bytes: u64,
    /// Hex sha256 of the file (a re-upload of the same bytes is skipped).
    pub plaintext_sha256: String,
    /// Time of its first transaction end (commit or abort), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_xact_end: Option<DateTime<Utc>>,
    /// Time of its last transaction end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_xact_end: Option<DateTime<Utc>>,
    /// Time of its last commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<DateTime<Utc>>,
    /// History files: each ancestor timeline and where this timeline branched off it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<(u32, Lsn)>,
    /// When it was stored.
    pub archived_at: DateTime<Utc>,
    /// The server's system identifier (a restore refuses WAL of another cluster).
    pub system_identifier: String,
}

impl Entry {
    /// The entry's own object name in its timeline's directory.
    pub fn name(&self) -> String {
        match self.kind {
            EntryKind::Partial => format!(
                "{}.current-{}.json",
                self.file,
                &self.plaintext_sha256[..12.min(self.plaintext_sha256.len())]
            ),
            _ => format!("{}.json", self.file),
        }
    }

    /// Key of the entry.
    pub fn key(&self) -> String {
        format!(
            "{}{}",
            timeline_dir(&self.target, self.timeline),
            self.name()
        )
    }

    /// Key of the encrypted file.
    pub fn object_key(&self) -> String {
        format!(
            "{}{}",
            timeline_dir(&self.target, self.timeline),
            self.object
        )
    }

    /// The segment, for segments and partial segments.
    pub fn segment(&self) -> Option<Segment> {
        Segment::parse(&self.file, self.segment_bytes)
    }

    /// Checks that an entry read from `key` describes what that key is for, so a signed
    /// entry cannot be moved to stand for another file.
    fn matches_key(&self, key: &str, target: &str) -> Result<(), String> {
        if self.format > ENTRY_FORMAT {
            return Err(format!(
                "entry format {} is newer than this kubectl-dr knows ({ENTRY_FORMAT}); upgrade it",
                self.format
            ));
        }
        if self.target != target || self.key() != key {
            return Err(format!(
                "the entry describes {} of target {}, not the file its name says",
                self.file, self.target
            ));
        }
        let plain_name = |n: &str| !n.contains('/') && crate::store::segment_is_safe(n);
        if !plain_name(&self.object) || !self.object.starts_with(&self.file) {
            return Err(format!(
                "the entry's object name {:?} is not valid",
                self.object
            ));
        }
        let ok = match self.kind {
            EntryKind::History => is_history_name(&self.file),
            _ => self.segment().is_some_and(|s| {
                s.timeline == self.timeline && s.start(self.segment_bytes) == self.start_lsn
            }),
        };
        // PostgreSQL's segments are 1 MiB to 1 GiB; a file is never larger than one (this
        // also bounds what a reader holds in memory for an entry it was told to trust).
        let sized = self.segment_bytes.is_power_of_two()
            && (1 << 20..=1 << 30).contains(&self.segment_bytes)
            && self.plaintext_bytes <= self.segment_bytes
            && self.ciphertext_bytes <= self.segment_bytes + (1 << 20);
        if !ok || !sized {
            return Err(format!("the entry for {} is not consistent", self.file));
        }
        Ok(())
    }
}

/// Errors reading the WAL archive.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing archived for the target.
    #[error("the store holds no WAL of postgres/{target} (under {prefix}): is `worker archive postgres --target {target}` running?")]
    Empty {
        /// The target.
        target: String,
        /// Where it was looked for.
        prefix: String,
    },
}

/// One entry read from the store, with what its signature says.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The entry.
    pub entry: Entry,
    /// Why the trust settings refuse it (unsigned, a stranger's key, altered), if they do.
    pub refused: Option<String>,
    /// What the signature says.
    pub signature: Signature,
}

/// Every entry of a target's archive.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// The target.
    pub target: String,
    /// Entries by timeline and file; partial segments only where no whole one exists (the
    /// newest of them).
    pub entries: BTreeMap<(u32, String), Loaded>,
    /// Entries that do not parse or do not fit their key: `(key, reason)`.
    pub broken: Vec<(String, String)>,
    /// Keys of partial entries superseded by a whole segment or a newer partial (prune).
    pub superseded: Vec<Entry>,
}

/// Reads every entry of `target`'s archive and judges its signature.
///
/// # Errors
/// The store's errors; [`WalError::Empty`] when nothing is archived.
pub async fn load(store: &dyn ReadStore, target: &str, trust: &Trust) -> Result<Archive, WalError> {
    use futures::StreamExt;
    let listed = store.list(&prefix(target)).await?;
    if listed.is_empty() {
        return Err(WalError::Empty {
            target: target.to_string(),
            prefix: prefix(target),
        });
    }
    let keys: std::collections::BTreeSet<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    let entry_keys: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| k.ends_with(".json"))
        .collect();
    let keys = &keys;
    let read = futures::stream::iter(entry_keys.iter().map(|key| async move {
        let body = store.get_bytes(key, MAX_ENTRY_BYTES).await;
        let sig = read_signatures(store, key, Some(keys)).await;
        (*key, body, sig)
    }))
    .buffer_unordered(CONCURRENT_READS)
    .collect::<Vec<_>>()
    .await;
    let mut archive = Archive {
        target: target.to_string(),
        ..Archive::default()
    };
    let mut partials: Vec<Loaded> = Vec::new();
    for (key, body, sig) in read {
        let body = match body {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let sigs = sig?;
        let entry: Entry = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => {
                archive
                    .broken
                    .push((key.to_string(), format!("does not parse: {e}")));
                continue;
            }
        };
        if let Err(reason) = entry.matches_key(key, target) {
            archive.broken.push((key.to_string(), reason));
            continue;
        }
        let signature = judge(trust, &body, &sigs);
        let refused = trust.refusal(&signature);
        let loaded = Loaded {
            entry,
            refused,
            signature,
        };
        if loaded.entry.kind == EntryKind::Partial {
            partials.push(loaded);
        } else {
            archive
                .entries
                .insert((loaded.entry.timeline, loaded.entry.file.clone()), loaded);
        }
    }
    // The newest partial of a segment counts, and only while the whole segment is missing.
    partials.sort_by(|a, b| {
        (a.entry.end_lsn, a.entry.archived_at).cmp(&(b.entry.end_lsn, b.entry.archived_at))
    });
    for p in partials.into_iter().rev() {
        let slot = (p.entry.timeline, p.entry.file.clone());
        match archive.entries.entry(slot) {
            std::collections::btree_map::Entry::Occupied(_) => archive.superseded.push(p.entry),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(p);
            }
        }
    }
    Ok(archive)
}

/// The signature files beside an entry: `.minisig`, and `.minisig.prev`, which a rekey
/// keeps while it swaps the entry (the old entry's signature). With `listed`, only those
/// the listing holds are read.
pub(crate) async fn read_signatures(
    store: &dyn ReadStore,
    key: &str,
    listed: Option<&std::collections::BTreeSet<&str>>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    for k in [format!("{key}.minisig"), format!("{key}.minisig.prev")] {
        if listed.is_some_and(|l| !l.contains(k.as_str())) {
            continue;
        }
        match store.get_bytes(&k, MAX_SIGNATURE_BYTES).await {
            Ok(b) => out.push(b),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What the signatures say of an entry's bytes (the first valid one wins).
pub(crate) fn judge(trust: &Trust, body: &[u8], sigs: &[Vec<u8>]) -> Signature {
    let files: Vec<Option<&[u8]>> = sigs.iter().map(|s| Some(s.as_slice())).collect();
    trust.signers.judge(body, &files)
}

impl Archive {
    /// The newest timeline archived.
    pub fn newest_timeline(&self) -> Option<u32> {
        self.entries.keys().map(|(t, _)| *t).max()
    }

    /// The way from timeline 1 to `timeline`: each timeline with the position where it
    /// begins (its history file says where it branched off its parent).
    ///
    /// # Errors
    /// A timeline above 1 whose history file is not archived.
    pub fn path_to(&self, timeline: u32) -> Result<Vec<(u32, Lsn)>, String> {
        if timeline == 1 {
            return Ok(vec![(1, Lsn(0))]);
        }
        let file = format!("{timeline:08X}.history");
        let history = self
            .entries
            .get(&(timeline, file.clone()))
            .ok_or_else(|| format!("timeline {timeline}'s history file {file} is not archived"))?;
        let mut path = Vec::new();
        let mut begin = Lsn(0);
        for (tli, switch) in &history.entry.history {
            path.push((*tli, begin));
            begin = *switch;
        }
        path.push((timeline, begin));
        Ok(path)
    }

    /// The segments a recovery reads from `from` on, along `path`, as far as they are
    /// archived without a gap; and the first missing segment when segments after it exist.
    pub fn chain(&self, path: &[(u32, Lsn)], from: Lsn, size: u64) -> Chain<'_> {
        let timeline_of = |number: u64| {
            path.iter()
                .rev()
                .find(|(_, begin)| begin.0 / size <= number)
                .map_or(path[0].0, |(t, _)| *t)
        };
        let on_path: Vec<&Loaded> = self
            .entries
            .values()
            .filter(|l| {
                l.entry
                    .segment()
                    .is_some_and(|s| timeline_of(s.number) == s.timeline)
            })
            .collect();
        let newest = on_path
            .iter()
            .filter_map(|l| l.entry.segment())
            .map(|s| s.number)
            .max();
        let mut chain = Chain::default();
        let Some(newest) = newest else {
            return chain;
        };
        let mut number = from.0 / size;
        while number <= newest {
            let seg = Segment {
                timeline: timeline_of(number),
                number,
            };
            match self.entries.get(&(seg.timeline, seg.name(size))) {
                Some(l) => {
                    chain.segments.push(l);
                    if l.entry.kind == EntryKind::Partial {
                        break;
                    }
                }
                None => {
                    chain.gap = Some(seg.name(size));
                    chain.resumes = on_path
                        .iter()
                        .filter_map(|l| l.entry.segment().filter(|s| s.number > number))
                        .min_by_key(|s| s.number)
                        .map(|s| s.name(size));
                    break;
                }
            }
            number += 1;
        }
        chain
    }
}

/// What a recovery can read: segments in order without a gap.
#[derive(Debug, Default)]
pub struct Chain<'a> {
    /// The segments, in order (the last may be partial).
    pub segments: Vec<&'a Loaded>,
    /// The first missing segment, when the archive holds later ones.
    pub gap: Option<String>,
    /// The next archived segment after the gap.
    pub resumes: Option<String>,
}

impl Chain<'_> {
    /// The newest transaction end in the chain.
    pub fn last_xact_end(&self) -> Option<DateTime<Utc>> {
        self.segments
            .iter()
            .filter_map(|l| l.entry.last_xact_end)
            .max()
    }

    /// The newest commit in the chain.
    pub fn last_commit(&self) -> Option<DateTime<Utc>> {
        self.segments
            .iter()
            .filter_map(|l| l.entry.last_commit)
            .max()
    }

    /// Where its valid WAL ends.
    pub fn end(&self) -> Option<Lsn> {
        self.segments.last().map(|l| l.entry.end_lsn)
    }

    /// When the archive last stored a file of the chain.
    pub fn archived_at(&self) -> Option<DateTime<Utc>> {
        self.segments.iter().map(|l| l.entry.archived_at).max()
    }
}

/// Microseconds since the Unix epoch as a time.
pub(crate) fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 16 << 20;

    #[test]
    fn segment_names_round_trip_as_postgresql_writes_them() {
        let s = Segment::of("1/2A000028".parse().unwrap(), 3, SIZE);
        assert_eq!(s.name(SIZE), "00000003000000010000002A");
        assert_eq!(Segment::parse("00000003000000010000002A", SIZE), Some(s));
        assert_eq!(s.start(SIZE).to_string(), "1/2A000000");
        // 1 GiB segments: four per xlogid.
        let big = 1 << 30;
        assert_eq!(
            Segment::of(Lsn(5 << 30), 1, big).name(big),
            "000000010000000100000001"
        );
        assert_eq!(Segment::parse("000000010000000000000100", SIZE), None);
        assert!("0/ZZ".parse::<Lsn>().is_err());
        assert!(is_history_name("00000002.history"));
        assert!(!is_history_name("00000002.historyx"));
    }

    fn entry(tli: u32, number: u64, kind: EntryKind, history: Vec<(u32, Lsn)>) -> Loaded {
        let seg = Segment {
            timeline: tli,
            number,
        };
        let file = if kind == EntryKind::History {
            format!("{tli:08X}.history")
        } else {
            seg.name(SIZE)
        };
        Loaded {
            entry: Entry {
                format: 1,
                target: "t".into(),
                object: format!("{file}.age"),
                file,
                kind,
                timeline: tli,
                segment_bytes: SIZE,
                start_lsn: seg.start(SIZE),
                end_lsn: Lsn(seg.start(SIZE).0 + SIZE),
                compression: Compression::Zstd,
                ciphertext_bytes: 1,
                ciphertext_sha256: String::new(),
                plaintext_bytes: 1,
                plaintext_sha256: "0".repeat(64),
                first_xact_end: None,
                last_xact_end: None,
                last_commit: None,
                history,
                archived_at: Utc::now(),
                system_identifier: "1".into(),
            },
            refused: None,
            signature: Signature::Unsigned,
        }
    }

    fn archive(entries: Vec<Loaded>) -> Archive {
        Archive {
            target: "t".into(),
            entries: entries
                .into_iter()
                .map(|l| ((l.entry.timeline, l.entry.file.clone()), l))
                .collect(),
            ..Archive::default()
        }
    }

    #[test]
    fn a_chain_follows_the_timelines_and_names_its_gap() {
        // Timeline 2 branched off 1 inside segment 5: from 5 on, its files are read.
        let switch = Lsn(5 * SIZE + 100);
        let mut all: Vec<Loaded> = (2..=6)
            .map(|n| entry(1, n, EntryKind::Segment, vec![]))
            .collect();
        all.extend((5..=7).map(|n| entry(2, n, EntryKind::Segment, vec![])));
        all.push(entry(2, 0, EntryKind::History, vec![(1, switch)]));
        let a = archive(all);
        let path = a.path_to(2).unwrap();
        assert_eq!(path, vec![(1, Lsn(0)), (2, switch)]);
        let c = a.chain(&path, Lsn(2 * SIZE + 40), SIZE);
        let names: Vec<_> = c
            .segments
            .iter()
            .map(|l| (l.entry.timeline, l.entry.segment().unwrap().number))
            .collect();
        assert_eq!(names, vec![(1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7)]);
        assert!(c.gap.is_none());

        // Segment 4 deleted: the chain stops before it and names it and what comes next.
        let mut a = a;
        a.entries.remove(&(
            1,
            Segment {
                timeline: 1,
                number: 4,
            }
            .name(SIZE),
        ));
        let c = a.chain(&path, Lsn(2 * SIZE), SIZE);
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.gap.as_deref(), Some("000000010000000000000004"));
        assert_eq!(c.resumes.as_deref(), Some("000000020000000000000005"));
        assert!(a.path_to(3).unwrap_err().contains("00000003.history"));
    }

    #[test]
    fn a_partial_segment_ends_the_chain() {
        let a = archive(vec![
            entry(1, 1, EntryKind::Segment, vec![]),
            entry(1, 2, EntryKind::Partial, vec![]),
        ]);
        let c = a.chain(&[(1, Lsn(0))], Lsn(SIZE), SIZE);
        assert_eq!(c.segments.len(), 2);
        assert_eq!(c.segments[1].entry.kind, EntryKind::Partial);
    }
}
