//! Where a restore's time goes (`kubectl dr restore --timings`): each layer of the read path
//! and each phase of a load adds the time spent in it to a process-wide counter, so a slow
//! restore can be set against its by-hand pipeline stage by stage (docs/PERFORMANCE.md).
//!
//! The read path's layers are nested readers in one thread (store ◄ sha256 ◄ age ◄ zstd ◄
//! the tool's stdin): each read is timed and its children's time taken out, so every stage
//! counts only its own work ("exclusive" time), and the stages add up to the read path's
//! wall time. Phases that run beside each other (ANALYZE and the counts) are wall times of
//! their own. Counting costs two clock reads per read call of up to 256 KiB: it is always on,
//! and printed only when asked.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A stage of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for ciphertext from the store (network, the store's own read).
    StoreRead,
    /// Hashing the ciphertext (sha256, checked against the manifest).
    Sha256,
    /// age: authenticating and decrypting.
    Age,
    /// zstd: decompressing.
    Zstd,
    /// Blocked writing plaintext into the restore tool (the tool is the slower side).
    ToolWait,
    /// The restore tool's whole run (pg_restore from start to exit), wall time.
    Load,
    /// ANALYZE after the load, wall time (beside the counts).
    Analyze,
    /// The exact counts after the load, wall time (beside ANALYZE).
    Counts,
}

const STAGES: [(Stage, &str); 8] = [
    (Stage::StoreRead, "store read"),
    (Stage::Sha256, "sha256"),
    (Stage::Age, "age"),
    (Stage::Zstd, "zstd"),
    (Stage::ToolWait, "waiting on the restore tool"),
    (Stage::Load, "restore tool (wall)"),
    (Stage::Analyze, "ANALYZE (wall)"),
    (Stage::Counts, "counts (wall)"),
];

static NANOS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

thread_local! {
    /// Time the current timed call's children spent, to be taken out of its own.
    static CHILDREN: Cell<u64> = const { Cell::new(0) };
}

fn slot(stage: Stage) -> &'static AtomicU64 {
    // STAGES lists the stages in their declaration order (a unit test holds it to that).
    &NANOS[stage as usize]
}

/// Runs `f` as `stage`, counting its time less that of any timed call inside it.
pub fn nested<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let outer = CHILDREN.with(|c| c.replace(0));
    let start = Instant::now();
    let out = f();
    let total = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let children = CHILDREN.with(Cell::get);
    slot(stage).fetch_add(total.saturating_sub(children), Ordering::Relaxed);
    CHILDREN.with(|c| c.set(outer.saturating_add(total)));
    out
}

/// Adds a measured wall time to `stage` (phases, not nested reads).
pub fn add(stage: Stage, elapsed: Duration) {
    slot(stage).fetch_add(
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// A reader whose reads count as `stage`.
pub struct Timed<R> {
    inner: R,
    stage: Stage,
}

impl<R> Timed<R> {
    /// Times `inner`'s reads as `stage`.
    pub fn new(inner: R, stage: Stage) -> Self {
        Timed { inner, stage }
    }
}

impl<R: std::io::Read> std::io::Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let inner = &mut self.inner;
        nested(self.stage, || inner.read(buf))
    }
}

/// The stages so far, in seconds, each with its name (stages never entered left out).
pub fn report() -> Vec<(&'static str, f64)> {
    STAGES
        .iter()
        .zip(NANOS.iter())
        .map(|((_, name), n)| (*name, n.load(Ordering::Relaxed) as f64 / 1e9))
        .filter(|(_, secs)| *secs > 0.0)
        .collect()
}

/// [`report`] as lines for a terminal, with the whole command's wall time last.
pub fn render(total: Duration) -> String {
    let mut out = String::from(
        "timings (each read stage its own time; the wall times overlap the read stages):\n",
    );
    for (name, secs) in report() {
        out.push_str(&format!("  {name:32} {secs:8.2} s\n"));
    }
    out.push_str(&format!(
        "  {:32} {:8.2} s\n",
        "total (wall)",
        total.as_secs_f64()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_listed_in_declaration_order() {
        for (i, (stage, _)) in STAGES.iter().enumerate() {
            assert_eq!(*stage as usize, i, "{stage:?}");
        }
    }

    #[test]
    fn nested_stages_count_only_their_own_time() {
        let before: Vec<u64> = NANOS.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        nested(Stage::Zstd, || {
            std::thread::sleep(Duration::from_millis(30));
            nested(Stage::Age, || std::thread::sleep(Duration::from_millis(60)));
        });
        let delta = |stage: Stage| {
            let i = stage as usize;
            Duration::from_nanos(NANOS[i].load(Ordering::Relaxed) - before[i])
        };
        // zstd's own 30 ms, not the 90 ms its call took; age its 60 ms.
        assert!(delta(Stage::Zstd) >= Duration::from_millis(30));
        assert!(
            delta(Stage::Zstd) < Duration::from_millis(55),
            "{:?}",
            delta(Stage::Zstd)
        );
        assert!(delta(Stage::Age) >= Duration::from_millis(60));
    }
}
