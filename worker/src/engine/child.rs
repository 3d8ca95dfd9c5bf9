//! Database client tools (pg_dump, pg_restore…) as stream stages. Their stderr is drained on
//! its own thread while the data flows, because a tool that fills its stderr pipe blocks
//! forever; the exit status is checked only after the data stream ended, and a tool that
//! failed is an error even if it wrote plenty of output.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

/// Bytes of stderr kept for the error message (the tail, where the reason usually is).
const STDERR_KEEP: usize = 16 * 1024;
const BUF_SIZE: usize = 256 * 1024;

/// A client tool that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started (not installed, not executable).
    #[error("cannot start {program}: {cause}; install it or point --pg-bin-dir at it")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        cause: io::Error,
    },
    /// The program exited non-zero or was killed.
    #[error("{program} {status}: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it ended (exit code or signal).
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// Copying the program's output failed.
    #[error("streaming {program}'s output failed")]
    Stream {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn program_name(cmd: &Command) -> String {
    std::path::Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Starts a tool with piped stderr; returns its name for messages.
fn spawn(cmd: &mut Command, stdin: Stdio, stdout: Stdio) -> Result<(String, Child), ChildError> {
    let program = program_name(cmd);
    match cmd
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => Ok((program, child)),
        Err(cause) => Err(ChildError::Spawn { program, cause }),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".to_string(),
    }
}

fn drain_stderr(stderr: Option<ChildStderr>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_KEEP {
                kept.drain(..kept.len() - STDERR_KEEP);
            }
        }
        let start = kept.len().saturating_sub(STDERR_KEEP);
        String::from_utf8_lossy(&kept[start..]).trim().to_string()
    })
}

fn finish(
    program: String,
    child: &mut Child,
    errs: JoinHandle<String>,
) -> Result<String, ChildError> {
    let status = child.wait().map_err(|source| ChildError::Stream {
        program: program.clone(),
        source,
    })?;
    let stderr = errs.join().unwrap_or_default();
    if status.success() {
        Ok(stderr)
    } else {
        Err(ChildError::Failed {
            program,
            status: describe(status),
            stderr: if stderr.is_empty() {
                "(no message)".into()
            } else {
                stderr
            },
        })
    }
}

/// Runs `cmd` and copies its stdout into `out`. Returns the tool's stderr (warnings) on
/// success. When `cancel` fires (SIGTERM), the tool is killed at once, even while it is
/// silent, so shutdown never waits for a dump to finish.
///
/// # Errors
/// [`ChildError::Failed`] when the tool exits non-zero or is killed (with its stderr), or
/// [`ChildError::Stream`] when `out` fails (the tool is killed then).
pub fn stream_stdout(
    mut cmd: Command,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> Result<String, ChildError> {
    let (program, mut child) = spawn(&mut cmd, Stdio::null(), Stdio::piped())?;
    let errs = drain_stderr(child.stderr.take());
    let mut stdout = child.stdout.take().expect("stdout piped");
    let child = Arc::new(Mutex::new(child));
    let _killer = KillOnCancel::watch(&child, cancel);
    let mut buf = vec![0u8; BUF_SIZE];
    let copied: io::Result<()> = (|| loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
    })();
    drop(stdout);
    let mut child = child.lock().expect("child lock poisoned");
    if let Err(source) = copied {
        let _ = child.kill();
        let _ = finish(program.clone(), &mut child, errs);
        return Err(ChildError::Stream { program, source });
    }
    finish(program, &mut child, errs)
}

/// Kills a child when a cancellation token fires; stops watching when dropped.
struct KillOnCancel {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl KillOnCancel {
    fn watch(child: &Arc<Mutex<Child>>, cancel: &CancellationToken) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return KillOnCancel { stop: None };
        };
        let (child, cancel) = (Arc::downgrade(child), cancel.clone());
        runtime.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {
                    if let Some(child) = child.upgrade() {
                        let _ = child.lock().expect("child lock poisoned").kill();
                    }
                }
                _ = stopped => {}
            }
        });
        KillOnCancel { stop: Some(stop) }
    }
}

impl Drop for KillOnCancel {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A tool reading its stdin from us (pg_restore). Dropping it without [`StdinChild::close`]
/// kills the tool, so an aborted feed never looks like a complete input.
pub struct StdinChild {
    program: String,
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    errs: Option<JoinHandle<String>>,
    out: Option<JoinHandle<Vec<u8>>>,
}

impl StdinChild {
    /// Starts `cmd` with piped stdin.
    ///
    /// # Errors
    /// [`ChildError::Spawn`].
    pub fn spawn(mut cmd: Command) -> Result<Self, ChildError> {
        let (program, mut child) = spawn(&mut cmd, Stdio::piped(), Stdio::null())?;
        Ok(StdinChild {
            program,
            stdin: child.stdin.take(),
            errs: Some(drain_stderr(child.stderr.take())),
            child: Some(child),
            out: None,
        })
    }

