//! What a form post of the connect page must bring before it changes
//! anything: the signed-in session its cookie names, the CSRF token bound
//! to that session, and a person an operator has not deactivated. The
//! POST handlers take it as one extractor, [`SignedInPost`], so none can
//! forget a check or run them in another order.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::Connect;
use super::errors::signed_out;
use super::html::Page;
use super::session::{Session, same_secret};
use latchkey_core::config::Gateway;
use latchkey_core::identity::{PrincipalKind, Status};

/// A form the connect page posts to `/connect/{gateway}/…`.
pub(super) trait SignedInForm: DeserializeOwned + Send {
    /// Whether a person an operator deactivated is refused: yes for every
    /// form that changes what is connected; signing out only ends the
    /// session, which they may still do.
    const REFUSES_DEACTIVATED: bool = true;

    /// The CSRF token it carries.
    fn csrf(&self) -> &str;

    /// The consent request it was posted for, if any: a refusal links back
    /// to the page with it.
    fn request(&self) -> Option<&str>;
}

/// The form of a server's row: authorise, use an identity, disconnect.
#[derive(Deserialize)]
pub(super) struct ServerForm {
    csrf: String,
    pub(super) server: String,
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    pub(super) identity: Option<String>,
}

impl SignedInForm for ServerForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn request(&self) -> Option<&str> {
        self.request.as_deref().filter(|r| !r.is_empty())
    }
}

/// The sign-out button's form.
#[derive(Deserialize)]
pub(super) struct SignOutForm {
    csrf: String,
}

impl SignedInForm for SignOutForm {
    const REFUSES_DEACTIVATED: bool = false;

    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn request(&self) -> Option<&str> {
        None
    }
}

/// A form post of a signed-in person, every check made, in this order
/// (the first refusal is the response): the path's gateway name and the
/// form, as axum's `Path` and `Form` read them (their own refusals: a body
/// that is not a form, a missing field); the gateway one of the config's
/// (404 "No such gateway"); a session the cookie names (401 "Your sign-in
/// has ended", 503 when the store is down); the form's CSRF token that
/// session's (403 "This form is out of date"); and, unless `F` is the
/// sign-out form, the person not deactivated (403).
pub(super) struct SignedInPost<F> {
    pub(super) gateway: Gateway,
    /// The hash the session is kept under.
    pub(super) session_hash: String,
    pub(super) session: Session,
    pub(super) form: F,
}

impl<F: SignedInForm> FromRequest<Arc<Connect>> for SignedInPost<F> {
    type Rejection = Response;

    async fn from_request(req: Request, c: &Arc<Connect>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Path(gateway) = Path::<String>::from_request_parts(&mut parts, c)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<F>::from_request(Request::from_parts(parts, body), c)
            .await
            .map_err(IntoResponse::into_response)?;
        c.signed_in_post(&gateway, &headers, form)
            .await
            .map_err(IntoResponse::into_response)
    }
}

impl Connect {
    /// [`SignedInPost`]'s checks after the path and the form are read.
    async fn signed_in_post<F: SignedInForm>(
        &self,
        gateway: &str,
        headers: &HeaderMap,
        form: F,
    ) -> Result<SignedInPost<F>, Page> {
        let gw = self.gateway(gateway)?;
        let (hash, session) = self
            .csrf_session(headers, &gw.name, form.csrf(), form.request())
            .await?;
        if F::REFUSES_DEACTIVATED {
            self.require_enabled(&session.user).await?;
        }
        Ok(SignedInPost {
            gateway: gw.clone(),
            session_hash: hash,
            session,
            form,
        })
    }

    /// Refuses a person an operator deactivated.
    pub(super) async fn require_enabled(&self, user: &str) -> Result<(), Page> {
        let status = self
            .app
            .credentials
            .principal_status(PrincipalKind::User, user)
            .await
            .map_err(|e| {
                tracing::warn!(target: "latchkey::connect", error = %e, "reading a user's status");
                Page::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Latchkey cannot reach its store",
                    &["Nothing was changed. Try again in a minute."],
                )
            })?;
        if status == Status::Disabled {
            return Err(Page::message(
                StatusCode::FORBIDDEN,
                "Your account is deactivated",
                &[&format!(
                    "User {user} is deactivated in Latchkey, so nothing can be connected. Ask an operator."
                )],
            ));
        }
        Ok(())
    }

    /// The signed-in session of a form post whose CSRF token matches,
    /// whether or not its user may still change anything (signing out).
    async fn csrf_session(
        &self,
        headers: &HeaderMap,
        gateway: &str,
        csrf: &str,
        request: Option<&str>,
    ) -> Result<(String, Session), Page> {
        let Some((hash, session)) = self.session(headers).await? else {
            return Err(signed_out(&self.page_url(gateway, request, None)));
        };
        if !same_secret(&session.csrf, csrf) {
            return Err(Page::message(
                StatusCode::FORBIDDEN,
                "This form is out of date",
                &[
                    "The form did not come from your current connect page (its security token does not match). \
                     Nothing was changed. Reload the connect page and try again.",
                ],
            )
            .with_link(&self.page_url(gateway, request, None), "Back to the connect page"));
        }
        Ok((hash, session))
    }
}
