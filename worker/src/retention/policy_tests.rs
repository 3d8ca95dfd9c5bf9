//! Table-driven cases of the retention policy. Each case runs at two values of `now`: an
//! hour after the newest backup, and 90 days later. Decisions about complete backups must
//! not change with `now` (periods count from the newest complete backup); only incomplete
//! backups may, through their grace period.

use chrono::{Duration, NaiveDateTime, TimeZone, Utc};

use super::*;

/// `"2026-11-20 02:00"` or `"2026-11-20 02:00 #2"` (a second backup in the same second),
/// `!` suffix for an incomplete backup, `?` for a damaged one.
fn candidate(spec: &str) -> Candidate {
    let status = if spec.ends_with('!') {
        Status::Incomplete
    } else if spec.ends_with('?') {
        Status::Damaged
    } else {
        Status::Complete
    };
    let spec = spec.trim_end_matches(['!', '?']);
    let (time, n) = match spec.split_once(" #") {
        Some((t, n)) => (t, n.parse::<u32>().unwrap()),
        None => (spec, 1),
    };
    let t = NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M")
        .unwrap()
        .and_utc();
    let id = format!("{}-{n:06x}", t.format("%Y%m%dT%H%M%SZ"))
        .parse()
        .unwrap();
    Candidate {
        id,
        status,
        problem: (status == Status::Damaged).then(|| "junk".to_string()),
    }
}

struct Case {
    name: &'static str,
    policy: RetentionPolicy,
    backups: &'static [&'static str],
    /// Kept at now = newest + 1h.
    keep: &'static [&'static str],
    /// Kept at now = newest + 90 days, when it differs (incomplete backups only).
    keep_later: Option<&'static [&'static str]>,
}

fn p() -> RetentionPolicy {
    RetentionPolicy::default()
}

