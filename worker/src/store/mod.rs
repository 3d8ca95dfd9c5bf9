//! Where ciphertext lives. One set of traits, split by capability so a command holds only
//! what it needs (list/verify/restore read, backup writes, prune deletes), and four
//! implementations: [`s3`] (aws-sdk-s3, any S3-compatible server), [`azure`] (Azure Blob),
//! [`gcs`] (Google Cloud Storage) and [`local`] (a directory).
//!
//! Keys are relative to the store's prefix and always use `/`.

pub mod azure;
pub mod gcs;
pub mod local;
pub mod rate;
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
    /// Key relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A streaming download.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// What a producer sends to [`WriteStore::put_stream`]. The explicit `End` matters: a
/// producer that dies (a panic, a failed dump) drops its sender without sending it, and the
/// store then aborts instead of committing a truncated object.
#[derive(Debug)]
pub enum BodyChunk {
    /// The next bytes.
    Data(Bytes),
    /// The producer finished; the upload may complete.
    End,
}

/// Errors from any store. Messages name the store and key and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object.
    #[error("{key} not found in {location}")]
    NotFound {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
    },
    /// No answer from the store.
    #[error("cannot reach {location}: {detail}; check the store's endpoint (--store, and AWS_ENDPOINT_URL, AZURE_STORAGE_CONNECTION_STRING or STORAGE_EMULATOR_HOST where set) and the network")]
    Unreachable {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// What the server or the system said.
        detail: String,
    },
    /// No credentials could be found for the store.
    #[error("{location}: {detail}")]
    NoCredentials {
        /// The store.
        location: String,
        /// What to set.
        detail: String,
    },
    /// The credentials or the bucket policy refuse the operation.
    #[error(
        "{location} refused {op} of {key}: {detail}; check the credentials and the bucket policy"
    )]
    Denied {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The operation (e.g. `put`, `list`).
        op: &'static str,
        /// The object key.
        key: String,
        /// What the server or the system said.
        detail: String,
    },
    /// Any other failure of an operation.
    #[error("{op} {key} in {location} failed: {detail}")]
    Failed {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The operation (e.g. `put`, `list`).
        op: &'static str,
        /// The object key.
        key: String,
        /// What the server or the system said.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{op} {path} failed")]
    Io {
        /// The operation (e.g. `put`, `list`).
        op: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The upload was aborted by a shutdown.
    #[error(
        "upload of {key} to {location} was cancelled (shutdown requested); nothing was committed"
    )]
    Cancelled {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
    },
    /// The producer stopped without finishing; the upload was aborted.
    #[error(
        "upload of {key} to {location} stopped before its producer finished; nothing was committed"
    )]
    Incomplete {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
    },
    /// The store cannot do this (e.g. list unfinished uploads).
    #[error("{location} cannot {op}: {detail}")]
    Unsupported {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The operation (e.g. `put`, `list`).
        op: &'static str,
        /// What the server or the system said.
        detail: String,
    },
    /// A `--store` that is none of s3://, az://, gs:// or file://.
    #[error("invalid store {url:?}: {reason}; use s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or file:///absolute/dir")]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A store that does not exist (only a backup creates one).
    #[error("store {location} does not exist; check --store / DR_STORE for a typo (a backup creates a missing directory, list/verify/restore/prune never do)")]
    Missing {
        /// The store (bucket and prefix, or directory).
        location: String,
    },
    /// A key that could resolve outside its backup's directory.
    #[error("refusing object name {key:?} in {location}: it could leave its backup's directory (only names that match the layout in docs/FORMAT.md are used)")]
    BadKey {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
    },
    /// A local object that is a symlink, FIFO or directory.
    #[error("{key} in {location} is not a regular file ({what}); refusing to read it")]
    NotRegular {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
        /// What was being done or read.
        what: &'static str,
    },
    /// An object larger than the reader accepts.
    #[error("{key} in {location} is larger than {limit} bytes; refusing to read it whole")]
    TooLarge {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
        /// The largest size read, in bytes.
        limit: u64,
    },
    /// The store holds fewer or more bytes than were written.
    #[error("the store {location} reported {key} as {found} bytes after it was written, but {expected} were sent; nothing was committed, check the store's free space and health")]
    ShortWrite {
        /// The store (bucket and prefix, or directory).
        location: String,
        /// The object key.
        key: String,
        /// What the manifest (or the writer) recorded.
        expected: u64,
        /// What is there.
        found: u64,
    },
}

