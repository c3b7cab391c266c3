//! Pages for what went wrong, shared by the flows: each says what happened,
//! that nothing (or what) was changed, and what to do next; the ones that
//! may mean an attack also log a warning.

use axum::http::StatusCode;

use super::html::Page;
use latchkey_check::oauth::OauthError;
use latchkey_store::credentials::ChangeError;
use latchkey_store::store::StoreError;

pub(super) fn store_down(e: &StoreError) -> Page {
    tracing::warn!(target: "latchkey::connect", error = %e, "connect page: store unavailable");
    Page::message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Latchkey cannot reach its store",
        &["Nothing was changed. Try again in a minute; if it keeps happening, tell your operator."],
    )
}

pub(super) fn change_failed(e: &ChangeError) -> Page {
    match e {
        ChangeError::Store(s) => store_down(s),
        ChangeError::NotFound(m) => Page::message(
            StatusCode::CONFLICT,
            "That changed in the meantime",
            &[m, "Reload the connect page and try again."],
        ),
    }
}

pub(super) fn expired_request() -> Page {
    Page::message(
        StatusCode::GONE,
        "This link has expired",
        &[
            "Connect links are valid for a short time and this one is no longer valid. \
             Go back to your client and try again: it will give you a new link.",
        ],
    )
}

pub(super) fn someone_elses_request(user: &str) -> Page {
    Page::message(
        StatusCode::FORBIDDEN,
        "This link was made for someone else",
        &[
            &format!(
                "You are signed in as {user}, but this connect link was created for another person's request. \
                 Nothing was connected to anyone."
            ),
            "If you followed a link someone sent you, do not use it. To connect your own accounts, \
             go back to your own client and retry: it will give you your own link.",
        ],
    )
}

pub(super) fn state_unknown() -> Page {
    Page::message(
        StatusCode::BAD_REQUEST,
        "This authorisation has expired or was already used",
        &[
            "Each authorisation can be completed once, within ten minutes, in the browser that started it, \
             and this one is not (or no longer) valid here. \
             Nothing was stored. Go back to the connect page and start again.",
        ],
    )
}

/// A provider's answer that came back to another provider's redirect URI,
/// or named another issuer: what an OAuth mix-up looks like.
pub(super) fn wrong_provider(expected: &str, why: &str) -> Page {
    tracing::warn!(
        target: "latchkey::connect",
        provider = %expected,
        why,
        "an authorisation response does not belong to the provider its flow was started at (possible OAuth mix-up); nothing stored"
    );
    Page::message(
        StatusCode::BAD_REQUEST,
        "This answer came from the wrong provider",
        &[
            &format!(
                "This authorisation was started at {expected}, but the answer {why}. \
                 Latchkey did not accept it, so nothing was stored or connected."
            ),
            "If you did not expect this, a provider may be trying to intercept your authorisation: \
             close this page, open the connect link again and start over. If it keeps happening, tell your operator.",
        ],
    )
}

pub(super) fn state_mismatch() -> Page {
    Page::message(
        StatusCode::BAD_REQUEST,
        "State mismatch",
        &[
            "This authorisation was started in another browser or another sign-in session than this one, \
             so Latchkey did not accept it. Nothing was stored.",
            "Open the connect link again in this browser and start over.",
        ],
    )
}

pub(super) fn signed_out(page_url: &str) -> Page {
    Page::message(
        StatusCode::UNAUTHORIZED,
        "Your sign-in has ended",
        &["Nothing was changed. Open the connect page again to sign in."],
    )
    .with_link(page_url, "Back to the connect page")
}

pub(super) fn oauth_failed(e: &OauthError, what: &str, page_url: &str) -> Page {
    tracing::warn!(target: "latchkey::connect", error = %e, "{what} failed");
    let page = match e {
        OauthError::InvalidGrant { .. } => Page::message(
            StatusCode::BAD_REQUEST,
            "This code was already used or has expired",
            &[
                "The provider no longer accepts this authorisation code. Nothing was stored. \
                 Start again from the connect page.",
            ],
        ),
        OauthError::Unreachable { provider, .. } => Page::message(
            StatusCode::BAD_GATEWAY,
            "The provider is down",
            &[
                &format!(
                    "Latchkey could not reach {provider}, or it answered something unexpected. Nothing was stored."
                ),
                "Try again in a few minutes.",
            ],
        ),
        OauthError::Refused {
            provider, error, ..
        } => Page::message(
            StatusCode::BAD_GATEWAY,
            "The provider refused",
            &[
                &format!("{provider} refused to issue tokens ({error}). Nothing was stored."),
                "Try again; if it keeps happening, tell your operator.",
            ],
        ),
        OauthError::Config { provider, .. } => Page::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Latchkey is not set up for this provider",
            &[&format!(
                "The OAuth client for {provider} is misconfigured; tell your operator. Nothing was stored."
            )],
        ),
    };
    page.with_link(page_url, "Back to the connect page")
}
