//! `[scim]`: the SCIM 2.0 endpoint (`/scim/v2` on the HTTP side) an
//! identity provider provisions people and groups through.

use serde::Deserialize;
use url::Url;

/// `[scim]`: absent, there is no `/scim/v2` at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    /// Environment variable holding the bearer token the identity provider
    /// presents (its "secret token"). Only the token's SHA-256 is kept.
    pub token_env: String,
    /// Who provisions, for the audit trail: events name `scim:<provider>`
    /// as their actor (e.g. `okta`, `entra`).
    pub provider: String,
    /// The base URL the identity provider reaches `/scim/v2` at, for the
    /// `Location` of created resources; default: the request's `Host`.
    #[serde(default)]
    pub public_url: Option<Url>,
    /// The most Users stored (each is a Redis record and index entries).
    #[serde(default = "default_max_users")]
    pub max_users: usize,
    /// The most Groups stored.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

fn default_max_users() -> usize {
    50_000
}
fn default_max_groups() -> usize {
    5_000
}

impl ScimConfig {
    /// The audit actor of every SCIM change.
    pub fn actor(&self) -> String {
        format!("scim:{}", self.provider)
    }

    pub(super) fn problem(&self) -> Option<String> {
        if self.token_env.trim().is_empty() {
            return Some("token_env must name the environment variable holding the identity provider's bearer token".into());
        }
        let provider_ok = !self.provider.is_empty()
            && self.provider.len() <= 64
            && self
                .provider
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !provider_ok {
            return Some(format!(
                "provider '{}' must be 1-64 characters of A-Z a-z 0-9 . _ - (it names the audit actor, scim:<provider>)",
                self.provider
            ));
        }
        if self.max_users == 0 || self.max_groups == 0 {
            return Some("max_users and max_groups must be at least 1".into());
        }
        None
    }
}
