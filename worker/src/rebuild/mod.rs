//! Restoring many backups as one run: `kubectl dr restore --all` (the rebuild day) and
//! `worker drill` (the weekly proof that the rebuild would work). Both choose the newest
//! backup of every series, map each to a destination, check every part before anything is
//! touched, then restore them one engine after another in [`Engine::KNOWN`] order: Vault
//! (it holds every other secret), the cluster's objects, then the databases.
//!
//! A single `kubectl dr restore` goes through the same [`prepare`] and [`Prepared::run`],
//! so there is one order of work for one backup or for all of them: probe the destination,
//! verify the parts the engine needs, let the engine plan (and verify the parts the plan
//! adds), confirm, restore, compare counts.
//!
//! A single restore reads a part once when its engine rolls back a failed stream
//! ([`Checked::proof`]). The rebuild and the drill keep the pass before: their
//! [`Checked::whole_backup`] runs first, because a damaged part found in a later step must
//! stop the run before the earlier steps changed anything, and a rollback of one step
//! cannot undo another.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

pub mod run;
pub mod state;

use crate::catalog::{self, BackupRef, CatalogError, Engine, Filter, Manifest, Part};
pub use crate::engine::Step;
use crate::engine::{
    redact_url, registry, Confirm, Planned, RestoreCtx, RestoredCounts, Sink, SourceFailure,
    VerifiedParts,
};
use crate::pipeline::keys::Identities;
use crate::progress::{NoProgress, Progress};
use crate::store::ReadStore;
use crate::verify::{self, Verified, VerifyError};
pub use run::{Observer, Run, RunError};

/// Where a destination applies: every backup of an engine, or one target's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DestinationKey {
    /// The engine.
    pub engine: Engine,
    /// Only this target's backups (`ENGINE/TARGET=URL`).
    pub target: Option<String>,
}

impl fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(t) => write!(f, "{}/{t}", self.engine),
            None => write!(f, "{}", self.engine),
        }
    }
}

/// A malformed `--to ENGINE=URL` (or plan file entry).
#[derive(Debug, thiserror::Error)]
#[error("{given:?}: {reason} (expected ENGINE=URL or ENGINE/TARGET=URL, e.g. postgres=postgres://postgres@db:5432)")]
pub struct BadDestination {
    /// The text as given, without anything after `=` (a URL may hold a password).
    pub given: String,
    /// What is wrong.
    pub reason: String,
}

impl DestinationKey {
    /// Parses `ENGINE` or `ENGINE/TARGET`; the engine must be one this build restores.
    ///
    /// # Errors
    /// [`BadDestination`] for an unknown engine or an invalid target name.
    pub fn parse(text: &str) -> Result<Self, BadDestination> {
        let bad = |reason: String| BadDestination {
            given: text.to_string(),
            reason,
        };
        let (engine, target) = match text.split_once('/') {
            Some((e, t)) => (e, Some(t.to_string())),
            None => (text, None),
        };
        let engine = Engine::from(engine);
        if !engine.is_known() {
            return Err(bad(format!(
                "unknown engine; known engines: {}",
                Engine::known_names()
            )));
        }
        if let Some(t) = &target {
            catalog::validate_name("target", t).map_err(|e| bad(e.to_string()))?;
        }
        Ok(DestinationKey { engine, target })
    }

    /// True when `b` is of this engine (and target, when one is given).
    pub fn matches(&self, b: &BackupRef) -> bool {
        self.engine == *b.engine.as_str() && self.target.as_ref().is_none_or(|t| *t == b.target)
    }
}

/// Where each engine's (or target's) backups go: `--to ENGINE=URL` and `--to
/// ENGINE/TARGET=URL`, a target's entry winning over its engine's.
#[derive(Debug, Clone, Default)]
pub struct Destinations(BTreeMap<DestinationKey, String>);

impl Destinations {
    /// Adds `ENGINE[/TARGET]=URL`; a later entry for the same key replaces the earlier one
    /// (command-line entries are added after a plan file's).
    ///
    /// # Errors
    /// [`BadDestination`].
    pub fn add(&mut self, entry: &str) -> Result<(), BadDestination> {
        let (key, url) = entry.split_once('=').ok_or_else(|| BadDestination {
            given: entry.to_string(),
            reason: "no '='".into(),
        })?;
        self.insert(key, url)
    }

