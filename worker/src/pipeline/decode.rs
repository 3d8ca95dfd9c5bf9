//! The read path: stored ciphertext ─► sha256 ─► age -d ─► zstd -d ─► plaintext.
//!
//! age authenticates every 64 KiB chunk, but a stream cut at a chunk boundary is only
//! detected at EOF; [`PlainReader::finish`] therefore drains the stream to its end and hands
//! back the ciphertext's size and sha256 for comparison with the manifest.
//!
//! The age header is read by us first, with a cap ([`MAX_HEADER_BYTES`]): the age crate
//! buffers a header line until its newline, so a part without one (2 GiB of zeros) would
//! otherwise be read into memory whole.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::keys::Identities;
use super::timings::{self, Stage, Timed};
use crate::catalog::Compression;
use crate::progress::ProgressBar;

/// Largest age header accepted. A header is one line per recipient stanza (~100 bytes for
/// X25519) plus a MAC line; 64 KiB holds hundreds of recipients.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Reads the age header (through its `---` MAC line, and the payload nonce) from `reader`, never much more than
/// [`MAX_HEADER_BYTES`]; returns it together with whatever was read past it.
fn read_header(reader: &mut impl Read) -> Result<Vec<u8>, io::Error> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no complete age header",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let prefix = buf.len().min(AGE_MAGIC.len());
        if buf[..prefix] != AGE_MAGIC[..prefix] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an age file",
            ));
        }
        // The header ends with the line that starts with `---` (the MAC line), and the
        // payload nonce follows it: both are read here, so the prefix can be hashed.
        // Searched from the start each time: at most 64 KiB, and it may arrive in pieces.
        if super::age_prefix_len(&buf).is_some() {
            return Ok(buf);
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "age header larger than 64 KiB",
            ));
        }
    }
}

/// Errors decrypting or decompressing a part.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No identity matches any of the object's recipients.
    #[error("no identity in {identity_file} matches this object")]
    WrongKey {
        /// The identity file(s) tried.
        identity_file: String,
    },
    /// No age header.
    #[error("the object is not an age file (no valid age header in its first 64 KiB)")]
    NotAge,
    /// Authentication of the ciphertext or decompression failed.
    #[error("the object is damaged or truncated: {0}")]
    Corrupt(String),
    /// The download failed.
    #[error("reading the object from the store failed: {0}")]
    Transport(String),
}

/// Size and hash of the ciphertext, known once it has been read to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiphertextStats {
    /// Bytes read.
    pub bytes: u64,
    /// Hex sha256 of them.
    pub sha256: String,
}

#[derive(Default)]
struct HashState {
    hasher: Sha256,
    bytes: u64,
    transport_error: Option<String>,
}

/// Hashes (and reports progress on) the ciphertext as it is read.
pub struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<HashState>>,
    progress: Option<Arc<dyn ProgressBar>>,
}

impl<R: Read> HashingReader<R> {
    /// Hashes what `inner` yields, ticking `progress` when given.
    pub fn new(inner: R, progress: Option<Arc<dyn ProgressBar>>) -> Self {
        HashingReader {
            inner,
            state: Arc::default(),
            progress,
        }
    }

    /// Reads to the end and returns the stats (the integrity-only check).
    ///
    /// # Errors
    /// [`DecodeError::Transport`] when the store stops answering.
    pub fn drain(mut self) -> Result<CiphertextStats, DecodeError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DecodeError::Transport(e.to_string())),
            }
        }
        Ok(stats(&self.state))
    }
}

fn stats(state: &Mutex<HashState>) -> CiphertextStats {
    let s = state.lock().expect("hash state poisoned");
    CiphertextStats {
        bytes: s.bytes,
        sha256: hex::encode(s.hasher.clone().finalize()),
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        let n = match timings::nested(Stage::StoreRead, || inner.read(buf)) {
            Ok(n) => n,
            Err(e) => {
                self.state
                    .lock()
                    .expect("hash state poisoned")
                    .transport_error = Some(e.to_string());
                return Err(e);
            }
        };
        let mut s = self.state.lock().expect("hash state poisoned");
        timings::nested(Stage::Sha256, || s.hasher.update(&buf[..n]));
        s.bytes += n as u64;
        if let Some(p) = &self.progress {
            p.inc(n as u64);
        }
        Ok(n)
    }
}

/// Plaintext of one part, decrypted and decompressed as it is read.
pub struct PlainReader {
    inner: Box<dyn Read + Send>,
    state: Arc<Mutex<HashState>>,
    plaintext_bytes: u64,
    header_sha256: String,
}

