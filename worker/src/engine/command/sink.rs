//! `kubectl dr restore … --engine command`: the plaintext to stdout (`--to -`) or into a
//! command's stdin (`--to-command -- CMD…`).

use std::io::Write;

use async_trait::async_trait;
use sha2::Digest;

use crate::catalog::PartFormat;
use crate::catalog::{Manifest, Part};
use crate::engine::child::StdinChild;
use crate::engine::{
    Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, RunKind, Sink, SourceFailure,
    VerifiedParts,
};
use crate::verify::{stream_withheld, VerifyError};

/// Command flags of `kubectl dr restore`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Command")]
#[group(id = "command_restore")]
pub struct RestoreArgs {
    /// Command backups: pipe the plaintext into the command given after `--` (which must
    /// succeed), instead of --to - (stdout).
    #[arg(long)]
    pub to_command: bool,

    /// The command of --to-command and its arguments.
    #[arg(last = true, value_name = "CMD", requires = "to_command")]
    pub command: Vec<String>,
}

enum Destination {
    Stdout,
    Command(Vec<String>),
}

/// The destination `--to-command` implies in a run over many backups (`command=` it).
pub const TO_COMMAND: &str = "(--to-command)";

impl RestoreArgs {
    /// The destination these flags imply, if any: `--to-command` is where command backups go.
    pub fn implied_to(&self) -> Option<&'static str> {
        self.to_command.then_some(TO_COMMAND)
    }

    /// The first command-only flag given, for refusing it on another engine's backup.
    pub fn given(&self) -> Option<&'static str> {
        self.to_command.then_some("--to-command")
    }

    /// # Errors
    /// Neither `--to -` nor `--to-command -- CMD…`.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        let destination = match (self.to_command, common.to.as_str()) {
            (true, "" | TO_COMMAND) if !self.command.is_empty() => {
                Destination::Command(self.command.clone())
            }
            (false, "-") if common.run == RunKind::Rebuild => {
                return Err(
                    "--to command=- would mix the command's output with the summary on stdout; under --all restore command output with --to-command -- CMD… (e.g. -- sh -c 'cat > out'), or on its own with `kubectl dr restore latest --engine command --to -`".into(),
                )
            }
            (false, "-") => Destination::Stdout,
            _ => {
                return Err(
                    "a command backup restores with --to - (stdout) or --to-command -- CMD ARG… (its stdin); there is no server to --against: verify --identity checks the plaintext's sha256".into(),
                )
            }
        };
        Ok(Box::new(CommandSink { destination }))
    }
}

/// Where a command backup's plaintext goes.
pub struct CommandSink {
    destination: Destination,
}

#[async_trait]
impl Sink for CommandSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        Ok(())
    }

    async fn live_counts(
        &mut self,
        _manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        Err("--against does not apply to command backups; verify --identity checks the plaintext's sha256".into())
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        let part = manifest
            .part_of(&PartFormat::CommandStdout)
            .ok_or_else(|| {
                format!(
                    "backup {} has no command output part",
                    manifest.backup_ref()
                )
            })?;
        Ok(vec![part])
    }

    async fn plan<'m>(
        self: Box<Self>,
        _ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let part = first.lead().part();
        let to = match &self.destination {
            Destination::Stdout => "stdout".to_string(),
            Destination::Command(argv) => format!("the stdin of {}", argv[0]),
        };
        Ok(RestorePlan {
            lines: vec![format!(
                "plan: write {} ({} bytes) to {to}",
                part.name, part.plaintext_bytes
            )],
            confirm: None,
            more_parts: Vec::new(),
            restore: self,
        })
    }
}

#[async_trait]
impl Planned for CommandSink {
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let part = parts.lead();
        let (manifest, meta) = (part.manifest(), part.part().clone());
        let expected =
            Some(manifest.facts.read::<super::Facts>()?.plaintext_sha256).filter(|s| !s.is_empty());
        let backup = manifest.backup_ref().to_string();
        let (plain, bar) = ctx.open(part).await?;
        let argv = match &self.destination {
            Destination::Command(argv) => Some(argv.clone()),
            Destination::Stdout => None,
        };
        let fed = tokio::task::spawn_blocking(move || -> Result<u64, SourceFailure> {
            let mut child = match &argv {
                Some(argv) => {
                    let mut cmd = std::process::Command::new(&argv[0]);
                    cmd.args(&argv[1..]);
                    Some(StdinChild::spawn(cmd)?)
                }
                None => None,
            };
            let stdout = std::io::stdout();
            let mut hasher = sha2::Sha256::new();
            stream_withheld(plain, &backup, &meta, |data, last| -> Result<(), SourceFailure> {
                hasher.update(data);
                if last {
                    // The recorded plaintext sha256 is this engine's own final check.
                    let found = hex::encode(hasher.clone().finalize());
                    if let Some(expected) = expected.as_ref().filter(|e| **e != found) {
                        return Err(Box::new(VerifyError::BadContent {
                            backup: backup.clone(),
                            part: meta.name.clone(),
                            reason: format!(
                                "the plaintext has sha256 {found}, the manifest recorded {expected}"
                            ),
                        }));
                    }
                }
                match child.as_mut() {
                    Some(c) => Ok(c.write_all(data)?),
                    None => stdout.lock().write_all(data).map_err(|e| -> SourceFailure {
                        format!("writing the plaintext to stdout failed ({e}): the restore is incomplete").into()
                    }),
                }
            })?;
            if let Some(c) = child {
                c.close()?;
            }
            Ok(meta.plaintext_bytes)
        })
        .await
        .expect("restore thread panicked");
        bar.finish();
        let bytes = fed?;
        ctx.say(&format!(
            "restored {} ({bytes} bytes)",
            manifest.backup_ref()
        ));
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against: "the command's output".into(),
            rows: Vec::new(),
        })
    }
}
