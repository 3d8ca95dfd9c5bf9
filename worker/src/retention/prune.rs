//! Pruning: plan with the pure policy, then delete carefully.
//!
//! - One listing of the selected targets' directories, then every manifest read and
//!   checked ([`catalog::inspect`]): a damaged manifest counts for nothing. Each
//!   engine/target series gets its own decisions (a policy never spans targets).
//! - [`check_plan`] refuses a plan that would delete a target's last complete backup, or
//!   more of them than `--max-delete` allows, before anything is deleted.
//! - Only keys that listing returned, all under `<engine>/<target>/<id>/`, are ever deleted:
//!   other targets and unrelated files in a shared bucket are out of reach by construction.
//! - Object Lock: before anything is deleted, every object of every backup the policy would
//!   delete is checked ([`ReadStore::hold`]); a backup with any object still retained or
//!   under a legal hold is kept and reported as held, with the date. So prune never
//!   attempts what the lock forbids, and never half-deletes a held backup.
//! - The manifest goes first, then its parts (the signature among them). A crash in
//!   between leaves an incomplete backup whose id is old, which the next run removes: the
//!   other order would leave a manifest that lists missing parts, a backup that still
//!   looks complete (and could be chosen as `latest`) but cannot be restored.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::{Candidate, Decision, MaxDelete, RetentionPolicy};
use crate::catalog::{self, CatalogError, Filter, Inspected, Status, MANIFEST_FILE};
use crate::store::{DeleteStore, Hold, PendingUpload, ReadStore, StoreError};

/// Deletions in flight at once.
const CONCURRENT_DELETES: usize = 16;

/// One backup and what the policy decided for it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    /// Its engine.
    pub engine: String,
    /// Its target.
    pub target: String,
    /// Keep or delete, and why.
    #[serde(flatten)]
    pub decision: Decision,
    /// Complete, incomplete or damaged.
    pub status: Status,
    /// True for a complete backup (kept for scripts written before `status`).
    pub complete: bool,
    /// Bytes its objects take.
    pub size_bytes: u64,
    /// What keeps a backup the policy would delete: an object lock or a legal hold on one
    /// of its objects (the latest date of them all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Hold>,
    /// Keys of its objects.
    #[serde(skip)]
    pub objects: Vec<String>,
}

/// Decides for every backup under `filter`, series by series.
///
/// # Errors
/// The store's listing or reading error.
pub async fn plan(
    store: &dyn ReadStore,
    filter: &Filter,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    trust: &catalog::Trust,
) -> Result<Vec<PlanItem>, CatalogError> {
    let scanned = catalog::scan(store, filter).await?;
    let inspected = catalog::inspect_all(store, scanned, now, policy.max_clock_skew, trust).await?;
    let mut items = plan_inspected(&inspected, policy, now);
    apply_holds(store, &mut items).await?;
    Ok(items)
}

