//! `kubectl-dr` (`kubectl dr …`): the operator's side. Lists, verifies and restores the
//! backups `worker` takes, from flags and environment alone, because after a rebuild the
//! cluster's Secrets are gone. Thin: every command is a module in [`commands`] that calls
//! the engine library.

mod cluster;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use drkit::cli::{self, LogFormat, StoreArgs};

/// List, verify and restore encrypted backups (PostgreSQL, Vault/OpenBao, ClickHouse,
/// Redis/Valkey, SQLite, Kubernetes objects, command output); check and run the backup
/// CronJobs.
///
/// list, verify, restore and prune work without the cluster: the store and keys come from
/// flags or the environment (DR_STORE, AWS_*, DR_IDENTITY_FILE). status, backup and
/// restore --in-cluster talk to the cluster (--kubeconfig, --context, -n). Data goes to
/// stdout, progress and logs to stderr.
///
/// Exit codes: 0 ok, 1 a check failed (integrity or row counts), 2 usage or operational error.
///
/// After a rebuild:
///   kubectl dr list
///   kubectl dr restore --all --identity key.txt --plan rebuild.yaml   # every target, in order
///   kubectl dr restore latest --target prod --identity key.txt --to postgres://postgres@db:5432/app
///   kubectl dr status                         # are the nightly backups happening?
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-dr",
    bin_name = "kubectl dr",
    version,
    verbatim_doc_comment,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    signers: cli::SignerArgs,

    /// Hide progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(
        hide_short_help = true,
        long,
        global = true,
        help_heading = "Global options"
    )]
    no_progress: bool,

    /// Log format on stderr.
    #[arg(
        hide_short_help = true,
        long,
        value_enum,
        default_value = "text",
        env = "DR_LOG_FORMAT",
        global = true,
        help_heading = "Global options"
    )]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format, "warn");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let progress = progress::Bars::new(!cli.no_progress);
    match runtime.block_on(cli.command.run(&cli.store, &cli.signers, &progress)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report(&e, false),
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's consistency (unique ids and groups, valid defaults) only
    /// when it is built: do it here, not at a user's first `--help`.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
