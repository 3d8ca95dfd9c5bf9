//! `kubectl dr verify`: proves a backup is intact (sizes and sha256 of every part), that a
//! key opens it (full decryption, nothing written to disk), and how its row counts compare
//! with a live or restored database.

use anyhow::Context;
use clap::Args;
use drkit::catalog::Manifest;
use drkit::cli::{CheckFailed, IdentityArgs, StoreArgs};
use drkit::engine::postgres::{self, PgTarget};
use drkit::engine::{clickhouse, vault};
use drkit::progress::Progress;
use drkit::store::ReadStore;
use drkit::verify::{self, MaxDiff};
use serde::Serialize;

use super::counts::DatabaseCounts;
use super::FilterArgs;
use crate::output::{self, Format};

/// Verify a backup: integrity, decryption, and row counts against a database.
///
/// Without --identity: checks every part's size and sha256 against the manifest (no key
/// needed). With --identity: also decrypts and decompresses every part fully, in memory.
/// With --against: compares the manifest's exact per-table row counts with the database
/// (a restored copy, or the live one), and fails past --max-diff. For Vault backups,
/// --identity also checks the raft snapshot's own SHA256SUMS, and --against compares the
/// counts of secrets engines, auth methods, policies and kv secrets.
///
/// Examples:
///   kubectl dr verify latest --target prod
///   kubectl dr verify latest --engine vault --identity key.txt --against https://vault:8200
///   kubectl dr verify 20261122T020000Z-7f3a9c --identity key.txt \
///     --against postgres://postgres@127.0.0.1:5432/app --max-diff 1%
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyCmd {
    /// Backup id, or `latest`.
    backup: String,

    #[command(flatten)]
    filter: FilterArgs,

    #[command(flatten)]
    identity: IdentityArgs,

    /// Server to compare counts with. PostgreSQL: postgres://user@host:port[/db], password
    /// from PGPASSWORD or PGPASSWORD_FILE; without a database in the URL, each backed-up
    /// database is compared with the database of the same name. Vault/OpenBao:
    /// http(s)://vault:8200, token from VAULT_TOKEN or VAULT_TOKEN_FILE; compares secrets
    /// engines, auth methods, policies and kv secrets. ClickHouse: http(s)://host:8123,
    /// CLICKHOUSE_USER and CLICKHOUSE_PASSWORD(_FILE); per-table counts, TTL-aware.
    #[arg(long, value_name = "URL")]
    against: Option<String>,

    /// Largest difference per table that still passes: rows (e.g. 100) or percent (10%).
    #[arg(long, default_value = "0", value_name = "N|P%")]
    max_diff: MaxDiff,

    /// Only this database of a multi-database backup (for --against).
    #[arg(long, short = 'd', value_name = "DB")]
    database: Option<String>,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct PartResult {
    name: String,
    ok: bool,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    id: String,
    engine: String,
    target: String,
    decrypted: bool,
    ok: bool,
    parts: Vec<PartResult>,
    counts: Vec<DatabaseCounts>,
}

impl VerifyCmd {
    pub async fn run(self, store: &StoreArgs, progress: &dyn Progress) -> anyhow::Result<()> {
        let identities = self.identity.load()?;
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let manifest = super::resolve(store, &self.backup, &self.filter).await?;
        let table = self.output == Format::Table;
        // The server first: a typo in --against must not cost a full decryption pass.
        if let Some(url) = &self.against {
            probe_against(&manifest, url, self.database.as_deref()).await?;
        }
        if table {
            eprintln!(
                "verifying {} ({} part(s))",
                manifest.backup_ref(),
                manifest.parts.len()
            );
        }

        let mut parts = Vec::new();
        for part in &manifest.parts {
            let result =
                verify::check_part(store, &manifest, part, identities.as_ref(), progress).await;
            if table {
                match &result {
                    Ok(()) => println!(
                        "ok      {} ({})",
                        part.name,
                        output::human_bytes(part.ciphertext_bytes)
                    ),
                    Err(e) => println!("FAILED  {}: {e}", part.name),
                }
            }
            match result {
                // Wrong key or an unreachable store: the backup may be fine; say what to fix.
                Err(e) if !e.is_check_failure() => {
                    return Err(anyhow::Error::new(e).context("verification could not run"))
                }
                result => parts.push(PartResult {
                    name: part.name.clone(),
                    ok: result.is_ok(),
                    bytes: part.ciphertext_bytes,
                    error: result.err().map(|e| e.to_string()),
                }),
            }
        }

        let counts = match &self.against {
            Some(url) => compare(&manifest, url, self.database.as_deref(), self.max_diff).await?,
            None => Vec::new(),
        };
        if table {
            for c in &counts {
                c.print()?;
            }
        }
        let ok = parts.iter().all(|p| p.ok) && counts.iter().all(|c| c.ok);
        if !table {
            output::print_structured(
                self.output,
                &Report {
                    id: manifest.id.to_string(),
                    engine: manifest.engine.clone(),
                    target: manifest.target.clone(),
                    decrypted: identities.is_some(),
                    ok,
                    parts,
                    counts,
                },
            )?;
        }
        if !ok {
            return Err(CheckFailed(format!(
                "backup {} failed verification",
                manifest.backup_ref()
            ))
            .into());
        }
        if table {
            let what = if identities.is_some() {
                "intact and decryptable"
            } else {
                "intact (sizes and sha256; pass --identity to also decrypt)"
            };
            eprintln!("backup {} is {what}", manifest.backup_ref());
        }
        Ok(())
    }
}

/// Checks that the `--against` server answers, is of the backup's engine and accepts our
/// credentials, within `DR_CONNECT_TIMEOUT`.
async fn probe_against(manifest: &Manifest, url: &str, only: Option<&str>) -> anyhow::Result<()> {
    let context = || format!("checking --against {url} before verifying");
    match manifest.engine.as_str() {
        "postgres" => {
            let server = PgTarget::from_url(url)?;
            let db = server
                .dbname
                .clone()
                .or_else(|| only.map(str::to_string))
                .or_else(|| manifest.databases().first().map(|d| d.to_string()))
                .unwrap_or_else(|| "postgres".into());
            server.probe(&db).await.with_context(context)?;
        }
        vault::ENGINE => {
            let target = vault::VaultTarget::from_url(url)?;
            vault::VaultClient::new(&target)?
                .probe()
                .await
                .with_context(context)?;
        }
        clickhouse::ENGINE => {
            let target = clickhouse::ChTarget::from_url(url)?;
            clickhouse::ChClient::new(&target)?
                .probe()
                .await
                .with_context(context)?;
        }
        other => anyhow::bail!("--against is not supported for {other} backups yet"),
    }
    Ok(())
}

/// Compares each database part's counts with the database at `url`.
async fn compare(
    manifest: &Manifest,
    url: &str,
    only: Option<&str>,
    max: MaxDiff,
) -> anyhow::Result<Vec<DatabaseCounts>> {
    match manifest.engine.as_str() {
        "postgres" => {}
        vault::ENGINE => return compare_vault(manifest, url, max).await.map(|c| vec![c]),
        clickhouse::ENGINE => {
            return compare_clickhouse(manifest, url, max)
                .await
                .map(|c| vec![c])
        }
        other => anyhow::bail!("--against is not supported for {other} backups yet"),
    }
    let server = PgTarget::from_url(url)?;
    let parts: Vec<_> = manifest
        .parts
        .iter()
        .filter(|p| p.database.is_some() && only.is_none_or(|d| p.database.as_deref() == Some(d)))
        .collect();
    anyhow::ensure!(
        !parts.is_empty(),
        "backup {} holds no database {}; it has: {}",
        manifest.backup_ref(),
        only.unwrap_or("at all"),
        manifest.databases().join(", ")
    );
    anyhow::ensure!(
        parts.len() == 1 || server.dbname.is_none(),
        "backup {} holds several databases ({}); drop the database from --against to compare each with its namesake, or pick one with --database",
        manifest.backup_ref(),
        manifest.databases().join(", ")
    );
    let mut out = Vec::new();
    for part in parts {
        let backed_up = part.database.as_deref().expect("filtered");
        let db = server
            .dbname
            .clone()
            .unwrap_or_else(|| backed_up.to_string());
        let target = server.with_dbname(&db);
        let client = target.connect(&db).await?;
        let live = postgres::count_tables(&client, &target)
            .await
            .with_context(|| format!("counting rows in {target}"))?;
        out.push(DatabaseCounts::new(
            backed_up,
            target.to_string(),
            max,
            verify::compare_counts(&part.tables, &live, max),
        ));
    }
    Ok(out)
}

/// Compares a Vault backup's counts with the server at `url`.
async fn compare_vault(
    manifest: &Manifest,
    url: &str,
    max: MaxDiff,
) -> anyhow::Result<DatabaseCounts> {
    let target = vault::VaultTarget::from_url(url)?;
    let token = vault::Token::from_env()?.ok_or(vault::VaultError::NoToken)?;
    let client = vault::VaultClient::new(&target)?.with_token(token);
    let (active, _) = client.active().await?;
    active.check_token().await?;
    let live = active.counts().await?;
    let part = vault::snapshot_part(manifest)?;
    Ok(DatabaseCounts::new(
        &manifest.target,
        active.addr().to_string(),
        max,
        verify::compare_counts(&part.tables, &live, max),
    ))
}

/// Compares a ClickHouse backup's per-table counts with the server at `url`; tables with a
/// TTL may have lost rows legitimately.
async fn compare_clickhouse(
    manifest: &Manifest,
    url: &str,
    max: MaxDiff,
) -> anyhow::Result<DatabaseCounts> {
    let target = clickhouse::ChTarget::from_url(url)?;
    let client = clickhouse::ChClient::new(&target)?;
    let backup: Vec<drkit::catalog::TableCount> = manifest
        .parts
        .iter()
        .flat_map(|p| p.tables.iter().cloned())
        .collect();
    // A view's inner table may have another name on this server (`.inner_id.<uuid>` after
    // a restore into an Atomic database): find it through its view.
    let inner = clickhouse::dump::inner_tables(manifest);
    let mut live = Vec::new();
    for t in &backup {
        let name = match inner.get(&format!("{}.{}", t.schema, t.name)) {
            Some(view) => match clickhouse::restore::inner_table(&client, &t.schema, view).await {
                Ok(n) => n,
                Err(_) => continue,
            },
            None => t.name.clone(),
        };
        match clickhouse::restore::count(&client, &t.schema, &name).await {
            Ok(rows) => live.push(drkit::catalog::TableCount { rows, ..t.clone() }),
            // A missing table shows as MISSING in the comparison.
            Err(clickhouse::ChError::Query { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut rows = verify::compare_counts(&backup, &live, max);
    verify::allow_ttl_expiry(&mut rows, &clickhouse::dump::ttl_tables(manifest));
    Ok(DatabaseCounts::new(
        &manifest.target,
        target.to_string(),
        max,
        rows,
    ))
}
