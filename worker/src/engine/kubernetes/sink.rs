//! `kubectl dr restore ID --engine kubernetes --to cluster|cluster:CONTEXT|-`: the
//! Kubernetes [`Sink`].
//!
//! Into a cluster (the kubeconfig's current context, or the one named): every part is
//! verified and decrypted while planning, the objects are renamed by `--namespace-map`,
//! and each collection is listed once, in pages (never a GET per object: 10,000 objects are
//! 10,000 applies and a few dozen lists): an object that exists is skipped unless
//! `--clean`, which replaces it.
//! Objects are then applied in dependency order (CRDs, Namespaces, ServiceAccounts, Secrets,
//! ConfigMaps, PVCs, Services, workloads, the rest, Argo CD AppProjects before
//! Applications) with server-side apply under the field manager `kube-dr`. Restored Argo CD
//! Applications lose their `resources-finalizer.argocd.argoproj.io`, so deleting one never
//! cascades into live resources. Afterwards each collection is listed again and the objects
//! found are counted per kind against the manifest.
//!
//! To stdout (`--to -`): the YAML in the same order, for `kubectl apply -f -`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::{apply_rank, discover_group, Resource};
use crate::catalog::{Manifest, Part, PartFormat, TableCount};
use crate::engine::{
    Confirm, Planned, RestoreCommon, RestoreCtx, RestorePlan, RestoredCounts, Sink, SourceFailure,
    VerifiedParts,
};
use crate::verify::{self, stream_withheld};

/// The finalizer that makes deleting an Argo CD Application delete its live resources.
pub const ARGO_FINALIZER: &str = "resources-finalizer.argocd.argoproj.io";

/// The field manager of every apply.
const FIELD_MANAGER: &str = "kube-dr";

/// Kubernetes flags of `kubectl dr restore`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Kubernetes")]
#[group(id = "kubernetes_restore")]
pub struct RestoreArgs {
    /// Restore the objects of namespace OLD into NEW (repeatable); the Namespace object
    /// itself is renamed too.
    #[arg(hide_short_help = true, long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    pub namespace_map: Vec<(String, String)>,
}

fn parse_mapping(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("{text:?} is not OLD=NEW"))
}

impl RestoreArgs {
    /// The first Kubernetes-only flag given.
    pub fn given(&self) -> Option<&'static str> {
        (!self.namespace_map.is_empty()).then_some("--namespace-map")
    }

    /// # Errors
    /// A destination that is neither `-` nor `cluster[:CONTEXT]`.
    pub fn sink(&self, common: &RestoreCommon) -> Result<Box<dyn Sink>, SourceFailure> {
        let destination = match common.to.as_str() {
            "-" => Destination::Stdout,
            "cluster" => Destination::Cluster(None),
            other => match other.strip_prefix("cluster:") {
                Some(context) if !context.is_empty() => Destination::Cluster(Some(context.to_string())),
                _ => {
                    return Err(format!(
                        "--to {other:?} is not a Kubernetes destination: use cluster (the kubeconfig's current context), cluster:CONTEXT, or - (YAML on stdout)"
                    )
                    .into())
                }
            },
        };
        Ok(Box::new(KubernetesSink {
            destination,
            common: common.clone(),
            namespace_map: self.namespace_map.iter().cloned().collect(),
            client: None,
        }))
    }
}

enum Destination {
    Stdout,
    Cluster(Option<String>),
}

/// One object to apply, decided in the plan.
struct Apply {
    /// The part (kind) it came from, for counting.
    part: String,
    object: Value,
    /// Its API path (without query).
    path: String,
    /// The collection it is listed in, and its name there.
    collection: String,
    name: String,
    exists: bool,
}

/// Applies sent at once within one kind: a real API server answers each in a few
/// milliseconds, so 10,000 objects one after the other would take minutes.
const APPLIES_IN_FLIGHT: usize = 16;

/// One server-side apply.
async fn apply(client: kube::Client, path: String, body: Vec<u8>) -> Result<(), SourceFailure> {
    let request = http::Request::patch(format!("{path}?fieldManager={FIELD_MANAGER}&force=true"))
        .header("Content-Type", "application/apply-patch+yaml")
        .body(body)?;
    client
        .request_text(request)
        .await
        .map_err(|e| api_error(e, &format!("applying {path}")))?;
    Ok(())
}

