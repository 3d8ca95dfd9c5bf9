//! `kubectl dr restore ID --engine kubernetes --to -`: the [`Sink`] that writes every
//! part's objects to stdout in apply order, for `kubectl apply --server-side -f -`. Each
//! part is verified first, as for every engine, and its last chunk held back until it
//! matched. Applying from the plugin (server-side apply, `--clean`, `--namespace-map`, the
//! Argo CD finalizer rule) is not built yet; the destination says so.

use std::io::Write;

use async_trait::async_trait;

use super::apply_rank;
use crate::catalog::{Manifest, Part, PartFormat};
use crate::engine::{RestoreCommon, RestorePlan, RestoredCounts, Sink, SourceFailure};
use crate::pipeline::keys::Identities;
use crate::progress::Progress;
use crate::store::ReadStore;
use crate::verify::{open_plaintext, stream_withheld, Verified};

/// Kubernetes flags of `kubectl dr restore` (none yet: `--to -` is the destination).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RestoreArgs {}

impl RestoreArgs {
    /// The first Kubernetes-only flag given (none exist yet).
    pub fn given(&self) -> Option<&'static str> {
        None
    }

    /// # Errors
    /// A destination other than `-`.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        if common.to != "-" {
            return Err(format!(
                "Kubernetes backups restore as YAML on stdout for now: --to - | kubectl apply --server-side -f - (applying from kubectl dr itself is not built yet; --to {:?} is not a destination)",
                common.to
            )
            .into());
        }
        Ok(Box::new(KubernetesSink))
    }
}

/// Writes the objects to stdout.
pub struct KubernetesSink;

/// The YAML parts of a backup, in apply order.
fn ordered(manifest: &Manifest) -> Vec<&Part> {
    let mut parts: Vec<&Part> = manifest
        .parts
        .iter()
        .filter(|p| p.format == PartFormat::KubernetesYaml)
        .collect();
    parts.sort_by_key(|p| (apply_rank(&p.name), p.name.clone()));
    parts
}

#[async_trait]
impl Sink for KubernetesSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        Ok(())
    }

    async fn live_counts(
        &mut self,
        _manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        Err("--against does not apply to Kubernetes backups yet; verify --identity counts the objects of every part".into())
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        let parts = ordered(manifest);
        if parts.is_empty() {
            return Err(format!("backup {} holds no objects", manifest.backup_ref()).into());
        }
        Ok(parts)
    }

    async fn plan<'m>(
        &mut self,
        _store: &dyn ReadStore,
        _manifest: &'m Manifest,
        first: &[Verified<'m>],
        _identities: &Identities,
        _progress: &dyn Progress,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let objects: u64 = first
            .iter()
            .flat_map(|v| &v.part().tables)
            .map(|t| t.rows)
            .sum();
        Ok(RestorePlan {
            lines: vec![format!(
                "plan: write {objects} object(s) of {} kind(s) to stdout in apply order (CRDs, Namespaces, ServiceAccounts, Secrets, ConfigMaps, PVCs, Services, workloads, the rest, Argo CD last): pipe into kubectl apply --server-side -f -",
                first.len()
            )],
            ..RestorePlan::default()
        })
    }

    async fn restore(
        &mut self,
        store: &dyn ReadStore,
        verified: &[Verified<'_>],
        identities: &Identities,
        progress: &dyn Progress,
        say: &(dyn for<'s> Fn(&'s str) + Sync),
    ) -> Result<RestoredCounts, SourceFailure> {
        let mut parts = verified.to_vec();
        parts.sort_by_key(|v| (apply_rank(&v.part().name), v.part().name.clone()));
        for v in &parts {
            let (manifest, part) = (v.manifest(), v.part().clone());
            let backup = manifest.backup_ref().to_string();
            let (plain, bar) = open_plaintext(store, *v, identities, progress).await?;
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                stream_withheld(plain, &backup, &part, |data| {
                    stdout.lock().write_all(data).map_err(|e| -> SourceFailure {
                        format!(
                            "writing the objects to stdout failed ({e}): the restore is incomplete"
                        )
                        .into()
                    })
                })
            })
            .await
            .expect("restore thread panicked")?;
            bar.finish();
        }
        let manifest = verified[0].manifest();
        say(&format!(
            "wrote the objects of {} to stdout",
            manifest.backup_ref()
        ));
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: "stdout".into(),
            rows: Vec::new(),
        })
    }
}
