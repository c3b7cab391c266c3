//! `[[servers]]`: the upstream MCP servers, how Latchkey authenticates to
//! each (`auth`), and for per-user servers where each person's credential
//! comes from: their OAuth provider (`[servers.oauth]`, a consent on the
//! connect page) or an exchange of the caller's own token
//! (`[servers.exchange]`, no consent screen).

use serde::Deserialize;
use url::Url;

/// `[servers.oauth]`: the OAuth provider that issues a per-user server's
/// tokens. Latchkey is that provider's client; register
/// `<[connect] public_url>/connect/callback/<server name>` as its redirect
/// URI (one per provider, against OAuth mix-up).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOauth {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    /// RFC 7009 endpoint; tokens are revoked there when a user disconnects.
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
    pub client_id: String,
    /// Environment variable holding the client secret (none: a public client).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` sent with the authorization and token requests,
    /// for providers that bind tokens to an audience.
    #[serde(default)]
    pub resource: Option<String>,
    /// The provider's issuer identifier (its RFC 8414 / OIDC metadata's
    /// `issuer`). When set, an authorisation response's RFC 9207 `iss`
    /// must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Copy of the metadata's `authorization_response_iss_parameter_supported`:
    /// when true, a response without `iss` is refused. Needs `issuer`.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// `[servers.exchange]`: a per-user server whose people need no consent
/// screen, because the organisation's identity provider already trusts it.
/// Latchkey exchanges the caller's verified token for one the server
/// accepts, scoped to that person (and their agent) and that server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerExchange {
    pub kind: ExchangeKind,
    /// The identity provider's RFC 8693 token endpoint (default: the
    /// `token_endpoint` of `[identity_provider]`'s discovery document).
    #[serde(default)]
    pub token_endpoint: Option<Url>,
    /// Latchkey's client at that endpoint.
    pub client_id: String,
    /// Environment variable holding that client's secret (sent with HTTP
    /// Basic); none: a public client, only `client_id` is sent.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `private_key_jwt` (RFC 7523 §2.2): authenticate with a JWT signed by
    /// this PKCS#8 PEM key (RSA: RS256, EC P-256: ES256) instead of a
    /// secret, at the identity provider and at the authorization server.
    #[serde(default)]
    pub private_key_file: Option<std::path::PathBuf>,
    /// The `kid` the providers know that key by.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// RFC 8693 `audience` (`token_exchange` only; `id_jag` always names
    /// the server's authorization server).
    #[serde(default)]
    pub audience: Option<String>,
    /// RFC 8707 `resource`: the server's resource identifier (default: the
    /// server's `url`).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The token type asked for (`token_exchange` only; default an access token).
    #[serde(default)]
    pub requested_token_type: Option<String>,
    /// The subject token's type (default: an ID token with
    /// `subject_token_header`, else an access token).
    #[serde(default)]
    pub subject_token_type: Option<String>,
    /// Exchange the ID token the caller sends in this header instead of
    /// their access token (the MCP extension's subject). It must verify as
    /// the identity provider's, be issued to the access token's client for
    /// the same person; it never goes upstream.
    #[serde(default)]
    pub subject_token_header: Option<String>,
    /// Where the agent is recognised by the token's `client_id` (it is an
    /// OAuth client of its own), send that token as the `actor_token` too,
    /// so the issued token names the agent in `act`.
    #[serde(default = "yes")]
    pub actor_token: bool,
    /// `id_jag`: the issuer of the server's authorization server. Its RFC
    /// 8414 metadata says where to redeem the grant, and must list the
    /// ID-JAG profile in `authorization_grant_profiles_supported`.
    #[serde(default)]
    pub authorization_server: Option<Url>,
    /// `id_jag`: Latchkey's client at that authorization server (default: `client_id`).
    #[serde(default)]
    pub authorization_server_client_id: Option<String>,
    /// `id_jag`: environment variable holding that client's secret.
    #[serde(default)]
    pub authorization_server_client_secret_env: Option<String>,
}

/// How `[servers.exchange]` gets a person's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeKind {
    /// RFC 8693 token exchange at the identity provider, for a server in
    /// the same trust domain.
    TokenExchange,
    /// MCP enterprise-managed authorization: an Identity Assertion JWT
    /// Authorization Grant from the identity provider (RFC 8693), redeemed
    /// at the server's own authorization server (RFC 7523 `jwt-bearer`).
    IdJag,
}

impl ExchangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::TokenExchange => "token_exchange",
            ExchangeKind::IdJag => "id_jag",
        }
    }
}

