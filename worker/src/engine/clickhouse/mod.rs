//! ClickHouse (e.g. SigNoz telemetry): logical backups over the HTTP interface, one part per
//! table, or per partition of a MergeTree table, in Native format (TabSeparated for tables
//! with columns Native cannot be walked by size rules), walked as they stream for exact
//! row counts and to catch errors the server writes into a 200 response. Incremental
//! backups reference the partitions that did not change since their base.
//!
//! Modules: [`native`] and [`tsv`] walk the formats, [`partitions`] fingerprints what
//! changed, [`dump`] takes backups, [`ddl`] rewrites and orders DDL for restores,
//! [`restore`] plans and runs them.

pub mod ddl;
pub mod dump;
pub mod native;
pub mod partitions;
pub mod restore;
pub mod schema;
pub mod scratch;
pub mod sink;
pub mod source;
pub mod tsv;

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

use crate::engine::transport_reason;
use url::Url;

/// Databases that belong to the server, never to a backup.
pub const SYSTEM_DATABASES: [&str; 3] = ["system", "INFORMATION_SCHEMA", "information_schema"];

/// Errors talking to ClickHouse, each with the next step.
#[derive(Debug, thiserror::Error)]
pub enum ChError {
    /// `CLICKHOUSE_URL` is not set.
    #[error("no ClickHouse address: set CLICKHOUSE_URL (e.g. http://clickhouse.signoz.svc:8123)")]
    NoUrl,
    /// The address is not an http(s) URL.
    #[error("{url:?} is not a ClickHouse HTTP address: {reason} (expected http(s)://host:8123)")]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The password file cannot be read.
    #[error("cannot read the password file {path}: {reason}")]
    PasswordFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer, or no connection, within the timeout.
    #[error("cannot reach ClickHouse at {addr}: {reason}; check the address (the HTTP port, usually 8123) and the network policy")]
    Unreachable {
        /// The server's address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the user or password.
    #[error("ClickHouse at {addr} refused user {user}: {message}; check CLICKHOUSE_USER and CLICKHOUSE_PASSWORD / CLICKHOUSE_PASSWORD_FILE")]
    Auth {
        /// The server's address.
        addr: String,
        /// The user name.
        user: String,
        /// The server's message.
        message: String,
    },
    /// The server answered a query with an error.
    #[error("ClickHouse at {addr} failed {what}: {message}")]
    Query {
        /// The server's address.
        addr: String,
        /// What was being done or read.
        what: String,
        /// The server's message.
        message: String,
    },
}

/// Where a ClickHouse server is and who we are there. The password never prints.
#[derive(Clone)]
pub struct ChTarget {
    /// The HTTP(S) endpoint, without credentials.
    pub url: Url,
    /// The user name.
    pub user: String,
    password: Option<String>,
}

impl fmt::Debug for ChTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChTarget")
            .field("url", &self.url.as_str())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ChTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str().trim_end_matches('/'))
    }
}

