//! How both binaries end: the exit code an error means (0 ok, 1 a check failed, 2 usage
//! or operational trouble), and stdout written so that a reader that went away (`| head`)
//! ends a command quietly instead of as a failure.

use std::process::ExitCode;

use crate::catalog::CatalogError;
use crate::verify::VerifyError;

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
    if err.chain().any(is_check) {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            (
                "counts differ after a step of a run",
                crate::rebuild::RunError::CountsDiffer {
                    step: "step 2/3 postgres/prod/x/app".into(),
                    max_diff: crate::verify::MaxDiff::default(),
                }
                .into(),
                1,
            ),
            (
                "a step's part found damaged while it streamed (the engine's boxed error)",
                crate::rebuild::RunError::Restore {
                    step: "postgres/prod/x".into(),
                    seconds: 1.0,
                    first: true,
                    source: Box::new(crate::engine::postgres::restore::RestoreError::Verify(
                        hash_mismatch(),
                    )),
                }
                .into(),
                1,
            ),
            (
                "a step's destination unreachable",
                crate::rebuild::RunError::Probe {
                    step: "postgres/prod/x".into(),
                    to: "postgres://db".into(),
                    source: "connection refused".into(),
                }
                .into(),
                2,
            ),
            (
                "an engine's boxed check failure, with what the command was doing",
                crate::engine::EngineFailed {
                    doing: "counting what --against holds".into(),
                    source: Box::new(hash_mismatch()),
                }
                .into(),
                1,
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
