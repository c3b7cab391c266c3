//! Latchkey as the client of a token exchange (`[servers.exchange]`): the
//! caller's verified token goes to the organisation's identity provider, and
//! what comes back is a token the server accepts, for that person (and
//! their agent) and that server, with no consent screen. Speaks HTTP and
//! hands back tokens; storing and renewing them is `refresh`'s job (once
//! across replicas, like a refresh).
//!
//! Two kinds:
//! - `token_exchange` (RFC 8693): one request at the identity provider's
//!   token endpoint; its answer is the server's token.
//! - `id_jag` (MCP enterprise-managed authorization): the identity provider
//!   issues an Identity Assertion JWT Authorization Grant (RFC 8693 with
//!   `requested_token_type` `…:id-jag`, `audience` = the server's
//!   authorization server), which that authorization server redeems
//!   (RFC 7523 `jwt-bearer`) for the server's token. Its RFC 8414 metadata
//!   must list the ID-JAG profile in `authorization_grant_profiles_supported`.
//!
//! Where the agent is an OAuth client of its own (recognised by the token's
//! `client_id`), the same token also goes as the `actor_token`: it was
//! issued to the agent, so it stands for it, and the identity provider names
//! the agent in the new token's `act`. An agent recognised otherwise (mTLS)
//! has no token to send.
//!
//! Latchkey authenticates as its own client: with a secret (HTTP Basic), or
//! with `private_key_jwt` (a one-minute JWT signed by its key, `aud` = the
//! token endpoint it is sent to, so it cannot be replayed elsewhere).
//!
//! The endpoints and what they support are read from metadata on first use
//! and kept; a failed read is tried again on the next request. Answers are
//! read bounded, and an OAuth error's text is kept short: it reaches the
//! caller as the reason for a 403. No token is ever logged or put in an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::OnceCell;
use url::Url;

use crate::oauth::{TokenSet, provider_text, read_bounded};
use latchkey_core::config::{Config, ExchangeKind, Server, ServerExchange, token_types};
use latchkey_core::vault::Secret;

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 7523's grant type, with which an ID-JAG is redeemed.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 7523 §2.2: a client authenticating with a signed JWT.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How an authorization server says it redeems ID-JAGs
/// (`authorization_grant_profiles_supported`).
pub const ID_JAG_PROFILE: &str = "urn:ietf:params:oauth:grant-profile:id-jag";

/// Why no token came back. Messages never carry a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The identity provider (or the server's authorization server) said no:
    /// the person is not entitled, the grant is not accepted, ...
    #[error("{by} refused the token exchange for server '{server}': {error}{}", describe(.description))]
    Refused {
        server: String,
        by: String,
        error: String,
        description: Option<String>,
    },
    /// Nobody answered, or the answer was not an OAuth one.
    #[error("{by} could not be reached for the token exchange of server '{server}': {message}")]
    Unavailable {
        server: String,
        by: String,
        message: String,
    },
    /// Configured or advertised in a way that cannot work.
    #[error("the token exchange of server '{server}' cannot work: {message}")]
    Config { server: String, message: String },
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// A token the exchange produced: the tokens, and its `jti` when it is a
/// JWT that carries one (for the audit trail).
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub tokens: TokenSet,
    pub jti: Option<String>,
}

/// How the client authenticates at a token endpoint.
#[derive(Clone)]
enum Credential {
    /// A public client: `client_id` in the form.
    None,
    /// `client_secret_basic`.
    Secret(String),
    /// `private_key_jwt`: a short-lived JWT signed with this key.
    PrivateKey(Arc<SigningKey>),
}

/// The key of `private_key_jwt`. `Debug`-free: it is a secret.
struct SigningKey {
    key: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    kid: Option<String>,
}