/// Keeps (and marks as held) every backup the policy would delete while any of its
/// objects is locked.
async fn apply_holds(store: &dyn ReadStore, items: &mut [PlanItem]) -> Result<(), StoreError> {
    for item in items
        .iter_mut()
        .filter(|i| !i.decision.keep && i.status != Status::Damaged)
    {
        let holds: Vec<Result<Option<Hold>, StoreError>> = stream::iter(&item.objects)
            .map(|key| store.hold(key))
            .buffer_unordered(CONCURRENT_DELETES)
            .collect()
            .await;
        let mut strongest: Option<Hold> = None;
        for hold in holds {
            let hold = match hold {
                Ok(h) => h,
                // Gone since the listing (a concurrent prune): nothing holds it.
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(h) = hold {
                strongest = Some(match strongest {
                    None => h,
                    Some(s) => Hold {
                        until: s.until.max(h.until),
                        mode: s.mode.or(h.mode),
                        legal_hold: s.legal_hold || h.legal_hold,
                    },
                });
            }
        }
        if let Some(h) = strongest {
            item.decision.keep = true;
            item.decision
                .reasons
                .push(format!("held by {h}; a later prune deletes it"));
            item.held = Some(h);
        }
    }
    Ok(())
}

/// [`plan`] on backups already inspected (`list` shows the same decisions without reading
/// twice).
pub fn plan_inspected(
    inspected: &[Inspected],
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Vec<PlanItem> {
    let mut out = Vec::with_capacity(inspected.len());
    // `scan` sorts by engine, target, id: each series is one contiguous run.
    for series in inspected.chunk_by(|a, b| {
        let (a, b) = (&a.scanned.backup, &b.scanned.backup);
        (&a.engine, &a.target) == (&b.engine, &b.target)
    }) {
        let candidates: Vec<Candidate> = series
            .iter()
            .map(|b| Candidate {
                id: b.scanned.backup.id.clone(),
                status: b.status,
                problem: b.problem.clone(),
            })
            .collect();
        let mut decisions = policy.apply(&candidates, now);
        keep_bases(series, &mut decisions);
        for (b, decision) in series.iter().zip(decisions) {
            out.push(PlanItem {
                engine: b.scanned.backup.engine.clone(),
                target: b.scanned.backup.target.clone(),
                decision,
                status: b.status,
                complete: b.status == Status::Complete,
                size_bytes: b.scanned.size_bytes,
                held: None,
                objects: b.scanned.objects.clone(),
            });
        }
    }
    out
}

/// Keeps every backup whose objects a kept backup of the series references (an
/// incremental backup's bases), whatever the policy said: deleting one would break a
/// backup that stays. References name the backup holding each object, so one pass finds
/// the whole chain.
fn keep_bases(series: &[Inspected], decisions: &mut [Decision]) {
    let mut needed: std::collections::BTreeMap<&catalog::BackupId, Vec<&catalog::BackupId>> =
        std::collections::BTreeMap::new();
    for (b, d) in series.iter().zip(decisions.iter()) {
        if let (true, Some(m)) = (d.keep, &b.manifest) {
            for base in m.parts.iter().filter_map(|p| p.from.as_ref()) {
                let by = needed.entry(base).or_default();
                if !by.contains(&&m.id) {
                    by.push(&m.id);
                }
            }
        }
    }
    for (b, d) in series.iter().zip(decisions.iter_mut()) {
        if let (false, Some(by)) = (d.keep, needed.get(&b.scanned.backup.id)) {
            d.keep = true;
            let by: Vec<String> = by.iter().map(ToString::to_string).collect();
            d.reasons = vec![format!("kept: base of {}", by.join(", "))];
        }
    }
}

/// A plan prune will not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneRefused {
    /// The plan would delete a series' last complete backup.
    #[error("prune refused: the plan deletes every complete backup of {series} ({good} of {good}); nothing was deleted. The policy never plans that by itself: check the backups with `kubectl dr list --include-incomplete`")]
    LastGood {
        /// The series (`engine/target`).
        series: String,
        /// Its complete backups.
        good: usize,
    },
    /// The plan would delete more than `--max-delete` allows.
    #[error("prune refused: the plan deletes {delete} of the {good} complete backups of {series}, more than --max-delete {max} allows; nothing was deleted. Check the decisions with --dry-run, then raise --max-delete (e.g. --max-delete 100%) if they are intended")]
    TooMany {
        /// The series (`engine/target`).
        series: String,
        /// Complete backups the plan deletes.
        delete: usize,
        /// Its complete backups.
        good: usize,
        /// The `--max-delete` limit.
        max: MaxDelete,
    },
}

/// Checks a plan before anything is deleted: per engine/target, at least one complete
/// backup stays, and at most `max` of the complete ones go. Incomplete backups (failed
/// runs past their grace) do not count toward the limit.
///
/// # Errors
/// [`PruneRefused`] naming the first series that breaks a rule.
pub fn check_plan(items: &[PlanItem], max: MaxDelete) -> Result<(), PruneRefused> {
    for series in items.chunk_by(|a, b| (&a.engine, &a.target) == (&b.engine, &b.target)) {
        let good = series
            .iter()
            .filter(|i| i.status == Status::Complete)
            .count();
        let delete = series
            .iter()
            .filter(|i| i.status == Status::Complete && !i.decision.keep)
            .count();
        let name = format!("{}/{}", series[0].engine, series[0].target);
        if good > 0 && delete == good {
            return Err(PruneRefused::LastGood { series: name, good });
        }
        if delete > max.allowed(good) {
            return Err(PruneRefused::TooMany {
                series: name,
                delete,
                good,
                max,
            });
        }
    }
    Ok(())
}

/// What a prune run did.
#[derive(Debug, Default, Serialize)]
pub struct PruneOutcome {
    /// Backups deleted.
    pub deleted_backups: usize,
    /// Objects deleted.
    pub deleted_objects: usize,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Unfinished uploads older than the grace period that were aborted.
    pub aborted_uploads: usize,
    /// Set when the store could not list unfinished uploads (not an error: said once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads_note: Option<String>,
}

/// Aborts unfinished uploads under the filter's directories that started before `cutoff`
/// (a writer that crashed or was killed without cleaning up). Younger ones may belong to a
/// backup that is running now and are left alone.
///
/// # Errors
/// Transport or permission errors; a store that cannot list uploads is noted in the outcome.
pub async fn abort_stale_uploads(
    store: &dyn DeleteStore,
    filter: &Filter,
    cutoff: DateTime<Utc>,
    dry_run: bool,
    outcome: &mut PruneOutcome,
) -> Result<Vec<PendingUpload>, StoreError> {
    let prefix = filter.list_prefix();
    let stale: Vec<PendingUpload> = match ReadStore::pending_uploads(store, &prefix).await {
        Ok(all) => all.into_iter().filter(|u| u.started < cutoff).collect(),
        Err(e @ StoreError::Unsupported { .. }) => {
            outcome.uploads_note = Some(e.to_string());
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    if !dry_run {
        for upload in &stale {
            store.abort_upload(upload).await?;
            tracing::info!(key = %upload.key, started = %upload.started, "aborted unfinished upload");
            outcome.aborted_uploads += 1;
        }
    }
    Ok(stale)
}

/// Deletes the backups the plan marks for deletion: each manifest first, then its parts.
///
/// # Errors
/// The first store error; backups already handled stay deleted, and a backup whose
/// manifest went but whose parts did not is finished by the next run.
pub async fn execute(
    store: &dyn DeleteStore,
    items: &[PlanItem],
    outcome: &mut PruneOutcome,
) -> Result<(), StoreError> {
    // Damaged backups are always kept by the policy; this holds even for a hand-made plan.
    for item in items
        .iter()
        .filter(|i| !i.decision.keep && i.status != Status::Damaged)
    {
        let dir = format!("{}/{}/{}/", item.engine, item.target, item.decision.id);
        debug_assert!(item.objects.iter().all(|k| k.starts_with(&dir)));
        let (manifest, parts): (Vec<&String>, Vec<&String>) = item
            .objects
            .iter()
            .filter(|k| k.starts_with(&dir))
            .partition(|k| k.ends_with(&format!("/{MANIFEST_FILE}")));
        for key in manifest {
            store.delete(key).await?;
        }
        let results: Vec<Result<(), StoreError>> = stream::iter(parts)
            .map(|key| store.delete(key))
            .buffer_unordered(CONCURRENT_DELETES)
            .collect()
            .await;
        for r in results {
            r?;
        }
        tracing::info!(backup = %format!("{}/{}/{}", item.engine, item.target, item.decision.id), reasons = ?item.decision.reasons, "deleted");
        outcome.deleted_backups += 1;
        outcome.deleted_objects += item.objects.len();
        outcome.freed_bytes = outcome.freed_bytes.saturating_add(item.size_bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(target: &str, day: u32, status: Status, keep: bool) -> PlanItem {
        PlanItem {
            engine: "postgres".into(),
            target: target.into(),
            decision: Decision {
                id: format!("202611{day:02}T020000Z-000001").parse().unwrap(),
                keep,
                reasons: vec![],
            },
            status,
            complete: status == Status::Complete,
            size_bytes: 1,
            held: None,
            objects: vec![],
        }
    }

    #[test]
    fn a_plan_that_deletes_the_last_good_backup_is_refused() {
        let plan = [
            item("a", 1, Status::Complete, false),
            item("a", 2, Status::Complete, false),
            item("a", 3, Status::Damaged, true),
        ];
        let err = check_plan(&plan, MaxDelete::Percent(100.0)).unwrap_err();
        assert!(
            matches!(err, PruneRefused::LastGood { good: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn max_delete_counts_complete_backups_per_series() {
        let plan = [
            item("a", 1, Status::Complete, false),
            item("a", 2, Status::Complete, false),
            item("a", 3, Status::Complete, true),
            item("a", 4, Status::Incomplete, false),
            item("b", 1, Status::Complete, false),
            item("b", 2, Status::Complete, true),
        ];
        let err = check_plan(&plan, MaxDelete::Percent(50.0)).unwrap_err();
        assert!(
            matches!(&err, PruneRefused::TooMany { series, delete: 2, good: 3, .. } if series == "postgres/a"),
            "{err}"
        );
        assert!(err.to_string().contains("--max-delete"), "{err}");
        check_plan(&plan, MaxDelete::Backups(2)).unwrap();
        check_plan(&plan[4..], MaxDelete::Percent(50.0)).unwrap();
    }
}
