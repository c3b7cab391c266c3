//! `latchkey`: the authorization service (`serve`) and the operator CLI.

mod admin_client;
mod envoy_config;
mod grpc_tls;
mod istio;
mod policy_tool;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use latchkey_proto::admin::admin_server::AdminServer;
use latchkey_proto::auth::authorization_server::AuthorizationServer;
use latchkey_proto::elicitation::elicitations_server::ElicitationsServer;

use crate::admin_client::{
    AdminArgs, AgentCommand, ConnectionCommand, IdentityCommand, KeysCommand, UserCommand,
};
use crate::envoy_config::{AuthzMode, DownstreamTls, RenderOptions};
use crate::grpc_tls::ListenerSecurity;
use latchkey_check::authn;
use latchkey_check::reload::PolicySource;
use latchkey_control::{admin, http, state};
use latchkey_core::config::Config;
use latchkey_core::identity::{Availability, IdentitySecret};
use latchkey_core::metrics::Metrics;
use latchkey_core::policy::Policy;
use latchkey_core::routing;
use latchkey_core::vault::{KeyRing, Secret};
use latchkey_filter::visibility::ItemKind;
use latchkey_store::audit_read::{self, AuditCommand, AuditReader};
use latchkey_store::audit_writer::AuditWriter;
use latchkey_store::credentials::{Credentials, NewIdentity, TokenMeta};
use latchkey_store::redis_backend::Topology;
use latchkey_store::store::Store;

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "The identity layer for MCP traffic in Envoy"
)]
struct Cli {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC Check service and the HTTP side.
    Serve {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
    /// Identities: credentials for upstream servers.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Users: deactivate and reactivate.
    #[command(subcommand)]
    User(UserCommand),
    /// Connections: which identity a user uses for each per-user server of a gateway.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Agents: disable and enable.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Master keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Who the admin API thinks you are, and your capabilities.
    Whoami,
    /// Envoy configuration.
    #[command(subcommand)]
    Envoy(EnvoyCommand),
    /// Tool-level policy in a config file: check a call, lint the rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail: decisions and changes, read from Redis.
    #[command(subcommand)]
    Audit(AuditCommand),
}

// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PolicyCommand {
    /// Judge one call as the gateway would and name the rule that decided.
    Check {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// The user (`sub` of their token).
        #[arg(long)]
        user: String,
        /// A value of the user's `groups`/`roles` claim; repeat for several.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// The agent acting for the user (the token's `client_id`).
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        gateway: String,
        /// The server assignment or combined endpoint (the last path
        /// segment of its URL).
        #[arg(long, alias = "assignment")]
        server: String,
        #[arg(long, group = "item")]
        tool: Option<String>,
        #[arg(long, group = "item")]
        prompt: Option<String>,
        /// A resource URI.
        #[arg(long, group = "item")]
        resource: Option<String>,
        /// The tool call's arguments, as JSON.
        #[arg(long)]
        args: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Report rules that can never match or are hidden by a deny; with
    /// --probe, also tool patterns no upstream lists.
    Lint {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// List each upstream's tools (no credential is sent) to compare.
        #[arg(long)]
        probe: bool,
    },
}

#[derive(Subcommand)]
enum EnvoyCommand {
    /// Print an Envoy bootstrap (YAML) for this config.
    Render {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        #[arg(long, value_enum, default_value = "wasm")]
        mode: AuthzMode,
        #[arg(
            long,
            default_value = "target/wasm32-wasip1/release/latchkey_filter.wasm"
        )]
        wasm: String,
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: u64,
        #[arg(long, default_value_t = 2000)]
        authz_timeout_ms: u64,
        /// A `latchkey serve` replica's gRPC address; repeat for several
        /// (balanced round-robin). Defaults to the config's `listen.grpc`.
        #[arg(long = "authz")]
        authz_endpoints: Vec<SocketAddr>,
        /// Serve the listener over TLS with this certificate chain (PEM).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<String>,
        /// The private key of `--tls-cert` (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<String>,
        /// Require client certificates issued by this CA (PEM): mTLS, and
        /// the client's URI SAN (SPIFFE ID) identifies the agent.
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<String>,
        /// The CA bundle (PEM) `https` upstreams must chain to, unless a
        /// server sets its own `ca_file`.
        #[arg(long, default_value = envoy_config::DEFAULT_UPSTREAM_CA)]
        upstream_ca: String,
        /// The authorization service's cluster name (e.g. the Istio-style
        /// `outbound|9191||latchkey.latchkey.svc.cluster.local`).
        #[arg(long, default_value = envoy_config::DEFAULT_AUTHZ_CLUSTER)]
        authz_cluster: String,
        /// The `:authority` of the Check calls (e.g. the Service's host).
        #[arg(long, default_value = envoy_config::DEFAULT_AUTHZ_AUTHORITY)]
        authz_authority: String,
        /// Call the authorization service over mTLS (its `[listen.grpc_tls]`):
        /// the CA (PEM) its certificate must chain to.
        #[arg(long, requires_all = ["authz_cert", "authz_key", "authz_name"])]
        authz_ca: Option<String>,
        /// Envoy's client certificate chain (PEM) for the authorization
        /// service, issued by the CA that is its `client_ca`.
        #[arg(long, requires = "authz_ca")]
        authz_cert: Option<String>,
        /// The private key of `--authz-cert` (PEM).
        #[arg(long, requires = "authz_ca")]
        authz_key: Option<String>,
        /// The name the service's certificate must carry (DNS SAN, also sent
        /// as SNI; or an IP address SAN).
        #[arg(long, requires = "authz_ca")]
        authz_name: Option<String>,
    },
    /// Print the Istio resources (YAML) that run Latchkey on an Istio gateway.
    Istio {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// `wasm`: the Latchkey filter (EnvoyFilter); `native`: Envoy's
        /// ext_authz (AuthorizationPolicy CUSTOM + a mesh config provider).
        #[arg(long, value_enum, default_value = "wasm")]
        mode: AuthzMode,
        /// The namespace of the gateway workload (the resources go there).
        #[arg(long, default_value = "istio-system")]
        namespace: String,
        /// A label of the gateway workload, `key=value`; repeat for several.
        #[arg(long = "selector", value_parser = label, default_value = "istio=ingressgateway")]
        selector: Vec<(String, String)>,
        /// The Istio Gateway resource the routes bind to (`namespace/name`).
        #[arg(long, default_value = "istio-system/ingressgateway")]
        gateway: String,
        /// Latchkey's Kubernetes Service host.
        #[arg(long, default_value = "latchkey.latchkey.svc.cluster.local")]
        service_host: String,
        /// Latchkey's gRPC port on that Service (default: the config's `listen.grpc` port).
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Latchkey's HTTP port on that Service (default: the config's `listen.http` port).
        #[arg(long)]
        http_port: Option<u16>,
        /// Where the istio-agent downloads the filter (`https://…/latchkey_filter.wasm`).
        #[arg(long, required_if_eq("mode", "wasm"), default_value = "")]
        wasm_url: String,
        /// The filter file published at `--wasm-url`: its SHA-256 goes in the
        /// manifest, so the agent loads those bytes and no others.
        #[arg(
            long,
            default_value = "target/wasm32-wasip1/release/latchkey_filter.wasm"
        )]
        wasm: PathBuf,
        /// The SHA-256 (hex) of the file at `--wasm-url`, instead of reading `--wasm`.
        #[arg(long)]
        wasm_sha256: Option<String>,
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: u64,
        #[arg(long, default_value_t = 2000)]
        authz_timeout_ms: u64,
        /// A CA bundle path in the gateway pod that `https` servers must chain
        /// to, unless a server sets `ca_file` (default: Istio's roots).
        #[arg(long)]
        upstream_ca: Option<String>,
        /// A label of Latchkey's own pods, `key=value` (what the
        /// PeerAuthentication and the gRPC port's AuthorizationPolicy select);
        /// repeat for several.
        #[arg(long = "service-selector", value_parser = label, default_value = "app=latchkey")]
        service_selector: Vec<(String, String)>,
        /// The mesh principal of the gateway workload, the only caller of
        /// Latchkey's gRPC port (default: the ingress gateway's service
        /// account in `--namespace`); repeat for several.
        #[arg(long = "gateway-principal")]
        gateway_principals: Vec<String>,
    },
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not a label: write key=value"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
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
        Command::Identity(IdentityCommand::PutShared {
            config,
            id,
            server,
            owner,
        }) => {
            let config = Config::load(&config)?;
            if config.server(&server).is_none() {
                bail!(
                    "unknown server '{server}': declare it under [[servers]] in the config first"
                );
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the secret from stdin")?;
            let secret = line.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                bail!(
                    "no secret on standard input: pipe it in, e.g. `printf %s \"$TOKEN\" | latchkey identity put-shared ...`"
                );
            }
            let secret = IdentitySecret::Static {
                value: Secret::new(secret),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let credentials = open_credentials(&config).await?;
                    let record = credentials
                        .put_identity(NewIdentity {
                            actor: &format!("{owner} (offline put-shared)"),
                            id: &id,
                            server: &server,
                            owner: &owner,
                            availability: Availability::Global,
                            secret: &secret,
                            replace: true,
                            meta: TokenMeta::default(),
                        })
                        .await?;
                    println!(
                        "stored identity '{}' for server '{}' (version {}, key {})",
                        record.id, record.server, record.version, record.sealed.key_id
                    );
                    // Running replicas may have cached the old secret (or its absence).
                    let settled = latchkey_store::settle::settle(
                        &credentials.store,
                        latchkey_store::settle::SETTLE_WITHIN,
                    )
                    .await
                    .unwrap_or_else(|e| latchkey_store::settle::Settled::Unknown(e.to_string()));
                    if let Some(warning) = settled.warning() {
                        eprintln!("warning: {warning}");
                    }
                    anyhow::Ok(())
                })
        }
        Command::Policy(PolicyCommand::Check {
            config,
            user,
            roles,
            agent,
            gateway,
            server,
            tool,
            prompt,
            resource,
            args,
            json,
        }) => {
            let (config, policy) = policy_tool::load(&config)?;
            let (kind, name) = match (tool, prompt, resource) {
                (Some(t), _, _) => (ItemKind::Tool, t),
                (_, Some(p), _) => (ItemKind::Prompt, p),
                (_, _, Some(r)) => (ItemKind::Resource, r),
                _ => bail!("name what to check: --tool, --prompt or --resource"),
            };
            let arguments = match args {
                Some(a) => Some(
                    serde_json::from_str::<serde_json::Value>(&a)
                        .context("--args must be a JSON object, e.g. '{\"repo\":\"acme/api\"}'")?,
                ),
                None => None,
            };
            let outcome = policy_tool::check(
                &config,
                &policy,
                &policy_tool::CheckQuery {
                    user: &user,
                    roles: &roles,
                    agent: agent.as_deref(),
                    gateway: &gateway,
                    assignment: &server,
                    kind,
                    name: &name,
                    arguments: arguments.as_ref(),
                },
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"decision": outcome.decision, "reason": outcome.reason})
                );
            } else {
                println!("{}: {}", outcome.decision, outcome.reason);
            }
            Ok(())
        }
        Command::Policy(PolicyCommand::Lint { config, probe }) => {
            let (config, policy) = policy_tool::load(&config)?;
            let findings = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(policy_tool::lint(&config, &policy, probe));
            if findings.is_empty() {
                println!("no findings");
                return Ok(());
            }
            for f in &findings {
                println!("{f}");
            }
            // Non-zero so that CI can gate on a clean policy.
            std::process::exit(1)
        }
        Command::Keys(KeysCommand::Generate { id }) => {
            println!("{}", KeyRing::generate_line(&id));
            Ok(())
        }
        Command::Identity(c) => admin_call(admin_client::identity(&cli.admin, c)),
        Command::User(c) => admin_call(admin_client::user(&cli.admin, c)),
        Command::Connection(c) => admin_call(admin_client::connection(&cli.admin, c)),
        Command::Agent(c) => admin_call(admin_client::agent(&cli.admin, c)),
        Command::Keys(c) => admin_call(admin_client::keys(&cli.admin, c)),
        Command::Whoami => admin_call(admin_client::whoami(&cli.admin)),
        Command::Audit(c) => audit(c, cli.admin.json),
        Command::Envoy(EnvoyCommand::Render {
            config,
            listen,
            admin,
            mode,
            wasm,
            max_body_bytes,
            authz_timeout_ms,
            authz_endpoints,
            tls_cert,
            tls_key,
            client_ca,
            upstream_ca,
            authz_cluster,
            authz_authority,
            authz_ca,
            authz_cert,
            authz_key,
            authz_name,
        }) => {
            let config = Config::load(&config)?;
            let authz_tls = match (authz_ca, authz_cert, authz_key, authz_name) {
                (Some(ca), Some(cert), Some(key), Some(name)) => Some(envoy_config::AuthzTls {
                    ca,
                    name,
                    cert,
                    key,
                }),
                _ => None,
            };
            let tls = tls_cert.zip(tls_key).map(|(cert, key)| DownstreamTls {
                cert,
                key,
                client_ca,
            });
            print!(
                "{}",
                envoy_config::render(
                    &config,
                    &RenderOptions {
                        listen,
                        admin,
                        mode,
                        wasm_path: wasm,
                        max_body_bytes,
                        authz_timeout_ms,
                        authz_endpoints,
                        tls,
                        upstream_ca,
                        authz_cluster,
                        authz_authority,
                        authz_tls,
                    }
                )
            );
            Ok(())
        }
        Command::Envoy(EnvoyCommand::Istio {
            config,
            mode,
            namespace,
            selector,
            gateway,
            service_host,
            grpc_port,
            http_port,
            wasm_url,
            wasm,
            wasm_sha256,
            max_body_bytes,
            authz_timeout_ms,
            upstream_ca,
            service_selector,
            gateway_principals,
        }) => {
            let config = Config::load(&config)?;
            if let Some(sum) = &wasm_sha256
                && (sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                anyhow::bail!("--wasm-sha256 '{sum}' is not a SHA-256 in hex (64 hex digits)");
            }
            let wasm_sha256 = if mode != AuthzMode::Wasm {
                None
            } else if wasm_sha256.is_some() {
                wasm_sha256
            } else {
                let bytes = std::fs::read(&wasm).with_context(|| {
                    format!(
                        "reading {} to pin its SHA-256 in the manifest: build it (cargo build --release -p latchkey-filter --target wasm32-wasip1) or name the published file with --wasm",
                        wasm.display()
                    )
                })?;
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
                Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
            };
            let gateway_principals = if gateway_principals.is_empty() {
                vec![crate::istio::IstioOptions::default_gateway_principal(
                    &namespace,
                )]
            } else {
                gateway_principals
            };
            let opts = crate::istio::IstioOptions {
                service_selector: service_selector.into_iter().collect(),
                gateway_principals,
                mode,
                namespace,
                selector: selector.into_iter().collect(),
                gateway,
                service_host,
                grpc_port: grpc_port.unwrap_or(config.listen.grpc.port()),
                http_port: http_port.unwrap_or(config.listen.http.port()),
                wasm_url,
                wasm_sha256,
                max_body_bytes,
                authz_timeout_ms,
                upstream_ca,
            };
            print!("{}", crate::istio::render_istio(&config, &opts));
            Ok(())
        }
    }
}

