//! `[listen]`: the gRPC (Check) and HTTP listeners, and the gRPC
//! listener's mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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

impl Listen {
    /// What can be told from the file alone; whether the gRPC listener may
    /// run without TLS on its address is `latchkey serve`'s to refuse
    /// (`grpc_tls::ListenerSecurity`), so that the CLI commands sharing
    /// this file keep working.
    pub(super) fn validate(&self) -> Result<(), String> {
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
