//! `[[servers]]`: the upstream MCP servers, how Latchkey authenticates to
//! each (`auth`), and for per-user servers their OAuth provider.

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
