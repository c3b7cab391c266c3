//! Who a request is from, as plain data: the caller a verified token
//! establishes (`authn`) and the agent recognised behind it (`agents`).
//! Both of those modules, `policy` and the audit trail read it; it imports
//! nothing of theirs, so token verification and agent recognition need not
//! know each other.

/// Where an agent was recognised from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSource {
    Mtls,
    ClientId,
    Actor,
}

impl AgentSource {
    pub fn name(self) -> &'static str {
        match self {
            AgentSource::Mtls => "mtls",
            AgentSource::ClientId => "client_id",
            AgentSource::Actor => "act",
        }
    }

    /// For messages: "mTLS peer identity", ...
    pub fn describe(self) -> &'static str {
        match self {
            AgentSource::Mtls => "mTLS peer identity",
            AgentSource::ClientId => "token's client_id",
            AgentSource::Actor => "token's act claim",
        }
    }
}

/// The caller, as established from a verified token (and, once
/// `agents` has looked, the agent behind it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    /// The OAuth client the token was issued to (`client_id`, else `azp`).
    pub client_id: Option<String>,
    /// Values of the token's `groups` and `roles` claims (for policy).
    pub roles: Vec<String>,
    /// The RFC 8693 delegation chain: the `sub` (else `client_id`) of the
    /// token's `act` claim, then of each nested `act`, current actor first.
    pub actors: Vec<String>,
    /// The agent acting, by its provisioned name (set by `agents`).
    pub agent: Option<String>,
    pub agent_source: Option<AgentSource>,
    /// The agent acts for nobody: `subject` is the agent itself.
    pub headless: bool,
    /// The token's scopes (`scope`, space-separated, or an `scp` list), for
    /// grants that require scopes per tool.
    pub scopes: Vec<String>,
    /// How the person signed in (`acr`) and when (`auth_time`, Unix
    /// seconds), for step-up rules (RFC 9470).
    pub acr: Option<String>,
    pub auth_time: Option<u64>,
    /// Every claim of the token, for conditions (`claims.department`). The
    /// identity provider signed them; their size is bounded by the token's.
    pub claims: std::sync::Arc<serde_json::Map<String, serde_json::Value>>,
}
