//! Where ciphertext lives. One set of traits, split by capability so a command holds only
//! what it needs (list/verify/restore read, backup writes, prune deletes), and two
//! implementations: [`s3`] (aws-sdk-s3, any S3-compatible server) and [`local`] (a directory).
//!
//! Keys are relative to the store's prefix and always use `/`.

pub mod local;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// A streaming download.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// What a producer sends to [`WriteStore::put_stream`]. The explicit `End` matters: a
/// producer that dies (a panic, a failed dump) drops its sender without sending it, and the
/// store then aborts instead of committing a truncated object.
#[derive(Debug)]
pub enum BodyChunk {
    Data(Bytes),
    End,
}

/// Errors from any store. Messages name the store and key and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found in {location}")]
    NotFound { location: String, key: String },
    #[error("cannot reach {location}: {detail}; check the endpoint (AWS_ENDPOINT_URL / --store) and the network")]
    Unreachable { location: String, detail: String },
    #[error(
        "{location} refused {op} of {key}: {detail}; check the credentials and the bucket policy"
    )]
    Denied {
        location: String,
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("{op} {key} in {location} failed: {detail}")]
    Failed {
        location: String,
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "upload of {key} to {location} was cancelled (shutdown requested); nothing was committed"
    )]
    Cancelled { location: String, key: String },
    #[error(
        "upload of {key} to {location} stopped before its producer finished; nothing was committed"
    )]
    Incomplete { location: String, key: String },
    #[error("{location} cannot {op}: {detail}")]
    Unsupported {
        location: String,
        op: &'static str,
        detail: String,
    },
    #[error("invalid store {url:?}: {reason}; use s3://bucket/prefix or file:///absolute/dir")]
    BadUrl { url: String, reason: String },
}

/// Listing and reading: all that list, verify and restore need.
#[async_trait]
pub trait ReadStore: Send + Sync + fmt::Debug {
    /// Human-readable location, e.g. `s3://backups/prod` (never includes credentials).
    fn location(&self) -> &str;

    /// Every object whose key starts with `prefix`, in lexical key order.
    ///
    /// # Errors
    /// Unreachable store, denied listing.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Streams one object.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the key does not exist, and transport errors.
    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError>;

    /// Reads one small object whole (manifests).
    ///
    /// # Errors
    /// As [`ReadStore::get`], plus read errors.
    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let mut reader = self.get(key).await?;
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Failed {
                location: self.location().to_string(),
                op: "read",
                key: key.to_string(),
                detail: e.to_string(),
            })?;
        Ok(buf)
    }
}

/// Writing new objects: what a backup needs. Writers never overwrite a committed backup
/// because every backup gets a fresh id.
#[async_trait]
pub trait WriteStore: ReadStore {
    /// Stores a small object in one request (manifests).
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Stores a stream of unknown length. The object becomes visible only after
    /// [`BodyChunk::End`] arrives; if the channel closes without it, or `cancel` fires, the
    /// upload is aborted and nothing is left behind. Returns the number of bytes stored.
    ///
    /// # Errors
    /// [`StoreError::Incomplete`], [`StoreError::Cancelled`], transport or permission errors.
    async fn put_stream(
        &self,
        key: &str,
        body: mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError>;
}

/// An upload that was started and never completed nor aborted (a crashed writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    /// Store-specific handle (S3 upload id, local temporary file name).
    pub handle: String,
    pub started: chrono::DateTime<chrono::Utc>,
}

/// Deleting objects: only prune holds this.
#[async_trait]
pub trait DeleteStore: WriteStore {
    /// Deletes one object; deleting a missing key is not an error.
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Unfinished uploads under `prefix`. They cost storage and are invisible to listing.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] when the server cannot list them, transport errors.
    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError>;

    /// Aborts one unfinished upload, freeing what it stored.
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError>;
}

/// Settings for opening an S3 store, beyond what the standard AWS variables carry.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Force path-style addressing; defaults to on when a custom endpoint is set, since
    /// most S3-compatible servers need it.
    pub path_style: Option<bool>,
}

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    S3 { bucket: String, prefix: String },
    Local { root: std::path::PathBuf },
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name"));
            }
            let prefix = prefix.trim_matches('/').to_string();
            Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            })
        } else if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("the directory must be absolute (file:///dir)"));
            }
            Ok(StoreUrl::Local { root: path.into() })
        } else {
            Err(bad("unknown scheme"))
        }
    }
}

/// Opens the store a URL names, with every capability; callers narrow it to the trait they
/// need.
///
/// # Errors
/// [`StoreError::Io`] when a local directory cannot be created.
pub async fn open(url: &StoreUrl, s3: &S3Options) -> Result<Arc<dyn DeleteStore>, StoreError> {
    match url {
        StoreUrl::S3 { bucket, prefix } => {
            Ok(Arc::new(s3::S3Store::from_env(bucket, prefix, s3).await))
        }
        StoreUrl::Local { root } => Ok(Arc::new(local::LocalStore::open(root).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            "s3://b/some/prefix/".parse::<StoreUrl>().unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            "s3://b".parse::<StoreUrl>().unwrap(),
            StoreUrl::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            "file:///var/backups".parse::<StoreUrl>().unwrap(),
            StoreUrl::Local {
                root: "/var/backups".into()
            }
        );
        for bad in ["s3://", "file://relative", "gs://b", "/tmp/x"] {
            let err = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(err.contains("s3://bucket/prefix"), "{err}");
        }
    }
}
