//! `worker archive postgres`: the WAL archiver, a long-running process (a Deployment of one
//! replica) that keeps the store within `--max-lag` of the server.
//!
//! How: `pg_receivewal` (from the image, the same client version as `pg_dump`) streams WAL
//! over the replication protocol into a small spool directory, and this process stores each
//! finished segment, and every half `--max-lag` the segment being written, through zstd and
//! age with a signed index entry. `pg_receivewal` was chosen over speaking the protocol
//! here: it is PostgreSQL's own client for exactly this, follows timeline switches and
//! writes the history files, and resumes from its own files; tokio-postgres has no
//! replication protocol.
//!
//! The slot (`kube_dr_<target>`) is this process's, not `pg_receivewal`'s: `pg_receivewal`
//! would move it as soon as a segment is on the spool's disk, and a pod that moves to
//! another node loses its spool (an emptyDir). Here the slot moves to a segment's end only
//! once the segment is in the store, so the server keeps every byte not yet stored, and a
//! restart anywhere resumes at the slot's position with no gap (the spool is seeded with
//! the segment the slot points into). Storing a segment again is idempotent: the same bytes
//! are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::records::{self, Scan};
use super::{from_micros, Entry, EntryKind, Lsn, Segment, ENTRY_FORMAT};
use crate::catalog::Trust;
use crate::engine::child;
use crate::engine::postgres::{PgError, PgTarget};
use crate::pipeline::encode::{self, EncodeError, EncodeSettings};
use crate::store::{DeleteStore, StoreError};

/// How long the last uploads may take after SIGTERM (Kubernetes waits 30 s by default).
const FINAL_GRACE: Duration = Duration::from_secs(20);
/// How often the spool is looked at.
const TICK: Duration = Duration::from_millis(500);
/// How often the slot's retained WAL is read.
const SLOT_CHECK: Duration = Duration::from_secs(15);
/// Longest a query about the slot may take: a server that stalls must not freeze a round
/// (the connection is dropped and made again next time).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `worker archive postgres`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "WAL archive")]
pub struct ArchiveArgs {
    /// Name of the PostgreSQL server (the same --target as its base backups).
    #[arg(long, env = "DR_TARGET")]
    pub target: String,

    /// Recovery point objective: a commit is in the store at most this long after it
    /// happened, also on an idle server (the segment being written is stored every half of
    /// it when it changed). No archive_timeout is needed on the server.
    #[arg(
        long,
        env = "DR_WAL_MAX_LAG",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub max_lag: humantime::Duration,

    /// The physical replication slot (created when missing). Default: kube_dr_<target>.
    #[arg(long, env = "DR_WAL_SLOT", value_name = "NAME")]
    pub slot: Option<String>,

    /// Warn (log and kube_dr_wal_slot_retained_bytes above kube_dr_wal_slot_limit_bytes,
    /// alert KubeDrWalSlotRetaining) when the slot holds back more WAL than this on the
    /// server. A slot keeps WAL until it is stored: a stopped archiver fills the database's
    /// disk. Bound it on the server with max_slot_wal_keep_size (e.g. 50GB): past it the
    /// server drops the slot's WAL, the archive gets a gap, and the next base backup starts
    /// a new recoverable window.
    #[arg(long, env = "DR_WAL_MAX_SLOT_WAL_KEEP", default_value = "10GiB", value_name = "SIZE",
          value_parser = crate::store::rate::parse_rate)]
    pub max_slot_wal_keep: u64,

    /// Where pg_receivewal writes (an emptyDir of a few segments is enough; losing it loses
    /// nothing, the slot keeps what is not stored). Default: $TMPDIR/kube-dr-wal-<target>.
    #[arg(long, env = "DR_WAL_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// Directory holding pg_receivewal (default: PATH).
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_PG_BIN_DIR",
        value_name = "DIR"
    )]
    pub pg_bin_dir: Option<PathBuf>,
}

impl ArchiveArgs {
    /// The slot's name.
    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("kube_dr_{}", self.target.replace(['-', '.'], "_")))
    }
}

