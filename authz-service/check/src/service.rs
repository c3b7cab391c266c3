//! The gRPC `envoy.service.auth.v3.Authorization` service: parse the
//! CheckRequest into a context, decide, answer, and log, audit and count the
//! decision (one event for all three).
//!
//! The service holds only what a Check reads (routes, policy, verifier,
//! credentials, refresher, consent memory, and the recorder: metrics and the
//! audit writer), never the admin API's, the connect page's or the HTTP
//! side's state: the request path cannot reach the control plane.

use std::sync::Arc;
use std::time::Instant;

use latchkey_proto::auth::authorization_server::Authorization;
use latchkey_proto::auth::{CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::approval;
use crate::authn::TokenVerifier;
use crate::consent::{self, CapabilityMemory};
use crate::context::RequestContext;
use crate::decide::{Attribution, CONSENT_NEEDED, Decider, Decision, Deny, HIDDEN_BY_POLICY};
use crate::refresh::Refresher;
use crate::reload::PolicySource;
use crate::respond;
use latchkey_core::audit::DecisionEvent;
use latchkey_core::config::{Config, ResponseFormat};
use latchkey_core::identity::now_rfc3339;
use latchkey_core::metrics::Metrics;
use latchkey_core::routing::RouteTable;
use latchkey_store::audit_writer::AuditWriter;
use latchkey_store::credentials::Credentials;

/// Every part is shared with the rest of the replica (`Arc`s and cheap
/// clones of shared handles), so a change one side makes the other sees.
pub struct CheckService {
    /// Read for `[connect]` and each server's response format.
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub policy: Arc<PolicySource>,
    pub verifier: Arc<TokenVerifier>,
    pub credentials: Credentials,
    pub refresher: Refresher,
    /// Client capabilities this replica already wrote to Redis.
    pub client_capabilities: CapabilityMemory,
    /// Trusted servers' tool annotations, read for approval rules.
    pub tool_annotations: crate::upstream_tools::ToolAnnotations,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditWriter>,
    /// Records the unprovisioned agents refused on gateways with
    /// `unknown_agents = "request"` (none: not recorded).
    pub sightings: Option<crate::onboarding::SightingRecorder>,
    /// The `[alerts]` webhook, when configured.
    pub alerts: Option<crate::alerts::AlertSender>,
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        // An ID token a [servers.exchange] reads (few servers, rarely any).
        let keep: Vec<&str> = self
            .config
            .servers
            .iter()
            .filter_map(|s| s.exchange.as_ref()?.subject_token_header.as_deref())
            .collect();
        let ctx = match RequestContext::from_check_keeping(request.get_ref(), &keep) {
            Ok(ctx) => ctx,
            Err(bad) => {
                let denied = respond::bad_request(&bad);
                self.record(DecisionEvent {
                    time: now_rfc3339(),
                    event: "decision",
                    request_id: request
                        .get_ref()
                        .attributes
                        .as_ref()
                        .and_then(|a| a.request.as_ref())
                        .and_then(|r| r.http.as_ref())
                        .map(|h| h.id.clone())
                        .unwrap_or_default(),
                    method: "invalid".into(),
                    decision: "deny",
                    reason: "bad_request",
                    status: bad.http_status,
                    latency_us: started.elapsed().as_micros() as u64,
                    ..DecisionEvent::default()
                });
                return Ok(Response::new(denied));
            }
        };
        let policy = self.policy.current();
        let decider = Decider {
            routes: &self.routes,
            policy: &policy,
            verifier: &self.verifier,
            credentials: &self.credentials,
            refresher: &self.refresher,
        };
        let decision = decider.decide(&ctx).await;
        if let (Decision::Deny(deny), Some(recorder)) = (&decision, &self.sightings)
            && let Some(sighting) = &deny.sighting
        {
            recorder.sighted(sighting.as_ref().clone());
        }
        let connect = self.config.connect.as_ref();
        let gate = approval::Gate {
            credentials: &self.credentials,
            metrics: &self.metrics,
            connect,
            annotations: &self.tool_annotations,
        };
        let decision = approval::gate(&gate, &policy, &ctx, decision).await;
        let decision = self.consent(&ctx, decision).await;
        self.record(event(&ctx, &decision, started));
        let mut response = respond::to_check_response(&decision);
        respond::drop_request_headers(&mut response, &keep);
        respond::keep_latchkey_cookies_home(&mut response, ctx.cookie.as_deref());
        if let Some(framing) = self.hidden_framing(&ctx, &decision) {
            respond::frame_like_upstream(&mut response, &framing);
        }
        Ok(Response::new(response))
    }
}

