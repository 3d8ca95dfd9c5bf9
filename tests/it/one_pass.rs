//! The one-pass PostgreSQL restore: the part is read once, checked as it streams, and a
//! part damaged anywhere (early, in the middle, in its last 64 KiB, cut at an age chunk
//! boundary) or replaced by another genuine-looking age file leaves the target exactly as it
//! was: a new database is not left behind, an existing one keeps its contents.

use dr_tests::*;

/// A source database whose dump spans many age chunks (about 4 MB of incompressible text,
/// an index for post-data), and a backup of it.
struct Source {
    db: String,
    store: TestStore,
    keys: Keys,
    id: String,
    fingerprint: Vec<(String, i64, String)>,
}

impl Source {
    async fn new() -> Source {
        let db = unique("onepass_src");
        create_database(&db).await;
        let client = pg_connect(&db).await;
        client
            .batch_execute(
                "CREATE TABLE events (id int PRIMARY KEY, body text);
                 INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
                   FROM generate_series(1, 40000) g;
                 CREATE INDEX events_body ON events (body);
                 CREATE SEQUENCE ticket START 500; SELECT nextval('ticket');",
            )
            .await
            .unwrap();
        let fingerprint = pg_fingerprint(&client).await;
        let (store, keys) = (TestStore::s3(), Keys::generate());
        let id = backup_postgres(&store, &keys, "onepass", &db, &[]);
        Source {
            db,
            store,
            keys,
            id,
            fingerprint,
        }
    }

    fn dir(&self) -> String {
        format!("postgres/onepass/{}", self.id)
    }

    fn part_path(&self) -> std::path::PathBuf {
        self.store.part_path(&self.dir())
    }

    fn restore(&self, to: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "restore",
            &self.id,
            "--store",
            self.store.url(),
            "-i",
            self.keys.identity.to_str().unwrap(),
            "--to",
            to,
        ];
        args.extend_from_slice(extra);
        run("kubectl-dr", &args, &[])
    }
}

/// An existing database with its own data, and its fingerprint.
async fn existing_target() -> (String, Vec<(String, i64, String)>) {
    let db = unique("onepass_existing");
    create_database(&db).await;
    let client = pg_connect(&db).await;
    client
        .batch_execute(
            "CREATE TABLE events (id int PRIMARY KEY, body text);
             INSERT INTO events VALUES (1, 'kept'), (2, 'also kept');
             CREATE TABLE local_only (x int); INSERT INTO local_only VALUES (42);",
        )
        .await
        .unwrap();
    let before = pg_fingerprint(&client).await;
    (db, before)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_part_damaged_anywhere_leaves_the_target_as_it_was() {
    let src = Source::new().await;
    let path = src.part_path();
    let good = std::fs::read(&path).unwrap();
    let prefix = drkit::pipeline::age_prefix_len(&good).expect("an age header");
    // age's payload: 64 KiB chunks, each with a 16-byte tag.
    let chunk = 64 * 1024 + 16;
    assert!(
        good.len() > prefix + 20 * chunk,
        "the dump must span many chunks for this test to mean anything ({} bytes)",
        good.len()
    );
    let flipped = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x20;
        b
    };
    let cut_at_chunk = prefix + ((good.len() - prefix) / chunk / 2) * chunk;
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("a byte flipped early", flipped(prefix + 100)),
        ("a byte flipped in the middle", flipped(good.len() / 2)),
        (
            "a byte flipped in the last 64 KiB",
            flipped(good.len() - 300),
        ),
        (
            "a part cut at a chunk boundary",
            good[..cut_at_chunk].to_vec(),
        ),
    ];
    let (existing, before) = existing_target().await;
    for (what, bytes) in &damages {
        std::fs::write(&path, bytes).unwrap();
        let fresh = unique("onepass_new");
        let out = src.restore(&pg_url(&fresh), &[]);
        assert_eq!(code(&out), 1, "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("one pass:"),
            "{what}: the restore did not take the one-pass path: {}",
            stderr(&out)
        );
        assert!(
            !database_exists(&fresh).await,
            "{what}: the database the failed restore created is still there"
        );
        let out = src.restore(&pg_url(&existing), &["--clean", "--yes"]);
        assert_eq!(code(&out), 1, "{what}: {}", stderr(&out));
        assert_eq!(
            pg_fingerprint(&pg_connect(&existing).await).await,
            before,
            "{what}: the existing database changed"
        );
    }

    // The genuine part restores in one pass into both.
    std::fs::write(&path, &good).unwrap();
    let fresh = unique("onepass_new");
    let out = src.restore(&pg_url(&fresh), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("one pass:"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("checking postgres/"),
        "a one-pass restore read the part twice: {}",
        stderr(&out)
    );
    assert_eq!(
        pg_fingerprint(&pg_connect(&fresh).await).await,
        src.fingerprint
    );
    let out = src.restore(&pg_url(&existing), &["--clean", "--yes"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after = pg_fingerprint(&pg_connect(&existing).await).await;
    assert!(
        src.fingerprint.iter().all(|t| after.contains(t)),
        "{after:?}"
    );
    for db in [&fresh, &existing, &src.db] {
        drop_database(db).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_part_is_refused_before_pg_restore_reads_a_byte() {
    let src = Source::new().await;
    // Another genuine backup, same key, same store: a valid age file for the same recipient
    // holding a different dump, which age alone would decrypt without complaint.
    let other_db = unique("onepass_other");
    create_database(&other_db).await;
    pg_connect(&other_db)
        .await
        .batch_execute("CREATE TABLE intruder (x int); INSERT INTO intruder VALUES (1);")
        .await
        .unwrap();
    let other = backup_postgres(&src.store, &src.keys, "other", &other_db, &[]);
    let other_part = src.store.part_path(&format!("postgres/other/{other}"));
    std::fs::copy(&other_part, src.part_path()).unwrap();

    let fresh = unique("onepass_new");
    let out = src.restore(&pg_url(&fresh), &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not start with the age header its manifest recorded"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("pg_restore"),
        "pg_restore was started on a replaced part: {}",
        stderr(&out)
    );
    assert!(!database_exists(&fresh).await);
    drop_database(&other_db).await;
    drop_database(&src.db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_without_a_recorded_header_is_checked_in_a_pass_before() {
    let src = Source::new().await;
    // As a backup made before header_sha256 existed: the manifest without it, re-signed.
    let store = src.store.open().await;
    let b = drkit::catalog::BackupRef {
        engine: "postgres".into(),
        target: "onepass".into(),
        id: src.id.parse().unwrap(),
    };
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            src.store
                .object_path(&format!("{}/manifest.json", src.dir())),
        )
        .unwrap(),
    )
    .unwrap();
    let parts = manifest["parts"].as_array_mut().unwrap();
    assert!(parts[0]["header_sha256"].is_string(), "{parts:?}");
    parts[0].as_object_mut().unwrap().remove("header_sha256");
    let json = serde_json::to_vec_pretty(&manifest).unwrap();
    sign_manifest(store.as_ref(), &b, &json).await;
    store
        .put_bytes(&b.manifest_key(), bytes::Bytes::from(json))
        .await
        .unwrap();

    let fresh = unique("onepass_new");
    let out = src.restore(&pg_url(&fresh), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checking postgres/onepass/") && !stderr(&out).contains("one pass:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg_fingerprint(&pg_connect(&fresh).await).await,
        src.fingerprint
    );
    drop_database(&fresh).await;
    drop_database(&src.db).await;
}
