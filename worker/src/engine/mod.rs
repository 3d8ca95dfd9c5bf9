//! Database engines. Each engine module knows how to dump its database into parts, how to
//! restore them and how to count what it holds; the pipeline and the store know nothing
//! about databases.
//!
//! Two roles, one trait each: [`Source`] (the backup side: dump into a [`BackupRun`]) and
//! [`Sink`] (the restore side: probe, plan, restore, count). Both binaries drive every
//! engine through them; [`registry`] is the only list of engines.
//!
//! Adding an engine (the `sqlite` engine was added this way, as the example; see
//! ARCHITECTURE.md):
//! - `catalog/kind.rs`: its [`Engine`] variant and its [`PartFormat`] variants (the names
//!   manifests record; the compiler then points at every match in [`registry`]);
//! - `engine/<name>/mod.rs`: the module doc, and its `Facts` struct if it records any
//!   (serde, written with [`Facts::of`], read with [`Facts::read`]; values stay strings on
//!   the wire, see [`crate::catalog::facts`]);
//! - `engine/<name>/source.rs`: the `worker backup <name>` flags (a `clap::Args` struct with
//!   its own help heading) whose `source()` builds the [`Source`];
//! - `engine/<name>/sink.rs`: the `kubectl dr restore` flags (own heading, own group id, a
//!   `given()` so other engines refuse them) whose `sink()` builds the [`Sink`], whose
//!   [`Sink::plan`] returns the [`Planned`] restore;
//! - `engine/<name>/scratch.rs`, if the drill can restore it: its `drill_steps` and their
//!   [`scratch::Claim`]s;
//! - in [`registry`]: a `BackupCommand` variant, a `RestoreFlags` field with its arms, its
//!   arms in `steps_of`, `drills`/`drill_steps` and `in_cluster`, and its content check if
//!   the format can check itself;
//! - `manifests/<name>/` (a kustomize component with its CronJob), `tests/it/<name>.rs`,
//!   a README section and its rows in docs/FORMAT.md.
//!
//! Everything else (the store, the pipeline, the commit and its read-back, the catalog,
//! `list`, the integrity pass and [`crate::verify::Verified`], the restore run of
//! [`crate::rebuild`] behind `restore`, `restore --all` and the drill, prune, exit codes) is
//! shared and does not change.
//!
//! Every engine's backup goes through a [`BackupRun`], which owns the one rule that makes a
//! backup trustworthy: parts first, manifest last. Until [`BackupRun::commit`] writes
//! `manifest.json`, the backup does not exist for `list`, `verify` or `restore`. Each
//! store write is durable before it returns (the store checks what it stored), and the
//! commit reads the manifest back: only then is a backup reported as committed.

pub mod child;
pub mod clickhouse;
pub mod command;
pub mod kubernetes;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod scratch;
pub mod sqlite;
pub mod step;
pub mod vault;

pub use step::{RunKind, Step};

use std::io::Write;

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::catalog::{
    self, BackupId, BackupRef, CatalogError, Engine, Facts, Manifest, Part, PartFormat,
};
use crate::pipeline::encode::{self, EncodeError, EncodeSettings, SourceError};
use crate::store::{StoreError, WriteStore};

/// The error a [`Source`] fails with: the engine's own typed error, boxed so the one backup
/// path can carry any engine's (`downcast_ref` finds it again).
pub type SourceFailure = Box<dyn std::error::Error + Send + Sync>;

/// An engine's error with what the command was doing. The engine's own error stays in the
/// chain (a boxed error turned into `anyhow::Error` directly would hide its type, and with it
/// whether it is a failed check: exit 1), and each cause is printed once.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct EngineFailed {
    /// What the command was doing, e.g. "checking --against URL before verifying".
    pub doing: String,
    /// The engine's error.
    #[source]
    pub source: SourceFailure,
}

/// What a dump reports for the manifest besides its parts.
#[derive(Debug, Clone, Default)]
pub struct DumpOutcome {
    /// The source server's own version string.
    pub server_version: String,
    /// Engine-specific facts (see docs/FORMAT.md), from the engine's struct with
    /// [`Facts::of`].
    pub facts: Facts,
}

