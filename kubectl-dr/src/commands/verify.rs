//! `kubectl dr verify`: proves a backup is intact (sizes and sha256 of every part), that a
//! key opens it (full decryption, nothing written to disk), and how its row counts compare
//! with a live or restored database.

use clap::Args;
use drkit::catalog;
use drkit::cli::{CheckFailed, IdentityArgs, StoreArgs};
use drkit::engine::registry::RestoreFlags;
use drkit::engine::{redact_url, EngineFailed, RestoreCommon, RunKind};
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
/// `latest` is the newest complete, trusted backup. When it had to pass over newer
/// backups (damaged, or refused by their signature), it still verifies the one it chose
/// but exits 1, so a script learns that the newest backup is unusable.
///
/// Examples:
///   kubectl dr verify latest --target prod
///   kubectl dr verify latest --engine vault --identity key.txt --against https://vault:8200
///   kubectl dr verify 20261122T020000.412Z-7f3a9c --identity key.txt \
///     --against postgres://postgres@127.0.0.1:5432/app --max-diff 1%
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyCmd {
    /// Backup id, or `latest` (not with --wal).
    #[arg(required_unless_present = "wal", conflicts_with = "wal")]
    backup: Option<String>,

    /// PostgreSQL point-in-time recovery: check the WAL archive of --target instead of a
    /// backup. Every WAL file from the oldest physical base backup on must be there, its
    /// signed index entry trusted and its object's size and sha256 as recorded, and each
    /// timeline's history archived; prints the recoverable window. Exit 1 names a gap.
    #[arg(long)]
    wal: bool,

    #[command(flatten)]
    filter: FilterArgs,

    #[command(flatten)]
    identity: IdentityArgs,

    /// Server to compare counts with. PostgreSQL: postgres://user@host:port[/db], password
    /// from PGPASSWORD or PGPASSWORD_FILE; without a database in the URL, each backed-up
    /// database is compared with the database of the same name. Vault/OpenBao:
    /// http(s)://vault:8200, token from VAULT_TOKEN or VAULT_TOKEN_FILE; compares secrets
    /// engines, auth methods, policies and kv secrets. ClickHouse: http(s)://host:8123,
    /// CLICKHOUSE_USER and CLICKHOUSE_PASSWORD(_FILE); per-table counts, TTL-aware. Redis:
    /// redis://[user@]host:6379 (rediss:// for TLS), REDIS_PASSWORD(_FILE); keys and
    /// expires per logical database.
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
    /// Newer backups `latest` passed over (damaged or untrusted).
    passed_over: usize,
}

impl VerifyCmd {
    pub async fn run(
        self,
        store: &StoreArgs,
        trust: &catalog::Trust,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        if self.wal {
            return super::pitr::verify_wal(
                store,
                self.filter.target.first().map(String::as_str),
                trust,
                self.output,
            )
            .await;
        }
        let identities = self.identity.load()?;
        let store = store.open().await?;
        let store: &dyn ReadStore = store.as_ref();
        let (manifest, passed_over) = catalog::resolve_noting_skipped(
            store,
            self.backup.as_deref().unwrap_or("latest"),
            &self.filter.filter()?,
            trust,
        )
        .await?;
        let table = self.output == Format::Table;
        // The server first: a typo in --against must not cost a full decryption pass.
        let mut against = match &self.against {
            Some(url) => {
                let common = RestoreCommon {
                    to: url.clone(),
                    database: self.database.clone(),
                    clean: false,
                    max_diff: self.max_diff,
                    run: RunKind::Single,
                    first: true,
                };
                let mut sink = RestoreFlags::default()
                    .sink(&manifest.engine, &common)
                    .map_err(|source| EngineFailed {
                        doing: format!("--against {}", redact_url(url)),
                        source,
                    })?;
                sink.probe(&manifest).await.map_err(|source| EngineFailed {
                    doing: format!("checking --against {url} before verifying"),
                    source,
                })?;
                Some(sink)
            }
            None => None,
        };
        if table {
            eprintln!(
                "verifying {} ({} part(s))",
                manifest.backup_ref(),
                manifest.parts.len()
            );
        }

        let mut parts = Vec::new();
        for part in &manifest.parts {
            let result = verify::check_part(
                store,
                &manifest,
                part,
                identities.as_ref().map(drkit::engine::registry::decrypt),
                progress,
            )
            .await;
            match &result {
                // Wrong key or an unreachable store: the backup may be fine; say what to fix
                // (once: the error is the message, no FAILED line before it).
                Err(e) if !e.is_check_failure() => {}
                Ok(()) if table => drkit::cli::print_line(format_args!(
                    "ok      {} ({})",
                    part.name,
                    output::human_bytes(part.ciphertext_bytes)
                ))?,
                Err(e) if table => {
                    drkit::cli::print_line(format_args!("FAILED  {}: {e}", part.name))?
                }
                _ => {}
            }
            match result {
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

        let counts: Vec<DatabaseCounts> = match &mut against {
            Some(sink) => sink
                .live_counts(&manifest)
                .await
                .map_err(|source| EngineFailed {
                    doing: "counting what --against holds".into(),
                    source,
                })?
                .into_iter()
                .map(|c| DatabaseCounts::new(&c.heading, c.against, self.max_diff, c.rows))
                .collect(),
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
                    engine: manifest.engine.to_string(),
                    target: manifest.target.clone(),
                    decrypted: identities.is_some(),
                    ok,
                    parts,
                    counts,
                    passed_over,
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
        if passed_over > 0 {
            return Err(CheckFailed(format!(
                "backup {} is intact, but `latest` passed over {passed_over} newer backup(s) of {}/{} that are damaged or untrusted: the newest backup is not usable (kubectl dr list --include-incomplete shows why)",
                manifest.backup_ref(),
                manifest.engine,
                manifest.target
            ))
            .into());
        }
        Ok(())
    }
}
