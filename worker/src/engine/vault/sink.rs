//! `kubectl dr restore … --to https://vault:8200`: the Vault/OpenBao [`Sink`] and its flags.

use std::path::PathBuf;

use async_trait::async_trait;

use super::restore::{self, RestoreOptions};
use super::{snapshot_part, Token, VaultClient, VaultError, VaultTarget};
use crate::catalog::{Manifest, Part};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, RunKind, Sink,
    SourceFailure, VerifiedParts,
};
use crate::verify;

/// Vault/OpenBao flags of `kubectl dr restore`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Vault / OpenBao")]
#[group(id = "vault_restore")]
pub struct RestoreArgs {
    /// Restore a snapshot taken by a cluster with other unseal keys (snapshot-force).
    #[arg(long)]
    pub force: bool,

    /// How long to wait for the server to be active (and unsealed) after the restore.
    #[arg(
        hide_short_help = true,
        long,
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub wait: humantime::Duration,

    /// A token of the backed-up cluster, used for the count comparison after the restore
    /// (the snapshot replaces the server's own tokens). Default: the --to token.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_VAULT_RESTORED_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub restored_token_file: Option<PathBuf>,
}

impl Default for RestoreArgs {
    fn default() -> Self {
        RestoreArgs {
            force: false,
            wait: std::time::Duration::from_secs(300).into(),
            restored_token_file: None,
        }
    }
}

/// A Vault/OpenBao server whose whole state a snapshot replaces.
pub struct VaultSink {
    common: RestoreCommon,
    target: VaultTarget,
    token: Token,
    restored_token: Token,
    opts: RestoreOptions,
}

/// A Vault restore as planned: the active node found and checked.
struct VaultPlanned {
    common: RestoreCommon,
    restored_token: Token,
    opts: RestoreOptions,
    plan: restore::RestorePlan,
}

impl RestoreArgs {
    /// The first Vault-only flag given, for refusing it on another engine's backup.
    pub fn given(&self) -> Option<&'static str> {
        self.force.then_some("--force")
    }

    /// # Errors
    /// PostgreSQL-only flags, a malformed `--to`, no token.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        // In a run over many backups --clean is meant for the engines that have a choice.
        if common.database.is_some() || (common.clean && common.run == RunKind::Single) {
            return Err("--database and --clean are for PostgreSQL and ClickHouse; a Vault restore always replaces all of the server's data".into());
        }
        let token = Token::from_env()?.ok_or(VaultError::NoToken { backup: false })?;
        let restored_token = match &self.restored_token_file {
            Some(path) => Token::from_file(path)?,
            None => token.clone(),
        };
        Ok(Box::new(VaultSink {
            target: VaultTarget::from_url(&common.to)?,
            common: common.clone(),
            token,
            restored_token,
            opts: RestoreOptions {
                force: self.force,
                wait: self.wait.into(),
            },
        }))
    }
}

#[async_trait]
impl Sink for VaultSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        VaultClient::new(&self.target)?.probe().await?;
        Ok(())
    }

    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let client = VaultClient::new(&self.target)?.with_token(self.token.clone());
        let (active, _) = client.active().await?;
        active.check_token().await?;
        let live = active.counts().await?;
        let part = snapshot_part(manifest)?;
        Ok(vec![RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: active.addr().to_string(),
            rows: verify::compare_counts(&part.tables, &live, self.common.max_diff),
        }])
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        Ok(vec![snapshot_part(manifest)?])
    }

    async fn plan<'m>(
        self: Box<Self>,
        _ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let manifest = first.manifest();
        let plan = restore::plan(&self.target, self.token.clone(), manifest).await?;
        let mut lines = vec![format!("plan: {}", plan.describe())];
        if plan.other_cluster() {
            lines.push(format!(
                "note: the server is another cluster than the backup's; {}",
                if self.opts.force {
                    "after the restore it needs the backed-up cluster's unseal keys"
                } else {
                    "if its unseal keys differ the server refuses the snapshot: rerun with --force"
                }
            ));
        }
        let target = &self.target;
        let host = target.addr.host_str().unwrap_or("vault").to_string();
        let confirm = Some(Confirm {
            what: format!("this restore replaces all data of Vault at {target}"),
            prompt: format!("This replaces ALL data of Vault at {target} with the backup."),
            word: host,
        });
        let VaultSink {
            common,
            restored_token,
            opts,
            ..
        } = *self;
        Ok(RestorePlan {
            lines,
            confirm,
            more_parts: Vec::new(),
            restore: Box::new(VaultPlanned {
                common,
                restored_token,
                opts,
                plan,
            }),
        })
    }
}

#[async_trait]
impl Planned for VaultPlanned {
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let plan = &self.plan;
        let part = parts.lead();
        let manifest = part.manifest();
        restore::run(plan, part, &self.opts, ctx).await?;
        ctx.say(&format!(
            "restored {} into {}",
            manifest.backup_ref(),
            plan.client.addr()
        ));
        let client = plan.client.clone().with_token(self.restored_token.clone());
        let live = async {
            client.check_token().await?;
            client.counts().await
        }
        .await
        .map_err(|e| -> SourceFailure {
            format!(
                "the snapshot is restored and Vault is active, but counting failed ({e}); with a token of the backed-up cluster run: kubectl dr verify {} --against {}",
                manifest.id,
                plan.client.addr()
            )
            .into()
        })?;
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: plan.client.addr().to_string(),
            rows: verify::compare_counts(&part.part().tables, &live, self.common.max_diff),
        })
    }
}
