//! The engines this build knows. Their names are [`Engine`] (the manifest's enum); this
//! module maps each to its implementations: `worker backup <engine>` is the
//! [`BackupCommand`] enum (a variant per engine, its flags from the engine's folder),
//! `kubectl dr restore|verify` build a [`Sink`] through [`RestoreFlags::sink`], and
//! `verify --identity` finds a format's [`content_check`]. Each is an exhaustive match, so
//! a new [`Engine`] variant does not compile until every role is wired.

use clap::Subcommand;

use super::scratch::ScratchStep;
use super::{
    clickhouse, command, kubernetes, postgres, redis, sqlite, vault, RestoreCommon, RestoreCtx,
    Sink, Source, SourceFailure, Step,
};
use crate::args::{EncodingArgs, LockArgs, RecipientArgs, SigningArgs};
use crate::catalog::{Engine, Manifest, PartFormat};

/// Every engine of this build, in the order a full restore would take them.
pub const ENGINES: &[Engine] = Engine::KNOWN;

pub use crate::verify::ContentCheck;

/// How `verify --identity` and the drill open parts: with `identities`, and this
/// registry's content checks.
pub fn decrypt(identities: &crate::pipeline::keys::Identities) -> crate::verify::Decrypt<'_> {
    crate::verify::Decrypt {
        identities,
        content_check,
    }
}

