//! The Redis engine against real `redis-server`s (Debian), each test starting its own:
//! keys of every type (with large values, so both compact and full encodings occur) and an
//! expiry round-trip through backup → verify → FLUSHALL → restore --clean, compared in a
//! canonical form; a non-empty target without --clean is refused and unchanged; a wrong
//! password, a server that cuts the sync, and a cut part each fail cleanly.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use dr_tests::*;

const PASSWORD: &str = "redis-Test-Secret-5150";

/// A redis-server on a free loopback port, stopped on drop.
pub(crate) struct Server {
    port: u16,
    password: Option<&'static str>,
    /// The CA file, for a TLS-only server.
    tls: Option<std::path::PathBuf>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn start(password: Option<&'static str>, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tls = extra.contains(&"--tls-ca-cert-file");
        let mut cmd = Command::new("redis-server");
        cmd.args([
            if tls { "--tls-port" } else { "--port" },
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(dir.path().join("log"))
        .args(extra)
        .args(if tls {
            &["--port", "0", "--tls-auth-clients", "no"][..]
        } else {
            &[][..]
        })
        .stdout(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .expect("redis-server (Debian, installed by scripts/services.sh)");
        let tls = extra
            .iter()
            .position(|a| *a == "--tls-ca-cert-file")
            .map(|i| std::path::PathBuf::from(extra[i + 1]));
        let server = Server {
            port,
            password,
            tls,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if server.cli(0, &["PING"]).trim() == "PONG" {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server on {port} did not start");
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("REDIS_URL", self.url())];
        if let Some(p) = self.password {
            env.push(("REDIS_PASSWORD", p.to_string()));
        }
        if let Some(ca) = &self.tls {
            env.push(("REDIS_CACERT", ca.display().to_string()));
        }
        env
    }

    fn cli(&self, db: u32, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "-n", &db.to_string()]);
        if let Some(ca) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        cmd.args(args);
        if let Some(p) = self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn seed(&self) {
        let s = |db: u32, args: &[&str]| {
            self.cli(db, args);
        };
        s(0, &["SET", "plain", "hello"]);
        s(0, &["SET", "counter", "42"]);
        s(0, &["SET", "session", "abc", "EX", "3600"]);
        s(0, &["HSET", "small-hash", "a", "1", "b", "2"]);
        s(0, &["RPUSH", "small-list", "x", "y", "z"]);
        s(0, &["SADD", "ints", "1", "2", "3", "500"]);
        s(0, &["SADD", "words", "alpha", "beta"]);
        s(0, &["ZADD", "small-zset", "1.5", "a", "2", "b"]);
        s(0, &["XADD", "events", "*", "kind", "login", "user", "ann"]);
        s(0, &["XADD", "events", "*", "kind", "logout", "user", "ann"]);
        s(0, &["XGROUP", "CREATE", "events", "workers", "0"]);
        // Large values: past the listpack limits, stored in their full encodings.
        let mut hash = vec!["HSET", "big-hash"];
        let fields: Vec<String> = (0..600).map(|i| format!("field-{i}")).collect();
        for f in &fields {
            hash.extend([f.as_str(), "v"]);
        }
        s(0, &hash);
        let items: Vec<String> = (0..1000)
            .map(|i| format!("item-{i}-{}", "x".repeat(20)))
            .collect();
        let mut list = vec!["RPUSH", "big-list"];
        list.extend(items.iter().map(String::as_str));
        s(0, &list);
        let mut set = vec!["SADD", "big-set"];
        set.extend(items.iter().take(600).map(String::as_str));
        s(0, &set);
        let mut zset = vec!["ZADD".to_string(), "big-zset".to_string()];
        for (i, item) in items.iter().take(300).enumerate() {
            zset.extend([format!("{i}.25"), item.clone()]);
        }
        s(0, &zset.iter().map(String::as_str).collect::<Vec<_>>());
        s(0, &["SET", "long", &"y".repeat(100_000)]);
        s(3, &["SET", "in-db-3", "three"]);
    }

    /// Every key of databases 0 to 3 with its value in an order-independent form and
    /// whether it expires.
    pub(crate) fn canonical(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for db in 0..4 {
            for key in self.cli(db, &["--scan"]).lines().filter(|k| !k.is_empty()) {
                let kind = self.cli(db, &["TYPE", key]).trim().to_string();
                let sorted = |text: String| {
                    let mut lines: Vec<&str> = text.lines().collect();
                    lines.sort_unstable();
                    lines.join("\n")
                };
                let value = match kind.as_str() {
                    "string" => self.cli(db, &["GET", key]),
                    "hash" => {
                        let flat = self.cli(db, &["HGETALL", key]);
                        let lines: Vec<&str> = flat.lines().collect();
                        let mut pairs: Vec<String> = lines.chunks(2).map(|p| p.join("=")).collect();
                        pairs.sort();
                        pairs.join("\n")
                    }
                    "list" => self.cli(db, &["LRANGE", key, "0", "-1"]),
                    "set" => sorted(self.cli(db, &["SMEMBERS", key])),
                    "zset" => self.cli(db, &["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                    "stream" => format!(
                        "{}{}",
                        self.cli(db, &["XRANGE", key, "-", "+"]),
                        self.cli(db, &["XINFO", "GROUPS", key])
                    ),
                    other => panic!("unexpected type {other}"),
                };
                let ttl: i64 = self.cli(db, &["PTTL", key]).trim().parse().unwrap();
                out.insert(
                    format!("{db}/{key}"),
                    format!(
                        "{kind}|{}|{value}",
                        if ttl > 0 { "expires" } else { "persistent" }
                    ),
                );
            }
        }
        out
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn backup(server: &Server, store: &TestStore, keys: &Keys) -> std::process::Output {
    backup_with(store, keys, &env_refs(&server.env()))
}

/// `worker backup redis --target cache` with this environment (the server's address and
/// credentials, or deliberately wrong ones).
fn backup_with(store: &TestStore, keys: &Keys, env: &[(&str, &str)]) -> std::process::Output {
    run(
        "worker",
        &[
            "backup",
            "redis",
            "--target",
            "cache",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        env,
    )
}

fn dr(server: &Server, store: &TestStore, keys: &Keys, args: &[&str]) -> std::process::Output {
    let env = server.env();
    let mut all = args.to_vec();
    all.extend([
        "-i",
        keys.identity.to_str().unwrap(),
        "--store",
        store.url(),
    ]);
    run("kubectl-dr", &all, &env_refs(&env))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_and_expiry_round_trips_through_a_clean_restore() {
    let server = Server::start(Some(PASSWORD), &[]);
    server.seed();
    let before = server.canonical();
    assert_eq!(before.len(), 15, "{:?}", before.keys());
    let (store, keys) = (TestStore::local(), Keys::generate());

    let out = backup(&server, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list = list_json(&store);
    assert_eq!(list[0]["engine"], "redis");
    assert_eq!(list[0]["rows"], 15, "keys (expires are a subset): {list}");

    let out = dr(&server, &store, &keys, &["verify", "latest"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dr(
        &server,
        &store,
        &keys,
        &["verify", "latest", "--against", &server.url()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("db0.keys"), "{}", stdout(&out));

    // The rebuild: the data is gone, something else was written meanwhile.
    server.cli(0, &["FLUSHALL"]);
    server.cli(0, &["SET", "written-after", "1"]);
    server.cli(1, &["SET", "also-after", "1"]);
    let out = dr(
        &server,
        &store,
        &keys,
        &["restore", "latest", "--to", &server.url()],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--clean"), "{}", stderr(&out));
    assert_eq!(
        server.cli(0, &["GET", "written-after"]).trim(),
        "1",
        "refused, yet changed"
    );

    let out = dr(
        &server,
        &store,
        &keys,
        &[
            "restore",
            "latest",
            "--to",
            &server.url(),
            "--clean",
            "--yes",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("primary again"), "{}", stderr(&out));
    assert_eq!(server.canonical(), before);
    assert!(server
        .cli(0, &["INFO", "replication"])
        .contains("role:master"));
    assert!(stdout(&out).contains("counts") || stderr(&out).contains("table(s) match"));
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_and_a_disk_based_sync_works() {
    let server = Server::start(Some(PASSWORD), &["--repl-diskless-sync", "no"]);
    server.cli(0, &["SET", "k", "v"]);
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup_with(
        &store,
        &keys,
        &[
            ("REDIS_URL", &server.url()),
            ("REDIS_PASSWORD", "wrong-Guess-77"),
        ],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the login"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("wrong-Guess-77"), "{}", stderr(&out));
    assert!(store.files().iter().all(|f| !f.ends_with("manifest.json")));

    // `$<len>` framing instead of the diskless `$EOF:` one.
    let out = backup(&server, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dr(&server, &store, &keys, &["verify", "latest"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_cuts_the_sync_commits_nothing() {
    use std::io::Write;
    // A payload that announces 100,000 bytes and closes after a few hundred.
    let url = fake_redis(|w| {
        let mut r = b"$100000\r\nREDIS0010\xfa\x09redis-ver".to_vec();
        r.extend(vec![b'x'; 500]);
        let _ = w.write_all(&r);
    });
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup_with(&store, &keys, &[("REDIS_URL", &url)]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was committed"),
        "{}",
        stderr(&out)
    );
    assert!(store.files().iter().all(|f| !f.ends_with("manifest.json")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_part_streamed_in_one_pass_leaves_the_target_as_it_was() {
    let source = Server::start(None, &[]);
    source.seed();
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&source, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let part = store
        .files()
        .into_iter()
        .find(|f| f.ends_with(".age"))
        .unwrap();
    let path = store.object_path(&part);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();

    let out = dr(&source, &store, &keys, &["verify", "latest"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let target = Server::start(None, &[]);
    target.cli(0, &["SET", "keep-me", "1"]);
    let out = dr(
        &target,
        &store,
        &keys,
        &[
            "restore",
            "latest",
            "--to",
            &target.url(),
            "--clean",
            "--yes",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("one pass:"),
        "the restore read the part before the sync: {}",
        stderr(&out)
    );
    assert_eq!(target.cli(0, &["GET", "keep-me"]).trim(), "1");
    assert!(target
        .cli(0, &["INFO", "replication"])
        .contains("role:master"));
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
pub(crate) fn certificates(dir: &std::path::Path) {
    let sh = format!(
        "cd '{}' && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca \
         && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > ext \
         && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext",
        dir.display()
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_server_backs_up_and_restores_and_an_unknown_ca_is_named() {
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let file = |f: &str| certs.path().join(f).display().to_string();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let server = Server::start(
        Some(PASSWORD),
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
        ],
    );
    server.seed();
    let before = server.canonical();
    let (store, keys) = (TestStore::local(), Keys::generate());

    // Without the private CA: the handshake fails and says where to look.
    let out = backup_with(
        &store,
        &keys,
        &[("REDIS_URL", &server.url()), ("REDIS_PASSWORD", PASSWORD)],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("REDIS_CACERT"), "{}", stderr(&out));

    let out = backup(&server, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dr(
        &server,
        &store,
        &keys,
        &["verify", "latest", "--against", &server.url()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    server.cli(0, &["FLUSHALL"]);
    server.cli(0, &["SET", "after", "1"]);
    let out = dr(
        &server,
        &store,
        &keys,
        &[
            "restore",
            "latest",
            "--to",
            &server.url(),
            "--clean",
            "--yes",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(server.canonical(), before);
}

/// What a client that races the target to the restore's port got.
struct Raced {
    /// Everything it was sent, over every connection.
    received: Vec<u8>,
    connections: usize,
    /// Whether a 64 MiB line without a newline was cut off before it was all written.
    flood_cut: bool,
}

/// Connects to `port` again and again until `stop`: asks for the snapshot without a
/// password, with a wrong one, and floods a line without a newline.
fn race(port: u16, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Raced {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let mut raced = Raced {
        received: Vec::new(),
        connections: 0,
        flood_cut: false,
    };
    let scripts: [&[u8]; 3] = [
        b"PING\r\nREPLCONF listening-port 6380\r\nREPLCONF capa eof capa psync2\r\nPSYNC ? -1\r\n",
        b"*2\r\n$4\r\nAUTH\r\n$11\r\nguess-Pass1\r\n*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n",
        b"SYNC\r\n",
    ];
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        };
        raced.connections += 1;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        if round % 4 == 0 {
            let flood = vec![b'x'; 64 << 20];
            raced.flood_cut |= conn.write_all(&flood).is_err();
        } else {
            let _ = conn.write_all(scripts[round % 4 - 1]);
        }
        round += 1;
        let mut buf = [0u8; 65536];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            raced.received.extend_from_slice(&buf[..n]);
        }
    }
    raced
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_racing_the_target_gets_nothing_of_the_snapshot() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let source = Server::start(None, &[]);
    source.seed();
    source.cli(0, &["SET", "the-secret", "s3cret-Value-4242"]);
    let before = source.canonical();
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&source, &store, &keys);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let target = Server::start(None, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || race(port, stop))
        })
        .collect();
    let listen = format!("127.0.0.1:{port}");
    let out = dr(
        &target,
        &store,
        &keys,
        &[
            "restore",
            "latest",
            "--to",
            &target.url(),
            "--listen",
            &listen,
            "--yes",
        ],
    );
    stop.store(true, Ordering::SeqCst);
    let raced: Vec<Raced> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(target.canonical(), before, "the target got the snapshot");
    let connections: usize = raced.iter().map(|r| r.connections).sum();
    assert!(connections > 0, "the racers never connected");
    for r in &raced {
        let text = String::from_utf8_lossy(&r.received);
        assert!(!text.contains("FULLRESYNC"), "a racer got a sync: {text}");
        assert!(!text.contains("s3cret-Value-4242"), "a racer got data");
        assert!(!text.contains("REDIS00"), "a racer got an RDB");
    }
    assert!(
        raced.iter().any(|r| r.flood_cut),
        "a 64 MiB line without a newline was read whole"
    );
    // Whether a racer reached the port before the target is up to the scheduler (the
    // window is milliseconds): `primary`'s unit tests race it deterministically and check
    // the refusals are named.
    // Its own masterauth is back (empty), and it is a primary.
    let auth = target.cli(0, &["CONFIG", "GET", "masterauth"]);
    assert!(!auth.lines().any(|l| l.len() == 64), "{auth}");
    assert!(target
        .cli(0, &["INFO", "replication"])
        .contains("role:master"));
}