/// Errors that stop the archiver (anything passing is retried instead).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Connecting or a query failed.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The role cannot stream WAL.
    #[error("role {user} has no REPLICATION attribute: run ALTER ROLE {user} REPLICATION (and allow it in pg_hba.conf for replication connections)")]
    NoReplication {
        /// The role.
        user: String,
    },
    /// The slot lost WAL the archive needs.
    #[error("replication slot {slot} has lost WAL (max_slot_wal_keep_size was exceeded while the archiver was behind): the archive has a gap from {restart}; drop the slot (SELECT pg_drop_replication_slot('{slot}')), restart the archiver and take a base backup (worker backup postgres --physical) to start a new recoverable window")]
    SlotLost {
        /// The slot.
        slot: String,
        /// Where it stood.
        restart: String,
    },
    /// The spool cannot be used.
    #[error("the spool directory {} cannot be used: {cause}", path.display())]
    Spool {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The store failed at the start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] crate::catalog::signature::SignatureError),
}

/// What the archiver reports for metrics and logs.
#[derive(Debug, Clone, Default)]
pub struct ArchiveStatus {
    /// When the store last held everything the archiver had received.
    pub current_at: Option<DateTime<Utc>>,
    /// The newest commit stored.
    pub last_commit: Option<DateTime<Utc>>,
    /// Files stored since the start.
    pub stored_files: u64,
    /// Uploads that failed since the start (each is retried).
    pub failed_uploads: u64,
    /// WAL the slot holds back on the server, when last read.
    pub slot_retained_bytes: Option<u64>,
    /// `--max-slot-wal-keep`.
    pub slot_limit_bytes: u64,
}

/// What the server is.
struct Server {
    segment_bytes: u64,
    system_identifier: String,
    timeline: u32,
}

/// The running archiver.
struct Archiver<'a> {
    store: &'a dyn DeleteStore,
    settings: EncodeSettings,
    target: String,
    slot: String,
    spool: PathBuf,
    pg: PgTarget,
    client: Option<Client>,
    server: Server,
    max_lag: Duration,
    /// Stored whole files (segments, history): their plaintext sha256.
    stored: BTreeMap<String, String>,
    /// Stored partial entries per segment file.
    partials: BTreeMap<String, Vec<Entry>>,
    /// The newest partial stored: its file and valid end.
    partial_stored: Option<(String, u64)>,
    last_partial_look: Option<Instant>,
    slot_restart: Lsn,
    status: ArchiveStatus,
    last_slot_check: Option<Instant>,
}

/// Runs the archiver until `cancel` fires (SIGTERM); then stores what was received and
/// returns. `report` hears the status after every round.
///
/// # Errors
/// What cannot get better by waiting: no connection at the start, a role without
/// REPLICATION, a slot that lost WAL, an unusable spool, a store that fails at the start.
pub async fn run(
    args: &ArchiveArgs,
    store: &dyn DeleteStore,
    settings: EncodeSettings,
    cancel: CancellationToken,
    report: &(dyn Fn(&ArchiveStatus) + Sync),
) -> Result<(), ArchiveError> {
    crate::catalog::validate_name("target", &args.target).map_err(|e| PgError::Query {
        what: "checking --target",
        target: args.target.clone(),
        detail: e.to_string(),
    })?;
    // A server or store that stalls at the start must not hold SIGTERM up.
    let mut archiver = tokio::select! {
        started = start(args, store, settings) => started?,
        () = cancel.cancelled() => {
            tracing::info!("stopped while starting: nothing was received yet");
            return Ok(());
        }
    };
    let (pg, spool) = (archiver.pg.clone(), archiver.spool.clone());
    let mut receiver: Option<tokio::process::Child> = None;
    let mut backoff = Duration::from_secs(1);
    let mut restart_at = Instant::now();
    loop {
        if receiver.is_none() && Instant::now() >= restart_at {
            // After a restart of pg_receivewal, the spool may hold no file of the current
            // segment (a finished one was stored and removed): seed again from the slot.
            if let Err(e) = archiver.seed_spool() {
                tracing::warn!(error = %e, "cannot seed the spool");
            }
            match spawn_receiver(args, &pg, &spool) {
                Ok(c) => receiver = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start pg_receivewal");
                    restart_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let exited = async {
            match receiver.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            status = exited => {
                tracing::warn!(status = ?status, retry_in = ?backoff, "pg_receivewal stopped (server restart or connection lost); starting it again");
                receiver = None;
                restart_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            () = tokio::time::sleep(TICK) => {}
        }
        // SIGTERM aborts a round's uploads (a stalled store must not hold it up); the last
        // round below gets its own grace.
        let round = cancel.child_token();
        if archiver.round(false, &round).await && receiver.is_some() {
            backoff = Duration::from_secs(1);
        }
        report(&archiver.status);
    }
    // SIGTERM: stop receiving, store what was received, within the pod's grace period.
    if let Some(mut c) = receiver.take() {
        let _ = c.kill().await;
    }
    // The uploads are cancelled past the grace (and abort themselves), never dropped
    // half-way: an upload cut off by a drop would leave its multipart upload behind.
    let last = CancellationToken::new();
    let timer = {
        let last = last.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FINAL_GRACE).await;
            last.cancel();
        })
    };
    let stored = archiver.round(true, &last).await;
    timer.abort();
    if !stored {
        tracing::warn!("the last uploads failed or did not finish within the grace period; the slot keeps that WAL on the server for the next start");
    }
    report(&archiver.status);
    tracing::info!(
        stored_files = archiver.status.stored_files,
        "WAL archiver stopped"
    );
    Ok(())
}

