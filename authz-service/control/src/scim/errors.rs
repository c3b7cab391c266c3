//! Every refusal of `/scim/v2` in SCIM's error format (RFC 7644 §3.12),
//! as `application/scim+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use latchkey_core::scim::{CONTENT_TYPE, MAX_BODY_BYTES, ScimError, ScimType};
use latchkey_store::scim::ScimWriteError;
use latchkey_store::store::StoreError;

/// `[scim]` cannot start: what to set.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScimSetupError(pub String);

/// A SCIM answer: `body` as `application/scim+json` with `status`.
pub(crate) fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

pub(crate) fn refusal(e: &ScimError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    scim_json(status, &e.to_json())
}

/// A change that was not made: the request's fault, or Redis's (503, so
/// the identity provider retries in its next cycle).
pub(crate) fn write_refusal(e: &ScimWriteError) -> Response {
    match e {
        ScimWriteError::Refused(e) => refusal(e),
        ScimWriteError::Store(e) => store_refusal(e),
    }
}

pub(crate) fn store_refusal(e: &StoreError) -> Response {
    tracing::warn!(target: "latchkey::scim", error = %e, "a SCIM request failed in the store");
    refusal(&ScimError::new(
        503,
        None,
        format!("{e}; nothing was changed, try again"),
    ))
}

/// 401 for a request without the SCIM token; `presented` says whether it
/// brought a wrong one (never echoed).
pub(crate) fn unauthorized(presented: bool) -> Response {
    let detail = if presented {
        "the bearer token is not the SCIM token this Latchkey was given ([scim] token_env)"
    } else {
        "a bearer token is required: the SCIM token this Latchkey was given ([scim] token_env)"
    };
    let mut response = refusal(&ScimError::new(401, None, detail));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"latchkey-scim\""),
    );
    response
}

/// A request body over the bound.
pub(crate) fn too_large() -> Response {
    refusal(&ScimError::new(
        413,
        None,
        format!("the request body is over {MAX_BODY_BYTES} bytes, the bound on one SCIM request"),
    ))
}

/// A body that is not JSON.
pub(crate) fn not_json(e: &serde_json::Error) -> ScimError {
    ScimError::bad(
        ScimType::InvalidSyntax,
        format!("the request body is not JSON: {e}"),
    )
}

pub(crate) async fn no_such_endpoint() -> Response {
    refusal(&ScimError::new(
        404,
        None,
        "no such SCIM endpoint; Latchkey serves /Users, /Groups, /ServiceProviderConfig, /ResourceTypes and /Schemas under /scim/v2",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_token_is_answered_with_a_bearer_challenge_and_a_scim_error() {
        let r = unauthorized(false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"latchkey-scim\""
        );
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
    }

    #[test]
    fn a_store_failure_is_a_503_saying_nothing_changed() {
        let r = store_refusal(&StoreError::Unavailable("down".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
