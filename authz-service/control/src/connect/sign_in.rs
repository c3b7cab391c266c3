//! Signing in with the organisation's identity provider: an OIDC
//! authorization code flow with PKCE and a nonce, its client set up on
//! first use (discovering the endpoints when `[connect]` does not name
//! them). It ends in a fresh session, whatever cookie the browser brought.
//! The callback that reaches `finish_sign_in` is `callback`'s.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use url::Url;

use super::errors::{oauth_failed, store_down};
use super::html::Page;
use super::session::{CallbackQuery, Flow, MAX_SESSION_ROLES, Session, random_token, same_secret};
use super::{Connect, SESSION_COOKIE, redirect};
use latchkey_check::oauth::{Provider, ProviderSettings, callback_url};
use latchkey_core::hex;
use latchkey_core::identity::now_rfc3339;

impl Connect {
    /// The sign-in client, discovering the identity provider's endpoints
    /// the first time when `[connect]` does not name them.
    pub(super) async fn login(&self) -> Result<&Provider, Page> {
        self.login
            .get_or_try_init(|| async {
                // Without discovery nothing says the provider always sends
                // `iss`; one it does send is still compared.
                let (auth, token, require_iss) = match (
                    &self.settings.authorization_endpoint,
                    &self.settings.token_endpoint,
                ) {
                    (Some(a), Some(t)) => (a.clone(), t.clone(), false),
                    _ => self.discover().await?,
                };
                Provider::new(ProviderSettings {
                    name: "sign-in",
                    authorization_endpoint: &auth,
                    token_endpoint: &token,
                    revocation_endpoint: None,
                    client_id: &self.settings.client_id,
                    client_secret_env: self.settings.client_secret_env.as_deref(),
                    redirect_uri: callback_url(&self.settings),
                    scopes: &self.settings.scopes,
                    resource: None,
                    timeout: Duration::from_secs(10),
                    // The issuer whose ID tokens are accepted is the one
                    // whose authorisation responses are.
                    issuer: Some(self.app.verifier.issuer()),
                    require_iss,
                })
                .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e: String| {
                tracing::warn!(target: "latchkey::connect", error = %e, "sign-in is not available");
                Page::message(
                    StatusCode::BAD_GATEWAY,
                    "Sign-in is not available",
                    &[
                        "Latchkey could not reach your organisation's identity provider to sign you in.",
                        "Try again in a few minutes; if it keeps happening, tell your operator.",
                    ],
                )
            })
    }

    /// The authorization and token endpoints from the identity provider's
    /// OIDC discovery document, and whether it always sends RFC 9207 `iss`.
    async fn discover(&self) -> Result<(Url, Url, bool), String> {
        #[derive(Deserialize)]
        struct Discovery {
            authorization_endpoint: Url,
            token_endpoint: Url,
            #[serde(default)]
            authorization_response_iss_parameter_supported: bool,
        }
        let issuer = self
            .app
            .config
            .identity_provider
            .issuer
            .trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let d: Discovery = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?
            .json()
            .await
            .map_err(|e| format!("OIDC discovery document at {url}: {}", e.without_url()))?;
        let mut auth = self.settings.authorization_endpoint.clone();
        let mut token = self.settings.token_endpoint.clone();
        Ok((
            auth.take().unwrap_or(d.authorization_endpoint),
            token.take().unwrap_or(d.token_endpoint),
            d.authorization_response_iss_parameter_supported,
        ))
    }
}

/// Sends the browser to the identity provider to sign in. What the
/// callback needs goes with the browser in a sealed flow cookie: an
/// anonymous visit leaves nothing on the server.
pub(super) async fn start_sign_in(c: &Connect, return_to: &str) -> Result<Response, Page> {
    let login = c.login().await?;
    let nonce = random_token();
    let start = login.start(&[("nonce", nonce.as_str())]);
    let flow = Flow::SignIn {
        nonce,
        pkce_verifier: start.pkce_verifier,
        return_to: return_to.to_string(),
    };
    let cookie = c.seal_flow(&start.state, flow)?;
    Ok(redirect(start.url.as_str(), &[cookie]))
}

/// Checks what the identity provider sent back (code, ID token, nonce,
/// the person still enabled) and starts the session.
pub(super) async fn finish_sign_in(
    c: &Connect,
    q: CallbackQuery,
    headers: &HeaderMap,
    nonce: &str,
    pkce_verifier: &str,
    return_to: &str,
) -> Result<Response, Page> {
    if let Some(error) = q.error.as_deref() {
        return Err(if error == "access_denied" {
            Page::message(
                StatusCode::FORBIDDEN,
                "You declined to sign in",
                &["Nothing was connected. Open the connect link again when you want to sign in."],
            )
        } else {
            Page::message(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                &[
                    &format!("Your identity provider answered with the error {error}."),
                    "Open the connect link again to retry; if it keeps happening, tell your operator.",
                ],
            )
        });
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        Page::message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &["The identity provider sent you back without a code. Open the connect link again."],
        )
    })?;
    let login = c.login().await?;
    let tokens = login
        .exchange_code(code, pkce_verifier)
        .await
        .map_err(|e| oauth_failed(&e, "signing in", return_to))?;
    let Some(id_token) = tokens.id_token else {
        return Err(Page::message(
            StatusCode::BAD_GATEWAY,
            "Sign-in failed",
            &[
                "Your identity provider did not return an ID token (is `openid` among [connect] scopes?). Tell your operator.",
            ],
        ));
    };
    let (caller, claims) = c
        .app
        .verifier
        .verify_with_claims(id_token.expose(), &c.settings.client_id)
        .await
        .map_err(|e| {
            tracing::warn!(target: "latchkey::connect", error = %e, "the sign-in ID token was refused");
            Page::message(
                if e.is_client_error() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::BAD_GATEWAY
                },
                "Sign-in could not be verified",
                &[
                    &format!("Latchkey did not accept the identity provider's answer: {e}."),
                    "Open the connect link again; if it keeps happening, tell your operator.",
                ],
            )
        })?;
    let nonce_ok = claims
        .get("nonce")
        .and_then(|v| v.as_str())
        .is_some_and(|n| same_secret(n, nonce));
    if !nonce_ok {
        tracing::warn!(target: "latchkey::connect", "a sign-in ID token did not carry this sign-in's nonce");
        return Err(Page::message(
            StatusCode::BAD_REQUEST,
            "Sign-in could not be verified",
            &[
                "The identity provider's answer does not belong to this sign-in (nonce mismatch). Open the connect link again.",
            ],
        ));
    }
    c.require_enabled(&caller.subject).await?;
    // A fresh session id and CSRF token, whatever cookie the browser
    // brought: a value someone planted before the sign-in never becomes a
    // session (fixation), and a session it already had ends here.
    let store = c.store();
    if let Some((old, _)) = c.session(headers).await? {
        store
            .delete(&store.connect_session_key(&old))
            .await
            .map_err(|e| store_down(&e))?;
    }
    let id = random_token();
    let capabilities = latchkey_core::capability::Capabilities::from_claims(
        &claims,
        &c.app.config.admin.claim_grants(),
    );
    let session = Session {
        user: caller.subject.clone(),
        csrf: random_token(),
        created_at: now_rfc3339(),
        roles: caller
            .roles
            .iter()
            .filter(|r| r.len() <= 128)
            .take(MAX_SESSION_ROLES)
            .cloned()
            .collect(),
        decides_for_others: capabilities
            .has(latchkey_core::capability::Capability::ApprovalsDecide),
    };
    let ttl = Duration::from_secs(c.settings.session_ttl_secs.max(1));
    store
        .put_expiring(
            &store.connect_session_key(&hex::sha256(id.as_bytes())),
            &session,
            ttl,
        )
        .await
        .map_err(|e| store_down(&e))?;
    tracing::info!(target: "latchkey::connect", user = %caller.subject, "signed in to the connect page");
    let cookies = [c.set_cookie(SESSION_COOKIE, &id, ttl.as_secs())];
    Ok(redirect(return_to, &cookies))
}
