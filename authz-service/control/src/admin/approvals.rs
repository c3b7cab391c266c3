//! Tool calls held for approval, through the admin API: who may see a
//! request (the person it is for; an approver it waits on) and who may
//! decide it (the person, for a confirmation; for four eyes, anyone but
//! them with `approvals:decide` and the rule's role). A decision is one
//! atomic change with its `approval.approved` or `approval.denied` event.

use latchkey_core::approval::{ApprovalRecord, ApprovalStatus};
use latchkey_core::capability::Capability;
use latchkey_core::identity::now_rfc3339;
use latchkey_proto::admin as pb;
use latchkey_store::approvals::TransitionError;
use tonic::Status as RpcStatus;

use super::operator::Operator;
use super::wire::store_status;
use crate::shared::ControlState;

/// The longest reason kept with a decision.
const MAX_REASON_CHARS: usize = 500;

fn approval_pb(r: &ApprovalRecord) -> pb::Approval {
    pb::Approval {
        id: r.id.clone(),
        rule: r.rule.clone(),
        user: r.user.clone(),
        agent: r.agent.clone().unwrap_or_default(),
        gateway: r.gateway.clone(),
        assignment: r.assignment.clone(),
        server: r.server.clone(),
        tool: r.tool.clone(),
        arguments_json: r.arguments.to_string(),
        status: r.status.as_str().into(),
        approver_role: r.approver_role.clone().unwrap_or_default(),
        requested_at: r.requested_at.clone(),
        expires_at: r.expires_at.clone(),
        approver: r.approver.clone().unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        actors: r.actors.clone(),
    }
}

/// Whether `op` may decide `r`, or why not.
fn may_decide(state: &ControlState, op: &Operator, r: &ApprovalRecord) -> Result<(), String> {
    let holds_role = r.approver_role.as_deref().is_some_and(|role| {
        op.capabilities.has(Capability::ApprovalsDecide)
            && state.policy.current().has_role(&op.caller, role)
    });
    if r.approver_role.is_some()
        && op.caller.subject != r.user
        && !op.capabilities.has(Capability::ApprovalsDecide)
    {
        return Err(format!(
            "deciding another person's call needs the '{}' capability, which your token does not carry",
            Capability::ApprovalsDecide
        ));
    }
    r.may_decide(&op.caller.subject, holds_role)
}

/// Whether `op` may see `r`: it is for them, or they may decide it.
fn may_see(state: &ControlState, op: &Operator, r: &ApprovalRecord) -> bool {
    r.user == op.caller.subject || may_decide(state, op, r).is_ok()
}

pub(super) async fn list(
    state: &ControlState,
    op: &Operator,
    all: bool,
) -> Result<pb::ListApprovalsResponse, RpcStatus> {
    let records = state
        .credentials
        .store
        .approvals()
        .await
        .map_err(store_status)?;
    Ok(pb::ListApprovalsResponse {
        approvals: records
            .iter()
            .filter(|r| all || r.status == ApprovalStatus::Pending)
            .filter(|r| may_see(state, op, r))
            .map(approval_pb)
            .collect(),
    })
}

async fn record(state: &ControlState, id: &str) -> Result<ApprovalRecord, RpcStatus> {
    let store = &state.credentials.store;
    store
        .get::<ApprovalRecord>(&store.approval_key(id))
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            RpcStatus::not_found(format!(
                "there is no approval request '{id}' (it never existed or has expired)"
            ))
        })
}

pub(super) async fn get(
    state: &ControlState,
    op: &Operator,
    id: &str,
) -> Result<pb::Approval, RpcStatus> {
    let r = record(state, id).await?;
    if !may_see(state, op, &r) {
        // Answered as for one that does not exist: a request's existence
        // is not everyone's to know.
        return Err(RpcStatus::not_found(format!(
            "there is no approval request '{id}' (it never existed or has expired)"
        )));
    }
    Ok(approval_pb(&r))
}

pub(super) async fn decide(
    state: &ControlState,
    op: &Operator,
    request: pb::DecideApprovalRequest,
) -> Result<pb::Approval, RpcStatus> {
    let current = record(state, &request.id).await?;
    if !may_see(state, op, &current) {
        return Err(RpcStatus::not_found(format!(
            "there is no approval request '{}' (it never existed or has expired)",
            request.id
        )));
    }
    let reason: String = request
        .reason
        .trim()
        .chars()
        .take(MAX_REASON_CHARS)
        .collect();
    let (status, action) = if request.approve {
        (ApprovalStatus::Approved, "approval.approved")
    } else {
        (ApprovalStatus::Denied, "approval.denied")
    };
    let decided = state
        .credentials
        .store
        .transition_approval(&request.id, action, &op.caller.subject, |now| {
            may_decide(state, op, now)?;
            if now.status != ApprovalStatus::Pending {
                return Err(format!(
                    "this request was already {}; a new call makes a new request",
                    now.status.as_str()
                ));
            }
            Ok(ApprovalRecord {
                status,
                approver: Some(op.caller.subject.clone()),
                reason: (!reason.is_empty()).then(|| reason.clone()),
                decided_at: Some(now_rfc3339()),
                ..now.clone()
            })
        })
        .await;
    match decided {
        Ok(r) => Ok(approval_pb(&r)),
        Err(TransitionError::NotFound(id)) => Err(RpcStatus::not_found(format!(
            "there is no approval request '{id}' (it never existed or has expired)"
        ))),
        Err(TransitionError::Refused(why)) => Err(RpcStatus::permission_denied(why)),
        Err(TransitionError::Store(e)) => Err(store_status(e)),
    }
}
