//! ClickHouse's Native format, read as it streams: enough to walk every block to its end.
//!
//! A `SELECT … FORMAT Native` over HTTP answers 200 before the query has finished; when it
//! fails later (a table dropped mid-dump, `throwIf` in a view), the server appends the
//! exception to the body: as `Code: NNN. DB::Exception: …` text (up to 25.10), or wrapped
//! as `__exception__<tag>\n<message>\n<len> <tag>__exception__` (25.11+, with the tag in
//! the `X-ClickHouse-Exception-Tag` header). Walking the blocks is the only way to tell a
//! complete result from a cut or poisoned one, and it yields the exact row count for the
//! manifest on the way. Nothing is decoded into values: each column is skipped by the size
//! rules of its type.
//!
//! Layout of a block: `varuint columns, varuint rows`, then per column `string name,
//! string type`, then (only when the block has rows) the column in two passes, as
//! ClickHouse's `NativeWriter` writes it:
//! 1. the *state prefixes* of every stream in the type tree, depth first: a u64 key version
//!    for each `LowCardinality`, a u64 discriminator mode for each `Variant`. They come
//!    before any data: `Map(LowCardinality(String), String)` is `[LC version][offsets]
//!    [LC keys][values]`, not `[offsets][LC version]…`.
//! 2. the data: fixed-width values; `String` as varuint length + bytes; `Nullable(T)` a null
//!    map then `T`; `Array(T)` and `Map(K, V)` cumulative u64 offsets then the elements (a
//!    map's keys, then its values); `Tuple(…)` each element in turn; `LowCardinality(T)`
//!    u64 flags/index width, the block's dictionary (as non-nullable `T`) and the indexes
//!    (nothing at all for zero elements); `Variant(…)` one discriminator byte per row (255
//!    is NULL), then each variant's values for the rows that hold it.
//!
//! Over HTTP (no `client_protocol_version`) there is no per-column serialization-kind
//! byte and no sparse columns. Types without a size rule (`AggregateFunction` states,
//! `Dynamic`, `JSON`) are reported as [`NativeError::UnsupportedType`]; the dump sends such
//! tables as TabSeparated instead (see [`super::tsv`]).

use std::io::{self, BufRead, Read};

/// Why a Native stream is not a complete result.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// The server wrote an exception into the result (it failed after it started sending).
    #[error("ClickHouse reported an error in the middle of the result: {0}")]
    ServerException(String),
    /// The result ends inside a block.
    #[error("the result is cut short: {0}")]
    Truncated(String),
    /// The bytes are not a Native result.
    #[error("the result is not valid Native format: {0}")]
    Malformed(String),
    /// A column type no size rule covers (the dump then uses TabSeparated).
    #[error("column {column} has type {type_name}, which this version cannot walk; exclude the table or file an issue")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its type.
        type_name: String,
    },
    /// Reading the result failed.
    #[error(transparent)]
    Io(io::Error),
}

/// What a walked stream held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeStats {
    /// Rows walked.
    pub rows: u64,
    /// Blocks walked.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// A column type, as far as its size on the wire is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// A fixed number of bytes per row (numbers, dates, UUIDs, FixedString).
    Fixed(usize),
    /// A varint length, then that many bytes.
    String,
    /// A null map (one byte per row), then the inner column.
    Nullable(Box<Wire>),
    /// Cumulative offsets (u64 per row), then the inner column for all elements.
    Array(Box<Wire>),
    /// An array of key/value tuples: offsets, then the keys column, then the values column.
    Map(Box<Wire>, Box<Wire>),
    /// Each element's column in turn.
    Tuple(Vec<Wire>),
    /// A dictionary and indexes, in the prefix and data passes.
    LowCardinality(Box<Wire>),
    /// Variants in the order the type name lists them (ClickHouse prints them sorted, and
    /// discriminators index that order).
    Variant(Vec<Wire>),
}

