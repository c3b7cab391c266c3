//! Certificates for mTLS scenarios: a throwaway CA, the Envoy listener's
//! certificate for 127.0.0.1, and client certificates whose URI SAN is a
//! SPIFFE ID, as Istio issues to workloads. Keys are generated per run and
//! live only in the scenario's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM), for clients and for Envoy's trusted CA.
    pub ca_pem: PathBuf,
    /// The listener's certificate and key (PEM).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A client certificate and its key, as one PEM (what reqwest's
/// `Identity::from_pem` takes).
pub struct ClientCert {
    pub identity_pem: Vec<u8>,
}

impl Pki {
    /// A CA in `dir` and a listener certificate for `127.0.0.1`/`localhost`.
    pub fn create(dir: &Path) -> Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "latchkey e2e CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = server.signed_by(&key, &ca)?;

        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Pki {
            ca_pem: write("ca.pem", &ca.pem())?,
            server_cert: write("envoy-cert.pem", &cert.pem())?,
            server_key: write("envoy-key.pem", &key.serialize_pem())?,
            ca,
        })
    }

    /// A server certificate this CA issued for the DNS name `name` only,
    /// and its key, written to `<dir>/<name>-cert.pem` and `-key.pem`: a
    /// certificate as valid as the listener's, for another name.
    pub fn server_cert_for(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let cert_path = dir.join(format!("{name}-cert.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        std::fs::write(&key_path, key.serialize_pem())
            .with_context(|| format!("writing {}", key_path.display()))?;
        Ok((cert_path, key_path))
    }

    /// A client certificate whose URI SAN is `spiffe_id`, issued by this CA.
    pub fn client(&self, spiffe_id: &str) -> Result<ClientCert> {
        self.client_by(&self.ca, spiffe_id)
    }

    fn client_by(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        spiffe_id: &str,
    ) -> Result<ClientCert> {
        let (cert, key) = self.issue_client(issuer, spiffe_id)?;
        Ok(ClientCert {
            identity_pem: format!("{}{}", cert.pem(), key.serialize_pem()).into_bytes(),
        })
    }

    fn issue_client(
        &self,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        spiffe_id: &str,
    ) -> Result<(rcgen::Certificate, KeyPair)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .subject_alt_names
            .push(SanType::URI(spiffe_id.try_into()?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        Ok((cert, key))
    }

    /// The CA certificate (PEM).
    pub fn ca_pem_text(&self) -> String {
        self.ca.pem()
    }

    /// A client certificate whose URI SAN is `spiffe_id`, issued by this
    /// CA, written to `<dir>/<name>-cert.pem` and `<name>-key.pem` (what
    /// Envoy's `tls_certificates` take). Returns the two paths.
    pub fn client_files(
        &self,
        dir: &Path,
        name: &str,
        spiffe_id: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.issue_client(&self.ca, spiffe_id)?;
        let (cert_path, key_path) = (
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }

    /// A client certificate from another CA that Envoy does not trust.
    pub fn untrusted_client(&self, spiffe_id: &str) -> Result<ClientCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let rogue = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        self.client_by(&rogue, spiffe_id)
    }

    /// An HTTPS client that trusts this CA and presents `cert` (if any).
    pub fn http_client(&self, cert: Option<&ClientCert>) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(self.ca.pem().as_bytes())?;
        let mut b = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(0);
        if let Some(c) = cert {
            b = b.identity(reqwest::Identity::from_pem(&c.identity_pem)?);
        }
        Ok(b.build()?)
    }
}
