//! S3 (and S3-compatible) store on aws-sdk-s3.
//!
//! Choices that matter:
//! - Request checksums are calculated and validated only when an operation requires them:
//!   since 1.69 the SDK adds CRC32 by default and many S3-compatible servers reject that
//!   (awslabs/aws-sdk-rust#1240). Integrity is ours anyway: the manifest's sha256.
//! - Streams go up as multipart uploads with a bounded number of parts in flight, so memory
//!   is about `(MAX_PARTS_IN_FLIGHT + 1) × part size` whatever the object size. The part size
//!   doubles every 1,000 parts: S3 allows at most 10,000, and a fixed 8 MiB would cap an
//!   object at ~78 GiB (pgbackrest#1417 hit the same wall).
//! - Any failure, a producer that stops without `End`, or cancellation (SIGTERM) aborts the
//!   multipart upload, so no half object becomes visible and no parts linger.
//! - A finished upload is checked with a HEAD: the object the server reports must have the
//!   size that was sent, or the write fails (and the backup is never committed).
//! - Every key passes [`super::key_is_safe`] before a request is built: a forged manifest
//!   cannot make the client ask for `../other-bucket/…`.
//! - Every write asks for a CRC32 checksum (PutObject, CreateMultipartUpload, UploadPart,
//!   and each part's sum in CompleteMultipartUpload): S3 refuses writes into a bucket with
//!   Object Lock (default retention included) that carry neither `Content-MD5` nor an
//!   explicit checksum, and the SDK only sends one when asked (see above).
//! - With [`ObjectLock`], every PutObject and CreateMultipartUpload carries the mode and a
//!   retain-until date of now + retain. [`ReadStore::hold`] reads it back with a HEAD, so
//!   prune and rekey never attempt what a lock forbids (in a versioned bucket a plain
//!   DELETE of a locked object "succeeds" as a delete marker: the backup would vanish from
//!   every listing while its bytes stay, so the lock is checked, never tried).
//! - Requests time out (connect 10 s; each attempt of a non-streaming call 5 min), so an
//!   endpoint that accepts connections and never answers cannot hang a command.
//! - Transient errors (503 SlowDown, reset connections) are retried up to
//!   [`S3_MAX_ATTEMPTS`] times (backoff from 0.2 s, at most 4 s); a download whose body is cut resumes with a range request
//!   pinned to the object's ETag ([`Resume`]); a `CompleteMultipartUpload` that fails on a
//!   retry is accepted when the object is there with every byte sent.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockLegalHoldStatus,
    ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    BodyChunk, DeleteStore, Hold, LockMode, ObjectLock, ObjectMeta, ObjectReader, PendingUpload,
    ReadStore, S3Options, StoreError, WriteStore,
};

/// The innermost cause of an error (what the system said: "dns error: failed to lookup
/// address information", "Connection refused"), without the SDK's wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Attempts per request (the first and its retries) for transient errors.
const S3_MAX_ATTEMPTS: u32 = 6;

/// Rounds of [`S3_MAX_ATTEMPTS`] a read gets (reads are idempotent): a restore at 3 a.m.
/// through a proxy that drops one connection in three must not fail on six drops in a row
/// when a pause and another round would have carried it.
const READ_ROUNDS: u64 = 3;

/// True when another round of attempts may succeed: the connection was cut or timed out, or
/// the server answered 5xx. A refused connection or an unknown host (a wrong endpoint) is
/// not worth waiting for.
fn worth_another_round<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool
where
    E: std::error::Error + 'static,
{
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            let cause = root_cause(err).to_ascii_lowercase();
            !(cause.contains("refused")
                || cause.contains("dns")
                || cause.contains("lookup")
                || cause.contains("credentials")
                || cause.contains("identity"))
        }
        _ => err
            .raw_response()
            .is_some_and(|r| r.status().is_server_error()),
    }
}

