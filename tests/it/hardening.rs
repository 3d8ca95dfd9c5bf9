//! What an attacker with bucket access or an unlucky operator tried, on real processes:
//! same-second backups and which one is `latest`, hostile plan and state files, sources
//! that stall (a ClickHouse body without its last chunk, a Redis primary that only sends
//! keep-alive newlines) and SIGTERM while they do, odd target names and the Pushgateway,
//! a database name with `%` in the drill, and a rekey that left partial uploads.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use dr_tests::*;

fn dr(store: &TestStore, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--store", store.url()]);
    run("kubectl-dr", &all, &[])
}

#[test]
fn latest_and_prune_pick_the_newest_of_backups_made_in_the_same_second() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let mut ids = Vec::new();
    for n in 1..=6 {
        let text = format!("echo backup-{n}");
        let out = backup_command(&store, &keys, "order", &["sh", "-c", &text], &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        ids.push(stdout(&out).trim().to_string());
    }
    // Millisecond ids: the order they were made in is the order they sort in.
    let mut sorted: Vec<drkit::catalog::BackupId> =
        ids.iter().map(|i| i.parse().unwrap()).collect();
    sorted.sort();
    let sorted: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    assert_eq!(sorted, ids);

    let identity = keys.identity.to_str().unwrap();
    let out = dr(
        &store,
        &[
            "restore", "latest", "--engine", "command", "--target", "order", "-i", identity,
            "--to", "-",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "backup-6\n", "latest is not the newest");
    let out = dr(&store, &["verify", "latest", "--target", "order"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains(&ids[5]), "{}", stderr(&out));

    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            store.url(),
            "--target",
            "order",
            "--keep-last",
            "1",
            "--max-delete",
            "100%",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let left: Vec<String> = list_json(&store)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![ids[5].clone()], "prune kept the wrong backup");
}

/// `restore --all` with a plan file, refused before anything else.
fn restore_all_with_plan(plan: &std::path::Path) -> std::process::Output {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let started = Instant::now();
    let out = dr(
        &store,
        &[
            "restore",
            "--all",
            "--plan",
            plan.to_str().unwrap(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--yes",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a hostile plan took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn hostile_plan_files_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let out = restore_all_with_plan(std::path::Path::new("/dev/zero"));
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a regular file"),
        "{}",
        stderr(&out)
    );

    let big = dir.path().join("big.yaml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    let out = restore_all_with_plan(&big);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("byte limit"), "{}", stderr(&out));

    let deep = dir.path().join("deep.yaml");
    std::fs::write(&deep, "[".repeat(100_000)).unwrap();
    let out = restore_all_with_plan(&deep);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("nests brackets"), "{}", stderr(&out));

    let twice = dir.path().join("twice.yaml");
    std::fs::write(
        &twice,
        "to:\n  postgres: postgres://a@db-a:5432\n  postgres: postgres://b@db-b:5432\n",
    )
    .unwrap();
    let out = restore_all_with_plan(&twice);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("postgres is given twice"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tampered_resume_state_is_refused() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup_command(&store, &keys, "st", &["sh", "-c", "echo state"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let state = keys.dir.path().join("state.json");
    let sink = keys.dir.path().join("restored.txt");
    let to_command = format!("cat > {}", sink.display());
    let all = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--all",
            "--store",
            store.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--yes",
        ];
        args.extend_from_slice(extra);
        args.extend(["--to-command", "--", "sh", "-c", &to_command]);
        run("kubectl-dr", &args, &[])
    };
    let out = all(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&sink).unwrap(), "state\n");
    let genuine: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(genuine["done"].as_array().unwrap().len(), 1, "{genuine}");

    let tamper = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut s = genuine.clone();
        edit(&mut s);
        std::fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();
        std::fs::remove_file(&sink).ok();
        let out = all(&["--resume"]);
        assert!(!sink.exists(), "a refused resume restored something");
        out
    };
    let out = tamper(&|s| {
        let b = s["backups"][0].clone();
        s["backups"].as_array_mut().unwrap().push(b);
    });
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("twice"), "{}", stderr(&out));

    let out = tamper(&|s| {
        let d = s["done"][0].clone();
        s["done"].as_array_mut().unwrap().push(d);
    });
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("done twice"), "{}", stderr(&out));

    let out = tamper(&|s| {
        s["done"][0]["step"] = serde_json::json!("command/st/20200101T000000Z-abcdef");
    });
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no step of the run's backups"),
        "{}",
        stderr(&out)
    );

    let out = tamper(&|s| {
        s["done"][0]["destination"] = serde_json::json!("postgres://elsewhere:5432");
    });
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was verified into"),
        "{}",
        stderr(&out)
    );

    // The genuine state resumes to a run with nothing left to do.
    std::fs::write(&state, serde_json::to_vec(&genuine).unwrap()).unwrap();
    let out = all(&["--resume"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A fake ClickHouse: answers the version query, then for any other query sends a 200
/// chunked response with one chunk and never the last one.
fn stalling_clickhouse() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; length];
                    let _ = reader.read_exact(&mut body);
                    let query = format!("{head}{}", String::from_utf8_lossy(&body));
                    // The schema of one table, then a data stream that stalls.
                    let text = if query.contains("version()") {
                        Some("26.9.1.1\n")
                    } else if query.contains("system.databases") {
                        Some("db\n")
                    } else if query.contains("SHOW CREATE DATABASE") {
                        Some("CREATE DATABASE db\n")
                    } else if query.contains("system.tables") {
                        Some("db\tt\tMergeTree\tCREATE TABLE db.t (x UInt8) ENGINE = MergeTree ORDER BY x\t\n")
                    } else if query.contains("system.columns") {
                        Some("db\tt\tx\t\tUInt8\n")
                    } else if query.contains("FORMAT Native") {
                        None
                    } else {
                        Some("")
                    };
                    if let Some(text) = text {
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        continue;
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                    );
                    std::thread::sleep(Duration::from_secs(600));
                    return;
                }
            });
        }
    });
    url
}

