//! Google Cloud Storage (`gs://bucket/prefix`) over its JSON API, with tokens from gcp_auth.
//!
//! Why not object_store's GCS client: it writes through the XML API's multipart uploads,
//! which fake-gcs-server (the emulator the tests run against) does not implement
//! (fsouza/fake-gcs-server#852), so the code that ships could never be tested here. The
//! JSON API's resumable uploads are what Google's own client libraries use, and the
//! emulator implements them.
//!
//! The store rules of [`super`] hold as on S3:
//! - A stream goes up as one resumable upload, in chunks of [`CHUNK`] (a multiple of the
//!   256 KiB the API requires), one chunk sent while the next fills: memory stays flat. The
//!   object exists only once the last chunk, which carries the total size, is accepted. An
//!   aborted upload's session is cancelled; an abandoned one expires after a week and is
//!   never visible.
//! - A chunk whose answer is lost is not sent blindly again: the session is asked how many
//!   bytes it holds and the upload goes on from there; a final chunk whose answer was lost
//!   is found complete the same way. (fake-gcs-server, unlike GCS, completes an upload when
//!   asked so; the tests of lost answers run on Azurite for that reason.) A chunk the server
//!   refused (5xx, 429) is sent again. The object's size in the server's answer must be what
//!   was sent.
//! - Keys pass [`super::key_is_safe`] and are percent-encoded whole (a `/` inside a key is
//!   part of the object name, never a path step).
//! - Tokens (`GOOGLE_APPLICATION_CREDENTIALS`, or the metadata server: GKE workload
//!   identity) are sent as headers and never appear in a message. `STORAGE_EMULATOR_HOST`
//!   points at an emulator, as for Google's own libraries, and sends no token.
//! - Requests other than downloads time out after 5 minutes; a download fails when no byte
//!   arrives for a minute. Transient failures (connection errors, 408, 429, 5xx) are
//!   retried with backoff (at most [`ATTEMPTS`] attempts, waits up to 4 s).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::sync::{mpsc, OnceCell};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error_chain as chain;
use super::{
    BodyChunk, DeleteStore, ObjectMeta, ObjectReader, PendingUpload, ReadStore, StoreError,
    WriteStore,
};

/// Resumable chunk size: a multiple of 256 KiB, as the API requires of every chunk but the
/// last.
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Attempts per request (and per chunk) before a transient failure is reported.
const ATTEMPTS: u32 = 6;
/// A download that delivers nothing for this long is failed rather than left hanging.
const BODY_IDLE: Duration = Duration::from_secs(60);
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// The most of an error answer read: its message is a line, and a hostile or broken server
/// must not make a client hold (or print) megabytes.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of a JSON answer read (a listing page of 1,000 objects is about 300 KiB).
const JSON_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Up to `limit` bytes of an answer's body, and whether there was more.
async fn capped(mut resp: Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// Where tokens come from.
#[derive(Clone)]
enum Auth {
    /// An emulator: no token.
    None,
    /// Found on first use (a key file, or the metadata server).
    Google {
        provider: Arc<OnceCell<Arc<dyn gcp_auth::TokenProvider>>>,
        /// `<prefix>GOOGLE_APPLICATION_CREDENTIALS` for a second store's own account.
        key_file: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "emulator (no token)",
            Auth::Google { .. } => "google credentials",
        })
    }
}

/// A store in a GCS bucket under a prefix.
#[derive(Debug, Clone)]
pub struct GcsStore {
    http: reqwest::Client,
    /// Downloads: no total timeout, an idle one instead.
    reader: reqwest::Client,
    /// `https://storage.googleapis.com`, or the emulator's address.
    base: String,
    bucket: String,
    /// Empty, or without slashes at either end.
    prefix: String,
    location: String,
    auth: Auth,
}

/// How a chunk ended.
enum Sent {
    /// The session holds this many bytes and waits for more.
    Holds(u64),
    /// The object is committed with this size.
    Done(u64),
}

impl GcsStore {
    /// A store on `bucket` under `prefix`. `STORAGE_EMULATOR_HOST` (`host:port` or a URL)
    /// sends requests to an emulator without a token; otherwise tokens come from
    /// `GOOGLE_APPLICATION_CREDENTIALS` or the metadata server (workload identity). With
    /// `env_prefix` (`DR_COPY_`), `<prefix>STORAGE_EMULATOR_HOST` and
    /// `<prefix>GOOGLE_APPLICATION_CREDENTIALS` are read first: a second store's own
    /// account.
    ///
    /// # Errors
    /// [`StoreError::Failed`] when the HTTP client cannot be built.
    pub fn from_env(
        bucket: &str,
        prefix: &str,
        env_prefix: Option<&str>,
    ) -> Result<Self, StoreError> {
        let var = |name: &str| {
            env_prefix
                .and_then(|p| std::env::var(format!("{p}{name}")).ok())
                .or_else(|| std::env::var(name).ok())
        };
        let key_file = env_prefix
            .and_then(|p| std::env::var(format!("{p}GOOGLE_APPLICATION_CREDENTIALS")).ok());
        Self::from_vars(bucket, prefix, &var, key_file)
    }