/// Checks a key before any store touches it: `/`-separated segments, none empty, `.` or
/// `..`, no control characters or backslashes, and no percent-escape that decodes to a
/// separator or a control character (some servers decode keys once more). Keys are built
/// from validated names, so this is a second wall: a damaged or forged manifest must never
/// make a store read (or write) outside the backup it describes.
pub fn key_is_safe(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(segment_is_safe)
        && !key.starts_with('/')
}

/// One path segment (an object name within a directory), by the rules of [`key_is_safe`].
pub fn segment_is_safe(segment: &str) -> bool {
    if segment.is_empty()
        || segment == "."
        || segment == ".."
        || segment
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == '/')
    {
        return false;
    }
    // Decoded once more, as a server that unescapes keys would: still one safe segment.
    let decoded = percent_decode(segment);
    decoded == segment
        || decoded
            .split(['/', '\\'])
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.chars().any(char::is_control))
}

/// `%XX` escapes decoded (invalid escapes stay as they are; invalid UTF-8 is replaced).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error and its causes, each once: what a client library wraps, unwrapped.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = cause.source();
    }
    out
}

/// A download's body as a reader, under the bandwidth limit: it fails when no chunk arrives
/// for `idle` (a stalled body must not hang a restore for ever), and a transport error
/// becomes what `describe` says of it.
pub(crate) fn idle_reader<S, E>(
    stream: S,
    idle: std::time::Duration,
    location: String,
    key: String,
    describe: impl Fn(E) -> String + Send + Sync + 'static,
) -> ObjectReader
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Send + 'static,
{
    use futures::StreamExt;
    let describe = Arc::new(describe);
    let chunks = futures::stream::unfold(Some(stream), move |state| {
        let (location, key, describe) = (location.clone(), key.clone(), describe.clone());
        async move {
            let mut stream = state?;
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(describe(e))), None)),
                Err(_) => Some((
                    Err(std::io::Error::other(format!(
                        "download of {key} from {location} stalled: no byte for {} s",
                        idle.as_secs()
                    ))),
                    None,
                )),
            }
        }
    });
    Box::pin(rate::Limited::new(tokio_util::io::StreamReader::new(
        Box::pin(chunks),
    )))
}

/// How a streamed upload starts (see [`opening`]).
pub(crate) enum Opening {
    /// The whole object, smaller than one part: one request, no multipart state.
    Whole(Bytes),
    /// The first part, and what already arrived beyond it.
    Parts {
        /// Exactly one part's bytes.
        first: Bytes,
        /// The rest received so far (its capacity is kept for the next part).
        rest: bytes::BytesMut,
    },
}

