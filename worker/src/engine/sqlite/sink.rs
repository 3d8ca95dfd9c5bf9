//! `kubectl dr restore|verify … --to|--against sqlite:///path/app.db`: the SQLite [`Sink`].

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::catalog::{Manifest, Part, PartFormat, TableCount};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, Sink, SourceFailure,
    VerifiedParts,
};
use crate::verify::{self, stream_withheld};

/// SQLite flags of `kubectl dr restore` (none of its own: `--to` and `--clean` say it all).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RestoreArgs {}

impl RestoreArgs {
    /// The first SQLite-only flag given (there are none).
    pub fn given(&self) -> Option<&'static str> {
        None
    }

    /// # Errors
    /// A `--to` that is not `sqlite:///absolute/path`, a `--database`.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        if common.database.is_some() {
            return Err("--database does not apply to a SQLite backup: it is one database".into());
        }
        Ok(Box::new(SqliteSink {
            path: super::path_of_url(&common.to)?,
            common: common.clone(),
            exists: false,
        }))
    }
}

/// A database file to restore into.
pub struct SqliteSink {
    path: PathBuf,
    common: RestoreCommon,
    exists: bool,
}

/// The database part.
fn db_part(manifest: &Manifest) -> Result<&Part, SourceFailure> {
    manifest
        .part_of(&PartFormat::SqliteDb)
        .ok_or_else(|| format!("backup {} has no database part", manifest.backup_ref()).into())
}

#[async_trait]
impl Sink for SqliteSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        if !dir.is_dir() {
            return Err(format!(
                "{}: the directory does not exist (is the volume mounted?)",
                dir.display()
            )
            .into());
        }
        self.exists = self.path.exists();
        if self.exists && !self.path.is_file() {
            return Err(format!("{} exists and is not a file", self.path.display()).into());
        }
        Ok(())
    }

    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let part = db_part(manifest)?;
        let path = self.path.clone();
        let live = tokio::task::spawn_blocking(move || super::count_file(&path))
            .await
            .expect("count thread panicked")?;
        Ok(vec![RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: self.path.display().to_string(),
            rows: verify::compare_counts(&part.tables, &live, self.common.max_diff),
        }])
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        Ok(vec![db_part(manifest)?])
    }

    fn rolls_back(&self, _part: &Part) -> bool {
        // Written beside the destination and renamed into place only once it matched its
        // manifest and passed its checks: a failure leaves the destination as it was.
        true
    }

    async fn plan<'m>(
        self: Box<Self>,
        _ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let shown = self.path.display().to_string();
        if self.exists && !self.common.clean {
            return Err(format!(
                "{shown} exists; a restore replaces the whole file, so pass --clean, or restore to a new path; nothing was changed"
            )
            .into());
        }
        let part = first.lead().part();
        let line = format!(
            "plan: write {} ({} bytes) to {shown}{}, checked and renamed into place",
            part.name,
            part.plaintext_bytes,
            if self.exists { ", REPLACING it" } else { "" }
        );
        let confirm = self.exists.then(|| Confirm {
            what: format!("this restore replaces {shown}"),
            prompt: format!("This replaces the database file {shown}."),
            word: "replace".into(),
        });
        Ok(RestorePlan {
            lines: vec![line],
            confirm,
            more_parts: Vec::new(),
            restore: self,
        })
    }
}

#[async_trait]
impl Planned for SqliteSink {
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let part = parts.lead();
        let (manifest, meta) = (part.manifest(), part.part().clone());
        let backup = manifest.backup_ref().to_string();
        let (plain, bar) = ctx.open(part).await?;
        let path = self.path.clone();
        let counts =
            tokio::task::spawn_blocking(move || -> Result<Vec<TableCount>, SourceFailure> {
                let dir = path.parent().unwrap_or(Path::new("/"));
                // Beside the destination: the rename that puts it into place stays on one
                // filesystem, and a failure before it leaves nothing but this file, removed.
                let mut tmp = tempfile::Builder::new()
                    .prefix(".kube-dr-restore-")
                    .tempfile_in(dir)?;
                stream_withheld(
                    plain,
                    &backup,
                    &meta,
                    |data, _| -> Result<(), SourceFailure> { Ok(tmp.write_all(data)?) },
                )?;
                tmp.as_file().sync_all()?;
                let counts = {
                    let conn = super::open_immutable(tmp.path())?;
                    let check: String =
                        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
                    if check != "ok" {
                        return Err(format!(
                            "the restored database fails its integrity check: {check}"
                        )
                        .into());
                    }
                    super::count_tables(&conn)?
                };
                tmp.persist(&path).map_err(|e| e.error)?;
                std::fs::File::open(dir).and_then(|d| d.sync_all())?;
                Ok(counts)
            })
            .await
            .expect("restore thread panicked")?;
        bar.finish();
        ctx.say(&format!(
            "restored {} into {}",
            manifest.backup_ref(),
            self.path.display()
        ));
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: self.path.display().to_string(),
            rows: verify::compare_counts(&part.part().tables, &counts, self.common.max_diff),
        })
    }
}
