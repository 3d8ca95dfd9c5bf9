//! Restoring a `pg_dump -Fc` part into a database.
//!
//! Safety rules, in order: the part's integrity is checked by the caller, in a pass before
//! ([`crate::verify::check_before_restore`]) or, in one pass, as it streams (its age header
//! against the manifest first, then age's per-chunk authentication, then size and sha256
//! before the withheld last chunk: [`crate::verify::Verified::as_it_streams`]); the key is
//! checked here before the target is touched; a database that already holds tables is
//! refused unless `--clean`; `pg_restore` runs as a single transaction, so a failure (or a
//! stream that turns out damaged at its very end: pg_restore is killed before it sees EOF)
//! leaves the target as it was; a database this restore created is dropped again when the
//! restore fails. That last pair is what lets the PostgreSQL sink say it
//! [`crate::engine::Sink::rolls_back`] and read each part once.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};

use super::{count_tables, quote_ident, PgError, PgTarget, LIST_TABLES};
use crate::catalog::{Part, Section, TableCount};
use crate::engine::child::{self, ChildError, StdinChild};
use crate::engine::RestoreCtx;
use crate::pipeline::decode::PlainReader;
use crate::pipeline::timings::{self, Stage};
use crate::store::StoreError;
use crate::verify::{stream_withheld, Verified, VerifyError};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Drop and recreate the objects the dump contains (pg_restore --clean --if-exists).
    pub clean: bool,
    /// Restore ownership and grants (needs the roles to exist, e.g. from the globals part).
    pub keep_owners: bool,
    /// Where pg_restore and psql are (`--pg-bin-dir`); PATH when unset.
    pub bin_dir: Option<PathBuf>,
}