/// The content check for a part format, if its engine has one.
pub fn content_check(format: &PartFormat) -> Option<ContentCheck> {
    Some(match format {
        PartFormat::VaultSnapshot => |r, _, _| {
            vault::snapshot::inspect(r, None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        PartFormat::ClickhouseNative => |r, _, _| {
            clickhouse::native::walk(std::io::BufReader::with_capacity(256 * 1024, r), |_| {})
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        PartFormat::ClickhouseTsv => |r, _, _| {
            clickhouse::tsv::walk(std::io::BufReader::with_capacity(256 * 1024, r), None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        PartFormat::CommandStdout => |r, facts, _| command::check_plaintext(r, facts),
        PartFormat::RedisRdb => redis::check_rdb,
        PartFormat::KubernetesYaml => kubernetes::check_yaml,
        PartFormat::SqliteDb => sqlite::check_db,
        PartFormat::PgBaseTar => postgres::wal::base::check_tar,
        // Checked when restored (pg_restore, the server) or not checkable alone.
        PartFormat::PgDumpCustom
        | PartFormat::Sql
        | PartFormat::ClickhouseSchema
        | PartFormat::Unknown(_) => return None,
    })
}

/// What every `worker backup <engine>` takes besides the engine's own flags.
#[derive(Debug, clap::Args)]
pub struct Backup<A: clap::Args> {
    /// Name of what is backed up (e.g. prod, signoz, the Vault cluster); backups are
    /// grouped, listed and pruned per target.
    #[arg(long, env = "DR_TARGET")]
    pub target: String,

    /// The engine's own flags.
    #[command(flatten)]
    pub engine: A,

    /// The age public keys.
    #[command(flatten)]
    pub recipients: RecipientArgs,

    /// Compression settings.
    #[command(flatten)]
    pub encoding: EncodingArgs,

    /// The manifest's signing key.
    #[command(flatten)]
    pub signing: SigningArgs,

    /// Object Lock for every object written.
    #[command(flatten)]
    pub lock: LockArgs,

    /// Stop the backup (exit 2, nothing committed, uploads aborted) when it runs longer
    /// than this: a source that trickles bytes forever must not hold the CronJob's slot.
    /// A source that sends nothing at all fails sooner, after DR_STALL_TIMEOUT (default
    /// 5m) without a byte.
    #[arg(hide_short_help = true, long, env = "DR_BACKUP_TIMEOUT", default_value = "6h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
}

/// `worker backup <engine>`: one variant per engine.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up PostgreSQL databases with pg_dump, counting every table in the dump's snapshot.
    ///
    /// Connection: the libpq variables PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD
    /// (or PGPASSWORD_FILE, e.g. a mounted Secret). The password reaches pg_dump through
    /// its environment, never its arguments.
    ///
    /// Example:
    ///   worker backup postgres --target prod --database app --database auth --globals \
    ///     --store s3://backups/cluster-a --recipient age1... --signing-key sign.key
    #[command(verbatim_doc_comment)]
    Postgres(Backup<postgres::source::BackupArgs>),
    /// Back up Vault or OpenBao: a raft snapshot from the active node, checked while it streams.
    ///
    /// Address: VAULT_ADDR (a standby's address is fine: the active node is found through
    /// sys/leader), VAULT_CACERT for a private CA. Token: VAULT_TOKEN, --token-file, or
    /// Kubernetes auth with --k8s-role (the pod's service-account token). The token needs:
    ///   path "sys/storage/raft/snapshot" { capabilities = ["read"] }
    /// and, for the counts verify compares (skipped with a warning when missing):
    ///   path "sys/mounts" { capabilities = ["read"] }
    ///   path "sys/auth" { capabilities = ["read"] }
    ///   path "sys/policies/acl" { capabilities = ["list"] }
    ///   path "secret/metadata/*" { capabilities = ["list"] }   # per kv mount
    ///
    /// Example (in a CronJob):
    ///   worker backup vault --target vault --k8s-role dr-backup \
    ///     --store s3://backups/cluster-a --recipient age1... --signing-key sign.key
    #[command(verbatim_doc_comment)]
    Vault(Backup<vault::source::BackupArgs>),
    /// Back up ClickHouse over its HTTP interface: DDL, then one part per table.
    ///
    /// Connection: CLICKHOUSE_URL (http(s)://host:8123), CLICKHOUSE_USER (default
    /// `default`), CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE. Each table's result is
    /// walked block by block as it streams (Native; TabSeparated for tables with aggregate
    /// states, Dynamic or JSON columns): the manifest's row counts are exact, and an error
    /// the server writes into the middle of a result fails the backup.
    ///
    /// Example (SigNoz):
    ///   worker backup clickhouse --target signoz --database signoz_traces \
    ///     --database signoz_logs --database signoz_metrics --exclude 'signoz_logs.*_tmp'
    #[command(verbatim_doc_comment)]
    Clickhouse(Backup<clickhouse::source::BackupArgs>),
    /// Back up what a command prints on stdout (Terraform state, Argo CD export, a tar of a
    /// volume). A non-zero exit or a signal fails the backup; the manifest records the argv
    /// (never the environment) and the plaintext's sha256.
    ///
    /// Examples:
    ///   worker backup command --target tfstate -- terraform state pull
    ///   worker backup command --target argocd -- argocd admin export -n argocd
    ///   worker backup command --target pvc-data -- tar -C /data -cf - .
    #[command(verbatim_doc_comment)]
    Command(Backup<command::source::BackupArgs>),
    /// Back up Redis or Valkey: the RDB snapshot a replica would get, walked as it streams.
    ///
    /// Connection: REDIS_URL (redis://[user@]host:6379), the password from REDIS_PASSWORD or
    /// REDIS_PASSWORD_FILE. The user needs the SYNC and REPLCONF commands (an ACL user with
    /// `+sync +replconf +ping +info +auth`, or the default user). The RDB's CRC64 is checked
    /// and its keys and expires counted per database while it streams.
    ///
    /// Example:
    ///   REDIS_URL=redis://redis-master.redis.svc:6379 worker backup redis --target cache
    #[command(verbatim_doc_comment)]
    Redis(Backup<redis::source::BackupArgs>),
    /// Back up the cluster's own objects: one YAML part per kind, stripped of what the old
    /// cluster assigned (uid, resourceVersion, managedFields, status, owner references…).
    ///
    /// The cluster: the pod's service account (a ClusterRole with get and list on the kinds,
    /// manifests/kubernetes), or KUBECONFIG. Service-account token Secrets are left out;
    /// Secrets are only in the encrypted parts, their number in the manifest.
    ///
    /// Examples:
    ///   worker backup kubernetes --target cluster-a
    ///   worker backup kubernetes --target argocd --namespace argocd \
    ///     --kinds applications.argoproj.io,appprojects.argoproj.io,secrets,configmaps
    #[command(verbatim_doc_comment)]
    Kubernetes(Backup<kubernetes::source::BackupArgs>),
    /// Back up a SQLite database file: a consistent copy through the online backup API.
    ///
    /// The file: --path (DR_SQLITE_PATH), on the application's volume mounted into the
    /// CronJob's pod. The copy is made in TMPDIR, counted table by table, then streamed.
    ///
    /// Example:
    ///   worker backup sqlite --target grafana --path /var/lib/grafana/grafana.db
    #[command(verbatim_doc_comment)]
    Sqlite(Backup<sqlite::source::BackupArgs>),
}

/// A backup command taken apart: the engine's name, the common flags and its source.
pub struct Parts {
    /// The engine (store layout, manifest).
    pub engine: Engine,
    /// `--target`.
    pub target: String,
    /// Public keys.
    pub recipients: RecipientArgs,
    /// Compression settings.
    pub encoding: EncodingArgs,
    /// The manifest's signing key.
    pub signing: SigningArgs,
    /// Object Lock for every object written.
    pub lock: LockArgs,
    /// The configured source.
    pub source: Box<dyn Source>,
}

impl BackupCommand {
    /// The engine and `--target` (known before the source is built, so a backup that
    /// cannot even start is still reported for its series).
    pub fn series(&self) -> (Engine, &str) {
        match self {
            BackupCommand::Postgres(b) => (Engine::Postgres, &b.target),
            BackupCommand::Vault(b) => (Engine::Vault, &b.target),
            BackupCommand::Clickhouse(b) => (Engine::Clickhouse, &b.target),
            BackupCommand::Command(b) => (Engine::Command, &b.target),
            BackupCommand::Redis(b) => (Engine::Redis, &b.target),
            BackupCommand::Kubernetes(b) => (Engine::Kubernetes, &b.target),
            BackupCommand::Sqlite(b) => (Engine::Sqlite, &b.target),
        }
    }

    /// `--timeout` of whichever engine.
    pub fn timeout(&self) -> std::time::Duration {
        match self {
            BackupCommand::Postgres(b) => b.timeout,
            BackupCommand::Vault(b) => b.timeout,
            BackupCommand::Clickhouse(b) => b.timeout,
            BackupCommand::Command(b) => b.timeout,
            BackupCommand::Redis(b) => b.timeout,
            BackupCommand::Kubernetes(b) => b.timeout,
            BackupCommand::Sqlite(b) => b.timeout,
        }
    }

    /// Builds the engine's source from its flags and environment.
    ///
    /// # Errors
    /// The engine's configuration error (a missing address, an unreadable password file).
    pub fn into_parts(self) -> Result<Parts, SourceFailure> {
        fn parts<A: clap::Args>(
            engine: Engine,
            b: Backup<A>,
            source: impl FnOnce(A) -> Result<Box<dyn Source>, SourceFailure>,
        ) -> Result<Parts, SourceFailure> {
            Ok(Parts {
                engine,
                target: b.target,
                recipients: b.recipients,
                encoding: b.encoding,
                signing: b.signing,
                lock: b.lock,
                source: source(b.engine)?,
            })
        }
        match self {
            BackupCommand::Postgres(b) => parts(Engine::Postgres, b, |a| a.source()),
            BackupCommand::Vault(b) => parts(Engine::Vault, b, |a| a.source()),
            BackupCommand::Clickhouse(b) => parts(Engine::Clickhouse, b, |a| a.source()),
            BackupCommand::Command(b) => parts(Engine::Command, b, |a| a.source()),
            BackupCommand::Redis(b) => parts(Engine::Redis, b, |a| a.source()),
            BackupCommand::Kubernetes(b) => parts(Engine::Kubernetes, b, |a| a.source()),
            BackupCommand::Sqlite(b) => parts(Engine::Sqlite, b, |a| a.source()),
        }
    }
}

/// The engine a destination URL names by its scheme alone, where only one engine takes
/// that scheme (`http(s)://` is Vault's and ClickHouse's, so it names none).
pub fn engine_of_url(url: &str) -> Option<Engine> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "postgres" | "postgresql" => Some(Engine::Postgres),
        "redis" | "rediss" => Some(Engine::Redis),
        "sqlite" => Some(Engine::Sqlite),
        _ => None,
    }
}

/// How `manifest` splits into the steps of a run, each to `to`: one per database for
/// PostgreSQL (the globals with the first), the whole backup for the others.
///
/// # Errors
/// The engine's refusal (a PostgreSQL URL naming one database for a backup of several).
pub fn steps_of<'m>(manifest: &'m Manifest, to: &str) -> Result<Vec<Step<'m>>, SourceFailure> {
    match manifest.engine {
        Engine::Postgres => postgres::sink::steps(manifest, to),
        Engine::Vault
        | Engine::Clickhouse
        | Engine::Command
        | Engine::Redis
        | Engine::Kubernetes
        | Engine::Sqlite
        | Engine::Unknown(_) => Ok(vec![Step::whole(manifest, to)]),
    }
}

