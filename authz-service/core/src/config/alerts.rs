//! `[alerts]`: refusals worth a person's attention, sent to a webhook as
//! well as counted in `/metrics` (where the shipped Prometheus rules in
//! `envoy/prometheus/` read them).

use serde::Deserialize;

/// Decision reasons sent when `[alerts] reasons` is not set: what the
/// shipped alerting rules watch (hidden tools and constraints probed, an
/// unknown agent, disabled principals and identities still tried, tokens
/// that can no longer be renewed).
pub const DEFAULT_ALERT_REASONS: [&str; 9] = [
    "hidden_by_policy",
    "constraint_violation",
    "unknown_agent",
    "user_deactivated",
    "agent_disabled",
    "identity_disabled",
    "connection_disabled",
    "shared_identity_needs_tokens",
    "exchange_refused",
];

/// `[alerts]`: a webhook that receives, every `flush_secs`, the refusals
/// of those `reasons` grouped by who and where (with counts), and the
/// token renewals that failed, as one JSON body signed with HMAC-SHA256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    pub webhook_url: url::Url,
    /// The environment variable holding the HMAC key the receiver checks
    /// the `latchkey-signature` header with.
    pub secret_env: String,
    /// How long refusals gather before one delivery.
    #[serde(default = "default_flush_secs")]
    pub flush_secs: u64,
    /// Deliveries tried per batch (with doubling back-off) before it is
    /// given up (logged, counted).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Decision reasons sent; default [`DEFAULT_ALERT_REASONS`].
    #[serde(default = "default_reasons")]
    pub reasons: Vec<String>,
}

fn default_flush_secs() -> u64 {
    10
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout_ms() -> u64 {
    3000
}
fn default_reasons() -> Vec<String> {
    DEFAULT_ALERT_REASONS
        .iter()
        .map(|r| r.to_string())
        .collect()
}

impl AlertsConfig {
    /// Refused at load: a URL that is not http(s), plain http off
    /// loopback (the body names people and agents), an empty variable
    /// name, a zero flush interval or attempt count.
    pub fn validate(&self) -> Result<(), String> {
        let url = &self.webhook_url;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "[alerts] webhook_url {url}: plain http is allowed on loopback only (alerts name people and agents); use https"
                ));
            }
            other => {
                return Err(format!(
                    "[alerts] webhook_url {url}: scheme '{other}' is not http or https"
                ));
            }
        }
        if self.secret_env.trim().is_empty() {
            return Err(
                "[alerts] secret_env names the environment variable holding the webhook's HMAC key; it is empty".into(),
            );
        }
        if self.flush_secs == 0 || self.max_attempts == 0 {
            return Err("[alerts] flush_secs and max_attempts must be at least 1".into());
        }
        Ok(())
    }
}
