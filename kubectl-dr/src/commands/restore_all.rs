//! `kubectl dr restore --all`: the rebuild day in one command. The newest backup of every
//! target, each to its destination, in the order the runbooks prescribe (Vault first: it
//! holds every other secret; then the cluster's objects; then the databases). Everything
//! is checked before anything is touched, one plan is shown and confirmed once, each step
//! ends with its count comparison, and the run ends with a summary and the RTO. A state
//! file records each verified step, so `--resume` continues after the step that failed.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use drkit::catalog::{self, Manifest};
use drkit::cli::StoreArgs;
use drkit::engine::{RestoreCtx, RestoredCounts, RunKind};
use drkit::progress::Progress;
use drkit::rebuild::state::{read_small_file, StateFile};
use drkit::rebuild::{self, Destinations, Observer, Run, Step};
use drkit::store::ReadStore;
use drkit::verify::MaxDiff;
use serde::{Deserialize, Serialize};

use super::counts::DatabaseCounts;
use super::pitr::{DatadirJob, DirState};
use super::restore::RestoreCmd;
use crate::output::{self, Format};

/// `--plan FILE`: the destinations of a rebuild (and its defaults), kept with the runbook.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanFile {
    /// `ENGINE` or `ENGINE/TARGET` → URL, as `--to` takes them.
    #[serde(default, deserialize_with = "unique_map")]
    to: std::collections::BTreeMap<String, String>,
    /// `--max-diff` unless given on the command line.
    max_diff: Option<String>,
    /// `--globals` for every PostgreSQL backup that has a globals part.
    #[serde(default)]
    globals: bool,
}

/// A map that refuses a key given twice: YAML would silently keep the second
/// `postgres:`, and a rebuild would restore into a destination nobody meant.
fn unique_map<'de, D>(d: D) -> Result<std::collections::BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of ENGINE[/TARGET] to URL")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{k} is given twice; keep one destination per key"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// Deepest `[`/`{` nesting accepted in a plan file (it needs two): the YAML parser takes
/// minutes on a hostile nesting of thousands.
const MAX_PLAN_NESTING: usize = 32;

/// The deepest flow-collection nesting of YAML text (an overestimate: brackets in
/// strings count too, which real plans do not nest).
fn flow_nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl PlanFile {
    fn load(path: &Path) -> anyhow::Result<PlanFile> {
        let text = read_small_file(path, "plan file")?;
        anyhow::ensure!(
            flow_nesting(&text) <= MAX_PLAN_NESTING,
            "the plan file {} nests brackets more than {MAX_PLAN_NESTING} deep; a plan is a map of destinations",
            path.display()
        );
        serde_yaml::from_str(&text).with_context(|| {
            format!(
                "the plan file {} is not valid (expected keys: to, maxDiff, globals)",
                path.display()
            )
        })
    }
}

/// `--before TIME`: an RFC 3339 time, a date (midnight UTC), or a duration ago (`36h`).
pub fn parse_before(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
        return Ok(Utc::now() - ago);
    }
    Err(format!(
        "{text:?}: expected an RFC 3339 time (2026-11-22T02:00:00Z), a date (2026-11-22) or a duration ago (36h)"
    ))
}

/// One row of the summary.
#[derive(Debug, Serialize)]
struct StepReport {
    step: usize,
    engine: String,
    target: String,
    backup: String,
    database: Option<String>,
    destination: String,
    stored_bytes: u64,
    seconds: Option<f64>,
    /// `restored`, `done earlier` (a previous run verified it), `failed`, `not run`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    counts: Option<DatabaseCounts>,
}

/// The whole run, printed at the end (also after a failure).
#[derive(Debug, Serialize)]
struct Summary {
    store: String,
    state_file: String,
    started_at: DateTime<Utc>,
    /// From the start of the run (the first one, when resumed) to the last verified step.
    rto_seconds: Option<f64>,
    this_run_seconds: f64,
    ok: bool,
    steps: Vec<StepReport>,
}

