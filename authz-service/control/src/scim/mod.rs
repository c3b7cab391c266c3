//! SCIM 2.0 (`[scim]`): where an identity provider (Okta, Microsoft Entra
//! ID) provisions people and groups, on `latchkey serve`'s HTTP side.
//!
//! Routes, under `/scim/v2`:
//! - `Users`, `Groups`: `POST` creates, `GET` lists (`filter`,
//!   `startIndex`, `count`, `excludedAttributes`); `/{id}`: `GET`, `PUT`,
//!   `PATCH`, `DELETE` (`resources`);
//! - `ServiceProviderConfig`, `ResourceTypes[/{name}]`, `Schemas[/{urn}]`
//!   (`discovery`).
//!
//! Every route needs the identity provider's bearer token, the one
//! `[scim] token_env` names, which carries `scim:provision` and nothing
//! else. Only its SHA-256 is kept in memory, compared in constant time;
//! a request without it is refused (401) before its body is read, so it
//! changes nothing. Every refusal is a SCIM error (`errors`).
//!
//! What a change means for people (`latchkey_store::scim`): a User's
//! `userName` is the person's Latchkey user id; `active: false` or a
//! DELETE deactivates them on every replica before the answer (the change
//! is settled like `latchkey user deactivate`); the display names of the
//! Groups they are in become their roles, in place of their token's
//! `groups`/`roles` claims.

// `errors` first; `render` reads stored resources out; `resources` and
// `discovery` are the handlers.
mod discovery;
mod errors;
mod render;
mod resources;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{any, get};

use crate::shared::ControlState;
use latchkey_core::capability::{Capabilities, Capability};
use latchkey_core::config::ScimConfig;
use latchkey_core::identity::PrincipalKind;
use latchkey_store::scim::{Provisioning, StatusChanges};

pub use errors::ScimSetupError;

/// The shortest SCIM token accepted: it is the identity provider's whole
/// credential, and guessable tokens are guessed.
const MIN_TOKEN_CHARS: usize = 32;

/// What the SCIM handlers share.
pub(crate) struct ScimState {
    pub control: Arc<ControlState>,
    pub provisioning: Provisioning,
    /// The SHA-256 of the bearer token; the token itself is not kept.
    token_digest: [u8; 32],
    /// What the token carries: `scim:provision`.
    token_capabilities: Capabilities,
    /// Where `/scim/v2` is reached, when configured (else the `Host`).
    public_url: Option<String>,
}

impl ScimState {
    pub fn new(control: Arc<ControlState>, config: &ScimConfig) -> Result<Self, ScimSetupError> {
        let token = std::env::var(&config.token_env).unwrap_or_default();
        let token = token.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(ScimSetupError(format!(
                "[scim] reads the identity provider's bearer token from the environment variable {}, which is {}; set it to a random value of at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`) and give the same value to the identity provider",
                config.token_env,
                if token.is_empty() {
                    "not set"
                } else {
                    "too short"
                }
            )));
        }
        let provisioning = Provisioning {
            store: control.credentials.store.clone(),
            actor: config.actor(),
            max_users: config.max_users,
            max_groups: config.max_groups,
        };
        Ok(Self {
            control,
            provisioning,
            token_digest: digest(token),
            token_capabilities: Capabilities::only(&[Capability::ScimProvision]),
            public_url: config
                .public_url
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_string()),
        })
    }

    /// The capabilities a request's bearer token carries: the SCIM
    /// token's, or none.
    fn capabilities(&self, headers: &HeaderMap) -> Capabilities {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        match presented {
            Some(token)
                if aws_lc_rs::constant_time::verify_slices_are_equal(
                    &digest(token),
                    &self.token_digest,
                )
                .is_ok() =>
            {
                self.token_capabilities.clone()
            }
            _ => Capabilities::default(),
        }
    }

    /// The base URL of `/scim/v2`, for `Location` and `meta.location`.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                    .unwrap_or("localhost");
                format!("http://{host}/scim/v2")
            }
        }
    }

    /// After a change: every replica applied it before the identity
    /// provider hears it was made; tokens exchanged for a person just
    /// deactivated are dropped, as `latchkey user deactivate` does.
    pub async fn settle(&self, changes: &StatusChanges) {
        let credentials = &self.control.credentials;
        for user in &changes.deactivated {
            if let Err(e) = credentials
                .drop_exchanged(&self.provisioning.actor, PrincipalKind::User, user)
                .await
            {
                tracing::warn!(target: "latchkey::scim", user = %user, error = %e, "cannot drop the exchanged tokens of a deactivated person");
            }
        }
        latchkey_store::propagation::after_change(&credentials.store, &self.control.metrics).await;
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `/scim/v2` when `[scim]` is configured (nothing otherwise).
pub fn router(control: Arc<ControlState>) -> Result<Router, ScimSetupError> {
    let Some(config) = control.config.scim.clone() else {
        return Ok(Router::new());
    };
    let state = Arc::new(ScimState::new(control, &config)?);
    Ok(Router::new()
        .route(
            "/scim/v2/Users",
            get(resources::list_users).post(resources::create_user),
        )
        .route(
            "/scim/v2/Users/{id}",
            get(resources::get_user)
                .put(resources::replace_user)
                .patch(resources::patch_user)
                .delete(resources::delete_user),
        )
        .route(
            "/scim/v2/Groups",
            get(resources::list_groups).post(resources::create_group),
        )
        .route(
            "/scim/v2/Groups/{id}",
            get(resources::get_group)
                .put(resources::replace_group)
                .patch(resources::patch_group)
                .delete(resources::delete_group),
        )
        .route(
            "/scim/v2/ServiceProviderConfig",
            get(discovery::service_provider_config),
        )
        .route("/scim/v2/ResourceTypes", get(discovery::resource_types))
        .route(
            "/scim/v2/ResourceTypes/{name}",
            get(discovery::resource_type_named),
        )
        .route("/scim/v2/Schemas", get(discovery::schemas))
        .route("/scim/v2/Schemas/{urn}", get(discovery::schema_named))
        .route("/scim/v2", any(errors::no_such_endpoint))
        .route("/scim/v2/{*rest}", any(errors::no_such_endpoint))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state))
}

/// Lets through only requests carrying the SCIM token (`scim:provision`).
async fn authenticate(
    State(state): State<Arc<ScimState>>,
    request: Request,
    next: Next,
) -> Response {
    if state
        .capabilities(request.headers())
        .has(Capability::ScimProvision)
    {
        return next.run(request).await;
    }
    tracing::warn!(
        target: "latchkey::scim",
        method = %request.method(),
        path = %request.uri().path(),
        "a SCIM request without the SCIM bearer token was refused"
    );
    errors::unauthorized(request.headers().contains_key(header::AUTHORIZATION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare_equal_only_for_the_same_token() {
        assert_eq!(digest("a".repeat(40).as_str()), digest(&"a".repeat(40)));
        assert_ne!(digest("a"), digest("b"));
    }
}
