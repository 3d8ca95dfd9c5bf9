//! Who wrote a backup: `manifest.json` signed with minisign (Ed25519).
//!
//! age does not authenticate the sender: anyone who can write to the bucket and knows a
//! recipient's *public* key can make parts that decrypt. The manifest binds every part's
//! name, size and sha256, so one signature over its exact bytes covers the whole backup.
//! The signing key lives only with the worker (a Secret); readers hold the public keys
//! (`DR_SIGNERS`), so the cluster still holds nothing that reads a backup.
//!
//! minisign's own format is used, so `minisign -Vm manifest.json -P RW…` checks a backup
//! by hand. The signature is a detached `manifest.json.minisig`, written *before* the
//! manifest: the manifest stays the commit. `rekey` rewrites a manifest in place; while it
//! swaps the two objects it keeps the old signature as `manifest.json.minisig.prev`, and a
//! reader accepts either file when it is a valid signature of the manifest it read (both
//! must come from a trusted key, so the second file weakens nothing).

use std::fmt;
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use minisign::{PublicKey, SecretKey, SecretKeyBox, SignatureBox};
use serde::Serialize;

use super::BackupRef;

/// The detached signature of `manifest.json`, in the same directory.
pub const SIGNATURE_FILE: &str = "manifest.json.minisig";
/// The signature of the manifest a `rekey` is replacing, kept while it swaps the two.
pub const PREVIOUS_SIGNATURE_FILE: &str = "manifest.json.minisig.prev";
/// Largest signature file read (a real one is ~300 bytes).
pub const MAX_SIGNATURE_BYTES: u64 = 4096;

/// Problems with keys (not with backups: those are a [`Signature`]).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No signing key, and unsigned manifests were not asked for.
    #[error("no signing key: pass --signing-key FILE or set DR_SIGNING_KEY_FILE (a minisign secret key: minisign -G -W -s FILE; in the cluster, Secret kube-dr-signing); readers refuse unsigned backups, so --unsigned / DR_UNSIGNED=1 writes one only when asked")]
    NoSigningKey,
    /// The signing key file cannot be read.
    #[error("cannot read the signing key {path}: {source}; DR_SIGNING_KEY_FILE must name a minisign secret key file (minisign -G -W -s FILE)")]
    ReadKey {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The signing key is not an unencrypted minisign secret key.
    #[error("{path} is not a usable minisign secret key: {reason}")]
    BadKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A signer is neither a public key line nor a readable `.pub` file.
    #[error("signer {text:?} (from {origin}) is neither a minisign public key (RW…, 56 characters) nor a readable .pub file: {reason}")]
    BadSigner {
        /// The entry as given (a public key or a path: never secret).
        text: String,
        /// Which flag or variable it came from.
        origin: String,
        /// Why.
        reason: String,
    },
    /// Signing failed (a bug or a damaged key).
    #[error("signing the manifest failed: {0}")]
    Sign(String),
}

/// minisign's key id: the 8-byte key number as 16 uppercase hex digits, as `minisign`
/// prints it.
fn key_id(keynum: &[u8]) -> String {
    let mut le = [0u8; 8];
    le.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(le))
}