/// The backup role of an engine: a configured source that dumps itself into a
/// [`BackupRun`] as one or more parts. Built from the engine's flags (its `source.rs`); the
/// pipeline, the store and the commit know nothing of it.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// Where the data comes from, for logs (never with a secret).
    fn describe(&self) -> String;

    /// Stores every part into `run`; the caller commits only when this succeeded.
    ///
    /// # Errors
    /// The engine's own error: nothing may be committed then.
    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure>;
}

/// The one backup path of every engine: a fresh [`BackupRun`], the source's dump, the
/// commit (manifest last, read back). Returns the committed manifest.
///
/// # Errors
/// [`BackupFailed`] with the step that failed; nothing is committed then.
pub async fn backup(
    store: &dyn WriteStore,
    engine: Engine,
    target: &str,
    settings: EncodeSettings,
    source: &dyn Source,
    cancel: CancellationToken,
) -> Result<Manifest, BackupFailed> {
    let run = BackupRun::start(store, engine, target, settings, cancel)
        .map_err(|e| BackupFailed::Start(e.into()))?;
    let backup = run.backup().clone();
    tracing::info!(backup = %backup, store = store.location(), source = %source.describe(), "backup started");
    let outcome = source
        .dump(&run)
        .await
        .map_err(|source| BackupFailed::Dump {
            backup: backup.clone(),
            source,
        })?;
    let manifest = run
        .commit(outcome.server_version, outcome.facts)
        .await
        .map_err(|source| BackupFailed::Commit {
            backup: backup.clone(),
            source,
        })?;
    tracing::info!(
        backup = %backup,
        parts = manifest.parts.len(),
        stored_bytes = manifest.own_bytes(),
        referenced_bytes = manifest.size_bytes() - manifest.own_bytes(),
        seconds = (manifest.finished_at - manifest.started_at).num_milliseconds() as f64 / 1000.0,
        "backup committed"
    );
    Ok(manifest)
}

/// Why a backup did not commit.
#[derive(Debug, thiserror::Error)]
pub enum BackupFailed {
    /// The backup could not start (a bad target name).
    #[error("cannot start the backup")]
    Start(#[source] SourceFailure),
    /// The engine's dump failed.
    #[error("backup {backup} failed; nothing was committed and earlier backups are untouched")]
    Dump {
        /// The backup that failed.
        backup: BackupRef,
        /// The engine's error.
        #[source]
        source: SourceFailure,
    },
    /// The commit failed; the error says whether the backup stays invisible.
    #[error("committing backup {backup} failed")]
    Commit {
        /// The backup that failed.
        backup: BackupRef,
        /// Why the commit failed.
        #[source]
        source: CommitError,
    },
}

/// What a restore will do, decided before anything changes: the lines to show, the
/// confirmation a destructive plan needs, and the restore itself, which exists only as the
/// outcome of a plan (so a restore without one cannot be written).
pub struct RestorePlan<'m> {
    /// Shown as they are (e.g. `plan: …`, `note: …`).
    pub lines: Vec<String>,
    /// Set when the plan drops or replaces data.
    pub confirm: Option<Confirm>,
    /// Parts the restore will load that were not needed to plan it: each is verified before
    /// the restore starts.
    pub more_parts: Vec<&'m crate::catalog::Part>,
    /// The restore as planned.
    pub restore: Box<dyn Planned>,
}

impl std::fmt::Debug for RestorePlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestorePlan")
            .field("lines", &self.lines)
            .field("confirm", &self.confirm)
            .finish_non_exhaustive()
    }
}

/// What every step of a restore hands its engine: where the parts are, the keys that open
/// them, where progress goes.
#[derive(Clone, Copy)]
pub struct RestoreCtx<'a> {
    /// The store the backup is in.
    pub store: &'a dyn crate::store::ReadStore,
    /// The private keys.
    pub identities: &'a crate::pipeline::keys::Identities,
    /// Byte progress of long reads.
    pub progress: &'a dyn crate::progress::Progress,
    /// Lines a person must see (e.g. a node to unseal).
    pub say: &'a (dyn for<'s> Fn(&'s str) + Sync),
}

