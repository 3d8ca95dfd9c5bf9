//! `worker backup command`: its flags and the [`Source`] they build.

use std::io::Write;

use async_trait::async_trait;
use sha2::Digest;

use crate::catalog::PartFormat;
use crate::engine::{child, BackupRun, DumpOutcome, PartSpec, Source, SourceFailure};

/// Flags of `worker backup command`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Command")]
pub struct BackupArgs {
    /// The command and its arguments, after `--`; what it prints on stdout is the backup.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub argv: Vec<String>,
}

impl BackupArgs {
    /// # Errors
    /// Never for now (the command is started by the dump).
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(CommandSource { argv: self.argv }))
    }
}

/// A command whose standard output is backed up.
pub struct CommandSource {
    argv: Vec<String>,
}

/// Hashes and counts the plaintext on its way to the encoder.
struct Hashing<'a> {
    out: &'a mut dyn Write,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[async_trait]
impl Source for CommandSource {
    fn describe(&self) -> String {
        // The program only: arguments may hold anything.
        self.argv.first().cloned().unwrap_or_default()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let argv = self.argv.clone();
        let cancel = run.cancel_token().clone();
        let spec = PartSpec {
            name: "stdout".into(),
            format: PartFormat::CommandStdout,
            extension: "out",
            database: None,
            section: None,
        };
        // The command keeps the worker's environment: it is the user's own command, and
        // tools such as terraform read their credentials from it. Only argv is recorded.
        let sha = run
            .store_part(spec, move |out: &mut dyn Write| {
                let mut cmd = std::process::Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                let mut hashing = Hashing {
                    out,
                    hasher: sha2::Sha256::new(),
                    bytes: 0,
                };
                let warnings = child::stream_stdout(cmd, &mut hashing, &cancel)?;
                if !warnings.is_empty() {
                    tracing::info!(stderr = %warnings, "the command wrote to stderr");
                }
                Ok(hex::encode(hashing.hasher.finalize()))
            })
            .await?;
        let program = std::path::Path::new(&self.argv[0])
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(DumpOutcome {
            server_version: program,
            facts: crate::catalog::Facts::of(&super::Facts {
                argv: self.argv.clone(),
                plaintext_sha256: sha,
            }),
        })
    }
}
