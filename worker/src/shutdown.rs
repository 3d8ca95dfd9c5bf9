//! Shutdown as an explicit signal. Kubernetes sends SIGTERM and waits
//! `terminationGracePeriodSeconds` before SIGKILL; in that window every running upload must
//! be aborted so that no half object and no multipart debris outlives the pod.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::warn!("SIGTERM received: aborting uploads"),
            _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted: aborting uploads"),
        }
        cancel.cancel();
    });
    token
}