/// The names in one collection (`/api/v1/namespaces/shop/secrets`), listed in pages.
async fn list_names(
    client: &kube::Client,
    collection: &str,
) -> Result<BTreeSet<String>, kube::Error> {
    let mut names = BTreeSet::new();
    let mut next: Option<String> = None;
    loop {
        let mut query = format!("{collection}?limit={}", super::source::PAGE);
        if let Some(token) = &next {
            query.push_str("&continue=");
            query.extend(url::form_urlencoded::byte_serialize(token.as_bytes()));
        }
        let page = super::api_get(client, &query).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            if let Some(name) = item["metadata"]["name"].as_str() {
                names.insert(name.to_string());
            }
        }
        next = page["metadata"]["continue"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if next.is_none() {
            return Ok(names);
        }
    }
}

/// Restores Kubernetes objects.
pub struct KubernetesSink {
    destination: Destination,
    common: RestoreCommon,
    namespace_map: BTreeMap<String, String>,
    client: Option<kube::Client>,
}

/// A restore of Kubernetes objects as planned: each object looked up in the cluster (or
/// none, for stdout).
struct KubernetesPlanned {
    destination: Destination,
    common: RestoreCommon,
    client: Option<kube::Client>,
    objects: Vec<Apply>,
}

/// The YAML parts of a backup, in apply order.
fn ordered(manifest: &Manifest) -> Vec<&Part> {
    let mut parts: Vec<&Part> = manifest
        .parts
        .iter()
        .filter(|p| p.format == PartFormat::KubernetesYaml)
        .collect();
    parts.sort_by_key(|p| (apply_rank(&p.name), p.name.clone()));
    parts
}

fn api_error(e: kube::Error, what: &str) -> SourceFailure {
    match &e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{what}: forbidden ({}); the restore runs with your own credentials: they need list and patch on it",
            status.message
        )
        .into(),
        _ => format!("{what}: {e}").into(),
    }
}

/// Renames namespaces and drops the Argo CD finalizer; returns whether it dropped one.
fn prepare(object: &mut Value, map: &BTreeMap<String, String>) -> bool {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let meta = &mut object["metadata"];
    if kind == "Namespace" {
        if let Some(new) = meta["name"].as_str().and_then(|n| map.get(n)) {
            meta["name"] = Value::String(new.clone());
        }
    } else if let Some(new) = meta["namespace"].as_str().and_then(|n| map.get(n)) {
        meta["namespace"] = Value::String(new.clone());
    }
    if kind != "Application" {
        return false;
    }
    let Some(finalizers) = meta.get_mut("finalizers").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = finalizers.len();
    finalizers.retain(|f| f != ARGO_FINALIZER);
    before != finalizers.len()
}

#[async_trait]
impl Sink for KubernetesSink {
    async fn probe(&mut self, _manifest: &Manifest) -> Result<(), SourceFailure> {
        let Destination::Cluster(context) = &self.destination else {
            return Ok(());
        };
        let no_cluster = |e: &dyn std::fmt::Display| -> SourceFailure {
            format!("no Kubernetes cluster to restore into ({e}); check KUBECONFIG and the context")
                .into()
        };
        let mut config = match context {
            Some(c) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                context: Some(c.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| no_cluster(&e))?,
            None => kube::Config::infer().await.map_err(|e| no_cluster(&e))?,
        };
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(|e| no_cluster(&e))?;
        let _: Value = client
            .request(http::Request::get("/version").body(Vec::new())?)
            .await
            .map_err(|e| api_error(e, "reaching the API server"))?;
        self.client = Some(client);
        Ok(())
    }

    async fn live_counts(
        &mut self,
        _manifest: &Manifest,
    ) -> Result<Vec<RestoredCounts>, SourceFailure> {
        Err("--against does not apply to Kubernetes backups; verify --identity counts the objects of every part, and a restore compares them after applying".into())
    }

