//! The restore side of the replication protocol: this process poses as the target's
//! primary for one full sync. The target connects to `listen`, says `PING`, `REPLCONF …`
//! and `PSYNC` (or `SYNC`); it gets `+FULLRESYNC <id> 0` and the RDB as a `$<len>`
//! payload. The payload's last chunk is held back until the whole plaintext matched the
//! manifest's size and sha256: a damaged part never completes a sync, and a replica keeps
//! its old data when a sync does not complete (it loads into a temporary file first).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::catalog::Part;
use crate::pipeline::decode::PlainReader;
use crate::verify::{stream_withheld, VerifyError};

/// Why serving the sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The target never connected.
    #[error("the target did not connect back to {listen} within {waited:?}: it must reach this address (pass --listen HOST:PORT with an address the server can reach, e.g. the pod IP in the cluster)")]
    NoConnection {
        /// Where this process listened.
        listen: SocketAddr,
        /// How long it waited.
        waited: Duration,
    },
    /// The part failed its check while it streamed: the sync was cut, nothing loaded.
    #[error("reading the backup")]
    Verify(#[from] VerifyError),
    /// The socket failed.
    #[error("serving the snapshot to the target failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one command (a RESP array, or an inline line) from the replica.
fn read_command(r: &mut impl std::io::BufRead) -> std::io::Result<Vec<String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the target closed the connection during the handshake",
        ));
    }
    let line = line.trim_end();
    let Some(n) = line.strip_prefix('*') else {
        return Ok(line.split_whitespace().map(str::to_string).collect());
    };
    let n: usize = n.parse().unwrap_or(0);
    let mut args = Vec::with_capacity(n);
    for _ in 0..n.min(64) {
        let mut len = String::new();
        r.read_line(&mut len)?;
        let len: usize = len.trim_end().trim_start_matches('$').parse().unwrap_or(0);
        let mut arg = vec![0u8; len.min(1 << 20) + 2];
        r.read_exact(&mut arg)?;
        arg.truncate(len);
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    Ok(args)
}

/// Waits for the target on `listener`, answers its handshake, and sends the RDB. Returns
/// the connection, which must stay open until the target reports the link up.
///
/// # Errors
/// No connection in time, a part that fails its check (the connection is then cut), I/O.
pub fn serve(
    listener: &TcpListener,
    wait: Duration,
    plain: PlainReader,
    backup: &str,
    part: &Part,
) -> Result<TcpStream, ServeError> {
    let listen = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() > wait {
                    return Err(ServeError::NoConnection {
                        listen,
                        waited: wait,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    loop {
        let args = read_command(&mut reader)?;
        match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
            Some("PING") => writer.write_all(b"+PONG\r\n")?,
            Some("PSYNC" | "SYNC") => break,
            // AUTH (masterauth), REPLCONF listening-port / capa …: all fine.
            _ => writer.write_all(b"+OK\r\n")?,
        }
    }
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