    /// [`GcsStore::from_env`] with the variables from `var` (tests pass their services'
    /// environment) and a key file of the store's own (else gcp_auth's search).
    ///
    /// # Errors
    /// As [`GcsStore::from_env`].
    pub fn from_vars(
        bucket: &str,
        prefix: &str,
        var: &dyn Fn(&str) -> Option<String>,
        key_file: Option<String>,
    ) -> Result<Self, StoreError> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let prefix = prefix.trim_matches('/').to_string();
        let location = super::location("gs", bucket, &prefix);
        let (base, auth) = match var("STORAGE_EMULATOR_HOST") {
            Some(host) if host.contains("://") => {
                (host.trim_end_matches('/').to_string(), Auth::None)
            }
            Some(host) => (format!("http://{}", host.trim_end_matches('/')), Auth::None),
            None => (
                "https://storage.googleapis.com".to_string(),
                Auth::Google {
                    provider: Arc::new(OnceCell::new()),
                    key_file: key_file.filter(|v| !v.is_empty()),
                },
            ),
        };
        let build = |b: reqwest::ClientBuilder| {
            b.connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| StoreError::Failed {
                    location: location.clone(),
                    op: "open",
                    key: String::new(),
                    detail: e.to_string(),
                })
        };
        Ok(GcsStore {
            http: build(reqwest::Client::builder().timeout(Duration::from_secs(300)))?,
            reader: build(reqwest::Client::builder())?,
            base,
            bucket: bucket.to_string(),
            prefix,
            location,
            auth,
        })
    }

    /// The object name of a store key, refusing keys that could leave their directory.
    fn name(&self, key: &str) -> Result<String, StoreError> {
        if !super::key_is_safe(key) {
            return Err(StoreError::BadKey {
                location: self.location.clone(),
                key: key.to_string(),
            });
        }
        Ok(self.full(key))
    }

    fn full(&self, key: &str) -> String {
        super::under(&self.prefix, key)
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            encode(&self.bucket),
            encode(name)
        )
    }

    fn upload_url(&self, name: &str, kind: &str) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={kind}&name={}",
            self.base,
            encode(&self.bucket),
            encode(name)
        )
    }

    async fn token(&self) -> Result<Option<String>, StoreError> {
        let Auth::Google { provider, key_file } = &self.auth else {
            return Ok(None);
        };
        let no_credentials = |e: gcp_auth::Error| {
            StoreError::NoCredentials {
            location: self.location.clone(),
            detail: format!("no Google credentials ({e}); set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run with GKE workload identity"),
        }
        };
        let provider = provider
            .get_or_try_init(|| async {
                match key_file {
                    Some(path) => gcp_auth::CustomServiceAccount::from_file(path)
                        .map(|a| Arc::new(a) as Arc<dyn gcp_auth::TokenProvider>),
                    None => gcp_auth::provider().await,
                }
            })
            .await
            .map_err(no_credentials)?;
        let token = provider.token(&[SCOPE]).await.map_err(no_credentials)?;
        Ok(Some(token.as_str().to_string()))
    }

    /// Sends a request, retrying transient failures; any other status than 2xx (and 308,
    /// which resumable uploads answer) is an error.
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = build();
            if let Some(token) = self.token().await? {
                req = req.bearer_auth(token);
            }
            let transient = match req.send().await {
                Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 308 => {
                    return Ok(resp)
                }
                Ok(resp) if retryable(resp.status()) => self.status_error(op, key, resp).await,
                Ok(resp) => return Err(self.status_error(op, key, resp).await),
                Err(e) => self.transport_error(op, key, &e),
            };
            if attempt >= ATTEMPTS {
                return Err(transient);
            }
            tracing::debug!(key, attempt, error = %transient, "GCS request failed; trying again");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    fn transport_error(&self, op: &'static str, key: &str, e: &reqwest::Error) -> StoreError {
        let detail = chain(e);
        if e.is_connect() || e.is_timeout() {
            StoreError::Unreachable {
                location: format!("{} ({})", self.location, self.base),
                detail,
            }
        } else {
            StoreError::Failed {
                location: self.location.clone(),
                op,
                key: key.to_string(),
                detail,
            }
        }
    }

    async fn status_error(&self, op: &'static str, key: &str, resp: Response) -> StoreError {
        let status = resp.status();
        let body = capped(resp, ERROR_BODY_LIMIT)
            .await
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // The JSON API's own message, not the whole document.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(300).collect());
        let detail = format!("HTTP {status}: {message}");
        match status {
            StatusCode::NOT_FOUND => StoreError::NotFound {
                location: self.location.clone(),
                key: key.to_string(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => StoreError::Denied {
                location: self.location.clone(),
                op,
                key: key.to_string(),
                detail,
            },
            _ => StoreError::Failed {
                location: self.location.clone(),
                op,
                key: key.to_string(),
                detail,
            },
        }
    }

    /// A JSON answer, refused past [`JSON_BODY_LIMIT`] bytes.
    async fn json(
        &self,
        op: &'static str,
        key: &str,
        resp: Response,
    ) -> Result<serde_json::Value, StoreError> {
        let failed = |detail: String| StoreError::Failed {
            location: self.location.clone(),
            op,
            key: key.to_string(),
            detail,
        };
        match capped(resp, JSON_BODY_LIMIT).await {
            Ok((_, true)) => Err(failed(format!(
                "the answer is larger than {} MiB",
                JSON_BODY_LIMIT >> 20
            ))),
            Ok((body, false)) => serde_json::from_slice(&body).map_err(|e| failed(e.to_string())),
            Err(e) => Err(failed(chain(&e))),
        }
    }

    /// The object's size from a JSON API object resource.
    async fn size_of(&self, key: &str, resp: Response) -> Result<u64, StoreError> {
        let v = self
            .json("read the answer to the upload of", key, resp)
            .await?;
        Ok(size_field(&v["size"]))
    }

    fn check_size(&self, key: &str, sent: u64, found: u64) -> Result<(), StoreError> {
        if found == sent {
            Ok(())
        } else {
            Err(StoreError::ShortWrite {
                location: self.location.clone(),
                key: key.to_string(),
                expected: sent,
                found,
            })
        }
    }

    /// Opens a resumable upload session; its URL carries the session.
    async fn start_session(&self, key: &str, name: &str) -> Result<String, StoreError> {
        let url = self.upload_url(name, "resumable");
        let resp = self
            .send("start upload of", key, || {
                self.http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}")
            })
            .await?;
        resp.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StoreError::Failed {
                location: self.location.clone(),
                op: "start upload of",
                key: key.to_string(),
                detail: "the server answered without a session (no Location header)".into(),
            })
    }

    /// Sends `data`, which starts at byte `start` of the object; `total` is the object's
    /// size when this is the last chunk. Goes on from what the session holds after a
    /// failure, so a lost answer never duplicates or skips a byte.
    async fn send_chunk(
        &self,
        key: &str,
        session: &str,
        start: u64,
        data: Bytes,
        total: Option<u64>,
    ) -> Result<Sent, StoreError> {
        let end = start + data.len() as u64;
        let total_s = total.map_or("*".to_string(), |t| t.to_string());
        let mut from = start;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let part = data.slice((from - start) as usize..);
            let range = if part.is_empty() {
                format!("bytes */{total_s}")
            } else {
                format!("bytes {from}-{}/{total_s}", end - 1)
            };
            let mut req = self
                .http
                .put(session)
                .header("content-range", range)
                .body(part);
            if let Some(token) = self.token().await? {
                req = req.bearer_auth(token);
            }
            let (failure, answered) = match req.send().await {
                Ok(resp) if resp.status().as_u16() == 308 => {
                    let held = held_bytes(&resp);
                    if held >= end {
                        return Ok(Sent::Holds(held));
                    }
                    // Took part of the chunk: send the rest.
                    from = held.max(start);
                    continue;
                }
                Ok(resp) if resp.status().is_success() => {
                    return Ok(Sent::Done(self.size_of(key, resp).await?));
                }
                Ok(resp) if retryable(resp.status()) => (
                    self.status_error("upload a chunk of", key, resp).await,
                    true,
                ),
                Ok(resp) => return Err(self.status_error("upload a chunk of", key, resp).await),
                Err(e) => (self.transport_error("upload a chunk of", key, &e), false),
            };
            if attempt >= ATTEMPTS {
                return Err(failure);
            }
            tokio::time::sleep(backoff(attempt)).await;
            if answered {
                // The server refused the chunk: send it again (a 308 then says where it
                // stands if it kept part of it).
                tracing::warn!(key, attempt, error = %failure, "chunk refused; sending it again");
                continue;
            }
            // No answer: the chunk may or may not have arrived, so ask before sending.
            tracing::warn!(key, attempt, error = %failure, "chunk upload got no answer; asking the session what it holds");
            match self.session_status(key, session, total).await {
                Ok(Sent::Done(size)) => return Ok(Sent::Done(size)),
                Ok(Sent::Holds(held)) if held >= end => return Ok(Sent::Holds(held)),
                Ok(Sent::Holds(held)) => from = held.max(start),
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not ask the session; sending the chunk again")
                }
            }
        }
    }

    /// What an upload session holds (`Content-Range: bytes */…` with no body).
    async fn session_status(
        &self,
        key: &str,
        session: &str,
        total: Option<u64>,
    ) -> Result<Sent, StoreError> {
        let range = format!("bytes */{}", total.map_or("*".into(), |t| t.to_string()));
        let resp = self
            .send("ask about the upload of", key, || {
                self.http
                    .put(session)
                    .header("content-range", range.clone())
                    .header("content-length", "0")
            })
            .await?;
        if resp.status().as_u16() == 308 {
            Ok(Sent::Holds(held_bytes(&resp)))
        } else {
            Ok(Sent::Done(self.size_of(key, resp).await?))
        }
    }

    /// Cancels a session (best effort: an abandoned one expires anyway, never visible).
    async fn cancel_session(&self, key: &str, session: &str) {
        let mut req = self.http.delete(session);
        if let Ok(Some(token)) = self.token().await {
            req = req.bearer_auth(token);
        }
        if let Err(e) = req.send().await {
            tracing::debug!(key, error = %chain(&e), "could not cancel the upload session; it expires on its own");
        }
    }

    /// The resumable path: `first`, then the rest of `body`, one chunk in flight.
    async fn put_resumable(
        &self,
        key: &str,
        name: &str,
        first: Bytes,
        mut buf: BytesMut,
        body: &mut mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let session = self.start_session(key, name).await?;
        let mut in_flight: Option<JoinHandle<Result<Sent, StoreError>>> = None;
        let mut sent = 0u64;
        let result = async {
            let mut next = Some(first);
            loop {
                if let Some(chunk) = next.take() {
                    if let Some(prev) = in_flight.take() {
                        self.join(key, prev, cancel).await?;
                    }
                    let (store, key, session, start) =
                        (self.clone(), key.to_string(), session.clone(), sent);
                    sent += chunk.len() as u64;
                    in_flight = Some(tokio::spawn(async move {
                        store.send_chunk(&key, &session, start, chunk, None).await
                    }));
                }
                let chunk = tokio::select! {
                    () = cancel.cancelled() => return Err(StoreError::Cancelled {
                        location: self.location.clone(), key: key.to_string() }),
                    c = body.recv() => c,
                };
                match chunk {
                    Some(BodyChunk::Data(bytes)) => {
                        super::rate::upload(bytes.len()).await;
                        buf.extend_from_slice(&bytes);
                        if buf.len() >= CHUNK {
                            next = Some(buf.split_to(CHUNK).freeze());
                        }
                    }
                    Some(BodyChunk::End) => {
                        if let Some(prev) = in_flight.take() {
                            self.join(key, prev, cancel).await?;
                        }
                        let last = buf.split().freeze();
                        let total = sent + last.len() as u64;
                        let done = tokio::select! {
                            () = cancel.cancelled() => return Err(StoreError::Cancelled {
                                location: self.location.clone(), key: key.to_string() }),
                            r = self.send_chunk(key, &session, sent, last, Some(total)) => r?,
                        };
                        return match done {
                            Sent::Done(size) => self.check_size(key, total, size).map(|()| total),
                            Sent::Holds(held) => Err(StoreError::ShortWrite {
                                location: self.location.clone(),
                                key: key.to_string(),
                                expected: total,
                                found: held,
                            }),
                        };
                    }
                    None => {
                        return Err(StoreError::Incomplete {
                            location: self.location.clone(),
                            key: key.to_string(),
                        })
                    }
                }
            }
        }
        .await;
        if result.is_err() {
            if let Some(h) = in_flight.take() {
                h.abort();
            }
            self.cancel_session(key, &session).await;
        }
        result
    }

    async fn join(
        &self,
        key: &str,
        mut handle: JoinHandle<Result<Sent, StoreError>>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let sent = tokio::select! {
            () = cancel.cancelled() => {
                handle.abort();
                return Err(StoreError::Cancelled { location: self.location.clone(), key: key.to_string() });
            }
            r = &mut handle => r.expect("chunk upload task panicked")?,
        };
        match sent {
            Sent::Holds(_) => Ok(()),
            // Only the last chunk carries the total, so the session cannot end earlier.
            Sent::Done(size) => Err(StoreError::Failed {
                location: self.location.clone(),
                op: "upload",
                key: key.to_string(),
                detail: format!("the server ended the upload early, at {size} bytes"),
            }),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters: an object name's `/` is
/// part of the name in the JSON API's paths.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How many bytes a session holds, from a 308's `Range: bytes=0-N` (none: nothing yet).
fn held_bytes(resp: &Response) -> u64 {
    resp.headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.rsplit_once('-'))
        .and_then(|(_, last)| last.trim().parse::<u64>().ok())
        .map_or(0, |last| last + 1)
}

/// The JSON API writes sizes as strings (they may pass 2^53).
fn size_field(v: &serde_json::Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .unwrap_or(0)
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.is_server_error()
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5)).min(Duration::from_secs(4))
}

