//! Support for the integration tests: the real services started by `scripts/services.sh`
//! (their settings come from `.dr-services/env`), the built binaries, age keys, and
//! uniquely named fixtures so tests run in parallel without stepping on each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rand::Rng;

pub mod bao;
use tokio_postgres::{Client, NoTls};

/// The services' environment, read once from `.dr-services/env`.
pub fn services() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = repo_root();
        let dir = std::env::var("DR_SERVICES_DIR").map_or_else(|_| root.join(".dr-services"), PathBuf::from);
        let text = std::fs::read_to_string(dir.join("env")).unwrap_or_else(|_| {
            panic!(
                "no {}/env: start the test services first with scripts/services.sh start (scripts/test.sh does it)",
                dir.display()
            )
        });
        let mut env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The 15 cluster under names that stay put, for tests that use both versions.
        for (from, to) in [("PGPORT", "DR_PG15_PORT"), ("DR_PG_BIN_DIR", "DR_PG15_BIN_DIR")] {
            if let Some(v) = env.get(from).cloned() {
                env.insert(to.to_string(), v);
            }
        }
        // DR_TEST_PG=18 runs the same tests against PostgreSQL 18 and its client tools
        // (scripts/test.sh runs the PostgreSQL modules a second time so): the tests and the
        // binaries they start then see 18 as "the" server.
        if std::env::var("DR_TEST_PG").is_ok_and(|v| v == "18") {
            for (from, to) in [("DR_PG18_PORT", "PGPORT"), ("DR_PG18_BIN_DIR", "DR_PG_BIN_DIR")] {
                let value = env
                    .get(from)
                    .unwrap_or_else(|| panic!("{from} missing: rerun scripts/services.sh start"))
                    .clone();
                env.insert(to.to_string(), value);
            }
        }
        env
    })
}

/// The suite's minisign key pair: every `worker` signs with it (DR_SIGNING_KEY_FILE) and
/// every reader trusts it (DR_SIGNERS), as in a real installation. Tests about signatures
/// override either.
pub struct SuiteSigner {
    /// The unencrypted secret key file, as `minisign -G -W` writes it.
    pub key_file: PathBuf,
    /// The public key file (`minisign -V -p`).
    pub pub_file: PathBuf,
    /// The public key line (RW…).
    pub public: String,
}

pub fn suite_signer() -> &'static SuiteSigner {
    static SIGNER: OnceLock<SuiteSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        // Made by the minisign tool, as the README tells operators to (its unencrypted keys
        // differ from the crate's in their checksum).
        let dir = std::env::temp_dir().join(format!("dr-suite-signer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("signer dir");
        let key_file = dir.join("signing.key");
        let pub_file = dir.join("signing.pub");
        let made = Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(&pub_file)
            .arg("-s")
            .arg(&key_file)
            .output()
            .expect("minisign (Debian package, installed by scripts/services.sh)");
        assert!(made.status.success(), "minisign -G failed");
        let public = std::fs::read_to_string(&pub_file)
            .expect("pub")
            .lines()
            .last()
            .expect("key line")
            .to_string();
        SuiteSigner {
            key_file,
            pub_file,
            public,
        }
    })
}

pub fn svc(name: &str) -> String {
    services()
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from the services env"))
        .clone()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built binary of the workspace (scripts/test.sh builds them before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A fresh, unique lowercase name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::rng().random::<u32>())
}

/// An age key pair in a temporary directory.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub identity: PathBuf,
    pub recipient: String,
}

impl Keys {
    pub fn generate() -> Keys {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().expect("tempdir");
        let id = age::x25519::Identity::generate();
        let identity = dir.path().join("key.txt");
        std::fs::write(
            &identity,
            format!("# test key\n{}\n", id.to_string().expose_secret()),
        )
        .expect("write key");
        Keys {
            recipient: id.to_public().to_string(),
            identity,
            dir,
        }
    }
}

/// A store for one test: a unique prefix in the S3 bucket, or a temporary directory.
pub enum TestStore {
    S3 { url: String, prefix: String },
    Local { url: String, dir: tempfile::TempDir },
}

