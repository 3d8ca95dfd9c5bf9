//! `worker copy`: the off-site copy of a 3-2-1 setup. Every complete backup of the source
//! store that the destination lacks is copied as it is stored: ciphertext, signature and
//! manifest, byte for byte, so the copy job holds no age identity and a copy verifies and
//! restores exactly like the original.
//!
//! A copy is a commit by the same rule as a backup: the parts first, each hashed as it
//! streams and completed at the destination only when its size and sha256 are the ones the
//! manifest records (a damaged source object is never completed, so nothing of it becomes
//! visible); then the signature; the manifest last. A copy killed anywhere leaves at most
//! parts without a manifest, invisible to every reader, and a rerun skips the parts that
//! are there with their recorded size (a completed object was checked before it completed).
//!
//! Manifests are judged at the source as every reader judges them: a damaged backup, or one
//! whose signature the trusted signers refuse, is not copied and is reported. An
//! incremental backup needs the backups holding its references: they are copied first
//! (oldest first), and one that cannot be copied stops its dependents.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    self, signature, BackupId, BackupRef, CatalogError, Filter, Manifest, Status, Trust,
};
use crate::store::{BodyChunk, ReadStore, StoreError, WriteStore};

/// Bytes read from the source per chunk.
const CHUNK: usize = 1024 * 1024;

/// What to copy, from where to where.
pub struct Copy<'a> {
    /// The store backups are copied from (read only).
    pub from: &'a dyn ReadStore,
    /// The store they are copied to (written, never deleted from).
    pub to: &'a dyn WriteStore,
    /// Which signatures a backup must carry to be copied.
    pub trust: Trust,
    /// Which series.
    pub filter: Filter,
    /// Only backups started at or after this (their bases are copied whatever their age).
    pub since: Option<DateTime<Utc>>,
    /// Stops the copy (SIGTERM): the upload in flight is aborted.
    pub cancel: CancellationToken,
}

/// What a copy did.
#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Backups copied now.
    pub copied: Vec<Copied>,
    /// Backups the destination held already.
    pub present: usize,
    /// Backups not copied, and why (exit 1).
    pub refused: Vec<Refused>,
    /// Per engine and target, what the destination holds now.
    pub series: Vec<Series>,
}

/// One engine/target's outcome, for its metrics.
#[derive(Debug, Serialize)]
pub struct Series {
    /// The engine.
    pub engine: String,
    /// The target.
    pub target: String,
    /// Backups copied now.
    pub copied: usize,
    /// Bytes uploaded now.
    pub bytes: u64,
    /// Backups not copied.
    pub refused: usize,
}

impl CopyReport {
    /// Fills [`CopyReport::series`] from the backups copied and refused, and every series
    /// of the selection (a series with nothing to copy is whole, and says so).
    fn tally(&mut self, all: &BTreeSet<(String, String)>) {
        let of = |backup: &str| {
            let mut s = backup.splitn(3, '/');
            (
                s.next().unwrap_or("").to_string(),
                s.next().unwrap_or("").to_string(),
            )
        };
        self.series = all
            .iter()
            .map(|(engine, target)| {
                let key = (engine.clone(), target.clone());
                let copied: Vec<&Copied> = self
                    .copied
                    .iter()
                    .filter(|c| of(&c.backup) == key)
                    .collect();
                Series {
                    engine: engine.clone(),
                    target: target.clone(),
                    copied: copied.len(),
                    bytes: copied.iter().map(|c| c.bytes).sum(),
                    refused: self.refused.iter().filter(|r| of(&r.backup) == key).count(),
                }
            })
            .collect();
    }
}

/// One backup copied.
#[derive(Debug, Serialize)]
pub struct Copied {
    /// `engine/target/id`.
    pub backup: String,
    /// Parts uploaded now (a rerun skips those already there).
    pub parts: usize,
    /// Bytes uploaded now.
    pub bytes: u64,
}

/// One backup not copied.
#[derive(Debug, Serialize)]
pub struct Refused {
    /// `engine/target/id`.
    pub backup: String,
    /// Why.
    pub why: String,
}

/// `kube_dr_copy_success`.
pub const SUCCESS: &str = "kube_dr_copy_success";
/// `kube_dr_copy_last_success_timestamp_seconds`.
pub const LAST_SUCCESS: &str = "kube_dr_copy_last_success_timestamp_seconds";
/// `kube_dr_copy_copied_backups`.
pub const COPIED_BACKUPS: &str = "kube_dr_copy_copied_backups";
/// `kube_dr_copy_copied_bytes`.
pub const COPIED_BYTES: &str = "kube_dr_copy_copied_bytes";

