//! Point-in-time recovery: which base backup and which WAL a time needs (the plan, made
//! before anything is written), the restore into an empty data directory with the
//! recovery settings, starting PostgreSQL on it (`--start`), and the recoverable window
//! `verify --wal` reports.
//!
//! The plan refuses what would fail halfway: a time before the oldest base backup, a gap in
//! the WAL between the base and the time, an entry with a refused signature, WAL of
//! another cluster. It also decides whether PostgreSQL gets a `recovery_target_time` at
//! all: after the archive's last transaction end, PostgreSQL would refuse to finish
//! ("recovery ended before configured recovery target was reached"), so the restore
//! replays the whole archive instead, which is exactly the state at that time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::base::BaseFacts;
use super::{Archive, Chain, EntryKind, Lsn};
use crate::catalog::{self, Filter, Manifest, Trust};
use crate::store::ReadStore;

/// How far to recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything the archive holds.
    Latest,
    /// The last transaction that ended at or before this time.
    Time(DateTime<Utc>),
    /// This WAL position.
    Lsn(Lsn),
}

impl std::fmt::Display for Until {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Until::Latest => f.write_str("the end of the archive"),
            Until::Time(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Until::Lsn(l) => write!(f, "WAL position {l}"),
        }
    }
}

/// Parses `--time`: `latest` or an RFC 3339 time (`2026-12-02T14:03:00Z`).
///
/// # Errors
/// Anything else.
pub fn parse_time(text: &str) -> Result<Until, String> {
    if text == "latest" {
        return Ok(Until::Latest);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| Until::Time(t.with_timezone(&Utc)))
        .map_err(|e| {
            format!("{text:?}: {e}; expected latest or a time such as 2026-12-02T14:03:00Z")
        })
}

/// Why a point-in-time restore or `verify --wal` stopped.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// The store or the catalog failed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// The WAL archive cannot be read.
    #[error(transparent)]
    Wal(#[from] super::WalError),
    /// No base backup fits.
    #[error("{0}")]
    NoBase(String),
    /// The WAL needed is not all there, or not trusted.
    #[error("{0}")]
    Unrecoverable(String),
    /// The data directory is not empty or cannot be written.
    #[error("{0}")]
    DataDir(String),
    /// The base backup failed its check.
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    /// Recovery did not reach its target.
    #[error("{0}")]
    Recovery(String),
    /// Starting PostgreSQL failed.
    #[error("{0}")]
    Start(String),
}

impl PitrError {
    /// True when the backup or archive is at fault (exit 1).
    pub fn is_check_failure(&self) -> bool {
        match self {
            PitrError::Unrecoverable(_) | PitrError::Recovery(_) => true,
            PitrError::Verify(e) => e.is_check_failure(),
            PitrError::Catalog(e) => e.is_check_failure(),
            _ => false,
        }
    }
}

/// A physical base backup.
#[derive(Debug, Clone)]
pub struct Base {
    /// Its manifest.
    pub manifest: Manifest,
    /// What it records about the WAL.
    pub facts: BaseFacts,
}

/// The target's trusted, complete physical base backups, oldest first, and notes on the
/// ones left out.
///
/// # Errors
/// The store's errors.
pub async fn bases(
    store: &dyn ReadStore,
    target: &str,
    trust: &Trust,
) -> Result<(Vec<Base>, Vec<String>), PitrError> {
    let filter = Filter {
        engine: Some("postgres".into()),
        target: Some(target.to_string()),
    };
    let scanned = catalog::scan(store, &filter).await?;
    let inspected = catalog::inspect_all(
        store,
        scanned,
        Utc::now(),
        catalog::DEFAULT_MAX_CLOCK_SKEW,
        trust,
    )
    .await?;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for i in inspected {
        match (i.status, i.manifest) {
            (catalog::Status::Complete, Some(m)) => {
                if let Some(facts) = BaseFacts::of(&m.facts) {
                    out.push(Base { manifest: m, facts });
                }
            }
            (catalog::Status::Damaged, _) => notes.push(format!(
                "note: backup {} is left out: {}",
                i.scanned.backup,
                i.problem.unwrap_or_default()
            )),
            _ => {}
        }
    }
    out.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
    Ok((out, notes))
}

