//! Audit events: what changed or was decided, by whom, when. This module
//! owns the event schema; events are written to the Redis stream by `store`
//! (in the same transaction as the change they describe, so a change without
//! its event cannot happen) and echoed to the structured log.
//!
//! No event carries a secret: record summaries list status, availability,
//! version and key id, never the sealed value.

use serde::Serialize;
use serde_json::{Value, json};

use crate::identity::{ConnectionRecord, PrincipalRecord, VaultRecord, now_rfc3339};

/// One lifecycle event: a create, change, disable, enable, delete or key rotation.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleEvent {
    pub time: String,
    /// Always `"lifecycle"`; decision events share the stream with another type.
    pub event: &'static str,
    /// e.g. `identity.create`, `identity.disable`, `user.deactivate`, `keys.rotate`.
    pub action: String,
    /// The subject of the token that asked for the change.
    pub actor: String,
    /// `identity`, `user`, `agent`, `connection`, `keys`.
    pub target_kind: &'static str,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

impl LifecycleEvent {
    pub fn new(
        action: impl Into<String>,
        actor: &str,
        target_kind: &'static str,
        target: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        Self {
            time: now_rfc3339(),
            event: "lifecycle",
            action: action.into(),
            actor: actor.to_string(),
            target_kind,
            target: target.to_string(),
            before,
            after,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Echoes the event to the structured log (target `latchkey::audit`).
    pub fn log(&self) {
        tracing::info!(target: "latchkey::audit", event = %self.to_json());
    }
}

/// What an event shows of an identity: everything but the ciphertext.
pub fn identity_summary(r: &VaultRecord) -> Value {
    json!({
        "server": r.server,
        "owner": r.owner,
        "availability": r.availability,
        "status": r.status,
        "kind": r.kind,
        "version": r.version,
        "key_id": r.sealed.key_id,
    })
}

pub fn principal_summary(r: &PrincipalRecord) -> Value {
    json!({ "kind": r.kind, "status": r.status })
}

pub fn connection_summary(r: &ConnectionRecord) -> Value {
    json!({ "status": r.status, "identities": r.identities })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Availability, CredentialKind, Status};
    use crate::vault::Sealed;

    #[test]
    fn identity_event_carries_status_never_ciphertext() {
        let r = VaultRecord {
            id: "gh-alice".into(),
            server: "github".into(),
            owner: "alice".into(),
            availability: Availability::Private,
            status: Status::Disabled,
            kind: CredentialKind::Static,
            expires_at: None,
            scopes: vec![],
            version: 3,
            created_by: "alice".into(),
            created_at: now_rfc3339(),
            updated_by: "alice".into(),
            updated_at: now_rfc3339(),
            sealed: Sealed {
                key_id: "k2".into(),
                nonce: "NONCE".into(),
                ciphertext: "CIPHERTEXT".into(),
            },
        };
        let e = LifecycleEvent::new(
            "identity.disable",
            "alice",
            "identity",
            &r.id,
            None,
            Some(identity_summary(&r)),
        );
        let text = e.to_json();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], "lifecycle");
        assert_eq!(v["action"], "identity.disable");
        assert_eq!(v["after"]["status"], "disabled");
        assert_eq!(v["after"]["key_id"], "k2");
        assert!(v.get("before").is_none());
        assert!(
            !text.contains("CIPHERTEXT") && !text.contains("NONCE"),
            "{text}"
        );
    }
}