/// Reads `body` until `part` bytes have arrived or it ends, under the bandwidth limit: what
/// every store's `put_stream` does first, since an object smaller than one part goes up in
/// a single request. `capacity` is the buffer's (a part plus room for the chunk that
/// crosses its end, so the buffer never doubles).
///
/// # Errors
/// [`StoreError::Cancelled`] when `cancel` fires, [`StoreError::Incomplete`] when the
/// producer stops without [`BodyChunk::End`].
pub(crate) async fn opening(
    body: &mut mpsc::Receiver<BodyChunk>,
    cancel: &CancellationToken,
    part: usize,
    capacity: usize,
    location: &str,
    key: &str,
) -> Result<Opening, StoreError> {
    let mut buf = bytes::BytesMut::with_capacity(capacity);
    loop {
        let chunk = tokio::select! {
            () = cancel.cancelled() => return Err(StoreError::Cancelled {
                location: location.to_string(), key: key.to_string() }),
            c = body.recv() => c,
        };
        match chunk {
            Some(BodyChunk::Data(bytes)) => {
                rate::upload(bytes.len()).await;
                buf.extend_from_slice(&bytes);
                if buf.len() >= part {
                    let first = buf.split_to(part).freeze();
                    return Ok(Opening::Parts { first, rest: buf });
                }
            }
            Some(BodyChunk::End) => return Ok(Opening::Whole(buf.freeze())),
            None => {
                return Err(StoreError::Incomplete {
                    location: location.to_string(),
                    key: key.to_string(),
                })
            }
        }
    }
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

    /// Reads one small object whole (manifests), refusing objects larger than `limit`
    /// bytes without holding more than `limit + 1` of them.
    ///
    /// # Errors
    /// As [`ReadStore::get`], [`StoreError::TooLarge`], plus read errors.
    async fn get_bytes(&self, key: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let reader = self.get(key).await?;
        let mut buf = Vec::new();
        reader
            .take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::Failed {
                location: self.location().to_string(),
                op: "read",
                key: key.to_string(),
                detail: e.to_string(),
            })?;
        if buf.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                location: self.location().to_string(),
                key: key.to_string(),
                limit,
            });
        }
        Ok(buf)
    }

    /// What stops `key` from being deleted now (an object lock's retention or a legal
    /// hold); `None` when nothing does. Stores without object lock say `None`.
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn hold(&self, key: &str) -> Result<Option<Hold>, StoreError> {
        let _ = key;
        Ok(None)
    }

    /// Unfinished uploads under `prefix`. They cost storage and are invisible to listing.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] when the server cannot list them, transport errors.
    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError>;
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

    /// Makes an existing object retained at least as long as one written now would be,
    /// when this store locks what it writes (an incremental backup's reference to an
    /// older object must not outlive that object's lock). Never shortens a retention.
    /// Stores without locks do nothing.
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn extend_lock(&self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// An upload that was started and never completed nor aborted (a crashed writer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Key it was meant for.
    pub key: String,
    /// Store-specific handle (S3 upload id, local temporary file name).
    pub handle: String,
    /// When it was started.
    pub started: chrono::DateTime<chrono::Utc>,
}

/// Why an object cannot be deleted yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    /// The retention mode (`GOVERNANCE`, `COMPLIANCE`), if a retention date is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Until when the retention holds it (`None`: a legal hold only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// A legal hold is on (no date: it lasts until someone lifts it).
    pub legal_hold: bool,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.until, self.legal_hold) {
            (Some(t), false) => write!(
                f,
                "object lock ({}) until {}",
                self.mode.as_deref().unwrap_or("retention"),
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            (Some(t), true) => write!(
                f,
                "a legal hold, and object lock until {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            (None, _) => f.write_str("a legal hold (lasts until it is lifted)"),
        }
    }
}

/// Object Lock (WORM) for new objects: every object a backup writes, the manifest too, is
/// retained until `now + retain` at the moment it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Governance (privileged users may lift it) or compliance (nobody may, not even root).
    pub mode: LockMode,
    /// How long each object is retained.
    pub retain: std::time::Duration,
}

/// `--object-lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LockMode {
    /// Users with s3:BypassGovernanceRetention may still delete: for trying it out.
    Governance,
    /// Nobody can delete or shorten it before the date, not even the account root.
    Compliance,
}

/// Deleting objects: only prune holds this.
#[async_trait]
pub trait DeleteStore: WriteStore {
    /// Deletes one object; deleting a missing key is not an error.
    ///
    /// # Errors
    /// Transport or permission errors.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

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
    /// Lock every object written (backups only).
    pub object_lock: Option<ObjectLock>,
    /// Read the endpoint, region and credentials from `<prefix>AWS_ENDPOINT_URL`,
    /// `<prefix>AWS_REGION`, `<prefix>AWS_ACCESS_KEY_ID`, `<prefix>AWS_SECRET_ACCESS_KEY`
    /// (and `…AWS_SESSION_TOKEN`) where set, over the standard variables: a second store
    /// with its own account (`worker copy --to`, `DR_COPY_`).
    pub env_prefix: Option<&'static str>,
}

