//! `kubectl dr wal-fetch FILE PATH`: PostgreSQL's `restore_command` during a point-in-time
//! recovery. It finds the file's signed index entry, downloads the object, checks its size
//! and sha256 against the entry, decrypts it, checks the plaintext's sha256, and only then
//! writes PATH (through a temporary file and a rename, so PostgreSQL never reads half a
//! segment).
//!
//! Exit codes speak PostgreSQL's protocol: 0 the file is at PATH; 1 the archive does not
//! have it (the normal end of a recovery: PostgreSQL then ends recovery there); 255 for
//! anything else (a damaged or unsigned file, a wrong key, an unreachable store). PostgreSQL
//! treats an exit status above 125 as fatal and stops recovery instead of promoting a
//! server that is missing WAL the archive holds.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{is_history_name, timeline_dir, Entry, EntryKind};
use crate::catalog::Trust;
use crate::pipeline::decode::{HashingReader, PlainReader};
use crate::pipeline::keys::Identities;
use crate::store::{ReadStore, StoreError};

/// Why a file was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not in the archive: recovery ends here.
    #[error("{file} is not in the WAL archive of postgres/{target}")]
    NotArchived {
        /// The file.
        file: String,
        /// The target.
        target: String,
    },
    /// The file or its entry fails a check: recovery must stop.
    #[error("WAL file {file} of postgres/{target} is refused: {reason}")]
    Refused {
        /// The file.
        file: String,
        /// The target.
        target: String,
        /// What failed.
        reason: String,
    },
    /// The store failed: recovery must stop (PostgreSQL retries after a restart).
    #[error("reading WAL file {file} failed: {source}")]
    Store {
        /// The file.
        file: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Writing the file for PostgreSQL failed.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// Where.
        path: String,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl FetchError {
    /// The exit status PostgreSQL understands (see the module doc).
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::NotArchived { .. } => 1,
            _ => 255,
        }
    }
}

/// Where to look and what to trust.
pub struct FetchRequest<'a> {
    /// The target.
    pub target: &'a str,
    /// The file PostgreSQL asks for (`%f`).
    pub file: &'a str,
    /// Where to put it (`%p`).
    pub path: &'a Path,
    /// The cluster the restore is of: WAL of another one is refused.
    pub system_identifier: Option<&'a str>,
    /// Which signatures are accepted.
    pub trust: &'a Trust,
}

/// Delivers one file; see the module doc.
///
/// # Errors
/// [`FetchError`], with the exit status to use.
pub async fn fetch(
    store: &dyn ReadStore,
    identities: &Identities,
    req: &FetchRequest<'_>,
) -> Result<Entry, FetchError> {
    let (file, target) = (req.file, req.target);
    let refused = |reason: String| FetchError::Refused {
        file: file.to_string(),
        target: target.to_string(),
        reason,
    };
    let store_err = |source| FetchError::Store {
        file: file.to_string(),
        source,
    };
    let named =
        is_history_name(file) || (file.len() == 24 && file.bytes().all(|b| b.is_ascii_hexdigit()));
    let timeline = if named {
        u32::from_str_radix(&file[..8], 16).ok()
    } else {
        None
    };
    let Some(timeline) = timeline else {
        // Backup history files and anything else PostgreSQL may probe for.
        return Err(FetchError::NotArchived {
            file: file.to_string(),
            target: target.to_string(),
        });
    };
    let dir = timeline_dir(target, timeline);
    // The whole file's entry, else the newest partial one.
    let mut candidates = vec![format!("{dir}{file}.json")];
    if !is_history_name(file) {
        let listed = store
            .list(&format!("{dir}{file}.current-"))
            .await
            .map_err(store_err)?;
        candidates.extend(
            listed
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(".json")),
        );
    }
    let mut found: Vec<super::Loaded> = Vec::new();
    for key in candidates {
        match read_entry(store, &key, target, req.trust).await {
            Ok(Some(l)) => {
                let whole = l.entry.kind != EntryKind::Partial;
                found.push(l);
                if whole {
                    break;
                }
            }
            Ok(None) => {}
            Err(ReadEntry::Store(e)) => return Err(store_err(e)),
            Err(ReadEntry::Broken(reason)) => return Err(refused(reason)),
        }
    }
    let Some(best) = found
        .into_iter()
        .max_by_key(|l| (l.entry.kind != EntryKind::Partial, l.entry.end_lsn))
    else {
        return Err(FetchError::NotArchived {
            file: file.to_string(),
            target: target.to_string(),
        });
    };
    if let Some(reason) = &best.refused {
        return Err(refused(format!("its index entry {reason}")));
    }
    let entry = best.entry;
    if let Some(id) = req.system_identifier {
        if entry.system_identifier != id {
            return Err(refused(format!(
                "it is WAL of cluster {} and this recovery is of cluster {id}",
                entry.system_identifier
            )));
        }
    }
    let plain = download(store, identities, &entry)
        .await
        .map_err(|e| match e {
            Download::Store(e) => store_err(e),
            Download::Bad(reason) => refused(reason),
        })?;
    write_atomically(req.path, &plain).map_err(|cause| FetchError::Write {
        path: req.path.display().to_string(),
        cause,
    })?;
    Ok(entry)
}

