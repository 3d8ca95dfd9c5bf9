//! `kubectl dr restore … --to http://clickhouse:8123`: the ClickHouse [`Sink`] and its flags.

use async_trait::async_trait;

use super::restore::{self, Replicated, RestoreOptions};
use super::{ChClient, ChTarget};
use crate::catalog::PartFormat;
use crate::catalog::{Manifest, Part, TableCount};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, Sink, SourceFailure,
    VerifiedParts,
};
use crate::verify;

/// ClickHouse flags of `kubectl dr restore`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "ClickHouse")]
#[group(id = "clickhouse_restore")]
pub struct RestoreArgs {
    /// Restore only tables matching DB.TABLE (globs: * and ?); repeatable.
    #[arg(hide_short_help = true, long = "table", value_name = "PATTERN")]
    pub tables: Vec<String>,

    /// Restore database OLD as NEW; repeatable.
    #[arg(hide_short_help = true, long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub database_map: Vec<(String, String)>,

    /// What to do with Replicated*MergeTree tables: keep them (the target has Keeper and the
    /// same macros) or convert them to their single-node engine.
    #[arg(hide_short_help = true, long, value_enum, value_name = "POLICY")]
    pub replicated: Option<ReplicatedArg>,

    /// Only partitions whose newest time is at or after WHEN (an RFC 3339 time, or an age
    /// such as 7d): the newest days come back first. Every table is still created; data
    /// without a time in its partition key comes back with this run.
    #[arg(hide_short_help = true, long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,

    /// Only partitions whose newest time is before WHEN, into the tables an earlier
    /// --since run created: partitions already on the server are skipped, never loaded
    /// twice.
    #[arg(hide_short_help = true, long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// `--since`/`--until`: an RFC 3339 time, or an age before now (`7d`, `36h`).
fn parse_when(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let age = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?}: expected an RFC 3339 time (2026-12-01T00:00:00Z) or an age such as 7d")
    })?;
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("{s:?} reaches before any date"))
}

/// `--replicated`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReplicatedArg {
    /// Same engine, paths and macros.
    Keep,
    /// The single-node engine of the same family.
    Convert,
}

fn parse_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!("{s:?}: expected OLD=NEW")),
    }
}

impl RestoreArgs {
    /// The first ClickHouse-only flag given, for refusing it on another engine's backup.
    pub fn given(&self) -> Option<&'static str> {
        if !self.tables.is_empty() {
            Some("--table")
        } else if !self.database_map.is_empty() {
            Some("--database-map")
        } else if self.replicated.is_some() {
            Some("--replicated")
        } else if self.since.is_some() {
            Some("--since")
        } else if self.until.is_some() {
            Some("--until")
        } else {
            None
        }
    }

    /// # Errors
    /// A malformed `--to`, an unreadable password file.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(format!(
                    "--since {since} is not before --until {until}: no partition is in that window"
                )
                .into());
            }
        }
        let target = ChTarget::from_url(&common.to)?;
        let mut tables = self.tables.clone();
        if let Some(db) = &common.database {
            tables.push(format!("{db}.*"));
        }
        Ok(Box::new(ChSink {
            client: ChClient::new(&target)?,
            target,
            common: common.clone(),
            opts: RestoreOptions {
                tables,
                database_map: self.database_map.iter().cloned().collect(),
                replicated: match self.replicated {
                    None => Replicated::Ask,
                    Some(ReplicatedArg::Keep) => Replicated::Keep,
                    Some(ReplicatedArg::Convert) => Replicated::Convert,
                },
                clean: common.clean,
                window: restore::Window {
                    since: self.since,
                    until: self.until,
                },
            },
        }))
    }
}

/// A ClickHouse server to restore databases and tables into, over HTTP.
pub struct ChSink {
    client: ChClient,
    target: ChTarget,
    common: RestoreCommon,
    opts: RestoreOptions,
}

/// A ClickHouse restore as planned: which databases and tables, in which order.
struct ChPlanned {
    client: ChClient,
    target: ChTarget,
    common: RestoreCommon,
    opts: RestoreOptions,
    plan: restore::Plan,
}