impl Summary {
    fn print(&self, format: Format) -> anyhow::Result<()> {
        if format != Format::Table {
            return output::print_structured(format, self);
        }
        let rows: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.step.to_string(),
                    s.engine.clone(),
                    s.target.clone(),
                    s.backup.clone(),
                    s.database.clone().unwrap_or_else(|| "-".into()),
                    output::human_bytes(s.stored_bytes),
                    s.seconds.map_or("-".into(), |t| format!("{t:.1}s")),
                    s.counts.as_ref().map_or("-".into(), |c| {
                        let bad = c.tables.iter().filter(|r| !r.ok).count();
                        if bad == 0 {
                            format!("{} match", c.tables.len())
                        } else {
                            format!("{bad} of {} differ", c.tables.len())
                        }
                    }),
                    s.status.to_string(),
                ]
            })
            .collect();
        output::print_table(
            &[
                "STEP", "ENGINE", "TARGET", "BACKUP", "DATABASE", "BYTES", "TIME", "COUNTS",
                "STATUS",
            ],
            &rows,
        )?;
        match self.rto_seconds {
            Some(rto) => drkit::cli::print_line(format_args!(
                "RTO {} (from {} to the last verified step; this run {:.1}s); state in {}",
                short_seconds(rto),
                self.started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                self.this_run_seconds,
                self.state_file
            )),
            None => drkit::cli::print_line(format_args!(
                "no step verified yet; state in {}",
                self.state_file
            )),
        }
    }
}

fn short_seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        0..=59 => format!("{s:.1}s"),
        60..=3599 => format!("{}m {:02}s", whole / 60, whole % 60),
        _ => format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

/// Prints each step of the run as it goes and keeps its row of the summary.
struct Printer<'r> {
    total: usize,
    max_diff: MaxDiff,
    reports: &'r mut [StepReport],
}

impl Observer for Printer<'_> {
    fn started(&mut self, index: usize, step: &Step<'_>) {
        eprintln!(
            "==> step {}/{}: {} → {} ({})",
            index + 1,
            self.total,
            step.key(),
            step.shown_to(),
            output::human_bytes(step.stored_bytes())
        );
    }

    fn restored(
        &mut self,
        index: usize,
        step: &Step<'_>,
        seconds: f64,
        counts: &RestoredCounts,
        ok: bool,
    ) {
        let report = (!counts.rows.is_empty()).then(|| {
            DatabaseCounts::new(
                &counts.heading,
                counts.against.clone(),
                self.max_diff,
                counts.rows.clone(),
            )
        });
        if let Some(r) = &report {
            // Progress on stderr: an unwritable terminal must not stop a run between
            // a restored step and its record.
            let _ = r.print_to(true);
        }
        eprintln!(
            "step {}/{} {}: {} in {seconds:.1}s, {}",
            index + 1,
            self.total,
            step.key(),
            output::human_bytes(step.stored_bytes()),
            if ok { "verified" } else { "COUNTS DIFFER" }
        );
        let row = &mut self.reports[index];
        row.seconds = Some(seconds);
        row.counts = report;
        row.status = if ok { "restored" } else { "failed" };
    }

    fn failed(&mut self, index: usize, _step: &Step<'_>, seconds: f64) {
        let row = &mut self.reports[index];
        row.seconds = Some(seconds);
        row.status = "failed";
    }
}

