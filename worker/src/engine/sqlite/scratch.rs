//! The scratch file of `worker drill`: `<target>__drill.db` in the directory the drill was
//! given, beside a marker file that says it is the drill's own. A file of that name without
//! the marker is someone else's and is never touched.

use std::path::PathBuf;

use crate::catalog::Manifest;
use crate::engine::registry::RestoreFlags;
use crate::engine::scratch::{check_scratch_name, scratch_name, Claim, ScratchStep};
use crate::engine::{SourceFailure, Step};

/// The marker beside a scratch file (`<file>.kube-dr-drill`).
const MARK_SUFFIX: &str = ".kube-dr-drill";

/// A scratch file of one drill step.
struct ScratchFile {
    path: PathBuf,
    claimed: bool,
}

impl ScratchFile {
    fn mark(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(MARK_SUFFIX);
        PathBuf::from(name)
    }
}

#[async_trait::async_trait]
impl Claim for ScratchFile {
    async fn claim(&mut self) -> Result<(), SourceFailure> {
        if self.path.exists() {
            if !self.mark().exists() {
                return Err(format!(
                    "refusing {}: it exists without the drill's marker {}, so it is not a drill's leftover",
                    self.path.display(),
                    self.mark().display()
                )
                .into());
            }
            std::fs::remove_file(&self.path)?;
        }
        std::fs::write(
            self.mark(),
            b"kube-dr drill scratch file: worker drill removes it\n",
        )?;
        self.claimed = true;
        Ok(())
    }

    async fn release(&mut self) -> Result<(), SourceFailure> {
        if !std::mem::take(&mut self.claimed) {
            return Ok(());
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(
                    format!("removing the scratch file {}: {e}", self.path.display()).into(),
                )
            }
        }
        std::fs::remove_file(self.mark())?;
        Ok(())
    }
}

/// A drill of `manifest` into the scratch directory `url` (`sqlite:///dir`): one step, into
/// `<dir>/<target>__drill.db`.
///
/// # Errors
/// A URL that is not a directory.
pub fn drill_steps<'m>(
    manifest: &'m Manifest,
    url: &str,
    flags: &RestoreFlags,
) -> Result<Vec<ScratchStep<'m>>, SourceFailure> {
    let dir = super::path_of_url(url)?;
    if !dir.is_dir() {
        return Err(format!(
            "the drill's SQLite destination {} is not a directory; give the directory it may write scratch files into (sqlite:///scratch)",
            dir.display()
        )
        .into());
    }
    let name = scratch_name(&manifest.target);
    check_scratch_name(&name)?;
    let path = dir.join(format!("{name}.db"));
    let to = url::Url::from_file_path(&path)
        .map_err(|()| format!("{} cannot be a URL", path.display()))?
        .to_string()
        .replacen("file://", "sqlite://", 1);
    Ok(vec![ScratchStep {
        step: Step::whole(manifest, &to),
        flags: flags.clone(),
        claim: Box::new(ScratchFile {
            path,
            claimed: false,
        }),
    }])
}
