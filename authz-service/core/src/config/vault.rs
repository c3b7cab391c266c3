//! `[vault]`: where the master keys come from.

use std::path::PathBuf;

use serde::Deserialize;

/// Where master keys come from. They are never stored in Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// A file with one `key-id:base64(32 bytes)` per line.
    pub key_file: Option<PathBuf>,
    /// Or an environment variable with the same lines, separated by newlines or commas.
    pub key_env: Option<String>,
    /// Key id used for new ciphertexts; defaults to the last key listed.
    pub active_key: Option<String>,
    /// How long a decrypted credential stays in this process's memory.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_cache_ttl() -> u64 {
    30
}