impl TestStore {
    pub fn s3() -> TestStore {
        let prefix = unique("t");
        TestStore::S3 {
            url: format!("s3://{}/{prefix}", svc("DR_TEST_BUCKET")),
            prefix,
        }
    }

    pub fn local() -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        TestStore::Local {
            url: format!("file://{}", dir.path().display()),
            dir,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestStore::S3 { url, .. } | TestStore::Local { url, .. } => url,
        }
    }

    /// Filesystem path of an object, for tests that damage objects on purpose: s3s-fs keeps
    /// each object as a plain file under its data directory.
    pub fn object_path(&self, key: &str) -> PathBuf {
        match self {
            TestStore::S3 { prefix, .. } => PathBuf::from(svc("DR_SERVICES_DIR"))
                .join("s3/data")
                .join(svc("DR_TEST_BUCKET"))
                .join(prefix)
                .join(key),
            TestStore::Local { dir, .. } => dir.path().join(key),
        }
    }

    /// The part file of a one-part backup directory (`engine/target/id`), for tests that
    /// damage or replace it.
    pub fn part_path(&self, dir: &str) -> PathBuf {
        std::fs::read_dir(self.object_path(dir))
            .expect("backup directory")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "age"))
            .expect("part file")
    }

    /// Every file under the store's root, relative, for "nothing left behind" checks.
    pub fn files(&self) -> Vec<String> {
        let root = self.object_path("");
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    /// Opens the store in-process. The S3 client gets explicit region and static
    /// credentials (nothing waits on instance metadata, no process environment is touched).
    pub async fn open(&self) -> std::sync::Arc<dyn drkit::store::DeleteStore> {
        match self {
            TestStore::S3 { prefix, .. } => std::sync::Arc::new(drkit::store::s3::S3Store::new(
                s3_client(&svc("AWS_ENDPOINT_URL")),
                &svc("DR_TEST_BUCKET"),
                prefix,
            )),
            TestStore::Local { dir, .. } => std::sync::Arc::new(
                drkit::store::local::LocalStore::open(dir.path())
                    .await
                    .expect("open local store"),
            ),
        }
    }
}

/// An S3 client for the test server (or any endpoint, e.g. a closed port).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new(svc("AWS_REGION")))
        .credentials_provider(Credentials::new(
            svc("AWS_ACCESS_KEY_ID"),
            svc("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Multipart uploads in progress on the test S3 server: s3s-fs keeps one
/// `.upload-<id>.json` per upload in its data root until it is completed or aborted.
pub fn s3_uploads() -> std::collections::HashSet<String> {
    let root = PathBuf::from(svc("DR_SERVICES_DIR")).join("s3/data");
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Fails unless every multipart upload that appeared after `before` was taken is completed
/// or aborted within 30 s. Uploads of tests running in parallel finish quickly; a leaked one
/// never does.
pub async fn assert_no_upload_leaked(before: &std::collections::HashSet<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let leaked: Vec<String> = s3_uploads().difference(before).cloned().collect();
        if leaked.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "multipart uploads left behind: {leaked:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            out.push(
                p.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string(),
            );
        }
    }
}

/// A command for a workspace binary with the services' environment plus `env`.
pub fn command(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary(bin));
    cmd.args(args);
    with_services_env(&mut cmd, env);
    cmd
}

