//! The one restore run behind `kubectl dr restore`, `restore --all` and `worker drill`:
//! build each step's sink, probe every destination, check the backups, plan every step
//! (nothing changed so far), then restore the steps in order, compare each one's counts and
//! record it, stopping at the first that fails. The front ends choose the steps, confirm
//! and print; an [`Observer`] hears each step as it runs.

use std::time::Instant;

use chrono::Utc;

use super::state::{DoneStep, StateError, StateFile};
use super::{prepare, Checked, Prepared};
use crate::catalog::Manifest;
use crate::engine::registry::RestoreFlags;
use crate::engine::{RestoreCtx, RestoredCounts, RunKind, Sink, SourceFailure, Step};
use crate::verify::{MaxDiff, VerifyError};

/// What a run restores with.
pub struct Run<'a> {
    /// The store, the keys, where progress goes.
    pub ctx: RestoreCtx<'a>,
    /// The engines' flags.
    pub flags: &'a RestoreFlags,
    /// `--clean`, for the engines that have a choice.
    pub clean: bool,
    /// The largest count difference accepted.
    pub max_diff: MaxDiff,
    /// How the steps are run.
    pub kind: RunKind,
}

/// Where a run stopped, named by its step; every variant says whether anything changed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The step's flags or destination are refused by its engine.
    #[error("{step}")]
    Sink {
        /// `step i/N key`, or the key of a single restore.
        step: String,
        /// The engine's refusal.
        #[source]
        source: SourceFailure,
    },
    /// The step's destination does not answer as its engine's server.
    #[error("checking the destination {to} of {step} before restoring anything")]
    Probe {
        /// `step i/N key`.
        step: String,
        /// The destination, redacted.
        to: String,
        /// Why.
        #[source]
        source: SourceFailure,
    },
    /// A backup failed the check before anything was touched.
    #[error("checking {backup} before restoring anything; nothing was restored")]
    Check {
        /// The backup.
        backup: String,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// The engine's plan refused the destination or a part failed its check.
    #[error("planning {step}; nothing was restored")]
    Plan {
        /// `step i/N key`.
        step: String,
        /// Why.
        #[source]
        source: SourceFailure,
    },
    /// The restore of a step failed.
    #[error("{step} failed after {seconds:.1}s{}", if *.first { "" } else { "; the steps before it stay restored and verified" })]
    Restore {
        /// `step i/N key`.
        step: String,
        /// How long it ran.
        seconds: f64,
        /// True for the run's first step to change anything.
        first: bool,
        /// Why.
        #[source]
        source: SourceFailure,
    },
    /// The step restored, but its counts differ beyond `--max-diff` (exit 1).
    #[error(
        "{step}: restored counts differ from the backup beyond --max-diff {max_diff} (table above)"
    )]
    CountsDiffer {
        /// `step i/N key`.
        step: String,
        /// The limit.
        max_diff: MaxDiff,
    },
    /// The step was restored and verified, but its record could not be written.
    #[error("{step} was restored and verified, but the run cannot record it; free the space, then --resume repeats that step (give it --clean)")]
    Record {
        /// `step i/N`.
        step: String,
        /// Why.
        #[source]
        source: StateError,
    },
}

impl RunError {
    /// The exit code this error means: 1 when a check failed (counts that differ, a damaged
    /// part), else 2.
    pub fn is_check_failure(&self) -> bool {
        match self {
            RunError::CountsDiffer { .. } => true,
            RunError::Check { source, .. } => source.is_check_failure(),
            RunError::Sink { .. } | RunError::Record { .. } => false,
            RunError::Probe { source, .. }
            | RunError::Plan { source, .. }
            | RunError::Restore { source, .. } => crate::verify::is_check_failure(source.as_ref()),
        }
    }
}

