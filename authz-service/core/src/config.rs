//! The service configuration file (TOML): where to listen, Redis, master keys,
//! the inbound identity provider, upstream MCP servers and the gateways that
//! publish them. Loading validates cross references so a mistake is reported
//! with the name that is wrong, before anything starts.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not consistent: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub redis: RedisConfig,
    pub vault: VaultConfig,
    pub identity_provider: IdentityProvider,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    /// Provisioned agents (reloaded with `[policy]`).
    #[serde(default)]
    pub agents: Vec<crate::agents::AgentConfig>,
    /// Tool-level policy. Absent: every authenticated caller sees every
    /// tool (logged as a warning at start). Present: nothing is visible
    /// unless a grant allows it.
    pub policy: Option<PolicyConfig>,
    /// The connect page and per-user OAuth (`[connect]`). Absent: a user
    /// without an identity for a per-user server is told to ask an operator.
    pub connect: Option<ConnectConfig>,
}

/// `[connect]`: where people connect their own identities. `latchkey serve`
/// serves the page on its HTTP side; sign-in is an OIDC authorization code
/// flow (with PKCE) at the organisation's identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The HTTP side's URL as a browser reaches it (consent links point here).
    pub public_url: Url,
    /// The connect page's OAuth client at the organisation's identity provider.
    pub client_id: String,
    /// Environment variable holding that client's secret (none: a public client).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Authorization and token endpoints; found by OIDC discovery at the
    /// `[identity_provider]` issuer when absent.
    #[serde(default)]
    pub authorization_endpoint: Option<Url>,
    #[serde(default)]
    pub token_endpoint: Option<Url>,
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// How long a signed-in connect session lasts.
    #[serde(default = "default_session_secs")]
    pub session_ttl_secs: u64,
    /// How long a consent link (and a `requestState`) stays usable.
    #[serde(default = "default_consent_secs")]
    pub consent_ttl_secs: u64,
    /// Refresh an access token this long before it expires.
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin_secs: u64,
    /// How long a Check waits for another replica's refresh of the same identity.
    #[serde(default = "default_refresh_wait")]
    pub refresh_wait_ms: u64,
}

fn default_login_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_session_secs() -> u64 {
    3600
}
fn default_consent_secs() -> u64 {
    900
}
fn default_refresh_margin() -> u64 {
    60
}
fn default_refresh_wait() -> u64 {
    // Under Envoy's default 2 s authorization timeout, so a waiting
    // replica answers before the filter gives up.
    1500
}

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

/// `[policy]`: grants of tools, prompts and resources to users and roles.
/// Compiled and checked by `policy::Policy::compile`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Role name → values of the token's `groups`/`roles` claims that give
    /// it. A grant's `roles` may name these or claim values directly.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// How calls to things the caller may not see are answered.
    #[serde(default)]
    pub hidden: HiddenAnswers,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
}

/// `[[policy.grants]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Names the grant in explanations and errors (its span gives the line).
    pub name: toml::Spanned<String>,
    pub gateway: String,
    /// Server assignments of that gateway this grant covers.
    pub assignments: Vec<String>,
    /// Users (`sub`) granted; `"*"` is every authenticated user.
    #[serde(default)]
    pub users: Vec<String>,
    /// Roles granted (see `[policy.roles]`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Agents (the token's `client_id`/`azp`) granted. A grant names either
    /// people (users, roles) or agents. Once any grant of an assignment
    /// names agents, an agent there sees only what its own grants allow,
    /// intersected with what the user it acts for may see.
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub tools: PatternsConfig,
    #[serde(default)]
    pub prompts: PatternsConfig,
    /// Resource URIs; also rules resource templates by URI template.
    #[serde(default)]
    pub resources: PatternsConfig,
    #[serde(default)]
    pub constraints: Vec<ConstraintConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternsConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `[[policy.grants.constraints]]`: one rule over one argument of the