/// RFC 8693 token type identifiers.
pub mod token_types {
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    pub const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
}

fn yes() -> bool {
    true
}

impl ServerExchange {
    /// The type the subject token is sent as.
    pub fn subject_token_type(&self) -> &str {
        match (&self.subject_token_type, &self.subject_token_header) {
            (Some(t), _) => t,
            (None, Some(_)) => token_types::ID_TOKEN,
            (None, None) => token_types::ACCESS_TOKEN,
        }
    }

    /// What is wrong with this section, for config validation.
    pub fn problem(&self) -> Option<String> {
        if let Some(h) = &self.subject_token_header {
            let lower = h.to_ascii_lowercase();
            if ["authorization", "cookie", "host"].contains(&lower.as_str())
                || lower.starts_with(':')
                || h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Some(format!(
                    "subject_token_header '{h}' must be a header of its own (letters, digits, '-'), \
                     not authorization, cookie or host"
                ));
            }
        }
        if self.client_id.is_empty() {
            return Some("client_id must not be empty".into());
        }
        if self.private_key_file.is_some()
            && (self.client_secret_env.is_some()
                || self.authorization_server_client_secret_env.is_some())
        {
            return Some(
                "private_key_file and a client secret both authenticate the client; keep one"
                    .into(),
            );
        }
        if self.private_key_id.is_some() && self.private_key_file.is_none() {
            return Some(
                "private_key_id names the key of private_key_file, which is not set".into(),
            );
        }
        match self.kind {
            ExchangeKind::TokenExchange => {
                if self.authorization_server.is_some()
                    || self.authorization_server_client_id.is_some()
                    || self.authorization_server_client_secret_env.is_some()
                {
                    return Some(
                        "authorization_server* settings are for kind = \"id_jag\"; token_exchange \
                         asks the identity provider only"
                            .into(),
                    );
                }
            }
            ExchangeKind::IdJag => {
                if self.authorization_server.is_none() {
                    return Some(
                        "kind = \"id_jag\" needs authorization_server, the issuer of the server's \
                         authorization server (where the grant is redeemed)"
                            .into(),
                    );
                }
                if self.audience.is_some() {
                    return Some(
                        "audience is for kind = \"token_exchange\"; an ID-JAG's audience is always \
                         the authorization_server"
                            .into(),
                    );
                }
                if self
                    .requested_token_type
                    .as_deref()
                    .is_some_and(|t| t != token_types::ID_JAG)
                {
                    return Some(format!(
                        "kind = \"id_jag\" always asks for {}; remove requested_token_type",
                        token_types::ID_JAG
                    ));
                }
            }
        }
        None
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    /// The upstream MCP endpoint (Streamable HTTP).
    pub url: Url,
    #[serde(default)]
    pub auth: ServerAuth,
    /// Where users authorise their own identities for this server.
    #[serde(default)]
    pub oauth: Option<ServerOauth>,
    /// Where each person's credential is had by exchanging their token.
    #[serde(default)]
    pub exchange: Option<ServerExchange>,
    /// For an `https` upstream: the PEM bundle its certificate must chain
    /// to, as a path Envoy sees (default: `envoy render --upstream-ca`, the
    /// system bundle). Its name (or IP) must be in the certificate's SANs.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How this upstream answers a POSTed request when the client accepts
    /// both (`json`, the default, or `sse`). Latchkey answers a call to a
    /// hidden name the same way, so the answer's content type does not
    /// tell hidden from absent.
    #[serde(default)]
    pub responses: ResponseFormat,
    /// The operator trusts this server's tool annotations (`destructiveHint`,
    /// `readOnlyHint`, ...) to be honest, so approval rules may select its
    /// tools by them. The MCP spec calls annotations untrusted unless the
    /// server is: a server could otherwise call a destructive tool read-only.
    #[serde(default)]
    pub trust_annotations: bool,
}

/// The content type an upstream answers requests with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// `application/json`: one JSON-RPC message.
    #[default]
    Json,
    /// `text/event-stream`: the answer as an SSE event.
    Sse,
}

/// How an upstream server expects its credential.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerAuth {
    /// The upstream takes no credential; the client's is still removed.
    #[default]
    None,
    /// A header carrying the identity's secret, e.g. `authorization: Bearer <secret>`.
    StaticHeader {
        #[serde(default = "default_auth_header")]
        header: String,
        #[serde(default)]
        prefix: String,
    },
}

fn default_auth_header() -> String {
    "authorization".into()
}
