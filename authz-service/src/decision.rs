//! The decision for one request: authenticate the caller, find the server
//! assignment, and resolve the credential its identity scheme calls for.
//! Produces a `Decision`; turning it into an Envoy response is `respond`'s job.

use std::sync::Arc;

use serde_json::Value;

use crate::authn::{AuthnError, Caller, TokenVerifier, bearer_token};
use crate::config::{IdentityScheme, ServerAuth};
use crate::context::RequestContext;
use crate::routing::{Route, RouteTable};
use crate::vault::{CredentialError, Secret, Vault, VaultError};

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
    pub inject: Option<InjectedHeader>,
}

/// Why a request is refused, with everything needed to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Deny {
    pub http_status: u16,
    pub jsonrpc_code: i64,
    pub message: String,
    /// JSON-RPC id of the request, echoed in the error body.
    pub id: Option<Value>,
    /// `WWW-Authenticate` for 401s (RFC 6750 + RFC 9728 `resource_metadata`).
    pub www_authenticate: Option<String>,
    /// Short machine-readable reason for logs and audit.
    pub reason: &'static str,
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
    pub verifier: &'a TokenVerifier,
    pub vault: &'a Vault,
}

impl Decider<'_> {
    pub async fn decide(&self, ctx: &RequestContext) -> Decision {
        let id = ctx.mcp.as_ref().and_then(|m| m.id.clone());
        let Some(route) = self.routes.find(&ctx.host, &ctx.path).cloned() else {
            return Decision::Deny(Deny {
                http_status: 404,
                jsonrpc_code: codes::NOT_FOUND,
                message: format!(
                    "no MCP server is published at {}{}; check the URL your client is configured with",
                    ctx.host, ctx.path
                ),
                id,
                www_authenticate: None,
                reason: "no_route",
            });
        };
        let audience = route.gateway.public_url.as_str().trim_end_matches('/');
        let caller = match self.authenticate(ctx, audience).await {
            Ok(c) => c,
            Err(e) => return Decision::Deny(authn_denial(e, &route, id)),
        };
        match self.credential(&route, &caller).await {
            Ok((identity, inject)) => Decision::Allow(Allow {
                caller,
                route,
                identity,
                inject,
            }),
            Err(deny) => Decision::Deny(Deny { id, ..deny }),
        }
    }

    async fn authenticate(
        &self,
        ctx: &RequestContext,
        audience: &str,
    ) -> Result<Caller, AuthnError> {
        let token = bearer_token(ctx.authorization.as_deref())?;
        self.verifier.verify(token, audience).await
    }

    async fn credential(
        &self,
        route: &Route,
        caller: &Caller,
    ) -> Result<(Option<String>, Option<InjectedHeader>), Deny> {
        match &route.assignment.scheme {
            IdentityScheme::PerUser => Err(Deny {
                http_status: 403,
                jsonrpc_code: codes::FORBIDDEN,
                message: format!(
                    "consent needed: user '{}' has not connected an identity for server '{}' on gateway '{}'",
                    caller.subject, route.server.name, route.gateway.name
                ),
                id: None,
                www_authenticate: None,
                reason: "consent_needed",
            }),
            IdentityScheme::Shared { identity } => {
                let secret = self
                    .vault
                    .global_secret(identity, &route.server.name)
                    .await
                    .map_err(|e| credential_denial(&e, route))?;
                let inject = match &route.server.auth {
                    ServerAuth::None => None,
                    ServerAuth::StaticHeader { header, prefix } => Some(InjectedHeader {
                        name: header.to_ascii_lowercase(),
                        value: Secret::new(format!("{prefix}{}", secret.expose())),
                    }),
                };
                Ok((Some(identity.clone()), inject))
            }
        }
    }
}

fn authn_denial(e: AuthnError, route: &Route, id: Option<Value>) -> Deny {
    if !e.is_client_error() {
        return Deny {
            http_status: 503,
            jsonrpc_code: codes::UNAVAILABLE,
            message: format!("cannot verify tokens right now: {e}"),
            id,
            www_authenticate: None,
            reason: "idp_unavailable",
        };
    }
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        route.gateway.resource_metadata_url()
    );
    if let Some(code) = e.bearer_error() {
        challenge.push_str(&format!(
            ", error=\"{code}\", error_description=\"{}\"",
            e.to_string().replace('"', "'")
        ));
    }
    Deny {
        http_status: 401,
        jsonrpc_code: codes::UNAUTHORIZED,
        message: format!(
            "{e}. Token requirements: {}",
            route.gateway.resource_metadata_url()
        ),
        id,
        www_authenticate: Some(challenge),
        reason: "unauthenticated",
    }
}

fn credential_denial(e: &CredentialError, route: &Route) -> Deny {
    let (status, reason) = match e {
        CredentialError::Vault(VaultError::Unavailable(_)) => (503, "vault_unavailable"),
        CredentialError::Vault(VaultError::UnknownKey { .. }) => (503, "vault_key_missing"),
        CredentialError::Disabled(_) => (403, "identity_disabled"),
        _ => (503, "credential_error"),
    };
    // The message names the identity and cause but never the secret.
    Deny {
        http_status: status,
        jsonrpc_code: if status == 403 {
            codes::FORBIDDEN
        } else {
            codes::UNAVAILABLE
        },
        message: format!(
            "the credential for server '{}' is unavailable: {e}",
            route.server.name
        ),
        id: None,
        www_authenticate: None,
        reason,
    }
}