impl RestoreCtx<'_> {
    /// The plaintext of a verified part, and its progress bar (see
    /// [`crate::verify::open_plaintext`]).
    ///
    /// # Errors
    /// [`crate::verify::VerifyError`]: the store, a wrong key.
    pub async fn open(
        &self,
        part: crate::verify::Verified<'_>,
    ) -> Result<
        (
            crate::pipeline::decode::PlainReader,
            std::sync::Arc<dyn crate::progress::ProgressBar>,
        ),
        crate::verify::VerifyError,
    > {
        crate::verify::open_plaintext(self.store, part, self.identities, self.progress).await
    }

    /// Tells a person `line`.
    pub fn say(&self, line: &str) {
        (self.say)(line);
    }
}

/// The verified parts one restore reads: never empty, the lead (the first part
/// [`Sink::first_parts`] named) first.
#[derive(Debug, Clone)]
pub struct VerifiedParts<'m>(Vec<crate::verify::Verified<'m>>);

impl<'m> VerifiedParts<'m> {
    /// The parts, the lead first.
    ///
    /// # Errors
    /// An engine that named no part to restore (a bug in it).
    pub fn new(parts: Vec<crate::verify::Verified<'m>>) -> Result<Self, SourceFailure> {
        if parts.is_empty() {
            return Err(
                "the engine named no part to restore; this is a bug, please report it".into(),
            );
        }
        Ok(VerifiedParts(parts))
    }

    /// The part the engine named first (the database, the snapshot, the schema).
    pub fn lead(&self) -> crate::verify::Verified<'m> {
        self.0[0]
    }

    /// The backup.
    pub fn manifest(&self) -> &'m Manifest {
        self.0[0].manifest()
    }

    /// Every part, the lead first.
    pub fn all(&self) -> &[crate::verify::Verified<'m>] {
        &self.0
    }
}

/// A restore as its plan decided it, holding what the plan found. Built only by
/// [`Sink::plan`]; consumed by its one run.
#[async_trait::async_trait]
pub trait Planned: Send + Sync {
    /// As [`Sink::rolls_back`], for the plan's `more_parts` (the answer may depend on what
    /// the plan found, e.g. whether the restore creates every database). Default: false.
    fn rolls_back(&self, _part: &crate::catalog::Part) -> bool {
        false
    }

    /// Runs the restore and returns the counts to compare.
    ///
    /// # Errors
    /// Load errors, a part that fails its check while it streams (exit 1).
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure>;
}

/// A confirmation a person must give (or `--yes`).
#[derive(Debug, Clone)]
pub struct Confirm {
    /// What is refused without a terminal to ask, e.g. "this restore drops objects in …".
    pub what: String,
    /// The question.
    pub prompt: String,
    /// The word to type.
    pub word: String,
}

/// The counts a restore compares: what the backup recorded against what the target holds.
#[derive(Debug)]
pub struct RestoredCounts {
    /// What of the backup is compared, for the report's heading: the backup and, where it
    /// has several, the database (`postgres/prod/ID db app`; `clickhouse/signoz/ID db
    /// logs → logs_copy` after a rename).
    pub heading: String,
    /// Where it was restored to.
    pub against: String,
    /// One row per table.
    pub rows: Vec<crate::verify::CountRow>,
}

/// Flags every restore takes, whatever the engine.
#[derive(Debug, Clone, Default)]
pub struct RestoreCommon {
    /// `--to`.
    pub to: String,
    /// `--database`.
    pub database: Option<String>,
    /// `--clean`.
    pub clean: bool,
    /// `--max-diff`.
    pub max_diff: crate::verify::MaxDiff,
    /// How the restore is run.
    pub run: RunKind,
    /// The first step of its backup (see [`Step::first`]); true outside a run.
    pub first: bool,
}