pub(crate) enum ReadEntry {
    Store(StoreError),
    Broken(String),
}

/// Reads and judges one entry; `None` when it does not exist.
pub(crate) async fn read_entry(
    store: &dyn ReadStore,
    key: &str,
    target: &str,
    trust: &Trust,
) -> Result<Option<super::Loaded>, ReadEntry> {
    let body = match store.get_bytes(key, super::MAX_ENTRY_BYTES).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(ReadEntry::Store(e)),
    };
    let sigs = super::read_signatures(store, key, None)
        .await
        .map_err(ReadEntry::Store)?;
    let entry: Entry = serde_json::from_slice(&body)
        .map_err(|e| ReadEntry::Broken(format!("its index entry does not parse: {e}")))?;
    entry.matches_key(key, target).map_err(ReadEntry::Broken)?;
    let signature = super::judge(trust, &body, &sigs);
    Ok(Some(super::Loaded {
        refused: trust.refusal(&signature),
        entry,
        signature,
    }))
}

/// Why [`download`] failed.
pub enum Download {
    /// The store failed.
    Store(StoreError),
    /// The file fails its check.
    Bad(String),
}

/// The file's plaintext, checked against its entry: ciphertext size and sha256, then the
/// plaintext's size and sha256.
pub async fn download(
    store: &dyn ReadStore,
    identities: &Identities,
    entry: &Entry,
) -> Result<Vec<u8>, Download> {
    let key = entry.object_key();
    let bytes = match store.get_bytes(&key, entry.ciphertext_bytes + 1).await {
        Ok(b) => b,
        Err(StoreError::NotFound { .. }) => {
            return Err(Download::Bad(format!("its object {key} is missing")))
        }
        Err(StoreError::TooLarge { .. }) => {
            return Err(Download::Bad(format!(
                "its object {key} is larger than the {} bytes its entry records",
                entry.ciphertext_bytes
            )))
        }
        Err(e) => return Err(Download::Store(e)),
    };
    check_ciphertext(entry, &bytes).map_err(Download::Bad)?;
    decrypt(entry, bytes, identities).map_err(Download::Bad)
}

/// Checks stored bytes against the entry.
pub(crate) fn check_ciphertext(entry: &Entry, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() as u64 != entry.ciphertext_bytes {
        return Err(format!(
            "its object is {} bytes, its entry records {} (cut or replaced)",
            bytes.len(),
            entry.ciphertext_bytes
        ));
    }
    let sha = hex::encode(Sha256::digest(bytes));
    if sha != entry.ciphertext_sha256 {
        return Err(format!(
            "its object's sha256 is {sha}, its entry records {} (damaged or replaced)",
            entry.ciphertext_sha256
        ));
    }
    Ok(())
}

/// Decrypts and decompresses a checked object and checks the plaintext.
pub(crate) fn decrypt(
    entry: &Entry,
    bytes: Vec<u8>,
    identities: &Identities,
) -> Result<Vec<u8>, String> {
    let reader = HashingReader::new(std::io::Cursor::new(bytes), None);
    let mut plain =
        PlainReader::open(reader, identities, entry.compression).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(entry.plaintext_bytes.min(1 << 30) as usize);
    let limit = entry.plaintext_bytes + 1;
    plain
        .as_read()
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| format!("it does not decrypt: {e}"))?;
    let sha = hex::encode(Sha256::digest(&out));
    if out.len() as u64 != entry.plaintext_bytes || sha != entry.plaintext_sha256 {
        return Err(format!(
            "its plaintext ({} bytes, sha256 {sha}) is not what its entry records",
            out.len()
        ));
    }
    Ok(out)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
