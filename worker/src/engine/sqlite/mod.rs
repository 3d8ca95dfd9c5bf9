//! `sqlite`: backups of a SQLite database file, the proof that an engine is a folder and a
//! line in the registry. It runs beside the application that owns the file (a CronJob that
//! mounts its volume).
//!
//! - [`source`]: `worker backup sqlite --target T --path /data/app.db` copies the database
//!   with SQLite's online backup API (a consistent snapshot while the application writes),
//!   counts every table of the copy, and streams the copy into one part.
//! - [`sink`]: `kubectl dr restore … --to sqlite:///path/app.db` writes the database beside
//!   the destination, checks it (`PRAGMA integrity_check`, the counts) and renames it into
//!   place: a failed restore leaves the destination as it was, so the part is read once.
//! - [`scratch`]: `worker drill --to sqlite=sqlite:///scratch/dir` restores into
//!   `<target>__drill.db` there and removes it afterwards.

pub mod scratch;
pub mod sink;
pub mod source;

use std::path::{Path, PathBuf};

use crate::catalog::TableCount;
use crate::engine::SourceFailure;

/// What a SQLite backup records in the manifest's `facts`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    /// The database's page size in bytes.
    #[serde(default)]
    pub page_size: String,
}

/// The first 16 bytes of every SQLite database file.
const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The path a `sqlite:///absolute/path` URL names (percent-encoded bytes decoded).
///
/// # Errors
/// Another scheme, a host, a relative or empty path.
pub fn path_of_url(url: &str) -> Result<PathBuf, SourceFailure> {
    let bad = || -> SourceFailure {
        format!("{url:?} is not a SQLite destination; give sqlite:///absolute/path/to/file.db")
            .into()
    };
    let rest = url.strip_prefix("sqlite://").ok_or_else(bad)?;
    if !rest.starts_with('/') {
        return Err(bad());
    }
    // The file URL rules decode the path the same way.
    let path = url::Url::parse(&format!("file://{rest}"))
        .ok()
        .and_then(|u| u.to_file_path().ok())
        .ok_or_else(bad)?;
    if path.file_name().is_none() {
        return Err(bad());
    }
    Ok(path)
}

/// The exact row count of every table of `conn` (schema `main`), in name order.
///
/// # Errors
/// A database that cannot be read.
pub fn count_tables(conn: &rusqlite::Connection) -> Result<Vec<TableCount>, rusqlite::Error> {
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let rows: i64 =
            conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?;
        out.push(TableCount {
            schema: "main".into(),
            name,
            rows: u64::try_from(rows).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Opens `path` read-only and counts its tables.
///
/// # Errors
/// A missing or unreadable file, or one that is not a database.
pub fn count_file(path: &Path) -> Result<Vec<TableCount>, SourceFailure> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    Ok(count_tables(&conn)
        .map_err(|e| format!("counting the tables of {}: {e}", path.display()))?)
}

/// Opens a file no one else writes (a restore's own copy) read-only and immutable: SQLite
/// then creates no `-wal` or `-shm` file beside it, which would be left behind when the file
/// is renamed.
///
/// # Errors
/// A file that cannot be opened.
pub fn open_immutable(path: &Path) -> Result<rusqlite::Connection, SourceFailure> {
    let uri = url::Url::from_file_path(path)
        .map_err(|()| format!("{} is not an absolute path", path.display()))?;
    Ok(rusqlite::Connection::open_with_flags(
        format!("{uri}?immutable=1"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_URI
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening {}: {e}", path.display()))?)
}

/// The content check of a part (`verify --identity`): a SQLite file starts with its header.
///
/// # Errors
/// Another kind of file, a read error.
pub fn check_db(
    r: &mut dyn std::io::Read,
    _facts: &crate::catalog::Facts,
    _tables: &[TableCount],
) -> Result<(), String> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(|e| format!("the part is too short for a SQLite database: {e}"))?;
    if &head != HEADER {
        return Err("the part does not start with the SQLite header".into());
    }
    std::io::copy(r, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_absolute_files_only() {
        assert_eq!(
            path_of_url("sqlite:///var/lib/app/app.db").unwrap(),
            PathBuf::from("/var/lib/app/app.db")
        );
        assert_eq!(
            path_of_url("sqlite:///data/my%20app.db").unwrap(),
            PathBuf::from("/data/my app.db")
        );
        for bad in ["sqlite://host/x.db", "file:///x.db", "sqlite:///", "app.db"] {
            assert!(path_of_url(bad).is_err(), "{bad} accepted");
        }
    }
}