impl CheckService {
    /// The consent steps after a decision: remember what a client declared
    /// at `initialize`, refuse a `requestState` that is not this call's,
    /// and turn "needs an identity" into the in-band consent answer.
    async fn consent(&self, ctx: &RequestContext, decision: Decision) -> Decision {
        let state = self;
        let method = ctx.mcp.as_ref().and_then(|m| m.method.as_deref());
        let needs_consent = matches!(&decision, Decision::Deny(d) if d.reason == CONSENT_NEEDED);
        let remember = method == Some("initialize") && state.config.connect.is_some();
        // The common allowed call has none of this to do: no allocation, no parse.
        if !(needs_consent || remember || consent::may_carry_request_state(&ctx.body)) {
            return decision;
        }
        let attribution = match &decision {
            Decision::Allow(a) => Some(Attribution::of(&a.route, Some(&a.caller))),
            Decision::Deny(d) => d.attribution.clone(),
        };
        let Some(at) = attribution else {
            return decision;
        };
        // Only a consent answer reads them, and only with a connect page.
        // Stored before `initialize` is answered, not on a task of its own:
        // the client's next call may come at once and to another replica,
        // and must find them (else it gets the link in an error message
        // although it declared URL mode).
        if remember && let Some(user) = at.user.as_deref() {
            let memory = &state.client_capabilities;
            consent::remember_capabilities(&state.credentials, memory, &ctx.body, user, &at).await;
        }
        if matches!(decision, Decision::Allow(_)) || needs_consent {
            let place = Some((at.gateway.as_str(), at.assignment.as_str()));
            if let Some(refused) =
                consent::check_retry(&state.credentials.keys, ctx, at.user.as_deref(), place)
            {
                return Decision::Deny(Deny {
                    attribution: Some(at),
                    ..refused
                });
            }
        }
        match decision {
            Decision::Deny(d) if needs_consent => Decision::Deny(
                consent::ask(&state.credentials, state.config.connect.as_ref(), ctx, d).await,
            ),
            other => other,
        }
    }

    /// A call to a hidden name is answered as the upstream answers a name
    /// it does not have: in its content type, with the session id it
    /// echoes, so status, content type, `mcp-session-id` and body (modulo
    /// the name) match. `None` for every other decision.
    fn hidden_framing(
        &self,
        ctx: &RequestContext,
        decision: &Decision,
    ) -> Option<respond::UpstreamFraming> {
        let Decision::Deny(deny) = decision else {
            return None;
        };
        if deny.reason != HIDDEN_BY_POLICY {
            return None;
        }
        let server = deny.attribution.as_ref().map(|a| a.server.as_str());
        let sse = server
            .and_then(|s| self.config.server(s))
            .is_some_and(|s| s.responses == ResponseFormat::Sse);
        let session = ctx.mcp.as_ref().and_then(|m| m.session_id.as_deref());
        Some(respond::UpstreamFraming::new(
            sse,
            ctx.accept.as_deref(),
            session,
        ))
    }

    /// The one place a decision leaves the decision path: its request
    /// values bounded, counted for `/metrics`, then logged and queued for
    /// the audit stream. Neither waits.
    fn record(&self, mut event: DecisionEvent) {
        event.bound_fields();
        self.metrics.record_decision(&event);
        if let Some(alerts) = &self.alerts {
            alerts.observe(&event);
        }
        self.audit.record(&event);
    }
}

/// The audit event of one decision (also its log line).
fn event(ctx: &RequestContext, decision: &Decision, started: Instant) -> DecisionEvent {
    let mcp = ctx.mcp.as_ref();
    let mut e = DecisionEvent {
        time: now_rfc3339(),
        event: "decision",
        request_id: ctx.request_id.clone(),
        method: mcp
            .and_then(|m| m.method.clone())
            .unwrap_or_else(|| ctx.method.clone()),
        name: mcp.and_then(|m| m.name.clone()),
        session_id: mcp.and_then(|m| m.session_id.clone()),
        latency_us: started.elapsed().as_micros() as u64,
        ..DecisionEvent::default()
    };
    match decision {
        Decision::Allow(a) => {
            e.gateway = Some(a.route.gateway.name.clone());
            e.assignment = Some(a.route.assignment.name.clone());
            e.server = Some(a.route.server.name.clone());
            e.scheme = Some(a.route.assignment.scheme.name());
            e.user = (!a.caller.headless).then(|| a.caller.subject.clone());
            e.agent = a.caller.agent.clone();
            e.agent_source = a.caller.agent_source.map(|s| s.name());
            e.delegation = a.caller.actors.clone();
            e.identity = a.identity.clone();
            e.identity_version = a.identity_version;
            e.credential_source = a.credential_source;
            e.approval = a.approval.clone();
            e.decision = "allow";
            e.reason = "allowed";
            e.status = 200;
        }
        Decision::Deny(d) => {
            if let Some(at) = &d.attribution {
                e.gateway = Some(at.gateway.clone());
                e.assignment = Some(at.assignment.clone());
                e.server = Some(at.server.clone());
                e.scheme = Some(at.scheme);
                e.user = at.user.clone();
                e.agent = at.agent.clone();
                e.delegation = at.actors.clone();
            }
            e.decision = "deny";
            e.reason = d.reason;
            e.status = d.refusal.http_status;
        }
    }
    e
}