    /// Adds one entry given as key and URL (a plan file's map).
    ///
    /// # Errors
    /// [`BadDestination`].
    pub fn insert(&mut self, key: &str, url: &str) -> Result<(), BadDestination> {
        let parsed = DestinationKey::parse(key.trim())?;
        if url.trim().is_empty() {
            return Err(BadDestination {
                given: key.to_string(),
                reason: "empty URL".into(),
            });
        }
        self.0.insert(parsed, url.trim().to_string());
        Ok(())
    }

    /// The destination of one backup: its target's entry, else its engine's.
    pub fn of(&self, b: &BackupRef) -> Option<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k.matches(b))
            .max_by_key(|(k, _)| k.target.is_some())
            .map(|(_, v)| v.as_str())
    }

    /// The engines that have an entry.
    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.0.keys().map(|k| &k.engine)
    }

    /// True when nothing was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, for messages (URLs with their passwords replaced).
    pub fn describe(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={}", redact_url(v)))
            .collect()
    }
}

/// The position of an engine in a full restore: Vault, Kubernetes objects, PostgreSQL,
/// ClickHouse, Redis, command output; engines this build does not know come last.
pub fn restore_rank(engine: &Engine) -> usize {
    Engine::KNOWN
        .iter()
        .position(|e| e == engine)
        .unwrap_or(Engine::KNOWN.len())
}

/// The newest complete backup of every series matching `filter`, made before `before`
/// when given, in restore order ([`restore_rank`], then target).
///
/// # Errors
/// The store's listing and reading errors; [`CatalogError::NoBackup`] when nothing matches.
pub async fn latest_backups(
    store: &dyn ReadStore,
    filter: &Filter,
    before: Option<DateTime<Utc>>,
    trust: &catalog::Trust,
) -> Result<Vec<Manifest>, CatalogError> {
    let mut series: BTreeMap<(String, String), Vec<catalog::ScannedBackup>> = BTreeMap::new();
    for b in catalog::scan(store, filter).await? {
        if before.is_some_and(|t| b.backup.id.created_at() >= t) {
            continue;
        }
        series
            .entry((b.backup.engine.clone(), b.backup.target.clone()))
            .or_default()
            .push(b);
    }
    let mut out = Vec::new();
    for (_, candidates) in series {
        if let (Some(m), _) = catalog::newest_complete(store, candidates, trust).await? {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(CatalogError::NoBackup(match before {
            Some(t) => format!("{filter} made before {}", t.to_rfc3339()),
            None => filter.to_string(),
        }));
    }
    sort_for_restore(&mut out);
    Ok(out)
}

/// Sorts manifests into restore order.
pub fn sort_for_restore(manifests: &mut [Manifest]) {
    manifests.sort_by(|a, b| {
        (restore_rank(&a.engine), &a.target).cmp(&(restore_rank(&b.engine), &b.target))
    });
}

/// Why the backups cannot be turned into steps.
#[derive(Debug, thiserror::Error)]
pub enum StepsError {
    /// Chosen backups without a destination.
    #[error("no destination for {}; add --to ENGINE=URL (or ENGINE/TARGET=URL) for each, or leave them out with --engine/--target", .0.join(", "))]
    NoDestination(Vec<String>),
    /// The engine refuses the destination for the backup (a PostgreSQL URL that names one
    /// database for a backup of several).
    #[error(transparent)]
    Engine(SourceFailure),
}

/// Turns the chosen backups into steps, as their engines split them (one per backup,
/// except PostgreSQL: one per database, the globals with the first).
///
/// # Errors
/// [`StepsError`]: missing destinations (all named at once), an engine's refusal.
pub fn steps<'m>(
    manifests: &'m [Manifest],
    destinations: &Destinations,
) -> Result<Vec<Step<'m>>, StepsError> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for m in manifests {
        let Some(to) = destinations.of(&m.backup_ref()) else {
            missing.push(format!("{}/{}", m.engine, m.target));
            continue;
        };
        out.extend(registry::steps_of(m, to).map_err(StepsError::Engine)?);
    }
    if !missing.is_empty() {
        return Err(StepsError::NoDestination(missing));
    }
    Ok(out)
}

