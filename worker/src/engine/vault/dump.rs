//! The Vault backup: log in, find the active node (a standby's snapshot is broken), stream
//! `GET sys/storage/raft/snapshot` through the encoder while checking the snapshot's shape,
//! and count what verify will compare. One part, `raft.snap.zst.age`; by hand it is
//! `age -d | zstd -d > raft.snap` and `bao operator raft snapshot restore raft.snap`.

use std::collections::BTreeMap;
use std::io;

use super::snapshot;
use super::{Auth, VaultClient, VaultError, VaultTarget, FORMAT_SNAPSHOT};
use crate::engine::{BackupRun, PartSpec};
use crate::pipeline::encode::{EncodeError, SourceError};

/// Manifest facts of a Vault backup.
pub const FACT_CLUSTER_ID: &str = "cluster_id";
pub const FACT_CLUSTER_NAME: &str = "cluster_name";
pub const FACT_RAFT_INDEX: &str = "raft_index";
pub const FACT_RAFT_TERM: &str = "raft_term";

/// Errors of a Vault backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("storing the raft snapshot of {addr} failed")]
    Snapshot {
        addr: String,
        #[source]
        source: EncodeError,
    },
}

/// What the manifest records besides the part.
#[derive(Debug, Clone)]
pub struct DumpOutcome {
    pub server_version: String,
    pub facts: BTreeMap<String, String>,
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
        format: FORMAT_SNAPSHOT,
        extension: "snap",
        database: None,
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

    let mut out = BTreeMap::new();
    if let Some(id) = health.cluster_id {
        out.insert(FACT_CLUSTER_ID.to_string(), id);
    }
    if let Some(name) = health.cluster_name {
        out.insert(FACT_CLUSTER_NAME.to_string(), name);
    }
    out.insert(FACT_RAFT_INDEX.to_string(), facts.index.to_string());
    out.insert(FACT_RAFT_TERM.to_string(), facts.term.to_string());
    Ok(DumpOutcome {
        server_version: health.version,
        facts: out,
    })
}