/// The restore role of an engine, built from `--to` and the engine's flags. The run
/// ([`crate::rebuild`]) drives every engine through the same steps: [`Sink::probe`], the
/// integrity pass over [`Sink::first_parts`], [`Sink::plan`] (and the pass over its
/// `more_parts`), a confirmation, [`Planned::restore`] on what the plan returned. Parts
/// reach an engine only as [`crate::verify::Verified`].
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Contacts the destination and checks it is this engine's kind of server, within
    /// [`connect_timeout`], before anything is decrypted.
    ///
    /// # Errors
    /// Unreachable, silent, refusing server.
    async fn probe(&mut self, manifest: &Manifest) -> Result<(), SourceFailure>;

    /// Counts what the destination holds now and compares it with the backup's counts
    /// (`verify --against`: a live or an already restored server; nothing is changed).
    ///
    /// # Errors
    /// Connection and query errors, a `--database` the backup does not hold.
    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure>;

    /// The parts needed to plan the restore (and restored with it).
    ///
    /// # Errors
    /// A backup without them, or an ambiguous choice (`--database`).
    fn first_parts<'m>(
        &self,
        manifest: &'m Manifest,
    ) -> Result<Vec<&'m crate::catalog::Part>, SourceFailure>;

    /// True when a restore of `part` that fails at any point, the stream cut or damaged in
    /// its very last chunk included, leaves the destination as it was (one transaction, or a
    /// database the restore created and drops again). Such a part is read once, checked as
    /// it streams ([`crate::verify::Verified::as_it_streams`]); others are checked in a pass
    /// before the destination is touched. Asked for [`Sink::first_parts`]; the plan's
    /// `more_parts` are asked of [`Planned::rolls_back`]. Default: false.
    fn rolls_back(&self, _part: &crate::catalog::Part) -> bool {
        false
    }

    /// Inspects the destination and decides what the restore will do; changes nothing.
    /// `first` holds the parts [`Sink::first_parts`] named, verified.
    ///
    /// # Errors
    /// A destination the restore would damage without `--clean`, a wrong key, bad flags.
    async fn plan<'m>(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure>;
}

/// Describes a part before it is stored.
#[derive(Debug, Clone)]
pub struct PartSpec {
    /// Stable name within the backup, e.g. `db-app`.
    pub name: String,
    /// Plaintext format.
    pub format: PartFormat,
    /// File extension of the plaintext, e.g. `pgdump` or `sql`.
    pub extension: &'static str,
    /// The database the part holds, for engines with databases.
    pub database: Option<String>,
    /// The section of a split database dump (`worker backup postgres --jobs`).
    pub section: Option<crate::catalog::Section>,
}

/// One backup in progress.
pub struct BackupRun<'a> {
    store: &'a dyn WriteStore,
    settings: EncodeSettings,
    cancel: CancellationToken,
    engine: Engine,
    backup: BackupRef,
    started_at: chrono::DateTime<Utc>,
    /// Parts stored so far; several may be stored at once (`store_part` takes `&self`).
    parts: std::sync::Mutex<Vec<Part>>,
    /// The backup an incremental one was compared with.
    base: std::sync::Mutex<Option<BackupId>>,
}

impl<'a> BackupRun<'a> {
    /// Starts a backup of `engine`/`target` with a fresh id.
    ///
    /// # Errors
    /// [`CatalogError::BadName`] for a target that cannot be a key segment.
    pub fn start(
        store: &'a dyn WriteStore,
        engine: Engine,
        target: &str,
        settings: EncodeSettings,
        cancel: CancellationToken,
    ) -> Result<Self, CatalogError> {
        catalog::validate_name("engine", engine.as_str())?;
        catalog::validate_name("target", target)?;
        let started_at = Utc::now();
        Ok(BackupRun {
            store,
            settings,
            // Its own token under the signals' one: a failed part can stop its siblings
            // ([`BackupRun::all_or_stop`]) without looking like a shutdown to anyone else.
            cancel: cancel.child_token(),
            backup: BackupRef {
                engine: engine.to_string(),
                target: target.to_string(),
                id: BackupId::new(started_at),
            },
            engine,
            started_at,
            parts: std::sync::Mutex::new(Vec::new()),
            base: std::sync::Mutex::new(None),
        })
    }

