//! ClickHouse end to end, on both servers of `scripts/services.sh`: Debian's 18.16
//! (`clickhouse-server`: Ordinary databases, clusters, the server's own HTTP) and ClickHouse
//! 26's engine behind the chdb front (Atomic databases, Map, modern serialization, the
//! 25.11+ exception envelope). Backup → verify → restore under another database name, with
//! the column types, engines and views the issues name; failures mid-stream, damaged parts,
//! wrong keys and occupied targets; a SigNoz-like schema restored into a fresh ClickHouse
//! 26; a backup of 18.16 restored into 26.

use dr_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One test per ClickHouse server for a test body that takes the server: `$legacy` on the
/// Debian 18.16 server, `$modern` on ClickHouse 26's engine (chDB).
macro_rules! on_both_servers {
    ($legacy:ident, $modern:ident => $body:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $legacy() {
            $body(Server::legacy()).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $modern() {
            $body(Server::modern()).await;
        }
    };
}

/// One of the two test servers.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) url: String,
    /// ClickHouse 26's engine (chdb): Atomic databases, no clusters.
    modern: bool,
}

impl Server {
    pub(crate) fn legacy() -> Server {
        Server {
            url: svc("CLICKHOUSE_URL"),
            modern: false,
        }
    }

    pub(crate) fn modern() -> Server {
        Server {
            url: svc("DR_CLICKHOUSE26_URL"),
            modern: true,
        }
    }

    /// Runs a query as the test user and returns the body (panics on an error status).
    pub(crate) async fn ch(&self, sql: &str) -> String {
        let (status, body) = self.ch_try(sql).await;
        assert_eq!(status, 200, "{sql}\n{body}");
        body
    }

    async fn ch_try(&self, sql: &str) -> (u16, String) {
        ch_at(&self.url, sql).await
    }

