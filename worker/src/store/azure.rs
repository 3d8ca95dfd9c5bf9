//! Azure Blob Storage (`az://container/prefix`) on object_store's Azure client: a cluster on
//! AKS has no S3, and a copy off-site may live in another cloud.
//!
//! The store rules of [`super`] hold as on S3:
//! - Streams go up as block blobs: blocks of [`super::s3::part_size`] with at most
//!   [`super::s3::MAX_PARTS_IN_FLIGHT`] in flight, so memory stays flat; the blob exists only
//!   once its block list is committed. Uncommitted blocks are invisible and Azure discards
//!   them after a week, so an aborted upload leaves nothing to list or prune.
//! - A committed blob is checked with a HEAD: its size must be what was sent. A Put Block
//!   List whose answer was lost is safe to retry (Azure looks up "latest" blocks among the
//!   committed ones too), and the HEAD is the proof either way.
//! - Keys pass [`super::key_is_safe`] and object_store's own path rules before a request.
//! - Credentials come from the standard Azure variables (see [`AzureStore::from_env`]) and
//!   never appear in a message: a SAS signature inside a failed request's URL is cut out.
//! - Requests other than downloads time out after 5 minutes; a download has no total
//!   timeout (it may take hours) but fails when no byte arrives for a minute.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::s3::{part_size, BASE_PART_SIZE, MAX_PARTS_IN_FLIGHT};
use super::{
    BodyChunk, DeleteStore, ObjectMeta, ObjectReader, PendingUpload, ReadStore, StoreError,
    WriteStore,
};

/// A download that delivers nothing for this long is failed rather than left hanging.
const BODY_IDLE: Duration = Duration::from_secs(60);

/// A store in an Azure Blob container under a prefix.
#[derive(Debug, Clone)]
pub struct AzureStore {
    /// Requests with a 5-minute timeout.
    client: Arc<MicrosoftAzure>,
    /// Downloads: no total timeout, an idle one instead.
    reader: Arc<MicrosoftAzure>,
    /// Empty, or without slashes at either end.
    prefix: String,
    location: String,
}

/// What the Azure variables say, read once.
#[derive(Default)]
struct Settings {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    endpoint: Option<String>,
    client_id: Option<String>,
    tenant_id: Option<String>,
    token_file: Option<String>,
    authority_host: Option<String>,
}

impl Settings {
    /// The standard variables as `var` gives them.
    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Settings {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let mut s = Settings {
            account: var("AZURE_STORAGE_ACCOUNT").or_else(|| var("AZURE_STORAGE_ACCOUNT_NAME")),
            key: var("AZURE_STORAGE_KEY").or_else(|| var("AZURE_STORAGE_ACCOUNT_KEY")),
            sas: var("AZURE_STORAGE_SAS_TOKEN"),
            endpoint: var("AZURE_STORAGE_ENDPOINT"),
            client_id: var("AZURE_CLIENT_ID"),
            tenant_id: var("AZURE_TENANT_ID"),
            token_file: var("AZURE_FEDERATED_TOKEN_FILE"),
            authority_host: var("AZURE_AUTHORITY_HOST"),
        };
        if let Some(cs) = var("AZURE_STORAGE_CONNECTION_STRING") {
            s.connection_string(&cs);
        }
        s
    }

    /// `AccountName=…;AccountKey=…;BlobEndpoint=…` as the portal and Azurite print it; its
    /// values win over the separate variables (it is the more specific setting).
    fn connection_string(&mut self, cs: &str) {
        let mut protocol = "https".to_string();
        let mut suffix = None;
        for (k, v) in cs
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
        {
            match k {
                "AccountName" => self.account = Some(v.into()),
                "AccountKey" => self.key = Some(v.into()),
                "SharedAccessSignature" => self.sas = Some(v.into()),
                "BlobEndpoint" => self.endpoint = Some(v.trim_end_matches('/').into()),
                "DefaultEndpointsProtocol" => protocol = v.into(),
                "EndpointSuffix" => suffix = Some(v.to_string()),
                _ => {}
            }
        }
        if let (None, Some(account), Some(suffix)) = (&self.endpoint, &self.account, suffix) {
            self.endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
        }
    }
}

