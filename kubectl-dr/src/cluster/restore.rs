//! `kubectl dr restore --in-cluster`: the same restore, run as a Job next to the database
//! (no laptop uplink in the data path). The Job is the engine's backup CronJob's pod with
//! `kubectl-dr restore` as its command, so it has the same store settings, credentials,
//! network policy and security context; the age identity goes into a short-lived Secret.
//!
//! Cleanup runs whatever happens: the identity Secret is deleted and every workload scaled
//! down with `--scale-down` is scaled back to its former replica count.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    PodSecurityContext, Secret, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::{explain, jobs};

/// Where the identity is mounted in the restore pod.
pub const IDENTITY_DIR: &str = "/var/run/secrets/kube-dr/identity";
/// The plugin's path in the worker image.
pub const PLUGIN_PATH: &str = "/usr/local/bin/kubectl-dr";
/// The Secret that holds the worker's manifest-signing key (manifests/secret-templates).
pub const SIGNING_SECRET: &str = "kube-dr-signing";

/// A workload to stop during the restore: `[NAMESPACE/]deployment/NAME` or `statefulset/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTarget {
    pub namespace: Option<String>,
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl FromStr for ScaleTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (namespace, kind, name) = match parts.as_slice() {
            [kind, name] => (None, *kind, *name),
            [ns, kind, name] => (Some(ns.to_string()), *kind, *name),
            _ => {
                return Err(format!(
                    "{s:?}: expected [NAMESPACE/]KIND/NAME, e.g. deployment/app"
                ))
            }
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            other => {
                return Err(format!(
                    "{other:?}: only deployment and statefulset can be scaled down"
                ))
            }
        };
        if name.is_empty() {
            return Err(format!("{s:?}: no name"));
        }
        Ok(ScaleTarget {
            namespace,
            kind,
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ScaleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        let kind = match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        };
        write!(f, "{kind}/{}", self.name)
    }
}

/// The Secret holding the identity for one restore.
pub fn identity_secret(name: &str, identity: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".into(), "kube-dr".into()),
                ("kube-dr.io/restore".into(), "identity".into()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "key.txt".into(),
            ByteString(identity.to_vec()),
        )])),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The image's unprivileged user (and group).
const NONROOT: i64 = 65532;

/// The restore Job: the CronJob's pod running `kubectl-dr restore ARGS` with the identity
/// mounted; no retries (a restore is not repeated behind the operator's back). The backup
/// pod's signing key is left out: a restore never signs, and a pod holding both the
/// identity and the signing key could forge backups anyone would trust.
pub fn restore_job(
    cronjob: &CronJob,
    job_name: &str,
    secret_name: &str,
    restore_args: &[String],
    deadline: Duration,
) -> anyhow::Result<Job> {
    let name = cronjob.metadata.name.clone().unwrap_or_default();
    let mut spec = cronjob
        .spec
        .as_ref()
        .and_then(|s| s.job_template.spec.clone())
        .ok_or_else(|| anyhow::anyhow!("CronJob {name} has no job template"))?;
    spec.backoff_limit = Some(0);
    spec.active_deadline_seconds = Some(deadline.as_secs() as i64);
    let pod = spec
        .template
        .spec
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("CronJob {name} has no pod spec"))?;
    let signing: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(SIGNING_SECRET)
        })
        .map(|v| v.name.clone())
        .collect();
    if let Some(volumes) = pod.volumes.as_mut() {
        volumes.retain(|v| !signing.contains(&v.name));
    }
    for c in pod
        .containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
    {
        if let Some(mounts) = c.volume_mounts.as_mut() {
            mounts.retain(|m| !signing.contains(&m.name));
        }
        if let Some(env) = c.env.as_mut() {
            env.retain(|e| e.name != "DR_SIGNING_KEY_FILE");
        }
    }
    // The identity is mounted 0400, owned by root: the pod's user reads it only through
    // fsGroup (the kubelet then gives it that group, with group read). Without one the
    // worker (UID 65532) could not open its key and the restore would fail at once.
    let sc = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if sc.fs_group.is_none() {
        sc.fs_group = Some(sc.run_as_group.or(sc.run_as_user).unwrap_or(NONROOT));
    }
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "age-identity".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.to_string()),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    let container = pod
        .containers
        .first_mut()
        .ok_or_else(|| anyhow::anyhow!("CronJob {name} has no container"))?;
    container.command = Some(vec![PLUGIN_PATH.into()]);
    let mut args = vec!["restore".to_string()];
    args.extend(restore_args.iter().cloned());
    args.extend([
        "--identity".into(),
        format!("{IDENTITY_DIR}/key.txt"),
        "--yes".into(),
        "--no-progress".into(),
    ]);
    container.args = Some(args);
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: "age-identity".into(),
            mount_path: IDENTITY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    let mut labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("kube-dr.io/restore".into(), "job".into());
    spec.template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels = Some(labels.clone());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// One in-cluster restore.
