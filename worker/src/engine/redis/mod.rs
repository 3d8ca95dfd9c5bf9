//! `redis`: Redis and Valkey, backed up and restored the way replicas sync, so neither side
//! needs the server's files.
//!
//! - [`source`]: `worker backup redis --target T`: connects like a replica (`REPLCONF
//!   rdb-only 1`, `SYNC`) and streams the RDB snapshot the server sends into one part,
//!   walking it as it passes ([`rdb`]): its CRC64 is checked and its keys and expires are
//!   counted per logical database, exactly, in the snapshot itself. A diskless payload's
//!   `$EOF:<mark>` framing is removed. The manifest records the server and RDB versions.
//! - [`sink`]: `kubectl dr restore ID --to redis://…`: the plugin becomes the target's
//!   primary for one full sync ([`primary`]): it listens, sends `REPLICAOF`, answers the
//!   target's `PSYNC` with the verified RDB, waits for the link, then `REPLICAOF NO ONE`;
//!   the target is a primary again whatever happened. A target whose RDB version is older
//!   than the backup's is refused before anything changes.
//!
//! Connection: `REDIS_URL` (`redis://[user@]host:port`, or `rediss://` for TLS, verified
//! against the system's roots or `REDIS_CACERT`), the password from `REDIS_PASSWORD` or
//! `REDIS_PASSWORD_FILE`, never from the URL or argv.

pub mod primary;
pub mod rdb;
pub mod resp;
pub mod scratch;
pub mod sink;
pub mod source;

use std::io::{BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};

use url::Url;

pub use resp::{Conn, Reply, Stream};

use crate::catalog::TableCount;

