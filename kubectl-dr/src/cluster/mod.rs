//! The plugin's cluster side, kept thin on purpose: the few Kubernetes calls behind
//! `status`, `backup` and `restore --in-cluster`, and the pure functions that decide what to
//! send (a Job from a CronJob, a restore Job, staleness). Everything else (the store, the
//! checks, the restore itself) is the same code the plugin runs on a laptop.
//!
//! Tests drive these functions against a scripted fake API server (tower-test) and assert
//! the exact requests, including the cleanup paths.

pub mod jobs;
pub mod restore;
pub mod status;

use std::path::PathBuf;

use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// `~/.kube/config`, where kubectl looks by default.
fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

/// Label every kube-dr object carries.
pub const PART_OF: &str = "app.kubernetes.io/part-of=kube-dr";
/// Label of a backup CronJob naming its engine.
pub const ENGINE_LABEL: &str = "kube-dr.io/engine";

/// Which cluster and namespace, as kubectl takes them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(hide_short_help = true, long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: the current context).
    #[arg(hide_short_help = true, long, value_name = "NAME")]
    pub context: Option<String>,

    /// Namespace of the kube-dr CronJobs (where `kubectl apply -k` put them).
    #[arg(long, short = 'n', default_value = "kube-dr", value_name = "NS")]
    pub namespace: String,
}

/// Nothing names a cluster: no --kubeconfig or --context, no KUBECONFIG, no
/// ~/.kube/config, no in-cluster service account.
#[derive(Debug, thiserror::Error)]
#[error("no Kubernetes cluster configured (no --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster service account); pass --kubeconfig or set KUBECONFIG")]
pub struct NoCluster;

impl ClusterArgs {
    /// A client for the chosen cluster, or `None` when nothing names one (`status` then
    /// answers from the store alone).
    ///
    /// # Errors
    /// As [`ClusterArgs::client`], except [`NoCluster`].
    pub async fn client_if_configured(&self) -> anyhow::Result<Option<Client>> {
        match self.client().await {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.is::<NoCluster>() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A client for the chosen cluster.
    ///
    /// # Errors
    /// An unreadable kubeconfig, an unknown context, [`NoCluster`].
    pub async fn client(&self) -> anyhow::Result<Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display())
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options).await?,
            (None, None) => {
                let named = std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty())
                    || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                    || home_kubeconfig().is_some_and(|p| p.exists());
                if !named {
                    return Err(NoCluster.into());
                }
                // kube's own message quotes the path twice ('"/root/.kube/config"').
                Config::infer().await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot load the Kubernetes configuration: {}",
                        e.to_string().replace("'\"", "'").replace("\"'", "'")
                    )
                })?
            }
        };
        Ok(Client::try_from(config)?)
    }
}

/// Turns a Kubernetes API error into a sentence with the next step.
pub fn explain(e: kube::Error, what: &str, namespace: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(status) if status.code == 403 => anyhow::anyhow!(
            "{what}: forbidden in namespace {namespace} ({}); bind Role kube-dr-operator (manifests/base/rbac.yaml) to you",
            status.message
        ),
        kube::Error::Api(status) if status.code == 404 => {
            anyhow::anyhow!("{what}: not found in namespace {namespace} ({})", status.message)
        }
        kube::Error::Service(_) | kube::Error::HyperError(_) => anyhow::anyhow!(
            "{what}: cannot reach the Kubernetes API server ({e}); check --context / --kubeconfig and your network"
        ),
        _ => anyhow::Error::new(e).context(what.to_string()),
    }
}

#[cfg(test)]
pub mod fake {
    //! A scripted fake API server: each expected request (method, path and query) gets a
    //! canned answer, in order; anything else fails the test.

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::Value;

    pub struct Exchange {
        pub method: Method,
        pub path: String,
        pub status: u16,
        pub reply: Value,
    }

    pub fn on(method: Method, path: &str, status: u16, reply: Value) -> Exchange {
        Exchange {
            method,
            path: path.to_string(),
            status,
            reply,
        }
    }

    /// Returns a client talking to the script, and a task yielding the request bodies seen.
    pub fn serve(
        script: Vec<Exchange>,
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<(String, Value)>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "kube-dr");
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for step in script {
                let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                    panic!("expected {} {}, got no request", step.method, step.path)
                });
                let (parts, body) = request.into_parts();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().trim_end_matches('?').to_string())
                    .unwrap_or_default();
                assert_eq!(
                    (parts.method.clone(), path.clone()),
                    (step.method.clone(), step.path.clone()),
                    "unexpected request"
                );
                let bytes = body.collect_bytes().await.unwrap();
                let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                seen.push((format!("{} {}", parts.method, path), json));
                send.send_response(
                    Response::builder()
                        .status(step.status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&step.reply).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        (client, task)
    }

    /// A Kubernetes `Status` error body.
    pub fn status(code: u16, reason: &str) -> Value {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason}"), "reason": reason, "code": code
        })
    }
}
