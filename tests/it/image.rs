//! The worker image, run as the cluster runs it: a CronJob's container exactly as an overlay
//! renders it (command, args, env, the ConfigMap and Secret values put in, the Secret files
//! mounted read-only with the kubelet's owners and modes), under podman with a read-only
//! root and no /tmp of its own, UID 65532 and no capabilities. Each backup is verified and
//! restored on the host and compared: PostgreSQL 15 and 18, ClickHouse 26, OpenBao (through
//! Kubernetes auth), Redis (also over TLS with a mounted CA), a tar of a mounted directory
//! through the command engine; the drill runs in the image; a missing mount is named. The
//! in-cluster restore Job the plugin makes runs from the image too, behind a scripted
//! Kubernetes API whose kubelet is podman.
//!
//! `scripts/test.sh` builds the image first (`scripts/image.sh`) and sets DR_TEST_IMAGE=1,
//! which makes these tests mandatory; run alone without it they say how to get the image
//! and skip.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use dr_tests::bao::Bao;
use dr_tests::*;
use serde::Deserialize;
use serde_yaml::Value;

const IMAGE: &str = "localhost/kube-dr-worker:dev";

/// True when the image is there to test. With DR_TEST_IMAGE=1 (scripts/test.sh) a missing
/// image fails the test; without, the test is skipped with what to run.
fn image_ready() -> bool {
    let exists = podman()
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    if std::env::var("DR_TEST_IMAGE").is_ok_and(|v| v == "1") {
        assert!(
            exists,
            "DR_TEST_IMAGE=1 but {IMAGE} is missing: run scripts/image.sh"
        );
        return true;
    }
    if !exists {
        eprintln!("skipped: no {IMAGE}; build it with scripts/image.sh (needs Debian's podman, buildah, runc, debootstrap: the script installs them), or run scripts/test.sh");
    }
    exists
}

/// Podman as scripts/image.sh configures it (runc, cgroupfs).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    let conf = std::env::var("HOME").map(|h| format!("{h}/.cache/kube-dr/image/containers.conf"));
    if let Ok(conf) = conf {
        cmd.env("CONTAINERS_CONF", conf);
    }
    cmd
}

/// The rendered objects of an overlay.
fn render(overlay: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo_root().join("kustomize/overlays").join(overlay))
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

/// The data of a rendered ConfigMap or Secret, with `values` put in for its keys (every key
/// must get one: a key the test does not know would reach the container unset).
fn source_data(object: &Value, values: &BTreeMap<&str, String>) -> Vec<(String, String)> {
    let data = object["data"]
        .as_mapping()
        .or_else(|| object["stringData"].as_mapping())
        .cloned()
        .unwrap_or_default();
    data.keys()
        .map(|k| {
            let k = k.as_str().unwrap().to_string();
            let v = values
                .get(k.as_str())
                .unwrap_or_else(|| {
                    panic!("no test value for {k} of {:?}", object["metadata"]["name"])
                })
                .clone();
            (k, v)
        })
        .collect()
}

/// `podman run` of a CronJob's first container as the cluster would run it: its args, its
/// env (ConfigMaps and Secrets through `values`), its Secret volumes as read-only files
/// from `secrets` (volume name → key → content), its emptyDirs as tmpfs.
fn run_cronjob(
    objects: &[Value],
    cronjob: &str,
    values: &BTreeMap<&str, String>,
    secrets: &Secrets,
) -> Ran {
    run_cronjob_filled(objects, cronjob, values, secrets, &BTreeMap::new())
}

/// [`run_cronjob`], with emptyDir volumes that an init container fills in the cluster given
/// as host directories (volume name → directory), mounted as the container mounts them.
fn run_cronjob_filled(
    objects: &[Value],
    cronjob: &str,
    values: &BTreeMap<&str, String>,
    secrets: &Secrets,
    filled: &BTreeMap<&str, &Path>,
) -> Ran {
    let job = find(objects, "CronJob", cronjob);
    let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    run_pod(objects, cronjob, pod, values, secrets, filled)
}

/// `podman run` of a pod spec's first container (`what` names it in panics): its command
/// (as the entrypoint) and args, its env, its volumes as [`run_cronjob_filled`] describes;
/// the ConfigMaps and Secrets its env names are looked up in `objects`.
fn run_pod(
    objects: &[Value],
    what: &str,
    pod: &Value,
    values: &BTreeMap<&str, String>,
    secrets: &Secrets,
    filled: &BTreeMap<&str, &Path>,
) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let args = pod_args(objects, what, pod, values, secrets, filled, dir.path());
    let out = podman().args(&args).output().expect("podman run");
    eprintln!(
        "$ podman {}\n-- exit {:?}\n-- stdout\n{}\n-- stderr\n{}",
        args.iter()
            .map(|a| if a.contains("SECRET") || a.contains("PASSWORD=") {
                "(secret)"
            } else {
                a
            })
            .collect::<Vec<_>>()
            .join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ran(out)
}

