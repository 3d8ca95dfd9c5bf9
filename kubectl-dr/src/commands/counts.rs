//! Row-count comparison output, shared by `verify --against` and `restore`: the runbook's
//! `SELECT count(*)` before and after, compared by the tool instead of by eye.

use drkit::verify::{CountRow, MaxDiff};
use serde::Serialize;

use crate::output;

/// The comparison of one backup (or one database of it) with a server.
#[derive(Debug, Serialize)]
pub struct DatabaseCounts {
    /// What of the backup is compared (`postgres/prod/ID db app`).
    pub compared: String,
    pub against: String,
    pub max_diff: String,
    pub ok: bool,
    pub tables: Vec<CountRow>,
}

impl DatabaseCounts {
    pub fn new(compared: &str, against: String, max: MaxDiff, tables: Vec<CountRow>) -> Self {
        DatabaseCounts {
            compared: compared.to_string(),
            against,
            max_diff: max.to_string(),
            ok: tables.iter().all(|r| r.ok),
            tables,
        }
    }

    /// Prints the table (stdout) and a one-line verdict (stderr).
    pub fn print(&self) -> anyhow::Result<()> {
        self.print_to(false)
    }

    /// [`DatabaseCounts::print`], the table on stderr when `stderr` (a step of a longer
    /// run, whose stdout holds its summary).
    pub fn print_to(&self, stderr: bool) -> anyhow::Result<()> {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
        let rows: Vec<Vec<String>> = self
            .tables
            .iter()
            .map(|r| {
                vec![
                    output::qualified_name(&r.parts.0, &r.parts.1),
                    opt(r.backup_rows),
                    opt(r.live_rows),
                    r.difference().map_or("-".into(), |d| {
                        if d > 0 {
                            format!("+{d}")
                        } else {
                            d.to_string()
                        }
                    }),
                    match (r.ok, r.backup_rows, r.live_rows) {
                        (_, Some(_), None) => "MISSING".into(),
                        (_, None, Some(_)) => "not in backup".into(),
                        (true, _, _) => match &r.note {
                            Some(n) => format!("ok ({n})"),
                            None => "ok".into(),
                        },
                        (false, _, _) => "MISMATCH".into(),
                    },
                ]
            })
            .collect();
        let heading = format!(
            "{} vs {}",
            drkit::catalog::printable(&self.compared),
            self.against
        );
        let headers = ["TABLE", "BACKUP ROWS", "LIVE ROWS", "DIFF", "STATUS"];
        if stderr {
            eprintln!("{heading}");
            output::eprint_table(&headers, &rows)?;
        } else {
            drkit::cli::print_line(heading)?;
            output::print_table(&headers, &rows)?;
        }
        let bad = self.tables.iter().filter(|r| !r.ok).count();
        if bad == 0 {
            eprintln!(
                "counts: {} table(s) match (max diff {})",
                self.tables.len(),
                self.max_diff
            );
        } else {
            eprintln!(
                "counts: {bad} of {} table(s) differ beyond {}",
                self.tables.len(),
                self.max_diff
            );
        }
        Ok(())
    }
}
