//! The identity model: identities (credentials scoped to one server), the
//! users and agents who use them, and connections (which identity a user
//! uses for each per-user server of a gateway). Plain data and the rules
//! about who may use what; storage is `store`'s job; the
//! ciphers are `vault`'s, and a record's secret is sealed and opened here,
//! bound to that record (`identity_aad`), so the vault knows no identity.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vault::{KeyRing, Sealed, Secret, VaultError};

/// Who may select an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Only its owner: not another user, not an administrator.
    Private,
    /// Anyone the policy lets through; belongs to the organisation, so it
    /// outlives its creator's account.
    Global,
}

/// Enabled or disabled: identities, connections, users and agents alike.
/// Disabling deletes nothing; enabling restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Enabled,
    Disabled,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Enabled => "enabled",
            Status::Disabled => "disabled",
        })
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Private => "private",
            Availability::Global => "global",
        })
    }
}

/// What kind of credential an identity holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A header value the operator or user pasted in: an API key, a PAT.
    Static,
    /// Tokens from the server's OAuth provider (access, maybe refresh).
    Oauth,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Static => "static",
            CredentialKind::Oauth => "oauth",
        }
    }
}

/// The sealed part of an identity, once opened. `Debug` never shows values.
#[derive(Clone, PartialEq, Eq)]
pub enum IdentitySecret {
    Static {
        value: Secret,
    },
    Oauth {
        access_token: Secret,
        refresh_token: Option<Secret>,
    },
}

impl fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySecret::Static { .. } => f.write_str("IdentitySecret::Static(<redacted>)"),
            IdentitySecret::Oauth { .. } => f.write_str("IdentitySecret::Oauth(<redacted>)"),
        }
    }
}

/// The plaintext layout that gets sealed; only ever lives in memory.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SecretPayload {
    Static {
        value: String,
    },
    Oauth {
        access_token: String,
        refresh_token: Option<String>,
    },
}

impl IdentitySecret {
    pub fn kind(&self) -> CredentialKind {
        match self {
            IdentitySecret::Static { .. } => CredentialKind::Static,
            IdentitySecret::Oauth { .. } => CredentialKind::Oauth,
        }
    }

    /// The value that goes upstream: the static value, or the access token.
    pub fn upstream_value(&self) -> &Secret {
        match self {
            IdentitySecret::Static { value } => value,
            IdentitySecret::Oauth { access_token, .. } => access_token,
        }
    }

    /// Seals this secret with `key_id`, bound to the id, server and version
    /// of the record that will hold it.
    pub fn seal(
        &self,
        keys: &KeyRing,
        key_id: &str,
        id: &str,
        server: &str,
        version: u64,
    ) -> Result<Sealed, VaultError> {
        keys.seal_with(
            key_id,
            &identity_aad(id, server, version),
            &self.to_plaintext(),
        )
    }

    fn to_plaintext(&self) -> Vec<u8> {
        let payload = match self {
            IdentitySecret::Static { value } => SecretPayload::Static {
                value: value.expose().to_string(),
            },
            IdentitySecret::Oauth {
                access_token,
                refresh_token,
            } => SecretPayload::Oauth {
                access_token: access_token.expose().to_string(),
                refresh_token: refresh_token.as_ref().map(|t| t.expose().to_string()),
            },
        };
        serde_json::to_vec(&payload).unwrap_or_default()
    }

    fn from_plaintext(bytes: &[u8]) -> Option<Self> {
        Some(match serde_json::from_slice(bytes).ok()? {
            SecretPayload::Static { value } => IdentitySecret::Static {
                value: Secret::new(value),
            },
            SecretPayload::Oauth {
                access_token,
                refresh_token,
            } => IdentitySecret::Oauth {
                access_token: Secret::new(access_token),
                refresh_token: refresh_token.map(Secret::new),
            },
        })
    }
}

/// One identity as stored: metadata in the clear, the secret sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    pub id: String,
    pub server: String,
    /// The user who brought it. For a global identity this is history, not a
    /// dependency: the identity keeps working when that user is deactivated.
    pub owner: String,
    pub availability: Availability,
    pub status: Status,
    pub kind: CredentialKind,
    /// OAuth access token expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The provider stopped accepting this identity's refresh token: the
    /// next call asks its owner to authorise again instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consent_required: bool,
    /// Set when Latchkey got this token by exchanging its owner's token
    /// (`[servers.exchange]`), rather than someone storing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchanged: Option<Exchanged>,
    /// Increases on every change of the secret; bound into the ciphertext.
    pub version: u64,
    pub created_by: String,
    pub created_at: String,
    pub updated_by: String,
    pub updated_at: String,
    pub sealed: Sealed,
}

/// Where an exchanged token came from, for the audit trail (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchanged {
    /// `token_exchange` or `id_jag`.
    pub kind: String,
    /// The agent it was exchanged for (named in the token's `act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The issued token's `jti`, when it is a JWT that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// How the ids of exchanged tokens begin; nobody else may take such an id.
