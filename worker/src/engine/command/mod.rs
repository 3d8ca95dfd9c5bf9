//! `command`: backups of whatever a command prints (`terraform state pull`, `argocd admin
//! export`, `tar -C /data -cf - .`), written only on the engine traits.
//!
//! - [`source`]: `worker backup command --target T -- CMD ARG…`: the child's stdout streams
//!   into one part like any dump, its stderr is kept for the error, and a non-zero exit or a
//!   signal means no manifest. The manifest records the argv (never the environment), the
//!   byte count and the sha256 of the plaintext (facts `argv`, `plaintext_sha256`).
//! - [`sink`]: `kubectl dr restore ID --engine command --to -` (stdout) or `--to-command --
//!   CMD…` (its stdin; the restore fails when that command fails). The part is verified first,
//!   as for every engine, and its last chunk is held back until the plaintext matched the
//!   recorded size and sha256.

pub mod sink;
pub mod source;

/// What a command backup records in the manifest's `facts`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    /// The command line (never its environment), stored as a JSON array of strings.
    #[serde(default, with = "crate::catalog::facts::json_text")]
    pub argv: Vec<String>,
    /// Hex sha256 of the plaintext (what the command printed).
    #[serde(default)]
    pub plaintext_sha256: String,
}

/// Checks a decrypted part against the recorded plaintext sha256 (`verify --identity`).
///
/// # Errors
/// A read error, or a digest that differs from the manifest's.
pub fn check_plaintext(
    r: &mut dyn std::io::Read,
    facts: &crate::catalog::Facts,
) -> Result<(), String> {
    use sha2::Digest;
    let expected = facts
        .read::<Facts>()
        .map_err(|e| e.to_string())?
        .plaintext_sha256;
    if expected.is_empty() {
        return Err("the manifest records no plaintext sha256".into());
    }
    let mut hasher = sha2::Sha256::new();
    std::io::copy(r, &mut HashWriter(&mut hasher)).map_err(|e| e.to_string())?;
    let found = hex::encode(hasher.finalize());
    if found == expected {
        Ok(())
    } else {
        Err(format!(
            "the plaintext has sha256 {found}, the manifest recorded {expected}"
        ))
    }
}

/// A `Write` that feeds a hasher.
pub(crate) struct HashWriter<'a>(pub &'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