/// True when the drill restores `engine`'s backups into scratch destinations (the others
/// get their integrity and content checks only: a Vault snapshot restore would need the
/// backed-up cluster's unseal keys, which a CronJob must not hold).
pub fn drills(engine: &Engine) -> bool {
    match engine {
        Engine::Postgres | Engine::Clickhouse | Engine::Redis | Engine::Sqlite => true,
        Engine::Vault | Engine::Command | Engine::Kubernetes | Engine::Unknown(_) => false,
    }
}

/// Why the drill does not restore `engine`'s backups (see [`drills`]).
pub fn no_drill_reason(engine: &Engine) -> &'static str {
    match engine {
        Engine::Vault => "a Vault snapshot restore would need the backed-up cluster's unseal keys, which a CronJob must not hold",
        _ => "there is no scratch destination for them",
    }
}

/// The engines the drill restores, for messages.
pub fn drilled_names() -> String {
    ENGINES
        .iter()
        .filter(|e| drills(e))
        .map(Engine::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The steps of a drill of `manifest` on the scratch server `url`, each with its claim on
/// a scratch destination the engine names (see [`drills`]).
///
/// # Errors
/// An engine without a drill, its refusal of the URL, a schema that fails its check.
pub async fn drill_steps<'m>(
    manifest: &'m Manifest,
    url: &str,
    flags: &RestoreFlags,
    ctx: RestoreCtx<'_>,
) -> Result<Vec<ScratchStep<'m>>, SourceFailure> {
    match manifest.engine {
        Engine::Postgres => postgres::scratch::drill_steps(manifest, url, flags),
        Engine::Clickhouse => clickhouse::scratch::drill_steps(manifest, url, flags, ctx).await,
        Engine::Redis => redis::scratch::drill_steps(manifest, url, flags),
        Engine::Sqlite => sqlite::scratch::drill_steps(manifest, url, flags),
        Engine::Vault | Engine::Command | Engine::Kubernetes | Engine::Unknown(_) => Err(format!(
            "the drill restores {} into scratch destinations, not {} backups",
            drilled_names(),
            manifest.engine
        )
        .into()),
    }
}