impl ChTarget {
    /// Parses `http(s)://host:port`; user and password come from CLICKHOUSE_USER (default
    /// `default`) and CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE, never from the URL.
    ///
    /// # Errors
    /// [`ChError::BadUrl`], an unreadable password file.
    pub fn from_url(url: &str) -> Result<Self, ChError> {
        let (url, user) = parse_url(url)?;
        let user = user.unwrap_or_else(|| {
            std::env::var("CLICKHOUSE_USER").unwrap_or_else(|_| "default".into())
        });
        let password = match std::env::var("CLICKHOUSE_PASSWORD") {
            Ok(p) => Some(p),
            Err(_) => match std::env::var("CLICKHOUSE_PASSWORD_FILE") {
                Ok(path) if !path.is_empty() => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| ChError::PasswordFile {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                _ => None,
            },
        };
        Ok(ChTarget {
            url,
            user,
            password,
        })
    }

    /// A target with explicit credentials (for callers that do not use the environment).
    ///
    /// # Errors
    /// [`ChError::BadUrl`].
    pub fn with_credentials(
        url: &str,
        user: &str,
        password: Option<String>,
    ) -> Result<Self, ChError> {
        let (url, _) = parse_url(url)?;
        Ok(ChTarget {
            url,
            user: user.to_string(),
            password,
        })
    }

    /// CLICKHOUSE_URL and friends.
    ///
    /// # Errors
    /// As [`ChTarget::from_url`], or [`ChError::NoUrl`].
    pub fn from_env() -> Result<Self, ChError> {
        ChTarget::from_url(&std::env::var("CLICKHOUSE_URL").map_err(|_| ChError::NoUrl)?)
    }
}

/// Checks an `http(s)://[user@]host:port` address and splits off the user; a password in
/// the URL is refused (it would end up in shell history and process lists).
fn parse_url(url: &str) -> Result<(Url, Option<String>), ChError> {
    let bad = |reason: &str| ChError::BadUrl {
        url: url.split('@').next_back().unwrap_or(url).to_string(),
        reason: reason.to_string(),
    };
    let mut parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.password().is_some() {
        return Err(bad(
            "no password in the URL; use CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE",
        ));
    }
    let user = Some(parsed.username().to_string()).filter(|u| !u.is_empty());
    let _ = parsed.set_username("");
    Ok((parsed, user))
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct ChClient {
    http: reqwest::Client,
    target: ChTarget,
}

impl ChClient {
    /// # Errors
    /// [`ChError::Unreachable`] when no HTTP client can be built.
    pub fn new(target: &ChTarget) -> Result<Self, ChError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("kube-dr/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ChError::Unreachable {
                addr: target.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ChClient {
            http,
            target: target.clone(),
        })
    }

    /// The server's address, for messages (never with credentials).
    pub fn addr(&self) -> String {
        self.target.to_string()
    }

    /// Sends `sql` (in the body, so nothing of it lands in URLs or proxy logs) with optional
    /// settings as URL parameters; returns the response once its status is 200.
    ///
    /// # Errors
    /// Transport, authentication and query errors.
    pub async fn send(
        &self,
        what: &str,
        sql: impl Into<reqwest::Body>,
        params: &[(&str, &str)],
    ) -> Result<reqwest::Response, ChError> {
        let response = self
            .http
            .post(self.target.url.clone())
            .query(params)
            .basic_auth(&self.target.user, self.target.password.as_deref())
            .body(sql)
            .send()
            .await
            .map_err(|e| ChError::Unreachable {
                addr: self.addr(),
                reason: transport_reason(&e),
            })?;
        if response.status() == StatusCode::OK {
            return Ok(response);
        }
        let status = response.status();
        let message = response.text().await.unwrap_or_default().trim().to_string();
        let message: String = message.chars().take(2000).collect();
        if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || message.contains("Code: 516")
            || message.contains("Code: 194")
            || message.contains("Code: 192")
            || message.contains("Code: 193")
        {
            return Err(ChError::Auth {
                addr: self.addr(),
                user: self.target.user.clone(),
                message,
            });
        }
        Err(ChError::Query {
            addr: self.addr(),
            what: what.to_string(),
            message,
        })
    }

    /// Runs a small query and returns its TabSeparated rows, split into fields (unescaped).
    ///
    /// # Errors
    /// As [`ChClient::send`].
    pub async fn rows(&self, what: &str, sql: &str) -> Result<Vec<Vec<String>>, ChError> {
        // A small answer that stops half-way would otherwise wait forever.
        let answer = async {
            self.send(what, format!("{sql} FORMAT TabSeparated"), &[])
                .await?
                .text()
                .await
                .map_err(|e| ChError::Unreachable {
                    addr: self.addr(),
                    reason: transport_reason(&e),
                })
        };
        let text = tokio::time::timeout(crate::engine::stall_timeout(), answer)
            .await
            .map_err(|_| ChError::Unreachable {
                addr: self.addr(),
                reason: format!("{what}: {}", crate::engine::stalled_source("ClickHouse")),
            })??;
        Ok(text
            .lines()
            .map(|l| l.split('\t').map(unescape_tsv).collect())
            .collect())
    }

    /// Runs a statement that returns nothing.
    ///
    /// # Errors
    /// As [`ChClient::send`].
    pub async fn execute(&self, what: &str, sql: &str) -> Result<(), ChError> {
        self.send(what, sql.to_string(), &[]).await.map(|_| ())
    }

    /// Checks that a ClickHouse server answers at this address and accepts our user, within
    /// [`crate::engine::connect_timeout`]; returns its version.
    ///
    /// # Errors
    /// [`ChError::Unreachable`] naming the address, authentication errors.
    pub async fn probe(&self) -> Result<String, ChError> {
        tokio::time::timeout(crate::engine::connect_timeout(), self.version())
            .await
            .map_err(|_| ChError::Unreachable {
                addr: self.addr(),
                reason: crate::engine::silent_server("ClickHouse"),
            })?
    }

    /// The server's version string.
    ///
    /// # Errors
    /// As [`ChClient::send`].
    pub async fn version(&self) -> Result<String, ChError> {
        Ok(self
            .rows("reading the version", "SELECT version()")
            .await?
            .first()
            .and_then(|r| r.first().cloned())
            .unwrap_or_default())
    }
}

/// TabSeparated escaping: `\t`, `\n`, `\\`, `\'`, `\0` …
pub fn unescape_tsv(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The name of the part holding partition `id` of the table whose schema entry names
/// `table_part` (`data-DB.TABLE`): `data-DB.TABLE.p-ID`. Short on purpose: S3-compatible
/// servers that keep objects as files (s3s-fs, for one) fail keys past ~155 bytes, and
/// SigNoz's inner tables (`.inner_id.<uuid>`) are long already.
pub fn partition_part_name(table_part: &str, id: &str) -> String {
    format!("{table_part}.p-{}", crate::engine::encode_name(id))
}

/// True when `part` holds rows of the table whose schema entry names `table_part`: its one
/// part, or one of its partitions' parts (older backups have only the former).
pub fn holds_table(part: &crate::catalog::Part, table_part: &str) -> bool {
    // Exactly the name its partition gives: a table named `t.p-1` is not a partition of `t`.
    part.name == table_part
        || part
            .partition
            .as_ref()
            .is_some_and(|p| part.name == partition_part_name(table_part, &p.id))
}

/// Each table's rows at backup time, summed over its parts (one per partition), in the
/// order the tables first appear.
pub fn table_counts(manifest: &crate::catalog::Manifest) -> Vec<crate::catalog::TableCount> {
    let mut out: Vec<crate::catalog::TableCount> = Vec::new();
    for t in manifest.parts.iter().flat_map(|p| p.tables.iter()) {
        match out
            .iter_mut()
            .find(|o| o.schema == t.schema && o.name == t.name)
        {
            Some(o) => o.rows = o.rows.saturating_add(t.rows),
            None => out.push(t.clone()),
        }
    }
    out
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Quotes a string literal.
pub fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_holds_its_own_part_and_its_partitions_parts_only() {
        let part = |name: &str, partition: Option<&str>| -> crate::catalog::Part {
            let mut p: crate::catalog::Part = serde_json::from_value(serde_json::json!({
                "name": name, "file": "x.native.zst.age", "format": "clickhouse-native",
                "compression": "zstd", "ciphertext_bytes": 1,
                "ciphertext_sha256": "0".repeat(64), "plaintext_bytes": 1
            }))
            .unwrap();
            p.partition = partition.map(|id| crate::catalog::Partition {
                id: id.into(),
                fingerprint: None,
                min_time: None,
                max_time: None,
            });
            p
        };
        assert!(holds_table(&part("data-db.t", None), "data-db.t"));
        assert!(holds_table(
            &part("data-db.t.p-202612", Some("202612")),
            "data-db.t"
        ));
        // Table `t.p-1`, partition `all`: not a partition of `t`.
        assert!(!holds_table(
            &part("data-db.t.p-1.p-all", Some("all")),
            "data-db.t"
        ));
        assert!(holds_table(
            &part("data-db.t.p-1.p-all", Some("all")),
            "data-db.t.p-1"
        ));
        assert!(!holds_table(&part("data-db.t.p-202612", None), "data-db.t"));
    }

    #[test]
    fn unescapes_tab_separated_fields() {
        assert_eq!(unescape_tsv(r"a\tb\nc\\d\'e"), "a\tb\nc\\d'e");
        assert_eq!(unescape_tsv("plain"), "plain");
    }

    #[test]
    fn quotes() {
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
        assert_eq!(quote_str("it's"), "'it\\'s'");
    }

    #[test]
    fn refuses_a_password_in_the_url() {
        let err = ChTarget::from_url("http://u:s3cret@ch:8123")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(ChTarget::from_url("clickhouse:8123").is_err());
    }
}
