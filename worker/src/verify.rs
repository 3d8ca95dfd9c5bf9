//! Checks shared by `verify` and `restore`: that stored parts are exactly what the manifest
//! recorded (size, sha256), that a key opens them, and how row counts compare.
//!
//! A restore checks each part with [`check_before_restore`] before it touches its target,
//! and the [`Verified`] it gets back is the only way to open a part for a restore
//! ([`open_plaintext`]): "nothing is restored from a backup that has not been verified" is a
//! rule the compiler enforces, not a convention each caller must remember.
//!
//! The one exception is a one-pass restore ([`Verified::as_it_streams`]), for engines whose
//! restore leaves the target as it was when it fails at any point (PostgreSQL: one
//! transaction, a created database dropped again; Redis: a sync loads only when complete;
//! ClickHouse into databases it creates and drops again). The part is then read once: its age
//! header and nonce are compared with the manifest's `header_sha256` before any plaintext
//! leaves this module, age authenticates every 64 KiB chunk under the key that header fixes,
//! and [`stream_withheld`] holds the last chunk back until the whole object's size and
//! sha256 matched. So no byte the worker did not write reaches the target, and a cut or
//! damaged part fails before the target can commit.

use std::fmt;

use crate::catalog::{Manifest, Part, TableCount};
use crate::pipeline::decode::{CiphertextStats, DecodeError, HashingReader, PlainReader};
use crate::pipeline::keys::Identities;
use crate::progress::Progress;
use crate::store::{ReadStore, StoreError};

/// A failed check of one backup part.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The part's object is missing.
    #[error("part {part} of backup {backup} is missing from the store; the backup is damaged, use another one")]
    Missing {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
    },
    /// The object's size differs from the manifest's.
    #[error("part {part} of backup {backup} is {found} bytes but the manifest recorded {expected}; the object was truncated or replaced, use another backup")]
    SizeMismatch {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// What the manifest (or the writer) recorded.
        expected: u64,
        /// What is there.
        found: u64,
    },
    /// The object's sha256 differs from the manifest's.
    #[error("part {part} of backup {backup} has sha256 {found}, the manifest recorded {expected}; the object is corrupt, use another backup")]
    HashMismatch {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// What the manifest (or the writer) recorded.
        expected: String,
        /// What is there.
        found: String,
    },
    /// No given identity matches the backup's recipients.
    #[error("no identity in {identity_file} matches backup {backup} (encrypted to {recipients}); pass the key for one of those recipients with --identity")]
    WrongKey {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The identity file(s) tried.
        identity_file: String,
        /// The recipients the backup was encrypted to.
        recipients: String,
    },
    // The cause is part of the sentence (the hint follows it), so it is not also a
    // `source()`: `{:#}` would print it twice.
    /// The part does not decrypt or decompress.
    #[error("part {part} of backup {backup} does not decrypt: {cause}; use another backup")]
    Undecodable {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// The underlying error.
        cause: DecodeError,
    },
    /// The plaintext's size differs from the manifest's.
    #[error("part {part} of backup {backup} holds {found} plaintext bytes, the manifest recorded {expected}; use another backup")]
    PlaintextSize {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// What the manifest (or the writer) recorded.
        expected: u64,
        /// What is there.
        found: u64,
    },
    /// The plaintext failed its format's content check.
    #[error("part {part} of backup {backup} decrypts, but its content is not usable: {reason}; use another backup")]
    BadContent {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object's age header is not the one the manifest recorded: the part was replaced
    /// (a valid age file for the same recipients, but not the worker's).
    #[error("part {part} of backup {backup} does not start with the age header its manifest recorded; the object was replaced, use another backup")]
    HeaderMismatch {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
    },
    /// The object cannot be read as a stored object (a symlink, FIFO, oversized).
    #[error("part {part} of backup {backup} cannot be read as a stored object ({cause}); the store was tampered with, use another backup")]
    Unreadable {
        /// The backup (`engine/target/id`).
        backup: String,
        /// The part's file name.
        part: String,
        /// The underlying error.
        cause: Box<StoreError>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

/// Maps the store's error on opening a part: a missing object or one that is no object at
/// all (a symlink, a FIFO) is damage to the backup; anything else is operational.
/// Where a part is stored, as errors name it: the backup, or for a reference the older
/// backup that holds it and the one that refers to it (damage there breaks both).
struct StoredIn<'m>(&'m Manifest, &'m Part);

impl std::fmt::Display for StoredIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.1.from {
            None => write!(f, "{}", self.0.backup_ref()),
            Some(_) => write!(
                f,
                "{} (the base that {} refers to)",
                self.0.holder_of(self.1),
                self.0.backup_ref()
            ),
        }
    }
}

