//! `worker drill`: the scheduled proof that last night's backups restore. For each chosen
//! target it takes the newest backup and restores it into scratch destinations (PostgreSQL
//! and ClickHouse databases named `<db>__drill`, a scratch Redis server), compares the
//! counts with the manifest, and drops what it created whatever happened. Engines without a
//! scratch destination (Vault, whose restore would need the backed-up cluster's unseal
//! keys; Kubernetes objects; command output) get the integrity pass and their content check
//! and are reported as not restored.
//!
//! The drill never touches a name that is not its own: a destination URL that names a
//! database is refused, and a scratch name that exists without the drill's mark (a comment,
//! a marker table, a marker key: see each engine's `scratch` module) is refused.

use std::time::Instant;

use crate::catalog::{Engine, Manifest, PartFormat};
use crate::engine::registry::RestoreFlags;
use crate::engine::{clickhouse, postgres, redis, RestoredCounts, SourceFailure};
use crate::pipeline::keys::Identities;
use crate::progress::NoProgress;
use crate::rebuild::{self, Checked, Destinations, Step};
use crate::store::ReadStore;
use crate::verify::{self, MaxDiff};

pub use crate::engine::scratch::{check_scratch_name, scratch_name, SUFFIX};

/// `url` (a server without a database) naming the scratch database `scratch`, which is
/// percent-encoded: a `%` or `/` in a database name must not make the URL name another
/// database. The URL is read back to prove it names exactly the database claimed.
///
/// # Errors
/// A URL that does not parse, or that would name another database.
fn scratch_url(url: &str, scratch: &str) -> Result<String, SourceFailure> {
    let mut out = url::Url::parse(url)?;
    out.path_segments_mut()
        .map_err(|()| format!("{url} cannot name a database"))?
        .clear()
        .push(scratch);
    let named = postgres::PgTarget::from_url(out.as_str())?.dbname;
    if named.as_deref() != Some(scratch) {
        return Err(format!(
            "the scratch URL names database {named:?}, not {scratch:?}, the one the drill claimed; nothing was restored"
        )
        .into());
    }
    Ok(out.to_string())
}

/// The engines the drill restores into scratch destinations.
pub const RESTORED: &[Engine] = &[Engine::Postgres, Engine::Clickhouse, Engine::Redis];

/// How one target's drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Restored (or checked) and every count matched.
    Passed,
    /// Restored, but counts differ beyond the allowed difference.
    Mismatch,
    /// A part failed its integrity or content check.
    Damaged,
    /// The drill could not run (a destination, permissions, a refused scratch name).
    Failed,
}

impl Verdict {
    /// The verdict as the report's JSON spells it, for logs too.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Mismatch => "mismatch",
            Verdict::Damaged => "damaged",
            Verdict::Failed => "failed",
        }
    }
}

/// One target's drill.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// `engine/target/id`.
    pub backup: String,
    /// The engine.
    pub engine: String,
    /// The target.
    pub target: String,
    /// Whether it was restored into a scratch destination (its counts then compared);
    /// false when it was only checked, or when the drill stopped before a restore ended.
    pub restored: bool,
    /// The outcome.
    pub verdict: Verdict,
    /// Seconds the restore (or the checks) took.
    pub seconds: f64,
    /// What happened, for people.
    pub detail: String,
    /// Tables whose counts differ (`db.table backup≠restored`).
    pub differences: Vec<String>,
}

/// What every target's drill shares.
pub struct Drill<'a> {
    /// The store.
    pub store: &'a dyn ReadStore,
    /// The private keys.
    pub identities: &'a Identities,
    /// Scratch servers (`postgres=…`, `clickhouse=…`, `redis=…`).
    pub destinations: &'a Destinations,
    /// The engines' restore flags (e.g. `--listen` for Redis, `--pg-bin-dir`).
    pub flags: &'a RestoreFlags,
    /// The largest difference accepted.
    pub max_diff: MaxDiff,
}