/// tools it names. Exactly one of the checks is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintConfig {
    /// Tool name or pattern the constraint applies to.
    pub tool: String,
    /// JSON Pointer (RFC 6901) into the call's `arguments`.
    pub argument: String,
    /// When the argument is absent: allowed if true, else a violation.
    #[serde(default)]
    pub optional: bool,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    /// Glob (`*`, `?`) the string value must match.
    pub pattern: Option<String>,
    /// How `pattern` judges the value: `"path"` or `"uri"` canonicalise it
    /// first (see `latchkey_filter::uri`; a value with no single canonical
    /// form breaks the constraint), `"none"` compares it as sent. Unset: a
    /// pattern starting with `/` is a path, one starting `scheme://` a URI.
    pub canonical: Option<CanonicalForm>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_length: Option<usize>,
    /// The argument must not be given at all.
    #[serde(default)]
    pub forbidden: bool,
}

/// What a `pattern` constraint's argument is, for its canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanonicalForm {
    /// A file path: `.` and repeated `/` dropped; `..` and escapes refused.
    Path,
    /// An absolute URI, canonical as resource URIs are.
    Uri,
    /// The string as sent.
    None,
}

impl CanonicalForm {
    pub fn name(self) -> &'static str {
        match self {
            CanonicalForm::Path => "path",
            CanonicalForm::Uri => "uri",
            CanonicalForm::None => "none",
        }
    }
}

/// `[policy.hidden]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenAnswers {
    #[serde(default = "default_hidden_tool")]
    pub tool: HiddenAnswer,
    #[serde(default = "default_hidden_prompt")]
    pub prompt: HiddenAnswer,
    #[serde(default = "default_hidden_resource")]
    pub resource: HiddenAnswer,
}

impl Default for HiddenAnswers {
    fn default() -> Self {
        Self {
            tool: default_hidden_tool(),
            prompt: default_hidden_prompt(),
            resource: default_hidden_resource(),
        }
    }
}

/// The answer to a call naming something hidden: what the upstream answers
/// for a name it does not know, so the caller learns nothing. `{name}` in
/// `message` is replaced by the name called.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenAnswer {
    #[serde(default)]
    pub style: HiddenStyle,
    #[serde(default = "default_hidden_code")]
    pub code: i64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenStyle {
    /// A JSON-RPC error (the MCP spec's answer to an unknown tool).
    #[default]
    JsonrpcError,
    /// A tool result with `isError: true` (what some SDKs answer).
    ToolResult,
}

fn default_hidden_code() -> i64 {
    -32602
}
fn default_hidden_tool() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32602,
        message: "Unknown tool: {name}".into(),
    }
}
fn default_hidden_prompt() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32602,
        message: "Unknown prompt: {name}".into(),
    }
}
fn default_hidden_resource() -> HiddenAnswer {
    HiddenAnswer {
        style: HiddenStyle::JsonrpcError,
        code: -32002,
        message: "Resource not found: {name}".into(),
    }
}

/// The operator API (`latchkey.admin.v1.Admin`) and who may do what there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The `aud` admin tokens must carry (not a gateway's: a token for
    /// calling tools must not administer the vault).
    #[serde(default = "default_admin_audience")]
    pub audience: String,
    /// A claim listing capabilities directly (array, or space-separated string).
    #[serde(default = "default_capabilities_claim")]
    pub capabilities_claim: String,
    /// Claims whose values are group or role names, looked up in `roles`.
    #[serde(default = "default_role_claims")]
    pub role_claims: Vec<String>,
    /// Group or role name → the capabilities it grants.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9192))
}
fn default_admin_audience() -> String {
    "latchkey-admin".into()
}
fn default_capabilities_claim() -> String {
    "latchkey_capabilities".into()
}
fn default_role_claims() -> Vec<String> {
    vec!["groups".into(), "roles".into()]
}

impl AdminConfig {
    /// The claim settings `Capabilities::from_claims` reads.
    pub fn claim_grants(&self) -> crate::capability::ClaimGrants<'_> {
        crate::capability::ClaimGrants {
            capabilities_claim: &self.capabilities_claim,
            role_claims: &self.role_claims,
            roles: &self.roles,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            audience: default_admin_audience(),
            capabilities_claim: default_capabilities_claim(),
            role_claims: default_role_claims(),
            roles: Default::default(),
        }
    }
}

