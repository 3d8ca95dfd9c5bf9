//! Restoring a ClickHouse backup: the schema part decides what is created and in which
//! order ([`super::ddl`]); each table's part is streamed into `INSERT … FORMAT Native` (or
//! `TabSeparated`, as it was dumped), its last chunk held back until the part matched the
//! manifest.
//!
//! Safety rules: the caller checks every selected part's integrity first; the schema part
//! is decrypted before the server is touched (a wrong key fails there); tables that exist
//! and hold rows are refused unless `--clean`; Replicated engines need an explicit policy.
//!
//! Across server versions:
//! - a database backed up as `Ordinary` is created with the server's default engine
//!   (Atomic since 20.10; 24+ refuse new Ordinary databases), and the plan says so;
//! - a materialized view's inner table is looked up after the view is created
//!   (`.inner_id.<uuid>` on Atomic, `.inner.<view>` on Ordinary) and refilled with the
//!   backed-up rows: never by replaying the view;
//! - DDL a newer server refuses with a named `allow_…` setting (deprecated MergeTree
//!   syntax, suspicious types, dimension checks) is retried once with that setting, and the
//!   output says so.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ddl::{self, Phase};
use super::dump::{glob, list_tables, ListedTable};
use super::schema::{DataFormat, Schema, TableDdl};
use super::{quote_ident, quote_str, ChClient, ChError};
use crate::catalog::PartFormat;
use crate::catalog::{Manifest, TableCount};
use crate::pipeline::keys::Identities;
use crate::progress::Progress;
use crate::store::ReadStore;
use crate::verify::{open_plaintext, verified_body, Verified, VerifyError};

/// What to do with `Replicated*MergeTree` tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicated {
    /// Not chosen: refuse when the backup has replicated tables.
    #[default]
    Ask,
    /// Keep the engine, paths and macros (the target has Keeper and the same macros).
    Keep,
    /// Create the single-node engine instead (`ReplicatedMergeTree(…)` → `MergeTree`).
    Convert,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `db.table` globs of the tables to restore; empty means all.
    pub tables: Vec<String>,
    /// Restore database `old` as `new`.
    pub database_map: BTreeMap<String, String>,
    /// What to do with Replicated tables (`--replicated`).
    pub replicated: Replicated,
    /// Drop and recreate tables that exist.
    pub clean: bool,
    /// Only the partitions of a time window (`--since`, `--until`).
    pub window: Window,
}

/// A time window over partitions: `--since` restores the newest days first, `--until` the
/// rest later into the same tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Partitions whose newest time is at or after this.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Partitions whose newest time is before this.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Window {
    /// True when a window was given.
    pub fn is_set(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// Whether `part` belongs to this window. Data without a time (tables without a date
    /// in their partition key, Log tables) comes back with the first run (no `--until`),
    /// never with an `--until` run, so two runs load it once.
    pub fn admits(&self, part: &crate::catalog::Part) -> bool {
        match part.partition.as_ref().and_then(|p| p.max_time) {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u),
            None => self.until.is_none(),
        }
    }
}

/// What a restore loaded, to compare: the backup's counts and the server's, per table, or
/// per partition in a windowed restore (where a table also holds other windows' rows).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rows the backup recorded for what was loaded.
    pub expected: Vec<TableCount>,
    /// Rows the server has for it now.
    pub live: Vec<TableCount>,
}