/// The worker's secret key: signs manifests.
pub struct SigningKey {
    secret: SecretKey,
    public: PublicKey,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Reads an unencrypted minisign secret key file (`minisign -G -W` writes one).
    ///
    /// # Errors
    /// An unreadable file, a password-protected key (a CronJob cannot type it), or a file
    /// that is not a minisign secret key.
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SignatureError::ReadKey {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| SignatureError::BadKey {
            path: shown,
            reason,
        })
    }

    /// [`SigningKey::from_file`] on the file's text.
    ///
    /// # Errors
    /// Why the text is not an unencrypted minisign secret key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or("the file holds no key")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "not base64: is this a minisign secret key file?".to_string())?;
        // Layout: signature algorithm (2), KDF algorithm (2), checksum algorithm (2), salt
        // (32), opslimit (8), memlimit (8), key id (8), key (64), checksum (32) = 158 bytes.
        // KDF "Sc" means a password.
        if raw.len() != 158 || &raw[0..2] != b"Ed" {
            return Err("not a minisign secret key (a public key or another format?)".into());
        }
        if raw[2..4] != [0, 0] {
            return Err("the key is password-protected; a CronJob cannot type the password: create the key with `minisign -G -W -s FILE` (no password) and keep it in a Secret".into());
        }
        // The minisign tool (0.11) leaves the checksum of a key made with -W all zeros,
        // which the crate's loader calls corrupted; such a key is read as it is, and the
        // test signature below catches real damage instead.
        let secret = if raw[126..158].iter().all(|b| *b == 0) {
            SecretKey::from_bytes(&raw).map_err(|e| e.to_string())?
        } else {
            SecretKeyBox::from_string(text)
                .and_then(SecretKeyBox::into_unencrypted_secret_key)
                .map_err(|e| e.to_string())?
        };
        let public = PublicKey::from_secret_key(&secret).map_err(|e| e.to_string())?;
        let id = key_id(secret.keynum());
        let key = SigningKey { secret, public, id };
        minisign::sign(
            Some(&key.public),
            &key.secret,
            Cursor::new(b"test"),
            None,
            None,
        )
        .map_err(|e| format!("the key is damaged: it does not make valid signatures ({e})"))?;
        Ok(key)
    }

    /// The key id (16 hex digits), as `minisign` shows it.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The public key line (`RW…`), what readers put in `DR_SIGNERS`.
    pub fn public_key(&self) -> String {
        self.public.to_base64()
    }

    /// The `.minisig` text for these manifest bytes. The trusted comment names the backup,
    /// for a person checking it by hand; the manifest itself already names its directory.
    ///
    /// # Errors
    /// [`SignatureError::Sign`] (a damaged key).
    pub fn sign(&self, manifest: &[u8], backup: &BackupRef) -> Result<String, SignatureError> {
        self.sign_file(manifest, super::MANIFEST_FILE, &format!("backup:{backup}"))
    }

    /// The `.minisig` text for any signed file of the store (a WAL index entry): the trusted
    /// comment names the file and what it belongs to (`about`, e.g. `wal:postgres/prod`).
    ///
    /// # Errors
    /// [`SignatureError::Sign`] (a damaged key).
    pub fn sign_file(
        &self,
        bytes: &[u8],
        file: &str,
        about: &str,
    ) -> Result<String, SignatureError> {
        let manifest = bytes;
        let trusted = format!(
            "timestamp:{}\tfile:{file}\t{about}",
            chrono::Utc::now().timestamp(),
        );
        let untrusted = format!("signature from kube-dr worker, key {}", self.id);
        let sig = minisign::sign(
            Some(&self.public),
            &self.secret,
            Cursor::new(manifest),
            Some(&trusted),
            Some(&untrusted),
        )
        .map_err(|e| SignatureError::Sign(e.to_string()))?;
        Ok(sig.into_string())
    }
}

/// The public keys whose signatures are trusted (several during a key rotation).
#[derive(Clone, Default)]
pub struct Signers(Vec<(String, PublicKey)>);

impl fmt::Debug for Signers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl Signers {
    /// Parses `--signer` / `DR_SIGNERS`: entries separated by commas or newlines, each a
    /// public key line (`RW…`) or the path of a `.pub` file; `untrusted comment:` lines (a
    /// whole `.pub` file pasted into a ConfigMap) are skipped.
    ///
    /// # Errors
    /// [`SignatureError::BadSigner`] naming the entry.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SignatureError> {
        let mut keys = Signers::default();
        for entry in text.split([',', '\n']).map(str::trim) {
            if entry.is_empty() || entry.starts_with("untrusted comment:") {
                continue;
            }
            let bad = |reason: String| SignatureError::BadSigner {
                text: entry.to_string(),
                origin: origin.to_string(),
                reason,
            };
            // A key line is base64 (which may hold '/'); anything else is a file.
            let key = if let Ok(key) = PublicKey::from_base64(entry) {
                key
            } else {
                let file = std::fs::read_to_string(entry).map_err(|e| bad(e.to_string()))?;
                let line = file
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("RW"))
                    .ok_or_else(|| bad("the file holds no RW… key line".into()))?;
                PublicKey::from_base64(line).map_err(|e| bad(e.to_string()))?
            };
            let id = key_id(key.keynum());
            if !keys.0.iter().any(|(known, _)| *known == id) {
                keys.0.push((id, key));
            }
        }
        Ok(keys)
    }

    /// A signer list of one key (the worker's own, to check what it just wrote).
    pub fn of(key: &SigningKey) -> Self {
        Signers(vec![(key.id.clone(), key.public.clone())])
    }

    /// The public key lines (`RW…`), e.g. to hand the same trust to an in-cluster Job.
    pub fn key_lines(&self) -> Vec<String> {
        self.0.iter().map(|(_, k)| k.to_base64()).collect()
    }

    /// No key given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The trusted key ids.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(id, _)| id.as_str())
    }

    /// Judges the signature files found beside a manifest (`None` where absent); the first
    /// valid one wins.
    pub fn judge(&self, manifest: &[u8], files: &[Option<&[u8]>]) -> Signature {
        let mut verdict = Signature::Unsigned;
        for text in files.iter().flatten() {
            let this = self.judge_one(manifest, text);
            if matches!(this, Signature::Valid { .. }) {
                return this;
            }
            // Keep the most telling failure: a bad signature over "unsigned".
            if matches!(verdict, Signature::Unsigned) {
                verdict = this;
            }
        }
        verdict
    }

    fn judge_one(&self, manifest: &[u8], text: &[u8]) -> Signature {
        let parsed = std::str::from_utf8(text)
            .map_err(|e| e.to_string())
            .and_then(|t| SignatureBox::from_string(t).map_err(|e| e.to_string()));
        let sig = match parsed {
            Ok(s) => s,
            Err(reason) => {
                return Signature::Invalid {
                    key_id: None,
                    reason: format!("the signature file does not parse ({reason})"),
                }
            }
        };
        let id = key_id(sig.keynum());
        let Some((_, key)) = self.0.iter().find(|(known, _)| *known == id) else {
            return if self.is_empty() {
                Signature::NotChecked { key_id: id }
            } else {
                Signature::UnknownKey { key_id: id }
            };
        };
        match minisign::verify(key, &sig, Cursor::new(manifest), true, false, false) {
            Ok(()) => Signature::Valid { key_id: id },
            Err(e) => Signature::Invalid {
                key_id: Some(id),
                reason: e.to_string(),
            },
        }
    }
}

