//! The credential vault's cryptography: master keys (from a key file or an
//! environment variable, never from Redis) and AES-256-GCM sealing of
//! identity secrets. Records live in Redis (`store`); decrypted secrets only
//! in the replica's memory (`cache`).
//!
//! Each ciphertext carries the id of the key that sealed it and is bound by
//! additional authenticated data to its identity id, server and version, so a
//! ciphertext copied onto another record does not decrypt.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::config::VaultConfig;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no master keys loaded: {0}")]
    NoKeys(String),
    #[error("master key '{0}' is malformed: expected `key-id:base64` of 32 bytes")]
    BadKey(String),
    #[error("identity '{id}' was sealed with key '{key_id}', which this replica does not have")]
    UnknownKey { id: String, key_id: String },
    #[error("identity '{0}' failed to decrypt: wrong key or the record was tampered with")]
    Tampered(String),
}

/// A decrypted secret. Its `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The master keys this replica holds. Never serialized, never logged.
pub struct KeyRing {
    keys: BTreeMap<String, Aes256Gcm>,
    /// Per master key, an HMAC key derived from it for short-lived signed
    /// values (MCP `requestState`): one secret to manage, not two.
    signing: BTreeMap<String, aws_lc_rs::hmac::Key>,
    /// Per master key, an AES-256-GCM key derived from it for short-lived
    /// values Latchkey hands a browser and reads back (the connect page's
    /// sign-in and authorisation flows), so they need no server state.
    sealing: BTreeMap<String, Aes256Gcm>,
    active: String,
}

