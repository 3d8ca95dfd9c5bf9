//! `kubectl dr rekey`: re-encrypts a backup's parts to new age recipients (after a leaked
//! or retired identity), without plaintext ever touching a disk.
//!
//! Each part streams from the store through age decryption (the old identity) and age
//! encryption (the new recipients) back into the store under a *new* name; the zstd
//! stream inside is passed through untouched. The order of work keeps every backup
//! restorable, with one key or the other, wherever it is interrupted:
//!
//! 1. New parts are uploaded beside the old ones (the old manifest still commits the old).
//! 2. The signature that vouches for the current manifest (the main one, or `.prev` after
//!    an interrupted swap) is copied to `manifest.json.minisig.prev`, then the new manifest's
//!    signature is written, then the new manifest: between the last two writes a reader
//!    finds the old manifest with its old signature in `.prev` (see
//!    [`crate::catalog::signature`]). An unsigned backup gets the manifest first and its
//!    first signature after, so it is never "signed but invalid".
//! 3. The new manifest is read back and checked (signature, every new part's size and
//!    sha256, by reading it); only then are the old parts and `.prev` deleted.
//!
//! A rerun finishes an interrupted one: a backup already encrypted to exactly the new
//! recipients only gets step 3's cleanup of objects its manifest does not name. A backup
//! with any object under Object Lock is refused (its old parts could not be removed).
//!
//! Incremental chains: an incremental backup's references are re-encrypted into its own
//! directory, so afterwards it stands alone (a full backup) and its base's parts are no
//! longer needed by it. A backup that others still reference is refused until they are
//! rekeyed: `rekey --all` goes newest first, so a whole chain is done in one run.

use std::collections::BTreeSet;
use std::io::Write;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, signature, BackupRef, Compression, Manifest, Part, Signature, Signers};
use crate::pipeline::decode::{HashingReader, PlainReader};
use crate::pipeline::encode::{self, EncodeError, EncodeSettings};
use crate::pipeline::keys::Identities;
use crate::progress::Progress;
use crate::store::{DeleteStore, Hold, StoreError};
use crate::verify::{self, VerifyError};

/// What a rekey did to one backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Every part re-encrypted and committed by a new signed manifest; old parts removed.
    Rekeyed {
        /// Parts re-encrypted.
        parts: usize,
        /// Bytes now stored.
        stored_bytes: u64,
    },
    /// Already encrypted to these recipients (an earlier, maybe interrupted, run); objects
    /// its manifest does not name were removed.
    AlreadyDone {
        /// Leftover objects deleted.
        removed: usize,
    },
    /// An object is under Object Lock or a legal hold: nothing was changed.
    Held {
        /// The hold, with its date.
        hold: Hold,
    },
    /// Newer incremental backups reference its parts: nothing was changed. Rekeying them
    /// first (newest first, as `--all` does) frees it.
    Referenced {
        /// The backups that reference it.
        by: Vec<String>,
    },
}

/// Why a backup could not be rekeyed. Whatever the error, the backup is still restorable
/// with the key that opened it before.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// Reading, checking or decrypting an old part failed.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Writing a new part failed (it was aborted).
    #[error("re-encrypting part {part} of {backup} failed: {source}")]
    Encode {
        /// The backup.
        backup: String,
        /// The part.
        part: String,
        /// Why.
        source: EncodeError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// Signing the new manifest failed.
    #[error(transparent)]
    Sign(#[from] signature::SignatureError),
    /// The new manifest read back is not what was written, or its signature fails.
    #[error("the new manifest of {backup} did not verify after it was written ({why}); its old parts were kept. Run `kubectl dr verify {backup}` and the same rekey again")]
    NotVerified {
        /// The backup.
        backup: String,
        /// What failed.
        why: String,
    },
    /// The new manifest would fail its own check (a bug).
    #[error("the rekeyed manifest of {backup} would be invalid ({why}); this is a bug, nothing was committed")]
    Invalid {
        /// The backup.
        backup: String,
        /// Why.
        why: String,
    },
}

/// Re-encrypts backups with one set of keys.
pub struct Rekey<'a> {
    /// The store (rekey writes and deletes).
    pub store: &'a dyn DeleteStore,
    /// The old identity: opens the parts.
    pub identities: &'a Identities,
    /// New recipients and the signing key (compression is ignored: parts pass through).
    pub settings: EncodeSettings,
    /// The trusted signers: which signature vouches for a manifest before it is replaced.
    pub signers: Signers,
    /// Stops uploads on SIGTERM.
    pub cancel: CancellationToken,
    /// Progress bars.
    pub progress: &'a dyn Progress,
}