    fn first_parts<'m>(&self, manifest: &'m Manifest) -> Result<Vec<&'m Part>, SourceFailure> {
        let parts = ordered(manifest);
        if parts.is_empty() {
            return Err(format!("backup {} holds no objects", manifest.backup_ref()).into());
        }
        Ok(parts)
    }

    async fn plan<'m>(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        first: &VerifiedParts<'m>,
    ) -> Result<RestorePlan<'m>, SourceFailure> {
        let objects: u64 = first
            .all()
            .iter()
            .flat_map(|v| &v.part().tables)
            .map(|t| t.rows)
            .sum();
        let KubernetesSink {
            destination,
            common,
            namespace_map,
            client,
        } = *self;
        let mut planned = KubernetesPlanned {
            destination,
            common,
            client: client.clone(),
            objects: Vec::new(),
        };
        let Some(client) = client else {
            return Ok(RestorePlan {
                lines: vec![format!(
                    "plan: write {objects} object(s) of {} kind(s) to stdout in apply order: pipe into kubectl apply --server-side -f -",
                    first.all().len()
                )],
                confirm: None,
                more_parts: Vec::new(),
                restore: Box::new(planned),
            });
        };
        // `first` is in apply order: it is `first_parts`, verified.
        let mut discovered: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
        let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut finalizers = 0;
        for &v in first.all() {
            let (backup, part) = (v.manifest().backup_ref().to_string(), v.part().clone());
            let (plain, bar) = ctx.open(v).await?;
            let yaml = tokio::task::spawn_blocking(move || {
                let mut yaml = Vec::new();
                stream_withheld(plain, &backup, &part, |d, _| -> Result<(), SourceFailure> {
                    yaml.extend_from_slice(d);
                    Ok(())
                })
                .map(|()| yaml)
            })
            .await
            .expect("decode thread panicked")?;
            bar.finish();
            // Parsed first: the YAML parser may not be held across an await.
            let docs: Vec<Value> = {
                use serde::Deserialize;
                let mut docs = Vec::new();
                for doc in serde_yaml::Deserializer::from_slice(&yaml) {
                    let value = serde_yaml::Value::deserialize(doc)?;
                    if !value.is_null() {
                        docs.push(serde_json::to_value(value)?);
                    }
                }
                docs
            };
            for mut object in docs {
                if prepare(&mut object, &namespace_map) {
                    finalizers += 1;
                }
                let api_version = object["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let kind = object["kind"].as_str().unwrap_or_default().to_string();
                if !discovered.contains_key(&api_version) {
                    let kinds = discover_group(&client, &api_version)
                        .await
                        .map_err(|e| api_error(e, &format!("discovering {api_version}")))?;
                    discovered.insert(api_version.clone(), kinds);
                }
                let resource = discovered[&api_version].iter().find(|r| r.kind == kind).ok_or_else(|| {
                    format!("the cluster does not serve {kind} ({api_version}): restore its CRD first (it is in the backup if --kinds took customresourcedefinitions)")
                })?;
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let namespace = object["metadata"]["namespace"].as_str();
                let path = resource.object_path(namespace, &name);
                let collection = resource.collection_path(namespace);
                if !listed.contains_key(&collection) {
                    // A namespace that does not exist yet has no objects: a 404 is empty.
                    let names = match list_names(&client, &collection).await {
                        Ok(names) => names,
                        Err(kube::Error::Api(s)) if s.code == 404 => BTreeSet::new(),
                        Err(e) => return Err(api_error(e, &format!("listing {collection}"))),
                    };
                    listed.insert(collection.clone(), names);
                }
                let exists = listed[&collection].contains(&name);
                planned.objects.push(Apply {
                    part: v.part().name.clone(),
                    object,
                    path,
                    collection,
                    name,
                    exists,
                });
            }
        }
        let existing = planned.objects.iter().filter(|p| p.exists).count();
        let mut lines = vec![format!(
            "plan: apply {} object(s) with server-side apply (field manager {FIELD_MANAGER}): {} new, {existing} existing {}",
            planned.objects.len(),
            planned.objects.len() - existing,
            if planned.common.clean { "REPLACED (--clean)" } else { "skipped (--clean replaces them)" }
        )];
        if finalizers > 0 {
            lines.push(format!("note: {finalizers} Argo CD Application(s) are restored without {ARGO_FINALIZER}, so deleting one never deletes live resources; add it back once the cluster is trusted"));
        }
        let confirm = (planned.common.clean && existing > 0).then(|| Confirm {
            what: format!("this restore replaces {existing} existing object(s)"),
            prompt: format!("This replaces {existing} object(s) that exist in the cluster."),
            word: "replace".into(),
        });
        Ok(RestorePlan {
            lines,
            confirm,
            more_parts: Vec::new(),
            restore: Box::new(planned),
        })
    }
}

