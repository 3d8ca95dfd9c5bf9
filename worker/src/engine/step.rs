//! One restore of a run, as the backup's engine splits it: most backups are one step, a
//! PostgreSQL backup of several databases is one step per database. The run
//! ([`crate::rebuild`]) knows steps, never engines; each engine says how its backups split
//! ([`super::registry::steps_of`]) and what a step means to it (through [`RestoreCommon`]).

use crate::catalog::{Manifest, Part};

use super::{redact_url, RestoreCommon};

/// How a restore is run, for the engines that behave differently in a run of many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunKind {
    /// `kubectl dr restore`: one backup, its flags all meant for it.
    #[default]
    Single,
    /// `kubectl dr restore --all`: every engine's flags at once, a summary on stdout.
    Rebuild,
    /// `worker drill`: scratch destinations the engine names itself.
    Drill,
}

/// One restore of a run: a backup (or the part of it its engine calls a scope, e.g. one
/// PostgreSQL database) and its destination.
#[derive(Debug, Clone)]
pub struct Step<'m> {
    /// The backup.
    pub manifest: &'m Manifest,
    /// The part of the backup this step restores, as its engine split it (a database), or
    /// `None` for all of it.
    pub scope: Option<String>,
    /// The destination URL as given (may hold a password: show [`Step::shown_to`]).
    pub to: String,
    /// The first step of its backup: it also restores what the backup's steps share (a
    /// PostgreSQL backup's globals).
    pub first: bool,
}

impl<'m> Step<'m> {
    /// The whole backup to `to`.
    pub fn whole(manifest: &'m Manifest, to: &str) -> Self {
        Step {
            manifest,
            scope: None,
            to: to.to_string(),
            first: true,
        }
    }

    /// A stable name for the step (state files, reports): `engine/target/id[/scope]`.
    pub fn key(&self) -> String {
        let b = self.manifest.backup_ref();
        match &self.scope {
            Some(scope) => format!("{b}/{}", super::encode_name(scope)),
            None => b.to_string(),
        }
    }

    /// The destination, safe to show.
    pub fn shown_to(&self) -> String {
        redact_url(&self.to)
    }

    /// Bytes this step reads from the store.
    pub fn stored_bytes(&self) -> u64 {
        self.parts().map(|p| p.ciphertext_bytes).sum()
    }

    /// The parts this step reads: its scope's and, on the first step, the parts outside
    /// every scope (a PostgreSQL backup's globals); every part when it has no scope.
    pub fn parts(&self) -> impl Iterator<Item = &'m Part> + '_ {
        self.manifest
            .parts
            .iter()
            .filter(move |p| match &self.scope {
                Some(scope) => {
                    p.database.as_deref() == Some(scope) || (self.first && p.database.is_none())
                }
                None => true,
            })
    }

    /// The flags common to every engine, for this step.
    pub fn common(
        &self,
        clean: bool,
        max_diff: crate::verify::MaxDiff,
        run: RunKind,
    ) -> RestoreCommon {
        RestoreCommon {
            to: self.to.clone(),
            database: self.scope.clone(),
            clean,
            max_diff,
            run,
            first: self.first,
        }
    }
}
