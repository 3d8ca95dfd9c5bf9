//! The streaming stages between a database and a store.
//!
//! - [`keys`]: age recipients (public, the only keys the backup side holds) and identities.
//! - [`encode`]: plaintext ─► zstd ─► age ─► sha256 ─► [`crate::store::WriteStore::put_stream`].
//! - [`decode`]: store ─► sha256 ─► age -d ─► zstd -d ─► plaintext reader.
//!
//! The CPU-bound stages (compression, encryption, hashing) run on one blocking thread per
//! part with the synchronous `age` and `zstd` APIs, which is simpler and faster than
//! bouncing 64 KiB chunks between async tasks; only the upload and download are async.
//! Memory is bounded by the channel depth and the store's parts in flight, never by the
//! size of the dump, and no plaintext ever touches the disk.

pub mod decode;
pub mod encode;
pub mod keys;

/// Size of the batches sent from the encoding thread to the uploader.
pub(crate) const CHUNK_SIZE: usize = 1024 * 1024;
/// Batches buffered between the encoding thread and the uploader.
pub(crate) const CHANNEL_DEPTH: usize = 4;
