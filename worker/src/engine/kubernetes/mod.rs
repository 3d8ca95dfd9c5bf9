//! `kubernetes`: the cluster's own objects (Namespaces, ConfigMaps, Secrets, workloads,
//! CRDs, Argo CD Applications…), so the cluster can be put back before its data.
//!
//! - [`source`]: `worker backup kubernetes --target T`: the API's discovery (a group that
//!   fails it is skipped with a warning), then one part per kind, a YAML stream of its
//!   objects listed page by page and stripped of what belongs to the old cluster ([`strip`]),
//!   with their number per kind in the manifest. Service-account token Secrets are left
//!   out; Secrets are only ever in the encrypted parts.
//! - [`sink`]: `kubectl dr restore ID --engine kubernetes --to cluster`: server-side apply
//!   in dependency order (CRDs, Namespaces, ServiceAccounts, Secrets, ConfigMaps, PVCs,
//!   Services, workloads, the rest; Argo CD AppProjects before Applications), existing
//!   objects skipped unless `--clean`, `--namespace-map`, Argo CD's cascading finalizer
//!   dropped, counts per kind compared afterwards; `--to -` writes the YAML to stdout.

pub mod sink;
pub mod source;

use serde_json::Value;

/// Kinds backed up by default, as `plural[.group]`: those present in the cluster are taken,
/// the Argo CD ones only where their CRDs exist.
pub const DEFAULT_KINDS: &[&str] = &[
    "namespaces",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "services",
    "deployments.apps",
    "statefulsets.apps",
    "cronjobs.batch",
    "persistentvolumeclaims",
    "ingresses.networking.k8s.io",
    "customresourcedefinitions.apiextensions.k8s.io",
    "applications.argoproj.io",
    "appprojects.argoproj.io",
    "applicationsets.argoproj.io",
];

/// One kind as discovery found it.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `plural[.group]`, the part's name.
    pub name: String,
    /// The API group (empty for the core API).
    pub group: String,
    /// The plural resource name, e.g. `deployments`.
    pub plural: String,
    /// e.g. `apps/v1` or `v1`.
    pub group_version: String,
    /// e.g. `Deployment`.
    pub kind: String,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

impl Resource {
    /// The API path of its group version: `/api/v1` or `/apis/<group>/<version>`.
    pub fn base(&self) -> String {
        api_base(&self.group_version)
    }

    /// The API path of one object.
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}/{name}", self.base(), self.plural)
            }
            _ => format!("{}/{}/{name}", self.base(), self.plural),
        }
    }

    /// The path its objects are listed at: in `namespace` when it is namespaced.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{}/namespaces/{ns}/{}", self.base(), self.plural)
            }
            _ => format!("{}/{}", self.base(), self.plural),
        }
    }
}

/// `/api/v1` for the core group version, `/apis/<gv>` for the others.
pub fn api_base(group_version: &str) -> String {
    if group_version.contains('/') {
        format!("/apis/{group_version}")
    } else {
        format!("/api/{group_version}")
    }
}

/// A GET through the kube client (auth, TLS, timeouts), as JSON.
///
/// # Errors
/// kube's error, for the caller to explain with its context.
pub async fn api_get(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    client.request::<Value>(request).await
}

/// The kinds of one group version (`v1` or `apps/v1`), subresources left out.
///
/// # Errors
/// kube's error.
pub async fn discover_group(
    client: &kube::Client,
    group_version: &str,
) -> Result<Vec<Resource>, kube::Error> {
    let group = group_version.split_once('/').map_or("", |(g, _)| g);
    let list = api_get(client, &api_base(group_version)).await?;
    Ok(list["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let plural = r["name"].as_str()?;
            // Subresources (deployments/scale) are not objects of their own.
            (!plural.contains('/')).then(|| Resource {
                name: if group.is_empty() {
                    plural.to_string()
                } else {
                    format!("{plural}.{group}")
                },
                group: group.to_string(),
                plural: plural.to_string(),
                group_version: group_version.to_string(),
                kind: r["kind"].as_str().unwrap_or_default().to_string(),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
            })
        })
        .collect())
}

