//! Vault and OpenBao (the same HTTP API): raft snapshots taken from the active node, checked
//! while they stream, restored with the snapshot API, and counts (secrets engines, auth
//! methods, policies, kv secrets) that `verify` and `restore` compare.
//!
//! This module is the HTTP client and its error vocabulary: every failure a person meets at
//! 3 a.m. (sealed, standby, wrong token, missing capability, Kubernetes role rejected) is a
//! [`VaultError`] that says what to do next. Tokens live in [`Token`], which never prints.

pub mod dump;
pub mod restore;
pub mod sink;
pub mod snapshot;
pub mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::catalog::PartFormat;
use crate::catalog::{Manifest, Part, TableCount};
use crate::engine::transport_reason;

/// The snapshot endpoint (`read` to save, `update` to restore).
pub const SNAPSHOT_PATH: &str = "sys/storage/raft/snapshot";
/// Where a pod's service-account token is mounted.
pub const DEFAULT_K8S_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Errors talking to Vault, each with the next step.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The backup's facts do not read (a hand-edited manifest).
    #[error(transparent)]
    Facts(#[from] crate::catalog::FactsError),
    /// `VAULT_ADDR` is not set.
    #[error("no Vault address: set VAULT_ADDR (e.g. https://vault.vault.svc:8200)")]
    NoAddr,
    /// The address is not an http(s) URL.
    #[error("{url:?} is not a Vault address: {reason} (expected http(s)://host:port)")]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No token (and, for a backup, no Kubernetes auth role).
    #[error("no Vault token: set VAULT_TOKEN or VAULT_TOKEN_FILE{}", if *.backup { ", or log in with Kubernetes auth (worker backup vault --k8s-role)" } else { " (for a restore: a token of the cluster being restored into, e.g. its root token; `vault login`'s ~/.vault-token is not read)" })]
    NoToken {
        /// Where it was missing: the worker's backup (which can also log in with
        /// Kubernetes auth) or a plugin command (which cannot).
        backup: bool,
    },
    /// A token, CA or service-account file cannot be read.
    #[error("cannot read {what} {path}: {reason}")]
    File {
        /// What was being done or read.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer, or no connection, within the timeout.
    #[error("cannot reach Vault at {addr}: {reason}; check the address, the network policy and that the server runs")]
    Unreachable {
        /// The server's address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node is sealed.
    #[error("Vault at {addr} is sealed; unseal it (bao operator unseal, with the threshold of unseal keys) and retry")]
    Sealed {
        /// The server's address.
        addr: String,
    },
    /// The node is not initialised.
    #[error(
        "Vault at {addr} is not initialised; initialise and unseal it first (bao operator init)"
    )]
    NotInitialized {
        /// The server's address.
        addr: String,
    },
    /// Only a standby is reachable.
    #[error("Vault at {addr} is a standby node and the active node ({leader}) cannot be used: a standby's snapshot is broken; point the address at the active node")]
    Standby {
        /// The server's address.
        addr: String,
        /// The active node's address.
        leader: String,
    },
    /// The token is invalid, expired or revoked.
    #[error("Vault at {addr} rejected the token (invalid, expired or revoked); issue a new one or check VAULT_TOKEN / VAULT_TOKEN_FILE")]
    BadToken {
        /// The server's address.
        addr: String,
    },
    /// The token's policy lacks a capability.
    #[error("the token may not {capability} {path} on {addr}; add to its policy: path \"{path}\" {{ capabilities = [\"{capability}\"] }}")]
    PermissionDenied {
        /// The server's address.
        addr: String,
        /// The missing capability.
        capability: &'static str,
        /// The file.
        path: String,
    },
    /// Kubernetes auth refused the login.
    #[error("Kubernetes auth at auth/{mount} on {addr} rejected role {role:?}: {reason}; check that the role exists and binds this pod's service account and namespace (bao read auth/{mount}/role/{role})")]
    K8sLoginRejected {
        /// The server's address.
        addr: String,
        /// The auth mount.
        mount: String,
        /// The role.
        role: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backup has no raft snapshot part.
    #[error("backup {backup} holds no raft snapshot; pick a Vault backup (kubectl dr list --engine vault)")]
    NotVaultBackup {
        /// The backup (`engine/target/id`).
        backup: String,
    },
    /// Any other error answer of the API.
    #[error("Vault at {addr} answered {status} to {method} {path}: {message}")]
    Api {
        /// The server's address.
        addr: String,
        /// The HTTP method.
        method: String,
        /// The file.
        path: String,
        /// How it ended (exit code or signal).
        status: u16,
        /// The server's message.
        message: String,
    },
}

/// A Vault token. Debug and Display print `***`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token read from the environment or a file.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into().trim().to_string())
    }

    /// Reads a token file (a mounted Secret), trimming the newline editors add.
    ///
    /// # Errors
    /// [`VaultError::File`] when it cannot be read or is empty.
    pub fn from_file(path: &Path) -> Result<Self, VaultError> {
        let text = std::fs::read_to_string(path).map_err(|e| VaultError::File {
            what: "the token file",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let token = Token::new(text);
        if token.0.is_empty() {
            return Err(VaultError::File {
                what: "the token file",
                path: path.to_path_buf(),
                reason: "it is empty".into(),
            });
        }
        Ok(token)
    }

    /// `VAULT_TOKEN`, else the file named by `VAULT_TOKEN_FILE`, else `None`.
    ///
    /// # Errors
    /// An unreadable token file.
    pub fn from_env() -> Result<Option<Self>, VaultError> {
        if let Some(t) = std::env::var("VAULT_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return Ok(Some(Token::new(t)));
        }
        match std::env::var_os("VAULT_TOKEN_FILE") {
            Some(path) if !path.is_empty() => Token::from_file(Path::new(&path)).map(Some),
            _ => Ok(None),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How the worker gets its token.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A token given directly (VAULT_TOKEN, a file).
    Token(Token),
    /// `POST auth/<mount>/login` with the pod's service-account JWT.
    Kubernetes {
        /// The Vault role bound to the service account.
        role: String,
        /// The auth mount (`kubernetes` unless changed).
        mount: String,
        /// The service-account token file.
        jwt_path: PathBuf,
    },
}

/// Where a Vault server is: its API address and, for private CAs, a CA bundle.
#[derive(Debug, Clone)]
pub struct VaultTarget {
    /// The node's address (any node: the active one is found).
    pub addr: Url,
    /// A private CA to trust (`VAULT_CACERT`).
    pub ca_cert: Option<PathBuf>,
}

impl VaultTarget {
    /// Parses `http(s)://host:port`. Credentials in the URL are refused: tokens come from the
    /// environment or files, never from argv.
    ///
    /// # Errors
    /// [`VaultError::BadUrl`].
    pub fn from_url(url: &str) -> Result<Self, VaultError> {
        let bad = |reason: &str| VaultError::BadUrl {
            url: crate::engine::redact_url(url),
            reason: reason.to_string(),
        };
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; use VAULT_TOKEN or VAULT_TOKEN_FILE",
            ));
        }
        if parsed.host_str().is_none() {
            return Err(bad("no host"));
        }
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(bad("give the server's address only, without a path"));
        }
        Ok(VaultTarget {
            addr: parsed,
            ca_cert: std::env::var_os("VAULT_CACERT")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        })
    }

    /// `VAULT_ADDR` (and `VAULT_CACERT`), as the Vault CLI reads them.
    ///
    /// # Errors
    /// [`VaultError::NoAddr`] or [`VaultError::BadUrl`].
    pub fn from_env() -> Result<Self, VaultError> {
        let addr = std::env::var("VAULT_ADDR").map_err(|_| VaultError::NoAddr)?;
        VaultTarget::from_url(&addr)
    }
}

