//! RESP, the protocol Redis and Valkey speak: one connection ([`Conn`]) over plain TCP or
//! TLS ([`Stream`]), commands sent as arrays of bulk strings, replies ([`Reply`]) read with
//! bounded lines and bulk strings, so a hostile server cannot make this process buffer
//! without end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use super::{keyspace_rows, RedisError, ServerVersion};
use crate::catalog::TableCount;

/// A connection's byte stream: plain TCP or TLS over it.
pub enum Stream {
    /// `redis://`.
    Plain(TcpStream),
    /// `rediss://`.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `:42`.
    Int(i64),
    /// `$…` (None for the null bulk string).
    Bulk(Option<Vec<u8>>),
    /// `*…` (None for the null array).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple or bulk strings).
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Int(i) => i.to_string(),
            _ => String::new(),
        }
    }
}

/// A connection speaking RESP2, blocking (each caller runs on a blocking thread).
pub struct Conn {
    /// Buffered reads (writes go through it too); the replication stream is read here.
    pub reader: BufReader<Stream>,
    /// The TCP socket under it, for timeouts and addresses.
    pub(super) raw: TcpStream,
    pub(super) addr: String,
}

/// Longest bulk string read into memory by [`Conn::call`] (INFO answers are kilobytes).
const MAX_BULK: usize = 64 * 1024 * 1024;

impl Conn {
    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket, e.g. to change its timeouts or learn the local address.
    pub fn socket(&self) -> &TcpStream {
        &self.raw
    }

    fn io_error(&self, e: std::io::Error) -> RedisError {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            RedisError::Unreachable {
                addr: self.addr.clone(),
                reason: format!("timed out: {e}"),
            }
        } else {
            RedisError::Protocol {
                addr: self.addr.clone(),
                reason: format!("the connection failed: {e}"),
            }
        }
    }

    /// Sends a command without reading the answer.
    ///
    /// # Errors
    /// The connection failed.
    pub fn send(&mut self, args: &[&[u8]]) -> Result<(), RedisError> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        let written = self
            .reader
            .get_mut()
            .write_all(&out)
            .and_then(|()| self.reader.get_mut().flush());
        written.map_err(|e| self.io_error(e))
    }

    /// Sends a command and reads its reply; an error reply is [`RedisError::Command`].
    ///
    /// # Errors
    /// The connection failed, the server answered with an error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.send(args)?;
        self.read_reply().map_err(|e| match e {
            RedisError::Command { addr, message, .. } => RedisError::Command {
                addr,
                command: String::from_utf8_lossy(args[0]).to_uppercase(),
                message,
            },
            other => other,
        })
    }

    /// A line without its CRLF.
    ///
    /// # Errors
    /// A closed connection.
    pub fn read_line(&mut self) -> Result<String, RedisError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_BULK as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(RedisError::Protocol {
                addr: self.addr.clone(),
                reason: "the server closed the connection".into(),
            });
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Reads one reply.
    ///
    /// # Errors
    /// A closed connection, something that is not RESP, an error reply.
    pub fn read_reply(&mut self) -> Result<Reply, RedisError> {
        let line = self.read_line()?;
        let protocol = |reason: String| RedisError::Protocol {
            addr: self.addr.clone(),
            reason,
        };
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Err(RedisError::Command {
                addr: self.addr.clone(),
                command: String::new(),
                message: rest.to_string(),
            }),
            ":" => rest
                .parse()
                .map(Reply::Int)
                .map_err(|_| protocol(format!("bad integer reply {rest:?}"))),
            "$" => {
                let len: i64 = rest
                    .parse()
                    .map_err(|_| protocol(format!("bad bulk length {rest:?}")))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_BULK {
                    return Err(protocol(format!(
                        "a {len}-byte reply is more than expected"
                    )));
                }
                let mut data = vec![0u8; len + 2];
                self.reader
                    .read_exact(&mut data)
                    .map_err(|e| self.io_error(e))?;
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| protocol(format!("bad array length {rest:?}")))?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::new();
                for _ in 0..n.min(1 << 20) {
                    items.push(self.read_reply()?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(protocol(format!(
                "unexpected reply {:?}: is this a Redis server?",
                crate::catalog::printable(&line.chars().take(40).collect::<String>())
            ))),
        }
    }

    /// `INFO section` as `field → value`.
    ///
    /// # Errors
    /// As [`Conn::call`].
    pub fn info(&mut self, section: &str) -> Result<Vec<(String, String)>, RedisError> {
        let text = self.call(&[b"INFO", section.as_bytes()])?.text();
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// The server's product and version (`Redis 7.0.15`, `Valkey 8.0.1`).
    ///
    /// # Errors
    /// As [`Conn::call`].
    pub fn server(&mut self) -> Result<ServerVersion, RedisError> {
        let info = self.info("server")?;
        let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(match get("valkey_version") {
            Some(v) => ServerVersion {
                product: "Valkey".into(),
                version: v,
            },
            None => ServerVersion {
                product: "Redis".into(),
                version: get("redis_version").unwrap_or_default(),
            },
        })
    }

    /// Keys and expires per logical database (`INFO keyspace`), as count rows.
    ///
    /// # Errors
    /// As [`Conn::call`].
    pub fn keyspace(&mut self) -> Result<Vec<TableCount>, RedisError> {
        let mut out = Vec::new();
        for (db, fields) in self.info("keyspace")? {
            let get = |name: &str| {
                fields
                    .split(',')
                    .filter_map(|f| f.split_once('='))
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.extend(keyspace_rows(&db, get("keys"), get("expires")));
        }
        Ok(out)
    }
}
