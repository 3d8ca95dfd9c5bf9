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
    #[arg(long, env = "DR_PG_BIN_DIR", value_name = "DIR")]
    pub pg_bin_dir: Option<PathBuf>,
}

/// A PostgreSQL server to dump, from the libpq environment.
pub struct PgSource {
    target: PgTarget,
    opts: DumpOptions,
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
            },
        }))
    }
}

#[async_trait]
impl Source for PgSource {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let server_version = dump::dump(run, &self.target, &self.opts).await?;
        Ok(DumpOutcome {
            server_version,
            facts: Default::default(),
        })
    }
}