/// The audit trail (a Redis stream) and its bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Approximate maximum number of events the stream keeps.
    #[serde(default = "default_audit_max_len")]
    pub stream_max_len: usize,
    /// Events older than this many seconds are trimmed each time decision
    /// events are written. None: no age bound.
    #[serde(default)]
    pub stream_max_age_secs: Option<u64>,
    /// Decision events held in memory while Redis is slow or away; past
    /// that they are dropped from the stream (counted, logged as errors;
    /// still in the decision log).
    #[serde(default = "default_audit_queue")]
    pub queue_events: usize,
    /// Also export events to an OpenTelemetry collector.
    pub otlp: Option<OtlpConfig>,
}

fn default_audit_max_len() -> usize {
    1_000_000
}

fn default_audit_queue() -> usize {
    100_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            stream_max_len: default_audit_max_len(),
            stream_max_age_secs: None,
            queue_events: default_audit_queue(),
            otlp: None,
        }
    }
}

/// `[audit.otlp]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP logs endpoint, e.g.
    /// `http://otel-collector:4318/v1/logs`.
    pub endpoint: String,
    /// Extra request headers (an API key for a hosted collector, say).
    /// Never logged.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default = "default_otlp_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_otlp_timeout_ms() -> u64 {
    5000
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for OtlpConfig {
    /// The endpoint and header names only: header values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        write!(f, "{} (headers: {})", self.endpoint, names.join(", "))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC `envoy.service.auth.v3.Authorization`.
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// HTTP side: protected resource metadata, health, the connect page.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Serve `/metrics` here instead of on the HTTP side (which browsers
    /// reach for the connect page): a port only the scraper is let into.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// mTLS on the gRPC listener (`[listen.grpc_tls]`): an allowed Check
    /// carries a decrypted credential, so only the Envoys meant to call it
    /// may. Required on a non-loopback `grpc` address unless `grpc_insecure`.
    pub grpc_tls: Option<GrpcTls>,
    /// Plaintext gRPC on a non-loopback address, for a network where
    /// something else authenticates the caller (Istio's mesh mTLS plus the
    /// `AuthorizationPolicy` that `latchkey envoy istio` renders). Logged
    /// as a warning at every start.
    #[serde(default)]
    pub grpc_insecure: bool,
}

/// `[listen.grpc_tls]`: the gRPC listener's certificate, and the CA whose
/// client certificates (the Envoys') it accepts. PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// The listener's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Callers must present a certificate this CA issued; anyone else is
    /// refused in the TLS handshake.
    pub client_ca: PathBuf,
    /// When set, a caller's certificate must also name one of these as a
    /// URI SAN (a SPIFFE ID) or DNS SAN: set it whenever `client_ca` also
    /// issues certificates to other workloads (a mesh CA always does).
    #[serde(default)]
    pub allowed_clients: Vec<String>,
}

fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9191))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8181))
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
            metrics: None,
            grpc_tls: None,
            grpc_insecure: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// A Redis Cluster's seed nodes (`redis://host:port`); replaces `url`.
    /// Every Latchkey key carries the prefix as one hash tag, so the change
    /// script's keys share a slot.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Sentinels (`redis://host:port`) that name the master; replaces `url`.
    #[serde(default)]
    pub sentinel_nodes: Vec<String>,
    /// The master's name as the Sentinels know it (`sentinel monitor <name> ...`).
    pub sentinel_master: Option<String>,
    /// Prefix of every key Latchkey writes, so one Redis can hold several deployments.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Bound on connecting and on each command: past it, a request that
    /// needs Redis fails closed rather than waiting.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

fn default_redis_timeout() -> u64 {
    500
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_key_prefix() -> String {
    "latchkey".into()
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            cluster_nodes: Vec::new(),
            sentinel_nodes: Vec::new(),
            sentinel_master: None,
            key_prefix: default_key_prefix(),
            timeout_ms: default_redis_timeout(),
        }
    }
}

