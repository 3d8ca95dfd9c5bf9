//! Vault/OpenBao end to end against real OpenBao servers (raft storage, one per test):
//! backup → verify → restore into a fresh cluster with --force and into the same cluster,
//! the by-hand path with the Go `age` CLI and `bao operator raft snapshot restore`, and the
//! failures the issue names (sealed server, bad token, missing capability, damaged part,
//! wrong key), each losing nothing.

use std::process::Output;

use dr_tests::bao::{seeded_secrets, Bao};
use dr_tests::*;
use serde_json::{json, Value};

const TARGET: &str = "vault-a";

/// A seeded server, a store and keys, and one committed backup.
struct Fixture {
    bao: Bao,
    store: TestStore,
    keys: Keys,
    id: String,
}

impl Fixture {
    async fn new() -> Fixture {
        let bao = Bao::start().await;
        bao.seed().await;
        let (store, keys) = (TestStore::s3(), Keys::generate());
        let out = backup(&bao, &store, &keys, &bao.root_token);
        assert!(out.status.success(), "backup failed: {}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        assert!(id.parse::<drkit::catalog::BackupId>().is_ok(), "{id:?}");
        Fixture {
            bao,
            store,
            keys,
            id,
        }
    }

    /// `kubectl dr …` against the fixture's store, with a Vault token in the environment.
    fn dr(&self, args: &[&str], token: &str) -> Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--store", self.store.url()]);
        run("kubectl-dr", &all, &[("VAULT_TOKEN", token)])
    }

    fn identity(&self) -> &str {
        self.keys.identity.to_str().unwrap()
    }

    async fn manifest(&self) -> Value {
        let path = self
            .store
            .object_path(&format!("vault/{TARGET}/{}/manifest.json", self.id));
        serde_json::from_slice(&std::fs::read(path).expect("manifest")).expect("json")
    }

    fn manifests(&self) -> usize {
        self.store
            .files()
            .iter()
            .filter(|f| f.ends_with("manifest.json"))
            .count()
    }

    fn part_path(&self) -> std::path::PathBuf {
        self.store
            .object_path(&format!("vault/{TARGET}/{}/raft.snap.zst.age", self.id))
    }
}

/// `worker backup vault` into `store`, with extra flags and environment.
fn backup_vault(store: &TestStore, keys: &Keys, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "backup",
        "vault",
        "--target",
        TARGET,
        "--store",
        store.url(),
        "--recipient",
        &keys.recipient,
    ];
    args.extend_from_slice(extra);
    run("worker", &args, env)
}

pub(crate) fn backup(bao: &Bao, store: &TestStore, keys: &Keys, token: &str) -> Output {
    backup_vault(
        store,
        keys,
        &[],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", token)],
    )
}

