//! The catalog: how backups are laid out in a store and how they are found again.
//!
//! Layout (relative to the store's prefix):
//! `<engine>/<target>/<backup-id>/manifest.json` and `<engine>/<target>/<backup-id>/<part file>`.
//!
//! Every backup directory has one [`Status`]:
//! - *incomplete*: no `manifest.json` (still running, or failed); invisible to `latest`.
//! - *damaged*: a `manifest.json` that is too large, does not parse, is of an unknown
//!   format version, describes another backup, has malformed ids, checksums or part names
//!   ([`Manifest::check`]), or is dated further ahead of this machine's clock than the
//!   allowed skew. Never `latest`, never counted by retention, never deleted by prune.
//! - *complete*: everything else: the only backups anything trusts.
//!
//! [`scan`] finds the directories with one listing; [`inspect`] reads and checks a
//! manifest (bounded by [`MAX_MANIFEST_BYTES`]); [`resolve`] turns `ID|latest` into a
//! checked manifest.

pub mod facts;
mod id;
mod kind;
mod manifest;
pub mod signature;

use std::collections::BTreeMap;
use std::fmt;

pub use facts::{Facts, FactsError};
pub use id::{BackupId, BadBackupId};
pub use kind::{Engine, PartFormat};
pub use manifest::{
    format_version_for, part_file_is_valid, Compression, Manifest, Part, Partition, Section,
    TableCount, FORMAT_VERSION,
};
pub use signature::{Signature, Signers, SigningKey, Trust, SIGNATURE_FILE};

use chrono::{DateTime, Duration, Utc};
use futures::stream::{self, StreamExt};

use crate::store::{ReadStore, StoreError};

/// File name of the commit record inside a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Largest manifest read: real ones are kilobytes (a ClickHouse backup of thousands of
/// tables stays far below); anything larger is damaged, and is never read whole.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// How far ahead of this machine's clock a backup may be dated and still be trusted as the
/// newest one (`--max-clock-skew`).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::hours(1);

/// Manifests read at once while listing or planning a prune.
const CONCURRENT_READS: usize = 16;

/// Where one backup lives: engine, target and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupRef {
    /// Engine name (first key segment).
    pub engine: String,
    /// Target name (second key segment).
    pub target: String,
    /// The backup's id (third key segment).
    pub id: BackupId,
}

impl BackupRef {
    /// Directory of the backup, relative to the store prefix, without trailing slash.
    pub fn dir(&self) -> String {
        format!("{}/{}/{}", self.engine, self.target, self.id)
    }

    /// Key of the backup's `manifest.json`.
    pub fn manifest_key(&self) -> String {
        format!("{}/{MANIFEST_FILE}", self.dir())
    }

    /// Key of the manifest's detached signature.
    pub fn signature_key(&self) -> String {
        format!("{}/{SIGNATURE_FILE}", self.dir())
    }

    /// Key of the previous manifest's signature, kept by `rekey` while it swaps manifests.
    pub fn previous_signature_key(&self) -> String {
        format!("{}/{}", self.dir(), signature::PREVIOUS_SIGNATURE_FILE)
    }

    /// Key of one of the backup's parts.
    pub fn part_key(&self, file: &str) -> String {
        format!("{}/{file}", self.dir())
    }
}

impl fmt::Display for BackupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.engine, self.target, self.id)
    }
}