fn with_services_env(cmd: &mut Command, env: &[(&str, &str)]) {
    cmd.env_remove("DR_STORE").env_remove("RUST_LOG");
    for (k, v) in services() {
        cmd.env(k, v);
    }
    let signer = suite_signer();
    cmd.env("DR_SIGNING_KEY_FILE", &signer.key_file)
        .env("DR_SIGNERS", &signer.public);
    cmd.env("DR_LOG_FORMAT", "text");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// Runs a workspace binary with the services' environment plus `env`.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = command(bin, args, env).output().expect("run binary");
    eprintln!(
        "$ {bin} {}\n-- exit {:?}\n-- stdout\n{}\n-- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The exit code of a run (a signal fails the test).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally (no signal)")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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

/// `worker backup command --target TARGET --store … -r KEY -- ARGV…`, with `env`.
pub fn backup_command(
    store: &TestStore,
    keys: &Keys,
    target: &str,
    argv: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec![
        "backup",
        "command",
        "--target",
        target,
        "--store",
        store.url(),
        "-r",
        &keys.recipient,
        "--",
    ];
    args.extend_from_slice(argv);
    run("worker", &args, env)
}

/// `kubectl-dr list -o json --store …`: exit 0, and the rows.
pub fn list_json(store: &TestStore) -> serde_json::Value {
    let out = run(
        "kubectl-dr",
        &["list", "-o", "json", "--store", store.url()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("list -o json prints JSON")
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

/// Runs a workspace binary under GNU time (Debian package `time`) and returns its output
/// and peak RSS in KiB: memory bounds are asserted on real processes.
pub fn run_measured(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, u64) {
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(report.path())
        .arg(binary(bin))
        .args(args);
    with_services_env(&mut timed, env);
    let out = timed.output().expect("run /usr/bin/time");
    let kib = std::fs::read_to_string(report.path())
        .expect("time report")
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("peak RSS in KiB");
    eprintln!(
        "$ {bin} {} (peak RSS {kib} KiB)\n-- exit {:?}\n-- stdout\n{}\n-- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, kib)
}

/// Writes a backup as the worker lays it out (one small part, then the manifest unless
/// `complete` is false), started at `started`: for retention tests and benchmarks that need
/// many backups quickly.
pub async fn write_synthetic_backup(
    store: &dyn drkit::store::DeleteStore,
    target: &str,
    started: chrono::DateTime<chrono::Utc>,
    complete: bool,
) -> drkit::catalog::BackupRef {
    use drkit::catalog::{
        BackupId, BackupRef, Compression, Manifest, Part, TableCount, FORMAT_VERSION,
    };
    let b = BackupRef {
        engine: "postgres".into(),
        target: target.into(),
        id: BackupId::new(started),
    };
    let file = "db-app.pgdump.zst.age";
    let part = vec![0u8; 64];
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&part))
    };
    store
        .put_bytes(&b.part_key(file), bytes::Bytes::from(part))
        .await
        .expect("put part");
    if complete {
        let m = Manifest {
            format_version: FORMAT_VERSION,
            id: b.id.clone(),
            engine: b.engine.as_str().into(),
            target: b.target.clone(),
            started_at: started,
            finished_at: started,
            tool: "synthetic".into(),
            server_version: "15".into(),
            // Shaped like a real recipient: the catalog checks manifests before trusting them.
            recipients: vec![format!("age1{}", "q".repeat(58))],
            parts: vec![Part {
                name: "db-app".into(),
                file: file.into(),
                format: "pg_dump-custom".into(),
                compression: Compression::Zstd,
                ciphertext_bytes: 64,
                // The real sum: synthetic backups pass an integrity-only verify.
                ciphertext_sha256: sha,
                header_sha256: None,
                plaintext_bytes: 128,
                database: Some("app".into()),
                tables: vec![TableCount {
                    schema: "public".into(),
                    name: "users".into(),
                    rows: 42,
                }],
                section: None,
            }],
            facts: Default::default(),
        };
        let json = serde_json::to_vec(&m).expect("json");
        sign_manifest(store, &b, &json).await;
        store
            .put_bytes(&b.manifest_key(), bytes::Bytes::from(json))
            .await
            .expect("put manifest");
    }
    b
}

/// Writes `manifest.json.minisig` for these manifest bytes with the suite's key, as the
/// worker does before it commits.
pub async fn sign_manifest(
    store: &dyn drkit::store::DeleteStore,
    b: &drkit::catalog::BackupRef,
    manifest: &[u8],
) {
    let key = drkit::catalog::SigningKey::from_file(&suite_signer().key_file).expect("suite key");
    let sig = key.sign(manifest, b).expect("sign");
    store
        .put_bytes(&b.signature_key(), bytes::Bytes::from(sig))
        .await
        .expect("put signature");
}

/// A minimal HTTP/1.1 server on loopback for what no real server here can do (a Kubernetes
/// API, a Vault that sends a broken snapshot): `handler(method, path, body)` answers each
/// request with a status and a JSON body.
pub async fn fake_http<F>(handler: F) -> String
where
    F: Fn(&str, &str, &str) -> (u16, Vec<u8>) + Send + Sync + 'static,
{
    fake_http_with_headers(move |method, path, body| {
        let (status, reply) = handler(method, path, body);
        (
            status,
            vec![("Content-Type", "application/json".to_string())],
            reply,
        )
    })
    .await
}

/// [`fake_http`] whose handler also chooses the response headers.
pub async fn fake_http_with_headers<F>(handler: F) -> String
where
    F: Fn(&str, &str, &str) -> (u16, Vec<(&'static str, String)>, Vec<u8>) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let (status, headers, reply) = handler(method, path, &body);
                let headers: String = headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}\r\n"))
                    .collect();
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.len()
                )
                .into_bytes();
                response.extend_from_slice(&reply);
                let _ = sock.write_all(&response).await;
            });
        }
    });
    format!("http://{addr}")
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