/// Domain separation for [`KeyRing::signing_key`].
const SIGNING_KEY_LABEL: &[u8] = b"latchkey/signing-key/v1";
/// Domain separation for [`KeyRing::seal_value`].
const SEALING_KEY_LABEL: &[u8] = b"latchkey/sealed-value-key/v1";

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// Parses `key-id:base64` entries separated by newlines or commas; `#` starts a comment.
    pub fn parse(text: &str, active: Option<&str>) -> Result<Self, VaultError> {
        let mut keys = BTreeMap::new();
        let mut signing = BTreeMap::new();
        let mut sealing = BTreeMap::new();
        let mut last = None;
        for entry in text
            .split(['\n', ','])
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
        {
            let (id, b64) = entry
                .split_once(':')
                .ok_or_else(|| VaultError::BadKey("<entry without ':'>".into()))?;
            let id = id.trim().to_string();
            let bytes = B64
                .decode(b64.trim())
                .map_err(|_| VaultError::BadKey(id.clone()))?;
            if bytes.len() != 32 || id.is_empty() {
                return Err(VaultError::BadKey(id));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            keys.insert(id.clone(), cipher);
            let master = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes);
            let derived = aws_lc_rs::hmac::sign(&master, SIGNING_KEY_LABEL);
            signing.insert(
                id.clone(),
                aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref()),
            );
            let derived = aws_lc_rs::hmac::sign(&master, SEALING_KEY_LABEL);
            sealing.insert(
                id.clone(),
                Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(derived.as_ref())),
            );
            last = Some(id);
        }
        let active = match active {
            Some(a) if keys.contains_key(a) => a.to_string(),
            Some(a) => {
                return Err(VaultError::NoKeys(format!(
                    "active key '{a}' is not among the loaded keys"
                )));
            }
            None => last.ok_or_else(|| VaultError::NoKeys("the key source is empty".into()))?,
        };
        Ok(Self {
            keys,
            signing,
            sealing,
            active,
        })
    }

    pub fn from_config(cfg: &VaultConfig) -> Result<Self, VaultError> {
        let text = match (&cfg.key_file, &cfg.key_env) {
            (Some(path), _) => read_key_file(path)?,
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                VaultError::NoKeys(format!("environment variable {var} is not set"))
            })?,
            (None, None) => {
                return Err(VaultError::NoKeys("set [vault] key_file or key_env".into()));
            }
        };
        Self::parse(&text, cfg.active_key.as_deref())
    }

    /// A fresh random key, formatted as a key-file line.
    pub fn generate_line(key_id: &str) -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        format!("{key_id}:{}", B64.encode(key))
    }

    /// The HMAC-SHA256 key derived from master key `id`, for values Latchkey
    /// signs and later checks itself.
    pub fn signing_key(&self, id: &str) -> Option<&aws_lc_rs::hmac::Key> {
        self.signing.get(id)
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Encrypts and authenticates a short-lived value Latchkey gives away
    /// and later reads back (a cookie): `<kid>.<nonce>.<ciphertext>`, each
    /// base64url, under the active master key's derived sealing key. `label`
    /// is authenticated with it (say, the cookie's name), so a value sealed
    /// for one use does not open for another.
    pub fn seal_value(&self, label: &str, plaintext: &[u8]) -> Option<String> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        let cipher = self.sealing.get(&self.active)?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: label.as_bytes(),
                },
            )
            .ok()?;
        Some(format!(
            "{}.{}.{}",
            B64URL.encode(&self.active),
            B64URL.encode(nonce),
            B64URL.encode(ciphertext)
        ))
    }

    /// Opens a value [`KeyRing::seal_value`] sealed under `label` with any
    /// loaded master key; `None` for anything else (altered, another label,
    /// a key this replica does not hold, not in the form).
    pub fn open_value(&self, label: &str, sealed: &str) -> Option<Vec<u8>> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
        let mut parts = sealed.split('.');
        let (kid, nonce, ciphertext) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let kid = String::from_utf8(B64URL.decode(kid).ok()?).ok()?;
        let cipher = self.sealing.get(&kid)?;
        let nonce = B64URL.decode(nonce).ok().filter(|n| n.len() == NONCE_LEN)?;
        let ciphertext = B64URL.decode(ciphertext).ok()?;
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: label.as_bytes(),
                },
            )
            .ok()
    }

    /// Seals with the configured active key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, VaultError> {
        self.seal_with(&self.active.clone(), aad, plaintext)
    }

    /// Seals with a fresh random nonce under `key_id`.
    pub fn seal_with(
        &self,
        key_id: &str,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Sealed, VaultError> {
        let cipher = self.keys.get(key_id).ok_or_else(|| {
            VaultError::NoKeys(format!(
                "key '{key_id}' is the active key but is not loaded on this replica; add it to the key file"
            ))
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| VaultError::NoKeys("encryption failed".into()))?;
        Ok(Sealed {
            key_id: key_id.to_string(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    pub fn open(&self, id: &str, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, VaultError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey {
                id: id.to_string(),
                key_id: sealed.key_id.clone(),
            })?;
        let nonce = B64
            .decode(&sealed.nonce)
            .ok()
            .filter(|n| n.len() == NONCE_LEN)
            .ok_or_else(|| VaultError::Tampered(id.to_string()))?;
        let ciphertext = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| VaultError::Tampered(id.to_string()))?;
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad,
                },
            )
            .map_err(|_| VaultError::Tampered(id.to_string()))
    }
}

fn read_key_file(path: &Path) -> Result<String, VaultError> {
    std::fs::read_to_string(path)
        .map_err(|e| VaultError::NoKeys(format!("cannot read key file {}: {e}", path.display())))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl KeyRing {
    /// Whether this replica holds the key `key_id`.
    pub fn has(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Ids of every loaded key (never the key material).
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Additional authenticated data shaped like a record's (`identity`
    /// binds the real one).
    fn aad(id: &str, server: &str, version: u64) -> Vec<u8> {
        format!("test\0{id}\0{server}\0{version}").into_bytes()
    }

    fn ring(lines: &str) -> KeyRing {
        KeyRing::parse(lines, None).unwrap()
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = ring(&KeyRing::generate_line("k1"));
        let aad = aad("id1", "srv", 1);
        let a = k.seal(&aad, b"s3cret").unwrap();
        let b = k.seal(&aad, b"s3cret").unwrap();
        assert_ne!(a.nonce, b.nonce, "every write needs its own nonce");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_eq!(k.open("id1", &aad, &a).unwrap(), b"s3cret");
        assert!(!a.ciphertext.contains("s3cret"));
    }

    #[test]
    fn ciphertext_bound_to_its_record() {
        let k = ring(&KeyRing::generate_line("k1"));
        let sealed = k.seal(&aad("id1", "srv", 1), b"x").unwrap();
        for other in [
            aad("id2", "srv", 1),
            aad("id1", "other", 1),
            aad("id1", "srv", 2),
        ] {
            assert!(matches!(
                k.open("id1", &other, &sealed),
                Err(VaultError::Tampered(_))
            ));
        }
    }

    #[test]
    fn flipped_byte_is_rejected() {
        let k = ring(&KeyRing::generate_line("k1"));
        let aad = aad("id1", "srv", 1);
        let mut sealed = k.seal(&aad, b"secret-value").unwrap();
        let mut raw = B64.decode(&sealed.ciphertext).unwrap();
        raw[0] ^= 1;
        sealed.ciphertext = B64.encode(raw);
        assert!(matches!(
            k.open("id1", &aad, &sealed),
            Err(VaultError::Tampered(_))
        ));
    }

    #[test]
    fn old_key_still_opens_after_new_active_key() {
        let l1 = KeyRing::generate_line("k1");
        let l2 = KeyRing::generate_line("k2");
        let old = ring(&l1);
        let aad = aad("id", "s", 1);
        let sealed = old.seal(&aad, b"v").unwrap();
        let both = ring(&format!("{l1}\n{l2}"));
        assert_eq!(both.active_id(), "k2");
        assert_eq!(both.open("id", &aad, &sealed).unwrap(), b"v");
        let only_new = ring(&l2);
        assert!(matches!(
            only_new.open("id", &aad, &sealed),
            Err(VaultError::UnknownKey { .. })
        ));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_material() {
        let err = KeyRing::parse("k1:dG9vLXNob3J0", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("k1") && !err.contains("dG9vLXNob3J0"), "{err}");
        let err = KeyRing::parse("c2VjcmV0LWtleS1tYXRlcmlhbA==", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(KeyRing::parse("", None).is_err());
        assert!(KeyRing::parse(&KeyRing::generate_line("a"), Some("b")).is_err());
    }

    #[test]
    fn sealed_values_open_only_under_their_label_and_unaltered() {
        let l1 = KeyRing::generate_line("k1");
        let k = ring(&l1);
        let a = k.seal_value("cookie-a", b"flow").unwrap();
        let b = k.seal_value("cookie-a", b"flow").unwrap();
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.contains("flow"));
        assert_eq!(k.open_value("cookie-a", &a).unwrap(), b"flow");
        assert!(k.open_value("cookie-b", &a).is_none(), "bound to its label");
        let mut altered = a.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(k.open_value("cookie-a", &altered).is_none());
        assert!(k.open_value("cookie-a", "").is_none());
        assert!(k.open_value("cookie-a", &format!("{a}.x")).is_none());
        // Another master key opens nothing; after rotation the old key still does.
        let l2 = KeyRing::generate_line("k2");
        assert!(ring(&l2).open_value("cookie-a", &a).is_none());
        let both = ring(&format!("{l1}\n{l2}"));
        assert_eq!(both.open_value("cookie-a", &a).unwrap(), b"flow");
    }

    #[test]
    fn debug_output_hides_secrets_and_keys() {
        let line = KeyRing::generate_line("k1");
        let k = ring(&line);
        let printed = format!("{k:?} {:?}", Secret::new("tok-123"));
        assert!(!printed.contains("tok-123"));
        assert!(!printed.contains(line.split(':').nth(1).unwrap()));
    }
}