impl Rekey<'_> {
    fn new_recipients(&self) -> BTreeSet<String> {
        self.settings
            .recipients
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The latest hold on any object of `b`, if one is in force.
    async fn hold(&self, objects: &[String]) -> Result<Option<Hold>, StoreError> {
        let holds: Vec<Option<Hold>> = stream::iter(objects)
            .map(|k| self.store.hold(k))
            .buffered(16)
            .try_collect()
            .await?;
        Ok(holds
            .into_iter()
            .flatten()
            .max_by_key(|h| (h.legal_hold, h.until)))
    }

    /// Rekeys one backup whose manifest was loaded (and its signature accepted) by the caller.
    ///
    /// # Errors
    /// [`RekeyError`]; the backup stays restorable with the old key.
    pub async fn run(&self, manifest: &Manifest) -> Result<Outcome, RekeyError> {
        let backup = manifest.backup_ref();
        let objects: Vec<String> = self
            .store
            .list(&format!("{}/", backup.dir()))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let current: BTreeSet<String> = manifest.recipients.iter().cloned().collect();
        if current == self.new_recipients() {
            let removed = self.remove_unnamed(manifest).await?;
            return Ok(Outcome::AlreadyDone { removed });
        }
        if let Some(hold) = self.hold(&objects).await? {
            return Ok(Outcome::Held { hold });
        }
        let by = catalog::dependents(self.store, &backup, &self.signers).await?;
        if !by.is_empty() {
            return Ok(Outcome::Referenced {
                by: by.iter().map(ToString::to_string).collect(),
            });
        }
        let mut parts = Vec::with_capacity(manifest.parts.len());
        for part in &manifest.parts {
            parts.push(self.reencrypt(manifest, part).await?);
        }
        let mut next = manifest.clone();
        next.recipients = self.new_recipients().into_iter().collect();
        next.parts = parts;
        // Every reference now has its own copy here: the backup no longer needs a base.
        next.base = None;
        next.format_version = catalog::format_version_for(&next.parts);
        next.check(&backup).map_err(|why| RekeyError::Invalid {
            backup: backup.to_string(),
            why,
        })?;
        let json = serde_json::to_vec_pretty(&next).expect("manifest serializes");
        self.commit(&backup, &json).await?;
        self.check_committed(&next, &json).await?;
        self.remove_unnamed(&next).await?;
        Ok(Outcome::Rekeyed {
            parts: next.parts.len(),
            stored_bytes: next.parts.iter().map(|p| p.ciphertext_bytes).sum(),
        })
    }

    /// Streams one part: old ciphertext (hashed and compared with the manifest as it is
    /// read) ─► age -d ─► age -e ─► a new object. A mismatch aborts the upload.
    async fn reencrypt(&self, manifest: &Manifest, part: &Part) -> Result<Part, RekeyError> {
        let backup = manifest.backup_ref();
        let reader = self
            .store
            .get(&manifest.object_key(part))
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => VerifyError::Missing {
                    backup: manifest.holder_of(part).to_string(),
                    part: part.name.clone(),
                },
                e => VerifyError::Store(e),
            })?;
        let bar = self
            .progress
            .start(&format!("rekey {}", part.name), Some(part.ciphertext_bytes));
        let hashing = HashingReader::new(
            crate::pipeline::batched_object_reader(reader),
            Some(bar.clone()),
        );
        let file = new_file_name(&part.file);
        let settings = EncodeSettings {
            compression: Compression::None,
            ..self.settings.clone()
        };
        let (ids, shown, old) = (self.identities.clone(), backup.to_string(), part.clone());
        let recipients = manifest.recipients.join(", ");
        let produce = move |out: &mut dyn Write| -> Result<(), encode::SourceError> {
            let undecodable = |cause| -> encode::SourceError {
                Box::new(VerifyError::Undecodable {
                    backup: shown.clone(),
                    part: old.name.clone(),
                    cause,
                })
            };
            let mut plain =
                PlainReader::open(hashing, &ids, Compression::None).map_err(|e| match e {
                    crate::pipeline::decode::DecodeError::WrongKey { identity_file } => {
                        Box::new(VerifyError::WrongKey {
                            backup: shown.clone(),
                            identity_file,
                            recipients: recipients.clone(),
                        }) as encode::SourceError
                    }
                    other => undecodable(other),
                })?;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = plain.read_chunk(&mut buf).map_err(undecodable)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
            }
            let (stats, _) = plain.finish().map_err(undecodable)?;
            // The old object must be exactly what the manifest vouched for: a rekey must
            // never launder a damaged part into a freshly signed one.
            verify::compare_stats(&shown, &old, &stats)?;
            Ok(())
        };
        let key = backup.part_key(&file);
        let (stats, ()) = encode::store_part(self.store, &key, &settings, &self.cancel, produce)
            .await
            .map_err(|source| match source {
                EncodeError::Source(e) => match e.downcast::<VerifyError>() {
                    Ok(v) => RekeyError::Verify(*v),
                    Err(e) => RekeyError::Encode {
                        backup: backup.to_string(),
                        part: part.name.clone(),
                        source: EncodeError::Source(e),
                    },
                },
                source => RekeyError::Encode {
                    backup: backup.to_string(),
                    part: part.name.clone(),
                    source,
                },
            })?;
        bar.finish();
        Ok(Part {
            file,
            from: None,
            ciphertext_bytes: stats.ciphertext_bytes,
            ciphertext_sha256: stats.ciphertext_sha256,
            header_sha256: Some(stats.header_sha256),
            ..part.clone()
        })
    }

    /// Writes the new signature and manifest in the order the module doc explains.
    async fn commit(&self, backup: &BackupRef, json: &[u8]) -> Result<(), RekeyError> {
        let key = self
            .settings
            .signing
            .as_ref()
            .expect("the caller requires a signing key");
        let sig = Bytes::from(key.sign(json, backup)?);
        // The signature that vouches for the manifest being replaced: usually the main one,
        // but after an interrupted swap it is `.prev` (and the main one is a stray).
        let current = self
            .store
            .get_bytes(&backup.manifest_key(), catalog::MAX_MANIFEST_BYTES)
            .await?;
        let mut vouching = None;
        for file in [backup.signature_key(), backup.previous_signature_key()] {
            let text = match self
                .store
                .get_bytes(&file, signature::MAX_SIGNATURE_BYTES)
                .await
            {
                Ok(b) => b,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if matches!(
                self.signers.judge(&current, &[Some(&text)]),
                Signature::Valid { .. }
            ) {
                vouching = Some(text);
                break;
            }
        }
        let manifest = Bytes::copy_from_slice(json);
        match vouching {
            Some(old) => {
                self.store
                    .put_bytes(&backup.previous_signature_key(), Bytes::from(old))
                    .await?;
                self.store.put_bytes(&backup.signature_key(), sig).await?;
                self.store
                    .put_bytes(&backup.manifest_key(), manifest)
                    .await?;
            }
            None => {
                self.store
                    .put_bytes(&backup.manifest_key(), manifest)
                    .await?;
                self.store.put_bytes(&backup.signature_key(), sig).await?;
            }
        }
        Ok(())
    }

    /// The committed manifest must be the one written, validly signed by the signing key,
    /// and every part it names must be in the store with its size and sha256.
    async fn check_committed(&self, next: &Manifest, json: &[u8]) -> Result<(), RekeyError> {
        let backup = next.backup_ref();
        let not_verified = |why: String| RekeyError::NotVerified {
            backup: backup.to_string(),
            why,
        };
        let key = self
            .settings
            .signing
            .as_ref()
            .expect("checked by the caller");
        let back = self
            .store
            .get_bytes(&backup.manifest_key(), catalog::MAX_MANIFEST_BYTES)
            .await?;
        if back != json {
            return Err(not_verified("the manifest read back differs".into()));
        }
        let (_, sig) = catalog::load_judged(self.store, &backup, &Signers::of(key)).await?;
        if !matches!(sig, Signature::Valid { .. }) {
            return Err(not_verified(format!("its signature is {sig}")));
        }
        for part in &next.parts {
            verify::check_part(self.store, next, part, None, self.progress).await?;
        }
        Ok(())
    }

    /// Deletes every object of the backup's directory that `manifest` does not name (old
    /// parts, an interrupted run's new ones, `.prev`), once every part it names is there
    /// with its recorded size (the caller checked the manifest's signature).
    async fn remove_unnamed(&self, manifest: &Manifest) -> Result<usize, RekeyError> {
        let backup = manifest.backup_ref();
        let listed: std::collections::BTreeMap<String, u64> = self
            .store
            .list(&format!("{}/", backup.dir()))
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut keep: BTreeSet<String> = BTreeSet::new();
        // References live in their base's directory: nothing of this one's to keep.
        for p in manifest.parts.iter().filter(|p| p.from.is_none()) {
            let key = backup.part_key(&p.file);
            if listed.get(&key) != Some(&p.ciphertext_bytes) {
                return Err(RekeyError::NotVerified {
                    backup: backup.to_string(),
                    why: format!("part {} is missing or has the wrong size", p.name),
                });
            }
            keep.insert(key);
        }
        keep.insert(backup.manifest_key());
        keep.insert(backup.signature_key());
        let doomed: Vec<&String> = listed.keys().filter(|k| !keep.contains(*k)).collect();
        for key in &doomed {
            self.store.delete(key).await?;
        }
        // A rekey killed while it wrote a part leaves an unfinished upload (a `.partial-`
        // file, an S3 multipart upload) that listing does not show: it is debris of this
        // backup too.
        let pending = match self
            .store
            .pending_uploads(&format!("{}/", backup.dir()))
            .await
        {
            Ok(p) => p,
            Err(StoreError::Unsupported { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for upload in &pending {
            self.store.abort_upload(upload).await?;
        }
        Ok(doomed.len() + pending.len())
    }
}

/// A fresh object name for a re-encrypted part: the old name with a new `.k<hex>` tag
/// before `.age` (an earlier tag replaced), so old and new objects never collide.
fn new_file_name(old: &str) -> String {
    let stem = old.strip_suffix(".age").unwrap_or(old);
    let stem = match stem.rsplit_once('.') {
        Some((before, tag))
            if tag.len() == 7
                && tag.starts_with('k')
                && tag[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            before
        }
        _ => stem,
    };
    format!(
        "{stem}.k{:06x}.age",
        rand::rng().random::<u32>() & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_are_valid_fresh_and_do_not_grow() {
        let first = new_file_name("db-app.pgdump.zst.age");
        assert!(first.starts_with("db-app.pgdump.zst.k") && first.ends_with(".age"));
        assert!(catalog::part_file_is_valid(&first), "{first}");
        let second = new_file_name(&first);
        assert_eq!(second.len(), first.len(), "{first} -> {second}");
        assert!(second.starts_with("db-app.pgdump.zst.k"));
        assert_eq!(
            new_file_name("stdout.out.age").len(),
            "stdout.out.k000000.age".len()
        );
    }
}
