//! The write path of every backup part: a producer writes plaintext into a [`Write`]; it is
//! compressed with zstd, encrypted with age, hashed and handed to the store as it goes.
//!
//! The one rule: the store receives [`BodyChunk::End`] only after the producer returned `Ok`
//! *and* both the zstd and the age writers were finished. A failed producer (pg_dump exiting
//! non-zero, a truncated HTTP body) therefore never becomes a complete object, and an
//! unfinished age stream (which would not decrypt) cannot be committed either.

use std::io::{self, Write};

use age::x25519;
use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL_DEPTH, CHUNK_SIZE};
use crate::catalog::Compression;
use crate::store::{BodyChunk, StoreError, WriteStore};

/// How parts are encoded.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    /// The age public keys each part is encrypted to.
    pub recipients: Vec<x25519::Recipient>,
    /// Compression before encryption.
    pub compression: Compression,
    /// zstd level; 1–3 keeps up with a dump on one core, higher trades speed for size.
    pub zstd_level: i32,
    /// zstd worker threads; 0 compresses on the encoding thread itself.
    pub zstd_threads: u32,
    /// Signs the manifest (`manifest.json.minisig`); `None` writes an unsigned backup.
    pub signing: Option<std::sync::Arc<crate::catalog::SigningKey>>,
}

/// What was stored for one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartStats {
    /// Bytes the producer wrote.
    pub plaintext_bytes: u64,
    /// Bytes stored.
    pub ciphertext_bytes: u64,
    /// Hex sha256 of the stored bytes.
    pub ciphertext_sha256: String,
    /// Hex sha256 of the stored object's age header and payload nonce
    /// ([`super::age_prefix_len`]).
    pub header_sha256: String,
}

/// Errors storing one part.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The producer failed; its error says why (e.g. pg_dump's stderr).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// Compression or encryption failed.
    #[error("compressing or encrypting the stream failed")]
    Encode(#[source] io::Error),
    /// The upload failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a cancelled part waits for its producer to notice.
const PRODUCER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The error type producers return.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Streams one part into `key`: runs `produce` on a blocking thread with a writer that
/// compresses, encrypts and uploads, and returns the part's stats and whatever facts the
/// producer gathered (row counts, snapshot metadata…).
///
/// # Errors
/// The producer's own error, encoding errors, or the store's error (an unreachable store
/// is reported as such, not as the broken pipe the producer then sees).
pub async fn store_part<T, F>(
    store: &dyn WriteStore,
    key: &str,
    settings: &EncodeSettings,
    cancel: &CancellationToken,
    produce: F,
) -> Result<(PartStats, T), EncodeError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T, SourceError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let settings = settings.clone();
    let mut encoding = tokio::task::spawn_blocking(move || encode(tx, &settings, produce));
    let upload = store.put_stream(key, rx, cancel);
    // A producer blocked in a read from a stalled source never notices that the upload
    // was aborted. Once the run is cancelled (SIGTERM, --timeout, a failed sibling) it gets
    // a short grace to stop by itself, then it is left behind: the process exits without
    // waiting for it, and nothing of this part was committed.
    let finished = async {
        tokio::select! {
            done = &mut encoding => Some(done.expect("encoding thread panicked")),
            () = async {
                cancel.cancelled().await;
                tokio::time::sleep(PRODUCER_GRACE).await;
            } => None,
        }
    };
    let (uploaded, encoded) = tokio::join!(upload, finished);
    let encoded = encoded.unwrap_or_else(|| {
        Err(EncodeError::Source(
            format!(
                "the source did not stop within {} s of the cancellation (it is blocked reading from its server); the part was abandoned",
                PRODUCER_GRACE.as_secs()
            )
            .into(),
        ))
    });
    match (uploaded, encoded) {
        (Ok(stored), Ok((stats, facts))) => {
            debug_assert_eq!(stored, stats.ciphertext_bytes);
            Ok((stats, facts))
        }
        // The uploader only sees "incomplete" when the producer side failed first: report
        // the producer's error, it says why.
        (Err(StoreError::Incomplete { .. }), Err(e)) => Err(e),
        (Err(e), _) => Err(EncodeError::Store(e)),
        (Ok(_), Err(e)) => Err(e),
    }
}

