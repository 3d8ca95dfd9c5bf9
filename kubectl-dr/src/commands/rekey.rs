//! `kubectl dr rekey`: re-encrypts retained backups to a new recipient list, for a leaked
//! or retired identity. The library's [`drkit::rekey`] does the streaming and the careful
//! order of writes; this command chooses the backups, asks, and reports.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use drkit::catalog::{self, Manifest, Trust};
use drkit::cli::{IdentityArgs, RecipientArgs, SigningArgs, StoreArgs};
use drkit::progress::Progress;
use drkit::rekey::{Outcome, Rekey};
use serde::Serialize;

use super::FilterArgs;
use crate::output::{self, Format};

/// Re-encrypt backups to new age recipients (a leaked or retired identity).
///
/// Each part streams from the store through decryption with --identity (the old key) and
/// encryption to --recipient (the new keys) back into the store under a new name: no
/// plaintext touches a disk. A new manifest, signed with --signing-key, commits the new
/// parts; the old parts are deleted only after the new manifest and every new part
/// verified. Interrupted anywhere, every backup stays restorable with the old key or the
/// new one, and `list` stays consistent; run the same command again to finish (backups
/// already encrypted to exactly these recipients are only tidied).
///
/// Backups whose objects are under S3 Object Lock (or a legal hold) are refused and
/// reported with their retain-until date: their old parts could not be removed.
///
/// With --all, the PostgreSQL WAL archives under --target (point-in-time recovery) are
/// re-encrypted too, file by file, each entry re-signed (the old signature kept as .prev
/// until the new entry is in place).
///
/// The signing key is the worker's (DR_SIGNING_KEY_FILE); its public key must be among
/// --signer / DR_SIGNERS, or the rekeyed backups would be refused afterwards.
///
/// Examples:
///   kubectl dr rekey --all --identity old.txt --recipient age1new… --signing-key worker.key
///   kubectl dr rekey latest --target prod -i old.txt -r age1new… -r age1spare… --dry-run
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RekeyCmd {
    /// Backup id, or `latest`; or --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    backup: Option<String>,

    /// Every complete backup (of --engine/--target, if given).
    #[arg(long)]
    all: bool,

    #[command(flatten)]
    filter: FilterArgs,

    /// The old key: opens the parts.
    #[command(flatten)]
    identity: IdentityArgs,

    /// The new keys: the parts are encrypted to these.
    #[command(flatten)]
    recipients: RecipientArgs,

    /// Signs the new manifests.
    #[command(flatten)]
    signing: SigningArgs,

    /// Show which backups would be rekeyed, change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Do not ask before rekeying.
    #[arg(long, short = 'y')]
    yes: bool,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Row {
    backup: String,
    #[serde(flatten)]
    outcome: Outcome,
    seconds: f64,
}

impl RekeyCmd {
    pub async fn run(
        self,
        store: &StoreArgs,
        trust: &Trust,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let identities = self.identity.require()?;
        let settings = drkit::pipeline::encode::EncodeSettings {
            recipients: self.recipients.load()?,
            compression: catalog::Compression::None,
            zstd_level: 1,
            zstd_threads: 0,
            signing: self.signing.load()?,
        };
        let Some(key) = settings.signing.clone() else {
            anyhow::bail!("a rekey writes new manifests and must sign them: pass --signing-key with the worker's minisign secret key (or set DR_SIGNING_KEY_FILE)");
        };
        anyhow::ensure!(
            trust.signers.ids().any(|id| id == key.key_id()),
            "the signing key {} is not among the trusted signers ({}): the rekeyed backups would be refused afterwards; add its public key {} to --signer / DR_SIGNERS",
            key.key_id(),
            trust.signers.ids().collect::<Vec<_>>().join(", "),
            key.public_key()
        );
        let store = store.open().await?;
        let manifests = self.choose(store.as_ref(), trust).await?;
        // With --all, the WAL archives under the filter go too (point-in-time recovery).
        let filter = self.filter.filter()?;
        let wal_targets: Vec<String> = if self.all
            && filter.engine.as_deref().is_none_or(|e| e == "postgres")
        {
            drkit::engine::postgres::wal::prune::archives(store.as_ref(), filter.target.as_deref())
                .await?
                .into_keys()
                .collect()
        } else {
            Vec::new()
        };
        let wal_settings = settings.clone();
        let shown: Vec<String> = manifests
            .iter()
            .map(|m| m.backup_ref().to_string())
            .collect();
        eprintln!(
            "rekey {} backup(s) to {} recipient(s):",
            shown.len(),
            settings.recipients.len()
        );
        for s in &shown {
            eprintln!("  {s}");
        }
        for t in &wal_targets {
            eprintln!("  the WAL archive of postgres/{t}");
        }
        if self.dry_run {
            eprintln!("dry run: nothing changed");
            return Ok(());
        }
        if !self.yes {
            super::confirm(
                "rekey deletes each backup's old parts once the new ones verified",
                &format!(
                    "Re-encrypt {} backup(s); the old key will no longer open them.",
                    shown.len()
                ),
                "rekey",
            )?;
        }
        let rekey = Rekey {
            store: store.as_ref(),
            identities: &identities,
            settings,
            signers: trust.signers.clone(),
            cancel: drkit::shutdown::on_signals(),
            progress,
        };
        let mut rows = Vec::new();
        for (i, m) in manifests.iter().enumerate() {
            let b = m.backup_ref().to_string();
            let started = Instant::now();
            let outcome = rekey.run(m).await.with_context(|| {
                format!(
                    "rekeying {b} failed; it is still restorable with the old key; {} backup(s) before it are done. Fix the cause and run the same command again",
                    i
                )
            })?;
            let seconds = started.elapsed().as_secs_f64();
            let said = match &outcome {
                Outcome::Rekeyed {
                    parts,
                    stored_bytes,
                } => format!(
                    "rekeyed {b}: {parts} part(s), {} in {seconds:.1}s",
                    output::human_bytes(*stored_bytes)
                ),
                Outcome::AlreadyDone { removed } => format!(
                    "{b} is already encrypted to these recipients ({removed} leftover object(s) removed)"
                ),
                Outcome::Held { hold } => format!("NOT rekeyed {b}: held by {hold}"),
                Outcome::Referenced { by } => format!(
                    "NOT rekeyed {b}: incremental backups refer to its parts ({}); rekey them first",
                    by.join(", ")
                ),
            };
            eprintln!("==> {}/{} {said}", i + 1, manifests.len());
            rows.push(Row {
                backup: b,
                outcome,
                seconds,
            });
        }
        for t in &wal_targets {
            let done = drkit::engine::postgres::wal::rekey::rekey(
                store.as_ref(),
                t,
                &identities,
                &wal_settings,
                trust,
                &rekey.cancel,
            )
            .await
            .with_context(|| format!("rekeying the WAL archive of postgres/{t} failed; the files before the failing one are done, the rest still open with the old key; run the same command again"))?;
            eprintln!(
                "==> WAL postgres/{t}: {} file(s) re-encrypted, {} done before, {} held by Object Lock",
                done.rekeyed,
                done.already,
                done.held.len()
            );
            anyhow::ensure!(
                done.held.is_empty(),
                "WAL files of postgres/{t} under Object Lock were not rekeyed: {}",
                done.held.join(", ")
            );
        }
        if self.output != Format::Table {
            output::print_structured(self.output, &rows)?;
        }
        let referenced: Vec<&str> = rows
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Referenced { .. }))
            .map(|r| r.backup.as_str())
            .collect();
        anyhow::ensure!(
            referenced.is_empty(),
            "{} backup(s) are bases of incremental backups that were not rekeyed, and were left as they are: {}; rekey the incremental ones first (`rekey --all` does, newest first)",
            referenced.len(),
            referenced.join(", ")
        );
        let held: Vec<&Row> = rows
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Held { .. }))
            .collect();
        anyhow::ensure!(
            held.is_empty(),
            "{} backup(s) are under Object Lock and were not rekeyed (their old parts could not be deleted): {}; rekey them after their retain-until date, or let retention delete them",
            held.len(),
            held.iter()
                .map(|r| r.backup.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    /// The backups to rekey: one by id or `latest`, or every complete one under the
    /// filter (each manifest's signature judged by `trust`: a forgery is never re-signed).
    async fn choose(
        &self,
        store: &dyn drkit::store::ReadStore,
        trust: &Trust,
    ) -> anyhow::Result<Vec<Manifest>> {
        if let Some(selector) = &self.backup {
            return Ok(vec![
                super::resolve(store, selector, &self.filter, trust).await?,
            ]);
        }
        let filter = self.filter.filter()?;
        let scanned = catalog::scan(store, &filter).await?;
        let inspected = catalog::inspect_all(
            store,
            scanned,
            chrono::Utc::now(),
            catalog::DEFAULT_MAX_CLOCK_SKEW,
            trust,
        )
        .await?;
        let mut out = Vec::new();
        for b in inspected {
            match b.manifest {
                Some(m) => out.push(m),
                None if b.status == catalog::Status::Damaged => eprintln!(
                    "skipping {}: {}",
                    b.scanned.backup,
                    b.problem.as_deref().unwrap_or("damaged")
                ),
                None => {}
            }
        }
        anyhow::ensure!(!out.is_empty(), "no complete backup matches {filter}");
        // Newest first: an incremental backup stands alone once rekeyed, which frees its
        // base to be rekeyed after it in the same run.
        out.reverse();
        Ok(out)
    }
}
