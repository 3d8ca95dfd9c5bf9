//! `worker backup postgres --physical`: a base backup for point-in-time recovery.
//! `pg_basebackup -Ft -D - -X none` (one tar of the data directory, without WAL: the
//! archive has it) streams through the same pipeline as every part. The manifest's facts
//! record where the backup starts and stops in the WAL, on which timeline, of which
//! cluster (system identifier), so a restore picks the base for a time and proves the WAL
//! after it is there.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Lsn;
use crate::catalog::facts::text;
use crate::catalog::{Facts, PartFormat};
use crate::engine::postgres::{PgError, PgTarget};
use crate::engine::{child, BackupRun, DumpOutcome, PartSpec, SourceFailure};

/// What a physical backup's manifest records (docs/FORMAT.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFacts {
    /// Always "true": the backup is a data directory, not a dump.
    #[serde(with = "text")]
    pub physical: bool,
    /// Where the backup's WAL starts (the checkpoint's redo position).
    #[serde(with = "text")]
    pub start_lsn: Lsn,
    /// Where the data directory is consistent: a recovery must replay at least this far.
    #[serde(with = "text")]
    pub stop_lsn: Lsn,
    /// The timeline the backup was taken on.
    #[serde(with = "text")]
    pub timeline: u32,
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// `wal_segment_size`.
    #[serde(with = "text")]
    pub segment_bytes: u64,
    /// When pg_basebackup finished (a restore to a time picks the newest base stopped
    /// before it).
    pub stopped_at: DateTime<Utc>,
}

impl BaseFacts {
    /// The facts of a physical backup, `None` for a logical one.
    pub fn of(facts: &Facts) -> Option<Self> {
        if facts.get("physical") != Some("true") {
            return None;
        }
        facts.read().ok()
    }
}

/// `pg_basebackup` failed or said something this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// Connecting or a query failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The part failed.
    #[error("storing the base backup failed")]
    Part(#[source] crate::pipeline::encode::EncodeError),
    /// The tar lacks the WAL positions.
    #[error("the base backup's tar lacks its WAL positions ({0}); PostgreSQL 13 or newer writes them into backup_label and backup_manifest")]
    NoPositions(String),
}

/// Takes the base backup into `run`.
///
/// # Errors
/// [`BaseError`]; nothing may be committed then.
pub async fn dump(
    run: &BackupRun<'_>,
    pg: &PgTarget,
    bin_dir: Option<&std::path::Path>,
) -> Result<DumpOutcome, SourceFailure> {
    Ok(take(run, pg, bin_dir).await?)
}

async fn take(
    run: &BackupRun<'_>,
    pg: &PgTarget,
    bin_dir: Option<&std::path::Path>,
) -> Result<DumpOutcome, BaseError> {
    let db = pg.dbname.clone().unwrap_or_else(|| "postgres".into());
    let client = pg.connect(&db).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')",
            &[],
        )
        .await
        .map_err(|e| pg.query_error("reading the server's identity", &e))?;
    let (version, system_identifier, size): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let mut cmd = child::tool(bin_dir, "pg_basebackup");
    // -c fast: a spread checkpoint would hold the backup for up to checkpoint_timeout.
    cmd.args(["-D", "-", "-Ft", "-X", "none", "-c", "fast", "--verbose"])
        .envs(pg.child_env(&db));
    let spec = PartSpec {
        name: "base".into(),
        format: PartFormat::PgBaseTar,
        extension: "tar",
        database: None,
        section: None,
    };
    let cancel = run.cancel_token().clone();
    let seen = run
        .store_part(spec, move |out| {
            let mut watch = TarWatch::new(out);
            child::stream_stdout(cmd, &mut watch, &cancel)?;
            Ok(watch.seen)
        })
        .await
        .map_err(BaseError::Part)?;
    let (start_lsn, timeline, stop_lsn) = seen
        .positions()
        .ok_or_else(|| BaseError::NoPositions(seen.describe()))?;
    let facts = BaseFacts {
        physical: true,
        start_lsn,
        stop_lsn,
        timeline,
        system_identifier,
        segment_bytes: size.parse().unwrap_or(16 << 20),
        stopped_at: Utc::now(),
    };
    tracing::info!(start_lsn = %start_lsn, stop_lsn = %stop_lsn, timeline, "base backup taken");
    Ok(DumpOutcome {
        server_version: version,
        facts: Facts::of(&facts),
    })
}

/// `verify --identity`'s content check: the tar reads to its end and holds what a data
/// directory restored from it needs (`PG_VERSION`, `global/pg_control`, `backup_label`).
///
/// # Errors
/// A tar that does not read, or lacks one of them.
pub fn check_tar(
    r: &mut dyn std::io::Read,
    _facts: &Facts,
    _counts: &[crate::catalog::TableCount],
) -> Result<(), String> {
    let mut needed = vec!["PG_VERSION", "global/pg_control", "backup_label"];
    let mut archive = tar::Archive::new(r);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("the tar does not read: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./").to_string();
        needed.retain(|n| *n != path);
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| format!("the tar does not read: {e}"))?;
    }
    if needed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the base backup lacks {}: it is not a PostgreSQL data directory",
            needed.join(", ")
        ))
    }
}

/// What the tar stream says about the backup's WAL: `backup_label` (start position and
/// timeline) and the end of `backup_manifest` (its `WAL-Ranges`, with the end position).
/// `pg_basebackup --verbose` reports neither with `-X none`.
#[derive(Debug, Default)]
pub struct Seen {
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
}

