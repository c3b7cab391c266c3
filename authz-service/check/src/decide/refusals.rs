//! How each refusal reads: the status, JSON-RPC code and message a client
//! gets for a hidden name, a policy violation, an ambiguous URI, a missing
//! or unusable credential, a failed authentication or an unavailable
//! store, and the reason the audit trail records. One function per kind,
//! so that every path that refuses for the same reason says the same thing.

use serde_json::Value;

use crate::authn::AuthnError;
use latchkey_core::config::{HiddenAnswer, HiddenStyle};
use latchkey_core::identity::UseError;
use latchkey_core::routing::Route;
use latchkey_core::vault::VaultError;
use latchkey_filter::mcp::RequestError;
use latchkey_filter::visibility::ItemKind;
use latchkey_store::credentials::CredentialError;
use latchkey_store::store::StoreError;

use super::{Deny, codes};

/// The reason of a denial that answers a call to a hidden name.
pub const HIDDEN_BY_POLICY: &str = "hidden_by_policy";

/// A JSON-RPC result that is a failed tool call (`isError: true`): the
/// model reads the message and can correct itself.
pub fn tool_error_body(id: Option<&Value>, text: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {"content": [{"type": "text", "text": text}], "isError": true},
    })
    .to_string()
}

/// The answer to a call naming something the caller may not see: what the
/// upstream would answer for a name that does not exist.
pub(super) fn hidden_answer(answer: &HiddenAnswer, name: &str, id: Option<&Value>) -> Deny {
    let message = answer.message.replace("{name}", name);
    let body = match answer.style {
        HiddenStyle::JsonrpcError => None,
        HiddenStyle::ToolResult => Some(tool_error_body(id, &message)),
    };
    Deny {
        refusal: RequestError {
            http_status: 200,
            jsonrpc_code: answer.code,
            message,
            id: id.cloned(),
        },
        reason: HIDDEN_BY_POLICY,
        body,
        ..Deny::default()
    }
}

impl Deny {
    pub fn unavailable(reason: &'static str, message: String) -> Deny {
        refusal(503, codes::UNAVAILABLE, reason, message)
    }
}

/// A refusal that is a JSON-RPC error with `message`, and nothing else.
fn refusal(http_status: u16, jsonrpc_code: i64, reason: &'static str, message: String) -> Deny {
    Deny {
        refusal: RequestError {
            http_status,
            jsonrpc_code,
            message,
            id: None,
        },
        reason,
        ..Deny::default()
    }
}

/// A resource URI policy cannot judge because it has no single meaning: a
/// bad parameter (400, -32602), the same whether or not a grant shows what
/// it might mean, so it reveals nothing about the policy.
pub(super) fn ambiguous(kind: ItemKind, problem: &latchkey_filter::uri::UriError) -> Deny {
    Deny {
        refusal: RequestError {
            http_status: 400,
            jsonrpc_code: latchkey_filter::jsonrpc::INVALID_PARAMS,
            message: format!(
                "the {} URI is refused: {problem}. The gateway judges a URI in the canonical form the server acts on, so it accepts only URIs with one meaning",
                kind.noun()
            ),
            ..Default::default()
        },
        reason: "ambiguous_uri",
        ..Deny::default()
    }
}

pub fn forbidden(reason: &'static str, message: String) -> Deny {
    refusal(403, codes::FORBIDDEN, reason, message)
}

/// The reason of a refusal that the connect page can resolve: `consent`
/// turns it into the in-band answer.
pub const CONSENT_NEEDED: &str = "consent_needed";

pub(super) fn consent_needed(user: &str, server: &str, gateway: &str) -> Deny {
    forbidden(
        CONSENT_NEEDED,
        format!(
            "consent needed: user '{user}' has not connected an identity for server '{server}' on gateway '{gateway}'"
        ),
    )
}

pub(super) fn shared_tokens_needed(identity: &str, server: &str) -> Deny {
    Deny::unavailable(
        "shared_identity_needs_tokens",
        format!(
            "the shared identity '{identity}' for server '{server}' holds OAuth tokens its provider no longer refreshes; an operator stores new ones (`latchkey identity create --oauth`, then `identity make-global`)"
        ),
    )
}

pub(super) fn reauthorise_needed(user: &str, server: &str, identity: &str) -> Deny {
    forbidden(
        CONSENT_NEEDED,
        format!(
            "consent needed again: the provider of server '{server}' no longer accepts the refresh token of identity '{identity}' (user '{user}'); the user authorises again on the connect page"
        ),
    )
}

