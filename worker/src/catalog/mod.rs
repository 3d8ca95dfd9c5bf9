//! The catalog: how backups are laid out in a store and how they are found again.
//!
//! Layout (relative to the store's prefix):
//! `<engine>/<target>/<backup-id>/manifest.json` and `<engine>/<target>/<backup-id>/<part file>`.
//! A directory without `manifest.json` is an incomplete backup: [`scan`] reports it as such,
//! listing and restore ignore it.

mod id;
mod manifest;

use std::collections::BTreeMap;
use std::fmt;

pub use id::{BackupId, BadBackupId};
pub use manifest::{Compression, Manifest, Part, TableCount, FORMAT_VERSION};

use crate::store::{ReadStore, StoreError};

/// File name of the commit record inside a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Where one backup lives: engine, target and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupRef {
    pub engine: String,
    pub target: String,
    pub id: BackupId,
}

impl BackupRef {
    /// Directory of the backup, relative to the store prefix, without trailing slash.
    pub fn dir(&self) -> String {
        format!("{}/{}/{}", self.engine, self.target, self.id)
    }

    pub fn manifest_key(&self) -> String {
        format!("{}/{MANIFEST_FILE}", self.dir())
    }

    pub fn part_key(&self, file: &str) -> String {
        format!("{}/{file}", self.dir())
    }
}

impl fmt::Display for BackupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.engine, self.target, self.id)
    }
}

/// Errors while finding or reading backups.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no complete backup matches {0}; run `kubectl dr list` to see what the store holds")]
    NoBackup(String),
    #[error("`latest` is ambiguous: the store holds backups of {0}; pass --engine and --target")]
    Ambiguous(String),
    #[error("manifest {key} is unreadable ({source}); the backup is damaged, pick another id")]
    BadManifest {
        key: String,
        source: serde_json::Error,
    },
    #[error("manifest {key} describes {found}, not the backup at its path; the store was tampered with or copied wrongly")]
    ManifestMismatch { key: String, found: String },
    #[error("manifest {key} has format version {version}, newer than this tool understands ({FORMAT_VERSION}); upgrade kubectl-dr")]
    TooNew { key: String, version: u32 },
    #[error("invalid {kind} name {name:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")]
    BadName { kind: &'static str, name: String },
}

/// Checks an engine or target name, which becomes a path segment of every key.
///
/// # Errors
/// [`CatalogError::BadName`] when the name could escape its directory or confuse listing.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::BadName {
            kind,
            name: name.to_string(),
        })
    }
}

/// Restricts a scan to one engine and/or target.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub engine: Option<String>,
    pub target: Option<String>,
}

impl Filter {
    /// The key prefix holding exactly the selected series.
    pub fn list_prefix(&self) -> String {
        match (&self.engine, &self.target) {
            (Some(e), Some(t)) => format!("{e}/{t}/"),
            (Some(e), None) => format!("{e}/"),
            _ => String::new(),
        }
    }

    fn matches(&self, b: &BackupRef) -> bool {
        self.engine.as_ref().is_none_or(|e| *e == b.engine)
            && self.target.as_ref().is_none_or(|t| *t == b.target)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "engine={} target={}",
            self.engine.as_deref().unwrap_or("*"),
            self.target.as_deref().unwrap_or("*")
        )
    }
}

/// One backup directory found by listing the store.
#[derive(Debug, Clone)]
pub struct ScannedBackup {
    pub backup: BackupRef,
    /// Sum of the sizes of every object in the directory, manifest included.
    pub size_bytes: u64,
    pub objects: Vec<String>,
    /// False for a backup that never committed (or is still running).
    pub complete: bool,
}