/// The `podman run` arguments of [`run_pod`]; Secret files go under `dir`.
fn pod_args(
    objects: &[Value],
    what: &str,
    pod: &Value,
    values: &BTreeMap<&str, String>,
    secrets: &Secrets,
    filled: &BTreeMap<&str, &Path>,
    dir: &Path,
) -> Vec<String> {
    let c = &pod["containers"][0];
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for from in c["envFrom"].as_sequence().into_iter().flatten() {
        let (kind, name) = if let Some(n) = from["configMapRef"]["name"].as_str() {
            ("ConfigMap", n)
        } else {
            ("Secret", from["secretRef"]["name"].as_str().unwrap())
        };
        let object = objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name);
        // A Secret the overlay leaves to the user (its template): the test's values for it.
        let pairs = match object {
            Some(o) => source_data(o, values),
            None => values
                .iter()
                .filter(|(k, _)| k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET"))
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        for (k, v) in pairs {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
    }
    for e in c["env"].as_sequence().into_iter().flatten() {
        // A value the test gives for a literal variable replaces it, as an overlay would
        // (the overlays write cluster addresses such as VAULT_ADDR into env directly).
        if let Some(v) = e["name"].as_str().and_then(|n| values.get(n)) {
            args.extend([
                "--env".into(),
                format!("{}={v}", e["name"].as_str().unwrap()),
            ]);
        } else if let Some(v) = e["value"].as_str() {
            args.extend([
                "--env".into(),
                format!("{}={v}", e["name"].as_str().unwrap()),
            ]);
        }
    }
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
        let (name, path) = (
            m["name"].as_str().unwrap(),
            m["mountPath"].as_str().unwrap(),
        );
        let volume = volumes.iter().find(|v| v["name"] == name).unwrap();
        if let Some(host) = filled.get(name) {
            let ro = if m["readOnly"].as_bool() == Some(true) {
                ":ro"
            } else {
                ""
            };
            args.extend(["-v".into(), format!("{}:{path}{ro}", host.display())]);
        } else if volume.get("emptyDir").is_some() {
            args.extend(["--tmpfs".into(), format!("{path}:size=64m,mode=1777")]);
        } else if volume.get("secret").is_some() {
            let files = dir.join(name);
            std::fs::create_dir_all(&files).unwrap();
            let content = &secrets[name];
            let items: Vec<(String, String)> = match volume["secret"]["items"].as_sequence() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap().to_string();
                        (key, i["path"].as_str().unwrap().to_string())
                    })
                    .collect(),
                // No items: every key of the Secret, each a file of its name.
                None => content
                    .keys()
                    .map(|k| (k.to_string(), k.to_string()))
                    .collect(),
            };
            for (key, file) in items {
                let value = content
                    .get(key.as_str())
                    .unwrap_or_else(|| panic!("no test content for {name}/{key}"));
                std::fs::write(files.join(file), value).unwrap();
            }
            let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            as_kubelet_mounts(&files, mode, pod["securityContext"]["fsGroup"].as_u64());
            args.extend(["-v".into(), format!("{}:{path}:ro", files.display())]);
        } else {
            panic!("volume {name} of {what}: neither a Secret nor an emptyDir; teach the test");
        }
    }
    if let Some(command) = c["command"].as_sequence() {
        let command: Vec<&str> = command.iter().map(|a| a.as_str().unwrap()).collect();
        args.extend([
            "--entrypoint".into(),
            serde_json::to_string(&command).unwrap(),
        ]);
    }
    args.push(IMAGE.into());
    args.extend(
        c["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    args
}

/// Secret files as the kubelet mounts them: owned by root with the volume's `defaultMode`;
/// with a pod `fsGroup`, group-owned by it with group read added. (The tests run as root,
/// so the files are root's already.)
fn as_kubelet_mounts(dir: &Path, mode: u32, fs_group: Option<u64>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        let mode = match fs_group {
            Some(gid) => {
                std::os::unix::fs::chown(&f, None, Some(gid as u32)).unwrap();
                mode | 0o440
            }
            None => mode,
        };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// The PostgreSQL CronJob of the postgres-only overlay, run from the image against the
/// services' PostgreSQL on `port`: the backup is signed, verifies with the key on the host,
/// and restores identical.
async fn postgres_cronjob_backs_up_and_restores(port: &str) {
    let objects = render("postgres-only");
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let db = unique("img");
    pg_connect_at(port, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await
        .unwrap();
    let source = pg_connect_at(port, &db).await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, body text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
             CREATE TABLE u (x jsonb); INSERT INTO u VALUES ('{\"a\": [1, 2]}');",
        )
        .await
        .unwrap();
    let (values, secrets) = postgres_job(&store, &keys, port, &db);
    run_cronjob(&objects, "kube-dr-postgres", &values, &secrets).assert_exit(0, "backup committed");

    // On the host: the key verifies it (signature included), and a restore is identical.
    let kubectl_dr = |args: &[&str]| dr("kubectl-dr").args(args).identity(&keys).store(&store);
    kubectl_dr(&[
        "verify", "latest", "--engine", "postgres", "--target", "app-db",
    ])
    .run()
    .assert_exit(0, "intact");
    // The image's pg_dump is 18's: its dumps need pg_restore 18. pg_restore 17+ cannot
    // restore into a server older than 17 (it sets transaction_timeout): refused before
    // anything changes, and the same backup restores into 18, identical.
    let copy = format!("{db}_copy");
    let restore = |port: &str| {
        let to = format!(
            "postgres://{}@{}:{port}/{copy}",
            svc("PGUSER"),
            svc("PGHOST")
        );
        kubectl_dr(&[
            "restore", "latest", "--engine", "postgres", "--target", "app-db",
        ])
        .args(["--to", &to])
        .env("PGPASSWORD", &svc("PGPASSWORD"))
        .env("DR_PG_BIN_DIR", &svc("DR_PG18_BIN_DIR"))
        .run()
    };
    let pg18 = svc("DR_PG18_PORT");
    if port != pg18 {
        restore(port).assert_exit(2, "cannot restore into PostgreSQL 15");
        let exists = pg_connect_at(port, "postgres")
            .await
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&copy])
            .await
            .unwrap();
        assert!(exists.is_none(), "the refused restore created {copy}");
    }
    restore(&pg18).assert_exit(0, "match");
    let restored = pg_connect_at(&pg18, &copy).await;
    assert_eq!(
        pg_fingerprint(&restored).await,
        pg_fingerprint(&source).await
    );
    drop((source, restored));
    for (port, d) in [(port, &db), (pg18.as_str(), &copy)] {
        pg_connect_at(port, "postgres")
            .await
            .batch_execute(&format!("DROP DATABASE \"{d}\" WITH (FORCE)"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_cronjob_runs_from_the_image_against_postgres_18() {
    if image_ready() {
        postgres_cronjob_backs_up_and_restores(&svc("DR_PG18_PORT")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_cronjob_runs_from_the_image_against_postgres_15() {
    if image_ready() {
        postgres_cronjob_backs_up_and_restores(&svc("DR_PG15_PORT")).await;
    }
}

/// The Redis CronJob of the full-stack overlay, run from the image against a real
/// redis-server with a password: the snapshot it stores restores on the host into an empty
/// server, every key and expiry equal.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_cronjob_runs_from_the_image() {
    if !image_ready() {
        return;
    }
    let source = crate::redis::Server::start(Some(REDIS_PASSWORD), &[]);
    source.seed();
    let objects = render("full-stack");
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let mut values = job_values(&store, &keys);
    values.insert("REDIS_URL", source.url());
    let secrets = redis_secrets();
    run_cronjob(&objects, "kube-dr-redis", &values, &secrets).assert_exit(0, "backup committed");

    restores_equal(&store, &keys, &source);
}

/// The drill's CronJob of the full-stack overlay, run from the image: it holds the private
/// key (mounted 0400, readable through the pod's fsGroup, as the kubelet does it), restores
/// the newest PostgreSQL backup into a scratch database on PostgreSQL 18, compares the
/// counts and drops it. Without the fsGroup the key is root's and the drill says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_drill_cronjob_runs_from_the_image() {
    if !image_ready() {
        return;
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let db = unique("imgdrill");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1234) g")
        .await
        .unwrap();
    backup_postgres(&store, &keys, "drilled", &db, &[]);
    let pg18 = svc("DR_PG18_PORT");
    let mut values = job_values(&store, &keys);
    values.insert("CLICKHOUSE_USER", svc("CLICKHOUSE_USER"));
    values.insert(
        "DR_DRILL_TO",
        format!(
            "postgres=postgres://{}@{}:{pg18}",
            svc("PGUSER"),
            svc("PGHOST")
        ),
    );
    let secrets = BTreeMap::from([
        (
            "identity",
            BTreeMap::from([(
                "identity.txt",
                std::fs::read_to_string(&keys.identity).unwrap(),
            )]),
        ),
        (
            "drill-passwords",
            BTreeMap::from([
                ("pg-password", svc("PGPASSWORD")),
                ("clickhouse-password", svc("CLICKHOUSE_PASSWORD")),
            ]),
        ),
    ]);
    let objects = render("full-stack");
    run_cronjob(&objects, "kube-dr-drill", &values, &secrets).assert_exit(0, "every drill passed");
    let scratch = pg_connect_at(&pg18, "postgres")
        .await
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&format!("{db}__drill")],
        )
        .await
        .unwrap();
    assert!(scratch.is_none(), "the drill left its scratch database");

    // The same pod without fsGroup: the identity is root's 0400, and the drill names it.
    let mut without = objects.clone();
    for o in &mut without {
        if o["kind"] == "CronJob" && o["metadata"]["name"] == "kube-dr-drill" {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]
                .as_mapping_mut()
                .unwrap()
                .remove("fsGroup");
        }
    }
    run_cronjob(&without, "kube-dr-drill", &values, &secrets).assert_exit(2, "identity.txt");
    drop_database(&db).await;
}

/// The values of the `kube-dr` ConfigMap and the S3 Secret, pointed at the services' S3, a
/// store of the test and its keys.
fn job_values(store: &TestStore, keys: &Keys) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("DR_STORE", store.url().to_string()),
        ("AWS_ENDPOINT_URL", svc("AWS_ENDPOINT_URL")),
        ("AWS_REGION", svc("AWS_REGION")),
        ("AWS_ACCESS_KEY_ID", svc("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", svc("AWS_SECRET_ACCESS_KEY")),
        ("DR_LOG_FORMAT", "json".to_string()),
        ("DR_PUSHGATEWAY_URL", svc("DR_TEST_PUSHGATEWAY")),
        ("DR_RECIPIENTS", keys.recipient.clone()),
        ("DR_SIGNERS", suite_signer().public.clone()),
    ])
}