fn open_error(backup: &str, part: &Part, e: StoreError) -> VerifyError {
    match e {
        StoreError::NotFound { .. } => VerifyError::Missing {
            backup: backup.to_string(),
            part: part.name.clone(),
        },
        e @ (StoreError::NotRegular { .. } | StoreError::BadKey { .. }) => {
            VerifyError::Unreadable {
                backup: backup.to_string(),
                part: part.name.clone(),
                cause: Box::new(e),
            }
        }
        e => VerifyError::Store(e),
    }
}

impl VerifyError {
    /// True when the backup itself is bad (exit 1); false for operational trouble such as an
    /// unreachable store or the wrong key (exit 2).
    pub fn is_check_failure(&self) -> bool {
        !matches!(
            self,
            VerifyError::Store(_)
                | VerifyError::WrongKey { .. }
                | VerifyError::Undecodable {
                    cause: DecodeError::Transport(_),
                    ..
                }
        )
    }
}

/// True when an error chain (an engine's boxed error, say) holds a failed check of the
/// backup itself: a damaged part found while it streamed, a manifest that fails its
/// signature (exit 1), rather than operational trouble (exit 2).
pub fn is_check_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|c| {
        c.downcast_ref::<VerifyError>()
            .is_some_and(VerifyError::is_check_failure)
            || c.downcast_ref::<crate::catalog::CatalogError>()
                .is_some_and(crate::catalog::CatalogError::is_check_failure)
    })
}

/// A check of a part's plaintext that `verify --identity` runs after decrypting it, for
/// formats that can prove their own consistency; `Err` says what is wrong. It gets the
/// manifest's `facts` (e.g. a recorded plaintext sha256) and the part's recorded counts.
pub type ContentCheck =
    fn(&mut dyn std::io::Read, &crate::catalog::Facts, &[TableCount]) -> Result<(), String>;

/// How a part is opened when it is decrypted: the keys, and where a format's content
/// check comes from (the engines' registry, a floor above; passed in rather than imported).
#[derive(Clone, Copy)]
pub struct Decrypt<'a> {
    /// The private keys.
    pub identities: &'a Identities,
    /// The content check of a part format, if it has one.
    pub content_check: fn(&crate::catalog::PartFormat) -> Option<ContentCheck>,
}

