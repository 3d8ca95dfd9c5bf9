//! Restoring the `globals` part (`pg_dumpall --globals-only`: roles, their memberships and
//! settings, tablespaces) with `psql -v ON_ERROR_STOP=1`, before a database whose owners
//! and grants need those roles (`--keep-owners`).
//!
//! A new cluster already has some roles (at least the one this restore connects as), and a
//! rerun has them all: `CREATE ROLE` of an existing role would stop psql. So the script is
//! filtered first: an existing role's `CREATE ROLE` is left out and reported; its `ALTER
//! ROLE` and `COMMENT ON ROLE` lines (attributes, settings) are applied only with
//! `--clean`, and never to the role this restore connects as (the operator's own role on
//! the new server). The backup holds no role passwords (`pg_dumpall --no-role-passwords`):
//! created roles have none until someone sets them. Existing tablespaces are skipped the same
//! way. The part is read whole (it is kilobytes) and checked against the manifest before
//! psql starts.

use std::collections::BTreeSet;

use super::restore::{RestoreError, RestoreOptions};
use super::PgTarget;
use crate::engine::child::{self, StdinChild};
use crate::verify::{finish_checked, Verified, VerifyError};

/// Largest globals part read (real ones are kilobytes; thousands of roles stay far below).
const MAX_GLOBALS_BYTES: u64 = 64 * 1024 * 1024;

/// What a globals restore did, for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GlobalsOutcome {
    /// Roles created.
    pub created: Vec<String>,
    /// Existing roles left as they were.
    pub skipped: Vec<String>,
    /// Existing roles whose attributes were reset to the backup's (`--clean`).
    pub updated: Vec<String>,
}

impl GlobalsOutcome {
    /// One line for people.
    pub fn describe(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut line = format!(
            "roles: created {}; existing and skipped {}",
            list(&self.created),
            list(&self.skipped)
        );
        if !self.updated.is_empty() {
            line.push_str(&format!(
                "; reset to the backup's attributes {}",
                list(&self.updated)
            ));
        }
        if !self.created.is_empty() {
            line.push_str(" (backups hold no role passwords: set them with ALTER ROLE … PASSWORD)");
        }
        line
    }
}

/// What exists on the server before the restore.
struct Existing {
    roles: BTreeSet<String>,
    tablespaces: BTreeSet<String>,
    current_user: String,
}

/// Reads an identifier at the start of `text` (quoted with `"`, or bare up to white space or
/// `;`); returns it unquoted and the rest of the text.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &rest[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = text
            .find(|c: char| c.is_whitespace() || c == ';')
            .unwrap_or(text.len());
        (end > 0).then(|| (text[..end].to_string(), &text[end..]))
    }
}

/// The filtered script and what it will do.
fn filter(sql: &str, existing: &Existing, clean: bool) -> (String, GlobalsOutcome, bool) {
    let mut out = String::with_capacity(sql.len());
    let mut outcome = GlobalsOutcome::default();
    let mut creates_tablespace = false;
    for line in sql.split_inclusive('\n') {
        let keep = if let Some(rest) = line.strip_prefix("CREATE ROLE ") {
            match identifier(rest) {
                Some((role, _)) if existing.roles.contains(&role) => {
                    if clean && role != existing.current_user {
                        outcome.updated.push(role);
                    } else {
                        outcome.skipped.push(role);
                    }
                    false
                }
                Some((role, _)) => {
                    outcome.created.push(role);
                    true
                }
                None => true,
            }
        } else if let Some(rest) = line
            .strip_prefix("ALTER ROLE ")
            .or_else(|| line.strip_prefix("COMMENT ON ROLE "))
        {
            match identifier(rest) {
                Some((role, _)) if existing.roles.contains(&role) => {
                    clean && role != existing.current_user
                }
                _ => true,
            }
        } else if let Some(rest) = line.strip_prefix("CREATE TABLESPACE ") {
            match identifier(rest) {
                Some((space, _)) if existing.tablespaces.contains(&space) => false,
                _ => {
                    creates_tablespace = true;
                    true
                }
            }
        } else {
            true
        };
        if keep {
            out.push_str(line);
        }
    }
    (out, outcome, creates_tablespace)
}