/// A fake Redis primary that answers the handshake and then sends the keep-alive newline
/// every 0.2 s, forever, instead of a snapshot.
fn newline_only_redis() -> String {
    fake_redis(|w| {
        while w.write_all(b"\n").is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn backup_args<'a>(store: &'a TestStore, keys: &'a Keys, engine: &'a str) -> Vec<&'a str> {
    vec![
        "backup",
        engine,
        "--target",
        "stall",
        "--store",
        store.url(),
        "-r",
        &keys.recipient,
    ]
}

#[test]
fn stalled_sources_fail_after_the_stall_timeout_and_commit_nothing() {
    for (engine, var, url) in [
        ("clickhouse", "CLICKHOUSE_URL", stalling_clickhouse()),
        ("redis", "REDIS_URL", newline_only_redis()),
    ] {
        let (store, keys) = (TestStore::local(), Keys::generate());
        let started = Instant::now();
        let out = run(
            "worker",
            &backup_args(&store, &keys, engine),
            &[(var, &url), ("DR_STALL_TIMEOUT", "2s")],
        );
        let took = started.elapsed();
        assert_eq!(code(&out), 2, "{engine}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("stalled") || stderr(&out).contains("sent nothing"),
            "{engine}: {}",
            stderr(&out)
        );
        assert!(took < Duration::from_secs(30), "{engine} took {took:?}");
        assert!(
            store.files().iter().all(|f| !f.ends_with("manifest.json")),
            "{engine}: {:?}",
            store.files()
        );
    }
}

#[test]
fn sigterm_ends_a_backup_blocked_on_a_stalled_source_within_seconds() {
    for (engine, var, url) in [
        ("clickhouse", "CLICKHOUSE_URL", stalling_clickhouse()),
        ("redis", "REDIS_URL", newline_only_redis()),
    ] {
        let (store, keys) = (TestStore::local(), Keys::generate());
        let mut cmd = command(
            "worker",
            &backup_args(&store, &keys, engine),
            &[(var, &url), ("DR_STALL_TIMEOUT", "1h")],
        );
        let err_file = keys.dir.path().join("stderr");
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap();
        // Started and blocked on the source.
        std::thread::sleep(Duration::from_secs(3));
        assert!(child.try_wait().unwrap().is_none(), "{engine} ended early");
        let term = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let sent = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{engine}: still running 10 s after SIGTERM: {}",
                    std::fs::read_to_string(&err_file).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = std::fs::read_to_string(&err_file).unwrap();
        assert_eq!(status.code(), Some(2), "{engine}: {err}");
        assert!(err.contains("SIGTERM received"), "{engine}: {err}");
        assert!(store.files().iter().all(|f| !f.ends_with("manifest.json")));
    }
}

#[test]
fn a_backup_past_its_timeout_is_stopped() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let mut args = backup_args(&store, &keys, "command");
    args.extend(["--timeout", "2s", "--", "sleep", "60"]);
    let started = Instant::now();
    let out = run("worker", &args, &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr(&out).contains("ran past --timeout 2s"),
        "{}",
        stderr(&out)
    );
    assert!(store.files().iter().all(|f| !f.ends_with("manifest.json")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dot_target_is_refused_before_anything_is_pushed() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    // A gateway that records every push: a refused target must not reach it at all (a
    // real Pushgateway may refuse the collapsed path, or take it as a group without
    // the target label).
    let pushes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = pushes.clone();
    let gateway = fake_http_with_headers(move |method, path, _| {
        seen.lock().unwrap().push(format!("{method} {path}"));
        (200, Vec::new(), Vec::new())
    })
    .await;
    let push_to = [("DR_PUSHGATEWAY_URL", gateway.as_str())];
    for target in ["..", "."] {
        let out = backup_command(&store, &keys, target, &["echo", "x"], &push_to);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("target"), "{}", stderr(&out));
    }
    let refused = pushes.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "pushed for a refused target: {refused:?}"
    );
    // A valid target still pushes, so the gateway above would have seen one.
    let out = backup_command(&store, &keys, "dots.ok", &["echo", "x"], &push_to);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pushed = pushes.lock().unwrap().clone();
    assert!(
        pushed
            .iter()
            .any(|p| p.ends_with("/metrics/job/kube_dr/engine/command/target/dots.ok")),
        "{pushed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drill_restores_a_percent_named_database_into_its_own_scratch_only() {
    // On PostgreSQL 18: the decoy below ends in `__drill`, and the drill tests on 15
    // count every such database as their own leftover.
    let (port, bin) = (svc("DR_PG18_PORT"), svc("DR_PG18_BIN_DIR"));
    let on18 = [("PGPORT", port.as_str()), ("DR_PG_BIN_DIR", bin.as_str())];
    let (store, keys) = (TestStore::local(), Keys::generate());
    let suffix = unique("p");
    let db = format!("q%61_{suffix}");
    // What `%61` decodes to: a database the drill must never touch.
    let decoy = format!("qa_{suffix}__drill");
    let server = pg_connect_at(&port, "postgres").await;
    for name in [&db, &decoy] {
        server
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap();
    }
    pg_connect_at(&port, &db)
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 50)")
        .await
        .unwrap();
    let target = unique("pct");
    let out = run(
        "worker",
        &[
            "backup",
            "postgres",
            "--target",
            &target,
            "--database",
            &db,
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &on18,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let to = format!(
        "postgres=postgres://{}@{}:{port}",
        svc("PGUSER"),
        svc("PGHOST")
    );
    let out = run(
        "worker",
        &[
            "drill",
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &to,
            "--target",
            &target,
            "--store",
            store.url(),
        ],
        &on18,
    );
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let decoy_tables: i64 = pg_connect_at(&port, &decoy)
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(decoy_tables, 0, "the drill restored into {decoy}");
    let left: i64 = server
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&format!("{db}__drill")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the scratch database was not dropped");
    for name in [&db, &decoy] {
        server
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .unwrap();
    }
}