pub const EXCHANGED_ID_PREFIX: &str = "exchanged-";

/// The id of the identity holding the token exchanged for `user` acting
/// through `agent` (or alone) at `server` with `scopes`: the same on every
/// replica, so they share one token, and different for any other agent or
/// scopes, so a token issued for one agent never serves another. A digest:
/// user and agent names are the identity provider's and need not fit an id.
pub fn exchanged_identity_id(
    user: &str,
    agent: Option<&str>,
    server: &str,
    scopes: &[String],
) -> String {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    let input = format!(
        "latchkey/v1/exchanged\0{user}\0{}\0{server}\0{}",
        agent.unwrap_or(""),
        scopes.join(" ")
    );
    format!(
        "{EXCHANGED_ID_PREFIX}{}",
        &crate::hex::sha256(input.as_bytes())[..32]
    )
}

/// Why an identity cannot back a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UseError {
    #[error("identity '{0}' is disabled; its owner or an operator can enable it again")]
    Disabled(String),
    #[error("identity '{0}' is private to its owner and cannot be used by anyone else")]
    PrivateToOwner(String),
    #[error("identity '{id}' is for server '{actual}', not '{expected}'")]
    WrongServer {
        id: String,
        actual: String,
        expected: String,
    },
    #[error("identity '{0}' is private; a shared assignment needs a global identity")]
    NotGlobal(String),
}

impl VaultRecord {
    /// Opens this identity's secret; fails if the ciphertext was altered or
    /// belongs to another record.
    pub fn open(&self, keys: &KeyRing) -> Result<IdentitySecret, VaultError> {
        let plain = keys.open(
            &self.id,
            &identity_aad(&self.id, &self.server, self.version),
            &self.sealed,
        )?;
        IdentitySecret::from_plaintext(&plain).ok_or_else(|| VaultError::Tampered(self.id.clone()))
    }

    /// Whether `user` may have this identity's credential injected for `server`.
    pub fn usable_by(&self, user: &str, server: &str) -> Result<(), UseError> {
        self.check_server(server)?;
        if self.availability == Availability::Private && self.owner != user {
            return Err(UseError::PrivateToOwner(self.id.clone()));
        }
        self.check_enabled()
    }

    /// Whether this identity may back a shared-scheme assignment of `server`.
    pub fn usable_as_shared(&self, server: &str) -> Result<(), UseError> {
        self.check_server(server)?;
        if self.availability != Availability::Global {
            return Err(UseError::NotGlobal(self.id.clone()));
        }
        self.check_enabled()
    }

    fn check_server(&self, server: &str) -> Result<(), UseError> {
        if self.server != server {
            return Err(UseError::WrongServer {
                id: self.id.clone(),
                actual: self.server.clone(),
                expected: server.to_string(),
            });
        }
        Ok(())
    }

    fn check_enabled(&self) -> Result<(), UseError> {
        match self.status {
            Status::Enabled => Ok(()),
            Status::Disabled => Err(UseError::Disabled(self.id.clone())),
        }
    }
}

/// Users and agents: principals whose status an operator can change. A
/// principal with no record is enabled (users come from the identity
/// provider; Latchkey only remembers the ones it was told about).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    User,
    Agent,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Agent => "agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    pub id: String,
    pub kind: PrincipalKind,
    pub status: Status,
    pub updated_by: String,
    pub updated_at: String,
    /// A person provisioned over SCIM: the display names of the SCIM
    /// Groups they are in, which stand for their token's `groups`/`roles`
    /// claims in policy (the IdP's SCIM calls are live, a token up to an
    /// hour old). `None`: not provisioned over SCIM, the token's claims hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim_groups: Option<Vec<String>>,
}

/// A user's attachment to a gateway: the identity chosen for each per-user
/// server there. The same identity may appear on several gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub user: String,
    pub gateway: String,
    pub status: Status,
    /// server name → identity id.
    pub identities: BTreeMap<String, String>,
    pub updated_by: String,
    pub updated_at: String,
}

/// Identity ids become parts of Redis keys and URLs: 1–128 characters of
/// `A-Z a-z 0-9 . _ -`.
pub fn valid_identity_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Additional authenticated data of an identity's ciphertext: moving it onto
/// another record (other id, server or version) makes it fail to decrypt.
pub fn identity_aad(id: &str, server: &str, version: u64) -> Vec<u8> {
    format!("latchkey/v1/identity\0{id}\0{server}\0{version}").into_bytes()
}

