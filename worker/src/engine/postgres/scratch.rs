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

/// A scratch database of one drill step.
struct ScratchDb {
    server: PgTarget,
    name: String,
    claimed: bool,
}

#[async_trait::async_trait]
impl crate::engine::scratch::Claim for ScratchDb {
    async fn claim(&mut self) -> Result<(), SourceFailure> {
        claim(&self.server, &self.name).await?;
        self.claimed = true;
        Ok(())
    }

    async fn release(&mut self) -> Result<(), SourceFailure> {
        if !std::mem::take(&mut self.claimed) {
            return Ok(());
        }
        release(&self.server, &self.name).await
    }
}

/// A drill of `manifest` on the server `url`: one step per database, each into its scratch
/// database (`<db>__drill`), never the roles of its globals part.
///
/// # Errors
/// A URL that names a database (the drill names its own), a flag a drill cannot honour.
pub fn drill_steps<'m>(
    manifest: &'m crate::catalog::Manifest,
    url: &str,
    flags: &crate::engine::registry::RestoreFlags,
) -> Result<Vec<crate::engine::scratch::ScratchStep<'m>>, SourceFailure> {
    use crate::engine::scratch::{scratch_name, ScratchStep, SUFFIX};
    let server = PgTarget::from_url(url)?;
    if let Some(db) = &server.dbname {
        return Err(format!(
            "the drill's PostgreSQL destination names database {db:?}; it restores only into scratch databases it names itself (<database>{SUFFIX}): give the server without a database (postgres://user@host:5432)"
        )
        .into());
    }
    let mut flags = flags.clone();
    flags.postgres.globals = false;
    let mut out = Vec::new();
    for db in manifest.databases() {
        let name = scratch_name(db);
        out.push(ScratchStep {
            step: crate::engine::Step {
                manifest,
                scope: Some(db.to_string()),
                to: scratch_url(url, &name)?,
                first: false,
            },
            flags: flags.clone(),
            claim: Box::new(ScratchDb {
                server: server.clone(),
                name,
                claimed: false,
            }),
        });
    }
    Ok(out)
}

/// `url` (a server without a database) naming the scratch database `scratch`, which is
/// percent-encoded: a `%` or `/` in a database name must not make the URL name another
/// database. The URL is read back to prove it names exactly the database claimed.
///
/// # Errors
/// A URL that does not parse, or that would name another database.
fn scratch_url(url: &str, scratch: &str) -> Result<String, SourceFailure> {
    let mut out = url::Url::parse(url)?;
    out.path_segments_mut()
        .map_err(|()| format!("{url} cannot name a database"))?
        .clear()
        .push(scratch);
    let named = PgTarget::from_url(out.as_str())?.dbname;
    if named.as_deref() != Some(scratch) {
        return Err(format!(
            "the scratch URL names database {named:?}, not {scratch:?}, the one the drill claimed; nothing was restored"
        )
        .into());
    }
    Ok(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scratch::scratch_name;

    #[test]
    fn scratch_urls_name_exactly_the_claimed_database() {
        for db in ["app", "q%61", "a/b", "x?y#z", "sp ace", "ünï"] {
            let scratch = scratch_name(db);
            let url = scratch_url("postgres://u@127.0.0.1:5432", &scratch).unwrap();
            let named = PgTarget::from_url(&url).unwrap().dbname;
            assert_eq!(named.as_deref(), Some(scratch.as_str()), "{db}: {url}");
        }
    }
}