#[async_trait]
impl Planned for KubernetesPlanned {
    async fn restore(
        self: Box<Self>,
        ctx: RestoreCtx<'_>,
        parts: &VerifiedParts<'_>,
    ) -> Result<RestoredCounts, SourceFailure> {
        let manifest = parts.manifest();
        let Some(client) = self.client.clone() else {
            // In apply order: `parts` is `first_parts`, checked.
            for v in parts.all() {
                let (backup, part) = (v.manifest().backup_ref().to_string(), v.part().clone());
                let (plain, bar) = ctx.open(*v).await?;
                tokio::task::spawn_blocking(move || {
                    let stdout = std::io::stdout();
                    stream_withheld(plain, &backup, &part, |data, _| {
                        stdout.lock().write_all(data).map_err(|e| -> SourceFailure {
                            format!("writing the objects to stdout failed ({e}): the restore is incomplete").into()
                        })
                    })
                })
                .await
                .expect("restore thread panicked")?;
                bar.finish();
            }
            ctx.say(&format!(
                "wrote the objects of {} to stdout",
                manifest.backup_ref()
            ));
            return Ok(RestoredCounts {
                heading: manifest.backup_ref().to_string(),
                against: "stdout".into(),
                rows: Vec::new(),
            });
        };
        let skipped = self
            .objects
            .iter()
            .filter(|p| p.exists && !self.common.clean)
            .count();
        let mut applied = 0usize;
        // Kind after kind in apply order; the objects of one kind side by side (nothing
        // orders them among themselves), at most APPLIES_IN_FLIGHT requests at a time.
        for kind in self.objects.chunk_by(|a, b| a.part == b.part) {
            let mut todo = Vec::new();
            for p in kind {
                if !p.exists || self.common.clean {
                    todo.push((p.path.clone(), serde_json::to_vec(&p.object)?));
                }
            }
            applied += todo.len();
            futures::stream::iter(
                todo.into_iter()
                    .map(|(path, body)| apply(client.clone(), path, body)),
            )
            .buffer_unordered(APPLIES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        }
        ctx.say(&format!(
            "applied {applied} object(s); {skipped} existing left as they were{}",
            if skipped > 0 {
                " (--clean replaces them)"
            } else {
                ""
            }
        ));
        // Count what is there now, per kind, against the manifest: each collection listed
        // once more.
        let mut now: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for p in &self.objects {
            if !now.contains_key(p.collection.as_str()) {
                let names = list_names(&client, &p.collection)
                    .await
                    .map_err(|e| api_error(e, &format!("listing {}", p.collection)))?;
                now.insert(p.collection.as_str(), names);
            }
        }
        let mut present: BTreeMap<&str, u64> = BTreeMap::new();
        for p in &self.objects {
            *present.entry(p.part.as_str()).or_default() +=
                u64::from(now[p.collection.as_str()].contains(&p.name));
        }
        let mut backed_up = Vec::new();
        let mut live = Vec::new();
        for part in ordered(manifest) {
            for t in &part.tables {
                backed_up.push(t.clone());
                live.push(TableCount {
                    rows: present.get(part.name.as_str()).copied().unwrap_or(0),
                    ..t.clone()
                });
            }
        }
        let against = match &self.destination {
            Destination::Cluster(Some(c)) => format!("cluster {c}"),
            _ => "the current cluster".into(),
        };
        Ok(RestoredCounts {
            heading: manifest.backup_ref().to_string(),
            against,
            rows: verify::compare_counts(&backed_up, &live, self.common.max_diff),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces_are_renamed_and_the_argo_finalizer_dropped() {
        let map = BTreeMap::from([("shop".to_string(), "shop2".to_string())]);
        let mut ns = json!({"kind": "Namespace", "metadata": {"name": "shop"}});
        assert!(!prepare(&mut ns, &map));
        assert_eq!(ns["metadata"]["name"], "shop2");
        let mut app = json!({"kind": "Application", "metadata": {"name": "a", "namespace": "shop",
            "finalizers": [ARGO_FINALIZER, "other"]}});
        assert!(prepare(&mut app, &map));
        assert_eq!(app["metadata"]["finalizers"], json!(["other"]));
        assert_eq!(app["metadata"]["namespace"], "shop2");
    }
}
