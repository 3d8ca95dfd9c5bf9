//! `kubectl dr list`: backups, newest last, with status, size and databases. Every
//! manifest is read (a bounded number at a time, each capped in size) and checked, so a
//! damaged backup is shown as damaged, never as a good one.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use drkit::catalog::{self, Inspected, Status};
use drkit::cli::{RetentionArgs, StoreArgs};
use drkit::retention::prune;
use drkit::store::ReadStore;
use serde::Serialize;

use super::FilterArgs;
use crate::output::{self, Format};

/// List backups in the store.
///
/// Shows complete and damaged backups, with a STATUS column. A damaged backup has a
/// manifest that fails its checks (unreadable, wrong format, dated far in the future, bad
/// part names…): it is never used as `latest` and never counted or deleted by prune.
/// --include-incomplete also shows incomplete backups: one still running, or one that failed (prune
/// removes those after --grace), including uploads that never finished a single object.
/// A store that does not exist is an error (exit 2), never "no backups".
///
/// SIGNATURE says who signed each manifest: `ok KEYID` (a trusted signer, from --signer /
/// DR_SIGNERS), `signed KEYID (not checked)` (no signer given), `unsigned`, `UNKNOWN KEY`
/// or `INVALID`. With signers given, a backup they do not vouch for is shown as DAMAGED
/// and treated like one: never `latest`, never counted or deleted by prune.
///
/// Examples:
///   kubectl dr list
///   kubectl dr list --engine postgres --target prod -o json
///   kubectl dr list --include-incomplete                    # include failed/running backups
///   kubectl dr list --keep-daily 7 --keep-weekly 4          # what a prune would keep
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ListCmd {
    #[command(flatten)]
    filter: FilterArgs,

    /// Also show incomplete backups (still running, or failed before their commit).
    #[arg(long = "include-incomplete", alias = "all")]
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
    /// `full` or `incremental` (complete backups only).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    /// An incremental backup's base.
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<String>,
    /// Bytes of every part a restore reads, references to older backups included
    /// (`size_bytes` counts what this backup stored itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    logical_bytes: Option<u64>,
    parts: usize,
    databases: Vec<String>,
    tables: usize,
    rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<catalog::Signature>,
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

fn describe(b: &Inspected) -> Row {
    let backup = &b.scanned.backup;
    let mut row = Row {
        id: backup.id.to_string(),
        engine: backup.engine.clone(),
        target: backup.target.clone(),
        created_at: rfc3339(backup.id.created_at()),
        finished_at: None,
        size_bytes: b.scanned.size_bytes,
        status: match b.status {
            Status::Complete => "complete",
            Status::Incomplete => "incomplete",
            Status::Damaged => "damaged",
        },
        kind: None,
        base: None,
        logical_bytes: None,
        parts: b.scanned.objects.len(),
        databases: Vec::new(),
        tables: 0,
        rows: 0,
        signature: b.signature.clone(),
        error: b.problem.clone(),
        retention: None,
    };
    if let Some(m) = &b.manifest {
        row.created_at = rfc3339(m.started_at);
        row.finished_at = Some(rfc3339(m.finished_at));
        row.parts = m.parts.len();
        row.kind = Some(m.kind());
        row.base = m.base.as_ref().map(ToString::to_string);
        row.logical_bytes = Some(m.size_bytes());
        row.databases = m.databases().into_iter().map(str::to_string).collect();
        // A table stored a part per partition counts once.
        row.tables = m
            .parts
            .iter()
            .flat_map(|p| p.tables.iter().map(|t| (&t.schema, &t.name)))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        row.rows = m.total_rows();
    }
    row
}

impl ListCmd {
    pub async fn run(self, store_args: &StoreArgs, trust: &catalog::Trust) -> anyhow::Result<()> {
        let store = store_args.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let filter = self.filter.filter()?;
        let mut scanned = catalog::scan(store, &filter).await?;
        if self.all {
            let pending = catalog::scan_pending(store, &filter, &scanned).await?;
            scanned.extend(pending);
            scanned.sort_by(|a, b| a.backup.cmp(&b.backup));
        }
        let policy = self.retention.policy();
        let inspected =
            catalog::inspect_all(store, scanned, Utc::now(), policy.max_clock_skew, trust).await?;
        let decisions: HashMap<(String, String, String), (bool, Vec<String>)> =
            if self.retention.any() {
                prune::plan_inspected(&inspected, &policy, Utc::now())
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
        let mut rows: Vec<Row> = inspected
            .iter()
            .filter(|b| self.all || b.status != Status::Incomplete)
            .map(describe)
            .collect();
        // The one ordering of backups (time to the millisecond, then the id's text).
        let id = |r: &Row| r.id.parse::<catalog::BackupId>().ok();
        rows.sort_by(|a, b| (&a.engine, &a.target, id(a)).cmp(&(&b.engine, &b.target, id(b))));
        if rows.is_empty() && store.list("").await?.is_empty() {
            // An empty store: new, or a typo in its prefix (which names an empty store,
            // not a missing one). Stores beside it that hold backups say which.
            let beside = store_args.stores_beside().await.unwrap_or_default();
            if !beside.is_empty() {
                if self.output != Format::Table {
                    output::print_structured(self.output, &rows)?;
                }
                anyhow::bail!(
                    "{} holds nothing; did you mean {}? (these hold backups)",
                    store.location(),
                    beside.join(" or ")
                );
            }
            if self.output == Format::Table {
                eprintln!(
                    "no backups yet in {}: this is how a new store looks; `worker backup …` writes the first",
                    store.location()
                );
                return Ok(());
            }
        }
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
            eprintln!("no backups in {} ({filter})", store.location());
            return Ok(());
        }
        let mut headers = vec![
            "ID",
            "ENGINE",
            "TARGET",
            "CREATED",
            "STATUS",
            "KIND",
            "SIZE",
            "DATABASES",
            "ROWS",
            "SIGNATURE",
        ];
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
                    if r.status == "damaged" {
                        "DAMAGED".into()
                    } else {
                        r.status.to_string()
                    },
                    r.kind.unwrap_or("-").to_string(),
                    output::human_bytes(r.size_bytes),
                    if r.databases.is_empty() {
                        "-".into()
                    } else {
                        r.databases
                            .iter()
                            .map(|d| output::quoted_name(d))
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    r.rows.to_string(),
                    r.signature
                        .as_ref()
                        .map_or_else(|| "-".into(), ToString::to_string),
                ];
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
        for r in rows.iter().filter(|r| r.status == "damaged") {
            eprintln!(
                "damaged: {}/{}/{}: {}",
                r.engine,
                r.target,
                r.id,
                r.error.as_deref().unwrap_or("manifest failed its checks")
            );
        }
        Ok(())
    }
}
