//! One module per subcommand, each with its clap arguments and its `run`.

mod backup;
mod counts;
mod list;
mod pitr;
mod prune;
mod rekey;
mod restore;
mod restore_all;
mod status;
mod verify;

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use drkit::catalog::{self, Filter, Manifest};
use drkit::cli::{SignerArgs, StoreArgs};
use drkit::progress::Progress;
use drkit::store::ReadStore;

#[derive(Debug, Subcommand)]
pub enum Command {
    List(list::ListCmd),
    Verify(verify::VerifyCmd),
    Restore(Box<restore::RestoreCmd>),
    Prune(prune::PruneCmd),
    Rekey(Box<rekey::RekeyCmd>),
    Status(status::StatusCmd),
    Backup(backup::BackupCmd),
    WalFetch(pitr::WalFetchCmd),
}

impl Command {
    pub async fn run(
        self,
        store: &StoreArgs,
        signers: &SignerArgs,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        match self {
            Command::List(cmd) => cmd.run(store, &signers.lenient()?).await,
            Command::Verify(cmd) => cmd.run(store, &signers.enforced()?, progress).await,
            Command::Restore(cmd) => cmd.run(store, signers, progress).await,
            Command::Prune(cmd) => cmd.run(store, &signers.lenient()?).await,
            Command::Rekey(cmd) => cmd.run(store, &signers.enforced()?, progress).await,
            Command::Status(cmd) => cmd.run(store, &signers.lenient()?).await,
            Command::Backup(cmd) => cmd.run().await,
            Command::WalFetch(cmd) => cmd.run(store, signers).await,
        }
    }
}

/// Which backups a command looks at.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only backups of this engine (repeatable with `restore --all`).
    #[arg(long, short = 'e', value_name = "ENGINE", help = engine_help())]
    pub engine: Vec<String>,

    /// Only backups of this target, the --target the worker was given (repeatable with
    /// `restore --all`).
    #[arg(long, short = 't', value_name = "TARGET")]
    pub target: Vec<String>,
}

/// `--engine`'s help, naming the engines this build knows.
fn engine_help() -> String {
    format!(
        "Only backups of this engine: {} (repeatable with `restore --all`)",
        drkit::catalog::Engine::known_names()
    )
}

impl FilterArgs {
    /// The one series these flags select (every command but `restore --all`).
    fn filter(&self) -> anyhow::Result<Filter> {
        for (flag, given) in [("--engine", &self.engine), ("--target", &self.target)] {
            anyhow::ensure!(
                given.len() <= 1,
                "{flag} is given {} times; only `restore --all` takes several",
                given.len()
            );
        }
        let engine = self.engine.first().cloned();
        let target = self.target.first().cloned();
        if let Some(e) = &engine {
            // A name this build does not know is looked for anyway (a newer worker's
            // backups list and verify); the scan refuses it when nothing matches.
            catalog::validate_name("engine", e)?;
        }
        if let Some(t) = &target {
            catalog::validate_name("target", t)?;
        }
        Ok(Filter { engine, target })
    }

    /// Whether `b` is among the backups chosen (any of the engines, any of the targets).
    pub(super) fn chooses(&self, b: &catalog::BackupRef) -> bool {
        (self.engine.is_empty() || self.engine.contains(&b.engine))
            && (self.target.is_empty() || self.target.contains(&b.target))
    }
}

/// Resolves `ID|latest` to a manifest.
async fn resolve(
    store: &dyn ReadStore,
    selector: &str,
    filter: &FilterArgs,
    trust: &catalog::Trust,
) -> anyhow::Result<Manifest> {
    Ok(catalog::resolve(store, selector, &filter.filter()?, trust).await?)
}

/// Asks the person at the terminal to type `expected` before something destructive; refuses
/// (pointing at `--yes`) when there is no terminal to ask.
fn confirm(what: &str, prompt: &str, expected: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    anyhow::ensure!(
        stdin.is_terminal(),
        "{what}; pass --yes to confirm (no terminal to ask)"
    );
    eprint!("{prompt} Type '{expected}' to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    anyhow::ensure!(
        answer.trim() == expected,
        "not confirmed; nothing was changed"
    );
    Ok(())
}
