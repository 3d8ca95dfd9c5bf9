//! Command-line pieces both binaries share, so `worker` and `kubectl-dr` accept the same
//! store and key options and map failures to the same exit codes:
//! 0 ok, 1 a check failed (integrity or count mismatch), 2 usage or operational error.

mod exit;
mod logging;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::catalog::signature::SignatureError;
use crate::catalog::{Signers, Trust};
use crate::pipeline::keys::{Identities, KeyError};
use crate::store::{self, DeleteStore, OpenMode, S3Options, StoreUrl};

// The flags of a backup live a floor lower, where the engines' registry can use them.
pub use crate::args::{CompressionArg, EncodingArgs, LockArgs, RecipientArgs, SigningArgs};
pub use exit::{
    exit_code, outcome_code, print_line, report, stdout_error, CheckFailed, StdoutClosed,
};
pub use logging::{init_logging, init_logging_to, LogFormat};

/// Where backups live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Backup store: s3://bucket/prefix, az://container/prefix, gs://bucket/prefix or
    /// file:///absolute/dir.
    ///
    /// Credentials come from each cloud's standard variables: S3 from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; Azure Blob from
    /// AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY,
    /// AZURE_STORAGE_SAS_TOKEN or workload identity; GCS from GOOGLE_APPLICATION_CREDENTIALS
    /// or workload identity (STORAGE_EMULATOR_HOST for an emulator).
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

    /// Limit uploads, and downloads, to this rate each (e.g. 50MiB/s, 10MB/s), shared by
    /// every stream of the process: backups, copies, verify and restores leave the rest of
    /// the link to the cluster.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_MAX_RATE",
        value_name = "RATE",
        value_parser = store::rate::parse_rate,
        global = true,
        help_heading = "Global options"
    )]
    pub max_rate: Option<u64>,
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
            env_prefix: None,
        };
        let is_engine = |name: &str| {
            crate::catalog::Engine::KNOWN
                .iter()
                .any(|e| e.as_str() == name)
        };
        Ok(store::stores_beside(&url, &opts, &is_engine).await?)
    }

    async fn open_with(
        &self,
        mode: OpenMode,
        object_lock: Option<store::ObjectLock>,
    ) -> anyhow::Result<Arc<dyn DeleteStore>> {
        let text = self.store.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "no store given: pass --store s3://bucket/prefix (or az://, gs://, file:///dir), or set DR_STORE"
            )
        })?;
        let url: StoreUrl = text.parse()?;
        if let Some(rate) = self.max_rate {
            store::rate::set_max_rate(rate);
        }
        Ok(store::open(
            &url,
            &S3Options {
                path_style: self.s3_path_style,
                object_lock,
                env_prefix: None,
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
