//! Who may call the gRPC listener (`Authorization/Check` and
//! `Elicitations/Completed`). An allowed Check answers with the decrypted
//! downstream credential, and the service believes what the caller says
//! about the request: the peer's SPIFFE ID (`source.principal`, the agent),
//! the filter's `latchkey.mcp` metadata, its report of refused credentials.
//! So only the Envoys meant to call it may: with `[listen.grpc_tls]` the TLS
//! handshake requires a client certificate from `client_ca` (anyone else is
//! refused before a byte of gRPC), and `allowed_clients` narrows that to
//! named certificates, checked on every call. Without it the listener must
//! be on loopback (the host is the boundary) or explicitly
//! `grpc_insecure` (another layer, e.g. Istio's mesh mTLS and the
//! `AuthorizationPolicy` `latchkey envoy istio` renders, authenticates).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use latchkey_core::config::{GrpcTls, Listen};

/// A TLS handshake that has not finished by then is dropped: a client that
/// opens connections and sends nothing holds no task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why `latchkey serve` will not run the gRPC listener as configured.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "refusing to serve gRPC on {addr} without TLS: it is not a loopback address, and an allowed Check carries a decrypted credential to whoever asked. Either configure mTLS, so only your Envoys can call it: [listen.grpc_tls] cert, key and client_ca (the CA of the Envoys' client certificates; give Envoy its side with `latchkey envoy render --authz-ca … --authz-cert … --authz-key … --authz-name …`); or, only where something else authenticates every caller (Istio mesh mTLS with the PeerAuthentication and AuthorizationPolicy that `latchkey envoy istio` renders), set [listen] grpc_insecure = true"
    )]
    PlaintextNotLoopback { addr: SocketAddr },
    #[error("[listen.grpc_tls] {field} {}: {reason}", path.display())]
    File {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// How the gRPC listener authenticates its callers.
pub enum ListenerSecurity {
    /// mTLS: the handshake requires a certificate from the client CA.
    Mtls {
        tls: Box<ServerTlsConfig>,
        callers: AllowedCallers,
    },
    /// Plaintext on a loopback address: only processes on this host reach it.
    Loopback,
    /// Plaintext on a reachable address, as the operator asked (`grpc_insecure`).
    Insecure,
}

impl ListenerSecurity {
    /// Reads and checks `[listen]`'s gRPC settings (and the PEM files), or
    /// says why the listener must not start.
    pub fn from_listen(listen: &Listen) -> Result<Self, ListenerError> {
        match &listen.grpc_tls {
            Some(tls) => Self::mtls(tls),
            None if listen.grpc.ip().is_loopback() => Ok(Self::Loopback),
            None if listen.grpc_insecure => Ok(Self::Insecure),
            None => Err(ListenerError::PlaintextNotLoopback { addr: listen.grpc }),
        }
    }

    fn mtls(tls: &GrpcTls) -> Result<Self, ListenerError> {
        let cert = read_pem("cert", &tls.cert)?;
        if CertificateDer::pem_slice_iter(&cert)
            .next()
            .and_then(Result::ok)
            .is_none()
        {
            return Err(file_error(
                "cert",
                &tls.cert,
                "no PEM CERTIFICATE in it (the listener's certificate chain, leaf first)",
            ));
        }
        let key = read_pem("key", &tls.key)?;
        if let Err(e) = PrivateKeyDer::from_pem_slice(&key) {
            return Err(file_error(
                "key",
                &tls.key,
                &format!("no usable private key in it ({e}); PKCS#8, PKCS#1 or SEC1 PEM"),
            ));
        }
        let ca = read_pem("client_ca", &tls.client_ca)?;
        let cas = CertificateDer::pem_slice_iter(&ca).collect::<Result<Vec<_>, _>>();
        if !cas.is_ok_and(|c| !c.is_empty()) {
            return Err(file_error(
                "client_ca",
                &tls.client_ca,
                "no PEM CERTIFICATE in it (the CA that issued the Envoys' client certificates)",
            ));
        }
        // With a client CA root and client auth not optional, tonic's
        // rustls verifier refuses a handshake without a certificate that
        // chains to it.
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT);
        Ok(Self::Mtls {
            tls: Box::new(config),
            callers: AllowedCallers {
                names: tls.allowed_clients.clone().into(),
            },
        })
    }

    /// The per-call check for the gRPC services on this listener.
    pub fn callers(&self) -> AllowedCallers {
        match self {
            Self::Mtls { callers, .. } => callers.clone(),
            Self::Loopback | Self::Insecure => AllowedCallers::default(),
        }
    }

    /// Says at start how the listener is protected; loudly when it is not.
    pub fn log(&self, addr: SocketAddr) {
        match self {
            Self::Mtls { callers, .. } if callers.names.is_empty() => tracing::info!(
                %addr,
                "gRPC listener requires client certificates from [listen.grpc_tls] client_ca (any certificate that CA issued; set allowed_clients if it issues others)"
            ),
            Self::Mtls { callers, .. } => tracing::info!(
                %addr,
                allowed_clients = ?callers.names,
                "gRPC listener requires client certificates from [listen.grpc_tls] client_ca naming one of allowed_clients"
            ),
            Self::Loopback => tracing::info!(
                %addr,
                "gRPC listener on loopback without TLS: every process on this host can call Check"
            ),
            Self::Insecure => tracing::warn!(
                %addr,
                "INSECURE: [listen] grpc_insecure = true: the gRPC listener takes plaintext calls from anyone who can reach it, and an allowed Check carries a decrypted credential; this is safe only where something else authenticates every caller (Istio mesh mTLS with the AuthorizationPolicy `latchkey envoy istio` renders). Configure [listen.grpc_tls] instead wherever you can"
            ),
        }
    }
}

