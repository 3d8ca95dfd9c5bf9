//! `kubectl dr list`: complete backups, newest last, with size and databases. Manifests are
//! read concurrently; an unreadable one is shown as damaged rather than hiding the backup.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use drkit::catalog::{self, ScannedBackup};
use drkit::cli::{RetentionArgs, StoreArgs};
use drkit::retention::prune;
use drkit::store::ReadStore;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::FilterArgs;
use crate::output::{self, Format};

/// Manifests read at once.
const CONCURRENT_READS: usize = 16;

/// List backups in the store.
///
/// Shows complete backups (those with a manifest). --all also shows incomplete ones: a
/// backup still running, or one that failed (prune removes those after a grace period).
#[derive(Debug, Args)]
pub struct ListCmd {
    #[command(flatten)]
    filter: FilterArgs,

    /// Also show incomplete backups.
    #[arg(long)]
    all: bool,

    /// Keep rules (as for prune): adds each backup's keep/delete decision and its reasons.
    #[command(flatten)]
    retention: RetentionArgs,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Row {
    id: String,
    engine: String,
    target: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    size_bytes: u64,
    status: &'static str,
    parts: usize,
    databases: Vec<String>,
    tables: usize,
    rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Decision>,
}

#[derive(Debug, Serialize)]
struct Decision {
    keep: bool,
    reasons: Vec<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn describe(store: &dyn ReadStore, scanned: ScannedBackup) -> Row {
    let b = &scanned.backup;
    let mut row = Row {
        id: b.id.to_string(),
        engine: b.engine.clone(),
        target: b.target.clone(),
        created_at: rfc3339(b.id.created_at()),
        finished_at: None,
        size_bytes: scanned.size_bytes,
        status: "incomplete",
        parts: scanned.objects.len(),
        databases: Vec::new(),
        tables: 0,
        rows: 0,
        error: None,
        retention: None,
    };
    if !scanned.complete {
        return row;
    }
    match catalog::load_manifest(store, b).await {
        Ok(m) => {
            row.status = "complete";
            row.created_at = rfc3339(m.started_at);
            row.finished_at = Some(rfc3339(m.finished_at));
            row.parts = m.parts.len();
            row.databases = m.databases().into_iter().map(str::to_string).collect();
            row.tables = m.parts.iter().map(|p| p.tables.len()).sum();
            row.rows = m.parts.iter().flat_map(|p| &p.tables).map(|t| t.rows).sum();
        }
        Err(e) => {
            row.status = "damaged";
            row.error = Some(e.to_string());
        }
    }
    row
}

impl ListCmd {
    pub async fn run(self, store: &StoreArgs) -> anyhow::Result<()> {
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let scanned = catalog::scan(store, &self.filter.filter()?).await?;
        let decisions: HashMap<(String, String, String), (bool, Vec<String>)> =
            if self.retention.any() {
                prune::plan_scanned(scanned.clone(), &self.retention.policy(), Utc::now())
                    .into_iter()
                    .map(|i| {
                        (
                            (i.engine, i.target, i.decision.id.to_string()),
                            (i.decision.keep, i.decision.reasons),
                        )
                    })
                    .collect()
            } else {
                HashMap::new()
            };
        let wanted: Vec<ScannedBackup> = scanned
            .into_iter()
            .filter(|b| self.all || b.complete)
            .collect();
        let mut rows: Vec<Row> = stream::iter(wanted)
            .map(|b| describe(store, b))
            .buffered(CONCURRENT_READS)
            .collect()
            .await;
        rows.sort_by(|a, b| (&a.engine, &a.target, &a.id).cmp(&(&b.engine, &b.target, &b.id)));
        for row in &mut rows {
            if let Some((keep, reasons)) =
                decisions.get(&(row.engine.clone(), row.target.clone(), row.id.clone()))
            {
                row.retention = Some(Decision {
                    keep: *keep,
                    reasons: reasons.clone(),
                });
            }
        }
        if self.output != Format::Table {
            return output::print_structured(self.output, &rows);
        }
        if rows.is_empty() {
            eprintln!(
                "no backups in {} ({})",
                store.location(),
                self.filter.filter()?
            );
            return Ok(());
        }
        let mut headers = vec![
            "ID",
            "ENGINE",
            "TARGET",
            "CREATED",
            "SIZE",
            "DATABASES",
            "ROWS",
        ];
        if self.all {
            headers.push("STATUS");
        }
        if self.retention.any() {
            headers.extend(["RETENTION", "REASONS"]);
        }
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut cells = vec![
                    r.id.clone(),
                    r.engine.clone(),
                    r.target.clone(),
                    r.created_at.clone(),
                    output::human_bytes(r.size_bytes),
                    if r.databases.is_empty() {
                        "-".into()
                    } else {
                        r.databases.join(",")
                    },
                    r.rows.to_string(),
                ];
                if self.all {
                    cells.push(r.status.to_string());
                }
                if let Some(d) = &r.retention {
                    cells.push(if d.keep {
                        "keep".into()
                    } else {
                        "DELETE".into()
                    });
                    cells.push(d.reasons.join("; "));
                }
                cells
            })
            .collect();
        output::print_table(&headers, &table)?;
        Ok(())
    }
}
