//! `[connect]`: the connect page, where people sign in and connect their
//! own identities for per-user servers.

use serde::Deserialize;
use url::Url;

/// `[connect]`: where people connect their own identities. `latchkey serve`
/// serves the page on its HTTP side; sign-in is an OIDC authorization code
/// flow (with PKCE) at the organisation's identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The HTTP side's URL as a browser reaches it (consent links point here).
    pub public_url: Url,
    /// The connect page's OAuth client at the organisation's identity provider.
    pub client_id: String,
    /// Environment variable holding that client's secret (none: a public client).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Authorization and token endpoints; found by OIDC discovery at the
    /// `[identity_provider]` issuer when absent.
    #[serde(default)]
    pub authorization_endpoint: Option<Url>,
    #[serde(default)]
    pub token_endpoint: Option<Url>,
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// How long a signed-in connect session lasts.
    #[serde(default = "default_session_secs")]
    pub session_ttl_secs: u64,
    /// How long a consent link (and a `requestState`) stays usable.
    #[serde(default = "default_consent_secs")]
    pub consent_ttl_secs: u64,
    /// Refresh an access token this long before it expires.
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin_secs: u64,
    /// How long a Check waits for another replica's refresh of the same identity.
    #[serde(default = "default_refresh_wait")]
    pub refresh_wait_ms: u64,
}

fn default_login_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_session_secs() -> u64 {
    3600
}
fn default_consent_secs() -> u64 {
    900
}
fn default_refresh_margin() -> u64 {
    60
}
fn default_refresh_wait() -> u64 {
    // Under Envoy's default 2 s authorization timeout, so a waiting
    // replica answers before the filter gives up.
    1500
}
