//! `kubectl dr restore`: brings a database back from a backup, after proving the backup
//! intact, and ends with the same row-count comparison as `verify`.

use std::time::Duration;

use clap::Args;
use drkit::catalog::{self, Engine, Manifest, Trust};
use drkit::cli::{CheckFailed, IdentityArgs, SignerArgs, StoreArgs};
use drkit::engine::registry::{self, engine_of_url, RestoreFlags};
use drkit::engine::{RestoreCtx, RestoredCounts, RunKind};
use drkit::progress::Progress;
use drkit::rebuild::{Observer, Run, Step};
use drkit::store::ReadStore;
use drkit::verify::MaxDiff;

use super::counts::DatabaseCounts;
use super::FilterArgs;
use crate::cluster::restore::{self as cluster_restore, ScaleTarget};
use crate::cluster::{jobs, ClusterArgs};
use crate::output::{self, Format};

/// Restore a backup into a database, a Vault server, stdout or a command.
///
/// Order of work: check every byte of the part against the manifest (size, sha256); check
/// the key opens it; inspect the target; then stream decrypt → decompress → restore; compare
/// counts with the backup's (exit 1 on a mismatch).
///
/// One pass (PostgreSQL): where the target rolls back a failed stream, the part is read
/// once instead: its age header is checked against the manifest before anything reaches
/// the target, age authenticates every 64 KiB chunk, and the last chunk is held back until
/// size and sha256 matched; a damaged or cut part exits 1 and the target stays as it was.
/// The output says which path each part took (`one pass:` or `checking …`).
///
/// PostgreSQL (--to postgres://…): pg_restore runs as one transaction (a failure leaves the
/// target unchanged; a database the restore created is dropped again), then ANALYZE. A
/// missing database is created from template0. A database that already has tables is
/// refused unless --clean, which drops and recreates the objects the backup contains
/// (asks for confirmation unless --yes). --globals first
/// restores the roles of the backup's globals part (psql; existing roles are skipped). A
/// backup taken with `worker backup postgres --jobs` restores into a new database only,
/// --jobs N of its data parts at a time and its indexes built N at a time.
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
/// Redis/Valkey (--to redis://…, REDIS_PASSWORD or REDIS_PASSWORD_FILE): online, without
/// the server's files: this process listens (--listen, an address the server can reach)
/// and becomes the server's primary for one full sync, then sends REPLICAOF NO ONE; the
/// server is a primary again whatever happened. It replaces every key, so a server with
/// keys needs --clean. A server older than the backup's RDB version is refused.
///
/// Kubernetes objects (--to cluster, the kubeconfig's current context, or cluster:CONTEXT;
/// your own credentials): server-side apply in dependency order (CRDs, Namespaces,
/// ServiceAccounts, Secrets, ConfigMaps, PVCs, Services, workloads, the rest, Argo CD
/// last); existing objects are skipped unless --clean; --namespace-map renames; restored
/// Argo CD Applications lose their cascading resources-finalizer. --to - writes the YAML.
///
/// SQLite (--to sqlite:///path/app.db): written beside the file, checked (integrity_check,
/// counts) and renamed into place; an existing file needs --clean.
///
/// Command output (--to - or --to-command -- CMD…): the plaintext goes to stdout or into
/// the command's stdin, its last chunk held back until its size and sha256 matched the
/// manifest; a failing command fails the restore.
///
/// The rebuild day (--all): the newest backup of every target (or --before TIME), each to
/// its --to ENGINE=URL / ENGINE/TARGET=URL (or a --plan file), in the order Vault/OpenBao,
/// Kubernetes objects, PostgreSQL (one step per database; --globals first), ClickHouse,
/// Redis, SQLite, command output. Every destination is probed, every part of every backup checked
/// and every restore planned before anything changes; one confirmation; each step prints
/// its counts; a summary with the RTO ends the run (stdout, -o json|yaml). The first failed
/// step stops it: fix the cause and rerun with --resume (state in --state, default
/// ./kubectl-dr-rebuild.json; the same backups, verified steps skipped).
///
/// Examples:
///   kubectl dr restore latest --target prod --identity key.txt \
///     --to postgres://postgres@127.0.0.1:5432/app_restored
///   kubectl dr restore 20261122T020000.412Z-7f3a9c --identity key.txt --database app \
///     --to postgres://postgres@db:5432/app --clean --yes
///   kubectl dr restore latest --target prod --identity key.txt --globals --keep-owners \
///     --to postgres://postgres@db:5432/app
///   VAULT_TOKEN_FILE=new-root.txt kubectl dr restore latest --engine vault --identity key.txt \
///     --to https://vault.vault.svc:8200 --force --restored-token-file old-root.txt
///   REDIS_PASSWORD_FILE=pw.txt kubectl dr restore latest --engine redis --identity key.txt \
///     --to redis://redis-master.redis.svc:6379 --clean --listen 10.0.3.17:6380
///   kubectl dr restore latest --engine kubernetes --identity key.txt --to cluster --dry-run
///   kubectl dr restore latest --engine clickhouse --identity key.txt --to http://clickhouse:8123 \
///     --replicated convert --database-map signoz_logs=signoz_logs_restored
///   kubectl dr restore latest --identity key.txt --to postgres://postgres@db.shop:5432/app \
///     --in-cluster --scale-down shop/deployment/app      # as a Job next to the database
///   VAULT_TOKEN_FILE=new-root.txt kubectl dr restore --all --identity key.txt \
///     --to vault=https://vault:8200 --to postgres=postgres://postgres@db:5432 \
///     --to clickhouse=http://clickhouse:8123 --force --restored-token-file old-root.txt \
///     --globals --max-diff 10%                           # the whole rebuild, in order
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RestoreCmd {
    /// Backup id, or `latest` (with --all or --to-datadir: not given).
    #[arg(required_unless_present_any = ["all", "to_datadir"], conflicts_with_all = ["all", "to_datadir"])]
    backup: Option<String>,

    #[command(flatten)]
    pub(super) filter: FilterArgs,

    #[command(flatten)]
    pub(super) identity: IdentityArgs,

    /// Where to restore: postgres://…, http(s)://… (Vault, ClickHouse), redis://…,
    /// cluster[:CONTEXT] or -; with --all ENGINE[/TARGET]=URL, repeatable.
    ///
    /// postgres://user@host:port[/db] (default database: the backed-up
    /// one's name; password from PGPASSWORD or PGPASSWORD_FILE), http(s)://vault:8200
    /// (token from VAULT_TOKEN or VAULT_TOKEN_FILE), http(s)://clickhouse:8123
    /// (CLICKHOUSE_USER, CLICKHOUSE_PASSWORD(_FILE)), redis://host:6379, cluster[:CONTEXT],
    /// or - (stdout, command backups). With --all: ENGINE=URL or ENGINE/TARGET=URL,
    /// repeatable; postgres/TARGET=datadir:/path[@TIME] restores that target's base backup
    /// and WAL into a data directory (point-in-time recovery; TIME: latest, the default,
    /// or RFC 3339; --before sets it too).
    #[arg(long, value_name = "URL", required_unless_present_any = ["to_command", "all", "plan", "to_datadir"])]
    pub(super) to: Vec<String>,

    /// Which database of a multi-database backup to restore (ClickHouse: restore the tables
    /// of this database only).
    #[arg(long, short = 'd', value_name = "DB")]
    database: Option<String>,

    /// Drop and recreate the objects the backup contains where they exist (asks unless --yes).
    #[arg(long)]
    pub(super) clean: bool,

    /// Do not ask before dropping or replacing data.
    #[arg(long, short = 'y')]
    pub(super) yes: bool,

    /// Check the backup and the target, print what would happen, change nothing.
    #[arg(long)]
    pub(super) dry_run: bool,

    /// Largest per-table count difference accepted after the restore: rows or percent
    /// (default 0; the runbooks' rollback rule is 10%).
    #[arg(long, value_name = "N|P%")]
    pub(super) max_diff: Option<MaxDiff>,

    /// Output format of the final count comparison.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub(super) output: Format,

    #[command(flatten)]
    pub(super) engines: RestoreFlags,

    #[command(flatten)]
    pub(super) pitr: super::pitr::PitrArgs,

    /// PostgreSQL: run the restore as a Job in the cluster, next to the database.
    ///
    /// The Job comes from the engine's backup CronJob (same image, store settings and
    /// credentials). The identity goes into a short-lived Secret that is deleted
    /// afterwards, whatever happens.
    #[arg(long, help_heading = "Cluster")]
    in_cluster: bool,

    /// With --in-cluster: scale this workload to 0 during the restore and back afterwards
    /// ([NAMESPACE/]deployment/NAME or statefulset/NAME); repeatable.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "[NS/]KIND/NAME",
        requires = "in_cluster",
        help_heading = "Cluster"
    )]
    scale_down: Vec<ScaleTarget>,

    /// With --in-cluster: the Job's deadline.
    #[arg(
        hide_short_help = true,
        long,
        default_value = "6h",
        value_name = "DURATION",
        help_heading = "Cluster"
    )]
    timeout: humantime::Duration,

    #[command(flatten)]
    cluster: ClusterArgs,

    /// The rebuild day: the newest backup of every target, each to its --to ENGINE=URL.
    ///
    /// Every target in the store (or those --engine and --target choose, less --skip), in
    /// the rebuild order: Vault/OpenBao, Kubernetes objects, PostgreSQL, ClickHouse, Redis,
    /// SQLite, command output.
    #[arg(long, help_heading = "Rebuild (--all)", conflicts_with_all = ["database", "in_cluster"])]
    pub(super) all: bool,

    /// Leave these out of the rebuild: ENGINE or ENGINE/TARGET, repeatable (e.g. --skip
    /// vault when Vault was restored by hand). --engine and --target choose what is in.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "ENGINE[/TARGET]",
        help_heading = "Rebuild (--all)",
        requires = "all"
    )]
    pub(super) skip: Vec<String>,

    /// With --all: the newest backups made before TIME (RFC 3339, a date, or a duration
    /// ago such as 36h) instead of the newest.
    #[arg(hide_short_help = true, long, value_name = "TIME", requires = "all", help_heading = "Rebuild (--all)", value_parser = super::restore_all::parse_before)]
    pub(super) before: Option<chrono::DateTime<chrono::Utc>>,

    /// With --all: a YAML file with the destinations (`to:` a map of ENGINE or
    /// ENGINE/TARGET to URL), and optionally `maxDiff:` and `globals:`; --to adds to it.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "FILE",
        requires = "all",
        help_heading = "Rebuild (--all)"
    )]
    pub(super) plan: Option<std::path::PathBuf>,

    /// With --all: continue the run recorded in --state, with the same backups, skipping
    /// the steps it verified.
    #[arg(
        hide_short_help = true,
        long,
        requires = "all",
        help_heading = "Rebuild (--all)"
    )]
    pub(super) resume: bool,

    /// Print where the time went when the restore ends: store read, sha256, age, zstd,
    /// the wait on the restore tool, its run, ANALYZE and counts (see docs/PERFORMANCE.md).
    #[arg(hide_short_help = true, long)]
    pub(super) timings: bool,

    /// With --all: where the run records its chosen backups and verified steps.
    #[arg(hide_short_help = true, long, value_name = "FILE", requires = "all", help_heading = "Rebuild (--all)", default_value = super::restore_all::DEFAULT_STATE_FILE)]
    pub(super) state: std::path::PathBuf,
}