/// Errors of a restore. The target is unchanged whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Connecting or querying failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The target database already holds tables (no `--clean`).
    #[error("database {database} on {server} already has {tables} table(s); restore into a new database (--to …/NEWDB) or pass --clean to drop and recreate what the backup contains")]
    NotEmpty {
        /// The database.
        database: String,
        /// The server.
        server: String,
        /// The tables concerned.
        tables: usize,
    },
    // Not transparent: the VerifyError must stay in the error chain, where the exit code
    // (1 for a backup that fails a check, even mid-restore) looks for it.
    /// A part failed its check while it streamed (exit 1).
    #[error("reading the backup")]
    Verify(#[from] VerifyError),
    /// pg_restore failed.
    #[error(
        "pg_restore failed; the target was left unchanged (the restore runs as one transaction)"
    )]
    Tool(#[source] ChildError),
    /// Reading from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A split backup lacks a part its layout needs.
    #[error(
        "the backup's manifest lists a split dump with {0}; the backup is damaged, use another one"
    )]
    Layout(&'static str),
    /// A `pg_restore --use-list` file could not be written.
    #[error("cannot write a pg_restore list file in the temporary directory (TMPDIR)")]
    ListFile(#[source] std::io::Error),
    /// pg_restore 17 or newer into a server older than 17.
    #[error("pg_restore {tool} cannot restore into PostgreSQL {server_major} on {server}: since 17 it sets transaction_timeout, which older servers refuse, and the restore would fail; nothing was changed. Restore into PostgreSQL 17 or newer (a rebuild is the moment to move up), or, for a backup taken by pg_dump {server_major} or older, point DR_PG_BIN_DIR (--pg-bin-dir) at that major's pg_restore")]
    ToolTooNew {
        /// pg_restore's version line.
        tool: String,
        /// The server's major version.
        server_major: u32,
        /// The server.
        server: String,
    },
    /// A split backup into a database that exists.
    #[error("the backup stores database {database} in several parts (taken with `worker backup postgres --jobs`), which cannot be restored in one transaction, so it restores only into a database the restore creates (and drops again if it fails); database {database} exists on {server}: restore under a new name (--to …/NEWDB) or drop it first")]
    SplitIntoExisting {
        /// The database.
        database: String,
        /// The server.
        server: String,
    },
    /// psql failed on the globals part (roles, tablespaces).
    #[error("restoring the globals (roles, tablespaces) failed; with one transaction nothing of them was applied, and no database was restored")]
    Globals(#[source] ChildError),
}

/// What a restore will do, shown to the user before anything happens.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The server.
    pub target: PgTarget,
    /// The database restored into.
    pub database: String,
    /// Whether it exists already.
    pub exists: bool,
    /// Tables it holds now.
    pub existing_tables: usize,
    /// Whether `--clean` drops and recreates it.
    pub clean: bool,
}

impl RestorePlan {
    /// True when objects that exist now will be dropped.
    pub fn is_destructive(&self) -> bool {
        self.exists && self.existing_tables > 0
    }

    /// One line for people: what will be replaced or created.
    pub fn describe(&self) -> String {
        match (self.exists, self.existing_tables) {
            (false, _) => format!("create database {} on {} (from template0) and restore into it", self.database, self.target),
            (true, 0) => format!("restore into the existing, empty database {} on {}", self.database, self.target),
            (true, n) => format!(
                "DROP and recreate the objects of the backup in database {} on {} ({n} table(s) there now)",
                self.database, self.target
            ),
        }
    }
}

/// Inspects the target and decides what the restore will do.
///
/// # Errors
/// [`RestoreError::NotEmpty`] for a database with tables and no `--clean`; connection errors.
pub async fn plan(
    to: &PgTarget,
    part: &Part,
    opts: &RestoreOptions,
) -> Result<RestorePlan, RestoreError> {
    let database = to
        .dbname
        .clone()
        .or_else(|| part.database.clone())
        .ok_or(PgError::NoDatabase)?;
    let maintenance = to.connect("postgres").await?;
    check_tool_fits(to, &maintenance, opts).await?;
    let exists = maintenance
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| to.query_error("looking up the database", &e))?
        .is_some();
    let target = to.with_dbname(&database);
    let existing_tables = if exists {
        let client = to.connect(&database).await?;
        client
            .query(LIST_TABLES, &[])
            .await
            .map_err(|e| target.query_error("listing tables", &e))?
            .len()
    } else {
        0
    };
    let server = || {
        to.with_dbname("")
            .to_string()
            .trim_end_matches('/')
            .to_string()
    };
    if exists && part.section.is_some() {
        return Err(RestoreError::SplitIntoExisting {
            database,
            server: server(),
        });
    }
    if existing_tables > 0 && !opts.clean {
        return Err(RestoreError::NotEmpty {
            database,
            server: server(),
            tables: existing_tables,
        });
    }
    Ok(RestorePlan {
        target,
        database,
        exists,
        existing_tables,
        clean: opts.clean,
    })
}

/// Refuses a pg_restore of 17 or newer for a server older than 17: it opens every restore
/// with `SET transaction_timeout = 0`, which such servers reject, so the restore would fail
/// after its plan (and a one-transaction restore rolls back to nothing).
async fn check_tool_fits(
    to: &PgTarget,
    maintenance: &tokio_postgres::Client,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let server: i32 = maintenance
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| to.query_error("reading the server version", &e))?
        .get(0);
    let server_major = u32::try_from(server / 10000).unwrap_or(0);
    if server_major >= 17 {
        return Ok(());
    }
    let mut version = child::tool(opts.bin_dir.as_deref(), "pg_restore");
    version.arg("--version");
    // Not on the runtime's thread: a tool that hangs must not stall the others.
    let out = tokio::process::Command::from(version).output().await;
    let Ok(out) = out else {
        // A missing pg_restore is named by the restore itself.
        return Ok(());
    };
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tool_major = line
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if tool_major >= 17 {
        return Err(RestoreError::ToolTooNew {
            tool: line,
            server_major,
            server: to
                .with_dbname("")
                .to_string()
                .trim_end_matches('/')
                .to_string(),
        });
    }
    Ok(())
}

