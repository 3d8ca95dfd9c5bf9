//! `worker`: the backup side, run by Kubernetes CronJobs. Thin: it parses flags, opens the
//! store and hands over to the engine library; logs are JSON lines on stderr by default
//! because a CronJob has no terminal.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drkit::catalog::Manifest;
use drkit::cli::{self, LogFormat, StoreArgs};
use drkit::engine::registry::BackupCommand;
use drkit::observe::ping::{self, Ping};
use drkit::observe::push::{self, Pushgateway};
use drkit::observe::tail::LogTail;
use drkit::retention::prune;

/// Take encrypted, verified backups (PostgreSQL, Vault/OpenBao, ClickHouse, Redis/Valkey,
/// SQLite, Kubernetes objects, command output) into S3 or a directory.
///
/// Each backup streams the database's own dump through zstd and age (to public keys only)
/// into the store, then writes manifest.json with sizes, sha256 sums and exact row counts.
/// A backup without a manifest never happened: a failed run leaves nothing visible.
///
/// Monitoring: with --pushgateway (DR_PUSHGATEWAY_URL) every backup and prune pushes its
/// metrics (kube_dr_backup_*, kube_dr_prune_deleted_backups) to a Prometheus Pushgateway;
/// with DR_PING_URL (a healthchecks.io-style URL, from a Secret) each run pings
/// <url>/start and then <url>/<exit code> with the log's tail. Neither can fail a backup.
///
/// Exit codes: 0 ok, 1 a drill found differing counts or a damaged part, 2 the backup (or
/// prune, or drill) failed to run; a failed backup commits nothing.
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
        hide_short_help = true,
        long,
        value_enum,
        default_value = "json",
        env = "DR_LOG_FORMAT",
        global = true,
        help_heading = "Global options"
    )]
    log_format: LogFormat,

    /// Push metrics to this Prometheus Pushgateway after each backup and prune (e.g.
    /// http://pushgateway.monitoring:9091); one group per engine and target. A push that
    /// fails is a warning, never a failed backup.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "URL",
        env = "DR_PUSHGATEWAY_URL",
        global = true,
        help_heading = "Global options"
    )]
    pushgateway: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up one engine (the commands below; `worker backup <engine> --help` for each).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Delete backups a retention policy no longer keeps (and failed backups past --grace).
    ///
    /// Rules apply per engine and target; periods count back from the newest complete
    /// backup, so failing jobs never age out the last good copies, and the newest complete
    /// backup is always kept. Every manifest is read and checked first: a damaged one
    /// counts for nothing and is never deleted. A plan that would delete a target's last
    /// complete backup, or more than --max-delete of them, is refused (exit 2) before
    /// anything is deleted. Each decision is logged with its reasons.
    ///
    /// PostgreSQL WAL archives (`worker archive postgres`) follow their base backups: WAL
    /// older than the oldest physical base backup that stays is deleted, never a segment a
    /// kept one needs (with no base backup kept, the archive is kept whole).
    ///
    /// Example (a nightly prune CronJob):
    ///   worker prune --keep-daily 7 --keep-weekly 4 --keep-monthly 6
    #[command(verbatim_doc_comment)]
    Prune(PruneArgs),
    /// Restore the newest backup of each target into scratch destinations, compare the
    /// counts, drop what was created: the weekly proof that a rebuild would work.
    ///
    /// PostgreSQL databases are restored into <database>__drill on the --to postgres server
    /// and ClickHouse databases into <database>__drill on the --to clickhouse server; Redis
    /// goes to a scratch server (--to redis=…, empty or marked as the drill's own). Whatever
    /// happens, the scratch databases are dropped afterwards. The drill never touches another
    /// name: a URL that names a database is refused, and a scratch name that exists without
    /// the drill's mark (its comment, marker table or marker key) is refused.
    ///
    /// Vault/OpenBao, Kubernetes objects and command output, and any engine without a --to,
    /// get every part's integrity and content check (a raft snapshot's own sums, the
    /// YAML, the recorded sha256) and are reported as "not restored". A Vault snapshot is
    /// not restored by a CronJob: on another cluster it needs the backed-up cluster's
    /// unseal keys, which must not live in the cluster.
    ///
    /// Needs the private key (--identity / DR_IDENTITY_FILE, mounted only into the drill's
    /// pod). With --pushgateway it pushes kube_dr_drill_success,
    /// kube_dr_drill_duration_seconds and kube_dr_drill_last_timestamp_seconds per engine
    /// and target (job kube_dr_drill).
    ///
    /// Exit codes: 0 every drill passed, 1 a count differs or a part is damaged, 2 the drill
    /// could not run (a destination, permissions, a refused name).
    ///
    /// Example (a weekly CronJob):
    ///   worker drill --identity /keys/key.txt --to postgres=postgres://drill@db.shop:5432 \
    ///     --to clickhouse=http://clickhouse.signoz:8123 --max-diff 0
    #[command(verbatim_doc_comment)]
    Drill(Box<DrillArgs>),
    /// Copy every complete backup the destination lacks, as it is stored (3-2-1).
    ///
    /// Ciphertext, signature and manifest are copied byte for byte, so this job holds no
    /// private key and the copy verifies and restores like the original: `kubectl dr …
    /// --store <the copy>` works when the primary store is gone. Each part is hashed as it
    /// streams and completed only when it matches its manifest; the manifest goes last, so
    /// a copy killed anywhere leaves nothing visible, and a rerun copies only what is
    /// missing. Damaged backups, and backups the trusted signers (DR_SIGNERS) refuse, are
    /// not copied and are reported (exit 1); incremental backups are copied with the
    /// backups their references live in.
    ///
    /// The destination's S3 account: DR_COPY_AWS_ENDPOINT_URL, DR_COPY_AWS_REGION,
    /// DR_COPY_AWS_ACCESS_KEY_ID, DR_COPY_AWS_SECRET_ACCESS_KEY where set, else the
    /// standard AWS variables (which are the source's).
    ///
    /// Exit codes: 0 everything selected is in the destination, 1 a backup was refused,
    /// 2 a store failed.
    ///
    /// Example (a nightly CronJob after the backups):
    ///   worker copy --store s3://backups/prod --to s3://offsite/prod --since 7d
    #[command(verbatim_doc_comment)]
    Copy(CopyArgs),
    /// Stream a server's write-ahead log into the store, for point-in-time recovery (a
    /// long-running process: a Deployment of one replica).
    #[command(subcommand)]
    Archive(ArchiveCommand),
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// PostgreSQL: WAL over the replication protocol, each segment stored within --max-lag.
    ///
    /// pg_receivewal streams the WAL into --spool; each finished segment, and the segment
    /// being written every half --max-lag when it grew, goes through zstd and age into
    /// wal/postgres/<target>/<timeline>/ with a signed index entry (sha256, WAL positions,
    /// transaction times). The replication slot kube_dr_<target> moves only past segments
    /// that are in the store, so a restart, anywhere, resumes without a gap. SIGTERM stores
    /// what was received and exits 0.
    ///
    /// Needs a role with REPLICATION (libpq environment: PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD(_FILE)) and a replication line in pg_hba.conf. Pair it with a nightly
    /// `worker backup postgres --physical --target <same>`; restore with `kubectl dr restore
    /// --engine postgres --target T --time TIME --to-datadir DIR`.
    ///
    /// Metrics (--pushgateway, every 15 s): kube_dr_wal_last_segment_timestamp_seconds (when
    /// the store last held all WAL received), kube_dr_wal_last_commit_timestamp_seconds,
    /// kube_dr_wal_slot_retained_bytes and kube_dr_wal_slot_limit_bytes.
    ///
    /// Example (the Deployment's command):
    ///   worker archive postgres --target shop-db --max-lag 60s --spool /spool
    #[command(verbatim_doc_comment)]
    Postgres(Box<ArchiveRun>),
}

