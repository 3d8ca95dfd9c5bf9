//! Command-line pieces both binaries share, so `worker` and `kubectl-dr` accept the same
//! store and key options and map failures to the same exit codes:
//! 0 ok, 1 a check failed (integrity or count mismatch), 2 usage or operational error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::catalog::signature::SignatureError;
use crate::catalog::{CatalogError, Signers, Trust};
use crate::pipeline::keys::{Identities, KeyError};
use crate::store::{self, DeleteStore, OpenMode, S3Options, StoreUrl};
use crate::verify::VerifyError;

// The flags of a backup live a floor lower, where the engines' registry can use them.
pub use crate::args::{CompressionArg, EncodingArgs, LockArgs, RecipientArgs, SigningArgs};

/// Where backups live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Backup store: s3://bucket/prefix or file:///absolute/dir.
    ///
    /// S3 credentials, region and endpoint come from the standard AWS variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
    #[arg(
        long,
        env = "DR_STORE",
        value_name = "URL",
        global = true,
        help_heading = "Global options"
    )]
    pub store: Option<String>,

    /// Use path-style S3 addressing (bucket in the path). Default: on when AWS_ENDPOINT_URL
    /// is set (MinIO, Ceph, R2…), off for AWS.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_S3_PATH_STYLE",
        value_name = "BOOL",
        global = true,
        help_heading = "Global options"
    )]
    pub s3_path_style: Option<bool>,
}

impl StoreArgs {
    /// Opens an existing store with every capability; callers keep only the trait they
    /// need. A missing directory or bucket is an error, never "no backups".
    ///
    /// # Errors
    /// A missing or malformed URL, a missing or unusable local directory.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn DeleteStore>> {
        self.open_with(OpenMode::MustExist, None).await
    }

    /// Opens the store for a backup, creating a missing local directory.
    ///
    /// # Errors
    /// A missing or malformed URL, or a local directory that cannot be created.
    pub async fn open_for_backup(
        &self,
        lock: Option<store::ObjectLock>,
    ) -> anyhow::Result<Arc<dyn DeleteStore>> {
        self.open_with(OpenMode::CreateIfMissing, lock).await
    }

    /// Stores beside this one that hold backups (see [`store::stores_beside`]).
    ///
    /// # Errors
    /// A malformed URL, the parent's listing errors.
    pub async fn stores_beside(&self) -> anyhow::Result<Vec<String>> {
        let Some(text) = self.store.as_deref() else {
            return Ok(Vec::new());
        };
        let url: StoreUrl = text.parse()?;
        let opts = S3Options {
            path_style: self.s3_path_style,
            object_lock: None,
        };
        Ok(store::stores_beside(&url, &opts).await?)
    }

    async fn open_with(
        &self,
        mode: OpenMode,
        object_lock: Option<store::ObjectLock>,
    ) -> anyhow::Result<Arc<dyn DeleteStore>> {
        let text = self.store.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "no store given: pass --store s3://bucket/prefix (or file:///dir), or set DR_STORE"
            )
        })?;
        let url: StoreUrl = text.parse()?;
        Ok(store::open(
            &url,
            &S3Options {
                path_style: self.s3_path_style,
                object_lock,
            },
            mode,
        )
        .await?)
    }
}

/// The signatures a reading command accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Signatures")]
pub struct SignerArgs {
    /// Trusted minisign public keys (RW… or a .pub file), repeatable.
    ///
    /// A key line (RW…) or a .pub file, repeatable or separated by commas or newlines
    /// (several during a key rotation). Backups whose manifest is not signed by one of them
    /// are refused (exit 1).
    #[arg(
        long = "signer",
        env = "DR_SIGNERS",
        value_name = "RW…|FILE",
        global = true
    )]
    pub signers: Vec<String>,

    /// Accept backups without a signature (made before signing existed), with a loud
    /// warning. Backups signed by an unknown key or with an invalid signature are refused
    /// all the same.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_ALLOW_UNSIGNED",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unsigned: bool,
}

impl SignerArgs {
    fn signers(&self) -> Result<Signers, SignatureError> {
        Signers::parse(&self.signers.join("\n"), "--signer/DR_SIGNERS")
    }

    /// The trust of a command that uses backups (verify, restore, drill, rekey): refuses
    /// what no trusted key signed.
    ///
    /// # Errors
    /// A malformed signer, or no signer at all without --allow-unsigned (usage: exit 2).
    pub fn enforced(&self) -> anyhow::Result<Trust> {
        let signers = self.signers()?;
        anyhow::ensure!(
            !signers.is_empty() || self.allow_unsigned,
            "no signer to check backups against: pass --signer with the worker's minisign public key (RW…, or its .pub file) or set DR_SIGNERS; for backups made before signing existed, add --allow-unsigned"
        );
        if self.allow_unsigned {
            tracing::warn!("--allow-unsigned: backups without a valid signature are accepted; anyone with write access to the bucket can make such a backup");
        }
        Ok(Trust {
            signers,
            allow_unsigned: self.allow_unsigned,
            enforce: true,
        })
    }

