//! `worker backup redis`: its flags and the [`Source`] they build. The snapshot is taken the
//! way a replica takes it: `REPLCONF rdb-only 1` (the server then sends the RDB and no
//! replication stream), `REPLCONF capa eof` (diskless transfer allowed), `SYNC`. The payload
//! is either `$<len>` bytes or, diskless, `$EOF:<40-byte mark>` … mark; the walker stops at
//! the RDB's checksum, so the mark is read after it and compared, never stored.

use std::io::{Read, Write};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::rdb::{self, RdbSummary};
use super::{Conn, RedisError, RedisTarget};
use crate::catalog::facts::text;
use crate::catalog::PartFormat;
use crate::engine::{BackupRun, DumpOutcome, PartSpec, Source, SourceFailure};

/// What a Redis backup records in the manifest's `facts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// `Redis` or `Valkey`.
    #[serde(default)]
    pub product: String,
    /// The RDB version of the snapshot (decimal text): a restore refuses servers that
    /// cannot load it.
    #[serde(with = "text")]
    pub rdb_version: u32,
}

/// Flags of `worker backup redis` (the server comes from `REDIS_URL`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Redis")]
pub struct BackupArgs {}

impl BackupArgs {
    /// # Errors
    /// No `REDIS_URL`, a malformed one, an unreadable password file.
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(RedisSource {
            target: RedisTarget::from_env()?,
        }))
    }
}

/// A Redis or Valkey server to snapshot.
pub struct RedisSource {
    target: RedisTarget,
}

/// Reads the replication payload's framing and walks the RDB through `out`.
///
/// # Errors
/// A refused sync, a cut or damaged payload, a wrong end mark.
pub fn sync_into(conn: &mut Conn, out: &mut dyn Write) -> Result<RdbSummary, SourceFailure> {
    // rdb-only needs Redis 7.0; older servers refuse it and then stream commands after the
    // RDB, which this reader never gets to.
    let _ = conn.call(&[b"REPLCONF", b"rdb-only", b"1"]);
    conn.call(&[b"REPLCONF", b"capa", b"eof"])?;
    let idle = crate::engine::stall_timeout();
    conn.socket()
        .set_read_timeout(Some(idle))
        .map_err(|e| Box::new(e) as SourceFailure)?;
    conn.send(&[b"SYNC"])?;
    let addr = conn.addr().to_string();
    let protocol = |reason: String| RedisError::Protocol {
        addr: addr.clone(),
        reason,
    };
    // Newlines keep the link alive while the server forks and writes, but they are not
    // progress: a primary that only ever sends them (a stuck save) fails the backup after
    // the stall timeout like one that sends nothing.
    let asked = std::time::Instant::now();
    let header = loop {
        let line = conn.read_line()?;
        if !line.is_empty() {
            break line;
        }
        if asked.elapsed() > idle {
            return Err(Box::new(protocol(format!(
                "{} (it sent only keep-alive newlines after SYNC: its snapshot never started; with disk-based replication of a large dataset, raise DR_STALL_TIMEOUT)",
                crate::engine::stalled_source("Redis")
            ))));
        }
    };
    if let Some(message) = header.strip_prefix('-') {
        return Err(Box::new(RedisError::Command {
            addr,
            command: "SYNC".into(),
            message: message.to_string(),
        }));
    }
    let header = header.strip_prefix('$').ok_or_else(|| {
        protocol(format!(
            "expected an RDB payload after SYNC, got {:?}",
            crate::catalog::printable(&header)
        ))
    })?;
    if let Some(mark) = header.strip_prefix("EOF:") {
        let mark = mark.as_bytes().to_vec();
        if mark.len() != 40 {
            return Err(Box::new(protocol(
                "a diskless payload without a 40-byte end mark".into(),
            )));
        }
        let summary = rdb::walk(&mut conn.reader, Some(out))?;
        let mut end = [0u8; 40];
        conn.reader
            .read_exact(&mut end)
            .map_err(|e| protocol(format!("the payload ended without its end mark: {e}")))?;
        if end.as_slice() != mark.as_slice() {
            return Err(Box::new(protocol(
                "the payload's end mark does not match its start: the transfer was corrupted"
                    .into(),
            )));
        }
        Ok(summary)
    } else {
        let len: u64 = header
            .parse()
            .map_err(|_| protocol(format!("bad payload length {header:?}")))?;
        let mut payload = (&mut conn.reader).take(len);
        let summary = rdb::walk(&mut payload, Some(out))?;
        if summary.bytes != len {
            return Err(Box::new(protocol(format!(
                "the payload is {len} bytes but its RDB ends after {}",
                summary.bytes
            ))));
        }
        Ok(summary)
    }
}

#[async_trait]
impl Source for RedisSource {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let target = self.target.clone();
        let server = tokio::task::spawn_blocking(move || target.connect()?.server())
            .await
            .expect("redis thread panicked")?;
        tracing::info!(server = %server, addr = %self.target.addr(), "taking an RDB snapshot as a replica would");
        let spec = PartSpec {
            name: "rdb".into(),
            format: PartFormat::RedisRdb,
            extension: "rdb",
            database: None,
            section: None,
        };
        let target = self.target.clone();
        let summary = run
            .store_part(spec, move |out: &mut dyn Write| {
                let mut conn = target.connect()?;
                sync_into(&mut conn, out)
            })
            .await?;
        let rows = summary.rows();
        tracing::info!(
            rdb_version = summary.version,
            bytes = summary.bytes,
            checksum = summary.checksum_checked,
            counts = ?rows.iter().map(|t| format!("{}={}", t.qualified(), t.rows)).collect::<Vec<_>>(),
            "snapshot checked"
        );
        run.record_tables("rdb", rows);
        Ok(DumpOutcome {
            server_version: server.to_string(),
            facts: crate::catalog::Facts::of(&Facts {
                product: server.product,
                rdb_version: summary.version,
            }),
        })
    }
}
