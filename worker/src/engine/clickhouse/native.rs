//! ClickHouse's Native format, read as it streams: enough to walk every block to its end.
//!
//! A `SELECT … FORMAT Native` over HTTP answers 200 before the query has finished; when it
//! fails later (a table dropped mid-dump, `throwIf` in a view), the server appends
//! `Code: NNN. DB::Exception: …` as text to the body. Walking the blocks is the only way to
//! tell a complete result from a cut or poisoned one, and it yields the exact row count for
//! the manifest on the way. Nothing is decoded into values: each column is skipped by the
//! size rules of its type.
//!
//! Layout of a block: `varuint columns, varuint rows`, then per column `string name,
//! string type, data`. Data per type: fixed-width values; `String` as varuint length +
//! bytes; `Nullable(T)` a null map then `T`; `Array(T)` and `Map(K, V)` cumulative u64 offsets
//! then the elements; `Tuple(…)` each element in turn; `LowCardinality(T)` a u64 version,
//! u64 flags/index width, the block's dictionary (as non-nullable `T`) and the indexes.

use std::io::{self, BufRead, Read};

/// Why a Native stream is not a complete result.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("ClickHouse reported an error in the middle of the result: {0}")]
    ServerException(String),
    #[error("the result is cut short: {0}")]
    Truncated(String),
    #[error("the result is not valid Native format: {0}")]
    Malformed(String),
    #[error("column {column} has type {type_name}, which this version cannot walk; exclude the table or file an issue")]
    UnsupportedType { column: String, type_name: String },
    #[error(transparent)]
    Io(io::Error),
}

/// What a walked stream held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeStats {
    pub rows: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// A column type, as far as its size on the wire is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Fixed(usize),
    String,
    Nullable(Box<Wire>),
    Array(Box<Wire>),
    Map(Box<Wire>, Box<Wire>),
    Tuple(Vec<Wire>),
    LowCardinality(Box<Wire>),
}

/// Parses a type name as ClickHouse prints it (`Nullable(String)`, `Array(Tuple(a UInt8,
/// b String))`, `DateTime64(3, 'UTC')`, `Enum8('a' = 1)` …).
///
/// # Errors
/// The name of the type that has no known wire size (e.g. `AggregateFunction(…)`).
pub fn parse_type(name: &str) -> Result<Wire, String> {
    let name = name.trim();
    let (head, args) = match name.find('(') {
        Some(i) if name.ends_with(')') => (&name[..i], Some(&name[i + 1..name.len() - 1])),
        _ => (name, None),
    };
    let one = |args: Option<&str>| -> Result<Wire, String> {
        parse_type(args.ok_or_else(|| name.to_string())?)
    };
    Ok(match head {
        "UInt8" | "Int8" | "Enum8" | "Bool" => Wire::Fixed(1),
        "UInt16" | "Int16" | "Date" | "Enum16" => Wire::Fixed(2),
        "UInt32" | "Int32" | "Float32" | "DateTime" | "Date32" | "IPv4" | "Decimal32" => {
            Wire::Fixed(4)
        }
        "UInt64" | "Int64" | "Float64" | "DateTime64" | "Decimal64" | "Time64" => Wire::Fixed(8),
        "UInt128" | "Int128" | "UUID" | "IPv6" | "Decimal128" => Wire::Fixed(16),
        "UInt256" | "Int256" | "Decimal256" => Wire::Fixed(32),
        "Decimal" => {
            let precision: u32 = args
                .and_then(|a| a.split(',').next())
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| name.to_string())?;
            Wire::Fixed(match precision {
                0..=9 => 4,
                10..=18 => 8,
                19..=38 => 16,
                _ => 32,
            })
        }
        "String" => Wire::String,
        "FixedString" => Wire::Fixed(
            args.and_then(|a| a.trim().parse().ok())
                .ok_or_else(|| name.to_string())?,
        ),
        "Nullable" => Wire::Nullable(Box::new(one(args)?)),
        "Array" => Wire::Array(Box::new(one(args)?)),
        "LowCardinality" => Wire::LowCardinality(Box::new(one(args)?)),
        "SimpleAggregateFunction" => {
            // SimpleAggregateFunction(any, T): stored as T.
            let args = split_args(args.ok_or_else(|| name.to_string())?);
            parse_type(args.get(1).ok_or_else(|| name.to_string())?)?
        }
        "Tuple" => Wire::Tuple(
            split_args(args.ok_or_else(|| name.to_string())?)
                .iter()
                .map(|a| parse_type(strip_element_name(a)))
                .collect::<Result<_, _>>()?,
        ),
        "Map" => {
            let args = split_args(args.ok_or_else(|| name.to_string())?);
            match args.as_slice() {
                [k, v] => Wire::Map(Box::new(parse_type(k)?), Box::new(parse_type(v)?)),
                _ => return Err(name.to_string()),
            }
        }
        _ => return Err(name.to_string()),
    })
}

