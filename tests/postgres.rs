//! The PostgreSQL side of the tests: the services' servers (15, or 18 with DR_TEST_PG=18),
//! databases made and dropped per test, a fresh server of its own, and a fingerprint of
//! everything a database holds.

use tokio_postgres::{Client, NoTls};

use super::*;

/// The major version the PostgreSQL tests run against: 15, or 18 with DR_TEST_PG=18.
pub fn pg_major() -> &'static str {
    if std::env::var("DR_TEST_PG").is_ok_and(|v| v == "18") {
        "18"
    } else {
        "15"
    }
}

/// URL of a database on the test server (no password: it travels in PGPASSWORD).
pub fn pg_url(db: &str) -> String {
    format!(
        "postgres://{}@{}:{}/{db}",
        svc("PGUSER"),
        svc("PGHOST"),
        svc("PGPORT")
    )
}

pub async fn pg_connect(db: &str) -> Client {
    pg_connect_at(&svc("PGPORT"), db).await
}

/// A connection to a database of the test cluster listening on `port` (15 or 18).
pub async fn pg_connect_at(port: &str, db: &str) -> Client {
    let conn = format!(
        "host={} port={port} user={} password={} dbname='{db}'",
        svc("PGHOST"),
        svc("PGUSER"),
        svc("PGPASSWORD")
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect to test postgres");
    tokio::spawn(connection);
    client
}

/// Creates an empty database (dropped by [`drop_database`]).
pub async fn create_database(name: &str) {
    pg_connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
}

pub async fn drop_database(name: &str) {
    let _ = pg_connect("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

pub async fn database_exists(name: &str) -> bool {
    pg_connect("postgres")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query")
        .is_some()
}

/// Runs `worker backup postgres` for `db` into `store` and returns the new backup id.
pub fn backup_postgres(
    store: &TestStore,
    keys: &Keys,
    target: &str,
    db: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "backup",
        "postgres",
        "--target",
        target,
        "--database",
        db,
        "--store",
        store.url(),
        "--recipient",
        &keys.recipient,
    ];
    args.extend_from_slice(extra);
    let out = run("worker", &args, &[]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert!(
        id.parse::<drkit::catalog::BackupId>().is_ok(),
        "not an id: {id:?}"
    );
    id
}

/// A PostgreSQL server of its own (the services' binaries, a new data directory, a free
/// port, the services' password): the "fresh server" of a rebuild. Stopped when dropped.
pub struct FreshPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl FreshPostgres {
    pub fn start() -> FreshPostgres {
        let bin = PathBuf::from(svc("DR_PG_BIN_DIR"));
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", svc("PGPASSWORD"))).expect("pwfile");
        // initdb and postgres refuse to run as root: as the postgres user then (created by
        // scripts/services.sh), owning the directory.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let as_pg = |program: PathBuf| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = as_pg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .args(["-E", "UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = as_pg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-t", "60", "start", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync=off",
                dir.path().display()
            ))
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FreshPostgres { port, dir }
    }

    /// A server started by other means (e.g. on a restored data directory) seen through the
    /// same helpers; dropping it stops nothing that is not its own.
    pub fn attach(port: u16) -> FreshPostgres {
        FreshPostgres {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The server's URL, without a database and without the password (PGPASSWORD).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub async fn connect(&self, db: &str) -> Client {
        let conn = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname='{db}'",
            self.port,
            svc("PGPASSWORD")
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls)
            .await
            .expect("connect to the fresh postgres");
        tokio::spawn(connection);
        client
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        let pg_ctl = PathBuf::from(svc("DR_PG_BIN_DIR")).join("pg_ctl");
        let data = self.dir.path().join("data");
        let mut c = if Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            Command::new(pg_ctl)
        };
        let _ = c
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// An order-independent fingerprint of every table of a PostgreSQL database: each table's
/// name, count and the md5 of its rows as text in a fixed order.
pub async fn pg_fingerprint(client: &Client) -> Vec<(String, i64, String)> {
    let tables = client
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut out = Vec::new();
    for t in tables {
        let name: String = t.get(0);
        let row = client
            .query_one(
                &format!("SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {name} x"),
                &[],
            )
            .await
            .expect("fingerprint");
        out.push((name, row.get(0), row.get(1)));
    }
    out
}