/// Errors of a ClickHouse restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Talking to the server failed.
    #[error(transparent)]
    Ch(#[from] ChError),
    // Not transparent: the VerifyError must stay in the error chain, where the exit code
    // (1 for a backup that fails a check, even mid-restore) looks for it.
    /// A part failed its check while it streamed (exit 1).
    #[error("reading the backup")]
    Verify(#[from] VerifyError),
    /// The schema part does not parse.
    #[error("the backup's schema part is unreadable: {0}")]
    BadSchema(String),
    /// `--table` patterns that match nothing in the backup.
    #[error("no table of backup {backup} matches {patterns:?}; it has: {available}")]
    NoMatch {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The patterns given.
        patterns: Vec<String>,
        /// What the backup holds.
        available: String,
    },
    /// Replicated tables and no `--replicated` choice.
    #[error("{tables} use Replicated engines; choose --replicated convert (single-node MergeTree engines) or --replicated keep (same Keeper paths and macros on the target)")]
    ReplicatedPolicy {
        /// The tables concerned.
        tables: String,
    },
    /// Tables that would receive rows already hold some (no `--clean`).
    #[error("these tables already hold rows on {addr}: {tables}; restore under another name (--database-map old=new) or pass --clean to drop and recreate them")]
    NotEmpty {
        /// The server's address.
        addr: String,
        /// The tables concerned.
        tables: String,
    },
    /// Loading one table failed.
    #[error(
        "loading {table} failed; tables loaded before it stay (rerun with --clean to start over)"
    )]
    Load {
        /// The table (`db.table`).
        table: String,
        /// The underlying error.
        #[source]
        source: Box<RestoreError>,
    },
}

/// One object to create (and maybe load).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// When in the restore it happens.
    pub phase: Phase,
    /// Target database and name.
    pub database: String,
    /// The table's name.
    pub name: String,
    /// The table's engine.
    pub engine: String,
    /// The DDL to run, after renaming and policies.
    pub create: String,
    /// Drop the existing table first (--clean).
    pub drop_first: bool,
    /// Keep the existing (empty) object and only load into it.
    pub exists: bool,
    /// Data to load: the part name and the columns it holds.
    pub part: Option<String>,
    /// Columns of the data part, in order (the INSERT's column list).
    pub columns: Vec<String>,
    /// For a materialized view: its inner table's part (loaded after the view exists).
    pub inner_part: Option<InnerPart>,
    /// The table has a TTL: rows past it may be gone after the load.
    pub ttl: bool,
}

/// The data of a materialized view's inner table.
#[derive(Debug, Clone, Serialize)]
pub struct InnerPart {
    /// The inner table's name in the backup (its counts are recorded under it).
    pub backed_up_as: String,
    /// The data part's name.
    pub part: String,
    /// Its columns, in order.
    pub columns: Vec<String>,
}

/// The inner table of view `view` in `db` among listed tables: `.inner_id.<uuid>` on
/// Atomic databases, `.inner.<view>` on Ordinary ones.
fn inner_table_in(tables: &[ListedTable], db: &str, view: &str) -> Option<String> {
    let uuid = tables
        .iter()
        .find(|t| t.database == db && t.name == view)
        .and_then(|t| t.uuid.clone());
    let by_uuid = uuid.map(|u| format!(".inner_id.{u}"));
    let by_name = format!(".inner.{view}");
    tables
        .iter()
        .filter(|t| t.database == db)
        .find(|t| Some(&t.name) == by_uuid.as_ref() || t.name == by_name)
        .map(|t| t.name.clone())
}

/// Finds the inner table of `view` on the server, after the view was created.
///
/// # Errors
/// Query errors; a view without an inner table (a `TO` view) is an error here.
pub async fn inner_table(client: &ChClient, db: &str, view: &str) -> Result<String, RestoreError> {
    let tables = list_tables(client, &format!("database = {}", quote_str(db)), false).await?;
    inner_table_in(&tables, db, view).ok_or_else(|| {
        RestoreError::BadSchema(format!(
            "materialized view {db}.{view} has no inner table on the target to load its rows into"
        ))
    })
}

/// The whole restore, decided before anything changes.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The databases restored into, with the statement that creates each if missing.
    pub databases: Vec<(String, String)>,
    /// Those of them that do not exist yet: the restore creates them.
    pub created: Vec<String>,
    /// What is created and loaded, in order.
    pub steps: Vec<Step>,
    /// What the restore changes on the way (e.g. an Ordinary database created as Atomic).
    pub notes: Vec<String>,
}