/// What a restore to a time will do, decided before anything is written.
#[derive(Debug)]
pub struct PitrPlan {
    /// The base backup.
    pub base: Base,
    /// The timeline recovered along.
    pub timeline: u32,
    /// `recovery_target_*` settings (none: replay everything archived).
    pub target_setting: Option<(String, String)>,
    /// The newest transaction end the recovery will replay (latest), for the check after.
    pub expect_last_xact: Option<DateTime<Utc>>,
    /// Every file the recovery reads: the timelines' history files, then the segments.
    pub files: Vec<super::Entry>,
    /// Lines to show.
    pub lines: Vec<String>,
}

/// Plans a restore of `target` to `until`.
///
/// # Errors
/// [`PitrError::NoBase`], [`PitrError::Unrecoverable`] naming what is missing or refused.
pub async fn plan(
    store: &dyn ReadStore,
    target: &str,
    until: Until,
    timeline: Option<u32>,
    trust: &Trust,
) -> Result<PitrPlan, PitrError> {
    let (bases, mut lines) = bases(store, target, trust).await?;
    let archive = super::load(store, target, trust).await?;
    let timeline = match timeline.or_else(|| archive.newest_timeline()) {
        Some(t) => t,
        None => {
            return Err(PitrError::Unrecoverable(format!(
                "the WAL archive of postgres/{target} holds no segment"
            )))
        }
    };
    let path = archive
        .path_to(timeline)
        .map_err(PitrError::Unrecoverable)?;
    let on_path = |b: &&Base| path.iter().any(|(t, _)| *t == b.facts.timeline);
    let fits = |b: &&Base| match until {
        Until::Latest => true,
        Until::Time(t) => b.facts.stopped_at <= t,
        Until::Lsn(l) => b.facts.stop_lsn <= l,
    };
    let Some(base) = bases.iter().rev().filter(on_path).find(fits).cloned() else {
        let oldest = bases.first().map_or_else(
            || format!("there is no physical base backup of postgres/{target}: take one with `worker backup postgres --physical --target {target}`"),
            |b| format!("the oldest physical base backup of postgres/{target} ({}) finished at {}; a restore can reach no earlier", b.manifest.id, b.facts.stopped_at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
        return Err(PitrError::NoBase(format!(
            "no base backup fits {until} on timeline {timeline}: {oldest}"
        )));
    };
    let size = base.facts.segment_bytes;
    let chain = archive.chain(&path, base.facts.start_lsn, size);
    let refuse = |why: String| Err(PitrError::Unrecoverable(why));
    let gap_note = |chain: &Chain<'_>| match (&chain.gap, &chain.resumes) {
        (Some(gap), Some(next)) => {
            format!("WAL segment {gap} is missing from the store (the archive resumes at {next})")
        }
        (Some(gap), None) => format!("WAL segment {gap} is missing from the store"),
        _ => String::new(),
    };
    if chain.segments.is_empty() {
        return refuse(format!(
            "the base backup {} starts in WAL segment {}, which is not archived{}",
            base.manifest.id,
            super::Segment::of(base.facts.start_lsn, base.facts.timeline, size).name(size),
            if chain.gap.is_some() {
                format!(": {}", gap_note(&chain))
            } else {
                String::new()
            }
        ));
    }
    let end = chain.end().unwrap_or_default();
    if end < base.facts.stop_lsn {
        return refuse(format!(
            "the base backup {} is consistent only at {}, and the archived WAL after it ends at {end}{}",
            base.manifest.id,
            base.facts.stop_lsn,
            if chain.gap.is_some() { format!(": {}", gap_note(&chain)) } else { " (the archiver has not stored it yet: wait --max-lag and retry)".into() }
        ));
    }
    // Which segments the recovery needs, and what to tell PostgreSQL.
    let (needed, target_setting, expect_last_xact) = match until {
        Until::Latest => {
            if chain.gap.is_some() {
                lines.push(format!(
                    "warning: {}; the restore stops before it",
                    gap_note(&chain)
                ));
            }
            (chain.segments.len(), None, chain.last_xact_end())
        }
        Until::Time(t) => {
            // The first segment with a transaction end after t holds the stop point.
            match chain
                .segments
                .iter()
                .position(|l| l.entry.last_xact_end.is_some_and(|x| x > t))
            {
                Some(i) => (
                    i + 1,
                    Some((
                        "recovery_target_time".to_string(),
                        t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                    )),
                    None,
                ),
                None => {
                    if chain.gap.is_some() {
                        return refuse(format!(
                            "{}: the WAL before it ends with the transaction of {}, and {} is later; restore to a time before the gap, or take a base backup after it",
                            gap_note(&chain),
                            chain.last_xact_end().map_or("(none)".into(), |x| x.to_rfc3339_opts(SecondsFormat::Millis, true)),
                            t.to_rfc3339_opts(SecondsFormat::Secs, true),
                        ));
                    }
                    let newest = chain.archived_at().unwrap_or(t);
                    if newest < t {
                        lines.push(format!(
                            "note: the archive's newest upload is from {}; a commit between it and {} may not be in the store yet",
                            newest.to_rfc3339_opts(SecondsFormat::Secs, true),
                            t.to_rfc3339_opts(SecondsFormat::Secs, true)
                        ));
                    }
                    // No transaction ended after t: the whole archive is the state at t.
                    (chain.segments.len(), None, chain.last_xact_end())
                }
            }
        }
        Until::Lsn(l) => {
            if l > end {
                return refuse(format!(
                    "WAL position {l} is past the archived WAL, which ends at {end}{}",
                    if chain.gap.is_some() {
                        format!(": {}", gap_note(&chain))
                    } else {
                        String::new()
                    }
                ));
            }
            let i = chain
                .segments
                .iter()
                .position(|s| s.entry.end_lsn >= l)
                .unwrap_or(chain.segments.len() - 1);
            (
                i + 1,
                Some(("recovery_target_lsn".to_string(), l.to_string())),
                None,
            )
        }
    };
    let used = &chain.segments[..needed];
    for l in used {
        if let Some(why) = &l.refused {
            return refuse(format!("WAL file {}'s index entry {why}", l.entry.file));
        }
        if l.entry.system_identifier != base.facts.system_identifier {
            return refuse(format!(
                "WAL file {} is of cluster {}, the base backup {} of cluster {}",
                l.entry.file,
                l.entry.system_identifier,
                base.manifest.id,
                base.facts.system_identifier
            ));
        }
    }
    // Sizes, cheaply, before anything is written: a cut object is found now, not halfway.
    let listed: std::collections::HashMap<String, u64> = store
        .list(&super::prefix(target))
        .await
        .map_err(super::WalError::Store)?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    for l in used {
        match listed.get(&l.entry.object_key()) {
            Some(size) if *size == l.entry.ciphertext_bytes => {}
            Some(size) => {
                return refuse(format!(
                "WAL file {} is {size} bytes in the store, its entry records {} (cut or replaced)",
                l.entry.file, l.entry.ciphertext_bytes
            ))
            }
            None => {
                return refuse(format!(
                    "WAL file {}'s object {} is missing from the store",
                    l.entry.file,
                    l.entry.object_key()
                ))
            }
        }
    }
    let (first, last) = (
        used[0].entry.file.clone(),
        used[needed - 1].entry.file.clone(),
    );
    lines.insert(
        0,
        format!(
            "plan: base backup {} (finished {}, WAL {} to {}, timeline {}) then {needed} WAL file(s) {first} … {last}{}; recover to {until}",
            base.manifest.id,
            base.facts.stopped_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            base.facts.start_lsn,
            base.facts.stop_lsn,
            base.facts.timeline,
            if used[needed - 1].entry.kind == EntryKind::Partial { " (the last one partial)" } else { "" },
        ),
    );
    if let (Until::Time(_), None) = (until, &target_setting) {
        lines.push(format!(
            "note: no transaction in the archive ended after {until}: the restore replays all of it (the newest transaction ended at {})",
            expect_last_xact.map_or("(none)".into(), |x| x.to_rfc3339_opts(SecondsFormat::Millis, true))
        ));
    }
    let files = path
        .iter()
        .filter_map(|(t, _)| archive.entries.get(&(*t, format!("{t:08X}.history"))))
        .chain(used.iter().copied())
        .map(|l| l.entry.clone())
        .collect();
    Ok(PitrPlan {
        base,
        timeline,
        target_setting,
        expect_last_xact,
        files,
        lines,
    })
}

/// Refuses a data directory that exists with anything in it; creates a missing one (0700).
///
/// # Errors
/// [`PitrError::DataDir`].
pub fn prepare_datadir(dir: &Path) -> Result<(), PitrError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| PitrError::DataDir(format!("--to-datadir {}: {why}", dir.display()));
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(bad("the directory is not empty; a restore writes only into an empty or new directory".into()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| bad(e.to_string()))
}

/// Unpacks a verified base backup's tar stream into `dir`.
///
/// # Errors
/// A tar that does not unpack (damaged) or a directory that cannot be written.
pub fn unpack(reader: impl std::io::Read, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    archive.unpack(dir)
}

/// `--wal-into-datadir`: puts every WAL file the recovery needs into `dir/pg_wal`, each
/// checked against its entry (size and sha256 of the object, then of the plaintext), so
/// PostgreSQL recovers without a `restore_command` that reaches the store (a database image
/// without kubectl-dr). Returns the bytes written.
///
/// # Errors
/// A file that fails its check, the store, the disk.
pub async fn fill_pg_wal(
    store: &dyn ReadStore,
    identities: &crate::pipeline::keys::Identities,
    dir: &Path,
    plan: &PitrPlan,
) -> Result<u64, PitrError> {
    let pg_wal = dir.join("pg_wal");
    std::fs::create_dir_all(&pg_wal)
        .map_err(|e| PitrError::DataDir(format!("{}: {e}", pg_wal.display())))?;
    let mut written = 0;
    for entry in &plan.files {
        let plain = super::fetch::download(store, identities, entry)
            .await
            .map_err(|e| match e {
                super::fetch::Download::Store(e) => PitrError::Wal(super::WalError::Store(e)),
                super::fetch::Download::Bad(why) => {
                    PitrError::Unrecoverable(format!("WAL file {} is refused: {why}", entry.file))
                }
            })?;
        let path = pg_wal.join(&entry.file);
        std::fs::write(&path, &plain)
            .map_err(|e| PitrError::DataDir(format!("{}: {e}", path.display())))?;
        written += plain.len() as u64;
    }
    Ok(written)
}

/// Quotes a word for the shell PostgreSQL runs `restore_command` with.
fn sh_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The comment `write_recovery` puts above its settings: it names the base backup, so a
/// resumed `restore --all` knows its own earlier restore.
pub fn recovery_marker(plan: &PitrPlan) -> String {
    format!(
        "# kubectl dr restore: point-in-time recovery from base backup {}",
        plan.base.manifest.backup_ref()
    )
}

/// Writes the recovery settings into the restored directory: `recovery.signal` and a block
/// at the end of `postgresql.auto.conf` (read last, so it wins). `fetch` is the
/// `kubectl-dr wal-fetch` command line without `%f %p`.
///
/// # Errors
/// The files cannot be written.
pub fn write_recovery(
    dir: &Path,
    plan: &PitrPlan,
    fetch: &[String],
) -> std::io::Result<Vec<String>> {
    use std::io::Write;
    let mut command: Vec<String> = fetch.iter().map(|w| sh_quote(w)).collect();
    command.extend(["%f".to_string(), "%p".to_string()]);
    let mut settings = vec![
        ("restore_command".to_string(), command.join(" ")),
        ("recovery_target_action".to_string(), "promote".to_string()),
        (
            "recovery_target_timeline".to_string(),
            plan.timeline.to_string(),
        ),
    ];
    if let Some((k, v)) = &plan.target_setting {
        settings.push((k.clone(), v.clone()));
        settings.push(("recovery_target_inclusive".to_string(), "on".to_string()));
    }
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("postgresql.auto.conf"))?;
    writeln!(conf, "\n{}", recovery_marker(plan))?;
    for (k, v) in &settings {
        writeln!(conf, "{k} = '{}'", v.replace('\'', "''"))?;
    }
    conf.sync_all()?;
    std::fs::write(dir.join("recovery.signal"), b"")?;
    let _ = std::fs::remove_file(dir.join("standby.signal"));
    Ok(settings
        .into_iter()
        .map(|(k, v)| format!("{k} = '{v}'"))
        .collect())
}

