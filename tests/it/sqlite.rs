//! The `sqlite` engine (the example engine: a folder and its registry lines) on real files:
//! a database written while it is backed up round-trips with its counts, a damaged part
//! leaves the destination as it was, an existing file is refused without --clean, and the
//! engine works in `restore --all` and the drill without any code outside its folder.

use dr_tests::*;

/// A database with `rows` rows in `items` and 3 in `notes`.
fn seed(path: &std::path::Path, rows: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE \"odd \"\"name\" (x);
         CREATE TABLE notes (n);
         INSERT INTO notes VALUES (1), (2), (3);",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO items (id, body) VALUES (?1, ?2)",
            rusqlite::params![i, format!("row {i} {}", "x".repeat(200))],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn counts(path: &std::path::Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names
        .into_iter()
        .map(|n| {
            let q = format!("SELECT count(*) FROM \"{}\"", n.replace('"', "\"\""));
            let c: i64 = conn.query_row(&q, [], |r| r.get(0)).unwrap();
            (n, c)
        })
        .collect()
}

fn backup(store: &TestStore, keys: &Keys, target: &str, path: &std::path::Path) -> String {
    let ran = dr("worker")
        .args(["backup", "sqlite", "--target", target, "--path"])
        .args([path.to_str().unwrap(), "-r", &keys.recipient])
        .store(store)
        .run();
    ran.assert_exit(0, "backup committed");
    ran.stdout().trim().to_string()
}

fn to(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

#[test]
fn a_database_round_trips_with_its_counts_and_an_existing_file_needs_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    seed(&db, 2000);
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&store, &keys, "app", &db);
    let listed = list_json(&store).to_string();
    assert!(listed.contains("sqlite"), "{listed}");
    let kubectl_dr = |args: &[&str]| dr("kubectl-dr").args(args).identity(&keys).store(&store);

    kubectl_dr(&["verify", &id, "--against", &to(&db)])
        .run()
        .assert_exit(0, "3 table(s) match");
    let restored = dir.path().join("restored.db");
    kubectl_dr(&["restore", "latest", "--to", &to(&restored)])
        .run()
        .assert_exit(0, "one pass:");
    assert_eq!(counts(&restored), counts(&db));
    assert!(counts(&db).contains(&("items".into(), 2000)));

    // An existing file is refused without --clean, and left as it is.
    let before = std::fs::read(&restored).unwrap();
    kubectl_dr(&["restore", &id, "--to", &to(&restored)])
        .run()
        .assert_exit(2, "pass --clean");
    assert_eq!(std::fs::read(&restored).unwrap(), before);
    kubectl_dr(&["restore", &id, "--to", &to(&restored), "--clean", "--yes"])
        .run()
        .assert_exit(0, "REPLACING it");
    assert_eq!(counts(&restored), counts(&db));
}

#[test]
fn a_damaged_part_leaves_the_destination_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    seed(&db, 500);
    let (store, keys) = (TestStore::local(), Keys::generate());
    let id = backup(&store, &keys, "damaged", &db);
    let part = store
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sqlite.zst.age"))
        .unwrap();
    let path = store.object_path(&part);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let target = dir.path().join("target.db");
    seed(&target, 7);
    let before = std::fs::read(&target).unwrap();
    dr("kubectl-dr")
        .args(["restore", &id, "--to", &to(&target), "--clean", "--yes"])
        .identity(&keys)
        .store(&store)
        .run()
        .assert_exit(1, "one pass:");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kube-dr-restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_example_engine_works_in_restore_all_and_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    seed(&a, 100);
    seed(&b, 300);
    let (store, keys) = (TestStore::local(), Keys::generate());
    backup(&store, &keys, "a", &a);
    backup(&store, &keys, "b", &b);

    let out_dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (out_dir.path().join("a.db"), out_dir.path().join("b.db"));
    let state = out_dir.path().join("state.json");
    let ran = dr("kubectl-dr")
        .args(["restore", "--all", "--yes", "-o", "json"])
        .args(["--to", &format!("sqlite/a={}", to(&ra))])
        .args(["--to", &format!("sqlite/b={}", to(&rb))])
        .args(["--state", state.to_str().unwrap()])
        .identity(&keys)
        .store(&store)
        .run();
    ran.assert_exit(0, "step 2/2");
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout()).unwrap();
    let statuses = step_statuses(&summary);
    assert_eq!(statuses, ["restored", "restored"]);
    assert_eq!(counts(&ra), counts(&a));
    assert_eq!(counts(&rb), counts(&b));

    // The drill: into <target>__drill.db in the scratch directory, removed afterwards; a
    // file of that name without the drill's marker is refused and left alone.
    let scratch = tempfile::tempdir().unwrap();
    let squatter = scratch.path().join("b__drill.db");
    std::fs::write(&squatter, b"not the drill's").unwrap();
    let drill = dr("worker")
        .args(["drill", "--to", &format!("sqlite={}", to(scratch.path()))])
        .identity(&keys)
        .store(&store);
    let ran = drill.run();
    ran.assert_exit(2, "not a drill's leftover");
    let reports: Vec<serde_json::Value> = ran
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdict = |t: &str| {
        reports
            .iter()
            .find(|r| r["target"] == t)
            .map(|r| {
                (
                    r["verdict"].as_str().unwrap().to_string(),
                    r["restored"].as_bool().unwrap(),
                )
            })
            .unwrap()
    };
    assert_eq!(verdict("a"), ("passed".to_string(), true));
    assert_eq!(verdict("b"), ("failed".to_string(), false));
    assert_eq!(std::fs::read(&squatter).unwrap(), b"not the drill's");
    std::fs::remove_file(&squatter).unwrap();
    drill.run().assert_exit(0, "every drill passed");
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "the drill left {left:?}");
}
