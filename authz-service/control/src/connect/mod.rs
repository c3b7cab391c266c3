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
//! - `GET|POST /connect/{gateway}/approval[?id=<request>]`: a tool call
//!   held for approval, and its Approve and Deny (`approval`).
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

// One module per flow, and the pieces they share. Each uses only the
// modules before it in this order (and this module's items):
// `html`, `errors` (pages for what went wrong), `session` (sessions,
// cookies, sealed flows), `consent` (the request a link names),
// `signed_in` (what a form post must bring), `sign_in`, `authorise`,
// `callback` (both providers' way back), `manage` (use, disconnect, sign
// out), `page` (the page itself).
mod approval;
mod authorise;
mod callback;
mod consent;
mod errors;
pub mod html;
mod manage;
mod page;
mod session;
mod sign_in;
mod signed_in;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::shared::ControlState;
use authorise::authorise;
use callback::{server_callback, sign_in_callback};
use errors::store_down;
use html::Page;
use latchkey_check::oauth::Provider;
use latchkey_core::config::{ConnectConfig, Gateway, IdentityScheme};
use latchkey_core::identity::VaultRecord;
use latchkey_store::credentials::ChangeError;
use manage::{disconnect, sign_out, use_identity};
use page::page;

pub use session::{
    cookie, cookie_name, cookies, new_identity_id, random_token, same_secret, set_cookie,
    well_formed_token,
};

/// The signed-in session cookie (`__Host-` prefixed over https).
pub const SESSION_COOKIE: &str = "latchkey_connect";
/// A flow in progress: `latchkey_flow_<16 hex digits of its state's
/// digest>` (`__Host-` prefixed over https), holding the sealed
/// [`Flow`](session::Flow).
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
        .route(
            "/connect/{gateway}/approval",
            get(approval::approval_page).post(approval::decide),
        )
        .with_state(connect)
}

// --- what every flow looks up: its store, pages, gateway, identities --------

impl Connect {
    fn store(&self) -> &latchkey_store::store::Store {
        &self.app.credentials.store
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

/// A `303 See Other` to `to`, uncached and without a referrer, setting
/// `cookies`.
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