/// A parsed `--store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An S3 bucket and key prefix.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
    /// An Azure Blob container and blob-name prefix.
    Azure {
        /// The container.
        container: String,
        /// The prefix (may be empty).
        prefix: String,
    },
    /// A Google Cloud Storage bucket and object-name prefix.
    Gcs {
        /// The bucket.
        bucket: String,
        /// The prefix (may be empty).
        prefix: String,
    },
    /// A local directory.
    Local {
        /// The directory.
        root: std::path::PathBuf,
    },
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: if s.contains('@') {
                "(withheld: it may hold credentials)".into()
            } else {
                s.to_string()
            },
            reason: reason.to_string(),
        };
        if s.contains('@') {
            return Err(bad("credentials do not belong in the store URL (they would show in process lists and logs); pass them in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AZURE_STORAGE_KEY, GOOGLE_APPLICATION_CREDENTIALS)"));
        }
        let split = |rest: &str, what: &str| {
            let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if name.is_empty() {
                return Err(bad(&format!("no {what} name")));
            }
            Ok((name.to_string(), prefix.trim_matches('/').to_string()))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest, "bucket")?;
            Ok(StoreUrl::S3 { bucket, prefix })
        } else if let Some(rest) = s.strip_prefix("az://") {
            let (container, prefix) = split(rest, "container")?;
            Ok(StoreUrl::Azure { container, prefix })
        } else if let Some(rest) = s.strip_prefix("gs://") {
            let (bucket, prefix) = split(rest, "bucket")?;
            Ok(StoreUrl::Gcs { bucket, prefix })
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

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, name, prefix) = match self {
            StoreUrl::S3 { bucket, prefix } => ("s3", bucket, prefix),
            StoreUrl::Azure { container, prefix } => ("az", container, prefix),
            StoreUrl::Gcs { bucket, prefix } => ("gs", bucket, prefix),
            StoreUrl::Local { root } => return write!(f, "file://{}", root.display()),
        };
        f.write_str(&location(scheme, name, prefix))
    }
}

/// `scheme://bucket` or `scheme://bucket/prefix`: how a bucket store names itself.
pub(crate) fn location(scheme: &str, bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("{scheme}://{bucket}")
    } else {
        format!("{scheme}://{bucket}/{prefix}")
    }
}

/// A store key (or listing prefix) as its name in the bucket, under the store's `prefix`
/// (empty, or without slashes at either end).
pub(crate) fn under(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Whether opening a store may create it: only a backup creates a missing local directory;
/// every other command reports a missing store, because after a typo "no backups" is the
/// worst possible answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// list, verify, restore, prune: a missing store is an error (a typo).
    MustExist,
    /// backup: create the directory.
    CreateIfMissing,
}

/// Opens the store a URL names, with every capability; callers narrow it to the trait they
/// need.
///
/// # Errors
/// [`StoreError::Missing`] for a local directory that does not exist (with
/// [`OpenMode::MustExist`]), [`StoreError::Io`] when it cannot be created.
pub async fn open(
    url: &StoreUrl,
    s3: &S3Options,
    mode: OpenMode,
) -> Result<Arc<dyn DeleteStore>, StoreError> {
    match url {
        StoreUrl::S3 { bucket, prefix } => {
            Ok(Arc::new(s3::S3Store::from_env(bucket, prefix, s3).await))
        }
        _ if s3.object_lock.is_some() => Err(StoreError::Unsupported {
            location: url.to_string(),
            op: "lock objects",
            detail: "object lock (--object-lock / DR_OBJECT_LOCK) needs an S3 store; on Azure Blob or GCS set an immutability or retention policy on the container or bucket instead (docs/OPERATIONS.md), a local directory has none".into(),
        }),
        StoreUrl::Azure { container, prefix } => Ok(Arc::new(azure::AzureStore::from_env(
            container,
            prefix,
            s3.env_prefix,
        )?)),
        StoreUrl::Gcs { bucket, prefix } => Ok(Arc::new(gcs::GcsStore::from_env(
            bucket,
            prefix,
            s3.env_prefix,
        )?)),
        StoreUrl::Local { root } => Ok(Arc::new(match mode {
            OpenMode::MustExist => local::LocalStore::open(root).await?,
            OpenMode::CreateIfMissing => local::LocalStore::create(root).await?,
        })),
    }
}

