//! The rebuild day and the drill, on real servers: `kubectl dr restore --all` from one
//! store onto *fresh* servers (a new OpenBao, a new PostgreSQL data directory, a new
//! ClickHouse 26 engine) in the runbooks' order, with its summary and RTO; a damaged part
//! that stops it before anything is touched; a failed step continued with `--resume`; and
//! `worker drill` into `__drill` scratch databases, with its metrics, a flipped byte, and
//! the names it must refuse.

use dr_tests::bao::Bao;
use dr_tests::*;
use serde_json::Value;

use crate::clickhouse::{FreshServer, Server};

/// Two PostgreSQL databases with a few related tables each, on the services' server.
async fn seed_postgres(prefix: &str) -> (String, String) {
    let (a, b) = (
        unique(&format!("{prefix}_a")),
        unique(&format!("{prefix}_b")),
    );
    for (db, rows) in [(&a, 5000), (&b, 1200)] {
        create_database(db).await;
        pg_connect(db)
            .await
            .batch_execute(&format!(
                "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, born date);
                 CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers, total numeric(10,2), note text);
                 CREATE INDEX ON orders (customer);
                 INSERT INTO customers (name, born) SELECT 'c' || n, date '1990-01-01' + n FROM generate_series(1, {rows}) n;
                 INSERT INTO orders (customer, total, note) SELECT 1 + n % {rows}, n / 7.0, CASE WHEN n % 3 = 0 THEN NULL ELSE 'tab\there' END FROM generate_series(1, {rows} * 3) n;"
            ))
            .await
            .expect("seed");
    }
    (a, b)
}

/// A small telemetry-like ClickHouse database with a materialized view.
pub(crate) async fn seed_clickhouse(server: &Server, db: &str) {
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.logs (ts DateTime, level String, body String, n UInt64) ENGINE = MergeTree ORDER BY (ts, n)"),
        format!("CREATE TABLE {db}.per_level (level String, c UInt64) ENGINE = SummingMergeTree ORDER BY level"),
        format!("CREATE MATERIALIZED VIEW {db}.per_level_mv TO {db}.per_level AS SELECT level, count() AS c FROM {db}.logs GROUP BY level"),
        format!("INSERT INTO {db}.logs SELECT toDateTime('2026-11-01 00:00:00') + number, if(number % 5 = 0, 'error', 'info'), concat('line ', toString(number)), number FROM numbers(20000)"),
    ] {
        server.ch(&sql).await;
    }
}

/// Count and an order-independent content hash of a table; `rows` folds what a merge
/// may fold (a SummingMergeTree's unmerged parts).
pub(crate) async fn ch_fingerprint(server: &Server, db: &str, table: &str, rows: &str) -> String {
    let (columns, group) = rows.split_once(" GROUP BY ").unwrap_or((rows, ""));
    let group = if group.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {group}")
    };
    server
        .ch(&format!(
            "SELECT count(), sum(cityHash64(*)) FROM (SELECT {columns} FROM {db}.{table}{group})"
        ))
        .await
}

fn dr(store: &TestStore, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--store", store.url()]);
    run("kubectl-dr", &all, env)
}

