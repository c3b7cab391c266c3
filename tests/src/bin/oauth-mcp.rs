//! `oauth-mcp`: an upstream MCP server (official Rust SDK, Streamable HTTP at
//! `/mcp`) that accepts only a downstream OAuth provider's own access tokens,
//! the way a real OAuth-protected MCP server does. End-to-end tests use it to
//! prove which person's token reached the upstream.
//!
//! Every request to `/mcp` needs `Authorization: Bearer <JWT>`: RS256, signed
//! by a key of `--jwks` (fetched again when a token names a key it does not
//! know), unexpired, `iss` = `--issuer`, `aud` containing `--audience`, with
//! a `sub`. Anything else answers 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`.
//!
//! * tool `whoami`: the `sub` of the token that carried the call, as text;
//! * `GET /seen`: `{"subjects": [...], "actors": [...], "rejected": n,
//!   "requests": n}` — the `sub` of every accepted request to `/mcp` in
//!   order, the `sub` of its token's `act` (the agent acting; null for
//!   none), how many were refused, and how many requests reached `/mcp`;
//! * `POST /control/reject-before?sub=<s>`: from now on, refuse that
//!   subject's tokens issued (`iat`) before this second, as a server does
//!   whose provider revoked them (their signature and expiry still pass).
//!
//! It never logs a token: the secret scan of the test logs must pass.
//!
//! Its SSE streams carry a keep-alive comment every 15 s (rmcp's default),
//! or every `--keep-alive-ms`.
//!
//! Usage: `oauth-mcp --port <p> --issuer <url> --jwks <url> --audience <aud> [--keep-alive-ms <ms>]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use rmcp::handler::server::tool::Extension;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_router};
use serde::Deserialize;
use serde_json::json;

/// The verified subject of the request, for the tool.
#[derive(Clone)]
struct Subject(String);

#[derive(Clone)]
struct OauthMcp;

#[tool_router(server_handler)]
impl OauthMcp {
    #[tool(description = "Returns the subject (sub) of the access token that carried the call")]
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        parts
            .extensions
            .get::<Subject>()
            .map(|s| s.0.clone())
            .unwrap_or_else(|| "none".into())
    }
}

#[derive(Default)]
struct Seen {
    subjects: Vec<String>,
    actors: Vec<Option<String>>,
    rejected: u64,
    requests: u64,
    /// sub → tokens issued before this unix second are refused.
    reject_before: HashMap<String, i64>,
}

struct Verifier {
    issuer: String,
    jwks_uri: String,
    audience: String,
    keys: tokio::sync::RwLock<HashMap<String, DecodingKey>>,
    /// When the key set was last fetched, so an unknown `kid` cannot make
    /// every request fetch it again.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<i64>,
    act: Option<serde_json::Value>,
}

/// Who a verified token is for, and who acts.
struct Verified {
    sub: String,
    iat: i64,
    actor: Option<String>,
}

impl Verifier {
    async fn refresh(&self) -> Result<()> {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return Ok(());
        }
        let set: JwkSet = self
            .http
            .get(&self.jwks_uri)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("GET {}", self.jwks_uri))?
            .error_for_status()?
            .json()
            .await
            .with_context(|| format!("{}: not a JWK set", self.jwks_uri))?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                Some((kid, DecodingKey::from_jwk(jwk).ok()?))
            })
            .collect();
        *self.keys.write().await = keys;
        *fetched = Some(Instant::now());
        Ok(())
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Some(k.clone());
        }
        if let Err(e) = self.refresh().await {
            eprintln!("oauth-mcp: fetching the provider's keys failed: {e:#}");
        }
        self.keys.read().await.get(kid).cloned()
    }

    /// The token's `sub`, `iat` and acting party, or why it is refused
    /// (never the token itself).
    async fn verify(&self, token: &str) -> Result<Verified> {
        let header = decode_header(token).context("not a JWT")?;
        if header.alg != Algorithm::RS256 {
            bail!("algorithm {:?}, not RS256", header.alg);
        }
        let kid = header.kid.context("no kid in the header")?;
        let key = self.key(&kid).await.context("signed by an unknown key")?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 5;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| anyhow::anyhow!(e))?;
        let sub = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .context("no sub claim")?;
        Ok(Verified {
            sub,
            iat: data.claims.iat.unwrap_or(0),
            actor: data
                .claims
                .act
                .as_ref()
                .and_then(|a| a["sub"].as_str())
                .map(str::to_string),
        })
    }
}