    /// Starts `cmd` with piped stdin and its stdout kept (small outputs: `pg_restore -l`),
    /// handed back by [`StdinChild::close_with_output`].
    ///
    /// # Errors
    /// [`ChildError::Spawn`].
    pub fn spawn_with_output(mut cmd: Command) -> Result<Self, ChildError> {
        let (program, mut child) = spawn(&mut cmd, Stdio::piped(), Stdio::piped())?;
        let stdout = child.stdout.take();
        Ok(StdinChild {
            program,
            stdin: child.stdin.take(),
            errs: Some(drain_stderr(child.stderr.take())),
            child: Some(child),
            out: Some(std::thread::spawn(move || {
                let mut kept = Vec::new();
                if let Some(mut stdout) = stdout {
                    let _ = stdout.read_to_end(&mut kept);
                }
                kept
            })),
        })
    }

    /// [`StdinChild::close`], returning what the tool wrote to stdout too.
    ///
    /// # Errors
    /// [`ChildError::Failed`] with the tool's stderr.
    pub fn close_with_output(mut self) -> Result<(String, Vec<u8>), ChildError> {
        let out = self.out.take();
        let warnings = self.close()?;
        Ok((
            warnings,
            out.and_then(|h| h.join().ok()).unwrap_or_default(),
        ))
    }

    /// Writes input; when the tool has died, returns its exit and stderr as the error.
    ///
    /// # Errors
    /// [`ChildError::Failed`] when the tool stopped reading.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), ChildError> {
        let stdin = self.stdin.as_mut().expect("stdin open until close");
        match stdin.write_all(data) {
            Ok(()) => Ok(()),
            Err(source) => {
                self.stdin = None;
                let (mut child, errs) = (
                    self.child.take().expect("child"),
                    self.errs.take().expect("errs"),
                );
                match finish(self.program.clone(), &mut child, errs) {
                    Err(e) => Err(e),
                    Ok(_) => Err(ChildError::Stream {
                        program: self.program.clone(),
                        source,
                    }),
                }
            }
        }
    }

    /// Closes stdin (the tool sees a complete input) and waits for it.
    ///
    /// # Errors
    /// [`ChildError::Failed`] with the tool's stderr.
    pub fn close(mut self) -> Result<String, ChildError> {
        drop(self.stdin.take());
        let (mut child, errs) = (
            self.child.take().expect("child"),
            self.errs.take().expect("errs"),
        );
        finish(self.program.clone(), &mut child, errs)
    }
}

impl Drop for StdinChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Kill before closing stdin: the tool must never see EOF on a partial input.
            let _ = child.kill();
            drop(self.stdin.take());
            let _ = child.wait();
        }
    }
}

/// Builds a command for a client tool found in `bin_dir` (or on PATH), with an environment
/// cleared down to what such a tool needs: the process's own environment holds the store's
/// and other engines' secrets (`AWS_SECRET_ACCESS_KEY`, `CLICKHOUSE_PASSWORD`,
/// `VAULT_TOKEN`), and a client tool has no business with them. The caller adds the
/// connection settings (e.g. [`crate::engine::postgres::PgTarget::child_env`]).
pub fn tool(bin_dir: Option<&std::path::Path>, name: &str) -> Command {
    let program: OsString = match bin_dir {
        Some(dir) => dir.join(name).into_os_string(),
        None => name.into(),
    };
    let mut cmd = Command::new(program);
    cmd.env_clear();
    cmd.envs(std::env::vars_os().filter(|(k, _)| passes_to_tools(&k.to_string_lossy())));
    cmd
}

/// Variables a client tool may inherit: how to find programs and libraries, locale and
/// time zone, a temporary directory, and libpq's own settings (TLS files, service files,
/// options) except the password ones, which the caller sets explicitly.
fn passes_to_tools(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "HOME" | "LANG" | "LANGUAGE" | "TZ" | "TMPDIR" | "LD_LIBRARY_PATH"
    ) || name.starts_with("LC_")
        || (name.starts_with("PG") && !name.starts_with("PGPASSWORD"))
}

#[cfg(test)]
mod env_tests {
    use super::passes_to_tools;

    #[test]
    fn only_tool_settings_reach_client_tools() {
        for keep in [
            "PATH",
            "LC_ALL",
            "PGSSLMODE",
            "PGSSLROOTCERT",
            "PGHOST",
            "TZ",
        ] {
            assert!(passes_to_tools(keep), "{keep}");
        }
        for drop in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "CLICKHOUSE_PASSWORD",
            "VAULT_TOKEN",
            "DR_IDENTITY_FILE",
            "PGPASSWORD",
            "PGPASSWORD_FILE",
            "REDIS_PASSWORD",
        ] {
            assert!(!passes_to_tools(drop), "{drop}");
        }
    }
}
