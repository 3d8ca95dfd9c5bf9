//! The ClickHouse backup: one schema part (every database's and table's DDL as the server
//! prints it, with the columns each data part holds), then the data: one Native part per
//! partition of a MergeTree table (one per table for the others), walked as it streams so
//! its row count is exact and a result that ends in a server exception (or is cut) fails
//! the backup. With `--incremental`, a partition whose fingerprint is its base's is
//! referenced instead of dumped ([`super::partitions`]).

use std::io::{self, BufReader, Read, Write};

use super::native::{self, NativeError};
use super::schema::{stores_data, DataFormat, DatabaseDdl, Facts, Schema, TableDdl};
use super::{partitions, quote_ident, quote_str, ChClient, ChError, ChTarget, SYSTEM_DATABASES};
use crate::catalog::PartFormat;
use crate::catalog::TableCount;
use crate::engine::{encode_name, BackupRun, PartSpec};
use crate::pipeline::encode::{EncodeError, SourceError};

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Databases; empty means all but the system ones.
    pub databases: Vec<String>,
    /// `db.table` glob patterns (`*`, `?`) of tables to leave out (schema and data).
    pub exclude: Vec<String>,
    /// Tables dumped at once.
    pub parallel: usize,
    /// Reference the partitions that did not change since the newest backup.
    pub incremental: bool,
    /// With `incremental`: a full backup after this many incremental ones in a chain.
    pub full_every: u32,
}

/// Errors of a ClickHouse backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Talking to the server failed.
    #[error(transparent)]
    Ch(#[from] ChError),
    /// The selection matches no database or table.
    #[error("nothing to back up on {addr} ({asked}); check --database")]
    Nothing {
        /// The server's address.
        addr: String,
        /// What was asked for.
        asked: String,
    },
    /// One table's data part failed.
    #[error("backing up table {table} failed")]
    Table {
        /// The table (`db.table`).
        table: String,
        /// The underlying error.
        #[source]
        source: EncodeError,
    },
    /// Storing the schema part failed.
    #[error("storing the schema failed")]
    Schema(#[source] EncodeError),
    /// Two tables' parts would have the same name (a table named like another's
    /// partition part).
    #[error("two parts would both be named {0}; rename one of the tables, or leave one out with --exclude")]
    Clash(String),
    /// Reading the base of an incremental backup failed.
    #[error("reading the newest backup, the base of this incremental one, failed: {0}")]
    Base(String),
}

/// Simple glob: `*` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    go(&p, &t)
}

/// Reads the schema of the selected databases.
///
/// # Errors
/// Query errors.
pub async fn read_schema(client: &ChClient, opts: &DumpOptions) -> Result<Schema, DumpError> {
    let server_version = client.version().await?;
    let all: Vec<String> = client
        .rows(
            "listing databases",
            "SELECT name FROM system.databases ORDER BY name",
        )
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next())
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .collect();
    let missing: Vec<&String> = opts.databases.iter().filter(|d| !all.contains(d)).collect();
    let selected: Vec<String> = if opts.databases.is_empty() {
        all.clone()
    } else {
        opts.databases.clone()
    };
    if selected.is_empty() || !missing.is_empty() {
        return Err(DumpError::Nothing {
            addr: client.addr(),
            asked: format!(
                "{}; the server has: {}",
                if missing.is_empty() {
                    "all".to_string()
                } else {
                    format!("missing {missing:?}")
                },
                all.join(", ")
            ),
        });
    }
    let mut databases = Vec::new();
    for db in &selected {
        let create = client
            .rows(
                "reading a database's DDL",
                &format!("SHOW CREATE DATABASE {}", quote_ident(db)),
            )
            .await?
            .first()
            .and_then(|r| r.first().cloned())
            .unwrap_or_else(|| format!("CREATE DATABASE {}", quote_ident(db)));
        databases.push(DatabaseDdl {
            name: db.clone(),
            create,
        });
    }
    let list = selected
        .iter()
        .map(|d| quote_str(d))
        .collect::<Vec<_>>()
        .join(", ");
    let tables = list_tables(
        client,
        &format!("database IN ({list}) AND is_temporary = 0 ORDER BY database, name"),
        true,
    )
    .await?;
    let columns = client
        .rows(
            "listing columns",
            &format!(
                "SELECT database, table, name, default_kind, type FROM system.columns WHERE database IN ({list})"
            ),
        )
        .await?;
    let mut out = Vec::new();
    for listed in tables {
        let ListedTable {
            database,
            name,
            engine,
            create,
            uuid,
        } = listed;
        if opts
            .exclude
            .iter()
            .any(|p| glob(p, &format!("{database}.{name}")))
        {
            tracing::info!(table = %format!("{database}.{name}"), "excluded");
            continue;
        }
        let data = stores_data(&engine);
        let stored: Vec<&Vec<String>> = if data {
            columns
                .iter()
                .filter(|c| c.len() == 5 && c[0] == database && c[1] == name)
                .filter(|c| !matches!(c[3].as_str(), "ALIAS" | "MATERIALIZED" | "EPHEMERAL"))
                .collect()
        } else {
            Vec::new()
        };
        let cols: Vec<String> = stored.iter().map(|c| c[2].clone()).collect();
        let data_format = DataFormat::for_types(stored.iter().map(|c| c[4].as_str()));
        if data_format == DataFormat::Tsv {
            tracing::info!(table = %format!("{database}.{name}"), "a column has no Native size rule (aggregate states, Dynamic, JSON): dumping as TabSeparated");
            if stored.iter().any(|c| c[4].contains("Dynamic")) {
                tracing::warn!(table = %format!("{database}.{name}"), "Dynamic values travel as text: a restore infers their types again (e.g. '2' stored as String comes back as Int64)");
            }
        }
        let part = data.then(|| format!("data-{}.{}", encode_name(&database), encode_name(&name)));
        out.push(TableDdl {
            database,
            name,
            engine,
            create,
            columns: cols,
            part,
            data_format,
            uuid,
        });
    }
    Ok(Schema {
        server_version,
        databases,
        tables: out,
    })
}