#[derive(Debug, clap::Args)]
struct ArchiveRun {
    #[command(flatten)]
    wal: drkit::engine::postgres::wal::archive::ArchiveArgs,
    #[command(flatten)]
    recipients: drkit::args::RecipientArgs,
    #[command(flatten)]
    encoding: drkit::args::EncodingArgs,
    #[command(flatten)]
    signing: drkit::args::SigningArgs,
    #[command(flatten)]
    lock: drkit::args::LockArgs,
}

#[derive(Debug, clap::Args)]
struct CopyArgs {
    /// The destination store: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix
    /// or file:///absolute/dir (created if missing). Its credentials: the store's standard
    /// variables with the prefix DR_COPY_ (DR_COPY_AWS_ACCESS_KEY_ID,
    /// DR_COPY_AZURE_STORAGE_CONNECTION_STRING, DR_COPY_GOOGLE_APPLICATION_CREDENTIALS…),
    /// each falling back to the unprefixed one.
    #[arg(long, env = "DR_COPY_TO", value_name = "URL")]
    to: String,
    /// Only backups of this engine.
    #[arg(long)]
    engine: Option<String>,
    /// Only backups of this target.
    #[arg(long)]
    target: Option<String>,
    /// Only backups younger than this (e.g. 7d); the bases of incremental ones come too.
    #[arg(long, value_name = "AGE")]
    since: Option<humantime::Duration>,
    #[command(flatten)]
    lock: drkit::args::LockArgs,
    /// Trusted signers: with them, a backup no trusted key signed is not copied.
    #[command(flatten)]
    signers: cli::SignerArgs,
    /// Print the report as JSON on stdout.
    #[arg(long, short = 'o', value_parser = ["json"])]
    output: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DrillArgs {
    /// Scratch destinations, ENGINE=URL or ENGINE/TARGET=URL (postgres, clickhouse,
    /// redis); repeatable. Passwords come from the engines' usual variables (PGPASSWORD(_FILE),
    /// CLICKHOUSE_PASSWORD(_FILE), REDIS_PASSWORD(_FILE)).
    #[arg(
        long,
        value_name = "ENGINE=URL",
        env = "DR_DRILL_TO",
        value_delimiter = ','
    )]
    to: Vec<String>,
    /// Only backups of this engine.
    #[arg(long)]
    engine: Option<String>,
    /// Only backups of this target.
    #[arg(long)]
    target: Option<String>,
    /// Largest per-table count difference accepted: rows or percent.
    #[arg(long, default_value = "0", value_name = "N|P%")]
    max_diff: drkit::verify::MaxDiff,
    #[command(flatten)]
    identity: cli::IdentityArgs,
    #[command(flatten)]
    signers: cli::SignerArgs,
    #[command(flatten)]
    engines: drkit::engine::registry::DrillFlags,
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
    /// Trusted signers: with them, a backup no trusted key signed counts for nothing and
    /// is never deleted (forged "newer" backups cannot push the genuine ones out).
    #[command(flatten)]
    signers: cli::SignerArgs,
    /// Log the decisions, delete nothing (a plan that would be refused is refused here too).
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    let tail = LogTail::default();
    cli::init_logging_to(cli.log_format, "info", tail.clone());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async move {
        let ping = Ping::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the dead man's switch is off");
            None
        });
        // Beside the run, not before it: a hanging monitor never holds up a backup.
        let started = ping
            .clone()
            .map(|p| tokio::spawn(async move { p.start().await }));
        let result = run(cli).await;
        let code = result.as_ref().err().map_or(0, cli::outcome_code);
        if let Err(e) = &result {
            if json {
                tracing::error!(error = format!("{e:#}"), exit_code = code, "failed");
            } else {
                tail.push(format!("error: {e:#}\n").as_bytes());
            }
        }
        if let (Some(ping), Some(started)) = (ping, started) {
            let limit = started.await.unwrap_or(ping::DEFAULT_BODY_LIMIT);
            ping.finish(code, tail.last(limit)).await;
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => cli::report(&e, json),
        }
    });
    // A thread still blocked in a read from a stalled server (abandoned after a SIGTERM or
    // --timeout) must not keep the process alive: dropping the runtime would wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cancel = drkit::shutdown::on_signals();
    let gateway = cli.pushgateway.as_deref().and_then(|url| {
        Pushgateway::new(url)
            .map_err(|e| tracing::warn!(error = %e, "metrics will not be pushed"))
            .ok()
    });
    match cli.command {
        Command::Prune(args) => prune(&cli.store, args, gateway.as_ref()).await,
        Command::Drill(args) => drill(&cli.store, *args, gateway.as_ref()).await,
        Command::Copy(args) => copy(&cli.store, args, cancel, gateway.as_ref()).await,
        Command::Archive(ArchiveCommand::Postgres(args)) => {
            archive(&cli.store, *args, cancel, gateway).await
        }
        Command::Backup(command) => {
            let (engine, target) = command.series();
            let target = target.to_string();
            // A name the store refuses is a usage error, not a failed backup of that name:
            // nothing is pushed under it (a target `..` would even name another group).
            drkit::catalog::validate_name("target", &target)?;
            let backup_timeout = command.timeout();
            // The timeout stops the run the way SIGTERM does: uploads aborted, nothing
            // committed, producers given a moment and then left behind.
            let cancel = cancel.child_token();
            let deadline = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(backup_timeout).await;
                tracing::warn!(timeout = %humantime::format_duration(backup_timeout), "the backup ran past --timeout: aborting uploads");
                deadline.cancel();
            });
            let attempt = chrono::Utc::now();
            let clock = std::time::Instant::now();
            let result = backup(&cli.store, command, cancel).await;
            let result = result.map_err(|e| {
                if clock.elapsed() >= backup_timeout {
                    e.context(format!(
                        "the backup ran past --timeout {} and was stopped",
                        humantime::format_duration(backup_timeout)
                    ))
                } else {
                    e
                }
            });
            if let Some(gateway) = &gateway {
                let metrics = push::backup_metrics(attempt, clock.elapsed(), result.as_ref().ok());
                gateway
                    .push_or_warn(engine.as_str(), &target, &metrics)
                    .await;
            }
            cli::print_line(&result?.id)?;
            Ok(())
        }
    }
}