/// Runs a read, giving it up to [`READ_ROUNDS`] rounds of attempts with a pause between
/// them while [`worth_another_round`] says so.
async fn patiently<T, E, F, Fut>(
    mut read: F,
) -> Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    >,
{
    let mut round = 1;
    loop {
        match read().await {
            Err(e) if round < READ_ROUNDS && worth_another_round(&e) => {
                tracing::debug!(round, error = %root_cause(&e), "a read failed every attempt of its round; pausing before another");
                tokio::time::sleep(Duration::from_secs(round)).await;
                round += 1;
            }
            other => return other,
        }
    }
}

/// Size of the first 1,000 parts; doubles for each following thousand.
pub const BASE_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently while the next one fills.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
/// Room for the chunk that crosses a part boundary: without it, `BytesMut` doubles its
/// allocation on that chunk and every part costs twice its size in memory. Producers send
/// chunks of about 1 MiB (the pipeline's batches); twice that is ample. (The store knows no
/// producer: the pipeline depends on the store, never the other way round.)
const HEADROOM: usize = 2 * 1024 * 1024;

/// Part size for a 1-based part number.
pub fn part_size(part_number: i32) -> usize {
    let doublings = ((part_number.max(1) - 1) / 1000).min(10) as u32;
    (BASE_PART_SIZE << doublings).min(MAX_PART_SIZE)
}

/// A store in an S3 bucket under a key prefix (AWS, MinIO, Ceph, R2…).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends without a slash.
    prefix: String,
    location: String,
    lock: Option<ObjectLock>,
    /// Where requests go and the region they are signed for, for messages.
    endpoint: String,
}

