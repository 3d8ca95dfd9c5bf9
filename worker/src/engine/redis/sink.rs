//! `kubectl dr restore|verify … --to|--against redis://…`: the Redis [`Sink`] and its flags.

use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::source::Facts;
use super::{primary, Conn, RedisTarget, ServerVersion};
use crate::catalog::{Manifest, Part, PartFormat, TableCount};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, Sink, SourceFailure,
    VerifiedParts,
};
use crate::verify;

/// Redis flags of `kubectl dr restore`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Redis")]
#[group(id = "redis_restore")]
pub struct RestoreArgs {
    /// Where this process listens for the target's replication connection (it poses as
    /// the target's primary for one sync): an address the server can reach. Default: this
    /// machine's address on its connection to the server, any free port. In a cluster Job,
    /// the pod IP. Only the target gets the snapshot: it must connect from its own address
    /// and authenticate with a one-time masterauth the restore sets (CONFIG SET) and puts
    /// back afterwards; anyone else is cut off and named.
    #[arg(hide_short_help = true, long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// How long to wait for the target to connect back and load the snapshot.
    #[arg(hide_short_help = true, long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub redis_wait: Duration,
}

impl RestoreArgs {
    /// The first Redis-only flag given, for refusing it on another engine's backup.
    pub fn given(&self) -> Option<&'static str> {
        self.listen.as_ref().map(|_| "--listen")
    }

    /// # Errors
    /// A malformed `--to` URL, an unreadable password file.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        Ok(Box::new(RedisSink {
            target: RedisTarget::from_url(&common.to)?,
            common: common.clone(),
            listen: self.listen.clone(),
            wait: self.redis_wait,
            server: None,
            existing: Vec::new(),
        }))
    }
}

/// A Redis server to restore into or count.
pub struct RedisSink {
    target: RedisTarget,
    common: RestoreCommon,
    listen: Option<String>,
    wait: Duration,
    server: Option<ServerVersion>,
    existing: Vec<TableCount>,
}

/// The RDB part of a backup.
fn rdb_part(manifest: &Manifest) -> Result<&Part, String> {
    manifest
        .part_of(&PartFormat::RedisRdb)
        .ok_or_else(|| format!("backup {} has no RDB part", manifest.backup_ref()))
}

fn keys_of(counts: &[TableCount]) -> u64 {
    counts
        .iter()
        .filter(|c| c.name == "keys")
        .map(|c| c.rows)
        .sum()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceFailure> + Send + 'static,
) -> Result<T, SourceFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("redis thread panicked")
}

#[async_trait]
impl Sink for RedisSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        let target = self.target.clone();
        let (server, existing) = blocking(move || {
            let mut c = target.connect()?;
            Ok((c.server()?, c.keyspace()?))
        })
        .await?;
        self.server = Some(server);
        self.existing = existing;
        Ok(())
    }

    async fn live_counts(
        &mut self,
        manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        let part = rdb_part(manifest)?;
        Ok(vec![RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: self.target.to_string(),
            rows: verify::compare_counts(&part.tables, &self.existing, self.common.max_diff),
        }])
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        Ok(vec![rdb_part(manifest)?])
    }

    fn rolls_back(&self, _part: &Part) -> bool {
        // A replica loads a full sync only once the whole payload arrived (into a temporary
        // file, or beside the old data with repl-diskless-load swapdb; on-empty-db only
        // when it holds nothing), and the payload's last chunk is held back until the part
        // matched its manifest: a sync that fails leaves the old data in place.
        true
    }

    async fn plan<'m>(
        self: Box<Self>,
        _ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let manifest = first.manifest();
        let server = self.server.clone().ok_or("plan before probe")?;
        let facts: Facts = manifest.facts.read()?;
        super::check_rdb_compatible(facts.rdb_version, &server)?;
        let keys = keys_of(&self.existing);
        if keys > 0 && !self.common.clean {
            return Err(format!(
                "{} ({server}) already holds {keys} key(s); a restore replaces them all (a full sync), so pass --clean, or restore into an empty server; nothing was changed",
                self.target
            )
            .into());
        }
        let what = format!(
            "REPLACE all keys of {} ({server}, {keys} key(s) now) with the RDB snapshot of {} (RDB {}), by a full sync from this machine",
            self.target,
            manifest.backup_ref(),
            facts.rdb_version
        );
        Ok(RestorePlan {
            lines: vec![format!("plan: {what}")],
            confirm: (keys > 0).then(|| Confirm {
                what: format!("this restore replaces the {keys} key(s) of {}", self.target),
                prompt: format!("This replaces every key of {}.", self.target),
                word: "replace".into(),
            }),
            more_parts: Vec::new(),
            restore: self,
        })
    }
}