/// Splits `a, b(c, d), 'e, f'` at top-level commas.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut current) = (0i32, false, String::new());
    let mut chars = args.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                current.push(c);
                if let Some(n) = chars.next() {
                    current.push(n);
                }
                continue;
            }
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// `name Type` (a named tuple element) → `Type`.
fn strip_element_name(element: &str) -> &str {
    if let Some(quoted) = element.strip_prefix('`') {
        if let Some(end) = quoted.find('`') {
            return quoted[end + 1..].trim();
        }
    }
    match element.split_once(' ') {
        Some((name, rest))
            if !name.contains('(')
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '`') =>
        {
            rest.trim()
        }
        _ => element,
    }
}

/// LowCardinality flags (see ClickHouse's SerializationLowCardinality).
const LC_NEED_GLOBAL_DICTIONARY: u64 = 1 << 8;
const LC_HAS_ADDITIONAL_KEYS: u64 = 1 << 9;

/// Counts bytes read.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.bytes += amt as u64;
        self.inner.consume(amt);
    }
}

/// The server writes an exception as text where the next block would start.
const EXCEPTION_START: &[u8] = b"Code: ";

/// Walks a whole Native stream and returns its row count; `on_block` hears each block's
/// rows (for progress).
///
/// # Errors
/// [`NativeError`]: a server exception in the body, a cut or malformed stream, a type
/// that cannot be walked, or the reader's own error.
pub fn walk(
    input: impl BufRead,
    mut on_block: impl FnMut(u64),
) -> Result<NativeStats, NativeError> {
    let mut r = Counting {
        inner: input,
        bytes: 0,
    };
    let mut stats = NativeStats::default();
    loop {
        let next = r.fill_buf().map_err(NativeError::Io)?;
        if next.is_empty() {
            break;
        }
        // 'C' would be a block of 67 columns; "Code: " is the server's exception text.
        if next.starts_with(EXCEPTION_START)
            || (next.len() < EXCEPTION_START.len() && EXCEPTION_START.starts_with(next))
        {
            return Err(explain(Fail::Bad("an exception".into()), &mut r));
        }
        match walk_block(&mut r) {
            Ok(rows) => {
                stats.rows += rows;
                stats.blocks += 1;
                on_block(rows);
            }
            Err(e) => return Err(explain(e, &mut r)),
        }
    }
    stats.bytes = r.bytes;
    Ok(stats)
}

/// Errors inside a block: the stream may be an exception text instead.
enum Fail {
    Eof(String),
    Bad(String),
    Unsupported { column: String, type_name: String },
    Io(io::Error),
}

fn explain<R: BufRead>(fail: Fail, r: &mut Counting<R>) -> NativeError {
    match fail {
        Fail::Io(e) => NativeError::Io(e),
        Fail::Unsupported { column, type_name } => {
            NativeError::UnsupportedType { column, type_name }
        }
        fail @ (Fail::Eof(_) | Fail::Bad(_)) => {
            // Whatever follows may be the server's exception text.
            let mut tail = Vec::new();
            let _ = r.take(64 * 1024).read_to_end(&mut tail);
            let text = String::from_utf8_lossy(&tail);
            if let Some(i) = text.find("Code: ") {
                let message = text[i..].lines().next().unwrap_or("").trim().to_string();
                return NativeError::ServerException(message);
            }
            if let Some(i) = text.find("DB::Exception") {
                return NativeError::ServerException(
                    text[i..].lines().next().unwrap_or("").to_string(),
                );
            }
            match fail {
                Fail::Eof(what) => NativeError::Truncated(what),
                Fail::Bad(what) => NativeError::Malformed(what),
                _ => unreachable!("matched above"),
            }
        }
    }
}

fn io_fail(e: io::Error, what: &str) -> Fail {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Fail::Eof(format!("eof while reading {what}"))
    } else {
        Fail::Io(e)
    }
}

