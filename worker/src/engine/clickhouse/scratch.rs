//! Scratch databases of `worker drill`: `<db>__drill`, each created with an empty marker
//! table that says it is the drill's own (old servers have no database comments), and
//! dropped after each drill. A database of that name without the marker is never touched.

use super::{quote_ident, quote_str, ChClient};
use crate::engine::SourceFailure;

/// The marker table inside every scratch database.
pub const MARK_TABLE: &str = "kube_dr_drill_scratch";

/// Creates the scratch database `name` (it must end in [`crate::engine::scratch::SUFFIX`]) with its
/// marker; the drill's own leftover of that name is dropped first.
///
/// # Errors
/// A name without the suffix, a database of that name without the marker, server errors.
pub async fn claim(client: &ChClient, name: &str) -> Result<(), SourceFailure> {
    crate::engine::scratch::check_scratch_name(name)?;
    let exists = !client
        .rows(
            "looking up the scratch database",
            &format!(
                "SELECT name FROM system.databases WHERE name = {}",
                quote_str(name)
            ),
        )
        .await?
        .is_empty();
    if exists {
        let marked = !client
            .rows(
                "looking for the drill's marker",
                &format!(
                    "SELECT name FROM system.tables WHERE database = {} AND name = {}",
                    quote_str(name),
                    quote_str(MARK_TABLE)
                ),
            )
            .await?
            .is_empty();
        if !marked {
            return Err(format!(
                "database {name} exists on {} and is not a drill's leftover (no {MARK_TABLE} table in it); the drill never touches it: rename or drop it yourself",
                client.addr()
            )
            .into());
        }
        tracing::warn!(database = name, server = %client.addr(), "dropping the leftover of an earlier drill");
        release(client, name).await?;
    }
    let q = quote_ident(name);
    client
        .execute(
            "creating the scratch database",
            &format!("CREATE DATABASE {q}"),
        )
        .await?;
    client
        .execute(
            "marking the scratch database",
            &format!("CREATE TABLE {q}.{MARK_TABLE} (created DateTime) ENGINE = TinyLog"),
        )
        .await?;
    Ok(())
}

/// Drops the scratch database `name`, if it is there.
///
/// # Errors
/// A name without the suffix, server errors.
pub async fn release(client: &ChClient, name: &str) -> Result<(), SourceFailure> {
    crate::engine::scratch::check_scratch_name(name)?;
    client
        .execute(
            "dropping the scratch database",
            &format!("DROP DATABASE IF EXISTS {}", quote_ident(name)),
        )
        .await?;
    Ok(())
}

/// The scratch databases of one drill: every database of the backup's schema, claimed
/// together (one step restores them all).
struct ScratchDbs {
    client: ChClient,
    names: Vec<String>,
    claimed: Vec<String>,
}

#[async_trait::async_trait]
impl crate::engine::scratch::Claim for ScratchDbs {
    async fn claim(&mut self) -> Result<(), SourceFailure> {
        for name in &self.names {
            claim(&self.client, name).await?;
            self.claimed.push(name.clone());
        }
        Ok(())
    }

    async fn release(&mut self) -> Result<(), SourceFailure> {
        let mut dropped = Ok(());
        for name in std::mem::take(&mut self.claimed) {
            dropped = crate::engine::scratch::both(dropped, release(&self.client, &name).await);
        }
        dropped
    }
}

/// A drill of `manifest` on the server `url`: one step that restores every database of the
/// schema under its scratch name (`<db>__drill`, empty ones too: nothing may be created
/// under a real name), Replicated engines converted unless `--replicated` says otherwise.
///
/// # Errors
/// A backup without a schema part, a schema that fails its check, a bad URL.
pub async fn drill_steps<'m>(
    manifest: &'m crate::catalog::Manifest,
    url: &str,
    flags: &crate::engine::registry::RestoreFlags,
    ctx: crate::engine::RestoreCtx<'_>,
) -> Result<Vec<crate::engine::scratch::ScratchStep<'m>>, SourceFailure> {
    use crate::engine::scratch::{scratch_name, ScratchStep};
    let client = ChClient::new(&super::ChTarget::from_url(url)?)?;
    let schema_part = manifest
        .part_of(&crate::catalog::PartFormat::ClickhouseSchema)
        .ok_or_else(|| format!("backup {} has no schema part", manifest.backup_ref()))?;
    let schema_v =
        crate::verify::check_before_restore(ctx.store, manifest, schema_part, ctx.progress).await?;
    let schema =
        super::restore::read_schema(ctx.store, schema_v, ctx.identities, ctx.progress).await?;
    let mut flags = flags.clone();
    flags.clickhouse.database_map = schema
        .databases
        .iter()
        .map(|d| (d.name.clone(), scratch_name(&d.name)))
        .collect();
    if flags.clickhouse.replicated.is_none() {
        flags.clickhouse.replicated = Some(super::sink::ReplicatedArg::Convert);
    }
    let names = flags
        .clickhouse
        .database_map
        .iter()
        .map(|(_, scratch)| scratch.clone())
        .collect();
    Ok(vec![ScratchStep {
        step: crate::engine::Step::whole(manifest, url),
        flags,
        claim: Box::new(ScratchDbs {
            client,
            names,
            claimed: Vec::new(),
        }),
    }])
}