impl S3Store {
    /// Builds a client from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, profiles…).
    pub async fn from_env(bucket: &str, prefix: &str, opts: &S3Options) -> Self {
        // The attempt timeout covers a request until its response headers (a download's body
        // streams afterwards, under the pipeline's own idle timeout): generous enough for a
        // slow 8 MiB part upload, short enough that a silent endpoint fails the command.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(300))
            .build();
        // Busy S3 answers 503 SlowDown and proxies cut connections: the SDK's default of 3
        // attempts fails a nightly backup of thousands of requests now and then.
        let retries = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(S3_MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(200))
            // A wrong endpoint still fails within seconds (at most ~6 s of waits).
            .with_max_backoff(Duration::from_secs(4));
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries)
            .load()
            .await;
        // A second store's own account (`DR_COPY_AWS_…`), over the standard variables.
        let own = |name: &str| {
            opts.env_prefix
                .and_then(|p| std::env::var(format!("{p}{name}")).ok())
                .filter(|v| !v.is_empty())
        };
        let endpoint_url =
            own("AWS_ENDPOINT_URL").or_else(|| shared.endpoint_url().map(str::to_string));
        let custom_endpoint = endpoint_url.is_some();
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .force_path_style(opts.path_style.unwrap_or(custom_endpoint));
        if let Some(url) = &endpoint_url {
            conf = conf.endpoint_url(url);
        }
        if let Some(region) = own("AWS_REGION") {
            conf = conf.region(aws_sdk_s3::config::Region::new(region));
        } else if shared.region().is_none() {
            // S3-compatible servers rarely care; the SDK refuses to sign without one.
            conf = conf.region(aws_sdk_s3::config::Region::from_static("us-east-1"));
        }
        if let (Some(id), Some(secret)) = (own("AWS_ACCESS_KEY_ID"), own("AWS_SECRET_ACCESS_KEY")) {
            conf = conf.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id,
                secret,
                own("AWS_SESSION_TOKEN"),
                None,
                "kube-dr second store",
            ));
        }
        let conf = conf.build();
        let endpoint = format!(
            "{} (region {})",
            endpoint_url.unwrap_or_else(|| "AWS S3 (AWS_ENDPOINT_URL is not set)".to_string()),
            conf.region().map_or("us-east-1", |r| r.as_ref())
        );
        let mut store =
            Self::new(Client::from_conf(conf), bucket, prefix).with_object_lock(opts.object_lock);
        store.endpoint = endpoint;
        store
    }

    /// Locks every object this store writes from now on.
    pub fn with_object_lock(mut self, lock: Option<ObjectLock>) -> Self {
        self.lock = lock;
        self
    }

    /// The lock mode and retain-until date for an object written now.
    fn lock_now(&self) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        self.lock.map(|l| {
            let mode = match l.mode {
                LockMode::Governance => ObjectLockMode::Governance,
                LockMode::Compliance => ObjectLockMode::Compliance,
            };
            let until = std::time::SystemTime::now() + l.retain;
            (mode, aws_sdk_s3::primitives::DateTime::from(until))
        })
    }

    /// A store on `bucket` under `prefix`, with a configured client.
    pub fn new(client: Client, bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/').to_string();
        let location = super::location("s3", bucket, &prefix);
        S3Store {
            client,
            bucket: bucket.to_string(),
            prefix,
            location,
            lock: None,
            endpoint: "the configured endpoint".into(),
        }
    }

    /// The bucket key of a store key, refusing keys that could leave their directory.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        if !super::key_is_safe(key) {
            return Err(StoreError::BadKey {
                location: self.location.clone(),
                key: key.to_string(),
            });
        }
        Ok(self.bucket_key(key))
    }

    /// The bucket key of a listing prefix (which may be empty or end in `/`).
    fn bucket_key(&self, prefix: &str) -> String {
        super::under(&self.prefix, prefix)
    }

    async fn head(
        &self,
        key: &str,
        op: &'static str,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput, StoreError> {
        let full_key = self.full_key(key)?;
        patiently(|| {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .send()
        })
        .await
        .map_err(|e| self.map_err(op, key, e))
    }

    /// The directories directly under `prefix` (which is empty or ends in `/`): one page
    /// of a delimited listing, at most 1,000, names without the prefix or the slash.
    ///
    /// # Errors
    /// Unreachable store, denied listing.
    pub async fn dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.bucket_key(prefix);
        let full = if full.is_empty() || full.ends_with('/') {
            full
        } else {
            format!("{full}/")
        };
        let page = patiently(|| {
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .delimiter("/")
                .send()
        })
        .await
        .map_err(|e| self.map_err("list", prefix, e))?;
        Ok(page
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .filter_map(|p| p.strip_prefix(full.as_str()))
            .map(|p| p.trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .collect())
    }

    /// Checks that the object now stored under `key` has the size that was sent.
    async fn check_stored(&self, key: &str, sent: u64) -> Result<(), StoreError> {
        let head = self.head(key, "check").await?;
        let found = head.content_length().unwrap_or(-1);
        if u64::try_from(found).ok() != Some(sent) {
            return Err(StoreError::ShortWrite {
                location: self.location.clone(),
                key: key.to_string(),
                expected: sent,
                found: found.max(0) as u64,
            });
        }
        Ok(())
    }

    fn map_err<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_string);
        let detail = DisplayErrorContext(&err).to_string();
        let location = self.location.clone();
        let key = key.to_string();
        match (&err, status, code.as_deref()) {
            // The SDK's own text of these is a nested struct dump; one sentence says it.
            (SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_), _, _)
                if detail.contains("credentials") || detail.contains("identity") =>
            {
                StoreError::NoCredentials {
                    location,
                    detail: format!(
                        "no usable credentials for {} ({}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a web identity in the cluster)",
                        self.endpoint,
                        root_cause(&err)
                    ),
                }
            }
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) => {
                StoreError::Unreachable {
                    location,
                    detail: format!("{} at {}", root_cause(&err), self.endpoint),
                }
            }
            (_, _, Some("PermanentRedirect" | "AuthorizationHeaderMalformed"))
            | (_, Some(301), _) => StoreError::Failed {
                location,
                op,
                key,
                detail: format!(
                    "the bucket is in another region than {}: set AWS_REGION to the bucket's region",
                    self.endpoint
                ),
            },
            // Before the generic 404: a missing bucket is a wrong --store, not a missing key.
            (_, _, Some("NoSuchBucket")) => StoreError::Missing { location },
            (_, Some(404), _) | (_, _, Some("NoSuchKey")) => StoreError::NotFound { location, key },
            (_, Some(401 | 403), _) => StoreError::Denied {
                location,
                op,
                key,
                detail,
            },
            _ => StoreError::Failed {
                location,
                op,
                key,
                detail,
            },
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.bucket_key(key))
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = res {
            tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort multipart upload; prune removes stale uploads later");
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Bytes,
        mut buf: BytesMut,
        body: &mut mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let full_key = self.full_key(key)?;
        let (mode, until) = self.lock_now().unzip();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .send()
            .await
            .map_err(|e| self.map_err("start upload of", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(key, &upload_id, first, &mut buf, body, cancel)
            .await;
        match result {
            Ok(n) => Ok(n),
            Err(e) => {
                self.abort(key, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        buf: &mut BytesMut,
        body: &mut mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut parts = PartQueue {
            store: self,
            key,
            upload_id,
            cancel,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            next_part: 1,
            total: 0,
        };
        parts.push(first).await?;
        loop {
            let chunk = tokio::select! {
                () = cancel.cancelled() => return Err(parts.cancelled()),
                c = body.recv() => c,
            };
            match chunk {
                Some(BodyChunk::Data(bytes)) => {
                    super::rate::upload(bytes.len()).await;
                    buf.extend_from_slice(&bytes);
                    let size = part_size(parts.next_part);
                    if buf.len() >= size {
                        parts.push(buf.split_to(size).freeze()).await?;
                        buf.reserve(part_size(parts.next_part) + HEADROOM);
                    }
                }
                Some(BodyChunk::End) => {
                    if !buf.is_empty() {
                        parts.push(buf.split().freeze()).await?;
                    }
                    break;
                }
                None => {
                    return Err(StoreError::Incomplete {
                        location: self.location.clone(),
                        key: key.to_string(),
                    })
                }
            }
        }
        let (done, total) = parts.finish().await?;
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_err("complete upload of", key, e));
        if let Err(e) = completed {
            // The SDK retries a complete whose answer was lost; the retry then finds the
            // upload already completed (NoSuchUpload, or AccessDenied from some servers).
            // The object with every byte sent is the proof that the first one succeeded.
            if self.check_stored(key, total).await.is_err() {
                return Err(e);
            }
            tracing::warn!(key, error = %e, "completing the upload reported an error, but the object is there with every byte: its first answer was lost");
        }
        Ok(total)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: i32,
        data: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .upload_id(upload_id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map_err("upload part of", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(n)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .build())
    }
}

/// How often in a row (no byte arriving in between) a download is resumed before it fails.
const MAX_RESUMES: u32 = 8;
/// Bytes gathered from a download before they are handed to the reader.
const DOWNLOAD_BATCH: usize = 256 * 1024;
/// A body that delivers nothing for this long is treated as cut and resumed.
const BODY_IDLE: Duration = Duration::from_secs(60);

/// One download that survives cut bodies: the SDK retries a request until its response
/// headers, but a body cut half-way (a proxy, a reset connection, a server answering
/// `SlowDown` under load) would end a restore of hundreds of gigabytes. The rest is asked
/// for again with `Range: bytes=<received>-` and `If-Match: <etag>`, so the bytes that
/// arrive are exactly the continuation of the same object, never of a replaced one.
struct Resume {
    store: S3Store,
    key: String,
    etag: Option<String>,
    length: Option<u64>,
}

impl Resume {
    async fn run(self, mut body: ByteStream, tx: mpsc::Sender<std::io::Result<Bytes>>) {
        let (mut received, mut resumes) = (0u64, 0u32);
        // HTTP chunks are a few KiB; handing each across separately costs a wake-up each.
        let mut batch = BytesMut::new();
        loop {
            let next = tokio::time::timeout(BODY_IDLE, body.next()).await;
            if let Ok(Some(Ok(chunk))) = &next {
                received += chunk.len() as u64;
                // Progress: only cuts in a row without a byte between them count.
                resumes = 0;
                batch.extend_from_slice(chunk);
                if batch.len() < DOWNLOAD_BATCH {
                    continue;
                }
            }
            if !batch.is_empty() && tx.send(Ok(batch.split().freeze())).await.is_err() {
                return;
            }
            let cut = match next {
                Ok(Some(Ok(_))) => continue,
                Ok(None) if self.length.is_none_or(|l| received >= l) => return,
                Ok(None) => format!(
                    "the body ended after {received} of {} bytes",
                    self.length.unwrap_or(0)
                ),
                Ok(Some(Err(e))) => DisplayErrorContext(&e).to_string(),
                Err(_) => format!("the body stalled for {} s", BODY_IDLE.as_secs()),
            };
            if resumes >= MAX_RESUMES || self.length.is_none() || self.etag.is_none() {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "download of {} from {} was cut ({cut}) and could not be resumed ({resumes} attempt(s) in a row brought nothing)",
                        self.key, self.store.location
                    ))))
                    .await;
                return;
            }
            resumes += 1;
            tracing::warn!(key = %self.key, received, cut = %cut, attempt = resumes, "download cut: resuming where it stopped");
            tokio::time::sleep(Duration::from_millis(200 << resumes.min(5))).await;
            match self.rest(received).await {
                Ok(rest) => body = rest,
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "download of {} was cut ({cut}) and resuming it failed: {e}",
                            self.key
                        ))))
                        .await;
                    return;
                }
            }
        }
    }

    /// The object from byte `from` on, only if it is still the same object.
    async fn rest(&self, from: u64) -> Result<ByteStream, StoreError> {
        let store = &self.store;
        let out = store
            .client
            .get_object()
            .bucket(&store.bucket)
            .key(store.full_key(&self.key)?)
            .range(format!("bytes={from}-"))
            .set_if_match(self.etag.clone())
            .send()
            .await
            .map_err(|e| store.map_err("resume the download of", &self.key, e))?;
        Ok(out.body)
    }
}

