//! The Kubernetes engine against a scripted API server (no real one can run here): the
//! exact discovery and list requests (pagination included), a group whose discovery fails
//! skipped with a warning, what is stripped and left out, counts per kind, the YAML coming
//! back in apply order, and a forbidden kind named with the ClusterRole rule it needs.

use std::sync::{Arc, Mutex};

use dr_tests::*;
use serde_json::{json, Value};

type Seen = Arc<Mutex<Vec<String>>>;

fn resources(list: &[(&str, &str, bool)]) -> Value {
    json!({"kind": "APIResourceList", "resources": list.iter().map(|(name, kind, namespaced)| {
        json!({"name": name, "kind": kind, "namespaced": namespaced, "verbs": ["get", "list"]})
    }).collect::<Vec<_>>()})
}

fn object(name: &str, namespace: Option<&str>, extra: Value) -> Value {
    let mut o = json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "42",
            "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"kind": "Thing", "name": "owner"}], "labels": {"app": name}},
        "status": {"phase": "Active"}
    });
    if let Some(ns) = namespace {
        o["metadata"]["namespace"] = json!(ns);
    }
    if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            o.insert(k.clone(), v.clone());
        }
    }
    o
}

fn list(items: Vec<Value>, next: &str) -> Value {
    json!({"kind": "List", "metadata": {"continue": next}, "items": items})
}

/// A cluster: two namespaces, two Secrets (one a service-account token) over two pages, a
/// ConfigMap, a Service, a Deployment; Argo CD's group fails discovery.
async fn fake_cluster(forbid_secrets: bool) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let url = fake_http(move |method, path, _body| {
        log.lock().unwrap().push(format!("{method} {path}"));
        let ok = |v: Value| (200, serde_json::to_vec(&v).unwrap());
        let empty = || ok(list(vec![], ""));
        match path {
            "/version" => ok(json!({"gitVersion": "v1.33.1"})),
            "/api/v1" => ok(resources(&[
                ("namespaces", "Namespace", false),
                ("configmaps", "ConfigMap", true),
                ("secrets", "Secret", true),
                ("serviceaccounts", "ServiceAccount", true),
                ("services", "Service", true),
                ("persistentvolumeclaims", "PersistentVolumeClaim", true),
                ("pods/log", "Pod", true),
            ])),
            "/apis" => ok(json!({"kind": "APIGroupList", "groups": [
                {"name": "apps", "preferredVersion": {"groupVersion": "apps/v1"}},
                {"name": "batch", "preferredVersion": {"groupVersion": "batch/v1"}},
                {"name": "networking.k8s.io", "preferredVersion": {"groupVersion": "networking.k8s.io/v1"}},
                {"name": "apiextensions.k8s.io", "preferredVersion": {"groupVersion": "apiextensions.k8s.io/v1"}},
                {"name": "metrics.k8s.io", "preferredVersion": {"groupVersion": "metrics.k8s.io/v1beta1"}},
                {"name": "argoproj.io", "preferredVersion": {"groupVersion": "argoproj.io/v1alpha1"}}
            ]})),
            "/apis/apps/v1" => ok(resources(&[("deployments", "Deployment", true), ("statefulsets", "StatefulSet", true), ("deployments/scale", "Scale", true)])),
            "/apis/batch/v1" => ok(resources(&[("cronjobs", "CronJob", true), ("jobs", "Job", true)])),
            "/apis/networking.k8s.io/v1" => ok(resources(&[("ingresses", "Ingress", true)])),
            "/apis/apiextensions.k8s.io/v1" => ok(resources(&[("customresourcedefinitions", "CustomResourceDefinition", false)])),
            "/apis/argoproj.io/v1alpha1" => (503, br#"{"kind":"Status","code":503,"message":"service unavailable"}"#.to_vec()),
            "/api/v1/namespaces?limit=500" => ok(list(vec![object("shop", None, json!({})), object("kube-dr", None, json!({}))], "")),
            "/api/v1/secrets?limit=500" if forbid_secrets => (403, br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"secrets is forbidden: User \"system:serviceaccount:kube-dr:kube-dr-kubernetes\" cannot list resource \"secrets\""}"#.to_vec()),
            "/api/v1/secrets?limit=500" => ok(list(
                vec![object("default-token-x", Some("shop"), json!({"type": "kubernetes.io/service-account-token", "data": {"token": "c2VjcmV0"}}))],
                "page-2",
            )),
            "/api/v1/secrets?limit=500&continue=page-2" => ok(list(
                vec![object("db-credentials", Some("shop"), json!({"type": "Opaque", "data": {"password": "czNjcjN0LVZhbHVl"}}))],
                "",
            )),
            "/api/v1/configmaps?limit=500" => ok(list(vec![object("settings", Some("shop"), json!({"data": {"mode": "prod"}}))], "")),
            "/api/v1/services?limit=500" => ok(list(vec![object("web", Some("shop"), json!({"spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7"], "ports": [{"port": 80}]}}))], "")),
            "/apis/apps/v1/deployments?limit=500" => ok(list(vec![object("web", Some("shop"), json!({"spec": {"replicas": 2}}))], "")),
            p if p.ends_with("?limit=500") => empty(),
            _ => (404, br#"{"kind":"Status","code":404,"message":"not found"}"#.to_vec()),
        }
    })
    .await;
    (url, seen)
}