/// A row of `system.tables`.
#[derive(Debug, Clone)]
pub struct ListedTable {
    /// Its database.
    pub database: String,
    /// Its name.
    pub name: String,
    /// Its engine (`MergeTree`, `View`…).
    pub engine: String,
    /// `create_table_query` (empty unless asked for).
    pub create: String,
    /// None on servers without `system.tables.uuid` (before 20.x) or for a nil UUID.
    pub uuid: Option<String>,
}

/// Lists `system.tables` rows matching `filter` (SQL after WHERE), with UUIDs where the
/// server has them: the column does not exist on old servers, so that is tried first.
///
/// # Errors
/// Query errors.
pub async fn list_tables(
    client: &ChClient,
    filter: &str,
    with_create: bool,
) -> Result<Vec<ListedTable>, ChError> {
    let create = if with_create {
        "create_table_query"
    } else {
        "''"
    };
    let with_uuid = client
        .rows(
            "listing tables",
            &format!("SELECT database, name, engine, {create}, toString(uuid) FROM system.tables WHERE {filter}"),
        )
        .await;
    let rows = match with_uuid {
        Ok(rows) => rows,
        Err(ChError::Query { message, .. }) if message.contains("uuid") => {
            client
                .rows(
                    "listing tables",
                    &format!(
                    "SELECT database, name, engine, {create}, '' FROM system.tables WHERE {filter}"
                ),
                )
                .await?
        }
        Err(e) => return Err(e),
    };
    rows.into_iter()
        .map(|row| {
            let [database, name, engine, create, uuid] =
                <[String; 5]>::try_from(row).map_err(|_| ChError::Query {
                    addr: client.addr(),
                    what: "listing tables".into(),
                    message: "unexpected columns in system.tables".into(),
                })?;
            let nil = uuid.is_empty() || uuid.bytes().all(|b| b == b'0' || b == b'-');
            Ok(ListedTable {
                database,
                name,
                engine,
                create,
                uuid: (!nil).then_some(uuid),
            })
        })
        .collect()
}

