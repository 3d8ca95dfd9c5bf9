//! `worker backup vault`: its flags and the [`Source`] they build.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{dump, Auth, Token, VaultError, VaultTarget, DEFAULT_K8S_JWT};
use crate::engine::{BackupRun, DumpOutcome, Source, SourceFailure};

/// Flags of `worker backup vault`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Vault / OpenBao")]
pub struct BackupArgs {
    /// File holding the token (e.g. a mounted Secret); VAULT_TOKEN takes precedence.
    #[arg(long, env = "VAULT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Log in with Kubernetes auth as this role instead of using a token.
    #[arg(long, env = "DR_VAULT_K8S_ROLE", value_name = "ROLE")]
    pub k8s_role: Option<String>,

    /// Mount path of the Kubernetes auth method.
    #[arg(
        long,
        env = "DR_VAULT_K8S_MOUNT",
        default_value = "kubernetes",
        value_name = "PATH"
    )]
    pub k8s_mount: String,

    /// The service-account token presented to Kubernetes auth.
    #[arg(long, env = "DR_VAULT_K8S_TOKEN_PATH", default_value = DEFAULT_K8S_JWT, value_name = "FILE")]
    pub k8s_token_path: PathBuf,
}

impl BackupArgs {
    fn auth(&self) -> Result<Auth, VaultError> {
        if let Some(role) = &self.k8s_role {
            return Ok(Auth::Kubernetes {
                role: role.clone(),
                mount: self.k8s_mount.clone(),
                jwt_path: self.k8s_token_path.clone(),
            });
        }
        if let Some(t) = std::env::var("VAULT_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            return Ok(Auth::Token(Token::new(t)));
        }
        match &self.token_file {
            Some(path) => Ok(Auth::Token(Token::from_file(path)?)),
            None => Err(VaultError::NoToken { backup: true }),
        }
    }

    /// # Errors
    /// No address, no token, an unreadable token file.
    pub fn source(self) -> Result<Box<dyn Source>, SourceFailure> {
        Ok(Box::new(VaultSource {
            target: VaultTarget::from_env()?,
            auth: self.auth()?,
        }))
    }
}

/// A Vault/OpenBao cluster to snapshot.
pub struct VaultSource {
    target: VaultTarget,
    auth: Auth,
}

#[async_trait]
impl Source for VaultSource {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    async fn dump(&self, run: &BackupRun<'_>) -> Result<DumpOutcome, SourceFailure> {
        let outcome = dump::dump(run, &self.target, &self.auth).await?;
        Ok(DumpOutcome {
            server_version: outcome.server_version,
            facts: crate::catalog::Facts::of(&outcome.facts),
        })
    }
}