    /// The trust of a command that only shows or counts backups (list; prune without
    /// signers): with signers it is [`SignerArgs::enforced`], without it reports only.
    ///
    /// # Errors
    /// A malformed signer.
    pub fn lenient(&self) -> anyhow::Result<Trust> {
        let signers = self.signers()?;
        if signers.is_empty() {
            Ok(Trust::report_only(signers))
        } else {
            self.enforced()
        }
    }

    /// Shows signatures, refuses nothing (`list`).
    ///
    /// # Errors
    /// A malformed signer.
    pub fn report_only(&self) -> anyhow::Result<Trust> {
        Ok(Trust::report_only(self.signers()?))
    }
}

/// The age identity (private key) for decryption.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// age identity file (AGE-SECRET-KEY-1…, as written by age-keygen).
    #[arg(long, short = 'i', env = "DR_IDENTITY_FILE", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl IdentityArgs {
    /// `None` when no identity was given.
    ///
    /// # Errors
    /// Unreadable or invalid identity file.
    pub fn load(&self) -> Result<Option<Identities>, KeyError> {
        self.identity
            .as_deref()
            .map(Identities::from_file)
            .transpose()
    }

    /// # Errors
    /// [`KeyError::NoIdentity`] when none was given, else as [`IdentityArgs::load`].
    pub fn require(&self) -> Result<Identities, KeyError> {
        self.load()?.ok_or(KeyError::NoIdentity)
    }
}

/// A check that ran and failed (as opposed to an error that stopped it): exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Stdout's reader went away (`kubectl dr list | head`): the command stops, successfully.
/// Only writes to stdout make this; a broken pipe anywhere else (a restore tool that stopped
/// reading) stays an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// A failed write to stdout, as an error: [`StdoutClosed`] for a reader that went away.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// Prints one line on stdout (unlike `println!`, a closed stdout is an error value, not a
/// panic).
///
/// # Errors
/// [`stdout_error`].
pub fn print_line(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(stdout_error)
}

/// Maps an error chain to an exit code and prints it (unless `quiet`: the caller logged it
/// already, e.g. as a JSON line); a closed stdout (`| head`) is success.
pub fn report(err: &anyhow::Error, quiet: bool) -> ExitCode {
    let code = outcome_code(err);
    if code != 0 && !quiet {
        eprintln!("error: {err:#}");
    }
    ExitCode::from(code)
}

/// The exit code an error ends the program with: 0 for a closed stdout (the reader had
/// enough), else [`exit_code`].
pub fn outcome_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.is::<StdoutClosed>()) {
        0
    } else {
        exit_code(err)
    }
}

/// 1 when the chain holds a failed check, else 2.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let is_check = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<CheckFailed>().is_some()
            || c.downcast_ref::<crate::rebuild::RunError>()
                .is_some_and(crate::rebuild::RunError::is_check_failure)
            || c.downcast_ref::<VerifyError>()
                .is_some_and(VerifyError::is_check_failure)
            || c.downcast_ref::<CatalogError>()
                .is_some_and(CatalogError::is_check_failure)
    };
    // An engine's error arrives boxed (`SourceFailure`); `anyhow::Error::from_boxed` keeps
    // the box itself out of `chain()`, so it is looked into here.
    let boxed = err.downcast_ref::<crate::engine::SourceFailure>().map(|b| {
        std::iter::successors(
            Some(b.as_ref() as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        )
    });
    if err.chain().any(is_check) || boxed.is_some_and(|mut chain| chain.any(is_check)) {
        1
    } else {
        2
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON document.
    Json,
    /// Aligned columns for people.
    Text,
}

/// Logs to stderr; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    init_logging_to(format, default_level, std::io::stderr);
}

/// [`init_logging`] through `writer` (e.g. a [`crate::observe::tail::LogTail`], which
/// writes to stderr and keeps the end for the ping).
pub fn init_logging_to<W>(format: LogFormat, default_level: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The AWS credential chain warns with a raw struct dump for each provider it tries
    // (IMDS on a laptop); the store's own error says what to set in one sentence.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},aws_config=error"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // No `target` field: it would be tracing's module path, and in this tool `target`
    // means the backup's --target (log lines name it inside `backup`).
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_target(false).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Retention rules, shared by `worker prune`, `kubectl dr prune` and `kubectl dr list`.
/// Calendar periods are UTC and count back from the newest complete backup of each target.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N hours that have backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the last N days that have backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks that have backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months that have backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest backup of each of the last N years that have backups.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every backup this close to the newest one (e.g. 7d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Incomplete backups (no manifest) younger than this may still be running and are kept.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// A backup dated further than this after now (a clock running fast, a forged id) is
    /// kept but treated as damaged: never the newest, never the reference for the rules.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_clock_skew: std::time::Duration,
}

/// Safety limits of a prune that deletes (shared by `worker prune` and `kubectl dr prune`).
#[derive(Debug, Clone, Args)]
pub struct PruneLimitArgs {
    /// Refuse to run when the plan deletes more than this share of a target's complete
    /// backups: a count (3) or a percentage (50%). A first prune of a long history needs
    /// it raised once; a nightly prune deletes one or two. A plan that deletes a target's
    /// last complete backup is always refused.
    #[arg(long, value_name = "N|P%", default_value = "50%")]
    pub max_delete: crate::retention::MaxDelete,
}

