//! What a signed-in person does with what they have: put an identity
//! they may use on a server (`use`), take one off (`disconnect`: the
//! person's own OAuth identity is also revoked at its provider and
//! deleted), and end their session (`signout`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::errors::{change_failed, store_down};
use super::html::Page;
use super::session::well_formed_id;
use super::signed_in::{ServerForm, SignOutForm, SignedInForm, SignedInPost};
use super::{Connect, SESSION_COOKIE, redirect};
use latchkey_check::oauth::TokenHint;
use latchkey_core::identity::{
    Availability, ConnectionRecord, CredentialKind, IdentitySecret, VaultRecord,
};
use latchkey_store::credentials::ChangeError;
use latchkey_store::propagation;

/// `POST /connect/{gateway}/use`: puts an identity the person may use on
/// the server.
pub(super) async fn use_identity(
    State(c): State<Arc<Connect>>,
    SignedInPost {
        gateway,
        session,
        form,
        ..
    }: SignedInPost<ServerForm>,
) -> Result<Response, Page> {
    let (c, gw, form) = (c.as_ref(), &gateway, &form);
    let request = form.request();
    let user = session.user.as_str();
    c.consent(request, user, &gw.name).await?;
    c.per_user_server(gw, &form.server)?;
    let page_url = c.page_url(&gw.name, request, None);
    let id = form
        .identity
        .as_deref()
        .filter(|id| well_formed_id(id))
        .ok_or_else(|| {
            Page::message(
                StatusCode::BAD_REQUEST,
                "Pick an identity",
                &["No identity was chosen."],
            )
            .with_link(&page_url, "Back to the connect page")
        })?;
    let not_usable = |why: String| {
        Page::message(
            StatusCode::FORBIDDEN,
            "That identity cannot be used",
            &[&why, "Nothing was changed."],
        )
        .with_link(&page_url, "Back to the connect page")
    };
    let record = c
        .identity_record(id)
        .await?
        .ok_or_else(|| not_usable(format!("There is no identity {id}.")))?;
    // Private means private: someone else's identity is refused here too.
    record
        .usable_by(user, &form.server)
        .map_err(|e| not_usable(e.to_string()))?;
    if record.consent_required {
        return Err(not_usable(format!(
            "Identity {id} needs authorising again at the provider; use Authorise instead."
        )));
    }
    c.attach(user, &gw.name, &form.server, id)
        .await
        .map_err(|e| change_failed(&e))?;
    propagation::after_change(c.store(), &c.app.metrics).await;
    tracing::info!(
        target: "latchkey::connect",
        user, gateway = %gw.name, server = %form.server, identity = %id,
        "connected an existing identity"
    );
    c.complete_consent(request, user, &form.server).await;
    Ok(redirect(
        &c.page_url(&gw.name, request, Some(&form.server)),
        &[],
    ))
}

/// What became of a disconnected identity's tokens at the provider.
enum Revocation {
    /// Not the person's own OAuth identity: it stays in Latchkey as it was.
    Kept,
    /// Deleted; the provider has no revocation endpoint.
    NoEndpoint,
    Revoked,
    Failed(String),
}

/// `POST /connect/{gateway}/disconnect`: takes the server's identity off
/// the connection; the person's own OAuth identity is revoked and deleted.
pub(super) async fn disconnect(
    State(c): State<Arc<Connect>>,
    SignedInPost {
        gateway,
        session,
        form,
        ..
    }: SignedInPost<ServerForm>,
) -> Result<Response, Page> {
    let (c, gw, form) = (c.as_ref(), &gateway, &form);
    let user = session.user.as_str();
    let server = form.server.as_str();
    let page_url = c.page_url(&gw.name, None, None);
    let store = c.store();
    let connection: Option<ConnectionRecord> = store
        .get(&store.connection_key(&gw.name, user))
        .await
        .map_err(|e| store_down(&e))?;
    let Some(id) = connection
        .as_ref()
        .and_then(|c| c.identities.get(server))
        .cloned()
    else {
        return Err(Page::message(
            StatusCode::NOT_FOUND,
            "Nothing to disconnect",
            &[&format!(
                "You have no identity connected for {server} on this gateway."
            )],
        )
        .with_link(&page_url, "Back to the connect page"));
    };
    let record = c.identity_record(&id).await?;
    let own_oauth = record.as_ref().is_some_and(|r| {
        r.owner == user
            && r.availability == Availability::Private
            && r.kind == CredentialKind::Oauth
    });
    // Revoke first; whatever the provider says, the local removal follows.
    let revocation = match &record {
        Some(r) if own_oauth => revoke(c, r).await,
        _ => Revocation::Kept,
    };
    c.app
        .credentials
        .change_connection(
            user,
            user,
            &gw.name,
            "connection.disconnect",
            false,
            |conn| {
                if conn.identities.get(server) == Some(&id) {
                    conn.identities.remove(server);
                }
            },
        )
        .await
        .map_err(|e| change_failed(&e))?;
    if own_oauth {
        forget_identity(c, user, &id).await?;
    }
    propagation::after_change(c.store(), &c.app.metrics).await;
    tracing::info!(
        target: "latchkey::connect",
        user, gateway = %gw.name, server, identity = %id,
        deleted = own_oauth,
        "disconnected an identity"
    );
    let first = format!("Disconnected {server} (identity {id}).");
    let second = match &revocation {
        Revocation::Kept => "The identity itself was not deleted: it is not your own OAuth identity, so it stays available where it was.".to_string(),
        Revocation::NoEndpoint => "Latchkey deleted its tokens. The provider offers no way to revoke them from here; you can revoke Latchkey's access in your account settings there.".to_string(),
        Revocation::Revoked => "The provider revoked its tokens, and Latchkey deleted them.".to_string(),
        Revocation::Failed(why) => format!(
            "The provider could not revoke its tokens ({why}). Latchkey deleted them anyway, so they are no longer used; \
             to be sure they stop working, revoke Latchkey's access in your account settings at the provider."
        ),
    };
    let status = StatusCode::OK;
    let mut page = Page::message(status, "Disconnected", &[&first, &second]);
    if matches!(revocation, Revocation::Failed(_)) {
        page = Page::message(
            status,
            "Disconnected (revocation failed)",
            &[&first, &second],
        );
    }
    Ok(page
        .with_link(&page_url, "Back to the connect page")
        .into_response())
}

