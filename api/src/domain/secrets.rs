//! Config vars at rest: each value is sealed with XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`) under a key only the servers hold, with a random 192-bit nonce and the
//! app and variable name as associated data (a sealed value moved to another app or name
//! does not open). The key is a file made at first start with mode 0600
//! (`--secrets-key-file`, default `keystone-secrets.key`): back it up with the database —
//! without it the values cannot be read — and give every instance the same file.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

use super::DomainError;

const NONCE: usize = 24;

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key in `path` (64 hex digits), made with mode 0600 when there is none.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let (hex, made) = crate::files::key_file(path)?;
        if made {
            tracing::info!(file = %path.display(), "created the key that seals config vars (back it up with the database)");
        }
        let key = hex::decode(hex).map_err(|e| std::io::Error::other(e.to_string()))?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { cipher })
    }

    fn aad(app_id: i64, name: &str) -> String {
        format!("keystone-config-var:{app_id}:{name}")
    }

    /// `value` sealed for `name` of app `app_id`: base64 of nonce and ciphertext.
    pub fn seal(&self, app_id: i64, name: &str, value: &str) -> Result<String, DomainError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce)
            .map_err(|e| DomainError::Internal(format!("no randomness for a nonce: {e}")))?;
        let aad = Self::aad(app_id, name);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| DomainError::Internal("cannot seal a config var".into()))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The value sealed for `name` of app `app_id`.
    pub fn open(&self, app_id: i64, name: &str, sealed: &str) -> Result<String, DomainError> {
        let fail = || {
            DomainError::Internal(format!(
                "the config var {name} of app {app_id} does not open with this key (was the key file replaced?)"
            ))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| fail())?;
        if bytes.len() < NONCE {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| fail())?;
        let aad = Self::aad(app_id, name);
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_app_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let secrets = SecretBox::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let sealed = secrets.seal(1, "DB_PASSWORD", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            secrets.seal(1, "DB_PASSWORD", "hunter2").unwrap(),
            "fresh nonces"
        );
        assert_eq!(secrets.open(1, "DB_PASSWORD", &sealed).unwrap(), "hunter2");
        assert!(secrets.open(2, "DB_PASSWORD", &sealed).is_err());
        assert!(secrets.open(1, "OTHER", &sealed).is_err());
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.open(1, "DB_PASSWORD", &sealed).unwrap(), "hunter2");
    }
}
