//! Restoring a raft snapshot into a Vault/OpenBao server.
//!
//! Safety rules, in order: the caller checks the part's integrity
//! ([`crate::verify::check_part`]) before this runs; the key is tried before the server is
//! touched; the server must be initialised, unsealed and active, and must accept the token;
//! the snapshot is streamed with its exact length and its last chunk is held back until the
//! whole object has matched the manifest, so the server never receives a complete snapshot
//! that differs from the backup.
//!
//! The server applies a snapshot after it has answered, sealing and unsealing itself on the
//! way; [`run`] therefore waits until the node is active again with a new activation time
//! (or another cluster id). A snapshot from a cluster with other unseal keys (`--force`)
//! leaves the node sealed: it needs the *backed-up* cluster's unseal keys, and [`run`] says
//! so and keeps waiting for someone to unseal it.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use super::{check_usable, Health, Token, VaultClient, VaultError, VaultTarget, SNAPSHOT_PATH};
use crate::catalog::Manifest;
use crate::store::StoreError;
use crate::verify::{verified_body, Verified, VerifyError};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Use `snapshot-force`: accept a snapshot whose unseal keys differ from the server's.
    pub force: bool,
    /// How long to wait for the node to be active (and unsealed) after the restore.
    pub wait: Duration,
}

/// Errors of a Vault restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Talking to Vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    // Not transparent: the VerifyError must stay in the error chain, where the exit code
    // (1 for a backup that fails a check, even mid-restore) looks for it.
    /// The snapshot failed its check while it streamed (exit 1).
    #[error("reading the backup")]
    Verify(#[from] VerifyError),
    /// Reading from the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server refused a snapshot of another cluster without `--force`.
    #[error("Vault at {addr} refused the snapshot ({message}); nothing was changed. The backup comes from a cluster with other unseal keys (a rebuilt cluster): pass --force to restore it anyway, then unseal with the backed-up cluster's keys")]
    ForceNeeded {
        /// The server's address.
        addr: String,
        /// The server's message.
        message: String,
    },
    /// Sending the snapshot failed.
    #[error("sending the snapshot to {addr} failed: {reason}")]
    Send {
        /// The server's address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Restored, but the node stays sealed (it needs the backed-up cluster's unseal keys).
    #[error("the snapshot was restored, but Vault at {addr} is still sealed after {waited}: unseal it with the unseal keys of the backed-up cluster{cluster} (not this server's old keys), then compare counts with `kubectl dr verify {backup} --against {addr}`")]
    StillSealed {
        /// The server's address.
        addr: String,
        /// How long it was waited for.
        waited: String,
        /// The backed-up cluster's id, when known.
        cluster: String,
        /// The backup (`engine/target/id`).
        backup: String,
    },
    /// Sent, but the node did not become active again.
    #[error("the snapshot was sent, but Vault at {addr} did not become active again within {waited}; check the server's log (a failed restore seals the node)")]
    NotActive {
        /// The server's address.
        addr: String,
        /// How long it was waited for.
        waited: String,
    },
}

/// What a restore will do, shown before anything happens.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The active node, with the restore token.
    pub client: VaultClient,
    /// The node's health before the restore.
    pub health: Health,
    active_time: Option<String>,
    /// What the backup recorded about its cluster.
    pub backup: super::dump::Facts,
}

impl RestorePlan {
    /// One line for people: what will be replaced.
    pub fn describe(&self) -> String {
        format!(
            "REPLACE all data of Vault at {} (cluster {}, version {}) with the raft snapshot of cluster {} at raft index {}",
            self.client.addr(),
            self.health.cluster_id.as_deref().unwrap_or("?"),
            self.health.version,
            self.backup.cluster_id.as_deref().unwrap_or("?"),
            self.backup
                .raft_index
                .map_or_else(|| "?".into(), |i| i.to_string()),
        )
    }

    /// True when the server is another cluster than the one backed up: its unseal keys
    /// most likely differ, so a restore needs `--force` and then the old keys.
    pub fn other_cluster(&self) -> bool {
        self.backup.cluster_id.is_some() && self.backup.cluster_id != self.health.cluster_id
    }
}