/// Errors talking to Redis, each with the next step.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `REDIS_URL` (or `--to`) is missing.
    #[error("no Redis address: set REDIS_URL (e.g. redis://redis-master.redis.svc:6379)")]
    NoUrl,
    /// The address does not parse or has no place here.
    #[error("{url:?} is not a Redis address: {reason} (expected redis://[user@]host:6379)")]
    BadUrl {
        /// The address as given (credentials removed).
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
    /// No connection, or no answer in time.
    #[error("cannot reach Redis at {addr}: {reason}; check the address, the port (usually 6379) and the network policy")]
    Unreachable {
        /// The server's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server refused the credentials (or wants some).
    #[error("Redis at {addr} refused the login: {message}; check REDIS_PASSWORD / REDIS_PASSWORD_FILE (and the user in the URL)")]
    Auth {
        /// The server's address.
        addr: String,
        /// The server's message.
        message: String,
    },
    /// A command failed.
    #[error("Redis at {addr} answered {command} with an error: {message}")]
    Command {
        /// The server's address.
        addr: String,
        /// The command (its name only).
        command: String,
        /// The server's message.
        message: String,
    },
    /// The server closed the connection or sent something that is not RESP.
    #[error("Redis at {addr}: {reason}")]
    Protocol {
        /// The server's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

/// A Redis server to back up, count or restore into.
#[derive(Clone)]
pub struct RedisTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user (`default` when absent).
    pub user: Option<String>,
    /// `rediss://`: TLS, verified against the system's roots or `REDIS_CACERT`.
    pub tls: bool,
    /// A private CA for TLS (`REDIS_CACERT`).
    pub ca_cert: Option<std::path::PathBuf>,
    password: Option<String>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.user {
            Some(u) => write!(f, "{scheme}://{u}@{}:{}", self.host, self.port),
            None => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl RedisTarget {
    /// From `REDIS_URL`, with the password from the environment.
    ///
    /// # Errors
    /// No URL, a malformed one, an unreadable password file.
    pub fn from_env() -> Result<Self, RedisError> {
        let url = std::env::var("REDIS_URL").map_err(|_| RedisError::NoUrl)?;
        Self::from_url(&url)
    }

    /// From a `redis://` URL, with the password from `REDIS_PASSWORD` or
    /// `REDIS_PASSWORD_FILE`.
    ///
    /// # Errors
    /// A malformed URL, a password in it, `rediss://`, an unreadable password file.
    pub fn from_url(url: &str) -> Result<Self, RedisError> {
        let parsed = Url::parse(url).map_err(|e| RedisError::BadUrl {
            url: crate::catalog::printable(url),
            reason: e.to_string(),
        })?;
        let shown = format!(
            "{}://{}:{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or(""),
            parsed.port().map_or(String::new(), |p| p.to_string())
        );
        let bad = |reason: &str| RedisError::BadUrl {
            url: shown.clone(),
            reason: reason.into(),
        };
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(bad("not redis:// or rediss://")),
        };
        if parsed.password().is_some() {
            return Err(bad(
                "no password in the URL; use REDIS_PASSWORD or REDIS_PASSWORD_FILE",
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let password = match std::env::var("REDIS_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(p),
            _ => match std::env::var("REDIS_PASSWORD_FILE") {
                Ok(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| RedisError::PasswordFile {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                ),
                Err(_) => None,
            },
        };
        Ok(RedisTarget {
            host,
            tls,
            ca_cert: std::env::var_os("REDIS_CACERT").map(Into::into),
            port: parsed.port().unwrap_or(6379),
            user: Some(parsed.username())
                .filter(|u| !u.is_empty())
                .map(str::to_string),
            password,
        })
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects and logs in.
    ///
    /// # Errors
    /// Unreachable or silent server, refused credentials.
    pub fn connect(&self) -> Result<Conn, RedisError> {
        let unreachable = |reason: String| RedisError::Unreachable {
            addr: self.addr(),
            reason,
        };
        let timeout = super::connect_timeout();
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .collect();
        let mut last = String::from("no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        let stream = stream.ok_or_else(|| unreachable(last))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| unreachable(e.to_string()))?;
        let raw = stream.try_clone().map_err(|e| unreachable(e.to_string()))?;
        let stream = if self.tls {
            Stream::Tls(Box::new(self.tls_stream(stream)?))
        } else {
            Stream::Plain(stream)
        };
        let mut conn = Conn {
            reader: BufReader::with_capacity(256 * 1024, stream),
            raw,
            addr: self.addr(),
        };
        if let Some(password) = &self.password {
            let user = self.user.as_deref().unwrap_or("default");
            match conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()]) {
                Ok(_) => {}
                Err(RedisError::Command { message, .. }) => {
                    return Err(RedisError::Auth {
                        addr: self.addr(),
                        message,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        match conn.call(&[b"PING"]) {
            Ok(_) => Ok(conn),
            Err(RedisError::Command { message, .. })
                if message.starts_with("NOAUTH") || message.starts_with("WRONGPASS") =>
            {
                Err(RedisError::Auth {
                    addr: self.addr(),
                    message,
                })
            }
            Err(RedisError::Unreachable { reason, .. })
                if reason.contains("timed out") || reason.contains("would block") =>
            {
                Err(unreachable(super::silent_server("Redis")))
            }
            Err(e) => Err(e),
        }
    }
}

impl RedisTarget {
    fn tls_stream(
        &self,
        tcp: TcpStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, RedisError> {
        use rustls_pki_types::pem::PemObject;
        let tls_error = |reason: String| RedisError::Unreachable {
            addr: self.addr(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_cert {
            Some(path) => {
                for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                    tls_error(format!("cannot read REDIS_CACERT {}: {e}", path.display()))
                })? {
                    let cert = cert
                        .map_err(|e| tls_error(format!("REDIS_CACERT {}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_error(format!("REDIS_CACERT {}: {e}", path.display())))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| tls_error(format!("{} is not a TLS server name: {e}", self.host)))?;
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(|e| tls_error(e.to_string()))?;
        let mut tcp = tcp;
        // The handshake here, so a certificate problem is named as one.
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).map_err(|e| {
                tls_error(format!(
                    "the TLS handshake failed ({e}); check REDIS_CACERT (the CA that signed the server's certificate) and that the host name in REDIS_URL is in the certificate"
                ))
            })?;
        }
        Ok(rustls::StreamOwned::new(connection, tcp))
    }
}

/// The count rows of one logical database: `db0.keys` and `db0.expires`.
pub fn keyspace_rows(db: &str, keys: u64, expires: u64) -> [TableCount; 2] {
    [
        TableCount {
            schema: db.to_string(),
            name: "keys".into(),
            rows: keys,
        },
        TableCount {
            schema: db.to_string(),
            name: "expires".into(),
            rows: expires,
        },
    ]
}

/// A server's product and version.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerVersion {
    /// `Redis` or `Valkey`.
    pub product: String,
    /// Its version, e.g. `7.0.15`.
    pub version: String,
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.product, self.version)
    }
}

impl ServerVersion {
    /// The newest RDB version the server loads, when this build knows the version.
    pub fn rdb_version(&self) -> Option<u32> {
        let mut parts = self
            .version
            .split('.')
            .filter_map(|p| p.parse::<u32>().ok());
        let (major, minor) = (parts.next()?, parts.next().unwrap_or(0));
        Some(match (self.product.as_str(), major, minor) {
            ("Valkey", 7 | 8, _) => 11,
            ("Valkey", 9.., _) => 80,
            (_, 0..=2, _) => 6,
            (_, 3, _) => 7,
            (_, 4, _) => 8,
            (_, 5 | 6, _) => 9,
            (_, 7, 0 | 1) => 10,
            (_, 7, 2 | 3) => 11,
            (_, 7, _) => 12,
            (_, 8, _) => 12,
            _ => return None,
        })
    }
}

/// Refuses to restore an RDB of version `backup` into `target` when the target cannot load
/// it (a Redis 7.4 backup into Valkey 8 is the known trap).
///
/// # Errors
/// Both versions, and what to do instead.
pub fn check_rdb_compatible(backup: u32, target: &ServerVersion) -> Result<(), String> {
    match target.rdb_version() {
        Some(loads) if backup > loads => Err(format!(
            "the backup is RDB version {backup}, newer than {target} loads (RDB {loads}); nothing was changed. Restore into a server that reads RDB {backup} (e.g. the version the backup came from), or convert the data by hand"
        )),
        _ => Ok(()),
    }
}

/// `verify --identity` on an RDB part: walk it (magic, version, every value, CRC64) and
/// count keys and expires per database; they must equal the manifest's.
///
/// # Errors
/// A damaged RDB, or counts that differ from the recorded ones.
pub fn check_rdb(
    r: &mut dyn Read,
    _facts: &crate::catalog::Facts,
    recorded: &[TableCount],
) -> Result<(), String> {
    let summary = rdb::walk(std::io::BufReader::with_capacity(256 * 1024, r), None)
        .map_err(|e| e.to_string())?;
    let found = summary.rows();
    let key = |t: &TableCount| (t.schema.clone(), t.name.clone(), t.rows);
    let mut a: Vec<_> = found.iter().map(key).collect();
    let mut b: Vec<_> = recorded.iter().map(key).collect();
    a.sort();
    b.sort();
    if a == b {
        Ok(())
    } else {
        Err(format!(
            "the RDB holds {} key(s), the manifest recorded {}",
            found
                .iter()
                .filter(|t| t.name == "keys")
                .map(|t| format!("{}={}", t.schema, t.rows))
                .collect::<Vec<_>>()
                .join(" "),
            recorded
                .iter()
                .filter(|t| t.name == "keys")
                .map(|t| format!("{}={}", t.schema, t.rows))
                .collect::<Vec<_>>()
                .join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_no_password_and_no_tls_yet() {
        assert!(RedisTarget::from_url("redis://u:secret@h:6379")
            .unwrap_err()
            .to_string()
            .contains("REDIS_PASSWORD"));
        assert!(!RedisTarget::from_url("redis://u:secret@h:6379")
            .unwrap_err()
            .to_string()
            .contains("secret"));
        assert!(RedisTarget::from_url("rediss://h").unwrap().tls);
        assert!(RedisTarget::from_url("http://h").is_err());
        let t = RedisTarget::from_url("redis://backup@redis.redis.svc").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("redis.redis.svc", 6379));
        assert_eq!(t.to_string(), "redis://backup@redis.redis.svc:6379");
    }

    #[test]
    fn a_redis_7_4_backup_does_not_go_into_valkey_8() {
        let valkey = ServerVersion {
            product: "Valkey".into(),
            version: "8.0.1".into(),
        };
        let err = check_rdb_compatible(12, &valkey).unwrap_err();
        assert!(
            err.contains("RDB version 12") && err.contains("Valkey 8.0.1"),
            "{err}"
        );
        check_rdb_compatible(11, &valkey).unwrap();
        let redis = |v: &str| ServerVersion {
            product: "Redis".into(),
            version: v.into(),
        };
        assert_eq!(redis("7.0.15").rdb_version(), Some(10));
        assert_eq!(redis("7.4.1").rdb_version(), Some(12));
        check_rdb_compatible(10, &redis("7.0.15")).unwrap();
        assert!(check_rdb_compatible(11, &redis("7.0.15")).is_err());
        // A version this build does not know is let through (the server will say).
        check_rdb_compatible(99, &redis("42.0")).unwrap();
    }
}
