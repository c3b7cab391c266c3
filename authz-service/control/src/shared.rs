//! What the running service shares between its control-plane sides (the
//! admin API, the connect page, the HTTP side). The request path does not
//! hold it: `check_service` hands the gRPC Check the parts it reads.

use std::sync::Arc;

use latchkey_check::authn::TokenVerifier;
use latchkey_check::reload::PolicySource;
use latchkey_check::service::CheckService;
use latchkey_core::config::Config;
use latchkey_core::routing::RouteTable;
use latchkey_store::credentials::Credentials;

pub struct ControlState {
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    pub verifier: Arc<TokenVerifier>,
    pub credentials: Credentials,
    pub policy: Arc<PolicySource>,
    pub audit: Arc<latchkey_store::audit_writer::AuditWriter>,
    pub metrics: Arc<latchkey_core::metrics::Metrics>,
    /// OAuth clients of the per-user servers' providers.
    pub providers: latchkey_check::oauth::Providers,
    /// Client capabilities this replica already wrote to Redis.
    pub client_capabilities: latchkey_check::consent::CapabilityMemory,
    /// Trusted servers' tool annotations, read for approval rules.
    pub tool_annotations: latchkey_check::upstream_tools::ToolAnnotations,
    /// Refreshes per-user access tokens before they expire.
    pub refresher: latchkey_check::refresh::Refresher,
    /// This replica is in the registry: key rotation checks it holds the
    /// key, and changes wait for its confirmation (`/readyz` waits for it).
    pub announced: std::sync::atomic::AtomicBool,
    /// Records agents refused on gateways with `unknown_agents = "request"`.
    pub sightings: Option<latchkey_check::onboarding::SightingRecorder>,
    /// The `[alerts]` webhook, when configured.
    pub alerts: Option<latchkey_check::alerts::AlertSender>,
}

impl ControlState {
    /// The gRPC Check service over the same parts (shared, not copied).
    pub fn check_service(&self) -> CheckService {
        CheckService {
            config: self.config.clone(),
            routes: self.routes.clone(),
            policy: self.policy.clone(),
            verifier: self.verifier.clone(),
            credentials: self.credentials.clone(),
            refresher: self.refresher.clone(),
            client_capabilities: self.client_capabilities.clone(),
            tool_annotations: self.tool_annotations.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            sightings: self.sightings.clone(),
            alerts: self.alerts.clone(),
        }
    }
}