#[async_trait]
impl Sink for ChSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        self.client.probe().await?;
        Ok(())
    }

    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let backup = super::table_counts(manifest);
        // A view's inner table may have another name on this server (`.inner_id.<uuid>`
        // after a restore into an Atomic database): find it through its view.
        let facts: super::schema::Facts = manifest.facts.read()?;
        let inner = &facts.inner_tables;
        let mut live = Vec::new();
        for t in &backup {
            let name = match inner.get(&format!("{}.{}", t.schema, t.name)) {
                Some(view) => match restore::inner_table(&self.client, &t.schema, view).await {
                    Ok(n) => n,
                    Err(_) => continue,
                },
                None => t.name.clone(),
            };
            match restore::count(&self.client, &t.schema, &name).await {
                Ok(rows) => live.push(TableCount { rows, ..t.clone() }),
                // A missing table shows as MISSING in the comparison.
                Err(super::ChError::Query { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut rows = verify::compare_counts(&backup, &live, self.common.max_diff);
        verify::allow_ttl_expiry(&mut rows, &facts.ttl_tables);
        Ok(vec![RestoredCounts {
            heading: heading(manifest, &self.opts.database_map),
            against: self.target.to_string(),
            rows,
        }])
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        let schema = manifest
            .part_of(&PartFormat::ClickhouseSchema)
            .ok_or_else(|| format!("backup {} has no schema part", manifest.backup_ref()))?;
        Ok(vec![schema])
    }

    async fn plan<'m>(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let manifest = first.manifest();
        let schema =
            restore::read_schema(ctx.store, first.lead(), ctx.identities, ctx.progress).await?;
        let plan = restore::plan(&self.client, manifest, &schema, &self.opts).await?;
        // Every part this restore loads is checked before the server is touched.
        let more_parts: Vec<&Part> = plan
            .steps
            .iter()
            .flat_map(|s| s.part.iter().chain(s.inner_part.iter().map(|i| &i.part)))
            .flat_map(|table| {
                manifest
                    .parts
                    .iter()
                    .filter(|p| super::holds_table(p, table))
            })
            .filter(|p| self.opts.window.admits(p))
            .collect();
        let mut lines = vec![format!("plan for {}:", self.target)];
        lines.extend(plan.describe().into_iter().map(|l| format!("  {l}")));
        let window = self.opts.window;
        if window.is_set() {
            let (loaded, all) = (
                more_parts.iter().filter(|p| p.partition.is_some()).count(),
                manifest
                    .parts
                    .iter()
                    .filter(|p| p.partition.is_some())
                    .count(),
            );
            let bound = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or("-".to_string(), |t| t.to_rfc3339())
            };
            lines.push(format!(
                "  window: partitions with times from {} until {}: {loaded} of {all}; {}",
                bound(window.since),
                bound(window.until),
                match window.until {
                    None => "data without a time comes back now",
                    Some(_) => "partitions already on the server are skipped",
                }
            ));
        }
        if plan.rolls_back() {
            lines.push(format!(
                "  note: every database is new to the server ({}): a failure drops them again, so the data parts are read once, checked as they stream",
                plan.created.join(", ")
            ));
        }
        let confirm = plan.is_destructive().then(|| Confirm {
            what: "this restore drops existing tables".into(),
            prompt: "This drops and recreates the tables marked above.".into(),
            word: "drop".into(),
        });
        let ChSink {
            client,
            target,
            common,
            opts,
        } = *self;
        Ok(RestorePlan {
            lines,
            confirm,
            more_parts,
            restore: Box::new(ChPlanned {
                client,
                target,
                common,
                opts,
                plan,
            }),
        })
    }
}

#[async_trait]
impl Planned for ChPlanned {
    fn rolls_back(&self, part: &Part) -> bool {
        // When every database is one the restore creates, a failure drops them again. The
        // schema part is read before the plan.
        part.format != PartFormat::ClickhouseSchema && self.plan.rolls_back()
    }

    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let manifest = parts.manifest();
        let loaded = restore::run(&self.client, &self.plan, parts.all(), &self.opts, ctx).await?;
        let counts = loaded.live;
        ctx.say(&format!(
            "restored {} into {}",
            manifest.backup_ref(),
            self.target
        ));
        let restored: Vec<TableCount> = match self.opts.window.is_set() {
            true => loaded.expected,
            false => super::table_counts(manifest)
                .into_iter()
                .filter(|t| {
                    counts
                        .iter()
                        .any(|c| c.schema == t.schema && c.name == t.name)
                })
                .collect(),
        };
        let mut rows = verify::compare_counts(&restored, &counts, self.common.max_diff);
        let facts: super::schema::Facts = manifest.facts.read()?;
        verify::allow_ttl_expiry(&mut rows, &facts.ttl_tables);
        Ok(RestoredCounts {
            heading: heading(manifest, &self.opts.database_map),
            against: self.target.to_string(),
            rows,
        })
    }
}

/// `clickhouse/T/ID`, plus the databases' new names after a `--database-map`.
fn heading(manifest: &Manifest, map: &std::collections::BTreeMap<String, String>) -> String {
    let renames: Vec<String> = map
        .iter()
        .map(|(from, to)| format!("{from} → {to}"))
        .collect();
    if renames.is_empty() {
        manifest.backup_ref().to_string()
    } else {
        format!("{} db {}", manifest.backup_ref(), renames.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_is_a_time_or_an_age() {
        assert_eq!(
            parse_when("2026-12-01T00:00:00Z").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        let week = chrono::Utc::now() - parse_when("7d").unwrap();
        assert!((week.num_seconds() - 7 * 86400).abs() < 60, "{week}");
        assert!(parse_when("last tuesday").is_err());
    }
}
