//! The names of the drill's scratch databases (`<db>__drill`): the one naming rule the
//! engines' own `scratch` modules check before they create or drop anything, and the drill
//! uses to name what it restores into.

use super::SourceFailure;

/// The suffix of every scratch database.
pub const SUFFIX: &str = "__drill";

/// PostgreSQL truncates identifiers past 63 bytes; a longer scratch name would not be the
/// name the drill checked.
const MAX_NAME: usize = 63;

/// The scratch name of database `db`.
pub fn scratch_name(db: &str) -> String {
    format!("{db}{SUFFIX}")
}

/// Refuses any name the drill may not create or drop.
///
/// # Errors
/// A name without [`SUFFIX`], or too long to stay itself.
pub fn check_scratch_name(name: &str) -> Result<(), SourceFailure> {
    if !name.ends_with(SUFFIX) || name == SUFFIX {
        return Err(format!(
            "refusing database {name:?}: the drill only creates and drops scratch databases named <database>{SUFFIX}"
        )
        .into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the scratch name {name:?} is longer than {MAX_NAME} bytes (PostgreSQL would cut it); this database cannot be drilled"
        )
        .into());
    }
    Ok(())
}

/// A drill's scratch destination for one step, as its engine names it: claimed before the
/// step (refused when the name is someone else's), released after it whatever happened.
#[async_trait::async_trait]
pub trait Claim: Send + Sync {
    /// Creates (or takes over its own leftover of) the scratch destination.
    ///
    /// # Errors
    /// A name that exists without the drill's mark, the server's refusal.
    async fn claim(&mut self) -> Result<(), SourceFailure>;

    /// Drops (or empties) what [`Claim::claim`] took; a no-op when nothing was taken.
    ///
    /// # Errors
    /// The server's refusal: a scratch destination is left behind.
    async fn release(&mut self) -> Result<(), SourceFailure>;
}

/// One step of a drill, on a scratch destination its engine named: the step, the flags it
/// restores with (the engine's own choices for a scratch restore), and its claim.
pub struct ScratchStep<'m> {
    /// The step, its destination the scratch one.
    pub step: super::Step<'m>,
    /// The flags of the step's restore.
    pub flags: super::registry::RestoreFlags,
    /// The scratch destination.
    pub claim: Box<dyn Claim>,
}

/// The outcome of a step and of the cleanup after it: the step's error first (it decides
/// the verdict), and a failed cleanup is never lost: logged beside a step error, returned
/// alone otherwise (a scratch database left behind fails the drill).
///
/// # Errors
/// The step's error, else the cleanup's.
pub fn both<T>(
    step: Result<T, SourceFailure>,
    cleanup: Result<(), SourceFailure>,
) -> Result<T, SourceFailure> {
    match (step, cleanup) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(c)) => Err(c),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            tracing::error!(error = %c, "cleaning up after a failed drill step failed too; drop the scratch database by hand");
            Err(e)
        }
    }
}