/// What the signature beside a manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Signature {
    /// Signed by a trusted key, over exactly these bytes.
    Valid {
        /// The signer's key id.
        key_id: String,
    },
    /// Signed, but no trusted keys were given to check it against.
    NotChecked {
        /// The signer's key id.
        key_id: String,
    },
    /// No signature file (a backup made before signing, or by a worker without a key).
    Unsigned,
    /// A signature by a key that is not in the trusted list.
    UnknownKey {
        /// The signer's key id.
        key_id: String,
    },
    /// A signature that does not match the manifest (altered or forged), or does not parse.
    Invalid {
        /// The claimed key id, when the file parses.
        #[serde(skip_serializing_if = "Option::is_none")]
        key_id: Option<String>,
        /// What failed.
        reason: String,
    },
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Valid { key_id } => write!(f, "ok {key_id}"),
            Signature::NotChecked { key_id } => write!(f, "signed {key_id} (not checked)"),
            Signature::Unsigned => f.write_str("unsigned"),
            Signature::UnknownKey { key_id } => write!(f, "UNKNOWN KEY {key_id}"),
            Signature::Invalid {
                key_id: Some(id), ..
            } => write!(f, "INVALID {id}"),
            Signature::Invalid { key_id: None, .. } => f.write_str("INVALID"),
        }
    }
}

/// Which signatures a command accepts.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The trusted public keys.
    pub signers: Signers,
    /// Accept unsigned backups (made before signing existed), and signed ones when no
    /// signer was given.
    pub allow_unsigned: bool,
    /// Refuse what is not accepted; `false` only reports (`list`, a prune without signers).
    pub enforce: bool,
}

impl Trust {
    /// Reports signatures, refuses nothing.
    pub fn report_only(signers: Signers) -> Self {
        Trust {
            signers,
            allow_unsigned: true,
            enforce: false,
        }
    }

