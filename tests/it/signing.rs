//! Signed manifests against a forger who has exactly what the threat model gives them: the
//! age *public* key (it sits in a ConfigMap) and write access to the bucket. They build a
//! backup the way docs/FORMAT.md describes it (pg_dump, zstd, `age -r`, a matching
//! manifest) with the real command-line tools; `verify` and `restore` refuse it (exit 1,
//! naming the key) and touch nothing. A genuine backup passes, and `minisign -V` checks it
//! by hand as the README says.

use std::process::{Command, Stdio};

use bytes::Bytes;
use dr_tests::*;
use drkit::catalog::{BackupId, BackupRef, Compression, Manifest, Part, TableCount};
use drkit::store::DeleteStore;

/// The number of rows of `table` in database `db`.
async fn count(db: &str, table: &str) -> i64 {
    pg_connect(db)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// `kubectl dr list -o json --include-incomplete` with `env`.
fn list_all(t: &TestStore, env: &[(&str, &str)]) -> serde_json::Value {
    let out = run(
        "kubectl-dr",
        &[
            "list",
            "-o",
            "json",
            "--include-incomplete",
            "--store",
            t.url(),
        ],
        env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A PostgreSQL database with one table of `rows` rows.
async fn database(name: &str, table: &str, rows: i64) {
    create_database(name).await;
    pg_connect(name)
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int); INSERT INTO {table} SELECT generate_series(1, {rows});"
        ))
        .await
        .unwrap();
}

/// What the forger does by hand: `pg_dump -Fc | zstd | age -r RECIPIENT`, uploaded with a
/// manifest that matches it byte for byte. Returns the backup.
async fn forge(store: &dyn DeleteStore, recipient: &str, db: &str) -> (BackupRef, Vec<u8>) {
    // Dated ahead, as a forger would to be `latest`.
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    forge_at(store, recipient, db, at).await
}

/// [`forge`], dated `at`.
async fn forge_at(
    store: &dyn DeleteStore,
    recipient: &str,
    db: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> (BackupRef, Vec<u8>) {
    let pg_dump = format!("{}/pg_dump", svc("DR_PG_BIN_DIR"));
    let script = format!(
        "'{pg_dump}' --format=custom --compress=0 -d '{}' | zstd -q -c | age -r {recipient}",
        pg_url(db)
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .envs(services())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "forging the dump failed");
    let part = out.stdout;
    let b = BackupRef {
        engine: "postgres".into(),
        target: "shop".into(),
        id: BackupId::new(at),
    };
    let file = format!("db-{db}.pgdump.zst.age");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&part))
    };
    let m = Manifest {
        format_version: drkit::catalog::FORMAT_VERSION,
        id: b.id.clone(),
        engine: "postgres".into(),
        target: "shop".into(),
        started_at: b.id.created_at(),
        finished_at: chrono::Utc::now(),
        tool: "worker 0.1.0".into(),
        server_version: "15".into(),
        recipients: vec![recipient.to_string()],
        parts: vec![Part {
            name: format!("db-{db}"),
            file: file.clone(),
            format: "pg_dump-custom".into(),
            compression: Compression::Zstd,
            ciphertext_bytes: part.len() as u64,
            ciphertext_sha256: sha,
            header_sha256: None,
            plaintext_bytes: 0,
            database: Some(db.into()),
            tables: vec![TableCount {
                schema: "public".into(),
                name: "pwned".into(),
                rows: 3,
            }],
            section: None,
            partition: None,
            from: None,
        }],
        facts: Default::default(),
        base: None,
    };
    store
        .put_bytes(&b.part_key(&file), Bytes::from(part))
        .await
        .unwrap();
    let json = serde_json::to_vec_pretty(&m).unwrap();
    store
        .put_bytes(&b.manifest_key(), Bytes::from(json.clone()))
        .await
        .unwrap();
    (b, json)
}