/// Connects, reads the server, makes sure of the slot and the spool, and reads what the
/// store holds already.
async fn start<'a>(
    args: &ArchiveArgs,
    store: &'a dyn DeleteStore,
    settings: EncodeSettings,
) -> Result<Archiver<'a>, ArchiveError> {
    let pg = PgTarget::from_env()?;
    let db = pg.dbname.clone().unwrap_or_else(|| "postgres".into());
    let client = pg.connect(&db).await?;
    let server = server_facts(&client, &pg).await?;
    let slot = args.slot_name();
    let restart = ensure_slot(&client, &pg, &slot).await?;
    let spool = args
        .spool
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kube-dr-wal-{}", args.target)));
    let spool_err = |cause| ArchiveError::Spool {
        path: spool.clone(),
        cause,
    };
    std::fs::create_dir_all(&spool).map_err(spool_err)?;
    let mut archiver = Archiver {
        store,
        settings,
        target: args.target.clone(),
        slot: slot.clone(),
        spool: spool.clone(),
        pg: pg.clone(),
        client: Some(client),
        max_lag: *args.max_lag,
        stored: BTreeMap::new(),
        partials: BTreeMap::new(),
        partial_stored: None,
        last_partial_look: None,
        slot_restart: restart,
        status: ArchiveStatus {
            slot_limit_bytes: args.max_slot_wal_keep,
            ..ArchiveStatus::default()
        },
        last_slot_check: None,
        server,
    };
    archiver.load_stored().await?;
    let seeded = archiver.seed_spool().map_err(spool_err)?;
    tracing::info!(
        target = %args.target,
        slot = %slot,
        slot_restart_lsn = %restart,
        timeline = archiver.server.timeline,
        segment_bytes = archiver.server.segment_bytes,
        spool = %spool.display(),
        resumes_at = seeded.as_deref().unwrap_or("the spool's own files"),
        max_lag = %args.max_lag,
        "WAL archiver started"
    );
    Ok(archiver)
}

fn spawn_receiver(
    args: &ArchiveArgs,
    pg: &PgTarget,
    spool: &Path,
) -> Result<tokio::process::Child, std::io::Error> {
    let mut cmd = child::tool(args.pg_bin_dir.as_deref(), "pg_receivewal");
    cmd.arg("-D")
        .arg(spool)
        // We supervise it (with a backoff) and it must not move a slot: see the module doc.
        .args([
            "--no-loop",
            "--no-sync",
            "--status-interval=10",
            "--verbose",
        ])
        .envs(pg.child_env("postgres"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("error") || line.contains("FATAL") {
                    tracing::warn!(pg_receivewal = %line);
                } else {
                    tracing::debug!(pg_receivewal = %line);
                }
            }
        });
    }
    Ok(child)
}

