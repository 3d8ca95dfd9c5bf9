//! The scratch server of `worker drill`: a Redis given only for drills. A restore replaces
//! every key, so the drill accepts it only empty or holding nothing but the drill's marker
//! key, and empties it afterwards (leaving the marker).

use super::RedisTarget;
use crate::engine::SourceFailure;

/// The key that marks a server as the drill's scratch server.
pub const MARK_KEY: &str = "kube-dr:drill-scratch";

/// Checks that `target` may be overwritten: empty, or holding the drill's marker key.
///
/// # Errors
/// A server with other keys, connection errors.
pub async fn claim(target: &RedisTarget) -> Result<(), SourceFailure> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || -> Result<(), SourceFailure> {
        let mut c = target.connect()?;
        let keys: u64 = c
            .keyspace()?
            .iter()
            .filter(|t| t.name == "keys")
            .map(|t| t.rows)
            .sum();
        if keys == 0 {
            return Ok(());
        }
        let marked = matches!(
            c.call(&[b"EXISTS", MARK_KEY.as_bytes()])?,
            super::Reply::Int(1)
        );
        if !marked {
            return Err(format!(
                "{target} holds {keys} key(s) and no {MARK_KEY} key: it is not the drill's scratch server, and a restore would replace every key; give the drill an empty server (it marks it as its own)"
            )
            .into());
        }
        c.call(&[b"FLUSHALL"])?;
        Ok(())
    })
    .await
    .expect("redis thread panicked")
}

/// Empties the scratch server and leaves the marker key.
///
/// # Errors
/// Connection errors.
pub async fn release(target: &RedisTarget) -> Result<(), SourceFailure> {
    let target = target.clone();
    tokio::task::spawn_blocking(move || -> Result<(), SourceFailure> {
        let mut c = target.connect()?;
        c.call(&[b"FLUSHALL"])?;
        c.call(&[
            b"SET",
            MARK_KEY.as_bytes(),
            b"scratch server of kube-dr's worker drill: emptied after each drill",
        ])?;
        Ok(())
    })
    .await
    .expect("redis thread panicked")
}

/// The scratch server of one drill.
struct ScratchServer {
    target: RedisTarget,
    claimed: bool,
}

#[async_trait::async_trait]
impl crate::engine::scratch::Claim for ScratchServer {
    async fn claim(&mut self) -> Result<(), SourceFailure> {
        claim(&self.target).await?;
        self.claimed = true;
        Ok(())
    }

    async fn release(&mut self) -> Result<(), SourceFailure> {
        if !std::mem::take(&mut self.claimed) {
            return Ok(());
        }
        release(&self.target).await
    }
}

/// A drill of `manifest` on the scratch server `url`: one step, the whole snapshot.
///
/// # Errors
/// A malformed URL.
pub fn drill_steps<'m>(
    manifest: &'m crate::catalog::Manifest,
    url: &str,
    flags: &crate::engine::registry::RestoreFlags,
) -> Result<Vec<crate::engine::scratch::ScratchStep<'m>>, SourceFailure> {
    Ok(vec![crate::engine::scratch::ScratchStep {
        step: crate::engine::Step::whole(manifest, url),
        flags: flags.clone(),
        claim: Box::new(ScratchServer {
            target: RedisTarget::from_url(url)?,
            claimed: false,
        }),
    }])
}