fn restore(
    t: &TestStore,
    keys: &Keys,
    id: &str,
    to_db: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    run(
        "kubectl-dr",
        &[
            "restore",
            id,
            "--store",
            t.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &pg_url(to_db),
            "--yes",
        ],
        env,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_backup_is_refused_and_a_genuine_one_restores() {
    let (t, keys) = (TestStore::local(), Keys::generate());
    let store = t.open().await;
    let (good_db, evil_db) = (unique("sig_good"), unique("sig_evil"));
    database(&good_db, "orders", 500).await;
    database(&evil_db, "pwned", 3).await;
    let genuine = backup_postgres(&t, &keys, "shop", &good_db, &[]);

    // By hand, as the README says: the manifest and its signature, checked with minisign.
    let b = BackupRef {
        engine: "postgres".into(),
        target: "shop".into(),
        id: genuine.parse().unwrap(),
    };
    let by_hand = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(&suite_signer().pub_file)
        .arg("-m")
        .arg(t.object_path(&b.manifest_key()))
        .output()
        .expect("minisign (Debian package, installed by scripts/services.sh)");
    let said = String::from_utf8_lossy(&by_hand.stdout).into_owned();
    assert!(by_hand.status.success(), "{said}");
    assert!(
        said.contains("Signature and comment signature verified"),
        "{said}"
    );
    assert!(
        said.contains(&format!("backup:postgres/shop/{genuine}")),
        "{said}"
    );

    // And the other way: what the minisign tool signs, the readers accept.
    let doc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(doc.path(), b"{\"signed by\":\"the tool\"}").unwrap();
    let signed = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(&suite_signer().key_file)
        .arg("-m")
        .arg(doc.path())
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let sig = std::fs::read(format!("{}.minisig", doc.path().display())).unwrap();
    let trusted = drkit::catalog::Signers::parse(&suite_signer().public, "test").unwrap();
    assert!(matches!(
        trusted.judge(&std::fs::read(doc.path()).unwrap(), &[Some(&sig)]),
        drkit::catalog::Signature::Valid { .. }
    ));

    // 1. No signature at all (the forger cannot sign), dated after the genuine backup.
    let (unsigned, json) = forge(store.as_ref(), &keys.recipient, &evil_db).await;
    // 2. The same forgery signed with the forger's own minisign key.
    let (by_stranger, json2) = forge(store.as_ref(), &keys.recipient, &evil_db).await;
    let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let stranger_key =
        drkit::catalog::SigningKey::parse(&stranger.sk.to_box(None).unwrap().into_string())
            .unwrap();
    store
        .put_bytes(
            &by_stranger.signature_key(),
            Bytes::from(stranger_key.sign(&json2, &by_stranger).unwrap()),
        )
        .await
        .unwrap();
    // 3. A genuine signature (the worker's, copied from the real backup) beside it.
    let (copied, _) = forge(store.as_ref(), &keys.recipient, &evil_db).await;
    std::fs::copy(
        t.object_path(&b.signature_key()),
        t.object_path(&copied.signature_key()),
    )
    .unwrap();
    assert!(!json.is_empty());

    let cases = [
        (&unsigned, "no signature".to_string()),
        (
            &by_stranger,
            format!("signed by key {}", stranger_key.key_id()),
        ),
        (&copied, "INVALID signature".to_string()),
    ];
    for (forged, why) in &cases {
        let id = forged.id.to_string();
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
        assert_eq!(code(&out), 1, "{why}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(why.as_str()),
            "{why}: {}",
            stderr(&out)
        );
        let target = unique("sig_target");
        let out = restore(&t, &keys, &id, &target, &[]);
        assert_eq!(code(&out), 1, "{why}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(why.as_str()),
            "{why}: {}",
            stderr(&out)
        );
        assert!(
            !database_exists(&target).await,
            "{why}: the target was created"
        );
        // --allow-unsigned is for old unsigned backups only: a bad or foreign signature
        // stays refused.
        if forged.id != unsigned.id {
            let out = restore(&t, &keys, &id, &target, &[("DR_ALLOW_UNSIGNED", "true")]);
            assert_eq!(code(&out), 1, "{why}: {}", stderr(&out));
            assert!(
                !database_exists(&target).await,
                "{why}: the target was created"
            );
        }
    }

    // `list` says which is which; with signers, the forgeries are damaged.
    let rows = list_json(&t);
    let row = |id: &BackupId| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&b.id)["status"], "complete");
    assert_eq!(row(&b.id)["signature"]["state"], "valid");
    assert_eq!(
        row(&b.id)["signature"]["key_id"],
        drkit::catalog::SigningKey::from_file(&suite_signer().key_file)
            .unwrap()
            .key_id()
    );
    assert_eq!(row(&unsigned.id)["signature"]["state"], "unsigned");
    assert_eq!(row(&by_stranger.id)["signature"]["state"], "unknown_key");
    assert_eq!(row(&copied.id)["signature"]["state"], "invalid");
    for forged in [&unsigned, &by_stranger, &copied] {
        assert_eq!(row(&forged.id)["status"], "damaged");
    }

    // `latest` passes over the newer forgeries and restores the genuine backup.
    let target = unique("sig_latest");
    let out = restore(&t, &keys, "latest", &target, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("skipping a damaged or untrusted backup"),
        "{}",
        stderr(&out)
    );
    let rows = count(&target, "orders").await;
    assert_eq!(rows, 500);
    assert!(
        pg_connect(&target)
            .await
            .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'pwned'", &[])
            .await
            .unwrap()
            .is_none(),
        "forged data reached the target"
    );
    // Without a signer configured, nothing is trusted by accident.
    let out = run(
        "kubectl-dr",
        &["verify", "latest", "--store", t.url()],
        &[("DR_SIGNERS", "")],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--signer"), "{}", stderr(&out));
    for db in [good_db, evil_db, target] {
        drop_database(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_unsigned_never_lets_an_unsigned_forgery_push_out_signed_backups() {
    let (t, keys) = (TestStore::local(), Keys::generate());
    let store = t.open().await;
    let (good_db, evil_db, old_db) = (unique("au_good"), unique("au_evil"), unique("au_old"));
    database(&good_db, "orders", 200).await;
    database(&evil_db, "pwned", 3).await;
    database(&old_db, "legacy", 7).await;
    // A backup from before signing existed, then the first signed one, then a forgery.
    let (old, _) = forge_at(
        store.as_ref(),
        &keys.recipient,
        &old_db,
        chrono::Utc::now() - chrono::Duration::hours(2),
    )
    .await;
    let genuine = backup_postgres(&t, &keys, "shop", &good_db, &[]);
    let (forged, _) = forge(store.as_ref(), &keys.recipient, &evil_db).await;
    let allow = [("DR_ALLOW_UNSIGNED", "true")];

    // `latest` passes over the forgery and restores the signed backup.
    let target = unique("au_latest");
    let out = restore(&t, &keys, "latest", &target, &allow);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&genuine),
        "latest is not the signed backup: {}",
        stderr(&out)
    );
    let restored = count(&target, "orders").await;
    assert_eq!(restored, 200);

    // list: the old unsigned backup counts, the forgery is damaged, with the reason.
    let rows = list_all(&t, &allow);
    let row = |id: &BackupId| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {rows}"))
    };
    assert_eq!(row(&old.id)["status"], "complete", "{rows}");
    assert_eq!(row(&forged.id)["status"], "damaged", "{rows}");

    // Retention: the forgery counts for nothing and is never deleted; keep-last 1 keeps
    // the signed backup and lets the pre-signing one go.
    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            t.url(),
            "--target",
            "shop",
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &allow,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows = list_all(&t, &allow);
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&genuine.as_str()),
        "the signed backup was pruned: {rows}"
    );
    assert!(
        ids.contains(&forged.id.as_str()),
        "the forgery was deleted: {rows}"
    );
    assert!(
        !ids.contains(&old.id.as_str()),
        "keep-last 1 kept 2: {rows}"
    );

    // Named explicitly, an unsigned backup is still usable with the flag.
    let out = run(
        "kubectl-dr",
        &["verify", forged.id.as_str(), "--store", t.url()],
        &allow,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for db in [good_db, evil_db, old_db, target] {
        drop_database(&db).await;
    }
}