fn encode<T, F>(
    tx: mpsc::Sender<BodyChunk>,
    settings: &EncodeSettings,
    produce: F,
) -> Result<(PartStats, T), EncodeError>
where
    F: FnOnce(&mut dyn Write) -> Result<T, SourceError>,
{
    let sink = ChannelWriter {
        tx,
        batch: BytesMut::with_capacity(CHUNK_SIZE),
        hasher: Sha256::new(),
        bytes: 0,
        head: Vec::new(),
        prefix: None,
    };
    let recipients = settings.recipients.iter().map(|r| r as &dyn age::Recipient);
    let encryptor = age::Encryptor::with_recipients(recipients)
        .map_err(|e| EncodeError::Encode(io::Error::other(e.to_string())))?;
    let encrypted = encryptor.wrap_output(sink).map_err(EncodeError::Encode)?;
    let compressor = match settings.compression {
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(encrypted, settings.zstd_level)
                .map_err(EncodeError::Encode)?;
            z.include_checksum(true).map_err(EncodeError::Encode)?;
            if settings.zstd_threads > 0 {
                z.multithread(settings.zstd_threads)
                    .map_err(EncodeError::Encode)?;
            }
            Compressor::Zstd(z)
        }
        Compression::None => Compressor::Plain(encrypted),
    };
    let mut counting = CountingWriter {
        inner: compressor,
        bytes: 0,
    };
    let facts = produce(&mut counting).map_err(EncodeError::Source)?;
    let plaintext_bytes = counting.bytes;
    let encrypted = counting.inner.finish().map_err(EncodeError::Encode)?;
    let mut sink = encrypted.finish().map_err(EncodeError::Encode)?;
    sink.send_batch().map_err(EncodeError::Encode)?;
    let prefix = sink
        .prefix
        .ok_or_else(|| EncodeError::Encode(io::Error::other("age wrote no complete header")))?;
    let stats = PartStats {
        plaintext_bytes,
        ciphertext_bytes: sink.bytes,
        ciphertext_sha256: hex::encode(sink.hasher.finalize()),
        header_sha256: hex::encode(Sha256::digest(&sink.head[..prefix])),
    };
    // Commit point of the object: only reached when everything above succeeded.
    sink.tx
        .blocking_send(BodyChunk::End)
        .map_err(|_| EncodeError::Encode(upload_gone()))?;
    Ok((stats, facts))
}

fn upload_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
}

enum Compressor<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Compressor<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zstd(z) => z.finish(),
            Compressor::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(z) => z.write(buf),
            Compressor::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(z) => z.flush(),
            Compressor::Plain(w) => w.flush(),
        }
    }
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes the ciphertext and hands it to the uploader in [`CHUNK_SIZE`] batches.
struct ChannelWriter {
    tx: mpsc::Sender<BodyChunk>,
    batch: BytesMut,
    hasher: Sha256,
    bytes: u64,
    /// The object's first bytes, until they hold the age header and nonce.
    head: Vec<u8>,
    /// Their length once known: every later write skips the search.
    prefix: Option<usize>,
}

impl ChannelWriter {
    fn send_batch(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let data = self.batch.split().freeze();
        self.batch.reserve(CHUNK_SIZE);
        self.tx
            .blocking_send(BodyChunk::Data(data))
            .map_err(|_| upload_gone())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.prefix.is_none() && self.head.len() <= super::decode::MAX_HEADER_BYTES + 16 {
            self.head.extend_from_slice(buf);
            self.prefix = super::age_prefix_len(&self.head);
        }
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        self.batch.extend_from_slice(buf);
        if self.batch.len() >= CHUNK_SIZE {
            self.send_batch()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
