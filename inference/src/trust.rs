//! The box's own key pair and the trust policy of `vigil serve`.
//!
//! Every box has an ed25519 key pair, made on first start in `DATA_DIR/keys/` (`box.key`
//! owner-only, `box.pub`), with which it signs the packages it trains itself; that key is
//! always trusted. The operator adds the keys of whoever else may ship models
//! (`--trusted-key`, `trusted_keys` in the file) and decides whether unsigned uploads are
//! refused (`--require-signature`).

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use vigil_models::signature::{generate, parse_key, read_private, write_key_pair};
use vigil_models::TrustPolicy;

use crate::config::Config;

/// Reads the box's key pair, making it on first start.
pub fn box_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let dir = data_dir.join("keys");
    let prefix = dir.join("box");
    let private = prefix.with_extension("key");
    if private.exists() {
        return read_private(&private)
            .with_context(|| format!("cannot read the box key {}", private.display()));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let key = generate().context("cannot make the box key")?;
    write_key_pair(&key, &prefix).context("cannot write the box key")?;
    tracing::info!(path = %private.display(), "made the box key pair");
    Ok(key)
}

/// The policy from the configuration, with the box's key trusted.
pub fn policy(config: &Config, box_key: &SigningKey) -> anyhow::Result<TrustPolicy> {
    let mut trusted = vec![box_key.verifying_key()];
    for given in &config.trusted_keys {
        let key = parse_key(given).with_context(|| {
            format!("trusted key {given:?} is neither a hex key nor a key file")
        })?;
        if !trusted.contains(&key) {
            trusted.push(key);
        }
    }
    Ok(TrustPolicy {
        trusted,
        require_signature: config.require_signature,
    })
}