#[async_trait]
impl ReadStore for GcsStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full = self.full(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let url = format!("{}/storage/v1/b/{}/o", self.base, encode(&self.bucket));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .send("list", prefix, || {
                    let mut q = vec![
                        ("prefix", full.clone()),
                        ("fields", "items(name,size),nextPageToken".to_string()),
                    ];
                    if let Some(t) = &token {
                        q.push(("pageToken", t.clone()));
                    }
                    self.http.request(Method::GET, &url).query(&q)
                })
                .await
                .map_err(|e| match e {
                    // A missing bucket: the store does not exist (a typo), not "no backups".
                    StoreError::NotFound { location, .. } => StoreError::Missing { location },
                    e => e,
                })?;
            let page = self.json("list", prefix, resp).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                let Some(name) = item["name"].as_str() else {
                    continue;
                };
                if name.len() < strip || !name.starts_with(&full) {
                    continue;
                }
                out.push(ObjectMeta {
                    key: name[strip..].to_string(),
                    size: size_field(&item["size"]),
                });
            }
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let url = format!("{}?alt=media", self.object_url(&self.name(key)?));
        let token = self.token().await?;
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut req = self.reader.get(&url);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let failure = match req.send().await {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if retryable(r.status()) => self.status_error("download", key, r).await,
                Ok(r) => return Err(self.status_error("download", key, r).await),
                Err(e) => self.transport_error("download", key, &e),
            };
            if attempt >= ATTEMPTS {
                return Err(failure);
            }
            tokio::time::sleep(backoff(attempt)).await;
        };
        let (location, name) = (self.location.clone(), key.to_string());
        Ok(super::idle_reader(
            resp.bytes_stream(),
            BODY_IDLE,
            self.location.clone(),
            key.to_string(),
            move |e: reqwest::Error| {
                format!("download of {name} from {location} was cut: {}", chain(&e))
            },
        ))
    }

    async fn pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
        Err(StoreError::Unsupported {
            location: self.location.clone(),
            op: "list unfinished uploads",
            detail: "an unfinished resumable upload is invisible and expires after a week".into(),
        })
    }
}

