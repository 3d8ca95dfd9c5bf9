//! PostgreSQL point-in-time recovery from the operator's side: `restore --time …
//! --to-datadir DIR [--start]`, `verify --wal` (the recoverable window) and `wal-fetch`
//! (PostgreSQL's `restore_command` while it recovers).

use std::path::{Path, PathBuf};

use clap::Args;
use drkit::catalog::Trust;
use drkit::cli::{CheckFailed, IdentityArgs, SignerArgs, StoreArgs};
use drkit::engine::postgres::wal::fetch::{self, FetchRequest};
use drkit::engine::postgres::wal::pitr::{self, PitrError, Until, Window};
use drkit::progress::Progress;
use drkit::store::ReadStore;

use crate::output::Format;

/// The flags of a restore into a data directory (`kubectl dr restore --to-datadir`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Point-in-time recovery (PostgreSQL)")]
pub struct PitrArgs {
    /// Recover into this empty or new directory (with --time).
    ///
    /// The newest physical base backup before the time and the archived WAL after it
    /// (`worker archive postgres`); needs --engine postgres --target T.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["all", "to", "in_cluster", "to_command"])]
    pub to_datadir: Option<PathBuf>,

    /// With --to-datadir: `latest` or a time such as 2026-12-02T14:03:00Z.
    ///
    /// `latest` restores everything archived; with a time (RFC 3339) the last transaction
    /// that ended at or before it is the last one restored.
    #[arg(long, value_name = "TIME|latest", requires = "to_datadir", value_parser = pitr::parse_time)]
    pub time: Option<Until>,

    /// With --to-datadir: recover to this WAL position (0/3000028) instead of a time.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "LSN",
        requires = "to_datadir",
        conflicts_with = "time"
    )]
    pub lsn: Option<String>,

    /// With --to-datadir: the timeline to recover along (default: the newest archived).
    #[arg(
        hide_short_help = true,
        long,
        value_name = "N",
        requires = "to_datadir"
    )]
    pub timeline: Option<u32>,

    /// With --to-datadir (or --all's datadir: destinations): also put every WAL file the
    /// recovery needs into DIR/pg_wal, checked, and set no restore_command that reaches
    /// the store: for a server whose image has no kubectl-dr (the in-cluster restore Job,
    /// manifests/postgres-archive).
    #[arg(hide_short_help = true, long)]
    pub wal_into_datadir: bool,

    /// With --to-datadir: start PostgreSQL on it and wait until it recovered.
    ///
    /// pg_ctl, as the user that owns the directory (never root); waits until recovery
    /// reached the target and promoted the server. A WAL file that fails its check stops
    /// recovery, and the restore exits 1 naming it.
    #[arg(long, requires = "to_datadir")]
    pub start: bool,

    /// With --start: how long recovery may take.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "DURATION",
        default_value = "6h",
        requires = "start"
    )]
    pub start_timeout: humantime::Duration,

    /// With --start: options for the server (pg_ctl -o), e.g. "-c port=5433" when the
    /// restored configuration's port is taken on this machine.
    #[arg(
        hide_short_help = true,
        long,
        value_name = "OPTIONS",
        requires = "start",
        allow_hyphen_values = true
    )]
    pub server_options: Option<String>,

    /// Where pg_ctl and postgres are, for --start (default: PATH).
    #[arg(
        hide_short_help = true,
        long = "server-bin-dir",
        value_name = "DIR",
        env = "DR_PG_SERVER_BIN_DIR"
    )]
    pub server_bin_dir: Option<PathBuf>,
}

impl PitrArgs {
    fn until(&self) -> anyhow::Result<Until> {
        if let Some(l) = &self.lsn {
            return Ok(Until::Lsn(l.parse().map_err(anyhow::Error::msg)?));
        }
        self.time
            .ok_or_else(|| anyhow::anyhow!("--to-datadir needs --time TIME|latest (or --lsn)"))
    }
}