fn cases() -> Vec<Case> {
    let c = |name, policy, backups, keep| Case {
        name,
        policy,
        backups,
        keep,
        keep_later: None,
    };
    let nightly_nov: &'static [&'static str] = &[
        "2026-11-01 02:00",
        "2026-11-02 02:00",
        "2026-11-03 02:00",
        "2026-11-04 02:00",
        "2026-11-05 02:00",
        "2026-11-06 02:00",
        "2026-11-07 02:00",
        "2026-11-08 02:00",
        "2026-11-09 02:00",
        "2026-11-10 02:00",
        "2026-11-11 02:00",
        "2026-11-12 02:00",
        "2026-11-13 02:00",
        "2026-11-14 02:00",
        "2026-11-15 02:00",
        "2026-11-16 02:00",
        "2026-11-17 02:00",
        "2026-11-18 02:00",
        "2026-11-19 02:00",
        "2026-11-20 02:00",
    ];
    vec![
        c(
            "empty list",
            RetentionPolicy {
                keep_daily: 7,
                ..p()
            },
            &[],
            &[],
        ),
        c(
            "one backup, daily",
            RetentionPolicy {
                keep_daily: 7,
                ..p()
            },
            &["2026-11-20 02:00"],
            &["2026-11-20 02:00"],
        ),
        c(
            "one backup, last",
            RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            &["2026-11-20 02:00"],
            &["2026-11-20 02:00"],
        ),
        c(
            "keep-last 3 of 5",
            RetentionPolicy {
                keep_last: 3,
                ..p()
            },
            &[
                "2026-11-16 02:00",
                "2026-11-17 02:00",
                "2026-11-18 02:00",
                "2026-11-19 02:00",
                "2026-11-20 02:00",
            ],
            &["2026-11-18 02:00", "2026-11-19 02:00", "2026-11-20 02:00"],
        ),
        c(
            "keep-last larger than the list",
            RetentionPolicy {
                keep_last: 10,
                ..p()
            },
            &["2026-11-19 02:00", "2026-11-20 02:00"],
            &["2026-11-19 02:00", "2026-11-20 02:00"],
        ),
        c(
            "daily keeps the newest of each day",
            RetentionPolicy {
                keep_daily: 3,
                ..p()
            },
            &[
                "2026-11-16 02:00",
                "2026-11-16 14:00",
                "2026-11-17 02:00",
                "2026-11-17 14:00",
                "2026-11-18 02:00",
                "2026-11-18 14:00",
                "2026-11-19 02:00",
                "2026-11-19 14:00",
            ],
            &["2026-11-17 14:00", "2026-11-18 14:00", "2026-11-19 14:00"],
        ),
        c(
            "gaps of weeks: daily counts days that have backups",
            RetentionPolicy {
                keep_daily: 7,
                ..p()
            },
            &["2026-09-01 02:00", "2026-10-01 02:00", "2026-11-01 02:00"],
            &["2026-09-01 02:00", "2026-10-01 02:00", "2026-11-01 02:00"],
        ),
        c(
            "gaps of weeks: daily 2 keeps the two newest days",
            RetentionPolicy {
                keep_daily: 2,
                ..p()
            },
            &["2026-09-01 02:00", "2026-10-01 02:00", "2026-11-01 02:00"],
            &["2026-10-01 02:00", "2026-11-01 02:00"],
        ),
        c(
            "hourly",
            RetentionPolicy {
                keep_hourly: 2,
                ..p()
            },
            &[
                "2026-11-20 01:10",
                "2026-11-20 01:50",
                "2026-11-20 02:05",
                "2026-11-20 03:00",
            ],
            &["2026-11-20 02:05", "2026-11-20 03:00"],
        ),
        c(
            "many in one hour, hourly 1",
            RetentionPolicy {
                keep_hourly: 1,
                ..p()
            },
            &[
                "2026-11-20 03:00",
                "2026-11-20 03:15",
                "2026-11-20 03:30",
                "2026-11-20 03:45",
            ],
            &["2026-11-20 03:45"],
        ),
        c(
            "weekly across the ISO year boundary",
            RetentionPolicy {
                keep_weekly: 2,
                ..p()
            },
            // 2025-12-27 is W52 of 2025; 2025-12-29 and 2026-01-02 are both W01 of 2026.
            &["2025-12-27 02:00", "2025-12-29 02:00", "2026-01-02 02:00"],
            &["2025-12-27 02:00", "2026-01-02 02:00"],
        ),
        c(
            "weekly: Sunday and Monday are different ISO weeks",
            RetentionPolicy {
                keep_weekly: 2,
                ..p()
            },
            &["2026-11-15 23:59", "2026-11-16 00:00"],
            &["2026-11-15 23:59", "2026-11-16 00:00"],
        ),
        c(
            "monthly at month boundaries",
            RetentionPolicy {
                keep_monthly: 3,
                ..p()
            },
            &[
                "2026-01-31 23:59",
                "2026-02-01 00:00",
                "2026-02-28 02:00",
                "2026-03-01 00:00",
            ],
            &["2026-01-31 23:59", "2026-02-28 02:00", "2026-03-01 00:00"],
        ),
        c(
            "leap day, daily 1 and monthly 2",
            RetentionPolicy {
                keep_daily: 1,
                keep_monthly: 2,
                ..p()
            },
            &["2028-02-28 02:00", "2028-02-29 02:00", "2028-03-01 02:00"],
            &["2028-02-29 02:00", "2028-03-01 02:00"],
        ),
        c(
            "yearly",
            RetentionPolicy {
                keep_yearly: 2,
                ..p()
            },
            &[
                "2024-12-31 02:00",
                "2025-06-01 02:00",
                "2025-12-31 02:00",
                "2026-01-01 02:00",
            ],
            &["2025-12-31 02:00", "2026-01-01 02:00"],
        ),
        c(
            "tiers combined over twenty nights",
            // 2026-11-20 is a Friday of W47 (Nov 16–22); W46 ends Sunday Nov 15.
            RetentionPolicy {
                keep_daily: 3,
                keep_weekly: 2,
                keep_monthly: 2,
                ..p()
            },
            nightly_nov,
            &[
                "2026-11-15 02:00",
                "2026-11-18 02:00",
                "2026-11-19 02:00",
                "2026-11-20 02:00",
            ],
        ),
        c(
            "weekly 1 only",
            RetentionPolicy {
                keep_weekly: 1,
                ..p()
            },
            nightly_nov,
            &["2026-11-20 02:00"],
        ),
        c(
            "keep-within counts back from the newest backup",
            RetentionPolicy {
                keep_within: Some(Duration::days(7)),
                ..p()
            },
            &[
                "2026-11-13 01:00",
                "2026-11-13 02:00",
                "2026-11-14 02:00",
                "2026-11-20 02:00",
            ],
            &["2026-11-13 02:00", "2026-11-14 02:00", "2026-11-20 02:00"],
        ),
        c(
            "keep-within 36h",
            RetentionPolicy {
                keep_within: Some(Duration::hours(36)),
                ..p()
            },
            &[
                "2026-11-18 13:59",
                "2026-11-18 14:00",
                "2026-11-19 02:00",
                "2026-11-20 02:00",
            ],
            &["2026-11-18 14:00", "2026-11-19 02:00", "2026-11-20 02:00"],
        ),
        c(
            "keep-within with no recent success keeps the last good week",
            RetentionPolicy {
                keep_within: Some(Duration::days(7)),
                ..p()
            },
            &[
                "2026-08-01 02:00",
                "2026-09-01 02:00",
                "2026-09-05 02:00",
                "2026-09-10 02:00",
            ],
            &["2026-09-05 02:00", "2026-09-10 02:00"],
        ),
        c(
            "a policy that would delete everything keeps the newest",
            RetentionPolicy {
                keep_within: Some(Duration::minutes(1)),
                ..p()
            },
            &["2026-11-18 02:00", "2026-11-19 02:00", "2026-11-20 02:00"],
            &["2026-11-20 02:00"],
        ),
        c(
            "duplicate timestamps, keep-last 1",
            RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            &[
                "2026-11-20 02:00 #1",
                "2026-11-20 02:00 #2",
                "2026-11-19 02:00",
            ],
            &["2026-11-20 02:00 #2"],
        ),
        c(
            "duplicate timestamps, daily 2",
            RetentionPolicy {
                keep_daily: 2,
                ..p()
            },
            &[
                "2026-11-20 02:00 #1",
                "2026-11-20 02:00 #2",
                "2026-11-19 02:00",
            ],
            &["2026-11-19 02:00", "2026-11-20 02:00 #2"],
        ),
        c(
            "European DST switch does not split a UTC day",
            // Clocks in Europe jump at 01:00 UTC on 2026-03-29.
            RetentionPolicy {
                keep_daily: 2,
                ..p()
            },
            &["2026-03-28 23:30", "2026-03-29 00:30", "2026-03-29 01:30"],
            &["2026-03-28 23:30", "2026-03-29 01:30"],
        ),
        c(
            "US DST end does not split a UTC day",
            RetentionPolicy {
                keep_daily: 1,
                ..p()
            },
            &["2026-11-01 05:30", "2026-11-01 06:30"],
            &["2026-11-01 06:30"],
        ),
        c(
            "monthly 1 and last 1 on the same backup",
            RetentionPolicy {
                keep_last: 1,
                keep_monthly: 1,
                ..p()
            },
            &["2026-11-19 02:00", "2026-11-20 02:00"],
            &["2026-11-20 02:00"],
        ),
        c(
            "input order does not matter",
            RetentionPolicy {
                keep_last: 2,
                ..p()
            },
            &["2026-11-20 02:00", "2026-11-18 02:00", "2026-11-19 02:00"],
            &["2026-11-19 02:00", "2026-11-20 02:00"],
        ),
        c(
            "all failed, long ago: nothing to keep",
            RetentionPolicy {
                keep_daily: 7,
                ..p()
            },
            &[
                "2026-11-10 02:00!",
                "2026-11-11 02:00!",
                "2026-11-12 02:00!",
                "2026-11-20 02:00",
            ],
            &["2026-11-20 02:00"],
        ),
        Case {
            name: "a running backup survives until its grace period ends",
            policy: RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            backups: &["2026-11-19 02:00", "2026-11-20 02:00", "2026-11-20 02:30!"],
            keep: &["2026-11-20 02:00", "2026-11-20 02:30!"],
            keep_later: Some(&["2026-11-20 02:00"]),
        },
        Case {
            name: "a month of failing jobs never ages out the last good copies",
            policy: RetentionPolicy {
                keep_daily: 3,
                ..p()
            },
            backups: &[
                "2026-10-01 02:00",
                "2026-10-02 02:00",
                "2026-10-03 02:00",
                "2026-10-04 02:00",
                "2026-10-05 02:00!",
                "2026-10-20 02:00!",
                "2026-11-04 02:00!",
                "2026-11-04 03:10!",
            ],
            keep: &[
                "2026-10-02 02:00",
                "2026-10-03 02:00",
                "2026-10-04 02:00",
                "2026-11-04 02:00!",
                "2026-11-04 03:10!",
            ],
            keep_later: Some(&["2026-10-02 02:00", "2026-10-03 02:00", "2026-10-04 02:00"]),
        },
        Case {
            name: "an incomplete backup newer than the newest complete one is not 'the newest'",
            policy: RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            backups: &["2026-11-18 02:00", "2026-11-19 02:00", "2026-11-20 01:40!"],
            keep: &["2026-11-19 02:00", "2026-11-20 01:40!"],
            keep_later: Some(&["2026-11-19 02:00"]),
        },
        c(
            "a damaged backup is never the newest, fills no rule, and is kept",
            RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            &["2026-11-18 02:00", "2026-11-19 02:00", "2026-11-20 02:00?"],
            &["2026-11-19 02:00", "2026-11-20 02:00?"],
        ),
        c(
            "junk dated 9999 moves no window and deletes nothing good",
            RetentionPolicy {
                keep_within: Some(Duration::days(14)),
                ..p()
            },
            &[
                "2026-11-01 02:00",
                "2026-11-18 02:00",
                "2026-11-19 02:00",
                "2026-11-20 02:00",
                "9999-12-31 23:59?",
            ],
            &[
                "2026-11-18 02:00",
                "2026-11-19 02:00",
                "2026-11-20 02:00",
                "9999-12-31 23:59?",
            ],
        ),
        c(
            "only damaged backups: all kept",
            RetentionPolicy {
                keep_last: 1,
                ..p()
            },
            &["2026-11-19 02:00?", "2026-11-20 02:00?"],
            &["2026-11-19 02:00?", "2026-11-20 02:00?"],
        ),
        c(
            "yearly and monthly together over years",
            RetentionPolicy {
                keep_monthly: 2,
                keep_yearly: 3,
                ..p()
            },
            &[
                "2023-05-01 02:00",
                "2024-03-01 02:00",
                "2024-12-01 02:00",
                "2025-07-01 02:00",
                "2025-08-01 02:00",
            ],
            &[
                "2023-05-01 02:00",
                "2024-12-01 02:00",
                "2025-07-01 02:00",
                "2025-08-01 02:00",
            ],
        ),
    ]
}