/// What one series' copy pushes into its group (job `kube_dr_copy`). The last success is
/// only pushed when nothing of the series was refused, so a failing copy keeps the time of
/// the last one that succeeded.
pub fn metrics(series: &Series, finished: DateTime<Utc>) -> Vec<crate::observe::push::Metric> {
    use crate::observe::push::Metric;
    let ok = series.refused == 0;
    let mut out = vec![
        Metric {
            name: SUCCESS,
            help: "1 if the last copy left every selected backup of this engine and target in the second store, else 0.",
            value: if ok { 1.0 } else { 0.0 },
        },
        Metric {
            name: COPIED_BACKUPS,
            help: "Backups of this engine and target the last copy uploaded.",
            value: series.copied as f64,
        },
        Metric {
            name: COPIED_BYTES,
            help: "Bytes of this engine and target the last copy uploaded.",
            value: series.bytes as f64,
        },
    ];
    if ok {
        out.push(Metric {
            name: LAST_SUCCESS,
            help: "When a copy last left every selected backup of this engine and target in the second store (Unix time).",
            value: finished.timestamp_millis() as f64 / 1000.0,
        });
    }
    out
}

/// Why a copy stopped: the stores, not a backup (those are [`Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Listing or reading the source's catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A backup that cannot be copied, or a store that failed while copying it.
enum OneFailed {
    Refused(String),
    Store(StoreError),
}

impl From<StoreError> for OneFailed {
    fn from(e: StoreError) -> Self {
        match e {
            // Gone at the source since it was listed, or not a regular object there.
            e @ (StoreError::NotFound { .. } | StoreError::NotRegular { .. }) => {
                OneFailed::Refused(e.to_string())
            }
            e => OneFailed::Store(e),
        }
    }
}

