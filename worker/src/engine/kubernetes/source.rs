//! `worker backup kubernetes`: its flags and the [`Source`] they build.

use std::io::Write;

use async_trait::async_trait;
use serde_json::Value;

use super::{api_get, discover_group, left_out, strip, Resource, DEFAULT_KINDS};
use crate::catalog::{PartFormat, TableCount};
use crate::engine::{BackupRun, DumpOutcome, PartSpec, Source, SourceFailure};

/// Objects per list request.
pub(super) const PAGE: u32 = 500;

/// Flags of `worker backup kubernetes` (the cluster: in-cluster service account, or
/// KUBECONFIG).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kubernetes")]
pub struct BackupArgs {
    /// Only objects in this namespace (repeatable; default: all). Cluster-scoped kinds are
    /// still taken, Namespaces only the ones named.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Kinds to back up, as `plural[.group]` (comma-separated; default: Namespaces,
    /// ConfigMaps, Secrets, ServiceAccounts, Services, Deployments, StatefulSets, CronJobs,
    /// PVCs, Ingresses, CRDs and Argo CD's Applications, AppProjects and ApplicationSets).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub kinds: Vec<String>,

    /// Kinds to leave out, as `plural[.group]` (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub exclude_kinds: Vec<String>,
}

impl BackupArgs {
    /// # Errors
    /// Never for now (the cluster is contacted by the dump).
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(KubernetesSource { args: self }))
    }
}

/// A cluster whose objects are backed up.
pub struct KubernetesSource {
    args: BackupArgs,
}

async fn get(client: &kube::Client, path: &str, what: &str) -> Result<Value, SourceFailure> {
    api_get(client, path)
        .await
        .map_err(|e| explain(e, what, None))
}

fn explain(e: kube::Error, what: &str, rule: Option<String>) -> SourceFailure {
    match &e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{what}: forbidden ({}){}",
            status.message,
            rule.map(|r| format!("; {r}")).unwrap_or_default()
        )
        .into(),
        _ => format!("{what}: {e}; check that the Kubernetes API server is reachable (in a pod: the service account's token is mounted; outside: KUBECONFIG)").into(),
    }
}

/// The kinds to take: discovery of the core API and of each group a wanted kind belongs
/// to; a group that fails discovery is skipped with a warning.
async fn discover(
    client: &kube::Client,
    wanted: &[String],
    explicit: bool,
) -> Result<Vec<Resource>, SourceFailure> {
    let mut found = discover_group(client, "v1")
        .await
        .map_err(|e| explain(e, "discovering v1", None))?;
    let groups = get(client, "/apis", "discovering API groups").await?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or_default();
        if !wanted
            .iter()
            .any(|k| k.split_once('.').is_some_and(|(_, group)| group == name))
        {
            continue;
        }
        let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() else {
            continue;
        };
        match discover_group(client, gv).await {
            Ok(r) => found.extend(r),
            Err(e) => {
                tracing::warn!(group = gv, error = %e, "API group skipped: its discovery failed")
            }
        }
    }
    let mut out = Vec::new();
    for want in wanted {
        match found.iter().find(|r| &r.name == want) {
            Some(r) => out.push(r.clone()),
            None if explicit => {
                return Err(format!(
                    "kind {want} is not served by this cluster (or its group failed discovery); check --kinds (plural[.group], e.g. deployments.apps)"
                )
                .into())
            }
            None => tracing::info!(kind = %want, "not served by this cluster; skipped"),
        }
    }
    Ok(out)
}

/// The ClusterRole rule a 403 on `r` asks for.
fn missing_rule(r: &Resource) -> String {
    format!(
        "the worker's ClusterRole needs: {{apiGroups: [\"{}\"], resources: [\"{}\"], verbs: [\"get\", \"list\"]}} (manifests/kubernetes/rbac.yaml)",
        r.group, r.plural
    )
}

/// Lists every object of `r` (in `namespaces`, or everywhere) page by page, writing each
/// stripped object as a YAML document; returns how many were written.
async fn list_into(
    client: &kube::Client,
    r: &Resource,
    namespaces: &[String],
    out: &mut dyn Write,
) -> Result<u64, SourceFailure> {
    let paths: Vec<String> = if r.namespaced && !namespaces.is_empty() {
        namespaces
            .iter()
            .map(|ns| format!("{}/namespaces/{ns}/{}", r.base(), r.plural))
            .collect()
    } else {
        vec![format!("{}/{}", r.base(), r.plural)]
    };
    let mut written = 0u64;
    for path in paths {
        let mut next: Option<String> = None;
        loop {
            let mut query = format!("{path}?limit={PAGE}");
            if let Some(token) = &next {
                query.push_str("&continue=");
                query.push_str(
                    &url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>(),
                );
            }
            let page = api_get(client, &query)
                .await
                .map_err(|e| explain(e, &format!("listing {}", r.name), Some(missing_rule(r))))?;
            for item in page["items"].as_array().into_iter().flatten() {
                let mut object = item.clone();
                if r.plural == "namespaces" && !namespaces.is_empty() {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    if !namespaces.iter().any(|n| n == name) {
                        continue;
                    }
                }
                // List items carry neither; apply needs both.
                object["apiVersion"] = Value::String(r.group_version.clone());
                object["kind"] = Value::String(r.kind.clone());
                if left_out(&object) {
                    continue;
                }
                strip(&mut object);
                out.write_all(b"---\n")?;
                serde_yaml::to_writer(&mut *out, &object)?;
                written += 1;
            }
            next = page["metadata"]["continue"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if next.is_none() {
                break;
            }
        }
    }
    Ok(written)
}

#[async_trait]
impl Source for KubernetesSource {
    fn describe(&self) -> String {
        "the Kubernetes API".into()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let no_api = |e: &dyn std::fmt::Display| -> SourceFailure {
            format!("no Kubernetes API to back up ({e}); run in a pod with a service account, or set KUBECONFIG").into()
        };
        let mut config = kube::Config::infer().await.map_err(|e| no_api(&e))?;
        // kube retries 503s with backoff for minutes; an aggregated API that is down (a
        // metrics server) must cost a warning, not the night. A failed list fails the
        // backup at once and the CronJob's next run tries again.
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(|e| no_api(&e))?;
        let version = get(&client, "/version", "reading the server version").await?;
        let explicit = !self.args.kinds.is_empty();
        let wanted: Vec<String> = if explicit {
            self.args.kinds.clone()
        } else {
            DEFAULT_KINDS.iter().map(|k| k.to_string()).collect()
        }
        .into_iter()
        .filter(|k| !self.args.exclude_kinds.contains(k))
        .collect();
        let resources = discover(&client, &wanted, explicit).await?;
        for r in resources {
            let spec = PartSpec {
                name: r.name.clone(),
                format: PartFormat::KubernetesYaml,
                extension: "yaml",
                database: None,
                section: None,
            };
            let (client, namespaces, resource) =
                (client.clone(), self.args.namespaces.clone(), r.clone());
            let handle = tokio::runtime::Handle::current();
            let count = run
                .store_part(spec, move |out: &mut dyn Write| {
                    handle.block_on(list_into(&client, &resource, &namespaces, out))
                })
                .await?;
            tracing::info!(kind = %r.name, objects = count, "kind stored");
            run.record_tables(
                &r.name,
                vec![TableCount {
                    schema: if r.group.is_empty() {
                        "core".into()
                    } else {
                        r.group.clone()
                    },
                    name: r.plural.clone(),
                    rows: count,
                }],
            );
        }
        Ok(DumpOutcome {
            server_version: version["gitVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            facts: crate::catalog::Facts::default(),
        })
    }
}
