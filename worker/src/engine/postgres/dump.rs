//! The PostgreSQL backup: per database, a REPEATABLE READ transaction exports its snapshot,
//! `pg_dump --snapshot` dumps exactly that snapshot while the same transaction counts every
//! table, so the manifest's counts are the counts of the dump (not `reltuples` estimates,
//! not counts taken a minute later).
//!
//! With `--jobs N` each database is dumped by several pg_dump processes that share the one
//! exported snapshot, one part each: pre-data, data parts (the biggest tables spread over N
//! parts, largest first onto the lightest; the rest of the data section in one more part),
//! and post-data. The parts are stored concurrently, N at a time, and restore in that
//! order, their data parts concurrently ([`super::restore`]). Counts are taken in the same
//! snapshot as before and recorded on the pre-data part.
//!
//! pg_dump writes the custom format uncompressed (`-Z0`): its built-in gzip runs on one core
//! and is the slowest stage of a plain `pg_dump -Fc`; our zstd stage is several times faster
//! and smaller. The restore side decompresses before `pg_restore`, so the archive is a
//! normal custom-format dump either way.

use std::path::PathBuf;

use super::{count_tables, quote_ident, PgError, PgTarget};
use crate::catalog::{PartFormat, Section};
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
    /// pg_dump processes per database; 1 stores each database as one whole dump.
    pub jobs: usize,
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
            section: None,
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

    let pg_dump = |args: Vec<String>| {
        let mut cmd = child::tool(opts.bin_dir.as_deref(), "pg_dump");
        cmd.args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--snapshot={snapshot}"))
            .args(args)
            .envs(target.child_env(db));
        cmd
    };
    let base = format!("db-{}", encode_name(db));
    let mut parts = Vec::new();
    if opts.jobs <= 1 {
        parts.push((base.clone(), None, pg_dump(Vec::new())));
    } else {
        let groups = split_tables(big_tables(&client, &target).await?, opts.jobs);
        parts.push((
            format!("{base}.pre-data"),
            Some(Section::PreData),
            pg_dump(vec!["--section=pre-data".into()]),
        ));
        let mut rest = vec!["--section=data".to_string()];
        for (i, group) in groups.iter().enumerate() {
            let mut args = vec!["--section=data".to_string()];
            for table in group {
                args.push(format!("--table={table}"));
                rest.push(format!("--exclude-table-data={table}"));
            }
            parts.push((
                format!("{base}.data-{}", i + 1),
                Some(Section::Data),
                pg_dump(args),
            ));
        }
        parts.push((
            format!("{base}.data-rest"),
            Some(Section::Data),
            pg_dump(rest),
        ));
        parts.push((
            format!("{base}.post-data"),
            Some(Section::PostData),
            pg_dump(vec!["--section=post-data".into()]),
        ));
    }
    let leader = parts[0].0.clone();
    tracing::info!(database = db, snapshot = %snapshot, parts = parts.len(), "dumping");
    let tasks = parts.into_iter().map(|(name, section, cmd)| {
        let spec = PartSpec {
            name,
            format: PartFormat::PgDumpCustom,
            extension: "pgdump",
            database: Some(db.to_string()),
            section,
        };
        let cancel = run.cancel_token().clone();
        let produce = move |out: &mut dyn std::io::Write| -> Result<String, SourceError> {
            Ok(child::stream_stdout(cmd, out, &cancel)?)
        };
        run.store_part(spec, produce)
    });
    let stored = run.all_or_stop(tasks, opts.jobs);
    // Count while pg_dump reads: both see the exported snapshot, and the server does the
    // scans in parallel.
    let (stored, counts) = tokio::join!(stored, count_tables(&client, &target));
    let warnings = stored.map_err(|source| DumpError::Part {
        database: db.to_string(),
        source,
    })?;
    for w in warnings.iter().filter(|w| !w.is_empty()) {
        tracing::warn!(database = db, pg_dump = %w, "pg_dump warnings");
    }
    let counts = counts?;
    tracing::info!(
        database = db,
        tables = counts.len(),
        rows = counts.iter().map(|t| t.rows).sum::<u64>(),
        "counted"
    );
    run.record_tables(&leader, counts);
    // The transaction only ever read; ending it releases the snapshot.
    let _ = client.batch_execute("COMMIT").await;
    Ok(version)
}