impl SigningKey {
    fn load(path: &std::path::Path, kid: Option<&str>) -> Result<Self, String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read private_key_file {}: {e}", path.display()))?;
        let (key, algorithm) = match jsonwebtoken::EncodingKey::from_rsa_pem(&pem) {
            Ok(key) => (key, jsonwebtoken::Algorithm::RS256),
            Err(_) => match jsonwebtoken::EncodingKey::from_ec_pem(&pem) {
                Ok(key) => (key, jsonwebtoken::Algorithm::ES256),
                Err(_) => {
                    return Err(format!(
                        "private_key_file {} is not a PEM RSA or EC P-256 private key",
                        path.display()
                    ));
                }
            },
        };
        Ok(SigningKey {
            key,
            algorithm,
            kid: kid.map(str::to_string),
        })
    }

    /// RFC 7523 §3: iss = sub = the client, aud = the endpoint, one minute.
    fn assertion(&self, client: &str, endpoint: &Url) -> Result<String, String> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "iss": client,
            "sub": client,
            "aud": endpoint.as_str(),
            "jti": latchkey_core::hex::random(16),
            "iat": now,
            "exp": now + 60,
        });
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the client assertion: {e}"))
    }
}

/// A client's registration at one endpoint.
#[derive(Clone)]
struct ClientAuth {
    id: String,
    credential: Credential,
}

impl ClientAuth {
    fn new(
        id: &str,
        secret_env: Option<&str>,
        key: Option<&Arc<SigningKey>>,
        server: &str,
    ) -> Result<Self, ExchangeError> {
        let credential = match (key, secret_env) {
            (Some(key), _) => Credential::PrivateKey(key.clone()),
            (None, Some(var)) => {
                Credential::Secret(std::env::var(var).map_err(|_| ExchangeError::Config {
                    server: server.to_string(),
                    message: format!(
                        "the client secret is read from the environment variable {var}, which is not set"
                    ),
                })?)
            }
            (None, None) => Credential::None,
        };
        Ok(ClientAuth {
            id: id.to_string(),
            credential,
        })
    }
}

/// What metadata told about the endpoints (read once).
#[derive(Debug, Clone)]
struct Endpoints {
    /// Where the caller's token is exchanged (the identity provider's).
    exchange: Url,
    /// `id_jag`: where the grant is redeemed, and the issuer it is for.
    redeem: Option<(Url, String)>,
}

/// The token exchange of one server.
#[derive(Clone)]
pub struct Exchanger {
    server: String,
    settings: Arc<ServerExchange>,
    resource: String,
    idp_issuer: String,
    client: ClientAuth,
    /// `id_jag`: Latchkey's client at the server's authorization server.
    as_client: ClientAuth,
    http: reqwest::Client,
    endpoints: Arc<OnceCell<Endpoints>>,
}

