//! Backups written before the engine abstraction (by the worker of commit a08ea3f, checked
//! in under tests/fixtures/backups-before-wave-2 with their test-only key; the `command`
//! one by the worker of 4640043, before the typed manifest) still list, verify and restore
//! with today's tools: the manifest format did not change. And a backup of an engine this
//! build does not know (as a newer worker would write) lists and verifies, and its restore
//! says to upgrade.

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

/// These backups predate signing: every reader needs --allow-unsigned for them.
const UNSIGNED: &[(&str, &str)] = &[("DR_ALLOW_UNSIGNED", "true")];

/// `kubectl-dr list -o json` accepting unsigned backups.
fn list_unsigned(t: &TestStore) -> serde_json::Value {
    let out = run(
        "kubectl-dr",
        &["list", "-o", "json", "--store", t.url()],
        UNSIGNED,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
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
    let rows = list_unsigned(&t);
    let engines: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["engine"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    for engine in ["postgres", "vault", "clickhouse", "command"] {
        assert!(
            engines.contains(&(engine, "complete")),
            "{engine}: {engines:?}"
        );
    }
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["signature"]["state"] == "unsigned"),
        "{rows}"
    );
    // Trusting only signed backups (the default once DR_SIGNERS is set), they are refused
    // by name, with the way out; and list shows them as damaged, never as good ones.
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            "latest",
            "--engine",
            "postgres",
            "--store",
            t.url(),
        ],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no signature") && stderr(&out).contains("--allow-unsigned"),
        "{}",
        stderr(&out)
    );
    let strict = list_json(&t);
    assert!(
        strict
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "damaged"),
        "{strict}"
    );
    for engine in ["postgres", "vault", "clickhouse", "command"] {
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
            UNSIGNED,
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
        UNSIGNED,
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
            UNSIGNED,
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

/// What the checked-in command backup's command printed.
fn command_plaintext() -> Vec<u8> {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "printf \"terraform {\\n  version = 4\\n}\\n\"; seq 1 2000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_backup_from_before_restores_to_stdout() {
    let t = store();
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "command",
            "-i",
            &key(),
            "--store",
            t.url(),
            "--to",
            "-",
        ],
        UNSIGNED,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, command_plaintext());
}

/// Turns the checked-in command backup into one of engine `etcd` (unknown to this build),
/// as a newer worker would write it: another part format and facts this build never saw.
fn with_a_newer_engine() -> TestStore {
    let t = store();
    let root = t.object_path("");
    let src = std::fs::read_dir(root.join("command/compat"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let id = src.file_name().unwrap().to_owned();
    let dst = root.join("etcd/compat").join(&id);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        src.join("stdout.out.zst.age"),
        dst.join("stdout.out.zst.age"),
    )
    .unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    m["engine"] = "etcd".into();
    m["parts"][0]["format"] = "etcd-snapshot".into();
    m["facts"] = serde_json::json!({"etcd_version": "3.6.0", "aof": "[1,2]"});
    std::fs::write(
        dst.join("manifest.json"),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_engines_backup_lists_and_verifies_and_its_restore_says_to_upgrade() {
    let t = with_a_newer_engine();
    let rows = list_unsigned(&t);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["engine"] == "etcd" && r["status"] == "complete"),
        "{rows}"
    );
    let out = run(
        "kubectl-dr",
        &["list", "--engine", "etcd", "--store", t.url()],
        UNSIGNED,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("etcd"), "{}", stdout(&out));

    // Integrity (sha256, age, zstd) needs no knowledge of the engine.
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            "latest",
            "--engine",
            "etcd",
            "-i",
            &key(),
            "--store",
            t.url(),
        ],
        UNSIGNED,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "etcd",
            "-i",
            &key(),
            "--store",
            t.url(),
            "--to",
            "http://127.0.0.1:1",
        ],
        UNSIGNED,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("etcd backups") && stderr(&out).contains("upgrade kubectl-dr"),
        "{}",
        stderr(&out)
    );

    // A name that is neither known nor in the store is a typo.
    let out = run(
        "kubectl-dr",
        &["list", "--engine", "etcdd", "--store", t.url()],
        UNSIGNED,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown engine"), "{}", stderr(&out));
}