impl Drill<'_> {
    /// Drills one backup; never fails (the report says what went wrong).
    pub async fn run(&self, manifest: &Manifest) -> Report {
        let started = Instant::now();
        let b = manifest.backup_ref();
        let to = self
            .destinations
            .of(&b)
            .filter(|_| RESTORED.contains(&manifest.engine));
        let to_scratch = to.is_some();
        let outcome = match to {
            Some(url) => self.restore(manifest, url).await,
            None => self.check_only(manifest).await.map(|()| Vec::new()),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (verdict, detail, differences) = match outcome {
            Ok(counts) => {
                let differences: Vec<String> = counts
                    .iter()
                    .flat_map(|c| c.rows.iter())
                    .filter(|r| !r.ok)
                    .map(|r| {
                        format!(
                            "{}.{} backup {} restored {}",
                            r.parts.0,
                            r.parts.1,
                            r.backup_rows.map_or("-".into(), |n| n.to_string()),
                            r.live_rows.map_or("-".into(), |n| n.to_string())
                        )
                    })
                    .collect();
                let tables: usize = counts.iter().map(|c| c.rows.len()).sum();
                if !differences.is_empty() {
                    (
                        Verdict::Mismatch,
                        format!(
                            "{} of {tables} table(s) differ beyond {}",
                            differences.len(),
                            self.max_diff
                        ),
                        differences,
                    )
                } else if to_scratch {
                    (
                        Verdict::Passed,
                        format!("restored into scratch destinations, {tables} table(s) match, scratch dropped"),
                        differences,
                    )
                } else {
                    (
                        Verdict::Passed,
                        "not restored (no scratch destination for this engine): every part's integrity and content checked".to_string(),
                        differences,
                    )
                }
            }
            Err(e) => {
                let e = anyhow::Error::from_boxed(e);
                let verdict = if crate::cli::exit_code(&e) == 1 {
                    Verdict::Damaged
                } else {
                    Verdict::Failed
                };
                (verdict, format!("{e:#}"), Vec::new())
            }
        };
        Report {
            backup: b.to_string(),
            engine: manifest.engine.to_string(),
            target: manifest.target.clone(),
            // Counts came back only from a restore that ran to its end.
            restored: to_scratch && matches!(verdict, Verdict::Passed | Verdict::Mismatch),
            verdict,
            seconds,
            detail,
            differences,
        }
    }

    /// Integrity of every part, then its content check where the format has one.
    async fn check_only(&self, manifest: &Manifest) -> Result<(), SourceFailure> {
        for part in &manifest.parts {
            verify::check_part(
                self.store,
                manifest,
                part,
                Some(crate::engine::registry::decrypt(self.identities)),
                &NoProgress,
            )
            .await?;
        }
        Ok(())
    }

    async fn restore(
        &self,
        manifest: &Manifest,
        url: &str,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let mut checked = Checked::default();
        checked
            .whole_backup(self.store, manifest, self.identities, &NoProgress, &log)
            .await?;
        match manifest.engine {
            Engine::Postgres => self.postgres(manifest, url, &mut checked).await,
            Engine::Clickhouse => self.clickhouse(manifest, url, &mut checked).await,
            Engine::Redis => self.redis(manifest, url, &mut checked).await,
            _ => unreachable!("only RESTORED engines get a destination"),
        }
    }

    /// Runs one step on its scratch destination.
    async fn step<'m>(
        &self,
        step: Step<'m>,
        flags: &RestoreFlags,
        checked: &mut Checked<'m>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let common = step.common(false, self.max_diff);
        let mut sink = flags.build(&step.manifest.engine, &common)?;
        sink.probe(step.manifest).await?;
        let ctx = crate::engine::RestoreCtx {
            store: self.store,
            identities: self.identities,
            progress: &NoProgress,
            say: &log,
        };
        let prepared = rebuild::prepare(step, sink, checked, ctx).await?;
        prepared.run(ctx).await
    }

    async fn postgres<'m>(
        &self,
        manifest: &'m Manifest,
        url: &str,
        checked: &mut Checked<'m>,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let server = postgres::PgTarget::from_url(url)?;
        if let Some(db) = &server.dbname {
            return Err(format!(
                "the drill's PostgreSQL destination names database {db:?}; it restores only into scratch databases it names itself (<database>{SUFFIX}): give the server without a database (postgres://user@host:5432)"
            )
            .into());
        }
        let mut out = Vec::new();
        for db in manifest.databases() {
            let scratch = scratch_name(db);
            postgres::scratch::claim(&server, &scratch).await?;
            let scratch_url = scratch_url(url, &scratch)?;
            let step = Step {
                manifest,
                database: Some(db.to_string()),
                to: scratch_url.to_string(),
                globals: false,
            };
            let flags = step.flags(self.flags);
            let result = self.step(step, &flags, checked).await;
            let dropped = postgres::scratch::release(&server, &scratch).await;
            out.push(both(result, dropped)?);
        }
        Ok(out)
    }

    async fn clickhouse<'m>(
        &self,
        manifest: &'m Manifest,
        url: &str,
        checked: &mut Checked<'m>,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let target = clickhouse::ChTarget::from_url(url)?;
        let client = clickhouse::ChClient::new(&target)?;
        let schema_part = manifest
            .part_of(&PartFormat::ClickhouseSchema)
            .ok_or_else(|| format!("backup {} has no schema part", manifest.backup_ref()))?;
        let schema_v = checked
            .get(self.store, manifest, schema_part, &NoProgress, &log)
            .await?;
        // Every database of the schema gets its scratch name, empty ones too: nothing may
        // be created under a real name.
        let schema =
            clickhouse::restore::read_schema(self.store, schema_v, self.identities, &NoProgress)
                .await?;
        let mut flags = self.flags.clone();
        flags.clickhouse.database_map = schema
            .databases
            .iter()
            .map(|d| (d.name.clone(), scratch_name(&d.name)))
            .collect();
        if flags.clickhouse.replicated.is_none() {
            flags.clickhouse.replicated = Some(clickhouse::sink::ReplicatedArg::Convert);
        }
        let mut claimed = Vec::new();
        let mut result = Ok(());
        for (_, scratch) in &flags.clickhouse.database_map {
            result = clickhouse::scratch::claim(&client, scratch).await;
            if result.is_err() {
                break;
            }
            claimed.push(scratch.clone());
        }
        let counts = match result {
            Ok(()) => {
                let step = Step {
                    manifest,
                    database: None,
                    to: url.to_string(),
                    globals: false,
                };
                self.step(step, &flags, checked).await
            }
            Err(e) => Err(e),
        };
        let mut dropped = Ok(());
        for scratch in &claimed {
            dropped = both(
                dropped,
                clickhouse::scratch::release(&client, scratch).await,
            );
        }
        Ok(vec![both(counts, dropped)?])
    }

    async fn redis<'m>(
        &self,
        manifest: &'m Manifest,
        url: &str,
        checked: &mut Checked<'m>,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let target = redis::RedisTarget::from_url(url)?;
        redis::scratch::claim(&target).await?;
        let step = Step {
            manifest,
            database: None,
            to: url.to_string(),
            globals: false,
        };
        let result = self.step(step, self.flags, checked).await;
        let emptied = redis::scratch::release(&target).await;
        Ok(vec![both(result, emptied)?])
    }
}