impl AzureStore {
    /// A store on `container` under `prefix`, with credentials from the environment:
    /// `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_ACCOUNT` with
    /// `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`, or workload identity
    /// (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, as AKS sets
    /// them), else the VM's managed identity. `AZURE_STORAGE_ENDPOINT` names another cloud
    /// or an emulator. With `env_prefix` (`DR_COPY_`), each variable is read with that prefix
    /// first: a second store's own account.
    ///
    /// # Errors
    /// [`StoreError::NoCredentials`] without an account name, [`StoreError::Failed`] for
    /// settings the client refuses.
    pub fn from_env(
        container: &str,
        prefix: &str,
        env_prefix: Option<&str>,
    ) -> Result<Self, StoreError> {
        let var = |name: &str| {
            env_prefix
                .and_then(|p| std::env::var(format!("{p}{name}")).ok())
                .or_else(|| std::env::var(name).ok())
        };
        Self::from_vars(container, prefix, &var, env_prefix.unwrap_or(""))
    }

    /// [`AzureStore::from_env`] with the variables from `var` (tests pass their services'
    /// environment); `shown` prefixes the variable names in messages.
    ///
    /// # Errors
    /// As [`AzureStore::from_env`].
    pub fn from_vars(
        container: &str,
        prefix: &str,
        var: &dyn Fn(&str) -> Option<String>,
        shown: &str,
    ) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/').to_string();
        let location = super::location("az", container, &prefix);
        let s = Settings::from_vars(var);
        let Some(account) = s.account.clone() else {
            return Err(StoreError::NoCredentials {
                location,
                detail: format!(
                    "no storage account: set {p}AZURE_STORAGE_CONNECTION_STRING, or {p}AZURE_STORAGE_ACCOUNT with {p}AZURE_STORAGE_KEY, {p}AZURE_STORAGE_SAS_TOKEN or workload identity",
                    p = shown
                ),
            });
        };
        let build = |options: ClientOptions| {
            let mut b = MicrosoftAzureBuilder::new()
                .with_account(&account)
                .with_container_name(container)
                .with_retry(RetryConfig {
                    // A wrong endpoint fails within seconds; a busy one is given time.
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(200),
                        max_backoff: Duration::from_secs(4),
                        base: 2.0,
                    },
                    max_retries: 5,
                    retry_timeout: Duration::from_secs(60),
                });
            let mut options = options.with_connect_timeout(Duration::from_secs(10));
            if let Some(endpoint) = &s.endpoint {
                options = options.with_allow_http(endpoint.starts_with("http://"));
                b = b.with_endpoint(endpoint.clone());
            }
            if let Some(key) = &s.key {
                b = b.with_access_key(key);
            } else if let Some(sas) = &s.sas {
                b = b.with_config(
                    object_store::azure::AzureConfigKey::SasKey,
                    sas.trim_start_matches('?'),
                );
            } else {
                for (set, value) in [
                    (object_store::azure::AzureConfigKey::ClientId, &s.client_id),
                    (
                        object_store::azure::AzureConfigKey::AuthorityId,
                        &s.tenant_id,
                    ),
                    (
                        object_store::azure::AzureConfigKey::FederatedTokenFile,
                        &s.token_file,
                    ),
                    (
                        object_store::azure::AzureConfigKey::AuthorityHost,
                        &s.authority_host,
                    ),
                ] {
                    if let Some(v) = value {
                        b = b.with_config(set, v);
                    }
                }
            }
            b.with_client_options(options).build()
        };
        let refused = |e: object_store::Error| StoreError::Failed {
            location: location.clone(),
            op: "open",
            key: String::new(),
            detail: scrub(&e.to_string()),
        };
        let client =
            build(ClientOptions::new().with_timeout(Duration::from_secs(300))).map_err(refused)?;
        let reader = build(ClientOptions::new().with_timeout_disabled()).map_err(refused)?;
        Ok(AzureStore {
            client: Arc::new(client),
            reader: Arc::new(reader),
            prefix,
            location,
        })
    }

    /// The blob path of a store key, refusing keys that could leave their directory.
    fn path(&self, key: &str) -> Result<Path, StoreError> {
        let bad = || StoreError::BadKey {
            location: self.location.clone(),
            key: key.to_string(),
        };
        if !super::key_is_safe(key) {
            return Err(bad());
        }
        Path::parse(self.full(key)).map_err(|_| bad())
    }

    fn full(&self, key: &str) -> String {
        super::under(&self.prefix, key)
    }

    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        map_err(&self.location, op, key, e)
    }

    async fn check_stored(&self, key: &str, path: &Path, sent: u64) -> Result<(), StoreError> {
        let head = self
            .client
            .head(path)
            .await
            .map_err(|e| self.map_err("check", key, e))?;
        if head.size != sent {
            return Err(StoreError::ShortWrite {
                location: self.location.clone(),
                key: key.to_string(),
                expected: sent,
                found: head.size,
            });
        }
        Ok(())
    }

    fn cancelled(&self, key: &str) -> StoreError {
        StoreError::Cancelled {
            location: self.location.clone(),
            key: key.to_string(),
        }
    }

    /// Blocks up, `first` and the rest of `body`, then the block list.
    async fn put_blocks(
        &self,
        key: &str,
        path: &Path,
        first: Bytes,
        mut buf: BytesMut,
        body: &mut mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let mut upload = self
            .client
            .put_multipart(path)
            .await
            .map_err(|e| self.map_err("start upload of", key, e))?;
        let mut in_flight: JoinSet<object_store::Result<()>> = JoinSet::new();
        let mut total = 0u64;
        let mut blocks = 0i32;
        let result: Result<(), StoreError> = async {
            let mut next = Some(first);
            loop {
                if let Some(block) = next.take() {
                    while in_flight.len() >= MAX_PARTS_IN_FLIGHT {
                        self.join_one(key, &mut in_flight, cancel).await?;
                    }
                    total += block.len() as u64;
                    blocks += 1;
                    in_flight.spawn(upload.put_part(PutPayload::from(block)));
                }
                let chunk = tokio::select! {
                    () = cancel.cancelled() => return Err(self.cancelled(key)),
                    c = body.recv() => c,
                };
                match chunk {
                    Some(BodyChunk::Data(bytes)) => {
                        super::rate::upload(bytes.len()).await;
                        buf.extend_from_slice(&bytes);
                        let size = part_size(blocks + 1);
                        if buf.len() >= size {
                            next = Some(buf.split_to(size).freeze());
                        }
                    }
                    Some(BodyChunk::End) => {
                        if !buf.is_empty() {
                            total += buf.len() as u64;
                            in_flight
                                .spawn(upload.put_part(PutPayload::from(buf.split().freeze())));
                        }
                        while self.join_one(key, &mut in_flight, cancel).await? {}
                        return Ok(());
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
        if let Err(e) = result {
            in_flight.abort_all();
            // Uncommitted blocks are invisible and expire on their own; this is a courtesy.
            let _ = upload.abort().await;
            return Err(e);
        }
        // Under SIGTERM too: a stalled commit must not hold the shutdown for its timeout.
        tokio::select! {
            () = cancel.cancelled() => return Err(self.cancelled(key)),
            done = upload.complete() => {
                done.map_err(|e| self.map_err("commit the block list of", key, e))?;
            }
        }
        Ok(total)
    }

    /// Waits for one block upload; `false` when none is left.
    async fn join_one(
        &self,
        key: &str,
        in_flight: &mut JoinSet<object_store::Result<()>>,
        cancel: &CancellationToken,
    ) -> Result<bool, StoreError> {
        tokio::select! {
            () = cancel.cancelled() => Err(self.cancelled(key)),
            r = in_flight.join_next() => match r {
                None => Ok(false),
                Some(r) => {
                    r.expect("block upload task panicked")
                        .map_err(|e| self.map_err("upload a block of", key, e))?;
                    Ok(true)
                }
            },
        }
    }
}

/// An object_store error as a store error, with any SAS signature cut out of the message.
pub(crate) fn map_err(
    location: &str,
    op: &'static str,
    key: &str,
    e: object_store::Error,
) -> StoreError {
    let detail = scrub(&super::error_chain(&e));
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound {
            location: location.to_string(),
            key: key.to_string(),
        },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => StoreError::Denied {
            location: location.to_string(),
            op,
            key: key.to_string(),
            detail,
        },
        _ if ["connect", "dns error", "Connection refused", "timed out"]
            .iter()
            .any(|s| detail.contains(s)) =>
        {
            StoreError::Unreachable {
                location: location.to_string(),
                detail,
            }
        }
        _ => StoreError::Failed {
            location: location.to_string(),
            op,
            key: key.to_string(),
            detail,
        },
    }
}

/// A message with the values of `sig=` (SAS signatures) replaced: object_store puts the
/// request URL in its errors, and a SAS token travels in the query.
pub(crate) fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("(withheld)");
        rest = &rest[i + 4..];
        let end = rest.find(['&', ' ', '"', ')', ',']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl ReadStore for AzureStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // object_store lists whole path segments; a store prefix may end mid-name
        // ("postgres/prod/2026"), so list its directory and filter.
        let full = self.full(prefix);
        let dir = full.rsplit_once('/').map_or("", |(d, _)| d);
        let dir = (!dir.is_empty())
            .then(|| Path::parse(dir))
            .transpose()
            .map_err(|_| StoreError::BadKey {
                location: self.location.clone(),
                key: prefix.to_string(),
            })?;
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut stream = self.client.list(dir.as_ref());
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.map_err("list", prefix, e))?;
            let name = meta.location.as_ref();
            if name.starts_with(&full) && name.len() >= strip {
                out.push(ObjectMeta {
                    key: name[strip..].to_string(),
                    size: meta.size,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let path = self.path(key)?;
        let got = self
            .reader
            .get(&path)
            .await
            .map_err(|e| self.map_err("download", key, e))?;
        let (location, name) = (self.location.clone(), key.to_string());
        Ok(super::idle_reader(
            got.into_stream(),
            BODY_IDLE,
            self.location.clone(),
            key.to_string(),
            move |e| map_err(&location, "download", &name, e).to_string(),
        ))
    }

    async fn pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
        Err(StoreError::Unsupported {
            location: self.location.clone(),
            op: "list unfinished uploads",
            detail: "Azure keeps an unfinished upload as uncommitted blocks, invisible and discarded after 7 days".into(),
        })
    }
}

#[async_trait]
impl WriteStore for AzureStore {
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let sent = data.len() as u64;
        self.client
            .put(&path, PutPayload::from(data))
            .await
            .map_err(|e| self.map_err("upload", key, e))?;
        self.check_stored(key, &path, sent).await
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        // Objects smaller than one block go up in a single Put Blob.
        let opening = super::opening(
            &mut body,
            cancel,
            BASE_PART_SIZE,
            BASE_PART_SIZE + BASE_PART_SIZE / 4,
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
                    .put_blocks(key, &path, first, rest, &mut body, cancel)
                    .await?;
                self.check_stored(key, &path, sent).await?;
                Ok(sent)
            }
        }
    }
}