/// The `signing-key` volume: the suite's minisign key.
fn signing_key() -> (&'static str, BTreeMap<&'static str, String>) {
    (
        "signing-key",
        BTreeMap::from([(
            "signing.key",
            std::fs::read_to_string(&suite_signer().key_file).unwrap(),
        )]),
    )
}

/// Secret volumes' files: volume name → key → content.
type Secrets = BTreeMap<&'static str, BTreeMap<&'static str, String>>;

/// The PostgreSQL CronJob's values and Secret files, for database `db` on `port`.
fn postgres_job(
    store: &TestStore,
    keys: &Keys,
    port: &str,
    db: &str,
) -> (BTreeMap<&'static str, String>, Secrets) {
    let mut values = job_values(store, keys);
    values.extend([
        ("PGHOST", svc("PGHOST")),
        ("PGPORT", port.to_string()),
        ("PGUSER", svc("PGUSER")),
        ("PGDATABASE", db.to_string()),
    ]);
    let secrets = BTreeMap::from([
        signing_key(),
        (
            "postgres-password",
            BTreeMap::from([("password", svc("PGPASSWORD"))]),
        ),
    ]);
    (values, secrets)
}

/// What a pod lacks is named, and what it does not need is not needed: without its password
/// Secret mounted the PostgreSQL CronJob exits 2 naming the file; without a writable /tmp
/// (no emptyDir) it backs up all the same, since nothing is written locally.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_mount_is_named_and_tmp_is_not_needed() {
    if !image_ready() {
        return;
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let db = unique("imgmount");
    create_database(&db).await;
    let (values, secrets) = postgres_job(&store, &keys, &svc("PGPORT"), &db);
    let without = |mount: &str| {
        let mut objects = render("postgres-only");
        for o in &mut objects {
            if o["kind"] == "CronJob" && o["metadata"]["name"] == "kube-dr-postgres" {
                let c = &mut o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
                c["volumeMounts"]
                    .as_sequence_mut()
                    .unwrap()
                    .retain(|m| m["name"] != mount);
            }
        }
        objects
    };
    run_cronjob(
        &without("postgres-password"),
        "kube-dr-postgres",
        &values,
        &secrets,
    )
    .assert_exit(2, "/var/run/secrets/kube-dr/postgres/password");
    run_cronjob(&without("tmp"), "kube-dr-postgres", &values, &secrets)
        .assert_exit(0, "backup committed");
    drop_database(&db).await;
}