#[async_trait]
impl Planned for RedisSink {
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let part = parts.lead();
        let (manifest, meta) = (part.manifest(), part.part().clone());
        let backup = manifest.backup_ref().to_string();
        let (plain, bar) = ctx.open(part).await?;
        let (target, listen, wait) = (self.target.clone(), self.listen.clone(), self.wait);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let work = blocking(move || {
            let mut control = target.connect()?;
            let listener = match &listen {
                Some(addr) => TcpListener::bind(addr)?,
                None => TcpListener::bind((control.socket().local_addr()?.ip(), 0))?,
            };
            let advertised = listener.local_addr()?;
            let expected = primary::Expected {
                from: target_addresses(&mut control)?,
                secret: one_time_secret(),
            };
            let _ = tx.send(format!(
                "serving the snapshot at {advertised} to {} only (from {}, with a one-time masterauth): REPLICAOF {} {} on {}",
                target,
                expected.from.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or "),
                advertised.ip(),
                advertised.port(),
                target
            ));
            let masterauth = set_masterauth(&mut control, &expected.secret)?;
            let replicaof = control.call(&[
                b"REPLICAOF",
                advertised.ip().to_string().as_bytes(),
                advertised.port().to_string().as_bytes(),
            ]);
            // Whatever happens from here on, the target ends as a primary again with its
            // own masterauth back.
            let outcome = replicaof.map_err(SourceFailure::from).and_then(|_| {
                sync_and_wait(
                    &mut control,
                    &listener,
                    wait,
                    &expected,
                    plain,
                    &backup,
                    &meta,
                )
            });
            let promoted = control.call(&[b"REPLICAOF", b"NO", b"ONE"]);
            let reset = control.call(&[b"CONFIG", b"SET", b"masterauth", &masterauth]);
            if outcome.is_err() {
                // The sync's error is the one returned; what the cleanup could not undo must
                // not be lost behind it.
                if let Err(e) = &promoted {
                    let _ = tx.send(format!(
                        "{target} may still be a replica ({e}): run REPLICAOF NO ONE on it"
                    ));
                }
                if let Err(e) = &reset {
                    let _ = tx.send(format!("{target}'s masterauth could not be set back ({e}): set it again by hand if it replicates from a password-protected primary"));
                }
            }
            outcome?;
            promoted?;
            reset.map_err(|e| {
                format!("{target} is restored, but its masterauth could not be set back ({e}): set it again by hand if it replicates from a password-protected primary")
            })?;
            let role = control.info("replication")?;
            if !role.iter().any(|(k, v)| k == "role" && v == "master") {
                return Err(format!(
                    "{target} did not become a primary again; run REPLICAOF NO ONE on it"
                )
                .into());
            }
            Ok(control.keyspace()?)
        });
        tokio::pin!(work);
        let done = loop {
            tokio::select! {
                Some(line) = rx.recv() => ctx.say(&line),
                done = &mut work => break done,
            }
        };
        // What the work said last (e.g. a cleanup that failed beside its error) is heard too.
        while let Ok(line) = rx.try_recv() {
            ctx.say(&line);
        }
        let counts = done?;
        bar.finish();
        ctx.say(&format!(
            "restored {} into {}; it is a primary again",
            manifest.backup_ref(),
            self.target
        ));
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: self.target.to_string(),
            rows: verify::compare_counts(&part.part().tables, &counts, self.common.max_diff),
        })
    }
}

/// The addresses the target's replication connection may come from: the one this
/// process reached it at, and the one the server sees itself at (`CLIENT INFO`'s `laddr`,
/// Redis 6.2+): behind a Kubernetes Service the first is the Service's, the second the
/// pod's, which is where the target connects from.
fn target_addresses(control: &mut Conn) -> Result<Vec<IpAddr>, SourceFailure> {
    let mut from = vec![control.socket().peer_addr()?.ip()];
    if let Ok(info) = control.call(&[b"CLIENT", b"INFO"]) {
        let text = info.text();
        let laddr = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("laddr="))
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        if let Some(a) = laddr {
            if !from.contains(&a.ip()) {
                from.push(a.ip());
            }
        }
    }
    Ok(from)
}

/// 32 random bytes as hex: the password of one sync.
fn one_time_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Gives the target `secret` as its `masterauth`; returns the value to put back.
fn set_masterauth(control: &mut Conn, secret: &str) -> Result<Vec<u8>, SourceFailure> {
    let refused = |e: super::RedisError| -> SourceFailure {
        format!(
            "{e}: the restore gives the target a one-time password for its replication link (CONFIG SET masterauth), so that only the target can take the snapshot; allow CONFIG for the restore's user; nothing was changed"
        )
        .into()
    };
    let old = match control
        .call(&[b"CONFIG", b"GET", b"masterauth"])
        .map_err(refused)?
    {
        super::Reply::Array(Some(items)) => match items.get(1) {
            Some(super::Reply::Bulk(Some(v))) => v.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    control
        .call(&[b"CONFIG", b"SET", b"masterauth", secret.as_bytes()])
        .map_err(refused)?;
    Ok(old)
}

/// Serves the sync, then waits until the target reports the link up and its load done.
fn sync_and_wait(
    control: &mut Conn,
    listener: &TcpListener,
    wait: Duration,
    expected: &primary::Expected,
    plain: crate::pipeline::decode::PlainReader,
    backup: &str,
    part: &Part,
) -> Result<(), SourceFailure> {
    let started = Instant::now();
    let _link = primary::serve(listener, wait, expected, plain, backup, part)?;
    loop {
        let info = control.info("replication")?;
        let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("master_link_status") == Some("up") && get("master_sync_in_progress") == Some("0") {
            return Ok(());
        }
        if started.elapsed() > wait {
            return Err(format!(
                "{} did not finish loading the snapshot within {wait:?} (--redis-wait); its log says why",
                control.addr()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