/// Every seeded secret reads back identical with `token`.
pub(crate) async fn assert_secrets(bao: &Bao, token: &str) {
    for (path, data) in seeded_secrets() {
        assert_eq!(
            bao.read_secret(token, path).await,
            Some(data),
            "secret {path} on {}",
            bao.addr
        );
    }
    let (status, legacy) = bao
        .api_as(token, "GET", "legacy/old-key", Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(legacy["data"]["value"], "v1-secret");
}

fn counts_of(out: &Output) -> Value {
    let report: Value = serde_json::from_str(&stdout(out)).expect("json report");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_records_snapshot_facts_and_counts() {
    let f = Fixture::new().await;
    let m = f.manifest().await;
    assert_eq!(m["engine"], "vault");
    assert_eq!(m["server_version"], "2.7.2");
    let health = f.bao.health().await.unwrap();
    assert_eq!(m["facts"]["cluster_id"], health["cluster_id"]);
    assert!(
        m["facts"]["raft_index"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let part = &m["parts"][0];
    assert_eq!(part["format"], "vault-raft-snapshot");
    let count = |schema: &str, name: &str| {
        part["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == schema && t["name"] == name)
            .map(|t| t["rows"].as_u64().unwrap())
    };
    // cubbyhole, identity, sys, secret, legacy
    assert_eq!(count("sys", "secrets_engines"), Some(5));
    // token, userpass
    assert_eq!(count("sys", "auth_methods"), Some(2));
    // default, root, app-read, ops
    assert_eq!(count("sys", "policies"), Some(4));
    assert_eq!(count("kv", "secret"), Some(seeded_secrets().len() as u64));
    assert_eq!(count("kv", "legacy"), Some(1));

    // verify: integrity, full decryption with the snapshot's own sums, counts vs live.
    let out = f.dr(
        &[
            "verify",
            &f.id,
            "--identity",
            f.identity(),
            "--against",
            &f.bao.addr,
            "-o",
            "json",
        ],
        &f.bao.root_token,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = counts_of(&out);
    assert_eq!(report["ok"], true);
    assert_eq!(report["decrypted"], true);
    assert_eq!(report["counts"][0]["tables"].as_array().unwrap().len(), 5);

    // A secret added since the backup shows as a count difference (exit 1).
    f.bao
        .api("POST", "secret/data/new-one", json!({"data": {"z": "3"}}))
        .await;
    let out = f.dr(
        &["verify", &f.id, "--against", &f.bao.addr],
        &f.bao.root_token,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("kv.secret"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_into_a_fresh_cluster_with_force_then_unseal_with_the_old_keys() {
    let f = Fixture::new().await;
    let fresh = Bao::start().await;

    // Without --force the new cluster refuses the snapshot (other unseal keys): clear error,
    // nothing changed.
    let out = f.dr(
        &[
            "restore",
            &f.id,
            "-i",
            f.identity(),
            "--to",
            &fresh.addr,
            "--yes",
        ],
        &fresh.root_token,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(fresh
        .read_secret(&fresh.root_token, "app/db")
        .await
        .is_none());
    let (status, _) = fresh
        .api("GET", "auth/token/lookup-self", Value::Null)
        .await;
    assert_eq!(
        status, 200,
        "the fresh cluster still has its own root token"
    );

    // With --force: the server ends sealed; the command says which keys it needs and waits
    // while we unseal with the backed-up cluster's key.
    let old_root = f.bao.dir.path().join("old-root.txt");
    std::fs::write(&old_root, &f.bao.root_token).unwrap();
    let mut restore = Watched::spawn(command(
        "kubectl-dr",
        &[
            "restore",
            &f.id,
            "-i",
            f.identity(),
            "--to",
            &fresh.addr,
            "--yes",
            "--force",
            "--wait",
            "90s",
            "--restored-token-file",
            old_root.to_str().unwrap(),
            "-o",
            "json",
            "--store",
            f.store.url(),
        ],
        &[("VAULT_TOKEN", &fresh.root_token)],
    ));
    // Read the command's stderr until it asks for the old keys, as a person would.
    let asked = restore.until("is sealed after the restore");
    assert!(asked, "never asked to unseal: {}", restore.stderr);
    assert!(
        restore
            .stderr
            .contains("unseal keys of the backed-up cluster"),
        "{}",
        restore.stderr
    );
    assert!(fresh.sealed().await);
    fresh.unseal(&f.bao.unseal_key).await;
    let (status, out, _) = restore.finish();
    assert_eq!(status.code(), Some(0), "{out}");
    let report: Value = serde_json::from_str(&out).expect("json report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tables"].as_array().unwrap().len(), 5, "{report}");

    // The fresh server now is the backed-up cluster: its secrets, its tokens, its id.
    assert_secrets(&fresh, &f.bao.root_token).await;
    let (status, _) = fresh
        .api_as(
            &fresh.root_token,
            "GET",
            "auth/token/lookup-self",
            Value::Null,
        )
        .await;
    assert_eq!(status, 403, "the fresh cluster's own token is gone");
    assert_eq!(
        fresh.health().await.unwrap()["cluster_id"],
        f.manifest().await["facts"]["cluster_id"]
    );
    let (status, user) = fresh
        .api_as(
            &f.bao.root_token,
            "GET",
            "auth/userpass/users/alice",
            Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(user["data"]["token_policies"], json!(["app-read"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_into_the_same_cluster_brings_deleted_secrets_back() {
    let f = Fixture::new().await;
    let bao = &f.bao;
    for path in [
        "secret/metadata/app/db",
        "secret/metadata/team/a/b/deep",
        "sys/policies/acl/ops",
    ] {
        let (status, body) = bao.api("DELETE", path, Value::Null).await;
        assert_eq!(status, 204, "{path}: {body}");
    }
    assert!(bao.read_secret(&bao.root_token, "app/db").await.is_none());

    // Dry run: checks everything, changes nothing.
    let out = f.dr(
        &[
            "restore",
            "latest",
            "-i",
            f.identity(),
            "--to",
            &bao.addr,
            "--dry-run",
        ],
        &bao.root_token,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("REPLACE all data"),
        "{}",
        stderr(&out)
    );
    assert!(bao.read_secret(&bao.root_token, "app/db").await.is_none());

    let out = f.dr(
        &[
            "restore",
            "latest",
            "-e",
            "vault",
            "-i",
            f.identity(),
            "--to",
            &bao.addr,
            "--yes",
        ],
        &bao.root_token,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("sys.policies"), "{}", stdout(&out));
    assert_secrets(bao, &bao.root_token).await;
    let (status, _) = bao.api("GET", "sys/policies/acl/ops", Value::Null).await;
    assert_eq!(status, 200, "the deleted policy is back");
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_server_bad_token_and_missing_capability_fail_clearly() {
    let f = Fixture::new().await;
    let bao = &f.bao;

    // A token that may read sys/mounts but not take snapshots.
    bao.api(
        "POST",
        "sys/policies/acl/no-snapshot",
        json!({"policy": "path \"sys/mounts\" { capabilities = [\"read\"] }"}),
    )
    .await;
    let (_, created) = bao
        .api(
            "POST",
            "auth/token/create",
            json!({"policies": ["no-snapshot"]}),
        )
        .await;
    let weak = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = backup(bao, &f.store, &f.keys, &weak);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("may not read sys/storage/raft/snapshot"),
        "{err}"
    );
    assert!(err.contains("capabilities = [\"read\"]"), "{err}");
    assert!(!err.contains(&weak), "token leaked: {err}");

    let bogus = "s.bogus-Token-Secret-77";
    let out = backup(bao, &f.store, &f.keys, bogus);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("rejected the token"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(bogus) && !stdout(&out).contains(bogus));
    let out = f.dr(
        &[
            "restore",
            &f.id,
            "-i",
            f.identity(),
            "--to",
            &bao.addr,
            "--yes",
        ],
        bogus,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("rejected the token"),
        "{}",
        stderr(&out)
    );

    // Unreachable server.
    let out = backup_vault(
        &f.store,
        &f.keys,
        &[],
        &[
            ("VAULT_ADDR", "http://127.0.0.1:9"),
            ("VAULT_TOKEN", &bao.root_token),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot reach Vault at http://127.0.0.1:9"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(&bao.root_token));

    // Sealed: backup, verify --against and restore all say so and change nothing.
    bao.seal().await;
    let out = backup(bao, &f.store, &f.keys, &bao.root_token);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is sealed"), "{}", stderr(&out));
    let out = f.dr(&["verify", &f.id, "--against", &bao.addr], &bao.root_token);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is sealed"), "{}", stderr(&out));
    let out = f.dr(
        &[
            "restore",
            &f.id,
            "-i",
            f.identity(),
            "--to",
            &bao.addr,
            "--yes",
        ],
        &bao.root_token,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is sealed"), "{}", stderr(&out));

    // None of the failed backups left a manifest; the good one still verifies.
    assert_eq!(f.manifests(), 1);
    let out = f.dr(&["verify", &f.id, "-i", f.identity()], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let key = bao.unseal_key.clone();
    bao.unseal(&key).await;
    assert_secrets(bao, &bao.root_token).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_part_or_wrong_key_never_reaches_the_server() {
    let f = Fixture::new().await;
    let bao = &f.bao;
    // Written after the backup: a restore would remove it.
    bao.api(
        "POST",
        "secret/data/after",
        json!({"data": {"still": "here"}}),
    )
    .await;

    let other = Keys::generate();
    let out = f.dr(
        &[
            "restore",
            &f.id,
            "-i",
            other.identity.to_str().unwrap(),
            "--to",
            &bao.addr,
            "--yes",
        ],
        &bao.root_token,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no identity in"), "{}", stderr(&out));

    let path = f.part_path();
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = f.dr(&["verify", &f.id], "");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("sha256"), "{}", stdout(&out));
    let out = f.dr(
        &[
            "restore",
            &f.id,
            "-i",
            f.identity(),
            "--to",
            &bao.addr,
            "--yes",
        ],
        &bao.root_token,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));

    assert_eq!(
        bao.read_secret(&bao.root_token, "after").await,
        Some(json!({"still": "here"})),
        "the server was not touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn by_hand_age_zstd_and_bao_snapshot_restore() {
    let f = Fixture::new().await;
    let fresh = Bao::start().await;
    let snap = fresh.dir.path().join("raft.snap");
    let script = format!(
        "age -d -i '{}' '{}' | zstd -d -q > '{}'",
        f.identity(),
        f.part_path().display(),
        snap.display()
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::process::Command::new(dr_tests::bao::bao_bin())
        .args(["operator", "raft", "snapshot", "restore", "-force"])
        .arg(&snap)
        .env("VAULT_ADDR", &fresh.addr)
        .env("VAULT_TOKEN", &fresh.root_token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bao snapshot restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fresh.sealed().await {
        assert!(std::time::Instant::now() < deadline, "never sealed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    fresh.unseal(&f.bao.unseal_key).await;
    assert_secrets(&fresh, &f.bao.root_token).await;
}

/// A stand-in for the Kubernetes API's TokenReview endpoint (no API server can run here):
/// it authenticates exactly one JWT as `system:serviceaccount:dr:dr-worker`.
pub(crate) async fn fake_token_review(jwt: String) -> String {
    fake_http(move |_, _, body| {
        let review: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let status = if review["spec"]["token"] == jwt.as_str() {
            json!({"authenticated": true, "user": {
                "username": "system:serviceaccount:dr:dr-worker",
                "uid": "uid-1",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:dr"]}})
        } else {
            json!({"authenticated": false, "error": "invalid bearer token"})
        };
        let reply = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": status,
        });
        (201, reply.to_string().into_bytes())
    })
    .await
}

/// Required by the auth method's config; unused, the fake API speaks plain HTTP.
pub(crate) const FAKE_KUBE_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhjCCASugAwIBAgIUIK+5+pA3Ppf++WgMCWvFEkjkckQwCgYIKoZIzj0EAwIw\nFzEVMBMGA1UEAwwMZmFrZS1rdWJlLWNhMCAXDTI2MTEyMjA3MjcxMVoYDzIxMjYx\nMDI5MDcyNzExWjAXMRUwEwYDVQQDDAxmYWtlLWt1YmUtY2EwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAQD/wryEyWXiKbnrbS5PNKEFfc4GuDMfMDGoiUlbs1+Q2Uj\nmJnSVFPVVtwquRbSRAbopOUOk10SjEqYraQtFQYpo1MwUTAdBgNVHQ4EFgQUP89A\ncNrGCCOrdchh04lVfGqoLmMwHwYDVR0jBBgwFoAUP89AcNrGCCOrdchh04lVfGqo\nLmMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA4mhGqV7Ysoaa\nL7XW1FXjNHNYWoh9ZPGyE8zSEHtdht8CIQCYlpKxX+qXCKwkwTqanQUCWahUubDY\nTzQUH3Qtjh8CDw==\n-----END CERTIFICATE-----\n";

/// An unsigned service-account JWT with the claims Kubernetes puts in one.
pub(crate) fn service_account_jwt() -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(json!({"alg": "RS256", "kid": "test"})),
        b64(json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:dr:dr-worker",
            "kubernetes.io/serviceaccount/namespace": "dr",
            "kubernetes.io/serviceaccount/service-account.name": "dr-worker",
            "kubernetes.io/serviceaccount/service-account.uid": "uid-1"
        }))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_logs_in_and_a_wrong_role_is_explained() {
    let bao = Bao::start().await;
    bao.seed().await;
    let jwt = service_account_jwt();
    let kube = fake_token_review(jwt.clone()).await;
    for (path, body) in [
        ("sys/auth/kubernetes", json!({"type": "kubernetes"})),
        (
            "auth/kubernetes/config",
            json!({"kubernetes_host": kube, "kubernetes_ca_cert": FAKE_KUBE_CA, "disable_local_ca_jwt": true, "token_reviewer_jwt": "reviewer"}),
        ),
        (
            "sys/policies/acl/dr-backup",
            json!({"policy": "path \"sys/storage/raft/snapshot\" { capabilities = [\"read\"] }\npath \"sys/mounts\" { capabilities = [\"read\"] }\npath \"sys/auth\" { capabilities = [\"read\"] }\npath \"sys/policies/acl\" { capabilities = [\"list\"] }\npath \"secret/metadata/*\" { capabilities = [\"list\"] }\npath \"legacy/*\" { capabilities = [\"list\"] }"}),
        ),
        (
            "auth/kubernetes/role/dr-backup",
            json!({"bound_service_account_names": ["dr-worker"], "bound_service_account_namespaces": ["dr"], "token_policies": ["dr-backup"]}),
        ),
        (
            "auth/kubernetes/role/other",
            json!({"bound_service_account_names": ["someone-else"], "bound_service_account_namespaces": ["dr"], "token_policies": ["dr-backup"]}),
        ),
    ] {
        let (status, resp) = bao.api("POST", path, body).await;
        assert!(status < 300, "{path}: {status} {resp}");
    }
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &jwt).unwrap();
    let (store, keys) = (TestStore::s3(), Keys::generate());
    let backup_as = |role: &str| {
        backup_vault(
            &store,
            &keys,
            &[
                "--k8s-role",
                role,
                "--k8s-token-path",
                token_path.to_str().unwrap(),
            ],
            &[("VAULT_ADDR", &bao.addr)],
        )
    };

    // The least-privilege policy of the docs is enough, kv listing included.
    let out = backup_as("dr-backup");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("logged in with Kubernetes auth"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("not counted"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(&jwt));

    let out = backup_as("other");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("rejected role \"other\""), "{err}");
    assert!(err.contains("bao read auth/kubernetes/role/other"), "{err}");
    assert!(!err.contains(&jwt));
    assert_eq!(
        store
            .files()
            .iter()
            .filter(|f| f.ends_with("manifest.json"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_address_leads_to_the_active_node_and_a_lone_standby_is_refused() {
    let active = Bao::start().await;
    active.seed().await;
    let standby = Bao::start_standby(&active).await;
    let (store, keys) = (TestStore::s3(), Keys::generate());

    // Pointed at the standby, the worker takes the snapshot from the active node.
    let out = backup(&standby, &store, &keys, &active.root_token);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using the active node"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&active.addr), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = run(
        "kubectl-dr",
        &[
            "verify",
            &id,
            "-i",
            keys.identity.to_str().unwrap(),
            "--store",
            store.url(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Without its leader the standby cannot serve a good snapshot: refused, nothing stored.
    drop(active);
    let out = backup(&standby, &store, &keys, &standby.root_token);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is a standby node") && err.contains("point the address at the active node"),
        "{err}"
    );
    assert_eq!(
        store
            .files()
            .iter()
            .filter(|f| f.ends_with("manifest.json"))
            .count(),
        1
    );
}

/// A Vault that answers like an active node but sends `snapshot` as its raft snapshot: the
/// shapes a real server only produces when something is badly wrong.
async fn vault_sending(snapshot: Vec<u8>) -> String {
    fake_http(move |_, path, _| {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/v1/sys/health" => (
                200,
                json!({"initialized": true, "sealed": false, "standby": false, "version": "2.7.2", "cluster_id": "c-1"})
                    .to_string()
                    .into_bytes(),
            ),
            "/v1/sys/storage/raft/snapshot" => (200, snapshot.clone()),
            // A valid token without grants to count: counts are skipped, not fatal.
            "/v1/auth/token/lookup-self" => (200, b"{}".to_vec()),
            _ => (403, json!({"errors": ["permission denied"]}).to_string().into_bytes()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_or_malformed_snapshot_is_a_failed_backup() {
    let (store, keys) = (TestStore::s3(), Keys::generate());
    // A real snapshot, cut short: everything up to its gzip trailer.
    let real = Bao::start().await;
    let whole = reqwest::Client::new()
        .get(format!("{}/v1/sys/storage/raft/snapshot", real.addr))
        .header("X-Vault-Token", &real.root_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let cut = whole[..whole.len() - 8].to_vec();
    for (what, body, expected) in [
        ("empty", Vec::new(), "the snapshot is empty"),
        (
            "an error page",
            b"<html>502 Bad Gateway</html>".to_vec(),
            "not a gzip'd tar",
        ),
        ("cut short", cut, "not a gzip'd tar archive or is cut short"),
    ] {
        let addr = vault_sending(body).await;
        let out = backup_vault(
            &store,
            &keys,
            &[],
            &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "s.fake")],
        );
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        assert!(
            !store.files().iter().any(|f| f.ends_with("manifest.json")),
            "{what}: a manifest was written"
        );
    }
    // And the whole snapshot from the same fake is fine: the check is not the fake's doing.
    let addr = vault_sending(whole).await;
    let out = backup_vault(
        &store,
        &keys,
        &[],
        &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", "s.fake")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