fn kubeconfig(url: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: u\n  user:\n    token: test-token\ncontexts:\n- name: c\n  context:\n    cluster: fake\n    user: u\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    file
}

fn backup(
    config: &tempfile::NamedTempFile,
    store: &TestStore,
    keys: &Keys,
) -> std::process::Output {
    run(
        "worker",
        &[
            "backup",
            "kubernetes",
            "--target",
            "cluster",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[("KUBECONFIG", config.path().to_str().unwrap())],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_are_discovered_listed_stripped_and_come_back_in_apply_order() {
    let (url, seen) = fake_cluster(false).await;
    let config = kubeconfig(&url);
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&config, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("API group skipped") && stderr(&out).contains("argoproj.io"),
        "{}",
        stderr(&out)
    );

    let requests = seen.lock().unwrap().clone();
    let discovery: Vec<&String> = requests.iter().filter(|r| !r.contains('?')).collect();
    assert_eq!(
        discovery,
        [
            "GET /version",
            "GET /api/v1",
            "GET /apis",
            "GET /apis/apps/v1",
            "GET /apis/batch/v1",
            "GET /apis/networking.k8s.io/v1",
            "GET /apis/apiextensions.k8s.io/v1",
            "GET /apis/argoproj.io/v1alpha1",
        ],
        "metrics.k8s.io is never asked: no wanted kind is in it"
    );
    assert!(
        requests.contains(&"GET /api/v1/secrets?limit=500&continue=page-2".to_string()),
        "{requests:?}"
    );
    assert!(requests.iter().all(|r| !r.contains("pods")), "{requests:?}");

    // Counts per kind; the token Secret is not counted (nor stored).
    let list = list_json(&store);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let manifest_text = std::fs::read_to_string(
        store.object_path(&format!("kubernetes/cluster/{id}/manifest.json")),
    )
    .unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    let count = |part: &str| -> u64 {
        manifest["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == part)
            .map(|p| p["tables"][0]["rows"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no part {part}: {manifest}"))
    };
    assert_eq!(count("secrets"), 1);
    assert_eq!(count("namespaces"), 2);
    assert_eq!(count("deployments.apps"), 1);
    assert_eq!(manifest["server_version"], "v1.33.1");
    assert!(
        !manifest_text.contains("czNjcjN0LVZhbHVl"),
        "secret data in plaintext"
    );

    let identity = keys.identity.to_str().unwrap();
    let out = run(
        "kubectl-dr",
        &["verify", "latest", "-i", identity, "--store", store.url()],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "-i",
            identity,
            "--store",
            store.url(),
            "--to",
            "-",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let yaml = stdout(&out);
    use serde::Deserialize;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "Namespace",
            "Secret",
            "ConfigMap",
            "Service",
            "Deployment"
        ]
    );
    for d in &docs {
        let meta = d["metadata"].as_object().unwrap();
        for gone in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
        ] {
            assert!(!meta.contains_key(gone), "{gone} in {d}");
        }
        assert!(d.get("status").is_none(), "{d}");
        assert!(d["apiVersion"].is_string(), "{d}");
    }
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert!(service["spec"].get("clusterIP").is_none(), "{service}");
    assert_eq!(docs[2]["data"]["password"], "czNjcjN0LVZhbHVl");
    assert_eq!(docs[2]["metadata"]["name"], "db-credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_kind_names_the_rule_it_needs_and_commits_nothing() {
    let (url, _) = fake_cluster(true).await;
    let config = kubeconfig(&url);
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&config, &store, &keys);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("listing secrets: forbidden"), "{err}");
    assert!(
        err.contains(r#"resources: ["secrets"], verbs: ["get", "list"]"#),
        "{err}"
    );
    assert!(store.files().iter().all(|f| !f.ends_with("manifest.json")));
}
