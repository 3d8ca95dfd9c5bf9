//! Pruning: plan with the pure policy, then delete carefully.
//!
//! - One listing of the selected targets' directories, then every manifest read and
//!   checked ([`catalog::inspect`]): a damaged manifest counts for nothing. Each
//!   engine/target series gets its own decisions (a policy never spans targets).
//! - [`check_plan`] refuses a plan that would delete a target's last complete backup, or
//!   more of them than `--max-delete` allows, before anything is deleted.
//! - Only keys that listing returned, all under `<engine>/<target>/<id>/`, are ever deleted:
//!   other targets and unrelated files in a shared bucket are out of reach by construction.
//! - The manifest goes first, so the backup disappears atomically; its parts follow. A crash
//!   in between leaves an incomplete backup whose id is old, so the next run removes it.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::{Candidate, Decision, MaxDelete, RetentionPolicy};
use crate::catalog::{self, CatalogError, Filter, Inspected, Status, MANIFEST_FILE};
use crate::store::{DeleteStore, PendingUpload, ReadStore, StoreError};

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
    Ok(plan_inspected(&inspected, policy, now))
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
        for (b, decision) in series.iter().zip(policy.apply(&candidates, now)) {
            out.push(PlanItem {
                engine: b.scanned.backup.engine.clone(),
                target: b.scanned.backup.target.clone(),
                decision,
                status: b.status,
                complete: b.status == Status::Complete,
                size_bytes: b.scanned.size_bytes,
                objects: b.scanned.objects.clone(),
            });
        }
    }
    out
}

/// A plan prune will not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneRefused {
    /// The plan would delete a series' last complete backup.
    #[error("prune refused: the plan deletes every complete backup of {series} ({good} of {good}); nothing was deleted. The policy never plans that by itself: check the backups with `kubectl dr list --all`")]
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