/// Checks one part: size and sha256 always; with `decrypt`, also decrypts and decompresses
/// it fully (into nothing: no plaintext is kept), checks the plaintext size, and runs the
/// engine's own content check where it has one (e.g. a raft snapshot's internal sums).
///
/// # Errors
/// A [`VerifyError`] naming the part and what to do.
pub async fn check_part(
    store: &dyn ReadStore,
    manifest: &Manifest,
    part: &Part,
    decrypt: Option<Decrypt<'_>>,
    progress: &dyn Progress,
) -> Result<(), VerifyError> {
    let identities = decrypt.map(|d| d.identities);
    let backup = StoredIn(manifest, part);
    let key = manifest.object_key(part);
    let reader = store
        .get(&key)
        .await
        .map_err(|e| open_error(&backup.to_string(), part, e))?;
    let bar = progress.start(
        &format!(
            "{} {}",
            if identities.is_some() {
                "decrypt"
            } else {
                "check"
            },
            part.name
        ),
        Some(part.ciphertext_bytes),
    );
    let bridge = crate::pipeline::batched_object_reader(reader);
    let hashing = HashingReader::new(bridge, Some(bar.clone()));
    let undecodable = |source| VerifyError::Undecodable {
        backup: backup.to_string(),
        part: part.name.clone(),
        cause: source,
    };
    let (stats, plaintext) = match identities {
        None => {
            let stats = tokio::task::spawn_blocking(move || hashing.drain())
                .await
                .expect("verify thread panicked")
                .map_err(undecodable)?;
            (stats, None)
        }
        Some(ids) => {
            let (ids, compression) = (ids.clone(), part.compression);
            // Content checks read the manifest's facts (a small map): cloned only for parts
            // that have a check, never the whole manifest per part.
            let content_check = decrypt
                .and_then(|d| (d.content_check)(&part.format))
                .map(|check| (check, manifest.facts.clone(), part.tables.clone()));
            let result = tokio::task::spawn_blocking(move || {
                let mut plain = PlainReader::open(hashing, &ids, compression)?;
                let header = plain.header_sha256().to_string();
                let mut verdict = Ok(());
                if let Some((check, facts, tables)) = content_check {
                    let mut read = plain.as_read();
                    verdict = check(&mut read, &facts, &tables);
                    if let Some(e) = read.take_error() {
                        return Err(e);
                    }
                }
                plain
                    .finish()
                    .map(|(stats, plain)| (stats, plain, header, verdict))
            })
            .await
            .expect("verify thread panicked");
            match result {
                Ok((stats, plain, header, verdict)) => {
                    // Damage first: a hash mismatch is the clearer fact.
                    compare_stats(&backup.to_string(), part, &stats)?;
                    if part.header_sha256.as_ref().is_some_and(|h| *h != header) {
                        return Err(VerifyError::HeaderMismatch {
                            backup: backup.to_string(),
                            part: part.name.clone(),
                        });
                    }
                    verdict.map_err(|reason| VerifyError::BadContent {
                        backup: backup.to_string(),
                        part: part.name.clone(),
                        reason,
                    })?;
                    (stats, Some(plain))
                }
                Err(DecodeError::WrongKey { identity_file }) => {
                    return Err(VerifyError::WrongKey {
                        backup: backup.to_string(),
                        identity_file,
                        recipients: manifest.recipients.join(", "),
                    })
                }
                Err(e) => {
                    // A damaged object also fails the hash; report that, it is the clearer fact.
                    return Err(undecodable(e));
                }
            }
        }
    };
    bar.finish();
    compare_stats(&backup.to_string(), part, &stats)?;
    if let Some(found) = plaintext {
        if found != part.plaintext_bytes {
            return Err(VerifyError::PlaintextSize {
                backup: backup.to_string(),
                part: part.name.clone(),
                expected: part.plaintext_bytes,
                found,
            });
        }
    }
    Ok(())
}

/// Proof that one part of a backup matched its manifest entry (the size and sha256 of every
/// byte) when it was checked, or, for a one-pass restore, that it will be checked as it
/// streams (see the module doc). Only [`check_before_restore`] and
/// [`Verified::as_it_streams`] make one; [`open_plaintext`], the only way a restore reads a
/// part, takes one.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'m> {
    manifest: &'m Manifest,
    part: &'m Part,
}

impl<'m> Verified<'m> {
    /// A part to be checked as it streams instead of in a pass before: only for a
    /// destination that rolls back whatever a failed stream did (the engine says so with
    /// [`crate::engine::Sink::rolls_back`]), and only when the manifest recorded the part's
    /// header (`None` for backups made before it was).
    pub fn as_it_streams(manifest: &'m Manifest, part: &'m Part) -> Option<Self> {
        part.header_sha256
            .as_ref()
            .map(|_| Verified { manifest, part })
    }

    /// The backup the part belongs to.
    pub fn manifest(&self) -> &'m Manifest {
        self.manifest
    }

    /// The verified part.
    pub fn part(&self) -> &'m Part {
        self.part
    }
}

/// The integrity pass a restore needs before it touches its target: every byte of `part`
/// read and compared with the manifest (no key needed).
///
/// # Errors
/// As [`check_part`]: a missing, truncated, replaced or corrupt object.
pub async fn check_before_restore<'m>(
    store: &dyn ReadStore,
    manifest: &'m Manifest,
    part: &'m Part,
    progress: &dyn Progress,
) -> Result<Verified<'m>, VerifyError> {
    check_part(store, manifest, part, None, progress).await?;
    Ok(Verified { manifest, part })
}