/// Most patterns one pg_dump gets: each is a catalog query of its own, and argv is finite.
const MAX_SPLIT_TABLES: usize = 2000;

/// Ordinary tables (leaf partitions included) with the size of their data, biggest first,
/// as pg_dump patterns (`"schema"."table"`, quoted so that every character is literal).
async fn big_tables(
    client: &tokio_postgres::Client,
    target: &PgTarget,
) -> Result<Vec<(String, u64)>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pg_table_size(c.oid)::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relpersistence <> 't'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                               AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY 3 DESC, 1, 2",
            &[],
        )
        .await
        .map_err(|e| target.query_error("measuring tables", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (schema, name, size): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            (
                format!("{}.{}", quote_ident(&schema), quote_ident(&name)),
                size.max(0) as u64,
            )
        })
        .collect())
}

/// Spreads the biggest tables over at most `jobs` data parts, each next table onto the
/// lightest part, until what is left (small tables, and whatever else the data section
/// holds) is at most a quarter of one part's fair share: that rest becomes one more part.
/// Many equal tables still spread; one huge table gets a part of its own.
fn split_tables(tables: Vec<(String, u64)>, jobs: usize) -> Vec<Vec<String>> {
    let total: u64 = tables.iter().map(|t| t.1).sum();
    let rest_budget = total / (4 * jobs.max(1) as u64);
    let mut groups: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); jobs.max(1)];
    let mut left = total;
    for (assigned, (table, size)) in tables.into_iter().enumerate() {
        if left <= rest_budget || size == 0 || assigned >= MAX_SPLIT_TABLES {
            break;
        }
        let lightest = groups
            .iter_mut()
            .min_by_key(|g| g.0)
            .expect("at least one group");
        lightest.0 += size;
        lightest.1.push(table);
        left -= size;
    }
    groups
        .into_iter()
        .map(|g| g.1)
        .filter(|g| !g.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_tables;

    fn tables(sizes: &[u64]) -> Vec<(String, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("t{i}"), *s))
            .collect()
    }

    #[test]
    fn one_huge_table_gets_its_own_part_and_the_small_ones_stay_in_the_rest() {
        let groups = split_tables(tables(&[1000, 5, 4, 3]), 2);
        assert_eq!(groups, vec![vec!["t0".to_string()]]);
    }

    #[test]
    fn equal_tables_spread_evenly_over_the_jobs() {
        let groups = split_tables(tables(&[10; 12]), 3);
        assert_eq!(groups.len(), 3);
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        // 120 in all; the rest may keep at most 120 / 12 = 10, i.e. one table.
        assert!(
            sizes.iter().all(|&n| n == sizes[0] || n + 1 == sizes[0]),
            "{sizes:?}"
        );
        assert!(sizes.iter().sum::<usize>() >= 11, "{sizes:?}");
    }

    #[test]
    fn the_biggest_go_to_the_lightest_part() {
        let groups = split_tables(tables(&[50, 40, 30, 20, 10]), 2);
        // 50 | 40, then 30 → the 40 part, 20 → the 50 part; 10 is the rest (≤ 150 / 8).
        assert_eq!(
            groups,
            vec![
                vec!["t0".to_string(), "t3".to_string()],
                vec!["t1".to_string(), "t2".to_string()]
            ]
        );
    }

    #[test]
    fn empty_tables_and_empty_databases_need_no_data_part() {
        assert!(split_tables(tables(&[0, 0]), 4).is_empty());
        assert!(split_tables(Vec::new(), 4).is_empty());
    }
}
