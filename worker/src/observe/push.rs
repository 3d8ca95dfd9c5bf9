//! Metrics pushed to a Prometheus Pushgateway after every `worker backup` and `worker
//! prune`, one group per engine and target (`/metrics/job/kube_dr/engine/E/target/T`).
//!
//! Pushes are `POST`s: the gateway then replaces only the metrics of the same names in the
//! group. A failed attempt pushes `kube_dr_backup_success 0`, the attempt's time and its
//! duration, and nothing else, so `kube_dr_backup_last_success_timestamp_seconds` and the
//! last good backup's size and rows stay as they were; a prune pushes only its own metric
//! into the same groups. (A `PUT` would replace the whole group and erase them.) Only
//! engine and target names go into labels: nothing secret.

use std::fmt::Write as _;
use std::time::Duration;

use url::Url;

/// The job label of the backups' and prunes' groups.
pub const JOB: &str = "kube_dr";

/// The job label of the drill's groups (`worker drill`).
pub const DRILL_JOB: &str = "kube_dr_drill";
/// The job label of the copy's groups (`worker copy`).
pub const COPY_JOB: &str = "kube_dr_copy";

/// Whole time one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One gauge of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name, e.g. `kube_dr_backup_success`.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its value.
    pub value: f64,
}

/// Why a push did not land (logged as a warning, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The URL is not usable.
    #[error("the Pushgateway URL {url:?} is not usable: {reason} (expected http(s)://host:9091)")]
    BadUrl {
        /// The URL as given (without credentials, which are refused).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer, or an error answer.
    #[error("pushing metrics to the Pushgateway at {url} failed: {reason}")]
    Failed {
        /// The gateway's address.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A Pushgateway to push to (`--pushgateway` / `DR_PUSHGATEWAY_URL`).
#[derive(Debug, Clone)]
pub struct Pushgateway {
    base: Url,
    client: reqwest::Client,
    job: &'static str,
}

impl Pushgateway {
    /// Checks the URL: http(s), no credentials (they would end up in logs and argv), no
    /// query.
    ///
    /// # Errors
    /// [`PushError::BadUrl`].
    pub fn new(url: &str) -> Result<Self, PushError> {
        let bad = |reason: &str| PushError::BadUrl {
            url: crate::catalog::printable(url),
            reason: reason.into(),
        };
        let mut base = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("not http or https"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(PushError::BadUrl {
                url: "(hidden: it holds credentials)".into(),
                reason: "credentials in the URL are refused; expose the gateway inside the cluster without them (a NetworkPolicy limits who may push)".into(),
            });
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("a query or fragment has no place in it"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(PUSH_TIMEOUT)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Pushgateway {
            base,
            client,
            job: JOB,
        })
    }

    /// The same gateway, pushing into groups of another job label (the drill's
    /// [`DRILL_JOB`], so its pushes never refresh the backups' groups).
    pub fn for_job(&self, job: &'static str) -> Pushgateway {
        Pushgateway {
            job,
            ..self.clone()
        }
    }

    /// The gateway's address, for messages.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// Replaces the given metrics of the engine/target group (a `POST`: other metrics of
    /// the group stay).
    ///
    /// # Errors
    /// [`PushError::Failed`] with the gateway's answer.
    pub async fn push(
        &self,
        engine: &str,
        target: &str,
        metrics: &[Metric],
    ) -> Result<(), PushError> {
        let path = group_path_in(self.job, engine, target);
        let url = self.base.join(&path).map_err(|e| PushError::Failed {
            url: self.url().into(),
            reason: e.to_string(),
        })?;
        let failed = |reason: String| PushError::Failed {
            url: self.url().into(),
            reason,
        };
        let response = self
            .client
            .post(url)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(render(metrics))
            .send()
            .await
            .map_err(|e| failed(crate::engine::transport_reason(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(failed(format!(
                "{status}: {}",
                crate::catalog::printable(text.trim())
            )))
        }
    }

    /// [`Pushgateway::push`], logging the outcome; never fails.
    pub async fn push_or_warn(&self, engine: &str, target: &str, metrics: &[Metric]) {
        match self.push(engine, target, metrics).await {
            Ok(()) => tracing::info!(
                pushgateway = %self.url(),
                group = %group_path_in(self.job, engine, target),
                metrics = metrics.len(),
                "metrics pushed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not push metrics; the backup's own result stands")
            }
        }
    }
}

/// One path segment pair of a grouping key: `name/value`, or `name@base64/…` for a value
/// a path cannot hold as is (empty, or with a `/`).
fn label_segment(name: &str, value: &str) -> String {
    use base64::Engine as _;
    // `.` and `..` are path segments a URL collapses (`target/..` would drop the label),
    // so any value of dots alone goes base64 like every other odd value.
    let plain = !value.is_empty()
        && !value.bytes().all(|b| b == b'.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        format!("{name}@base64/=")
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        format!("{name}@base64/{encoded}")
    }
}

/// The WAL archiver's gauges (`worker archive postgres`), pushed every 15 s into the
/// target's group: an archiver that stops pushing shows as a growing age of
/// `kube_dr_wal_last_segment_timestamp_seconds` (alert KubeDrWalArchiveLagging).
pub fn wal_metrics(s: &crate::engine::postgres::wal::archive::ArchiveStatus) -> Vec<Metric> {
    let ts =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis() as f64 / 1000.0);
    let mut m = Vec::new();
    if let Some(v) = ts(s.current_at) {
        m.push(Metric {
            name: "kube_dr_wal_last_segment_timestamp_seconds",
            help: "When the store last held all the WAL the archiver had received (Unix time).",
            value: v,
        });
    }
    if let Some(v) = ts(s.last_commit) {
        m.push(Metric {
            name: "kube_dr_wal_last_commit_timestamp_seconds",
            help: "Time of the newest commit the WAL archive holds (Unix time).",
            value: v,
        });
    }
    if let Some(b) = s.slot_retained_bytes {
        m.push(Metric {
            name: "kube_dr_wal_slot_retained_bytes",
            help: "WAL the archiver's replication slot holds back on the database server.",
            value: b as f64,
        });
    }
    m.push(Metric {
        name: "kube_dr_wal_slot_limit_bytes",
        help: "The archiver's --max-slot-wal-keep: retained WAL above it is an alert.",
        value: s.slot_limit_bytes as f64,
    });
    m
}

/// The group's path under the gateway: `metrics/job/kube_dr/engine/E/target/T`.
pub fn group_path(engine: &str, target: &str) -> String {
    group_path_in(JOB, engine, target)
}

/// [`group_path`] under another job label.
pub fn group_path_in(job: &str, engine: &str, target: &str) -> String {
    format!(
        "metrics/job/{job}/{}/{}",
        label_segment("engine", engine),
        label_segment("target", target)
    )
}

/// The text exposition format of the metrics (every one a gauge, without labels: the
/// gateway adds the group's).
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::new();
    for m in metrics {
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} gauge", m.name);
        let _ = writeln!(out, "{} {}", m.name, m.value);
    }
    out
}

fn seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// `kube_dr_backup_last_attempt_timestamp_seconds`.
pub const LAST_ATTEMPT: &str = "kube_dr_backup_last_attempt_timestamp_seconds";
/// `kube_dr_backup_last_success_timestamp_seconds`.
pub const LAST_SUCCESS: &str = "kube_dr_backup_last_success_timestamp_seconds";
/// `kube_dr_backup_success`.
pub const SUCCESS: &str = "kube_dr_backup_success";
/// `kube_dr_backup_duration_seconds`.
pub const DURATION: &str = "kube_dr_backup_duration_seconds";
/// `kube_dr_backup_stored_bytes`.
pub const STORED_BYTES: &str = "kube_dr_backup_stored_bytes";
/// `kube_dr_backup_rows`.
pub const ROWS: &str = "kube_dr_backup_rows";
/// `kube_dr_prune_deleted_backups`.
pub const PRUNE_DELETED: &str = "kube_dr_prune_deleted_backups";

/// What one backup attempt pushes: on success every metric, on failure only the attempt's
/// time, `success 0` and the duration (the last success's metrics stay).
pub fn backup_metrics(
    attempt_started: chrono::DateTime<chrono::Utc>,
    duration: Duration,
    committed: Option<&crate::catalog::Manifest>,
) -> Vec<Metric> {
    let mut out = vec![
        Metric {
            name: LAST_ATTEMPT,
            help: "When the last backup attempt of this engine and target started (Unix time).",
            value: seconds(attempt_started),
        },
        Metric {
            name: SUCCESS,
            help:
                "1 if the last backup attempt of this engine and target committed, 0 if it failed.",
            value: if committed.is_some() { 1.0 } else { 0.0 },
        },
        Metric {
            name: DURATION,
            help: "How long the last backup attempt took, in seconds.",
            value: duration.as_secs_f64(),
        },
    ];
    if let Some(m) = committed {
        out.extend([
            Metric {
                name: LAST_SUCCESS,
                help: "When the last committed backup of this engine and target finished (Unix time).",
                value: seconds(m.finished_at),
            },
            Metric {
                name: STORED_BYTES,
                help: "Bytes stored by the last committed backup (encrypted, compressed; an incremental backup's references to older backups are not counted).",
                value: m.own_bytes() as f64,
            },
            Metric {
                name: ROWS,
                help: "Rows (or keys, secrets, objects) counted by the last committed backup.",
                value: m.total_rows() as f64,
            },
        ]);
    }
    out
}

/// What a prune pushes into one engine/target group.
pub fn prune_metrics(deleted: usize) -> Vec<Metric> {
    vec![Metric {
        name: PRUNE_DELETED,
        help: "Backups of this engine and target the last prune deleted.",
        value: deleted as f64,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_use_base64_only_where_a_path_needs_it() {
        assert_eq!(
            group_path("postgres", "prod"),
            "metrics/job/kube_dr/engine/postgres/target/prod"
        );
        assert_eq!(
            group_path("postgres", "a/b"),
            "metrics/job/kube_dr/engine/postgres/target@base64/YS9i"
        );
        assert_eq!(
            group_path("postgres", ""),
            "metrics/job/kube_dr/engine/postgres/target@base64/="
        );
        // Dot segments would be collapsed by the URL: `target/..` drops the label.
        for (dots, encoded) in [(".", "Lg"), ("..", "Li4"), ("...", "Li4u")] {
            let path = group_path("postgres", dots);
            assert_eq!(
                path,
                format!("metrics/job/kube_dr/engine/postgres/target@base64/{encoded}")
            );
            let url = Url::parse("http://gw:9091/").unwrap().join(&path).unwrap();
            assert!(url.path().ends_with(encoded), "{url}");
        }
        assert_eq!(
            group_path("postgres", "a.b"),
            "metrics/job/kube_dr/engine/postgres/target/a.b"
        );
    }

    #[test]
    fn a_failed_attempt_pushes_nothing_of_the_last_success() {
        let failed = backup_metrics(chrono::Utc::now(), Duration::from_secs(3), None);
        let names: Vec<&str> = failed.iter().map(|m| m.name).collect();
        assert_eq!(names, [LAST_ATTEMPT, SUCCESS, DURATION]);
        assert_eq!(failed[1].value, 0.0);
        let text = render(&failed);
        assert!(
            text.contains("# TYPE kube_dr_backup_success gauge\nkube_dr_backup_success 0\n"),
            "{text}"
        );
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let err = Pushgateway::new("http://user:s3cret@gw:9091")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(Pushgateway::new("ftp://gw").is_err());
        let gw = Pushgateway::new("http://gw:9091/prefix").unwrap();
        assert_eq!(gw.url(), "http://gw:9091/prefix/");
    }
}
