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

use crate::catalog::Manifest;
use crate::engine::registry::{self, RestoreFlags};
use crate::engine::scratch::both;
use crate::engine::{RestoreCtx, RestoredCounts, RunKind, SourceFailure};
use crate::pipeline::keys::Identities;
use crate::progress::NoProgress;
use crate::rebuild::{Destinations, Run};
use crate::store::ReadStore;
use crate::verify::{self, MaxDiff};

pub use crate::engine::scratch::{check_scratch_name, scratch_name, SUFFIX};

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
            // A physical base backup gets its integrity and content check: restoring a data
            // directory needs a server of its own (kubectl dr restore --to-datadir).
            .filter(|_| registry::drills(&manifest.engine) && manifest.kind() != "physical");
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
                let verdict = if verify::is_check_failure(&*e) {
                    Verdict::Damaged
                } else {
                    Verdict::Failed
                };
                (
                    verdict,
                    format!("{:#}", anyhow::Error::from_boxed(e)),
                    Vec::new(),
                )
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

    fn ctx(&self) -> RestoreCtx<'_> {
        RestoreCtx {
            store: self.store,
            identities: self.identities,
            progress: &NoProgress,
            say: &log,
        }
    }

    /// Every part checked, then each step its engine names restored into its scratch
    /// destination, claimed before and released after it whatever happened.
    async fn restore(
        &self,
        manifest: &Manifest,
        url: &str,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let ctx = self.ctx();
        crate::rebuild::Checked::default()
            .whole_backup(self.store, manifest, self.identities, &NoProgress, &log)
            .await?;
        let mut out = Vec::new();
        for mut scratch in registry::drill_steps(manifest, url, self.flags, ctx).await? {
            let counts = match scratch.claim.claim().await {
                Ok(()) => self.step(scratch.step, &scratch.flags).await,
                Err(e) => Err(e),
            };
            let released = scratch.claim.release().await;
            out.push(both(counts, released)?);
        }
        Ok(out)
    }

    /// Runs one step on its scratch destination, with the flags its engine chose.
    async fn step(
        &self,
        step: crate::engine::Step<'_>,
        flags: &RestoreFlags,
    ) -> Result<RestoredCounts, SourceFailure> {
        let run = Run {
            ctx: self.ctx(),
            flags,
            clean: false,
            max_diff: self.max_diff,
            kind: RunKind::Drill,
        };
        let mut prepared = run.prepare(vec![(0, step)], 1, false).await?;
        let (_, p) = prepared.pop().expect("one step prepared");
        p.run(run.ctx).await
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
}