impl Plan {
    /// The plan as lines for people, one per step.
    pub fn describe(&self) -> Vec<String> {
        self.notes
            .iter()
            .map(|n| format!("note: {n}"))
            .chain(self.steps.iter().map(|s| {
                let action = match (s.drop_first, s.exists) {
                    (true, _) => "drop and create",
                    (false, true) => "keep",
                    (false, false) => "create",
                };
                let load = if s.part.is_some() || s.inner_part.is_some() {
                    " and load"
                } else {
                    ""
                };
                format!("{action}{load} {}.{} ({})", s.database, s.name, s.engine)
            }))
            .collect()
    }

    /// True when every database the restore touches is one it creates: a failure then
    /// drops them again and leaves the server as it was, so data parts can be checked as
    /// they stream (one pass).
    pub fn rolls_back(&self) -> bool {
        !self.databases.is_empty() && self.created.len() == self.databases.len()
    }

    /// Whether the plan drops something (`--clean` over existing tables).
    pub fn is_destructive(&self) -> bool {
        self.steps.iter().any(|s| s.drop_first)
    }
}

/// Decrypts and parses the schema part (small: held in memory).
///
/// # Errors
/// Wrong key, damaged part, unparsable JSON.
pub async fn read_schema(
    store: &dyn ReadStore,
    schema: Verified<'_>,
    identities: &Identities,
    progress: &dyn Progress,
) -> Result<Schema, RestoreError> {
    let (manifest, part) = (schema.manifest(), schema.part());
    if part.format != PartFormat::ClickhouseSchema {
        return Err(RestoreError::BadSchema(format!(
            "part {} is not the schema part",
            part.name
        )));
    }
    let (mut plain, bar) = open_plaintext(store, schema, identities, progress).await?;
    let (backup, name) = (manifest.backup_ref().to_string(), part.name.clone());
    let part_owned = part.clone();
    let text = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let undecodable = |source| VerifyError::Undecodable {
            backup: backup.clone(),
            part: name.clone(),
            cause: source,
        };
        loop {
            let n = plain.read_chunk(&mut buf).map_err(undecodable)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        crate::verify::finish_checked(plain, &backup, &part_owned)?;
        Ok(out)
    })
    .await
    .expect("schema thread panicked")?;
    bar.finish();
    serde_json::from_slice(&text).map_err(|e| RestoreError::BadSchema(e.to_string()))
}

