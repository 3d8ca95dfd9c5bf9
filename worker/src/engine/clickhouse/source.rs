//! `worker backup clickhouse`: its flags and the [`Source`] they build.

use async_trait::async_trait;

use super::dump::{self, DumpOptions};
use super::ChTarget;
use crate::engine::{BackupRun, DumpOutcome, Source, SourceFailure};

/// Flags of `worker backup clickhouse`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "ClickHouse")]
pub struct BackupArgs {
    /// Database to back up; repeatable. Default: all but system and information_schema.
    #[arg(long = "database", short = 'd', value_name = "DB")]
    pub databases: Vec<String>,

    /// Leave out tables matching DB.TABLE (globs: * and ?); repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// Tables dumped at once. Each adds one HTTP stream and ~20-40 MiB of buffers (S3 parts
    /// in flight, compression); the server does the reading.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16), env = "DR_CH_PARALLEL")]
    pub parallel: u16,

    /// Store only the partitions of MergeTree tables that changed since the newest backup
    /// of this target (its base); unchanged ones are referenced. Restores, verify, prune
    /// and the drill follow the references.
    #[arg(long, env = "DR_CLICKHOUSE_INCREMENTAL", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub incremental: bool,

    /// With --incremental: a full backup after this many incremental ones in a chain, so a
    /// restore never reads across more than N+1 backups.
    #[arg(long, env = "DR_CLICKHOUSE_FULL_EVERY", default_value_t = 7, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub full_every: u32,
}

impl BackupArgs {
    /// # Errors
    /// No or a malformed CLICKHOUSE_URL, an unreadable password file.
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(ChSource {
            target: ChTarget::from_env()?,
            opts: DumpOptions {
                databases: self.databases,
                exclude: self.exclude,
                parallel: usize::from(self.parallel),
                incremental: self.incremental,
                full_every: self.full_every,
            },
        }))
    }
}

/// A ClickHouse server to dump over HTTP.
pub struct ChSource {
    target: ChTarget,
    opts: DumpOptions,
}

#[async_trait]
impl Source for ChSource {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let (server_version, facts) = dump::dump(run, &self.target, &self.opts).await?;
        Ok(DumpOutcome {
            server_version,
            facts: crate::catalog::Facts::of(&facts),
        })
    }
}
