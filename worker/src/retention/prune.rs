//! Pruning: plan with the pure policy, then delete carefully.
//!
//! - One listing of the selected targets' directories; each engine/target series gets its
//!   own decisions (a policy never spans targets).
//! - Only keys that listing returned, all under `<engine>/<target>/<id>/`, are ever deleted:
//!   other targets and unrelated files in a shared bucket are out of reach by construction.
//! - The manifest goes first, so the backup disappears atomically; its parts follow. A crash
//!   in between leaves an incomplete backup whose id is old, so the next run removes it.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::{Candidate, Decision, RetentionPolicy};
use crate::catalog::{self, CatalogError, Filter, ScannedBackup, MANIFEST_FILE};
use crate::store::{DeleteStore, PendingUpload, ReadStore, StoreError};

/// Deletions in flight at once.
const CONCURRENT_DELETES: usize = 16;

/// One backup and what the policy decided for it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub engine: String,
    pub target: String,
    #[serde(flatten)]
    pub decision: Decision,
    pub complete: bool,
    pub size_bytes: u64,
    #[serde(skip)]
    pub objects: Vec<String>,
}

/// Decides for every backup under `filter`, series by series.
///
/// # Errors
/// The store's listing error.
pub async fn plan(
    store: &dyn ReadStore,
    filter: &Filter,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<Vec<PlanItem>, CatalogError> {
    let scanned = catalog::scan(store, filter).await?;
    Ok(plan_scanned(scanned, policy, now))
}

/// [`plan`] on an existing listing (`list` shows the same decisions without listing twice).
pub fn plan_scanned(
    scanned: Vec<ScannedBackup>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Vec<PlanItem> {
    let mut out = Vec::with_capacity(scanned.len());
    // `scan` sorts by engine, target, id: each series is one contiguous run.
    for series in scanned.chunk_by(|a, b| {
        (&a.backup.engine, &a.backup.target) == (&b.backup.engine, &b.backup.target)
    }) {
        let candidates: Vec<Candidate> = series
            .iter()
            .map(|b| Candidate {
                id: b.backup.id.clone(),
                complete: b.complete,
            })
            .collect();
        for (b, decision) in series.iter().zip(policy.apply(&candidates, now)) {
            out.push(PlanItem {
                engine: b.backup.engine.clone(),
                target: b.backup.target.clone(),
                decision,
                complete: b.complete,
                size_bytes: b.size_bytes,
                objects: b.objects.clone(),
            });
        }
    }
    out
}

/// What a prune run did.
#[derive(Debug, Default, Serialize)]
pub struct PruneOutcome {
    pub deleted_backups: usize,
    pub deleted_objects: usize,
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
    let stale: Vec<PendingUpload> = match store.pending_uploads(&prefix).await {
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
    for item in items.iter().filter(|i| !i.decision.keep) {
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
        outcome.freed_bytes += item.size_bytes;
    }
    Ok(())
}
