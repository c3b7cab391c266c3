//! `GET /connect/callback[/{server}]`: where the providers send the
//! browser back, one redirect URI each. The `state` names the flow cookie
//! this browser holds; an answer that arrives at another provider's
//! address, comes back to another session, or names another issuer
//! (RFC 9207) is refused before any code is exchanged (OAuth mix-up).
//! What passes is finished by its flow's module: `sign_in` or
//! `authorise`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Connect;
use super::authorise::{ServerFlow, finish_server};
use super::errors::{state_mismatch, state_unknown, wrong_provider};
use super::html::Page;
use super::session::{CallbackQuery, Flow, same_secret};
use super::sign_in::finish_sign_in;
use latchkey_check::oauth::{IssError, Provider};

/// Where the organisation's identity provider sends the browser back.
pub(super) async fn sign_in_callback(
    State(c): State<Arc<Connect>>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    callback(&c, None, q, &headers).await
}

/// Where server `server`'s provider sends the browser back.
pub(super) async fn server_callback(
    State(c): State<Arc<Connect>>,
    Path(server): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    callback(&c, Some(&server), q, &headers).await
}

/// Finishes the flow the callback's `state` names in this browser, if it
/// was started at the provider whose redirect URI this is (`server`, or
/// the sign-in when `None`). Whatever the answer, the flow's cookie goes.
async fn callback(
    c: &Connect,
    server: Option<&str>,
    q: CallbackQuery,
    headers: &HeaderMap,
) -> Response {
    let Some(state) = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 512)
        .map(str::to_string)
    else {
        return Page::message(
            StatusCode::BAD_REQUEST,
            "Nothing to finish here",
            &[
                "This address is where a provider sends you back after you authorise; it needs the state it was given. \
               Start from the connect page.",
            ],
        )
        .into_response();
    };
    let (flow, clear) = c.open_flow(headers, &state);
    let mut response = match flow {
        None => state_unknown().into_response(),
        Some(flow) => match callback_inner(c, server, flow, q, headers).await {
            Ok(r) => r,
            Err(p) => p.into_response(),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

async fn callback_inner(
    c: &Connect,
    server: Option<&str>,
    flow: Flow,
    q: CallbackQuery,
    headers: &HeaderMap,
) -> Result<Response, Page> {
    match (server, flow) {
        (
            None,
            Flow::SignIn {
                nonce,
                pkce_verifier,
                return_to,
            },
        ) => {
            let login = c.login().await?;
            check_iss(login, q.iss.as_deref())?;
            finish_sign_in(c, q, headers, &nonce, &pkce_verifier, &return_to).await
        }
        (Some(arrived_at), Flow::SignIn { .. }) => Err(wrong_provider(
            "your organisation's identity provider",
            &format!("came back to the redirect address of server {arrived_at}"),
        )),
        (arrived_at, Flow::Server { server, .. }) if arrived_at != Some(server.as_str()) => {
            Err(wrong_provider(
                &format!("the provider of {server}"),
                &match arrived_at {
                    Some(other) => format!("came back to the redirect address of server {other}"),
                    None => "came back to the sign-in address".to_string(),
                },
            ))
        }
        (
            _,
            Flow::Server {
                session,
                user,
                gateway,
                server,
                request,
                pkce_verifier,
            },
        ) => {
            let current = c.session(headers).await?;
            let same_session = current
                .as_ref()
                .is_some_and(|(hash, s)| same_secret(hash, &session) && s.user == user);
            if !same_session {
                tracing::warn!(
                    target: "latchkey::connect",
                    gateway = %gateway,
                    server = %server,
                    "an authorisation came back to another session than the one that started it; nothing stored"
                );
                return Err(state_mismatch());
            }
            if let Some(provider) = c.app.providers.get(&server) {
                check_iss(provider, q.iss.as_deref())?;
            }
            finish_server(
                c,
                q,
                ServerFlow {
                    user: &user,
                    gateway: &gateway,
                    server: &server,
                    request: request.as_deref(),
                    pkce_verifier: &pkce_verifier,
                },
            )
            .await
        }
    }
}

/// RFC 9207: the response's `iss` is the issuer of the provider the flow
/// was started at.
fn check_iss(provider: &Provider, iss: Option<&str>) -> Result<(), Page> {
    provider.check_iss(iss).map_err(|e| {
        let why = match &e {
            IssError::Other { got, .. } => format!("names another issuer ({got})"),
            IssError::Missing { .. } => {
                "does not say which issuer sent it, and this provider always does".to_string()
            }
        };
        let expected = if provider.name() == "sign-in" {
            "your organisation's identity provider".to_string()
        } else {
            format!("the provider of {}", provider.name())
        };
        tracing::warn!(target: "latchkey::connect", error = %e, "RFC 9207 iss check failed");
        wrong_provider(&expected, &why)
    })
}