/// Opens a verified part for a restore: reads the age header with `identities` (so a wrong
/// key fails before anything is touched) and returns the plaintext stream and its progress
/// bar. The stream is checked again as it is read: the caller compares its stats at the end
/// ([`finish_checked`], [`verified_body`]), since the object could change between the checks.
///
/// # Errors
/// [`VerifyError::WrongKey`], [`VerifyError::Undecodable`], [`VerifyError::Store`].
pub async fn open_plaintext(
    store: &dyn ReadStore,
    verified: Verified<'_>,
    identities: &Identities,
    progress: &dyn Progress,
) -> Result<
    (
        PlainReader,
        std::sync::Arc<dyn crate::progress::ProgressBar>,
    ),
    VerifyError,
> {
    let (manifest, part) = (verified.manifest, verified.part);
    let backup = StoredIn(manifest, part);
    let reader = store
        .get(&manifest.object_key(part))
        .await
        .map_err(|e| open_error(&backup.to_string(), part, e))?;
    let bar = progress.start(
        &format!("restore {}", part.name),
        Some(part.ciphertext_bytes),
    );
    let hashing = HashingReader::new(
        crate::pipeline::batched_object_reader(reader),
        Some(bar.clone()),
    );
    let (ids, compression) = (identities.clone(), part.compression);
    let plain = tokio::task::spawn_blocking(move || PlainReader::open(hashing, &ids, compression))
        .await
        .expect("decode thread panicked")
        .map_err(|e| match e {
            DecodeError::WrongKey { identity_file } => VerifyError::WrongKey {
                backup: backup.to_string(),
                identity_file,
                recipients: manifest.recipients.join(", "),
            },
            source => VerifyError::Undecodable {
                backup: backup.to_string(),
                part: part.name.clone(),
                cause: source,
            },
        })?;
    // Before any plaintext leaves: a replaced object is refused here, whatever the path.
    if let Some(expected) = &part.header_sha256 {
        if plain.header_sha256() != expected {
            return Err(VerifyError::HeaderMismatch {
                backup: backup.to_string(),
                part: part.name.clone(),
            });
        }
    }
    Ok((plain, bar))
}

/// Turns a part's plaintext into an HTTP request body that streams it, holding the last
/// chunk back until the whole object matched the manifest (size, sha256, plaintext size):
/// on a mismatch the body ends in an error instead, so the server never receives a
/// complete body that differs from the backup. The handle reports the check.
pub fn verified_body(
    plain: PlainReader,
    backup: String,
    part: Part,
) -> (
    reqwest::Body,
    tokio::task::JoinHandle<Result<(), VerifyError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let feeding = tokio::task::spawn_blocking(move || feed(plain, &tx, &backup, &part));
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (body, feeding)
}

/// Why [`feed`] stopped early.
enum FeedStop {
    Check(VerifyError),
    /// The request ended first; its own error tells why.
    Closed,
}

impl From<VerifyError> for FeedStop {
    fn from(e: VerifyError) -> Self {
        FeedStop::Check(e)
    }
}

fn feed(
    plain: PlainReader,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    backup: &str,
    part: &Part,
) -> Result<(), VerifyError> {
    let sent = stream_withheld(plain, backup, part, |chunk, _last| {
        tx.blocking_send(Ok(bytes::Bytes::copy_from_slice(chunk)))
            .map_err(|_| FeedStop::Closed)
    });
    match sent {
        Ok(()) | Err(FeedStop::Closed) => Ok(()),
        Err(FeedStop::Check(e)) => {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            Err(e)
        }
    }
}

/// The one "check before the end" rule of every restore stream: reads a verified part's
/// plaintext chunk by chunk into `write(chunk, last)`, holding the last chunk back until the
/// whole part matched its manifest entry (size and sha256 of the stored object, plaintext
/// size). `write` sees the chunks in order; the call with `last` set comes only after the
/// check (with an empty chunk for an empty part), so a consumer can run its own final check
/// there before releasing it, and never receives all of a damaged part.
///
/// # Errors
/// The part's [`VerifyError`], or `write`'s own error.
pub fn stream_withheld<E: From<VerifyError>>(
    mut plain: PlainReader,
    backup: &str,
    part: &Part,
    mut write: impl FnMut(&[u8], bool) -> Result<(), E>,
) -> Result<(), E> {
    let mut held: Option<Vec<u8>> = None;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = plain
            .read_chunk(&mut buf)
            .map_err(|cause| VerifyError::Undecodable {
                backup: backup.to_string(),
                part: part.name.clone(),
                cause,
            })?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if let Some(previous) = held.replace(buf) {
            write(&previous, false)?;
        }
    }
    finish_checked(plain, backup, part)?;
    write(held.as_deref().unwrap_or_default(), true)
}

