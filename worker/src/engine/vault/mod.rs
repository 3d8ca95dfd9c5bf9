//! Vault and OpenBao (the same HTTP API): raft snapshots taken from the active node, checked
//! while they stream, restored with the snapshot API, and counts (secrets engines, auth
//! methods, policies, kv secrets) that `verify` and `restore` compare.
//!
//! This module is the HTTP client and its error vocabulary: every failure a person meets at
//! 3 a.m. (sealed, standby, wrong token, missing capability, Kubernetes role rejected) is a
//! [`VaultError`] that says what to do next. Tokens live in [`Token`], which never prints.

pub mod client;
pub mod dump;
pub mod restore;
pub mod sink;
pub mod snapshot;
pub mod source;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::catalog::PartFormat;
use crate::catalog::{Manifest, Part};

pub use client::VaultClient;

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
}