/// Inspects the server: reachable, initialised, unsealed, active, token accepted.
///
/// # Errors
/// A [`VaultError`] naming what to fix.
pub async fn plan(
    target: &VaultTarget,
    token: Token,
    manifest: &Manifest,
) -> Result<RestorePlan, VaultError> {
    let client = VaultClient::new(target)?.with_token(token);
    let (active, health) = client.active().await?;
    active.check_token().await?;
    let leader = active.leader().await?;
    Ok(RestorePlan {
        client: active,
        health,
        active_time: leader.active_time,
        backup: manifest.facts.read()?,
    })
}

/// Sends the snapshot and waits for the node to be active again. `ctx.say` hears about
/// states a person must act on (a sealed node) while this keeps waiting.
///
/// # Errors
/// Wrong key, damaged stream, refusal by the server, a node that stays sealed or inactive.
pub async fn run(
    plan: &RestorePlan,
    verified: Verified<'_>,
    opts: &RestoreOptions,
    ctx: crate::engine::RestoreCtx<'_>,
) -> Result<(), RestoreError> {
    let notify = ctx.say;
    let (manifest, part) = (verified.manifest(), verified.part());
    let backup = manifest.backup_ref();
    // The age header opens first: a wrong key fails before the server is touched.
    let (plain, bar) = ctx.open(verified).await?;

    let (body, feeding) = verified_body(plain, backup.to_string(), part.clone());
    let path = if opts.force {
        format!("{SNAPSHOT_PATH}-force")
    } else {
        SNAPSHOT_PATH.to_string()
    };
    let client = &plan.client;
    let sent = client
        .send(Method::POST, &path, |r| {
            r.header(reqwest::header::CONTENT_LENGTH, part.plaintext_bytes)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
        })
        .await;
    let fed = feeding.await.expect("restore thread panicked");
    bar.finish();
    // A damaged stream explains a failed request better than the request does.
    fed.map_err(RestoreError::Verify)?;
    let response = sent.map_err(|e| RestoreError::Send {
        addr: client.addr().to_string(),
        reason: e.to_string(),
    })?;
    let status = response.status();
    if !status.is_success() {
        if status == StatusCode::BAD_REQUEST && !opts.force {
            let message = super::client::errors_of(response).await;
            if message.contains("unseal keys") || message.contains("hash file") {
                return Err(RestoreError::ForceNeeded {
                    addr: client.addr().to_string(),
                    message,
                });
            }
            return Err(VaultError::Api {
                addr: client.addr().to_string(),
                method: "POST".into(),
                path,
                status: status.as_u16(),
                message,
            }
            .into());
        }
        return Err(client
            .failure(response, &Method::POST, &path, "update")
            .await
            .into());
    }
    wait_active(plan, manifest, opts.wait, notify).await
}

async fn wait_active(
    plan: &RestorePlan,
    manifest: &Manifest,
    wait: Duration,
    notify: &(dyn Fn(&str) + Sync),
) -> Result<(), RestoreError> {
    let client = &plan.client;
    let started = Instant::now();
    let mut sealed_seen = false;
    loop {
        let sealed = match client.seal_status().await {
            Ok(s) => s.get("sealed").and_then(serde_json::Value::as_bool),
            Err(_) => None,
        };
        if sealed == Some(true) {
            if !sealed_seen {
                notify(&format!(
                    "Vault at {} is sealed after the restore: unseal it with the unseal keys of the backed-up cluster{} (bao operator unseal); waiting up to {} for that",
                    client.addr(),
                    cluster_note(plan),
                    humantime::format_duration(wait)
                ));
            }
            sealed_seen = true;
        } else if let Ok(h) = client.health().await {
            if check_usable(client.addr(), &h).is_ok() && !h.standby {
                let leader = client.leader().await.ok();
                let reactivated = leader.is_some_and(|l| l.active_time != plan.active_time);
                if reactivated || h.cluster_id != plan.health.cluster_id {
                    return Ok(());
                }
            }
        }
        if started.elapsed() >= wait {
            let waited =
                humantime::format_duration(Duration::from_secs(wait.as_secs())).to_string();
            return Err(if sealed_seen {
                RestoreError::StillSealed {
                    addr: client.addr().to_string(),
                    waited,
                    cluster: cluster_note(plan),
                    backup: manifest.id.to_string(),
                }
            } else {
                RestoreError::NotActive {
                    addr: client.addr().to_string(),
                    waited,
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cluster_note(plan: &RestorePlan) -> String {
    plan.backup
        .cluster_id
        .as_deref()
        .map(|c| format!(" (cluster id {c})"))
        .unwrap_or_default()
}