impl Exchanger {
    pub fn new(
        server: &Server,
        settings: &ServerExchange,
        idp_issuer: &str,
        timeout: Duration,
    ) -> Result<Exchanger, ExchangeError> {
        let name = server.name.as_str();
        let key = match &settings.private_key_file {
            Some(path) => Some(Arc::new(
                SigningKey::load(path, settings.private_key_id.as_deref()).map_err(|message| {
                    ExchangeError::Config {
                        server: name.to_string(),
                        message,
                    }
                })?,
            )),
            None => None,
        };
        let client = ClientAuth::new(
            &settings.client_id,
            settings.client_secret_env.as_deref(),
            key.as_ref(),
            name,
        )?;
        let as_client = ClientAuth::new(
            settings
                .authorization_server_client_id
                .as_deref()
                .unwrap_or(&settings.client_id),
            settings
                .authorization_server_client_secret_env
                .as_deref()
                .or(settings.client_secret_env.as_deref()),
            key.as_ref(),
            name,
        )?;
        let http = reqwest::Client::builder()
            // A token endpoint's redirect is never followed with a token in hand.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| ExchangeError::Config {
                server: name.to_string(),
                message: format!("HTTP client: {e}"),
            })?;
        Ok(Exchanger {
            server: name.to_string(),
            settings: Arc::new(settings.clone()),
            resource: settings
                .resource
                .clone()
                .unwrap_or_else(|| server.url.to_string()),
            idp_issuer: idp_issuer.trim_end_matches('/').to_string(),
            client,
            as_client,
            http,
            endpoints: Arc::new(OnceCell::new()),
        })
    }

    pub fn kind(&self) -> ExchangeKind {
        self.settings.kind
    }

    /// The scopes asked for (part of what an exchanged token is kept under).
    pub fn scopes(&self) -> &[String] {
        &self.settings.scopes
    }

    /// The header the caller's ID token comes in, when that is the subject.
    pub fn subject_token_header(&self) -> Option<&str> {
        self.settings.subject_token_header.as_deref()
    }

    /// Whether the caller's token also goes as the `actor_token` when the
    /// agent was recognised by its `client_id`.
    pub fn sends_actor_token(&self) -> bool {
        self.settings.actor_token
    }

    /// Reads the endpoints' metadata now, as the first exchange would: what
    /// is wrong with it (unreachable, no token exchange, no ID-JAG profile),
    /// for `latchkey policy lint --probe`.
    pub async fn probe(&self) -> Result<(), ExchangeError> {
        self.endpoints().await.map(|_| ())
    }

    /// The endpoints, discovered on first use (a failure is tried again
    /// on the next call).
    async fn endpoints(&self) -> Result<&Endpoints, ExchangeError> {
        self.endpoints.get_or_try_init(|| self.discover()).await
    }

    /// Exchanges `subject` (the caller's verified token), with `actor`
    /// as the `actor_token` when given, for the server's token.
    pub async fn exchange(
        &self,
        subject: &Secret,
        actor: Option<&Secret>,
    ) -> Result<Exchanged, ExchangeError> {
        let endpoints = self.endpoints().await?.clone();
        let s = &self.settings;
        let scope = s.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject.expose()),
            ("subject_token_type", s.subject_token_type()),
            ("resource", &self.resource),
        ];
        let requested = match s.kind {
            ExchangeKind::TokenExchange => s
                .requested_token_type
                .as_deref()
                .unwrap_or(token_types::ACCESS_TOKEN),
            ExchangeKind::IdJag => token_types::ID_JAG,
        };
        form.push(("requested_token_type", requested));
        let audience = match (&endpoints.redeem, &s.audience) {
            (Some((_, issuer)), _) => Some(issuer.as_str()),
            (None, Some(audience)) => Some(audience.as_str()),
            (None, None) => None,
        };
        if let Some(audience) = audience {
            form.push(("audience", audience));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(actor) = actor {
            form.push(("actor_token", actor.expose()));
            form.push(("actor_token_type", token_types::ACCESS_TOKEN));
        }
        let by_idp = "the identity provider";
        let answer = self
            .post_token(&endpoints.exchange, &self.client, &form, by_idp)
            .await?;
        let Some((redeem, issuer)) = &endpoints.redeem else {
            return self.exchanged(&answer, by_idp);
        };
        // An ID-JAG, to be redeemed at the server's authorization server.
        if let Some(issued) = answer["issued_token_type"].as_str()
            && issued != token_types::ID_JAG
        {
            return Err(
                self.unavailable(by_idp, format!("it issued a {issued} instead of an ID-JAG"))
            );
        }
        let grant = answer["access_token"]
            .as_str()
            .ok_or_else(|| self.unavailable(by_idp, "its answer carries no ID-JAG".into()))?;
        let mut form: Vec<(&str, &str)> =
            vec![("grant_type", JWT_BEARER_GRANT), ("assertion", grant)];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let by_as = format!("the authorization server {issuer}");
        let answer = self
            .post_token(redeem, &self.as_client, &form, &by_as)
            .await?;
        self.exchanged(&answer, &by_as)
    }

    /// The endpoints, from the config and the metadata it leaves to discovery.
    async fn discover(&self) -> Result<Endpoints, ExchangeError> {
        let exchange = match &self.settings.token_endpoint {
            Some(url) => url.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.idp_issuer);
                let doc = self.metadata(&url, "the identity provider").await?;
                if let Some(grants) = doc["grant_types_supported"].as_array()
                    && !grants.iter().any(|g| g == TOKEN_EXCHANGE_GRANT)
                {
                    return Err(self.config(format!(
                        "the identity provider's metadata ({url}) does not list the token exchange grant \
                         in grant_types_supported"
                    )));
                }
                endpoint(&doc, "token_endpoint")
                    .ok_or_else(|| self.config(format!("{url} names no token_endpoint")))?
            }
        };
        let redeem = match (self.settings.kind, &self.settings.authorization_server) {
            (ExchangeKind::IdJag, Some(issuer)) => {
                let issuer = issuer.as_str().trim_end_matches('/').to_string();
                let url = authorization_server_metadata_url(&issuer);
                let by = format!("the authorization server {issuer}");
                let doc = self.metadata(&url, &by).await?;
                if doc["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(&issuer) {
                    return Err(self.config(format!(
                        "{url} names the issuer {} instead of {issuer}",
                        doc["issuer"]
                    )));
                }
                let profiles = doc["authorization_grant_profiles_supported"].as_array();
                if !profiles.is_some_and(|p| p.iter().any(|p| p == ID_JAG_PROFILE)) {
                    return Err(self.config(format!(
                        "{by} does not redeem ID-JAGs: its metadata ({url}) does not list \
                         {ID_JAG_PROFILE} in authorization_grant_profiles_supported"
                    )));
                }
                let token = endpoint(&doc, "token_endpoint")
                    .ok_or_else(|| self.config(format!("{url} names no token_endpoint")))?;
                Some((token, issuer))
            }
            _ => None,
        };
        Ok(Endpoints { exchange, redeem })
    }

    async fn metadata(&self, url: &str, by: &str) -> Result<Value, ExchangeError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| self.unavailable(by, format!("{url}: {}", e.without_url())))?;
        let status = response.status();
        let body = read_bounded(response)
            .await
            .map_err(|e| self.unavailable(by, format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(self.unavailable(by, format!("{url} answered {status}")));
        }
        serde_json::from_slice(&body)
            .map_err(|_| self.unavailable(by, format!("{url} is not a JSON metadata document")))
    }

    /// One token request; its JSON answer, or the error it stands for.
    async fn post_token(
        &self,
        url: &Url,
        client: &ClientAuth,
        form: &[(&str, &str)],
        by: &str,
    ) -> Result<Value, ExchangeError> {
        // Built before the first await: the serializer is not `Send`.
        let (body, basic) = {
            let mut body = url::form_urlencoded::Serializer::new(String::new());
            body.extend_pairs(form.iter().copied());
            let basic = match &client.credential {
                // RFC 6749 §2.3.1: both parts form-encoded, then Basic.
                Credential::Secret(secret) => Some((
                    url::form_urlencoded::byte_serialize(client.id.as_bytes()).collect::<String>(),
                    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>(),
                )),
                Credential::PrivateKey(key) => {
                    let assertion = key
                        .assertion(&client.id, url)
                        .map_err(|message| self.config(message))?;
                    body.append_pair("client_id", &client.id);
                    body.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
                    body.append_pair("client_assertion", &assertion);
                    None
                }
                Credential::None => {
                    body.append_pair("client_id", &client.id);
                    None
                }
            };
            (body.finish(), basic)
        };
        let mut request = self
            .http
            .post(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some((user, pass)) = basic {
            request = request.basic_auth(user, Some(pass));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.unavailable(by, e.without_url().to_string()))?;
        let status = response.status();
        let bytes = read_bounded(response)
            .await
            .map_err(|e| self.unavailable(by, e.to_string()))?;
        let answer: Option<Value> = serde_json::from_slice(&bytes).ok();
        match answer {
            Some(answer) if status.is_success() => Ok(answer),
            // RFC 6749 §5.2: an OAuth error is a refusal; a 5xx is an outage.
            Some(answer) if status.is_client_error() && answer["error"].is_string() => {
                Err(ExchangeError::Refused {
                    server: self.server.clone(),
                    by: by.to_string(),
                    error: provider_text(answer["error"].as_str().unwrap_or_default()),
                    description: answer["error_description"].as_str().map(provider_text),
                })
            }
            _ => Err(self.unavailable(
                by,
                format!("its token endpoint answered {status} without an OAuth answer"),
            )),
        }
    }

    /// The token in a successful answer.
    fn exchanged(&self, answer: &Value, by: &str) -> Result<Exchanged, ExchangeError> {
        let token = answer["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.unavailable(by, "its answer carries no access_token".into()))?;
        let claims = jwt_claims(token);
        let expires_in = answer["expires_in"].as_i64();
        let expires_at = match expires_in {
            Some(secs) => {
                time::OffsetDateTime::now_utc().checked_add(time::Duration::seconds(secs))
            }
            None => claims
                .as_ref()
                .and_then(|c| c["exp"].as_i64())
                .and_then(|exp| time::OffsetDateTime::from_unix_timestamp(exp).ok()),
        };
        let scopes = answer["scope"]
            .as_str()
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_else(|| self.settings.scopes.clone());
        let jti = claims
            .as_ref()
            .and_then(|c| c["jti"].as_str())
            .map(provider_text);
        Ok(Exchanged {
            tokens: TokenSet {
                access_token: Secret::new(token),
                // Renewed by exchanging again, never by a refresh token.
                refresh_token: None,
                expires_at,
                scopes,
                id_token: None,
            },
            jti,
        })
    }

    fn unavailable(&self, by: &str, message: String) -> ExchangeError {
        ExchangeError::Unavailable {
            server: self.server.clone(),
            by: by.to_string(),
            message,
        }
    }

    fn config(&self, message: String) -> ExchangeError {
        ExchangeError::Config {
            server: self.server.clone(),
            message,
        }
    }
}

/// RFC 8414 §3: the well-known suffix goes between the host and the path.
fn authorization_server_metadata_url(issuer: &str) -> String {
    match Url::parse(issuer) {
        Ok(url) if url.path() != "/" && !url.path().is_empty() => {
            let origin = url.origin().ascii_serialization();
            format!(
                "{origin}/.well-known/oauth-authorization-server{}",
                url.path().trim_end_matches('/')
            )
        }
        _ => format!("{issuer}/.well-known/oauth-authorization-server"),
    }
}

fn endpoint(doc: &Value, field: &str) -> Option<Url> {
    doc[field].as_str().and_then(|u| Url::parse(u).ok())
}

/// The claims of a JWT, unverified: only to name it in the audit trail
/// (`jti`) and to learn when it expires if the answer did not say.
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The exchanger of every server with `[servers.exchange]`, by server name.
#[derive(Clone, Default)]
pub struct Exchangers {
    by_server: HashMap<String, Exchanger>,
}

impl Exchangers {
    pub fn from_config(config: &Config) -> Result<Exchangers, ExchangeError> {
        let mut by_server = HashMap::new();
        for server in &config.servers {
            let Some(settings) = &server.exchange else {
                continue;
            };
            let exchanger = Exchanger::new(
                server,
                settings,
                &config.identity_provider.issuer,
                Duration::from_secs(10),
            )?;
            by_server.insert(server.name.clone(), exchanger);
        }
        Ok(Exchangers { by_server })
    }

    pub fn get(&self, server: &str) -> Option<&Exchanger> {
        self.by_server.get(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<(String, Option<String>, String)>>>;

    /// A loopback identity provider (and authorization server): `/token`
    /// answers with `answer(form)`; `metadata` is served as RFC 8414
    /// metadata. Every token request is kept: path, Authorization, form.
    async fn idp(
        answer: impl Fn(&str) -> axum::response::Response + Clone + Send + Sync + 'static,
        metadata: Value,
    ) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        let metadata = serde_json::to_string(&metadata)
            .unwrap()
            .replace("@BASE@", &base);
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::post(move |headers: http::HeaderMap, body: String| {
                    let answer = answer.clone();
                    let kept = kept.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        kept.lock()
                            .unwrap()
                            .push(("/token".into(), auth, body.clone()));
                        answer(&body)
                    }
                }),
            )
            .route(
                "/.well-known/oauth-authorization-server",
                axum::routing::get(move || {
                    let metadata = metadata.clone();
                    async move {
                        ([(http::header::CONTENT_TYPE, "application/json")], metadata)
                            .into_response()
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    fn json(status: u16, body: Value) -> axum::response::Response {
        let mut r = (
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    }

    fn exchanger(settings: &str) -> Exchanger {
        let server: Server =
            toml::from_str("name = \"crm\"\nurl = \"http://127.0.0.1:9/mcp\"").unwrap();
        let settings: ServerExchange = toml::from_str(settings).unwrap();
        Exchanger::new(
            &server,
            &settings,
            "http://127.0.0.1:9",
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn form(body: &str) -> HashMap<String, String> {
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    #[tokio::test]
    async fn a_token_exchange_answer_is_a_token_a_refusal_naming_the_reason_or_an_outage() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","jti":"j-7"}"#);
        let issued = format!("h.{claims}.s");
        let token = issued.clone();
        let (base, seen) = idp(
            move |body| {
                let f = form(body);
                match f.get("subject_token").map(String::as_str) {
                    Some("alice-token") => json(
                        200,
                        serde_json::json!({"access_token": token, "issued_token_type": token_types::ACCESS_TOKEN,
                                           "token_type": "Bearer", "expires_in": 300, "scope": "crm.read"}),
                    ),
                    Some("carol-token") => json(
                        400,
                        serde_json::json!({"error": "invalid_grant", "error_description": "carol is not entitled"}),
                    ),
                    _ => json(503, serde_json::json!({"error": "temporarily_unavailable"})),
                }
            },
            Value::Null,
        )
        .await;
        let x = exchanger(&format!(
            "kind = \"token_exchange\"\nclient_id = \"gw\"\naudience = \"crm\"\n\
             scopes = [\"crm.read\"]\ntoken_endpoint = \"{base}/token\""
        ));
        let got = x
            .exchange(
                &Secret::new("alice-token"),
                Some(&Secret::new("alice-token")),
            )
            .await
            .unwrap();
        assert_eq!(got.tokens.access_token.expose(), issued);
        assert_eq!(got.jti.as_deref(), Some("j-7"));
        assert_eq!(got.tokens.scopes, ["crm.read"]);
        assert!(got.tokens.expires_at.is_some() && got.tokens.refresh_token.is_none());
        let sent = form(&seen.lock().unwrap()[0].2);
        for (k, v) in [
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token_type", token_types::ACCESS_TOKEN),
            ("requested_token_type", token_types::ACCESS_TOKEN),
            ("audience", "crm"),
            ("resource", "http://127.0.0.1:9/mcp"),
            ("scope", "crm.read"),
            ("actor_token", "alice-token"),
            ("client_id", "gw"),
        ] {
            assert_eq!(sent.get(k).map(String::as_str), Some(v), "{k} in {sent:?}");
        }

        match x.exchange(&Secret::new("carol-token"), None).await {
            Err(e @ ExchangeError::Refused { .. }) => {
                let said = e.to_string();
                assert!(
                    said.contains("'crm'") && said.contains("carol is not entitled"),
                    "{said}"
                );
                assert!(!said.contains("carol-token"), "{said}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            x.exchange(&Secret::new("anyone"), None).await,
            Err(ExchangeError::Unavailable { .. })
        ));
        let gone = exchanger(
            "kind = \"token_exchange\"\nclient_id = \"gw\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"",
        );
        assert!(matches!(
            gone.exchange(&Secret::new("alice-token"), None).await,
            Err(ExchangeError::Unavailable { .. })
        ));
    }

    #[tokio::test]
    async fn an_id_jag_is_redeemed_only_where_the_authorization_server_says_it_redeems_them() {
        let answer = |body: &str| {
            let f = form(body);
            match f.get("grant_type").map(String::as_str) {
                Some(TOKEN_EXCHANGE_GRANT) => json(
                    200,
                    serde_json::json!({"access_token": "the-id-jag", "issued_token_type": token_types::ID_JAG,
                                       "token_type": "N_A", "expires_in": 300}),
                ),
                Some(JWT_BEARER_GRANT)
                    if f.get("assertion").map(String::as_str) == Some("the-id-jag") =>
                {
                    json(
                        200,
                        serde_json::json!({"access_token": "crm-token", "token_type": "Bearer", "expires_in": 60}),
                    )
                }
                _ => json(400, serde_json::json!({"error": "invalid_grant"})),
            }
        };
        let redeeming = serde_json::json!({"issuer": "@BASE@", "token_endpoint": "@BASE@/token",
            "authorization_grant_profiles_supported": [ID_JAG_PROFILE]});
        let (base, seen) = idp(answer, redeeming).await;
        unsafe { std::env::set_var("LATCHKEY_TEST_EXCHANGE_SECRET", "s3cret") };
        let x = exchanger(&format!(
            "kind = \"id_jag\"\nclient_id = \"gw\"\nclient_secret_env = \"LATCHKEY_TEST_EXCHANGE_SECRET\"\n\
             token_endpoint = \"{base}/token\"\nauthorization_server = \"{base}\"\nresource = \"urn:crm\""
        ));
        let got = x.exchange(&Secret::new("alice-token"), None).await.unwrap();
        assert_eq!(got.tokens.access_token.expose(), "crm-token");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            2,
            "one exchange at the identity provider, one redemption"
        );
        let first = form(&seen[0].2);
        assert_eq!(first["requested_token_type"], token_types::ID_JAG);
        assert_eq!(
            first["audience"], base,
            "the audience is the authorization server"
        );
        assert_eq!(first["resource"], "urn:crm");
        assert!(
            !first.contains_key("client_id"),
            "a confidential client uses Basic"
        );
        assert!(
            seen[0]
                .1
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))
        );
        assert_eq!(form(&seen[1].2)["grant_type"], JWT_BEARER_GRANT);

        // An authorization server that does not list the profile is not sent an ID-JAG.
        let (base, seen) = idp(
            answer,
            serde_json::json!({"issuer": "@BASE@", "token_endpoint": "@BASE@/token"}),
        )
        .await;
        let x = exchanger(&format!(
            "kind = \"id_jag\"\nclient_id = \"gw\"\ntoken_endpoint = \"{base}/token\"\nauthorization_server = \"{base}\""
        ));
        match x.exchange(&Secret::new("alice-token"), None).await {
            Err(e @ ExchangeError::Config { .. }) => {
                assert!(e.to_string().contains("does not redeem ID-JAGs"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing was exchanged for it"
        );
    }

    #[test]
    fn metadata_of_an_issuer_with_a_path_puts_the_suffix_before_it() {
        assert_eq!(
            authorization_server_metadata_url("https://as.example"),
            "https://as.example/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            authorization_server_metadata_url("https://as.example/tenant/1"),
            "https://as.example/.well-known/oauth-authorization-server/tenant/1"
        );
    }

    #[test]
    fn a_jwts_claims_are_read_and_anything_else_is_none() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"jti":"j-1","exp":5}"#);
        let c = jwt_claims(&format!("h.{claims}.s")).unwrap();
        assert_eq!(c["jti"], "j-1");
        assert!(jwt_claims("opaque-token").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }
}
