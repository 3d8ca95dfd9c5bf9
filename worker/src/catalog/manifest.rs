//! The manifest: one JSON document per backup, written after every part is stored. Its
//! presence is the commit: a backup directory without `manifest.json` is incomplete and
//! invisible. The format is documented for humans in `docs/FORMAT.md`; keep the two in step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupId, BackupRef};

/// Bumped when a reader of an older version could misread a newer manifest.
pub const FORMAT_VERSION: u32 = 1;

/// Everything a verify or restore needs to know about one backup, without the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: BackupId,
    pub engine: String,
    pub target: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Name and version of the program that wrote the backup.
    pub tool: String,
    /// The source server's own version string (e.g. `15.18`).
    pub server_version: String,
    /// age public keys the parts are encrypted to; one of their identities restores.
    pub recipients: Vec<String>,
    pub parts: Vec<Part>,
    /// Engine-specific facts about the source, e.g. a Vault cluster's id and raft index.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

/// One stored object of a backup: an age-encrypted, usually zstd-compressed stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Stable name within the backup, e.g. `db-app` or `globals`.
    pub name: String,
    /// Object name relative to the backup's directory, e.g. `db-app.pgdump.zst.age`.
    pub file: String,
    /// What the plaintext is, e.g. `pg_dump-custom` or `sql`.
    pub format: String,
    pub compression: Compression,
    pub ciphertext_bytes: u64,
    /// Hex SHA-256 of the stored object, checked before anything is restored.
    pub ciphertext_sha256: String,
    /// Bytes after decryption and decompression.
    pub plaintext_bytes: u64,
    /// The database this part holds, for engines with databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Exact row counts, taken in the same snapshot as the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableCount>,
}

/// Compression applied before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

/// Exact row count of one table at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: u64,
}

impl TableCount {
    /// `schema.name`, as shown to people (not quoted for SQL).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

impl Manifest {
    pub fn backup_ref(&self) -> BackupRef {
        BackupRef {
            engine: self.engine.clone(),
            target: self.target.clone(),
            id: self.id.clone(),
        }
    }

    /// Total stored bytes of all parts.
    pub fn size_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.ciphertext_bytes).sum()
    }

    /// Names of the databases held by this backup, in part order, each once (a ClickHouse
    /// backup has a part per table).
    pub fn databases(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for db in self.parts.iter().filter_map(|p| p.database.as_deref()) {
            if !out.contains(&db) {
                out.push(db);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            id: "20261122T020000Z-7f3a9c".parse().unwrap(),
            engine: "postgres".into(),
            target: "prod".into(),
            started_at: "2026-11-22T02:00:00Z".parse().unwrap(),
            finished_at: "2026-11-22T02:03:10Z".parse().unwrap(),
            tool: "worker 0.1.0".into(),
            server_version: "15.18".into(),
            recipients: vec!["age1qqq".into()],
            parts: vec![Part {
                name: "db-app".into(),
                file: "db-app.pgdump.zst.age".into(),
                format: "pg_dump-custom".into(),
                compression: Compression::Zstd,
                ciphertext_bytes: 1234,
                ciphertext_sha256: "ab".repeat(32),
                plaintext_bytes: 5678,
                database: Some("app".into()),
                tables: vec![TableCount {
                    schema: "public".into(),
                    name: "users".into(),
                    rows: 42,
                }],
            }],
            facts: BTreeMap::from([("cluster_id".into(), "c-1".into())]),
        }
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let m = sample();
        let text = serde_json::to_string_pretty(&m).unwrap();
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert!(text.contains("\"ciphertext_sha256\""));
        assert!(text.contains("\"compression\": \"zstd\""));
    }

    #[test]
    fn rejects_a_manifest_with_a_bad_id() {
        let text = serde_json::to_string(&sample())
            .unwrap()
            .replace("20261122T020000Z-7f3a9c", "../../etc");
        assert!(serde_json::from_str::<Manifest>(&text).is_err());
    }

    #[test]
    fn totals() {
        let m = sample();
        assert_eq!(m.size_bytes(), 1234);
        assert_eq!(m.databases(), vec!["app"]);
        let mut two = m.clone();
        two.parts.push(two.parts[0].clone());
        assert_eq!(
            two.databases(),
            vec!["app"],
            "one name per database, not per part"
        );
    }
}
