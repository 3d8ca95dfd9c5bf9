//! Our own rules on the rendered Kubernetes objects of every kustomize overlay (the schemas
//! are checked by `scripts/validate-manifests.sh`): pods run non-root with a read-only root,
//! no privilege escalation and no capabilities, resources set; CronJobs never overlap and
//! are bounded in time; no Secret and no backup pod ever holds an age identity.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// Renders an overlay with `kubectl kustomize`.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is needed to render the overlays (kubectl kustomize)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn overlays() -> Vec<std::path::PathBuf> {
    let dir = dr_tests::repo_root().join("kustomize/overlays");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("kustomize/overlays")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    out.sort();
    assert!(
        out.len() >= 2,
        "expected at least two overlays in {}",
        dir.display()
    );
    out
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn name_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        get(obj, "kind").and_then(Value::as_str).unwrap_or("?"),
        get(obj, "metadata.name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

/// Every rule broken by `obj`, as readable lines.
fn violations(obj: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let name = name_of(obj);
    let kind = get(obj, "kind").and_then(Value::as_str).unwrap_or("");
    let mut fail = |what: &str| bad.push(format!("{name}: {what}"));
    // The drill's CronJob is the one workload that may hold the age identity (it restores),
    // and only from its own Secret.
    let drill = kind == "CronJob"
        && get(obj, "spec.jobTemplate.spec.template.metadata.labels")
            .and_then(|l| l.get("app.kubernetes.io/component"))
            .and_then(Value::as_str)
            == Some("drill");
    // The point-in-time restore Job (manifests/postgres-archive/restore-job.yaml, applied by
    // hand after a rebuild) holds the identity from its own short-lived Secret.
    let restore_job = kind == "Job"
        && get(obj, "spec.template.metadata.labels")
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .and_then(Value::as_str)
            == Some("kube-dr-restore");
    let pod = match kind {
        "CronJob" => {
            if get(obj, "spec.concurrencyPolicy").and_then(Value::as_str) != Some("Forbid") {
                fail("concurrencyPolicy must be Forbid (two backups of one target must never overlap)");
            }
            for field in [
                "spec.startingDeadlineSeconds",
                "spec.successfulJobsHistoryLimit",
                "spec.failedJobsHistoryLimit",
                "spec.jobTemplate.spec.activeDeadlineSeconds",
                "spec.jobTemplate.spec.backoffLimit",
            ] {
                if get(obj, field).and_then(Value::as_u64).is_none() {
                    fail(&format!("{field} must be set"));
                }
            }
            get(obj, "spec.jobTemplate.spec.template.spec")
        }
        "Job" | "Deployment" | "StatefulSet" | "DaemonSet" => get(obj, "spec.template.spec"),
        "Pod" => get(obj, "spec"),
        "Secret" => {
            let text = serde_yaml::to_string(obj).unwrap_or_default();
            let decoded: String = get(obj, "data")
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.values()
                        .filter_map(Value::as_str)
                        .filter_map(|b| {
                            use base64::Engine;
                            base64::engine::general_purpose::STANDARD.decode(b).ok()
                        })
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if text.contains("AGE-SECRET-KEY-") || decoded.contains("AGE-SECRET-KEY-") {
                fail("a Secret holds an age identity; identities never enter the cluster");
            }
            None
        }
        _ => None,
    };
    let Some(pod) = pod else {
        return bad;
    };
    if get(pod, "automountServiceAccountToken").and_then(Value::as_bool) != Some(false) {
        fail("automountServiceAccountToken must be false (a job that calls the API gets a projected, short-lived token)");
    }
    if get(pod, "securityContext.runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        fail("pod securityContext.runAsNonRoot must be true");
    }
    if get(pod, "securityContext.seccompProfile.type").and_then(Value::as_str)
        != Some("RuntimeDefault")
    {
        fail("pod seccompProfile must be RuntimeDefault");
    }
    if get(pod, "hostNetwork").and_then(Value::as_bool) == Some(true) {
        fail("hostNetwork is not allowed");
    }
    let volumes =
        serde_yaml::to_string(get(pod, "volumes").unwrap_or(&Value::Null)).unwrap_or_default();
    if volumes.contains("kube-dr-drill-identity") && !drill {
        fail("only the drill's pod may mount the identity Secret kube-dr-drill-identity");
    }
    // The signing key makes backups look genuine: only the pods that write backups (and
    // the WAL archiver, which signs its index entries) hold it.
    let backup = get(pod, "containers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .any(|c| {
            matches!(
                get(c, "args")
                    .and_then(Value::as_sequence)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str),
                Some("backup" | "archive")
            )
        });
    if volumes.contains("secretName: kube-dr-signing") && !backup {
        fail("only backup pods may mount the signing key Secret kube-dr-signing");
    }
    if backup {
        let env = serde_yaml::to_string(get(pod, "containers").unwrap_or(&Value::Null))
            .unwrap_or_default();
        if !(env.contains("DR_SIGNING_KEY_FILE") && volumes.contains("secretName: kube-dr-signing"))
        {
            fail("a backup pod must sign its manifests (DR_SIGNING_KEY_FILE from Secret kube-dr-signing)");
        }
    }
    let containers = get(pod, "containers")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        fail("no containers");
    }
    // A Secret mounted without world read is root's: only fsGroup lets the pod's user in.
    let fs_group = get(pod, "securityContext.fsGroup").and_then(Value::as_u64);
    for v in get(pod, "volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let mode = get(v, "secret.defaultMode").and_then(Value::as_u64);
        if mode.is_some_and(|m| m & 0o004 == 0) && fs_group.is_none() {
            fail(&format!(
                "volume {}: a Secret with defaultMode {:o} is unreadable by the pod's user without securityContext.fsGroup",
                get(v, "name").and_then(Value::as_str).unwrap_or("?"),
                mode.unwrap_or(0)
            ));
        }
    }
    for c in &containers {
        let cname = get(c, "name").and_then(Value::as_str).unwrap_or("?");
        let mut check = |ok: bool, what: &str| {
            if !ok {
                fail(&format!("container {cname}: {what}"));
            }
        };
        let sc = |path: &str| get(c, &format!("securityContext.{path}"));
        check(
            sc("readOnlyRootFilesystem").and_then(Value::as_bool) == Some(true),
            "readOnlyRootFilesystem must be true",
        );
        check(
            sc("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false),
            "allowPrivilegeEscalation must be false",
        );
        check(
            sc("privileged").and_then(Value::as_bool) != Some(true),
            "privileged is not allowed",
        );
        check(
            sc("capabilities.drop")
                .and_then(Value::as_sequence)
                .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL"))),
            "capabilities must drop ALL",
        );
        check(
            sc("capabilities.add")
                .and_then(Value::as_sequence)
                .is_none_or(|a| a.is_empty()),
            "no capabilities may be added",
        );
        check(
            sc("runAsUser").and_then(Value::as_u64) != Some(0),
            "must not run as UID 0",
        );
        for field in ["requests.cpu", "requests.memory", "limits.memory"] {
            check(
                get(c, &format!("resources.{field}")).is_some(),
                &format!("resources.{field} must be set"),
            );
        }
        let env = serde_yaml::to_string(get(c, "env").unwrap_or(&Value::Null)).unwrap_or_default();
        check(
            !env.contains("AGE-SECRET-KEY-"),
            "an age identity must never be written into a manifest",
        );
        check(
            !env.contains("DR_IDENTITY_FILE")
                || (drill && volumes.contains("secretName: kube-dr-drill-identity"))
                || (restore_job && volumes.contains("secretName: kube-dr-restore-identity")),
            "a backup container must not hold an age identity (only the drill's, from Secret kube-dr-drill-identity)",
        );
        // What the variables say must make sense: an overlay that patches env by position
        // once put a target name into DR_SIGNING_KEY_FILE and a URL into DR_TARGET.
        let mounts: Vec<String> = get(c, "volumeMounts")
            .and_then(Value::as_sequence)
            .map(|m| {
                m.iter()
                    .filter_map(|v| get(v, "mountPath").and_then(Value::as_str))
                    .map(|p| format!("{}/", p.trim_end_matches('/')))
                    .collect()
            })
            .unwrap_or_default();
        for e in get(c, "env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = get(e, "name").and_then(Value::as_str).unwrap_or("");
            let Some(value) = get(e, "value").and_then(Value::as_str) else {
                continue;
            };
            if name.ends_with("_FILE") || name.ends_with("_PATH") || name.ends_with("_DIR") {
                check(
                    value.starts_with('/') && mounts.iter().any(|m| value.starts_with(m.as_str())),
                    &format!("{name}={value} must name a file under one of the container's mounts"),
                );
            }
            if name == "DR_TARGET" {
                check(
                    drkit::catalog::validate_name("target", value).is_ok(),
                    &format!("DR_TARGET={value} is not a valid target name"),
                );
            }
            if name.ends_with("_ADDR") || name.ends_with("_URL") {
                check(
                    value.contains("://"),
                    &format!("{name}={value} must be a URL"),
                );
            }
        }
    }
    bad
}

