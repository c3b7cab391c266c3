//! What a form post of the connect page must bring before it changes
//! anything: the signed-in session its cookie names, the CSRF token bound
//! to that session, and a person an operator has not deactivated.

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::Connect;
use super::errors::signed_out;
use super::html::Page;
use super::session::{Session, same_secret};
use latchkey_core::identity::{PrincipalKind, Status};

/// The form of a server's row: authorise, use an identity, disconnect.
#[derive(Deserialize)]
pub(super) struct ServerForm {
    pub(super) csrf: String,
    pub(super) server: String,
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    pub(super) identity: Option<String>,
}

impl ServerForm {
    pub(super) fn request(&self) -> Option<&str> {
        self.request.as_deref().filter(|r| !r.is_empty())
    }
}

/// The sign-out button's form.
#[derive(Deserialize)]
pub(super) struct SignOutForm {
    pub(super) csrf: String,
}

impl Connect {
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

    /// The signed-in session of a form post, its CSRF token checked.
    pub(super) async fn form_session(
        &self,
        headers: &HeaderMap,
        gateway: &str,
        csrf: &str,
        request: Option<&str>,
    ) -> Result<(String, Session), Page> {
        let (hash, session) = self.csrf_session(headers, gateway, csrf, request).await?;
        self.require_enabled(&session.user).await?;
        Ok((hash, session))
    }

    /// The signed-in session of a form post whose CSRF token matches,
    /// whether or not its user may still change anything (signing out).
    pub(super) async fn csrf_session(
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
