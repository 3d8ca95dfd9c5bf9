//! TabSeparated as the fallback data format, for tables with a column the Native walker
//! cannot walk ([`super::native::parse_type`] fails: `AggregateFunction(…)` states, whose
//! layout is specific to each function, `Dynamic`, `JSON`).
//!
//! TabSeparated is newline-delimited for every type: values escape `\n`, `\t` and `\\`, so
//! a raw 0x0A ends a row and a raw 0x09 separates columns, whatever the bytes inside
//! (aggregate states round-trip as escaped bytes). That gives what the backup needs from
//! a format: exact row counts, a cut (a last row without its newline) and an exception the
//! server appended after a 200 (`Code: … DB::Exception`, or the 25.11+ `__exception__`
//! envelope) all show. It is larger and slower than Native (docs/PERFORMANCE.md), so it is
//! used only where Native cannot be walked.

use std::io::BufRead;

use super::native::{exception_message, NativeError, NativeStats, EXCEPTION_ENVELOPE};

/// How much of each row's start is kept to recognise an exception line.
const KEEP: usize = 512;

/// Walks a TabSeparated result to its end; returns its row count. With `columns`, every
/// row must have that many fields.
///
/// # Errors
/// [`NativeError::ServerException`] for an exception written into the body,
/// [`NativeError::Truncated`] for a last row without its newline,
/// [`NativeError::Malformed`] for a row with the wrong number of fields, and the reader's
/// own error.
pub fn walk(mut input: impl BufRead, columns: Option<usize>) -> Result<NativeStats, NativeError> {
    let mut stats = NativeStats::default();
    // The start of the current row, and whether it has begun at all.
    let mut head: Vec<u8> = Vec::with_capacity(KEEP);
    let mut row_bytes = 0u64;
    let mut tabs = 0usize;
    let mut bad_row: Option<(u64, usize)> = None;
    loop {
        let buf = input.fill_buf().map_err(NativeError::Io)?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        let mut start = 0;
        while start < n {
            match buf[start..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = &buf[start..start + i];
                    keep(&mut head, line);
                    tabs += count_tabs(line);
                    if let Some(message) = exception_line(&head) {
                        return Err(NativeError::ServerException(message));
                    }
                    if columns.is_some_and(|c| tabs + 1 != c) && bad_row.is_none() {
                        bad_row = Some((stats.rows + 1, tabs + 1));
                    }
                    stats.rows += 1;
                    head.clear();
                    row_bytes = 0;
                    tabs = 0;
                    start += i + 1;
                }
                None => {
                    let rest = &buf[start..];
                    keep(&mut head, rest);
                    tabs += count_tabs(rest);
                    row_bytes += rest.len() as u64;
                    start = n;
                }
            }
        }
        stats.bytes += n as u64;
        input.consume(n);
    }
    if row_bytes > 0 || !head.is_empty() {
        // A last row without its newline: a cut, or an exception text without one.
        if let Some(message) = exception_message(&String::from_utf8_lossy(&head)) {
            return Err(NativeError::ServerException(message));
        }
        return Err(NativeError::Truncated(format!(
            "the last row (after {} complete rows) has no end",
            stats.rows
        )));
    }
    if let Some((row, fields)) = bad_row {
        return Err(NativeError::Malformed(format!(
            "row {row} has {fields} fields, the table has {} columns",
            columns.unwrap_or_default()
        )));
    }
    Ok(stats)
}

fn keep(head: &mut Vec<u8>, bytes: &[u8]) {
    let room = KEEP.saturating_sub(head.len());
    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn count_tabs(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\t').count()
}

/// A whole line that is the server's exception rather than a row: the 25.11+ envelope's
/// opening line, or `Code: N. DB::Exception: …`. (A one-column table whose value is exactly
/// such a text would be misread as a failure: the safe direction.)
fn exception_line(line: &[u8]) -> Option<String> {
    if line.starts_with(EXCEPTION_ENVELOPE) {
        return Some("the server ended the result with an exception (details follow the __exception__ marker)".into());
    }
    let text = String::from_utf8_lossy(line);
    if text.starts_with("Code: ") && text.contains("DB::Exception") {
        return Some(text.trim().to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<u8> {
        // Escaped bytes as ClickHouse writes an aggregate state: \0, \n and \t escaped.
        b"1\t\\0 \\0\\0\\0\\x\n2\ta\\tb\\nc\n3\t\xf0?\\0\n".to_vec()
    }

    #[test]
    fn counts_rows_whatever_the_escaped_bytes() {
        let stats = walk(rows().as_slice(), Some(2)).unwrap();
        assert_eq!(stats.rows, 3);
        assert_eq!(walk(&b""[..], Some(2)).unwrap().rows, 0);
    }

    #[test]
    fn every_cut_inside_a_row_is_caught() {
        let s = rows();
        let ends: Vec<usize> = s
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        for cut in 1..s.len() {
            let result = walk(&s[..cut], Some(2));
            if ends.contains(&cut) {
                assert!(result.is_ok(), "cut at a row end {cut}");
            } else {
                assert!(
                    matches!(
                        result,
                        Err(NativeError::Truncated(_) | NativeError::Malformed(_))
                    ),
                    "cut at {cut}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn exceptions_in_both_forms_are_reported() {
        let mut legacy = rows();
        legacy.extend(
            b"Code: 241. DB::Exception: Memory limit (for query) exceeded (version 24.8.1)\n",
        );
        match walk(legacy.as_slice(), Some(2)) {
            Err(NativeError::ServerException(m)) => assert!(m.starts_with("Code: 241"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut tagged = rows();
        tagged.extend(
            b"__exception__AB12CD\nCode: 395. DB::Exception: boom\n33 AB12CD__exception__\n",
        );
        assert!(matches!(
            walk(tagged.as_slice(), Some(2)),
            Err(NativeError::ServerException(_))
        ));
        let mut cut_exception = rows();
        cut_exception.extend(b"Code: 32. DB::Exception: Attempt to read after eof");
        assert!(matches!(
            walk(cut_exception.as_slice(), Some(2)),
            Err(NativeError::ServerException(_))
        ));
    }

    #[test]
    fn a_row_with_the_wrong_field_count_is_malformed() {
        assert!(matches!(
            walk(&b"1\t2\n3\n"[..], Some(2)),
            Err(NativeError::Malformed(_))
        ));
    }
}
