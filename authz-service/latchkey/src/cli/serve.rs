//! `latchkey serve`: the gRPC Check service (and the filter's Elicitations),
//! the admin API and the HTTP side, wired from one config file. The pieces
//! live in their layers (`latchkey-check`, `latchkey-control`); this file
//! only opens them in order and runs them until a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_check::authn;
use latchkey_check::reload::PolicySource;
use latchkey_control::{admin, http_listener, shared};
use latchkey_core::config::Config;
use latchkey_core::metrics::Metrics;
use latchkey_core::policy::Policy;
use latchkey_core::routing;
use latchkey_proto::admin::admin_server::AdminServer;
use latchkey_proto::auth::authorization_server::AuthorizationServer;
use latchkey_proto::elicitation::elicitations_server::ElicitationsServer;
use latchkey_store::audit_writer::AuditWriter;

use super::open_credentials;
use crate::grpc_tls::ListenerSecurity;

pub fn run(config: PathBuf) -> Result<()> {
    init_tracing();
    let path = config;
    let config = Config::load(&path)?;
    let text = std::fs::read_to_string(&path)?;
    let policy = Policy::compile(&config, &text)
        .with_context(|| format!("config file {}", path.display()))?;
    if !policy.is_enforced() {
        tracing::warn!(
            "no [policy] in the config: every authenticated caller sees and may call every tool"
        );
    }
    let policy = Arc::new(PolicySource::watched(policy, path));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config, policy))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_env("LATCHKEY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_current_span(false)
        .init();
}

