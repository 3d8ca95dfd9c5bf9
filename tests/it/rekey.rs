//! `kubectl dr rekey` on the real S3 server: after a rekey the old identity no longer opens
//! the backups and the new one restores them with equal contents; a rekey killed mid-way
//! leaves every backup restorable with one key or the other and `list` consistent, and a
//! rerun finishes it; a reader in the middle of a rekey's signature swap still verifies.

use dr_tests::*;
use sha2::{Digest, Sha256};

fn rekey(t: &TestStore, old: &Keys, new: &Keys, extra: &[&str]) -> std::process::Command {
    let mut args = vec![
        "rekey",
        "--store",
        t.url(),
        "-i",
        old.identity.to_str().unwrap(),
        "-r",
        &new.recipient,
        "--yes",
    ];
    args.extend_from_slice(extra);
    command("kubectl-dr", &args, &[])
}

fn verify(t: &TestStore, id: &str, keys: &Keys) -> i32 {
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            id,
            "--store",
            t.url(),
            "-i",
            keys.identity.to_str().unwrap(),
        ],
        &[],
    );
    code(&out)
}

/// The objects of one backup's directory, by file name.
async fn files_of(t: &TestStore, dir: &str) -> Vec<String> {
    let store = t.open().await;
    store
        .list(&format!("{dir}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn ids(t: &TestStore) -> Vec<(String, String)> {
    list_json(t)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}/{}",
                    r["engine"].as_str().unwrap(),
                    r["target"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                ),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rekey_only_the_new_key_restores_and_contents_are_equal() {
    let (t, old, new) = (TestStore::s3(), Keys::generate(), Keys::generate());
    let db = unique("rekey_src");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 30000) g;")
        .await
        .unwrap();
    backup_postgres(&t, &old, "rk", &db, &[]);
    let out = backup_command(&t, &old, "rk", &["sh", "-c", "seq 1 400000"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = ids(&t);
    let mut cmd = rekey(&t, &old, &new, &["--all"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("rekeyed ").count(), 2, "{err}");

    for (dir, id) in &before {
        assert_eq!(verify(&t, id, &old), 2, "{dir}: the old key still opens it");
        assert_eq!(
            verify(&t, id, &new),
            0,
            "{dir}: the new key does not open it"
        );
        let files = files_of(&t, dir).await;
        assert!(
            files.iter().any(|f| f == "manifest.json")
                && files.iter().any(|f| f == "manifest.json.minisig"),
            "{files:?}"
        );
        let parts: Vec<&String> = files.iter().filter(|f| f.ends_with(".age")).collect();
        assert!(
            !parts.is_empty() && parts.iter().all(|f| f.contains(".k")),
            "old parts left: {files:?}"
        );
        assert_eq!(files.len(), parts.len() + 2, "{files:?}");
    }
    let rows = list_json(&t);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "complete" && r["signature"]["state"] == "valid"),
        "{rows}"
    );

    // Contents: the command's output byte for byte, the table's rows by hash.
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "command",
            "--store",
            t.url(),
            "-i",
            new.identity.to_str().unwrap(),
            "--to",
            "-",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let expected: String = (1..=400000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        Sha256::digest(&out.stdout),
        Sha256::digest(expected.as_bytes())
    );
    let target = unique("rekey_dst");
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "postgres",
            "--store",
            t.url(),
            "-i",
            new.identity.to_str().unwrap(),
            "--to",
            &pg_url(&target),
            "--yes",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let hash = |db: String| async move {
        let row = pg_connect(&db)
            .await
            .query_one(
                "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(hash(db.clone()).await, hash(target.clone()).await);

    // A second run has nothing to do.
    let out = rekey(&t, &old, &new, &["--all"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err.matches("already encrypted to these recipients").count(),
        2,
        "{err}"
    );
    // A signing key the readers do not trust is refused before anything changes.
    let stranger = tempfile::tempdir().unwrap();
    let key = stranger.path().join("k");
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    std::fs::write(&key, kp.sk.to_box(None).unwrap().into_string()).unwrap();
    let out = rekey(
        &t,
        &new,
        &old,
        &["--all", "--signing-key", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not among the trusted signers"));
    for (_, id) in &before {
        assert_eq!(verify(&t, id, &new), 0);
    }
    drop_database(&db).await;
    drop_database(&target).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rekey_killed_mid_way_leaves_every_backup_restorable_and_a_rerun_finishes() {
    let (t, old, new) = (TestStore::s3(), Keys::generate(), Keys::generate());
    for _ in 0..3 {
        // Incompressible, so each part takes a moment to re-encrypt and upload.
        let out = backup_command(
            &t,
            &old,
            "killed",
            &["head", "-c", "25000000", "/dev/urandom"],
            &[],
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let before = ids(&t);
    let mut rk = Watched::spawn(rekey(&t, &old, &new, &["--all", "--no-progress"]));
    assert!(rk.until("==> 1/3 rekeyed"), "{}", rk.stderr);
    rk.kill();
    let (status, _, err) = rk.finish();
    assert!(!status.success(), "{err}");

    // list: the same three backups, complete, validly signed, whatever state each is in.
    let rows = list_json(&t);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["status"] == "complete" && r["signature"]["state"] == "valid"),
        "{rows:?}"
    );
    // `rekey --all` goes newest first (an incremental backup before its base).
    let (first, last) = (&before[2].1, &before[0].1);
    assert_eq!(verify(&t, first, &new), 0, "the finished backup");
    assert_eq!(verify(&t, first, &old), 2);
    assert_eq!(verify(&t, last, &old), 0, "a backup not reached yet");
    let middle = &before[1].1;
    assert!(
        verify(&t, middle, &old) == 0 || verify(&t, middle, &new) == 0,
        "the backup being rekeyed opens with neither key"
    );

    let out = rekey(&t, &old, &new, &["--all"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    for (dir, id) in &before {
        assert_eq!(verify(&t, id, &new), 0, "{dir}");
        assert_eq!(verify(&t, id, &old), 2, "{dir}");
        let files = files_of(&t, dir).await;
        assert_eq!(files.len(), 3, "leftovers of the killed run: {files:?}");
    }
}

/// Between a rekey's two writes (new signature, then new manifest), the old manifest sits
/// beside a signature that is not its own; the old one, kept as `.prev`, still vouches.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_in_the_middle_of_the_signature_swap_still_verifies() {
    let (t, keys) = (TestStore::local(), Keys::generate());
    let out = backup_command(&t, &keys, "swap", &["echo", "hello"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let b = drkit::catalog::BackupRef {
        engine: "command".into(),
        target: "swap".into(),
        id: id.parse().unwrap(),
    };
    let store = t.open().await;
    let sig = std::fs::read(t.object_path(&b.signature_key())).unwrap();
    std::fs::write(t.object_path(&b.previous_signature_key()), &sig).unwrap();
    // The signature of the manifest-to-be.
    sign_manifest(store.as_ref(), &b, b"{\"the next manifest\":1}").await;
    assert_eq!(verify(&t, &id, &keys), 0);
    // Without the old signature it is refused: the fallback is what carries it.
    std::fs::remove_file(t.object_path(&b.previous_signature_key())).unwrap();
    let out = run("kubectl-dr", &["verify", &id, "--store", t.url()], &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("INVALID signature"),
        "{}",
        stderr(&out)
    );

    // A rekey started from the interrupted swap (it keeps `.prev`, the signature that
    // vouches, not the stray one, for its own swap) finishes on the new key and tidies.
    std::fs::write(t.object_path(&b.previous_signature_key()), &sig).unwrap();
    let new = Keys::generate();
    let out = rekey(&t, &keys, &new, &[&id]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(verify(&t, &id, &new), 0);
    assert_eq!(files_of(&t, &b.dir()).await.len(), 3);
}

/// A rekey killed while it wrote a part leaves an unfinished upload that listing does not
/// show (here the local store's `.partial-` file, on S3 a multipart upload): the rerun that
/// finds the backup done removes it and counts it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_removes_the_partial_uploads_of_a_killed_rekey() {
    let (t, old, new) = (TestStore::local(), Keys::generate(), Keys::generate());
    let out = backup_command(&t, &old, "partial", &["echo", "hello"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = rekey(&t, &old, &new, &["latest"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (dir, id) = ids(&t).remove(0);
    let partial = t.object_path(&format!(
        "{dir}/stdout.out.zst.k0a1b2c.age.partial-deadbeef"
    ));
    std::fs::write(&partial, vec![7u8; 1 << 20]).unwrap();

    let out = rekey(&t, &old, &new, &["latest"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 leftover object(s) removed"), "{err}");
    assert!(!partial.exists(), "the partial upload is still there");
    assert_eq!(verify(&t, &id, &new), 0);
}
