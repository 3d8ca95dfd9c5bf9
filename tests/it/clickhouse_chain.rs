//! ClickHouse incremental backups on real servers (18.16 and 26): a full backup and three
//! nights of change (inserts into the newest partition, a mutation of an old one, a
//! dropped partition), each night's backup restored into a fresh database equal to the
//! source that night; unchanged partitions referenced, not stored again (asserted on the
//! store's objects); prune keeps every base the newest needs; a damaged base part fails
//! the dependent's verify and restore before anything is created.

use std::collections::BTreeMap;

use dr_tests::*;
use serde_json::Value;

use crate::clickhouse::{fingerprint, Server};

on_both_servers!(an_incremental_chain_on_18_16, an_incremental_chain_on_26 => an_incremental_chain_restores_every_night);

const TARGET: &str = "chain";

/// `worker backup clickhouse --incremental` of `db`; returns the backup id.
fn backup(server: &Server, store: &TestStore, keys: &Keys, db: &str) -> String {
    let out = run(
        "worker",
        &[
            "backup",
            "clickhouse",
            "--target",
            TARGET,
            "--database",
            db,
            "--incremental",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[("CLICKHOUSE_URL", &server.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn manifest(store: &TestStore, id: &str) -> Value {
    let path = store.object_path(&format!("clickhouse/{TARGET}/{id}/manifest.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Parts of the `logs` table by partition id → the backup holding the object (`None`: this one).
fn logs_parts(m: &Value) -> BTreeMap<String, Option<String>> {
    m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().contains(".logs.p-"))
        .map(|p| {
            (
                p["partition"]["id"].as_str().unwrap().to_string(),
                p["from"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Every referenced part's object is in the backup named by `from` and not stored again
/// in this one; every own part's object is in this one.
fn assert_objects_follow_references(store: &TestStore, id: &str, m: &Value) {
    let files = store.files();
    for p in m["parts"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let own = format!("clickhouse/{TARGET}/{id}/{file}");
        match p["from"].as_str() {
            Some(holder) => {
                assert!(!files.contains(&own), "{own} stored again");
                let there = format!("clickhouse/{TARGET}/{holder}/{file}");
                assert!(files.contains(&there), "{there} missing");
            }
            None => assert!(files.contains(&own), "{own} missing"),
        }
    }
}

/// `kubectl dr restore ID --database-map MAP --yes EXTRA…` into `server`.
fn restore_as(
    server: &Server,
    store: &TestStore,
    keys: &Keys,
    id: &str,
    map: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "restore",
        id,
        "-i",
        keys.identity.to_str().unwrap(),
        "--to",
        &server.url,
        "--database-map",
        map,
        "--yes",
        "--store",
        store.url(),
    ];
    args.extend_from_slice(extra);
    run("kubectl-dr", &args, &[])
}

async fn wait_for_mutations(server: &Server, db: &str) {
    for _ in 0..100 {
        let pending = server
            .ch(&format!(
                "SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0"
            ))
            .await;
        if pending.trim() == "0" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the mutation on {db} did not finish");
}

async fn contents(server: &Server, db: &str) -> Vec<(u64, String)> {
    vec![
        fingerprint(server, db, "logs", "MergeTree").await,
        fingerprint(server, db, "notes", "Log").await,
    ]
}

async fn an_incremental_chain_restores_every_night(server: Server) {
    let db = unique("chain");
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.logs (d Date, ts DateTime, body String, n UInt64) ENGINE = MergeTree PARTITION BY d ORDER BY (ts, n)"),
        format!("INSERT INTO {db}.logs SELECT toDate('2026-11-25') + number % 5, toDateTime('2026-11-25 00:00:00') + number * 7, concat('line ', toString(number)), number FROM numbers(50000)"),
        format!("CREATE TABLE {db}.notes (k String, v String) ENGINE = Log"),
        format!("INSERT INTO {db}.notes VALUES ('a', '1'), ('b', '2')"),
    ] {
        server.ch(&sql).await;
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let mut nights: Vec<(String, Vec<(u64, String)>)> = Vec::new();

    // The first backup has no base: it is full, with one part per partition.
    let full = backup(&server, &store, &keys, &db);
    let m = manifest(&store, &full);
    assert!(m.get("base").is_none(), "{m}");
    let parts = logs_parts(&m);
    assert_eq!(parts.len(), 5, "{parts:?}");
    assert!(parts.values().all(Option::is_none), "{parts:?}");
    nights.push((full.clone(), contents(&server, &db).await));

    // Night 1: rows arrive in the newest partition; the four others are referenced.
    server
        .ch(&format!("INSERT INTO {db}.logs SELECT toDate('2026-11-29'), toDateTime('2026-11-29 12:00:00') + number, 'new', 100000 + number FROM numbers(1000)"))
        .await;
    let inc1 = backup(&server, &store, &keys, &db);
    let m = manifest(&store, &inc1);
    assert_eq!(m["base"], full.as_str(), "{m}");
    assert_eq!(m["format_version"], 3);
    let parts = logs_parts(&m);
    assert_eq!(parts["20261129"], None, "{parts:?}");
    for day in ["20261125", "20261126", "20261127", "20261128"] {
        assert_eq!(parts[day].as_deref(), Some(full.as_str()), "{parts:?}");
    }
    assert_objects_follow_references(&store, &inc1, &m);
    nights.push((inc1.clone(), contents(&server, &db).await));

    // Night 2: a mutation deletes rows of one old partition. It renames every part of the
    // table; ClickHouse 26 reports the untouched parts' file hashes, which did not change,
    // so their partitions are still referenced (18.16 has only names: it dumps them all).
    server
        .ch(&format!(
            "ALTER TABLE {db}.logs DELETE WHERE d = '2026-11-26' AND n % 2 = 0"
        ))
        .await;
    wait_for_mutations(&server, &db).await;
    let inc2 = backup(&server, &store, &keys, &db);
    let m = manifest(&store, &inc2);
    let parts = logs_parts(&m);
    assert_eq!(parts["20261126"], None, "the mutated partition: {parts:?}");
    let modern = server.url == svc("DR_CLICKHOUSE26_URL");
    if modern {
        assert_eq!(m["base"], inc1.as_str(), "{m}");
        for (day, holder) in [
            ("20261125", &full),
            ("20261127", &full),
            ("20261128", &full),
            ("20261129", &inc1),
        ] {
            assert_eq!(parts[day].as_ref(), Some(holder), "{day}: {parts:?}");
        }
    }
    assert_objects_follow_references(&store, &inc2, &m);
    nights.push((inc2.clone(), contents(&server, &db).await));

    // Night 3: the oldest partition is dropped, as a TTL drops it: gone from the backup.
    server
        .ch(&format!(
            "ALTER TABLE {db}.logs DROP PARTITION '2026-11-25'"
        ))
        .await;
    let inc3 = backup(&server, &store, &keys, &db);
    let m = manifest(&store, &inc3);
    let parts = logs_parts(&m);
    assert!(!parts.contains_key("20261125"), "{parts:?}");
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert!(
        parts.values().all(Option::is_some),
        "nothing changed: {parts:?}"
    );
    assert_objects_follow_references(&store, &inc3, &m);
    nights.push((inc3.clone(), contents(&server, &db).await));

    // `list -o json` tells full from incremental, with the bytes each one stored.
    let out = run(
        "kubectl-dr",
        &["list", "--store", store.url(), "-o", "json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kinds: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap(), b["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (full.as_str(), "full"),
            (inc1.as_str(), "incremental"),
            // 18.16 has no file hashes: the mutation renamed every part, so every
            // partition was dumped again and night 2 is a full backup there.
            (inc2.as_str(), if modern { "incremental" } else { "full" }),
            (inc3.as_str(), "incremental"),
        ]
    );

    // Every night verifies (its references included) and restores equal to that night.
    for (i, (id, expected)) in nights.iter().enumerate() {
        let out = run(
            "kubectl-dr",
            &[
                "verify",
                id,
                "-i",
                keys.identity.to_str().unwrap(),
                "--store",
                store.url(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let copy = format!("{db}_n{i}");
        let out = restore_as(&server, &store, &keys, id, &format!("{db}={copy}"), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(&contents(&server, &copy).await, expected, "night {i}");
        server.ch(&format!("DROP DATABASE {copy}")).await;
    }

    // prune --keep-last 1 keeps the newest and every backup it references, deletes the
    // rest, and the newest still restores.
    let newest = manifest(&store, &inc3);
    let mut needed: Vec<String> = newest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["from"].as_str().map(str::to_string))
        .collect();
    needed.push(inc3.clone());
    needed.sort();
    needed.dedup();
    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            store.url(),
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("kept: base of"), "{}", stderr(&out));
    let mut left: Vec<String> = store
        .files()
        .iter()
        .filter(|f| f.ends_with("/manifest.json"))
        .map(|f| f.split('/').nth(2).unwrap().to_string())
        .collect();
    left.sort();
    assert_eq!(left, needed);
    let copy = format!("{db}_pruned");
    let out = restore_as(&server, &store, &keys, &inc3, &format!("{db}={copy}"), &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(&contents(&server, &copy).await, &nights[3].1);
    server.ch(&format!("DROP DATABASE {copy}")).await;

    // A flipped byte in a base's part: the dependent's verify fails naming the base, and a
    // restore of it creates nothing.
    let referenced = newest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"].is_string())
        .unwrap();
    let holder = referenced["from"].as_str().unwrap();
    let path = store.object_path(&format!(
        "clickhouse/{TARGET}/{holder}/{}",
        referenced["file"].as_str().unwrap()
    ));
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = run(
        "kubectl-dr",
        &["verify", &inc3, "--store", store.url()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{holder} (the base that")),
        "{}",
        stdout(&out)
    );
    let copy = format!("{db}_damaged");
    let out = restore_as(&server, &store, &keys, &inc3, &format!("{db}={copy}"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        server
            .ch(&format!(
                "SELECT count() FROM system.databases WHERE name = '{copy}'"
            ))
            .await
            .trim(),
        "0"
    );
    server.ch(&format!("DROP DATABASE {db}")).await;
}

/// A small partitioned table on the 18.16 server and a full then an incremental backup of
/// it into `store` (`extra` flags for each): returns the database and the two ids.
async fn two_night_chain(
    store: &str,
    keys: &Keys,
    env: &[(&str, &str)],
    extra: [&[&str]; 2],
) -> (Server, String, String, String) {
    let server = Server::legacy();
    let db = unique("chainrk");
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.logs (d Date, n UInt64) ENGINE = MergeTree PARTITION BY d ORDER BY n"),
        format!("INSERT INTO {db}.logs SELECT toDate('2026-11-25') + number % 3, number FROM numbers(3000)"),
    ] {
        server.ch(&sql).await;
    }
    let mut ids = Vec::new();
    for (night, extra) in extra.into_iter().enumerate() {
        if night == 1 {
            server
                .ch(&format!(
                    "INSERT INTO {db}.logs VALUES ('2026-11-27', 99999)"
                ))
                .await;
            // Ids have one-second resolution: the incremental one must be newer.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        let mut args = vec![
            "backup",
            "clickhouse",
            "--target",
            TARGET,
            "--database",
            &db,
            "--incremental",
            "--store",
            store,
            "-r",
            &keys.recipient,
        ];
        args.extend_from_slice(extra);
        let mut all_env = vec![("CLICKHOUSE_URL", server.url.as_str())];
        all_env.extend_from_slice(env);
        let out = run("worker", &args, &all_env);
        assert!(out.status.success(), "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }
    let inc = ids.pop().unwrap();
    (server, db, ids.pop().unwrap(), inc)
}

/// Rekey of a chain: the base alone is refused while the incremental one refers to it;
/// `rekey --all` goes newest first, so the incremental backup gets its own copies (it is
/// full afterwards) and then the base is rekeyed; the new key restores both equal, the old
/// one opens neither.
#[tokio::test(flavor = "multi_thread")]
async fn rekey_makes_an_incremental_backup_stand_alone() {
    let (store, old, new) = (TestStore::s3(), Keys::generate(), Keys::generate());
    let (server, db, full, inc) = two_night_chain(store.url(), &old, &[], [&[], &[]]).await;
    assert_eq!(manifest(&store, &inc)["base"], full.as_str());
    let rekey = |what: &[&str]| {
        let mut args = vec![
            "rekey",
            "--store",
            store.url(),
            "-i",
            old.identity.to_str().unwrap(),
            "-r",
            &new.recipient,
            "--yes",
        ];
        args.extend_from_slice(what);
        run("kubectl-dr", &args, &[])
    };
    let out = rekey(&[&full]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("refer to its parts (clickhouse/{TARGET}/{inc})")),
        "{}",
        stderr(&out)
    );
    let out = rekey(&["--all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let m = manifest(&store, &inc);
    assert!(m.get("base").is_none(), "{m}");
    assert!(
        m["parts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.get("from").is_none()),
        "{m}"
    );
    assert_objects_follow_references(&store, &inc, &m);
    let expected = fingerprint(&server, &db, "logs", "MergeTree").await;
    for (i, id) in [&full, &inc].into_iter().enumerate() {
        let copy = format!("{db}_rk{i}");
        let restore =
            |keys: &Keys| restore_as(&server, &store, keys, id, &format!("{db}={copy}"), &[]);
        assert_eq!(code(&restore(&old)), 2, "the old key still opens {id}");
        let out = restore(&new);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        if id == &inc {
            assert_eq!(
                fingerprint(&server, &copy, "logs", "MergeTree").await,
                expected
            );
        }
        server.ch(&format!("DROP DATABASE {copy}")).await;
    }
    server.ch(&format!("DROP DATABASE {db}")).await;
}

/// Object Lock (moto): a reference keeps its object retained as long as the incremental
/// backup's own parts, so an attacker cannot delete the base from under a locked backup.
#[tokio::test(flavor = "multi_thread")]
async fn a_reference_extends_the_lock_of_its_object() {
    let bucket = unique("chainlock").replace('_', "-");
    let moto = svc("DR_TEST_MOTO_URL");
    let s3 = s3_client(&moto);
    s3.create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let store = format!("s3://{bucket}/dr");
    let keys = Keys::generate();
    let (server, db, full, inc) = two_night_chain(
        &store,
        &keys,
        &[("AWS_ENDPOINT_URL", &moto)],
        [
            &["--object-lock", "governance", "--retain", "30s"],
            &["--object-lock", "governance", "--retain", "1h"],
        ],
    )
    .await;
    let m: Value = serde_json::from_slice(
        &s3.get_object()
            .bucket(&bucket)
            .key(format!("dr/clickhouse/{TARGET}/{inc}/manifest.json"))
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    let referenced: Vec<&Value> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["from"] == full.as_str())
        .collect();
    assert_eq!(referenced.len(), 2, "{m}");
    let now = chrono::Utc::now().timestamp();
    for p in referenced {
        let head = s3
            .head_object()
            .bucket(&bucket)
            .key(format!(
                "dr/clickhouse/{TARGET}/{full}/{}",
                p["file"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        let until = head.object_lock_retain_until_date().unwrap().secs();
        assert!(
            until > now + 3000,
            "{}: until {until}, now {now}",
            p["name"]
        );
    }
    server.ch(&format!("DROP DATABASE {db}")).await;
}

/// The drill and `restore --all` read an incremental backup across its chain: the drill's
/// scratch database passes its counts, and the rebuild's copy equals the source.
#[tokio::test(flavor = "multi_thread")]
async fn the_drill_and_restore_all_follow_a_chain() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (server, db, full, inc) = two_night_chain(store.url(), &keys, &[], [&[], &[]]).await;
    assert_eq!(manifest(&store, &inc)["base"], full.as_str());
    let to = format!("clickhouse={}", server.url);
    let identity = keys.identity.to_str().unwrap();
    let out = run(
        "worker",
        &["drill", "-i", identity, "--to", &to, "--store", store.url()],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["verdict"], "passed", "{report}");
    assert_eq!(report["restored"], true, "{report}");

    let copy = format!("{db}_all");
    let state = tempfile::tempdir().unwrap();
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "--all",
            "-i",
            identity,
            "--to",
            &to,
            "--database-map",
            &format!("{db}={copy}"),
            "--yes",
            "--state",
            state.path().join("s.json").to_str().unwrap(),
            "--store",
            store.url(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains(&inc) || stderr(&out).contains(&inc));
    assert_eq!(
        fingerprint(&server, &copy, "logs", "MergeTree").await,
        fingerprint(&server, &db, "logs", "MergeTree").await
    );
    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

on_both_servers!(the_newest_days_first_on_18_16, the_newest_days_first_on_26 => the_newest_days_come_back_first);

/// Newest first: `--since` brings back exactly the partitions at or after the time (every
/// table created, the Log table without a time too); a later `--until` run completes the
/// tables, a second one skips what is there, and the content equals the source's.
async fn the_newest_days_come_back_first(server: Server) {
    let db = unique("window");
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.logs (d Date, ts DateTime, body String, n UInt64) ENGINE = MergeTree PARTITION BY d ORDER BY (ts, n)"),
        format!("INSERT INTO {db}.logs SELECT toDate('2026-11-25') + number % 5, toDateTime('2026-11-25 00:00:00') + number * 7, concat('line ', toString(number)), number FROM numbers(20000)"),
        format!("CREATE TABLE {db}.notes (k String, v String) ENGINE = Log"),
        format!("INSERT INTO {db}.notes VALUES ('a', '1'), ('b', '2')"),
    ] {
        server.ch(&sql).await;
    }
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&server, &store, &keys, &db);
    let copy = format!("{db}_w");
    let map = format!("{db}={copy}");
    let days = |db: String| {
        let server = server.clone();
        async move {
            server
                .ch(&format!(
                    "SELECT d, count() FROM {db}.logs GROUP BY d ORDER BY d FORMAT TSV"
                ))
                .await
        }
    };
    let since = "2026-11-28T00:00:00Z";

    let out = restore_as(&server, &store, &keys, &id, &map, &["--since", since]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("2 of 5"), "{}", stderr(&out));
    let source_days = days(db.clone()).await;
    let newest: String = source_days
        .lines()
        .filter(|l| l.starts_with("2026-11-28") || l.starts_with("2026-11-29"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(days(copy.clone()).await, newest);
    assert_eq!(
        fingerprint(&server, &copy, "notes", "Log").await,
        fingerprint(&server, &db, "notes", "Log").await
    );

    let out = restore_as(&server, &store, &keys, &id, &map, &["--until", since]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let skipped = format!("skipped {copy}.logs partition");
    assert!(!stderr(&out).contains(&skipped), "{}", stderr(&out));
    assert_eq!(days(copy.clone()).await, source_days);
    for (table, engine) in [("logs", "MergeTree"), ("notes", "Log")] {
        assert_eq!(
            fingerprint(&server, &copy, table, engine).await,
            fingerprint(&server, &db, table, engine).await,
            "{table}"
        );
    }
    // Once more: every partition of the window is there already, and nothing is loaded
    // twice.
    let out = restore_as(&server, &store, &keys, &id, &map, &["--until", since]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches(&skipped).count(),
        3,
        "{}",
        stderr(&out)
    );
    assert_eq!(days(copy.clone()).await, source_days);
    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

/// `worker copy` takes an incremental backup with the backup its references live in, and
/// the copy restores on its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_is_copied_with_its_base() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (server, db, full, inc) = two_night_chain(store.url(), &keys, &[], [&[], &[]]).await;
    let local = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/copy", local.path().display());
    let out = run(
        "worker",
        &["copy", "--store", store.url(), "--to", &dest],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for id in [&full, &inc] {
        assert!(local
            .path()
            .join(format!("copy/clickhouse/{TARGET}/{id}/manifest.json"))
            .exists());
    }
    let copy = format!("{db}_copied");
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            &inc,
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &server.url,
            "--database-map",
            &format!("{db}={copy}"),
            "--yes",
            "--store",
            &dest,
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        fingerprint(&server, &copy, "logs", "MergeTree").await,
        fingerprint(&server, &db, "logs", "MergeTree").await
    );
    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}