/// Parts already checked in this run, so a part shared by steps (or checked up front) is
/// read once.
#[derive(Default)]
pub struct Checked<'m> {
    done: Vec<Verified<'m>>,
}

impl<'m> Checked<'m> {
    /// The proof for `part`, and whether it is the promise to check it as it streams.
    /// With `one_pass` (its destination rolls back a failed stream): the check made
    /// earlier in this run if there was one, else that promise when its manifest recorded
    /// its header, else a check now. Without: as [`Checked::get`].
    ///
    /// # Errors
    /// As [`Checked::get`].
    pub async fn proof(
        &mut self,
        one_pass: bool,
        store: &dyn ReadStore,
        manifest: &'m Manifest,
        part: &'m Part,
        progress: &dyn Progress,
        say: &(dyn for<'s> Fn(&'s str) + Sync),
    ) -> Result<(Verified<'m>, bool), VerifyError> {
        if one_pass && self.find(manifest, part).is_none() {
            if let Some(v) = Verified::as_it_streams(manifest, part) {
                return Ok((v, true));
            }
        }
        Ok((self.get(store, manifest, part, progress, say).await?, false))
    }

    fn find(&self, manifest: &Manifest, part: &Part) -> Option<Verified<'m>> {
        self.done
            .iter()
            .find(|v| std::ptr::eq(v.manifest(), manifest) && v.part().name == part.name)
            .copied()
    }

    /// The proof for `part`, checking it first (every byte against the manifest) when it
    /// was not checked yet. `say` hears which part is read.
    ///
    /// # Errors
    /// [`VerifyError`]: a missing, truncated or corrupt object.
    pub async fn get(
        &mut self,
        store: &dyn ReadStore,
        manifest: &'m Manifest,
        part: &'m Part,
        progress: &dyn Progress,
        say: &(dyn for<'s> Fn(&'s str) + Sync),
    ) -> Result<Verified<'m>, VerifyError> {
        if let Some(v) = self.find(manifest, part) {
            return Ok(v);
        }
        say(&format!(
            "checking {} part {} ({} bytes)",
            manifest.backup_ref(),
            part.name,
            part.ciphertext_bytes
        ));
        let v = verify::check_before_restore(store, manifest, part, progress).await?;
        self.done.push(v);
        Ok(v)
    }

    /// Checks every part of `manifest`, and that `identities` open the backup (one part's
    /// age header: every part of a backup is encrypted to the same recipients, the
    /// manifest's); a wrong key fails here, before any destination is touched.
    ///
    /// # Errors
    /// [`VerifyError`], including [`VerifyError::WrongKey`].
    pub async fn whole_backup(
        &mut self,
        store: &dyn ReadStore,
        manifest: &'m Manifest,
        identities: &Identities,
        progress: &dyn Progress,
        say: &(dyn for<'s> Fn(&'s str) + Sync),
    ) -> Result<(), VerifyError> {
        let mut first = None;
        for part in &manifest.parts {
            let v = self.get(store, manifest, part, progress, say).await?;
            first.get_or_insert(v);
        }
        if let Some(v) = first {
            let (plain, bar) =
                verify::open_plaintext(store, v, identities, &crate::progress::NoProgress).await?;
            drop(plain);
            bar.finish();
        }
        Ok(())
    }
}

/// A step ready to run: destination probed, parts verified, the engine's plan made.
pub struct Prepared<'m> {
    /// The step.
    pub step: Step<'m>,
    restore: Box<dyn Planned>,
    parts: VerifiedParts<'m>,
    /// The engine's plan, for people.
    pub lines: Vec<String>,
    /// Set when the plan drops or replaces data.
    pub confirm: Option<Confirm>,
}