/// A running command whose stderr is read line by line as a person at the terminal would:
/// for commands that pause until someone acts (a Vault restore waiting to be unsealed).
/// Use from multi-threaded tests (the reads block in place).
pub struct Watched {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    /// What stderr said so far.
    pub stderr: String,
}

impl Watched {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Watched {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        Watched {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Reads stderr until a line contains `needle`; false when the command ended first.
    pub fn until(&mut self, needle: &str) -> bool {
        tokio::task::block_in_place(|| {
            for line in self.lines.by_ref() {
                let line = line.unwrap();
                self.stderr.push_str(&line);
                self.stderr.push('\n');
                if line.contains(needle) {
                    return true;
                }
            }
            false
        })
    }

    /// SIGKILLs the command (a crash, an OOM kill, a node gone): no cleanup runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
    }

    /// Reads the rest and waits: the exit status, stdout, and all of stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        use std::io::Read;
        tokio::task::block_in_place(|| {
            for line in self.lines.by_ref() {
                self.stderr.push_str(&line.unwrap());
                self.stderr.push('\n');
            }
            let mut out = String::new();
            self.child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            (self.child.wait().unwrap(), out, self.stderr)
        })
    }
}

/// The Pushgateway's lines of metrics named `prefix…` for one target.
pub async fn pushed_lines(prefix: &str, target: &str) -> Vec<String> {
    let text = reqwest::get(format!("{}/metrics", svc("DR_TEST_PUSHGATEWAY")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("target=\"{target}\"");
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&label))
        .map(String::from)
        .collect()
}

/// A fake Redis server on loopback for hostile-peer tests: it reads RESP commands and
/// answers PING, INFO (as Redis 7.0.15) and anything else with +OK, except `SYNC`, which
/// it hands to `on_sync` with the connection (whatever that writes is the "snapshot"; the
/// connection closes when it returns). Returns the server's `redis://` URL.
pub fn fake_redis(on_sync: fn(&mut std::net::TcpStream)) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let Some(n) = line.trim().strip_prefix('*') else {
                        continue;
                    };
                    let mut args = Vec::new();
                    for _ in 0..n.parse::<usize>().unwrap_or(0) {
                        let (mut len, mut arg) = (String::new(), String::new());
                        reader.read_line(&mut len).unwrap();
                        reader.read_line(&mut arg).unwrap();
                        args.push(arg.trim().to_uppercase());
                    }
                    let reply: &[u8] = match args.first().map(String::as_str) {
                        Some("PING") => b"+PONG\r\n",
                        Some("INFO") => b"$22\r\nredis_version:7.0.15\r\n\r\n",
                        Some("SYNC") => {
                            on_sync(&mut w);
                            return;
                        }
                        _ => b"+OK\r\n",
                    };
                    let _ = w.write_all(reply);
                }
            });
        }
    });
    url
}
