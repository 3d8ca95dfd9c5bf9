//! The retention policy: keep-last / hourly / daily / weekly / monthly / yearly / within,
//! in the manner of restic's `forget`, with the safety rules peers got wrong:
//!
//! - Periods and `keep-within` are counted back from the newest *complete* backup dated at
//!   or before `now + max_clock_skew`, not from `now`: a month of failing jobs (or a wrong
//!   clock) never ages out the last good copies, and a backup dated far ahead (a clock
//!   running fast, a forged `99991231T…` id) is kept but never the reference point.
//! - The newest complete backup is always kept, whatever the rules say.
//! - A backup dated in the future is kept.
//! - A damaged backup (its manifest failed the catalog's checks) counts for nothing: it
//!   is never the newest, never fills a keep rule, and is never deleted by prune.
//! - Incomplete backups (no manifest) are kept while they may still be running (younger
//!   than the grace period, measured from `now`), deleted after.
//!
//! Calendar buckets are in UTC, so daylight-saving changes never merge or split days.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::Serialize;

use crate::catalog::{BackupId, Status};

/// How many backups to keep, per engine and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N.
    pub keep_last: u32,
    /// Keep the newest of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// Keep the newest of each of the last N days that have one.
    pub keep_daily: u32,
    /// Keep the newest of each of the last N ISO weeks that have one.
    pub keep_weekly: u32,
    /// Keep the newest of each of the last N months that have one.
    pub keep_monthly: u32,
    /// Keep the newest of each of the last N years that have one.
    pub keep_yearly: u32,
    /// Keep everything this close to the newest complete backup.
    pub keep_within: Option<Duration>,
    /// How long an incomplete backup may be running before it counts as failed.
    pub incomplete_grace: Duration,
    /// How far after `now` a backup may be dated and still be the reference point.
    pub max_clock_skew: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            keep_within: None,
            incomplete_grace: Duration::hours(24),
            max_clock_skew: Duration::hours(1),
        }
    }
}

/// A policy that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A policy without any keep rule (it would delete everything).
    #[error("no keep rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly or --keep-within (e.g. --keep-daily 7 --keep-weekly 4)")]
    NoRule,
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The backup.
    pub id: BackupId,
    /// What the catalog found.
    pub status: Status,
    /// Why a damaged backup is damaged (shown in its reasons).
    pub problem: Option<String>,
}

/// The largest share of a target's good backups one prune may delete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxDelete {
    /// At most this many backups.
    Backups(u64),
    /// At most this share of the series' complete backups.
    Percent(f64),
}

impl MaxDelete {
    /// How many of `good` backups may go.
    pub fn allowed(self, good: usize) -> usize {
        match self {
            MaxDelete::Backups(n) => usize::try_from(n).unwrap_or(usize::MAX),
            MaxDelete::Percent(p) => ((good as f64) * p / 100.0).floor() as usize,
        }
    }
}

impl std::str::FromStr for MaxDelete {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a number of backups or a percentage (e.g. 5, 50%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let v: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(bad());
                }
                Ok(MaxDelete::Percent(v))
            }
            None => s.trim().parse().map(MaxDelete::Backups).map_err(|_| bad()),
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxDelete::Backups(n) => write!(f, "{n}"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What happens to one backup, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup.
    pub id: BackupId,
    /// Kept or deleted.
    pub keep: bool,
    /// Why (every rule that keeps it, or why it goes).
    pub reasons: Vec<String>,
}

/// A calendar bucket rule: how many, and how a time maps to its bucket label.
struct Bucket {
    name: &'static str,
    count: u32,
    label: fn(DateTime<Utc>) -> String,
}

fn hour(t: DateTime<Utc>) -> String {
    format!("{}T{:02}", t.format("%Y-%m-%d"), t.hour())
}
fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}
fn week(t: DateTime<Utc>) -> String {
    let w = t.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}
fn month(t: DateTime<Utc>) -> String {
    t.format("%Y-%m").to_string()
}
fn year(t: DateTime<Utc>) -> String {
    t.year().to_string()
}

pub use crate::catalog::short_duration;