impl RestoreCmd {
    pub async fn run(
        self,
        store: &StoreArgs,
        signers: &SignerArgs,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        if self.pitr.to_datadir.is_some() {
            return super::pitr::restore(
                &self.pitr,
                self.filter.target.first().map(String::as_str),
                self.filter.engine.first().map(String::as_str),
                store,
                signers,
                &self.identity,
                self.dry_run,
                progress,
            )
            .await;
        }
        let trust = signers.enforced()?;
        if self.all {
            return self.run_all(store, &trust, progress).await;
        }
        let identities = self.identity.require()?;
        if self.in_cluster {
            return self.in_cluster(store, &trust).await;
        }
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        // A postgres:// or redis:// destination names its engine: no --engine needed.
        let mut filter = self.filter.filter()?;
        if filter.engine.is_none() {
            filter.engine = engine_of_url(&self.single_to()?).map(|e| e.to_string());
        }
        let manifest = catalog::resolve(store, self.selector(), &filter, &trust).await?;
        // A base backup for point-in-time recovery goes into a data directory: say so
        // before any destination is contacted.
        drkit::engine::postgres::sink::refuse_physical(&manifest)
            .map_err(|e| anyhow::anyhow!(e))?;
        let max_diff = self.max_diff.unwrap_or_default();
        let step = Step {
            manifest: &manifest,
            scope: self.database.clone(),
            to: self.single_to()?,
            first: true,
        };
        let say = |m: &str| eprintln!("{m}");
        let run = Run {
            ctx: RestoreCtx {
                store,
                identities: &identities,
                progress,
                say: &say,
            },
            flags: &self.engines,
            clean: self.clean,
            max_diff,
            kind: RunKind::Single,
        };
        // The server first (a typo in --to must not cost a full integrity pass), then the
        // parts the engine needs, its plan.
        let prepared = run.prepare(vec![(0, step)], 1, false).await?;
        for (_, p) in &prepared {
            for line in &p.lines {
                eprintln!("{line}");
            }
        }
        if self.dry_run {
            eprintln!("dry run: backup verified, target inspected, nothing changed");
            return Ok(());
        }
        for (_, p) in &prepared {
            if let Some(c) = &p.confirm {
                if !self.yes {
                    super::confirm(&c.what, &c.prompt, &c.word)?;
                }
            }
        }
        let mut counts = Counts {
            max_diff,
            report: None,
        };
        let outcome = run.execute(prepared, 1, None, &mut counts).await;
        if self.timings {
            eprint!("{}", drkit::pipeline::timings::render(started.elapsed()));
        }
        let Some(report) = counts.report else {
            // Nothing to compare (command backups: their size and sha256 were checked as
            // the stream ended; stdout may be the restored data itself), or a failed step.
            return Ok(outcome?);
        };
        self.report(&manifest, &report)
    }

