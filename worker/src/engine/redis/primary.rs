//! The restore side of the replication protocol: this process poses as the target's
//! primary for one full sync. The target connects to `listen`, says `PING`, `AUTH …`,
//! `REPLCONF …` and `PSYNC` (or `SYNC`); it gets `+FULLRESYNC <id> 0` and the RDB as a
//! `$<len>` payload. The payload's last chunk is held back until the whole plaintext
//! matched the manifest's size and sha256: a damaged part never completes a sync, and a
//! replica keeps its old data when a sync does not complete (it loads into a temporary
//! file first).
//!
//! The payload is the decrypted snapshot, secrets included, so it goes only to the target:
//! a connection must come from one of the target's addresses ([`Expected::from`]) *and*
//! authenticate with a one-time secret the restore gave the target as its `masterauth`
//! just before `REPLICAOF`. Anyone else who reaches the port first is named, cut off and
//! never sent a byte of the snapshot. Every read from a connection is bounded (line
//! length, argument count and size, time), so a peer cannot grow this process or hold it
//! past `--redis-wait`.

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::catalog::Part;
use crate::pipeline::decode::PlainReader;
use crate::verify::{stream_withheld, VerifyError};

/// Longest line of the handshake (a RESP header or an inline command).
const MAX_LINE: u64 = 4 * 1024;
/// Most arguments of one handshake command (REPLCONF capa … has a handful).
const MAX_ARGS: usize = 16;
/// Longest argument of one handshake command.
const MAX_ARG: usize = 4 * 1024;
/// Most commands before `PSYNC`: Redis sends five or six.
const MAX_COMMANDS: usize = 32;
/// How long one connection may take for its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Who may take the sync.
#[derive(Clone)]
pub struct Expected {
    /// The target's addresses: the one this process reached it at, and the one the target
    /// sees itself at (behind a Service they differ).
    pub from: Vec<IpAddr>,
    /// The one-time secret set as the target's `masterauth`.
    pub secret: String,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("from", &self.from)
            .field("secret", &"(hidden)")
            .finish()
    }
}

/// A connection that was refused the sync, and why.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Where it came from.
    pub peer: SocketAddr,
    /// Why it got nothing.
    pub why: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.peer, self.why)
    }
}

