//! `worker`: the backup side, run by Kubernetes CronJobs. Thin: it parses flags, opens the
//! store and hands over to the engine library; logs are JSON lines on stderr by default
//! because a CronJob has no terminal.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drkit::catalog::Compression;
use drkit::cli::{self, LogFormat, RecipientArgs, StoreArgs};
use drkit::engine::postgres::{dump, PgTarget};
use drkit::engine::{clickhouse, vault, BackupRun};
use drkit::pipeline::encode::EncodeSettings;
use drkit::retention::prune;
use drkit::store::WriteStore;

/// Take encrypted, verified database backups into S3 (or a directory).
///
/// Each backup streams the database's own dump through zstd and age (to public keys only)
/// into the store, then writes manifest.json with sizes, sha256 sums and exact row counts.
/// A backup without a manifest never happened: a failed run leaves nothing visible.
///
/// Exit codes: 0 ok, 2 the backup failed (nothing committed).
#[derive(Debug, Parser)]
#[command(
    verbatim_doc_comment,
    name = "worker",
    version,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    store: StoreArgs,

    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        default_value = "json",
        env = "DR_LOG_FORMAT",
        global = true
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up one database engine.
    #[command(subcommand)]
    Backup(Backup),
    /// Delete backups a retention policy no longer keeps (and failed backups past --grace).
    ///
    /// Rules apply per engine and target; periods count back from the newest complete
    /// backup, so failing jobs never age out the last good copies, and the newest complete
    /// backup is always kept. Every manifest is read and checked first: a damaged one
    /// counts for nothing and is never deleted. A plan that would delete a target's last
    /// complete backup, or more than --max-delete of them, is refused (exit 2) before
    /// anything is deleted. Each decision is logged with its reasons.
    ///
    /// Example (a nightly prune CronJob):
    ///   worker prune --keep-daily 7 --keep-weekly 4 --keep-monthly 6
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Only backups of this engine.
    #[arg(long)]
    engine: Option<String>,
    /// Only backups of this target.
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    retention: cli::RetentionArgs,
    #[command(flatten)]
    limits: cli::PruneLimitArgs,
    /// Log the decisions, delete nothing (a plan that would be refused is refused here too).
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum Backup {
    /// Back up PostgreSQL databases with pg_dump, counting every table in the dump's snapshot.
    ///
    /// Connection: the libpq variables PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD
    /// (or PGPASSWORD_FILE, e.g. a mounted Secret). The password reaches pg_dump through
    /// its environment, never its arguments.
    ///
    /// Example:
    ///   worker backup postgres --target prod --database app --database auth --globals \
    ///     --store s3://backups/cluster-a --recipient age1...
    #[command(verbatim_doc_comment)]
    Postgres(PostgresBackup),
    /// Back up Vault or OpenBao: a raft snapshot from the active node, checked while it streams.
    ///
    /// Address: VAULT_ADDR (a standby's address is fine: the active node is found through
    /// sys/leader), VAULT_CACERT for a private CA. Token: VAULT_TOKEN, --token-file, or
    /// Kubernetes auth with --k8s-role (the pod's service-account token). The token needs:
    ///   path "sys/storage/raft/snapshot" { capabilities = ["read"] }
    /// and, for the counts verify compares (skipped with a warning when missing):
    ///   path "sys/mounts" { capabilities = ["read"] }
    ///   path "sys/auth" { capabilities = ["read"] }
    ///   path "sys/policies/acl" { capabilities = ["list"] }
    ///   path "secret/metadata/*" { capabilities = ["list"] }   # per kv mount
    ///
    /// Example (in a CronJob):
    ///   worker backup vault --target vault --k8s-role dr-backup \
    ///     --store s3://backups/cluster-a --recipient age1...
    #[command(verbatim_doc_comment)]
    Vault(VaultBackup),
    /// Back up ClickHouse over its HTTP interface: DDL, then one Native part per table.
    ///
    /// Connection: CLICKHOUSE_URL (http(s)://host:8123), CLICKHOUSE_USER (default
    /// `default`), CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE. Each table's result is
    /// walked block by block as it streams: the manifest's row counts are exact, and an
    /// error the server writes into the middle of a result fails the backup.
    ///
    /// Example (SigNoz):
    ///   worker backup clickhouse --target signoz --database signoz_traces \
    ///     --database signoz_logs --database signoz_metrics --exclude 'signoz_logs.*_tmp'
    #[command(verbatim_doc_comment)]
    Clickhouse(ClickhouseBackup),
}

#[derive(Debug, clap::Args)]
struct ClickhouseBackup {
    /// Name of what is backed up (e.g. signoz); backups are grouped per target.
    #[arg(long, env = "DR_TARGET")]
    target: String,

    /// Database to back up; repeatable. Default: all but system and information_schema.
    #[arg(long = "database", short = 'd', value_name = "DB")]
    databases: Vec<String>,

    /// Leave out tables matching DB.TABLE (globs: * and ?); repeatable.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,