#[test]
fn every_overlay_renders_and_keeps_the_rules() {
    for overlay in overlays() {
        let objects = render(&overlay);
        let bad: Vec<String> = objects.iter().flat_map(violations).collect();
        assert!(bad.is_empty(), "{}:\n{}", overlay.display(), bad.join("\n"));
        let cronjobs: Vec<String> = objects
            .iter()
            .filter(|o| get(o, "kind").and_then(Value::as_str) == Some("CronJob"))
            .map(name_of)
            .collect();
        assert!(
            cronjobs.contains(&"CronJob/kube-dr-postgres".to_string())
                && cronjobs.contains(&"CronJob/kube-dr-prune".to_string()),
            "{}: {cronjobs:?}",
            overlay.display()
        );
        for o in &objects {
            let cluster_scoped = matches!(
                get(o, "kind").and_then(Value::as_str),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
            );
            assert_eq!(
                get(o, "metadata.namespace").and_then(Value::as_str),
                (!cluster_scoped).then_some("kube-dr"),
                "{}: {}",
                overlay.display(),
                name_of(o)
            );
        }
    }
    let full = render(&dr_tests::repo_root().join("kustomize/overlays/full-stack"));
    assert!(full.iter().any(|o| name_of(o) == "CronJob/kube-dr-vault"));
    assert!(full
        .iter()
        .any(|o| name_of(o) == "CronJob/kube-dr-clickhouse"));
    // The Kubernetes backup may only read: no verb but get and list, no wildcard.
    let role = full
        .iter()
        .find(|o| name_of(o) == "ClusterRole/kube-dr-kubernetes-read")
        .expect("the kubernetes component's ClusterRole");
    for rule in get(role, "rules").and_then(Value::as_sequence).unwrap() {
        let verbs: Vec<&str> = get(rule, "verbs")
            .and_then(Value::as_sequence)
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(verbs, ["get", "list"], "{rule:?}");
        let resources = serde_yaml::to_string(get(rule, "resources").unwrap()).unwrap();
        assert!(!resources.contains('*'), "{resources}");
    }
}