/// Decides what to create, in which order, and checks the target.
///
/// # Errors
/// No matching table, a Replicated table without a policy, existing tables with rows.
pub async fn plan(
    client: &ChClient,
    manifest: &Manifest,
    schema: &Schema,
    opts: &RestoreOptions,
) -> Result<Plan, RestoreError> {
    let selected: Vec<&TableDdl> = schema
        .tables
        .iter()
        .filter(|t| {
            let key = format!("{}.{}", t.database, t.name);
            // An MV's inner table follows its view.
            let owner =
                ddl::owner_of(t, &schema.tables).map(|mv| format!("{}.{}", t.database, mv.name));
            opts.tables.is_empty()
                || opts
                    .tables
                    .iter()
                    .any(|p| glob(p, &key) || owner.as_ref().is_some_and(|o| glob(p, o)))
        })
        .collect();
    if selected.is_empty() {
        return Err(RestoreError::NoMatch {
            backup: manifest.backup_ref().to_string(),
            patterns: opts.tables.clone(),
            available: schema
                .tables
                .iter()
                .map(|t| format!("{}.{}", t.database, t.name))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let replicated: Vec<String> = selected
        .iter()
        .filter(|t| t.engine.starts_with("Replicated"))
        .map(|t| format!("{}.{}", t.database, t.name))
        .collect();
    if !replicated.is_empty() && opts.replicated == Replicated::Ask {
        return Err(RestoreError::ReplicatedPolicy {
            tables: replicated.join(", "),
        });
    }
    let target_db = |db: &str| {
        opts.database_map
            .get(db)
            .cloned()
            .unwrap_or_else(|| db.to_string())
    };

    // What exists on the target now, with row counts for tables that store rows.
    let dbs: Vec<String> = {
        let mut d: Vec<String> = selected.iter().map(|t| target_db(&t.database)).collect();
        d.sort();
        d.dedup();
        d
    };
    let list = dbs
        .iter()
        .map(|d| quote_str(d))
        .collect::<Vec<_>>()
        .join(", ");
    let existing = list_tables(client, &format!("database IN ({list})"), false).await?;
    let present: Vec<String> = client
        .rows(
            "listing databases",
            &format!("SELECT name FROM system.databases WHERE name IN ({list})"),
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect();
    let created: Vec<String> = dbs
        .iter()
        .filter(|d| !present.contains(d))
        .cloned()
        .collect();
    let exists = |db: &str, name: &str| existing.iter().any(|t| t.database == db && t.name == name);

    let mut steps = Vec::new();
    let mut occupied = Vec::new();
    for t in &selected {
        let Some(phase) = ddl::phase(t) else { continue };
        let database = target_db(&t.database);
        let mut create =
            ddl::rename_databases(&ddl::strip_on_cluster(&t.create), &opts.database_map);
        if opts.replicated == Replicated::Convert {
            create = ddl::unreplicate(&create).0;
        }
        let here = exists(&database, &t.name);
        // An `--until` run completes tables an earlier `--since` run created and filled:
        // their rows are expected; partitions already there are skipped one by one.
        let completing = opts.window.until.is_some() && !opts.clean;
        if here && phase == Phase::Data && !completing {
            let rows = count(client, &database, &t.name).await?;
            if rows > 0 && !opts.clean {
                occupied.push(format!("{database}.{} ({rows} rows)", t.name));
            }
        }
        let inner_part = (phase == Phase::MaterializedView)
            .then(|| {
                schema
                    .tables
                    .iter()
                    .find(|i| ddl::owner_of(i, &schema.tables).is_some_and(|o| o.name == t.name))
                    .and_then(|i| {
                        i.part.clone().map(|p| InnerPart {
                            backed_up_as: i.name.clone(),
                            part: p,
                            columns: i.columns.clone(),
                        })
                    })
            })
            .flatten();
        if here && phase == Phase::MaterializedView && !opts.clean && !completing {
            if let Some(inner) = inner_table_in(&existing, &database, &t.name) {
                let rows = count(client, &database, &inner).await?;
                if rows > 0 {
                    occupied.push(format!("{database}.{inner} ({rows} rows)"));
                }
            }
        }
        steps.push(Step {
            phase,
            database,
            name: t.name.clone(),
            engine: t.engine.clone(),
            ttl: ddl::has_ttl(&create),
            create,
            drop_first: here && opts.clean,
            exists: here && !opts.clean,
            part: t.part.clone(),
            columns: t.columns.clone(),
            inner_part,
        });
    }
    if !occupied.is_empty() {
        return Err(RestoreError::NotEmpty {
            addr: client.addr(),
            tables: occupied.join(", "),
        });
    }
    steps.sort_by_key(|s| s.phase);
    let mut notes = Vec::new();
    let databases = dbs
        .iter()
        .map(|db| {
            let original = opts
                .database_map
                .iter()
                .find(|(_, new)| *new == db)
                .map_or(db.as_str(), |(old, _)| old.as_str());
            let ddl_text = schema
                .databases
                .iter()
                .find(|d| d.name == original)
                .map(|d| d.create.clone())
                .unwrap_or_default();
            // Without IF NOT EXISTS for a database the plan found missing: one that appears
            // meanwhile is not this restore's to drop if it fails.
            let (create, ordinary) = create_database(db, &ddl_text, !created.contains(db));
            if ordinary {
                notes.push(format!(
                    "database {db} was Ordinary; it is created with the server's default engine (Atomic on 20.10+; new servers refuse Ordinary), and materialized views' inner tables are found by their new names"
                ));
            }
            (db.clone(), create)
        })
        .collect();
    Ok(Plan {
        databases,
        created,
        steps,
        notes,
    })
}

/// `CREATE DATABASE [IF NOT EXISTS] db [ENGINE = …]`, keeping the backed-up engine clause,
/// except `Ordinary`, which is left to the server's default (the `bool` says so).
fn create_database(db: &str, original: &str, if_not_exists: bool) -> (String, bool) {
    let engine = original
        .find("ENGINE")
        .map(|i| original[i..].trim().to_string())
        .unwrap_or_default();
    let ordinary = engine
        .trim_start_matches("ENGINE")
        .trim_start()
        .trim_start_matches('=')
        .trim()
        .starts_with("Ordinary");
    let clause = if engine.is_empty() || ordinary {
        String::new()
    } else {
        format!(" {engine}")
    };
    (
        format!(
            "CREATE DATABASE {}{}{clause}",
            if if_not_exists { "IF NOT EXISTS " } else { "" },
            quote_ident(db)
        ),
        ordinary,
    )
}

/// Runs DDL; when the server refuses it and names an `allow_…` setting that would accept
/// it (a newer server's validation of an older schema), retries once per named setting
/// and says so.
async fn execute_ddl(
    client: &ChClient,
    what: &str,
    sql: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), ChError> {
    let mut settings: Vec<String> = Vec::new();
    loop {
        let params: Vec<(&str, &str)> = settings.iter().map(|s| (s.as_str(), "1")).collect();
        match client.send(what, sql.to_string(), &params).await {
            Ok(_) => return Ok(()),
            Err(ChError::Query {
                message,
                addr,
                what,
            }) => match allow_setting(&message).filter(|s| !settings.contains(s)) {
                Some(setting) if settings.len() < 3 => {
                    say(&format!(
                            "note: {what}: the server refused the backed-up DDL ({}); retrying with {setting}=1",
                            message.lines().next().unwrap_or("").chars().take(200).collect::<String>()
                        ));
                    settings.push(setting);
                }
                _ => {
                    return Err(ChError::Query {
                        addr,
                        what,
                        message,
                    })
                }
            },
            Err(e) => return Err(e),
        }
    }
}

/// The `allow_…` setting a server's error message names, if any.
fn allow_setting(message: &str) -> Option<String> {
    let start = message.find("allow_")?;
    let name: String = message[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (name.len() > "allow_".len()).then_some(name)
}

/// Exact row count of one table.
///
/// # Errors
/// Query errors.
pub async fn count(client: &ChClient, db: &str, table: &str) -> Result<u64, ChError> {
    let rows = client
        .rows(
            &format!("counting {db}.{table}"),
            &format!(
                "SELECT count() FROM {}.{}",
                quote_ident(db),
                quote_ident(table)
            ),
        )
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

/// Runs the plan; returns the restored tables' counts with the backup's (by their
/// backed-up names), per partition in a windowed restore.
///
/// # Errors
/// DDL and load errors, damaged parts.
pub async fn run(
    client: &ChClient,
    plan: &Plan,
    verified: &[Verified<'_>],
    opts: &RestoreOptions,
    ctx: crate::engine::RestoreCtx<'_>,
) -> Result<Loaded, RestoreError> {
    let say = ctx.say;
    let mut made = Vec::new();
    let restored = async {
    for (db, create) in &plan.databases {
        execute_ddl(client, &format!("creating database {db}"), create, say).await?;
        if plan.created.contains(db) {
            made.push(db.clone());
        }
    }
    let original_db = |db: &str| {
        opts.database_map
            .iter()
            .find(|(_, new)| *new == db)
            .map_or(db.to_string(), |(old, _)| old.clone())
    };
    let mut counts = Loaded::default();
    for step in &plan.steps {
        let qualified = format!(
            "{}.{}",
            quote_ident(&step.database),
            quote_ident(&step.name)
        );
        if step.drop_first {
            client
                .execute(
                    &format!("dropping {}.{}", step.database, step.name),
                    &format!("DROP TABLE IF EXISTS {qualified}"),
                )
                .await?;
        }
        if !step.exists {
            execute_ddl(
                client,
                &format!("creating {}.{}", step.database, step.name),
                &step.create,
                say,
            )
            .await?;
        }
        // (table on the target, name in the backup, part, columns)
        let loads: Vec<(String, String, String, &Vec<String>)> =
            match (&step.part, &step.inner_part) {
                (Some(part), _) => vec![(
                    step.name.clone(),
                    step.name.clone(),
                    part.clone(),
                    &step.columns,
                )],
                (None, Some(inner)) => vec![(
                    inner_table(client, &step.database, &step.name).await?,
                    inner.backed_up_as.clone(),
                    inner.part.clone(),
                    &inner.columns,
                )],
                _ => vec![],
            };
        for (table, backed_up_as, part_name, columns) in loads {
            // Only parts checked before the server was touched can be loaded: the table's
            // one part, or its partitions' parts, one after the other.
            let parts: Vec<Verified<'_>> = verified
                .iter()
                .filter(|v| super::holds_table(v.part(), &part_name))
                .copied()
                .collect();
            if parts.is_empty() && !opts.window.is_set() {
                return Err(RestoreError::BadSchema(format!(
                    "part {part_name} was not verified before the restore (or is not in the manifest)"
                )));
            }
            let present = match opts.window.is_set() {
                true => partitions_present(client, &step.database, &table).await?,
                false => Vec::new(),
            };
            let recorded = |p: &crate::catalog::Part| p.tables.iter().map(|t| t.rows).sum::<u64>();
            let schema = original_db(&step.database);
            for part in parts {
                let partition = part.part().partition.as_ref().map(|p| p.id.clone());
                if let Some(id) = partition.as_ref().filter(|id| present.contains(id)) {
                    say(&format!(
                        "skipped {}.{table} partition {id}: already on the server (loaded by an earlier run?)",
                        step.database
                    ));
                    continue;
                }
                load(client, ctx, part, &step.database, &table, columns)
                    .await
                    .map_err(|e| RestoreError::Load {
                        table: format!("{}.{table}", step.database),
                        source: Box::new(e),
                    })?;
                if opts.window.is_set() {
                    // Per partition: the table also holds other windows' rows. A table in
                    // one part (loaded by the first run only) is counted whole.
                    let (name, rows) = match &partition {
                        Some(id) => {
                            let rows = count_partition(client, &step.database, &table, id).await?;
                            say(&format!(
                                "loaded {}.{table} partition {id}: {rows} rows",
                                step.database
                            ));
                            (format!("{backed_up_as} partition {id}"), rows)
                        }
                        None => (
                            backed_up_as.clone(),
                            count(client, &step.database, &table).await?,
                        ),
                    };
                    let of = |rows| TableCount {
                        schema: schema.clone(),
                        name: name.clone(),
                        rows,
                    };
                    counts.expected.push(of(recorded(part.part())));
                    counts.live.push(of(rows));
                }
            }
            if !opts.window.is_set() {
                let rows = count(client, &step.database, &table).await?;
                say(&format!("loaded {}.{table}: {rows} rows", step.database));
                counts.live.push(TableCount {
                    schema,
                    name: backed_up_as,
                    rows,
                });
            }
        }
    }
        Ok(counts)
    }
    .await;
    if restored.is_err() && plan.rolls_back() {
        // Every database here is this restore's own (created by this run, not merely
        // missing when it planned): leave the server as it was found.
        for db in &made {
            let dropped = client
                .execute(
                    &format!("dropping database {db} after the failed restore"),
                    &format!("DROP DATABASE IF EXISTS {}", quote_ident(db)),
                )
                .await;
            match dropped {
                Ok(()) => say(&format!(
                    "the restore failed: dropped database {db}, which it had created"
                )),
                Err(e) => say(&format!(
                    "the restore failed and database {db}, which it created, could not be dropped ({e}): drop it by hand"
                )),
            }
        }
    }
    restored
}

/// The partitions a table on the target has rows in.
async fn partitions_present(
    client: &ChClient,
    db: &str,
    table: &str,
) -> Result<Vec<String>, ChError> {
    Ok(client
        .rows(
            "listing the target's partitions",
            &format!(
                "SELECT DISTINCT partition_id FROM system.parts WHERE active AND rows > 0 AND database = {} AND table = {}",
                quote_str(db),
                quote_str(table)
            ),
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .collect())
}

/// Rows of one partition of a table.
async fn count_partition(
    client: &ChClient,
    db: &str,
    table: &str,
    partition: &str,
) -> Result<u64, ChError> {
    let text = client
        .rows(
            "counting a partition",
            &format!(
                "SELECT count() FROM {}.{} WHERE _partition_id = {}",
                quote_ident(db),
                quote_ident(table),
                quote_str(partition)
            ),
        )
        .await?;
    text.first()
        .and_then(|r| r.first())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ChError::Query {
            addr: client.addr(),
            what: "counting a partition".into(),
            message: "no count in the answer".into(),
        })
}

/// Streams one part into `INSERT INTO db.table (columns) FORMAT Native|TabSeparated`.
async fn load(
    client: &ChClient,
    ctx: crate::engine::RestoreCtx<'_>,
    verified: Verified<'_>,
    db: &str,
    table: &str,
    columns: &[String],
) -> Result<(), RestoreError> {
    let (manifest, part) = (verified.manifest(), verified.part());
    let (plain, bar) = ctx.open(verified).await?;
    let (body, feeding) = verified_body(plain, manifest.backup_ref().to_string(), part.clone());
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let format = DataFormat::of_part(&part.format).ok_or_else(|| {
        RestoreError::BadSchema(format!(
            "part {} has format {}, which this version cannot load",
            part.name, part.format
        ))
    })?;
    let query = format!(
        "INSERT INTO {}.{} ({cols}) FORMAT {}",
        quote_ident(db),
        quote_ident(table),
        format.clickhouse_name()
    );
    // Squash the dump's blocks into large inserts: fewer parts for the merges to fold.
    let sent = client
        .send(
            &format!("loading {db}.{table}"),
            body,
            &[
                ("query", query.as_str()),
                ("min_insert_block_size_rows", "1048576"),
                ("min_insert_block_size_bytes", "268435456"),
            ],
        )
        .await;
    let fed = feeding.await.expect("restore thread panicked");
    bar.finish();
    fed?;
    sent?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> crate::catalog::Part {
        let mut p: crate::catalog::Part = serde_json::from_value(serde_json::json!({
            "name": "data-db.t.p-x", "file": "x.native.zst.age",
            "format": "clickhouse-native", "compression": "zstd",
            "ciphertext_bytes": 1, "ciphertext_sha256": "0".repeat(64), "plaintext_bytes": 1
        }))
        .unwrap();
        p.partition = Some(crate::catalog::Partition {
            id: d.replace('-', ""),
            fingerprint: None,
            min_time: None,
            max_time: Some(format!("{d}T23:59:59Z").parse().unwrap()),
        });
        p
    }

    #[test]
    fn a_window_admits_partitions_by_their_newest_time_and_untimed_data_once() {
        let mut untimed = day("2026-11-25");
        untimed.partition = None;
        let at = |s: &str| Some(s.parse().unwrap());
        let since = Window {
            since: at("2026-11-28T00:00:00Z"),
            until: None,
        };
        let until = Window {
            since: None,
            until: at("2026-11-28T00:00:00Z"),
        };
        assert!(since.admits(&day("2026-11-28")) && !since.admits(&day("2026-11-27")));
        assert!(until.admits(&day("2026-11-27")) && !until.admits(&day("2026-11-28")));
        assert!(since.admits(&untimed) && !until.admits(&untimed));
        assert!(Window::default().admits(&untimed) && !Window::default().is_set());
    }
}
