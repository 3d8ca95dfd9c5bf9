//! The manifest: one JSON document per backup, written after every part is stored. Its
//! presence is the commit: a backup directory without `manifest.json` is incomplete and
//! invisible. The format is documented for humans in `docs/FORMAT.md`; keep the two in step.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupId, BackupRef, Engine, Facts, PartFormat};

/// Bumped when a reader of an older version could misread a newer manifest. 2: a database
/// may be stored as several parts, one per [`Section`] (`worker backup postgres --jobs`);
/// a version 1 reader would restore its first part alone. 3: a ClickHouse table may be
/// stored as one part per partition ([`Partition`]), and a part may live in an older
/// backup ([`Part::from`], incremental backups); a version 2 reader would miss both. A
/// manifest is written with the oldest version that reads it, so older readers keep
/// reading what they can.
pub const FORMAT_VERSION: u32 = 3;

/// The format version a manifest with these parts needs: the oldest that reads it.
pub fn format_version_for(parts: &[Part]) -> u32 {
    if parts
        .iter()
        .any(|p| p.from.is_some() || p.partition.is_some())
    {
        3
    } else if parts.iter().any(|p| p.section.is_some()) {
        2
    } else {
        1
    }
}

/// The partition of a table a part holds (ClickHouse's MergeTree family): one part per
/// partition, so a backup can store only the partitions that changed since an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The server's `partition_id` (`202612`, `all` for a table without a partition key).
    pub id: String,
    /// What the partition's data was when it was dumped, from the server's own
    /// bookkeeping (its parts' file hashes where the server has them, else their names and
    /// sizes), the table's columns and identity: equal fingerprints mean equal data.
    /// Absent when it could not be taken (the partition is then never reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The oldest time in the partition, where its key has a date or time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_time: Option<DateTime<Utc>>,
    /// The newest time in the partition, where its key has a date or time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_time: Option<DateTime<Utc>>,
}

/// Which section of a database's dump a part holds, when the dump was split into several
/// parts (pg_dump's own section names): the parts restore in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Schemas, types, tables without their rows, functions: restored first, in one
    /// transaction. Carries the database's row counts.
    PreData,
    /// Rows of some tables (or of the rest: sequences' positions, large objects, small
    /// tables); the data parts of a database restore concurrently.
    Data,
    /// Indexes, constraints, triggers, materialized views' contents: restored last.
    PostData,
}

/// Everything a verify or restore needs to know about one backup, without the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The backup's id (its directory name).
    pub id: BackupId,
    /// What it is a backup of; unknown names are kept (see [`Engine`]).
    pub engine: Engine,
    /// The `--target` it was taken with.
    pub target: String,
    /// When the worker started (the id's time).
    pub started_at: DateTime<Utc>,
    /// When the last part was stored.
    pub finished_at: DateTime<Utc>,
    /// Name and version of the program that wrote the backup.
    pub tool: String,
    /// The source server's own version string (e.g. `15.18`).
    pub server_version: String,
    /// age public keys the parts are encrypted to; one of their identities restores.
    pub recipients: Vec<String>,
    /// The stored objects, in the order they were written.
    pub parts: Vec<Part>,
    /// Engine-specific facts about the source, e.g. a Vault cluster's id and raft index.
    /// Read them typed with [`Facts::read`] and the engine's own struct.
    #[serde(default, skip_serializing_if = "Facts::is_empty")]
    pub facts: Facts,
    /// For an incremental backup: the backup it was compared with (its parts that did not
    /// change are referenced, see [`Part::from`]). Absent for a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BackupId>,
}

/// One stored object of a backup: an age-encrypted, usually zstd-compressed stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Stable name within the backup, e.g. `db-app` or `globals`.
    pub name: String,
    /// Object name relative to the backup's directory, e.g. `db-app.pgdump.zst.age`.
    pub file: String,
    /// What the plaintext is, e.g. `pg_dump-custom` or `sql`.
    pub format: PartFormat,
    /// Compression under the encryption.
    pub compression: Compression,
    /// Size of the stored object.
    pub ciphertext_bytes: u64,
    /// Hex SHA-256 of the stored object, checked before anything is restored.
    pub ciphertext_sha256: String,
    /// Bytes after decryption and decompression.
    pub plaintext_bytes: u64,
    /// Hex SHA-256 of the object's first bytes: the age header and the payload nonce. With
    /// it, a restore can check the part as it streams (one pass): a matching header means
    /// the payload key is the one the worker chose, and age authenticates every 64 KiB
    /// chunk under that key, so no byte the worker did not write reaches the database.
    /// Absent in backups made before it existed; those are checked in a pass before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_sha256: Option<String>,
    /// The database this part holds, for engines with databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Exact row counts, taken in the same snapshot as the data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableCount>,
    /// The section of the database's dump this part holds, when it was split (`--jobs`);
    /// absent for a whole dump in one part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<Section>,
    /// The table partition this part holds (ClickHouse), when the table was stored a part
    /// per partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
    /// A reference: the part was not stored again, its object is the one in this older
    /// backup of the same engine and target (the backup that stored it, never a backup
    /// that referenced it in turn). Its sizes and sums are that object's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupId>,
}