/// Reads what is left of a part (so truncation shows) and checks size, sha256 and plaintext
/// size against the manifest: the last step of every restore stream.
///
/// # Errors
/// [`VerifyError::Undecodable`], [`VerifyError::SizeMismatch`],
/// [`VerifyError::HashMismatch`], [`VerifyError::PlaintextSize`].
pub fn finish_checked(plain: PlainReader, backup: &str, part: &Part) -> Result<(), VerifyError> {
    let (stats, plaintext) = plain.finish().map_err(|source| VerifyError::Undecodable {
        backup: backup.to_string(),
        part: part.name.clone(),
        cause: source,
    })?;
    compare_stats(backup, part, &stats)?;
    if plaintext != part.plaintext_bytes {
        return Err(VerifyError::PlaintextSize {
            backup: backup.to_string(),
            part: part.name.clone(),
            expected: part.plaintext_bytes,
            found: plaintext,
        });
    }
    Ok(())
}

/// Compares what was read with what the manifest recorded.
///
/// # Errors
/// [`VerifyError::SizeMismatch`] or [`VerifyError::HashMismatch`].
pub fn compare_stats(
    backup: &str,
    part: &Part,
    stats: &CiphertextStats,
) -> Result<(), VerifyError> {
    if stats.bytes != part.ciphertext_bytes {
        return Err(VerifyError::SizeMismatch {
            backup: backup.to_string(),
            part: part.name.clone(),
            expected: part.ciphertext_bytes,
            found: stats.bytes,
        });
    }
    if stats.sha256 != part.ciphertext_sha256 {
        return Err(VerifyError::HashMismatch {
            backup: backup.to_string(),
            part: part.name.clone(),
            expected: part.ciphertext_sha256.clone(),
            found: stats.sha256.clone(),
        });
    }
    Ok(())
}

/// How far a live count may drift from the backup's before the check fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDiff {
    /// At most this many rows (0: exact).
    Rows(u64),
    /// At most this share of the backup's count.
    Percent(f64),
}

impl Default for MaxDiff {
    fn default() -> Self {
        MaxDiff::Rows(0)
    }
}

impl std::str::FromStr for MaxDiff {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a row count or a percentage (e.g. 0, 100, 10%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let v: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(bad());
                }
                Ok(MaxDiff::Percent(v))
            }
            None => s.trim().parse().map(MaxDiff::Rows).map_err(|_| bad()),
        }
    }
}

impl MaxDiff {
    /// The form `--max-diff` parses (`100`, `10%`), for passing the value on.
    pub fn to_arg(&self) -> String {
        match self {
            MaxDiff::Rows(n) => n.to_string(),
            MaxDiff::Percent(p) => format!("{p}%"),
        }
    }
}

impl fmt::Display for MaxDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxDiff::Rows(n) => write!(f, "{n} rows"),
            MaxDiff::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One table in a count comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CountRow {
    /// `schema.name` as stored (for scripts; not quoted).
    pub table: String,
    /// The schema (or database) and table name apart, for display that quotes each.
    #[serde(skip)]
    pub parts: (String, String),
    /// Rows the backup recorded (none: the table is new).
    pub backup_rows: Option<u64>,
    /// Rows found now (none: the table is missing).
    pub live_rows: Option<u64>,
    /// Whether the difference is within `--max-diff` (or explained).
    pub ok: bool,
    /// Why a difference is accepted (e.g. rows past a TTL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CountRow {
    /// live − backup, when both are known.
    pub fn difference(&self) -> Option<i128> {
        Some(i128::from(self.live_rows?) - i128::from(self.backup_rows?))
    }
}