pub(super) fn use_denial(e: &UseError) -> Deny {
    let reason = match e {
        UseError::Disabled(_) => "identity_disabled",
        UseError::PrivateToOwner(_) => "identity_private",
        UseError::WrongServer { .. } => "identity_wrong_server",
        UseError::NotGlobal(_) => "identity_not_global",
    };
    forbidden(reason, e.to_string())
}

/// Something the decision needs cannot be read: fail closed with 503. The
/// message names the cause, never a secret.
pub(super) fn unavailable(e: &CredentialError) -> Deny {
    let reason = match e {
        CredentialError::Store(StoreError::Unavailable(_)) => "vault_unavailable",
        CredentialError::Vault(VaultError::UnknownKey { .. }) => "vault_key_missing",
        CredentialError::Vault(VaultError::Tampered(_)) => "vault_record_rejected",
        _ => "credential_error",
    };
    Deny::unavailable(reason, format!("the credential is unavailable: {e}"))
}

pub(super) fn authn_denial(e: AuthnError, route: &Route, id: Option<Value>) -> Deny {
    if !e.is_client_error() {
        return Deny {
            refusal: RequestError {
                http_status: 503,
                jsonrpc_code: codes::UNAVAILABLE,
                message: format!("cannot verify tokens right now: {e}"),
                id,
            },
            www_authenticate: None,
            reason: "idp_unavailable",
            body: None,
            attribution: None,
            elicitation: None,
            sighting: None,
        };
    }
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        route.gateway.resource_metadata_url()
    );
    if let Some(code) = e.bearer_error() {
        challenge.push_str(&format!(
            ", error=\"{code}\", error_description=\"{}\"",
            challenge_text(&e.to_string())
        ));
    }
    Deny {
        refusal: RequestError {
            http_status: 401,
            jsonrpc_code: codes::UNAUTHORIZED,
            message: format!(
                "{e}. Token requirements: {}",
                route.gateway.resource_metadata_url()
            ),
            id,
        },
        www_authenticate: Some(challenge),
        reason: "unauthenticated",
        body: None,
        attribution: None,
        elicitation: None,
        sighting: None,
    }
}

/// `text` as it may stand inside a quoted `WWW-Authenticate` parameter:
/// printable ASCII without `"` or `\\` (RFC 6750 §3), at most 240 bytes.
fn challenge_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            ' '..='~' if c != '\\' => c,
            _ => '?',
        })
        .take(240)
        .collect()
}

/// A call whose grants need scopes the token lacks: 403 with the RFC 6750
/// `insufficient_scope` challenge naming them, which MCP clients answer by
/// asking the identity provider for them and calling again.
pub(super) fn insufficient_scope(
    route: &Route,
    tool: &str,
    scopes: &[String],
    id: Option<&Value>,
) -> Deny {
    let wanted = scopes.join(" ");
    let message = format!(
        "calling tool '{tool}' needs a token with the scope {wanted}; sign in again asking for it"
    );
    Deny {
        refusal: RequestError {
            http_status: 403,
            jsonrpc_code: codes::FORBIDDEN,
            message: message.clone(),
            id: id.cloned(),
        },
        www_authenticate: Some(format!(
            "Bearer error=\"insufficient_scope\", scope=\"{wanted}\", resource_metadata=\"{}\", error_description=\"{}\"",
            route.gateway.resource_metadata_url(),
            challenge_text(&message)
        )),
        reason: "insufficient_scope",
        ..Deny::default()
    }
}

/// A call a step-up rule covers, by a token whose sign-in is too weak or
/// too old: 401 with RFC 9470's `insufficient_user_authentication`
/// challenge, saying which `acr_values` and `max_age` would do.
pub(super) fn step_up_needed(
    route: &Route,
    tool: &str,
    step_up: &latchkey_core::policy::StepUp,
    id: Option<&Value>,
) -> Deny {
    let message = format!(
        "calling tool '{tool}' needs a stronger or more recent sign-in (rule '{}'): {}; sign in again and call again",
        step_up.rule, step_up.problem
    );
    let mut challenge = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\"",
        challenge_text(&message)
    );
    if !step_up.acr_values.is_empty() {
        challenge.push_str(&format!(
            ", acr_values=\"{}\"",
            step_up.acr_values.join(" ")
        ));
    }
    if let Some(max) = step_up.max_age {
        challenge.push_str(&format!(", max_age=\"{max}\""));
    }
    challenge.push_str(&format!(
        ", resource_metadata=\"{}\"",
        route.gateway.resource_metadata_url()
    ));
    Deny {
        refusal: RequestError {
            http_status: 401,
            jsonrpc_code: codes::UNAUTHORIZED,
            message,
            id: id.cloned(),
        },
        www_authenticate: Some(challenge),
        reason: "step_up_needed",
        ..Deny::default()
    }
}