    /// `None` when `sig` is acceptable, else why not (naming the key id, and what to do).
    pub fn refusal(&self, sig: &Signature) -> Option<String> {
        if !self.enforce {
            return None;
        }
        let known = || self.signers.ids().collect::<Vec<_>>().join(", ");
        match sig {
            Signature::Valid { .. } => None,
            Signature::Unsigned | Signature::NotChecked { .. } if self.allow_unsigned => None,
            Signature::Unsigned => Some("has no signature (manifest.json.minisig is missing): it may be forged by anyone with write access to the bucket; if it was made before signing existed, pass --allow-unsigned".into()),
            Signature::NotChecked { key_id } => Some(format!("is signed by key {key_id}, but no trusted signer was given to check it: pass --signer / DR_SIGNERS")),
            Signature::UnknownKey { key_id } => Some(format!("is signed by key {key_id}, which is not a trusted signer ({}); add its public key to --signer / DR_SIGNERS only if that key is yours", known())),
            Signature::Invalid { key_id, reason } => Some(format!(
                "has an INVALID signature{}: {reason}; the manifest or its signature was altered after signing: do not restore it",
                key_id.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway key in the format `minisign -G -W` writes.
    fn key() -> SigningKey {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        SigningKey::parse(&kp.sk.to_box(None).unwrap().into_string()).unwrap()
    }

    fn backup() -> BackupRef {
        BackupRef {
            engine: "postgres".into(),
            target: "prod".into(),
            id: "20261122T020000Z-7f3a9c".parse().unwrap(),
        }
    }

    #[test]
    fn a_signature_is_valid_only_for_its_bytes_and_a_trusted_key() {
        let (k, other) = (key(), key());
        let sig = k.sign(b"{\"a\":1}", &backup()).unwrap();
        let trusted = Signers::parse(&k.public_key(), "test").unwrap();
        let one = |m: &[u8], s: &str| trusted.judge(m, &[Some(s.as_bytes())]);
        assert_eq!(
            one(b"{\"a\":1}", &sig),
            Signature::Valid {
                key_id: k.key_id().into()
            }
        );
        assert!(
            matches!(one(b"{\"a\":2}", &sig), Signature::Invalid { key_id: Some(id), .. } if id == k.key_id())
        );
        let by_other = other.sign(b"{\"a\":1}", &backup()).unwrap();
        assert_eq!(
            one(b"{\"a\":1}", &by_other),
            Signature::UnknownKey {
                key_id: other.key_id().into()
            }
        );
        assert!(matches!(
            one(b"{\"a\":1}", "junk"),
            Signature::Invalid { key_id: None, .. }
        ));
        assert_eq!(trusted.judge(b"x", &[None]), Signature::Unsigned);
        assert_eq!(
            Signers::default().judge(b"{\"a\":1}", &[Some(sig.as_bytes())]),
            Signature::NotChecked {
                key_id: k.key_id().into()
            }
        );
        // Either file may carry the valid signature (a rekey mid-swap).
        assert_eq!(
            trusted.judge(
                b"{\"a\":1}",
                &[Some(by_other.as_bytes()), Some(sig.as_bytes())]
            ),
            Signature::Valid {
                key_id: k.key_id().into()
            }
        );
    }

    #[test]
    fn signers_come_as_key_lines_pub_files_or_pasted_files() {
        let (a, b) = (key(), key());
        let dir = tempfile::tempdir().unwrap();
        let pub_file = dir.path().join("b.pub");
        std::fs::write(
            &pub_file,
            format!(
                "untrusted comment: minisign public key {}\n{}\n",
                b.key_id(),
                b.public_key()
            ),
        )
        .unwrap();
        let text = format!(
            "{}, {}\nuntrusted comment: x\n{}",
            a.public_key(),
            pub_file.display(),
            a.public_key()
        );
        let s = Signers::parse(&text, "DR_SIGNERS").unwrap();
        assert_eq!(s.ids().collect::<Vec<_>>(), [a.key_id(), b.key_id()]);
        let err = Signers::parse("RWnotakey", "--signer")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--signer") && err.contains("RWnotakey"),
            "{err}"
        );
    }

    /// What `minisign -G -W` (0.11) writes: no KDF, and an all-zero checksum.
    #[test]
    fn keys_made_by_the_minisign_tool_without_a_password_sign() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let text = kp.sk.to_box(None).unwrap().into_string();
        let line = text.lines().nth(1).unwrap();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap();
        raw[126..158].fill(0);
        let tool_made = format!(
            "untrusted comment: minisign encrypted secret key\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        let k = SigningKey::parse(&tool_made).unwrap();
        let sig = k.sign(b"m", &backup()).unwrap();
        let trusted = Signers::parse(&kp.pk.to_base64(), "test").unwrap();
        assert!(matches!(
            trusted.judge(b"m", &[Some(sig.as_bytes())]),
            Signature::Valid { .. }
        ));
        // A damaged key (a flipped bit in the secret half) is refused when loaded.
        raw[62] ^= 1;
        let damaged = format!(
            "untrusted comment: x\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        let err = SigningKey::parse(&damaged).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn password_protected_and_public_keys_are_refused_as_signing_keys() {
        let kp = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).unwrap();
        let err = SigningKey::parse(&kp.sk.to_box(None).unwrap().into_string()).unwrap_err();
        assert!(err.contains("-W"), "{err}");
        let k = key();
        let err =
            SigningKey::parse(&format!("untrusted comment: x\n{}\n", k.public_key())).unwrap_err();
        assert!(err.contains("not a minisign secret key"), "{err}");
    }

    #[test]
    fn enforcement_names_the_key_and_the_way_out() {
        let strict = Trust {
            signers: Signers::default(),
            allow_unsigned: false,
            enforce: true,
        };
        let unknown = Signature::UnknownKey {
            key_id: "ABCDEF0123456789".into(),
        };
        assert!(strict
            .refusal(&unknown)
            .unwrap()
            .contains("ABCDEF0123456789"));
        assert!(strict
            .refusal(&Signature::Unsigned)
            .unwrap()
            .contains("--allow-unsigned"));
        let lax = Trust {
            allow_unsigned: true,
            ..strict.clone()
        };
        assert_eq!(lax.refusal(&Signature::Unsigned), None);
        assert!(lax.refusal(&unknown).is_some());
        assert_eq!(
            Trust::report_only(Signers::default()).refusal(&unknown),
            None
        );
    }
}