/// Whether `kubectl dr restore --in-cluster` can run `engine`'s restore as a Job beside the
/// database.
///
/// # Errors
/// Why not, and what to do instead.
pub fn in_cluster(engine: &Engine) -> Result<(), String> {
    let why = match engine {
        Engine::Postgres => return Ok(()),
        Engine::Vault => "a Vault restore needs the new cluster's root token and, after --force, a person to unseal",
        Engine::Clickhouse | Engine::Redis => {
            "it streams over the server's own port, which works as well from outside"
        }
        Engine::Command | Engine::Kubernetes | Engine::Sqlite | Engine::Unknown(_) => {
            "it restores to your workstation or with your own credentials"
        }
    };
    Err(format!(
        "--in-cluster restores PostgreSQL; restore {engine} from your workstation ({why})"
    ))
}

/// Every engine's own flags of `kubectl dr restore`, each under its heading (defaults:
/// `verify --against` builds a sink with them to probe and count).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RestoreFlags {
    /// PostgreSQL's.
    #[command(flatten)]
    pub postgres: postgres::sink::RestoreArgs,
    /// Vault's.
    #[command(flatten)]
    pub vault: vault::sink::RestoreArgs,
    /// ClickHouse's.
    #[command(flatten)]
    pub clickhouse: clickhouse::sink::RestoreArgs,
    /// The command engine's.
    #[command(flatten)]
    pub command: command::sink::RestoreArgs,
    /// Redis's.
    #[command(flatten)]
    pub redis: redis::sink::RestoreArgs,
    /// Kubernetes's.
    #[command(flatten)]
    pub kubernetes: kubernetes::sink::RestoreArgs,
    /// SQLite's.
    #[command(flatten)]
    pub sqlite: sqlite::sink::RestoreArgs,
}

impl RestoreFlags {
    /// Destinations the flags imply (`--to-command` is where command backups go), added to a
    /// run's `--to` entries.
    pub fn implied_destinations(&self) -> Vec<(Engine, &'static str)> {
        self.command
            .implied_to()
            .map(|to| (Engine::Command, to))
            .into_iter()
            .collect()
    }

    /// The `globals: true` of a rebuild's plan file: restore the roles of every backup that
    /// has them (PostgreSQL's `--globals`).
    pub fn add_globals(&mut self, on: bool) {
        self.postgres.globals |= on;
    }

