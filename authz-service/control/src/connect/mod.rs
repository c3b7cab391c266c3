//! The connect page (`[connect]`): where a person signs in with the
//! organisation's identity provider and gives a gateway's per-user servers
//! an identity: by authorising at the server's OAuth provider, or by picking
//! one they already have. Also where they disconnect one.
//!
//! Routes (on `latchkey serve`'s HTTP side):
//! - `GET /connect/{gateway}[?request=<consent id>]`: the page; signs in
//!   first when there is no session.
//! - `POST /connect/{gateway}/authorise|use|disconnect`: the page's buttons
//!   (a CSRF token bound to the session in every form).
//! - `GET /connect/callback`: where the organisation's identity provider
//!   sends the browser back after sign-in; `GET /connect/callback/{server}`:
//!   where server `server`'s provider does. One redirect URI per provider,
//!   and the RFC 9207 `iss` checked where the issuer is known, so a
//!   response cannot finish another provider's flow (OAuth mix-up).
//!
//! What a flow needs between its start and its callback (`state`, OIDC
//! nonce, PKCE verifier, where to go back to, and for a server flow the
//! session that started it) travels in a cookie of its own, sealed with
//! AES-256-GCM under a key derived from the vault's master key
//! ([`KeyRing::seal_value`](latchkey_core::vault::KeyRing::seal_value)), named by
//! the `state`'s digest, expiring with the flow and removed by its
//! callback. So an anonymous visit writes nothing to Redis: the only
//! server state is a signed-in session, created once the identity
//! provider vouched for the person, and kept in Redis under the hash of
//! its cookie (never the value itself), with a TTL.
//!
//! Cookies: every value is minted fresh by Latchkey (a value the browser
//! presents is never adopted: no session fixation or login CSRF); over
//! https they are `__Host-` cookies (Secure, `Path=/`, no `Domain`, so a
//! sibling host cannot plant or overwrite them); over http (loopback
//! development) they keep their plain names, scoped to
//! `<public_url path>/connect`. Nothing here logs or shows a token, a code,
//! a PKCE verifier or a session id.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use url::Url;

pub mod html;

use crate::shared::ControlState;
use html::{Candidate, Page, Row, View, connect_page};
use latchkey_check::consent::ConsentRecord;
use latchkey_check::oauth::{
    IssError, OauthError, Provider, ProviderSettings, TokenHint, callback_url,
};
use latchkey_core::config::{ConnectConfig, Gateway, IdentityScheme};
use latchkey_core::hex;
use latchkey_core::identity::{
    Availability, ConnectionRecord, CredentialKind, IdentitySecret, PrincipalKind, Status,
    VaultRecord, now_rfc3339,
};
use latchkey_store::credentials::{ChangeError, NewIdentity, PutError, TokenMeta};
use latchkey_store::propagation;
use latchkey_store::store::StoreError;

/// The signed-in session cookie (`__Host-` prefixed over https).
pub const SESSION_COOKIE: &str = "latchkey_connect";
/// A flow in progress: `latchkey_flow_<16 hex digits of its state's
/// digest>` (`__Host-` prefixed over https), holding the sealed [`Flow`].
pub const FLOW_COOKIE: &str = "latchkey_flow_";
/// How long an authorization flow (sign-in or provider) may take.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// The connect page's shared state.
pub struct Connect {
    app: Arc<ControlState>,
    settings: ConnectConfig,
    /// The sign-in client at the organisation's identity provider, set up
    /// on first use (its endpoints may need OIDC discovery).
    login: tokio::sync::OnceCell<Provider>,
}

/// The routes of the connect page; none without `[connect]`.
pub fn router(app: Arc<ControlState>) -> Router {
    let Some(settings) = app.config.connect.clone() else {
        return Router::new();
    };
    let connect = Arc::new(Connect {
        app,
        settings,
        login: tokio::sync::OnceCell::new(),
    });
    Router::new()
        .route("/connect/callback", get(sign_in_callback))
        .route("/connect/callback/{server}", get(server_callback))
        .route("/connect/{gateway}", get(page))
        .route("/connect/{gateway}/authorise", post(authorise))
        .route("/connect/{gateway}/use", post(use_identity))
        .route("/connect/{gateway}/disconnect", post(disconnect))
        .route("/connect/{gateway}/signout", post(sign_out))
        .with_state(connect)
}

// --- what is kept: sessions in Redis, flows in sealed cookies -----------------

/// A signed-in person. Stored under the hash of the cookie value.
#[derive(Serialize, Deserialize)]
struct Session {
    user: String,
    /// Every form carries it; compared in constant time.
    csrf: String,
    created_at: String,
}

/// What a flow cookie holds, sealed: the flow, the `state` it was issued
/// under (compared with the callback's) and when it stops being accepted
/// (the cookie's own `Max-Age` is the browser's to keep or not).
#[derive(Serialize, Deserialize)]
struct SealedFlow {
    state: String,
    /// Unix seconds.
    exp: i64,
    flow: Flow,
}

