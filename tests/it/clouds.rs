//! The engines on the Azure Blob and GCS stores, against the clouds' own emulators
//! (Azurite, fake-gcs-server), through the real binaries: PostgreSQL, ClickHouse 26 and a
//! command are backed up, listed, verified (with the key and the signer), restored identical
//! and pruned; a damaged part is named by verify (exit 1) and refused by restore; a store
//! that runs out of space mid-upload (the faulty front answering 507) fails the backup with
//! nothing visible; a front that loses answers and resets connections still gives backups
//! that are in the store exactly when they say so; `worker copy` copies into both.

use dr_tests::*;

use crate::clickhouse::Server;
use crate::faulty_s3::Front;

/// `kubectl-dr ARGS… --store STORE` with `env`.
fn dr_on(store: &TestStore, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    // Before the arguments: a `--` among them ends the options.
    let mut all = vec![args[0], "--store", store.url()];
    all.extend_from_slice(&args[1..]);
    run("kubectl-dr", &all, env)
}

/// `kubectl-dr restore SELECTOR… -i IDENTITY --to-command sh -c 'cat > FILE'` on `store`.
fn restore_to_file(
    store: &TestStore,
    selector: &[&str],
    identity: &str,
    file: &std::path::Path,
) -> std::process::Output {
    let to_file = format!("cat > {}", file.display());
    let mut args = vec!["restore"];
    args.extend_from_slice(selector);
    args.extend(["-i", identity, "--to-command", "--", "sh", "-c", &to_file]);
    dr_on(store, &args, &[])
}