/// Errors while finding or reading backups.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing matches the selector and filter (the text says what was asked).
    #[error(
        "no complete backup matches {0}; run `kubectl dr list --include-incomplete` to see what the store holds"
    )]
    NoBackup(String),
    /// The selector is neither `latest` nor a backup id.
    #[error(transparent)]
    BadId(#[from] BadBackupId),
    /// An `--engine` this build does not know, and the store holds none of its backups.
    #[error("unknown engine {name:?}; known engines: {}", Engine::known_names())]
    UnknownEngine {
        /// The name as given.
        name: String,
    },
    /// `latest` without `--engine`/`--target` in a store of several series (the text lists them).
    #[error("`latest` is ambiguous: the store holds backups of {0}; pass --engine and --target")]
    Ambiguous(String),
    /// An explicitly selected backup whose manifest fails its checks.
    #[error("backup {backup} is damaged: its manifest {key} {reason}; it is never used as `latest` nor counted by prune; pick another backup (kubectl dr list --include-incomplete shows them all)")]
    Damaged {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The object key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backup whose signature the command's [`Trust`] does not accept (forged, altered,
    /// signed by an unknown key, or unsigned).
    #[error("backup {backup} {reason}")]
    Untrusted {
        /// The backup (`engine/target/id`).
        backup: String,
        /// What is wrong with its signature, naming the key id, and what to do.
        reason: String,
    },
    /// Backups match, but every one was skipped as damaged or untrusted: a failed check
    /// (exit 1), since the store holds something where good backups should be.
    #[error("no usable backup matches {what}: {skipped} backup(s) skipped as damaged or untrusted (the warnings above say why; `kubectl dr list --include-incomplete` shows them)")]
    NoneUsable {
        /// What was asked.
        what: String,
        /// How many were skipped.
        skipped: usize,
    },
    /// A manifest of a format version newer than this build reads.
    #[error("manifest {key} has format version {version}, newer than this tool understands ({FORMAT_VERSION}); upgrade kubectl-dr")]
    TooNew {
        /// The object key.
        key: String,
        /// The format version found.
        version: u32,
    },
    /// An engine or target name that cannot be a key segment.
    #[error("invalid {kind} name {name:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")]
    BadName {
        /// What the name is for (engine, target).
        kind: &'static str,
        /// The name as given.
        name: String,
    },
}

impl CatalogError {
    /// True when the backup itself is bad (exit 1), as opposed to a store that could not be
    /// read or a typo (exit 2).
    pub fn is_check_failure(&self) -> bool {
        matches!(
            self,
            CatalogError::Damaged { .. }
                | CatalogError::Untrusted { .. }
                | CatalogError::NoneUsable { .. }
        )
    }
}

/// A name as it may be shown on a terminal: control characters escaped (a table named
/// `esc\x1b[2J` must not clear the screen). Printable text is unchanged.
pub fn printable(name: &str) -> String {
    if !name.contains(char::is_control) {
        return name.to_string();
    }
    name.chars().flat_map(char::escape_default).collect()
}

/// Checks an engine or target name, which becomes a path segment of every key.
///
/// # Errors
/// [`CatalogError::BadName`] when the name could escape its directory or confuse listing.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::BadName {
            kind,
            name: name.to_string(),
        })
    }
}

/// Restricts a scan to one engine and/or target.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this engine's backups.
    pub engine: Option<String>,
    /// Only this target's backups.
    pub target: Option<String>,
}

impl Filter {
    /// The key prefix holding exactly the selected series.
    pub fn list_prefix(&self) -> String {
        match (&self.engine, &self.target) {
            (Some(e), Some(t)) => format!("{e}/{t}/"),
            (Some(e), None) => format!("{e}/"),
            _ => String::new(),
        }
    }

    /// True when `b` is in the selected series.
    pub fn matches(&self, b: &BackupRef) -> bool {
        self.engine.as_ref().is_none_or(|e| *e == b.engine)
            && self.target.as_ref().is_none_or(|t| *t == b.target)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine={} target={}",
            self.engine.as_deref().unwrap_or("*"),
            self.target.as_deref().unwrap_or("*")
        )
    }
}

/// One backup directory found by listing the store.
#[derive(Debug, Clone)]
pub struct ScannedBackup {
    /// Where it lives.
    pub backup: BackupRef,
    /// Sum of the sizes of every object in the directory, manifest included.
    pub size_bytes: u64,
    /// Keys of every object under its directory (the manifest included).
    pub objects: Vec<String>,
    /// False for a backup that never committed (or is still running).
    pub complete: bool,
    /// Size of `manifest.json` as listed, so an oversized one is refused unread.
    pub manifest_bytes: u64,
}