fn refused_list(refused: &[Refused]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = refused.iter().take(5).map(ToString::to_string).collect();
    let more = refused.len().saturating_sub(5);
    format!(
        "; other clients connected and were refused the snapshot: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// Why serving the sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The target never connected and authenticated.
    #[error("the target did not connect back to {listen} and authenticate within {waited:?}: it must reach this address (pass --listen HOST:PORT with an address the server can reach, e.g. the pod IP in the cluster){}", refused_list(.refused))]
    NoConnection {
        /// Where this process listened.
        listen: SocketAddr,
        /// How long it waited.
        waited: Duration,
        /// Who connected instead and was refused.
        refused: Vec<Refused>,
    },
    /// The part failed its check while it streamed: the sync was cut, nothing loaded.
    #[error("reading the backup")]
    Verify(#[from] VerifyError),
    /// The socket failed.
    #[error("serving the snapshot to the target failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A handshake that must end without the snapshot.
fn refuse(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// One line, at most [`MAX_LINE`] bytes, without its CRLF.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed the connection during the handshake",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(refuse(format!("sent a line longer than {MAX_LINE} bytes")));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}

/// Reads one command (a RESP array, or an inline line) from a replica, every part bounded.
fn read_command(r: &mut impl BufRead) -> std::io::Result<Vec<Vec<u8>>> {
    let line = read_line(r)?;
    let Some(n) = line.strip_prefix(b"*") else {
        return Ok(line
            .split(|b| b.is_ascii_whitespace())
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect());
    };
    let n: usize = std::str::from_utf8(n)
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= MAX_ARGS)
        .ok_or_else(|| refuse("sent a bad or oversized command header"))?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len = read_line(r)?;
        let len: usize = len
            .strip_prefix(b"$")
            .and_then(|l| std::str::from_utf8(l).ok())
            .and_then(|l| l.parse().ok())
            .filter(|l| *l <= MAX_ARG)
            .ok_or_else(|| refuse("sent a bad or oversized argument"))?;
        let mut arg = vec![0u8; len + 2];
        r.read_exact(&mut arg)?;
        arg.truncate(len);
        args.push(arg);
    }
    Ok(args)
}

/// Whether `given` equals `secret`, in time independent of where they differ.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len() && given.iter().zip(secret).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// Answers one connection's handshake; Ok once it authenticated and asked for the sync.
fn handshake(stream: &TcpStream, expected: &Expected, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let limit = left.min(HANDSHAKE).max(Duration::from_millis(100));
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let started = Instant::now();
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    let mut authenticated = false;
    for _ in 0..MAX_COMMANDS {
        if started.elapsed() > limit {
            return Err(refuse("took too long over its handshake"));
        }
        let args = read_command(&mut reader)?;
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"PING" => writer.write_all(b"+PONG\r\n")?,
            // `AUTH <masterauth>`, or `AUTH <masteruser> <masterauth>`.
            b"AUTH" if args.len() >= 2 => {
                if same_secret(
                    args.last().expect("len checked"),
                    expected.secret.as_bytes(),
                ) {
                    authenticated = true;
                    writer.write_all(b"+OK\r\n")?;
                } else {
                    writer.write_all(
                        b"-WRONGPASS this restore serves its snapshot only to its target\r\n",
                    )?;
                    return Err(refuse("sent the wrong password"));
                }
            }
            b"PSYNC" | b"SYNC" if authenticated => return Ok(()),
            b"PSYNC" | b"SYNC" => {
                writer.write_all(
                    b"-NOAUTH this restore serves its snapshot only to its target\r\n",
                )?;
                return Err(refuse("asked for the snapshot without authenticating"));
            }
            // REPLCONF listening-port / capa …: fine.
            b"REPLCONF" => writer.write_all(b"+OK\r\n")?,
            _ => {
                writer.write_all(b"-ERR only the replication handshake is served here\r\n")?;
                return Err(refuse(
                    "sent a command that is not part of the replication handshake",
                ));
            }
        }
    }
    Err(refuse("sent too many commands"))
}

/// Handshakes answered at once: a client that connects and says nothing must not keep
/// the target waiting behind it.
const MAX_HANDSHAKES: usize = 16;

/// Waits on `listener` for the target: a connection from one of `expected.from` that
/// authenticates with `expected.secret`. Anyone else is refused (and named in the error if
/// the target never comes). Returns the target's connection, handshake done.
fn accept_target(
    listener: &TcpListener,
    wait: Duration,
    expected: &Expected,
) -> Result<TcpStream, ServeError> {
    let listen = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + wait;
    let mut refused: Vec<Refused> = Vec::new();
    let mut note = |peer: SocketAddr, why: String| {
        tracing::warn!(client = %peer, why = %why, "refused a replication client: it is not the restore's target");
        if refused.len() < 100 {
            refused.push(Refused { peer, why });
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut in_flight = 0usize;
    loop {
        match listener.accept() {
            Ok((stream, peer)) if !expected.from.contains(&peer.ip()) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                let from: Vec<String> = expected.from.iter().map(ToString::to_string).collect();
                note(
                    peer,
                    format!("not the target's address ({})", from.join(" or ")),
                );
            }
            Ok((stream, peer)) if in_flight >= MAX_HANDSHAKES => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                note(peer, "too many connections at once".into());
            }
            Ok((stream, peer)) => {
                in_flight += 1;
                let (tx, expected) = (done_tx.clone(), expected.clone());
                std::thread::spawn(move || {
                    let outcome = handshake(&stream, &expected, deadline);
                    let _ = tx.send((stream, peer, outcome));
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        while let Ok((stream, peer, outcome)) = done_rx.try_recv() {
            in_flight -= 1;
            match outcome {
                Ok(()) => return Ok(stream),
                Err(e) => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    note(peer, e.to_string());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(ServeError::NoConnection {
                listen,
                waited: wait,
                refused,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the target on `listener`, answers its handshake, and sends the RDB. Returns
/// the connection, which must stay open until the target reports the link up.
///
/// # Errors
/// No authenticated connection from the target in time (naming who else connected), a
/// part that fails its check (the connection is then cut), I/O.
pub fn serve(
    listener: &TcpListener,
    wait: Duration,
    expected: &Expected,
    plain: PlainReader,
    backup: &str,
    part: &Part,
) -> Result<TcpStream, ServeError> {
    let stream = accept_target(listener, wait, expected)?;
    // A target that stops reading (or acknowledging) for a minute is gone.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let replid: String = (0..40)
        .map(|_| char::from(b"0123456789abcdef"[rand::random::<u8>() as usize % 16]))
        .collect();
    writer
        .write_all(format!("+FULLRESYNC {replid} 0\r\n${}\r\n", part.plaintext_bytes).as_bytes())?;
    // Every chunk but the last goes out at once; the last only after the check. A part that
    // fails it cuts the connection: the replica then keeps its data.
    if let Err(e) = stream_withheld(plain, backup, part, |chunk, _| {
        writer.write_all(chunk).map_err(ServeError::Io)
    }) {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Err(e);
    }
    writer.flush()?;
    // The replica now sends REPLCONF ACK every second; read and drop them so its
    // buffers never fill while the caller waits for the link.
    let mut drain = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn expected(from: &str) -> Expected {
        Expected {
            from: vec![from.parse().unwrap()],
            secret: "one-time-secret".into(),
        }
    }

    /// Runs `client` against a listener that waits `wait` for the target.
    fn serve_with(
        expected: Expected,
        wait: Duration,
        client: impl FnOnce(SocketAddr) -> Vec<u8> + Send + 'static,
    ) -> (Result<TcpStream, ServeError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || client(addr));
        let result = accept_target(&listener, wait, &expected);
        (result, client.join().unwrap())
    }

    fn talk(addr: SocketAddr, script: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(script);
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        got
    }

    #[test]
    fn the_target_with_the_secret_gets_the_sync() {
        let (result, _) = serve_with(expected("127.0.0.1"), Duration::from_secs(5), |addr| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"PING\r\nAUTH one-time-secret\r\nREPLCONF capa eof\r\nPSYNC ? -1\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            Vec::new()
        });
        assert!(result.is_ok(), "{:?}", result.err());
    }

    #[test]
    fn clients_without_the_secret_are_named_and_get_nothing() {
        let (result, got) = serve_with(expected("127.0.0.1"), Duration::from_secs(2), |addr| {
            let mut got = talk(addr, b"PING\r\nPSYNC ? -1\r\n");
            got.extend(talk(addr, b"AUTH masteruser guess\r\nSYNC\r\n"));
            got.extend(talk(addr, b"FLUSHALL\r\n"));
            got
        });
        let text = String::from_utf8_lossy(&got);
        assert!(!text.contains("FULLRESYNC"), "{text}");
        assert!(
            text.contains("-NOAUTH") && text.contains("-WRONGPASS"),
            "{text}"
        );
        let err = result.unwrap_err().to_string();
        assert!(err.contains("did not connect back"), "{err}");
        for why in [
            "asked for the snapshot without authenticating",
            "sent the wrong password",
            "not part of the replication handshake",
        ] {
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(err.contains("127.0.0.1:"), "{err}");
    }

    #[test]
    fn a_client_from_another_address_is_cut_off_unheard() {
        let (result, got) = serve_with(expected("127.0.0.9"), Duration::from_secs(1), |addr| {
            talk(addr, b"AUTH one-time-secret\r\nPSYNC ? -1\r\n")
        });
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("not the target's address (127.0.0.9)"),
            "{err}"
        );
    }

    #[test]
    fn a_flood_without_newline_is_cut_and_a_silent_client_does_not_block_the_target() {
        let (result, flood_cut) =
            serve_with(expected("127.0.0.1"), Duration::from_secs(5), |addr| {
                // Says nothing, holding one handshake open.
                let _silent = TcpStream::connect(addr).unwrap();
                let mut flood = TcpStream::connect(addr).unwrap();
                let cut = flood.write_all(&vec![b'x'; 64 << 20]).is_err();
                let mut target = TcpStream::connect(addr).unwrap();
                target
                    .write_all(b"AUTH one-time-secret\r\nPSYNC ? -1\r\n")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(300));
                vec![u8::from(cut)]
            });
        assert!(result.is_ok(), "{:?}", result.err());
        assert_eq!(flood_cut, vec![1], "64 MiB without a newline were read");
    }
}