#[async_trait]
impl WriteStore for GcsStore {
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let url = self.upload_url(&self.name(key)?, "media");
        let sent = data.len() as u64;
        let resp = self
            .send("upload", key, || {
                self.http
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        let found = self.size_of(key, resp).await?;
        self.check_size(key, sent, found)
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let name = self.name(key)?;
        // Objects smaller than one chunk go up in a single request: no session.
        let opening = super::opening(
            &mut body,
            cancel,
            CHUNK,
            CHUNK + CHUNK / 4,
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
                self.put_resumable(key, &name, first, rest, &mut body, cancel)
                    .await
            }
        }
    }
}

#[async_trait]
impl DeleteStore for GcsStore {
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let url = self.object_url(&self.name(key)?);
        match self.send("delete", key, || self.http.delete(&url)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        Err(StoreError::Unsupported {
            location: self.location.clone(),
            op: "abort unfinished uploads",
            detail: format!(
                "{} is an unfinished resumable upload, which expires after a week",
                upload.key
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_encoded_whole() {
        assert_eq!(encode("a/b c%2F.age"), "a%2Fb%20c%252F.age");
        assert_eq!(encode("data-db.t.p-20261201"), "data-db.t.p-20261201");
    }

    #[test]
    fn chunks_are_multiples_of_256_kib() {
        assert_eq!(CHUNK % (256 * 1024), 0);
    }

    #[test]
    fn sizes_are_read_as_the_api_writes_them() {
        assert_eq!(
            size_field(&serde_json::json!("9007199254740993")),
            9_007_199_254_740_993
        );
        assert_eq!(size_field(&serde_json::json!(12)), 12);
    }
}