/// Turns a plan or recovery failure into the exit code it deserves.
fn exit(e: PitrError) -> anyhow::Error {
    if e.is_check_failure() {
        CheckFailed(e.to_string()).into()
    } else {
        e.into()
    }
}

/// `restore --to-datadir`.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    args: &PitrArgs,
    target: Option<&str>,
    engine: Option<&str>,
    store_args: &StoreArgs,
    signers: &SignerArgs,
    identity: &IdentityArgs,
    dry_run: bool,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        engine.is_none_or(|e| e == "postgres"),
        "--to-datadir restores PostgreSQL base backups (--engine postgres)"
    );
    let target = target.ok_or_else(|| {
        anyhow::anyhow!("--to-datadir needs --target (the archiver's and base backups' target)")
    })?;
    let job = DatadirJob {
        target: target.to_string(),
        dir: args.to_datadir.clone().expect("called with --to-datadir"),
        until: args.until()?,
        timeline: args.timeline,
        wal_into_datadir: args.wal_into_datadir,
    };
    let trust = signers.enforced()?;
    let identities = identity.require()?;
    let store = store_args.open().await?;
    let store: &dyn ReadStore = store.as_ref();
    let plan = job.plan(store, &trust).await?;
    for line in &plan.lines {
        eprintln!("{line}");
    }
    if job.check_dir(&plan)? == DirState::Done {
        anyhow::bail!(
            "--to-datadir {}: the directory is not empty (it holds an earlier restore of the same base backup); a restore writes only into an empty or new directory",
            job.dir.display()
        );
    }
    let verified = job.verify_base(store, &plan, progress).await?;
    if dry_run {
        eprintln!("dry run: base backup verified, WAL checked against its index, nothing written");
        return Ok(());
    }
    let fetch = fetch_command(
        store_args,
        &trust,
        identity,
        target,
        &plan.base.facts.system_identifier,
    )?;
    job.execute(store, &identities, &plan, verified, &fetch, progress)
        .await?;
    if !args.start {
        eprintln!(
            "next: start PostgreSQL on it as the directory's owner{}:\n  pg_ctl -D {} -l {}/recovery.log start\nrecovery stops at the target and promotes",
            if job.wal_into_datadir { "" } else { ", with the store's credentials (AWS_*/AZURE_*/GOOGLE_*) in its environment (recovery fetches the WAL through kubectl-dr wal-fetch)" },
            job.dir.display(),
            job.dir.display()
        );
        return Ok(());
    }
    eprintln!(
        "starting PostgreSQL on {} and waiting for recovery",
        job.dir.display()
    );
    let report = pitr::start(
        &job.dir,
        args.server_bin_dir.as_deref(),
        args.server_options.as_deref(),
        &plan,
        *args.start_timeout,
    )
    .await
    .map_err(exit)?;
    for line in report {
        eprintln!("  {line}");
    }
    drkit::cli::print_line(format!(
        "recovered to {}; PostgreSQL is running on {}",
        job.until,
        job.dir.display()
    ))?;
    Ok(())
}

/// One restore into a data directory: of `restore --to-datadir`, or a `datadir:` step of
/// `restore --all`.
#[derive(Debug, Clone)]
pub struct DatadirJob {
    /// The target.
    pub target: String,
    /// The directory.
    pub dir: PathBuf,
    /// How far.
    pub until: Until,
    /// The timeline to follow.
    pub timeline: Option<u32>,
    /// Put the WAL into pg_wal.
    pub wal_into_datadir: bool,
}

/// What the directory of a job holds.
#[derive(Debug, PartialEq, Eq)]
pub enum DirState {
    /// Missing or empty: the restore may write.
    Empty,
    /// An earlier run restored this very base backup into it (`--all --resume`).
    Done,
}