impl RetentionPolicy {
    /// # Errors
    /// [`PolicyError::NoRule`] when no rule would keep anything but the newest backup: an
    /// empty policy is far more likely a typo than a wish to delete history.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let any = self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            + self.keep_yearly
            > 0
            || self.keep_within.is_some_and(|d| d > Duration::zero());
        if any {
            Ok(())
        } else {
            Err(PolicyError::NoRule)
        }
    }

    fn buckets(&self) -> [Bucket; 5] {
        [
            Bucket {
                name: "hourly",
                count: self.keep_hourly,
                label: hour,
            },
            Bucket {
                name: "daily",
                count: self.keep_daily,
                label: day,
            },
            Bucket {
                name: "weekly",
                count: self.keep_weekly,
                label: week,
            },
            Bucket {
                name: "monthly",
                count: self.keep_monthly,
                label: month,
            },
            Bucket {
                name: "yearly",
                count: self.keep_yearly,
                label: year,
            },
        ]
    }

    /// Decides for every backup of *one* engine and target, in input order.
    pub fn apply(&self, backups: &[Candidate], now: DateTime<Utc>) -> Vec<Decision> {
        let mut reasons: HashMap<&BackupId, Vec<String>> = HashMap::new();
        let horizon = now + self.max_clock_skew;
        let mut complete: Vec<&Candidate> = backups
            .iter()
            .filter(|b| b.status == Status::Complete && b.id.created_at() <= horizon)
            .collect();
        for b in backups
            .iter()
            .filter(|b| b.status == Status::Complete && b.id.created_at() > horizon)
        {
            reasons.entry(&b.id).or_default().push(format!(
                "dated {} in the future, beyond the allowed clock skew ({}): kept, never the reference point",
                short_duration(b.id.created_at() - now),
                short_duration(self.max_clock_skew)
            ));
        }
        // Newest first; ids sort by time, then by their random suffix (a stable tie-break).
        complete.sort_by(|a, b| b.id.cmp(&a.id));
        complete.dedup_by(|a, b| a.id == b.id);

        if let Some(newest) = complete.first() {
            reasons
                .entry(&newest.id)
                .or_default()
                .push("newest complete backup".into());
        }
        for b in complete.iter().take(self.keep_last as usize) {
            reasons
                .entry(&b.id)
                .or_default()
                .push(format!("last {}", self.keep_last));
        }
        for bucket in self.buckets() {
            let mut kept = 0;
            let mut previous: Option<String> = None;
            for b in &complete {
                if kept >= bucket.count {
                    break;
                }
                let label = (bucket.label)(b.id.created_at());
                if previous.as_ref() != Some(&label) {
                    reasons
                        .entry(&b.id)
                        .or_default()
                        .push(format!("{} {label}", bucket.name));
                    kept += 1;
                    previous = Some(label);
                }
            }
        }
        if let (Some(within), Some(newest)) = (self.keep_within, complete.first()) {
            let cutoff = newest.id.created_at() - within;
            for b in complete.iter().filter(|b| b.id.created_at() >= cutoff) {
                reasons
                    .entry(&b.id)
                    .or_default()
                    .push(format!("within {} of the newest", short_duration(within)));
            }
        }
        for b in complete.iter().filter(|b| b.id.created_at() > now) {
            reasons
                .entry(&b.id)
                .or_default()
                .push("dated in the future (clock skew?)".into());
        }

        backups
            .iter()
            .map(|b| {
                let age = now - b.id.created_at();
                let (keep, why) = if b.status == Status::Damaged {
                    (
                        true,
                        vec![format!(
                            "damaged ({}): counts for nothing and is never deleted by prune; inspect it and remove it by hand",
                            b.problem.as_deref().unwrap_or("manifest failed its checks")
                        )],
                    )
                } else if b.status == Status::Incomplete {
                    if age < self.incomplete_grace {
                        (
                            true,
                            vec![format!(
                                "incomplete, started {} ago: may still be running",
                                short_duration(age)
                            )],
                        )
                    } else {
                        (
                            false,
                            vec![format!(
                                "incomplete for {} (grace {})",
                                short_duration(age),
                                short_duration(self.incomplete_grace)
                            )],
                        )
                    }
                } else {
                    match reasons.get(&b.id) {
                        Some(r) => (true, r.clone()),
                        None => (false, vec!["matches no keep rule".into()]),
                    }
                };
                Decision {
                    id: b.id.clone(),
                    keep,
                    reasons: why,
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
