//! The PostgreSQL backup: per database, a REPEATABLE READ transaction exports its snapshot,
//! `pg_dump --snapshot` dumps exactly that snapshot while the same transaction counts every
//! table, so the manifest's counts are the counts of the dump (not `reltuples` estimates,
//! not counts taken a minute later).
//!
//! pg_dump writes the custom format uncompressed (`-Z0`): its built-in gzip runs on one core
//! and is the slowest stage of a plain `pg_dump -Fc`; our zstd stage is several times faster
//! and smaller. The restore side decompresses before `pg_restore`, so the archive is a
//! normal custom-format dump either way.

use std::path::PathBuf;

use super::{count_tables, PgError, PgTarget};
use crate::catalog::PartFormat;
use crate::engine::child;
use crate::engine::{encode_name, BackupRun, PartSpec};
use crate::pipeline::encode::{EncodeError, SourceError};

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Databases, one part each; empty means the connection's database (`PGDATABASE`).
    pub databases: Vec<String>,
    /// Also store roles and tablespaces (`pg_dumpall --globals-only --no-role-passwords`).
    pub globals: bool,
    /// Where pg_dump and pg_dumpall live; PATH when unset.
    pub bin_dir: Option<PathBuf>,
}

/// Errors of a PostgreSQL backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Connecting or counting failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// One database's part failed.
    #[error("backing up database {database} failed")]
    Part {
        /// The database.
        database: String,
        /// The underlying error.
        #[source]
        source: EncodeError,
    },
    /// The `--globals` part failed.
    #[error("backing up roles and tablespaces (--globals) failed")]
    Globals(#[source] EncodeError),
}

/// Dumps every requested database into `run` and returns the server version for the
/// manifest. The caller commits the run only if this succeeds.
///
/// # Errors
/// Connection or query errors, a failed pg_dump (with its stderr), store errors.
pub async fn dump(
    run: &BackupRun<'_>,
    source: &PgTarget,
    opts: &DumpOptions,
) -> Result<String, DumpError> {
    let databases = if opts.databases.is_empty() {
        vec![source.dbname.clone().ok_or(PgError::NoDatabase)?]
    } else {
        opts.databases.clone()
    };
    let mut server_version = String::new();
    for db in &databases {
        server_version = dump_database(run, source, db, opts).await?;
    }
    if opts.globals {
        let mut cmd = child::tool(opts.bin_dir.as_deref(), "pg_dumpall");
        cmd.args(["--globals-only", "--no-role-passwords"])
            .envs(source.child_env(databases.first().map_or("postgres", String::as_str)));
        let spec = PartSpec {
            name: "globals".into(),
            format: PartFormat::Sql,
            extension: "sql",
            database: None,
        };
        let cancel = run.cancel_token().clone();
        run.store_part(spec, move |out| {
            Ok(child::stream_stdout(cmd, out, &cancel).map(|_| ())?)
        })
        .await
        .map_err(DumpError::Globals)?;
    }
    Ok(server_version)
}

async fn dump_database(
    run: &BackupRun<'_>,
    source: &PgTarget,
    db: &str,
    opts: &DumpOptions,
) -> Result<String, DumpError> {
    let target = source.with_dbname(db);
    let client = source.connect(db).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| target.query_error("opening the snapshot transaction", &e))?;
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| target.query_error("exporting the snapshot", &e))?;
    let (snapshot, version): (String, String) = (row.get(0), row.get(1));

    let mut cmd = child::tool(opts.bin_dir.as_deref(), "pg_dump");
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .envs(target.child_env(db));
    let part_name = format!("db-{}", encode_name(db));
    let spec = PartSpec {
        name: part_name.clone(),
        format: PartFormat::PgDumpCustom,
        extension: "pgdump",
        database: Some(db.to_string()),
    };
    tracing::info!(database = db, snapshot = %snapshot, "dumping");
    let cancel = run.cancel_token().clone();
    let produce = move |out: &mut dyn std::io::Write| -> Result<String, SourceError> {
        Ok(child::stream_stdout(cmd, out, &cancel)?)
    };
    // Count while pg_dump reads: both see the exported snapshot, and the server does the
    // two scans in parallel.
    let (stored, counts) = tokio::join!(
        run.store_part(spec, produce),
        count_tables(&client, &target)
    );
    let warnings = stored.map_err(|source| DumpError::Part {
        database: db.to_string(),
        source,
    })?;
    if !warnings.is_empty() {
        tracing::warn!(database = db, pg_dump = %warnings, "pg_dump warnings");
    }
    let counts = counts?;
    tracing::info!(
        database = db,
        tables = counts.len(),
        rows = counts.iter().map(|t| t.rows).sum::<u64>(),
        "counted"
    );
    run.record_tables(&part_name, counts);
    // The transaction only ever read; ending it releases the snapshot.
    let _ = client.batch_execute("COMMIT").await;
    Ok(version)
}