    /// Runs `tasks` (each storing parts of this run) `limit` at a time. On the first
    /// failure the run is cancelled, so the others stop early (their producers killed,
    /// their uploads aborted), and every task is still awaited: an upload dropped half-way
    /// would skip its own cleanup and leave a partial object or an open multipart upload
    /// behind. Returns the results in completion order, or the first error.
    ///
    /// # Errors
    /// The first task's error; the siblings' errors (cancellations) are not it.
    pub async fn all_or_stop<T, E, F>(
        &self,
        tasks: impl IntoIterator<Item = F>,
        limit: usize,
    ) -> Result<Vec<T>, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        use futures::StreamExt;
        let mut running = futures::stream::iter(tasks).buffer_unordered(limit.max(1));
        let (mut done, mut first) = (Vec::new(), None);
        while let Some(result) = running.next().await {
            match result {
                Ok(v) => done.push(v),
                Err(e) if first.is_none() => {
                    self.cancel.cancel();
                    first = Some(e);
                }
                Err(_) => {}
            }
        }
        first.map_or(Ok(done), Err)
    }

    /// Where this backup is written.
    pub fn backup(&self) -> &BackupRef {
        &self.backup
    }

    /// Cancelled on shutdown: long producers check it to stop early.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Streams one part into the store; see [`encode::store_part`]. The part is recorded for
    /// the manifest; the producer's facts come back so the engine can record row counts
    /// ([`BackupRun::record_tables`]). Parts may be stored concurrently.
    ///
    /// # Errors
    /// The producer's, encoder's or store's error; the backup must then not be committed.
    pub async fn store_part<T, F>(&self, spec: PartSpec, produce: F) -> Result<T, EncodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Write) -> Result<T, SourceError> + Send + 'static,
    {
        let compression = self.settings.compression;
        let suffix = match compression {
            catalog::Compression::Zstd => ".zst",
            catalog::Compression::None => "",
        };
        let file = format!("{}.{}{suffix}.age", spec.name, spec.extension);
        let key = self.backup.part_key(&file);
        let started = std::time::Instant::now();
        let (stats, facts) =
            encode::store_part(self.store, &key, &self.settings, &self.cancel, produce).await?;
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            part = %spec.name,
            plaintext_bytes = stats.plaintext_bytes,
            stored_bytes = stats.ciphertext_bytes,
            seconds = format!("{secs:.1}"),
            mib_per_s = format!("{:.1}", stats.plaintext_bytes as f64 / 1048576.0 / secs.max(1e-9)),
            "part stored"
        );
        self.parts.lock().expect("parts lock").push(Part {
            name: spec.name,
            file,
            format: spec.format,
            compression,
            ciphertext_bytes: stats.ciphertext_bytes,
            ciphertext_sha256: stats.ciphertext_sha256,
            header_sha256: Some(stats.header_sha256),
            plaintext_bytes: stats.plaintext_bytes,
            database: spec.database,
            tables: Vec::new(),
            section: spec.section,
            partition: None,
            from: None,
        });
        Ok(facts)
    }

    /// The id this backup is stored under.
    pub fn id(&self) -> &BackupId {
        &self.backup.id
    }

    /// The newest complete backup of this run's engine and target: the base an
    /// incremental backup compares with. With a signing key it must carry a valid
    /// signature by that key (a planted manifest must not choose what is left out of
    /// tonight's backup); without one, as any reader judges an unsigned store.
    ///
    /// # Errors
    /// Store errors.
    pub async fn newest_complete(&self) -> Result<Option<Manifest>, CatalogError> {
        let filter = catalog::Filter {
            engine: Some(self.backup.engine.clone()),
            target: Some(self.backup.target.clone()),
        };
        let scanned = catalog::scan(self.store, &filter).await?;
        let trust = match &self.settings.signing {
            Some(key) => catalog::Trust {
                signers: catalog::Signers::of(key),
                allow_unsigned: false,
                enforce: true,
            },
            None => catalog::Trust::report_only(catalog::Signers::default()),
        };
        Ok(catalog::newest_complete(self.store, scanned, &trust)
            .await?
            .0)
    }

    /// Sizes of the objects in a backup's directory, by file name: whether a part to be
    /// referenced is still there, as its manifest recorded it.
    ///
    /// # Errors
    /// Store errors.
    pub async fn objects_of(
        &self,
        backup: &BackupRef,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let dir = format!("{}/", backup.dir());
        Ok(self
            .store
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.key.strip_prefix(&dir)?.to_string(), o.size)))
            .collect())
    }

    /// The recipients this run encrypts to, as the manifest writes them.
    pub fn recipients(&self) -> Vec<String> {
        self.settings
            .recipients
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Makes this an incremental backup of `base`: its unchanged parts are then added
    /// with [`BackupRun::reference`] instead of being stored again.
    pub fn set_base(&self, base: BackupId) {
        *self.base.lock().expect("base lock") = Some(base);
    }

    /// Adds a part of the base (or of a backup the base referenced) without storing it:
    /// the manifest names the backup whose object it is. Call [`BackupRun::set_base`]
    /// first; the commit refuses a reference without a base.
    ///
    /// # Errors
    /// Extending the object's lock failed (with Object Lock, a reference keeps its object
    /// retained as long as this backup's own parts are).
    pub async fn reference(&self, part: Part, holder: BackupId) -> Result<(), StoreError> {
        let key = BackupRef {
            id: holder.clone(),
            ..self.backup.clone()
        }
        .part_key(&part.file);
        self.store.extend_lock(&key).await?;
        tracing::info!(part = %part.name, from = %holder, stored_bytes = part.ciphertext_bytes, "part unchanged: referenced");
        self.parts.lock().expect("parts lock").push(Part {
            from: Some(holder),
            ..part
        });
        Ok(())
    }

    /// Records which table partition a stored part holds.
    pub fn record_partition(&self, part: &str, partition: crate::catalog::Partition) {
        self.amend(part, |p| p.partition = Some(partition));
    }

    /// Records the exact row counts of a stored part.
    pub fn record_tables(&self, part: &str, tables: Vec<crate::catalog::TableCount>) {
        self.amend(part, |p| p.tables = tables);
    }

    /// Changes the entry of a stored part (known once its stream ended).
    fn amend(&self, part: &str, change: impl FnOnce(&mut Part)) {
        if let Some(p) = self
            .parts
            .lock()
            .expect("parts lock")
            .iter_mut()
            .find(|p| p.name == part)
        {
            change(p);
        }
    }

    /// Writes the manifest and reads it back: from this moment the backup exists. A write
    /// whose answer was lost is judged by what the store holds: the manifest there, byte
    /// for byte, is a commit.
    ///
    /// # Errors
    /// [`CommitError`], which says whether the backup stays invisible (prune then removes
    /// its parts) or may be visible.
    pub async fn commit(
        self,
        server_version: String,
        facts: Facts,
    ) -> Result<Manifest, CommitError> {
        let parts = self.parts.into_inner().expect("parts lock");
        let manifest = Manifest {
            format_version: catalog::format_version_for(&parts),
            id: self.backup.id.clone(),
            engine: self.engine,
            target: self.backup.target.clone(),
            started_at: self.started_at,
            finished_at: Utc::now(),
            tool: format!("worker {}", crate::TOOL_VERSION),
            server_version,
            recipients: self
                .settings
                .recipients
                .iter()
                .map(ToString::to_string)
                .collect(),
            parts,
            facts,
            base: self.base.into_inner().expect("base lock"),
        };
        // A manifest readers would call damaged must never be written as a commit.
        manifest.check(&self.backup).map_err(CommitError::Invalid)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        // The signature goes first: the manifest stays the commit, and a committed
        // manifest never waits for its signature.
        let signed = match &self.settings.signing {
            Some(key) => {
                let sig = key.sign(&json, &self.backup)?;
                let sig_key = self.backup.signature_key();
                self.store
                    .put_bytes(&sig_key, Bytes::from(sig.clone()))
                    .await?;
                Some((sig_key, sig))
            }
            None => {
                tracing::warn!(backup = %self.backup, "--unsigned: this backup is not signed, and readers refuse it unless given --allow-unsigned");
                None
            }
        };
        let key = self.backup.manifest_key();
        let written = self.store.put_bytes(&key, Bytes::from(json.clone())).await;
        // The answer to the write may be lost while the write itself went through (a cut
        // connection, a retry that met the finished object): what the store holds now is
        // the truth, so it is read back either way.
        let back = self
            .store
            .get_bytes(&key, catalog::MAX_MANIFEST_BYTES)
            .await;
        match (written, back) {
            (written, Ok(back)) if back == json => {
                if let Err(e) = written {
                    tracing::warn!(backup = %self.backup, error = %e, "the store reported the manifest write as failed, but the manifest is there, byte for byte: the backup is committed");
                }
            }
            (Ok(()), Ok(back)) | (Err(_), Ok(back)) => {
                return Err(CommitError::ReadBack {
                    key,
                    written: json.len(),
                    read: back.len(),
                })
            }
            (Err(e), Err(StoreError::NotFound { .. })) => return Err(CommitError::Store(e)),
            (Ok(()), Err(e)) | (Err(_), Err(e)) => {
                return Err(CommitError::Unconfirmed { key, source: e })
            }
        }
        if let Some((sig_key, sig)) = signed {
            match self
                .store
                .get_bytes(&sig_key, catalog::signature::MAX_SIGNATURE_BYTES)
                .await
            {
                Ok(back) if back == sig.as_bytes() => {}
                Ok(back) => {
                    return Err(CommitError::ReadBack {
                        key: sig_key,
                        written: sig.len(),
                        read: back.len(),
                    })
                }
                Err(e) => {
                    return Err(CommitError::Unconfirmed {
                        key: sig_key,
                        source: e,
                    })
                }
            }
        }
        Ok(manifest)
    }
}