async fn server_facts(client: &Client, pg: &PgTarget) -> Result<Server, ArchiveError> {
    let row = client
        .query_one(
            "SELECT (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    (SELECT timeline_id FROM pg_control_checkpoint()),
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(|e| pg.query_error("reading the server's WAL settings", &e))?;
    let size: String = row.get(0);
    if !row.get::<_, Option<bool>>(3).unwrap_or(false) {
        return Err(ArchiveError::NoReplication {
            user: pg.user.clone(),
        });
    }
    Ok(Server {
        segment_bytes: size.parse().unwrap_or(16 << 20),
        system_identifier: row.get(1),
        timeline: u32::try_from(row.get::<_, i32>(2)).unwrap_or(1),
    })
}

async fn ensure_slot(client: &Client, pg: &PgTarget, slot: &str) -> Result<Lsn, ArchiveError> {
    let row = client
        .query_opt(
            "SELECT restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
            &[&slot],
        )
        .await
        .map_err(|e| pg.query_error("reading the replication slot", &e))?;
    let (restart, status): (Option<String>, Option<String>) = match row {
        Some(r) => (r.get(0), r.get(1)),
        None => {
            let r = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_physical_replication_slot($1, true)",
                    &[&slot],
                )
                .await
                .map_err(|e| pg.query_error("creating the replication slot", &e))?;
            tracing::info!(slot = %slot, "created the physical replication slot");
            (r.get(0), None)
        }
    };
    let restart = restart.unwrap_or_default();
    if status.as_deref() == Some("lost") {
        return Err(ArchiveError::SlotLost {
            slot: slot.to_string(),
            restart,
        });
    }
    restart.parse().map_err(|_| {
        ArchiveError::Pg(PgError::Query {
            what: "reading the replication slot",
            target: pg.to_string(),
            detail: format!("slot {slot} reserves no WAL; drop it (SELECT pg_drop_replication_slot('{slot}')) and restart the archiver"),
        })
    })
}

/// A time for the log: RFC 3339 with microseconds (what the benchmark's RPO reads), or "-".
fn shown(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    })
}

/// Parses a timeline history file's lines (`1\t0/3000158\tno recovery target specified`).
pub fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = f.next()?.parse().ok()?;
            Some((tli, lsn))
        })
        .collect()
}

