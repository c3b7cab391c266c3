//! The decision for one request: authenticate the caller, find the server
//! assignment, and resolve the credential its identity scheme calls for.
//! Produces a `Decision`; turning it into an Envoy response is `respond`'s job.

use std::sync::Arc;

use serde_json::Value;

use crate::authn::{AuthnError, TokenVerifier, bearer_token};
use crate::context::RequestContext;
use crate::refresh::{ExchangeCall, RefreshError, Refresher};
use latchkey_core::agents::UnknownAgents;
use latchkey_core::config::{IdentityScheme, ServerAuth};
use latchkey_core::identity::{CredentialKind, PrincipalKind, Status, exchanged_identity_id};
use latchkey_core::policy::{self, Policy};
use latchkey_core::principal::{AgentSource, Caller};
use latchkey_core::routing::{Route, RouteTable};
use latchkey_core::vault::Secret;
use latchkey_filter::mcp::RequestError;
use latchkey_filter::visibility::{ItemKind, Visibility};
use latchkey_store::agent_requests::Sighting;
use latchkey_store::cache::OpenIdentity;
use latchkey_store::credentials::Credentials;

mod refusals;

pub use self::refusals::{CONSENT_NEEDED, HIDDEN_BY_POLICY, forbidden, tool_error_body};
use self::refusals::{
    ambiguous, authn_denial, consent_needed, hidden_answer, insufficient_scope, reauthorise_needed,
    shared_tokens_needed, step_up_needed, unavailable, use_denial,
};

/// A header to set on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedHeader {
    pub name: String,
    pub value: Secret,
}

#[derive(Debug)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

#[derive(Debug)]
pub struct Allow {
    pub caller: Caller,
    pub route: Arc<Route>,
    /// Which identity backed the credential, for attribution (never the secret).
    pub identity: Option<String>,
    /// The version of that identity's secret, for attribution.
    pub identity_version: Option<u64>,
    /// `exchange` when that identity's token was exchanged for the caller.
    pub credential_source: Option<&'static str>,
    /// The approval this call goes through on (`approval::gate`).
    pub approval: Option<String>,
    pub inject: Option<InjectedHeader>,
    /// The injected credential is an OAuth token the service can refresh if
    /// the upstream refuses it.
    pub refreshable: bool,
    /// Under a policy, for every allowed request: what the caller may see
    /// on this route, for the filter to trim any list in the response with
    /// (a list may come on any stream: a GET resumed with `Last-Event-ID`
    /// replays earlier answers, and an id or method spelling must not
    /// decide whether a list is trimmed).
    pub visibility: Option<Box<Visibility>>,
}

/// Why a request is refused, with everything needed to tell the client.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deny {
    /// The refusal as the client reads it: HTTP status, JSON-RPC code and
    /// message, and the request's id echoed. The filter refuses with the
    /// same shape before any Check (`latchkey_filter::mcp::RequestError`).
    pub refusal: RequestError,
    /// `WWW-Authenticate` for 401s (RFC 6750 + RFC 9728 `resource_metadata`).
    pub www_authenticate: Option<String>,
    /// Short machine-readable reason for logs and audit.
    pub reason: &'static str,
    /// The whole response body when it is not a JSON-RPC error built from
    /// `jsonrpc_code` and `message` (a tool result, a mimicked error).
    pub body: Option<String>,
    /// Who and where, as far as known when refused (for the audit trail).
    pub attribution: Option<Box<Attribution>>,
    /// The answer is a URL elicitation (-32042) the Wasm filter announces
    /// as completed on the session's GET stream once the person is done.
    pub elicitation: Option<PendingElicitation>,
    /// An unprovisioned agent a gateway with `unknown_agents = "request"`
    /// refused: its onboarding request is recorded (`crate::onboarding`).
    pub sighting: Option<Box<Sighting>>,
}

/// A URL elicitation handed to a client, as the filter remembers it
/// (`CheckResponse.dynamic_metadata`, see [`latchkey_filter::completion`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingElicitation {
    pub id: String,
    pub user: String,
    pub gateway: String,
    /// Unix seconds after which nobody can complete it.
    pub expires: i64,
}