/// Restores a verified globals part into the server of `target`.
///
/// # Errors
/// Wrong key, a part that fails its check (nothing run then), connection errors, psql
/// failing (in one transaction unless the script creates tablespaces, which cannot run in
/// one).
pub async fn restore(
    target: &PgTarget,
    verified: Verified<'_>,
    opts: &RestoreOptions,
    ctx: crate::engine::RestoreCtx<'_>,
) -> Result<GlobalsOutcome, RestoreError> {
    let (manifest, part) = (verified.manifest(), verified.part());
    let backup = manifest.backup_ref().to_string();
    if part.plaintext_bytes > MAX_GLOBALS_BYTES {
        return Err(VerifyError::BadContent {
            backup,
            part: part.name.clone(),
            reason: format!(
                "a globals part of {} bytes is not one",
                part.plaintext_bytes
            ),
        }
        .into());
    }
    let (mut plain, bar) = ctx.open(verified).await?;
    let part_owned = part.clone();
    let sql = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, VerifyError> {
        let mut sql = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = plain
                .read_chunk(&mut buf)
                .map_err(|cause| VerifyError::Undecodable {
                    backup: backup.clone(),
                    part: part_owned.name.clone(),
                    cause,
                })?;
            if n == 0 {
                break;
            }
            sql.extend_from_slice(&buf[..n]);
            if sql.len() as u64 > MAX_GLOBALS_BYTES {
                return Err(VerifyError::PlaintextSize {
                    backup,
                    part: part_owned.name.clone(),
                    expected: part_owned.plaintext_bytes,
                    found: sql.len() as u64,
                });
            }
        }
        finish_checked(plain, &backup, &part_owned)?;
        Ok(sql)
    })
    .await
    .expect("globals thread panicked")?;
    bar.finish();
    let sql = String::from_utf8_lossy(&sql);

    let client = target.connect("postgres").await?;
    let names = |query: &'static str, what: &'static str| {
        let client = &client;
        async move {
            Ok::<BTreeSet<String>, RestoreError>(
                client
                    .query(query, &[])
                    .await
                    .map_err(|e| target.query_error(what, &e))?
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect(),
            )
        }
    };
    let existing = Existing {
        roles: names("SELECT rolname::text FROM pg_roles", "listing roles").await?,
        tablespaces: names(
            "SELECT spcname::text FROM pg_tablespace",
            "listing tablespaces",
        )
        .await?,
        current_user: client
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(|e| target.query_error("reading current_user", &e))?
            .get(0),
    };
    let (script, outcome, creates_tablespace) = filter(&sql, &existing, opts.clean);

    let mut cmd = child::tool(opts.bin_dir.as_deref(), "psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--no-password",
        "-d",
        "postgres",
    ]);
    if !creates_tablespace {
        cmd.arg("--single-transaction");
    }
    cmd.envs(target.child_env("postgres"));
    tokio::task::spawn_blocking(move || -> Result<(), RestoreError> {
        let mut psql = StdinChild::spawn(cmd).map_err(RestoreError::Globals)?;
        psql.write_all(script.as_bytes())
            .map_err(RestoreError::Globals)?;
        let warnings = psql.close().map_err(RestoreError::Globals)?;
        if !warnings.is_empty() {
            tracing::info!(psql = %warnings, "psql notices while restoring the globals");
        }
        Ok(())
    })
    .await
    .expect("psql thread panicked")?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--\n-- Roles\n--\n\nCREATE ROLE app;\nALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'old';\nCREATE ROLE \"Odd \"\"one\"\"\";\nALTER ROLE \"Odd \"\"one\"\"\" WITH NOLOGIN;\nCOMMENT ON ROLE app IS 'the app';\n\nGRANT app TO \"Odd \"\"one\"\"\" GRANTED BY postgres;\nCREATE TABLESPACE fast OWNER postgres LOCATION '/ssd';\n";

    fn existing(roles: &[&str]) -> Existing {
        Existing {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            tablespaces: BTreeSet::new(),
            current_user: "postgres".into(),
        }
    }

    #[test]
    fn existing_roles_are_skipped_and_new_ones_created() {
        let (sql, outcome, tablespace) = filter(DUMP, &existing(&["postgres", "app"]), false);
        assert_eq!(outcome.created, ["Odd \"one\""]);
        assert_eq!(outcome.skipped, ["app", "postgres"]);
        assert!(outcome.updated.is_empty());
        assert!(!sql.contains("CREATE ROLE app;"));
        assert!(!sql.contains("ALTER ROLE app"));
        assert!(!sql.contains("COMMENT ON ROLE app"));
        assert!(!sql.contains("PASSWORD 'old'"));
        assert!(sql.contains("CREATE ROLE \"Odd \"\"one\"\"\";"));
        assert!(sql.contains("GRANT app TO"));
        assert!(tablespace);
    }

    #[test]
    fn clean_resets_existing_roles_but_never_the_connecting_one() {
        let (sql, outcome, _) = filter(DUMP, &existing(&["postgres", "app"]), true);
        assert_eq!(outcome.updated, ["app"]);
        assert_eq!(outcome.skipped, ["postgres"]);
        assert!(sql.contains("ALTER ROLE app WITH NOSUPERUSER"));
        assert!(!sql.contains("PASSWORD 'old'"), "{sql}");
    }

    #[test]
    fn identifiers_quoted_or_bare() {
        assert_eq!(identifier("app;").unwrap().0, "app");
        assert_eq!(identifier("\"a \"\"b\"\"\" WITH").unwrap().0, "a \"b\"");
        assert!(identifier("\"open").is_none());
    }
}