/// Hears a run's steps as they run (the front end prints them).
pub trait Observer: Send {
    /// Step `index` (0-based) starts its restore.
    fn started(&mut self, _index: usize, _step: &Step<'_>) {}
    /// Step `index` restored; `counts` are compared (`ok` when all within the limit).
    fn restored(
        &mut self,
        _index: usize,
        _step: &Step<'_>,
        _seconds: f64,
        _counts: &RestoredCounts,
        _ok: bool,
    ) {
    }
    /// Step `index` failed after `seconds`.
    fn failed(&mut self, _index: usize, _step: &Step<'_>, _seconds: f64) {}
}

/// `step i/N key`, or the key alone in a run of one step.
fn label(index: usize, total: usize, step: &Step<'_>) -> String {
    if total == 1 {
        step.key()
    } else {
        format!("step {}/{total} {}", index + 1, step.key())
    }
}

impl<'a> Run<'a> {
    /// The engine's sink for `step`. A single restore refuses another engine's flags; a
    /// run over many engines gives each its own.
    fn sink(&self, step: &Step<'_>) -> Result<Box<dyn Sink>, SourceFailure> {
        let common = step.common(self.clean, self.max_diff, self.kind);
        match self.kind {
            RunKind::Single => self.flags.sink(&step.manifest.engine, &common),
            RunKind::Rebuild | RunKind::Drill => self.flags.build(&step.manifest.engine, &common),
        }
    }

    /// Everything before a change, for `steps` (their index in a run of `total`): builds
    /// and probes every step's destination, checks every part of every backup first when
    /// `whole_first` (a run of several: a damaged part found late must stop the run before
    /// an earlier step changed anything), and plans every step.
    ///
    /// # Errors
    /// [`RunError`] of the first step refused; nothing changed.
    pub async fn prepare<'m>(
        &self,
        steps: Vec<(usize, Step<'m>)>,
        total: usize,
        whole_first: bool,
    ) -> Result<Vec<(usize, Prepared<'m>)>, RunError> {
        let mut sinks = Vec::new();
        for (i, s) in &steps {
            let mut sink = self.sink(s).map_err(|source| RunError::Sink {
                step: label(*i, total, s),
                source,
            })?;
            sink.probe(s.manifest)
                .await
                .map_err(|source| RunError::Probe {
                    step: label(*i, total, s),
                    to: s.shown_to(),
                    source,
                })?;
            sinks.push(sink);
        }
        let mut checked = Checked::default();
        if whole_first {
            let mut seen: Vec<&Manifest> = Vec::new();
            for (_, s) in &steps {
                if seen.iter().any(|m| std::ptr::eq(*m, s.manifest)) {
                    continue;
                }
                seen.push(s.manifest);
                checked
                    .whole_backup(
                        self.ctx.store,
                        s.manifest,
                        self.ctx.identities,
                        self.ctx.progress,
                        self.ctx.say,
                    )
                    .await
                    .map_err(|source| RunError::Check {
                        backup: s.manifest.backup_ref().to_string(),
                        source,
                    })?;
            }
        }
        let mut prepared = Vec::new();
        for ((i, s), sink) in steps.into_iter().zip(sinks) {
            let step = label(i, total, &s);
            let p = prepare(s, sink, &mut checked, self.ctx)
                .await
                .map_err(|source| RunError::Plan { step, source })?;
            prepared.push((i, p));
        }
        Ok(prepared)
    }

    /// Restores the prepared steps in order; each one's counts are compared and, with a
    /// state, recorded before the next starts. Stops at the first step that fails or whose
    /// counts differ; with a state, its error's first line is recorded for `--resume`.
    ///
    /// # Errors
    /// [`RunError`] of the step that stopped the run.
    pub async fn execute(
        &self,
        prepared: Vec<(usize, Prepared<'_>)>,
        total: usize,
        mut state: Option<&mut StateFile>,
        observer: &mut dyn Observer,
    ) -> Result<(), RunError> {
        for (n, (index, p)) in prepared.into_iter().enumerate() {
            let step = Position {
                index,
                total,
                first: n == 0,
            };
            let done = self
                .execute_step(step, p, state.as_deref_mut(), observer)
                .await;
            if let (Err(e), Some(state)) = (&done, state.as_deref_mut()) {
                state.state.failed = Some(
                    error_chain(e)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
                // The step's own error is what the exit code and the message must carry.
                if let Err(save) = state.save() {
                    tracing::warn!(error = %save, "the state file could not record the failure");
                }
            }
            done?;
        }
        Ok(())
    }

    /// Restores one prepared step, compares its counts and records it.
    async fn execute_step(
        &self,
        at: Position,
        p: Prepared<'_>,
        state: Option<&mut StateFile>,
        observer: &mut dyn Observer,
    ) -> Result<(), RunError> {
        let (i, total) = (at.index, at.total);
        let step = p.step.clone();
        observer.started(i, &step);
        let started = Instant::now();
        let outcome = p.run(self.ctx).await;
        let seconds = started.elapsed().as_secs_f64();
        let counts = match outcome {
            Ok(c) => c,
            Err(source) => {
                observer.failed(i, &step, seconds);
                return Err(RunError::Restore {
                    step: label(i, total, &step),
                    seconds,
                    first: at.first,
                    source,
                });
            }
        };
        let ok = counts.rows.iter().all(|r| r.ok);
        observer.restored(i, &step, seconds, &counts, ok);
        if !ok {
            return Err(RunError::CountsDiffer {
                step: label(i, total, &step),
                max_diff: self.max_diff,
            });
        }
        if let Some(state) = state {
            state.state.done.push(DoneStep {
                step: step.key(),
                destination: step.shown_to(),
                stored_bytes: step.stored_bytes(),
                seconds,
                finished_at: Utc::now(),
                tables: counts.rows.len(),
            });
            // Without its record a step would be redone by --resume: stop here (a full
            // disk), whatever comes next.
            state.save().map_err(|source| RunError::Record {
                step: format!("step {}/{total}", i + 1),
                source,
            })?;
        }
        Ok(())
    }
}

/// Where a step stands in its run.
#[derive(Clone, Copy)]
struct Position {
    /// Its index among all the run's steps (0-based).
    index: usize,
    /// How many steps the run has.
    total: usize,
    /// The first step this run executes: nothing was changed before it.
    first: bool,
}

/// An error and its causes on one line, as `{:#}` prints an `anyhow::Error`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
