//! age keys. The backup side only ever parses *public* recipients (`age1…`); identities
//! (`AGE-SECRET-KEY-1…`) are loaded only by verify and restore, from a file, and their text
//! never appears in an error message or a log line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::x25519;

/// Errors reading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No recipient at all.
    #[error("no age recipients given; pass --recipient age1… (public key from `age-keygen -y key.txt`) or set DR_RECIPIENTS or DR_RECIPIENTS_FILE")]
    NoRecipients,
    /// A private key where a public one belongs (refused so secrets stay off the backup side).
    #[error("a private age key was given as a recipient ({origin}); the backup side needs only the public key: run `age-keygen -y` on the key file and pass its age1… output")]
    SecretAsRecipient {
        /// Where it came from (a flag or a file).
        origin: String,
    },
    /// Text that is not an age X25519 recipient.
    #[error("{text:?} from {origin} is not an X25519 age recipient (expected age1…, as printed by age-keygen)")]
    BadRecipient {
        /// Where it came from (a flag or a file).
        origin: String,
        /// The text given.
        text: String,
    },
    /// A key file cannot be read.
    #[error("cannot read {what} file {}", path.display())]
    Read {
        /// What was being done or read.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file without an age identity.
    #[error("{} holds no usable age identity (expected AGE-SECRET-KEY-1… lines, as written by age-keygen)", path.display())]
    BadIdentity {
        /// The file.
        path: PathBuf,
    },
    /// A public key given where the secret key belongs.
    #[error("{} holds an age public key (age1…), not a secret one: --identity takes the secret key file (AGE-SECRET-KEY-1… lines, as written by age-keygen); the public key is what the worker's --recipient takes", path.display())]
    PublicAsIdentity {
        /// The file.
        path: PathBuf,
    },
    /// No `--identity`.
    #[error("no identity given; pass --identity FILE (or set DR_IDENTITY_FILE) with the age key the backups were encrypted to")]
    NoIdentity,
}

/// Parses recipients, one per non-empty, non-comment line or comma-separated item.
///
/// # Errors
/// [`KeyError::SecretAsRecipient`] for a private key (its text is not echoed) and
/// [`KeyError::BadRecipient`] for anything else that is not `age1…`.
pub fn parse_recipients(text: &str, origin: &str) -> Result<Vec<x25519::Recipient>, KeyError> {
    text.lines()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(|s| {
            if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                return Err(KeyError::SecretAsRecipient {
                    origin: origin.to_string(),
                });
            }
            x25519::Recipient::from_str(s).map_err(|_| KeyError::BadRecipient {
                origin: origin.to_string(),
                text: s.to_string(),
            })
        })
        .collect()
}

/// Reads a recipients file (the `age -R` format: one `age1…` per line, `#` comments).
///
/// # Errors
/// Unreadable file, or the errors of [`parse_recipients`].
pub fn read_recipients_file(path: &Path) -> Result<Vec<x25519::Recipient>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        what: "recipients",
        path: path.to_path_buf(),
        source,
    })?;
    parse_recipients(&text, &path.display().to_string())
}

/// Identities loaded from an age identity file, for decryption. Cheap to clone, so a
/// blocking decode thread can own a handle.
#[derive(Clone)]
pub struct Identities {
    /// The file they came from, for messages.
    pub path: PathBuf,
    keys: std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({}, {} keys)",
            self.path.display(),
            self.keys.len()
        )
    }
}

impl Identities {
    /// Loads an identity file as written by `age-keygen`.
    ///
    /// # Errors
    /// Unreadable file, or a file without identities.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        // age's own message for a public key ("non-identity data on line 1") does not say
        // what went wrong; an identity file is small, so a look first costs nothing.
        let public = std::fs::File::open(path).ok().and_then(|f| {
            use std::io::{BufRead, Read};
            std::io::BufReader::new(f.take(64 * 1024))
                .lines()
                .map_while(Result::ok)
                .map(|l| l.trim().to_string())
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.starts_with("age1"))
        });
        if public == Some(true) {
            return Err(KeyError::PublicAsIdentity {
                path: path.to_path_buf(),
            });
        }
        let file = age::IdentityFile::from_file(path.display().to_string()).map_err(|source| {
            KeyError::Read {
                what: "identity",
                path: path.to_path_buf(),
                source,
            }
        })?;
        let keys = file.into_identities().map_err(|_| KeyError::BadIdentity {
            path: path.to_path_buf(),
        })?;
        if keys.is_empty() {
            return Err(KeyError::BadIdentity {
                path: path.to_path_buf(),
            });
        }
        Ok(Identities {
            path: path.to_path_buf(),
            keys: keys.into(),
        })
    }

    /// Each identity, for age's decryptor.
    pub fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn parses_lists_files_and_comments() {
        let a = x25519::Identity::generate().to_public().to_string();
        let b = x25519::Identity::generate().to_public().to_string();
        let got = parse_recipients(&format!("# team keys\n{a}\n\n {b} , \n"), "test").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].to_string(), b);
    }

    #[test]
    fn refuses_a_secret_key_without_echoing_it() {
        let secret = x25519::Identity::generate().to_string();
        let err = parse_recipients(secret.expose_secret(), "--recipient")
            .unwrap_err()
            .to_string();
        assert!(err.contains("age-keygen -y"), "{err}");
        assert!(
            !err.contains(&secret.expose_secret()[15..]),
            "secret leaked: {err}"
        );
    }

    #[test]
    fn names_the_bad_recipient() {
        let err = parse_recipients("age1nope", "DR_RECIPIENTS")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("age1nope") && err.contains("DR_RECIPIENTS"),
            "{err}"
        );
    }

    #[test]
    fn a_public_key_given_as_identity_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pub");
        let public = x25519::Identity::generate().to_public().to_string();
        std::fs::write(&path, format!("# public key\n{public}\n")).unwrap();
        let err = Identities::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("holds an age public key (age1…), not a secret one"),
            "{err}"
        );
        assert!(err.contains("AGE-SECRET-KEY-1"), "{err}");
        let secret = dir.path().join("key.txt");
        let id = x25519::Identity::generate();
        std::fs::write(&secret, format!("{}\n", id.to_string().expose_secret())).unwrap();
        assert!(Identities::from_file(&secret).is_ok());
    }
}
