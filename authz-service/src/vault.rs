//! The credential vault: master keys, AES-256-GCM sealing of identity secrets,
//! records in Redis, and a short-lived in-process cache of decrypted secrets.
//!
//! Each ciphertext carries the id of the key that sealed it and is bound by
//! additional authenticated data to its identity id, server and version, so a
//! ciphertext copied onto another record does not decrypt.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use redis::AsyncCommands;
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
    #[error("credential store (Redis) unavailable: {0}")]
    Unavailable(String),
    #[error(
        "identity '{0}' does not exist; an operator stores it with `latchkey identity put-shared`"
    )]
    NotFound(String),
    #[error("identity record '{id}' is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
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
    active: String,
}

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
        Ok(Self { keys, active })
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

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, VaultError> {
        let cipher = self
            .keys
            .get(&self.active)
            .ok_or_else(|| VaultError::NoKeys("active key missing".into()))?;
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
            key_id: self.active.clone(),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    Private,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStatus {
    Enabled,
    Disabled,
}

/// One identity as stored in Redis: metadata in the clear, the secret sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultRecord {
    pub id: String,
    pub server: String,
    pub owner: String,
    pub availability: Availability,
    pub status: IdentityStatus,
    /// Increases on every change of the secret; part of the AAD.
    pub version: u64,
    pub updated_at: String,
    pub sealed: Sealed,
}

impl VaultRecord {
    fn aad(id: &str, server: &str, version: u64) -> Vec<u8> {
        format!("latchkey/v1/identity\0{id}\0{server}\0{version}").into_bytes()
    }
}

/// Identity records in Redis plus the decrypted-secret cache.
pub struct Vault {
    keys: KeyRing,
    redis: redis::aio::ConnectionManager,
    prefix: String,
    cache: moka::future::Cache<String, Secret>,
}

impl Vault {
    pub async fn connect(
        keys: KeyRing,
        redis_url: &str,
        prefix: &str,
        cache_ttl: Duration,
    ) -> Result<Self, VaultError> {
        let client =
            redis::Client::open(redis_url).map_err(|e| VaultError::Unavailable(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| VaultError::Unavailable(e.to_string()))?;
        Ok(Self {
            keys,
            redis,
            prefix: prefix.to_string(),
            cache: moka::future::Cache::builder()
                .time_to_live(cache_ttl)
                .max_capacity(100_000)
                .build(),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}:identity:{id}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), VaultError> {
        let mut conn = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| VaultError::Unavailable(e.to_string()))
    }

    pub async fn record(&self, id: &str) -> Result<VaultRecord, VaultError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = conn
            .get(self.key(id))
            .await
            .map_err(|e| VaultError::Unavailable(e.to_string()))?;
        let raw = raw.ok_or_else(|| VaultError::NotFound(id.to_string()))?;
        serde_json::from_str(&raw).map_err(|e| VaultError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Stores (or replaces) a global identity's secret; the version increases.
    pub async fn put_global(
        &self,
        id: &str,
        server: &str,
        owner: &str,
        secret: &Secret,
    ) -> Result<VaultRecord, VaultError> {
        let version = match self.record(id).await {
            Ok(existing) => existing.version + 1,
            Err(VaultError::NotFound(_)) => 1,
            Err(e) => return Err(e),
        };
        let sealed = self.keys.seal(
            &VaultRecord::aad(id, server, version),
            secret.expose().as_bytes(),
        )?;
        let record = VaultRecord {
            id: id.to_string(),
            server: server.to_string(),
            owner: owner.to_string(),
            availability: Availability::Global,
            status: IdentityStatus::Enabled,
            version,
            updated_at: now_rfc3339(),
            sealed,
        };
        let json = serde_json::to_string(&record).map_err(|e| VaultError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let mut conn = self.redis.clone();
        conn.set::<_, _, ()>(self.key(id), json)
            .await
            .map_err(|e| VaultError::Unavailable(e.to_string()))?;
        self.cache.invalidate(id).await;
        Ok(record)
    }

    /// The usable secret of a global identity for `server`: from the cache, or
    /// read and decrypted from Redis. Disabled, private or mismatched records are refused.
    pub async fn global_secret(&self, id: &str, server: &str) -> Result<Secret, CredentialError> {
        let cache_key = format!("{server}\0{id}");
        if let Some(s) = self.cache.get(&cache_key).await {
            return Ok(s);
        }
        let record = self.record(id).await?;
        if record.server != server {
            return Err(CredentialError::WrongServer {
                id: id.to_string(),
                server: record.server,
            });
        }
        if record.availability != Availability::Global {
            return Err(CredentialError::NotGlobal(id.to_string()));
        }
        if record.status != IdentityStatus::Enabled {
            return Err(CredentialError::Disabled(id.to_string()));
        }
        let plain = self.keys.open(
            id,
            &VaultRecord::aad(id, server, record.version),
            &record.sealed,
        )?;
        let secret = Secret::new(
            String::from_utf8(plain).map_err(|_| VaultError::Tampered(id.to_string()))?,
        );
        self.cache.insert(cache_key, secret.clone()).await;
        Ok(secret)
    }
}

/// Why a credential could not be produced for a request.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("identity '{0}' is disabled")]
    Disabled(String),
    #[error("identity '{0}' is private and cannot back a shared assignment")]
    NotGlobal(String),
    #[error("identity '{id}' belongs to server '{server}', not to this assignment's server")]
    WrongServer { id: String, server: String },
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(lines: &str) -> KeyRing {
        KeyRing::parse(lines, None).unwrap()
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = ring(&KeyRing::generate_line("k1"));
        let aad = VaultRecord::aad("id1", "srv", 1);
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
        let sealed = k.seal(&VaultRecord::aad("id1", "srv", 1), b"x").unwrap();
        for other in [
            VaultRecord::aad("id2", "srv", 1),
            VaultRecord::aad("id1", "other", 1),
            VaultRecord::aad("id1", "srv", 2),
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
        let aad = VaultRecord::aad("id1", "srv", 1);
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
        let aad = VaultRecord::aad("id", "s", 1);
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
    fn debug_output_hides_secrets_and_keys() {
        let line = KeyRing::generate_line("k1");
        let k = ring(&line);
        let printed = format!("{k:?} {:?}", Secret::new("tok-123"));
        assert!(!printed.contains("tok-123"));
        assert!(!printed.contains(line.split(':').nth(1).unwrap()));
    }
}
