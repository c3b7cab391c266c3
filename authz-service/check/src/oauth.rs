//! Latchkey as an OAuth 2.0 client: of each per-user server's provider
//! (authorization code with PKCE S256, refresh, RFC 7009 revocation) and of
//! the organisation's identity provider for the connect page's sign-in.
//! Speaks HTTP to providers and hands back tokens; storing them is the
//! caller's job.
//!
//! OAuth mix-up (RFC 9700 §4.4): each provider sends the browser back to a
//! redirect URI of its own ([`callback_url`] for sign-in,
//! [`server_callback_url`] per server), so an authorisation response that
//! arrives at one provider's address can only finish that provider's flow;
//! and where the provider's issuer is known, the RFC 9207 `iss` of the
//! response is compared with it ([`Provider::check_iss`]).

use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use url::Url;

use latchkey_core::vault::Secret;

/// The OpenID Connect addition to a token response. `Debug` redacts the
/// token (the `oauth2` crate's response type prints its extra fields).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenField")
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}
impl ExtraTokenFields for IdTokenField {}

type ProviderTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

type Client = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointSet,
>;

/// Why talking to a provider did not give tokens. Messages never carry a
/// token or a code.
#[derive(Debug, thiserror::Error)]
pub enum OauthError {
    /// The code or refresh token is not (or no longer) valid: used before,
    /// expired, or revoked. Asking the user again is the way out.
    #[error("the provider '{provider}' no longer accepts this grant (invalid_grant{}): the user has to authorise again", describe(.description))]
    InvalidGrant {
        provider: String,
        description: Option<String>,
    },
    /// The provider answered with another OAuth error.
    #[error("the provider '{provider}' refused the request: {error}{}", describe(.description))]
    Refused {
        provider: String,
        error: String,
        description: Option<String>,
    },
    /// The provider could not be reached or answered something that is not
    /// an OAuth response.
    #[error("the provider '{provider}' could not be reached or answered unexpectedly: {message}")]
    Unreachable { provider: String, message: String },
    #[error("OAuth client for '{provider}' is misconfigured: {message}")]
    Config { provider: String, message: String },
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// Tokens a provider issued. `Debug` shows no value.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// When the access token expires, if the provider said.
    pub expires_at: Option<time::OffsetDateTime>,
    pub scopes: Vec<String>,
    /// OIDC ID token (sign-in only).
    pub id_token: Option<Secret>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The start of an authorization code flow: where to send the browser, and
/// what to remember until the callback (never shown to anyone).
pub struct AuthorizationStart {
    pub url: Url,
    pub state: String,
    pub pkce_verifier: String,
}

/// Which token a revocation names (RFC 7009 `token_type_hint`).
#[derive(Debug, Clone, Copy)]
pub enum TokenHint {
    Access,
    Refresh,
}

/// One OAuth provider as Latchkey's client sees it.
#[derive(Clone)]
pub struct Provider {
    name: String,
    client: Client,
    scopes: Vec<String>,
    resource: Option<String>,
    http: reqwest::Client,
    /// RFC 7009 revocation is sent by hand: the oauth2 crate refuses a
    /// revocation URL that is not https, while the other endpoints may be
    /// (a provider on loopback, as in tests).
    revocation: Option<Url>,
    client_id: String,
    client_secret: Option<String>,
    /// The provider's issuer identifier, when known: the RFC 9207 `iss` of
    /// an authorisation response must equal it.
    issuer: Option<String>,
    /// The provider always sends `iss` (its metadata says
    /// `authorization_response_iss_parameter_supported`): a response
    /// without one is refused.
    require_iss: bool,
}

/// Why an authorisation response's RFC 9207 `iss` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssError {
    #[error(
        "the answer names the issuer '{got}', but this authorisation was started at '{expected}' (possible OAuth mix-up)"
    )]
    Other { expected: String, got: String },
    #[error(
        "the answer carries no `iss`, which '{expected}' always sends (RFC 9207); it may come from another provider"
    )]
    Missing { expected: String },
}