impl fmt::Display for VaultTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.addr.as_str().trim_end_matches('/'))
    }
}

/// `sys/health`, asked to always answer 200 so sealed and standby servers still describe
/// themselves.
#[derive(Debug, Clone, Deserialize)]
pub struct Health {
    /// Whether the node is initialised.
    pub initialized: bool,
    /// Whether it is sealed.
    pub sealed: bool,
    /// Whether it is a standby.
    pub standby: bool,
    /// The server's version.
    #[serde(default)]
    pub version: String,
    /// The cluster's id, once initialised.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The cluster's name.
    #[serde(default)]
    pub cluster_name: Option<String>,
}

/// `sys/leader`: which node is active, and since when (a restore resets that time).
#[derive(Debug, Clone, Deserialize)]
pub struct Leader {
    /// Whether the node asked is the active one.
    #[serde(default)]
    pub is_self: bool,
    /// The active node's API address.
    #[serde(default)]
    pub leader_address: String,
    /// Since when it is active.
    #[serde(default)]
    pub active_time: Option<String>,
}

/// A client for one Vault node.
#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    addr: Url,
    token: Option<Token>,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("addr", &self.addr.as_str())
            .finish_non_exhaustive()
    }
}

impl VaultClient {
    /// A client without a token (health and seal status need none).
    ///
    /// # Errors
    /// An unreadable CA bundle.
    pub fn new(target: &VaultTarget) -> Result<Self, VaultError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("kube-dr/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &target.ca_cert {
            let file = |reason: String| VaultError::File {
                what: "the CA bundle (VAULT_CACERT)",
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| file(e.to_string()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| file(e.to_string()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| VaultError::Unreachable {
            addr: target.to_string(),
            reason: e.to_string(),
        })?;
        Ok(VaultClient {
            http,
            addr: target.addr.clone(),
            token: None,
        })
    }

    /// The node's address, for messages.
    pub fn addr(&self) -> &str {
        self.addr.as_str().trim_end_matches('/')
    }

    /// The same client, using `token`.
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// The same client, pointed at another node of the cluster.
    fn at(&self, addr: Url) -> Self {
        VaultClient {
            addr,
            ..self.clone()
        }
    }

    /// Obtains a token as `auth` says.
    ///
    /// # Errors
    /// Unreadable files, a rejected Kubernetes role, transport errors.
    pub async fn login(self, auth: &Auth) -> Result<Self, VaultError> {
        match auth {
            Auth::Token(t) => Ok(self.with_token(t.clone())),
            Auth::Kubernetes {
                role,
                mount,
                jwt_path,
            } => {
                let jwt = std::fs::read_to_string(jwt_path).map_err(|e| VaultError::File {
                    what: "the service-account token",
                    path: jwt_path.clone(),
                    reason: format!("{e} (is automountServiceAccountToken disabled?)"),
                })?;
                let path = format!("auth/{}/login", mount.trim_matches('/'));
                let body = serde_json::json!({ "role": role, "jwt": jwt.trim() });
                let response = self.send(Method::POST, &path, |r| r.json(&body)).await?;
                let status = response.status();
                if !status.is_success() {
                    return Err(VaultError::K8sLoginRejected {
                        addr: self.addr().to_string(),
                        mount: mount.trim_matches('/').to_string(),
                        role: role.clone(),
                        reason: format!("{} {}", status.as_u16(), errors_of(response).await),
                    });
                }
                let value: Value = self.json_of(response, "POST", &path).await?;
                let token = value
                    .pointer("/auth/client_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| VaultError::Api {
                        addr: self.addr().to_string(),
                        method: "POST".into(),
                        path,
                        status: status.as_u16(),
                        message: "the login answer holds no auth.client_token".into(),
                    })?;
                tracing::info!(role = %role, mount = %mount, "logged in with Kubernetes auth");
                Ok(self.with_token(Token::new(token)))
            }
        }
    }

    fn url(&self, path: &str) -> Url {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut url = self.addr.clone();
        url.set_path(&format!("/v1/{}", path.trim_start_matches('/')));
        url.set_query((!query.is_empty()).then_some(query));
        url
    }

    /// Sends a request; only transport failures are errors here.
    async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, VaultError> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            request = request.header("X-Vault-Token", &t.0);
        }
        build(request)
            .send()
            .await
            .map_err(|e| VaultError::Unreachable {
                addr: self.addr().to_string(),
                reason: transport_reason(&e),
            })
    }

    async fn json_of<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        method: &str,
        path: &str,
    ) -> Result<T, VaultError> {
        let status = response.status().as_u16();
        response.json().await.map_err(|e| VaultError::Api {
            addr: self.addr().to_string(),
            method: method.into(),
            path: path.into(),
            status,
            message: format!("unreadable answer: {}", transport_reason(&e)),
        })
    }

    /// Turns an unsuccessful answer into the error a person can act on. A 403 is either a
    /// bad token or a missing capability: `lookup-self` tells them apart.
    pub(crate) async fn failure(
        &self,
        response: reqwest::Response,
        method: &Method,
        path: &str,
        capability: &'static str,
    ) -> VaultError {
        let status = response.status();
        let message = errors_of(response).await;
        match status {
            StatusCode::FORBIDDEN => {
                if self.token_is_valid().await.unwrap_or(true) {
                    VaultError::PermissionDenied {
                        addr: self.addr().to_string(),
                        capability,
                        path: path.split('?').next().unwrap_or(path).to_string(),
                    }
                } else {
                    VaultError::BadToken {
                        addr: self.addr().to_string(),
                    }
                }
            }
            StatusCode::SERVICE_UNAVAILABLE if message.contains("sealed") => VaultError::Sealed {
                addr: self.addr().to_string(),
            },
            _ => VaultError::Api {
                addr: self.addr().to_string(),
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                message,
            },
        }
    }

    /// Whether the server accepts the token at all.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn token_is_valid(&self) -> Result<bool, VaultError> {
        let response = self
            .send(Method::GET, "auth/token/lookup-self", |r| r)
            .await?;
        Ok(response.status() != StatusCode::FORBIDDEN)
    }

    /// Fails with [`VaultError::BadToken`] unless the token is accepted.
    ///
    /// # Errors
    /// [`VaultError::NoToken`], [`VaultError::BadToken`], transport errors.
    pub async fn check_token(&self) -> Result<(), VaultError> {
        if self.token.is_none() {
            return Err(VaultError::NoToken { backup: false });
        }
        if self.token_is_valid().await? {
            Ok(())
        } else {
            Err(VaultError::BadToken {
                addr: self.addr().to_string(),
            })
        }
    }

    /// GET (or LIST) a JSON document.
    async fn read(
        &self,
        method: Method,
        path: &str,
        capability: &'static str,
    ) -> Result<Value, VaultError> {
        let response = self.send(method.clone(), path, |r| r).await?;
        if !response.status().is_success() {
            return Err(self.failure(response, &method, path, capability).await);
        }
        self.json_of(response, method.as_str(), path).await
    }

    /// The node's own view of itself.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn health(&self) -> Result<Health, VaultError> {
        let path = "sys/health?standbycode=200&sealedcode=200&uninitcode=200&perfstandbyok=true";
        let response = self.send(Method::GET, path, |r| r).await?;
        self.json_of(response, "GET", "sys/health").await
    }

    /// Checks that a Vault/OpenBao server answers at this address (its health endpoint,
    /// which needs no token) within [`crate::engine::connect_timeout`].
    ///
    /// # Errors
    /// [`VaultError::Unreachable`] naming the address.
    pub async fn probe(&self) -> Result<Health, VaultError> {
        tokio::time::timeout(crate::engine::connect_timeout(), self.health())
            .await
            .map_err(|_| VaultError::Unreachable {
                addr: self.addr().to_string(),
                reason: crate::engine::silent_server("Vault/OpenBao"),
            })?
    }

    /// Which node leads the cluster.
    ///
    /// # Errors
    /// Transport errors; a sealed node answers with an error.
    pub async fn leader(&self) -> Result<Leader, VaultError> {
        self.read(Method::GET, "sys/leader", "read")
            .await
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| VaultError::Api {
                    addr: self.addr().to_string(),
                    method: "GET".into(),
                    path: "sys/leader".into(),
                    status: 200,
                    message: e.to_string(),
                })
            })
    }

    /// Returns a client for the cluster's active node, and its health: this node when it is
    /// active, else the leader it names.
    ///
    /// # Errors
    /// Sealed or uninitialised nodes, a standby whose leader is unknown or unusable.
    pub async fn active(&self) -> Result<(VaultClient, Health), VaultError> {
        let health = self.health().await?;
        check_usable(self.addr(), &health)?;
        if !health.standby {
            return Ok((self.clone(), health));
        }
        let leader = self.leader().await?;
        let standby = |leader: &str| VaultError::Standby {
            addr: self.addr().to_string(),
            leader: if leader.is_empty() {
                "unknown".into()
            } else {
                leader.to_string()
            },
        };
        let url =
            Url::parse(&leader.leader_address).map_err(|_| standby(&leader.leader_address))?;
        let active = self.at(url);
        match active.health().await {
            Ok(h) if h.initialized && !h.sealed && !h.standby => {
                tracing::info!(standby = %self.addr(), active = %active.addr(), "using the active node");
                Ok((active, h))
            }
            _ => Err(standby(&leader.leader_address)),
        }
    }

    /// Starts the snapshot download; the caller streams the body.
    ///
    /// # Errors
    /// Permission, sealed, transport errors.
    pub async fn snapshot(&self) -> Result<reqwest::Response, VaultError> {
        let response = self.send(Method::GET, SNAPSHOT_PATH, |r| r).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self
                .failure(response, &Method::GET, SNAPSHOT_PATH, "read")
                .await)
        }
    }

    /// Counts what verify compares: secrets engines, auth methods, ACL policies, and the
    /// secrets of every kv mount the token may list. What the token may not read is left
    /// out with a warning: a backup is worth more than its counts.
    ///
    /// # Errors
    /// Transport errors and a rejected token.
    pub async fn counts(&self) -> Result<Vec<TableCount>, VaultError> {
        let mut out = Vec::new();
        let count = |name: &str, rows: usize| TableCount {
            schema: "sys".into(),
            name: name.into(),
            rows: rows as u64,
        };
        let mounts = self.optional(self.read(Method::GET, "sys/mounts", "read").await)?;
        if let Some(mounts) = &mounts {
            out.push(count("secrets_engines", data_object(mounts).len()));
        }
        if let Some(auth) = self.optional(self.read(Method::GET, "sys/auth", "read").await)? {
            out.push(count("auth_methods", data_object(&auth).len()));
        }
        if let Some(policies) = self.optional(
            self.read(Method::GET, "sys/policies/acl?list=true", "list")
                .await,
        )? {
            out.push(count("policies", keys_of(&policies).len()));
        }
        for (mount, version) in mounts.as_ref().map(kv_mounts).unwrap_or_default() {
            match self.count_kv(&mount, version).await {
                Ok(n) => out.push(TableCount {
                    schema: "kv".into(),
                    name: mount.trim_end_matches('/').to_string(),
                    rows: n,
                }),
                Err(e @ VaultError::PermissionDenied { .. }) => {
                    tracing::warn!(mount = %mount, error = %e, "kv secrets not counted");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn optional(&self, read: Result<Value, VaultError>) -> Result<Option<Value>, VaultError> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(e @ VaultError::PermissionDenied { .. }) => {
                tracing::warn!(error = %e, "not counted");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Counts the secrets under a kv mount by listing it recursively, a few folders at a time.
    async fn count_kv(&self, mount: &str, version: u8) -> Result<u64, VaultError> {
        let base = if version == 2 {
            format!("{mount}metadata/")
        } else {
            mount.to_string()
        };
        let mut total = 0u64;
        let mut folders = vec![String::new()];
        while !folders.is_empty() {
            let batch: Vec<String> = std::mem::take(&mut folders);
            let listed: Vec<Vec<String>> = stream::iter(batch)
                .map(|folder| {
                    let path = format!("{base}{folder}");
                    async move {
                        let response = self
                            .send(Method::GET, &format!("{path}?list=true"), |r| r)
                            .await?;
                        if response.status() == StatusCode::NOT_FOUND {
                            return Ok(Vec::new());
                        }
                        if !response.status().is_success() {
                            return Err(self.failure(response, &Method::GET, &path, "list").await);
                        }
                        let value: Value = self.json_of(response, "LIST", &path).await?;
                        Ok(keys_of(&value)
                            .into_iter()
                            .map(|k| format!("{folder}{k}"))
                            .collect())
                    }
                })
                .buffer_unordered(8)
                .try_collect()
                .await?;
            for key in listed.into_iter().flatten() {
                if key.ends_with('/') {
                    folders.push(key);
                } else {
                    total += 1;
                }
            }
        }
        Ok(total)
    }

    /// Unauthenticated seal status: is the node sealed, and how many keys does it need.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn seal_status(&self) -> Result<Value, VaultError> {
        self.read(Method::GET, "sys/seal-status", "read").await
    }
}

/// The snapshot part of a Vault backup.
///
/// # Errors
/// [`VaultError::NotVaultBackup`] for a manifest without one.
pub fn snapshot_part(manifest: &Manifest) -> Result<&Part, VaultError> {
    manifest
        .part_of(&PartFormat::VaultSnapshot)
        .ok_or_else(|| VaultError::NotVaultBackup {
            backup: manifest.backup_ref().to_string(),
        })
}

/// Refuses nodes that cannot serve: sealed or uninitialised.
///
/// # Errors
/// [`VaultError::Sealed`], [`VaultError::NotInitialized`].
pub fn check_usable(addr: &str, health: &Health) -> Result<(), VaultError> {
    if !health.initialized {
        return Err(VaultError::NotInitialized { addr: addr.into() });
    }
    if health.sealed {
        return Err(VaultError::Sealed { addr: addr.into() });
    }
    Ok(())
}

/// The `data` object of an answer (older servers put the entries at the top level too).
fn data_object(v: &Value) -> serde_json::Map<String, Value> {
    v.get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn keys_of(v: &Value) -> Vec<String> {
    v.pointer("/data/keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The kv mounts of a `sys/mounts` answer, with their version (1 or 2).
fn kv_mounts(mounts: &Value) -> Vec<(String, u8)> {
    let mut out: Vec<(String, u8)> = data_object(mounts)
        .into_iter()
        .filter_map(|(path, m)| {
            let kind = m.get("type")?.as_str()?;
            let v2 = kind == "kv-v2"
                || (kind == "kv"
                    && m.pointer("/options/version").and_then(Value::as_str) == Some("2"));
            (kind == "kv" || kind == "kv-v2").then_some((path, if v2 { 2 } else { 1 }))
        })
        .collect();
    out.sort();
    out
}

/// The server's `errors` array, joined; never includes request data.
async fn errors_of(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => match v.get("errors").and_then(Value::as_array) {
            Some(errors) if !errors.is_empty() => errors
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), String::from))
                .collect::<Vec<_>>()
                .join("; "),
            _ => "no error message".into(),
        },
        Err(_) => text.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_token_hints_only_at_what_the_command_has() {
        let backup = VaultError::NoToken { backup: true }.to_string();
        assert!(backup.contains("--k8s-role"), "{backup}");
        let plugin = VaultError::NoToken { backup: false }.to_string();
        assert!(!plugin.contains("--k8s-role"), "{plugin}");
        assert!(plugin.contains("VAULT_TOKEN_FILE"), "{plugin}");
    }

    #[test]
    fn parses_addresses_and_refuses_credentials() {
        let t = VaultTarget::from_url("https://vault.vault.svc:8200").unwrap();
        assert_eq!(t.to_string(), "https://vault.vault.svc:8200");
        for bad in [
            "vault:8200",
            "ftp://vault",
            "https://root:s3cret@vault:8200",
            "https://vault:8200/v1/sys",
        ] {
            let err = VaultTarget::from_url(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new(" s.abcdef\n");
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert_eq!(t.0, "s.abcdef");
        let auth = Auth::Token(t);
        assert!(!format!("{auth:?}").contains("abcdef"));
    }

    #[test]
    fn finds_kv_mounts_of_both_versions() {
        let mounts = serde_json::json!({"data": {
            "secret/": {"type": "kv", "options": {"version": "2"}},
            "old/": {"type": "kv", "options": null},
            "v2/": {"type": "kv-v2"},
            "sys/": {"type": "system"},
            "transit/": {"type": "transit"}
        }});
        assert_eq!(
            kv_mounts(&mounts),
            vec![("old/".into(), 1), ("secret/".into(), 2), ("v2/".into(), 2)]
        );
    }
}