    /// sha256 of a table's rows in a fixed order, as TabSeparated text.
    async fn content(&self, db: &str, table: &str, columns: &str, order: &str) -> String {
        let text = self
            .ch(&format!(
                "SELECT {columns} FROM {db}.{table} ORDER BY {order} FORMAT TabSeparated"
            ))
            .await;
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    async fn count(&self, db: &str, table: &str) -> u64 {
        self.ch(&format!("SELECT count() FROM {db}.{table}"))
            .await
            .trim()
            .parse()
            .unwrap()
    }
}

async fn ch_at(url: &str, sql: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(url)
        .basic_auth(svc("CLICKHOUSE_USER"), Some(svc("CLICKHOUSE_PASSWORD")))
        .body(sql.to_string())
        .send()
        .await
        .expect("clickhouse reachable");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

const T1_COLUMNS: &str = "id, n, a, lc, tu, d, dt, f, s, e, aa, an, dec, lcn";

/// A database shaped like a small telemetry store (the Distributed twin only where the
/// server has a cluster).
async fn seed(server: &Server, db: &str) {
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("CREATE TABLE {db}.t1 (id UInt64, n Nullable(String), a Array(Int32), lc LowCardinality(String), tu Tuple(UInt8, String), d Date, dt DateTime, f Float64, s String, e Enum8('a' = 1, 'b' = 2), aa Array(Array(String)), an Array(Nullable(UInt8)), dec Decimal(10, 2), lcn LowCardinality(Nullable(String)), twice UInt64 ALIAS id * 2) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"),
        format!("INSERT INTO {db}.t1 SELECT number, if(number % 3 = 0, NULL, toString(number)), range(number % 5), concat('v', toString(number % 7)), (number % 200, 'x'), toDate('2026-01-01') + number % 300, toDateTime('2026-01-01 00:00:00') + number, number / 3, substring('tab\there\nnewline', 1, number % 16), if(number % 2 = 0, 'a', 'b'), [['p'], ['q', toString(number)]], [1, NULL], number / 100, if(number % 2 = 0, NULL, 'z') FROM numbers(1000000)"),
        format!("CREATE TABLE {db}.events (d Date, user String, v UInt32) ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY (user, d)"),
        format!("CREATE TABLE {db}.daily (d Date, c UInt64) ENGINE = SummingMergeTree ORDER BY d"),
        format!("CREATE MATERIALIZED VIEW {db}.daily_mv TO {db}.daily AS SELECT d, count() AS c FROM {db}.events GROUP BY d"),
        format!("CREATE MATERIALIZED VIEW {db}.users_mv ENGINE = MergeTree ORDER BY user AS SELECT user, v FROM {db}.events"),
        format!("CREATE TABLE {db}.events_all AS {db}.events ENGINE = Distributed(local, {db}, events)"),
        format!("CREATE VIEW {db}.heavy AS SELECT user, sum(v) AS total FROM {db}.events GROUP BY user"),
        format!("INSERT INTO {db}.events SELECT toDate('2026-11-01') + number % 20, concat('u', toString(number % 50)), number FROM numbers(100000)"),
    ] {
        if server.modern && sql.contains("Distributed") {
            continue;
        }
        server.ch(&sql).await;
    }
}

fn backup(server: &Server, store: &TestStore, keys: &Keys, db: &str) -> String {
    let out = backup_output(server, store, keys, "ch", &[db]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// `worker backup clickhouse --target TARGET -d DB… ` against `server`, whatever happens.
fn backup_output(
    server: &Server,
    store: &TestStore,
    keys: &Keys,
    target: &str,
    dbs: &[&str],
) -> std::process::Output {
    let mut args = vec!["backup", "clickhouse", "--target", target];
    for db in dbs {
        args.extend(["--database", db]);
    }
    args.extend(["--store", store.url(), "-r", &keys.recipient]);
    run("worker", &args, &[("CLICKHOUSE_URL", &server.url)])
}

/// `kubectl dr restore ID -i IDENTITY --to URL EXTRA…` against `store`.
fn restore(
    store: &TestStore,
    id: &str,
    identity: &str,
    to: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["restore", id, "-i", identity, "--to", to];
    args.extend_from_slice(extra);
    dr(store, &args)
}

fn dr(store: &TestStore, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--store", store.url()]);
    run("kubectl-dr", &all, &[])
}

on_both_servers!(round_trip_under_another_name_on_18_16, round_trip_under_another_name_on_26 => round_trip_under_another_name_keeps_rows_views_and_order);

async fn round_trip_under_another_name_keeps_rows_views_and_order(server: Server) {
    let db = unique("chsrc");
    let copy = format!("{db}_copy");
    seed(&server, &db).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&server, &store, &keys, &db);
    let url = server.url.clone();

    let out = dr(
        &store,
        &[
            "verify",
            &id,
            "-i",
            keys.identity.to_str().unwrap(),
            "--against",
            &url,
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows: std::collections::BTreeMap<String, u64> = report["counts"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["backup_rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.get(&format!("{db}.t1")), Some(&1_000_000));
    assert_eq!(rows.get(&format!("{db}.events")), Some(&100_000));
    assert_eq!(
        rows.get(&format!("{db}.daily")),
        Some(&server.count(&db, "daily").await)
    );
    // `.inner.users_mv` (Ordinary) or `.inner_id.<uuid>` (Atomic).
    let inner: Vec<u64> = rows
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{db}..inner")))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(inner, vec![100_000], "{rows:?}");

    let map = format!("{db}={copy}");
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &["--database-map", &map, "--yes", "-o", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tables"].as_array().unwrap().len(), 4, "{report}");

    // Same rows, same content, in the same order.
    assert_eq!(
        server.content(&db, "t1", T1_COLUMNS, "id").await,
        server.content(&copy, "t1", T1_COLUMNS, "id").await
    );
    assert_eq!(
        server.content(&db, "events", "*", "user, d, v").await,
        server.content(&copy, "events", "*", "user, d, v").await
    );
    assert_eq!(
        server
            .ch(&format!(
                "SELECT d, sum(c) FROM {db}.daily GROUP BY d ORDER BY d"
            ))
            .await,
        server
            .ch(&format!(
                "SELECT d, sum(c) FROM {copy}.daily GROUP BY d ORDER BY d"
            ))
            .await
    );
    assert_eq!(
        server.content(&db, "users_mv", "*", "user, v").await,
        server.content(&copy, "users_mv", "*", "user, v").await
    );
    // The ALIAS column is computed again.
    assert_eq!(
        server
            .ch(&format!("SELECT twice FROM {copy}.t1 WHERE id = 21"))
            .await
            .trim(),
        "42"
    );

    // The views work: a new event shows up once in each view, and through the Distributed twin.
    let before = (
        server.count(&copy, "users_mv").await,
        server.ch(&format!("SELECT sum(c) FROM {copy}.daily")).await,
    );
    server
        .ch(&format!(
            "INSERT INTO {copy}.events VALUES ('2026-11-30', 'new', 7)"
        ))
        .await;
    assert_eq!(server.count(&copy, "users_mv").await, before.0 + 1);
    let after: u64 = server
        .ch(&format!("SELECT sum(c) FROM {copy}.daily"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert_eq!(after, before.1.trim().parse::<u64>().unwrap() + 1);
    if !server.modern {
        assert_eq!(server.count(&copy, "events_all").await, 100_001);
        assert!(server
            .ch(&format!("SHOW CREATE TABLE {copy}.events_all"))
            .await
            .contains(&format!("Distributed(local, {copy}, events)")));
    }
    assert_eq!(
        server
            .ch(&format!(
                "SELECT total FROM {copy}.heavy WHERE user = 'new'"
            ))
            .await
            .trim(),
        "7"
    );

    // Restoring again onto tables with rows is refused, and changes nothing.
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &["--database-map", &map, "--yes"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already hold rows") && stderr(&out).contains("--clean"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.count(&copy, "events").await, 100_001);
    // --clean drops and reloads: back to the backup's rows.
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &["--database-map", &map, "--clean", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.count(&copy, "events").await, 100_000);
    // The count table says what it compares: the backup, the rename, the server.
    assert!(
        stdout(&out).starts_with("clickhouse/")
            && stdout(&out).contains(&format!(" db {db} → {copy} vs {url}")),
        "{}",
        stdout(&out)
    );

    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

on_both_servers!(a_subset_and_damaged_or_foreign_input_on_18_16, a_subset_and_damaged_or_foreign_input_on_26 => a_subset_of_tables_and_damaged_or_foreign_input);

async fn a_subset_of_tables_and_damaged_or_foreign_input(server: Server) {
    let db = unique("chsub");
    seed(&server, &db).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&server, &store, &keys, &db);
    let url = server.url.clone();
    let copy = format!("{db}_part");
    let map = format!("{db}={copy}");

    // --table picks one table; nothing else is created.
    let pattern = format!("{db}.events");
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &["--database-map", &map, "--table", &pattern, "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.count(&copy, "events").await, 100_000);
    assert_eq!(
        server
            .ch(&format!(
                "SELECT count() FROM system.tables WHERE database = '{copy}'"
            ))
            .await
            .trim(),
        "1"
    );

    // Wrong key: refused before the server is touched.
    let other = Keys::generate();
    let fresh = format!("{db}=x{db}");
    let out = restore(
        &store,
        &id,
        other.identity.to_str().unwrap(),
        &url,
        &["--database-map", &fresh, "--yes"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no identity in"), "{}", stderr(&out));
    assert_eq!(
        server
            .ch(&format!(
                "SELECT count() FROM system.databases WHERE name = 'x{db}'"
            ))
            .await
            .trim(),
        "0"
    );

    // A flipped byte in a data part: verify fails (1). A restore into new databases reads
    // each part once, as it streams, and drops what it created when the part fails; a
    // restore into an existing database checks the parts before it touches anything.
    let part = store.object_path(&format!(
        "clickhouse/ch/{id}/data-{db}.events.p-202611.native.zst.age"
    ));
    let mut bytes = std::fs::read(&part).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&part, &bytes).unwrap();
    let out = dr(&store, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &["--database-map", &fresh, "--yes"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("one pass:")
            && stderr(&out).contains(&format!("dropped database x{db}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server
            .ch(&format!(
                "SELECT count() FROM system.databases WHERE name = 'x{db}'"
            ))
            .await
            .trim(),
        "0"
    );
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &url,
        &[
            "--database-map",
            &map,
            "--table",
            &pattern,
            "--clean",
            "--yes",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("checking clickhouse/ch/{id} part"))
            && !stderr(&out).contains("one pass:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.count(&copy, "events").await, 100_000);

    // Unreachable server and a bad password: clear errors, no secret in them.
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        "http://127.0.0.1:9",
        &["--yes"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot reach ClickHouse at http://127.0.0.1:9"),
        "{}",
        stderr(&out)
    );
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
        &[
            ("CLICKHOUSE_PASSWORD", "wrong-Secret-99"),
            ("CLICKHOUSE_URL", &server.url),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refused user default"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("wrong-Secret-99")
            && !stderr(&out).contains(&svc("CLICKHOUSE_PASSWORD"))
    );

    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}

// A query that fails after the server has started answering 200: the walker finds the
// exception text after the good blocks, on the real server's own output.
// ClickHouse 26's engine fails mid-result; the front writes it in the 25.11+ envelope.
on_both_servers!(an_exception_in_a_real_result_is_caught_on_18_16, an_exception_in_a_real_result_is_caught_on_26 => an_exception_in_the_middle_of_a_real_result_is_caught);

async fn an_exception_in_the_middle_of_a_real_result_is_caught(server: Server) {
    let resp = reqwest::Client::new()
        .post(format!("{}/?max_block_size=1000", server.url))
        .basic_auth(svc("CLICKHOUSE_USER"), Some(svc("CLICKHOUSE_PASSWORD")))
        .body("SELECT number, throwIf(number = 500000) AS boom FROM numbers(1000000) FORMAT Native")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the failure comes after the status line"
    );
    let body = resp.bytes().await.unwrap();
    let mut seen = 0;
    let err = drkit::engine::clickhouse::native::walk(&body[..], |rows| seen += rows).unwrap_err();
    assert!(seen > 0, "good blocks came first");
    match err {
        drkit::engine::clickhouse::native::NativeError::ServerException(m) => {
            assert!(m.contains("throwIf"), "{m}")
        }
        other => panic!("{other}"),
    }
}

/// The whole worker on a result that fails after good blocks (a table dropped mid-dump, as a
/// server reports it): exit 2, the server's message, no manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_failing_mid_dump_fails_the_backup() {
    let mut native = vec![1u8, 3];
    native.extend(b"\x01x\x05UInt8\x01\x02\x03");
    native.extend(b"Code: 60, e.displayText() = DB::Exception: Table shop.t doesn't exist., e.what() = DB::Exception\n");
    let addr = fake_http(move |_, _, sql| {
        let reply: Vec<u8> = if sql.contains("version()") {
            b"18.16.1\n".to_vec()
        } else if sql.contains("system.databases") {
            b"shop\n".to_vec()
        } else if sql.starts_with("SHOW CREATE DATABASE") {
            b"CREATE DATABASE shop ENGINE = Ordinary\n".to_vec()
        } else if sql.contains("system.tables") {
            b"shop\tt\tMergeTree\tCREATE TABLE shop.t (x UInt8) ENGINE = MergeTree ORDER BY x\t\n"
                .to_vec()
        } else if sql.contains("system.columns") {
            b"shop\tt\tx\t\tUInt8\n".to_vec()
        } else if sql.contains("FORMAT Native") {
            native.clone()
        } else if sql.contains("system.parts") {
            // No partitions listed: the table is dumped in one part.
            Vec::new()
        } else {
            return (500, b"Code: 62. unexpected".to_vec());
        };
        (200, reply)
    })
    .await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let out = run(
        "worker",
        &[
            "backup",
            "clickhouse",
            "--target",
            "ch",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[("CLICKHOUSE_URL", &addr)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("backing up table shop.t failed"), "{err}");
    assert!(err.contains("Table shop.t doesn't exist"), "{err}");
    assert!(!store.files().iter().any(|f| f.ends_with("manifest.json")));
}

// Replicated tables (which the 18.16 test server cannot create without ZooKeeper) need an
// explicit policy; `convert` makes the single-node engine, and the result really creates.
on_both_servers!(replicated_tables_need_a_policy_on_18_16, replicated_tables_need_a_policy_on_26 => replicated_tables_need_a_policy_and_convert_creates);

async fn replicated_tables_need_a_policy_and_convert_creates(server: Server) {
    use drkit::engine::clickhouse::restore::{self, Replicated, RestoreOptions};
    use drkit::engine::clickhouse::schema::{DatabaseDdl, Schema, TableDdl};
    use drkit::engine::clickhouse::{ChClient, ChTarget};
    let db = unique("chrepl");
    let schema = Schema {
        server_version: "24.8".into(),
        databases: vec![DatabaseDdl {
            name: "signoz_logs".into(),
            create: "CREATE DATABASE signoz_logs ENGINE = Atomic".into(),
        }],
        tables: vec![TableDdl {
            database: "signoz_logs".into(),
            name: "logs_attribute_keys".into(),
            engine: "ReplicatedReplacingMergeTree".into(),
            create: "CREATE TABLE signoz_logs.logs_attribute_keys ON CLUSTER cluster (name String, datatype String) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/{shard}', '{replica}') ORDER BY (name, datatype)".into(),
            columns: vec!["name".into(), "datatype".into()],
            part: None,
            data_format: Default::default(),
            uuid: None,
        }],
    };
    let manifest: drkit::catalog::Manifest = serde_json::from_value(serde_json::json!({
        "format_version": 1, "id": "20261122T020000Z-000000", "engine": "clickhouse", "target": "t",
        "started_at": "2026-11-22T02:00:00Z", "finished_at": "2026-11-22T02:00:01Z", "tool": "test",
        "server_version": "24.8", "recipients": [format!("age1{}", "q".repeat(58))], "parts": []
    }))
    .unwrap();
    let target = ChTarget::with_credentials(
        &server.url,
        &svc("CLICKHOUSE_USER"),
        Some(svc("CLICKHOUSE_PASSWORD")),
    )
    .unwrap();
    let client = ChClient::new(&target).unwrap();
    let mut opts = RestoreOptions {
        database_map: [("signoz_logs".to_string(), db.clone())].into(),
        ..RestoreOptions::default()
    };
    let err = restore::plan(&client, &manifest, &schema, &opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--replicated convert"), "{err}");
    assert!(
        err.to_string().contains("signoz_logs.logs_attribute_keys"),
        "{err}"
    );

    opts.replicated = Replicated::Convert;
    let plan = restore::plan(&client, &manifest, &schema, &opts)
        .await
        .unwrap();
    let create = &plan.steps[0].create;
    assert!(
        create.contains("ENGINE = ReplacingMergeTree ORDER BY"),
        "{create}"
    );
    assert!(
        !create.contains("ON CLUSTER") && create.contains(&format!("`{db}`.logs_attribute_keys")),
        "{create}"
    );
    // The statements run on the real server (the Atomic engine is not in 18.16: create the
    // database plainly, then the converted table).
    server.ch(&format!("CREATE DATABASE {db}")).await;
    server.ch(create).await;
    assert!(server
        .ch(&format!("SHOW CREATE TABLE {db}.logs_attribute_keys"))
        .await
        .contains("ReplacingMergeTree"));
    server.ch(&format!("DROP DATABASE {db}")).await;
}

/// A ClickHouse 26 engine of its own, on a free port with an empty data directory: the
/// "fresh server" of a rebuild. Stopped when dropped.
pub(crate) struct FreshServer {
    child: std::process::Child,
    _data: tempfile::TempDir,
    pub(crate) url: String,
}

impl FreshServer {
    pub(crate) async fn start() -> FreshServer {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(svc("DR_CHDB_PYTHON"))
            .arg(repo_root().join("scripts/chdb-front.py"))
            .args(["--port", &port.to_string(), "--data"])
            .arg(data.path())
            .arg("--password-file")
            .arg(std::path::Path::new(&svc("DR_SERVICES_DIR")).join("chdb/password"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a chdb front");
        // Owned at once: a failed start below still stops the process (Drop).
        let fresh = FreshServer {
            child,
            _data: data,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..300 {
            // Connection refused until the engine has loaded: not an error yet.
            let ready = reqwest::Client::new()
                .get(format!("{}/?query=SELECT%201", fresh.url))
                .basic_auth(svc("CLICKHOUSE_USER"), Some(svc("CLICKHOUSE_PASSWORD")))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return fresh;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the fresh ClickHouse 26 engine did not start");
    }

    pub(crate) fn server(&self) -> Server {
        Server {
            url: self.url.clone(),
            modern: true,
        }
    }
}

impl Drop for FreshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `;`-separated SQL file from tests/fixtures with its placeholders filled.
async fn run_sql_file(server: &Server, file: &str, vars: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(repo_root().join("tests/fixtures").join(file)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("{{{k}}}"), v);
    }
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in text.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        server.ch(stmt.trim_end_matches(';')).await;
    }
}

/// Tables of `db` that hold rows (views' inner tables included), with their engine.
async fn data_tables(server: &Server, db: &str) -> Vec<(String, String)> {
    server
        .ch(&format!("SELECT name, engine FROM system.tables WHERE database = '{db}' AND engine NOT IN ('MaterializedView', 'View') ORDER BY name"))
        .await
        .lines()
        .map(|l| {
            let (n, e) = l.split_once('\t').unwrap();
            (n.to_string(), e.to_string())
        })
        .collect()
}

/// Count and an order-independent content hash of a table: merged first (FINAL) where the
/// engine folds rows, aggregate states finalised, every column included.
pub(crate) async fn fingerprint(
    server: &Server,
    db: &str,
    table: &str,
    engine: &str,
) -> (u64, String) {
    let columns = server
        .ch(&format!("SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{table}' AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') ORDER BY name"))
        .await;
    let exprs: Vec<String> = columns
        .lines()
        .map(|l| {
            let (name, ty) = l.split_once('\t').unwrap();
            let q = format!("`{name}`");
            if ty.starts_with("AggregateFunction") {
                format!("finalizeAggregation({q})")
            } else {
                q
            }
        })
        .collect();
    let fin = if engine.contains("Replacing")
        || engine.contains("Aggregating")
        || engine.contains("Summing")
    {
        " FINAL"
    } else {
        ""
    };
    let row = server
        .ch(&format!(
            "SELECT count(), sum(cityHash64(toString(tuple({})))) FROM `{db}`.`{table}`{fin}",
            exprs.join(", ")
        ))
        .await;
    let (n, h) = row.trim().split_once('\t').unwrap();
    (n.parse().unwrap(), h.to_string())
}

/// The acceptance of issue 17: SigNoz's current shape on ClickHouse 26, backed up, verified
/// with the key, restored into a fresh server: every table's count and content equal, and
/// an insert into each source table reaches each view's target exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_signoz_like_schema_restores_into_a_fresh_clickhouse_26() {
    let source = Server::modern();
    let p = unique("sz");
    let (logs, traces, metrics) = (
        format!("{p}_logs"),
        format!("{p}_traces"),
        format!("{p}_metrics"),
    );
    let vars = [
        ("logs", logs.as_str()),
        ("traces", traces.as_str()),
        ("metrics", metrics.as_str()),
        ("rows", "20000"),
    ];
    run_sql_file(&source, "signoz-like.sql", &vars).await;
    run_sql_file(&source, "signoz-like-data.sql", &vars).await;

    let (store, keys) = (TestStore::s3(), Keys::generate());
    let out = backup_output(
        &source,
        &store,
        &keys,
        "signoz",
        &[&logs, &traces, &metrics],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dumping as TabSeparated"),
        "aggregate states take the TabSeparated path"
    );
    let id = stdout(&out).trim().to_string();
    let identity = keys.identity.to_str().unwrap();
    let out = dr(
        &store,
        &["verify", &id, "-i", identity, "--against", &source.url],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let fresh = FreshServer::start().await;
    let out = restore(&store, &id, identity, &fresh.url, &["--yes", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let target = fresh.server();

    for db in [&logs, &traces, &metrics] {
        let here = data_tables(&source, db).await;
        let there = data_tables(&target, db).await;
        assert_eq!(here.len(), there.len(), "{db}: {here:?} vs {there:?}");
        assert!(!here.is_empty(), "{db}: {here:?}");
        for ((name, engine), (name2, engine2)) in here.iter().zip(&there) {
            assert_eq!(engine, engine2);
            if !name.starts_with(".inner") {
                assert_eq!(name, name2);
            }
            let a = fingerprint(&source, db, name, engine).await;
            let b = fingerprint(&target, db, name2, engine2).await;
            assert!(a.0 > 0, "{db}.{name} is empty in the source");
            assert_eq!(a, b, "{db}.{name}: count and content hash");
        }
        assert_eq!(
            target
                .ch(&format!(
                    "SELECT engine FROM system.databases WHERE name = '{db}'"
                ))
                .await
                .trim(),
            "Atomic"
        );
    }

    // Every view fires exactly once for a new insert into its source.
    target.ch(&format!("INSERT INTO {metrics}.samples_v4 (env, temporality, metric_name, fingerprint, unix_milli, value) VALUES ('prod', 'Cumulative', 'kube_dr_probe', 1, toUnixTimestamp64Milli(now64(3)), 5)")).await;
    for (table, expr) in [
        ("samples_v4_agg_5m", "sum(count)"),
        ("samples_v4_agg_30m", "sum(count)"),
        ("metric_names_mv", "sum(samples)"),
    ] {
        let n = target
            .ch(&format!(
                "SELECT {expr} FROM {metrics}.{table} FINAL WHERE metric_name = 'kube_dr_probe'"
            ))
            .await;
        assert_eq!(n.trim(), "1", "{table}");
    }
    target.ch(&format!("INSERT INTO {metrics}.time_series_v4 (env, temporality, metric_name, fingerprint, unix_milli, labels) VALUES ('prod', 'Cumulative', 'kube_dr_probe', 1, toUnixTimestamp64Milli(now64(3)), '{{}}')")).await;
    assert_eq!(target.ch(&format!("SELECT count() FROM {metrics}.time_series_v4_6hrs WHERE metric_name = 'kube_dr_probe'")).await.trim(), "1");
    target.ch(&format!("INSERT INTO {traces}.signoz_index_v3 (timestamp, trace_id, span_id, parent_span_id, name, duration_nano, resources_string) VALUES (now64(9), 'probe', 'p-parent', '', 'root', 10, map('service.name', 'probe-a')), (now64(9), 'probe', 'p-child', 'p-parent', 'child', 20, map('service.name', 'probe-b'))")).await;
    assert_eq!(
        target.ch(&format!("SELECT sum(total_count) FROM {traces}.dependency_graph_minutes_v2 FINAL WHERE src = 'probe-a' AND dest = 'probe-b'")).await.trim(),
        "1"
    );

    for db in [&logs, &traces, &metrics] {
        source.ch(&format!("DROP DATABASE {db}")).await;
    }
}

/// Where people come from: a backup of the old server (Ordinary databases, `.inner.` view
/// tables, an old-syntax MergeTree) restored into ClickHouse 26.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_of_18_16_restores_into_26() {
    let (old, new) = (Server::legacy(), Server::modern());
    let db = unique("chmig");
    seed(&old, &db).await;
    old.ch(&format!(
        "CREATE TABLE {db}.legacy (d Date, id UInt64, v String) ENGINE = MergeTree(d, (id), 8192)"
    ))
    .await;
    old.ch(&format!("INSERT INTO {db}.legacy SELECT toDate('2026-11-01') + number % 30, number, toString(number) FROM numbers(5000)")).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&old, &store, &keys, &db);
    // Every table but the Distributed one (there is no cluster on the target).
    let mut args = vec!["--yes"];
    let patterns: Vec<String> = [
        "t1", "events", "daily", "daily_mv", "users_mv", "heavy", "legacy",
    ]
    .iter()
    .map(|t| format!("{db}.{t}"))
    .collect();
    for p in &patterns {
        args.extend(["--table", p.as_str()]);
    }
    let out = restore(
        &store,
        &id,
        keys.identity.to_str().unwrap(),
        &new.url,
        &args,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("was Ordinary"),
        "the plan says what changes: {err}"
    );
    assert!(
        err.contains("retrying with allow_deprecated_syntax_for_merge_tree=1"),
        "{err}"
    );
    assert_eq!(
        new.ch(&format!(
            "SELECT engine FROM system.databases WHERE name = '{db}'"
        ))
        .await
        .trim(),
        "Atomic"
    );
    for (table, columns, order) in [
        ("t1", "id, n, a, lc, d, dt, s, e, aa, an, lcn", "id"),
        ("events", "*", "user, d, v"),
        ("legacy", "*", "id"),
        ("users_mv", "*", "user, v"),
    ] {
        assert_eq!(
            old.content(&db, table, columns, order).await,
            new.content(&db, table, columns, order).await,
            "{table}"
        );
    }
    // The view feeds its (new, .inner_id.) table exactly once on the new server.
    let before = new.count(&db, "users_mv").await;
    new.ch(&format!(
        "INSERT INTO {db}.events VALUES ('2026-11-30', 'new', 7)"
    ))
    .await;
    assert_eq!(new.count(&db, "users_mv").await, before + 1);
    for s in [&old, &new] {
        s.ch(&format!("DROP DATABASE {db}")).await;
    }
}

/// Every way a modern server (or what sits before it) ends a result badly after the 200
/// fails the backup: the <= 25.10 text, the 25.11+ envelope, a connection cut before the
/// last chunk, and the engine itself failing mid-result. Nothing is committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_that_fails_after_the_200_fails_the_backup_in_every_form() {
    let server = Server::modern();
    let db = unique("chfault");
    server.ch(&format!("CREATE DATABASE {db}")).await;
    server.ch(&format!("CREATE TABLE {db}.t (id UInt64, m Map(LowCardinality(String), String)) ENGINE = MergeTree ORDER BY id")).await;
    server
        .ch(&format!(
            "INSERT INTO {db}.t SELECT number, map('k', toString(number)) FROM numbers(300000)"
        ))
        .await;
    server.ch(&format!("CREATE TABLE {db}.s (k UInt8, q AggregateFunction(quantiles(0.5), Float64)) ENGINE = AggregatingMergeTree ORDER BY k")).await;
    server.ch(&format!("INSERT INTO {db}.s SELECT number % 200, quantilesState(0.5)(toFloat64(number)) FROM numbers(100000) GROUP BY number % 200")).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let http = reqwest::Client::new();
    // `after`: bytes of the real result before the fault (rows for `engine`: past the first
    // block, so the engine fails after the 200).
    for (table, mode, after, expect) in [
        ("t", "legacy", 3000, "Code: 395"),
        ("t", "tag", 3000, "Code: 395"),
        ("t", "cut", 3000, "error reading a body from connection"),
        ("t", "engine", 200_000, "throwIf"),
        ("s", "tag", 3000, "Code: 395"),
        ("s", "legacy", 3000, "Code: 395"),
        ("s", "cut", 3000, "failed"),
    ] {
        let fault = serde_json::json!({"match": format!("FROM `{db}`.`{table}`"), "mode": mode, "after": after});
        http.post(format!("{}/__fault", server.url))
            .body(fault.to_string())
            .send()
            .await
            .unwrap();
        let out = backup_output(&server, &store, &keys, "faults", &[&db]);
        http.delete(format!("{}/__fault", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{table}/{mode}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expect),
            "{table}/{mode}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("nothing was committed"),
            "{}",
            stderr(&out)
        );
        assert!(
            !store.files().iter().any(|f| f.ends_with("manifest.json")),
            "{table}/{mode} committed"
        );
    }
    // Without a fault the same backup succeeds: the failures above were the faults.
    let out = backup_output(&server, &store, &keys, "faults", &[&db]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    server.ch(&format!("DROP DATABASE {db}")).await;
}

/// 24.8+ types: Variant walks as Native and comes back exactly; Dynamic and JSON (no size
/// rule) go as TabSeparated and come back with the same text (a Dynamic value's type is
/// inferred again from it: a known limit, documented).
#[tokio::test(flavor = "multi_thread")]
async fn variant_dynamic_and_json_columns_round_trip_on_26() {
    let server = Server::modern();
    let db = unique("chnew");
    let copy = format!("{db}_copy");
    server.ch(&format!("CREATE DATABASE {db}")).await;
    server.ch(&format!("CREATE TABLE {db}.v (id UInt64, x Variant(String, UInt64, Array(LowCardinality(String)))) ENGINE = MergeTree ORDER BY id")).await;
    server.ch(&format!("INSERT INTO {db}.v SELECT number, multiIf(number % 3 = 0, number::Variant(String, UInt64, Array(LowCardinality(String))), number % 3 = 1, toString(number)::Variant(String, UInt64, Array(LowCardinality(String))), NULL) FROM numbers(5000)")).await;
    server
        .ch(&format!(
            "CREATE TABLE {db}.j (id UInt64, doc JSON, d Dynamic) ENGINE = MergeTree ORDER BY id"
        ))
        .await;
    server.ch(&format!("INSERT INTO {db}.j SELECT number, concat('{{\"n\": ', toString(number), ', \"tags\": [\"a\", \"b\"], \"obj\": {{\"k\": \"v', toString(number % 7), '\"}}}}'), if(number % 2 = 0, toString(number)::Dynamic, number::Dynamic) FROM numbers(3000)")).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let id = backup(&server, &store, &keys, &db);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(store.object_path(&format!("clickhouse/ch/{id}/manifest.json")))
            .unwrap(),
    )
    .unwrap();
    let formats: Vec<(String, String)> = manifest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["format"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        formats.contains(&(format!("data-{db}.v.p-all"), "clickhouse-native".into())),
        "{formats:?}"
    );
    assert!(
        formats.contains(&(format!("data-{db}.j.p-all"), "clickhouse-tsv".into())),
        "{formats:?}"
    );
    let identity = keys.identity.to_str().unwrap();
    let out = dr(&store, &["verify", &id, "-i", identity]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let map = format!("{db}={copy}");
    let out = restore(
        &store,
        &id,
        identity,
        &server.url,
        &["--database-map", &map, "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (table, cols) in [
        ("v", "id, x, variantType(x)"),
        ("j", "id, toString(doc), toString(d)"),
    ] {
        assert_eq!(
            server.content(&db, table, cols, "id").await,
            server.content(&copy, table, cols, "id").await,
            "{table}"
        );
    }
    for d in [&db, &copy] {
        server.ch(&format!("DROP DATABASE {d}")).await;
    }
}