#[async_trait]
impl DeleteStore for AzureStore {
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.client.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        Err(StoreError::Unsupported {
            location: self.location.clone(),
            op: "abort unfinished uploads",
            detail: format!(
                "{} is uncommitted blocks, which Azure discards after 7 days",
                upload.key
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_signatures_never_reach_a_message() {
        let m = "Error performing PUT http://h/c/b?sv=2022&sig=abc%2Fdef%3D&se=2026 in 1s: 403";
        let s = scrub(m);
        assert!(!s.contains("abc%2Fdef"), "{s}");
        assert!(s.contains("sig=(withheld)&se=2026"), "{s}");
        assert_eq!(scrub("no secret here"), "no secret here");
    }

    #[test]
    fn connection_strings_give_account_key_and_endpoint() {
        let mut s = Settings::default();
        s.connection_string("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;");
        assert_eq!(s.account.as_deref(), Some("devstoreaccount1"));
        assert_eq!(s.key.as_deref(), Some("a2V5"));
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        let mut s = Settings::default();
        s.connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=k==;EndpointSuffix=core.chinacloudapi.cn",
        );
        // A key ending in '=' keeps it: only the first '=' separates name and value.
        assert_eq!(s.key.as_deref(), Some("k=="));
        assert_eq!(
            s.endpoint.as_deref(),
            Some("https://acct.blob.core.chinacloudapi.cn")
        );
    }
}