/// Backs up the selected databases into `run`; returns the server version and the facts.
///
/// # Errors
/// Query errors, a table whose result ends in an exception or is cut, store errors.
pub async fn dump(
    run: &BackupRun<'_>,
    target: &ChTarget,
    opts: &DumpOptions,
) -> Result<(String, Facts), DumpError> {
    let client = ChClient::new(target)?;
    let schema = read_schema(&client, opts).await?;
    tracing::info!(
        databases = schema.databases.len(),
        tables = schema.tables.len(),
        with_data = schema.tables.iter().filter(|t| t.part.is_some()).count(),
        "schema read"
    );
    let json = serde_json::to_vec_pretty(&schema).expect("schema serializes");
    let spec = PartSpec {
        name: "schema".into(),
        format: PartFormat::ClickhouseSchema,
        extension: "json",
        database: None,
        section: None,
    };
    run.store_part(spec, move |out: &mut dyn Write| Ok(out.write_all(&json)?))
        .await
        .map_err(DumpError::Schema)?;

    let names: Vec<String> = schema.databases.iter().map(|d| d.name.clone()).collect();
    let live = partitions::list(&client, &names).await?;
    let base = match opts.incremental {
        true => Base::choose(run, opts.full_every).await?,
        false => None,
    };
    let mut units = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut referenced = 0usize;
    for table in schema.tables.iter().filter(|t| t.part.is_some()) {
        let table_part = table.part.clone().expect("filtered");
        let key = (table.database.clone(), table.name.clone());
        let Some(found) = live.get(&key).filter(|p| !p.is_empty()) else {
            // No partitions (Log, Memory, an empty MergeTree): the table in one part.
            if !seen.insert(table_part.clone()) {
                return Err(DumpError::Clash(table_part));
            }
            units.push(Unit {
                table,
                name: table_part,
                partition: None,
            });
            continue;
        };
        for p in found {
            let name = super::partition_part_name(&table_part, &p.id);
            if !seen.insert(name.clone()) {
                return Err(DumpError::Clash(name));
            }
            let recorded = p.recorded(table);
            if let Some((part, holder)) = base.as_ref().and_then(|b| b.unchanged(&name, &recorded))
            {
                if referenced == 0 {
                    run.set_base(base.as_ref().expect("a base").manifest.id.clone());
                }
                run.reference(part, holder)
                    .await
                    .map_err(|e| DumpError::Base(e.to_string()))?;
                referenced += 1;
                continue;
            }
            units.push(Unit {
                table,
                name,
                partition: Some(recorded),
            });
        }
    }
    tracing::info!(
        parts = units.len(),
        referenced,
        base = %base.as_ref().map_or("none".to_string(), |b| b.manifest.id.to_string()),
        "data to dump"
    );

    // Several parts at once: each holds a few MiB of buffers and one HTTP stream. The
    // futures are boxed so the whole dump stays `Send` for every caller (closures returning
    // futures over borrowed tables defeat the compiler's lifetime inference there).
    let mut tasks = Vec::with_capacity(units.len());
    for unit in &units {
        let task: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), DumpError>> + Send + '_>,
        > = Box::pin(dump_and_log(run, &client, unit));
        tasks.push(task);
    }
    run.all_or_stop(tasks, opts.parallel).await?;
    let facts = Facts {
        incrementals: match (&base, referenced) {
            (Some(b), 1..) => b.incrementals + 1,
            _ => 0,
        },
        ttl_tables: schema
            .tables
            .iter()
            .filter(|t| t.part.is_some() && super::ddl::has_ttl(&t.create))
            .map(|t| format!("{}.{}", t.database, t.name))
            .collect(),
        inner_tables: schema
            .tables
            .iter()
            .filter_map(|t| {
                super::ddl::owner_of(t, &schema.tables)
                    .map(|mv| (format!("{}.{}", t.database, t.name), mv.name.clone()))
            })
            .collect(),
    };
    Ok((schema.server_version, facts))
}

/// One data part to dump: a table, or one partition of it.
struct Unit<'a> {
    table: &'a TableDdl,
    /// The part's name.
    name: String,
    /// The partition (with its fingerprint, read before the dump), for a MergeTree table.
    partition: Option<crate::catalog::Partition>,
}

/// The backup an incremental one compares with, and what it can reference.
struct Base {
    manifest: crate::catalog::Manifest,
    /// Its chain position (`Facts::incrementals`).
    incrementals: u32,
    /// Objects present in each backup the base's parts live in: file → size.
    objects: std::collections::BTreeMap<
        crate::catalog::BackupId,
        std::collections::BTreeMap<String, u64>,
    >,
}

