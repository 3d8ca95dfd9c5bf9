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
        .filter(|p| p["name"].as_str().unwrap().contains(".logs.partition-"))
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
        let out = run(
            "kubectl-dr",
            &[
                "restore",
                id,
                "-i",
                keys.identity.to_str().unwrap(),
                "--to",
                &server.url,
                "--database-map",
                &format!("{db}={copy}"),
                "--yes",
                "--store",
                store.url(),
            ],
            &[],
        );
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
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            &inc3,
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &server.url,
            "--database-map",
            &format!("{db}={copy}"),
            "--yes",
            "--store",
            store.url(),
        ],
        &[],
    );
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
