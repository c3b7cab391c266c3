//! Deciding tool calls held for approval, the same way from the admin API
//! (`latchkey approval`) and from the approval page: who may see a request
//! (the person it is for; an approver it waits on), who may decide it (the
//! person, for a confirmation; for four eyes, anyone but them with
//! `approvals:decide` and the rule's role), and the decision itself, one
//! atomic change with its `approval.approved` or `approval.denied` event.

use latchkey_core::approval::{ApprovalRecord, ApprovalStatus};
use latchkey_core::capability::Capability;
use latchkey_core::identity::now_rfc3339;
use latchkey_core::principal::Caller;
use latchkey_store::approvals::TransitionError;
use latchkey_store::store::StoreError;

use crate::shared::ControlState;

/// The longest reason kept with a decision.
pub const MAX_REASON_CHARS: usize = 500;

/// A person who looks at or decides requests, as their token says.
pub struct Approver<'a> {
    /// Their subject and roles (groups/roles claim values).
    pub caller: &'a Caller,
    /// Whether their token carries `approvals:decide`.
    pub decides_for_others: bool,
}

/// Why a decision was not made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("there is no approval request '{0}' (it never existed or has expired)")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Approver<'_> {
    /// Whether they may decide `r`, or why not.
    pub fn may_decide(&self, state: &ControlState, r: &ApprovalRecord) -> Result<(), String> {
        if r.approver_role.is_some() && self.caller.subject != r.user && !self.decides_for_others {
            return Err(format!(
                "deciding another person's call needs the '{}' capability, which your token does not carry",
                Capability::ApprovalsDecide
            ));
        }
        let holds_role = self.decides_for_others
            && r.approver_role
                .as_deref()
                .is_some_and(|role| state.policy.current().has_role(self.caller, role));
        r.may_decide(&self.caller.subject, holds_role)
    }

    /// Whether they may see `r`: it is for them, or they may decide it.
    pub fn may_see(&self, state: &ControlState, r: &ApprovalRecord) -> bool {
        r.user == self.caller.subject || self.may_decide(state, r).is_ok()
    }
}

/// Every live request `approver` may see, oldest first; only waiting ones
/// unless `all`.
pub async fn visible(
    state: &ControlState,
    approver: &Approver<'_>,
    all: bool,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    let records = state.credentials.store.approvals().await?;
    Ok(records
        .into_iter()
        .filter(|r| all || r.status == ApprovalStatus::Pending)
        .filter(|r| approver.may_see(state, r))
        .collect())
}

/// Request `id` if `approver` may see it; one they may not is answered as
/// one that does not exist (its existence is not everyone's to know).
pub async fn find(
    state: &ControlState,
    approver: &Approver<'_>,
    id: &str,
) -> Result<ApprovalRecord, DecideError> {
    let store = &state.credentials.store;
    let record: Option<ApprovalRecord> = store.get(&store.approval_key(id)).await?;
    record
        .filter(|r| approver.may_see(state, r))
        .ok_or_else(|| DecideError::NotFound(id.to_string()))
}

/// Approves or denies waiting request `id`.
pub async fn decide(
    state: &ControlState,
    approver: &Approver<'_>,
    id: &str,
    approve: bool,
    reason: &str,
) -> Result<ApprovalRecord, DecideError> {
    find(state, approver, id).await?;
    let reason: String = reason.trim().chars().take(MAX_REASON_CHARS).collect();
    let (status, action) = if approve {
        (ApprovalStatus::Approved, "approval.approved")
    } else {
        (ApprovalStatus::Denied, "approval.denied")
    };
    let decided = state
        .credentials
        .store
        .transition_approval(id, action, &approver.caller.subject, |now| {
            approver.may_decide(state, now)?;
            if now.status != ApprovalStatus::Pending {
                return Err(format!(
                    "this request was already {}; a new call makes a new request",
                    now.status.as_str()
                ));
            }
            Ok(ApprovalRecord {
                status,
                approver: Some(approver.caller.subject.clone()),
                reason: (!reason.is_empty()).then(|| reason.clone()),
                decided_at: Some(now_rfc3339()),
                ..now.clone()
            })
        })
        .await;
    if let Ok(r) = &decided {
        let outcome = if approve { "approved" } else { "denied" };
        state.metrics.count_approval(&r.rule, outcome);
    }
    decided.map_err(|e| match e {
        TransitionError::NotFound(id) => DecideError::NotFound(id),
        TransitionError::Refused(why) => DecideError::Refused(why),
        TransitionError::Store(e) => DecideError::Store(e),
    })
}