/// The ClickHouse CronJob of the full-stack overlay (SigNoz's), run from the image against
/// ClickHouse 26's engine, its `--database` list pointed at the test's database (the
/// overlay names SigNoz's): restored on the host under another name, every row equal.
#[tokio::test(flavor = "multi_thread")]
async fn the_clickhouse_cronjob_runs_from_the_image_against_clickhouse_26() {
    if !image_ready() {
        return;
    }
    let server = crate::clickhouse::Server::modern();
    let db = unique("imgch");
    crate::rebuild::seed_clickhouse(&server, &db).await;
    let mut objects = render("full-stack");
    for o in &mut objects {
        if o["kind"] == "CronJob" && o["metadata"]["name"] == "kube-dr-clickhouse" {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] =
                serde_yaml::to_value(["backup", "clickhouse", "--database", db.as_str()]).unwrap();
        }
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let mut values = job_values(&store, &keys);
    values.extend([
        ("CLICKHOUSE_URL", server.url.clone()),
        ("CLICKHOUSE_USER", svc("CLICKHOUSE_USER")),
        ("DR_CH_PARALLEL", "2".to_string()),
        ("DR_CLICKHOUSE_INCREMENTAL", "false".to_string()),
        ("DR_CLICKHOUSE_FULL_EVERY", "7".to_string()),
    ]);
    let secrets = BTreeMap::from([
        signing_key(),
        (
            "clickhouse-password",
            BTreeMap::from([("password", svc("CLICKHOUSE_PASSWORD"))]),
        ),
    ]);
    run_cronjob(&objects, "kube-dr-clickhouse", &values, &secrets)
        .assert_exit(0, "backup committed");

    let copy = format!("{db}_copy");
    dr("kubectl-dr")
        .args([
            "restore",
            "latest",
            "--engine",
            "clickhouse",
            "--target",
            "signoz",
        ])
        .args([
            "--to",
            &server.url,
            "--database-map",
            &format!("{db}={copy}"),
        ])
        .identity(&keys)
        .store(&store)
        .run()
        .assert_exit(0, "match");
    for (table, rows) in [("logs", "*"), ("per_level", "level, sum(c) GROUP BY level")] {
        assert_eq!(
            crate::rebuild::ch_fingerprint(&server, &copy, table, rows).await,
            crate::rebuild::ch_fingerprint(&server, &db, table, rows).await,
            "{table}"
        );
    }
    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

/// The command engine from the image, in the tfstate CronJob of the full-stack overlay with
/// its command swapped for a tar of a mounted directory: the tool comes in through the
/// CronJob's `tools` volume (an init container fills it in the cluster; here a static
/// busybox), the directory through its `workspace` volume. The restore on the host unpacks
/// the same files.
#[tokio::test(flavor = "multi_thread")]
async fn the_command_cronjob_tars_a_mounted_directory_from_the_image() {
    if !image_ready() {
        return;
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "a static busybox is needed (Debian's busybox-static; scripts/image.sh installs it)"
    );
    let (tools, workspace) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::copy(busybox, tools.path().join("busybox")).unwrap();
    std::fs::create_dir_all(workspace.path().join("sub")).unwrap();
    let random: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(workspace.path().join("state.json"), br#"{"version": 4}"#).unwrap();
    std::fs::write(workspace.path().join("sub/blob.bin"), &random).unwrap();
    for d in [
        tools.path(),
        workspace.path(),
        &workspace.path().join("sub"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in std::fs::read_dir(d).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }
    let mut objects = render("full-stack");
    for o in &mut objects {
        if o["kind"] == "CronJob" && o["metadata"]["name"] == "kube-dr-tfstate" {
            o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] =
                serde_yaml::to_value([
                    "backup",
                    "command",
                    "--",
                    "/tools/busybox",
                    "tar",
                    "-C",
                    "/workspace",
                    "-cf",
                    "-",
                    ".",
                ])
                .unwrap();
        }
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let values = job_values(&store, &keys);
    let secrets = BTreeMap::from([signing_key()]);
    let filled = BTreeMap::from([("tools", tools.path()), ("workspace", workspace.path())]);
    run_cronjob_filled(&objects, "kube-dr-tfstate", &values, &secrets, &filled)
        .assert_exit(0, "backup committed");

    let out = tempfile::tempdir().unwrap();
    dr("kubectl-dr")
        .args([
            "restore", "latest", "--engine", "command", "--target", "tfstate",
        ])
        // --identity and --store before `--`: what follows it is the command.
        .identity(&keys)
        .store(&store)
        .args([
            "--to-command",
            "--",
            "tar",
            "-C",
            out.path().to_str().unwrap(),
            "-xf",
            "-",
        ])
        .run()
        .assert_exit(0, "restored");
    for f in ["state.json", "sub/blob.bin"] {
        assert_eq!(
            std::fs::read(out.path().join(f)).unwrap(),
            std::fs::read(workspace.path().join(f)).unwrap(),
            "{f}"
        );
    }
}

/// A TLS endpoint with a private CA given as a mounted file, as a user's overlay adds it to
/// the Redis CronJob (REDIS_CACERT and a Secret volume): the image's worker trusts that CA
/// and no other, and the snapshot restores equal.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_with_a_mounted_ca_works_from_the_image() {
    if !image_ready() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    crate::redis::certificates(certs.path());
    let file = |f: &str| certs.path().join(f).display().to_string();
    let source = crate::redis::Server::start(
        Some(REDIS_PASSWORD),
        &[
            "--tls-cert-file",
            &file("server.crt"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.crt"),
        ],
    );
    source.seed();
    let mut objects = render("full-stack");
    for o in &mut objects {
        if o["kind"] == "CronJob" && o["metadata"]["name"] == "kube-dr-redis" {
            let pod = &mut o["spec"]["jobTemplate"]["spec"]["template"]["spec"];
            pod["volumes"].as_sequence_mut().unwrap().push(
                serde_yaml::from_str("{name: redis-ca, secret: {secretName: kube-dr-redis-ca}}")
                    .unwrap(),
            );
            let c = &mut pod["containers"][0];
            c["volumeMounts"].as_sequence_mut().unwrap().push(
                serde_yaml::from_str(
                    "{name: redis-ca, mountPath: /var/run/secrets/kube-dr/redis-ca, readOnly: true}",
                )
                .unwrap(),
            );
            c["env"].as_sequence_mut().unwrap().push(
                serde_yaml::from_str(
                    "{name: REDIS_CACERT, value: /var/run/secrets/kube-dr/redis-ca/ca.crt}",
                )
                .unwrap(),
            );
        }
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let mut values = job_values(&store, &keys);
    values.insert("REDIS_URL", source.url());
    assert!(source.url().starts_with("rediss://"), "{}", source.url());
    let mut secrets = redis_secrets();
    secrets.insert(
        "redis-ca",
        BTreeMap::from([("ca.crt", std::fs::read_to_string(file("ca.crt")).unwrap())]),
    );
    run_cronjob(&objects, "kube-dr-redis", &values, &secrets).assert_exit(0, "backup committed");
    // Another CA mounted instead: refused, and the message names the setting to check.
    let other = tempfile::tempdir().unwrap();
    crate::redis::certificates(other.path());
    let mut wrong = secrets.clone();
    wrong.insert(
        "redis-ca",
        BTreeMap::from([(
            "ca.crt",
            std::fs::read_to_string(other.path().join("ca.crt")).unwrap(),
        )]),
    );
    run_cronjob(&objects, "kube-dr-redis", &values, &wrong).assert_exit(2, "REDIS_CACERT");

    restores_equal(&store, &keys, &source);
}

/// The Vault CronJob of the full-stack overlay, run from the image against OpenBao: it logs
/// in with Kubernetes auth (its projected service-account token, here the test's JWT behind
/// a fake TokenReview API, as the vault tests do), and the snapshot it stores brings deleted
/// secrets back when restored on the host.
#[tokio::test(flavor = "multi_thread")]
async fn the_vault_cronjob_runs_from_the_image_against_openbao() {
    if !image_ready() {
        return;
    }
    use serde_json::json;
    let bao = Bao::start().await;
    bao.seed().await;
    let jwt = crate::vault::service_account_jwt();
    let kube = crate::vault::fake_token_review(jwt.clone()).await;
    let objects = render("full-stack");
    let cronjob = find(&objects, "CronJob", "kube-dr-vault");
    let role = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DR_VAULT_K8S_ROLE")
        .and_then(|e| e["value"].as_str())
        .expect("the CronJob names its Vault role")
        .to_string();
    for (path, body) in [
        ("sys/auth/kubernetes", json!({"type": "kubernetes"})),
        (
            "auth/kubernetes/config",
            json!({"kubernetes_host": kube, "kubernetes_ca_cert": crate::vault::FAKE_KUBE_CA, "disable_local_ca_jwt": true, "token_reviewer_jwt": "reviewer"}),
        ),
        (
            "sys/policies/acl/kube-dr-backup",
            json!({"policy": "path \"sys/storage/raft/snapshot\" { capabilities = [\"read\"] }"}),
        ),
        (
            &format!("auth/kubernetes/role/{role}"),
            json!({"bound_service_account_names": ["dr-worker"], "bound_service_account_namespaces": ["dr"], "token_policies": ["kube-dr-backup"]}),
        ),
    ] {
        let (status, resp) = bao.api("POST", path, body).await;
        assert!(status < 300, "{path}: {status} {resp}");
    }
    let token = tempfile::tempdir().unwrap();
    std::fs::write(token.path().join("token"), &jwt).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [token.path().to_path_buf(), token.path().join("token")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let mut values = job_values(&store, &keys);
    values.insert("VAULT_ADDR", bao.addr.clone());
    let secrets = BTreeMap::from([signing_key()]);
    let filled = BTreeMap::from([("sa-token", token.path())]);
    run_cronjob_filled(&objects, "kube-dr-vault", &values, &secrets, &filled)
        .assert_exit(0, "logged in with Kubernetes auth");

    // Deleted after the backup, back after its restore.
    let (status, body) = bao
        .api("DELETE", "secret/metadata/app/db", serde_json::Value::Null)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(bao.read_secret(&bao.root_token, "app/db").await.is_none());
    dr("kubectl-dr")
        .args([
            "restore", "latest", "--engine", "vault", "--target", "vault",
        ])
        .args(["--to", &bao.addr, "--yes"])
        .env("VAULT_TOKEN", &bao.root_token)
        .identity(&keys)
        .store(&store)
        .run()
        .assert_exit(0, "restored");
    crate::vault::assert_secrets(&bao, &bao.root_token).await;
}

/// The password of the Redis servers the image tests back up.
const REDIS_PASSWORD: &str = "image-Redis-pw";

/// The Redis CronJob's Secret files: the signing key and the password.
fn redis_secrets() -> Secrets {
    BTreeMap::from([
        signing_key(),
        (
            "redis-password",
            BTreeMap::from([("password", REDIS_PASSWORD.to_string())]),
        ),
    ])
}

/// The newest `redis/cache` backup restored on the host into an empty server holds exactly
/// what `source` holds.
fn restores_equal(store: &TestStore, keys: &Keys, source: &crate::redis::Server) {
    let target = crate::redis::Server::start(None, &[]);
    dr("kubectl-dr")
        .args([
            "restore", "latest", "--engine", "redis", "--target", "cache",
        ])
        .args(["--to", &target.url()])
        .identity(keys)
        .store(store)
        .run()
        .assert_exit(0, "it is a primary again");
    assert_eq!(target.canonical(), source.canonical());
}

/// A scripted Kubernetes API for `restore --in-cluster`, with the kubelet's part played by
/// podman: it serves the CronJob an overlay renders, keeps the Secrets the plugin creates,
/// and runs a created Job's pod from the image (its identity Secret mounted from what the
/// plugin sent). Nothing here decides the outcome: the Job's status and log are the
/// container's exit and output.
#[derive(Default)]
struct FakeCluster {
    /// Secrets created and not deleted: name → object.
    secrets: BTreeMap<String, serde_json::Value>,
    /// Secrets deleted, in order.
    deleted: Vec<String>,
    /// The created Job's name, and its container's end once it ran.
    job: Option<(String, Option<std::process::Output>)>,
}

type Shared = std::sync::Arc<std::sync::Mutex<FakeCluster>>;

/// Serves `objects` (an overlay's render) in namespace kube-dr; a created Job runs with
/// `values` and `secrets` (the identity Secret's files are added from the API).
async fn fake_cluster(
    objects: Vec<Value>,
    values: BTreeMap<&'static str, String>,
    secrets: Secrets,
) -> (String, Shared) {
    use serde_json::json;
    let state = Shared::default();
    let shared = state.clone();
    let url = fake_http_with_headers(move |method, path, body| {
        let path = path.split('?').next().unwrap_or(path);
        let json = |status: u16, v: serde_json::Value| {
            (
                status,
                vec![("Content-Type", "application/json".to_string())],
                v.to_string().into_bytes(),
            )
        };
        let not_found = || {
            json(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
            )
        };
        let mut state = shared.lock().unwrap();
        let (core, batch) = ("/api/v1/namespaces/kube-dr", "/apis/batch/v1/namespaces/kube-dr");
        match (method, path) {
            ("GET", p) if p == format!("{batch}/cronjobs") => {
                let items: Vec<serde_json::Value> = objects
                    .iter()
                    .filter(|o| {
                        o["kind"] == "CronJob"
                            && o["metadata"]["labels"]["kube-dr.io/engine"] == "postgres"
                    })
                    .map(|o| serde_json::to_value(o).unwrap())
                    .collect();
                json(
                    200,
                    json!({"kind": "CronJobList", "apiVersion": "batch/v1", "metadata": {}, "items": items}),
                )
            }
            ("POST", p) if p == format!("{core}/secrets") => {
                let secret: serde_json::Value = serde_json::from_str(body).unwrap();
                let name = secret["metadata"]["name"].as_str().unwrap().to_string();
                state.secrets.insert(name, secret.clone());
                json(201, secret)
            }
            ("DELETE", p) if p.starts_with(&format!("{core}/secrets/")) => {
                let name = p.rsplit('/').next().unwrap().to_string();
                match state.secrets.remove(&name) {
                    Some(_) => {
                        state.deleted.push(name);
                        json(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
                    }
                    None => not_found(),
                }
            }
            ("POST", p) if p == format!("{batch}/jobs") => {
                let job: serde_json::Value = serde_json::from_str(body).unwrap();
                let name = job["metadata"]["name"].as_str().unwrap().to_string();
                let pod: Value =
                    serde_yaml::to_value(&job["spec"]["template"]["spec"]).unwrap();
                // The kubelet: the identity volume's files come from the Secret it names.
                let mut secrets = secrets.clone();
                for v in pod["volumes"].as_sequence().into_iter().flatten() {
                    let Some(from) = v["secret"]["secretName"].as_str() else { continue };
                    if let Some(secret) = state.secrets.get(from) {
                        let files = secret["data"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| {
                                use base64::Engine as _;
                                let bytes = base64::engine::general_purpose::STANDARD
                                    .decode(v.as_str().unwrap())
                                    .unwrap();
                                (&*k.clone().leak(), String::from_utf8(bytes).unwrap())
                            })
                            .collect();
                        secrets.insert(v["name"].as_str().unwrap().to_string().leak(), files);
                    }
                }
                state.job = Some((name.clone(), None));
                let (objects, values, shared) = (objects.clone(), values.clone(), shared.clone());
                std::thread::spawn(move || {
                    let ran = run_pod(&objects, &name, &pod, &values, &secrets, &BTreeMap::new());
                    shared.lock().unwrap().job.as_mut().unwrap().1 = Some(ran.0);
                });
                json(201, job)
            }
            ("GET", p) if p.starts_with(&format!("{batch}/jobs/")) => {
                let Some((name, ended)) = &state.job else { return not_found() };
                let conditions = match ended {
                    None => json!([]),
                    Some(out) if out.status.success() => {
                        json!([{"type": "Complete", "status": "True"}])
                    }
                    Some(out) => json!([{"type": "Failed", "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": format!("the container exited {:?}", out.status.code())}]),
                };
                json(
                    200,
                    json!({"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": name},
                           "status": {"conditions": conditions}}),
                )
            }
            ("GET", p) if p == format!("{core}/pods") => {
                let items = match &state.job {
                    Some((name, _)) => json!([{"metadata": {"name": format!("{name}-pod"),
                        "creationTimestamp": "2026-12-03T00:00:00Z"}}]),
                    None => json!([]),
                };
                json(
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
                )
            }
            ("GET", p) if p.starts_with(&format!("{core}/pods/")) && p.ends_with("/log") => {
                let Some((_, Some(out))) = &state.job else { return not_found() };
                let mut log = out.stdout.clone();
                log.extend_from_slice(&out.stderr);
                (200, vec![("Content-Type", "text/plain".to_string())], log)
            }
            ("GET", _) => not_found(),
            _ => panic!("the fake API does not serve {method} {path}"),
        }
    })
    .await;
    (url, state)
}

/// A kubeconfig for the fake API at `url`, with no credentials.
fn kubeconfig(dir: &Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

/// `kubectl dr restore --in-cluster`: the plugin renders the restore Job from the overlay's
/// PostgreSQL CronJob, and its container (kubectl-dr in the image, the identity from the
/// Secret the plugin made, the password from the CronJob's Secret file) restores the
/// newest backup into a new database on PostgreSQL 18, identical; the identity Secret is
/// gone afterwards. The same restore again meets a database that is no longer empty: the
/// Job fails, its log says why, and the plugin exits 2 with the Secret deleted all the same.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_cluster_restore_job_restores_from_the_image() {
    if !image_ready() {
        return;
    }
    let pg18 = svc("DR_PG18_PORT");
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let db = unique("imgjob");
    pg_connect_at(&pg18, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await
        .unwrap();
    let source = pg_connect_at(&pg18, &db).await;
    source
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, body text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    let objects = render("postgres-only");
    let (values, secrets) = postgres_job(&store, &keys, &pg18, &db);
    run_cronjob(&objects, "kube-dr-postgres", &values, &secrets).assert_exit(0, "backup committed");

    let (url, cluster) = fake_cluster(objects, values, secrets).await;
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &url);
    let copy = format!("{db}_copy");
    let to = format!(
        "postgres://{}@{}:{pg18}/{copy}",
        svc("PGUSER"),
        svc("PGHOST")
    );
    let restore = dr("kubectl-dr")
        .args([
            "restore", "latest", "--engine", "postgres", "--target", "app-db",
        ])
        .args(["--to", &to, "--in-cluster", "--timeout", "5m"])
        .args(["--kubeconfig", config.to_str().unwrap()])
        .identity(&keys)
        .store(&store);
    let run = || {
        let restore = restore.clone();
        tokio::task::spawn_blocking(move || restore.run())
    };
    run()
        .await
        .unwrap()
        .assert_exit(0, "succeeded")
        .assert_exit(0, "match");
    let restored = pg_connect_at(&pg18, &copy).await;
    assert_eq!(
        pg_fingerprint(&restored).await,
        pg_fingerprint(&source).await
    );
    {
        let state = cluster.lock().unwrap();
        assert!(
            state.secrets.is_empty(),
            "left behind: {:?}",
            state.secrets.keys()
        );
        assert_eq!(state.deleted.len(), 1, "{:?}", state.deleted);
    }

    run()
        .await
        .unwrap()
        .assert_exit(2, "already has 1 table(s)")
        .assert_exit(2, "failed");
    {
        let state = cluster.lock().unwrap();
        assert!(
            state.secrets.is_empty(),
            "left behind: {:?}",
            state.secrets.keys()
        );
        assert_eq!(state.deleted.len(), 2, "{:?}", state.deleted);
    }
    drop((source, restored));
    for d in [&db, &copy] {
        pg_connect_at(&pg18, "postgres")
            .await
            .batch_execute(&format!("DROP DATABASE \"{d}\" WITH (FORCE)"))
            .await
            .unwrap();
    }
}

/// The point-in-time recovery component as the cluster runs it: the archiver Deployment's
/// container (long-running, stopped with SIGTERM as a rollout does) and the base backup
/// CronJob, from the image, against a fresh PostgreSQL; the host then sees a clean archive.
#[tokio::test(flavor = "multi_thread")]
async fn the_wal_archiver_and_base_backup_run_from_the_image() {
    if !image_ready() {
        return;
    }
    let objects = render("full-stack");
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let pg = FreshPostgres::start();
    let target = unique("pitr");
    let port = pg.port.to_string();
    let mut values = job_values(&store, &keys);
    values.extend([
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", port.clone()),
        ("PGUSER", "postgres".to_string()),
        ("PGDATABASE", "postgres".to_string()),
        ("DR_TARGET", target.clone()),
        ("DR_WAL_MAX_LAG", "2s".to_string()),
    ]);
    let secrets = BTreeMap::from([
        signing_key(),
        (
            "postgres-password",
            BTreeMap::from([("password", svc("PGPASSWORD"))]),
        ),
    ]);
    let deployment = find(&objects, "Deployment", "kube-dr-postgres-archive");
    let pod = &deployment["spec"]["template"]["spec"];
    let dir = tempfile::tempdir().unwrap();
    let name = format!("kube-dr-archive-{}", target.replace('_', "-"));
    let mut args = pod_args(
        &objects,
        "kube-dr-postgres-archive",
        pod,
        &values,
        &secrets,
        &BTreeMap::new(),
        dir.path(),
    );
    args.insert(1, format!("--name={name}"));
    let mut archiver = Watched::spawn({
        let mut c = podman();
        c.args(&args);
        c
    });
    assert!(
        archiver.until("WAL archiver started"),
        "{}",
        archiver.stderr
    );
    let client = pg.connect("postgres").await;
    client
        .batch_execute("CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    run_cronjob(&objects, "kube-dr-postgres-base", &values, &secrets)
        .assert_exit(0, "backup committed");
    client
        .batch_execute(
            "INSERT INTO t VALUES (2); SELECT pg_switch_wal(); INSERT INTO t VALUES (3);",
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // A rollout: SIGTERM, the grace period of the pod.
    let stopped = podman().args(["stop", "-t", "45", &name]).output().unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let (status, _, stderr) = archiver.finish();
    assert!(
        status.success(),
        "the archiver's exit: {status:?}\n{stderr}"
    );
    assert!(stderr.contains("WAL archiver stopped"), "{stderr}");
    dr("kubectl-dr")
        .args(["verify", "--wal", "--target", &target])
        .store(&store)
        .run()
        .assert_exit(0, "recoverable from");
}