async fn serve(config: Config, policy: Arc<PolicySource>) -> Result<()> {
    // Before anything else: a listener that would hand credentials to
    // unauthenticated callers is refused, not started.
    let grpc_security = ListenerSecurity::from_listen(&config.listen)?;
    let credentials = open_credentials(&config).await?;
    let replica_id = format!("{}-{}", std::process::id(), latchkey_core::hex::random(4));
    // Agents onboarded by approval are compiled into the policy when the
    // subscription starts (so before the replica is ready) and whenever
    // one changes.
    credentials.cache.on_change(
        credentials.store.onboarded_agent_prefix(),
        policy.onboarded_hook(credentials.store.clone(), config.clone()),
    );
    // Invalidations first: readiness waits for the subscription, so no
    // Check is answered from a cache that could miss a change.
    tokio::spawn(
        credentials
            .cache
            .clone()
            .listen(credentials.store.clone(), replica_id.clone()),
    );
    let verifier = authn::TokenVerifier::new(&config.identity_provider);
    match verifier.refresh().await {
        Ok(n) => {
            tracing::info!(keys = n, issuer = %verifier.issuer(), "identity provider keys loaded")
        }
        // Not fatal: every Check fails closed until the keys can be fetched.
        Err(e) => tracing::warn!(error = %e, "identity provider keys not loaded yet"),
    }
    let routes = routing::RouteTable::build(&config);
    let grpc_addr = config.listen.grpc;
    let http_addr = config.listen.http;
    let admin_addr = config.admin.listen;
    tokio::spawn(
        policy
            .clone()
            .watch(config.clone(), std::time::Duration::from_secs(1)),
    );
    if let Some(otlp) = &config.audit.otlp {
        let exporter = latchkey_store::otlp::OtlpAudit::start(otlp, &replica_id)?;
        if latchkey_store::otlp::install(exporter).is_err() {
            anyhow::bail!("the OTLP audit exporter was set up twice");
        }
        tracing::info!(collector = %otlp, "audit events are also exported over OTLP");
    }
    let audit = AuditWriter::start(
        credentials.store.clone(),
        replica_id.clone(),
        config.audit.queue_events,
    );
    let providers = latchkey_check::oauth::Providers::from_config(&config)?;
    let metrics = Arc::new(Metrics::new());
    let alerts = match &config.alerts {
        Some(a) => {
            let sender =
                latchkey_check::alerts::AlertSender::start(a, replica_id.clone(), metrics.clone())?;
            tracing::info!(
                webhook_host = a.webhook_url.host_str().unwrap_or(""),
                "refusals worth attention are also sent to the alert webhook"
            );
            Some(sender)
        }
        None => None,
    };
    let refresher = latchkey_check::refresh::Refresher::new(
        providers.clone(),
        config.connect.as_ref(),
        metrics.refreshes(),
    )
    .with_exchangers(latchkey_check::exchange::Exchangers::from_config(&config)?);
    let state = Arc::new(shared::ControlState {
        providers,
        client_capabilities: Default::default(),
        tool_annotations: Default::default(),
        refresher,
        announced: Default::default(),
        alerts,
        sightings: Some(latchkey_check::onboarding::SightingRecorder::start(
            credentials.store.clone(),
        )),
        config: Arc::new(config),
        routes: Arc::new(routes),
        verifier: Arc::new(verifier),
        credentials,
        policy,
        audit,
        metrics,
    });
    tokio::spawn(announce(state.clone(), replica_id.clone()));

    let callers = grpc_security.callers();
    let mut grpc = tonic::transport::Server::builder();
    if let ListenerSecurity::Mtls { tls, .. } = &grpc_security {
        grpc = grpc
            .tls_config((**tls).clone())
            .context("[listen.grpc_tls]: the certificate, key and client CA do not make a TLS configuration (does the key belong to the certificate?)")?;
    }
    grpc_security.log(grpc_addr);
    let grpc = grpc
        .add_service(AuthorizationServer::with_interceptor(
            state.check_service(),
            callers.clone(),
        ))
        .add_service(ElicitationsServer::with_interceptor(
            latchkey_check::elicitation::ElicitationService {
                store: state.credentials.store.clone(),
            },
            callers,
        ))
        .serve_with_shutdown(grpc_addr, shutdown_signal());
    let admin_grpc = tonic::transport::Server::builder()
        .add_service(AdminServer::new(admin::AdminService {
            state: state.clone(),
        }))
        .serve_with_shutdown(admin_addr, shutdown_signal());
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP side to {http_addr}"))?;
    let store = state.credentials.store.clone();
    let metrics_listener = match state.config.listen.metrics {
        Some(addr) => Some((
            addr,
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener to {addr}"))?,
        )),
        None => None,
    };
    let metrics = metrics_listener.map(|(addr, listener)| {
        (
            addr,
            axum::serve(listener, http_listener::metrics_router(state.clone()))
                .with_graceful_shutdown(shutdown_signal()),
        )
    });
    let http = axum::serve(listener, http_listener::router(state)?)
        .with_graceful_shutdown(shutdown_signal());
    tracing::info!(%grpc_addr, %http_addr, %admin_addr, replica = %replica_id, "latchkey serving");
    tokio::try_join!(
        async {
            grpc.await
                .with_context(|| format!("gRPC server on {grpc_addr}"))
        },
        async {
            http.await
                .with_context(|| format!("HTTP server on {http_addr}"))
        },
        async {
            admin_grpc
                .await
                .with_context(|| format!("admin gRPC server on {admin_addr}"))
        },
        async {
            match metrics {
                Some((addr, server)) => server
                    .await
                    .with_context(|| format!("metrics listener on {addr}")),
                None => Ok(()),
            }
        },
    )?;
    // Changes made after this need not wait for this replica to confirm them.
    if let Err(e) = store.withdraw(&replica_id).await {
        tracing::warn!(error = %e, "cannot withdraw this replica from the registry");
    }
    latchkey_store::otlp::flush();
    Ok(())
}

/// Tells the other replicas which keys this one holds (for key rotation).
async fn announce(state: Arc<shared::ControlState>, replica_id: String) {
    let credentials = &state.credentials;
    let info = latchkey_store::store::ReplicaInfo {
        id: replica_id,
        pid: std::process::id(),
        key_ids: credentials.keys.key_ids().map(str::to_string).collect(),
        started_at: latchkey_core::identity::now_rfc3339(),
    };
    let every = Duration::from_secs(10);
    // Announced only once it hears invalidations: a change waits for the
    // confirmation of every announced replica, which takes a subscription.
    while !credentials.cache.subscribed() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        match credentials.store.announce(&info, every * 3).await {
            Ok(()) => state
                .announced
                .store(true, std::sync::atomic::Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "cannot announce this replica to the others"),
        }
        tokio::time::sleep(every).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
