//! Package signatures and the trust policy.
//!
//! A signature is an ed25519 signature over the exact bytes of `manifest.json`; since the
//! manifest carries the blake3 of the weights, it covers the whole package. It travels as
//! `manifest.sig`, a small JSON document naming the algorithm, the signer's public key and the
//! signature (hex):
//!
//! ```json
//! {"algorithm": "ed25519", "key": "<64 hex>", "signature": "<128 hex>"}
//! ```
//!
//! Keys are files of hex text: a private key (`NAME.key`, the 32-byte seed, owner-only) and its
//! public key (`NAME.pub`). A [`TrustPolicy`] lists the trusted public keys and says whether a
//! package must be signed by one of them. Whatever the policy, a signature that is present but
//! does not verify refuses the package: it was altered after signing.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::PackageError;

/// The algorithm name written into `manifest.sig`.
pub const ALGORITHM: &str = "ed25519";

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not a hex-encoded ed25519 key")]
    Invalid { what: String },
    #[error("no randomness for a new key")]
    Random,
}

/// The file `manifest.sig` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    /// The signer's public key, hex.
    pub key: String,
    /// The signature over the manifest bytes, hex.
    pub signature: String,
}

/// A short, stable name for a public key: the first 16 hex digits of its blake3.
pub fn key_id(key: &VerifyingKey) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..16].to_owned()
}

/// A new key pair from the operating system's randomness.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| KeyError::Random)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a public key from hex text.
pub fn parse_public(text: &str) -> Result<VerifyingKey, KeyError> {
    let invalid = || KeyError::Invalid {
        what: "the public key".into(),
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(invalid)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| invalid())
}

/// Reads a public key file (hex text).
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_public(&text).map_err(|_| KeyError::Invalid {
        what: path.display().to_string(),
    })
}

/// A public key given as hex or as the path of a key file (as flags and config take them).
pub fn parse_key(given: &str) -> Result<VerifyingKey, KeyError> {
    parse_public(given).or_else(|_| read_public(Path::new(given.trim())))
}

/// Reads a private key file (hex of the 32-byte seed).
pub fn read_private(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Invalid {
            what: path.display().to_string(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `PREFIX.key` (owner-only, created new: an existing key is never overwritten) and
/// `PREFIX.pub`.
pub fn write_key_pair(key: &SigningKey, prefix: &Path) -> Result<(), KeyError> {
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Io { path, source }
    };
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&private).map_err(io(&private))?;
        file.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&private))?;
    }
    std::fs::write(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )
    .map_err(io(&public))?;
    Ok(())
}