async fn archive(
    store: &StoreArgs,
    args: ArchiveRun,
    cancel: tokio_util::sync::CancellationToken,
    gateway: Option<Pushgateway>,
) -> anyhow::Result<()> {
    use drkit::engine::postgres::wal::archive::{self, ArchiveStatus};
    drkit::catalog::validate_name("target", &args.wal.target)?;
    let mut settings = args.encoding.settings(&args.recipients)?;
    settings.signing = args.signing.load()?;
    let store = store.open_for_backup(args.lock.lock()).await?;
    let status = std::sync::Arc::new(std::sync::Mutex::new(None::<ArchiveStatus>));
    let report = {
        let status = status.clone();
        move |s: &ArchiveStatus| *status.lock().expect("status lock") = Some(s.clone())
    };
    type Shared = std::sync::Arc<std::sync::Mutex<Option<ArchiveStatus>>>;
    async fn push_wal(gateway: Option<&Pushgateway>, target: &str, status: &Shared) {
        let Some(g) = gateway else { return };
        let Some(s) = status.lock().expect("status lock").clone() else {
            return;
        };
        g.push_or_warn("postgres", target, &push::wal_metrics(&s))
            .await;
    }
    let pusher = {
        let (gateway, status, target) = (gateway.clone(), status.clone(), args.wal.target.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(15)).await;
                push_wal(gateway.as_ref(), &target, &status).await;
            }
        })
    };
    let result = archive::run(&args.wal, store.as_ref(), settings, cancel, &report).await;
    pusher.abort();
    push_wal(gateway.as_ref(), &args.wal.target, &status).await;
    Ok(result?)
}