/// Every component of `manifests/`, rendered beside the base in an overlay of its own: a
/// component no shipped overlay includes (an example engine's) keeps the rules too.
#[test]
fn every_component_renders_beside_the_base_and_keeps_the_rules() {
    let root = dr_tests::repo_root();
    let mut components: Vec<_> = std::fs::read_dir(root.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    components.sort();
    assert!(components.len() >= 5, "{components:?}");
    for component in components {
        let text = std::fs::read_to_string(component.join("kustomization.yaml")).unwrap();
        if !text.contains("kind: Component") {
            continue;
        }
        // Two floors below the root (kustomize takes relative roots only), outside the
        // overlays (another test lists those).
        std::fs::create_dir_all(root.join("target")).unwrap();
        let dir = tempfile::tempdir_in(root.join("target")).unwrap();
        let name = component
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: kube-dr\nresources:\n  - ../../kustomize/base\ncomponents:\n  - ../../manifests/{name}\n"
            ),
        )
        .unwrap();
        let objects = render(dir.path());
        let bad: Vec<String> = objects.iter().flat_map(violations).collect();
        assert!(
            bad.is_empty(),
            "{}:\n{}",
            component.display(),
            bad.join("\n")
        );
    }
}

#[test]
fn secret_templates_hold_no_identity_and_keep_the_rules() {
    let dir = dr_tests::repo_root().join("manifests/secret-templates");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        for obj in parse(&std::fs::read_to_string(&path).unwrap()) {
            assert!(
                violations(&obj).is_empty(),
                "{}: {:?}",
                path.display(),
                violations(&obj)
            );
        }
    }
}