/// The backup a key belongs to and the file name within it, for keys that fit the layout
/// (`<engine>/<target>/<id>/<file>` with valid names); `None` for anything else.
fn parse_key(key: &str) -> Option<(BackupRef, &str)> {
    let mut segs = key.splitn(4, '/');
    let (engine, target, id, file) = (segs.next()?, segs.next()?, segs.next()?, segs.next()?);
    let id = id.parse::<BackupId>().ok()?;
    if validate_name("engine", engine).is_err() || validate_name("target", target).is_err() {
        return None;
    }
    Some((
        BackupRef {
            engine: engine.to_string(),
            target: target.to_string(),
            id,
        },
        file,
    ))
}

/// Lists backup directories (complete and incomplete) with one store listing, sorted by
/// engine, target and id. Keys that do not fit the layout are ignored, so a shared bucket
/// prefix with other files in it is harmless.
///
/// # Errors
/// The store's listing error.
pub async fn scan(
    store: &dyn ReadStore,
    filter: &Filter,
) -> Result<Vec<ScannedBackup>, CatalogError> {
    let objects = store.list(&filter.list_prefix()).await?;
    let mut dirs: BTreeMap<BackupRef, ScannedBackup> = BTreeMap::new();
    for obj in objects {
        let Some((backup, file)) = parse_key(&obj.key) else {
            continue;
        };
        if !filter.matches(&backup) {
            continue;
        }
        let entry = dirs.entry(backup.clone()).or_insert_with(|| ScannedBackup {
            backup,
            size_bytes: 0,
            objects: Vec::new(),
            complete: false,
            manifest_bytes: 0,
        });
        entry.size_bytes = entry.size_bytes.saturating_add(obj.size);
        if file == MANIFEST_FILE {
            entry.complete = true;
            entry.manifest_bytes = obj.size;
        }
        entry.objects.push(obj.key);
    }
    // An engine this build does not know is fine when the store holds its backups (a
    // newer worker wrote them); with none it is most likely a typo, never an empty answer.
    if let Some(engine) = &filter.engine {
        if dirs.is_empty() && !Engine::from(engine.as_str()).is_known() {
            return Err(CatalogError::UnknownEngine {
                name: engine.clone(),
            });
        }
    }
    Ok(dirs.into_values().collect())
}

/// Backup directories that hold nothing but unfinished uploads (a writer that crashed
/// before its first object was complete): `list --include-incomplete` shows them, prune aborts them.
/// Stores that cannot list uploads contribute nothing.
///
/// # Errors
/// The store's error, other than [`StoreError::Unsupported`].
pub async fn scan_pending(
    store: &dyn ReadStore,
    filter: &Filter,
    known: &[ScannedBackup],
) -> Result<Vec<ScannedBackup>, CatalogError> {
    let uploads = match store.pending_uploads(&filter.list_prefix()).await {
        Ok(u) => u,
        Err(StoreError::Unsupported { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut dirs: BTreeMap<BackupRef, ScannedBackup> = BTreeMap::new();
    for upload in uploads {
        let Some((backup, _)) = parse_key(&upload.key) else {
            continue;
        };
        if !filter.matches(&backup) || known.iter().any(|k| k.backup == backup) {
            continue;
        }
        dirs.entry(backup.clone())
            .or_insert_with(|| ScannedBackup {
                backup,
                size_bytes: 0,
                objects: Vec::new(),
                complete: false,
                manifest_bytes: 0,
            })
            .objects
            .push(upload.key);
    }
    Ok(dirs.into_values().collect())
}

/// What a backup directory turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its manifest is present and passed every check: the only kind anything trusts.
    Complete,
    /// No manifest: still running, or failed before its commit.
    Incomplete,
    /// A manifest that fails its checks (see the module doc).
    Damaged,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Complete => "complete",
            Status::Incomplete => "incomplete",
            Status::Damaged => "damaged",
        })
    }
}

/// A scanned backup with its manifest read and checked.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// What the listing found.
    pub scanned: ScannedBackup,
    /// Complete, incomplete or damaged.
    pub status: Status,
    /// The checked manifest of a complete backup.
    pub manifest: Option<Manifest>,
    /// Why a backup is damaged (or untrusted: a refused signature makes it damaged too).
    pub problem: Option<String>,
    /// What the signature beside its manifest says (`None` when the manifest was not read).
    pub signature: Option<Signature>,
}