/// Prepares one step on a probed `sink`: verifies the parts the engine needs (through
/// `checked`), lets it plan against the destination (nothing is changed), and verifies the
/// parts its plan adds.
///
/// # Errors
/// A part that fails its check, the engine's refusal (a non-empty target without
/// `--clean`, a wrong key, bad flags).
pub async fn prepare<'m>(
    step: Step<'m>,
    sink: Box<dyn Sink>,
    checked: &mut Checked<'m>,
    ctx: RestoreCtx<'_>,
) -> Result<Prepared<'m>, SourceFailure> {
    let manifest = step.manifest;
    let (store, progress, say) = (ctx.store, ctx.progress, ctx.say);
    // Each part's proof, and whether it is the promise to check it as it streams.
    let mut proofs = Vec::new();
    for part in sink.first_parts(manifest)? {
        let one_pass = sink.rolls_back(part);
        proofs.push(
            checked
                .proof(one_pass, store, manifest, part, progress, say)
                .await?,
        );
    }
    let first = VerifiedParts::new(proofs.iter().map(|(v, _)| *v).collect())?;
    // The key before the plan: a wrong key must not first show what would be changed.
    let (plain, bar) =
        crate::verify::open_plaintext(store, first.lead(), ctx.identities, &NoProgress).await?;
    drop(plain);
    bar.finish();
    let plan = sink.plan(ctx, &first).await?;
    for part in plan.more_parts {
        if !proofs.iter().any(|(v, _)| v.part().name == part.name) {
            let one_pass = plan.restore.rolls_back(part);
            proofs.push(
                checked
                    .proof(one_pass, store, manifest, part, progress, say)
                    .await?,
            );
        }
    }
    // Only once the plan accepted the destination: a refusal must not come after a
    // promise about how the restore will run.
    for (v, _) in proofs.iter().filter(|(_, streams)| *streams) {
        say(&format!(
            "one pass: {} part {} ({} bytes) is checked as it streams; the restore rolls back if it fails",
            manifest.backup_ref(),
            v.part().name,
            v.part().ciphertext_bytes
        ));
    }
    let parts = VerifiedParts::new(proofs.into_iter().map(|(v, _)| v).collect())?;
    Ok(Prepared {
        step,
        restore: plan.restore,
        parts,
        lines: plan.lines,
        confirm: plan.confirm,
    })
}

impl Prepared<'_> {
    /// Runs the planned restore; returns the counts to compare.
    ///
    /// # Errors
    /// The engine's load errors; a part that fails its check while it streams.
    pub async fn run(self, ctx: RestoreCtx<'_>) -> Result<RestoredCounts, SourceFailure> {
        self.restore.restore(ctx, &self.parts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(engine: &str, target: &str) -> BackupRef {
        BackupRef {
            engine: engine.into(),
            target: target.into(),
            id: catalog::BackupId::new(Utc::now()),
        }
    }

    #[test]
    fn a_targets_destination_wins_over_its_engines() {
        let mut d = Destinations::default();
        d.add("postgres/prod=postgres://a").unwrap();
        d.add("postgres=postgres://b").unwrap();
        d.add("vault=http://v:8200").unwrap();
        assert_eq!(d.of(&backup("postgres", "prod")), Some("postgres://a"));
        assert_eq!(d.of(&backup("postgres", "stage")), Some("postgres://b"));
        assert_eq!(d.of(&backup("vault", "x")), Some("http://v:8200"));
        assert_eq!(d.of(&backup("redis", "x")), None);
        d.add("postgres=postgres://c").unwrap();
        assert_eq!(d.of(&backup("postgres", "stage")), Some("postgres://c"));
    }

    #[test]
    fn bad_destinations_are_refused_without_echoing_the_url() {
        for bad in [
            "postgres",
            "mysql=x://y",
            "postgres/Prod=x://y",
            "postgres= ",
        ] {
            let e = Destinations::default().add(bad).unwrap_err().to_string();
            assert!(e.contains("ENGINE=URL"), "{e}");
        }
        let e = DestinationKey::parse("pg").unwrap_err().to_string();
        assert!(e.contains("known engines"), "{e}");
        let mut d = Destinations::default();
        d.add("postgres=postgres://u:secret@h/db").unwrap();
        assert!(!d.describe().concat().contains("secret"));
    }

    #[test]
    fn engines_restore_in_the_rebuild_order() {
        let order: Vec<usize> = [
            "vault",
            "kubernetes",
            "postgres",
            "clickhouse",
            "redis",
            "command",
            "etcd",
        ]
        .iter()
        .map(|e| restore_rank(&Engine::from(*e)))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }
}