/// Runs a planned restore of `part` and returns the restored database's exact counts.
///
/// # Errors
/// Wrong key, damaged stream, pg_restore failure, connection errors; in each case the target
/// is left as it was.
pub async fn run(
    plan: &RestorePlan,
    verified: Verified<'_>,
    opts: &RestoreOptions,
    ctx: RestoreCtx<'_>,
) -> Result<Vec<TableCount>, RestoreError> {
    // The age header opens first: a wrong key fails before the target is touched.
    let (plain, bar) = ctx.open(verified).await?;
    let maintenance = create_if_new(plan).await?;
    let mut args = vec!["--single-transaction".to_string()];
    if plan.clean {
        args.extend(["--clean".into(), "--if-exists".into()]);
    }
    let loaded = feed_blocking(plan, opts, verified, plain, args).await;
    bar.finish();
    if let Err(e) = loaded {
        if !plan.exists {
            // Ours, and empty (the transaction rolled back): leave the server as we found it.
            drop_created(&maintenance, &plan.target, &plan.database).await;
        }
        return Err(e);
    }
    analyze_and_count(plan).await
}

/// Runs a planned restore of a split backup (`worker backup postgres --jobs`): pre-data in
/// one transaction; then the data parts, `jobs` at a time, each in its own transaction;
/// then post-data, its indexes and primary/unique constraints `jobs` at a time (as
/// `pg_restore -j` builds them), the rest of it (foreign keys, triggers, materialized views'
/// contents…) after them in the dump's order. The parts do not share one transaction, so
/// this runs only into a database the restore creates ([`plan`] refuses others), and drops
/// it again when anything fails.
///
/// # Errors
/// As [`run`]; the created database is dropped again.
pub async fn run_split(
    plan: &RestorePlan,
    parts: &[Verified<'_>],
    opts: &RestoreOptions,
    jobs: usize,
    ctx: RestoreCtx<'_>,
) -> Result<Vec<TableCount>, RestoreError> {
    let pre = *of(parts, Section::PreData)
        .first()
        .ok_or(RestoreError::Layout("no pre-data part"))?;
    let post = *of(parts, Section::PostData)
        .first()
        .ok_or(RestoreError::Layout("no post-data part"))?;
    // The key is checked on the first part before the database is created.
    let (plain, bar) = ctx.open(pre).await?;
    let maintenance = create_if_new(plan).await?;
    let jobs = jobs.max(1);
    let loader = Loader { plan, ctx, opts };
    let loaded = async {
        let first = feed_blocking(plan, opts, pre, plain, one_transaction()).await;
        bar.finish();
        first?;
        // Plain loops build the futures: closures here trip the Send check of the trait's
        // boxed future (higher-ranked lifetimes).
        let mut data = Vec::new();
        for v in of(parts, Section::Data) {
            data.push(loader.load(v, one_transaction()));
        }
        futures::stream::iter(data)
            .buffer_unordered(jobs)
            .try_collect::<Vec<()>>()
            .await?;
        let (parallel, rest) = split_post_data(&loader.list(post).await?, jobs);
        // Each statement commits on its own here: jobs holding locks until the end of a
        // transaction could deadlock on two tables.
        let mut lists = Vec::new();
        for entries in &parallel {
            lists.push(toc_file(entries)?);
        }
        let rest = toc_file(&rest)?;
        let mut indexes = Vec::new();
        for file in &lists {
            indexes.push(loader.load(post, use_list(file)));
        }
        futures::stream::iter(indexes)
            .buffer_unordered(jobs)
            .try_collect::<Vec<()>>()
            .await?;
        loader.load(post, use_list(&rest)).await
    }
    .await;
    if let Err(e) = loaded {
        drop_created(&maintenance, &plan.target, &plan.database).await;
        return Err(e);
    }
    analyze_and_count(plan).await
}

/// The parts of one section, in the manifest's order.
fn of<'m>(parts: &[Verified<'m>], section: Section) -> Vec<Verified<'m>> {
    let mut out = Vec::new();
    for v in parts {
        if v.part().section == Some(section) {
            out.push(*v);
        }
    }
    out
}