/// Signs manifest bytes: the contents of `manifest.sig`.
pub fn sign(manifest: &[u8], key: &SigningKey) -> Vec<u8> {
    let file = SignatureFile {
        algorithm: ALGORITHM.into(),
        key: hex::encode(key.verifying_key().as_bytes()),
        signature: hex::encode(key.sign(manifest).to_bytes()),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Signs the package in `dir`: writes `manifest.sig` over the exact bytes of its
/// `manifest.json`. The caller verifies the package first; a signature vouches for a whole,
/// working package.
pub fn sign_dir(dir: &Path, key: &SigningKey) -> std::io::Result<()> {
    let manifest = std::fs::read(dir.join(crate::MANIFEST_FILE))?;
    let path = dir.join(crate::SIGNATURE_FILE);
    let tmp = dir.join(".manifest.sig.tmp");
    std::fs::write(&tmp, sign(&manifest, key))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Which keys are trusted and whether packages must be signed.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    pub trusted: Vec<VerifyingKey>,
    pub require_signature: bool,
}

/// What the signature check found for a package that passed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SignatureState {
    /// No `manifest.sig` (allowed by the policy).
    Unsigned,
    /// Signed by a trusted key.
    Trusted { key_id: String },
    /// Validly signed by a key the policy does not list (allowed because signatures are not
    /// required).
    Untrusted { key_id: String },
}

impl SignatureState {
    /// The signer's key id, if signed.
    pub fn signer(&self) -> Option<&str> {
        match self {
            SignatureState::Unsigned => None,
            SignatureState::Trusted { key_id } | SignatureState::Untrusted { key_id } => {
                Some(key_id)
            }
        }
    }
}

impl TrustPolicy {
    /// Checks `signature` (the bytes of `manifest.sig`, if any) over `manifest`.
    pub fn check(
        &self,
        manifest: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<SignatureState, PackageError> {
        let Some(bytes) = signature else {
            return if self.require_signature {
                Err(PackageError::SignatureMissing)
            } else {
                Ok(SignatureState::Unsigned)
            };
        };
        let invalid = |why: &str| PackageError::SignatureInvalid(why.to_owned());
        let file: SignatureFile =
            serde_json::from_slice(bytes).map_err(|_| invalid("manifest.sig is not readable"))?;
        if file.algorithm != ALGORITHM {
            return Err(invalid("the signature algorithm is not ed25519"));
        }
        let key = parse_public(&file.key).map_err(|_| invalid("the signer key is malformed"))?;
        let raw: [u8; 64] = hex::decode(&file.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid("the signature is malformed"))?;
        key.verify(manifest, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| invalid("the signature does not match the manifest"))?;
        let key_id = key_id(&key);
        if self.trusted.contains(&key) {
            Ok(SignatureState::Trusted { key_id })
        } else if self.require_signature {
            Err(PackageError::SignatureUntrusted { key_id })
        } else {
            Ok(SignatureState::Untrusted { key_id })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_over_the_bytes_it_signed_and_under_trusted_keys() {
        let key = generate().unwrap();
        let other = generate().unwrap();
        let manifest = br#"{"detector": "pump"}"#;
        let sig = sign(manifest, &key);
        let trusting = TrustPolicy {
            trusted: vec![key.verifying_key()],
            require_signature: true,
        };
        let state = trusting.check(manifest, Some(&sig)).unwrap();
        assert_eq!(state.signer(), Some(key_id(&key.verifying_key()).as_str()));
        assert!(matches!(state, SignatureState::Trusted { .. }));

        // One byte of the manifest changed.
        let edited = br#"{"detector": "pumq"}"#;
        let err = trusting.check(edited, Some(&sig)).unwrap_err();
        assert_eq!(err.reason(), "signature_invalid");
        // Missing when required.
        assert_eq!(
            trusting.check(manifest, None).unwrap_err().reason(),
            "signature_missing"
        );
        // Valid, but by a key nobody trusts.
        let by_other = sign(manifest, &other);
        assert_eq!(
            trusting
                .check(manifest, Some(&by_other))
                .unwrap_err()
                .reason(),
            "signature_untrusted"
        );
        // A lenient policy accepts unsigned and untrusted, never invalid.
        let lenient = TrustPolicy::default();
        assert_eq!(
            lenient.check(manifest, None).unwrap(),
            SignatureState::Unsigned
        );
        assert!(matches!(
            lenient.check(manifest, Some(&by_other)).unwrap(),
            SignatureState::Untrusted { .. }
        ));
        assert_eq!(
            lenient.check(edited, Some(&sig)).unwrap_err().reason(),
            "signature_invalid"
        );
        assert_eq!(
            lenient
                .check(manifest, Some(b"garbage"))
                .unwrap_err()
                .reason(),
            "signature_invalid"
        );
    }

    #[test]
    fn key_files_round_trip_and_the_private_key_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("ops");
        let key = generate().unwrap();
        write_key_pair(&key, &prefix).unwrap();
        let private = read_private(&prefix.with_extension("key")).unwrap();
        let public = read_public(&prefix.with_extension("pub")).unwrap();
        assert_eq!(private.to_bytes(), key.to_bytes());
        assert_eq!(public, key.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(prefix.with_extension("key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(write_key_pair(&generate().unwrap(), &prefix).is_err());
        assert!(parse_public("not hex").is_err());
    }
}