#[test]
fn table() {
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in cases {
        let backups: Vec<Candidate> = case.backups.iter().map(|s| candidate(s)).collect();
        // `now` follows the newest backup a clock could have written (a damaged id such as
        // 9999-12-31 says nothing about the time).
        let newest = backups
            .iter()
            .filter(|b| b.status != Status::Damaged)
            .map(|b| b.id.created_at())
            .max()
            .unwrap_or_else(|| Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap());
        for (now, expected) in [
            (newest + Duration::hours(1), case.keep),
            (
                newest + Duration::days(90),
                case.keep_later.unwrap_or(case.keep),
            ),
        ] {
            let decisions = case.policy.apply(&backups, now);
            assert_eq!(decisions.len(), backups.len(), "{}", case.name);
            let mut kept: Vec<BackupId> = decisions
                .iter()
                .filter(|d| d.keep)
                .map(|d| d.id.clone())
                .collect();
            kept.sort();
            let mut want: Vec<BackupId> = expected.iter().map(|s| candidate(s).id).collect();
            want.sort();
            assert_eq!(kept, want, "case {:?} at now={now}", case.name);
            for (d, b) in decisions.iter().zip(&backups) {
                assert_eq!(
                    d.id, b.id,
                    "{}: decisions must follow input order",
                    case.name
                );
                assert!(
                    !d.reasons.is_empty(),
                    "{}: every decision has a reason",
                    case.name
                );
            }
        }
    }
}