fn one_transaction() -> Vec<String> {
    vec!["--single-transaction".into()]
}

/// Connects to the server and creates the database when the plan says it is new.
async fn create_if_new(plan: &RestorePlan) -> Result<tokio_postgres::Client, RestoreError> {
    let maintenance = plan.target.connect("postgres").await?;
    if !plan.exists {
        maintenance
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(&plan.database)
            ))
            .await
            .map_err(|e| plan.target.query_error("creating the database", &e))?;
    }
    Ok(maintenance)
}

/// ANALYZE (a restored database has no statistics, and the first queries after a rebuild
/// would be planned blind) and the exact counts, side by side on two connections: the
/// counts scan every table, ANALYZE samples them, and neither waits for the other.
async fn analyze_and_count(plan: &RestorePlan) -> Result<Vec<TableCount>, RestoreError> {
    let (analyzing, counting) = (
        plan.target.connect(&plan.database).await?,
        plan.target.connect(&plan.database).await?,
    );
    let (analyzed, counts) = tokio::join!(
        async {
            let started = std::time::Instant::now();
            let done = analyzing.batch_execute("ANALYZE").await;
            timings::add(Stage::Analyze, started.elapsed());
            done
        },
        async {
            let started = std::time::Instant::now();
            let done = count_tables(&counting, &plan.target).await;
            timings::add(Stage::Counts, started.elapsed());
            done
        }
    );
    analyzed.map_err(|e| plan.target.query_error("ANALYZE after restore", &e))?;
    Ok(counts?)
}

/// pg_restore into the planned database, with `args` after the common ones.
fn pg_restore(
    plan: &RestorePlan,
    opts: &RestoreOptions,
    args: Vec<String>,
) -> std::process::Command {
    let mut cmd = child::tool(opts.bin_dir.as_deref(), "pg_restore");
    cmd.args(["--exit-on-error", "--no-password"]);
    if !opts.keep_owners {
        cmd.args(["--no-owner", "--no-acl"]);
    }
    cmd.args(args)
        .arg(format!(
            "--dbname=dbname='{}'",
            plan.database.replace('\\', "\\\\").replace('\'', "\\'")
        ))
        .envs(plan.target.child_env(&plan.database));
    cmd
}

/// What every load of a split restore shares.
struct Loader<'a> {
    plan: &'a RestorePlan,
    ctx: RestoreCtx<'a>,
    opts: &'a RestoreOptions,
}

impl Loader<'_> {
    /// Opens one part and feeds it to a pg_restore with `args`.
    async fn load(&self, verified: Verified<'_>, args: Vec<String>) -> Result<(), RestoreError> {
        let (plain, bar) = self.ctx.open(verified).await?;
        let loaded = feed_blocking(self.plan, self.opts, verified, plain, args).await;
        bar.finish();
        loaded
    }

    /// The table of contents of a part (`pg_restore -l`), read from its checked stream.
    async fn list(&self, verified: Verified<'_>) -> Result<String, RestoreError> {
        let (plain, bar) = self.ctx.open(verified).await?;
        let mut cmd = child::tool(self.opts.bin_dir.as_deref(), "pg_restore");
        cmd.arg("--list")
            .envs(self.plan.target.child_env(&self.plan.database));
        let part = verified.part().clone();
        let backup = verified.manifest().backup_ref().to_string();
        let listed = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, RestoreError> {
            let mut tool = StdinChild::spawn_with_output(cmd).map_err(RestoreError::Tool)?;
            stream_withheld(plain, &backup, &part, |chunk, _| {
                tool.write_all(chunk).map_err(RestoreError::Tool)
            })?;
            Ok(tool.close_with_output().map_err(RestoreError::Tool)?.1)
        })
        .await
        .expect("list thread panicked");
        bar.finish();
        Ok(String::from_utf8_lossy(&listed?).into_owned())
    }
}

