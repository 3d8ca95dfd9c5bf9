//! The state file of `kubectl dr restore --all`: the backups a run chose (a resumed run
//! restores the same ones, whatever was backed up since) and the steps it verified, so
//! `--resume` continues after the step that failed. Written beside itself and renamed: a
//! crash never leaves half a file. Read with limits: it is input a person may have edited.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::BackupRef;
use crate::engine::Step;

/// Largest plan or state file read: both are a few kilobytes; a bigger one is a mistake
/// (`--plan /dev/zero`) and must not exhaust memory.
pub const MAX_SMALL_FILE: u64 = 1024 * 1024;

/// Why a state (or plan) file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file cannot be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What it was doing (`reading the state file`).
        what: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what it should be; the message says what to do.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(text: String) -> StateError {
    StateError::Invalid(text)
}

/// Reads a small regular file whole: a device, FIFO or directory is refused before it is
/// opened, and at most [`MAX_SMALL_FILE`] bytes are read.
///
/// # Errors
/// [`StateError`]: unreadable, not a regular file, too big.
pub fn read_small_file(path: &Path, what: &str) -> Result<String, StateError> {
    use std::io::Read;
    let io = |source| StateError::Io {
        what: format!("reading the {what}"),
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "the {what} {} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_SMALL_FILE {
        return Err(invalid(format!(
            "the {what} {} is {} bytes, over the {MAX_SMALL_FILE}-byte limit",
            path.display(),
            meta.len()
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SMALL_FILE + 1).read_to_string(&mut text))
        .map_err(io)?;
    if text.len() as u64 > MAX_SMALL_FILE {
        return Err(invalid(format!(
            "the {what} {} grew past the {MAX_SMALL_FILE}-byte limit while it was read",
            path.display()
        )));
    }
    Ok(text)
}

/// What `--resume` needs: the backups the run chose and the steps already verified.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    version: u32,
    /// The store of the run.
    pub store: String,
    /// When the first run of it started.
    pub started_at: DateTime<Utc>,
    /// The chosen backups (`engine/target/id`), in restore order.
    pub backups: Vec<String>,
    /// The steps verified so far.
    pub done: Vec<DoneStep>,
    /// The first line of the error that stopped the last run, if one did.
    #[serde(default)]
    pub failed: Option<String>,
}

/// One verified step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneStep {
    /// [`Step::key`].
    pub step: String,
    /// [`Step::shown_to`].
    pub destination: String,
    /// Bytes read from the store.
    pub stored_bytes: u64,
    /// How long it took.
    pub seconds: f64,
    /// When it was verified.
    pub finished_at: DateTime<Utc>,
    /// Tables compared.
    pub tables: usize,
}

/// A state and where it lives.
#[derive(Debug)]
pub struct StateFile {
    /// The state.
    pub state: State,
    /// Its file.
    pub path: PathBuf,
}

impl StateFile {
    /// The state of a run on `store`: the one recorded in `path` with `resume`, else a new
    /// one (refused while `path` holds an unfinished run).
    ///
    /// # Errors
    /// [`StateError`]: a state of another store, an unfinished run without `resume`, a file
    /// that does not parse or was altered.
    pub fn begin(path: &Path, store: &str, resume: bool) -> Result<StateFile, StateError> {
        let shown = path.display();
        let state = if resume {
            let s = State::load(path)?;
            if s.store != store {
                return Err(invalid(format!(
                    "the state file {shown} is of a run on {}, not {store}",
                    s.store
                )));
            }
            s
        } else {
            if let Ok(old) = State::load(path) {
                if old.failed.is_some() {
                    return Err(invalid(format!(
                        "{shown} holds an unfinished run started {} ({} step(s) verified, then: {}); continue it with --resume, or remove the file to start over",
                        old.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        old.done.len(),
                        old.failed.as_deref().unwrap_or("?")
                    )));
                }
            }
            State {
                version: 1,
                store: store.to_string(),
                started_at: Utc::now(),
                backups: Vec::new(),
                done: Vec::new(),
                failed: None,
            }
        };
        Ok(StateFile {
            state,
            path: path.to_path_buf(),
        })
    }