/// S3 stores beside `url` (under its parent prefix) that hold backups, as store URLs: what
/// `list` suggests when the store given is empty, since a typo in an S3 prefix names an
/// empty store rather than a missing one. A sibling holds backups when one of its
/// directories is an engine's (`is_engine`: the store knows no engines). At most 10; the
/// store itself is never among them; none for a local directory (a mistyped one does not
/// exist, which is an error).
///
/// Bounded: one listing of the parent's directories (a page) and one of each of the first
/// [`SIBLINGS_ASKED`] of them; a bucket of millions of objects is never walked (it once
/// was, and `list` of an empty prefix took minutes in a big bucket).
///
/// # Errors
/// The parent's listing errors.
pub async fn stores_beside(
    url: &StoreUrl,
    s3: &S3Options,
    is_engine: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>, StoreError> {
    let mut found = std::collections::BTreeSet::new();
    match url {
        StoreUrl::S3 { bucket, prefix } => {
            let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
            let store = s3::S3Store::from_env(bucket, parent, s3).await;
            for child in store.dirs("").await?.into_iter().take(SIBLINGS_ASKED) {
                let full = if parent.is_empty() {
                    child.clone()
                } else {
                    format!("{parent}/{child}")
                };
                if full == *prefix {
                    continue;
                }
                if store
                    .dirs(&format!("{child}/"))
                    .await?
                    .iter()
                    .any(|d| is_engine(d))
                {
                    found.insert(format!("s3://{bucket}/{full}"));
                    if found.len() == 10 {
                        break;
                    }
                }
            }
        }
        // A mistyped directory does not exist, which is an error already; an existing empty
        // one is a new store (and /tmp holds many unrelated ones).
        StoreUrl::Local { .. } => {}
        // Guessing at typos is for S3 only, for now.
        StoreUrl::Azure { .. } | StoreUrl::Gcs { .. } => {}
    }
    Ok(found.into_iter().collect())
}

/// How many sibling directories [`stores_beside`] asks about.
pub const SIBLINGS_ASKED: usize = 50;

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
        assert_eq!(
            "az://c/p/".parse::<StoreUrl>().unwrap(),
            StoreUrl::Azure {
                container: "c".into(),
                prefix: "p".into()
            }
        );
        assert_eq!(
            "gs://b".parse::<StoreUrl>().unwrap(),
            StoreUrl::Gcs {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        for bad in ["s3://", "file://relative", "gs://", "az:///p", "/tmp/x"] {
            let err = bad.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(err.contains("s3://bucket/prefix"), "{err}");
        }
    }

    #[test]
    fn credentials_in_store_urls_are_refused_and_never_echoed() {
        for url in [
            "s3://AKIAEXAMPLE:s3cr3t-Value@bucket/prefix",
            "file://user:s3cr3t-Value@/dir",
        ] {
            let err = url.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
            assert!(
                !err.contains("s3cr3t-Value") && !err.contains("AKIAEXAMPLE"),
                "{err}"
            );
        }
    }

    #[test]
    fn keys_that_could_leave_their_directory_are_unsafe() {
        for bad in [
            "",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a%2F..%2Fb",
            "a/%2e%2e/b",
            "a/x%00y",
            "a/line\nbreak",
            "a\\..\\b",
            "a/%5C..%5Cb",
        ] {
            assert!(!key_is_safe(bad), "{bad:?} accepted");
        }
        for good in [
            "postgres/prod/20261122T020000Z-7f3a9c/manifest.json",
            "postgres/prod/20261122T020000Z-7f3a9c/db-my%20db%2F2.pgdump.zst.age",
            "clickhouse/signoz/20261122T020000Z-7f3a9c/t-signoz_logs.logs_v2.native.zst.age",
            "50%.txt",
        ] {
            assert!(key_is_safe(good), "{good:?} refused");
        }
    }
}
