//! Retention: which backups to keep, and deleting the rest safely.
//!
//! - [`policy`]: a pure function of the backup list and `now`, table-tested.
//! - [`prune`]: plans per engine/target from one store listing and deletes manifest first,
//!   then parts, never outside the selected targets' directories.

pub mod policy;
pub mod prune;

pub use policy::{Candidate, Decision, PolicyError, RetentionPolicy};
