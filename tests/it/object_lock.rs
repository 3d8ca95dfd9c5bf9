//! Object Lock on an S3 implementation that enforces it (moto, started by
//! scripts/services.sh): backups written with `--object-lock` (or into a bucket with a
//! default retention rule) are held, prune reports them as held and deletes them only
//! after their date, and it never leaves a delete marker on a held object. Also the
//! stale multipart-upload cleanup, which s3s-fs cannot list, and a rekey refused while the
//! lock holds.
//!
//! What moto does not prove: it ignores the lock headers of CreateMultipartUpload (so a
//! multipart object is not locked there; the headers are sent, and accepted), it accepts
//! writes to a locked bucket without any checksum (so it cannot show that the CRC32 the
//! worker sends is what S3 requires), and it reports every multipart upload as started in
//! 2010 (so prune's --grace for young uploads cannot be exercised on it).

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{
    DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
    ObjectLockRule,
};
use dr_tests::*;

pub(crate) fn moto() -> String {
    svc("DR_TEST_MOTO_URL")
}

/// A fresh bucket with Object Lock enabled (and so versioning), optionally with a default
/// retention of one day.
pub(crate) async fn locked_bucket(default_retention: bool) -> String {
    let bucket = unique("lock").replace('_', "-");
    let s3 = s3_client(&moto());
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create bucket");
    if default_retention {
        s3.put_object_lock_configuration()
            .bucket(&bucket)
            .object_lock_configuration(
                ObjectLockConfiguration::builder()
                    .object_lock_enabled(ObjectLockEnabled::Enabled)
                    .rule(
                        ObjectLockRule::builder()
                            .default_retention(
                                DefaultRetention::builder()
                                    .mode(ObjectLockRetentionMode::Governance)
                                    .days(1)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("default retention");
    }
    bucket
}

/// Backup ids have one-second resolution (then a random suffix): a backup meant to be
/// newer must start in a later second.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

fn on_moto(args: &[&str]) -> std::process::Output {
    run(args[0], &args[1..], &[("AWS_ENDPOINT_URL", &moto())])
}

/// `worker backup command` of `script`'s output into `store`, with `extra` flags.
fn backup(store: &str, keys: &Keys, script: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "worker", "backup", "command", "--target", "locked", "--store", store, "-r",
    ];
    args.push(&keys.recipient);
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", script]);
    let out = on_moto(&args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

async fn keys_under(bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3_client(&moto())
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

async fn delete_markers(bucket: &str) -> usize {
    s3_client(&moto())
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .delete_markers()
        .len()
}

/// The worker's prune keeping one backup, with nothing to stop it deleting the rest.
fn prune_keeping_one(store: &str) -> std::process::Output {
    let out = on_moto(&[
        "worker",
        "prune",
        "--store",
        store,
        "--keep-last",
        "1",
        "--max-delete",
        "100%",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    out
}

fn prune_plan(store: &str) -> serde_json::Value {
    let out = on_moto(&[
        "kubectl-dr",
        "prune",
        "--store",
        store,
        "--keep-last",
        "1",
        "--max-delete",
        "100%",
        "--dry-run",
        "-o",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_backup_is_held_by_prune_until_its_retention_ends() {
    let bucket = locked_bucket(false).await;
    let store = format!("s3://{bucket}/dr");
    let keys = Keys::generate();
    let lock = ["--object-lock", "governance", "--retain", "12s"];
    let started = Instant::now();
    // 12 MiB of noise: stored as a multipart upload (8 MiB parts), with the lock headers.
    let old = backup(&store, &keys, "head -c 12582912 /dev/urandom", &lock);
    next_second().await;
    let new = backup(&store, &keys, "echo newer", &lock);

    // Every single-PUT object is locked as asked: the manifest, its signature.
    let s3 = s3_client(&moto());
    let dir = format!("dr/command/locked/{old}/");
    for file in ["manifest.json", "manifest.json.minisig"] {
        let head = s3
            .head_object()
            .bucket(&bucket)
            .key(format!("{dir}{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{file}"
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        let now = chrono::Utc::now().timestamp();
        assert!(
            (now..=now + 13).contains(&until),
            "{file}: until {until}, now {now}"
        );
    }
    // verify and restore read locked objects like any others.
    let out = on_moto(&[
        "kubectl-dr",
        "verify",
        &old,
        "--store",
        &store,
        "-i",
        keys.identity.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // The policy deletes the older backup; the lock keeps it, and prune says so.
    let plan = prune_plan(&store);
    let item = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == old.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["keep"], true, "{item}");
    assert_eq!(item["held"]["mode"], "GOVERNANCE", "{item}");
    assert!(item["held"]["until"].is_string(), "{item}");
    let out = prune_keeping_one(&store);
    assert!(
        stderr(&out).contains("held by object lock"),
        "{}",
        stderr(&out)
    );
    let left = keys_under(&bucket, &dir).await;
    assert_eq!(left.len(), 3, "the held backup lost objects: {left:?}");
    assert_eq!(
        delete_markers(&bucket).await,
        0,
        "prune tried a delete the lock forbids (a delete marker hides a held backup)"
    );

    // A rekey could not remove the old parts: refused, with the date, nothing changed.
    let other = Keys::generate();
    let out = on_moto(&[
        "kubectl-dr",
        "rekey",
        &old,
        "--store",
        &store,
        "-i",
        keys.identity.to_str().unwrap(),
        "-r",
        &other.recipient,
        "--yes",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("NOT rekeyed")
            && stderr(&out).contains("object lock (GOVERNANCE) until"),
        "{}",
        stderr(&out)
    );
    assert_eq!(keys_under(&bucket, &dir).await, left);

    // After the date, the same prune deletes it; the newer one stays.
    let wait = Duration::from_secs(14).saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    prune_keeping_one(&store);
    assert!(keys_under(&bucket, &dir).await.is_empty());
    assert_eq!(
        keys_under(&bucket, &format!("dr/command/locked/{new}/"))
            .await
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_with_default_retention_works_without_flags() {
    let bucket = locked_bucket(true).await;
    let store = format!("s3://{bucket}/dr");
    let keys = Keys::generate();
    let old = backup(&store, &keys, "echo first", &[]);
    next_second().await;
    backup(&store, &keys, "echo second", &[]);
    let plan = prune_plan(&store);
    let item = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == old.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["keep"], true, "{item}");
    let until: chrono::DateTime<chrono::Utc> =
        item["held"]["until"].as_str().unwrap().parse().unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(23) && left <= chrono::Duration::days(1),
        "held for {left}"
    );
    // --object-lock without --retain is a usage error, before anything is written.
    let out = on_moto(&[
        "worker",
        "backup",
        "command",
        "--target",
        "locked",
        "--store",
        &store,
        "-r",
        &keys.recipient,
        "--object-lock",
        "compliance",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--retain"), "{}", stderr(&out));
    // And a local store cannot lock.
    let dir = tempfile::tempdir().unwrap();
    let out = on_moto(&[
        "worker",
        "backup",
        "command",
        "--target",
        "locked",
        "--store",
        &format!("file://{}", dir.path().display()),
        "-r",
        &keys.recipient,
        "--object-lock",
        "compliance",
        "--retain",
        "1d",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs an S3 store"),
        "{}",
        stderr(&out)
    );
}

/// A worker killed in the middle of a multipart upload leaves the upload behind (invisible
/// to listings, but paid for); prune aborts it. moto lists multipart uploads, s3s-fs does not.
#[tokio::test(flavor = "multi_thread")]
async fn prune_aborts_the_upload_a_killed_worker_left() {
    let bucket = locked_bucket(false).await;
    let store = format!("s3://{bucket}/dr");
    let keys = Keys::generate();
    backup(&store, &keys, "echo kept", &[]);
    let mut worker = command(
        "worker",
        &[
            "backup",
            "command",
            "--target",
            "locked",
            "--store",
            &store,
            "-r",
            &keys.recipient,
            "--compression",
            "none",
            "--",
            "sh",
            "-c",
            "head -c 10485760 /dev/urandom; sleep 600",
        ],
        &[("AWS_ENDPOINT_URL", &moto())],
    )
    .spawn()
    .unwrap();
    let s3 = s3_client(&moto());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let uploads = s3
            .list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
        if !uploads.uploads().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never started its upload"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    let out = on_moto(&[
        "kubectl-dr",
        "list",
        "--all",
        "--store",
        &store,
        "-o",
        "json",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "incomplete"),
        "{rows}"
    );
    let out = on_moto(&["worker", "prune", "--store", &store, "--keep-last", "5"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("aborted unfinished upload"),
        "{}",
        stderr(&out)
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

/// `worker copy --object-lock` into a locked bucket on another server and account: every
/// object of the copy is locked as asked, and the copy keeps its own retention: its prune
/// holds the locked copy, while the primary's prune, with its own policy, deletes there.
#[tokio::test(flavor = "multi_thread")]
async fn copies_are_locked_and_each_store_prunes_by_its_own_policy() {
    let keys = Keys::generate();
    let source = TestStore::s3();
    let mut ids = Vec::new();
    for n in 0..2 {
        let out = backup_command(&source, &keys, "locked", &["echo", &n.to_string()], &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
        next_second().await;
    }
    let bucket = locked_bucket(false).await;
    let dest = format!("s3://{bucket}/copy");
    let moto = moto();
    let copy_env = [
        ("DR_COPY_AWS_ENDPOINT_URL", moto.as_str()),
        ("DR_COPY_AWS_ACCESS_KEY_ID", "second"),
        ("DR_COPY_AWS_SECRET_ACCESS_KEY", "account"),
    ];
    let out = run(
        "worker",
        &[
            "copy",
            "--store",
            source.url(),
            "--to",
            &dest,
            "--object-lock",
            "governance",
            "--retain",
            "1h",
        ],
        &copy_env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s3 = s3_client(&moto);
    for id in &ids {
        for file in [
            "manifest.json",
            "manifest.json.minisig",
            "stdout.out.zst.age",
        ] {
            let head = s3
                .head_object()
                .bucket(&bucket)
                .key(format!("copy/command/locked/{id}/{file}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{id}/{file}: {e:?}"));
            assert_eq!(
                head.object_lock_mode().map(|m| m.as_str()),
                Some("GOVERNANCE"),
                "{id}/{file}"
            );
            let until = head.object_lock_retain_until_date().unwrap().secs();
            let now = chrono::Utc::now().timestamp();
            assert!(
                (now + 3000..=now + 3601).contains(&until),
                "{file}: until {until}, now {now}"
            );
        }
    }
    // The copy's prune: the policy would delete the older one, the lock holds it.
    let out = prune_keeping_one(&dest);
    assert!(
        stderr(&out).contains("held by object lock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(keys_under(&bucket, "copy/command/locked/").await.len(), 6);
    // The primary's prune, with its own policy, deletes at the primary only.
    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            source.url(),
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let left: Vec<String> = list_json(&source)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[1].clone()]);
    assert_eq!(keys_under(&bucket, "copy/command/locked/").await.len(), 6);
}