impl Copy<'_> {
    /// Copies what the destination lacks.
    ///
    /// # Errors
    /// [`CopyError`] when a store fails; damaged or untrusted backups are reported in
    /// [`CopyReport::refused`] instead.
    pub async fn run(&self) -> Result<CopyReport, CopyError> {
        let now = Utc::now();
        let scanned = catalog::scan(self.from, &self.filter).await?;
        let inspected = catalog::inspect_all(
            self.from,
            scanned,
            now,
            catalog::DEFAULT_MAX_CLOCK_SKEW,
            &self.trust,
        )
        .await?;
        let present: BTreeSet<BackupRef> = catalog::scan(self.to, &self.filter)
            .await?
            .into_iter()
            .filter(|b| b.complete)
            .map(|b| b.backup)
            .collect();
        let mut report = CopyReport::default();
        let mut good: BTreeMap<BackupRef, Manifest> = BTreeMap::new();
        let all_series: BTreeSet<(String, String)> = inspected
            .iter()
            .map(|b| {
                let r = &b.scanned.backup;
                (r.engine.clone(), r.target.clone())
            })
            .collect();
        for b in inspected {
            let backup = b.scanned.backup.clone();
            let wanted = self.since.is_none_or(|s| backup.id.created_at() >= s);
            match (b.status, b.manifest) {
                (Status::Complete, Some(m)) => {
                    good.insert(backup, m);
                }
                (Status::Damaged, _) if wanted => report.refused.push(Refused {
                    backup: backup.to_string(),
                    why: b.problem.unwrap_or_else(|| "damaged".into()),
                }),
                _ => {}
            }
        }
        // The selection, with the backups its references live in.
        let mut selected: BTreeSet<BackupRef> = good
            .keys()
            .filter(|b| self.since.is_none_or(|s| b.id.created_at() >= s))
            .cloned()
            .collect();
        for b in selected.clone() {
            for base in good[&b].references() {
                selected.insert(BackupRef {
                    id: base,
                    ..b.clone()
                });
            }
        }
        let mut failed: BTreeSet<BackupId> = BTreeSet::new();
        // Oldest first in each series: bases before the backups that refer to them.
        for backup in selected {
            if present.contains(&backup) {
                report.present += 1;
                continue;
            }
            let Some(manifest) = good.get(&backup) else {
                // A base that is missing or damaged at the source: its dependents fail
                // below, naming it.
                failed.insert(backup.id.clone());
                continue;
            };
            let missing: Vec<String> = manifest
                .references()
                .into_iter()
                .filter(|id| failed.contains(id))
                .map(|id| id.to_string())
                .collect();
            if !missing.is_empty() {
                failed.insert(backup.id.clone());
                report.refused.push(Refused {
                    backup: backup.to_string(),
                    why: format!(
                        "its base backup(s) {} could not be copied",
                        missing.join(", ")
                    ),
                });
                continue;
            }
            match self.copy_one(manifest).await {
                Ok(copied) => {
                    tracing::info!(backup = %backup, parts = copied.parts, bytes = copied.bytes, "backup copied");
                    report.copied.push(copied);
                }
                Err(OneFailed::Refused(why)) => {
                    tracing::warn!(backup = %backup, why = %why, "not copied");
                    failed.insert(backup.id.clone());
                    report.refused.push(Refused {
                        backup: backup.to_string(),
                        why,
                    });
                }
                Err(OneFailed::Store(e)) => return Err(e.into()),
            }
        }
        report.refused.sort_by(|a, b| a.backup.cmp(&b.backup));
        report.tally(&all_series);
        Ok(report)
    }

    /// Parts, signature, manifest: the order of a commit.
    async fn copy_one(&self, manifest: &Manifest) -> Result<Copied, OneFailed> {
        let backup = manifest.backup_ref();
        // The manifest and signature as stored, judged again: what is copied must be
        // exactly what was judged, byte for byte.
        let json = self
            .from
            .get_bytes(&backup.manifest_key(), catalog::MAX_MANIFEST_BYTES)
            .await?;
        let again: Manifest = serde_json::from_slice(&json).map_err(|e| {
            OneFailed::Refused(format!("its manifest changed and no longer parses: {e}"))
        })?;
        if again != *manifest {
            return Err(OneFailed::Refused(
                "its manifest changed while the copy ran; run the copy again".into(),
            ));
        }
        let sig = match self
            .from
            .get_bytes(&backup.signature_key(), signature::MAX_SIGNATURE_BYTES)
            .await
        {
            Ok(s) => Some(s),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let verdict = self.trust.signers.judge(&json, &[sig.as_deref()]);
        if let Some(why) = self.trust.refusal(&verdict) {
            return Err(OneFailed::Refused(format!("its manifest {why}")));
        }
        let dir = format!("{}/", backup.dir());
        let there: BTreeMap<String, u64> = self
            .to
            .list(&dir)
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut copied = Copied {
            backup: backup.to_string(),
            parts: 0,
            bytes: 0,
        };
        for part in manifest.parts.iter().filter(|p| p.from.is_none()) {
            let key = backup.part_key(&part.file);
            if there.get(&key) == Some(&part.ciphertext_bytes) {
                continue;
            }
            self.copy_part(manifest, part, &key).await?;
            copied.parts += 1;
            copied.bytes += part.ciphertext_bytes;
        }
        // A reference at the destination stays retained as long as this copy's own parts.
        for part in manifest.parts.iter().filter(|p| p.from.is_some()) {
            self.to.extend_lock(&manifest.object_key(part)).await?;
        }
        if let Some(sig) = sig {
            self.to
                .put_bytes(&backup.signature_key(), Bytes::from(sig))
                .await?;
        }
        self.to
            .put_bytes(&backup.manifest_key(), Bytes::from(json))
            .await?;
        Ok(copied)
    }

    /// Streams one object to `key`, completing the upload only when what was read is what
    /// the manifest records.
    async fn copy_part(
        &self,
        manifest: &Manifest,
        part: &catalog::Part,
        key: &str,
    ) -> Result<(), OneFailed> {
        let mut reader = self.from.get(&manifest.object_key(part)).await?;
        let (tx, rx) = mpsc::channel::<BodyChunk>(4);
        let upload = self.to.put_stream(key, rx, &self.cancel);
        let feed = async move {
            let mut sha = Sha256::new();
            let mut size = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = reader.read(&mut buf).await.map_err(|e| {
                    OneFailed::Store(StoreError::Failed {
                        location: "the source store".into(),
                        op: "read",
                        key: manifest.object_key(part),
                        detail: e.to_string(),
                    })
                })?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                sha.update(&buf);
                size += n as u64;
                if size > part.ciphertext_bytes {
                    break;
                }
                if tx.send(BodyChunk::Data(Bytes::from(buf))).await.is_err() {
                    // The upload ended early; its error says why.
                    return Ok(());
                }
            }
            let sum = hex::encode(sha.finalize());
            if size != part.ciphertext_bytes || sum != part.ciphertext_sha256 {
                // No End: the upload is aborted and nothing becomes visible.
                return Err(OneFailed::Refused(format!(
                    "part {} of {} is damaged at the source ({size} bytes with sha256 {sum}; the manifest records {} bytes with {})",
                    part.name,
                    manifest.holder_of(part),
                    part.ciphertext_bytes,
                    part.ciphertext_sha256
                )));
            }
            let _ = tx.send(BodyChunk::End).await;
            Ok(())
        };
        // The upload is always awaited to its end (dropped half-way it would leave an open
        // multipart upload behind); the read is dropped when the upload ends first (SIGTERM,
        // a store error), so a stalled source never holds a shutdown.
        tokio::pin!(upload);
        tokio::select! {
            fed = feed => {
                let uploaded = upload.await;
                fed?;
                uploaded?;
            }
            uploaded = &mut upload => {
                // Ended before the read did: only with an error, or after `End`, which is
                // sent once every byte matched.
                uploaded?;
            }
        }
        Ok(())
    }
}