/// The outcome of a step and of the cleanup after it: the step's error first (it decides
/// the verdict), and a failed cleanup is never lost: logged beside a step error, returned
/// alone otherwise (a scratch database left behind fails the drill).
fn both<T>(
    step: Result<T, SourceFailure>,
    cleanup: Result<(), SourceFailure>,
) -> Result<T, SourceFailure> {
    match (step, cleanup) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            tracing::error!(error = %c, "cleaning up after a failed drill step failed too; drop the scratch database by hand");
            Err(e)
        }
    }
}

fn log(line: &str) {
    tracing::info!("{line}");
}

/// `kube_dr_drill_success`.
pub const SUCCESS: &str = "kube_dr_drill_success";
/// `kube_dr_drill_duration_seconds`.
pub const DURATION: &str = "kube_dr_drill_duration_seconds";
/// `kube_dr_drill_last_timestamp_seconds`.
pub const LAST: &str = "kube_dr_drill_last_timestamp_seconds";

/// What one target's drill pushes into its group (job `kube_dr_drill`).
pub fn metrics(
    report: &Report,
    finished: chrono::DateTime<chrono::Utc>,
) -> Vec<crate::observe::push::Metric> {
    use crate::observe::push::Metric;
    vec![
        Metric {
            name: SUCCESS,
            help: "1 if the last drill of this engine and target restored (or checked) its newest backup and every count matched, else 0.",
            value: if report.verdict == Verdict::Passed { 1.0 } else { 0.0 },
        },
        Metric {
            name: DURATION,
            help: "How long the last drill's restore (or checks) of this engine and target took, in seconds.",
            value: report.seconds,
        },
        Metric {
            name: LAST,
            help: "When the last drill of this engine and target finished (Unix time).",
            value: finished.timestamp_millis() as f64 / 1000.0,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_names_pass() {
        check_scratch_name("app__drill").unwrap();
        for bad in [
            "app",
            "__drill",
            "app__drill_x",
            "app_drill",
            &format!("{}__drill", "x".repeat(60)),
        ] {
            assert!(check_scratch_name(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(scratch_name("signoz_logs"), "signoz_logs__drill");
    }

    #[test]
    fn scratch_urls_name_exactly_the_claimed_database() {
        for db in ["app", "q%61", "a/b", "x?y#z", "sp ace", "ünï"] {
            let scratch = scratch_name(db);
            let url = scratch_url("postgres://u@127.0.0.1:5432", &scratch).unwrap();
            let named = postgres::PgTarget::from_url(&url).unwrap().dbname;
            assert_eq!(named.as_deref(), Some(scratch.as_str()), "{db}: {url}");
        }
    }
}