async fn backup(
    store: &StoreArgs,
    command: BackupCommand,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Manifest> {
    let parts = command.into_parts().map_err(|e| anyhow::anyhow!(e))?;
    let mut settings = parts.encoding.settings(&parts.recipients)?;
    settings.signing = parts.signing.load()?;
    let store = store.open_for_backup(parts.lock.lock()).await?;
    Ok(drkit::engine::backup(
        store.as_ref(),
        parts.engine,
        &parts.target,
        settings,
        parts.source.as_ref(),
        cancel,
    )
    .await?)
}

async fn drill(
    store: &StoreArgs,
    args: DrillArgs,
    gateway: Option<&Pushgateway>,
) -> anyhow::Result<()> {
    use drkit::drill::{self, Verdict};
    use drkit::engine::registry;
    let flags = registry::RestoreFlags::from(args.engines.clone());
    let refused = flags.not_for_drill();
    anyhow::ensure!(
        refused.is_empty(),
        "{} {} not apply to a drill: it restores no roles, and names its scratch databases itself (<database>__drill)",
        refused.join(" and "),
        if refused.len() == 1 { "does" } else { "do" }
    );
    let identities = args.identity.require()?;
    let trust = args.signers.enforced()?;
    let mut destinations = drkit::rebuild::Destinations::default();
    for entry in &args.to {
        destinations.add(entry)?;
    }
    if let Some(e) = destinations.engines().find(|e| !registry::drills(e)) {
        anyhow::bail!(
            "--to {e}=…: the drill restores {} into scratch destinations; {e} backups get their integrity and content checks ({})",
            registry::drilled_names(),
            registry::no_drill_reason(e)
        );
    }
    let filter = drkit::catalog::Filter {
        engine: args.engine.clone(),
        target: args.target.clone(),
    };
    if let Some(e) = &filter.engine {
        drkit::catalog::validate_name("engine", e)?;
    }
    if let Some(t) = &filter.target {
        drkit::catalog::validate_name("target", t)?;
    }
    let store = store.open().await?;
    let manifests = drkit::rebuild::latest_backups(store.as_ref(), &filter, None, &trust).await?;
    let drill = drill::Drill {
        store: store.as_ref(),
        identities: &identities,
        destinations: &destinations,
        flags: &flags,
        max_diff: args.max_diff,
    };
    let gateway = gateway.map(|g| g.for_job(push::DRILL_JOB));
    let mut reports = Vec::new();
    for m in &manifests {
        tracing::info!(backup = %m.backup_ref(), "drill started");
        let report = drill.run(m).await;
        match report.verdict {
            Verdict::Passed => tracing::info!(
                backup = %report.backup,
                restored = report.restored,
                seconds = format!("{:.1}", report.seconds),
                "drill passed: {}",
                report.detail
            ),
            _ => tracing::error!(
                backup = %report.backup,
                verdict = report.verdict.as_str(),
                restored = report.restored,
                differences = ?report.differences,
                "drill failed: {}",
                report.detail
            ),
        }
        if let Some(g) = &gateway {
            g.push_or_warn(
                &report.engine,
                &report.target,
                &drill::metrics(&report, chrono::Utc::now()),
            )
            .await;
        }
        // The verdict is the exit code's: a closed stdout must not end the drill early
        // (or as a success).
        if let Err(e) = cli::print_line(serde_json::to_string(&report)?) {
            tracing::warn!(error = %e, "could not print the drill report");
        }
        reports.push(report);
    }
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let (bad, failed) = (
        count(Verdict::Mismatch) + count(Verdict::Damaged),
        count(Verdict::Failed),
    );
    if bad > 0 {
        return Err(cli::CheckFailed(format!(
            "{bad} of {} drill(s) found differing counts or damaged parts{}; see the log above",
            reports.len(),
            if failed > 0 {
                format!(" and {failed} could not run")
            } else {
                String::new()
            }
        ))
        .into());
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} drill(s) could not run; see the log above",
        reports.len()
    );
    tracing::info!(drills = reports.len(), "every drill passed");
    Ok(())
}

