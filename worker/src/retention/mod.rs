//! Retention: which backups to keep, and deleting the rest safely.
//!
//! - [`policy`]: a pure function of the backup list and `now`, table-tested.
//! - [`prune`]: plans per engine/target from one store listing (every manifest read and
//!   checked: damaged ones count for nothing), refuses plans that would delete a target's
//!   last good backup or more than `--max-delete` of them, and deletes manifest first, then
//!   parts, never outside the selected targets' directories.

pub mod policy;
pub mod prune;

pub use policy::{short_duration, Candidate, Decision, MaxDelete, PolicyError, RetentionPolicy};
