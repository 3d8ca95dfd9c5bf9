//! Retention of the WAL archive, after `worker prune` decided which base backups stay: WAL
//! older than the oldest kept base backup's start segment serves no restore and goes; every
//! segment from there on stays, whatever the policy says, because a kept base needs all of
//! it. Timeline history files always stay (they are a few bytes and every later timeline's
//! restore reads them). A segment's superseded "current" uploads go too.
//!
//! Works from the listing alone (names carry the segment numbers), entry and signature
//! before the object, so a segment vanishes from the index before its bytes do.

use std::collections::{BTreeMap, BTreeSet};

use super::Segment;
use crate::store::{DeleteStore, StoreError};

/// What prune does to one target's archive.
#[derive(Debug, Default)]
pub struct WalPrune {
    /// The target.
    pub target: String,
    /// The oldest segment kept (its file name), when a base backup is kept.
    pub keep_from: Option<String>,
    /// Keys to delete, per file: its entry and signature before its object.
    pub delete: Vec<Vec<String>>,
    /// Segments kept.
    pub kept_segments: usize,
}

/// Targets with a WAL archive in the store, each with every key under it.
///
/// # Errors
/// The store's listing error.
pub async fn archives(
    store: &dyn crate::store::ReadStore,
    target: Option<&str>,
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let prefix = match target {
        Some(t) => super::prefix(t),
        None => "wal/postgres/".to_string(),
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in store.list(&prefix).await? {
        let rest = o.key.strip_prefix("wal/postgres/").unwrap_or_default();
        if let Some((t, _)) = rest.split_once('/') {
            out.entry(t.to_string()).or_default().push(o.key);
        }
    }
    Ok(out)
}

/// Plans the prune of one archive: `keys` is everything under it, `oldest_start` the start
/// position of the oldest base backup that stays, with its segment size (`None`: no base
/// backup stays, and nothing is deleted).
pub fn plan(target: &str, keys: &[String], oldest_start: Option<(super::Lsn, u64)>) -> WalPrune {
    let mut out = WalPrune {
        target: target.to_string(),
        ..WalPrune::default()
    };
    let Some((start, size)) = oldest_start else {
        return out;
    };
    let cutoff = start.0 / size;
    out.keep_from = Some(Segment::of(start, 1, size).name(size)[8..].to_string());
    // Segments archived whole, per timeline: their "current" uploads are superseded.
    let whole: BTreeSet<(u32, u64)> = keys
        .iter()
        .filter_map(|k| {
            let name = k.rsplit('/').next()?;
            let seg = Segment::parse(name.strip_suffix(".json")?, size)?;
            Some((seg.timeline, seg.number))
        })
        .collect();
    // Per file (segment number, timeline, the name up to ".json"/".age"): its keys.
    let mut files: BTreeMap<(u64, u32, String), Vec<String>> = BTreeMap::new();
    let mut kept = BTreeSet::new();
    for key in keys {
        let name = key.rsplit('/').next().unwrap_or_default();
        if name.len() < 24 {
            continue; // a history file, or not ours
        }
        let Some(seg) = Segment::parse(&name[..24], size) else {
            continue;
        };
        let current = name[24..].starts_with(".current-");
        let superseded = current && whole.contains(&(seg.timeline, seg.number));
        if seg.number >= cutoff && !superseded {
            kept.insert((seg.timeline, seg.number));
            continue;
        }
        // A whole segment's keys, or one "current" upload's (its ".current-<sha>" part).
        let upload = if current {
            name.get(24..45).unwrap_or_default()
        } else {
            ""
        };
        files
            .entry((seg.number, seg.timeline, upload.to_string()))
            .or_default()
            .push(key.clone());
    }
    out.kept_segments = kept.len();
    out.delete = files
        .into_values()
        .map(|mut keys| {
            // The entry and its signature first, the object last.
            keys.sort_by_key(|k| k.ends_with(".age"));
            keys
        })
        .collect();
    out
}

/// Deletes what [`plan`] chose. A file whose object the store holds (Object Lock) is kept
/// whole and reported, for a later run. Returns how many keys were deleted and the holds.
///
/// # Errors
/// A store error.
pub async fn execute(
    store: &dyn DeleteStore,
    plan: &WalPrune,
) -> Result<(usize, Vec<String>), StoreError> {
    let (mut deleted, mut held) = (0, Vec::new());
    for file in &plan.delete {
        let object = file.iter().find(|k| k.ends_with(".age"));
        if let Some(object) = object {
            if let Some(h) = store.hold(object).await? {
                held.push(format!("{object} is held by {h}"));
                continue;
            }
        }
        for key in file {
            match store.delete(key).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok((deleted, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 16 << 20;

    fn keys(names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| format!("wal/postgres/db/{}/{n}", &n[..8]))
            .collect()
    }

    #[test]
    fn deletes_wal_before_the_oldest_kept_base_and_nothing_it_needs() {
        let all = keys(&[
            "000000010000000000000003.age",
            "000000010000000000000003.json",
            "000000010000000000000003.json.minisig",
            "000000010000000000000004.age",
            "000000010000000000000004.json",
            "000000010000000000000004.json.minisig",
            "000000010000000000000005.current-0123456789ab.age",
            "000000010000000000000005.current-0123456789ab.json",
            "000000020000000000000005.age",
            "000000020000000000000005.json",
            "000000020000000000000006.current-aaaaaaaaaaaa.json",
            "00000002.history.json",
            "00000002.history.age",
        ]);
        // The oldest kept base starts inside segment 4.
        let p = plan("db", &all, Some((super::super::Lsn(4 * SIZE + 40), SIZE)));
        let deleted: Vec<Vec<&str>> = p
            .delete
            .iter()
            .map(|f| f.iter().map(|k| k.rsplit('/').next().unwrap()).collect())
            .collect();
        // The entry and its signature before the object.
        assert_eq!(
            deleted,
            vec![vec![
                "000000010000000000000003.json",
                "000000010000000000000003.json.minisig",
                "000000010000000000000003.age",
            ]]
        );
        assert_eq!(p.kept_segments, 4);
    }

    #[test]
    fn a_current_upload_superseded_by_its_whole_segment_goes() {
        let all = keys(&[
            "000000010000000000000005.json",
            "000000010000000000000005.age",
            "000000010000000000000005.current-0123456789ab.json",
            "000000010000000000000005.current-0123456789ab.age",
        ]);
        let p = plan("db", &all, Some((super::super::Lsn(SIZE), SIZE)));
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].len(), 2);
        assert!(p.delete[0].iter().all(|k| k.contains(".current-")));
    }

    #[test]
    fn without_a_kept_base_nothing_is_deleted() {
        let all = keys(&[
            "000000010000000000000001.json",
            "000000010000000000000001.age",
        ]);
        assert!(plan("db", &all, None).delete.is_empty());
    }
}
