//! The Vault backup: log in, find the active node (a standby's snapshot is broken), stream
//! `GET sys/storage/raft/snapshot` through the encoder while checking the snapshot's shape,
//! and count what verify will compare. One part, `raft.snap.zst.age`; by hand it is
//! `age -d | zstd -d > raft.snap` and `bao operator raft snapshot restore raft.snap`.

use std::io;

use serde::{Deserialize, Serialize};

use super::snapshot;
use super::{Auth, VaultClient, VaultError, VaultTarget};
use crate::catalog::facts::text;
use crate::catalog::PartFormat;
use crate::engine::{BackupRun, PartSpec};
use crate::pipeline::encode::{EncodeError, SourceError};

/// What a Vault backup records in the manifest's `facts`: whose snapshot it is, so a
/// restore can tell a rebuild of the same cluster from another cluster, and how far its
/// raft log had come.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// The cluster's id (`sys/health`), when the server reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The cluster's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Raft index of the snapshot (decimal text).
    #[serde(
        default,
        with = "text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub raft_index: Option<u64>,
    /// Raft term of the snapshot (decimal text).
    #[serde(
        default,
        with = "text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub raft_term: Option<u64>,
}

/// Errors of a Vault backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Talking to Vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The snapshot could not be stored or failed its shape check.
    #[error("storing the raft snapshot of {addr} failed")]
    Snapshot {
        /// The server's address.
        addr: String,
        /// The underlying error.
        #[source]
        source: EncodeError,
    },
}

/// What the manifest records besides the part.
#[derive(Debug, Clone)]
pub struct DumpOutcome {
    /// The server's version (`sys/health`).
    pub server_version: String,
    /// The facts of the snapshot.
    pub facts: Facts,
}

/// Takes one snapshot into `run`. The caller commits the run only if this succeeds.
///
/// # Errors
/// Everything in [`VaultError`], and a snapshot that is empty, malformed or cut short.
pub async fn dump(
    run: &BackupRun<'_>,
    target: &VaultTarget,
    auth: &Auth,
) -> Result<DumpOutcome, DumpError> {
    let client = VaultClient::new(target)?.login(auth).await?;
    // No separate token check here: a token without the default policy cannot look itself
    // up, yet may take snapshots; a refused snapshot tells a bad token from a missing grant.
    let (active, health) = client.active().await?;

    let response = active.snapshot().await?;
    let reader = crate::pipeline::batched_reader(response.bytes_stream());
    let spec = PartSpec {
        name: "raft".into(),
        format: PartFormat::VaultSnapshot,
        extension: "snap",
        database: None,
        section: None,
    };
    tracing::info!(addr = %active.addr(), "streaming the raft snapshot");
    let produce = move |out: &mut dyn io::Write| -> Result<snapshot::SnapshotFacts, SourceError> {
        Ok(snapshot::inspect(reader, Some(out))?)
    };
    // Count while the snapshot streams; both describe the same minute of the cluster.
    let (stored, counts) = tokio::join!(run.store_part(spec, produce), active.counts());
    let facts = stored.map_err(|source| DumpError::Snapshot {
        addr: active.addr().to_string(),
        source,
    })?;
    let counts = counts?;
    tracing::info!(
        raft_index = facts.index,
        raft_term = facts.term,
        state_bytes = facts.state_bytes,
        counts = ?counts.iter().map(|t| format!("{}={}", t.qualified(), t.rows)).collect::<Vec<_>>(),
        "snapshot checked"
    );
    run.record_tables("raft", counts);

    Ok(DumpOutcome {
        server_version: health.version,
        facts: Facts {
            cluster_id: health.cluster_id,
            cluster_name: health.cluster_name,
            raft_index: Some(facts.index),
            raft_term: Some(facts.term),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_keep_the_wire_form_of_earlier_manifests() {
        let stored = crate::catalog::Facts::from([
            ("cluster_id", "8c0a…"),
            ("raft_index", "35"),
            ("raft_term", "3"),
        ]);
        let facts: Facts = stored.read().unwrap();
        assert_eq!(facts.raft_index, Some(35));
        assert_eq!(facts.cluster_name, None);
        assert_eq!(crate::catalog::Facts::of(&facts), stored);
    }
}