impl Archiver<'_> {
    async fn load_stored(&mut self) -> Result<(), ArchiveError> {
        let archive = match super::load(self.store, &self.target, &Trust::default()).await {
            Ok(a) => a,
            Err(super::WalError::Empty { .. }) => return Ok(()),
            Err(super::WalError::Store(e)) => return Err(e.into()),
        };
        for l in archive.entries.into_values() {
            match l.entry.kind {
                EntryKind::Partial => self
                    .partials
                    .entry(l.entry.file.clone())
                    .or_default()
                    .push(l.entry),
                _ => {
                    self.stored.insert(l.entry.file, l.entry.plaintext_sha256);
                }
            }
        }
        for e in archive.superseded {
            self.partials.entry(e.file.clone()).or_default().push(e);
        }
        Ok(())
    }

    /// Puts a zero-filled `<segment>.partial` for the segment the slot points into when the
    /// spool holds nothing of it, so `pg_receivewal` starts there (it starts at the newest
    /// file it finds, or at the server's current position when it finds none). Returns the
    /// segment seeded.
    fn seed_spool(&self) -> std::io::Result<Option<String>> {
        let size = self.server.segment_bytes;
        let from = Segment::of(self.slot_restart, self.server.timeline, size);
        let has_later = std::fs::read_dir(&self.spool)?.flatten().any(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            let seg = name.trim_end_matches(".partial");
            Segment::parse(seg, size).is_some_and(|s| s.number >= from.number)
        });
        if has_later {
            return Ok(None);
        }
        let name = from.name(size);
        let file = std::fs::File::create(self.spool.join(format!("{name}.partial")))?;
        file.set_len(size)?;
        Ok(Some(name))
    }

    /// One round: store finished files in order, then the partial segment when due. False
    /// when an upload failed (it is retried next round).
    async fn round(&mut self, last: bool, cancel: &CancellationToken) -> bool {
        let mut names: Vec<String> = match std::fs::read_dir(&self.spool) {
            Ok(d) => d
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the spool");
                return false;
            }
        };
        names.sort();
        let size = self.server.segment_bytes;
        let mut ok = true;
        // History files first: a restore needs them to follow a timeline.
        for name in names.iter().filter(|n| super::is_history_name(n)) {
            if let Err(e) = self.store_whole(name, EntryKind::History, cancel).await {
                self.failed(name, &e);
                ok = false;
            }
        }
        let mut newest_stored: Option<Segment> = None;
        for name in names.iter().filter(|n| Segment::parse(n, size).is_some()) {
            if !ok {
                break;
            }
            match self.store_whole(name, EntryKind::Segment, cancel).await {
                Ok(()) => newest_stored = Segment::parse(name, size),
                Err(e) => {
                    self.failed(name, &e);
                    ok = false;
                }
            }
        }
        if let Some(seg) = newest_stored {
            self.advance_slot(Lsn(seg.start(size).0 + size)).await;
        }
        let due = last
            || self
                .last_partial_look
                .is_none_or(|t| t.elapsed() >= self.max_lag / 2);
        // With a whole segment still missing, a later partial would only hide the gap: the
        // store is current again once the segment is in.
        if due && ok {
            let partial = names.iter().filter(|n| n.ends_with(".partial")).max();
            let looked = Utc::now();
            let stored = match partial {
                Some(name) => match self.store_partial(name, cancel).await {
                    Ok(()) => true,
                    Err(e) => {
                        self.failed(name, &e);
                        false
                    }
                },
                None => true,
            };
            if stored {
                self.last_partial_look = Some(Instant::now());
                self.status.current_at = Some(looked);
            }
            ok = stored;
        }
        if self
            .last_slot_check
            .is_none_or(|t| t.elapsed() >= SLOT_CHECK)
        {
            self.last_slot_check = Some(Instant::now());
            self.check_slot().await;
        }
        ok
    }

    fn failed(&mut self, name: &str, e: &EncodeError) {
        self.status.failed_uploads += 1;
        tracing::warn!(file = %name, error = %crate::store::error_chain(e), "storing WAL failed; retrying (the slot keeps it on the server)");
    }

    /// Stores a finished segment or a history file, then removes it from the spool.
    async fn store_whole(
        &mut self,
        name: &str,
        kind: EntryKind,
        cancel: &CancellationToken,
    ) -> Result<(), EncodeError> {
        let path = self.spool.join(name);
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| EncodeError::Source(Box::new(e)))?;
        let sha = hex::encode(Sha256::digest(&data));
        if self.stored.get(name) == Some(&sha) {
            tracing::debug!(file = %name, "already stored");
        } else {
            let entry = self
                .store_file(name, kind, data, sha.clone(), cancel)
                .await?;
            if let Some(c) = entry.last_commit {
                self.status.last_commit = self.status.last_commit.max(Some(c));
            }
            tracing::info!(file = %name, stored_bytes = entry.ciphertext_bytes, last_commit = %shown(entry.last_commit), "WAL stored");
            self.stored.insert(name.to_string(), sha);
        }
        // The whole segment replaces its partial uploads.
        for old in self.partials.remove(name).unwrap_or_default() {
            self.delete_entry(&old).await;
        }
        if self.partial_stored.as_ref().is_some_and(|(f, _)| f == name) {
            self.partial_stored = None;
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(file = %name, error = %e, "cannot remove a stored file from the spool");
        }
        Ok(())
    }

    /// Stores the segment being written when it grew since the last upload.
    async fn store_partial(
        &mut self,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<(), EncodeError> {
        let file = name.trim_end_matches(".partial");
        let data = match tokio::fs::read(self.spool.join(name)).await {
            Ok(d) => d,
            // Finished and renamed in the meantime: the next round stores it whole.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(EncodeError::Source(Box::new(e))),
        };
        let Some(seg) = Segment::parse(file, self.server.segment_bytes) else {
            return Ok(());
        };
        let scan = records::scan(&data, seg.start(self.server.segment_bytes).0);
        let stored_end = match &self.partial_stored {
            Some((f, end)) if f == file => *end,
            _ => self
                .partials
                .get(file)
                .and_then(|v| v.iter().map(|e| e.end_lsn.0 - e.start_lsn.0).max())
                .unwrap_or(0),
        };
        if scan.valid_bytes <= stored_end || scan.records == 0 {
            return Ok(());
        }
        let sha = hex::encode(Sha256::digest(&data));
        let entry = self
            .store_file_scanned(file, EntryKind::Partial, data, sha, scan, cancel)
            .await?;
        if let Some(c) = entry.last_commit {
            self.status.last_commit = self.status.last_commit.max(Some(c));
        }
        tracing::info!(file = %file, valid_bytes = entry.end_lsn.0 - entry.start_lsn.0, last_commit = %shown(entry.last_commit), "WAL stored (the segment being written)");
        let end = entry.end_lsn.0 - entry.start_lsn.0;
        let previous = std::mem::replace(
            self.partials.entry(file.to_string()).or_default(),
            vec![entry],
        );
        for old in previous {
            if old.name() != self.partials[file][0].name() {
                self.delete_entry(&old).await;
            }
        }
        self.partial_stored = Some((file.to_string(), end));
        Ok(())
    }

    async fn store_file(
        &mut self,
        name: &str,
        kind: EntryKind,
        data: Vec<u8>,
        sha: String,
        cancel: &CancellationToken,
    ) -> Result<Entry, EncodeError> {
        let scan = match kind {
            EntryKind::History => Scan::default(),
            _ => {
                let start = Segment::parse(name, self.server.segment_bytes)
                    .map_or(0, |s| s.start(self.server.segment_bytes).0);
                records::scan(&data, start)
            }
        };
        self.store_file_scanned(name, kind, data, sha, scan, cancel)
            .await
    }

    async fn store_file_scanned(
        &mut self,
        file: &str,
        kind: EntryKind,
        data: Vec<u8>,
        sha: String,
        scan: Scan,
        cancel: &CancellationToken,
    ) -> Result<Entry, EncodeError> {
        let size = self.server.segment_bytes;
        let (timeline, start, end, history) = match kind {
            EntryKind::History => {
                let tli = u32::from_str_radix(&file[..8], 16).unwrap_or(0);
                let history = parse_history(&String::from_utf8_lossy(&data));
                (tli, Lsn(0), Lsn(0), history)
            }
            _ => {
                let seg = Segment::parse(file, size).unwrap_or(Segment {
                    timeline: 0,
                    number: 0,
                });
                let start = seg.start(size);
                let end = match kind {
                    EntryKind::Partial => Lsn(start.0 + scan.valid_bytes.min(size)),
                    _ => Lsn(start.0 + size),
                };
                (seg.timeline, start, end, Vec::new())
            }
        };
        let object = match kind {
            EntryKind::Partial => format!("{file}.current-{}.age", &sha[..12]),
            _ => format!("{file}.age"),
        };
        let mut entry = Entry {
            format: ENTRY_FORMAT,
            target: self.target.clone(),
            file: file.to_string(),
            kind,
            object,
            timeline,
            segment_bytes: size,
            start_lsn: start,
            end_lsn: end,
            compression: self.settings.compression,
            ciphertext_bytes: 0,
            ciphertext_sha256: String::new(),
            plaintext_bytes: data.len() as u64,
            plaintext_sha256: sha,
            first_xact_end: scan.first_xact_end.and_then(from_micros),
            last_xact_end: scan.last_xact_end.and_then(from_micros),
            last_commit: scan.last_commit.and_then(from_micros),
            history,
            archived_at: Utc::now(),
            system_identifier: self.server.system_identifier.clone(),
        };
        let data = Arc::new(data);
        let (stats, ()) = encode::store_part(
            self.store,
            &entry.object_key(),
            &self.settings,
            cancel,
            move |out| {
                out.write_all(&data)?;
                Ok(())
            },
        )
        .await?;
        entry.ciphertext_bytes = stats.ciphertext_bytes;
        entry.ciphertext_sha256 = stats.ciphertext_sha256;
        entry.archived_at = Utc::now();
        let json =
            serde_json::to_vec_pretty(&entry).map_err(|e| EncodeError::Source(Box::new(e)))?;
        if let Some(key) = &self.settings.signing {
            let sig = key
                .sign_file(
                    &json,
                    &entry.name(),
                    &format!("wal:postgres/{}", self.target),
                )
                .map_err(|e| EncodeError::Source(Box::new(e)))?;
            self.store
                .put_bytes(&format!("{}.minisig", entry.key()), sig.into_bytes().into())
                .await?;
        }
        self.store.put_bytes(&entry.key(), json.into()).await?;
        self.status.stored_files += 1;
        Ok(entry)
    }

    async fn delete_entry(&self, e: &Entry) {
        for key in [e.key(), format!("{}.minisig", e.key()), e.object_key()] {
            if let Err(err) = self.store.delete(&key).await {
                tracing::warn!(key = %key, error = %err, "cannot delete a superseded partial segment; prune removes it later");
            }
        }
    }

    async fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let db = self.pg.dbname.clone().unwrap_or_else(|| "postgres".into());
            match self.pg.connect(&db).await {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the server to move the slot");
                    return None;
                }
            }
        }
        self.client.as_ref()
    }

    /// Moves the slot to `to` (a stored segment's end): the server may now recycle it.
    async fn advance_slot(&mut self, to: Lsn) {
        if to <= self.slot_restart {
            return;
        }
        let slot = self.slot.clone();
        let Some(client) = self.client().await else {
            return;
        };
        // The position is ours (hex digits and a slash), never user text.
        let sql = format!("SELECT pg_replication_slot_advance($1, '{to}'::pg_lsn)");
        match tokio::time::timeout(QUERY_TIMEOUT, client.query_one(&sql, &[&slot])).await {
            Ok(Ok(_)) => self.slot_restart = to,
            Ok(Err(e)) => {
                tracing::warn!(slot = %slot, error = %e, "cannot move the replication slot; retrying")
            }
            Err(_) => {
                tracing::warn!(slot = %slot, "the server did not answer within 10 s while the slot was moved; retrying");
                self.client = None;
            }
        }
    }

    async fn check_slot(&mut self) {
        let slot = self.slot.clone();
        let limit = self.status.slot_limit_bytes;
        let Some(client) = self.client().await else {
            return;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
        let query = client.query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &params,
        );
        let Ok(row) = tokio::time::timeout(QUERY_TIMEOUT, query).await else {
            tracing::warn!(slot = %slot, "the server did not answer within 10 s while the slot was read");
            self.client = None;
            return;
        };
        match row {
            Ok(Some(r)) => {
                let retained = r.get::<_, Option<i64>>(0).map(|b| b.max(0) as u64);
                self.status.slot_retained_bytes = retained;
                if r.get::<_, Option<String>>(1).as_deref() == Some("lost") {
                    tracing::error!(slot = %slot, "the replication slot lost WAL (max_slot_wal_keep_size): the archive has a gap; take a base backup");
                } else if retained.is_some_and(|b| b > limit) {
                    tracing::warn!(slot = %slot, retained_bytes = retained, limit_bytes = limit, "the slot holds back more WAL on the server than --max-slot-wal-keep: the archive is not keeping up (store down?) and the database's disk fills");
                }
            }
            Ok(None) => {
                tracing::error!(slot = %slot, "the replication slot is gone (dropped by hand?): WAL after the stored segments may be lost; restart the archiver and take a base backup")
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the slot"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_parse_as_postgresql_writes_them() {
        let text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-12-02 14:03:00+00\n";
        assert_eq!(
            parse_history(text),
            vec![
                (1, "0/3000158".parse().unwrap()),
                (2, "0/5000000".parse().unwrap())
            ]
        );
    }

    #[test]
    fn the_slot_is_named_after_the_target() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: ArchiveArgs,
        }
        let t = T::parse_from(["x", "--target", "shop-db.eu"]);
        assert_eq!(t.a.slot_name(), "kube_dr_shop_db_eu");
        assert_eq!(*t.a.max_lag, Duration::from_secs(60));
    }
}
