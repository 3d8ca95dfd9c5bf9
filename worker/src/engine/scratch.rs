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