    /// The backups a resumed run chose, in restore order.
    ///
    /// # Errors
    /// [`StateError::Invalid`] for an entry that is not `engine/target/id`.
    pub fn chosen(&self) -> Result<Vec<BackupRef>, StateError> {
        self.state
            .backups
            .iter()
            .map(|text| {
                parse_ref(text).map_err(|e| invalid(format!("in {}: {e}", self.path.display())))
            })
            .collect()
    }

    /// Written next to itself and renamed, so a crash never leaves half a file.
    ///
    /// # Errors
    /// [`StateError::Io`] (a full disk).
    pub fn save(&self) -> Result<(), StateError> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&self.state).expect("state serializes"),
        )
        .and_then(|()| std::fs::rename(&tmp, &self.path))
        .map_err(|source| StateError::Io {
            what: "writing the state file".into(),
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Refuses a state whose done steps are not steps of this run (a step that never ran
    /// must not be reported verified), or were verified into another destination.
    ///
    /// # Errors
    /// [`StateError::Invalid`], saying which step and why.
    pub fn check_done(&self, steps: &[Step<'_>]) -> Result<(), StateError> {
        let path = self.path.display();
        for d in &self.state.done {
            let Some(step) = steps.iter().find(|s| s.key() == d.step) else {
                return Err(invalid(format!(
                    "the state file {path} marks step {} done, but it is no step of the run's backups ({}): it was altered or belongs to another run; remove it to start over",
                    d.step,
                    self.state.backups.join(", ")
                )));
            };
            if step.shown_to() != d.destination {
                return Err(invalid(format!(
                    "the state file {path} says step {} was verified into {}, but this run restores it to {}; remove the file to start over, or give the same destinations",
                    d.step,
                    d.destination,
                    step.shown_to()
                )));
            }
            if d.finished_at < self.state.started_at || d.finished_at > Utc::now() {
                return Err(invalid(format!(
                    "the state file {path} dates step {} outside its run ({}): it was altered; remove it to start over",
                    d.step,
                    d.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
        Ok(())
    }

    /// The record of step `key`, when an earlier run verified it.
    pub fn done(&self, key: &str) -> Option<&DoneStep> {
        self.state.done.iter().find(|d| d.step == key)
    }
}

impl State {
    fn load(path: &Path) -> Result<State, StateError> {
        let text = read_small_file(path, "state file").map_err(|e| match e {
            StateError::Io { what, path, source } => invalid(format!(
                "--resume continues a run started with --all from this directory; pass --state to name another file: {what} {path}: {source}"
            )),
            other => other,
        })?;
        let state: State = serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "the state file {} does not parse: {e}",
                path.display()
            ))
        })?;
        if state.version != 1 {
            return Err(invalid(format!(
                "the state file {} has version {}, not 1",
                path.display(),
                state.version
            )));
        }
        let twice = |items: Vec<&str>| {
            let mut seen = std::collections::BTreeSet::new();
            items
                .into_iter()
                .find(|i| !seen.insert(*i))
                .map(str::to_string)
        };
        if let Some(b) = twice(state.backups.iter().map(String::as_str).collect()) {
            return Err(invalid(format!(
                "the state file {} lists backup {b} twice: it was altered; remove it to start over",
                path.display()
            )));
        }
        if let Some(step) = twice(state.done.iter().map(|d| d.step.as_str()).collect()) {
            return Err(invalid(format!(
                "the state file {} marks step {step} done twice: it was altered; remove it to start over",
                path.display()
            )));
        }
        Ok(state)
    }
}

fn parse_ref(text: &str) -> Result<BackupRef, String> {
    let mut it = text.splitn(3, '/');
    match (it.next(), it.next(), it.next()) {
        (Some(engine), Some(target), Some(id)) => Ok(BackupRef {
            engine: engine.to_string(),
            target: target.to_string(),
            id: id.parse().map_err(|e| format!("{text:?}: {e}"))?,
        }),
        _ => Err(format!("{text:?} is not ENGINE/TARGET/ID")),
    }
}
