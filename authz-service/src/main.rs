//! `latchkey`: the authorization service (`serve`) and the operator CLI.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use latchkey_proto::auth::authorization_server::AuthorizationServer;

use latchkey_authz::config::Config;
use latchkey_authz::envoy_config::{self, AuthzMode, RenderOptions};
use latchkey_authz::vault::{KeyRing, Secret, Vault};
use latchkey_authz::{authn, check, http, routing, state};

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "The identity layer for MCP traffic in Envoy"
)]
struct Cli {
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
    /// Manage identities (credentials for upstream servers).
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Master keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Envoy configuration.
    #[command(subcommand)]
    Envoy(EnvoyCommand),
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Store (or replace) a global identity's secret for a shared assignment.
    /// The secret is read from standard input, never from the command line.
    PutShared {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// Identity id, as named by the assignment's `identity`.
        #[arg(long)]
        id: String,
        /// The server the identity authenticates to.
        #[arg(long)]
        server: String,
        /// Who is recorded as the creator.
        #[arg(long, default_value = "operator")]
        owner: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key line (`key-id:base64`) for a key file.
    Generate {
        #[arg(long, default_value = "k1")]
        id: String,
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
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_tracing();
            let config = Config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
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
            let secret = Secret::new(secret);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let vault = open_vault(&config).await?;
                    let record = vault.put_global(&id, &server, &owner, &secret).await?;
                    println!(
                        "stored identity '{}' for server '{}' (version {}, key {})",
                        record.id, record.server, record.version, record.sealed.key_id
                    );
                    anyhow::Ok(())
                })
        }
        Command::Keys(KeysCommand::Generate { id }) => {
            println!("{}", KeyRing::generate_line(&id));
            Ok(())
        }
        Command::Envoy(EnvoyCommand::Render {
            config,
            listen,
            admin,
            mode,
            wasm,
            max_body_bytes,
            authz_timeout_ms,
        }) => {
            let config = Config::load(&config)?;
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
                        authz_timeout_ms
                    }
                )
            );
            Ok(())
        }
    }
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

async fn open_vault(config: &Config) -> Result<Vault> {
    let keys = KeyRing::from_config(&config.vault)?;
    tracing::debug!(active_key = keys.active_id(), "master keys loaded");
    Vault::connect(
        keys,
        &config.redis.url,
        &config.redis.key_prefix,
        Duration::from_secs(config.vault.cache_ttl_secs),
    )
    .await
    .with_context(|| format!("connecting to Redis at {}", redacted_url(&config.redis.url)))
}

/// A Redis URL without its password, for error messages.
fn redacted_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable redis url>".into(),
    }
}

async fn serve(config: Config) -> Result<()> {
    let vault = open_vault(&config).await?;
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
    let state = Arc::new(state::AppState {
        config,
        routes,
        verifier,
        vault,
    });

    let grpc = tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(check::CheckService {
            state: state.clone(),
        }))
        .serve_with_shutdown(grpc_addr, shutdown_signal());
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP side to {http_addr}"))?;
    let http = axum::serve(listener, http::router(state)).with_graceful_shutdown(shutdown_signal());
    tracing::info!(%grpc_addr, %http_addr, "latchkey serving");
    tokio::try_join!(
        async {
            grpc.await
                .with_context(|| format!("gRPC server on {grpc_addr}"))
        },
        async {
            http.await
                .with_context(|| format!("HTTP server on {http_addr}"))
        },
    )?;
    Ok(())
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