pub struct Plan<'a> {
    pub namespace: &'a str,
    pub cronjob: &'a CronJob,
    pub restore_args: Vec<String>,
    pub identity: Vec<u8>,
    pub scale_down: Vec<ScaleTarget>,
    pub deadline: Duration,
    pub poll: Duration,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub job: String,
    pub outcome: jobs::Outcome,
    pub logs: String,
}

/// Runs the restore Job and cleans up after it, whatever happens.
pub async fn run(
    client: &Client,
    plan: &Plan<'_>,
    now: DateTime<Utc>,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let ns = plan.namespace;
    let stamp = now.format("%m%d%H%M%S").to_string();
    let secret_name = format!("kube-dr-restore-identity-{stamp}");
    let job_name = format!("kube-dr-restore-{stamp}");
    let job = restore_job(
        plan.cronjob,
        &job_name,
        &secret_name,
        &plan.restore_args,
        plan.deadline,
    )?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &identity_secret(&secret_name, &plan.identity),
        )
        .await
        .map_err(|e| explain(e, "creating the identity Secret", ns))?;
    say(&format!(
        "secret/{secret_name} created (deleted when the restore ends)"
    ));

    let mut scaled: Vec<(ScaleTarget, i32)> = Vec::new();
    let result = async {
        for target in &plan.scale_down {
            let before = scale(client, ns, target, 0).await?;
            say(&format!("{target} scaled down from {before} replica(s)"));
            scaled.push((target.clone(), before));
        }
        jobs::create(client, ns, &job).await?;
        say(&format!(
            "job.batch/{job_name} created; waiting for it (kubectl -n {ns} logs -f job/{job_name})"
        ));
        let outcome = jobs::wait(client, ns, &job_name, plan.deadline, plan.poll).await?;
        let logs = jobs::logs(client, ns, &job_name)
            .await
            .unwrap_or_else(|e| format!("(no log: {e:#})"));
        Ok::<_, anyhow::Error>(Report {
            job: job_name.clone(),
            outcome,
            logs,
        })
    }
    .await;

    // Cleanup, in every case: the key leaves the cluster, the workloads come back.
    let mut cleanup_errors = Vec::new();
    match secrets.delete(&secret_name, &DeleteParams::default()).await {
        Ok(_) => say(&format!("secret/{secret_name} deleted")),
        Err(e) => cleanup_errors.push(format!(
            "the identity Secret {secret_name} could not be deleted ({e}); delete it now: kubectl -n {ns} delete secret {secret_name}"
        )),
    }
    for (target, replicas) in scaled.iter().rev() {
        match scale(client, ns, target, *replicas).await {
            Ok(_) => say(&format!("{target} scaled back to {replicas} replica(s)")),
            Err(e) => cleanup_errors.push(format!(
                "{target} could not be scaled back to {replicas} ({e:#}); run: kubectl scale {target} --replicas={replicas}"
            )),
        }
    }
    match (result, cleanup_errors.is_empty()) {
        (result, true) => result,
        (Ok(_), false) => Err(anyhow::anyhow!(cleanup_errors.join("; "))),
        (Err(e), false) => Err(e.context(cleanup_errors.join("; "))),
    }
}

/// Sets a workload's replicas and returns the previous count.
async fn scale(
    client: &Client,
    default_ns: &str,
    target: &ScaleTarget,
    replicas: i32,
) -> anyhow::Result<i32> {
    let ns = target.namespace.as_deref().unwrap_or(default_ns);
    match target.kind {
        WorkloadKind::Deployment => {
            set_replicas(
                Api::<Deployment>::namespaced(client.clone(), ns),
                ns,
                target,
                replicas,
            )
            .await
        }
        WorkloadKind::StatefulSet => {
            set_replicas(
                Api::<StatefulSet>::namespaced(client.clone(), ns),
                ns,
                target,
                replicas,
            )
            .await
        }
    }
}

