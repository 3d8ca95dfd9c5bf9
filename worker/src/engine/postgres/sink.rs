//! `kubectl dr restore … --to postgres://…`: the PostgreSQL [`Sink`] and its flags.

use std::path::PathBuf;

use async_trait::async_trait;

use super::restore::{self, RestoreOptions};
use super::PgTarget;
use crate::catalog::{Manifest, Part, PartFormat, Section};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, RunKind, Sink,
    SourceFailure, VerifiedParts,
};
use crate::verify;

/// PostgreSQL flags of `kubectl dr restore`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "PostgreSQL")]
#[group(id = "postgres_restore")]
pub struct RestoreArgs {
    /// Keep the dump's owners and grants (the roles must exist: add --globals to restore
    /// them first).
    #[arg(hide_short_help = true, long)]
    pub keep_owners: bool,

    /// First restore the backup's roles and tablespaces (its globals part).
    ///
    /// The globals part comes from `worker backup postgres --globals`; psql restores it.
    /// Roles that exist are reported and skipped;
    /// with --clean their attributes (LOGIN, CREATEDB…, settings) are reset to the
    /// backup's, except the role this restore connects as. Backups hold no role passwords:
    /// set them afterwards (ALTER ROLE … PASSWORD).
    #[arg(long)]
    pub globals: bool,

    /// Directory holding pg_restore (default: PATH).
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_PG_BIN_DIR",
        value_name = "DIR"
    )]
    pub pg_bin_dir: Option<PathBuf>,

    /// For a backup taken with `worker backup postgres --jobs`: load its data parts N at a
    /// time and build its indexes N at a time. A backup stored as one stream restores as
    /// one stream whatever N is.
    #[arg(hide_short_help = true, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// A PostgreSQL server to restore one database part into.
pub struct PgSink {
    common: RestoreCommon,
    to: PgTarget,
    opts: RestoreOptions,
    globals: bool,
    jobs: usize,
}

/// A PostgreSQL restore as planned: the target database and what is done to it.
struct PgPlanned {
    common: RestoreCommon,
    to: PgTarget,
    opts: RestoreOptions,
    jobs: usize,
    plan: restore::RestorePlan,
}

impl RestoreArgs {
    /// The first PostgreSQL-only flag given, for refusing it on another engine's backup.
    pub fn given(&self) -> Option<&'static str> {
        (self.keep_owners.then_some("--keep-owners"))
            .or(self.globals.then_some("--globals"))
            .or((self.jobs > 1).then_some("--jobs"))
    }

    /// # Errors
    /// A malformed `--to` URL, an unreadable password file.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        Ok(Box::new(PgSink {
            to: PgTarget::from_url(&common.to)?,
            common: common.clone(),
            opts: RestoreOptions {
                clean: common.clean,
                keep_owners: self.keep_owners,
                bin_dir: self.pg_bin_dir.clone(),
            },
            // The roles are restored once per backup, with its first step.
            globals: self.globals && common.first,
            jobs: usize::from(self.jobs),
        }))
    }
}

/// The globals part (roles, tablespaces).
///
/// # Errors
/// A backup taken without `--globals`.
pub fn globals_part(manifest: &Manifest) -> Result<&Part, String> {
    manifest
        .parts
        .iter()
        .find(|p| p.format == PartFormat::Sql && p.database.is_none())
        .ok_or_else(|| {
            format!(
                "backup {} has no globals part (it was taken without `worker backup postgres --globals`); leave out --globals and create the roles by hand",
                manifest.backup_ref()
            )
        })
}

/// The database part a restore reads: the one named by `--database`, or the only one.
///
/// # Errors
/// No such database, or several without a choice.
pub fn pick_part<'m>(manifest: &'m Manifest, database: Option<&str>) -> Result<&'m Part, String> {
    let dbs: Vec<&Part> = manifest
        .parts
        .iter()
        .filter(|p| p.database.is_some() && p.leads())
        .collect();
    match database {
        Some(d) => dbs
            .into_iter()
            .find(|p| p.database.as_deref() == Some(d))
            .ok_or_else(|| {
                format!(
                    "backup {} holds no database {d}; it has: {}",
                    manifest.backup_ref(),
                    manifest.databases().join(", ")
                )
            }),
        None if dbs.len() == 1 => Ok(dbs[0]),
        None => Err(format!(
            "backup {} holds {} databases ({}); pick one with --database",
            manifest.backup_ref(),
            dbs.len(),
            manifest.databases().join(", ")
        )),
    }
}