/// Metadata fields that belong to the old cluster's copy of an object.
const STRIPPED_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "ownerReferences",
];

/// Removes what a new cluster must assign itself: server-set metadata, `status`, owner
/// references (as Velero does: owners are re-created and re-adopt), the last-applied
/// annotation, a Service's cluster IPs and a PVC's bound volume.
pub fn strip(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in STRIPPED_METADATA {
            meta.remove(*field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            annotations.retain(|k, _| !k.starts_with("pv.kubernetes.io/"));
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        match kind.as_str() {
            // Headless Services keep `None`; any other IP is the old cluster's.
            "Service" if spec.get("clusterIP").and_then(Value::as_str) != Some("None") => {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            "PersistentVolumeClaim" => {
                spec.remove("volumeName");
            }
            _ => {}
        }
    }
}

/// Whether an object is left out of the backup: service-account token Secrets belong to
/// the old cluster's token controller.
pub fn left_out(object: &Value) -> bool {
    object["kind"] == "Secret" && object["type"] == "kubernetes.io/service-account-token"
}

/// Where a kind comes in an apply: what others need first.
pub fn apply_rank(resource: &str) -> u8 {
    match resource {
        "customresourcedefinitions.apiextensions.k8s.io" => 0,
        "namespaces" => 1,
        "serviceaccounts" => 2,
        "secrets" => 3,
        "configmaps" => 4,
        "persistentvolumeclaims" => 5,
        "services" => 6,
        "deployments.apps" | "statefulsets.apps" | "daemonsets.apps" | "cronjobs.batch"
        | "jobs.batch" => 7,
        "appprojects.argoproj.io" => 9,
        "applications.argoproj.io" | "applicationsets.argoproj.io" => 10,
        _ => 8,
    }
}

/// `verify --identity` on a part: a YAML stream whose documents are as many objects as
/// the manifest recorded.
///
/// # Errors
/// YAML that does not parse, or another number of objects.
pub fn check_yaml(
    r: &mut dyn std::io::Read,
    _facts: &crate::catalog::Facts,
    recorded: &[crate::catalog::TableCount],
) -> Result<(), String> {
    use serde::Deserialize;
    let mut found = 0u64;
    for doc in serde_yaml::Deserializer::from_reader(std::io::BufReader::new(r)) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null() {
            // An empty part (a kind without objects) reads as one empty document.
            continue;
        }
        if value.get("kind").is_none() {
            return Err("a document without a kind".into());
        }
        found += 1;
    }
    let expected: u64 = recorded.iter().map(|t| t.rows).sum();
    if found == expected {
        Ok(())
    } else {
        Err(format!(
            "the part holds {found} object(s), the manifest recorded {expected}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_what_the_old_cluster_assigned() {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "9",
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{}],
                "ownerReferences": [{"kind": "X"}], "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}
        });
        strip(&mut svc);
        assert_eq!(
            svc,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                   "spec": {"ports": [{"port": 80}]}})
        );
        let mut headless =
            json!({"kind": "Service", "metadata": {}, "spec": {"clusterIP": "None"}});
        strip(&mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let token = json!({"kind": "Secret", "type": "kubernetes.io/service-account-token"});
        assert!(left_out(&token));
        assert!(!left_out(&json!({"kind": "Secret", "type": "Opaque"})));
    }

    #[test]
    fn crds_namespaces_and_projects_come_first() {
        let mut kinds = DEFAULT_KINDS.to_vec();
        kinds.sort_by_key(|k| apply_rank(k));
        assert_eq!(kinds[0], "customresourcedefinitions.apiextensions.k8s.io");
        assert_eq!(kinds[1], "namespaces");
        let project = kinds
            .iter()
            .position(|k| *k == "appprojects.argoproj.io")
            .unwrap();
        let app = kinds
            .iter()
            .position(|k| *k == "applications.argoproj.io")
            .unwrap();
        assert!(project < app);
    }
}
