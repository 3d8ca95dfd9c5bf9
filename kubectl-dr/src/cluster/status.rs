//! `kubectl dr status`: each backup CronJob with its last schedule, last success, last
//! failure and the newest backup in the store; stale when the newest good backup is older
//! than `--max-age`. The seeds' nightly health check, as one command with an exit code.

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use super::{explain, jobs, ENGINE_LABEL, PART_OF};

/// One CronJob's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub cronjob: String,
    pub engine: Option<String>,
    pub target: Option<String>,
    pub schedule: String,
    pub suspended: bool,
    pub last_schedule: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub newest_backup: Option<DateTime<Utc>>,
    /// Why this CronJob needs attention; empty when it is fine.
    pub problems: Vec<String>,
}

/// The kube-dr CronJobs of a namespace, and every Job there (to find failures).
pub async fn fetch(client: &Client, ns: &str) -> anyhow::Result<(Vec<CronJob>, Vec<Job>)> {
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let cronjobs = cronjobs
        .list(&ListParams::default().labels(PART_OF))
        .await
        .map_err(|e| explain(e, "listing CronJobs", ns))?
        .items;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let jobs = jobs
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "listing Jobs", ns))?
        .items;
    Ok((cronjobs, jobs))
}

/// The engine and target a CronJob backs up: its engine label and its container's
/// `DR_TARGET` (the `--target` the worker gets).
pub fn engine_and_target(cj: &CronJob) -> (Option<String>, Option<String>) {
    let engine = cj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ENGINE_LABEL).cloned());
    let container = cj
        .spec
        .as_ref()
        .and_then(|s| s.job_template.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first());
    let from_env = container
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "DR_TARGET"))
        .and_then(|e| e.value.clone());
    let from_args = container.and_then(|c| c.args.as_ref()).and_then(|args| {
        args.windows(2)
            .find(|w| w[0] == "--target")
            .map(|w| w[1].clone())
    });
    (engine, from_args.or(from_env))
}

/// A Kubernetes timestamp as chrono's.
fn time(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().try_into().ok()?)
}

