//! `kubectl dr restore`: brings a database back from a backup, after proving the backup
//! intact, and ends with the same row-count comparison as `verify`.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use drkit::catalog::{Manifest, Part};
use drkit::cli::{CheckFailed, IdentityArgs, StoreArgs};
use drkit::engine::clickhouse::{self, restore as ch_restore};
use drkit::engine::postgres::restore::{self as pg_restore, RestoreOptions};
use drkit::engine::postgres::PgTarget;
use drkit::engine::vault::{self, restore as vault_restore};
use drkit::pipeline::keys::Identities;
use drkit::progress::Progress;
use drkit::store::ReadStore;
use drkit::verify::{self, MaxDiff, Verified};

use super::counts::DatabaseCounts;
use super::FilterArgs;
use crate::cluster::restore::{self as cluster_restore, ScaleTarget};
use crate::cluster::{jobs, ClusterArgs};
use crate::output::{self, Format};

/// Restore a backup into a database or a Vault server.
///
/// Order of work: check every byte of the part against the manifest (size, sha256); check
/// the key opens it; inspect the target; then stream decrypt → decompress → restore; compare
/// counts with the backup's (exit 1 on a mismatch).
///
/// PostgreSQL (--to postgres://…): pg_restore runs as one transaction (a failure leaves the
/// target unchanged), then ANALYZE. A missing database is created from template0. A
/// database that already has tables is refused unless --clean, which drops and recreates
/// the objects the backup contains (asks for confirmation unless --yes).
///
/// ClickHouse (--to http(s)://…:8123, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD(_FILE)):
/// databases, then tables and their rows (as INSERT … FORMAT Native), then materialized
/// views (never before their source's rows: an MV would count them twice) and their inner
/// tables' rows, then views and Distributed tables. --table and --database pick a subset,
/// --database-map renames, --replicated decides about Replicated engines. Tables that hold
/// rows are refused unless --clean. Tables with a TTL may come back with fewer rows.
///
/// Vault/OpenBao (--to http(s)://…, token from VAULT_TOKEN or VAULT_TOKEN_FILE): the raft
/// snapshot REPLACES all of the server's data (asks unless --yes). The server must be
/// initialised and unsealed. A snapshot of another cluster (a rebuilt Vault) needs --force;
/// afterwards the server is sealed and needs the *backed-up* cluster's unseal keys: the
/// command says so and waits (--wait) while you unseal, then compares counts using
/// --restored-token-file (a token of the backed-up cluster).
///
/// Examples:
///   kubectl dr restore latest --target prod --identity key.txt \
///     --to postgres://postgres@127.0.0.1:5432/app_restored
///   kubectl dr restore 20261122T020000Z-7f3a9c --identity key.txt --database app \
///     --to postgres://postgres@db:5432/app --clean --yes
///   VAULT_TOKEN_FILE=new-root.txt kubectl dr restore latest --engine vault --identity key.txt \
///     --to https://vault.vault.svc:8200 --force --restored-token-file old-root.txt
///   kubectl dr restore latest --engine clickhouse --identity key.txt --to http://clickhouse:8123 \
///     --replicated convert --database-map signoz_logs=signoz_logs_restored
///   kubectl dr restore latest --identity key.txt --to postgres://postgres@db.shop:5432/app \
///     --in-cluster --scale-down shop/deployment/app      # as a Job next to the database
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RestoreCmd {
    /// Backup id, or `latest`.
    backup: String,

    #[command(flatten)]
    filter: FilterArgs,

    #[command(flatten)]
    identity: IdentityArgs,

    /// Where to restore: postgres://user@host:port[/db] (default database: the backed-up
    /// one's name; password from PGPASSWORD or PGPASSWORD_FILE), or http(s)://vault:8200
    /// (token from VAULT_TOKEN or VAULT_TOKEN_FILE).
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

    /// ClickHouse: restore only tables matching DB.TABLE (globs: * and ?); repeatable.
    #[arg(long = "table", value_name = "PATTERN")]
    tables: Vec<String>,

    /// ClickHouse: restore database OLD as NEW; repeatable.
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    database_map: Vec<(String, String)>,

    /// ClickHouse: what to do with Replicated*MergeTree tables: keep them (the target has
    /// Keeper and the same macros) or convert them to their single-node engine.
    #[arg(long, value_enum, value_name = "POLICY")]
    replicated: Option<ReplicatedArg>,

    /// Vault: restore a snapshot taken by a cluster with other unseal keys (snapshot-force).
    #[arg(long)]
    force: bool,

    /// Vault: how long to wait for the server to be active (and unsealed) after the restore.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    wait: humantime::Duration,

    /// Vault: a token of the backed-up cluster, used for the count comparison after the
    /// restore (the snapshot replaces the server's own tokens). Default: the --to token.
    #[arg(long, env = "DR_VAULT_RESTORED_TOKEN_FILE", value_name = "FILE")]
    restored_token_file: Option<PathBuf>,

    /// Output format of the final count comparison.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,

    /// PostgreSQL: run the restore as a Job in the cluster, next to the database, from the
    /// engine's backup CronJob (same image, store settings and credentials). The identity
    /// goes into a short-lived Secret that is deleted afterwards, whatever happens.
    #[arg(long)]
    in_cluster: bool,

    /// With --in-cluster: scale this workload to 0 during the restore and back afterwards
    /// ([NAMESPACE/]deployment/NAME or statefulset/NAME); repeatable.
    #[arg(long, value_name = "[NS/]KIND/NAME", requires = "in_cluster")]
    scale_down: Vec<ScaleTarget>,

    /// With --in-cluster: the Job's deadline.
    #[arg(long, default_value = "6h", value_name = "DURATION")]
    timeout: humantime::Duration,

    #[command(flatten)]
    cluster: ClusterArgs,
}