impl PlainReader {
    /// Reads the age header and prepares the stream.
    ///
    /// # Errors
    /// [`DecodeError::WrongKey`] when none of the identities can open it,
    /// [`DecodeError::NotAge`] for a damaged header, transport errors.
    pub fn open(
        ciphertext: HashingReader<impl Read + Send + 'static>,
        identities: &Identities,
        compression: Compression,
    ) -> Result<Self, DecodeError> {
        let state = ciphertext.state.clone();
        let transport = |state: &Mutex<HashState>| {
            state
                .lock()
                .expect("hash state poisoned")
                .transport_error
                .clone()
        };
        let mut ciphertext = ciphertext;
        let header = match read_header(&mut ciphertext) {
            Ok(h) => h,
            Err(_) if transport(&state).is_some() => {
                return Err(DecodeError::Transport(
                    transport(&state).unwrap_or_default(),
                ))
            }
            Err(_) => return Err(DecodeError::NotAge),
        };
        let prefix = super::age_prefix_len(&header).expect("read_header returns a whole prefix");
        let header_sha256 = hex::encode(Sha256::digest(&header[..prefix]));
        let decryptor = match age::Decryptor::new_buffered(io::BufReader::with_capacity(
            256 * 1024,
            io::Cursor::new(header).chain(ciphertext),
        )) {
            Ok(d) => d,
            Err(_) if transport(&state).is_some() => {
                return Err(DecodeError::Transport(
                    transport(&state).unwrap_or_default(),
                ))
            }
            Err(_) => return Err(DecodeError::NotAge),
        };
        let decrypted = decryptor.decrypt(identities.iter()).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => DecodeError::WrongKey {
                identity_file: identities.path.display().to_string(),
            },
            age::DecryptError::Io(e) => DecodeError::Transport(e.to_string()),
            other => DecodeError::Corrupt(other.to_string()),
        })?;
        let decrypted = Timed::new(decrypted, Stage::Age);
        let inner: Box<dyn Read + Send> = match compression {
            Compression::Zstd => Box::new(Timed::new(
                zstd::stream::read::Decoder::new(decrypted)
                    .map_err(|e| DecodeError::Corrupt(e.to_string()))?,
                Stage::Zstd,
            )),
            Compression::None => Box::new(decrypted),
        };
        Ok(PlainReader {
            inner,
            state,
            plaintext_bytes: 0,
            header_sha256,
        })
    }

    /// Reads plaintext, classifying failures as damage or transport.
    ///
    /// # Errors
    /// [`DecodeError::Corrupt`] (authentication, truncation, bad compression) or
    /// [`DecodeError::Transport`].
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, DecodeError> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.plaintext_bytes += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let transport = self
                        .state
                        .lock()
                        .expect("hash state poisoned")
                        .transport_error
                        .clone();
                    return Err(match transport {
                        Some(t) => DecodeError::Transport(t),
                        None => DecodeError::Corrupt(e.to_string()),
                    });
                }
            }
        }
    }

    /// A [`Read`] view for checks that parse the plaintext; the first decode error is kept
    /// so the caller can tell damage from content it does not like.
    pub fn as_read(&mut self) -> PlainRead<'_> {
        PlainRead {
            reader: self,
            error: None,
        }
    }

    /// Hex sha256 of the object's age header and payload nonce, known once it is open: what
    /// [`crate::catalog::Part::header_sha256`] records.
    pub fn header_sha256(&self) -> &str {
        &self.header_sha256
    }

    /// Plaintext bytes read so far.
    pub fn plaintext_bytes(&self) -> u64 {
        self.plaintext_bytes
    }

    /// Reads whatever is left (so truncation is detected) and returns the ciphertext stats.
    ///
    /// # Errors
    /// As [`PlainReader::read_chunk`].
    pub fn finish(mut self) -> Result<(CiphertextStats, u64), DecodeError> {
        let mut buf = vec![0u8; 256 * 1024];
        while self.read_chunk(&mut buf)? > 0 {}
        Ok((stats(&self.state), self.plaintext_bytes))
    }
}

/// See [`PlainReader::as_read`].
pub struct PlainRead<'a> {
    reader: &'a mut PlainReader,
    error: Option<DecodeError>,
}

impl PlainRead<'_> {
    /// The decode error hit while reading, if any.
    pub fn take_error(&mut self) -> Option<DecodeError> {
        self.error.take()
    }
}

impl Read for PlainRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read_chunk(buf).map_err(|e| {
            let io = io::Error::other(e.to_string());
            self.error.get_or_insert(e);
            io
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reading_stops_at_the_cap() {
        let mut zeros = io::repeat(0).take(1 << 30);
        assert!(read_header(&mut zeros).is_err());
        let mut magic_then_no_newline =
            io::Cursor::new(AGE_MAGIC.to_vec()).chain(io::repeat(b'x').take(1 << 30));
        let err = read_header(&mut magic_then_no_newline).unwrap_err();
        assert!(err.to_string().contains("64 KiB"), "{err}");
    }

    #[test]
    fn a_real_header_is_read_whole_with_what_follows() {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        io::Write::write_all(&mut w, &[7u8; 100_000]).unwrap();
        w.finish().unwrap();
        let mut reader = io::Cursor::new(out.clone());
        let head = read_header(&mut reader).unwrap();
        assert!(out.starts_with(&head) && head.len() < 4096 + 4096);
        let prefix = crate::pipeline::age_prefix_len(&out).unwrap();
        assert!(head.len() >= prefix);
        // The prefix is the header and the 16-byte nonce: the payload starts after it, and
        // no shorter read of the object holds all of it.
        let mac = out.windows(5).position(|w| w == b"\n--- ").unwrap() + 1;
        let mac_line_end = mac + out[mac..].iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(prefix, mac_line_end + 16);
        assert_eq!(crate::pipeline::age_prefix_len(&out[..prefix - 1]), None);
        assert_eq!(crate::pipeline::age_prefix_len(&out[..mac_line_end]), None);
    }
}