async fn set_replicas<K>(
    api: Api<K>,
    ns: &str,
    target: &ScaleTarget,
    replicas: i32,
) -> anyhow::Result<i32>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("scaling {target}");
    let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
    let before = api
        .get_scale(&target.name)
        .await
        .map_err(|e| explain(e, &what, ns))?;
    api.patch_scale(&target.name, &PatchParams::default(), &patch)
        .await
        .map_err(|e| explain(e, &what, ns))?;
    Ok(before.spec.and_then(|s| s.replicas).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fake::{on, serve, status};
    use http::Method;
    use serde_json::{json, Value};

    fn cronjob() -> CronJob {
        serde_json::from_value(json!({
            "metadata": {"name": "kube-dr-postgres", "namespace": "kube-dr", "uid": "u1"},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": {"spec": {"backoffLimit": 1, "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "kube-dr-worker"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "img",
                    "args": ["backup", "postgres"],
                    "env": [{"name": "DR_SIGNING_KEY_FILE", "value": "/var/run/secrets/kube-dr/signing/signing.key"}],
                    "volumeMounts": [{"name": "signing-key", "mountPath": "/var/run/secrets/kube-dr/signing"},
                                     {"name": "tmp", "mountPath": "/tmp"}]}],
                    "volumes": [{"name": "signing-key", "secret": {"secretName": "kube-dr-signing"}},
                                {"name": "tmp", "emptyDir": {}}]}}}}}
        }))
        .unwrap()
    }

    fn plan<'a>(cj: &'a CronJob, scale_down: Vec<ScaleTarget>) -> Plan<'a> {
        Plan {
            namespace: "kube-dr",
            cronjob: cj,
            restore_args: vec![
                "latest".into(),
                "--to".into(),
                "postgres://backup@db:5432/app".into(),
            ],
            identity: b"AGE-SECRET-KEY-1TEST".to_vec(),
            scale_down,
            deadline: Duration::from_secs(600),
            poll: Duration::from_millis(1),
        }
    }

    const NOW: &str = "2026-11-22T03:04:05Z";

    fn job_status(condition: &str) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "kube-dr-restore-1122030405"},
               "status": {"conditions": [{"type": condition, "status": "True", "reason": "R", "message": "m"}]}})
    }

    fn scale(replicas: i32) -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "app"}, "spec": {"replicas": replicas}})
    }

    fn script(final_condition: &str) -> Vec<crate::cluster::fake::Exchange> {
        let ok = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        vec![
            on(Method::POST, "/api/v1/namespaces/kube-dr/secrets", 201, ok.clone()),
            on(Method::GET, "/apis/apps/v1/namespaces/shop/deployments/app/scale", 200, scale(3)),
            on(Method::PATCH, "/apis/apps/v1/namespaces/shop/deployments/app/scale", 200, scale(0)),
            on(Method::POST, "/apis/batch/v1/namespaces/kube-dr/jobs", 201, job_status("Running")),
            on(Method::GET, "/apis/batch/v1/namespaces/kube-dr/jobs/kube-dr-restore-1122030405", 200, json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}})),
            on(Method::GET, "/apis/batch/v1/namespaces/kube-dr/jobs/kube-dr-restore-1122030405", 200, job_status(final_condition)),
            on(Method::GET, "/api/v1/namespaces/kube-dr/pods?&labelSelector=job-name%3Dkube-dr-restore-1122030405", 200,
               json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
            on(Method::DELETE, "/api/v1/namespaces/kube-dr/secrets/kube-dr-restore-identity-1122030405", 200, ok),
            on(Method::GET, "/apis/apps/v1/namespaces/shop/deployments/app/scale", 200, scale(0)),
            on(Method::PATCH, "/apis/apps/v1/namespaces/shop/deployments/app/scale", 200, scale(3)),
        ]
    }

    async fn run_script(final_condition: &str) -> (anyhow::Result<Report>, Vec<(String, Value)>) {
        let cj = cronjob();
        let (client, seen) = serve(script(final_condition));
        let target: ScaleTarget = "shop/deployment/app".parse().unwrap();
        let result = run(
            &client,
            &plan(&cj, vec![target]),
            NOW.parse().unwrap(),
            &|_| {},
        )
        .await;
        (result, seen.await.unwrap())
    }

    fn assert_requests(seen: &[(String, Value)]) {
        // The identity travels only in the Secret, which is created first and deleted last.
        assert_eq!(
            seen[0].1["data"]["key.txt"],
            json!(base64_of(b"AGE-SECRET-KEY-1TEST")),
        );
        assert_eq!(seen[0].1["immutable"], true);
        assert_eq!(seen[2].1, json!({"spec": {"replicas": 0}}));
        let job = &seen[3].1;
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["command"], json!([PLUGIN_PATH]));
        assert_eq!(
            container["args"],
            json!([
                "restore",
                "latest",
                "--to",
                "postgres://backup@db:5432/app",
                "--identity",
                "/var/run/secrets/kube-dr/identity/key.txt",
                "--yes",
                "--no-progress"
            ])
        );
        assert!(
            !job.to_string().contains("AGE-SECRET-KEY"),
            "the Job must not carry the key"
        );
        for signing in ["kube-dr-signing", "DR_SIGNING_KEY_FILE", "signing-key"] {
            assert!(
                !job.to_string().contains(signing),
                "the restore Job must not hold the signing key ({signing})"
            );
        }
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretName"],
            "kube-dr-restore-identity-1122030405"
        );
        assert_eq!(
            seen[7].0,
            "DELETE /api/v1/namespaces/kube-dr/secrets/kube-dr-restore-identity-1122030405"
        );
        assert_eq!(seen[9].1, json!({"spec": {"replicas": 3}}));
    }

    fn base64_of(b: &[u8]) -> String {
        serde_json::to_value(ByteString(b.to_vec()))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn success_deletes_the_secret_and_scales_back() {
        let (result, seen) = run_script("Complete").await;
        let report = result.unwrap();
        assert_eq!(report.outcome, jobs::Outcome::Succeeded);
        assert_requests(&seen);
    }

    #[tokio::test]
    async fn failure_also_deletes_the_secret_and_scales_back() {
        let (result, seen) = run_script("Failed").await;
        assert_eq!(
            result.unwrap().outcome,
            jobs::Outcome::Failed("R: m".into())
        );
        assert_requests(&seen);
    }

    #[tokio::test]
    async fn an_api_error_mid_way_still_cleans_up() {
        let cj = cronjob();
        let ok = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let (client, seen) = serve(vec![
            on(
                Method::POST,
                "/api/v1/namespaces/kube-dr/secrets",
                201,
                ok.clone(),
            ),
            on(
                Method::GET,
                "/apis/apps/v1/namespaces/shop/deployments/app/scale",
                200,
                scale(2),
            ),
            on(
                Method::PATCH,
                "/apis/apps/v1/namespaces/shop/deployments/app/scale",
                200,
                scale(0),
            ),
            on(
                Method::POST,
                "/apis/batch/v1/namespaces/kube-dr/jobs",
                403,
                status(403, "Forbidden"),
            ),
            on(
                Method::DELETE,
                "/api/v1/namespaces/kube-dr/secrets/kube-dr-restore-identity-1122030405",
                200,
                ok,
            ),
            on(
                Method::GET,
                "/apis/apps/v1/namespaces/shop/deployments/app/scale",
                200,
                scale(0),
            ),
            on(
                Method::PATCH,
                "/apis/apps/v1/namespaces/shop/deployments/app/scale",
                200,
                scale(2),
            ),
        ]);
        let target: ScaleTarget = "shop/deployment/app".parse().unwrap();
        let err = run(
            &client,
            &plan(&cj, vec![target]),
            NOW.parse().unwrap(),
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("forbidden"), "{err:#}");
        let seen = seen.await.unwrap();
        assert_eq!(seen.len(), 7);
        assert_eq!(seen[6].1, json!({"spec": {"replicas": 2}}));
    }

    #[test]
    fn the_restore_pod_can_read_its_identity() {
        let job = restore_job(&cronjob(), "j", "s", &[], Duration::from_secs(60)).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let identity = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "age-identity")
            .unwrap();
        assert_eq!(identity.secret.unwrap().default_mode, Some(0o400));
        // 0400 and root's: only fsGroup lets the pod's user read it.
        assert_eq!(pod.security_context.unwrap().fs_group, Some(NONROOT));
        // A pod that names its group keeps it.
        let mut cj = cronjob();
        let template = &mut cj.spec.as_mut().unwrap().job_template;
        template
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(2000),
            ..PodSecurityContext::default()
        });
        let job = restore_job(&cj, "j", "s", &[], Duration::from_secs(60)).unwrap();
        let sc = job
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .security_context
            .unwrap();
        assert_eq!(sc.fs_group, Some(2000));
    }

    #[test]
    fn parses_scale_targets() {
        assert_eq!(
            "deploy/app".parse::<ScaleTarget>().unwrap(),
            ScaleTarget {
                namespace: None,
                kind: WorkloadKind::Deployment,
                name: "app".into()
            }
        );
        assert_eq!(
            "shop/sts/db".parse::<ScaleTarget>().unwrap().to_string(),
            "shop/statefulset/db"
        );
        for bad in ["app", "pod/x", "a/b/c/d", "deployment/"] {
            assert!(bad.parse::<ScaleTarget>().is_err(), "{bad}");
        }
    }
}
