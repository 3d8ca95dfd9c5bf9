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
use drkit::catalog::{self, BackupRef, Engine, Manifest};
use drkit::cli::{CheckFailed, StoreArgs};
use drkit::progress::Progress;
use drkit::rebuild::{self, Checked, Destinations, Prepared, Step};
use drkit::store::ReadStore;
use drkit::verify::MaxDiff;
use serde::{Deserialize, Serialize};

use super::counts::DatabaseCounts;
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

/// Largest plan or state file read: both are a few kilobytes; a bigger one is a mistake
/// (`--plan /dev/zero`) and must not exhaust memory.
const MAX_SMALL_FILE: u64 = 1024 * 1024;
/// Deepest `[`/`{` nesting accepted in a plan file (it needs two): the YAML parser takes
/// minutes on a hostile nesting of thousands.
const MAX_PLAN_NESTING: usize = 32;

/// Reads a small regular file whole: a device, FIFO or directory is refused before it is
/// opened, and at most [`MAX_SMALL_FILE`] bytes are read.
fn read_small_file(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file(),
        "the {what} {} is not a regular file",
        path.display()
    );
    anyhow::ensure!(
        meta.len() <= MAX_SMALL_FILE,
        "the {what} {} is {} bytes, over the {MAX_SMALL_FILE}-byte limit",
        path.display(),
        meta.len()
    );
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SMALL_FILE + 1).read_to_string(&mut text))
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_SMALL_FILE,
        "the {what} {} grew past the {MAX_SMALL_FILE}-byte limit while it was read",
        path.display()
    );
    Ok(text)
}

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

/// What `--resume` needs: the backups the run chose (a resumed run restores the same ones,
/// whatever was backed up since) and the steps already verified.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    store: String,
    started_at: DateTime<Utc>,
    backups: Vec<String>,
    done: Vec<DoneStep>,
    #[serde(default)]
    failed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoneStep {
    step: String,
    destination: String,
    stored_bytes: u64,
    seconds: f64,
    finished_at: DateTime<Utc>,
    tables: usize,
}