/// Judges one CronJob. `newest_backup` is the newest complete backup of its engine and
/// target in the store (None when the store was not consulted or holds none).
pub fn assess(
    cj: &CronJob,
    jobs: &[Job],
    newest_backup: Option<DateTime<Utc>>,
    store_checked: bool,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Row {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let (engine, target) = engine_and_target(cj);
    let spec = cj.spec.as_ref();
    let status = cj.status.as_ref();
    let last_failure = jobs
        .iter()
        .filter(|j| {
            j.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.kind == "CronJob" && o.name == name))
        })
        .filter(|j| matches!(jobs::outcome(j), Some(jobs::Outcome::Failed(_))))
        .filter_map(|j| {
            let conditions = j.status.as_ref()?.conditions.as_ref()?;
            conditions
                .iter()
                .find(|c| c.type_ == "Failed")
                .and_then(|c| c.last_transition_time.as_ref())
                .and_then(time)
        })
        .max();
    let mut row = Row {
        cronjob: name,
        engine: engine.clone(),
        target,
        schedule: spec.map(|s| s.schedule.clone()).unwrap_or_default(),
        suspended: spec.and_then(|s| s.suspend).unwrap_or(false),
        last_schedule: status
            .and_then(|s| s.last_schedule_time.as_ref())
            .and_then(time),
        last_success: status
            .and_then(|s| s.last_successful_time.as_ref())
            .and_then(time),
        last_failure,
        newest_backup,
        problems: Vec::new(),
    };
    if row.suspended {
        row.problems.push("suspended".into());
    }
    if engine.is_none() {
        // prune and friends: only their own failures matter.
        if row.last_failure > row.last_success {
            row.problems.push("last run failed".into());
        }
        return row;
    }
    let age = |t: DateTime<Utc>| {
        humantime::format_duration((now - t).to_std().unwrap_or_default()).to_string()
    };
    match row.last_success {
        None => row.problems.push("never succeeded".into()),
        Some(t) if now - t > max_age => row.problems.push(format!("last success {} ago", age(t))),
        Some(_) => {}
    }
    if row.last_failure.is_some() && row.last_failure > row.last_success {
        row.problems.push("last run failed".into());
    }
    if store_checked {
        match newest_backup {
            None => row.problems.push("no backup in the store".into()),
            Some(t) if now - t > max_age => {
                row.problems.push(format!("newest backup {} old", age(t)))
            }
            Some(_) => {}
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cj(status: serde_json::Value) -> CronJob {
        serde_json::from_value(json!({
            "metadata": {"name": "kube-dr-postgres", "labels": {"kube-dr.io/engine": "postgres"}},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "worker", "env": [{"name": "DR_TARGET", "value": "prod"}]}]}}}}},
            "status": status
        }))
        .unwrap()
    }

    fn failed_job(at: &str) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "kube-dr-postgres", "uid": "u"}]},
            "status": {"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": at}]}
        }))
        .unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-22T09:00:00Z".parse().unwrap()
    }

    #[test]
    fn healthy_when_the_last_success_and_newest_backup_are_recent() {
        let c = cj(
            json!({"lastScheduleTime": "2026-11-22T02:00:00Z", "lastSuccessfulTime": "2026-11-22T02:05:00Z"}),
        );
        let row = assess(
            &c,
            &[],
            Some("2026-11-22T02:00:01Z".parse().unwrap()),
            true,
            now(),
            Duration::hours(26),
        );
        assert_eq!(row.problems, Vec::<String>::new());
        assert_eq!(
            (row.engine.as_deref(), row.target.as_deref()),
            (Some("postgres"), Some("prod"))
        );
    }

    #[test]
    fn stale_success_stale_backup_and_failures_are_problems() {
        let c = cj(json!({"lastSuccessfulTime": "2026-11-19T02:05:00Z"}));
        let row = assess(
            &c,
            &[failed_job("2026-11-22T02:10:00Z")],
            Some("2026-11-19T02:00:00Z".parse().unwrap()),
            true,
            now(),
            Duration::hours(26),
        );
        assert_eq!(row.problems.len(), 3, "{:?}", row.problems);
        assert!(
            row.problems[0].starts_with("last success 3days"),
            "{:?}",
            row.problems
        );
        assert_eq!(row.problems[1], "last run failed");
        assert!(
            row.problems[2].starts_with("newest backup 3days"),
            "{:?}",
            row.problems
        );
    }

    #[test]
    fn a_cronjob_that_never_ran_or_has_no_backup_is_flagged() {
        let row = assess(&cj(json!({})), &[], None, true, now(), Duration::hours(26));
        assert_eq!(
            row.problems,
            vec!["never succeeded", "no backup in the store"]
        );
        // Without a store, only the CronJob's own history counts.
        let row = assess(&cj(json!({})), &[], None, false, now(), Duration::hours(26));
        assert_eq!(row.problems, vec!["never succeeded"]);
    }

    #[tokio::test]
    async fn fetches_kube_dr_cronjobs_and_all_jobs() {
        use crate::cluster::fake::{on, serve};
        use http::Method;
        let (client, seen) = serve(vec![
            on(
                Method::GET,
                "/apis/batch/v1/namespaces/backups/cronjobs?&labelSelector=app.kubernetes.io%2Fpart-of%3Dkube-dr",
                200,
                json!({"apiVersion": "batch/v1", "kind": "CronJobList", "metadata": {},
                       "items": [serde_json::to_value(cj(json!({}))).unwrap()]}),
            ),
            on(
                Method::GET,
                "/apis/batch/v1/namespaces/backups/jobs",
                200,
                json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {},
                       "items": [serde_json::to_value(failed_job("2026-11-22T02:10:00Z")).unwrap()]}),
            ),
        ]);
        let (cronjobs, jobs) = fetch(&client, "backups").await.unwrap();
        assert_eq!(seen.await.unwrap().len(), 2);
        let row = assess(&cronjobs[0], &jobs, None, false, now(), Duration::hours(26));
        assert_eq!(row.problems, vec!["never succeeded", "last run failed"]);
    }

    #[test]
    fn a_failure_before_the_last_success_is_history() {
        let c = cj(json!({"lastSuccessfulTime": "2026-11-22T02:05:00Z"}));
        let row = assess(
            &c,
            &[failed_job("2026-11-21T02:10:00Z")],
            None,
            false,
            now(),
            Duration::hours(26),
        );
        assert_eq!(row.problems, Vec::<String>::new());
        assert!(row.last_failure.is_some());
    }
}