impl DatadirJob {
    /// Parses `restore --all`'s `postgres/TARGET=datadir:/path[@TIME|@latest]`; `before`
    /// is the time when none is given (`--before`), else the latest.
    pub fn parse(
        key: &str,
        value: &str,
        before: Option<chrono::DateTime<chrono::Utc>>,
    ) -> anyhow::Result<DatadirJob> {
        let target = key.strip_prefix("postgres/").filter(|t| !t.is_empty() && !t.contains('/')).ok_or_else(|| {
            anyhow::anyhow!("{key}={value}: a datadir: destination is for one PostgreSQL target: postgres/TARGET=datadir:/path[@TIME]")
        })?;
        drkit::catalog::validate_name("target", target)?;
        let rest = value
            .strip_prefix("datadir:")
            .expect("called for datadir: values");
        let (path, until) = match rest.rsplit_once('@') {
            Some((p, t)) => match pitr::parse_time(t) {
                Ok(u) => (p, Some(u)),
                Err(e) => anyhow::bail!("{key}={value}: {e}"),
            },
            None => (rest, None),
        };
        anyhow::ensure!(
            Path::new(path).is_absolute(),
            "{key}={value}: the data directory must be an absolute path"
        );
        Ok(DatadirJob {
            target: target.to_string(),
            dir: PathBuf::from(path),
            until: until.unwrap_or(before.map_or(Until::Latest, Until::Time)),
            timeline: None,
            wal_into_datadir: false,
        })
    }

    /// The plan: base, WAL, settings; refuses what cannot be restored.
    ///
    /// # Errors
    /// The plan's refusal (exit 1 for a gap or a refused file).
    pub async fn plan(
        &self,
        store: &dyn ReadStore,
        trust: &Trust,
    ) -> anyhow::Result<pitr::PitrPlan> {
        pitr::plan(store, &self.target, self.until, self.timeline, trust)
            .await
            .map_err(exit)
    }

    /// Refuses a directory with anything in it, except an earlier restore of the same base
    /// backup (its recovery settings name it), which counts as done.
    ///
    /// # Errors
    /// A non-empty directory.
    pub fn check_dir(&self, plan: &pitr::PitrPlan) -> anyhow::Result<DirState> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e.count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => anyhow::bail!("--to-datadir {}: {e}", self.dir.display()),
        };
        if entries == 0 {
            return Ok(DirState::Empty);
        }
        let conf =
            std::fs::read_to_string(self.dir.join("postgresql.auto.conf")).unwrap_or_default();
        if conf.contains(&pitr::recovery_marker(plan)) {
            return Ok(DirState::Done);
        }
        anyhow::bail!(
            "data directory {}: the directory is not empty; a restore writes only into an empty or new directory",
            self.dir.display()
        )
    }

    /// Checks every byte of the base backup before anything is written.
    ///
    /// # Errors
    /// A damaged base (exit 1), the store.
    pub async fn verify_base<'p>(
        &self,
        store: &dyn ReadStore,
        plan: &'p pitr::PitrPlan,
        progress: &dyn Progress,
    ) -> anyhow::Result<drkit::verify::Verified<'p>> {
        let base = &plan.base.manifest;
        let part = base_part(plan)?;
        eprintln!(
            "checking {} ({})",
            base.backup_ref(),
            crate::output::human_bytes(part.ciphertext_bytes)
        );
        drkit::verify::check_before_restore(store, base, part, progress)
            .await
            .map_err(|e| exit(PitrError::Verify(e)))
    }

    /// Unpacks the base into the directory, puts the WAL into pg_wal when asked (else
    /// `fetch` is the restore_command), and writes the recovery settings.
    ///
    /// # Errors
    /// A non-empty directory, a damaged base or WAL file, the store, the disk.
    pub async fn execute(
        &self,
        store: &dyn ReadStore,
        identities: &drkit::pipeline::keys::Identities,
        plan: &pitr::PitrPlan,
        verified: drkit::verify::Verified<'_>,
        fetch: &[String],
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        pitr::prepare_datadir(&self.dir).map_err(exit)?;
        let base = &plan.base.manifest;
        let part = base_part(plan)?;
        // Checked in full by verify_base; the stream is checked again as it is read.
        let (mut plain, _bar) =
            drkit::verify::open_plaintext(store, verified, identities, progress)
                .await
                .map_err(|e| exit(PitrError::Verify(e)))?;
        let into = self.dir.clone();
        let backup = base.backup_ref().to_string();
        let part_owned = part.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            pitr::unpack(plain.as_read(), &into).map_err(|e| {
                anyhow::anyhow!(
                    "unpacking the base backup into {} failed: {e}",
                    into.display()
                )
            })?;
            drkit::verify::finish_checked(plain, &backup, &part_owned)?;
            Ok(())
        })
        .await??;
        let fetch = if self.wal_into_datadir {
            let bytes = pitr::fill_pg_wal(store, identities, &self.dir, plan)
                .await
                .map_err(exit)?;
            eprintln!(
                "wrote {} WAL file(s), {} bytes, into {}/pg_wal",
                plan.files.len(),
                bytes,
                self.dir.display()
            );
            // Recovery finds everything in pg_wal; the archive is not asked.
            vec!["false".to_string()]
        } else {
            fetch.to_vec()
        };
        let settings = pitr::write_recovery(&self.dir, plan, &fetch)?;
        eprintln!(
            "restored base backup {} into {}",
            base.backup_ref(),
            self.dir.display()
        );
        for s in &settings {
            eprintln!("  {s}");
        }
        Ok(())
    }
}