fn read_varuint(r: &mut impl BufRead, what: &str) -> Result<u64, Fail> {
    // Fast path: the whole varint is in the buffer (almost always).
    let buf = r.fill_buf().map_err(Fail::Io)?;
    let mut value = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            r.consume(i + 1);
            return Ok(value);
        }
    }
    if buf.len() >= 10 {
        return Err(Fail::Bad(format!("{what}: varint too long")));
    }
    let mut value = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(|e| io_fail(e, what))?;
        value |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Fail::Bad(format!("{what}: varint too long")))
}

fn read_u64(r: &mut impl Read, what: &str) -> Result<u64, Fail> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(|e| io_fail(e, what))?;
    Ok(u64::from_le_bytes(b))
}

/// Column names and type names are short; anything longer is not Native.
fn read_short_string(r: &mut impl BufRead, what: &str) -> Result<String, Fail> {
    let len = read_varuint(r, what)?;
    if len > 64 * 1024 {
        return Err(Fail::Bad(format!("{what} of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| io_fail(e, what))?;
    String::from_utf8(buf).map_err(|_| Fail::Bad(format!("{what} is not UTF-8")))
}

fn skip(r: &mut impl BufRead, mut n: u64, what: &str) -> Result<(), Fail> {
    if n == 0 {
        return Ok(());
    }
    while n > 0 {
        let available = r.fill_buf().map_err(Fail::Io)?.len();
        if available == 0 {
            return Err(Fail::Eof(format!("eof while reading {what}")));
        }
        let step = (available as u64).min(n) as usize;
        r.consume(step);
        n -= step as u64;
    }
    Ok(())
}

/// Sanity bound: a block claiming more rows than this is garbage, not data.
const MAX_ROWS_PER_BLOCK: u64 = 1 << 40;

fn walk_block(r: &mut impl BufRead) -> Result<u64, Fail> {
    let columns = read_varuint(r, "the column count")?;
    let rows = read_varuint(r, "the row count")?;
    if columns > 100_000 || rows > MAX_ROWS_PER_BLOCK {
        return Err(Fail::Bad(format!(
            "block header claims {columns} columns, {rows} rows"
        )));
    }
    for _ in 0..columns {
        let column = read_short_string(r, "a column name")?;
        let type_name = read_short_string(r, "a column type")?;
        let wire = parse_type(&type_name).map_err(|_| {
            if type_name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                Fail::Unsupported {
                    column: column.clone(),
                    type_name: type_name.clone(),
                }
            } else {
                Fail::Bad(format!("column {column:?} has no type"))
            }
        })?;
        skip_column(r, &wire, rows, &column)?;
    }
    Ok(rows)
}

fn skip_column(r: &mut impl BufRead, wire: &Wire, rows: u64, column: &str) -> Result<(), Fail> {
    match wire {
        Wire::Fixed(width) => skip(r, *width as u64 * rows, column),
        Wire::String => {
            for _ in 0..rows {
                let len = read_varuint(r, column)?;
                skip(r, len, column)?;
            }
            Ok(())
        }
        Wire::Nullable(inner) => {
            skip(r, rows, column)?;
            skip_column(r, inner, rows, column)
        }
        Wire::Array(inner) => {
            let total = last_offset(r, rows, column)?;
            skip_column(r, inner, total, column)
        }
        Wire::Map(k, v) => {
            let total = last_offset(r, rows, column)?;
            skip_column(r, k, total, column)?;
            skip_column(r, v, total, column)
        }
        Wire::Tuple(elements) => {
            for e in elements {
                skip_column(r, e, rows, column)?;
            }
            Ok(())
        }
        Wire::LowCardinality(inner) => {
            if rows == 0 {
                return Ok(());
            }
            let version = read_u64(r, column)?;
            if version != 1 {
                return Err(Fail::Bad(format!(
                    "column {column}: LowCardinality version {version}"
                )));
            }
            let flags = read_u64(r, column)?;
            if flags & LC_NEED_GLOBAL_DICTIONARY != 0 {
                return Err(Fail::Bad(format!(
                    "column {column}: a global dictionary in Native"
                )));
            }
            let index_width = match flags & 0xff {
                0 => 1,
                1 => 2,
                2 => 4,
                3 => 8,
                other => return Err(Fail::Bad(format!("column {column}: index type {other}"))),
            };
            if flags & LC_HAS_ADDITIONAL_KEYS != 0 {
                let keys = read_u64(r, column)?;
                // The dictionary holds the non-nullable type; nulls are index 0.
                let dict = match inner.as_ref() {
                    Wire::Nullable(t) => t.as_ref(),
                    t => t,
                };
                skip_column(r, dict, keys, column)?;
            }
            let indexes = read_u64(r, column)?;
            if indexes != rows {
                return Err(Fail::Bad(format!(
                    "column {column}: {indexes} indexes for {rows} rows"
                )));
            }
            skip(r, indexes * index_width, column)
        }
    }
}

/// Reads `rows` cumulative offsets and returns the last (the element count).
fn last_offset(r: &mut impl BufRead, rows: u64, column: &str) -> Result<u64, Fail> {
    let mut last = 0;
    for _ in 0..rows {
        let offset = read_u64(r, column)?;
        if offset < last || offset > MAX_ROWS_PER_BLOCK {
            return Err(Fail::Bad(format!("column {column}: offsets out of order")));
        }
        last = offset;
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_names() {
        use Wire::*;
        let cases = [
            ("UInt64", Fixed(8)),
            ("Nullable(String)", Nullable(Box::new(String))),
            (
                "Array(Array(String))",
                Array(Box::new(Array(Box::new(String)))),
            ),
            (
                "LowCardinality(Nullable(String))",
                LowCardinality(Box::new(Nullable(Box::new(String)))),
            ),
            ("Tuple(UInt8, String)", Tuple(vec![Fixed(1), String])),
            (
                "Tuple(a UInt8, `b c` String)",
                Tuple(vec![Fixed(1), String]),
            ),
            (
                "Map(LowCardinality(String), String)",
                Map(Box::new(LowCardinality(Box::new(String))), Box::new(String)),
            ),
            ("DateTime64(9, 'UTC')", Fixed(8)),
            ("DateTime('Europe/Berlin')", Fixed(4)),
            ("Decimal(10, 2)", Fixed(8)),
            ("Decimal(38, 4)", Fixed(16)),
            ("Enum8('a, b' = 1, 'c(' = 2)", Fixed(1)),
            ("FixedString(16)", Fixed(16)),
            (
                "SimpleAggregateFunction(anyLast, Nullable(Float64))",
                Nullable(Box::new(Fixed(8))),
            ),
        ];
        for (name, wire) in cases {
            assert_eq!(parse_type(name), Ok(wire), "{name}");
        }
        assert!(parse_type("AggregateFunction(uniq, String)").is_err());
    }

    /// A hand-built stream: two blocks of (UInt32, String, LowCardinality(String)).
    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        for rows in [2u8, 1] {
            out.extend([3, rows]);
            out.extend(b"\x02id\x06UInt32");
            for i in 0..rows {
                out.extend(u32::from(i).to_le_bytes());
            }
            out.extend(b"\x01s\x06String");
            for _ in 0..rows {
                out.extend(b"\x03abc");
            }
            out.extend(b"\x02lc\x16LowCardinality(String)");
            out.extend(1u64.to_le_bytes());
            out.extend(0x600u64.to_le_bytes());
            out.extend(2u64.to_le_bytes());
            out.extend(b"\x00\x01x");
            out.extend(u64::from(rows).to_le_bytes());
            out.extend(std::iter::repeat_n(1u8, rows as usize));
        }
        out
    }

    #[test]
    fn walks_blocks_and_counts_rows() {
        let s = stream();
        let mut seen = Vec::new();
        let stats = walk(s.as_slice(), |n| seen.push(n)).unwrap();
        assert_eq!(
            stats,
            NativeStats {
                rows: 3,
                blocks: 2,
                bytes: s.len() as u64
            }
        );
        assert_eq!(seen, vec![2, 1]);
        assert_eq!(walk(&b""[..], |_| {}).unwrap().rows, 0);
    }

    /// Native has no end marker: a stream cut exactly between blocks is a valid shorter
    /// result. HTTP catches that cut (a chunked body without its last chunk); every other
    /// cut is caught here.
    #[test]
    fn every_cut_inside_a_block_is_caught() {
        let s = stream();
        let first_block = 100;
        assert_eq!(walk(&s[..first_block], |_| {}).unwrap().rows, 2);
        for cut in (1..s.len()).filter(|c| *c != first_block) {
            let err = walk(&s[..cut], |_| {}).unwrap_err();
            assert!(
                matches!(err, NativeError::Truncated(_) | NativeError::Malformed(_)),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_server_exception_after_good_blocks_is_reported_verbatim() {
        let mut s = stream();
        s.extend(b"Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero (version 18.16.1)\n");
        let err = walk(s.as_slice(), |_| {}).unwrap_err();
        match err {
            NativeError::ServerException(m) => assert!(
                m.starts_with("Code: 395. DB::Exception: Value passed"),
                "{m}"
            ),
            other => panic!("{other}"),
        }
    }
}
