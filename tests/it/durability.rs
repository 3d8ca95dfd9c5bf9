//! Durability: the last good backup is never lost. A full disk fails the backup instead of
//! committing a 0-byte manifest; junk, empty, future-dated and hostile manifests are
//! *damaged* (listed as such, never `latest`, never counted or deleted by prune); part
//! names cannot leave their directory; hostile parts and manifests are read with bounded
//! memory; a silent server or a typo fails fast with a clear error; no input panics.

use std::path::{Path, PathBuf};
use std::process::Output;

use bytes::Bytes;
use chrono::{Duration, Utc};
use dr_tests::*;
use drkit::catalog::{BackupId, BackupRef, Manifest, MANIFEST_FILE};
use rand::{Rng, SeedableRng};

fn dr(store: &TestStore, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--store", store.url()]);
    run("kubectl-dr", &all, &[])
}

fn list_json(store: &TestStore, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "-o", "json"];
    args.extend_from_slice(extra);
    let out = dr(store, &args);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn status_of(rows: &[serde_json::Value], id: &str) -> String {
    rows.iter()
        .find(|r| r["id"] == id)
        .map(|r| r["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{id} not listed: {rows:?}"))
}

/// A tmpfs of `size` mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with a message) where this process may not mount.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(SmallDisk { dir })
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the full-disk case is not exercised");
            None
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with 4 KiB files (one page each); returns them.
    fn fill(&self) -> Vec<PathBuf> {
        let dir = self.path().join("filler");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for i in 0.. {
            let f = dir.join(format!("{i}"));
            if std::fs::write(&f, [0u8; 4096]).is_err() {
                let _ = std::fs::remove_file(&f);
                break;
            }
            files.push(f);
        }
        files
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Backup directories of a local store's target and whether each has a manifest.
fn dirs_of(root: &Path, target: &str) -> Vec<(String, bool)> {
    let dir = root.join("postgres").join(target);
    let mut out: Vec<(String, bool)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join(MANIFEST_FILE).exists(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_backup_and_the_last_good_one_survives() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let db = unique("fulldisk");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;")
        .await
        .unwrap();
    let root = disk.path().join("store");
    let store = TestStore::Local {
        url: format!("file://{}", root.display()),
        dir: tempfile::tempdir().unwrap(),
    };
    let keys = Keys::generate();
    let good = backup_postgres(&store, &keys, "full", &db, &[]);
    let part_bytes = std::fs::read_dir(root.join("postgres/full").join(&good))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".age"))
        .unwrap()
        .metadata()
        .unwrap()
        .len();

    let backup = || {
        run(
            "worker",
            &[
                "backup",
                "postgres",
                "--target",
                "full",
                "--database",
                &db,
                "--store",
                store.url(),
                "--recipient",
                &keys.recipient,
            ],
            &[],
        )
    };
    let filler = disk.fill();
    assert!(!filler.is_empty());

    // No space at all: the part cannot be written.
    let out = backup();
    assert_eq!(code(&out), 2, "a backup onto a full disk must fail");
    assert!(
        !stderr(&out).contains("backup committed"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));

    // Room for the part but not for the manifest: the commit itself must fail.
    let pages = part_bytes.div_ceil(4096) as usize;
    for f in &filler[..pages] {
        std::fs::remove_file(f).unwrap();
    }
    let out = backup();
    assert_eq!(
        code(&out),
        2,
        "a manifest that cannot be written is no commit"
    );
    assert!(
        !stderr(&out).contains("backup committed"),
        "{}",
        stderr(&out)
    );
    let dirs = dirs_of(&root, "full");
    assert_eq!(
        dirs.iter().filter(|(_, manifest)| *manifest).count(),
        1,
        "only the good backup may have a manifest: {dirs:?}"
    );
    assert!(
        root.read_dir().is_ok()
            && walk_files(&root).iter().all(|f| {
                !f.ends_with(MANIFEST_FILE) || std::fs::metadata(f).unwrap().len() > 0
            }),
        "no empty manifest may exist"
    );

    // The disk frees up again: everything about the good backup still holds.
    for f in &filler[pages..] {
        std::fs::remove_file(f).unwrap();
    }
    let id = keys.identity.to_str().unwrap();
    let out = dr(&store, &["verify", "latest", "--target", "full", "-i", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains(&good), "latest is the good backup");
    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            store.url(),
            "--target",
            "full",
            "--keep-last",
            "1",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(status_of(&list_json(&store, &[]), &good), "complete");
    drop(disk);
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_backup_that_runs_out_of_disk_leaves_no_partial_part() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let db = unique("fulljobs");
    create_database(&db).await;
    pg_connect(&db)
        .await
        .batch_execute("CREATE TABLE a AS SELECT g, md5(g::text) m FROM generate_series(1, 20000) g; CREATE TABLE b AS SELECT g, md5(g::text) m FROM generate_series(1, 20000) g;")
        .await
        .unwrap();
    let root = disk.path().join("store");
    let store = TestStore::Local {
        url: format!("file://{}", root.display()),
        dir: tempfile::tempdir().unwrap(),
    };
    let keys = Keys::generate();
    let filler = disk.fill();
    // Room for the small parts (pre- and post-data) but not for the rows: one part fails
    // while its siblings are still writing.
    for f in &filler[..6] {
        std::fs::remove_file(f).unwrap();
    }
    let out = run(
        "worker",
        &[
            "backup",
            "postgres",
            "--target",
            "full",
            "-d",
            &db,
            "--jobs",
            "3",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    let files = walk_files(&root);
    assert!(
        files.iter().all(|f| !f.ends_with(MANIFEST_FILE)),
        "a failed backup committed: {files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().contains(".partial-")),
        "a sibling part stopped half-way left its temporary file: {files:?}"
    );
    drop(disk);
    drop_database(&db).await;
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A well-formed manifest for `backup` (one small part that is also written).
async fn forged(
    store: &dyn drkit::store::DeleteStore,
    target: &str,
    started: chrono::DateTime<Utc>,
) -> (BackupRef, Manifest) {
    let b = write_synthetic_backup(store, target, started, true).await;
    let m: Manifest =
        serde_json::from_slice(&store.get_bytes(&b.manifest_key(), u64::MAX).await.unwrap())
            .unwrap();
    (b, m)
}

/// Writes a manifest signed with the suite's key: these tests are about what a manifest
/// says, so the signature must not be what refuses it.
async fn put_manifest(store: &dyn drkit::store::DeleteStore, b: &BackupRef, bytes: Vec<u8>) {
    sign_manifest(store, b, &bytes).await;
    store
        .put_bytes(&b.manifest_key(), Bytes::from(bytes))
        .await
        .unwrap();
}

async fn junk_and_future_manifests_on(t: TestStore) {
    let store = t.open().await;
    let now = Utc::now();
    let mut good = Vec::new();
    for days in [3, 2, 1] {
        good.push(
            write_synthetic_backup(store.as_ref(), "dmg", now - Duration::days(days), true)
                .await
                .id
                .to_string(),
        );
    }
    // Junk with the largest possible id, an empty manifest (what a full disk once left),
    // and a well-formed manifest dated years ahead.
    let junk = BackupRef {
        engine: "postgres".into(),
        target: "dmg".into(),
        id: "99991231T235959Z-ffffff".parse().unwrap(),
    };
    put_manifest(store.as_ref(), &junk, b"junk\n".to_vec()).await;
    let empty = BackupRef {
        id: BackupId::new(now - Duration::hours(1)),
        ..junk.clone()
    };
    put_manifest(store.as_ref(), &empty, Vec::new()).await;
    let (future, _) = forged(store.as_ref(), "dmg", now + Duration::days(400)).await;

    let rows = list_json(&t, &[]);
    for b in [&junk, &empty, &future] {
        assert_eq!(status_of(&rows, b.id.as_str()), "damaged", "{b}");
    }
    for id in &good {
        assert_eq!(status_of(&rows, id), "complete");
    }
    let table = dr(&t, &["list"]);
    assert!(
        stdout(&table).contains("STATUS") && stdout(&table).contains("DAMAGED"),
        "{}",
        stdout(&table)
    );

    // `latest` verifies the newest good backup, and exits 1 because newer ones are
    // damaged: a script must learn that the newest backup is unusable.
    let out = dr(&t, &["verify", "latest", "--target", "dmg"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("backup postgres/dmg/{} is intact", good[2])),
        "latest must be the newest good backup: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("newer backup(s) of postgres/dmg that are damaged"),
        "{}",
        stderr(&out)
    );
    let out = dr(&t, &["verify", junk.id.as_str(), "--target", "dmg"]);
    assert_eq!(code(&out), 1, "a damaged backup fails its check");
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));

    let before = store.list("").await.unwrap();
    let prune = |extra: &[&str]| {
        let mut args = vec!["prune", "--store", t.url(), "--target", "dmg"];
        args.extend_from_slice(extra);
        run("worker", &args, &[])
    };
    let out = prune(&["--keep-within", "14d"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        store.list("").await.unwrap(),
        before,
        "keep-within 14d deleted something"
    );
    // keep-last 1 would delete 2 of 3 good backups: more than the default --max-delete.
    let out = prune(&["--keep-last", "1"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--max-delete"), "{}", stderr(&out));
    assert_eq!(
        store.list("").await.unwrap(),
        before,
        "a refused prune deleted something"
    );
    let out = prune(&["--keep-last", "1", "--max-delete", "100%"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows = list_json(&t, &[]);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&good[2].as_str()),
        "the newest good backup was deleted"
    );
    for b in [&junk, &empty, &future] {
        assert!(ids.contains(&b.id.as_str()), "prune deleted damaged {b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_empty_and_future_manifests_are_damaged_and_protect_nothing() {
    junk_and_future_manifests_on(TestStore::s3()).await;
    junk_and_future_manifests_on(TestStore::local()).await;
}

async fn hostile_part_names_on(t: TestStore) {
    let store = t.open().await;
    let keys = Keys::generate();
    // A decoy another backup could point at: it must never be read.
    store
        .put_bytes("postgres/x", Bytes::from_static(b"decoy"))
        .await
        .unwrap();
    for (i, name) in ["../x", "/etc/passwd", "a%2F..%2Fb", "a\nb.age"]
        .iter()
        .enumerate()
    {
        let (b, mut m) = forged(
            store.as_ref(),
            "names",
            Utc::now() - Duration::hours(i as i64 + 1),
        )
        .await;
        m.parts[0].file = name.to_string();
        put_manifest(store.as_ref(), &b, serde_json::to_vec(&m).unwrap()).await;
        let key = b.manifest_key();
        let out = dr(&t, &["verify", b.id.as_str(), "--target", "names"]);
        assert_eq!(code(&out), 1, "{name:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("damaged") && stderr(&out).contains(&key),
            "{name:?}: {}",
            stderr(&out)
        );
        let out = dr(
            &t,
            &[
                "restore",
                b.id.as_str(),
                "--target",
                "names",
                "-i",
                keys.identity.to_str().unwrap(),
                "--to",
                &pg_url(&unique("never")),
            ],
        );
        assert_eq!(code(&out), 1, "{name:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
        let rows = list_json(&t, &[]);
        assert_eq!(status_of(&rows, b.id.as_str()), "damaged");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn part_names_that_leave_the_backup_make_the_manifest_damaged() {
    hostile_part_names_on(TestStore::s3()).await;
    hostile_part_names_on(TestStore::local()).await;
}

/// Makes a hostile object at a path.
type MakeObject = fn(&Path);

/// Peak RSS allowed for reading hostile objects.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_parts_are_read_with_bounded_memory() {
    let t = TestStore::local();
    let store = t.open().await;
    let keys = Keys::generate();
    let id = keys.identity.to_str().unwrap();
    let cases: [(&str, MakeObject); 3] = [
        ("not an age file", |p| {
            // 2 GiB without a newline (sparse: costs no disk).
            let f = std::fs::File::create(p).unwrap();
            f.set_len(2 << 30).unwrap();
        }),
        ("symbolic link", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap();
        }),
        ("FIFO", |p| {
            let ok = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap();
            assert!(ok.success());
        }),
    ];
    for (i, (expect, make)) in cases.into_iter().enumerate() {
        let (b, mut m) = forged(
            store.as_ref(),
            "hostile",
            Utc::now() - Duration::hours(i as i64 + 1),
        )
        .await;
        let path = t.object_path(&b.part_key(&m.parts[0].file));
        std::fs::remove_file(&path).unwrap();
        make(&path);
        m.parts[0].ciphertext_bytes = 2 << 30;
        put_manifest(store.as_ref(), &b, serde_json::to_vec(&m).unwrap()).await;
        let started = std::time::Instant::now();
        let (out, kib) = run_measured(
            "kubectl-dr",
            &["verify", b.id.as_str(), "--store", t.url(), "-i", id],
            &[],
        );
        assert_eq!(code(&out), 1, "{expect}: {}", stderr(&out));
        assert!(stdout(&out).contains(expect), "{expect}: {}", stdout(&out));
        assert!(kib < RSS_LIMIT_KIB, "{expect}: peak RSS {kib} KiB");
        assert!(started.elapsed().as_secs() < 60, "{expect}: took too long");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_manifest_is_refused_unread() {
    let t = TestStore::local();
    let store = t.open().await;
    let b = write_synthetic_backup(store.as_ref(), "big", Utc::now(), true).await;
    let path = t.object_path(&b.manifest_key());
    // 100 MB of JSON-looking text: a parser would have to read it all.
    let mut text = b"{\"format_version\": 1, \"pad\": \"".to_vec();
    text.resize(100_000_000, b'x');
    std::fs::write(&path, &text).unwrap();
    let (out, kib) = run_measured(
        "kubectl-dr",
        &["list", "--store", t.url(), "-o", "json"],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["status"], "damaged");
    assert!(
        rows[0]["error"].as_str().unwrap().contains("limit"),
        "{rows}"
    );
    assert!(kib < RSS_LIMIT_KIB, "list peak RSS {kib} KiB");
    let (out, kib) = run_measured(
        "kubectl-dr",
        &["verify", b.id.as_str(), "--store", t.url()],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    assert!(kib < RSS_LIMIT_KIB, "verify peak RSS {kib} KiB");
}

/// A database with one 100-row table.
async fn small_database(db: &str) {
    create_database(db).await;
    pg_connect(db)
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100);")
        .await
        .unwrap();
}

/// Random damage to a manifest's JSON: byte flips, cuts, insertions, or a value somewhere
/// replaced by something hostile.
fn mutate(json: &[u8], rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => {
            let mut v = json.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            v
        }
        1 => json[..rng.random_range(0..json.len())].to_vec(),
        2 => {
            let mut v = json.to_vec();
            let i = rng.random_range(0..v.len());
            let junk: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            v.splice(i..i, junk);
            v
        }
        _ => {
            let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
            let hostile = [
                serde_json::json!(null),
                serde_json::json!(-1),
                serde_json::json!(u64::MAX),
                serde_json::json!(1e308),
                serde_json::json!(""),
                serde_json::json!("../../x"),
                serde_json::json!("esc\u{1b}[2J\u{7}"),
                serde_json::json!("y".repeat(100_000)),
                serde_json::json!([[[[[]]]]]),
                serde_json::json!({"a": {"b": {}}}),
                serde_json::json!(true),
                serde_json::json!(0),
            ];
            let pick = hostile[rng.random_range(0..hostile.len())].clone();
            replace_random(&mut value, pick, rng);
            serde_json::to_vec(&value).unwrap()
        }
    }
}

fn replace_random(
    v: &mut serde_json::Value,
    with: serde_json::Value,
    rng: &mut rand::rngs::StdRng,
) {
    let len = match v {
        serde_json::Value::Object(m) => m.len(),
        serde_json::Value::Array(a) => a.len(),
        _ => 0,
    };
    if len == 0 || rng.random_range(0..3) == 0 {
        *v = with;
        return;
    }
    let i = rng.random_range(0..len);
    match v {
        serde_json::Value::Object(m) => {
            let child = m.values_mut().nth(i).unwrap();
            replace_random(child, with, rng);
        }
        serde_json::Value::Array(a) => replace_random(&mut a[i], with, rng),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_command_panics_on_a_store_full_of_malformed_objects() {
    let db = unique("fuzz");
    small_database(&db).await;
    let t = TestStore::local();
    let keys = Keys::generate();
    let real = backup_postgres(&t, &keys, "fuzz", &db, &[]);
    let store = t.open().await;
    let real_ref = BackupRef {
        engine: "postgres".into(),
        target: "fuzz".into(),
        id: real.parse().unwrap(),
    };
    let manifest_bytes = store
        .get_bytes(&real_ref.manifest_key(), u64::MAX)
        .await
        .unwrap();
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).unwrap();
    let part_bytes = store
        .get_bytes(&real_ref.part_key(&manifest.parts[0].file), u64::MAX)
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b75_6265_6472);
    let mut ids = Vec::new();
    for i in 0..24 {
        let b = BackupRef {
            id: BackupId::new(Utc::now() - Duration::minutes(i + 1)),
            ..real_ref.clone()
        };
        let mut m = manifest.clone();
        m.id = b.id.clone();
        let text = serde_json::to_vec(&m).unwrap();
        let text = if i % 6 == 5 {
            text
        } else {
            mutate(&text, &mut rng)
        };
        // Parts: the real one, empty, one byte, random binary, an age header and garbage.
        let part: Vec<u8> = match i % 5 {
            0 => part_bytes.clone(),
            1 => Vec::new(),
            2 => vec![b'a'],
            3 => (0..100_000).map(|_| rng.random()).collect(),
            _ => {
                let mut v = part_bytes[..part_bytes.len().min(200)].to_vec();
                v.extend((0..5000).map(|_| rng.random::<u8>()));
                v
            }
        };
        store
            .put_bytes(&b.part_key(&manifest.parts[0].file), Bytes::from(part))
            .await
            .unwrap();
        put_manifest(store.as_ref(), &b, text).await;
        ids.push(b.id.to_string());
    }
    let id = keys.identity.to_str().unwrap();
    let to = pg_url(&unique("fuzz_never"));
    let check = |out: &Output, what: &str| {
        let c = code(out);
        assert!(
            (0..=2).contains(&c) && !stderr(out).contains("panicked"),
            "{what}: exit {c}\n{}",
            stderr(out)
        );
    };
    for args in [
        vec!["list"],
        vec!["list", "--all", "-o", "json"],
        vec!["list", "--keep-last", "1"],
        vec!["verify", "latest"],
        vec!["prune", "--keep-last", "1", "--dry-run"],
    ] {
        check(&dr(&t, &args), &args.join(" "));
    }
    for i in &ids {
        check(&dr(&t, &["verify", i]), &format!("verify {i}"));
        check(&dr(&t, &["verify", i, "-i", id]), &format!("verify -i {i}"));
        check(
            &dr(&t, &["restore", i, "-i", id, "--to", &to, "--dry-run"]),
            &format!("restore {i}"),
        );
    }
    check(
        &run(
            "worker",
            &[
                "prune",
                "--store",
                t.url(),
                "--keep-last",
                "1",
                "--max-delete",
                "100%",
            ],
            &[],
        ),
        "worker prune",
    );
    // The real backup is still there and intact whatever the others did.
    let out = dr(&t, &["verify", &real, "-i", id]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_fails_fast_before_anything_is_decrypted() {
    let db = unique("silent");
    small_database(&db).await;
    let t = TestStore::local();
    let keys = Keys::generate();
    let id = backup_postgres(&t, &keys, "silent", &db, &[]);
    // Damage the part: decrypting first would end in exit 1, not the expected 2.
    let dir = t.object_path(&format!("postgres/silent/{id}"));
    let part = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "age"))
        .unwrap();
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();

    // Accepts connections, never answers (like ClickHouse's HTTP port to a PG client).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url = format!("postgres://postgres@{addr}/{db}");
    let env = [("DR_CONNECT_TIMEOUT", "2s")];
    for args in [
        vec![
            "verify",
            id.as_str(),
            "--store",
            t.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--against",
            &url,
        ],
        vec![
            "restore",
            id.as_str(),
            "--store",
            t.url(),
            "-i",
            keys.identity.to_str().unwrap(),
            "--to",
            &url,
        ],
    ] {
        let started = std::time::Instant::now();
        let out = run("kubectl-dr", &args, &env);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&addr.to_string()) && stderr(&out).contains("no answer within"),
            "{}",
            stderr(&out)
        );
        assert!(
            started.elapsed().as_secs() < 30,
            "took {:?}",
            started.elapsed()
        );
    }
    drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn typos_are_errors_never_an_empty_answer() {
    let t = TestStore::local();
    let out = dr(&t, &["list", "--engine", "postgress"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("postgress"), "{}", stderr(&out));
    for engine in drkit::engine::registry::ENGINES {
        assert!(
            stderr(&out).contains(&format!(" {engine}")),
            "{engine} not named: {}",
            stderr(&out)
        );
    }
    let out = run(
        "worker",
        &[
            "prune",
            "--store",
            t.url(),
            "--engine",
            "postgress",
            "--keep-last",
            "1",
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    let missing = tempfile::tempdir().unwrap().path().join("typo");
    let url = format!("file://{}", missing.display());
    for args in [
        vec!["list", "--store", &url],
        vec!["verify", "latest", "--store", &url],
        vec!["prune", "--keep-last", "1", "--store", &url],
    ] {
        let out = run("kubectl-dr", &args, &[]);
        assert_eq!(code(&out), 2, "{args:?}");
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
        assert!(!missing.exists(), "{args:?} created the store");
    }
    let out = run(
        "worker",
        &["prune", "--keep-last", "1", "--store", &url],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(!missing.exists(), "prune created the store");

    let out = run(
        "kubectl-dr",
        &["list", "--store", "s3://no-such-bucket-kube-dr/x"],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s3://no-such-bucket-kube-dr/x does not exist"),
        "{}",
        stderr(&out)
    );

    let out = run(
        "kubectl-dr",
        &["list", "--store", "s3://AKIAFAKE:Very-Secret-9@bucket/p"],
        &[],
    );
    assert_eq!(code(&out), 2);
    assert!(
        !stderr(&out).contains("Very-Secret-9") && !stderr(&out).contains("AKIAFAKE"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );

    // An existing, empty store is fine: "no backups", exit 0.
    let out = dr(&t, &["list"]);
    assert_eq!(code(&out), 0);
    assert!(stderr(&out).contains("no backups"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_all_shows_a_backup_that_only_has_an_unfinished_upload() {
    let t = TestStore::local();
    let dir = t.object_path("postgres/partial/20261122T020000Z-abcdef");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("db-app.pgdump.zst.age.partial-0000beef"), b"half").unwrap();
    let rows = list_json(&t, &[]);
    assert!(rows.is_empty(), "{rows:?}");
    let rows = list_json(&t, &["--all"]);
    assert_eq!(status_of(&rows, "20261122T020000Z-abcdef"), "incomplete");
}