/// Why a backup could not be committed. Nothing is reported as committed after any of
/// these.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Writing the signature or the manifest failed, and no manifest is there: the
    /// backup stays invisible.
    #[error("{0}; no manifest was written, so the backup stays invisible")]
    Store(#[from] StoreError),
    /// The manifest (or its signature) was written, or may have been, but could not be
    /// read back to confirm it: the backup may be visible.
    #[error("the backup may be visible, but {key} could not be read back to confirm the commit ({source}); run `kubectl dr verify` on its id: if it verifies it is complete, otherwise prune removes it")]
    Unconfirmed {
        /// The object that could not be read back.
        key: String,
        /// Why.
        source: StoreError,
    },
    /// The manifest could not be signed.
    #[error(transparent)]
    Sign(#[from] crate::catalog::signature::SignatureError),
    /// The manifest would fail its own check (a bug).
    #[error("the manifest would be invalid ({0}); this is a bug, please report it")]
    Invalid(String),
    /// The manifest read back differs from what was written.
    #[error("{key} reads back different from what was written ({read} bytes read, {written} written): readers refuse such a backup as damaged (its signature does not match); check the store's free space and health")]
    ReadBack {
        /// The object key.
        key: String,
        /// Bytes written.
        written: usize,
        /// Bytes read back.
        read: usize,
    },
}

/// How long a server may take to answer a first request before a command gives up
/// (`DR_CONNECT_TIMEOUT`, a humantime duration; default 15 s). A wrong port that accepts
/// connections and never answers (ClickHouse's 8123 given as a PostgreSQL URL) must fail
/// fast with a message, not hang.
pub fn connect_timeout() -> std::time::Duration {
    std::env::var("DR_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(std::time::Duration::from_secs(15))
}

// A floor lower, where the streaming stages use them too.
pub use crate::pipeline::stall_timeout;
pub(crate) use crate::pipeline::{stalled_source, transport_reason};

/// The reason given when a server stays silent for [`connect_timeout`].
pub(crate) fn silent_server(kind: &str) -> String {
    format!(
        "no answer within {} s: is a {kind} server listening there? (a port that accepts connections but never answers, e.g. another service's port, looks like this; DR_CONNECT_TIMEOUT sets the wait)",
        connect_timeout().as_secs_f32()
    )
}

/// A URL with its password (if any) replaced, safe for messages, reports and state files.
/// Text that is not a URL (`cluster`, `-`) stays as it is, unless it holds an `@` (a
/// malformed URL may still carry a password).
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) if text.contains('@') => "(unparsable URL)".to_string(),
        Err(_) => text.to_string(),
    }
}