/// Reads and checks the manifest of one scanned backup; a backup dated more than
/// `max_skew` after `now` is damaged too (a clock running ahead, or a forged id such as
/// `99991231T235959Z-…`, must never become the newest backup).
///
/// # Errors
/// Store errors other than a missing or oversized manifest: an unreadable store is an
/// operational error, never a reason to call a backup damaged.
pub async fn inspect(
    store: &dyn ReadStore,
    scanned: ScannedBackup,
    now: DateTime<Utc>,
    max_skew: Duration,
    trust: &Trust,
) -> Result<Inspected, CatalogError> {
    let damaged = |scanned, problem: String| Inspected {
        scanned,
        status: Status::Damaged,
        manifest: None,
        problem: Some(problem),
        signature: None,
    };
    let incomplete = |scanned| Inspected {
        scanned,
        status: Status::Incomplete,
        manifest: None,
        problem: None,
        signature: None,
    };
    if !scanned.complete {
        return Ok(incomplete(scanned));
    }
    if scanned.manifest_bytes > MAX_MANIFEST_BYTES {
        let why = format!(
            "manifest is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
            scanned.manifest_bytes
        );
        return Ok(damaged(scanned, why));
    }
    let ahead = scanned.backup.id.created_at() - now;
    if ahead > max_skew {
        let why = format!(
            "dated {} ahead of this machine's clock (more than the allowed skew of {}): not trusted as the newest backup",
            short_duration(ahead),
            short_duration(max_skew)
        );
        return Ok(damaged(scanned, why));
    }
    match load_judged(store, &scanned.backup, &trust.signers).await {
        Ok((m, sig)) => Ok(match trust.refusal(&sig) {
            // A forgery counts for nothing and is never deleted, exactly like damage: a
            // planted "newer" backup must not make prune delete the genuine ones.
            Some(why) => Inspected {
                signature: Some(sig),
                ..damaged(scanned, format!("its manifest {why}"))
            },
            None => Inspected {
                scanned,
                status: Status::Complete,
                manifest: Some(m),
                problem: None,
                signature: Some(sig),
            },
        }),
        Err(CatalogError::Damaged { reason, .. }) => Ok(damaged(scanned, reason)),
        Err(e @ CatalogError::TooNew { .. }) => Ok(damaged(scanned, e.to_string())),
        // Listed a moment ago, gone now: deleted by a concurrent prune.
        Err(CatalogError::Store(StoreError::NotFound { .. })) => Ok(incomplete(scanned)),
        Err(e) => Err(e),
    }
}

/// [`inspect`] for many backups, a bounded number of manifests in flight, in input order.
///
/// # Errors
/// The first operational error of [`inspect`].
pub async fn inspect_all(
    store: &dyn ReadStore,
    scanned: Vec<ScannedBackup>,
    now: DateTime<Utc>,
    max_skew: Duration,
    trust: &Trust,
) -> Result<Vec<Inspected>, CatalogError> {
    let mut inspected = stream::iter(scanned)
        .map(|b| inspect(store, b, now, max_skew, trust))
        .buffered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    refuse_unsigned_after_signed(&mut inspected, trust);
    Ok(inspected)
}