async fn copy(
    store: &StoreArgs,
    args: CopyArgs,
    cancel: tokio_util::sync::CancellationToken,
    gateway: Option<&Pushgateway>,
) -> anyhow::Result<()> {
    for (kind, name) in [("engine", &args.engine), ("target", &args.target)] {
        if let Some(n) = name {
            drkit::catalog::validate_name(kind, n)?;
        }
    }
    let trust = args.signers.lenient()?;
    if !trust.enforce {
        tracing::warn!("no signers (DR_SIGNERS): copy cannot tell a forged backup from the worker's own and copies both; set DR_SIGNERS to the worker's public key");
    }
    let from = store.open().await?;
    let url: drkit::store::StoreUrl = args.to.parse()?;
    let to = drkit::store::open(
        &url,
        &drkit::store::S3Options {
            path_style: store.s3_path_style,
            object_lock: args.lock.lock(),
            env_prefix: Some("DR_COPY_"),
        },
        drkit::store::OpenMode::CreateIfMissing,
    )
    .await?;
    let since = match args.since {
        Some(age) => Some(
            chrono::Utc::now() - chrono::Duration::from_std(*age).context("--since is too long")?,
        ),
        None => None,
    };
    let copy = drkit::copy::Copy {
        from: from.as_ref(),
        to: to.as_ref(),
        trust,
        filter: drkit::catalog::Filter {
            engine: args.engine,
            target: args.target,
        },
        since,
        cancel,
    };
    let report = copy.run().await?;
    if let Some(gateway) = gateway.map(|g| g.for_job(push::COPY_JOB)) {
        let finished = chrono::Utc::now();
        for series in &report.series {
            gateway
                .push_or_warn(
                    &series.engine,
                    &series.target,
                    &drkit::copy::metrics(series, finished),
                )
                .await;
        }
    }
    let bytes: u64 = report.copied.iter().map(|c| c.bytes).sum();
    if report.copied.is_empty() && report.refused.is_empty() {
        tracing::info!(present = report.present, to = %args.to, "nothing to copy: the destination has every backup");
    } else {
        tracing::info!(copied = report.copied.len(), bytes, present = report.present, refused = report.refused.len(), to = %args.to, "copy finished");
    }
    if args.output.is_some() {
        cli::print_line(&serde_json::to_string(&report)?)?;
    }
    if !report.refused.is_empty() {
        for r in &report.refused {
            tracing::error!(backup = %r.backup, why = %r.why, "not copied");
        }
        return Err(cli::CheckFailed(format!(
            "{} backup(s) were not copied: {}",
            report.refused.len(),
            report
                .refused
                .iter()
                .map(|r| format!("{} ({})", r.backup, r.why))
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    Ok(())
}

/// The WAL archives' share of a prune: WAL before the oldest base backup that stays.
async fn prune_wal(
    store: &dyn drkit::store::DeleteStore,
    target: Option<&str>,
    items: &[prune::PlanItem],
    trust: &drkit::catalog::Trust,
    dry_run: bool,
) -> anyhow::Result<()> {
    use drkit::engine::postgres::wal::{pitr, prune as wal_prune};
    for (target, keys) in wal_prune::archives(store, target).await? {
        let (bases, _) = pitr::bases(store, &target, trust).await?;
        let doomed = |id: &drkit::catalog::BackupId| {
            items.iter().any(|i| {
                i.engine == "postgres"
                    && i.target == target
                    && i.decision.id == *id
                    && !i.decision.keep
            })
        };
        let oldest = bases
            .iter()
            .filter(|b| !doomed(&b.manifest.id))
            .map(|b| (b.facts.start_lsn, b.facts.segment_bytes))
            .min();
        if oldest.is_none() {
            tracing::warn!(target = %target, "no physical base backup of this target stays: its WAL archive is kept whole");
        }
        let plan = wal_prune::plan(&target, &keys, oldest);
        tracing::info!(
            wal = %format!("postgres/{target}"),
            keep_from_segment = plan.keep_from.as_deref().unwrap_or("(all)"),
            kept_segments = plan.kept_segments,
            delete_files = plan.delete.len(),
            dry_run,
            "WAL retention: older than the oldest kept base backup"
        );
        if !dry_run {
            let (deleted, held) = wal_prune::execute(store, &plan)
                .await
                .context("pruning the WAL archive stopped part-way; rerun it to finish")?;
            for h in &held {
                tracing::info!(wal = %format!("postgres/{target}"), held = %h, "held by object lock: kept");
            }
            tracing::info!(wal = %format!("postgres/{target}"), deleted_objects = deleted, held = held.len(), "WAL pruned");
        }
    }
    Ok(())
}

async fn prune(
    store: &StoreArgs,
    args: PruneArgs,
    gateway: Option<&Pushgateway>,
) -> anyhow::Result<()> {
    let policy = args.retention.policy();
    policy.validate()?;
    if let Some(e) = &args.engine {
        // Unknown names are refused by the scan when nothing matches (a typo).
        drkit::catalog::validate_name("engine", e)?;
    }
    if let Some(t) = &args.target {
        drkit::catalog::validate_name("target", t)?;
    }
    let filter = drkit::catalog::Filter {
        engine: args.engine,
        target: args.target,
    };
    let trust = args.signers.lenient()?;
    if !trust.enforce {
        tracing::warn!("no signers (DR_SIGNERS): prune cannot tell a forged backup from the worker's own; set DR_SIGNERS to the worker's public key");
    }
    let store = store.open().await?;
    let now = chrono::Utc::now();
    let items = prune::plan(store.as_ref(), &filter, &policy, now, &trust).await?;
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
        if let Some(gateway) = gateway {
            for series in items.chunk_by(|a, b| (&a.engine, &a.target) == (&b.engine, &b.target)) {
                let deleted = series.iter().filter(|i| !i.decision.keep).count();
                gateway
                    .push_or_warn(
                        &series[0].engine,
                        &series[0].target,
                        &push::prune_metrics(deleted),
                    )
                    .await;
            }
        }
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
    if filter.engine.as_deref().is_none_or(|e| e == "postgres") {
        prune_wal(
            store.as_ref(),
            filter.target.as_deref(),
            &items,
            &trust,
            args.dry_run,
        )
        .await?;
    }
    let doomed = items.iter().filter(|i| !i.decision.keep).count();
    for item in items.iter().filter(|i| i.held.is_some()) {
        tracing::info!(
            backup = %format!("{}/{}/{}", item.engine, item.target, item.decision.id),
            held = %item.held.as_ref().expect("filtered"),
            "held by object lock: kept"
        );
    }
    tracing::info!(
        backups = items.len(),
        delete = doomed,
        held = items.iter().filter(|i| i.held.is_some()).count(),
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

#[cfg(test)]
mod tests {
    /// clap checks a command's consistency (unique ids and groups, valid defaults) only
    /// when it is built: do it here, not at a user's first `--help`.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