impl RestoreCmd {
    /// `restore --all`.
    pub(super) async fn run_all(
        &self,
        store_args: &StoreArgs,
        trust: &catalog::Trust,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let identities = self.identity.require()?;
        let plan_file = match &self.plan {
            Some(p) => PlanFile::load(p)?,
            None => PlanFile::default(),
        };
        let mut destinations = Destinations::default();
        // `postgres/T=datadir:/path[@TIME]`: a point-in-time restore into a data directory.
        let mut jobs: Vec<DatadirJob> = Vec::new();
        let mut add = |k: &str, v: &str| -> anyhow::Result<()> {
            if v.trim_start().starts_with("datadir:") {
                let mut job = DatadirJob::parse(k.trim(), v.trim(), self.before)?;
                job.wal_into_datadir = self.pitr.wal_into_datadir;
                jobs.retain(|j| j.target != job.target);
                jobs.push(job);
                Ok(())
            } else {
                Ok(destinations.insert(k, v)?)
            }
        };
        for (k, v) in &plan_file.to {
            add(k, v)?;
        }
        for entry in &self.to {
            let (k, v) = entry
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--to {entry}: expected ENGINE[/TARGET]=URL"))?;
            add(k, v)?;
        }
        for (engine, to) in self.engines.implied_destinations() {
            destinations.insert(engine.as_str(), to)?;
        }
        anyhow::ensure!(
            !destinations.is_empty() || !jobs.is_empty(),
            "--all needs destinations: --to ENGINE=URL (repeatable, e.g. --to postgres=postgres://postgres@db:5432) or --plan FILE"
        );
        let max_diff = match (&self.max_diff, &plan_file.max_diff) {
            (Some(m), _) => *m,
            (None, Some(text)) => text
                .parse::<MaxDiff>()
                .map_err(|e| anyhow::anyhow!("maxDiff in the plan file: {e}"))?,
            (None, None) => MaxDiff::default(),
        };
        let mut flags = self.engines.clone();
        flags.add_globals(plan_file.globals);

        let store = store_args.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let mut state = StateFile::begin(&self.state, store.location(), self.resume)?;
        let shown_state = self.state.display().to_string();

        let mut manifests: Vec<Manifest> = if self.resume {
            let mut out = Vec::new();
            for b in state.chosen()? {
                out.push(catalog::load_manifest(store, &b, trust).await?);
            }
            out
        } else {
            let skip = self
                .skip
                .iter()
                .map(|s| rebuild::DestinationKey::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .context("--skip")?;
            let chosen: Vec<Manifest> =
                rebuild::latest_backups(store, &catalog::Filter::default(), self.before, trust)
                    .await?
                    .into_iter()
                    .filter(|m| {
                        let b = m.backup_ref();
                        self.filter.chooses(&b) && !skip.iter().any(|k| k.matches(&b))
                    })
                    // A target restored into a data directory is the datadir step's.
                    .filter(|m| {
                        !(m.engine.as_str() == "postgres"
                            && jobs.iter().any(|j| j.target == m.target))
                    })
                    .collect();
            anyhow::ensure!(
                !chosen.is_empty() || !jobs.is_empty(),
                "no backup in {} is chosen by --engine {:?} --target {:?} --skip {:?}; `kubectl dr list` shows what is there",
                store.location(),
                self.filter.engine,
                self.filter.target,
                self.skip
            );
            chosen
        };
        rebuild::sort_for_restore(&mut manifests);
        state.state.backups = manifests
            .iter()
            .map(|m| m.backup_ref().to_string())
            .collect();
        let steps = rebuild::steps(&manifests, &destinations)?;
        state.check_done(&steps)?;
        let total = steps.len();
        let run_started = Instant::now();
        let to_run: Vec<(usize, Step<'_>)> = steps
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, s)| state.done(&s.key()).is_none())
            .collect();
        for (i, s) in steps.iter().enumerate() {
            if state.done(&s.key()).is_some() {
                eprintln!(
                    "step {}/{total} {} was verified in the earlier run; skipped",
                    i + 1,
                    s.key()
                );
            }
        }
        let say = |m: &str| eprintln!("{m}");
        let run = Run {
            ctx: RestoreCtx {
                store,
                identities: &identities,
                progress,
                say: &say,
            },
            flags: &flags,
            clean: self.clean,
            max_diff,
            kind: RunKind::Rebuild,
        };
        // Everything is checked before anything changes: the destinations answer, every
        // part of every backup matches its manifest and opens with the key, every engine's
        // plan accepts its destination.
        let prepared = run.prepare(to_run, total, true).await?;
        // The datadir steps: planned, their directories checked and their base backups
        // verified, before anything changes too.
        let mut plans = Vec::new();
        for job in &jobs {
            let plan = job.plan(store, trust).await?;
            let state_of_dir = job.check_dir(&plan)?;
            plans.push((plan, state_of_dir));
        }
        let mut verified = Vec::new();
        for (job, (plan, dir)) in jobs.iter().zip(&plans) {
            verified.push(match dir {
                DirState::Empty => Some(job.verify_base(store, plan, progress).await?),
                DirState::Done => None,
            });
        }

        eprintln!(
            "plan ({} of {total} step(s) to run, max diff {max_diff}):",
            prepared.len()
        );
        for (i, p) in &prepared {
            eprintln!(
                "  {}/{total} {} → {} ({})",
                i + 1,
                p.step.key(),
                p.step.shown_to(),
                output::human_bytes(p.step.stored_bytes())
            );
            for line in &p.lines {
                eprintln!("      {line}");
            }
        }
        for (k, (job, (plan, dir))) in jobs.iter().zip(&plans).enumerate() {
            eprintln!(
                "  {}/{total} postgres/{} → datadir:{} ({}){}",
                total + k + 1,
                job.target,
                job.dir.display(),
                job.until,
                if *dir == DirState::Done {
                    ": done earlier"
                } else {
                    ""
                }
            );
            for line in &plan.lines {
                eprintln!("      {line}");
            }
        }
        if self.dry_run {
            eprintln!(
                "dry run: every backup verified, every destination inspected, nothing changed"
            );
            return Ok(());
        }
        if !self.yes && (!prepared.is_empty() || verified.iter().any(Option::is_some)) {
            let warnings: Vec<String> = prepared
                .iter()
                .filter_map(|(_, p)| p.confirm.as_ref().map(|c| c.prompt.clone()))
                .collect();
            super::confirm(
                &format!("restore --all changes {} destination(s)", prepared.len()),
                &format!(
                    "This restores {} backup step(s) in the order above.{}",
                    prepared.len(),
                    if warnings.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", warnings.join(" "))
                    }
                ),
                "restore",
            )?;
        }
        state.state.failed = None;
        state.save()?;
        eprintln!("state of this run: {shown_state} (rerun with --resume after a failure)");

