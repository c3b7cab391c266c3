//! Authorising at a per-user server's OAuth provider: the page's
//! Authorise button starts a PKCE flow bound to the session that pressed
//! it; once `callback` has checked the answer, `finish_server` exchanges
//! the code and stores the tokens as the person's private identity on
//! their connection.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::errors::{change_failed, oauth_failed, store_down};
use super::html::Page;
use super::session::{CallbackQuery, Flow, new_identity_id};
use super::signed_in::{ServerForm, SignedInForm, SignedInPost};
use super::{Connect, redirect};
use latchkey_core::identity::{Availability, ConnectionRecord, CredentialKind, IdentitySecret};
use latchkey_store::credentials::{NewIdentity, PutError, TokenMeta};
use latchkey_store::propagation;

/// `POST /connect/{gateway}/authorise`: sends the browser to the server's
/// provider, the flow in a sealed cookie.
pub(super) async fn authorise(
    State(c): State<Arc<Connect>>,
    SignedInPost {
        gateway,
        session_hash: hash,
        session,
        form,
    }: SignedInPost<ServerForm>,
) -> Result<Response, Page> {
    let (c, gw, form) = (c.as_ref(), &gateway, &form);
    let request = form.request();
    c.consent(request, &session.user, &gw.name).await?;
    c.per_user_server(gw, &form.server)?;
    let provider = c.app.providers.get(&form.server).ok_or_else(|| {
        Page::message(
            StatusCode::BAD_REQUEST,
            "Nothing to authorise",
            &[&format!(
                "Server {} has no OAuth provider configured; pick an identity you have, or ask an operator.",
                form.server
            )],
        )
    })?;
    let start = provider.start(&[]);
    let flow = Flow::Server {
        session: hash,
        user: session.user.clone(),
        gateway: gw.name.clone(),
        server: form.server.clone(),
        request: request.map(str::to_string),
        pkce_verifier: start.pkce_verifier,
    };
    let cookie = c.seal_flow(&start.state, flow)?;
    Ok(redirect(start.url.as_str(), &[cookie]))
}

/// A server flow's callback, checked: what `finish_server` finishes.
pub(super) struct ServerFlow<'a> {
    pub(super) user: &'a str,
    pub(super) gateway: &'a str,
    pub(super) server: &'a str,
    pub(super) request: Option<&'a str>,
    pub(super) pkce_verifier: &'a str,
}

/// Exchanges the code and connects the identity.
pub(super) async fn finish_server(
    c: &Connect,
    q: CallbackQuery,
    f: ServerFlow<'_>,
) -> Result<Response, Page> {
    let page_url = c.page_url(f.gateway, f.request, None);
    if let Some(error) = q.error.as_deref() {
        tracing::info!(
            target: "latchkey::connect",
            user = %f.user, gateway = %f.gateway, server = %f.server, error,
            "the provider sent back an error instead of a code"
        );
        return Err(if error == "access_denied" {
            Page::message(
                StatusCode::FORBIDDEN,
                "You declined",
                &[&format!(
                    "You did not authorise {}, so nothing was connected. \
                     Requests that need it will keep asking until you do.",
                    f.server
                )],
            )
            .with_link(&page_url, "Back to the connect page")
        } else {
            Page::message(
                StatusCode::BAD_GATEWAY,
                "The provider did not authorise",
                &[&format!(
                    "{} answered with the error {error}. Nothing was stored. Try again from the connect page.",
                    f.server
                )],
            )
            .with_link(&page_url, "Back to the connect page")
        });
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        Page::message(
            StatusCode::BAD_REQUEST,
            "No authorisation code",
            &["The provider sent you back without a code. Nothing was stored. Try again from the connect page."],
        )
        .with_link(&page_url, "Back to the connect page")
    })?;
    let gw = c.gateway(f.gateway)?;
    c.per_user_server(gw, f.server)?;
    c.require_enabled(f.user).await?;
    // The request may have expired or been handed to someone else meanwhile.
    c.consent(f.request, f.user, f.gateway).await?;
    let provider = c.app.providers.get(f.server).ok_or_else(|| {
        Page::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "This server has no OAuth provider",
            &["Its [servers.oauth] was removed from the config. Nothing was stored."],
        )
    })?;
    let tokens = provider
        .exchange_code(code, f.pkce_verifier)
        .await
        .map_err(|e| oauth_failed(&e, "exchanging an authorisation code", &page_url))?;
    let id = store_tokens(c, &f, tokens).await?;
    // The client retries once told; whichever replica answers must see it.
    propagation::after_change(c.store(), &c.app.metrics).await;
    tracing::info!(
        target: "latchkey::connect",
        user = %f.user, gateway = %f.gateway, server = %f.server, identity = %id,
        "connected an identity authorised at the provider"
    );
    c.complete_consent(f.request, f.user, f.server).await;
    Ok(redirect(
        &c.page_url(f.gateway, f.request, Some(f.server)),
        &[],
    ))
}

/// Stores new tokens as the person's private identity and puts it on their
/// connection. An identity of theirs that is already there and only waits
/// for consent again gets the new tokens (same id, next version); otherwise
/// a new identity is created. If the connection cannot be changed, a newly
/// created identity is removed again.
async fn store_tokens(
    c: &Connect,
    f: &ServerFlow<'_>,
    tokens: latchkey_check::oauth::TokenSet,
) -> Result<String, Page> {
    let store = c.store();
    let connection: Option<ConnectionRecord> = store
        .get(&store.connection_key(f.gateway, f.user))
        .await
        .map_err(|e| store_down(&e))?;
    let existing = match connection.as_ref().and_then(|c| c.identities.get(f.server)) {
        Some(id) => c.identity_record(id).await?,
        None => None,
    };
    let reauthorise = existing.filter(|r| {
        r.owner == f.user
            && r.availability == Availability::Private
            && r.kind == CredentialKind::Oauth
            && r.consent_required
            && r.server == f.server
    });
    let (id, replace) = match &reauthorise {
        Some(r) => (r.id.clone(), true),
        None => (new_identity_id(f.server, f.user), false),
    };
    let meta = TokenMeta {
        expires_at: tokens.expires_at.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        scopes: tokens.scopes.clone(),
        exchanged: None,
    };
    let secret = IdentitySecret::Oauth {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    };
    c.app
        .credentials
        .put_identity(NewIdentity {
            actor: f.user,
            id: &id,
            server: f.server,
            owner: f.user,
            availability: Availability::Private,
            secret: &secret,
            replace,
            meta,
        })
        .await
        .map_err(|e| match e {
            PutError::Credential(latchkey_store::credentials::CredentialError::Store(s)) => store_down(&s),
            other => {
                tracing::warn!(target: "latchkey::connect", error = %other, "storing a new identity");
                Page::message(
                    StatusCode::CONFLICT,
                    "The identity could not be stored",
                    &[&format!("{other}. Nothing was connected; try again from the connect page.")],
                )
            }
        })?;
    if let Err(e) = c.attach(f.user, f.gateway, f.server, &id).await {
        if !replace && let Err(cleanup) = c.app.credentials.delete_identity(f.user, &id).await {
            tracing::warn!(target: "latchkey::connect", error = %cleanup, identity = %id, "removing an identity that could not be connected");
        }
        return Err(change_failed(&e));
    }
    Ok(id)
}