#[async_trait]
impl Sink for PgSink {
    async fn probe(&mut self, manifest: &Manifest) -> Result<(), SourceFailure> {
        // Without a database in --to, the backed-up one's name; the server answering is
        // what matters (a database that does not exist yet is fine).
        let db = self
            .to
            .dbname
            .clone()
            .or_else(|| self.common.database.clone())
            .or_else(|| manifest.databases().first().map(|d| d.to_string()))
            .unwrap_or_else(|| "postgres".into());
        Ok(self.to.probe(&db).await?)
    }

    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let only = self.common.database.as_deref();
        let parts: Vec<&Part> = manifest
            .parts
            .iter()
            .filter(|p| {
                p.database.is_some()
                    && p.leads()
                    && only.is_none_or(|d| p.database.as_deref() == Some(d))
            })
            .collect();
        if parts.is_empty() {
            return Err(format!(
                "backup {} holds no database {}; it has: {}",
                manifest.backup_ref(),
                only.unwrap_or("at all"),
                manifest.databases().join(", ")
            )
            .into());
        }
        if parts.len() > 1 && self.to.dbname.is_some() {
            return Err(format!(
                "backup {} holds several databases ({}); drop the database from --against to compare each with its namesake, or pick one with --database",
                manifest.backup_ref(),
                manifest.databases().join(", ")
            )
            .into());
        }
        let mut out = Vec::new();
        for part in parts {
            let backed_up = part.database.as_deref().expect("filtered");
            let db = self
                .to
                .dbname
                .clone()
                .unwrap_or_else(|| backed_up.to_string());
            let target = self.to.with_dbname(&db);
            let client = target.connect(&db).await?;
            let live = super::count_tables(&client, &target).await?;
            out.push(RestoredCounts {
                heading: format!("{} db {backed_up}", manifest.backup_ref()),
                against: target.to_string(),
                rows: verify::compare_counts(&part.tables, &live, self.common.max_diff),
            });
        }
        Ok(out)
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        refuse_physical(manifest)?;
        let mut parts = vec![pick_part(manifest, self.common.database.as_deref())?];
        if self.globals {
            match globals_part(manifest) {
                Ok(p) => parts.push(p),
                // In a run over many backups, --globals means "where a backup has them".
                Err(_) if self.common.run != RunKind::Single => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(parts)
    }

    fn rolls_back(&self, part: &Part) -> bool {
        rolls_back(part)
    }

    async fn plan<'m>(
        self: Box<Self>,
        _ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let lead = first.lead().part();
        let manifest = first.manifest();
        let plan = restore::plan(&self.to, lead, &self.opts).await?;
        let split: Vec<&'m Part> = match lead.section {
            None => Vec::new(),
            Some(_) => manifest
                .parts
                .iter()
                .filter(|p| p.database == lead.database && p.name != lead.name)
                .collect(),
        };
        let confirm = plan.is_destructive().then(|| Confirm {
            what: format!("this restore drops objects in database {}", plan.database),
            prompt: format!(
                "This drops and recreates objects in database {}.",
                plan.database
            ),
            word: plan.database.clone(),
        });
        let mut lines = Vec::new();
        if first
            .all()
            .iter()
            .any(|v| v.part().format == PartFormat::Sql)
        {
            lines.push(format!(
                "plan: first restore the roles and tablespaces of the globals part on {} ({})",
                plan.target.with_dbname(""),
                if self.opts.clean {
                    "existing roles get the backup's attributes, except the role connecting"
                } else {
                    "existing ones are skipped"
                }
            ));
        }
        lines.push(format!("plan: {}", plan.describe()));
        if split.is_empty() {
            if self.jobs > 1 {
                lines.push(format!(
                    "note: --jobs {} has no effect: the backup stores database {} as one stream (taken without --jobs)",
                    self.jobs, plan.database
                ));
            }
        } else {
            let data = split
                .iter()
                .filter(|p| p.section == Some(Section::Data))
                .count();
            lines.push(format!(
                "plan: {} parts: pre-data, {data} data part(s) {} at a time, post-data with indexes built {} at a time",
                split.len() + 1,
                self.jobs.min(data.max(1)),
                self.jobs
            ));
        }
        let PgSink {
            common,
            to,
            opts,
            jobs,
            ..
        } = *self;
        Ok(RestorePlan {
            lines,
            confirm,
            more_parts: split,
            restore: Box::new(PgPlanned {
                common,
                to,
                opts,
                jobs,
                plan,
            }),
        })
    }
}