impl Part {
    /// True for the part that stands for its database: a whole dump, or the pre-data
    /// section of a split one (it carries the counts and restores first).
    pub fn leads(&self) -> bool {
        matches!(self.section, None | Some(Section::PreData))
    }
}

/// Compression applied before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as is (already compressed data, e.g. a gzip'd raft snapshot).
    None,
    /// zstd frames.
    Zstd,
}

/// Exact row count of one table at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// Schema (PostgreSQL), database (ClickHouse) or group (Vault: `mounts`, `kv/…`).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Exact number of rows.
    pub rows: u64,
}

impl TableCount {
    /// `schema.name`, as shown to people (not quoted for SQL).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Longest part file name accepted (half of S3's 1,024-byte key limit).
const MAX_PART_FILE: usize = 512;

/// Whether `file` may name a part inside a backup's directory: the pattern documented in
/// docs/FORMAT.md (`[A-Za-z0-9._%-]`, not starting with a dot, ending in `.age`, at most
/// 512 bytes) and no percent-escape that decodes to a separator (see
/// [`crate::store::segment_is_safe`]).
pub fn part_file_is_valid(file: &str) -> bool {
    file.len() <= MAX_PART_FILE
        && file.ends_with(".age")
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._%-".contains(&b))
        && crate::store::segment_is_safe(file)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_recipient_shaped(s: &str) -> bool {
    // Bech32 text of an X25519 recipient: `age1` and 58 lowercase data characters.
    s.len() == 62
        && s.starts_with("age1")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Manifest {
    /// Checks everything a reader relies on before it trusts a manifest: a supported format
    /// version, the id, engine and target of the key it was read from, recipient and sha256
    /// shapes, part file names a store can only resolve inside the backup's directory,
    /// unique parts, and totals that fit in 64 bits. `Err` says what is wrong; the backup is
    /// then *damaged*: never `latest`, never counted by retention.
    ///
    /// # Errors
    /// The first problem found, as a sentence fragment.
    pub fn check(&self, expected: &BackupRef) -> Result<(), String> {
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(format!(
                "format version {} is not one this tool reads (1 to {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.backup_ref() != *expected {
            return Err(format!(
                "it describes {}, not the backup at its path",
                crate::catalog::printable(&self.backup_ref().to_string())
            ));
        }
        if self.recipients.is_empty() {
            return Err("it names no recipient".into());
        }
        if let Some(r) = self.recipients.iter().find(|r| !is_recipient_shaped(r)) {
            return Err(format!(
                "recipient {} is not an age public key",
                crate::catalog::printable(r)
            ));
        }
        if self.parts.is_empty() {
            return Err("it lists no part".into());
        }
        if self.base.as_ref().is_some_and(|b| *b >= self.id) {
            return Err("its base is not older than itself".into());
        }
        let mut files = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        let (mut bytes, mut rows) = (0u64, 0u64);
        for part in &self.parts {
            let shown = crate::catalog::printable(&part.file);
            if !part_file_is_valid(&part.file) {
                return Err(format!(
                    "part file name {shown} is not a valid part name (see docs/FORMAT.md)"
                ));
            }
            if !files.insert((part.from.as_ref(), part.file.as_str())) {
                return Err(format!("part file {shown} is listed twice"));
            }
            if !names.insert(part.name.as_str()) {
                return Err(format!(
                    "part {} is listed twice",
                    crate::catalog::printable(&part.name)
                ));
            }
            if let Some(from) = &part.from {
                // Only older backups can be referenced: no cycle, and prune can keep a
                // chain by walking back.
                if *from >= self.id || self.base.is_none() {
                    return Err(format!(
                        "part {shown} refers to backup {from}, which is not an older one of its chain"
                    ));
                }
            }
            if part.name.is_empty() || part.name.len() > 255 || part.name.contains(char::is_control)
            {
                return Err(format!(
                    "part {} has an unusable name",
                    crate::catalog::printable(&part.name)
                ));
            }
            if !is_sha256_hex(&part.ciphertext_sha256) {
                return Err(format!("part {shown} has no valid sha256"));
            }
            if part
                .header_sha256
                .as_deref()
                .is_some_and(|h| !is_sha256_hex(h))
            {
                return Err(format!("part {shown} has an invalid header sha256"));
            }
            bytes = bytes
                .checked_add(part.ciphertext_bytes)
                .ok_or("its part sizes overflow")?;
            for t in &part.tables {
                rows = rows.checked_add(t.rows).ok_or("its row counts overflow")?;
            }
        }
        Ok(())
    }

    /// The backup whose directory holds `part`'s object: this one, or the older one a
    /// reference names.
    pub fn holder_of(&self, part: &Part) -> BackupRef {
        BackupRef {
            engine: self.engine.to_string(),
            target: self.target.clone(),
            id: part.from.clone().unwrap_or_else(|| self.id.clone()),
        }
    }

    /// The store key of `part`'s object (in an older backup for a reference).
    pub fn object_key(&self, part: &Part) -> String {
        self.holder_of(part).part_key(&part.file)
    }

    /// The older backups whose objects this one references, oldest first: they must be
    /// kept, and be intact, for this one to restore.
    pub fn references(&self) -> Vec<BackupId> {
        let set: std::collections::BTreeSet<&BackupId> =
            self.parts.iter().filter_map(|p| p.from.as_ref()).collect();
        set.into_iter().cloned().collect()
    }

    /// `full`, `incremental`, or `physical` (a PostgreSQL base backup for point-in-time
    /// recovery).
    pub fn kind(&self) -> &'static str {
        if self.facts.get("physical") == Some("true") {
            "physical"
        } else if self.base.is_some() {
            "incremental"
        } else {
            "full"
        }
    }

    /// Stored bytes of this backup's own parts (references excluded).
    pub fn own_bytes(&self) -> u64 {
        self.parts
            .iter()
            .filter(|p| p.from.is_none())
            .fold(0u64, |n, p| n.saturating_add(p.ciphertext_bytes))
    }

    /// Where the backup lives.
    pub fn backup_ref(&self) -> BackupRef {
        BackupRef {
            engine: self.engine.to_string(),
            target: self.target.clone(),
            id: self.id.clone(),
        }
    }

    /// The first part of `format` (an engine's schema, snapshot or output part).
    pub fn part_of(&self, format: &PartFormat) -> Option<&Part> {
        self.parts.iter().find(|p| p.format == *format)
    }

    /// Total stored bytes of all parts ([`Manifest::check`] guarantees the sum fits).
    pub fn size_bytes(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.ciphertext_bytes))
    }

    /// Total rows of all tables ([`Manifest::check`] guarantees the sum fits). A Redis
    /// snapshot's rows are its keys: its `expires` counts are a subset of them, not more.
    pub fn total_rows(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| {
                let subset = (p.format == PartFormat::RedisRdb).then_some("expires");
                p.tables
                    .iter()
                    .filter(move |t| Some(t.name.as_str()) != subset)
            })
            .fold(0u64, |n, t| n.saturating_add(t.rows))
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
            engine: Engine::Postgres,
            target: "prod".into(),
            started_at: "2026-11-22T02:00:00Z".parse().unwrap(),
            finished_at: "2026-11-22T02:03:10Z".parse().unwrap(),
            tool: "worker 0.1.0".into(),
            server_version: "15.18".into(),
            recipients: vec![format!("age1{}", "q".repeat(58))],
            parts: vec![Part {
                name: "db-app".into(),
                file: "db-app.pgdump.zst.age".into(),
                format: PartFormat::PgDumpCustom,
                compression: Compression::Zstd,
                ciphertext_bytes: 1234,
                ciphertext_sha256: "ab".repeat(32),
                header_sha256: None,
                section: None,
                partition: None,
                from: None,
                plaintext_bytes: 5678,
                database: Some("app".into()),
                tables: vec![TableCount {
                    schema: "public".into(),
                    name: "users".into(),
                    rows: 42,
                }],
            }],
            facts: Facts::from([("cluster_id", "c-1")]),
            base: None,
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
    fn a_sound_manifest_passes_its_check() {
        let m = sample();
        m.check(&m.backup_ref()).unwrap();
    }

    #[test]
    fn an_incremental_manifest_names_where_each_object_is_and_needs_format_3() {
        let mut m = sample();
        assert_eq!(format_version_for(&m.parts), 1);
        let base: BackupId = "20261121T020000Z-000001".parse().unwrap();
        m.base = Some(base.clone());
        let mut old = m.parts[0].clone();
        old.name = "db-old".into();
        old.from = Some(base.clone());
        m.parts.push(old);
        m.format_version = format_version_for(&m.parts);
        assert_eq!(m.format_version, 3);
        m.check(&m.backup_ref()).unwrap();
        assert_eq!(m.kind(), "incremental");
        assert_eq!(m.references(), vec![base.clone()]);
        assert_eq!(
            m.object_key(&m.parts[1]),
            format!("postgres/prod/{base}/{}", m.parts[1].file)
        );
        assert_eq!(
            m.object_key(&m.parts[0]),
            format!("postgres/prod/{}/{}", m.id, m.parts[0].file)
        );
        assert_eq!(m.own_bytes() * 2, m.size_bytes());
        // A version 2 reader refuses it: "format version 3 is not one this tool reads".
        assert!(m.format_version > 2);
    }

    #[test]
    fn damaged_manifests_fail_their_check_with_the_reason() {
        type Damage = fn(&mut Manifest);
        let cases: &[(&str, Damage)] = &[
            ("format version 0", |m| m.format_version = 0),
            ("format version 7", |m| m.format_version = 7),
            ("describes", |m| m.target = "other".into()),
            ("describes", |m| m.engine = Engine::Vault),
            ("no recipient", |m| m.recipients.clear()),
            ("not an age public key", |m| {
                m.recipients = vec!["AGE-SECRET-KEY-1X".into()]
            }),
            ("no part", |m| m.parts.clear()),
            ("not a valid part name", |m| {
                m.parts[0].file = "../x.age".into()
            }),
            ("not a valid part name", |m| {
                m.parts[0].file = "/etc/passwd".into()
            }),
            ("not a valid part name", |m| {
                m.parts[0].file = "a%2F..%2Fb.age".into()
            }),
            ("not a valid part name", |m| {
                m.parts[0].file = "a\nb.age".into()
            }),
            ("not a valid part name", |m| {
                m.parts[0].file = "manifest.json".into()
            }),
            ("not a valid part name", |m| {
                m.parts[0].file = ".hidden.age".into()
            }),
            ("listed twice", |m| m.parts.push(m.parts[0].clone())),
            ("unusable name", |m| m.parts[0].name = "esc\u{1b}[2J".into()),
            ("no valid sha256", |m| {
                m.parts[0].ciphertext_sha256 = "zz".into()
            }),
            ("no valid sha256", |m| {
                m.parts[0].ciphertext_sha256 = "AB".repeat(32)
            }),
            ("sizes overflow", |m| {
                m.parts[0].ciphertext_bytes = u64::MAX;
                let mut p = m.parts[0].clone();
                p.file = "db-b.pgdump.zst.age".into();
                p.name = "db-b".into();
                m.parts.push(p);
            }),
            ("is listed twice", |m| {
                let mut p = m.parts[0].clone();
                p.file = "db-b.pgdump.zst.age".into();
                m.parts.push(p);
            }),
            ("base is not older", |m| m.base = Some(m.id.clone())),
            ("not an older one of its chain", |m| {
                // A reference without a base.
                m.parts[0].from = Some("20261121T020000Z-000001".parse().unwrap());
            }),
            ("not an older one of its chain", |m| {
                m.base = Some("20261121T020000Z-000001".parse().unwrap());
                m.parts[0].from = Some("20261123T020000Z-000001".parse().unwrap());
            }),
            ("row counts overflow", |m| {
                let t = m.parts[0].tables[0].clone();
                m.parts[0].tables = vec![
                    TableCount {
                        rows: u64::MAX,
                        ..t.clone()
                    },
                    t,
                ];
            }),
        ];
        for (want, damage) in cases {
            let mut m = sample();
            let at = m.backup_ref();
            damage(&mut m);
            let err = m.check(&at).expect_err(want);
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn part_names_the_worker_writes_are_valid() {
        for file in [
            "db-app.pgdump.zst.age",
            "globals.sql.zst.age",
            "db-my%20db%2F2.pgdump.age",
            "snapshot.snap.zst.age",
        ] {
            assert!(part_file_is_valid(file), "{file}");
        }
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
