//! `kubectl dr status`: are the nightly backups happening? Each kube-dr CronJob with its last
//! schedule, success and failure, and (with a store) the newest backup of its target.

use chrono::Utc;
use clap::Args;
use drkit::catalog::{self, Filter};
use drkit::cli::{CheckFailed, StoreArgs};
use serde::Serialize;

use crate::cluster::{status, ClusterArgs};
use crate::output::{self, Format};

/// Show each backup CronJob's health; exit 1 when any is stale or failing.
///
/// A backup CronJob is stale when its last success, or (with a store) the newest complete
/// backup of its engine and target, is older than --max-age, or when its last run failed.
/// Without --store / DR_STORE only the CronJobs' own history is checked.
///
/// Without a cluster (no --kubeconfig, KUBECONFIG, ~/.kube/config or service account:
/// after a rebuild, or from CI), the store alone answers: the newest complete backup of
/// every engine and target, its age, and STALE beyond --max-age.
///
/// With a store, each PostgreSQL WAL archive's recoverable window follows (from its signed
/// index; `verify --wal` also reads every file); a gap in it fails the status too.
///
/// Examples:
///   kubectl dr status                         # namespace kube-dr, current context
///   kubectl dr status --context prod -n backups --max-age 50h -o json
///   kubectl dr status --store s3://backups/cluster-a --max-age 26h   # no cluster needed
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct StatusCmd {
    #[command(flatten)]
    cluster: ClusterArgs,

    /// Oldest acceptable last success / newest backup.
    #[arg(long, default_value = "26h", value_name = "DURATION")]
    max_age: humantime::Duration,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct Report {
    namespace: String,
    max_age: String,
    ok: bool,
    cronjobs: Vec<status::Row>,
    /// The WAL archives' recoverable windows (with a store).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    wal: Vec<drkit::engine::postgres::wal::pitr::Window>,
}

/// Every WAL archive's recoverable window, from the index alone (`verify --wal` also
/// reads every file): what `status` shows below the backups.
async fn wal_windows(
    store: &dyn drkit::store::ReadStore,
    trust: &catalog::Trust,
) -> anyhow::Result<Vec<drkit::engine::postgres::wal::pitr::Window>> {
    use drkit::engine::postgres::wal::{pitr, prune};
    let mut out = Vec::new();
    for target in prune::archives(store, None).await?.into_keys() {
        out.push(pitr::window(store, &target, trust, false).await?);
    }
    Ok(out)
}

/// Prints the windows under a table; a gap is a problem of the run.
fn print_windows(windows: &[drkit::engine::postgres::wal::pitr::Window]) -> anyhow::Result<()> {
    if windows.is_empty() {
        return Ok(());
    }
    drkit::cli::print_line("\nWAL archives (point-in-time recovery):")?;
    for w in windows {
        drkit::cli::print_line(format!("  {}", super::pitr::window_line(w, Utc::now())))?;
        for p in &w.problems {
            drkit::cli::print_line(format!("    PROBLEM: {p}"))?;
        }
    }
    Ok(())
}

/// The newest *complete* backup of every engine/target: manifests are read newest first
/// until one passes its checks, so a damaged or far-future manifest never makes a stale
/// series look fresh.
async fn newest_complete(
    store: &dyn drkit::store::ReadStore,
    trust: &catalog::Trust,
) -> anyhow::Result<Vec<catalog::BackupRef>> {
    let scanned = catalog::scan(store, &Filter::default()).await?;
    let mut out = Vec::new();
    for series in scanned.chunk_by(|a, b| {
        (&a.backup.engine, &a.backup.target) == (&b.backup.engine, &b.backup.target)
    }) {
        if let (Some(m), _) = catalog::newest_complete(store, series.to_vec(), trust).await? {
            out.push(m.backup_ref());
        }
    }
    Ok(out)
}

/// One series in the store-only view.
#[derive(Debug, Clone, Serialize)]
struct SeriesRow {
    engine: String,
    target: String,
    newest_backup: String,
    created_at: chrono::DateTime<Utc>,
    age_seconds: i64,
    stale: bool,
}

#[derive(Debug, Serialize)]
struct StoreReport {
    store: String,
    max_age: String,
    ok: bool,
    backups: Vec<SeriesRow>,
    /// The WAL archives' recoverable windows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    wal: Vec<drkit::engine::postgres::wal::pitr::Window>,
}

impl StatusCmd {
    pub async fn run(self, store: &StoreArgs, trust: &catalog::Trust) -> anyhow::Result<()> {
        let Some(client) = self.cluster.client_if_configured().await? else {
            anyhow::ensure!(
                store.store.is_some(),
                "{}; or give the store (--store / DR_STORE) to check the newest backups without a cluster",
                crate::cluster::NoCluster
            );
            return self.store_only(store, trust).await;
        };
        let ns = &self.cluster.namespace;
        let (cronjobs, jobs) = status::fetch(&client, ns).await?;
        anyhow::ensure!(
            !cronjobs.is_empty(),
            "no kube-dr CronJobs in namespace {ns}; install them with `kubectl apply -k kustomize/overlays/…` or pass -n"
        );
        let (backups, wal) = match &store.store {
            Some(_) => {
                let opened = store.open().await?;
                (
                    Some(newest_complete(opened.as_ref(), trust).await?),
                    wal_windows(opened.as_ref(), trust).await?,
                )
            }
            None => (None, Vec::new()),
        };
        let now = Utc::now();
        let max_age = chrono::Duration::from_std(*self.max_age)?;
        let rows: Vec<status::Row> = cronjobs
            .iter()
            .map(|cj| {
                let (engine, target) = status::engine_and_target(cj);
                let newest = backups.as_ref().and_then(|all| {
                    all.iter()
                        .filter(|b| Some(&b.engine) == engine.as_ref())
                        .filter(|b| target.is_none() || Some(&b.target) == target.as_ref())
                        .map(|b| b.id.created_at())
                        .max()
                });
                status::assess(cj, &jobs, newest, backups.is_some(), now, max_age)
            })
            .collect();
        let ok =
            rows.iter().all(|r| r.problems.is_empty()) && wal.iter().all(|w| w.problems.is_empty());
        match self.output {
            Format::Table => {
                print_table(&rows)?;
                print_windows(&wal)?;
            }
            f => output::print_structured(
                f,
                &Report {
                    namespace: ns.clone(),
                    max_age: self.max_age.to_string(),
                    ok,
                    cronjobs: rows.clone(),
                    wal: wal.clone(),
                },
            )?,
        }
        if !ok {
            let bad: Vec<String> = rows
                .iter()
                .filter(|r| !r.problems.is_empty())
                .map(|r| r.cronjob.clone())
                .chain(
                    wal.iter()
                        .filter(|w| !w.problems.is_empty())
                        .map(|w| format!("WAL archive postgres/{}", w.target)),
                )
                .collect();
            return Err(CheckFailed(format!("needs attention: {}", bad.join(", "))).into());
        }
        Ok(())
    }
}

impl StatusCmd {
    /// The store-only view: no CronJobs to ask, so every series' newest complete backup.
    async fn store_only(&self, store: &StoreArgs, trust: &catalog::Trust) -> anyhow::Result<()> {
        let opened = store.open().await?;
        let newest = newest_complete(opened.as_ref(), trust).await?;
        let wal = wal_windows(opened.as_ref(), trust).await?;
        let now = Utc::now();
        let max_age = chrono::Duration::from_std(*self.max_age)?;
        let rows: Vec<SeriesRow> = newest
            .iter()
            .map(|b| {
                let created_at = b.id.created_at();
                SeriesRow {
                    engine: b.engine.clone(),
                    target: b.target.clone(),
                    newest_backup: b.id.to_string(),
                    created_at,
                    age_seconds: (now - created_at).num_seconds(),
                    stale: now - created_at > max_age,
                }
            })
            .collect();
        let ok = !rows.is_empty()
            && rows.iter().all(|r| !r.stale)
            && wal.iter().all(|w| w.problems.is_empty());
        match self.output {
            Format::Table => {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.engine.clone(),
                            r.target.clone(),
                            r.newest_backup.clone(),
                            drkit::retention::short_duration(chrono::Duration::seconds(
                                r.age_seconds,
                            )),
                            if r.stale { "STALE".into() } else { "ok".into() },
                        ]
                    })
                    .collect();
                output::print_table(
                    &["ENGINE", "TARGET", "NEWEST BACKUP", "AGE", "STATUS"],
                    &cells,
                )?;
                print_windows(&wal)?;
            }
            f => output::print_structured(
                f,
                &StoreReport {
                    store: opened.location().to_string(),
                    max_age: self.max_age.to_string(),
                    ok,
                    backups: rows.clone(),
                    wal: wal.clone(),
                },
            )?,
        }
        if rows.is_empty() {
            return Err(CheckFailed(format!(
                "no complete backup in {}: nothing protects this cluster yet",
                opened.location()
            ))
            .into());
        }
        if !ok {
            let stale: Vec<String> = rows
                .iter()
                .filter(|r| r.stale)
                .map(|r| format!("{}/{}", r.engine, r.target))
                .collect();
            let gaps: Vec<String> = wal
                .iter()
                .filter(|w| !w.problems.is_empty())
                .map(|w| format!("postgres/{}", w.target))
                .collect();
            if !gaps.is_empty() {
                return Err(CheckFailed(format!(
                    "the WAL archive of {} has problems (kubectl dr verify --wal --target … names them)",
                    gaps.join(", ")
                ))
                .into());
            }
            return Err(CheckFailed(format!(
                "newest backup older than --max-age {}: {}",
                self.max_age,
                stale.join(", ")
            ))
            .into());
        }
        Ok(())
    }
}

fn print_table(rows: &[status::Row]) -> anyhow::Result<()> {
    let t = |v: Option<chrono::DateTime<Utc>>| {
        v.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.cronjob.clone(),
                r.engine.clone().unwrap_or_else(|| "-".into()),
                r.target.clone().unwrap_or_else(|| "-".into()),
                r.schedule.clone(),
                t(r.last_schedule),
                t(r.last_success),
                t(r.last_failure),
                t(r.newest_backup),
                if r.problems.is_empty() {
                    "ok".into()
                } else {
                    r.problems.join("; ")
                },
            ]
        })
        .collect();
    output::print_table(
        &[
            "CRONJOB",
            "ENGINE",
            "TARGET",
            "SCHEDULE",
            "LAST SCHEDULE",
            "LAST SUCCESS",
            "LAST FAILURE",
            "NEWEST BACKUP",
            "STATUS",
        ],
        &cells,
    )
}