#[test]
fn reasons_say_why() {
    let policy = RetentionPolicy {
        keep_daily: 1,
        keep_within: Some(Duration::days(2)),
        ..p()
    };
    let backups: Vec<Candidate> = [
        "2026-11-10 02:00",
        "2026-11-19 02:00",
        "2026-11-20 02:00",
        "2026-11-20 05:00!",
    ]
    .iter()
    .map(|s| candidate(s))
    .collect();
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 6, 0, 0).unwrap();
    let d = policy.apply(&backups, now);
    assert_eq!(d[0].reasons, vec!["matches no keep rule"]);
    assert_eq!(d[1].reasons, vec!["within 2d of the newest"]);
    assert_eq!(
        d[2].reasons,
        vec![
            "newest complete backup",
            "daily 2026-11-20",
            "within 2d of the newest"
        ]
    );
    assert_eq!(
        d[3].reasons,
        vec!["incomplete, started 1h ago: may still be running"]
    );
    let later = policy.apply(&backups, now + Duration::days(2));
    assert_eq!(later[3].reasons, vec!["incomplete for 2d 1h (grace 1d)"]);
}

#[test]
fn a_future_backup_is_kept_and_flagged() {
    let policy = RetentionPolicy {
        keep_last: 1,
        ..p()
    };
    let backups = vec![candidate("2026-11-19 02:00"), candidate("2026-11-25 02:00")];
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    let d = policy.apply(&backups, now);
    assert!(d[1].keep && d[1].reasons.iter().any(|r| r.contains("future")));
}

