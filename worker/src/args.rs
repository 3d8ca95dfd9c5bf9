//! The flags every `worker backup <engine>` (and `kubectl dr rekey`) shares: the age
//! recipients, compression, Object Lock and the signing key, each with what it builds
//! (recipient keys, encoder settings, a lock, a signing key). They sit below the engines,
//! whose registry flattens them into each engine's command; [`crate::cli`] re-exports
//! them for the binaries.

use std::path::PathBuf;
use std::sync::Arc;

use age::x25519;
use clap::Args;

use crate::catalog::signature::SignatureError;
use crate::catalog::SigningKey;
use crate::pipeline::keys::{self, KeyError};
use crate::store;

/// age recipients (public keys) for new backups.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Encryption and compression")]
pub struct RecipientArgs {
    /// age public key to encrypt to (age1…, from `age-keygen -y key.txt`); repeatable,
    /// or a comma-separated list. Keep the private keys outside the cluster.
    #[arg(
        long = "recipient",
        short = 'r',
        env = "DR_RECIPIENTS",
        value_name = "AGE1…",
        value_delimiter = ','
    )]
    pub recipients: Vec<String>,

    /// File with one age public key per line (the `age -R` format).
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_RECIPIENTS_FILE",
        value_name = "FILE"
    )]
    pub recipients_file: Option<PathBuf>,
}

impl RecipientArgs {
    /// # Errors
    /// No recipient at all, a private key given as a recipient, or a malformed key.
    pub fn load(&self) -> Result<Vec<x25519::Recipient>, KeyError> {
        let mut all =
            keys::parse_recipients(&self.recipients.join("\n"), "--recipient/DR_RECIPIENTS")?;
        if let Some(path) = &self.recipients_file {
            all.extend(keys::read_recipients_file(path)?);
        }
        if all.is_empty() {
            return Err(KeyError::NoRecipients);
        }
        Ok(all)
    }
}

/// How parts are compressed before encryption (every `worker backup <engine>`).
#[derive(Debug, Clone, Args)]
pub struct EncodingArgs {
    /// Compression before encryption.
    #[arg(
        hide_short_help = true,
        long,
        value_enum,
        default_value = "zstd",
        env = "DR_COMPRESSION"
    )]
    pub compression: CompressionArg,

    /// zstd level (1 fastest … 19 smallest). Level 1 beat level 3 on both speed and size on
    /// our 1 GB benchmark (docs/PERFORMANCE.md).
    #[arg(hide_short_help = true, long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=19), env = "DR_ZSTD_LEVEL")]
    pub zstd_level: i32,

    /// zstd worker threads; 0 compresses on the encoding thread, which keeps pace with
    /// pg_dump on small machines. Each worker adds ~20 MiB of buffers: raise it only when
    /// spare cores exist and compression is the bottleneck.
    #[arg(
        hide_short_help = true,
        long,
        default_value_t = 0,
        env = "DR_ZSTD_THREADS"
    )]
    pub zstd_threads: u32,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    /// zstd, one frame with a content checksum.
    Zstd,
    /// No compression (e.g. for data that is compressed already).
    None,
}

impl EncodingArgs {
    /// The encoder settings for these flags and recipients.
    ///
    /// # Errors
    /// Missing or malformed recipients.
    pub fn settings(
        &self,
        recipients: &RecipientArgs,
    ) -> Result<crate::pipeline::encode::EncodeSettings, KeyError> {
        Ok(crate::pipeline::encode::EncodeSettings {
            recipients: recipients.load()?,
            compression: match self.compression {
                CompressionArg::Zstd => crate::catalog::Compression::Zstd,
                CompressionArg::None => crate::catalog::Compression::None,
            },
            zstd_level: self.zstd_level,
            zstd_threads: self.zstd_threads,
            signing: None,
        })
    }
}

/// S3 Object Lock (WORM) for a backup's objects.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Object Lock")]
pub struct LockArgs {
    /// Write every object of the backup, manifest included, with S3 Object Lock in this
    /// mode (the bucket must have Object Lock enabled). Until the date, nobody with the
    /// bucket's keys can delete or overwrite them (compliance), or only those allowed to
    /// bypass governance. A bucket with a default retention rule needs no flag.
    #[arg(
        hide_short_help = true,
        long,
        value_enum,
        env = "DR_OBJECT_LOCK",
        requires = "retain"
    )]
    pub object_lock: Option<store::LockMode>,

    /// How long each object is locked from when it is written, e.g. 35d. Make it at least
    /// as long as the retention policy keeps backups: prune reports what is still held and
    /// deletes it in a later run.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_OBJECT_LOCK_RETAIN",
        value_name = "DURATION",
        requires = "object_lock"
    )]
    pub retain: Option<humantime::Duration>,
}

impl LockArgs {
    /// The lock to apply, if any.
    pub fn lock(&self) -> Option<store::ObjectLock> {
        Some(store::ObjectLock {
            mode: self.object_lock?,
            retain: *self.retain?,
        })
    }
}

/// The key the worker signs manifests with.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Signing")]
pub struct SigningArgs {
    /// minisign secret key file (unencrypted: `minisign -G -W -s FILE`), from a Secret.
    /// Every manifest is signed with it (manifest.json.minisig), so kubectl dr can tell
    /// the worker's backups from ones planted by anyone else who can write to the bucket.
    /// Without it the command refuses to run, unless --unsigned is given.
    #[arg(long, env = "DR_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,

    /// Write unsigned manifests on purpose (no --signing-key). Readers refuse such backups
    /// unless they are given --allow-unsigned, so this is for trying the tool out, not for
    /// the nightly CronJobs.
    #[arg(
        hide_short_help = true,
        long,
        env = "DR_UNSIGNED",
        conflicts_with = "signing_key",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub unsigned: bool,
}

impl SigningArgs {
    /// The key, or `None` with --unsigned.
    ///
    /// # Errors
    /// No key without --unsigned (a backup no reader accepts must not look like a
    /// success), an unreadable, password-protected or malformed key file.
    pub fn load(&self) -> Result<Option<Arc<SigningKey>>, SignatureError> {
        match (&self.signing_key, self.unsigned) {
            (Some(p), _) => SigningKey::from_file(p).map(|k| Some(Arc::new(k))),
            (None, true) => Ok(None),
            (None, false) => Err(SignatureError::NoSigningKey),
        }
    }
}