impl Base {
    /// The newest complete backup of the series, when an incremental one may build on it:
    /// encrypted to the same recipients (a reference keeps its base's encryption), with
    /// partition fingerprints, and its chain shorter than `full_every`. Otherwise the
    /// backup is a full one, and the log says why.
    async fn choose(run: &BackupRun<'_>, full_every: u32) -> Result<Option<Base>, DumpError> {
        let Some(manifest) = run
            .newest_complete()
            .await
            .map_err(|e| DumpError::Base(e.to_string()))?
        else {
            tracing::info!("incremental: no earlier backup of this target; this one is full");
            return Ok(None);
        };
        let facts: Facts = manifest
            .facts
            .read()
            .map_err(|e| DumpError::Base(e.to_string()))?;
        let mine: std::collections::BTreeSet<String> = run.recipients().into_iter().collect();
        let theirs: std::collections::BTreeSet<String> =
            manifest.recipients.iter().cloned().collect();
        let why_full = if mine != theirs {
            Some("it is encrypted to other recipients")
        } else if facts.incrementals >= full_every {
            Some("its chain reached --full-every")
        } else if !manifest.parts.iter().any(|p| {
            p.partition
                .as_ref()
                .is_some_and(|q| q.fingerprint.is_some())
        }) {
            Some("it has no partition fingerprints (made before incrementals, or by a full layout)")
        } else {
            None
        };
        if let Some(why) = why_full {
            tracing::info!(newest = %manifest.id, why, "incremental: starting a new chain with a full backup");
            return Ok(None);
        }
        let mut objects = std::collections::BTreeMap::new();
        let holders: std::collections::BTreeSet<crate::catalog::BackupRef> = manifest
            .parts
            .iter()
            .map(|p| manifest.holder_of(p))
            .collect();
        for holder in holders {
            let listed = run
                .objects_of(&holder)
                .await
                .map_err(|e| DumpError::Base(e.to_string()))?;
            objects.insert(holder.id, listed);
        }
        Ok(Some(Base {
            manifest,
            incrementals: facts.incrementals,
            objects,
        }))
    }

    /// The base's part for partition part `name` when its data is unchanged (the same
    /// fingerprint) and its object is still stored as recorded; with the backup holding it.
    fn unchanged(
        &self,
        name: &str,
        now: &crate::catalog::Partition,
    ) -> Option<(crate::catalog::Part, crate::catalog::BackupId)> {
        let part = self.manifest.parts.iter().find(|p| p.name == name)?;
        let before = part.partition.as_ref()?;
        if before.fingerprint.is_none() || before.fingerprint != now.fingerprint {
            return None;
        }
        let holder = self.manifest.holder_of(part).id;
        let size = self.objects.get(&holder)?.get(&part.file)?;
        if *size != part.ciphertext_bytes {
            tracing::warn!(part = name, holder = %holder, "the base's object has another size than its manifest says: dumping the partition again");
            return None;
        }
        Some((part.clone(), holder))
    }
}

async fn dump_and_log(
    run: &BackupRun<'_>,
    client: &ChClient,
    unit: &Unit<'_>,
) -> Result<(), DumpError> {
    let table = unit.table;
    let qualified = format!("{}.{}", table.database, table.name);
    let rows = dump_table(run, client, unit)
        .await
        .map_err(|source| match source {
            TableFailure::Ch(e) => DumpError::Ch(e),
            TableFailure::Store(source) => DumpError::Table {
                table: qualified.clone(),
                source,
            },
        })?;
    match &unit.partition {
        Some(p) => tracing::info!(table = %qualified, partition = %p.id, rows, "partition stored"),
        None => tracing::info!(table = %qualified, rows, "table stored"),
    }
    Ok(())
}

enum TableFailure {
    Ch(ChError),
    Store(EncodeError),
}