/// `latchkey audit query|tail`: straight from Redis, as the config names it.
fn audit(command: AuditCommand, json: bool) -> Result<()> {
    let config = Config::load(command.config())?;
    // A mistyped --since is said before Redis is asked anything.
    let since_ms = match &command {
        AuditCommand::Query {
            since: Some(since), ..
        } => Some(audit_read::parse_since(since, audit_read::now_ms())?),
        _ => None,
    };
    let run = async {
        let reader = AuditReader::connect(&config).await?;
        let mut out = std::io::stdout().lock();
        match command {
            AuditCommand::Query { filter, limit, .. } => {
                reader.query(&filter, since_ms, limit, json, &mut out).await
            }
            AuditCommand::Tail {
                filter,
                from_start,
                count,
                ..
            } => {
                reader
                    .tail(
                        &filter,
                        from_start,
                        count,
                        json,
                        &mut out,
                        &mut std::io::stderr(),
                    )
                    .await
            }
        }
    };
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run);
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if e.is_broken_pipe() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn admin_call(call: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(call)
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

async fn open_credentials(config: &Config) -> Result<Credentials> {
    let keys = KeyRing::from_config(&config.vault)?;
    tracing::debug!(active_key = keys.active_id(), "master keys loaded");
    let store = Store::open(config, Duration::ZERO).await.with_context(|| {
        format!(
            "connecting to Redis at {}",
            Topology::from_config(&config.redis).describe()
        )
    })?;
    Ok(Credentials::new(
        store,
        keys,
        Duration::from_secs(config.vault.cache_ttl_secs),
    ))
}

async fn serve(config: Config, policy: Arc<PolicySource>) -> Result<()> {
    // Before anything else: a listener that would hand credentials to
    // unauthenticated callers is refused, not started.
    let grpc_security = ListenerSecurity::from_listen(&config.listen)?;
    let credentials = open_credentials(&config).await?;
    let replica_id = format!("{}-{}", std::process::id(), latchkey_core::hex::random(4));
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
    let metrics = Metrics::new();
    let refresher = latchkey_check::refresh::Refresher::new(
        providers.clone(),
        config.connect.as_ref(),
        metrics.refreshes(),
    );
    let state = Arc::new(state::AppState {
        providers,
        client_capabilities: Default::default(),
        refresher,
        announced: Default::default(),
        config: Arc::new(config),
        routes: Arc::new(routes),
        verifier: Arc::new(verifier),
        credentials,
        policy,
        audit,
        metrics: Arc::new(metrics),
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
            axum::serve(listener, http::metrics_router(state.clone()))
                .with_graceful_shutdown(shutdown_signal()),
        )
    });
    let http = axum::serve(listener, http::router(state)).with_graceful_shutdown(shutdown_signal());
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
async fn announce(state: Arc<state::AppState>, replica_id: String) {
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

/// The command line as an operator types it: what parses, and what is
/// refused before anything runs (naming the flag that is missing).
#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("latchkey").chain(line.split_whitespace()))
    }

    fn refused(line: &str) -> String {
        match parse(line) {
            Ok(_) => panic!("accepted: latchkey {line}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn envoy_render_takes_the_authz_mtls_flags_all_together_or_not_at_all() {
        let all = "envoy render --config c.toml --authz-ca ca.pem --authz-cert envoy.pem --authz-key envoy.key --authz-name latchkey.internal";
        let Command::Envoy(EnvoyCommand::Render {
            authz_ca,
            authz_name,
            mode,
            ..
        }) = parse(all).unwrap().command
        else {
            panic!("not envoy render");
        };
        assert_eq!(authz_ca.as_deref(), Some("ca.pem"));
        assert_eq!(authz_name.as_deref(), Some("latchkey.internal"));
        assert_eq!(mode, AuthzMode::Wasm);
        for missing in [
            "--authz-cert envoy.pem",
            "--authz-key envoy.key",
            "--authz-name latchkey.internal",
        ] {
            let line = all.replace(missing, "");
            let error = refused(&line);
            let flag = missing.split(' ').next().unwrap();
            assert!(error.contains(flag), "{line}: {error}");
        }
        // A client certificate without the CA that checks the service.
        let error = refused("envoy render --config c.toml --authz-cert envoy.pem");
        assert!(error.contains("--authz-ca"), "{error}");
    }

    #[test]
    fn envoy_render_takes_a_listener_key_only_with_its_certificate() {
        assert!(refused("envoy render --config c.toml --tls-key k.pem").contains("--tls-cert"));
        assert!(refused("envoy render --config c.toml --client-ca ca.pem").contains("--tls-cert"));
        assert!(parse("envoy render --config c.toml --tls-cert c.pem --tls-key k.pem").is_ok());
        let error = refused("envoy render --config c.toml --mode grpc");
        assert!(
            error.contains("wasm") && error.contains("native"),
            "{error}"
        );
    }

    #[test]
    fn envoy_istio_needs_a_wasm_url_only_for_the_filter() {
        let error = refused("envoy istio --config c.toml --mode wasm");
        assert!(error.contains("--wasm-url"), "{error}");
        assert!(parse("envoy istio --config c.toml --mode native").is_ok());
        let Command::Envoy(EnvoyCommand::Istio { selector, .. }) = parse(
            "envoy istio --config c.toml --mode native --selector app=gw --selector tier=edge",
        )
        .unwrap()
        .command
        else {
            panic!("not envoy istio");
        };
        assert_eq!(
            selector,
            [("app".into(), "gw".into()), ("tier".into(), "edge".into())]
        );
        let error = refused("envoy istio --config c.toml --mode native --selector appgw");
        assert!(
            error.contains("'appgw' is not a label: write key=value"),
            "{error}"
        );
    }

    #[test]
    fn labels_are_key_equals_value_with_a_key() {
        assert_eq!(label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(label("a="), Ok(("a".into(), String::new())));
        assert!(label("=b").is_err());
        assert!(label("ab").is_err());
    }

    #[test]
    fn policy_check_judges_one_item_at_a_time() {
        let base = "policy check --config c.toml --user alice --gateway g --server s";
        assert!(parse(&format!("{base} --tool echo --role dev --role ops")).is_ok());
        let e = parse(&format!("{base} --tool echo --prompt p"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{e}");
        // `--assignment` is the same flag as `--server`.
        assert!(parse("policy check --config c.toml --user a --gateway g --assignment s").is_ok());
        assert!(refused("policy check --config c.toml --gateway g --server s").contains("--user"));
    }

    #[test]
    fn an_unknown_command_or_flag_is_refused_with_a_suggestion() {
        let error = refused("identty list");
        assert!(error.contains("identity"), "{error}");
        let error = refused("serve --confg c.toml");
        assert!(error.contains("--config"), "{error}");
    }
}