/// An authorization flow between its start and its callback. No `Debug`:
/// it holds a PKCE verifier.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Flow {
    /// Signing in at the organisation's identity provider.
    SignIn {
        nonce: String,
        pkce_verifier: String,
        /// Page to go back to (a URL under `[connect] public_url`).
        return_to: String,
    },
    /// Authorising at a server's provider.
    Server {
        /// Hash of the session cookie that started it.
        session: String,
        user: String,
        gateway: String,
        server: String,
        request: Option<String>,
        pkce_verifier: String,
    },
}

// --- small pieces: randomness, hashes, cookies, ids -------------------------

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// A value this module generated: base64url, 43 characters. Anything else
/// is refused before it reaches Redis.
pub fn well_formed_token(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A consent request id or identity id as it may appear in a form or link.
fn well_formed_id(value: &str) -> bool {
    latchkey_core::identity::valid_identity_id(value)
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers, name).next()
}

/// Every value of cookie `name` in the request, at most four. A browser
/// sends one per path it holds, the most specific path first, so a value
/// planted under a narrower path comes before Latchkey's own: each is
/// tried rather than only the first (which would let it shadow a session).
pub fn cookies<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .take(4)
}

/// The name cookie `base` goes by: `__Host-<base>` when `secure`.
pub fn cookie_name(base: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax (the callbacks are
/// top-level navigations from the providers' sites), Secure when served
/// over https. `max_age` 0 removes it. See [`Connect::set_cookie`] for the
/// name prefix and path.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// A new identity's id: `<server>-<user>-<random>`, reduced to the
/// characters ids allow and at most 128 of them.
pub fn new_identity_id(server: &str, user: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let suffix = hex::random(6);
    format!("{}-{}-{suffix}", clean(server, 48), clean(user, 64))
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

// --- pages for what went wrong --------------------------------------------------

fn store_down(e: &StoreError) -> Page {
    tracing::warn!(target: "latchkey::connect", error = %e, "connect page: store unavailable");
    Page::message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Latchkey cannot reach its store",
        &["Nothing was changed. Try again in a minute; if it keeps happening, tell your operator."],
    )
}

fn change_failed(e: &ChangeError) -> Page {
    match e {
        ChangeError::Store(s) => store_down(s),
        ChangeError::NotFound(m) => Page::message(
            StatusCode::CONFLICT,
            "That changed in the meantime",
            &[m, "Reload the connect page and try again."],
        ),
    }
}

fn expired_request() -> Page {
    Page::message(
        StatusCode::GONE,
        "This link has expired",
        &[
            "Connect links are valid for a short time and this one is no longer valid. \
             Go back to your client and try again: it will give you a new link.",
        ],
    )
}

fn someone_elses_request(user: &str) -> Page {
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

fn state_unknown() -> Page {
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
fn wrong_provider(expected: &str, why: &str) -> Page {
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

fn state_mismatch() -> Page {
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

fn signed_out(page_url: &str) -> Page {
    Page::message(
        StatusCode::UNAUTHORIZED,
        "Your sign-in has ended",
        &["Nothing was changed. Open the connect page again to sign in."],
    )
    .with_link(page_url, "Back to the connect page")
}

fn oauth_failed(e: &OauthError, what: &str, page_url: &str) -> Page {
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

fn redirect(to: &str, cookies: &[String]) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

// --- the service ----------------------------------------------------------------

impl Connect {
    fn store(&self) -> &latchkey_store::store::Store {
        &self.app.credentials.store
    }

    fn secure(&self) -> bool {
        self.settings.public_url.scheme() == "https"
    }

    /// Cookie `base`'s name: `__Host-<base>` over https (the browser then
    /// insists on Secure, `Path=/` and no `Domain`, so no other host, not
    /// even a sibling subdomain, can plant or overwrite it), `<base>` on
    /// http, where browsers allow no prefix (loopback development).
    fn cookie_name(&self, base: &str) -> String {
        cookie_name(base, self.secure())
    }

    /// A `Set-Cookie` for cookie `base`: over https a `__Host-` cookie
    /// (`Path=/`, as the prefix requires), on http scoped to the connect
    /// pages.
    fn set_cookie(&self, base: &str, value: &str, max_age: u64) -> String {
        let path = if self.secure() {
            "/".to_string()
        } else {
            self.cookie_path()
        };
        set_cookie(
            &self.cookie_name(base),
            value,
            &path,
            max_age,
            self.secure(),
        )
    }

    /// The name of the cookie that carries the flow issued under `state`.
    fn flow_cookie(state: &str) -> String {
        format!("{FLOW_COOKIE}{}", &hex::sha256(state.as_bytes())[..16])
    }

    /// Seals `flow`, issued under `state`, into the `Set-Cookie` of its own
    /// flow cookie. Nothing is written anywhere else.
    fn seal_flow(&self, state: &str, flow: Flow) -> Result<String, Page> {
        let base = Self::flow_cookie(state);
        let sealed = SealedFlow {
            state: state.to_string(),
            exp: time::OffsetDateTime::now_utc().unix_timestamp() + FLOW_TTL.as_secs() as i64,
            flow,
        };
        let value = serde_json::to_vec(&sealed)
            .ok()
            .and_then(|plain| {
                self.app
                    .credentials
                    .keys
                    .seal_value(&self.cookie_name(&base), &plain)
            })
            .ok_or_else(|| {
                tracing::warn!(target: "latchkey::connect", "sealing a flow cookie failed");
                Page::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Latchkey cannot start this authorisation",
                    &["Its vault key is not usable on this replica; tell your operator. Nothing was changed."],
                )
            })?;
        Ok(self.set_cookie(&base, &value, FLOW_TTL.as_secs()))
    }

    /// The flow this browser started under `state`: its cookie opened,
    /// unexpired and issued for exactly this `state`; and the `Set-Cookie`
    /// that removes that cookie (sent with whatever the callback answers,
    /// so a flow is finished at most once per browser).
    fn open_flow(&self, headers: &HeaderMap, state: &str) -> (Option<Flow>, String) {
        let base = Self::flow_cookie(state);
        let name = self.cookie_name(&base);
        let clear = self.set_cookie(&base, "", 0);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let flow = cookies(headers, &name)
            .filter(|v| v.len() <= 4096)
            .filter_map(|v| self.app.credentials.keys.open_value(&name, v))
            .filter_map(|plain| serde_json::from_slice::<SealedFlow>(&plain).ok())
            .find(|f| same_secret(&f.state, state) && f.exp >= now)
            .map(|f| f.flow);
        (flow, clear)
    }

    /// `<public_url path>/connect`: where the cookies apply.
    fn cookie_path(&self) -> String {
        format!(
            "{}/connect",
            self.settings.public_url.path().trim_end_matches('/')
        )
    }

    /// The page of `gateway`, with `request` and `connected` when given.
    fn page_url(&self, gateway: &str, request: Option<&str>, connected: Option<&str>) -> String {
        let mut url = self.settings.public_url.clone();
        let path = format!("{}/{}", self.cookie_path(), gateway);
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            if let Some(r) = request {
                q.append_pair("request", r);
            }
            if let Some(c) = connected {
                q.append_pair("connected", c);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url.to_string()
    }

    fn gateway(&self, name: &str) -> Result<&Gateway, Page> {
        self.app.config.gateway(name).ok_or_else(|| {
            Page::message(
                StatusCode::NOT_FOUND,
                "No such gateway",
                &[&format!(
                    "There is no gateway named {name}. Check the link your client gave you."
                )],
            )
        })
    }

    /// The servers of `gateway` where people bring their own identity, in
    /// the config's order, once each.
    fn per_user_servers(gateway: &Gateway) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &gateway.assignments {
            if a.scheme == IdentityScheme::PerUser && !out.contains(&a.server) {
                out.push(a.server.clone());
            }
        }
        out
    }

    /// The sign-in client, discovering the identity provider's endpoints
    /// the first time when `[connect]` does not name them.
    async fn login(&self) -> Result<&Provider, Page> {
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

    /// The session the request's cookie names, with the hash it is kept under.
    async fn session(&self, headers: &HeaderMap) -> Result<Option<(String, Session)>, Page> {
        let name = self.cookie_name(SESSION_COOKIE);
        let store = self.store();
        for id in cookies(headers, &name).filter(|v| well_formed_token(v)) {
            let hash = hex::sha256(id.as_bytes());
            match store
                .get::<Session>(&store.connect_session_key(&hash))
                .await
            {
                Ok(Some(s)) => return Ok(Some((hash, s))),
                Ok(None) => continue,
                Err(e) => return Err(store_down(&e)),
            }
        }
        Ok(None)
    }

    async fn require_enabled(&self, user: &str) -> Result<(), Page> {
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

    /// The consent request a page or form names, checked against the
    /// signed-in person and the gateway.
    async fn consent(
        &self,
        request: Option<&str>,
        user: &str,
        gateway: &str,
    ) -> Result<Option<ConsentRecord>, Page> {
        let Some(id) = request else { return Ok(None) };
        if !well_formed_id(id) {
            return Err(expired_request());
        }
        let store = self.store();
        let record = store
            .get::<ConsentRecord>(&store.consent_key(id))
            .await
            .map_err(|e| store_down(&e))?
            .ok_or_else(expired_request)?;
        let expired =
            parse_time(&record.expires_at).is_none_or(|t| t <= time::OffsetDateTime::now_utc());
        if expired {
            return Err(expired_request());
        }
        if record.user != user {
            tracing::warn!(
                target: "latchkey::connect",
                signed_in = %user,
                gateway,
                "a connect link made for another user was opened; nothing attached"
            );
            return Err(someone_elses_request(user));
        }
        if record.gateway != gateway {
            return Err(Page::message(
                StatusCode::BAD_REQUEST,
                "This link is for another gateway",
                &[&format!(
                    "It was made for gateway {}; open the link exactly as your client gave it.",
                    record.gateway
                )],
            ));
        }
        Ok(Some(record))
    }

    /// Sets `completed_at` on the consent request once its server has an
    /// identity (keeps the record's expiry).
    async fn complete_consent(&self, request: Option<&str>, user: &str, server: &str) {
        let Some(id) = request else { return };
        let store = self.store();
        let key = store.consent_key(id);
        let Ok(Some(mut record)) = store.get::<ConsentRecord>(&key).await else {
            return;
        };
        if record.user != user || record.server != server || record.completed_at.is_some() {
            return;
        }
        record.completed_at = Some(now_rfc3339());
        if let Err(e) = store.replace_keep_ttl(&key, &record).await {
            tracing::warn!(target: "latchkey::connect", error = %e, "marking a consent request completed");
        }
    }

    /// The signed-in session of a form post, its CSRF token checked.
    async fn form_session(
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

    fn per_user_server(&self, gateway: &Gateway, server: &str) -> Result<(), Page> {
        if Self::per_user_servers(gateway).iter().any(|s| s == server) {
            Ok(())
        } else {
            Err(Page::message(
                StatusCode::BAD_REQUEST,
                "Not a server you connect here",
                &[&format!(
                    "Gateway {} has no server {server} where you bring your own identity.",
                    gateway.name
                )],
            ))
        }
    }

    async fn identity_record(&self, id: &str) -> Result<Option<VaultRecord>, Page> {
        let store = self.store();
        store
            .get::<VaultRecord>(&store.identity_key(id))
            .await
            .map_err(|e| store_down(&e))
    }

    /// Whether `record` can back `user`'s requests to `server` right now.
    fn usable(record: &VaultRecord, user: &str, server: &str) -> bool {
        record.usable_by(user, server).is_ok() && !record.consent_required
    }

    /// The rows of the page: each per-user server, connected or not, and
    /// what could connect it.
    async fn rows(
        &self,
        gateway: &Gateway,
        user: &str,
        connection: Option<&ConnectionRecord>,
    ) -> Result<Vec<Row>, Page> {
        let store = self.store();
        let servers = Self::per_user_servers(gateway);
        // Candidates: the person's own identities and the organisation's global ones.
        let mut ids = store
            .members(&store.owner_index(user))
            .await
            .map_err(|e| store_down(&e))?;
        ids.extend(
            store
                .members(&store.identities_index())
                .await
                .map_err(|e| store_down(&e))?,
        );
        ids.sort();
        ids.dedup();
        let keys: Vec<String> = ids.iter().map(|id| store.identity_key(id)).collect();
        let records: Vec<VaultRecord> = store.get_many(&keys).await.map_err(|e| store_down(&e))?;
        let mut rows = Vec::new();
        for server in servers {
            let current = connection.and_then(|c| c.identities.get(&server));
            let current_record = current.and_then(|id| records.iter().find(|r| &r.id == id));
            if let Some(r) = current_record.filter(|r| Self::usable(r, user, &server)) {
                rows.push(Row::Connected {
                    server,
                    identity: r.id.clone(),
                });
                continue;
            }
            let why = match (current, current_record) {
                (None, _) => "not connected".to_string(),
                (Some(id), None) => format!("identity {id} no longer exists"),
                (Some(id), Some(r)) if r.consent_required => {
                    format!("identity {id} needs authorising again")
                }
                (Some(id), Some(r)) => match r.usable_by(user, &server) {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("identity {id} cannot be used"),
                },
            };
            let mut candidates: Vec<Candidate> = records
                .iter()
                .filter(|r| Self::usable(r, user, &server))
                .filter(|r| r.owner == user || r.availability == Availability::Global)
                .map(|r| Candidate {
                    id: r.id.clone(),
                    whose: if r.availability == Availability::Global {
                        "shared by the organisation"
                    } else {
                        "yours"
                    },
                })
                .collect();
            // The person's own first.
            candidates.sort_by_key(|c| c.whose != "yours");
            rows.push(Row::Needed {
                can_authorise: self.app.providers.get(&server).is_some(),
                server,
                why,
                candidates,
            });
        }
        Ok(rows)
    }

    /// Puts `identity` on `user`'s connection to `gateway` for `server`.
    async fn attach(
        &self,
        user: &str,
        gateway: &str,
        server: &str,
        identity: &str,
    ) -> Result<(), ChangeError> {
        self.app
            .credentials
            .change_connection(user, user, gateway, "connection.use_identity", true, |c| {
                c.identities
                    .insert(server.to_string(), identity.to_string());
            })
            .await
            .map(|_| ())
    }
}

// --- GET /connect/{gateway} -----------------------------------------------------

#[derive(Deserialize)]
struct PageQuery {
    request: Option<String>,
    connected: Option<String>,
}

async fn page(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    match page_inner(&c, &gateway, q, &headers).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn page_inner(
    c: &Connect,
    gateway: &str,
    q: PageQuery,
    headers: &HeaderMap,
) -> Result<Response, Page> {
    let gw = c.gateway(gateway)?;
    let request = q.request.as_deref().filter(|r| !r.is_empty());
    if request.is_some_and(|r| !well_formed_id(r)) {
        return Err(expired_request());
    }
    let Some((_, session)) = c.session(headers).await? else {
        return start_sign_in(c, &c.page_url(&gw.name, request, None)).await;
    };
    c.require_enabled(&session.user).await?;
    let consent = c.consent(request, &session.user, &gw.name).await?;
    let notice = q
        .connected
        .as_deref()
        .filter(|s| Connect::per_user_servers(gw).iter().any(|x| x == s))
        .map(|s| format!("Connected {s}."));
    Ok(render(c, gw, &session, request, consent.as_ref(), notice)
        .await?
        .into_response())
}

async fn render(
    c: &Connect,
    gw: &Gateway,
    session: &Session,
    request: Option<&str>,
    consent: Option<&ConsentRecord>,
    notice: Option<String>,
) -> Result<Page, Page> {
    let store = c.store();
    let connection: Option<ConnectionRecord> = store
        .get(&store.connection_key(&gw.name, &session.user))
        .await
        .map_err(|e| store_down(&e))?;
    let rows = c.rows(gw, &session.user, connection.as_ref()).await?;
    // A request whose server already has an identity (connected earlier,
    // or elsewhere) is complete as soon as its person opens it.
    if let Some(record) = consent.filter(|r| r.completed_at.is_none())
        && rows
            .iter()
            .any(|row| matches!(row, Row::Connected { server, .. } if *server == record.server))
    {
        c.complete_consent(request, &session.user, &record.server)
            .await;
    }
    let action_base = format!("{}/{}", c.cookie_path(), gw.name);
    let view = View {
        gateway: &gw.name,
        user: &session.user,
        csrf: &session.csrf,
        request,
        requested_server: consent.map(|r| r.server.as_str()),
        rows,
        notice,
        connection_disabled: connection
            .as_ref()
            .is_some_and(|c| c.status == Status::Disabled),
        action_base: &action_base,
    };
    Ok(connect_page(&view))
}

/// Sends the browser to the identity provider to sign in. What the
/// callback needs goes with the browser in a sealed flow cookie: an
/// anonymous visit leaves nothing on the server.
async fn start_sign_in(c: &Connect, return_to: &str) -> Result<Response, Page> {
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

// --- GET /connect/callback[/{server}] -----------------------------------------------

#[derive(Deserialize)]
struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    /// RFC 9207: the issuer of the authorisation response.
    iss: Option<String>,
}

/// Where the organisation's identity provider sends the browser back.
async fn sign_in_callback(
    State(c): State<Arc<Connect>>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    callback(&c, None, q, &headers).await
}

/// Where server `server`'s provider sends the browser back.
async fn server_callback(
    State(c): State<Arc<Connect>>,
    Path(server): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Response {
    callback(&c, Some(&server), q, &headers).await
}

/// Finishes the flow the callback's `state` names in this browser, if it
/// was started at the provider whose redirect URI this is (`server`, or
/// the sign-in when `None`). Whatever the answer, the flow's cookie goes.
async fn callback(
    c: &Connect,
    server: Option<&str>,
    q: CallbackQuery,
    headers: &HeaderMap,
) -> Response {
    let Some(state) = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 512)
        .map(str::to_string)
    else {
        return Page::message(
            StatusCode::BAD_REQUEST,
            "Nothing to finish here",
            &[
                "This address is where a provider sends you back after you authorise; it needs the state it was given. \
               Start from the connect page.",
            ],
        )
        .into_response();
    };
    let (flow, clear) = c.open_flow(headers, &state);
    let mut response = match flow {
        None => state_unknown().into_response(),
        Some(flow) => match callback_inner(c, server, flow, q, headers).await {
            Ok(r) => r,
            Err(p) => p.into_response(),
        },
    };
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

async fn callback_inner(
    c: &Connect,
    server: Option<&str>,
    flow: Flow,
    q: CallbackQuery,
    headers: &HeaderMap,
) -> Result<Response, Page> {
    match (server, flow) {
        (
            None,
            Flow::SignIn {
                nonce,
                pkce_verifier,
                return_to,
            },
        ) => {
            let login = c.login().await?;
            check_iss(login, q.iss.as_deref())?;
            finish_sign_in(c, q, headers, &nonce, &pkce_verifier, &return_to).await
        }
        (Some(arrived_at), Flow::SignIn { .. }) => Err(wrong_provider(
            "your organisation's identity provider",
            &format!("came back to the redirect address of server {arrived_at}"),
        )),
        (arrived_at, Flow::Server { server, .. }) if arrived_at != Some(server.as_str()) => {
            Err(wrong_provider(
                &format!("the provider of {server}"),
                &match arrived_at {
                    Some(other) => format!("came back to the redirect address of server {other}"),
                    None => "came back to the sign-in address".to_string(),
                },
            ))
        }
        (
            _,
            Flow::Server {
                session,
                user,
                gateway,
                server,
                request,
                pkce_verifier,
            },
        ) => {
            let current = c.session(headers).await?;
            let same_session = current
                .as_ref()
                .is_some_and(|(hash, s)| same_secret(hash, &session) && s.user == user);
            if !same_session {
                tracing::warn!(
                    target: "latchkey::connect",
                    gateway = %gateway,
                    server = %server,
                    "an authorisation came back to another session than the one that started it; nothing stored"
                );
                return Err(state_mismatch());
            }
            if let Some(provider) = c.app.providers.get(&server) {
                check_iss(provider, q.iss.as_deref())?;
            }
            finish_server(
                c,
                q,
                ServerFlow {
                    user: &user,
                    gateway: &gateway,
                    server: &server,
                    request: request.as_deref(),
                    pkce_verifier: &pkce_verifier,
                },
            )
            .await
        }
    }
}

/// RFC 9207: the response's `iss` is the issuer of the provider the flow
/// was started at.
fn check_iss(provider: &Provider, iss: Option<&str>) -> Result<(), Page> {
    provider.check_iss(iss).map_err(|e| {
        let why = match &e {
            IssError::Other { got, .. } => format!("names another issuer ({got})"),
            IssError::Missing { .. } => {
                "does not say which issuer sent it, and this provider always does".to_string()
            }
        };
        let expected = if provider.name() == "sign-in" {
            "your organisation's identity provider".to_string()
        } else {
            format!("the provider of {}", provider.name())
        };
        tracing::warn!(target: "latchkey::connect", error = %e, "RFC 9207 iss check failed");
        wrong_provider(&expected, &why)
    })
}

async fn finish_sign_in(
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
    let session = Session {
        user: caller.subject.clone(),
        csrf: random_token(),
        created_at: now_rfc3339(),
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

struct ServerFlow<'a> {
    user: &'a str,
    gateway: &'a str,
    server: &'a str,
    request: Option<&'a str>,
    pkce_verifier: &'a str,
}

async fn finish_server(c: &Connect, q: CallbackQuery, f: ServerFlow<'_>) -> Result<Response, Page> {
    let page_url = c.page_url(f.gateway, f.request, None);
    if let Some(error) = q.error.as_deref() {
        tracing::info!(
            target: "latchkey::connect",
            user = %f.user, gateway = %f.gateway, server = %f.server, error,
            "the provider sent back an error instead of a code"
        );
        return Err(if error == "access_denied" {
            Page::message(
                StatusCode::FORBIDDEN,
                "You declined",
                &[&format!(
                    "You did not authorise {}, so nothing was connected. \
                     Requests that need it will keep asking until you do.",
                    f.server
                )],
            )
            .with_link(&page_url, "Back to the connect page")
        } else {
            Page::message(
                StatusCode::BAD_GATEWAY,
                "The provider did not authorise",
                &[&format!(
                    "{} answered with the error {error}. Nothing was stored. Try again from the connect page.",
                    f.server
                )],
            )
            .with_link(&page_url, "Back to the connect page")
        });
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        Page::message(
            StatusCode::BAD_REQUEST,
            "No authorisation code",
            &["The provider sent you back without a code. Nothing was stored. Try again from the connect page."],
        )
        .with_link(&page_url, "Back to the connect page")
    })?;
    let gw = c.gateway(f.gateway)?;
    c.per_user_server(gw, f.server)?;
    c.require_enabled(f.user).await?;
    // The request may have expired or been handed to someone else meanwhile.
    c.consent(f.request, f.user, f.gateway).await?;
    let provider = c.app.providers.get(f.server).ok_or_else(|| {
        Page::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "This server has no OAuth provider",
            &["Its [servers.oauth] was removed from the config. Nothing was stored."],
        )
    })?;
    let tokens = provider
        .exchange_code(code, f.pkce_verifier)
        .await
        .map_err(|e| oauth_failed(&e, "exchanging an authorisation code", &page_url))?;
    let id = store_tokens(c, &f, tokens).await?;
    // The client retries once told; whichever replica answers must see it.
    propagation::after_change(c.store(), &c.app.metrics).await;
    tracing::info!(
        target: "latchkey::connect",
        user = %f.user, gateway = %f.gateway, server = %f.server, identity = %id,
        "connected an identity authorised at the provider"
    );
    c.complete_consent(f.request, f.user, f.server).await;
    Ok(redirect(
        &c.page_url(f.gateway, f.request, Some(f.server)),
        &[],
    ))
}

/// Stores new tokens as the person's private identity and puts it on their
/// connection. An identity of theirs that is already there and only waits
/// for consent again gets the new tokens (same id, next version); otherwise
/// a new identity is created. If the connection cannot be changed, a newly
/// created identity is removed again.
async fn store_tokens(
    c: &Connect,
    f: &ServerFlow<'_>,
    tokens: latchkey_check::oauth::TokenSet,
) -> Result<String, Page> {
    let store = c.store();
    let connection: Option<ConnectionRecord> = store
        .get(&store.connection_key(f.gateway, f.user))
        .await
        .map_err(|e| store_down(&e))?;
    let existing = match connection.as_ref().and_then(|c| c.identities.get(f.server)) {
        Some(id) => c.identity_record(id).await?,
        None => None,
    };
    let reauthorise = existing.filter(|r| {
        r.owner == f.user
            && r.availability == Availability::Private
            && r.kind == CredentialKind::Oauth
            && r.consent_required
            && r.server == f.server
    });
    let (id, replace) = match &reauthorise {
        Some(r) => (r.id.clone(), true),
        None => (new_identity_id(f.server, f.user), false),
    };
    let meta = TokenMeta {
        expires_at: tokens.expires_at.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        scopes: tokens.scopes.clone(),
    };
    let secret = IdentitySecret::Oauth {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    };
    c.app
        .credentials
        .put_identity(NewIdentity {
            actor: f.user,
            id: &id,
            server: f.server,
            owner: f.user,
            availability: Availability::Private,
            secret: &secret,
            replace,
            meta,
        })
        .await
        .map_err(|e| match e {
            PutError::Credential(latchkey_store::credentials::CredentialError::Store(s)) => store_down(&s),
            other => {
                tracing::warn!(target: "latchkey::connect", error = %other, "storing a new identity");
                Page::message(
                    StatusCode::CONFLICT,
                    "The identity could not be stored",
                    &[&format!("{other}. Nothing was connected; try again from the connect page.")],
                )
            }
        })?;
    if let Err(e) = c.attach(f.user, f.gateway, f.server, &id).await {
        if !replace && let Err(cleanup) = c.app.credentials.delete_identity(f.user, &id).await {
            tracing::warn!(target: "latchkey::connect", error = %cleanup, identity = %id, "removing an identity that could not be connected");
        }
        return Err(change_failed(&e));
    }
    Ok(id)
}

// --- POST /connect/{gateway}/authorise | use | disconnect ---------------------------

#[derive(Deserialize)]
struct ServerForm {
    csrf: String,
    server: String,
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    identity: Option<String>,
}

impl ServerForm {
    fn request(&self) -> Option<&str> {
        self.request.as_deref().filter(|r| !r.is_empty())
    }
}

async fn authorise(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ServerForm>,
) -> Result<Response, Page> {
    let (c, gateway, headers, form) = (c.as_ref(), gateway.as_str(), &headers, &form);
    let gw = c.gateway(gateway)?;
    let request = form.request();
    let (hash, session) = c
        .form_session(headers, &gw.name, &form.csrf, request)
        .await?;
    c.consent(request, &session.user, &gw.name).await?;
    c.per_user_server(gw, &form.server)?;
    let provider = c.app.providers.get(&form.server).ok_or_else(|| {
        Page::message(
            StatusCode::BAD_REQUEST,
            "Nothing to authorise",
            &[&format!(
                "Server {} has no OAuth provider configured; pick an identity you have, or ask an operator.",
                form.server
            )],
        )
    })?;
    let start = provider.start(&[]);
    let flow = Flow::Server {
        session: hash,
        user: session.user.clone(),
        gateway: gw.name.clone(),
        server: form.server.clone(),
        request: request.map(str::to_string),
        pkce_verifier: start.pkce_verifier,
    };
    let cookie = c.seal_flow(&start.state, flow)?;
    Ok(redirect(start.url.as_str(), &[cookie]))
}

async fn use_identity(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ServerForm>,
) -> Result<Response, Page> {
    let (c, gateway, headers, form) = (c.as_ref(), gateway.as_str(), &headers, &form);
    let gw = c.gateway(gateway)?;
    let request = form.request();
    let (_, session) = c
        .form_session(headers, &gw.name, &form.csrf, request)
        .await?;
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

#[derive(Deserialize)]
struct SignOutForm {
    csrf: String,
}

/// Ends the connect page session: the record goes from Redis and the
/// cookie from the browser. What was connected stays connected.
async fn sign_out(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Result<Response, Page> {
    let (c, gateway, headers, form) = (c.as_ref(), gateway.as_str(), &headers, &form);
    let gw = c.gateway(gateway)?;
    let (hash, session) = c.csrf_session(headers, &gw.name, &form.csrf, None).await?;
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

/// What became of a disconnected identity's tokens at the provider.
enum Revocation {
    /// Not the person's own OAuth identity: it stays in Latchkey as it was.
    Kept,
    /// Deleted; the provider has no revocation endpoint.
    NoEndpoint,
    Revoked,
    Failed(String),
}

async fn disconnect(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ServerForm>,
) -> Result<Response, Page> {
    let (c, gateway, headers, form) = (c.as_ref(), gateway.as_str(), &headers, &form);
    let gw = c.gateway(gateway)?;
    let request = form.request();
    let (_, session) = c
        .form_session(headers, &gw.name, &form.csrf, request)
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_fresh_and_well_formed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(well_formed_token(&a), "{a}");
        assert!(!well_formed_token("short"));
        assert!(!well_formed_token(&format!("{}!", &a[..42])));
    }

    #[test]
    fn keys_are_named_by_a_digest_not_the_value() {
        let v = random_token();
        let d = hex::sha256(v.as_bytes());
        assert_eq!(d.len(), 64);
        assert!(!d.contains(&v));
        assert_eq!(d, hex::sha256(v.as_bytes()));
        assert_ne!(d, hex::sha256(random_token().as_bytes()));
    }

    #[test]
    fn csrf_comparison_needs_the_exact_token() {
        let t = random_token();
        assert!(same_secret(&t, &t.clone()));
        assert!(!same_secret(&t, &random_token()));
        assert!(!same_secret(&t, ""));
        assert!(!same_secret(&t, &t[..42]));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey_connect_x=aaa; latchkey_connect=bbb"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("other=1"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("bbb"));
        assert_eq!(cookie(&h, "latchkey_connect_x"), Some("aaa"));
        assert_eq!(cookie(&h, "other"), Some("1"));
        assert_eq!(cookie(&h, "latchkey"), None);
        // Every value of a name, as a browser sends one per path.
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey_connect=ccc"),
        );
        assert_eq!(
            cookies(&h, SESSION_COOKIE).collect::<Vec<_>>(),
            vec!["bbb", "ccc"]
        );
    }

    #[test]
    fn session_cookie_is_http_only_lax_and_secure_on_https() {
        let c = set_cookie(SESSION_COOKIE, "v", "/connect", 3600, true);
        assert_eq!(
            c,
            "latchkey_connect=v; Path=/connect; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", "/connect", 1, false).contains("Secure"));
    }

    #[test]
    fn new_identity_ids_are_valid_whatever_the_user_name() {
        for user in [
            "alice",
            "alice@example.com",
            "CN=Alice Smith,O=Acme",
            "ü",
            &"x".repeat(300),
        ] {
            let id = new_identity_id("crm", user);
            assert!(latchkey_core::identity::valid_identity_id(&id), "{id}");
            assert!(id.starts_with("crm-"), "{id}");
        }
        assert_ne!(
            new_identity_id("crm", "alice"),
            new_identity_id("crm", "alice")
        );
    }

    #[test]
    fn https_cookies_are_host_cookies_and_http_ones_keep_their_scope() {
        let name = cookie_name(SESSION_COOKIE, true);
        assert_eq!(name, "__Host-latchkey_connect");
        // What browsers require of a __Host- cookie: Secure, Path=/, no Domain.
        let c = set_cookie(&name, "v", "/", 3600, true);
        assert!(c.starts_with("__Host-latchkey_connect=v; Path=/;"), "{c}");
        assert!(c.ends_with("; Secure") && !c.contains("Domain"), "{c}");
        assert_eq!(cookie_name(SESSION_COOKIE, false), "latchkey_connect");
    }

    #[test]
    fn a_flow_cookie_is_named_by_its_state_and_opens_only_under_that_name() {
        // The record is tagged by kind, so a sign-in flow cannot finish a
        // server flow; the verifier is only ever inside the sealed value.
        let keys = latchkey_core::vault::KeyRing::parse(
            &latchkey_core::vault::KeyRing::generate_line("k1"),
            None,
        )
        .unwrap();
        let state = random_token();
        let name = Connect::flow_cookie(&state);
        assert!(name.starts_with(FLOW_COOKIE) && name.len() == FLOW_COOKIE.len() + 16);
        assert!(!name.contains(&state));
        assert_ne!(name, Connect::flow_cookie(&random_token()));
        let f = SealedFlow {
            state: state.clone(),
            exp: 0,
            flow: Flow::Server {
                session: hex::sha256(b"s"),
                user: "alice".into(),
                gateway: "corp".into(),
                server: "crm".into(),
                request: None,
                pkce_verifier: "verifier-1".into(),
            },
        };
        let plain = serde_json::to_vec(&f).unwrap();
        let json = String::from_utf8(plain.clone()).unwrap();
        assert!(json.contains("\"kind\":\"server\""), "{json}");
        let sealed = keys.seal_value(&name, &plain).unwrap();
        assert!(!sealed.contains("verifier-1") && !sealed.contains("alice"));
        let back: SealedFlow =
            serde_json::from_slice(&keys.open_value(&name, &sealed).unwrap()).unwrap();
        assert!(matches!(back.flow, Flow::Server { .. }));
        // Moved into another flow's cookie, it does not open.
        let other = Connect::flow_cookie(&random_token());
        assert!(keys.open_value(&other, &sealed).is_none());
    }
}
