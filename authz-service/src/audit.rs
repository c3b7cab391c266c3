//! Audit events: what changed or was decided, by whom, when. This module
//! owns the event schema. Lifecycle events are written to the Redis stream
//! by `store` in the same transaction as the change they describe (a change
//! without its event cannot happen); decision events go through
//! `audit_writer`, which never holds up a decision. Both are echoed to the
//! structured log.
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

    /// Echoes the event to the structured log (target `latchkey::audit`)
    /// and to the OpenTelemetry collector, if one is configured.
    pub fn log(&self) {
        let json = self.to_json();
        let summary = |v: &Option<Value>| v.as_ref().map(Value::to_string);
        tracing::info!(
            target: "latchkey::audit",
            action = %self.action,
            actor = %self.actor,
            target_kind = self.target_kind,
            target = %self.target,
            before = summary(&self.before).as_deref(),
            after = summary(&self.after).as_deref(),
        );
        crate::otlp::export(&json);
    }
}

/// One authorization decision: who, through which agent, asked what, and
/// what was decided and why. Never a token or a credential.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecisionEvent {
    pub time: String,
    /// Always `"decision"`.
    pub event: &'static str,
    /// Envoy's `x-request-id`.
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `shared` or `per_user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<&'static str>,
    /// The MCP method (`tools/call`, ...), or the HTTP method of a GET/DELETE.
    pub method: String,
    /// Tool, prompt or resource named by the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The agent acting (for `user`, or for nobody when `user` is absent),
    /// by its provisioned name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How the agent was recognised: `mtls`, `client_id` or `act`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_source: Option<&'static str>,
    /// The token's delegation chain (RFC 8693 `act`), current actor first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delegation: Vec<String>,
    /// Which identity's credential was used, and its version (not the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_version: Option<u64>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// Why (`allowed`, `hidden_by_policy`, `consent_needed`, ...).
    pub reason: &'static str,
    /// The HTTP status the client got from the gateway (200 on allow).
    pub status: u16,
    pub latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl DecisionEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
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
            consent_required: false,
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
