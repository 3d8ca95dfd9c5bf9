//! `worker copy`: backups copied as stored from the services' S3 (s3s-fs) into a local
//! directory and into moto (another server and account, through `DR_COPY_AWS_…`). Every
//! copy verifies there with the key and the signer and the newest restores identical; a
//! rerun copies nothing; a damaged or stranger-signed backup is not copied (exit 1, named)
//! while the others are; a copy killed mid-part leaves nothing visible and a rerun finishes
//! it; an incremental ClickHouse chain is copied with its base and restores from the copy.

use dr_tests::*;

/// `worker copy --store SOURCE --to DEST EXTRA…` with `env`.
fn copy(
    source: &TestStore,
    to: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut args = vec!["copy", "--store", source.url(), "--to", to, "-o", "json"];
    args.extend_from_slice(extra);
    run("worker", &args, env)
}

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Two command backups and a PostgreSQL one in the services' S3.
async fn three_backups(keys: &Keys) -> (TestStore, String, Vec<u8>) {
    let source = TestStore::s3();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = keys.dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    for _ in 0..2 {
        let out = backup_command(
            &source,
            keys,
            "files",
            &["cat", file.to_str().unwrap()],
            &[],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        // Ids have one-second resolution: the second backup is the newer one.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let db = unique("copy");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    backup_postgres(&source, keys, "app", &db, &[]);
    (source, db, payload)
}

/// `kubectl dr verify latest` of one series in `dest`, with the key: intact (exit 0).
fn verify_latest(dest: &str, keys: &Keys, engine: &str, target: &str, env: &[(&str, &str)]) {
    let mut verify = dr("kubectl-dr")
        .args(["verify", "latest", "--engine", engine, "--target", target])
        .identity(keys)
        .args(["--store", dest]);
    for (k, v) in env {
        verify = verify.env(k, v);
    }
    verify.run().assert_exit(0, "intact");
}

/// The copy at `dest` verifies (key and signer) and its newest command backup restores
/// `payload`.
fn assert_copy_is_whole(dest: &str, keys: &Keys, env: &[(&str, &str)], payload: &[u8]) {
    for (engine, target) in [("command", "files"), ("postgres", "app")] {
        verify_latest(dest, keys, engine, target, env);
    }
    let restored = keys.dir.path().join("restored.bin");
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "command",
            "--target",
            "files",
            "-i",
            keys.identity.to_str().unwrap(),
            "--store",
            dest,
            "--to-command",
            "--",
            "sh",
            "-c",
            &format!("cat > {}", restored.display()),
        ],
        env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(&restored).unwrap(), payload);
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_verify_and_restore_and_a_rerun_copies_nothing() {
    let keys = Keys::generate();
    let (source, db, payload) = three_backups(&keys).await;

    // Into a local directory.
    let local = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/copy", local.path().display());
    let out = copy(&source, &dest, &[], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r["copied"].as_array().unwrap().len(), 3, "{r}");
    assert_copy_is_whole(&dest, &keys, &[], &payload);
    let out = copy(&source, &dest, &[], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = report(&out);
    assert_eq!(r["copied"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["present"], 3, "{r}");
    assert!(stderr(&out).contains("nothing to copy"), "{}", stderr(&out));

    // Into moto: another server with its own account, through DR_COPY_AWS_….
    let bucket = unique("copy").replace('_', "-");
    let moto = svc("DR_TEST_MOTO_URL");
    s3_client(&moto)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let dest = format!("s3://{bucket}/offsite");
    let out = copy(
        &source,
        &dest,
        &["--engine", "command"],
        &[
            ("DR_COPY_AWS_ENDPOINT_URL", &moto),
            ("DR_COPY_AWS_ACCESS_KEY_ID", "second"),
            ("DR_COPY_AWS_SECRET_ACCESS_KEY", "account"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(report(&out)["copied"].as_array().unwrap().len(), 2);
    verify_latest(
        &dest,
        &keys,
        "command",
        "files",
        &[("AWS_ENDPOINT_URL", &moto)],
    );
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_and_stranger_signed_backups_are_not_copied() {
    let keys = Keys::generate();
    let (source, db, _) = three_backups(&keys).await;
    // A flipped byte in the older command backup's part.
    let files = source.files();
    let part = files
        .iter()
        .filter(|f| f.starts_with("command/files/") && f.ends_with(".age"))
        .min()
        .unwrap();
    let damaged = part.split('/').nth(2).unwrap().to_string();
    let path = source.object_path(part);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // A backup signed by a key the readers do not trust.
    let stranger = keys.dir.path().join("stranger.key");
    let made = std::process::Command::new("minisign")
        .args(["-G", "-W", "-s"])
        .arg(&stranger)
        .arg("-p")
        .arg(keys.dir.path().join("stranger.pub"))
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = backup_command(
        &source,
        &keys,
        "forged",
        &["echo", "x"],
        &[("DR_SIGNING_KEY_FILE", stranger.to_str().unwrap())],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let forged = stdout(&out).trim().to_string();

    let local = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/copy", local.path().display());
    let gateway = svc("DR_TEST_PUSHGATEWAY");
    let out = copy(&source, &dest, &[], &[("DR_PUSHGATEWAY_URL", &gateway)]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // Each series' group says whether the copy left it whole (job kube_dr_copy).
    for (target, success) in [("files", "0"), ("forged", "0"), ("app", "1")] {
        let lines = pushed_lines("kube_dr_copy_success", target).await;
        let line = lines
            .iter()
            .find(|l| l.contains("job=\"kube_dr_copy\""))
            .unwrap_or_else(|| panic!("no kube_dr_copy_success for {target}: {lines:?}"));
        assert!(line.ends_with(&format!(" {success}")), "{line}");
    }
    assert!(!pushed_lines("kube_dr_copy_last_success", "app")
        .await
        .is_empty());
    let r = report(&out);
    let refused: Vec<String> = r["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["backup"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        refused,
        vec![
            format!("command/files/{damaged}"),
            format!("command/forged/{forged}")
        ],
        "{r}"
    );
    assert!(
        stderr(&out).contains("damaged at the source"),
        "{}",
        stderr(&out)
    );
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    let copied = std::fs::read_dir(local.path().join("copy/command/files"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect::<Vec<_>>();
    for id in &copied {
        let manifest = local
            .path()
            .join(format!("copy/command/files/{id}/manifest.json"));
        assert_eq!(manifest.exists(), id != &damaged, "{id}");
    }
    assert!(!local
        .path()
        .join(format!("copy/command/forged/{forged}/manifest.json"))
        .exists());
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_killed_mid_part_leaves_nothing_visible_and_a_rerun_finishes() {
    let keys = Keys::generate();
    let source = TestStore::s3();
    // Incompressible: the part takes a moment to copy.
    let out = backup_command(
        &source,
        &keys,
        "big",
        &["head", "-c", "150000000", "/dev/urandom"],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let local = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/copy", local.path().display());
    // SIGTERM first: the upload is aborted and the copy exits within seconds; then SIGKILL,
    // which leaves the temporary file behind. Neither leaves a backup anyone can see.
    let dir = local.path().join(format!("copy/command/big/{id}"));
    for signal in ["TERM", "KILL"] {
        let copying = Watched::spawn(command(
            "worker",
            &[
                "copy",
                "--store",
                source.url(),
                "--to",
                &dest,
                "--log-format",
                "text",
            ],
            &[],
        ));
        // The part's upload is under way once its temporary file appears.
        let started = std::time::Instant::now();
        while !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none() {
            assert!(started.elapsed().as_secs() < 30, "the copy never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        copying.signal(signal);
        let signalled = std::time::Instant::now();
        let (status, _, err) = copying.finish();
        assert!(!status.success(), "{signal}: {err}");
        if signal == "TERM" {
            assert_eq!(status.code(), Some(2), "{err}");
            assert!(
                signalled.elapsed() < std::time::Duration::from_secs(10),
                "still copying {:?} after SIGTERM",
                signalled.elapsed()
            );
        }
        assert!(!dir.join("manifest.json").exists(), "{signal}");
    }
    let out = run("kubectl-dr", &["list", "-o", "json", "--store", &dest], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");

    let out = copy(&source, &dest, &[], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            &id,
            "-i",
            keys.identity.to_str().unwrap(),
            "--store",
            &dest,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The primary store is gone: `restore --all --store <the copy>` rebuilds PostgreSQL from
/// the copy alone, identical, and the command backup restores from it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_works_from_the_copy_when_the_primary_is_gone() {
    let keys = Keys::generate();
    let (source, db, payload) = three_backups(&keys).await;
    let before = pg_fingerprint(&pg_connect(&db).await).await;
    let local = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/copy", local.path().display());
    let out = copy(&source, &dest, &[], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // The primary's objects and the database are gone.
    let primary = source.open().await;
    for object in primary.list("").await.unwrap() {
        primary.delete(&object.key).await.unwrap();
    }
    assert!(source.files().is_empty());
    drop_database(&db).await;

    let to = format!(
        "postgres=postgres://{}@{}:{}",
        svc("PGUSER"),
        svc("PGHOST"),
        svc("PGPORT")
    );
    let state = keys.dir.path().join("state.json");
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "--all",
            "-i",
            keys.identity.to_str().unwrap(),
            "--engine",
            "postgres",
            "--to",
            &to,
            "--yes",
            "--state",
            state.to_str().unwrap(),
            "--store",
            &dest,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(pg_fingerprint(&pg_connect(&db).await).await, before);
    assert_copy_is_whole(&dest, &keys, &[], &payload);
    drop_database(&db).await;
}