#[test]
fn a_backup_dated_beyond_the_skew_is_kept_but_is_not_the_reference() {
    let policy = RetentionPolicy {
        keep_last: 1,
        ..p()
    };
    let backups = vec![
        candidate("2026-11-18 02:00"),
        candidate("2026-11-19 02:00"),
        candidate("2026-12-25 02:00"),
    ];
    let now = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    let d = policy.apply(&backups, now);
    assert!(!d[0].keep, "{:?}", d[0]);
    assert!(d[1].keep && d[1].reasons.contains(&"newest complete backup".to_string()));
    assert!(
        d[2].keep && d[2].reasons[0].contains("beyond the allowed clock skew"),
        "{:?}",
        d[2]
    );
    // Within the skew, a backup a few minutes ahead is the newest as usual.
    let d = policy.apply(
        &backups[..2],
        Utc.with_ymd_and_hms(2026, 11, 19, 1, 30, 0).unwrap(),
    );
    assert!(d[1].keep && d[1].reasons.contains(&"newest complete backup".to_string()));
}

#[test]
fn max_delete_parses_and_bounds() {
    assert_eq!("50%".parse::<MaxDelete>().unwrap().allowed(6), 3);
    assert_eq!("50%".parse::<MaxDelete>().unwrap().allowed(3), 1);
    assert_eq!("100%".parse::<MaxDelete>().unwrap().allowed(7), 7);
    assert_eq!("2".parse::<MaxDelete>().unwrap().allowed(10), 2);
    for bad in ["", "-1", "lots", "101%"] {
        assert!(bad.parse::<MaxDelete>().is_err(), "{bad:?}");
    }
}

#[test]
fn empty_policies_are_refused() {
    assert_eq!(p().validate(), Err(PolicyError::NoRule));
    assert_eq!(
        RetentionPolicy {
            keep_within: Some(Duration::zero()),
            ..p()
        }
        .validate(),
        Err(PolicyError::NoRule)
    );
    assert!(RetentionPolicy {
        keep_last: 1,
        ..p()
    }
    .validate()
    .is_ok());
    assert!(RetentionPolicy {
        keep_within: Some(Duration::hours(1)),
        ..p()
    }
    .validate()
    .is_ok());
}

#[test]
fn short_durations() {
    assert_eq!(short_duration(Duration::minutes(0)), "0m");
    assert_eq!(short_duration(Duration::minutes(90)), "1h 30m");
    assert_eq!(
        short_duration(Duration::days(3) + Duration::hours(4)),
        "3d 4h"
    );
}