/// The route and caller of a refused request, when they were known.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attribution {
    pub gateway: String,
    pub assignment: String,
    pub server: String,
    pub scheme: &'static str,
    pub user: Option<String>,
    pub agent: Option<String>,
    /// The token's delegation chain (`act`), current actor first.
    pub actors: Vec<String>,
}

impl Attribution {
    /// Of a combined endpoint before an assignment was chosen, the
    /// endpoint's name and the scheme `combined`.
    pub fn of(route: &Route, caller: Option<&Caller>) -> Box<Attribution> {
        let scheme = match &route.combined {
            Some(_) => "combined",
            None => route.assignment.scheme.name(),
        };
        Box::new(Attribution {
            gateway: route.gateway.name.clone(),
            assignment: route.endpoint().to_owned(),
            server: route.server.name.clone(),
            scheme,
            user: caller.filter(|c| !c.headless).map(|c| c.subject.clone()),
            agent: caller.and_then(|c| c.agent.clone()),
            actors: caller.map(|c| c.actors.clone()).unwrap_or_default(),
        })
    }
}

/// JSON-RPC error codes in denials; the shared ones come from the filter's
/// `jsonrpc` module so both sides answer alike.
pub mod codes {
    pub use latchkey_filter::jsonrpc::{FORBIDDEN, UNAUTHORIZED};
    /// No MCP server is published at the requested host and path.
    pub const NOT_FOUND: i64 = -32004;
    /// A dependency of the decision (IdP keys, Redis, a master key) is
    /// unavailable: the same code the filter answers when Check itself fails.
    pub use latchkey_filter::jsonrpc::INTERNAL_ERROR as UNAVAILABLE;
}

pub struct Decider<'a> {
    pub routes: &'a RouteTable,
    pub policy: &'a Policy,
    pub verifier: &'a TokenVerifier,
    pub credentials: &'a Credentials,
    pub refresher: &'a Refresher,
}

