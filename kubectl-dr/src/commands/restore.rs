//! `kubectl dr restore`: brings a database back from a backup, after proving the backup
//! intact, and ends with the same row-count comparison as `verify`.

use std::path::PathBuf;

use clap::Args;
use drkit::catalog::{Manifest, Part};
use drkit::cli::{CheckFailed, IdentityArgs, StoreArgs};
use drkit::engine::postgres::restore::{self as pg_restore, RestoreOptions};
use drkit::engine::postgres::PgTarget;
use drkit::progress::Progress;
use drkit::store::ReadStore;
use drkit::verify::{self, MaxDiff};

use super::counts::DatabaseCounts;
use super::FilterArgs;
use crate::output::{self, Format};

/// Restore a backup into a database.
///
/// Order of work: check every byte of the part against the manifest (size, sha256); check
/// the key opens it; inspect the target; then stream decrypt → decompress → pg_restore as
/// one transaction (a failure leaves the target unchanged); ANALYZE; compare row counts
/// with the backup's (exit 1 on a mismatch).
///
/// A missing database is created from template0. A database that already has tables is
/// refused unless --clean, which drops and recreates the objects the backup contains
/// (asks for confirmation unless --yes).
///
/// Examples:
///   kubectl dr restore latest --target prod --identity key.txt \
///     --to postgres://postgres@127.0.0.1:5432/app_restored
///   kubectl dr restore 20261122T020000Z-7f3a9c --identity key.txt --database app \
///     --to postgres://postgres@db:5432/app --clean --yes
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RestoreCmd {
    /// Backup id, or `latest`.
    backup: String,

    #[command(flatten)]
    filter: FilterArgs,

    #[command(flatten)]
    identity: IdentityArgs,

    /// Where to restore: postgres://user@host:port[/db]. Default database: the backed-up
    /// one's name. The password comes from PGPASSWORD or PGPASSWORD_FILE.
    #[arg(long, value_name = "URL")]
    to: String,

    /// Which database of a multi-database backup to restore.
    #[arg(long, short = 'd', value_name = "DB")]
    database: Option<String>,

    /// Drop and recreate the objects the backup contains in a database that has tables.
    #[arg(long)]
    clean: bool,

    /// Keep the dump's owners and grants (the roles must exist: restore the globals first).
    #[arg(long)]
    keep_owners: bool,

    /// Do not ask before dropping existing objects.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Check the backup and the target, print what would happen, change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Largest per-table count difference accepted after the restore: rows or percent.
    #[arg(long, default_value = "0", value_name = "N|P%")]
    max_diff: MaxDiff,

    /// Directory holding pg_restore (default: PATH).
    #[arg(long, env = "DR_PG_BIN_DIR", value_name = "DIR")]
    pg_bin_dir: Option<PathBuf>,

    /// Output format of the final count comparison.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

impl RestoreCmd {
    pub async fn run(self, store: &StoreArgs, progress: &dyn Progress) -> anyhow::Result<()> {
        let identities = self.identity.require()?;
        let to = PgTarget::from_url(&self.to)?;
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let manifest = super::resolve(store, &self.backup, &self.filter).await?;
        anyhow::ensure!(
            manifest.engine == "postgres",
            "restoring {} backups is not supported yet",
            manifest.engine
        );
        let part = pick_part(&manifest, self.database.as_deref())?;

        eprintln!(
            "checking {} part {} ({})",
            manifest.backup_ref(),
            part.name,
            output::human_bytes(part.ciphertext_bytes)
        );
        verify::check_part(store, &manifest, part, None, progress).await?;

        let opts = RestoreOptions {
            clean: self.clean,
            keep_owners: self.keep_owners,
            bin_dir: self.pg_bin_dir.clone(),
        };
        let plan = pg_restore::plan(&to, part, &opts).await?;
        eprintln!("plan: {}", plan.describe());
        if self.dry_run {
            eprintln!("dry run: backup verified, target inspected, nothing changed");
            return Ok(());
        }
        if plan.is_destructive() && !self.yes {
            super::confirm(
                &format!("this restore drops objects in database {}", plan.database),
                &format!(
                    "This drops and recreates objects in database {}.",
                    plan.database
                ),
                &plan.database,
            )?;
        }

        let counts =
            pg_restore::run(&plan, store, &manifest, part, &identities, &opts, progress).await?;
        eprintln!("restored {} into {}", manifest.backup_ref(), plan.target);
        let report = DatabaseCounts::new(
            part.database.as_deref().unwrap_or(&plan.database),
            plan.target.to_string(),
            self.max_diff,
            verify::compare_counts(&part.tables, &counts, self.max_diff),
        );
        match self.output {
            Format::Table => report.print()?,
            f => output::print_structured(f, &report)?,
        }
        if !report.ok {
            return Err(CheckFailed(format!(
                "restored row counts differ from backup {}; inspect the tables above",
                manifest.backup_ref()
            ))
            .into());
        }
        Ok(())
    }
}

fn pick_part<'m>(manifest: &'m Manifest, database: Option<&str>) -> anyhow::Result<&'m Part> {
    let dbs: Vec<&Part> = manifest
        .parts
        .iter()
        .filter(|p| p.database.is_some())
        .collect();
    match database {
        Some(d) => dbs
            .into_iter()
            .find(|p| p.database.as_deref() == Some(d))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "backup {} holds no database {d}; it has: {}",
                    manifest.backup_ref(),
                    manifest.databases().join(", ")
                )
            }),
        None if dbs.len() == 1 => Ok(dbs[0]),
        None => anyhow::bail!(
            "backup {} holds {} databases ({}); pick one with --database",
            manifest.backup_ref(),
            dbs.len(),
            manifest.databases().join(", ")
        ),
    }
}
