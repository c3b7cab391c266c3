//! The gRPC `envoy.service.auth.v3.Authorization` service: parse the
//! CheckRequest into a context, decide, answer, and log the decision.

use std::sync::Arc;
use std::time::Instant;

use latchkey_proto::auth::authorization_server::Authorization;
use latchkey_proto::auth::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::context::RequestContext;
use crate::decision::{Decider, Decision};
use crate::respond;
use crate::state::AppState;

pub struct CheckService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let ctx = match RequestContext::from_check(request.get_ref()) {
            Ok(ctx) => ctx,
            Err(bad) => {
                tracing::info!(decision = "deny", reason = "bad_request", message = %bad.message);
                return Ok(Response::new(respond::bad_request(&bad)));
            }
        };
        let policy = self.state.policy.current();
        let decider = Decider {
            routes: &self.state.routes,
            policy: &policy,
            verifier: &self.state.verifier,
            credentials: &self.state.credentials,
        };
        let decision = decider.decide(&ctx).await;
        log_decision(&ctx, &decision, started);
        Ok(Response::new(respond::to_check_response(&decision)))
    }
}

fn log_decision(ctx: &RequestContext, decision: &Decision, started: Instant) {
    let mcp_method = ctx
        .mcp
        .as_ref()
        .and_then(|m| m.method.as_deref())
        .unwrap_or("");
    let mcp_name = ctx
        .mcp
        .as_ref()
        .and_then(|m| m.name.as_deref())
        .unwrap_or("");
    let latency_us = started.elapsed().as_micros() as u64;
    match decision {
        Decision::Allow(a) => tracing::info!(
            target: "latchkey::decision",
            decision = "allow",
            request_id = %ctx.request_id,
            http_method = %ctx.method,
            peer = ctx.peer_principal.as_deref().unwrap_or(""),
            gateway = %a.route.gateway.name,
            assignment = %a.route.assignment.name,
            user = %a.caller.subject,
            client_id = a.caller.client_id.as_deref().unwrap_or(""),
            identity = a.identity.as_deref().unwrap_or(""),
            identity_version = a.identity_version.unwrap_or(0),
            mcp_method,
            mcp_name,
            latency_us,
        ),
        Decision::Deny(d) => tracing::info!(
            target: "latchkey::decision",
            decision = "deny",
            request_id = %ctx.request_id,
            http_method = %ctx.method,
            peer = ctx.peer_principal.as_deref().unwrap_or(""),
            host = %ctx.host,
            path = %ctx.path,
            status = d.http_status,
            reason = d.reason,
            message = %d.message,
            mcp_method,
            mcp_name,
            latency_us,
        ),
    }
}