/// Where master keys come from. They are never stored in Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// A file with one `key-id:base64(32 bytes)` per line.
    pub key_file: Option<PathBuf>,
    /// Or an environment variable with the same lines, separated by newlines or commas.
    pub key_env: Option<String>,
    /// Key id used for new ciphertexts; defaults to the last key listed.
    pub active_key: Option<String>,
    /// How long a decrypted credential stays in this process's memory.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_secs: u64,
}

fn default_cache_ttl() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    /// Expected `iss` of inbound tokens.
    pub issuer: String,
    /// JWKS location; discovered from `<issuer>/.well-known/openid-configuration` when absent.
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Minimum time between two JWKS fetches caused by tokens with an unknown
    /// `kid`, so forged tokens cannot flood the identity provider.
    #[serde(default = "default_jwks_refetch")]
    pub jwks_refetch_min_secs: u64,
    /// How long a verified token's result is remembered (never past its
    /// `exp`), so the steady state skips the signature check; 0 disables.
    #[serde(default = "default_token_cache")]
    pub verified_token_cache_secs: u64,
}

fn default_token_cache() -> u64 {
    300
}

fn default_jwks_refetch() -> u64 {
    5
}

fn default_leeway() -> u64 {
    30
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub name: String,
    /// Public base URL; also the `aud` inbound tokens must carry. Each
    /// assignment is published at `<public_url>/<assignment name>`.
    pub public_url: Url,
    /// Other `Host` values that reach this gateway (e.g. a mesh-internal name).
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// Requests from an agent not in `[[agents]]`: `deny` (default) or `allow`.
    #[serde(default)]
    pub unknown_agents: crate::agents::UnknownAgents,
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// Endpoints that combine several assignments of the same server
    /// (`[[gateways.combined]]`), each published at `<public_url>/<name>`.
    #[serde(default)]
    pub combined: Vec<Combined>,
}

/// One endpoint over several assignments of one server: a named request
/// goes to the first assignment whose policy lets the caller see the name,
/// a list shows the union of what they show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combined {
    pub name: String,
    /// The candidate assignments, in the order they are tried.
    pub assignments: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAssignment")]
pub struct Assignment {
    pub name: String,
    pub server: String,
    pub scheme: IdentityScheme,
}

/// Whose credential is injected for an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityScheme {
    /// Each person brings their own identity for the server.
    PerUser,
    /// One global identity (typically a service account) used by everyone.
    Shared { identity: String },
}

impl IdentityScheme {
    /// As written in the config (`per_user`, `shared`).
    pub fn name(&self) -> &'static str {
        match self {
            IdentityScheme::PerUser => "per_user",
            IdentityScheme::Shared { .. } => "shared",
        }
    }
}

/// An assignment as written: `scheme = "shared"` needs `identity`,
/// `scheme = "per_user"` must not have one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssignment {
    name: String,
    server: String,
    scheme: SchemeName,
    identity: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SchemeName {
    PerUser,
    Shared,
}

impl TryFrom<RawAssignment> for Assignment {
    type Error = String;

    fn try_from(raw: RawAssignment) -> Result<Self, String> {
        let scheme = match (raw.scheme, raw.identity) {
            (SchemeName::Shared, Some(identity)) if !identity.is_empty() => {
                IdentityScheme::Shared { identity }
            }
            (SchemeName::Shared, _) => {
                return Err(format!(
                    "assignment '{}': scheme \"shared\" needs `identity = \"<global identity id>\"`",
                    raw.name
                ));
            }
            (SchemeName::PerUser, None) => IdentityScheme::PerUser,
            (SchemeName::PerUser, Some(_)) => {
                return Err(format!(
                    "assignment '{}': scheme \"per_user\" takes each user's own identity; remove `identity`",
                    raw.name
                ));
            }
        };
        Ok(Assignment {
            name: raw.name,
            server: raw.server,
            scheme,
        })
    }
}