#[test]
fn the_point_in_time_restore_job_keeps_the_rules() {
    let path = dr_tests::repo_root().join("manifests/postgres-archive/restore-job.yaml");
    let objects = parse(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(objects.len(), 1);
    let bad = violations(&objects[0]);
    assert!(bad.is_empty(), "{}: {bad:?}", path.display());
    // The exception is for this Job's own Secret only.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("kube-dr-restore-identity", "kube-dr-s3");
    assert!(!violations(&parse(&text)[0]).is_empty());
}

/// The rules can fail: remove what they guard from a rendered CronJob, one at a time.
#[test]
fn the_rules_catch_a_weakened_cronjob() {
    let objects = render(&dr_tests::repo_root().join("kustomize/overlays/postgres-only"));
    let cronjob = objects
        .iter()
        .find(|o| name_of(o) == "CronJob/kube-dr-postgres")
        .expect("postgres CronJob")
        .clone();
    assert!(violations(&cronjob).is_empty());
    let container = "spec.jobTemplate.spec.template.spec.containers";
    type Weaken = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Weaken)> = vec![
        (
            "readOnlyRootFilesystem",
            Box::new(move |v| {
                remove(
                    first_container(v, container),
                    "securityContext",
                    "readOnlyRootFilesystem",
                )
            }),
        ),
        (
            "concurrencyPolicy",
            Box::new(|v| remove(v, "spec", "concurrencyPolicy")),
        ),
        (
            "allowPrivilegeEscalation",
            Box::new(move |v| {
                remove(
                    first_container(v, container),
                    "securityContext",
                    "allowPrivilegeEscalation",
                )
            }),
        ),
        (
            "capabilities must drop ALL",
            Box::new(move |v| {
                remove(
                    first_container(v, container),
                    "securityContext",
                    "capabilities",
                )
            }),
        ),
        (
            "runAsNonRoot",
            Box::new(|v| {
                let pod = v["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                    .as_mapping_mut()
                    .unwrap();
                pod.remove("securityContext");
            }),
        ),
        (
            "resources.limits.memory",
            Box::new(move |v| remove(first_container(v, container), "resources", "limits")),
        ),
        (
            "only the drill's pod may mount",
            Box::new(|v| {
                let volumes = v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
                    .as_sequence_mut()
                    .unwrap();
                volumes.push(
                    serde_yaml::from_str("{name: k, secret: {secretName: kube-dr-drill-identity}}")
                        .unwrap(),
                );
            }),
        ),
        (
            "age identity",
            Box::new(move |v| {
                let c = first_container(v, container);
                let env = c["env"].as_sequence_mut().unwrap();
                env.push(
                    serde_yaml::from_str("{name: DR_IDENTITY_FILE, value: /key.txt}").unwrap(),
                );
            }),
        ),
        (
            "must sign its manifests",
            Box::new(move |v| {
                let c = first_container(v, container);
                let env = c["env"].as_sequence_mut().unwrap();
                env.retain(|e| e["name"] != "DR_SIGNING_KEY_FILE");
            }),
        ),
        (
            "must name a file under one of the container's mounts",
            Box::new(move |v| {
                let c = first_container(v, container);
                for e in c["env"].as_sequence_mut().unwrap() {
                    if e["name"] == "DR_SIGNING_KEY_FILE" {
                        e["value"] = "app-db".into();
                    }
                }
            }),
        ),
        (
            "is not a valid target name",
            Box::new(move |v| {
                let c = first_container(v, container);
                for e in c["env"].as_sequence_mut().unwrap() {
                    if e["name"] == "DR_TARGET" {
                        e["value"] = "https://openbao.openbao.svc:8200".into();
                    }
                }
            }),
        ),
        (
            "only backup pods may mount the signing key",
            Box::new(move |v| {
                let c = first_container(v, container);
                c["args"] = serde_yaml::from_str("[prune, --keep-last, '7']").unwrap();
            }),
        ),
    ];
    for (rule, weaken) in cases {
        let mut weak = cronjob.clone();
        weaken(&mut weak);
        let bad = violations(&weak);
        assert!(
            bad.iter().any(|b| b.contains(rule)),
            "removing {rule} went unnoticed: {bad:?}"
        );
    }
    let secret: Value = serde_yaml::from_str(
        "{apiVersion: v1, kind: Secret, metadata: {name: x}, stringData: {key.txt: 'AGE-SECRET-KEY-1QQQ'}}",
    )
    .unwrap();
    assert!(!violations(&secret).is_empty());
}

fn first_container<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = &mut cur[key];
    }
    &mut cur[0]
}

fn remove(v: &mut Value, parent: &str, key: &str) {
    v[parent]
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("{parent} is not a mapping"))
        .remove(key);
}
