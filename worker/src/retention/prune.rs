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
use crate::store::{DeleteStore, ReadStore, StoreError};

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
}

/// Deletes the backups the plan marks for deletion: each manifest first, then its parts.
///
/// # Errors
/// The first store error; backups already handled stay deleted, and a backup whose
/// manifest went but whose parts did not is finished by the next run.
pub async fn execute(
    store: &dyn DeleteStore,
    items: &[PlanItem],
) -> Result<PruneOutcome, StoreError> {
    let mut outcome = PruneOutcome::default();
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
    Ok(outcome)
}