fn base_part(plan: &pitr::PitrPlan) -> anyhow::Result<&drkit::catalog::Part> {
    let base = &plan.base.manifest;
    base.part_of(&drkit::catalog::PartFormat::PgBaseTar)
        .ok_or_else(|| anyhow::anyhow!("backup {} has no base part", base.backup_ref()))
}

/// The `restore_command` words: this binary with the store, target, cluster and trust, so
/// the server's environment needs only the store's credentials.
pub fn fetch_command(
    store: &StoreArgs,
    trust: &Trust,
    identity: &IdentityArgs,
    target: &str,
    system_identifier: &str,
) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe()?;
    let mut words = vec![exe.display().to_string()];
    if let Some(s) = &store.store {
        words.extend(["--store".into(), s.clone()]);
    }
    if let Some(p) = store.s3_path_style {
        words.push(format!("--s3-path-style={p}"));
    }
    words.extend(["wal-fetch".into(), "--target".into(), target.into()]);
    words.extend(["--system-identifier".into(), system_identifier.into()]);
    if let Some(id) = &identity.identity {
        // Absolute: the server runs it from its data directory.
        let abs = std::path::absolute(id).unwrap_or_else(|_| id.clone());
        words.extend(["--identity".into(), abs.display().to_string()]);
    }
    // Public keys only: what this restore trusted, wal-fetch trusts.
    for key in trust.signers.key_lines() {
        words.extend(["--signer".into(), key]);
    }
    if trust.allow_unsigned {
        words.push("--allow-unsigned".into());
    }
    Ok(words)
}

/// Fetch one archived WAL file for PostgreSQL's recovery (its restore_command).
///
/// `kubectl dr restore --to-datadir` writes the command line; PostgreSQL runs it with %f
/// (the file's name) and %p (where to put it). The file's signed index entry is checked,
/// then its size and sha256, then it is decrypted and its plaintext checked; only then is it
/// written (atomically) to PATH.
///
/// Exit codes (PostgreSQL's protocol): 0 delivered; 1 not in the archive (recovery ends
/// there); 255 refused (damaged, unsigned, wrong key, store unreachable): PostgreSQL stops
/// recovery instead of promoting a server that misses WAL.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct WalFetchCmd {
    /// The file PostgreSQL asks for (%f).
    file: String,
    /// Where to write it (%p).
    path: PathBuf,
    /// The target whose archive to read.
    #[arg(long, short = 't', env = "DR_TARGET")]
    target: String,
    /// Refuse WAL of any other cluster than this system identifier.
    #[arg(long, value_name = "ID")]
    system_identifier: Option<String>,
    #[command(flatten)]
    identity: IdentityArgs,
}

