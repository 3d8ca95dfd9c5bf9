//! Support for the integration tests: the real services started by `scripts/services.sh`
//! (their settings come from `.dr-services/env`), the built binaries, age keys, and
//! uniquely named fixtures so tests run in parallel without stepping on each other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use rand::Rng;

pub mod bao;
mod fakes;
mod postgres;
mod s3;
mod synthetic;

pub use fakes::*;
pub use postgres::*;
pub use s3::*;
pub use synthetic::*;

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
            // Values with `;` are single-quoted for the shell.
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
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

/// Deterministic, incompressible-looking bytes (xorshift), so what a store holds is as large
/// as what was sent.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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

/// A store for one test: a unique prefix in the S3 bucket, in Azurite's container or in
/// fake-gcs-server's bucket (each named `dr-test`), or a temporary directory.
pub enum TestStore {
    S3 { url: String, prefix: String },
    Local { url: String, dir: tempfile::TempDir },
    Azure { url: String, prefix: String },
    Gcs { url: String, prefix: String },
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

    pub fn azure() -> TestStore {
        let prefix = unique("t");
        TestStore::Azure {
            url: format!("az://dr-test/{prefix}"),
            prefix,
        }
    }

    pub fn gcs() -> TestStore {
        let prefix = unique("t");
        TestStore::Gcs {
            url: format!("gs://dr-test/{prefix}"),
            prefix,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestStore::S3 { url, .. }
            | TestStore::Local { url, .. }
            | TestStore::Azure { url, .. }
            | TestStore::Gcs { url, .. } => url,
        }
    }

    /// Flips one byte in the middle of an object through the store's API (for stores whose
    /// files a test cannot reach), as a disk or a bad copy would.
    pub async fn damage(&self, key: &str) {
        let store = self.open().await;
        let mut bytes = store
            .get_bytes(key, u64::MAX)
            .await
            .expect("read to damage");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        store.delete(key).await.expect("delete to damage");
        store
            .put_bytes(key, bytes::Bytes::from(bytes))
            .await
            .expect("write damaged");
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
            TestStore::Azure { .. } | TestStore::Gcs { .. } => {
                panic!("an emulator's objects are reached through its API: use damage() or files()")
            }
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
        if matches!(self, TestStore::Azure { .. } | TestStore::Gcs { .. }) {
            // What the emulator lists (unfinished uploads are invisible by design).
            let keys = std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Runtime::new()
                        .expect("runtime")
                        .block_on(async { self.open().await.list("").await.expect("list") })
                })
                .join()
                .expect("list thread")
            });
            return keys.into_iter().map(|o| o.key).collect();
        }
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
            TestStore::Azure { prefix, .. } => std::sync::Arc::new(
                drkit::store::azure::AzureStore::from_vars(
                    "dr-test",
                    prefix,
                    &|name| services().get(name).cloned(),
                    "",
                )
                .expect("open Azurite store"),
            ),
            TestStore::Gcs { prefix, .. } => std::sync::Arc::new(
                drkit::store::gcs::GcsStore::from_vars(
                    "dr-test",
                    prefix,
                    &|name| services().get(name).cloned(),
                    None,
                )
                .expect("open fake-gcs-server store"),
            ),
        }
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

/// A run of a workspace binary, built up: `dr("kubectl-dr").args(["verify", id]).store(&s)
/// .run().assert_exit(0, "")`.
pub fn dr(bin: &str) -> Dr {
    Dr {
        bin: bin.to_string(),
        args: Vec::new(),
        env: Vec::new(),
    }
}

/// See [`dr`].
#[derive(Clone)]
pub struct Dr {
    bin: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Dr {
    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Dr
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Adds `--store URL`.
    pub fn store(self, store: &TestStore) -> Dr {
        self.args(["--store", store.url()])
    }

    /// Adds `--identity FILE` with the keys' private half.
    pub fn identity(self, keys: &Keys) -> Dr {
        self.args(["--identity", keys.identity.to_str().unwrap()])
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, key: &str, value: &str) -> Dr {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs it (with the services' environment, as [`run`]).
    pub fn run(&self) -> Ran {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Ran(run(&self.bin, &args, &env))
    }
}

/// What a [`Dr`] run did.
pub struct Ran(pub Output);

impl Ran {
    /// Asserts the exit code, and that stdout or stderr holds `needle` (`""`: anything).
    #[track_caller]
    pub fn assert_exit(&self, expected: i32, needle: &str) -> &Ran {
        let (out, err) = (self.stdout(), self.stderr());
        assert_eq!(code(&self.0), expected, "stdout:\n{out}\nstderr:\n{err}");
        assert!(
            out.contains(needle) || err.contains(needle),
            "neither stdout nor stderr holds {needle:?}:\nstdout:\n{out}\nstderr:\n{err}"
        );
        self
    }

    /// Stdout, as text.
    pub fn stdout(&self) -> String {
        stdout(&self.0)
    }

    /// Stderr, as text.
    pub fn stderr(&self) -> String {
        stderr(&self.0)
    }
}

/// The `status` of every step of a `restore --all` summary (`-o json`), in order.
pub fn step_statuses(summary: &serde_json::Value) -> Vec<&str> {
    summary["steps"]
        .as_array()
        .expect("a summary with steps")
        .iter()
        .map(|s| s["status"].as_str().expect("a status"))
        .collect()
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
    /// Sends `signal` (`TERM`, `INT`…) with kill(1).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

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