    /// Tables dumped at once. Each adds one HTTP stream and ~20-40 MiB of buffers (S3 parts
    /// in flight, compression); the server does the reading.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16), env = "DR_CH_PARALLEL")]
    parallel: u16,

    #[command(flatten)]
    recipients: RecipientArgs,

    #[command(flatten)]
    encoding: EncodingArgs,
}

#[derive(Debug, clap::Args)]
struct VaultBackup {
    /// Name of what is backed up (e.g. the Vault cluster); backups are grouped per target.
    #[arg(long, env = "DR_TARGET")]
    target: String,

    /// File holding the token (e.g. a mounted Secret); VAULT_TOKEN takes precedence.
    #[arg(long, env = "VAULT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Log in with Kubernetes auth as this role instead of using a token.
    #[arg(long, env = "DR_VAULT_K8S_ROLE", value_name = "ROLE")]
    k8s_role: Option<String>,

    /// Mount path of the Kubernetes auth method.
    #[arg(
        long,
        env = "DR_VAULT_K8S_MOUNT",
        default_value = "kubernetes",
        value_name = "PATH"
    )]
    k8s_mount: String,

    /// The service-account token presented to Kubernetes auth.
    #[arg(long, env = "DR_VAULT_K8S_TOKEN_PATH", default_value = drkit::engine::vault::DEFAULT_K8S_JWT, value_name = "FILE")]
    k8s_token_path: PathBuf,

    #[command(flatten)]
    recipients: RecipientArgs,

    #[command(flatten)]
    encoding: EncodingArgs,
}

impl VaultBackup {
    fn auth(&self) -> anyhow::Result<vault::Auth> {
        if let Some(role) = &self.k8s_role {
            return Ok(vault::Auth::Kubernetes {
                role: role.clone(),
                mount: self.k8s_mount.clone(),
                jwt_path: self.k8s_token_path.clone(),
            });
        }
        if let Some(t) = std::env::var("VAULT_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return Ok(vault::Auth::Token(vault::Token::new(t)));
        }
        match &self.token_file {
            Some(path) => Ok(vault::Auth::Token(vault::Token::from_file(path)?)),
            None => Err(vault::VaultError::NoToken.into()),
        }
    }
}

#[derive(Debug, clap::Args)]
struct PostgresBackup {
    /// Name of what is backed up (e.g. the cluster or service); backups are grouped and
    /// pruned per target.
    #[arg(long, env = "DR_TARGET")]
    target: String,

    /// Database to dump, one part each; repeatable. Default: PGDATABASE.
    #[arg(long = "database", short = 'd', value_name = "DB")]
    databases: Vec<String>,

    /// Also store roles and tablespaces (pg_dumpall --globals-only --no-role-passwords).
    #[arg(long)]
    globals: bool,

    /// Directory holding pg_dump and pg_dumpall (default: PATH). Use the newest major
    /// version: pg_dump refuses servers newer than itself.
    #[arg(long, env = "DR_PG_BIN_DIR", value_name = "DIR")]
    pg_bin_dir: Option<PathBuf>,

    #[command(flatten)]
    recipients: RecipientArgs,

    #[command(flatten)]
    encoding: EncodingArgs,
}

#[derive(Debug, clap::Args)]
struct EncodingArgs {
    /// Compression before encryption.
    #[arg(long, value_enum, default_value = "zstd", env = "DR_COMPRESSION")]
    compression: CompressionArg,

    /// zstd level (1 fastest … 19 smallest). Level 1 beat level 3 on both speed and size on
    /// our 1 GB benchmark (docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=19), env = "DR_ZSTD_LEVEL")]
    zstd_level: i32,

    /// zstd worker threads; 0 compresses on the encoding thread, which keeps pace with
    /// pg_dump on small machines. Each worker adds ~20 MiB of buffers: raise it only when
    /// spare cores exist and compression is the bottleneck.
    #[arg(long, default_value_t = 0, env = "DR_ZSTD_THREADS")]
    zstd_threads: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    Zstd,
    None,
}