/// Now, as RFC 3339 UTC, the timestamp format of every record and event.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(availability: Availability, status: Status) -> VaultRecord {
        VaultRecord {
            id: "id1".into(),
            server: "github".into(),
            owner: "alice".into(),
            availability,
            status,
            kind: CredentialKind::Static,
            expires_at: None,
            scopes: vec![],
            consent_required: false,
            exchanged: None,
            version: 1,
            created_by: "alice".into(),
            created_at: now_rfc3339(),
            updated_by: "alice".into(),
            updated_at: now_rfc3339(),
            sealed: Sealed {
                key_id: "k1".into(),
                nonce: String::new(),
                ciphertext: String::new(),
            },
        }
    }

    #[test]
    fn a_sealed_secret_opens_on_its_own_record_only() {
        let keys = KeyRing::parse(&KeyRing::generate_line("k1"), None).unwrap();
        let secret = IdentitySecret::Static {
            value: Secret::new("s3cret"),
        };
        let mut own = record(Availability::Private, Status::Enabled);
        own.sealed = secret.seal(&keys, "k1", "id1", "github", 1).unwrap();
        match own.open(&keys).unwrap() {
            IdentitySecret::Static { value } => assert_eq!(value.expose(), "s3cret"),
            other => panic!("sealed a static secret, opened {other:?}"),
        }
        for moved in [
            VaultRecord {
                id: "id2".into(),
                ..own.clone()
            },
            VaultRecord {
                server: "gitlab".into(),
                ..own.clone()
            },
            VaultRecord {
                version: 2,
                ..own.clone()
            },
        ] {
            assert!(matches!(moved.open(&keys), Err(VaultError::Tampered(_))));
        }
    }

    #[test]
    fn an_exchanged_token_is_one_per_user_agent_server_and_scopes() {
        let scopes = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let id = exchanged_identity_id("alice", Some("helper"), "crm", &scopes(&["a", "b"]));
        assert!(valid_identity_id(&id), "{id}");
        assert_eq!(
            id,
            exchanged_identity_id("alice", Some("helper"), "crm", &scopes(&["b", "a"])),
            "the order scopes are written in does not matter"
        );
        for other in [
            exchanged_identity_id("bob", Some("helper"), "crm", &scopes(&["a", "b"])),
            exchanged_identity_id("alice", None, "crm", &scopes(&["a", "b"])),
            exchanged_identity_id("alice", Some("other"), "crm", &scopes(&["a", "b"])),
            exchanged_identity_id("alice", Some("helper"), "erp", &scopes(&["a", "b"])),
            exchanged_identity_id("alice", Some("helper"), "crm", &scopes(&["a"])),
            // The separators keep names from running into each other.
            exchanged_identity_id("alice\0helper", None, "crm", &scopes(&["a", "b"])),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn identity_ids_are_plain() {
        assert!(valid_identity_id("github-alice.2"));
        for bad in ["", "a b", "a:b", "a/b", "ü", "*", &"x".repeat(129)] {
            assert!(!valid_identity_id(bad), "{bad}");
        }
    }

    #[test]
    fn private_identity_is_only_for_its_owner() {
        let r = record(Availability::Private, Status::Enabled);
        assert_eq!(r.usable_by("alice", "github"), Ok(()));
        assert_eq!(
            r.usable_by("bob", "github"),
            Err(UseError::PrivateToOwner("id1".into()))
        );
        // An administrator is just another user here.
        assert!(r.usable_by("admin", "github").is_err());
        assert_eq!(
            r.usable_as_shared("github"),
            Err(UseError::NotGlobal("id1".into()))
        );
    }

    #[test]
    fn global_identity_is_for_anyone_but_not_when_disabled() {
        let r = record(Availability::Global, Status::Enabled);
        assert_eq!(r.usable_by("bob", "github"), Ok(()));
        assert_eq!(r.usable_as_shared("github"), Ok(()));
        let off = record(Availability::Global, Status::Disabled);
        assert_eq!(
            off.usable_by("alice", "github"),
            Err(UseError::Disabled("id1".into()))
        );
        assert!(off.usable_as_shared("github").is_err());
    }

    #[test]
    fn identity_is_bound_to_its_server() {
        let r = record(Availability::Global, Status::Enabled);
        assert!(matches!(
            r.usable_by("alice", "jira"),
            Err(UseError::WrongServer { .. })
        ));
    }

    #[test]
    fn secret_payload_round_trips_and_never_prints() {
        for s in [
            IdentitySecret::Static {
                value: Secret::new("pat-123"),
            },
            IdentitySecret::Oauth {
                access_token: Secret::new("at-1"),
                refresh_token: Some(Secret::new("rt-1")),
            },
        ] {
            let bytes = s.to_plaintext();
            assert_eq!(IdentitySecret::from_plaintext(&bytes), Some(s.clone()));
            let shown = format!("{s:?}");
            assert!(
                !shown.contains("pat-123") && !shown.contains("at-1") && !shown.contains("rt-1")
            );
        }
        assert_eq!(IdentitySecret::from_plaintext(b"not json"), None);
    }
}
