//! In-band consent: when a per-user server has no usable identity for the
//! caller, the answer that sends the person to the connect page, in the
//! form the client's MCP version and capabilities understand, and the
//! consent request it points at.

use serde::{Deserialize, Serialize};

/// A consent request handed to a client, stored under
/// `Store::consent_key(id)` until it expires. The connect link carries only
/// `id` (random, no personal data, not a credential): opening it still
/// needs signing in, and only the person in `user` can complete it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub id: String,
    /// Who asked: the signed-in person must be this user.
    pub user: String,
    pub gateway: String,
    /// The server that needs an identity (the connect page also offers the
    /// gateway's other per-user servers that still need one).
    pub server: String,
    pub assignment: String,
    /// The agent that made the call, if one was recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    /// Set by the connect page once the user has an identity for `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}
