//! `kubectl dr prune`: the same retention as the nightly `worker prune`, by hand: shows
//! every backup with keep/delete and the reasons, and asks before deleting.

use clap::Args;
use drkit::cli::{PruneLimitArgs, RetentionArgs, StoreArgs};
use drkit::retention::prune::{self, PlanItem};
use serde::Serialize;

use super::FilterArgs;
use crate::output::{self, Format};

/// Delete backups a retention policy no longer keeps.
///
/// Rules apply per engine and target. Periods count back from the newest complete backup
/// (not from now), and the newest complete backup is always kept. Every manifest is read
/// and checked first: a damaged backup counts for nothing and is never deleted. Incomplete
/// backups are kept while younger than --grace (they may still be running), deleted after.
/// A plan that would delete a target's last complete backup, or more than --max-delete of
/// them, is refused (exit 2) before anything is deleted, in a dry run too. The manifest of
/// each backup is deleted first, so a backup vanishes at once; its parts follow.
///
/// Examples:
///   kubectl dr prune --target prod --keep-daily 7 --keep-weekly 4 --dry-run
///   kubectl dr prune --keep-within 14d --keep-monthly 12 --yes
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct PruneCmd {
    #[command(flatten)]
    filter: FilterArgs,

    #[command(flatten)]
    retention: RetentionArgs,

    #[command(flatten)]
    limits: PruneLimitArgs,

    /// Show the decisions, delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Do not ask before deleting.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    dry_run: bool,
    backups: &'a [PlanItem],
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<prune::PruneOutcome>,
}

impl PruneCmd {
    pub async fn run(self, store: &StoreArgs, trust: &drkit::catalog::Trust) -> anyhow::Result<()> {
        let policy = self.retention.policy();
        policy.validate()?;
        let filter = self.filter.filter()?;
        let store = store.open().await?;
        let now = chrono::Utc::now();
        let items = prune::plan(store.as_ref(), &filter, &policy, now, trust).await?;
        let doomed = items.iter().filter(|i| !i.decision.keep).count();
        let cutoff = now - policy.incomplete_grace;
        // Listed (never aborted) here: aborting waits for the confirmation below.
        let mut outcome = prune::PruneOutcome::default();
        let stale =
            prune::abort_stale_uploads(store.as_ref(), &filter, cutoff, true, &mut outcome).await?;
        if self.output == Format::Table {
            print_plan(&items)?;
            eprintln!(
                "{} backup(s), {doomed} to delete, {} unfinished upload(s) past --grace",
                items.len(),
                stale.len()
            );
            if let Some(note) = &outcome.uploads_note {
                eprintln!("note: {note}");
            }
        }
        prune::check_plan(&items, self.limits.max_delete)?;
        if self.dry_run || doomed + stale.len() == 0 {
            if self.output != Format::Table {
                output::print_structured(
                    self.output,
                    &Report {
                        dry_run: self.dry_run,
                        backups: &items,
                        outcome: None,
                    },
                )?;
            } else if self.dry_run {
                eprintln!("dry run: nothing deleted");
            }
            return Ok(());
        }
        if !self.yes {
            let n = doomed + stale.len();
            super::confirm(
                &format!(
                    "this prune deletes {n} backup(s) or unfinished upload(s) (see --dry-run)"
                ),
                &format!("Delete {n} backup(s) or unfinished upload(s)?"),
                "delete",
            )?;
        }
        let mut outcome = prune::PruneOutcome::default();
        prune::execute(store.as_ref(), &items, &mut outcome).await.map_err(|e| {
            anyhow::Error::new(e).context("pruning stopped part-way; rerun it to finish (a half-deleted backup has no manifest and is removed next time)")
        })?;
        prune::abort_stale_uploads(store.as_ref(), &filter, cutoff, false, &mut outcome).await?;
        match self.output {
            Format::Table => eprintln!(
                "deleted {} backup(s), {} object(s), {}; aborted {} unfinished upload(s)",
                outcome.deleted_backups,
                outcome.deleted_objects,
                output::human_bytes(outcome.freed_bytes),
                outcome.aborted_uploads
            ),
            f => output::print_structured(
                f,
                &Report {
                    dry_run: false,
                    backups: &items,
                    outcome: Some(outcome),
                },
            )?,
        }
        Ok(())
    }
}

fn decision_cells(item: &PlanItem) -> [String; 2] {
    [
        if item.held.is_some() {
            "held".into()
        } else if item.decision.keep {
            "keep".into()
        } else {
            "DELETE".into()
        },
        item.decision.reasons.join("; "),
    ]
}

fn print_plan(items: &[PlanItem]) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let [action, reasons] = decision_cells(i);
            vec![
                i.decision.id.to_string(),
                i.engine.clone(),
                i.target.clone(),
                i.status.to_string(),
                output::human_bytes(i.size_bytes),
                action,
                reasons,
            ]
        })
        .collect();
    output::print_table(
        &[
            "ID", "ENGINE", "TARGET", "STATUS", "SIZE", "ACTION", "REASONS",
        ],
        &rows,
    )
}
