//! The `command` engine on real processes: what a command prints round-trips byte for
//! byte, a failing, failing-late or killed command commits nothing, a restore into a
//! failing command fails, the manifest records argv and never the environment, and a
//! plaintext that differs from the recorded sha256 fails the restore with exit 1.

use std::io::Read;
use std::process::Stdio;

use dr_tests::*;
use sha2::{Digest, Sha256};

fn backup(
    store: &TestStore,
    keys: &Keys,
    argv: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    backup_command(store, keys, "cmd", argv, env)
}

/// `kubectl dr restore ID -i IDENTITY --store … DESTINATION…`.
fn restore(
    store: &TestStore,
    id: &str,
    identity: &str,
    destination: &[&str],
) -> std::process::Output {
    let mut args = vec!["restore", id, "-i", identity, "--store", store.url()];
    args.extend_from_slice(destination);
    run("kubectl-dr", &args, &[])
}

fn manifests(store: &TestStore) -> Vec<String> {
    store
        .files()
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_megabytes_of_random_bytes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("random.bin");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 200000000 /dev/urandom > {}",
            file.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let expected = {
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(&file).unwrap(), &mut h).unwrap();
        hex::encode(h.finalize())
    };
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&store, &keys, &["cat", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let identity = keys.identity.to_str().unwrap();
    let out = run(
        "kubectl-dr",
        &["verify", &id, "-i", identity, "--store", store.url()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Streamed through a hasher, never held whole.
    let mut child = command(
        "kubectl-dr",
        &[
            "restore",
            &id,
            "-i",
            identity,
            "--to",
            "-",
            "--store",
            store.url(),
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(hex::encode(h.finalize()), expected);

    let copy = dir.path().join("copy.bin");
    let out = restore(
        &store,
        &id,
        identity,
        &[
            "--to-command",
            "--",
            "sh",
            "-c",
            &format!("cat > {}", copy.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 200_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_or_killed_commands_commit_nothing() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let good = backup(&store, &keys, &["echo", "the good copy"], &[]);
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    let good_id = stdout(&good).trim().to_string();
    for (argv, expect) in [
        (vec!["false"], "false exited with status 1"),
        (
            vec!["sh", "-c", "echo partial; echo why >&2; exit 3"],
            "sh exited with status 3: why",
        ),
        (
            vec!["sh", "-c", "echo partial; kill -9 $$"],
            "killed by signal 9",
        ),
        (vec!["/no/such/program"], "cannot start program"),
    ] {
        let out = backup(&store, &keys, &argv, &[]);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{argv:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was committed"),
            "{}",
            stderr(&out)
        );
        assert_eq!(manifests(&store).len(), 1, "{argv:?} committed a backup");
    }
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            &good_id,
            "-i",
            keys.identity.to_str().unwrap(),
            "--store",
            store.url(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the earlier backup: {}",
        stderr(&out)
    );
    let out = restore(
        &store,
        &good_id,
        keys.identity.to_str().unwrap(),
        &["--to-command", "--", "false"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("false exited with status 1"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manifest_records_argv_and_never_the_environment() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(
        &store,
        &keys,
        &[
            "sh",
            "-c",
            "printf '%s' \"$LEAK_CANARY\" | wc -c; echo argv-marker",
        ],
        &[("LEAK_CANARY", "env-Canary-Value-77")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(store.object_path(&manifests(&store)[0])).unwrap();
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let argv: Vec<String> = serde_json::from_str(m["facts"]["argv"].as_str().unwrap()).unwrap();
    assert_eq!(argv[0], "sh");
    assert!(argv[2].contains("argv-marker"));
    assert!(
        !manifest.contains("env-Canary-Value-77"),
        "an environment value reached the manifest"
    );
    // The command did see its environment (it is the user's own command).
    let out = restore(
        &store,
        "latest",
        keys.identity.to_str().unwrap(),
        &["--to", "-"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "19\nargv-marker\n");
}

/// A mismatch found while the restore streams is a failed check (exit 1), and the last
/// chunk is withheld: the destination command never sees a complete input.
#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_that_differs_from_the_recorded_sha256_fails_the_restore() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&store, &keys, &["echo", "payload"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let path = store.object_path(&manifests(&store)[0]);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["facts"]["plaintext_sha256"] = serde_json::json!("0".repeat(64));
    let bytes = serde_json::to_vec(&m).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    // Signed again, as a worker with this bug would have: the sha256 check is under test,
    // not the signature (which alone would refuse the edit).
    let b: drkit::catalog::BackupRef = serde_json::from_value::<drkit::catalog::Manifest>(m)
        .unwrap()
        .backup_ref();
    sign_manifest(store.open().await.as_ref(), &b, &bytes).await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy");
    let identity = keys.identity.to_str().unwrap();
    let out = restore(
        &store,
        "latest",
        identity,
        &[
            "--to-command",
            "--",
            "sh",
            "-c",
            &format!("cat > {}", copy.display()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the manifest recorded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0),
        0,
        "the destination got data"
    );
    let out = run(
        "kubectl-dr",
        &["verify", "latest", "-i", identity, "--store", store.url()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// Every engine of the registry is named in both binaries' help (texts that list engines by
/// hand fall behind; this catches it): by its display name in both top-level helps and in
/// `restore --help`, and as a `worker backup` subcommand.
#[test]
fn every_engine_is_in_both_binaries_help() {
    let out = run("worker", &["backup", "--help"], &[]);
    for engine in drkit::engine::registry::ENGINES {
        assert!(
            stdout(&out).contains(&format!("\n  {engine} ")),
            "worker backup --help lacks {engine}:\n{}",
            stdout(&out)
        );
    }
    for (bin, args) in [
        ("worker", vec!["--help"]),
        ("kubectl-dr", vec!["--help"]),
        ("kubectl-dr", vec!["restore", "--help"]),
    ] {
        let out = run(bin, &args, &[]);
        let help = stdout(&out).to_lowercase();
        for engine in drkit::engine::registry::ENGINES {
            assert!(
                help.contains(&engine.display_name().to_lowercase()),
                "{bin} {args:?} does not name {}:\n{help}",
                engine.display_name()
            );
        }
    }
}

/// In the worker's JSON logs `target` means one thing, the backup's --target: the tracing
/// module path is left out, and the backup is named inside `backup`.
#[test]
fn json_logs_have_no_tracing_target() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let out = backup(&store, &keys, &["echo", "hi"], &[("DR_LOG_FORMAT", "json")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "backup committed"
        && l["backup"]
            .as_str()
            .is_some_and(|b| b.starts_with("command/cmd/"))));
    for l in &lines {
        assert!(l.get("target").is_none(), "{l}");
    }
}