/// Parses a type name as ClickHouse prints it (`Nullable(String)`, `Array(Tuple(a UInt8,
/// b String))`, `DateTime64(3, 'UTC')`, `Enum8('a' = 1)` …).
///
/// # Errors
/// The name of the type that has no known wire size (e.g. `AggregateFunction(…)`).
pub fn parse_type(name: &str) -> Result<Wire, String> {
    if nesting(name) > MAX_TYPE_NESTING {
        return Err(name.to_string());
    }
    parse_nested(name)
}

/// How deep a type may nest. Real schemas stay under ten; a hostile stream that claims
/// `Array(Array(…` thousands deep must fail cleanly instead of overflowing the stack of
/// the walker, which recurses once per level.
pub const MAX_TYPE_NESTING: usize = 64;

/// The deepest parenthesis nesting of a type name.
fn nesting(name: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in name.bytes() {
        match b {
            b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn parse_nested(name: &str) -> Result<Wire, String> {
    let name = name.trim();
    let (head, args) = match name.find('(') {
        Some(i) if name.ends_with(')') => (&name[..i], Some(&name[i + 1..name.len() - 1])),
        _ => (name, None),
    };
    let one = |args: Option<&str>| -> Result<Wire, String> {
        parse_nested(args.ok_or_else(|| name.to_string())?)
    };
    Ok(match head {
        "UInt8" | "Int8" | "Enum8" | "Bool" | "Nothing" => Wire::Fixed(1),
        "UInt16" | "Int16" | "Date" | "Enum16" | "BFloat16" => Wire::Fixed(2),
        "UInt32" | "Int32" | "Float32" | "DateTime" | "Date32" | "IPv4" | "Decimal32" | "Time" => {
            Wire::Fixed(4)
        }
        "UInt64" | "Int64" | "Float64" | "DateTime64" | "Decimal64" | "Time64" => Wire::Fixed(8),
        h if h.starts_with("Interval") => Wire::Fixed(8),
        // Geo types are aliases of tuples and arrays of Float64.
        "Point" => Wire::Tuple(vec![Wire::Fixed(8), Wire::Fixed(8)]),
        "Ring" | "LineString" => Wire::Array(Box::new(parse_nested("Point")?)),
        "Polygon" | "MultiLineString" => Wire::Array(Box::new(parse_nested("Ring")?)),
        "MultiPolygon" => Wire::Array(Box::new(parse_nested("Polygon")?)),
        "Variant" => Wire::Variant(
            split_args(args.ok_or_else(|| name.to_string())?)
                .iter()
                .map(|a| parse_nested(a))
                .collect::<Result<_, _>>()?,
        ),
        "Nested" => Wire::Array(Box::new(Wire::Tuple(
            split_args(args.ok_or_else(|| name.to_string())?)
                .iter()
                .map(|a| parse_nested(strip_element_name(a)))
                .collect::<Result<_, _>>()?,
        ))),
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
            parse_nested(args.get(1).ok_or_else(|| name.to_string())?)?
        }
        "Tuple" => Wire::Tuple(
            split_args(args.ok_or_else(|| name.to_string())?)
                .iter()
                .map(|a| parse_nested(strip_element_name(a)))
                .collect::<Result<_, _>>()?,
        ),
        "Map" => {
            let args = split_args(args.ok_or_else(|| name.to_string())?);
            match args.as_slice() {
                [k, v] => Wire::Map(Box::new(parse_nested(k)?), Box::new(parse_nested(v)?)),
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

/// The server writes an exception as text where the next block would start: plain (up to
/// 25.10) or in its 25.11+ envelope.
const EXCEPTION_STARTS: [&[u8]; 2] = [b"Code: ", EXCEPTION_ENVELOPE];

/// Opens (and closes) a 25.11+ exception: `__exception__<tag>\n<message>\n<len>
/// <tag>__exception__`.
pub const EXCEPTION_ENVELOPE: &[u8] = b"__exception__";

/// The server's message from text that holds an exception in either form, if any.
pub fn exception_message(text: &str) -> Option<String> {
    if let Some(i) = text.find("__exception__") {
        // Skip the tag line; the message is the lines up to `<len> <tag>__exception__`.
        let rest = &text[i + EXCEPTION_ENVELOPE.len()..];
        let body = rest.split_once('\n').map_or("", |(_, b)| b);
        let message: Vec<&str> = body
            .lines()
            .take_while(|l| !l.ends_with("__exception__"))
            .collect();
        let message = message.join(" ").trim().to_string();
        return Some(if message.is_empty() {
            "the server ended the result with an exception".into()
        } else {
            message
        });
    }
    if let Some(i) = text.find("Code: ") {
        return Some(text[i..].lines().next().unwrap_or("").trim().to_string());
    }
    text.find("DB::Exception")
        .map(|i| text[i..].lines().next().unwrap_or("").to_string())
}

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
        // 'C' would be a block of 67 columns, '_' one of 95; these are the server's
        // exception text instead.
        if EXCEPTION_STARTS.iter().any(|start| {
            next.starts_with(start) || (next.len() < start.len() && start.starts_with(next))
        }) {
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
            if let Some(message) = exception_message(&text) {
                return NativeError::ServerException(message);
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
        if nesting(&type_name) > MAX_TYPE_NESTING {
            return Err(Fail::Bad(format!(
                "column {column:?} has a type nested more than {MAX_TYPE_NESTING} levels deep ({} bytes of type name): no real schema does that",
                type_name.len()
            )));
        }
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
        // "Zero items of data is always represented as zero number of bytes" (NativeWriter):
        // an empty block has neither prefixes nor data.
        if rows > 0 {
            let state = read_prefix(r, &wire, &column)?;
            skip_data(r, &wire, &state, rows, &column)?;
        }
    }
    Ok(rows)
}

/// What the prefix pass learned that the data pass needs.
enum State {
    None,
    /// One state per child type (Tuple elements, Map key and value, Variant variants).
    Children(Vec<State>),
}

impl State {
    fn child(&self, i: usize) -> &State {
        match self {
            State::Children(c) => &c[i],
            State::None => &State::None,
        }
    }
}

/// LowCardinality's key serialization version ("shared dictionaries with additional keys").
const LC_KEYS_VERSION: u64 = 1;
/// Variant discriminators, one byte per row (the other mode is per granule, MergeTree only).
const VARIANT_BASIC_DISCRIMINATORS: u64 = 0;
/// The discriminator of a NULL Variant value.
const VARIANT_NULL: u8 = 255;

/// Pass 1: every stream's state prefix, depth first.
fn read_prefix(r: &mut impl BufRead, wire: &Wire, column: &str) -> Result<State, Fail> {
    Ok(match wire {
        Wire::Fixed(_) | Wire::String => State::None,
        Wire::Nullable(inner) | Wire::Array(inner) => read_prefix(r, inner, column)?,
        Wire::Map(k, v) => {
            State::Children(vec![read_prefix(r, k, column)?, read_prefix(r, v, column)?])
        }
        Wire::Tuple(elements) => State::Children(
            elements
                .iter()
                .map(|e| read_prefix(r, e, column))
                .collect::<Result<_, _>>()?,
        ),
        Wire::LowCardinality(_) => {
            let version = read_u64(r, column)?;
            if version != LC_KEYS_VERSION {
                return Err(Fail::Bad(format!(
                    "column {column}: LowCardinality version {version}"
                )));
            }
            State::None
        }
        Wire::Variant(variants) => {
            let mode = read_u64(r, column)?;
            if mode != VARIANT_BASIC_DISCRIMINATORS {
                return Err(Fail::Bad(format!(
                    "column {column}: Variant discriminator mode {mode}"
                )));
            }
            State::Children(
                variants
                    .iter()
                    .map(|v| read_prefix(r, v, column))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

/// Pass 2: the data of `rows` values.
fn skip_data(
    r: &mut impl BufRead,
    wire: &Wire,
    state: &State,
    rows: u64,
    column: &str,
) -> Result<(), Fail> {
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
            skip_data(r, inner, state, rows, column)
        }
        Wire::Array(inner) => {
            let total = last_offset(r, rows, column)?;
            skip_data(r, inner, state, total, column)
        }
        Wire::Map(k, v) => {
            let total = last_offset(r, rows, column)?;
            skip_data(r, k, state.child(0), total, column)?;
            skip_data(r, v, state.child(1), total, column)
        }
        Wire::Tuple(elements) => {
            for (i, e) in elements.iter().enumerate() {
                skip_data(r, e, state.child(i), rows, column)?;
            }
            Ok(())
        }
        Wire::LowCardinality(inner) => skip_low_cardinality(r, inner, rows, column),
        Wire::Variant(variants) => {
            let mut counts = vec![0u64; variants.len()];
            let mut left = rows;
            while left > 0 {
                let buf = r.fill_buf().map_err(Fail::Io)?;
                if buf.is_empty() {
                    return Err(Fail::Eof(format!("eof while reading {column}")));
                }
                let n = (buf.len() as u64).min(left) as usize;
                for &d in &buf[..n] {
                    match counts.get_mut(usize::from(d)) {
                        Some(c) => *c += 1,
                        None if d == VARIANT_NULL => {}
                        None => {
                            return Err(Fail::Bad(format!(
                                "column {column}: discriminator {d} of {} variants",
                                variants.len()
                            )))
                        }
                    }
                }
                r.consume(n);
                left -= n as u64;
            }
            for (i, (v, n)) in variants.iter().zip(counts).enumerate() {
                skip_data(r, v, state.child(i), n, column)?;
            }
            Ok(())
        }
    }
}

fn skip_low_cardinality(
    r: &mut impl BufRead,
    inner: &Wire,
    rows: u64,
    column: &str,
) -> Result<(), Fail> {
    // Zero elements (e.g. only empty arrays of LowCardinality) write nothing at all.
    if rows == 0 {
        return Ok(());
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
        if keys > MAX_ROWS_PER_BLOCK {
            return Err(Fail::Bad(format!(
                "column {column}: {keys} dictionary keys"
            )));
        }
        // The dictionary holds the non-nullable type; nulls are index 0.
        let dict = match inner {
            Wire::Nullable(t) => t.as_ref(),
            t => t,
        };
        skip_data(r, dict, &State::None, keys, column)?;
    }
    let indexes = read_u64(r, column)?;
    if indexes != rows {
        return Err(Fail::Bad(format!(
            "column {column}: {indexes} indexes for {rows} rows"
        )));
    }
    skip(r, indexes * index_width, column)
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

    /// Hostile type names far deeper than any schema: a clean error, not a stack overflow.
    #[test]
    fn absurdly_deep_types_fail_cleanly() {
        for (open, depth) in [("Array(", 9000), ("Nullable(", 6500), ("Tuple(a ", 65)] {
            let name = format!("{}UInt8{}", open.repeat(depth), ")".repeat(depth));
            assert!(
                name.len() < 64 * 1024,
                "{open} name must fit a short string"
            );
            assert_eq!(parse_type(&name), Err(name.clone()));
            let mut block = vec![1u8, 1, 1, b'c'];
            let mut len = name.len();
            while len >= 0x80 {
                block.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            block.push(len as u8);
            block.extend(name.as_bytes());
            block.push(0);
            let err = walk(block.as_slice(), |_| {}).unwrap_err();
            assert!(
                err.to_string().contains("nested more than 64 levels"),
                "{open}: {err}"
            );
        }
        // 64 levels, the limit itself, still parse.
        let name = format!("{}UInt8{}", "Array(".repeat(64), ")".repeat(64));
        assert!(parse_type(&name).is_ok());
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

    /// Fixtures written by ClickHouse 26.9 itself (scripts/native-fixtures.py, chdb-core).
    fn fixtures() -> Vec<(&'static str, Vec<u8>, u64, bool)> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/engine/clickhouse/fixtures"
        );
        let index = std::fs::read_to_string(format!("{dir}/index.tsv")).unwrap();
        index
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let name: &'static str = Box::leak(f[0].to_string().into_boxed_str());
                let bytes = std::fs::read(format!("{dir}/{name}.native")).unwrap();
                (name, bytes, f[1].parse().unwrap(), f[2] == "1")
            })
            .collect()
    }

    #[test]
    fn walks_every_type_clickhouse_26_writes() {
        let all = fixtures();
        assert!(all.len() >= 15, "{} fixtures", all.len());
        for (name, bytes, rows, walkable) in all {
            let result = walk(bytes.as_slice(), |_| {});
            if walkable {
                let stats = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(stats.rows, rows, "{name}");
                assert_eq!(stats.bytes, bytes.len() as u64, "{name}");
            } else {
                match result {
                    Err(NativeError::UnsupportedType { column, .. }) => {
                        assert!(!column.is_empty(), "{name}")
                    }
                    other => panic!("{name}: expected an unsupported type, got {other:?}"),
                }
            }
        }
    }

    /// A stream may only end between blocks; there, it is a shorter valid result (HTTP's
    /// framing catches that cut). Every other cut is an error.
    #[test]
    fn every_cut_inside_a_real_block_is_caught() {
        for (name, bytes, rows, walkable) in fixtures() {
            if !walkable {
                continue;
            }
            let blocks = walk(bytes.as_slice(), |_| {}).unwrap().blocks;
            let mut boundaries = 0;
            for cut in 0..bytes.len() {
                match walk(&bytes[..cut], |_| {}) {
                    Ok(stats) => {
                        assert!(stats.rows < rows, "{name}: cut at {cut} kept every row");
                        boundaries += 1;
                    }
                    Err(NativeError::Truncated(_) | NativeError::Malformed(_)) => {}
                    Err(other) => panic!("{name}: cut at {cut}: {other}"),
                }
            }
            // The empty prefix and each boundary between blocks.
            assert_eq!(boundaries, blocks, "{name}: cuts that looked complete");
        }
    }

    #[test]
    fn the_25_11_exception_envelope_is_reported_with_its_message() {
        let (_, mut bytes, _, _) = fixtures()
            .into_iter()
            .find(|f| f.0 == "map_lc_string")
            .unwrap();
        bytes.extend(b"__exception__PU1FNUFH98\nCode: 395. DB::Exception: Value passed to 'throwIf' function is non-zero\n71 PU1FNUFH98__exception__\n");
        match walk(bytes.as_slice(), |_| {}) {
            Err(NativeError::ServerException(m)) => {
                assert!(m.starts_with("Code: 395. DB::Exception"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            exception_message("x\n__exception__T\nboom\n4 T__exception__\n").as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn an_empty_block_has_neither_prefix_nor_data() {
        // Header of a 0-row block with LowCardinality and Map columns, then a real block.
        let mut s = vec![2u8, 0];
        s.extend(b"\x01a\x16LowCardinality(String)");
        s.extend(b"\x01m\x23Map(LowCardinality(String), String)");
        let (_, real, rows, _) = fixtures().into_iter().find(|f| f.0 == "lc_top").unwrap();
        s.extend(&real);
        let stats = walk(s.as_slice(), |_| {}).unwrap();
        assert_eq!((stats.rows, stats.blocks), (rows, 2));
    }

    #[test]
    fn variant_and_nested_type_names_parse() {
        use Wire::*;
        assert_eq!(
            parse_type("Variant(String, UInt64)"),
            Ok(Variant(vec![String, Fixed(8)]))
        );
        assert_eq!(
            parse_type("Nested(a UInt8, b String)"),
            Ok(Array(Box::new(Tuple(vec![Fixed(1), String]))))
        );
        for unwalkable in [
            "Dynamic",
            "JSON",
            "AggregateFunction(quantiles(0.5), Float64)",
        ] {
            assert!(parse_type(unwalkable).is_err(), "{unwalkable}");
        }
    }
}