impl EncodingArgs {
    fn settings(&self, recipients: &RecipientArgs) -> anyhow::Result<EncodeSettings> {
        Ok(EncodeSettings {
            recipients: recipients.load()?,
            compression: match self.compression {
                CompressionArg::Zstd => Compression::Zstd,
                CompressionArg::None => Compression::None,
            },
            zstd_level: self.zstd_level,
            zstd_threads: self.zstd_threads,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    cli::init_logging(cli.log_format, "info");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                tracing::error!(
                    error = format!("{e:#}"),
                    exit_code = cli::exit_code(&e),
                    "failed"
                );
            }
            cli::report(&e, json)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cancel = drkit::shutdown::on_signals();
    match cli.command {
        Command::Prune(args) => prune(&cli.store, args).await,
        Command::Backup(Backup::Postgres(args)) => {
            let settings = args.encoding.settings(&args.recipients)?;
            let source = PgTarget::from_env()?;
            let store = cli.store.open_for_backup().await?;
            let store: &dyn WriteStore = store.as_ref();
            let run = BackupRun::start(store, "postgres", &args.target, settings, cancel)?;
            let backup = run.backup().clone();
            tracing::info!(backup = %backup, store = store.location(), source = %source, "backup started");
            let opts = dump::DumpOptions {
                databases: args.databases,
                globals: args.globals,
                bin_dir: args.pg_bin_dir,
            };
            let version = dump::dump(&run, &source, &opts)
                .await
                .with_context(|| failed(&backup))?;
            commit(run, version, Default::default()).await
        }
        Command::Backup(Backup::Vault(args)) => {
            let settings = args.encoding.settings(&args.recipients)?;
            let source = vault::VaultTarget::from_env()?;
            let auth = args.auth()?;
            let store = cli.store.open_for_backup().await?;
            let store: &dyn WriteStore = store.as_ref();
            let run = BackupRun::start(store, vault::ENGINE, &args.target, settings, cancel)?;
            let backup = run.backup().clone();
            tracing::info!(backup = %backup, store = store.location(), source = %source, "backup started");
            let outcome = vault::dump::dump(&run, &source, &auth)
                .await
                .with_context(|| failed(&backup))?;
            commit(run, outcome.server_version, outcome.facts).await
        }
        Command::Backup(Backup::Clickhouse(args)) => {
            let settings = args.encoding.settings(&args.recipients)?;
            let source = clickhouse::ChTarget::from_env()?;
            let store = cli.store.open_for_backup().await?;
            let store: &dyn WriteStore = store.as_ref();
            let run = BackupRun::start(store, clickhouse::ENGINE, &args.target, settings, cancel)?;
            let backup = run.backup().clone();
            tracing::info!(backup = %backup, store = store.location(), source = %source, "backup started");
            let opts = clickhouse::dump::DumpOptions {
                databases: args.databases,
                exclude: args.exclude,
                parallel: usize::from(args.parallel),
            };
            let (version, facts) = clickhouse::dump::dump(&run, &source, &opts)
                .await
                .with_context(|| failed(&backup))?;
            commit(run, version, facts).await
        }
    }
}

fn failed(backup: &drkit::catalog::BackupRef) -> String {
    format!("backup {backup} failed; nothing was committed and earlier backups are untouched")
}

/// Writes the manifest (the commit) and prints the new backup's id on stdout.
async fn commit(
    run: BackupRun<'_>,
    version: String,
    facts: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let backup = run.backup().clone();
    let manifest = run.commit(version, facts).await.with_context(|| {
        format!("writing the manifest of {backup} failed; the backup stays invisible")
    })?;
    tracing::info!(
        backup = %backup,
        parts = manifest.parts.len(),
        stored_bytes = manifest.size_bytes(),
        seconds = (manifest.finished_at - manifest.started_at).num_milliseconds() as f64 / 1000.0,
        "backup committed"
    );
    println!("{}", manifest.id);
    Ok(())
}

async fn prune(store: &StoreArgs, args: PruneArgs) -> anyhow::Result<()> {
    let policy = args.retention.policy();
    policy.validate()?;
    if let Some(e) = &args.engine {
        drkit::catalog::validate_engine(e)?;
    }
    if let Some(t) = &args.target {
        drkit::catalog::validate_name("target", t)?;
    }
    let filter = drkit::catalog::Filter {
        engine: args.engine,
        target: args.target,
    };
    let store = store.open().await?;
    let now = chrono::Utc::now();
    let items = prune::plan(store.as_ref(), &filter, &policy, now).await?;
    for item in &items {
        tracing::info!(
            backup = %format!("{}/{}/{}", item.engine, item.target, item.decision.id),
            status = %item.status,
            action = if item.decision.keep { "keep" } else { "delete" },
            reasons = %item.decision.reasons.join("; "),
            dry_run = args.dry_run,
            "decision"
        );
    }
    prune::check_plan(&items, args.limits.max_delete)?;
    let mut outcome = prune::PruneOutcome::default();
    if !args.dry_run {
        prune::execute(store.as_ref(), &items, &mut outcome)
            .await
            .context("pruning stopped part-way; rerun it to finish (a half-deleted backup has no manifest and is removed next time)")?;
    }
    let stale = prune::abort_stale_uploads(
        store.as_ref(),
        &filter,
        now - policy.incomplete_grace,
        args.dry_run,
        &mut outcome,
    )
    .await?;
    for upload in &stale {
        tracing::info!(key = %upload.key, started = %upload.started, dry_run = args.dry_run, "unfinished upload past the grace period");
    }
    if let Some(note) = &outcome.uploads_note {
        tracing::warn!(note = %note, "unfinished uploads not checked");
    }
    let doomed = items.iter().filter(|i| !i.decision.keep).count();
    tracing::info!(
        backups = items.len(),
        delete = doomed,
        deleted = outcome.deleted_backups,
        objects = outcome.deleted_objects,
        freed_bytes = outcome.freed_bytes,
        stale_uploads = stale.len(),
        aborted_uploads = outcome.aborted_uploads,
        dry_run = args.dry_run,
        "prune finished"
    );
    Ok(())
}