fn complete_ids(store: &TestStore, engine: &str) -> Vec<String> {
    list_json(store)
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["engine"] == engine && b["status"] == "complete")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// PostgreSQL: two backups, list, verify, restore into a new database (identical), prune
/// to one.
async fn postgres_round_trip(store: TestStore) {
    let keys = Keys::generate();
    let db = unique("cloudpg");
    create_database(&db).await;
    let client = pg_connect(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g")
        .await
        .unwrap();
    backup_postgres(&store, &keys, "app", &db, &[]);
    client
        .batch_execute("INSERT INTO t SELECT g, 'later' FROM generate_series(50001, 50100) g")
        .await
        .unwrap();
    let newest = backup_postgres(&store, &keys, "app", &db, &[]);
    let ids = complete_ids(&store, "postgres");
    assert_eq!(ids.len(), 2, "{ids:?}");

    let id = keys.identity.to_str().unwrap();
    let out = dr_on(
        &store,
        &[
            "verify", "latest", "-i", id, "--engine", "postgres", "--target", "app",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains(&newest), "{}", stderr(&out));

    let into = format!("{db}_restored");
    let out = dr_on(
        &store,
        &[
            "restore",
            "latest",
            "-i",
            id,
            "--engine",
            "postgres",
            "--target",
            "app",
            "--to",
            &pg_url(&into),
            "--yes",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        pg_fingerprint(&pg_connect(&into).await).await,
        pg_fingerprint(&client).await
    );

    let out = run(
        "worker",
        &["prune", "--store", store.url(), "--keep-last", "1"],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(complete_ids(&store, "postgres"), vec![newest]);
    drop(client);
    drop_database(&db).await;
    drop_database(&into).await;
}

/// ClickHouse 26: a partitioned table backed up, verified against the server, restored
/// under another name with the same content.
async fn clickhouse_round_trip(store: TestStore) {
    let server = Server::modern();
    let keys = Keys::generate();
    let db = unique("cloudch");
    let copy = format!("{db}_copy");
    server.ch(&format!("CREATE DATABASE {db}")).await;
    server
        .ch(&format!("CREATE TABLE {db}.e (d Date, u String, v UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY (u, d)"))
        .await;
    server
        .ch(&format!("INSERT INTO {db}.e SELECT toDate('2026-09-01') + number % 90, concat('u', toString(number % 77)), number FROM numbers(300000)"))
        .await;
    let out = run(
        "worker",
        &[
            "backup",
            "clickhouse",
            "--target",
            "ch",
            "--database",
            &db,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[("CLICKHOUSE_URL", &server.url)],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let backup = stdout(&out).trim().to_string();
    let id = keys.identity.to_str().unwrap();
    let out = dr_on(
        &store,
        &["verify", &backup, "-i", id, "--against", &server.url],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let map = format!("{db}={copy}");
    let out = dr_on(
        &store,
        &[
            "restore",
            &backup,
            "-i",
            id,
            "--to",
            &server.url,
            "--database-map",
            &map,
            "--yes",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let content = |d: String| {
        let server = server.clone();
        async move {
            server
                .ch(&format!(
                    "SELECT count(), sum(v), groupBitXor(cityHash64(d, u, v)) FROM {d}.e"
                ))
                .await
        }
    };
    assert_eq!(content(copy.clone()).await, content(db.clone()).await);
    assert!(content(copy.clone()).await.starts_with("300000\t"));
    for d in [db, copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

/// A command's output: restored byte for byte; a flipped byte in the stored part is named
/// by verify (exit 1) and refused by restore, which writes nothing.
async fn command_round_trip_and_a_damaged_part(store: TestStore) {
    let keys = Keys::generate();
    // Past one upload chunk (8 MiB), so the multi-request path carries it.
    let payload = noise(12_000_000, 1);
    let file = keys.dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let out = backup_command(
        &store,
        &keys,
        "files",
        &["cat", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let backup = stdout(&out).trim().to_string();
    let id = keys.identity.to_str().unwrap();
    let restored = keys.dir.path().join("restored.bin");
    let restore = |store: &TestStore| restore_to_file(store, &[&backup], id, &restored);
    let out = restore(&store);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&restored).unwrap() == payload,
        "restored bytes differ"
    );
    std::fs::remove_file(&restored).unwrap();

    let part = store
        .files()
        .into_iter()
        .find(|k| k.starts_with(&format!("command/files/{backup}/")) && k.ends_with(".age"))
        .expect("the part");
    store.damage(&part).await;
    let out = dr_on(&store, &["verify", &backup, "-i", id], &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("stdout"),
        "the damaged part is not named: {said}"
    );
    let out = restore(&store);
    assert_ne!(code(&out), 0, "a damaged backup restored: {}", stderr(&out));
    assert!(
        std::fs::metadata(&restored).map_or(true, |m| m.len() == 0),
        "restore wrote from a damaged part"
    );
}

/// The store fills up mid-upload (507 from the faulty front after 5 MB): the backup fails
/// with exit 2 naming the store's answer, and nothing is listed, then or later.
async fn a_full_store_fails_the_backup_and_leaves_nothing(
    store: TestStore,
    upstream: &str,
    env: fn(&str) -> Vec<(String, String)>,
) {
    let keys = Keys::generate();
    let front = Front::before(upstream, &[("--full-after", "5000000")], 1);
    let env: Vec<(String, String)> = env(&front.url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let file = keys.dir.path().join("big.bin");
    let payload = noise(20_000_000, 2);
    std::fs::write(&file, &payload).unwrap();
    let out = backup_command(
        &store,
        &keys,
        "full",
        &["cat", file.to_str().unwrap()],
        &env,
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("507"), "{}", stderr(&out));
    assert!(
        front.stats()["full"].as_u64().unwrap() > 0,
        "{}",
        front.stats()
    );
    assert!(
        store.files().is_empty(),
        "left visible: {:?}",
        store.files()
    );
    assert!(complete_ids(&store, "command").is_empty());
}

/// Slowdowns, resets and lost answers (requests that did happen, answered never), at
/// `rates`: every backup's exit code says whether it is in the store, and each one that says
/// so verifies.
async fn a_faulty_network_never_makes_a_backup_lie(
    store: TestStore,
    upstream: &str,
    env: fn(&str) -> Vec<(String, String)>,
    rates: &[(&str, &str)],
) {
    let keys = Keys::generate();
    let front = Front::before(upstream, rates, 7);
    let env: Vec<(String, String)> = env(&front.url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let file = keys.dir.path().join("payload.bin");
    let payload = noise(18_000_000, 3);
    std::fs::write(&file, &payload).unwrap();
    let mut said_ok = Vec::new();
    for _ in 0..3 {
        let out = backup_command(
            &store,
            &keys,
            "flaky",
            &["cat", file.to_str().unwrap()],
            &env,
        );
        match code(&out) {
            0 => said_ok.push(stdout(&out).trim().to_string()),
            2 => {}
            c => panic!("exit {c}: {}", stderr(&out)),
        }
    }
    let listed = complete_ids(&store, "command");
    assert_eq!(listed, said_ok, "the exit codes and the store disagree");
    assert!(
        !said_ok.is_empty(),
        "no backup got through: {}",
        front.stats()
    );
    let faults: u64 = ["slowdown", "reset", "lost"]
        .iter()
        .map(|f| front.stats()[f].as_u64().unwrap())
        .sum();
    assert!(faults > 0, "no fault happened: {}", front.stats());
    let id = keys.identity.to_str().unwrap();
    for backup in &said_ok {
        let out = dr_on(&store, &["verify", backup, "-i", id], &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
}

/// `worker copy --to` the cloud store from the services' S3: a command, a PostgreSQL and a
/// ClickHouse backup; every copy verifies there (key and signer), a rerun copies nothing,
/// and `restore --all --store <the copy>` rebuilds PostgreSQL and ClickHouse identical once
/// the primary's backups are gone; the command backup restores byte for byte.
async fn copies_arrive_whole(dest: TestStore) {
    let keys = Keys::generate();
    let source = TestStore::s3();
    let payload = noise(9_000_000, 4);
    let file = keys.dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let out = backup_command(
        &source,
        &keys,
        "files",
        &["cat", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let db = unique("copypg");
    create_database(&db).await;
    let client = pg_connect(&db).await;
    client
        .batch_execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g",
        )
        .await
        .unwrap();
    backup_postgres(&source, &keys, "app", &db, &[]);
    let server = Server::modern();
    let chdb = unique("copych");
    server.ch(&format!("CREATE DATABASE {chdb}")).await;
    server
        .ch(&format!("CREATE TABLE {chdb}.e (d Date, v UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY v"))
        .await;
    server
        .ch(&format!("INSERT INTO {chdb}.e SELECT toDate('2026-10-01') + number % 60, number FROM numbers(200000)"))
        .await;
    let out = run(
        "worker",
        &[
            "backup",
            "clickhouse",
            "--target",
            "ch",
            "--database",
            &chdb,
            "--store",
            source.url(),
            "-r",
            &keys.recipient,
        ],
        &[("CLICKHOUSE_URL", &server.url)],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // The destination's own account through DR_COPY_…: the unprefixed variable points at a
    // closed port, so a copy that read it would fail.
    let own = match &dest {
        TestStore::Azure { .. } => "AZURE_STORAGE_CONNECTION_STRING",
        _ => "STORAGE_EMULATOR_HOST",
    };
    let closed = if own == "STORAGE_EMULATOR_HOST" {
        "http://127.0.0.1:1".to_string()
    } else {
        "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1".to_string()
    };
    let (prefixed, good) = (format!("DR_COPY_{own}"), svc(own));
    let copy_env = [(own, closed.as_str()), (prefixed.as_str(), good.as_str())];
    for expected in [3, 0] {
        let out = run(
            "worker",
            &[
                "copy",
                "--store",
                source.url(),
                "--to",
                dest.url(),
                "-o",
                "json",
            ],
            &copy_env,
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(
            report["copied"].as_array().unwrap().len(),
            expected,
            "{report}"
        );
        if expected == 0 {
            assert!(stderr(&out).contains("nothing to copy"), "{}", stderr(&out));
        }
    }
    let id = keys.identity.to_str().unwrap();
    for (engine, target) in [
        ("command", "files"),
        ("postgres", "app"),
        ("clickhouse", "ch"),
    ] {
        let out = dr_on(
            &dest,
            &[
                "verify", "latest", "-i", id, "--engine", engine, "--target", target,
            ],
            &[],
        );
        assert_eq!(code(&out), 0, "{engine}: {}", stderr(&out));
    }

    // The primary is gone: the rebuild works from the copy alone.
    let primary = source.open().await;
    for o in primary.list("").await.unwrap() {
        primary.delete(&o.key).await.unwrap();
    }
    let pg_into = format!("{db}_fromcopy");
    let state = keys.dir.path().join("state.json").display().to_string();
    let ch_into = format!("{chdb}_fromcopy");
    let out = dr_on(
        &dest,
        &[
            "restore",
            "--all",
            "-i",
            id,
            "--engine",
            "postgres",
            "--engine",
            "clickhouse",
            "--to",
            &format!("postgres={}", pg_url(&pg_into)),
            "--to",
            &format!("clickhouse={}", server.url),
            "--database-map",
            &format!("{chdb}={ch_into}"),
            "--yes",
            "--state",
            &state,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        pg_fingerprint(&pg_connect(&pg_into).await).await,
        pg_fingerprint(&client).await
    );
    let content = |d: String| {
        let server = server.clone();
        async move {
            server
                .ch(&format!(
                    "SELECT count(), sum(v), groupBitXor(cityHash64(d, v)) FROM {d}.e"
                ))
                .await
        }
    };
    assert_eq!(content(ch_into.clone()).await, content(chdb.clone()).await);

    let restored = keys.dir.path().join("restored.bin");
    let out = restore_to_file(
        &dest,
        &["latest", "--engine", "command", "--target", "files"],
        id,
        &restored,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&restored).unwrap() == payload,
        "restored bytes differ"
    );
    drop(client);
    for d in [&db, &pg_into] {
        drop_database(d).await;
    }
    for d in [chdb, ch_into] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

/// Azurite behind a front: its connection string names the front.
fn azurite_via(front: &str) -> Vec<(String, String)> {
    let cs = svc("AZURE_STORAGE_CONNECTION_STRING");
    let upstream = cs
        .split(';')
        .find_map(|kv| kv.strip_prefix("BlobEndpoint="))
        .expect("BlobEndpoint");
    let port = upstream
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    vec![(
        "AZURE_STORAGE_CONNECTION_STRING".into(),
        cs.replace(port, front.trim_start_matches("http://")),
    )]
}

fn fake_gcs_via(front: &str) -> Vec<(String, String)> {
    vec![("STORAGE_EMULATOR_HOST".into(), front.to_string())]
}

fn azurite_upstream() -> String {
    let cs = svc("AZURE_STORAGE_CONNECTION_STRING");
    let endpoint = cs
        .split(';')
        .find_map(|kv| kv.strip_prefix("BlobEndpoint="))
        .expect("BlobEndpoint")
        .to_string();
    endpoint
        .rsplit_once('/')
        .map(|(host, _)| host.to_string())
        .unwrap()
}

macro_rules! on_both_clouds {
    ($($test:ident),* $(,)?) => {
        mod azure {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::azure()).await })*

            #[tokio::test(flavor = "multi_thread")]
            async fn a_full_store_fails_the_backup_and_leaves_nothing() {
                super::a_full_store_fails_the_backup_and_leaves_nothing(
                    dr_tests::TestStore::azure(), &super::azurite_upstream(), super::azurite_via).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_faulty_network_never_makes_a_backup_lie() {
                super::a_faulty_network_never_makes_a_backup_lie(
                    dr_tests::TestStore::azure(), &super::azurite_upstream(), super::azurite_via,
                    &[("--slowdown", "0.1"), ("--reset", "0.03"), ("--lost", "0.08")]).await
            }
        }
        mod gcs {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::gcs()).await })*

            #[tokio::test(flavor = "multi_thread")]
            async fn a_full_store_fails_the_backup_and_leaves_nothing() {
                super::a_full_store_fails_the_backup_and_leaves_nothing(
                    dr_tests::TestStore::gcs(), &dr_tests::svc("STORAGE_EMULATOR_HOST"), super::fake_gcs_via).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn a_faulty_network_never_makes_a_backup_lie() {
                super::a_faulty_network_never_makes_a_backup_lie(
                    dr_tests::TestStore::gcs(), &dr_tests::svc("STORAGE_EMULATOR_HOST"), super::fake_gcs_via,
                    // Refusals only: after a lost answer a client asks the session what it
                    // holds, and fake-gcs-server (unlike GCS) completes the upload when asked.
                    &[("--slowdown", "0.15")]).await
            }
        }
    };
}

on_both_clouds!(
    postgres_round_trip,
    clickhouse_round_trip,
    command_round_trip_and_a_damaged_part,
    copies_arrive_whole,
);

/// `--object-lock` is S3's: on Azure Blob and GCS it is refused before anything is
/// written, saying what to use instead.
#[test]
fn object_lock_is_refused_on_azure_and_gcs() {
    let keys = Keys::generate();
    for store in [TestStore::azure(), TestStore::gcs()] {
        let out = run(
            "worker",
            &[
                "backup",
                "command",
                "--target",
                "t",
                "--store",
                store.url(),
                "-r",
                &keys.recipient,
                "--object-lock",
                "governance",
                "--retain",
                "1d",
                "--",
                "echo",
                "x",
            ],
            &[],
        );
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("immutability"), "{}", stderr(&out));
        assert!(store.files().is_empty(), "{:?}", store.files());
    }
}
