//! The last lines of the log, kept while they are written to stderr, so the dead man's
//! switch can carry them: the person paged at 3 a.m. sees why the backup failed without
//! finding the pod first.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Bytes of log kept (more than any ping body limit in use: healthchecks' is 10,000).
const KEEP: usize = 64 * 1024;

/// A `tracing` writer that writes to stderr and keeps the last [`KEEP`] bytes.
#[derive(Debug, Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<u8>>>);

impl LogTail {
    /// Appends text that did not go through `tracing` (the final error in text mode).
    pub fn push(&self, text: &[u8]) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.extend(text);
        let excess = kept.len().saturating_sub(KEEP);
        kept.drain(..excess);
    }

    /// The last at most `limit` bytes, starting at a line when the cut falls inside one
    /// and a whole line follows; when the limit is smaller than the last line, the end of
    /// that line (where a log line's error and exit code are), never nothing.
    pub fn last(&self, limit: usize) -> Vec<u8> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let skip = kept.len().saturating_sub(limit);
        let mut out: Vec<u8> = kept.iter().skip(skip).copied().collect();
        if skip > 0 {
            let body = out.strip_suffix(b"\n").unwrap_or(&out);
            if let Some(nl) = body.iter().position(|&b| b == b'\n') {
                out.drain(..=nl);
            }
        }
        out
    }
}

/// One write of the log: to stderr, and into the tail.
pub struct TailWriter {
    tail: LogTail,
}

impl Write for TailWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.push(buf);
        // A closed stderr must not stop the backup (nor the ping that reports it).
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogTail {
    type Writer = TailWriter;

    fn make_writer(&'a self) -> Self::Writer {
        TailWriter { tail: self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_whole_lines_of_the_end() {
        let tail = LogTail::default();
        for i in 0..10_000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let last = String::from_utf8(tail.last(100)).unwrap();
        assert!(last.len() <= 100);
        assert!(last.starts_with("line "), "{last}");
        assert!(last.ends_with("line 9999\n"), "{last}");
        assert!(tail.0.lock().unwrap().len() <= KEEP);
    }

    #[test]
    fn a_last_line_longer_than_the_limit_keeps_its_end() {
        let tail = LogTail::default();
        tail.push(b"starting\n");
        let long = format!("{} exit_code=2 failed: disk full\n", "x".repeat(500));
        tail.push(long.as_bytes());
        let last = String::from_utf8(tail.last(40)).unwrap();
        assert_eq!(last.len(), 40, "{last:?}");
        assert!(
            last.ends_with("exit_code=2 failed: disk full\n"),
            "{last:?}"
        );
        // Without a trailing newline, too.
        tail.push(b"error: the end");
        let last = String::from_utf8(tail.last(10)).unwrap();
        assert_eq!(last, "r: the end");
    }
}