impl State {
    fn load(path: &Path) -> anyhow::Result<State> {
        let text = read_small_file(path, "state file").with_context(|| {
            "--resume continues a run started with --all from this directory; pass --state to name another file"
        })?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("the state file {} does not parse", path.display()))?;
        anyhow::ensure!(
            state.version == 1,
            "the state file {} has version {}, not 1",
            path.display(),
            state.version
        );
        let twice = |items: Vec<&str>| {
            let mut seen = std::collections::BTreeSet::new();
            items
                .into_iter()
                .find(|i| !seen.insert(*i))
                .map(str::to_string)
        };
        if let Some(b) = twice(state.backups.iter().map(String::as_str).collect()) {
            anyhow::bail!(
                "the state file {} lists backup {b} twice: it was altered; remove it to start over",
                path.display()
            );
        }
        if let Some(step) = twice(state.done.iter().map(|d| d.step.as_str()).collect()) {
            anyhow::bail!(
                "the state file {} marks step {step} done twice: it was altered; remove it to start over",
                path.display()
            );
        }
        Ok(state)
    }

    /// Refuses a state whose done steps are not steps of this run (a step that never ran
    /// must not be reported verified), or were verified into another destination.
    fn check_done(&self, steps: &[Step<'_>], path: &Path) -> anyhow::Result<()> {
        for d in &self.done {
            let Some(step) = steps.iter().find(|s| s.key() == d.step) else {
                anyhow::bail!(
                    "the state file {} marks step {} done, but it is no step of the run's backups ({}): it was altered or belongs to another run; remove it to start over",
                    path.display(),
                    d.step,
                    self.backups.join(", ")
                );
            };
            anyhow::ensure!(
                step.shown_to() == d.destination,
                "the state file {} says step {} was verified into {}, but this run restores it to {}; remove the file to start over, or give the same destinations",
                path.display(),
                d.step,
                d.destination,
                step.shown_to()
            );
            anyhow::ensure!(
                d.finished_at >= self.started_at && d.finished_at <= Utc::now(),
                "the state file {} dates step {} outside its run ({}): it was altered; remove it to start over",
                path.display(),
                d.step,
                d.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        Ok(())
    }

    /// Written next to itself and renamed, so a crash never leaves half a file.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing the state file {}", path.display()))
    }

    fn done(&self, key: &str) -> Option<&DoneStep> {
        self.done.iter().find(|d| d.step == key)
    }
}

fn parse_ref(text: &str) -> anyhow::Result<BackupRef> {
    let mut it = text.splitn(3, '/');
    match (it.next(), it.next(), it.next()) {
        (Some(engine), Some(target), Some(id)) => Ok(BackupRef {
            engine: engine.to_string(),
            target: target.to_string(),
            id: id.parse()?,
        }),
        _ => anyhow::bail!("{text:?} is not ENGINE/TARGET/ID"),
    }
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
        for (k, v) in &plan_file.to {
            destinations.insert(k, v)?;
        }
        for entry in &self.to {
            destinations.add(entry)?;
        }
        if self.engines.command.to_command {
            destinations.insert("command", "(--to-command)")?;
        }
        anyhow::ensure!(
            !destinations.is_empty(),
            "--all needs destinations: --to ENGINE=URL (repeatable, e.g. --to postgres=postgres://postgres@db:5432) or --plan FILE"
        );
        let max_diff = match (&self.max_diff, &plan_file.max_diff) {
            (Some(m), _) => *m,
            (None, Some(text)) => text
                .parse::<MaxDiff>()
                .map_err(|e| anyhow::anyhow!("maxDiff in the plan file: {e}"))?,
            (None, None) => MaxDiff::default(),
        };
        let globals = self.engines.postgres.globals || plan_file.globals;

        let store = store_args.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let state_path = self.state.clone();
        let shown_state = state_path.display().to_string();
        let mut state = if self.resume {
            let s = State::load(&state_path)?;
            anyhow::ensure!(
                s.store == store.location(),
                "the state file {shown_state} is of a run on {}, not {}",
                s.store,
                store.location()
            );
            s
        } else {
            if let Ok(old) = State::load(&state_path) {
                anyhow::ensure!(
                    old.failed.is_none(),
                    "{shown_state} holds an unfinished run started {} ({} step(s) verified, then: {}); continue it with --resume, or remove the file to start over",
                    old.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    old.done.len(),
                    old.failed.as_deref().unwrap_or("?")
                );
            }
            State {
                version: 1,
                store: store.location().to_string(),
                started_at: Utc::now(),
                backups: Vec::new(),
                done: Vec::new(),
                failed: None,
            }
        };

        let mut manifests: Vec<Manifest> = if self.resume {
            let mut out = Vec::new();
            for b in &state.backups {
                let b = parse_ref(b).with_context(|| format!("in {shown_state}"))?;
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
                    .collect();
            anyhow::ensure!(
                !chosen.is_empty(),
                "no backup in {} is chosen by --engine {:?} --target {:?} --skip {:?}; `kubectl dr list` shows what is there",
                store.location(),
                self.filter.engine,
                self.filter.target,
                self.skip
            );
            chosen
        };
        rebuild::sort_for_restore(&mut manifests);
        state.backups = manifests
            .iter()
            .map(|m| m.backup_ref().to_string())
            .collect();
        let steps = rebuild::steps(&manifests, &destinations, globals)?;
        state.check_done(&steps, &state_path)?;
        if let Some(s) = steps
            .iter()
            .find(|s| s.manifest.engine == Engine::Command && s.to == "-")
        {
            anyhow::bail!(
                "--to command=- would mix {}'s output with the summary on stdout; under --all restore command output with --to-command -- CMD… (e.g. -- sh -c 'cat > out'), or on its own with `kubectl dr restore latest --engine command --to -`",
                s.manifest.backup_ref()
            );
        }
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

        // Everything is checked before anything changes: the destinations answer, every
        // part of every backup matches its manifest and opens with the key, every engine's
        // plan accepts its destination.
        let mut sinks = Vec::new();
        for (i, s) in &to_run {
            let flags = s.flags(&self.engines);
            let mut common = s.common(self.clean, max_diff);
            if s.manifest.engine == Engine::Command && self.engines.command.to_command {
                common.to.clear();
            }
            let mut sink = flags
                .build(&s.manifest.engine, &common)
                .map_err(anyhow::Error::from_boxed)
                .with_context(|| format!("step {}/{total} {}", i + 1, s.key()))?;
            sink.probe(s.manifest)
                .await
                .map_err(anyhow::Error::from_boxed)
                .with_context(|| {
                    format!(
                        "checking the destination {} of step {}/{total} {} before restoring anything",
                        s.shown_to(),
                        i + 1,
                        s.key()
                    )
                })?;
            sinks.push(sink);
        }
        let mut checked = Checked::default();
        let mut seen: Vec<&Manifest> = Vec::new();
        for (_, s) in &to_run {
            if seen.iter().any(|m| std::ptr::eq(*m, s.manifest)) {
                continue;
            }
            seen.push(s.manifest);
            checked
                .whole_backup(store, s.manifest, &identities, progress, &say)
                .await
                .with_context(|| {
                    format!(
                        "checking {} before restoring anything; nothing was restored",
                        s.manifest.backup_ref()
                    )
                })?;
        }
        let mut prepared: Vec<(usize, Prepared<'_>)> = Vec::new();
        for ((i, s), sink) in to_run.into_iter().zip(sinks) {
            let key = s.key();
            let p = rebuild::prepare(
                s,
                sink,
                &mut checked,
                drkit::engine::RestoreCtx {
                    store,
                    identities: &identities,
                    progress,
                    say: &say,
                },
            )
            .await
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| {
                format!(
                    "planning step {}/{total} {key}; nothing was restored",
                    i + 1
                )
            })?;
            prepared.push((i, p));
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
        if self.dry_run {
            eprintln!(
                "dry run: every backup verified, every destination inspected, nothing changed"
            );
            return Ok(());
        }
        if !self.yes && !prepared.is_empty() {
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
        state.failed = None;
        state.save(&state_path)?;
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
                    database: s.database.clone(),
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
        let mut failure: Option<anyhow::Error> = None;
        for (i, p) in prepared {
            let key = p.step.key();
            let to = p.step.shown_to();
            let bytes = p.step.stored_bytes();
            eprintln!(
                "==> step {}/{total}: {key} → {to} ({})",
                i + 1,
                output::human_bytes(bytes)
            );
            let started = Instant::now();
            let outcome = p
                .run(drkit::engine::RestoreCtx {
                    store,
                    identities: &identities,
                    progress,
                    say: &say,
                })
                .await;
            let seconds = started.elapsed().as_secs_f64();
            reports[i].seconds = Some(seconds);
            let counts = match outcome {
                Ok(c) => c,
                Err(e) => {
                    reports[i].status = "failed";
                    failure = Some(anyhow::Error::from_boxed(e).context(format!(
                        "step {}/{total} {key} failed after {seconds:.1}s; the steps before it stay restored and verified",
                        i + 1
                    )));
                    break;
                }
            };
            let report = (!counts.rows.is_empty()).then(|| {
                DatabaseCounts::new(
                    &counts.heading,
                    counts.against.clone(),
                    max_diff,
                    counts.rows,
                )
            });
            if let Some(r) = &report {
                // Progress on stderr: an unwritable terminal must not stop a run between
                // a restored step and its record.
                let _ = r.print_to(true);
            }
            let ok = report.as_ref().is_none_or(|r| r.ok);
            let tables = report.as_ref().map_or(0, |r| r.tables.len());
            reports[i].counts = report;
            eprintln!(
                "step {}/{total} {key}: {} in {seconds:.1}s, {}",
                i + 1,
                output::human_bytes(bytes),
                if ok { "verified" } else { "COUNTS DIFFER" }
            );
            if !ok {
                reports[i].status = "failed";
                failure = Some(
                    CheckFailed(format!(
                        "step {}/{total} {key}: restored counts differ from the backup beyond --max-diff {max_diff} (table above)",
                        i + 1
                    ))
                    .into(),
                );
                break;
            }
            reports[i].status = "restored";
            state.done.push(DoneStep {
                step: key,
                destination: to,
                stored_bytes: bytes,
                seconds,
                finished_at: Utc::now(),
                tables,
            });
            // Without its record a step would be redone by --resume: stop here (a full
            // disk), whatever comes next.
            if let Err(e) = state.save(&state_path) {
                failure = Some(e.context(format!(
                    "step {}/{total} was restored and verified, but the run cannot record it; free the space, then --resume repeats that step (give it --clean)",
                    i + 1
                )));
                break;
            }
        }
        if let Some(e) = &failure {
            state.failed = Some(
                format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            // The step's own error is what the exit code and the message must carry.
            if let Err(save) = state.save(&state_path) {
                eprintln!("warning: {save:#}");
            }
        }
        let last = state.done.iter().map(|d| d.finished_at).max();
        let summary = Summary {
            store: store.location().to_string(),
            state_file: shown_state.clone(),
            started_at: state.started_at,
            rto_seconds: last.map(|t| (t - state.started_at).num_milliseconds() as f64 / 1000.0),
            this_run_seconds: run_started.elapsed().as_secs_f64(),
            ok: failure.is_none(),
            steps: reports,
        };
        // A summary nobody reads (a closed stdout) never hides a failed run.
        let printed = summary.print(self.output);
        match failure {
            Some(e) => Err(e.context(format!(
                "fix the cause, then run the same command with --resume: the steps verified so far (in {shown_state}) are skipped"
            ))),
            None => printed,
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
