//! Telling monitoring what happened, so a missed or failed night pages someone instead of
//! surfacing on the rebuild day: metrics pushed to a Prometheus Pushgateway ([`push`]), a
//! healthchecks-style dead man's switch ([`ping`]), and the tail of the log the ping
//! carries ([`tail`]).
//!
//! Neither channel may fail a backup or hold it up for long: every request has a short
//! timeout, a failure is logged as a warning and the backup's own exit code stands. The
//! ping URL is a secret (anyone holding it can report success): it is never logged, and
//! messages about it say only "the ping URL".

pub mod ping;
pub mod push;
pub mod tail;