async fn feed_blocking(
    plan: &RestorePlan,
    opts: &RestoreOptions,
    verified: Verified<'_>,
    plain: PlainReader,
    args: Vec<String>,
) -> Result<(), RestoreError> {
    let cmd = pg_restore(plan, opts, args);
    let part = verified.part().clone();
    let backup = verified.manifest().backup_ref().to_string();
    tokio::task::spawn_blocking(move || feed(plain, cmd, &backup, &part))
        .await
        .expect("restore thread panicked")
}

/// Splits a post-data table of contents into `jobs` lists of entries that may run side by
/// side (indexes, primary key and unique constraints: each builds on its own table) and one
/// list of the rest, in the dump's order, to run after them (foreign keys need those
/// indexes; index attachments need both sides; triggers, rules, policies, materialized
/// views' contents).
fn split_post_data(toc: &str, jobs: usize) -> (Vec<Vec<String>>, Vec<String>) {
    let mut parallel = vec![Vec::new(); jobs.max(1)];
    let mut rest = Vec::new();
    let mut next = 0;
    for line in toc
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
    {
        let desc: Vec<&str> = line
            .split_once(';')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .skip(2)
            .take(2)
            .collect();
        let independent = match desc.as_slice() {
            ["INDEX", second] => *second != "ATTACH",
            ["CONSTRAINT", ..] => true,
            _ => false,
        };
        if independent {
            let slot = next % parallel.len();
            parallel[slot].push(line.to_string());
            next += 1;
        } else {
            rest.push(line.to_string());
        }
    }
    parallel.retain(|l| !l.is_empty());
    (parallel, rest)
}

/// A `pg_restore --use-list` file (names of objects only, no data), removed when dropped.
fn toc_file(entries: &[String]) -> Result<tempfile::NamedTempFile, RestoreError> {
    let mut file = tempfile::NamedTempFile::new().map_err(RestoreError::ListFile)?;
    std::io::Write::write_all(&mut file, (entries.join("\n") + "\n").as_bytes())
        .map_err(RestoreError::ListFile)?;
    Ok(file)
}

fn use_list(file: &tempfile::NamedTempFile) -> Vec<String> {
    vec![format!("--use-list={}", file.path().display())]
}

/// Drops a database this restore created, after a failure. pg_restore was just killed, and
/// its server process may not have noticed yet ("being accessed by other users"):
/// `WITH (FORCE)` (PostgreSQL 13+) ends it; older servers get a few tries.
async fn drop_created(maintenance: &tokio_postgres::Client, target: &PgTarget, database: &str) {
    let name = quote_ident(database);
    if maintenance
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .is_ok()
    {
        return;
    }
    let mut last = None;
    for _ in 0..25 {
        match maintenance
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
        {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if let Some(e) = last {
        tracing::warn!(
            database,
            server = %target.with_dbname(""),
            error = %target.query_error("dropping the database this restore created", &e),
            "the restore failed and the database it created is still there, empty: drop it by hand"
        );
    }
}

/// Decrypts into pg_restore's stdin; its last chunk, and the EOF that lets pg_restore
/// commit, come only after the whole object matched the manifest (size, sha256).
fn feed(
    plain: PlainReader,
    cmd: std::process::Command,
    backup: &str,
    part: &Part,
) -> Result<(), RestoreError> {
    let started = std::time::Instant::now();
    let mut restore = StdinChild::spawn(cmd).map_err(RestoreError::Tool)?;
    stream_withheld(plain, backup, part, |chunk, _| {
        timings::nested(Stage::ToolWait, || restore.write_all(chunk)).map_err(RestoreError::Tool)
    })?;
    let warnings = restore.close().map_err(RestoreError::Tool);
    timings::add(Stage::Load, started.elapsed());
    let warnings = warnings?;
    if !warnings.is_empty() {
        tracing::warn!(pg_restore = %warnings, "pg_restore warnings");
    }
    Ok(())
}
