//! Backups written before the engine abstraction (by the worker of commit a08ea3f, checked
//! in under tests/fixtures/backups-before-wave-2 with their test-only key) still list,
//! verify and restore with today's tools: the manifest format did not change.

use dr_tests::*;

const FIXTURE: &str = "tests/fixtures/backups-before-wave-2";

/// A local store holding a copy of the checked-in backups (tests may not write into the
/// repository).
fn store() -> TestStore {
    let t = TestStore::local();
    let src = repo_root().join(FIXTURE).join("store");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", src.display()))
        .arg(t.object_path(""))
        .status()
        .unwrap();
    assert!(status.success());
    t
}

fn key() -> String {
    repo_root()
        .join(FIXTURE)
        .join("key.txt")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_of_every_engine_from_before_still_list_and_verify() {
    let t = store();
    let out = run(
        "kubectl-dr",
        &["list", "-o", "json", "--store", t.url()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let engines: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["engine"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    for engine in ["postgres", "vault", "clickhouse"] {
        assert!(
            engines.contains(&(engine, "complete")),
            "{engine}: {engines:?}"
        );
    }
    for engine in ["postgres", "vault", "clickhouse"] {
        let out = run(
            "kubectl-dr",
            &[
                "verify",
                "latest",
                "--engine",
                engine,
                "-i",
                &key(),
                "--store",
                t.url(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{engine}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_backup_from_before_restores() {
    let t = store();
    let db = unique("compat_pg");
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "postgres",
            "-i",
            &key(),
            "--store",
            t.url(),
            "--to",
            &pg_url(&db),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let n: i64 = pg_connect(&db)
        .await
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clickhouse_backup_from_before_restores_on_both_servers() {
    let t = store();
    for url in [svc("CLICKHOUSE_URL"), svc("DR_CLICKHOUSE26_URL")] {
        let copy = unique("compat_ch");
        let map = format!("compat_src={copy}");
        let out = run(
            "kubectl-dr",
            &[
                "restore",
                "latest",
                "--engine",
                "clickhouse",
                "-i",
                &key(),
                "--store",
                t.url(),
                "--to",
                &url,
                "--database-map",
                &map,
                "--yes",
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{url}: {}", stderr(&out));
        let resp = reqwest::Client::new()
            .post(&url)
            .basic_auth(svc("CLICKHOUSE_USER"), Some(svc("CLICKHOUSE_PASSWORD")))
            .body(format!("SELECT count() FROM {copy}.events"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(resp.trim(), "5000", "{url}");
        reqwest::Client::new()
            .post(&url)
            .basic_auth(svc("CLICKHOUSE_USER"), Some(svc("CLICKHOUSE_PASSWORD")))
            .body(format!("DROP DATABASE {copy}"))
            .send()
            .await
            .unwrap();
    }
}