    fn selector(&self) -> &str {
        self.backup.as_deref().unwrap_or("latest")
    }

    /// The one `--to` of a single restore.
    fn single_to(&self) -> anyhow::Result<String> {
        match self.to.as_slice() {
            [] => Ok(String::new()),
            [one] => Ok(one.clone()),
            _ => anyhow::bail!(
                "--to is given {} times; restoring several backups at once is --all (with --to ENGINE=URL each)",
                self.to.len()
            ),
        }
    }

    /// Runs this same restore as a Job in the cluster and reports its outcome.
    async fn in_cluster(&self, store: &StoreArgs, trust: &Trust) -> anyhow::Result<()> {
        let to = self.single_to()?;
        let to = to.as_str();
        let engine = match self.filter.filter()?.engine {
            Some(e) => Engine::from(e.as_str()),
            None => engine_of_url(to).ok_or_else(|| {
                anyhow::anyhow!("cannot tell the engine from --to {to}; pass --engine")
            })?,
        };
        registry::in_cluster(&engine).map_err(anyhow::Error::msg)?;
        let identity_path = self.identity.identity.as_ref().expect("required above");
        let identity = std::fs::read(identity_path)?;
        let args = Forwarded::of(self, engine.as_str(), store.store.clone(), trust).to_args();
        let client = self.cluster.client().await?;
        let ns = &self.cluster.namespace;
        let cronjob = jobs::find_cronjob(&client, ns, engine.as_str()).await?;
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
        drkit::cli::print_line(report.logs.trim_end())?;
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

/// Keeps the count comparison of a single restore, to print once it ended.
struct Counts {
    max_diff: MaxDiff,
    report: Option<DatabaseCounts>,
}

impl Observer for Counts {
    fn restored(
        &mut self,
        _index: usize,
        _step: &Step<'_>,
        _seconds: f64,
        counts: &RestoredCounts,
        _ok: bool,
    ) {
        if !counts.rows.is_empty() {
            self.report = Some(DatabaseCounts::new(
                &counts.heading,
                counts.against.clone(),
                self.max_diff,
                counts.rows.clone(),
            ));
        }
    }
}

/// What an in-cluster restore Job runs `kubectl-dr restore` with (the Job adds the mounted
/// identity and `--yes`): a typed value that writes itself as argv, checked against the
/// parser by a round-trip test, so forwarded flags cannot drift from the command's own.
#[derive(Debug, Clone, PartialEq)]
struct Forwarded {
    backup: String,
    to: String,
    engine: String,
    target: Option<String>,
    database: Option<String>,
    store: Option<String>,
    max_diff: MaxDiff,
    clean: bool,
    /// The engine's own flags, as its registry entry forwards them.
    engine_args: Vec<String>,
    dry_run: bool,
    /// The trusted keys as key lines (a `.pub` path on this machine means nothing in a Job).
    signers: Vec<String>,
    allow_unsigned: bool,
}

impl Forwarded {
    fn of(cmd: &RestoreCmd, engine: &str, store: Option<String>, trust: &Trust) -> Self {
        Forwarded {
            backup: cmd.selector().to_string(),
            to: cmd.to.first().cloned().unwrap_or_default(),
            engine: engine.to_string(),
            target: cmd.filter.target.first().cloned(),
            database: cmd.database.clone(),
            store,
            max_diff: cmd.max_diff.unwrap_or_default(),
            clean: cmd.clean,
            engine_args: cmd.engines.forwarded(&Engine::from(engine)),
            dry_run: cmd.dry_run,
            signers: trust.signers.key_lines(),
            allow_unsigned: trust.allow_unsigned,
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            self.backup.clone(),
            "--to".into(),
            self.to.clone(),
            "--engine".into(),
            self.engine.clone(),
            "--max-diff".into(),
            self.max_diff.to_arg(),
        ];
        args.extend(self.engine_args.iter().cloned());
        for (flag, value) in [
            ("--target", &self.target),
            ("--database", &self.database),
            ("--store", &self.store),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_string(), v.clone()]);
            }
        }
        for (flag, on) in [
            ("--clean", self.clean),
            ("--dry-run", self.dry_run),
            ("--allow-unsigned", self.allow_unsigned),
        ] {
            if on {
                args.push(flag.to_string());
            }
        }
        for key in &self.signers {
            args.extend(["--signer".to_string(), key.clone()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    /// Parses `kubectl dr restore ARGS…` as the binary does (the store flag is global there).
    fn parse(args: &[String]) -> (RestoreCmd, StoreArgs, Trust) {
        let cmd = SignerArgs::augment_args(StoreArgs::augment_args(RestoreCmd::augment_args(
            clap::Command::new("restore"),
        )));
        let matches = cmd
            .try_get_matches_from(
                std::iter::once("restore".to_string()).chain(args.iter().cloned()),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        (
            RestoreCmd::from_arg_matches(&matches).unwrap(),
            StoreArgs::from_arg_matches(&matches).unwrap(),
            SignerArgs::from_arg_matches(&matches)
                .unwrap()
                .enforced()
                .unwrap(),
        )
    }

    #[test]
    fn forwarded_flags_round_trip_through_the_parser() {
        let cases = [
            Forwarded {
                backup: "latest".into(),
                to: "postgres://postgres@db.shop:5432/app".into(),
                engine: "postgres".into(),
                target: Some("prod".into()),
                database: Some("app".into()),
                store: Some("s3://backups/cluster-a".into()),
                max_diff: MaxDiff::Percent(10.0),
                clean: true,
                engine_args: vec![
                    "--jobs".into(),
                    "4".into(),
                    "--keep-owners".into(),
                    "--globals".into(),
                ],
                dry_run: true,
                signers: vec![
                    "RWTWv4k1QdayQhD1oKUZfejZxKfQwbHh8yDJW21yOdwiGNAsaaTFWmE/".into(),
                    "RWTT2uFFgAdMx1Ju3I2sT3PnbLiqAW1TFNLL1ovgQl+mC9HNe38Zm5kB".into(),
                ],
                allow_unsigned: false,
            },
            Forwarded {
                backup: "20261122T020000Z-7f3a9c".into(),
                to: "postgres://u@h/db".into(),
                engine: "postgres".into(),
                target: None,
                database: None,
                store: None,
                max_diff: MaxDiff::Rows(250),
                clean: false,
                engine_args: vec!["--jobs".into(), "1".into()],
                dry_run: false,
                signers: Vec::new(),
                allow_unsigned: true,
            },
        ];
        for f in cases {
            let (cmd, store, trust) = parse(&f.to_args());
            assert_eq!(Forwarded::of(&cmd, &f.engine, store.store, &trust), f);
        }
    }
}
