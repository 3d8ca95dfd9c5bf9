//! Output formats: aligned tables for people, JSON and YAML for scripts. Data goes to
//! stdout; everything else to stderr.

use std::io::Write;

use serde::Serialize;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML.
///
/// # Errors
/// Write errors (a closed stdout is [`drkit::cli::StdoutClosed`]).
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written: std::io::Result<()> = match format {
        Format::Json => serde_json::to_writer_pretty(&mut out, value)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Format::Yaml => serde_yaml::to_writer(&mut out, value).map_err(std::io::Error::other),
        Format::Table => unreachable!("tables are printed by their command"),
    };
    written.map_err(drkit::cli::stdout_error)
}

/// Prints rows as columns separated by two spaces; numbers are right-aligned.
///
/// # Errors
/// Write errors (a closed stdout is [`drkit::cli::StdoutClosed`]).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    write_table(&mut std::io::stdout().lock(), headers, rows).map_err(drkit::cli::stdout_error)
}

/// [`print_table`] on stderr (progress of a longer run whose stdout holds its summary).
pub fn eprint_table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    Ok(write_table(&mut std::io::stderr().lock(), headers, rows)?)
}

fn write_table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| !rows.is_empty() && rows.iter().all(|r| is_number(&r[i])))
        .collect();
    let mut line = |cells: Vec<&str>| -> std::io::Result<()> {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if numeric[i] {
                    format!("{}{c}", " ".repeat(pad))
                } else {
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(headers.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

fn is_number(s: &str) -> bool {
    let s = s.trim_start_matches(['+', '-']);
    s == "-" || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ','))
}

/// A database, schema or table name as shown in a table: control characters escaped (a
/// name must never send terminal escapes), and quoted with `"` (inner quotes doubled, as
/// SQL does) when it holds a dot, a quote, a comma or white space, so `public."a.b"` can
/// never be mistaken for table `b` of schema `a`.
pub fn quoted_name(name: &str) -> String {
    let shown = drkit::catalog::printable(name);
    if shown.is_empty() || shown.contains(['.', '"', ',', ' ', '\t']) {
        format!("\"{}\"", shown.replace('"', "\"\""))
    } else {
        shown
    }
}

/// `schema.table` with each side quoted as [`quoted_name`] says.
pub fn qualified_name(schema: &str, table: &str) -> String {
    format!("{}.{}", quoted_name(schema), quoted_name(table))
}

/// Bytes in binary units, e.g. `2.1 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_quoted_where_they_could_mislead() {
        assert_eq!(qualified_name("public", "users"), "public.users");
        assert_eq!(qualified_name("public", "a.b"), "public.\"a.b\"");
        assert_eq!(qualified_name("a", "b"), "a.b");
        assert_eq!(quoted_name("say \"hi\""), "\"say \"\"hi\"\"\"");
        let esc = quoted_name("esc\u{1b}[2J");
        assert!(!esc.contains('\u{1b}') && esc.contains("\\u{1b}"), "{esc}");
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