/// `--allow-unsigned` is for backups made before signing existed. An unsigned backup newer
/// than a signed one of its own series cannot be such a backup: it is a forgery (anyone
/// with bucket write access can make one) or a worker that lost its key. Either way it
/// must not become `latest` nor push signed backups out of retention, so it is refused
/// here like damage; it can still be used by naming its id.
fn refuse_unsigned_after_signed(inspected: &mut [Inspected], trust: &Trust) {
    if !(trust.enforce && trust.allow_unsigned) {
        return;
    }
    let mut oldest_signed: BTreeMap<(String, String), BackupId> = BTreeMap::new();
    for i in inspected.iter() {
        if i.status == Status::Complete && matches!(i.signature, Some(Signature::Valid { .. })) {
            let b = &i.scanned.backup;
            let entry = oldest_signed
                .entry((b.engine.clone(), b.target.clone()))
                .or_insert_with(|| b.id.clone());
            if b.id < *entry {
                *entry = b.id.clone();
            }
        }
    }
    for i in inspected.iter_mut() {
        let b = &i.scanned.backup;
        let Some(signed) = oldest_signed.get(&(b.engine.clone(), b.target.clone())) else {
            continue;
        };
        if i.status == Status::Complete
            && !matches!(i.signature, Some(Signature::Valid { .. }))
            && b.id > *signed
        {
            i.status = Status::Damaged;
            i.manifest = None;
            i.problem = Some(format!(
                "is unsigned but newer than {signed}, a signed backup of the same target: --allow-unsigned accepts only backups older than the first signed one (made before signing existed); name this id explicitly if it is genuine"
            ));
        }
    }
}

/// Reads and checks the manifest of one backup (size-capped, parsed, [`Manifest::check`])
/// and refuses it unless its signature satisfies `trust`.
///
/// # Errors
/// Store errors (including not found), [`CatalogError::TooNew`] for a newer format,
/// [`CatalogError::Damaged`] for anything a reader must not trust, and
/// [`CatalogError::Untrusted`] for a signature `trust` refuses.
pub async fn load_manifest(
    store: &dyn ReadStore,
    backup: &BackupRef,
    trust: &Trust,
) -> Result<Manifest, CatalogError> {
    let (manifest, sig) = load_judged(store, backup, &trust.signers).await?;
    if let Some(reason) = trust.refusal(&sig) {
        return Err(CatalogError::Untrusted {
            backup: backup.to_string(),
            reason: format!("is refused: its manifest {reason}"),
        });
    }
    warn_if_unverified(trust, backup, &sig);
    Ok(manifest)
}

