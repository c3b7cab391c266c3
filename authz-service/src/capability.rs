//! Capabilities gate administration, not fixed role names: a token's claims
//! grant them directly (the configured capabilities claim) or through the
//! groups and roles it lists, mapped in `[admin.roles]`. Managing your own
//! identities and connections needs no capability at all.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::config::AdminConfig;

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
}

const ALL: [(Capability, &str); 7] = [
    (Capability::IdentitiesManage, "identities:manage"),
    (Capability::UsersManage, "users:manage"),
    (Capability::AgentsManage, "agents:manage"),
    (Capability::ConnectionsManage, "connections:manage"),
    (Capability::KeysManage, "keys:manage"),
    (Capability::ServersManage, "servers:manage"),
    (Capability::GatewaysManage, "gateways:manage"),
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

    /// Every capability name, for error messages.
    pub fn names() -> String {
        ALL.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The capabilities one caller holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities(BTreeSet<Capability>);

impl Capabilities {
    /// Reads capabilities from verified token claims. Unknown names are
    /// ignored: an identity provider may carry capabilities of other systems.
    pub fn from_claims(claims: &Map<String, Value>, admin: &AdminConfig) -> Self {
        let mut held = BTreeSet::new();
        for name in strings(claims.get(&admin.capabilities_claim)) {
            if let Some(c) = Capability::parse(name) {
                held.insert(c);
            }
        }
        for claim in &admin.role_claims {
            for role in strings(claims.get(claim)) {
                for name in admin.roles.get(role).into_iter().flatten() {
                    if let Some(c) = Capability::parse(name) {
                        held.insert(c);
                    }
                }
            }
        }
        Self(held)
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

    fn admin() -> AdminConfig {
        let mut a = AdminConfig::default();
        a.roles.insert(
            "secops".into(),
            vec!["identities:manage".into(), "keys:manage".into()],
        );
        a
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
    fn names_round_trip() {
        for (c, n) in ALL {
            assert_eq!(Capability::parse(n), Some(c));
            assert_eq!(c.to_string(), n);
        }
    }
}
