//! Progress reporting for long reads and restores. The library only talks to these traits;
//! `kubectl-dr` draws bars with them and `worker` (a CronJob, no terminal) uses
//! [`NoProgress`] and logs a summary per part instead.

use std::sync::Arc;

/// Creates one bar per long operation.
pub trait Progress: Send + Sync {
    /// `total` is in bytes when known.
    fn start(&self, label: &str, total: Option<u64>) -> Arc<dyn ProgressBar>;
}

/// One operation's progress.
pub trait ProgressBar: Send + Sync {
    /// `bytes` more were processed.
    fn inc(&self, bytes: u64);
    /// The work is done; the bar may disappear.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

struct NoBar;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: Option<u64>) -> Arc<dyn ProgressBar> {
        Arc::new(NoBar)
    }
}

impl ProgressBar for NoBar {
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
}