impl Gateway {
    /// Path prefix under which this gateway's assignments are published, without trailing `/`.
    pub fn base_path(&self) -> &str {
        self.public_url.path().trim_end_matches('/')
    }

    /// The `host[:port]` clients use to reach the gateway.
    pub fn authority(&self) -> String {
        authority_of(&self.public_url)
    }

    /// Public path of one assignment.
    pub fn assignment_path(&self, assignment: &Assignment) -> String {
        self.endpoint_path(&assignment.name)
    }

    /// Public path of an assignment or a combined endpoint by its name.
    pub fn endpoint_path(&self, name: &str) -> String {
        format!("{}/{}", self.base_path(), name)
    }

    pub fn assignment(&self, name: &str) -> Option<&Assignment> {
        self.assignments.iter().find(|a| a.name == name)
    }

    /// RFC 9728 metadata URL for this gateway: the well-known prefix inserted
    /// before the resource's path.
    pub fn resource_metadata_url(&self) -> String {
        let mut origin = self.public_url.clone();
        origin.set_path("");
        origin.set_query(None);
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            origin.as_str().trim_end_matches('/'),
            self.base_path()
        )
    }
}

pub fn authority_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Where the config names `id` as a shared assignment's identity, as
    /// `gateway 'g', assignment 'a'`, with that assignment's server — the
    /// first place, `None` when nowhere.
    /// Such ids are reserved for the organisation's global identities: a
    /// person who took one first as a private identity would break (or,
    /// for themself, take over) that assignment, and an operator could not
    /// store the service account under the name the config expects.
    pub fn reserved_identity(&self, id: &str) -> Option<(String, &str)> {
        self.gateways.iter().find_map(|g| {
            g.assignments.iter().find_map(|a| match &a.scheme {
                IdentityScheme::Shared { identity } if identity == id => Some((
                    format!("gateway '{}', assignment '{}'", g.name, a.name),
                    a.server.as_str(),
                )),
                _ => None,
            })
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.vault.key_file.is_none() && self.vault.key_env.is_none() {
            return invalid(
                "[vault] needs key_file or key_env: master keys never live in Redis".into(),
            );
        }
        self.listen.validate().map_err(ConfigError::Invalid)?;
        let mut names = HashSet::new();
        for s in &self.servers {
            if !names.insert(s.name.as_str()) {
                return invalid(format!("server '{}' is declared twice", s.name));
            }
            if let Some(o) = &s.oauth
                && o.authorization_response_iss_parameter_supported
                && o.issuer.as_deref().is_none_or(str::is_empty)
            {
                return invalid(format!(
                    "server '{}': [servers.oauth] authorization_response_iss_parameter_supported needs \
                     issuer, the provider's issuer identifier to compare the `iss` with",
                    s.name
                ));
            }
            if let ServerAuth::StaticHeader { header, .. } = &s.auth
                && http_header_name_invalid(header)
            {
                return invalid(format!(
                    "server '{}': '{header}' is not a valid HTTP header name",
                    s.name
                ));
            }
        }
        if !self.redis.cluster_nodes.is_empty() && !self.redis.sentinel_nodes.is_empty() {
            return invalid(
                "[redis] names both cluster_nodes and sentinel_nodes; pick the one your Redis is"
                    .into(),
            );
        }
        if !self.redis.sentinel_nodes.is_empty()
            && self
                .redis
                .sentinel_master
                .as_deref()
                .unwrap_or("")
                .is_empty()
        {
            return invalid(
                "[redis] sentinel_nodes needs sentinel_master, the name the Sentinels monitor"
                    .into(),
            );
        }
        for (role, caps) in &self.admin.roles {
            for cap in caps {
                if crate::capability::Capability::parse(cap).is_none() {
                    return invalid(format!(
                        "[admin.roles] '{role}': unknown capability '{cap}' (known: {})",
                        crate::capability::Capability::names()
                    ));
                }
            }
        }
        let mut gateways = HashSet::new();
        for g in &self.gateways {
            if !gateways.insert(g.name.as_str()) {
                return invalid(format!("gateway '{}' is declared twice", g.name));
            }
            if g.name.is_empty() || g.name.contains(':') {
                return invalid(format!(
                    "gateway '{}': a gateway name must be non-empty and without ':'",
                    g.name
                ));
            }
            if g.public_url.host_str().is_none() {
                return invalid(format!("gateway '{}': public_url has no host", g.name));
            }
            let mut assignments = HashSet::new();
            for a in &g.assignments {
                if a.name.is_empty() || a.name.contains('/') {
                    return invalid(format!(
                        "gateway '{}': assignment name '{}' must be one non-empty path segment",
                        g.name, a.name
                    ));
                }
                if !assignments.insert(a.name.as_str()) {
                    return invalid(format!(
                        "gateway '{}': assignment '{}' is declared twice",
                        g.name, a.name
                    ));
                }
                if self.server(&a.server).is_none() {
                    return invalid(format!(
                        "gateway '{}', assignment '{}': unknown server '{}' (declare it under [[servers]])",
                        g.name, a.name, a.server
                    ));
                }
            }
            for c in &g.combined {
                g.validate_combined(c, &mut assignments)
                    .map_err(ConfigError::Invalid)?;
            }
        }
        Ok(())
    }
}

impl Listen {
    /// What can be told from the file alone; whether the gRPC listener may
    /// run without TLS on its address is `latchkey serve`'s to refuse
    /// (`grpc_tls::ListenerSecurity`), so that the CLI commands sharing
    /// this file keep working.
    fn validate(&self) -> Result<(), String> {
        if let Some(tls) = &self.grpc_tls {
            if self.grpc_insecure {
                return Err(
                    "[listen] sets both grpc_insecure and [listen.grpc_tls]: the listener uses mTLS when [listen.grpc_tls] is there, so remove grpc_insecure"
                        .into(),
                );
            }
            for (field, path) in [
                ("cert", &tls.cert),
                ("key", &tls.key),
                ("client_ca", &tls.client_ca),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(format!(
                        "[listen.grpc_tls] {field} is empty: give the path of a PEM file"
                    ));
                }
            }
            if let Some(bad) = tls
                .allowed_clients
                .iter()
                .find(|c| c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()))
            {
                return Err(format!(
                    "[listen.grpc_tls] allowed_clients: '{}' is not a SAN; write a URI SAN (spiffe://trust-domain/ns/<namespace>/sa/<account>) or a DNS name",
                    bad.escape_debug()
                ));
            }
        }
        Ok(())
    }
}

