//! Tool calls held for approval, through the admin API: the shared rules
//! of `crate::approvals`, answered as gRPC.

use latchkey_core::approval::ApprovalRecord;
use latchkey_core::capability::Capability;
use latchkey_proto::admin as pb;
use tonic::Status as RpcStatus;

use super::operator::Operator;
use super::wire::store_status;
use crate::approvals::{self, Approver, DecideError};
use crate::shared::ControlState;

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

fn approver(op: &Operator) -> Approver<'_> {
    Approver {
        caller: &op.caller,
        decides_for_others: op.capabilities.has(Capability::ApprovalsDecide),
    }
}

fn status(e: DecideError) -> RpcStatus {
    match e {
        DecideError::NotFound(_) => RpcStatus::not_found(e.to_string()),
        DecideError::Refused(why) => RpcStatus::permission_denied(why),
        DecideError::Store(e) => store_status(e),
    }
}

pub(super) async fn list(
    state: &ControlState,
    op: &Operator,
    all: bool,
) -> Result<pb::ListApprovalsResponse, RpcStatus> {
    let records = approvals::visible(state, &approver(op), all)
        .await
        .map_err(store_status)?;
    Ok(pb::ListApprovalsResponse {
        approvals: records.iter().map(approval_pb).collect(),
    })
}

pub(super) async fn get(
    state: &ControlState,
    op: &Operator,
    id: &str,
) -> Result<pb::Approval, RpcStatus> {
    let r = approvals::find(state, &approver(op), id)
        .await
        .map_err(status)?;
    Ok(approval_pb(&r))
}

pub(super) async fn decide(
    state: &ControlState,
    op: &Operator,
    request: pb::DecideApprovalRequest,
) -> Result<pb::Approval, RpcStatus> {
    let r = approvals::decide(
        state,
        &approver(op),
        &request.id,
        request.approve,
        &request.reason,
    )
    .await
    .map_err(status)?;
    Ok(approval_pb(&r))
}