/// Compares the manifest's counts with counts taken now. A table missing from the live
/// database fails; a table that exists only live is listed but does not fail (the
/// application may have added it since).
pub fn compare_counts(backup: &[TableCount], live: &[TableCount], max: MaxDiff) -> Vec<CountRow> {
    let mut rows: Vec<CountRow> = backup
        .iter()
        .map(|b| {
            let live_rows = live
                .iter()
                .find(|l| l.schema == b.schema && l.name == b.name)
                .map(|l| l.rows);
            let ok = live_rows.is_some_and(|l| within(b.rows, l, max));
            CountRow {
                table: b.qualified(),
                parts: (b.schema.clone(), b.name.clone()),
                backup_rows: Some(b.rows),
                live_rows,
                ok,
                note: None,
            }
        })
        .collect();
    rows.extend(
        live.iter()
            .filter(|l| {
                !backup
                    .iter()
                    .any(|b| b.schema == l.schema && b.name == l.name)
            })
            .map(|l| CountRow {
                table: l.qualified(),
                parts: (l.schema.clone(), l.name.clone()),
                backup_rows: None,
                live_rows: Some(l.rows),
                ok: true,
                note: None,
            }),
    );
    rows
}

/// Accepts fewer live rows for tables with a TTL: rows past it expire, legitimately.
/// `ttl_tables` holds `schema.name` entries.
pub fn allow_ttl_expiry(rows: &mut [CountRow], ttl_tables: &[String]) {
    for row in rows.iter_mut() {
        if !ttl_tables.contains(&row.table) {
            continue;
        }
        if let (Some(b), Some(l)) = (row.backup_rows, row.live_rows) {
            if l < b && !row.ok {
                row.ok = true;
                row.note = Some(format!(
                    "{} fewer: the table has a TTL, rows past it expire",
                    b - l
                ));
            } else if row.ok {
                row.note = Some("table has a TTL".into());
            }
        }
    }
}

fn within(backup: u64, live: u64, max: MaxDiff) -> bool {
    let diff = backup.abs_diff(live);
    match max {
        MaxDiff::Rows(n) => diff <= n,
        MaxDiff::Percent(p) => (diff as f64) <= (backup.max(1) as f64) * p / 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, rows: u64) -> TableCount {
        TableCount {
            schema: "public".into(),
            name: name.into(),
            rows,
        }
    }

    #[test]
    fn max_diff_argument_form_parses_back() {
        for v in [
            MaxDiff::Rows(0),
            MaxDiff::Rows(250),
            MaxDiff::Percent(10.0),
            MaxDiff::Percent(2.5),
        ] {
            assert_eq!(v.to_arg().parse::<MaxDiff>().unwrap(), v);
        }
    }

    #[test]
    fn parses_max_diff() {
        assert_eq!("0".parse::<MaxDiff>().unwrap(), MaxDiff::Rows(0));
        assert_eq!("10%".parse::<MaxDiff>().unwrap(), MaxDiff::Percent(10.0));
        assert_eq!(" 2.5 %".parse::<MaxDiff>().unwrap(), MaxDiff::Percent(2.5));
        for bad in ["", "-1", "ten", "120%", "%"] {
            assert!(bad.parse::<MaxDiff>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_comparison_fails_on_any_difference() {
        let rows = compare_counts(
            &[t("a", 10), t("b", 5)],
            &[t("a", 10), t("b", 6)],
            MaxDiff::Rows(0),
        );
        assert!(rows[0].ok);
        assert!(!rows[1].ok);
        assert_eq!(rows[1].difference(), Some(1));
    }

    #[test]
    fn percentage_tolerance() {
        let rows = compare_counts(
            &[t("a", 100), t("b", 100)],
            &[t("a", 90), t("b", 89)],
            MaxDiff::Percent(10.0),
        );
        assert!(rows[0].ok);
        assert!(!rows[1].ok);
    }

    #[test]
    fn ttl_tables_may_lose_rows_but_not_gain_them() {
        let mut rows = compare_counts(
            &[t("logs", 100), t("spans", 100), t("plain", 100)],
            &[t("logs", 60), t("spans", 120), t("plain", 60)],
            MaxDiff::Rows(0),
        );
        allow_ttl_expiry(&mut rows, &["public.logs".into(), "public.spans".into()]);
        assert!(rows[0].ok && rows[0].note.as_deref().unwrap().starts_with("40 fewer"));
        assert!(!rows[1].ok, "more rows than the backup is not expiry");
        assert!(!rows[2].ok && rows[2].note.is_none());
    }

    #[test]
    fn missing_live_table_fails_and_extra_live_table_is_listed() {
        let rows = compare_counts(&[t("gone", 0)], &[t("new", 3)], MaxDiff::Rows(1000));
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].ok && rows[0].live_rows.is_none());
        assert!(rows[1].ok && rows[1].backup_rows.is_none());
    }
}