/// Bytes of `backup_manifest` kept: its `WAL-Ranges` come last.
const MANIFEST_TAIL: usize = 64 * 1024;

impl Seen {
    /// Start position, timeline, end position.
    fn positions(&self) -> Option<(Lsn, u32, Lsn)> {
        let label = String::from_utf8_lossy(&self.label);
        let field = |name: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        };
        let start: Lsn = field("START WAL LOCATION: ")?.parse().ok()?;
        let timeline: u32 = field("START TIMELINE: ")?.parse().ok()?;
        let tail = String::from_utf8_lossy(&self.manifest_tail);
        let end = tail
            .rsplit("\"End-LSN\"")
            .next()
            .filter(|_| tail.contains("\"End-LSN\""))?;
        let end: Lsn = end.split('"').nth(1)?.parse().ok()?;
        Some((start, timeline, end))
    }

    fn describe(&self) -> String {
        format!(
            "backup_label: {} bytes, backup_manifest tail: {} bytes",
            self.label.len(),
            self.manifest_tail.len()
        )
    }
}

/// Passes a tar stream through and keeps the two files [`Seen`] needs. Reads only the
/// 512-byte headers and those two files' data; everything else streams by.
struct TarWatch<'a> {
    out: &'a mut dyn std::io::Write,
    seen: Seen,
    header: Vec<u8>,
    /// Data bytes of the current member still to come, and its padding.
    data_left: u64,
    pad_left: u64,
    keep: Keep,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    Label,
    Manifest,
}

impl<'a> TarWatch<'a> {
    fn new(out: &'a mut dyn std::io::Write) -> Self {
        TarWatch {
            out,
            seen: Seen::default(),
            header: Vec::with_capacity(512),
            data_left: 0,
            pad_left: 0,
            keep: Keep::Nothing,
        }
    }

    fn watch(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.data_left > 0 {
                let n = (self.data_left as usize).min(buf.len());
                match self.keep {
                    Keep::Label if self.seen.label.len() < 64 * 1024 => {
                        self.seen.label.extend_from_slice(&buf[..n]);
                    }
                    Keep::Manifest => {
                        let tail = &mut self.seen.manifest_tail;
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > 2 * MANIFEST_TAIL {
                            tail.drain(..tail.len() - MANIFEST_TAIL);
                        }
                    }
                    _ => {}
                }
                self.data_left -= n as u64;
                buf = &buf[n..];
                continue;
            }
            if self.pad_left > 0 {
                let n = (self.pad_left as usize).min(buf.len());
                self.pad_left -= n as u64;
                buf = &buf[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(buf.len());
            self.header.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.header.len() == 512 {
                let h = std::mem::take(&mut self.header);
                let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
                let name = String::from_utf8_lossy(&h[..name_end])
                    .trim_start_matches("./")
                    .to_string();
                let size_text = String::from_utf8_lossy(&h[124..136]);
                let size =
                    u64::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                        .unwrap_or(0);
                self.keep = match name.as_str() {
                    "backup_label" => Keep::Label,
                    "backup_manifest" => Keep::Manifest,
                    _ => Keep::Nothing,
                };
                self.data_left = size;
                self.pad_left = (512 - size % 512) % 512;
                self.header = Vec::with_capacity(512);
            }
        }
    }
}

impl std::io::Write for TarWatch<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.watch(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_positions_from_the_tar_as_it_streams() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        };
        add("PG_VERSION", b"15\n");
        add("backup_label", b"START WAL LOCATION: 0/6000028 (file 000000020000000000000006)\nCHECKPOINT LOCATION: 0/6000060\nSTART TIMELINE: 2\n");
        add("base/1/1259", &vec![7u8; 70_000]);
        let manifest = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [{}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 2, \"Start-LSN\": \"0/6000028\", \"End-LSN\": \"0/6000100\" }}\n] }}", "{\"Path\": \"x\"},".repeat(5000));
        add("backup_manifest", manifest.as_bytes());
        let bytes = tar.into_inner().unwrap();
        let mut out = Vec::new();
        let mut w = TarWatch::new(&mut out);
        // Odd write sizes: headers and data arrive split.
        for chunk in bytes.chunks(333) {
            std::io::Write::write_all(&mut w, chunk).unwrap();
        }
        let seen = std::mem::take(&mut w.seen);
        assert_eq!(out, bytes, "the stream passes through unchanged");
        assert_eq!(
            seen.positions(),
            Some((
                "0/6000028".parse().unwrap(),
                2,
                "0/6000100".parse().unwrap()
            ))
        );
        assert_eq!(Seen::default().positions(), None);
    }

    #[test]
    fn facts_round_trip_and_tell_physical_from_logical() {
        let f = BaseFacts {
            physical: true,
            start_lsn: Lsn(0x600_0028),
            stop_lsn: Lsn(0x600_0100),
            timeline: 1,
            system_identifier: "7441234567890123456".into(),
            segment_bytes: 16 << 20,
            stopped_at: Utc::now(),
        };
        let facts = Facts::of(&f);
        assert_eq!(facts.get("start_lsn"), Some("0/6000028"));
        assert_eq!(BaseFacts::of(&facts), Some(f));
        assert_eq!(BaseFacts::of(&Facts::default()), None);
    }
}