fn read_pem(field: &'static str, path: &Path) -> Result<Vec<u8>, ListenerError> {
    std::fs::read(path).map_err(|e| file_error(field, path, &format!("cannot read it: {e}")))
}

fn file_error(field: &'static str, path: &Path, reason: &str) -> ListenerError {
    ListenerError::File {
        field,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// `[listen.grpc_tls] allowed_clients` as a tonic interceptor: a call
/// whose client certificate names none of them (URI or DNS SAN) is refused
/// before the service reads it. Empty: the handshake's CA check is all.
#[derive(Clone, Default)]
pub struct AllowedCallers {
    names: Arc<[String]>,
}

impl AllowedCallers {
    /// Whether the leaf certificate `der` names an allowed client.
    pub fn allows(&self, der: &CertificateDer<'_>) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
            return false;
        };
        cert.valid_uri_names()
            .chain(cert.valid_dns_names())
            .any(|san| self.names.iter().any(|n| n == san))
    }
}

impl Interceptor for AllowedCallers {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.names.is_empty() {
            return Ok(request);
        }
        let allowed = request
            .peer_certs()
            .is_some_and(|certs| certs.first().is_some_and(|leaf| self.allows(leaf)));
        if allowed {
            Ok(request)
        } else {
            Err(Status::permission_denied(
                "this client certificate names none of the gRPC listener's [listen.grpc_tls] allowed_clients",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(grpc: &str, insecure: bool) -> Listen {
        Listen {
            grpc: grpc.parse().unwrap(),
            grpc_insecure: insecure,
            ..Listen::default()
        }
    }

    #[test]
    fn plaintext_is_refused_off_loopback_unless_the_operator_says_insecure() {
        assert!(matches!(
            ListenerSecurity::from_listen(&listen("127.0.0.1:9191", false)),
            Ok(ListenerSecurity::Loopback)
        ));
        assert!(matches!(
            ListenerSecurity::from_listen(&listen("[::1]:9191", false)),
            Ok(ListenerSecurity::Loopback)
        ));
        for addr in ["0.0.0.0:9191", "[::]:9191", "10.1.2.3:9191"] {
            let Err(e) = ListenerSecurity::from_listen(&listen(addr, false)) else {
                panic!("{addr} without TLS must be refused");
            };
            let message = e.to_string();
            assert!(message.contains("[listen.grpc_tls]"), "{message}");
            assert!(message.contains("grpc_insecure = true"), "{message}");
        }
        assert!(matches!(
            ListenerSecurity::from_listen(&listen("0.0.0.0:9191", true)),
            Ok(ListenerSecurity::Insecure)
        ));
    }

    #[test]
    fn a_missing_or_empty_pem_file_is_named() {
        let dir = std::env::temp_dir().join(format!("latchkey-grpc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let mut l = listen("0.0.0.0:9191", false);
        l.grpc_tls = Some(GrpcTls {
            cert: dir.join("absent.pem"),
            key: empty.clone(),
            client_ca: empty.clone(),
            allowed_clients: vec![],
        });
        let Err(e) = ListenerSecurity::from_listen(&l) else {
            panic!("an absent cert must be refused")
        };
        assert!(e.to_string().starts_with("[listen.grpc_tls] cert "), "{e}");
        l.grpc_tls.as_mut().unwrap().cert = empty;
        let Err(e) = ListenerSecurity::from_listen(&l) else {
            panic!("an empty cert must be refused")
        };
        assert!(e.to_string().contains("no PEM CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