async fn dump_table(
    run: &BackupRun<'_>,
    client: &ChClient,
    unit: &Unit<'_>,
) -> Result<u64, TableFailure> {
    let table = unit.table;
    let columns = table
        .columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let format = table.data_format;
    // `_partition_id` (a virtual column since 18.x) picks the partition whatever its key:
    // rows a merge moves between parts in the meantime stay in their partition.
    let only = match &unit.partition {
        Some(p) => format!(" WHERE _partition_id = {}", quote_str(&p.id)),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {columns} FROM {}.{}{only} FORMAT {}",
        quote_ident(&table.database),
        quote_ident(&table.name),
        format.clickhouse_name()
    );
    // TabSeparated has no structure an appended exception could break, so the server is
    // asked to finish the query before it answers: an error is then a non-200 status.
    // (Native needs no buffering: a cut or an exception breaks its block structure.)
    let params: &[(&str, &str)] = match format {
        DataFormat::Native => &[],
        DataFormat::Tsv => &[("wait_end_of_query", "1")],
    };
    let response = client
        .send(
            &format!("reading table {}.{}", table.database, table.name),
            sql,
            params,
        )
        .await
        .map_err(TableFailure::Ch)?;
    // 25.11+ announce the marker of an exception written after the 200: random per
    // response, so finding it in the body can never be a coincidence of the data.
    let exception_mark = response
        .headers()
        .get("X-ClickHouse-Exception-Tag")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(|t| format!("__exception__{t}"));
    let reader = crate::pipeline::batched_reader(response.bytes_stream());
    let spec = PartSpec {
        name: unit.name.clone(),
        format: format.part_format(),
        extension: match format {
            DataFormat::Native => "native",
            DataFormat::Tsv => "tsv",
        },
        database: Some(table.database.clone()),
        section: None,
    };
    let column_count = table.columns.len();
    let produce = move |out: &mut dyn Write| -> Result<u64, SourceError> {
        let mut tee = Tee {
            inner: reader,
            out,
            tail: Vec::with_capacity(2 * TAIL),
        };
        let input = BufReader::with_capacity(256 * 1024, &mut tee);
        let walked = match format {
            DataFormat::Native => native::walk(input, |_| {}),
            DataFormat::Tsv => super::tsv::walk(input, Some(column_count)),
        };
        // An exception written into the middle of a block was read as column data: the
        // bytes last received say what happened better than "cut short" does.
        // (Text only when there is something to explain: most tables end well.)
        let message = || native::exception_message(&String::from_utf8_lossy(&tee.tail));
        let marked = exception_mark
            .as_ref()
            .is_some_and(|m| tee.tail.windows(m.len()).any(|w| w == m.as_bytes()));
        let walked = match walked {
            Err(e @ (NativeError::Truncated(_) | NativeError::Malformed(_))) => {
                Err(message().map_or(e, NativeError::ServerException))
            }
            Ok(_) if marked => Err(NativeError::ServerException(message().unwrap_or_default())),
            other => other,
        };
        let stats = walked.map_err(|e| -> SourceError {
            match e {
                NativeError::Io(io) => Box::new(io),
                other => Box::new(other),
            }
        })?;
        Ok(stats.rows)
    };
    let part_name = spec.name.clone();
    let rows = run
        .store_part(spec, produce)
        .await
        .map_err(TableFailure::Store)?;
    run.record_tables(
        &part_name,
        vec![TableCount {
            schema: table.database.clone(),
            name: table.name.clone(),
            rows,
        }],
    );
    if let Some(p) = &unit.partition {
        run.record_partition(&part_name, p.clone());
    }
    Ok(rows)
}

/// Bytes of a result kept to explain a failed walk.
const TAIL: usize = 64 * 1024;

/// Passes everything read on to the encoder, keeping the last [`TAIL`] bytes or more.
struct Tee<'a, R> {
    inner: R,
    out: &'a mut dyn Write,
    tail: Vec<u8>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        let keep = &buf[n.saturating_sub(TAIL)..n];
        if self.tail.len() + keep.len() > 2 * TAIL {
            let drop = self.tail.len() + keep.len() - TAIL;
            self.tail.drain(..drop.min(self.tail.len()));
        }
        self.tail.extend_from_slice(keep);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("signoz_logs.*", "signoz_logs.logs"));
        assert!(glob(
            "*.distributed_*",
            "signoz_traces.distributed_signoz_index_v2"
        ));
        assert!(!glob("*.distributed_*", "signoz_traces.signoz_index_v2"));
        assert!(glob("a.b?", "a.bc") && !glob("a.b?", "a.b"));
    }

    #[test]
    fn which_engines_store_rows() {
        for e in [
            "MergeTree",
            "ReplicatedReplacingMergeTree",
            "AggregatingMergeTree",
            "Log",
            "Memory",
        ] {
            assert!(stores_data(e), "{e}");
        }
        for e in [
            "View",
            "MaterializedView",
            "Distributed",
            "Merge",
            "Null",
            "Dictionary",
            "Buffer",
        ] {
            assert!(!stores_data(e), "{e}");
        }
    }
}