/// RFC 7009 revocation of an identity's refresh token, then its access
/// token, at the server's provider.
async fn revoke(c: &Connect, record: &VaultRecord) -> Revocation {
    let Some(provider) = c.app.providers.get(&record.server) else {
        return Revocation::NoEndpoint;
    };
    if !provider.can_revoke() {
        return Revocation::NoEndpoint;
    }
    let secret = match record.open(&c.app.credentials.keys) {
        Ok(s) => s,
        Err(e) => return Revocation::Failed(format!("its tokens could not be opened: {e}")),
    };
    let IdentitySecret::Oauth {
        access_token,
        refresh_token,
    } = secret
    else {
        return Revocation::NoEndpoint;
    };
    let mut failures = Vec::new();
    if let Some(rt) = &refresh_token
        && let Err(e) = provider.revoke(rt, TokenHint::Refresh).await
    {
        failures.push(e.to_string());
    }
    if let Err(e) = provider.revoke(&access_token, TokenHint::Access).await {
        failures.push(e.to_string());
    }
    if failures.is_empty() {
        Revocation::Revoked
    } else {
        tracing::warn!(
            target: "latchkey::connect",
            identity = %record.id, server = %record.server,
            errors = %failures.join("; "),
            "revoking a disconnected identity's tokens failed; deleting it anyway"
        );
        Revocation::Failed(failures.join("; "))
    }
}

/// Deletes the person's identity and takes it off their other connections.
async fn forget_identity(c: &Connect, user: &str, id: &str) -> Result<(), Page> {
    let store = c.store();
    match c.app.credentials.delete_identity(user, id).await {
        Ok(_) | Err(ChangeError::NotFound(_)) => {}
        Err(e) => return Err(change_failed(&e)),
    }
    let keys = store
        .members(&store.user_connections_index(user))
        .await
        .map_err(|e| store_down(&e))?;
    let others: Vec<ConnectionRecord> = store.get_many(&keys).await.map_err(|e| store_down(&e))?;
    for other in others {
        let servers: Vec<String> = other
            .identities
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .collect();
        if servers.is_empty() {
            continue;
        }
        c.app
            .credentials
            .change_connection(
                user,
                user,
                &other.gateway,
                "connection.disconnect",
                false,
                |conn| {
                    for s in &servers {
                        if conn.identities.get(s).map(String::as_str) == Some(id) {
                            conn.identities.remove(s);
                        }
                    }
                },
            )
            .await
            .map_err(|e| change_failed(&e))?;
    }
    Ok(())
}

/// Ends the connect page session: the record goes from Redis and the
/// cookie from the browser. What was connected stays connected.
pub(super) async fn sign_out(
    State(c): State<Arc<Connect>>,
    SignedInPost {
        gateway,
        session_hash: hash,
        session,
        ..
    }: SignedInPost<SignOutForm>,
) -> Result<Response, Page> {
    let (c, gw) = (c.as_ref(), &gateway);
    let store = c.store();
    store
        .delete(&store.connect_session_key(&hash))
        .await
        .map_err(|e| store_down(&e))?;
    tracing::info!(target: "latchkey::connect", user = %session.user, "signed out of the connect page");
    let mut response = Page::message(
        StatusCode::OK,
        "You're signed out",
        &["This browser is no longer signed in to the connect page. \
             What you connected stays connected; your client keeps working."],
    )
    .with_link(&c.page_url(&gw.name, None, None), "Sign in again")
    .into_response();
    let expired = c.set_cookie(SESSION_COOKIE, "", 0);
    if let Ok(v) = HeaderValue::from_str(&expired) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}