/// The parts of one multipart upload: at most [`MAX_PARTS_IN_FLIGHT`] uploading at once.
struct PartQueue<'a> {
    store: &'a S3Store,
    key: &'a str,
    upload_id: &'a str,
    cancel: &'a CancellationToken,
    in_flight: JoinSet<Result<CompletedPart, StoreError>>,
    done: Vec<CompletedPart>,
    next_part: i32,
    total: u64,
}

impl PartQueue<'_> {
    fn cancelled(&self) -> StoreError {
        StoreError::Cancelled {
            location: self.store.location.clone(),
            key: self.key.to_string(),
        }
    }

    /// Waits for one in-flight part; `false` when none is left.
    async fn join_one(&mut self) -> Result<bool, StoreError> {
        tokio::select! {
            () = self.cancel.cancelled() => Err(self.cancelled()),
            r = self.in_flight.join_next() => match r {
                None => Ok(false),
                Some(r) => {
                    self.done.push(r.expect("part upload task panicked")?);
                    Ok(true)
                }
            },
        }
    }

    async fn push(&mut self, part: Bytes) -> Result<(), StoreError> {
        while self.in_flight.len() >= MAX_PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        self.total += part.len() as u64;
        let store = self.store.clone();
        let (key, upload_id, n) = (
            self.key.to_string(),
            self.upload_id.to_string(),
            self.next_part,
        );
        self.in_flight
            .spawn(async move { store.upload_part(&key, &upload_id, n, part).await });
        self.next_part += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<(Vec<CompletedPart>, u64), StoreError> {
        while self.join_one().await? {}
        self.done.sort_by_key(|p| p.part_number());
        Ok((self.done, self.total))
    }
}

