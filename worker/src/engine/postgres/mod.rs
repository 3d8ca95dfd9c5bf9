//! PostgreSQL: `pg_dump -Fc` per database, whole or split into sections with `--jobs` (plus
//! `pg_dumpall --globals-only` on request), exact row counts taken in the dump's own
//! snapshot, and restores through `pg_restore`.
//!
//! - [`dump`]: the backup side (run by `worker backup postgres`).
//! - [`restore`]: planning and running a restore (run by `kubectl dr restore`).
//! - [`count_tables`]: the exact counts both sides compare.
//!
//! Connection settings come from the libpq environment (`PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`) or a `postgres://` URL, and reach the client tools only
//! through their environment: a password never appears in argv, logs or messages.

pub mod dump;
pub mod globals;
pub mod restore;
pub mod scratch;
pub mod sink;
pub mod source;
pub mod wal;

use std::fmt;
use std::path::PathBuf;

use tokio_postgres::{Client, NoTls};

use crate::catalog::TableCount;

/// Errors talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No connection (address, credentials, TLS).
    #[error("cannot connect to {target}: {detail}; check the host, port, user and password (PGPASSWORD or PGPASSWORD_FILE)")]
    Connect {
        /// The server.
        target: String,
        /// What the server or the system said.
        detail: String,
    },
    /// A query failed.
    #[error("{what} on {target} failed: {detail}")]
    Query {
        /// What was being done or read.
        what: &'static str,
        /// The server.
        target: String,
        /// What the server or the system said.
        detail: String,
    },
    /// The `--to` URL does not parse.
    #[error(
        "invalid PostgreSQL URL {url:?}: {reason} (expected postgres://user@host:port/database)"
    )]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The password file cannot be read.
    #[error("cannot read the password file {}: {cause}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// No database to connect to.
    #[error("no database given: pass --database or set PGDATABASE")]
    NoDatabase,
}

