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