#[derive(Clone)]
struct ControlState {
    seen: Arc<Mutex<Seen>>,
    verifier: Arc<Verifier>,
}

async fn guard(State(state): State<ControlState>, mut request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/mcp") {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let verdict = match token {
        Some(t) => state.verifier.verify(&t).await,
        None => Err(anyhow::anyhow!("no bearer token")),
    };
    let verdict = {
        let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.requests += 1;
        let verdict = verdict.and_then(|v| match seen.reject_before.get(&v.sub) {
            Some(cutoff) if v.iat < *cutoff => Err(anyhow::anyhow!(
                "a token of {} issued before it was revoked",
                v.sub
            )),
            _ => Ok(v),
        });
        match &verdict {
            Ok(v) => {
                seen.subjects.push(v.sub.clone());
                seen.actors.push(v.actor.clone());
            }
            Err(_) => seen.rejected += 1,
        }
        verdict.map(|v| v.sub)
    };
    match verdict {
        Ok(sub) => {
            request.extensions_mut().insert(Subject(sub));
            next.run(request).await
        }
        Err(why) => {
            eprintln!("oauth-mcp: refused a request to /mcp: {why:#}");
            (
                http::StatusCode::UNAUTHORIZED,
                [(
                    http::header::WWW_AUTHENTICATE,
                    "Bearer error=\"invalid_token\"",
                )],
                Json(json!({"error": "invalid_token"})),
            )
                .into_response()
        }
    }
}

async fn seen(State(state): State<ControlState>) -> Json<serde_json::Value> {
    let s = state.seen.lock().unwrap_or_else(|e| e.into_inner());
    Json(json!({
        "subjects": s.subjects,
        "actors": s.actors,
        "rejected": s.rejected,
        "requests": s.requests,
    }))
}

async fn reject_before(
    State(state): State<ControlState>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(sub) = q.get("sub").filter(|s| !s.is_empty()) else {
        return (http::StatusCode::BAD_REQUEST, "?sub=<subject> is required").into_response();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.reject_before.insert(sub.clone(), now);
    Json(json!({"sub": sub, "reject_before": now})).into_response()
}

const USAGE: &str = "usage: oauth-mcp --port <p> --issuer <url> --jwks <url> --audience <aud> [--keep-alive-ms <ms>]";

#[tokio::main]
async fn main() -> Result<()> {
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(name) = args.next() {
        let Some(name) = name.strip_prefix("--") else {
            bail!("{USAGE}");
        };
        let value = args
            .next()
            .with_context(|| format!("--{name} needs a value; {USAGE}"))?;
        flags.insert(name.to_string(), value);
    }
    let flag = |name: &str| {
        flags
            .get(name)
            .cloned()
            .with_context(|| format!("--{name} is missing; {USAGE}"))
    };
    let port: u16 = flag("port")?.parse().context("--port")?;
    let keep_alive = match flags.get("keep-alive-ms") {
        Some(ms) => Duration::from_millis(ms.parse().context("--keep-alive-ms")?),
        None => Duration::from_secs(15),
    };
    let verifier = Arc::new(Verifier {
        issuer: flag("issuer")?,
        jwks_uri: flag("jwks")?,
        audience: flag("audience")?,
        keys: Default::default(),
        fetched: Default::default(),
        http: reqwest::Client::new(),
    });
    let state = ControlState {
        seen: Arc::default(),
        verifier,
    };
    let mcp = StreamableHttpService::new(
        || Ok(OauthMcp),
        Arc::new(LocalSessionManager::default()),
        // Behind Envoy the Host is whatever the route sets; this is a test peer.
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_sse_keep_alive(Some(keep_alive)),
    );
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route("/seen", get(seen))
        .route("/control/reject-before", axum::routing::post(reject_before))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("OAUTH_MCP_READY http://127.0.0.1:{port}/mcp");
    axum::serve(listener, app).await?;
    Ok(())
}