/// Lists backup directories (complete and incomplete) with one store listing, sorted by
/// engine, target and id. Keys that do not fit the layout are ignored, so a shared bucket
/// prefix with other files in it is harmless.
///
/// # Errors
/// The store's listing error.
pub async fn scan(
    store: &dyn ReadStore,
    filter: &Filter,
) -> Result<Vec<ScannedBackup>, CatalogError> {
    let objects = store.list(&filter.list_prefix()).await?;
    let mut dirs: BTreeMap<BackupRef, ScannedBackup> = BTreeMap::new();
    for obj in objects {
        let mut segs = obj.key.splitn(4, '/');
        let (Some(engine), Some(target), Some(id), Some(file)) =
            (segs.next(), segs.next(), segs.next(), segs.next())
        else {
            continue;
        };
        let Ok(id) = id.parse::<BackupId>() else {
            continue;
        };
        if validate_name("engine", engine).is_err() || validate_name("target", target).is_err() {
            continue;
        }
        let backup = BackupRef {
            engine: engine.to_string(),
            target: target.to_string(),
            id,
        };
        if !filter.matches(&backup) {
            continue;
        }
        let entry = dirs.entry(backup.clone()).or_insert_with(|| ScannedBackup {
            backup,
            size_bytes: 0,
            objects: Vec::new(),
            complete: false,
        });
        entry.size_bytes += obj.size;
        entry.complete |= file == MANIFEST_FILE;
        entry.objects.push(obj.key);
    }
    Ok(dirs.into_values().collect())
}

/// Reads and checks the manifest of one backup.
///
/// # Errors
/// Store errors (including not found), unparsable JSON, a manifest whose own engine, target
/// or id disagree with its path, or a format newer than this build.
pub async fn load_manifest(
    store: &dyn ReadStore,
    backup: &BackupRef,
) -> Result<Manifest, CatalogError> {
    let key = backup.manifest_key();
    let bytes = store.get_bytes(&key).await?;
    // Check the version before the full parse so a newer format gets the helpful message.
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    if let Ok(v) = serde_json::from_slice::<VersionOnly>(&bytes) {
        if v.format_version > FORMAT_VERSION {
            return Err(CatalogError::TooNew {
                key,
                version: v.format_version,
            });
        }
    }
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| CatalogError::BadManifest {
            key: key.clone(),
            source,
        })?;
    if manifest.backup_ref() != *backup {
        return Err(CatalogError::ManifestMismatch {
            key,
            found: manifest.backup_ref().to_string(),
        });
    }
    Ok(manifest)
}

/// Finds the manifest named by `selector`: a backup id, or `latest` for the newest complete
/// backup matching `filter`.
///
/// # Errors
/// [`CatalogError::NoBackup`] when nothing matches, [`CatalogError::Ambiguous`] when `latest`
/// could mean backups of several engines or targets, and the errors of [`load_manifest`].
pub async fn resolve(
    store: &dyn ReadStore,
    selector: &str,
    filter: &Filter,
) -> Result<Manifest, CatalogError> {
    let wanted: Option<BackupId> = if selector == "latest" {
        None
    } else {
        Some(
            selector
                .parse()
                .map_err(|e: BadBackupId| CatalogError::NoBackup(e.to_string()))?,
        )
    };
    let complete: Vec<ScannedBackup> = scan(store, filter)
        .await?
        .into_iter()
        .filter(|b| b.complete && wanted.as_ref().is_none_or(|id| *id == b.backup.id))
        .collect();
    let what = || match &wanted {
        Some(id) => format!("id {id} ({filter})"),
        None => format!("`latest` ({filter})"),
    };
    let mut series: Vec<String> = complete
        .iter()
        .map(|b| format!("{}/{}", b.backup.engine, b.backup.target))
        .collect();
    series.dedup();
    match series.len() {
        0 => Err(CatalogError::NoBackup(what())),
        1 => {
            let newest = complete
                .iter()
                .map(|b| &b.backup)
                .max_by(|a, b| a.id.cmp(&b.id));
            load_manifest(store, newest.expect("non-empty")).await
        }
        _ => Err(CatalogError::Ambiguous(series.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_rejected() {
        for bad in ["", "..", ".x", "a/b", "Prod", "a b", "-x", &"x".repeat(64)] {
            assert!(validate_name("target", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["prod", "pg-main", "a.b_c", "0db"] {
            validate_name("target", good).unwrap();
        }
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let b = BackupRef {
            engine: "postgres".into(),
            target: "prod".into(),
            id: "20261122T020000Z-7f3a9c".parse().unwrap(),
        };
        assert_eq!(
            b.manifest_key(),
            "postgres/prod/20261122T020000Z-7f3a9c/manifest.json"
        );
        assert_eq!(
            b.part_key("db-app.pgdump.zst.age"),
            "postgres/prod/20261122T020000Z-7f3a9c/db-app.pgdump.zst.age"
        );
    }
}