impl RetentionArgs {
    /// True when any keep rule was given.
    pub fn any(&self) -> bool {
        self.policy().validate().is_ok()
    }

    /// The policy these flags describe (not yet validated).
    pub fn policy(&self) -> crate::retention::RetentionPolicy {
        let dur =
            |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        crate::retention::RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.map(dur),
            incomplete_grace: dur(self.grace),
            max_clock_skew: dur(self.max_clock_skew),
        }
    }
}

#[cfg(test)]
mod exit_code_tests {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::pipeline::decode::DecodeError;
    use crate::store::StoreError;

    fn hash_mismatch() -> VerifyError {
        VerifyError::HashMismatch {
            backup: "postgres/prod/20261122T020000Z-7f3a9c".into(),
            part: "db-app".into(),
            expected: "a".repeat(64),
            found: "b".repeat(64),
        }
    }

    fn unreachable() -> StoreError {
        StoreError::Unreachable {
            location: "s3://b".into(),
            detail: "connection refused".into(),
        }
    }

    /// The one exit-code table: 0 ok; 1 a check failed (integrity, counts, staleness, a
    /// mismatch found mid-restore, a damaged backup); 2 usage or operational error.
    #[test]
    fn exit_codes_row_by_row() {
        let rows: Vec<(&str, anyhow::Error, u8)> = vec![
            (
                "count mismatch",
                CheckFailed("counts differ".into()).into(),
                1,
            ),
            ("hash mismatch in verify", hash_mismatch().into(), 1),
            (
                "mismatch found mid-restore (PostgreSQL)",
                anyhow::Error::new(crate::engine::postgres::restore::RestoreError::Verify(
                    hash_mismatch(),
                ))
                .context("restoring prod"),
                1,
            ),
            (
                "mismatch found mid-restore (ClickHouse, inside a table load)",
                anyhow::Error::new(crate::engine::clickhouse::restore::RestoreError::Load {
                    table: "db.t".into(),
                    source: Box::new(crate::engine::clickhouse::restore::RestoreError::Verify(
                        hash_mismatch(),
                    )),
                }),
                1,
            ),
            (
                "mismatch found mid-restore (Vault)",
                crate::engine::vault::restore::RestoreError::Verify(hash_mismatch()).into(),
                1,
            ),
            (
                "damaged part (corrupt age stream)",
                VerifyError::Undecodable {
                    backup: "b".into(),
                    part: "p".into(),
                    cause: DecodeError::Corrupt("bad tag".into()),
                }
                .into(),
                1,
            ),
            (
                "damaged manifest",
                CatalogError::Damaged {
                    backup: "b".into(),
                    key: "k".into(),
                    reason: "is empty".into(),
                }
                .into(),
                1,
            ),
            (
                "wrong key",
                VerifyError::WrongKey {
                    backup: "b".into(),
                    identity_file: "key.txt".into(),
                    recipients: "age1…".into(),
                }
                .into(),
                2,
            ),
            (
                "store unreachable while verifying",
                VerifyError::Store(unreachable()).into(),
                2,
            ),
            (
                "store stops answering mid-stream",
                VerifyError::Undecodable {
                    backup: "b".into(),
                    part: "p".into(),
                    cause: DecodeError::Transport("reset".into()),
                }
                .into(),
                2,
            ),
            (
                "no such backup",
                CatalogError::NoBackup("id x".into()).into(),
                2,
            ),
            (
                "store missing",
                CatalogError::Store(StoreError::Missing {
                    location: "file:///x".into(),
                })
                .into(),
                2,
            ),
            ("anything else", anyhow::anyhow!("no store given"), 2),
        ];
        // A closed stdout is success; a broken pipe to a restore tool is not.
        assert_eq!(
            report(&stdout_error(std::io::ErrorKind::BrokenPipe.into()), true),
            ExitCode::SUCCESS
        );
        let tool = anyhow::Error::new(crate::engine::child::ChildError::Stream {
            program: "pg_restore".into(),
            source: std::io::ErrorKind::BrokenPipe.into(),
        });
        assert_eq!(report(&tool, true), ExitCode::from(2));
        for (what, err, code) in rows {
            assert_eq!(exit_code(&err), code, "{what}: {err:#}");
        }
    }

    /// Each cause is printed once by `{:#}` (a cause shown in a message is not also a
    /// `source()`).
    #[test]
    fn causes_are_printed_once() {
        let err = anyhow::Error::new(VerifyError::Undecodable {
            backup: "b".into(),
            part: "p".into(),
            cause: DecodeError::Corrupt("bad tag".into()),
        });
        assert_eq!(format!("{err:#}").matches("bad tag").count(), 1, "{err:#}");
        let err = anyhow::Error::new(crate::engine::postgres::restore::RestoreError::Verify(
            hash_mismatch(),
        ));
        assert_eq!(
            format!("{err:#}").matches("has sha256").count(),
            1,
            "{err:#}"
        );
    }
}
