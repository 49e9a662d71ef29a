//! Mutual TLS for every listener and every outgoing call.
//!
//! Clients use tonic's rustls integration; the servers' listeners do the
//! handshake themselves (`crate::transport`, which bounds it in time) with the
//! rustls config built here. Either way peers are verified against the mesh
//! CA. This module loads the PEM material once, validates it at startup (all
//! three files or nothing) and builds server and client configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};
use zeroize::Zeroizing;

/// How long a TCP connect to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("invalid endpoint {uri:?}: {why}")]
    BadEndpoint { uri: String, why: String },
    #[error("server TLS configuration: {0}")]
    ServerConfig(String),
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Paths of one identity's certificate, key and the trusted CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Loaded, checked TLS material of one identity. The key is zeroized on drop
/// and never printed.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let cert_pem = read(&files.cert)?;
        let key_pem = Zeroizing::new(read(&files.key)?);
        let ca_pem = read(&files.ca)?;
        Self::from_pem(cert_pem, key_pem, ca_pem).map_err(|e| match e {
            TlsError::NoCertificate { .. } => TlsError::NoCertificate {
                path: files.cert.clone(),
            },
            TlsError::NoKey { .. } => TlsError::NoKey {
                path: files.key.clone(),
            },
            other => other,
        })
    }

    /// From PEM strings; checks that each parses.
    pub fn from_pem(
        cert_pem: String,
        key_pem: Zeroizing<String>,
        ca_pem: String,
    ) -> Result<Self, TlsError> {
        let no_cert = || TlsError::NoCertificate {
            path: PathBuf::from("<pem>"),
        };
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| no_cert())?;
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| no_cert())?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey {
            path: PathBuf::from("<pem>"),
        })?;
        Ok(Self {
            cert_pem,
            key_pem,
            ca_pem,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Server side. `require_client_cert = false` only for the SRS, whose
    /// `Enroll` serves callers that have no certificate yet; every other RPC
    /// there still demands one (see [`crate::auth::authorize`]).
    pub fn server_config(&self, require_client_cert: bool) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, self.key_pem.as_bytes()))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(!require_client_cert)
            .timeout(Duration::from_secs(10))
    }

    /// The rustls config of a listener that does its own handshakes: this
    /// identity, client certificates verified against the mesh CA (optional
    /// only if `require_client_cert` is false, as in [`Self::server_config`]),
    /// ALPN `h2` only.
    pub fn rustls_server_config(
        &self,
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let bad = |e: &dyn std::fmt::Display| TlsError::ServerConfig(e.to_string());
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
        let verifier = if require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        }
        .build()
        .map_err(|e| bad(&e))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side, presenting this identity.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, self.key_pem.as_bytes()))
    }
}

/// A client config that trusts the mesh CA but presents no certificate
/// (enrollment only).
pub fn anonymous_client_config(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem))
}

/// A lazily connecting mTLS channel to `uri` (`https://host:port`). Every
/// call on it is bounded by `timeout`.
pub fn channel(uri: &str, tls: ClientTlsConfig, timeout: Duration) -> Result<Channel, TlsError> {
    let bad = |why: String| TlsError::BadEndpoint {
        uri: uri.to_owned(),
        why,
    };
    if !uri.starts_with("https://") {
        return Err(bad(
            "must start with https:// (the mesh speaks only TLS)".into()
        ));
    }
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}