fn backup_clickhouse(server: &Server, store: &TestStore, keys: &Keys, target: &str, db: &str) {
    let out = run(
        "worker",
        &[
            "backup",
            "clickhouse",
            "--target",
            target,
            "--database",
            db,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[("CLICKHOUSE_URL", &server.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_onto_fresh_servers_restores_everything_in_order_with_the_rto() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    // The old cluster: OpenBao, a PostgreSQL server with two databases and its roles, a
    // ClickHouse database (Debian's 18.16).
    let bao = Bao::start().await;
    bao.seed().await;
    let out = crate::vault::backup(&bao, &store, &keys, &bao.root_token);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = seed_postgres("rb").await;
    let role = unique("rb_role");
    pg_connect("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {role} NOLOGIN"))
        .await
        .unwrap();
    backup_postgres(&store, &keys, "shop", &a, &["--database", &b, "--globals"]);
    let legacy = Server::legacy();
    let ch_db = unique("rb_ch");
    seed_clickhouse(&legacy, &ch_db).await;
    backup_clickhouse(&legacy, &store, &keys, "signoz", &ch_db);

    // The rebuilt cluster: fresh servers, new data directories.
    let (fresh_bao, fresh_pg, fresh_ch) = (
        Bao::start().await,
        FreshPostgres::start(),
        FreshServer::start().await,
    );
    let old_root = keys.dir.path().join("old-root.txt");
    std::fs::write(&old_root, &bao.root_token).unwrap();
    let state = keys.dir.path().join("rebuild.json");
    let plan = keys.dir.path().join("plan.yaml");
    std::fs::write(
        &plan,
        format!(
            "# the rebuild's destinations\nto:\n  postgres: {}\n  clickhouse: {}\n",
            fresh_pg.url(),
            fresh_ch.url
        ),
    )
    .unwrap();
    let to_vault = format!("vault={}", fresh_bao.addr);
    let mut restore = Watched::spawn(command(
        "kubectl-dr",
        &[
            "restore",
            "--all",
            "-i",
            keys.identity.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            "--to",
            &to_vault,
            "--globals",
            "--force",
            "--wait",
            "90s",
            "--restored-token-file",
            old_root.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
            "--store",
            store.url(),
        ],
        &[("VAULT_TOKEN", &fresh_bao.root_token)],
    ));
    // The run pauses after Vault's restore for the old cluster's unseal key, as it would
    // for a person.
    let asked = restore.until("is sealed after the restore");
    assert!(asked, "never asked to unseal: {}", restore.stderr);
    // Nothing after Vault has started yet.
    assert!(
        !restore.stderr.contains("==> step 2/"),
        "{}",
        restore.stderr
    );
    fresh_bao.unseal(&bao.unseal_key).await;
    let (status, out, err) = restore.finish();
    eprintln!("{err}");
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    let summary: Value = serde_json::from_str(&out).expect("json summary");
    assert_eq!(summary["ok"], true, "{summary}");
    let steps = summary["steps"].as_array().unwrap();
    let order: Vec<(String, Option<String>)> = steps
        .iter()
        .map(|s| {
            (
                s["engine"].as_str().unwrap().to_string(),
                s["database"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("vault".into(), None),
            ("postgres".into(), Some(a.clone())),
            ("postgres".into(), Some(b.clone())),
            ("clickhouse".into(), None),
        ]
    );
    for s in steps {
        assert_eq!(s["status"], "restored", "{s}");
        assert!(s["seconds"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["counts"]["ok"], true, "{s}");
        assert!(s["stored_bytes"].as_u64().unwrap() > 0, "{s}");
    }
    let rto = summary["rto_seconds"].as_f64().unwrap();
    let sum: f64 = steps.iter().map(|s| s["seconds"].as_f64().unwrap()).sum();
    assert!(rto >= sum, "the RTO covers every step: {rto} < {sum}");
    // The steps ran in order, each announced before the next.
    let at = |needle: &str| {
        err.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing:\n{err}"))
    };
    assert!(at("==> step 1/4: vault/") < at("==> step 2/4: postgres/shop/"));
    assert!(at("==> step 3/4: postgres/shop/") < at("==> step 4/4: clickhouse/signoz/"));

    // Secrets read back with the old cluster's token; roles, tables and rows equal.
    crate::vault::assert_secrets(&fresh_bao, &bao.root_token).await;
    let roles = fresh_pg
        .connect("postgres")
        .await
        .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap();
    assert_eq!(roles.len(), 1, "the globals part's role was restored first");
    for db in [&a, &b] {
        let before = pg_fingerprint(&pg_connect(db).await).await;
        let after = pg_fingerprint(&fresh_pg.connect(db).await).await;
        assert_eq!(before.len(), 2);
        assert_eq!(before, after, "{db}");
    }
    let fresh = fresh_ch.server();
    for (table, rows) in [("logs", "*"), ("per_level", "level, sum(c) GROUP BY level")] {
        assert_eq!(
            ch_fingerprint(&legacy, &ch_db, table, rows).await,
            ch_fingerprint(&fresh, &ch_db, table, rows).await,
            "{table}"
        );
    }
    // A second run of the same command has nothing left to do only with --resume; without
    // it, the finished state is replaced and the restore refuses the now non-empty targets.
    let state_json: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(state_json["done"].as_array().unwrap().len(), 4);

    drop_database(&a).await;
    drop_database(&b).await;
    let _ = pg_connect("postgres")
        .await
        .batch_execute(&format!("DROP ROLE {role}"))
        .await;
    legacy.ch(&format!("DROP DATABASE {ch_db}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_part_stops_the_rebuild_before_anything_is_touched() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (a, b) = seed_postgres("rbd").await;
    backup_postgres(&store, &keys, "shop", &a, &[]);
    let legacy = Server::legacy();
    let ch_db = unique("rbd_ch");
    seed_clickhouse(&legacy, &ch_db).await;
    backup_clickhouse(&legacy, &store, &keys, "signoz", &ch_db);
    // Flip one byte in the middle of the ClickHouse logs part: the last step's backup.
    let logs = store
        .files()
        .into_iter()
        .find(|f| f.starts_with("clickhouse/") && f.contains("logs") && f.ends_with(".age"))
        .expect("logs part");
    let path = store.object_path(&logs);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let target_db = unique("rbd_target");
    let to_pg = format!("postgres={}", pg_url(&target_db));
    let to_ch = format!("clickhouse={}", legacy.url);
    let copy = unique("rbd_copy");
    let map = format!("{ch_db}={copy}");
    let before = ch_fingerprint(&legacy, &ch_db, "logs", "*").await;
    let out = dr(
        &store,
        &[
            "restore",
            "--all",
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to_pg,
            "--to",
            &to_ch,
            "--database-map",
            &map,
            "--yes",
            "--state",
            keys.dir.path().join("s.json").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("nothing was restored"), "{err}");
    assert!(
        err.contains("sha256") || err.contains("checksum") || err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("==> step"), "a step started: {err}");
    // Untouched: no database created, the ClickHouse copy never made, the source as before.
    assert!(!database_exists(&target_db).await);
    let copies = legacy
        .ch(&format!(
            "SELECT count() FROM system.databases WHERE name = '{copy}'"
        ))
        .await;
    assert_eq!(copies.trim(), "0");
    assert_eq!(ch_fingerprint(&legacy, &ch_db, "logs", "*").await, before);

    drop_database(&a).await;
    drop_database(&b).await;
    legacy.ch(&format!("DROP DATABASE {ch_db}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_step_resumes_without_redoing_the_verified_ones() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (a, b) = seed_postgres("rbr").await;
    backup_postgres(&store, &keys, "shop", &a, &["--database", &b]);
    let out = backup_command(&store, &keys, "tfstate", &["sh", "-c", "seq 1 20000"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = FreshPostgres::start();
    let state = keys.dir.path().join("state.json");
    let flag = keys.dir.path().join("ready");
    let sink_file = keys.dir.path().join("tfstate.out");
    // Step 3 (the command output) fails until `ready` exists.
    let script = format!(
        "test -f {} && cat > {}",
        flag.display(),
        sink_file.display()
    );
    let to_pg = format!("postgres={}", fresh.url());
    let args = |resume: bool| {
        let mut v: Vec<String> = [
            "restore",
            "--all",
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to_pg,
            "--state",
            state.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
            "--store",
            store.url(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            v.push("--resume".into());
        }
        v.extend(
            ["--to-command", "--", "sh", "-c", &script]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    };
    let first = args(false);
    let out = run(
        "kubectl-dr",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("step 3/3 command/tfstate/"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let summary: Value =
        serde_json::from_slice(&out.stdout).expect("a summary after a failure too");
    let statuses = step_statuses(&summary);
    assert_eq!(statuses, ["restored", "restored", "failed"]);
    assert_eq!(summary["ok"], false);

    // Without --resume the unfinished run is not silently started over.
    let out = run(
        "kubectl-dr",
        &first.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));

    // A newer backup appears meanwhile: the resumed run keeps the backups it chose.
    let out = backup_command(&store, &keys, "tfstate", &["sh", "-c", "seq 1 5"], &[]);
    assert!(out.status.success());
    std::fs::write(&flag, "").unwrap();
    let again = args(true);
    let out = run(
        "kubectl-dr",
        &again.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("step 1/3") && err.contains("verified in the earlier run; skipped"),
        "{err}"
    );
    assert!(
        !err.contains("==> step 1/3") && !err.contains("==> step 2/3"),
        "{err}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses = step_statuses(&summary);
    assert_eq!(statuses, ["done earlier", "done earlier", "restored"]);
    let restored = std::fs::read_to_string(&sink_file).unwrap();
    assert_eq!(
        restored.lines().count(),
        20000,
        "the first run's backup, not the newer one"
    );
    for db in [&a, &b] {
        assert_eq!(
            pg_fingerprint(&pg_connect(db).await).await,
            pg_fingerprint(&fresh.connect(db).await).await
        );
    }
    drop_database(&a).await;
    drop_database(&b).await;
}

/// The drill's metrics of one target on the test Pushgateway.
async fn drill_metrics(target: &str) -> Vec<String> {
    pushed_lines("kube_dr_drill_", target).await
}

async fn scratch_left(legacy: &Server) -> (usize, usize) {
    let pg = pg_connect("postgres")
        .await
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_drill'",
            &[],
        )
        .await
        .unwrap()
        .len();
    let ch = legacy
        .ch("SELECT count() FROM system.databases WHERE name LIKE '%\\_\\_drill'")
        .await;
    (pg, ch.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drill_restores_into_scratch_databases_and_drops_them() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (a, b) = seed_postgres("dr").await;
    let (pg_target, ch_target, cmd_target) = (unique("drpg"), unique("drch"), unique("drcmd"));
    backup_postgres(&store, &keys, &pg_target, &a, &["--database", &b]);
    let legacy = Server::legacy();
    let ch_db = unique("dr_ch");
    seed_clickhouse(&legacy, &ch_db).await;
    backup_clickhouse(&legacy, &store, &keys, &ch_target, &ch_db);
    let out = backup_command(&store, &keys, &cmd_target, &["sh", "-c", "seq 1 1000"], &[]);
    assert!(out.status.success());

    let to_pg = format!(
        "postgres=postgres://postgres@{}:{}",
        svc("PGHOST"),
        svc("PGPORT")
    );
    let to_ch = format!("clickhouse={}", legacy.url);
    let gateway = svc("DR_TEST_PUSHGATEWAY");
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "drill",
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to_pg,
            "--to",
            &to_ch,
            "--store",
            store.url(),
        ];
        args.extend_from_slice(extra);
        run("worker", &args, &[("DR_PUSHGATEWAY_URL", &gateway)])
    };
    let out = drill(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let reports: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert_eq!(r["verdict"], "passed", "{r}");
        assert_eq!(r["restored"], r["engine"] != "command", "{r}");
    }
    let cmd = reports.iter().find(|r| r["engine"] == "command").unwrap();
    assert!(
        cmd["detail"].as_str().unwrap().contains("not restored"),
        "{cmd}"
    );
    assert!(
        stderr(&out).contains(&format!("{a}__drill")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        scratch_left(&legacy).await,
        (0, 0),
        "scratch databases left behind"
    );
    for target in [&pg_target, &ch_target, &cmd_target] {
        let m = drill_metrics(target).await;
        assert!(
            m.iter().any(|l| l.starts_with("kube_dr_drill_success{")
                && l.contains("job=\"kube_dr_drill\"")
                && l.ends_with(" 1")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("kube_dr_drill_duration_seconds{")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|l| l.starts_with("kube_dr_drill_last_timestamp_seconds{")),
            "{m:?}"
        );
    }

    // A flipped byte in the newest PostgreSQL part: exit 1, success 0, nothing left.
    let part = store
        .files()
        .into_iter()
        .find(|f| {
            f.starts_with(&format!("postgres/{pg_target}/"))
                && f.contains(&a)
                && f.ends_with(".age")
        })
        .expect("the part");
    let path = store.object_path(&part);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = drill(&["--engine", "postgres", "--target", &pg_target]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(report["verdict"], "damaged", "{report}");
    let m = drill_metrics(&pg_target).await;
    assert!(
        m.iter()
            .any(|l| l.starts_with("kube_dr_drill_success{") && l.ends_with(" 0")),
        "{m:?}"
    );
    assert_eq!(scratch_left(&legacy).await.0, 0);

    drop_database(&a).await;
    drop_database(&b).await;
    legacy.ch(&format!("DROP DATABASE {ch_db}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drill_refuses_names_that_are_not_its_own() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let (a, b) = seed_postgres("drn").await;
    let target = unique("drn");
    backup_postgres(&store, &keys, &target, &a, &[]);
    let drill = |to: &str| {
        run(
            "worker",
            &[
                "drill",
                "-i",
                keys.identity.to_str().unwrap(),
                "--to",
                to,
                "--store",
                store.url(),
            ],
            &[],
        )
    };
    // A destination that names a database (here the backed-up one itself).
    let named = format!("postgres={}", pg_url(&a));
    let out = drill(&named);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stdout(&out).contains("__drill"), "{}", stdout(&out));
    // A scratch name that exists without the drill's mark is someone else's.
    let squatter = format!("{a}__drill");
    create_database(&squatter).await;
    pg_connect(&squatter)
        .await
        .batch_execute("CREATE TABLE precious (x int); INSERT INTO precious VALUES (1)")
        .await
        .unwrap();
    let server = format!(
        "postgres=postgres://postgres@{}:{}",
        svc("PGHOST"),
        svc("PGPORT")
    );
    let out = drill(&server);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not a drill's leftover"),
        "{}",
        stdout(&out)
    );
    // Refused before restoring: the report says so, and the log line spells the verdict
    // and the differences as the JSON does.
    let report: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(report["verdict"], "failed", "{report}");
    assert_eq!(report["restored"], false, "{report}");
    let log = stderr(&out);
    let line = log
        .lines()
        .find(|l| l.contains("drill failed"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("verdict=\"failed\"") || line.contains("verdict=failed"),
        "{line}"
    );
    assert!(line.contains("differences=[]"), "{line}");
    assert!(!line.contains("Failed"), "{line}");
    let kept = pg_connect(&squatter)
        .await
        .query_one("SELECT count(*) FROM precious", &[])
        .await
        .unwrap();
    assert_eq!(
        kept.get::<_, i64>(0),
        1,
        "the drill touched a database that is not its own"
    );
    // Its own leftover (marked) is cleaned and the drill passes.
    drop_database(&squatter).await;
    create_database(&squatter).await;
    pg_connect("postgres")
        .await
        .batch_execute(&format!(
            "COMMENT ON DATABASE \"{squatter}\" IS '{}'",
            drkit::engine::postgres::scratch::MARK
        ))
        .await
        .unwrap();
    let out = drill(&server);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!database_exists(&squatter).await);
    // Engines the drill does not restore cannot be given a destination.
    let out = drill("vault=http://127.0.0.1:1");
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("unseal keys"), "{}", stderr(&out));

    drop_database(&a).await;
    drop_database(&b).await;
}

/// What users run today: a backup of ClickHouse 26 (through chDB) drilled on the same
/// server, every scratch database marked, restored, counted and dropped.
#[tokio::test(flavor = "multi_thread")]
async fn the_drill_on_clickhouse_26_leaves_nothing_behind() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let modern = crate::clickhouse::Server::modern();
    let db = unique("dr26");
    seed_clickhouse(&modern, &db).await;
    backup_clickhouse(&modern, &store, &keys, "signoz", &db);
    let to = format!("clickhouse={}", modern.url);
    let out = run(
        "worker",
        &[
            "drill",
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to,
            "--store",
            store.url(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["verdict"], "passed", "{report}");
    assert_eq!(report["restored"], true, "{report}");
    assert!(
        stderr(&out).contains(&format!("{db}__drill")),
        "{}",
        stderr(&out)
    );
    let left = modern
        .ch(&format!(
            "SELECT count() FROM system.databases WHERE name = '{db}__drill'"
        ))
        .await;
    assert_eq!(left.trim(), "0");
    modern.ch(&format!("DROP DATABASE {db}")).await;
}