impl WalFetchCmd {
    /// Runs and exits with PostgreSQL's codes.
    pub async fn run(self, store: &StoreArgs, signers: &SignerArgs) -> ! {
        let code = match self.fetch(store, signers).await {
            Ok(entry) => {
                tracing::info!(file = %entry.file, "delivered");
                0
            }
            Err((code, message)) => {
                // PostgreSQL probes for history files that need not exist: no noise then.
                if code != 1 || !self.file.ends_with(".history") {
                    eprintln!("kubectl-dr wal-fetch: {message}");
                }
                code
            }
        };
        std::process::exit(i32::from(code))
    }

    async fn fetch(
        &self,
        store: &StoreArgs,
        signers: &SignerArgs,
    ) -> Result<drkit::engine::postgres::wal::Entry, (u8, String)> {
        let fatal = |e: anyhow::Error| (255u8, format!("{e:#}"));
        let trust: Trust = signers.enforced().map_err(fatal)?;
        let identities = self.identity.require().map_err(|e| fatal(e.into()))?;
        let store = store.open().await.map_err(fatal)?;
        let req = FetchRequest {
            target: &self.target,
            file: &self.file,
            path: &self.path,
            system_identifier: self.system_identifier.as_deref(),
            trust: &trust,
        };
        fetch::fetch(store.as_ref(), &identities, &req)
            .await
            .map_err(|e| (e.exit_code(), e.to_string()))
    }
}

/// `verify --wal`: the archive's continuity and the recoverable window.
pub async fn verify_wal(
    store: &StoreArgs,
    target: Option<&str>,
    trust: &Trust,
    output: Format,
) -> anyhow::Result<()> {
    let target =
        target.ok_or_else(|| anyhow::anyhow!("--wal needs --target (the archiver's target)"))?;
    let store = store.open().await?;
    let w = pitr::window(store.as_ref(), target, trust, true)
        .await
        .map_err(exit)?;
    match output {
        Format::Table => {
            for n in &w.notes {
                eprintln!("{n}");
            }
            drkit::cli::print_line(window_line(&w, chrono::Utc::now()))?;
            for p in &w.problems {
                drkit::cli::print_line(format!("  PROBLEM: {p}"))?;
            }
        }
        f => crate::output::print_structured(f, &w)?,
    }
    if !w.problems.is_empty() {
        return Err(CheckFailed(format!(
            "the WAL archive of postgres/{target} has {} problem(s)",
            w.problems.len()
        ))
        .into());
    }
    Ok(())
}

/// "postgres/T: recoverable from … to …; the newest commit is 14 s old …".
pub fn window_line(w: &Window, now: chrono::DateTime<chrono::Utc>) -> String {
    let t = |x: Option<chrono::DateTime<chrono::Utc>>| {
        x.map_or("(none)".into(), |x| {
            x.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    };
    let age = |x: Option<chrono::DateTime<chrono::Utc>>| {
        x.map_or("never".to_string(), |x| {
            let d = now - x;
            if d.num_seconds() < 120 {
                format!("{} s ago", d.num_seconds().max(0))
            } else {
                drkit::catalog::short_duration(d) + " ago"
            }
        })
    };
    format!(
        "postgres/{}: recoverable from {} to {} (timeline {}, {} base backup(s), {} WAL file(s) checked); the newest archived commit was {}, the last upload {}",
        w.target,
        t(w.from),
        t(w.to),
        w.timeline,
        w.bases,
        w.files,
        age(w.to),
        age(w.last_archived),
    )
}
