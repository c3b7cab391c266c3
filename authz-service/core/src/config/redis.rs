//! `[redis]`: where the store is (one server, Sentinel or Cluster).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// A Redis Cluster's seed nodes (`redis://host:port`); replaces `url`.
    /// Every Latchkey key carries the prefix as one hash tag, so the change
    /// script's keys share a slot.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Sentinels (`redis://host:port`) that name the master; replaces `url`.
    #[serde(default)]
    pub sentinel_nodes: Vec<String>,
    /// The master's name as the Sentinels know it (`sentinel monitor <name> ...`).
    pub sentinel_master: Option<String>,
    /// Prefix of every key Latchkey writes, so one Redis can hold several deployments.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Bound on connecting and on each command: past it, a request that
    /// needs Redis fails closed rather than waiting.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

fn default_redis_timeout() -> u64 {
    500
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_key_prefix() -> String {
    "latchkey".into()
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            cluster_nodes: Vec::new(),
            sentinel_nodes: Vec::new(),
            sentinel_master: None,
            key_prefix: default_key_prefix(),
            timeout_ms: default_redis_timeout(),
        }
    }
}