impl RestoreCmd {
    pub async fn run(self, store: &StoreArgs, progress: &dyn Progress) -> anyhow::Result<()> {
        let identities = self.identity.require()?;
        if self.in_cluster {
            return self.in_cluster(store).await;
        }
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let manifest = super::resolve(store, &self.backup, &self.filter).await?;
        match manifest.engine.as_str() {
            "postgres" => self.postgres(store, &manifest, &identities, progress).await,
            vault::ENGINE => self.vault(store, &manifest, &identities, progress).await,
            clickhouse::ENGINE => {
                self.clickhouse(store, &manifest, &identities, progress)
                    .await
            }
            other => anyhow::bail!("restoring {other} backups is not supported yet"),
        }
    }

    async fn postgres(
        &self,
        store: &dyn ReadStore,
        manifest: &Manifest,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let to = PgTarget::from_url(&self.to)?;
        let part = pick_part(manifest, self.database.as_deref())?;
        // The server first: a typo in --to must not cost a full integrity pass.
        let db = to
            .dbname
            .clone()
            .or_else(|| part.database.clone())
            .unwrap_or_else(|| "postgres".into());
        to.probe(&db)
            .await
            .with_context(|| format!("checking --to {} before restoring", self.to))?;

        let verified = check_first(store, manifest, part, progress).await?;

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

        let counts = pg_restore::run(&plan, store, verified, identities, &opts, progress).await?;
        eprintln!("restored {} into {}", manifest.backup_ref(), plan.target);
        let report = DatabaseCounts::new(
            part.database.as_deref().unwrap_or(&plan.database),
            plan.target.to_string(),
            self.max_diff,
            verify::compare_counts(&part.tables, &counts, self.max_diff),
        );
        self.report(manifest, &report)
    }

    async fn vault(
        &self,
        store: &dyn ReadStore,
        manifest: &Manifest,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.database.is_none() && !self.clean && !self.keep_owners,
            "--database, --clean and --keep-owners are for PostgreSQL; a Vault restore always replaces all of the server's data"
        );
        let target = vault::VaultTarget::from_url(&self.to)?;
        let token = vault::Token::from_env()?.ok_or(vault::VaultError::NoToken)?;
        let restored_token = match &self.restored_token_file {
            Some(path) => vault::Token::from_file(path)?,
            None => token.clone(),
        };
        let part = vault::snapshot_part(manifest)?;
        vault::VaultClient::new(&target)?
            .probe()
            .await
            .with_context(|| format!("checking --to {} before restoring", self.to))?;
        let verified = check_first(store, manifest, part, progress).await?;