/// Makes any database name usable inside an object name: bytes outside `[A-Za-z0-9._-]`
/// become `%XX`, so `my db/2` and `my_db_2` can never collide.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        local::LocalStore, BodyChunk, ObjectMeta, ObjectReader, PendingUpload, ReadStore,
    };

    /// How [`Lossy`] treats a manifest write.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Manifests {
        /// The write happens; the answer is lost (the caller hears an error).
        AnswerLost,
        /// The write never happens, and the caller hears an error.
        Failed,
        /// The write happens, but reading it back fails.
        Unreadable,
    }

    /// A local store whose manifest writes go wrong as told.
    #[derive(Debug)]
    struct Lossy {
        inner: LocalStore,
        manifests: Manifests,
    }

    fn lost(key: &str) -> StoreError {
        StoreError::Unreachable {
            location: "lossy".into(),
            detail: format!("connection reset while writing {key}"),
        }
    }

    #[async_trait::async_trait]
    impl ReadStore for Lossy {
        fn location(&self) -> &str {
            self.inner.location()
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
            if self.manifests == Manifests::Unreadable && key.ends_with("manifest.json") {
                return Err(lost(key));
            }
            self.inner.get(key).await
        }
        async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
            self.inner.pending_uploads(prefix).await
        }
    }

    #[async_trait::async_trait]
    impl WriteStore for Lossy {
        async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
            if !key.ends_with("manifest.json") {
                return self.inner.put_bytes(key, data).await;
            }
            match self.manifests {
                Manifests::AnswerLost => {
                    self.inner.put_bytes(key, data).await?;
                    Err(lost(key))
                }
                Manifests::Failed => Err(lost(key)),
                Manifests::Unreadable => self.inner.put_bytes(key, data).await,
            }
        }
        async fn put_stream(
            &self,
            key: &str,
            body: tokio::sync::mpsc::Receiver<BodyChunk>,
            cancel: &CancellationToken,
        ) -> Result<u64, StoreError> {
            self.inner.put_stream(key, body, cancel).await
        }
    }

    struct Hello;

    #[async_trait::async_trait]
    impl Source for Hello {
        fn describe(&self) -> String {
            "hello".into()
        }
        async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
            let spec = PartSpec {
                name: "stdout".into(),
                format: crate::catalog::PartFormat::CommandStdout,
                extension: "out",
                database: None,
                section: None,
            };
            run.store_part(spec, |w: &mut dyn Write| {
                w.write_all(b"hello\n")?;
                Ok(())
            })
            .await?;
            Ok(DumpOutcome {
                server_version: "test".into(),
                facts: Facts::default(),
            })
        }
    }

    async fn backup_into(manifests: Manifests) -> (Result<Manifest, BackupFailed>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let store = Lossy {
            inner: LocalStore::open(dir.path()).await.unwrap(),
            manifests,
        };
        let settings = EncodeSettings {
            recipients: vec![age::x25519::Identity::generate().to_public()],
            compression: crate::catalog::Compression::Zstd,
            zstd_level: 1,
            zstd_threads: 0,
            signing: None,
        };
        let result = backup(
            &store,
            Engine::Command,
            "lossy",
            settings,
            &Hello,
            CancellationToken::new(),
        )
        .await;
        let listed = store.inner.list("").await.unwrap();
        let visible = listed.iter().any(|o| o.key.ends_with("manifest.json"));
        (result, visible)
    }

    #[tokio::test]
    async fn a_commit_whose_answer_was_lost_is_judged_by_what_the_store_holds() {
        let (result, visible) = backup_into(Manifests::AnswerLost).await;
        assert!(visible);
        assert!(
            result.is_ok(),
            "a committed backup reported failed: {result:?}"
        );

        let (result, visible) = backup_into(Manifests::Failed).await;
        assert!(!visible);
        let err = format!("{:#}", anyhow::Error::new(result.unwrap_err()));
        assert!(err.contains("stays invisible"), "{err}");

        // Written, then unreadable: never called invisible.
        let (result, visible) = backup_into(Manifests::Unreadable).await;
        assert!(visible);
        let err = format!("{:#}", anyhow::Error::new(result.unwrap_err()));
        assert!(!err.contains("invisible"), "{err}");
        assert!(err.contains("may be visible"), "{err}");
    }

    #[test]
    fn encodes_names_without_collisions() {
        assert_eq!(encode_name("app"), "app");
        assert_eq!(encode_name("my db/2"), "my%20db%2F2");
        assert_ne!(encode_name("a b"), encode_name("a_b"));
        assert_eq!(encode_name("..%"), "..%25");
        assert_eq!(encode_name("데이터"), "%EB%8D%B0%EC%9D%B4%ED%84%B0");
    }
}