/// The complete backups of `backup`'s series that reference its objects (incremental
/// backups built on it): while one exists, its parts must stay as they are.
///
/// # Errors
/// Store errors; damaged manifests are skipped (they restore nothing anyway).
pub async fn dependents(
    store: &dyn ReadStore,
    backup: &BackupRef,
    signers: &Signers,
) -> Result<Vec<BackupRef>, CatalogError> {
    let filter = Filter {
        engine: Some(backup.engine.clone()),
        target: Some(backup.target.clone()),
    };
    let mut out = Vec::new();
    for newer in scan(store, &filter)
        .await?
        .into_iter()
        .filter(|b| b.complete && b.backup.id > backup.id)
    {
        match load_judged(store, &newer.backup, signers).await {
            Ok((m, _)) if m.references().contains(&backup.id) => out.push(newer.backup),
            Ok(_) | Err(CatalogError::Damaged { .. } | CatalogError::TooNew { .. }) => {}
            Err(CatalogError::Store(StoreError::NotFound { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The loud warning `--allow-unsigned` promises, once per backup actually used.
fn warn_if_unverified(trust: &Trust, backup: &BackupRef, sig: &Signature) {
    if trust.enforce && !matches!(sig, Signature::Valid { .. }) {
        tracing::warn!(backup = %backup, signature = %sig, "USING A BACKUP WHOSE SIGNATURE WAS NOT VERIFIED (--allow-unsigned): anyone with write access to the bucket could have made it");
    }
}

/// A signature file's bytes, `None` when there is none.
async fn read_signature(store: &dyn ReadStore, key: &str) -> Result<Option<Vec<u8>>, CatalogError> {
    match store.get_bytes(key, signature::MAX_SIGNATURE_BYTES).await {
        Ok(b) => Ok(Some(b)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        // Oversized: certainly not a signature, and judged as one that does not parse.
        Err(StoreError::TooLarge { .. }) => Ok(Some(Vec::new())),
        Err(e) => Err(e.into()),
    }
}

/// The manifest with what its signature says, judged against `signers` (nothing refused).
///
/// # Errors
/// As [`load_manifest`], without [`CatalogError::Untrusted`].
pub async fn load_judged(
    store: &dyn ReadStore,
    backup: &BackupRef,
    signers: &Signers,
) -> Result<(Manifest, Signature), CatalogError> {
    let (manifest, bytes) = load_unsigned(store, backup).await?;
    let main = read_signature(store, &backup.signature_key()).await?;
    let mut sig = signers.judge(&bytes, &[main.as_deref()]);
    if !matches!(sig, Signature::Valid { .. } | Signature::NotChecked { .. }) {
        // A rekey interrupted between its two writes: the old signature is still beside.
        if let Some(prev) = read_signature(store, &backup.previous_signature_key()).await? {
            sig = signers.judge(&bytes, &[main.as_deref(), Some(&prev)]);
        }
    }
    Ok((manifest, sig))
}

/// The manifest and its exact bytes, checked but with no signature looked at.
async fn load_unsigned(
    store: &dyn ReadStore,
    backup: &BackupRef,
) -> Result<(Manifest, Vec<u8>), CatalogError> {
    let key = backup.manifest_key();
    let damaged = |reason: String| CatalogError::Damaged {
        backup: backup.to_string(),
        key: key.clone(),
        reason,
    };
    let bytes = match store.get_bytes(&key, MAX_MANIFEST_BYTES).await {
        Ok(b) => b,
        Err(StoreError::TooLarge { limit, .. }) => {
            return Err(damaged(format!("is over the {limit}-byte limit")))
        }
        Err(e) => return Err(e.into()),
    };
    // Check the version before the full parse so a newer format gets the helpful message.
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    if let Ok(v) = serde_json::from_slice::<VersionOnly>(&bytes) {
        if v.format_version > FORMAT_VERSION {
            return Err(CatalogError::TooNew {
                key,
                version: v.format_version,
            });
        }
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        damaged(if bytes.is_empty() {
            "is empty".into()
        } else {
            format!("does not parse ({e})")
        })
    })?;
    manifest
        .check(backup)
        .map_err(|why| damaged(format!("is invalid: {why}")))?;
    Ok((manifest, bytes))
}

/// The newest *complete* backup among `candidates` (one series): manifests are read newest
/// first until one passes its checks, so a damaged or far-future manifest never stands for
/// the series. Returns it (if any) and how many newer ones were skipped, each with a warning.
///
/// # Errors
/// Operational store errors of [`inspect`].
pub async fn newest_complete(
    store: &dyn ReadStore,
    mut candidates: Vec<ScannedBackup>,
    trust: &Trust,
) -> Result<(Option<Manifest>, usize), CatalogError> {
    candidates.retain(|b| b.complete);
    candidates.sort_by(|a, b| b.backup.id.cmp(&a.backup.id));
    let now = Utc::now();
    // Whether an unsigned backup may stand for the series depends on the signed ones older
    // than it, so with --allow-unsigned every manifest of the series is read first;
    // otherwise manifests are read newest first only until one passes.
    let mut judged = if trust.enforce && trust.allow_unsigned {
        let all = std::mem::take(&mut candidates);
        inspect_all(store, all, now, DEFAULT_MAX_CLOCK_SKEW, trust).await?
    } else {
        Vec::new()
    }
    .into_iter();
    let mut pending = candidates.into_iter();
    let mut skipped = 0;
    loop {
        let checked = if let Some(i) = judged.next() {
            i
        } else if let Some(b) = pending.next() {
            inspect(store, b, now, DEFAULT_MAX_CLOCK_SKEW, trust).await?
        } else {
            break;
        };
        let shown = checked.scanned.backup.to_string();
        match checked.manifest {
            Some(m) => {
                if let Some(sig) = &checked.signature {
                    warn_if_unverified(trust, &checked.scanned.backup, sig);
                }
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        chosen = %m.backup_ref(),
                        "`latest` skipped newer damaged backups (kubectl dr list --include-incomplete shows them)"
                    );
                }
                return Ok((Some(m), skipped));
            }
            None => {
                tracing::warn!(backup = %shown, problem = checked.problem.as_deref().unwrap_or("incomplete"), "skipping a damaged or untrusted backup for `latest`");
                skipped += 1;
            }
        }
    }
    Ok((None, skipped))
}

/// Finds the manifest named by `selector`: a backup id, or `latest` for the newest
/// *complete* backup matching `filter` (damaged ones and ones dated beyond the allowed
/// clock skew are skipped, with a warning). An id names one backup whatever its date; a
/// damaged one is an error.
///
/// # Errors
/// [`CatalogError::NoBackup`] when nothing matches, [`CatalogError::Ambiguous`] when the
/// selector could mean backups of several engines or targets, and the errors of
/// [`load_manifest`].
pub async fn resolve(
    store: &dyn ReadStore,
    selector: &str,
    filter: &Filter,
    trust: &Trust,
) -> Result<Manifest, CatalogError> {
    Ok(resolve_noting_skipped(store, selector, filter, trust)
        .await?
        .0)
}

/// [`resolve`], also returning how many newer backups `latest` passed over because they
/// were damaged or untrusted (always 0 for an id): `verify latest` fails on them.
///
/// # Errors
/// As [`resolve`].
pub async fn resolve_noting_skipped(
    store: &dyn ReadStore,
    selector: &str,
    filter: &Filter,
    trust: &Trust,
) -> Result<(Manifest, usize), CatalogError> {
    let wanted: Option<BackupId> = if selector == "latest" {
        None
    } else {
        Some(selector.parse()?)
    };
    let candidates: Vec<ScannedBackup> = scan(store, filter)
        .await?
        .into_iter()
        .filter(|b| b.complete && wanted.as_ref().is_none_or(|id| *id == b.backup.id))
        .collect();
    let what = || match &wanted {
        Some(id) => format!("id {id} ({filter})"),
        None => format!("`latest` ({filter})"),
    };
    let mut series: Vec<String> = candidates
        .iter()
        .map(|b| format!("{}/{}", b.backup.engine, b.backup.target))
        .collect();
    series.dedup();
    match series.len() {
        0 => return Err(CatalogError::NoBackup(what())),
        1 => {}
        _ => return Err(CatalogError::Ambiguous(series.join(", "))),
    }
    if wanted.is_some() {
        return Ok((load_manifest(store, &candidates[0].backup, trust).await?, 0));
    }
    let (newest, skipped) = newest_complete(store, candidates, trust).await?;
    if let Some(m) = newest {
        return Ok((m, skipped));
    }
    Err(CatalogError::NoneUsable {
        what: what(),
        skipped,
    })
}

/// `3d 4h`, `25m`: a duration short enough for a reason or a message.
pub fn short_duration(d: Duration) -> String {
    let mins = d.num_minutes().max(0);
    let (days, hours, minutes) = (mins / 1440, mins / 60 % 24, mins % 60);
    let mut s = String::new();
    for (n, unit) in [(days, "d"), (hours, "h"), (minutes, "m")] {
        if n > 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("{n}{unit}"));
        }
    }
    if s.is_empty() {
        "0m".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_rejected() {
        for bad in ["", "..", ".x", "a/b", "Prod", "a b", "-x", &"x".repeat(64)] {
            assert!(validate_name("target", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["prod", "pg-main", "a.b_c", "0db"] {
            validate_name("target", good).unwrap();
        }
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("users"), "users");
        assert_eq!(printable("데이터.a b"), "데이터.a b");
        assert_eq!(printable("esc\u{1b}[2J"), "esc\\u{1b}[2J");
        assert_eq!(printable("a\nb"), "a\\nb");
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let b = BackupRef {
            engine: "postgres".into(),
            target: "prod".into(),
            id: "20261122T020000Z-7f3a9c".parse().unwrap(),
        };
        assert_eq!(
            b.manifest_key(),
            "postgres/prod/20261122T020000Z-7f3a9c/manifest.json"
        );
        assert_eq!(
            b.part_key("db-app.pgdump.zst.age"),
            "postgres/prod/20261122T020000Z-7f3a9c/db-app.pgdump.zst.age"
        );
    }
}
