//! What the running service shares between its gRPC and HTTP sides.

use crate::authn::TokenVerifier;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::reload::PolicySource;
use crate::routing::RouteTable;

pub struct AppState {
    pub config: Config,
    pub routes: RouteTable,
    pub verifier: TokenVerifier,
    pub credentials: Credentials,
    pub policy: std::sync::Arc<PolicySource>,
    pub audit: std::sync::Arc<crate::audit_writer::AuditWriter>,
    pub metrics: crate::metrics::Metrics,
    /// OAuth clients of the per-user servers' providers.
    pub providers: crate::oauth::Providers,
    /// Client capabilities this replica already wrote to Redis.
    pub client_capabilities: crate::consent::CapabilityMemory,
    /// Refreshes per-user access tokens before they expire.
    pub refresher: crate::refresh::Refresher,
    /// This replica is in the registry: key rotation checks it holds the
    /// key, and changes wait for its confirmation (`/readyz` waits for it).
    pub announced: std::sync::atomic::AtomicBool,
}
