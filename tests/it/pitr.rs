//! PostgreSQL point-in-time recovery on real servers (15, and 18 with DR_TEST_PG=18):
//! `worker archive postgres` streaming WAL from a fresh server, `worker backup postgres
//! --physical`, `kubectl dr restore --time … --to-datadir` and a server started on the
//! result (by the test, or by `--start`), `verify --wal`; a killed archiver, a deleted and a
//! damaged segment, a second timeline, unsigned WAL and a wrong key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dr_tests::*;

/// The archiver's RPO in these tests.
const MAX_LAG: &str = "2s";

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cmd` as the postgres user when the tests run as root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A directory the postgres user may use, removed when dropped.
fn pg_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    if root() {
        let ok = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(ok.success());
    }
    dir
}

/// The age key where the postgres user can read it (restore_command runs as postgres).
fn readable_identity(keys: &Keys) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("key.txt");
    std::fs::copy(&keys.identity, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, path)
}

/// The libpq environment of a fresh server.
fn pg_env(pg: &FreshPostgres) -> Vec<(&'static str, String)> {
    vec![
        ("PGHOST", "127.0.0.1".into()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".into()),
        ("PGDATABASE", "postgres".into()),
    ]
}

/// A running `worker archive postgres`.
struct Archiver {
    watched: Watched,
}

impl Archiver {
    fn start(
        pg: &FreshPostgres,
        store: &TestStore,
        keys: &Keys,
        target: &str,
        extra: &[&str],
        spool: &Path,
    ) -> Archiver {
        let env = pg_env(pg);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let spool = spool.to_str().unwrap();
        let mut args = vec![
            "archive",
            "postgres",
            "--target",
            target,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
            "--max-lag",
            MAX_LAG,
            "--spool",
            spool,
        ];
        args.extend_from_slice(extra);
        let mut watched = Watched::spawn(command("worker", &args, &env));
        assert!(
            watched.until("WAL archiver started"),
            "the archiver did not start:\n{}",
            watched.stderr
        );
        Archiver { watched }
    }

    /// SIGTERM: it stores what it received and exits 0.
    fn stop(self) -> String {
        self.watched.signal("TERM");
        let (status, _, stderr) = self.watched.finish();
        assert!(status.success(), "archiver exit {status:?}:\n{stderr}");
        assert!(stderr.contains("WAL archiver stopped"), "{stderr}");
        stderr
    }
}

/// Inserts row `id` in its own transaction and returns its commit's time (the time after
/// the commit returned, and the row's clock_timestamp() before it).
async fn insert(client: &tokio_postgres::Client, id: i32) -> (DateTime<Utc>, DateTime<Utc>) {
    let row = client
        .query_one("INSERT INTO t(id) VALUES ($1) RETURNING at", &[&id])
        .await
        .expect("insert");
    let at: std::time::SystemTime = row.get(0);
    (at.into(), Utc::now())
}

async fn setup(pg: &FreshPostgres) -> tokio_postgres::Client {
    let c = pg.connect("postgres").await;
    c.batch_execute(
        "CREATE TABLE t(id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .await
    .unwrap();
    c
}

fn base_backup(pg: &FreshPostgres, store: &TestStore, keys: &Keys, target: &str) -> String {
    let env = pg_env(pg);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = run(
        "worker",
        &[
            "backup",
            "postgres",
            "--physical",
            "--target",
            target,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Waits until `verify --wal` says the newest archived commit is at least `at` (a row's
/// clock_timestamp() at its insert: its commit is later).
fn wait_archived(store: &TestStore, target: &str, at: DateTime<Utc>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            "kubectl-dr",
            &[
                "verify",
                "--wal",
                "--target",
                target,
                "--store",
                store.url(),
                "-o",
                "json",
            ],
            &[],
        );
        let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let to = w["to"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        if to.is_some_and(|t| t >= at) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not reach {at} within 30 s: {w}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A server started by the test on a restored directory, stopped when dropped.
struct Restored {
    dir: PathBuf,
    port: u16,
}

impl Restored {
    /// pg_ctl start as postgres with the store's credentials, then waits for promotion.
    fn start(dir: &Path) -> Result<Restored, String> {
        if root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let bin = PathBuf::from(svc("DR_PG_BIN_DIR"));
        // -w: pg_ctl returns once the server accepts connections (read-only ones during a
        // hot standby's recovery count) or failed to start.
        let mut cmd = as_postgres(&bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(dir)
            .arg("-l")
            .arg(dir.join("test.log"))
            .args(["-w", "-t", "120", "start", "-o"])
            .arg(format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                dir.display()
            ));
        for (k, v) in services() {
            if k.starts_with("AWS_") {
                cmd.env(k, v);
            }
        }
        let restored = Restored {
            dir: dir.to_path_buf(),
            port,
        };
        let log = || std::fs::read_to_string(dir.join("test.log")).unwrap_or_default();
        if !cmd.output().unwrap().status.success() {
            return Err(log());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let text = log();
            if text.contains("database system is ready to accept connections") {
                return Ok(restored);
            }
            let running = as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(dir)
                .arg("status")
                .output()
                .unwrap()
                .status
                .success();
            if !running {
                return Err(text);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "recovery did not finish:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    async fn ids(&self) -> Vec<i32> {
        ids_at(self.port).await
    }
}

async fn ids_at(port: u16) -> Vec<i32> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres",
        svc("PGPASSWORD")
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect to the restored server");
    tokio::spawn(connection);
    client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

impl Drop for Restored {
    fn drop(&mut self) {
        let bin = PathBuf::from(svc("DR_PG_BIN_DIR"));
        let _ = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn restore_args<'a>(
    store: &'a TestStore,
    target: &'a str,
    time: &'a str,
    dir: &'a str,
    identity: &'a str,
) -> Vec<&'a str> {
    vec![
        "restore",
        "--engine",
        "postgres",
        "--target",
        target,
        "--time",
        time,
        "--to-datadir",
        dir,
        "--store",
        store.url(),
        "--identity",
        identity,
    ]
}

/// `kubectl dr verify --wal --target T`.
fn verify_wal(store: &TestStore, target: &str) -> std::process::Output {
    run(
        "kubectl-dr",
        &[
            "verify",
            "--wal",
            "--target",
            target,
            "--store",
            store.url(),
        ],
        &[],
    )
}

/// `kubectl dr restore … --time TIME --to-datadir DATA`.
fn restore(
    store: &TestStore,
    target: &str,
    time: &str,
    data: &Path,
    identity: &str,
) -> std::process::Output {
    run(
        "kubectl-dr",
        &restore_args(store, target, time, data.to_str().unwrap(), identity),
        &[],
    )
}

/// The same with `--start` (and `extra`), run as the postgres user as an operator would,
/// the server on a free port with its socket in `dir`: the output and the port.
fn restore_and_start(
    store: &TestStore,
    target: &str,
    time: &str,
    dir: &Path,
    data: &Path,
    identity: &str,
) -> (std::process::Output, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let options = format!(
        "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
        dir.display()
    );
    let bin = svc("DR_PG_BIN_DIR");
    let mut args = restore_args(store, target, time, data.to_str().unwrap(), identity);
    args.extend([
        "--start",
        "--server-options",
        &options,
        "--server-bin-dir",
        &bin,
    ]);
    let mut cmd = as_postgres(&binary("kubectl-dr"));
    cmd.args(&args);
    for (k, v) in services() {
        cmd.env(k, v);
    }
    cmd.env("DR_SIGNERS", &suite_signer().public)
        .env_remove("DR_STORE");
    (cmd.output().unwrap(), port)
}

/// `kubectl dr wal-fetch FILE PATH` as PostgreSQL runs it, with `keys`' identity.
fn wal_fetch(
    store: &TestStore,
    target: &str,
    file: &str,
    path: &Path,
    keys: &Keys,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "wal-fetch",
        file,
        path.to_str().unwrap(),
        "--target",
        target,
        "--store",
        store.url(),
        "--identity",
        keys.identity.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run("kubectl-dr", &args, &[])
}

/// The name of the first whole segment the store holds.
fn first_segment(store: &TestStore) -> String {
    store
        .files()
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .find(|f| f.len() == 24 + 5 && f.ends_with(".json"))
        .map(|f| f.trim_end_matches(".json").to_string())
        .expect("a whole segment archived")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn midpoint(a: DateTime<Utc>, b: DateTime<Utc>) -> DateTime<Utc> {
    a + (b - a) / 2
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_to_a_time_between_two_commits_and_to_the_latest_one() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
    insert(&client, 1).await;
    let base = base_backup(&pg, &store, &keys, &target);
    let mut commits = Vec::new();
    for id in 2..=4 {
        commits.push(insert(&client, id).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    for id in 5..=6 {
        commits.push(insert(&client, id).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // An idle minute: the archive must stay current without any write.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let (last, _) = insert(&client, 7).await;
    wait_archived(&store, &target, last);
    let log = archiver.stop();
    assert!(
        log.contains(&format!("kube_dr_{}", target)),
        "the slot is named in the log:\n{log}"
    );

    let list = list_json(&store);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == base.as_str())
        .expect("the base is listed");
    assert_eq!(row["kind"], "physical");
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("recoverable from"),
        "{}",
        stdout(&out)
    );

    let (_kd, identity) = readable_identity(&keys);
    let identity = identity.to_str().unwrap();
    // Between row 3 and row 4: exactly rows 1–3.
    let between = midpoint(commits[1].1, commits[2].0);
    let dir = pg_dir();
    let data = dir.path().join("data");
    let out = restore(&store, &target, &rfc3339(between), &data, identity);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&base),
        "the plan names the base: {}",
        stderr(&out)
    );
    assert!(data.join("recovery.signal").exists());
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, vec![1, 2, 3]);
    drop(restored);

    // Latest, with --start: every row, the one after the idle minute too.
    let dir2 = pg_dir();
    let data2 = dir2.path().join("data");
    let (out, port) = restore_and_start(&store, &target, "latest", dir2.path(), &data2, identity);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("PostgreSQL is running"),
        "{}",
        stdout(&out)
    );
    let started = Restored {
        dir: data2.clone(),
        port,
    };
    assert_eq!(started.ids().await, (1..=7).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archiver_killed_mid_segment_resumes_from_its_slot_without_a_gap() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let mut archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
    base_backup(&pg, &store, &keys, &target);
    for id in 1..=50 {
        insert(&client, id).await;
    }
    // Mid-segment, and with the partial segment possibly half stored.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    archiver.watched.kill();
    let _ = archiver.watched.finish();
    // Written while nothing archives: only the slot keeps it.
    client
        .batch_execute(
            "INSERT INTO t(id) SELECT g FROM generate_series(51, 5000) g; SELECT pg_switch_wal();",
        )
        .await
        .unwrap();
    let (last, _) = insert(&client, 5001).await;
    // A new spool: the pod moved to another node.
    let spool2 = pg_dir();
    let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool2.path());
    wait_archived(&store, &target, last);
    archiver.stop();
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let (_kd, identity) = readable_identity(&keys);
    let dir = pg_dir();
    let data = dir.path().join("data");
    let out = restore(&store, &target, "latest", &data, identity.to_str().unwrap());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, (1..=5001).collect::<Vec<_>>());
    drop(restored);
    // The same through restore --all with a datadir: destination, then --resume.
    let dir2 = pg_dir();
    let data2 = dir2.path().join("data");
    let dest = format!("postgres/{target}=datadir:{}@latest", data2.display());
    let state = dir2.path().join("state.json");
    let all = |resume: bool| {
        let mut args = vec![
            "restore",
            "--all",
            "--to",
            &dest,
            "--store",
            store.url(),
            "--identity",
            identity.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
            "--state",
            state.to_str().unwrap(),
        ];
        if resume {
            args.push("--resume");
        }
        run("kubectl-dr", &args, &[])
    };
    let out = all(false);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(step_statuses(&summary), vec!["restored"], "{summary}");
    let out = all(true);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(step_statuses(&summary), vec!["done earlier"], "{summary}");
    let restored = Restored::start(&data2).expect("recovery");
    assert_eq!(restored.ids().await, (1..=5001).collect::<Vec<_>>());
}

/// The keys of one archived file (its object, entry and signature).
fn wal_keys(store: &TestStore, target: &str, file: &str) -> Vec<String> {
    store
        .files()
        .into_iter()
        .filter(|k| {
            k.contains(&format!("wal/postgres/{target}/"))
                && k.contains(&format!("/{file}."))
                && !k.contains(".current-")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_segment_is_a_named_gap_and_a_damaged_one_stops_recovery() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
    base_backup(&pg, &store, &keys, &target);
    let mut commits = Vec::new();
    let mut segments = Vec::new();
    for id in 1..=4 {
        commits.push(insert(&client, id).await);
        let row = client
            .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
            .await
            .unwrap();
        segments.push(row.get::<_, String>(0));
        client
            .batch_execute("SELECT pg_switch_wal()")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (last, _) = insert(&client, 5).await;
    wait_archived(&store, &target, last);
    archiver.stop();
    let (_kd, identity) = readable_identity(&keys);
    let identity = identity.to_str().unwrap();
    // `status` (no cluster) shows the window from the store.
    let home = tempfile::tempdir().unwrap();
    let home_text = home.path().display().to_string();
    let no_cluster = [("KUBECONFIG", ""), ("HOME", home_text.as_str())];
    let status = |store: &TestStore| {
        run(
            "kubectl-dr",
            &["status", "--store", store.url(), "-o", "json"],
            &no_cluster,
        )
    };
    let out = status(&store);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["wal"][0]["target"], target.as_str(), "{report}");
    assert!(report["wal"][0]["to"].is_string(), "{report}");

    // Row 3's segment gone.
    let gone = &segments[2];
    let keys_of = wal_keys(&store, &target, gone);
    assert_eq!(
        keys_of.len(),
        3,
        "object, entry, signature of {gone}: {keys_of:?}"
    );
    let s = store.open().await;
    for k in &keys_of {
        s.delete(k).await.unwrap();
    }
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stdout(&out).contains(gone.as_str()),
        "the gap is named: {}",
        stdout(&out)
    );
    let out = status(&store);
    assert_eq!(code(&out), 1, "status fails on the gap: {}", stderr(&out));
    assert!(stdout(&out).contains(gone.as_str()), "{}", stdout(&out));

    // Before the gap, where a later commit still in the archive marks the stop: row 1.
    // (Between row 2 and the gap no restore is offered: a commit may hide in the gap.)
    let dir = pg_dir();
    let data = dir.path().join("data");
    let before = midpoint(commits[0].1, commits[1].0);
    let out = restore(&store, &target, &rfc3339(before), &data, identity);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, vec![1]);
    drop(restored);

    // After it: refused before anything is written.
    let dir = pg_dir();
    let data = dir.path().join("data");
    let after = midpoint(commits[2].1, commits[3].0);
    let out = restore(&store, &target, &rfc3339(after), &data, identity);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains(gone.as_str()), "{}", stderr(&out));
    assert!(!data.exists(), "nothing was written");

    // A flipped byte in row 2's segment: wal-fetch refuses it, PostgreSQL stops, exit 1.
    let damaged = &segments[1];
    let object = wal_keys(&store, &target, damaged)
        .into_iter()
        .find(|k| k.ends_with(".age"))
        .unwrap();
    store.damage(&object).await;
    let dir = pg_dir();
    let data = dir.path().join("data");
    let (out, _) = restore_and_start(
        &store,
        &target,
        &rfc3339(before),
        dir.path(),
        &data,
        identity,
    );
    assert_eq!(code(&out), 1, "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains(damaged.as_str()) && stderr(&out).contains("sha256"),
        "{}",
        stderr(&out)
    );
    let running = as_postgres(&PathBuf::from(svc("DR_PG_BIN_DIR")).join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("status")
        .output()
        .unwrap();
    assert!(!running.status.success(), "the server did not stay up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_timeline_is_archived_and_restored_along() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
    base_backup(&pg, &store, &keys, &target);
    let mut commits = Vec::new();
    for id in 1..=3 {
        commits.push(insert(&client, id).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_archived(&store, &target, commits[2].0);
    archiver.stop();
    let (_kd, identity) = readable_identity(&keys);
    let identity = identity.to_str().unwrap();
    // Restore to between 2 and 3 and promote: timeline 2.
    let dir = pg_dir();
    let data = dir.path().join("data");
    let t1 = midpoint(commits[1].1, commits[2].0);
    let out = restore(&store, &target, &rfc3339(t1), &data, identity);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, vec![1, 2]);
    // Archive the new timeline from the promoted server and write to it.
    let promoted = FreshPostgres::attach(restored.port);
    let spool2 = pg_dir();
    let archiver = Archiver::start(&promoted, &store, &keys, &target, &[], spool2.path());
    let c2 = promoted.connect("postgres").await;
    let mut tl2 = Vec::new();
    for id in [20, 21] {
        tl2.push(insert(&c2, id).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_archived(&store, &target, tl2[1].0);
    archiver.stop();
    assert!(
        store
            .files()
            .iter()
            .any(|k| k.ends_with("/00000002/00000002.history.json")),
        "the history file is archived"
    );
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("timeline 2"), "{}", stdout(&out));
    drop(restored);
    // To a time between 20 and 21 on timeline 2: 1, 2, 20.
    let dir = pg_dir();
    let data = dir.path().join("data");
    let t2 = midpoint(tl2[0].1, tl2[1].0);
    let out = restore(&store, &target, &rfc3339(t2), &data, identity);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let again = Restored::start(&data).expect("recovery along timeline 2");
    assert_eq!(again.ids().await, vec![1, 2, 20]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_wal_and_a_wrong_key_are_refused() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    // An archiver without a signing key, on purpose.
    let env = pg_env(&pg);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "archive",
        "postgres",
        "--target",
        &target,
        "--store",
        store.url(),
        "-r",
        &keys.recipient,
        "--max-lag",
        MAX_LAG,
        "--spool",
        spool.path().to_str().unwrap(),
        "--unsigned",
    ];
    let mut cmd = command("worker", &args, &env);
    cmd.env_remove("DR_SIGNING_KEY_FILE");
    let mut watched = Watched::spawn(cmd);
    assert!(watched.until("WAL archiver started"), "{}", watched.stderr);
    base_backup(&pg, &store, &keys, &target);
    insert(&client, 1).await;
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    watched.signal("TERM");
    let (status, _, err) = watched.finish();
    assert!(status.success(), "{err}");

    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stdout(&out).contains("no signature"), "{}", stdout(&out));
    let dir = pg_dir();
    let data = dir.path().join("data");
    let out = restore(
        &store,
        &target,
        "latest",
        &data,
        keys.identity.to_str().unwrap(),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no signature"), "{}", stderr(&out));
    assert!(!data.exists());

    // wal-fetch with a key that is not a recipient: exit 255, PostgreSQL stops recovery.
    let file = first_segment(&store);
    let stranger = Keys::generate();
    let to = tempfile::tempdir().unwrap();
    let path = to.path().join("RECOVERYXLOG");
    let out = wal_fetch(
        &store,
        &target,
        &file,
        &path,
        &stranger,
        &["--allow-unsigned"],
    );
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(!path.exists());
    // The right key (unsigned accepted on request): delivered.
    let out = wal_fetch(&store, &target, &file, &path, &keys, &["--allow-unsigned"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
    // Not archived: exit 1, recovery ends there.
    let out = wal_fetch(
        &store,
        &target,
        "0000000100000000000000FF",
        &path,
        &keys,
        &["--allow-unsigned"],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slot_and_the_archive_age_reach_the_pushgateway() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let gateway = svc("DR_TEST_PUSHGATEWAY");
    let archiver = Archiver::start(
        &pg,
        &store,
        &keys,
        &target,
        &["--pushgateway", &gateway],
        spool.path(),
    );
    insert(&client, 1).await;
    // The archiver pushes every 15 s and once more when it stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    archiver.stop();
    let lines = pushed_lines("kube_dr_wal_", &target).await;
    let value = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not pushed: {lines:?}"))
    };
    let now = Utc::now().timestamp() as f64;
    assert!((now - value("kube_dr_wal_last_segment_timestamp_seconds")).abs() < 60.0);
    assert!(value("kube_dr_wal_slot_retained_bytes") >= 0.0);
    assert_eq!(
        value("kube_dr_wal_slot_limit_bytes"),
        10.0 * 1024.0 * 1024.0 * 1024.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_drops_the_wal_before_the_oldest_kept_base_and_the_newest_still_restores() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
    let first = base_backup(&pg, &store, &keys, &target);
    for id in 1..=3 {
        insert(&client, id).await;
        client
            .batch_execute("SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    let second = base_backup(&pg, &store, &keys, &target);
    let start: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .unwrap()
        .get(0);
    let (last, _) = insert(&client, 4).await;
    wait_archived(&store, &target, last);
    archiver.stop();
    let segments = |store: &TestStore| -> Vec<String> {
        let mut names: Vec<String> = store
            .files()
            .into_iter()
            .filter(|k| k.contains(&format!("wal/postgres/{target}/")) && k.ends_with(".json"))
            .filter_map(|k| {
                k.rsplit('/')
                    .next()
                    .map(|n| n[..24.min(n.len())].to_string())
            })
            .filter(|n| n.len() == 24)
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let before = segments(&store);
    let out = run(
        "worker",
        &[
            "prune",
            "--engine",
            "postgres",
            "--target",
            &target,
            "--keep-last",
            "1",
            "--store",
            store.url(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after = segments(&store);
    assert!(
        list_json(&store)
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != first.as_str()),
        "the older base went"
    );
    // Exactly the segments from the kept base's start on stay.
    let s = store.open().await;
    let manifest: serde_json::Value = serde_json::from_slice(
        &s.get_bytes(
            &format!("postgres/{target}/{second}/manifest.json"),
            1 << 20,
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let start_lsn = manifest["facts"]["start_lsn"].as_str().unwrap();
    let (hi, lo) = start_lsn.split_once('/').unwrap();
    let number =
        (u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()) >> 24;
    let kept_from = format!("{:08X}{:08X}", number >> 8, number & 0xFF);
    let expected: Vec<String> = before
        .iter()
        .filter(|n| n[8..] >= *kept_from)
        .cloned()
        .collect();
    assert!(
        expected.len() < before.len(),
        "the test archived WAL before the kept base: {before:?}"
    );
    assert_eq!(after, expected, "kept from {kept_from}");
    assert!(after.iter().any(|n| n == &start), "{start} stays");
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let (_kd, identity) = readable_identity(&keys);
    let dir = pg_dir();
    let data = dir.path().join("data");
    // Into the data directory, WAL included (the in-cluster Job's way): no store access
    // during recovery.
    let mut args = restore_args(
        &store,
        &target,
        "latest",
        data.to_str().unwrap(),
        identity.to_str().unwrap(),
    );
    args.push("--wal-into-datadir");
    let out = run("kubectl-dr", &args, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("restore_command = 'false %f %p'"), "{conf}");
    assert!(
        data.join("pg_wal").join(&start).exists(),
        "{start} is in pg_wal"
    );
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_all_re_encrypts_the_wal_archive_too() {
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let (store, old) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    let spool = pg_dir();
    let archiver = Archiver::start(&pg, &store, &old, &target, &[], spool.path());
    base_backup(&pg, &store, &old, &target);
    for id in 1..=3 {
        insert(&client, id).await;
        client
            .batch_execute("SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    let (last, _) = insert(&client, 4).await;
    wait_archived(&store, &target, last);
    archiver.stop();
    let new = Keys::generate();
    let rekey = || {
        run(
            "kubectl-dr",
            &[
                "rekey",
                "--all",
                "--target",
                &target,
                "--store",
                store.url(),
                "-i",
                old.identity.to_str().unwrap(),
                "-r",
                &new.recipient,
                "--yes",
            ],
            &[],
        )
    };
    let out = rekey();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("WAL postgres/{target}")),
        "{}",
        stderr(&out)
    );
    // Every file re-encrypted and signed: verify --wal is clean, no .prev is left.
    let out = verify_wal(&store, &target);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!store.files().iter().any(|k| k.ends_with(".prev")));
    // The old key opens no segment, the new one restores everything.
    let file = first_segment(&store);
    let to = tempfile::tempdir().unwrap();
    let path = to.path().join("RECOVERYXLOG");
    let fetch = |keys: &Keys| wal_fetch(&store, &target, &file, &path, keys, &[]);
    assert_eq!(code(&fetch(&old)), 255);
    assert_eq!(code(&fetch(&new)), 0);
    // A second run finds nothing to do.
    let out = rekey();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 file(s) re-encrypted"),
        "{}",
        stderr(&out)
    );
    let (_kd, identity) = readable_identity(&new);
    let dir = pg_dir();
    let data = dir.path().join("data");
    let out = restore(&store, &target, "latest", &data, identity.to_str().unwrap());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = Restored::start(&data).expect("recovery");
    assert_eq!(restored.ids().await, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn object_lock_covers_the_wal_and_prune_keeps_what_it_holds() {
    use super::object_lock::{locked_bucket, moto};
    let pg = FreshPostgres::start();
    let client = setup(&pg).await;
    let keys = Keys::generate();
    let bucket = locked_bucket(false).await;
    let url = format!("s3://{bucket}/pitr");
    let target = unique("pitr");
    let spool = pg_dir();
    let moto_url = moto();
    let env: Vec<(&str, String)> = pg_env(&pg)
        .into_iter()
        .chain([("AWS_ENDPOINT_URL", moto_url.clone())])
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lock = ["--object-lock", "governance", "--retain", "1d"];
    let args: Vec<&str> = [
        "archive",
        "postgres",
        "--target",
        &target,
        "--store",
        &url,
        "-r",
        &keys.recipient,
        "--max-lag",
        MAX_LAG,
        "--spool",
        spool.path().to_str().unwrap(),
    ]
    .into_iter()
    .chain(lock)
    .collect();
    let mut archiver = Watched::spawn(command("worker", &args, &env));
    assert!(
        archiver.until("WAL archiver started"),
        "{}",
        archiver.stderr
    );
    let base = |env: &[(&str, &str)]| {
        let args: Vec<&str> = [
            "backup",
            "postgres",
            "--physical",
            "--target",
            &target,
            "--store",
            &url,
            "-r",
            &keys.recipient,
        ]
        .into_iter()
        .chain(lock)
        .collect();
        let out = run("worker", &args, env);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    };
    base(&env);
    for id in 1..=3 {
        insert(&client, id).await;
        client
            .batch_execute("SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    base(&env);
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    archiver.signal("TERM");
    let (status, _, err) = archiver.finish();
    assert!(status.success(), "{err}");
    // Every archived object is locked.
    let s3 = s3_client(&moto_url);
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("pitr/wal/postgres/{target}/"))
        .send()
        .await
        .unwrap();
    let objects: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .filter(|k| k.ends_with(".age"))
        .collect();
    assert!(objects.len() >= 3, "{objects:?}");
    for key in &objects {
        // moto answers GetObjectRetention with the object itself; HEAD carries the lock.
        let head = s3
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .expect("head");
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str().to_string()),
            Some("GOVERNANCE".to_string()),
            "{key}"
        );
    }
    // Prune keeping one base: the WAL before it is held, reported and kept.
    let out = run(
        "worker",
        &[
            "prune",
            "--target",
            &target,
            "--store",
            &url,
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("held by object lock"),
        "{}",
        stderr(&out)
    );
    let after = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("pitr/wal/postgres/{target}/"))
        .send()
        .await
        .unwrap();
    let still: Vec<String> = after
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .filter(|k| k.ends_with(".age"))
        .collect();
    assert_eq!(still, objects, "nothing held was deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_archive_works_on_azure_blob_and_gcs() {
    for store in [TestStore::azure(), TestStore::gcs()] {
        let pg = FreshPostgres::start();
        let client = setup(&pg).await;
        let keys = Keys::generate();
        let target = unique("pitr");
        let spool = pg_dir();
        let archiver = Archiver::start(&pg, &store, &keys, &target, &[], spool.path());
        base_backup(&pg, &store, &keys, &target);
        for id in 1..=2 {
            insert(&client, id).await;
            client
                .batch_execute("SELECT pg_switch_wal()")
                .await
                .unwrap();
        }
        let (last, _) = insert(&client, 3).await;
        wait_archived(&store, &target, last);
        archiver.stop();
        let out = verify_wal(&store, &target);
        assert_eq!(
            code(&out),
            0,
            "{}: {}{}",
            store.url(),
            stdout(&out),
            stderr(&out)
        );
        let (_kd, identity) = readable_identity(&keys);
        let dir = pg_dir();
        let data = dir.path().join("data");
        let mut args = restore_args(
            &store,
            &target,
            "latest",
            data.to_str().unwrap(),
            identity.to_str().unwrap(),
        );
        args.push("--wal-into-datadir");
        let out = run("kubectl-dr", &args, &[]);
        assert_eq!(code(&out), 0, "{}: {}", store.url(), stderr(&out));
        let restored = Restored::start(&data).expect("recovery");
        assert_eq!(restored.ids().await, vec![1, 2, 3], "{}", store.url());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_an_archiver_whose_store_stalls_while_it_starts() {
    let pg = FreshPostgres::start();
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let target = unique("pitr");
    // A store that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front = format!("http://{}", silent.local_addr().unwrap());
    let spool = pg_dir();
    let env: Vec<(&str, String)> = pg_env(&pg)
        .into_iter()
        .chain([("AWS_ENDPOINT_URL", front)])
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "archive",
        "postgres",
        "--target",
        &target,
        "--store",
        store.url(),
        "-r",
        &keys.recipient,
        "--max-lag",
        MAX_LAG,
        "--spool",
        spool.path().to_str().unwrap(),
    ];
    let starting = Watched::spawn(command("worker", &args, &env));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = std::time::Instant::now();
    starting.signal("TERM");
    let (status, _, stderr) = starting.finish();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}:\n{stderr}",
        sent.elapsed()
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("stopped while starting"), "{stderr}");
    drop(silent);
}