        let mut reports: Vec<StepReport> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let earlier = state.done(&s.key());
                StepReport {
                    step: i + 1,
                    engine: s.manifest.engine.to_string(),
                    target: s.manifest.target.clone(),
                    backup: s.manifest.id.to_string(),
                    database: s.scope.clone(),
                    destination: s.shown_to(),
                    stored_bytes: s.stored_bytes(),
                    seconds: earlier.map(|d| d.seconds),
                    status: if earlier.is_some() {
                        "done earlier"
                    } else {
                        "not run"
                    },
                    counts: None,
                }
            })
            .collect();
        // The datadir steps first: they need no running service, and a server started on
        // one later is independent of the other steps.
        for (k, ((job, (plan, _)), checked)) in jobs.iter().zip(&plans).zip(verified).enumerate() {
            let started = Instant::now();
            let status = match checked {
                None => "done earlier",
                Some(v) => {
                    eprintln!(
                        "==> {}/{total} postgres/{} → datadir:{}",
                        total + k + 1,
                        job.target,
                        job.dir.display()
                    );
                    let fetch = super::pitr::fetch_command(
                        store_args,
                        trust,
                        &self.identity,
                        &job.target,
                        &plan.base.facts.system_identifier,
                    )?;
                    job.execute(store, &identities, plan, v, &fetch, progress)
                        .await
                        .with_context(|| format!("restoring postgres/{} into {} failed; empty the directory, fix the cause and run the same command with --resume", job.target, job.dir.display()))?;
                    "restored"
                }
            };
            reports.push(StepReport {
                step: total + k + 1,
                engine: "postgres".into(),
                target: job.target.clone(),
                backup: plan.base.manifest.id.to_string(),
                database: None,
                destination: format!("datadir:{} ({})", job.dir.display(), job.until),
                stored_bytes: plan.base.manifest.size_bytes(),
                seconds: Some(started.elapsed().as_secs_f64()),
                status,
                counts: None,
            });
        }
        let mut printer = Printer {
            total,
            max_diff,
            reports: &mut reports,
        };
        let outcome = run
            .execute(prepared, total, Some(&mut state), &mut printer)
            .await;
        let last = state.state.done.iter().map(|d| d.finished_at).max();
        let started_at = state.state.started_at;
        let summary = Summary {
            store: store.location().to_string(),
            state_file: shown_state.clone(),
            started_at,
            rto_seconds: last.map(|t| (t - started_at).num_milliseconds() as f64 / 1000.0),
            this_run_seconds: run_started.elapsed().as_secs_f64(),
            ok: outcome.is_ok(),
            steps: reports,
        };
        // A summary nobody reads (a closed stdout) never hides a failed run.
        let printed = summary.print(self.output);
        match outcome {
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "fix the cause, then run the same command with --resume: the steps verified so far (in {shown_state}) are skipped"
            ))),
            Ok(()) => printed,
        }
    }
}

/// The default state file of `--all`, in the current directory.
pub const DEFAULT_STATE_FILE: &str = "kubectl-dr-rebuild.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_takes_times_dates_and_durations_ago() {
        let t = parse_before("2026-11-22T02:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T02:00:00+00:00");
        let d = parse_before("2026-11-22").unwrap();
        assert_eq!(d.to_rfc3339(), "2026-11-22T00:00:00+00:00");
        let ago = parse_before("36h").unwrap();
        let expected = Utc::now() - chrono::Duration::hours(36);
        assert!((ago - expected).num_seconds().abs() < 5);
        assert!(parse_before("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn plan_files_refuse_unknown_keys() {
        let ok: PlanFile =
            serde_yaml::from_str("to:\n  vault: http://v:8200\n  postgres/prod: postgres://db\nmaxDiff: 10%\nglobals: true\n")
                .unwrap();
        assert_eq!(ok.to.len(), 2);
        assert_eq!(ok.max_diff.as_deref(), Some("10%"));
        assert!(ok.globals);
        assert!(serde_yaml::from_str::<PlanFile>("destinations: {}\n").is_err());
    }

    #[test]
    fn rto_reads_like_a_clock() {
        assert_eq!(short_seconds(12.34), "12.3s");
        assert_eq!(short_seconds(125.0), "2m 05s");
        assert_eq!(short_seconds(7300.0), "2h 01m");
    }
}