impl Gateway {
    /// A combined endpoint's rules; `taken` holds the names already
    /// published on this gateway (assignments and earlier combined ones).
    fn validate_combined<'a>(
        &'a self,
        c: &'a Combined,
        taken: &mut HashSet<&'a str>,
    ) -> Result<(), String> {
        let at = format!("gateway '{}', combined '{}'", self.name, c.name);
        if c.name.is_empty() || c.name.contains(['/', '?', '#']) {
            return Err(format!("{at}: the name must be one non-empty path segment"));
        }
        if !taken.insert(c.name.as_str()) {
            return Err(format!(
                "{at}: the name is already published on this gateway (an assignment or another combined endpoint has it)"
            ));
        }
        if c.assignments.len() < 2 {
            return Err(format!(
                "{at}: combines {} assignment(s); it needs at least two (publish a single assignment at its own path)",
                c.assignments.len()
            ));
        }
        let mut seen = HashSet::new();
        let mut server: Option<&str> = None;
        for name in &c.assignments {
            let Some(a) = self.assignment(name) else {
                return Err(format!(
                    "{at}: no assignment '{name}' on this gateway (declare it under [[gateways.assignments]])"
                ));
            };
            if !seen.insert(name.as_str()) {
                return Err(format!("{at}: assignment '{name}' is named twice"));
            }
            match server {
                None => server = Some(&a.server),
                Some(s) if s != a.server => {
                    return Err(format!(
                        "{at}: assignment '{name}' is of server '{}' but '{}' is of server '{s}'; a combined endpoint joins assignments of the same server, so each name belongs to one of them",
                        a.server, c.assignments[0]
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[vault]
key_env = "LATCHKEY_MASTER_KEYS"

[identity_provider]
issuer = "http://127.0.0.1:8080"

[[servers]]
name = "everything"
url = "http://127.0.0.1:3001/mcp"
auth = { type = "static_header", header = "authorization", prefix = "Bearer " }

[[gateways]]
name = "local"
public_url = "http://127.0.0.1:10000/mcp"

[[gateways.assignments]]
name = "everything"
server = "everything"
scheme = "shared"
identity = "everything-sa"

[[gateways.assignments]]
name = "everything-mine"
server = "everything"
scheme = "per_user"
"#;

    #[test]
    fn parses_sample_with_defaults() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.listen.grpc.port(), 9191);
        assert_eq!(c.listen.http.port(), 8181);
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        let g = &c.gateways[0];
        assert_eq!(g.base_path(), "/mcp");
        assert_eq!(g.authority(), "127.0.0.1:10000");
        assert_eq!(g.assignment_path(&g.assignments[0]), "/mcp/everything");
        assert_eq!(
            g.resource_metadata_url(),
            "http://127.0.0.1:10000/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            g.assignments[0].scheme,
            IdentityScheme::Shared {
                identity: "everything-sa".into()
            }
        );
        assert_eq!(g.assignments[1].scheme, IdentityScheme::PerUser);
    }

    #[test]
    fn unknown_server_is_named() {
        let text = SAMPLE.replace(
            "server = \"everything\"\nscheme = \"per_user\"",
            "server = \"nope\"\nscheme = \"per_user\"",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown server 'nope'"), "{err}");
    }

    #[test]
    fn missing_master_keys_is_refused() {
        let text = SAMPLE.replace("key_env = \"LATCHKEY_MASTER_KEYS\"", "cache_ttl_secs = 5");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("key_file or key_env"), "{err}");
    }

    #[test]
    fn typo_in_field_is_refused_with_its_name() {
        let text = SAMPLE
            .replace("leeway_secs", "x")
            .replace("issuer =", "isuer =");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("isuer"), "{err}");
    }

    #[test]
    fn a_required_iss_needs_the_issuer_to_compare_it_with() {
        let oauth = |extra: &str| {
            SAMPLE.replace(
                "prefix = \"Bearer \" }\n",
                &format!(
                    "prefix = \"Bearer \" }}\n\n[servers.oauth]\nauthorization_endpoint = \"https://p.example/a\"\n\
                     token_endpoint = \"https://p.example/t\"\nclient_id = \"latchkey\"\n{extra}\n"
                ),
            )
        };
        let err = Config::parse(&oauth(
            "authorization_response_iss_parameter_supported = true",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server 'everything'") && err.contains("needs issuer"),
            "{err}"
        );
        let c = Config::parse(&oauth(
            "issuer = \"https://p.example\"\nauthorization_response_iss_parameter_supported = true",
        ))
        .unwrap();
        let o = c.servers[0].oauth.as_ref().unwrap();
        assert_eq!(o.issuer.as_deref(), Some("https://p.example"));
        assert!(o.authorization_response_iss_parameter_supported);
    }

    #[test]
    fn scheme_and_identity_must_agree() {
        let text = SAMPLE.replace("identity = \"everything-sa\"\n", "");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("needs `identity"), "{err}");
        let text = SAMPLE.replace(
            "scheme = \"per_user\"",
            "scheme = \"per_user\"\nidentity = \"x\"",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("remove `identity`"), "{err}");
    }

    #[test]
    fn the_grpc_listeners_tls_is_read_and_checked() {
        let with = |listen: &str| {
            Config::parse(&SAMPLE.replace(
                "[identity_provider]",
                &format!("{listen}\n\n[identity_provider]"),
            ))
        };
        let c = with(
            "[listen]\ngrpc = \"0.0.0.0:9191\"\n[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nallowed_clients = [\"spiffe://corp/ns/gw/sa/envoy\"]",
        )
        .unwrap();
        let tls = c.listen.grpc_tls.unwrap();
        assert_eq!(tls.client_ca, PathBuf::from("/ca.pem"));
        assert_eq!(tls.allowed_clients, ["spiffe://corp/ns/gw/sa/envoy"]);
        assert!(!c.listen.grpc_insecure);
        let err = with(
            "[listen]\ngrpc_insecure = true\n[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("remove grpc_insecure"), "{err}");
        let err = with(
            "[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nallowed_clients = [\"spiffe://a b\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not a SAN"), "{err}");
        // A client CA is not optional: TLS without it would authenticate nobody.
        let err = with("[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
    }

    #[test]
    fn redis_topology_and_admin_roles_are_checked() {
        let both = SAMPLE.replace(
            "[identity_provider]",
            "[redis]\ncluster_nodes = [\"redis://a:1\"]\nsentinel_nodes = [\"redis://b:2\"]\nsentinel_master = \"m\"\n\n[identity_provider]",
        );
        let err = Config::parse(&both).unwrap_err().to_string();
        assert!(err.contains("pick the one"), "{err}");
        let no_master = SAMPLE.replace(
            "[identity_provider]",
            "[redis]\nsentinel_nodes = [\"redis://b:2\"]\n\n[identity_provider]",
        );
        let err = Config::parse(&no_master).unwrap_err().to_string();
        assert!(err.contains("sentinel_master"), "{err}");
        let typo = SAMPLE.replace(
            "[identity_provider]",
            "[admin.roles]\nops = [\"users:manage\", \"user:manage\"]\n\n[identity_provider]",
        );
        let err = Config::parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown capability 'user:manage'"), "{err}");
        let ok = SAMPLE.replace(
            "[identity_provider]",
            "[admin]\nlisten = \"127.0.0.1:9999\"\n\n[admin.roles]\nops = [\"users:manage\"]\n\n[identity_provider]",
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.admin.listen.port(), 9999);
        assert_eq!(c.admin.audience, "latchkey-admin");
        assert_eq!(c.redis.timeout_ms, 500);
    }

    fn with_combined(combined: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "{SAMPLE}\n[[servers]]\nname = \"other\"\nurl = \"http://127.0.0.1:3002/mcp\"\n\n[[gateways.assignments]]\nname = \"other\"\nserver = \"other\"\nscheme = \"per_user\"\n{combined}"
        );
        Config::parse(&text)
    }

    fn combined_error(combined: &str) -> String {
        with_combined(combined).unwrap_err().to_string()
    }

    #[test]
    fn combined_endpoint_parses_in_order() {
        let c = with_combined(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything-mine\", \"everything\"]\n",
        )
        .unwrap();
        let g = &c.gateways[0];
        assert_eq!(g.combined[0].name, "both");
        assert_eq!(g.combined[0].assignments, ["everything-mine", "everything"]);
        assert_eq!(g.endpoint_path("both"), "/mcp/both");
        assert!(with_combined("").unwrap().gateways[0].combined.is_empty());
    }

    #[test]
    fn combined_endpoint_rules_are_named() {
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"nope\"]\n",
        );
        assert!(
            err.contains("combined 'both': no assignment 'nope'"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"other\"]\n",
        );
        assert!(
            err.contains("'other' is of server 'other' but 'everything' is of server 'everything'"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\"]\n",
        );
        assert!(err.contains("needs at least two"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything\"]\n",
        );
        assert!(err.contains("'everything' is named twice"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"a/b\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(err.contains("one non-empty path segment"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(err.contains("one non-empty path segment"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"other\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(
            err.contains("combined 'other': the name is already published"),
            "{err}"
        );
        let twice = "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything-mine\"]\n";
        let err = combined_error(&format!("{twice}{twice}"));
        assert!(
            err.contains("combined 'both': the name is already published"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything-mine\"]\nextra = 1\n",
        );
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn bad_header_name_is_refused() {
        let text = SAMPLE.replace("header = \"authorization\"", "header = \"bad header\"");
        assert!(Config::parse(&text).is_err());
    }
}
