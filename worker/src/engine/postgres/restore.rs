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

use super::{count_tables, quote_ident, PgError, PgTarget, LIST_TABLES};
use crate::catalog::{Part, TableCount};
use crate::engine::child::{self, ChildError, StdinChild};
use crate::pipeline::decode::PlainReader;
use crate::pipeline::keys::Identities;
use crate::progress::Progress;
use crate::store::{ReadStore, StoreError};
use crate::verify::{open_plaintext, stream_withheld, Verified, VerifyError};

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
    if existing_tables > 0 && !opts.clean {
        return Err(RestoreError::NotEmpty {
            database,
            server: to
                .with_dbname("")
                .to_string()
                .trim_end_matches('/')
                .to_string(),
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

/// Runs a planned restore of `part` and returns the restored database's exact counts.
///
/// # Errors
/// Wrong key, damaged stream, pg_restore failure, connection errors; in each case the target
/// is left as it was.
pub async fn run(
    plan: &RestorePlan,
    store: &dyn ReadStore,
    verified: Verified<'_>,
    identities: &Identities,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<Vec<TableCount>, RestoreError> {
    let (manifest, part) = (verified.manifest(), verified.part());
    // The age header opens first: a wrong key fails before the target is touched.
    let (plain, bar) = open_plaintext(store, verified, identities, progress).await?;

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

    let mut cmd = child::tool(opts.bin_dir.as_deref(), "pg_restore");
    cmd.args(["--single-transaction", "--exit-on-error", "--no-password"]);
    if !opts.keep_owners {
        cmd.args(["--no-owner", "--no-acl"]);
    }
    if plan.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    cmd.arg(format!(
        "--dbname=dbname='{}'",
        plan.database.replace('\\', "\\\\").replace('\'', "\\'")
    ))
    .envs(plan.target.child_env(&plan.database));
    let part_owned = part.clone();
    let backup_name = manifest.backup_ref().to_string();
    let fed = tokio::task::spawn_blocking(move || feed(plain, cmd, &backup_name, &part_owned))
        .await
        .expect("restore thread panicked");
    bar.finish();
    if let Err(e) = fed {
        if !plan.exists {
            // Ours, and empty (the transaction rolled back): leave the server as we found it.
            drop_created(&maintenance, &plan.target, &plan.database).await;
        }
        return Err(e);
    }

    let client = plan.target.connect(&plan.database).await?;
    client
        .batch_execute("ANALYZE")
        .await
        .map_err(|e| plan.target.query_error("ANALYZE after restore", &e))?;
    Ok(count_tables(&client, &plan.target).await?)
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
    let mut restore = StdinChild::spawn(cmd).map_err(RestoreError::Tool)?;
    stream_withheld(plain, backup, part, |chunk, _| {
        restore.write_all(chunk).map_err(RestoreError::Tool)
    })?;
    let warnings = restore.close().map_err(RestoreError::Tool)?;
    if !warnings.is_empty() {
        tracing::warn!(pg_restore = %warnings, "pg_restore warnings");
    }
    Ok(())
}
