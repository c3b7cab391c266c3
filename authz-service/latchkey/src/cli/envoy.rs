//! `latchkey envoy render` (an Envoy bootstrap) and `latchkey envoy istio`
//! (Istio resources): the flags, checked, handed to `crate::render`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use latchkey_core::config::Config;

use crate::render::envoy::{self as envoy_config, AuthzMode, DownstreamTls, RenderOptions};
use crate::render::istio;

#[derive(Subcommand)]
pub enum EnvoyCommand {
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

pub(super) fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not a label: write key=value"))
}

pub fn run(command: EnvoyCommand) -> Result<()> {
    match command {
        EnvoyCommand::Render {
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
        } => {
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
        EnvoyCommand::Istio {
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
        } => {
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
                vec![istio::IstioOptions::default_gateway_principal(&namespace)]
            } else {
                gateway_principals
            };
            let opts = istio::IstioOptions {
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
            print!("{}", istio::render_istio(&config, &opts));
            Ok(())
        }
    }
}
