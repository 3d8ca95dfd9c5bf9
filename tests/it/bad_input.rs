//! Every bad input the issue names: a clear message, the documented exit code, no new
//! manifest, earlier backups untouched, restore targets untouched.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dr_tests::*;

/// A database with one table, and a committed backup of it.
struct Fixture {
    db: String,
    store: TestStore,
    keys: Keys,
    id: String,
}

impl Fixture {
    async fn new(tag: &str) -> Fixture {
        let db = unique(tag);
        create_database(&db).await;
        pg_connect(&db)
            .await
            .batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20000) g;")
            .await
            .unwrap();
        let (store, keys) = (TestStore::s3(), Keys::generate());
        let id = backup_postgres(&store, &keys, "bad", &db, &[]);
        Fixture {
            db,
            store,
            keys,
            id,
        }
    }

    fn dr(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--store", self.store.url()]);
        run("kubectl-dr", &all, &[])
    }

    /// Runs another `worker backup postgres` of the fixture's database with extra env.
    fn backup(&self, env: &[(&str, &str)]) -> std::process::Output {
        let args = [
            "backup",
            "postgres",
            "--target",
            "bad",
            "-d",
            &self.db,
            "--store",
            self.store.url(),
            "-r",
            &self.keys.recipient,
        ];
        run("worker", &args, env)
    }

    fn identity(&self) -> &str {
        self.keys.identity.to_str().unwrap()
    }

    /// Ids of complete backups, via the CLI.
    fn listed(&self) -> Vec<String> {
        let out = self.dr(&["list", "-o", "json"]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn part_path(&self) -> std::path::PathBuf {
        self.store.part_path(&format!("postgres/bad/{}", self.id))
    }

    async fn cleanup(self) {
        drop_database(&self.db).await;
    }
}

/// A fake pg_dump directory: `body` runs instead of pg_dump; the real tools stay reachable.
fn fake_pg_bin(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = svc("DR_PG_BIN_DIR");
    for tool in ["pg_dumpall", "pg_restore"] {
        std::os::unix::fs::symlink(Path::new(&real).join(tool), dir.path().join(tool)).unwrap();
    }
    let script = dir.path().join("pg_dump");
    std::fs::write(
        &script,
        format!("#!/bin/bash\nREAL={real}/pg_dump\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_identity_is_named_and_the_target_is_untouched() {
    let f = Fixture::new("wrongkey").await;
    let other = Keys::generate();
    let target = unique("wrongkey_target");
    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        other.identity.to_str().unwrap(),
        "--to",
        &pg_url(&target),
    ]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains("no identity in")
            && err.contains(&f.keys.recipient)
            && err.contains("--identity"),
        "{err}"
    );
    assert!(
        !database_exists(&target).await,
        "a restore with the wrong key created the target"
    );
    let out = f.dr(&["verify", &f.id, "-i", other.identity.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        2,
        "a wrong key is an operator error, not a bad backup"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_fails_verify_and_blocks_restore() {
    let f = Fixture::new("flip").await;
    let path = f.part_path();
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 3;
    bytes[i] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let out = f.dr(&["verify", &f.id]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("sha256") && stdout(&out).contains("use another backup"),
        "{}",
        stdout(&out)
    );
    let target = unique("flip_target");
    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        f.identity(),
        "--to",
        &pg_url(&target),
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        !database_exists(&target).await,
        "restore touched the target of a corrupt backup"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_part_fails_verify_with_and_without_the_key() {
    let f = Fixture::new("trunc").await;
    let path = f.part_path();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = f.dr(&["verify", "latest"]);
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("manifest recorded"),
        "{}",
        stdout(&out)
    );
    let out = f.dr(&["verify", "latest", "-i", f.identity(), "-o", "json"]);
    assert_eq!(code(&out), 1);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["parts"][0]["ok"], false);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_and_empty_stores_are_explained() {
    let f = Fixture::new("unknown").await;
    let out = f.dr(&["verify", "20200101T000000Z-abcdef"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no complete backup matches id 20200101T000000Z-abcdef"),
        "{}",
        stderr(&out)
    );
    let out = f.dr(&["verify", "yesterday"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not a backup id"), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("kubectl dr list").count(),
        1,
        "the hint once: {}",
        stderr(&out)
    );
    let empty = TestStore::s3();
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--store",
            empty.url(),
            "-i",
            f.identity(),
            "--to",
            &pg_url("x"),
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("kubectl dr list"), "{}", stderr(&out));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_postgres_and_s3_fail_cleanly() {
    let f = Fixture::new("unreach").await;
    let out = f.backup(&[("PGPORT", "1")]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot connect to postgres://"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains(&svc("PGPASSWORD")),
        "password leaked"
    );

    let out = f.backup(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&svc("AWS_SECRET_ACCESS_KEY")),
        "secret leaked"
    );

    let out = f.dr(&[
        "verify",
        "latest",
        "--against",
        "postgres://postgres@127.0.0.1:1/x",
    ]);
    assert_eq!(code(&out), 2);
    assert_eq!(
        f.listed(),
        vec![f.id.clone()],
        "the earlier backup must stay the only one"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_killed_mid_stream_commits_nothing() {
    let f = Fixture::new("killed").await;
    let bin = fake_pg_bin("\"$REAL\" \"$@\" | head -c 100000\nkill -9 $$");
    let out = f.backup(&[("DR_PG_BIN_DIR", bin.path().to_str().unwrap())]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains("pg_dump was killed by signal 9") && err.contains("nothing was committed"),
        "{err}"
    );
    assert_eq!(f.listed(), vec![f.id.clone()]);
    let out = f.dr(&["verify", &f.id, "-i", f.identity()]);
    assert!(out.status.success(), "the earlier backup was damaged");

    let bin = fake_pg_bin("echo 'pg_dump: error: connection to server failed: FATAL: role \"x\" does not exist' >&2\nexit 1");
    let out = f.backup(&[("DR_PG_BIN_DIR", bin.path().to_str().unwrap())]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("role \"x\" does not exist"),
        "pg_dump's own message must reach the user"
    );
    assert_eq!(f.listed(), vec![f.id.clone()]);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_aborts_the_upload_and_stops_pg_dump() {
    let f = Fixture::new("sigterm").await;
    let uploads = s3_uploads();
    // 24 MiB of incompressible output (multipart is under way), then silence.
    let bin = fake_pg_bin("head -c 25165824 /dev/urandom\nexec sleep 600");
    let mut child = std::process::Command::new(binary("worker"))
        .args([
            "backup",
            "postgres",
            "--target",
            "bad",
            "-d",
            &f.db,
            "--store",
            f.store.url(),
            "-r",
            &f.keys.recipient,
        ])
        .envs(services().iter())
        .env("DR_PG_BIN_DIR", bin.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until parts are being uploaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while s3_uploads().difference(&uploads).next().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "shutdown waited for pg_dump"
    );
    assert!(err.contains("cancelled"), "{err}");
    assert_no_upload_leaked(&uploads).await;
    assert_eq!(f.listed(), vec![f.id.clone()]);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_empty_target_needs_clean() {
    let f = Fixture::new("nonempty").await;
    let target = unique("nonempty_target");
    create_database(&target).await;
    let c = pg_connect(&target).await;
    c.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (-1, 'precious'); CREATE TABLE other (x int);")
        .await
        .unwrap();
    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        f.identity(),
        "--to",
        &pg_url(&target),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("already has 2 table(s)") && stderr(&out).contains("--clean"),
        "{}",
        stderr(&out)
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the refused restore changed the target");

    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        f.identity(),
        "--to",
        &pg_url(&target),
        "--clean",
        "--dry-run",
    ]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("DROP and recreate"),
        "{}",
        stderr(&out)
    );
    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        f.identity(),
        "--to",
        &pg_url(&target),
        "--clean",
    ]);
    assert_eq!(
        code(&out),
        2,
        "without a terminal, --clean must ask for --yes"
    );
    assert!(stderr(&out).contains("--yes"));

    let out = f.dr(&[
        "restore",
        &f.id,
        "-i",
        f.identity(),
        "--to",
        &pg_url(&target),
        "--clean",
        "--yes",
    ]);
    assert!(out.status.success());
    let n: i64 = c
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20000);
    drop(c);
    drop_database(&target).await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_and_store_mistakes_are_usage_errors() {
    use age::secrecy::ExposeSecret;
    let secret = age::x25519::Identity::generate().to_string();
    let out = run(
        "worker",
        &[
            "backup",
            "postgres",
            "--target",
            "x",
            "-d",
            "x",
            "--store",
            "file:///tmp/x",
            "-r",
            secret.expose_secret(),
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("age-keygen -y"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&secret.expose_secret()[20..]),
        "a private key was echoed"
    );

    let out = run(
        "worker",
        &[
            "backup", "postgres", "--target", "x", "-d", "x", "-r", "age1xyz",
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    let out = run("kubectl-dr", &["list"], &[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("DR_STORE"), "{}", stderr(&out));
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--store",
            "file:///tmp/x",
            "--to",
            &pg_url("x"),
        ],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("no identity given"),
        "{}",
        stderr(&out)
    );
    let out = run("kubectl-dr", &["list", "--store", "ftp://nope"], &[]);
    assert_eq!(code(&out), 2);
}

/// pg_dump gets libpq's settings and its password, never the secrets of the store or of
/// other engines that the worker's own environment holds.
#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_sees_no_secret_but_its_own() {
    let f = Fixture::new("childenv").await;
    let seen = tempfile::NamedTempFile::new().unwrap();
    let bin = fake_pg_bin(&format!(
        "env > {}\nexec \"$REAL\" \"$@\"",
        seen.path().display()
    ));
    let out = f.backup(&[
        ("DR_PG_BIN_DIR", bin.path().to_str().unwrap()),
        ("CLICKHOUSE_PASSWORD", "ch-Leak-Canary-1"),
        ("VAULT_TOKEN", "hvs.Leak-Canary-2"),
        ("PGSSLMODE", "disable"),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let env = std::fs::read_to_string(seen.path()).unwrap();
    for secret in [
        svc("AWS_SECRET_ACCESS_KEY"),
        "ch-Leak-Canary-1".to_string(),
        "hvs.Leak-Canary-2".to_string(),
    ] {
        assert!(!env.contains(&secret), "pg_dump saw {secret}");
    }
    assert!(env.contains(&format!("PGPASSWORD={}", svc("PGPASSWORD"))));
    assert!(env.contains("PGSSLMODE=disable") && env.contains("PATH="));
    f.cleanup().await;
}

/// Names are data: a table named with terminal escapes or a dot prints escaped and quoted.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_table_names_print_escaped_and_quoted() {
    let f = Fixture::new("names").await;
    pg_connect(&f.db)
        .await
        .batch_execute(
            "CREATE TABLE \"esc\x1b[2Jboom\" (id int); CREATE TABLE \"a.b\" (id int); INSERT INTO \"a.b\" VALUES (1);",
        )
        .await
        .unwrap();
    let out = f.backup(&[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = f.dr(&["verify", &id, "--against", &pg_url(&f.db)]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "a terminal escape reached stdout");
    assert!(text.contains("\\u{1b}[2Jboom"), "{text}");
    assert!(text.contains("public.\"a.b\""), "{text}");
    f.cleanup().await;
}
