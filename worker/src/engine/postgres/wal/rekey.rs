//! `kubectl dr rekey` for a WAL archive: each archived file is re-encrypted to the new
//! recipients (the zstd stream inside passes through) under a new object name, then its
//! entry is swapped the way a backup's manifest is: the old entry's signature is kept as
//! `.minisig.prev`, the new signature is written, then the new entry, and only then are
//! `.prev` and the old object deleted. Interrupted anywhere, each file opens with one key or
//! the other, and readers accept either signature meanwhile. A file the old identity no
//! longer opens was rekeyed by an earlier run and is skipped.

use std::io::Read;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::fetch::check_ciphertext;
use super::{Entry, Loaded};
use crate::catalog::{Compression, Trust};
use crate::pipeline::decode::{DecodeError, HashingReader, PlainReader};
use crate::pipeline::encode::{self, EncodeError, EncodeSettings};
use crate::pipeline::keys::Identities;
use crate::store::{DeleteStore, StoreError};

/// What a WAL rekey did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalRekeyed {
    /// The target.
    pub target: String,
    /// Files re-encrypted.
    pub rekeyed: usize,
    /// Files the old identity does not open (an earlier run did them).
    pub already: usize,
    /// Files held by Object Lock (their old object cannot go): left as they were.
    pub held: Vec<String>,
}

/// Why a WAL rekey stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalRekeyError {
    /// The archive cannot be read.
    #[error(transparent)]
    Wal(#[from] super::WalError),
    /// A file fails its check or its signature.
    #[error(
        "WAL file {file} of postgres/{target} is refused: {reason}; nothing of it was changed"
    )]
    Refused {
        /// The target.
        target: String,
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("re-encrypting WAL file {file} failed; it still opens with the old key")]
    Store {
        /// The file.
        file: String,
        /// The error.
        #[source]
        source: EncodeError,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] crate::catalog::signature::SignatureError),
}

/// Re-encrypts every file of `target`'s archive to `settings.recipients` (signed with
/// `settings.signing`).
///
/// # Errors
/// [`WalRekeyError`]: files before the failing one are done, the rest untouched.
pub async fn rekey(
    store: &dyn DeleteStore,
    target: &str,
    identities: &Identities,
    settings: &EncodeSettings,
    trust: &Trust,
    cancel: &CancellationToken,
) -> Result<WalRekeyed, WalRekeyError> {
    let archive = super::load(store, target, trust).await?;
    let mut out = WalRekeyed {
        target: target.to_string(),
        ..WalRekeyed::default()
    };
    for l in archive.entries.values() {
        let refused = |reason: String| WalRekeyError::Refused {
            target: target.to_string(),
            file: l.entry.file.clone(),
            reason,
        };
        if let Some(why) = &l.refused {
            return Err(refused(format!("its index entry {why}")));
        }
        if let Some(h) = store
            .hold(&l.entry.object_key())
            .await
            .map_err(|e| WalRekeyError::Wal(e.into()))?
        {
            out.held.push(format!("{}: {h}", l.entry.file));
            continue;
        }
        match one(store, l, identities, settings, cancel).await? {
            true => out.rekeyed += 1,
            false => out.already += 1,
        }
    }
    Ok(out)
}

/// Rekeys one file; false when the old identity does not open it (done before).
async fn one(
    store: &dyn DeleteStore,
    l: &Loaded,
    identities: &Identities,
    settings: &EncodeSettings,
    cancel: &CancellationToken,
) -> Result<bool, WalRekeyError> {
    let e = &l.entry;
    let refused = |reason: String| WalRekeyError::Refused {
        target: e.target.clone(),
        file: e.file.clone(),
        reason,
    };
    let failed = |source: EncodeError| WalRekeyError::Store {
        file: e.file.clone(),
        source,
    };
    let bytes = store
        .get_bytes(&e.object_key(), e.ciphertext_bytes + 1)
        .await
        .map_err(|err| refused(err.to_string()))?;
    check_ciphertext(e, &bytes).map_err(refused)?;
    // The age layer only: the compressed stream inside is stored again as it is.
    let inner = match PlainReader::open(
        HashingReader::new(std::io::Cursor::new(bytes.clone()), None),
        identities,
        Compression::None,
    ) {
        Ok(mut r) => {
            let mut inner = Vec::new();
            r.as_read()
                .read_to_end(&mut inner)
                .map_err(|err| refused(format!("it does not decrypt: {err}")))?;
            inner
        }
        Err(DecodeError::WrongKey { .. }) => return Ok(false),
        Err(err) => return Err(refused(err.to_string())),
    };
    // The plaintext must be what the entry records before anything is replaced.
    super::fetch::decrypt(e, bytes, identities).map_err(refused)?;
    let suffix: u32 = rand::rng().random();
    let stem = e.object.trim_end_matches(".age");
    // An earlier rekey's suffix is replaced, never stacked.
    let stem = match stem.rsplit_once(".k") {
        Some((head, tail)) if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => stem,
    };
    let mut new = Entry {
        object: format!("{stem}.k{suffix:08x}.age"),
        ..e.clone()
    };
    let settings = EncodeSettings {
        compression: Compression::None,
        ..settings.clone()
    };
    let (stats, ()) = encode::store_part(store, &new.object_key(), &settings, cancel, move |w| {
        w.write_all(&inner)?;
        Ok(())
    })
    .await
    .map_err(failed)?;
    new.ciphertext_bytes = stats.ciphertext_bytes;
    new.ciphertext_sha256 = stats.ciphertext_sha256;
    let json = serde_json::to_vec_pretty(&new)
        .map_err(|err| failed(EncodeError::Source(Box::new(err))))?;
    let key = new.key();
    let (sig_key, prev_key) = (format!("{key}.minisig"), format!("{key}.minisig.prev"));
    let put = |k: String, b: Vec<u8>| async move { store.put_bytes(&k, b.into()).await };
    // The old entry's signature stays readable as .prev until the new entry is in place.
    if let Ok(old_sig) = store
        .get_bytes(&sig_key, crate::catalog::signature::MAX_SIGNATURE_BYTES)
        .await
    {
        put(prev_key.clone(), old_sig)
            .await
            .map_err(|err| failed(err.into()))?;
    }
    if let Some(k) = &settings.signing {
        let sig = k.sign_file(&json, &new.name(), &format!("wal:postgres/{}", new.target))?;
        put(sig_key, sig.into_bytes())
            .await
            .map_err(|err| failed(err.into()))?;
    }
    put(key, json).await.map_err(|err| failed(err.into()))?;
    for old in [prev_key, e.object_key()] {
        match store.delete(&old).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(err) => {
                tracing::warn!(key = %old, error = %err, "cannot delete what the rekey replaced; prune removes it later")
            }
        }
    }
    Ok(true)
}
