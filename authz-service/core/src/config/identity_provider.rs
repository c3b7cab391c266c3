//! `[identity_provider]`: the organisation's identity provider, whose
//! tokens callers present.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    /// Expected `iss` of inbound tokens.
    pub issuer: String,
    /// JWKS location; discovered from `<issuer>/.well-known/openid-configuration` when absent.
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Minimum time between two JWKS fetches caused by tokens with an unknown
    /// `kid`, so forged tokens cannot flood the identity provider.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_refetch_min_secs: u64,
    /// How long a verified token's result is remembered (never past its
    /// `exp`), so the steady state skips the signature check; 0 disables.
    #[serde(default = "default_token_cache")]
    pub verified_token_cache_secs: u64,
}

fn default_token_cache() -> u64 {
    300
}

fn default_jwks_refetch() -> u64 {
    5
}

fn default_leeway() -> u64 {
    30
}
