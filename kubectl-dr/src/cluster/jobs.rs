//! Jobs: one made from a CronJob exactly as `kubectl create job --from=cronjob/NAME` makes it,
//! and following a Job to its end.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, Client};

use super::{explain, ENGINE_LABEL};

/// A Job built from a CronJob's template, as `kubectl create job --from=cronjob/…` builds
/// it: the template's labels and annotations, `cronjob.kubernetes.io/instantiate: manual`,
/// and the CronJob as controlling owner (so its history limits apply).
pub fn job_from_cronjob(cronjob: &CronJob, now: DateTime<Utc>) -> anyhow::Result<Job> {
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .ok_or_else(|| anyhow::anyhow!("CronJob {name} has no spec"))?;
    let mut annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert("cronjob.kubernetes.io/instantiate".into(), "manual".into());
    // Job names become label values (≤ 63 characters).
    let suffix = now.format("-manual-%m%d%H%M%S").to_string();
    let job_name = format!("{}{suffix}", &name[..name.len().min(63 - suffix.len())]);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name),
            namespace: cronjob.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: name.clone(),
                uid: cronjob.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    })
}

/// Finds the CronJob for an engine name (`postgres`, via its `kube-dr.io/engine` label) or
/// by its own name.
pub async fn find_cronjob(client: &Client, ns: &str, which: &str) -> anyhow::Result<CronJob> {
    let api: Api<CronJob> = Api::namespaced(client.clone(), ns);
    if let Some(cj) = api
        .get_opt(which)
        .await
        .map_err(|e| explain(e, "reading CronJobs", ns))?
    {
        return Ok(cj);
    }
    let by_engine = api
        .list(&ListParams::default().labels(&format!("{ENGINE_LABEL}={which}")))
        .await
        .map_err(|e| explain(e, "listing CronJobs", ns))?;
    match by_engine.items.len() {
        1 => Ok(by_engine.items.into_iter().next().expect("one")),
        0 => anyhow::bail!(
            "no CronJob {which} and none labelled {ENGINE_LABEL}={which} in namespace {ns}; see `kubectl dr status -n {ns}`"
        ),
        n => anyhow::bail!(
            "{n} CronJobs are labelled {ENGINE_LABEL}={which} in namespace {ns}; name one: {}",
            by_engine.items.iter().filter_map(|c| c.metadata.name.clone()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Creates `job` and returns it as stored.
pub async fn create(client: &Client, ns: &str, job: &Job) -> anyhow::Result<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), job)
        .await
        .map_err(|e| explain(e, "creating the Job", ns))
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
}

/// The Job's end state, if it has one.
pub fn outcome(job: &Job) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some(Outcome::Succeeded),
            "Failed" => Some(Outcome::Failed(
                [c.reason.clone(), c.message.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
            )),
            _ => None,
        })
}

/// Polls the Job until it ends or `timeout` passes.
pub async fn wait(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<Outcome> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let started = std::time::Instant::now();
    loop {
        let job = api
            .get(name)
            .await
            .map_err(|e| explain(e, "reading the Job", ns))?;
        if let Some(done) = outcome(&job) {
            return Ok(done);
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "job {name} still running after {}; follow it with `kubectl -n {ns} logs -f job/{name}`",
            humantime::format_duration(timeout)
        );
        tokio::time::sleep(every).await;
    }
}

/// The log of the Job's newest pod (empty when there is none).
pub async fn logs(client: &Client, ns: &str, job: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(|e| explain(e, "listing the Job's pods", ns))?;
    let Some(pod) = list
        .items
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .and_then(|p| p.metadata.name.clone())
    else {
        return Ok(String::new());
    };
    pods.logs(&pod, &LogParams::default())
        .await
        .map_err(|e| explain(e, "reading the pod's log", ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fake::{on, serve};
    use http::Method;
    use serde_json::json;

    pub fn cronjob() -> CronJob {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "kube-dr-postgres", "namespace": "kube-dr", "uid": "cj-uid-1",
                         "labels": {"kube-dr.io/engine": "postgres"}},
            "spec": {"schedule": "0 2 * * *", "concurrencyPolicy": "Forbid",
                "jobTemplate": {
                    "metadata": {"labels": {"team": "platform"}, "annotations": {"note": "n"}},
                    "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "worker", "image": "ghcr.io/kube-dr/worker:0.1.0",
                                        "args": ["backup", "postgres"]}]}}}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_job_from_a_cronjob_is_what_kubectl_create_job_from_makes() {
        let now: DateTime<Utc> = "2026-11-22T03:04:05Z".parse().unwrap();
        let job = job_from_cronjob(&cronjob(), now).unwrap();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["metadata"]["name"], "kube-dr-postgres-manual-1122030405");
        assert_eq!(
            v["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(v["metadata"]["annotations"]["note"], "n");
        assert_eq!(v["metadata"]["labels"]["team"], "platform");
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": "kube-dr-postgres",
                    "uid": "cj-uid-1", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(
            v["spec"],
            serde_json::to_value(cronjob().spec.unwrap().job_template.spec).unwrap()
        );
        let long = {
            let mut c = cronjob();
            c.metadata.name = Some("x".repeat(80));
            c
        };
        let name = job_from_cronjob(&long, now).unwrap().metadata.name.unwrap();
        assert!(name.len() <= 63, "{name}");
    }

    #[tokio::test]
    async fn finds_the_cronjob_by_engine_label_and_creates_the_job() {
        let cj = serde_json::to_value(cronjob()).unwrap();
        let (client, seen) = serve(vec![
            on(Method::GET, "/apis/batch/v1/namespaces/kube-dr/cronjobs/postgres", 404, crate::cluster::fake::status(404, "NotFound")),
            on(
                Method::GET,
                "/apis/batch/v1/namespaces/kube-dr/cronjobs?&labelSelector=kube-dr.io%2Fengine%3Dpostgres",
                200,
                json!({"apiVersion": "batch/v1", "kind": "CronJobList", "metadata": {}, "items": [cj]}),
            ),
            on(Method::POST, "/apis/batch/v1/namespaces/kube-dr/jobs", 201, json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "made"}})),
        ]);
        let found = find_cronjob(&client, "kube-dr", "postgres").await.unwrap();
        let job = job_from_cronjob(&found, Utc::now()).unwrap();
        let created = create(&client, "kube-dr", &job).await.unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("made"));
        let seen = seen.await.unwrap();
        assert_eq!(
            seen[2].1["metadata"]["ownerReferences"][0]["uid"],
            "cj-uid-1"
        );
        assert_eq!(
            seen[2].1["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["backup", "postgres"])
        );
    }

    #[test]
    fn reads_job_outcomes() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(
                json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
            )
            .unwrap()
        };
        assert_eq!(outcome(&job(json!([]))), None);
        assert_eq!(
            outcome(&job(json!([{"type": "Complete", "status": "True"}]))),
            Some(Outcome::Succeeded)
        );
        assert_eq!(
            outcome(&job(
                json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])
            )),
            Some(Outcome::Failed(
                "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
            ))
        );
        assert_eq!(
            outcome(&job(json!([{"type": "Failed", "status": "False"}]))),
            None
        );
    }
}