/// The endpoints and client registration of one provider.
pub struct ProviderSettings<'a> {
    /// Names the provider in errors and logs (a server name, or "sign-in").
    pub name: &'a str,
    pub authorization_endpoint: &'a Url,
    pub token_endpoint: &'a Url,
    pub revocation_endpoint: Option<&'a Url>,
    pub client_id: &'a str,
    /// Read from this environment variable when set.
    pub client_secret_env: Option<&'a str>,
    pub redirect_uri: Url,
    pub scopes: &'a [String],
    pub resource: Option<&'a str>,
    pub timeout: Duration,
    /// The provider's issuer identifier (RFC 8414 `issuer`), if known.
    pub issuer: Option<&'a str>,
    /// Its metadata's `authorization_response_iss_parameter_supported`.
    pub require_iss: bool,
}

impl Provider {
    pub fn new(s: ProviderSettings<'_>) -> Result<Provider, OauthError> {
        let config = |message: String| OauthError::Config {
            provider: s.name.to_string(),
            message,
        };
        let mut client = oauth2::Client::new(ClientId::new(s.client_id.to_string()))
            .set_auth_uri(AuthUrl::from_url(s.authorization_endpoint.clone()))
            .set_token_uri(TokenUrl::from_url(s.token_endpoint.clone()))
            .set_revocation_url_option(s.revocation_endpoint.cloned().map(RevocationUrl::from_url))
            .set_redirect_uri(RedirectUrl::from_url(s.redirect_uri));
        let mut client_secret = None;
        if let Some(var) = s.client_secret_env {
            let secret = std::env::var(var).map_err(|_| {
                config(format!(
                    "the client secret is read from the environment variable {var}, which is not set"
                ))
            })?;
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
            client_secret = Some(secret);
        }
        let http = reqwest::Client::builder()
            // A provider's redirect is never followed with a code or token in hand.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.timeout)
            .build()
            .map_err(|e| config(format!("HTTP client: {e}")))?;
        Ok(Provider {
            name: s.name.to_string(),
            client,
            scopes: s.scopes.to_vec(),
            resource: s.resource.map(str::to_string),
            http,
            revocation: s.revocation_endpoint.cloned(),
            client_id: s.client_id.to_string(),
            client_secret,
            issuer: s.issuer.map(str::to_string),
            require_iss: s.require_iss && s.issuer.is_some(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// RFC 9207: an authorisation response's `iss` equals this provider's
    /// issuer (simple string comparison), and is present when the provider
    /// always sends it. Without a known issuer there is nothing to compare
    /// with; the provider's own redirect URI is then the defence.
    pub fn check_iss(&self, iss: Option<&str>) -> Result<(), IssError> {
        let Some(expected) = &self.issuer else {
            return Ok(());
        };
        match iss {
            Some(got) if got == expected => Ok(()),
            Some(got) => Err(IssError::Other {
                expected: expected.clone(),
                // Shown on a page and logged: bounded, whatever was sent.
                got: got.chars().take(200).collect(),
            }),
            None if self.require_iss => Err(IssError::Missing {
                expected: expected.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Where to send the browser: authorization code with PKCE S256, a
    /// fresh random `state`, the configured scopes and RFC 8707 `resource`,
    /// and any `extra` parameters (an OIDC `nonce`, say).
    pub fn start(&self, extra: &[(&str, &str)]) -> AuthorizationStart {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .add_scopes(self.scopes.iter().cloned().map(Scope::new));
        if let Some(resource) = &self.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        for (k, v) in extra {
            request = request.add_extra_param(*k, *v);
        }
        let (url, state) = request.url();
        AuthorizationStart {
            url,
            state: state.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        }
    }

    /// Trades an authorization code for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
    ) -> Result<TokenSet, OauthError> {
        let mut request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()));
        if let Some(resource) = &self.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        let sender = self.sender();
        let response = request
            .request_async(&sender)
            .await
            .map_err(|e| self.token_error(e))?;
        Ok(self.token_set(&response))
    }

    /// Gets a new access token (and, from providers that rotate, a new
    /// refresh token) with a refresh token.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<TokenSet, OauthError> {
        let token = RefreshToken::new(refresh_token.expose().to_string());
        let mut request = self.client.exchange_refresh_token(&token);
        if let Some(resource) = &self.resource {
            request = request.add_extra_param("resource", resource.clone());
        }
        let sender = self.sender();
        let response = request
            .request_async(&sender)
            .await
            .map_err(|e| self.token_error(e))?;
        Ok(self.token_set(&response))
    }

    /// Whether this provider has a revocation endpoint.
    pub fn can_revoke(&self) -> bool {
        self.revocation.is_some()
    }

    /// RFC 7009 revocation. `Ok(false)` when the provider has no revocation
    /// endpoint (nothing to do there). The client authenticates as at the
    /// token endpoint: HTTP Basic with a secret, else `client_id` in the form.
    pub async fn revoke(&self, token: &Secret, hint: TokenHint) -> Result<bool, OauthError> {
        let Some(url) = &self.revocation else {
            return Ok(false);
        };
        let mut request = self.http.post(url.as_str());
        // Built apart: the serializer cannot be held across an await.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token.expose());
            form.append_pair(
                "token_type_hint",
                match hint {
                    TokenHint::Access => "access_token",
                    TokenHint::Refresh => "refresh_token",
                },
            );
            match &self.client_secret {
                Some(secret) => {
                    // RFC 6749 2.3.1: form-encoded before base64.
                    let enc = |v: &str| {
                        url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                    };
                    request = request.basic_auth(enc(&self.client_id), Some(enc(secret)));
                }
                None => {
                    form.append_pair("client_id", &self.client_id);
                }
            }
            form.finish()
        };
        let unreachable = |message: String| OauthError::Unreachable {
            provider: self.name.clone(),
            message,
        };
        let response = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        // An RFC 7009 error answer names the error; anything else is the
        // provider failing (503 included: "try again later").
        let body: serde_json::Value = read_bounded(response)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        match body["error"].as_str() {
            Some(error) if status.is_client_error() => Err(OauthError::Refused {
                provider: self.name.clone(),
                error: provider_text(error),
                description: body["error_description"].as_str().map(provider_text),
            }),
            _ => Err(unreachable(format!(
                "the revocation endpoint answered {status}"
            ))),
        }
    }

    /// The HTTP client oauth2 calls, over this crate's reqwest.
    fn sender(
        &self,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send>,
    > + use<> {
        let http = self.http.clone();
        move |request| {
            let http = http.clone();
            Box::pin(async move { send(&http, request).await })
        }
    }

    fn token_set(&self, response: &ProviderTokenResponse) -> TokenSet {
        let expires_at = response
            .expires_in()
            .map(|d| time::OffsetDateTime::now_utc() + d);
        let scopes = response
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|| self.scopes.clone());
        TokenSet {
            access_token: Secret::new(response.access_token().secret().as_str()),
            refresh_token: response
                .refresh_token()
                .map(|t| Secret::new(t.secret().as_str())),
            expires_at,
            scopes,
            id_token: response.extra_fields().id_token.as_deref().map(Secret::new),
        }
    }

    fn token_error<T: oauth2::ErrorResponse + 'static>(
        &self,
        e: RequestTokenError<HttpError, T>,
    ) -> OauthError {
        let provider = self.name.clone();
        match e {
            RequestTokenError::ServerResponse(r) => {
                // Both error response types serialise to RFC 6749's shape.
                let value = serde_json::to_value(&r).unwrap_or_default();
                let error = provider_text(value["error"].as_str().unwrap_or("unknown"));
                let description = value["error_description"].as_str().map(provider_text);
                if error == BasicErrorResponseType::InvalidGrant.as_ref() {
                    OauthError::InvalidGrant {
                        provider,
                        description,
                    }
                } else {
                    OauthError::Refused {
                        provider,
                        error,
                        description,
                    }
                }
            }
            RequestTokenError::Request(e) => OauthError::Unreachable {
                provider,
                message: e.to_string(),
            },
            RequestTokenError::Parse(e, _) => OauthError::Unreachable {
                provider,
                message: format!("its answer is not an OAuth token response: {}", e.path()),
            },
            RequestTokenError::Other(m) => OauthError::Unreachable {
                provider,
                message: m,
            },
        }
    }
}

/// The redirect URI of the sign-in at the organisation's identity
/// provider: `<public_url>/connect/callback`.
pub fn callback_url(connect: &latchkey_core::config::ConnectConfig) -> Url {
    let mut url = connect.public_url.clone();
    let path = format!("{}/connect/callback", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// The redirect URI of server `server`'s provider, one per provider so a
/// response cannot be delivered to another provider's flow:
/// `<public_url>/connect/callback/<server>` (the name percent-encoded as
/// one path segment). Register it with that provider.
pub fn server_callback_url(connect: &latchkey_core::config::ConnectConfig, server: &str) -> Url {
    let mut url = callback_url(connect);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(server);
    }
    url
}

/// The OAuth client of every server that has `[servers.oauth]`, by server
/// name. Empty without `[connect]` (nowhere for a browser to come back to).
#[derive(Clone, Default)]
pub struct Providers {
    by_server: std::collections::HashMap<String, Provider>,
}

impl Providers {
    pub fn from_config(config: &latchkey_core::config::Config) -> Result<Providers, OauthError> {
        let Some(connect) = &config.connect else {
            return Ok(Providers::default());
        };
        let mut by_server = std::collections::HashMap::new();
        for server in &config.servers {
            let Some(o) = &server.oauth else { continue };
            let redirect_uri = server_callback_url(connect, &server.name);
            // Operators register this at the provider; saying it at start
            // turns a provider's "redirect_uri mismatch" into a known step.
            tracing::info!(
                target: "latchkey::oauth",
                server = %server.name,
                redirect_uri = %redirect_uri,
                iss_checked = o.issuer.is_some(),
                "per-user OAuth: register this redirect URI with the server's provider"
            );
            let provider = Provider::new(ProviderSettings {
                name: &server.name,
                authorization_endpoint: &o.authorization_endpoint,
                token_endpoint: &o.token_endpoint,
                revocation_endpoint: o.revocation_endpoint.as_ref(),
                client_id: &o.client_id,
                client_secret_env: o.client_secret_env.as_deref(),
                redirect_uri,
                scopes: &o.scopes,
                resource: o.resource.as_deref(),
                timeout: Duration::from_secs(10),
                issuer: o.issuer.as_deref(),
                require_iss: o.authorization_response_iss_parameter_supported,
            })?;
            by_server.insert(server.name.clone(), provider);
        }
        Ok(Providers { by_server })
    }

    pub fn get(&self, server: &str) -> Option<&Provider> {
        self.by_server.get(server)
    }
}

/// A transport failure talking to a provider (never carries a body).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        // Without the URL: a failed request's Display can include it, and
        // a revocation's form never goes in a URL, but keep errors plain.
        .map_err(|e| HttpError(format!("{}", e.without_url())))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = read_bounded(response).await?;
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The most of a provider's answer Latchkey reads (a token response or an
/// OAuth error is a few KiB). A provider is not trusted with the service's
/// memory: a longer answer is refused, however it is sent.
pub const MAX_PROVIDER_ANSWER: usize = 256 * 1024;

/// Longest OAuth `error` / `error_description` kept from a provider's
/// answer: they reach the connect page and the log.
const MAX_PROVIDER_TEXT: usize = 300;

pub(crate) async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let too_long = || {
        HttpError(format!(
            "the answer is longer than {MAX_PROVIDER_ANSWER} bytes"
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_PROVIDER_ANSWER as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError(format!("reading the answer: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > MAX_PROVIDER_ANSWER {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A provider's OAuth error text as Latchkey keeps it: at most
/// [`MAX_PROVIDER_TEXT`] characters, control characters removed.
pub(crate) fn provider_text(text: &str) -> String {
    let mut kept: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_PROVIDER_TEXT)
        .collect();
    if text
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_PROVIDER_TEXT)
        .is_some()
    {
        kept.push('…');
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(resource: Option<&str>) -> Provider {
        let auth = Url::parse("https://provider.example/authorize").unwrap();
        let token = Url::parse("https://provider.example/token").unwrap();
        Provider::new(ProviderSettings {
            name: "github",
            authorization_endpoint: &auth,
            token_endpoint: &token,
            revocation_endpoint: None,
            client_id: "latchkey",
            client_secret_env: None,
            redirect_uri: Url::parse("https://latchkey.example/connect/callback").unwrap(),
            scopes: &["repo".to_string(), "read:user".to_string()],
            resource,
            timeout: Duration::from_secs(5),
            issuer: Some("https://provider.example"),
            require_iss: true,
        })
        .unwrap()
    }

    #[test]
    fn authorization_url_uses_pkce_s256_and_fresh_state() {
        let p = provider(Some("https://api.provider.example"));
        let a = p.start(&[("nonce", "n-1")]);
        let b = p.start(&[]);
        assert_ne!(a.state, b.state);
        assert_ne!(a.pkce_verifier, b.pkce_verifier);
        let q: std::collections::HashMap<_, _> = a.url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "latchkey");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], a.state);
        assert_eq!(q["scope"], "repo read:user");
        assert_eq!(q["resource"], "https://api.provider.example");
        assert_eq!(q["nonce"], "n-1");
        assert_eq!(
            q["redirect_uri"],
            "https://latchkey.example/connect/callback"
        );
        // The challenge is derived from the verifier, which never leaves.
        assert!(!a.url.as_str().contains(&a.pkce_verifier));
        assert!(!p.can_revoke());
    }

    /// A loopback provider whose token endpoint answers with `answer`.
    async fn provider_answering(
        answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
    ) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                let answer = answer.clone();
                async move { answer() }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let token = Url::parse(&format!("http://{addr}/token")).unwrap();
        Provider::new(ProviderSettings {
            name: "crm",
            authorization_endpoint: &token,
            token_endpoint: &token,
            revocation_endpoint: None,
            client_id: "latchkey",
            client_secret_env: None,
            redirect_uri: token.clone(),
            scopes: &[],
            resource: None,
            timeout: Duration::from_secs(5),
            issuer: None,
            require_iss: false,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_provider_cannot_make_latchkey_read_an_endless_answer() {
        use axum::response::IntoResponse;
        let json = |body: String| {
            ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
        };
        // Announced as long, and streamed without a length.
        let announced = provider_answering(move || json(" ".repeat(MAX_PROVIDER_ANSWER + 1))).await;
        let streamed = provider_answering(|| {
            let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8 * 1024]));
            axum::body::Body::from_stream(futures_util::stream::iter(chunks)).into_response()
        })
        .await;
        for p in [announced, streamed] {
            match p.refresh(&Secret::new("rt-1")).await {
                Err(OauthError::Unreachable { message, .. }) => {
                    assert!(message.contains("longer than"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
        // The control: an answer of ordinary size is read (and its
        // OAuth error reported as the provider's).
        let small = provider_answering(move || {
            let mut r = json(r#"{"error":"invalid_grant"}"#.into());
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            r
        })
        .await;
        assert!(matches!(
            small.refresh(&Secret::new("rt-1")).await,
            Err(OauthError::InvalidGrant { .. })
        ));
    }

    #[tokio::test]
    async fn a_providers_error_text_is_kept_short_and_on_one_line() {
        use axum::response::IntoResponse;
        let p = provider_answering(|| {
            let body = serde_json::json!({
                "error": format!("invalid_scope\r\nX-Injected: 1{}", "e".repeat(5000)),
                "error_description": format!("line one\nline two{}", "d".repeat(5000)),
            });
            (
                http::StatusCode::BAD_REQUEST,
                [(http::header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        })
        .await;
        let error = p.refresh(&Secret::new("rt-1")).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains("invalid_scope"), "{text}");
        assert!(text.contains("line oneline two"), "{text}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(
            text.chars().count() < 2 * MAX_PROVIDER_TEXT + 200,
            "{}",
            text.len()
        );
    }

    #[tokio::test]
    async fn revocation_over_http_is_sent_not_skipped() {
        // A loopback provider answers on http; the oauth2 crate would refuse
        // such a revocation URL, which must not read as "nothing to revoke".
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/revoke",
            axum::routing::post(move |body: String| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(body);
                    ""
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let auth = Url::parse("http://127.0.0.1:1/authorize").unwrap();
        let revoke = Url::parse(&format!("http://{addr}/revoke")).unwrap();
        let p = Provider::new(ProviderSettings {
            name: "crm",
            authorization_endpoint: &auth,
            token_endpoint: &auth,
            revocation_endpoint: Some(&revoke),
            client_id: "latchkey",
            client_secret_env: None,
            redirect_uri: auth.clone(),
            scopes: &[],
            resource: None,
            timeout: Duration::from_secs(5),
            issuer: None,
            require_iss: false,
        })
        .unwrap();
        assert!(p.can_revoke());
        assert!(
            p.revoke(&Secret::new("rt-1"), TokenHint::Refresh)
                .await
                .unwrap()
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec!["token=rt-1&token_type_hint=refresh_token&client_id=latchkey".to_string()]
        );
    }

    #[test]
    fn missing_secret_variable_is_a_config_error() {
        let auth = Url::parse("https://provider.example/authorize").unwrap();
        let err = Provider::new(ProviderSettings {
            name: "github",
            authorization_endpoint: &auth,
            token_endpoint: &auth,
            revocation_endpoint: None,
            client_id: "latchkey",
            client_secret_env: Some("LATCHKEY_TEST_SURELY_UNSET_SECRET"),
            redirect_uri: auth.clone(),
            scopes: &[],
            resource: None,
            timeout: Duration::from_secs(1),
            issuer: None,
            require_iss: false,
        })
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .contains("LATCHKEY_TEST_SURELY_UNSET_SECRET")
        );
    }

    #[test]
    fn iss_must_name_the_provider_the_flow_started_at() {
        let p = provider(None);
        assert_eq!(p.check_iss(Some("https://provider.example")), Ok(()));
        for other in [
            "https://attacker.example",
            "https://provider.example/",
            "HTTPS://provider.example",
            "",
        ] {
            assert!(
                matches!(p.check_iss(Some(other)), Err(IssError::Other { .. })),
                "{other}"
            );
        }
        assert!(matches!(p.check_iss(None), Err(IssError::Missing { .. })));
        // A provider that does not always send `iss`: its absence is
        // accepted, a wrong one is not.
        let auth = Url::parse("https://provider.example/authorize").unwrap();
        let lenient = Provider::new(ProviderSettings {
            name: "crm",
            authorization_endpoint: &auth,
            token_endpoint: &auth,
            revocation_endpoint: None,
            client_id: "latchkey",
            client_secret_env: None,
            redirect_uri: auth.clone(),
            scopes: &[],
            resource: None,
            timeout: Duration::from_secs(1),
            issuer: Some("https://provider.example"),
            require_iss: false,
        })
        .unwrap();
        assert_eq!(lenient.check_iss(None), Ok(()));
        assert!(lenient.check_iss(Some("https://attacker.example")).is_err());
    }

    #[test]
    fn every_server_has_a_redirect_uri_of_its_own() {
        let connect: latchkey_core::config::ConnectConfig = toml::from_str(
            r#"
public_url = "https://latchkey.example/base/"
client_id = "latchkey-connect"
"#,
        )
        .unwrap();
        assert_eq!(
            callback_url(&connect).as_str(),
            "https://latchkey.example/base/connect/callback"
        );
        assert_eq!(
            server_callback_url(&connect, "crm").as_str(),
            "https://latchkey.example/base/connect/callback/crm"
        );
        // A name is one path segment, whatever it holds.
        assert_eq!(
            server_callback_url(&connect, "a/b?c").as_str(),
            "https://latchkey.example/base/connect/callback/a%2Fb%3Fc"
        );
    }

    #[test]
    fn token_set_debug_shows_no_token() {
        let t = TokenSet {
            access_token: Secret::new("at-secret"),
            refresh_token: Some(Secret::new("rt-secret")),
            expires_at: None,
            scopes: vec![],
            id_token: Some(Secret::new("id-secret")),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
