//! `worker backup postgres`: its flags and the [`Source`] they build.

use std::path::PathBuf;

use async_trait::async_trait;

use super::dump::{self, DumpOptions};
use super::PgTarget;
use crate::engine::{BackupRun, DumpOutcome, Source, SourceFailure};

/// Flags of `worker backup postgres`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "PostgreSQL")]
pub struct BackupArgs {
    /// Database to dump, one part each; repeatable. Default: PGDATABASE.
    #[arg(long = "database", short = 'd', value_name = "DB")]
    pub databases: Vec<String>,

    /// Also store roles and tablespaces (pg_dumpall --globals-only --no-role-passwords).
    #[arg(long)]
    pub globals: bool,

    /// Directory holding pg_dump and pg_dumpall (default: PATH). Use the newest major
    /// version: pg_dump refuses servers newer than itself.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_PG_BIN_DIR",
        value_name = "DIR"
    )]
    pub pg_bin_dir: Option<PathBuf>,

    /// Dump each database with N pg_dump processes sharing one snapshot, as several parts:
    /// pre-data, the biggest tables' rows spread over N data parts plus one for the rest,
    /// post-data. `kubectl dr restore --jobs N` loads the data parts concurrently and builds
    /// indexes in parallel. Such backups have manifest format 2 (an older kubectl-dr refuses
    /// them and says to upgrade) and restore into a database the restore creates.
    #[arg(long, short = 'j', env = "DR_PG_JOBS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// A base backup for point-in-time recovery instead of a dump: the whole cluster's data
    /// directory through pg_basebackup -Ft -X none (the WAL comes from `worker archive
    /// postgres` with the same --target). Restore with `kubectl dr restore --engine
    /// postgres --target T --time TIME --to-datadir DIR`. Needs a role with REPLICATION.
    #[arg(long, conflicts_with_all = ["databases", "globals", "jobs"])]
    pub physical: bool,
}

/// A PostgreSQL server to dump, from the libpq environment.
pub struct PgSource {
    target: PgTarget,
    opts: DumpOptions,
    physical: bool,
}

impl BackupArgs {
    /// # Errors
    /// An unreadable `PGPASSWORD_FILE`.
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(PgSource {
            target: PgTarget::from_env()?,
            opts: DumpOptions {
                databases: self.databases,
                globals: self.globals,
                bin_dir: self.pg_bin_dir,
                jobs: usize::from(self.jobs),
            },
            physical: self.physical,
        }))
    }
}

#[async_trait]
impl Source for PgSource {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        if self.physical {
            return super::wal::base::dump(run, &self.target, self.opts.bin_dir.as_deref()).await;
        }
        let server_version = dump::dump(run, &self.target, &self.opts).await?;
        Ok(DumpOutcome {
            server_version,
            facts: Default::default(),
        })
    }
}
