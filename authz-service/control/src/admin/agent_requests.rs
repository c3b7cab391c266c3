//! Agent onboarding through the admin API (`agents:manage`): the requests
//! unprovisioned agents left, and approving or rejecting one. An approval
//! is checked against the policy before anything is written (grants must
//! name gateways, assignments and tools the policy can compile), then
//! written once; every replica compiles it in before the answer returns.

use latchkey_core::capability::Capability;
use latchkey_core::onboarding::{AgentGrant, AgentRequest, OnboardedAgent};
use latchkey_proto::admin as pb;
use latchkey_store::agent_requests::DecisionError;
use tonic::Status as RpcStatus;

use super::operator::Operator;
use super::wire::store_status;
use crate::shared::ControlState;

/// Longest rejection reason kept.
const MAX_REASON: usize = 500;

fn request_pb(r: &AgentRequest, onboarded: Option<&OnboardedAgent>) -> pb::AgentRequest {
    pb::AgentRequest {
        agent: r.agent.clone(),
        source: r.source.clone(),
        gateways: r.gateways.clone(),
        acted_for: r.acted_for.clone(),
        first_seen: r.first_seen.clone(),
        last_seen: r.last_seen.clone(),
        count: r.count,
        status: r.status.name().into(),
        decided_by: r.decided_by.clone().unwrap_or_default(),
        decided_at: r.decided_at.clone().unwrap_or_default(),
        reason: r.reason.clone().unwrap_or_default(),
        grants: onboarded
            .map(|a| a.grants.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
    }
}

fn status(e: DecisionError) -> RpcStatus {
    match e {
        DecisionError::NotFound(_) => RpcStatus::not_found(e.to_string()),
        DecisionError::Refused(why) => RpcStatus::failed_precondition(why),
        DecisionError::Store(e) => store_status(e),
    }
}

pub(super) async fn list(
    state: &ControlState,
    op: &Operator,
) -> Result<pb::ListAgentRequestsResponse, RpcStatus> {
    op.require(
        Capability::AgentsManage,
        "listing agent onboarding requests",
    )?;
    let store = &state.credentials.store;
    let requests = store.agent_requests().await.map_err(store_status)?;
    let onboarded = store.onboarded_agents().await.map_err(store_status)?;
    Ok(pb::ListAgentRequestsResponse {
        requests: requests
            .iter()
            .map(|r| request_pb(r, onboarded.iter().find(|a| a.name == r.agent)))
            .collect(),
    })
}

/// Approves or rejects; the caller waits for the change to settle.
pub(super) async fn decide(
    state: &ControlState,
    op: &Operator,
    request: pb::DecideAgentRequestRequest,
) -> Result<pb::AgentRequest, RpcStatus> {
    op.require(
        Capability::AgentsManage,
        "deciding agent onboarding requests",
    )?;
    let store = &state.credentials.store;
    if !request.approve {
        let reason: String = request.reason.chars().take(MAX_REASON).collect();
        let rejected = store
            .reject_agent(&request.agent, &reason, &op.subject)
            .await
            .map_err(status)?;
        return Ok(request_pb(&rejected, None));
    }
    let grants = request
        .grants
        .iter()
        .map(|g| AgentGrant::parse(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RpcStatus::invalid_argument(e.to_string()))?;
    if !grants.is_empty() && !state.policy.current().is_enforced() {
        return Err(RpcStatus::invalid_argument(
            "the config has no [policy], so every caller may call every tool and grants would change nothing; approve without grants",
        ));
    }
    let known = store
        .agent_requests()
        .await
        .map_err(store_status)?
        .into_iter()
        .find(|r| r.agent == request.agent)
        .ok_or_else(|| status(DecisionError::NotFound(request.agent.clone())))?;
    // What would be written, checked against the policy first: a grant the
    // policy cannot compile is refused here, not found by every replica.
    let candidate = OnboardedAgent {
        name: known.agent.clone(),
        source: known.source.clone(),
        grants: grants.clone(),
        approved_by: op.subject.clone(),
        approved_at: String::new(),
    };
    state
        .policy
        .check_onboarding(&state.config, &candidate)
        .map_err(|e| {
            RpcStatus::invalid_argument(format!(
                "agent '{}' cannot be approved with these grants: {e}",
                request.agent
            ))
        })?;
    let (onboarded, decided) = store
        .approve_agent(&request.agent, grants, &op.subject)
        .await
        .map_err(status)?;
    Ok(request_pb(&decided, Some(&onboarded)))
}
