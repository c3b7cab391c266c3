//! `[admin]`: the operator API's listener and who may call it.

use std::net::SocketAddr;

use serde::Deserialize;

/// The operator API (`latchkey.admin.v1.Admin`) and who may do what there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The `aud` admin tokens must carry (not a gateway's: a token for
    /// calling tools must not administer the vault).
    #[serde(default = "default_admin_audience")]
    pub audience: String,
    /// A claim listing capabilities directly (array, or space-separated string).
    #[serde(default = "default_capabilities_claim")]
    pub capabilities_claim: String,
    /// Claims whose values are group or role names, looked up in `roles`.
    #[serde(default = "default_role_claims")]
    pub role_claims: Vec<String>,
    /// Group or role name → the capabilities it grants.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9192))
}
fn default_admin_audience() -> String {
    "latchkey-admin".into()
}
fn default_capabilities_claim() -> String {
    "latchkey_capabilities".into()
}
fn default_role_claims() -> Vec<String> {
    vec!["groups".into(), "roles".into()]
}

impl AdminConfig {
    /// The claim settings `Capabilities::from_claims` reads.
    pub fn claim_grants(&self) -> crate::capability::ClaimGrants<'_> {
        crate::capability::ClaimGrants {
            capabilities_claim: &self.capabilities_claim,
            role_claims: &self.role_claims,
            roles: &self.roles,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            audience: default_admin_audience(),
            capabilities_claim: default_capabilities_claim(),
            role_claims: default_role_claims(),
            roles: Default::default(),
        }
    }
}
