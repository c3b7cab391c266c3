//! Capabilities gate administration, not fixed role names: a token's claims
//! grant them directly (the configured capabilities claim) or through the
//! groups and roles it lists, mapped in `[admin.roles]`. Managing your own
//! identities and connections needs no capability at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Manage other people's identities; create and make global ones.
    IdentitiesManage,
    /// Deactivate and reactivate users.
    UsersManage,
    /// Disable and enable agents.
    AgentsManage,
    /// Manage other people's connections.
    ConnectionsManage,
    /// List and rotate master keys.
    KeysManage,
    /// Change upstream servers (config-file managed today).
    ServersManage,
    /// Change gateways and their assignments (config-file managed today).
    GatewaysManage,
    /// Approve or deny other people's tool calls held for approval (with
    /// the role the rule names).
    ApprovalsDecide,
    /// Provision people and groups over SCIM (`/scim/v2`). Held only by
    /// the `[scim]` bearer token, the identity provider's: a person's
    /// token never carries it (see [`Capability::claimable`]).
    ScimProvision,
}

const ALL: [(Capability, &str); 9] = [
    (Capability::IdentitiesManage, "identities:manage"),
    (Capability::UsersManage, "users:manage"),
    (Capability::AgentsManage, "agents:manage"),
    (Capability::ConnectionsManage, "connections:manage"),
    (Capability::KeysManage, "keys:manage"),
    (Capability::ServersManage, "servers:manage"),
    (Capability::GatewaysManage, "gateways:manage"),
    (Capability::ApprovalsDecide, "approvals:decide"),
    (Capability::ScimProvision, "scim:provision"),
];

impl Capability {
    pub fn parse(name: &str) -> Option<Self> {
        ALL.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }

    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
            .unwrap_or("")
    }

    /// Whether a token's claims (or `[admin.roles]`) can grant it. SCIM
    /// provisioning is the identity provider's, through its own token:
    /// an operator who could claim it could rewrite who is in which group.
    pub fn claimable(self) -> bool {
        self != Capability::ScimProvision
    }

    /// Every capability name, for error messages.
    pub fn names() -> String {
        ALL.iter()
            .filter(|(c, _)| c.claimable())
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a token's claims grant capabilities: `[admin]`'s claim settings,
/// borrowed (`AdminConfig::claim_grants`), so this vocabulary does not
/// depend on the config model that validates names against it.
#[derive(Debug, Clone, Copy)]
pub struct ClaimGrants<'a> {
    /// The claim listing capabilities directly.
    pub capabilities_claim: &'a str,
    /// Claims whose values are group or role names, looked up in `roles`.
    pub role_claims: &'a [String],
    /// Group or role name → the capabilities it grants.
    pub roles: &'a BTreeMap<String, Vec<String>>,
}

/// The capabilities one caller holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities(BTreeSet<Capability>);

impl Capabilities {
    /// Reads capabilities from verified token claims. Unknown names are
    /// ignored: an identity provider may carry capabilities of other systems.
    pub fn from_claims(claims: &Map<String, Value>, grants: &ClaimGrants<'_>) -> Self {
        let mut held = BTreeSet::new();
        for name in strings(claims.get(grants.capabilities_claim)) {
            if let Some(c) = Capability::parse(name).filter(|c| c.claimable()) {
                held.insert(c);
            }
        }
        for claim in grants.role_claims {
            for role in strings(claims.get(claim)) {
                for name in grants.roles.get(role).into_iter().flatten() {
                    if let Some(c) = Capability::parse(name).filter(|c| c.claimable()) {
                        held.insert(c);
                    }
                }
            }
        }
        Self(held)
    }

    /// Exactly `held`: what a credential other than a person's token
    /// carries (the `[scim]` token: `scim:provision`).
    pub fn only(held: &[Capability]) -> Self {
        Self(held.iter().copied().collect())
    }

    pub fn has(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|c| c.name().to_string()).collect()
    }
}

/// A claim as a list of strings: a JSON array of strings, or one
/// space-separated string (the OAuth `scope` convention).
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `[admin]`'s defaults (`latchkey_capabilities`; `groups`, `roles`)
    /// with one role mapped (leaked: a test's few bytes).
    fn admin() -> ClaimGrants<'static> {
        let roles = BTreeMap::from([(
            "secops".to_string(),
            vec!["identities:manage".to_string(), "keys:manage".to_string()],
        )]);
        ClaimGrants {
            capabilities_claim: "latchkey_capabilities",
            role_claims: Vec::leak(vec!["groups".to_string(), "roles".to_string()]),
            roles: Box::leak(Box::new(roles)),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn direct_claim_as_array_or_string() {
        let c = Capabilities::from_claims(
            &claims(json!({"latchkey_capabilities": ["users:manage", "unknown:thing"]})),
            &admin(),
        );
        assert!(c.has(Capability::UsersManage));
        assert_eq!(c.names(), vec!["users:manage"]);
        let c = Capabilities::from_claims(
            &claims(json!({"latchkey_capabilities": "agents:manage keys:manage"})),
            &admin(),
        );
        assert!(c.has(Capability::AgentsManage) && c.has(Capability::KeysManage));
    }

    #[test]
    fn roles_and_groups_map_to_capabilities() {
        let c = Capabilities::from_claims(&claims(json!({"groups": ["secops", "eng"]})), &admin());
        assert!(c.has(Capability::IdentitiesManage) && c.has(Capability::KeysManage));
        assert!(!c.has(Capability::UsersManage));
        let c = Capabilities::from_claims(&claims(json!({"roles": "secops"})), &admin());
        assert!(c.has(Capability::IdentitiesManage));
    }

    #[test]
    fn nothing_granted_without_claims_and_case_matters() {
        let none = Capabilities::from_claims(&claims(json!({"sub": "x"})), &admin());
        assert_eq!(none, Capabilities::default());
        let c = Capabilities::from_claims(
            &claims(json!({"latchkey_capabilities": ["Users:Manage"], "groups": ["SecOps"]})),
            &admin(),
        );
        assert_eq!(c, Capabilities::default());
    }

    #[test]
    fn scim_provisioning_is_never_granted_by_a_token_s_claims() {
        let c = Capabilities::from_claims(
            &claims(json!({"latchkey_capabilities": ["scim:provision"]})),
            &admin(),
        );
        assert!(!c.has(Capability::ScimProvision));
        assert!(Capabilities::only(&[Capability::ScimProvision]).has(Capability::ScimProvision));
    }

    #[test]
    fn names_round_trip() {
        for (c, n) in ALL {
            assert_eq!(Capability::parse(n), Some(c));
            assert_eq!(c.to_string(), n);
        }
    }
}
