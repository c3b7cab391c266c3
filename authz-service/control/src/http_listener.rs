//! The HTTP side of `latchkey serve`: RFC 9728 protected resource metadata for
//! each gateway (so an MCP client without a token learns where to get one),
//! liveness/readiness probes, Prometheus metrics (`/metrics`) and, with
//! `[connect]`, the connect page (`connect`); with `[scim]`, SCIM
//! provisioning (`scim`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::shared::ControlState;
use latchkey_core::config::Gateway;
use latchkey_core::metrics::{self, Readings};

/// Fails when `[scim]` is configured without its token.
pub fn router(state: Arc<ControlState>) -> Result<Router, crate::scim::ScimSetupError> {
    let scim = crate::scim::router(state.clone())?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    // With its own listener, `/metrics` is not served here at all.
    let router = if state.config.listen.metrics.is_none() {
        router.route("/metrics", get(scrape))
    } else {
        router
    };
    Ok(router
        .route("/.well-known/oauth-protected-resource", get(metadata_root))
        .route(
            "/.well-known/oauth-protected-resource/{*resource}",
            get(metadata),
        )
        .with_state(state.clone())
        .merge(crate::connect::router(state))
        .merge(scim))
}

/// `[listen] metrics`: `/metrics` alone.
pub fn metrics_router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// Ready when Redis answers, the invalidation subscription is live and the
/// identity provider's keys are loaded: without them, Checks would fail
/// closed or could serve a credential that was just disabled elsewhere.
async fn readyz(State(state): State<Arc<ControlState>>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = state.credentials.store.ping().await {
        problems.push(e.to_string());
    }
    if !state.credentials.cache.subscribed() {
        problems.push("the invalidation subscription to Redis is not established".to_string());
    }
    if !state.announced.load(std::sync::atomic::Ordering::Acquire) {
        problems.push("this replica has not announced itself in Redis yet".to_string());
    }
    if !state.verifier.has_keys().await
        && let Err(e) = state.verifier.refresh().await
    {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        // The pid lets a supervisor tell this process from another one that
        // holds the port it meant to bind.
        (
            StatusCode::OK,
            format!("ready (pid {})", std::process::id()),
        )
            .into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("; ")).into_response()
    }
}

/// Every metric, in the Prometheus text format.
async fn scrape(State(state): State<Arc<ControlState>>) -> Response {
    let mut readings = readings(&state);
    readings.approvals_pending = state.credentials.store.approvals().await.ok().map(|all| {
        all.iter()
            .filter(|r| r.status == latchkey_core::approval::ApprovalStatus::Pending)
            .count() as u64
    });
    let text = state.metrics.render(&readings);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn metadata_root(State(state): State<Arc<ControlState>>) -> Response {
    match state.config.gateways.as_slice() {
        [only] => Json(resource_metadata(only, &state)).into_response(),
        _ => not_found("/"),
    }
}

/// `resource` is the gateway path, or an assignment path under it (clients
/// try the path of the endpoint they were given first).
async fn metadata(
    State(state): State<Arc<ControlState>>,
    Path(resource): Path<String>,
) -> Response {
    let requested = format!("/{}", resource.trim_end_matches('/'));
    let gateway = state.config.gateways.iter().find(|g| {
        let base = g.base_path();
        requested == base || requested.starts_with(&format!("{base}/"))
    });
    match gateway {
        Some(g) => Json(resource_metadata(g, &state)).into_response(),
        None => not_found(&requested),
    }
}

/// RFC 9728 metadata for one gateway, with what its policy can ask of a
/// token: the scopes grants require per tool (`scopes_supported`) and the
/// sign-in classes step-up rules require (`acr_values_supported`, named as
/// in OpenID discovery), each only when there are some.
fn resource_metadata(g: &Gateway, state: &ControlState) -> serde_json::Value {
    let mut doc = json!({
        "resource": g.public_url.as_str().trim_end_matches('/'),
        "authorization_servers": [state.verifier.issuer()],
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Latchkey gateway {}", g.name),
    });
    let policy = state.policy.current();
    let scopes = policy.scopes_supported(&g.name);
    if !scopes.is_empty() {
        doc["scopes_supported"] = json!(scopes);
    }
    let acr = policy.acr_values_supported(&g.name);
    if !acr.is_empty() {
        doc["acr_values_supported"] = json!(acr);
    }
    doc
}

fn not_found(path: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": "not_found",
            "error_description": format!("no gateway is published at {path}"),
        })),
    )
        .into_response()
}

/// What the other parts of this replica count, read at scrape time (the
/// registry in `metrics` knows none of them).
fn readings(state: &ControlState) -> Readings {
    let reloads = state.policy.reloads();
    Readings {
        credential_cache: state.credentials.cache.lookups(),
        token_cache: state.verifier.cache_lookups(),
        audit_backlog: state.audit.backlog(),
        audit_written: state.audit.written(),
        audit_dropped: state.audit.dropped(),
        policy_reloads_ok: reloads.ok,
        policy_reloads_refused: reloads.refused,
        approvals_pending: None,
    }
}
