//! The S3 store through `scripts/faulty-s3.py`, a front before the services' s3s-fs that
//! answers 503 SlowDown, resets connections, loses the answers of requests that did happen
//! (a retried CompleteMultipartUpload then meets NoSuchUpload; a retried manifest PUT finds
//! it written), and cuts response bodies half-way. What must hold: every backup's exit code
//! tells the truth about whether it is in the store, and verify and restore read through
//! cut bodies by resuming them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use dr_tests::*;
use sha2::Digest;

/// The faulty front, stopped on drop.
pub(crate) struct Front {
    child: Child,
    pub(crate) url: String,
    stats: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Front {
    fn start(rates: &[(&str, &str)], seed: u32) -> Front {
        Front::before(&svc("AWS_ENDPOINT_URL"), rates, seed)
    }

    /// A front before any HTTP store at `upstream` (`http://host:port`).
    pub(crate) fn before(upstream: &str, rates: &[(&str, &str)], seed: u32) -> Front {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.json");
        let upstream = upstream.trim_start_matches("http://").to_string();
        let mut cmd = Command::new("python3");
        cmd.arg(repo_root().join("scripts/faulty-s3.py"))
            .args(["--upstream", &upstream, "--seed", &seed.to_string()])
            .arg("--stats-file")
            .arg(&stats)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (flag, rate) in rates {
            cmd.args([*flag, *rate]);
        }
        let mut child = cmd.spawn().expect("python3 scripts/faulty-s3.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("faulty front said {line:?}"));
        Front {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stats: stats.clone(),
            _dir: dir,
        }
    }

    pub(crate) fn stats(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_through_slowdowns_resets_lost_answers_and_cut_bodies_tell_the_truth() {
    let front = Front::start(
        &[
            ("--slowdown", "0.15"),
            ("--reset", "0.03"),
            ("--lost", "0.06"),
            ("--cut", "0.10"),
        ],
        rand::random(),
    );
    let (store, keys) = (TestStore::s3(), Keys::generate());
    // 12 MiB of noise: a multipart upload of two parts (8 MiB each) per backup.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.bin");
    let noise: Vec<u8> = (0..12 << 20).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&data, &noise).unwrap();
    let through = [("AWS_ENDPOINT_URL", front.url.as_str())];

    let mut reported: Vec<(i32, String, String)> = Vec::new();
    for _ in 0..8 {
        let out = run(
            "worker",
            &[
                "backup",
                "command",
                "--target",
                "faulty",
                "--store",
                store.url(),
                "-r",
                &keys.recipient,
                "--",
                "cat",
                data.to_str().unwrap(),
            ],
            &through,
        );
        reported.push((code(&out), stdout(&out).trim().to_string(), stderr(&out)));
    }
    let stats = front.stats();
    for fault in ["slowdown", "reset", "lost", "cut"] {
        assert!(
            stats[fault].as_u64().unwrap() > 0,
            "the front never injected {fault}: {stats}"
        );
    }

    // The truth, read without the front.
    let listed = list_json(&store);
    let complete: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "complete" || b["status"].is_null())
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    for (exit, id, err) in &reported {
        match exit {
            0 => assert!(
                complete.contains(id),
                "reported committed, not listed: {id}"
            ),
            2 => {
                assert!(
                    !err.contains("stays invisible") || !complete.iter().any(|c| err.contains(c)),
                    "said invisible about a visible backup: {err}"
                );
            }
            other => panic!("exit {other}: {err}"),
        }
    }
    let ok = reported.iter().filter(|(c, ..)| *c == 0).count();
    assert!(
        ok >= 7,
        "retries should carry nearly every backup through: {ok} of 8 ({stats}); {:?}",
        reported.iter().map(|r| &r.2).collect::<Vec<_>>()
    );
    assert_eq!(complete.len(), ok, "listed {complete:?}");

    // Verify (decrypting every byte) and restore through the same front: cut bodies resume.
    let identity = keys.identity.to_str().unwrap();
    for id in &complete {
        let out = run(
            "kubectl-dr",
            &["verify", id, "--store", store.url(), "-i", identity],
            &through,
        );
        assert_eq!(code(&out), 0, "verify {id}: {}", stderr(&out));
    }
    let out = run(
        "kubectl-dr",
        &[
            "restore",
            "latest",
            "--engine",
            "command",
            "--store",
            store.url(),
            "-i",
            identity,
            "--to",
            "-",
        ],
        &through,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&out.stdout)),
        hex::encode(sha2::Sha256::digest(&noise)),
        "restored bytes differ"
    );
    let cuts = front.stats()["cut"].as_u64().unwrap();
    assert!(
        cuts > stats["cut"].as_u64().unwrap(),
        "no body was cut while reading"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_the_completed_upload_and_to_the_manifest_is_still_a_commit() {
    let front = Front::start(
        &[
            ("--lose-once", r"^POST .*uploadId="),
            ("--lose-once", r"^PUT [^?]*/manifest\.json(\?|$)"),
        ],
        1,
    );
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let out = run(
        "worker",
        &[
            "backup",
            "command",
            "--target",
            "lost",
            "--store",
            store.url(),
            "-r",
            &keys.recipient,
            "--",
            "head",
            "-c",
            "10000000",
            "/dev/urandom",
        ],
        &[("AWS_ENDPOINT_URL", front.url.as_str())],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(front.stats()["lost"], 2, "{}", front.stats());
    assert!(
        stderr(&out).contains("its first answer was lost"),
        "the retried complete did not meet a finished upload: {}",
        stderr(&out)
    );
    let id = stdout(&out).trim().to_string();
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            &id,
            "--store",
            store.url(),
            "-i",
            keys.identity.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
