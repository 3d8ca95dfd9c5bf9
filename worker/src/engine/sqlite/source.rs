//! `worker backup sqlite`: its flags and the [`Source`] they build.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::catalog::PartFormat;
use crate::engine::{BackupRun, DumpOutcome, PartSpec, Source, SourceFailure};

/// Flags of `worker backup sqlite`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "SQLite")]
pub struct BackupArgs {
    /// The database file (the application's volume, mounted read-only is enough).
    #[arg(long, env = "DR_SQLITE_PATH", value_name = "FILE")]
    pub path: PathBuf,
}

impl BackupArgs {
    /// # Errors
    /// A path that is not a file.
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        if !self.path.is_file() {
            return Err(format!(
                "--path {}: no such database file (is the application's volume mounted?)",
                self.path.display()
            )
            .into());
        }
        Ok(Box::new(SqliteSource { path: self.path }))
    }
}

/// A SQLite database file to back up.
pub struct SqliteSource {
    path: PathBuf,
}

#[async_trait]
impl Source for SqliteSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let path = self.path.clone();
        let spec = PartSpec {
            name: "db".into(),
            format: PartFormat::SqliteDb,
            extension: "sqlite",
            database: None,
            section: None,
        };
        let (tables, version, page_size) = run
            .store_part(spec, move |out: &mut dyn Write| {
                // The online backup API copies a consistent snapshot while the application
                // keeps writing; the copy (in TMPDIR, an emptyDir in the cluster) is what
                // is counted and stored, so counts and bytes agree.
                let copy = tempfile::NamedTempFile::new()?;
                let source = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
                let mut target = rusqlite::Connection::open(copy.path())?;
                rusqlite::backup::Backup::new(&source, &mut target)?.run_to_completion(
                    256,
                    std::time::Duration::from_millis(10),
                    None,
                )?;
                let tables = super::count_tables(&target)?;
                let page_size: i64 = target.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                let version = rusqlite::version().to_string();
                drop(target);
                std::io::copy(&mut std::fs::File::open(copy.path())?, out)?;
                Ok((tables, version, page_size))
            })
            .await?;
        run.record_tables("db", tables);
        Ok(DumpOutcome {
            server_version: format!("SQLite {version}"),
            facts: crate::catalog::Facts::of(&super::Facts {
                page_size: page_size.to_string(),
            }),
        })
    }
}
