//! Bandwidth limits (`--max-rate`, `DR_MAX_RATE`): one token bucket for uploads and one for
//! downloads, shared by every stream of the process, so `--parallel` streams divide the
//! limit instead of multiplying it. Stores take tokens for each chunk they send
//! ([`upload`]) and wrap what they read ([`Limited`]); with no limit set both cost nothing.
//!
//! The buckets schedule rather than poll: each chunk reserves its time on a virtual clock
//! that advances by `bytes / rate`, and waits until its slot (GCRA). A second of credit is
//! allowed, so a stream that paused does not crawl afterwards, and the long-run rate is the
//! limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// How far ahead of the clock a bucket may have been idle: the burst it allows.
const BURST: Duration = Duration::from_secs(1);

/// One direction's bucket.
#[derive(Debug)]
pub struct Bucket {
    bytes_per_second: f64,
    /// When the bytes reserved so far will have passed at the limit.
    next: Mutex<Option<Instant>>,
}

impl Bucket {
    /// A bucket of `bytes_per_second`.
    pub fn new(bytes_per_second: u64) -> Bucket {
        Bucket {
            bytes_per_second: bytes_per_second.max(1) as f64,
            next: Mutex::new(None),
        }
    }

    /// Reserves `bytes`; returns how long the caller must wait before sending them.
    pub fn reserve(&self, bytes: usize) -> Duration {
        let now = Instant::now();
        let mut next = self.next.lock().expect("rate lock");
        // An idle bucket starts from now: what it did not use is not owed.
        let start = next.map_or(now, |n| n.max(now));
        let done = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
        *next = Some(done);
        // Up to BURST ahead of the clock goes at once; beyond it, wait.
        done.saturating_duration_since(now + BURST)
    }
}

static LIMITS: OnceLock<(Bucket, Bucket)> = OnceLock::new();

/// Sets the process's limit, once (later calls with another rate are ignored: the flag is
/// read once per process).
pub fn set_max_rate(bytes_per_second: u64) {
    let _ = LIMITS.set((Bucket::new(bytes_per_second), Bucket::new(bytes_per_second)));
}

/// Waits until `bytes` more may be uploaded.
pub async fn upload(bytes: usize) {
    if let Some((up, _)) = LIMITS.get() {
        let wait = up.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A download, held to the process's limit (unchanged when none is set).
pub struct Limited<R> {
    inner: R,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<R> Limited<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Limited { inner, sleep: None }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Limited<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some((_, down))) = (&read, LIMITS.get()) {
            // The bytes just read pay for the wait before the next read.
            let wait = down.reserve(buf.filled().len() - before);
            if !wait.is_zero() {
                self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        read
    }
}

/// Parses `50MiB/s`, `10MB/s`, `512KiB`, `1048576` (bytes per second).
///
/// # Errors
/// Anything else, with the forms it takes.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => f64::NAN,
    };
    let value = number.parse::<f64>().unwrap_or(f64::NAN) * factor;
    if value.is_finite() && value >= 1024.0 {
        Ok(value as u64)
    } else {
        Err(format!(
            "{text:?}: expected a rate of at least 1KiB/s such as 50MiB/s, 10MB/s or 512KiB/s"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_rate("50MiB/s").unwrap(), 50 * 1024 * 1024);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_rate("1.5M").unwrap(), 1_572_864);
        for bad in ["", "fast", "10 parsecs", "0", "12", "-5MiB/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_holds_the_long_run_rate_and_allows_a_second_of_credit() {
        let bucket = Bucket::new(1024 * 1024);
        // The first second's worth goes at once.
        assert!(bucket.reserve(1024 * 1024).is_zero());
        // Then every MiB costs a second, whoever asks.
        let mut waited = Duration::ZERO;
        for _ in 0..10 {
            let wait = bucket.reserve(1024 * 1024);
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        assert_eq!(waited.as_secs(), 10, "{waited:?}");
        // An idle bucket earns at most the burst back.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(bucket.reserve(1024 * 1024).is_zero());
        assert!(!bucket.reserve(1024 * 1024).is_zero());
    }
}
