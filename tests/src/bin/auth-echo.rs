//! `auth-echo`: a small upstream MCP server (official Rust SDK, Streamable
//! HTTP at `/mcp`) that reports the credential it received, so end-to-end
//! tests can prove what reached the upstream and what did not.
//!
//! * tool `whoami`: returns the `Authorization` header of the HTTP request
//!   that carried the call (or `none`);
//! * `GET /seen`: every `Authorization` value and every header name this
//!   server received on any request (but `/seen` itself), and how many
//!   requests reached `/mcp`, as JSON:
//!   `{"authorization": [...], "header_names": [...], "cookie_names": [...],
//!   "requests": n, "round_trip_fields": n}` (the names of the cookies it
//!   was sent, never their values; the last counts bodies carrying an MCP
//!   `requestState` or `inputResponses`).
//!
//! * `POST /challenge` with `{"status": 401, "www_authenticate": "..."}`:
//!   from then on it plays a malicious (or merely refusing) upstream and
//!   answers every `/mcp` request with that status and `WWW-Authenticate`;
//!   with status 200 it answers normally but adds the header; with
//!   `{"status": 0}` it stops.
//!
//! It never logs header values: the secret scan of the test logs must pass.
//!
//! Its SSE streams carry a keep-alive comment every 15 s (rmcp's default),
//! or every `--keep-alive-ms`.
//!
//! Usage: `auth-echo --port <port> [--keep-alive-ms <ms>]`

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use rmcp::handler::server::tool::Extension;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_router};
use serde_json::json;

#[derive(Default)]
struct Seen {
    authorization: Vec<String>,
    header_names: std::collections::BTreeSet<String>,
    /// The name of every cookie received (values are never kept).
    cookie_names: std::collections::BTreeSet<String>,
    requests: u64,
    /// Bodies that carried a `requestState` or `inputResponses`: the
    /// gateway's own consent round trip must never reach this server.
    round_trip_fields: u64,
    /// The status and `WWW-Authenticate` to answer `/mcp` with, if any.
    challenge: Option<(u16, String)>,
}

type SharedSeen = Arc<Mutex<Seen>>;

#[derive(Clone)]
struct AuthEcho;

#[tool_router(server_handler)]
impl AuthEcho {
    #[tool(description = "Returns the Authorization header this server received with the call")]
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    }
}

async fn record(State(seen): State<SharedSeen>, request: Request, next: Next) -> Response {
    // MCP messages are small: read the body to look for the round-trip
    // fields, then hand the same bytes on.
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let carries_round_trip = [&b"requestState"[..], b"inputResponses"]
        .iter()
        .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle));
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    if carries_round_trip && let Ok(mut s) = seen.lock() {
        s.round_trip_fields += 1;
    }
    // Everything but the test's own look at `/seen` is recorded.
    if request.uri().path() != "/seen"
        && let Ok(mut s) = seen.lock()
    {
        if request.uri().path().starts_with("/mcp") {
            s.requests += 1;
        }
        for (name, value) in request.headers() {
            s.header_names.insert(name.as_str().to_string());
            if name == http::header::AUTHORIZATION {
                s.authorization
                    .push(value.to_str().unwrap_or("<non-ascii>").to_string());
            }
            if name == http::header::COOKIE {
                let names: Vec<String> = value
                    .to_str()
                    .unwrap_or_default()
                    .split(';')
                    .filter_map(|pair| pair.split('=').next())
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect();
                s.cookie_names.extend(names);
            }
        }
    }
    let challenge = if request.uri().path().starts_with("/mcp") {
        seen.lock().ok().and_then(|s| s.challenge.clone())
    } else {
        None
    };
    let Some((status, www_authenticate)) = challenge else {
        return next.run(request).await;
    };
    let mut response = if status == 200 {
        next.run(request).await
    } else {
        let mut refused = Json(json!({"error": "invalid_token"})).into_response();
        *refused.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
        refused
    };
    if let Ok(value) = http::HeaderValue::from_str(&www_authenticate) {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, value);
    }
    response
}

#[derive(serde::Deserialize)]
struct Challenge {
    status: u16,
    #[serde(default)]
    www_authenticate: String,
}

async fn set_challenge(
    State(seen): State<SharedSeen>,
    Json(c): Json<Challenge>,
) -> Json<serde_json::Value> {
    if let Ok(mut s) = seen.lock() {
        s.challenge = (c.status != 0).then_some((c.status, c.www_authenticate));
    }
    Json(json!({"ok": true}))
}

async fn seen(State(seen): State<SharedSeen>) -> Json<serde_json::Value> {
    let s = seen.lock().map(|s| {
        json!({
            "authorization": s.authorization,
            "header_names": s.header_names,
            "cookie_names": s.cookie_names,
            "requests": s.requests,
            "round_trip_fields": s.round_trip_fields,
        })
    });
    Json(s.unwrap_or_else(|_| json!({"error": "poisoned"})))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: auth-echo --port <port> [--keep-alive-ms <ms>]";
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut keep_alive = std::time::Duration::from_secs(15);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| anyhow::anyhow!(USAGE))?;
        match flag.as_str() {
            "--port" => port = Some(value.parse()?),
            "--keep-alive-ms" => keep_alive = std::time::Duration::from_millis(value.parse()?),
            _ => anyhow::bail!(USAGE),
        }
    }
    let port = port.ok_or_else(|| anyhow::anyhow!(USAGE))?;
    let seen_state: SharedSeen = Arc::default();
    let mcp = StreamableHttpService::new(
        || Ok(AuthEcho),
        Arc::new(LocalSessionManager::default()),
        // Behind Envoy the Host is whatever the route sets; this is a test peer.
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_sse_keep_alive(Some(keep_alive)),
    );
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route("/seen", get(seen))
        .route("/challenge", axum::routing::post(set_challenge))
        .layer(middleware::from_fn_with_state(seen_state.clone(), record))
        .with_state(seen_state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("AUTH_ECHO_READY http://127.0.0.1:{port}/mcp");
    axum::serve(listener, app).await?;
    Ok(())
}
