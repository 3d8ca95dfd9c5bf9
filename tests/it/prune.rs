//! Pruning on the real S3 server through the binaries: only the selected target is touched,
//! a crash between manifest and parts is repaired, a running backup survives, bad flags
//! delete nothing.

use bytes::Bytes;
use chrono::{Duration, Utc};
use dr_tests::*;
use drkit::store::DeleteStore;

/// A synthetic backup dated `age` ago.
async fn synthetic(
    store: &dyn DeleteStore,
    target: &str,
    age: Duration,
    complete: bool,
) -> drkit::catalog::BackupRef {
    write_synthetic_backup(store, target, Utc::now() - age, complete).await
}

async fn keys_of(store: &dyn DeleteStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prunes_one_target_and_nothing_else() {
    let t = TestStore::s3();
    let store = t.open().await;
    let mut a = Vec::new();
    for day in (0..6).rev() {
        a.push(
            synthetic(
                store.as_ref(),
                "a",
                Duration::days(day) + Duration::hours(1),
                true,
            )
            .await,
        );
        synthetic(
            store.as_ref(),
            "b",
            Duration::days(day) + Duration::hours(1),
            true,
        )
        .await;
    }
    store
        .put_bytes("unrelated/notes.txt", Bytes::from_static(b"keep me"))
        .await
        .unwrap();
    let b_before = keys_of(store.as_ref(), "postgres/b/").await;

    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            t.url(),
            "--target",
            "a",
            "--keep-last",
            "2",
            // Four of six: more than the default --max-delete 50% allows.
            "--max-delete",
            "100%",
        ],
        &[],
    );
    assert!(out.status.success());
    let left = keys_of(store.as_ref(), "postgres/a/").await;
    let expected: Vec<String> = a[4..]
        .iter()
        .flat_map(|b| {
            [
                b.part_key("db-app.pgdump.zst.age"),
                b.manifest_key(),
                b.signature_key(),
            ]
        })
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(
        left, expected_sorted,
        "target a keeps its two newest backups"
    );
    assert_eq!(
        keys_of(store.as_ref(), "postgres/b/").await,
        b_before,
        "target b was touched"
    );
    assert_eq!(
        keys_of(store.as_ref(), "unrelated/").await,
        vec!["unrelated/notes.txt"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_manifest_and_parts_is_repaired() {
    let t = TestStore::s3();
    let store = t.open().await;
    let old = synthetic(store.as_ref(), "c", Duration::days(3), true).await;
    synthetic(store.as_ref(), "c", Duration::hours(2), true).await;
    // The earlier prune died after deleting the manifest: the parts are left.
    store.delete(&old.manifest_key()).await.unwrap();
    let out = run(
        "worker",
        &["prune", "--store", t.url(), "--keep-last", "5"],
        &[],
    );
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("incomplete for 3d"),
        "{}",
        stderr(&out)
    );
    assert!(
        keys_of(store.as_ref(), &format!("{}/", old.dir()))
            .await
            .is_empty(),
        "orphaned parts remain"
    );
    // The newer backup: its part, signature and manifest.
    assert_eq!(keys_of(store.as_ref(), "postgres/c/").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_backup_survives_a_concurrent_prune() {
    let (db1, db2) = (unique("prune_first"), unique("prune_slow"));
    for db in [&db1, &db2] {
        create_database(db).await;
        pg_connect(db)
            .await
            .batch_execute("CREATE TABLE t AS SELECT generate_series(1, 1000) x")
            .await
            .unwrap();
    }
    let (t, keys) = (TestStore::s3(), Keys::generate());
    let store = t.open().await;
    let older = synthetic(store.as_ref(), "run", Duration::days(1), true).await;
    // The older backup's own objects (part, signature, manifest): the running backup's
    // first part is the one after these.
    let before = keys_of(store.as_ref(), "postgres/run/").await.len();
    // pg_dump of the second database stalls, so the first part sits in the store without a
    // manifest while prune runs.
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n[ \"$PGDATABASE\" = {db2} ] && sleep 4\nexec {}/pg_dump \"$@\"\n",
            svc("DR_PG_BIN_DIR")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (url, recipient, b) = (
        t.url().to_string(),
        keys.recipient.clone(),
        bin.path().to_str().unwrap().to_string(),
    );
    let (d1, d2) = (db1.clone(), db2.clone());
    let backup = tokio::task::spawn_blocking(move || {
        run(
            "worker",
            &[
                "backup", "postgres", "--target", "run", "-d", &d1, "-d", &d2, "--store", &url,
                "-r", &recipient,
            ],
            &[("DR_PG_BIN_DIR", &b)],
        )
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while keys_of(store.as_ref(), "postgres/run/").await.len() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "first part never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = run(
        "worker",
        &["prune", "--store", t.url(), "--keep-last", "1"],
        &[],
    );
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("may still be running"),
        "{}",
        stderr(&out)
    );
    let out = backup.await.unwrap();
    assert!(out.status.success(), "the backup was disturbed by prune");
    let id = stdout(&out).trim().to_string();
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            &id,
            "--store",
            t.url(),
            "-i",
            keys.identity.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "the backup that ran during prune does not verify"
    );
    // The older backup was the newest complete one when prune ran: kept.
    assert!(!keys_of(store.as_ref(), &format!("{}/", older.dir()))
        .await
        .is_empty());
    drop_database(&db1).await;
    drop_database(&db2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flags_delete_nothing() {
    let t = TestStore::s3();
    let store = t.open().await;
    for day in 1..4 {
        synthetic(store.as_ref(), "d", Duration::days(day), true).await;
    }
    let before = keys_of(store.as_ref(), "").await;
    let out = run(
        "worker",
        &["prune", "--store", t.url(), "--keep-within", "banana"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("banana"), "{}", stderr(&out));
    let out = run("worker", &["prune", "--store", t.url()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no keep rule given"),
        "{}",
        stderr(&out)
    );
    let out = run(
        "kubectl-dr",
        &["prune", "--store", t.url(), "--keep-last", "0"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        "kubectl-dr",
        &[
            "prune",
            "--store",
            t.url(),
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "without a terminal, deleting needs --yes"
    );
    assert!(stderr(&out).contains("--yes"));
    assert_eq!(keys_of(store.as_ref(), "").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_list_show_the_decisions() {
    let t = TestStore::s3();
    let store = t.open().await;
    let newest = synthetic(store.as_ref(), "e", Duration::hours(1), true).await;
    let oldest = synthetic(store.as_ref(), "e", Duration::days(10), true).await;
    let before = keys_of(store.as_ref(), "").await;
    let out = run(
        "kubectl-dr",
        &[
            "prune",
            "--store",
            t.url(),
            "--keep-within",
            "2d",
            "--dry-run",
            "-o",
            "json",
        ],
        &[],
    );
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decided: Vec<(String, bool)> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        decided.contains(&(newest.id.to_string(), true))
            && decided.contains(&(oldest.id.to_string(), false)),
        "{decided:?}"
    );
    assert_eq!(
        keys_of(store.as_ref(), "").await,
        before,
        "dry run deleted something"
    );

    let out = run(
        "kubectl-dr",
        &["list", "--store", t.url(), "--keep-within", "2d"],
        &[],
    );
    assert!(
        stdout(&out).contains("RETENTION")
            && stdout(&out).contains("DELETE")
            && stdout(&out).contains("within 2d"),
        "{}",
        stdout(&out)
    );

    let out = run(
        "kubectl-dr",
        &["prune", "--store", t.url(), "--keep-within", "2d", "--yes"],
        &[],
    );
    assert!(out.status.success());
    let out = run(
        "kubectl-dr",
        &["list", "--store", t.url(), "-o", "json"],
        &[],
    );
    let left: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&left), vec![newest.id.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_unfinished_uploads_are_aborted() {
    // The local store's unfinished uploads are its `.partial-` files.
    let t = TestStore::local();
    let store = t.open().await;
    synthetic(store.as_ref(), "f", Duration::hours(1), true).await;
    let old =
        t.object_path("postgres/f/20261101T000000Z-aaaaaa/db-app.pgdump.zst.age.partial-deadbeef");
    let fresh =
        t.object_path("postgres/f/20261122T000000Z-bbbbbb/db-app.pgdump.zst.age.partial-cafef00d");
    for path in [&old, &fresh] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"half a part").unwrap();
    }
    let three_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(three_days_ago)
        .unwrap();

    let out = run(
        "kubectl-dr",
        &["prune", "--store", t.url(), "--keep-last", "1", "--dry-run"],
        &[],
    );
    assert!(
        stderr(&out).contains("1 unfinished upload(s) past --grace"),
        "{}",
        stderr(&out)
    );
    assert!(old.exists(), "dry run aborted an upload");
    let out = run(
        "worker",
        &["prune", "--store", t.url(), "--keep-last", "1"],
        &[],
    );
    assert!(out.status.success());
    assert!(!old.exists(), "a stale upload survived");
    assert!(
        fresh.exists(),
        "an upload younger than --grace (maybe running) was aborted"
    );

    // s3s-fs cannot list multipart uploads: prune still works and says what to do instead.
    let t = TestStore::s3();
    synthetic(t.open().await.as_ref(), "f", Duration::hours(1), true).await;
    let out = run(
        "worker",
        &["prune", "--store", t.url(), "--keep-last", "1"],
        &[],
    );
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("AbortIncompleteMultipartUpload"),
        "{}",
        stderr(&out)
    );
}