/// Where a PostgreSQL server is and who we are on it. The password is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    password: Option<String>,
    /// Database named in the URL, if any.
    pub dbname: Option<String>,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({self})")
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}@{}:{}", self.user, self.host, self.port)?;
        if let Some(db) = &self.dbname {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `PGPASSWORD`, else the file named by `PGPASSWORD_FILE` (a mounted Secret).
fn password_from_env() -> Result<Option<String>, PgError> {
    if let Some(p) = env("PGPASSWORD") {
        return Ok(Some(p));
    }
    match env("PGPASSWORD_FILE") {
        Some(path) => std::fs::read_to_string(&path)
            .map(|p| Some(p.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|cause| PgError::PasswordFile {
                path: path.into(),
                cause,
            }),
        None => Ok(None),
    }
}

impl PgTarget {
    /// Reads the libpq environment, with libpq's defaults.
    ///
    /// # Errors
    /// An unreadable `PGPASSWORD_FILE`.
    pub fn from_env() -> Result<Self, PgError> {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".into());
        Ok(PgTarget {
            host: env("PGHOST").unwrap_or_else(|| "localhost".into()),
            port: env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432),
            user,
            password: password_from_env()?,
            dbname: env("PGDATABASE"),
        })
    }

    /// Parses `postgres://user[:password]@host[:port][/database]`. Without a password in the
    /// URL (the recommended form), `PGPASSWORD` / `PGPASSWORD_FILE` supply it.
    ///
    /// # Errors
    /// [`PgError::BadUrl`] for anything else.
    pub fn from_url(text: &str) -> Result<Self, PgError> {
        let bad = |reason: &str| PgError::BadUrl {
            url: crate::engine::redact_url(text),
            reason: reason.to_string(),
        };
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("the scheme must be postgres://"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("bad percent-encoding"));
        let user = if url.username().is_empty() {
            env("PGUSER").unwrap_or_else(|| "postgres".into())
        } else {
            decode(url.username())?
        };
        let password = match url.password() {
            Some(p) => Some(decode(p)?),
            None => password_from_env()?,
        };
        let path = url.path().trim_start_matches('/');
        Ok(PgTarget {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: url.port().unwrap_or(5432),
            user,
            password,
            dbname: if path.is_empty() {
                None
            } else {
                Some(decode(path)?)
            },
        })
    }

    /// The same server, another database.
    pub fn with_dbname(&self, db: &str) -> Self {
        PgTarget {
            dbname: Some(db.to_string()),
            ..self.clone()
        }
    }

    fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(db)
            .application_name("kube-dr")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// Connects to `db` on this server.
    ///
    /// # Errors
    /// [`PgError::Connect`] with the server's reason.
    pub async fn connect(&self, db: &str) -> Result<Client, PgError> {
        let connect_error = |detail: String| PgError::Connect {
            target: self.with_dbname(db).to_string(),
            detail,
        };
        // tokio-postgres' own timeout covers the TCP connect only; the startup handshake
        // with a server that never answers would wait forever.
        let (client, conn) = tokio::time::timeout(
            crate::engine::connect_timeout(),
            self.config(db).connect(NoTls),
        )
        .await
        .map_err(|_| connect_error(crate::engine::silent_server("PostgreSQL")))?
        .map_err(|e| connect_error(detail(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        });
        Ok(client)
    }

    /// Checks that a PostgreSQL server answers at this address and accepts our credentials,
    /// before any work depends on it (a restore decrypts nothing until this passed). A
    /// database that does not exist yet is fine: the server answered.
    ///
    /// # Errors
    /// [`PgError::Connect`] naming the address and what to check.
    pub async fn probe(&self, db: &str) -> Result<(), PgError> {
        match self.connect(db).await {
            Ok(_) => Ok(()),
            Err(PgError::Connect { detail, .. })
                if detail.contains("does not exist") && detail.contains("database") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Environment for pg_dump / pg_restore: connection settings travel here, never in argv.
    pub fn child_env(&self, db: &str) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", db.to_string()),
            ("PGAPPNAME", "kube-dr".to_string()),
        ];
        if let Some(p) = &self.password {
            v.push(("PGPASSWORD", p.clone()));
        }
        v
    }

    /// A [`PgError::Query`] for this server.
    pub fn query_error(&self, what: &'static str, e: &tokio_postgres::Error) -> PgError {
        PgError::Query {
            what,
            target: self.to_string(),
            detail: detail(e),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The server's own words for an error, without tokio-postgres' generic prefix.
pub fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s = format!("{s}: {text}");
        }
        src = inner.source();
    }
    s
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Tables whose rows a dump carries and a restore brings back: ordinary tables (leaf
/// partitions included, partitioned parents excluded so nothing counts twice) and
/// populated materialized views, outside system schemas, not owned by an extension, not
/// temporary.
pub(crate) const LIST_TABLES: &str = "
SELECT n.nspname::text, c.relname::text, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND c.relpersistence <> 't'
  AND (c.relkind <> 'm' OR c.relispopulated)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2";

/// Exact row counts of every user table, in the client's current transaction (and so in
/// its snapshot, when the caller opened one).
///
/// # Errors
/// [`PgError::Query`].
pub async fn count_tables(client: &Client, target: &PgTarget) -> Result<Vec<TableCount>, PgError> {
    // A count waits behind an ACCESS EXCLUSIVE lock (a migration, a VACUUM FULL): fail
    // after five minutes instead of hanging the backup or the check. Counting itself may
    // take long on big tables; hours are allowed.
    client
        .batch_execute("SET lock_timeout = '5min'; SET statement_timeout = '6h'")
        .await
        .map_err(|e| target.query_error("setting timeouts", &e))?;
    let tables = client
        .query(LIST_TABLES, &[])
        .await
        .map_err(|e| target.query_error("listing tables", &e))?;
    let mut counts = Vec::with_capacity(tables.len());
    // One round trip per batch instead of per table: thousands of tables stay quick.
    for batch in tables.chunks(100) {
        let sql = batch
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let (schema, name, kind): (String, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                let only = if kind == "r" { "ONLY " } else { "" };
                format!(
                    "SELECT {i} AS i, count(*) AS n FROM {only}{}.{}",
                    quote_ident(&schema),
                    quote_ident(&name)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| target.query_error("counting rows", &e))?;
        let mut by_index = vec![0u64; batch.len()];
        for r in rows {
            let i: i32 = r.get(0);
            let n: i64 = r.get(1);
            by_index[i as usize] = n as u64;
        }
        counts.extend(batch.iter().zip(by_index).map(|(row, rows)| TableCount {
            schema: row.get(0),
            name: row.get(1),
            rows,
        }));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let t = PgTarget::from_url("postgres://alice:s3cr%21t@db.example:6543/my%20db").unwrap();
        assert_eq!(t.user, "alice");
        assert_eq!(t.host, "db.example");
        assert_eq!(t.port, 6543);
        assert_eq!(t.dbname.as_deref(), Some("my db"));
        assert_eq!(t.password.as_deref(), Some("s3cr!t"));
        let shown = format!("{t} {t:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(t
            .child_env("x")
            .contains(&("PGPASSWORD", "s3cr!t".to_string())));
    }

    #[test]
    fn bad_urls_are_explained_without_the_password() {
        let err = PgTarget::from_url("mysql://bob:hunter2@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres://") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(PgTarget::from_url("postgres:///db").is_err());
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("Order"), "\"Order\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