    /// Flags a drill cannot honour: it restores no roles, and names its scratch databases
    /// itself.
    pub fn not_for_drill(&self) -> Vec<&'static str> {
        [
            self.postgres.globals.then_some("--globals"),
            (!self.clickhouse.database_map.is_empty()).then_some("--database-map"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// `engine`'s flags as `kubectl dr restore` arguments, for a restore Job that runs in
    /// the cluster (see [`in_cluster`]).
    pub fn forwarded(&self, engine: &Engine) -> Vec<String> {
        match engine {
            Engine::Postgres => self.postgres.to_args(),
            _ => Vec::new(),
        }
    }

    /// The restore role of `engine` (a backup's), from `--to` and the flags; flags that
    /// belong to another engine are refused rather than ignored.
    ///
    /// # Errors
    /// An engine this build cannot restore, another engine's flag, the engine's own
    /// configuration error.
    pub fn sink(
        &self,
        engine: &Engine,
        common: &RestoreCommon,
    ) -> Result<Box<dyn Sink>, SourceFailure> {
        let given = [
            (Engine::Postgres, self.postgres.given()),
            (Engine::Vault, self.vault.given()),
            (Engine::Clickhouse, self.clickhouse.given()),
            (Engine::Command, self.command.given()),
            (Engine::Redis, self.redis.given()),
            (Engine::Kubernetes, self.kubernetes.given()),
            (Engine::Sqlite, self.sqlite.given()),
        ];
        if let Some((owner, flag)) = given
            .iter()
            .find_map(|(owner, flag)| flag.filter(|_| owner != engine).map(|f| (owner, f)))
        {
            return Err(format!(
                "{flag} is for {owner} backups; this backup is of engine {engine}"
            )
            .into());
        }
        self.build(engine, common)
    }

    /// The restore role of `engine` without refusing other engines' flags (a run over
    /// several engines, where each engine takes its own).
    ///
    /// # Errors
    /// An engine this build cannot restore, the engine's own configuration error.
    pub fn build(
        &self,
        engine: &Engine,
        common: &RestoreCommon,
    ) -> Result<Box<dyn Sink>, SourceFailure> {
        match engine {
            Engine::Postgres => self.postgres.sink(common),
            Engine::Vault => self.vault.sink(common),
            Engine::Clickhouse => self.clickhouse.sink(common),
            Engine::Command => self.command.sink(common),
            Engine::Redis => self.redis.sink(common),
            Engine::Kubernetes => self.kubernetes.sink(common),
            Engine::Sqlite => self.sqlite.sink(common),
            Engine::Unknown(other) => Err(format!(
                "restoring {} backups is not supported by this version; upgrade kubectl-dr (it knows: {})",
                crate::catalog::printable(other),
                Engine::known_names()
            )
            .into()),
        }
    }
}

/// The engines' restore flags a drill takes (those of the engines it restores), each under
/// its heading.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DrillFlags {
    /// PostgreSQL's.
    #[command(flatten)]
    pub postgres: postgres::sink::RestoreArgs,
    /// ClickHouse's.
    #[command(flatten)]
    pub clickhouse: clickhouse::sink::RestoreArgs,
    /// Redis's.
    #[command(flatten)]
    pub redis: redis::sink::RestoreArgs,
    /// SQLite's.
    #[command(flatten)]
    pub sqlite: sqlite::sink::RestoreArgs,
}

impl From<DrillFlags> for RestoreFlags {
    fn from(d: DrillFlags) -> Self {
        RestoreFlags {
            postgres: d.postgres,
            clickhouse: d.clickhouse,
            redis: d.redis,
            sqlite: d.sqlite,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unambiguous_schemes_name_an_engine() {
        assert_eq!(
            engine_of_url("postgres://u@db:5432/app"),
            Some(Engine::Postgres)
        );
        assert_eq!(engine_of_url("postgresql://db"), Some(Engine::Postgres));
        assert_eq!(engine_of_url("rediss://cache:6380"), Some(Engine::Redis));
        assert_eq!(engine_of_url("http://vault:8200"), None);
        assert_eq!(engine_of_url("https://clickhouse:8443"), None);
        assert_eq!(engine_of_url("-"), None);
    }

    #[test]
    fn every_engine_has_a_backup_command_and_a_name() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            backup: BackupCommand,
        }
        let cmd = Cli::command();
        let mut subcommands: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        subcommands.sort_unstable();
        let mut names: Vec<&str> = ENGINES.iter().map(Engine::as_str).collect();
        names.sort_unstable();
        assert_eq!(subcommands, names);
    }
}