impl Decider<'_> {
    pub async fn decide(&self, ctx: &RequestContext) -> Decision {
        let id = ctx.mcp.as_ref().and_then(|m| m.id.clone());
        let Some(route) = self.routes.find(&ctx.host, &ctx.path).cloned() else {
            return Decision::Deny(Deny {
                refusal: RequestError {
                    http_status: 404,
                    jsonrpc_code: codes::NOT_FOUND,
                    message: format!(
                        "no MCP server is published at {}{}; check the URL your client is configured with",
                        ctx.host, ctx.path
                    ),
                    id,
                },
                www_authenticate: None,
                reason: "no_route",
                body: None,
                attribution: None,
                elicitation: None,
                sighting: None,
            });
        };
        let audience = route.gateway.public_url.as_str().trim_end_matches('/');
        let mut caller = match self.authenticate(ctx, audience).await {
            Ok(c) => c,
            Err(e) => {
                return Decision::Deny(Deny {
                    attribution: Some(Attribution::of(&route, None)),
                    ..authn_denial(e, &route, id)
                });
            }
        };
        let recognised = self.policy.agents.attribute(
            ctx.peer_principal.as_deref(),
            &mut caller,
            route.gateway.unknown_agents,
        );
        if let Err(agent) = recognised {
            let requested = route.gateway.unknown_agents == UnknownAgents::Request;
            let next = if requested {
                format!(
                    "a request to onboard it is recorded; an operator approves it with `latchkey agent approve {}`",
                    agent.name
                )
            } else {
                "an operator adds it under [[agents]] in the Latchkey config".to_string()
            };
            let mut deny = forbidden(
                "unknown_agent",
                format!(
                    "agent '{}' (recognised by its {}) is not provisioned for gateway '{}'; {next}",
                    agent.name,
                    agent.source.describe(),
                    route.gateway.name
                ),
            );
            if requested {
                deny.sighting = Some(Box::new(Sighting {
                    agent: agent.name.clone(),
                    source: agent.source.name(),
                    gateway: route.gateway.name.clone(),
                    user: (!caller.headless).then(|| caller.subject.clone()),
                }));
            }
            return attributed_to(&route, &caller, id, deny);
        }
        // Before the principals' status, as it always was for one assignment.
        if let Some(deny) = headless_refusal(&route, &caller).filter(|_| route.combined.is_none()) {
            return attributed_to(&route, &caller, id, deny);
        }
        if let Err(deny) = self.principals_enabled(&mut caller).await {
            return attributed_to(&route, &caller, id, deny);
        }
        if route.combined.is_none() {
            return self.decide_on(ctx, route, caller, id).await;
        }
        // A combined endpoint: a request naming something goes to the first
        // candidate whose policy shows the caller that name; anything else
        // to the first candidate with a usable credential.
        if let Some((kind, name)) = named_item(ctx) {
            return match candidate_showing(self.policy, &route, &caller, kind, &name) {
                Some(chosen) => self.decide_on(ctx, chosen.clone(), caller, id).await,
                None => {
                    // Named as the upstream would name it, as on one
                    // assignment (an ambiguous URI was shown to the first
                    // candidate, which refuses it).
                    let name = match kind {
                        ItemKind::Resource => {
                            latchkey_filter::uri::canonical(&name).unwrap_or(name)
                        }
                        _ => name,
                    };
                    let deny = self.hidden(kind, &name, id.as_ref());
                    attributed_to(&route, &caller, id, deny)
                }
            };
        }
        self.decide_combined(ctx, &route, caller, id).await
    }

    /// A request that does not name anything, on a combined endpoint: the
    /// credential of the first candidate that has a usable one; a list
    /// shows the union of what the candidates show.
    async fn decide_combined(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        caller: Caller,
        id: Option<Value>,
    ) -> Decision {
        let mut refusals = Vec::new();
        let mut chosen = None;
        for candidate in route.candidates() {
            if let Some(deny) = headless_refusal(candidate, &caller) {
                refusals.push((candidate, deny));
                continue;
            }
            match self.credential(ctx, candidate, &caller).await {
                Ok(identity) => {
                    chosen = Some((candidate.clone(), identity));
                    break;
                }
                Err(deny) => refusals.push((candidate, deny)),
            }
        }
        let Some((candidate, identity)) = chosen else {
            // Consent is asked only when no candidate has a credential; it
            // is for the candidate that needs it.
            return match consent_first(refusals) {
                Some((candidate, deny)) => attributed_to(candidate, &caller, id, deny),
                None => attributed_to(
                    route,
                    &caller,
                    id,
                    forbidden(
                        "no_candidate",
                        "no assignment can serve this request".into(),
                    ),
                ),
            };
        };
        let visibility = union_view(self.policy, route, &caller).map(Box::new);
        allow(candidate, caller, identity, visibility)
    }

    /// The decision on one assignment's route (a single endpoint, or the
    /// candidate a combined endpoint chose).
    async fn decide_on(
        &self,
        ctx: &RequestContext,
        route: Arc<Route>,
        caller: Caller,
        id: Option<Value>,
    ) -> Decision {
        if let Some(deny) = headless_refusal(&route, &caller) {
            return attributed_to(&route, &caller, id, deny);
        }
        if let Some(deny) = self.policy_denial(ctx, &route, &caller, id.as_ref()) {
            return attributed_to(&route, &caller, id, deny);
        }
        let visibility = self
            .policy
            .visibility(&route.gateway.name, &route.assignment.name, &caller)
            .map(Box::new);
        match self.credential(ctx, &route, &caller).await {
            Ok(identity) => allow(route, caller, identity, visibility),
            Err(deny) => attributed_to(&route, &caller, id, deny),
        }
    }

    /// What the policy says of a request that names a tool, prompt or
    /// resource; `None` when it may go on. Checked before the credential, so
    /// a hidden tool never leads to a consent request.
    fn policy_denial(
        &self,
        ctx: &RequestContext,
        route: &Route,
        caller: &Caller,
        id: Option<&Value>,
    ) -> Option<Deny> {
        let (kind, name) = named_item(ctx)?;
        let name = name.as_str();
        let (gateway, assignment) = (&route.gateway.name, &route.assignment.name);
        let arguments = (kind == ItemKind::Tool
            && self.policy.needs_arguments(gateway, assignment, name))
        .then(|| ctx.tool_arguments())
        .flatten();
        match self
            .policy
            .decide(gateway, assignment, caller, kind, name, arguments)
        {
            policy::Verdict::Allowed => None,
            policy::Verdict::Hidden { kind, name } => Some(self.hidden(kind, &name, id)),
            policy::Verdict::Ambiguous { kind, problem, .. } => Some(ambiguous(kind, &problem)),
            policy::Verdict::Violation { tool, message } => Some(Deny {
                refusal: RequestError {
                    http_status: 200,
                    jsonrpc_code: 0,
                    message: format!("tool '{tool}' refused by policy: {message}"),
                    id: id.cloned(),
                },
                reason: "constraint_violation",
                body: Some(tool_error_body(
                    id,
                    &format!(
                        "The gateway's policy refused this call to '{tool}': {message}. Change the arguments and call again."
                    ),
                )),
                ..Deny::default()
            }),
            policy::Verdict::InsufficientScope { tool, scopes } => {
                Some(insufficient_scope(route, &tool, &scopes, id))
            }
            policy::Verdict::StepUp(s) => Some(step_up_needed(route, name, &s, id)),
        }
    }

    /// The answer to a request naming something the caller may not see.
    fn hidden(&self, kind: ItemKind, name: &str, id: Option<&Value>) -> Deny {
        let answer = match kind {
            ItemKind::Tool => &self.policy.hidden.tool,
            ItemKind::Prompt => &self.policy.hidden.prompt,
            ItemKind::Resource => &self.policy.hidden.resource,
        };
        hidden_answer(answer, name, id)
    }

    /// A deactivated user or a disabled agent is refused before anything
    /// else, on every gateway.
    /// For a person provisioned over SCIM, their SCIM groups also replace
    /// the token's group claims as their roles (read with their status).
    async fn principals_enabled(&self, caller: &mut Caller) -> Result<(), Deny> {
        self.user_enabled(caller).await?;
        self.agent_enabled(caller).await
    }

    async fn user_enabled(&self, caller: &mut Caller) -> Result<(), Deny> {
        if caller.headless {
            return Ok(());
        }
        let user = self
            .credentials
            .principal(PrincipalKind::User, &caller.subject)
            .await
            .map_err(|e| unavailable(&e))?;
        if let Some(groups) = user.as_ref().and_then(|u| u.scim_groups.as_ref()) {
            // SCIM is live; the token's claims are as old as the token.
            caller.roles = groups.clone();
            caller.roles.sort();
            caller.roles.dedup();
        }
        if user.is_some_and(|u| u.status == Status::Disabled) {
            return Err(forbidden(
                "user_deactivated",
                format!(
                    "user '{}' is deactivated; an operator can reactivate them with `latchkey user reactivate`",
                    caller.subject
                ),
            ));
        }
        Ok(())
    }

    async fn agent_enabled(&self, caller: &Caller) -> Result<(), Deny> {
        if let Some(agent) = &caller.agent {
            let status = self
                .credentials
                .principal_status(PrincipalKind::Agent, agent)
                .await
                .map_err(|e| unavailable(&e))?;
            if status == Status::Disabled {
                return Err(forbidden(
                    "agent_disabled",
                    format!(
                        "agent '{agent}' is disabled; an operator can enable it with `latchkey agent enable`"
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn authenticate(
        &self,
        ctx: &RequestContext,
        audience: &str,
    ) -> Result<Caller, AuthnError> {
        let token = bearer_token(ctx.authorization.as_deref())?;
        self.verifier.verify(token, audience).await
    }

    /// The identity whose credential goes upstream, per the assignment's scheme.
    async fn credential(
        &self,
        ctx: &RequestContext,
        route: &Route,
        caller: &Caller,
    ) -> Result<Option<Arc<OpenIdentity>>, Deny> {
        let server = &route.server.name;
        match &route.assignment.scheme {
            IdentityScheme::Shared { identity } => {
                let open = self
                    .credentials
                    .identity(identity)
                    .await
                    .map_err(|e| unavailable(&e))?
                    .ok_or_else(|| {
                        Deny::unavailable(
                            "shared_identity_missing",
                            format!(
                                "the shared identity '{identity}' for server '{server}' is not in the vault; an operator stores it with `latchkey identity put-shared`"
                            ),
                        )
                    })?;
                open.record
                    .usable_as_shared(server)
                    .map_err(|e| use_denial(&e))?;
                // Nobody can be asked in band for an organisation's identity.
                let new_tokens = || shared_tokens_needed(identity, server);
                self.refreshed(ctx, open, new_tokens).await.map(Some)
            }
            IdentityScheme::PerUser if route.server.exchange.is_some() => {
                self.exchanged(ctx, route, caller).await.map(Some)
            }
            IdentityScheme::PerUser => {
                let user = &caller.subject;
                let consent = || consent_needed(user, server, &route.gateway.name);
                let connection = self
                    .credentials
                    .connection(&route.gateway.name, user)
                    .await
                    .map_err(|e| unavailable(&e))?
                    .ok_or_else(consent)?;
                if connection.status == Status::Disabled {
                    return Err(forbidden(
                        "connection_disabled",
                        format!(
                            "the connection of user '{user}' to gateway '{}' is disabled; it can be enabled with `latchkey connection enable`",
                            route.gateway.name
                        ),
                    ));
                }
                let id = connection.identities.get(server).ok_or_else(consent)?;
                // A deleted identity means connecting again, not an outage.
                let open = self
                    .credentials
                    .identity(id)
                    .await
                    .map_err(|e| unavailable(&e))?
                    .ok_or_else(consent)?;
                open.record
                    .usable_by(user, server)
                    .map_err(|e| use_denial(&e))?;
                // Its refresh token stopped working: ask again, in band.
                let again = || reauthorise_needed(user, server, id);
                self.refreshed(ctx, open, again).await.map(Some)
            }
        }
    }
    /// The caller's own token for a server with `[servers.exchange]`: the
    /// one exchanged earlier for this person, agent, server and scopes
    /// while it is good, else a new exchange of the caller's token (once
    /// across replicas). No connection and no consent page are involved.
    async fn exchanged(
        &self,
        ctx: &RequestContext,
        route: &Route,
        caller: &Caller,
    ) -> Result<Arc<OpenIdentity>, Deny> {
        let server = &route.server.name;
        let user = &caller.subject;
        let Some(exchanger) = self.refresher.exchanger(server) else {
            return Err(Deny::unavailable(
                "exchange_unavailable",
                format!(
                    "server '{server}' has [servers.exchange], but this replica has no token exchange for it; see its start-up log"
                ),
            ));
        };
        // Verified a moment ago; the token the identity provider exchanges,
        // unless an ID token of the same person is asked for.
        let subject = bearer_token(ctx.authorization.as_deref())
            .map_err(|e| authn_denial(e, route, ctx.mcp.as_ref().and_then(|m| m.id.clone())))?;
        let subject_token = match exchanger.subject_token_header() {
            None => subject.to_string(),
            Some(header) => self.id_token(ctx, caller, server, header).await?,
        };
        let agent = caller.agent.clone();
        let id = exchanged_identity_id(user, agent.as_deref(), server, exchanger.scopes());
        let current = self
            .credentials
            .identity(&id)
            .await
            .map_err(|e| unavailable(&e))?;
        if let Some(open) = &current {
            // An operator may have disabled it.
            open.record
                .usable_by(user, server)
                .map_err(|e| use_denial(&e))?;
            // Only a token Latchkey exchanged stands here, never a secret
            // someone stored under the same id.
            if open.record.exchanged.is_none() {
                return Err(Deny::unavailable(
                    "exchange_unavailable",
                    format!(
                        "identity '{}' is not a token Latchkey exchanged; an operator deletes it so that one can be",
                        open.record.id
                    ),
                ));
            }
        }
        let refused = current.as_ref().is_some_and(|open| {
            ctx.rejected_credentials
                .iter()
                .any(|c| *c == format!("{}@{}", open.record.id, open.record.version))
        });
        // The agent's own token stands for it only where it was recognised by it.
        let actor = (exchanger.sends_actor_token()
            && caller.agent_source == Some(AgentSource::ClientId))
        .then(|| Secret::new(subject));
        let call = ExchangeCall {
            exchanger: exchanger.clone(),
            subject: Secret::new(subject_token),
            actor,
            user: user.clone(),
            agent,
            id,
            server: server.clone(),
        };
        self.refresher
            .exchanged(self.credentials, current, refused, call)
            .await
            .map_err(|e| match e {
                RefreshError::Refused(message) => forbidden("exchange_refused", message),
                RefreshError::Credential(e) => unavailable(&e),
                e @ (RefreshError::Unavailable(_) | RefreshError::ConsentNeeded { .. }) => {
                    Deny::unavailable("exchange_unavailable", e.to_string())
                }
            })
    }

    /// The ID token the caller sent in `header` for `server`'s exchange:
    /// signed by the identity provider, issued to the client the access
    /// token was issued to, for the same person. Anything else is refused.
    async fn id_token(
        &self,
        ctx: &RequestContext,
        caller: &Caller,
        server: &str,
        header: &str,
    ) -> Result<String, Deny> {
        let refused = |why: String| {
            forbidden(
                "id_token_refused",
                format!(
                    "server '{server}' exchanges your ID token, sent in the '{header}' header: {why}"
                ),
            )
        };
        let token = ctx
            .kept_header(header)
            .ok_or_else(|| refused("the request has none".into()))?;
        let client = caller
            .client_id
            .as_deref()
            .ok_or_else(|| refused("the access token names no client it was issued to".into()))?;
        let (id, _) = self
            .verifier
            .verify_with_claims(token, client)
            .await
            .map_err(|e| refused(format!("it is not valid ({e})")))?;
        if id.subject != caller.subject {
            return Err(refused(
                "it is another person's than the access token's".into(),
            ));
        }
        Ok(token.to_string())
    }

    /// `open`, with an OAuth access token that is due (or that the upstream
    /// refused, as the filter reports) refreshed first, once across
    /// replicas; `stopped` is the answer when its refresh token no longer
    /// works (or it is already marked so).
    async fn refreshed(
        &self,
        ctx: &RequestContext,
        open: Arc<OpenIdentity>,
        stopped: impl Fn() -> Deny,
    ) -> Result<Arc<OpenIdentity>, Deny> {
        if open.record.consent_required {
            return Err(stopped());
        }
        let refused = ctx
            .rejected_credentials
            .iter()
            .any(|c| *c == format!("{}@{}", open.record.id, open.record.version));
        let fresh = if refused {
            self.refresher.after_refusal(self.credentials, open).await
        } else {
            self.refresher.fresh(self.credentials, open).await
        };
        fresh.map_err(|e| match e {
            RefreshError::ConsentNeeded { .. } => stopped(),
            RefreshError::Unavailable(message) => {
                Deny::unavailable("token_refresh_unavailable", message)
            }
            RefreshError::Credential(e) => unavailable(&e),
            // Only exchanged tokens are refused so, and they do not come here.
            RefreshError::Refused(message) => forbidden("exchange_refused", message),
        })
    }
}

/// The tool, prompt or resource a request names, if any: a call, get or
/// read by its name, or the prompt or resource template a completion
/// refers to (completing a hidden one would reveal it).
fn named_item(ctx: &RequestContext) -> Option<(ItemKind, String)> {
    let message = ctx.mcp.as_ref()?;
    let method = message.method.as_deref()?;
    match (ItemKind::of_method(method), message.name.as_deref()) {
        (Some(kind), Some(name)) => Some((kind, name.to_owned())),
        _ if method == "completion/complete" => ctx.completion_ref(),
        _ => None,
    }
}

/// The candidate of a combined endpoint that decides a request naming
/// `name`: the first whose policy lets `caller` see it. The candidates are
/// assignments of one server, so a name means one tool, and this makes
/// which assignment (constraints, scheme, credential) serves it
/// unambiguous. `None`: no candidate shows it (the hidden answer). A
/// resource URI is judged in canonical form by each candidate, and one
/// with none goes to the first candidate, whose policy refuses it.
fn candidate_showing<'a>(
    policy: &Policy,
    route: &'a Arc<Route>,
    caller: &Caller,
    kind: ItemKind,
    name: &str,
) -> Option<&'a Arc<Route>> {
    route.candidates().iter().find(|c| {
        let verdict = policy.decide(
            &c.gateway.name,
            &c.assignment.name,
            caller,
            kind,
            name,
            None,
        );
        !matches!(verdict, policy::Verdict::Hidden { .. })
    })
}

/// What `caller` sees through a combined endpoint: the union of the
/// candidates' views (a per-user candidate shows nothing to an agent acting
/// for nobody, which cannot use it). `None` when no policy is in force.
fn union_view(policy: &Policy, route: &Arc<Route>, caller: &Caller) -> Option<Visibility> {
    let views: Option<Vec<Visibility>> = route
        .candidates()
        .iter()
        .filter(|c| headless_refusal(c, caller).is_none())
        .map(|c| policy.visibility(&c.gateway.name, &c.assignment.name, caller))
        .collect();
    views.map(Visibility::union)
}

/// Of the refusals of every candidate, the one to answer: a consent
/// request if one needs consent (connecting resolves it), else the first.
fn consent_first<T>(refusals: Vec<(T, Deny)>) -> Option<(T, Deny)> {
    let at = refusals
        .iter()
        .position(|(_, d)| d.reason == CONSENT_NEEDED)
        .unwrap_or(0);
    refusals.into_iter().nth(at)
}

/// An agent acting for nobody cannot use a per-user assignment.
fn headless_refusal(route: &Route, caller: &Caller) -> Option<Deny> {
    (caller.headless && route.assignment.scheme == IdentityScheme::PerUser).then(|| {
        forbidden(
            "agent_without_user",
            format!(
                "agent '{}' acts for nobody (its token's subject is the agent itself), and '{}' uses each person's own identity; call it with a token issued for the user the agent acts for",
                caller.agent.as_deref().unwrap_or_default(),
                route.assignment.name
            ),
        )
    })
}

/// A refusal on `route`, with who and where for the audit trail.
fn attributed_to(route: &Route, caller: &Caller, id: Option<Value>, deny: Deny) -> Decision {
    Decision::Deny(Deny {
        refusal: RequestError { id, ..deny.refusal },
        attribution: Some(Attribution::of(route, Some(caller))),
        ..deny
    })
}

/// Lets the request through on `route` (the assignment actually used).
fn allow(
    route: Arc<Route>,
    caller: Caller,
    identity: Option<Arc<OpenIdentity>>,
    visibility: Option<Box<Visibility>>,
) -> Decision {
    let inject = identity
        .as_ref()
        .and_then(|i| injected_header(&route.server.auth, i));
    let refreshable = route.assignment.scheme == IdentityScheme::PerUser
        && identity
            .as_ref()
            .is_some_and(|i| i.record.kind == CredentialKind::Oauth);
    Decision::Allow(Allow {
        refreshable,
        caller,
        identity: identity.as_ref().map(|i| i.record.id.clone()),
        identity_version: identity.as_ref().map(|i| i.record.version),
        credential_source: identity
            .as_ref()
            .and_then(|i| i.record.exchanged.as_ref())
            .map(|_| "exchange"),
        approval: None,
        route,
        inject,
        visibility,
    })
}

/// The header the upstream gets for `identity`, per how the server expects it.
fn injected_header(auth: &ServerAuth, identity: &OpenIdentity) -> Option<InjectedHeader> {
    match auth {
        ServerAuth::None => None,
        ServerAuth::StaticHeader { header, prefix } => Some(InjectedHeader {
            name: header.to_ascii_lowercase(),
            value: Secret::new(format!(
                "{prefix}{}",
                identity.secret.upstream_value().expose()
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::config::Config;

    /// One server assigned twice (shared for reads, per-user for writes)
    /// and combined as `gh`, shared first.
    const CONFIG: &str = concat!(
        include_str!("../../../testdata/gateway.toml"),
        include_str!("../../../testdata/combined.toml")
    );

    fn setup(text: &str) -> (Policy, Arc<Route>) {
        let config = Config::parse(text).unwrap();
        let policy = Policy::compile(&config, text).unwrap();
        let route = RouteTable::build(&config)
            .find("gw", "/mcp/gh")
            .unwrap()
            .clone();
        (policy, route)
    }

    fn alice() -> Caller {
        Caller {
            subject: "alice".into(),
            ..Caller::default()
        }
    }

    fn chosen(policy: &Policy, route: &Arc<Route>, caller: &Caller, tool: &str) -> Option<String> {
        candidate_showing(policy, route, caller, ItemKind::Tool, tool)
            .map(|r| r.assignment.name.clone())
    }

    #[test]
    fn a_name_goes_to_the_first_candidate_that_shows_it() {
        let (policy, route) = setup(CONFIG);
        let alice = alice();
        assert_eq!(
            chosen(&policy, &route, &alice, "get_repo").as_deref(),
            Some("gh-read")
        );
        assert_eq!(
            chosen(&policy, &route, &alice, "create_issue").as_deref(),
            Some("gh-write")
        );
        // Shown by both: the order of the combined endpoint decides.
        assert_eq!(
            chosen(&policy, &route, &alice, "create_draft").as_deref(),
            Some("gh-read")
        );
        assert_eq!(
            chosen(&policy, &route, &alice, "get_private").as_deref(),
            Some("gh-read")
        );
        assert_eq!(chosen(&policy, &route, &alice, "delete_repo"), None);
        let reversed = CONFIG.replace(
            r#"assignments = ["gh-read", "gh-write"]"#,
            r#"assignments = ["gh-write", "gh-read"]"#,
        );
        let (policy, route) = setup(&reversed);
        assert_eq!(
            chosen(&policy, &route, &alice, "create_draft").as_deref(),
            Some("gh-write")
        );
        assert_eq!(
            chosen(&policy, &route, &alice, "get_repo").as_deref(),
            Some("gh-read")
        );
    }

    #[test]
    fn without_a_policy_the_first_candidate_serves_every_name() {
        let text = &CONFIG[..CONFIG.find("[[policy.grants]]").unwrap()];
        let (policy, route) = setup(text);
        assert_eq!(
            chosen(&policy, &route, &alice(), "anything").as_deref(),
            Some("gh-read")
        );
        assert!(union_view(&policy, &route, &alice()).is_none());
    }

    #[test]
    fn a_list_shows_the_union_of_the_candidates() {
        let (policy, route) = setup(CONFIG);
        let view = union_view(&policy, &route, &alice()).unwrap();
        for tool in ["get_repo", "create_issue", "create_draft", "get_private"] {
            assert!(view.permits(ItemKind::Tool, tool), "{tool}");
        }
        assert!(!view.permits(ItemKind::Tool, "delete_repo"));
        // An agent acting for nobody cannot use the per-user candidate,
        // even where its own grants would show it something.
        let grant = |assignment: &str, tool: &str| {
            format!(
                "[[policy.grants]]\nname = \"bot-{assignment}\"\ngateway = \"g\"\nassignments = [\"{assignment}\"]\nagents = [\"bot\"]\ntools = {{ allow = [\"{tool}\"] }}\n"
            )
        };
        let bot = format!(
            "{}{}",
            grant("gh-read", "get_repo"),
            grant("gh-write", "create_issue")
        );
        let (policy, route) = setup(&format!("[[agents]]\nname = \"bot\"\n{CONFIG}{bot}"));
        let headless = Caller {
            subject: "bot".into(),
            client_id: Some("bot".into()),
            agent: Some("bot".into()),
            headless: true,
            ..Caller::default()
        };
        let view = union_view(&policy, &route, &headless).unwrap();
        assert!(view.permits(ItemKind::Tool, "get_repo"));
        assert!(!view.permits(ItemKind::Tool, "create_issue"));
        assert!(!view.permits(ItemKind::Tool, "get_private"));
    }

    #[test]
    fn consent_is_answered_only_when_a_candidate_needs_it() {
        let refusal = |reason| Deny {
            reason,
            ..Deny::default()
        };
        let picked = consent_first(vec![
            ("read", refusal("vault_unavailable")),
            ("write", refusal(CONSENT_NEEDED)),
        ]);
        assert_eq!(
            picked.map(|(c, d)| (c, d.reason)),
            Some(("write", CONSENT_NEEDED))
        );
        let picked = consent_first(vec![
            ("read", refusal("identity_disabled")),
            ("write", refusal("connection_disabled")),
        ]);
        assert_eq!(picked.map(|(c, _)| c), Some("read"));
        assert!(consent_first::<&str>(Vec::new()).is_none());
    }

    #[test]
    fn attribution_names_the_combined_endpoint_until_an_assignment_is_chosen() {
        let (_, route) = setup(CONFIG);
        let at = Attribution::of(&route, Some(&alice()));
        assert_eq!((at.assignment.as_str(), at.scheme), ("gh", "combined"));
        let at = Attribution::of(&route.candidates()[1], Some(&alice()));
        assert_eq!(
            (at.assignment.as_str(), at.scheme),
            ("gh-write", "per_user")
        );
        assert_eq!(at.user.as_deref(), Some("alice"));
    }
}
