//! What a new user trips over in the first hour, on real processes: `status` with no
//! cluster at all, a backup without a signing key, a mistyped store prefix.

use dr_tests::*;

/// Environment without any cluster: no KUBECONFIG, a HOME without ~/.kube/config.
fn no_cluster(home: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", String::new()),
        ("HOME", home.display().to_string()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn status_answers_from_the_store_without_a_cluster() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup_command(&store, &keys, "fresh", &["echo", "hi"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let home = tempfile::tempdir().unwrap();
    let env = no_cluster(home.path());

    let out = run(
        "kubectl-dr",
        &[
            "status",
            "--store",
            store.url(),
            "--max-age",
            "26h",
            "-o",
            "json",
        ],
        &refs(&env),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["backups"][0]["engine"], "command", "{report}");
    assert_eq!(report["backups"][0]["target"], "fresh", "{report}");
    assert_eq!(report["backups"][0]["stale"], false, "{report}");

    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = run(
        "kubectl-dr",
        &["status", "--store", store.url(), "--max-age", "1ms"],
        &refs(&env),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stdout(&out).contains("STALE"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("newest backup older than --max-age 1ms: command/fresh"),
        "{}",
        stderr(&out)
    );

    // Neither a cluster nor a store: say both ways.
    let out = run("kubectl-dr", &["status"], &refs(&env));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no Kubernetes cluster configured"), "{err}");
    assert!(err.contains("--store"), "{err}");
    assert!(!err.contains("'\""), "doubled quotes: {err}");
}

/// `worker backup command` with no signing key in its environment at all.
fn backup_without_key(
    store: &TestStore,
    keys: &Keys,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = command(
        "worker",
        &[
            "backup",
            "command",
            "--target",
            "nokey",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
            "--",
            "echo",
            "hi",
        ],
        env,
    );
    cmd.env_remove("DR_SIGNING_KEY_FILE").output().unwrap()
}

#[test]
fn a_backup_without_a_signing_key_is_refused_unless_asked_for() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup_without_key(&store, &keys, &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no signing key: pass --signing-key FILE or set DR_SIGNING_KEY_FILE"),
        "{}",
        stderr(&out)
    );
    assert!(
        store.files().iter().all(|f| !f.ends_with(".age")),
        "{:?}",
        store.files()
    );

    let out = backup_without_key(&store, &keys, &[("DR_UNSIGNED", "1")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("--unsigned"), "{}", stderr(&out));
}

#[test]
fn a_mistyped_prefix_names_the_stores_beside_it() {
    let keys = Keys::generate();
    let parent = unique("fh");
    let bucket = svc("DR_TEST_BUCKET");
    let real = TestStore::S3 {
        url: format!("s3://{bucket}/{parent}/real"),
        prefix: format!("{parent}/real"),
    };
    let out = backup_command(&real, &keys, "typo", &["echo", "hi"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let typo = format!("s3://{bucket}/{parent}/reel");
    let out = run("kubectl-dr", &["list", "--store", &typo], &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{typo} holds nothing; did you mean s3://{bucket}/{parent}/real? (these hold backups)"
        )),
        "{}",
        stderr(&out)
    );

    // A store that is really empty, with nothing beside it: exit 0, and it says so.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("new");
    std::fs::create_dir(&empty).unwrap();
    let url = format!("file://{}", empty.display());
    let out = run("kubectl-dr", &["list", "--store", &url], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no backups yet") && stderr(&out).contains("how a new store looks"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_key_and_a_refused_target_fail_before_any_plan_or_promise() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let db = unique("fh_key");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .unwrap();
    let id = backup_postgres(&store, &keys, "fhk", &db, &[]);
    let other = Keys::generate();
    let target = unique("fh_key_target");
    let dr = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--store", store.url()]);
        run("kubectl-dr", &all, &[])
    };

    // A wrong key: refused before anything says what would be changed.
    let out = dr(&[
        "restore",
        &id,
        "-i",
        other.identity.to_str().unwrap(),
        "--to",
        &pg_url(&target),
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no identity in"), "{err}");
    assert!(!err.contains("plan:"), "a plan before the key check: {err}");
    assert!(!err.contains("one pass:"), "{err}");

    // verify says it once.
    let out = dr(&["verify", &id, "-i", other.identity.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(all.matches("no identity in").count(), 1, "{all}");
    assert!(!stdout(&out).contains("FAILED"), "{}", stdout(&out));

    // A public key given as the identity is named as one.
    let public = keys.dir.path().join("key.pub");
    std::fs::write(&public, format!("{}\n", keys.recipient)).unwrap();
    let out = dr(&["verify", &id, "-i", public.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds an age public key (age1…), not a secret one"),
        "{}",
        stderr(&out)
    );

    // A non-empty target without --clean: refused, with no promise of a one-pass restore.
    let out = dr(&[
        "restore",
        &id,
        "-i",
        keys.identity.to_str().unwrap(),
        "--to",
        &pg_url(&db),
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--clean"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("one pass:"), "{}", stderr(&out));
    assert!(!database_exists(&target).await);

    // `latest` among several engines: a postgres:// destination names its engine.
    let out = backup_command(&store, &keys, "other", &["echo", "hi"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dr(&[
        "restore",
        "latest",
        "-i",
        keys.identity.to_str().unwrap(),
        "--to",
        &pg_url(&target),
        "--yes",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: i64 = pg_connect(&target)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 10);
    // http:// is Vault's and ClickHouse's: still ambiguous, and said so.
    let out = dr(&[
        "restore",
        "latest",
        "-i",
        keys.identity.to_str().unwrap(),
        "--to",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("ambiguous"), "{}", stderr(&out));
    drop_database(&db).await;
    drop_database(&target).await;
}

#[test]
fn s3_connection_and_credential_errors_are_one_sentence() {
    let store = TestStore::s3();
    let out = run(
        "kubectl-dr",
        &["list", "--store", store.url()],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Connection refused") && err.contains("at http://127.0.0.1:1 (region"),
        "{err}"
    );
    assert!(
        !err.contains("DispatchFailure") && !err.contains("ConnectorError"),
        "{err}"
    );

    let home = tempfile::tempdir().unwrap();
    let mut cmd = command(
        "kubectl-dr",
        &["list", "--store", store.url()],
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let out = cmd
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no usable credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(!err.contains("ProviderError"), "{err}");
}

#[test]
fn restore_all_takes_several_engines_and_targets_and_skips() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    for target in ["a", "b", "c"] {
        let out = backup_command(&store, &keys, target, &["echo", target], &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let sink = keys.dir.path().join("out.txt");
    let to_command = format!("cat >> {}", sink.display());
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "--all",
            "--store",
            store.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--engine",
            "command",
            "--engine",
            "redis",
            "--target",
            "a",
            "--target",
            "b",
            "--target",
            "c",
            "--skip",
            "command/b",
            "--state",
            keys.dir.path().join("s.json").to_str().unwrap(),
            "--yes",
            "--to-command",
            "--",
            "sh",
            "-c",
            &to_command,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = std::fs::read_to_string(&sink).unwrap();
    let mut lines: Vec<&str> = restored.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a", "c"], "{}", stderr(&out));

    // Every other command takes one of each, and says so.
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            "latest",
            "--store",
            store.url(),
            "--target",
            "a",
            "--target",
            "b",
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--target is given 2 times; only `restore --all` takes several"),
        "{}",
        stderr(&out)
    );
}
