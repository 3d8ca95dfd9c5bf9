//! drkit: the engine room shared by `worker` (takes backups) and `kubectl-dr` (lists, verifies,
//! restores them).
//!
//! Data flows through the modules in this order:
//!
//! ```text
//! engine::<db>::dump ─► pipeline::encode (zstd ─► age ─► sha256) ─► store::{s3,local}
//!                                                                   │
//! catalog (ids, manifest.json = the commit, listing) ◄──────────────┘
//! store ─► pipeline::decode (sha256 check ─► age -d ─► zstd -d) ─► engine::<db>::restore
//! ```
//!
//! - [`catalog`]: backup ids, the manifest format and the listing of complete backups.
//! - [`store`]: where ciphertext lives; one trait split by capability, S3 and a local directory.
//! - [`pipeline`]: the streaming stages between a database and a store, and the age keys.
//! - [`engine`]: one module per database; each knows how to dump, restore and count.
//! - [`verify`]: integrity checks and count comparison, shared by `verify` and `restore`.
//! - [`rebuild`]: the order of work of every restore, and of many at once (`restore --all`,
//!   `worker drill`).
//! - [`rekey`]: re-encrypting backups to new recipients, streamed, never unrestorable.
//! - [`drill`]: `worker drill`, the scheduled restore into scratch destinations.
//! - [`observe`]: metrics for a Prometheus Pushgateway and a dead man's switch ping.
//! - [`progress`]: a small reporting trait so the plugin can draw bars while `worker` stays quiet.
//! - [`shutdown`]: the cancellation signal that turns SIGTERM into aborted uploads.

#![deny(missing_docs)]

pub mod catalog;
pub mod cli;
pub mod drill;
pub mod engine;
pub mod observe;
pub mod pipeline;
pub mod progress;
pub mod rebuild;
pub mod rekey;
pub mod retention;
pub mod shutdown;
pub mod store;
pub mod verify;

/// Version recorded in every manifest, so a restore can tell which tool wrote a backup.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