        let plan = vault_restore::plan(&target, token, manifest).await?;
        eprintln!("plan: {}", plan.describe());
        if plan.other_cluster() {
            eprintln!(
                "note: the server is another cluster than the backup's; {}",
                if self.force {
                    "after the restore it needs the backed-up cluster's unseal keys"
                } else {
                    "if its unseal keys differ the server refuses the snapshot: rerun with --force"
                }
            );
        }
        if self.dry_run {
            eprintln!("dry run: backup verified, server inspected, nothing changed");
            return Ok(());
        }
        if !self.yes {
            let host = target.addr.host_str().unwrap_or("vault").to_string();
            super::confirm(
                &format!("this restore replaces all data of Vault at {target}"),
                &format!("This replaces ALL data of Vault at {target} with the backup."),
                &host,
            )?;
        }
        let opts = vault_restore::RestoreOptions {
            force: self.force,
            wait: self.wait.into(),
        };
        let notify = |message: &str| eprintln!("{message}");
        vault_restore::run(&plan, store, verified, identities, &opts, progress, &notify).await?;
        eprintln!(
            "restored {} into {}",
            manifest.backup_ref(),
            plan.client.addr()
        );

        let client = plan.client.clone().with_token(restored_token);
        let live = async {
            client.check_token().await?;
            client.counts().await
        }
        .await
        .with_context(|| {
            format!(
                "the snapshot is restored and Vault is active, but counting failed; with a token of the backed-up cluster run: kubectl dr verify {} --against {}",
                manifest.id,
                plan.client.addr()
            )
        })?;
        let report = DatabaseCounts::new(
            &manifest.target,
            plan.client.addr().to_string(),
            self.max_diff,
            verify::compare_counts(&part.tables, &live, self.max_diff),
        );
        self.report(manifest, &report)
    }

    /// Runs this same restore as a Job in the cluster and reports its outcome.
    async fn in_cluster(&self, store: &StoreArgs) -> anyhow::Result<()> {
        let engine = match (
            &self.filter.engine,
            self.to.split_once("://").map(|(s, _)| s),
        ) {
            (Some(e), _) => e.clone(),
            (None, Some("postgres" | "postgresql")) => "postgres".into(),
            _ => anyhow::bail!(
                "cannot tell the engine from --to {}; pass --engine",
                self.to
            ),
        };
        anyhow::ensure!(
            engine == "postgres",
            "--in-cluster restores PostgreSQL; restore {engine} from your workstation ({})",
            if engine == vault::ENGINE {
                "a Vault restore needs the new cluster's root token and, after --force, a person to unseal"
            } else {
                "it streams over the server's HTTP port, which works as well from outside"
            }
        );
        let identity_path = self.identity.identity.as_ref().expect("required above");
        let identity = std::fs::read(identity_path)?;
        let mut args = vec![
            self.backup.clone(),
            "--to".into(),
            self.to.clone(),
            "--engine".into(),
            engine.clone(),
        ];
        let mut opt = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.extend([flag.to_string(), v]);
            }
        };
        opt("--target", self.filter.target.clone());
        opt("--database", self.database.clone());
        opt("--store", store.store.clone());
        opt(
            "--max-diff",
            Some(self.max_diff.to_string().replace(" rows", "")),
        );
        if self.clean {
            args.push("--clean".into());
        }
        if self.keep_owners {
            args.push("--keep-owners".into());
        }
        if self.dry_run {
            args.push("--dry-run".into());
        }
        let client = self.cluster.client().await?;
        let ns = &self.cluster.namespace;
        let cronjob = jobs::find_cronjob(&client, ns, &engine).await?;
        let plan = cluster_restore::Plan {
            namespace: ns,
            cronjob: &cronjob,
            restore_args: args,
            identity,
            scale_down: self.scale_down.clone(),
            deadline: *self.timeout,
            poll: Duration::from_secs(2),
        };
        let say = |m: &str| eprintln!("{m}");
        let report = cluster_restore::run(&client, &plan, chrono::Utc::now(), &say).await?;
        println!("{}", report.logs.trim_end());
        match report.outcome {
            jobs::Outcome::Succeeded => {
                eprintln!("job.batch/{} succeeded", report.job);
                Ok(())
            }
            jobs::Outcome::Failed(why) => anyhow::bail!(
                "the restore Job {} failed ({why}); its log is above (kubectl -n {ns} logs job/{})",
                report.job,
                report.job
            ),
        }
    }

    async fn clickhouse(
        &self,
        store: &dyn ReadStore,
        manifest: &Manifest,
        identities: &Identities,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.keep_owners && !self.force,
            "--keep-owners and --force do not apply to ClickHouse"
        );
        let target = clickhouse::ChTarget::from_url(&self.to)?;
        let client = clickhouse::ChClient::new(&target)?;
        client
            .probe()
            .await
            .with_context(|| format!("checking --to {} before restoring", self.to))?;
        let mut tables = self.tables.clone();
        if let Some(db) = &self.database {
            tables.push(format!("{db}.*"));
        }
        let opts = ch_restore::RestoreOptions {
            tables,
            database_map: self.database_map.iter().cloned().collect(),
            replicated: match self.replicated {
                None => ch_restore::Replicated::Ask,
                Some(ReplicatedArg::Keep) => ch_restore::Replicated::Keep,
                Some(ReplicatedArg::Convert) => ch_restore::Replicated::Convert,
            },
            clean: self.clean,
        };
        let schema_part = manifest
            .parts
            .iter()
            .find(|p| p.format == clickhouse::FORMAT_SCHEMA)
            .ok_or_else(|| {
                anyhow::anyhow!("backup {} has no schema part", manifest.backup_ref())
            })?;
        let schema_verified = check_first(store, manifest, schema_part, progress).await?;
        let schema = ch_restore::read_schema(store, schema_verified, identities, progress).await?;
        let plan = ch_restore::plan(&client, manifest, &schema, &opts).await?;
        // Every part this restore loads is checked before the server is touched.
        let mut verified = Vec::new();
        for step in &plan.steps {
            let names = step
                .part
                .iter()
                .chain(step.inner_part.iter().map(|i| &i.part));
            for name in names {
                if let Some(part) = manifest.parts.iter().find(|p| &p.name == name) {
                    verified.push(check_first(store, manifest, part, progress).await?);
                }
            }
        }
        eprintln!("plan for {target}:");
        for line in plan.describe() {
            eprintln!("  {line}");
        }
        if self.dry_run {
            eprintln!("dry run: backup verified, server inspected, nothing changed");
            return Ok(());
        }
        if plan.is_destructive() && !self.yes {
            super::confirm(
                "this restore drops existing tables",
                "This drops and recreates the tables marked above.",
                "drop",
            )?;
        }
        let say = |m: &str| eprintln!("{m}");
        let counts = ch_restore::run(
            &client, &plan, store, &verified, identities, &opts, progress, &say,
        )
        .await?;
        eprintln!("restored {} into {target}", manifest.backup_ref());
        let restored: Vec<drkit::catalog::TableCount> = manifest
            .parts
            .iter()
            .flat_map(|p| p.tables.iter())
            .filter(|t| {
                counts
                    .iter()
                    .any(|c| c.schema == t.schema && c.name == t.name)
            })
            .cloned()
            .collect();
        let mut rows = verify::compare_counts(&restored, &counts, self.max_diff);
        verify::allow_ttl_expiry(&mut rows, &clickhouse::dump::ttl_tables(manifest));
        let report = DatabaseCounts::new(&manifest.target, target.to_string(), self.max_diff, rows);
        self.report(manifest, &report)
    }

    fn report(&self, manifest: &Manifest, report: &DatabaseCounts) -> anyhow::Result<()> {
        match self.output {
            Format::Table => report.print()?,
            f => output::print_structured(f, report)?,
        }
        if !report.ok {
            return Err(CheckFailed(format!(
                "restored counts differ from backup {}; inspect the table above",
                manifest.backup_ref()
            ))
            .into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReplicatedArg {
    Keep,
    Convert,
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!("{s:?}: expected OLD=NEW")),
    }
}

/// The safety rule of every restore: every byte of the part matches the manifest before
/// anything else happens.
async fn check_first<'m>(
    store: &dyn ReadStore,
    manifest: &'m Manifest,
    part: &'m Part,
    progress: &dyn Progress,
) -> anyhow::Result<Verified<'m>> {
    eprintln!(
        "checking {} part {} ({})",
        manifest.backup_ref(),
        part.name,
        output::human_bytes(part.ciphertext_bytes)
    );
    Ok(verify::check_before_restore(store, manifest, part, progress).await?)
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
