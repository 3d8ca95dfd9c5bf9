//! Scratch databases of `worker drill`: `<db>__drill`, created with a comment that marks
//! them as the drill's own, and dropped after each drill. A database of that name without
//! the mark is someone else's and is never touched.

use super::{quote_ident, PgTarget};
use crate::engine::SourceFailure;

/// The comment that marks a scratch database as the drill's own.
pub const MARK: &str = "kube-dr drill scratch database: worker drill drops it after each drill";

/// Creates the scratch database `name` (it must end in [`crate::engine::scratch::SUFFIX`]); the
/// drill's own leftover of that name is dropped first.
///
/// # Errors
/// A name without the suffix, a database of that name without the drill's mark, connection
/// and permission errors (the role needs CREATEDB).
pub async fn claim(server: &PgTarget, name: &str) -> Result<(), SourceFailure> {
    crate::engine::scratch::check_scratch_name(name)?;
    let maintenance = server.connect("postgres").await?;
    let comment: Option<Option<String>> = maintenance
        .query_opt(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| server.query_error("looking up the scratch database", &e))?
        .map(|row| row.get(0));
    match comment {
        None => {}
        Some(Some(c)) if c == MARK => {
            tracing::warn!(database = name, server = %server, "dropping the leftover of an earlier drill");
            release(server, name).await?;
        }
        Some(_) => {
            return Err(format!(
                "database {name} exists on {server} and is not a drill's leftover (it lacks the drill's comment); the drill never touches it: rename or drop it yourself"
            )
            .into())
        }
    }
    // Two statements: CREATE DATABASE cannot share a transaction (a multi-statement
    // batch is one).
    let q = quote_ident(name);
    maintenance
        .batch_execute(&format!("CREATE DATABASE {q} TEMPLATE template0"))
        .await
        .map_err(|e| server.query_error("creating the scratch database", &e))?;
    maintenance
        .batch_execute(&format!("COMMENT ON DATABASE {q} IS '{MARK}'"))
        .await
        .map_err(|e| server.query_error("marking the scratch database", &e))?;
    Ok(())
}

/// Drops the scratch database `name` (closing its sessions), if it is there.
///
/// # Errors
/// A name without the suffix, connection and permission errors.
pub async fn release(server: &PgTarget, name: &str) -> Result<(), SourceFailure> {
    crate::engine::scratch::check_scratch_name(name)?;
    let maintenance = server.connect("postgres").await?;
    // WITH (FORCE) exists from PostgreSQL 13; older servers get the plain form.
    let q = quote_ident(name);
    if maintenance
        .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
        .await
        .is_err()
    {
        maintenance
            .batch_execute(&format!("DROP DATABASE IF EXISTS {q}"))
            .await
            .map_err(|e| server.query_error("dropping the scratch database", &e))?;
    }
    Ok(())
}