#[async_trait]
impl Planned for PgPlanned {
    fn rolls_back(&self, part: &Part) -> bool {
        rolls_back(part)
    }

    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let plan = &self.plan;
        let part = parts.lead();
        if let Some(globals) = parts
            .all()
            .iter()
            .find(|v| v.part().format == PartFormat::Sql)
        {
            let outcome = super::globals::restore(&self.to, *globals, &self.opts, ctx).await?;
            ctx.say(&outcome.describe());
        }
        let counts = if part.part().section.is_some() {
            let split: Vec<_> = parts
                .all()
                .iter()
                .filter(|v| v.part().database == part.part().database && v.part().section.is_some())
                .copied()
                .collect();
            restore::run_split(plan, &split, &self.opts, self.jobs, ctx).await?
        } else {
            restore::run(plan, part, &self.opts, ctx).await?
        };
        ctx.say(&format!(
            "restored {} into {}",
            part.manifest().backup_ref(),
            plan.target
        ));
        Ok(RestoredCounts {
            heading: format!(
                "{} db {}",
                part.manifest().backup_ref(),
                part.part().database.as_deref().unwrap_or(&plan.database)
            ),
            against: plan.target.to_string(),
            rows: verify::compare_counts(&part.part().tables, &counts, self.common.max_diff),
        })
    }
}

/// pg_restore --single-transaction, killed before the withheld last chunk when the part
/// fails its check; a database the restore created is dropped again (the only kind a split
/// backup restores into). The globals part (psql, roles outside any database) keeps its
/// pass before.
fn rolls_back(part: &Part) -> bool {
    part.format == PartFormat::PgDumpCustom && part.database.is_some()
}

/// A physical base backup is restored into a data directory, never through pg_restore.
///
/// # Errors
/// For a physical backup, saying how to restore it.
pub fn refuse_physical(manifest: &Manifest) -> Result<(), SourceFailure> {
    if manifest.kind() == "physical" {
        return Err(format!(
            "{} is a physical base backup (point-in-time recovery): restore it with `kubectl dr restore --engine postgres --target {} --time TIME|latest --to-datadir DIR`; logical dumps (worker backup postgres without --physical) restore into a server",
            manifest.backup_ref(),
            manifest.target
        )
        .into());
    }
    Ok(())
}

/// How a PostgreSQL backup splits into the steps of a run: one per database (each into its
/// namesake on the server `to`), the globals with the first.
///
/// # Errors
/// A `to` that names one database for a backup of several.
pub fn steps<'m>(
    manifest: &'m Manifest,
    to: &str,
) -> Result<Vec<crate::engine::Step<'m>>, SourceFailure> {
    refuse_physical(manifest)?;
    let dbs = manifest.databases();
    let names_db = url::Url::parse(to).is_ok_and(|u| !u.path().trim_matches('/').is_empty());
    if dbs.len() > 1 && names_db {
        return Err(format!(
            "{} holds {} databases ({}), but its destination {} names one database; give the server without a database (postgres://user@host:5432) and each database goes to its namesake",
            manifest.backup_ref(),
            dbs.len(),
            dbs.join(", "),
            crate::engine::redact_url(to)
        )
        .into());
    }
    Ok(dbs
        .iter()
        .enumerate()
        .map(|(i, db)| crate::engine::Step {
            manifest,
            scope: Some(db.to_string()),
            to: to.to_string(),
            first: i == 0,
        })
        .collect())
}

impl RestoreArgs {
    /// These flags as `kubectl dr restore` arguments (an in-cluster restore Job's).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--jobs".to_string(), self.jobs.to_string()];
        for (flag, on) in [
            ("--keep-owners", self.keep_owners),
            ("--globals", self.globals),
        ] {
            if on {
                args.push(flag.to_string());
            }
        }
        args
    }
}
