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

/// The API's discovery documents (Argo CD's group fails unless `argo`).
fn discovery(path: &str, argo: bool) -> Option<(u16, Vec<u8>)> {
    let ok = |v: Value| Some((200, serde_json::to_vec(&v).unwrap()));
    match path {
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
        "/apis/apps/v1" => ok(resources(&[
            ("deployments", "Deployment", true),
            ("statefulsets", "StatefulSet", true),
            ("deployments/scale", "Scale", true),
        ])),
        "/apis/batch/v1" => ok(resources(&[
            ("cronjobs", "CronJob", true),
            ("jobs", "Job", true),
        ])),
        "/apis/networking.k8s.io/v1" => ok(resources(&[("ingresses", "Ingress", true)])),
        "/apis/apiextensions.k8s.io/v1" => ok(resources(&[(
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )])),
        "/apis/argoproj.io/v1alpha1" if argo => ok(resources(&[
            ("applications", "Application", true),
            ("appprojects", "AppProject", true),
            ("applicationsets", "ApplicationSet", true),
        ])),
        "/apis/argoproj.io/v1alpha1" => Some((
            503,
            br#"{"kind":"Status","code":503,"message":"service unavailable"}"#.to_vec(),
        )),
        _ => None,
    }
}

/// A cluster: two namespaces, two Secrets (one a service-account token) over two pages, a
/// ConfigMap, a Service, a Deployment; Argo CD's group fails discovery.
async fn fake_cluster(forbid_secrets: bool, argo: bool) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let url = fake_http(move |method, path, _body| {
        log.lock().unwrap().push(format!("{method} {path}"));
        let ok = |v: Value| (200, serde_json::to_vec(&v).unwrap());
        let empty = || ok(list(vec![], ""));
        match path {
            "/version" => ok(json!({"gitVersion": "v1.33.1"})),
            p if discovery(p, argo).is_some() => discovery(p, argo).unwrap(),
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
            "/apis/argoproj.io/v1alpha1/applications?limit=500" => ok(list(vec![object("shop-app", Some("argocd"), json!({"apiVersion": "x", "spec": {"project": "shop"}}))].into_iter().map(|mut a| { a["metadata"]["finalizers"] = json!(["resources-finalizer.argocd.argoproj.io"]); a }).collect(), "")),
            "/apis/argoproj.io/v1alpha1/appprojects?limit=500" => ok(list(vec![object("shop", Some("argocd"), json!({"spec": {}}))], "")),
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
    let (url, seen) = fake_cluster(false, false).await;
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
    let (url, _) = fake_cluster(true, false).await;
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

type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// Every object the source cluster's backup holds, at its path in the target.
const ALL_OBJECTS: [&str; 8] = [
    "/api/v1/namespaces/shop",
    "/api/v1/namespaces/kube-dr",
    "/api/v1/namespaces/shop/secrets/db-credentials",
    "/api/v1/namespaces/shop/configmaps/settings",
    "/api/v1/namespaces/shop/services/web",
    "/apis/apps/v1/namespaces/shop/deployments/web",
    "/apis/argoproj.io/v1alpha1/namespaces/argocd/appprojects/shop",
    "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/shop-app",
];

/// A new cluster to restore into: discovery as above, the objects at `existing` paths
/// present, every PATCH recorded and then present. A collection is listed (`?limit=`) in
/// pages of `page` objects (1 exercises paging); a GET of one object is answered too, but a
/// restore should never need one.
async fn target_cluster(existing: &[&str], page: usize) -> (String, Calls) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let present: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(existing.iter().map(|s| s.to_string()).collect()));
    let url = fake_http(move |method, path, body| {
        log.lock().unwrap().push((method.to_string(), path.to_string(), body.to_string()));
        if let Some(reply) = discovery(path, true) {
            return reply;
        }
        if path == "/version" {
            return (200, br#"{"gitVersion":"v1.34.0"}"#.to_vec());
        }
        let (object, query) = path.split_once('?').unwrap_or((path, ""));
        if method == "GET" && query.starts_with("limit=") {
            // The objects directly in this collection, one a page: `continue` is the index.
            let start: usize = query
                .split("continue=")
                .nth(1)
                .map_or(0, |c| c.parse().unwrap());
            let mut names: Vec<String> = present
                .lock()
                .unwrap()
                .iter()
                .filter_map(|p| p.strip_prefix(&format!("{object}/")))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_string)
                .collect();
            names.sort();
            let items: Vec<Value> = names.iter().skip(start).take(page).map(|n| object_named(n)).collect();
            let next = if start + page < names.len() { (start + page).to_string() } else { String::new() };
            return (200, serde_json::to_vec(&list(items, &next)).unwrap());
        }
        match method {
            "PATCH" => {
                present.lock().unwrap().push(object.to_string());
                (200, body.as_bytes().to_vec())
            }
            _ if present.lock().unwrap().iter().any(|p| p == object) => (200, br#"{"kind":"X"}"#.to_vec()),
            _ => (404, br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#.to_vec()),
        }
    })
    .await;
    (url, calls)
}

fn object_named(name: &str) -> Value {
    json!({"metadata": {"name": name}})
}

/// GETs of single objects (neither discovery, nor /version, nor a list).
fn object_gets(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| {
            m == "GET" && !p.contains("?limit=") && p != "/version" && discovery(p, true).is_none()
        })
        .map(|(_, p, _)| p.clone())
        .collect()
}

fn patches(calls: &Calls) -> Vec<(String, Value)> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == "PATCH")
        .map(|(_, p, b)| (p.clone(), serde_json::from_str(b).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_applies_in_order_skips_what_exists_and_drops_the_argo_finalizer() {
    let (source, _) = fake_cluster(false, true).await;
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&kubeconfig(&source), &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let identity = keys.identity.to_str().unwrap();
    let restore = |config: &tempfile::NamedTempFile, extra: &[&str]| {
        let mut args = vec![
            "restore",
            "latest",
            "-i",
            identity,
            "--store",
            store.url(),
            "--to",
            "cluster",
        ];
        args.extend_from_slice(extra);
        run(
            "kubectl-dr",
            &args,
            &[("KUBECONFIG", config.path().to_str().unwrap())],
        )
    };

    // A new cluster that already has namespace kube-dr; shop is renamed to shop2.
    let (url, calls) = target_cluster(&["/api/v1/namespaces/kube-dr"], 1).await;
    let config = kubeconfig(&url);
    let out = restore(&config, &["--namespace-map", "shop=shop2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("1 existing skipped") && said.contains("without resources-finalizer"),
        "{said}"
    );
    let applied = patches(&calls);
    let paths: Vec<&str> = applied
        .iter()
        .map(|(p, _)| p.split('?').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/shop2",
            "/api/v1/namespaces/shop2/secrets/db-credentials",
            "/api/v1/namespaces/shop2/configmaps/settings",
            "/api/v1/namespaces/shop2/services/web",
            "/apis/apps/v1/namespaces/shop2/deployments/web",
            "/apis/argoproj.io/v1alpha1/namespaces/argocd/appprojects/shop",
            "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/shop-app",
        ]
    );
    for (path, body) in &applied {
        assert!(path.ends_with("?fieldManager=kube-dr&force=true"), "{path}");
        assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
    }
    let app = &applied.last().unwrap().1;
    assert_eq!(app["metadata"]["finalizers"], json!([]), "{app}");
    assert_eq!(applied[1].1["data"]["password"], "czNjcjN0LVZhbHVl");
    // Counts per kind after the apply: everything is there.
    assert!(
        stdout(&out).contains("core.secrets") && !stdout(&out).contains("MISSING"),
        "{}",
        stdout(&out)
    );
    // Existence and counts came from lists, never from a GET per object.
    assert!(object_gets(&calls).is_empty(), "{:?}", object_gets(&calls));

    // Again into a cluster that has it all: nothing applied, nothing changed.
    let (url, calls) = target_cluster(&ALL_OBJECTS, 1).await;
    let config = kubeconfig(&url);
    let out = restore(&config, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(patches(&calls).is_empty(), "{:?}", patches(&calls));
    // --clean replaces them (after a confirmation, here --yes).
    let out = restore(&config, &["--clean", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(patches(&calls).len(), 8, "{:?}", patches(&calls));

    // --dry-run: the plan, no write.
    let (url, calls) = target_cluster(&[], 1).await;
    let out = restore(&kubeconfig(&url), &["--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("8 new"), "{}", stderr(&out));
    assert!(patches(&calls).is_empty());
}

/// The benchmark of issue 31 (`scripts/bench-kubernetes.sh` runs it; ignored in the suite):
/// 10,000 ConfigMaps backed up from a scripted API server and restored into another, with
/// the time of each and the requests per object. What it checks is the request pattern, not
/// time: lists in pages of 500, one apply per object, no GET of a single object.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/bench-kubernetes.sh"]
async fn ten_thousand_objects_in_pages_benchmark() {
    const N: usize = 10_000;
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let source = fake_http(move |method, path, _body| {
        log.lock().unwrap().push(format!("{method} {path}"));
        let ok = |v: Value| (200, serde_json::to_vec(&v).unwrap());
        match path {
            "/version" => ok(json!({"gitVersion": "v1.33.1"})),
            p if discovery(p, false).is_some() => discovery(p, false).unwrap(),
            "/api/v1/namespaces?limit=500" => ok(list(vec![object("bench", None, json!({}))], "")),
            p if p.starts_with("/api/v1/configmaps?limit=500") => {
                let start: usize = p
                    .split("continue=")
                    .nth(1)
                    .map_or(0, |c| c.parse().unwrap());
                let items = (start..(start + 500).min(N))
                    .map(|i| {
                        object(
                            &format!("cm-{i:05}"),
                            Some("bench"),
                            json!({"data": {"k": format!("value {i}")}}),
                        )
                    })
                    .collect();
                let next = if start + 500 < N {
                    (start + 500).to_string()
                } else {
                    String::new()
                };
                ok(list(items, &next))
            }
            p if p.contains("?limit=500") => ok(list(vec![], "")),
            _ => (
                404,
                br#"{"kind":"Status","code":404,"message":"not found"}"#.to_vec(),
            ),
        }
    })
    .await;
    let (store, keys) = (TestStore::local(), Keys::generate());
    let started = std::time::Instant::now();
    let out = backup(&kubeconfig(&source), &store, &keys);
    let backup_secs = started.elapsed().as_secs_f64();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let backup_requests = seen.lock().unwrap().len();

    let (target, calls) = target_cluster(&[], 500).await;
    let started = std::time::Instant::now();
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "-i",
            keys.identity.to_str().unwrap(),
            "--store",
            store.url(),
            "--to",
            "cluster",
            "--no-progress",
        ],
        &[("KUBECONFIG", kubeconfig(&target).path().to_str().unwrap())],
    );
    let restore_secs = started.elapsed().as_secs_f64();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let objects = N + 1; // the ConfigMaps and their namespace
    let restore_calls = calls.lock().unwrap().clone();
    let patches = restore_calls
        .iter()
        .filter(|(m, _, _)| m == "PATCH")
        .count();
    let lists = restore_calls
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("?limit="))
        .count();
    assert_eq!(patches, objects);
    assert!(
        object_gets(&calls).is_empty(),
        "a GET per object: {:?}",
        &object_gets(&calls)[..3]
    );
    println!("\nKubernetes objects, {objects} (10,000 ConfigMaps and their namespace), scripted API servers on loopback");
    println!(
        "{:10} {:>8} {:>10} {:>14}",
        "", "wall s", "requests", "per object"
    );
    println!(
        "{:10} {:>8.1} {:>10} {:>14.3}",
        "backup",
        backup_secs,
        backup_requests,
        backup_requests as f64 / objects as f64
    );
    println!(
        "{:10} {:>8.1} {:>10} {:>14.3}   ({patches} applies, {lists} list pages)",
        "restore",
        restore_secs,
        restore_calls.len(),
        restore_calls.len() as f64 / objects as f64
    );
}