#[async_trait]
impl ReadStore for S3Store {
    fn location(&self) -> &str {
        &self.location
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix = self.bucket_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Page by page, each page read patiently: a listing of thousands of backups
            // must not start over (or fail) on one dropped connection.
            let page = patiently(|| {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .set_continuation_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| self.map_err("list", prefix, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                if key.len() < strip {
                    continue;
                }
                out.push(ObjectMeta {
                    key: key[strip..].to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let full_key = self.full_key(key)?;
        let out = patiently(|| {
            self.client
                .get_object()
                .bucket(&self.bucket)
                .key(&full_key)
                .send()
        })
        .await
        .map_err(|e| self.map_err("download", key, e))?;
        let length = u64::try_from(out.content_length().unwrap_or(-1)).ok();
        let etag = out.e_tag().map(str::to_string);
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let resume = Resume {
            store: self.clone(),
            key: key.to_string(),
            etag,
            length,
        };
        tokio::spawn(resume.run(out.body, tx));
        let mut rx = rx;
        let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Box::pin(super::rate::Limited::new(
            tokio_util::io::StreamReader::new(chunks),
        )))
    }

    async fn hold(&self, key: &str) -> Result<Option<Hold>, StoreError> {
        let head = self.head(key, "check the lock of").await?;
        let until = head
            .object_lock_retain_until_date()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
            .filter(|t| *t > chrono::Utc::now());
        let legal_hold =
            head.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On);
        if until.is_none() && !legal_hold {
            return Ok(None);
        }
        Ok(Some(Hold {
            mode: head.object_lock_mode().map(|m| m.as_str().to_string()),
            until,
            legal_hold,
        }))
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut out = Vec::new();
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(self.bucket_key(prefix))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| {
                    let unsupported = e.raw_response().is_some_and(|r| r.status().as_u16() == 501)
                        || e.code() == Some("NotImplemented");
                    if unsupported {
                        StoreError::Unsupported {
                            location: self.location.clone(),
                            op: "list unfinished multipart uploads",
                            detail: "the server does not implement ListMultipartUploads; add a bucket lifecycle rule AbortIncompleteMultipartUpload instead".into(),
                        }
                    } else {
                        self.map_err("list uploads under", prefix, e)
                    }
                })?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let started = u
                    .initiated()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_else(chrono::Utc::now);
                out.push(PendingUpload {
                    key: key.get(strip..).unwrap_or(key).to_string(),
                    handle: id.to_string(),
                    started,
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
        }
    }
}

#[async_trait]
impl WriteStore for S3Store {
    async fn extend_lock(&self, key: &str) -> Result<(), StoreError> {
        let Some((mode, until)) = self.lock_now() else {
            return Ok(());
        };
        let current = self.hold(key).await?.and_then(|h| h.until);
        if current.is_some_and(|c| c.timestamp() >= until.secs()) {
            return Ok(());
        }
        let mode = match mode {
            ObjectLockMode::Compliance => ObjectLockRetentionMode::Compliance,
            _ => ObjectLockRetentionMode::Governance,
        };
        let full_key = self.full_key(key)?;
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(&full_key)
            .retention(
                ObjectLockRetention::builder()
                    .mode(mode)
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_err("extend the lock of", key, e))?;
        Ok(())
    }

    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let sent = data.len() as u64;
        let (mode, until) = self.lock_now().unzip();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map_err("upload", key, e))?;
        self.check_stored(key, sent).await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        // Objects smaller than one part go up in a single PUT: no multipart state to abort.
        let opening = super::opening(
            &mut body,
            cancel,
            BASE_PART_SIZE,
            BASE_PART_SIZE + HEADROOM,
            &self.location,
            key,
        )
        .await?;
        match opening {
            super::Opening::Whole(bytes) => {
                let n = bytes.len() as u64;
                self.put_bytes(key, bytes).await?;
                Ok(n)
            }
            super::Opening::Parts { first, rest } => {
                let sent = self
                    .put_multipart(key, first, rest, &mut body, cancel)
                    .await?;
                self.check_stored(key, sent).await?;
                Ok(sent)
            }
        }
    }
}

#[async_trait]
impl DeleteStore for S3Store {
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?)
            .send()
            .await
            .map_err(|e| self.map_err("delete", key, e))?;
        Ok(())
    }

    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full_key(&upload.key)?)
            .upload_id(&upload.handle)
            .send()
            .await
            .map_err(|e| self.map_err("abort upload of", &upload.key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_so_ten_thousand_parts_hold_terabytes() {
        assert_eq!(part_size(1), BASE_PART_SIZE);
        assert_eq!(part_size(1000), BASE_PART_SIZE);
        assert_eq!(part_size(1001), 2 * BASE_PART_SIZE);
        let capacity: u64 = (1..=10_000).map(|n| part_size(n) as u64).sum();
        assert!(capacity > 5 << 40, "capacity {capacity}");
        assert!((1..=10_000).all(|n| part_size(n) >= 5 << 20 && part_size(n) <= MAX_PART_SIZE));
    }
}
