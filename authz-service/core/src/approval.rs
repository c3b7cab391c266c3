//! Approvals as stored: one person's decision on one exact tool call.
//!
//! An approval is bound to a digest of the call (who for, which agent,
//! where, which tool, the arguments in canonical form), is used once, and
//! expires. The record keeps the call itself so the approver sees exactly
//! what will run; the audit trail gets the digest, and the arguments only
//! when the rule does not mark them sensitive.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest arguments a call awaiting approval may carry (as canonical
/// JSON): they are stored for the approver to read, and an approval page
/// nobody can read protects nothing.
pub const MAX_APPROVAL_ARGUMENTS_BYTES: usize = 16 * 1024;

/// How many requests one person may have waiting at once, so nobody can
/// fill Redis with them.
pub const MAX_PENDING_PER_USER: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Approved, and the call went upstream: never again.
    Used,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Used => "used",
        }
    }
}

/// One call awaiting, or having had, a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Random; names the request in links and on the command line.
    pub id: String,
    /// [`call_digest`] of the call.
    pub digest: String,
    /// The `[[policy.approvals]]` rule that asked.
    pub rule: String,
    /// Who may approve: `None`, the person the call is for; else anyone
    /// holding this role but the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_role: Option<String>,
    /// The person the call is for.
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    pub gateway: String,
    pub assignment: String,
    pub server: String,
    pub tool: String,
    pub arguments: Value,
    #[serde(default)]
    pub sensitive_arguments: bool,
    pub requested_at: String,
    pub expires_at: String,
    pub status: ApprovalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

impl ApprovalRecord {
    /// Who may decide this request, or why `approver` may not.
    pub fn may_decide(&self, approver: &str, holds_role: bool) -> Result<(), String> {
        match &self.approver_role {
            None if approver == self.user => Ok(()),
            None => Err(format!(
                "only '{}', the person this call is for, confirms it",
                self.user
            )),
            Some(_) if approver == self.user => Err(
                "this call needs a second person's approval (four eyes): the person it is for cannot approve it"
                    .into(),
            ),
            Some(_) if holds_role => Ok(()),
            Some(role) => Err(format!("approving this call needs the role '{role}'")),
        }
    }

    /// What the audit trail may say of the call: its digest, and its
    /// arguments unless the rule marks them sensitive.
    pub fn audit_view(&self) -> Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "rule": self.rule,
            "call_digest": self.digest,
            "user": self.user,
            "agent": self.agent,
            "gateway": self.gateway,
            "assignment": self.assignment,
            "tool": self.tool,
            "status": self.status.as_str(),
        });
        if !self.sensitive_arguments {
            v["arguments"] = self.arguments.clone();
        }
        if let Some(a) = &self.approver {
            v["approver"] = Value::from(a.as_str());
        }
        if let Some(r) = &self.reason {
            v["reason"] = Value::from(r.as_str());
        }
        v
    }
}

/// What one call is, for binding an approval to it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub user: &'a str,
    pub agent: Option<&'a str>,
    pub gateway: &'a str,
    pub assignment: &'a str,
    pub tool: &'a str,
    pub arguments: &'a Value,
}

/// SHA-256 (hex) of the call in one canonical form: object members sorted
/// by name, no spaces; a change to any argument, the tool, the route, the
/// agent or the person is another call. Numbers are kept as written in
/// serde_json's reading (`1000` and `1e3` differ), so a respelling needs a
/// new approval rather than passing as the one approved.
pub fn call_digest(call: &Call<'_>) -> String {
    let mut text = String::new();
    canonical_json(
        &serde_json::json!({
            "user": call.user,
            "agent": call.agent,
            "gateway": call.gateway,
            "assignment": call.assignment,
            "method": "tools/call",
            "tool": call.tool,
            "arguments": call.arguments,
        }),
        &mut text,
    );
    crate::hex::sha256(text.as_bytes())
}

/// `v` as JSON with every object's members sorted by name.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest(user: &str, agent: Option<&str>, arguments: &Value) -> String {
        call_digest(&Call {
            user,
            agent,
            gateway: "g",
            assignment: "pay",
            tool: "transfer",
            arguments,
        })
    }

    #[test]
    fn an_approval_is_bound_to_every_part_of_the_call_but_member_order() {
        let a = json!({"amount": 5000, "to": {"iban": "X", "name": "Bob"}});
        let reordered: Value =
            serde_json::from_str(r#"{"to":{"name":"Bob","iban":"X"},"amount":5000}"#).unwrap();
        assert_eq!(digest("alice", None, &a), digest("alice", None, &reordered));
        assert_ne!(digest("alice", None, &a), digest("bob", None, &a));
        assert_ne!(
            digest("alice", None, &a),
            digest("alice", Some("copilot"), &a)
        );
        let more = json!({"amount": 5001, "to": {"iban": "X", "name": "Bob"}});
        assert_ne!(digest("alice", None, &a), digest("alice", None, &more));
        let respelled = json!({"amount": 5000.0, "to": {"iban": "X", "name": "Bob"}});
        assert_ne!(digest("alice", None, &a), digest("alice", None, &respelled));
    }

    #[test]
    fn only_the_person_confirms_their_own_and_never_their_own_under_four_eyes() {
        let mut r = ApprovalRecord {
            id: "1".into(),
            digest: "d".into(),
            rule: "r".into(),
            approver_role: None,
            user: "alice".into(),
            agent: Some("copilot".into()),
            actors: vec![],
            gateway: "g".into(),
            assignment: "pay".into(),
            server: "pay".into(),
            tool: "transfer".into(),
            arguments: json!({"amount": 1}),
            sensitive_arguments: true,
            requested_at: String::new(),
            expires_at: String::new(),
            status: ApprovalStatus::Pending,
            approver: None,
            reason: None,
            decided_at: None,
        };
        assert!(r.may_decide("alice", false).is_ok());
        assert!(r.may_decide("bob", true).is_err());
        r.approver_role = Some("finance-leads".into());
        assert!(
            r.may_decide("alice", true)
                .unwrap_err()
                .contains("four eyes")
        );
        assert!(
            r.may_decide("bob", false)
                .unwrap_err()
                .contains("finance-leads")
        );
        assert!(r.may_decide("bob", true).is_ok());
        assert!(r.audit_view().get("arguments").is_none(), "sensitive");
    }
}
