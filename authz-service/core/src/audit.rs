//! Audit events: what changed or was decided, by whom, when. This module
//! owns the event schema. Lifecycle events are written to the Redis stream
//! by `store` in the same transaction as the change they describe (a change
//! without its event cannot happen); decision events go through
//! `audit_writer`, which never holds up a decision. Both are echoed to the
//! structured log.
//!
//! No event carries a secret: record summaries list status, availability,
//! version and key id, never the sealed value.
//!
//! No event is larger than it must be: every value that came from a
//! request or a token goes through [`bound`] before it is logged, counted,
//! queued or written, so one request adds at most [`MAX_EVENT_BYTES`] to
//! the stream whatever its fields held.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Value, json};

use crate::identity::{ConnectionRecord, PrincipalRecord, VaultRecord, now_rfc3339};

/// Longest request-derived value an event, a log line or a queue keeps, in
/// bytes. Longer values are cut by [`bound`].
pub const FIELD_MAX: usize = 512;
/// Most delegation actors an event lists (a marker entry follows when the
/// token had more).
pub const ACTORS_MAX: usize = 8;
/// Largest decision event written to the audit stream, in bytes; with
/// every field bounded a real event is far smaller (a few hundred bytes).
/// The stream thus holds at most `[audit] stream_max_len` × this much, and
/// the writer's queue `[audit] queue_events` × this much.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// The one way a request-derived value enters a log line, a metric, an
/// audit event or a queue: unchanged up to [`FIELD_MAX`] bytes, else its
/// first bytes (cut at a character boundary) followed by a marker with the
/// full length and a short SHA-256 of the whole value, so two different
/// long values stay distinguishable and a known value can be matched:
/// `…[truncated: 1048576 bytes, sha256 1f2e3d4c5b6a7980]`.
pub fn bound(value: &str) -> Cow<'_, str> {
    if value.len() <= FIELD_MAX {
        return Cow::Borrowed(value);
    }
    let digest = crate::hex::sha256(value.as_bytes());
    let marker = format!(
        "…[truncated: {} bytes, sha256 {}]",
        value.len(),
        &digest[..16]
    );
    let mut keep = FIELD_MAX - marker.len();
    while !value.is_char_boundary(keep) {
        keep -= 1;
    }
    Cow::Owned(format!("{}{marker}", &value[..keep]))
}

fn bound_in_place(value: &mut String) {
    if let Cow::Owned(cut) = bound(value) {
        *value = cut;
    }
}

/// One lifecycle event: a create, change, disable, enable, delete or key rotation.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleEvent {
    pub time: String,
    /// Always `"lifecycle"`; decision events share the stream with another type.
    pub event: &'static str,
    /// e.g. `identity.create`, `identity.disable`, `user.deactivate`, `keys.rotate`.
    pub action: String,
    /// The subject of the token that asked for the change (`scim:<provider>`
    /// for the identity provider over SCIM).
    pub actor: String,
    /// `identity`, `user`, `agent`, `connection`, `keys`, `approval`,
    /// `scim_user`, `scim_group`.
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
            actor: bound(actor).into_owned(),
            target_kind,
            target: bound(target).into_owned(),
            before,
            after,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
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
    /// Where that credential came from when not stored by a person or an
    /// operator: `exchange` (`[servers.exchange]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_source: Option<&'static str>,
    /// The approval request this call was held for or went through on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
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

    /// Cuts every value that came from the request or its token with
    /// [`bound`], and the delegation chain to [`ACTORS_MAX`] actors. Done
    /// once, before the event is counted, logged or queued.
    pub fn bound_fields(&mut self) {
        bound_in_place(&mut self.request_id);
        bound_in_place(&mut self.method);
        let optional = [
            &mut self.gateway,
            &mut self.assignment,
            &mut self.server,
            &mut self.name,
            &mut self.user,
            &mut self.agent,
            &mut self.identity,
            &mut self.session_id,
            &mut self.approval,
        ];
        for value in optional.into_iter().flatten() {
            bound_in_place(value);
        }
        if self.delegation.len() > ACTORS_MAX {
            let more = self.delegation.len() - ACTORS_MAX;
            self.delegation.truncate(ACTORS_MAX);
            self.delegation.push(format!("…[{more} more actors]"));
        }
        self.delegation.iter_mut().for_each(bound_in_place);
    }

    /// The event as the stream stores it: its JSON, or, should it still be
    /// over [`MAX_EVENT_BYTES`], the fields that say what was decided and
    /// a `truncated` flag (the full event stays in the log line).
    pub fn to_stream_json(&self) -> String {
        let json = self.to_json();
        if json.len() <= MAX_EVENT_BYTES {
            return json;
        }
        json!({
            "time": self.time,
            "event": self.event,
            "request_id": bound(&self.request_id),
            "decision": self.decision,
            "reason": self.reason,
            "status": self.status,
            "truncated": true,
        })
        .to_string()
    }
}

/// What an event shows of an identity: everything but the ciphertext.
pub fn identity_summary(r: &VaultRecord) -> Value {
    let mut summary = json!({
        "server": r.server,
        "owner": r.owner,
        "availability": r.availability,
        "status": r.status,
        "kind": r.kind,
        "version": r.version,
        "key_id": r.sealed.key_id,
    });
    // An exchanged token says so, with what identifies it (never itself).
    if let Some(x) = &r.exchanged {
        summary["source"] = json!("exchange");
        summary["exchange"] = json!(x.kind);
        summary["agent"] = json!(x.agent);
        summary["jti"] = json!(x.jti);
        summary["expires_at"] = json!(r.expires_at);
    }
    summary
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
            exchanged: None,
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

    #[test]
    fn a_long_value_is_cut_with_its_length_and_digest_and_stays_distinguishable() {
        assert_eq!(bound("short"), "short");
        let exact = "x".repeat(FIELD_MAX);
        assert_eq!(bound(&exact), exact.as_str());
        let a = format!("{}a", "é".repeat(FIELD_MAX));
        let b = format!("{}b", "é".repeat(FIELD_MAX));
        let (cut_a, cut_b) = (bound(&a), bound(&b));
        assert!(cut_a.len() <= FIELD_MAX, "{}", cut_a.len());
        assert_ne!(cut_a, cut_b, "the digest tells them apart");
        assert!(cut_a.starts_with("éé"), "{cut_a}");
        assert!(
            cut_a.contains(&format!("[truncated: {} bytes, sha256 ", a.len())),
            "{cut_a}"
        );
    }

    #[test]
    fn a_decision_event_built_from_absurd_values_stays_small() {
        let huge = "n".repeat(1 << 20);
        let mut e = DecisionEvent {
            request_id: huge.clone(),
            method: huge.clone(),
            name: Some(huge.clone()),
            session_id: Some(huge.clone()),
            user: Some(huge.clone()),
            delegation: vec![huge.clone(); 100],
            ..DecisionEvent::default()
        };
        e.bound_fields();
        assert_eq!(e.delegation.len(), ACTORS_MAX + 1);
        let json = e.to_stream_json();
        assert!(json.len() <= MAX_EVENT_BYTES, "{}", json.len());
        assert!(
            !json.contains("truncated\":true"),
            "bounded fields fit whole"
        );
        // Unbounded, the stream copy is still capped.
        let raw = DecisionEvent {
            name: Some(huge),
            ..DecisionEvent::default()
        };
        let json = raw.to_stream_json();
        assert!(
            json.len() < 1024 && json.contains("\"truncated\":true"),
            "{json}"
        );
    }
}