/// `--start`: runs `pg_ctl start` on the restored directory and waits until recovery has
/// promoted the server. Returns PostgreSQL's own report of where recovery ended.
///
/// # Errors
/// [`PitrError::Recovery`] when the server stopped during recovery (a refused or missing
/// WAL file: the log's lines say which), [`PitrError::Start`] when it could not start.
pub async fn start(
    dir: &Path,
    bin_dir: Option<&Path>,
    options: Option<&str>,
    plan: &PitrPlan,
    timeout: Duration,
) -> Result<Vec<String>, PitrError> {
    let log = dir.join("kube-dr-recovery.log");
    let tool = |name: &str| -> std::process::Command {
        let mut c = std::process::Command::new(
            bin_dir.map_or_else(|| PathBuf::from(name), |d| d.join(name)),
        );
        c.stdin(std::process::Stdio::null());
        c
    };
    let mut pg_ctl = tool("pg_ctl");
    pg_ctl
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"]);
    if let Some(o) = options {
        pg_ctl.args(["-o", o]);
    }
    let out = pg_ctl.output().map_err(|e| {
        PitrError::Start(format!(
            "cannot run pg_ctl: {e}; install PostgreSQL's server or pass --pg-bin-dir"
        ))
    })?;
    if !out.status.success() {
        return Err(PitrError::Start(format!(
            "pg_ctl start failed: {} (PostgreSQL does not run as root: run --start as the user that owns the data directory, e.g. postgres)",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let promoted = text.contains("database system is ready to accept connections")
            && (text.contains("archive recovery complete")
                || text.contains("selected new timeline ID"));
        if promoted {
            let report: Vec<String> = text
                .lines()
                .filter(|l| {
                    l.contains("redo done at")
                        || l.contains("last completed transaction")
                        || l.contains("recovery stopping")
                        || l.contains("selected new timeline ID")
                })
                .map(|l| l.find("LOG:").map_or(l, |i| &l[i..]).trim().to_string())
                .collect();
            if let Some(expect) = plan.expect_last_xact {
                let reached = text
                    .lines()
                    .filter_map(|l| {
                        l.split("last completed transaction was at log time ")
                            .nth(1)
                    })
                    .filter_map(parse_pg_time)
                    .next_back();
                if reached.is_some_and(|r| r < expect - chrono::Duration::milliseconds(1))
                    || (reached.is_none() && plan.expect_last_xact.is_some())
                {
                    return Err(PitrError::Recovery(format!(
                        "recovery ended early: the archive holds a transaction of {}, the server's last replayed one is {}; the log is {}",
                        expect.to_rfc3339_opts(SecondsFormat::Millis, true),
                        reached.map_or("(none)".into(), |r| r.to_rfc3339_opts(SecondsFormat::Millis, true)),
                        log.display()
                    )));
                }
            }
            return Ok(report);
        }
        let running = tool("pg_ctl")
            .arg("-D")
            .arg(dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
        if !running {
            let why: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("FATAL")
                        || l.contains("is refused")
                        || l.contains("wal-fetch")
                        || l.contains("recovery ended before")
                })
                .collect();
            return Err(PitrError::Recovery(format!(
                "PostgreSQL stopped during recovery; nothing was promoted. From its log ({}):\n  {}",
                log.display(),
                why.join("\n  ")
            )));
        }
        if std::time::Instant::now() > deadline {
            return Err(PitrError::Start(format!(
                "recovery did not finish within {}; it is still running (log: {})",
                humantime::format_duration(timeout),
                log.display()
            )));
        }
    }
}

/// PostgreSQL's log time, `2026-12-06 01:55:03.41745+00`.
fn parse_pg_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    let fixed = if t.len() > 3 && (t.ends_with("+00") || t.ends_with("-00")) {
        format!("{t}:00")
    } else {
        t.to_string()
    };
    DateTime::parse_from_str(&fixed, "%Y-%m-%d %H:%M:%S%.f%:z")
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// The recoverable window of a target, as `verify --wal` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Window {
    /// The target.
    pub target: String,
    /// The oldest base backup's end: the earliest time a restore can reach.
    pub from: Option<DateTime<Utc>>,
    /// The newest commit archived without a gap after the oldest base.
    pub to: Option<DateTime<Utc>>,
    /// The newest timeline.
    pub timeline: u32,
    /// Base backups counted.
    pub bases: usize,
    /// WAL files checked.
    pub files: usize,
    /// When the archive last stored a file.
    pub last_archived: Option<DateTime<Utc>>,
    /// What is wrong (a gap, a damaged or refused file): each makes the check fail.
    pub problems: Vec<String>,
    /// Notes (left-out bases).
    pub notes: Vec<String>,
}

/// Checks the archive of `target`: every file from the oldest base backup on is there, its
/// entry trusted and (with `deep`) its object's size and sha256 as recorded, each
/// timeline's history is archived; and reports the recoverable window.
///
/// # Errors
/// Operational errors (the store); what is wrong with the archive is in `problems`.
pub async fn window(
    store: &dyn ReadStore,
    target: &str,
    trust: &Trust,
    deep: bool,
) -> Result<Window, PitrError> {
    use futures::StreamExt;
    let (bases, notes) = bases(store, target, trust).await?;
    let archive: Archive = super::load(store, target, trust).await?;
    let timeline = archive.newest_timeline().unwrap_or(1);
    let mut w = Window {
        target: target.to_string(),
        from: None,
        to: None,
        timeline,
        bases: bases.len(),
        files: 0,
        last_archived: archive.entries.values().map(|l| l.entry.archived_at).max(),
        problems: Vec::new(),
        notes,
    };
    for (key, why) in &archive.broken {
        w.problems.push(format!("{key}: {why}"));
    }
    for l in archive.entries.values() {
        if let Some(why) = &l.refused {
            w.problems.push(format!(
                "WAL file {} (timeline {}): its index entry {why}",
                l.entry.file, l.entry.timeline
            ));
        }
    }
    let timelines: std::collections::BTreeSet<u32> =
        archive.entries.keys().map(|(t, _)| *t).collect();
    for t in timelines.iter().filter(|t| **t > 1) {
        if let Err(why) = archive.path_to(*t) {
            w.problems.push(why);
        }
    }
    let Some(oldest) = bases.first() else {
        w.problems.push(format!("there is no physical base backup of postgres/{target}: WAL alone restores nothing (worker backup postgres --physical)"));
        return Ok(w);
    };
    let path = archive
        .path_to(timeline)
        .unwrap_or_else(|_| vec![(timeline, Lsn(0))]);
    let chain_of = |b: &Base| archive.chain(&path, b.facts.start_lsn, b.facts.segment_bytes);
    let chain = chain_of(oldest);
    if let Some(gap) = &chain.gap {
        w.problems.push(format!(
            "WAL segment {gap} is missing: no restore from base backups before it can pass it{}",
            chain
                .resumes
                .as_ref()
                .map_or(String::new(), |n| format!(" (the archive resumes at {n})"))
        ));
    } else if chain.segments.is_empty() {
        w.problems.push(format!(
            "the oldest base backup {} starts in a WAL segment that is not archived",
            oldest.manifest.id
        ));
    }
    // The window starts at the oldest base whose WAL reaches the archive's end unbroken.
    let unbroken = bases
        .iter()
        .map(|b| (b, chain_of(b)))
        .find(|(_, c)| c.gap.is_none() && !c.segments.is_empty());
    if let Some((b, c)) = &unbroken {
        w.from = Some(b.facts.stopped_at);
        w.to = c.last_commit();
    }
    // Every archived file's bytes against its entry.
    let checks: Vec<&super::Loaded> = if deep {
        archive.entries.values().collect()
    } else {
        Vec::new()
    };
    w.files = checks.len();
    let results = futures::stream::iter(checks.into_iter().map(|l| async move {
        let got = store
            .get_bytes(&l.entry.object_key(), l.entry.ciphertext_bytes + 1)
            .await;
        (l, got)
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (l, got) in results {
        match got {
            Ok(bytes) => {
                if let Err(why) = super::fetch::check_ciphertext(&l.entry, &bytes) {
                    w.problems.push(format!("WAL file {}: {why}", l.entry.file));
                }
            }
            Err(crate::store::StoreError::NotFound { .. }) => w.problems.push(format!(
                "WAL file {}: its object {} is missing",
                l.entry.file,
                l.entry.object_key()
            )),
            Err(crate::store::StoreError::TooLarge { .. }) => w.problems.push(format!(
                "WAL file {}: its object is larger than its entry records",
                l.entry.file
            )),
            Err(e) => return Err(PitrError::Wal(super::WalError::Store(e))),
        }
    }
    w.problems.sort();
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_people_and_postgresql_write_them() {
        assert_eq!(parse_time("latest"), Ok(Until::Latest));
        let Ok(Until::Time(t)) = parse_time("2026-12-02T14:03:00Z") else {
            panic!()
        };
        assert_eq!(t.timestamp(), 1_796_220_180);
        assert!(parse_time("yesterday")
            .unwrap_err()
            .contains("2026-12-02T14:03:00Z"));
        let p = parse_pg_time("2026-12-06 01:55:03.41745+00").unwrap();
        assert_eq!(p.timestamp_subsec_micros(), 417_450);
    }

    #[test]
    fn restore_commands_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("/usr/bin/kubectl-dr"), "/usr/bin/kubectl-dr");
        assert_eq!(sh_quote("s3://b/p x"), "'s3://b/p x'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
