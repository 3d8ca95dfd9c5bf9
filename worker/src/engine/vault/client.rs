//! The HTTP client of one Vault or OpenBao node: health and leader lookups, token checks,
//! the snapshot stream in and out, and the counts `verify` and `restore` compare. Every
//! failure becomes a [`VaultError`] that says what to do next; the token never prints.

use std::fmt;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use super::{check_usable, Auth, Health, Leader, Token, VaultError, VaultTarget, SNAPSHOT_PATH};
use crate::catalog::TableCount;
use crate::engine::transport_reason;

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
    pub(super) async fn send(
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
pub(super) async fn errors_of(response: reqwest::Response) -> String {
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
